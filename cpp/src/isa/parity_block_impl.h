// The vectorized parity block kernel, written once with GCC vector extensions (8 float64 lanes) and
// compiled once per ISA (parity_block_{scalar,avx2,avx512,avx512icl}.cpp; isa_target.h says how).
// Every ISA adds the same terms to the same lanes in the same order, with the same roundings
// (-ffp-contract=off, FMAs where written): the results are bit-identical whichever level the CPU
// dispatches to. What differs between levels (one pass or three, float32 screens of 8 or 16 lanes,
// which blocks take an exact pass) only decides how much work is done, never a result.
//
// Included once by each of those units, after it defines FP_ISA and FP_ISA_NAMESPACE. Every header
// is included here, before the ISA region opens: what they define stays baseline code. The kernels
// sit in an anonymous namespace; the unit exports only its ParityTable.

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_acle.h>
#include <arm_neon.h>
#endif

#include "flashparity/dtype.h"
#include "flashparity/parity_stats.h"
#include "isa/isa_target.h"
#include "flashparity/cpu_features.h"
#include "isa/crc32_impl.h"  // (outside the target region: its inline code is baseline in every unit)
#include "cpu/parity_cpu.h"

#ifndef FP_ISA_NAMESPACE
#error "define FP_ISA_NAMESPACE before including parity_block_impl.h"
#endif

