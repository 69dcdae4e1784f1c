"""Tensor files, read safely and in chunks: .npy, .npz and .safetensors, and directories of them
(sharded checkpoints with a ``*.safetensors.index.json``, or any tree of tensor files).

Layer: imports only ``flashparity._core`` (CRC-32) and NumPy (ml_dtypes for bfloat16 and FP8);
nothing of flashparity above it. One module per format (:mod:`.npy`, :mod:`.npz`,
:mod:`.safetensors`), what they share in :mod:`.source`, and a comparison side in :mod:`.tree`.

Untrusted files are handled defensively: no pickles, headers validated against the file (sizes,
offsets, overlaps, dtypes) before any data is read, and every problem is a :class:`BadFile` with a
message naming the file and what is wrong. The data of a .npy file, a .safetensors tensor and a
stored (uncompressed) .npz member is one byte range of its file, read with positioned reads
(``os.preadv``) straight into the caller's buffers; deflated .npz members stream forward through
zlib into the same buffers.
"""

from __future__ import annotations

from .npy import load_npy
from .source import FP8_FORMATS, BadFile, Reader, TensorSource, Voids, strict_json
from .tree import open_side, open_tensors

__all__ = ["BadFile", "FP8_FORMATS", "Reader", "TensorSource", "Voids", "load_npy", "open_side", "open_tensors",
           "strict_json"]
