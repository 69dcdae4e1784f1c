"""`--simd LEVEL` for the CPU benchmarks: flashparity runs at LEVEL (FLASHPARITY_SIMD), and the
libraries it is compared with are held to the same instruction set (`scalar`: the lowest their
settings name, SSE4.x, above flashparity's SSE2), so that a machine with AVX-512 measures what a
CPU with only AVX2 (or no AVX) gets from each. Imported first by each benchmark
script: the libraries read these variables when they load.

    PyTorch's ATen kernels   ATEN_CPU_CAPABILITY
    MKL (PyTorch's BLAS)     MKL_ENABLE_INSTRUCTIONS
    oneDNN                   ONEDNN_MAX_CPU_ISA
    OpenBLAS (NumPy's BLAS)  OPENBLAS_CORETYPE
"""

from __future__ import annotations

import os
import platform
import sys

# this architecture's levels (flashparity's _core.simd_levels(), which cannot be imported yet)
LEVELS = ("neon", "neonbf16") if platform.machine().lower() in ("aarch64", "arm64") else (
    "scalar", "avx2", "avx512", "avx512icl", "avx512amx")
CAPS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell"},
    # AVX-512 with BF16 but without AMX: oneDNN (torch's bfloat16 matmuls) held below its AMX kernels
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "avx512icl": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "scalar": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41",
               "OPENBLAS_CORETYPE": "Nehalem"},
}
TITLES = {"scalar": "scalar level, no AVX", "avx2": "AVX2 level", "avx512": "AVX-512 level",
          "avx512icl": "AVX-512 level", "avx512amx": "AMX level", "neon": "NEON level", "neonbf16": "NEON BF16 level"}


def level_from_argv(argv: list[str]) -> str | None:
    """The value of --simd in argv (before argparse runs: the variables must precede the imports)."""
    for i, arg in enumerate(argv):
        if arg == "--simd" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--simd="):
            return arg.split("=", 1)[1]
    return None


def apply(level: str | None) -> None:
    if level is None:
        return
    if level not in LEVELS:
        sys.exit(f"--simd must be one of {', '.join(LEVELS)}, got {level!r}")
    os.environ["FLASHPARITY_SIMD"] = level
    for name, value in CAPS.get(level, {}).items():
        os.environ[name] = value


def title(section: str, level: str | None) -> str:
    """The BENCHMARKS.md section of a run: its own section per level."""
    return section if level is None else f"{section[:-1]}, {TITLES[level]})"


def held_to(level: str | None) -> list[str]:
    """Lines saying how the run held each library to the level (none for a default run)."""
    if level is None:
        return []
    caps = ", ".join(f"{k}={v}" for k, v in CAPS.get(level, {}).items())
    held = "as low as their settings go" if level == "scalar" else "to it"
    return ["", f"flashparity at FLASHPARITY_SIMD={level}" + (f"; the others held {held} by {caps}" if caps else "") + "."]


# OpenBLAS's idle threads spin for a while after each call (2^28 cycles by default), taking a core
# from whatever is timed next on a 2-core machine; 2^4 makes them sleep at once.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
LEVEL = level_from_argv(sys.argv)
apply(LEVEL)
