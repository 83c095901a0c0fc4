"""One-shot pruning of pretrained causal LMs: fisherfast's layer-wise methods against llmcompressor's SparseGPT and Wanda.

The bench pretrains two models once and caches them in models/ (llm_common.CACHES): each with its own byte-level BPE
tokenizer (`tokenizers`), trained on CPython's `pydoc_data.topics` text with every tenth topic held out for perplexity.
- llama: a Llama-style decoder (4 blocks, width 192, 2.6M parameters), 500 steps (about 100 s);
- gpt2: a GPT-2 (4 blocks, width 192, transformers' Conv1D layers, tied head), 1500 steps (about 5 minutes).
Calibration: 64 sequences of 128 tokens of the training text, the same for both libraries. The output head is left
dense by both (`ignore`).

Methods of ours: sparsegpt and wanda as published, the same with their kept weights re-fitted by least squares
(+refit), admm (ADMM's mask search and re-fit), admm+kfac (its error weighted by the loss's output curvature), and
OWL's per-block sparsities (+owl). The peer runs sparsegpt, wanda and their OWL variants; every method of ours is also
compared with llmcompressor's SparseGPT at the same target (the share of its perplexity increase over dense that we cut).

Each model × method × target runs in its own process (so that its peak memory is its own), ours in this venv and the peer
in the llmcompressor venv (make it with `bash bench/make_llmcompressor_venv.sh`, about 3 minutes); both save the pruned
weights, and this process measures every perplexity with one function.

    .venv/bin/python bench/llm_oneshot.py                 # both tables (about 25 minutes on 2 cores, plus training once)
    .venv/bin/python bench/llm_oneshot.py --no-peer       # ours only
    .venv/bin/python bench/llm_oneshot.py --models gpt2 --methods sparsegpt admm --targets 0.7
"""
import argparse, json, os, subprocess, sys, tempfile, time, warnings
os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, os.path.dirname(__file__))
from pathlib import Path
import torch
from llm_common import CACHES, HEAD, N_CALIB, SEQ, load_data, load_model, peak_rss_mb, perplexity, report, save_state, timed

HERE = Path(__file__).resolve().parent
TARGETS = ['0.5', '0.7', '2:4']
# +refit: the kept weights re-fitted by least squares; +kfac: ADMM's error weighted by the loss's output curvature;
# +loss: per-layer sparsities from the loss increase (allocation='loss'); +owl: OWL's per-block sparsities (M 5, λ 0.08), not for N:M
METHODS = ['sparsegpt', 'sparsegpt+refit', 'admm', 'admm+kfac', 'admm+loss', 'admm+kfac+loss', 'wanda', 'wanda+refit',
           'sparsegpt+owl', 'wanda+owl']
UNIFORM_ONLY = ('+owl', '+loss')  # per-layer allocations, not for N:M
PEER_METHODS = ['sparsegpt', 'wanda', 'sparsegpt+owl', 'wanda+owl']
PRETRAIN = {'llama': (500, 2e-3), 'gpt2': (1500, 2e-3)}  # steps, peak learning rate

def _model(family:str, vocab:int):
    "A fresh model of `family`: 4 blocks of width 192 and MLP width 512 either way"
    import transformers
    if family == 'llama':
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
            vocab_size=vocab, max_position_embeddings=SEQ, attention_dropout=0.1, tie_word_embeddings=False,
            bos_token_id=0, eos_token_id=0, pad_token_id=0))
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=192, n_inner=512, n_layer=4, n_head=4, vocab_size=vocab, n_positions=SEQ, bos_token_id=0, eos_token_id=0))


def pretrain(family:str, steps:int, threads:int, lr:float):
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
    torch.manual_seed(0)
    model = _model(family, tok.get_vocab_size())
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
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
    cache = CACHES[family]
    cache.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(cache / 'model')
    tok.save(str(cache / 'tokenizer.json'))
    # llmcompressor loads a processor from the model's folder when given a dataset
    transformers.PreTrainedTokenizerFast(tokenizer_file=str(cache / 'tokenizer.json'), eos_token='<|endoftext|>',
                                         pad_token='<|endoftext|>').save_pretrained(cache / 'model')
    torch.save({'calib': calib, 'heldout': heldout}, cache / 'data.pt')
    print(f"pretrained {family} in {time.time() - t:.0f} s; held-out perplexity {perplexity(model.eval(), heldout):.2f}")

