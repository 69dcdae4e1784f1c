// The CUDA flash2 forward: the dispatcher (tensor cores for float16/bfloat16, FMA for
// float32/float64), the FMA kernel, split-KV planning and the kernel that merges the splits.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda_util.cuh"
#include "attention_flash2.cuh"
#include "flashparity/attention_cuda.h"
#include "flashparity/dtype.h"

namespace flashparity {
namespace flash2 {

namespace {

template <typename T, typename Acc>
__device__ FP_INLINE Acc load_elem(const char* addr) {
  return static_cast<Acc>(load_value<T>(addr));  // exact: T is float, double or FP8 here
}

// float32 / float64 / FP8 flash2 on FMA units (float32 inputs do not go through tf32 tensor cores:
// their products stay exact to float32, as on the CPU; FP8 values are exact in float32, the output
// bfloat16 with FP8's descales in the score scale and the output). A warp owns a query row, its lanes the head dims
// lane, lane+32, ...; a block holds 4 rows and walks key tiles of 32 with the online softmax
// (blocks stride over the query blocks past the grid's y limit).
constexpr int kSimtRows = kThreads / 32, kSimtKeys = 32;

template <typename T, typename Acc, int DPT>
__global__ void __launch_bounds__(kThreads) Flash2SimtKernel(const Args a, std::int64_t q_blocks) {
  const AttnParams& p = a.p;
  const int lane = threadIdx.x & 31;
  const std::int64_t bh = blockIdx.x, b = bh / p.heads_q, h = bh % p.heads_q;
  const std::int64_t hk = h / (p.heads_q / p.heads_kv);
  const Acc scale = static_cast<Acc>(score_scale(p, b, h)), cap = static_cast<Acc>(p.softcap);
  const Acc slope = static_cast<Acc>(alibi_slope(p, b, h));
  const Acc vscale = static_cast<Acc>(out_scale(p, b, h));  // (1 but for FP8)
  using Out = attn_out_t<T>;

  for (std::int64_t qb = blockIdx.y; qb < q_blocks; qb += gridDim.y) {
    const std::int64_t m0 = qb * kSimtRows, i = m0 + (threadIdx.x >> 5);
    const std::int64_t rows = p.seqlen_q - m0 < kSimtRows ? p.seqlen_q - m0 : kSimtRows;
    const TileSpan tiles = split_span(row_block_key_tiles(m0, rows, p, kSimtKeys), blockIdx.z, a.n_splits);
    const KeyRange kr = key_range(i, p);
    Acc q[DPT], o[DPT];
#pragma unroll
    for (int c = 0; c < DPT; ++c) {
      const std::int64_t d = lane + 32 * c;
      q[c] = (i < p.seqlen_q && d < p.head_dim)
                 ? load_elem<T, Acc>(static_cast<const char*>(p.q.data) + b * p.q.strides[0] + i * p.q.strides[1] +
                                     h * p.q.strides[2] + d * p.q.strides[3])
                 : Acc(0);
      o[c] = 0;
    }
    Acc m = -INFINITY, l = 0;
    for (std::int64_t t = tiles.begin; t < tiles.end; ++t) {
      const std::int64_t j0 = t * kSimtKeys;
      Acc s[kSimtKeys];
      Acc tile_max = -INFINITY;
#pragma unroll
      for (int jj = 0; jj < kSimtKeys; ++jj) {
        const std::int64_t key = j0 + jj;
        Acc dot = 0;
        if (key < p.seqlen_k) {
          const char* krow = kv_row(p, p.k, b, key, hk);
#pragma unroll
          for (int c = 0; c < DPT; ++c) {
            const std::int64_t d = lane + 32 * c;
            if (d < p.head_dim) dot += q[c] * load_elem<T, Acc>(krow + d * p.k.strides[3]);
          }
        }
        // butterfly over the warp: every lane ends with the same sum (addition commutes)
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        const Acc sc = (key >= kr.lo && key < kr.hi)
                           ? apply_softcap(dot * scale, cap) + (slope != Acc(0) ? alibi_bias(slope, i, key, p) : Acc(0))
                           : Acc(-INFINITY);
        s[jj] = sc;
        tile_max = sc > tile_max ? sc : tile_max;
      }
      const OnlineSoftmaxStep<Acc> st = online_softmax_step(m, tile_max);
      if (st.m_new == -INFINITY) continue;  // nothing seen yet: the tile contributes nothing
      Acc rs = 0;
#pragma unroll
      for (int jj = 0; jj < kSimtKeys; ++jj) {
        s[jj] = exp(s[jj] - st.m_new);
        rs += s[jj];
      }
      l = l * st.alpha + rs;
      m = st.m_new;
#pragma unroll
      for (int c = 0; c < DPT; ++c) o[c] *= st.alpha;
#pragma unroll
      for (int jj = 0; jj < kSimtKeys; ++jj) {
        // masked keys (and keys past seqlen_k) contribute nothing, whatever their values (0 * inf
        // would be NaN); every visible key does. The warp owns the row: no divergence.
        if (j0 + jj < kr.lo || j0 + jj >= kr.hi) continue;
        const char* vrow = kv_row(p, p.v, b, j0 + jj, hk);
#pragma unroll
        for (int c = 0; c < DPT; ++c) {
          const std::int64_t d = lane + 32 * c;
          if (d < p.head_dim) o[c] += s[jj] * load_elem<T, Acc>(vrow + d * p.v.strides[3]);
        }
      }
    }
    if (i >= p.seqlen_q) continue;
    // (a NaN l leaves inv 0, but then o is NaN too: the NaN probability reached it)
    const Acc inv = l > Acc(0) ? Acc(1) / l : Acc(0);
#pragma unroll
    for (int c = 0; c < DPT; ++c) o[c] = apply_v_descale(o[c] * inv, vscale);
    if (a.n_splits == 1) {
      Out* out = static_cast<Out*>(p.out) + ((b * p.seqlen_q + i) * p.heads_q + h) * p.head_dim;
#pragma unroll
      for (int c = 0; c < DPT; ++c)
        if (lane + 32 * c < p.head_dim) out[lane + 32 * c] = from_f64<Out>(static_cast<double>(o[c]));
      if (lane == 0 && p.lse != nullptr) p.lse[lse_index(p, b, h, i)] = row_lse(m, l);
    } else {
      const std::int64_t slot = (blockIdx.z * p.batch * p.heads_q + bh) * p.seqlen_q + i;
      Acc* op = static_cast<Acc*>(a.o_part) + slot * a.dpad;
#pragma unroll
      for (int c = 0; c < DPT; ++c) op[lane + 32 * c] = o[c];
      if (lane == 0) static_cast<Acc*>(a.lse_part)[slot] = log_sum_exp(m, l);
    }
  }
}

// Split-KV merge: one block per (batch*head, query row), threads over head_dim.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads) Flash2CombineKernel(const Args a) {
  const AttnParams& p = a.p;
  const std::int64_t r = blockIdx.x;  // bh * seqlen_q + i
  const std::int64_t bh = r / p.seqlen_q, i = r % p.seqlen_q;
  const std::int64_t b = bh / p.heads_q, h = bh % p.heads_q;
  const std::int64_t per_split = p.batch * p.heads_q * p.seqlen_q;
  const Acc* lse_part = static_cast<const Acc*>(a.lse_part);
  const Acc* o_part = static_cast<const Acc*>(a.o_part);
  const Acc lse = merge_split_lse<Acc>(a.n_splits, [&](int s) { return lse_part[s * per_split + r]; });
  using Out = attn_out_t<T>;
  Out* out = static_cast<Out*>(p.out) + ((b * p.seqlen_q + i) * p.heads_q + h) * p.head_dim;
  for (std::int64_t d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    Acc acc = 0;
    for (int s = 0; s < a.n_splits; ++s) {
      const Acc w = split_weight(lse_part[s * per_split + r], lse);
      if (w != Acc(0)) acc += w * o_part[(s * per_split + r) * a.dpad + d];
    }
    out[d] = from_f64<Out>(static_cast<double>(acc));
  }
  if (threadIdx.x == 0 && p.lse != nullptr) p.lse[lse_index(p, b, h, i)] = static_cast<float>(lse);
}

bool vec_ok(const TensorArg& t, std::int64_t head_dim) {
  if (head_dim % 8 != 0 || t.strides[3] != 2 || reinterpret_cast<std::uintptr_t>(t.data) % 16 != 0) return false;
  for (int i = 0; i < 3; ++i)
    if (t.shape[i] != 1 && t.strides[i] % 16 != 0) return false;
  return true;
}

template <bool kBf16>
void launch_mma_dispatch(const Args& a, dim3 grid, cudaStream_t stream) {
  switch (a.dpad) {
    case 32: launch_mma<kBf16, 32>(a, grid, stream); break;
    case 64: launch_mma<kBf16, 64>(a, grid, stream); break;
    case 96: launch_mma<kBf16, 96>(a, grid, stream); break;
    case 128: launch_mma<kBf16, 128>(a, grid, stream); break;
    case 160: launch_mma<kBf16, 160>(a, grid, stream); break;
    case 192: launch_mma<kBf16, 192>(a, grid, stream); break;
    case 224: launch_mma<kBf16, 224>(a, grid, stream); break;
    case 256: launch_mma<kBf16, 256>(a, grid, stream); break;
    default: throw std::logic_error("flash2: no tensor-core kernel for padded head_dim " + std::to_string(a.dpad));
  }
}

template <typename T, typename Acc>
void launch_simt(const Args& a, dim3 grid, std::int64_t q_blocks, cudaStream_t stream) {
  switch (a.dpad) {
    case 32: Flash2SimtKernel<T, Acc, 1><<<grid, kThreads, 0, stream>>>(a, q_blocks); break;
    case 64: Flash2SimtKernel<T, Acc, 2><<<grid, kThreads, 0, stream>>>(a, q_blocks); break;
    case 128: Flash2SimtKernel<T, Acc, 4><<<grid, kThreads, 0, stream>>>(a, q_blocks); break;
    case 256: Flash2SimtKernel<T, Acc, 8><<<grid, kThreads, 0, stream>>>(a, q_blocks); break;
    default: throw std::logic_error("flash2: no FMA kernel for padded head_dim " + std::to_string(a.dpad));
  }
  FP_CUDA_CHECK(cudaGetLastError());
}

template <int D>
void add_mma_occupancy(std::vector<AttnKernelOccupancy>& out) {
  out.push_back({"flash2-mma", "float16", D, kThreads, mma_smem_bytes(D), mma_blocks_per_sm<false, D>()});
  out.push_back({"flash2-mma", "bfloat16", D, kThreads, mma_smem_bytes(D), mma_blocks_per_sm<true, D>()});
}

template <typename T, typename Acc, int DPT>
void add_simt_occupancy(std::vector<AttnKernelOccupancy>& out, const char* dtype) {
  int blocks = 0;
  FP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, Flash2SimtKernel<T, Acc, DPT>, kThreads, 0));
  out.push_back({"flash2-fma", dtype, 32 * DPT, kThreads, 0, blocks});
}

