// CUDA parity reduction: one pass over two device tensors. Each thread runs the same ElementAccum
// the CPU's exact path runs, over 8-element chunks (16-byte vector loads when both inputs are
// contiguous and aligned, the chunk's elements then unrolled so they stay in registers) in a
// grid-stride loop; the |a-b| histogram is counted per thread in shared memory (a column of 32-bit
// counters each, no atomics, no bank conflicts); each block reduces its threads' states in a fixed
// tree in shared memory (float64, compensated sums) and writes one partial; the host merges the
// partials in block order. 64-bit indices throughout.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_util.cuh"
#include "flashparity/parity_cuda.h"

namespace flashparity {

namespace {

constexpr int kThreads = 128;
constexpr int kVec = 8;  // elements per thread per iteration
// A thread's histogram counters are 32-bit: the grid is sized so that no thread visits 2^32 elements.
constexpr std::int64_t kMaxPerThread = std::int64_t{1} << 31;
// Shared memory: the per-thread histogram columns while reducing, then the block's ParityCore tree.
constexpr std::size_t kHistBytes = sizeof(unsigned) * kHistBins * kThreads;
constexpr std::size_t kCoreBytes = sizeof(ParityCore) * kThreads;
constexpr std::size_t kSharedBytes = kHistBytes > kCoreBytes ? kHistBytes : kCoreBytes;
static_assert(kSharedBytes <= 48 * 1024, "static shared memory");

struct KernelParams {
  CollapsedView a, b;
  std::int64_t n;
  ParityParams p;
  bool vector_loads;  // both contiguous and 16-byte aligned
  bool typed_loads;   // every element of both inputs aligned to its size (else byte copies)
  ParityAccum* partials;  // [gridDim.x]
};

template <typename T>
__device__ FP_INLINE T load_at(const CollapsedView& v, std::int64_t flat, bool typed) {
  std::int64_t off;
  if (v.ndim == 1) {
    off = flat * v.strides[0];
  } else {
    off = 0;
    for (int d = v.ndim - 1; d >= 0; --d) {
      const std::int64_t q = flat / v.shape[d];
      off += (flat - q * v.shape[d]) * v.strides[d];
      flat = q;
    }
  }
  if (typed) return *reinterpret_cast<const T*>(v.base + off);
  T x;
  memcpy(&x, v.base + off, sizeof(T));
  return x;
}

// kVec elements through 16-byte loads (the chunk starts at a multiple of kVec * sizeof(T) bytes).
template <typename T>
__device__ FP_INLINE void load_vec(T (&dst)[kVec], const T* src) {
  constexpr int kWords = kVec * static_cast<int>(sizeof(T)) / 16;
  uint4 w[kWords];
  const uint4* s = reinterpret_cast<const uint4*>(src);
#pragma unroll
  for (int k = 0; k < kWords; ++k) w[k] = __ldg(s + k);
  memcpy(dst, w, sizeof(dst));
}

// One element into the thread's accumulator and its histogram column.
template <typename TA, typename TB>
__device__ FP_INLINE void add_element(ElementAccum& e, unsigned* hist, TA x, TB y, std::int64_t i, const ParityParams& p) {
  ++hist[e.add(to_f64(x), to_f64(y), raw_bits(x), raw_bits(y), DTypeOf<TA>::value, DTypeOf<TB>::value, i, p) * kThreads];
}

template <typename TA, typename TB>
__global__ void __launch_bounds__(kThreads) ParityReduceKernel(const KernelParams kp) {
  __shared__ alignas(16) unsigned char smem[kSharedBytes];
  const int t = static_cast<int>(threadIdx.x);
  unsigned* hist = reinterpret_cast<unsigned*>(smem) + t;  // this thread's column: bin k at hist[k * kThreads]
  for (int k = 0; k < kHistBins; ++k) hist[k * kThreads] = 0;

  // the ULP format as a constant (the host checks it is kp.p.narrow), so its conversions fold
  ParityParams p = kp.p;
  p.narrow = narrower_dtype(DTypeOf<TA>::value, DTypeOf<TB>::value);
  ElementAccum e;
  const std::int64_t nchunks = (kp.n + kVec - 1) / kVec;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + t;
  if (kp.vector_loads) {
    // full chunks through 16-byte loads, the next chunk's loads issued before this chunk's work
    const std::int64_t nfull = kp.n / kVec;
    const TA* pa = reinterpret_cast<const TA*>(kp.a.base);
    const TB* pb = reinterpret_cast<const TB*>(kp.b.base);
    TA av[kVec];
    TB bv[kVec];
    if (c < nfull) {
      load_vec(av, pa + c * kVec);
      load_vec(bv, pb + c * kVec);
    }
    for (; c < nfull; c += stride) {
      // (the last iteration loads its own chunk again, from cache: no branch, nothing left unset)
      const std::int64_t next = c + stride < nfull ? c + stride : c;
      TA an[kVec];
      TB bn[kVec];
      load_vec(an, pa + next * kVec);
      load_vec(bn, pb + next * kVec);
#pragma unroll
      for (int j = 0; j < kVec; ++j) add_element(e, hist, av[j], bv[j], c * kVec + j, p);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        av[j] = an[j];
        bv[j] = bn[j];
      }
    }
  }
  // the rest (every chunk of strided inputs; the short last chunk of vector ones), in index order
  for (; c < nchunks; c += stride) {
    const std::int64_t i0 = c * kVec;
    const int cnt = static_cast<int>(kp.n - i0 < kVec ? kp.n - i0 : kVec);
    for (int j = 0; j < cnt; ++j)
      add_element(e, hist, load_at<TA>(kp.a, i0 + j, kp.typed_loads), load_at<TB>(kp.b, i0 + j, kp.typed_loads),
                  i0 + j, p);
  }

