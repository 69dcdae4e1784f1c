// fp.merge_attention_states on the GPU: one thread per output element, the float64 math of
// merge_states.h (shared with the CPU loop).
#include <algorithm>

#include "cuda_util.cuh"
#include "flashparity/merge_states.h"

namespace flashparity {

namespace {

constexpr int kThreads = 256;

// One thread per output element (per row when head_dim is 0: rows still have an lse to write); the
// thread of d == 0 writes the row's lse.
template <typename T, typename L>
__global__ void MergeStatesKernel(const MergeParams p) {
  const std::int64_t B = p.oa.shape[0], S = p.oa.shape[1], H = p.oa.shape[2], D = p.oa.shape[3];
  const std::int64_t Dn = D > 0 ? D : 1, n = B * S * H * Dn;
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t d = e % Dn, h = (e / Dn) % H, s = (e / (Dn * H)) % S, b = e / (Dn * H * S);
    const auto lse_at = [&](const TensorArg& t) {
      return load_value<L>(static_cast<const char*>(t.data) + b * t.strides[0] + h * t.strides[1] + s * t.strides[2]);
    };
    const MergedState m = merge_state(lse_at(p.lsea), lse_at(p.lseb));
    if (d == 0) static_cast<L*>(p.lse_out)[(b * H + h) * S + s] = from_f64<L>(m.lse);
    if (D == 0) continue;
    const auto at = [&](const TensorArg& t) {
      return static_cast<const char*>(t.data) + b * t.strides[0] + s * t.strides[1] + h * t.strides[2] + d * t.strides[3];
    };
    const double oa = m.wa != 0.0 ? load_value<T>(at(p.oa)) : 0.0;
    const double ob = m.wb != 0.0 ? load_value<T>(at(p.ob)) : 0.0;
    static_cast<T*>(p.out)[e] = from_f64<T>(merge_value(m, oa, ob));
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
      MergeStatesKernel<T, L><<<blocks_for(rows * std::max<std::int64_t>(p.oa.shape[3], 1)), kThreads, 0, stream>>>(p);
    };
    if (p.lsea.dtype == DType::Float64) launch(double{});
    else launch(float{});
  });
  FP_CUDA_CHECK(cudaGetLastError());
  FP_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace flashparity
