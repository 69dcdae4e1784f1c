// The CPU attention forward for AMX (isa_target.h): bfloat16 flash2's two products on AMX tiles
// (tdpbf16ps), the online softmax on AVX-512 between them; dispatched for bfloat16 inputs only, at the
// opt-in avx512amx level (cpu_features.h). Its backward is the AVX-512 BF16 unit's (cpu_dispatch.cpp).
#define FP_ISA FP_ISA_ID_AVX512AMX
#define FP_ISA_NAMESPACE isa_avx512amx
#include "isa/attention_impl.h"
