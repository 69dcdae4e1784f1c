// fp.merge_attention_states' Python glue: checks the descriptors (host and device calls share
// merge_params_from_python), then runs the CPU merge (cpu/merge_states.cpp) with the GIL released.
#include <stdexcept>
#include <string>

#include "bindings/glue.h"
#include "flashparity/merge_states.h"

namespace py = pybind11;

namespace flashparity {

namespace {

MergeParams make_merge_params(const py::tuple& oa, const py::tuple& lsea, const py::tuple& ob, const py::tuple& lseb,
                              std::uintptr_t out, std::uintptr_t lse_out) {
  MergeParams p{tensor_arg(oa, "o_a"), tensor_arg(lsea, "lse_a"), tensor_arg(ob, "o_b"), tensor_arg(lseb, "lse_b"),
                reinterpret_cast<void*>(out), reinterpret_cast<void*>(lse_out)};
  if (p.oa.ndim != 4 || p.ob.ndim != 4 || p.lsea.ndim != 3 || p.lseb.ndim != 3)
    throw std::invalid_argument("o must be [batch, seqlen, heads, head_dim] and lse [batch, heads, seqlen]");
  for (int i = 0; i < 4; ++i)
    if (p.oa.shape[i] != p.ob.shape[i]) throw std::invalid_argument("o_a and o_b must have the same shape");
  const std::int64_t want[3] = {p.oa.shape[0], p.oa.shape[2], p.oa.shape[1]};
  for (int i = 0; i < 3; ++i)
    if (p.lsea.shape[i] != want[i] || p.lseb.shape[i] != want[i])
      throw std::invalid_argument("lse_a and lse_b must be [batch, heads, seqlen] of o's sizes");
  if (is_fp8(p.oa.dtype))
    throw std::invalid_argument(std::string("merge_attention_states does not take ") + dtype_name(p.oa.dtype) + " o");
  if (p.oa.dtype != p.ob.dtype || p.lsea.dtype != p.lseb.dtype)
    throw std::invalid_argument("o_a and o_b, and lse_a and lse_b, must have the same dtypes");
  if (p.lsea.dtype != DType::Float32 && p.lsea.dtype != DType::Float64)
    throw std::invalid_argument("lse must be float32 or float64");
  return p;
}

void merge_host(const py::tuple& oa, const py::tuple& lsea, const py::tuple& ob, const py::tuple& lseb,
                std::uintptr_t out, std::uintptr_t lse_out) {
  const MergeParams p = make_merge_params(oa, lsea, ob, lseb, out, lse_out);
  if (p.oa.numel() == 0 && p.lsea.numel() == 0) return;
  py::gil_scoped_release release;
  merge_states_cpu(p);
}

}  // namespace

MergeParams merge_params_from_python(const py::tuple& oa, const py::tuple& lsea, const py::tuple& ob,
                                     const py::tuple& lseb, std::uintptr_t out, std::uintptr_t lse_out) {
  return make_merge_params(oa, lsea, ob, lseb, out, lse_out);
}

void bind_merge_states(py::module_& m) {
  m.def("merge_states_host", &merge_host, py::arg("o_a"), py::arg("lse_a"), py::arg("o_b"), py::arg("lse_b"),
        py::arg("out"), py::arg("lse_out"),
        "Merge two partial attentions over disjoint keys on the CPU into contiguous `out` (o's dtype)\n"
        "and `lse_out` (lse's dtype); o [batch, seqlen, heads, head_dim], lse [batch, heads, seqlen].");
}

}  // namespace flashparity
