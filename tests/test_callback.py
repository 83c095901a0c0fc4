"End-to-end tests of `SparsifyCallback` on digits: exact sparsity, zeros after every step, statistics, checkpoints, AMP, DDP"
import hashlib, json, tempfile, warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.distributed as dist
from torch.amp import GradScaler, autocast
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (patches Learner.fit_one_cycle)
from fastai.callback.training import GradientAccumulation

from fisherfast.criteria.base import Criteria
from fisherfast.core.schedule import iterative
from fisherfast.data import digits_learner, digits_mlp, digits_tensors
from fisherfast.sparse.callback import SparsifyCallback

warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')

obd_like = Criteria(lambda l: l.stat('fisher_diag') * l.weight**2, needs=('fisher_diag',), name='obd_like')


def learner(cbs=None, seed=0, tensors=None, bs=64):
    return digits_learner(seed, tensors or digits_tensors(0), bs, cbs=cbs, wd=0.1)


def fit(learn, *args, method='fit_one_cycle', **kwargs):
    with learn.no_bar(), learn.no_logging(): getattr(learn, method)(*args, **kwargs)
    return learn


class Watch(Callback):
    "Checks the pruned weights are zero after every optimizer step; records the squared gradients of each step"
    order = SparsifyCallback.order + 1
    def before_fit(self): self.steps,self.sq = 0,{}
    def before_step(self):
        for n,m in self.sparsify.sparsifier.layers.items(): self.sq[n] = self.sq.get(n, 0) + m.weight.grad.double()**2
    def after_step(self):
        sp = self.sparsify.sparsifier
        for n,keep in sp.masks.items(): assert not sp.layers[n].weight[~keep].any(), f"pruned weight of {n} revived"
        self.steps += 1


def n_zeros(sp): return {n: int((m.weight == 0).sum()) for n,m in sp.layers.items()}


@pytest.mark.parametrize('criteria,context,granularity', [
    ('magnitude', 'global', 'weight'), (obd_like, 'global', 'weight'), (obd_like, 'local', 'weight'),
    ('magnitude', 'local', 'row')])
def test_final_sparsity_exact_and_zeros_after_every_step(criteria, context, granularity):
    cb,w = SparsifyCallback(0.85, granularity, context, criteria), Watch()
    learn = fit(learner(), 3, 1e-2, cbs=[cb, w])
    assert w.steps == 3 * len(learn.dls.train)
    sp,zeros = cb.sparsifier,n_zeros(cb.sparsifier)
    sizes = {n: m.weight.numel() for n,m in sp.layers.items()}
    if granularity == 'row':  # whole rows: each layer prunes round(0.85 * rows) rows
        for n,m in sp.layers.items(): assert zeros[n] == round(0.85 * m.weight.shape[0]) * m.weight.shape[1]
    elif context == 'local':
        for n in sp.layers: assert zeros[n] == round(0.85 * sizes[n])
    else: assert sum(zeros.values()) == round(0.85 * sum(sizes.values()))
    if granularity == 'weight': assert learn.recorder.values[-1][2] > 0.6


@pytest.mark.parametrize('decay', [None, 0.9])
def test_statistics_equal_manual_accumulation(decay):
    cb,w = SparsifyCallback(0.7, criteria=obd_like, decay=decay, every=7), Watch()
    fit(learner(), 2, 1e-2, cbs=[cb, w])
    assert cb.stats.n == w.steps
    if decay is None:
        for n,f in cb.stats.result()['fisher_diag'].items():
            torch.testing.assert_close(f.double(), w.sq[n] / w.steps, rtol=1e-5, atol=1e-12)


def test_gradient_accumulation_counts_optimizer_steps():
    cb,w = SparsifyCallback(0.5, criteria=obd_like), Watch()
    learn = fit(learner(), 2, 1e-3, cbs=[cb, w, GradientAccumulation(256)], method='fit')
    assert cb.stats.n == w.steps < len(learn.dls.train)
    assert abs(cb.current_sparsity() - 0.5) < 1e-3


def test_grads_ring_buffer_holds_the_last_gradients():
    grads = Criteria(lambda l: l.weight.abs() + 0 * l.stat('grads').last().sum(), needs=('grads',), name='grads_user')
    rows = []
    class Rows(Callback):
        order = SparsifyCallback.order + 1
        def before_step(self): rows.append(self.sparsify.sparsifier.layers['2'].weight.grad.flatten().clone())
    cb = SparsifyCallback(0.5, criteria=grads, n_grads=5)
    fit(learner(), 1, 1e-3, cbs=[cb, Rows()], method='fit')
    torch.testing.assert_close(cb.stats.result()['grads']['2'].last(), torch.stack(rows[-5:]))


