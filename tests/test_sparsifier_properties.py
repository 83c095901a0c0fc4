"""Property-based tests (hypothesis) of `Sparsifier` and `fisherfast.core.masks`.

Random small models (Linear / Conv1d / Conv2d / Conv3d of random shapes), random sparsities,
granularities, contexts, criteria and weights (continuous, or deliberately tied with
`randint(0, 3)` to exercise the tie-breaking), checked against the Sparsifier's contract:

- counts are exact (local: `round(s·units)` per layer; global: `round(s·total)` over the model),
  ties broken by index (the later unit is pruned first), never by keeping every tied unit;
- global prunes the lowest-scored units over all layers (by score per weight when unit sizes differ);
- N:M keeps exactly n of every m consecutive inputs (conv: along input channels per kernel position);
- `round_to=r`: each layer's kept unit count is a multiple of r, or all its units;
- sparsifying is idempotent, monotone along a growing schedule, zeroes exactly what the masks prune;
- bad input raises `ValueError` and leaves the model bitwise untouched.

Run: `.venv/bin/pytest tests/test_sparsifier_properties.py -q`
(`FISHERFAST_PROP_SCALE=20` runs 20x as many examples per property.)
"""
from __future__ import annotations

import copy
import math
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from fisherfast.criteria.base import magnitude, random_score
from fisherfast.core.masks import kth_smallest, lowest_k_keep, nm_keep, round_kept
from fisherfast.sparse.sparsifier import Sparsifier

torch.set_num_threads(1)

# FISHERFAST_PROP_SCALE=k multiplies every max_examples by k (a longer hunt for counterexamples)
SCALE = int(os.environ.get('FISHERFAST_PROP_SCALE', '1'))
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
fast = settings(max_examples=100 * SCALE, **SETTINGS)

BLOCKS = {'1x2': (1, 2), '1x4': (1, 4), '1x8': (1, 8), '2x2': (2, 2), '4x1': (4, 1), '4x4': (4, 4), '2x4': (2, 4)}
STRUCTURED = ['row', 'filter', 'column', 'channel', 'kernel']
ALL_GRANS = ['weight', *STRUCTURED, *BLOCKS]

# ----------------------------------------------------------------------------------------------- models

def _layer(kind:str, n_out:int, n_in:int, ks:tuple, bias:bool) -> nn.Module:
    if kind == 'linear': return nn.Linear(n_in, n_out, bias=bias)
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(ks)](n_in, n_out, ks, bias=bias)

_ND = {'conv1d': 1, 'conv2d': 2, 'conv3d': 3}

def _divisors(n:int, cap:int=4) -> list[int]: return [d for d in range(1, min(n, cap) + 1) if n % d == 0]

@st.composite
def kernels(draw, kind:str):
    if kind == 'linear': return ()
    return tuple(draw(st.integers(1, 3 if kind != 'conv3d' else 2)) for _ in range(_ND[kind]))

@st.composite
def factor_kernel(draw, kind:str, size:int, exact:bool):
    "Kernel dims whose product divides `size` (equals it if `exact`); returns (dims, size // product)"
    if kind == 'linear': return (), size
    dims,rem = [],size
    for i in range(_ND[kind]):
        d = rem if exact and i == _ND[kind] - 1 else draw(st.sampled_from(_divisors(rem)))
        dims.append(d)
        rem //= d
    return tuple(dims), rem

WEIGHT_MODES = ['randn', 'tied', 'nonzero']

def fill_(model:nn.Module, seed:int, mode:str) -> nn.Module:
    "Fill the weights: 'randn', 'tied' (randint(0, 3): many exact ties and zeros), 'nonzero' (|w| >= 0.1)"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if mode == 'tied': p.copy_(torch.randint(0, 3, p.shape, generator=g).float())
            elif mode == 'randn': p.copy_(torch.randn(p.shape, generator=g))
            else:
                sign = torch.randint(0, 2, p.shape, generator=g).float() * 2 - 1
                p.copy_(sign * (0.1 + torch.rand(p.shape, generator=g)))
    return model

