// Run-time dispatch of the CPU kernels: the one place that names a per-ISA unit's table. Each unit
// (see isa/isa_target.h) exports nothing but its tables; the level picked here never exceeds what the
// CPU supports (active_simd_level), so no instruction above the CPU's level can be reached.
#include "cpu/attention_backward_cpu.h"
#include "cpu/attention_cpu.h"
#include "cpu/parity_cpu.h"
#include "flashparity/cpu_features.h"

namespace flashparity {

#define FP_DECLARE_PARITY_TABLE(ns) \
  namespace ns {                    \
  extern const ParityTable parity_table; \
  }
#define FP_DECLARE_ATTENTION_TABLE(ns) \
  namespace ns {                       \
  extern const AttentionTable attention_table; \
  extern const AttentionBackwardTable attention_backward_table; \
  }

FP_DECLARE_PARITY_TABLE(isa_scalar)
FP_DECLARE_ATTENTION_TABLE(isa_scalar)
#if defined(__x86_64__) || defined(__i386__)
FP_DECLARE_PARITY_TABLE(isa_avx2)
FP_DECLARE_PARITY_TABLE(isa_avx512)
FP_DECLARE_PARITY_TABLE(isa_avx512icl)
FP_DECLARE_ATTENTION_TABLE(isa_avx2)
FP_DECLARE_ATTENTION_TABLE(isa_avx512)
FP_DECLARE_ATTENTION_TABLE(isa_avx512bf16)
namespace isa_avx512bf16 {
extern const AttentionTable amx_emulated_attention_table;
}
#if defined(FP_HAVE_AMX_UNIT)
namespace isa_avx512amx {  // (bfloat16 forward only: its backward is the AVX-512 BF16 unit's)
extern const AttentionTable attention_table;
}
#endif
#elif defined(__aarch64__)
FP_DECLARE_PARITY_TABLE(isa_neon)
FP_DECLARE_ATTENTION_TABLE(isa_neon)
FP_DECLARE_ATTENTION_TABLE(isa_neonbf16)
#endif

const ParityTable& active_parity_table() {
  switch (active_simd_level()) {
#if defined(__x86_64__) || defined(__i386__)
    case SimdLevel::Avx512Amx:  // (nothing in parity needs more than AVX-512 ICL)
    case SimdLevel::Avx512Icl: return isa_avx512icl::parity_table;
    case SimdLevel::Avx512: return isa_avx512::parity_table;
    case SimdLevel::Avx2: return isa_avx2::parity_table;
#elif defined(__aarch64__)
    case SimdLevel::NeonBf16:  // (nothing in parity needs more than NEON)
    case SimdLevel::Neon: return isa_neon::parity_table;
#endif
    default: return isa_scalar::parity_table;
  }
}

const AttentionTable& active_attention_table([[maybe_unused]] DType dtype) {
  switch (active_simd_level()) {
#if defined(__x86_64__) || defined(__i386__)
    case SimdLevel::Avx512Amx:  // (detected only where the AMX unit is built)
#if defined(FP_HAVE_AMX_UNIT)
      if (dtype == DType::BFloat16)
        return amx_emulation() ? isa_avx512bf16::amx_emulated_attention_table : isa_avx512amx::attention_table;
#endif
      [[fallthrough]];
    case SimdLevel::Avx512Icl:  // nothing else in attention needs more than AVX-512
    case SimdLevel::Avx512:
      if (dtype == DType::BFloat16 && cpu_has_avx512bf16())
        return amx_emulation() ? isa_avx512bf16::amx_emulated_attention_table : isa_avx512bf16::attention_table;
      return isa_avx512::attention_table;
    case SimdLevel::Avx2: return isa_avx2::attention_table;
#elif defined(__aarch64__)
    case SimdLevel::NeonBf16:
      return dtype == DType::BFloat16 ? isa_neonbf16::attention_table : isa_neon::attention_table;
    case SimdLevel::Neon: return isa_neon::attention_table;
#endif
    default: return isa_scalar::attention_table;
  }
}

const AttentionBackwardTable& active_attention_backward_table([[maybe_unused]] DType dtype) {
  switch (active_simd_level()) {
#if defined(__x86_64__) || defined(__i386__)
    case SimdLevel::Avx512Amx:
    case SimdLevel::Avx512Icl:
    case SimdLevel::Avx512:
      return dtype == DType::BFloat16 && cpu_has_avx512bf16() ? isa_avx512bf16::attention_backward_table
                                                              : isa_avx512::attention_backward_table;
    case SimdLevel::Avx2: return isa_avx2::attention_backward_table;
#elif defined(__aarch64__)
    case SimdLevel::NeonBf16:
      return dtype == DType::BFloat16 ? isa_neonbf16::attention_backward_table : isa_neon::attention_backward_table;
    case SimdLevel::Neon: return isa_neon::attention_backward_table;
#endif
    default: return isa_scalar::attention_backward_table;
  }
}

}  // namespace flashparity