FP_ISA_BEGIN
namespace flashparity {
namespace FP_ISA_NAMESPACE {
namespace {

constexpr int W = 8;  // lanes
typedef double vd __attribute__((vector_size(64)));
typedef std::int64_t vl __attribute__((vector_size(64)));
typedef std::uint64_t vul __attribute__((vector_size(64)));
typedef float vf __attribute__((vector_size(32)));
typedef std::uint32_t vu32 __attribute__((vector_size(32)));
typedef std::int32_t vi32 __attribute__((vector_size(32)));
typedef std::uint16_t vu16 __attribute__((vector_size(16)));
typedef std::uint8_t vu8 __attribute__((vector_size(8)));
// Byte vectors for counting histogram bins: full zmm width only where AVX-512BW makes it cheap.
#if FP_ISA_AVX512
typedef std::uint8_t vbytes __attribute__((vector_size(64)));
#else
typedef std::uint8_t vbytes __attribute__((vector_size(32)));
#endif
constexpr int kByteLanes = sizeof(vbytes);

// Pairs of narrow formats (no float64 side) do their float32-domain work (the ratio and isclose
// screens, ULP distances, histogram codes) kNL lanes at a time: sixteen with AVX-512 (one zmm
// register, and the difference truncated by a subtraction with its own rounding mode instead of a
// float64 conversion), else eight. The float64 sums always take eight lanes at a time in index
// order, so every level adds the same terms to the same lanes in the same order.
#if FP_ISA_AVX512
#define FP_NARROW16 1
constexpr int kNL = 16;
#else
constexpr int kNL = 8;
#endif
// The vector part of a block is a multiple of kStep elements on every level (the rest is the
// scalar tail), so levels of different step widths reduce the same elements the same way.
constexpr int kStep = 16;
static_assert(kStep % kNL == 0 && kNL % W == 0, "steps must nest");
// Narrow pairs on AVX2 and NEON: the float64 sums and the float32 screens in separate passes
// (below). Not on the baseline, where float16 converts in software and two passes would convert
// twice; not with AVX-512, whose 32 registers hold one pass.
constexpr bool kSplitPasses = (FP_ISA_AVX2 && !FP_ISA_AVX512) || FP_ISA_NEON;

// float32, 32- and 16-bit vectors of N lanes
template <int N> struct Vec;
template <> struct Vec<8> {
  typedef vf f;
  typedef vu32 u32;
  typedef vu16 u16;
};
#if defined(FP_NARROW16)
typedef float vf16 __attribute__((vector_size(64)));
typedef std::uint32_t vu32x16 __attribute__((vector_size(64)));
typedef std::uint16_t vu16x16 __attribute__((vector_size(32)));
template <> struct Vec<16> {
  typedef vf16 f;
  typedef vu32x16 u32;
  typedef vu16x16 u16;
};
#endif
using vfn = Vec<kNL>::f;
using vun = Vec<kNL>::u32;

template <typename V, typename S>
FP_INLINE V load(const S* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename To, typename From>
FP_INLINE To bitcast(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "bitcast size mismatch");
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}

// Lane-wise max of 64-byte double vectors: GCC lowers `a > b ? a : b` on them to scalar code
// without AVX-512, so below AVX-512 it goes through bit selects.
FP_INLINE vd vmaxd(vd a, vd b);

// Lane select with bit operations: GCC lowers `m ? x : y` on 64-byte vectors poorly without AVX-512.
FP_INLINE vd vsel(vl m, vd x, vd y) { return bitcast<vd>((bitcast<vl>(x) & m) | (bitcast<vl>(y) & ~m)); }
FP_INLINE vl vsel(vl m, vl x, vl y) { return (x & m) | (y & ~m); }
FP_INLINE vul vsel(vl m, vul x, vul y) { return (x & bitcast<vul>(m)) | (y & ~bitcast<vul>(m)); }

// The two 4-lane halves of eight float64 lanes and back: shuffles, which GCC keeps in registers
// (a memcpy into a struct of two halves went through the stack below AVX-512).
typedef double vd4 __attribute__((vector_size(32)));
FP_INLINE vd4 lo_half(vd x) { return __builtin_shufflevector(x, x, 0, 1, 2, 3); }
FP_INLINE vd4 hi_half(vd x) { return __builtin_shufflevector(x, x, 4, 5, 6, 7); }
FP_INLINE vd join(vd4 lo, vd4 hi) { return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7); }

// float32 lanes -> float64 lanes (exact). GCC splits the generic conversion into halves.
FP_INLINE vd widen(vf x) {
#if FP_ISA_AVX512
  return bitcast<vd>(_mm512_cvtps_pd(bitcast<__m256>(x)));
#else
  return __builtin_convertvector(x, vd);
#endif
}

#if FP_ISA_NEON
// Eight lanes as two NEON registers and back (four for float64): a bitcast to and from the
// intrinsics' register tuples, which GCC keeps in registers (shuffles into 16-byte halves it
// lowered lane by lane, a move per lane).
FP_INLINE float32x4_t lo4(vf x) { return bitcast<float32x4x2_t>(x).val[0]; }
FP_INLINE float32x4_t hi4(vf x) { return bitcast<float32x4x2_t>(x).val[1]; }
FP_INLINE vf join4(float32x4_t lo, float32x4_t hi) { return bitcast<vf>(float32x4x2_t{{lo, hi}}); }
template <int Q>
FP_INLINE float64x2_t quarter(vd x) { return bitcast<float64x2x4_t>(x).val[Q]; }
FP_INLINE vd join2(float64x2_t a, float64x2_t b, float64x2_t c, float64x2_t d) {
  return bitcast<vd>(float64x2x4_t{{a, b, c, d}});
}
#endif

// IEEE half <-> float32 lanes: F16C or NEON's FCVTL/FCVTN where present (GCC scalarizes the
// generic _Float16 vector conversions), else the exact scalar conversions of dtype.h. (All three
// round to nearest even, exactly as the scalar conversion does.)
FP_INLINE vf half_to_f32(vu16 h) {
#if FP_ISA_AVX2
  return bitcast<vf>(_mm256_cvtph_ps(bitcast<__m128i>(h)));
#elif FP_ISA_NEON
  const float16x8_t x = bitcast<float16x8_t>(h);
  return join4(vcvt_f32_f16(vget_low_f16(x)), vcvt_high_f32_f16(x));
#else
  vf r;
  for (int j = 0; j < W; ++j) r[j] = half_to_float(h[j]);
  return r;
#endif
}

FP_INLINE vu16 f32_to_half(vf x) {  // round to nearest even
#if FP_ISA_AVX2
  return bitcast<vu16>(_mm256_cvtps_ph(bitcast<__m256>(x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif FP_ISA_NEON
  return bitcast<vu16>(vcvt_high_f16_f32(vcvt_f16_f32(lo4(x)), hi4(x)));
#else
  vu16 r;
  for (int j = 0; j < W; ++j) r[j] = round_to_half_bits(static_cast<double>(x[j]));
  return r;
#endif
}

#if defined(FP_NARROW16)
FP_INLINE vf16 half_to_f32(vu16x16 h) { return bitcast<vf16>(_mm512_cvtph_ps(bitcast<__m256i>(h))); }
FP_INLINE vu16x16 f32_to_half(vf16 x) {
  return bitcast<vu16x16>(_mm512_cvtps_ph(bitcast<__m512>(x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#endif

// f32_to_half without making a denormal: a float32 of magnitude below 2^-14 rounds to a subnormal
// half, which the conversion instruction makes (an underflow, and on Intel cores an assist for every
// instruction with such a lane). Those lanes, rare in ordinary data (|x| ~ N(0,1): one in 20,000),
// are rounded on the bit pattern instead: the half's bits are round(|x| 2^24), to nearest even,
// and the instruction sees 1.0 there. Zeros convert exactly and stay on the fast path. Same bits as
// f32_to_half for every input. (The x86 baseline's f32_to_half rounds in float64, where nothing is
// denormal: it is used as it is.)
template <typename VU>
FP_INLINE bool any_nonzero(VU v) {  // whether a lane is nonzero: 32-bit lanes, 8 or 16 of them
#if FP_ISA_AVX512
  if constexpr (sizeof(VU) == 64) return _mm512_test_epi32_mask(bitcast<__m512i>(v), bitcast<__m512i>(v)) != 0;
#endif
#if FP_ISA_AVX2
  if constexpr (sizeof(VU) == 32) return !_mm256_testz_si256(bitcast<__m256i>(v), bitcast<__m256i>(v));
#elif FP_ISA_NEON
  if constexpr (sizeof(VU) == 32) {
    const uint32x4x2_t h = bitcast<uint32x4x2_t>(v);
    return vmaxvq_u32(vorrq_u32(h.val[0], h.val[1])) != 0;
  }
#endif
  bool any = false;
  for (int j = 0; j < static_cast<int>(sizeof(VU) / 4); ++j) any |= v[j] != 0;
  return any;
}

template <int N>
FP_INLINE typename Vec<N>::u16 f32_to_half_normal(typename Vec<N>::f x) {
  typedef typename Vec<N>::u32 VU;
  typedef typename Vec<N>::u16 VU16;
  if constexpr (!(FP_ISA_AVX2 || FP_ISA_NEON)) return f32_to_half(x);
  const VU u = bitcast<VU>(x), mag = u & 0x7fffffffu;
  // 0 < |x| < 2^-14 (all ones): zero wraps to 2^32 - 1; NaN and inf are above
  const VU small = static_cast<VU>(mag - 1u < 0x387fffffu);
  if (__builtin_expect(!any_nonzero(small), 1)) return f32_to_half(x);
  const VU16 h = f32_to_half(bitcast<typename Vec<N>::f>((u & ~small) | (0x3f800000u & small)));
  // |x| = M 2^(E - 150) (E the biased exponent, M the significand with its hidden bit; a float32
  // denormal has E = 0 and the scale of E = 1), so |x| 2^24 = M 2^-s with s = 126 - max(E, 1) >= 14;
  // s past 25 leaves 0 (M < 2^24), as a shift of 31 does
  const VU e = mag >> 23;
  const VU m = (mag & 0x7fffffu) | (static_cast<VU>(e != 0) & 0x800000u);
  VU sh = 126u - (e != 0 ? e : VU{} + 1u);
  sh = sh > 31u ? VU{} + 31u : sh;
  const VU q = m >> sh, rem = m & (((VU{} + 1u) << sh) - 1u), halfway = (VU{} + 1u) << (sh - 1u);
  const VU up = static_cast<VU>((rem > halfway) | ((rem == halfway) & ((q & 1u) != 0))) & 1u;
  const VU sub = ((u >> 16) & 0x8000u) | (q + up);
  return static_cast<VU16>(__builtin_convertvector(small, VU16) != 0 ? __builtin_convertvector(sub, VU16) : h);
}

// |a-b| in float32 rounded toward zero where AVX-512 offers it (one instruction). Truncation keeps
// the binary exponent of every value in float32's normal range, so the histogram bin can be read
// off it; the ratio screen's error bound holds for either rounding.
#if FP_ISA_AVX512
constexpr bool kTruncF32 = true;
FP_INLINE vf trunc_f32(vd x) {
  return bitcast<vf>(_mm512_cvt_roundpd_ps(bitcast<__m512d>(x), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
}
#else
constexpr bool kTruncF32 = false;
#endif

FP_INLINE vf narrow_f32(vd x) {
#if FP_ISA_AVX512
  return bitcast<vf>(_mm512_cvtpd_ps(bitcast<__m512d>(x)));
#else
  return __builtin_convertvector(x, vf);
#endif
}

#if !FP_ISA_AVX512
FP_INLINE vf trunc_f32(vd x) { return narrow_f32(x); }  // never called: kTruncF32 is false here
#endif

// No constant and no per-call threshold of the float32 screens is a denormal number: an Intel core
// takes a microcode assist (~100 cycles) for every instruction that reads or makes one, and a
// denormal constant is read by every iteration (issue 28: 6.5x slower on an Emerald Rapids Xeon).
// The isclose screen's margins are FLT_MIN where its analysis needs less, and a threshold below
// FLT_MIN moves to 0 or FLT_MIN, whichever way keeps its screen conservative (decides fewer lanes,
// never a wrong one); the ratio screen needs no margin (below). Data of the usual scales (|b| above
// about 2^-100) then never makes a denormal either: the bounds are FLT_MIN away from 0 or scale |b|
// by a threshold; a smaller |b| can (thr * |b| or rtol * |b| below FLT_MIN), and so can float64
// differences below 2^-126 narrowed to float32 for the histogram (AVX-512 suppresses their flags).
constexpr float kFltMin = 0x1p-126f;

// The ratio screen's bound lim = fl(thr32 * |b|), one rounding (thr32 = thr * (1 - 2^-16), 0 when
// that is below FLT_MIN): a nonzero lane is flagged when ad32 >= lim (any_reaches). An unflagged lane
// has |a-b| < thr * |b| exactly, so its ratio cannot beat the running maximum thr:
//   lim < 2^-125, where every float32 is a multiple of 2^-149 (the spacing of the subnormals and of
//     the lowest normal binade): ad32 < lim gives ad32 <= lim - 2^-149 < thr32 |b| (lim rounded by
//     at most 2^-150), and the difference, below 2^-125, is exact in float32 (ad32 = |a-b|);
//   lim >= 2^-125: the product's relative rounding (2^-24) and the difference's (< 2^-23) are
//     absorbed by the 2^-16 slack.
// Genuine denormal inputs are screened as tightly as normal ones (a margin would flag every lane
// of a tiny b). A difference past 1e38 could exceed a bound near FLT_MAX while truncating below it
// (or to FLT_MAX under a bound of +inf): the caller sends such a block to the exact pass whatever
// the flags say.

// Lanes where ad32 > max(lim, 0), for ad32 >= 0, so a zero difference never counts. AVX-512 masks
// the compare with the nonzero lanes (`nz`, shared with the histogram) instead of clamping lim: one
// instruction fewer. LaneMask: a bit mask there, else all-ones lanes.
#if FP_ISA_AVX512
typedef __mmask8 LaneMask;
FP_INLINE LaneMask nonzero_lanes(vu32 u) { return _mm256_test_epi32_mask(bitcast<__m256i>(u), bitcast<__m256i>(u)); }
FP_INLINE LaneMask above_clamped(vf ad32, vf lim, LaneMask nz) {
  return _mm256_mask_cmp_ps_mask(nz, bitcast<__m256>(ad32), bitcast<__m256>(lim), _CMP_GT_OQ);
}
FP_INLINE LaneMask reaches(vf ad32, vf lim, LaneMask nz) {  // nonzero lanes with ad32 >= lim
  return _mm256_mask_cmp_ps_mask(nz, bitcast<__m256>(ad32), bitcast<__m256>(lim), _CMP_GE_OQ);
}
FP_INLINE bool any_lane(LaneMask m) { return m != 0; }
#if defined(FP_NARROW16)
FP_INLINE __mmask16 nonzero_lanes(vu32x16 u) { return _mm512_test_epi32_mask(bitcast<__m512i>(u), bitcast<__m512i>(u)); }
FP_INLINE __mmask16 above_clamped(vf16 ad32, vf16 lim, __mmask16 nz) {
  return _mm512_mask_cmp_ps_mask(nz, bitcast<__m512>(ad32), bitcast<__m512>(lim), _CMP_GT_OQ);
}
FP_INLINE __mmask16 reaches(vf16 ad32, vf16 lim, __mmask16 nz) {
  return _mm512_mask_cmp_ps_mask(nz, bitcast<__m512>(ad32), bitcast<__m512>(lim), _CMP_GE_OQ);
}
FP_INLINE bool any_lane(__mmask16 m) { return m != 0; }
#endif
#elif FP_ISA_NEON
// NEON: each half compared by its instruction (GCC lowers the generic comparisons of 32-byte vectors
// lane by lane on aarch64: a scalar compare, a conditional set and an insertion for each lane)
typedef vi32 LaneMask;
template <typename F>
FP_INLINE LaneMask halves(vf x, vf y, F f) {
  return bitcast<LaneMask>(join4(vreinterpretq_f32_u32(f(lo4(x), lo4(y))), vreinterpretq_f32_u32(f(hi4(x), hi4(y)))));
}
FP_INLINE LaneMask nonzero_lanes(vu32 u) {
  const vf x = bitcast<vf>(u);
  return halves(x, x, [](float32x4_t p, float32x4_t) {
    return vtstq_u32(vreinterpretq_u32_f32(p), vreinterpretq_u32_f32(p));
  });
}
FP_INLINE LaneMask above_clamped(vf ad32, vf lim, LaneMask) {  // max(lim, +0): FMAX orders -0 below +0
  return halves(ad32, lim, [](float32x4_t d, float32x4_t l) { return vcgtq_f32(d, vmaxq_f32(l, vdupq_n_f32(0.0f))); });
}
FP_INLINE LaneMask reaches(vf ad32, vf lim, LaneMask nz) {
  return halves(ad32, lim, [](float32x4_t d, float32x4_t l) { return vcgeq_f32(d, l); }) & nz;
}
FP_INLINE bool any_lane(LaneMask m) { return any_nonzero(bitcast<vu32>(m)); }
#else
typedef vi32 LaneMask;
FP_INLINE LaneMask nonzero_lanes(vu32 u) { return u != 0; }
FP_INLINE LaneMask above_clamped(vf ad32, vf lim, LaneMask) {
#if FP_ISA_AVX2
  // max(lim, +0): vmaxps gives its second operand for lim = -0 (no NaN here), one instruction
  return ad32 > bitcast<vf>(_mm256_max_ps(bitcast<__m256>(lim), _mm256_setzero_ps()));
#else
  return ad32 > (lim > 0.0f ? lim : vf{});
#endif
}
FP_INLINE LaneMask reaches(vf ad32, vf lim, LaneMask nz) { return (ad32 >= lim) & nz; }
FP_INLINE bool any_lane(LaneMask m) { return any_nonzero(bitcast<vu32>(m)); }
#endif

// Whether a nonzero lane has ad32 >= lim. With AVX2, on the bit patterns (for values >= 0 they
// order as the values do, +inf included): ad32 >= max(lim, smallest nonzero) holds for no lane when
// max(lim bits, 1) > ad32 bits in all eight, two instructions before the movemask where the float
// compare, the nonzero test and their conjunction took four. lim is never NaN where the flags are
// read: thr32 = +inf (a running maximum of +inf) makes inf * 0 there, but such a block is settled
// and its flags are not read.
template <typename VF, typename M>
FP_INLINE bool any_reaches(VF ad32, VF lim, M nz) {
#if FP_ISA_AVX2 && !FP_ISA_AVX512
  (void)nz;
  const __m256i floor = _mm256_max_epi32(bitcast<__m256i>(lim), _mm256_set1_epi32(1));
  return _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(floor, bitcast<__m256i>(ad32)))) != 0xff;
#else
  return any_lane(reaches(ad32, lim, nz));
#endif
}

// Comparisons of eight float64 lanes as all-ones lane masks. Below AVX-512 GCC lowers the generic
// comparison of 64-byte vectors to eight scalar compares and branches (a bfloat16 pair's exact
// maximum pass ran at 4 ns an element); AVX2 compares the two halves.
#if FP_ISA_AVX2 && !FP_ISA_AVX512
template <int kPredicate>
FP_INLINE vl vcmp(vd a, vd b) {
  auto c = [](vd4 x, vd4 y) { return bitcast<vd4>(_mm256_cmp_pd(bitcast<__m256d>(x), bitcast<__m256d>(y), kPredicate)); };
  return bitcast<vl>(join(c(lo_half(a), lo_half(b)), c(hi_half(a), hi_half(b))));
}
FP_INLINE vl vgt(vd a, vd b) { return vcmp<_CMP_GT_OQ>(a, b); }
FP_INLINE vl veq(vd a, vd b) { return vcmp<_CMP_EQ_OQ>(a, b); }
#elif FP_ISA_NEON
template <typename F>
FP_INLINE vl vcmp(vd a, vd b, F f) {
  auto q = [](uint64x2_t m) { return vreinterpretq_f64_u64(m); };
  return bitcast<vl>(join2(q(f(quarter<0>(a), quarter<0>(b))), q(f(quarter<1>(a), quarter<1>(b))),
                           q(f(quarter<2>(a), quarter<2>(b))), q(f(quarter<3>(a), quarter<3>(b)))));
}
FP_INLINE vl vgt(vd a, vd b) { return vcmp(a, b, [](float64x2_t x, float64x2_t y) { return vcgtq_f64(x, y); }); }
FP_INLINE vl veq(vd a, vd b) { return vcmp(a, b, [](float64x2_t x, float64x2_t y) { return vceqq_f64(x, y); }); }
#else
FP_INLINE vl vgt(vd a, vd b) { return a > b; }
FP_INLINE vl veq(vd a, vd b) { return a == b; }
#endif

// x * y + z with one rounding on every ISA (hardware FMA, or std::fma lane by lane on the baseline),
// so every level gives the same bits. Used for the sums of products.
FP_INLINE vd vfma(vd x, vd y, vd z) {
#if FP_ISA_AVX512
  return bitcast<vd>(_mm512_fmadd_pd(bitcast<__m512d>(x), bitcast<__m512d>(y), bitcast<__m512d>(z)));
#elif FP_ISA_AVX2
  auto f = [](vd4 a, vd4 b, vd4 c) {
    return bitcast<vd4>(_mm256_fmadd_pd(bitcast<__m256d>(a), bitcast<__m256d>(b), bitcast<__m256d>(c)));
  };
  return join(f(lo_half(x), lo_half(y), lo_half(z)), f(hi_half(x), hi_half(y), hi_half(z)));
#elif FP_ISA_NEON
  return join2(vfmaq_f64(quarter<0>(z), quarter<0>(x), quarter<0>(y)), vfmaq_f64(quarter<1>(z), quarter<1>(x), quarter<1>(y)),
               vfmaq_f64(quarter<2>(z), quarter<2>(x), quarter<2>(y)), vfmaq_f64(quarter<3>(z), quarter<3>(x), quarter<3>(y)));
#else
  vd r;
  for (int j = 0; j < W; ++j) r[j] = std::fma(x[j], y[j], z[j]);
  return r;
#endif
}

FP_INLINE vd vmaxd(vd a, vd b) {  // a > b ? a : b for non-NaN lanes (NaN blocks take the exact path)
#if FP_ISA_AVX512
  return bitcast<vd>(_mm512_max_pd(bitcast<__m512d>(b), bitcast<__m512d>(a)));
#elif FP_ISA_AVX2
  auto m = [](vd4 x, vd4 y) { return bitcast<vd4>(_mm256_max_pd(bitcast<__m256d>(y), bitcast<__m256d>(x))); };
  return join(m(lo_half(a), lo_half(b)), m(hi_half(a), hi_half(b)));  // a unless b > a
#else
  return vsel(vgt(a, b), a, b);
#endif
}

// a - b (eight float64 lanes) into p[0, 8), by register: GCC moved a 64-byte generic vector through
// the stack below AVX-512 on its way to memory.
FP_INLINE void store_diff8(double* p, vd a, vd b) {
#if FP_ISA_AVX2 && !FP_ISA_AVX512
  _mm256_storeu_pd(p, bitcast<__m256d>(lo_half(a) - lo_half(b)));
  _mm256_storeu_pd(p + 4, bitcast<__m256d>(hi_half(a) - hi_half(b)));
#elif FP_ISA_NEON
  vst1q_f64(p, vsubq_f64(quarter<0>(a), quarter<0>(b)));
  vst1q_f64(p + 2, vsubq_f64(quarter<1>(a), quarter<1>(b)));
  vst1q_f64(p + 4, vsubq_f64(quarter<2>(a), quarter<2>(b)));
  vst1q_f64(p + 6, vsubq_f64(quarter<3>(a), quarter<3>(b)));
#else
  static_assert(!kSplitPasses, "only the split passes keep the differences");
  (void)p, (void)a, (void)b;
#endif
}

// Loop-carried float64 accumulators of eight lanes. With AVX-512 one zmm register; below it, two
// explicit 4-lane halves: GCC keeps a loop-carried 64-byte vector in memory there (moved through
// general registers every iteration). Same lanes, same operations, so results stay identical.
#if FP_ISA_AVX512
struct Acc8 {
  vd v = {};
  FP_INLINE void add(vd x) { v += x; }
  FP_INLINE void fma(vd x, vd y) { v = vfma(x, y, v); }
  FP_INLINE void fma_exact(vd x, vd y) { fma(x, y); }
  FP_INLINE void max(vd x) { v = vmaxd(x, v); }
  FP_INLINE double lane(int j) const { return v[j]; }
};
#elif FP_ISA_NEON
// NEON: four 2-lane registers of the intrinsics' type, named (GCC kept 32-byte generic halves in
// memory, and an array indexed at run time too: a store of every accumulator each iteration)
struct Acc8 {
  float64x2_t q0 = vdupq_n_f64(0.0), q1 = q0, q2 = q0, q3 = q0;
  template <typename F>
  FP_INLINE void each(vd x, F f) {
    q0 = f(q0, quarter<0>(x));
    q1 = f(q1, quarter<1>(x));
    q2 = f(q2, quarter<2>(x));
    q3 = f(q3, quarter<3>(x));
  }
  FP_INLINE void add(vd x) {
    each(x, [](float64x2_t s, float64x2_t v) { return vaddq_f64(s, v); });
  }
  FP_INLINE void fma(vd x, vd y) {
    q0 = vfmaq_f64(q0, quarter<0>(x), quarter<0>(y));
    q1 = vfmaq_f64(q1, quarter<1>(x), quarter<1>(y));
    q2 = vfmaq_f64(q2, quarter<2>(x), quarter<2>(y));
    q3 = vfmaq_f64(q3, quarter<3>(x), quarter<3>(y));
  }
  FP_INLINE void fma_exact(vd x, vd y) { fma(x, y); }
  FP_INLINE void max(vd x) {  // vmaxd(x, acc): x > acc ? x : acc
    each(x, [](float64x2_t s, float64x2_t v) { return vbslq_f64(vcgtq_f64(v, s), v, s); });
  }
  FP_INLINE double lane(int j) const {
    const vd all = join2(q0, q1, q2, q3);
    return all[j];
  }
};
#else
struct Acc8 {
  vd4 lo = {}, hi = {};
  FP_INLINE void add(vd x) {
    lo += lo_half(x);
    hi += hi_half(x);
  }
  FP_INLINE void fma(vd x, vd y) {
    const vd r = vfma(x, y, join(lo, hi));
    lo = lo_half(r);
    hi = hi_half(r);
  }
  // fma for an exact product x * y (values from formats up to float32): the same bits as the fused
  // multiply-add, which the x86 baseline computes in software (std::fma, ~10x the cost)
  FP_INLINE void fma_exact(vd x, vd y) {
#if FP_ISA_AVX2
    fma(x, y);
#else
    add(x * y);
#endif
  }
  FP_INLINE void max(vd x) {
    const vd r = vmaxd(x, join(lo, hi));
    lo = lo_half(r);
    hi = hi_half(r);
  }
  FP_INLINE double lane(int j) const { return j < 4 ? lo[j] : hi[j - 4]; }
};
#endif

// 16-bit lanes -> 32-bit lanes, zero-extended (AVX2: one instruction; GCC's generic conversion
// takes four).
FP_INLINE vu32 widen_u32(vu16 x) {
#if FP_ISA_AVX2
  return bitcast<vu32>(_mm256_cvtepu16_epi32(bitcast<__m128i>(x)));
#else
  return __builtin_convertvector(x, vu32);
#endif
}
#if defined(FP_NARROW16)
FP_INLINE vu32x16 widen_u32(vu16x16 x) { return bitcast<vu32x16>(_mm512_cvtepu16_epi32(bitcast<__m256i>(x))); }
#endif

// Eight elements as float64 (exact), N elements as float32 (exact for every format but float64),
// and eight raw bit patterns.
template <typename T> struct Lanes;

template <> struct Lanes<double> {
  static FP_INLINE vd value(const double* p) { return load<vd>(p); }
  static FP_INLINE vul bits(const double* p) { return load<vul>(p); }
};
template <> struct Lanes<float> {
  template <int N = W>
  static FP_INLINE typename Vec<N>::f value32(const float* p) { return load<typename Vec<N>::f>(p); }
  static FP_INLINE vd value(const float* p) {
#if FP_ISA_AVX2 && !FP_ISA_AVX512
    // each half converted from memory (one instruction each: GCC loaded all eight, then converted
    // the low half from memory again and extracted the high one: four)
    auto half = [](const float* q) { return bitcast<vd4>(_mm256_cvtps_pd(_mm_loadu_ps(q))); };
    return join(half(p), half(p + 4));
#else
    return widen(value32(p));
#endif
  }
  static FP_INLINE vul bits(const float* p) { return __builtin_convertvector(load<vu32>(p), vul); }
};
template <> struct Lanes<half_bits> {
  template <int N = W>
  static FP_INLINE typename Vec<N>::f value32(const half_bits* p) { return half_to_f32(load<typename Vec<N>::u16>(p)); }
  static FP_INLINE vd value(const half_bits* p) { return widen(value32(p)); }
  static FP_INLINE vul bits(const half_bits* p) { return __builtin_convertvector(load<vu16>(p), vul); }
};
template <> struct Lanes<bf16_bits> {
  template <int N = W>
  static FP_INLINE typename Vec<N>::f value32(const bf16_bits* p) {
    return bitcast<typename Vec<N>::f>(widen_u32(load<typename Vec<N>::u16>(p)) << 16);
  }
  static FP_INLINE vd value(const bf16_bits* p) { return widen(value32(p)); }
  static FP_INLINE vul bits(const bf16_bits* p) { return __builtin_convertvector(load<vu16>(p), vul); }
};

// Lanes [8h, 8h + 8) of a float32 vector.
template <int H, typename V>
FP_INLINE vf eight_lanes(V x) {
  if constexpr (sizeof(V) == sizeof(vf)) {
    static_assert(H == 0, "one group of eight");
    return x;
  } else {
    return __builtin_shufflevector(x, x, 8 * H, 8 * H + 1, 8 * H + 2, 8 * H + 3, 8 * H + 4, 8 * H + 5, 8 * H + 6,
                                   8 * H + 7);
  }
}

// The eight elements p[8H, 8H + 8) as float64, given p[0, kNL) as float32 lanes x32: float32 inputs
// are loaded again (a load and a conversion in one instruction), narrower ones taken from x32.
template <int H, typename T>
FP_INLINE vd value8(const T* p, vfn x32) {
  if constexpr (std::is_same_v<T, float>) {
    return Lanes<float>::value(p + W * H);
  } else {
    return widen(eight_lanes<H>(x32));
  }
}

// |a - b| of float32 lanes holding narrow formats, rounded toward zero where AVX-512 gives the
// subtraction its own rounding mode (the same value as truncating the exact float64 difference), to
// nearest otherwise (the same value as rounding it).
FP_INLINE vf abs_diff32(vf a, vf b) { return bitcast<vf>(bitcast<vu32>(a - b) & 0x7fffffffu); }
#if defined(FP_NARROW16)
FP_INLINE vf16 abs_diff32(vf16 a, vf16 b) {
  const __m512 d = _mm512_sub_round_ps(bitcast<__m512>(a), bitcast<__m512>(b), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  return bitcast<vf16>(bitcast<vu32x16>(d) & 0x7fffffffu);
}
#endif

// Ordered integers of sign-magnitude patterns `u` of width `w` bits (the magnitude, negated for a
// set sign bit), so that their distance counts the representable values between (ulp_distance_of).
FP_INLINE vl ordered_lanes(vul u, int w) {
  const vul sign = (u >> (w - 1)) & 1u;
  const vl mag = bitcast<vl>(u & ((std::uint64_t{1} << (w - 1)) - 1));
  return vsel(bitcast<vl>(sign != 0), -mag, mag);
}

FP_INLINE vd vabs(vd x) { return bitcast<vd>(bitcast<vl>(x) & 0x7fffffffffffffffLL); }

// Distance between the ordered integers of two sign-magnitude patterns (finite values, so the
// distance fits the lane): the difference of the magnitudes for equal signs, their sum for opposite
// signs (so +0 and -0 are 0 apart). 16-bit formats stay in 16-bit lanes, float32 in 32-bit lanes.
// `same`, with ma + mb in the lanes where the sign bits of ua and ub differ. The 16-lane forms
// (narrow pairs on AVX-512) are one masked add; GCC's generic select adds everywhere, then blends.
template <typename VU>
FP_INLINE VU add_where_signs_differ(VU same, VU ua, VU ub, VU ma, VU mb) {
  typedef std::remove_reference_t<decltype(ua[0])> S;
  constexpr S kSign = static_cast<S>(S{1} << (8 * sizeof(S) - 1));
  return ((ua ^ ub) & kSign) != 0 ? static_cast<VU>(ma + mb) : same;
}
#if defined(FP_NARROW16)
FP_INLINE vu32x16 add_where_signs_differ(vu32x16 same, vu32x16 ua, vu32x16 ub, vu32x16 ma, vu32x16 mb) {
  const __mmask16 m = _mm512_test_epi32_mask(bitcast<__m512i>(ua ^ ub), _mm512_set1_epi32(INT32_MIN));
  return bitcast<vu32x16>(_mm512_mask_add_epi32(bitcast<__m512i>(same), m, bitcast<__m512i>(ma), bitcast<__m512i>(mb)));
}
FP_INLINE vu16x16 add_where_signs_differ(vu16x16 same, vu16x16 ua, vu16x16 ub, vu16x16 ma, vu16x16 mb) {
  const __mmask16 m = _mm256_test_epi16_mask(bitcast<__m256i>(ua ^ ub), _mm256_set1_epi16(INT16_MIN));
  return bitcast<vu16x16>(_mm256_mask_add_epi16(bitcast<__m256i>(same), m, bitcast<__m256i>(ma), bitcast<__m256i>(mb)));
}
#endif

#if FP_ISA_NEON
// Eight 32-bit lanes on NEON by halves: |ma - mb| is one absolute difference, the sign test one
// compare (GCC's generic forms went lane by lane).
FP_INLINE vu32 ulp_distance(vu32 ua, vu32 ub) {
  auto half = [](uint32x4_t x, uint32x4_t y) {
    const uint32x4_t mag = vdupq_n_u32(0x7fffffffu);
    const uint32x4_t mx = vandq_u32(x, mag), my = vandq_u32(y, mag);
    const uint32x4_t differ = vcltzq_s32(vreinterpretq_s32_u32(veorq_u32(x, y)));
    return vbslq_u32(differ, vaddq_u32(mx, my), vabdq_u32(mx, my));
  };
  const uint32x4x2_t x = bitcast<uint32x4x2_t>(ua), y = bitcast<uint32x4x2_t>(ub);
  return bitcast<vu32>(uint32x4x2_t{{half(x.val[0], y.val[0]), half(x.val[1], y.val[1])}});
}
#endif

template <typename VU>
FP_INLINE VU ulp_distance(VU ua, VU ub) {
  typedef std::remove_reference_t<decltype(ua[0])> S;  // std::uint32_t or std::uint16_t
  typedef std::make_signed_t<S> SS;
  typedef SS VS __attribute__((vector_size(sizeof(VU))));
  constexpr S kMag = static_cast<S>(static_cast<S>(~S{0}) >> 1);
  const VU ma = ua & kMag, mb = ub & kMag;
  const VS t = bitcast<VS>(static_cast<VU>(ma - mb));  // |t| < 2^(bits - 1)
  const VU same = bitcast<VU>(static_cast<VS>(t < 0 ? -t : t));
  return add_where_signs_differ(same, ua, ub, ma, mb);
}

// Eight 32-bit lanes holding values below 2^16 as 16-bit lanes (AVX2: a pack; GCC's generic
// conversion takes several shuffles there).
FP_INLINE vu16 narrow_u16(vu32 x) {
#if FP_ISA_AVX512
  return bitcast<vu16>(_mm256_cvtepi32_epi16(bitcast<__m256i>(x)));
#elif FP_ISA_AVX2
  const __m256i p = _mm256_packus_epi32(bitcast<__m256i>(x), bitcast<__m256i>(x));  // per 128-bit half
  return bitcast<vu16>(_mm256_castsi256_si128(_mm256_permute4x64_epi64(p, 0x08)));
#else
  return __builtin_convertvector(x, vu16);
#endif
}
#if defined(FP_NARROW16)
FP_INLINE vu16x16 narrow_u16(vu32x16 x) { return bitcast<vu16x16>(_mm512_cvtepi32_epi16(bitcast<__m512i>(x))); }
#endif

// Bit patterns of N finite elements of T rounded to `Narrow` (float32: 32-bit lanes; 16-bit
// formats: 16-bit lanes). `v`: the elements as float64, used (N = 8) to round float64 to float32.
template <typename Narrow, int N = W>
using NarrowBits = std::conditional_t<sizeof(Narrow) == 4, typename Vec<N>::u32, typename Vec<N>::u16>;

template <typename T, typename Narrow, int N = W>
FP_INLINE NarrowBits<Narrow, N> narrow_bits(const T* p, vd v) {
  constexpr DType own = DTypeOf<T>::value, narrow = DTypeOf<Narrow>::value;
  typedef typename Vec<N>::u32 VU32;
  if constexpr (own == narrow && own == DType::Float32) {
    return load<VU32>(p);
  } else if constexpr (own == narrow) {  // 16-bit formats
    return load<typename Vec<N>::u16>(p);
  } else if constexpr (own == DType::Float64 && narrow == DType::Float32) {
    static_assert(N == W, "float64 lanes come eight at a time");
    return bitcast<vu32>(narrow_f32(v));  // one rounding, to nearest even
  } else if constexpr (own == DType::Float32 && narrow == DType::Float16) {
    return f32_to_half_normal<N>(load<typename Vec<N>::f>(p));  // one rounding, to nearest even
  } else if constexpr (own == DType::Float32 && narrow == DType::BFloat16) {
    const VU32 u = load<VU32>(p);  // finite: round to nearest even on the bit pattern
    return narrow_u16(static_cast<VU32>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16));
  } else {  // rare pairs (float64 vs 16-bit formats, float16 vs bfloat16): exact scalar rounding
    static_assert(sizeof(Narrow) == 2, "every other pair is handled above");
    (void)v;
    NarrowBits<Narrow, N> o;
    for (int j = 0; j < N; ++j) {
      o[j] = static_cast<std::uint16_t>(narrow_bits_in(narrow, own, raw_bits(p[j]), to_f64(p[j])));
    }
    return o;
  }
}

// Histogram byte codes of eight truncated differences (bit patterns u, nonzero lanes nz): the
// exponent field, or 255 for zero (AVX-512: a masked shift over a constant).
FP_INLINE vu8 exponent_codes(vu32 u, LaneMask nz) {
#if FP_ISA_AVX512
  const __m256i v = bitcast<__m256i>(u);
  const __m128i codes = _mm256_cvtepi32_epi8(_mm256_mask_srli_epi32(_mm256_set1_epi32(0xff), nz, v, 23));
  return bitcast<vu8>(_mm_cvtsi128_si64(codes));  // the low eight bytes
#else
  return __builtin_convertvector(nz != 0 ? u >> 23 : vu32{} + 0xffu, vu8);
#endif
}
#if defined(FP_NARROW16)
FP_INLINE __m128i exponent_codes(vu32x16 u, __mmask16 nz) {
  const __m512i v = bitcast<__m512i>(u);
  return _mm512_cvtepi32_epi8(_mm512_mask_srli_epi32(_mm512_set1_epi32(0xff), nz, v, 23));  // sixteen bytes
}
#endif

// The smallest and largest byte of p[0, nb) other than 255 (nb a multiple of 128, p 64-byte
// aligned); lo > hi when every byte is 255.
FP_INLINE void byte_range(const std::uint8_t* p, std::int64_t nb, int& lo, int& hi) {
  vbytes mn = vbytes{} + 0xff, mx = {};  // mx holds byte + 1, so 255 wraps to 0
  for (std::int64_t i = 0; i < nb; i += kByteLanes) {
    const vbytes x = load<vbytes>(p + i);
    mn = x < mn ? x : mn;
    const vbytes y = x + 1;
    mx = y > mx ? y : mx;
  }
  int l = 255, h = 0;
  for (int j = 0; j < kByteLanes; ++j) {
    l = mn[j] < l ? mn[j] : l;
    h = mx[j] > h ? mx[j] : h;
  }
  lo = l;
  hi = h - 1;
}

// The high and low 32-bit words of eight float64 lanes (AVX2: permutes; GCC scalarizes the generic
// 64-to-32-bit conversion there).
FP_INLINE void split_words(vd x, vu32& hi, vu32& lo) {
#if FP_ISA_AVX2 && !FP_ISA_AVX512
  const __m256i odd = _mm256_setr_epi32(1, 3, 5, 7, 0, 2, 4, 6);  // high words, then low words
  const __m256i a = _mm256_permutevar8x32_epi32(bitcast<__m256i>(lo_half(x)), odd);
  const __m256i b = _mm256_permutevar8x32_epi32(bitcast<__m256i>(hi_half(x)), odd);
  hi = bitcast<vu32>(_mm256_permute2x128_si256(a, b, 0x20));
  lo = bitcast<vu32>(_mm256_permute2x128_si256(a, b, 0x31));
#else
  hi = __builtin_convertvector(bitcast<vul>(x) >> 32, vu32);
  lo = __builtin_convertvector(bitcast<vul>(x), vu32);
#endif
}

// Eight 32-bit lanes holding values 0..255 as eight bytes (AVX2: packs).
FP_INLINE vu8 narrow_bytes(vi32 x) {
#if FP_ISA_AVX2 && !FP_ISA_AVX512
  const __m256i w = _mm256_packus_epi32(bitcast<__m256i>(x), bitcast<__m256i>(x));  // per 128-bit half
  const __m256i b = _mm256_packus_epi16(w, w);
  const __m128i lo = _mm256_castsi256_si128(b), hi = _mm256_extracti128_si256(b, 1);
  return bitcast<vu8>(_mm_cvtsi128_si64(_mm_unpacklo_epi32(lo, hi)));
#else
  return __builtin_convertvector(x, vu8);
#endif
}

// The code exponent_codes_f64 gives one float64 difference.
FP_INLINE std::uint8_t exponent_code_f64(double d) {
  if (d == 0.0) return 255;
  const int e = static_cast<int>((double_to_bits(d) >> 52) & 0x7ffu) - (1023 - 127);
  return static_cast<std::uint8_t>(e < 0 ? 0 : e > 254 ? 254 : e);
}

// The codes of exponent_codes for eight differences of narrow pairs given as float64 |a-b| (0 or
// >= 2^-149, so the high word alone tells a zero), in some order of the lanes (a histogram needs
// none): the float32 exponent field floor(log2 |a-b|) + 127, 0 below 2^-126, 254 at most, 255 for
// zero. Below AVX-512, where no float32 subtraction truncates.
FP_INLINE vu8 exponent_codes_f64(vd ad) {
#if FP_ISA_AVX2
  // the high words of the eight lanes with one in-lane shuffle (lanes 0 1 4 5 | 2 3 6 7)
  const vu32 hi = bitcast<vu32>(_mm256_shuffle_ps(bitcast<__m256>(lo_half(ad)), bitcast<__m256>(hi_half(ad)), 0xdd));
#else
  const vu32 hi = __builtin_convertvector(bitcast<vul>(ad) >> 32, vu32);
#endif
  vi32 e = bitcast<vi32>(hi >> 20) - (1023 - 127);
  e = e < 0 ? vi32{} : e;
  e = e > 254 ? vi32{} + 254 : e;
  return narrow_bytes(hi == 0 ? vi32{} + 255 : e);
}

// exponent_codes_f64 of sixteen differences into out[0, 16), in some order. AVX2 packs the two
// groups of eight together and saturates instead of clamping: 15 instructions where two calls take
// 24.
FP_INLINE void store_exponent_codes_f64(vd ad0, vd ad1, std::uint8_t* out) {
#if FP_ISA_AVX2 && !FP_ISA_AVX512
  auto hi_words = [](vd ad) {  // lanes 0 1 4 5 | 2 3 6 7
    return _mm256_castps_si256(_mm256_shuffle_ps(bitcast<__m256>(lo_half(ad)), bitcast<__m256>(hi_half(ad)), 0xdd));
  };
  const __m256i h0 = hi_words(ad0), h1 = hi_words(ad1), z = _mm256_setzero_si256();
  const __m256i bias = _mm256_set1_epi32(1023 - 127);
  // E - 896 to 16 bits, negatives (below 2^-126) saturating to 0, then at most 254
  __m256i w = _mm256_packus_epi32(_mm256_sub_epi32(_mm256_srli_epi32(h0, 20), bias),
                                  _mm256_sub_epi32(_mm256_srli_epi32(h1, 20), bias));
  w = _mm256_min_epu16(w, _mm256_set1_epi16(254));
  const __m256i zero = _mm256_packs_epi32(_mm256_cmpeq_epi32(h0, z), _mm256_cmpeq_epi32(h1, z));
  w = _mm256_blendv_epi8(w, _mm256_set1_epi16(255), zero);
  const __m256i b = _mm256_permute4x64_epi64(_mm256_packus_epi16(w, w), 0x08);  // qwords 0 and 2
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(b));
#elif FP_ISA_NEON
  // the high words four at a time (UZP2 of two registers), E - 896 narrowed to 16 bits saturating
  // (negatives to 0), at most 254, 255 where the difference is zero, narrowed to bytes
  auto words = [](vd ad, int h) {
    const uint32x4_t x = vreinterpretq_u32_f64(h ? quarter<2>(ad) : quarter<0>(ad));
    const uint32x4_t y = vreinterpretq_u32_f64(h ? quarter<3>(ad) : quarter<1>(ad));
    return vuzp2q_u32(x, y);
  };
  auto codes8 = [](uint32x4_t h0, uint32x4_t h1) {
    const int32x4_t bias = vdupq_n_s32(1023 - 127);
    const int32x4_t e0 = vsubq_s32(vreinterpretq_s32_u32(vshrq_n_u32(h0, 20)), bias);
    const int32x4_t e1 = vsubq_s32(vreinterpretq_s32_u32(vshrq_n_u32(h1, 20)), bias);
    const uint16x8_t w = vminq_u16(vcombine_u16(vqmovun_s32(e0), vqmovun_s32(e1)), vdupq_n_u16(254));
    const uint16x8_t zero = vcombine_u16(vmovn_u32(vceqzq_u32(h0)), vmovn_u32(vceqzq_u32(h1)));
    return vbslq_u16(zero, vdupq_n_u16(255), w);
  };
  const uint16x8_t c0 = codes8(words(ad0, 0), words(ad0, 1)), c1 = codes8(words(ad1, 0), words(ad1, 1));
  vst1q_u8(out, vcombine_u8(vmovn_u16(c0), vmovn_u16(c1)));
#else
  const vu8 e0 = exponent_codes_f64(ad0), e1 = exponent_codes_f64(ad1);
  std::memcpy(out, &e0, sizeof(e0));
  std::memcpy(out + 8, &e1, sizeof(e1));
#endif
}

// How many of the bytes p[0, nb) lie in [lo, hi] (nb a multiple of 128, p 64-byte aligned).
FP_INLINE std::int64_t count_bytes_in(const std::uint8_t* p, std::int64_t nb, int lo, int hi) {
  static_assert(kBlock / 128 <= 255, "byte counters would overflow");
  const std::uint8_t l = static_cast<std::uint8_t>(lo), span = static_cast<std::uint8_t>(hi - lo);
#if FP_ISA_AVX512
  const __m512i lv = _mm512_set1_epi8(static_cast<char>(l)), sv = _mm512_set1_epi8(static_cast<char>(span));
  const __m512i one = _mm512_set1_epi8(1), z = _mm512_setzero_si512();
  __m512i c0 = z, c1 = z;  // two chains; per byte lane at most nb / 128
  for (std::int64_t i = 0; i < nb; i += 128) {
    const __m512i x = _mm512_load_si512(p + i), y = _mm512_load_si512(p + i + 64);
    const __mmask64 mx = lo == hi ? _mm512_cmpeq_epi8_mask(x, lv) : _mm512_cmple_epu8_mask(_mm512_sub_epi8(x, lv), sv);
    const __mmask64 my = lo == hi ? _mm512_cmpeq_epi8_mask(y, lv) : _mm512_cmple_epu8_mask(_mm512_sub_epi8(y, lv), sv);
    c0 = _mm512_mask_add_epi8(c0, mx, c0, one);
    c1 = _mm512_mask_add_epi8(c1, my, c1, one);
  }
  return _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_sad_epu8(c0, z), _mm512_sad_epu8(c1, z)));
#else
  vbytes cnt = {};  // per lane at most nb / kByteLanes
  if (lo == hi) {  // one value (the usual case: an exponent per pass): an equality test
    for (std::int64_t i = 0; i < nb; i += kByteLanes) cnt -= reinterpret_cast<vbytes>(load<vbytes>(p + i) == l);
  } else {
    for (std::int64_t i = 0; i < nb; i += kByteLanes)
      cnt -= reinterpret_cast<vbytes>(static_cast<vbytes>(load<vbytes>(p + i) - l) <= span);
  }
  std::int64_t c = 0;
  for (int j = 0; j < kByteLanes; ++j) c += cnt[j];
  return c;
#endif
}

#if FP_ISA_AVX512ICL
constexpr bool kGroupCount = true;
// How many of the bytes p[0, nb) equal each value lo..hi, into cnt[v - lo] (nb a multiple of 64,
// p 64-byte aligned), eight values per pass instead of one: a masked in-lane shuffle turns every
// byte of the group's values into a one-hot byte, a GF(2) affine transform transposes each qword
// (an 8x8 bit matrix) so that its byte i holds one bit per element equal to the group's value i,
// and a byte popcount adds those up.
FP_INLINE void count_byte_values(const std::uint8_t* p, std::int64_t nb, int lo, int hi, std::int64_t* cnt) {
  const __m512i onehot = _mm512_broadcast_i32x4(_mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0));
  const __m512i pick = _mm512_set1_epi64(static_cast<long long>(0x8040201008040201ULL));  // byte i: 1 << i
  const __m512i eight = _mm512_set1_epi8(8), z = _mm512_setzero_si512();
  for (int g = lo; g <= hi; g += 8) {
    const __m512i gv = _mm512_set1_epi8(static_cast<char>(g));
    __m512i wide = z;  // 16-bit lanes: lane 8 * (128-bit lane) + i counts value g + i
    for (std::int64_t c0 = 0; c0 < nb; c0 += 1024) {
      const std::int64_t c1 = c0 + 1024 < nb ? c0 + 1024 : nb;
      __m512i acc = z;  // byte i of each qword: at most 8 per 64 bytes, 128 per 1024
      for (std::int64_t i = c0; i < c1; i += 64) {
        const __m512i idx = _mm512_sub_epi8(_mm512_load_si512(p + i), gv);
        const __m512i oh = _mm512_maskz_shuffle_epi8(_mm512_cmplt_epu8_mask(idx, eight), onehot, idx);
        acc = _mm512_add_epi8(acc, _mm512_popcnt_epi8(_mm512_gf2p8affine_epi64_epi8(pick, oh, 0)));
      }
      wide = _mm512_add_epi16(wide, _mm512_add_epi16(_mm512_unpacklo_epi8(acc, z), _mm512_unpackhi_epi8(acc, z)));
    }
    alignas(64) std::uint16_t w[32];
    _mm512_store_si512(w, wide);
    for (int i = 0; i < 8 && g + i <= hi; ++i) cnt[g + i - lo] = w[i] + w[8 + i] + w[16 + i] + w[24 + i];
  }
}
#elif FP_ISA_AVX2
constexpr bool kGroupCount = true;
// The same counts eight values per pass with AVX2: the bytes are loaded once for eight equality
// tests into eight byte counters (at most nb / 32 = 128 per byte lane), instead of one pass each
// (which took a sixth of the block kernel's time with the dozen exponents real differences have).
FP_INLINE void count_byte_values(const std::uint8_t* p, std::int64_t nb, int lo, int hi, std::int64_t* cnt) {
  static_assert(kBlock / 32 <= 255, "byte counters would overflow");
  const __m256i z = _mm256_setzero_si256();
  for (int g = lo; g <= hi; g += 8) {
    __m256i acc[8];
    for (int k = 0; k < 8; ++k) acc[k] = z;
    for (std::int64_t i = 0; i < nb; i += 32) {
      const __m256i x = _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i));
      for (int k = 0; k < 8; ++k)
        acc[k] = _mm256_sub_epi8(acc[k], _mm256_cmpeq_epi8(x, _mm256_set1_epi8(static_cast<char>(g + k))));
    }
    for (int k = 0; k < 8 && g + k <= hi; ++k) {
      const __m256i s = _mm256_sad_epu8(acc[k], z);  // four partial sums
      cnt[g + k - lo] = _mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) + _mm256_extract_epi64(s, 2) +
                        _mm256_extract_epi64(s, 3);
    }
  }
}
#else
constexpr bool kGroupCount = false;
FP_INLINE void count_byte_values(const std::uint8_t*, std::int64_t, int, int, std::int64_t*) {}  // never called
#endif

// Per-lane maximum of non-negative values with the first index reaching it (indices increase along
// a lane); lanes are combined by value, then index.
struct LaneMax {
  vd q = vd{} - 1.0;
  vl at = {};
  FP_INLINE void add(vd x, vl idx) {
    const vl gr = vgt(x, q);
    q = vsel(gr, x, q);
    at = vsel(gr, idx, at);
  }
  // folds the lanes into (v, v_i)
  void reduce(double& v, std::int64_t& v_i) const {
    for (int j = 0; j < W; ++j) {
      if (q[j] > v || (q[j] == v && at[j] < v_i)) {
        v = q[j];
        v_i = at[j];
      }
    }
  }
};

// The exact ratio |a-b| / |b| of finite differences (b = 0 < |a-b|: +inf).
FP_INLINE vd ratio(vd ad, vd bv) {
  const vd babs = vabs(bv);
  return vsel(veq(babs, vd{}) & veq(ad, vd{}), vd{}, ad / babs);
}

// Lanes of m that are not in n (bit masks or all-ones lanes).
template <typename M>
FP_INLINE M and_not(M m, M n) { return static_cast<M>(m & ~n); }

// Lane-wise max of float32 lanes (no NaN here).
FP_INLINE vf vmaxf(vf a, vf b) { return a > b ? a : b; }
#if defined(FP_NARROW16)
FP_INLINE vf16 vmaxf(vf16 a, vf16 b) { return bitcast<vf16>(_mm512_max_ps(bitcast<__m512>(a), bitcast<__m512>(b))); }
#endif

// Lanes failing isclose (all ones), for finite values: the float64 definition, evaluated plainly.
FP_INLINE vl not_close(vd ad, vd bv, const ParityParams& p) { return vgt(ad, p.atol + p.rtol * vabs(bv)); }

// The flat indices index0 + 0..7 of eight lanes.
FP_INLINE vl lane_indices(std::int64_t index0) {
  vl idx;
  for (int j = 0; j < W; ++j) idx[j] = index0 + j;
  return idx;
}

// x * y + z in float32 lanes: one rounding with FMA hardware, two without (the isclose screen's
// bounds below allow for either).
FP_INLINE vf mul_add_f32(vf x, vf y, vf z) {
#if FP_ISA_AVX2
  return bitcast<vf>(_mm256_fmadd_ps(bitcast<__m256>(x), bitcast<__m256>(y), bitcast<__m256>(z)));
#elif FP_ISA_NEON
  return join4(vfmaq_f32(lo4(z), lo4(x), lo4(y)), vfmaq_f32(hi4(z), hi4(x), hi4(y)));
#else
  return x * y + z;
#endif
}
#if defined(FP_NARROW16)
FP_INLINE vf16 mul_add_f32(vf16 x, vf16 y, vf16 z) {
  return bitcast<vf16>(_mm512_fmadd_ps(bitcast<__m512>(x), bitcast<__m512>(y), bitcast<__m512>(z)));
}
#endif

FP_INLINE float f32_down(double x) {  // the largest float32 <= x
  const float f = static_cast<float>(x);
  return static_cast<double>(f) > x ? std::nextafter(f, -INFINITY) : f;
}
FP_INLINE float f32_up(double x) {  // the smallest float32 >= x
  const float f = static_cast<float>(x);
  return static_cast<double>(f) < x ? std::nextafter(f, INFINITY) : f;
}

// The isclose test of narrow pairs screened in float32. With L = atol + rtol * |b| as evaluated in
// float64 (the definition), every lane is sorted by two float32 bounds of L computed from |b|:
//   above hi = fl(rtol_hi * |b| + atol_hi)  with rtol_hi >= rtol (1 + 2^-20), atol_hi >= atol (1 + 2^-20) + 2^-126:
//     hi > L whatever the (one or two) roundings, so ad32 > hi proves |a-b| > L: a mismatch;
//   at most lo = max(fl(rtol_lo * |b| + atol_lo), 0) (above_clamped)  with rtol_lo <= rtol (1 - 2^-20), atol_lo <= atol (1 - 2^-20) - 2^-126:
//     lo (1 + 2^-23) < L when lo > 0, and |a-b| <= ad32 (1 + 2^-23), so ad32 <= lo proves a match
//     (lo = 0 means ad32 = 0: a zero difference always matches).
// A lane between the two is undecided; the groups of elements holding one are counted again exactly
// in float64. rtol <= 0.5 and atol <= 1e37 keep every bound finite in float32 (a difference
// past FLT_MAX truncates to FLT_MAX, which is above hi); other tolerances leave every nonzero lane
// undecided and are counted exactly.
struct TolScreen {
  vfn r_hi, a_hi, r_lo, a_lo;
  explicit TolScreen(const ParityParams& p) {
    if (p.rtol <= 0.5 && p.atol <= 1e37) {
      // none of the four denormal (see kFltMin): hi's terms move up, lo's down, which keeps both
      // bounds valid; a_hi >= FLT_MIN and a_lo <= -FLT_MIN or >= FLT_MIN are the margins
      const float rh = f32_up(p.rtol * (1.0 + 0x1p-20)), rl = f32_down(p.rtol * (1.0 - 0x1p-20));
      const float ah = f32_up(p.atol * (1.0 + 0x1p-20) + 0x1p-126);
      const float al = f32_down(p.atol * (1.0 - 0x1p-20) - 0x1p-126);
      r_hi = vfn{} + (rh > 0.0f && rh < kFltMin ? kFltMin : rh);
      r_lo = vfn{} + (rl < kFltMin ? 0.0f : rl);
      a_hi = vfn{} + (ah < kFltMin ? kFltMin : ah);
      a_lo = vfn{} + (al > -kFltMin && al < kFltMin ? -kFltMin : al);
    } else {
      r_hi = r_lo = vfn{};
      a_hi = vfn{} + INFINITY;
      a_lo = vfn{};
    }
  }
  FP_INLINE vfn hi(vfn den) const { return mul_add_f32(r_hi, den, a_hi); }
  FP_INLINE vfn lo_unclamped(vfn den) const { return mul_add_f32(r_lo, den, a_lo); }
};

// Lanes where x > y (float32), and how many lanes a mask holds: mask registers and popcounts with
// AVX-512, movemask and popcount with AVX2, else a loop (LaneCount counts in the loops).
#if FP_ISA_AVX512
FP_INLINE LaneMask gt_lanes(vf x, vf y) { return _mm256_cmp_ps_mask(bitcast<__m256>(x), bitcast<__m256>(y), _CMP_GT_OQ); }
FP_INLINE int count_lanes(LaneMask m) { return __builtin_popcount(m); }
#if defined(FP_NARROW16)
FP_INLINE __mmask16 gt_lanes(vf16 x, vf16 y) {
  return _mm512_cmp_ps_mask(bitcast<__m512>(x), bitcast<__m512>(y), _CMP_GT_OQ);
}
FP_INLINE int count_lanes(__mmask16 m) { return __builtin_popcount(m); }
#endif
FP_INLINE int count_lanes(vl m) { return __builtin_popcount(_mm512_movepi64_mask(bitcast<__m512i>(m))); }
#else
#if FP_ISA_NEON
FP_INLINE LaneMask gt_lanes(vf x, vf y) {
  return halves(x, y, [](float32x4_t p, float32x4_t q) { return vcgtq_f32(p, q); });
}
#else
FP_INLINE LaneMask gt_lanes(vf x, vf y) { return x > y; }
#endif
#if FP_ISA_AVX2
FP_INLINE int count_lanes(LaneMask m) { return __builtin_popcount(_mm256_movemask_ps(bitcast<__m256>(m))); }
FP_INLINE int count_lanes(vl m) {
  return __builtin_popcount(_mm256_movemask_pd(bitcast<__m256d>(lo_half(bitcast<vd>(m)))) |
                            (_mm256_movemask_pd(bitcast<__m256d>(hi_half(bitcast<vd>(m)))) << 4));
}
#else
FP_INLINE int count_lanes(LaneMask m) {
  int c = 0;
  for (int j = 0; j < W; ++j) c += m[j] != 0;
  return c;
}
FP_INLINE int count_lanes(vl m) {
  int c = 0;
  for (int j = 0; j < W; ++j) c += m[j] != 0;
  return c;
}
#endif
#endif

// How many lanes of a block's masks were set, counted in the loop: popcounts of AVX-512's bit masks;
// elsewhere a 32-bit counter per lane, which subtracting an all-ones lane (-1) raises by one (one
// subtraction where a movemask, a popcount and an addition took three; at most kBlock / 8 a lane).
#if FP_ISA_AVX512
template <typename M>
struct LaneCount {
  std::int64_t c = 0;
  FP_INLINE void add(M m) { c += count_lanes(m); }
  FP_INLINE std::int64_t total() const { return c; }
};
#else
template <typename M>
struct LaneCount {
  static_assert(std::is_same_v<M, vi32>, "all-ones 32-bit lanes");
  vi32 c = {};
  FP_INLINE void add(vi32 m) { c -= m; }
  FP_INLINE std::int64_t total() const {
    std::int64_t t = 0;
    for (int j = 0; j < W; ++j) t += c[j];
    return t;
  }
};
#endif

// One block of n contiguous elements into the freshly constructed `out`. Returns false, leaving
// `out` untouched, when any difference is not finite: the caller then reduces the block with the
// exact scalar kernel (NaN/inf rules).
//
// The maxima are exact but their indices are located only when the block can change the running
// result: `thr_abs`/`thr_rel` are maxima the block must beat to matter (the caller's running maxima
// from earlier indices, or values strictly below a maximum found anywhere; -1 for none), and an
// index of -1 means "does not beat them" (accum_merge then ignores the value). For formats narrower than
// float64 the relative difference is screened in float32 against thr_rel (no division) and
// computed exactly in float64 only for blocks that may hold a new maximum.
template <typename TA, typename TB, typename Narrow, bool kTol>
bool block_kernel(ParityAccum& out, const void* a_, const void* b_, std::int64_t n, std::int64_t index0,
                  const ParityParams& p, double thr_abs, double thr_rel) {
  const TA* a = static_cast<const TA*>(a_);  // [n]
  const TB* b = static_cast<const TB*>(b_);  // [n]
  if (n <= 0) return true;
  constexpr bool kNarrowPair = DTypeOf<TA>::value != DType::Float64 && DTypeOf<TB>::value != DType::Float64;
  constexpr DType kNarrow = DTypeOf<Narrow>::value;
  constexpr int kNarrowBits = dtype_size(kNarrow) * 8;
  // products of values from formats up to float32 are exact in float64
  constexpr bool kExactA = DTypeOf<TA>::value != DType::Float64, kExactB = DTypeOf<TB>::value != DType::Float64;
  auto fma_square = [](Acc8& acc, vd x, bool exact) __attribute__((always_inline)) {
    if (exact) acc.fma_exact(x, x);
    else acc.fma(x, x);
  };

  const vd zero = {};
  Acc8 s_abs, s_sq, s_aa, s_bb;  // Σab follows from the squares (after the loop)
  Acc8 sa, sb;  // plain sums; with s_aa, s_bb and Σab they give the block's moments
  Acc8 vmx;      // per-lane max |a-b| (narrow pairs in one pass: see vmx32)
  vfn vmx32 = {};  // narrow pairs in one pass: per-lane max of ad32, which bounds the exact maximum
  LaneMax vrel;  // exact per-lane max ratio (float64 pairs)
  // Narrow pairs screen the ratio against the caller's running maximum without dividing: a lane is
  // flagged when |a-b| > thr * |b| might hold (float32, with slack for every rounding involved);
  // only a block with a flag gets the exact float64 pass. No usable maximum yet (or one past
  // float32's range) means the exact pass anyway; a maximum of +inf (a zero b met a nonzero a)
  // cannot be beaten by this finite block (its indices come later, so a tie loses): no pass.
  const bool rel_settled = thr_rel == INFINITY;
  const bool exact_rel_pass = !rel_settled && !(thr_rel >= 0.0 && thr_rel < kRelScreenMax);
  const double thr_d = exact_rel_pass ? 0.0 : thr_rel * (1.0 - 0x1p-16);
  const vfn thr32 = vfn{} + (thr_d < 0x1p-126 ? 0.0f : static_cast<float>(thr_d));  // lower: flags more
  // the groups of kNL elements with a flagged lane: only those get the exact pass
  std::uint8_t rel_groups[kBlock / kNL];
  bool rel_any = false;
  std::int64_t mism = 0;                     // float64 pairs: the exact isclose count
  const TolScreen tol(p);                    // narrow pairs: the float32 screen, its count of lanes
  // lanes above hi, and above max(lo, 0): hi >= max(lo, 0) (hi's terms are lo's or larger, and
  // a_hi > 0), so the lanes above hi are among them, and the difference counts the undecided lanes
  typedef decltype(nonzero_lanes(vun{})) MaskN;
  LaneCount<MaskN> above_hi_n, above_lo_n;
  NarrowBits<Narrow, kNarrowPair ? kNL : W> ulpn = {};  // (formats up to 32 bits)
  vul ulp64 = {};
  vl idx = lane_indices(index0);
  std::int64_t hist[kHistBins] = {};
  // one byte per element for the histogram, counted per block below: with AVX-512 the float32
  // exponent field of trunc(|a-b|) (mapped to bins when counting), else the bin itself
  alignas(64) std::uint8_t bins[kBlock];
  vi32 bin_lo = vi32{} + kHistBins, bin_hi = vi32{} - 1;  // range of nonzero bins (no AVX-512)

  // The float64 work on the eight elements at i: the sums, the maximum and (without AVX-512) the
  // histogram bytes. Returns |a-b|.
  auto wide8 = [&](vd av, vd bv, std::int64_t i) __attribute__((always_inline)) {
    const vd d = av - bv;
    const vd ad = vabs(d);
    if constexpr (!kNarrowPair) vmx.max(ad);
    // products of values from formats up to float32 are exact in float64, so a fused multiply-add
    // rounds each term once, exactly as separate operations would; in float64 it rounds once fewer
    s_abs.add(ad);
    s_sq.fma(d, d);
    fma_square(s_aa, av, kExactA);
    fma_square(s_bb, bv, kExactB);
    sa.add(av);
    sb.add(bv);
    if constexpr (!kTruncF32 && !kNarrowPair) {  // histogram bin of each float64 |a-b| (finite, >= 0)
      vu32 hi_word, lo_word;  // exponent and top mantissa, low mantissa
      split_words(ad, hi_word, lo_word);
      const vi32 e = bitcast<vi32>(hi_word >> 20);
      vi32 bin = e - (1023 + kHistMinExp - 2);
      bin = bin < 1 ? vi32{} + 1 : bin;
      bin = bin > 58 ? vi32{} + 58 : bin;
      bin = (hi_word | lo_word) == 0 ? vi32{} : bin;
      // the range of nonzero bins (exact zeros, common in low precision, are counted on their own)
      const vi32 nz = bin == 0 ? vi32{} + kHistBins : bin;
      bin_lo = nz < bin_lo ? nz : bin_lo;
      bin_hi = bin > bin_hi ? bin : bin_hi;
      const vu8 b8 = narrow_bytes(bin);
      std::memcpy(bins + i, &b8, sizeof(b8));
    }
    return ad;
  };

  // the hardware prefetchers alone leave the loop waiting on memory (ad-hoc, one Zen 4 core,
  // float32: ~0.9 ns/element from DRAM against ~0.7 from L2); 512 elements ahead (~300 ns) brings
  // DRAM close to the L2 rate
  constexpr std::int64_t kAhead = 64 * W;
  const std::int64_t nv = n - n % kStep;  // the vector part
  if constexpr (kNarrowPair) {
    // the float32 screens of kNL elements at i; (a32, b32) for the float64 work of the same elements
    auto screens = [&](std::int64_t i, vfn& a32, vfn& b32) __attribute__((always_inline)) {
      a32 = Lanes<TA>::template value32<kNL>(a + i);
      b32 = Lanes<TB>::template value32<kNL>(b + i);
      const vfn den = bitcast<vfn>(bitcast<vun>(b32) & 0x7fffffffu);  // |b|, exact
      const vfn ad32 = abs_diff32(a32, b32);  // 0 only for a zero difference
      const auto nz = nonzero_lanes(bitcast<vun>(ad32));
      if constexpr (!kSplitPasses) vmx32 = vmaxf(ad32, vmx32);
      // |b| is 0 or >= 2^-149 and exact in float32; ad32 differs from |a-b| by at most 2^-23
      // relative. A zero b with a nonzero a flags; an equal pair (ratio 0) never does.
      const bool flag = any_reaches(ad32, thr32 * den, nz);  // lim = fl(thr32 |b|): see kFltMin
      rel_groups[i / kNL] = flag;
      rel_any |= flag;
      if constexpr (kTol) {
        above_hi_n.add(gt_lanes(ad32, tol.hi(den)));
        above_lo_n.add(above_clamped(ad32, tol.lo_unclamped(den), nz));
      }
      const auto dist = ulp_distance(narrow_bits<TA, Narrow, kNL>(a + i, vd{}), narrow_bits<TB, Narrow, kNL>(b + i, vd{}));
      ulpn = dist > ulpn ? dist : ulpn;
      if constexpr (kTruncF32) {
        // the exponent field E of trunc(|a-b|): 0 for a nonzero difference below 2^-126 (narrow
        // pairs differ by 0 or >= 2^-149); the byte 255 marks an exact zero
        const auto e8 = exponent_codes(bitcast<vun>(ad32), nz);
        std::memcpy(bins + i, &e8, sizeof(e8));
        // A truncated difference whose significand is all ones sits just below a power of two,
        // which the exact path's float64 difference (rounded to nearest) reaches when the exact
        // one needs more than 53 bits (values 2^30 and more apart): such lanes (rare) take the
        // code of the float64 difference, lane j's code being byte j.
        const auto edge = nonzero_lanes(bitcast<vun>((bitcast<vun>(ad32) & 0x7fffffu) == 0x7fffffu));
        if (any_lane(edge))
          for (int j = 0; j < kNL; ++j)
            if ((bitcast<vun>(ad32)[j] & 0x7fffffu) == 0x7fffffu)
              bins[i + j] = exponent_code_f64(to_f64(a[i + j]) - to_f64(b[i + j]));
      }
    };
    if constexpr (kSplitPasses) {
      // With AVX2 the float64 sums alone hold twelve of the sixteen registers (NEON: 24 of 32):
      // with the float32 screens in the same loop, GCC spilled a dozen vectors per iteration. Three
      // passes over the block (the third reads it again from L1/L2) keep each in registers, and leave
      // room for the exact float64 maximum, so a block that ties the running maximum needs no exact
      // pass. The first keeps the differences a - b (float64, 32 KiB) for the second, which
      // converted both inputs again: Zen 3 converts on two of its four floating-point pipes, the
      // two that also add, and they were the second pass's bottleneck (llvm-mca, -mcpu=znver3).
      // (On the stack: the deepest frame, fp8_block's with its decoded inputs, is ~70 KiB; pool
      // threads have std::thread's default stack, 8 MiB with glibc, 512 KiB on macOS.)
      alignas(64) double diffs[kBlock];
      for (std::int64_t i = 0; i < nv; i += W) {  // the values' sums, as the block comes in
        __builtin_prefetch(a + i + kAhead, 0, 3);
        __builtin_prefetch(b + i + kAhead, 0, 3);
        const vd av = Lanes<TA>::value(a + i), bv = Lanes<TB>::value(b + i);
        fma_square(s_aa, av, kExactA);
        fma_square(s_bb, bv, kExactB);
        sa.add(av);
        sb.add(bv);
        store_diff8(diffs + i, av, bv);
      }
      for (std::int64_t i = 0; i < nv; i += 2 * W) {  // the differences' sums and histogram codes
        vd ad[2];
        for (int h = 0; h < 2; ++h) {
          const vd d = load<vd>(diffs + i + W * h);
          ad[h] = vabs(d);
          vmx.max(ad[h]);
          s_abs.add(ad[h]);
          s_sq.fma(d, d);
        }
        store_exponent_codes_f64(ad[0], ad[1], bins + i);
      }
      for (std::int64_t i = 0; i < nv; i += kNL) {  // the float32 screens
        vfn a32, b32;
        screens(i, a32, b32);
      }
    } else {
      for (std::int64_t i = 0; i < nv; i += kNL) {
        __builtin_prefetch(a + i + kAhead, 0, 3);
        __builtin_prefetch(b + i + kAhead, 0, 3);
        vfn a32, b32;
        screens(i, a32, b32);
        const vd ad = wide8(value8<0>(a + i, a32), value8<0>(b + i, b32), i);
        if constexpr (kNL == 2 * W) wide8(value8<1>(a + i, a32), value8<1>(b + i, b32), i + W);
        if constexpr (!kTruncF32) {  // (kNL == W here) the same codes, from the float64 |a-b|
          const vu8 e8 = exponent_codes_f64(ad);
          std::memcpy(bins + i, &e8, sizeof(e8));
        }
      }
    }
  } else {
    for (std::int64_t i = 0; i < nv; i += W) {
      __builtin_prefetch(a + i + kAhead, 0, 3);
      __builtin_prefetch(b + i + kAhead, 0, 3);
      const vd av = Lanes<TA>::value(a + i), bv = Lanes<TB>::value(b + i);
      const vd ad = wide8(av, bv, i);
      vrel.add(ratio(ad, bv), idx);
      idx += W;
      if constexpr (kTol) mism += count_lanes(not_close(ad, bv, p));
      if constexpr (kNarrowBits <= 32) {
        const auto dist = ulp_distance(narrow_bits<TA, Narrow>(a + i, av), narrow_bits<TB, Narrow>(b + i, bv));
        ulpn = dist > ulpn ? dist : ulpn;
      } else {
        const vl oa = ordered_lanes(Lanes<TA>::bits(a + i), 64), ob = ordered_lanes(Lanes<TB>::bits(b + i), 64);
        const vul dist = vsel(oa >= ob, bitcast<vul>(oa) - bitcast<vul>(ob), bitcast<vul>(ob) - bitcast<vul>(oa));
        ulp64 = vsel(bitcast<vl>(dist > ulp64), dist, ulp64);
      }
      if constexpr (kTruncF32) {
        // the exponent field E of trunc(|a-b|): 254 at most (past float32's range), 0 for a
        // nonzero difference below 2^-126; the byte 255 marks an exact zero. A difference below
        // 2^-149 truncates to +0.0f: keep it nonzero (the lowest mantissa bit changes no exponent)
        const vu32 u = bitcast<vu32>(trunc_f32(ad)) | (bitcast<vu32>(__builtin_convertvector(ad != 0.0, vi32)) & 1u);
        const vu8 e8 = exponent_codes(u, nonzero_lanes(u));
        std::memcpy(bins + i, &e8, sizeof(e8));
      }
    }
  }
  // Count the bytes: compares over the block for each value present (a handful of exponents for
  // real data) instead of a scattered increment per element. Exact zeros, the one value every
  // other byte is not, are what remains.
  if (nv > 0) {
    const std::int64_t nb = (nv + 127) / 128 * 128;
    // padding: 255 is the zero code of exponent bytes (zeros are the remainder, never counted) and
    // matches no bin byte
    for (std::int64_t i = nv; i < nb; ++i) bins[i] = 0xff;
    std::int64_t nonzero = 0;
    auto add = [&](int bin, int lo, int hi) {  // the bytes in [lo, hi] belong to `bin`
      const std::int64_t c = count_bytes_in(bins, nb, lo, hi);
      hist[bin] += c;
      nonzero += c;
    };
    if constexpr (kTruncF32 || kNarrowPair) {
      // bin of an exponent field E: clamp(E - 85, 1, 58) (E = 0: below 2^-126, bin 1)
      constexpr int kE0 = 127 + kHistMinExp - 2;  // E - kE0 is the bin
      int e_lo, e_hi;
      byte_range(bins, nb, e_lo, e_hi);
      if (e_lo <= e_hi && kGroupCount) {
        // the exponents of bins 1 and 58 (everything below 2^kHistMinExp, or at least 2^kHistMaxExp)
        // one range pass each, the others eight per pass: a block with one denormal difference
        // (code 0) among normal ones (codes near 117) would otherwise count 15 groups instead of 2
        if (e_lo <= kE0 + 1) add(1, e_lo, e_hi < kE0 + 1 ? e_hi : kE0 + 1);
        if (e_hi >= kE0 + 58) add(58, e_lo > kE0 + 58 ? e_lo : kE0 + 58, e_hi);
        const int m_lo = e_lo > kE0 + 2 ? e_lo : kE0 + 2, m_hi = e_hi < kE0 + 57 ? e_hi : kE0 + 57;
        if (m_lo <= m_hi) {
          std::int64_t cnt[256];
          count_byte_values(bins, nb, m_lo, m_hi, cnt);
          for (int e = m_lo; e <= m_hi; ++e) {
            hist[e - kE0] += cnt[e - m_lo];
            nonzero += cnt[e - m_lo];
          }
        }
      } else if (e_lo <= e_hi) {  // (else every difference was zero) one compare pass per bin
        if (e_lo <= kE0 + 1) add(1, e_lo, e_hi < kE0 + 1 ? e_hi : kE0 + 1);
        for (int e = e_lo > kE0 + 2 ? e_lo : kE0 + 2; e <= e_hi && e < kE0 + 58; ++e) add(e - kE0, e, e);
        if (e_hi >= kE0 + 58) add(58, e_lo > kE0 + 58 ? e_lo : kE0 + 58, e_hi);
      }
    } else {
      int lo = kHistBins, hi = -1;
      for (int j = 0; j < W; ++j) {
        lo = bin_lo[j] < lo ? bin_lo[j] : lo;
        hi = bin_hi[j] > hi ? bin_hi[j] : hi;
      }
      for (int k = lo; k <= hi; ++k) add(k, k, k);
    }
    hist[0] += nv - nonzero;
  }

  // reductions over lanes in a fixed order, then the tail (< kStep elements) in index order
  auto total = [](const Acc8& v) {
    double s = 0;
    for (int j = 0; j < W; ++j) s += v.lane(j);
    return s;
  };
  double t_abs = total(s_abs), t_sq = total(s_sq), t_aa = total(s_aa), t_bb = total(s_bb);
  double t_sa = total(sa), t_sb = total(sb);
  double mx = 0, rel = -1.0;
  std::int64_t rel_i = -1, mismatches = 0;
  std::uint64_t max_ulp = 0;
  if constexpr (!kNarrowPair) vrel.reduce(rel, rel_i);
  for (int j = 0; j < W; ++j) {
    mx = vmx.lane(j) > mx ? vmx.lane(j) : mx;
    if (ulp64[j] > max_ulp) max_ulp = ulp64[j];
  }
  for (int j = 0; j < static_cast<int>(sizeof(ulpn) / sizeof(ulpn[0])); ++j)
    if (ulpn[j] > max_ulp) max_ulp = ulpn[j];
  if constexpr (!kNarrowPair) mismatches = mism;
  if constexpr (kTol && kNarrowPair) {
    // with an undecided lane (rare: a difference within 2^-20 of its allowance), the groups that
    // hold one are counted exactly in float64, in place of the screen's count
    mismatches = above_hi_n.total();
    const bool undecided = above_lo_n.total() > mismatches;
    for (std::int64_t i = 0; undecided && i < nv; i += kNL) {
      const vfn a32 = Lanes<TA>::template value32<kNL>(a + i), b32 = Lanes<TB>::template value32<kNL>(b + i);
      const vfn den = bitcast<vfn>(bitcast<vun>(b32) & 0x7fffffffu);
      const vfn ad32 = abs_diff32(a32, b32);
      const auto hi = gt_lanes(ad32, tol.hi(den));
      const auto lo = above_clamped(ad32, tol.lo_unclamped(den), nonzero_lanes(bitcast<vun>(ad32)));
      if (!any_lane(and_not(lo, hi))) continue;
      mismatches -= count_lanes(hi);
      for (std::int64_t h = i; h < i + kNL; h += W) {
        const vd av = Lanes<TA>::value(a + h), bv = Lanes<TB>::value(b + h);
        mismatches += count_lanes(not_close(vabs(av - bv), bv, p));
      }
    }
  }
  for (std::int64_t i = nv; i < n; ++i) {
    const double av = to_f64(a[i]), bv = to_f64(b[i]);
    const double d = av - bv, ad = d < 0 ? -d : d;
    if (ad > mx) mx = ad;
    const double q = rel_diff(av, bv, ad);
    if (q > rel) {
      rel = q;
      rel_i = index0 + i;
    }
    t_abs += ad;
    t_sq = std::fma(d, d, t_sq);
    t_aa = std::fma(av, av, t_aa);
    t_bb = std::fma(bv, bv, t_bb);
    t_sa += av;
    t_sb += bv;
    if (kTol && !is_close(av, bv, ad, p)) ++mismatches;
    const std::uint64_t u = ulp_distance_bits(narrow_bits_in(kNarrow, DTypeOf<TA>::value, raw_bits(a[i]), av),
                                              narrow_bits_in(kNarrow, DTypeOf<TB>::value, raw_bits(b[i]), bv), kNarrowBits);
    if (u > max_ulp) max_ulp = u;
    ++hist[hist_bin(ad)];
  }
  // Every difference finite <=> the sum of |a-b| is (an overflowing sum also takes the exact path).
  if (!(t_abs <= 1.7976931348623157e308)) return false;

  // Σab = (Σa² + Σb² - Σ(a-b)²) / 2, one FMA per element fewer. Its rounding error is within a few
  // units of Σa² + Σb², against √(Σa² Σb²) for summing the products: no worse than 1.25x while the
  // two norms² are within a factor 4 of each other (near-equal tensors, the normal case). Otherwise,
  // or with any of the three sums past float64's range, a pass over the block (in cache) sums the
  // products.
  double t_ab;
  if (t_aa <= 4.0 * t_bb && t_bb <= 4.0 * t_aa && (t_aa + t_bb) + t_sq <= 1.7976931348623157e308) {
    t_ab = 0.5 * ((t_aa + t_bb) - t_sq);
  } else {
    Acc8 s_ab;
    for (std::int64_t i = 0; i < nv; i += W) {
      if constexpr (kExactA && kExactB) s_ab.fma_exact(Lanes<TA>::value(a + i), Lanes<TB>::value(b + i));
      else s_ab.fma(Lanes<TA>::value(a + i), Lanes<TB>::value(b + i));
    }
    t_ab = total(s_ab);
    for (std::int64_t i = nv; i < n; ++i) t_ab = std::fma(to_f64(a[i]), to_f64(b[i]), t_ab);
  }

  // The block's max |a-b| and, when it beats the running maximum (a tie loses to the earlier
  // index), its first index. Float64 pairs, and narrow pairs in separate passes, have the exact
  // maximum already (here mx). Narrow pairs in one pass have the tail's (mx) and a bound for the vector
  // part: its exact maximum is below the float32 successor of the largest ad32 (truncated or
  // rounded to nearest), which costs one float32 max per step instead of two float64 ones; only a
  // bound that reaches the running maximum costs an exact pass, which locates the index on the way.
  // (Quantized formats tie with the running maximum in many blocks, each then taking that pass: the
  // price of the cheaper step where AVX-512 runs one pass.)
  std::int64_t mx_i = -1;
  if constexpr (kNarrowPair && !kSplitPasses) {
    float m32 = 0.0f;
    for (int j = 0; j < kNL; ++j) m32 = vmx32[j] > m32 ? vmx32[j] : m32;
    // (the successor on the bit pattern, as std::nextafter(m32, inf) but for m32 = 0, where that
    // makes a denormal: all differences zero, 0 is the exact maximum itself; +inf stays +inf)
    const float succ = m32 > 0.0f && m32 < INFINITY ? bitcast<float>(bitcast<std::uint32_t>(m32) + 1u) : m32;
    const double upper = std::fmax(mx, static_cast<double>(succ));
    if (upper > thr_abs) {
      LaneMax exact;
      vl at = lane_indices(index0);
      for (std::int64_t i = 0; i < nv; i += W, at += W)
        exact.add(vabs(Lanes<TA>::value(a + i) - Lanes<TB>::value(b + i)), at);
      double v = -1.0;
      std::int64_t v_i = -1;
      exact.reduce(v, v_i);
      for (std::int64_t i = nv; i < n; ++i) {  // the tail comes later: it must beat, not tie
        const double ad = std::fabs(to_f64(a[i]) - to_f64(b[i]));
        if (ad > v) {
          v = ad;
          v_i = index0 + i;
        }
      }
      mx = v;
      if (mx > thr_abs) mx_i = v_i;
    } else {
      mx = upper;  // (without an index the caller ignores the value)
    }
  } else if (mx > thr_abs) {
    for (std::int64_t i = 0; i < n; ++i) {
      const double d = to_f64(a[i]) - to_f64(b[i]);
      if ((d < 0 ? -d : d) == mx) {
        mx_i = index0 + i;
        break;
      }
    }
  }
  if constexpr (kNarrowPair) {
    // The tail's ratios were exact (rel, rel_i); the vector part is recomputed exactly only when
    // a lane was flagged (or there is no running maximum to screen against).
    const bool every_group = exact_rel_pass || mx >= 1e38;  // (mx: see kFltMin)
    if (!rel_settled && (every_group || rel_any)) {
      // exact ratios, eight lanes at a time (every difference is finite here), of the flagged
      // groups: an unflagged lane cannot beat the running maximum (quantized formats tie with it in
      // many blocks, each with a lane or two flagged)
      LaneMax exact;
      vl at = lane_indices(index0);
      for (std::int64_t i = 0; i < nv; i += W, at += W) {
        if (!every_group && !rel_groups[i / kNL]) continue;
        const vd av = Lanes<TA>::value(a + i), bv = Lanes<TB>::value(b + i);
        exact.add(ratio(vabs(av - bv), bv), at);
      }
      double vrel_max = -1.0;
      std::int64_t vrel_i = -1;
      exact.reduce(vrel_max, vrel_i);
      if (vrel_max >= rel) {  // the vector part comes first in index order: it wins ties
        rel = vrel_max;
        rel_i = vrel_i;
      }
    }
  }
  if (!(rel > thr_rel)) rel_i = -1;

  ParityAccum& r = out;  // `out` arrives freshly constructed; fill it in place
  r.numel = n;
  r.max_abs = mx;
  r.max_abs_index = mx_i;
  r.max_rel = rel < 0 ? 0.0 : rel;
  r.max_rel_index = rel_i;
  r.mismatches = kTol ? mismatches : n - hist[0];  // atol = rtol = 0: a mismatch is any a != b
  r.max_ulp = max_ulp;
  r.sum_abs.hi = t_abs;
  r.sum_sq.hi = t_sq;
  r.sum_aa.hi = t_aa;
  r.sum_bb.hi = t_bb;
  r.sum_ab.hi = t_ab;
  const double nn = static_cast<double>(n);
  r.mom.n = nn;
  // Centered moments from the plain sums, M2 = Σx² - (Σx)²/n, while the mean does not dominate
  // (mean² <= var, so the subtraction loses at most a bit). Otherwise a second pass over the block
  // (in cache) centers on the mean first: offsets far above the spread stay exact.
  const double ca = t_sa * t_sa / nn, cb = t_sb * t_sb / nn;
  r.mom.mean_a = t_sa / nn;
  r.mom.mean_b = t_sb / nn;
  if (ca <= 0.5 * t_aa && cb <= 0.5 * t_bb) {
    r.mom.m2a = t_aa - ca;
    r.mom.m2b = t_bb - cb;
    r.mom.cab = t_ab - t_sa * t_sb / nn;
  } else {
    const double ma = r.mom.mean_a, mb = r.mom.mean_b;
    const vd vma = zero + ma, vmb = zero + mb;
    Acc8 xa_s, xb_s, xaa, xbb, xab;
    for (std::int64_t i = 0; i < nv; i += W) {
      const vd xa = Lanes<TA>::value(a + i) - vma, xb = Lanes<TB>::value(b + i) - vmb;
      xa_s.add(xa);
      xb_s.add(xb);
      xaa.fma(xa, xa);
      xbb.fma(xb, xb);
      xab.fma(xa, xb);
    }
    double ua = total(xa_s), ub = total(xb_s), uaa = total(xaa), ubb = total(xbb), uab = total(xab);
    for (std::int64_t i = nv; i < n; ++i) {
      const double xa = to_f64(a[i]) - ma, xb = to_f64(b[i]) - mb;
      ua += xa;
      ub += xb;
      uaa = std::fma(xa, xa, uaa);
      ubb = std::fma(xb, xb, ubb);
      uab = std::fma(xa, xb, uab);
    }
    // corrected two-pass: the residual sums ua, ub remove the rounding of the means
    r.mom.m2a = uaa - ua * ua / nn;
    r.mom.m2b = ubb - ub * ub / nn;
    r.mom.cab = uab - ua * ub / nn;
    r.mom.mean_a = ma + ua / nn;
    r.mom.mean_b = mb + ub / nn;
  }
  for (int i = 0; i < kHistBins; ++i) r.hist[i] = hist[i];
  return true;
}

template <typename TA, typename TB>
BlockFn pick(bool with_tolerance) {
  constexpr bool a_narrower = narrower_dtype(DTypeOf<TA>::value, DTypeOf<TB>::value) == DTypeOf<TA>::value;
  using Narrow = std::conditional_t<a_narrower, TA, TB>;
  return with_tolerance ? &block_kernel<TA, TB, Narrow, true> : &block_kernel<TA, TB, Narrow, false>;
}

std::uint64_t read_probe(const void* p, std::int64_t bytes) {
  // integer sums of register-wide vectors, four at a time: the least work that still reads every
  // byte (a 64-byte accumulator below AVX-512 went through memory and read at a third of the limit)
  typedef std::uint64_t vreg __attribute__((vector_size(FP_ISA_AVX512 ? 64 : FP_ISA_AVX2 ? 32 : 16)));
  constexpr std::int64_t kStride = 4 * sizeof(vreg);
  const char* c = static_cast<const char*>(p);
  vreg a0 = {}, a1 = {}, a2 = {}, a3 = {};
  std::int64_t i = 0;
  for (; i + kStride <= bytes; i += kStride) {
    a0 += load<vreg>(c + i);
    a1 += load<vreg>(c + i + sizeof(vreg));
    a2 += load<vreg>(c + i + 2 * sizeof(vreg));
    a3 += load<vreg>(c + i + 3 * sizeof(vreg));
  }
  const vreg acc = (a0 + a1) + (a2 + a3);
  std::uint64_t s = 0;
  for (std::size_t j = 0; j < sizeof(vreg) / 8; ++j) s += acc[j];
  for (; i + 8 <= bytes; i += 8) s += load<std::uint64_t>(c + i);  // (the same sum on every level)
  for (; i < bytes; ++i) s += static_cast<unsigned char>(c[i]);
  return s;
}

#if FP_ISA_AVX2
// The register form of the CRC-32 of n bytes (n >= 64, a multiple of 16): four 16-byte lanes fold
// 64 bytes a step (x -> x.lo * k1 ^ x.hi * k2 ^ next), fold into one lane, take the remaining
// 16-byte blocks, then reduce 128 -> 64 -> 32 bits (Barrett, with the bit-reflected polynomial).
std::uint32_t crc32_clmul(std::uint32_t crc, const unsigned char* p, std::int64_t n) {
  const __m128i k1k2 = _mm_set_epi64x(0x1c6e41596, 0x154442bd4);  // (high, low) qwords
  const __m128i k3k4 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0);
  const __m128i k5 = _mm_set_epi64x(0, 0x163cd6124);
  const __m128i poly = _mm_set_epi64x(0x1f7011641, 0x1db710641);  // (mu, P)
  const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);
  const auto at = [](const unsigned char* q) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)); };
  const auto fold = [](__m128i x, __m128i k, __m128i next) {
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), next);
  };
  __m128i x1 = _mm_xor_si128(at(p), _mm_cvtsi32_si128(static_cast<int>(crc)));
  __m128i x2 = at(p + 16), x3 = at(p + 32), x4 = at(p + 48);
  for (p += 64, n -= 64; n >= 64; p += 64, n -= 64) {
    x1 = fold(x1, k1k2, at(p));
    x2 = fold(x2, k1k2, at(p + 16));
    x3 = fold(x3, k1k2, at(p + 32));
    x4 = fold(x4, k1k2, at(p + 48));
  }
  x1 = fold(fold(fold(x1, k3k4, x2), k3k4, x3), k3k4, x4);
  for (; n >= 16; p += 16, n -= 16) x1 = fold(x1, k3k4, at(p));
  x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), _mm_clmulepi64_si128(x1, k3k4, 0x10));  // 128 -> 64 bits
  x1 = _mm_xor_si128(_mm_srli_si128(x1, 4), _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), k5, 0x00));
  __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), poly, 0x10);  // Barrett: 64 -> 32 bits
  t = _mm_clmulepi64_si128(_mm_and_si128(t, mask32), poly, 0x00);
  return static_cast<std::uint32_t>(_mm_extract_epi32(_mm_xor_si128(x1, t), 1));
}
#endif

