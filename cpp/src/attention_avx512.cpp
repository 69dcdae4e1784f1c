// The CPU attention kernels compiled for the avx512 level (flags set per file in CMakeLists.txt).
#define FP_ISA_NAMESPACE isa_avx512
#include "attention_impl.h"
