// The CPU attention kernels compiled for AVX-512 with the BF16 dot-product instructions (flags
// set in CMakeLists.txt); dispatched for bfloat16 inputs only on CPUs that have them.
#define FP_ISA_NAMESPACE isa_avx512bf16
#include "attention_impl.h"
