// Run-time CPU feature detection and the SIMD level the CPU kernels dispatch on.
#pragma once

#include <string>
#include <vector>

namespace flashparity {

// The levels of one architecture are ordered: a kernel compiled for level L runs on any CPU whose
// level is >= L. x86-64: Scalar (SSE2, the baseline), Avx2, Avx512, Avx512Icl (AVX-512 with Ice
// Lake's and Zen 4's GFNI and BITALG byte instructions), Avx512Amx (+ AVX-512 BF16 and AMX's bfloat16
// tiles, Sapphire Rapids and later, on Linux, which grants the tile state when the level is first
// used; refused, the level falls back to Avx512Icl). aarch64: Neon (ASIMD, the
// baseline), NeonBf16 (+ FEAT_BF16's BFDOT, for bfloat16 attention). Any other architecture: Scalar.
//
// Avx512Amx is an opt-in: it is used only where FLASHPARITY_SIMD=avx512amx asks for it (its kernels
// have not yet run on an AMX CPU in this project's tests); without it an AMX CPU runs Avx512Icl.
enum class SimdLevel : int { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Icl = 3, Avx512Amx = 4, Neon = 16, NeonBf16 = 17 };

const char* simd_level_name(SimdLevel level);

// This architecture's level names, lowest first ("scalar", "avx2", ... on x86-64; "neon", "neonbf16"
// on aarch64).
std::vector<std::string> simd_level_names();

// Highest level this CPU (and its OS, which must save the wide registers, and for AMX grant the tile
// state to the process) supports, opt-in levels included.
SimdLevel detected_simd_level();

// The level kernels use: the detected one, capped by FLASHPARITY_SIMD (a level name of this
// architecture: simd_level_names()) when set; without it, never an opt-in level (Avx512Amx).
// Throws std::invalid_argument on any other value.
SimdLevel active_simd_level();

// Where AMX stands on this machine, in words for `flashparity info`: "not in this build" (a compiler
// without AMX), "not on this CPU", "not enabled by the OS" (XCR0 lacks the tile state), "refused by
// the kernel (arch_prctl(ARCH_REQ_XCOMP_PERM): <errno>)", or "available" (then Avx512Amx is detected).
std::string amx_status();

// FLASHPARITY_AMX_EMULATE=1 (tests and development only): bfloat16 flash2 at the AVX-512 levels runs
// the AMX kernels' tiling, packing and softmax with each tile instruction emulated in plain code, on any
// CPU with AVX-512 BF16. Throws std::invalid_argument on a value other than 0 or 1.
bool amx_emulation();

// AVX-512 BF16 dot products usable (CPU support, and the active level is AVX-512 or above).
bool cpu_has_avx512bf16();
// Whether the CPU has PCLMULQDQ (carry-less multiplies: the CRC-32 folding of the AVX2 units, which
// check it themselves; a VM may show AVX2 without it, and then gets the table CRC, not a lower level).
bool cpu_has_pclmul();
// Whether an aarch64 CPU has the CRC32 instructions (FEAT_CRC32: the zip polynomial; optional in
// ARMv8.0, present on every core shipped in servers and laptops). False elsewhere.
bool cpu_has_crc32();

// Names of the relevant ISA extensions present (x86-64: popcnt, avx2, fma, f16c, avx512f, avx512bf16,
// ...; aarch64: asimd, crc32, fphp, asimdhp, asimdfhm, bf16, i8mm, sve, sve2).
std::vector<std::string> cpu_feature_names();

}  // namespace flashparity
