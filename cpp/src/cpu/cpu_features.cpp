// Run-time ISA detection: CPUID feature bits and the register state the OS saves (XGETBV).
#include "flashparity/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#endif
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace flashparity {

namespace {

struct Features {
  bool popcnt, pclmul, avx2, fma, f16c, avx512f, avx512bw, avx512dq, avx512vl, avx512bf16, gfni, avx512bitalg;
  bool amx_tile, amx_bf16, amx_os;  // CPUID's AMX-TILE and AMX-BF16; XCR0's tile state (XTILECFG, XTILEDATA)
  bool asimd, crc32, fphp, asimdhp, asimdfhm, bf16, i8mm, sve, sve2;  // aarch64
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
  f.pclmul = c & (1u << 1);
  std::uint64_t xcr0 = 0;
  if (osxsave) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<std::uint64_t>(hi) << 32) | lo;
  }
  const bool ymm = avx && (xcr0 & 0x6) == 0x6;      // XMM and YMM state
  const bool zmm = ymm && (xcr0 & 0xe0) == 0xe0;     // + opmask, ZMM_Hi256, Hi16_ZMM
  f.amx_os = (xcr0 & 0x60000) == 0x60000;            // bits 17, 18: XTILECFG, XTILEDATA
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
    f.amx_bf16 = d & (1u << 22);
    f.amx_tile = d & (1u << 24);
    const unsigned sub_leaves = a;
    if (sub_leaves >= 1) {
      __cpuid_count(7, 1, a, b, c, d);
      f.avx512bf16 = zmm && (a & (1u << 5));
    }
  }
#elif defined(__aarch64__) && defined(__linux__)
  // the kernel's HWCAP bits (asm/hwcap.h; spelled out: older headers lack the newer ones)
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  f.asimd = hw & (1ul << 1);
  f.crc32 = hw & (1ul << 7);
  f.fphp = hw & (1ul << 9);
  f.asimdhp = hw & (1ul << 10);
  f.sve = hw & (1ul << 22);
  f.asimdfhm = hw & (1ul << 23);
  f.sve2 = hw2 & (1ul << 1);
  f.i8mm = hw2 & (1ul << 13);
  f.bf16 = hw2 & (1ul << 14);
#elif defined(__aarch64__) && defined(__APPLE__)
  // macOS names the features in sysctl (hw.optional.arm.FEAT_*); ASIMD, FP16 and CRC32 are on every M1
  const auto has = [](const char* name) {
    int v = 0;
    size_t len = sizeof(v);
    return sysctlbyname(name, &v, &len, nullptr, 0) == 0 && v != 0;
  };
  f.asimd = true;
  f.crc32 = has("hw.optional.armv8_crc32");
  f.fphp = f.asimdhp = has("hw.optional.arm.FEAT_FP16");
  f.asimdfhm = has("hw.optional.arm.FEAT_FHM");
  f.bf16 = has("hw.optional.arm.FEAT_BF16");
  f.i8mm = has("hw.optional.arm.FEAT_I8MM");
#endif
  return f;
}

const Features& features() {
  static const Features f = probe();
  return f;
}

// AMX's tile data (8 KiB a thread) is a dynamically enabled XSAVE feature on Linux (5.16+): a process
// asks for it once, ARCH_REQ_XCOMP_PERM with XFEATURE_XTILEDATA, before its first tile instruction
// (which would otherwise die of SIGILL). Asked only when FLASHPARITY_SIMD=avx512amx first selects
// the level (a granted request enlarges every signal frame of the process, and sigaltstack() then
// refuses stacks smaller than that): never by detection alone. Until then a CPU and OS with AMX count
// as having the level; after a refusal they do not.
// 0: not asked yet, 1: granted, 2: refused.
std::atomic<int> g_amx_permission{0};

// Asks once; empty when granted, else why not.
const std::string& amx_request() {
  static const std::string why = [] {
#if defined(__x86_64__) && defined(__linux__)
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // asm/prctl.h, asm/fpu/types.h
    std::string r;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) {
      const int err = errno;
      r = std::string("refused by the kernel (arch_prctl(ARCH_REQ_XCOMP_PERM): ") + std::strerror(err) + ")";
    }
#else
    const std::string r = "not supported by flashparity on this OS";
#endif
    g_amx_permission.store(r.empty() ? 1 : 2);
    return r;
  }();
  return why;
}

bool amx_built() {
#if defined(FP_HAVE_AMX_UNIT)
  return true;
#else
  return false;
#endif
}

#if defined(__x86_64__) || defined(__i386__)
// The CPU, the OS and the build have AMX, and the tile state was not refused (if it was asked for).
bool amx_usable() {
#if defined(__x86_64__) && defined(__linux__)
  const Features& f = features();
  return amx_built() && f.amx_tile && f.amx_bf16 && f.amx_os && f.avx512bf16 && g_amx_permission.load() != 2;
#else
  return false;  // (the tile state is asked for on Linux only)
#endif
}
#endif

struct LevelName {
  SimdLevel level;
  const char* name;
};
#if defined(__x86_64__) || defined(__i386__)
constexpr LevelName kLevels[] = {{SimdLevel::Scalar, "scalar"}, {SimdLevel::Avx2, "avx2"},
                                 {SimdLevel::Avx512, "avx512"}, {SimdLevel::Avx512Icl, "avx512icl"},
                                 {SimdLevel::Avx512Amx, "avx512amx"}};
