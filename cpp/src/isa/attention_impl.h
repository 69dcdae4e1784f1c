// CPU attention forward, written once and compiled per ISA (attention_{scalar,avx2,avx512,
// avx512bf16,avx512amx,neon,neonbf16}.cpp; isa_target.h says how; the backward follows in
// attention_backward_impl.h): the naive reference (materialized scores of whole rows)
// and FlashAttention-2's tiled algorithm (online softmax over K/V tiles, one tile of scores at a
// time). float32 accumulation for float32/16 and bfloat16 inputs, float64 for float64. Vectors are
// the unit's register width (GCC vector extensions); exp is a shared polynomial, so every ISA
// computes the same function up to the order of its sums.
//
// Included once by each of those units, after it defines FP_ISA and FP_ISA_NAMESPACE. Every header
// is included here, before the ISA region opens: what they define stays baseline code. The kernels
// sit in an anonymous namespace; the unit exports only its tables (its AttentionTable; the AVX-512
// BF16 unit's also amx_emulated_attention_table; the backward's AttentionBackwardTable, but in the AMX
// unit, which has no backward).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#include "cpu/attention_cpu.h"
#include "flashparity/attention_math.h"
#include "flashparity/dtype.h"
#include "isa/isa_target.h"

#ifndef FP_ISA_NAMESPACE
#error "define FP_ISA_NAMESPACE before including attention_impl.h"
#endif

