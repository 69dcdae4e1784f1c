"""fp.attention_varlen_backward (naive and flash2 on the CPU): each sequence of a packed batch
against the float64 oracle run on that sequence alone, and against the batched backward."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import flashparity as fp
from attention_ref import reference_backward
from simd import LEVELS, use_level

BF16 = np.dtype(ml_dtypes.bfloat16)
IMPLS = ["naive", "flash2"]

CASES = [  # (lens_q, lens_k, hq, hk, d, options)
    ([5, 0, 1, 37, 3], [9, 4, 0, 53, 1], 4, 2, 40, {}),                       # GQA; no queries; no keys; odd tails
    ([70, 1, 13], [50, 30, 13], 2, 1, 64, {"causal": True}),                  # MQA, causal with sq > sk
    ([65, 3], [130, 7], 3, 3, 17, {"window": (5, 3), "softcap": 10.0}),       # window + softcap, odd head_dim
    ([20, 0, 11, 1], [10, 5, 1, 1], 2, 1, 8, {"window": (-1, 2), "alibi": 2}),  # ALiBi [batch, heads_q]
    ([1, 1, 1], [200, 70, 1], 8, 1, 96, {"causal": True, "alibi": 1}),        # decode steps, ALiBi [heads_q]
    ([9, 30, 0, 7, 12, 1, 64, 2, 5], [9, 41, 3, 7, 0, 8, 64, 2, 70], 4, 2, 24,  # 9 x 2 kv heads: the fused scheme
     {"causal": True, "window": (20, -1)}),
]
IDS = [f"{len(c[0])}seqs-{c[2]}x{c[3]}x{c[4]}-{sorted(c[5])}" for c in CASES]


def cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def make(rng, lens_q, lens_k, hq, hk, d, dtype):
    tq, tk = sum(lens_q), sum(lens_k)
    q = rng.standard_normal((tq, hq, d)).astype(dtype)
    k = rng.standard_normal((tk, hk, d)).astype(dtype)
    v = rng.standard_normal((tk, hk, d)).astype(dtype)
    g = rng.standard_normal((tq, hq, d)).astype(dtype)
    return q, k, v, g


def options(case, rng):
    n, hq, opts = len(case[0]), case[2], dict(case[5])
    dims = opts.pop("alibi", 0)
    if dims:
        opts["alibi_slopes"] = rng.uniform(0.05, 1.0, (n, hq)[2 - dims:]).astype(np.float32)
    return opts


def gold(q, k, v, g, lens_q, lens_k, **opts):
    """The float64 oracle on each sequence alone (a batch of one), packed back."""
    cq, ck = cu(lens_q), cu(lens_k)
    dq, dk, dv = (np.zeros(x.shape) for x in (q, k, v))
    slopes = opts.pop("alibi_slopes", None)
    for s in range(len(lens_q)):
        rq, rk = slice(cq[s], cq[s + 1]), slice(ck[s], ck[s + 1])
        one = {} if slopes is None else {"alibi_slopes": slopes if slopes.ndim == 1 else slopes[s:s + 1]}
        grads = reference_backward(q[None, rq], k[None, rk], v[None, rk], g[None, rq], **opts, **one)
        dq[rq], dk[rk], dv[rk] = (x[0] for x in grads)
    return dq, dk, dv


def backward(q, k, v, g, lens_q, lens_k, impl, **opts):
    cq, ck = cu(lens_q), cu(lens_k)
    out, lse = fp.attention_varlen(q, k, v, cq, ck, impl=impl, return_lse=True, **opts)
    return fp.attention_varlen_backward(q, k, v, out, lse, g, cq, ck, impl=impl, **opts)


def err(x, ref):
    x = np.asarray(x).astype(np.float64)
    return float(np.max(np.abs(x - ref))) if x.size else 0.0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float64_matches_the_per_sequence_oracle(impl, case):
    rng = np.random.default_rng(sum(case[0]) + sum(case[1]))
    opts = options(case, rng)
    q, k, v, g = make(rng, *case[:5], np.float64)
    ref = gold(q, k, v, g, case[0], case[1], **opts)
    got = backward(q, k, v, g, case[0], case[1], impl, **opts)
    tol = 1e-12 if impl == "naive" else 2e-6  # (flash2 rebuilds P from the float32 lse)
    for name, x, r in zip(("dq", "dk", "dv"), got, ref):
        assert x.dtype == np.float64 and x.shape == r.shape and x.flags.c_contiguous
        assert err(x, r) <= tol * max(1.0, float(np.max(np.abs(r), initial=0.0))), name


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float32_and_low_precision_follow_flashattention2s_rule(dtype, case):
    # max|dX - gold| <= 2 max|dX_naive - gold| + 1e-5, gold in float64 from the same rounded inputs
    np_dtype = BF16 if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(sum(case[0]) + 1)
    opts = options(case, rng)
    q, k, v, g = make(rng, *case[:5], np_dtype)
    ref = gold(q, k, v, g, case[0], case[1], **opts)
    naive = backward(q, k, v, g, case[0], case[1], "naive", **opts)
    flash = backward(q, k, v, g, case[0], case[1], "flash2", **opts)
    for name, f, n, r in zip(("dq", "dk", "dv"), flash, naive, ref):
        assert f.dtype == np_dtype and n.dtype == np_dtype
        assert err(f, r) <= 2 * err(n, r) + 1e-5, (name, err(f, r), err(n, r))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("batch, hk", [(2, 8), (3, 2)], ids=["fused", "two-pass"])
def test_equal_lengths_give_the_batched_backwards_bits(impl, dtype, batch, hk):
    # one problem per sequence or one of the whole batch: the same tasks' arithmetic, so the same bits
    np_dtype = BF16 if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(batch)
    sq, sk, hq, d = 70, 90, 2 * hk, 24
    q4, k4, v4, g4 = (rng.standard_normal(s).astype(np_dtype) for s in
                      ((batch, sq, hq, d), (batch, sk, hk, d), (batch, sk, hk, d), (batch, sq, hq, d)))
    opts = {"causal": True, "window": (40, -1), "softcap": 8.0,
            "alibi_slopes": rng.uniform(0.05, 1.0, (batch, hq)).astype(np.float32)}
    out4, lse4 = fp.attention(q4, k4, v4, impl=impl, return_lse=True, **opts)
    batched = fp.attention_backward(q4, k4, v4, out4, lse4, g4, impl=impl, **opts)
    packed = [x.reshape(-1, *x.shape[2:]) for x in (q4, k4, v4, g4)]
    got = backward(*packed, [sq] * batch, [sk] * batch, impl, **opts)
    for name, x, y in zip(("dq", "dk", "dv"), got, batched):
        assert np.array_equal(x, y.reshape(x.shape)), name


def test_each_sequence_alone_gives_the_same_bits():
    # the whole batch takes the fused scheme (9 sequences x 2 kv heads), each sequence alone the
    # two-pass one: a sequence's gradients do not depend on its neighbours
    lens_q, lens_k, hq, hk, d, opts = CASES[-1]
    rng = np.random.default_rng(21)
    q, k, v, g = make(rng, lens_q, lens_k, hq, hk, d, np.float32)
    whole = backward(q, k, v, g, lens_q, lens_k, "flash2", **opts)
    cq, ck = cu(lens_q), cu(lens_k)
    for s in range(len(lens_q)):
        rq, rk = slice(cq[s], cq[s + 1]), slice(ck[s], ck[s + 1])
        part = backward(q[rq], k[rk], v[rk], g[rq], [lens_q[s]], [lens_k[s]], "flash2", **opts)
        for x, y in zip(whole, part):
            assert np.array_equal(x[rq if x.shape[0] == q.shape[0] else rk], y), s


@pytest.mark.parametrize("impl", IMPLS)
def test_masked_keys_and_keyless_sequences_get_exactly_zero(impl):
    # sequence 0: window (1, 0) with sk > sq, keys 0..18 seen by no row; sequence 1 has no queries;
    # non-finite values there reach nothing, and the other gradients keep their bits
    lens_q, lens_k = [10, 0, 6], [30, 12, 6]
    rng = np.random.default_rng(22)
    q, k, v, g = make(rng, lens_q, lens_k, 2, 1, 16, np.float32)
    opts = {"window": (1, 0)}
    clean = backward(q, k, v, g, lens_q, lens_k, impl, **opts)
    k2, v2 = k.copy(), v.copy()
    dead = np.r_[0:19, 30:42]
    k2[dead], v2[dead] = np.inf, np.nan
    got = backward(q, k2, v2, g, lens_q, lens_k, impl, **opts)
    for name, a, b in zip(("dq", "dk", "dv"), got, clean):
        assert np.array_equal(a, b), name
    assert not got[1][dead].any() and not got[2][dead].any()
    live = np.r_[19:30, 42:48]
    # (row 10, sequence 2's first, sees one key: P = 1 and dS = dP - D, zero up to rounding, exactly 0
    # where dout . v and dout . out add in the same order, as the scalar level does)
    several = np.r_[0:10, 11:16]
    assert np.abs(got[1][live]).sum(axis=(1, 2)).all() and np.abs(got[0][several]).sum(axis=(1, 2)).all()


def test_thread_count_does_not_change_the_gradients(monkeypatch):
    lens_q, lens_k = [150, 3, 0, 77], [140, 64, 9, 1]
    rng = np.random.default_rng(23)
    q, k, v, g = make(rng, lens_q, lens_k, 4, 2, 32, np.float32)
    for impl in IMPLS:
        results = []
        for threads in ("1", "3"):
            monkeypatch.setenv("FLASHPARITY_NUM_THREADS", threads)
            results.append(backward(q, k, v, g, lens_q, lens_k, impl, causal=True))
        assert all(np.array_equal(a, b) for a, b in zip(*results)), impl


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_views_and_a_strided_lse(impl):
    lens_q, lens_k = [17, 0, 24], [29, 5, 11]
    cq, ck = cu(lens_q), cu(lens_k)
    rng = np.random.default_rng(24)
    q = rng.standard_normal((3, 41, 32)).astype(np.float32).transpose(1, 0, 2)[..., ::2]  # [41, 3, 16]
    k = rng.standard_normal((45, 3, 33)).astype(np.float32)[..., 1::2][..., :16]
    v = rng.standard_normal((45, 3, 16)).astype(np.float32)[::-1]
    g = rng.standard_normal((41, 6, 16)).astype(np.float32)[:, ::2]
    assert not any(x.flags.c_contiguous for x in (q, k, v, g))
    out, lse = fp.attention_varlen(q, k, v, cq, ck, impl=impl, causal=True, return_lse=True)
    lse_t = np.ascontiguousarray(lse.T).T  # same values, other strides
    out_t = out.transpose(1, 0, 2).copy().transpose(1, 0, 2)
    got = fp.attention_varlen_backward(q, k, v, out_t, lse_t, g, cq, ck, impl=impl, causal=True)
    ref = gold(q, k, v, g, lens_q, lens_k, causal=True)
    assert max(err(x, r) for x, r in zip(got, ref)) < 2e-5
    dense = fp.attention_varlen_backward(*(np.ascontiguousarray(x) for x in (q, k, v)), out, lse,
                                         np.ascontiguousarray(g), cq, ck, impl=impl, causal=True)
    assert all(np.array_equal(a, b) for a, b in zip(got, dense))


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batches(impl):
    rng = np.random.default_rng(25)
    for lens_q, lens_k in [([0], [0]), ([0, 0], [3, 2]), ([4, 1], [0, 0]), ([], [])]:
        q, k, v, g = make(rng, lens_q, lens_k, 2, 1, 8, np.float32)
        got = backward(q, k, v, g, lens_q, lens_k, impl)
        for x, ref in zip(got, gold(q, k, v, g, lens_q, lens_k)):
            assert x.shape == ref.shape and not x.any()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("hk", [1, 8], ids=["two-pass", "fused"])
def test_every_gradient_element_is_written(impl, hk):
    # outputs filled with NaN first: the zeros of sequences without keys or queries, of rows that see
    # nothing and of keys no row sees are written, not left as the buffer held them; and a layout
    # that is not a varlen one is refused by the binding
    from flashparity import _core
    from flashparity._tensor import as_view

    lens_q, lens_k = [0, 7, 30, 5], [6, 0, 12, 40]
    cq, ck = cu(lens_q), cu(lens_k)
    rng = np.random.default_rng(27)
    q, k, v, g = make(rng, lens_q, lens_k, 2 * hk, hk, 12, np.float32)
    opts = {"causal": True, "window": (6, -1)}
    out, lse = fp.attention_varlen(q, k, v, cq, ck, impl=impl, return_lse=True, **opts)
    dq, dk, dv = (np.full(x.shape, np.nan, np.float32) for x in (q, k, v))
    descs = [as_view(x[None], n).desc for x, n in ((q, "q"), (k, "k"), (v, "v"), (out, "out"), (g, "dout"),
                                                   (lse, "lse"))]
    args = (*descs, dq.ctypes.data, dk.ctypes.data, dv.ctypes.data, IMPLS.index(impl), 1 / np.sqrt(12), 0.0, 6, 0)
    layout = _core.SeqLayout(batch=len(lens_q), cu_seqlens_q=cq.ctypes.data, cu_seqlens_k=ck.ctypes.data)
    _core.attention_backward_host(*args, layout=layout)
    ref = gold(q, k, v, g, lens_q, lens_k, **opts)
    for x, r in zip((dq, dk, dv), ref):
        assert not np.isnan(x).any() and err(x, r) < 2e-5
    assert not dk[:6].any() and not dq[:7].any() and not dq[7:7 + 18].any()  # (sequence 2: rows 0..17 see nothing)
    lens = np.array(lens_k[:3], np.int32)
    with pytest.raises(ValueError, match="takes a varlen layout"):
        _core.attention_backward_host(*args, layout=_core.SeqLayout(batch=3, cache_seqlens=lens.ctypes.data))


@pytest.mark.parametrize("level", LEVELS)
def test_every_simd_level(level, monkeypatch):
    use_level(level, monkeypatch)
    lens_q, lens_k = [33, 0, 70, 1], [40, 9, 90, 17]
    rng = np.random.default_rng(28)
    opts = {"causal": True, "softcap": 5.0, "alibi_slopes": fp.kernels.attention.alibi_slopes(4)}
    for dtype in (np.float32, BF16):
        q, k, v, g = make(rng, lens_q, lens_k, 4, 2, 48, dtype)
        ref = gold(q, k, v, g, lens_q, lens_k, **opts)
        naive = backward(q, k, v, g, lens_q, lens_k, "naive", **opts)
        flash = backward(q, k, v, g, lens_q, lens_k, "flash2", **opts)
        for f, n, r in zip(flash, naive, ref):
            assert err(f, r) <= 2 * err(n, r) + 1e-5
            if dtype == np.float32:
                assert err(n, r) < 2e-5 * max(1.0, float(np.max(np.abs(r))))


def test_torch_cpu_tensors():
    torch = pytest.importorskip("torch")
    lens = [5, 0, 9]
    rng = np.random.default_rng(29)
    q, k, v, g = make(rng, lens, lens, 2, 1, 8, np.float32)
    cq = cu(lens)
    out, lse = fp.attention_varlen(q, k, v, cq, cq, causal=True, return_lse=True)
    t = [torch.from_numpy(x) for x in (q, k, v, out, lse, g)]
    got = fp.attention_varlen_backward(*t, torch.from_numpy(cq), torch.from_numpy(cq), causal=True)
    want = fp.attention_varlen_backward(q, k, v, out, lse, g, cq, cq, causal=True)
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(got, want))


def test_bad_inputs_are_named():
    lens = [3, 5]
    rng = np.random.default_rng(26)
    q, k, v, g = make(rng, lens, lens, 2, 1, 8, np.float32)
    cq = cu(lens)
    out, lse = fp.attention_varlen(q, k, v, cq, cq, return_lse=True)

    def call(**kw):
        args = {"q": q, "k": k, "v": v, "out": out, "lse": lse, "dout": g, "cu_seqlens_q": cq, "cu_seqlens_k": cq}
        args.update(kw)
        return fp.attention_varlen_backward(*args.values())

    with pytest.raises(TypeError, match="cu_seqlens_q must be int32, got int64"):
        call(cu_seqlens_q=cq.astype(np.int64))
    with pytest.raises(ValueError, match=r"cu_seqlens_k must not decrease, got cu_seqlens_k\[2\] = 2"):
        call(cu_seqlens_k=np.array([0, 6, 2, 8], np.int32), cu_seqlens_q=np.array([0, 3, 3, 8], np.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens_q must end at q's packed length 8, got cu_seqlens_q\[2\] = 7"):
        call(cu_seqlens_q=np.array([0, 3, 7], np.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens_q must start at 0"):
        call(cu_seqlens_q=np.array([1, 3, 8], np.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens_k must have as many offsets as cu_seqlens_q \(3\), got 4"):
        call(cu_seqlens_k=np.array([0, 3, 5, 8], np.int32))
    with pytest.raises(ValueError, match=r"lse must be float32 of shape \(2, 8\) \(\[heads_q, total_q\]"):
        call(lse=lse.T.copy())
    with pytest.raises(ValueError, match="lse must be float32"):
        call(lse=lse.astype(np.float64))
    with pytest.raises(ValueError, match=r"out must have q's shape \(8, 2, 8\)"):
        call(out=out[:7])
    with pytest.raises(ValueError, match="dout must have q's shape .* and dtype float32, got .* float16"):
        call(dout=g.astype(np.float16))
    with pytest.raises(ValueError, match=r"q must be \[total_q, heads_q, head_dim\]"):
        call(q=q[None])
    with pytest.raises(ValueError, match=r"max_seqlen_k \(4\) is below the longest sequence \(5\)"):
        fp.attention_varlen_backward(q, k, v, out, lse, g, cq, cq, max_seqlen_k=4)
    f8 = np.dtype(ml_dtypes.float8_e4m3fn)
    with pytest.raises(TypeError, match="takes float64, float32, float16 and bfloat16 inputs, got float8_e4m3fn"):
        fp.attention_varlen_backward(q.astype(f8), k.astype(f8), v.astype(f8), out, lse, g, cq, cq)


def test_exported():
    assert "attention_varlen_backward" in fp.__all__
    assert fp.attention_varlen_backward is fp.kernels.serving.attention_varlen_backward
