"""What one side of a comparison holds: a tensor file opened by its magic bytes, or a directory (a
sharded checkpoint with a ``*.safetensors.index.json``, or any tree of tensor files)."""

from __future__ import annotations

import dataclasses
import os
import struct


from .npy import _npy_source
from .npz import _npz_sources
from .safetensors import _safetensors_sources
from .source import BadFile, TensorSource, Voids, _regular, strict_json


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
