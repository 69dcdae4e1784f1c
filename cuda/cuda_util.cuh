// Shared by the CUDA translation units: the checked-call macro, stream handles as the array
// protocols give them, and a guard that restores the calling thread's current device.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

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

// The exact float64 value of one element of T at any (possibly unaligned) address.
template <typename T>
__device__ FP_INLINE double load_value(const void* addr) {
  T x;
  memcpy(&x, addr, sizeof(T));
  return to_f64(x);
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

}  // namespace flashparity
