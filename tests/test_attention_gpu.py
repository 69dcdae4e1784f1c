"""fp.attention on device tensors (the naive CUDA kernel) against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

import flashparity as fp
from attention_ref import reference

pytestmark = pytest.mark.gpu

CASES = [(2, 37, 53, 4, 2, 40, False, (-1, -1), 0.0), (1, 70, 50, 2, 1, 64, True, (-1, -1), 0.0),
         (1, 65, 130, 3, 3, 17, False, (5, 3), 10.0), (1, 1, 200, 8, 1, 128, True, (-1, -1), 0.0)]


def to_host(a, dtype):
    return np.frombuffer(a.to_host_bytes(), dtype=dtype).reshape(a.shape)


@pytest.mark.parametrize("case", CASES, ids=[str(c[:6]) for c in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_naive_cuda_matches_reference(case, dtype):
    from cuda_buffers import DeviceArray

    b, sq, sk, hq, hk, d, causal, window, softcap = case
    rng = np.random.default_rng(sum(case[:6]))
    q = rng.standard_normal((b, sq, hq, d)).astype(dtype)
    k = rng.standard_normal((b, sk, hk, d)).astype(dtype)
    v = rng.standard_normal((b, sk, hk, d)).astype(dtype)
    out, lse = fp.attention(DeviceArray(q), DeviceArray(k), DeviceArray(v), impl="naive", causal=causal,
                            window=window, softcap=softcap, return_lse=True)
    assert out.shape == q.shape and out.dtype == np.dtype(dtype).name
    ref_out, ref_lse = reference(q, k, v, causal=causal, window=window, softcap=softcap)
    host = to_host(out, dtype).astype(np.float64)
    cpu = fp.attention(q, k, v, impl="naive", causal=causal, window=window, softcap=softcap).astype(np.float64)
    tol = {np.float32: 2e-5, np.float64: 1e-12}.get(dtype, 2 * float(np.max(np.abs(cpu - ref_out))) + 1e-3)
    assert float(np.max(np.abs(host - ref_out))) <= tol
    lse_host = to_host(lse, np.float32)
    fin = np.isfinite(ref_lse)
    assert np.array_equal(np.isneginf(lse_host), np.isneginf(ref_lse))
    assert float(np.max(np.abs(lse_host[fin] - ref_lse[fin]))) < 1e-4


def test_device_outputs_stay_on_device_and_flash2_is_explicit():
    from cuda_buffers import DeviceArray

    x = np.ones((1, 4, 2, 8), np.float32)
    out = fp.attention(DeviceArray(x), DeviceArray(x), DeviceArray(x), impl="naive")
    assert "data" in out.__cuda_array_interface__ and out.__dlpack_device__()[0] == 2
    s = fp.parity(out, DeviceArray(x))  # device vs device: reduced on the GPU
    assert s.max_abs_diff == 0.0
    with pytest.raises(NotImplementedError, match="CUDA flash2"):
        fp.attention(DeviceArray(x), DeviceArray(x), DeviceArray(x))


def test_kernel_parity_on_device():
    body = fp.kernel_parity("naive", device="cuda", seq_len=64)
    assert body["device"] == "cuda" and body["max_abs_diff"] == 0.0 and body["fa2_rule_ok"]
