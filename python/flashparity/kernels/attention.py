"""Attention forward: the naive reference and FlashAttention-2's tiled algorithm (BSHD layout)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np

from .. import _core
from .._tensor import FP8, TensorView, as_view, consumer_stream, host_values, producer_waits

__all__ = ["attention", "attention_backward", "merge_attention_states", "alibi_slopes", "UnsupportedHeadDimError", "IMPLS",
           "FLASH2_MAX_HEAD_DIM"]

IMPLS = ("flash2", "naive")
FLASH2_MAX_HEAD_DIM = _core.FLASH2_MAX_HEAD_DIM
_KERNEL_CODES = {"naive": 0, "flash2": 1}  # AttnImpl in cpp/src/cpu/attention_cpu.h


class UnsupportedHeadDimError(ValueError):
    """head_dim outside what the chosen implementation supports; the message starts with
    ``unsupported-head-dim: got <D>``."""


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16" or name in FP8:
        import ml_dtypes  # (a dependency; imported on first use, not with flashparity)

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def _out_dtype(dtype: str) -> str:
    """The dtype of an attention output for inputs of `dtype`: bfloat16 for FP8 (FlashAttention-3)."""
    return "bfloat16" if dtype in FP8 else dtype


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def _input_views(inputs: dict[str, tuple[Any, str]], stream: int) -> list[TensorView]:
    """Views of the named inputs ({name: (tensor, "[dim, ...]")}) after the checks every attention
    entry point makes: each has the rank its description names, all live on one device and share
    one dtype, and the last two (k and v, or the caches) have one shape."""
    views = []
    for name, (x, what) in inputs.items():
        view = as_view(x, name, stream)
        if len(view.shape) != what.count(",") + 1:
            raise ValueError(f"{name} must be {what}, got {view.shape}")
        views.append(view)
    names = ", ".join(list(inputs)[:-1]) + " and " + list(inputs)[-1]
    if len({v.device for v in views}) > 1:
        raise ValueError(f"{names} must live on one device, got {', '.join(v.device for v in views)}")
    if len({v.dtype for v in views}) > 1:
        raise TypeError(f"{names} must have the same dtype, got {', '.join(v.dtype for v in views)}")
    (kn, vk), (vn, vv) = zip(list(inputs)[-2:], views[-2:])
    if vk.shape != vv.shape:
        raise ValueError(f"{kn} and {vn} must have the same shape, got {vk.shape} and {vv.shape}")
    return views


def _views(q: Any, k: Any, v: Any, stream: int) -> tuple[TensorView, TensorView, TensorView]:
    vq, vk, vv = _input_views({"q": (q, "(batch, seqlen_q, heads_q, head_dim)"),
                               "k": (k, "(batch, seqlen_k, heads_kv, head_dim)"),
                               "v": (v, "(batch, seqlen_k, heads_kv, head_dim)")}, stream)
    if vk.shape[0] != vq.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got {vq.shape[0]} and {vk.shape[0]}")
    if vk.shape[3] != vq.shape[3]:
        raise ValueError(f"q and k must have the same head_dim, got {vq.shape[3]} and {vk.shape[3]}")
    return vq, vk, vv


def alibi_slopes(num_heads: int) -> np.ndarray:
    """The ALiBi paper's slopes for `num_heads` heads (float32): the geometric sequence
    2^(-8/n), 2^(-16/n), ... for the largest power of two n <= num_heads, then every other slope of
    the sequence for 2n, as the reference implementations (and FlashAttention-2's tests) build them."""
    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    n = 1 << (int(num_heads).bit_length() - 1)
    slopes = power_of_two(n)
    if n < num_heads:
        slopes += power_of_two(2 * n)[0::2][: num_heads - n]
    return np.asarray(slopes, dtype=np.float32)


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
    alibi_slopes: Any = None,
    q_descale: Any = None,
    k_descale: Any = None,
    v_descale: Any = None,
):
    """softmax(scale · q kᵀ) v per (batch, head), as FlashAttention-2's forward.

    q: [batch, seqlen_q, heads_q, head_dim]; k, v: [batch, seqlen_k, heads_kv, head_dim] with
    heads_q a multiple of heads_kv (MQA/GQA); any strides. Returns out (q's shape and dtype, a
    NumPy array) or (out, lse) with lse [batch, heads_q, seqlen_q] float32, the natural-log
    sum-exp of each row's scaled (and capped) scores.

    ``causal`` and ``window=(left, right)`` are bottom-right aligned: query i sees key j iff
    ``i + sk - sq - left <= j <= i + sk - sq + right`` (-1: unbounded), causal is (-1, 0).
    ``softcap > 0`` maps scaled scores s to ``softcap * tanh(s / softcap)``. ``alibi_slopes``
    (float32 ``[heads_q]`` or ``[batch, heads_q]``, on q's device or on the host) adds
    FlashAttention-2's ALiBi bias ``-slope * |i + sk - sq - j|`` to the scaled, capped score of query
    i and key j (the lse includes it).

    FP8 inputs (``float8_e4m3fn`` or ``float8_e5m2``, all three alike: ml_dtypes arrays, torch
    tensors through DLPack) follow FlashAttention-3: ``q_descale``, ``k_descale``, ``v_descale``
    (float32 ``[batch, heads_kv]``, host or device; each defaults to ones) dequantize them, the math
    runs on the dequantized values with float32 accumulation (the score of kv head g scaled by
    ``q_descale[b, g] * k_descale[b, g]``, the output by ``v_descale[b, g]``), and the output is
    bfloat16. Descales on other dtypes are an error. A row that sees no key
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
    left, right = _check_options(impl, causal, window, softcap)
    stream = consumer_stream(q)  # where CUDA kernels run; DLPack producers are ordered before it
    vq, vk, vv = _views(q, k, v, stream)
    batch, seqlen_q, heads_q, head_dim = vq.shape
    scale = _check_heads(impl, heads_q, vk.shape[2], head_dim, softmax_scale)

    vout = _out_view(out, vq, (vk, vv), stream) if out is not None else None
    alibi = _alibi(alibi_slopes, batch, heads_q, vq.device, stream)
    descale = _descales((q_descale, k_descale, v_descale), vq.dtype, batch, vk.shape[2])
    if vq.device == "cuda":
        res, lse = _attention_cuda(vq, vk, vv, impl, scale, float(softcap), left, right, return_lse, vout, stream,
                                   alibi, descale)
        res = out if out is not None else res
        return (res, lse) if return_lse else res
    out, out_ptr, lse, lse_ptr = _host_outputs(out, vout, vq, (batch, heads_q, seqlen_q), return_lse)
    if out_ptr or lse_ptr:
        _core.attention_host(
            vq.desc, vk.desc, vv.desc,
            out_ptr,
            lse_ptr,
            _KERNEL_CODES[impl],
            scale, float(softcap), left, right,
            alibi.args,
            descale.args,
        )
    return (out, lse) if return_lse else out


def attention_backward(
    q: Any,
    k: Any,
    v: Any,
    out: Any,
    lse: Any,
    dout: Any,
    *,
    impl: str = "flash2",
    causal: bool = False,
    softmax_scale: float | None = None,
    window: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Any = None,
):
    """The gradients (dq, dk, dv) of :func:`attention` for the output gradient ``dout``, as
    FlashAttention-2's backward.

    q, k, v and the options are those of the forward; ``out`` and ``lse`` are what the forward
    returned for them (``attention(..., return_lse=True)``: out ``[batch, seqlen_q, heads_q,
    head_dim]``, lse float32 ``[batch, heads_q, seqlen_q]``); ``dout`` has out's shape and dtype.
    Returns dq of q's shape and dk, dv of k's, in the inputs' dtype (new C-contiguous NumPy arrays).
    A GQA group's query heads sum into their k and v head. A key outside a row's visible range gets
    nothing from that row, whatever the values on either side; a row that saw no key (lse -inf) gets
    dq 0 and gives nothing.

    ``impl="flash2"`` recomputes the probabilities tile by tile from ``lse`` (FlashAttention-2's
    algorithm: per (batch, kv head) over its key tiles, dQ accumulated on the way, or, with fewer than
    16 (batch, kv head) pairs, a dK/dV pass over key tiles and a dQ pass over query tiles; head_dim
    1..256).
    ``impl="naive"``, the reference, materializes whole rows with its own softmax (``lse`` is read
    for its shape only). Both take D = rowsum(dout * out) from ``out`` as given, in the inputs'
    dtype, as every kernel of that dtype does. Accumulation is float32
    (float64 for float64 inputs; flash2's probabilities come from the float32 lse, so its float64
    gradients carry float32's ~1e-7 relative error there); the gradients are the same bits for any
    thread count. float64, float32, float16 and bfloat16 inputs, on the CPU (every SIMD level).
    The packed variable-length form is :func:`flashparity.attention_varlen_backward`.
    """
    left, right = _check_options(impl, causal, window, softcap)
    stream = consumer_stream(q)
    vq, vk, vv = _views(q, k, v, stream)
    batch, seqlen_q, heads_q, head_dim = vq.shape
    scale = _check_heads(impl, heads_q, vk.shape[2], head_dim, softmax_scale)
    return _backward_host(vq, vk, vv, out, lse, dout, stream, impl=impl, scale=scale, softcap=float(softcap), left=left,
                          right=right, alibi=_alibi(alibi_slopes, batch, heads_q, vq.device, stream),
                          lse_shape=(batch, heads_q, seqlen_q), lse_what="[batch, heads_q, seqlen_q]", what="attention_backward")


def _backward_host(vq: TensorView, vk: TensorView, vv: TensorView, out: Any, lse: Any, dout: Any, stream: int, *,
                   impl: str, scale: float, softcap: float, left: int, right: int, alibi, lse_shape: tuple[int, ...],
                   lse_what: str, what: str, layout: Any = None):
    """The checks of out, dout and lse every backward makes, then the CPU kernels: (dq, dk, dv) as new
    C-contiguous arrays of q's and k's shapes. A varlen `layout` (q, k, v packed, 3-D) runs one
    problem per sequence."""
    if vq.dtype not in ("float64", "float32", "float16", "bfloat16"):
        raise TypeError(f"the attention backward takes float64, float32, float16 and bfloat16 inputs, got {vq.dtype}")
    vout, vdout = (as_view(x, name, stream) for x, name in ((out, "out"), (dout, "dout")))
    for name, view in (("out", vout), ("dout", vdout)):
        if view.device != vq.device:
            raise ValueError(f"{name} must live on q's device ({vq.device}), got {view.device}")
        if view.shape != vq.shape or view.dtype != vq.dtype:
            raise ValueError(f"{name} must have q's shape {vq.shape} and dtype {vq.dtype}, got {view.shape} {view.dtype}")
    if vq.device == "cuda":
        raise NotImplementedError(f"fp.{what} runs on the CPU in this version; got CUDA tensors "
                                  "(copy q, k, v, out, lse and dout to the host)")
    lse_view = as_view(lse, "lse", stream)
    if lse_view.device != "cpu":
        raise ValueError(f"lse must live on the host with q, got {lse_view.device}")
    if lse_view.dtype != "float32" or lse_view.shape != lse_shape:
        raise ValueError(f"lse must be float32 of shape {lse_shape} ({lse_what}: the forward's), got "
                         f"{lse_view.shape} {lse_view.dtype}")
    dq = np.empty(vq.shape, dtype=_numpy_dtype(vq.dtype))
    dk = np.empty(vk.shape, dtype=dq.dtype)
    dv = np.empty(vk.shape, dtype=dq.dtype)
    ptr = lambda a: a.__array_interface__["data"][0] if a.size else 0  # noqa: E731
    if dq.size or dk.size:
        q4, k4, v4, out4, dout4 = (_with_batch(x, 4) for x in (vq, vk, vv, vout, vdout))
        _core.attention_backward_host(q4.desc, k4.desc, v4.desc, out4.desc, dout4.desc, _with_batch(lse_view, 3).desc,
                                      ptr(dq), ptr(dk), ptr(dv), _KERNEL_CODES[impl], scale, softcap, left, right,
                                      alibi.args, layout=layout)
    return dq, dk, dv


def _host_outputs(out: Any, vout: TensorView | None, vq: TensorView, lse_shape: tuple[int, ...], return_lse: bool):
    """(out, its pointer, lse or None, its pointer) for a host call: a new array of q's shape and
    dtype unless the caller gave `out`; pointers 0 for empty outputs."""
    if out is None:
        out = np.empty(vq.shape, dtype=_numpy_dtype(_out_dtype(vq.dtype)))
        out_ptr = out.__array_interface__["data"][0] if out.size else 0
    else:
        out_ptr = vout.ptr if vout.numel else 0
    lse = np.empty(lse_shape, dtype=np.float32) if return_lse else None
    lse_ptr = lse.__array_interface__["data"][0] if lse is not None and lse.size else 0
    return out, out_ptr, lse, lse_ptr


def _check_options(impl: str, causal: Any, window: Any, softcap: Any) -> tuple[int, int]:
    """The checked window bounds (left, right) with causal folded in."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window must be a (left, right) pair, got {window!r}")
    left, right = (_check_int("window[0]", window[0]), _check_int("window[1]", window[1]))
    if left < -1 or right < -1:
        raise ValueError(f"window bounds must be >= -1 (-1: unbounded), got {tuple(window)!r}")
    # A bound past every sequence length is no bound: held at 2^62 it means the same to the kernels and
    # fits their int64 index arithmetic with room to spare (2^63 would not even cross the binding).
    left, right = min(left, 1 << 62), min(right, 1 << 62)
    if causal:
        right = 0 if right < 0 else min(right, 0)
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real) or not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"softcap must be a finite number >= 0, got {softcap!r}")
    return left, right


