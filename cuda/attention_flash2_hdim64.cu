// flash2 tensor-core kernels for head dims padded to 64 (float16 and bfloat16): one file per head
// dim so the CUDA build compiles them in parallel.
#include "attention_flash2_mma.cuh"

namespace flashparity {
namespace flash2 {
FP_FLASH2_MMA_INSTANTIATE(64)
}  // namespace flash2
}  // namespace flashparity
