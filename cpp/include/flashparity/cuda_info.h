// What the CUDA runtime linked into _core can see. Implemented in cuda/cuda_info.cu (CUDA build) or
// cpp/src/bindings/cuda_info_nocuda.cpp (CPU build). Never throws: no driver or no GPU is a normal state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace flashparity {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int major = 0;  // compute capability
  int minor = 0;
  std::int64_t total_memory = 0;  // bytes
  int multiprocessors = 0;
};

struct CudaInfo {
  bool compiled = false;        // CUDA kernels are in this build
  int runtime_version = 0;      // e.g. 13000 for 13.0 (the statically linked cudart)
  int driver_version = 0;       // 0 when no driver is installed
  std::vector<CudaDeviceInfo> devices;
  std::string status;           // "" when devices were enumerated, else why none are visible
};

CudaInfo query_cuda_info();

}  // namespace flashparity
