"""Attention forward: the naive reference and FlashAttention-2's tiled algorithm (BSHD layout)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import _core
from ._tensor import TensorView, as_view, consumer_stream, producer_waits

__all__ = ["attention", "UnsupportedHeadDimError", "IMPLS", "FLASH2_MAX_HEAD_DIM"]

IMPLS = ("flash2", "naive")
FLASH2_MAX_HEAD_DIM = _core.FLASH2_MAX_HEAD_DIM
_KERNEL_CODES = {"naive": 0, "flash2": 1}  # AttnImpl in cpp/src/attention_cpu.h


class UnsupportedHeadDimError(ValueError):
    """head_dim outside what the chosen implementation supports; the message starts with
    ``unsupported-head-dim: got <D>``."""


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:  # pragma: no cover - ml_dtypes comes with every bfloat16 NumPy input
            raise TypeError("bfloat16 attention needs ml_dtypes for its output array (pip install ml_dtypes)") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def _views(q: Any, k: Any, v: Any, stream: int) -> tuple[TensorView, TensorView, TensorView]:
    vq, vk, vv = as_view(q, "q", stream), as_view(k, "k", stream), as_view(v, "v", stream)
    for name, view, what in (("q", vq, "(batch, seqlen_q, heads_q, head_dim)"),
                             ("k", vk, "(batch, seqlen_k, heads_kv, head_dim)"),
                             ("v", vv, "(batch, seqlen_k, heads_kv, head_dim)")):
        if len(view.shape) != 4:
            raise ValueError(f"{name} must be {what}, got {view.shape}")
    devices = {vq.device, vk.device, vv.device}
    if len(devices) > 1:
        raise ValueError(f"q, k and v must live on one device, got {vq.device}, {vk.device}, {vv.device}")
    if not (vq.dtype == vk.dtype == vv.dtype):
        raise TypeError(f"q, k and v must have the same dtype, got {vq.dtype}, {vk.dtype}, {vv.dtype}")
    if vk.shape != vv.shape:
        raise ValueError(f"k and v must have the same shape, got {vk.shape} and {vv.shape}")
    if vk.shape[0] != vq.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got {vq.shape[0]} and {vk.shape[0]}")
    if vk.shape[3] != vq.shape[3]:
        raise ValueError(f"q and k must have the same head_dim, got {vq.shape[3]} and {vk.shape[3]}")
    return vq, vk, vv


def attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    impl: str = "flash2",
    causal: bool = False,
    softmax_scale: float | None = None,
    window: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    return_lse: bool = False,
    out: Any = None,
):
    """softmax(scale · q kᵀ) v per (batch, head), as FlashAttention-2's forward.

    q: [batch, seqlen_q, heads_q, head_dim]; k, v: [batch, seqlen_k, heads_kv, head_dim] with
    heads_q a multiple of heads_kv (MQA/GQA); any strides. Returns out (q's shape and dtype, a
    NumPy array) or (out, lse) with lse [batch, heads_q, seqlen_q] float32, the natural-log
    sum-exp of each row's scaled (and capped) scores.

    ``causal`` and ``window=(left, right)`` are bottom-right aligned: query i sees key j iff
    ``i + sk - sq - left <= j <= i + sk - sq + right`` (-1: unbounded), causal is (-1, 0).
    ``softcap > 0`` maps scaled scores s to ``softcap * tanh(s / softcap)``. A row that sees no key
    gives output 0 and lse -inf. A key outside a row's visible range contributes nothing to it,
    whatever its values (inf or NaN in masked K/V never reach the row); non-finite values in keys
    the row sees propagate to it. ``impl="naive"`` materializes score rows (any head_dim);
    ``impl="flash2"`` tiles with an online softmax (head_dim 1..256, else
    :class:`UnsupportedHeadDimError`). Accumulation is float32 (float64 for float64 inputs).

    ``out``: a C-contiguous array of q's shape and dtype on q's device to write the output into
    (returned in place of a new array); it must not overlap q, k or v.

    Device tensors (``__cuda_array_interface__`` / ``__dlpack__``) run on their GPU, on q's
    stream (else the legacy default stream) after the work queued on k's, v's and out's streams
    (DLPack producers are asked for that stream), and return
    :class:`flashparity._core.DeviceArray` outputs (zero-copy to PyTorch/CuPy). On the GPU flash2
    runs float16/bfloat16 on tensor cores (``mma.sync`` m16n8k16, float32 accumulators; compute
    capability 8.0+) and float32/float64 on FMA units (no tf32), with split-KV for decode.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window must be a (left, right) pair, got {window!r}")
    left, right = (_check_int("window[0]", window[0]), _check_int("window[1]", window[1]))
    if left < -1 or right < -1:
        raise ValueError(f"window bounds must be >= -1 (-1: unbounded), got {tuple(window)!r}")
    if causal:
        right = 0 if right < 0 else min(right, 0)
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real) or not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"softcap must be a finite number >= 0, got {softcap!r}")

    stream = consumer_stream(q)  # where CUDA kernels run; DLPack producers are ordered before it
    vq, vk, vv = _views(q, k, v, stream)
    batch, seqlen_q, heads_q, head_dim = vq.shape
    heads_kv = vk.shape[2]
    if head_dim < 1:
        raise ValueError(f"head_dim must be >= 1, got {head_dim}")
    if heads_kv < 1 or heads_q % heads_kv != 0:
        raise ValueError(f"heads_q ({heads_q}) must be a multiple of heads_kv ({heads_kv})")
    if impl == "flash2" and head_dim > FLASH2_MAX_HEAD_DIM:
        raise UnsupportedHeadDimError(
            f"unsupported-head-dim: got {head_dim}, flash2 supports head_dim 1..{FLASH2_MAX_HEAD_DIM} "
            "(impl='naive' supports any head_dim)"
        )
    if softmax_scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    else:
        if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real) or not math.isfinite(softmax_scale):
            raise ValueError(f"softmax_scale must be a finite number, got {softmax_scale!r}")
        scale = float(softmax_scale)

    vout = _out_view(out, vq, (vk, vv), stream) if out is not None else None
    if vq.device == "cuda":
        res, lse = _attention_cuda(vq, vk, vv, impl, scale, float(softcap), left, right, return_lse, vout, stream)
        res = out if out is not None else res
        return (res, lse) if return_lse else res
    if out is None:
        out = np.empty(vq.shape, dtype=_numpy_dtype(vq.dtype))
        out_ptr = out.__array_interface__["data"][0] if out.size else 0
    else:
        out_ptr = vout.ptr if vout.numel else 0
    lse = np.empty((batch, heads_q, seqlen_q), dtype=np.float32) if return_lse else None
    if out_ptr or (lse is not None and lse.size):
        _core.attention_host(
            vq.desc, vk.desc, vv.desc,
            out_ptr,
            lse.__array_interface__["data"][0] if lse is not None and lse.size else 0,
            _KERNEL_CODES[impl],
            scale, float(softcap), left, right,
        )
    return (out, lse) if return_lse else out


