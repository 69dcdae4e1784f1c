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

// The same C-order sequence with size-1 dimensions dropped and mergeable neighbours merged (a
// contiguous tensor becomes one dimension). Plain data: host code and CUDA kernels read it alike.
struct CollapsedView {
  const char* base = nullptr;
  int esize = 0;
  int ndim = 0;
  std::int64_t shape[kMaxDims] = {};
  std::int64_t strides[kMaxDims] = {};  // bytes

  bool contiguous() const { return ndim == 1 && strides[0] == esize; }
};

inline CollapsedView collapse_dims(const TensorArg& t) {
  CollapsedView v;
  v.base = static_cast<const char*>(t.data);
  v.esize = dtype_size(t.dtype);
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] == 1) continue;
    if (v.ndim > 0 && v.strides[v.ndim - 1] == t.strides[i] * t.shape[i]) {
      v.shape[v.ndim - 1] *= t.shape[i];
      v.strides[v.ndim - 1] = t.strides[i];
    } else {
      v.shape[v.ndim] = t.shape[i];
      v.strides[v.ndim] = t.strides[i];
      ++v.ndim;
    }
  }
  if (v.ndim == 0) {  // a single element
    v.ndim = 1;
    v.shape[0] = 1;
    v.strides[0] = v.esize;
  }
  return v;
}

}  // namespace flashparity
