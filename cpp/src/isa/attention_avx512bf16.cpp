// The CPU attention kernels for AVX-512 with the BF16 dot products (isa_target.h); dispatched for
// bfloat16 inputs only, on CPUs that have them.
#define FP_ISA FP_ISA_ID_AVX512BF16
#define FP_ISA_NAMESPACE isa_avx512bf16
#include "isa/attention_impl.h"
#include "isa/attention_backward_impl.h"
