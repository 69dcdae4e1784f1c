"""Fused parity reductions: every statistic of two tensors' difference from one pass over them."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from . import _core
from ._tensor import TensorView, as_view, consumer_stream

__all__ = ["ParityStats", "parity", "max_abs_diff", "cosine_sim", "assert_parity", "HISTOGRAM_BINS"]

_NARROW_ORDER = {"float8_e5m2": 2, "float8_e4m3fn": 3, "bfloat16": 7, "float16": 10, "float32": 23, "float64": 52}


def _histogram_labels() -> tuple[str, ...]:
    lo, hi = _core.HIST_MIN_EXP, _core.HIST_MAX_EXP
    labels = ["0", f"<2^{lo}"] + [f"[2^{k},2^{k + 1})" for k in range(lo, hi)] + [f">=2^{hi}", "nan"]
    assert len(labels) == _core.HIST_BINS
    return tuple(labels)


#: Labels of ``ParityStats.abs_diff_histogram``: exact zero, below 2^-40, each [2^k, 2^(k+1)) for
#: k = -40..15, at or above 2^16 (infinity included), NaN.
HISTOGRAM_BINS = _histogram_labels()


def _narrower(a: str, b: str) -> str:
    return a if _NARROW_ORDER[a] <= _NARROW_ORDER[b] else b


class ParityStats:
    """Statistics of ``a`` against the reference ``b``, all from one pass (see SPEC's table; equal
    infinities are an exact match, set aside from the sums: the README says how).

    Fields: ``numel``, ``max_abs_diff``, ``max_abs_index``, ``max_rel_diff``, ``max_rel_index``,
    ``cosine_sim``, ``mismatches`` (at ``atol``/``rtol``), ``nonfinite``, ``equal_inf``, ``mean_abs_diff``,
    ``rmse``, ``snr_db``, ``pcc``, ``max_ulp_diff`` (in ``ulp_dtype``), ``abs_diff_histogram``
    (labels in :data:`HISTOGRAM_BINS`), plus ``shape``, ``dtypes``, ``atol``, ``rtol``.
    """

    __slots__ = ("_acc", "_r", "shape", "dtypes", "atol", "rtol")

    def __init__(self, acc: Any, shape: tuple[int, ...], dtypes: tuple[str, str], atol: float, rtol: float):
        self._acc = acc
        self._r = acc.result()
        self.shape = tuple(shape)
        self.dtypes = tuple(dtypes)
        self.atol = float(atol)
        self.rtol = float(rtol)

    # ---- fields ----------------------------------------------------------------------------------
    numel = property(lambda self: self._r["numel"])
    max_abs_diff = property(lambda self: self._r["max_abs_diff"])
    max_rel_diff = property(lambda self: self._r["max_rel_diff"])
    cosine_sim = property(lambda self: self._r["cosine_sim"])
    mismatches = property(lambda self: self._r["mismatches"])
    nonfinite = property(lambda self: self._r["nonfinite"])
    equal_inf = property(lambda self: self._r["equal_inf"])
    mean_abs_diff = property(lambda self: self._r["mean_abs_diff"])
    rmse = property(lambda self: self._r["rmse"])
    snr_db = property(lambda self: self._r["snr_db"])
    pcc = property(lambda self: self._r["pcc"])
    max_ulp_diff = property(lambda self: self._r["max_ulp_diff"])

    @property
    def max_abs_index(self) -> tuple[int, ...]:
        """Multi-index of the first element (C order) reaching ``max_abs_diff`` (the first NaN if any)."""
        return self._unravel(self._r["max_abs_index"])

    @property
    def max_rel_index(self) -> tuple[int, ...]:
        """Multi-index of the first element (C order) reaching ``max_rel_diff``."""
        return self._unravel(self._r["max_rel_index"])

    @property
    def abs_diff_histogram(self) -> dict[str, int]:
        """Counts of |a-b| per power-of-two bucket, keyed by :data:`HISTOGRAM_BINS`."""
        return dict(zip(HISTOGRAM_BINS, self._r["abs_diff_histogram"]))

    @property
    def ulp_dtype(self) -> str:
        """The format ``max_ulp_diff`` counts in: the narrower (by precision) of the two dtypes."""
        return _narrower(*self.dtypes)

    @property
    def mismatch_fraction(self) -> float:
        return self.mismatches / self.numel

    def _unravel(self, flat: int) -> tuple[int, ...]:
        if not self.shape:
            return ()
        return tuple(int(i) for i in np.unravel_index(flat, self.shape))

    # ---- combining -------------------------------------------------------------------------------
    def merge(self, other: ParityStats) -> ParityStats:
        """Stats of ``self``'s elements followed by ``other``'s, exactly as one pass over both.

        The parts are taken as consecutive pieces in C order: when their trailing dimensions match
        the result has shape ``(n0 + m0, *rest)`` (chunks along the first axis), otherwise it is
        flat ``(numel,)``; ``other``'s indices are shifted accordingly. Both parts must use the same
        tolerances and dtypes.
        """
        if not isinstance(other, ParityStats):
            raise TypeError(f"can only merge ParityStats, got {type(other).__name__}")
        if (self.atol, self.rtol) != (other.atol, other.rtol):
            raise ValueError(
                f"cannot merge stats taken at different tolerances: atol={self.atol}, rtol={self.rtol} "
                f"vs atol={other.atol}, rtol={other.rtol}"
            )
        if self.dtypes != other.dtypes:
            raise ValueError(f"cannot merge stats of different dtypes: {self.dtypes} vs {other.dtypes}")
        acc = self._acc.merged(other._acc, self.numel)
        if len(self.shape) >= 1 and len(other.shape) >= 1 and self.shape[1:] == other.shape[1:]:
            shape = (self.shape[0] + other.shape[0], *self.shape[1:])
        else:
            shape = (self.numel + other.numel,)
        return ParityStats(acc, shape, self.dtypes, self.atol, self.rtol)

    # ---- output ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready Python values (non-finite floats stay floats: json writes NaN)."""
        return {
            "numel": self.numel,
            "shape": list(self.shape),
            "dtypes": list(self.dtypes),
            "atol": self.atol,
            "rtol": self.rtol,
            "max_abs_diff": self.max_abs_diff,
            "max_abs_index": list(self.max_abs_index),
            "max_rel_diff": self.max_rel_diff,
            "max_rel_index": list(self.max_rel_index),
            "cosine_sim": self.cosine_sim,
            "mismatches": self.mismatches,
            "nonfinite": self.nonfinite,
            "equal_inf": self.equal_inf,
            "mean_abs_diff": self.mean_abs_diff,
            "rmse": self.rmse,
            "snr_db": self.snr_db,
            "pcc": self.pcc,
            "max_ulp_diff": self.max_ulp_diff,
            "ulp_dtype": self.ulp_dtype,
            "abs_diff_histogram": self.abs_diff_histogram,
        }

    def __getstate__(self):
        return (self._acc, self.shape, self.dtypes, self.atol, self.rtol)

    def __setstate__(self, state):
        acc, shape, dtypes, atol, rtol = state
        ParityStats.__init__(self, acc, shape, dtypes, atol, rtol)

    def __eq__(self, other: object) -> bool:
        """Bit-identical: the same accumulated state (NaN fields compare by their bits)."""
        if not isinstance(other, ParityStats):
            return NotImplemented
        return (_bits(self._acc.state()), self.shape, self.dtypes, self.atol, self.rtol) == (
            _bits(other._acc.state()), other.shape, other.dtypes, other.atol, other.rtol)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        n = self.numel
        pct = 100.0 * self.mismatches / n
        one_minus_cos = 1.0 - self.cosine_sim if math.isfinite(self.cosine_sim) else math.nan
        lines = [
            f"ParityStats({self.dtypes[0]} vs {self.dtypes[1]}, shape {self.shape}, {n:,} elements)",
            f"  Mismatched elements: {self.mismatches:,} / {n:,} ({pct:.4g}%) at atol={self.atol:g}, rtol={self.rtol:g}",
            f"  Greatest absolute difference: {self.max_abs_diff:.6g} at index {self.max_abs_index}",
            f"  Greatest relative difference: {self.max_rel_diff:.6g} at index {self.max_rel_index}",
            f"  cosine_sim {self.cosine_sim:.10g} (1 - cos = {one_minus_cos:.3g}), pcc {self.pcc:.10g}",
            f"  mean_abs_diff {self.mean_abs_diff:.6g}, rmse {self.rmse:.6g}, snr_db {self.snr_db:.4g}",
            f"  max_ulp_diff {self.max_ulp_diff:,} ({self.ulp_dtype}), nonfinite {self.nonfinite:,}"
            + (f" ({self.equal_inf:,} equal infinities, set aside)" if self.equal_inf else ""),
        ]
        return "\n".join(lines)


