// FlashAttention-2's forward on tensor cores (sm_80+), float16 and bfloat16.
//
// A block owns 64 query rows of one (batch, head) and 4 warps; warp w owns rows 16w..16w+15 (warps
// split the query rows, never the keys, so no reduction crosses warps). K/V tiles stream through
// shared memory with cp.async into two buffers: tile t+1 loads while tile t is computed. Per tile a
// warp forms S = Q K^T with mma.sync m16n8k16 (float32 accumulators), scales, caps and masks it,
// runs the online-softmax step (attention_math.h, shared with the CPU kernels) on its rows, and
// feeds P straight from the accumulator registers into the P V product (the C fragment of S is the
// A fragment of P, rounded to the input type as FlashAttention-2 does). O and the LSE are written
// once at the end, or as a normalized partial per split for split-KV.
//
// Which elements each lane's registers hold, and which shared-memory rows it hands ldmatrix, come
// from flashparity/mma_layout.h; a CPU test emulates a warp with those functions (S = Q K^T and
// O = P V exact). Shared rows are padded by 16 bytes, so the eight rows of an 8x8 ldmatrix matrix
// fall in distinct bank groups.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "attention_flash2.cuh"
#include "cuda_util.cuh"
#include "flashparity/mma_layout.h"

namespace flashparity {
namespace flash2 {

__device__ FP_INLINE unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronous; ok = false writes 16 zero bytes and reads nothing.
__device__ FP_INLINE void cp_async16(void* dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(ok ? 16 : 0)
               : "memory");
}
// The "memory" clobbers: these statements read or write shared memory the compiler cannot see
// through their register operands; without them it could move ordinary loads and stores of the
// tiles (the scan and fix-up of masked tiles below) across them. Every use is also separated by
// __syncthreads(), which orders the other threads' accesses.
__device__ FP_INLINE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ FP_INLINE void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ FP_INLINE void ldmatrix_x4(unsigned (&r)[4], const void* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr))
               : "memory");
}
__device__ FP_INLINE void ldmatrix_x4_trans(unsigned (&r)[4], const void* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr))
               : "memory");
}

// c += a b on one 16x8x16 tile, float32 accumulators.
template <bool kBf16>
__device__ FP_INLINE void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats rounded to the input type, the lower column in the low half.
template <bool kBf16>
__device__ FP_INLINE unsigned pack2(float lo, float hi) {
  if constexpr (kBf16) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
  }
}

template <bool kBf16>
__device__ FP_INLINE std::uint16_t to_bits(float x) {
  if constexpr (kBf16) return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  else return __half_as_ushort(__float2half_rn(x));
}

template <bool kBf16>
__device__ FP_INLINE float from_bits(std::uint16_t x) {
  if constexpr (kBf16) return __bfloat162float(__ushort_as_bfloat16(x));
  else return __half2float(__ushort_as_half(x));
}

// The exponent field of the format: all ones is inf or NaN.
template <bool kBf16>
constexpr std::uint32_t kExpBits = kBf16 ? 0x7f80u : 0x7c00u;

template <bool kBf16>
__device__ FP_INLINE bool non_finite(std::uint16_t x) {
  return (x & kExpBits<kBf16>) == kExpBits<kBf16>;
}

// Whether any of the eight elements of a 16-byte chunk is inf or NaN.
template <bool kBf16>
__device__ FP_INLINE bool any_non_finite(uint4 w) {
  constexpr std::uint32_t e2 = kExpBits<kBf16> | (kExpBits<kBf16> << 16);
  bool bad = false;
  for (const std::uint32_t x : {w.x, w.y, w.z, w.w}) {
    const std::uint32_t m = x & e2;
    bad |= (m & 0xffffu) == kExpBits<kBf16> || (m >> 16) == kExpBits<kBf16>;
  }
  return bad;
}

