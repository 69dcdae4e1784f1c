// A CPU emulation of one warp of the tensor-core flash2 kernel's tile math (mma_layout_check.cpp),
// for the CPU tests of the layout functions the CUDA kernel uses (flashparity/mma_layout.h).
#pragma once

#include <string>

namespace flashparity {

// "" when S = Q K^T and O = P V come out exact, else what differed. d and bc multiples of 16, warp 0..3.
std::string mma_layout_check(int d, int bc, int warp);

}  // namespace flashparity
