// CUDA attention forward (cuda/attention_naive.cu): the launcher the Python glue calls for device
// inputs: the naive reference and flash2.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flashparity/attention_math.h"

namespace flashparity {

// The naive reference on the GPU: score rows materialized in chunks of query rows (scratch bounded
// to 256 MiB), max-subtracted softmax, P.V; float32 accumulation (float64 for float64). `p.out`
// (contiguous, q's dtype) and `p.lse` (float32 or null) are device buffers on `device`; the work is
// ordered on `stream` (a cudaStream_t value, 0/1 the legacy default stream, 2 the per-thread one),
// after the work already queued on each stream of `after` (the producer streams of k, v and out),
// without blocking the host; the call returns when the outputs are complete. Inputs may have any
// byte strides; one whose elements are not aligned to their size is first copied (once) into an
// aligned buffer. Throws std::runtime_error naming the failed CUDA call.
void attention_naive_cuda(const AttnParams& p, int device, std::uintptr_t stream,
                          const std::vector<std::uintptr_t>& after = {});

// FlashAttention-2's forward on the GPU (cuda/attention_flash2*.cu): tensor cores (mma.sync m16n8k16, float32
// accumulators) for float16/bfloat16 on compute capability 8.0+, head dims padded to a multiple of
// 32; FMA units for float32/float64. Split-KV when the grid is smaller than the GPU
// (FLASHPARITY_CUDA_SPLITS=n forces n splits). Same contract as attention_naive_cuda.
void attention_flash2_cuda(const AttnParams& p, int device, std::uintptr_t stream,
                           const std::vector<std::uintptr_t>& after = {});

// How many blocks of each flash2 kernel specialisation fit on one SM of `device`
// (cudaOccupancyMaxActiveBlocksPerMultiprocessor with the kernel's block size and shared memory):
// the tensor-core kernel per padded head dim and dtype, the FMA kernel per head-dim bucket.
struct AttnKernelOccupancy {
  std::string kernel, dtype;
  int head_dim = 0;            // the padded head dim the specialisation serves
  int threads = 0;             // per block
  int dynamic_smem_bytes = 0;  // per block
  int blocks_per_sm = 0;
};
std::vector<AttnKernelOccupancy> attention_occupancy_cuda(int device);

}  // namespace flashparity
