// Python-facing glue of the parity reduction: checks the tensor descriptors, runs the CPU driver
// with the GIL released, and exposes ParityAccum (the exact, mergeable state) to Python.
#include <cmath>
#include <stdexcept>
#include <string>

#include <pybind11/stl.h>

#include "bindings/glue.h"
#include "cpu/parity_cpu.h"
#include "cpu/parity_grid_host.h"

namespace py = pybind11;

namespace flashparity {

namespace {

std::string shape_str(const TensorArg& t) {
  std::string s = "(";
  for (int i = 0; i < t.ndim; ++i) {
    s += std::to_string(t.shape[i]);
    if (i + 1 < t.ndim || t.ndim == 1) s += ",";
    if (i + 1 < t.ndim) s += " ";
  }
  return s + ")";
}

void check_tolerance(const char* name, double v) {
  if (!std::isfinite(v) || v < 0)
    throw std::invalid_argument(std::string(name) + " must be a finite number >= 0, got " + std::to_string(v));
}

}  // namespace

TensorArg tensor_arg(const py::tuple& desc, const char* name) {
  if (desc.size() != 4) throw std::invalid_argument(std::string(name) + ": malformed tensor descriptor");
  TensorArg t;
  t.data = reinterpret_cast<const void*>(desc[0].cast<std::uintptr_t>());
  const int code = desc[1].cast<int>();
  if (code < 0 || code > 5) throw std::invalid_argument(std::string(name) + ": unknown dtype code " + std::to_string(code));
  t.dtype = static_cast<DType>(code);
  const auto shape = desc[2].cast<std::vector<std::int64_t>>();
  const auto strides = desc[3].cast<std::vector<std::int64_t>>();
  if (shape.size() != strides.size())
    throw std::invalid_argument(std::string(name) + ": shape and strides differ in length");
  if (shape.size() > static_cast<size_t>(kMaxDims))
    throw std::invalid_argument(std::string(name) + " has " + std::to_string(shape.size()) + " dimensions; at most " +
                                std::to_string(kMaxDims) + " are supported");
  t.ndim = static_cast<int>(shape.size());
  for (int i = 0; i < t.ndim; ++i) {
    if (shape[i] < 0) throw std::invalid_argument(std::string(name) + " has a negative dimension");
    t.shape[i] = shape[i];
    t.strides[i] = strides[i];
  }
  if (t.data == nullptr && t.numel() > 0) throw std::invalid_argument(std::string(name) + " has a null data pointer");
  return t;
}

PreparedParity prepare_parity(const py::tuple& a_desc, const py::tuple& b_desc, double atol, double rtol) {
  PreparedParity r{tensor_arg(a_desc, "a"), tensor_arg(b_desc, "b"), ParityParams{}};
  const TensorArg& a = r.a;
  const TensorArg& b = r.b;
  bool same = a.ndim == b.ndim;
  for (int i = 0; same && i < a.ndim; ++i) same = a.shape[i] == b.shape[i];
  if (!same)
    throw std::invalid_argument("a and b must have the same shape (no broadcasting), got " + shape_str(a) + " and " +
                                shape_str(b));
  if (a.numel() == 0) throw std::invalid_argument("a and b have no elements (shape " + shape_str(a) + ")");
  check_tolerance("atol", atol);
  check_tolerance("rtol", rtol);
  r.p.atol = atol;
  r.p.rtol = rtol;
  r.p.narrow = narrower_dtype(a.dtype, b.dtype);
  return r;
}

ParityAccum parity_host(const py::tuple& a_desc, const py::tuple& b_desc, double atol, double rtol) {
  const PreparedParity r = prepare_parity(a_desc, b_desc, atol, rtol);
  py::gil_scoped_release release;
  return parity_cpu(r.a, r.b, r.p);
}

py::dict accum_to_dict(const ParityAccum& s) {
  py::dict d;
  d["numel"] = s.numel;
  if (s.numel == 0) return d;
  const ParityResult r = accum_finalize(s);
  d["max_abs_diff"] = r.max_abs_diff;
  d["max_abs_index"] = s.max_abs_index;
  d["max_rel_diff"] = r.max_rel_diff;
  d["max_rel_index"] = s.max_rel_index;
  d["cosine_sim"] = r.cosine_sim;
  d["mismatches"] = s.mismatches;
  d["nonfinite"] = s.nonfinite;
  d["equal_inf"] = s.equal_inf;
  d["mean_abs_diff"] = r.mean_abs_diff;
  d["rmse"] = r.rmse;
  d["snr_db"] = r.snr_db;
  d["pcc"] = r.pcc;
  d["max_ulp_diff"] = s.max_ulp;
  py::list hist;
  for (int i = 0; i < kHistBins; ++i) hist.append(s.hist[i]);
  d["abs_diff_histogram"] = hist;
  return d;
}

namespace {

// The raw state as a flat tuple (for pickling and for tests): every field, in declaration order.
py::tuple accum_state(const ParityAccum& s) {
  py::list hist;
  for (int i = 0; i < kHistBins; ++i) hist.append(s.hist[i]);
  return py::make_tuple(s.numel, s.max_abs, s.max_abs_index, s.max_rel, s.max_rel_index,
                        py::make_tuple(s.sum_abs.hi, s.sum_abs.lo, s.sum_sq.hi, s.sum_sq.lo, s.sum_aa.hi,
                                       s.sum_aa.lo, s.sum_bb.hi, s.sum_bb.lo, s.sum_ab.hi, s.sum_ab.lo),
                        py::make_tuple(s.mom.n, s.mom.mean_a, s.mom.mean_b, s.mom.m2a, s.mom.m2b, s.mom.cab),
                        s.mismatches, s.nonfinite, s.equal_inf, s.max_ulp, py::tuple(hist));
}

ParityAccum accum_from_state(const py::tuple& t) {
  if (t.size() != 12) throw std::invalid_argument("ParityAccum state must be a 12-tuple");
  ParityAccum s;
  s.numel = t[0].cast<std::int64_t>();
  s.max_abs = t[1].cast<double>();
  s.max_abs_index = t[2].cast<std::int64_t>();
  s.max_rel = t[3].cast<double>();
  s.max_rel_index = t[4].cast<std::int64_t>();
  const auto sums = t[5].cast<std::vector<double>>();
  const auto mom = t[6].cast<std::vector<double>>();
  const auto hist = t[11].cast<std::vector<std::int64_t>>();
  if (sums.size() != 10 || mom.size() != 6 || hist.size() != static_cast<size_t>(kHistBins))
    throw std::invalid_argument("malformed ParityAccum state");
  CompSum* cs[] = {&s.sum_abs, &s.sum_sq, &s.sum_aa, &s.sum_bb, &s.sum_ab};
  for (int i = 0; i < 5; ++i) {
    cs[i]->hi = sums[2 * i];
    cs[i]->lo = sums[2 * i + 1];
  }
  s.mom = Moments{mom[0], mom[1], mom[2], mom[3], mom[4], mom[5]};
  s.mismatches = t[7].cast<std::int64_t>();
  s.nonfinite = t[8].cast<std::int64_t>();
  s.equal_inf = t[9].cast<std::int64_t>();
  s.max_ulp = t[10].cast<std::uint64_t>();
  for (int i = 0; i < kHistBins; ++i) s.hist[i] = hist[i];
  return s;
}

}  // namespace

void bind_parity(py::module_& m) {
  m.def("_fp8_rounding_mismatches",
        [](std::uint64_t start, std::uint64_t stop, std::uint64_t step) {
          if (step == 0 || stop > (std::uint64_t{1} << 32)) throw std::invalid_argument("bad range of float32 patterns");
          py::gil_scoped_release release;
          std::uint64_t bad = 0;
          for (std::uint64_t u = start; u < stop; u += step) {
            const float x = bits_to_float(static_cast<std::uint32_t>(u));
            if (!std::isfinite(x)) continue;
            bad += f32_to_f8e4m3_bits(x) != round_to_f8e4m3_bits(x);
            bad += f32_to_f8e5m2_bits(x) != round_to_f8e5m2_bits(x);
          }
          return bad;
        },
        py::arg("start"), py::arg("stop"), py::arg("step") = 1,
        "How many finite float32 patterns in range(start, stop, step) round to FP8 differently on their bits\n"
        "(f32_to_f8e4m3_bits / f32_to_f8e5m2_bits, the CPU kernels') than in float64 (round_to_f8*_bits).");
  py::class_<ParityAccum>(m, "ParityAccum",
                          "Exact, mergeable state of a parity reduction (flat C-order indices).")
      .def(py::init<>())
      .def_readonly("numel", &ParityAccum::numel)
      .def("merged", [](const ParityAccum& a, const ParityAccum& b, std::int64_t offset) {
            ParityAccum r = a;
            accum_merge(r, b, offset);
            return r;
          }, py::arg("other"), py::arg("offset"),
          "A new state: this one followed by `other`, whose indices are shifted by `offset`.")
      .def("result", &accum_to_dict, "The finished statistics as a dict.")
      .def("state", &accum_state, "Every field as a flat tuple.")
      .def_static("from_state", &accum_from_state, py::arg("state"))
      .def(py::pickle([](const ParityAccum& s) { return accum_state(s); },
                      [](const py::tuple& t) { return accum_from_state(t); }));

  m.def("parity_host", &parity_host, py::arg("a"), py::arg("b"), py::arg("atol") = 0.0, py::arg("rtol") = 0.0,
        "One fused parity pass on the CPU over two (ptr, dtype, shape, byte strides) descriptors.");
  m.def("parity_grid_host", [](const py::tuple& a_desc, const py::tuple& b_desc, double atol, double rtol, int blocks,
                               int threads) {
        const PreparedParity r = prepare_parity(a_desc, b_desc, atol, rtol);
        py::gil_scoped_release release;
        return parity_grid_host(r.a, r.b, r.p, blocks, threads);
      }, py::arg("a"), py::arg("b"), py::arg("atol"), py::arg("rtol"), py::arg("blocks"), py::arg("threads"),
      "Test tool: the CUDA parity kernel's algorithm for a grid of blocks x threads, run on the CPU "
      "(for the same grid the GPU gives the same exact fields, and its sums but for fused multiply-adds).");
  m.def("parity_grid_blocks", &parity_grid_blocks, py::arg("n"), py::arg("threads"), py::arg("resident"),
        "Test tool: the blocks the CUDA parity launcher takes for n elements when `resident` blocks fit at once.");
  m.def("num_threads", &cpu_num_threads, "Worker threads the CPU kernels use now.");
  m.def("read_probe", [](const py::tuple& a_desc, const py::tuple& b_desc) {
        const TensorArg a = tensor_arg(a_desc, "a"), b = tensor_arg(b_desc, "b");
        if (!a.c_contiguous() || !b.c_contiguous()) throw std::invalid_argument("read_probe needs contiguous inputs");
        const std::int64_t na = a.numel() * dtype_size(a.dtype), nb = b.numel() * dtype_size(b.dtype);
        py::gil_scoped_release release;
        return read_probe_cpu(a.data, na, b.data, nb);
      }, py::arg("a"), py::arg("b"),
      "Benchmark helper: read both contiguous inputs once with the parity threads (the fused-read limit).");
  m.def("crc32", [](const py::object& data, const py::int_& crc) {
        // a C-contiguous buffer, as zlib.crc32 takes (PyBUF_SIMPLE refuses strided views)
        Py_buffer view;
        if (PyObject_GetBuffer(data.ptr(), &view, PyBUF_SIMPLE) != 0) throw py::error_already_set();
        const std::uint32_t seed = static_cast<std::uint32_t>(PyLong_AsUnsignedLongLongMask(crc.ptr()));  // mod 2^32
        std::uint32_t out;
        {
          py::gil_scoped_release release;
          out = crc32_cpu(seed, view.buf, static_cast<std::int64_t>(view.len));
        }
        PyBuffer_Release(&view);
        return out;
      }, py::arg("data"), py::arg("crc") = 0,
      "zlib.crc32(data, crc), at the active SIMD level's speed (carry-less multiplies from AVX2 up); "
      "the GIL is released.");
  m.attr("HIST_BINS") = kHistBins;
  m.attr("HIST_MIN_EXP") = kHistMinExp;
  m.attr("HIST_MAX_EXP") = kHistMaxExp;
}

}  // namespace flashparity
