""".safetensors files: the JSON header parsed strictly and checked against the file (offsets in
bounds, no overlaps, known dtypes) before any tensor is read."""

from __future__ import annotations

import os
import struct


from .source import BadFile, TensorSource, _named_dtype, _RangeReader, strict_json


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