constexpr SimdLevel kHighestDefault = SimdLevel::Avx512Icl;  // the levels above it are opt-ins
#elif defined(__aarch64__)
constexpr LevelName kLevels[] = {{SimdLevel::Neon, "neon"}, {SimdLevel::NeonBf16, "neonbf16"}};
constexpr SimdLevel kHighestDefault = SimdLevel::NeonBf16;
#else
constexpr LevelName kLevels[] = {{SimdLevel::Scalar, "scalar"}};
constexpr SimdLevel kHighestDefault = SimdLevel::Scalar;
#endif

}  // namespace

const char* simd_level_name(SimdLevel level) {
  for (const LevelName& l : kLevels)
    if (l.level == level) return l.name;
  return "unknown";
}

std::vector<std::string> simd_level_names() {
  std::vector<std::string> out;
  for (const LevelName& l : kLevels) out.emplace_back(l.name);
  return out;
}

SimdLevel detected_simd_level() {
#if defined(__x86_64__) || defined(__i386__)
  const Features& f = features();
  if (f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx2 && f.fma && f.f16c && f.popcnt) {
    if (!(f.gfni && f.avx512bitalg)) return SimdLevel::Avx512;
    return amx_usable() ? SimdLevel::Avx512Amx : SimdLevel::Avx512Icl;  // (every AMX CPU has GFNI, BITALG)
  }
  if (f.avx2 && f.fma && f.f16c && f.popcnt) return SimdLevel::Avx2;
#elif defined(__aarch64__)
  if (features().bf16) return SimdLevel::NeonBf16;
#endif
  return kLevels[0].level;
}

SimdLevel active_simd_level() {
  const SimdLevel level = detected_simd_level();
  const char* env = std::getenv("FLASHPARITY_SIMD");
  if (env == nullptr || *env == '\0')  // opt-in levels only when asked for by name
    return static_cast<int>(level) > static_cast<int>(kHighestDefault) ? kHighestDefault : level;
  const std::string want(env);
  for (const LevelName& l : kLevels)  // a cap: never above the CPU's level
    if (want == l.name) {
      const SimdLevel capped = static_cast<int>(l.level) < static_cast<int>(level) ? l.level : level;
#if defined(__x86_64__) || defined(__i386__)
      // the tile state, asked for at the first use of the level; refused: AVX-512 ICL's kernels
      if (capped == SimdLevel::Avx512Amx && !amx_request().empty()) return SimdLevel::Avx512Icl;
#endif
      return capped;
    }
  std::string names;
  const int n = static_cast<int>(sizeof(kLevels) / sizeof(kLevels[0]));
  for (int i = 0; i < n; ++i) names += std::string(i == 0 ? "" : i + 1 == n ? " or " : ", ") + kLevels[i].name;
  throw std::invalid_argument("FLASHPARITY_SIMD must be " + names + ", got '" + want + "'");
}

std::string amx_status() {
  const Features& f = features();
  if (!amx_built()) return "not in this build (its compiler has no AMX intrinsics)";
  if (!(f.amx_tile && f.amx_bf16)) return "not on this CPU";
  if (!f.amx_os) return "not enabled by the OS (XCR0 lacks the tile state)";
  if (!f.avx512bf16) return "not usable: the CPU lacks AVX-512 BF16";
  if (g_amx_permission.load() == 2) return amx_request();  // (the reason, asked already)
#if !(defined(__x86_64__) && defined(__linux__))
  return "not supported by flashparity on this OS";
#endif
  return "available";
}

bool amx_emulation() {
  const char* env = std::getenv("FLASHPARITY_AMX_EMULATE");
  if (env == nullptr || *env == '\0' || std::string(env) == "0") return false;
  if (std::string(env) == "1") return true;
  throw std::invalid_argument(std::string("FLASHPARITY_AMX_EMULATE must be 0 or 1, got '") + env + "'");
}

bool cpu_has_pclmul() { return features().pclmul; }

bool cpu_has_crc32() { return features().crc32; }

bool cpu_has_avx512bf16() { return features().avx512bf16 && active_simd_level() >= SimdLevel::Avx512; }

std::vector<std::string> cpu_feature_names() {
  const Features& f = features();
  const std::pair<bool, const char*> all[] = {
      {f.popcnt, "popcnt"},     {f.pclmul, "pclmul"},     {f.avx2, "avx2"},         {f.fma, "fma"},
      {f.f16c, "f16c"},         {f.avx512f, "avx512f"},   {f.avx512bw, "avx512bw"},
      {f.avx512dq, "avx512dq"}, {f.avx512vl, "avx512vl"}, {f.avx512bf16, "avx512bf16"},
      {f.gfni, "gfni"},         {f.avx512bitalg, "avx512bitalg"},
      {f.amx_tile, "amx-tile"}, {f.amx_bf16, "amx-bf16"},
      {f.asimd, "asimd"},       {f.crc32, "crc32"},       {f.fphp, "fphp"},
      {f.asimdhp, "asimdhp"},   {f.asimdfhm, "asimdfhm"},
      {f.bf16, "bf16"},         {f.i8mm, "i8mm"},         {f.sve, "sve"},
      {f.sve2, "sve2"}};
  std::vector<std::string> out;
  for (const auto& [present, name] : all)
    if (present) out.emplace_back(name);
  return out;
}

}  // namespace flashparity
