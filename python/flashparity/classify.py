"""Classifiers that gate attention-kernel parity, provenance and head-dim errors.

A Python port of apr's flash-attention parity classifier (CRUX-L-02): the same checks in the same
order, the same outcome names and fields. Each classifier is a pure function over a parsed JSON
value (what :func:`json.loads` returns) and never raises on any JSON value.

* :func:`classify_parity_numerics` -- ``max_abs_diff <= tol_abs`` and ``cosine_sim >= tol_cos``
  on an ``apr kernel parity --json`` body.
* :func:`classify_provenance` -- on an ``apr run --attn ... --json`` body: a ``flash2`` run names
  a pinned kernel source, any other run names why it fell back.
* :func:`classify_head_dim_error` -- an error body that rejects an unsupported head_dim says so.

Outcomes are small immutable objects: ``outcome.kind`` is the variant name (``"Ok"``,
``"MissingMaxAbsDiff"``, ...), ``outcome.ok`` is True only for the Ok variants, the variant's
fields are attributes, and ``outcome.to_dict()`` gives ``{"outcome": kind, "ok": bool, **fields}``.
Equality compares kind and fields with ``==`` (so, as in the Rust original, an outcome holding a NaN
is not equal to itself).

Where Python differs from the Rust original (``serde_json::Value``), the port follows the Rust
semantics explicitly:

* ``True``/``False`` are ``int`` in Python but are not JSON numbers: they count as missing.
* An integer too large for a float64 counts as +/-infinity (non-finite), never an exception.
* The provenance pin is checked character by character against ``0-9a-f`` (no ``re.match`` with
  ``$``, which would accept a trailing newline; no ``str.isdigit``/``string.hexdigits``, which
  accept Unicode digits and upper-case hex).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

__all__ = [
    "DEFAULT_MAX_ABS_DIFF",
    "DEFAULT_MIN_COSINE_SIM",
    "KERNEL_SOURCE_PREFIX",
    "Outcome",
    "ParityNumericsOutcome",
    "ProvenanceOutcome",
    "HeadDimErrorOutcome",
    "classify_parity_numerics",
    "classify_provenance",
    "classify_head_dim_error",
    "check_tolerance",
]

#: Default FlashAttention-2 numerical-parity tolerances (Dao 2023 bound).
DEFAULT_MAX_ABS_DIFF = 5e-3
DEFAULT_MIN_COSINE_SIM = 0.9999

#: Canonical kernel-source prefix (the hf-kernels-community FlashAttention-2 release).
KERNEL_SOURCE_PREFIX = "hf-kernels-community:flash-attn2@"

_LOWER_HEX = frozenset("0123456789abcdef")
_SHA_LEN = 40


# ------------------------------------------------------------------------------------------------
# Outcome objects
# ------------------------------------------------------------------------------------------------


class Outcome:
    """Base of every classifier outcome: ``kind``, ``ok``, the variant's fields, ``to_dict()``."""

    __slots__ = ()
    kind: ClassVar[str] = "Outcome"
    ok: ClassVar[bool] = False
    _fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, *, kind: str | None = None, ok: bool = False, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if kind is not None:
            cls.kind = kind
            cls.ok = ok
            cls._fields = tuple(cls.__slots__)  # type: ignore[arg-type]
            cls.__match_args__ = cls._fields

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{self._name()} takes {len(fields)} field(s), got {len(args)}")
        values = dict(zip(fields, args))
        for key, value in kwargs.items():
            if key not in fields:
                raise TypeError(f"{self._name()} has no field {key!r}")
            if key in values:
                raise TypeError(f"{self._name()} got field {key!r} twice")
            values[key] = value
        missing = [f for f in fields if f not in values]
        if missing:
            raise TypeError(f"{self._name()} is missing field(s) {', '.join(missing)}")
        for key in fields:
            object.__setattr__(self, key, values[key])

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{self._name()} is immutable")

    @classmethod
    def _name(cls) -> str:
        family = cls.__mro__[1].__name__ if len(cls.__mro__) > 2 else ""
        return f"{family}.{cls.kind}" if family else cls.kind

    def fields(self) -> dict[str, Any]:
        """The variant's fields as a dict, in declaration order."""
        return {f: getattr(self, f) for f in self._fields}

    def to_dict(self) -> dict[str, Any]:
        """``{"outcome": kind, "ok": bool, **fields}``: JSON-ready (NaN/inf as Python floats)."""
        return {"outcome": self.kind, "ok": self.ok, **self.fields()}

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __hash__(self) -> int:
        return hash((type(self), tuple(getattr(self, f) for f in self._fields)))

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{self._name()}({args})"

    def __bool__(self) -> bool:  # an outcome is truthy only when it passed the gate
        return self.ok


