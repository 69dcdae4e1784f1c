"""fp.attention_backward (naive and flash2 on the CPU) against the NumPy float64 oracle, whose
analytic gradients are checked against finite differences first."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import flashparity as fp
from attention_ref import reference, reference_backward
from simd import LEVELS, use_level

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": BF16}
IMPLS = ["naive", "flash2"]

CASES = [  # (b, sq, sk, hq, hk, d, options)
    (2, 37, 53, 4, 2, 40, {}),                                  # GQA, sq < sk, odd tails
    (1, 70, 50, 2, 1, 64, {"causal": True}),                    # MQA, causal with sq > sk: rows see nothing
    (1, 65, 130, 3, 3, 17, {"window": (5, 3), "softcap": 10.0}),  # window + softcap, odd head_dim
    (1, 1, 200, 8, 1, 128, {"causal": True}),                   # decode: one query
    (1, 129, 129, 2, 2, 1, {"causal": True, "window": (16, -1)}),  # head_dim 1, several tiles both ways
    (1, 3, 1, 1, 1, 96, {}),                                    # seqlen_k 1
    (1, 40, 80, 2, 2, 33, {"window": (0, 0)}),                  # a one-key diagonal
    (2, 20, 10, 2, 1, 8, {"window": (-1, 2), "alibi": True}),   # ALiBi [batch, heads], rows before the first key
]
IDS = [f"{c[:6]}{sorted(c[6])}" for c in CASES]


def make(rng, b, sq, sk, hq, hk, d, dtype):
    q = rng.standard_normal((b, sq, hq, d)).astype(dtype)
    k = rng.standard_normal((b, sk, hk, d)).astype(dtype)
    v = rng.standard_normal((b, sk, hk, d)).astype(dtype)
    g = rng.standard_normal((b, sq, hq, d)).astype(dtype)
    return q, k, v, g


def options(case, rng):
    b, hq, opts = case[0], case[3], dict(case[6])
    if opts.pop("alibi", False):
        opts["alibi_slopes"] = rng.uniform(0.05, 1.0, (b, hq)).astype(np.float32)
    return opts


def err(x, ref):
    x = np.asarray(x).astype(np.float64)
    return float(np.max(np.abs(x - ref))) if x.size else 0.0


def backward(q, k, v, g, impl, **opts):
    out, lse = fp.attention(q, k, v, impl=impl, return_lse=True, **opts)
    return fp.attention_backward(q, k, v, out, lse, g, impl=impl, **opts)


@pytest.mark.parametrize("opts", [{}, {"causal": True}, {"window": (2, 1)}, {"softcap": 3.0},
                                  {"alibi_slopes": np.array([0.5, 0.25, 0.1, 0.3])}],
                         ids=["plain", "causal", "window", "softcap", "alibi"])
def test_the_oracle_is_the_derivative(opts):
    # central differences of sum(dout * out) in float64 on a tiny GQA problem with masked rows
    rng = np.random.default_rng(1)
    q, k, v, g = make(rng, 2, 5, 4, 4, 2, 3, np.float64)
    grads = reference_backward(q, k, v, g, **opts)
    eps = 1e-6
    for which, grad in enumerate(grads):
        inputs = [q, k, v]
        x = inputs[which]
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            plus, minus = x.copy(), x.copy()
            plus[idx] += eps
            minus[idx] -= eps
            f = [np.sum(reference(*(plus if i == which else t for i, t in enumerate(inputs)), **opts)[0] * g),
                 np.sum(reference(*(minus if i == which else t for i, t in enumerate(inputs)), **opts)[0] * g)]
            numeric[idx] = (f[0] - f[1]) / (2 * eps)
        assert np.max(np.abs(numeric - grad)) < 1e-7, "qkv"[which]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float64_and_float32_match_the_oracle(impl, case):
    rng = np.random.default_rng(sum(case[:6]))
    opts = options(case, rng)
    # (flash2 rebuilds P from the forward's float32 lse: float64 inputs get float32's ~1e-7 there)
    for dtype, tol in ((np.float64, 1e-12 if impl == "naive" else 2e-6), (np.float32, 2e-5)):
        q, k, v, g = make(rng, *case[:6], dtype)
        gold = reference_backward(q, k, v, g, **opts)
        got = backward(q, k, v, g, impl, **opts)
        for name, x, ref in zip(("dq", "dk", "dv"), got, gold):
            assert x.dtype == dtype and x.shape == ref.shape and x.flags.c_contiguous
            assert err(x, ref) <= tol * max(1.0, float(np.max(np.abs(ref)))), (name, dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_low_precision_follows_flashattention2s_rule(dtype, case):
    # FlashAttention-2's test: max|dX - gold| <= 2 max|dX_naive - gold| + 1e-5, the gold computed in
    # float64 from the same (rounded) inputs, the naive kernel in the same dtype
    rng = np.random.default_rng(sum(case[:6]) + 1)
    opts = options(case, rng)
    q, k, v, g = make(rng, *case[:6], DTYPES[dtype])
    gold = reference_backward(q, k, v, g, **opts)
    naive = backward(q, k, v, g, "naive", **opts)
    flash = backward(q, k, v, g, "flash2", **opts)
    for name, f, n, ref in zip(("dq", "dk", "dv"), flash, naive, gold):
        assert f.dtype == DTYPES[dtype]
        assert err(f, ref) <= 2 * err(n, ref) + 1e-5, (name, err(f, ref), err(n, ref))


@pytest.mark.parametrize("level", LEVELS)
def test_every_simd_level(level, monkeypatch):
    use_level(level, monkeypatch)
    rng = np.random.default_rng(4)
    q, k, v, g = make(rng, 1, 70, 90, 4, 2, 48, np.float32)
    opts = {"causal": True, "softcap": 5.0, "alibi_slopes": fp.kernels.attention.alibi_slopes(4)}
    gold = reference_backward(q, k, v, g, **opts)
    for impl in IMPLS:
        for x, ref in zip(backward(q, k, v, g, impl, **opts), gold):
            assert err(x, ref) < 2e-5 * max(1.0, float(np.max(np.abs(ref))))
    q, k, v, g = make(rng, 1, 130, 200, 4, 2, 64, BF16)
    gold = reference_backward(q, k, v, g)
    for f, n, ref in zip(backward(q, k, v, g, "flash2"), backward(q, k, v, g, "naive"), gold):
        assert err(f, ref) <= 2 * err(n, ref) + 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_masked_keys_get_exactly_zero_whatever_their_values(impl):
    # keys no row sees (window), and keys some rows see: non-finite values in masked places reach
    # nothing, and a key's gradient only sums over the rows that see it
    rng = np.random.default_rng(7)
    q, k, v, g = make(rng, 1, 30, 60, 2, 1, 16, np.float32)
    opts = {"causal": True, "window": (10, -1)}  # row i sees keys i + 30 - 10 .. i + 30
    clean = backward(q, k, v, g, impl, **opts)
    k2, v2 = k.copy(), v.copy()
    k2[0, :20], v2[0, :20] = np.inf, np.nan  # keys 0..19: seen by no row
    got = backward(q, k2, v2, g, impl, **opts)
    for name, a, b in zip(("dq", "dk", "dv"), got, clean):
        assert np.array_equal(a, b), name
    assert not got[1][0, :20].any() and not got[2][0, :20].any()


@pytest.mark.parametrize("impl", IMPLS)
def test_rows_that_see_no_key_have_zero_gradient(impl):
    rng = np.random.default_rng(8)
    q, k, v, g = make(rng, 1, 50, 20, 2, 2, 8, np.float32)
    dq, dk, dv = backward(q, k, v, g, impl, causal=True)  # rows 0..29 see nothing (bottom-right)
    assert not dq[0, :30].any() and dq[0, 30:].any()
    gold = reference_backward(q, k, v, g, causal=True)
    assert max(err(x, r) for x, r in zip((dq, dk, dv), gold)) < 2e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_views_and_a_strided_lse(impl):
    rng = np.random.default_rng(9)
    base = rng.standard_normal((2, 3, 41, 32)).astype(np.float32)
    q = base.transpose(0, 2, 1, 3)[..., ::2]  # [2, 41, 3, 16], strided head_dim
    k = rng.standard_normal((2, 3, 29, 16)).astype(np.float32).transpose(0, 2, 1, 3)
    v = np.ascontiguousarray(rng.standard_normal((2, 29, 3, 16)).astype(np.float32)[:, ::-1])[:, ::-1]
    g = rng.standard_normal((2, 41, 3, 32)).astype(np.float32)[..., 1::2]
    assert not (q.flags.c_contiguous or k.flags.c_contiguous or v.flags.c_contiguous or g.flags.c_contiguous)
    out, lse = fp.attention(q, k, v, impl=impl, causal=True, return_lse=True)
    lse_t = np.ascontiguousarray(lse.transpose(2, 0, 1)).transpose(1, 2, 0)  # same values, other strides
    got = fp.attention_backward(q, k, v, out.transpose(0, 2, 1, 3).copy().transpose(0, 2, 1, 3), lse_t, g,
                                impl=impl, causal=True)
    gold = reference_backward(q, k, v, g, causal=True)
    assert max(err(x, r) for x, r in zip(got, gold)) < 2e-5
    assert all(np.array_equal(a, b) for a, b in zip(got, fp.attention_backward(
        np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v), out, lse,
        np.ascontiguousarray(g), impl=impl, causal=True)))


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_and_size_one(impl):
    rng = np.random.default_rng(10)
    for shape in [(1, 1, 1, 1, 1, 1), (1, 0, 5, 2, 1, 8), (1, 4, 0, 2, 2, 8), (0, 3, 3, 1, 1, 4)]:
        q, k, v, g = make(rng, *shape, np.float32)
        got = backward(q, k, v, g, impl)
        gold = reference_backward(q, k, v, g)
        for x, ref in zip(got, gold):
            assert x.shape == ref.shape and err(x, ref) < 2e-6, shape


def test_thread_count_does_not_change_the_gradients(monkeypatch):
    rng = np.random.default_rng(11)
    q, k, v, g = make(rng, 2, 150, 140, 4, 2, 32, np.float32)
    for impl in IMPLS:
        results = []
        for threads in ("1", "3"):
            monkeypatch.setenv("FLASHPARITY_NUM_THREADS", threads)
            results.append(backward(q, k, v, g, impl, causal=True))
        assert all(np.array_equal(a, b) for a, b in zip(*results)), impl


def test_torch_cpu_tensors_are_read_in_place():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    q, k, v, g = make(rng, 1, 16, 24, 2, 1, 8, np.float32)
    out, lse = fp.attention(q, k, v, return_lse=True)
    t = [torch.from_numpy(x).requires_grad_() for x in (q, k, v)]
    got = fp.attention_backward(*t, torch.from_numpy(out), torch.from_numpy(lse), torch.from_numpy(g))
    assert all(np.array_equal(a, b) for a, b in zip(got, fp.attention_backward(q, k, v, out, lse, g)))


def test_bad_inputs_are_named():
    rng = np.random.default_rng(13)
    q, k, v, g = make(rng, 1, 4, 6, 2, 1, 8, np.float32)
    out, lse = fp.attention(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match=r"lse must be float32 of shape \(1, 2, 4\)"):
        fp.attention_backward(q, k, v, out, lse[:, :1], g)
    with pytest.raises(ValueError, match="lse must be float32"):
        fp.attention_backward(q, k, v, out, lse.astype(np.float64), g)
    with pytest.raises(ValueError, match=r"dout must have q's shape \(1, 4, 2, 8\) and dtype float32"):
        fp.attention_backward(q, k, v, out, lse, g[:, :3])
    with pytest.raises(ValueError, match="out must have q's shape"):
        fp.attention_backward(q, k, v, out.astype(np.float64), lse, g)
    with pytest.raises(ValueError, match="impl must be one of"):
        fp.attention_backward(q, k, v, out, lse, g, impl="tiled2")
    big = [np.zeros((1, 2, 1, 300), np.float32)] * 3
    with pytest.raises(fp.UnsupportedHeadDimError, match="unsupported-head-dim: got 300"):
        fp.attention_backward(*big, big[0], np.zeros((1, 1, 2), np.float32), big[0])
    e4 = np.dtype(ml_dtypes.float8_e4m3fn)
    f8 = [x.astype(e4) for x in (q, k, v)]
    with pytest.raises(TypeError, match="float64, float32, float16 and bfloat16 inputs, got float8_e4m3fn"):
        fp.attention_backward(*f8, out.astype(BF16), lse, g.astype(e4))


def test_flashparity_torch_attention_is_differentiable():
    # gradcheck in float64 (fp.attention_backward against torch's own finite differences), then the
    # gradients of a float32 loss against torch's SDPA backward on the same tensors
    torch = pytest.importorskip("torch")
    from flashparity.torch import attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 5, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    for impl in IMPLS:
        assert torch.autograd.gradcheck(lambda a, b, c: attention(a, b, c, impl=impl, causal=True, softcap=2.0),
                                        (q, k, v), eps=1e-6, atol=1e-6)
    q, k, v = (torch.randn(2, 33, 4, 16, generator=gen, requires_grad=True) for _ in range(3))
    k2, v2 = (x[:, :, :2].detach().clone().requires_grad_() for x in (k, v))  # GQA: 2 kv heads
    out = attention(q, k2, v2, causal=True)
    loss = (out * torch.sin(out)).sum()
    loss.backward()
    ref = [x.detach().clone().requires_grad_() for x in (q, k2, v2)]
    ref_out = torch.nn.functional.scaled_dot_product_attention(
        ref[0].transpose(1, 2), ref[1].transpose(1, 2).repeat_interleave(2, 1),
        ref[2].transpose(1, 2).repeat_interleave(2, 1), is_causal=True).transpose(1, 2)
    (ref_out * torch.sin(ref_out)).sum().backward()
    assert torch.allclose(out, ref_out, atol=1e-5)
    for got, want in zip((q.grad, k2.grad, v2.grad), (r.grad for r in ref)):
        assert torch.allclose(got, want, atol=2e-5), float((got - want).abs().max())


def test_flashparity_torch_trains_a_tiny_model_as_sdpa_does():
    # a one-layer attention model: a few SGD steps with flashparity.torch.attention and with SDPA
    # from the same weights give the same losses (float32, within the kernels' rounding)
    torch = pytest.importorskip("torch")
    from flashparity.torch import attention

    def train(use_fp: bool) -> list[float]:
        torch.manual_seed(0)
        proj = torch.nn.Linear(16, 48)
        x = torch.randn(3, 20, 16)
        opt = torch.optim.SGD(proj.parameters(), lr=0.5)
        losses = []
        for _ in range(5):
            q, k, v = proj(x).view(3, 20, 3, 2, 8).unbind(2)  # [B, S, H=2, D=8]
            if use_fp:
                o = attention(q, k, v, causal=True)
            else:
                o = torch.nn.functional.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)
            loss = (o ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses

    ours, theirs = train(True), train(False)
    assert ours[-1] < ours[0] and np.allclose(ours, theirs, rtol=1e-4), (ours, theirs)


def test_flashparity_torch_refuses_what_it_cannot_run():
    torch = pytest.importorskip("torch")
    from flashparity.torch import attention

    with pytest.raises(TypeError, match="q must be a torch tensor"):
        attention(np.zeros((1, 1, 1, 4), np.float32), torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4))
    q, k, v = (torch.randn(1, 3, 1, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    with pytest.raises(RuntimeError, match="differentiable once"):  # a second derivative would be silently 0
        torch.autograd.grad(attention(q, k, v).sum(), q, create_graph=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_every_gradient_element_is_written(impl):
    # outputs filled with NaN first: zeros a kernel must write (rows that see nothing, keys no row
    # sees) come out as zeros, not as whatever the buffer held
    from flashparity import _core
    from flashparity._tensor import as_view

    rng = np.random.default_rng(14)
    for sq, sk, left, zero_rows, zero_keys in ((70, 45, -1, 25, 0), (45, 70, 6, 0, 19)):
        q, k, v, g = make(rng, 2, sq, sk, 4, 2, 12, np.float32)
        opts = {"causal": True, "window": (left, -1)}  # (bottom-right: row i sees keys up to i + sk - sq)
        out, lse = fp.attention(q, k, v, impl=impl, return_lse=True, **opts)
        dq, dk, dv = (np.full(x.shape, np.nan, np.float32) for x in (q, k, v))
        descs = (as_view(x, n).desc for x, n in ((q, "q"), (k, "k"), (v, "v"), (out, "out"), (g, "dout"), (lse, "lse")))
        _core.attention_backward_host(*descs, dq.ctypes.data, dk.ctypes.data, dv.ctypes.data, IMPLS.index(impl),
                                      1 / np.sqrt(12), 0.0, left, 0)
        gold = reference_backward(q, k, v, g, **opts)
        for x, ref in zip((dq, dk, dv), gold):
            assert not np.isnan(x).any() and err(x, ref) < 2e-5
        assert not dq[:, :zero_rows].any() and not dk[:, :zero_keys].any() and not dv[:, :zero_keys].any()


def test_the_oracle_keeps_non_finite_values_to_the_pairs_they_enter():
    # the oracle drops masked pairs by selection: non-finite values reach exactly the rows that see
    # them, and from those rows the keys they see
    rng = np.random.default_rng(15)
    q, k, v, g = make(rng, 1, 6, 9, 1, 1, 4, np.float64)
    opts = {"causal": True, "window": (2, -1)}  # row i sees keys i + 1 .. i + 3: key 8 only row 5
    clean = reference_backward(q, k, v, g, **opts)
    k2, v2 = k.copy(), v.copy()
    k2[0, 8], v2[0, 8] = np.inf, np.nan
    with np.errstate(invalid="ignore", over="ignore"):
        dirty = reference_backward(q, k2, v2, g, **opts)
    assert np.array_equal(dirty[0][0, :5], clean[0][0, :5]) and np.isnan(dirty[0][0, 5]).all()
    for d, c in zip(dirty[1:], clean[1:]):  # keys 0..5 are seen by rows 0..4 only (key 0 by none)
        assert np.array_equal(d[0, :6], c[0, :6]) and np.isnan(d[0, 6:]).all()


def test_flash2_fused_and_two_pass_schemes_agree_bit_for_bit():
    # batch x heads_kv >= 16: one fused task per (batch, kv head); one batch of the same data (8 kv
    # heads) takes the two-pass scheme; dQ's terms are added in the same order in both
    rng = np.random.default_rng(16)
    q, k, v, g = make(rng, 2, 150, 170, 16, 8, 24, np.float32)
    opts = {"causal": True, "window": (90, -1), "alibi_slopes": fp.kernels.attention.alibi_slopes(16)}
    whole = backward(q, k, v, g, "flash2", **opts)
    for b in range(2):
        part = backward(q[b:b + 1], k[b:b + 1], v[b:b + 1], g[b:b + 1], "flash2", **opts)
        for x, y in zip(whole, part):
            assert np.array_equal(x[b:b + 1], y)
    gold = reference_backward(q, k, v, g, **opts)
    assert max(err(x, r) for x, r in zip(whole, gold)) < 2e-5
