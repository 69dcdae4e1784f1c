"""The CUDA attention kernels' machine code, read without a GPU: every element load is a typed load
(ld.global.u16/f32/f64 or 16-byte vectors), never byte by byte. Byte-wise loads (what a memcpy
from an unaligned address compiles to) cost the kernels up to 8x the load instructions; the one
place they may appear is RepackBytesKernel, which copies an input whose elements are not aligned
to their size into an aligned buffer once, before the kernels run (cuda/attention_inputs.cu).

The PTX is generated here with the build's nvcc for compute_80 (the oldest architecture built), from
the sources of this checkout; the test runs with the CUDA build (FLASHPARITY_CUDA=ON), skips elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import flashparity as fp

ROOT = Path(__file__).resolve().parent.parent
BYTE_LOAD = re.compile(r"\bld\.(?:global\.)?(?:nc\.)?[us]8\b")
ENTRY = re.compile(r"^(?:\.visible |\.weak )?\.entry (\S+)\(", re.M)


def _nvcc() -> str | None:
    return shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.access(p, os.X_OK)), None)


def _entries(ptx: str) -> dict[str, str]:
    """kernel name -> its PTX body."""
    starts = [(m.start(), m.group(1)) for m in ENTRY.finditer(ptx)]
    return {name: ptx[s:(starts[i + 1][0] if i + 1 < len(starts) else len(ptx))] for i, (s, name) in enumerate(starts)}


@pytest.fixture(scope="module")
def attention_ptx(tmp_path_factory) -> dict[str, str]:
    nvcc = _nvcc()
    if not fp.build_info()["cuda"]:
        pytest.skip("CPU-only build (the CUDA build stage runs this)")
    if nvcc is None:
        pytest.skip("nvcc not found")
    out = tmp_path_factory.mktemp("ptx")
    sources = sorted(ROOT.glob("cuda/attention_*.cu"))
    assert sources, "no CUDA attention sources next to the tests"
    procs = []
    for src in sources:
        cmd = [nvcc, "-std=c++17", "--expt-relaxed-constexpr", "-O3", "-arch=compute_80", "-ptx",
               f"-I{ROOT / 'cpp' / 'include'}", f"-I{ROOT / 'cuda'}", str(src), "-o", str(out / (src.stem + ".ptx"))]
        procs.append((src, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    kernels: dict[str, str] = {}
    for src, proc in procs:
        log = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, f"nvcc -ptx {src.name} failed:\n{log}"
        kernels.update(_entries((out / (src.stem + ".ptx")).read_text()))
    return kernels


def test_attention_kernels_load_elements_with_typed_loads(attention_ptx):
    names = list(attention_ptx)
    for family in ("NaiveScoresKernel", "NaivePVKernel", "Flash2SimtKernel", "Flash2MmaKernel", "Flash2CombineKernel"):
        assert any(family in n for n in names), f"no {family} in the PTX"
    # (FP8 instantiations load one-byte elements: a byte load is their typed load)
    fp8 = [n for n in names if "f8e4m3_bits" in n or "f8e5m2_bits" in n]
    assert any("Flash2Simt" in n for n in fp8) and any("NaiveScores" in n for n in fp8), "no FP8 kernels in the PTX"
    byte_loads = {n: len(BYTE_LOAD.findall(body)) for n, body in attention_ptx.items()
                  if "RepackBytesKernel" not in n and n not in fp8}
    offenders = {n: c for n, c in byte_loads.items() if c}
    assert not offenders, f"byte-wise global loads in attention kernels: {offenders}"
    # the element loads are there, typed
    typed = re.compile(r"\bld\.global\.(?:nc\.)?(?:u8|u16|b16|f32|f64|v4\.u32|v4\.b32)\b")
    for n, body in attention_ptx.items():
        if "Naive" in n and "Softmax" not in n or "Simt" in n:
            assert typed.search(body), f"{n} has no typed global loads"
    repack = [n for n in names if "RepackBytesKernel" in n]
    assert repack and BYTE_LOAD.search(attention_ptx[repack[0]])  # the one place they belong
