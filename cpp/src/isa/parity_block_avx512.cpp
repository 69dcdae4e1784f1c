// The parity block kernel for the avx512 level: AVX-512 F/BW/DQ/VL over AVX2 (isa_target.h).
#define FP_ISA FP_ISA_ID_AVX512
#define FP_ISA_NAMESPACE isa_avx512
#include "isa/parity_block_impl.h"