def worker(family:str, method:str, target:str, out:str, threads:int):
    "fisherfast's run: one model, method and target, in this process"
    from fisherfast.all import layerwise_prune
    torch.set_num_threads(threads)
    warnings.filterwarnings('ignore')
    model,calib = load_model(family),load_data(family)['calib']
    dl = [dict(input_ids=calib[i:i + 8]) for i in range(0, N_CALIB, 8)]
    nm,sparsity = (True, 0.5) if target == '2:4' else (None, float(target))
    base,*extras = method.split('+')
    options = {'owl': dict(allocation='owl', owl_m=5., owl_lambda=0.08), 'refit': dict(refit=20), 'kfac': dict(kfac=True),
               'loss': dict(allocation='loss')}
    kw = {k: v for e in extras for k,v in options[e].items()}
    rss = peak_rss_mb()
    secs = timed(lambda: layerwise_prune(model, dl, sparsity, base, nm=nm, n_samples=N_CALIB, ignore=HEAD,
                                         progress=False, **kw))
    save_state(model, out)
    report(seconds=secs, peak_mb=peak_rss_mb(), base_mb=rss)

def run(cmd:list, peer:bool=False) -> dict|str:
    "Run a worker; its RESULT line (for the peer, the last line of its error when it crashes: a result of the bench too)"
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')]
    if r.returncode or not lines:
        if peer: return (r.stderr.strip().splitlines() or ['no output'])[-1][:120]
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads(lines[-1][7:])

