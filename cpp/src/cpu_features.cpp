// Run-time ISA detection: CPUID feature bits and the register state the OS saves (XGETBV).
#include "flashparity/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace flashparity {

namespace {

struct Features {
  bool popcnt, avx2, fma, f16c, avx512f, avx512bw, avx512dq, avx512vl, avx512bf16, gfni, avx512bitalg;
};

// CPUID's feature bits, and XGETBV's: the OS must save the YMM (AVX) and the opmask and ZMM
// (AVX-512) registers for those instructions to be usable. (Read directly: libgcc's
// __builtin_cpu_supports does the same, but Clang's knows fewer feature names.)
Features probe() {
  Features f{};
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28);
  f.popcnt = c & (1u << 23);
  std::uint64_t xcr0 = 0;
  if (osxsave) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<std::uint64_t>(hi) << 32) | lo;
  }
  const bool ymm = avx && (xcr0 & 0x6) == 0x6;      // XMM and YMM state
  const bool zmm = ymm && (xcr0 & 0xe0) == 0xe0;     // + opmask, ZMM_Hi256, Hi16_ZMM
  f.fma = ymm && (c & (1u << 12));
  f.f16c = ymm && (c & (1u << 29));
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = ymm && (b & (1u << 5));
    f.avx512f = zmm && (b & (1u << 16));
    f.avx512dq = zmm && (b & (1u << 17));
    f.avx512bw = zmm && (b & (1u << 30));
    f.avx512vl = zmm && (b & (1u << 31));
    f.gfni = c & (1u << 8);
    f.avx512bitalg = zmm && (c & (1u << 12));
    const unsigned sub_leaves = a;
    if (sub_leaves >= 1) {
      __cpuid_count(7, 1, a, b, c, d);
      f.avx512bf16 = zmm && (a & (1u << 5));
    }
  }
#endif
  return f;
}

const Features& features() {
  static const Features f = probe();
  return f;
}

}  // namespace

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Avx512Icl: return "avx512icl";
    case SimdLevel::Avx512: return "avx512";
    case SimdLevel::Avx2: return "avx2";
    default: return "scalar";
  }
}

SimdLevel detected_simd_level() {
  const Features& f = features();
  if (f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx2 && f.fma && f.f16c && f.popcnt)
    return f.gfni && f.avx512bitalg ? SimdLevel::Avx512Icl : SimdLevel::Avx512;
  if (f.avx2 && f.fma && f.f16c && f.popcnt) return SimdLevel::Avx2;
  return SimdLevel::Scalar;
}

SimdLevel active_simd_level() {
  SimdLevel level = detected_simd_level();
  const char* env = std::getenv("FLASHPARITY_SIMD");
  if (env == nullptr || *env == '\0') return level;
  const std::string want(env);
  SimdLevel cap;
  if (want == "scalar") cap = SimdLevel::Scalar;
  else if (want == "avx2") cap = SimdLevel::Avx2;
  else if (want == "avx512") cap = SimdLevel::Avx512;
  else if (want == "avx512icl") cap = SimdLevel::Avx512Icl;
  else
    throw std::invalid_argument("FLASHPARITY_SIMD must be scalar, avx2, avx512 or avx512icl, got '" + want + "'");
  return static_cast<int>(cap) < static_cast<int>(level) ? cap : level;
}

bool cpu_has_avx512bf16() { return features().avx512bf16 && active_simd_level() >= SimdLevel::Avx512; }

std::vector<std::string> cpu_feature_names() {
  const Features& f = features();
  std::vector<std::string> out;
  if (f.popcnt) out.emplace_back("popcnt");
  if (f.avx2) out.emplace_back("avx2");
  if (f.fma) out.emplace_back("fma");
  if (f.f16c) out.emplace_back("f16c");
  if (f.avx512f) out.emplace_back("avx512f");
  if (f.avx512bw) out.emplace_back("avx512bw");
  if (f.avx512dq) out.emplace_back("avx512dq");
  if (f.avx512vl) out.emplace_back("avx512vl");
  if (f.avx512bf16) out.emplace_back("avx512bf16");
  if (f.gfni) out.emplace_back("gfni");
  if (f.avx512bitalg) out.emplace_back("avx512bitalg");
  return out;
}

}  // namespace flashparity
