// CUDA attention forward (cuda/attention_naive.cu): the launcher the Python glue calls for device
// inputs: the naive reference and flash2.
#pragma once

#include <cstdint>

#include "flashparity/attention_math.h"

namespace flashparity {

// The naive reference on the GPU: score rows materialized in chunks of query rows (scratch bounded
// to 256 MiB), max-subtracted softmax, P.V; float32 accumulation (float64 for float64). `p.out`
// (contiguous, q's dtype) and `p.lse` (float32 or null) are device buffers on `device`; the work is
// ordered on `stream` (a cudaStream_t value, 0/1 the legacy default stream). Throws
// std::runtime_error naming the failed CUDA call.
void attention_naive_cuda(const AttnParams& p, int device, std::uintptr_t stream);

// FlashAttention-2's forward on the GPU (cuda/attention_flash2*.cu): tensor cores (mma.sync m16n8k16, float32
// accumulators) for float16/bfloat16 on compute capability 8.0+, head dims padded to a multiple of
// 32; FMA units for float32/float64. Split-KV when the grid is smaller than the GPU
// (FLASHPARITY_CUDA_SPLITS=n forces n splits). Same contract as attention_naive_cuda.
void attention_flash2_cuda(const AttnParams& p, int device, std::uintptr_t stream);

}  // namespace flashparity
