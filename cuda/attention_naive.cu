// The naive attention forward on the GPU (the reference): per chunk of query rows, one kernel writes
// the scaled, capped, masked scores, one reduces each row (max, exp, sum, LSE) in place, one forms
// P.V and the output. Shares key_range / softcap / LSE with the CPU kernels (attention_math.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda_util.cuh"
#include "flashparity/attention_cuda.h"
#include "flashparity/dtype.h"

namespace flashparity {

namespace {

constexpr int kThreads = 128;
constexpr std::size_t kScratchBytes = std::size_t{256} << 20;

template <typename T>
__device__ FP_INLINE double load(const TensorArg& t, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) {
  return load_value<T>(static_cast<const char*>(t.data) + b * t.strides[0] + s * t.strides[1] + h * t.strides[2] +
                      d * t.strides[3]);
}

// scores[bh][r][j] for query rows r0 + r: grid (key blocks, rows, batch*heads_q)
template <typename T, typename Acc>
__global__ void NaiveScoresKernel(const AttnParams p, std::int64_t r0, std::int64_t rows, Acc* scores) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t r = blockIdx.y, bh = blockIdx.z;
  const std::int64_t i = r0 + r;
  if (j >= p.seqlen_k || i >= p.seqlen_q) return;
  const std::int64_t b = bh / p.heads_q, h = bh % p.heads_q, hk = h / (p.heads_q / p.heads_kv);
  const KeyRange kr = key_range(i, p);
  Acc s = -INFINITY;
  if (j >= kr.lo && j < kr.hi) {
    Acc dot = 0;
    for (std::int64_t d = 0; d < p.head_dim; ++d)
      dot += static_cast<Acc>(load<T>(p.q, b, i, h, d)) *
             static_cast<Acc>(load_value<T>(kv_row(p, p.k, b, j, hk) + d * p.k.strides[3]));
    s = apply_softcap(dot * static_cast<Acc>(score_scale(p, b, h)), static_cast<Acc>(p.softcap));
    if (p.alibi != nullptr) s += alibi_bias(static_cast<Acc>(alibi_slope(p, b, h)), i, j, p);
  }
  scores[(bh * rows + r) * p.seqlen_k + j] = s;
}

// One block per row: max, exp(s - max) in place, sum; LSE out. grid (rows, batch*heads_q)
template <typename Acc>
__global__ void NaiveSoftmaxKernel(const AttnParams p, std::int64_t r0, std::int64_t rows, Acc* scores, Acc* lsum) {
  __shared__ Acc red[kThreads];
  const std::int64_t r = blockIdx.x, bh = blockIdx.y;
  const std::int64_t i = r0 + r;
  if (i >= p.seqlen_q) return;
  Acc* row = scores + (bh * rows + r) * p.seqlen_k;
  Acc m = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < p.seqlen_k; j += blockDim.x) m = row[j] > m ? row[j] : m;
  red[threadIdx.x] = m;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) red[threadIdx.x] = red[threadIdx.x + s] > red[threadIdx.x] ? red[threadIdx.x + s] : red[threadIdx.x];
    __syncthreads();
  }
  m = red[0];
  __syncthreads();
  Acc l = 0;
  for (std::int64_t j = threadIdx.x; j < p.seqlen_k; j += blockDim.x) {
    const Acc e = m == -INFINITY ? Acc(0) : exp(row[j] - m);
    row[j] = e;
    l += e;
  }
  red[threadIdx.x] = l;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    lsum[bh * rows + r] = red[0];
    if (p.lse != nullptr) {
      const std::int64_t b = bh / p.heads_q, h = bh % p.heads_q;
      p.lse[lse_index(p, b, h, i)] = row_lse(m, red[0]);
    }
  }
}

