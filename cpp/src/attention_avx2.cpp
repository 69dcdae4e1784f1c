// The CPU attention kernels compiled for the avx2 level (flags set per file in CMakeLists.txt).
#define FP_ISA_NAMESPACE isa_avx2
#include "attention_impl.h"
