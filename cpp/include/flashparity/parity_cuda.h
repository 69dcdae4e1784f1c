// CUDA parity reduction (cuda/parity.cu): the launcher the Python glue calls for device inputs.
#pragma once

#include <cstdint>

#include "flashparity/parity_stats.h"
#include "flashparity/tensor.h"

namespace flashparity {

// One fused pass over device tensors a and b (same shape, any strides) on `device`, run on a's
// producer stream `stream_a` (a cudaStream_t value; 0 or 1 the legacy default stream, 2 the
// per-thread default stream, as in __cuda_array_interface__) after b's stream `stream_b` is done.
// The blocks' partial states fold into one on the device in a fixed order, and that one state comes
// back: deterministic for a given device and input (parity_grid_host runs the same steps on the CPU).
// Throws std::runtime_error naming the failed CUDA call and its message.
ParityAccum parity_cuda(const TensorArg& a, const TensorArg& b, const ParityParams& p, int device,
                        std::uintptr_t stream_a, std::uintptr_t stream_b);

// The blocks (of 128 threads) parity_cuda launches on `device` for n elements of dtypes (a, b):
// parity_grid_host with this grid runs the kernel's steps on the CPU.
int parity_cuda_blocks(DType a, DType b, std::int64_t n, int device);

// The device a pointer belongs to; throws std::invalid_argument for a host or unknown pointer.
int cuda_pointer_device(std::uintptr_t ptr);

}  // namespace flashparity
