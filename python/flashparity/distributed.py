"""Parity of tensors sharded over torch.distributed ranks: ``fp.distributed.parity``.

Each rank reduces its own shard (on its device, as :func:`flashparity.parity` does), packs the exact
reduction state into a fixed-size buffer, and one ``all_gather`` gives every rank every state; each
rank then merges them in rank order. Nothing but those buffers (a few KiB a rank) crosses the
network, whatever the tensor sizes. torch is imported here only, when called.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from . import _core
from ._optional import require
from ._tensor import as_view
from . import parity as _parity
from .parity import ParityStats, _tolerance

__all__ = ["parity"]

_MAGIC = 0x46505344 + (2 << 32)  # "FPSD": a flashparity state buffer, layout version 2 (with equal_inf)
_MAX_DIMS = 64
_DTYPES = ("float64", "float32", "float16", "bfloat16")
_MESSAGE_BYTES = 1024
# words: magic, ok, ndim, dims (MAX_DIMS), dtype a, dtype b, atol, rtol, state (25 words + the histogram)
_STATE_WORDS = 25 + _core.HIST_BINS
_WORDS = 3 + _MAX_DIMS + 4 + _STATE_WORDS
_BYTES = 8 * _WORDS + _MESSAGE_BYTES


def _f2w(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _w2f(w: int) -> float:
    return struct.unpack("<d", struct.pack("<q", int(w)))[0]


def _pack_state(acc: Any) -> list[int]:
    numel, max_abs, max_abs_i, max_rel, max_rel_i, sums, mom, mism, nonfin, eq_inf, max_ulp, hist = acc.state()
    words = [numel, _f2w(max_abs), max_abs_i, _f2w(max_rel), max_rel_i, *(_f2w(x) for x in sums),
             *(_f2w(x) for x in mom), mism, nonfin, eq_inf, struct.unpack("<q", struct.pack("<Q", max_ulp))[0],
             *hist]
    assert len(words) == _STATE_WORDS
    return words


def _unpack_state(w: list[int]) -> Any:
    sums = tuple(_w2f(x) for x in w[5:15])
    mom = tuple(_w2f(x) for x in w[15:21])
    max_ulp = struct.unpack("<Q", struct.pack("<q", int(w[24])))[0]
    return _core.ParityAccum.from_state((int(w[0]), _w2f(w[1]), int(w[2]), _w2f(w[3]), int(w[4]), sums, mom,
                                         int(w[21]), int(w[22]), int(w[23]), max_ulp,
                                         tuple(int(x) for x in w[25:])))


def _encode(shape, dtypes, atol: float, rtol: float, acc: Any, error: str | None) -> np.ndarray:
    words = np.zeros(_WORDS, np.int64)
    words[0], words[1] = _MAGIC, 0 if error else 1
    if error is None:
        words[2] = len(shape)
        words[3:3 + len(shape)] = shape
        o = 3 + _MAX_DIMS
        words[o], words[o + 1] = _DTYPES.index(dtypes[0]), _DTYPES.index(dtypes[1])
        words[o + 2], words[o + 3] = _f2w(atol), _f2w(rtol)
        words[o + 4:] = _pack_state(acc)
    buf = np.zeros(_BYTES, np.uint8)
    buf[: 8 * _WORDS] = words.view(np.uint8)
    msg = (error or "").encode("utf-8")[:_MESSAGE_BYTES]
    buf[8 * _WORDS: 8 * _WORDS + len(msg)] = np.frombuffer(msg, np.uint8)
    return buf


def _decode(buf: np.ndarray, rank: int) -> dict:
    words = buf[: 8 * _WORDS].view(np.int64)
    if int(words[0]) != _MAGIC:
        if int(words[0]) & 0xFFFFFFFF == _MAGIC & 0xFFFFFFFF:
            raise RuntimeError(f"rank {rank} runs another flashparity version (state layout {int(words[0]) >> 32}, "
                               f"here {_MAGIC >> 32}): install the same version on every rank")
        raise RuntimeError(f"rank {rank} sent no flashparity state (are all ranks calling fp.distributed.parity?)")
    if not words[1]:
        msg = bytes(buf[8 * _WORDS:]).rstrip(b"\0").decode("utf-8", "replace")
        return {"error": msg}
    ndim = int(words[2])
    o = 3 + _MAX_DIMS
    return {
        "shape_a": tuple(int(x) for x in words[3:3 + ndim]),
        "dtypes": (_DTYPES[int(words[o])], _DTYPES[int(words[o + 1])]),
        "atol": _w2f(words[o + 2]),
        "rtol": _w2f(words[o + 3]),
        "acc": _unpack_state([int(x) for x in words[o + 4:]]),
    }


def _local(a_local: Any, b_local: Any, atol: float, rtol: float):
    """This rank's (shape, dtypes, state); raises on a bad shard (caught and sent to the others)."""
    va, vb = as_view(a_local, "a_local"), as_view(b_local, "b_local")
    if va.shape != vb.shape:
        raise ValueError(f"a_local and b_local must have the same shape, got {va.shape} and {vb.shape}")
    if len(va.shape) == 0:
        raise ValueError("shards are concatenated along dim 0: a 0-d tensor cannot be a shard")
    if len(va.shape) > _MAX_DIMS:
        raise ValueError(f"at most {_MAX_DIMS} dimensions, got {len(va.shape)}")
    if va.numel == 0:  # an empty shard (e.g. zero rows on this rank) adds nothing
        if va.device != vb.device:
            raise ValueError(f"a_local is on {va.device} and b_local on {vb.device}")
        for name, v in (("a_local", va), ("b_local", vb)):
            if v.dtype not in _DTYPES:
                raise TypeError(f"{name} has dtype {v.dtype}; parity compares {', '.join(_DTYPES)}")
        return va.shape, (va.dtype, vb.dtype), _core.ParityAccum()
    s = _parity.parity(a_local, b_local, atol=atol, rtol=rtol)
    return va.shape, s.dtypes, s._acc