FP_ISA_BEGIN
namespace flashparity {
namespace FP_ISA_NAMESPACE {
namespace {

// Float lanes per vector, and the register blocking of the float micro-kernels: kRK keys (or
// head_dim entries) x kCV vectors of queries of accumulators (AVX-512: 16 of 32 zmm; AVX2 and
// SSE2: 12 of 16 ymm/xmm; NEON: 20 of 32 q registers, beside kCV loaded vectors and one broadcast).
// Vectors are never wider than the unit's registers: GCC splits a wider vector type through the
// stack. Per step of the micro-kernel: kCV vector loads, kRK broadcast loads, kRK x kCV FMAs
// (NEON: 5 + 4 loads for 20 FMAs of 4 lanes).
#if FP_ISA_AVX512
constexpr int kLanes = 16;
constexpr int kRK = 4;
constexpr int kCV = 4;
#elif FP_ISA_NEON
constexpr int kLanes = 4;
constexpr int kRK = 4;
constexpr int kCV = 5;
#else
constexpr int kLanes = FP_ISA_AVX2 ? 8 : 4;
constexpr int kRK = 4;
constexpr int kCV = 3;
#endif
constexpr int kQB = kCV * kLanes;   // queries per micro-kernel block
constexpr std::int64_t kBr = 64 / kQB * kQB;  // query rows per task (flash2 and naive)
constexpr std::int64_t kBc = 64;    // flash2 key tile
constexpr std::int64_t kNaiveKeyChunk = 256;
static_assert(kBr % kQB == 0 && kBc % kRK == 0 && kNaiveKeyChunk % kBc == 0, "tiles must nest");

typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef std::int32_t vi __attribute__((vector_size(4 * kLanes)));

template <typename To, typename From>
FP_INLINE To bitcast(const From& f) {
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}

FP_INLINE vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
FP_INLINE void storev(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

// *p in every lane, loaded by one broadcast. (`vf{} + x` costs an addition, -0.0 + 0.0 being
// +0.0, and GCC splits a generic lane-by-lane splat into two halves on AVX2.)
FP_INLINE vf splat(const float* p) {
#if FP_ISA_AVX512
  return bitcast<vf>(_mm512_set1_ps(*p));
#elif FP_ISA_AVX2
  return bitcast<vf>(_mm256_broadcast_ss(p));
#elif FP_ISA_NEON
  return bitcast<vf>(vld1q_dup_f32(p));  // LD1R
#else
  vf v;
  for (int k = 0; k < kLanes; ++k) v[k] = *p;
  return v;
#endif
}

FP_INLINE bool any_lane(vi m) {
#if FP_ISA_NEON
  return vmaxvq_u32(bitcast<uint32x4_t>(m)) != 0;
#endif
  int r = 0;
  for (int j = 0; j < kLanes; ++j) r |= m[j];
  return r != 0;
}

// exp(x) for kLanes floats: x = n*ln2 + r with |r| <= ln2/2, a degree-6 polynomial for exp(r), 2^n
// through the exponent field (Cephes' expf coefficients; <= 2 ulp). -inf and anything below
// ln 2^-100 give 0; NaN stays NaN. The callers take exp(s - max) (at most 1), so the probabilities
// dropped are below 2^-100 of the row's largest: with the row's sum l >= 1 and at most 2^40 keys,
// the output moves by at most 2^-60 max|v| (absolute; below float32's resolution of any output
// above 2^-36 max|v|, and smaller than what the float32 products p v already lose near FLT_MIN).
// Kept, they make the P.V products and their sums denormal (ALiBi over a few hundred keys gives
// e^-150), and an Intel core takes a ~100-cycle assist for each instruction that reads or makes a
// denormal (issue 28). (The previous cut, at float32's range, dropped below e^-87.3 likewise.)
constexpr float kExpFlush = -69.3147180559945f;  // ln 2^-100
FP_INLINE vf vexp(vf x) {
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
  e = x < kExpFlush ? zero : e;
  return x != x ? x : e;
}

FP_INLINE std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

// Scratch floats on a 64-byte boundary: rows of whole vectors never straddle two cache lines (with
// malloc's 16-byte alignment every other AVX2 load did, and the kernels ran up to 1.4x slower).
class FloatBuf {
 public:
  FloatBuf() = default;
  FloatBuf(std::int64_t n, float fill) {
    float* p = resize(n);
    std::fill(p, p + n, fill);
  }
  float* resize(std::int64_t n) {  // contents are not kept
    if (n > cap_) {
      p_.reset(static_cast<float*>(::operator new(static_cast<std::size_t>(n) * sizeof(float), std::align_val_t(64))));
      cap_ = n;
    }
    return p_.get();
  }
  float* data() const { return p_.get(); }
  float& operator[](std::int64_t i) const { return p_.get()[i]; }

 private:
  struct Free {
    void operator()(float* p) const { ::operator delete(p, std::align_val_t(64)); }
  };
  std::unique_ptr<float, Free> p_;
  std::int64_t cap_ = 0;
};

// One row of n elements (byte stride `stride`) as Acc. Contiguous rows take a loop the compiler
// vectorizes (a copy for float32, a shift for bfloat16, F16C for float16 where present); a row
// not aligned to its element size (a view at an odd byte offset) goes element by element (memcpy).
template <typename T, typename Acc>
FP_INLINE void convert_row(const char* src, std::int64_t stride, std::int64_t n, Acc* __restrict dst) {
  if (stride == static_cast<std::int64_t>(sizeof(T)) && reinterpret_cast<std::uintptr_t>(src) % alignof(T) == 0) {
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
#elif FP_ISA_NEON
    else if constexpr (std::is_same_v<T, half_bits> && std::is_same_v<Acc, float>) {
      std::int64_t d = 0;  // FCVTL: four halves a conversion, exact
      for (; d + 4 <= n; d += 4) vst1q_f32(dst + d, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(&s[d].x))));
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

// Row s of head h of batch b: q's rows (kv null) by strides, k's and v's through kv_row (a paged
// cache's block table).
FP_INLINE const char* row_at(const TensorArg& t, const AttnParams* kv, std::int64_t b, std::int64_t s, std::int64_t h) {
  return kv != nullptr ? kv_row(*kv, t, b, s, h)
                       : static_cast<const char*>(t.data) + b * t.strides[0] + s * t.strides[1] + h * t.strides[2];
}

// Loads `count` rows (sequence positions s0..) of head h of batch b into dst[count][ld] as Acc,
// zero-padding columns head_dim..ld and rows at or past `seqlen`. `kv`: the call's parameters when
// t is k or v (paged caches), null for q.
template <typename T, typename Acc>
void load_rows(const TensorArg& t, std::int64_t b, std::int64_t h, std::int64_t s0, std::int64_t count,
               std::int64_t seqlen, std::int64_t head_dim, Acc* dst, std::int64_t ld, const AttnParams* kv = nullptr) {
  for (std::int64_t r = 0; r < count; ++r) {
    Acc* row = dst + r * ld;
    const std::int64_t s = s0 + r;
    if (s >= seqlen) {
      std::fill(row, row + ld, Acc(0));
      continue;
    }
    convert_row<T, Acc>(row_at(t, kv, b, s, h), t.strides[3], head_dim, row);
    std::fill(row + head_dim, row + ld, Acc(0));
  }
}

// The same rows transposed: dst[d][r] for d < dpad (ld = row stride of dst, >= count), through a
// row-major staging buffer so the conversion runs on contiguous rows.
template <typename T, typename Acc>
void load_rows_t(const TensorArg& t, std::int64_t b, std::int64_t h, std::int64_t s0, std::int64_t count,
                 std::int64_t seqlen, std::int64_t head_dim, std::int64_t dpad, Acc* dst, std::int64_t ld,
                 std::vector<Acc>& stage, const AttnParams* kv = nullptr) {
  stage.resize(static_cast<std::size_t>(count * dpad));
  load_rows<T, Acc>(t, b, h, s0, count, seqlen, head_dim, stage.data(), dpad, kv);
  for (std::int64_t d = 0; d < dpad; ++d) {
    Acc* __restrict out = dst + d * ld;
    for (std::int64_t r = 0; r < count; ++r) out[r] = stage[r * dpad + d];
    for (std::int64_t r = count; r < ld; ++r) out[r] = Acc(0);
  }
}

FP_INLINE void store_lse(const AttnParams& p, std::int64_t b, std::int64_t h, std::int64_t i, float lse) {
  if (p.lse) p.lse[lse_index(p, b, h, i)] = lse;
}

// Writes a finished row: out = acc[d * stride] / l, in the output's dtype: 0 for a row that saw no
// key (l = 0), NaN for a row whose sum is NaN (a NaN or an infinity among its scores).
// T is the output's storage type; `scale` is FP8's v_descale (1 otherwise: then no multiply).
template <typename T, typename Acc>
void store_row(const AttnParams& p, std::int64_t b, std::int64_t i, std::int64_t h, const Acc* acc, Acc l,
               std::int64_t stride = 1, Acc scale = Acc(1)) {
  T* out = static_cast<T*>(p.out) + ((b * p.seqlen_q + i) * p.heads_q + h) * p.head_dim;
  const Acc inv = Acc(1) / l;
  for (std::int64_t d = 0; d < p.head_dim; ++d) {
    const Acc v = apply_v_descale(l == Acc(0) ? Acc(0) : acc[d * stride] * inv, scale);
    out[d] = from_f64<T>(static_cast<double>(v));
  }
}

// The sum and the maximum of a vector's lanes, as a tree (log2(kLanes) dependent steps, where a
// running scalar takes kLanes): AVX-512's and NEON's reductions in registers. A NaN lane makes the
// sum NaN; the maxima reduced here hold no NaN (`v > m ? v : m` steps never take one).
FP_INLINE float lane_sum(vf v) {
#if FP_ISA_AVX512
  return _mm512_reduce_add_ps(bitcast<__m512>(v));
#elif FP_ISA_NEON
  return vaddvq_f32(bitcast<float32x4_t>(v));
#else
  float t[kLanes];
  std::memcpy(t, &v, sizeof(v));
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) t[k] += t[k + w];
  return t[0];
#endif
}
FP_INLINE float lane_max(vf v) {
#if FP_ISA_AVX512
  return _mm512_reduce_max_ps(bitcast<__m512>(v));
#elif FP_ISA_NEON
  return vmaxvq_f32(bitcast<float32x4_t>(v));
#else
  float t[kLanes];
  std::memcpy(t, &v, sizeof(v));
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) t[k] = t[k + w] > t[k] ? t[k + w] : t[k];
  return t[0];
#endif
}

// A vector of scaled scores finished as every kernel finishes them, whatever its lanes are (the keys
// of one query row, or one key of several query rows): the softcap, then ALiBi's bias
// -slope * |dist| (dist: diag - key, as floats; slope 0: none), then the mask: -inf where the key
// index jj lies outside [lo, hi).
FP_INLINE vf finish_lanes(vf s, float cap, float slope, vf dist, vi jj, vi lo, vi hi) {
  if (cap > 0.0f)
    for (int k = 0; k < kLanes; ++k) s[k] = apply_softcap(s[k], cap);
  if (slope != 0.0f) s += -slope * (dist < 0.0f ? -dist : dist);
  return ((jj >= lo) & (jj < hi)) ? s : vf{} - INFINITY;
}

// Scaled, capped, masked scores of one row in place: s[j] for keys key0 + j, j < n; with ALiBi
// (slope != 0) the row's bias -slope * |diag - key| added, diag = i + seqlen_k - seqlen_q.
template <typename Acc>
FP_INLINE Acc finish_scores(Acc* s, std::int64_t n, std::int64_t key0, KeyRange kr, Acc scale, Acc cap,
                            Acc slope = 0, std::int64_t diag = 0) {
  if constexpr (std::is_same_v<Acc, float>) {
    if (cap == 0.0f && slope == 0.0f && kr.lo <= key0 && key0 + n <= kr.hi && n % kLanes == 0) {  // all visible: vectors
      vf mx = vf{} - INFINITY;
      for (std::int64_t j = 0; j < n; j += kLanes) {
        const vf v = loadv(s + j) * scale;
        storev(s + j, v);
        mx = v > mx ? v : mx;
      }
      return lane_max(mx);
    }
    if (n % kLanes == 0 && n <= (std::int64_t{1} << 30) && std::abs(diag - key0) <= (std::int64_t{1} << 30)) {
      // the same, lane by lane: the mask as key indices against [lo, hi), ALiBi's distances from
      // int32 lanes (diag - key as the scalar loop converts it)
      const std::int32_t lo = static_cast<std::int32_t>(std::clamp<std::int64_t>(kr.lo - key0, 0, n));
      const std::int32_t hi = static_cast<std::int32_t>(std::clamp<std::int64_t>(kr.hi - key0, lo, n));
      vi iota;
      for (int k = 0; k < kLanes; ++k) iota[k] = k;
      const std::int32_t d0 = static_cast<std::int32_t>(diag - key0);
      vf mx = vf{} - INFINITY;
      for (std::int64_t j = 0; j < n; j += kLanes) {
        const vi jj = iota + static_cast<std::int32_t>(j);
        const vf v = finish_lanes(loadv(s + j) * scale, cap, slope, __builtin_convertvector(d0 - jj, vf), jj,
                                  vi{} + lo, vi{} + hi);
        storev(s + j, v);
        mx = v > mx ? v : mx;
      }
      return lane_max(mx);
    }
  }
  Acc mx = -INFINITY;
  for (std::int64_t j = 0; j < n; ++j) {
    const std::int64_t key = key0 + j;
    Acc v = -INFINITY;
    if (key >= kr.lo && key < kr.hi) {
      v = apply_softcap(s[j] * scale, cap);
      if (slope != Acc(0)) v += -slope * static_cast<Acc>(diag > key ? diag - key : key - diag);
    }
    s[j] = v;
    mx = v > mx ? v : mx;
  }
  return mx;
}

// x[j] = exp(x[j] - shift) for j < n (n a multiple of kLanes; padding holds -inf).
FP_INLINE void exp_shifted(float* x, std::int64_t n, float shift) {
  for (std::int64_t j = 0; j < n; j += kLanes) storev(x + j, vexp(loadv(x + j) - shift));
}
FP_INLINE void exp_shifted(double* x, std::int64_t n, double shift) {
  for (std::int64_t j = 0; j < n; ++j) x[j] = std::exp(x[j] - shift);
}

// ---- float accumulation (float32, float16, bfloat16 inputs): queries in the lanes --------------
// A task holds its query rows transposed, qt[d][i] (zero past its rows), and computes the scores
// of a key tile transposed too, st[j][i] = K[j] . Q[i]: every vector runs over queries. K and V are
// read row by row, their natural layout, through scalar broadcasts (in place for float32 with a
// contiguous head_dim), so no tile is ever transposed; the online softmax's row statistics (max,
// sum, rescale) are lane-wise; and the output accumulates transposed, ot[d][i], written out as rows
// once at the end. Queries padded to whole vectors compute zeros nobody stores.

struct Rows {  // row j at p + j * ld
  const float* p;
  std::int64_t ld;
};

// The micro-kernel of both products, an outer product over t of R broadcasts and CV vectors:
// out[r][0:CV*kLanes] (row stride ldo) = (accumulate ? out : 0) + sum_{t < n} x[r * xr + t * xt] * y[t * ly + 0:CV*kLanes].
// Scores: x = K rows (r: keys, t: head_dim), y = Q^T. Output: x = V rows read down a column (r:
// head_dim, t: keys), y = P^T. CV is kCV but for the last query vectors of a task whose rows do not
// fill a block (decode: one query row takes one vector, not kCV).
template <int R, int CV = kCV>
FP_INLINE void outer_block(const float* x, std::int64_t xr, std::int64_t xt, const float* y, std::int64_t ly,
                           std::int64_t n, float* out, std::int64_t ldo, bool accumulate) {
  vf acc[R][CV] = {};
  if (accumulate)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < CV; ++c) acc[r][c] = loadv(out + r * ldo + c * kLanes);
  for (std::int64_t t = 0; t < n; ++t) {
    vf yv[CV];
    for (int c = 0; c < CV; ++c) yv[c] = loadv(y + t * ly + c * kLanes);
    for (int r = 0; r < R; ++r) {
      const vf xb = splat(x + r * xr + t * xt);
      for (int c = 0; c < CV; ++c) acc[r][c] += xb * yv[c];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < CV; ++c) storev(out + r * ldo + c * kLanes, acc[r][c]);
}

// f(std::integral_constant<int, cv>) for the query vectors cv = 1..kCV of a block, chosen at run time.
template <typename F>
FP_INLINE void with_vectors(std::int64_t cv, F&& f) {
  switch (cv) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: if constexpr (kCV >= 2) f(std::integral_constant<int, 2>{}); break;
    case 3: if constexpr (kCV >= 3) f(std::integral_constant<int, 3>{}); break;
    case 4: if constexpr (kCV >= 4) f(std::integral_constant<int, 4>{}); break;
    case 5: if constexpr (kCV >= 5) f(std::integral_constant<int, 5>{}); break;
    default: break;
  }
  static_assert(kCV <= 5, "with_vectors covers kCV <= 5");
}

// st[0:nk][0:nq] = K[0:nk] . qt (nk a multiple of kRK: the rows past the tile exist, e.g. zeros;
// nq a multiple of kLanes).
void scores_t(Rows k, std::int64_t nk, const float* qt, std::int64_t ldq, std::int64_t nq, std::int64_t D, float* st,
              std::int64_t lds) {
  for (std::int64_t i0 = 0; i0 < nq; i0 += kQB) {
    with_vectors(std::min<std::int64_t>(kQB, nq - i0) / kLanes, [&](auto cv) {
      for (std::int64_t j0 = 0; j0 < nk; j0 += kRK)
        outer_block<kRK, cv()>(k.p + j0 * k.ld, k.ld, 1, qt + i0, ldq, D, st + j0 * lds + i0, lds, false);
    });
  }
}

// ot[d0 + r][i0 + 0:CV*kLanes] += sum_j V[j][d0 + r] pt[j][i0 + 0:CV*kLanes] for r < R, j < nk.
template <int R, int CV>
FP_INLINE void pv_block(Rows v, std::int64_t nk, const float* pt, std::int64_t ldp, float* ot, std::int64_t ldo,
                        std::int64_t d0, std::int64_t i0) {
  outer_block<R, CV>(v.p + d0, 1, v.ld, pt + i0, ldp, nk, ot + d0 * ldo + i0, ldo, true);
}

template <int R, int CV>
FP_INLINE void pv_tail(Rows v, std::int64_t nk, const float* pt, std::int64_t ldp, float* ot, std::int64_t ldo,
                       std::int64_t d0, std::int64_t i0, int left) {
  if constexpr (R > 0) {
    if (left == R) return pv_block<R, CV>(v, nk, pt, ldp, ot, ldo, d0, i0);
    pv_tail<R - 1, CV>(v, nk, pt, ldp, ot, ldo, d0, i0, left);
  }
}

// ot[0:D][0:nq] += V[0:nk]^T . pt[0:nk][0:nq] (nq a multiple of kLanes)
void pv_t(Rows v, std::int64_t nk, const float* pt, std::int64_t ldp, std::int64_t nq, std::int64_t D, float* ot,
          std::int64_t ldo) {
  for (std::int64_t i0 = 0; i0 < nq; i0 += kQB) {
    with_vectors(std::min<std::int64_t>(kQB, nq - i0) / kLanes, [&](auto cv) {
      std::int64_t d0 = 0;
      for (; d0 + kRK <= D; d0 += kRK) pv_block<kRK, cv()>(v, nk, pt, ldp, ot, ldo, d0, i0);
      pv_tail<kRK - 1, cv()>(v, nk, pt, ldp, ot, ldo, d0, i0, static_cast<int>(D - d0));
    });
  }
}

// Query lanes' key ranges: row i sees keys [lo[i], hi[i]); padding lanes see everything.
struct QueryRanges {
  std::vector<std::int64_t> lo, hi;
  QueryRanges(const AttnParams& p, std::int64_t r0, std::int64_t rows, std::int64_t nq) : lo(nq, 0), hi(nq, INT64_MAX) {
    for (std::int64_t i = 0; i < rows; ++i) {
      const KeyRange kr = key_range(r0 + i, p);
      lo[i] = kr.lo;
      hi[i] = kr.hi;
    }
  }
};

// Masked keys contribute nothing, whatever their values: the one rule of every path (and of the
// float64 reference). The vector P.V multiplies each key's V row into every query lane, with p = 0
// in the lanes of rows that do not see the key; exact for finite values, but 0 * inf is NaN. So the
// "edge" keys of a tile (those outside the range that every row of the task sees) are scanned for
// non-finite values first (n x D compares against the product's nq x n x D multiply-adds, and on
// edge keys only). Where one is found, P.V runs on a copy with those values zeroed, and each row
// that does see such a key adds p * value for it afterwards, so non-finite values of visible keys
// still propagate.
FP_INLINE bool finite_bits(float x) { return (float_to_bits(x) & 0x7f800000u) != 0x7f800000u; }

struct CommonRange {  // keys [lo, hi) every real row of a task sees
  std::int64_t lo = 0, hi = INT64_MAX;
};

CommonRange common_range(const AttnParams& p, std::int64_t r0, std::int64_t rows) {
  CommonRange c;
  for (std::int64_t i = 0; i < rows; ++i) {
    const KeyRange kr = key_range(r0 + i, p);
    c.lo = std::max(c.lo, kr.lo);
    c.hi = std::min(c.hi, kr.hi);
  }
  return c;
}

// Whether any edge key of keys [key0, key0 + n) (row j at row(j)) holds a non-finite value in its
// first D elements; calls bad(j) for each such key.
template <typename RowAt, typename Bad>
bool scan_edge_keys(std::int64_t key0, std::int64_t n, CommonRange all, std::int64_t D, RowAt row, Bad bad) {
  const std::int64_t in_lo = std::clamp<std::int64_t>(all.lo - key0, 0, n);
  const std::int64_t in_hi = std::clamp<std::int64_t>(all.hi - key0, in_lo, n);
  bool any = false;
  for (std::int64_t j = 0; j < n; ++j) {
    if (j == in_lo) j = in_hi;
    if (j >= n) break;
    std::uint32_t ones = 0;  // exponent bits all set somewhere: inf or NaN
    for (std::int64_t d = 0; d < D; ++d) ones |= static_cast<std::uint32_t>(!finite_bits(row(j)[d]));
    if (ones) {
      any = true;
      bad(j);
    }
  }
  return any;
}

// ot[0:D][0:nq] += V[0:n]^T . pt[0:n][0:nq] (keys key0 ..) under the rule above; qr: the lanes' ranges.
void pv_t_masked(Rows v, std::int64_t n, std::int64_t key0, const float* pt, std::int64_t ldp, std::int64_t nq,
                 std::int64_t rows, std::int64_t D, const QueryRanges& qr, CommonRange all, float* ot,
                 std::int64_t ldo, FloatBuf& tmp, std::vector<std::int64_t>& bad_keys) {
  bad_keys.clear();
  if (!scan_edge_keys(key0, n, all, D, [&](std::int64_t j) { return v.p + j * v.ld; },
                      [&](std::int64_t j) { bad_keys.push_back(j); })) {
    pv_t(v, n, pt, ldp, nq, D, ot, ldo);
    return;
  }
  float* c = tmp.resize(n * D);
  for (std::int64_t j = 0; j < n; ++j) std::memcpy(c + j * D, v.p + j * v.ld, static_cast<std::size_t>(D) * 4);
  for (std::int64_t j : bad_keys)
    for (std::int64_t d = 0; d < D; ++d)
      if (!finite_bits(c[j * D + d])) c[j * D + d] = 0.0f;
  pv_t({c, D}, n, pt, ldp, nq, D, ot, ldo);
  for (std::int64_t j : bad_keys)
    for (std::int64_t i = 0; i < rows; ++i) {
      if (key0 + j < qr.lo[i] || key0 + j >= qr.hi[i]) continue;
      for (std::int64_t d = 0; d < D; ++d) {
        const float x = v.p[j * v.ld + d];
        if (!finite_bits(x)) ot[d * ldo + i] += pt[j * ldp + i] * x;
      }
    }
}

// A worker's K and V of one (batch, kv head) as float rows [round_up(Sk, kBc)][D] (zeros past Sk),
// converted tile by tile as its tasks first need them and reused by its next query tiles of that
// head: each head's K and V are converted once per worker, not once per query tile, and the rows are
// contiguous whatever the input's strides (rows 4 KiB apart alias in the L1 cache). A head too long
// to keep (more than kMaxCachedFloats per tensor: 8 MiB a worker for K and V) is converted per use
// into tile buffers.
constexpr std::int64_t kMaxCachedFloats = std::int64_t{1} << 20;

struct KVRows {
  std::int64_t b = -1, hk = -1, D = 0, Sk = 0;
  // whose rows these are: (problem, batch, kv head). A call's sequences (varlen, KV cache) are
  // problems of their own, each with its own parameters, which live for the call as this cache does
  const AttnParams* params = nullptr;
  bool cached = false;
  FloatBuf k, v;                    // the cached rows, or the rows of the last use
  std::vector<char> k_ready, v_ready;  // per kBc tile

