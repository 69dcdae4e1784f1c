// CPU attention forward, written once and compiled per ISA (attention_{scalar,avx2,avx512,
// avx512bf16}.cpp; isa_target.h says how): the naive reference (materialized score rows) and
// FlashAttention-2's tiled algorithm (online softmax over K/V tiles, one tile of scores at a time).
// float32 accumulation for float32/16 and bfloat16 inputs, float64 for float64. The inner loops are
// plain loops over contiguous float buffers that the compiler vectorizes for the unit's ISA; exp is
// a shared polynomial, so every ISA computes the same function.
//
// Included once by each of those units, after it defines FP_ISA and FP_ISA_NAMESPACE. Every header
// is included here, before the ISA region opens: what they define stays baseline code. The kernels
// sit in an anonymous namespace; the unit exports only its AttentionTable.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "attention_cpu.h"
#include "flashparity/attention_math.h"
#include "flashparity/dtype.h"
#include "isa_target.h"

#ifndef FP_ISA_NAMESPACE
#error "define FP_ISA_NAMESPACE before including attention_impl.h"
#endif

FP_ISA_BEGIN
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

// One row of n elements (byte stride `stride`) as Acc. Contiguous rows take a loop the compiler
// vectorizes (a copy for float32, a shift for bfloat16, F16C for float16 where present).
template <typename T, typename Acc>
FP_INLINE void convert_row(const char* src, std::int64_t stride, std::int64_t n, Acc* __restrict dst) {
  if (stride == static_cast<std::int64_t>(sizeof(T))) {
    const T* __restrict s = reinterpret_cast<const T*>(src);
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      for (std::int64_t d = 0; d < n; ++d) dst[d] = static_cast<Acc>(s[d]);
      return;
    } else if constexpr (std::is_same_v<T, bf16_bits> && std::is_same_v<Acc, float>) {
      for (std::int64_t d = 0; d < n; ++d) dst[d] = bits_to_float(static_cast<std::uint32_t>(s[d].x) << 16);
      return;
    }
#if FP_ISA_AVX2
    else if constexpr (std::is_same_v<T, half_bits> && std::is_same_v<Acc, float>) {
      std::int64_t d = 0;
      for (; d + 8 <= n; d += 8)
        _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + d))));
      for (; d < n; ++d) dst[d] = half_to_float(s[d].x);
      return;
    }
#endif
  }
  for (std::int64_t d = 0; d < n; ++d) {
    T x;
    std::memcpy(&x, src + d * stride, sizeof(T));
    dst[d] = static_cast<Acc>(to_f64(x));
  }
}

// Loads `count` rows (sequence positions s0..) of head h of batch b into dst[count][ld] as Acc,
// zero-padding columns head_dim..ld and rows at or past `seqlen`.
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
    convert_row<T, Acc>(base + s * t.strides[1], t.strides[3], head_dim, row);
    std::fill(row + head_dim, row + ld, Acc(0));
  }
}

// The same rows transposed: dst[d][r] for d < dpad (ld = row stride of dst, >= count), through a
// row-major staging buffer so the conversion runs on contiguous rows.
template <typename T, typename Acc>
void load_rows_t(const TensorArg& t, std::int64_t b, std::int64_t h, std::int64_t s0, std::int64_t count,
                 std::int64_t seqlen, std::int64_t head_dim, std::int64_t dpad, Acc* dst, std::int64_t ld,
                 std::vector<Acc>& stage) {
  stage.resize(static_cast<std::size_t>(count * dpad));
  load_rows<T, Acc>(t, b, h, s0, count, seqlen, head_dim, stage.data(), dpad);
  for (std::int64_t d = 0; d < dpad; ++d) {
    Acc* __restrict out = dst + d * ld;
    for (std::int64_t r = 0; r < count; ++r) out[r] = stage[r * dpad + d];
    for (std::int64_t r = count; r < ld; ++r) out[r] = Acc(0);
  }
}

