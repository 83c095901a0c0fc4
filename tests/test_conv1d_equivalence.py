"""Every criterion prunes GPT-2's transposed `Conv1D` exactly as the same network built with `nn.Linear`.

The two models hold the same weights (the Linear ones transposed) in float64; each criterion, at 50% and 2:4, must
give the same masks (transposed) and the same surviving weights: every path reads and writes the weight in
`(out, in)` order through `PrunedLayer`, whatever the module stores.
"""
import os
os.environ['HF_HUB_OFFLINE'] = '1'
import copy, functools, warnings
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

transformers = pytest.importorskip('transformers')
from transformers.pytorch_utils import Conv1D
from fisherfast.all import *

transformers.logging.set_verbosity_error()


@functools.cache
def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=16,
                                  bos_token_id=0, eos_token_id=0, attn_implementation='eager')
    return transformers.GPT2LMHeadModel(cfg).double().eval()

def as_linear(model):
    "A copy of `model` with every `Conv1D` replaced by the `nn.Linear` that computes the same"
    model = copy.deepcopy(model)
    for name,m in list(model.named_modules()):
        if isinstance(m, Conv1D):
            lin = nn.Linear(m.weight.shape[0], m.weight.shape[1], dtype=m.weight.dtype)
            with torch.no_grad(): lin.weight.copy_(m.weight.t()); lin.bias.copy_(m.bias)
            parent,_,child = name.rpartition('.')
            setattr(model.get_submodule(parent), child, lin)
    return model

def pair():
    "The GPT-2 with `Conv1D` layers and its `nn.Linear` twin, fresh copies with the same weights"
    conv = copy.deepcopy(_gpt2())
    return conv, as_linear(conv)

g = torch.Generator().manual_seed(0)
IDS = torch.randint(0, 64, (8, 12), generator=g)
DL = [(IDS[:4], IDS[:4]), (IDS[4:], IDS[4:])]
def lm_loss(out, y): return F.cross_entropy(out.logits[:, :-1].flatten(0, 1), y[:, 1:].flatten())

@pytest.fixture(autouse=True)
def _quiet_tied_head():
    "GPT-2's lm_head is its input embedding: every Sparsifier here warns that it stays dense"
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=".*tied output head")
        yield

def stats_of(model, kinds):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return calibrate(model, DL, lm_loss, n_samples=8, kinds=kinds, progress=False)

CRITERIA = {  # name: (make the criterion, statistics it needs, context)
    'magnitude': (lambda: magnitude, None, 'global'),
    'fisher_diag': (lambda: fisher_diag, ('fisher_diag',), 'local'),
    'obd': (lambda: obd, ('fisher_diag',), 'global'),
    'taylor': (lambda: taylor, ('grad',), 'global'),
    'wanda': (lambda: wanda, ('act_norm',), 'local'),
    'wanda_layer': (lambda: wanda_layer, ('act_norm',), 'local'),
    'woodfisher': (lambda: woodfisher(block_size=32, n_grads=8, damp=1e-3), ('grads',), 'global'),
    'sparsegpt': (lambda: sparsegpt(dtype=torch.float64), ('xtx',), 'local'),
}

def check_same(conv, lin, masks_c, masks_l):
    "Same masks (Conv1D's transposed) and the same weights, layer by layer"
    assert masks_c.keys() == masks_l.keys()
    n_conv = 0
    for n,mc in masks_c.items():
        mc_o = mc.t() if isinstance(conv.get_submodule(n), Conv1D) else mc
        n_conv += isinstance(conv.get_submodule(n), Conv1D)
        assert torch.equal(mc_o, masks_l[n]), n
        wc = conv.get_submodule(n).weight
        wc = wc.t() if isinstance(conv.get_submodule(n), Conv1D) else wc
        torch.testing.assert_close(wc, lin.get_submodule(n).weight, rtol=1e-9, atol=1e-12, msg=n)
    assert n_conv == 8  # c_attn, c_proj, c_fc, mlp.c_proj of both blocks

@pytest.mark.parametrize('nm', [None, True], ids=['50%', '2:4'])
@pytest.mark.parametrize('name', list(CRITERIA))
def test_criterion_same_on_conv1d_and_linear(name, nm):
    make,kinds,context = CRITERIA[name]
    conv,lin = pair()
    sps = []
    for model in (conv, lin):
        stats = stats_of(model, kinds) if kinds else None
        sp = Sparsifier(model, 'weight', context, make(), nm=nm, stats=stats)
        sps.append(sp.sparsify_model(0.5))
    assert sps[0].sparsity_report().iloc[-1].sparsity == pytest.approx(0.5, abs=0.01)
    check_same(conv, lin, sps[0].masks, sps[1].masks)

@pytest.mark.parametrize('nm', [None, True], ids=['50%', '2:4'])
def test_sparsegpt_prune_same_on_conv1d_and_linear(nm):
    conv,lin = pair()
    sps = [sparsegpt_prune(m, DL, sparsity=0.5, nm=nm, n_samples=8, block_size=16) for m in (conv, lin)]
    assert len(sps[0].masks) == 8 and 'lm_head' not in sps[0].masks  # every Conv1D; the lm_head is the embedding
    check_same(conv, lin, sps[0].masks, sps[1].masks)
    for n,mk in sps[0].masks.items(): assert bool((conv.get_submodule(n).weight[~mk] == 0).all()), n

def train_stats(model, n_grads, steps=8):
    "`TrainStats` of the kept gradients of every Conv1D/Linear block layer over `steps` backward passes, as training collects them"
    layers = {n: m for n,m in model.named_modules() if isinstance(m, (Conv1D, nn.Linear)) and n != 'lm_head'}
    ts = TrainStats(layers, ('grads',), n_grads=n_grads)
    for i in range(steps):
        model.zero_grad()
        ids = IDS[i % 2 * 4:][:4]
        lm_loss(model(ids), ids).backward()
        ts.update()
    return ts

def test_training_window_same_on_conv1d_and_linear():
    "In training WoodFisher reads a Conv1D's window (and its `{sparsity: count}` schedule) as a Linear's"
    conv,lin = pair()
    sps = []
    for model in (conv, lin):
        window = train_stats(model, {0.: 3, 0.4: 6}).result()['grads']['transformer.h.0.attn.c_attn']
        assert isinstance(window, RowWindow) and window.n_grads == {0.: 3, 0.4: 6}
        sp = Sparsifier(model, 'weight', 'global', woodfisher(block_size=32, damp=1e-3), stats=train_stats(model, {0.: 3, 0.4: 6}).result())
        sps.append(sp.sparsify_model(0.5))
    check_same(conv, lin, sps[0].masks, sps[1].masks)
    rows = [train_stats(m, 4).result()['grads']['transformer.h.1.mlp.c_fc'].last() for m in (conv, lin)]
    torch.testing.assert_close(rows[0], rows[1], rtol=1e-9, atol=1e-12)  # (out, in) order, as the Linear's
