"""One-shot pruning of a pretrained causal LM: fisherfast's SparseGPT and Wanda against llmcompressor's, side by side.

The bench pretrains its own model once and caches it in models/llm_oneshot/: a byte-level BPE tokenizer (`tokenizers`)
and a Llama-style decoder (`transformers`, 4 blocks, 2.6M parameters) trained for a few minutes on CPython's
`pydoc_data.topics` text; the last 10% of the text is held out for perplexity. Calibration: 64 sequences of 128 tokens
of the training text, the same for both libraries. The output head is left dense by both (`ignore`).

Each method × target runs in its own process (so that its peak memory is its own), ours in this venv and the peer in
the llmcompressor venv (make it with `bash bench/make_llmcompressor_venv.sh`, about 3 minutes); both save the pruned
weights, and this process measures every perplexity with one function.

    .venv/bin/python bench/llm_oneshot.py                 # the table (about 10 minutes on 2 cores, plus training once)
    .venv/bin/python bench/llm_oneshot.py --no-peer       # ours only
"""
import argparse, json, math, os, subprocess, sys, tempfile, time, warnings
os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, os.path.dirname(__file__))
from pathlib import Path
import torch
from llm_common import CACHE, N_CALIB, SEQ, load_data, load_model, peak_rss_mb, perplexity, report, save_state, timed

HERE = Path(__file__).resolve().parent
TARGETS = ['0.5', '0.7', '2:4']
METHODS = ['sparsegpt', 'wanda', 'sparsegpt+owl', 'wanda+owl']  # +owl: OWL's per-block sparsities (M 5, λ 0.08), not for N:M

