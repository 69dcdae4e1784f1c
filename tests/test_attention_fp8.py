"""FP8 attention inputs (FlashAttention-3's rule): q, k, v in float8_e4m3fn or float8_e5m2 with
q/k/v_descale [batch, heads_kv], math on the dequantized values with float32 accumulation, bfloat16
output; fp.attention, fp.attention_varlen and fp.attention_kvcache on every SIMD level and the GPU,
against a float64 oracle of the dequantized inputs. Bad descales are errors that name them."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import flashparity as fp
from attention_ref import reference
from simd import LEVELS, use_level
from test_attention import BF16, IMPLS, alibi_slopes, err, rounding
from test_serving import WHERE, cache_keys, offsets

FP8 = {"float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn), "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2)}


def placed(where):
    """(put, get) as test_serving.placed; FP8 arrays become DeviceArrays (no __cuda_array_interface__
    typestr names FP8), the rest go as there."""
    if where == "cpu":
        return (lambda x: x), (lambda x, dt: x)
    from flashparity.kernels.kernel_parity import to_device, to_host
    from test_attention_gpu import dev

    return (lambda x: to_device(x) if x.dtype in FP8.values() else dev(x)), to_host


def quantize(rng, shape, dtype, spread=2.0):
    """Random FP8 values that use the format's range (N(0, spread)), never all zero."""
    return (rng.standard_normal(shape) * spread).astype(dtype)


def descales(rng, b, hk):
    return tuple(rng.uniform(0.25, 2.0, (b, hk)).astype(np.float32) for _ in range(3))


def dequantized(x, d):
    """x [b, s, h, D] FP8 times d [b, hk] per kv head (q's heads map to d's by h // group) in float64."""
    group = x.shape[2] // d.shape[1]
    return x.astype(np.float64) * np.repeat(d.astype(np.float64), group, axis=1)[:, None, :, None]


def check_fp8(out, lse, naive, ref_out, ref_lse):
    assert out.dtype == BF16
    # the naive kernel: one bfloat16 rounding of a float32 result; flash2 FlashAttention-2's rule
    assert err(naive, ref_out) <= rounding(BF16, ref_out) + 1e-5
    assert err(out, ref_out) <= 2 * err(naive, ref_out) + rounding(BF16, ref_out)
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    fin = np.isfinite(ref_lse)
    assert np.max(np.abs(lse[fin] - ref_lse[fin]), initial=0.0) < 1e-4


CASES = [  # (b, sq, sk, hq, hk, d, causal, window, softcap, alibi)
    (2, 37, 53, 4, 2, 64, True, (-1, -1), 0.0, False),
    (1, 1, 300, 8, 1, 128, True, (-1, -1), 0.0, True),     # decode, MQA, ALiBi
    (3, 17, 17, 2, 2, 40, False, (5, 3), 20.0, False),     # window + softcap, odd head_dim
    (1, 5, 0, 2, 1, 16, False, (-1, -1), 0.0, False),      # no keys
]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("fmt", list(FP8))
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}x{c[2]}-d{c[5]}" for c in CASES])
def test_fp8_attention_matches_the_dequantized_reference(case, fmt, where):
    b, sq, sk, hq, hk, d, causal, window, softcap, use_alibi = case
    put, get = placed(where)
    rng = np.random.default_rng(sq * 31 + sk + d)
    q, k, v = quantize(rng, (b, sq, hq, d), FP8[fmt]), quantize(rng, (b, sk, hk, d), FP8[fmt]), \
        quantize(rng, (b, sk, hk, d), FP8[fmt])
    qd, kd, vd = descales(rng, b, hk)
    slopes = alibi_slopes(rng, b, hq, True) if use_alibi else None
    kw = dict(causal=causal, window=window, softcap=softcap)
    ref_out, ref_lse = reference(dequantized(q, qd), dequantized(k, kd), dequantized(v, vd), alibi_slopes=slopes, **kw)
    res = {}
    for impl in IMPLS:
        o, l = fp.attention(put(q), put(k), put(v), impl=impl, return_lse=True, alibi_slopes=slopes,
                            q_descale=put(qd), k_descale=put(kd), v_descale=put(vd), **kw)
        res[impl] = get(o, BF16), get(l, np.float32)
        assert res[impl][0].shape == q.shape and res[impl][1].shape == (b, hq, sq)
    check_fp8(*res["flash2"], res["naive"][0], ref_out, ref_lse)


