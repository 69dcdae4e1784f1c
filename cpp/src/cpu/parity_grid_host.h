// The CUDA parity kernel's algorithm on the host (parity_grid_host.cpp): for the tests.
#pragma once

#include <cstdint>

#include "flashparity/parity_stats.h"
#include "flashparity/tensor.h"

namespace flashparity {

// The state the CUDA kernel computes with a grid of `blocks` x `threads` (a power of two), run
// thread by thread on the CPU. Throws std::invalid_argument for a bad grid.
ParityAccum parity_grid_host(const TensorArg& a, const TensorArg& b, const ParityParams& p, int blocks, int threads);

// The blocks the CUDA launcher takes for n elements when `resident` blocks fit the device at once.
std::int64_t parity_grid_blocks(std::int64_t n, int threads, std::int64_t resident);

}  // namespace flashparity