class ParityNumericsOutcome(Outcome):
    """Outcome of :func:`classify_parity_numerics` (variants are attributes of this class)."""

    __slots__ = ()


class ProvenanceOutcome(Outcome):
    """Outcome of :func:`classify_provenance` (variants are attributes of this class)."""

    __slots__ = ()


class HeadDimErrorOutcome(Outcome):
    """Outcome of :func:`classify_head_dim_error` (variants are attributes of this class)."""

    __slots__ = ()


class _ParityOk(ParityNumericsOutcome, kind="Ok", ok=True):
    __slots__ = ("max_abs_diff", "cosine_sim")


class _ParityNotAnObject(ParityNumericsOutcome, kind="NotAnObject"):
    __slots__ = ()


class _MissingMaxAbsDiff(ParityNumericsOutcome, kind="MissingMaxAbsDiff"):
    __slots__ = ()


class _MissingCosineSim(ParityNumericsOutcome, kind="MissingCosineSim"):
    __slots__ = ()


class _NonFiniteMaxAbsDiff(ParityNumericsOutcome, kind="NonFiniteMaxAbsDiff"):
    __slots__ = ("got",)


class _NonFiniteCosineSim(ParityNumericsOutcome, kind="NonFiniteCosineSim"):
    __slots__ = ("got",)


class _MaxAbsDiffExceedsTolerance(ParityNumericsOutcome, kind="MaxAbsDiffExceedsTolerance"):
    __slots__ = ("got", "tolerance")


class _CosineSimBelowFloor(ParityNumericsOutcome, kind="CosineSimBelowFloor"):
    __slots__ = ("got", "floor")


class _OkFlash2(ProvenanceOutcome, kind="OkFlash2", ok=True):
    __slots__ = ("sha",)


class _OkFallback(ProvenanceOutcome, kind="OkFallback", ok=True):
    __slots__ = ("reason",)


class _ProvenanceNotAnObject(ProvenanceOutcome, kind="NotAnObject"):
    __slots__ = ()


class _MissingAttnImpl(ProvenanceOutcome, kind="MissingAttnImpl"):
    __slots__ = ()


class _UnknownAttnImpl(ProvenanceOutcome, kind="UnknownAttnImpl"):
    __slots__ = ("got",)


class _KernelSourceMissing(ProvenanceOutcome, kind="KernelSourceMissing"):
    __slots__ = ()


class _KernelSourceMalformed(ProvenanceOutcome, kind="KernelSourceMalformed"):
    __slots__ = ("got",)


class _FallbackMissingWhenNotFlash2(ProvenanceOutcome, kind="FallbackMissingWhenNotFlash2"):
    __slots__ = ("attn_impl",)


class _HeadDimOk(HeadDimErrorOutcome, kind="Ok", ok=True):
    __slots__ = ("error",)


class _HeadDimNotAnObject(HeadDimErrorOutcome, kind="NotAnObject"):
    __slots__ = ()


class _MissingErrorField(HeadDimErrorOutcome, kind="MissingErrorField"):
    __slots__ = ()


class _ErrorDoesNotMentionHeadDim(HeadDimErrorOutcome, kind="ErrorDoesNotMentionHeadDim"):
    __slots__ = ("got",)


def _attach(family: type[Outcome], *variants: type[Outcome]) -> None:
    family.VARIANTS = tuple(v.kind for v in variants)  # type: ignore[attr-defined]
    for v in variants:
        v.__qualname__ = f"{family.__name__}.{v.kind}"
        setattr(family, v.kind, v)


_attach(
    ParityNumericsOutcome,
    _ParityOk,
    _ParityNotAnObject,
    _MissingMaxAbsDiff,
    _MissingCosineSim,
    _NonFiniteMaxAbsDiff,
    _NonFiniteCosineSim,
    _MaxAbsDiffExceedsTolerance,
    _CosineSimBelowFloor,
)
_attach(
    ProvenanceOutcome,
    _OkFlash2,
    _OkFallback,
    _ProvenanceNotAnObject,
    _MissingAttnImpl,
    _UnknownAttnImpl,
    _KernelSourceMissing,
    _KernelSourceMalformed,
    _FallbackMissingWhenNotFlash2,
)
_attach(
    HeadDimErrorOutcome,
    _HeadDimOk,
    _HeadDimNotAnObject,
    _MissingErrorField,
    _ErrorDoesNotMentionHeadDim,
)


# ------------------------------------------------------------------------------------------------
# JSON value accessors with serde_json's semantics
# ------------------------------------------------------------------------------------------------


