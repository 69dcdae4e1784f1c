// The CPU attention kernels compiled for the scalar level (flags set per file in CMakeLists.txt).
#define FP_ISA_NAMESPACE isa_scalar
#include "attention_impl.h"
