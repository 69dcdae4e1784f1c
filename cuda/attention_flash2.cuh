// The CUDA flash2 forward: what the dispatcher (attention_flash2.cu) hands to the kernels. The tensor-core
// kernel (attention_flash2_mma.cuh) is instantiated per padded head dim in attention_flash2_hdim*.cu, so the build
// compiles the head dims in parallel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "flashparity/attention_math.h"

namespace flashparity {
namespace flash2 {

constexpr int kThreads = 128;  // 4 warps; every kernel here is launched with this block size

// One launch. With n_splits > 1 (split-KV) each split writes its normalized partial output and lse
// to o_part / lse_part ([split][batch*heads_q][seqlen_q][dpad] and [split][batch*heads_q][seqlen_q],
// accumulator precision) and a combine kernel forms out and lse; with 1 the kernel writes p.out and
// p.lse itself.
struct Args {
  AttnParams p;
  bool vec_q = false, vec_k = false, vec_v = false;  // rows are 16-byte aligned, unit stride, head_dim % 8 == 0
  int n_splits = 1;
  int dpad = 0;  // head_dim rounded up to the kernel's specialisation
  void* o_part = nullptr;
  void* lse_part = nullptr;
};

// Tensor-core kernel (float16 / bfloat16 on mma.sync m16n8k16, float32 accumulators): 64 query rows
// per block, 16 per warp; key tiles of 64 (head dims up to 128) or 32. grid = (batch*heads_q,
// query blocks, splits).
constexpr int kMmaRows = 64;
constexpr int mma_key_tile(int dpad) { return dpad <= 128 ? 64 : 32; }
constexpr int mma_smem_bytes(int dpad) { return (kMmaRows + 4 * mma_key_tile(dpad)) * (dpad + 8) * 2; }

template <bool kBf16, int D>
void launch_mma(const Args& a, dim3 grid, cudaStream_t stream);

// Resident blocks per SM of the kernel on the current device (cudaOccupancyMaxActiveBlocksPerMultiprocessor).
template <bool kBf16, int D>
int mma_blocks_per_sm();

#define FP_FLASH2_MMA_EXTERN(D)                                            \
  extern template void launch_mma<false, D>(const Args&, dim3, cudaStream_t); \
  extern template void launch_mma<true, D>(const Args&, dim3, cudaStream_t);  \
  extern template int mma_blocks_per_sm<false, D>();                          \
  extern template int mma_blocks_per_sm<true, D>();
FP_FLASH2_MMA_EXTERN(32)
FP_FLASH2_MMA_EXTERN(64)
FP_FLASH2_MMA_EXTERN(96)
FP_FLASH2_MMA_EXTERN(128)
FP_FLASH2_MMA_EXTERN(160)
FP_FLASH2_MMA_EXTERN(192)
FP_FLASH2_MMA_EXTERN(224)
FP_FLASH2_MMA_EXTERN(256)
#undef FP_FLASH2_MMA_EXTERN

}  // namespace flash2
}  // namespace flashparity