#if FP_ISA_NEON
// The CRC-32 of the zip format is the one ARM's CRC32X/W/H/B compute (FEAT_CRC32, not CRC32C's
// CRC32CX): eight bytes an instruction, in four independent streams, whose CRCs are combined by
// zlib's shift rule. One stream is bound by the instruction's latency (3 cycles on Neoverse cores)
// at a third of its throughput; four streams of kPart bytes each keep it busy.
constexpr std::int64_t kCrcPart = 1024;
__attribute__((target("+crc"))) std::uint32_t crc32_stream(std::uint32_t c, const unsigned char* p, std::int64_t n) {
  for (; n >= 8; p += 8, n -= 8) c = __crc32d(c, load<std::uint64_t>(p));
  for (; n > 0; ++p, --n) c = __crc32b(c, *p);
  return c;
}
// x * 2^k mod P in the bit-reflected domain: multiplies of GF(2) polynomials, for shifting a
// stream's CRC past the bytes of the streams after it.
std::uint32_t gf2_mulmod(std::uint32_t a, std::uint32_t b) {
  std::uint32_t r = 0;
  for (int i = 0; i < 32; ++i) {
    r ^= (b & 0x80000000u) ? a : 0u;
    b <<= 1;
    a = (a & 1u) ? (a >> 1) ^ 0xedb88320u : a >> 1;
  }
  return r;
}
__attribute__((target("+crc"))) std::uint32_t crc32_hw(std::uint32_t c, const unsigned char* p, std::int64_t n) {
  // x^(8 * kCrcPart * k) mod P for k = 1..3, in the reflected domain (x^0 is 0x80000000)
  static const std::array<std::uint32_t, 4> shift = [] {
    std::array<std::uint32_t, 4> s{0x80000000u, 0, 0, 0};
    std::uint32_t x8 = 0x80000000u >> 8;  // x^8
    std::uint32_t part = 0x80000000u;      // x^(8 * kCrcPart)
    for (std::int64_t i = 0; i < kCrcPart; ++i) part = gf2_mulmod(part, x8);
    for (int k = 1; k < 4; ++k) s[k] = gf2_mulmod(s[k - 1], part);
    return s;
  }();
  for (; n >= 4 * kCrcPart; p += 4 * kCrcPart, n -= 4 * kCrcPart) {
    std::uint32_t c0 = c, c1 = 0, c2 = 0, c3 = 0;
    for (std::int64_t i = 0; i < kCrcPart; i += 8) {
      c0 = __crc32d(c0, load<std::uint64_t>(p + i));
      c1 = __crc32d(c1, load<std::uint64_t>(p + kCrcPart + i));
      c2 = __crc32d(c2, load<std::uint64_t>(p + 2 * kCrcPart + i));
      c3 = __crc32d(c3, load<std::uint64_t>(p + 3 * kCrcPart + i));
    }
    c = gf2_mulmod(c0, shift[3]) ^ gf2_mulmod(c1, shift[2]) ^ gf2_mulmod(c2, shift[1]) ^ c3;
  }
  return crc32_stream(c, p, n);
}
#endif

