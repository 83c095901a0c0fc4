"""Deployment and per-step costs on the GPU, with the parts that can run on a CPU run there.

Each figure is printed with the device it was measured on.

- 2:4 semi-structured `nn.Linear` (`to_semi_structured`) against the dense one: forward latency for large
  weights (8192×8192, 8192×28672 and 28672×8192), fp16 and bf16, 64 and 4096 tokens, with cuSPARSELt and CUTLASS;
  median of `--reps` runs timed with CUDA events. GPU (compute capability >= 8.0) only.
- Mask re-application: `Sparsifier.apply_masks()` on torchvision `resnet50()` (random init, 25.5M prunable
  weights) pruned to 90% (weight/global), median of `--reps` calls (synchronized on CUDA).
- No host sync in `apply_masks`: it runs under `torch.cuda.set_sync_debug_mode('error')`. CUDA only.
- `SparsifyCallback` overhead per optimizer step: a fastai `fit` of resnet50 on random 64×64 images, with
  the callback's `before_step` and `after_step` timed inside the fit (synchronized on CUDA); median over the
  steps that do not prune (those that do are shown apart), for magnitude (no statistics) and OBD (eFIM
  diagonal accumulated from each step's gradients).
- Compact checkpoint of resnet50 at 90%: bytes against the dense `state_dict`.

Run: `.venv/bin/python bench/gpu.py [--device cuda|cpu] [--reps N] [--steps N]`
"""
import argparse, contextlib, copy, io, os, statistics, tempfile, time, warnings
from pathlib import Path
import torch
import torch.nn as nn
from torchvision.models import resnet50
from fisherfast.all import Sparsifier, magnitude, obd, one_shot
from fisherfast.sparse.export import save_compact, to_semi_structured


def device_name(device) -> str:
    d = torch.device(device)
    if d.type == 'cuda':
        cc = torch.cuda.get_device_capability(d)
        return f"{torch.cuda.get_device_name(d)} (sm {cc[0]}.{cc[1]})"
    return f"CPU, {torch.get_num_threads()} threads"

def sync(device):
    if torch.device(device).type == 'cuda': torch.cuda.synchronize()

def timed(f, device, reps) -> float:
    "Median seconds of `f()` over `reps` runs after 3 warm-up runs: CUDA events on a GPU, else the wall clock"
    for _ in range(3): f()
    ts = []
    for _ in range(reps):
        if torch.device(device).type == 'cuda':
            a,b = torch.cuda.Event(enable_timing=True),torch.cuda.Event(enable_timing=True)
            a.record(); f(); b.record(); b.synchronize()
            ts.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)

def row(what, value, device): print(f"{what:58} {value:>24}   [{device_name(device)}]")


def semi_structured(device, reps):
    "2:4 sparse vs dense Linear forward latency"
    from torch.sparse import SparseSemiStructuredTensor
    backends = ['cutlass'] + (['cusparselt'] if torch.backends.cusparselt.is_available() else [])
    for dtype in (torch.float16, torch.bfloat16):
        for out_f,in_f in [(8192, 8192), (28672, 8192), (8192, 28672)]:
            torch.manual_seed(0)
            dense = nn.Linear(in_f, out_f, bias=False, device=device, dtype=dtype).eval()
            Sparsifier(dense, nm=True).sparsify_model(0.5).squash()
            for tokens in (64, 4096):
                x = torch.randn(tokens, in_f, device=device, dtype=dtype)
                with torch.inference_mode():
                    t_dense = timed(lambda: dense(x), device, reps)
                    ref = dense(x)
                    for be in backends:
                        SparseSemiStructuredTensor._FORCE_CUTLASS = be == 'cutlass'
                        sparse = to_semi_structured(nn.Sequential(copy.deepcopy(dense)))
                        t_sparse = timed(lambda: sparse(x), device, reps)
                        err = (sparse(x) - ref).abs().max().item()
                        row(f"2:4 Linear {out_f}x{in_f} {str(dtype)[6:]} x{tokens} tok, {be}",
                            f"{t_dense * 1e6:.0f} → {t_sparse * 1e6:.0f} us ({t_dense / t_sparse:.2f}x)", device)
                        if err > 1e-2 * ref.abs().max().item(): print(f"    max |sparse - dense| = {err:g}: MISMATCH")
    SparseSemiStructuredTensor._FORCE_CUTLASS = False