def pruned_ppl(family:str, path:str, heldout) -> tuple:
    "Perplexity of the saved pruned weights, and the sparsity of the Linear layers other than the head"
    from safetensors.torch import load_model as load_weights
    model = load_model(family)
    load_weights(model, path)
    ws = [m.weight for n,m in model.named_modules() if type(m).__name__ in ('Linear', 'Conv1D') and HEAD not in n]
    return perplexity(model, heldout),sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--peer-python', default=str(HERE / '.venv-llmcompressor' / 'bin' / 'python'))
    p.add_argument('--no-peer', action='store_true')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--models', nargs='+', default=list(CACHES), choices=list(CACHES))
    p.add_argument('--methods', nargs='+', default=METHODS, choices=METHODS)
    p.add_argument('--targets', nargs='+', default=TARGETS, choices=TARGETS)
    p.add_argument('--worker', nargs=4, metavar=('MODEL', 'METHOD', 'TARGET', 'OUT'), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker: return worker(*a.worker, a.threads)
    for family in a.models:
        if not (CACHES[family] / 'data.pt').exists(): pretrain(family, *PRETRAIN[family], max(a.threads, torch.get_num_threads()))
    peer = not a.no_peer
    if peer and not Path(a.peer_python).exists():
        sys.exit(f"{a.peer_python} not found: run `bash bench/make_llmcompressor_venv.sh` first, or pass --no-peer")
    torch.set_num_threads(a.threads)
    rows,dense = [],{}
    with tempfile.TemporaryDirectory() as tmp:
        for family in a.models:
            heldout = load_data(family)['heldout']
            dense[family] = perplexity(load_model(family), heldout)
            print(f"{family}: dense held-out perplexity {dense[family]:.3f} ({len(heldout)} windows of {SEQ} tokens); "
                  f"{N_CALIB} calibration sequences; {a.threads} thread(s)", flush=True)
            for method in a.methods:
                for target in a.targets:
                    if method.endswith(UNIFORM_ONLY) and ':' in target: continue
                    row = dict(model=family, method=method, target=target)
                    libs = [('ours', [sys.executable, __file__, '--threads', str(a.threads), '--worker', family, method, target])]
                    if peer and method in PEER_METHODS:
                        libs.append(('peer', [a.peer_python, str(HERE / 'llm_oneshot_peer.py'), '--threads', str(a.threads),
                                              '--model', family, '--method', method, '--target', target]))
                    for lib,cmd in libs:
                        out = f"{tmp}/{lib}-{family}-{method}-{target}.safetensors"
                        r = run(cmd + ([out] if lib == 'ours' else ['--out', out]), peer=lib == 'peer')
                        if isinstance(r, str): row['peer_crash'] = r; continue
                        ppl,sp = pruned_ppl(family, out, heldout)
                        row.update({f'{lib}_ppl': ppl, f'{lib}_x': ppl / dense[family], f'{lib}_s': r['seconds'],
                                    f'{lib}_mb': r['peak_mb'], f'{lib}_dmb': r['peak_mb'] - r['base_mb'], f'{lib}_sparsity': sp})
                    rows.append(row)
                    print(_line(row, peer), flush=True)
    print('\n' + _table(rows, peer))
    for r in rows:
        if 'peer_crash' in r: print(f"llmcompressor crashed on {r['model']} {r['method']} {r['target']}: {r['peer_crash']}")
    ran = [r for r in rows if 'peer_ppl' in r and abs(r['peer_sparsity'] - r['ours_sparsity']) < 0.005]
    if peer and ran:
        for r in ran: r['gap'] = r['ours_ppl'] / r['peer_ppl'] - 1
        worst = max(ran, key=lambda r: abs(r['gap']))
        print(f"\nsame method, largest perplexity gap to llmcompressor: {worst['gap']:+.2%} ({worst['model']} {worst['method']} "
              f"{worst['target']}); slowest time ratio: {max(r['ours_s'] / r['peer_s'] for r in ran):.2f}")
    short = [r for r in rows if 'peer_sparsity' in r and r['peer_sparsity'] < r['ours_sparsity'] - 0.005]
    for r in short: print(f"llmcompressor pruned {r['peer_sparsity']:.2%} on {r['model']} {r['method']} {r['target']}, not the target")
    print('\n' + _against_sparsegpt(rows, dense))

def _against_sparsegpt(rows, dense) -> str:
    "Every method of ours against SparseGPT at the same target: perplexity, the share of its increase over dense cut, time"
    lines = ["| model | target | method | ours ppl | SparseGPT ppl | increase over dense cut | time / SparseGPT's |",
             '|---|---|---|---|---|---|---|']
    for r in rows:
        g = next((q for q in rows if q['method'] == 'sparsegpt' and (q['model'], q['target']) == (r['model'], r['target'])), None)
        if g is None or r['method'].endswith('+owl'): continue
        # llmcompressor's SparseGPT is the reference, unless it did not prune to the target (GPT-2's Conv1D): then ours
        peer = 'peer_ppl' in g and abs(g['peer_sparsity'] - g['ours_sparsity']) < 0.005
        ppl,secs = (g['peer_ppl'], g['peer_s']) if peer else (g['ours_ppl'], g['ours_s'])
        d = dense[r['model']]
        lines.append(f"| {r['model']} | {r['target']} | {r['method']} | {r['ours_ppl']:.3f} | {ppl:.3f} "
                     f"({'llmcompressor' if peer else 'ours'}) | {1 - (r['ours_ppl'] - d) / (ppl - d):+.0%} | {r['ours_s'] / secs:.2f} |")
    return '\n'.join(lines)

def _line(r, peer):
    s = (f"{r['model']:5s} {r['method']:15s} {r['target']:4s}  ours ppl {r['ours_ppl']:.3f} (×{r['ours_x']:.3f}) {r['ours_s']:.1f} s "
         f"{r['ours_mb']:.0f} MiB, sparsity {r['ours_sparsity']:.4f}")
    if peer and 'peer_crash' in r: s += f"  |  llmcompressor crashed: {r['peer_crash']}"
    elif 'peer_ppl' in r: s += (f"  |  llmcompressor ppl {r['peer_ppl']:.3f} (×{r['peer_x']:.3f}) {r['peer_s']:.1f} s {r['peer_mb']:.0f} MiB, "
                     f"sparsity {r['peer_sparsity']:.4f}")
    return s

def _table(rows, peer):
    head = "| model | method | target | ours ppl (× dense) | " + ("llmcompressor ppl (× dense) | ppl ours / peer | " if peer else "") + \
           "ours time s | " + ("peer time s | time ours / peer | " if peer else "") + "ours peak MiB (Δ) |" + (" peer peak MiB (Δ) |" if peer else "")
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for r in rows:
        c = [r['model'], r['method'], r['target'], f"{r['ours_ppl']:.3f} (×{r['ours_x']:.3f})"]
        crashed,missing = peer and 'peer_crash' in r,peer and 'peer_ppl' not in r and 'peer_crash' not in r
        if crashed or missing: c += ['crashed' if crashed else '—', '']
        elif peer: c += [f"{r['peer_ppl']:.3f} (×{r['peer_x']:.3f})", f"{r['ours_ppl'] / r['peer_ppl']:.4f}"]
        c += [f"{r['ours_s']:.1f}"]
        if crashed or missing: c += ['', '']
        elif peer: c += [f"{r['peer_s']:.1f}", f"{r['ours_s'] / r['peer_s']:.2f}"]
        c += [f"{r['ours_mb']:.0f} ({r['ours_dmb']:+.0f})"]
        if crashed or missing: c += ['']
        elif peer: c += [f"{r['peer_mb']:.0f} ({r['peer_dmb']:+.0f})"]
        lines.append('| ' + ' | '.join(c) + ' |')
    return '\n'.join(lines)

if __name__ == '__main__': main()
