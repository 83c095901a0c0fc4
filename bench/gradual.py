"""Gradual pruning during training: fisherfast's `SparsifyCallback` against dense training and fasterai 0.4.1.

The Fashion-MNIST CNN (conv 1→16→32 with pooling, Linear head), `fit_one_cycle` with Adam, on a
seeded subset of the training set, validated on the 10k test images. Every pruning run uses agp over
the same window of training (by default 5% to 60%, then fine-tuning), global weight pruning of every Conv2d
and Linear layer, to 90% and 95%:

- dense: no pruning (the reference for accuracy and time);
- fisherfast magnitude / obd (½·F·w², eFIM from the training gradients) / woodfisher (OBS, last
  n_grads training gradients), the target checked about 200 times per fit (the default);
- fasterai 0.4.1 `SparsifyCallback` with `large_final` (magnitude) and its agp.

Time: the median over epochs of the training phase of one epoch (validation excluded), as a ratio to
the dense fit's; and, steadier on a shared machine, the time spent inside the pruning callback's step
events per epoch, as a fraction of the dense epoch. Batches are sliced from in-memory tensors, so
the ratios show the callback's cost, not the data loading's.

    .venv/bin/python bench/gradual.py                 # about 7 minutes, one thread
    .venv/bin/python bench/gradual.py --n-train 60000 --epochs 8
"""
import argparse, contextlib, io, statistics, time, warnings
warnings.filterwarnings('ignore')
import torch, torch.nn as nn
from fastcore.basics import chunked
from fastai.callback.core import Callback
from fastai.callback.schedule import fit_one_cycle  # noqa: F401
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from fisherfast.core.criteria import magnitude
from fisherfast.core.schedule import agp
from fisherfast.data import fashion_mnist_tensors, fashion_cnn
from fisherfast.sparse.callback import SparsifyCallback

try: from fisherfast.fisher.criteria import obd
except ImportError: obd = None
try: from fisherfast.fisher.obs import woodfisher
except ImportError: woodfisher = None



class TensorDL(DataLoader):
    "Batches sliced from in-memory tensors, reshuffled every epoch"
    def __init__(self, x, y, **kwargs): super().__init__(range(len(x)), **kwargs); self.x,self.y = x,y
    def create_batches(self, samps):
        for idx in chunked(list(samps), self.bs, drop_last=self.drop_last):
            idx = torch.tensor(idx)
            yield self.x[idx], self.y[idx]


class TrainTimer(Callback):
    "Seconds of the training phase of every epoch"
    order = 100
    def before_fit(self): self.times = []
    def before_train(self): self.t0 = time.perf_counter()
    def after_train(self): self.times.append(time.perf_counter() - self.t0)


class CallbackTimer(Callback):
    "Seconds spent in the callbacks ordered between `lo` and `hi` (the pruning callback), during training steps"
    def __init__(self, cb_order): self.lo,self.hi,self.total = _Mark(cb_order - 0.5, self, 'start'),_Mark(cb_order + 0.5, self, 'stop'),0.

class _Mark(Callback):
    def __init__(self, order, timer, what): self.order,self.timer,self.what = order,timer,what
    def _mark(self):
        if self.what == 'start': self.timer.t0 = time.perf_counter()
        else: self.timer.total += time.perf_counter() - self.timer.t0
    before_step = after_step = _mark