// Writes a finished row: out = acc / l (0 for a row that saw no key), in the output's dtype.
template <typename T, typename Acc>
void store_row(const AttnParams& p, std::int64_t b, std::int64_t i, std::int64_t h, const Acc* acc, Acc l) {
  T* out = static_cast<T*>(p.out) + ((b * p.seqlen_q + i) * p.heads_q + h) * p.head_dim;
  const Acc inv = l > Acc(0) ? Acc(1) / l : Acc(0);
  for (std::int64_t d = 0; d < p.head_dim; ++d) {
    const Acc v = l > Acc(0) ? acc[d] * inv : Acc(0);
    out[d] = from_f64<T>(static_cast<double>(v));
  }
}

// Scaled, capped, masked scores of one row in place: s[j] for keys key0 + j, j < n.
template <typename Acc>
FP_INLINE Acc finish_scores(Acc* s, std::int64_t n, std::int64_t key0, KeyRange kr, Acc scale, Acc cap) {
  if constexpr (std::is_same_v<Acc, float>) {
    if (cap == 0.0f && kr.lo <= key0 && key0 + n <= kr.hi && n % kLanes == 0) {  // all visible: vectors
      vf mx = vf{} - INFINITY;
      for (std::int64_t j = 0; j < n; j += kLanes) {
        vf v;
        std::memcpy(&v, s + j, sizeof(v));
        v *= scale;
        std::memcpy(s + j, &v, sizeof(v));
        mx = v > mx ? v : mx;
      }
      float m = -INFINITY;
      for (int l = 0; l < kLanes; ++l) m = mx[l] > m ? mx[l] : m;
      return m;
    }
  }
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

// ---- float32 register-blocked micro-kernels -------------------------------------------------------
// kRB query rows x kBc/16 (=4) key vectors of accumulators stay in registers across head_dim.
#if FP_ISA_AVX512
constexpr int kRB = 4;  // 16 zmm accumulators
#else
constexpr int kRB = 2;  // 8 accumulators of two ymm each
#endif
constexpr int kKV = kBc / kLanes;  // key vectors per score row

FP_INLINE vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
FP_INLINE void storev(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

// s[rows][0:kBc] (row stride lds) = q[rows][0:D] (row stride ldq) . kt[0:D][0:kBc] (row stride
// ldk); rows a multiple of kRB (callers pad q with zero rows).
void scores_tile(const float* q, std::int64_t ldq, const float* kt, std::int64_t ldk, std::int64_t D,
                 std::int64_t rows, float* s, std::int64_t lds) {
  for (std::int64_t i0 = 0; i0 < rows; i0 += kRB) {
    vf acc[kRB][kKV] = {};
    for (std::int64_t d = 0; d < D; ++d) {
      vf kv[kKV];
      for (int c = 0; c < kKV; ++c) kv[c] = loadv(kt + d * ldk + c * kLanes);
      for (int r = 0; r < kRB; ++r) {
        const vf qb = vf{} + q[(i0 + r) * ldq + d];
        for (int c = 0; c < kKV; ++c) acc[r][c] += qb * kv[c];
      }
    }
    for (int r = 0; r < kRB; ++r)
      for (int c = 0; c < kKV; ++c) storev(s + (i0 + r) * lds + c * kLanes, acc[r][c]);
  }
}

// o[rows][0:dv] (row stride dv, a multiple of kLanes) += p[rows][0:nj] (row stride ldp) .
// v[0:nj][0:dv] (row stride dv); head_dim in chunks of NV vectors.
template <int NV>
FP_INLINE void pv_chunk(const float* p, std::int64_t ldp, const float* v, std::int64_t dv, std::int64_t nj, float* o,
                        std::int64_t i0, std::int64_t d0) {
  vf acc[kRB][NV];
  for (int r = 0; r < kRB; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = loadv(o + (i0 + r) * dv + d0 + c * kLanes);
  for (std::int64_t j = 0; j < nj; ++j) {
    vf vv[NV];
    for (int c = 0; c < NV; ++c) vv[c] = loadv(v + j * dv + d0 + c * kLanes);
    for (int r = 0; r < kRB; ++r) {
      const vf pb = vf{} + p[(i0 + r) * ldp + j];
      for (int c = 0; c < NV; ++c) acc[r][c] += pb * vv[c];
    }
  }
  for (int r = 0; r < kRB; ++r)
    for (int c = 0; c < NV; ++c) storev(o + (i0 + r) * dv + d0 + c * kLanes, acc[r][c]);
}

void pv_tile(const float* p, std::int64_t ldp, const float* v, std::int64_t dv, std::int64_t nj, std::int64_t rows,
             float* o) {
  for (std::int64_t i0 = 0; i0 < rows; i0 += kRB) {
    std::int64_t d0 = 0;
    for (; d0 + 4 * kLanes <= dv; d0 += 4 * kLanes) pv_chunk<4>(p, ldp, v, dv, nj, o, i0, d0);
    switch ((dv - d0) / kLanes) {
      case 3: pv_chunk<3>(p, ldp, v, dv, nj, o, i0, d0); break;
      case 2: pv_chunk<2>(p, ldp, v, dv, nj, o, i0, d0); break;
      case 1: pv_chunk<1>(p, ldp, v, dv, nj, o, i0, d0); break;
      default: break;
    }
  }
}

// ---- bfloat16 dot products (AVX-512 BF16) -------------------------------------------------------
// vdpbf16ps adds the products of two adjacent bfloat16 pairs into each float32 lane: twice the
// multiply-adds of a float32 FMA. Q.K^T pairs adjacent head_dim elements; P.V pairs adjacent keys
// (P is rounded to bfloat16 first, as FlashAttention-2 does for its second product).
#if FP_ISA_AVX512BF16
constexpr bool kBf16Dot = true;
typedef std::uint16_t vbh __attribute__((vector_size(64)));  // 32 bfloat16

FP_INLINE vf dpbf16(vf acc, std::uint32_t pair, vbh x) {
  const __m512i bp = _mm512_set1_epi32(static_cast<int>(pair));
  return bitcast<vf>(_mm512_dpbf16_ps(bitcast<__m512>(acc), (__m512bh)bp, bitcast<__m512bh>(x)));
}

// Raw bfloat16 rows [count][ld] (zero-padded like load_rows).
void load_bf16_rows(const TensorArg& t, std::int64_t b, std::int64_t h, std::int64_t s0, std::int64_t count,
                    std::int64_t seqlen, std::int64_t head_dim, std::uint16_t* dst, std::int64_t ld) {
  const char* base = static_cast<const char*>(t.data) + b * t.strides[0] + h * t.strides[2];
  for (std::int64_t r = 0; r < count; ++r) {
    std::uint16_t* row = dst + r * ld;
    std::fill(row, row + ld, std::uint16_t{0});
    if (s0 + r >= seqlen) continue;
    const char* src = base + (s0 + r) * t.strides[1];
    if (t.strides[3] == 2) std::memcpy(row, src, static_cast<std::size_t>(head_dim) * 2);
    else
      for (std::int64_t d = 0; d < head_dim; ++d) std::memcpy(row + d, src + d * t.strides[3], 2);
  }
}

// s[rows][kBc] = q2[rows][0:Dp] . k[0:kBc][0:Dp] with kt2 = [Dp/2][kBc][2] (head_dim pairs).
void scores_tile_bf16(const std::uint16_t* q2, std::int64_t Dp, const std::uint16_t* kt2, std::int64_t rows,
                      float* s) {
  for (std::int64_t i0 = 0; i0 < rows; i0 += kRB) {
    vf acc[kRB][kKV] = {};
    for (std::int64_t dp = 0; dp < Dp / 2; ++dp) {
      vbh kv[kKV];
      for (int c = 0; c < kKV; ++c) std::memcpy(&kv[c], kt2 + dp * kBc * 2 + c * 32, 64);
      for (int r = 0; r < kRB; ++r) {
        std::uint32_t pair;
        std::memcpy(&pair, q2 + (i0 + r) * Dp + 2 * dp, 4);
        for (int c = 0; c < kKV; ++c) acc[r][c] = dpbf16(acc[r][c], pair, kv[c]);
      }
    }
    for (int r = 0; r < kRB; ++r)
      for (int c = 0; c < kKV; ++c) storev(s + (i0 + r) * kBc + c * kLanes, acc[r][c]);
  }
}

// o[rows][0:Dp] += p2[rows][0:kBc] . v with v2 = [kBc/2][Dp][2] (key pairs), in 64-wide chunks.
template <int NV>
FP_INLINE void pv_chunk_bf16(const std::uint16_t* p2, const std::uint16_t* v2, std::int64_t Dp, std::int64_t npairs,
                             float* o, std::int64_t i0, std::int64_t d0) {
  vf acc[kRB][NV];
  for (int r = 0; r < kRB; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = loadv(o + (i0 + r) * Dp + d0 + c * kLanes);
  for (std::int64_t jp = 0; jp < npairs; ++jp) {
    vbh vv[NV];
    for (int c = 0; c < NV; ++c) std::memcpy(&vv[c], v2 + jp * Dp * 2 + (d0 + c * kLanes) * 2, 64);
    for (int r = 0; r < kRB; ++r) {
      std::uint32_t pair;
      std::memcpy(&pair, p2 + (i0 + r) * kBc + 2 * jp, 4);
      for (int c = 0; c < NV; ++c) acc[r][c] = dpbf16(acc[r][c], pair, vv[c]);
    }
  }
  for (int r = 0; r < kRB; ++r)
    for (int c = 0; c < NV; ++c) storev(o + (i0 + r) * Dp + d0 + c * kLanes, acc[r][c]);
}

void pv_tile_bf16(const std::uint16_t* p2, const std::uint16_t* v2, std::int64_t Dp, std::int64_t nj,
                  std::int64_t rows, float* o) {
  const std::int64_t npairs = (nj + 1) / 2;
  for (std::int64_t i0 = 0; i0 < rows; i0 += kRB) {
    std::int64_t d0 = 0;
    for (; d0 + 4 * kLanes <= Dp; d0 += 4 * kLanes) pv_chunk_bf16<4>(p2, v2, Dp, npairs, o, i0, d0);
    switch ((Dp - d0) / kLanes) {
      case 3: pv_chunk_bf16<3>(p2, v2, Dp, npairs, o, i0, d0); break;
      case 2: pv_chunk_bf16<2>(p2, v2, Dp, npairs, o, i0, d0); break;
      case 1: pv_chunk_bf16<1>(p2, v2, Dp, npairs, o, i0, d0); break;
      default: break;
    }
  }
}

// K/V tiles in the pair layouts, packed once per (call, batch, kv head) on each thread and reused
// by the query tiles it runs next (the tasks of one head are claimed consecutively). Worker threads
// end with the call; the calling thread's copy is released by attention_release_thread_cache.
struct PackedKV {
  std::uint64_t call = 0;
  std::int64_t b = -1, hk = -1;
  std::vector<std::uint16_t> kt2, v2;
  std::vector<char> ready;
};
thread_local PackedKV packed_kv;

// flash2 for bfloat16 inputs on the dot-product instructions; same tiling and online softmax.
void flash2_task_bf16(const AttnParams& p, std::int64_t b, std::int64_t h, std::int64_t r0, std::int64_t rows) {
  const std::int64_t D = p.head_dim, Sk = p.seqlen_k;
  const std::int64_t Dp = round_up(D, kLanes);
  const std::int64_t hk = h / (p.heads_q / p.heads_kv);
  const float scale = static_cast<float>(p.scale), cap = static_cast<float>(p.softcap);
  std::vector<std::uint16_t> q2(kBr * Dp), krows(kBc * Dp), vrows(kBc * Dp), p2(kBr * kBc);
  PackedKV& cache = packed_kv;
  const std::int64_t n_tiles = (Sk + kBc - 1) / kBc, tile_elems = Dp * kBc;
  if (cache.call != p.call_id || cache.b != b || cache.hk != hk) {
    cache.call = p.call_id;
    cache.b = b;
    cache.hk = hk;
    cache.kt2.resize(static_cast<std::size_t>(n_tiles * tile_elems));
    cache.v2.resize(static_cast<std::size_t>(n_tiles * tile_elems));
    cache.ready.assign(static_cast<std::size_t>(n_tiles), 0);
  }
  std::vector<float> s(kBr * kBc), o(kBr * Dp, 0.0f), m(kBr, -INFINITY), l(kBr, 0.0f);
  const std::int64_t rows_p = std::min<std::int64_t>(round_up(rows, 4), kBr);
  load_bf16_rows(p.q, b, h, r0, rows_p, r0 + rows, D, q2.data(), Dp);
  const TileSpan tiles = row_block_key_tiles(r0, rows, p, kBc);
  for (std::int64_t j0 = tiles.begin * kBc; j0 < tiles.end * kBc; j0 += kBc) {
    const std::int64_t nj = std::min(kBc, Sk - j0);
    const std::int64_t t = j0 / kBc;
    std::uint16_t* kt2 = cache.kt2.data() + t * tile_elems;
    std::uint16_t* v2 = cache.v2.data() + t * tile_elems;
    if (!cache.ready[static_cast<std::size_t>(t)]) {
      load_bf16_rows(p.k, b, hk, j0, kBc, Sk, D, krows.data(), Dp);
      load_bf16_rows(p.v, b, hk, j0, kBc, Sk, D, vrows.data(), Dp);
      // pair layouts: kt2[d/2][j][d%2] (head_dim pairs per key), v2[j/2][d][j%2] (key pairs per dim)
      for (std::int64_t j = 0; j < kBc; ++j) {
        const std::uint32_t* kr = reinterpret_cast<const std::uint32_t*>(krows.data() + j * Dp);
        std::uint32_t* kd = reinterpret_cast<std::uint32_t*>(kt2) + j;
        for (std::int64_t dp = 0; dp < Dp / 2; ++dp) kd[dp * kBc] = kr[dp];
      }
      for (std::int64_t jp = 0; jp < kBc / 2; ++jp) {
        const std::uint16_t* va = vrows.data() + (2 * jp) * Dp;
        const std::uint16_t* vb = va + Dp;
        std::uint16_t* out = v2 + jp * Dp * 2;
        for (std::int64_t d = 0; d < Dp; ++d) {
          out[2 * d] = va[d];
          out[2 * d + 1] = vb[d];
        }
      }
      cache.ready[static_cast<std::size_t>(t)] = 1;
    }
    scores_tile_bf16(q2.data(), Dp, kt2, rows_p, s.data());
    for (std::int64_t i = 0; i < rows_p; ++i) {
      float* srow = s.data() + i * kBc;
      std::uint16_t* prow = p2.data() + i * kBc;
      if (i >= rows) {
        std::fill(prow, prow + kBc, std::uint16_t{0});
        continue;
      }
      const KeyRange kr = key_range(r0 + i, p);
      const float tile_max = finish_scores(srow, nj, j0, kr, scale, cap);
      for (std::int64_t j = nj; j < kBc; ++j) srow[j] = -INFINITY;
      const OnlineSoftmaxStep<float> st = online_softmax_step(m[i], tile_max);
      if (st.m_new == -INFINITY) {
        std::fill(prow, prow + kBc, std::uint16_t{0});
        continue;
      }
      exp_shifted(srow, kBc, st.m_new);
      // probabilities in [0, 1] to bfloat16, round to nearest even on the bit pattern; the
      // normalizer sums the rounded values P.V actually uses
      typedef std::uint32_t vu32x16 __attribute__((vector_size(64)));
      typedef std::uint16_t vu16x16 __attribute__((vector_size(32)));
      vf sum = {};
      for (std::int64_t j = 0; j < kBc; j += kLanes) {
        const vu32x16 u = bitcast<vu32x16>(loadv(srow + j));
        const vu32x16 r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // finite, >= 0
        const vu16x16 pb = __builtin_convertvector(r, vu16x16);
        std::memcpy(prow + j, &pb, sizeof(pb));
        sum += bitcast<vf>(r << 16);
      }
      float rs = 0;
      for (int k2 = 0; k2 < kLanes; ++k2) rs += sum[k2];
      l[i] = l[i] * st.alpha + rs;
      m[i] = st.m_new;
      if (st.alpha != 1.0f) {
        float* __restrict orow = o.data() + i * Dp;
        for (std::int64_t d = 0; d < Dp; ++d) orow[d] *= st.alpha;
      }
    }
    pv_tile_bf16(p2.data(), v2, Dp, kBc, rows_p, o.data());
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    store_row<bf16_bits, float>(p, b, r0 + i, h, o.data() + i * Dp, l[i]);
    if (p.lse) p.lse[(b * p.heads_q + h) * p.seqlen_q + r0 + i] = row_lse(m[i], l[i]);
  }
}
void release_packed_kv() { packed_kv = PackedKV(); }
#else
constexpr bool kBf16Dot = false;
void flash2_task_bf16(const AttnParams&, std::int64_t, std::int64_t, std::int64_t, std::int64_t) {}
void release_packed_kv() {}
#endif

// ---- naive: one task = (batch, head, up to kNaiveRows query rows) --------------------------------
// Scores for all keys of the rows are materialized (rows x seqlen_k), softmax is max-subtracted
// over each full row, then P.V; keys are loaded in chunks so only the score rows grow with seqlen_k.
template <typename T, typename Acc>
void naive_task(const AttnParams& p, std::int64_t b, std::int64_t h, std::int64_t r0, std::int64_t rows) {
  const std::int64_t D = p.head_dim, Sk = p.seqlen_k;
  const std::int64_t Dp = round_up(D, kLanes);
  const std::int64_t rows_p = round_up(rows, 4);  // zero rows for the micro-kernels' row blocks
  const std::int64_t hk = h / (p.heads_q / p.heads_kv);
  const std::int64_t ld = round_up(std::max<std::int64_t>(Sk, 1), kNaiveKeyChunk);  // score row stride
  const Acc scale = static_cast<Acc>(p.scale), cap = static_cast<Acc>(p.softcap);
  std::vector<Acc> q(rows_p * Dp), s(rows_p * ld, Acc(0)), kt(Dp * kNaiveKeyChunk), v(kNaiveKeyChunk * Dp), stage;
  load_rows<T, Acc>(p.q, b, h, r0, rows_p, r0 + rows, D, q.data(), Dp);
  // scores, one key chunk at a time: s[i][j] = q_i . k_j
  for (std::int64_t j0 = 0; j0 < Sk; j0 += kNaiveKeyChunk) {
    const std::int64_t nj = std::min(kNaiveKeyChunk, Sk - j0);
    load_rows_t<T, Acc>(p.k, b, hk, j0, nj, Sk, D, D, kt.data(), kNaiveKeyChunk, stage);
    if constexpr (std::is_same_v<Acc, float>) {
      for (std::int64_t c = 0; c < nj; c += kBc)
        scores_tile(q.data(), Dp, kt.data() + c, kNaiveKeyChunk, D, rows_p, s.data() + j0 + c, ld);
    } else {
      for (std::int64_t i = 0; i < rows; ++i) {
        Acc* __restrict srow = s.data() + i * ld + j0;
        for (std::int64_t d = 0; d < D; ++d) {
          const Acc qd = q[i * Dp + d];
          const Acc* __restrict kd = kt.data() + d * kNaiveKeyChunk;
          for (std::int64_t j = 0; j < nj; ++j) srow[j] += qd * kd[j];
        }
      }
    }
  }
  // softmax per row (max-subtracted), then P.V one key chunk at a time
  std::vector<Acc> lsum(rows), mrow(rows);
  for (std::int64_t i = 0; i < rows_p; ++i) {
    Acc* srow = s.data() + i * ld;
    if (i >= rows) {  // padding rows: no probabilities
      std::fill(srow, srow + ld, Acc(0));
      continue;
    }
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
  std::vector<Acc> acc(rows_p * Dp, Acc(0));
  for (std::int64_t j0 = 0; j0 < Sk; j0 += kNaiveKeyChunk) {
    const std::int64_t nj = std::min(kNaiveKeyChunk, Sk - j0);
    load_rows<T, Acc>(p.v, b, hk, j0, nj, Sk, D, v.data(), Dp);
    if constexpr (std::is_same_v<Acc, float>) {
      pv_tile(s.data() + j0, ld, v.data(), Dp, nj, rows_p, acc.data());
    } else {
      for (std::int64_t i = 0; i < rows; ++i) {
        Acc* __restrict arow = acc.data() + i * Dp;
        const Acc* prow = s.data() + i * ld + j0;
        for (std::int64_t j = 0; j < nj; ++j) {
          const Acc pj = prow[j];
          const Acc* __restrict vr = v.data() + j * Dp;
          for (std::int64_t d = 0; d < Dp; ++d) arow[d] += pj * vr[d];
        }
      }
    }
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    store_row<T, Acc>(p, b, r0 + i, h, acc.data() + i * Dp, lsum[i]);
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
  std::vector<Acc> q(kBr * Dp), kt(Dp * kBc), v(kBc * Dp), s(kBr * kBc), o(kBr * Dp, Acc(0)), stage;
  std::vector<Acc> m(kBr, -INFINITY), l(kBr, Acc(0));
  // rows rounded up to the micro-kernel's row block; the padding rows are zeros and never stored
  const std::int64_t rows_p = std::min<std::int64_t>(round_up(rows, 4), kBr);
  load_rows<T, Acc>(p.q, b, h, r0, rows_p, r0 + rows, D, q.data(), Dp);

  const TileSpan tiles = row_block_key_tiles(r0, rows, p, kBc);
  for (std::int64_t j0 = tiles.begin * kBc; j0 < tiles.end * kBc; j0 += kBc) {
    const std::int64_t nj = std::min(kBc, Sk - j0);
    load_rows_t<T, Acc>(p.k, b, hk, j0, nj, Sk, D, Dp, kt.data(), kBc, stage);
    load_rows<T, Acc>(p.v, b, hk, j0, nj, Sk, D, v.data(), Dp);
    // S = Q K^T for the tile
    if constexpr (std::is_same_v<Acc, float>) {
      scores_tile(q.data(), Dp, kt.data(), kBc, D, rows_p, s.data(), kBc);
    } else {
      for (std::int64_t i = 0; i < rows; ++i) {
        Acc* __restrict srow = s.data() + i * kBc;
        for (std::int64_t j = 0; j < kBc; ++j) srow[j] = Acc(0);
        for (std::int64_t d = 0; d < D; ++d) {
          const Acc qd = q[i * Dp + d];
          const Acc* __restrict kd = kt.data() + d * kBc;
          for (std::int64_t j = 0; j < kBc; ++j) srow[j] += qd * kd[j];
        }
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
      if constexpr (std::is_same_v<Acc, float>) {  // lanes, then across them (padding is 0 here)
        vf sum = {};
        for (std::int64_t j = 0; j < kBc; j += kLanes) sum += loadv(srow + j);
        for (int k2 = 0; k2 < kLanes; ++k2) rs += sum[k2];
      } else {
        for (std::int64_t j = 0; j < nj; ++j) rs += srow[j];
      }
      l[i] = l[i] * st.alpha + rs;
      m[i] = st.m_new;
      if (st.alpha != Acc(1)) {
        Acc* __restrict orow = o.data() + i * Dp;
        for (std::int64_t d = 0; d < Dp; ++d) orow[d] *= st.alpha;
      }
    }
    // O += P V
    if constexpr (std::is_same_v<Acc, float>) {
      pv_tile(s.data(), kBc, v.data(), Dp, nj, rows_p, o.data());
    } else {
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
  else if constexpr (std::is_same_v<T, bf16_bits> && kBf16Dot) flash2_task_bf16(p, b, h, r0, rows);
  else flash2_task<T, float>(p, b, h, r0, rows);
}

AttnTaskFn attention_task_fn(AttnImpl impl, DType dtype) {
  return FP_DTYPE_SWITCH(dtype, T, [&]() -> AttnTaskFn {
    return impl == AttnImpl::Naive ? &run_naive<T> : &run_flash2<T>;
  });
}

std::int64_t attention_rows_per_task(AttnImpl impl) { return impl == AttnImpl::Naive ? kNaiveRows : kBr; }

}  // namespace
}  // namespace FP_ISA_NAMESPACE
}  // namespace flashparity
FP_ISA_END

namespace flashparity {
namespace FP_ISA_NAMESPACE {
extern const AttentionTable attention_table;  // (declared again in cpu_dispatch.cpp, its one user)
const AttentionTable attention_table = {&attention_task_fn, &attention_rows_per_task, &release_packed_kv};
}  // namespace FP_ISA_NAMESPACE
}  // namespace flashparity