def _as_f64(value: Any) -> float | None:
    """``Value::as_f64``: a number (never a bool) as a float64, else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if type(value).__name__ in ("bool_", "bool"):  # numpy.bool_ is not a JSON number either
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond float64's range: infinite, not an exception
        return math.inf if value > 0 else -math.inf


def _as_str(value: Any) -> str | None:
    """``Value::as_str``: a string, else None."""
    return value if isinstance(value, str) else None


def check_tolerance(name: str, value: Any) -> float:
    """Validate a gate tolerance: a finite, non-negative number (a NaN would pass every body)."""
    f = _as_f64(value)
    if f is None:
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(f) or f < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return f


# ------------------------------------------------------------------------------------------------
# Classifiers
# ------------------------------------------------------------------------------------------------


def classify_parity_numerics(
    body: Any,
    tol_abs: float = DEFAULT_MAX_ABS_DIFF,
    tol_cos: float = DEFAULT_MIN_COSINE_SIM,
) -> ParityNumericsOutcome:
    """Numerical parity of a kernel against its reference (FALSIFY-CRUX-L-02-002).

    Checks, in order: the body is an object; ``max_abs_diff`` is a number; ``cosine_sim`` is a
    number; each is finite; ``max_abs_diff <= tol_abs``; ``cosine_sim >= tol_cos``.
    ``tol_abs``/``tol_cos`` must be finite and non-negative (``ValueError`` otherwise).
    """
    tol_abs = check_tolerance("tol_abs", tol_abs)
    tol_cos = check_tolerance("tol_cos", tol_cos)
    P = ParityNumericsOutcome
    if not isinstance(body, dict):
        return P.NotAnObject()
    mad = _as_f64(body.get("max_abs_diff"))
    if mad is None:
        return P.MissingMaxAbsDiff()
    cos = _as_f64(body.get("cosine_sim"))
    if cos is None:
        return P.MissingCosineSim()
    if not math.isfinite(mad):
        return P.NonFiniteMaxAbsDiff(got=mad)
    if not math.isfinite(cos):
        return P.NonFiniteCosineSim(got=cos)
    if mad > tol_abs:
        return P.MaxAbsDiffExceedsTolerance(got=mad, tolerance=tol_abs)
    if cos < tol_cos:
        return P.CosineSimBelowFloor(got=cos, floor=tol_cos)
    return P.Ok(max_abs_diff=mad, cosine_sim=cos)


def classify_provenance(body: Any, kernel_source_prefix: str = KERNEL_SOURCE_PREFIX) -> ProvenanceOutcome:
    """Kernel-source provenance and fallback metadata of a run (FALSIFY-CRUX-L-02-003).

    ``attn_impl == "flash2"`` requires ``kernel_source`` to be exactly ``kernel_source_prefix``
    followed by 40 lower-case hex digits; ``attn_impl`` ``"naive"`` or ``"fallback"`` requires a
    non-empty ``fallback`` reason; any other ``attn_impl`` is unknown.
    """
    if not isinstance(kernel_source_prefix, str):
        raise TypeError(f"kernel_source_prefix must be a str, got {kernel_source_prefix!r}")
    P = ProvenanceOutcome
    if not isinstance(body, dict):
        return P.NotAnObject()
    impl = _as_str(body.get("attn_impl"))
    if impl is None:
        return P.MissingAttnImpl()
    if impl == "flash2":
        src = _as_str(body.get("kernel_source"))
        if src is None:
            return P.KernelSourceMissing()
        if not src.startswith(kernel_source_prefix):
            return P.KernelSourceMalformed(got=src)
        sha = src[len(kernel_source_prefix) :]
        if len(sha) != _SHA_LEN or not all(c in _LOWER_HEX for c in sha):
            return P.KernelSourceMalformed(got=src)
        return P.OkFlash2(sha=sha)
    if impl in ("naive", "fallback"):
        reason = _as_str(body.get("fallback"))
        if reason:
            return P.OkFallback(reason=reason)
        return P.FallbackMissingWhenNotFlash2(attn_impl=impl)
    return P.UnknownAttnImpl(got=impl)


def classify_head_dim_error(body: Any) -> HeadDimErrorOutcome:
    """Shape of the error body for an unsupported head_dim (FALSIFY-CRUX-L-02-004).

    The ``error`` string must mention ``unsupported-head-dim``, ``head_dim`` or ``head-dim``
    (the caller checks that the command exited with code 1).
    """
    P = HeadDimErrorOutcome
    if not isinstance(body, dict):
        return P.NotAnObject()
    err = _as_str(body.get("error"))
    if err is None:
        return P.MissingErrorField()
    if "unsupported-head-dim" in err or "head_dim" in err or "head-dim" in err:
        return P.Ok(error=err)
    return P.ErrorDoesNotMentionHeadDim(got=err)
