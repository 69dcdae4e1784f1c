// CPU attention backward, written once and compiled per ISA like the forward: each per-ISA unit
// includes this file after isa/attention_impl.h (whose helpers it uses: row loads, key ranges,
// softcap) and exports its AttentionBackwardTable. The math is flashparity/attention_backward.h's.
//
// flash2 (FlashAttention-2's backward) walks the key tiles of a (batch, kv head): each tile's dK and
// dV come from every query row of the group's heads that sees one of its keys, P = exp(Z − lse)
// recomputed from the forward's lse and D = dout · out per row. Two schemes, each deterministic and
// with one writer per element (the same bits for any thread count):
//   fused:    one task per (batch, kv head) also accumulates the rows' dQ terms, tile after tile;
//   two-pass: tasks of (batch, kv head, 64-key tile) for dK/dV, then (batch, head, 64-row) tasks for
//             dQ that visit the key tiles their rows see (the scores and dP computed twice, for more
//             tasks when there are few (batch, kv head) pairs).
// Both add a row's dQ terms tile by tile in key order, so they agree bit for bit.
//
// naive materializes whole rows with its own softmax (max and sum over every visible key, not the
// lse), per (batch, kv head) task. Both take D = dout · out from the forward's output as given (in
// the inputs' dtype): the D every kernel of that dtype works with, so the naive kernel is the
// baseline of FlashAttention-2's rule in that dtype (Σ_j P dP in float32 would be a more precise
// D than any low-precision pipeline has, and the rule would fail correct kernels).
//
// Accumulation in float32 for float32/float16/bfloat16 inputs, float64 for float64. Masked keys get
// exactly 0 whatever the values around them (see PairInputs: products over whole tiles where every
// value they meet is finite, pair by pair where a visible pair meets a non-finite one).

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

// Rows of float buffers are padded to whole vectors (zeros past the data), so the register-blocked
// products below run on them; float64 rows are not padded.
template <typename Acc>
constexpr std::int64_t kRowPad = std::is_same_v<Acc, float> ? kLanes : 1;

// Whether any of the first n values of a row is inf or NaN.
template <typename Acc>
FP_INLINE bool any_non_finite(const Acc* x, std::int64_t n) {
  bool bad = false;
  for (std::int64_t k = 0; k < n; ++k) bad |= !std::isfinite(x[k]);
  return bad;
}

// A chunk of query rows [i0, i0 + n) of head h: Q and dout rows (row stride ld), D = dout · out,
// the lse (flash2), the key ranges, and which rows hold a non-finite q or dout value.
template <typename T, typename Acc>
struct QueryChunk {
  std::int64_t i0 = 0, n = 0, D = 0, ld = 0;
  std::vector<Acc> q, dout, o, dsum, lse;
  std::vector<KeyRange> kr;
  std::vector<char> bad;
  bool any_bad = false;

  void load(const AttnBwdParams& bp, std::int64_t b, std::int64_t h, std::int64_t i0_, std::int64_t n_,
            bool with_lse) {
    const AttnParams& p = bp.fwd;
    i0 = i0_;
    n = n_;
    D = p.head_dim;
    ld = round_up(D, kRowPad<Acc>);
    q.resize(static_cast<std::size_t>(n * ld));
    dout.resize(q.size());
    o.resize(q.size());
    dsum.assign(static_cast<std::size_t>(n), Acc(0));
    lse.assign(static_cast<std::size_t>(n), Acc(0));
    kr.resize(static_cast<std::size_t>(n));
    bad.assign(static_cast<std::size_t>(n), 0);
    load_rows<T, Acc>(p.q, b, h, i0, n, i0 + n, D, q.data(), ld);
    load_rows<T, Acc>(bp.dout, b, h, i0, n, i0 + n, D, dout.data(), ld);
    load_rows<T, Acc>(bp.out, b, h, i0, n, i0 + n, D, o.data(), ld);
    any_bad = false;
    for (std::int64_t i = 0; i < n; ++i) {
      kr[i] = key_range(i0 + i, p);
      Acc s = 0;
      for (std::int64_t d = 0; d < D; ++d) s += dout[i * ld + d] * o[i * ld + d];
      dsum[i] = s;
      if (with_lse) lse[i] = static_cast<Acc>(lse_at(bp, b, h, i0 + i));
      bad[i] = any_non_finite(q.data() + i * ld, D) || any_non_finite(dout.data() + i * ld, D);
      any_bad |= bad[i] != 0;
    }
  }
};

