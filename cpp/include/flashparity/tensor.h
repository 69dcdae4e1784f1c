// A framework-free strided tensor argument: raw pointer, dtype, shape and byte strides.
#pragma once

#include <cstdint>
#include <string>

#include "flashparity/dtype.h"

namespace flashparity {

constexpr int kMaxDims = 16;

struct TensorArg {
  const void* data = nullptr;
  DType dtype = DType::Float32;
  int ndim = 0;
  std::int64_t shape[kMaxDims] = {};
  std::int64_t strides[kMaxDims] = {};  // bytes; negative and zero allowed

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  bool c_contiguous() const {
    std::int64_t expect = dtype_size(dtype);
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expect) return false;
      expect *= shape[i];
    }
    return true;
  }
};

}  // namespace flashparity
