"""What bench/llm_oneshot.py and its llmcompressor worker share: the cached models and data, perplexity, peak memory.
Imports torch, transformers and safetensors only, so that it runs in either venv.

Two pretrained causal LMs of different families, each cached in its own folder of models/: 'llama' (rotary positions,
RMSNorm, SwiGLU, Linear layers) and 'gpt2' (learned positions, LayerNorm, GELU, transformers' Conv1D layers, tied head)."""
import json, resource, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parent.parent / 'models'
CACHES = {'llama': ROOT / 'llm_oneshot', 'gpt2': ROOT / 'gpt2_oneshot'}
HEAD = 'lm_head'  # the output head, left dense by both libraries
SEQ, N_CALIB = 128, 64

def load_model(family:str='llama', path=None):
    "The pretrained model of `family` saved by the bench, in eval mode"
    import transformers
    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(path or CACHES[family] / 'model', torch_dtype=torch.float32).eval()

def load_data(family:str='llama') -> dict:
    "`{'calib': (64, 128) token ids from the training text, 'heldout': (n, 128) windows of the held-out text}`"
    return torch.load(CACHES[family] / 'data.pt')

@torch.no_grad()
def perplexity(model, windows, bs=16) -> float:
    "exp of the mean next-token cross-entropy over every window"
    tot = n = 0.
    for i in range(0, len(windows), bs):
        x = windows[i:i + bs]
        logits = model(input_ids=x).logits[:, :-1]
        tot += torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction='sum').item()
        n += x[:, 1:].numel()
    return float(torch.exp(torch.tensor(tot / n)))

def peak_rss_mb() -> float:
    "The peak resident memory of this process so far, in MiB (VmHWM: unlike ru_maxrss, not inherited from the parent)"
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'): return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def report(**kw):
    "One JSON line on stdout, the worker's result"
    print('RESULT ' + json.dumps(kw), flush=True)

def timed(f):
    t = time.perf_counter(); f(); return time.perf_counter() - t

def save_state(model, out):
    "The weights, as safetensors (tied ones once)"
    from safetensors.torch import save_model
    save_model(model, out)