def _check_heads(impl: str, heads_q: int, heads_kv: int, head_dim: int, softmax_scale: Any) -> float:
    """Checks the head counts and head_dim for `impl`; the softmax scale (default 1/sqrt(head_dim))."""
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
        return 1.0 / math.sqrt(head_dim)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real) or not math.isfinite(softmax_scale):
        raise ValueError(f"softmax_scale must be a finite number, got {softmax_scale!r}")
    return float(softmax_scale)


def _out_view(out: Any, vq: TensorView, inputs: tuple[TensorView, TensorView], stream: int) -> TensorView:
    vout = as_view(out, "out", stream, writable=True)
    if vout.device != vq.device:
        raise ValueError(f"out must live on q's device ({vq.device}), got {vout.device}")
    want = _out_dtype(vq.dtype)
    if vout.shape != vq.shape or vout.dtype != want:
        why = f" (the output dtype of {vq.dtype} inputs)" if want != vq.dtype else ""
        raise ValueError(f"out must have q's shape {vq.shape} and dtype {want}{why}, got {vout.shape} {vout.dtype}")
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


class _Alibi:
    """ALiBi slopes as the kernels take them: (pointer or 0, batch stride, head stride) in elements,
    whether they live on the host, and what keeps them alive."""

    def __init__(self, args: tuple[int, int, int] = (0, 0, 1), on_host: bool = True, view: TensorView | None = None,
                 owner: Any = None):
        self.args, self.on_host, self.view, self.owner = args, on_host, view, owner


