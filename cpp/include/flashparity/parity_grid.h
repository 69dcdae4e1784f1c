// The CUDA parity kernel's work split, host/device: which elements each thread of the grid visits,
// in which order, and how a block folds its threads. cuda/parity.cu runs it on the GPU;
// parity_grid_host (cpp/src/cpu/parity_grid_host.cpp) runs the very same functions on the CPU, thread
// by thread, so the CPU tests check the logic the GPU runs, for any grid shape.
#pragma once

#include <cstdint>
#include <cstring>

#include "flashparity/parity_stats.h"
#include "flashparity/tensor.h"

namespace flashparity {

constexpr int kGridVec = 8;  // elements per thread per step: 16-byte loads for 16-bit formats
// A thread's histogram counters are 32-bit: grids are sized so that no thread visits 2^31 elements.
constexpr std::int64_t kGridMaxPerThread = std::int64_t{1} << 31;

// One parity pass as the grid sees it: plain data, copied to the kernel by value.
struct ParityGridParams {
  CollapsedView a, b;
  std::int64_t n = 0;
  ParityParams p;
  bool vector_loads = false;  // both contiguous and 16-byte aligned: chunks through 16-byte loads
  bool typed_loads = false;   // every element of both inputs aligned to its size (else byte copies)
};

// Every element of v starts at a multiple of its size (base and strides).
inline bool elements_aligned(const CollapsedView& v) {
  if (reinterpret_cast<std::uintptr_t>(v.base) % v.esize != 0) return false;
  for (int d = 0; d < v.ndim; ++d)
    if (v.strides[d] % v.esize != 0) return false;
  return true;
}

inline ParityGridParams grid_params(const TensorArg& a, const TensorArg& b, const ParityParams& p) {
  ParityGridParams g;
  g.a = collapse_dims(a);
  g.b = collapse_dims(b);
  g.n = a.numel();
  g.p = p;
  g.vector_loads = g.a.contiguous() && g.b.contiguous() && reinterpret_cast<std::uintptr_t>(g.a.base) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(g.b.base) % 16 == 0;
  g.typed_loads = elements_aligned(g.a) && elements_aligned(g.b);
  return g;
}

// Blocks of `threads` for n elements: one wave of `resident` blocks (a second, partial wave would
// leave processors idle while it runs, every thread having the same share of the grid-stride
// loop), fewer when there is less work, more when a thread would otherwise visit 2^31 elements.
inline std::int64_t grid_blocks(std::int64_t n, int threads, std::int64_t resident) {
  const std::int64_t chunks = (n + kGridVec - 1) / kGridVec;
  std::int64_t blocks = (chunks + threads - 1) / threads;
  if (blocks > resident) blocks = resident;
  const std::int64_t floor_blocks = (n + threads * kGridMaxPerThread - 1) / (threads * kGridMaxPerThread);
  if (blocks < floor_blocks) blocks = floor_blocks;
  return blocks < 1 ? 1 : blocks;
}

template <typename T>
FP_HOST_DEVICE FP_INLINE T grid_load_at(const CollapsedView& v, std::int64_t flat, bool typed) {
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

// kGridVec elements starting at a multiple of 16 bytes: 16-byte read-only loads on the GPU (one
// 8-byte load for the eight bytes of FP8).
template <typename T>
FP_HOST_DEVICE FP_INLINE void grid_load_chunk(T (&dst)[kGridVec], const T* src) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) * kGridVec < 16) {  // FP8: eight bytes, one 8-byte load
    const uint2 w = __ldg(reinterpret_cast<const uint2*>(src));
    memcpy(dst, &w, sizeof(dst));
  } else {
    constexpr int kWords = kGridVec * static_cast<int>(sizeof(T)) / 16;
    uint4 w[kWords];
    const uint4* s = reinterpret_cast<const uint4*>(src);
    FP_UNROLL
    for (int k = 0; k < kWords; ++k) w[k] = __ldg(s + k);
    memcpy(dst, w, sizeof(dst));
  }
#else
  memcpy(dst, src, sizeof(dst));
#endif
}

// One element into a thread's accumulator and its histogram column (bin k at hist[k * hist_stride]).
template <typename TA, typename TB>
FP_HOST_DEVICE FP_INLINE void grid_add(ElementAccum& e, unsigned* hist, int hist_stride, TA x, TB y, std::int64_t i,
                                       const ParityParams& p) {
  ++hist[e.add(to_f64(x), to_f64(y), raw_bits(x), raw_bits(y), DTypeOf<TA>::value, DTypeOf<TB>::value, i, p) *
         hist_stride];
}

