"""A new statistic kind, a new context and a new criterion each take one registration, in the user's own file.

This file is that file: it adds a toy of each (the mean absolute gradient, a per-row context, a criterion that
reads the new statistic) and uses them through `calibrate`, the `Sparsifier` and the `SparsifyCallback`, without
touching the library.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (patches Learner.fit_one_cycle)

from fisherfast.all import *
from fisherfast.data import digits_learner


class PerRow(Context):
    "Prune the same fraction of every output row"
    name = 'per_row'
    def select(self, layers, units, target, round_to):
        res = []
        for l,u in zip(layers, units):
            k = round(layer_target(target, l) * u[0].numel())
            keep = torch.stack([lowest_k_keep(r, k) for r in u.flatten(1)]).view(u.shape)
            res.append((keep, k * u.shape[0]))
        return res

def _abs_taylor(layer): return layer.stat('grad_abs') * layer.weight.abs()


@pytest.fixture
def toys():
    "Register the toy kind, context and criterion; unregister them afterwards"
    register_stat(Statistic('grad_abs', 'grad', lambda rows: rows.abs().sum(0), weight_shaped=True,
                            doc='mean absolute gradient'))
    register_context(PerRow())
    register_criteria(Criteria(_abs_taylor, needs=('grad_abs',), name='abs_taylor'))
    yield
    del stat_kinds['grad_abs'], contexts['per_row'], all_criteria['abs_taylor']


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_toys_one_shot(toys):
    model = mlp()
    x,y = torch.randn(32, 8),torch.randint(0, 4, (32,))
    dl = [(x[:16], y[:16]), (x[16:], y[16:])]
    stats = calibrate(model, dl, F.cross_entropy, kinds=kinds_for('abs_taylor'), progress=False)
    assert stats.kinds == ('grad_abs',)
    ref = torch.stack([torch.autograd.grad(F.cross_entropy(model(x[i:i+1]), y[i:i+1]), model[0].weight)[0]
                       for i in range(32)]).abs().mean(0)
    torch.testing.assert_close(stats['grad_abs']['0'], ref)
    sp = Sparsifier(model, 'weight', 'per_row', 'abs_taylor', stats=stats).sparsify_model(0.5)
    assert str(sp.context) == 'per_row' and sp.criteria.name == 'abs_taylor'
    for n,m in sp.layers.items():
        assert ((m.weight == 0).sum(1) == m.weight.shape[1] // 2).all(), n
        s = sp.saliency[n]  # the scores it pruned by, before the weights were zeroed
        for r in range(m.weight.shape[0]):
            assert s[r][m.weight[r] == 0].max() <= s[r][m.weight[r] != 0].min()


def test_toys_in_training(toys):
    learn = digits_learner()
    cb = SparsifyCallback(0.5, 'weight', 'per_row', 'abs_taylor', every=4)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 1e-2, cbs=cb)
    assert cb.stats.kinds == ('grad_abs',) and cb.stats.n > 0
    for n,m in cb.sparsifier.layers.items():
        assert ((m.weight == 0).sum(1) == m.weight.shape[1] // 2).all(), n


def test_unknown_toy_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="'grad_abs' is not a known kind"): calibrate(mlp(), [], F.cross_entropy, kinds='grad_abs')
    with pytest.raises(ValueError, match="context='per_row' is not known"): Sparsifier(mlp(), context='per_row')
    with pytest.raises(ValueError, match="criteria='abs_taylor' is not known"): Sparsifier(mlp(), criteria='abs_taylor')


def test_builtin_names_resolve_whatever_was_imported():
    "Naming a built-in criterion works with only the Sparsifier and the statistics imported"
    import subprocess, sys
    code = ("import torch.nn as nn\nfrom fisherfast.sparse.sparsifier import Sparsifier\nfrom fisherfast.stats.calibrate import calibrate\n"
            "import torch\nm = nn.Sequential(nn.Linear(4, 3))\n"
            "st = calibrate(m, [(torch.randn(8, 4), torch.randint(0, 3, (8,)))], nn.functional.cross_entropy, progress=False)\n"
            "for c in ('obd', 'woodfisher', 'sparsegpt'): print(Sparsifier(m, criteria=c, stats=st).criteria.name if c == 'obd' else c)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0 and 'obd' in out.stdout, out.stderr[-2000:]