// The keys [j0, j0 + n) of kv head hk: K rows (stride ldk, for dQ's product) and K and V transposed
// (stride njp = n padded, for the score and dP products), and which keys hold a non-finite value.
template <typename T, typename Acc>
struct KeyTile {
  std::int64_t j0 = 0, n = 0, D = 0, ldk = 0, njp = 0;
  std::vector<Acc> k, kt, vt, stage;
  std::vector<char> bad;
  bool any_bad = false;

  void load(const AttnParams& p, std::int64_t b, std::int64_t hk, std::int64_t j0_, std::int64_t n_) {
    j0 = j0_;
    n = n_;
    D = p.head_dim;
    ldk = round_up(D, kRowPad<Acc>);
    njp = round_up(n, kRowPad<Acc>);
    k.resize(static_cast<std::size_t>(n * ldk));
    kt.assign(static_cast<std::size_t>(D * njp), Acc(0));
    vt.resize(kt.size());
    load_rows<T, Acc>(p.k, b, hk, j0, n, p.seqlen_k, D, k.data(), ldk, &p);
    load_rows_t<T, Acc>(p.v, b, hk, j0, n, p.seqlen_k, D, D, vt.data(), njp, stage, &p);
    for (std::int64_t d = 0; d < D; ++d)
      for (std::int64_t j = 0; j < n; ++j) kt[d * njp + j] = k[j * ldk + d];
    bad.assign(static_cast<std::size_t>(n), 0);
    any_bad = false;
    for (std::int64_t j = 0; j < n; ++j) {
      bool x = any_non_finite(k.data() + j * ldk, D);
      for (std::int64_t d = 0; d < D; ++d) x |= !std::isfinite(vt[d * njp + j]);
      bad[j] = x;
      any_bad |= x;
    }
  }

  // Key j's values set to 0 (a copy's: a key no row of a chunk sees, so that its products are exact
  // zeros like every masked pair's).
  void zero_key(std::int64_t j) {
    std::fill(k.begin() + j * ldk, k.begin() + (j + 1) * ldk, Acc(0));
    for (std::int64_t d = 0; d < D; ++d) kt[d * njp + j] = vt[d * njp + j] = Acc(0);
  }
};

// out[r][c] = (accumulate ? out[r][c] : 0) + Σ_{t < n} x[r * xr + t * xt] · y[t * ly + c] for r < rows,
// c < cols. float: the forward's register-blocked micro-kernel (outer_block) when cols is whole
// vectors; otherwise plain loops.
template <typename Acc>
void matmul(const Acc* x, std::int64_t xr, std::int64_t xt, const Acc* y, std::int64_t ly, std::int64_t n,
            Acc* out, std::int64_t ldo, std::int64_t rows, std::int64_t cols, bool accumulate) {
  if constexpr (std::is_same_v<Acc, float>) {
    if (cols % kLanes == 0) {
      // column blocks of at most kCV vectors, balanced (head_dim 128 at AVX2: 3,3,3,3,2,2 vectors, not
      // 3,3,3,3,3,1, whose last block's 4 accumulators cannot cover the FMA latency); each output is
      // one accumulator's sum over t whatever the blocks, so they change no bits
      for (std::int64_t c0 = 0; c0 < cols;) {
        const std::int64_t rv = (cols - c0) / kLanes, nb = (rv + kCV - 1) / kCV, take = (rv + nb - 1) / nb;
        with_vectors(take, [&](auto cv) {
          std::int64_t r = 0;
          for (; r + kRK <= rows; r += kRK)
            outer_block<kRK, cv()>(x + r * xr, xr, xt, y + c0, ly, n, out + r * ldo + c0, ldo, accumulate);
          for (; r < rows; ++r)
            outer_block<1, cv()>(x + r * xr, xr, xt, y + c0, ly, n, out + r * ldo + c0, ldo, accumulate);
        });
        c0 += take * kLanes;
      }
      return;
    }
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    Acc* __restrict row = out + r * ldo;
    if (!accumulate)
      for (std::int64_t c = 0; c < cols; ++c) row[c] = Acc(0);
    for (std::int64_t t = 0; t < n; ++t) {
      const Acc xv = x[r * xr + t * xt];
      const Acc* __restrict yr = y + t * ly;
      for (std::int64_t c = 0; c < cols; ++c) row[c] += xv * yr[c];
    }
  }
}

