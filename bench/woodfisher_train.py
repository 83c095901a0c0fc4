"""WoodFisher during training: the inverse brought up to date at each pruning step (new) against rebuilt (old).

`SparsifyCallback` prunes about 200 times per fit; at each step WoodFisher needs every layer's block-diagonal
inverse Fisher of the last `n_grads` training gradients, masked to the weights still alive. The previous release
rebuilt it from scratch each time; `woodfisher()` now keeps it and brings it up to date (a Woodbury step for
the gradients that joined and left the window, a Schur complement for the weights pruned since).

Two CNNs on Fashion-MNIST, each trained dense, with the previous release's woodfisher, and with today's, in the
same run (`fit_one_cycle(6, 3e-3)`, Adam, bs 128, agp over 20–80% of training to 90%, global weight pruning,
woodfisher's defaults: blocks of 128, the last 256 gradients, damp 1e-5):

- the bench CNN `fashion_cnn(hidden=24)` (42,624 weights), 24,000 training images, as `bench/gradual.py`;
- a resnet-style CNN (`resnet_cnn`: stem, four residual blocks with BatchNorm, 8-16-32-64 channels, global
  pooling; 77,128 weights, 28×28 input), 12,000 training images.

"old" is `woodfisher(dynamic=False)` (rebuilt at every step) with the previous release's count of the live
weights: those the optimizer step before the pruning step moved off zero counted as alive (today the mask
decides). `--rebuild` adds `woodfisher(dynamic=False)` alone (today's semantics, rebuilt), which isolates the
two changes. The callback time is the time inside the pruning callback's step events per epoch, as a fraction
of the dense epoch (the training phase, median over epochs).

`--big` measures instead the peak memory (ru_maxrss, each model in its own process) of torchvision resnet18
(n_grads=128) and resnet50 (n_grads=64), `num_classes=10`, random init, random 3×32×32 images, bs 8, trained for
n_grads + 4 steps (a full window) with woodfisher in the callback and one pruning step (to 50%) at the end, the
gradients kept in bfloat16; and shows the error that the float32 defaults give.

    .venv/bin/python bench/woodfisher_train.py                # about 10 minutes on one idle thread
    .venv/bin/python bench/woodfisher_train.py --seeds 0 1 2  # more seeds (three times as long)
    .venv/bin/python bench/woodfisher_train.py --big          # resnet18 and resnet50: about 10 minutes
"""
import argparse, json, resource, statistics, subprocess, sys, time, warnings
warnings.filterwarnings('ignore')
import torch, torch.nn as nn, torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (patches Learner.fit_one_cycle)
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from fisherfast.core.schedule import agp
from fisherfast.criteria.obs import woodfisher
from fisherfast.data import fashion_cnn, fashion_mnist_tensors
from fisherfast.sparse.callback import SparsifyCallback
from gradual import TensorDL, TrainTimer  # bench/ is on the path when a bench runs

GOAL_CALLBACK = 0.25  # callback time per epoch, as a fraction of a dense epoch
GOAL_ACCURACY = -0.2  # points of accuracy new may trail old by on a seed and still count as no loss (run-to-run noise)


class Block(nn.Module):
    "A residual block: two 3×3 convs with BatchNorm, a 1×1 conv on the shortcut when the shape changes"
    def __init__(self, ni, nf, stride=1):
        super().__init__()
        self.c1,self.b1 = nn.Conv2d(ni, nf, 3, stride, 1, bias=False),nn.BatchNorm2d(nf)
        self.c2,self.b2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=False),nn.BatchNorm2d(nf)
        self.down = None if stride == 1 and ni == nf else nn.Sequential(nn.Conv2d(ni, nf, 1, stride, bias=False), nn.BatchNorm2d(nf))
    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(y + (x if self.down is None else self.down(x)))

def resnet_cnn(width=8, seed=0) -> nn.Sequential:
    "A resnet-style CNN for 28×28 grey images: stem, four residual blocks (`width`·1-1-2-4-8 channels), global pooling"
    torch.manual_seed(seed)
    w = width
    return nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                         Block(w, w), Block(w, 2 * w, 2), Block(2 * w, 4 * w, 2), Block(4 * w, 8 * w, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, 10))

MODELS = {'bench CNN': (lambda seed: fashion_cnn(hidden=24, seed=seed), 24000),
          'resnet CNN': (resnet_cnn, 24000)}


