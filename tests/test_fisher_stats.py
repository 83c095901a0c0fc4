"Tests of `fisherfast.stats.calibrate` beyond the notebook's: fastai batches, tokens, tied and frozen weights, counts, devices"
from copy import deepcopy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader, TensorDataset

from fisherfast.stats.calibrate import calibrate, FisherStats
from fisherfast.stats.kinds import input_rows
from fisherfast.criteria.base import kinds_for
from fisherfast.criteria.fisher import obd, wanda, taylor


def brute(model, samples, loss_func, names):
    "Per-sample flattened gradients by `backward` on a copy"
    model = deepcopy(model).eval()
    out = {n: [] for n in names}
    for xs, y in samples:
        model.zero_grad()
        loss_func(model(*xs), y).backward()
        for n in names: out[n].append(model.get_submodule(n).weight.grad.flatten().clone())
    return {n: torch.stack(v) for n, v in out.items()}


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_fastai_dataloader_and_loss():
    from fastai.data.load import DataLoader as FaDL
    from fastai.losses import CrossEntropyLossFlat
    m, X, Y = mlp(), torch.randn(20, 8), torch.randint(0, 4, (20,))
    dl = FaDL(list(zip(X, Y)), bs=6)
    stats = calibrate(m, dl, CrossEntropyLossFlat(), kinds=('fisher_diag', 'act_norm'), progress=True)
    ref = brute(m, [((X[i:i + 1],), Y[i:i + 1]) for i in range(20)], nn.CrossEntropyLoss(), ['0', '2'])
    torch.testing.assert_close(stats['fisher_diag']['2'].flatten(), ref['2'].pow(2).mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats['act_norm']['0'], X.norm(dim=0))
    assert stats.n_samples == 20


def test_linear_on_tokens():
    "A Linear on (batch, tokens, features): per-sample grads sum over tokens, inputs are all tokens"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Flatten(), nn.Linear(15, 3))
    X, Y = torch.randn(10, 3, 6), torch.randint(0, 3, (10,))
    stats = calibrate(m, [(X[:4], Y[:4]), (X[4:], Y[4:])], nn.CrossEntropyLoss(), kinds=('grads', 'xtx'), progress=False)
    ref = brute(m, [((X[i:i + 1],), Y[i:i + 1]) for i in range(10)], nn.CrossEntropyLoss(), ['0', '3'])
    torch.testing.assert_close(stats['grads']['0'], ref['0'], atol=1e-5, rtol=1e-4)
    rows = X.reshape(-1, 6)
    torch.testing.assert_close(stats['xtx']['0'], rows.T @ rows, atol=1e-4, rtol=1e-4)
    assert stats.n_inputs == {'0': 30, '3': 10}


def test_conv3d_grads_and_inputs():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv3d(2, 3, 2, stride=(1, 2, 1)), nn.Flatten(), nn.LazyLinear(2))
    X, Y = torch.randn(6, 2, 3, 4, 3), torch.randint(0, 2, (6,))
    m(X)
    stats = calibrate(m, [(X, Y)], nn.CrossEntropyLoss(), kinds=('fisher_diag', 'act_norm'), progress=False)
    ref = brute(m, [((X[i:i + 1],), Y[i:i + 1]) for i in range(6)], nn.CrossEntropyLoss(), ['0'])
    torch.testing.assert_close(stats['fisher_diag']['0'].flatten(), ref['0'].pow(2).mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats['act_norm']['0'], input_rows(m[0], X).norm(dim=0))