// The visible keys of chunk row i within the tile, as tile columns [lo, hi).
template <typename T, typename Acc>
FP_INLINE KeyRange tile_cols(const QueryChunk<T, Acc>& qc, std::int64_t i, const KeyTile<T, Acc>& kt) {
  const std::int64_t lo = std::clamp<std::int64_t>(qc.kr[i].lo - kt.j0, 0, kt.n);
  return {lo, std::clamp<std::int64_t>(qc.kr[i].hi - kt.j0, lo, kt.n)};
}

// What a (chunk, tile) pair runs on. Products over every pair (the fast path) multiply masked pairs'
// P and dS, which are exact zeros, by the values around them: exact for finite values, but 0 · inf
// is NaN. A non-finite value that no pair of the chunk and tile touches (a key no row of the chunk
// sees, a row that sees no key of the tile) is zeroed in copies, which changes no visible pair: the
// gradients are then the bits they would be with finite values there. One that a visible pair does
// touch sends the pair down the exact path instead, which skips masked pairs one by one.
template <typename T, typename Acc>
struct PairInputs {
  const QueryChunk<T, Acc>* qc;
  const KeyTile<T, Acc>* kt;
  bool exact = false;
  QueryChunk<T, Acc> qcopy;
  KeyTile<T, Acc> kcopy;

  void prepare(const QueryChunk<T, Acc>& q, const KeyTile<T, Acc>& k) {
    qc = &q;
    kt = &k;
    exact = false;
    if (!q.any_bad && !k.any_bad) return;
    std::vector<char> key_seen(static_cast<std::size_t>(k.n), 0);
    bool copy_rows = false;
    for (std::int64_t i = 0; i < q.n; ++i) {
      const KeyRange c = tile_cols(q, i, k);
      for (std::int64_t j = c.lo; j < c.hi; ++j) key_seen[j] = 1;
      if (q.bad[i] && c.hi > c.lo) exact = true;
      copy_rows |= q.bad[i] && c.hi == c.lo;
    }
    bool copy_keys = false;
    for (std::int64_t j = 0; j < k.n; ++j) {
      if (k.bad[j] && key_seen[j]) exact = true;
      copy_keys |= k.bad[j] && !key_seen[j];
    }
    if (exact) return;
    if (copy_rows) {
      qcopy = q;
      for (std::int64_t i = 0; i < q.n; ++i)
        if (q.bad[i]) {
          std::fill(qcopy.q.begin() + i * q.ld, qcopy.q.begin() + (i + 1) * q.ld, Acc(0));
          std::fill(qcopy.dout.begin() + i * q.ld, qcopy.dout.begin() + (i + 1) * q.ld, Acc(0));
        }
      qc = &qcopy;
    }
    if (copy_keys) {
      kcopy = k;
      for (std::int64_t j = 0; j < k.n; ++j)
        if (k.bad[j]) kcopy.zero_key(j);
      kt = &kcopy;
    }
  }
};