int env_splits() {
  const char* s = std::getenv("FLASHPARITY_CUDA_SPLITS");
  if (s == nullptr || *s == '\0') return 0;
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (*end != '\0' || v < 1 || v > 1024)
    throw std::invalid_argument(std::string("FLASHPARITY_CUDA_SPLITS must be an integer in 1..1024, got '") + s + "'");
  return static_cast<int>(v);
}

}  // namespace

}  // namespace flash2

void attention_flash2_cuda(const AttnParams& params, int device, std::uintptr_t stream_handle,
                           const std::vector<std::uintptr_t>& after) {
  using namespace flash2;
  DeviceGuard guard(device);
  const cudaStream_t stream = as_stream(stream_handle);
  const std::int64_t bh = params.batch * params.heads_q;
  for (std::uintptr_t s : after) stream_wait(stream, s);  // (first: a caller's later work relies on it)
  if (bh == 0 || params.seqlen_q == 0) return;
  AttnParams p = params;
  AttnInputCopies copies;
  align_attention_inputs(p, copies, stream);
  int sms = 0, major = 0, minor = 0;
  FP_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  FP_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FP_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));

  Args a;
  a.p = p;
  const bool tensor_cores = p.q.dtype == DType::Float16 || p.q.dtype == DType::BFloat16;
  std::int64_t rows_per_block, key_tile;
  if (tensor_cores) {
    if (major < 8)
      throw std::invalid_argument("flash2 on CUDA needs compute capability 8.0 or newer for float16/bfloat16 "
                                  "(mma.sync m16n8k16); this GPU is " + std::to_string(major) + "." +
                                  std::to_string(minor) + " (impl='naive' runs on it)");
    a.dpad = static_cast<int>((p.head_dim + 31) / 32 * 32);
    rows_per_block = kMmaRows;
    key_tile = mma_key_tile(a.dpad);
    a.vec_q = vec_ok(p.q, p.head_dim);
    a.vec_k = vec_ok(p.k, p.head_dim);
    a.vec_v = vec_ok(p.v, p.head_dim);
  } else {
    a.dpad = p.head_dim <= 32 ? 32 : p.head_dim <= 64 ? 64 : p.head_dim <= 128 ? 128 : 256;
    rows_per_block = kSimtRows;
    key_tile = kSimtKeys;
  }
  const std::int64_t q_blocks = (p.seqlen_q + rows_per_block - 1) / rows_per_block;
  if (tensor_cores && q_blocks > 65535)
    throw std::invalid_argument("seqlen_q " + std::to_string(p.seqlen_q) + " is too long for the CUDA flash2 grid (max " +
                                std::to_string(65535 * rows_per_block) + ")");
  if (bh > INT_MAX || bh * p.seqlen_q > INT_MAX)
    throw std::invalid_argument("batch * heads_q * seqlen_q is too large for the CUDA flash2 grid");
  const std::int64_t key_tiles = (p.seqlen_k + key_tile - 1) / key_tile;
  const int forced = env_splits();
  a.n_splits = forced > 0 ? static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(forced, key_tiles)))
                          : flash2_split_count(bh * q_blocks, sms, key_tiles);

  const std::size_t acc_size = p.q.dtype == DType::Float64 ? sizeof(double) : sizeof(float);
  std::optional<DeviceBuffer> o_part, lse_part;  // split-KV partials: allocated only when splitting
  if (a.n_splits > 1) {
    const std::size_t slots = static_cast<std::size_t>(a.n_splits) * bh * p.seqlen_q;
    a.o_part = o_part.emplace(slots * a.dpad * acc_size, stream).ptr;
    a.lse_part = lse_part.emplace(slots * acc_size, stream).ptr;
  }

  const dim3 grid(static_cast<unsigned>(bh), static_cast<unsigned>(std::min<std::int64_t>(q_blocks, 65535)),
                  static_cast<unsigned>(a.n_splits));
  switch (p.q.dtype) {
    case DType::Float16: launch_mma_dispatch<false>(a, grid, stream); break;
    case DType::BFloat16: launch_mma_dispatch<true>(a, grid, stream); break;
    case DType::Float32: launch_simt<float, float>(a, grid, q_blocks, stream); break;
    case DType::Float64: launch_simt<double, double>(a, grid, q_blocks, stream); break;
    case DType::Float8E4M3: launch_simt<f8e4m3_bits, float>(a, grid, q_blocks, stream); break;
    case DType::Float8E5M2: launch_simt<f8e5m2_bits, float>(a, grid, q_blocks, stream); break;
  }
  if (a.n_splits > 1) {
    const dim3 rows(static_cast<unsigned>(bh * p.seqlen_q));
    FP_DTYPE_SWITCH_ALL(p.q.dtype, T, [&] {
      if constexpr (std::is_same_v<T, double>) Flash2CombineKernel<T, double><<<rows, kThreads, 0, stream>>>(a);
      else Flash2CombineKernel<T, float><<<rows, kThreads, 0, stream>>>(a);
    });
    FP_CUDA_CHECK(cudaGetLastError());
  }
  FP_CUDA_CHECK(cudaStreamSynchronize(stream));
}

std::vector<AttnKernelOccupancy> attention_occupancy_cuda(int device) {
  using namespace flash2;
  DeviceGuard guard(device);
  std::vector<AttnKernelOccupancy> out;
  add_mma_occupancy<32>(out);
  add_mma_occupancy<64>(out);
  add_mma_occupancy<96>(out);
  add_mma_occupancy<128>(out);
  add_mma_occupancy<160>(out);
  add_mma_occupancy<192>(out);
  add_mma_occupancy<224>(out);
  add_mma_occupancy<256>(out);
  add_simt_occupancy<float, float, 1>(out, "float32");
  add_simt_occupancy<float, float, 2>(out, "float32");
  add_simt_occupancy<float, float, 4>(out, "float32");
  add_simt_occupancy<float, float, 8>(out, "float32");
  add_simt_occupancy<double, double, 1>(out, "float64");
  add_simt_occupancy<double, double, 2>(out, "float64");
  add_simt_occupancy<double, double, 4>(out, "float64");
  add_simt_occupancy<double, double, 8>(out, "float64");
  return out;
}

}  // namespace flashparity
