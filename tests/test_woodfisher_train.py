"WoodFisher in `SparsifyCallback`: the inverse kept and brought up to date is the rebuilt one; `n_grads` schedules; errors"
import pytest
import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (patches Learner.fit_one_cycle)

from fisherfast.core.schedule import agp
from fisherfast.criteria.obs import block_inverse, filling_count, woodfisher
from fisherfast.data import digits_learner, digits_tensors
from fisherfast.sparse.callback import SparsifyCallback
from fisherfast.stats.train import TrainStats, count_at

B,DAMP = 32,1e-3


def fit(cb, epochs=3, extra=()):
    "Train the digits MLP with `cb` (its schedule agp over the whole fit, whatever the callback's default)"
    cb.schedule = agp
    learn = digits_learner(0, digits_tensors(0), 64, wd=0.1)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, 1e-2, cbs=[cb, *extra])
    return learn


def spy(wf, name):
    "Count the calls of `wf`'s method `name`"
    calls,method = [],getattr(wf, name)
    def wrapped(*args, **kwargs): calls.append(1); return method(*args, **kwargs)
    setattr(wf, name, wrapped)
    return calls


class CompareWithRebuild(Callback):
    "After every pruning step: each kept inverse against one built from scratch from the same window and mask"
    order = SparsifyCallback.order + 1
    def __init__(self, wf): self.wf,self.errors,self.seen = wf,[],0
    def after_step(self):
        cb = self.sparsify
        if len(cb.history) == self.seen: return
        self.seen,grads = len(cb.history),cb.stats.result()['grads']
        for name,layer in cb.sparsifier.pruned.items():
            kept = layer.cache.get(self.wf)
            if kept is None: continue
            alive = layer.keep.flatten() & (layer.weight.flatten() != 0)
            assert torch.equal(kept.alive, alive), name
            assert kept.stop == grads[name].n
            ref = block_inverse(grads[name].last(kept.m), DAMP, block_size=B, mask=alive, dtype=torch.float64)
            self.errors.append(float((kept.inv.inv - ref).abs().max() / ref.abs().max()))


@pytest.mark.parametrize('n_grads', [32, {0.: 24, 0.5: 32}])
def test_kept_inverse_is_the_rebuilt_one_after_every_pruning_step(n_grads):
    crit = woodfisher(block_size=B, damp=DAMP)
    wf = crit.f.__self__
    advanced,built = spy(wf, '_advance'),spy(wf, '_build')
    cmp = CompareWithRebuild(wf)
    cb = SparsifyCallback(0.9, criteria=crit, n_grads=n_grads, every=2)
    fit(cb, epochs=5, extra=[cmp])  # 100 steps
    assert abs(cb.current_sparsity() - 0.9) < 1e-3
    assert len(cb.stats.acc['grads']['0'].buf) == 32 + 2  # the largest count, and `every` rows of slack
    assert len(advanced) > len(built) and len(cmp.errors) > 100
    assert max(cmp.errors) < 1e-9


def test_pruned_weights_that_the_optimizer_moved_are_not_alive():
    "The step before a pruning step moves pruned weights off zero: the criterion goes by the mask, not by the zeros"
    crit = woodfisher(block_size=B, damp=DAMP, n_grads=32)
    wf,moved = crit.f.__self__,[]
    alive_of = wf._alive
    def check(layer, w):
        alive,keep = alive_of(layer, w),layer.layer.keep
        if keep is not None:
            moved.append(int(((w.flatten() != 0) & ~keep.flatten()).sum()))
            assert not bool((alive & ~keep.flatten()).any())
        return alive
    wf._alive = check
    fit(SparsifyCallback(0.8, criteria=crit, every=4))
    assert sum(moved) > 0