@st.composite
def models(draw, gran:str='weight', equal_units:bool=False, nm_m:int|None=None, mode:str|None=None,
           convs_only:bool=False, max_layers:int=4):
    "A `nn.ModuleList` of random prunable layers whose shapes suit `gran` (and N:M with m = `nm_m`)"
    kinds = ['conv1d', 'conv2d', 'conv3d'] if convs_only or gran == 'kernel' else ['linear', 'conv1d', 'conv2d', 'conv3d']
    a,b = BLOCKS.get(gran, (1, 1))
    if nm_m: b = nm_m
    n_layers = draw(st.integers(1, max_layers))
    size = draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12]))  # the common unit size when `equal_units`
    layers = []
    for _ in range(n_layers):
        kind = draw(st.sampled_from(kinds))
        bias = draw(st.booleans())
        n_out,n_in = a * draw(st.integers(1, 3)), b * draw(st.integers(1, 3))
        ks = draw(kernels(kind))
        if equal_units and gran in ('row', 'filter'): ks,n_in = draw(factor_kernel(kind, size, False))
        elif equal_units and gran in ('column', 'channel'): ks,n_out = draw(factor_kernel(kind, size, False))
        elif equal_units and gran == 'kernel': ks,_ = draw(factor_kernel(kind, size, True))
        layers.append(_layer(kind, n_out, n_in, ks, bias))
    mode = mode or draw(st.sampled_from(['randn', 'tied']))
    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))  # random_score draws from the global RNG: reproducible
    return fill_(nn.ModuleList(layers), draw(st.integers(0, 2**31 - 1)), mode)

sparsities = st.one_of(st.floats(0, 1), st.sampled_from([0., 0.25, 0.5, 0.75, 1.]))

# ----------------------------------------------------------------------------------------------- helpers

def originals(model) -> dict:
    return {n: t.detach().clone() for n,t in model.state_dict().items()}

def unit_keep(sp:Sparsifier, name:str) -> torch.Tensor:
    "Unit mask of a layer's weight mask, checking that the mask is constant over every unit"
    g,mask = sp.granularity, sp.masks[name]
    size = g.unit_size(mask.shape)
    count = g.to_units(mask.float())
    assert bool(((count == 0) | (count == size)).all()), f"{name}: a unit is partly pruned"
    units = count == size
    assert torch.equal(g.to_weights(units, mask.shape), mask), f"{name}: mask is not the expansion of its units"
    return units

def unit_scores(sp:Sparsifier, orig:dict, name:str) -> torch.Tensor:
    "Magnitude score of each unit of a layer, from its original weight"
    return sp.granularity.to_units(orig[name + '.weight'].abs().float())

def ref_prune(scores:list[torch.Tensor], k:int) -> list[torch.Tensor]:
    "Reference: prune the k lowest scores of the concatenation, the later entry first among ties"
    flat = torch.cat([s.flatten() for s in scores]).double().numpy()
    idx = np.arange(flat.size)
    pruned = np.zeros(flat.size, bool)
    pruned[np.lexsort((-idx, flat))[:k]] = True
    return [torch.from_numpy(p).view(s.shape) for p,s in zip(np.split(pruned, np.cumsum([s.numel() for s in scores])[:-1]), scores)]

def bitwise_equal(a:dict, b:dict) -> bool:
    return a.keys() == b.keys() and all(a[n].dtype == b[n].dtype and a[n].shape == b[n].shape and
                                        a[n].numpy().tobytes() == b[n].numpy().tobytes() for n in a)

def _fresh_copy(model:nn.Module, state:dict) -> nn.Module:
    "A copy of `model` holding the weights `state`"
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(state)
    return fresh

# ----------------------------------------------------------------------------------------------- 1. local counts

