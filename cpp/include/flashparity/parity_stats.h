// The state of a parity reduction (ParityAccum), its per-element update, its exact merge, and the
// derived statistics. Host/device: the CPU kernels, the CUDA kernels and ParityStats.merge all use
// these functions, so every path combines partial results the same way.
#pragma once

#include <cmath>
#include <cstdint>

#include "flashparity/common.h"
#include "flashparity/dtype.h"

namespace flashparity {

// |a - b| histogram: [0] exact zero, [1] below 2^-40, [2 + k + 40] for [2^k, 2^(k+1)), k = -40..15,
// [58] at or above 2^16 (infinity included), [59] NaN.
constexpr int kHistBins = 60;
constexpr int kHistMinExp = -40;
constexpr int kHistMaxExp = 16;

FP_HOST_DEVICE FP_INLINE int hist_bin(double abs_diff) {
  if (abs_diff != abs_diff) return 59;
  if (abs_diff == 0.0) return 0;
  // exponent from the bit pattern: exact, and subnormals land in "below 2^-40"
  const int e = static_cast<int>((double_to_bits(abs_diff) >> 52) & 0x7ff) - 1023;
  if (e < kHistMinExp) return 1;
  if (e >= kHistMaxExp) return 58;
  return 2 + e - kHistMinExp;
}

// A float64 sum with a running compensation term (Neumaier): blocks are summed plainly, their
// partial sums are combined through this so the total error does not grow with the block count.
struct CompSum {
  double hi = 0.0;
  double lo = 0.0;

  FP_HOST_DEVICE FP_INLINE void add(double x) {
    const double t = hi + x;
    if (std::isfinite(t)) {  // an infinite or NaN total carries no rounding error to track
      if (std::fabs(hi) >= std::fabs(x)) lo += (hi - t) + x;
      else lo += (x - t) + hi;
    }
    hi = t;
  }
  FP_HOST_DEVICE FP_INLINE void merge(const CompSum& o) {
    add(o.hi);
    lo += o.lo;
  }
  FP_HOST_DEVICE FP_INLINE double value() const { return hi + lo; }
};

// Centered second moments of (a, b) over n elements, merged with Chan et al.'s pairwise update:
// the Pearson correlation stays accurate when the means are large against the spread.
struct Moments {
  double n = 0.0;
  double mean_a = 0.0, mean_b = 0.0;
  double m2a = 0.0, m2b = 0.0, cab = 0.0;

