"""Speed of building WoodFisher's inverse blocks: fisherfast's batched form against the sequential rank-1 loop.

For d weights (default 1M) and m per-sample gradients (default 256, random N(0, 1) with a fixed seed),
it builds the block-diagonal inverse damped empirical Fisher F̂_b⁻¹, F̂_b = λI + G_bᵀG_b/m, for block sizes
B = 128 and 1024, in two ways, on CPU, in float32:

- **ours**: `fisherfast.criteria.obs.block_inverse`, batched over blocks (in cache-sized chunks): a block
  Cholesky of the B×B blocks when B <= m, the Woodbury identity F̂_b⁻¹ = λ⁻¹[I − G_bᵀ(mλI + G_bG_bᵀ)⁻¹G_b]
  (an m×m Cholesky) when m < B (also forced for B <= m, as a second row); and for m < B the implicit (M-FAC) factor that
  `woodfisher(form='auto')` keeps instead of the explicit blocks;
- **rank-1 loop**: the reference implementation's recursion, written plainly (batched over blocks, as
  oBERT/SparseML do): start from λ⁻¹I and, for each of the m gradients g,
  F̂⁻¹ ← F̂⁻¹ − (F̂⁻¹g gᵀF̂⁻¹)/(m + gᵀF̂⁻¹g).

Each case runs in its own process, so that its peak resident memory (ru_maxrss, which includes the
Python/torch runtime and the m×d gradients) is its own. When the loop over all blocks would take longer
than `--loop-budget` seconds, it is timed on the first blocks only and extrapolated linearly in the
number of blocks (the work per block is the same); the output says so. The loop's process still
allocates the whole inverse, so its memory is that of the full run. The two results are compared on the
blocks the loop computed (max abs difference, and relative to the largest entry).

Run: `.venv/bin/python bench/woodfisher_speed.py [--d 1000000] [--m 256] [--threads 1]`
"""
import argparse, json, resource, subprocess, sys, time
import torch

GOAL_SPEEDUP = 20.0
DAMP = 1e-5


def gradients(m, d, seed=0): return torch.randn(m, d, generator=torch.Generator().manual_seed(seed))


def rank1_loop(G, B, damp, n_blocks=None):
    "The reference recursion: m sequential rank-1 updates of every block's inverse, from λ⁻¹I"
    from fisherfast.criteria.obs import to_blocks
    m = G.shape[0]
    gb = to_blocks(G, B)                                          # (m, n_blocks, B)
    f_inv = torch.eye(B).repeat(gb.shape[1], 1, 1).div_(damp)     # (n_blocks, B, B), all blocks allocated
    sub = f_inv if n_blocks is None else f_inv[:n_blocks]
    for g in gb[:, :len(sub)]:                                    # one gradient at a time
        hg = torch.bmm(sub, g.unsqueeze(-1))                      # F̂⁻¹g
        denom = (m + (g.unsqueeze(1) @ hg)).view(-1, 1, 1)        # m + gᵀF̂⁻¹g
        sub.baddbmm_(hg, hg.mT / denom, alpha=-1)                 # F̂⁻¹ −= F̂⁻¹g gᵀF̂⁻¹ / denom
    return sub


def ours(G, B, damp, how):
    "As `woodfisher` builds them: the explicit blocks straight from `G` `(m, d)`, the implicit factor from its blocked copy"
    from fisherfast.criteria.obs import grad_blocks, block_inverse, ImplicitInverse
    if how == 'implicit': return ImplicitInverse(grad_blocks(G, B), damp).A
    return block_inverse(G, damp, via=how, block_size=B)