@fast
@given(data=st.data(), gran=st.sampled_from(ALL_GRANS), s=sparsities, by_dict=st.booleans())
def test_local_exact_counts(data, gran, s, by_dict):
    "Local: each layer prunes exactly round(s·units) units, the lowest (later first among ties); masks are unit expansions"
    model = data.draw(models(gran))
    orig = originals(model)
    sp = Sparsifier(model, gran, 'local', magnitude)
    if by_dict: sp.sparsify_model({n: s for n in sp.layers})
    else: sp.sparsify_model(s)
    for name,m in sp.layers.items():
        units = unit_keep(sp, name)
        n = units.numel()
        assert sp.granularity.unit_shape(m.weight.shape) == tuple(units.shape)
        assert int((~units).sum()) == round(s * n), (name, gran, s, n)
        (ref,) = ref_prune([unit_scores(sp, orig, name)], round(s * n))
        assert torch.equal(~units, ref), f"{name}: not the lowest-scored units, or ties broken otherwise"
        assert torch.equal(m.weight == 0, (orig[name + '.weight'] == 0) | ~sp.masks[name])

# ----------------------------------------------------------------------------------------------- 2. global, equal unit sizes

EQUAL_GRANS = ['weight', 'row', 'filter', 'column', 'channel', 'kernel', *BLOCKS]

@fast
@given(data=st.data(), gran=st.sampled_from(EQUAL_GRANS), s=sparsities)
def test_global_exact_counts_equal_units(data, gran, s):
    "Global, equal unit sizes: exactly round(s·total units) pruned, the lowest over all layers"
    model = data.draw(models(gran, equal_units=True))
    orig = originals(model)
    sp = Sparsifier(model, gran, 'global', magnitude)
    sizes = {sp.granularity.unit_size(m.weight.shape) for m in sp.layers.values()}
    assert len(sizes) == 1, sizes  # the strategy builds equal unit sizes
    sp.sparsify_model(s)
    names = list(sp.layers)
    keeps = [unit_keep(sp, n) for n in names]
    scores = [unit_scores(sp, orig, n) for n in names]
    total = sum(k.numel() for k in keeps)
    assert sum(int((~k).sum()) for k in keeps) == round(s * total)
    pruned_s = torch.cat([sc[~k] for sc,k in zip(scores, keeps)])
    kept_s = torch.cat([sc[k] for sc,k in zip(scores, keeps)])
    if pruned_s.numel() and kept_s.numel(): assert pruned_s.max() <= kept_s.min()
    for ref,k,n in zip(ref_prune(scores, round(s * total)), keeps, names):
        assert torch.equal(~k, ref), f"{n}: global selection or tie-breaking differs from the sort reference"

# ----------------------------------------------------------------------------------------------- 3. global, unequal unit sizes

def _density_order(scores:list[torch.Tensor], sizes:list[int]):
    "Reference order: ascending score per weight, the later unit first among ties"
    dens = torch.cat([(sc.flatten() / sz) for sc,sz in zip(scores, sizes)]).double().numpy()
    size = np.concatenate([np.full(sc.numel(), sz) for sc,sz in zip(scores, sizes)])
    idx = np.arange(dens.size)
    return dens, size, np.lexsort((-idx, dens))

@fast
@given(data=st.data(), gran=st.sampled_from(['row', 'filter', 'column', 'channel', 'kernel']), s=sparsities)
def test_global_unequal_unit_sizes(data, gran, s):
    "Global, unequal unit sizes: the fewest lowest-density units whose weights reach the target"
    model = data.draw(models(gran, max_layers=4))
    orig = originals(model)
    sp = Sparsifier(model, gran, 'global', magnitude)
    names = list(sp.layers)
    sizes = [sp.granularity.unit_size(sp.layers[n].weight.shape) for n in names]
    assume(len(set(sizes)) > 1)
    sp.sparsify_model(s)
    keeps = [unit_keep(sp, n) for n in names]
    scores = [unit_scores(sp, orig, n) for n in names]
    n_weights = sum(sp.layers[n].weight.numel() for n in names)
    target = s * n_weights
    pruned = [~k.flatten() for k in keeps]
    pruned_w = sum(int(p.sum()) * sz for p,sz in zip(pruned, sizes))
    dens, size, order = _density_order(scores, sizes)
    is_pruned = torch.cat(pruned).numpy()
    # ranking by density: no kept unit has a lower density than a pruned one
    if is_pruned.any() and (~is_pruned).any(): assert dens[is_pruned].max() <= dens[~is_pruned].min()
    # the pruned units are a prefix of the density order (ties: later unit first)
    k = int(is_pruned.sum())
    assert set(order[:k].tolist()) == set(np.flatnonzero(is_pruned).tolist())
    # the fewest units reaching round(target) weights. Skipped where the library is known to differ
    goal = round(target)
    assert pruned_w >= goal, (pruned_w, target)
    if k: assert pruned_w - size[order[k - 1]] < goal, (pruned_w, size[order[k - 1]], target)

