// Glue between Python objects and the kernels: argument checks, dispatch, errors as Python types.
#pragma once

#include <string>
#include <vector>

#include <pybind11/pybind11.h>

#include "flashparity/attention_math.h"
#include "flashparity/merge_states.h"
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
void bind_attention_backward(pybind11::module_& m);
void bind_merge_states(pybind11::module_& m);

// Checked attention parameters from the descriptors (out/lse left for the caller).
// `kv_pool`: k and v are a paged cache's blocks (their dim 0 is not the batch).
AttnParams make_attn_params(const pybind11::tuple& q, const pybind11::tuple& k, const pybind11::tuple& v, int impl,
                            double scale, double softcap, std::int64_t left, std::int64_t right, bool kv_pool = false);
// A varlen batch's or KV cache's layout as Python gives it: _core.SeqLayout, built from keyword
// arguments only (bind_attention), so neither side depends on an order. The pointers are host int32
// arrays or 0: varlen cu_seqlens_q and cu_seqlens_k [batch + 1]; KV cache cache_seqlens [batch] and,
// for a paged cache, block_table [batch, block_table_stride]. Checked when built.
struct SeqLayoutArgs {
  std::int64_t batch = 0;
  std::uintptr_t cu_seqlens_q = 0;
  std::uintptr_t cu_seqlens_k = 0;
  std::uintptr_t cache_seqlens = 0;
  std::uintptr_t block_table = 0;
  std::int64_t block_table_stride = 0;
};
// The layout's sequences as one-sequence problems; the block table pointer is left for the caller to
// place where the kernels run.
std::vector<AttnParams> sequence_problems_from_python(const AttnParams& base, const SeqLayoutArgs& layout,
                                                      const std::int32_t* block_table_in_kernel_memory);
// Checked merge_attention_states parameters from the descriptors (merge_states_glue.cpp).
MergeParams merge_params_from_python(const pybind11::tuple& oa, const pybind11::tuple& lsea, const pybind11::tuple& ob,
                                     const pybind11::tuple& lseb, std::uintptr_t out, std::uintptr_t lse_out);
// ALiBi slopes from Python's (pointer or 0, batch stride, head stride) (attention.py checked them).
void set_alibi(AttnParams& p, const pybind11::tuple& alibi);
// FP8 descales from Python's (pointer to host float32 [3, batch, heads_kv] or 0, plane stride):
// std::invalid_argument for descales on inputs that are not FP8.
void set_descale(AttnParams& p, const pybind11::tuple& descale);

#if FP_WITH_CUDA
void bind_parity_cuda(pybind11::module_& m);
void bind_device_cuda(pybind11::module_& m);
#endif

}  // namespace flashparity