  void bind(const AttnParams& p, std::int64_t b_, std::int64_t hk_) {
    if (&p == params && b_ == b && hk_ == hk) return;
    params = &p;
    b = b_;
    hk = hk_;
    D = p.head_dim;
    Sk = p.seqlen_k;
    const std::int64_t rows = round_up(Sk, kBc);
    cached = rows * D <= kMaxCachedFloats;
    if (cached) {
      k.resize(rows * D);
      v.resize(rows * D);
      k_ready.assign(static_cast<std::size_t>(rows / kBc), 0);
      v_ready.assign(static_cast<std::size_t>(rows / kBc), 0);
    }
  }

  // K (or V) rows j0 .. j0 + n (n <= kNaiveKeyChunk; rows past Sk read as zeros).
  template <typename T>
  Rows keys(const AttnParams& p, std::int64_t j0, std::int64_t n) {
    return fetch<T>(p.k, k, k_ready, j0, n);
  }
  template <typename T>
  Rows values(const AttnParams& p, std::int64_t j0, std::int64_t n) {
    return fetch<T>(p.v, v, v_ready, j0, n);
  }

 private:
  template <typename T>
  Rows fetch(const TensorArg& t, FloatBuf& buf, std::vector<char>& ready, std::int64_t j0, std::int64_t n) {
    if (!cached) {
      load_rows<T, float>(t, b, hk, j0, n, Sk, D, buf.resize(n * D), D, params);
      return {buf.data(), D};
    }
    for (std::int64_t tile = j0 / kBc; tile * kBc < j0 + n; ++tile) {
      if (ready[static_cast<std::size_t>(tile)]) continue;
      load_rows<T, float>(t, b, hk, tile * kBc, kBc, Sk, D, buf.data() + tile * kBc * D, D, params);
      ready[static_cast<std::size_t>(tile)] = 1;
    }
    return {buf.data() + j0 * D, D};
  }
};


// Softmax step of one key tile, keys key0 .. key0 + nk, for every query lane (nq of them):
// st[j][i] becomes the probability exp(s - m_new) in place, m and l are updated, and what ot
// accumulated so far is rescaled by exp(m_old - m_new) (FlashAttention-2's online softmax; the naive
// kernel runs it once over all keys).
// ALiBi: the lanes' bias -slope * |diag_i - key| with diag_i = diag0 + i (slope 0: none).
struct AlibiRows {
  float slope = 0.0f;
  std::int64_t diag0 = 0;
};

void softmax_tile(float* st, std::int64_t lds, std::int64_t nk, std::int64_t key0, std::int64_t nq,
                  const QueryRanges& qr, float scale, float cap, float* m, float* l, float* ot, std::int64_t ldo,
                  std::int64_t D, AlibiRows alibi) {
  for (std::int64_t i0 = 0; i0 < nq; i0 += kLanes) {
    // lanes' visible keys relative to the tile, clamped to [0, nk]
    vi lo, hi;
    bool all_visible = true;
    for (int k = 0; k < kLanes; ++k) {
      const std::int64_t a = std::clamp<std::int64_t>(qr.lo[i0 + k] - key0, 0, nk);
      const std::int64_t e = std::clamp<std::int64_t>(qr.hi[i0 + k] - key0, 0, nk);
      lo[k] = static_cast<std::int32_t>(a);
      hi[k] = static_cast<std::int32_t>(e);
      all_visible &= a == 0 && e == nk;
    }
    const vf vscale = vf{} + scale;
    vf mt = vf{} - INFINITY;
    // ALiBi distances |diag_i - key0 - j| as lanes (diag_i - key0 fits 32 bits: |i - j| < 2^31)
    vf dist0 = {};
    const bool bias = alibi.slope != 0.0f;
    if (bias)
      for (int k = 0; k < kLanes; ++k) dist0[k] = static_cast<float>(alibi.diag0 + i0 + k - key0);
    if (all_visible && cap == 0.0f && !bias) {
      for (std::int64_t j = 0; j < nk; ++j) {
        const vf s = loadv(st + j * lds + i0) * vscale;
        storev(st + j * lds + i0, s);
        mt = s > mt ? s : mt;
      }
    } else {
      for (std::int64_t j = 0; j < nk; ++j) {
        // (distances below 2^24 are exact in float32, as FlashAttention-2 computes them)
        const vf s = finish_lanes(loadv(st + j * lds + i0) * vscale, cap, alibi.slope, dist0 - static_cast<float>(j),
                                  vi{} + static_cast<std::int32_t>(j), lo, hi);
        storev(st + j * lds + i0, s);
        mt = s > mt ? s : mt;
      }
    }
    const vf m_old = loadv(m + i0);
    const vf m_new = mt > m_old ? mt : m_old;
    // a lane that has seen no key keeps m = -inf and shifts by 0: its exp(-inf) are zeros, no NaN
    const vf shift = m_new == -INFINITY ? vf{} : m_new;
    vf sum = {};
    for (std::int64_t j = 0; j < nk; ++j) {
      const vf e = vexp(loadv(st + j * lds + i0) - shift);
      storev(st + j * lds + i0, e);
      sum += e;
    }
    const vf alpha = m_old == m_new ? vf{} + 1.0f : vexp(m_old - shift);
    storev(l + i0, loadv(l + i0) * alpha + sum);
    storev(m + i0, m_new);
    if (any_lane(alpha != 1.0f))
      for (std::int64_t d = 0; d < D; ++d) storev(ot + d * ldo + i0, loadv(ot + d * ldo + i0) * alpha);
  }
}

// The shared skeleton of both float kernels: a task is (batch, head, up to kBr query rows); the
// keys are visited in tiles of kBc (flash2) or all of them at once (naive). T is the inputs' type:
// float32, float16, bfloat16 (without BF16 dot products) and the FP8 formats, all converted exactly
// to float32 rows; FP8 writes a bfloat16 output, its descales folded into the score scale and the
// output (score_scale, out_scale).
template <typename T>
void float_task(const AttnParams& p, KVRows& kv, std::int64_t b, std::int64_t h, std::int64_t r0, std::int64_t rows,
                bool naive) {
  const std::int64_t D = p.head_dim, Sk = p.seqlen_k;
  const std::int64_t hk = h / (p.heads_q / p.heads_kv);
  const std::int64_t nq = round_up(rows, kLanes);  // query lanes (whole vectors; a decode row takes one)
  const float scale = static_cast<float>(score_scale(p, b, h)), cap = static_cast<float>(p.softcap);
  const AlibiRows alibi{alibi_slope(p, b, h), r0 + Sk - p.seqlen_q};
  FloatBuf qt(D * nq, 0.0f), ot(D * nq, 0.0f), m(nq, -INFINITY), l(nq, 0.0f);
  std::vector<float> stage;
  kv.bind(p, b, hk);
  load_rows_t<T, float>(p.q, b, h, r0, rows, r0 + rows, D, D, qt.data(), nq, stage);
  const QueryRanges qr(p, r0, rows, nq);
  const TileSpan tiles = row_block_key_tiles(r0, rows, p, kBc);
  const std::int64_t k_begin = tiles.begin * kBc, k_end = std::min(tiles.end * kBc, Sk);
  const CommonRange all = common_range(p, r0, rows);
  FloatBuf vtmp;
  std::vector<std::int64_t> bad_keys;
  if (naive) {  // every visible key's score of the rows at once, then one softmax, then P.V
    const std::int64_t nk = k_end - k_begin;
    FloatBuf st;  // (every row the softmax and P.V read is written by the scores first)
    st.resize(round_up(std::max<std::int64_t>(nk, 1), kRK) * nq);
    for (std::int64_t j0 = k_begin; j0 < k_end; j0 += kNaiveKeyChunk) {
      const std::int64_t n_pad = round_up(std::min(kNaiveKeyChunk, k_end - j0), kRK);
      scores_t(kv.keys<T>(p, j0, n_pad), n_pad, qt.data(), nq, nq, D, st.data() + (j0 - k_begin) * nq, nq);
    }
    softmax_tile(st.data(), nq, nk, k_begin, nq, qr, scale, cap, m.data(), l.data(), ot.data(), nq, D, alibi);
    for (std::int64_t j0 = k_begin; j0 < k_end; j0 += kNaiveKeyChunk) {
      const std::int64_t n = std::min(kNaiveKeyChunk, k_end - j0);
      pv_t_masked(kv.values<T>(p, j0, n), n, j0, st.data() + (j0 - k_begin) * nq, nq, nq, rows, D, qr, all,
                  ot.data(), nq, vtmp, bad_keys);
    }
  } else {
    FloatBuf st;  // (as above)
    st.resize(kBc * nq);
    for (std::int64_t j0 = k_begin; j0 < k_end; j0 += kBc) {
      const std::int64_t n = std::min(kBc, Sk - j0), n_pad = round_up(n, kRK);
      scores_t(kv.keys<T>(p, j0, n_pad), n_pad, qt.data(), nq, nq, D, st.data(), nq);
      softmax_tile(st.data(), nq, n, j0, nq, qr, scale, cap, m.data(), l.data(), ot.data(), nq, D, alibi);
      pv_t_masked(kv.values<T>(p, j0, n), n, j0, st.data(), nq, nq, rows, D, qr, all, ot.data(), nq, vtmp, bad_keys);
    }
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    store_row<attn_out_t<T>, float>(p, b, r0 + i, h, ot.data() + i, l[i], nq, out_scale(p, b, h));
    store_lse(p, b, h, r0 + i, row_lse(m[i], l[i]));
  }
}

// ---- bfloat16 dot products (AVX-512 BF16, NEON BFDOT) and AMX tiles ------------------------------
// vdpbf16ps (x86) and BFDOT (aarch64) add the products of two adjacent bfloat16 pairs into each
// float32 lane: twice the multiply-adds of a float32 FMA. Q.K^T pairs adjacent head_dim elements;
// P.V pairs adjacent keys (P is rounded to bfloat16 first, as FlashAttention-2 does for its second
// product). AMX's tdpbf16ps does the same on 16 x 16 tiles, from the same pair layouts.
#if FP_ISA_AVX512BF16 || FP_ISA_AVX512AMX || FP_ISA_NEONBF16
constexpr bool kBf16Dot = true;
constexpr int kRB = 4;              // query rows per micro-kernel block
constexpr int kKV = kBc / kLanes;  // key vectors per score row
// key vectors per micro-kernel block: kRB x kKC accumulators (AVX-512: all 4 of a row; NEON: 4 of
// 16, so 16 accumulators and 4 loaded vectors of its 32 registers)
constexpr int kKC = kKV < 4 ? kKV : 4;
static_assert(kKV % kKC == 0, "key vectors come in whole blocks");
typedef std::uint16_t vbh __attribute__((vector_size(4 * kLanes)));  // 2 kLanes bfloat16

FP_INLINE vf dpbf16(vf acc, std::uint32_t pair, vbh x) {
#if FP_ISA_AVX512BF16 || FP_ISA_AVX512AMX
  const __m512i bp = _mm512_set1_epi32(static_cast<int>(pair));
  return bitcast<vf>(_mm512_dpbf16_ps(bitcast<__m512>(acc), (__m512bh)bp, bitcast<__m512bh>(x)));
#else
  const bfloat16x8_t bp = vreinterpretq_bf16_u32(vdupq_n_u32(pair));
  return bitcast<vf>(vbfdotq_f32(bitcast<float32x4_t>(acc), bp, bitcast<bfloat16x8_t>(x)));
#endif
}

// Raw bfloat16 rows [count][ld] (zero-padded like load_rows).
void load_bf16_rows(const TensorArg& t, std::int64_t b, std::int64_t h, std::int64_t s0, std::int64_t count,
                    std::int64_t seqlen, std::int64_t head_dim, std::uint16_t* dst, std::int64_t ld,
                    const AttnParams* kv = nullptr) {
  for (std::int64_t r = 0; r < count; ++r) {
    std::uint16_t* row = dst + r * ld;
    std::fill(row, row + ld, std::uint16_t{0});
    if (s0 + r >= seqlen) continue;
    const char* src = row_at(t, kv, b, s0 + r, h);
    if (t.strides[3] == 2) std::memcpy(row, src, static_cast<std::size_t>(head_dim) * 2);
    else
      for (std::int64_t d = 0; d < head_dim; ++d) std::memcpy(row + d, src + d * t.strides[3], 2);
  }
}

// s[rows][kBc] = q2[rows][0:Dp] . k[0:kBc][0:Dp] with kt2 = [Dp/2][kBc][2] (head_dim pairs).
void scores_tile_bf16(const std::uint16_t* q2, std::int64_t Dp, const std::uint16_t* kt2, std::int64_t rows,
                      float* s) {
  for (std::int64_t i0 = 0; i0 < rows; i0 += kRB)
    for (int c0 = 0; c0 < kKV; c0 += kKC) {
      vf acc[kRB][kKC] = {};
      for (std::int64_t dp = 0; dp < Dp / 2; ++dp) {
        vbh kv[kKC];
        for (int c = 0; c < kKC; ++c) std::memcpy(&kv[c], kt2 + (dp * kBc + (c0 + c) * kLanes) * 2, sizeof(vbh));
        for (int r = 0; r < kRB; ++r) {
          std::uint32_t pair;
          std::memcpy(&pair, q2 + (i0 + r) * Dp + 2 * dp, 4);
          for (int c = 0; c < kKC; ++c) acc[r][c] = dpbf16(acc[r][c], pair, kv[c]);
        }
      }
      for (int r = 0; r < kRB; ++r)
        for (int c = 0; c < kKC; ++c) storev(s + (i0 + r) * kBc + (c0 + c) * kLanes, acc[r][c]);
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
    for (int c = 0; c < NV; ++c) std::memcpy(&vv[c], v2 + jp * Dp * 2 + (d0 + c * kLanes) * 2, sizeof(vbh));
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

// The dot-product kernels above as the products of flash2_task_bf16.
struct DotProducts {
  static constexpr std::int64_t kRowBlock = kRB;     // query rows: whole blocks of the micro-kernel
  static constexpr std::int64_t kDimBlock = kLanes;  // head_dim: whole vectors
  void begin() {}
  void end() {}
  void scores(const std::uint16_t* q2, std::int64_t Dp, const std::uint16_t* kt2, std::int64_t rows, float* s) {
    scores_tile_bf16(q2, Dp, kt2, rows, s);
  }
  void pv(const std::uint16_t* p2, const std::uint16_t* v2, std::int64_t Dp, std::int64_t rows, float* o) {
    pv_tile_bf16(p2, v2, Dp, kBc, rows, o);
  }
};

#if FP_ISA_AVX512BF16 || FP_ISA_AVX512AMX
// ---- AMX tiles ----
// tdpbf16ps C[16][16] (float32) += A[16][32] (bfloat16 rows) . B[16][16][2] (bfloat16 pairs, AMX's
// VNNI-2 layout): C[m][n] += A[m][2k] B[k][2n] + A[m][2k+1] B[k][2n+1] for k < 16. The pair layouts the
// dot-product kernels pack are that layout already: Q.K^T takes Q's rows as A and kt2 (head_dim pairs
// of a key, a row per pair) as B; P.V takes P's rows as A and v2 (key pairs of a dim) as B. Every tile
// is 16 rows of 64 bytes: one configuration for every head_dim, which is padded to 32 (the last K step
// of a head_dim of 16 mod 32 multiplies zeros). A block of 2 x 2 result tiles takes all 8 tile
// registers: tmm0-3 accumulate, tmm4-5 hold A, tmm6-7 hold B, so each A and B tile loaded feeds two
// tdpbf16ps.
constexpr int kTileRows = 16;
constexpr std::int64_t kTileK = 32;  // bfloat16 elements of an A row: 64 bytes
static_assert(kBr % (2 * kTileRows) == 0 && kBc % (2 * kTileRows) == 0 && kBc % kTileK == 0,
              "query and key tiles are whole AMX tile blocks");

// The tile instructions in plain code: the same data movement, and TDPBF16PS's arithmetic as Intel
// defines it (each pair's two products added one after the other, in k order, each addition rounded to
// nearest even; bfloat16 and float32 denormal inputs read as zero, denormal results flushed to zero,
// whatever MXCSR says). With FLASHPARITY_AMX_EMULATE=1 the AMX kernels' tiling, packing and softmax run
// on any CPU with AVX-512 BF16, and the tests check them there.
struct EmulatedTiles {
  alignas(64) std::uint8_t t[8][kTileRows * 64];
  void begin() {}
  void end() {}
  template <int T>
  void zero() { std::memset(t[T], 0, sizeof(t[T])); }
  template <int T>
  void load(const void* p, std::int64_t stride) {
    for (int r = 0; r < kTileRows; ++r) std::memcpy(t[T] + r * 64, static_cast<const char*>(p) + r * stride, 64);
  }
  template <int T>
  void store(void* p, std::int64_t stride) const {
    for (int r = 0; r < kTileRows; ++r) std::memcpy(static_cast<char*>(p) + r * stride, t[T] + r * 64, 64);
  }
  static float flush(float x) {  // a denormal (or zero) as a zero of its sign
    const std::uint32_t u = float_to_bits(x);
    return (u & 0x7f800000u) == 0 ? bitcast<float>(u & 0x80000000u) : x;
  }
  template <int C, int A, int B>
  void dp() {
    float c[kTileRows][16], b[16][32];
    std::uint16_t a[kTileRows][32], braw[16][32];
    std::memcpy(c, t[C], sizeof(c));
    std::memcpy(a, t[A], sizeof(a));
    std::memcpy(braw, t[B], sizeof(braw));
    for (int k = 0; k < 16; ++k)
      for (int e = 0; e < 32; ++e) b[k][e] = flush(bf16_to_float(braw[k][e]));
    for (int m = 0; m < kTileRows; ++m)
      for (int k = 0; k < 16; ++k) {
        const float a0 = flush(bf16_to_float(a[m][2 * k])), a1 = flush(bf16_to_float(a[m][2 * k + 1]));
        for (int n = 0; n < 16; ++n) {
          // (a product of two bfloat16 is exact unless it leaves float32's normal range: flushed
          // before the addition, which also keeps the compiler from fusing the two into an FMA)
          const float x = flush(flush(c[m][n]) + flush(a0 * b[k][2 * n]));
          c[m][n] = flush(x + flush(a1 * b[k][2 * n + 1]));
        }
      }
    std::memcpy(t[C], c, sizeof(c));
  }
};

#if FP_ISA_AVX512AMX
// The tile instructions themselves. begin() loads the configuration (palette 1: every tile 16 rows of 64
// bytes) into this thread's tile state; end() releases it (TILERELEASE: the state returns to its init
// value, so the OS saves nothing of it at the next switch).
struct HardwareTiles {
  // (GCC 12's tile intrinsics are asm statements that name no memory they read: the barriers make
  // every store to the configuration and to a tile's source rows happen before the instruction)
  void begin() {
    alignas(64) std::uint8_t cfg[64] = {};
    cfg[0] = 1;  // palette
    for (int i = 0; i < 8; ++i) {
      cfg[16 + 2 * i] = 64;  // colsb[i], little-endian 16 bits
      cfg[48 + i] = kTileRows;
    }
    asm volatile("" ::: "memory");
    _tile_loadconfig(cfg);
  }
  void end() { _tile_release(); }
  // (the intrinsics are macros that spell the tile number into the instruction: literals only)
  template <int T>
  void zero() {
    static_assert(T >= 0 && T < 4, "accumulators are tmm0-3");
    if constexpr (T == 0) _tile_zero(0);
    else if constexpr (T == 1) _tile_zero(1);
    else if constexpr (T == 2) _tile_zero(2);
    else _tile_zero(3);
  }
  template <int T>
  void load(const void* p, std::int64_t stride) {
    static_assert(T >= 0 && T < 8, "tmm0-7");
    asm volatile("" ::: "memory");
    if constexpr (T == 0) _tile_loadd(0, p, stride);
    else if constexpr (T == 1) _tile_loadd(1, p, stride);
    else if constexpr (T == 2) _tile_loadd(2, p, stride);
    else if constexpr (T == 3) _tile_loadd(3, p, stride);
    else if constexpr (T == 4) _tile_loadd(4, p, stride);
    else if constexpr (T == 5) _tile_loadd(5, p, stride);
    else if constexpr (T == 6) _tile_loadd(6, p, stride);
    else _tile_loadd(7, p, stride);
  }
  template <int T>
  void store(void* p, std::int64_t stride) {
    static_assert(T >= 0 && T < 4, "accumulators are tmm0-3");
    if constexpr (T == 0) _tile_stored(0, p, stride);
    else if constexpr (T == 1) _tile_stored(1, p, stride);
    else if constexpr (T == 2) _tile_stored(2, p, stride);
    else _tile_stored(3, p, stride);
  }
  template <int C, int A, int B>
  void dp() {  // the four products of a 2 x 2 block
    static_assert(A == 4 + C / 2 && B == 6 + C % 2, "tmm C += tmm(4 + C/2) . tmm(6 + C%2)");
    if constexpr (C == 0) _tile_dpbf16ps(0, 4, 6);
    else if constexpr (C == 1) _tile_dpbf16ps(1, 4, 7);
    else if constexpr (C == 2) _tile_dpbf16ps(2, 5, 6);
    else _tile_dpbf16ps(3, 5, 7);
  }
};
#endif

// flash2_task_bf16's two products on tiles (Tiles: the instructions or their emulation). Query rows are
// padded to whole tiles (16), head_dim to whole A rows (32).
template <typename Tiles>
struct AmxProducts {
  static constexpr std::int64_t kRowBlock = kTileRows;
  static constexpr std::int64_t kDimBlock = kTileK;
  Tiles tiles;
  void begin() { tiles.begin(); }
  void end() { tiles.end(); }

  // s[rows][kBc] = q2[rows][0:Dp] . k, kt2 = [Dp/2][kBc][2] (rows a multiple of 16)
  void scores(const std::uint16_t* q2, std::int64_t Dp, const std::uint16_t* kt2, std::int64_t rows, float* s) {
    for (std::int64_t i0 = 0; i0 < rows; i0 += 2 * kTileRows)
      for (std::int64_t j0 = 0; j0 < kBc; j0 += 32) {
        if (rows - i0 >= 2 * kTileRows) block<2, false>(q2 + i0 * Dp, Dp, kt2 + j0 * 2, kBc * 2, Dp, s + i0 * kBc + j0, kBc);
        else block<1, false>(q2 + i0 * Dp, Dp, kt2 + j0 * 2, kBc * 2, Dp, s + i0 * kBc + j0, kBc);
      }
  }

  // o[rows][0:Dp] += p2[rows][0:kBc] . v, v2 = [kBc/2][Dp][2] (rows a multiple of 16, Dp of 32)
  void pv(const std::uint16_t* p2, const std::uint16_t* v2, std::int64_t Dp, std::int64_t rows, float* o) {
    for (std::int64_t i0 = 0; i0 < rows; i0 += 2 * kTileRows)
      for (std::int64_t d0 = 0; d0 < Dp; d0 += 32) {
        if (rows - i0 >= 2 * kTileRows) block<2, true>(p2 + i0 * kBc, kBc, v2 + d0 * 2, Dp * 2, kBc, o + i0 * Dp + d0, Dp);
        else block<1, true>(p2 + i0 * kBc, kBc, v2 + d0 * 2, Dp * 2, kBc, o + i0 * Dp + d0, Dp);
      }
  }

  // c[0:16 NR][0:32] (row stride ldc floats) = (Accumulate ? c : 0) + a[0:16 NR][0:K] . b, where a's
  // rows are lda bfloat16 apart and b holds pairs: row k/2 (ldb bfloat16 apart) has column n's pair
  // at 2n, 2n + 1. K a multiple of 32.
  template <int NR, bool Accumulate>
  void block(const std::uint16_t* a, std::int64_t lda, const std::uint16_t* b, std::int64_t ldb, std::int64_t K,
             float* c, std::int64_t ldc) {
    Tiles& t = tiles;
    float* c1 = c + kTileRows * ldc;  // (second row of tiles, NR == 2)
    if constexpr (Accumulate) {
      t.template load<0>(c, ldc * 4);
      t.template load<1>(c + 16, ldc * 4);
      if constexpr (NR == 2) {
        t.template load<2>(c1, ldc * 4);
        t.template load<3>(c1 + 16, ldc * 4);
      }
    } else {
      t.template zero<0>();
      t.template zero<1>();
      if constexpr (NR == 2) {
        t.template zero<2>();
        t.template zero<3>();
      }
    }
    for (std::int64_t k0 = 0; k0 < K; k0 += kTileK) {
      const std::uint16_t* b_rows = b + (k0 / 2) * ldb;
      t.template load<4>(a + k0, lda * 2);
      t.template load<6>(b_rows, ldb * 2);
      t.template load<7>(b_rows + 16 * 2, ldb * 2);
      t.template dp<0, 4, 6>();
      t.template dp<1, 4, 7>();
      if constexpr (NR == 2) {
        t.template load<5>(a + kTileRows * lda + k0, lda * 2);
        t.template dp<2, 5, 6>();
        t.template dp<3, 5, 7>();
      }
    }
    t.template store<0>(c, ldc * 4);
    t.template store<1>(c + 16, ldc * 4);
    if constexpr (NR == 2) {
      t.template store<2>(c1, ldc * 4);
      t.template store<3>(c1 + 16, ldc * 4);
    }
  }
};
#endif

// K/V tiles in the pair layouts, packed once per (batch, kv head) by each worker and reused by the
// query tiles it runs next (the tasks of one head are claimed consecutively); part of the worker's
// scratch, which lives for one call.
struct PackedKV {
  std::int64_t b = -1, hk = -1;
  const AttnParams* params = nullptr;  // (whose: as KVRows)
  std::vector<std::uint16_t> kt2, v2;
  std::vector<char> ready;
  std::vector<char> v_nonfinite;  // per tile: some V value is inf or NaN (then masked keys need care)
};

// flash2 for bfloat16 inputs on the dot-product instructions or AMX tiles (Products: DotProducts,
// AmxProducts); same tiling and online softmax.
template <typename Products>
void flash2_task_bf16(const AttnParams& p, PackedKV& cache, std::int64_t b, std::int64_t h, std::int64_t r0,
                      std::int64_t rows) {
  const std::int64_t D = p.head_dim, Sk = p.seqlen_k;
  const std::int64_t Dp = round_up(D, Products::kDimBlock);
  const std::int64_t hk = h / (p.heads_q / p.heads_kv);
  const float scale = static_cast<float>(p.scale), cap = static_cast<float>(p.softcap);
  const float slope = alibi_slope(p, b, h);
  std::vector<std::uint16_t> q2(kBr * Dp), krows(kBc * Dp), vrows(kBc * Dp), p2(kBr * kBc);
  const std::int64_t n_tiles = (Sk + kBc - 1) / kBc, tile_elems = Dp * kBc;
  // (a head past the float kernels' cache size is packed per use, into one tile slot)
  const bool cached = n_tiles * tile_elems <= 2 * kMaxCachedFloats;
  if (cache.b != b || cache.hk != hk || cache.params != &p) {
    cache.b = b;
    cache.hk = hk;
    cache.params = &p;
    cache.kt2.resize(static_cast<std::size_t>((cached ? n_tiles : 1) * tile_elems));
    cache.v2.resize(static_cast<std::size_t>((cached ? n_tiles : 1) * tile_elems));
    cache.ready.assign(static_cast<std::size_t>(cached ? n_tiles : 1), 0);
    cache.v_nonfinite.assign(static_cast<std::size_t>(cached ? n_tiles : 1), 0);
  }
  std::vector<float> s(kBr * kBc), o(kBr * Dp, 0.0f), m(kBr, -INFINITY);
  std::vector<float> tmax(kBr, -INFINITY), alpha(kBr);  // per row: the tile's maximum score, the rescale
  // per row, lane by lane (their lanes summed once, at the end): l, the sum of the bfloat16-rounded
  // probabilities P.V uses (the output's normalizer), and l_lse, the sum of the float32 probabilities,
  // for the LSE (rounding P costs the sum up to 2^-9 relative, which the LSE, unlike the output, would keep)
  FloatBuf lv(kBr * kLanes, 0.0f), lv_lse(kBr * kLanes, 0.0f);
  const std::int64_t rows_p = std::min<std::int64_t>(round_up(rows, Products::kRowBlock), kBr);
  load_bf16_rows(p.q, b, h, r0, rows_p, r0 + rows, D, q2.data(), Dp);
  Products prod;
  prod.begin();
  struct End {
    Products& prod;
    ~End() { prod.end(); }
  } end{prod};  // (AMX: the tile state is released however the task ends)
  const TileSpan tiles = row_block_key_tiles(r0, rows, p, kBc);
  const CommonRange all = common_range(p, r0, rows);
  std::vector<std::int64_t> bad_keys;
  std::vector<float> vrow(D);
  std::vector<std::uint16_t> vclean;
  for (std::int64_t j0 = tiles.begin * kBc; j0 < tiles.end * kBc; j0 += kBc) {
    const std::int64_t nj = std::min(kBc, Sk - j0);
    const std::int64_t t = cached ? j0 / kBc : 0;
    std::uint16_t* kt2 = cache.kt2.data() + t * tile_elems;
    std::uint16_t* v2 = cache.v2.data() + t * tile_elems;
    if (!cached || !cache.ready[static_cast<std::size_t>(t)]) {
      load_bf16_rows(p.k, b, hk, j0, kBc, Sk, D, krows.data(), Dp, &p);
      load_bf16_rows(p.v, b, hk, j0, kBc, Sk, D, vrows.data(), Dp, &p);
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
      std::uint16_t ones = 0;  // exponent bits all set somewhere: inf or NaN
      for (std::int64_t e = 0; e < kBc * Dp; ++e) ones |= static_cast<std::uint16_t>((vrows[e] & 0x7f80u) == 0x7f80u);
      cache.v_nonfinite[static_cast<std::size_t>(t)] = ones != 0;
      cache.ready[static_cast<std::size_t>(t)] = 1;
    }
    prod.scores(q2.data(), Dp, kt2, rows_p, s.data());
    // the online softmax step in three passes: each row's scores and tile maximum; the rows' new
    // maxima and rescale factors, kLanes rows to a vector (as the float kernels' lanes do: one vector
    // exp, not a scalar exp per row); each row's probabilities, rounded for P.V
    for (std::int64_t i = 0; i < rows; ++i) {
      float* srow = s.data() + i * kBc;
      const KeyRange kr = key_range(r0 + i, p);
      // (the whole tile: keys past seqlen_k lie past kr.hi, so they come out -inf too)
      tmax[i] = finish_scores(srow, kBc, j0, kr, scale, cap, slope, r0 + i + Sk - p.seqlen_q);
    }
    // (lanes past `rows` hold -inf: alpha 1, unused. vexp flushes below ln 2^-100, as the float
    // kernels' rescale does: what a row had accumulated is then dropped, below 2^-100 of the rest)
    for (std::int64_t i0 = 0; i0 < rows; i0 += kLanes) {
      const vf m_old = loadv(m.data() + i0), m_new = loadv(tmax.data() + i0) > m_old ? loadv(tmax.data() + i0) : m_old;
      const vf shift = m_new == -INFINITY ? vf{} : m_new;  // (a row that has seen no key: exp(-inf) = 0)
      storev(alpha.data() + i0, m_old == m_new ? vf{} + 1.0f : vexp(m_old - shift));
      storev(m.data() + i0, m_new);
    }
    for (std::int64_t i = 0; i < rows_p; ++i) {
      float* srow = s.data() + i * kBc;
      std::uint16_t* prow = p2.data() + i * kBc;
      if (i >= rows || m[i] == -INFINITY) {
        std::fill(prow, prow + kBc, std::uint16_t{0});
        continue;
      }
      exp_shifted(srow, kBc, m[i]);
      // probabilities in [0, 1] to bfloat16, round to nearest even on the bit pattern; the
      // normalizer sums the rounded values P.V actually uses
      typedef std::uint32_t vu32l __attribute__((vector_size(4 * kLanes)));
      typedef std::uint16_t vu16l __attribute__((vector_size(2 * kLanes)));
      vf sum = {}, sum_exact = {};
      for (std::int64_t j = 0; j < kBc; j += kLanes) {
        const vf x = loadv(srow + j);
        const vu32l u = bitcast<vu32l>(x);
        const vu32l r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // finite, >= 0
        const vu16l pb = __builtin_convertvector(r, vu16l);
        std::memcpy(prow + j, &pb, sizeof(pb));
        sum += bitcast<vf>(r << 16);
        sum_exact += x;
      }
      const float a = alpha[i];
      storev(lv.data() + i * kLanes, loadv(lv.data() + i * kLanes) * a + sum);
      storev(lv_lse.data() + i * kLanes, loadv(lv_lse.data() + i * kLanes) * a + sum_exact);
      if (a != 1.0f) {
        float* __restrict orow = o.data() + i * Dp;
        for (std::int64_t d = 0; d < Dp; ++d) orow[d] *= a;
      }
    }
    // masked keys contribute nothing, whatever their values (the rule of pv_t_masked, on the pair layout)
    const auto v_at = [&](std::int64_t j, std::int64_t d) -> std::uint16_t& { return v2[(j / 2) * Dp * 2 + d * 2 + (j & 1)]; };
    bad_keys.clear();
    const bool bad = cache.v_nonfinite[static_cast<std::size_t>(t)] && scan_edge_keys(
        j0, nj, all, D,
        [&](std::int64_t j) {
          for (std::int64_t d = 0; d < D; ++d) vrow[d] = bf16_to_float(v_at(j, d));
          return vrow.data();
        },
        [&](std::int64_t j) { bad_keys.push_back(j); });
    if (!bad) {
      prod.pv(p2.data(), v2, Dp, rows_p, o.data());
      continue;
    }
    vclean.assign(v2, v2 + tile_elems);
    for (std::int64_t j : bad_keys)
      for (std::int64_t d = 0; d < D; ++d) {
        std::uint16_t& x = vclean[(j / 2) * Dp * 2 + d * 2 + (j & 1)];
        if ((x & 0x7f80u) == 0x7f80u) x = 0;
      }
    prod.pv(p2.data(), vclean.data(), Dp, rows_p, o.data());
    for (std::int64_t j : bad_keys)
      for (std::int64_t i = 0; i < rows; ++i) {
        const KeyRange kr = key_range(r0 + i, p);
        if (j0 + j < kr.lo || j0 + j >= kr.hi) continue;
        const float pj = bf16_to_float(p2[i * kBc + j]);
        for (std::int64_t d = 0; d < D; ++d)
          if ((v_at(j, d) & 0x7f80u) == 0x7f80u) o[i * Dp + d] += pj * bf16_to_float(v_at(j, d));
      }
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    const float l = lane_sum(loadv(lv.data() + i * kLanes)), l_lse = lane_sum(loadv(lv_lse.data() + i * kLanes));
    store_row<bf16_bits, float>(p, b, r0 + i, h, o.data() + i * Dp, l);
    store_lse(p, b, h, r0 + i, row_lse(m[i], l_lse));
  }
}
#else
constexpr bool kBf16Dot = false;
struct PackedKV {};
struct DotProducts {};
template <typename Products>
[[maybe_unused]] void flash2_task_bf16(const AttnParams&, PackedKV&, std::int64_t, std::int64_t, std::int64_t, std::int64_t) {}
#endif

// What a worker keeps for the length of one call.
struct Scratch {
  KVRows kv;        // float kernels
  PackedKV packed;  // bfloat16 dot products
};
void* scratch_new() { return new Scratch(); }
void scratch_free(void* s) { delete static_cast<Scratch*>(s); }

// ---- float64: plain loops, one query row at a time ------------------------------------------------
// naive: scores for all keys of the rows are materialized (rows x seqlen_k), softmax is
// max-subtracted over each full row, then P.V; keys are loaded in chunks so only the score rows
// grow with seqlen_k.
template <typename T, typename Acc = double>
void naive_task_f64(const AttnParams& p, std::int64_t b, std::int64_t h, std::int64_t r0, std::int64_t rows) {
  const std::int64_t D = p.head_dim, Sk = p.seqlen_k;
  const std::int64_t Dp = D;
  const std::int64_t hk = h / (p.heads_q / p.heads_kv);
  const std::int64_t ld = round_up(std::max<std::int64_t>(Sk, 1), kNaiveKeyChunk);  // score row stride
  const Acc scale = static_cast<Acc>(p.scale), cap = static_cast<Acc>(p.softcap);
  const Acc slope = static_cast<Acc>(alibi_slope(p, b, h));
  std::vector<Acc> q(rows * Dp), s(rows * ld, Acc(0)), kt(Dp * kNaiveKeyChunk), v(kNaiveKeyChunk * Dp), stage;
  load_rows<T, Acc>(p.q, b, h, r0, rows, r0 + rows, D, q.data(), Dp);
  // scores, one key chunk at a time: s[i][j] = q_i . k_j
  for (std::int64_t j0 = 0; j0 < Sk; j0 += kNaiveKeyChunk) {
    const std::int64_t nj = std::min(kNaiveKeyChunk, Sk - j0);
    load_rows_t<T, Acc>(p.k, b, hk, j0, nj, Sk, D, D, kt.data(), kNaiveKeyChunk, stage, &p);
    for (std::int64_t i = 0; i < rows; ++i) {
      Acc* __restrict srow = s.data() + i * ld + j0;
      for (std::int64_t d = 0; d < D; ++d) {
        const Acc qd = q[i * Dp + d];
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
    const Acc mx = finish_scores(srow, Sk, 0, kr, scale, cap, slope, r0 + i + Sk - p.seqlen_q);
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
  std::vector<Acc> acc(rows * Dp, Acc(0));
  for (std::int64_t j0 = 0; j0 < Sk; j0 += kNaiveKeyChunk) {
    const std::int64_t nj = std::min(kNaiveKeyChunk, Sk - j0);
    load_rows<T, Acc>(p.v, b, hk, j0, nj, Sk, D, v.data(), Dp, &p);
    for (std::int64_t i = 0; i < rows; ++i) {
      Acc* __restrict arow = acc.data() + i * Dp;
      const Acc* prow = s.data() + i * ld + j0;
      const KeyRange kr = key_range(r0 + i, p);  // masked keys contribute nothing, whatever their values
      const std::int64_t j_lo = std::clamp<std::int64_t>(kr.lo - j0, 0, nj), j_hi = std::clamp<std::int64_t>(kr.hi - j0, j_lo, nj);
      for (std::int64_t j = j_lo; j < j_hi; ++j) {
        const Acc pj = prow[j];
        const Acc* __restrict vr = v.data() + j * Dp;
        for (std::int64_t d = 0; d < Dp; ++d) arow[d] += pj * vr[d];
      }
    }
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    store_row<T, Acc>(p, b, r0 + i, h, acc.data() + i * Dp, lsum[i]);
    store_lse(p, b, h, r0 + i, row_lse(mrow[i], lsum[i]));
  }
}

// flash2: the online softmax over key tiles.
template <typename T, typename Acc = double>
void flash2_task_f64(const AttnParams& p, std::int64_t b, std::int64_t h, std::int64_t r0, std::int64_t rows) {
  const std::int64_t D = p.head_dim, Sk = p.seqlen_k;
  const std::int64_t Dp = D;
  const std::int64_t hk = h / (p.heads_q / p.heads_kv);
  const Acc scale = static_cast<Acc>(p.scale), cap = static_cast<Acc>(p.softcap);
  const Acc slope = static_cast<Acc>(alibi_slope(p, b, h));
  std::vector<Acc> q(kBr * Dp), kt(Dp * kBc), v(kBc * Dp), s(kBr * kBc), o(kBr * Dp, Acc(0)), stage;
  std::vector<Acc> m(kBr, -INFINITY), l(kBr, Acc(0));
  load_rows<T, Acc>(p.q, b, h, r0, rows, r0 + rows, D, q.data(), Dp);

  const TileSpan tiles = row_block_key_tiles(r0, rows, p, kBc);
  for (std::int64_t j0 = tiles.begin * kBc; j0 < tiles.end * kBc; j0 += kBc) {
    const std::int64_t nj = std::min(kBc, Sk - j0);
    load_rows_t<T, Acc>(p.k, b, hk, j0, nj, Sk, D, Dp, kt.data(), kBc, stage, &p);
    load_rows<T, Acc>(p.v, b, hk, j0, nj, Sk, D, v.data(), Dp, &p);
    // S = Q K^T for the tile
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
      const Acc tile_max = finish_scores(srow, nj, j0, kr, scale, cap, slope, r0 + i + Sk - p.seqlen_q);
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
    // O += P V
    for (std::int64_t i = 0; i < rows; ++i) {
      Acc* __restrict orow = o.data() + i * Dp;
      const Acc* prow = s.data() + i * kBc;
      const KeyRange kr = key_range(r0 + i, p);  // masked keys contribute nothing, whatever their values
      const std::int64_t j_lo = std::clamp<std::int64_t>(kr.lo - j0, 0, nj), j_hi = std::clamp<std::int64_t>(kr.hi - j0, j_lo, nj);
      for (std::int64_t j = j_lo; j < j_hi; ++j) {
        const Acc pj = prow[j];
        const Acc* __restrict vr = v.data() + j * Dp;
        for (std::int64_t d = 0; d < Dp; ++d) orow[d] += pj * vr[d];
      }
    }
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    store_row<T, Acc>(p, b, r0 + i, h, o.data() + i * Dp, l[i]);
    store_lse(p, b, h, r0 + i, row_lse(m[i], l[i]));
  }
}

template <typename T>
void run_naive(const AttnParams& p, void* scratch, std::int64_t b, std::int64_t h, std::int64_t r0, std::int64_t rows) {
  if constexpr (std::is_same_v<T, double>) naive_task_f64<T>(p, b, h, r0, rows);
  else float_task<T>(p, static_cast<Scratch*>(scratch)->kv, b, h, r0, rows, /*naive=*/true);
}

// The products bfloat16 flash2 runs on in this unit: AMX's tiles in the AMX unit, the dot products
// elsewhere.
#if FP_ISA_AVX512AMX
using BF16Products = AmxProducts<HardwareTiles>;
#else
using BF16Products = DotProducts;
#endif

template <typename T>
void run_flash2(const AttnParams& p, void* scratch, std::int64_t b, std::int64_t h, std::int64_t r0, std::int64_t rows) {
  Scratch& s = *static_cast<Scratch*>(scratch);
  if constexpr (std::is_same_v<T, double>) flash2_task_f64<T>(p, b, h, r0, rows);
  else if constexpr (std::is_same_v<T, bf16_bits> && kBf16Dot) flash2_task_bf16<BF16Products>(p, s.packed, b, h, r0, rows);
  else float_task<T>(p, s.kv, b, h, r0, rows, /*naive=*/false);
}

#if FP_ISA_AVX512AMX
// The AMX unit is dispatched for bfloat16 only (cpu_dispatch.cpp); its naive is the float32 path's.
AttnTaskFn attention_task_fn(AttnImpl impl, DType dtype) {
  if (dtype != DType::BFloat16) return nullptr;
  return impl == AttnImpl::Naive ? &run_naive<bf16_bits> : &run_flash2<bf16_bits>;
}
#else
AttnTaskFn attention_task_fn(AttnImpl impl, DType dtype) {
  return FP_DTYPE_SWITCH_ALL(dtype, T, [&]() -> AttnTaskFn {
    return impl == AttnImpl::Naive ? &run_naive<T> : &run_flash2<T>;
  });
}
#endif

#if FP_ISA_AVX512BF16
// FLASHPARITY_AMX_EMULATE=1: bfloat16 flash2 on the AMX kernels with emulated tiles (cpu_dispatch.cpp
// hands this table out on CPUs with AVX-512 BF16); everything else as attention_task_fn.
void run_flash2_amx_emulated(const AttnParams& p, void* scratch, std::int64_t b, std::int64_t h, std::int64_t r0,
                             std::int64_t rows) {
  flash2_task_bf16<AmxProducts<EmulatedTiles>>(p, static_cast<Scratch*>(scratch)->packed, b, h, r0, rows);
}
AttnTaskFn amx_emulated_task_fn(AttnImpl impl, DType dtype) {
  if (dtype == DType::BFloat16 && impl == AttnImpl::Flash2) return &run_flash2_amx_emulated;
  return attention_task_fn(impl, dtype);
}
#endif

std::int64_t attention_rows_per_task(AttnImpl) { return kBr; }

}  // namespace
}  // namespace FP_ISA_NAMESPACE
}  // namespace flashparity
FP_ISA_END

namespace flashparity {
namespace FP_ISA_NAMESPACE {
extern const AttentionTable attention_table;  // (declared again in cpu_dispatch.cpp, its one user)
const AttentionTable attention_table = {&attention_task_fn, &attention_rows_per_task, &scratch_new, &scratch_free};
#if FP_ISA_AVX512BF16
extern const AttentionTable amx_emulated_attention_table;  // (FLASHPARITY_AMX_EMULATE=1)
const AttentionTable amx_emulated_attention_table = {&amx_emulated_task_fn, &attention_rows_per_task, &scratch_new,
                                                     &scratch_free};
#endif
}  // namespace FP_ISA_NAMESPACE
}  // namespace flashparity
