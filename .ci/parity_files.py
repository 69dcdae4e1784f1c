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
    for name, pa, pb, flags in pairs:
        (out / f"{name}.pair").write_text(f"{pa} {pb} {flags}\n")


if __name__ == "__main__":
    main()
