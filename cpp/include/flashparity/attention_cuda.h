// CUDA attention forward (cuda/attention_naive.cu): the launcher the Python glue calls for device
// inputs. The CUDA flash2 kernel is not built yet; impl naive runs on the GPU.
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

}  // namespace flashparity
