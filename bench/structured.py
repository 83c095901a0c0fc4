"""Structured (channel) pruning of a resnet18 on Fashion-MNIST: fisherfast's `Pruner` against torch-pruning and fasterai 0.4.1.

torchvision's resnet18 adapted to 28×28 grey images (a 3×3 stride-2 stem on one channel, no max-pooling, so the
four stages run at 14, 7, 4 and 2 pixels), trained once on a seeded subset of the training set with Adam and a
one-cycle schedule and cached under `models/structured/`. Every method then removes channels from the same trained
model, in torch-pruning's coupled groups (residual streams, BatchNorms), with the classifier's outputs kept and the
same fraction of every group's channels, rounded to multiples of `--round-to` (8) channels (so every method reaches
the same multiply-adds: 2× and 3× fewer):

- torch-pruning 1.6 `MetaPruner` with `MagnitudeImportance(p=2)` (group L2) and with `TaylorImportance` (|w·g|
  from the gradients of `--calib` training images);
- fasterai 0.4.1 `Pruner(model, ratio, 'local', large_final)` (its magnitude criterion, through torch-pruning);
- fisherfast `Pruner` with 'l2' and 'obd' (½·F·w² over the group, F from `calibrate` with mini-batch gradients of
  16 images), each re-fitting every
  layer that lost inputs on the same `--calib` training images (`calib=`); and 'l2' without the re-fit;
- fisherfast `PruneCallback({'macs': f})` with 'l2' and 'obd', which removes the channels during the fine-tune
  (its default schedule: agp over 20–80% of it, 8 steps) instead of before it: no one-shot accuracy;
- with `--allocation global`, fisherfast's one-shot rows also with `Pruner(allocation='global')`: the same MACs, but
  the channels of least score per multiply-add removed first across the model (each group at most 90%), so the
  groups lose different shares (the peers stay uniform).

Accuracy on the 10k test images one-shot (no fine-tuning), then after the same fine-tune for every method
(`--ft-epochs` of fastai's `fit_one_cycle` at `--ft-lr` on the training subset); parameters and MACs
(torch-pruning's count); CPU latency of the pruned model at batch 1 and 64 with one thread (median of `--reps` runs,
eval mode, inference mode), as a speed-up over the dense model measured in the same run. Every pruned model is also
saved whole with `torch.save`, loaded back (`torch.load(weights_only=False)`, outputs compared) and exported with
`torch.export.export`; the table says whether both worked.

    .venv/bin/python bench/structured.py                 # about 40 minutes on 2 idle threads (training the cache: 6 of them)
    .venv/bin/python bench/structured.py --seeds 0 1 2   # the fine-tune and calibration subsets over three seeds
    .venv/bin/python bench/structured.py --latency-only --reps 50   # the pruned architectures' speed-up alone, ~1 minute
    .venv/bin/python bench/structured.py --allocation uniform global --methods 'fisherfast l2 +' 'fisherfast obd +'
"""
import argparse, copy, io, time, warnings, contextlib
from pathlib import Path
warnings.filterwarnings('ignore')
import torch, torch.nn as nn, torch.nn.functional as F
import torch_pruning as tp
from torchvision.models import resnet18
from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (patches Learner.fit_one_cycle)
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fisherfast.data import fashion_mnist_tensors, tensor_accuracy, train_tensors
from fisherfast.sparse.prune_callback import PruneCallback
from fisherfast.sparse.structured import Pruner, latency_ms
from fisherfast.stats.calibrate import calibrate
from gradual import TensorDL

CACHE = Path(__file__).resolve().parent.parent / 'models' / 'structured'


def fashion_resnet18(seed=0) -> nn.Module:
    "torchvision resnet18 for 1×28×28 inputs: a 3×3 stride-2 stem, no max-pooling"
    torch.manual_seed(seed)
    m = resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(1, 64, 3, stride=2, padding=1, bias=False)
    m.maxpool = nn.Identity()
    return m