  FP_HOST_DEVICE FP_INLINE void merge(const Moments& o) {
    if (o.n == 0.0) return;
    if (n == 0.0) { *this = o; return; }
    const double nt = n + o.n;
    const double da = o.mean_a - mean_a, db = o.mean_b - mean_b;
    const double f = n * o.n / nt;
    mean_a += da * (o.n / nt);
    mean_b += db * (o.n / nt);
    m2a += o.m2a + da * da * f;
    m2b += o.m2b + db * db * f;
    cab += o.cab + da * db * f;
    n = nt;
  }
};

// The state of a parity reduction over a set of elements, without the histogram (GPU blocks reduce
// this part through shared memory). Indices are flat C-order positions within the compared tensors.
struct ParityCore {
  std::int64_t numel = 0;
  double max_abs = 0.0;             // NaN once any |a-b| is NaN
  std::int64_t max_abs_index = -1;  // first element reaching max_abs (first NaN if any); -1: none
  double max_rel = 0.0;
  std::int64_t max_rel_index = -1;
  CompSum sum_abs, sum_sq, sum_aa, sum_bb, sum_ab;
  Moments mom;
  std::int64_t mismatches = 0;
  std::int64_t nonfinite = 0;  // pairs with a NaN or an infinity on either side, equal infinities included
  std::int64_t equal_inf = 0;  // pairs where both sides are the same infinity: exact matches, left out of the sums
  std::uint64_t max_ulp = 0;
};

// The complete state: the core and the |a-b| histogram.
struct ParityAccum : ParityCore {
  std::int64_t hist[kHistBins] = {};
};

// Does the candidate maximum x (at index xi) replace cur (at cur_i)? NaN beats every number; between
// equal values (or two NaNs) the smaller index wins, so partial maxima merge to the first maximum in
// C order in any merge order (CPU blocks in order, GPU threads interleaved).
FP_HOST_DEVICE FP_INLINE bool max_beats(double x, std::int64_t xi, double cur, std::int64_t cur_i) {
  if (xi < 0) return false;
  if (cur_i < 0) return true;
  const bool xn = x != x, cn = cur != cur;
  if (xn || cn) return xn && (!cn || xi < cur_i);
  return x > cur || (x == cur && xi < cur_i);
}

// Merge `b`, whose indices are offset by `offset`, into `a`: the stats of both element sets together.
// Used for blocks, threads, GPU blocks and ParityStats.merge alike.
FP_HOST_DEVICE inline void accum_merge_core(ParityCore& a, const ParityCore& b, std::int64_t offset) {
  if (b.numel == 0) return;
  const std::int64_t bi = b.max_abs_index < 0 ? -1 : b.max_abs_index + offset;
  if (max_beats(b.max_abs, bi, a.max_abs, a.max_abs_index)) {
    a.max_abs = b.max_abs;
    a.max_abs_index = bi;
  }
  const std::int64_t ri = b.max_rel_index < 0 ? -1 : b.max_rel_index + offset;
  if (max_beats(b.max_rel, ri, a.max_rel, a.max_rel_index)) {
    a.max_rel = b.max_rel;
    a.max_rel_index = ri;
  }
  a.numel += b.numel;
  a.sum_abs.merge(b.sum_abs);
  a.sum_sq.merge(b.sum_sq);
  a.sum_aa.merge(b.sum_aa);
  a.sum_bb.merge(b.sum_bb);
  a.sum_ab.merge(b.sum_ab);
  a.mom.merge(b.mom);
  a.mismatches += b.mismatches;
  a.nonfinite += b.nonfinite;
  a.equal_inf += b.equal_inf;
  if (b.max_ulp > a.max_ulp) a.max_ulp = b.max_ulp;
}

FP_HOST_DEVICE inline void accum_merge(ParityAccum& a, const ParityAccum& b, std::int64_t offset) {
  if (b.numel == 0) return;
  accum_merge_core(a, b, offset);
  for (int i = 0; i < kHistBins; ++i) a.hist[i] += b.hist[i];
}

// Tolerances of the isclose test and the format ULP distances are measured in.
struct ParityParams {
  double atol = 0.0;
  double rtol = 0.0;
  DType narrow = DType::Float32;
};

// Relative difference of one element: |a-b| / |b|, with b = 0 giving 0 when a = 0 and +inf
// otherwise; NaN when the difference is NaN.
FP_HOST_DEVICE FP_INLINE double rel_diff(double av, double bv, double ad) {
  if (ad != ad) return ad;
  if (bv == 0.0) return av == 0.0 ? 0.0 : INFINITY;
  return ad / std::fabs(bv);
}

// torch.isclose(a, b, rtol, atol) with equal_nan=False, evaluated exactly in float64: the bound
// atol + rtol * |b| rounded twice, as NumPy and the CPU kernels round it (nvcc would fuse it into one
// rounding and so decide borderline elements differently; its intrinsics keep the two).
FP_HOST_DEVICE FP_INLINE bool is_close(double av, double bv, double ad, const ParityParams& p) {
  if (av == bv) return true;  // equal infinities match
  if (!std::isfinite(av) || !std::isfinite(bv)) return false;
#if defined(__CUDA_ARCH__)
  return ad <= __dadd_rn(p.atol, __dmul_rn(p.rtol, std::fabs(bv)));
#else
  return ad <= p.atol + p.rtol * std::fabs(bv);
#endif
}

// The running state of one lane that visits elements one at a time in increasing index order: the
// exact reference of every rule (NaN/inf, ties, ULP rounding). The CPU's scalar block kernel and
// each GPU thread run it; its histogram lives with the caller (a local array, or shared memory).
// Moments are shifted by the lane's first summed element and centered when the lane is folded.
//
// Equal infinities (a = b = +inf, or a = b = -inf; masked logits, the LSE of a fully masked row) are
// an exact match: difference 0 (histogram bin 0, ULP 0, never a mismatch), counted in `nonfinite`
// and in `equal_inf`, and left out of the sums and moments, which run over the other elements.
struct ElementAccum {
  std::int64_t n = 0;
  double max_abs = 0.0, max_rel = 0.0;
  std::int64_t max_abs_index = -1, max_rel_index = -1;
  double s_abs = 0, s_sq = 0, s_aa = 0, s_bb = 0, s_ab = 0;
  double ka = 0, kb = 0, sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
  std::int64_t mismatches = 0, nonfinite = 0, equal_inf = 0;
  std::uint64_t max_ulp = 0;

