"""fp.attention (naive and flash2 on the CPU) against the NumPy float64 reference."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import flashparity as fp
from attention_ref import reference
from simd import LEVELS, use_level

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": BF16, "float64": np.float64}
IMPLS = ["naive", "flash2"]


def make(rng, b, sq, sk, hq, hk, d, dtype):
    q = rng.standard_normal((b, sq, hq, d)).astype(dtype)
    k = rng.standard_normal((b, sk, hk, d)).astype(dtype)
    v = rng.standard_normal((b, sk, hk, d)).astype(dtype)
    return q, k, v


def err(x, ref):
    x = np.asarray(x).astype(np.float64)
    return float(np.max(np.abs(x - ref))) if x.size else 0.0


def rounding(dtype, ref_out):
    """One rounding of the largest output in a low-precision dtype (0 for float32/float64)."""
    eps = {np.dtype(np.float16): float(np.finfo(np.float16).eps), BF16: 2.0**-7}.get(np.dtype(dtype), 0.0)
    return eps * float(np.max(np.abs(ref_out))) if ref_out.size else 0.0


def lse_err(lse, ref):
    fin = np.isfinite(ref)
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref))  # rows that see nothing: -inf, never NaN
    return float(np.max(np.abs(lse[fin] - ref[fin]))) if fin.any() else 0.0


CASES = [  # (b, sq, sk, hq, hk, d, causal, window, softcap)
    (2, 37, 53, 4, 2, 40, False, (-1, -1), 0.0),       # GQA, sq < sk, odd tails
    (1, 70, 50, 2, 1, 64, True, (-1, -1), 0.0),        # MQA, causal with sq > sk: first rows see nothing
    (1, 65, 130, 3, 3, 17, False, (5, 3), 10.0),       # window + softcap, odd head_dim
    (1, 1, 200, 8, 1, 128, True, (-1, -1), 0.0),       # decode: one query
    (1, 129, 129, 2, 2, 1, True, (16, -1), 0.0),       # head_dim 1, causal + left window
    (1, 3, 1, 1, 1, 96, False, (-1, -1), 0.0),         # seqlen_k 1
    (1, 40, 80, 2, 2, 33, False, (0, 0), 0.0),         # a one-key diagonal
    (1, 20, 10, 1, 1, 8, False, (-1, 2), 0.0),         # right window, rows before the first key
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=[str(c[:6]) + ("-causal" if c[6] else "") for c in CASES])
def test_float32_matches_reference(impl, case):
    b, sq, sk, hq, hk, d, causal, window, softcap = case
    rng = np.random.default_rng(sum(case[:6]))
    q, k, v = make(rng, b, sq, sk, hq, hk, d, np.float32)
    out, lse = fp.attention(q, k, v, impl=impl, causal=causal, window=window, softcap=softcap, return_lse=True)
    ref_out, ref_lse = reference(q, k, v, causal=causal, window=window, softcap=softcap)
    assert out.dtype == np.float32 and out.shape == q.shape
    assert lse.dtype == np.float32 and lse.shape == (b, hq, sq)
    assert err(out, ref_out) < 2e-5
    assert lse_err(lse, ref_lse) < 2e-5
    assert not np.isnan(out).any()


@pytest.mark.parametrize("impl", IMPLS)
def test_float64_is_float64_accurate(impl):
    rng = np.random.default_rng(1)
    q, k, v = make(rng, 1, 45, 77, 2, 1, 24, np.float64)
    out, lse = fp.attention(q, k, v, impl=impl, causal=True, return_lse=True)
    ref_out, ref_lse = reference(q, k, v, causal=True)
    assert out.dtype == np.float64
    assert err(out, ref_out) < 1e-12 and lse_err(lse, ref_lse) < 1e-6  # lse is float32 by contract


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES[:4], ids=[str(c[:6]) for c in CASES[:4]])
def test_low_precision_fa2_rule(dtype, case):
    # FlashAttention-2's rule: flash2's error vs float64 <= 2 x naive's error in the same dtype,
    # plus one rounding of the output.
    b, sq, sk, hq, hk, d, causal, window, softcap = case
    rng = np.random.default_rng(sum(case[:6]) + 7)
    q, k, v = make(rng, b, sq, sk, hq, hk, d, DTYPES[dtype])
    ref_out, _ = reference(q, k, v, causal=causal, window=window, softcap=softcap)
    naive = fp.attention(q, k, v, impl="naive", causal=causal, window=window, softcap=softcap)
    flash = fp.attention(q, k, v, impl="flash2", causal=causal, window=window, softcap=softcap)
    assert flash.dtype == DTYPES[dtype] and naive.dtype == DTYPES[dtype]
    one = rounding(DTYPES[dtype], ref_out)
    assert err(flash, ref_out) <= 2 * err(naive, ref_out) + one
    assert err(naive, ref_out) <= 2 * one  # the reference itself is right to a rounding or two


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_inputs(impl):
    rng = np.random.default_rng(3)
    base_q = rng.standard_normal((2, 4, 30, 24)).astype(np.float32)   # BHSD storage
    base_k = rng.standard_normal((2, 2, 50, 24)).astype(np.float32)
    base_v = rng.standard_normal((2, 50, 2, 48)).astype(np.float32)[..., ::2]  # strided head_dim
    q, k, v = base_q.transpose(0, 2, 1, 3), base_k.transpose(0, 2, 1, 3), base_v
    assert not q.flags.c_contiguous and not v.flags.c_contiguous
    out = fp.attention(q, k, v, impl=impl, causal=True)
    ref_out, _ = reference(q, k, v, causal=True)
    assert err(out, ref_out) < 2e-5
    reversed_k = np.ascontiguousarray(k[:, ::-1])[:, ::-1]  # negative sequence stride, same values
    assert np.array_equal(fp.attention(q, reversed_k, v, impl=impl, causal=True), out)


@pytest.mark.parametrize("level", LEVELS)
def test_every_simd_level(level, monkeypatch):
    use_level(level, monkeypatch)
    rng = np.random.default_rng(4)
    q, k, v = make(rng, 1, 70, 90, 4, 2, 48, np.float32)
    for impl in IMPLS:
        out = fp.attention(q, k, v, impl=impl, causal=True, softcap=5.0)
        ref_out, _ = reference(q, k, v, causal=True, softcap=5.0)
        assert err(out, ref_out) < 2e-5
    # bfloat16: the float32 path below AVX-512 and at neon, the BF16 dot products at AVX-512 where the
    # CPU has them and at neonbf16 (BFDOT)
    q, k, v = make(rng, 1, 130, 200, 4, 2, 64, BF16)
    ref_out, _ = reference(q, k, v)
    naive = fp.attention(q, k, v, impl="naive")
    flash = fp.attention(q, k, v, impl="flash2")
    assert err(flash, ref_out) <= 2 * err(naive, ref_out) + rounding(BF16, ref_out)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_every_head_dim_tail_and_query_tile(impl, dtype):
    # head_dim 1..9 covers every remainder of the micro-kernels' head_dim blocks; 101 query rows
    # span several query tiles of one head, each with a partial last vector of queries
    rng = np.random.default_rng(9)
    for d in range(1, 10):
        q, k, v = make(rng, 1, 101, 77, 2, 1, d, DTYPES[dtype])
        ref_out, ref_lse = reference(q, k, v, causal=True)
        out, lse = fp.attention(q, k, v, impl=impl, causal=True, return_lse=True)
        if dtype == "float32":
            assert err(out, ref_out) < 2e-5, d
        else:
            naive = fp.attention(q, k, v, impl="naive", causal=True)
            assert err(out, ref_out) <= 2 * err(naive, ref_out) + rounding(DTYPES[dtype], ref_out), d
        # (the bfloat16 dot-product kernel sums the probabilities it rounded to bfloat16 for P.V)
        assert lse_err(lse, ref_lse) < (2e-5 if dtype == "float32" else 2.0**-8), d


@pytest.mark.parametrize("impl", IMPLS)
def test_long_heads_past_the_kv_cache(impl):
    # K and V of a head with seqlen_k * head_dim past 2^20 are converted per tile, not kept per worker
    rng = np.random.default_rng(10)
    q, k, v = make(rng, 1, 3, 33000, 1, 1, 128, BF16)
    ref_out, ref_lse = reference(q, k, v, causal=True, window=(20000, -1))
    out, lse = fp.attention(q, k, v, impl=impl, causal=True, window=(20000, -1), return_lse=True)
    naive_err = err(fp.attention(q, k, v, impl="naive", causal=True, window=(20000, -1)), ref_out)
    assert err(out, ref_out) <= 2 * naive_err + rounding(BF16, ref_out)
    assert lse_err(lse, ref_lse) < 1e-4


@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite_inputs_propagate_as_in_the_reference(impl):
    # a NaN or infinity in a query or a key reaches exactly the rows whose scores it enters, as in
    # the float64 reference (never a silent finite answer); a masked key's stays out
    rng = np.random.default_rng(11)
    q, k, v = make(rng, 1, 40, 70, 2, 1, 16, np.float32)
    k[0, 60, 0, 3] = np.nan   # seen by rows 30.. (causal, bottom-right)
    k[0, 45, 0, 9] = np.inf   # +inf or -inf scores in rows 15..
    q[0, 5, 1, 2] = np.nan
    out = fp.attention(q, k, v, impl=impl, causal=True)
    with np.errstate(invalid="ignore"):
        ref_out, _ = reference(q, k, v, causal=True)
    assert np.array_equal(np.isnan(out), np.isnan(ref_out))
    assert np.isnan(out).any() and np.isnan(out[0, 5, 1]).all()
    fin = np.isfinite(ref_out)
    assert np.array_equal(np.isfinite(out), fin)
    assert err(np.where(fin, out, 0), np.where(fin, ref_out, 0)) < 2e-5


def test_thread_count_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(5)
    q, k, v = make(rng, 2, 130, 130, 3, 3, 32, np.float32)
    results = []
    for threads in ("1", "3"):
        monkeypatch.setenv("FLASHPARITY_NUM_THREADS", threads)
        results.append(fp.attention(q, k, v, causal=True))
    assert np.array_equal(results[0], results[1])


def test_scale_and_defaults():
    rng = np.random.default_rng(6)
    q, k, v = make(rng, 1, 9, 11, 1, 1, 16, np.float32)
    ref_out, _ = reference(q, k, v, softmax_scale=0.3)
    assert err(fp.attention(q, k, v, softmax_scale=0.3), ref_out) < 2e-5
    assert np.array_equal(fp.attention(q, k, v), fp.attention(q, k, v, softmax_scale=1 / np.sqrt(16)))
    assert np.array_equal(fp.attention(q, k, v, causal=True), fp.attention(q, k, v, window=(-1, 0)))


def test_naive_any_head_dim_flash2_up_to_256():
    rng = np.random.default_rng(7)
    q, k, v = make(rng, 1, 5, 6, 1, 1, 300, np.float32)
    ref_out, _ = reference(q, k, v)
    assert err(fp.attention(q, k, v, impl="naive"), ref_out) < 2e-5
    with pytest.raises(fp.UnsupportedHeadDimError, match=r"^unsupported-head-dim: got 300, flash2 supports head_dim 1\.\.256"):
        fp.attention(q, k, v)
    assert issubclass(fp.UnsupportedHeadDimError, ValueError)
    q, k, v = make(rng, 1, 5, 6, 1, 1, 256, np.float32)
    assert err(fp.attention(q, k, v), reference(q, k, v)[0]) < 2e-5


def test_empty_sequences():
    q = np.ones((1, 0, 2, 8), np.float32)
    k = np.ones((1, 5, 2, 8), np.float32)
    out, lse = fp.attention(q, k, k, return_lse=True)
    assert out.shape == (1, 0, 2, 8) and lse.shape == (1, 2, 0)
    q = np.ones((1, 3, 2, 8), np.float32)
    k = np.ones((1, 0, 2, 8), np.float32)
    out, lse = fp.attention(q, k, k, return_lse=True)
    assert np.all(out == 0) and np.all(np.isneginf(lse))


ERRORS = [
    (dict(q=(4, 16)), ValueError, r"q must be \(batch, seqlen_q, heads_q, head_dim\), got \(4, 16\)"),
    (dict(k=(1, 5, 2, 8), v=(1, 6, 2, 8)), ValueError, r"k and v must have the same shape, got \(1, 5, 2, 8\) and \(1, 6, 2, 8\)"),
    (dict(k=(2, 5, 2, 8), v=(2, 5, 2, 8)), ValueError, "same batch size, got 1 and 2"),
    (dict(k=(1, 5, 2, 4), v=(1, 5, 2, 4)), ValueError, "same head_dim, got 8 and 4"),
    (dict(q=(1, 3, 3, 8)), ValueError, r"heads_q \(3\) must be a multiple of heads_kv \(2\)"),
    (dict(impl="tiled"), ValueError, "impl must be one of flash2, naive, got 'tiled'"),
    (dict(window=(-2, 0)), ValueError, "window bounds must be >= -1"),
    (dict(window=(1,)), ValueError, "window must be a"),
    (dict(softcap=-1.0), ValueError, "softcap must be a finite number >= 0"),
    (dict(softmax_scale=float("nan")), ValueError, "softmax_scale must be a finite number"),
    (dict(vdtype=np.float16), TypeError, "same dtype, got float32, float32, float16"),
    (dict(qdtype=np.int32, kdtype=np.int32, vdtype=np.int32), TypeError, "q has dtype int32"),
]


@pytest.mark.parametrize("kw,exc,msg", ERRORS, ids=[m[:30] for _, _, m in ERRORS])
def test_validation(kw, exc, msg):
    kw = dict(kw)
    shapes = {"q": kw.pop("q", (1, 3, 4, 8)), "k": kw.pop("k", (1, 5, 2, 8)), "v": kw.pop("v", (1, 5, 2, 8))}
    dtypes = {n: kw.pop(f"{n}dtype", np.float32) for n in "qkv"}
    arrays = {n: np.ones(shapes[n], dtypes[n]) for n in "qkv"}
    with pytest.raises(exc, match=msg):
        fp.attention(arrays["q"], arrays["k"], arrays["v"], **kw)


def test_repeated_calls_on_changed_buffers():
    # The bfloat16 kernel keeps repacked K/V per thread within a call: a second call on the same
    # (modified) buffers must see the new values.
    rng = np.random.default_rng(8)
    q, k, v = make(rng, 1, 130, 150, 2, 1, 64, BF16)
    first = fp.attention(q, k, v)
    k[0, 70:90] = (k[0, 70:90].astype(np.float32) * -2).astype(BF16)
    v[0, :10] = (v[0, :10].astype(np.float32) + 1).astype(BF16)
    second = fp.attention(q, k, v)
    ref_out, _ = reference(q, k, v)
    naive = fp.attention(q, k, v, impl="naive")
    assert not np.array_equal(first, second)
    assert err(second, ref_out) <= 2 * err(naive, ref_out) + 2.0**-7 * float(np.max(np.abs(ref_out)))


def key_range(i, sq, sk, left, right):
    diag = i + sk - sq
    lo = 0 if left < 0 else max(0, diag - left)
    hi = sk if right < 0 else min(sk, diag + right + 1)
    return (lo, hi) if hi > lo else None


@pytest.mark.parametrize("sq,sk,left,right", [(70, 50, -1, 0), (1, 4096, -1, 0), (300, 300, 16, -1),
                                             (40, 80, 0, 0), (20, 10, -1, 2), (65, 130, 5, 3), (5, 7, -1, -1)])
def test_block_key_tiles_cover_every_visible_key(sq, sk, left, right):
    # The tile span a block of rows visits (shared by the CPU and CUDA flash2 kernels) holds every
    # key any of its rows sees, and starts/ends on tiles some row needs.
    from flashparity import _core

    for bc in (32, 64):
        for r0 in range(0, sq, 16):
            rows = min(16, sq - r0)
            begin, end = _core._row_block_key_tiles(r0, rows, sq, sk, left, right, bc)
            seen = [key_range(i, sq, sk, left, right) for i in range(r0, r0 + rows)]
            seen = [s for s in seen if s]
            if not seen:
                assert begin == end
                continue
            lo, hi = min(s[0] for s in seen), max(s[1] for s in seen)
            assert begin * bc <= lo and end * bc >= hi and begin == lo // bc and end == -(-hi // bc)


def test_split_kv_math():
    # Split spans partition the tiles in order; the lse merge equals log-sum-exp; idle GPUs split.
    from flashparity import _core

    for begin, end, n in [(0, 10, 3), (3, 4, 5), (0, 0, 2), (7, 71, 9), (0, 64, 1)]:
        spans = _core._split_spans(begin, end, n)
        assert len(spans) == n and spans[0][0] == begin and spans[-1][1] == end
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and all(s[0] <= s[1] for s in spans)
    rng = np.random.default_rng(0)
    parts = list(rng.standard_normal(7) * 20) + [float("-inf")]
    lse, w = _core._merge_split_lse(parts)
    fin = np.array(parts[:-1])
    exact = fin.max() + np.log(np.sum(np.exp(fin - fin.max())))
    assert abs(lse - exact) < 1e-12 and w[-1] == 0.0 and abs(sum(w) - 1.0) < 1e-12
    assert np.allclose(w[:-1], np.exp(fin - exact), rtol=1e-12)
    lse, w = _core._merge_split_lse([float("-inf")] * 3)  # a row no split saw
    assert lse == float("-inf") and w == [0.0, 0.0, 0.0]
    assert _core._flash2_split_count(264, 132, 64) == 1      # the grid fills the GPU
    assert _core._flash2_split_count(16, 132, 64) == 17      # decode: ~2 blocks per SM
    assert _core._flash2_split_count(16, 132, 10) == 5       # at least 2 key tiles per split
    assert _core._flash2_split_count(1, 132, 4096) == 128    # capped
    assert _core._flash2_split_count(8, 132, 3) == 1         # too few keys to split


@pytest.mark.parametrize("impl", IMPLS)
def test_out_argument(impl):
    rng = np.random.default_rng(13)
    q, k, v = make(rng, 1, 33, 40, 2, 1, 24, np.float32)
    target = np.full(q.shape, np.nan, np.float32)
    res, lse = fp.attention(q, k, v, impl=impl, causal=True, out=target, return_lse=True)
    assert res is target and np.array_equal(target, fp.attention(q, k, v, impl=impl, causal=True))
    assert lse.shape == (1, 2, 33)
    with pytest.raises(ValueError, match=r"out must have q's shape \(1, 33, 2, 24\) and dtype float32"):
        fp.attention(q, k, v, out=np.empty(q.shape, np.float64))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        fp.attention(q, k, v, out=np.empty((1, 33, 24, 2), np.float32).transpose(0, 1, 3, 2))
    ro = np.empty(q.shape, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        fp.attention(q, k, v, out=ro)
    with pytest.raises(ValueError, match="out overlaps q"):
        fp.attention(q, k, v, out=q)
    buf = rng.standard_normal(4000).astype(np.float32)
    k_in_buf = buf[:960].reshape(k.shape)
    with pytest.raises(ValueError, match="out overlaps k"):
        fp.attention(q, k_in_buf, v, out=buf[500:500 + q.size].reshape(q.shape))


@pytest.mark.parametrize("d,bc", [(32, 64), (64, 64), (128, 64), (96, 16), (256, 32)])
def test_tensor_core_tile_layouts(d, bc):
    # The CUDA flash2 kernel's ldmatrix addresses, fragment layouts and P-from-S reuse
    # (flashparity/mma_layout.h), run on a CPU emulation of a warp: S = Q K^T and O = P V exactly.
    from flashparity import _core

    for warp in range(4):
        assert _core._mma_layout_check(d, bc, warp) == ""
    with pytest.raises(ValueError, match="multiples of 16"):
        _core._mma_layout_check(40, 64, 0)


MASK_CASES = [  # (sq, sk, causal, window): every one has keys that some rows see and others do not
    (64, 64, True, (-1, -1)),       # the case: v[:, 63] is seen by row 63 only
    (37, 150, True, (-1, -1)),      # bottom-right causal over several key tiles
    (90, 90, False, (7, 5)),        # a sliding window: edge keys on both sides of each row
    (20, 10, False, (-1, 2)),       # rows before the first key see nothing
]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", MASK_CASES, ids=[f"{c[0]}x{c[1]}{'-causal' if c[2] else ''}{c[3]}" for c in MASK_CASES])
def test_masked_keys_contribute_nothing_whatever_their_values(case, impl, dtype, level, monkeypatch):
    # A key outside a row's visible range contributes nothing to it, whatever its value: garbage in
    # slots a row cannot see (paged caches, padding) never reaches it. Rows that do see a non-finite
    # key are non-finite; every other row is bit for bit the row computed with finite values there.
    use_level(level, monkeypatch)
    sq, sk, causal, window = case
    rng = np.random.default_rng(sq * 1000 + sk)
    q, k, v = make(rng, 2, sq, sk, 4, 2, 24, DTYPES[dtype])
    ok = __import__("attention_ref").visible(sq, sk, causal, window)
    # garbage keys: each one seen by some rows but not all of them
    partial = [j for j in range(sk) if ok[:, j].any() and not ok[:, j].all()]
    garbage = sorted(set(partial[:: max(1, len(partial) // 4)][:4] + [sk - 1]))
    k_bad, v_bad = k.copy(), v.copy()
    for n, j in enumerate(garbage):
        val = (np.inf, -np.inf, np.nan)[n % 3]
        v_bad[0, j, 1, n % 24] = val           # batch 0, kv head 1 (query heads 2 and 3)
        k_bad[1, j, 0, (5 * n) % 24] = val     # batch 1, kv head 0 (query heads 0 and 1)
    with np.errstate(invalid="ignore", over="ignore"):
        ref_out, _ = reference(q, k_bad, v_bad, causal=causal, window=window)
    out = fp.attention(q, k_bad, v_bad, impl=impl, causal=causal, window=window).astype(np.float64)
    clean = fp.attention(q, k, v, impl=impl, causal=causal, window=window).astype(np.float64)
    sees = ok[:, garbage].any(axis=1)  # rows that see a garbage key
    for b, heads in ((0, [2, 3]), (1, [0, 1])):
        for h in heads:
            if b == 0:  # a non-finite value in a visible V row always reaches the row
                assert not np.isfinite(out[b, sees, h]).all(axis=-1).any()
            # (a visible -inf score only takes that key's weight to 0: the reference says which rows)
            np.testing.assert_array_equal(out[b, ~sees, h], clean[b, ~sees, h])
    # the heads without garbage are untouched, and the finite rows agree with the reference
    np.testing.assert_array_equal(out[0, :, :2], clean[0, :, :2])
    np.testing.assert_array_equal(out[1, :, 2:], clean[1, :, 2:])
    # NaN, +inf and -inf exactly where the reference has them (a wrong p in a fix-up would turn an
    # inf into NaN), finite elsewhere
    for kind in (np.isnan, np.isposinf, np.isneginf):
        assert np.array_equal(kind(out), kind(ref_out)), kind.__name__
    fin = np.isfinite(ref_out)
    tol = {"float64": 1e-12, "float32": 1e-5}.get(dtype, 0.1)
    assert err(np.where(fin, out, 0), np.where(fin, ref_out, 0)) < tol


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_inputs_at_odd_byte_offsets(impl, dtype):
    # views whose elements are not aligned to their size (NumPy allows them): read element by
    # element, the same answer as aligned copies, bit for bit
    rng = np.random.default_rng(12)
    q, k, v = make(rng, 1, 21, 37, 2, 1, 24, DTYPES[dtype])
    views = []
    for x in (q, k, v):
        raw = np.zeros(x.nbytes + 1, np.uint8)
        raw[1:] = np.frombuffer(x.tobytes(), np.uint8)
        views.append(raw[1:].view(x.dtype).reshape(x.shape))
    assert not views[0].flags.aligned
    got = fp.attention(*views, impl=impl, causal=True)
    want = fp.attention(q, k, v, impl=impl, causal=True)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


ALIBI_CASES = [  # (b, sq, sk, hq, hk, d, causal, window, softcap, slopes per batch)
    (2, 37, 53, 4, 2, 40, False, (-1, -1), 0.0, False),
    (2, 70, 50, 2, 1, 64, True, (-1, -1), 0.0, True),    # causal with sq > sk, [batch, heads_q] slopes
    (1, 65, 130, 3, 3, 17, False, (5, 3), 10.0, False),  # window + softcap
    (1, 1, 200, 8, 1, 128, True, (-1, -1), 0.0, True),   # decode
    (1, 130, 1, 2, 2, 8, False, (-1, -1), 0.0, False),   # seqlen_k 1
]


def alibi_slopes(rng, b, hq, per_batch):
    # the usual geometric slopes, jittered so each (batch, head) differs, and one negative
    base = 2.0 ** (-8.0 * np.arange(1, hq + 1) / hq)
    s = base * rng.uniform(0.5, 1.5, (b, hq) if per_batch else hq)
    s.reshape(-1)[-1] *= -1
    return s.astype(np.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("case", ALIBI_CASES, ids=[str(c[:6]) + ("-causal" if c[6] else "") for c in ALIBI_CASES])
def test_alibi_matches_reference(impl, dtype, case):
    b, sq, sk, hq, hk, d, causal, window, softcap, per_batch = case
    rng = np.random.default_rng(sum(case[:6]) + 11)
    q, k, v = make(rng, b, sq, sk, hq, hk, d, DTYPES[dtype])
    slopes = alibi_slopes(rng, b, hq, per_batch)
    kw = dict(causal=causal, window=window, softcap=softcap)
    out, lse = fp.attention(q, k, v, impl=impl, return_lse=True, alibi_slopes=slopes, **kw)
    ref_out, ref_lse = reference(q, k, v, alibi_slopes=slopes, **kw)
    plain, plain_lse = reference(q, k, v, **kw)
    # the bias changes the answer (one key: only the lse), so the test can fail
    assert err(plain, ref_out) > 1e-3 if sk > 1 else lse_err(plain_lse, ref_lse) > 1e-3
    if dtype in ("float32", "float64"):
        tol = 1e-12 if dtype == "float64" else 2e-5
        assert err(out, ref_out) < tol
        assert lse_err(lse, ref_lse) < 2e-5
    else:  # FlashAttention-2's rule against the naive kernel in the same dtype
        naive = fp.attention(q, k, v, impl="naive", alibi_slopes=slopes, **kw)
        assert err(out, ref_out) <= 2 * err(naive, ref_out) + rounding(DTYPES[dtype], ref_out)
        assert lse_err(lse, ref_lse) < 1e-2


@pytest.mark.parametrize("level", LEVELS)
def test_alibi_every_simd_level(level, monkeypatch):
    use_level(level, monkeypatch)
    rng = np.random.default_rng(12)
    for dtype in (np.float32, BF16):
        q, k, v = make(rng, 2, 70, 90, 4, 2, 48, dtype)
        slopes = alibi_slopes(rng, 2, 4, True)
        ref_out, _ = reference(q, k, v, causal=True, alibi_slopes=slopes)
        naive = fp.attention(q, k, v, impl="naive", causal=True, alibi_slopes=slopes)
        flash = fp.attention(q, k, v, impl="flash2", causal=True, alibi_slopes=slopes)
        assert err(flash, ref_out) <= 2 * err(naive, ref_out) + rounding(dtype, ref_out) + 2e-6


def test_alibi_slopes_forms_and_errors():
    rng = np.random.default_rng(13)
    q, k, v = make(rng, 2, 9, 11, 4, 2, 8, np.float32)
    s = np.float32([0.5, 0.25, 0.125, 0.0625])
    a = fp.attention(q, k, v, alibi_slopes=s)
    assert np.array_equal(a, fp.attention(q, k, v, alibi_slopes=list(map(float, s))))  # a list of numbers
    assert np.array_equal(a, fp.attention(q, k, v, alibi_slopes=np.stack([s, s])))  # [batch, heads_q]
    assert np.array_equal(a, fp.attention(q, k, v, alibi_slopes=np.stack([s, s, s, s], 1)[:, ::1].T[:2]))  # strided
    assert np.array_equal(fp.attention(q, k, v, alibi_slopes=np.zeros(4, np.float32)), fp.attention(q, k, v))
    with pytest.raises(ValueError, match=r"alibi_slopes must have shape \(4,\) or \(2, 4\).*got \(3,\)"):
        fp.attention(q, k, v, alibi_slopes=np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"got \(4, 2\)"):
        fp.attention(q, k, v, alibi_slopes=np.ones((4, 2), np.float32))
    with pytest.raises(TypeError, match="alibi_slopes must be float32, got float64"):
        fp.attention(q, k, v, alibi_slopes=np.ones(4))
    with pytest.raises(ValueError, match="alibi_slopes must be finite, got nan"):
        fp.attention(q, k, v, alibi_slopes=np.float32([0.5, np.nan, 0.1, 0.1]))
