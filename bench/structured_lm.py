"""Structured pruning of a pretrained causal LM (attention heads and FFN neurons removed): fisherfast's `Pruner` against
torch-pruning and fasterai 0.4.1.

The model is bench/llm_oneshot.py's cached Llama-style decoder (4 blocks, width 192, 4 heads of 48, MLP width 512,
vocabulary 2048, 2.6M parameters; trained once, about 100 s, if models/llm_oneshot/ is missing). Every method removes
the same fraction of the heads of every attention and of the FFN neurons of every MLP (`--fractions`: 0.5 and 0.75),
from a fresh copy of the same model, keeping the hidden width, the embeddings and the LM head, so every method reaches
the same multiply-adds:

- torch-pruning 1.6 `MetaPruner` with `MagnitudeImportance(p=2)` (group L2) and with `TaylorImportance` (|w·g| from
  the gradients of the true next-token loss on the 64 calibration windows), through `fisherfast.sparse.heads.prune_heads`
  (torch-pruning's head recipe: the head mapping, the layers left whole, the rotary embeddings made traceable);
- fasterai 0.4.1 `Pruner(model, f, 'local', large_final)`, called as bench/structured.py calls it, with torch-pruning's
  `output_transform` for a Hugging Face output; a crash, or no result within `--prune-timeout` seconds, is the row's result;
- fisherfast `Pruner(..., heads=True)` with 'l2', 'obs' (the output error left after the re-fit) and 'obd' (½·F·w² over the group, F the per-sample Fisher diagonal of
  the true next-token loss from `calibrate`, included in its prune time), each re-fitting o_proj and down_proj by least
  squares on the 64 calibration windows (`calib=`); and 'l2' without the re-fit.

Held-out perplexity (78 windows of 128 tokens of the held-out topics) one-shot, then after the same fine-tune for every
method, the dense model too: `--ft-steps` AdamW steps (one-cycle, peak `--ft-lr`, no weight decay) on batches of
`--ft-bs` random 128-token windows of the training text, drawn in the order of `--seeds`. MACs (torch-pruning's count:
the Linear layers, LM head included, over 128 tokens; attention's score and value products are not counted) and
parameters of the whole model, and the parameters of the 4 transformer blocks alone (`blocks`), as fractions of dense.
CPU latency of a 128-token forward (no KV cache) at batch 1 and 16, one thread, median of `--reps` runs after two
warm-up ones, eval and inference mode, as a speed-up over the dense model measured the same way in the same run. Every
model is saved whole with `torch.save`, loaded back (`torch.load(weights_only=False)`) and compared output for output,
then exported with `torch.export.export` (with `use_cache=False`: a DynamicCache output does not export), strict and not.

    .venv/bin/python bench/structured_lm.py                 # about 5 minutes on one thread
    .venv/bin/python bench/structured_lm.py --seeds 0 1 2   # three fine-tune orders, about 14 minutes
"""
import argparse, contextlib, copy, io, os, signal, sys, time, traceback, warnings
os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, os.path.dirname(__file__))
warnings.filterwarnings('ignore')
import torch
import torch_pruning as tp
from llm_common import CACHES, SEQ, load_data, load_model, perplexity
from fisherfast.sparse.heads import output_tensors, prune_heads, traceable
from fisherfast.sparse.structured import Pruner, latency_ms
from fisherfast.stats.calibrate import calibrate

FAMILY = 'llama'


def train_tokens():
    "The training text as token ids: the topics bench/llm_oneshot.py's `pretrain` trained on, with its tokenizer"
    import pydoc_data.topics
    from tokenizers import Tokenizer
    topics = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    text = '\n\n'.join(t for i,t in enumerate(topics) if i % 10)  # pretrain's split: every tenth topic is held out
    return torch.tensor(Tokenizer.from_file(str(CACHES[FAMILY] / 'tokenizer.json')).encode(text).ids)


def quiet(): return contextlib.redirect_stdout(io.StringIO())  # torch-pruning and fasterai print as they go


def count(model, example) -> tuple:
    "MACs and parameters of the whole model, parameters of the transformer blocks"
    with quiet(), traceable(model): macs,params = tp.utils.count_ops_and_params(model, example)
    return macs,params,sum(p.numel() for p in model.model.layers.parameters())


def loss(model, ids): return model(input_ids=ids, labels=ids).loss  # transformers shifts the labels: next-token loss


def taylor(model, example, f, calib):
    model.zero_grad()
    for b in calib: loss(model, b['input_ids']).backward()  # TaylorImportance reads the accumulated gradients
    with quiet(): prune_heads(model, example, f, f, importance=tp.importance.TaylorImportance())
    model.zero_grad()
    return model


