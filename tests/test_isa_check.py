"""cmake/check_isa.py, the build's proof that no instruction above a CPU's level is reachable on it:
it accepts a unit written as isa_target.h says and rejects each hazard it exists for, compiled
here from small sources with the build's compiler."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("c++")
OBJDUMP = shutil.which("objdump")

pytestmark = [
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 check"),
    pytest.mark.skipif(CXX is None or OBJDUMP is None, reason="needs a C++ compiler and objdump"),
]


def _checker():
    spec = importlib.util.spec_from_file_location("check_isa", ROOT / "cmake" / "check_isa.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_isa"] = mod  # (dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


check_isa = _checker()


def compile_obj(tmp_path: Path, name: str, source: str, *flags: str) -> str:
    src = tmp_path / name.replace(".cpp.o", ".cpp")
    src.write_text(source)
    obj = tmp_path / name
    subprocess.run([CXX, "-std=c++17", "-O2", "-fPIC", "-I", str(ROOT / "cpp" / "src"), *flags, "-c", str(src),
                    "-o", str(obj)], check=True, capture_output=True)
    return str(obj)


def errors(*objects: str) -> list[str]:
    return check_isa.check(OBJDUMP, list(objects))


KERNEL = """
#include <cstring>
typedef float v16 __attribute__((vector_size(64)));
// a shared header's inline function, emitted out of line (a weak symbol) in every unit using it
__attribute__((noinline)) inline void square(v16* x) {{ *x = *x * *x; }}
{prelude}
namespace flashparity {{ namespace isa_avx512 {{ namespace {{
float kernel(float* p) {{
  v16 x;
  std::memcpy(&x, p, sizeof(x));
  x = x * x + x;
  square(&x);
  std::memcpy(p, &x, sizeof(x));
  return x[0];
}}
}}
}} }}
{epilogue}
namespace flashparity {{ namespace isa_avx512 {{
extern float (*const table)(float*);
float (*const table)(float*) = &kernel;
}} }}
"""
AVX512 = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mprefer-vector-width=512")


def test_a_target_region_unit_passes(tmp_path):
    src = KERNEL.format(prelude="#define FP_ISA FP_ISA_ID_AVX512\n#include \"isa_target.h\"\nFP_ISA_BEGIN",
                        epilogue="FP_ISA_END")
    assert errors(compile_obj(tmp_path, "kernel_avx512.cpp.o", src, "-Wno-psabi")) == []


def test_whole_unit_flags_leak_a_shared_inline_function(tmp_path):
    # the old way: -mavx512f on the whole file makes a shared header's inline function AVX-512 code,
    # a weak symbol the linker may hand to the scalar level
    obj = compile_obj(tmp_path, "kernel_avx512.cpp.o", KERNEL.format(prelude="", epilogue=""), *AVX512)
    errs = errors(obj)
    assert any("weak function square(" in e and "avx512f" in e and "the linker may give this copy" in e
               for e in errs), errs


def test_thread_local_of_a_unit_reached_from_common_code(tmp_path):
    # the SIGILL of issue 14: common code called a function of the AVX-512 BF16 unit directly
    unit = compile_obj(tmp_path, "attn_avx512bf16.cpp.o", """
#include <vector>
namespace flashparity { namespace isa_avx512bf16 {
namespace { thread_local std::vector<float> cache; }
void release() { cache = std::vector<float>(); }
} }""", "-mavx512f", "-mavx512bf16")
    common = compile_obj(tmp_path, "attention_cpu.cpp.o", """
namespace flashparity { namespace isa_avx512bf16 { void release(); }
void run() { isa_avx512bf16::release(); } }""")
    errs = errors(unit, common)
    assert any("attention_cpu.cpp.o: refers to flashparity::isa_avx512bf16::release()" in e for e in errs), errs
    assert any("global function flashparity::isa_avx512bf16::release()" in e for e in errs), errs


def test_instructions_above_the_level_of_the_file(tmp_path):
    def unit(name, vector_bytes, *flags):
        src = f"""typedef float vf __attribute__((vector_size({vector_bytes})));
namespace {{ void twice(vf* x) {{ *x = *x + *x; }} }}
void (*get())(vf*) {{ return &twice; }}"""
        return compile_obj(tmp_path, name, src, "-Wno-psabi", *flags)

    errs = errors(unit("dot_scalar.cpp.o", 32, "-mavx2"), unit("dot_common.cpp.o", 32, "-mavx2"),
                  unit("dot_avx2.cpp.o", 64, *AVX512))
    assert any(e.startswith("dot_scalar.cpp.o (level scalar)") and "avx2" in e for e in errs), errs
    assert any(e.startswith("dot_common.cpp.o (level baseline)") and "avx2" in e for e in errs), errs
    assert any(e.startswith("dot_avx2.cpp.o (level avx2)") and "avx512f" in e for e in errs), errs


def test_load_time_code_and_a_region_that_did_not_take(tmp_path):
    unit = compile_obj(tmp_path, "init_avx2.cpp.o", """
#include <cstdlib>
namespace { int seed = std::rand(); }
int get() { return seed; }""")
    errs = errors(unit)
    assert any("per-ISA unit has .init_array" in e for e in errs), errs
    assert any("level avx2 but no instruction of it" in e for e in errs), errs


def test_instruction_features():
    feat = check_isa.instruction_feature
    assert feat([0x48, 0x01, 0xC4], "add") is None  # c4 as a ModRM byte, not a VEX prefix
    assert feat([0xC5, 0xFC, 0x10, 0x07], "vmovups") == "avx2"
    assert feat([0x62, 0xF1, 0x7C, 0x48, 0x10, 0x07], "vmovups") == "avx512f"
    assert feat([0xC5, 0xF8, 0x92, 0xC8], "kmovw") == "avx512f"  # VEX-encoded, needs AVX-512
    assert feat([0x62, 0xF2, 0x7E, 0x48, 0x52, 0xC1], "vdpbf16ps") == "avx512bf16"
    assert feat([0xF3, 0x48, 0x0F, 0xB8, 0xC0], "popcnt") == "popcnt"
    assert feat([0x66, 0x0F, 0x38, 0x00, 0xC1], "pshufb") == "sse4"
    assert feat([0xC4, 0xE2, 0x78, 0xF2, 0xC1], "andn") == "bmi"
    assert feat([0x62, 0xF5, 0x7C, 0x48, 0x58, 0xC1], "vaddph") == "avx512fp16"
    assert feat([0x66, 0x0F, 0x58, 0xC1], "addpd") is None
