"""Comparison tasks: element ranges of a pair of tensors (:class:`RangeTask`, carrying file paths,
never data), planned so that every engine merges the same partial results in the same order, and
:func:`run_task`, what a worker process or a Dask worker runs on one."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..io.source import BadFile, TensorSource, Voids, _named_dtype
from ..io.tree import _open_tensors
from .stream import PairStreamer


# Bytes per input per chunk (two chunks in flight per input): large enough that a read and a
# reduction each amortise their fixed costs, small enough to stay in the last-level cache between
# the read that writes a chunk and the reduction that reads it (bench/bench_compare.py's chunk-size
# rows: 1 to 16 MiB measured within noise of each other on a 2-core Zen 4).
CHUNK_BYTES = 4 << 20


# ---- comparison tasks --------------------------------------------------------------------------

COMPARABLE = ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")

# A splittable tensor is compared in tasks of TASK_CHUNKS chunks: the unit a --workers pool or a Dask
# cluster runs, and the unit the in-process path merges by too, so every mode merges the same partial
# results in the same order and reports the same bits. (64 MiB a side per task: a task's fixed cost,
# 2.2 ms on a Dask LocalCluster, 1 ms on the pool (bench/bench_scale.py), is under 10% of the ~25 ms a
# task takes to read from a warm page cache, 2% cold.)
TASK_CHUNKS = 16


@dataclass(frozen=True)
class RangeTask:
    """Elements start..stop (C order) of tensor `key_a` of file `path_a` against `key_b` of `path_b`,
    reduced in chunks of `step` elements merged in order. A worker opens the files itself: a task
    carries file paths, never data."""

    path_a: str
    key_a: str
    path_b: str
    key_b: str
    shape: tuple[int, ...]
    dtypes: tuple[str, str]
    start: int
    stop: int
    step: int
    atol: float
    rtol: float
    voids: Voids

    @property
    def nbytes(self) -> int:
        """Bytes the task reads, both sides (the progress unit)."""
        n = self.stop - self.start
        return n * sum(_dtype_of(d).itemsize for d in self.dtypes)


def _dtype_of(name: str) -> np.dtype:
    return _named_dtype(name)


def _plan(a: TensorSource, b: TensorSource, atol: float, rtol: float, voids: Voids) -> list[RangeTask]:
    step = max(1, CHUNK_BYTES // max(a.dtype.itemsize, b.dtype.itemsize))
    n = a.numel
    span = step * TASK_CHUNKS if a.splittable and b.splittable else max(n, 1)
    return [RangeTask(os.path.abspath(a.path), a.key, os.path.abspath(b.path), b.key, a.shape,
                      (a.dtype.name, b.dtype.name), start, min(n, start + span), step, atol, rtol, voids)
            for start in range(0, n, span)]


_SOURCES_LOCK = threading.Lock()
_SOURCES: OrderedDict[tuple, dict[str, TensorSource]] = OrderedDict()  # a worker's recently opened files


def _task_source(path: str, key: str, voids: Voids, shape: tuple[int, ...], dtype: str) -> TensorSource:
    st = os.stat(path)
    ident = (path, voids, st.st_size, st.st_mtime_ns, st.st_ino)
    with _SOURCES_LOCK:
        tensors = _SOURCES.get(ident)
        if tensors is not None:
            _SOURCES.move_to_end(ident)
    if tensors is None:
        tensors = {t.key: t for t in _open_tensors(path, voids)}
        with _SOURCES_LOCK:
            _SOURCES[ident] = tensors
            while len(_SOURCES) > 16:
                _SOURCES.popitem(last=False)
    src = tensors.get(key)
    if src is None or src.shape != shape or src.dtype.name != dtype:
        raise BadFile(f"{path!r}: tensor {key!r} changed while being compared (now "
                      f"{'absent' if src is None else f'{src.dtype.name} {src.shape}'}, planned {dtype} {shape})")
    return src


def run_task(task: RangeTask, opened: dict[tuple[str, str], TensorSource] | None = None,
             streamer: PairStreamer | None = None, on_chunk: Callable[[int], None] | None = None) -> list:
    """The ParityStats of each chunk of a task, in order (flat, indices from the chunk's start): what a
    --workers process or a Dask worker runs. The caller merges every chunk of a tensor in order, so
    the merge is the same whoever ran the tasks (and the same as one pass over the chunks). The
    chunks are read ahead on a thread of a `streamer` (the caller's, or one for this task).
    `opened`: tensors already open in this process, by (absolute path, key); `on_chunk(bytes)`
    after each chunk."""
    from ..parity import parity

    opened = opened or {}
    a = opened.get((task.path_a, task.key_a)) or _task_source(task.path_a, task.key_a, task.voids, task.shape,
                                                              task.dtypes[0])
    b = opened.get((task.path_b, task.key_b)) or _task_source(task.path_b, task.key_b, task.voids, task.shape,
                                                              task.dtypes[1])
    need = task.step * max(a.dtype.itemsize, b.dtype.itemsize)  # (the planner's chunks, whatever CHUNK_BYTES is here)
    own = streamer is None or streamer.chunk_bytes < need
    if own:
        streamer = PairStreamer(max(need, CHUNK_BYTES))
    try:
        parts = []
        for count, xa, xb in streamer.chunks(a, b, task.start, task.stop, task.step):
            parts.append(parity(xa, xb, atol=task.atol, rtol=task.rtol))
            if on_chunk is not None:
                on_chunk(count * (a.dtype.itemsize + b.dtype.itemsize))
        return parts
    finally:
        if own:  # (nothing kept in a long-lived worker between tasks)
            streamer.close()
