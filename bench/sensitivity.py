"""Per-layer targets from a sensitivity analysis vs uniform per-layer sparsity, one-shot, no fine-tuning.

A small CNN on Fashion-MNIST (Debian `dataset-fashion-mnist`): conv 1→16 and 16→32 (3×3, ReLU, 2×2 max-pool),
Linear 1568→64, Linear 64→10; trained 2 epochs with Adam (lr 1e-3, one-cycle, batch 128) on 58,000 training
images. 2,000 held-out training images are the validation set the sweep is evaluated on; the accuracies are on the
full 10,000-image test set. At 80% and 90% of all prunable weights, with the same criterion (obd when
`fisherfast.fisher` is there, else magnitude), it compares:

- uniform: every layer pruned to the target;
- measured: `sensitivity(...).to_layer_targets(target)` from a swept validation loss;
- predicted: the same from `mode='predict'` (sums of saliencies, no evaluation);
- global: one threshold for the model (for reference).

    .venv/bin/python bench/sensitivity.py              # one seed, about 2 minutes on 2 cores
    .venv/bin/python bench/sensitivity.py --seeds 0 1 2
"""
import argparse, copy, time, warnings
import pandas as pd
import torch, torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from fisherfast.all import *
from fisherfast.sparse.sensitivity import sensitivity
from fisherfast.data import fashion_mnist_tensors

warnings.filterwarnings('ignore')
TARGETS, SWEEP = [0.8, 0.9], [0.3, 0.5, 0.7, 0.8, 0.9, 0.95]

try:
    from fisherfast.fisher.criteria import obd as CRITERIA
    from fisherfast.fisher.stats import calibrate
except ImportError: CRITERIA, calibrate = magnitude, None

def cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(1568, 64), nn.ReLU(), nn.Linear(64, 10))

def train(model, x, y, epochs=2, bs=128, lr=1e-3):
    "Adam with a one-cycle learning rate"
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * ((len(x) + bs - 1) // bs))
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(bs):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    return model.eval()

def accuracy(model, x, y, bs=1000):
    with torch.no_grad(): return torch.cat([model(xb).argmax(1) for xb in x.split(bs)]).eq(y).float().mean().item()

def run(seed, data):
    x, y, xt, yt = data
    torch.manual_seed(seed)
    idx = torch.randperm(len(x))
    tr, va = idx[:-2000], idx[-2000:]
    t0 = time.perf_counter()
    model = train(cnn(), x[tr], y[tr])
    t_train = time.perf_counter() - t0
    dense = accuracy(model, xt, yt)
    valid = DataLoader(TensorDataset(x[va], y[va]), batch_size=500)
    stats = None
    if calibrate is not None:
        cal = DataLoader(TensorDataset(x[tr[:1024]], y[tr[:1024]]), batch_size=128)
        stats = calibrate(model, cal, nn.CrossEntropyLoss(), n_samples=1024, kinds=('fisher_diag',), progress=False)
    t0 = time.perf_counter()
    res = sensitivity(model, valid, nn.CrossEntropyLoss(), criteria=CRITERIA, stats=stats, sparsities=SWEEP, progress=False)
    t_sweep = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = sensitivity(model, criteria=CRITERIA, stats=stats, sparsities=SWEEP, mode='predict')
    t_fast = time.perf_counter() - t0
    rho = res.damage.stack().corr(fast.damage.stack(), method='spearman')
    print(f"seed {seed}: trained in {t_train:.0f}s, dense test accuracy {dense:.2%}; sweep {t_sweep:.1f}s "
          f"({len(res.df)} evaluations), predicted {t_fast * 1000:.0f}ms; Spearman(measured, predicted) = {rho:.2f}")
    rows = []
    for target in TARGETS:
        plans = {'uniform': target, 'measured (to_layer_targets)': res.to_layer_targets(target),
                 'predicted (to_layer_targets)': fast.to_layer_targets(target), 'global (reference)': None}
        for label, plan in plans.items():
            pruned = copy.deepcopy(model)
            sp = Sparsifier(pruned, 'weight', 'global' if plan is None else 'local', CRITERIA, stats=stats)
            sp.sparsify_model(target if plan is None else plan)
            layers = sp.sparsity_report().set_index('layer').sparsity
            rows.append(dict(seed=seed, target=target, plan=label, accuracy=100 * accuracy(pruned, xt, yt),
                             sparsity=layers['total'], **{f"s[{n}]": layers[n] for n in sp.layers}))
    return rows, 100 * dense

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seeds', type=int, nargs='+', default=[0])
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"criterion: {CRITERIA.name}" + ("" if stats_ok() else " (fisherfast.fisher not found: obd unavailable)"))
    data = fashion_mnist_tensors()
    rows, dense = [], []
    for seed in args.seeds:
        r, d = run(seed, data); rows += r; dense.append(d)
    df = pd.DataFrame(rows)
    print(f"\ntest accuracy (%), mean of {len(args.seeds)} seed(s); dense {sum(dense) / len(dense):.2f}")
    acc = df.pivot_table(index='plan', columns='target', values='accuracy', aggfunc='mean', sort=False)
    acc.columns = [f"{c:.0%}" for c in acc.columns]
    print(acc.to_string(float_format='{:.2f}'.format))
    print("\nper-layer sparsity of each plan (first seed):")
    first = df[df.seed == args.seeds[0]].drop(columns=['seed', 'accuracy']).set_index(['target', 'plan'])
    print(first.to_string(float_format='{:.3f}'.format))

def stats_ok(): return calibrate is not None

if __name__ == '__main__': main()
