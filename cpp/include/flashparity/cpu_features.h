// Run-time CPU feature detection and the SIMD level the CPU kernels dispatch on.
#pragma once

#include <string>
#include <vector>

namespace flashparity {

// Ordered: a kernel compiled for level L runs on any CPU whose level is >= L.
// Avx512Icl is AVX-512 with Ice Lake's (and Zen 4's) GFNI and BITALG byte instructions.
enum class SimdLevel : int { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Icl = 3 };

const char* simd_level_name(SimdLevel level);

// Highest level this CPU (and its OS, which must save the wide registers) supports.
SimdLevel detected_simd_level();

// The level kernels use: the detected one, capped by FLASHPARITY_SIMD (scalar, avx2, avx512 or
// avx512icl) when set. Throws std::invalid_argument on an unknown FLASHPARITY_SIMD value.
SimdLevel active_simd_level();

// AVX-512 BF16 dot products usable (CPU support, and the active level is AVX-512 or above).
bool cpu_has_avx512bf16();

// Names of the relevant ISA extensions present (popcnt, avx2, fma, f16c, avx512f, avx512bf16, ...).
std::vector<std::string> cpu_feature_names();

}  // namespace flashparity
