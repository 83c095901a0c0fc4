"""One-shot pruning accuracy, no fine-tuning, for every criterion of fisherfast.

(a) the digits MLP 64-64-64-10 on scikit-learn digits (3 seeds, 1000 per-sample gradients, damp 1e-5; WoodFisher
with blocks of 512 weights) and
(b) a small CNN on Fashion-MNIST (Debian `dataset-fashion-mnist`), at 50/70/80/90/95% sparsity.
Global magnitude, the criterion of every other library, is measured in the same run as the peer.

    .venv/bin/python bench/oneshot.py            # both tables (about 10 minutes on 2 cores)
    .venv/bin/python bench/oneshot.py --quick    # one seed, digits only
"""
import argparse, copy, time, warnings
import pandas as pd
import torch, torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from fisherfast.all import *
from fisherfast.data import digits_tensors, digits_mlp, fashion_mnist_tensors, fashion_cnn, train_tensors, tensor_accuracy as accuracy

warnings.filterwarnings('ignore')
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95]

def configs(n_grads):
    "label -> (granularity context, criteria); the criteria are built fresh for every model"
    wf = lambda r: woodfisher(block_size=512, n_grads=n_grads, damp=1e-5, recompute=r)
    return {'magnitude, global': ('global', lambda: magnitude),
            'magnitude, local': ('local', lambda: magnitude),
            'fisher_diag, local': ('local', lambda: fisher_diag),
            'obd, global': ('global', lambda: obd),
            'taylor, global': ('global', lambda: taylor),
            'wanda (per row), local': ('local', lambda: wanda),
            'wanda_layer, local': ('local', lambda: wanda_layer),
            'sparsegpt, local': ('local', lambda: sparsegpt()),
            'woodfisher, global': ('global', lambda: wf(1)),
            'woodfisher recompute=8, global': ('global', lambda: wf(8)),
            'woodfisher recompute=16, global': ('global', lambda: wf(16))}

def sweep(model, x_cal, y_cal, x_val, y_val, n_grads, seed):
    "Accuracy of every criterion at every sparsity, one-shot from the same trained model"
    dl = DataLoader(TensorDataset(x_cal, y_cal), batch_size=100)
    stats = calibrate(model, dl, nn.CrossEntropyLoss(), n_samples=n_grads,
                      kinds=('fisher_diag', 'grad', 'grads', 'act_norm', 'xtx'), progress=False)
    rows = []
    for label, (context, crit) in configs(n_grads).items():
        for s in SPARSITIES:
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            pruned = copy.deepcopy(model)
            Sparsifier(pruned, 'weight', context, crit(), stats=stats).sparsify_model(s)
            seconds = time.perf_counter() - t0
            rows.append(dict(criterion=label, sparsity=s, seed=seed, accuracy=100 * accuracy(pruned, x_val, y_val),
                             seconds=seconds))
    return rows

def table(rows, dense):
    df = pd.DataFrame(rows)
    acc = df.pivot_table(index='criterion', columns='sparsity', values='accuracy', aggfunc='mean', sort=False)
    acc.columns = [f"{c:.0%}" for c in acc.columns]
    acc['s / prune'] = df.groupby('criterion', sort=False).seconds.mean()
    print(f"dense: {sum(dense) / len(dense):.1f}%  (mean of {len(dense)} seed(s))")
    print(acc.to_string(float_format='{:.1f}'.format))
    return acc

def digits(seeds):
    rows, dense = [], []
    for seed in seeds:
        x, y, xv, yv = digits_tensors(seed)
        model = train_tensors(digits_mlp(seed=seed), x, y, epochs=60, seed=seed)
        dense.append(100 * accuracy(model, xv, yv))
        rows += sweep(model, x, y, xv, yv, n_grads=1000, seed=seed)
    print(f"\n## (a) digits MLP 64-64-64-10, one-shot, no fine-tuning, test accuracy (%), seeds {list(seeds)}\n")
    acc = table(rows, dense)
    for r in (8, 16): goals(acc.loc[f'woodfisher recompute={r}, global'], acc.loc['magnitude, global'], r)

def goals(wf, mag, r):
    print(f"goals: woodfisher recompute={r} >= 95 at 90%: {wf['90%']:.2f} {'met' if wf['90%'] >= 95 else 'MISSED'}; "
          f">= 80 at 95%: {wf['95%']:.2f} {'met' if wf['95%'] >= 80 else 'MISSED'}; "
          f">= global magnitude + 30 at 90%: {wf['90%'] - mag['90%']:+.1f} {'met' if wf['90%'] - mag['90%'] >= 30 else 'MISSED'}")

def fashion(seed=0):
    x, y, xv, yv = fashion_mnist_tensors()
    model = train_tensors(fashion_cnn(seed=seed), x, y, epochs=2, bs=128, seed=seed)
    dense = 100 * accuracy(model, xv, yv)
    rows = sweep(model, x[:4096], y[:4096], xv, yv, n_grads=512, seed=seed)
    print(f"\n## (b) Fashion-MNIST CNN, one-shot, no fine-tuning, test accuracy (%), seed {seed}\n")
    table(rows, [dense])

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='one seed, digits only')
    args = p.parse_args()
    torch.set_num_threads(2)
    digits(range(1) if args.quick else range(3))
    if not args.quick: fashion()