def _bits(value: Any) -> Any:
    """Floats replaced by their IEEE bit patterns, recursively (so NaN == NaN and -0.0 != 0.0)."""
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, tuple):
        return tuple(_bits(v) for v in value)
    return value


def _check_pair(va: TensorView, vb: TensorView) -> None:
    if va.device != vb.device:
        raise ValueError(
            f"a is on {va.device} and b is on {vb.device}: both inputs must live on the same device "
            "(flashparity never copies between host and device)"
        )
    if va.shape != vb.shape:
        raise ValueError(f"a and b must have the same shape (no broadcasting), got {va.shape} and {vb.shape}")
    if va.numel == 0:
        raise ValueError(f"a and b have no elements (shape {va.shape})")


def within_gates(numel: int, mismatches: int, cosine: float | None, max_mismatch_ratio: float,
                 min_cosine: float | None) -> bool:
    """One tensor's verdict, as ``compare`` and ``compare_modules`` give it: at most
    ``max_mismatch_ratio`` of its ``numel`` elements outside tolerance and, when ``min_cosine`` is
    given and the tensor has a cosine (``None``: integers), a cosine of at least that (a NaN cosine
    never reaches it). An empty tensor passes."""
    if numel == 0:
        return True
    ok = mismatches / numel <= max_mismatch_ratio
    if min_cosine is not None and cosine is not None:
        ok = ok and cosine >= min_cosine
    return bool(ok)


