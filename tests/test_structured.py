"Physical channel removal against masking, and PruneCallback in fastai workflows"
import copy
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from torchvision.models import resnet18, VisionTransformer
from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (patches Learner.fit_one_cycle)
from fastai.callback.training import GradientAccumulation
from fisherfast.data import digits_learner
from fisherfast.sparse.prune_callback import PruneCallback
from fisherfast.sparse.sparsifier import Sparsifier
from fisherfast.sparse.structured import Pruner

torch.set_num_threads(1)


def _masked_and_removed(model, x, root_name, fn, idxs, granularity):
    "The outputs of `model` with one group's channels zeroed by a Sparsifier, and with them removed by torch-pruning"
    removed, masked = copy.deepcopy(model), copy.deepcopy(model)
    group = tp.DependencyGraph().build_dependency(masked, x).get_pruning_group(dict(masked.named_modules())[root_name], fn, idxs)
    producers = {}
    for dep, ix in group:
        m = dep.target.module
        if dep.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
            keep = torch.ones_like(m.weight, dtype=torch.bool)
            keep[list(ix)] = False
            producers[m] = keep
    Sparsifier(masked, granularity, 'local', layer_type=(nn.Conv2d, nn.Linear)).set_masks(producers)
    tp.DependencyGraph().build_dependency(removed, x).get_pruning_group(dict(removed.named_modules())[root_name], fn, idxs).prune()
    with torch.no_grad(): return masked(x), removed(x), len(producers)


@pytest.mark.parametrize('root,n_producers', [('layer1.0.conv1', 1), ('conv1', 3), ('layer3.0.conv2', 3)])
def test_resnet18_masked_filters_equal_removed_channels(root, n_producers):
    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics and affine entries, so a kept shift would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1); m.running_var.uniform_(0.5, 2); m.weight.data.uniform_(0.5, 1.5); m.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 64, 64)
    masked, removed, n = _masked_and_removed(model, x, root, tp.prune_conv_out_channels, [0, 3, 5, 9], 'filter')
    assert n == n_producers  # residual streams have several producers: the stem or a block's conv2 and the shortcut
    torch.testing.assert_close(masked, removed, atol=1e-4, rtol=1e-4)
    with torch.no_grad(): assert (model(x) - removed).abs().max() > 1e-3  # the group mattered


def _vit():
    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10).eval()


def test_vit_block_masked_ffn_neurons_equal_removed():
    model, x = _vit(), torch.randn(2, 3, 32, 32)
    masked, removed, n = _masked_and_removed(model, x, 'encoder.layers.encoder_layer_0.mlp.0', tp.prune_linear_out_channels,
                                             [1, 4, 8, 30, 77], 'row')
    assert n == 1
    torch.testing.assert_close(masked, removed, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('allocation', ['uniform', 'global'])
def test_pruned_resnet_saves_reloads_and_exports_without_fisherfast(tmp_path, allocation):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    small = Pruner(resnet18(num_classes=10).eval(), x, 'l2', {'macs': 0.5}, calib=[(x, torch.zeros(2, dtype=torch.long))],
                   allocation=allocation).prune()
    assert all(type(m).__module__.startswith('torch') for m in small.modules())
    torch.save(small, tmp_path / 'small.pt')
    back = torch.load(tmp_path / 'small.pt', weights_only=False).eval()
    with torch.no_grad(): torch.testing.assert_close(back(x), small(x))
    ep = torch.export.export(back, (x,))
    with torch.no_grad(): torch.testing.assert_close(ep.module()(x), small(x))


def test_prune_callback_fine_tune_waits_for_the_unfrozen_fit():
    learn = digits_learner(seed=0)
    learn.model[0].weight.requires_grad_(False)  # a frozen body, as fine_tune's first fit has
    cb = PruneCallback(0.5, n_steps=2)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=cb)
    assert cb.history == [] and learn.model[0].out_features == 64
    learn.model[0].weight.requires_grad_(True)
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-3, cbs=cb)
    assert [m.out_features for m in learn.model if isinstance(m, nn.Linear)] == [32, 32, 32, 10]
    assert len(cb.history) == 2


