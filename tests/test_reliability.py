"""Regression tests for the reliability contract: families of inputs that must give exact counts, clear errors, or skips.

Each block is one cause found by an adversarial run: numbers of any type, non-finite scores, rounding that could
empty a layer, hooked weights, tied weights, all-or-nothing sparsify, pickling, state dicts after training.
"""
import copy, pickle, warnings
import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from fisherfast.all import *
from fisherfast.data import digits_learner, digits_mlp


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@settings(max_examples=40, deadline=None)
@given(st.floats(0, 1), st.sampled_from([float, np.float32, np.float64, 'tensor32', 'tensor64']))
def test_sparsity_of_any_number_type(s, kind):
    v = torch.tensor(s, dtype=torch.float32 if kind == 'tensor32' else torch.float64) if isinstance(kind, str) else kind(s)
    model = mlp()
    sp = Sparsifier(model, 'weight', 'local').sparsify_model(v)
    f = float(v)
    assert [int((m.weight == 0).sum()) for m in sp.layers.values()] == [round(f * 128), round(f * 64)]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 127), st.sampled_from([float('nan'), float('inf'), -float('inf')]))
def test_non_finite_scores_raise_and_leave_the_model(i, bad):
    model = mlp(); before = copy.deepcopy(model.state_dict())
    def f(layer):
        s = layer.weight.abs().clone()
        if layer.name == '0': s.view(-1)[i] = bad
        return s
    with pytest.raises(ValueError, match="NaN or infinite scores for layer '0'"):
        Sparsifier(model, criteria=Criteria(f, name='bad')).sparsify_model(0.5)
    assert all(torch.equal(v, before[k]) for k,v in model.state_dict().items())


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.floats(0, 1), st.floats(0, 1), st.integers(1, 32))
def test_round_to_never_empties_a_layer(rows, s1, s2, r):
    "Row pruning, then a second call with round_to: the layer keeps what was alive when rounding would empty it"
    model = nn.Sequential(nn.Linear(3, rows))
    sp = Sparsifier(model, 'row', 'local')
    sp.sparsify_layer('0', min(s1, 0.99 if rows > 1 else 0))
    alive = rows - sp.pruned['0'].n_pruned
    t2 = min(max(s1, s2), 0.99)
    sp.sparsify_layer('0', t2, round_to=r)
    kept = rows - sp.pruned['0'].n_pruned
    assert kept <= alive
    assert kept >= 1 or round(t2 * rows) >= rows  # only the target itself, never the rounding, empties a layer
    assert kept % r == 0 or kept == alive or kept == rows


@pytest.mark.parametrize('hook', ['weight_norm', 'legacy_weight_norm', 'parametrize', 'prune'])
def test_recomputed_weights_refused(hook):
    model = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if hook == 'weight_norm': nn.utils.parametrizations.weight_norm(model[0])
        elif hook == 'legacy_weight_norm': nn.utils.weight_norm(model[0])
        elif hook == 'prune': nn.utils.prune.l1_unstructured(model[0], 'weight', 0.3)
        else:
            class Double(nn.Module):
                def forward(self, w): return 2 * w
            nn.utils.parametrize.register_parametrization(model[0], 'weight', Double())
    with pytest.raises(ValueError, match="recomputes its weight at every forward"): Sparsifier(model)


def test_tied_head_left_dense_by_default():
    transformers = pytest.importorskip('transformers')
    cfg = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32, n_positions=8)
    model = transformers.GPT2LMHeadModel(cfg)
    emb = model.transformer.wte.weight.detach().clone()
    with pytest.warns(UserWarning, match="tied output head"): sp = Sparsifier(model)
    assert 'lm_head' not in sp.layers
    sp.sparsify_model(0.5)
    assert torch.equal(model.transformer.wte.weight, emb)


def test_failed_update_leaves_weights_and_masks():
    model = mlp()
    fail = []
    def update(layer, keep, kept_before):
        layer.set_weight(layer.weight * keep)
        if fail and layer.name == '2': raise RuntimeError('boom')
    sp = Sparsifier(model, criteria=Criteria(lambda l: l.weight.abs(), update=update, name='upd'))
    sp.sparsify_model(0.3)
    fail.append(True)
    state = {n: (l.units.clone(), l.weight.detach().clone()) for n,l in sp.pruned.items()}
    with pytest.raises(RuntimeError): sp.sparsify_model(0.6)
    for n,l in sp.pruned.items():
        assert torch.equal(l.units, state[n][0]) and torch.equal(l.weight, state[n][1]), n


def test_pickles_with_the_callback_after_training(tmp_path):
    learn = digits_learner()
    cb = SparsifyCallback(0.5, criteria='obd')
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2, cbs=cb)
    cb2 = pickle.loads(pickle.dumps(cb))
    assert {n: torch.equal(k, cb.sparsifier.masks[n]) for n,k in cb2.sparsifier.masks.items()} == {n: True for n in cb.sparsifier.masks}
    digits_mlp().load_state_dict(learn.model.state_dict())  # plain: the callback is detached after fit
    torch.save(learn.model, tmp_path/'model.pth')


def test_learner_with_the_callback_saves_whole(tmp_path):
    "`torch.save(learn)` with the callback attached, masks in its model's state dict; a wrong mask shape is named"
    cb = SparsifyCallback(0.5, criteria='obd')
    learn = digits_learner(cbs=cb)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    torch.save(learn, tmp_path/'learn.pth')
    back = torch.load(tmp_path/'learn.pth', weights_only=False)
    assert any(k.startswith('_sparsify.mask') for k in back.model.state_dict())
    with pytest.raises(ValueError, match=r"state\['mask.0'\] has shape \(3, 3\), not the units \(64, 64\)"):
        cb.sparsifier.load_state_dict({'mask.0': torch.ones(3, 3, dtype=torch.bool)})