  // The histogram: thread k < kHistBins sums row k (integers: any order gives the same counts).
  __syncthreads();
  std::int64_t bin_count = 0;
  if (t < kHistBins) {
    const unsigned* row = reinterpret_cast<const unsigned*>(smem) + t * kThreads;
    for (int k = 0; k < kThreads; ++k) bin_count += row[k];
  }
  __syncthreads();  // the histogram is read: its memory now holds the tree

  // Block reduction in a fixed tree: deterministic, and max ties resolve to the smaller index.
  ParityCore* core = reinterpret_cast<ParityCore*>(smem);  // [kThreads], every field written below
  e.fold_into(core[t]);
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) accum_merge_core(core[t], core[t + s], 0);
    __syncthreads();
  }
  ParityAccum& out = kp.partials[blockIdx.x];
  if (t == 0) static_cast<ParityCore&>(out) = core[0];
  if (t < kHistBins) out.hist[t] = bin_count;
}

// Every element of v starts at a multiple of its size (base and strides), so it can be read with one
// typed load.
bool elements_aligned(const CollapsedView& v) {
  if (reinterpret_cast<std::uintptr_t>(v.base) % v.esize != 0) return false;
  for (int d = 0; d < v.ndim; ++d)
    if (v.strides[d] % v.esize != 0) return false;
  return true;
}

}  // namespace

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
  if (as_stream(stream_b) != s) FP_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream_b)));
  KernelParams kp{};
  kp.a = collapse_dims(a);
  kp.b = collapse_dims(b);
  kp.n = a.numel();
  kp.p = p;
  kp.vector_loads = kp.a.contiguous() && kp.b.contiguous() && reinterpret_cast<std::uintptr_t>(kp.a.base) % 16 == 0 &&
                    reinterpret_cast<std::uintptr_t>(kp.b.base) % 16 == 0;
  kp.typed_loads = elements_aligned(kp.a) && elements_aligned(kp.b);
  if (p.narrow != narrower_dtype(a.dtype, b.dtype))  // the kernel takes the ULP format from the dtypes
    throw std::logic_error("parity_cuda: the ULP format must be the narrower of the two dtypes");

  int sms = 0;
  FP_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  ParityAccum total;
  FP_DTYPE_SWITCH(a.dtype, TA, [&] {
    FP_DTYPE_SWITCH(b.dtype, TB, [&] {
      // one wave of as many blocks as stay resident (a second, partial wave would leave SMs idle
      // while it runs: every thread gets the same share of the grid-stride loop); more where a
      // thread would otherwise visit 2^31 elements
      int per_sm = 0;
      FP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, ParityReduceKernel<TA, TB>, kThreads, 0));
      const std::int64_t chunks = (kp.n + kVec - 1) / kVec;
      const std::int64_t wanted = (chunks + kThreads - 1) / kThreads;
      const std::int64_t floor_blocks = (kp.n + kThreads * kMaxPerThread - 1) / (kThreads * kMaxPerThread);
      const std::int64_t grid = std::max<std::int64_t>(
          {1, std::min<std::int64_t>(wanted, static_cast<std::int64_t>(std::max(per_sm, 1)) * sms), floor_blocks});
      if (grid > 0x7fffffff) throw std::invalid_argument("parity_cuda: tensor too large for one grid");
      const int blocks = static_cast<int>(grid);
      DeviceBuffer partials(sizeof(ParityAccum) * blocks, s);
      kp.partials = static_cast<ParityAccum*>(partials.ptr);
      ParityReduceKernel<TA, TB><<<blocks, kThreads, 0, s>>>(kp);
      FP_CUDA_CHECK(cudaGetLastError());
      std::vector<ParityAccum> host(blocks);
      FP_CUDA_CHECK(cudaMemcpyAsync(host.data(), partials.ptr, sizeof(ParityAccum) * blocks, cudaMemcpyDeviceToHost, s));
      FP_CUDA_CHECK(cudaStreamSynchronize(s));
      for (const ParityAccum& part : host) accum_merge(total, part, 0);
    });
  });
  return total;
}

}  // namespace flashparity
