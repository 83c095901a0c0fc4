"Hugging Face models (BERT, GPT-2, ViT from small configs, random init, never downloaded) prune, squash and run"
import os
os.environ['HF_HUB_OFFLINE'] = '1'
import copy, functools, warnings
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip('transformers')
from transformers.pytorch_utils import Conv1D
from fisherfast.all import *
from fisherfast.core.layers import is_transposed
from fisherfast.sparse.export import save_compact, load_compact, to_torch_prune, from_torch_prune

transformers.logging.set_verbosity_error()


def bert():
    "BERT with a classifier of 8 labels, so that every Linear dimension is a multiple of 8"
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  vocab_size=100, num_labels=8)
    return transformers.BertForSequenceClassification(cfg).eval()

def gpt2():
    "GPT-2 with its (in, out) Conv1D layers and a vocabulary of 128, the lm_head tied to the embedding"
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=128, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()

def vit():
    "ViT whose patch-embedding conv has 8 input channels"
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 image_size=8, patch_size=4, num_channels=8, num_labels=8)
    return transformers.ViTForImageClassification(cfg).eval()

def batch(name):
    "Inputs and targets of a batch of 4 for the model `name`"
    g = torch.Generator().manual_seed(0)
    if name == 'vit': return torch.randn(4, 8, 8, 8, generator=g), torch.randint(0, 8, (4,), generator=g)
    ids = torch.randint(0, 100, (4, 16), generator=g)
    return ids, (ids if name == 'gpt2' else torch.randint(0, 8, (4,), generator=g))

def loss(name):
    "The loss on the logits of the model `name`: next-token cross-entropy for GPT-2, else classification"
    if name == 'gpt2': return lambda out, y: F.cross_entropy(out.logits[:, :-1].flatten(0, 1), y[:, 1:].flatten())
    return lambda out, y: F.cross_entropy(out.logits, y)

MODELS = {'bert': bert, 'gpt2': gpt2, 'vit': vit}
# the granularities that apply to a 2-D weight ('kernel' needs a conv kernel)
GRANS = [n for n,g in granularities.items() if g.applies(2)]


@functools.cache
def _built(name):
    torch.manual_seed(0)
    return MODELS[name]()

def build(name):
    "A fresh copy of the model `name`, always with the same random weights"
    return copy.deepcopy(_built(name))

def logits(model, name):
    with torch.no_grad(): return model(batch(name)[0]).logits

def check_masks(sp):
    "Every mask has its weight's stored shape, and the weight is zero wherever the mask prunes"
    for n,mk in sp.masks.items():
        w = sp.layers[n].weight
        assert mk.shape == w.shape, n
        assert bool((w[~mk] == 0).all()), n


def test_layers_found():
    assert any(isinstance(m, Conv1D) for m in Sparsifier(build('gpt2')).layers.values())
    assert 'vit.embeddings.patch_embeddings.projection' in Sparsifier(build('vit')).layers
    assert len(Sparsifier(build('bert')).layers) == 14


@pytest.mark.parametrize('context', ['local', 'global'])
@pytest.mark.parametrize('gran', GRANS)
@pytest.mark.parametrize('name', list(MODELS))
def test_granularity(name, gran, context):
    if gran == 'layer' and context == 'local': pytest.skip("one unit per layer: a local target of 50% rounds each layer to 0 or 1 unit")
    model = build(name)
    dense = logits(model, name)
    sp = Sparsifier(model, gran, context)
    sp.sparsify_model(0.5)
    check_masks(sp)
    total = sp.sparsity_report().iloc[-1].sparsity
    assert abs(total - 0.5) < 0.1, total
    masked = logits(model, name)
    assert not torch.equal(masked, dense)
    plain = sp.squash()
    out = logits(plain, name)
    assert torch.equal(out, masked) and bool(out.isfinite().all())


@pytest.mark.parametrize('name', ['bert', 'gpt2'])
def test_kernel_does_not_apply(name):
    with pytest.raises(ValueError, match="granularity='kernel' does not apply"): Sparsifier(build(name), 'kernel')


@pytest.mark.parametrize('context', ['local', 'global'])
@pytest.mark.parametrize('name', list(MODELS))
def test_nm(name, context):
    model = build(name)
    sp = Sparsifier(model, 'weight', context, nm=True)
    sp.sparsify_model(0.5)
    check_masks(sp)
    for n,mk in sp.masks.items():
        o = mk.t() if is_transposed(sp.layers[n]) else mk   # (out, in, *kernel)
        assert bool((o.movedim(1, -1).reshape(-1, 4).sum(-1) == 2).all()), n
    assert bool(logits(sp.squash(), name).isfinite().all())


