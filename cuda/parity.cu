// CUDA parity reduction: one pass over two device tensors. Each thread runs the same ElementAccum
// the CPU's exact path runs, over 8-element chunks (16-byte vector loads when both inputs are
// contiguous and aligned) in a grid-stride loop; the |a-b| histogram is counted in shared memory
// with warp-aggregated atomics; each block reduces its threads' states in a fixed tree in shared
// memory (float64, compensated sums) and writes one partial; the host merges the partials in block
// order. 64-bit indices throughout.
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

constexpr int kThreads = 128;  // ParityCore per thread in shared memory: 128 x 192 B
constexpr int kVec = 8;        // elements per thread per iteration

struct KernelParams {
  CollapsedView a, b;
  std::int64_t n;
  ParityParams p;
  bool vector_loads;  // both contiguous and 16-byte aligned
  ParityAccum* partials;  // [gridDim.x]
};

template <typename T>
__device__ FP_INLINE T load_at(const CollapsedView& v, std::int64_t flat) {
  std::int64_t off;
  if (v.ndim == 1 && v.strides[0] == static_cast<std::int64_t>(sizeof(T))) {
    off = flat * static_cast<std::int64_t>(sizeof(T));
  } else {
    off = 0;
    for (int d = v.ndim - 1; d >= 0; --d) {
      const std::int64_t q = flat / v.shape[d];
      off += (flat - q * v.shape[d]) * v.strides[d];
      flat = q;
    }
  }
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

// Lanes of a warp that land in the same bin add once, through their leader.
__device__ FP_INLINE void hist_add(unsigned long long* hist, int bin) {
  const unsigned active = __activemask();
  const unsigned same = __match_any_sync(active, bin);
  if ((threadIdx.x & 31) == static_cast<unsigned>(__ffs(same) - 1))
    atomicAdd(&hist[bin], static_cast<unsigned long long>(__popc(same)));
}

template <typename TA, typename TB>
__global__ void __launch_bounds__(kThreads) ParityReduceKernel(const KernelParams kp) {
  __shared__ unsigned long long hist[kHistBins];
  __shared__ alignas(16) unsigned char core_raw[sizeof(ParityCore) * kThreads];
  ParityCore* core = reinterpret_cast<ParityCore*>(core_raw);  // [kThreads], every field written below
  for (int i = threadIdx.x; i < kHistBins; i += blockDim.x) hist[i] = 0;
  __syncthreads();

  ElementAccum e;
  const std::int64_t nchunks = (kp.n + kVec - 1) / kVec;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < nchunks; c += stride) {
    const std::int64_t i0 = c * kVec;
    const int cnt = static_cast<int>(kp.n - i0 < kVec ? kp.n - i0 : kVec);
    TA av[kVec];
    TB bv[kVec];
    if (kp.vector_loads && cnt == kVec) {
      load_vec(av, reinterpret_cast<const TA*>(kp.a.base) + i0);
      load_vec(bv, reinterpret_cast<const TB*>(kp.b.base) + i0);
    } else {
      for (int j = 0; j < cnt; ++j) {
        av[j] = load_at<TA>(kp.a, i0 + j);
        bv[j] = load_at<TB>(kp.b, i0 + j);
      }
    }
    for (int j = 0; j < cnt; ++j) {
      const int bin = e.add(to_f64(av[j]), to_f64(bv[j]), raw_bits(av[j]), raw_bits(bv[j]), DTypeOf<TA>::value,
                            DTypeOf<TB>::value, i0 + j, kp.p);
      hist_add(hist, bin);
    }
  }

  // Block reduction in a fixed tree: deterministic, and max ties resolve to the smaller index.
  e.fold_into(core[threadIdx.x]);
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) accum_merge_core(core[threadIdx.x], core[threadIdx.x + s], 0);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    ParityAccum& out = kp.partials[blockIdx.x];
    static_cast<ParityCore&>(out) = core[0];
    for (int i = 0; i < kHistBins; ++i) out.hist[i] = static_cast<std::int64_t>(hist[i]);
  }
}

template <typename TA, typename TB>
void launch(const KernelParams& kp, int blocks, cudaStream_t s) {
  ParityReduceKernel<TA, TB><<<blocks, kThreads, 0, s>>>(kp);
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

  int sms = 0;
  FP_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const std::int64_t chunks = (kp.n + kVec - 1) / kVec;
  const std::int64_t wanted = (chunks + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(wanted, 8LL * sms)));

  DeviceBuffer partials(sizeof(ParityAccum) * blocks, s);
  kp.partials = static_cast<ParityAccum*>(partials.ptr);
  FP_DTYPE_SWITCH(a.dtype, TA, [&] { FP_DTYPE_SWITCH(b.dtype, TB, [&] { launch<TA, TB>(kp, blocks, s); }); });
  FP_CUDA_CHECK(cudaGetLastError());

  std::vector<ParityAccum> host(blocks);
  FP_CUDA_CHECK(cudaMemcpyAsync(host.data(), partials.ptr, sizeof(ParityAccum) * blocks, cudaMemcpyDeviceToHost, s));
  FP_CUDA_CHECK(cudaStreamSynchronize(s));
  ParityAccum total;
  for (const ParityAccum& part : host) accum_merge(total, part, 0);
  return total;
}

}  // namespace flashparity