def test_global_unequal_units_tiny_target_prunes_nothing():
    model = nn.ModuleList([nn.Linear(1, 1, bias=False), nn.Linear(2, 1, bias=False)])  # filter sizes 1 and 2, 3 weights
    with torch.no_grad():
        model[0].weight.fill_(1.)
        model[1].weight.fill_(.1)
    sp = Sparsifier(model, 'filter', 'global', magnitude).sparsify_model(0.125)  # 0.125·3 = 0.375 -> round = 0
    assert sum(int((~m).sum()) for m in sp.masks.values()) == 0  # prunes model[1]'s whole filter (2 weights)

def test_global_unequal_units_half_rounding():
    # filter granularity: unit sizes 1 (Linear(1, 3)) and 2 (Linear(2, 1)) -> 5 weights
    model = nn.ModuleList([nn.Linear(1, 3, bias=False), nn.Linear(2, 1, bias=False)])
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.], [2.], [3.]]))
        model[1].weight.copy_(torch.tensor([[10., 10.]]))
    sp = Sparsifier(model, 'filter', 'global', magnitude).sparsify_model(0.3)  # 0.3·5 = 1.5 -> round = 2
    # the two size-1 units [1.] and [2.] make exactly 2; the library prunes only [1.]
    assert sum(int((~m).sum()) for m in sp.masks.values()) == round(0.3 * 5) == 2

# ----------------------------------------------------------------------------------------------- 4. N:M

NM = [True, (1, 4), (2, 4), (4, 8), (2, 8), (1, 2), (3, 3)]

@fast
@given(data=st.data(), nm=st.sampled_from(NM), context=st.sampled_from(['local', 'global']),
       crit=st.sampled_from(['magnitude', 'random_score']), mode=st.sampled_from(['randn', 'tied', 'zeros']))
def test_nm_exact(data, nm, context, crit, mode):
    "N:M keeps exactly n of every m consecutive inputs (conv: along input channels per kernel position)"
    n,m = (2, 4) if nm is True else nm
    model = data.draw(models('weight', nm_m=m, mode='randn' if mode == 'zeros' else mode))
    if mode == 'zeros':
        for p in model.parameters(): p.data.zero_()
    orig = originals(model)
    sp = Sparsifier(model, 'weight', context, {'magnitude': magnitude, 'random_score': random_score}[crit], nm=nm)
    sp.sparsify_model(1 - n / m)
    for name,mod in sp.layers.items():
        mask = sp.masks[name]
        groups = mask.movedim(1, -1).reshape(-1, m)
        assert bool((groups.sum(1) == n).all()), f"{name}: a group of {m} does not keep exactly {n}"
        assert torch.equal(mod.weight == 0, (orig[name + '.weight'] == 0) | ~mask)
        if crit == 'magnitude':  # the n highest of each group, the earlier one among ties (stable sort)
            sc = orig[name + ".weight"].abs().movedim(1, -1).reshape(-1, m).numpy()
            order = np.argsort(-sc, axis=1, kind='stable')
            ref = np.zeros_like(sc, dtype=bool)
            np.put_along_axis(ref, order[:, :n], True, axis=1)
            assert np.array_equal(groups.numpy(), ref), name
        if mod.bias is not None: assert torch.equal(mod.bias, orig[name + '.bias'])

# ----------------------------------------------------------------------------------------------- 5. round_to

@fast
@given(data=st.data(), gran=st.sampled_from(ALL_GRANS), context=st.sampled_from(['local', 'global']),
       s=sparsities, r=st.integers(1, 16))
