// The CPU attention kernels for aarch64 with FEAT_BF16's BFDOT (isa_target.h); dispatched for
// bfloat16 inputs only, on CPUs that have it.
#define FP_ISA FP_ISA_ID_NEONBF16
#define FP_ISA_NAMESPACE isa_neonbf16
#include "isa/attention_impl.h"
#include "isa/attention_backward_impl.h"