def run_case(case):
    "In a child process: time one case, return its seconds, peak RSS and (for the loop) its blocks"
    torch.set_num_threads(case['threads'])
    G = gradients(case['m'], case['d'])
    ours(gradients(case['m'], 4 * case['B']), case['B'], DAMP, 'auto')       # warm-up: load the kernels
    res = {}
    if case['what'] == 'loop':
        nb = -(-case['d'] // case['B'])
        k = case['blocks'] or nb
        t = time.perf_counter(); inv = rank1_loop(G, case['B'], DAMP, k); res['s'] = time.perf_counter() - t
        res['s_full'] = res['s'] * nb / k
        kc = min(k, 64, case['d'] // case['B'])                               # full blocks to compare
        ref = ours(G[:, :kc * case['B']], case['B'], DAMP, 'auto')
        diff = (inv[:kc] - ref).abs().max().item()
        res.update(compared=kc, max_abs_diff=diff, rel_diff=diff / ref.abs().max().item())
    else:
        t = time.perf_counter(); ours(G, case['B'], DAMP, case['what']); res['s'] = time.perf_counter() - t
    res['peak_gib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return res


def child(case):
    p = subprocess.run([sys.executable, __file__, '--case', json.dumps(case)], capture_output=True, text=True)
    if p.returncode: raise RuntimeError(f"case {case} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def loop_blocks(args, B):
    "How many blocks the loop can do within the budget, from a short probe; None for all"
    nb = -(-args.d // B)
    probe = child(dict(what='loop', B=B, d=min(args.d, 64 * B), m=args.m, threads=args.threads, blocks=None))
    per_block = probe['s'] / min(nb, 64)
    return None if per_block * nb <= args.loop_budget else max(1, int(args.loop_budget / per_block))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--d', type=int, default=1_000_000, help='number of weights')
    p.add_argument('--m', type=int, default=256, help='number of per-sample gradients')
    p.add_argument('--blocks', type=int, nargs='+', default=[128, 1024], help='block sizes')
    p.add_argument('--threads', type=int, default=1, help='torch threads')
    p.add_argument('--loop-budget', type=float, default=60., help='seconds the rank-1 loop may take per block size')
    p.add_argument('--case', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case: return print(json.dumps(run_case(json.loads(args.case))))

    print(f"d={args.d:,} weights, m={args.m} gradients, λ={DAMP:g}, float32, CPU, torch {torch.__version__}, "
          f"{args.threads} thread(s); peak memory = peak RSS of the case's process (runtime + the "
          f"{args.m * args.d * 4 / 2**30:.2f} GiB of gradients included)\n")
    rows, notes = [], []
    for B in args.blocks:
        k = loop_blocks(args, B)
        loop = child(dict(what='loop', B=B, d=args.d, m=args.m, threads=args.threads, blocks=k))
        nb = -(-args.d // B)
        if k is not None: notes.append(f"B={B}: rank-1 loop timed on {k} of {nb} blocks ({loop['s']:.1f}s), "
                                       f"extrapolated ×{nb / k:.1f} to all blocks")
        hows = ['auto', 'woodbury'] if B <= args.m else ['auto', 'implicit']
        for how in hows:
            r = child(dict(what=how, B=B, d=args.d, m=args.m, threads=args.threads))
            name = {'auto': 'B×B Cholesky' if B <= args.m else 'Woodbury (m×m)', 'woodbury': 'Woodbury (m×m)',
                    'implicit': 'implicit M-FAC factor'}[how]
            rows.append((B, name + (' (auto)' if how == 'auto' else ''), r['s'], loop['s_full'], loop['s_full'] / r['s'],
                         r['peak_gib'], loop['peak_gib']))
        notes.append(f"B={B}: ours vs loop on {loop['compared']} blocks: max |diff| {loop['max_abs_diff']:.3g} "
                     f"({loop['rel_diff']:.2g} of the largest entry)")

    print(f"| block size | ours | ours (s) | rank-1 loop (s) | speed-up | peak GiB ours | peak GiB loop |")
    print(f"|---|---|---|---|---|---|---|")
    for B,name,s,sl,x,po,pl in rows:
        print(f"| {B} | {name} | {s:.2f} | {sl:.1f} | {x:.0f}× | {po:.2f} | {pl:.2f} |")
    print('\n' + '\n'.join(notes))
    best = min(r[4] for r in rows if r[1].endswith('(auto)'))
    print(f"\nslowest speed-up of the explicit blocks `block_inverse` builds by default: {best:.0f}×, "
          f"goal {GOAL_SPEEDUP:.0f}×: {'met' if best >= GOAL_SPEEDUP else 'NOT met'}")


if __name__ == '__main__': main()
