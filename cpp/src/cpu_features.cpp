// Run-time ISA detection (cpuid + OS register-state checks via libgcc's __builtin_cpu_supports).
#include "flashparity/cpu_features.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace flashparity {

namespace {

struct Features {
  bool popcnt, avx2, fma, f16c, avx512f, avx512bw, avx512dq, avx512vl, avx512bf16, gfni, avx512bitalg;
};

Features probe() {
  Features f{};
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.popcnt = __builtin_cpu_supports("popcnt");
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.f16c = __builtin_cpu_supports("f16c");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512dq = __builtin_cpu_supports("avx512dq");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
  f.gfni = __builtin_cpu_supports("gfni");
  f.avx512bitalg = __builtin_cpu_supports("avx512bitalg");
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
