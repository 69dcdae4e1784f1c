// The CPU attention kernels for the scalar level: baseline x86-64 (SSE2), or any other CPU.
#define FP_ISA FP_ISA_ID_SCALAR
#define FP_ISA_NAMESPACE isa_scalar
#include "isa/attention_impl.h"
#include "isa/attention_backward_impl.h"