def test_round_to(data, gran, context, s, r):
    "round_to=r: each layer keeps a multiple of r units, or all of them; the highest-scored ones of the layer"
    model = data.draw(models(gran))
    orig = originals(model)
    sp = Sparsifier(model, gran, context, magnitude).sparsify_model(s, round_to=r)
    for name in sp.layers:
        units = unit_keep(sp, name)
        n,kept = units.numel(), int(units.sum())
        assert kept % r == 0 or kept == n, (name, kept, r, n)
        if context == 'local':
            raw = n - round(s * n)
            assert abs(kept - raw) <= r / 2 or kept == n or (raw > 0 and kept == min(r, n)), (kept, raw, r, n)
            assert (kept == 0) == (raw == 0)
        sc = unit_scores(sp, orig, name)
        if 0 < kept < n: assert sc[~units].max() <= sc[units].min(), name

@fast
@given(data=st.data(), gran=st.sampled_from(ALL_GRANS), s=sparsities, r=st.integers(1, 16))
def test_sparsify_layer_round_to(data, gran, s, r):
    "sparsify_layer(round_to=r) in a global Sparsifier: the one layer keeps a multiple of r (or all); others untouched"
    model = data.draw(models(gran))
    orig = originals(model)
    sp = Sparsifier(model, gran, 'global', magnitude)
    name = data.draw(st.sampled_from(list(sp.layers)))
    sp.sparsify_layer(sp.layers[name], s, round_to=r)
    units = unit_keep(sp, name)
    kept,n = int(units.sum()), units.numel()
    assert kept % r == 0 or kept == n
    assert kept == round_kept(n - round(s * n), n, r)
    for other in sp.layers:
        if other != name: assert torch.equal(sp.layers[other].weight, orig[other + '.weight'])

# ----------------------------------------------------------------------------------------------- 6. idempotence

@fast
@given(data=st.data(), gran=st.sampled_from(ALL_GRANS), context=st.sampled_from(['local', 'global']),
       crit=st.sampled_from(['magnitude', 'random_score']), s=sparsities)
def test_idempotent(data, gran, context, crit, s):
    "Sparsifying twice to the same target changes no mask and no weight"
    model = data.draw(models(gran))
    sp = Sparsifier(model, gran, context, {'magnitude': magnitude, 'random_score': random_score}[crit])
    sp.sparsify_model(s)
    masks,state = {n: m.clone() for n,m in sp.masks.items()}, originals(model)
    sp.sparsify_model(s)
    for n in masks: assert torch.equal(masks[n], sp.masks[n]), n
    assert bitwise_equal(state, originals(model))

@fast
@given(data=st.data(), nm=st.sampled_from(NM), crit=st.sampled_from(['magnitude', 'random_score']))
def test_idempotent_nm(data, nm, crit):
    "N:M twice to the same target changes nothing (even with random scores, even with tied weights)"
    n,m = (2, 4) if nm is True else nm
    model = data.draw(models('weight', nm_m=m))
    sp = Sparsifier(model, 'weight', 'global', {'magnitude': magnitude, 'random_score': random_score}[crit], nm=nm)
    sp.sparsify_model(1 - n / m)
    masks,state = {k: v.clone() for k,v in sp.masks.items()}, originals(model)
    sp.sparsify_model(1 - n / m)
    for k in masks: assert torch.equal(masks[k], sp.masks[k]), k
    assert bitwise_equal(state, originals(model))

@fast
@given(data=st.data(), gran=st.sampled_from(ALL_GRANS), context=st.sampled_from(['local', 'global']),
       crit=st.sampled_from(['magnitude', 'random_score']), s=sparsities, r=st.integers(2, 8))
def test_idempotent_round_to(data, gran, context, crit, s, r):
    "Sparsifying twice to the same target with the same round_to changes no mask and no weight"
    model = data.draw(models(gran))
    sp = Sparsifier(model, gran, context, {'magnitude': magnitude, 'random_score': random_score}[crit])
    if context == 'global':
        # random scores are redrawn on every call, so per-layer rounding can land elsewhere (strict xfail below)
        assume(crit == 'magnitude')
    sp.sparsify_model(s, round_to=r)
    masks,state = {n: m.clone() for n,m in sp.masks.items()}, originals(model)
    sp.sparsify_model(s, round_to=r)
    for n in masks: assert torch.equal(masks[n], sp.masks[n]), n
    assert bitwise_equal(state, originals(model))