// P and dS of a chunk against a key tile, [ni][njp] (zeros outside each row's visible keys and in
// the padding): p = exp(Z − lse), ds = scale · dS (the factor dK's and dQ's products need).
template <typename T, typename Acc>
void probs_and_dscores(const AttnParams& p, Acc slope, const QueryChunk<T, Acc>& qc, const KeyTile<T, Acc>& kt,
                       std::vector<Acc>& s, std::vector<Acc>& dp, std::vector<Acc>& prob, std::vector<Acc>& ds) {
  const std::int64_t ni = qc.n, nj = kt.njp, D = qc.D;
  const std::size_t cells = static_cast<std::size_t>(ni * nj);
  s.resize(cells);
  dp.resize(cells);
  prob.assign(cells, Acc(0));
  ds.assign(cells, Acc(0));
  matmul(qc.q.data(), qc.ld, 1, kt.kt.data(), nj, D, s.data(), nj, ni, nj, false);
  matmul(qc.dout.data(), qc.ld, 1, kt.vt.data(), nj, D, dp.data(), nj, ni, nj, false);
  const Acc scale = static_cast<Acc>(p.scale), cap = static_cast<Acc>(p.softcap);
  for (std::int64_t i = 0; i < ni; ++i) {
    const KeyRange c = tile_cols(qc, i, kt);
    if (c.hi == c.lo || qc.lse[i] == Acc(-INFINITY)) continue;  // (no key seen: P and dS stay 0)
    const std::int64_t diag = qc.i0 + i + p.seqlen_k - p.seqlen_q;
    Acc* __restrict ti = s.data() + i * nj;  // scores, then the capped scores t
    Acc* __restrict pi = prob.data() + i * nj;
    for (std::int64_t j = c.lo; j < c.hi; ++j) {
      const Acc t = apply_softcap(ti[j] * scale, cap);
      const std::int64_t key = kt.j0 + j;
      ti[j] = t;
      pi[j] = slope != Acc(0) ? t - slope * static_cast<Acc>(diag > key ? diag - key : key - diag) : t;
    }
    if constexpr (std::is_same_v<Acc, float>) {
      // P = exp(Z - lse) in vectors (the forward's polynomial; masked columns hold -inf: exactly 0)
      for (std::int64_t j = 0; j < c.lo; ++j) pi[j] = -INFINITY;
      for (std::int64_t j = c.hi; j < nj; ++j) pi[j] = -INFINITY;
      exp_shifted(pi, nj, qc.lse[i]);
    } else {
      for (std::int64_t j = c.lo; j < c.hi; ++j) pi[j] = backward_prob(pi[j], qc.lse[i]);
    }
    const Acc* __restrict dpi = dp.data() + i * nj;
    Acc* __restrict dsi = ds.data() + i * nj;
    const Acc D = qc.dsum[i];
    if (cap == Acc(0)) {
      for (std::int64_t j = c.lo; j < c.hi; ++j) dsi[j] = scale * (pi[j] * (dpi[j] - D));
    } else {
      for (std::int64_t j = c.lo; j < c.hi; ++j) dsi[j] = scale * backward_dscore(pi[j], dpi[j], D, ti[j], cap);
    }
  }
}

// dQ += dS K of a (chunk, tile) pair into the chunk's dQ rows (row stride ld; ds as probs_and_dscores
// leaves it): over every pair on the fast path (masked pairs' dS are exact zeros), pair by pair over
// each row's visible keys on the exact one. Both flash2 schemes add a row's terms here, tile after
// tile in key order: they agree bit for bit.
template <typename T, typename Acc>
void add_dq_terms(const PairInputs<T, Acc>& in, const std::vector<Acc>& ds, Acc* dq, std::int64_t ld) {
  const QueryChunk<T, Acc>& qc = *in.qc;
  const KeyTile<T, Acc>& kt = *in.kt;
  if (!in.exact) {
    matmul(ds.data(), kt.njp, 1, kt.k.data(), kt.ldk, kt.n, dq, ld, qc.n, ld, true);
    return;
  }
  for (std::int64_t i = 0; i < qc.n; ++i) {
    const KeyRange c = tile_cols(qc, i, kt);
    Acc* __restrict dqi = dq + i * ld;
    for (std::int64_t j = c.lo; j < c.hi; ++j) {
      const Acc dsc = ds[i * kt.njp + j];
      const Acc* __restrict kj = kt.k.data() + j * kt.ldk;
      for (std::int64_t d = 0; d < qc.D; ++d) dqi[d] += dsc * kj[d];
    }
  }
}