def trained(data, a) -> nn.Module:
    x, y, xv, yv = data
    path = CACHE / f'resnet18_n{a.n_train}_e{a.epochs}_s{a.train_seed}.pt'
    model = fashion_resnet18(a.train_seed)
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    t0 = time.perf_counter()
    train_tensors(model, x, y, a.epochs, bs=128, lr=a.lr, seed=a.train_seed)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    print(f"trained the dense resnet18 in {time.perf_counter() - t0:.0f} s, cached at {path}")
    return model.eval()


def batches(x, y, n, bs=128): return [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)]


def ratio_for(model, example, macs_removed, round_to) -> float:
    "The channel fraction of every group that removes `macs_removed` of the multiply-adds (fisherfast's bisection)"
    return Pruner(copy.deepcopy(model), example, 'l2', {'macs': macs_removed}, round_to=round_to).ratio()


def tp_prune(model, example, ratio, round_to, imp, calib=None):
    if calib is not None:  # TaylorImportance reads the accumulated gradients
        model.zero_grad()
        for xb, yb in calib: F.cross_entropy(model(xb), yb).backward()
    tp.pruner.MetaPruner(model, example, importance=imp, pruning_ratio=ratio, ignored_layers=[model.fc], round_to=round_to).step()
    model.zero_grad()
    return model


def fasterai_prune(model, example, ratio, round_to):
    from fasterai.prune.pruner import Pruner as FaPruner
    from fasterai.core.criteria import large_final
    with contextlib.redirect_stdout(io.StringIO()):  # fasterai prints what it ignores
        FaPruner(model, ratio, 'local', large_final, ignored_layers=[model.fc], example_inputs=example, round_to=round_to).prune_model()
    return model


def methods(ratio, round_to, calib, stats, example, allocations=('uniform',)):
    ours = lambda crit, cal, alloc: lambda m: Pruner(m, example, crit, ratio, stats=stats, calib=cal, round_to=round_to,
                                                      allocation=alloc).prune()
    label = lambda alloc: '' if alloc == 'uniform' else f' ({alloc})'
    return {
        'torch-pruning magnitude (L2)': lambda m: tp_prune(m, example, ratio, round_to, tp.importance.MagnitudeImportance(p=2)),
        'torch-pruning taylor': lambda m: tp_prune(m, example, ratio, round_to, tp.importance.TaylorImportance(), calib),
        'fasterai 0.4.1 large_final': lambda m: fasterai_prune(m, example, ratio, round_to),
        **{f'fisherfast {name}{label(alloc)}': ours(crit, cal, alloc) for alloc in allocations
           for name, crit, cal in (('l2, no re-fit', 'l2', None), ('l2 + re-fit', 'l2', calib), ('obd + re-fit', 'obd', calib))},
    }


def fine_tune(model, data, a, seed, cbs=None):
    "The same fine-tune for every method: fastai's fit_one_cycle on the training subset"
    x, y, xv, yv = data
    torch.manual_seed(seed)
    dls = DataLoaders(TensorDL(x, y, bs=128, shuffle=True, drop_last=True), TensorDL(xv, yv, bs=1000))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat())
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(a.ft_epochs, a.ft_lr, cbs=cbs)
    return learn.model.eval()


def latency_table(dense, example, xv, lat0, a):
    "The speed-up of the architecture every method reaches at each MACs target, with `--reps` timed runs each"
    torch.set_num_threads(1)
    for f in a.macs:
        for alloc in a.allocation:  # 'global': the architecture of l2's ranking (another criterion gives another one)
            m = Pruner(copy.deepcopy(dense), example, 'l2', {'macs': f}, round_to=a.round_to, allocation=alloc).prune()
            lat = {bs: latency_ms(m, xv[:bs], a.reps) for bs in (1, 64)}
            macs = tp.utils.count_ops_and_params(m, example)[0] / tp.utils.count_ops_and_params(dense, example)[0]
            print(f"{1 / (1 - f):.0f}x fewer MACs, {alloc} (MACs {macs:.3f}): {lat[1]:.2f} ms (batch 1), {lat[64]:.1f} ms (batch 64): "
                  f"speed-up {lat0[1] / lat[1]:.2f}x and {lat0[64] / lat[64]:.2f}x")


