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
extern float (*const parity_table)(float*);
float (*const parity_table)(float*) = &kernel;
}} }}
"""
AVX512 = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mprefer-vector-width=512")


def test_a_target_region_unit_passes(tmp_path):
    src = KERNEL.format(prelude="#define FP_ISA FP_ISA_ID_AVX512\n#include \"isa/isa_target.h\"\nFP_ISA_BEGIN",
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


def test_what_a_unit_exports_and_runs_at_load_time(tmp_path):
    region = "#define FP_ISA FP_ISA_ID_AVX2\n#include \"isa/isa_target.h\"\n"
    body = """typedef float vf __attribute__((vector_size(32)));
FP_ISA_BEGIN
namespace { __attribute__((noinline)) void twice(vf* x) { *x = *x + *x; } }
FP_ISA_END
"""
    cases = {
        # a baseline function outside the region that calls the region's code directly
        "helper": "namespace flashparity { void helper(vf* x) { twice(x); } }",
        # the region's code exported as data under another name than the unit's tables
        "pointer": "namespace flashparity { extern void (*const kernel_ptr)(vf*); void (*const kernel_ptr)(vf*) = &twice; }",
        # a table of another unit's namespace
        "foreign table": "namespace flashparity { namespace isa_avx512 { extern void (*const parity_table)(vf*); "
                         "void (*const parity_table)(vf*) = &twice; } }",
        # code that runs when the module loads (a priority puts it in .init_array.00101) or unloads
        "constructor": "volatile float sink; __attribute__((constructor(101))) static void init() "
                       "{ vf x = {sink}; twice(&x); sink = x[0]; }",
        "destructor": "volatile float sink; __attribute__((destructor)) static void fini() "
                      "{ vf x = {sink}; twice(&x); sink = x[0]; }",
    }
    expect = {"helper": "exports flashparity::helper(", "pointer": "exports flashparity::kernel_ptr",
              "foreign table": "exports flashparity::isa_avx512::parity_table",
              "constructor": "per-ISA unit has .init_array", "destructor": "per-ISA unit has .fini_array"}
    for case, code in cases.items():
        obj = compile_obj(tmp_path, f"{case.replace(' ', '_')}_avx2.cpp.o", region + body + code, "-Wno-psabi")
        errs = errors(obj)
        assert any(expect[case] in e for e in errs), (case, errs)
    # a weak (inline) function that reaches the region's code through a local baseline function
    weak = region + body + """namespace { __attribute__((noinline)) void relay(vf* x) { twice(x); } }
namespace flashparity { inline __attribute__((noinline)) void shared(vf* x) { relay(x); }
void (*get())(vf*) { return &shared; } }"""
    errs = errors(compile_obj(tmp_path, "weak_avx2.cpp.o", weak, "-Wno-psabi"))
    assert any("weak function flashparity::shared(" in e and "reaches code above the baseline" in e
               for e in errs), errs


def test_extensions_no_level_has(tmp_path):
    src = """#include <immintrin.h>
