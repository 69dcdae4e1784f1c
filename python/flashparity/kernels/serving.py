"""Attention as serving engines run it: packed variable-length batches (:func:`attention_varlen`,
its gradients :func:`attention_varlen_backward`) and dense or paged KV caches
(:func:`attention_kvcache`), with FlashAttention-2's Python API.

Each sequence becomes a problem of its own for the same kernels :func:`attention` runs (naive and
flash2, every CPU level, the CUDA kernels), reading its rows in place: a packed batch at its
offsets, a paged cache through its block table. The metadata (cu_seqlens, cache_seqlens,
block_table) is checked on the host first; a bad value is a ``ValueError`` that names it.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .. import _core
from .._tensor import TensorView, consumer_stream, host_values, producer_waits
from .attention import (
    _KERNEL_CODES,
    _alibi,
    _backward_host,
    _descales,
    _input_views,
    _check_heads,
    _check_options,
    _host_outputs,
    _out_view,
    _with_batch,
)

__all__ = ["attention_varlen", "attention_varlen_backward", "attention_kvcache"]


def _check_cu_seqlens(cu: np.ndarray, name: str, total: int, packed: str) -> None:
    if cu.ndim != 1 or cu.size < 1:
        raise ValueError(f"{name} must be a 1-D int32 array of batch + 1 offsets, got shape {cu.shape}")
    if cu[0] != 0:
        raise ValueError(f"{name} must start at 0, got {name}[0] = {cu[0]}")
    down = np.nonzero(np.diff(cu.astype(np.int64)) < 0)[0]
    if down.size:
        i = int(down[0]) + 1
        raise ValueError(f"{name} must not decrease, got {name}[{i}] = {cu[i]} after {name}[{i - 1}] = {cu[i - 1]}")
    if cu[-1] != total:
        raise ValueError(f"{name} must end at {packed}'s packed length {total}, got {name}[{cu.size - 1}] = {cu[-1]}")


def _check_max_seqlen(value: Any, name: str, longest: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < longest:
        raise ValueError(f"{name} ({value}) is below the longest sequence ({longest})")


def _run(vq: TensorView, vk: TensorView, vv: TensorView, *, impl: str, scale: float, softcap: float, left: int,
         right: int, alibi, descale, layout: _core.SeqLayout, return_lse: bool, lse_shape: tuple[int, ...], out: Any,
         vout: TensorView | None, stream: int):
    q4, k4, v4 = (_with_batch(x, 4) for x in (vq, vk, vv))
    if vq.device == "cuda":
        if not hasattr(_core, "attention_seqs_cuda"):
            raise RuntimeError("q, k and v are CUDA tensors but this flashparity build has no CUDA kernels "
                               "(rebuild with FLASHPARITY_CUDA=ON)")
        res, lse = _core.attention_seqs_cuda(
            q4.desc, k4.desc, v4.desc, _KERNEL_CODES[impl], scale, softcap, left, right, return_lse, stream,
            vout.ptr if vout is not None and vout.numel else 0, producer_waits(stream, (vq, vk, vv, vout, alibi.view)),
            alibi.args, alibi.on_host, layout, list(vq.shape), list(lse_shape), descale.args)
        res = out if out is not None else res
        return (res, lse) if return_lse else res
    out, out_ptr, lse, lse_ptr = _host_outputs(out, vout, vq, lse_shape, return_lse)
    if out_ptr or lse_ptr:
        _core.attention_seqs_host(q4.desc, k4.desc, v4.desc, out_ptr, lse_ptr, _KERNEL_CODES[impl], scale, softcap,
                                  left, right, alibi.args, layout, descale.args)
    return (out, lse) if return_lse else out


def attention_varlen(
    q: Any,
    k: Any,
    v: Any,
    cu_seqlens_q: Any,
    cu_seqlens_k: Any,
    *,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    impl: str = "flash2",
    causal: bool = False,
    softmax_scale: float | None = None,
    window: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Any = None,
    return_lse: bool = False,
    out: Any = None,
    q_descale: Any = None,
    k_descale: Any = None,
    v_descale: Any = None,
):
    """Attention over a packed batch of sequences of different lengths (FlashAttention-2's
    ``flash_attn_varlen_func``).

    q: ``[total_q, heads_q, head_dim]``; k, v: ``[total_k, heads_kv, head_dim]``; sequence b is
    rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` of q and ``cu_seqlens_k[b]:cu_seqlens_k[b+1]`` of k
    and v (int32 ``[batch + 1]``, starting at 0, non-decreasing, ending at the packed length; on the
    host or the device). Every option of :func:`attention` applies per sequence (causal and window
    bottom-right aligned to each sequence's own lengths; ``alibi_slopes`` ``[heads_q]`` or
    ``[batch, heads_q]``; FP8 inputs with ``q/k/v_descale`` ``[batch, heads_kv]``). Returns out
    ``[total_q, heads_q, head_dim]`` in q's dtype (bfloat16 for FP8), or (out, lse) with lse
    ``[heads_q, total_q]`` float32. ``max_seqlen_q``/``max_seqlen_k`` are checked (not
    needed): a value below the longest sequence is an error.
    """
    left, right = _check_options(impl, causal, window, softcap)
    stream = consumer_stream(q)
    vq, vk, vv = _input_views({"q": (q, "[total_q, heads_q, head_dim]"), "k": (k, "[total_k, heads_kv, head_dim]"),
                               "v": (v, "[total_k, heads_kv, head_dim]")}, stream)
    if vk.shape[2] != vq.shape[2]:
        raise ValueError(f"q and k must have the same head_dim, got {vq.shape[2]} and {vk.shape[2]}")
    total_q, heads_q, head_dim = vq.shape
    scale = _check_heads(impl, heads_q, vk.shape[1], head_dim, softmax_scale)
    # (cu_q and cu_k hold the arrays the layout points into until the kernels are done)
    cu_q, cu_k, layout = _varlen_layout(vq, vk, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    batch = cu_q.size - 1
    alibi = _alibi(alibi_slopes, batch, heads_q, vq.device, stream)
    descale = _descales((q_descale, k_descale, v_descale), vq.dtype, batch, vk.shape[1])
    vout = _out_view(out, vq, (vk, vv), stream) if out is not None else None
    return _run(vq, vk, vv, impl=impl, scale=scale, softcap=float(softcap), left=left, right=right, alibi=alibi,
                descale=descale, layout=layout, return_lse=return_lse, lse_shape=(heads_q, total_q), out=out, vout=vout,
                stream=stream)


def _varlen_layout(vq: TensorView, vk: TensorView, cu_seqlens_q: Any, cu_seqlens_k: Any, max_seqlen_q: Any,
                   max_seqlen_k: Any):
    """The checked cu_seqlens of a packed batch (host int32 copies) and its SeqLayout (which points
    into them: keep the arrays alive while it is used)."""
    cu_q = host_values(cu_seqlens_q, "cu_seqlens_q", "int32")
    cu_k = host_values(cu_seqlens_k, "cu_seqlens_k", "int32")
    _check_cu_seqlens(cu_q, "cu_seqlens_q", vq.shape[0], "q")
    _check_cu_seqlens(cu_k, "cu_seqlens_k", vk.shape[0], "k")
    if cu_k.size != cu_q.size:
        raise ValueError(f"cu_seqlens_k must have as many offsets as cu_seqlens_q ({cu_q.size}), got {cu_k.size}")
    _check_max_seqlen(max_seqlen_q, "max_seqlen_q", int(np.diff(cu_q).max(initial=0)))
    _check_max_seqlen(max_seqlen_k, "max_seqlen_k", int(np.diff(cu_k).max(initial=0)))
    layout = _core.SeqLayout(batch=cu_q.size - 1, cu_seqlens_q=cu_q.ctypes.data, cu_seqlens_k=cu_k.ctypes.data)
    return cu_q, cu_k, layout


def attention_varlen_backward(
    q: Any,
    k: Any,
    v: Any,
    out: Any,
    lse: Any,
    dout: Any,
    cu_seqlens_q: Any,
    cu_seqlens_k: Any,
    *,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    impl: str = "flash2",
    causal: bool = False,
    softmax_scale: float | None = None,
    window: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Any = None,
):
    """The gradients (dq, dk, dv) of :func:`attention_varlen` for the output gradient ``dout``
    (FlashAttention-2's ``flash_attn_varlen_func`` backward).

    q ``[total_q, heads_q, head_dim]``, k and v ``[total_k, heads_kv, head_dim]``, ``cu_seqlens_q``,
    ``cu_seqlens_k`` and the options are those of the forward; ``out`` and ``lse`` are what
    ``attention_varlen(..., return_lse=True)`` returned for them (out ``[total_q, heads_q, head_dim]``,
    lse float32 ``[heads_q, total_q]``); ``dout`` has out's shape and dtype. Returns dq of q's shape
    and dk, dv of k's, in the inputs' dtype (new C-contiguous NumPy arrays). Each sequence is a
    problem of its own, as in the forward: its rows see its keys only, causal and window bottom-right
    aligned to its own lengths; a sequence without keys gets dq 0, one without queries dk and dv 0.
    Everything else is :func:`attention_backward`'s, applied per sequence (the same kernels, the
    same bits as the batched backward for a batch of equal lengths, and for any thread count).
    """
    left, right = _check_options(impl, causal, window, softcap)
    stream = consumer_stream(q)
    vq, vk, vv = _input_views({"q": (q, "[total_q, heads_q, head_dim]"), "k": (k, "[total_k, heads_kv, head_dim]"),
                               "v": (v, "[total_k, heads_kv, head_dim]")}, stream)
    if vk.shape[2] != vq.shape[2]:
        raise ValueError(f"q and k must have the same head_dim, got {vq.shape[2]} and {vk.shape[2]}")
    total_q, heads_q, head_dim = vq.shape
    scale = _check_heads(impl, heads_q, vk.shape[1], head_dim, softmax_scale)
    # (cu_q and cu_k hold the arrays the layout points into until the kernels are done)
    cu_q, cu_k, layout = _varlen_layout(vq, vk, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    alibi = _alibi(alibi_slopes, cu_q.size - 1, heads_q, vq.device, stream)
    return _backward_host(vq, vk, vv, out, lse, dout, stream, impl=impl, scale=scale, softcap=float(softcap), left=left,
                          right=right, alibi=alibi, lse_shape=(heads_q, total_q), lse_what="[heads_q, total_q]",
                          what="attention_varlen_backward", layout=layout)


def attention_kvcache(
    q: Any,
    k_cache: Any,
    v_cache: Any,
    cache_seqlens: Any,
    *,
    block_table: Any = None,
    impl: str = "flash2",
    causal: bool = False,
    softmax_scale: float | None = None,
    window: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Any = None,
    return_lse: bool = False,
    out: Any = None,
    q_descale: Any = None,
    k_descale: Any = None,
    v_descale: Any = None,
):
    """Attention of new queries over a KV cache (FlashAttention-2's ``flash_attn_with_kvcache``,
    without appending).

    q: ``[batch, seqlen_q, heads_q, head_dim]``; the cache is dense, k_cache and v_cache
    ``[batch, S_max, heads_kv, head_dim]``, or paged, ``[num_blocks, page_size, heads_kv, head_dim]``
    with ``block_table`` int32 ``[batch, max_blocks]`` (key s of sequence b in block
    ``block_table[b, s // page_size]``, slot ``s % page_size``; any page size >= 1).
    ``cache_seqlens`` (int32 ``[batch]``) gives each sequence's valid keys: the masks are bottom-right
    aligned to it, and keys past it are never read. Pages are read in place, never gathered. Every
    option of :func:`attention` applies (FP8 caches and queries with ``q/k/v_descale``
    ``[batch, heads_kv]``). Returns out (q's shape and dtype; bfloat16 for FP8) or (out, lse) with
    lse ``[batch, heads_q, seqlen_q]`` float32.
    """
    left, right = _check_options(impl, causal, window, softcap)
    stream = consumer_stream(q)
    paged = block_table is not None
    cache_what = "[num_blocks, page_size, heads_kv, head_dim]" if paged else "[batch, S_max, heads_kv, head_dim]"
    vq, vk, vv = _input_views({"q": (q, "[batch, seqlen_q, heads_q, head_dim]"), "k_cache": (k_cache, cache_what),
                               "v_cache": (v_cache, cache_what)}, stream)
    if vk.shape[3] != vq.shape[3]:
        raise ValueError(f"q and k_cache must have the same head_dim, got {vq.shape[3]} and {vk.shape[3]}")
    batch, seqlen_q, heads_q, head_dim = vq.shape
    scale = _check_heads(impl, heads_q, vk.shape[2], head_dim, softmax_scale)
    lens = host_values(cache_seqlens, "cache_seqlens", "int32")
    if lens.shape != (batch,):
        raise ValueError(f"cache_seqlens must have shape ({batch},) ([batch]), got {lens.shape}")
    if (lens < 0).any():
        i = int(np.nonzero(lens < 0)[0][0])
        raise ValueError(f"cache_seqlens must be >= 0, got cache_seqlens[{i}] = {lens[i]}")
    table = np.zeros((0, 0), np.int32)
    if paged:
        table = host_values(block_table, "block_table", "int32")
        num_blocks, page_size = vk.shape[0], vk.shape[1]
        if table.ndim != 2 or table.shape[0] != batch:
            raise ValueError(f"block_table must have shape ({batch}, max_blocks) ([batch, max_blocks]), got {table.shape}")
        if page_size < 1:
            raise ValueError(f"page_size (k_cache.shape[1]) must be >= 1, got {page_size}")
        cap = table.shape[1] * page_size
        over = np.nonzero(lens > cap)[0]
        if over.size:
            i = int(over[0])
            raise ValueError(f"cache_seqlens[{i}] = {lens[i]} exceeds what the block table holds "
                             f"({table.shape[1]} blocks of {page_size} = {cap} keys)")
        used = np.arange(table.shape[1])[None, :] < ((lens.astype(np.int64) + page_size - 1) // page_size)[:, None]
        bad = used & ((table < 0) | (table >= num_blocks))
        if bad.any():
            b, j = (int(x[0]) for x in np.nonzero(bad))
            raise ValueError(f"block_table[{b}, {j}] = {table[b, j]} is out of range for {num_blocks} blocks "
                             f"(sequence {b} uses its first {int(used[b].sum())} blocks)")
        if table.shape[1] == 0:  # (no sequence holds a key: a one-column table nobody reads)
            table = np.zeros((batch, 1), np.int32)
    else:
        if vk.shape[0] != batch:
            raise ValueError(f"k_cache must have q's batch size {batch}, got {vk.shape[0]}")
        over = np.nonzero(lens > vk.shape[1])[0]
        if over.size:
            i = int(over[0])
            raise ValueError(f"cache_seqlens[{i}] = {lens[i]} exceeds the cache length {vk.shape[1]}")
    alibi = _alibi(alibi_slopes, batch, heads_q, vq.device, stream)
    descale = _descales((q_descale, k_descale, v_descale), vq.dtype, batch, vk.shape[2])
    vout = _out_view(out, vq, (vk, vv), stream) if out is not None else None
    layout = _core.SeqLayout(batch=batch, cache_seqlens=lens.ctypes.data, block_table=table.ctypes.data if paged else 0,
                             block_table_stride=table.shape[1] if paged else 0)
    return _run(vq, vk, vv, impl=impl, scale=scale, softcap=float(softcap), left=left, right=right, alibi=alibi,
                descale=descale, layout=layout, return_lse=return_lse, lse_shape=(batch, heads_q, seqlen_q), out=out, vout=vout,
                stream=stream)