// The work of the thread whose first chunk is `c` in a grid of `stride` threads: chunks c,
// c + stride, ... in increasing index order (as ElementAccum requires), through 16-byte loads when
// g.vector_loads (the next chunk's loads issued before this chunk's work), element by element
// otherwise and for the short last chunk. The histogram column's counters must start at zero.
template <typename TA, typename TB>
FP_HOST_DEVICE FP_INLINE void parity_grid_thread(const ParityGridParams& g, std::int64_t c, std::int64_t stride,
                                                 ElementAccum& e, unsigned* hist, int hist_stride) {
  // the ULP format as a constant (the launchers check it is g.p.narrow), so its conversions fold
  ParityParams p = g.p;
  p.narrow = narrower_dtype(DTypeOf<TA>::value, DTypeOf<TB>::value);
  const std::int64_t nchunks = (g.n + kGridVec - 1) / kGridVec;
  if (g.vector_loads) {
    const std::int64_t nfull = g.n / kGridVec;
    const TA* pa = reinterpret_cast<const TA*>(g.a.base);  // [n]
    const TB* pb = reinterpret_cast<const TB*>(g.b.base);  // [n]
    TA av[kGridVec];
    TB bv[kGridVec];
    if (c < nfull) {
      grid_load_chunk(av, pa + c * kGridVec);
      grid_load_chunk(bv, pb + c * kGridVec);
    }
    for (; c < nfull; c += stride) {
      // (the last round loads its own chunk again, from cache: no branch, nothing left unset)
      const std::int64_t next = c + stride < nfull ? c + stride : c;
      TA an[kGridVec];
      TB bn[kGridVec];
      grid_load_chunk(an, pa + next * kGridVec);
      grid_load_chunk(bn, pb + next * kGridVec);
      FP_UNROLL
      for (int j = 0; j < kGridVec; ++j) grid_add(e, hist, hist_stride, av[j], bv[j], c * kGridVec + j, p);
      FP_UNROLL
      for (int j = 0; j < kGridVec; ++j) {
        av[j] = an[j];
        bv[j] = bn[j];
      }
    }
  }
  // the rest: every chunk of strided inputs, the short last chunk of vector ones
  for (; c < nchunks; c += stride) {
    const std::int64_t i0 = c * kGridVec;
    const int cnt = static_cast<int>(g.n - i0 < kGridVec ? g.n - i0 : kGridVec);
    for (int j = 0; j < cnt; ++j)
      grid_add(e, hist, hist_stride, grid_load_at<TA>(g.a, i0 + j, g.typed_loads),
               grid_load_at<TB>(g.b, i0 + j, g.typed_loads), i0 + j, p);
  }
}

// One level of a block's fixed reduction tree (threads a power of two; s = threads / 2, ..., 1):
// thread t < s folds in thread t + s. Deterministic, and max ties resolve to the smaller index.
FP_HOST_DEVICE FP_INLINE void grid_tree_step(ParityCore* core, int t, int s) {  // core: [threads]
  if (t < s) accum_merge_core(core[t], core[t + s], 0);
}

// The launcher's second step: the blocks' partial states folded into one, on the device by one block
// of kGridFinalThreads threads (so that a call copies one state back, not one per block). Thread t
// folds partials t, t + T, t + 2T, ... in that order into its own state (grid_final_thread), the
// threads' states then fold in the fixed tree of grid_tree_step, and each histogram bin adds up
// over the partials (grid_final_bin). A fixed order: deterministic, and parity_grid_host follows it.
constexpr int kGridFinalThreads = 128;

FP_HOST_DEVICE FP_INLINE void grid_final_thread(const ParityAccum* partials, int blocks, int t, ParityCore& out) {
  // partials: [blocks]
  ParityCore acc;
  for (int k = t; k < blocks; k += kGridFinalThreads) accum_merge_core(acc, partials[k], 0);
  out = acc;
}

FP_HOST_DEVICE FP_INLINE std::int64_t grid_final_bin(const ParityAccum* partials, int blocks, int bin) {
  std::int64_t c = 0;
  for (int k = 0; k < blocks; ++k) c += partials[k].hist[bin];
  return c;
}

}  // namespace flashparity
