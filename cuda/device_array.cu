// Device memory owned by flashparity: allocation, host<->device copies, release.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda_util.cuh"
#include "flashparity/device_array.h"

namespace flashparity {

void* device_alloc(std::size_t bytes, int device) {
  DeviceGuard guard(device);
  void* ptr = nullptr;
  FP_CUDA_CHECK(cudaMalloc(&ptr, bytes == 0 ? 1 : bytes));
  return ptr;
}

void device_free(void* ptr, int device) noexcept {
  if (ptr == nullptr) return;
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) return;
  if (previous != device) cudaSetDevice(device);
  cudaFree(ptr);
  if (previous != device) cudaSetDevice(previous);
}

void copy_to_device(void* dst, const void* src, std::size_t bytes, int device) {
  DeviceGuard guard(device);
  FP_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void copy_to_host(void* dst, const void* src, std::size_t bytes, int device, std::uintptr_t after) {
  DeviceGuard guard(device);
  if (after != 0) FP_CUDA_CHECK(cudaStreamSynchronize(as_stream(after)));  // (the producer's writes land first)
  FP_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

void copy_to_device_on(void* dst, const void* src, std::size_t bytes, int device, std::uintptr_t stream) {
  DeviceGuard guard(device);
  // (from pageable memory the call returns once the bytes are staged: the source may go away)
  FP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, as_stream(stream)));
}

int current_device() {
  int device = 0;
  FP_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

}  // namespace flashparity
