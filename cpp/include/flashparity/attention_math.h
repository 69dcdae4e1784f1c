// Attention math shared by the CPU and CUDA kernels: the attention parameters, the bottom-right
// aligned causal/window mask, softcap, and the online-softmax step. Host/device.
#pragma once

#include <cmath>
#include <cstdint>

#include "flashparity/common.h"
#include "flashparity/tensor.h"

namespace flashparity {

// One attention forward. Layout BSHD: q [batch, seqlen_q, heads_q, head_dim], k and v
// [batch, seqlen_k, heads_kv, head_dim], out like q (contiguous), lse [batch, heads_q, seqlen_q]
// float32 (contiguous, may be null). Strides are in bytes.
struct AttnParams {
  TensorArg q, k, v;
  void* out = nullptr;         // [batch, seqlen_q, heads_q, head_dim], q's dtype, contiguous
  float* lse = nullptr;        // [batch, heads_q, seqlen_q] or null
  std::int64_t batch = 0, seqlen_q = 0, seqlen_k = 0, heads_q = 0, heads_kv = 0, head_dim = 0;
  double scale = 1.0;          // applied to q.k before the softcap
  double softcap = 0.0;        // > 0: s -> softcap * tanh(s / softcap)
  std::int64_t window_left = -1, window_right = -1;  // -1: unbounded; causal is folded in as right <= 0
  std::uint64_t call_id = 0;   // unique per forward call: keys per-thread caches of repacked K/V
};

// Keys [lo, hi) that query row i sees. Bottom-right aligned as FlashAttention >= 2.1: row i sees key
// j iff i + sk - sq - left <= j <= i + sk - sq + right (a negative bound is unbounded on its side).
struct KeyRange {
  std::int64_t lo, hi;
};

FP_HOST_DEVICE FP_INLINE KeyRange key_range(std::int64_t i, const AttnParams& p) {
  const std::int64_t diag = i + p.seqlen_k - p.seqlen_q;
  std::int64_t lo = 0, hi = p.seqlen_k;
  if (p.window_right >= 0 && diag + p.window_right + 1 < hi) hi = diag + p.window_right + 1;
  if (p.window_left >= 0 && diag - p.window_left > lo) lo = diag - p.window_left;
  if (hi < lo) hi = lo;
  if (lo > p.seqlen_k) lo = hi = p.seqlen_k;
  if (hi < 0) lo = hi = 0;
  return {lo, hi};
}

template <typename Acc>
FP_HOST_DEVICE FP_INLINE Acc apply_softcap(Acc s, Acc cap) {
  return cap > Acc(0) ? cap * std::tanh(s / cap) : s;
}

// Online softmax (FlashAttention-2): a row keeps its running max m and running sum l of
// exp(s - m). A new tile with maximum tile_max moves the max to m_new; everything accumulated so
// far (l and the output row) is rescaled by alpha = exp(m - m_new). A row that has seen no key yet
// (m = -inf) has nothing to rescale: alpha = 0 by convention and no NaN from -inf - (-inf).
template <typename Acc>
struct OnlineSoftmaxStep {
  Acc m_new, alpha;
};

template <typename Acc>
FP_HOST_DEVICE FP_INLINE OnlineSoftmaxStep<Acc> online_softmax_step(Acc m, Acc tile_max) {
  const Acc m_new = tile_max > m ? tile_max : m;
  if (m_new == -INFINITY) return {m_new, Acc(1)};
  return {m_new, m == -INFINITY ? Acc(0) : std::exp(m - m_new)};
}

// Natural-log sum-exp of a finished row: -inf for a row that saw no key.
template <typename Acc>
FP_HOST_DEVICE FP_INLINE float row_lse(Acc m, Acc l) {
  return (m == -INFINITY || l == Acc(0)) ? -INFINITY : static_cast<float>(m + std::log(l));
}

}  // namespace flashparity
