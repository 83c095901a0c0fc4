"Compact checkpoints round-trip any mask, bitmask or N:M, in every weight layout"
import torch
from hypothesis import given, settings, strategies as st
from fisherfast.sparse.export import decode_weight, encode_weight


@st.composite
def weights(draw):
    "A weight, its mask (random, or n of every m inputs) and whether it is stored (in, out)"
    n_m = draw(st.sampled_from([(2, 4), (1, 4), (4, 8), (3, 5)]))
    n,m = n_m
    out,groups,k = draw(st.integers(1, 5)),draw(st.integers(1, 4)),draw(st.sampled_from([(), (3,), (2, 2)]))
    transposed = draw(st.booleans()) and not k
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    shape = (out, groups * m, *k)
    w = torch.randn(shape, generator=g)
    if draw(st.booleans()):  # n:m along the inputs
        keep = torch.rand(out, *k, groups, m, generator=g).argsort(-1) < n
        mask = keep.reshape(out, *k, groups * m).movedim(-1, 1)
    else: mask = torch.rand(shape, generator=g) < draw(st.floats(0, 1))
    if transposed: w,mask = w.t(),mask.t()
    return (w * mask + 0.0).contiguous(),mask.contiguous(),n_m,transposed

@settings(max_examples=60, deadline=None)
@given(weights())
def test_roundtrip(case):
    w,mask,nm,transposed = case
    rec = encode_weight(w, mask, nm, transposed)
    w2,mask2 = decode_weight(rec)
    assert torch.equal(mask2, mask)
    assert torch.equal(w2.view(torch.int32), w.view(torch.int32))
    if 'nm' in rec: assert rec['codes'].numel() <= mask.numel() // 8 + 1
