// Python-facing glue of the CPU attention backward: checks the descriptors kernels/attention.py
// built (it validated shapes with the user's names already), then runs the kernels with the GIL
// released.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/glue.h"
#include "cpu/attention_backward_cpu.h"
#include "cpu/attention_seqs.h"

namespace py = pybind11;

namespace flashparity {

namespace {

void attention_backward_host(const py::tuple& q_desc, const py::tuple& k_desc, const py::tuple& v_desc,
                             const py::tuple& out_desc, const py::tuple& dout_desc, const py::tuple& lse_desc,
                             std::uintptr_t dq, std::uintptr_t dk, std::uintptr_t dv, int impl, double scale,
                             double softcap, std::int64_t left, std::int64_t right, const py::tuple& alibi,
                             const py::object& layout) {
  AttnBwdParams bp;
  bp.fwd = make_attn_params(q_desc, k_desc, v_desc, impl, scale, softcap, left, right);
  set_alibi(bp.fwd, alibi);
  if (is_fp8(bp.fwd.q.dtype))
    throw std::invalid_argument(std::string("the attention backward takes float64, float32, float16 and bfloat16 "
                                            "inputs, got ") + dtype_name(bp.fwd.q.dtype));
  bp.out = tensor_arg(out_desc, "out");
  bp.dout = tensor_arg(dout_desc, "dout");
  for (const TensorArg* t : {&bp.out, &bp.dout}) {
    if (t->ndim != 4 || t->dtype != bp.fwd.q.dtype)
      throw std::invalid_argument("out and dout must be 4-D (BSHD) with q's dtype");
    for (int i = 0; i < 4; ++i)
      if (t->shape[i] != bp.fwd.q.shape[i]) throw std::invalid_argument("out and dout must have q's shape");
  }
  bp.lse = tensor_arg(lse_desc, "lse");
  if (bp.lse.ndim != 3 || bp.lse.dtype != DType::Float32 || bp.lse.shape[0] != bp.fwd.batch ||
      bp.lse.shape[1] != bp.fwd.heads_q || bp.lse.shape[2] != bp.fwd.seqlen_q)
    throw std::invalid_argument("lse must be float32 [batch, heads_q, seqlen_q]");
  const bool rows = bp.fwd.q.numel() > 0, keys = bp.fwd.k.numel() > 0;
  if ((rows && dq == 0) || (keys && (dk == 0 || dv == 0)))
    throw std::invalid_argument("dq, dk and dv must be given for non-empty tensors");
  bp.dq = reinterpret_cast<void*>(dq);
  bp.dk = reinterpret_cast<void*>(dk);
  bp.dv = reinterpret_cast<void*>(dv);
  if (layout.is_none()) {
    py::gil_scoped_release release;
    attention_backward_cpu(bp, static_cast<AttnImpl>(impl));
    return;
  }
  // a varlen batch: q, out, dout [1, total_q, ...], k, v [1, total_k, ...], lse [1, heads_q, total_q]
  // and one problem per sequence (the forward's SeqLayout)
  const SeqLayoutArgs& args = layout.cast<const SeqLayoutArgs&>();
  if (args.cu_seqlens_q == 0 || args.cache_seqlens != 0)
    throw std::invalid_argument("the attention backward takes a varlen layout (cu_seqlens_q and cu_seqlens_k)");
  if (bp.fwd.batch != 1) throw std::invalid_argument("a varlen batch's q, k and v are packed along dim 1 of batch 1");
  SeqLayout L;
  L.batch = args.batch;
  L.cu_q = reinterpret_cast<const std::int32_t*>(args.cu_seqlens_q);
  L.cu_k = reinterpret_cast<const std::int32_t*>(args.cu_seqlens_k);
  const std::vector<AttnBwdParams> seqs = sequence_backward_problems(bp, L);
  py::gil_scoped_release release;
  attention_backward_cpu(seqs.data(), static_cast<std::int64_t>(seqs.size()), static_cast<AttnImpl>(impl));
}

}  // namespace

void bind_attention_backward(py::module_& m) {
  m.def("attention_backward_host", &attention_backward_host, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("dout"), py::arg("lse"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("impl"),
        py::arg("scale"), py::arg("softcap"), py::arg("window_left"), py::arg("window_right"),
        py::arg("alibi") = py::make_tuple(0, 0, 1), py::kw_only(), py::arg("layout") = py::none(),
        "CPU attention backward: dq, dk, dv (contiguous, the inputs' dtype) from q, k, v, the forward's out\n"
        "and float32 lse [batch, heads_q, seqlen_q], and dout (descriptors, any strides); options as attention_host.\n"
        "layout: a varlen SeqLayout (q, out, dout, k, v packed along dim 1 of batch 1, lse [1, heads_q, total_q]:\n"
        "one problem per sequence, as attention_seqs_host), or None.");
}

}  // namespace flashparity