// Rows [s0, s0 + ROWS) of head h of t into a shared tile of pitch D + 8 elements; rows past `seqlen`
// and columns past head_dim are zeros (masked keys then meet V rows of 0, never stale data). `kv`:
// the call's parameters when t is k or v (rows through kv_row: a paged cache's blocks), else null.
template <int ROWS, int D>
__device__ FP_INLINE void load_tile(std::uint16_t* dst, const TensorArg& t, std::int64_t b, std::int64_t s0,
                                    std::int64_t h, std::int64_t seqlen, std::int64_t head_dim, bool vec,
                                    const AttnParams* kv = nullptr) {
  constexpr int P = D + 8;
  const char* base = static_cast<const char*>(t.data) + b * t.strides[0] + h * t.strides[2];
  const auto row = [&](std::int64_t s) { return kv != nullptr ? kv_row(*kv, t, b, s, h) : base + s * t.strides[1]; };
  if (vec) {  // unit stride, 16-byte aligned rows, head_dim % 8 == 0: a chunk is all in or all out
    constexpr int kChunksPerRow = D / 8;
    for (int c = threadIdx.x; c < ROWS * kChunksPerRow; c += kThreads) {
      const int r = c / kChunksPerRow, d0 = (c % kChunksPerRow) * 8;
      const bool ok = s0 + r < seqlen && d0 < head_dim;
      cp_async16(dst + r * P + d0, ok ? row(s0 + r) + d0 * 2 : t.data, ok);
    }
  } else {  // any element-aligned strides: element by element through registers (typed 16-bit loads)
    for (int e = threadIdx.x; e < ROWS * D; e += kThreads) {
      const int r = e / D, d = e % D;
      std::uint16_t x = 0;
      if (s0 + r < seqlen && d < head_dim)
        x = *reinterpret_cast<const std::uint16_t*>(row(s0 + r) + d * t.strides[3]);
      dst[r * P + d] = x;
    }
  }
}