namespace { __attribute__((target("avx2,aes,sha,vaes,vpclmulqdq"), noinline))
__m256i f(__m256i a, __m256i b, __m128i c, __m128i d) {
  return _mm256_xor_si256(_mm256_aesenc_epi128(a, b), _mm256_castsi128_si256(_mm_sha1rnds4_epu32(c, d, 0)));
} }
__m256i (*get())(__m256i, __m256i, __m128i, __m128i) { return &f; }"""
    errs = errors(compile_obj(tmp_path, "crypto_avx2.cpp.o", src, "-Wno-psabi"))
    assert any("aes (" in e for e in errs) and any("sha (" in e for e in errs), errs
    # a baseline count of trailing zeros is `rep bsf`, which objdump prints as tzcnt: baseline
    ctz = "int ctz(unsigned x) { return __builtin_ctz(x); }"
    assert errors(compile_obj(tmp_path, "ctz.cpp.o", ctz)) == []


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
    assert feat([0xF3, 0x0F, 0xBC, 0xC7], "tzcnt") is None  # rep bsf: BSF on CPUs without BMI
    assert feat([0xF3, 0x0F, 0xBD, 0xC7], "lzcnt") == "lzcnt"  # not BSR's result
    assert feat([0x66, 0x0F, 0x38, 0xDC, 0xC1], "aesenc") == "aes"
    assert feat([0xC4, 0xE2, 0x7D, 0xDC, 0xC1], "vaesenc") == "aes"
    assert feat([0x8F, 0xE8, 0x78, 0xC0, 0xC1, 0x01], "vprotb") == "xop"
    assert feat([0x8F, 0xC0], "pop") is None
    assert feat([0x62, 0xF4, 0x7C, 0x48, 0x00, 0xC1], "add") == "evex-map4"  # APX
    assert feat([0x62, 0xF3, 0x7C, 0x48, 0x66, 0xC1, 0x00], "vfpclassph") == "avx512fp16"


def test_amx_tiles_only_in_the_amx_unit(tmp_path):
    # AMX's tile instructions (ldtilecfg and tilerelease included) belong to the avx512amx level only:
    # the same kernel passes in the AMX unit and fails in the AVX-512 BF16 unit (where it got AMX by an
    # attribute of its own, as a stray intrinsic would need)
    def unit(level, attribute=""):
        src = f"""#include <immintrin.h>
#define FP_ISA FP_ISA_ID_{level.upper()}
#include "isa/isa_target.h"
FP_ISA_BEGIN
namespace flashparity {{ namespace isa_{level} {{ namespace {{
{attribute} void tiles(const void* cfg, const void* p, void* q) {{
  _tile_loadconfig(cfg); _tile_loadd(4, p, 64); _tile_loadd(6, p, 64); _tile_zero(0);
  _tile_dpbf16ps(0, 4, 6); _tile_stored(0, q, 64); _tile_release();
  __m512 x; __builtin_memcpy(&x, p, 64);
  x = _mm512_dpbf16_ps(x, (__m512bh)_mm512_castps_si512(x), (__m512bh)_mm512_castps_si512(x));
  __builtin_memcpy(q, &x, 64);
}}
}}
extern void (*const attention_table)(const void*, const void*, void*);
void (*const attention_table)(const void*, const void*, void*) = &tiles;
}} }}
FP_ISA_END"""
        return compile_obj(tmp_path, f"attention_{level}.cpp.o", src, "-Wno-psabi")

    probe = """#include <immintrin.h>
__attribute__((target("amx-tile"))) void f(const void* p) { _tile_loadd(0, p, 64); }"""
    try:  # (the build leaves the AMX unit out where the compiler or assembler cannot do this)
        compile_obj(tmp_path, "probe.cpp.o", probe)
    except subprocess.CalledProcessError:
        pytest.skip("this compiler or assembler has no AMX")
    amx_unit = unit("avx512amx")
    assert errors(amx_unit) == []
    errs = errors(unit("avx512bf16", '__attribute__((target("amx-tile,amx-bf16")))'))
    assert any("uses amx (" in e for e in errs), errs
    # each tile instruction is AMX by itself (the report names one example per extension)
    seen = set()
    for line in subprocess.run([OBJDUMP, "-d", "-w", amx_unit], check=True, capture_output=True,
                               text=True).stdout.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].split():
            mnemonic = parts[2].split()[0]
            if mnemonic in ("ldtilecfg", "tileloadd", "tilezero", "tdpbf16ps", "tilestored", "tilerelease"):
                raw = [int(x, 16) for x in parts[1].split()]
                assert check_isa.instruction_feature(raw, mnemonic) == "amx", line
                seen.add(mnemonic)
    assert seen == {"ldtilecfg", "tileloadd", "tilezero", "tdpbf16ps", "tilestored", "tilerelease"}
