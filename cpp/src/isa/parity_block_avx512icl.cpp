// The parity block kernel for the avx512icl level: AVX-512 plus GFNI and BITALG, which count the
// histogram eight exponents per pass (isa_target.h).
#define FP_ISA FP_ISA_ID_AVX512ICL
#define FP_ISA_NAMESPACE isa_avx512icl
#include "isa/parity_block_impl.h"
