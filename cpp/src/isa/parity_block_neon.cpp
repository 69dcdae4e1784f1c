// The parity block kernel for aarch64's baseline, NEON (ASIMD): hardware half conversions, FMAs
// and lane tests where the generic code would loop, and the CRC32 instructions where the CPU has
// them (isa_target.h).
#define FP_ISA FP_ISA_ID_NEON
#define FP_ISA_NAMESPACE isa_neon
#include "isa/parity_block_impl.h"
