"""FP8 (float8_e4m3fn, float8_e5m2) in fp.parity: against the float64 oracle, mixed with every
other dtype, ULP distances counted in FP8, non-finite values, views, torch tensors through DLPack;
the vector path (FP8 decoded to float32, a second pass for the ULP) bit-identical on every SIMD
level to the exact element path; refused by merge_attention_states."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import flashparity as fp
from parity_oracle import DTYPES, MANTISSA, check_against_oracle, random_pair
from simd import LEVELS, use_level

FP8 = ["float8_e4m3fn", "float8_e5m2"]
ALL = list(DTYPES)


@pytest.mark.parametrize("da", FP8)
@pytest.mark.parametrize("db", ALL)
@pytest.mark.parametrize("n", [1, 7, 4096 + 33, 70001])
def test_fp8_pairs_match_oracle(da, db, n):
    if db == "float64":  # (the oracle rounds float64 to FP8 in rationals, element by element: slow)
        n = min(n, 9001)
    rng = np.random.default_rng(n + len(da) * 7 + len(db))
    a, b = random_pair(rng, (n,), da, db, noise=0.05, scale=20.0)
    for x, y in ((a, b), (b, a)):
        stats = fp.parity(x, y, atol=0.05, rtol=0.02)
        check_against_oracle(stats, x, y, atol=0.05, rtol=0.02)
        assert stats.max_abs_diff == float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
        assert stats.ulp_dtype == min((da, db), key=MANTISSA.get)  # the narrower format: FP8


def test_ulp_counted_in_fp8_overflow_and_nonfinite():
    e4 = np.dtype(ml_dtypes.float8_e4m3fn)
    a = np.float32([448.0, 448.0, 1.0, 2.0 ** -9, -0.0]).astype(e4)
    b = np.float32([480.0, 1000.0, 1.125, 0.0, 2.0 ** -9])  # 480 and 1000 round to the NaN pattern
    s = fp.parity(a, b)
    assert s.ulp_dtype == "float8_e4m3fn"
    assert s.max_ulp_diff == 1  # one step past 448, one e4m3 ULP at 1.0, one subnormal step
    x = np.float32([1.0, np.nan, 2.0]).astype(e4)
    y = np.float32([1.0, 2.0, np.inf]).astype(np.dtype(ml_dtypes.float8_e5m2))
    s = fp.parity(x, y)
    assert s.nonfinite == 2 and np.isnan(s.max_abs_diff) and s.max_abs_index == (1,)


@pytest.mark.parametrize("level", LEVELS)
def test_fp8_every_simd_level_and_views(level, monkeypatch):
    use_level(level, monkeypatch)
    rng = np.random.default_rng(5)
    a, b = random_pair(rng, (300, 50), "float8_e4m3fn", "bfloat16", noise=0.1, scale=4.0)
    whole = fp.parity(a, b, atol=1e-2)
    check_against_oracle(whole, a, b, atol=1e-2)
    sub = fp.parity(a[::3, 1::2], b[::3, 1::2], atol=1e-2)
    check_against_oracle(sub, np.ascontiguousarray(a[::3, 1::2]), np.ascontiguousarray(b[::3, 1::2]), atol=1e-2)
    assert fp.parity(a.T, b.T).max_abs_diff == whole.max_abs_diff


@pytest.mark.parametrize("da", FP8)
@pytest.mark.parametrize("db", ALL)
def test_fp8_vector_path_is_the_exact_path_on_every_level(da, db, monkeypatch):
    # blocks the vector kernels take (FP8 decoded to float32), blocks with a non-finite difference
    # they decline (the exact element kernel), values across the FP8 range (subnormals, overflow
    # past 448 on the wide side, ties): every level gives the same bits as the element-by-element
    # reference of the GPU threads (parity_grid_host), and as each other
    from test_parity_grid import EXACT, grid_stats

    rng = np.random.default_rng(len(da) * 31 + len(db))
    n = 3 * 4096 + 17
    base = rng.standard_normal(n) * np.exp2(rng.integers(-12, 6, n))  # (|values| below ~200)
    a = (base * (1 + 0.05 * rng.standard_normal(n))).astype(DTYPES[da])
    b = base.astype(DTYPES[db])
    if db not in FP8:
        b[100:110] = np.array([464, -464, 465, 480, 6e4, 2.0 ** -10, 3 * 2.0 ** -11, 61440, 57344, 1e-30]).astype(b.dtype)
    a[5000] = np.nan  # one declined block among vector ones
    results = []
    detected = fp.build_info()["simd_detected"]
    for level in LEVELS[:LEVELS.index(detected) + 1]:  # (the levels this CPU runs)
        monkeypatch.setenv("FLASHPARITY_SIMD", level)
        for atol, rtol in ((0.0, 0.0), (1e-2, 1e-2)):
            results.append(((level, atol), fp.parity(a, b, atol=atol, rtol=rtol), fp.parity(b, a, atol=atol, rtol=rtol)))
    monkeypatch.delenv("FLASHPARITY_SIMD", raising=False)
    first = {atol: (ab, ba) for (_, atol), ab, ba in results[:2]}
    for (level, atol), ab, ba in results:
        assert (ab, ba) == first[atol], level  # bit-identical accumulated state
        for got, x, y in ((ab, a, b), (ba, b, a)):
            want = grid_stats(x, y, 3, 64, atol, atol)
            for f in EXACT:
                g, w = getattr(got, f), getattr(want, f)
                assert g == w or (isinstance(w, float) and np.isnan(w) and np.isnan(g)), (level, f)


def test_fp8_rounding_on_float32_bits_is_the_float64_rounding():
    # the CPU kernels' integer rounding of float32 to FP8 (dtype.h) against the float64 one:
    # around every midpoint between two FP8 values of either format (ties and their neighbours,
    # both signs), every pattern of the binades around the smallest normals and the largest
    # values, and a stride through all 2^32 (all of them once agreed too: 9.2e8 checked)
    from flashparity import _core

    check = _core._fp8_rounding_mismatches
    for fmt in FP8:
        values = np.arange(256, dtype=np.uint8).view(np.dtype(getattr(ml_dtypes, fmt))).astype(np.float64)
        values = np.unique(values[np.isfinite(values)])
        mids = np.concatenate([(values[:-1] + values[1:]) / 2, [values[-1] * 1.0625, values[-1] * 1.125]])
        for m in mids.astype(np.float32).view(np.uint32):
            assert check(int(m) - 4, int(m) + 5) == 0, (fmt, hex(m))
            assert check((int(m) | 0x80000000) - 4, (int(m) | 0x80000000) + 5) == 0, (fmt, hex(m))
    for e in (-17, -16, -15, -14, -10, -9, -7, -6, 7, 8, 9, 15, 16):  # binades 2^e .. 2^(e+1)
        lo = int(np.float32(2.0 ** e).view(np.uint32))
        assert check(lo, lo + (1 << 23), 3) == 0, e
    assert check(0, 1 << 32, 4093) == 0


def test_torch_fp8_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    ref = (rng.standard_normal(5000) * 30).astype(np.float32)
    for tdt, npdt in ((torch.float8_e4m3fn, ml_dtypes.float8_e4m3fn), (torch.float8_e5m2, ml_dtypes.float8_e5m2)):
        t = torch.from_numpy(ref).to(tdt)
        s = fp.parity(t, ref)
        assert s.dtypes == (np.dtype(npdt).name, "float32")
        assert s.max_abs_diff == float(np.max(np.abs(ref.astype(npdt).astype(np.float64) - ref)))
        assert s.max_ulp_diff == 0  # torch and ml_dtypes round alike: ref rounded to FP8 is t


def test_fp8_refused_where_not_taken():
    # attention takes FP8 (tests/test_attention_fp8.py); merging states of FP8 outputs has no meaning
    e4 = np.ones((1, 4, 2, 8), ml_dtypes.float8_e4m3fn)
    lse = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="merge_attention_states does not take float8_e4m3fn"):
        fp.merge_attention_states(e4[0], lse, e4[0], lse)
