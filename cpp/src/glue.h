// Glue between Python objects and the kernels: argument checks, dispatch, errors as Python types.
#pragma once

#include <string>

#include <pybind11/pybind11.h>

#include "flashparity/attention_math.h"
#include "flashparity/parity_stats.h"
#include "flashparity/tensor.h"

namespace flashparity {

// (data pointer, dtype code, shape, byte strides) -> TensorArg; `name` labels error messages.
TensorArg tensor_arg(const pybind11::tuple& desc, const char* name);

// Checked arguments of a parity reduction: same shape, elements present, valid tolerances.
struct PreparedParity {
  TensorArg a, b;
  ParityParams p;
};
PreparedParity prepare_parity(const pybind11::tuple& a, const pybind11::tuple& b, double atol, double rtol);

// One fused pass on the CPU over two host tensors of the same shape (GIL released).
ParityAccum parity_host(const pybind11::tuple& a, const pybind11::tuple& b, double atol, double rtol);

// The finished statistics of an accumulator as a dict of Python numbers.
pybind11::dict accum_to_dict(const ParityAccum& s);

void bind_parity(pybind11::module_& m);
void bind_dlpack(pybind11::module_& m);
void bind_attention(pybind11::module_& m);

// Checked attention parameters from the descriptors (out/lse left for the caller).
AttnParams make_attn_params(const pybind11::tuple& q, const pybind11::tuple& k, const pybind11::tuple& v, int impl,
                            double scale, double softcap, std::int64_t left, std::int64_t right);
// CPU emulation of one warp of the tensor-core flash2 tile math (mma_layout_check.cpp): "" when
// S = Q K^T and O = P V come out exact, else what differed. d and bc multiples of 16, warp 0..3.
std::string mma_layout_check(int d, int bc, int warp);

#if FP_WITH_CUDA
void bind_parity_cuda(pybind11::module_& m);
void bind_device_cuda(pybind11::module_& m);
#endif

}  // namespace flashparity