// out[b][i][h][d] = sum_j p[j] v[j][d] / l: grid (head_dim blocks, rows, batch*heads_q)
template <typename T, typename Acc>
__global__ void NaivePVKernel(const AttnParams p, std::int64_t r0, std::int64_t rows, const Acc* scores,
                              const Acc* lsum) {
  const std::int64_t d = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t r = blockIdx.y, bh = blockIdx.z;
  const std::int64_t i = r0 + r;
  if (d >= p.head_dim || i >= p.seqlen_q) return;
  const std::int64_t b = bh / p.heads_q, h = bh % p.heads_q, hk = h / (p.heads_q / p.heads_kv);
  const Acc* row = scores + (bh * rows + r) * p.seqlen_k;
  // masked keys contribute nothing, whatever their values (0 * inf would be NaN); visible ones all do
  const KeyRange kr = key_range(i, p);
  Acc acc = 0;
  for (std::int64_t j = kr.lo; j < kr.hi; ++j)
    acc += row[j] * static_cast<Acc>(load_value<T>(kv_row(p, p.v, b, j, hk) + d * p.v.strides[3]));
  const Acc l = lsum[bh * rows + r];
  using Out = attn_out_t<T>;  // (bfloat16 for FP8 inputs, whose v_descale scales the output)
  Out* out = static_cast<Out*>(p.out) + ((b * p.seqlen_q + i) * p.heads_q + h) * p.head_dim + d;
  // (a NaN l, from an inf score, stays NaN)
  const Acc o = apply_v_descale(l == Acc(0) ? Acc(0) : acc / l, static_cast<Acc>(out_scale(p, b, h)));
  *out = from_f64<Out>(static_cast<double>(o));
}

template <typename T, typename Acc>
void run(const AttnParams& p, cudaStream_t stream) {
  const std::int64_t bh = p.batch * p.heads_q;  // > 0: the caller returns first on empty outputs
  const std::int64_t sk = std::max<std::int64_t>(p.seqlen_k, 1);
  std::int64_t rows = static_cast<std::int64_t>(kScratchBytes / (sizeof(Acc) * static_cast<std::size_t>(bh * sk)));
  rows = std::max<std::int64_t>(1, std::min<std::int64_t>({rows, p.seqlen_q, 65535}));
  if (bh > 65535) throw std::invalid_argument("batch * heads_q must be at most 65535 for the CUDA naive kernel");
  DeviceBuffer scores_buf(sizeof(Acc) * bh * rows * sk, stream), lsum_buf(sizeof(Acc) * bh * rows, stream);
  Acc* scores = static_cast<Acc*>(scores_buf.ptr);
  Acc* lsum = static_cast<Acc*>(lsum_buf.ptr);
  for (std::int64_t r0 = 0; r0 < p.seqlen_q; r0 += rows) {
    const std::int64_t n = std::min(rows, p.seqlen_q - r0);
    if (p.seqlen_k > 0) {
      const dim3 g1(static_cast<unsigned>((p.seqlen_k + kThreads - 1) / kThreads), static_cast<unsigned>(n),
                    static_cast<unsigned>(bh));
      NaiveScoresKernel<T, Acc><<<g1, kThreads, 0, stream>>>(p, r0, rows, scores);
      FP_CUDA_CHECK(cudaGetLastError());
    }
    const dim3 g2(static_cast<unsigned>(n), static_cast<unsigned>(bh));
    NaiveSoftmaxKernel<Acc><<<g2, kThreads, 0, stream>>>(p, r0, rows, scores, lsum);
    FP_CUDA_CHECK(cudaGetLastError());
    const dim3 g3(static_cast<unsigned>((p.head_dim + kThreads - 1) / kThreads), static_cast<unsigned>(n),
                  static_cast<unsigned>(bh));
    NaivePVKernel<T, Acc><<<g3, kThreads, 0, stream>>>(p, r0, rows, scores, lsum);
    FP_CUDA_CHECK(cudaGetLastError());
  }
  FP_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace

void attention_naive_cuda(const AttnParams& params, int device, std::uintptr_t stream_handle,
                          const std::vector<std::uintptr_t>& after) {
  DeviceGuard guard(device);
  const cudaStream_t stream = as_stream(stream_handle);
  for (std::uintptr_t s : after) stream_wait(stream, s);  // (first: a caller's later work relies on it)
  if (params.batch * params.heads_q == 0 || params.seqlen_q == 0) return;
  AttnParams p = params;
  AttnInputCopies copies;
  align_attention_inputs(p, copies, stream);
  FP_DTYPE_SWITCH_ALL(p.q.dtype, T, [&] {
    if constexpr (std::is_same_v<T, double>) run<T, double>(p, stream);
    else run<T, float>(p, stream);
  });
}

}  // namespace flashparity