def _alibi(slopes: Any, batch: int, heads_q: int, device: str, stream: int) -> _Alibi:
    """Checks `alibi_slopes` (float32 [heads_q] or [batch, heads_q]): host slopes become a contiguous
    [batch, heads_q] copy (tiny) after a finiteness check; device slopes are read in place on q's GPU."""
    if slopes is None:
        return _Alibi()
    if isinstance(slopes, (list, tuple)):  # plain numbers: taken as float32
        slopes = np.asarray(slopes, dtype=np.float32)
    view = as_view(slopes, "alibi_slopes", stream)
    if view.dtype != "float32":
        raise TypeError(f"alibi_slopes must be float32, got {view.dtype}")
    if view.shape not in ((heads_q,), (batch, heads_q)):
        raise ValueError(f"alibi_slopes must have shape ({heads_q},) or ({batch}, {heads_q}) "
                         f"([heads_q] or [batch, heads_q]), got {view.shape}")
    if view.device == "cuda":
        if device != "cuda":
            raise ValueError("alibi_slopes is a CUDA tensor but q, k and v are on the host")
        if any(s % 4 for s in view.strides) or view.ptr % 4:
            raise ValueError(f"alibi_slopes must be aligned to its element size, got strides {view.strides}")
        st = [s // 4 for s in view.strides]
        args = (view.ptr, 0, st[0]) if len(view.shape) == 1 else (view.ptr, st[0], st[1])
        return _Alibi(args if view.numel else (0, 0, 1), on_host=False, view=view, owner=slopes)
    host = np.asarray(slopes, dtype=np.float32)
    if not np.isfinite(host).all():
        bad = host.reshape(-1)[~np.isfinite(host.reshape(-1))][0]
        raise ValueError(f"alibi_slopes must be finite, got {bad}")
    arr = np.ascontiguousarray(np.broadcast_to(host, (batch, heads_q)), dtype=np.float32)
    return _Alibi((arr.__array_interface__["data"][0] if arr.size else 0, heads_q, 1), on_host=True, owner=arr)


class _Descale:
    """FP8 descales as the kernels take them: (pointer to float32 [3, batch, heads_kv] on the host or
    0, plane stride in elements), and the array that holds them."""

    def __init__(self, args: tuple[int, int] = (0, 0), owner: np.ndarray | None = None):
        self.args, self.owner = args, owner


_DESCALE_NAMES = ("q_descale", "k_descale", "v_descale")


def _descales(values: tuple[Any, Any, Any], dtype: str, batch: int, heads_kv: int) -> _Descale:
    """Checks FP8's q/k/v descales (float32 [batch, heads_kv] each, None: ones) into one host array."""
    given = [(i, name, x) for i, (name, x) in enumerate(zip(_DESCALE_NAMES, values)) if x is not None]
    if not given:
        return _Descale()
    if dtype not in FP8:
        raise ValueError(f"{given[0][1]} is for float8 inputs (FlashAttention-3's descales), got {dtype} inputs")
    planes = np.ones((3, batch, heads_kv), np.float32)
    for i, name, x in given:
        host = host_values(x, name, "float32")
        if host.shape != (batch, heads_kv):
            raise ValueError(f"{name} must have shape ({batch}, {heads_kv}) ([batch, heads_kv]), got {host.shape}")
        bad = ~np.isfinite(host)
        if bad.any():
            at = tuple(int(j[0]) for j in np.nonzero(bad))
            raise ValueError(f"{name} must be finite, got {name}[{at[0]}, {at[1]}] = {host[at]}")
        planes[i] = host
    return _Descale((planes.ctypes.data if planes.size else 0, batch * heads_kv), planes)


def _attention_cuda(vq: TensorView, vk: TensorView, vv: TensorView, impl: str, scale: float, softcap: float,
                    left: int, right: int, return_lse: bool, vout: TensorView | None, stream: int,
                    alibi: _Alibi, descale: _Descale):
    if not hasattr(_core, "attention_cuda"):
        raise RuntimeError("q, k and v are CUDA tensors but this flashparity build has no CUDA kernels "
                           "(rebuild with FLASHPARITY_CUDA=ON)")
    # the kernels run on q's stream, after the work queued on k's, v's and out's (an out still being
    # read or written there is not overwritten early); the call returns when the output is complete
    return _core.attention_cuda(vq.desc, vk.desc, vv.desc, _KERNEL_CODES[impl], scale, softcap, left, right,
                                return_lse, stream, vout.ptr if vout is not None and vout.numel else 0,
                                producer_waits(stream, (vq, vk, vv, vout, alibi.view)), alibi.args, alibi.on_host,
                                descale.args)


def _with_batch(view: TensorView, ndim: int) -> TensorView:
    """A view with a leading batch dimension of 1 when it has `ndim` - 1 dimensions."""
    if len(view.shape) == ndim:
        return view
    return dataclasses.replace(view, shape=(1, *view.shape), strides=(0, *view.strides))


def merge_attention_states(o_a: Any, lse_a: Any, o_b: Any, lse_b: Any):
    """Combines two partial attentions over disjoint key sets into one: (o, lse).

    What split-KV and cascade kernels do between their parts (vLLM's ``merge_attn_states``,
    FlashInfer's ``merge_state``), for checking them. o_a, o_b: ``[seqlen, heads, head_dim]`` or
    ``[batch, seqlen, heads, head_dim]`` (one dtype: float64, float32, float16 or bfloat16; any
    strides); lse_a, lse_b: ``[heads, seqlen]`` or ``[batch, heads, seqlen]`` (float32 or float64),
    the layouts :func:`attention` and :func:`attention_varlen` return. Per row,
    ``lse = log(exp(lse_a) + exp(lse_b))`` and ``o = exp(lse_a - lse) o_a + exp(lse_b - lse) o_b``,
    computed in float64 and rounded once to o's dtype (lse to lse's). An lse of -inf is a part that
    saw no key: it weighs 0 and its o values are not read (both -inf: o = 0, lse = -inf); +inf,
    FlashAttention-2's lse for such a row, counts as -inf (as vLLM reads it); NaN propagates.
    Host inputs give NumPy arrays; device tensors run on their GPU and give
    :class:`flashparity._core.DeviceArray` outputs.
    """
    stream = consumer_stream(o_a)
    va, vb = as_view(o_a, "o_a", stream), as_view(o_b, "o_b", stream)
    la, lb = as_view(lse_a, "lse_a", stream), as_view(lse_b, "lse_b", stream)
    if len(va.shape) not in (3, 4):
        raise ValueError(f"o_a must be [seqlen, heads, head_dim] or [batch, seqlen, heads, head_dim], got {va.shape}")
    if vb.shape != va.shape:
        raise ValueError(f"o_b must have o_a's shape {va.shape}, got {vb.shape}")
    if va.dtype != vb.dtype:
        raise TypeError(f"o_a and o_b must have the same dtype, got {va.dtype} and {vb.dtype}")
    want = (*va.shape[:-3], va.shape[-2], va.shape[-3])
    for name, lv in (("lse_a", la), ("lse_b", lb)):
        if lv.shape != want:
            raise ValueError(f"{name} must have shape {want} ([batch,] heads, seqlen of o), got {lv.shape}")
        if lv.dtype not in ("float32", "float64"):
            raise TypeError(f"{name} must be float32 or float64, got {lv.dtype}")
    if la.dtype != lb.dtype:
        raise TypeError(f"lse_a and lse_b must have the same dtype, got {la.dtype} and {lb.dtype}")
    devices = {v.device for v in (va, vb, la, lb)}
    if len(devices) > 1:
        raise ValueError(f"o_a, lse_a, o_b and lse_b must live on one device, got {', '.join(sorted(devices))}")
    args = (_with_batch(va, 4).desc, _with_batch(la, 3).desc, _with_batch(vb, 4).desc, _with_batch(lb, 3).desc)
    if va.device == "cuda":
        if not hasattr(_core, "merge_states_cuda"):
            raise RuntimeError("the inputs are CUDA tensors but this flashparity build has no CUDA kernels "
                               "(rebuild with FLASHPARITY_CUDA=ON)")
        for name, v in (("o_a", va), ("lse_a", la), ("o_b", vb), ("lse_b", lb)):
            if v.numel and (v.ptr % v.itemsize or any(s % v.itemsize for s in v.strides)):
                raise ValueError(f"{name} must be aligned to its element size on the GPU, got strides {v.strides}")
        return _core.merge_states_cuda(*args, list(va.shape), list(la.shape), stream,
                                       producer_waits(stream, (va, la, vb, lb)))
    out = np.empty(va.shape, dtype=_numpy_dtype(va.dtype))
    lse = np.empty(la.shape, dtype=np.dtype(la.dtype))
    _core.merge_states_host(*args, out.__array_interface__["data"][0] if out.size else 0,
                            lse.__array_interface__["data"][0] if lse.size else 0)
    return out, lse