def test_save_load_resume_keeps_masks_and_statistics(tmp_path):
    cb = SparsifyCallback(0.8, criteria=obd_like)
    learn = learner(cbs=cb)
    learn.path = tmp_path
    class Stop(Callback):
        def after_epoch(self):
            if self.epoch == 1: self.learn.save('epoch1')
    fit(learn, 4, 1e-2, cbs=Stop())
    final = {n: k.clone() for n,k in cb.sparsifier.masks.items()}
    # a fresh process: new learner, the callback attached before `load`
    cb2 = SparsifyCallback(0.8, criteria=obd_like)
    learn2 = learner(cbs=cb2, seed=1)
    learn2.path = tmp_path
    learn2.load('epoch1')
    state = torch.load(tmp_path / 'models' / 'epoch1.pth', weights_only=False)['model']
    masks1 = {k.split('.', 2)[2]: v for k,v in state.items() if k.startswith('_sparsify.mask.')}
    assert masks1 and cb2.sparsifier is None and cb2._pending
    w = Watch()
    fit(learn2, 4, 1e-2, cbs=w, start_epoch=2)
    for n,k in masks1.items(): assert not (~k & cb2.sparsifier.masks[n]).any()  # pruned stays pruned
    assert cb2.stats.n == int(state['_sparsify.stats.n']) + w.steps
    zeros = n_zeros(cb2.sparsifier)
    assert sum(zeros.values()) == round(0.8 * sum(m.weight.numel() for m in cb2.sparsifier.layers.values()))
    assert set(final) == set(cb2.sparsifier.masks)


def test_lth_checkpoint_keeps_rewind_weights(tmp_path):
    cb = SparsifyCallback(0.6, schedule=iterative, lth=True, rewind_epoch=1, start_epoch=1)
    learn = learner(cbs=cb)
    learn.path = tmp_path
    fit(learn, 3, 1e-3, method='fit')
    learn.save('lth')
    cb2 = SparsifyCallback(0.6, schedule=iterative, lth=True, rewind_epoch=1, start_epoch=1)
    learn2 = learner(cbs=cb2, seed=3)
    learn2.path = tmp_path
    learn2.load('lth')
    fit(learn2, 3, 0., method='fit', start_epoch=3)  # nothing left to train: only restores
    saved, restored = cb.sparsifier.state_dict(), cb2.sparsifier.state_dict()
    inits = [k for k in saved if k.startswith('init')]
    assert len(inits) == 2 * len(cb.sparsifier.layers)  # a weight and a bias per layer
    for k in inits: assert torch.equal(restored[k], saved[k])


class CPUMixedPrecision(MixedPrecision):
    "fastai's `MixedPrecision` with CPU autocast (bf16) and an optional CPU `GradScaler`"
    def __init__(self, scale=None): super().__init__('bf16'); self.scale = scale
    def before_fit(self):
        self.autocast = autocast('cpu', dtype=torch.bfloat16)
        self.learn.scaler = GradScaler('cpu', init_scale=self.scale or 1., growth_interval=10**6, enabled=self.scale is not None)
        self.scales,self.seen = [],[]
    def before_step(self):
        self.seen.append(self.scaler.get_scale() if self.scaler.is_enabled() else 1.)
        super().before_step()


def test_bf16_autocast_trains_and_prunes_exactly():
    cb,w = SparsifyCallback(0.8, criteria=obd_like), Watch()
    learn = fit(learner(), 2, 1e-2, cbs=[cb, w, CPUMixedPrecision()])
    assert sum(n_zeros(cb.sparsifier).values()) == round(0.8 * sum(m.weight.numel() for m in cb.sparsifier.layers.values()))
    assert learn.recorder.values[-1][2] > 0.5


