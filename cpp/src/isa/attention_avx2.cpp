// The CPU attention kernels for the avx2 level: AVX2, FMA, F16C (isa_target.h).
#define FP_ISA FP_ISA_ID_AVX2
#define FP_ISA_NAMESPACE isa_avx2
#include "isa/attention_impl.h"
#include "isa/attention_backward_impl.h"
