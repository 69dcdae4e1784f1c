"""fp.merge_attention_states against a float64 NumPy oracle and against attention over all keys at
once (split the keys in two, attend to each part, merge: the whole); on the CPU and the GPU."""

from __future__ import annotations

import numpy as np
import pytest

import flashparity as fp
from attention_ref import reference
from test_attention import DTYPES, err, make, rounding


def oracle(oa, la, ob, lb):
    """float64: lse = logaddexp (+inf read as -inf), o = weighted sum; parts at -inf weigh 0."""
    oa, ob = (np.asarray(x).astype(np.float64) for x in (oa, ob))
    la, lb = (np.where(np.isposinf(x), -np.inf, np.asarray(x, np.float64)) for x in (la, lb))
    lse = np.logaddexp(la, lb)  # -inf when both are
    with np.errstate(invalid="ignore", over="ignore"):
        wa = np.where(np.isneginf(la), 0.0, np.exp(la - lse))
        wb = np.where(np.isneginf(lb), 0.0, np.exp(lb - lse))
    to_o = lambda w: np.moveaxis(w, -2, -1)[..., None]  # [.., H, S] -> [.., S, H, 1]
    a = np.where(to_o(wa) == 0, 0.0, to_o(wa) * oa)
    b = np.where(to_o(wb) == 0, 0.0, to_o(wb) * ob)
    return a + b, lse


def states(rng, shape, dtype, lse_dtype=np.float32):
    o_shape = shape
    l_shape = (*shape[:-3], shape[-2], shape[-3])
    oa, ob = (rng.standard_normal(o_shape).astype(dtype) for _ in range(2))
    la, lb = ((3 * rng.standard_normal(l_shape)).astype(lse_dtype) for _ in range(2))
    return oa, la, ob, lb


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("lse_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 3, 40), (2, 5, 4, 17), (1, 1, 1), (3, 0, 2, 8), (2, 4, 3, 0)])
def test_matches_oracle(dtype, lse_dtype, shape):
    rng = np.random.default_rng(len(shape) * 100 + sum(shape))
    oa, la, ob, lb = states(rng, shape, DTYPES[dtype], lse_dtype)
    o, lse = fp.merge_attention_states(oa, la, ob, lb)
    ref_o, ref_lse = oracle(oa, la, ob, lb)
    assert o.shape == oa.shape and o.dtype == oa.dtype and lse.shape == la.shape and lse.dtype == la.dtype
    # one rounding of the float64 result to each dtype (float64: a few ulps of exp/log)
    rel = {"float64": 1e-14, "float32": 2.0**-23}.get(dtype, 0.0)
    tol = rounding(DTYPES[dtype], ref_o) + rel * (float(np.max(np.abs(ref_o))) if ref_o.size else 0.0)
    assert err(o, ref_o) <= tol
    assert np.allclose(lse.astype(np.float64), ref_lse, rtol=1e-6 if lse_dtype == np.float32 else 1e-14, atol=0)


def test_empty_parts_infinities_and_nan():
    rng = np.random.default_rng(3)
    oa, la, ob, lb = states(rng, (6, 2, 5), np.float32)
    la[0, 0] = lb[0, 0] = -np.inf           # no part saw a key: 0 and -inf
    la[0, 1] = -np.inf
    oa[1, 0] = np.nan                       # ... and its values, NaN here, are never read
    la[1, 2] = np.inf                       # FlashAttention-2's empty row: read as -inf
    oa[2, 1] = np.inf
    la[1, 3] = np.nan                       # NaN propagates to the row
    o, lse = fp.merge_attention_states(oa, la, ob, lb)
    assert (o[0, 0] == 0).all() and lse[0, 0] == -np.inf
    assert np.array_equal(o[1, 0], ob[1, 0]) and lse[0, 1] == lb[0, 1]
    assert np.array_equal(o[2, 1], ob[2, 1]) and lse[1, 2] == lb[1, 2]
    assert np.isnan(o[3, 1]).all() and np.isnan(lse[1, 3])
    assert not np.isnan(np.delete(o.reshape(-1, 5), [3 * 2 + 1], axis=0)).any()


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True])
def test_split_keys_merge_to_the_whole(dtype, causal):
    # attention over keys [0, cut) and [cut, sk) separately, merged, is attention over all keys
    rng = np.random.default_rng(5)
    b, sq, sk, hq, hk, d, cut = 2, 33, 70, 4, 2, 24, 29
    q, k, v = make(rng, b, sq, sk, hq, hk, d, DTYPES[dtype])
    ref_out, ref_lse = reference(q, k, v, causal=causal)
    parts = []
    for lo, hi in ((0, cut), (cut, sk)):
        # causal: query i sees key lo + j iff lo + j <= i + sk - sq, i.e. j <= i + (hi - lo) - sq + (sk - hi):
        # a right window of sk - hi around the part's own bottom-right diagonal
        window = (-1, sk - hi) if causal else (-1, -1)
        parts.append(fp.attention(q, k[:, lo:hi], v[:, lo:hi], window=window, return_lse=True))
    (oa, la), (ob, lb) = parts
    o, lse = fp.merge_attention_states(oa, la, ob, lb)
    naive = fp.attention(q, k, v, impl="naive", causal=causal)  # one attention in the same dtype
    # (+1e-6: the parts' lse are float32 by contract, so their weights carry float32's rounding)
    assert err(o, ref_out) <= 2 * err(naive, ref_out) + rounding(DTYPES[dtype], ref_out) + 1e-6
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    fin = np.isfinite(ref_lse)
    assert np.max(np.abs(lse[fin] - ref_lse[fin])) < (1e-2 if dtype in ("float16", "bfloat16") else 1e-5)


