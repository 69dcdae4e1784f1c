"""Tensor files for the CLI: .npy, .npz and .safetensors, read safely and in chunks.

Untrusted files are handled defensively: no pickles, headers validated against the file (sizes,
offsets, overlaps, dtypes) before any data is read, and every problem is a :class:`BadFile` with a
message naming the file and what is wrong.

Reading is built for storage speed. The data of a .npy file, a .safetensors tensor and a stored
(uncompressed) .npz member is one byte range of its file: chunks of it are read with positioned
reads (``os.preadv``) straight into two pairs of buffers allocated once per comparison, and a
reader thread fills one pair while the reduction runs on the other (both release the GIL), so
nothing is allocated per chunk and reading overlaps the arithmetic. Deflated .npz members stream
forward through zlib into the same buffers. Memory: 4 x ``CHUNK_BYTES`` whatever the file sizes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import struct
import threading
import zipfile
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from . import _core

__all__ = ["BadFile", "TensorSource", "open_tensors", "open_side", "load_npy", "compare_files", "RangeTask", "run_task"]

# Bytes per input per chunk (two chunks in flight per input): large enough that a read and a
# reduction each amortise their fixed costs, small enough to stay in the last-level cache between
# the read that writes a chunk and the reduction that reads it (bench/bench_compare.py's chunk-size
# rows: 1 to 16 MiB measured within noise of each other on a 2-core Zen 4).
CHUNK_BYTES = 4 << 20


class BadFile(Exception):
    """A file that exists but whose content is not a valid tensor file (exit 1, error JSON)."""


class IncompatibleSides(ValueError):
    """Two sides that cannot be compared with each other, whatever they hold (exit 2: the usage)."""


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


class _ZipStreamReader:
    """A deflated .npz member: decompressed forward through zlib into caller buffers (zipfile checks
    its CRC-32 at the end); a read behind the current position starts the member over. The archive's
    directory is read once per file (`zf`, shared by its members' readers)."""

    def __init__(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, data_offset: int, dtype: np.dtype, label: str):
        self.zf, self.info, self.size = zf, info, info.file_size
        self.offset, self.itemsize, self.label = data_offset, dtype.itemsize, label
        self.fh = None
        self.pos = 0  # member bytes consumed

    def _rewind(self) -> None:
        if self.fh is not None:
            self.fh.close()
        self.fh = self.zf.open(self.info)
        self.pos = 0

    def read_into(self, start: int, out: np.ndarray) -> None:
        target = self.offset + start * self.itemsize
        try:
            if self.fh is None or target < self.pos:
                self._rewind()
            while self.pos < target:  # skip forward
                skipped = len(self.fh.read(min(target - self.pos, CHUNK_BYTES)))
                if skipped == 0:
                    break
                self.pos += skipped
            view = memoryview(out.view(np.uint8))
            got = 0
            while got < view.nbytes and self.pos == target + got:
                n = self.fh.readinto(view[got:])
                if not n:
                    break
                got += n
                self.pos += n
            if got == view.nbytes and self.pos == self.size:
                self.fh.read(1)  # at the member's end: zipfile verifies its CRC-32 (if this read did not)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
            raise BadFile(f"{self.label} is corrupt: {exc}") from None
        if got != view.nbytes:
            raise BadFile(f"{self.label} ended early: {view.nbytes - got} bytes missing")

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


# A Fortran-ordered .npy file's C-order chunks are scattered over the whole file: it is read into
# memory once (up to this size; larger ones are refused with a way out), never mapped.
FORTRAN_MAX_BYTES = 256 << 20


class _FortranReader:
    """A Fortran-ordered .npy file, read whole, served in C order."""

    def __init__(self, path: str, voids: Voids):
        self.arr = _load_npy(path, voids)

    def read_into(self, start: int, out: np.ndarray) -> None:
        out[:] = self.arr.flat[start:start + len(out)]  # (the flat iterator walks C order)

    def close(self) -> None:
        self.arr = None


# NumPy saves ml_dtypes.float8_e5m2 with this descr (its type character, '5', is no NumPy kind) and
# cannot read it back; no other writer uses it. It is read as float8_e5m2.
_E5M2_DESCRS = ("<f1", "|f1", ">f1", "=f1", "f1")
_NPY_MAX_HEADER = 10000  # (NumPy's own limit on the header it parses)


def _e5m2_header(fh, label: str, start: int) -> tuple[tuple[int, ...], bool, np.dtype, int] | None:
    """A .npy header whose descr is float8_e5m2's (which NumPy rejects), parsed as NumPy parses one
    (a Python literal, nothing evaluated); None for any other header."""
    import ast

    fh.seek(start)
    magic = fh.read(8)
    if len(magic) != 8 or magic[:6] != b"\x93NUMPY" or magic[6] not in (1, 2, 3):
        return None
    size_bytes = 2 if magic[6] == 1 else 4
    size = int.from_bytes(fh.read(size_bytes), "little")
    if size > _NPY_MAX_HEADER:
        return None
    raw = fh.read(size)
    try:
        d = ast.literal_eval(raw.decode("utf-8" if magic[6] == 3 else "latin1"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
        return None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"} or d["descr"] not in _E5M2_DESCRS:
        return None
    shape, fortran = d["shape"], d["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(x, int) and not isinstance(x, bool) for x in shape) \
            or not isinstance(fortran, bool):
        raise BadFile(f"{label} is not a valid .npy file: header {raw[:200]!r}")
    return shape, fortran, _named_dtype("float8_e5m2"), start + 8 + size_bytes + size


def _npy_header(fh, label: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    start = fh.tell()
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise BadFile(f"{label}: unsupported .npy version {version}")
    except BadFile:
        raise
    except Exception as exc:
        e5m2 = _e5m2_header(fh, label, start) if "descr is not a valid dtype descriptor" in str(exc) else None
        if e5m2 is None:
            raise BadFile(f"{label} is not a valid .npy file: {exc}") from None
        shape, fortran, dtype, offset = e5m2
        fh.seek(offset)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise BadFile(f"{label} has a negative dimension in its shape {shape}")
    return shape, bool(fortran), dtype, fh.tell()


def _npy_layout(path: str, voids: Voids) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of a .npy file (checked regular by the caller), its
    size checked against the header."""
    with open(path, "rb") as fh:
        shape, fortran, descr, offset = _npy_header(fh, repr(path))
    dtype = _element_dtype(descr, repr(path), voids)
    need = offset + math.prod(shape) * dtype.itemsize
    size = os.path.getsize(path)
    if size < need:
        raise BadFile(f"{path!r} is truncated: its header promises {need} bytes, the file has {size}")
    return shape, fortran, dtype, offset


def load_npy(path: str, *, void2_as_bfloat16: bool = False, void1_as: str | None = None) -> np.ndarray:
    """A .npy file read into memory (never unpickled, never mapped: a file truncated meanwhile is a
    BadFile, not a SIGBUS), its size checked against the header; in the file's own order.
    ``void2_as_bfloat16``/``void1_as``: how to read elements NumPy saved as raw 2-/1-byte voids
    (see :class:`Voids`)."""
    return _load_npy(path, Voids.of(void2_as_bfloat16, void1_as))


def _load_npy(path: str, voids: Voids) -> np.ndarray:
    _regular(path)
    shape, fortran, dtype, offset = _npy_layout(path, voids)
    if dtype.type is np.void and dtype.itemsize == 1:  # (ml_dtypes' formats are kind 'V' too, not np.void)
        raise BadFile(f"{path!r} holds {_VOID1_WORDS}")
    arr = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    if arr.size:
        reader = _RangeReader(path, offset, dtype, repr(path))
        try:
            reader.read_into(0, arr.reshape(-1, order="F" if fortran else "C"))  # (a view of its memory)
        finally:
            reader.close()
    return arr


def _npy_source(path: str, name: str, voids: Voids) -> TensorSource:
    shape, fortran, dtype, offset = _npy_layout(path, voids)
    fortran = fortran and len(shape) > 1
    if fortran:
        if math.prod(shape) * dtype.itemsize > FORTRAN_MAX_BYTES:
            raise BadFile(f"{path!r} is Fortran-ordered and larger than {FORTRAN_MAX_BYTES >> 20} MiB: its C-order "
                          "chunks are spread over the whole file; re-save it in C order to stream it")
        return TensorSource(name, shape, dtype, lambda: _FortranReader(path, voids), fortran_order=True,
                            path=path, key=name)
    return TensorSource(name, shape, dtype, lambda: _RangeReader(path, offset, dtype, repr(path)), path=path, key=name,
                        splittable=True)


# What zipfile raises for a damaged or unsupported archive (bad CRC, bad magic, a member name that
# differs from its directory entry, encryption, an unknown compression method, a truncated stream).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError, OSError)


def _npz_sources(path: str, voids: Voids) -> list[TensorSource]:
    # (the ZipFile stays open for the deflated members' readers: its directory is read once)
    try:
        return _npz_members(path, zipfile.ZipFile(path), voids)
    except BadFile:
        raise
    except _ZIP_ERRORS as exc:  # (the file itself opened: an OSError here is a seek its offsets forged)
        raise BadFile(f"{path!r} is not a valid .npz file: {exc}") from None


def _npz_members(path: str, zf: zipfile.ZipFile, voids: Voids) -> list[TensorSource]:
    sources = []
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue
        name = info.filename[:-4]
        label = f"{path!r} member {info.filename!r}"
        with zf.open(info) as fh:
            shape, fortran, descr, offset = _npy_header(fh, label)
        dtype = _element_dtype(descr, label, voids)
        if fortran and len(shape) > 1:
            raise BadFile(f"{label} is Fortran-ordered; re-save it in C order to stream it")
        numel = math.prod(shape)
        if info.file_size != offset + numel * dtype.itemsize:  # (exact: the CRC covers every byte read)
            raise BadFile(f"{label} holds {info.file_size} bytes; its header promises {offset + numel * dtype.itemsize}")
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
            start = _stored_data_start(path, info, label)
            with open(path, "rb") as fh:  # the member's own npy header, for its CRC-32
                fh.seek(start)
                prefix = fh.read(offset)
            crc = (prefix, info.file_size - offset, info.CRC)
            opener = (lambda start=start, offset=offset, dtype=dtype, label=label, crc=crc:
                      _RangeReader(path, start + offset, dtype, label, crc))
        else:
            opener = (lambda info=info, offset=offset, dtype=dtype, label=label:
                      _ZipStreamReader(zf, info, offset, dtype, label))
        # (not splittable: a stored member's CRC-32 is checked over one in-order read, a deflated one
        # decompresses from its start)
        sources.append(TensorSource(name, shape, dtype, opener, path=path, key=name))
    return sources


def _stored_data_start(path: str, info: zipfile.ZipInfo, label: str) -> int:
    """Where a stored member's bytes begin in the archive: after its local file header."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        size = os.fstat(fh.fileno()).st_size
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise BadFile(f"{label}: bad local file header at offset {info.header_offset}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > size:
        raise BadFile(f"{label} is truncated: its {info.file_size} bytes end past the archive ({size} bytes)")
    return start


SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                      "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                      "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
                      "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
MAX_SAFETENSORS_HEADER = 100 << 20


def _safetensors_sources(path: str) -> list[TensorSource]:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise BadFile(f"{path!r} is not a safetensors file: shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > MAX_SAFETENSORS_HEADER:
            raise BadFile(f"{path!r}: header length {n} exceeds the file ({size} bytes)")
        raw = fh.read(n)
    header = strict_json(raw, f"{path!r}: header")
    if not isinstance(header, dict):
        raise BadFile(f"{path!r}: header is not a JSON object")
    data_start = 8 + n
    data_size = size - data_start
    spans = []
    sources = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise BadFile(f"{path!r}: tensor {name!r} lacks dtype, shape or data_offsets")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in SAFETENSORS_DTYPES:
            raise BadFile(f"{path!r}: tensor {name!r} has unknown dtype {code!r}")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                  for s in shape):
            raise BadFile(f"{path!r}: tensor {name!r} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise BadFile(f"{path!r}: tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise BadFile(f"{path!r}: tensor {name!r} data_offsets {offsets} fall outside the data ({data_size} bytes)")
        dname = SAFETENSORS_DTYPES[code]
        dtype = _named_dtype(dname)
        itemsize = dtype.itemsize
        numel = 1
        for s in shape:
            numel *= s
        if end - begin != numel * itemsize:
            raise BadFile(f"{path!r}: tensor {name!r} has {end - begin} bytes for shape {shape} of {code} "
                          f"({numel * itemsize} expected)")
        spans.append((begin, end, name))

        edtype = dtype
        opener = (lambda begin=begin, edtype=edtype, name=name:
                  _RangeReader(path, data_start + begin, edtype, f"{path!r} tensor {name!r}"))
        sources.append(TensorSource(name, tuple(shape), edtype, opener, path=path, key=name, splittable=True))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise BadFile(f"{path!r}: tensors {n0!r} and {n1!r} overlap in the data")
        if b1 > e0:  # (the safetensors library refuses holes: every data byte belongs to a tensor)
            raise BadFile(f"{path!r}: {b1 - e0} bytes between tensors {n0!r} and {n1!r} belong to no tensor")
    first, last = (spans[0][0], spans[-1][1]) if spans else (0, 0)
    if first != 0 or last != data_size:
        raise BadFile(f"{path!r}: the tensors cover bytes {first}..{last} of the data, not all {data_size} of them")
    return sources


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


def open_tensors(path: str, *, void2_as_bfloat16: bool = False, void1_as: str | None = None) -> list[TensorSource]:
    """The tensors of a .npy (one, named after nothing: ''), .npz or .safetensors file.

    Raises OSError for an unreadable file and :class:`BadFile` for invalid content (a FIFO, a device
    or a socket included: files are read by position, and a FIFO would block until a writer came).
    ``void2_as_bfloat16``/``void1_as``: how to read .npy elements NumPy saved as raw 2-/1-byte voids
    (see :class:`Voids`).
    """
    return _open_tensors(path, Voids.of(void2_as_bfloat16, void1_as))


def _open_tensors(path: str, voids: Voids) -> list[TensorSource]:
    _regular(path)
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"\x93NUMPY"):
        return [_npy_source(path, "", voids)]
    if magic.startswith(b"PK"):
        return _npz_sources(path, voids)
    if path.endswith(".safetensors") or (len(magic) == 8 and struct.unpack("<Q", magic)[0] < os.path.getsize(path)):
        return _safetensors_sources(path)
    raise BadFile(f"{path!r} is neither .npy, .npz nor .safetensors")



# ---- directories ----------------------------------------------------------------------------------

TENSOR_SUFFIXES = (".safetensors", ".npy", ".npz")
INDEX_SUFFIX = ".safetensors.index.json"
MAX_INDEX_BYTES = 100 << 20


def _renamed(src: TensorSource, name: str) -> TensorSource:
    return dataclasses.replace(src, name=name)


def _add(found: dict[str, tuple[TensorSource, str]], src: TensorSource, where: str) -> None:
    if src.name in found:
        raise BadFile(f"tensor {src.name!r} is in both {found[src.name][1]!r} and {where!r}")
    found[src.name] = (src, where)


def _index_file(path: str) -> str | None:
    names = sorted(f for f in os.listdir(path) if f.endswith(INDEX_SUFFIX))
    if not names:
        return None
    if "model" + INDEX_SUFFIX in names:
        return os.path.join(path, "model" + INDEX_SUFFIX)
    if len(names) > 1:
        raise BadFile(f"{path!r} holds several checkpoint indexes ({', '.join(names)}); compare their shards' "
                      "directory by naming one index's files, or keep one index")
    return os.path.join(path, names[0])


def _inside(root: str, rel: str) -> str | None:
    """`root`/`rel` if `rel` names a place inside directory `root` by its own words (relative, no way
    up through '..'), else None. Symlinks are followed as the directory's owner made them (a Hugging
    Face cache snapshot links every file to a blob outside it)."""
    if "\0" in rel or os.path.isabs(rel) or os.path.splitdrive(rel)[0]:
        return None
    full = os.path.normpath(os.path.join(root, rel))
    try:
        return full if os.path.commonpath([root, full]) == root else None
    except ValueError:
        return None


def _indexed_sources(path: str, index: str, voids: Voids) -> list[TensorSource]:
    """A sharded checkpoint (Hugging Face's `*.safetensors.index.json`): its weight_map says which shard
    holds each tensor; every tensor of the shards it names is compared, under its own name."""
    _regular(index)
    if os.path.getsize(index) > MAX_INDEX_BYTES:
        raise BadFile(f"{index!r} is larger than {MAX_INDEX_BYTES >> 20} MiB")
    with open(index, "rb") as fh:
        doc = strict_json(fh.read(), repr(index))
    wmap = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wmap.items()):
        raise BadFile(f"{index!r} has no weight_map object of tensor name -> shard file")
    if not wmap:
        raise BadFile(f"{index!r} maps no tensors (its weight_map is empty)")
    root = os.path.abspath(path)  # (normalized, symlinks kept: "." works)
    shards: dict[str, dict[str, TensorSource]] = {}
    for shard in dict.fromkeys(wmap.values()):  # (each shard once, in order of first mention)
        full = _inside(root, shard)
        if full is None:
            raise BadFile(f"{index!r} names a shard outside its directory: {shard!r}")
        if not os.path.isfile(full):
            raise BadFile(f"{index!r} names a shard that does not exist: {shard!r}")
        shards[shard] = {t.name: t for t in _open_tensors(full, voids)}
    found: dict[str, tuple[TensorSource, str]] = {}
    for name, shard in wmap.items():
        if name not in shards[shard]:
            raise BadFile(f"{index!r} maps tensor {name!r} to {shard!r}, which has no such tensor")
        _add(found, shards[shard][name], shard)
    for shard, tensors in shards.items():  # tensors the map leaves out are loaded with their shard too
        for name, src in tensors.items():
            if found.get(name, (None, None))[1] != shard:
                _add(found, src, shard)
    return [src for src, _ in found.values()]


def _directory_sources(path: str, voids: Voids) -> list[TensorSource]:
    """Every tensor of the .safetensors, .npy and .npz files under `path` (walked in sorted order): a
    .safetensors tensor under its own name (so checkpoints sharded differently still match), a .npy
    file under its relative path without the suffix, a .npz member as that path / the member name."""
    found: dict[str, tuple[TensorSource, str]] = {}
    for top, dirs, names in os.walk(path):
        dirs.sort()
        for fname in sorted(names):
            if not fname.endswith(TENSOR_SUFFIXES):
                continue
            full = os.path.join(top, fname)
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            stem = rel.rsplit(".", 1)[0]
            for src in _open_tensors(full, voids):
                if fname.endswith(".npy"):
                    name = stem
                elif fname.endswith(".npz"):
                    name = f"{stem}/{src.key}"
                else:
                    name = src.key
                _add(found, _renamed(src, name), rel)
    if not found:
        raise BadFile(f"{path!r} holds no {', '.join(TENSOR_SUFFIXES)} files")
    return [src for src, _ in found.values()]


def open_side(path: str, *, void2_as_bfloat16: bool = False, void1_as: str | None = None) -> list[TensorSource]:
    """The tensors of one side of a comparison: a file (:func:`open_tensors`) or a directory (a sharded
    checkpoint with an index, or any tree of tensor files)."""
    return _open_side(path, Voids.of(void2_as_bfloat16, void1_as))


def _open_side(path: str, voids: Voids) -> list[TensorSource]:
    if not os.path.isdir(path):
        return _open_tensors(path, voids)
    index = _index_file(path)
    if index is not None:
        return _indexed_sources(path, index, voids)
    return _directory_sources(path, voids)


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
             streamer: _PairStreamer | None = None, on_chunk: Callable[[int], None] | None = None) -> list:
    """The ParityStats of each chunk of a task, in order (flat, indices from the chunk's start): what a
    --workers process or a Dask worker runs. The caller merges every chunk of a tensor in order, so
    the merge is the same whoever ran the tasks (and the same as one pass over the chunks). The
    chunks are read ahead on a thread of a `streamer` (the caller's, or one for this task).
    `opened`: tensors already open in this process, by (absolute path, key); `on_chunk(bytes)`
    after each chunk."""
    from .parity import parity

    opened = opened or {}
    a = opened.get((task.path_a, task.key_a)) or _task_source(task.path_a, task.key_a, task.voids, task.shape,
                                                              task.dtypes[0])
    b = opened.get((task.path_b, task.key_b)) or _task_source(task.path_b, task.key_b, task.voids, task.shape,
                                                              task.dtypes[1])
    need = task.step * max(a.dtype.itemsize, b.dtype.itemsize)  # (the planner's chunks, whatever CHUNK_BYTES is here)
    own = streamer is None or streamer.chunk_bytes < need
    if own:
        streamer = _PairStreamer(max(need, CHUNK_BYTES))
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


def _read_native(reader: Reader, dtype: np.dtype, buf: np.ndarray, start: int, count: int) -> np.ndarray:
    """Elements start .. start + count into `buf`, in native byte order (a big-endian file's chunk is
    swapped in place, in the reader thread)."""
    x = buf[: count * dtype.itemsize].view(dtype)
    reader.read_into(start, x)
    if not dtype.isnative:
        x = x.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return x


class _PairStreamer:
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


def _match(ta: list[TensorSource], tb: list[TensorSource], by_name: bool):
    if not by_name and len(ta) == 1 and len(tb) == 1:  # one tensor each (e.g. two .npy files): compare them
        return [(ta[0].name or tb[0].name or "tensor", ta[0], tb[0])], [], []
    ia = {t.name: t for t in ta}
    ib = {t.name: t for t in tb}
    pairs = [(n, ia[n], ib[n]) for n in ia if n in ib]
    return pairs, [n for n in ia if n not in ib], [n for n in ib if n not in ia]


def _run_in_process(tasks: list[RangeTask], opened: dict[tuple[str, str], TensorSource],
                    done: Callable[[int, list], None], on_chunk: Callable[[int], None]) -> None:
    streamer = _PairStreamer(CHUNK_BYTES)  # (its buffers and reader thread serve every task)
    try:
        for i, task in enumerate(tasks):
            done(i, run_task(task, opened, streamer, on_chunk))
    finally:
        streamer.close()


def compare_files(path_a: str, path_b: str, *, atol: float = 0.0, rtol: float = 0.0, void2_as_bfloat16: bool = False,
                  void1_as: str | None = None, progress: Callable[[int, int], None] | None = None, workers: int | None = None,
                  dask: object = None, tolerance: Callable[[str, str, str], tuple[float, float]] | None = None,
                  stats_out: dict | None = None, max_mismatch_ratio: float = 0.0,
                  min_cosine: float | None = None) -> dict:
    """Parity of the tensors of two files or directories, streamed in chunks merged exactly.

    Files: .npy, .npz, .safetensors; a directory is a sharded checkpoint with a
    ``*.safetensors.index.json`` or any tree of tensor files (see :func:`open_side`); tensors are
    matched by name (two single-tensor files are compared whatever their names). The work is split
    into tasks (tensors, and 64 MiB ranges of large ones), run in this process (the default), on a
    pool of ``workers`` local processes, or on a Dask cluster (``dask``: a scheduler address or a
    ``distributed.Client``); each task's stats are merged in a fixed order, so every mode gives the
    same report, bit for bit. ``progress(done_bytes, total_bytes)`` is called as tasks finish.
    ``tolerance(name, dtype_a, dtype_b) -> (atol, rtol)`` sets each tensor's tolerances instead of
    ``atol``/``rtol``; ``stats_out``, a dict, receives each compared tensor's ``ParityStats`` by name.

    Tensors of another dtype (bools, integers, complex) are compared element for element with a
    tensor of the same dtype in either byte order (see :func:`_unequal_elements`): their rows hold
    ``numel``, ``mismatches``, ``max_abs_diff`` and ``exact: true``.

    The verdict (``ok``, per tensor and for the whole comparison): a tensor passes when at most
    ``max_mismatch_ratio`` of its elements are outside atol/rtol (default 0: none) and, when
    ``min_cosine`` is given, its cosine similarity is at least that; an empty tensor passes; a tensor
    that could not be compared (shape mismatch, dtypes that do not match) fails. The comparison passes when
    every tensor does and none is found on one side only.

    Returns the compare body: per-tensor stats (or an error) and verdicts, the names found on one
    side only, the worst max_abs_diff / cosine_sim over the tensors and ``ok``. OSError for
    unreadable files, BadFile for invalid ones, ValueError for a bad ratio or cosine.
    """
    from .parity import ParityStats

    max_mismatch_ratio = check_mismatch_ratio(max_mismatch_ratio)
    min_cosine = check_min_cosine(min_cosine)

    voids = Voids.of(void2_as_bfloat16, void1_as)
    ta = _open_side(path_a, voids)
    tb = _open_side(path_b, voids)
    if os.path.isdir(path_a) != os.path.isdir(path_b):
        (file, tensors), folder = ((path_a, ta), path_b) if os.path.isdir(path_b) else ((path_b, tb), path_a)
        if any(t.name == "" for t in tensors):
            raise IncompatibleSides(f"{file!r} is a .npy file and {folder!r} a directory: a .npy file's one tensor has no "
                             "name to match by; compare it with a file of the directory, or a directory with a "
                             "directory")
    pairs, only_a, only_b = _match(ta, tb, by_name=os.path.isdir(path_a) or os.path.isdir(path_b))
    rows: list[dict] = []
    exact: list[tuple[int, TensorSource, TensorSource]] = []  # (row, a, b) of non-float pairs
    tasks: list[RangeTask] = []
    owner: list[int] = []  # the row of each task
    for name, a, b in pairs:
        row: dict = {"name": name, "shape": list(a.shape), "dtypes": [a.dtype.name, b.dtype.name]}
        if a.shape != b.shape:
            row["error"] = f"shape-mismatch: {a.shape} vs {b.shape}"
        elif (a.dtype.name not in COMPARABLE or b.dtype.name not in COMPARABLE) \
                and _native(a.dtype) == _native(b.dtype) and a.dtype.kind in "biuc":
            exact.append((len(rows), a, b))  # integers, bools, ...: element for element, after the floats
        elif a.dtype.name not in COMPARABLE or b.dtype.name not in COMPARABLE:
            hint = _VOID1_WORDS if "void8" in (a.dtype.name, b.dtype.name) else (
                "float tensors are compared with any float; other tensors only with their own dtype")
            row["error"] = f"unsupported-dtype: {a.dtype.name} vs {b.dtype.name} ({hint})"
        elif a.numel == 0:
            row["numel"] = 0
        else:
            t_atol, t_rtol = (atol, rtol) if tolerance is None else tolerance(name, a.dtype.name, b.dtype.name)
            planned = _plan(a, b, t_atol, t_rtol, voids)
            tasks += planned
            owner += [len(rows)] * len(planned)
        rows.append(row)

    total = sum(t.nbytes for t in tasks)
    finished = 0
    merged: dict[int, ParityStats] = {}  # row -> the stats of its chunks so far
    ready: dict[int, list] = {}  # finished tasks waiting for an earlier one
    next_task = 0

    def advance(nbytes: int) -> None:
        nonlocal finished
        finished += nbytes
        if progress is not None:
            progress(finished, total)

    def done(i: int, parts: list) -> None:
        # every chunk of a tensor merged in order, whatever order the tasks finished in: the same
        # bits in every mode (and as one pass over the chunks)
        nonlocal next_task
        ready[i] = parts
        while next_task in ready:
            r = owner[next_task]
            for part in ready.pop(next_task):
                merged[r] = part if r not in merged else merged[r].merge(part)
            next_task += 1

    if dask is not None and workers is not None:
        raise ValueError("give workers or dask, not both")
    if dask is not None:
        from ._parallel import run_on_dask

        run_on_dask(run_task, tasks, dask, lambda i, parts: (done(i, parts), advance(tasks[i].nbytes)))
    elif workers is not None:
        from ._parallel import run_on_pool

        run_on_pool(run_task, tasks, workers, lambda i, parts: (done(i, parts), advance(tasks[i].nbytes)))
    else:
        opened = {(os.path.abspath(t.path), t.key): t for _, a, b in pairs for t in (a, b)}
        _run_in_process(tasks, opened, done, advance)
    assert next_task == len(tasks) and not ready

    for r, acc in merged.items():
        row = rows[r]
        stats = ParityStats(acc._acc, tuple(row["shape"]), acc.dtypes, acc.atol, acc.rtol)
        row.update({k: v for k, v in stats.to_dict().items() if k not in ("shape", "dtypes", "atol", "rtol")})
        if tolerance is not None:
            row.update(atol=stats.atol, rtol=stats.rtol)
        if stats_out is not None:
            stats_out[row["name"]] = stats

    for r, a, b in exact:
        unequal, worst = _unequal_elements(a, b)
        rows[r].update(numel=a.numel, mismatches=unequal, max_abs_diff=worst, exact=True)
    for row in rows:
        row["ok"] = _row_ok(row, max_mismatch_ratio, min_cosine)
    compared = [r for r in rows if "max_abs_diff" in r]
    problems = [r["name"] for r in rows if "error" in r]
    # Nothing compared (no pair matched, or every pair unusable): NaN, so that no gate reads the body
    # as a perfect match. (Pairs that are all empty tensors did compare: equal, 0 and 1.)
    nothing = not compared and (problems or only_a or only_b or not rows)
    fallback = (math.nan, math.nan) if nothing else (0.0, 1.0)
    worst_abs = max((r["max_abs_diff"] for r in compared), key=lambda x: (x != x, x), default=fallback[0])
    worst_cos = min((r["cosine_sim"] for r in compared if "cosine_sim" in r), key=lambda x: (x == x, x),
                    default=fallback[1])
    return {
        "a": path_a,
        "b": path_b,
        "atol": atol,
        "rtol": rtol,
        "max_abs_diff": worst_abs,
        "cosine_sim": worst_cos,
        "numel": sum(r.get("numel", 0) for r in rows),
        "mismatches": sum(r.get("mismatches", 0) for r in rows),
        "tensors": rows,
        "only_in_a": only_a,
        "only_in_b": only_b,
        "complete": not (only_a or only_b or problems),
        "max_mismatch_ratio": max_mismatch_ratio,
        "min_cosine": min_cosine,
        "ok": bool(rows) and not (only_a or only_b) and all(r["ok"] for r in rows),
    }


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=")


def _unequal_elements(a: TensorSource, b: TensorSource) -> tuple[int, float]:
    """How many elements of two tensors of one bool, integer or complex dtype differ, and the greatest
    |a - b|. Integers and bools: by value, which is their bits (the gap exact, as an integer, before it
    becomes a float); complex numbers as floats are, a NaN never equal (so a NaN gap: no gate passes
    it). Either byte order. Read in C order in chunks, in this process: such tensors of a checkpoint
    are small beside its weights."""
    n = a.numel
    if n == 0:
        return 0, 0.0
    kind = a.dtype.kind
    step = max(1, CHUNK_BYTES // a.dtype.itemsize)
    buf_a, buf_b = np.empty(min(step, n), a.dtype), np.empty(min(step, n), b.dtype)
    ra, rb = a.open(), b.open()
    unequal, worst = 0, 0
    try:
        for start in range(0, n, step):
            k = min(step, n - start)
            ra.read_into(start, buf_a[:k])
            rb.read_into(start, buf_b[:k])
            xa, xb = (x[:k].astype(_native(x.dtype), copy=False) for x in (buf_a, buf_b))
            if kind == "b":  # (any nonzero byte is True; the bytes are compared, as the file holds them)
                xa, xb = xa.view(np.uint8), xb.view(np.uint8)
            differ = xa != xb  # (complex: NaN != NaN, as for floats)
            count = int(np.count_nonzero(differ))
            if not count:
                continue
            unequal += count
            da, db = xa[differ], xb[differ]
            if kind == "c":
                with np.errstate(invalid="ignore", over="ignore"):
                    gap = float(np.max(np.abs(da.astype(np.complex128) - db.astype(np.complex128))))
                worst = math.nan if math.isnan(gap) or worst != worst else max(worst, gap)
            elif kind == "b":  # (a bool differs by one, whatever bytes stand for True)
                worst = worst if worst != worst else max(worst, 1)
            else:  # max - min in the unsigned type of the same width: exact (no wrap past 2^w - 1)
                unsigned = np.dtype(f"u{xa.dtype.itemsize}")
                hi, lo = np.maximum(da, db).view(unsigned), np.minimum(da, db).view(unsigned)
                gap_int = int(np.max(hi - lo))
                worst = worst if worst != worst else max(worst, gap_int)
    finally:
        ra.close()
        rb.close()
    return unequal, float(worst)


def check_mismatch_ratio(value: Any) -> float:
    """A fraction of elements in [0, 1] (ValueError naming the value otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"max_mismatch_ratio must be a number from 0 to 1, got {value!r}")
    return float(value)


def check_min_cosine(value: Any) -> float | None:
    """None, or a cosine similarity floor in [-1, 1] (ValueError naming the value otherwise: NaN too)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        raise ValueError(f"min_cosine must be a number from -1 to 1, got {value!r}")
    return float(value)


def _row_ok(row: dict, max_mismatch_ratio: float, min_cosine: float | None) -> bool:
    """One tensor's verdict: not compared fails; empty passes; else the mismatch ratio and cosine rules
    (a NaN cosine never reaches a floor)."""
    from .parity import within_gates

    if "error" in row:
        return False
    return within_gates(row.get("numel", 0), row.get("mismatches", 0),
                        None if row.get("exact") else row.get("cosine_sim"), max_mismatch_ratio, min_cosine)
