"""Size of `save_compact` checkpoints against the dense `state_dict` saved by `torch.save`.

For torchvision `resnet18()` (random init, fp32), pruned by global magnitude at 50/90/95% unstructured, 2:4
(conv1, with 3 input channels, stays dense) and 50% of the filters of every layer: the bytes of both files, their
ratio, the time to save and load the compact one, and the round trip: every tensor of the loaded state_dict
equal bit for bit to the pruned model's (zeros compared as +0.0: the checkpoint does not keep the sign of a
pruned zero) and the masks equal to the Sparsifier's. Goal: at most 20% of the dense size at 90%.

Run: `.venv/bin/python bench/checkpoint_size.py`
"""
import os, tempfile, time, warnings
from pathlib import Path
import torch
from torchvision.models import resnet18
from fisherfast.all import Sparsifier
from fisherfast.sparse.export import save_compact, load_compact

CASES = {  # name -> (Sparsifier kwargs, sparsity)
    'unstructured 50%': (dict(granularity='weight'), 0.5),
    'unstructured 90%': (dict(granularity='weight'), 0.9),
    'unstructured 95%': (dict(granularity='weight'), 0.95),
    '2:4': (dict(granularity='weight', nm=True, nm_skip=True), 0.5),
    'filter 50% (local)': (dict(granularity='filter', context='local'), 0.5),
}
GOAL = 0.20

def model():
    torch.manual_seed(0)
    return resnet18().eval()

def canon(t): return (t + 0 if t.is_floating_point() else t).reshape(-1).view(torch.uint8)  # -0.0 -> +0.0

def same_bits(a, b):
    sa,sb = a.state_dict(),b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(canon(sa[k]), canon(sb[k])) for k in sa)

def run(name, kw, sparsity, tmp):
    m = model()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        sp = Sparsifier(m, context=kw.pop('context', 'global'), **kw)
    sp.sparsify_model(sparsity)
    torch.save(m.state_dict(), tmp/'dense.pt')
    t0 = time.perf_counter(); save_compact(sp, tmp/'compact.pt'); t_save = time.perf_counter() - t0
    new = resnet18().eval()
    t0 = time.perf_counter(); masks = load_compact(new, tmp/'compact.pt'); t_load = time.perf_counter() - t0
    ok = same_bits(new, m) and masks.keys() == sp.masks.keys() and all(torch.equal(masks[n], sp.masks[n]) for n in masks)
    dense,compact = os.path.getsize(tmp/'dense.pt'),os.path.getsize(tmp/'compact.pt')
    return dict(case=name, sparsity=sp.sparsity_report().iloc[-1].sparsity, dense=dense, compact=compact,
                ratio=compact / dense, save_s=t_save, load_s=t_load, roundtrip=ok)

def main():
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    rows = [run(n, dict(kw), s, tmp) for n,(kw,s) in CASES.items()]
    print(f"resnet18 (random init, fp32), torch {torch.__version__}, CPU")
    print(f"{'case':20} {'sparsity':>8} {'dense bytes':>12} {'compact bytes':>14} {'ratio':>6} {'save s':>7} {'load s':>7}  round trip")
    for r in rows:
        print(f"{r['case']:20} {r['sparsity']:8.1%} {r['dense']:12,} {r['compact']:14,} {r['ratio']:6.1%} "
              f"{r['save_s']:7.2f} {r['load_s']:7.2f}  {'exact' if r['roundtrip'] else 'MISMATCH'}")
    r90 = next(r for r in rows if r['case'] == 'unstructured 90%')
    print(f"goal: compact <= {GOAL:.0%} of dense at 90% unstructured: {r90['ratio']:.1%}, "
          f"{'met' if r90['ratio'] <= GOAL else 'NOT met'}")
    if not all(r['roundtrip'] for r in rows): raise SystemExit("round trip failed")

if __name__ == '__main__': main()
