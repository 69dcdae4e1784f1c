"""fp.attention on device tensors (naive and flash2 CUDA kernels) against the float64 reference:
the CPU suite's cases on the GPU, plus device-only behaviour (outputs stay on the device, out=,
split-KV decode, large grids, every element written)."""

from __future__ import annotations

import numpy as np
import pytest

import flashparity as fp
from attention_ref import reference
from flashparity.kernel_parity import to_device, to_host
from test_attention import BF16, CASES, DTYPES, IMPLS, err, lse_err, make, rounding

pytestmark = pytest.mark.gpu


def dev(x):
    """float16/32/64 through __cuda_array_interface__ (cuda-python buffers), bfloat16 through DLPack."""
    if x.dtype == BF16:
        return to_device(x)
    from cuda_buffers import DeviceArray

    return DeviceArray(x)


def run(q, k, v, **kw):
    res = fp.attention(dev(q), dev(k), dev(v), **kw)
    if kw.get("return_lse"):
        out, lse = res
        return to_host(out, q.dtype), to_host(lse, np.float32)
    return to_host(res, q.dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=[str(c[:6]) + ("-causal" if c[6] else "") for c in CASES])
def test_cases_match_reference(impl, dtype, case):
    b, sq, sk, hq, hk, d, causal, window, softcap = case
    rng = np.random.default_rng(sum(case[:6]))
    q, k, v = make(rng, b, sq, sk, hq, hk, d, DTYPES[dtype])
    kw = dict(causal=causal, window=window, softcap=softcap)
    out, lse = run(q, k, v, impl=impl, return_lse=True, **kw)
    ref_out, ref_lse = reference(q, k, v, **kw)
    assert out.shape == q.shape and lse.shape == (b, hq, sq)
    assert not np.isnan(out.astype(np.float64)).any()
    if dtype in ("float32", "float64"):
        assert err(out, ref_out) < (1e-12 if dtype == "float64" else 2e-5)
    else:  # FlashAttention-2's rule against the CPU naive kernel in the same dtype
        naive = fp.attention(q, k, v, impl="naive", **kw)
        assert err(out, ref_out) <= 2 * err(naive, ref_out) + rounding(dtype, ref_out)
    assert lse_err(lse, ref_lse) < 1e-4


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("d", [32, 64, 80, 96, 128, 160, 192, 224, 256])
def test_flash2_every_head_dim_specialisation(dtype, d):
    rng = np.random.default_rng(d)
    q, k, v = make(rng, 2, 150, 333, 4, 2, d, DTYPES[dtype])
    out = run(q, k, v, impl="flash2", causal=True)
    ref_out, _ = reference(q, k, v, causal=True)
    naive = run(q, k, v, impl="naive", causal=True)
    assert err(out, ref_out) <= 2 * err(naive, ref_out) + rounding(dtype, ref_out)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("splits", ["auto", "1", "3", "7"])
def test_decode_split_kv(dtype, splits, monkeypatch):
    # seqlen_q 1 on a few heads: the grid is smaller than the GPU, so keys are split across blocks
    if splits != "auto":
        monkeypatch.setenv("FLASHPARITY_CUDA_SPLITS", splits)
    rng = np.random.default_rng(11)
    q, k, v = make(rng, 2, 1, 3000, 8, 2, 128, DTYPES[dtype])
    out, lse = run(q, k, v, impl="flash2", return_lse=True)
    ref_out, ref_lse = reference(q, k, v)
    if dtype in ("float32", "float64"):
        assert err(out, ref_out) < (2e-5 if dtype == "float32" else 1e-12)  # float64 merges in float64
    else:
        naive = fp.attention(q, k, v, impl="naive")
        assert err(out, ref_out) <= 2 * err(naive, ref_out) + rounding(dtype, ref_out)
    assert lse_err(lse, ref_lse) < 1e-4
    # a window of the last 101 keys: most splits see no key at all and must weigh 0 in the merge
    out, lse = run(q, k, v, impl="flash2", window=(100, 0), return_lse=True)
    ref_out, ref_lse = reference(q, k, v, window=(100, 0))
    assert err(out, ref_out) <= max(2e-5, 4 * rounding(dtype, ref_out)) and lse_err(lse, ref_lse) < 1e-4