std::uint32_t crc32(std::uint32_t crc, const void* data, std::int64_t bytes) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  std::uint32_t c = ~crc;
#if FP_ISA_AVX2
  static const bool clmul = cpu_has_pclmul();
  if (bytes >= 64 && clmul) {
    const std::int64_t bulk = bytes & ~std::int64_t{15};
    c = crc32_clmul(c, p, bulk);
    p += bulk;
    bytes -= bulk;
  }
#elif FP_ISA_NEON
  static const bool hw = cpu_has_crc32();
  if (hw) return ~crc32_hw(c, p, bytes);
#endif
  return ~crc32_detail::crc32_tables(c, p, bytes);
}

// ---- FP8 pairs ----------------------------------------------------------------------------------
// An FP8 side is converted exactly to float32 (a 256-entry table) and the pair reduced by the vector
// kernel of its float32 stand-in: every statistic but the ULP distance is a function of the values,
// which are the same. The ULP distance, counted in the FP8 format, is a second pass over the
// original bits: each side's pattern in that format (a table for FP8 and 16-bit sides, one rounding
// for float32 and float64 ones), then their distance. A block the vector kernel declines (a
// non-finite difference) goes to the caller's exact scalar kernel on the original types.

template <typename T>
const float* fp8_decode_table() {
  static const auto table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = static_cast<float>(to_f64(T{static_cast<std::uint8_t>(i)}));
    return t;
  }();
  return table.data();
}

