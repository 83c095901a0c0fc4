"""Per-layer targets from a sensitivity analysis vs uniform per-layer sparsity, one-shot, no fine-tuning.

A small CNN on Fashion-MNIST (Debian `dataset-fashion-mnist`): conv 1→16 and 16→32 (3×3, ReLU, 2×2 max-pool),
Linear 1568→64, Linear 64→10; trained 2 epochs with Adam (lr 1e-3, one-cycle, batch 128) on 58,000 training
images. 2,000 held-out training images are the validation set the sweep is evaluated on; the accuracies are on the
full 10,000-image test set. At 80% and 90% of all prunable weights, with the same criterion (obd), it compares:

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
from fisherfast.data import fashion_mnist_tensors, fashion_cnn, train_tensors, tensor_accuracy as accuracy

warnings.filterwarnings('ignore')
TARGETS, SWEEP = [0.8, 0.9], [0.3, 0.5, 0.7, 0.8, 0.9, 0.95]

def run(seed, data):
    x, y, xt, yt = data
    torch.manual_seed(seed)
    idx = torch.randperm(len(x))
    tr, va = idx[:-2000], idx[-2000:]
    t0 = time.perf_counter()
    model = train_tensors(fashion_cnn(seed=seed), x[tr], y[tr], epochs=2, bs=128, lr=1e-3, seed=seed)
    t_train = time.perf_counter() - t0
    dense = accuracy(model, xt, yt)
    valid = DataLoader(TensorDataset(x[va], y[va]), batch_size=500)
    cal = DataLoader(TensorDataset(x[tr[:1024]], y[tr[:1024]]), batch_size=128)
    stats = calibrate(model, cal, nn.CrossEntropyLoss(), n_samples=1024, kinds=('fisher_diag',), progress=False)
    t0 = time.perf_counter()
    res = sensitivity(model, valid, nn.CrossEntropyLoss(), criteria=obd, stats=stats, sparsities=SWEEP, progress=False)
    t_sweep = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = sensitivity(model, criteria=obd, stats=stats, sparsities=SWEEP, mode='predict')
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
            sp = Sparsifier(pruned, 'weight', 'global' if plan is None else 'local', obd, stats=stats)
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
    print("criterion: obd, 1024 per-sample gradients")
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

if __name__ == '__main__': main()