class _Mark(Callback):
    "Starts or stops `timer` around the step events of the callbacks ordered between two marks"
    def __init__(self, order, timer, start): self.order,self.timer,self.start = order,timer,start
    def _mark(self):
        if self.start: self.timer.t0 = time.perf_counter()
        else: self.timer.total += time.perf_counter() - self.timer.t0
    before_step = after_step = _mark

class CallbackTimer:
    "Seconds spent in the pruning callback's step events: two marks ordered just around it"
    def __init__(self, order): self.total,self.cbs = 0.,[_Mark(order - 0.5, self, True), _Mark(order + 0.5, self, False)]


def previous_release(crit):
    "`crit` (a `woodfisher(dynamic=False)`) as the previous release ran it: weights moved off zero by the last step count as alive"
    crit.f.__self__._alive = lambda layer, w: w.flatten() != 0
    return crit

CONFIGS = {'dense': None,
           'old': lambda: previous_release(woodfisher(dynamic=False)),
           'rebuild': lambda: woodfisher(dynamic=False),
           'new': lambda: woodfisher()}


def run(model, data, n_train, crit=None, seed=0, epochs=6, lr=3e-3):
    "Train `model`, pruned with `crit` if given; accuracy, median epoch and callback seconds per epoch"
    set_seed(seed)
    x,y,xv,yv = data
    dls = DataLoaders(TensorDL(x[:n_train], y[:n_train], bs=128, shuffle=True, drop_last=True), TensorDL(xv, yv, bs=1000))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    cb = None if crit is None else SparsifyCallback(0.9, 'weight', 'global', crit, schedule=agp.window(0.2, 0.8))
    timer,ct = TrainTimer(),CallbackTimer(SparsifyCallback.order)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, lr, cbs=[timer, *ct.cbs] + ([cb] if cb else []))
    sparsity = cb.current_sparsity() if cb else 0.
    return dict(accuracy=100 * learn.recorder.values[-1][2], epoch_s=statistics.median(timer.times),
                callback_s=ct.total / epochs, sparsity=sparsity)


def training(a):
    torch.set_num_threads(1)
    x,y,xv,yv = fashion_mnist_tensors()
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    data = (x[idx], y[idx], xv, yv)
    names = ['dense', 'old'] + (['rebuild'] if a.rebuild else []) + ['new']
    print(f"fit_one_cycle({a.epochs}, 3e-3), bs 128, {torch.get_num_threads()} thread; woodfisher to 90% over 20-80% "
          f"of training, global; seeds {' '.join(map(str, a.seeds))}\n", flush=True)
    t0,res = time.perf_counter(),{}
    for model_name,(make,n_train) in MODELS.items():
        for seed in a.seeds:
            for name in names:
                r = run(make(seed=seed), data, n_train, CONFIGS[name] and CONFIGS[name](), seed, a.epochs)
                res.setdefault((model_name, name), []).append(r)
                print(f"{model_name}, seed {seed}, {name:7s}: {r['accuracy']:.2f}%  sparsity {r['sparsity']:.2%}  "
                      f"{r['epoch_s']:.2f} s/epoch, callback {r['callback_s']:.2f} s/epoch", flush=True)
    print(f"\n{'model':<12}{'woodfisher':<10}{'accuracy':>10}{'vs old':>9}{'callback':>11}{'of dense epoch':>16}"
          f"{'time/epoch':>12}   per seed")
    goals = []
    for model_name in MODELS:
        dense = statistics.mean(r['epoch_s'] for r in res[model_name, 'dense'])
        acc = lambda name: [r['accuracy'] for r in res[model_name, name]]
        for name in names:
            rs = res[model_name, name]
            vs_old = statistics.mean(u - v for u,v in zip(acc(name), acc('old')))
            cb_frac = statistics.mean(r['callback_s'] for r in rs) / dense
            print(f"{model_name:<12}{name:<10}{statistics.mean(acc(name)):>9.2f}%{vs_old:>+9.2f}"
                  f"{statistics.mean(r['callback_s'] for r in rs):>9.2f} s{cb_frac:>15.1%}"
                  f"{statistics.mean(r['epoch_s'] for r in rs):>10.2f} s   " + ' '.join(f"{v:.2f}" for v in acc(name)))
        new_cb = statistics.mean(r['callback_s'] for r in res[model_name, 'new']) / dense
        old_cb = statistics.mean(r['callback_s'] for r in res[model_name, 'old']) / dense
        d_acc = statistics.mean(u - v for u,v in zip(acc('new'), acc('old')))
        goals += [f"{model_name}: callback <= {GOAL_CALLBACK:.0%} of a dense epoch: new {new_cb:.1%} (old {old_cb:.1%}) "
                  f"{'met' if new_cb <= GOAL_CALLBACK else 'MISSED'}",
                  f"{model_name}: no accuracy lost against old: {d_acc:+.2f} points "
                  f"{'met' if d_acc >= GOAL_ACCURACY else 'MISSED'}"]
    print(f"(accuracy and time: means over seeds; vs old: mean of the per-seed differences; total "
          f"{time.perf_counter() - t0:.0f} s)\n\ngoals:\n  " + '\n  '.join(goals))


