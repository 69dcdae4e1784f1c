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

void copy_to_host(void* dst, const void* src, std::size_t bytes, int device) {
  DeviceGuard guard(device);
  FP_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

int current_device() {
  int device = 0;
  FP_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

}  // namespace flashparity