def test_global_round_to_equal_units_revives_pruned():
    model = nn.ModuleList([nn.Linear(2, 1, bias=False), nn.Linear(8, 1, bias=False)])
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1., 2.]]))
        model[1].weight.copy_(torch.arange(3., 11.)[None])
    sp = Sparsifier(model, 'weight', 'global', magnitude).sparsify_model(0.5, round_to=4)
    # 5 lowest pruned, then layer '1' rounds 5 kept -> 4: 6 pruned; masks {'0': [0, 0], '1': [0, 0, 0, 0, 1, 1, 1, 1]}
    first = {n: m.clone() for n,m in sp.masks.items()}
    sp.sparsify_model(0.5, round_to=4)
    # the library now marks layer '0' as entirely kept ([1, 1]) while its weights stay 0
    for n,m in sp.layers.items(): assert torch.equal(m.weight == 0, ~sp.masks[n]), n
    for n in first: assert torch.equal(first[n], sp.masks[n]), n

@pytest.mark.xfail(strict=True, reason="Limitation: global context + round_to with random_score: the per-layer rounding "
                   "leaves fewer weights pruned than the global target, so a second call to the same target prunes "
                   "again with fresh scores and changes the masks")
def test_global_round_to_not_idempotent_random_score():
    torch.manual_seed(1)
    model = nn.ModuleList([nn.Linear(2, 2, bias=False), nn.Linear(1, 2, bias=False)])  # row sizes 2 and 1: 6 weights
    sp = Sparsifier(model, 'row', 'global', random_score).sparsify_model(0.5, round_to=2)
    first = {n: m.clone() for n,m in sp.masks.items()}  # seed 1: all kept (rounding revives both layers' units)
    sp.sparsify_model(0.5, round_to=2)                   # now layer '0' is pruned entirely
    for n in first: assert torch.equal(first[n], sp.masks[n]), n

# ----------------------------------------------------------------------------------------------- 7. zeros == ~mask

@fast
@given(data=st.data(), gran=st.sampled_from(ALL_GRANS), context=st.sampled_from(['local', 'global']),
       crit=st.sampled_from(['magnitude', 'random_score']), s=sparsities)
def test_zeros_exactly_where_masked(data, gran, context, crit, s):
    "With non-zero weights, (w == 0) == ~mask; pruned outputs lose their bias entry, other biases are untouched"
    model = data.draw(models(gran, mode='nonzero'))
    orig = originals(model)
    sp = Sparsifier(model, gran, context, {'magnitude': magnitude, 'random_score': random_score}[crit])
    sp.sparsify_model(s)
    for name,mod in sp.layers.items():
        mask = sp.masks[name]
        assert torch.equal(mod.weight == 0, ~mask), name
        assert torch.equal(mod.weight[mask], orig[name + '.weight'][mask])  # survivors unchanged
        if mod.bias is None: continue
        if sp.granularity.prunes_outputs(mod.weight.shape):
            out_kept = mask.reshape(mask.shape[0], -1).any(1)
            assert torch.equal(mod.bias == 0, ~out_kept), name
            assert torch.equal(mod.bias[out_kept], orig[name + '.bias'][out_kept])
        else: assert torch.equal(mod.bias, orig[name + '.bias']), name

# ----------------------------------------------------------------------------------------------- 8. monotone schedule

@fast
@given(data=st.data(), gran=st.sampled_from(ALL_GRANS), context=st.sampled_from(['local', 'global']),
       s1=st.floats(0, 1), s2=st.floats(0, 1), s3=st.floats(0, 1))