  // Adds element `index` (greater than every index added before) with values av, bv (exact
  // float64) and raw bit patterns ra, rb of types ta, tb. Returns its histogram bin.
  FP_HOST_DEVICE FP_INLINE int add(double av, double bv, std::uint64_t ra, std::uint64_t rb, DType ta, DType tb,
                                   std::int64_t index, const ParityParams& p) {
    if (av == bv && !std::isfinite(av)) {  // the same infinity on both sides (NaN never equals)
      ++n;
      ++nonfinite;
      ++equal_inf;
      if (max_beats(0.0, index, max_abs, max_abs_index)) {  // a zero difference: the maximum only if first
        max_abs = 0.0;
        max_abs_index = index;
      }
      if (max_beats(0.0, index, max_rel, max_rel_index)) {
        max_rel = 0.0;
        max_rel_index = index;
      }
      return 0;
    }
    if (n == equal_inf) {  // the first summed element: the moments' shift
      ka = av;
      kb = bv;
    }
    ++n;
    const double d = av - bv;
    const double ad = std::fabs(d);
    // (ad <= max_abs, both numbers, never beats: indices only grow within an accumulator)
    if (!(ad <= max_abs && max_abs_index >= 0) && max_beats(ad, index, max_abs, max_abs_index)) {
      max_abs = ad;
      max_abs_index = index;
    }
    // The ratio is divided out only where it can reach the running maximum: ad < max_rel * |b|
    // with a 2^-50 slack (the product rounds once) proves ad / |b| <= max_rel, which a later index
    // cannot beat (indices only grow within an accumulator); a product past DBL_MAX skips rightly.
    // NaN, a zero b and no maximum yet fail the test and take the division.
    if (!(ad < max_rel * std::fabs(bv) * (1.0 - 0x1p-50))) {
      const double r = rel_diff(av, bv, ad);
      if (max_beats(r, index, max_rel, max_rel_index)) {
        max_rel = r;
        max_rel_index = index;
      }
    }
    s_abs += ad;
    s_sq += d * d;
    s_aa += av * av;
    s_bb += bv * bv;
    s_ab += av * bv;
    const double xa = av - ka, xb = bv - kb;
    sa += xa;
    sb += xb;
    saa += xa * xa;
    sbb += xb * xb;
    sab += xa * xb;
    if (!is_close(av, bv, ad, p)) ++mismatches;
    if (std::isfinite(av) && std::isfinite(bv)) {
      const std::uint64_t u = ulp_distance_bits(narrow_bits_in(p.narrow, ta, ra, av), narrow_bits_in(p.narrow, tb, rb, bv),
                                                dtype_size(p.narrow) * 8);
      if (u > max_ulp) max_ulp = u;
    } else {
      ++nonfinite;
    }
    return hist_bin(ad);
  }

