// The CPU attention kernels for the avx512 level: AVX-512 F/BW/DQ/VL (isa_target.h).
#define FP_ISA FP_ISA_ID_AVX512
#define FP_ISA_NAMESPACE isa_avx512
#include "isa/attention_impl.h"
#include "isa/attention_backward_impl.h"