def test_loss_scaled_gradients_are_unscaled_before_the_statistics():
    "A loss scale of 2^12 (exact in binary) must give the statistics and masks of the unscaled run"
    runs = []
    for scale in (None, 2.**12):
        cb,amp = SparsifyCallback(0.8, criteria=obd_like, every=5),CPUMixedPrecision(scale)
        fit(learner(), 1, 1e-2, cbs=[cb, amp])
        assert set(amp.seen) == {scale or 1.}
        runs.append(cb)
    a,b = (r.stats.result()['fisher_diag'] for r in runs)
    for n in a: torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=0)
    for n,k in runs[0].sparsifier.masks.items(): assert torch.equal(k, runs[1].sparsifier.masks[n])


# --- two processes, gloo, DDP ------------------------------------------------------------------------

def _broadcast_on_cpu(self, t, rank):
    "fastai's `DistributedDL._broadcast` without its `.cuda()` (written for nccl): gloo broadcasts CPU tensors"
    t = torch.LongTensor(t)
    dist.broadcast(t, rank)
    return t.tolist()


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors: h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _ddp_worker(rank, world, out):
    "One rank of fastai's distributed training (`DistributedTrainer`: accelerate's DDP, `DistributedDL` shards)"
    from fastai.distributed import DistributedDL, DistributedTrainer
    DistributedDL._broadcast = _broadcast_on_cpu
    cb,w = SparsifyCallback(0.85, criteria=obd_like, every=3), Watch()
    learn = learner(cbs=None, seed=rank)  # different inits: DDP broadcasts rank 0's
    with learn.no_bar(): learn.fit_one_cycle(2, 1e-2, cbs=[DistributedTrainer(cpu=True), cb, w])
    sp = cb.sparsifier
    res = dict(masks=_digest(sp.masks[k] for k in sorted(sp.masks)),
               weights=_digest(m.weight for m in sp.layers.values()),
               stats=_digest(cb.stats.result()['fisher_diag'].values()),
               pruned=sum(int((~k).sum()) for k in sp.masks.values()), steps=w.steps, history=len(cb.history))
    Path(out, f'{rank}.json').write_text(json.dumps(res))


def test_ddp_two_processes_gloo_identical_masks():
    from gloo import spawn
    with tempfile.TemporaryDirectory() as d:
        spawn(_ddp_worker, d)
        r0,r1 = (json.loads(Path(d, f'{r}.json').read_text()) for r in (0, 1))
    assert r0 == r1, (r0, r1)
    n = sum(m.weight.numel() for m in digits_mlp().modules() if isinstance(m, nn.Linear))
    assert r0['pruned'] == round(0.85 * n) and r0['steps'] > 0 and r0['history'] > 1


# --- fine_tune: a frozen body waits, then the schedule spans the fit that trains it -----------------------

def _fine_tuned(criteria):
    "The digits MLP trained dense, then fine-tuned (1 frozen epoch, then 4) with the callback at 80%: `(callback, accuracy, warnings)`"
    from fastai.callback.schedule import fine_tune  # noqa: F401 (patches Learner.fine_tune)
    from fastai.torch_core import params
    learn = digits_learner(splitter=lambda m: [params(m[:-1]), params(m[-1])])
    cb = SparsifyCallback(0.8, criteria=criteria)
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        learn.fit_one_cycle(10, 1e-2)  # the "pretrained" model
        learn.fine_tune(4, 1e-2, freeze_epochs=1, cbs=cb)
    return cb, float(learn.validate()[1]), [str(x.message) for x in w]

def test_fine_tune_frozen_body_obd_end_to_end():
    from fisherfast.criteria.fisher import obd
    from fisherfast.criteria.base import magnitude
    runs = {c.name: _fine_tuned(c) for c in (magnitude, obd)}
    for name,(cb,acc,msgs) in runs.items():
        assert any('frozen in this fit' in m for m in msgs), name
        assert cb.current_sparsity() == pytest.approx(0.8, abs=1e-3), name
        assert max(cb.layer_sparsity().values()) < 0.99, (name, cb.layer_sparsity())  # no layer deleted
        assert cb.history and cb.history[0]['pct'] > 0, name  # pruned in the second fit, on its own schedule
    accs = {k: v[1] for k,v in runs.items()}
    assert runs['magnitude'][1] > 0.8, accs  # it learned, and pruning kept it working
    assert runs['obd'][1] >= runs['magnitude'][1] - 0.01, accs

def test_frozen_prune_with_gradient_criteria_is_refused():
    from fisherfast.criteria.fisher import obd
    learn = learner()
    for p in learn.model[0].parameters(): p.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen in this fit"):
        with learn.no_bar(), learn.no_logging(): learn.fit(1, cbs=SparsifyCallback(0.5, criteria=obd, frozen='prune'))

