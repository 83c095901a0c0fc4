"The code of docs/migrating.md runs, and does what the library it replaces does"
import copy, warnings
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fisherfast.all import *


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_torch_prune_global_l1_same_masks():
    import torch.nn.utils.prune as prune
    a,b = mlp(),mlp()
    prune.global_unstructured([(a[0], 'weight'), (a[2], 'weight')], pruning_method=prune.L1Unstructured, amount=0.7)
    Sparsifier(b, 'weight', 'global', magnitude).sparsify_model(0.7)
    for i in (0, 2): assert torch.equal(a[i].weight_mask.bool(), b[i].weight != 0)
    masks = from_torch_prune(a)  # and take the torch.nn.utils.prune masks over
    sp = Sparsifier(a).set_masks(masks)
    assert all(torch.equal(sp.masks[n], b.get_submodule(n).weight != 0) for n in sp.masks)


def test_fasterai_names_in_the_callback():
    from fastai.learner import Learner
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (patches Learner.fit_one_cycle)
    from fastai.data.core import DataLoaders
    from torch.utils.data import DataLoader, TensorDataset
    ds = TensorDataset(torch.randn(64, 8), torch.randint(0, 4, (64,)))
    dls = DataLoaders(DataLoader(ds, batch_size=16), DataLoader(ds, batch_size=16))
    for crit in ('large_final', 'movement', 'updating_magnitude_increase'):
        learn = Learner(dls, mlp(), F.cross_entropy)
        cb = SparsifyCallback(0.5, granularity='weight', context='global', criteria=crit,
                              schedule=Schedule(agp.f, start_pct=0.2, name='agp'))
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 1e-2, cbs=cb)
        assert abs(cb.current_sparsity() - 0.5) < 1e-6, crit
        assert cb.history[0]['pct'] >= 0.2


def test_torch_ao_flow():
    model,x,y = mlp(),torch.randn(32, 8),torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), 0.1)
    pruner = FisherPruner(sparsity_level=0.5, criteria='obd')
    pruner.prepare(model, config=[{'tensor_fqn': '0.weight'}])
    for i in range(0, 32, 8):
        F.cross_entropy(model(x[i:i + 8]), y[i:i + 8]).backward(); pruner.accumulate_fim(); opt.step(); opt.zero_grad()
    pruner.step(); pruner.squash_mask()
    assert int((model[0].weight == 0).sum()) == 64


def test_llmcompressor_style_dataloader_of_dicts():
    transformers = pytest.importorskip('transformers')
    from torch.utils.data import DataLoader
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=64))
    rows = [{'input_ids': torch.randint(0, 64, (int(n),))} for n in torch.randint(6, 13, (16,))]
    def collator(rs):
        T = max(len(r['input_ids']) for r in rs)
        ids = torch.stack([F.pad(r['input_ids'], (0, T - len(r['input_ids']))) for r in rs])
        am = torch.stack([(torch.arange(T) < len(r['input_ids'])).long() for r in rs])
        return dict(input_ids=ids, attention_mask=am)
    dl = DataLoader(rows, batch_size=8, collate_fn=collator)
    for prune,kw in ((sparsegpt_prune, {}), (wanda_prune, {}), (admm_prune, dict(kfac=True))):
        m = copy.deepcopy(model)
        sp = prune(m, dl, nm=True, n_samples=16, ignore='re:.*lm_head', progress=False, **kw)
        assert 'lm_head' not in sp.pruned and len(sp.pruned) == 2 * 7
        assert abs(float(sp.sparsity_report().sparsity.iloc[-1]) - 0.5) < 1e-9


def test_woodfisher_repository_options():
    model = mlp()
    x,y = torch.randn(80, 8),torch.randint(0, 4, (80,))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        stats = calibrate(model, [(x, y)], F.cross_entropy, n_samples=80, kinds=('grads',), progress=False)
    crit = woodfisher(n_grads=80, damp=1e-5, recompute=4, recompute_schedule='poly', recompute_degree=2, scale_prune_update=1.)
    sp = Sparsifier(model, 'weight', 'global', crit, stats=stats).sparsify_model(0.9)
    assert sum(int((~k).sum()) for k in sp.masks.values()) == round(0.9 * (128 + 64))


def test_round_up_as_fasterai():
    "20 filters at 50%: fasterai keeps 16 with round_to=8 (rounded up); RoundUp(8) does the same, a plain 8 keeps 8"
    kept = {}
    for r in (RoundUp(8), 8):
        sp = Sparsifier(nn.Sequential(nn.Conv2d(3, 20, 3)), 'filter', 'local')
        sp.sparsify_model(0.5, round_to=r)
        kept[repr(r)] = int(sp.pruned['0'].units.sum())
    assert kept == {'RoundUp(8)': 16, '8': 8}


def test_flop_aware_woodfisher_mode():
    "WoodFisher's FLOP-aware mode: a FLOP target for the model, saliency per FLOP"
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    x = torch.randn(2, 3, 8, 8)
    costs = flop_costs(net, x)
    assert costs == {'0': 64, '3': 1}
    sp = Sparsifier(net, 'weight', Flops(costs), magnitude).sparsify_model(0.5)
    flops = lambda: sum(int((sp.layers[n].weight != 0).sum()) * c for n,c in costs.items())
    total = sum(sp.layers[n].weight.numel() * c for n,c in costs.items())
    assert 0.5 * total - 64 < total - flops() and flops() <= 0.5 * total


def test_woodtaylor_and_naive_hess_as_documented():
    model = mlp()
    x,y = torch.randn(64, 8),torch.randint(0, 4, (64,))
    dl = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        stats = calibrate(model, dl, F.cross_entropy, n_samples=64, kinds=('grads', 'grad'), progress=False)
    m1 = copy.deepcopy(model)
    Sparsifier(m1, 'weight', 'global', woodfisher(n_grads=64, damp=1e-3, woodtaylor=True), stats=stats).sparsify_model(0.5)
    m2 = copy.deepcopy(model)
    Sparsifier(m2, 'weight', 'global', 'naive_hess', stats=hessian_diag(m2, dl, F.cross_entropy)).sparsify_model(0.5)
    for m in (m1, m2): assert sum(int((l.weight == 0).sum()) for l in (m[0], m[2])) == 96


def test_fasterai_dsd_schedule():
    from fastai.learner import Learner
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (patches Learner.fit_one_cycle)
    from fastai.data.core import DataLoaders
    from torch.utils.data import DataLoader, TensorDataset
    ds = TensorDataset(torch.randn(64, 8), torch.randint(0, 4, (64,)))
    dls = DataLoaders(DataLoader(ds, batch_size=16), DataLoader(ds, batch_size=16))
    learn = Learner(dls, mlp(), F.cross_entropy)
    cb = SparsifyCallback(0.5, schedule=dsd)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(4, 1e-2, cbs=cb)
    assert abs(max(h['sparsity'] for h in cb.history) - 0.5) < 0.02 and cb.current_sparsity() == 0.
