// fp.merge_attention_states on the GPU: one thread per output element, the float64 math of
// merge_states.h (shared with the CPU loop).
#include <algorithm>

#include "cuda_util.cuh"
#include "flashparity/merge_states.h"

namespace flashparity {

namespace {

constexpr int kThreads = 256;

template <typename T, typename L>
__global__ void MergeStatesKernel(const MergeParams p) {
  const std::int64_t B = p.oa.shape[0], S = p.oa.shape[1], H = p.oa.shape[2], D = p.oa.shape[3];
  const std::int64_t n = B * S * H * D;
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t d = e % D, h = (e / D) % H, s = (e / (D * H)) % S, b = e / (D * H * S);
    const auto lse_at = [&](const TensorArg& t) {
      return load_value<L>(static_cast<const char*>(t.data) + b * t.strides[0] + h * t.strides[1] + s * t.strides[2]);
    };
    const MergedState m = merge_state(lse_at(p.lsea), lse_at(p.lseb));
    if (d == 0) static_cast<L*>(p.lse_out)[(b * H + h) * S + s] = from_f64<L>(m.lse);
    const auto at = [&](const TensorArg& t) {
      return static_cast<const char*>(t.data) + b * t.strides[0] + s * t.strides[1] + h * t.strides[2] + d * t.strides[3];
    };
    const double oa = m.wa != 0.0 ? load_value<T>(at(p.oa)) : 0.0;
    const double ob = m.wb != 0.0 ? load_value<T>(at(p.ob)) : 0.0;
    static_cast<T*>(p.out)[e] = from_f64<T>(merge_value(m, oa, ob));
  }
}

// Rows with head_dim 0 still have an lse to write.
template <typename L>
__global__ void MergeLseKernel(const MergeParams p) {
  const std::int64_t B = p.oa.shape[0], S = p.oa.shape[1], H = p.oa.shape[2];
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < B * H * S;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t s = e % S, h = (e / S) % H, b = e / (S * H);
    const auto lse_at = [&](const TensorArg& t) {
      return load_value<L>(static_cast<const char*>(t.data) + b * t.strides[0] + h * t.strides[1] + s * t.strides[2]);
    };
    static_cast<L*>(p.lse_out)[e] = from_f64<L>(merge_state(lse_at(p.lsea), lse_at(p.lseb)).lse);
  }
}

unsigned blocks_for(std::int64_t n) {
  return static_cast<unsigned>(std::min<std::int64_t>((n + kThreads - 1) / kThreads, 65535 * 8));
}

}  // namespace

void merge_states_cuda(const MergeParams& p, int device, std::uintptr_t stream_handle,
                       const std::vector<std::uintptr_t>& after) {
  DeviceGuard guard(device);
  const cudaStream_t stream = as_stream(stream_handle);
  for (std::uintptr_t s : after) stream_wait(stream, s);
  const std::int64_t rows = p.lsea.numel();
  if (rows == 0) return;
  FP_DTYPE_SWITCH(p.oa.dtype, T, [&] {
    const auto launch = [&](auto l) {
      using L = decltype(l);
      if (p.oa.shape[3] == 0) MergeLseKernel<L><<<blocks_for(rows), kThreads, 0, stream>>>(p);
      else MergeStatesKernel<T, L><<<blocks_for(p.oa.numel()), kThreads, 0, stream>>>(p);
    };
    if (p.lsea.dtype == DType::Float64) launch(double{});
    else launch(float{});
  });
  FP_CUDA_CHECK(cudaGetLastError());
  FP_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace flashparity