def test_gpt2_row_prunes_output_features():
    "A 'row' of GPT-2's c_attn is an output feature: a column of the (in, out) stored weight, with its bias entry"
    model = build('gpt2')
    layer = model.transformer.h[0].attn.c_attn
    assert layer.weight.shape == (32, 96)
    sp = Sparsifier(model, 'row', 'local')
    sp.sparsify_layer(layer, 0.5)
    mk = sp.masks['transformer.h.0.attn.c_attn']
    kept = mk[0]
    assert torch.equal(mk, kept.expand_as(mk))   # constant down each column
    assert int((~kept).sum()) == 48
    assert bool((layer.weight[:, ~kept] == 0).all()) and bool((layer.bias[~kept] == 0).all())
    with torch.no_grad(): out = layer(torch.randn(2, 5, 32))
    assert bool((out[..., ~kept] == 0).all()) and bool((out[..., kept] != 0).all())


def test_gpt2_nm_groups_inputs():
    "2:4 on GPT-2's Conv1D groups 4 consecutive inputs: rows of its stored weight"
    model = build('gpt2')
    sp = Sparsifier(model, nm=True)
    sp.sparsify_layer('transformer.h.0.mlp.c_proj', 0.5)
    mk = sp.masks['transformer.h.0.mlp.c_proj']   # stored (in=128, out=32)
    assert mk.shape == (128, 32)
    assert bool((mk.view(32, 4, 32).sum(1) == 2).all())


@pytest.mark.parametrize('context', ['local', 'global'])
@pytest.mark.parametrize('name', list(MODELS))
def test_loss_aware(name, context):
    "OBD from the eFIM diagonal that `calibrate` collects on a batch (per-sample gradients through `vmap`)"
    model = build(name)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # vmap falls back to a loop for CPU flash attention
        stats = calibrate(model, [batch(name)], loss(name), kinds=('fisher_diag',), layer_type=prunable_types(),
                          progress=False)
    sp = Sparsifier(model, 'weight', context, obd, stats=stats)
    assert set(stats.layers) - set(sp.layers) == ({'lm_head'} if name == 'gpt2' else set())  # the tied head stays dense
    sp.sparsify_model(0.5)
    check_masks(sp)
    assert sp.sparsity_report().iloc[-1].sparsity == pytest.approx(0.5, abs=1e-3)
    assert bool(logits(sp.squash(), name).isfinite().all())


@pytest.mark.parametrize('name', list(MODELS))
def test_wanda(name):
    "Input statistics cover Linear and GPT-2's Conv1D (its inputs are tokens too); calibrate finds Conv1D by default"
    model = build(name)
    stats = calibrate(model, [batch(name)], loss(name), kinds=('act_norm',), progress=False)
    sp = Sparsifier(model, 'weight', 'local', wanda, stats=stats)
    assert set(stats.layers) - set(sp.layers) == ({'lm_head'} if name == 'gpt2' else set())  # the tied head stays dense
    sp.sparsify_model(0.5)
    check_masks(sp)


@pytest.mark.parametrize('nm', [None, True])
@pytest.mark.parametrize('name', list(MODELS))
def test_compact_roundtrip(name, nm, tmp_path):
    model = build(name)
    sp = Sparsifier(model, 'weight', 'global', nm=nm)
    sp.sparsify_model(0.5)
    out = logits(model, name)
    save_compact(sp, tmp_path/'c.pt')
    torch.manual_seed(1)
    new = MODELS[name]()
    masks = load_compact(new, tmp_path/'c.pt')
    assert masks.keys() == sp.masks.keys()
    assert all(torch.equal(masks[n], sp.masks[n]) for n in masks)
    assert torch.equal(logits(new.eval(), name), out)
    if nm: assert all('nm' in r for r in torch.load(tmp_path/'c.pt')['sparse'].values())


def test_torch_prune_roundtrip_gpt2():
    "Masks go to torch.nn.utils.prune in the stored layout of Conv1D, and come back"
    model = build('gpt2')
    sp = Sparsifier(model, 'row', 'local')
    sp.sparsify_model(0.5)
    out,masks = logits(model, 'gpt2'),sp.masks
    to_torch_prune(sp)
    assert model.transformer.h[0].attn.c_attn.weight_mask.shape == (32, 96)
    assert torch.equal(logits(model, 'gpt2'), out)
    back = from_torch_prune(model)
    Sparsifier(model, 'row', 'local').set_masks(back)
    assert back.keys() == masks.keys() and all(torch.equal(back[n], masks[n]) for n in masks)
    assert not any(k.endswith(('_orig', '_mask')) for k in model.state_dict())
    assert torch.equal(logits(model, 'gpt2'), out)
