// CPU attention backward, written once and compiled per ISA like the forward: each per-ISA unit
// includes this file after isa/attention_impl.h (whose helpers it uses: row loads, key ranges,
// softcap) and exports its AttentionBackwardTable. The math is flashparity/attention_backward.h's.
//
// flash2 (FlashAttention-2's backward) runs two passes, each deterministic and each element written
// by one task, so the gradients are the same bits for any thread count:
//   dK/dV: a task owns kBwdBc keys of one (batch, kv head) and visits every query row of the group's
//          heads that sees one of them, recomputing P = exp(Z − lse) from the forward's lse and
//          D = dout · out per row;
//   dQ:    a task owns kBwdBr query rows of one (batch, head) and visits the key tiles they see.
// The scores and dP are computed twice (once per pass) instead of accumulating dQ across tasks.
// naive materializes whole rows with its own softmax (max and sum over every visible key, not the
// lse), per (batch, kv head) task. Both take D = dout · out from the forward's output as given (in
// the inputs' dtype): the D every kernel of that dtype works with, so the naive kernel is the
// baseline of FlashAttention-2's rule in that dtype (Σ_j P dP in float32 would be a more precise
// D than any low-precision pipeline has, and the rule would fail correct kernels).
//
// Accumulation in float32 for float32/float16/bfloat16 inputs, float64 for float64; every product
// of a masked pair is skipped, so masked keys get exactly 0 whatever the values around them.

#include "cpu/attention_backward_cpu.h"
#include "flashparity/attention_backward.h"

#ifndef FP_ISA_NAMESPACE
#error "include isa/attention_impl.h (after defining FP_ISA and FP_ISA_NAMESPACE) before attention_backward_impl.h"
#endif

FP_ISA_BEGIN
namespace flashparity {
namespace FP_ISA_NAMESPACE {
namespace {

constexpr std::int64_t kBwdBr = 64;  // query rows per dQ task and per chunk of the other passes
constexpr std::int64_t kBwdBc = 64;  // keys per dK/dV task and per tile of the dQ pass

// A chunk of query rows [i0, i0 + n) of head h: Q, dout, D = dout · out, the lse (flash2) and the
// key ranges.
template <typename T, typename Acc>
struct QueryChunk {
  std::int64_t i0 = 0, n = 0, D = 0;
  std::vector<Acc> q, dout, o, dsum, lse;
  std::vector<KeyRange> kr;

  void load(const AttnBwdParams& bp, std::int64_t b, std::int64_t h, std::int64_t i0_, std::int64_t n_,
            bool with_lse) {
    const AttnParams& p = bp.fwd;
    i0 = i0_;
    n = n_;
    D = p.head_dim;
    q.resize(static_cast<std::size_t>(n * D));
    dout.resize(q.size());
    o.resize(q.size());
    dsum.assign(static_cast<std::size_t>(n), Acc(0));
    lse.assign(static_cast<std::size_t>(n), Acc(0));
    kr.resize(static_cast<std::size_t>(n));
    load_rows<T, Acc>(p.q, b, h, i0, n, i0 + n, D, q.data(), D);
    load_rows<T, Acc>(bp.dout, b, h, i0, n, i0 + n, D, dout.data(), D);
    load_rows<T, Acc>(bp.out, b, h, i0, n, i0 + n, D, o.data(), D);
    for (std::int64_t i = 0; i < n; ++i) {
      kr[i] = key_range(i0 + i, p);
      Acc s = 0;
      for (std::int64_t d = 0; d < D; ++d) s += dout[i * D + d] * o[i * D + d];
      dsum[i] = s;
      if (with_lse) lse[i] = static_cast<Acc>(lse_at(bp, b, h, i0 + i));
    }
  }
};

// The keys [j0, j0 + n) of kv head hk: rows (for dK's and dQ's products) and transposed (for the
// score and dP products, which run over keys in the inner loop).
template <typename T, typename Acc>
struct KeyTile {
  std::int64_t j0 = 0, n = 0, D = 0;
  std::vector<Acc> k, kt, vt, stage;