def test_frozen_and_tied_weights():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    m[2].weight = m[0].weight  # tied
    m[0].weight.requires_grad_(False)
    X, Y = torch.randn(5, 4), torch.randint(0, 4, (5,))
    stats = calibrate(m, [(X, Y)], nn.CrossEntropyLoss(), kinds=('grads',), progress=False)
    m2 = deepcopy(m); m2[0].weight.requires_grad_(True)
    ref = brute(m2, [((X[i:i + 1],), Y[i:i + 1]) for i in range(5)], nn.CrossEntropyLoss(), ['0'])
    torch.testing.assert_close(stats['grads']['0'], ref['0'], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats['grads']['2'], ref['0'], atol=1e-5, rtol=1e-4)
    assert m[0].weight.grad is None and not m[0].weight.requires_grad


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 30), bs=st.integers(1, 9), per_sample=st.booleans())
def test_counts_and_truncation(n, bs, per_sample):
    m, X, Y = mlp(), torch.randn(23, 8), torch.randint(0, 4, (23,))
    stats = calibrate(m, DataLoader(TensorDataset(X, Y), batch_size=bs), nn.CrossEntropyLoss(), n_samples=n,
                      kinds=('grads', 'act_norm'), per_sample=per_sample, progress=False)
    used = min(n, 23)
    assert stats.n_samples == used and stats.n_skipped == 0
    assert stats['grads']['0'].shape == ((used if per_sample else -(-used // bs)), 128)
    assert stats.n_inputs['0'] == used
    torch.testing.assert_close(stats['act_norm']['0'], X[:used].norm(dim=0))


def test_kinds_for_and_repr():
    assert kinds_for(obd, taylor, wanda) == ('fisher_diag', 'grad', 'act_norm')
    assert kinds_for('obd') == ('fisher_diag',)
    stats = calibrate(mlp(), [(torch.randn(4, 8), torch.randint(0, 4, (4,)))], nn.CrossEntropyLoss(), progress=False)
    assert isinstance(stats, FisherStats) and isinstance(stats, dict)
    assert "kinds=('fisher_diag', 'grad'), 2 layers [0, 2], 4 samples, 4 per-sample gradients, 0 skipped" in repr(stats)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_offload():
    m, X, Y = mlp().cuda(), torch.randn(12, 8), torch.randint(0, 4, (12,))
    dl = DataLoader(TensorDataset(X, Y), batch_size=5)
    stats = calibrate(m, dl, nn.CrossEntropyLoss(), kinds=('fisher_diag', 'grads', 'xtx'), grads_device='cpu',
                      grads_dtype=torch.float16, progress=False)
    assert stats['fisher_diag']['0'].is_cuda and stats['xtx']['0'].is_cuda
    assert stats['grads']['0'].device.type == 'cpu' and stats['grads']['0'].dtype == torch.float16
    ref = calibrate(m.cpu(), dl, nn.CrossEntropyLoss(), kinds=('fisher_diag',), progress=False)
    torch.testing.assert_close(stats.to('cpu')['fisher_diag']['0'], ref['fisher_diag']['0'], atol=1e-5, rtol=1e-3)


# --- two processes, gloo: calibrate combines the statistics of all ranks ---------------------------------

def _calibrate_worker(rank, world, out):
    "Rank `rank` calibrates on its half of the data; every kind is reported over all of it"
    model,(x,y) = _ddp_model(),_ddp_data()
    half = slice(rank * 12, (rank + 1) * 12)
    stats = calibrate(model, [(x[half][:7], y[half][:7]), (x[half][7:], y[half][7:])], F.cross_entropy,
                      kinds=('fisher_diag', 'grad', 'grads', 'act_norm', 'xtx'), progress=False)
    torch.save({k: dict(d) for k,d in stats.items()} | {'counts': (stats.n_samples, stats.n_grads, stats.n_inputs)},
               f'{out}/{rank}.pt')

def _ddp_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))

def _ddp_data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(24, 6, generator=g), torch.randint(0, 3, (24,), generator=g)

def test_calibrate_two_processes_gloo_combines_ranks(tmp_path):
    from gloo import spawn
    spawn(_calibrate_worker, tmp_path)
    r0,r1 = (torch.load(tmp_path/f'{r}.pt', weights_only=False) for r in (0, 1))
    x,y = _ddp_data()
    ref = calibrate(_ddp_model(), [(x, y)], F.cross_entropy, kinds=('fisher_diag', 'grad', 'grads', 'act_norm', 'xtx'),
                    progress=False)
    assert r0['counts'] == r1['counts'] == (24, 24, {'0': 24, '2': 24})
    for kind in ref.kinds:
        for n,t in ref[kind].items():
            torch.testing.assert_close(r0[kind][n], t, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(r1[kind][n], t, rtol=1e-5, atol=1e-6)