def _tolerance(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def parity(a: Any, b: Any, *, atol: float = 0.0, rtol: float = 0.0) -> ParityStats:
    """Compare ``a`` (e.g. a kernel's output) with the reference ``b`` in one fused pass.

    Inputs: NumPy arrays of any strides, ml_dtypes bfloat16, objects exposing
    ``__array_interface__``, ``__cuda_array_interface__`` or ``__dlpack__`` (PyTorch, CuPy);
    float64/float32/float16/bfloat16, possibly different for ``a`` and ``b``. Device inputs are
    reduced on their device. ``mismatches`` counts elements failing
    ``torch.isclose(a, b, rtol=rtol, atol=atol)``.

    Raises ``ValueError`` for different shapes, zero elements, a host/device mix or a bad
    tolerance, and ``TypeError`` for an unsupported dtype.
    """
    atol = _tolerance("atol", atol)
    rtol = _tolerance("rtol", rtol)
    stream = consumer_stream(a)  # where a CUDA reduction runs; DLPack producers are ordered before it
    va, vb = as_view(a, "a", stream), as_view(b, "b", stream)
    _check_pair(va, vb)
    if va.device == "cuda":
        if not hasattr(_core, "parity_cuda"):
            raise RuntimeError("a and b are CUDA tensors but this flashparity build has no CUDA kernels "
                               "(rebuild with FLASHPARITY_CUDA=ON)")
        acc = _core.parity_cuda(va.desc, vb.desc, atol, rtol, stream, vb.stream if vb.stream is not None else stream)
    else:
        acc = _core.parity_host(va.desc, vb.desc, atol, rtol)
    return ParityStats(acc, va.shape, (va.dtype, vb.dtype), atol, rtol)


def max_abs_diff(a: Any, b: Any) -> float:
    """max |a_i - b_i| in float64 (NaN if any difference is NaN; equal infinities differ by 0); the
    same pass as :func:`parity`."""
    return parity(a, b).max_abs_diff


def cosine_sim(a: Any, b: Any) -> float:
    """Cosine similarity of a and b, accumulated in float64; the same pass as :func:`parity`."""
    return parity(a, b).cosine_sim


def assert_parity(actual: Any, expected: Any, *, atol: float, rtol: float, max_abs_diff: float | None = None,
                  min_cosine: float | None = None) -> ParityStats:
    """Raise ``AssertionError`` unless ``actual`` matches ``expected`` (host or device tensors).

    Passes when every element satisfies ``|actual - expected| <= atol + rtol * |expected|``
    (``torch.isclose``; NaN never matches), and, when given, ``max_abs_diff`` bounds the greatest
    absolute difference and ``min_cosine`` the cosine similarity from below. The message follows
    ``torch.testing.assert_close``: mismatched count and percentage, greatest absolute and relative
    difference with their index and what was allowed, cosine, non-finite count. Returns the stats.
    """
    if max_abs_diff is not None:
        max_abs_diff = _tolerance("max_abs_diff", max_abs_diff)
    if min_cosine is not None:
        if isinstance(min_cosine, bool) or not isinstance(min_cosine, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(min_cosine)):
            raise ValueError(f"min_cosine must be a finite number, got {min_cosine!r}")
        min_cosine = float(min_cosine)
    s = parity(actual, expected, atol=atol, rtol=rtol)
    failed = (s.mismatches > 0 or (max_abs_diff is not None and not s.max_abs_diff <= max_abs_diff)
              or (min_cosine is not None and not s.cosine_sim >= min_cosine))
    if not failed:
        return s
    n = s.numel
    abs_allowed = f"up to {s.atol:g} allowed" + (f", at most {max_abs_diff:g} overall" if max_abs_diff is not None else "")
    lines = [
        "Tensor-likes are not close!",
        "",
        f"Mismatched elements: {s.mismatches:,} / {n:,} ({100.0 * s.mismatches / n:.4g}%) at atol={s.atol:g}, rtol={s.rtol:g}",
        f"Greatest absolute difference: {s.max_abs_diff:.6g} at index {s.max_abs_index} ({abs_allowed})",
        f"Greatest relative difference: {s.max_rel_diff:.6g} at index {s.max_rel_index} (up to {s.rtol:g} allowed)",
        f"Cosine similarity: {s.cosine_sim:.10g}" + (f" (at least {min_cosine} required)" if min_cosine is not None else ""),
        f"Non-finite elements (NaN or inf in either input): {s.nonfinite:,}"
        + (f", of which {s.equal_inf:,} equal infinities (exact matches)" if s.equal_inf else ""),
    ]
    raise AssertionError("\n".join(lines))

