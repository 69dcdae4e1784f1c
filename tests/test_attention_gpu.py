"""fp.attention on device tensors (naive and flash2 CUDA kernels) against the float64 reference:
the CPU suite's cases on the GPU, plus device-only behaviour (outputs stay on the device, out=,
split-KV decode, large grids, every element written)."""

from __future__ import annotations

import numpy as np
import pytest

import flashparity as fp
from attention_ref import reference
from flashparity.kernels.kernel_parity import to_device, to_host
from test_attention import ALIBI_CASES, BF16, CASES, DTYPES, IMPLS, alibi_slopes, err, lse_err, make, rounding

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


# ---- issue 21: streams, empty inputs, masked keys, unaligned inputs, occupancy ------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_kernels_wait_for_every_inputs_stream(impl):
    # k and v are written on a second non-blocking stream behind a long chain of copies, q lives on a
    # first one: the kernels (on q's stream) must be ordered after k's and v's producers, or they
    # read the NaNs the buffers hold before the copies land.
    from cuda_buffers import DeviceArray, Stream, device_synchronize, fill_late

    rng = np.random.default_rng(21)
    q, k, v = make(rng, 2, 96, 700, 4, 2, 64, np.float32)
    ref_out, _ = reference(q, k, v, causal=True)
    s_q, s_kv = Stream(), Stream()
    scratch = DeviceArray(np.zeros(1 << 30, np.uint8))  # 20 copies of 512 MiB: milliseconds of delay

    def race(wait: bool):
        dq = DeviceArray(q)
        dk, dv = DeviceArray(np.full_like(k, np.nan)), DeviceArray(np.full_like(v, np.nan))
        device_synchronize()  # the setup copies have landed
        dq.stream = s_q.ptr
        dk.stream = dv.stream = s_kv.ptr
        keep = (fill_late(dk, k, s_kv, scratch, rounds=10), fill_late(dv, v, s_kv, scratch, rounds=10))
        if wait:
            res = fp.attention(dq, dk, dv, impl=impl, causal=True)
        else:  # the negative control: the same call without the waits reads the NaNs
            from flashparity import _core
            from flashparity._tensor import as_view

            vq, vk, vv = (as_view(x, n) for x, n in ((dq, "q"), (dk, "k"), (dv, "v")))
            res, _ = _core.attention_cuda(vq.desc, vk.desc, vv.desc, 0 if impl == "naive" else 1, 64 ** -0.5,
                                          0.0, -1, 0, False, s_q.ptr, 0, [])
        out = to_host(res, np.float32)
        device_synchronize()
        del keep
        return out

    assert np.isnan(race(wait=False)).any(), "the delay is too short to show a missing wait"
    for _ in range(50):
        assert err(race(wait=True), ref_out) < 2e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_out_is_written_after_its_streams_readers(impl):
    # out is still being overwritten (with NaNs) on its own stream when the call starts: the kernels
    # wait for that stream, so the attention output is what remains
    from cuda_buffers import DeviceArray, Stream, device_synchronize, fill_late

    rng = np.random.default_rng(22)
    q, k, v = make(rng, 1, 64, 300, 2, 2, 32, np.float32)
    ref_out, _ = reference(q, k, v)
    s_out = Stream()
    scratch = DeviceArray(np.zeros(1 << 30, np.uint8))
    for _ in range(20):
        out = DeviceArray(np.zeros_like(q))
        device_synchronize()
        out.stream = s_out.ptr
        keep = fill_late(out, np.full_like(q, np.nan), s_out, scratch, rounds=10)
        fp.attention(DeviceArray(q), DeviceArray(k), DeviceArray(v), impl=impl, out=out)
        device_synchronize()
        got = np.empty_like(q)
        from cuda.bindings import runtime as rt

        rt.cudaMemcpy(got.ctypes.data, out.ptr, got.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        assert err(got, ref_out) < 2e-5
        del keep


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_empty_inputs_give_empty_outputs(impl, dtype):
    from cuda_buffers import DeviceArray

    rng = np.random.default_rng(3)
    q, k, v = make(rng, 2, 5, 7, 4, 2, 16, DTYPES[dtype])
    dq, dk, dv = DeviceArray(q), DeviceArray(k), DeviceArray(v)
    # batch 0 through a view that keeps a non-null pointer (q[:0]): no division by zero, no launch
    out, lse = fp.attention(dq.view(lambda a: a[:0]), dk.view(lambda a: a[:0]), dv.view(lambda a: a[:0]),
                            impl=impl, return_lse=True)
    assert out.shape == (0, 5, 4, 16) and lse.shape == (0, 4, 5)
    # heads_q 0 passes the GQA check (0 is a multiple of heads_kv) and must not crash either
    out = fp.attention(dq.view(lambda a: a[:, :, :0]), dk, dv, impl=impl)
    assert out.shape == (2, 5, 0, 16)
    # seqlen_q 0
    out = fp.attention(dq.view(lambda a: a[:, :0]), dk, dv, impl=impl)
    assert out.shape == (2, 0, 4, 16)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_keys_with_a_null_pointer_gives_zeros_and_minus_inf(impl):
    from cuda_buffers import DeviceArray

    rng = np.random.default_rng(4)
    q = rng.standard_normal((1, 3, 2, 8)).astype(np.float32)
    empty = type("Empty", (), {"__cuda_array_interface__": {
        "shape": (1, 0, 2, 8), "typestr": "<f4", "data": (0, False), "strides": None, "version": 3, "stream": 1}})()
    out, lse = fp.attention(DeviceArray(q), empty, empty, impl=impl, return_lse=True)
    assert np.array_equal(to_host(out, np.float32), np.zeros_like(q))
    assert np.isneginf(to_host(lse, np.float32)).all()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("splits", ["1", "3"])
def test_masked_keys_contribute_nothing_on_the_gpu(impl, dtype, splits, monkeypatch):
    # the rule of the CPU kernels, on every CUDA path (naive, FMA flash2, tensor-core flash2, split-KV):
    # garbage in keys a row cannot see never reaches it; rows that see it are non-finite
    monkeypatch.setenv("FLASHPARITY_CUDA_SPLITS", splits)
    rng = np.random.default_rng(5)
    for sq, sk, causal, window in [(64, 64, True, (-1, -1)), (100, 300, True, (-1, -1)), (90, 90, False, (7, 5))]:
        q, k, v = make(rng, 1, sq, sk, 2, 1, 64, DTYPES[dtype])
        k_bad, v_bad = k.copy(), v.copy()
        v_bad[0, sk - 1, 0, 3] = np.inf
        v_bad[0, sk // 2, 0, 10] = np.nan
        k_bad[0, sk // 3, 0, 7] = np.inf
        kw = dict(impl=impl, causal=causal, window=window)
        out = run(q, k_bad, v_bad, **kw).astype(np.float64)
        cpu = fp.attention(q, k_bad, v_bad, **kw).astype(np.float64)
        clean = run(q, k, v, **kw).astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            ref_out, _ = reference(q, k_bad, v_bad, causal=causal, window=window)
        # element by element: NaN, +inf and -inf where the reference has them (a wrong p in the
        # fix-up would turn +inf into NaN), finite elsewhere
        for kind in (np.isnan, np.isposinf, np.isneginf):
            assert np.array_equal(kind(out), kind(ref_out)) and np.array_equal(kind(cpu), kind(ref_out)), kind.__name__
        ok = __import__("attention_ref").visible(sq, sk, causal, window)
        untouched = ~ok[:, [sk - 1, sk // 2, sk // 3]].any(axis=1)
        np.testing.assert_array_equal(out[0, untouched], clean[0, untouched])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_inputs_whose_elements_are_not_aligned(impl, dtype):
    # views at an odd byte offset (the protocols allow any pointer): copied once into an aligned
    # buffer, then the same kernels; the answer is the aligned one
    from cuda_buffers import DeviceArray

    rng = np.random.default_rng(6)
    q, k, v = make(rng, 1, 33, 70, 2, 1, 32, dtype)
    raw = np.zeros(q.nbytes + k.nbytes + v.nbytes + 64, np.uint8)
    offs = (1, q.nbytes + 3, q.nbytes + k.nbytes + 5)
    for x, o in zip((q, k, v), offs):
        raw[o:o + x.nbytes] = np.frombuffer(x.tobytes(), np.uint8)
    buf = DeviceArray(raw)
    dq, dk, dv = (buf.at_byte_offset(o, dtype, x.shape) for x, o in zip((q, k, v), offs))
    out = to_host(fp.attention(dq, dk, dv, impl=impl, causal=True), dtype)
    aligned = run(q, k, v, impl=impl, causal=True)
    np.testing.assert_array_equal(out, aligned)


def test_occupancy_is_reported_per_specialisation():
    info = fp.build_info(occupancy=True)
    assert "attention_occupancy" not in fp.build_info()["devices"][0]  # only when asked: it starts contexts
    for dev_info in info["devices"]:
        occ = dev_info["attention_occupancy"]
        assert isinstance(occ, list), occ
        kinds = {(o["kernel"], o["dtype"], o["head_dim"]) for o in occ}
        assert ("flash2-mma", "bfloat16", 128) in kinds and ("flash2-fma", "float32", 256) in kinds
        assert all(o["blocks_per_sm"] >= 1 for o in occ), occ


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("slopes_on", ["host", "device"])
@pytest.mark.parametrize("case", ALIBI_CASES, ids=[str(c[:6]) + ("-causal" if c[6] else "") for c in ALIBI_CASES])
def test_alibi_matches_reference(impl, dtype, slopes_on, case):
    b, sq, sk, hq, hk, d, causal, window, softcap, per_batch = case
    rng = np.random.default_rng(sum(case[:6]) + 11)
    q, k, v = make(rng, b, sq, sk, hq, hk, d, DTYPES[dtype])
    slopes = alibi_slopes(rng, b, hq, per_batch)
    kw = dict(causal=causal, window=window, softcap=softcap)
    out, lse = run(q, k, v, impl=impl, return_lse=True, alibi_slopes=slopes if slopes_on == "host" else dev(slopes),
                   **kw)
    ref_out, ref_lse = reference(q, k, v, alibi_slopes=slopes, **kw)
    if dtype in ("float32", "float64"):
        assert err(out, ref_out) < (1e-12 if dtype == "float64" else 2e-5)
    else:
        naive = fp.attention(q, k, v, impl="naive", alibi_slopes=slopes, **kw)
        assert err(out, ref_out) <= 2 * err(naive, ref_out) + rounding(dtype, ref_out)
    assert lse_err(lse, ref_lse) < 1e-2 if dtype in ("float16", "bfloat16") else lse_err(lse, ref_lse) < 1e-4
