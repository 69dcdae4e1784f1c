"""Chunks of two tensors read ahead on a thread into buffers allocated once (``PairStreamer``): the
read of the next chunk overlaps the reduction of this one, and memory is four chunks whatever the
file sizes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from ..io.source import Reader, TensorSource


def _read_native(reader: Reader, dtype: np.dtype, buf: np.ndarray, start: int, count: int) -> np.ndarray:
    """Elements start .. start + count into `buf`, in native byte order (a big-endian file's chunk is
    swapped in place, in the reader thread)."""
    x = buf[: count * dtype.itemsize].view(dtype)
    reader.read_into(start, x)
    if not dtype.isnative:
        x = x.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return x


class PairStreamer:
    """Chunks of two tensors, read ahead: a reader thread fills one pair of buffers while the caller
    reduces the other. The four buffers (chunk_bytes each) are allocated once and reused."""

    def __init__(self, chunk_bytes: int):
        self.chunk_bytes = max(16, chunk_bytes)
        self.bufs = [(np.empty(self.chunk_bytes, np.uint8), np.empty(self.chunk_bytes, np.uint8)) for _ in range(2)]
        self.pool: ThreadPoolExecutor | None = None

    def chunks(self, a: TensorSource, b: TensorSource, start: int = 0, stop: int | None = None,
               step: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(count, a's elements, b's elements) for consecutive ranges of `step` elements (at most what a
        buffer holds) covering elements start..stop of both tensors; each pair of arrays is valid until
        the next one is asked for."""
        fits = max(1, self.chunk_bytes // max(a.dtype.itemsize, b.dtype.itemsize))
        step = fits if step is None else min(step, fits)
        n = a.numel if stop is None else stop
        ra = a.open()
        try:
            rb = b.open()
        except BaseException:
            ra.close()
            raise
        try:
            def fill(slot: int, first: int) -> tuple[int, np.ndarray, np.ndarray]:
                count = min(step, n - first)
                return count, _read_native(ra, a.dtype, self.bufs[slot][0], first, count), \
                    _read_native(rb, b.dtype, self.bufs[slot][1], first, count)

            if n - start <= step:  # one chunk: nothing to overlap
                yield fill(0, start)
                return
            if self.pool is None:
                self.pool = ThreadPoolExecutor(1, thread_name_prefix="flashparity-read")
            ahead = self.pool.submit(fill, 0, start)
            slot = 0
            try:
                for first in range(start, n, step):
                    ready = ahead.result()
                    ahead = self.pool.submit(fill, slot ^ 1, first + step) if first + step < n else None
                    yield ready
                    slot ^= 1
            finally:
                if ahead is not None:  # stopped early (an error, or the caller left): let it finish
                    ahead.cancel() or ahead.exception()
        finally:
            ra.close()
            rb.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
