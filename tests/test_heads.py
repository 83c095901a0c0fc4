"""Attention heads and FFN neurons removed by torch-pruning with `fisherfast.sparse.heads`, on small random-init models.

For BERT, Llama (MHA; GQA keeps its heads), GPT-2 (after `conv1d_to_linear`; its fused c_attn keeps its heads) and
torchvision's ViT (after `split_mha`): the pruned model runs, keeps its output shape, has the expected head count and
FFN width, fewer parameters, and gives the outputs of the dense model with the same heads and neurons zeroed.
"""
import os
os.environ['HF_HUB_OFFLINE'] = '1'
import copy, warnings
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

transformers = pytest.importorskip('transformers')
import torchvision
from fisherfast.sparse.heads import *

transformers.logging.set_verbosity_error()
IDS = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))

@pytest.fixture(autouse=True)
def _setup():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'Unwrapped parameters')
        yield

def n_params(m): return sum(p.numel() for p in m.parameters())

def bert():
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16, attn_implementation='eager')
    return transformers.BertForMaskedLM(cfg).eval()

def llama(kv=4):
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=kv, max_position_embeddings=16,
                                   attn_implementation='eager')
    return transformers.LlamaForCausalLM(cfg).eval()

def gpt2():
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16, attn_implementation='eager')
    return transformers.GPT2LMHeadModel(cfg).eval()

def vit():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                                                mlp_dim=128, num_classes=10).eval()

def out(model, x):
    with torch.no_grad():
        y = model(x) if torch.is_tensor(x) else model(**x)
    return y if torch.is_tensor(y) else y.logits

def prune_recording(model, x):
    "Prune half the heads and FFN neurons with `MetaPruner`, interactively: the removed rows/columns of each Linear, by name"
    heads = attention_heads(model)
    names = {m: n for n,m in model.named_modules()}
    with traceable(model):
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2), num_heads=heads,
                                      prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5, pruning_ratio=0.5,
                                      ignored_layers=ignored_layers(model, heads))
    removed = {}
    for group in pruner.step(interactive=True):
        for dep,idxs in group:
            if isinstance(dep.target.module, nn.Linear):
                side = 'out' if pruner.DG.is_out_channel_pruning_fn(dep.handler) else 'in'
                removed.setdefault(names[dep.target.module], {})[side] = list(idxs)
        group.prune()
    update_heads(model, pruner.num_heads)
    return removed

@torch.no_grad()
def masked(model, removed):
    "`model` with the removed rows (and bias entries) and columns zeroed"
    for name,sides in removed.items():
        lin = model.get_submodule(name)
        if 'out' in sides:
            lin.weight[sides['out']] = 0
            if lin.bias is not None: lin.bias[sides['out']] = 0
        if 'in' in sides: lin.weight[:, sides['in']] = 0
    return model

def check(model, x, attn, ffn, heads, width, masked_too=True):
    "Prune `model`; check heads of `attn(model)` and width of `ffn(model)`, the output shape, and masked == physical"
    dense = copy.deepcopy(model)
    before,y0 = n_params(model),out(model, x)
    removed = prune_recording(model, x)
    y = out(model, x)
    assert y.shape == y0.shape
    assert attn(model) == heads
    assert ffn(model) == width
    assert n_params(model) < before
    torch.testing.assert_close(y, out(masked(dense, removed), x), atol=1e-5, rtol=1e-5)
    return removed

def test_bert():
    check(bert(), IDS, lambda m: {l.attention.self.num_attention_heads for l in m.bert.encoder.layer},
          lambda m: {l.intermediate.dense.out_features for l in m.bert.encoder.layer}, {2}, {32})

def test_bert_ignored_keeps_outputs():
    m = bert()
    ign = ignored_layers(m)
    assert m.cls.predictions.transform.dense in ign and m.bert.embeddings.word_embeddings in ign
    assert m.bert.encoder.layer[0].attention.self.query not in ign

def test_llama_mha():
    m = llama()
    check(m, {'input_ids': IDS, 'use_cache': False},
          lambda m: {(l.self_attn.q_proj.out_features // l.self_attn.head_dim, l.self_attn.num_key_value_groups)
                     for l in m.model.layers},
          lambda m: {l.mlp.intermediate_size for l in m.model.layers}, {(2, 1)}, {32})
    assert (m.config.num_attention_heads, m.config.num_key_value_heads, m.config.intermediate_size) == (2, 2, 32)
    assert m.generate(IDS[:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)

def test_llama_gqa_keeps_heads():
    m = llama(kv=2)
    with pytest.warns(UserWarning, match='grouped-query attention'): assert attention_heads(m) == {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        check(m, {'input_ids': IDS, 'use_cache': False}, lambda m: {l.self_attn.q_proj.out_features for l in m.model.layers},
              lambda m: {l.mlp.up_proj.out_features for l in m.model.layers}, {32}, {32})

def test_gpt2():
    m = gpt2()
    ref = out(m, IDS)
    conv1d_to_linear(m)
    assert not any(type(l).__name__ == 'Conv1D' for l in m.modules())
    torch.testing.assert_close(out(m, IDS), ref)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        check(m, {'input_ids': IDS, 'use_cache': False}, lambda m: {l.attn.c_attn.out_features for l in m.transformer.h},
              lambda m: {l.mlp.c_fc.out_features for l in m.transformer.h}, {96}, {64})

def test_gpt2_errors():
    m = gpt2()
    with pytest.raises(ValueError, match=r'conv1d_to_linear\(model\)'): attention_heads(m)
    with pytest.warns(UserWarning, match='fused c_attn'): attention_heads(conv1d_to_linear(m))

def test_vit():
    m = vit()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match='split_mha'): attention_heads(m)
    ref = out(m, x)
    split_mha(m)
    torch.testing.assert_close(out(m, x), ref)
    check(m, x, lambda m: {l.self_attention.num_heads for l in m.encoder.layers},
          lambda m: {l.mlp[0].out_features for l in m.encoder.layers}, {2}, {64})
    assert m.heads.head.out_features == 10

def test_prune_heads_llama():
    m = llama()
    prune_heads(m, {'input_ids': IDS, 'use_cache': False}, head_ratio=0.5, ffn_ratio=0.25)
    a = m.model.layers[0].self_attn
    assert (a.q_proj.out_features, a.k_proj.out_features, a.o_proj.in_features) == (16, 16, 16)
    assert m.model.layers[0].mlp.down_proj.in_features == 48
    assert out(m, IDS).shape == (2, 8, 64)

def test_errors():
    with pytest.raises(ValueError, match='no attention module found in Sequential'): attention_heads(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match=r'ffn_ratio=-0.1'): prune_heads(bert(), IDS, ffn_ratio=-0.1)
    with pytest.raises(ValueError, match='add_bias_kv'): split_mha(nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True)))