def _peak_gib() -> float: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux

def big_worker(arch, n_grads, steps):
    "Train torchvision `arch` for `steps` steps with woodfisher and one pruning step at the end; print the peak memory"
    import torchvision
    import fisherfast.sparse.sparsifier as sparsifier_module
    from fisherfast.stats.train import TrainStats
    sparsifier_module.progress_min_weights = float('inf')  # no progress bar in the way of the result line
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10)
    g = torch.Generator().manual_seed(0)
    x,y = torch.randn(8 * steps, 3, 32, 32, generator=g),torch.randint(0, 10, (8 * steps,), generator=g)
    dls = DataLoaders(TensorDL(x, y, bs=8, shuffle=False, drop_last=True), TensorDL(x[:8], y[:8], bs=8))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat())
    try:  # the float32 defaults: refused before training, saying what to set
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=SparsifyCallback(0.5, criteria=woodfisher()))
        refused = 'ran'
    except ValueError as e: refused = str(e)
    base = _peak_gib()
    cb = SparsifyCallback(0.5, criteria=woodfisher(n_grads=n_grads), grads_dtype=torch.bfloat16, every=10**6)
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=cb)  # `every` past the fit: one pruning step, at its end
    weights = sum(m.weight.numel() for m in cb.sparsifier.layers.values())
    print('RESULT ' + json.dumps(dict(weights=weights, base_gib=base, peak_gib=_peak_gib(), seconds=time.perf_counter() - t,
                                      sparsity=cb.current_sparsity(), prunings=len(cb.history), refused=refused,
                                      rows_gib=weights * (n_grads + cb.stats.slack) * 2 / 2**30,
                                      max_gib=TrainStats.max_bytes / 2**30)), flush=True)

def big(a):
    print("torchvision resnets, woodfisher(n_grads=N) in SparsifyCallback(0.5, grads_dtype=torch.bfloat16), N + 4 steps of "
          "bs 8 (3×32×32) and one pruning step, 1 thread; peak resident memory of each process\n", flush=True)
    for arch,n in [('resnet18', 128), ('resnet50', 64)]:
        r = subprocess.run([sys.executable, __file__, '--big-worker', arch, str(n), str(n + 4)], capture_output=True, text=True)
        lines = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')]
        if not lines: print(f"{arch}: failed (rc {r.returncode})\n{r.stderr[-3000:]}"); continue
        res = json.loads(lines[-1][7:])
        print(f"{arch} ({res['weights']:,} prunable weights), n_grads={n}: peak {res['peak_gib']:.2f} GiB (the model and "
              f"imports {res['base_gib']:.2f} GiB; the kept gradients {res['rows_gib']:.2f} GiB), {res['seconds']:.0f} s, "
              f"{res['prunings']} pruning step to {res['sparsity']:.1%}; "
              f"{'fits' if res['peak_gib'] < 24 else 'does NOT fit'} in 24 GiB")
        print(f"  the float32 defaults (n_grads=256): {res['refused']}\n", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--rebuild', action='store_true', help="also run woodfisher(dynamic=False): today's semantics, rebuilt")
    p.add_argument('--big', action='store_true', help='peak memory of torchvision resnet18 and resnet50 instead')
    p.add_argument('--big-worker', nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.big_worker: return big_worker(a.big_worker[0], int(a.big_worker[1]), int(a.big_worker[2]))
    big(a) if a.big else training(a)

if __name__ == '__main__': main()
