// The parity block kernel compiled for the avx512icl level: AVX-512 plus GFNI and BITALG (flags set
// per file in CMakeLists.txt).
#define FP_ISA_NAMESPACE isa_avx512icl
#include "parity_block_impl.h"
