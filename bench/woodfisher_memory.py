"""Peak memory of WoodFisher one-shot on a 10M-weight transformer: 128 per-sample gradients, blocks of 128, global 50%.

A BERT-style classifier built from a config (12 blocks, hidden 256: 9.5M prunable weights; memory does not depend on the
weights being trained). Each setting runs in its own process and reports its peak resident memory (VmHWM): the defaults
(gradients collected a block at a time, at most 1 GiB of inverses kept from scoring to update), all gradients at once
(stored in float16 past 2 GiB), and the settings of the previous release (float32 gradients, every layer's inverse
kept), side by side.

    .venv/bin/python bench/woodfisher_memory.py        # about 8 minutes on 2 cores
"""
import argparse, json, os, subprocess, sys, time, warnings
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch
import torch.nn.functional as F

def _peak_mb() -> float:
    "The peak resident memory of this process, in MiB (VmHWM, which a child does not inherit)"
    return next(int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:'))

SETTINGS = {'defaults (gradients a block at a time)': dict(grads_by='auto', grads_dtype='default', cache_bytes='default'),
            "grads_by='model' (float16 past 2 GiB)": dict(grads_by='model', grads_dtype='default', cache_bytes='default'),
            'previous release: float32, every inverse kept': dict(grads_by='model', grads_dtype='float32', cache_bytes='none')}

def worker(grads_by, grads_dtype, cache_bytes):
    import transformers
    from fisherfast.all import Sparsifier, calibrate, woodfisher
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings('ignore')
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=256, num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024,
                                  vocab_size=1000, num_labels=4, max_position_embeddings=64)
    model = transformers.BertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(0)
    dl = [(torch.randint(0, 1000, (8, 64), generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(16)]
    loss = lambda out, y: F.cross_entropy(out.logits, y)
    base = _peak_mb()
    t = time.perf_counter()
    stats = calibrate(model, dl, loss, n_samples=128, kinds=('grads',), progress=False, grads_by=grads_by,
                      grads_dtype=None if grads_dtype is None else getattr(torch, grads_dtype))
    t_cal = time.perf_counter() - t
    sp = Sparsifier(model, 'weight', 'global', woodfisher(block_size=128, n_grads=128, cache_bytes=cache_bytes), stats=stats)
    sp.sparsify_model(0.5)
    n = sum(m.weight.numel() for m in sp.layers.values())
    print('RESULT ' + json.dumps(dict(weights=n, base_mb=base, peak_mb=_peak_mb(),
                                      calibrate_s=t_cal, total_s=time.perf_counter() - t,
                                      sparsity=float(sp.sparsity_report().sparsity.iloc[-1]))), flush=True)

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--worker', nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        by,dt,cb = a.worker
        return worker(by, None if dt == 'default' else dt, None if cb == 'none' else 2**30 if cb == 'default' else int(cb))
    rows = []
    for label,kw in SETTINGS.items():
        cmd = [sys.executable, __file__, '--worker', kw['grads_by'], kw['grads_dtype'], kw['cache_bytes']]
        r = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')]
        if not lines: print(f"{label}: failed (rc {r.returncode})\n{r.stderr[-3000:]}"); continue
        res = json.loads(lines[-1][7:])
        rows.append((label, res))
        print(f"{label:48s} peak {res['peak_mb'] / 1024:.2f} GiB (model and imports {res['base_mb'] / 1024:.2f} GiB)  "
              f"calibrate {res['calibrate_s']:.0f} s, total {res['total_s']:.0f} s, {res['weights']:,} weights, "
              f"sparsity {res['sparsity']:.4f}", flush=True)
    print("\n| setting | peak GiB | goal ≤ 4 GiB | time s |\n|---|---|---|---|")
    for label,res in rows:
        print(f"| {label} | {res['peak_mb'] / 1024:.2f} | {'met' if res['peak_mb'] <= 4096 else 'not met'} | {res['total_s']:.0f} |")

if __name__ == '__main__': main()