def test_arguments_checked_before_training():
    for kw,msg in [(dict(round_to=0), 'round_to=0'), (dict(schedule=0.3), 'schedule=0.3 must be a Schedule'),
                   (dict(granularity='neuron'), "granularity='neuron'"), (dict(context='globl'), "context='globl'"),
                   (dict(criteria='obdd'), "criteria='obdd'"), (dict(nm=(4, 2)), 'nm=(4, 2)'), (dict(frozen='skip'), "frozen='skip'")]:
        with pytest.raises((ValueError, TypeError), match=msg.replace('(', r'\(').replace(')', r'\)')): SparsifyCallback(0.5, **kw)
    assert SparsifyCallback(0.5).current_sparsity() == 0.

def test_metric_not_left_behind_by_a_failed_fit():
    class Fails(Callback):
        def after_batch(self): raise RuntimeError('boom')
    learn,cb = learner(),SparsifyCallback(0.5)
    with learn.no_bar(), learn.no_logging():
        with pytest.raises(RuntimeError): learn.fit(1, cbs=[cb, Fails()])
        learn.fit(1, cbs=cb)
    assert sum(getattr(m, 'name', '') == 'sparsity' for m in learn.metrics) == 0


def test_add_cb_then_load_restores_masks(tmp_path):
    "A callback attached with `add_cb` (no `after_create`) still takes its masks out of a checkpoint"
    cb = SparsifyCallback(0.6)
    learn = learner(cbs=cb)
    learn.path = tmp_path
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    learn.save('ck')
    learn2 = learner(seed=1)
    learn2.path = tmp_path
    cb2 = SparsifyCallback(0.6)
    learn2.add_cb(cb2)
    learn2.load('ck')
    with learn2.no_bar(), learn2.no_logging(): learn2.fit(1, 0.)
    for n,k in cb.sparsifier.masks.items(): assert torch.equal(cb2.sparsifier.masks[n], k), n


# --- lr_find and learn.export, with the callback attached to the Learner -------------------------------

def test_lr_find_leaves_the_model_dense_then_fit_prunes():
    "lr_find is not training: nothing is pruned during it, and its restored weights are the dense ones"
    from fastai.callback.schedule import lr_find  # noqa: F401 (patches Learner.lr_find)
    cb = SparsifyCallback(0.7, criteria=obd_like)
    learn = learner(cbs=cb)
    before = {k: v.clone() for k,v in learn.model.state_dict().items()}
    with learn.no_bar(), learn.no_logging(): learn.lr_find(show_plot=False)
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    fit(learn, 2, 1e-2)
    total = sum(m.weight.numel() for m in cb.sparsifier.layers.values())
    assert sum(n_zeros(cb.sparsifier).values()) == round(0.7 * total)


def test_export_and_load_learner_keep_the_sparse_model(tmp_path):
    "learn.export pickles the Learner with the callback; load_learner gives the same sparse model and predictions"
    from fastai.data.core import Datasets
    from fastai.data.transforms import ItemGetter
    from fastai.learner import Learner, load_learner
    from fastai.losses import CrossEntropyLossFlat
    from fastcore.foundation import L
    x,y,xv,yv = digits_tensors(0)
    n = len(x)
    dsets = Datasets(L(zip(torch.cat([x, xv]), torch.cat([y, yv]))), tfms=[[ItemGetter(0)], [ItemGetter(1)]],
                     splits=[list(range(n)), list(range(n, n + len(xv)))])
    cb = SparsifyCallback(0.7, criteria=obd_like)
    learn = Learner(dsets.dataloaders(bs=64), digits_mlp(seed=0), loss_func=CrossEntropyLossFlat(), cbs=cb)
    fit(learn, 2, 1e-2, method='fit')
    learn.export(tmp_path / 'learner.pkl')
    loaded = load_learner(tmp_path / 'learner.pkl')
    zeros = lambda m: {n: int((l.weight == 0).sum()) for n,l in m.named_modules() if isinstance(l, nn.Linear)}
    assert zeros(loaded.model) == zeros(learn.model) and sum(zeros(loaded.model).values()) > 0
    with torch.no_grad(): torch.testing.assert_close(loaded.model.eval()(xv[:16]), learn.model.eval()(xv[:16]))
