""".npy files: the header parsed and checked against the file (no pickles: object arrays are refused),
C-order data read by range, Fortran-ordered data read whole (up to FORTRAN_MAX_BYTES)."""

from __future__ import annotations

import math
import os

import numpy as np

from .source import BadFile, TensorSource, Voids, _element_dtype, _named_dtype, _RangeReader, _regular, _VOID1_WORDS


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
