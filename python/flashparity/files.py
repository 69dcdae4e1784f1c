"""Tensor files for the CLI: .npy (memory-mapped), .npz and .safetensors, read safely and in chunks.

Untrusted files are handled defensively: no pickles, headers validated against the file (sizes,
offsets, overlaps, dtypes) before any data is read, and every problem is a :class:`BadFile` with a
message naming the file and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

__all__ = ["BadFile", "TensorSource", "open_tensors", "load_npy"]

CHUNK_BYTES = 32 << 20  # per input per read: memory stays bounded whatever the file size


class BadFile(Exception):
    """A file that exists but whose content is not a valid tensor file (exit 1, error JSON)."""


def _bf16() -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def _element_dtype(descr: np.dtype, label: str, void2_as_bfloat16: bool) -> np.dtype:
    if descr.kind == "V" and descr.itemsize == 2 and not descr.names:
        if void2_as_bfloat16:
            return _bf16()
        raise BadFile(f"{label} holds 2-byte void elements (how NumPy saves ml_dtypes bfloat16); "
                      "pass --void2-as-bfloat16 to read them as bfloat16")
    if descr.hasobject:
        raise BadFile(f"{label} holds Python objects (pickles are never loaded)")
    return descr


@dataclass
class TensorSource:
    """One tensor of a file: its shape and dtype, and a reader of flat C-order element ranges."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[int, int], np.ndarray]  # (start element, count) -> 1-D array
    fortran_order: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def chunks(self, elements: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.numel, elements):
            yield start, self.read(start, min(elements, self.numel - start))


