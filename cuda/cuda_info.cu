// CUDA build: device discovery through the statically linked runtime. A machine without a driver or
// a GPU reports an empty device list and the runtime's reason, never an error.
#include <cuda_runtime.h>

#include "flashparity/cuda_info.h"

namespace flashparity {

CudaInfo query_cuda_info() {
  CudaInfo info;
  info.compiled = true;
  cudaRuntimeGetVersion(&info.runtime_version);
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess) info.driver_version = 0;

  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    info.status = info.driver_version == 0 ? std::string("no CUDA driver")
                                           : std::string(cudaGetErrorString(err));
    cudaGetLastError();  // a non-sticky error: clear it so later runtime calls start clean
    return info;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    err = cudaGetDeviceProperties(&prop, i);
    if (err != cudaSuccess) {
      info.status = cudaGetErrorString(err);
      cudaGetLastError();
      continue;
    }
    CudaDeviceInfo d;
    d.index = i;
    d.name = prop.name;
    d.major = prop.major;
    d.minor = prop.minor;
    d.total_memory = static_cast<std::int64_t>(prop.totalGlobalMem);
    d.multiprocessors = prop.multiProcessorCount;
    info.devices.push_back(d);
  }
  if (count == 0 && info.status.empty()) info.status = "no CUDA device";
  return info;
}

}  // namespace flashparity