def test_dynamic_and_rebuilt_training_agree():
    "Bringing the inverse up to date or rebuilding it: the same masks and weights, up to rounding"
    res = []
    for dynamic in (True, False):
        cb = SparsifyCallback(0.85, criteria=woodfisher(block_size=B, damp=DAMP, n_grads=48, dynamic=dynamic), every=2)
        fit(cb)
        res.append((cb.sparsifier.masks, {n: m.weight.detach().clone() for n,m in cb.sparsifier.layers.items()}))
    (m1,w1),(m2,w2) = res
    agree = sum(int((m1[n] == m2[n]).sum()) for n in m1) / sum(m.numel() for m in m1.values())
    assert agree > 0.999
    if agree == 1:
        for n in w1: torch.testing.assert_close(w1[n], w2[n], rtol=1e-4, atol=1e-6)


def test_n_grads_schedule_in_the_callback_counts_by_sparsity():
    crit = woodfisher(block_size=16, damp=DAMP)
    wf,seen = crit.f.__self__,[]
    count = wf.count
    def record(grads, alive):
        m = count(grads, alive)
        seen.append((1 - float(alive.float().mean()), m, grads.buffer.held))
        return m
    wf.count = record
    schedule = {0.: 8, 0.5: 16, 0.8: 32}
    cb = SparsifyCallback(0.9, criteria=crit, n_grads=schedule, every=4)
    fit(cb)
    assert cb.stats.n_grads == schedule and len(cb.stats.acc['grads']['0'].buf) == 32 + 4
    assert all(m == filling_count(count_at(schedule, s), held) for s,m,held in seen)
    assert {m for s,m,_ in seen if m == count_at(schedule, s)} == {8, 16, 32}


@pytest.mark.parametrize('cb_n,crit_n,kept', [(None, None, 256), (64, None, 64), (None, {0.: 16, 0.5: 32}, 32),
                                              (48, 48, 48)])
def test_n_grads_of_callback_or_criterion(cb_n, crit_n, kept):
    cb = SparsifyCallback(0.5, criteria=woodfisher(n_grads=crit_n), n_grads=cb_n, every=10**6)
    fit(cb, epochs=1)
    assert len(cb.stats.acc['grads']['0'].buf) == kept
    assert cb.stats.result()['grads']['0'].n_grads == (cb_n or crit_n or 256)


def test_n_grads_errors():
    with pytest.raises(ValueError, match=r"n_grads=\{0.5: 64\} needs an entry for sparsity 0.0"):
        SparsifyCallback(0.5, n_grads={0.5: 64})
    with pytest.raises(ValueError, match=r"the key 1.0 must be a sparsity in \[0, 1\)"):
        SparsifyCallback(0.5, n_grads={0.: 64, 1.: 128})
    with pytest.raises(ValueError, match=r"n_grads\[0.5\]=0 must be an integer >= 1"):
        woodfisher(n_grads={0.: 64, 0.5: 0})
    with pytest.raises(ValueError, match="n_grads=1.5 must be an integer"):
        SparsifyCallback(0.5, n_grads=1.5)
    with pytest.raises(ValueError, match="disagree"):
        fit(SparsifyCallback(0.5, criteria=woodfisher(n_grads={0.: 8}), n_grads=8), epochs=1)


def test_too_large_buffer_says_what_to_set(monkeypatch):
    big = {'fc': nn.Linear(1000, 1000)}  # 1M weights
    monkeypatch.setattr(TrainStats, 'max_bytes', 2**30)
    with pytest.raises(ValueError, match=r"n_grads=512 gradients \(\+8 older\) of 1 layers \(1,000,000 weights\) in "
                                         r"torch.float32 takes 1.94 GiB, over TrainStats.max_bytes \(1.00 GiB\): set "
                                         r"grads_dtype=torch.bfloat16 \(0.97 GiB\), n_grads of at most 528 in bfloat16"):
        TrainStats(big, ('grads',), n_grads=512, slack=8)
    assert TrainStats(big, ('grads',), n_grads=512, slack=8, grads_dtype=torch.bfloat16).acc['grads']['fc'].buf.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="n_grads of at most 536, or prune fewer layers"):
        TrainStats(big, ('grads',), n_grads={0.: 64, 0.5: 1024}, grads_dtype=torch.bfloat16)
    TrainStats(big, ('fisher_diag',), n_grads=10**6)  # no rows kept: no limit