// The FP8 pattern (format `Narrow`) of every value of T: T's own bits when T is Narrow, else the
// value rounded once (to nearest even) as narrow_bits_in rounds it.
template <typename T, typename Narrow>
const std::uint8_t* fp8_pattern_table() {
  static const auto table = [] {
    constexpr int kN = 1 << (8 * sizeof(T));
    std::vector<std::uint8_t> t(kN);
    for (int i = 0; i < kN; ++i) {
      T x;
      if constexpr (sizeof(T) == 1) x = T{static_cast<std::uint8_t>(i)};
      else x = T{static_cast<std::uint16_t>(i)};
      const double v = to_f64(x);
      t[static_cast<std::size_t>(i)] = std::isfinite(v) ? static_cast<std::uint8_t>(narrow_bits_in(
                                                             DTypeOf<Narrow>::value, DTypeOf<T>::value, raw_bits(x), v))
                                                       : 0;
    }
    return t;
  }();
  return table.data();
}

template <typename T, typename Narrow>
struct Fp8Pattern {  // x -> its pattern in Narrow (finite x)
  // float32 and bfloat16 (exact in float32) round on float32 bits, vectorizable; float16 and the
  // other FP8 format through a table of every pattern; float64 once, in float64
  static FP_INLINE std::uint32_t from_f32(float v) {
    if constexpr (std::is_same_v<Narrow, f8e4m3_bits>) return f32_to_f8e4m3_bits(v);
    else return f32_to_f8e5m2_bits(v);
  }
  const std::uint8_t* table = [] {
    if constexpr (sizeof(T) <= 2 && !std::is_same_v<T, Narrow> && !std::is_same_v<T, bf16_bits>)
      return fp8_pattern_table<T, Narrow>();
    else return static_cast<const std::uint8_t*>(nullptr);
  }();
  FP_INLINE std::uint32_t operator()(const T& x) const {
    if constexpr (std::is_same_v<T, Narrow>) return x.x;
    else if constexpr (std::is_same_v<T, bf16_bits>) return from_f32(bits_to_float(static_cast<std::uint32_t>(x.x) << 16));
    else if constexpr (sizeof(T) <= 2) return table[x.x];
    else if constexpr (std::is_same_v<T, float>) return from_f32(x);
    else return static_cast<std::uint32_t>(narrow_bits_in(DTypeOf<Narrow>::value, DTypeOf<T>::value, raw_bits(x),
                                                          static_cast<double>(x)));
  }
};