def fasterai_prune(model, example, f):
    from fasterai.prune.pruner import Pruner as FaPruner
    from fasterai.core.criteria import large_final
    with quiet():
        FaPruner(model, f, 'local', large_final, ignored_layers=[model.lm_head], example_inputs=example['input_ids'],
                 output_transform=output_tensors).prune_model()
    return model


def ours(model, example, f, crit, calib):
    stats = calibrate(model, calib, 'causal_lm', kinds=('fisher_diag',), progress=False) if crit == 'obd' else None
    with quiet(): return Pruner(model, example, crit, f, stats=stats, calib=calib, heads=True).prune()


def magnitude(model, example, f):
    with quiet(): return prune_heads(model, example, f, f, importance=tp.importance.MagnitudeImportance(p=2))


def methods(f, calib, example) -> dict:
    return {
        'torch-pruning magnitude (L2)': lambda m: magnitude(m, example, f),
        'torch-pruning taylor': lambda m: taylor(m, example, f, calib),
        'fasterai 0.4.1 large_final': lambda m: fasterai_prune(m, example, f),
        'fisherfast l2, no re-fit': lambda m: ours(m, example, f, 'l2', None),
        'fisherfast l2 + re-fit': lambda m: ours(m, example, f, 'l2', calib),
        'fisherfast obd + re-fit': lambda m: ours(m, example, f, 'obd', calib),
        'fisherfast obs + re-fit': lambda m: ours(m, example, f, 'obs', calib),
    }


class _Timeout(Exception): pass


def _alarm(signum, frame): raise _Timeout


def pruned(fn, model, limit) -> tuple:
    "`(fn(model), seconds, None)`, or `(None, nan, 'fails: <why>')` when it raises or runs past `limit` seconds"
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    t = time.perf_counter()
    try: return fn(model),time.perf_counter() - t,None
    except _Timeout as e:
        # where it was stuck: the innermost frame of a library's code
        f = [fr for fr in traceback.extract_tb(e.__traceback__) if 'site-packages' in fr.filename][-1]
        lib = f.filename.split('site-packages/')[1].split('/')[0]
        return None,float('nan'),f"fails: no result in {limit} s (still in {lib} {os.path.basename(f.filename)}:{f.name})"
    except Exception as e: return None,float('nan'),f"fails: {type(e).__name__}: {str(e).splitlines()[0][:90]}"
    finally: signal.alarm(0)


def _exports(model, x, strict) -> bool:
    try: torch.export.export(model, (), {'input_ids': x, 'use_cache': False}, strict=strict); return True
    except Exception: return False


def portable(model, x) -> str:
    "Whether the model saves whole and reloads with the same outputs / exports strict / exports non-strict"
    buf = io.BytesIO()
    torch.save(model, buf); buf.seek(0)
    back = torch.load(buf, weights_only=False).eval()
    with torch.no_grad(): same = torch.equal(back(input_ids=x).logits, model(input_ids=x).logits)
    return '/'.join('ok' if v else 'FAILED' for v in (same, _exports(back, x, True), _exports(back, x, False)))


def fine_tune(model, tokens, a, seed):
    torch.manual_seed(seed)  # the dropout of the attention
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), a.ft_lr, weight_decay=0.)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.ft_lr, total_steps=a.ft_steps, pct_start=0.1)
    model.train()
    for _ in range(a.ft_steps):
        idx = torch.randint(0, len(tokens) - SEQ, (a.ft_bs,), generator=g)
        l = loss(model, torch.stack([tokens[j:j + SEQ] for j in idx]))
        opt.zero_grad(); l.backward(); opt.step(); sched.step()
    return model.eval()


def measure(m, base, data, tokens, example, a, seed) -> dict:
    "Every column of a row but the prune time, for the pruned (or dense) model `m`; `base`: the dense model's numbers"
    held = data['heldout']
    one = perplexity(m, held)
    macs,params,blocks = count(m, example)
    lat = {bs: latency_ms(m, {'input_ids': held[:bs], 'use_cache': False}, a.reps) for bs in (1, 16)}
    port = portable(m, held[:2])
    ft = perplexity(fine_tune(m, tokens, a, seed), held)
    return dict(one_shot=one, fine_tuned=ft, macs=macs / base['macs'], params=params / base['params'],
                blocks=blocks / base['blocks'], speedup_b1=base['lat'][1] / lat[1], speedup_b16=base['lat'][16] / lat[16],
                portable=port)


def _line(r) -> str:
    what = 'dense' if r['fraction'] == 0 else f"{r['fraction']:.2f} of heads+FFN"
    head = f"{what}, seed {r['seed']}, {r['method']:28s}"
    if r['portable'].startswith('fails'): return f"{head} {r['portable']}"
    return (f"{head} one-shot ppl {r['one_shot']:8.2f}  fine-tuned {r['fine_tuned']:7.2f}  MACs {r['macs']:.3f}  "
            f"params {r['params']:.3f}  blocks {r['blocks']:.3f}  speed-up b1 {r['speedup_b1']:.2f}x b16 {r['speedup_b16']:.2f}x  "
            f"prune {r['prune_s']:5.1f} s  save=reload/export strict/non-strict {r['portable']}")


