// fp.merge_attention_states on the CPU, and its Python glue (host and device).
#include "flashparity/merge_states.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "glue.h"
#include "threading.h"

namespace py = pybind11;

namespace flashparity {

namespace {

template <typename T>
FP_INLINE double load_at(const void* base, std::int64_t offset) {
  T x;
  std::memcpy(&x, static_cast<const char*>(base) + offset, sizeof(T));
  return to_f64(x);
}

template <typename T, typename L>
void merge_rows(const MergeParams& p) {
  const std::int64_t B = p.oa.shape[0], S = p.oa.shape[1], H = p.oa.shape[2], D = p.oa.shape[3];
  parallel_for(B * S, parallel_workers(B * S), [&](std::int64_t row, int) {
    const std::int64_t b = row / S, s = row % S;
    for (std::int64_t h = 0; h < H; ++h) {
      const auto lse_at = [&](const TensorArg& t) {
        return load_at<L>(t.data, b * t.strides[0] + h * t.strides[1] + s * t.strides[2]);
      };
      const MergedState m = merge_state(lse_at(p.lsea), lse_at(p.lseb));
      static_cast<L*>(p.lse_out)[(b * H + h) * S + s] = from_f64<L>(m.lse);
      T* out = static_cast<T*>(p.out) + ((b * S + s) * H + h) * D;
      const auto at = [&](const TensorArg& t, std::int64_t d) {
        return b * t.strides[0] + s * t.strides[1] + h * t.strides[2] + d * t.strides[3];
      };
      for (std::int64_t d = 0; d < D; ++d) {
        const double oa = m.wa != 0.0 ? load_at<T>(p.oa.data, at(p.oa, d)) : 0.0;
        const double ob = m.wb != 0.0 ? load_at<T>(p.ob.data, at(p.ob, d)) : 0.0;
        out[d] = from_f64<T>(merge_value(m, oa, ob));
      }
    }
  });
}

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

template <typename F>
void with_types(const MergeParams& p, F&& f) {
  FP_DTYPE_SWITCH(p.oa.dtype, T, [&] {
    if (p.lsea.dtype == DType::Float64) f(T{}, double{});
    else f(T{}, float{});
  });
}

void merge_host(const py::tuple& oa, const py::tuple& lsea, const py::tuple& ob, const py::tuple& lseb,
                std::uintptr_t out, std::uintptr_t lse_out) {
  const MergeParams p = make_merge_params(oa, lsea, ob, lseb, out, lse_out);
  if (p.oa.numel() == 0 && p.lsea.numel() == 0) return;
  py::gil_scoped_release release;
  with_types(p, [&](auto t, auto l) { merge_rows<decltype(t), decltype(l)>(p); });
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