template <bool kBf16, int D>
__global__ void __launch_bounds__(kThreads) Flash2MmaKernel(const Args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int BR = kMmaRows, BC = mma_key_tile(D), P = D + 8;
  static_assert(D % 32 == 0 && BC % 16 == 0, "tile shapes");
  extern __shared__ __align__(16) std::uint16_t smem[];
  std::uint16_t* sQ = smem;
  std::uint16_t* sK = sQ + BR * P;      // [2][BC][P]
  std::uint16_t* sV = sK + 2 * BC * P;  // [2][BC][P]

  const AttnParams& p = a.p;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // where this lane's ldmatrix rows start inside a 16 x 16 tile (mma_layout.h, checked on the CPU)
  const mma::RowCol q_at = mma::ldsm_q_row(lane), k_at = mma::ldsm_k_row(lane), v_at = mma::ldsm_v_row(lane);
  // the accumulator elements this lane holds: rows c_elem(lane, 0).row and +8, columns col0, col0 + 1
  const int g = mma::c_elem(lane, 0).row, col0 = mma::c_elem(lane, 0).col;
  const std::int64_t bh = blockIdx.x, b = bh / p.heads_q, h = bh % p.heads_q;
  const std::int64_t hk = h / (p.heads_q / p.heads_kv);
  // the last query blocks first: under a causal mask they see the most keys, so the long blocks
  // start early and the short ones fill the tail of the grid
  const std::int64_t m0 = static_cast<std::int64_t>(gridDim.y - 1 - blockIdx.y) * BR;
  const std::int64_t rows = p.seqlen_q - m0 < BR ? p.seqlen_q - m0 : BR;
  const TileSpan tiles = split_span(row_block_key_tiles(m0, rows, p, BC), blockIdx.z, a.n_splits);
  // every row of the block sees keys [all_lo, all_hi): tiles inside need no mask
  const std::int64_t all_lo = key_range(m0 + rows - 1, p).lo, all_hi = key_range(m0, p).hi;
  const std::int64_t row[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
  const KeyRange kr[2] = {key_range(row[0], p), key_range(row[1], p)};
  const float scale = static_cast<float>(p.scale), cap = static_cast<float>(p.softcap);
  const float slope = alibi_slope(p, b, h);

  float acc_o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc_o[n][0] = acc_o[n][1] = acc_o[n][2] = acc_o[n][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  if (tiles.begin < tiles.end) {
    load_tile<BR, D>(sQ, p.q, b, m0, h, p.seqlen_q, p.head_dim, a.vec_q);
    load_tile<BC, D>(sK, p.k, b, tiles.begin * BC, hk, p.seqlen_k, p.head_dim, a.vec_k, &p);
    load_tile<BC, D>(sV, p.v, b, tiles.begin * BC, hk, p.seqlen_k, p.head_dim, a.vec_v, &p);
    cp_async_commit();
  }
  for (std::int64_t t = tiles.begin; t < tiles.end; ++t) {
    const int buf = static_cast<int>((t - tiles.begin) & 1);
    if (t + 1 < tiles.end) {  // the next tile streams in while this one is computed
      load_tile<BC, D>(sK + (buf ^ 1) * BC * P, p.k, b, (t + 1) * BC, hk, p.seqlen_k, p.head_dim, a.vec_k, &p);
      load_tile<BC, D>(sV + (buf ^ 1) * BC * P, p.v, b, (t + 1) * BC, hk, p.seqlen_k, p.head_dim, a.vec_v, &p);
    }
    cp_async_commit();
    cp_async_wait<1>();  // everything but the group just issued has landed
    __syncthreads();
    const std::uint16_t* kt = sK + buf * BC * P;
    std::uint16_t* vt = sV + buf * BC * P;
    const std::int64_t j0 = t * BC;
    const bool masked = j0 < all_lo || j0 + BC > all_hi;  // block-uniform

    // Masked keys contribute nothing, whatever their values: P V below multiplies every key of the
    // tile into every row, with p = 0 where a row does not see it, and 0 * inf is NaN. In a masked
    // tile every warp reads the whole V tile (16-byte chunks) and keeps the same mask of keys that
    // hold an inf or NaN; when there is one, those values are zeroed in shared memory and each row
    // that sees such a key adds p * value for it after the product (the fix-up below). Tiles every
    // row sees entirely, and masked tiles of finite values (the usual case), take no other step.
    std::uint64_t bad_keys = 0;
    if (masked) {
      constexpr int kChunksPerRow = D / 8, kChunks = BC * kChunksPerRow;
      static_assert(kChunks % 32 == 0, "whole warps over the tile");
      for (int c0 = 0; c0 < kChunks; c0 += 32) {
        const int c = c0 + lane;
        const uint4 w = *reinterpret_cast<const uint4*>(vt + (c / kChunksPerRow) * P + (c % kChunksPerRow) * 8);
        for (unsigned m = __ballot_sync(0xffffffffu, any_non_finite<kBf16>(w)); m != 0; m &= m - 1)
          bad_keys |= std::uint64_t{1} << ((c0 + __ffs(m) - 1) / kChunksPerRow);
      }
      if (__syncthreads_or(bad_keys != 0)) {  // every warp has read the tile: zero its non-finite values
        for (int e = threadIdx.x; e < BC * D; e += kThreads) {
          std::uint16_t& x = vt[(e / D) * P + e % D];
          if (non_finite<kBf16>(x)) x = 0;
        }
        __syncthreads();
      }
    }

    // S = Q K^T: 16 rows x BC keys per warp
    float acc_s[BC / 8][4];
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) acc_s[n][0] = acc_s[n][1] = acc_s[n][2] = acc_s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      unsigned qa[4];  // a0a1, a2a3, a4a5, a6a7
      ldmatrix_x4(qa, sQ + (warp * 16 + q_at.row) * P + kk * 16 + q_at.col);
#pragma unroll
      for (int np = 0; np < BC / 16; ++np) {
        unsigned kb[4];  // b0b1, b2b3 of keys +0..7, then of keys +8..15
        ldmatrix_x4(kb, kt + (np * 16 + k_at.row) * P + kk * 16 + k_at.col);
        mma16816<kBf16>(acc_s[2 * np], qa, kb[0], kb[1]);
        mma16816<kBf16>(acc_s[2 * np + 1], qa, kb[2], kb[3]);
      }
    }

    // scale, softcap, mask; the row maxima over the quad of lanes that share a row
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float s = apply_softcap(acc_s[n][e] * scale, cap);
        const std::int64_t key = j0 + n * 8 + col0 + (e & 1);
        if (slope != 0.f) s += alibi_bias(slope, row[e >> 1], key, p);
        if (masked && (key < kr[e >> 1].lo || key >= kr[e >> 1].hi)) s = -INFINITY;
        acc_s[n][e] = s;
        tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s);
      }
    }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
      const OnlineSoftmaxStep<float> st = online_softmax_step(m_run[r], tile_max[r]);
      alpha[r] = st.alpha;
      m_run[r] = st.m_new;
    }
    // P = exp(S - m); each lane keeps a partial row sum (the quad is summed once, at the end)
    float row_sum[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float m = m_run[e >> 1];
        const float pr = m == -INFINITY ? 0.f : exp2f((acc_s[n][e] - m) * 1.4426950408889634f);
        acc_s[n][e] = pr;
        row_sum[e >> 1] += pr;
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) l_run[r] = l_run[r] * alpha[r] + row_sum[r];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      acc_o[n][0] *= alpha[0];
      acc_o[n][1] *= alpha[0];
      acc_o[n][2] *= alpha[1];
      acc_o[n][3] *= alpha[1];
    }

    // O += P V: the C fragments of n-tiles 2kk, 2kk+1 are the A fragment of key step kk
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      unsigned pa[4];
#pragma unroll
      for (int r = 0; r < 4; ++r)
        pa[r] = pack2<kBf16>(acc_s[mma::p_ntile(kk, r)][mma::p_celem(r)], acc_s[mma::p_ntile(kk, r)][mma::p_celem(r) + 1]);
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        unsigned vb[4];  // b0b1, b2b3 of dims +0..7, then of dims +8..15 (transposed loads)
        ldmatrix_x4_trans(vb, vt + (kk * 16 + v_at.row) * P + np * 16 + v_at.col);
        mma16816<kBf16>(acc_o[2 * np], pa, vb[0], vb[1]);
        mma16816<kBf16>(acc_o[2 * np + 1], pa, vb[2], vb[3]);
      }
    }
    // The fix-up of a masked tile with non-finite V values (rare: garbage in slots some rows cannot
    // see): for each such key, the p of this lane's two rows comes from the lane of its quad that
    // holds that column, and the rows that see the key add p * value for each non-finite value,
    // read again from global memory (the tile has them zeroed).
    // (n-tiles unrolled, so acc_s is indexed by constants only and stays in registers)
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) {
      for (unsigned bits = static_cast<unsigned>(bad_keys >> (8 * n)) & 0xffu; bits != 0; bits &= bits - 1) {
        const int c = __ffs(bits) - 1;  // the key's column in n-tile n; warp-uniform
        const float mine0 = (c & 1) ? acc_s[n][1] : acc_s[n][0], mine1 = (c & 1) ? acc_s[n][3] : acc_s[n][2];
        const int src = (lane & ~3) | (c >> 1);
        const float pr0 = __shfl_sync(0xffffffffu, mine0, src), pr1 = __shfl_sync(0xffffffffu, mine1, src);
        const std::int64_t key = j0 + n * 8 + c;
        const bool sees0 = key >= kr[0].lo && key < kr[0].hi, sees1 = key >= kr[1].lo && key < kr[1].hi;
        if (key >= p.seqlen_k || !(sees0 || sees1)) continue;
        // (one pointer walked along the row: per-column offsets would be loop-invariant, and the
        // compiler would keep all D/4 of them in registers for the whole kernel)
        const std::int64_t s3 = p.v.strides[3];
        const char* vp = kv_row(p, p.v, b, key, hk) + col0 * s3;
#pragma unroll
        for (int n2 = 0; n2 < D / 8; ++n2, vp += 8 * s3)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if (n2 * 8 + col0 + e >= p.head_dim) continue;
            const std::uint16_t x = *reinterpret_cast<const std::uint16_t*>(vp + e * s3);
            if (!non_finite<kBf16>(x)) continue;
            if (sees0) acc_o[n2][e] += pr0 * from_bits<kBf16>(x);
            if (sees1) acc_o[n2][2 + e] += pr1 * from_bits<kBf16>(x);
          }
      }
    }
    __syncthreads();  // the buffer is refilled by the next iteration's loads
  }

  // finish: the quad's partial sums, normalize, store (rows past seqlen_q and dims past head_dim skipped)
  const std::int64_t BH = p.batch * p.heads_q;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
    if (row[r] >= p.seqlen_q) continue;
    const float inv = l_run[r] > 0.f ? 1.f / l_run[r] : 0.f;
    const float lse = row_lse(m_run[r], l_run[r]);
    if (a.n_splits == 1) {
      std::uint16_t* out = static_cast<std::uint16_t*>(p.out) + ((b * p.seqlen_q + row[r]) * p.heads_q + h) * p.head_dim;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const int d = n * 8 + col0;
        if (d < p.head_dim) out[d] = to_bits<kBf16>(acc_o[n][2 * r] * inv);
        if (d + 1 < p.head_dim) out[d + 1] = to_bits<kBf16>(acc_o[n][2 * r + 1] * inv);
      }
      if (col0 == 0 && p.lse != nullptr) p.lse[lse_index(p, b, h, row[r])] = lse;
    } else {
      const std::int64_t slot = (blockIdx.z * BH + bh) * p.seqlen_q + row[r];
      float* o = static_cast<float*>(a.o_part) + slot * D;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n * 8 + col0] = acc_o[n][2 * r] * inv;
        o[n * 8 + col0 + 1] = acc_o[n][2 * r + 1] * inv;
      }
      if (col0 == 0) static_cast<float*>(a.lse_part)[slot] = lse;
    }
  }
