// The CPU attention kernels for aarch64's baseline, NEON (ASIMD): float32 micro-kernels of 4-lane
// FMAs blocked for its 32 vector registers (isa_target.h).
#define FP_ISA FP_ISA_ID_NEON
#define FP_ISA_NAMESPACE isa_neon
#include "isa/attention_impl.h"
#include "isa/attention_backward_impl.h"