def parity(a_local: Any, b_local: Any, *, atol: float = 0.0, rtol: float = 0.0, group: Any = None) -> ParityStats:
    """Parity of two tensors sharded over the ranks of a torch.distributed process group.

    Every rank of ``group`` (default: the world) calls this with its shards ``a_local`` and
    ``b_local`` (any input :func:`flashparity.parity` takes; CUDA tensors are reduced on their device);
    the global tensors are the shards concatenated along dim 0 in rank order (shards may differ in
    length, one row or none included; the trailing dimensions and the dtypes must agree). Each rank
    reduces its shard, the fixed-size states are all-gathered (a CPU buffer with gloo, a device buffer
    with NCCL) and merged in rank order, so every rank returns the same ``ParityStats``: that of
    :func:`flashparity.parity` on the whole tensors, exactly for the counts, maxima, NaN propagation,
    global indices, histogram and ULP distance; the sums to the compensated merge's accuracy.

    A bad shard on any rank (shapes that differ, an unsupported dtype, a bad tolerance, mismatched
    trailing dimensions or tolerances across ranks) raises on every rank, so no rank is left
    waiting: the rank at fault its own error, the others ``ValueError`` (``TypeError`` for a
    dtype, ``RuntimeError`` for anything else) naming that rank.
    """
    torch = require("torch", "fp.distributed.parity")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("fp.distributed.parity needs an initialized torch.distributed process group "
                           "(torch.distributed.init_process_group)")
    world = dist.get_world_size(group)
    error: Exception | None = None
    try:  # (any error here is sent to the other ranks, so none is left waiting in the all_gather)
        atol = _tolerance("atol", atol)
        rtol = _tolerance("rtol", rtol)
        shape, dtypes, acc = _local(a_local, b_local, atol, rtol)
        buf = _encode(shape, dtypes, atol, rtol, acc, None)
    except Exception as exc:  # noqa: BLE001 (re-raised below, after the collective)
        error = exc
        buf = _encode((), None, 0.0, 0.0, None, f"{type(exc).__name__}: {exc}")

    device = torch.device("cpu")
    if str(dist.get_backend(group)) == "nccl":  # NCCL moves device buffers only: the shard's device
        dev = getattr(a_local, "device", None)
        device = dev if isinstance(dev, torch.device) and dev.type == "cuda" else \
            torch.device("cuda", torch.cuda.current_device())
    mine = torch.from_numpy(buf).to(device)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    states = [_decode(g.cpu().numpy(), r) for r, g in enumerate(gathered)]

    if error is not None:
        raise error
    bad = [(r, s["error"]) for r, s in enumerate(states) if "error" in s]
    if bad:
        r, msg = bad[0]
        name, _, text = msg.partition(": ")
        kind = {"TypeError": TypeError, "ValueError": ValueError}.get(name, RuntimeError)
        raise kind(f"rank {r}'s shard was rejected: {text if kind is not RuntimeError else msg}")
    first = states[0]
    for r, s in enumerate(states[1:], 1):
        if s["shape_a"][1:] != first["shape_a"][1:] or len(s["shape_a"]) != len(first["shape_a"]):
            raise ValueError(f"shards are concatenated along dim 0, so their trailing shapes must agree: rank 0 has "
                             f"{first['shape_a']}, rank {r} has {s['shape_a']}")
        if s["dtypes"] != first["dtypes"]:
            raise ValueError(f"the shards' dtypes differ: rank 0 has {first['dtypes']}, rank {r} has {s['dtypes']}")
        if (s["atol"], s["rtol"]) != (first["atol"], first["rtol"]):
            raise ValueError(f"the ranks were given different tolerances: rank 0 atol={first['atol']}, "
                             f"rtol={first['rtol']}; rank {r} atol={s['atol']}, rtol={s['rtol']}")
    acc = first["acc"]
    for s in states[1:]:
        acc = acc.merged(s["acc"], acc.numel)
    rows = sum(s["shape_a"][0] for s in states)
    if acc.numel == 0:
        raise ValueError(f"the shards have no elements on any rank (global shape {(rows, *first['shape_a'][1:])})")
    return ParityStats(acc, (rows, *first["shape_a"][1:]), first["dtypes"], atol, rtol)
