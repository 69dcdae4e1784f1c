// The parity block kernel compiled for the scalar level (flags set per file in CMakeLists.txt).
#define FP_ISA_NAMESPACE isa_scalar
#include "parity_block_impl.h"