def test_monotone_schedule(data, gran, context, s1, s2, s3):
    "Along increasing targets every pruned unit stays pruned, and each step equals a fresh one-shot prune"
    model = data.draw(models(gran))
    orig = originals(model)
    sp = Sparsifier(model, gran, context, magnitude)
    prev = None
    for s in sorted([s1, s2, s3]):
        sp.sparsify_model(s)
        units = {n: unit_keep(sp, n) for n in sp.layers}
        if prev is not None:
            for n in units: assert not bool((~prev[n] & units[n]).any()), f"{n}: a pruned unit came back at {s}"
        prev = units
        # the same target in one shot on the original weights selects the same units
        fresh = _fresh_copy(model, orig)
        fsp = Sparsifier(fresh, gran, context, magnitude).sparsify_model(s)
        for n in units: assert torch.equal(fsp.masks[n], sp.masks[n]), f"{n}: schedule and one-shot differ at {s}"

# ----------------------------------------------------------------------------------------------- 9. bad input

bad_sparsities = st.one_of(st.floats(max_value=-1e-9, allow_nan=False), st.floats(min_value=100.0001, allow_nan=False),
                           st.just(math.nan), st.just(-math.inf), st.just(math.inf), st.booleans(), st.none(),
                           st.text(max_size=3), st.just([0.5]))
bad_round_to = st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.just(True), st.just('4'),
                         st.just(2.0))

@fast
@given(data=st.data(), gran=st.sampled_from(['weight', 'filter', '1x4']), context=st.sampled_from(['local', 'global']),
       pre=st.booleans(), how=st.sampled_from(['sparsity', 'dict_value', 'dict_key', 'module_key', 'round_to',
                                                'layer_sparsity', 'layer_key', 'layer_round_to']))
def test_bad_input_leaves_model_untouched(data, gran, context, pre, how):
    "An invalid sparsity / round_to / dict key raises ValueError and changes no weight and no mask"
    model = data.draw(models(gran))
    sp = Sparsifier(model, gran, context, magnitude)
    if pre: sp.sparsify_model(data.draw(st.floats(0, 1)))
    state,masks = originals(model), {n: m.clone() for n,m in sp.masks.items()}
    names = list(sp.layers)
    some = data.draw(st.sampled_from(names))
    good = data.draw(st.floats(0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises(ValueError):
            if how == 'sparsity': sp.sparsify_model(data.draw(bad_sparsities))
            elif how == 'dict_value': sp.sparsify_model({**{n: good for n in names}, some: data.draw(bad_sparsities)})
            elif how == 'dict_key':
                key = data.draw(st.text(max_size=6).filter(lambda k: k not in sp.layers))
                sp.sparsify_model({**{n: good for n in names}, key: good})
            elif how == 'module_key': sp.sparsify_model({some: good, nn.Linear(4, 4): good})
            elif how == 'round_to': sp.sparsify_model(good, round_to=data.draw(bad_round_to))
            elif how == 'layer_sparsity': sp.sparsify_layer(some, data.draw(bad_sparsities))
            elif how == 'layer_key': sp.sparsify_layer(data.draw(st.text(max_size=6).filter(lambda k: k not in sp.layers)), good)
            else: sp.sparsify_layer(sp.layers[some], good, round_to=data.draw(bad_round_to))
    assert bitwise_equal(state, originals(model))
    assert masks.keys() == sp.masks.keys() and all(torch.equal(masks[n], sp.masks[n]) for n in masks)

# ----------------------------------------------------------------------------------------------- 10. masks primitives

@st.composite
def score_lists(draw, max_len:int=300, n_lists:int=4):
    "Lists of float tensors (some empty) with ties (few distinct levels) and -inf entries"
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    lens = draw(st.lists(st.integers(0, max_len), min_size=1, max_size=n_lists))
    assume(sum(lens) > 0)
    levels = draw(st.sampled_from([None, 1, 2, 5]))
    p_inf = draw(st.sampled_from([0., 0.1, 0.5]))
    xs = []
    for n in lens:
        x = torch.randn(n, generator=g) if levels is None else torch.randint(0, levels, (n,), generator=g).float()
        x[torch.rand(n, generator=g) < p_inf] = -math.inf
        xs.append(x)
    return xs

def _check_lowest_k(xs, k):
    keep = lowest_k_keep(xs, k)
    assert [kp.shape for kp in keep] == [x.shape for x in xs] and all(kp.dtype == torch.bool for kp in keep)
    ref = ref_prune(xs, k)
    for kp,r in zip(keep, ref): assert torch.equal(~kp, r)

def _check_kth(xs, k):
    v,n_le = kth_smallest(xs, k)
    allx = np.sort(torch.cat(xs).numpy())
    assert float(v) == allx[k - 1] and n_le == int((allx <= allx[k - 1]).sum())

@settings(max_examples=150 * SCALE, **SETTINGS)
@given(data=st.data(), xs=score_lists())
def test_lowest_k_keep_and_kth_smallest(data, xs):
    "lowest_k_keep prunes exactly the k lowest (later first among ties); kth_smallest is the sorted k-th"
    n = sum(x.numel() for x in xs)
    k = data.draw(st.integers(0, n))
    _check_lowest_k(xs, k)
    if k: _check_kth(xs, k)
    single = torch.cat(xs)
    assert torch.equal(~lowest_k_keep(single, k), ref_prune([single], k)[0])

@settings(max_examples=6 * SCALE, **SETTINGS)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1), levels=st.sampled_from([None, 3, 1000]),
       p_inf=st.sampled_from([0., 0.2]), n_parts=st.integers(1, 3))