def test_views_and_batched_forms_agree():
    rng = np.random.default_rng(7)
    oa, la, ob, lb = states(rng, (2, 9, 3, 16), np.float32)
    o, lse = fp.merge_attention_states(oa, la, ob, lb)
    for bi in range(2):  # the 3-D form per batch
        o1, l1 = fp.merge_attention_states(oa[bi], la[bi], ob[bi], lb[bi])
        assert np.array_equal(o1, o[bi]) and np.array_equal(l1, lse[bi])
    big = rng.standard_normal((2, 9, 3, 32)).astype(np.float32)
    big[..., ::2] = oa  # strided head_dim
    lt = np.ascontiguousarray(np.swapaxes(la, 1, 2)).swapaxes(1, 2)  # lse transposed in memory
    o2, l2 = fp.merge_attention_states(big[..., ::2], lt, ob, lb)
    assert np.array_equal(o2, o) and np.array_equal(l2, lse)


def test_bad_input_names_the_value():
    rng = np.random.default_rng(9)
    oa, la, ob, lb = states(rng, (4, 2, 8), np.float32)
    with pytest.raises(ValueError, match=r"o_b must have o_a's shape \(4, 2, 8\), got \(4, 2, 7\)"):
        fp.merge_attention_states(oa, la, ob[..., :7], lb)
    with pytest.raises(ValueError, match=r"lse_b must have shape \(2, 4\).*got \(4, 2\)"):
        fp.merge_attention_states(oa, la, ob, lb.T)
    with pytest.raises(TypeError, match="o_a and o_b must have the same dtype, got float32 and float16"):
        fp.merge_attention_states(oa, la, ob.astype(np.float16), lb)
    with pytest.raises(TypeError, match="lse_a must be float32 or float64, got float16"):
        fp.merge_attention_states(oa, la.astype(np.float16), ob, lb)
    with pytest.raises(TypeError, match="lse_a and lse_b must have the same dtype, got float32 and float64"):
        fp.merge_attention_states(oa, la, ob, lb.astype(np.float64))
    with pytest.raises(ValueError, match=r"o_a must be \[seqlen, heads, head_dim\].*got \(4, 16\)"):
        fp.merge_attention_states(oa.reshape(4, 16), la, ob, lb)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gpu_matches_cpu(dtype):
    from flashparity.kernels.kernel_parity import to_host
    from test_attention_gpu import dev

    rng = np.random.default_rng(11)
    oa, la, ob, lb = states(rng, (2, 37, 4, 40), DTYPES[dtype])
    la[0, 0, :3] = -np.inf
    lb[0, 0, :2] = -np.inf
    la[1, 1, 5] = np.inf
    o, lse = fp.merge_attention_states(dev(oa), dev(la), dev(ob), dev(lb))
    assert o.shape == oa.shape and lse.shape == la.shape
    ref_o, ref_lse = fp.merge_attention_states(oa, la, ob, lb)
    # the same float64 math; exp/log may differ by an ulp between the host's libm and CUDA's
    assert err(to_host(o, oa.dtype), ref_o.astype(np.float64)) <= rounding(DTYPES[dtype], ref_o) + 1e-6
    got = to_host(lse, np.float32)
    assert np.array_equal(np.isneginf(got), np.isneginf(ref_lse))
    fin = np.isfinite(ref_lse)
    assert np.allclose(got[fin], ref_lse[fin], rtol=1e-6, atol=0)
