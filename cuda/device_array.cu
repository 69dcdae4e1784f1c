// Device memory owned by flashparity: allocation, host<->device copies, release.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "flashparity/device_array.h"

namespace flashparity {

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

struct Device {
  int previous = -1;
  explicit Device(int device) {
    check(cudaGetDevice(&previous), "cudaGetDevice");
    if (previous != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~Device() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous) cudaSetDevice(previous);
  }
};

}  // namespace

void* device_alloc(std::size_t bytes, int device) {
  Device guard(device);
  void* ptr = nullptr;
  check(cudaMalloc(&ptr, bytes == 0 ? 1 : bytes), "cudaMalloc");
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
  Device guard(device);
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (host to device)");
}

void copy_to_host(void* dst, const void* src, std::size_t bytes, int device) {
  Device guard(device);
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (device to host)");
}

}  // namespace flashparity
