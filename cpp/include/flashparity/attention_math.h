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
  // ALiBi (FlashAttention-2's definition): -slope * |i + seqlen_k - seqlen_q - j| is added to the
  // scaled, capped score of query i and key j. Slopes float32 in the memory the kernels run on,
  // slope(b, h) = alibi[b * alibi_stride_b + h * alibi_stride_h] (strides in elements; 0 for a
  // [heads_q] vector); null: no bias.
  const float* alibi = nullptr;
  std::int64_t alibi_stride_b = 0, alibi_stride_h = 1;
  // lse element (b, h, i) at lse[(b * heads_q + h) * lse_stride_h + i]; 0: seqlen_q (the dense
  // [batch, heads_q, seqlen_q] layout). A varlen batch's sequences write [heads_q, total_q] slices.
  std::int64_t lse_stride_h = 0;
  // Paged KV cache (FlashAttention-2's block_table): k and v are [num_blocks, page_size, heads_kv,
  // head_dim] and key s of batch b sits in block block_table[b * block_table_stride + s / page_size],
  // slot s % page_size; null: k and v are [batch, seqlen_k, heads_kv, head_dim]. In the memory the
  // kernels run on.
  const std::int32_t* block_table = nullptr;
  std::int64_t block_table_stride = 0, page_size = 0;
  // FP8 inputs, FlashAttention-3's descales: float32 planes q, k, v of [batch, heads_kv] each, in the
  // memory the kernels run on; element (plane, b, hk) at descale[plane * descale_plane + b * heads_kv
  // + hk]. The score of (b, hk) is scaled by q_descale * k_descale (as if q and k were dequantized
  // first: the FP8 products are exact in float32) and the output by v_descale. Null: all 1.
  const float* descale = nullptr;
  std::int64_t descale_plane = 0;
};

FP_HOST_DEVICE FP_INLINE std::int64_t lse_index(const AttnParams& p, std::int64_t b, std::int64_t h, std::int64_t i) {
  return (b * p.heads_q + h) * (p.lse_stride_h > 0 ? p.lse_stride_h : p.seqlen_q) + i;
}

// The first byte of key s's row of head h of batch b in k or v (`t`), paged or not.
FP_HOST_DEVICE FP_INLINE const char* kv_row(const AttnParams& p, const TensorArg& t, std::int64_t b, std::int64_t s,
                                            std::int64_t h) {
  const char* base = static_cast<const char*>(t.data) + h * t.strides[2];
  if (p.block_table == nullptr) return base + b * t.strides[0] + s * t.strides[1];
  const std::int64_t block = p.block_table[b * p.block_table_stride + s / p.page_size];
  return base + block * t.strides[0] + (s % p.page_size) * t.strides[1];
}

// The factor of the scores of batch b, query head h: softmax scale * q_descale * k_descale (FP8), in
// double; the kernels round it once to their accumulator.
FP_HOST_DEVICE FP_INLINE double score_scale(const AttnParams& p, std::int64_t b, std::int64_t h) {
  if (p.descale == nullptr) return p.scale;
  const std::int64_t at = b * p.heads_kv + h / (p.heads_q / p.heads_kv);
  return p.scale * static_cast<double>(p.descale[at]) * static_cast<double>(p.descale[p.descale_plane + at]);
}

// The factor of the output of batch b, query head h: v_descale (FP8), else 1.
FP_HOST_DEVICE FP_INLINE float out_scale(const AttnParams& p, std::int64_t b, std::int64_t h) {
  if (p.descale == nullptr) return 1.0f;
  return p.descale[2 * p.descale_plane + b * p.heads_kv + h / (p.heads_q / p.heads_kv)];
}

// A finished output element o (the row's P.V sum over its softmax sum l, as each kernel rounds that)
// times the head's v_descale (out_scale, rounded to Acc): one more rounding after the normalization,
// none when v_descale is 1. The CPU kernels (store_row) and both CUDA kernels apply it through this
// helper, so FP8 outputs get the same operations in the same order everywhere.
template <typename Acc>
FP_HOST_DEVICE FP_INLINE Acc apply_v_descale(Acc o, Acc v_descale) {
  return v_descale != Acc(1) ? o * v_descale : o;
}