  // Folds the lane into the core of a ParityAccum (the caller owns the histogram).
  FP_HOST_DEVICE FP_INLINE void fold_into(ParityCore& acc) const {
    acc.numel = n;
    acc.max_abs = max_abs;
    acc.max_abs_index = max_abs_index;
    acc.max_rel = max_rel;
    acc.max_rel_index = max_rel_index;
    acc.sum_abs = CompSum{s_abs, 0.0};
    acc.sum_sq = CompSum{s_sq, 0.0};
    acc.sum_aa = CompSum{s_aa, 0.0};
    acc.sum_bb = CompSum{s_bb, 0.0};
    acc.sum_ab = CompSum{s_ab, 0.0};
    acc.mismatches = mismatches;
    acc.nonfinite = nonfinite;
    acc.equal_inf = equal_inf;
    acc.max_ulp = max_ulp;
    acc.mom = Moments{};
    if (n > equal_inf) {
      const double nn = static_cast<double>(n - equal_inf);
      acc.mom.n = nn;
      acc.mom.mean_a = ka + sa / nn;
      acc.mom.mean_b = kb + sb / nn;
      acc.mom.m2a = saa - sa * sa / nn;
      acc.mom.m2b = sbb - sb * sb / nn;
      acc.mom.cab = sab - sa * sb / nn;
    }
  }
};

// Scalar reduction of a contiguous block (global indices index0..): the path for blocks holding a
// non-finite difference, and the reference the vector kernels match.
template <typename TA, typename TB>
inline void accum_block_scalar(ParityAccum& out, const TA* a, const TB* b, std::int64_t n, std::int64_t index0,
                               const ParityParams& p) {
  ElementAccum e;
  ParityAccum acc;
  for (std::int64_t i = 0; i < n; ++i)
    ++acc.hist[e.add(to_f64(a[i]), to_f64(b[i]), raw_bits(a[i]), raw_bits(b[i]), DTypeOf<TA>::value,
                     DTypeOf<TB>::value, index0 + i, p)];
  e.fold_into(acc);
  accum_merge(out, acc, 0);
}

// The statistics a user reads, derived from a ParityAccum.
struct ParityResult {
  double max_abs_diff, max_rel_diff, cosine_sim, mean_abs_diff, rmse, snr_db, pcc;
};

// √(x·y) for x, y > 0: one rounding fewer than √x·√y while the product stays in range, so that
// cos(x, -x) is exactly -1 and identical inputs give a pcc of exactly 1 (sqrt(fl(x * x)) is x).
FP_HOST_DEVICE FP_INLINE double sqrt_product(double x, double y) {
  const double p = x * y;
  return (p > 2.2250738585072014e-308 && p < INFINITY) ? std::sqrt(p) : std::sqrt(x) * std::sqrt(y);
}

FP_HOST_DEVICE inline ParityResult accum_finalize(const ParityAccum& s) {
  ParityResult r{};
  r.max_abs_diff = s.max_abs;
  r.max_rel_diff = s.max_rel;
  const double sq = s.sum_sq.value();
  // The means run over the summed elements (equal infinities set aside); when every element is an
  // equal infinity, every difference is zero.
  const std::int64_t summed = s.numel - s.equal_inf;
  if (summed == 0 && s.numel > 0) {
    r.mean_abs_diff = 0.0;
    r.rmse = 0.0;
  } else {
    const double n = static_cast<double>(summed);
    r.mean_abs_diff = s.sum_abs.value() / n;
    r.rmse = std::sqrt(sq / n);
  }
  const double bb = s.sum_bb.value();
  r.snr_db = sq == 0.0 ? (bb == bb ? INFINITY : NAN) : 10.0 * std::log10(bb / sq);
  if (s.nonfinite > s.equal_inf) {  // a NaN, or an infinity against anything but itself
    r.cosine_sim = NAN;
    r.pcc = NAN;
    return r;
  }
  // cosine: Σab / (|a||b|). Near 1, 1 - cos is taken from the accumulated squared differences,
  // 1 - cos = (Σ(a-b)² - (|a| - |b|)²) / (2|a||b|), which keeps its relative accuracy when tiny;
  // that form is used where its error bound beats the direct quotient's.
  const double aa = s.sum_aa.value();
  const double na = std::sqrt(aa), nb = std::sqrt(bb);
  if (aa == 0.0 && bb == 0.0) r.cosine_sim = 1.0;
  else if (aa == 0.0 || bb == 0.0) r.cosine_sim = 0.0;
  else {
    const double dn = na - nb;
    const double denom = 2.0 * na * nb;
    double c;
    if (sq + dn * dn < denom) c = 1.0 - (sq - dn * dn) / denom;
    else c = s.sum_ab.value() / sqrt_product(aa, bb);
    r.cosine_sim = c > 1.0 ? 1.0 : (c < -1.0 ? -1.0 : c);
  }
  // Pearson: cosine of the centered vectors; a constant input gives 1 only when a and b are
  // identical (never a silent pass).
  const double va = s.mom.m2a, vb = s.mom.m2b;
  if (va <= 0.0 || vb <= 0.0) {
    r.pcc = (s.max_abs == 0.0) ? 1.0 : 0.0;
  } else {
    const double c = s.mom.cab / sqrt_product(va, vb);
    r.pcc = c > 1.0 ? 1.0 : (c < -1.0 ? -1.0 : c);
  }
  return r;
}

}  // namespace flashparity