def test_bad_split_env_is_an_error(monkeypatch):
    monkeypatch.setenv("FLASHPARITY_CUDA_SPLITS", "zero")
    x = np.ones((1, 1, 1, 32), np.float16)
    with pytest.raises(ValueError, match="FLASHPARITY_CUDA_SPLITS must be an integer in 1..1024, got 'zero'"):
        fp.attention(dev(x), dev(x), dev(x))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_non_contiguous_device_views(impl, dtype):
    from cuda_buffers import DeviceArray

    rng = np.random.default_rng(3)
    base_q = rng.standard_normal((2, 4, 30, 24)).astype(dtype)   # BHSD storage
    base_k = rng.standard_normal((2, 2, 50, 24)).astype(dtype)
    base_v = rng.standard_normal((2, 50, 2, 48)).astype(dtype)
    q = DeviceArray(base_q).view(lambda a: a.transpose(0, 2, 1, 3))
    k = DeviceArray(base_k).view(lambda a: a.transpose(0, 2, 1, 3))
    v = DeviceArray(base_v).view(lambda a: a[..., ::2])  # strided head_dim
    out = to_host(fp.attention(q, k, v, impl=impl, causal=True), dtype)
    hq, hk, hv = base_q.transpose(0, 2, 1, 3), base_k.transpose(0, 2, 1, 3), base_v[..., ::2]
    ref_out, _ = reference(hq, hk, hv, causal=True)
    cpu = fp.attention(hq, hk, hv, impl="naive", causal=True)
    assert err(out, ref_out) <= max(2e-5, 2 * err(cpu, ref_out) + rounding(dtype, ref_out))


@pytest.mark.parametrize("impl", IMPLS)
def test_device_outputs_stay_on_device(impl):
    x = np.random.default_rng(0).standard_normal((1, 4, 2, 32)).astype(np.float16)
    out = fp.attention(dev(x), dev(x), dev(x), impl=impl)
    assert "data" in out.__cuda_array_interface__ and out.__dlpack_device__()[0] == 2
    s = fp.parity(out, fp.attention(dev(x), dev(x), dev(x), impl=impl))  # device vs device, on the GPU
    assert s.max_abs_diff == 0.0


@pytest.mark.parametrize("impl", IMPLS)
def test_out_is_written_in_place(impl):
    from cuda_buffers import DeviceArray

    rng = np.random.default_rng(9)
    q, k, v = make(rng, 1, 70, 90, 4, 2, 64, np.float16)
    target = DeviceArray(np.full(q.shape, np.nan, np.float16))  # poisoned: every element must be written
    res, lse = fp.attention(dev(q), dev(k), dev(v), impl=impl, causal=True, out=target, return_lse=True)
    assert res is target
    got = np.empty(q.shape, np.float16)
    from cuda.bindings import runtime as rt

    rt.cudaMemcpy(got.ctypes.data, target.ptr, got.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
    assert not np.isnan(got).any()
    assert np.array_equal(got, to_host(fp.attention(dev(q), dev(k), dev(v), impl=impl, causal=True), np.float16))
    with pytest.raises(ValueError, match="out must have q's shape"):
        fp.attention(dev(q), dev(k), dev(v), out=DeviceArray(np.zeros((1, 70, 4, 32), np.float16)))
    with pytest.raises(ValueError, match="out must live on q's device"):
        fp.attention(dev(q), dev(k), dev(v), out=np.zeros(q.shape, np.float16))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_every_output_element_written_on_large_grids(dtype):
    # many (batch, head) blocks and ragged query tiles; outputs compared whole, so an unwritten
    # element (allocation garbage) or a NaN fails
    rng = np.random.default_rng(12)
    q, k, v = make(rng, 3, 257, 129, 24, 8, 72, DTYPES[dtype])
    out = run(q, k, v, impl="flash2", causal=True)
    ref_out, _ = reference(q, k, v, causal=True)
    assert np.isfinite(out.astype(np.float64)).all()
    assert err(out, ref_out) <= max(2e-5, 4 * rounding(dtype, ref_out))


def test_kernel_parity_on_device():
    body = fp.kernel_parity("naive", device="cuda", seq_len=64)
    assert body["device"] == "cuda" and body["max_abs_diff"] == 0.0 and body["fa2_rule_ok"]
    for dtype in ("float16", "bfloat16"):
        body = fp.kernel_parity("flash2", device="cuda", seq_len=512, dtype=dtype)
        assert body["device"] == "cuda" and body["fa2_rule_ok"], body
