// CUDA parity reduction: one pass over two device tensors. Each thread runs parity_grid_thread
// (parity_grid.h, shared with the host's parity_grid_host, which the CPU tests run): the same
// ElementAccum as the CPU's exact path over 8-element chunks in a grid-stride loop, 16-byte loads
// when both inputs are contiguous and aligned, the chunk's elements unrolled in registers. The
// |a-b| histogram is counted per thread in shared memory (a column of 32-bit counters each: no
// atomics, no bank conflicts); each block then reduces its threads' states in a fixed tree in
// shared memory (float64, compensated sums) and writes one partial; a one-block kernel folds the
// partials in a fixed order and the host copies back that one state. 64-bit indices throughout.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda_util.cuh"
#include "flashparity/parity_cuda.h"
#include "flashparity/parity_grid.h"

namespace flashparity {

namespace {

constexpr int kThreads = 128;
// Shared memory: the per-thread histogram columns while reducing, then the block's ParityCore tree.
constexpr std::size_t kHistBytes = sizeof(unsigned) * kHistBins * kThreads;
constexpr std::size_t kCoreBytes = sizeof(ParityCore) * kThreads;
constexpr std::size_t kSharedBytes = kHistBytes > kCoreBytes ? kHistBytes : kCoreBytes;
static_assert(kSharedBytes <= 48 * 1024, "static shared memory");

template <typename TA, typename TB>
__global__ void __launch_bounds__(kThreads) ParityReduceKernel(const ParityGridParams g, ParityAccum* partials) {
  // partials: [gridDim.x]
  __shared__ alignas(16) unsigned char smem[kSharedBytes];
  const int t = static_cast<int>(threadIdx.x);
  unsigned* hist = reinterpret_cast<unsigned*>(smem) + t;  // this thread's column: bin k at hist[k * kThreads]
  for (int k = 0; k < kHistBins; ++k) hist[k * kThreads] = 0;

  ElementAccum e;
  parity_grid_thread<TA, TB>(g, static_cast<std::int64_t>(blockIdx.x) * kThreads + t,
                             static_cast<std::int64_t>(gridDim.x) * kThreads, e, hist, kThreads);

  // The histogram: thread k < kHistBins sums row k (integers: any order gives the same counts),
  // starting at its own column, so the lanes of a warp read 32 different banks at each step (rows
  // are kThreads = 128 words apart: without the rotation all lanes would hit one bank).
  __syncthreads();
  std::int64_t bin_count = 0;
  if (t < kHistBins) {
    const unsigned* row = reinterpret_cast<const unsigned*>(smem) + t * kThreads;
    static_assert((kThreads & (kThreads - 1)) == 0, "a power of two: the rotation is a mask");
    for (int k = 0; k < kThreads; ++k) bin_count += row[(k + t) & (kThreads - 1)];
  }
  __syncthreads();  // the histogram is read: its memory now holds the tree

  ParityCore* core = reinterpret_cast<ParityCore*>(smem);  // [kThreads], every field written below
  e.fold_into(core[t]);
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    grid_tree_step(core, t, s);
    __syncthreads();
  }
  ParityAccum& out = partials[blockIdx.x];
  if (t == 0) static_cast<ParityCore&>(out) = core[0];
  if (t < kHistBins) out.hist[t] = bin_count;
}

// The block partials folded into one state in a fixed order (parity_grid.h): one block.
__global__ void __launch_bounds__(kGridFinalThreads) ParityFinalKernel(const ParityAccum* partials, int blocks,
                                                                       ParityAccum* out) {
  // partials: [blocks]; out: one state
  __shared__ alignas(16) unsigned char smem[sizeof(ParityCore) * kGridFinalThreads];
  ParityCore* core = reinterpret_cast<ParityCore*>(smem);  // [kGridFinalThreads]
  const int t = static_cast<int>(threadIdx.x);
  grid_final_thread(partials, blocks, t, core[t]);
  __syncthreads();
  for (int s = kGridFinalThreads / 2; s > 0; s >>= 1) {
    grid_tree_step(core, t, s);
    __syncthreads();
  }
  if (t == 0) static_cast<ParityCore&>(*out) = core[0];
  if (t < kHistBins) out->hist[t] = grid_final_bin(partials, blocks, t);
}

// The grid parity_cuda launches on `device` (current) for n elements of the pair (TA, TB).
template <typename TA, typename TB>
int launch_blocks(std::int64_t n, int device) {
  int sms = 0, per_sm = 0;
  FP_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  FP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, ParityReduceKernel<TA, TB>, kThreads, 0));
  const std::int64_t grid = grid_blocks(n, kThreads, static_cast<std::int64_t>(std::max(per_sm, 1)) * sms);
  if (grid > 0x7fffffff) throw std::invalid_argument("parity_cuda: tensor too large for one grid");
  return static_cast<int>(grid);
}

}  // namespace

int parity_cuda_blocks(DType a, DType b, std::int64_t n, int device) {
  DeviceGuard guard(device);
  int blocks = 0;
  FP_DTYPE_SWITCH_ALL(a, TA, [&] { FP_DTYPE_SWITCH_ALL(b, TB, [&] { blocks = launch_blocks<TA, TB>(n, device); }); });
  return blocks;
}

int cuda_pointer_device(std::uintptr_t ptr) {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::invalid_argument(std::string("cannot query the device of pointer: ") + cudaGetErrorString(err));
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw std::invalid_argument("pointer is not CUDA device memory");
  return attr.device;
}

ParityAccum parity_cuda(const TensorArg& a, const TensorArg& b, const ParityParams& p, int device,
                        std::uintptr_t stream_a, std::uintptr_t stream_b) {
  DeviceGuard guard(device);
  const cudaStream_t s = as_stream(stream_a);
  stream_wait(s, stream_b);  // b's producer stream: ordered on the device, the host does not block
  if (p.narrow != narrower_dtype(a.dtype, b.dtype))  // the kernel takes the ULP format from the dtypes
    throw std::logic_error("parity_cuda: the ULP format must be the narrower of the two dtypes");
  const ParityGridParams g = grid_params(a, b, p);

  ParityAccum total;
  FP_DTYPE_SWITCH_ALL(a.dtype, TA, [&] {
    FP_DTYPE_SWITCH_ALL(b.dtype, TB, [&] {
      const int blocks = launch_blocks<TA, TB>(g.n, device);
      DeviceBuffer buf(sizeof(ParityAccum) * (static_cast<std::size_t>(blocks) + 1), s);
      ParityAccum* partials = static_cast<ParityAccum*>(buf.ptr);  // [blocks], then the total
      ParityReduceKernel<TA, TB><<<blocks, kThreads, 0, s>>>(g, partials);
      FP_CUDA_CHECK(cudaGetLastError());
      ParityFinalKernel<<<1, kGridFinalThreads, 0, s>>>(partials, blocks, partials + blocks);
      FP_CUDA_CHECK(cudaGetLastError());
      FP_CUDA_CHECK(cudaMemcpyAsync(&total, partials + blocks, sizeof(ParityAccum), cudaMemcpyDeviceToHost, s));
      FP_CUDA_CHECK(cudaStreamSynchronize(s));
    });
  });
  return total;
}

}  // namespace flashparity
