// Shared macros for code compiled both by the host compiler and by nvcc.
#pragma once

#include <cstdint>

// One annotation lets the CPU and CUDA kernels share the exact same math (the CPU tests then check
// the logic the GPU runs).
#if defined(__CUDACC__)
#define FP_HOST_DEVICE __host__ __device__
#define FP_INLINE __forceinline__
#define FP_UNROLL _Pragma("unroll")  // (constant trip counts: arrays stay in registers on the GPU)
#else
#define FP_HOST_DEVICE
#define FP_INLINE inline __attribute__((always_inline))
#define FP_UNROLL
#endif

namespace flashparity {
using index_t = std::int64_t;  // every element index and stride is 64-bit: tensors pass 2^31 elements
}  // namespace flashparity
