// CPU build: no CUDA runtime is linked, so no device is visible to _core.
#include "flashparity/cuda_info.h"

namespace flashparity {

CudaInfo query_cuda_info() {
  CudaInfo info;
  info.status = "flashparity was built without CUDA (FLASHPARITY_CUDA=OFF or no nvcc at build time)";
  return info;
}

}  // namespace flashparity