def run(data, epochs, lr, bs, cb=None, seed=0):
    set_seed(seed)
    x, y, xv, yv = data
    dls = DataLoaders(TensorDL(x, y, bs=bs, shuffle=True, drop_last=True), TensorDL(xv, yv, bs=1000))
    learn = Learner(dls, fashion_cnn(hidden=None, seed=seed), loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    timer,ct = TrainTimer(),CallbackTimer(getattr(cb, 'order', 0))
    with learn.no_bar(), learn.no_logging(), contextlib.redirect_stdout(io.StringIO()):  # fasterai prints
        learn.fit_one_cycle(epochs, lr, cbs=[timer, ct.lo, ct.hi] + ([cb] if cb else []))
    layers = [m for m in learn.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    sparsity = sum(int((m.weight == 0).sum()) for m in layers) / sum(m.weight.numel() for m in layers)
    return dict(accuracy=100 * learn.recorder.values[-1][2], sparsity=100 * sparsity, epoch_s=statistics.median(timer.times),
                cb_s=ct.total / epochs)


def configs(s, n_grads, start, end):
    window = agp.window(start, end)
    ours = lambda crit, **kw: lambda: SparsifyCallback(s, 'weight', 'global', crit, schedule=window, **kw)
    res = {'fisherfast magnitude': ours(magnitude)}
    if obd is not None: res['fisherfast obd'] = ours(obd)
    if woodfisher is not None:
        res['fisherfast woodfisher'] = ours(woodfisher(block_size=128, n_grads=n_grads, damp=1e-5), n_grads=n_grads)
    def fasterai():
        from fasterai.sparse.sparsify_callback import SparsifyCallback as FaSparsify
        from fasterai.core.criteria import large_final
        from fasterai.core.schedule import Schedule, sched_agp
        return FaSparsify(s, 'weight', 'global', large_final, Schedule(sched_agp, start_pct=start, end_pct=end),
                          layer_type=(nn.Conv2d, nn.Linear))
    res['fasterai 0.4.1 large_final'] = fasterai
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n-train', type=int, default=24000, help='training images (a seeded subset of the 60k)')
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--n-grads', type=int, default=64, help='gradients kept for woodfisher')
    p.add_argument('--sparsities', type=float, nargs='+', default=[0.9, 0.95])
    p.add_argument('--start', type=float, default=0.05, help='pruning starts at this fraction of training')
    p.add_argument('--end', type=float, default=0.6, help='and reaches the target at this one')
    p.add_argument('--threads', type=int, default=1, help='torch threads (1: steadier timings on a shared machine)')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    x, y, xv, yv = fashion_mnist_tensors()
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:a.n_train]
    data = (x[idx], y[idx], xv, yv)
    print(f"Fashion-MNIST CNN conv 1-16-32 + Linear ({sum(m.weight.numel() for m in fashion_cnn(hidden=None).modules() if isinstance(m, (nn.Conv2d, nn.Linear))):,} "
          f"prunable weights); {a.n_train:,} training images, 10,000 test; fit_one_cycle({a.epochs}, {a.lr}), bs {a.bs}, "
          f"{torch.get_num_threads()} threads; pruning: agp over {a.start:.0%}-{a.end:.0%} of training, weight, global\n", flush=True)
    t0 = time.perf_counter()
    dense = run(data, a.epochs, a.lr, a.bs)
    rows = [dict(method='dense', target=0., **dense)]
    print(f"dense: {dense['accuracy']:.2f}%  {dense['epoch_s']:.2f} s/epoch", flush=True)
    for s in a.sparsities:
        for name, make in configs(s, a.n_grads, a.start, a.end).items():
            r = run(data, a.epochs, a.lr, a.bs, make())
            rows.append(dict(method=name, target=100 * s, **r))
            print(f"{name} {s:.0%}: {r['accuracy']:.2f}%  sparsity {r['sparsity']:.2f}%  {r['epoch_s']:.2f} s/epoch", flush=True)
    again = run(data, a.epochs, a.lr, a.bs)  # dense again: how much the timings drift on a shared machine
    ref = statistics.mean([dense['epoch_s'], again['epoch_s']])
    print(f"\n{'method':<28}{'target':>7}{'accuracy':>10}{'vs dense':>10}{'sparsity':>10}{'time/epoch':>12}{'callback':>10}")
    for r in rows:
        print(f"{r['method']:<28}{r['target']:>6.0f}%{r['accuracy']:>9.2f}%{r['accuracy'] - dense['accuracy']:>+10.2f}"
              f"{r['sparsity']:>9.2f}%{r['epoch_s'] / ref:>11.3f}x{r['cb_s'] / ref:>+9.1%}")
    print(f"(time/epoch: median training phase over epochs, relative to the mean of two dense fits, "
          f"{dense['epoch_s']:.2f} s and {again['epoch_s']:.2f} s, which shows the noise of a shared machine;\n"
          f" callback: seconds per epoch spent inside the pruning callback's step events, as a fraction of the dense epoch; "
          f"total {time.perf_counter() - t0:.0f} s)")
    by = {(r['method'], r['target']): r for r in rows}
    fa = 'fasterai 0.4.1 large_final'
    print("\ngoals:")
    for name in [n for n in configs(0.9, a.n_grads, a.start, a.end) if n != fa]:
        if (name, 90.) in by:
            d = by[name, 90.]['accuracy'] - dense['accuracy']
            print(f"  {name} 90% within 1 point of dense: {d:+.2f} {'met' if d >= -1 else 'MISSED'}")
        if (name, 95.) in by and (fa, 95.) in by:
            d = by[name, 95.]['accuracy'] - by[fa, 95.]['accuracy']
            print(f"  {name} 95% at least 1 point above fasterai: {d:+.2f} {'met' if d >= 1 else 'MISSED'}")
    for name, limit in [('fisherfast magnitude', 1.05), ('fisherfast obd', 1.15)]:
        ts = [by[k]['epoch_s'] / ref for k in by if k[0] == name]
        cs = [by[k]['cb_s'] / ref for k in by if k[0] == name]
        if ts: print(f"  {name} overhead <= {limit - 1:.0%}: wall clock {max(ts) - 1:+.1%}, inside the callback {max(cs):+.1%} "
                     f"{'met' if max(cs) <= limit - 1 else 'MISSED'} (by the callback's own time)")


if __name__ == '__main__': main()
