"""fp.parity on device tensors (CUDA kernel) against the NumPy float64 oracle and the CPU kernel."""

from __future__ import annotations

import math

import numpy as np
import pytest

import flashparity as fp
from parity_oracle import check_against_oracle, random_pair, same_float

pytestmark = pytest.mark.gpu

PAIRS = [("float32", "float32"), ("float16", "float32"), ("float64", "float64"), ("float32", "float64"),
         ("float16", "float16"), ("float64", "float16"), ("bfloat16", "bfloat16"), ("bfloat16", "float32"),
         ("float8_e4m3fn", "float32"), ("float8_e5m2", "float8_e4m3fn"), ("float8_e4m3fn", "float8_e4m3fn")]
SHAPES = [(1,), (7,), (1031,), (3, 5, 7), (257, 129)]


def dev(x):
    """float16/32/64 through __cuda_array_interface__ (cuda-python buffers), bfloat16 and FP8 through DLPack."""
    if x.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        from flashparity.kernels.kernel_parity import to_device

        return to_device(x)
    from cuda_buffers import DeviceArray

    return DeviceArray(x)


@pytest.mark.parametrize("da,db", PAIRS, ids=[f"{x}-{y}" for x, y in PAIRS])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_device_matches_oracle(da, db, shape):
    rng = np.random.default_rng(abs(hash((da, db, shape))) % 2**32)
    a, b = random_pair(rng, shape, da, db)
    stats = fp.parity(dev(a), dev(b), atol=1e-3, rtol=1e-3)
    check_against_oracle(stats, a, b, 1e-3, 1e-3)


def test_device_strided_views():
    rng = np.random.default_rng(1)
    a, b = random_pair(rng, (301, 77), "float32", "float32")
    da, db = dev(a), dev(b)
    for make in (lambda x: x[::2], lambda x: x[::-1], lambda x: x.T, lambda x: x[1:-1:3, ::-2]):
        stats = fp.parity(da.view(make), db.view(make))
        check_against_oracle(stats, np.ascontiguousarray(make(a)), np.ascontiguousarray(make(b)))


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_device_views_off_16_byte_alignment(dtype):
    # contiguous but not 16-byte aligned: the element-wise path, over several grid-stride rounds
    rng = np.random.default_rng(4)
    a, b = random_pair(rng, (1_200_011,), dtype, dtype)
    da, db = dev(a), dev(b)
    for make in (lambda x: x[1:], lambda x: x[3:-2]):
        stats = fp.parity(da.view(make), db.view(make), atol=1e-3, rtol=1e-3)
        check_against_oracle(stats, make(a), make(b), 1e-3, 1e-3)


def test_device_nan_inf_and_many_blocks():
    rng = np.random.default_rng(2)
    a, b = random_pair(rng, (3_000_017,), "float32", "float32")
    a[123_456] = np.nan
    b[2_000_000] = np.inf
    stats = fp.parity(dev(a), dev(b))
    check_against_oracle(stats, a, b)
    assert math.isnan(stats.max_abs_diff) and stats.max_abs_index == (123_456,)


@pytest.mark.parametrize("da,db", [("float32", "float32"), ("bfloat16", "float16"), ("float8_e5m2", "float32")])
def test_device_sets_equal_infinities_aside(da, db):
    from parity_oracle import DTYPES

    rng = np.random.default_rng(5)
    a, b = random_pair(rng, (100_003,), da, db)
    where = rng.random(a.shape) < 0.1
    inf = np.where(rng.random(a.shape) < 0.5, -np.inf, np.inf)[where]
    a[where], b[where] = inf.astype(DTYPES[da]), inf.astype(DTYPES[db])
    stats = fp.parity(dev(a), dev(b), atol=1e-2, rtol=1e-2)
    check_against_oracle(stats, a, b, 1e-2, 1e-2)
    assert stats.equal_inf == int(where.sum()) and math.isfinite(stats.cosine_sim)
    assert_same_as_host_grid(stats, a, b, 1e-2, 1e-2)


def test_device_agrees_with_cpu_and_is_deterministic():
    rng = np.random.default_rng(3)
    a, b = random_pair(rng, (1 << 22,), "float16", "float32")
    da, db = dev(a), dev(b)
    gpu = fp.parity(da, db, atol=1e-3)
    cpu = fp.parity(a, b, atol=1e-3)
    for f in ("max_abs_diff", "max_abs_index", "max_rel_diff", "max_rel_index", "mismatches", "nonfinite",
              "equal_inf", "max_ulp_diff", "abs_diff_histogram"):
        assert getattr(gpu, f) == getattr(cpu, f), f
    for f in ("cosine_sim", "pcc", "rmse", "mean_abs_diff", "snr_db"):
        assert getattr(gpu, f) == pytest.approx(getattr(cpu, f), rel=1e-12, abs=1e-14), f
    assert fp.parity(da, db, atol=1e-3) == gpu  # bit-identical on every run


def assert_same_as_host_grid(gpu, a, b, atol, rtol):
    """The kernel runs parity_grid.h; the host runs the same functions for the launcher's grid: the
    same exact fields, and sums equal but for the roundings nvcc saves by fusing a·b + c."""
    from flashparity import _core
    from flashparity._tensor import as_view
    from flashparity.parity import ParityStats

    va, vb = as_view(a, "a"), as_view(b, "b")
    blocks = _core.parity_cuda_blocks(va.desc, vb.desc, 0)
    host = ParityStats(_core.parity_grid_host(va.desc, vb.desc, atol, rtol, blocks, 128), va.shape,
                       (va.dtype, vb.dtype), atol, rtol)
    for f in ("numel", "max_abs_index", "max_rel_index", "mismatches", "nonfinite", "equal_inf", "max_ulp_diff",
              "abs_diff_histogram"):
        assert getattr(gpu, f) == getattr(host, f), f
    for f in ("max_abs_diff", "max_rel_diff"):
        assert same_float(getattr(gpu, f), getattr(host, f)), f
    for f in ("cosine_sim", "pcc", "rmse", "mean_abs_diff", "snr_db"):
        assert same_float(getattr(gpu, f), getattr(host, f), rel=1e-12, abs_=1e-14), f


@pytest.mark.parametrize("da,db", [("float32", "float32"), ("bfloat16", "float32"), ("float64", "float16")])
def test_device_runs_the_host_grid_algorithm(da, db):
    rng = np.random.default_rng(5)
    a, b = random_pair(rng, (700_001,), da, db)
    a[77] = np.nan
    b[1234] = np.inf
    assert_same_as_host_grid(fp.parity(dev(a), dev(b), atol=1e-3, rtol=1e-3), a, b, 1e-3, 1e-3)
    a[77], b[1234] = 0.5, 0.25  # finite sums
    assert_same_as_host_grid(fp.parity(dev(a), dev(b), atol=1e-3, rtol=1e-3), a, b, 1e-3, 1e-3)
    if da != "bfloat16":  # a strided device view (cuda-python buffers): the element-wise path
        gpu = fp.parity(dev(a).view(lambda x: x[::3]), dev(b).view(lambda x: x[::3]))
        assert_same_as_host_grid(gpu, a[::3], b[::3], 0.0, 0.0)


def test_device_errors():
    a = dev(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"same shape"):
        fp.parity(a, dev(np.ones(5, np.float32)))
    with pytest.raises(ValueError, match="a is on cuda and b is on cpu"):
        fp.parity(a, np.ones(4, np.float32))
