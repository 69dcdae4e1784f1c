// What the attention launchers do before their kernels: order the kernel stream after every
// input's producer stream, and copy an input whose elements are not aligned to their size into a
// contiguous buffer (the only byte-wise loads of the attention path live here, in RepackBytesKernel).
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_util.cuh"

namespace flashparity {

namespace {

constexpr int kRepackThreads = 256;

// dst[flat] = the element of the view src at C-order index flat, copied byte by byte (its
// address may be odd). Grid-stride over 64-bit indices.
__global__ void RepackBytesKernel(const TensorArg src, std::int64_t n, int esize, unsigned char* dst) {
  for (std::int64_t flat = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; flat < n;
       flat += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t rest = flat, off = 0;
    for (int d = src.ndim - 1; d >= 0; --d) {
      off += (rest % src.shape[d]) * src.strides[d];
      rest /= src.shape[d];
    }
    const unsigned char* from = static_cast<const unsigned char*>(src.data) + off;
    for (int b = 0; b < esize; ++b) dst[flat * esize + b] = from[b];
  }
}

bool elements_aligned(const TensorArg& t) {
  const std::int64_t size = dtype_size(t.dtype);
  if (reinterpret_cast<std::uintptr_t>(t.data) % static_cast<std::uintptr_t>(size) != 0) return false;
  for (int d = 0; d < t.ndim; ++d)
    if (t.shape[d] != 1 && t.strides[d] % size != 0) return false;
  return true;
}

}  // namespace

void stream_wait(cudaStream_t stream, std::uintptr_t producer) {
  const cudaStream_t from = as_stream(producer);
  if (from == stream) return;
  cudaEvent_t ev;
  FP_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  const cudaError_t recorded = cudaEventRecord(ev, from);
  if (recorded != cudaSuccess) {
    // a stream of another device or context (the event belongs to the current one): the host
    // waits for it instead
    cudaEventDestroy(ev);
    cudaGetLastError();
    FP_CUDA_CHECK(cudaStreamSynchronize(from));
    return;
  }
  const cudaError_t err = cudaStreamWaitEvent(stream, ev, 0);  // captures the event's state now
  cudaEventDestroy(ev);  // legal while the wait is pending: its resources are released afterwards
  FP_CUDA_CHECK(err);
}

void align_attention_inputs(AttnParams& p, AttnInputCopies& storage, cudaStream_t stream) {
  TensorArg* inputs[3] = {&p.q, &p.k, &p.v};
  for (int i = 0; i < 3; ++i) {
    TensorArg& t = *inputs[i];
    const std::int64_t n = t.numel();
    if (n == 0 || elements_aligned(t)) continue;
    const int esize = dtype_size(t.dtype);
    storage.bufs[i] = new DeviceBuffer(static_cast<std::size_t>(n) * esize, stream);
    const std::int64_t blocks = (n + kRepackThreads - 1) / kRepackThreads;
    RepackBytesKernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), kRepackThreads, 0, stream>>>(
        t, n, esize, static_cast<unsigned char*>(storage.bufs[i]->ptr));
    FP_CUDA_CHECK(cudaGetLastError());
    t.data = storage.bufs[i]->ptr;
    std::int64_t stride = esize;
    for (int d = t.ndim - 1; d >= 0; --d) {
      t.strides[d] = stride;
      stride *= t.shape[d];
    }
  }
}

}  // namespace flashparity