FP_HOST_DEVICE FP_INLINE float alibi_slope(const AttnParams& p, std::int64_t b, std::int64_t h) {
  return p.alibi != nullptr ? p.alibi[b * p.alibi_stride_b + h * p.alibi_stride_h] : 0.0f;
}

// The ALiBi bias of query row i and key j for `slope` (0 without ALiBi: the bias is then +-0, which
// leaves every score as it is). The distance is exact as an integer and rounded once to Acc.
template <typename Acc>
FP_HOST_DEVICE FP_INLINE Acc alibi_bias(Acc slope, std::int64_t i, std::int64_t j, const AttnParams& p) {
  const std::int64_t d = i + p.seqlen_k - p.seqlen_q - j;
  return -slope * static_cast<Acc>(d < 0 ? -d : d);
}

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

// Natural-log sum-exp of a finished row, m + log(l): -inf for a row that saw no key.
template <typename Acc>
FP_HOST_DEVICE FP_INLINE Acc log_sum_exp(Acc m, Acc l) {
  return (m == -INFINITY || l == Acc(0)) ? Acc(-INFINITY) : m + std::log(l);
}

template <typename Acc>
FP_HOST_DEVICE FP_INLINE float row_lse(Acc m, Acc l) {
  return static_cast<float>(log_sum_exp(m, l));
}

// Key tiles [begin, end) (tile t holds keys [t*bc, (t+1)*bc)) that query rows [r0, r0 + rows) can
// see: from the first row's lo to the last row's hi (both are non-decreasing in the row). Tiles
// outside are never visited (causal and window skipping); masks inside a tile apply per element.
struct TileSpan {
  std::int64_t begin, end;
};

FP_HOST_DEVICE FP_INLINE TileSpan row_block_key_tiles(std::int64_t r0, std::int64_t rows, const AttnParams& p,
                                                      std::int64_t bc) {
  const KeyRange first = key_range(r0, p), last = key_range(r0 + rows - 1, p);
  if (last.hi <= first.lo) return {0, 0};
  return {first.lo / bc, (last.hi + bc - 1) / bc};
}

// Split-KV: split `split` of `n_splits` takes a contiguous share of the tiles (ceil(n / n_splits)
// each; the last ones may be empty).
FP_HOST_DEVICE FP_INLINE TileSpan split_span(TileSpan all, std::int64_t split, std::int64_t n_splits) {
  const std::int64_t per = (all.end - all.begin + n_splits - 1) / n_splits;
  std::int64_t b = all.begin + split * per;
  if (b > all.end) b = all.end;
  const std::int64_t e = b + per < all.end ? b + per : all.end;
  return {b, e};
}

// Split-KV (CUDA flash2) when the grid would leave SMs idle (decode: a few query rows per head):
// enough splits for about two blocks per SM, at least two key tiles per split, at most 128.
FP_HOST_DEVICE FP_INLINE int flash2_split_count(std::int64_t blocks, std::int64_t sms, std::int64_t key_tiles) {
  if (blocks >= sms || key_tiles < 4) return 1;
  std::int64_t n = (2 * sms + blocks - 1) / blocks;
  if (n > key_tiles / 2) n = key_tiles / 2;
  if (n > 128) n = 128;
  return static_cast<int>(n);
}

// Merging split-KV partials of one row: split s gives its normalized output o_s and lse_s (-inf:
// it saw no key). The row's lse is log sum_s exp(lse_s) (max-shifted), and the row's output is
// sum_s exp(lse_s - lse) o_s. A row no split saw keeps lse -inf and every weight 0 (output 0).
template <typename Acc, typename LseAt>
FP_HOST_DEVICE FP_INLINE Acc merge_split_lse(int n_splits, LseAt lse_at) {
  Acc mx = -INFINITY;
  for (int s = 0; s < n_splits; ++s) mx = lse_at(s) > mx ? lse_at(s) : mx;
  if (mx == -INFINITY) return mx;
  Acc sum = 0;
  for (int s = 0; s < n_splits; ++s) sum += std::exp(lse_at(s) - mx);
  return mx + std::log(sum);
}

template <typename Acc>
FP_HOST_DEVICE FP_INLINE Acc split_weight(Acc lse_s, Acc lse) {
  return lse_s == -INFINITY ? Acc(0) : std::exp(lse_s - lse);
}

}  // namespace flashparity
