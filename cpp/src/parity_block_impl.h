// The vectorized parity block kernel, written once with GCC vector extensions (8 float64 lanes) and
// compiled once per ISA (parity_block_{scalar,avx2,avx512}.cpp, each with its own -m flags).
// Every ISA runs the same lane layout and the same operations (-ffp-contract=off), so results are
// bit-identical whichever level the CPU dispatches to.
//
// Included only by those translation units, inside an ISA-specific namespace: nothing here may have
// external linkage shared between them (an inline function compiled with AVX-512 must never be the
// copy a scalar caller gets).
#pragma once

#include <cstdint>
#include <cstring>

#include "flashparity/dtype.h"
#include "flashparity/parity_stats.h"
#include "parity_cpu.h"

#ifndef FP_ISA_NAMESPACE
#error "define FP_ISA_NAMESPACE before including parity_block_impl.h"
#endif

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
typedef _Float16 vh __attribute__((vector_size(16)));

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

// Eight elements as float64 (exact) and their raw bit patterns widened to 64-bit lanes.
template <typename T> struct Lanes;

template <> struct Lanes<double> {
  static FP_INLINE vd value(const double* p) { return load<vd>(p); }
  static FP_INLINE vul bits(const double* p) { return load<vul>(p); }
};
template <> struct Lanes<float> {
  static FP_INLINE vd value(const float* p) { return __builtin_convertvector(load<vf>(p), vd); }
  static FP_INLINE vul bits(const float* p) { return __builtin_convertvector(load<vu32>(p), vul); }
};
template <> struct Lanes<half_bits> {
  static FP_INLINE vd value(const half_bits* p) {
    const vf f = __builtin_convertvector(bitcast<vh>(load<vu16>(p)), vf);
    return __builtin_convertvector(f, vd);
  }
  static FP_INLINE vul bits(const half_bits* p) { return __builtin_convertvector(load<vu16>(p), vul); }
};
template <> struct Lanes<bf16_bits> {
  static FP_INLINE vd value(const bf16_bits* p) {
    const vu32 u = __builtin_convertvector(load<vu16>(p), vu32) << 16;
    return __builtin_convertvector(bitcast<vf>(u), vd);
  }
  static FP_INLINE vul bits(const bf16_bits* p) { return __builtin_convertvector(load<vu16>(p), vul); }
};

// Ordered integers (see ordered_from_bits) of sign-magnitude patterns `u` of width `w` bits.
FP_INLINE vl ordered_lanes(vul u, int w) {
  const vul sign = (u >> (w - 1)) & 1u;
  const vl mag = bitcast<vl>(u & ((std::uint64_t{1} << (w - 1)) - 1));
  return sign != 0 ? -mag : mag;
}

// Ordered integers of eight finite elements of T after rounding to `Narrow`.
template <typename T, typename Narrow>
FP_INLINE vl ordered_narrow(const T* p, vd v) {
  constexpr DType own = DTypeOf<T>::value, narrow = DTypeOf<Narrow>::value;
  if constexpr (own == narrow) {
    return ordered_lanes(Lanes<T>::bits(p), dtype_size(own) * 8);
  } else if constexpr (own == DType::Float64 && narrow == DType::Float32) {
    const vf f = __builtin_convertvector(v, vf);  // one rounding, to nearest even
    return ordered_lanes(__builtin_convertvector(bitcast<vu32>(f), vul), 32);
  } else if constexpr (own == DType::Float32 && narrow == DType::Float16) {
    const vh h = __builtin_convertvector(load<vf>(p), vh);  // one rounding, to nearest even
    return ordered_lanes(__builtin_convertvector(bitcast<vu16>(h), vul), 16);
  } else if constexpr (own == DType::Float32 && narrow == DType::BFloat16) {
    const vu32 u = load<vu32>(p);  // finite: round to nearest even on the bit pattern
    const vu32 r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return ordered_lanes(__builtin_convertvector(r, vul), 16);
  } else {  // rare pairs (float64 vs 16-bit formats, float16 vs bfloat16): exact scalar rounding
    vl o;
    for (int j = 0; j < W; ++j) o[j] = ordered_in(narrow, own, raw_bits(p[j]), v[j]);
    return o;
  }
}

