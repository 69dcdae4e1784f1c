""".npz archives: a stored member is one byte range of the archive (read by position, its CRC-32
checked with ``_core.crc32``), a deflated member streams forward through zlib."""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib

import numpy as np

from .npy import _npy_header
from .source import BadFile, TensorSource, Voids, _element_dtype, _RangeReader


# Bytes read per step when a deflated member is skipped forward to a later element.
_SKIP_BYTES = 4 << 20


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
                skipped = len(self.fh.read(min(target - self.pos, _SKIP_BYTES)))
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