// Writes n rows of Acc (row stride ld) as rows s0.. of head h of a contiguous [batch, seqlen, heads,
// D] output.
template <typename T, typename Acc>
void store_grad_rows(void* dst, std::int64_t seqlen, std::int64_t heads, std::int64_t b, std::int64_t h,
                     std::int64_t s0, std::int64_t n, std::int64_t D, const Acc* rows, std::int64_t ld) {
  for (std::int64_t r = 0; r < n; ++r) {
    T* out = static_cast<T*>(dst) + ((b * seqlen + s0 + r) * heads + h) * D;
    for (std::int64_t d = 0; d < D; ++d) out[d] = from_f64<T>(static_cast<double>(rows[r * ld + d]));
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

// The dQ rows of one (batch, kv head)'s query heads, [group][seqlen_q][ld], that the fused flash2
// task accumulates key tile after key tile.
template <typename Acc>
struct DqRows {
  std::vector<Acc> rows;
  std::int64_t sq = 0, ld = 0;
  Acc* at(std::int64_t g, std::int64_t i) { return rows.data() + (g * sq + i) * ld; }
};

// The query chunks of one (batch, kv head)'s query heads, [group][ceil(seqlen_q / kBwdBr)], each
// loaded on its first use and kept: the fused task's key tiles visit them all again, and loading a
// chunk (converting its rows, D = dout · out, the finiteness checks) is otherwise repeated per tile.
// Used when they and the task's dQ rows fit kChunkCacheBytes together (per concurrent task).
constexpr std::int64_t kChunkCacheBytes = std::int64_t(64) << 20;

template <typename T, typename Acc>
struct ChunkCache {
  std::vector<QueryChunk<T, Acc>> chunks;
  std::vector<char> loaded;
  std::int64_t per_head = 0;

  const QueryChunk<T, Acc>& get(const AttnBwdParams& bp, std::int64_t b, std::int64_t h, std::int64_t g,
                                std::int64_t c) {
    const std::size_t at = static_cast<std::size_t>(g * per_head + c);
    if (!loaded[at]) {
      QueryChunk<T, Acc>& chunk = chunks[at];
      const std::int64_t i0 = c * kBwdBr;
      chunk.load(bp, b, h, i0, std::min(kBwdBr, bp.fwd.seqlen_q - i0), true);
      std::vector<Acc>().swap(chunk.o);  // (read for D only)
      loaded[at] = 1;
    }
    return chunks[at];
  }
};

// flash2's dK and dV of keys [j0, j0 + n) of kv head hk, from the query chunks (rows [c·kBwdBr,
// (c + 1)·kBwdBr)) of the group's heads that hold a row seeing one of them (a chunk's other rows
// add exact zeros); with `dq`, also those rows' dQ terms of these keys (the fused task), with
// `cache` its chunks loaded once for every tile.
template <typename T, typename Acc>
void flash2_key_tile(const AttnBwdParams& bp, std::int64_t b, std::int64_t hk, std::int64_t j0, std::int64_t n,
                     DqRows<Acc>* dq, ChunkCache<T, Acc>* cache = nullptr) {
  const AttnParams& p = bp.fwd;
  const std::int64_t D = p.head_dim, group = p.heads_q / p.heads_kv;
  KeyTile<T, Acc> tile;
  tile.load(p, b, hk, j0, n);
  const std::int64_t ld = tile.ldk, njp = tile.njp;
  std::vector<Acc> dk(static_cast<std::size_t>(n * ld), Acc(0)), dv(dk.size(), Acc(0));
  std::vector<Acc> s, dp, prob, ds;
  QueryChunk<T, Acc> chunk;
  PairInputs<T, Acc> in;
  const RowSpan rows = rows_seeing_keys(p, j0, j0 + n);
  for (std::int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const Acc slope = static_cast<Acc>(alibi_slope(p, b, h));
    for (std::int64_t c = rows.lo / kBwdBr; c * kBwdBr < rows.hi; ++c) {
      const std::int64_t i0 = c * kBwdBr;
      if (cache != nullptr) {
        in.prepare(cache->get(bp, b, h, h - hk * group, c), tile);
      } else {
        chunk.load(bp, b, h, i0, std::min(kBwdBr, p.seqlen_q - i0), true);
        in.prepare(chunk, tile);
      }
      const QueryChunk<T, Acc>& qc = *in.qc;
      const KeyTile<T, Acc>& kt = *in.kt;
      probs_and_dscores(p, slope, qc, kt, s, dp, prob, ds);
      if (dq != nullptr) add_dq_terms(in, ds, dq->at(h - hk * group, i0), ld);
      if (!in.exact) {  // dV += Pᵀ dout, dK += dSᵀ Q over every pair (masked: exact zeros)
        matmul(prob.data(), 1, njp, qc.dout.data(), qc.ld, qc.n, dv.data(), ld, n, ld, true);
        matmul(ds.data(), 1, njp, qc.q.data(), qc.ld, qc.n, dk.data(), ld, n, ld, true);
        continue;
      }
      for (std::int64_t i = 0; i < qc.n; ++i) {
        const KeyRange c = tile_cols(qc, i, kt);
        const Acc* __restrict qi = qc.q.data() + i * qc.ld;
        const Acc* __restrict gi = qc.dout.data() + i * qc.ld;
        for (std::int64_t j = c.lo; j < c.hi; ++j) {
          const Acc pr = prob[i * njp + j], dsc = ds[i * njp + j];
          Acc* __restrict dvj = dv.data() + j * ld;
          Acc* __restrict dkj = dk.data() + j * ld;
          for (std::int64_t d = 0; d < D; ++d) dvj[d] += pr * gi[d];
          for (std::int64_t d = 0; d < D; ++d) dkj[d] += dsc * qi[d];
        }
      }
    }
  }
  store_grad_rows<T, Acc>(bp.dk, p.seqlen_k, p.heads_kv, b, hk, j0, n, D, dk.data(), ld);
  store_grad_rows<T, Acc>(bp.dv, p.seqlen_k, p.heads_kv, b, hk, j0, n, D, dv.data(), ld);
}

// flash2, pass 1 of two: dK and dV of keys [j0, j0 + n) of kv head hk.
template <typename T, typename Acc>
void flash2_dkdv_task(const AttnBwdParams& bp, std::int64_t b, std::int64_t hk, std::int64_t j0, std::int64_t n) {
  flash2_key_tile<T, Acc>(bp, b, hk, j0, n, nullptr);
}

// flash2 in one pass: every gradient of kv head hk of batch b and of its group's query heads, key
// tile after key tile (dQ accumulated across them in the same order as the dQ pass adds them).
template <typename T, typename Acc>
void flash2_fused_task(const AttnBwdParams& bp, std::int64_t b, std::int64_t hk, std::int64_t, std::int64_t) {
  const AttnParams& p = bp.fwd;
  const std::int64_t group = p.heads_q / p.heads_kv;
  DqRows<Acc> dq;
  dq.sq = p.seqlen_q;
  dq.ld = round_up(p.head_dim, kRowPad<Acc>);
  dq.rows.assign(static_cast<std::size_t>(group * dq.sq * dq.ld), Acc(0));
  ChunkCache<T, Acc> cache;
  // (Q and dout rows, twice the dQ rows' bytes)
  const bool cached = 3 * group * dq.sq * dq.ld * static_cast<std::int64_t>(sizeof(Acc)) <= kChunkCacheBytes;
  if (cached) {
    cache.per_head = (p.seqlen_q + kBwdBr - 1) / kBwdBr;
    cache.chunks.resize(static_cast<std::size_t>(group * cache.per_head));
    cache.loaded.assign(cache.chunks.size(), 0);
  }
  for (std::int64_t j0 = 0; j0 < p.seqlen_k; j0 += kBwdBc)
    flash2_key_tile<T, Acc>(bp, b, hk, j0, std::min(kBwdBc, p.seqlen_k - j0), &dq, cached ? &cache : nullptr);
  for (std::int64_t g = 0; g < group; ++g)
    store_grad_rows<T, Acc>(bp.dq, p.seqlen_q, p.heads_q, b, hk * group + g, 0, dq.sq, p.head_dim, dq.at(g, 0),
                            dq.ld);
}

// flash2, pass 2 of two: dQ of query rows [i0, i0 + n) of head h.
template <typename T, typename Acc>
void flash2_dq_task(const AttnBwdParams& bp, std::int64_t b, std::int64_t h, std::int64_t i0, std::int64_t n) {
  const AttnParams& p = bp.fwd;
  const std::int64_t D = p.head_dim, hk = h / (p.heads_q / p.heads_kv);
  const Acc slope = static_cast<Acc>(alibi_slope(p, b, h));
  QueryChunk<T, Acc> chunk;
  chunk.load(bp, b, h, i0, n, true);
  const std::int64_t ld = chunk.ld;
  std::vector<Acc> dq(static_cast<std::size_t>(n * ld), Acc(0));
  std::vector<Acc> s, dp, prob, ds;
  KeyTile<T, Acc> tile;
  PairInputs<T, Acc> in;
  const TileSpan tiles = row_block_key_tiles(i0, n, p, kBwdBc);
  for (std::int64_t t = tiles.begin; t < tiles.end; ++t) {
    const std::int64_t j0 = t * kBwdBc, nj = std::min(kBwdBc, p.seqlen_k - j0);
    tile.load(p, b, hk, j0, nj);
    in.prepare(chunk, tile);
    probs_and_dscores(p, slope, *in.qc, *in.kt, s, dp, prob, ds);
    add_dq_terms(in, ds, dq.data(), ld);
  }
  store_grad_rows<T, Acc>(bp.dq, p.seqlen_q, p.heads_q, b, h, i0, n, D, dq.data(), ld);
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
  const std::int64_t ldk = keys.ldk, skp = keys.njp;
  std::vector<Acc> dk(static_cast<std::size_t>(Sk * ldk), Acc(0)), dv(dk.size(), Acc(0));
  std::vector<Acc> s, t, dp, dq;
  QueryChunk<T, Acc> qc;
  for (std::int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const Acc slope = static_cast<Acc>(alibi_slope(p, b, h));
    for (std::int64_t i0 = 0; i0 < p.seqlen_q; i0 += kBwdBr) {
      const std::int64_t ni = std::min(kBwdBr, p.seqlen_q - i0);
      qc.load(bp, b, h, i0, ni, false);
      const std::int64_t ld = qc.ld;
      s.resize(static_cast<std::size_t>(ni * skp));
      t.resize(s.size());
      dp.resize(s.size());
      dq.assign(static_cast<std::size_t>(ni * ld), Acc(0));
      matmul(qc.q.data(), ld, 1, keys.kt.data(), skp, D, s.data(), skp, ni, skp, false);
      matmul(qc.dout.data(), ld, 1, keys.vt.data(), skp, D, dp.data(), skp, ni, skp, false);
      for (std::int64_t i = 0; i < ni; ++i) {
        const KeyRange c = tile_cols(qc, i, keys);
        Acc* __restrict si = s.data() + i * skp;  // scores, then P
        Acc* __restrict ti = t.data() + i * skp;
        const Acc* __restrict dpi = dp.data() + i * skp;
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
        const Acc* __restrict qi = qc.q.data() + i * ld;
        const Acc* __restrict gi = qc.dout.data() + i * ld;
        Acc* __restrict dqi = dq.data() + i * ld;
        for (std::int64_t j = c.lo; j < c.hi; ++j) {
          const Acc dsc = scale * backward_dscore(si[j], dpi[j], dsum, ti[j], cap);
          const Acc pr = si[j];
          Acc* __restrict dvj = dv.data() + j * ldk;
          Acc* __restrict dkj = dk.data() + j * ldk;
          const Acc* __restrict kj = keys.k.data() + j * ldk;
          for (std::int64_t d = 0; d < D; ++d) dvj[d] += pr * gi[d];
          for (std::int64_t d = 0; d < D; ++d) dkj[d] += dsc * qi[d];
          for (std::int64_t d = 0; d < D; ++d) dqi[d] += dsc * kj[d];
        }
      }
      store_grad_rows<T, Acc>(bp.dq, p.seqlen_q, p.heads_q, b, h, i0, ni, D, dq.data(), ld);
    }
  }
  store_grad_rows<T, Acc>(bp.dk, Sk, p.heads_kv, b, hk, 0, Sk, D, dk.data(), ldk);
  store_grad_rows<T, Acc>(bp.dv, Sk, p.heads_kv, b, hk, 0, Sk, D, dv.data(), ldk);
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
      case AttnBwdKind::Flash2Fused: return &flash2_fused_task<T, Acc>;
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
extern const AttentionBackwardTable attention_backward_table;  // (declared again in cpu_dispatch.cpp, its one user)
const AttentionBackwardTable attention_backward_table = {&backward_task_fn, kBwdBr, kBwdBc};
}  // namespace FP_ISA_NAMESPACE
}  // namespace flashparity
