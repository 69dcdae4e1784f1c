"""Zero-copy views of user tensors for the kernels: (pointer, dtype code, shape, byte strides, device).

Accepted: NumPy arrays (ml_dtypes bfloat16 included), objects with ``__cuda_array_interface__``
(CuPy, PyTorch CUDA tensors), objects with ``__dlpack__`` (PyTorch CPU/CUDA tensors, JAX, ...),
objects with ``__array_interface__``, and anything else :func:`numpy.asarray` accepts. Nothing is
copied: a dtype the kernels do not support is a ``TypeError``, never a silent conversion.
"""

from __future__ import annotations

import math
import operator
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core

# Kernel dtype codes (cpp/include/flashparity/dtype.h).
DTYPE_CODES = {"float64": 0, "float32": 1, "float16": 2, "bfloat16": 3, "float8_e4m3fn": 4, "float8_e5m2": 5}
DTYPE_NAMES = {v: k for k, v in DTYPE_CODES.items()}
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}
#: the FP8 formats (ml_dtypes; torch tensors through DLPack): parity inputs
FP8 = ("float8_e4m3fn", "float8_e5m2")
# ml_dtypes' extension types, recognized by name (their NumPy kind is 'V')
_ML_DTYPES = ("bfloat16", *FP8)


def c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Byte strides of a C-contiguous array of `shape`."""
    acc, out = itemsize, []
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return tuple(reversed(out))

# DLPack device types.
_KDL_CPU, _KDL_CUDA, _KDL_CUDA_HOST, _KDL_CUDA_MANAGED = 1, 2, 3, 13

# CUDA streams as __cuda_array_interface__ v3 and DLPack name them: 1 is the legacy default stream,
# 2 the per-thread default stream, anything larger a cudaStream_t.
LEGACY_DEFAULT_STREAM = 1


def consumer_stream(obj: Any) -> int:
    """The stream a CUDA kernel that reads `obj` first runs on: the producer stream its
    ``__cuda_array_interface__`` (v3) names, else the legacy default stream. Inputs exported
    through DLPack are then asked for that stream (``__dlpack__(stream=...)``), so their producers
    order their work before it, as the DLPack protocol specifies."""
    try:
        cai = obj.__cuda_array_interface__
    except Exception:  # no CAI (NumPy, DLPack-only objects), or one PyTorch refuses (bfloat16)
        return LEGACY_DEFAULT_STREAM
    stream = _cai_stream(cai)
    return stream if stream is not None and stream > 0 else LEGACY_DEFAULT_STREAM


def _cai_stream(cai: Any) -> int | None:
    """The producer stream a ``__cuda_array_interface__`` dict names (version 3), or None."""
    if not isinstance(cai, dict) or not isinstance(cai.get("version", 0), int) or cai.get("version", 0) < 3:
        return None
    stream = cai.get("stream")
    if stream is None or isinstance(stream, bool):
        return None
    try:
        return operator.index(stream)  # an int, or an integer type such as numpy.int64
    except TypeError:
        return None


@dataclass(frozen=True)
class TensorView:
    """What a kernel needs to read a tensor in place; `owner` keeps the memory alive."""

    ptr: int
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # bytes
    device: str  # "cpu" or "cuda"
    device_id: int  # -1: not known until a CUDA kernel asks the pointer
    owner: Any
    stream: int | None = None  # producer's CUDA stream when the protocol gave one

    @property
    def desc(self) -> tuple:
        return (self.ptr, DTYPE_CODES[self.dtype], self.shape, self.strides)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype]

    @property
    def c_contiguous(self) -> bool:
        return all(n == 1 or st == e for n, st, e in zip(self.shape, self.strides, c_strides(self.shape, self.itemsize)))

    @property
    def extent(self) -> tuple[int, int]:
        """The byte range [lo, hi) the view touches."""
        if self.numel == 0:
            return (self.ptr, self.ptr)
        lo = self.ptr + sum(st * (n - 1) for st, n in zip(self.strides, self.shape) if st < 0)
        hi = self.ptr + sum(st * (n - 1) for st, n in zip(self.strides, self.shape) if st > 0) + self.itemsize
        return (lo, hi)


def producer_waits(stream: int, views: tuple[TensorView | None, ...]) -> list[int]:
    """The producer streams (from ``__cuda_array_interface__`` v3) a kernel running on `stream` must
    be ordered after: each one named, other than `stream`, once."""
    after: list[int] = []
    for view in views:
        s = view.stream if view is not None else None
        if s is not None and s != stream and s not in after:
            after.append(int(s))
    return after


def _unsupported(name: str, dtype: Any) -> TypeError:
    return TypeError(
        f"{name} has dtype {dtype}; supported dtypes are float64, float32, float16, bfloat16, "
        "float8_e4m3fn and float8_e5m2 (integer, bool and complex tensors are not compared)"
    )


# dtypes already accepted, and their names: NumPy computes dtype.name in Python (~10 µs for the
# checks below), which was most of a small comparison's time
_ACCEPTED: dict[np.dtype, str] = {}


def _numpy_dtype_name(arr: np.ndarray, name: str) -> str:
    dt = arr.dtype
    known = _ACCEPTED.get(dt)
    if known is not None:
        return known
    if dt.name not in _ML_DTYPES:  # ml_dtypes.bfloat16, float8_e4m3fn, float8_e5m2 are accepted as they are
        if dt.kind != "f" or dt.name not in DTYPE_CODES:
            raise _unsupported(name, dt)
        if not dt.isnative:
            raise TypeError(f"{name} has non-native byte order ({dt.str}); convert it with {name}.astype('{dt.newbyteorder('=').str}')")
    _ACCEPTED[dt] = dt.name
    return dt.name


def _from_numpy(arr: np.ndarray, name: str) -> TensorView:
    dtype = _numpy_dtype_name(arr, name)
    ptr = arr.__array_interface__["data"][0] if arr.size else 0
    return TensorView(ptr, dtype, tuple(arr.shape), tuple(arr.strides), "cpu", 0, arr)


def _from_cuda_array_interface(obj: Any, cai: dict, name: str) -> TensorView:
    # validated before anything can read the pointer: a malformed description is a TypeError or
    # ValueError naming what is wrong
    if not isinstance(cai, dict):
        raise TypeError(f"{name}.__cuda_array_interface__ is not a dict ({type(cai).__name__})")
    try:
        typestr, shape, data = cai["typestr"], tuple(cai["shape"]), cai["data"]
        dt = np.dtype(typestr)
        shape = tuple(operator.index(s) for s in shape)
        ptr = operator.index(data[0])
        strides = cai.get("strides")
        strides = None if strides is None else tuple(operator.index(s) for s in strides)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise TypeError(f"{name} has a malformed __cuda_array_interface__ ({type(exc).__name__}: {exc})") from None
    if dt.kind != "f" or dt.name not in DTYPE_CODES:
        raise _unsupported(name, dt)
    if not dt.isnative:
        raise TypeError(f"{name} has non-native byte order ({typestr})")
    if any(s < 0 for s in shape):
        raise ValueError(f"{name} has a negative dimension in its shape {shape}")
    if strides is not None and len(strides) != len(shape):
        raise ValueError(f"{name} has {len(strides)} strides for {len(shape)} dimensions")
    if ptr == 0 and math.prod(shape) > 0:
        raise ValueError(f"{name} has a null data pointer and {math.prod(shape)} elements")
    if strides is None:  # C-contiguous
        strides = c_strides(shape, dt.itemsize)
    stream = _cai_stream(cai)
    # the device is read from the pointer by the CUDA glue, when (and only if) a kernel runs
    return TensorView(ptr, dt.name, shape, tuple(strides), "cuda", -1, obj, stream)


def _from_dlpack(obj: Any, name: str, stream: int) -> TensorView:
    dev_type, dev_id = obj.__dlpack_device__()
    if dev_type in (_KDL_CUDA, _KDL_CUDA_MANAGED):
        # the stream the kernel will run on: the producer orders its pending work before it (an
        # explicit integer, never None, whose meaning PyTorch versions have changed)
        capsule = obj.__dlpack__(stream=stream)
        device = "cuda"
    elif dev_type in (_KDL_CPU, _KDL_CUDA_HOST):
        capsule = obj.__dlpack__()
        device = "cpu"
    else:
        raise TypeError(f"{name} lives on DLPack device type {dev_type}; only CPU and CUDA tensors are supported")
    ptr, code, shape, strides, _, dl_id, owner = _core.from_dlpack(capsule, name)
    return TensorView(ptr, DTYPE_NAMES[code], tuple(shape), tuple(strides), device, dl_id, (obj, owner))


def host_values(obj: Any, name: str, dtype: str) -> np.ndarray:
    """A small tensor's values on the host as a C-contiguous NumPy array of `dtype` (the int32 and
    float32 metadata of attention calls: cu_seqlens, block tables, descales). Lists are converted;
    arrays must have `dtype` (TypeError); CUDA tensors (``__cuda_array_interface__``, contiguous) are
    copied to the host."""
    want = np.dtype(dtype)
    if isinstance(obj, (list, tuple)):
        return np.asarray(obj, dtype=want)
    try:
        cai = obj.__cuda_array_interface__
    except Exception:  # noqa: BLE001 - no interface (NumPy, CPU tensors), or one refused for the dtype
        cai = None
    if isinstance(cai, dict):
        try:
            got = np.dtype(cai["typestr"])
            shape = tuple(operator.index(s) for s in cai["shape"])
            ptr = operator.index(cai["data"][0])
            strides = cai.get("strides")
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise TypeError(f"{name} has a malformed __cuda_array_interface__ ({type(exc).__name__}: {exc})") from None
        if got != want:
            raise TypeError(f"{name} must be {want.name}, got {got.name}")
        if strides is not None and tuple(strides) != c_strides(shape, want.itemsize):
            raise ValueError(f"{name} must be contiguous on the device, got strides {tuple(strides)}")
        n = math.prod(shape)
        if not hasattr(_core, "copy_device_to_host"):
            raise RuntimeError(f"{name} is a CUDA tensor but this flashparity build has no CUDA kernels")
        # (after the work queued on the producer stream the interface names, if it names one)
        raw = _core.copy_device_to_host(ptr, n * want.itemsize, _cai_stream(cai) or 0) if n else b""
        return np.frombuffer(raw, dtype=want).reshape(shape).copy()
    arr = np.asarray(obj)
    if arr.dtype != want:
        raise TypeError(f"{name} must be {want.name}, got {arr.dtype}")
    return np.ascontiguousarray(arr)


def _plain_torch(obj: Any, name: str, writable: bool) -> Any:
    """A torch tensor as the values it shows. torch's DLPack and CUDA array interface export the
    memory and drop the lazy negative and conjugate bits (``x.conj().imag`` is a view whose memory
    holds +imag), so such a tensor is resolved first (a copy: the values it shows exist nowhere
    else); one that requires grad is detached (a view: nothing is copied). A tensor to be written
    (`writable`: an ``out=``) is refused instead: a copy would take the output, not the tensor."""
    torch = sys.modules.get("torch")  # (not imported: obj is no torch tensor)
    if torch is None or not isinstance(obj, torch.Tensor):
        return obj
    if writable:
        for flag, what in (("is_neg", "the negative bit"), ("is_conj", "the conjugate bit"),
                           ("requires_grad", "requires_grad")):
            value = getattr(obj, flag)
            if value() if callable(value) else value:
                raise ValueError(f"{name} has {what} set: outputs are written in place, so pass a tensor "
                                 "without it (a fresh torch.empty_like, or under torch.no_grad())")
        return obj
    if obj.requires_grad:
        obj = obj.detach()
    if obj.is_neg():
        obj = obj.resolve_neg()
    if obj.is_conj():
        obj = obj.resolve_conj()
    return obj


def as_view(obj: Any, name: str, stream: int = LEGACY_DEFAULT_STREAM, writable: bool = False) -> TensorView:
    """A zero-copy TensorView of `obj` (see the module docstring for what is accepted). `stream`:
    the CUDA stream the consuming kernel runs on, passed to a CUDA tensor's ``__dlpack__``;
    `writable`: the view will be written (torch tensors with lazy bits are refused, not resolved)."""
    if isinstance(obj, np.ndarray):
        return _from_numpy(obj, name)
    obj = _plain_torch(obj, name, writable)
    try:
        cai = obj.__cuda_array_interface__
    except AttributeError:
        cai = None
    except Exception:  # e.g. PyTorch refuses CAI for bfloat16: DLPack below still works
        cai = None
    has_dlpack = hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__")
    if cai is not None and not (has_dlpack and _cai_stream(cai) is None):
        return _from_cuda_array_interface(obj, cai, name)
    # (an interface that names no stream, such as PyTorch's version 2, gives no ordering: DLPack,
    # asked for the kernel's stream, does)
    if has_dlpack:
        return _from_dlpack(obj, name, stream)
    if isinstance(obj, (bool, int, complex, np.generic)) and not isinstance(obj, np.floating):
        raise _unsupported(name, np.asarray(obj).dtype)  # (a Python float is a 0-d float64 array below)
    try:
        arr = np.asarray(obj)
    except Exception as exc:
        raise TypeError(f"{name} is not an array or tensor ({type(obj).__name__}): {exc}") from None
    if arr.dtype == object:
        raise TypeError(f"{name} is not an array or tensor ({type(obj).__name__})")
    return _from_numpy(arr, name)
