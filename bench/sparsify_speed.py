"""Speed of one-shot magnitude pruning: fisherfast's `Sparsifier` against fasterai 0.4.1's, side by side.

What it measures, on CPU with one thread, for torchvision `resnet18()` (random init) restricted to its
`nn.Conv2d` layers (11.2M weights) in both libraries:

- the `sparsify_model(0.5)` call alone (weight/global, weight/local, filter/local with round_to=8,
  and 2:4 N:M), each run on a fresh sparsifier over a fresh copy of the dense model, both built
  outside the timed region; the construction (which snapshots the initial weights) is timed apart;
- one re-application of every mask (`apply_masks()` / fasterai's `_apply_masks()`) after a sparsify,
  ours and theirs alternating (4× `--runs` each).

Each row is the median of `--runs` runs after one warm-up run. It also prints the fraction of conv
weights each library actually zeroed, as a sanity check, and whether the speed goal is met.

Run: `.venv/bin/python bench/sparsify_speed.py [--runs N]`
"""
import argparse, contextlib, copy, io, statistics, time, warnings
import torch
import torch.nn as nn
from torchvision.models import resnet18
from fasterai.core.criteria import large_final
from fasterai.sparse.sparsifier import Sparsifier as FaSparsifier
from fisherfast.all import Sparsifier, magnitude

GOAL_SPEEDUP = 5.0

# case -> (fisherfast constructor kwargs, fasterai constructor kwargs, sparsify_model kwargs)
CASES = {
    'weight / global':          (dict(granularity='weight', context='global'),
                                 dict(granularity='weight', context='global'), {}),
    'weight / local':           (dict(granularity='weight', context='local'),
                                 dict(granularity='weight', context='local'), {}),
    'filter / local, round_to=8': (dict(granularity='filter', context='local'),
                                 dict(granularity='filter', context='local'), dict(round_to=8)),
    # conv1 has 3 input channels: fasterai skips it with a message, fisherfast needs nm_skip=True
    'weight, 2:4 (N:M)':        (dict(granularity='weight', context='global', nm=True, nm_skip=True),
                                 dict(granularity='weight', context='global', nm=True), {}),
}
REAPPLY = 'weight / global'  # the sparsify before the mask re-application row


def ours(model, kw): return Sparsifier(model, criteria=magnitude, layer_type=nn.Conv2d, **kw)
def theirs(model, kw): return FaSparsifier(model, criteria=large_final, layer_type=nn.Conv2d, **kw)


@contextlib.contextmanager
def quiet():
    "Silence prints (fasterai's N:M messages) and warnings (fisherfast's nm_skip)"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        yield


def timed(f) -> tuple[float, object]:
    "Milliseconds taken by `f()`, and what it returned"
    t0 = time.perf_counter()
    res = f()
    return 1000 * (time.perf_counter() - t0), res


def conv_sparsity(model) -> float:
    "Fraction of zero weights over the model's conv layers"
    ws = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def bench_sparsify(dense, make, kw, sparsify_kw, runs) -> dict:
    "Median construction and `sparsify_model(0.5)` times over `runs` fresh runs (after a warm-up), and the sparsity reached"
    build, sparsify = [], []
    for _ in range(runs + 1):
        model = copy.deepcopy(dense)
        with quiet():
            t_build,sp = timed(lambda: make(model, kw))
            t_sparsify,_ = timed(lambda: sp.sparsify_model(0.5, **sparsify_kw))
        build.append(t_build)
        sparsify.append(t_sparsify)
    return dict(build=statistics.median(build[1:]), sparsify=statistics.median(sparsify[1:]),
                sparsity=conv_sparsity(model))


def bench_reapply(dense, runs) -> tuple[float, float]:
    "Median times of re-applying every mask once, ours and fasterai's, each on its own sparsified copy, alternating"
    with quiet():
        sps = [make(copy.deepcopy(dense), CASES[REAPPLY][i]) for i,make in enumerate((ours, theirs))]
        for sp in sps: sp.sparsify_model(0.5)
    apply = (lambda: sps[0].apply_masks()), (lambda: sps[1]._apply_masks())
    times = ([], [])
    for i in range(runs + 1):  # alternating, so that a slow spell of a shared machine hits both alike
        for j in ((0, 1) if i % 2 == 0 else (1, 0)): times[j].append(timed(apply[j])[0])
    return tuple(statistics.median(t[1:]) for t in times)


def guarded(f):
    "`f()`, or the name of the exception it raised"
    try: return f()
    except Exception as e: return f"crash: {type(e).__name__}"


def fmt(v, spec): return v if isinstance(v, str) else format(v, spec)


def main(runs:int):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dense = resnet18(weights=None).eval()
    n_conv = sum(m.weight.numel() for m in dense.modules() if isinstance(m, nn.Conv2d))
    print(f"resnet18 (random init), {n_conv:,} Conv2d weights; CPU, 1 thread; torch {torch.__version__}; "
          f"median of {runs} runs after 1 warm-up\n")

    rows, sanity, ok = [], [], []
    for case,(our_kw,their_kw,sp_kw) in CASES.items():
        a = bench_sparsify(dense, ours, our_kw, sp_kw, runs)
        b = guarded(lambda: bench_sparsify(dense, theirs, their_kw, sp_kw, runs))
        crashed = isinstance(b, str)
        speedup = b if crashed else b['sparsify'] / a['sparsify']
        rows.append((case, a['sparsify'], b if crashed else b['sparsify'], speedup))
        sanity.append((case, a['sparsity'], b if crashed else b['sparsity'], a['build'], b if crashed else b['build']))
        ok.append(crashed or speedup >= GOAL_SPEEDUP)

    a,b = bench_reapply(dense, 4 * runs)
    rows.append((f're-apply all masks (after {REAPPLY})', a, b, b / a))
    ok.append(b / a >= 1)

    print("| case | fisherfast (ms) | fasterai (ms) | speed-up (fasterai/ours) |\n|---|---:|---:|---:|")
    for case,t_ours,t_theirs,s in rows:
        print(f"| {case} | {t_ours:.1f} | {fmt(t_theirs, '.1f')} | {fmt(s, '.2f')}{'' if isinstance(s, str) else 'x'} |")

    print("\nSanity (fraction of conv weights zeroed) and construction time, not included above:\n")
    print("| case | fisherfast sparsity | fasterai sparsity | fisherfast init (ms) | fasterai init (ms) |\n"
          "|---|---:|---:|---:|---:|")
    for case,s_ours,s_theirs,i_ours,i_theirs in sanity:
        print(f"| {case} | {s_ours:.4f} | {fmt(s_theirs, '.4f')} | {i_ours:.1f} | {fmt(i_theirs, '.1f')} |")

    print(f"\nGoal: at least {GOAL_SPEEDUP:g}x faster than fasterai on every sparsify row, "
          f"and mask re-application no slower than fasterai's.")
    for (case,*_),met in zip(rows, ok): print(f"- {case}: {'met' if met else 'MISSED'}")


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=5, help="timed runs per row, after one warm-up (default 5)")
    main(p.parse_args().runs)