def _out_view(out: Any, vq: TensorView, inputs: tuple[TensorView, TensorView], stream: int) -> TensorView:
    vout = as_view(out, "out", stream)
    if vout.device != vq.device:
        raise ValueError(f"out must live on q's device ({vq.device}), got {vout.device}")
    if vout.shape != vq.shape or vout.dtype != vq.dtype:
        raise ValueError(f"out must have q's shape {vq.shape} and dtype {vq.dtype}, got {vout.shape} {vout.dtype}")
    if not vout.c_contiguous:
        raise ValueError(f"out must be C-contiguous, got strides {vout.strides}")
    if vout.numel and vout.ptr % vout.itemsize:
        raise ValueError(f"out must be aligned to its element size ({vout.itemsize} bytes), got address {vout.ptr:#x}")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError("out is read-only")
    cai = getattr(out, "__cuda_array_interface__", None) if vout.device == "cuda" else None
    if isinstance(cai, dict) and cai.get("data", (0, False))[1]:
        raise ValueError("out is read-only (its __cuda_array_interface__ says so)")
    lo, hi = vout.extent
    for name, v in zip("qkv", (vq, *inputs)):
        vlo, vhi = v.extent
        if lo < vhi and vlo < hi:
            raise ValueError(f"out overlaps {name}; give a separate output buffer")
    return vout


def _attention_cuda(vq: TensorView, vk: TensorView, vv: TensorView, impl: str, scale: float, softcap: float,
                    left: int, right: int, return_lse: bool, vout: TensorView | None, stream: int):
    if not hasattr(_core, "attention_cuda"):
        raise RuntimeError("q, k and v are CUDA tensors but this flashparity build has no CUDA kernels "
                           "(rebuild with FLASHPARITY_CUDA=ON)")
    # the kernels run on q's stream, after the work queued on k's, v's and out's (an out still being
    # read or written there is not overwritten early); the call returns when the output is complete
    return _core.attention_cuda(vq.desc, vk.desc, vv.desc, _KERNEL_CODES[impl], scale, softcap, left, right,
                                return_lse, stream, vout.ptr if vout is not None and vout.numel else 0,
                                producer_waits(stream, (vq, vk, vv, vout)))