// (GCC inlines the vector kernel here and cannot tell that it reads only the n decoded elements)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <typename TA, typename TB, bool kTol>
bool fp8_block(ParityAccum& out, const void* a_, const void* b_, std::int64_t n, std::int64_t index0,
               const ParityParams& p, double thr_abs, double thr_rel) {
  using A32 = std::conditional_t<is_fp8_type<TA>, float, TA>;
  using B32 = std::conditional_t<is_fp8_type<TB>, float, TB>;
  const TA* a = static_cast<const TA*>(a_);
  const TB* b = static_cast<const TB*>(b_);
  alignas(64) float abuf[kBlock], bbuf[kBlock];
  const void* a32 = a_;
  const void* b32 = b_;
  if constexpr (is_fp8_type<TA>) {
    const float* t = fp8_decode_table<TA>();
    for (std::int64_t i = 0; i < n; ++i) abuf[i] = t[a[i].x];
    a32 = abuf;
  }
  if constexpr (is_fp8_type<TB>) {
    const float* t = fp8_decode_table<TB>();
    for (std::int64_t i = 0; i < n; ++i) bbuf[i] = t[b[i].x];
    b32 = bbuf;
  }
  if (!pick<A32, B32>(kTol)(out, a32, b32, n, index0, p, thr_abs, thr_rel)) return false;
  // every difference was finite, so every element counts (the exact kernel's rule)
  constexpr bool a_narrower = narrower_dtype(DTypeOf<TA>::value, DTypeOf<TB>::value) == DTypeOf<TA>::value;
  using Narrow = std::conditional_t<a_narrower, TA, TB>;
  const Fp8Pattern<TA, Narrow> pa;
  const Fp8Pattern<TB, Narrow> pb;
  std::uint32_t mx = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    // patterns of the 8-bit narrower format (a wider side rounded to it may be its NaN or inf
    // pattern: magnitudes below 128 all the same, so every sum fits the byte)
    const std::uint32_t u = ulp_distance_of(static_cast<std::uint8_t>(pa(a[i])), static_cast<std::uint8_t>(pb(b[i])));
    mx = u > mx ? u : mx;
  }
  out.max_ulp = mx;
  return true;
}
#pragma GCC diagnostic pop

BlockFn block_fn(DType a, DType b, bool with_tolerance) {
  if (is_fp8(a) || is_fp8(b))
    return FP_DTYPE_SWITCH_ALL(a, TA, [&] {
      return FP_DTYPE_SWITCH_ALL(b, TB, [&]() -> BlockFn {
        if constexpr (is_fp8_type<TA> || is_fp8_type<TB>)
          return with_tolerance ? &fp8_block<TA, TB, true> : &fp8_block<TA, TB, false>;
        else
          return nullptr;  // (never: one side is FP8 here)
      });
    });
  return FP_DTYPE_SWITCH(a, TA, [&] { return FP_DTYPE_SWITCH(b, TB, [&] { return pick<TA, TB>(with_tolerance); }); });
}

}  // namespace
}  // namespace FP_ISA_NAMESPACE
}  // namespace flashparity
FP_ISA_END

namespace flashparity {
namespace FP_ISA_NAMESPACE {
extern const ParityTable parity_table;  // (declared again in cpu_dispatch.cpp, its one user)
const ParityTable parity_table = {&block_fn, &read_probe, &crc32};
}  // namespace FP_ISA_NAMESPACE
}  // namespace flashparity