def pretrain(steps:int, threads:int):
    "Train the tokenizer and the model on pydoc_data.topics once; cache them with the calibration and held-out windows"
    import pydoc_data.topics, transformers
    from tokenizers import ByteLevelBPETokenizer
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    topics = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    train_text = '\n\n'.join(t for i,t in enumerate(topics) if i % 10)  # every tenth topic is held out
    held_text = '\n\n'.join(t for i,t in enumerate(topics) if i % 10 == 0)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([train_text[i:i + 10000] for i in range(0, len(train_text), 10000)], vocab_size=2048,
                            min_frequency=2, special_tokens=['<|endoftext|>'])
    train = torch.tensor(tok.encode(train_text).ids)
    held = torch.tensor(tok.encode(held_text).ids)
    cfg = transformers.LlamaConfig(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=4, vocab_size=tok.get_vocab_size(), max_position_embeddings=SEQ,
                                   attention_dropout=0.1,
                                   tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.1)
    heldout = held[:len(held) // SEQ * SEQ].view(-1, SEQ)
    g = torch.Generator().manual_seed(0)
    t = time.time()
    for i in range(steps):
        idx = torch.randint(0, len(train) - SEQ, (16,), generator=g)
        x = torch.stack([train[j:j + SEQ] for j in idx])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if i % 200 == 0 or i == steps - 1:
            print(f"  step {i:5d}  train loss {loss.item():.3f}  held-out perplexity {perplexity(model.eval(), heldout):.1f}  "
                  f"{time.time() - t:.0f} s", flush=True)
            model.train()
    idx = torch.randint(0, len(train) - SEQ, (N_CALIB,), generator=torch.Generator().manual_seed(1))
    calib = torch.stack([train[j:j + SEQ] for j in idx])
    CACHE.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(CACHE / 'model')
    tok.save(str(CACHE / 'tokenizer.json'))
    # llmcompressor loads a processor from the model's folder when given a dataset
    transformers.PreTrainedTokenizerFast(tokenizer_file=str(CACHE / 'tokenizer.json'), eos_token='<|endoftext|>',
                                         pad_token='<|endoftext|>').save_pretrained(CACHE / 'model')
    torch.save({'calib': calib, 'heldout': heldout}, CACHE / 'data.pt')
    print(f"pretrained in {time.time() - t:.0f} s; held-out perplexity {perplexity(model.eval(), heldout):.2f}")

def worker(method:str, target:str, out:str, threads:int):
    "fisherfast's run: one method and target, in this process"
    from fisherfast.all import sparsegpt_prune, wanda_prune
    torch.set_num_threads(threads)
    warnings.filterwarnings('ignore')
    model,calib = load_model(),load_data()['calib']
    dl = [dict(input_ids=calib[i:i + 8]) for i in range(0, N_CALIB, 8)]
    nm,sparsity = (True, 0.5) if target == '2:4' else (None, float(target))
    prune = sparsegpt_prune if method.startswith('sparsegpt') else wanda_prune
    owl = dict(allocation='owl', owl_m=5., owl_lambda=0.08) if method.endswith('+owl') else {}
    base = peak_rss_mb()
    secs = timed(lambda: prune(model, dl, sparsity, nm=nm, n_samples=N_CALIB, ignore='lm_head', progress=False, **owl))
    save_state(model, out)
    report(seconds=secs, peak_mb=peak_rss_mb(), base_mb=base)

def run(cmd:list, peer:bool=False) -> dict|str:
    "Run a worker; its RESULT line (for the peer, the last line of its error when it crashes: a result of the bench too)"
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')]
    if r.returncode or not lines:
        if peer: return (r.stderr.strip().splitlines() or ['no output'])[-1][:120]
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads(lines[-1][7:])

def pruned_ppl(path:str, heldout) -> tuple:
    "Perplexity of the saved pruned weights, and the sparsity of the Linear layers other than the head"
    from safetensors.torch import load_file
    model = load_model()
    model.load_state_dict(load_file(path))
    ws = [m.weight for n,m in model.named_modules() if isinstance(m, torch.nn.Linear) and 'lm_head' not in n]
    return perplexity(model, heldout),sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--peer-python', default=str(HERE / '.venv-llmcompressor' / 'bin' / 'python'))
    p.add_argument('--no-peer', action='store_true')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--steps', type=int, default=500, help='pretraining steps (only when no model is cached)')
    p.add_argument('--worker', nargs=3, metavar=('METHOD', 'TARGET', 'OUT'), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker: return worker(*a.worker, a.threads)
    if not (CACHE / 'data.pt').exists(): pretrain(a.steps, max(a.threads, torch.get_num_threads()))
    peer = not a.no_peer
    if peer and not Path(a.peer_python).exists():
        sys.exit(f"{a.peer_python} not found: run `bash bench/make_llmcompressor_venv.sh` first, or pass --no-peer")
    torch.set_num_threads(a.threads)
    heldout = load_data()['heldout']
    dense = perplexity(load_model(), heldout)
    print(f"dense held-out perplexity {dense:.3f} ({len(heldout)} windows of {SEQ} tokens); {N_CALIB} calibration "
          f"sequences; {a.threads} thread(s)\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            for target in TARGETS:
                if method.endswith('+owl') and ':' in target: continue
                row = dict(method=method, target=target)
                libs = [('ours', [sys.executable, __file__, '--threads', str(a.threads), '--worker', method, target])]
                if peer: libs.append(('peer', [a.peer_python, str(HERE / 'llm_oneshot_peer.py'), '--threads', str(a.threads),
                                               '--method', method, '--target', target]))
                for lib,cmd in libs:
                    out = f"{tmp}/{lib}-{method}-{target}.safetensors"
                    r = run(cmd + ([out] if lib == 'ours' else ['--out', out]), peer=lib == 'peer')
                    if isinstance(r, str): row['peer_crash'] = r; continue
                    ppl,sp = pruned_ppl(out, heldout)
                    row.update({f'{lib}_ppl': ppl, f'{lib}_x': ppl / dense, f'{lib}_s': r['seconds'],
                                f'{lib}_mb': r['peak_mb'], f'{lib}_dmb': r['peak_mb'] - r['base_mb'], f'{lib}_sparsity': sp})
                rows.append(row)
                print(_line(row, peer), flush=True)
    print('\n' + _table(rows, peer))
    ran = [r for r in rows if 'peer_ppl' in r]
    for r in rows:
        if 'peer_crash' in r: print(f"llmcompressor crashed on {r['method']} {r['target']}: {r['peer_crash']}")
    if peer and ran:
        for r in ran: r['gap'] = r['ours_ppl'] / r['peer_ppl'] - 1
        worst = max(ran, key=lambda r: abs(r['gap']))
        print(f"\nlargest perplexity gap to llmcompressor: {worst['gap']:+.2%} ({worst['method']} {worst['target']}); "
              f"slowest time ratio: {max(r['ours_s'] / r['peer_s'] for r in ran):.2f}")

def _line(r, peer):
    s = (f"{r['method']:9s} {r['target']:4s}  ours ppl {r['ours_ppl']:.3f} (×{r['ours_x']:.3f}) {r['ours_s']:.1f} s "
         f"{r['ours_mb']:.0f} MiB, sparsity {r['ours_sparsity']:.4f}")
    if peer and 'peer_crash' in r: s += f"  |  llmcompressor crashed: {r['peer_crash']}"
    elif peer: s += (f"  |  llmcompressor ppl {r['peer_ppl']:.3f} (×{r['peer_x']:.3f}) {r['peer_s']:.1f} s {r['peer_mb']:.0f} MiB, "
                     f"sparsity {r['peer_sparsity']:.4f}")
    return s

def _table(rows, peer):
    head = "| method | target | ours ppl (× dense) | " + ("llmcompressor ppl (× dense) | ppl ours / peer | " if peer else "") + \
           "ours time s | " + ("peer time s | time ours / peer | " if peer else "") + "ours peak MiB (Δ) |" + (" peer peak MiB (Δ) |" if peer else "")
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for r in rows:
        c = [r['method'], r['target'], f"{r['ours_ppl']:.3f} (×{r['ours_x']:.3f})"]
        crashed = peer and 'peer_crash' in r
        if crashed: c += ['crashed', '']
        elif peer: c += [f"{r['peer_ppl']:.3f} (×{r['peer_x']:.3f})", f"{r['ours_ppl'] / r['peer_ppl']:.4f}"]
        c += [f"{r['ours_s']:.1f}"]
        if crashed: c += ['', '']
        elif peer: c += [f"{r['peer_s']:.1f}", f"{r['ours_s'] / r['peer_s']:.2f}"]
        c += [f"{r['ours_mb']:.0f} ({r['ours_dmb']:+.0f})"]
        if crashed: c += ['']
        elif peer: c += [f"{r['peer_mb']:.0f} ({r['peer_dmb']:+.0f})"]
        lines.append('| ' + ' | '.join(c) + ' |')
    return '\n'.join(lines)

if __name__ == '__main__': main()