@pytest.mark.parametrize("where", WHERE)
def test_fp8_descales_default_to_one_and_scale_what_they_should(where):
    put, get = placed(where)
    rng = np.random.default_rng(3)
    q, k, v = (quantize(rng, (2, 9, 4, 32), FP8["float8_e4m3fn"]) for _ in range(3))
    ones = np.ones((2, 4), np.float32)
    for impl in IMPLS:
        plain = get(fp.attention(put(q), put(k), put(v), impl=impl), BF16)
        assert np.array_equal(plain, get(fp.attention(put(q), put(k), put(v), impl=impl, q_descale=ones,
                                                      k_descale=ones, v_descale=ones), BF16))
        # v_descale of 2 doubles the output exactly (a power of two); q_descale 2 = softmax_scale x 2
        two = ones * 2
        assert np.array_equal(get(fp.attention(put(q), put(k), put(v), impl=impl, v_descale=two), BF16).astype(np.float64),
                              2 * plain.astype(np.float64))
        scaled = get(fp.attention(put(q), put(k), put(v), impl=impl, softmax_scale=2 / np.sqrt(32)), BF16)
        assert np.array_equal(get(fp.attention(put(q), put(k), put(v), impl=impl, q_descale=two), BF16), scaled)


@pytest.mark.parametrize("level", LEVELS)
def test_fp8_every_simd_level(level, monkeypatch):
    use_level(level, monkeypatch)
    rng = np.random.default_rng(4)
    for fmt in FP8.values():
        q, k, v = quantize(rng, (2, 70, 4, 72), fmt), quantize(rng, (2, 90, 2, 72), fmt), quantize(rng, (2, 90, 2, 72), fmt)
        qd, kd, vd = descales(rng, 2, 2)
        ref_out, ref_lse = reference(dequantized(q, qd), dequantized(k, kd), dequantized(v, vd), causal=True)
        got = {impl: fp.attention(q, k, v, impl=impl, causal=True, return_lse=True, q_descale=qd, k_descale=kd,
                                  v_descale=vd) for impl in IMPLS}
        check_fp8(*got["flash2"], got["naive"][0], ref_out, ref_lse)


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("fmt", list(FP8))
def test_fp8_varlen_and_paged_cache(fmt, where):
    put, get = placed(where)
    rng = np.random.default_rng(5)
    dt = FP8[fmt]
    # varlen: 3 sequences, descales per sequence
    lens_q, lens_k = [4, 1, 30], [9, 0, 61]
    cu_q, cu_k = offsets(lens_q), offsets(lens_k)
    q, k, v = quantize(rng, (cu_q[-1], 4, 32), dt), quantize(rng, (cu_k[-1], 2, 32), dt), quantize(rng, (cu_k[-1], 2, 32), dt)
    qd, kd, vd = descales(rng, 3, 2)
    res = {}
    for impl in IMPLS:
        o, l = fp.attention_varlen(put(q), put(k), put(v), put(cu_q), put(cu_k), impl=impl, causal=True, return_lse=True,
                                   q_descale=qd, k_descale=kd, v_descale=vd)
        res[impl] = get(o, BF16), get(l, np.float32)
    for s in range(3):
        rq, rk = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        ref_out, ref_lse = reference(dequantized(q[None, rq], qd[s:s + 1]), dequantized(k[None, rk], kd[s:s + 1]),
                                     dequantized(v[None, rk], vd[s:s + 1]), causal=True)
        check_fp8(res["flash2"][0][None, rq], res["flash2"][1][None, :, rq], res["naive"][0][None, rq], ref_out, ref_lse)
    # paged cache: pages of 16, a shuffled table, NaN-free FP8 garbage past the lengths
    lens, page = np.int32([40, 3]), 16
    pool_k, pool_v = quantize(rng, (8, page, 2, 32), dt), quantize(rng, (8, page, 2, 32), dt)
    table = rng.permutation(8)[:6].reshape(2, 3).astype(np.int32)
    qc = quantize(rng, (2, 2, 4, 32), dt)
    qd, kd, vd = descales(rng, 2, 2)
    res = {}
    for impl in IMPLS:
        o, l = fp.attention_kvcache(put(qc), put(pool_k), put(pool_v), put(lens), block_table=put(table), impl=impl,
                                    return_lse=True, q_descale=put(qd), k_descale=put(kd), v_descale=put(vd))
        res[impl] = get(o, BF16), get(l, np.float32)
    for s in range(2):
        ks, vs = cache_keys(pool_k, lens, s, table)[None], cache_keys(pool_v, lens, s, table)[None]
        ref_out, ref_lse = reference(dequantized(qc[s:s + 1], qd[s:s + 1]), dequantized(ks, kd[s:s + 1]),
                                     dequantized(vs, vd[s:s + 1]))
        check_fp8(res["flash2"][0][s:s + 1], res["flash2"][1][s:s + 1], res["naive"][0][s:s + 1], ref_out, ref_lse)