  void load(const AttnParams& p, std::int64_t b, std::int64_t hk, std::int64_t j0_, std::int64_t n_) {
    j0 = j0_;
    n = n_;
    D = p.head_dim;
    k.resize(static_cast<std::size_t>(n * D));
    kt.resize(static_cast<std::size_t>(D * n));
    vt.resize(kt.size());
    load_rows<T, Acc>(p.k, b, hk, j0, n, p.seqlen_k, D, k.data(), D, &p);
    load_rows_t<T, Acc>(p.v, b, hk, j0, n, p.seqlen_k, D, D, vt.data(), n, stage, &p);
    for (std::int64_t d = 0; d < D; ++d)
      for (std::int64_t j = 0; j < n; ++j) kt[d * n + j] = k[j * D + d];
  }
};

// out[i][j] = Σ_d x[i][d] yt[d][j] for i < ni, j < nj.
template <typename Acc>
void products(const Acc* x, const Acc* yt, std::int64_t ni, std::int64_t nj, std::int64_t D, Acc* out) {
  for (std::int64_t i = 0; i < ni; ++i) {
    Acc* __restrict row = out + i * nj;
    for (std::int64_t j = 0; j < nj; ++j) row[j] = Acc(0);
    for (std::int64_t d = 0; d < D; ++d) {
      const Acc xd = x[i * D + d];
      const Acc* __restrict y = yt + d * nj;
      for (std::int64_t j = 0; j < nj; ++j) row[j] += xd * y[j];
    }
  }
}

// The visible keys of chunk row i within the tile, as tile columns [lo, hi).
template <typename T, typename Acc>
FP_INLINE KeyRange tile_cols(const QueryChunk<T, Acc>& qc, std::int64_t i, const KeyTile<T, Acc>& kt) {
  const std::int64_t lo = std::clamp<std::int64_t>(qc.kr[i].lo - kt.j0, 0, kt.n);
  return {lo, std::clamp<std::int64_t>(qc.kr[i].hi - kt.j0, lo, kt.n)};
}

// P and dS of a chunk against a key tile: p[i][j] = exp(Z − lse_i), ds[i][j] = dS (0 outside each
// row's visible keys). `s` and `dp` are scratch of ni x nj.
template <typename T, typename Acc>
void probs_and_dscores(const AttnParams& p, Acc slope, const QueryChunk<T, Acc>& qc, const KeyTile<T, Acc>& kt,
                       std::vector<Acc>& s, std::vector<Acc>& dp, std::vector<Acc>& prob, std::vector<Acc>& ds) {
  const std::int64_t ni = qc.n, nj = kt.n, D = qc.D;
  const std::size_t cells = static_cast<std::size_t>(ni * nj);
  s.resize(cells);
  dp.resize(cells);
  prob.assign(cells, Acc(0));
  ds.assign(cells, Acc(0));
  products(qc.q.data(), kt.kt.data(), ni, nj, D, s.data());
  products(qc.dout.data(), kt.vt.data(), ni, nj, D, dp.data());
  const Acc scale = static_cast<Acc>(p.scale), cap = static_cast<Acc>(p.softcap);
  for (std::int64_t i = 0; i < ni; ++i) {
    const KeyRange c = tile_cols(qc, i, kt);
    const std::int64_t diag = qc.i0 + i + p.seqlen_k - p.seqlen_q;
    for (std::int64_t j = c.lo; j < c.hi; ++j) {
      const Acc t = apply_softcap(s[i * nj + j] * scale, cap);
      const std::int64_t key = kt.j0 + j;
      const Acc z = slope != Acc(0) ? t - slope * static_cast<Acc>(diag > key ? diag - key : key - diag) : t;
      const Acc pr = backward_prob(z, qc.lse[i]);
      prob[i * nj + j] = pr;
      ds[i * nj + j] = backward_dscore(pr, dp[i * nj + j], qc.dsum[i], t, cap);
    }
  }
}

// Writes n rows [n][D] of Acc as rows s0.. of head h of a contiguous [batch, seqlen, heads, D] output.
template <typename T, typename Acc>
void store_grad_rows(void* dst, std::int64_t seqlen, std::int64_t heads, std::int64_t b, std::int64_t h,
                     std::int64_t s0, std::int64_t n, std::int64_t D, const Acc* rows) {
  for (std::int64_t r = 0; r < n; ++r) {
    T* out = static_cast<T*>(dst) + ((b * seqlen + s0 + r) * heads + h) * D;
    for (std::int64_t d = 0; d < D; ++d) out[d] = from_f64<T>(static_cast<double>(rows[r * D + d]));
  }
}

struct RowSpan {
  std::int64_t lo, hi;
};

// The query rows [lo, hi) that see at least one of the keys [j0, j1) (key_range's bounds are
// non-decreasing in the row: a contiguous range, found by bisection).
FP_INLINE RowSpan rows_seeing_keys(const AttnParams& p, std::int64_t j0, std::int64_t j1) {
  std::int64_t a = 0, e = p.seqlen_q;  // first row whose hi > j0
  while (a < e) {
    const std::int64_t m = a + (e - a) / 2;
    if (key_range(m, p).hi > j0) e = m;
    else a = m + 1;
  }
  std::int64_t lo = a;
  a = lo;
  e = p.seqlen_q;  // first row whose lo >= j1
  while (a < e) {
    const std::int64_t m = a + (e - a) / 2;
    if (key_range(m, p).lo >= j1) e = m;
    else a = m + 1;
  }
  return {lo, a};
}

// flash2, pass 1: dK and dV of keys [j0, j0 + n) of kv head hk.
template <typename T, typename Acc>
void flash2_dkdv_task(const AttnBwdParams& bp, std::int64_t b, std::int64_t hk, std::int64_t j0, std::int64_t n) {
  const AttnParams& p = bp.fwd;
  const std::int64_t D = p.head_dim, group = p.heads_q / p.heads_kv;
  const Acc scale = static_cast<Acc>(p.scale);
  KeyTile<T, Acc> kt;
  kt.load(p, b, hk, j0, n);
  std::vector<Acc> dk(static_cast<std::size_t>(n * D), Acc(0)), dv(dk.size(), Acc(0));
  std::vector<Acc> s, dp, prob, ds;
  QueryChunk<T, Acc> qc;
  const RowSpan rows = rows_seeing_keys(p, j0, j0 + n);
  for (std::int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const Acc slope = static_cast<Acc>(alibi_slope(p, b, h));
    for (std::int64_t i0 = rows.lo; i0 < rows.hi; i0 += kBwdBr) {
      qc.load(bp, b, h, i0, std::min(kBwdBr, rows.hi - i0), true);
      probs_and_dscores(p, slope, qc, kt, s, dp, prob, ds);
      for (std::int64_t i = 0; i < qc.n; ++i) {
        const KeyRange c = tile_cols(qc, i, kt);
        const Acc* __restrict qi = qc.q.data() + i * D;
        const Acc* __restrict gi = qc.dout.data() + i * D;
        for (std::int64_t j = c.lo; j < c.hi; ++j) {
          const Acc pr = prob[i * n + j], dsc = scale * ds[i * n + j];
          Acc* __restrict dvj = dv.data() + j * D;
          Acc* __restrict dkj = dk.data() + j * D;
          for (std::int64_t d = 0; d < D; ++d) dvj[d] += pr * gi[d];
          for (std::int64_t d = 0; d < D; ++d) dkj[d] += dsc * qi[d];
        }
      }
    }
  }
  store_grad_rows<T, Acc>(bp.dk, p.seqlen_k, p.heads_kv, b, hk, j0, n, D, dk.data());
  store_grad_rows<T, Acc>(bp.dv, p.seqlen_k, p.heads_kv, b, hk, j0, n, D, dv.data());
}

// flash2, pass 2: dQ of query rows [i0, i0 + n) of head h.
template <typename T, typename Acc>
void flash2_dq_task(const AttnBwdParams& bp, std::int64_t b, std::int64_t h, std::int64_t i0, std::int64_t n) {
  const AttnParams& p = bp.fwd;
  const std::int64_t D = p.head_dim, hk = h / (p.heads_q / p.heads_kv);
  const Acc scale = static_cast<Acc>(p.scale), slope = static_cast<Acc>(alibi_slope(p, b, h));
  QueryChunk<T, Acc> qc;
  qc.load(bp, b, h, i0, n, true);
  std::vector<Acc> dq(static_cast<std::size_t>(n * D), Acc(0));
  std::vector<Acc> s, dp, prob, ds;
  KeyTile<T, Acc> kt;
  const TileSpan tiles = row_block_key_tiles(i0, n, p, kBwdBc);
  for (std::int64_t t = tiles.begin; t < tiles.end; ++t) {
    const std::int64_t j0 = t * kBwdBc, nj = std::min(kBwdBc, p.seqlen_k - j0);
    kt.load(p, b, hk, j0, nj);
    probs_and_dscores(p, slope, qc, kt, s, dp, prob, ds);
    for (std::int64_t i = 0; i < n; ++i) {
      const KeyRange c = tile_cols(qc, i, kt);
      Acc* __restrict dqi = dq.data() + i * D;
      for (std::int64_t j = c.lo; j < c.hi; ++j) {
        const Acc dsc = scale * ds[i * nj + j];
        const Acc* __restrict kj = kt.k.data() + j * D;
        for (std::int64_t d = 0; d < D; ++d) dqi[d] += dsc * kj[d];
      }
    }
  }
  store_grad_rows<T, Acc>(bp.dq, p.seqlen_q, p.heads_q, b, h, i0, n, D, dq.data());
}

// naive: every gradient of kv head hk of batch b and of its group's query heads, rows of whole
// keys at a time, with its own softmax over each row.
template <typename T, typename Acc>
void naive_task(const AttnBwdParams& bp, std::int64_t b, std::int64_t hk, std::int64_t, std::int64_t) {
  const AttnParams& p = bp.fwd;
  const std::int64_t D = p.head_dim, Sk = p.seqlen_k, group = p.heads_q / p.heads_kv;
  const Acc scale = static_cast<Acc>(p.scale), cap = static_cast<Acc>(p.softcap);
  KeyTile<T, Acc> keys;  // all of them
  keys.load(p, b, hk, 0, Sk);
  std::vector<Acc> dk(static_cast<std::size_t>(Sk * D), Acc(0)), dv(dk.size(), Acc(0));
  std::vector<Acc> s, t, dp, dq;
  QueryChunk<T, Acc> qc;
  for (std::int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const Acc slope = static_cast<Acc>(alibi_slope(p, b, h));
    for (std::int64_t i0 = 0; i0 < p.seqlen_q; i0 += kBwdBr) {
      const std::int64_t ni = std::min(kBwdBr, p.seqlen_q - i0);
      qc.load(bp, b, h, i0, ni, false);
      s.resize(static_cast<std::size_t>(ni * Sk));
      t.resize(s.size());
      dp.resize(s.size());
      dq.assign(static_cast<std::size_t>(ni * D), Acc(0));
      products(qc.q.data(), keys.kt.data(), ni, Sk, D, s.data());
      products(qc.dout.data(), keys.vt.data(), ni, Sk, D, dp.data());
      for (std::int64_t i = 0; i < ni; ++i) {
        const KeyRange c = tile_cols(qc, i, keys);
        Acc* __restrict si = s.data() + i * Sk;  // scores, then P
        Acc* __restrict ti = t.data() + i * Sk;
        const Acc* __restrict dpi = dp.data() + i * Sk;
        const std::int64_t diag = i0 + i + Sk - p.seqlen_q;
        Acc mx = -INFINITY;
        for (std::int64_t j = c.lo; j < c.hi; ++j) {
          ti[j] = apply_softcap(si[j] * scale, cap);
          si[j] = slope != Acc(0) ? ti[j] - slope * static_cast<Acc>(diag > j ? diag - j : j - diag) : ti[j];
          mx = si[j] > mx ? si[j] : mx;
        }
        Acc l = 0;
        for (std::int64_t j = c.lo; j < c.hi; ++j) {
          si[j] = std::exp(si[j] - mx);
          l += si[j];
        }
        for (std::int64_t j = c.lo; j < c.hi; ++j) si[j] /= l;
        const Acc dsum = qc.dsum[i];
        const Acc* __restrict qi = qc.q.data() + i * D;
        const Acc* __restrict gi = qc.dout.data() + i * D;
        Acc* __restrict dqi = dq.data() + i * D;
        for (std::int64_t j = c.lo; j < c.hi; ++j) {
          const Acc dsc = scale * backward_dscore(si[j], dpi[j], dsum, ti[j], cap);
          const Acc pr = si[j];
          Acc* __restrict dvj = dv.data() + j * D;
          Acc* __restrict dkj = dk.data() + j * D;
          const Acc* __restrict kj = keys.k.data() + j * D;
          for (std::int64_t d = 0; d < D; ++d) dvj[d] += pr * gi[d];
          for (std::int64_t d = 0; d < D; ++d) dkj[d] += dsc * qi[d];
          for (std::int64_t d = 0; d < D; ++d) dqi[d] += dsc * kj[d];
        }
      }
      store_grad_rows<T, Acc>(bp.dq, p.seqlen_q, p.heads_q, b, h, i0, ni, D, dq.data());
    }
  }
  store_grad_rows<T, Acc>(bp.dk, Sk, p.heads_kv, b, hk, 0, Sk, D, dk.data());
  store_grad_rows<T, Acc>(bp.dv, Sk, p.heads_kv, b, hk, 0, Sk, D, dv.data());
}

template <typename T>
using AccOf = std::conditional_t<std::is_same_v<T, double>, double, float>;

AttnBwdTaskFn backward_task_fn(AttnBwdKind kind, DType dtype) {
  const auto pick = [&](auto tag) -> AttnBwdTaskFn {
    using T = decltype(tag);
    using Acc = AccOf<T>;
    switch (kind) {
      case AttnBwdKind::Flash2DkDv: return &flash2_dkdv_task<T, Acc>;
      case AttnBwdKind::Flash2Dq: return &flash2_dq_task<T, Acc>;
      default: return &naive_task<T, Acc>;
    }
  };
  switch (dtype) {
    case DType::Float64: return pick(double{});
    case DType::Float32: return pick(float{});
    case DType::Float16: return pick(half_bits{});
    case DType::BFloat16: return pick(bf16_bits{});
    default: return nullptr;
  }
}

}  // namespace
}  // namespace FP_ISA_NAMESPACE
}  // namespace flashparity
FP_ISA_END

namespace flashparity {
namespace FP_ISA_NAMESPACE {
extern const AttentionBackwardTable attention_backward_table;  // (reached through attention_table)
const AttentionBackwardTable attention_backward_table = {&backward_task_fn, kBwdBr, kBwdBc};
}  // namespace FP_ISA_NAMESPACE
}  // namespace flashparity