#else
  __trap();  // built for an architecture without mma.sync m16n8k16; the host refuses before launching
#endif
}

// The kernel's dynamic shared memory past 48 KiB is allowed once per device (the attribute sticks
// to the function), not on every call. `force` sets it again: after a cudaDeviceReset the
// attribute is gone while the bit stays, and the launch below then retries once with it set.
template <bool kBf16, int D>
void allow_smem(bool force = false) {
  static std::atomic<std::uint64_t> done{0};  // bit d: device d is set up
  int device = 0;
  FP_CUDA_CHECK(cudaGetDevice(&device));
  const std::uint64_t bit = device < 64 ? std::uint64_t{1} << device : 0;
  if (!force && bit != 0 && (done.load(std::memory_order_acquire) & bit) != 0) return;
  FP_CUDA_CHECK(cudaFuncSetAttribute(Flash2MmaKernel<kBf16, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     mma_smem_bytes(D)));
  done.fetch_or(bit, std::memory_order_acq_rel);
}

template <bool kBf16, int D>
void launch_mma(const Args& a, dim3 grid, cudaStream_t stream) {
  allow_smem<kBf16, D>();
  Flash2MmaKernel<kBf16, D><<<grid, kThreads, mma_smem_bytes(D), stream>>>(a);
  if (mma_smem_bytes(D) > 48 * 1024 && cudaPeekAtLastError() == cudaErrorInvalidValue) {
    cudaGetLastError();  // (a launch-configuration error: not sticky)
    allow_smem<kBf16, D>(/*force=*/true);
    Flash2MmaKernel<kBf16, D><<<grid, kThreads, mma_smem_bytes(D), stream>>>(a);
  }
  FP_CUDA_CHECK(cudaGetLastError());
}

template <bool kBf16, int D>
int mma_blocks_per_sm() {
  allow_smem<kBf16, D>();
  int blocks = 0;
  FP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, Flash2MmaKernel<kBf16, D>, kThreads,
                                                              mma_smem_bytes(D)));
  return blocks;
}

#define FP_FLASH2_MMA_INSTANTIATE(D)                                        \
  template void launch_mma<false, D>(const Args&, dim3, cudaStream_t);      \
  template void launch_mma<true, D>(const Args&, dim3, cudaStream_t);       \
  template int mma_blocks_per_sm<false, D>();                               \
  template int mma_blocks_per_sm<true, D>();

}  // namespace flash2
}  // namespace flashparity
