// CPU attention forward, written once and compiled per ISA (attention_{scalar,avx2,avx512}.cpp):
// the naive reference (materialized score rows) and FlashAttention-2's tiled algorithm (online
// softmax over K/V tiles, one tile of scores at a time). float32 accumulation for float32/16 and
// bfloat16 inputs, float64 for float64. The inner loops are plain loops over contiguous float
// buffers that the compiler vectorizes for the unit's ISA; exp is a shared polynomial, so every
// ISA computes the same function.
//
// Included only by those translation units, inside an ISA namespace (see parity_block_impl.h for
// why nothing here may have external linkage).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "attention_cpu.h"
#include "flashparity/attention_math.h"
#include "flashparity/dtype.h"

#ifndef FP_ISA_NAMESPACE
#error "define FP_ISA_NAMESPACE before including attention_impl.h"
#endif

namespace flashparity {
namespace FP_ISA_NAMESPACE {
namespace {

constexpr int kLanes = 16;                  // float lanes of the exp kernel
constexpr std::int64_t kNaiveRows = 64;     // query rows per naive task
constexpr std::int64_t kNaiveKeyChunk = 256;
constexpr std::int64_t kBr = 64;            // flash2 query tile
constexpr std::int64_t kBc = 64;            // flash2 key tile

typedef float vf __attribute__((vector_size(64)));
typedef std::int32_t vi __attribute__((vector_size(64)));

template <typename To, typename From>
FP_INLINE To bitcast(const From& f) {
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}

// exp(x) for 16 floats: x = n*ln2 + r with |r| <= ln2/2, a degree-6 polynomial for exp(r), 2^n
// through the exponent field (Cephes' expf coefficients; <= 2 ulp). -inf and anything below the
// float32 range give 0; NaN stays NaN.
FP_INLINE vf exp16(vf x) {
  const vf zero = {};
  vf xc = x > 88.3762626647949f ? zero + 88.3762626647949f : x;
  xc = xc < -87.33654475f ? zero - 87.33654475f : xc;
  const vf t = xc * 1.44269504088896341f + 12582912.0f;  // round to nearest through the 2^23 magic
  const vf n = t - 12582912.0f;
  const vi ni = bitcast<vi>(t) - bitcast<vi>(zero + 12582912.0f);
  vf r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = zero + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  vf e = bitcast<vf>(bitcast<vi>(p) + (ni << 23));
  e = x < -87.33654475f ? zero : e;
  return x != x ? x : e;
}

// x[j] = exp(x[j] - shift) for j < n (n a multiple of kLanes; padding holds -inf).
FP_INLINE void exp_shifted(float* x, std::int64_t n, float shift) {
  for (std::int64_t j = 0; j < n; j += kLanes) {
    vf v;
    std::memcpy(&v, x + j, sizeof(v));
    v = exp16(v - shift);
    std::memcpy(x + j, &v, sizeof(v));
  }
}
FP_INLINE void exp_shifted(double* x, std::int64_t n, double shift) {
  for (std::int64_t j = 0; j < n; ++j) x[j] = std::exp(x[j] - shift);
}

FP_INLINE std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

// Loads `count` rows (sequence positions s0..) of head h of batch b into dst[count][ld] as Acc,
// zero-padding columns head_dim..ld and rows past the sequence end.
template <typename T, typename Acc>
void load_rows(const TensorArg& t, std::int64_t b, std::int64_t h, std::int64_t s0, std::int64_t count,
               std::int64_t seqlen, std::int64_t head_dim, Acc* dst, std::int64_t ld) {
  const char* base = static_cast<const char*>(t.data) + b * t.strides[0] + h * t.strides[2];
  for (std::int64_t r = 0; r < count; ++r) {
    Acc* row = dst + r * ld;
    const std::int64_t s = s0 + r;
    if (s >= seqlen) {
      std::fill(row, row + ld, Acc(0));
      continue;
    }
    const char* src = base + s * t.strides[1];
    for (std::int64_t d = 0; d < head_dim; ++d) {
      T x;
      std::memcpy(&x, src + d * t.strides[3], sizeof(T));
      row[d] = static_cast<Acc>(to_f64(x));
    }
    std::fill(row + head_dim, row + ld, Acc(0));
  }
}

// The same rows transposed: dst[d][r] (ld = row stride of dst, >= count).
template <typename T, typename Acc>
void load_rows_t(const TensorArg& t, std::int64_t b, std::int64_t h, std::int64_t s0, std::int64_t count,
                 std::int64_t seqlen, std::int64_t head_dim, std::int64_t dpad, Acc* dst, std::int64_t ld) {
  const char* base = static_cast<const char*>(t.data) + b * t.strides[0] + h * t.strides[2];
  for (std::int64_t d = 0; d < dpad; ++d) std::fill(dst + d * ld, dst + d * ld + ld, Acc(0));
  for (std::int64_t r = 0; r < count && s0 + r < seqlen; ++r) {
    const char* src = base + (s0 + r) * t.strides[1];
    for (std::int64_t d = 0; d < head_dim; ++d) {
      T x;
      std::memcpy(&x, src + d * t.strides[3], sizeof(T));
      dst[d * ld + r] = static_cast<Acc>(to_f64(x));
    }
  }
}

template <typename T>
FP_INLINE T from_acc(double x);
template <> FP_INLINE double from_acc<double>(double x) { return x; }
template <> FP_INLINE float from_acc<float>(double x) { return static_cast<float>(x); }
template <> FP_INLINE half_bits from_acc<half_bits>(double x) { return half_bits{round_to_half_bits(x)}; }
template <> FP_INLINE bf16_bits from_acc<bf16_bits>(double x) { return bf16_bits{round_to_bf16_bits(x)}; }

// Writes a finished row: out = acc / l (0 for a row that saw no key), in the output's dtype.
template <typename T, typename Acc>
void store_row(const AttnParams& p, std::int64_t b, std::int64_t i, std::int64_t h, const Acc* acc, Acc l) {
  T* out = static_cast<T*>(p.out) + ((b * p.seqlen_q + i) * p.heads_q + h) * p.head_dim;
  const Acc inv = l > Acc(0) ? Acc(1) / l : Acc(0);
  for (std::int64_t d = 0; d < p.head_dim; ++d) {
    const Acc v = l > Acc(0) ? acc[d] * inv : Acc(0);
    out[d] = from_acc<T>(static_cast<double>(v));
  }
}

// Scaled, capped, masked scores of one row in place: s[j] for keys key0 + j, j < n.
template <typename Acc>
FP_INLINE Acc finish_scores(Acc* s, std::int64_t n, std::int64_t key0, KeyRange kr, Acc scale, Acc cap) {
  Acc mx = -INFINITY;
  for (std::int64_t j = 0; j < n; ++j) {
    const std::int64_t key = key0 + j;
    Acc v = -INFINITY;
    if (key >= kr.lo && key < kr.hi) v = apply_softcap(s[j] * scale, cap);
    s[j] = v;
    mx = v > mx ? v : mx;
  }
  return mx;
}

// ---- naive: one task = (batch, head, up to kNaiveRows query rows) --------------------------------
template <typename T, typename Acc>
void naive_task(const AttnParams& p, std::int64_t b, std::int64_t h, std::int64_t r0, std::int64_t rows) {
  const std::int64_t D = p.head_dim, Sk = p.seqlen_k;
  const std::int64_t hk = h / (p.heads_q / p.heads_kv);
  const std::int64_t ld = round_up(std::max<std::int64_t>(Sk, 1), kLanes);  // score row stride
  const Acc scale = static_cast<Acc>(p.scale), cap = static_cast<Acc>(p.softcap);
  std::vector<Acc> q(rows * D), s(rows * ld), kt(D * kNaiveKeyChunk), v(kNaiveKeyChunk * D), o(D);
  load_rows<T, Acc>(p.q, b, h, r0, rows, p.seqlen_q, D, q.data(), D);
  // scores, one key chunk at a time: s[i][j] = q_i . k_j
  for (std::int64_t j0 = 0; j0 < Sk; j0 += kNaiveKeyChunk) {
    const std::int64_t nj = std::min(kNaiveKeyChunk, Sk - j0);
    load_rows_t<T, Acc>(p.k, b, hk, j0, nj, Sk, D, D, kt.data(), kNaiveKeyChunk);
    for (std::int64_t i = 0; i < rows; ++i) {
      Acc* __restrict srow = s.data() + i * ld + j0;
      for (std::int64_t j = 0; j < nj; ++j) srow[j] = Acc(0);
      for (std::int64_t d = 0; d < D; ++d) {
        const Acc qd = q[i * D + d];
        const Acc* __restrict kd = kt.data() + d * kNaiveKeyChunk;
        for (std::int64_t j = 0; j < nj; ++j) srow[j] += qd * kd[j];
      }
    }
  }
  // softmax per row (max-subtracted), then P.V one key chunk at a time
  std::vector<Acc> lsum(rows), mrow(rows);
  for (std::int64_t i = 0; i < rows; ++i) {
    Acc* srow = s.data() + i * ld;
    const KeyRange kr = key_range(r0 + i, p);
    const Acc mx = finish_scores(srow, Sk, 0, kr, scale, cap);
    for (std::int64_t j = Sk; j < ld; ++j) srow[j] = -INFINITY;
    mrow[i] = mx;
    Acc l = 0;
    if (mx != -INFINITY) {
      exp_shifted(srow, ld, mx);
      for (std::int64_t j = 0; j < Sk; ++j) l += srow[j];
    } else {
      std::fill(srow, srow + ld, Acc(0));
    }
    lsum[i] = l;
  }
  std::vector<Acc> acc(rows * D, Acc(0));
  for (std::int64_t j0 = 0; j0 < Sk; j0 += kNaiveKeyChunk) {
    const std::int64_t nj = std::min(kNaiveKeyChunk, Sk - j0);
    load_rows<T, Acc>(p.v, b, hk, j0, nj, Sk, D, v.data(), D);
    for (std::int64_t i = 0; i < rows; ++i) {
      Acc* __restrict arow = acc.data() + i * D;
      const Acc* prow = s.data() + i * ld + j0;
      for (std::int64_t j = 0; j < nj; ++j) {
        const Acc pj = prow[j];
        if (pj == Acc(0)) continue;
        const Acc* __restrict vr = v.data() + j * D;
        for (std::int64_t d = 0; d < D; ++d) arow[d] += pj * vr[d];
      }
    }
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    store_row<T, Acc>(p, b, r0 + i, h, acc.data() + i * D, lsum[i]);
    if (p.lse) p.lse[(b * p.heads_q + h) * p.seqlen_q + r0 + i] = row_lse(mrow[i], lsum[i]);
  }
}

// ---- flash2: one task = (batch, head, kBr query rows) ---------------------------------------------
template <typename T, typename Acc>
void flash2_task(const AttnParams& p, std::int64_t b, std::int64_t h, std::int64_t r0, std::int64_t rows) {
  const std::int64_t D = p.head_dim, Sk = p.seqlen_k;
  const std::int64_t Dp = round_up(D, kLanes);
  const std::int64_t hk = h / (p.heads_q / p.heads_kv);
  const Acc scale = static_cast<Acc>(p.scale), cap = static_cast<Acc>(p.softcap);
  std::vector<Acc> q(kBr * Dp), kt(Dp * kBc), v(kBc * Dp), s(kBr * kBc), o(kBr * Dp, Acc(0));
  std::vector<Acc> m(kBr, -INFINITY), l(kBr, Acc(0));
  load_rows<T, Acc>(p.q, b, h, r0, rows, p.seqlen_q, D, q.data(), Dp);

  // Keys any row of the tile sees: [first row's lo, last row's hi). Tiles outside are never
  // visited (causal and window skipping); masks inside a visited tile apply per element.
  const KeyRange first = key_range(r0, p), last = key_range(r0 + rows - 1, p);
  const std::int64_t k_lo = first.lo / kBc * kBc, k_hi = last.hi;
  for (std::int64_t j0 = k_lo; j0 < k_hi; j0 += kBc) {
    const std::int64_t nj = std::min(kBc, Sk - j0);
    load_rows_t<T, Acc>(p.k, b, hk, j0, nj, Sk, D, Dp, kt.data(), kBc);
    load_rows<T, Acc>(p.v, b, hk, j0, nj, Sk, D, v.data(), Dp);
    // S = Q K^T for the tile (vectorized over keys)
    for (std::int64_t i = 0; i < rows; ++i) {
      Acc* __restrict srow = s.data() + i * kBc;
      for (std::int64_t j = 0; j < kBc; ++j) srow[j] = Acc(0);
      for (std::int64_t d = 0; d < D; ++d) {
        const Acc qd = q[i * Dp + d];
        const Acc* __restrict kd = kt.data() + d * kBc;
        for (std::int64_t j = 0; j < kBc; ++j) srow[j] += qd * kd[j];
      }
    }
    // online softmax: rescale what each row accumulated, add this tile's probabilities
    for (std::int64_t i = 0; i < rows; ++i) {
      Acc* srow = s.data() + i * kBc;
      const KeyRange kr = key_range(r0 + i, p);
      const Acc tile_max = finish_scores(srow, nj, j0, kr, scale, cap);
      for (std::int64_t j = nj; j < kBc; ++j) srow[j] = -INFINITY;
      const OnlineSoftmaxStep<Acc> st = online_softmax_step(m[i], tile_max);
      if (st.m_new == -INFINITY) {  // nothing seen yet: the tile contributes nothing
        std::fill(srow, srow + kBc, Acc(0));
        continue;
      }
      exp_shifted(srow, kBc, st.m_new);
      Acc rs = 0;
      for (std::int64_t j = 0; j < nj; ++j) rs += srow[j];
      l[i] = l[i] * st.alpha + rs;
      m[i] = st.m_new;
      if (st.alpha != Acc(1)) {
        Acc* __restrict orow = o.data() + i * Dp;
        for (std::int64_t d = 0; d < Dp; ++d) orow[d] *= st.alpha;
      }
    }
    // O += P V (vectorized over head_dim)
    for (std::int64_t i = 0; i < rows; ++i) {
      Acc* __restrict orow = o.data() + i * Dp;
      const Acc* prow = s.data() + i * kBc;
      for (std::int64_t j = 0; j < nj; ++j) {
        const Acc pj = prow[j];
        if (pj == Acc(0)) continue;
        const Acc* __restrict vr = v.data() + j * Dp;
        for (std::int64_t d = 0; d < Dp; ++d) orow[d] += pj * vr[d];
      }
    }
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    store_row<T, Acc>(p, b, r0 + i, h, o.data() + i * Dp, l[i]);
    if (p.lse) p.lse[(b * p.heads_q + h) * p.seqlen_q + r0 + i] = row_lse(m[i], l[i]);
  }
}

template <typename T>
void run_naive(const AttnParams& p, std::int64_t b, std::int64_t h, std::int64_t r0, std::int64_t rows) {
  if constexpr (std::is_same_v<T, double>) naive_task<T, double>(p, b, h, r0, rows);
  else naive_task<T, float>(p, b, h, r0, rows);
}

template <typename T>
void run_flash2(const AttnParams& p, std::int64_t b, std::int64_t h, std::int64_t r0, std::int64_t rows) {
  if constexpr (std::is_same_v<T, double>) flash2_task<T, double>(p, b, h, r0, rows);
  else flash2_task<T, float>(p, b, h, r0, rows);
}

}  // namespace

AttnTaskFn attention_task_fn(AttnImpl impl, DType dtype) {
  return FP_DTYPE_SWITCH(dtype, T, [&]() -> AttnTaskFn {
    return impl == AttnImpl::Naive ? &run_naive<T> : &run_flash2<T>;
  });
}

std::int64_t attention_rows_per_task(AttnImpl impl) { return impl == AttnImpl::Naive ? kNaiveRows : kBr; }

}  // namespace FP_ISA_NAMESPACE
}  // namespace flashparity
