"""Writes pairs of tensor files into DIR for `.ci/aarch64 same`: every dtype pair the parity kernel
has a path for, sizes over several blocks with odd tails, NaN/inf/zero placements, tolerances.
Each NAME.pair file holds `A B FLAGS` for `flashparity compare A B --json FLAGS`.

    python .ci/parity_files.py DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file


def raw_safetensors(path: Path, tensors: dict) -> None:
    """A safetensors file written directly (the library's NumPy API predates the FP8 types)."""
    import json
    import struct

    codes = {"float32": "F32", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": codes[arr.dtype.name], "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def main() -> None:
    out = Path(sys.argv[1])
    rng = np.random.default_rng(20261130)
    n = 3 * 4096 + 16 * 7 + 13
    b = rng.standard_normal(n)
    a = b + 1e-3 * rng.standard_normal(n)
    same = rng.integers(0, n, 40)
    a[same] = b[same]  # exact matches
    b[17] = 0.0  # a zero reference: an infinite ratio
    pairs = []

    def npy(name, x, y, flags=""):
        np.save(out / f"{name}_a.npy", x)
        np.save(out / f"{name}_b.npy", y)
        pairs.append((name, out / f"{name}_a.npy", out / f"{name}_b.npy", flags))

    for da, db in [("float32", "float32"), ("float16", "float32"), ("float64", "float32"),
                   ("float16", "float16"), ("float64", "float64"), ("float32", "float16")]:
        npy(f"{da}-{db}", a.astype(da), b.astype(db), "--atol 1e-3 --rtol 1e-3")
        npy(f"{da}-{db}-exact", a.astype(da), b.astype(db))
    # non-finite values and a 2-D shape
    x = a[: 131 * 93].astype(np.float32).reshape(131, 93)[:, :-1].copy()  # (a strided view, copied)
    y = b[: 131 * 92].astype(np.float32).reshape(131, 92)
    x[3, 5], y[7, 1], x[9, 9], y[9, 9] = np.nan, np.inf, np.inf, np.inf
    npy("nonfinite-2d", x, y, "--atol 1e-2")
    # bfloat16 (safetensors) and several tensors matched by name
    bf = ml_dtypes.bfloat16
    save_file({"w": a.astype(bf), "v": a[:999].astype(np.float32)}, str(out / "st_a.safetensors"))
    save_file({"w": b.astype(bf), "v": b[:999].astype(np.float32)}, str(out / "st_b.safetensors"))
    pairs.append(("safetensors-bf16", out / "st_a.safetensors", out / "st_b.safetensors", "--rtol 1e-2"))
    np.savez(out / "z_a.npz", p=a.astype(np.float64), q=a[:5000].astype(np.float16))
    np.savez(out / "z_b.npz", p=b.astype(np.float32), q=b[:5000].astype(np.float32))
    pairs.append(("npz", out / "z_a.npz", out / "z_b.npz", "--atol 1e-4"))
    # FP8 (safetensors F8_E4M3 / F8_E5M2, written by hand) against float32 and bfloat16: the exact
    # element kernel, its ULP rounding (overflow past 448 included) and non-finite rules
    e4, e5 = np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2)
    big = 40.0 * b
    big[5], big[6] = 1000.0, -470.0  # past E4M3's 448
    f8a = {"w": (40.0 * a).astype(e4), "u": (40.0 * a[:3001]).astype(e5)}
    f8a["w"][9] = np.nan
    f8b = {"w": big.astype(np.float32), "u": (40.0 * b[:3001]).astype(bf)}
    raw_safetensors(out / "f8_a.safetensors", f8a)
    raw_safetensors(out / "f8_b.safetensors", f8b)
    pairs.append(("safetensors-fp8", out / "f8_a.safetensors", out / "f8_b.safetensors", "--atol 0.5 --rtol 0.05"))
    for name, pa, pb, flags in pairs:
        (out / f"{name}.pair").write_text(f"{pa} {pb} {flags}\n")


if __name__ == "__main__":
    main()