def portable(model, x) -> str:
    "Whether the pruned model saves, reloads and exports as a plain PyTorch module"
    buf = io.BytesIO()
    torch.save(model, buf); buf.seek(0)
    back = torch.load(buf, weights_only=False).eval()
    with torch.no_grad(): same = torch.allclose(back(x), model(x))
    try: torch.export.export(back, (x,)); exported = True
    except Exception: exported = False
    return f"{'ok' if same else 'DIFFERS'}/{'ok' if exported else 'FAILED'}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n-train', type=int, default=12000, help='training images (a seeded subset of the 60k)')
    p.add_argument('--epochs', type=int, default=4, help='epochs of the dense training')
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--train-seed', type=int, default=0)
    p.add_argument('--seeds', type=int, nargs='+', default=[0], help='seeds of the calibration subset and the fine-tune')
    p.add_argument('--calib', type=int, default=1024, help='training images for the re-fit, the Fisher and Taylor')
    p.add_argument('--ft-epochs', type=int, default=1)
    p.add_argument('--ft-lr', type=float, default=1e-3)
    p.add_argument('--macs', type=float, nargs='+', default=[0.5, 2 / 3], help='fractions of the MACs removed (0.5: 2× fewer)')
    p.add_argument('--round-to', type=int, default=8, help='kept channel counts a multiple of this, for every method')
    p.add_argument('--threads', type=int, default=2, help='torch threads for training and pruning (latency: always 1)')
    p.add_argument('--reps', type=int, default=20, help='timed runs per latency')
    p.add_argument('--allocation', nargs='+', default=['uniform'], choices=['uniform', 'global'],
                   help="fisherfast's allocation of the removed channels among the groups (the peers' is uniform)")
    p.add_argument('--methods', nargs='+', default=None, help='run only the methods whose name contains one of these')
    p.add_argument('--latency-only', action='store_true',
                   help='only the speed-up of the pruned architecture (the same for every method), timed alone on a quiet machine')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    x, y, xv, yv = fashion_mnist_tensors()
    g = torch.Generator().manual_seed(a.train_seed)
    idx = torch.randperm(len(x), generator=g)[:a.n_train]
    x, y = x[idx], y[idx]
    dense = trained((x, y, xv, yv), a)
    example = x[:1]
    dense_acc = 100 * tensor_accuracy(dense, xv, yv)
    macs0, params0 = tp.utils.count_ops_and_params(dense, example)
    torch.set_num_threads(1)
    lat0 = {bs: latency_ms(dense, xv[:bs], a.reps) for bs in (1, 64)}
    torch.set_num_threads(a.threads)
    print(f"dense resnet18: {100 * dense_acc / 100:.2f}% test accuracy, {params0 / 1e6:.2f}M params, {macs0 / 1e6:.1f}M MACs, "
          f"latency {lat0[1]:.2f} ms (batch 1), {lat0[64]:.1f} ms (batch 64), 1 thread\n")
    if a.latency_only: return latency_table(dense, example, xv, lat0, a)
    rows = []
    for f in a.macs:
        ratio = ratio_for(dense, example, f, a.round_to)
        for seed in a.seeds:
            gs = torch.Generator().manual_seed(1000 + seed)
            ci = torch.randperm(len(x), generator=gs)[:a.calib]
            calib = batches(x[ci], y[ci], a.calib)
            # the Fisher from mini-batch gradients of 16 images: per-sample ones of a resnet18 cost minutes on a CPU
            stats = calibrate(dense, batches(x[ci], y[ci], a.calib, bs=16), F.cross_entropy, n_samples=a.calib,
                              kinds=('fisher_diag',), per_sample=False, progress=False)
            gradual = {f'fisherfast PruneCallback {c} (during the fine-tune)': c for c in ('l2', 'obd')}
            for name, fn in {**methods(ratio, a.round_to, calib, stats, example, a.allocation), **gradual}.items():
                if a.methods and not any(s in name for s in a.methods): continue
                m = copy.deepcopy(dense)
                if name in gradual:  # no one-shot model: the channels go during the fine-tune, on its default schedule
                    t = time.perf_counter()
                    m = fine_tune(m, (x, y, xv, yv), a, seed, PruneCallback({'macs': f}, fn, round_to=a.round_to))
                    prune_s, one = time.perf_counter() - t, float('nan')
                else:
                    t = time.perf_counter(); m = fn(m); prune_s = time.perf_counter() - t
                    m.eval()
                    one = 100 * tensor_accuracy(m, xv, yv)
                macs, params = tp.utils.count_ops_and_params(m, example)
                torch.set_num_threads(1)
                lat = {bs: latency_ms(m, xv[:bs], a.reps) for bs in (1, 64)}
                torch.set_num_threads(a.threads)
                port = portable(m, xv[:2])
                if name not in gradual: m = fine_tune(m, (x, y, xv, yv), a, seed)
                ft = 100 * tensor_accuracy(m, xv, yv)
                rows.append(dict(macs_removed=f, seed=seed, method=name, one_shot=one, fine_tuned=ft, macs=macs / macs0,
                                 params=params / params0, speedup_b1=lat0[1] / lat[1], speedup_b64=lat0[64] / lat[64],
                                 prune_s=prune_s, save_export=port))
                r = rows[-1]
                print(f"{1 / (1 - f):.0f}x fewer MACs, seed {seed}, {name:30s} one-shot {one:6.2f}  fine-tuned {ft:6.2f}  "
                      f"MACs {r['macs']:.3f}  params {r['params']:.3f}  speed-up b1 {r['speedup_b1']:.2f}x b64 "
                      f"{r['speedup_b64']:.2f}x  prune {prune_s:5.1f} s  save/export {port}", flush=True)
    import pandas as pd
    df = pd.DataFrame(rows)
    print(f"\nmean over seeds {a.seeds}; dense {dense_acc:.2f}% test accuracy; accuracy in %, MACs and params as fractions of dense, "
          f"speed-ups over dense at 1 thread\n")
    tab = df.groupby(['macs_removed', 'method'], sort=False).agg(
        one_shot=('one_shot', 'mean'), fine_tuned=('fine_tuned', 'mean'), macs=('macs', 'mean'), params=('params', 'mean'),
        speedup_b1=('speedup_b1', 'mean'), speedup_b64=('speedup_b64', 'mean'), prune_s=('prune_s', 'mean'),
        save_export=('save_export', 'first'))
    print(tab.round(3).to_string())
    for f in a.macs:
        t = tab.loc[f]
        peers = t[~t.index.str.startswith('fisherfast')]
        best = t[t.index.str.startswith('fisherfast') & ~t.index.str.contains('no re-fit')]
        print(f"\n{1 / (1 - f):.0f}x fewer MACs: best fisherfast − best peer: one-shot {best.one_shot.max() - peers.one_shot.max():+.2f} "
              f"(goal ≥ +5), fine-tuned {best.fine_tuned.max() - peers.fine_tuned.max():+.2f} (goal ≥ +1); "
              f"speed-up at batch 64 {t.speedup_b64.min():.2f}–{t.speedup_b64.max():.2f}x, batch 1 {t.speedup_b1.min():.2f}–{t.speedup_b1.max():.2f}x "
              f"(goal ≥ 1.7 at 2×)")


if __name__ == '__main__':
    main()