def test_prune_callback_with_gradient_accumulation_and_frozen_parameters_kept_frozen():
    dense = digits_learner(seed=0)
    with dense.no_bar(), dense.no_logging(): dense.fit_one_cycle(8, 1e-2, cbs=GradientAccumulation(128))
    learn = digits_learner(seed=0)
    learn.model[0].bias.requires_grad_(False)
    cb = PruneCallback(0.25, criteria='obd', n_steps=3)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(8, 1e-2, cbs=[cb, GradientAccumulation(128)])
    assert [m.out_features for m in learn.model if isinstance(m, nn.Linear)] == [48, 48, 48, 10]
    assert not learn.model[0].bias.requires_grad and learn.model[0].weight.requires_grad
    assert learn.validate()[1] > dense.validate()[1] - 0.03
    ids = {id(p) for pl in learn.opt.param_lists for p in pl}
    assert ids == {id(p) for p in learn.model.parameters() if p.requires_grad}  # fastai's default splitter: trainable ones


def _gpt2():
    import transformers
    from fisherfast.sparse.heads import conv1d_to_linear
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16, attn_implementation='eager')
    return conv1d_to_linear(transformers.GPT2LMHeadModel(cfg).eval())


def _gqa():
    import transformers
    cfg = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                   num_hidden_layers=2, vocab_size=64, attn_implementation='eager')
    return transformers.LlamaForCausalLM(cfg).eval()


def _heads_of(model):
    "Query heads and key/value heads of every attention of a GPT-2 or a Llama"
    if hasattr(model, 'transformer'): return {(b.attn.c_attn.out_features // 3 // b.attn.head_dim, b.attn.num_heads) for b in model.transformer.h}
    return {(b.self_attn.q_proj.out_features // b.self_attn.head_dim, b.self_attn.k_proj.out_features // b.self_attn.head_dim)
            for b in model.model.layers}


@pytest.mark.parametrize('make,heads', [(_gpt2, {(2, 2)}), (_gqa, {(2, 1)})])
@pytest.mark.parametrize('criteria,refit', [('l2', False), ('obd', False), ('l2', True), ('obs', True)])
def test_pruner_removes_fused_and_grouped_query_heads(tmp_path, make, heads, criteria, refit, recwarn):
    import os
    os.environ['HF_HUB_OFFLINE'] = '1'
    from fisherfast.stats.calibrate import calibrate
    torch.manual_seed(0)
    model = make()
    ids = torch.randint(0, 64, (4, 12))
    calib = [{'input_ids': ids[i:i + 2], 'labels': ids[i:i + 2]} for i in (0, 2)]
    stats = calibrate(model, calib, 'causal_lm', kinds=('fisher_diag',), progress=False) if criteria == 'obd' else None
    x = {'input_ids': ids[:2], 'use_cache': False}
    pr = Pruner(model, x, criteria, 0.5, stats=stats, calib=calib if refit else None, heads=True)
    small = pr.prune()
    assert not [w for w in recwarn if 'kept whole' in str(w.message)]
    assert _heads_of(small) == heads
    out = [m for m in pr.kept_in if m in {b.attn.c_proj for b in small.transformer.h}] if hasattr(small, 'transformer') else \
          [m for m in pr.kept_in if m in {b.self_attn.o_proj for b in small.model.layers}]
    assert len(out) == 2 and all(m.in_features == 16 for m in out)  # the output projections lost half their inputs, and are re-fitted
    with torch.no_grad(): y = small(**x).logits
    assert y.shape == (2, 12, 64) and torch.isfinite(y).all()
    torch.save(small, tmp_path / 'small.pt')
    back = torch.load(tmp_path / 'small.pt', weights_only=False).eval()
    with torch.no_grad(): torch.testing.assert_close(back(**x).logits, y)
    ep = torch.export.export(back, (), x, strict=False)
    with torch.no_grad(): torch.testing.assert_close(ep.module()(**x).logits, y)


@pytest.mark.parametrize('make', [_gpt2, _gqa])
def test_pruner_heads_dict_target(make):
    torch.manual_seed(0)
    model = make()
    x = {'input_ids': torch.randint(0, 64, (2, 12)), 'use_cache': False}
    pr = Pruner(model, x, 'l2', {'params': 0.2}, heads=True)
    pr.prune()
    assert pr.report().loc['params', 'ratio'] <= 0.8
    assert max(q for q, _ in _heads_of(model)) < 4  # heads went too
