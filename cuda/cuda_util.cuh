// Shared by the CUDA translation units: the checked-call macro, stream handles as the array
// protocols give them, stream ordering between them, a guard that restores the calling thread's
// current device, typed element loads, and the attention inputs' alignment.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "flashparity/attention_math.h"
#include "flashparity/dtype.h"

#define FP_CUDA_CHECK(call)                                                                          \
  do {                                                                                               \
    const cudaError_t fp_err_ = (call);                                                              \
    if (fp_err_ != cudaSuccess)                                                                      \
      throw std::runtime_error(std::string("CUDA error in ") + #call + ": " + cudaGetErrorString(fp_err_)); \
  } while (0)

namespace flashparity {

// A stream as __cuda_array_interface__ / DLPack name it: 0 or 1 the legacy default stream, 2 the
// per-thread default stream, anything else a cudaStream_t value.
inline cudaStream_t as_stream(std::uintptr_t s) {
  if (s == 0 || s == 1) return cudaStreamLegacy;
  if (s == 2) return cudaStreamPerThread;
  return reinterpret_cast<cudaStream_t>(s);
}

// Makes `device` current for a scope and restores the previous device after it.
struct DeviceGuard {
  int previous = -1;
  explicit DeviceGuard(int device) {
    FP_CUDA_CHECK(cudaGetDevice(&previous));
    if (previous != device) FP_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous) cudaSetDevice(previous);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
};

// The exact float64 value of one element of T at an address aligned to sizeof(T): one typed load
// (ld.global.u16 / f32 / f64). The attention kernels only ever see element-aligned inputs
// (align_attention_inputs); a test reads their PTX for byte loads.
template <typename T>
__device__ FP_INLINE double load_value(const void* addr) {
  return to_f64(*static_cast<const T*>(addr));
}

// A stream-ordered device allocation, freed on every path.
struct DeviceBuffer {
  void* ptr = nullptr;
  cudaStream_t stream;
  DeviceBuffer(std::size_t bytes, cudaStream_t s) : stream(s) { FP_CUDA_CHECK(cudaMallocAsync(&ptr, bytes, s)); }
  ~DeviceBuffer() {
    if (ptr != nullptr) cudaFreeAsync(ptr, stream);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

// Orders `stream` after the work queued so far on `producer` (a stream as the protocols name it)
// without blocking the host: an event recorded there, waited on here. Nothing when they are the same.
void stream_wait(cudaStream_t stream, std::uintptr_t producer);

// Each of q, k and v whose pointer or byte strides are not multiples of its element size (a view at
// an odd byte offset, which the array protocols allow) is copied once, on `stream`, into a
// contiguous buffer owned by `storage`, and `p` is pointed at it; aligned inputs (the usual case)
// are read in place. The kernels then load every element with one typed load.
struct AttnInputCopies {
  DeviceBuffer* bufs[3] = {nullptr, nullptr, nullptr};
  AttnInputCopies() = default;
  ~AttnInputCopies() {
    for (DeviceBuffer* b : bufs) delete b;
  }
  AttnInputCopies(const AttnInputCopies&) = delete;
  AttnInputCopies& operator=(const AttnInputCopies&) = delete;
};
void align_attention_inputs(AttnParams& p, AttnInputCopies& storage, cudaStream_t stream);

}  // namespace flashparity