FP_INLINE vd vabs(vd x) { return bitcast<vd>(bitcast<vl>(x) & 0x7fffffffffffffffLL); }

// One block of n contiguous elements into the freshly constructed `out`. Returns false, leaving
// `out` untouched, when any difference is not finite: the caller then reduces the block with the
// exact scalar kernel (NaN/inf rules).
template <typename TA, typename TB, typename Narrow>
bool block_kernel(ParityAccum& out, const void* a_, const void* b_, std::int64_t n, std::int64_t index0,
                  const ParityParams& p) {
  const TA* a = static_cast<const TA*>(a_);  // [n]
  const TB* b = static_cast<const TB*>(b_);  // [n]
  if (n <= 0) return true;
  const double ka = to_f64(a[0]), kb = to_f64(b[0]);  // moment shift: the block's first element

  const vd zero = {};
  vd s_abs = zero, s_sq = zero, s_aa = zero, s_bb = zero, s_ab = zero;
  vd sa = zero, sb = zero, saa = zero, sbb = zero, sab = zero;
  vd vmx = zero - 1.0, vrel = zero - 1.0;
  vl imx = {}, irel = {}, mism = {}, finite_ok = zero == zero;
  vul ulp = {};
  vl idx;
  for (int j = 0; j < W; ++j) idx[j] = index0 + j;
  const vd vka = zero + ka, vkb = zero + kb;
  const double maxfin = 1.7976931348623157e308;
  std::int64_t hist[kHistBins] = {};

  const std::int64_t n8 = n - n % W;
  for (std::int64_t i = 0; i < n8; i += W) {
    const vd av = Lanes<TA>::value(a + i), bv = Lanes<TB>::value(b + i);
    const vd d = av - bv;
    const vd ad = vabs(d);
    finite_ok &= ad <= maxfin;
    const vl gt = ad > vmx;  // strictly: the earliest index of a lane's maximum is kept
    vmx = gt ? ad : vmx;
    imx = gt ? idx : imx;
    const vd babs = vabs(bv);
    const vd q = ((babs == 0.0) & (ad == 0.0)) ? zero : ad / babs;
    const vl gr = q > vrel;
    vrel = gr ? q : vrel;
    irel = gr ? idx : irel;
    s_abs += ad;
    s_sq += d * d;
    s_aa += av * av;
    s_bb += bv * bv;
    s_ab += av * bv;
    const vd xa = av - vka, xb = bv - vkb;
    sa += xa;
    sb += xb;
    saa += xa * xa;
    sbb += xb * xb;
    sab += xa * xb;
    mism -= ad > p.atol + p.rtol * babs;  // finite here: isclose is the plain comparison
    const vl oa = ordered_narrow<TA, Narrow>(a + i, av), ob = ordered_narrow<TB, Narrow>(b + i, bv);
    const vul dist = oa >= ob ? bitcast<vul>(oa) - bitcast<vul>(ob) : bitcast<vul>(ob) - bitcast<vul>(oa);
    ulp = dist > ulp ? dist : ulp;
    // histogram bin from the exponent field (ad is finite and >= 0 here)
    const vl e = bitcast<vl>(ad) >> 52;
    vl bin = e - (1023 + kHistMinExp - 2);
    bin = bin < 1 ? vl{} + 1 : bin;
    bin = e >= 1023 + kHistMaxExp ? vl{} + 58 : bin;
    bin = ad == 0.0 ? vl{} : bin;
    for (int j = 0; j < W; ++j) ++hist[bin[j]];
    idx += W;
  }
  for (int j = 0; j < W; ++j)
    if (!finite_ok[j]) return false;

  // Lane maxima (ties resolve to the smaller index), then the tail (fewer than W elements, all with
  // larger indices) in order. Locals only: no ParityAccum is constructed in an ISA-specific unit.
  double mx = 0, rel = 0;
  std::int64_t mx_i = -1, rel_i = -1, mismatches = 0;
  std::uint64_t max_ulp = 0;
  for (int j = 0; j < W && n8 > 0; ++j) {
    if (max_beats(vmx[j], mx, mx_i) || (vmx[j] == mx && imx[j] < mx_i)) {
      mx = vmx[j];
      mx_i = imx[j];
    }
    if (max_beats(vrel[j], rel, rel_i) || (vrel[j] == rel && irel[j] < rel_i)) {
      rel = vrel[j];
      rel_i = irel[j];
    }
    mismatches += mism[j];
    if (ulp[j] > max_ulp) max_ulp = ulp[j];
  }
  double t_abs = 0, t_sq = 0, t_aa = 0, t_bb = 0, t_ab = 0, t_sa = 0, t_sb = 0, t_saa = 0, t_sbb = 0, t_sab = 0;
  for (std::int64_t i = n8; i < n; ++i) {
    const double av = to_f64(a[i]), bv = to_f64(b[i]);
    const double d = av - bv, ad = d < 0 ? -d : d;
    if (!(ad <= maxfin)) return false;
    if (max_beats(ad, mx, mx_i)) {
      mx = ad;
      mx_i = index0 + i;
    }
    const double q = rel_diff(av, bv, ad);
    if (max_beats(q, rel, rel_i)) {
      rel = q;
      rel_i = index0 + i;
    }
    t_abs += ad;
    t_sq += d * d;
    t_aa += av * av;
    t_bb += bv * bv;
    t_ab += av * bv;
    const double xa = av - ka, xb = bv - kb;
    t_sa += xa;
    t_sb += xb;
    t_saa += xa * xa;
    t_sbb += xb * xb;
    t_sab += xa * xb;
    if (!is_close(av, bv, ad, p)) ++mismatches;
    const std::uint64_t u = ordered_distance(ordered_in(p.narrow, DTypeOf<TA>::value, raw_bits(a[i]), av),
                                             ordered_in(p.narrow, DTypeOf<TB>::value, raw_bits(b[i]), bv));
    if (u > max_ulp) max_ulp = u;
    ++hist[hist_bin(ad)];
  }

  // lane totals in a fixed order (lane 0..7, then the tail)
  auto total = [](vd v, double tail) {
    double s = 0;
    for (int j = 0; j < W; ++j) s += v[j];
    return s + tail;
  };
  ParityAccum& r = out;  // `out` arrives freshly constructed; fill it in place
  r.numel = n;
  r.max_abs = mx;
  r.max_abs_index = mx_i;
  r.max_rel = rel;
  r.max_rel_index = rel_i;
  r.mismatches = mismatches;
  r.max_ulp = max_ulp;
  r.sum_abs.hi = total(s_abs, t_abs);
  r.sum_sq.hi = total(s_sq, t_sq);
  r.sum_aa.hi = total(s_aa, t_aa);
  r.sum_bb.hi = total(s_bb, t_bb);
  r.sum_ab.hi = total(s_ab, t_ab);
  const double nn = static_cast<double>(n);
  const double ssa = total(sa, t_sa), ssb = total(sb, t_sb);
  r.mom.n = nn;
  r.mom.mean_a = ka + ssa / nn;
  r.mom.mean_b = kb + ssb / nn;
  r.mom.m2a = total(saa, t_saa) - ssa * ssa / nn;
  r.mom.m2b = total(sbb, t_sbb) - ssb * ssb / nn;
  r.mom.cab = total(sab, t_sab) - ssa * ssb / nn;
  for (int i = 0; i < kHistBins; ++i) r.hist[i] = hist[i];
  return true;
}

template <typename TA, typename TB>
BlockFn pick_narrow() {
  constexpr DType narrow = narrower_dtype(DTypeOf<TA>::value, DTypeOf<TB>::value) == DTypeOf<TA>::value
                               ? DTypeOf<TA>::value
                               : DTypeOf<TB>::value;
  if constexpr (narrow == DTypeOf<TA>::value) return &block_kernel<TA, TB, TA>;
  else return &block_kernel<TA, TB, TB>;
}

}  // namespace

BlockFn block_fn(DType a, DType b) {
  return FP_DTYPE_SWITCH(a, TA, [&] { return FP_DTYPE_SWITCH(b, TB, [&] { return pick_narrow<TA, TB>(); }); });
}

}  // namespace FP_ISA_NAMESPACE
}  // namespace flashparity