def test_fp8_out():
    rng = np.random.default_rng(6)
    q, k, v = (quantize(rng, (1, 8, 2, 16), FP8["float8_e4m3fn"]) for _ in range(3))
    want = fp.attention(q, k, v, causal=True)
    buf = np.empty(q.shape, BF16)
    assert fp.attention(q, k, v, causal=True, out=buf) is buf and np.array_equal(buf, want)
    with pytest.raises(ValueError, match=r"out must have q's shape .* and dtype bfloat16 \(the output dtype of float8_e4m3fn inputs\)"):
        fp.attention(q, k, v, out=np.empty(q.shape, np.float32))


def test_fp8_torch_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    for fmt, tdt in (("float8_e4m3fn", torch.float8_e4m3fn), ("float8_e5m2", torch.float8_e5m2)):
        q, k, v = (quantize(rng, (1, 8, 2, 16), FP8[fmt]) for _ in range(3))
        t = [torch.from_numpy(x.view(np.uint8)).view(tdt) for x in (q, k, v)]
        assert np.array_equal(fp.attention(*t, causal=True), fp.attention(q, k, v, causal=True))


def test_fp8_bad_descales_name_the_value():
    rng = np.random.default_rng(7)
    q, k, v = quantize(rng, (2, 4, 4, 8), FP8["float8_e5m2"]), *(quantize(rng, (2, 4, 2, 8), FP8["float8_e5m2"])
                                                                  for _ in range(2))
    good = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"k_descale must have shape \(2, 2\) \(\[batch, heads_kv\]\), got \(2, 4\)"):
        fp.attention(q, k, v, k_descale=np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"v_descale must have shape \(2, 2\)"):
        fp.attention(q, k, v, v_descale=np.ones(2, np.float32))
    bad = good.copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"q_descale must be finite, got q_descale\[1, 0\] = nan"):
        fp.attention(q, k, v, q_descale=bad)
    with pytest.raises(TypeError, match="q_descale must be float32, got float64"):
        fp.attention(q, k, v, q_descale=np.ones((2, 2)))
    f32 = [x.astype(np.float32) for x in (q, k, v)]
    with pytest.raises(ValueError, match="q_descale is for float8 inputs .* got float32 inputs"):
        fp.attention(*f32, q_descale=good)
    with pytest.raises(ValueError, match="v_descale is for float8 inputs .* got bfloat16 inputs"):
        fp.attention_kvcache(*(x.astype(BF16) for x in (q, k, v)), np.int32([4, 4]), v_descale=good)
    with pytest.raises(ValueError, match=r"q_descale must have shape \(1, 2\)"):  # varlen: one sequence
        fp.attention_varlen(q[0], k[0], v[0], np.int32([0, 4]), np.int32([0, 4]), q_descale=good)
    with pytest.raises(TypeError, match="q, k and v must have the same dtype"):
        fp.attention(q, k.astype(FP8["float8_e4m3fn"]), v)


@pytest.mark.parametrize("where", WHERE)
def test_fp8_kernel_parity_cli_dtype(where, capsys):
    import json

    from test_pipeline import run_cli

    for fmt in FP8:
        body = fp.kernel_parity(dtype=fmt, seqlen_q=33, num_heads=4, num_kv_heads=2, causal=True, device=where)
        assert body["dtype"] == fmt and body["ulp_dtype"] == "bfloat16" and body["fa2_rule_ok"] is True
        assert 0 < body["ref_max_abs_diff"] <= 2 * body["baseline_max_abs_diff"] + 1e-5
        code, out, _ = run_cli(["kernel", "parity", "--dtype", fmt, "--page-size", "16", "--varlen", "5,0,40",
                             "--device", where, "--json"], capsys)
        got = json.loads(out)
        assert code == 0 and got["dtype"] == fmt and got["page_size"] == 16 and got["fa2_rule_ok"] is True
        code, out, _ = run_cli(["run", "--dtype", fmt, "--seqlen-q", "3", "--causal", "--device", where, "--json"], capsys)
        got = json.loads(out)
        assert code == 0 and got["dtype"] == fmt and got["out_dtype"] == "bfloat16"
