"""What every tensor file format shares: a tensor's description (:class:`TensorSource`), the
positioned-read reader of one byte range of a file, the element dtypes (bfloat16 and the FP8
formats from ml_dtypes; how NumPy's raw voids are read) and :class:`BadFile`, the one error an
invalid file raises."""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from .. import _core


class BadFile(Exception):
    """A file that exists but whose content is not a valid tensor file (exit 1, error JSON)."""



def _bf16() -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def _named_dtype(name: str) -> np.dtype:
    """NumPy's dtype of a format name; bfloat16 and the FP8 formats from ml_dtypes."""
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")
_VOID1_WORDS = ("1-byte void elements, how NumPy saves float8_e4m3fn and most of ml_dtypes' other 1-byte formats; "
                "pass --void1-as float8_e4m3fn (or float8_e5m2) to read them as that FP8 format")


@dataclass(frozen=True)
class Voids:
    """How .npy elements that NumPy saved without their format are read: 1-byte voids (how it saves
    float8_e4m3fn and most of ml_dtypes' other 1-byte formats, int4 and float4 included) as the FP8
    format `one` names (None: raw bytes, which compare with nothing: the file cannot say which format
    it holds), 2-byte voids (bfloat16) as bfloat16 when `two` (else the file is refused)."""

    one: str | None = None
    two: bool = False

    @staticmethod
    def of(void2_as_bfloat16: bool = False, void1_as: str | None = None) -> Voids:
        if void1_as is not None and void1_as not in FP8_FORMATS:
            raise ValueError(f"void1_as must be one of {', '.join(FP8_FORMATS)} (or None), got {void1_as!r}")
        return Voids(void1_as, bool(void2_as_bfloat16))


def _element_dtype(descr: np.dtype, label: str, voids: Voids) -> np.dtype:
    if descr.kind == "V" and descr.itemsize == 2 and not descr.names:
        if voids.two:
            return _bf16()
        raise BadFile(f"{label} holds 2-byte void elements (how NumPy saves ml_dtypes bfloat16); "
                      "pass --void2-as-bfloat16 to read them as bfloat16")
    if descr.kind == "V" and descr.itemsize == 1 and not descr.names and voids.one is not None:
        return _named_dtype(voids.one)  # (without the flag: a tensor of raw bytes, compared with nothing)
    if descr.hasobject:
        raise BadFile(f"{label} holds Python objects (pickles are never loaded)")
    return descr


class Reader(Protocol):
    """An open tensor: fills caller buffers with flat C-order element ranges."""

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Elements start .. start + len(out) into `out` (1-D, the tensor's dtype); BadFile when the
        file holds fewer bytes than its header promised (it was truncated, or changed while read)."""

    def close(self) -> None: ...


@dataclass
class TensorSource:
    """One tensor of a file: its shape and dtype, and how to open a reader of its elements."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    open: Callable[[], Reader]
    fortran_order: bool = False
    path: str = ""  # the file holding it
    key: str = ""  # its name within that file (what open_tensors(path) lists it under)
    # any element range can be read on its own at no extra cost (one byte range of the file: a C-order
    # .npy, a .safetensors tensor), so a comparison may split it into tasks
    splittable: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class _RangeReader:
    """A byte range of a file (data_offset ..), read with positioned reads into caller buffers: no
    allocation per read, no shared file position, the GIL released during the read. A stored .npz
    member also has its CRC-32 checked (``_core.crc32``: carry-less multiplies from the AVX2 level
    up, slicing-by-8 tables below), when its bytes are read in order to the end."""

    def __init__(self, path: str, data_offset: int, dtype: np.dtype, label: str,
                 crc: tuple[bytes, int, int] | None = None):
        self.path, self.offset, self.itemsize, self.label = path, data_offset, dtype.itemsize, label
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(self.fd, data_offset, 0, os.POSIX_FADV_SEQUENTIAL)
            except OSError:
                pass  # (a hint: some file systems refuse it)
        # crc: (the member's bytes before the data, the member's data length, the CRC the zip
        # directory records); checked when the last data byte has been read in order
        self.crc_prefix, self.crc_len, self.crc_want = crc if crc is not None else (b"", -1, 0)
        self.crc = _core.crc32(self.crc_prefix) if crc is not None else 0
        self.crc_pos = 0  # data bytes covered by self.crc, in order

    def read_into(self, start: int, out: np.ndarray) -> None:
        view = memoryview(out.view(np.uint8))
        pos, want = self.offset + start * self.itemsize, view.nbytes
        got = 0
        while got < want:
            try:
                n = _pread_into(self.fd, view[got:], pos + got)
            except OSError as exc:
                exc.filename = self.path  # (the CLI names the file it could not read)
                raise
            if n == 0:
                raise BadFile(f"{self.label} ended early: {want - got} bytes missing at offset {pos + got} "
                              "(the file is truncated or changed while it was read)")
            got += n
        if self.crc_len >= 0 and start * self.itemsize == self.crc_pos:
            self.crc = _core.crc32(view, self.crc)  # zlib.crc32's value, at 10+ GB/s with PCLMULQDQ
            self.crc_pos += want
            if self.crc_pos == self.crc_len and self.crc != self.crc_want:
                raise BadFile(f"{self.label} fails its CRC-32 check (the zip records {self.crc_want:#010x}, "
                              f"the data gives {self.crc:#010x})")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


if hasattr(os, "preadv"):
    def _pread_into(fd: int, view: memoryview, pos: int) -> int:
        return os.preadv(fd, [view], pos)
else:  # Windows, macOS before 11: the reader owns its descriptor, so seek + read is as safe
    def _pread_into(fd: int, view: memoryview, pos: int) -> int:
        os.lseek(fd, pos, os.SEEK_SET)
        data = os.read(fd, min(view.nbytes, 1 << 30))
        view[: len(data)] = data
        return len(data)




def strict_json(raw: bytes, label: str) -> Any:
    """JSON as the safetensors library reads a header: UTF-8, no duplicate keys, no NaN or Infinity;
    anything else (nesting too deep, an integer of thousands of digits) is a BadFile naming `label`."""

    def no_duplicates(pairs: list) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise BadFile(f"{label} is not valid JSON: the key {k!r} appears twice")
            out[k] = v
        return out

    def no_constant(name: str) -> Any:
        raise BadFile(f"{label} is not valid JSON: {name} is not a JSON number")

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # (JSONDecodeError, and ints past Python's digit limit)
        raise BadFile(f"{label} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadFile(f"{label} is not valid JSON: nested too deeply") from None


def _regular(path: str) -> None:
    """BadFile unless `path` is a regular file (a symlink is followed); OSError if it cannot be stat'ed."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a file")
        raise BadFile(f"{path!r} is {kind}, not a regular file: tensors are read from files by position "
                      "(save a stream to a file first)")
