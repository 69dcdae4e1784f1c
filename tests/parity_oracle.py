"""NumPy float64 oracle of every ParityStats field, written independently of the kernels."""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
DTYPES = {"float64": np.dtype(np.float64), "float32": np.dtype(np.float32),
          "float16": np.dtype(np.float16), "bfloat16": BF16, "float8_e4m3fn": E4M3, "float8_e5m2": E5M2}
MANTISSA = {"float8_e5m2": 2, "float8_e4m3fn": 3, "bfloat16": 7, "float16": 10, "float32": 23, "float64": 52}
UINT = {8: np.uint64, 4: np.uint32, 2: np.uint16, 1: np.uint8}


def random_pair(rng, shape, da, db, *, noise=1e-3, scale=1.0, offset=0.0):
    """b: the reference; a: b plus relative noise, each rounded to its dtype. Never zeros."""
    base = rng.standard_normal(shape) * scale + offset
    a = (base * (1 + noise * rng.standard_normal(shape))).astype(DTYPES[da])
    b = base.astype(DTYPES[db])
    return a, b


def _round_fraction(x: float, man: int, emin: int, emax: int) -> float:
    """Exact round-to-nearest-even of float x to a binary format, by rational arithmetic."""
    if x == 0 or not math.isfinite(x):
        return x
    f = Fraction(x)
    sign = -1 if f < 0 else 1
    f = abs(f)
    e = math.floor(math.log2(f))
    while Fraction(2) ** e > f:
        e -= 1
    while Fraction(2) ** (e + 1) <= f:
        e += 1
    q = Fraction(2) ** (max(e, emin) - man)  # quantum
    m = f / q
    r = math.floor(m)
    rem = m - r
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and r % 2 == 1):
        r += 1
    v = r * q
    if v >= Fraction(2) ** (emax + 1):
        return sign * math.inf
    return sign * float(v)


def _to_narrow(x: np.ndarray, own: str, narrow: str) -> np.ndarray:
    """Values of x (dtype `own`) rounded once to `narrow`, as an array of dtype `narrow`."""
    if own == narrow:
        return x
    if own == "float64" and narrow in ("float8_e4m3fn", "float8_e5m2"):  # one rounding from float64
        fmt = (3, -6, 8) if narrow == "float8_e4m3fn" else (2, -14, 15)
        flat = np.array([_round_fraction(float(v), *fmt) for v in x.ravel()], dtype=np.float64).reshape(x.shape)
        if narrow == "float8_e4m3fn":  # no infinity: past 448 is the NaN pattern, one step beyond
            flat = np.where(np.abs(flat) > 448, np.copysign(np.nan, flat), flat)
        with np.errstate(over="ignore", invalid="ignore"):
            return flat.astype(np.float32).astype(DTYPES[narrow])  # exact now
    if own == "float64" and narrow == "bfloat16":
        flat = [_round_fraction(float(v), 7, -126, 127) for v in x.ravel()]
        with np.errstate(over="ignore"):
            return np.array(flat, dtype=np.float32).reshape(x.shape).astype(BF16)  # exact now
    if own == "float16" and narrow == "bfloat16":
        return x.astype(np.float32).astype(BF16)  # half is exact in float32; f32 -> bf16 rounds once
    with np.errstate(over="ignore"):  # a finite value past the narrow range rounds to infinity
        return x.astype(DTYPES[narrow])  # numpy/ml_dtypes round once, to nearest even


def _ordered(x: np.ndarray) -> np.ndarray:
    bits = x.view(UINT[x.dtype.itemsize]).astype(np.uint64)
    w = x.dtype.itemsize * 8
    sign = (bits >> np.uint64(w - 1)) & np.uint64(1)
    mag = (bits & np.uint64((1 << (w - 1)) - 1)).astype(object)
    return np.where(sign == 1, -mag, mag)


def hist_bins(ad: np.ndarray) -> list[int]:
    counts = [0] * 60
    for v in ad.ravel():
        v = float(v)
        if math.isnan(v):
            counts[59] += 1
        elif v == 0:
            counts[0] += 1
        elif v >= 2.0 ** 16:
            counts[58] += 1
        else:
            k = math.frexp(v)[1] - 1  # v in [2^k, 2^(k+1))
            counts[1 if k < -40 else 2 + k + 40] += 1
    return counts


def _first_max(x: np.ndarray) -> tuple[float, int]:
    flat = x.ravel()
    nan = np.isnan(flat)
    if nan.any():
        return math.nan, int(np.argmax(nan))
    i = int(np.argmax(flat))
    return float(flat[i]), i