def pruned_resnet50(device):
    torch.manual_seed(0)
    model = resnet50().to(device)
    sp = Sparsifier(model, 'weight', 'global', magnitude)
    sp.sparsify_model(0.9)
    return model,sp

def reapply(device, reps):
    "`apply_masks()` on resnet50 at 90%, and the host-sync check"
    _,sp = pruned_resnet50(device)
    n = sum(m.weight.numel() for m in sp.layers.values())
    t = timed(lambda: sp.apply_masks(), device, reps)
    row(f"apply_masks(), resnet50 ({n / 1e6:.1f}M prunable weights, 90%)", f"{t * 1e3:.2f} ms", device)
    if torch.device(device).type != 'cuda': return
    torch.cuda.set_sync_debug_mode('error')
    try: sp.apply_masks(); verdict = 'none'
    except RuntimeError as e: verdict = f"SYNC: {str(e).splitlines()[0]}"
    finally: torch.cuda.set_sync_debug_mode('default')
    row("host syncs in apply_masks() (set_sync_debug_mode('error'))", verdict, device)


def callback_overhead(device, steps):
    "Per-step time of the SparsifyCallback's before_step + after_step inside a fastai fit of resnet50"
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.losses import CrossEntropyLossFlat
    from fisherfast.sparse.callback import SparsifyCallback
    bs = 16 if torch.device(device).type == 'cuda' else 4
    g = torch.Generator().manual_seed(0)
    ds = [(torch.randn(3, 64, 64, generator=g), int(torch.randint(0, 10, (1,), generator=g))) for _ in range(bs * steps)]
    for crit in (magnitude, obd):
        torch.manual_seed(0)
        dls = DataLoaders.from_dsets(ds, ds[:bs], bs=bs, device=device, shuffle=False)
        learn = Learner(dls, resnet50(num_classes=10), loss_func=CrossEntropyLossFlat())
        cb = SparsifyCallback(0.9, 'weight', 'global', crit, schedule=one_shot)
        steady,prunes,state = [],[],{}
        def before(f=cb.before_step):
            sync(device); t0 = time.perf_counter(); f(); sync(device)
            state['before'] = time.perf_counter() - t0
        def after(f=cb.after_step):
            n = len(cb.history)
            sync(device); t0 = time.perf_counter(); f(); sync(device)
            t = state.pop('before', 0.) + time.perf_counter() - t0
            (prunes if len(cb.history) > n else steady).append(t)
        cb.before_step,cb.after_step = before,after
        with learn.no_bar(), learn.no_logging(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter('ignore')
            t0 = time.perf_counter(); learn.fit(1, 1e-3, cbs=cb); fit_s = time.perf_counter() - t0
        t = statistics.median(steady)
        row(f"SparsifyCallback per step, resnet50 bs={bs}, {crit.name}",
            f"{t * 1e3:.2f} ms of {fit_s / steps * 1e3:.0f} ms/step", device)
        if prunes: row(f"  the step that prunes ({len(prunes)})", f"{max(prunes) * 1e3:.0f} ms", device)


def checkpoint(device):
    model,sp = pruned_resnet50(device)
    tmp = Path(tempfile.mkdtemp())
    torch.save(model.state_dict(), tmp/'dense.pt'); save_compact(sp, tmp/'compact.pt')
    d,c = os.path.getsize(tmp/'dense.pt'),os.path.getsize(tmp/'compact.pt')
    row("compact checkpoint, resnet50 at 90%", f"{c:,} / {d:,} B = {c / d:.1%}", device)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--reps', type=int, default=50)
    p.add_argument('--steps', type=int, default=12)
    a = p.parse_args()
    cuda = torch.device(a.device).type == 'cuda'
    print(f"torch {torch.__version__}, device: {device_name(a.device)}")
    if cuda and torch.cuda.get_device_capability() >= (8, 0): semi_structured(a.device, a.reps)
    else: print("2:4 semi-structured vs dense latency: PENDING (needs a CUDA GPU of compute capability >= 8.0)")
    reapply(a.device, a.reps)
    if not cuda: print("host-sync check of apply_masks(): PENDING (needs CUDA)")
    callback_overhead(a.device, a.steps)
    checkpoint(a.device)
    if not cuda: print("GPU figures (2:4 latency, apply_masks and callback on CUDA, sync check): PENDING, no CUDA device here")

if __name__ == '__main__': main()