def _npy_header(fh, label: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
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
        raise BadFile(f"{label} is not a valid .npy file: {exc}") from None
    return tuple(int(s) for s in shape), bool(fortran), dtype, fh.tell()


def _npy_layout(path: str, void2: bool) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of a .npy file, its size checked against the header."""
    with open(path, "rb") as fh:
        shape, fortran, descr, offset = _npy_header(fh, repr(path))
    dtype = _element_dtype(descr, repr(path), void2)
    need = offset + math.prod(shape) * dtype.itemsize
    size = os.path.getsize(path)
    if size < need:
        raise BadFile(f"{path!r} is truncated: its header promises {need} bytes, the file has {size}")
    return shape, fortran, dtype, offset


def load_npy(path: str, *, void2_as_bfloat16: bool = False) -> np.ndarray:
    """A .npy file memory-mapped read-only (never unpickled), its size checked against the header."""
    shape, fortran, dtype, offset = _npy_layout(path, void2_as_bfloat16)
    if math.prod(shape) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _npy_source(path: str, name: str, void2: bool) -> TensorSource:
    shape, fortran, dtype, offset = _npy_layout(path, void2)
    fortran = fortran and len(shape) > 1
    if fortran:
        arr = load_npy(path, void2_as_bfloat16=void2)

        def read(start: int, count: int) -> np.ndarray:  # C order through the mapped F-order view
            idx = np.unravel_index(np.arange(start, start + count), shape)
            return np.asarray(arr[idx])
    else:
        def read(start: int, count: int) -> np.ndarray:  # plain reads: no mapping grows the RSS
            with open(path, "rb") as fh:
                fh.seek(offset + start * dtype.itemsize)
                data = fh.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise BadFile(f"{path!r} ended early")
            return np.frombuffer(data, dtype=dtype)

    return TensorSource(name, shape, dtype, read, fortran_order=fortran)


def _npz_sources(path: str, void2: bool) -> list[TensorSource]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise BadFile(f"{path!r} is not a valid .npz file: {exc}") from None
    sources = []
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue
        name = info.filename[:-4]
        label = f"{path!r} member {info.filename!r}"
        with zf.open(info) as fh:
            shape, fortran, descr, offset = _npy_header(fh, label)
        dtype = _element_dtype(descr, label, void2)
        if fortran and len(shape) > 1:
            raise BadFile(f"{label} is Fortran-ordered; re-save it in C order to stream it")
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if info.file_size < offset + numel * dtype.itemsize:
            raise BadFile(f"{label} is truncated")

        def read(start: int, count: int, info=info, offset=offset, dtype=dtype) -> np.ndarray:
            with zf.open(info) as fh:  # a zip member streams forward only: skip to the range
                _skip(fh, offset + start * dtype.itemsize)
                data = fh.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise BadFile(f"{path!r} member {info.filename!r} ended early")
            return np.frombuffer(data, dtype=dtype)

        sources.append(TensorSource(name, shape, dtype, read))
    return sources


def _skip(fh, n: int) -> None:
    while n > 0:
        got = fh.read(min(n, CHUNK_BYTES))
        if not got:
            return
        n -= len(got)


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
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadFile(f"{path!r}: header is not valid JSON: {exc}") from None
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
        try:
            dtype = _bf16() if dname == "bfloat16" else np.dtype(dname)
        except TypeError:
            dtype = None  # a float8 format NumPy does not know: listed, not compared
        itemsize = {"F8_E4M3": 1, "F8_E5M2": 1}.get(code, dtype.itemsize if dtype is not None else 1)
        numel = 1
        for s in shape:
            numel *= s
        if end - begin != numel * itemsize:
            raise BadFile(f"{path!r}: tensor {name!r} has {end - begin} bytes for shape {shape} of {code} "
                          f"({numel * itemsize} expected)")
        spans.append((begin, end, name))

        def read(start: int, count: int, begin=begin, dtype=dtype) -> np.ndarray:
            with open(path, "rb") as fh:
                fh.seek(data_start + begin + start * dtype.itemsize)
                data = fh.read(count * dtype.itemsize)
            return np.frombuffer(data, dtype=dtype)

        sources.append(TensorSource(name, tuple(shape), dtype if dtype is not None else np.dtype("V1"), read))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise BadFile(f"{path!r}: tensors {n0!r} and {n1!r} overlap in the data")
    return sources


def open_tensors(path: str, *, void2_as_bfloat16: bool = False) -> list[TensorSource]:
    """The tensors of a .npy (one, named after nothing: ''), .npz or .safetensors file.

    Raises OSError for an unreadable file and :class:`BadFile` for invalid content.
    """
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"\x93NUMPY"):
        return [_npy_source(path, "", void2_as_bfloat16)]
    if magic.startswith(b"PK"):
        return _npz_sources(path, void2_as_bfloat16)
    if path.endswith(".safetensors") or (len(magic) == 8 and struct.unpack("<Q", magic)[0] < os.path.getsize(path)):
        return _safetensors_sources(path)
    raise BadFile(f"{path!r} is neither .npy, .npz nor .safetensors")



COMPARABLE = ("float64", "float32", "float16", "bfloat16")


def _match(ta: list[TensorSource], tb: list[TensorSource]):
    if len(ta) == 1 and len(tb) == 1:  # one tensor each (e.g. two .npy files): compare them
        return [(ta[0].name or tb[0].name or "tensor", ta[0], tb[0])], [], []
    ia = {t.name: t for t in ta}
    ib = {t.name: t for t in tb}
    pairs = [(n, ia[n], ib[n]) for n in ia if n in ib]
    return pairs, [n for n in ia if n not in ib], [n for n in ib if n not in ia]


def compare_files(path_a: str, path_b: str, *, atol: float = 0.0, rtol: float = 0.0, void2_as_bfloat16: bool = False,
                  progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Parity of the tensors of two files, streamed in chunks merged exactly (ParityStats.merge).

    Returns the compare body: per-tensor stats (or an error), the names found in only one file, and
    the worst max_abs_diff / cosine_sim over the tensors. OSError for unreadable files, BadFile for
    invalid ones.
    """
    from .parity import ParityStats, parity

    ta = open_tensors(path_a, void2_as_bfloat16=void2_as_bfloat16)
    tb = open_tensors(path_b, void2_as_bfloat16=void2_as_bfloat16)
    pairs, only_a, only_b = _match(ta, tb)
    rows = []
    total = sum(a.numel for _, a, _ in pairs)
    done = 0
    for name, a, b in pairs:
        row: dict = {"name": name, "shape": list(a.shape), "dtypes": [a.dtype.name, b.dtype.name]}
        if a.shape != b.shape:
            row["error"] = f"shape-mismatch: {a.shape} vs {b.shape}"
        elif a.dtype.name not in COMPARABLE or b.dtype.name not in COMPARABLE:
            row["error"] = f"unsupported-dtype: {a.dtype.name} vs {b.dtype.name} (only float tensors are compared)"
        elif a.numel == 0:
            row["numel"] = 0
        else:
            step = max(1, CHUNK_BYTES // max(a.dtype.itemsize, b.dtype.itemsize))
            acc = None
            for start in range(0, a.numel, step):
                count = min(step, a.numel - start)
                part = parity(a.read(start, count), b.read(start, count), atol=atol, rtol=rtol)
                acc = part if acc is None else acc.merge(part)
                done += count
                if progress is not None:
                    progress(name, done, total)
            stats = ParityStats(acc._acc, a.shape, acc.dtypes, atol, rtol)
            row.update({k: v for k, v in stats.to_dict().items() if k not in ("shape", "dtypes", "atol", "rtol")})
        rows.append(row)
    compared = [r for r in rows if "max_abs_diff" in r]
    worst_abs = max((r["max_abs_diff"] for r in compared), key=lambda x: (x != x, x), default=0.0)
    worst_cos = min((r["cosine_sim"] for r in compared), key=lambda x: (x == x, x), default=1.0)
    problems = [r["name"] for r in rows if "error" in r]
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
    }