def summary(tab, f) -> str:
    t = tab.loc[f]
    ok = t[t.one_shot.notna()]
    ff,peers = ok[ok.index.str.startswith('fisherfast')],ok[~ok.index.str.startswith('fisherfast')]
    parts = [f"{f:.2f} of heads+FFN removed: best fisherfast vs best peer"]
    for col in ('one_shot', 'fine_tuned'):
        b,p = ff[col].min(),peers[col].min()
        parts.append(f"{col.replace('_', '-')} ppl {b:.2f} ({ff[col].idxmin()}) vs {p:.2f} ({peers[col].idxmin()}): "
                     f"peer − fisherfast {p - b:+.2f}, peer / fisherfast {p / b:.3f}")
    parts.append(f"speed-up b1 {ok.speedup_b1.min():.2f}–{ok.speedup_b1.max():.2f}x, b16 {ok.speedup_b16.min():.2f}–{ok.speedup_b16.max():.2f}x")
    return '; '.join(parts)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--fractions', type=float, nargs='+', default=[0.5, 0.75], help='fraction of the heads and FFN neurons removed')
    p.add_argument('--seeds', type=int, nargs='+', default=[0], help='seeds of the fine-tune order')
    p.add_argument('--ft-steps', type=int, default=150)
    p.add_argument('--ft-bs', type=int, default=8)
    p.add_argument('--ft-lr', type=float, default=1e-3)
    p.add_argument('--reps', type=int, default=10, help='timed runs per latency')
    p.add_argument('--prune-timeout', type=int, default=30, help='seconds a method may take to prune before its row fails')
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if not (CACHES[FAMILY] / 'data.pt').exists():
        from llm_oneshot import PRETRAIN, pretrain
        pretrain(FAMILY, *PRETRAIN[FAMILY], 1)
    dense,data,tokens = load_model(FAMILY),load_data(FAMILY),train_tokens()
    example = {'input_ids': data['calib'][:1]}
    calib = [{'input_ids': data['calib'][i:i + 8]} for i in range(0, len(data['calib']), 8)]
    macs,params,blocks = count(dense, example)
    base = dict(macs=macs, params=params, blocks=blocks, lat={bs: latency_ms(dense, {'input_ids': data['heldout'][:bs], 'use_cache': False}, a.reps) for bs in (1, 16)})
    print(f"dense {FAMILY}: held-out perplexity {perplexity(dense, data['heldout']):.2f}, {params / 1e6:.2f}M params, "
          f"{macs / 1e6:.1f}M MACs per 128 tokens, latency {base['lat'][1]:.2f} ms (batch 1), {base['lat'][16]:.1f} ms (batch 16), "
          f"1 thread; fine-tune: {a.ft_steps} steps of {a.ft_bs}×{SEQ} tokens at lr {a.ft_lr}\n", flush=True)
    rows = []
    jobs = [(0., {'dense': lambda m: m})] + [(f, methods(f, calib, example)) for f in a.fractions]
    for f,fns in jobs:
        for seed in a.seeds:
            for name,fn in fns.items():
                m,secs,err = pruned(fn, copy.deepcopy(dense), a.prune_timeout)
                r = dict(fraction=f, seed=seed, method=name, prune_s=secs, portable=err)
                if m is not None: r.update(measure(m.eval(), base, data, tokens, example, a, seed))
                rows.append(r)
                print(_line(r), flush=True)
    import pandas as pd
    tab = pd.DataFrame(rows).groupby(['fraction', 'method'], sort=False).agg(
        one_shot=('one_shot', 'mean'), fine_tuned=('fine_tuned', 'mean'), macs=('macs', 'mean'), params=('params', 'mean'),
        blocks=('blocks', 'mean'), speedup_b1=('speedup_b1', 'mean'), speedup_b16=('speedup_b16', 'mean'),
        prune_s=('prune_s', 'mean'), portable=('portable', 'first'))
    print(f"\nmean over seeds {a.seeds}; held-out perplexity one-shot and after the fine-tune; MACs, params (whole model) and "
          f"blocks (params of the transformer blocks) as fractions of dense; speed-ups over dense at 1 thread; "
          f"portable: save+reload same outputs / torch.export strict / non-strict\n")
    with pd.option_context('display.width', 250, 'display.max_colwidth', 110):
        print(tab.round(3).to_string())
    print()
    for f in a.fractions: print(summary(tab, f))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == '__main__':
    main()