def oracle(a: np.ndarray, b: np.ndarray, atol: float = 0.0, rtol: float = 0.0) -> dict:
    da, db = a.dtype.name, b.dtype.name
    A = a.astype(np.float64)
    B = b.astype(np.float64)
    n = A.size
    eq_inf = (A == B) & np.isinf(A)  # the same infinity on both sides: an exact match, set aside
    with np.errstate(all="ignore"):
        d = np.where(eq_inf, 0.0, A - B)
        ad = np.abs(d)
        rel = np.where(np.isnan(ad), np.nan, np.where(B == 0, np.where(A == 0, 0.0, np.inf), ad / np.abs(B)))
        close = (A == B) | (np.isfinite(A) & np.isfinite(B) & (ad <= atol + rtol * np.abs(B)))
    finite = np.isfinite(A) & np.isfinite(B)
    max_abs, i_abs = _first_max(ad)
    max_rel, i_rel = _first_max(rel)
    out = {
        "numel": n,
        "max_abs_diff": max_abs,
        "max_abs_index": tuple(int(i) for i in np.unravel_index(i_abs, a.shape)),
        "max_rel_diff": max_rel,
        "max_rel_index": tuple(int(i) for i in np.unravel_index(i_rel, a.shape)),
        "mismatches": int((~close).sum()),
        "nonfinite": int((~finite).sum()),
        "equal_inf": int(eq_inf.sum()),
        "abs_diff_histogram": hist_bins(ad),
    }
    # the sums and means run over the other elements (all equal infinities: the means are 0)
    keep = ~eq_inf
    A, B, d, ad = A[keep], B[keep], d[keep], ad[keep]
    n = max(A.size, 1)
    fs = math.fsum
    with np.errstate(all="ignore"):
        out["mean_abs_diff"] = fs(ad.ravel()) / n
        sq = fs((d * d).ravel())
        out["rmse"] = math.sqrt(sq / n) if math.isfinite(sq) else (math.inf if sq == math.inf else math.nan)
        bb = fs((B * B).ravel())
    if not math.isfinite(sq) or not math.isfinite(bb):
        out["snr_db"] = math.nan if (math.isnan(sq) or math.isnan(bb)) else None  # None: don't check
    else:
        out["snr_db"] = math.inf if sq == 0 else (-math.inf if bb == 0 else 10 * math.log10(bb / sq))
    if not (finite | eq_inf).all():
        out["cosine_sim"] = math.nan
        out["pcc"] = math.nan
        out["max_ulp_diff"] = _max_ulp(a[finite], b[finite], da, db) if finite.any() else 0
        return out
    aa = fs((A * A).ravel())
    ab = fs((A * B).ravel())
    if aa == 0 and bb == 0:
        out["cosine_sim"] = 1.0
    elif aa == 0 or bb == 0:
        out["cosine_sim"] = 0.0
    else:
        out["cosine_sim"] = max(-1.0, min(1.0, ab / math.sqrt(aa) / math.sqrt(bb)))
    ca = A - fs(A.ravel()) / n
    cb = B - fs(B.ravel()) / n
    va, vb = fs((ca * ca).ravel()), fs((cb * cb).ravel())
    if va <= 0 or vb <= 0:  # constant (or a spread whose square underflows float64)
        out["pcc"] = 1.0 if np.array_equal(A, B) else 0.0
    else:
        out["pcc"] = max(-1.0, min(1.0, fs((ca * cb).ravel()) / (math.sqrt(va) * math.sqrt(vb))))
    out["max_ulp_diff"] = _max_ulp(a[finite], b[finite], da, db) if finite.any() else 0
    return out


def _max_ulp(a, b, da, db) -> int:
    narrow = da if MANTISSA[da] <= MANTISSA[db] else db
    oa = _ordered(_to_narrow(np.asarray(a), da, narrow))
    ob = _ordered(_to_narrow(np.asarray(b), db, narrow))
    return int(max(abs(int(x) - int(y)) for x, y in zip(oa.ravel(), ob.ravel())))


def same_float(x: float, y: float, rel: float = 0.0, abs_: float = 0.0) -> bool:
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if math.isinf(x) or math.isinf(y):
        return x == y
    return abs(x - y) <= abs_ + rel * abs(y)


def check_against_oracle(stats, a, b, atol=0.0, rtol=0.0, *, cos_tol=1e-12, moment_rel=1e-12):
    """Assert every field of `stats` against the oracle: exact where the SPEC says exact."""
    want = oracle(a, b, atol, rtol)
    assert stats.numel == want["numel"]
    assert same_float(stats.max_abs_diff, want["max_abs_diff"]), (stats.max_abs_diff, want["max_abs_diff"])
    assert stats.max_abs_index == want["max_abs_index"]
    assert same_float(stats.max_rel_diff, want["max_rel_diff"]), (stats.max_rel_diff, want["max_rel_diff"])
    assert stats.max_rel_index == want["max_rel_index"]
    assert stats.mismatches == want["mismatches"]
    assert stats.nonfinite == want["nonfinite"]
    assert stats.equal_inf == want["equal_inf"]
    assert list(stats.abs_diff_histogram.values()) == want["abs_diff_histogram"]
    assert stats.max_ulp_diff == want["max_ulp_diff"]
    assert same_float(stats.cosine_sim, want["cosine_sim"], abs_=cos_tol), (stats.cosine_sim, want["cosine_sim"])
    assert same_float(stats.pcc, want["pcc"], abs_=cos_tol), (stats.pcc, want["pcc"])
    assert same_float(stats.mean_abs_diff, want["mean_abs_diff"], rel=moment_rel)
    assert same_float(stats.rmse, want["rmse"], rel=moment_rel)
    if want["snr_db"] is not None:
        assert same_float(stats.snr_db, want["snr_db"], rel=moment_rel, abs_=1e-9), (stats.snr_db, want["snr_db"])