def test_lowest_k_keep_sampled_path(data, seed, levels, p_inf, n_parts):
    "Beyond 2**13 entries kth_smallest brackets from a sample (beyond ~300k, the sample's own quantiles too): same answers as the sort reference"
    g = torch.Generator().manual_seed(seed)
    n = data.draw(st.one_of(st.integers(2**13 + 1, 400_000), st.integers(400_000, 1_500_000)))
    x = torch.randn(n, generator=g) if levels is None else torch.randint(0, levels, (n,), generator=g).float()
    x[torch.rand(n, generator=g) < p_inf] = -math.inf
    cuts = sorted(data.draw(st.lists(st.integers(1, n - 1), min_size=n_parts - 1, max_size=n_parts - 1, unique=True)))
    xs = list(torch.tensor_split(x, cuts))
    k = data.draw(st.one_of(st.integers(1, n), st.sampled_from([1, n // 2, n - 1, n])))
    _check_kth(xs, k)
    _check_lowest_k(xs, k)

def test_kth_smallest_sampled_path_with_empty_tensor():
    "An empty tensor among the inputs must not break the sampled path (it does not break the small path)"
    x = torch.randn(2**13 + 10, generator=torch.Generator().manual_seed(0))
    _check_kth([x[:5], x[5:]], 100)           # fine
    _check_kth([x[:0], x[:5]], 3)             # small path with an empty tensor: fine
    _check_kth([x, x[:0]], 100)               # sampled path with an empty tensor
    _check_lowest_k([x[:0], x], 1000)

@settings(max_examples=150 * SCALE, **SETTINGS)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1), levels=st.sampled_from([None, 1, 2, 3]),
       m=st.integers(1, 20), lead=st.lists(st.integers(1, 4), min_size=0, max_size=2), g_=st.integers(1, 4))
def test_nm_keep_matches_stable_sort(data, seed, levels, m, lead, g_):
    "nm_keep keeps the n highest of every m consecutive entries, the earlier among ties (stable sort)"
    n = data.draw(st.integers(1, m))
    gen = torch.Generator().manual_seed(seed)
    shape = (*lead, m * g_)
    x = torch.randn(shape, generator=gen) if levels is None else torch.randint(0, levels, shape, generator=gen).float()
    if data.draw(st.booleans()): x[torch.rand(shape, generator=gen) < 0.2] = -math.inf
    keep = nm_keep(x, n, m)
    assert keep.shape == x.shape and keep.dtype == torch.bool
    sc = x.reshape(-1, m).numpy()
    order = np.argsort(-sc, axis=1, kind='stable')
    ref = np.zeros_like(sc, dtype=bool)
    np.put_along_axis(ref, order[:, :n], True, axis=1)
    assert np.array_equal(keep.reshape(-1, m).numpy(), ref)
