"""The CUDA parity kernel's algorithm, checked on the CPU.

``_core.parity_grid_host`` runs the very functions the kernel runs (parity_grid.h: each thread's
grid-stride walk over 8-element chunks, the vector and element-wise paths, the histogram columns,
each block's reduction tree, the launcher's merge), thread by thread: for the same grid, the
maxima, indices, counts and histogram the GPU gives, and its sums but for the roundings nvcc saves by
fusing a·b + c. So these tests check the GPU's logic on machines without one, for grids of any
shape (one thread; many rounds per thread; more threads than elements).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import flashparity as fp
from flashparity import _core
from flashparity._tensor import as_view
from flashparity.parity import ParityStats
from parity_oracle import check_against_oracle, random_pair

PAIRS = [("float32", "float32"), ("float16", "float32"), ("bfloat16", "bfloat16"), ("float64", "float64"),
         ("float32", "float64"), ("float64", "float16"), ("float16", "bfloat16"),
         ("float8_e4m3fn", "float32"), ("float8_e5m2", "float8_e4m3fn"), ("bfloat16", "float8_e5m2")]
GRIDS = [(1, 1), (1, 32), (3, 4), (5, 128), (300, 2)]  # (300: more partials than the final fold has threads)
EXACT = ("max_abs_diff", "max_abs_index", "max_rel_diff", "max_rel_index", "mismatches", "nonfinite", "equal_inf",
         "max_ulp_diff", "abs_diff_histogram")


def grid_stats(a, b, blocks, threads, atol=0.0, rtol=0.0) -> ParityStats:
    va, vb = as_view(a, "a"), as_view(b, "b")
    acc = _core.parity_grid_host(va.desc, vb.desc, atol, rtol, blocks, threads)
    return ParityStats(acc, va.shape, (va.dtype, vb.dtype), atol, rtol)


def assert_same_as_cpu_kernel(stats, a, b, atol=0.0, rtol=0.0):
    cpu = fp.parity(a, b, atol=atol, rtol=rtol)
    for f in EXACT:
        got, want = getattr(stats, f), getattr(cpu, f)
        assert got == want or (isinstance(want, float) and math.isnan(want) and math.isnan(got)), f


@pytest.mark.parametrize("blocks,threads", GRIDS, ids=[f"{b}x{t}" for b, t in GRIDS])
@pytest.mark.parametrize("da,db", PAIRS, ids=[f"{x}-{y}" for x, y in PAIRS])
@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (1031,), (3, 5, 7), (64, 129)])
def test_grid_matches_oracle(da, db, shape, blocks, threads):
    rng = np.random.default_rng(abs(hash((da, db, shape, blocks, threads))) % 2**32)
    a, b = random_pair(rng, shape, da, db)
    stats = grid_stats(a, b, blocks, threads, 1e-3, 1e-3)
    check_against_oracle(stats, a, b, 1e-3, 1e-3)
    assert_same_as_cpu_kernel(stats, a, b, 1e-3, 1e-3)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_grid_element_wise_path(dtype):
    # strided, reversed and off-16-byte views take the element-wise path (typed loads); a view at
    # an odd byte offset takes byte copies
    rng = np.random.default_rng(7)
    a, b = random_pair(rng, (301, 77), dtype, dtype)
    for make in (lambda x: x[::2], lambda x: x[::-1, ::-3], lambda x: x.T, lambda x: x.reshape(-1)[1:],
                 lambda x: x.reshape(-1)[3:-2]):
        va, vb = make(a), make(b)
        stats = grid_stats(va, vb, 3, 32, 1e-3, 0.0)
        check_against_oracle(stats, va, vb, 1e-3, 0.0)
    raw_a = np.zeros(a.nbytes + 1, np.uint8)
    unaligned = raw_a[1:].view(a.dtype).reshape(a.shape)  # every element one byte off its size
    unaligned[...] = a
    stats = grid_stats(unaligned, b, 2, 64)
    check_against_oracle(stats, unaligned, b)


def test_grid_first_maximum_and_first_nan_across_threads():
    # 8-element chunks are dealt round-robin: these indices sit in different threads and blocks
    rng = np.random.default_rng(8)
    a, b = random_pair(rng, (50_000,), "float32", "float32")
    for i in (33_333, 9_001, 20_003):  # equal maxima: the first index wins
        a[i], b[i] = 65.0, 1.0
    stats = grid_stats(a, b, 3, 16)
    check_against_oracle(stats, a, b)
    assert stats.max_abs_index == (9_001,)
    a[41_000] = np.nan
    a[12_345] = np.nan
    b[30_000] = np.inf
    stats = grid_stats(a, b, 3, 16, 1e-3, 1e-3)
    check_against_oracle(stats, a, b, 1e-3, 1e-3)
    assert math.isnan(stats.max_abs_diff) and stats.max_abs_index == (12_345,)
    assert stats.nonfinite == 3


def test_grid_many_rounds_per_thread_and_determinism():
    rng = np.random.default_rng(9)
    a, b = random_pair(rng, (200_003,), "float16", "float32", offset=3.0)  # a mean above the spread
    one = grid_stats(a, b, 2, 8, 1e-3)  # ~1560 chunks per thread, then the short last chunk
    check_against_oracle(one, a, b, 1e-3)
    assert grid_stats(a, b, 2, 8, 1e-3) == one  # bit-identical on every run
    other = grid_stats(a, b, 7, 64, 1e-3)
    for f in EXACT:
        assert getattr(other, f) == getattr(one, f), f


def test_grid_more_threads_than_elements():
    rng = np.random.default_rng(10)
    a, b = random_pair(rng, (5,), "bfloat16", "float32")
    check_against_oracle(grid_stats(a, b, 4, 256), a, b)


def test_grid_launch_size():
    blocks = _core.parity_grid_blocks
    assert blocks(1, 128, 528) == 1
    assert blocks(8 * 128 * 10, 128, 528) == 10  # less work than the device holds
    assert blocks(1 << 26, 128, 528) == 528  # one resident wave
    # no thread may reach 2^31 elements (its 32-bit histogram counters)
    huge = 1 << 48
    b = blocks(huge, 128, 528)
    assert b * 128 * 2**31 >= huge and b > 528


def test_grid_bad_arguments():
    a = np.ones(16, np.float32)
    va = as_view(a, "a")
    with pytest.raises(ValueError, match="power of two"):
        _core.parity_grid_host(va.desc, va.desc, 0.0, 0.0, 1, 48)
    with pytest.raises(ValueError, match="blocks must be >= 1, got 0"):
        _core.parity_grid_host(va.desc, va.desc, 0.0, 0.0, 0, 32)


@pytest.mark.parametrize("da,db", [("float32", "float32"), ("bfloat16", "bfloat16"), ("float32", "bfloat16"),
                                   ("float8_e4m3fn", "float32"), ("float8_e5m2", "float32"),
                                   ("float8_e4m3fn", "bfloat16")])
def test_histogram_of_differences_rounding_up_to_a_power_of_two(da, db, monkeypatch):
    # |0.5 - 2^-60| is just below 0.5: its float64 value (the exact path's, rounded to nearest) is
    # 0.5 itself, while a float32 subtraction that truncates stays below. Every level must bin it
    # as the exact path does (AVX-512's truncated float32 differences once put it one bin lower).
    from simd import LEVELS

    import ml_dtypes  # noqa: F401 - (the DTYPES of parity_oracle use it)
    from parity_oracle import DTYPES

    pairs = [(0.5, 2.0 ** -60), (2.0, 1e-20), (0.5, 1e-30), (-2.0 ** -6, -1e-45), (0.5, -2.0 ** -60), (1.0, 3e-39)]
    a = np.ones(64 * len(pairs))
    b = np.ones(64 * len(pairs))
    for i, (x, y) in enumerate(pairs):
        a[64 * i + 7], b[64 * i + 7] = x, y
    a, b = a.astype(DTYPES[da]), b.astype(DTYPES[db])
    detected = fp.build_info()["simd_detected"]
    for x, y in ((a, b), (b, a)):
        want = grid_stats(x, y, 1, 1)
        for level in LEVELS[:LEVELS.index(detected) + 1]:
            monkeypatch.setenv("FLASHPARITY_SIMD", level)
            got = fp.parity(x, y)
            assert got.abs_diff_histogram == want.abs_diff_histogram, level
            assert got.max_abs_diff == want.max_abs_diff and got.max_ulp_diff == want.max_ulp_diff, level
