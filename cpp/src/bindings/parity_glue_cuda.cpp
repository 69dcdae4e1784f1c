// Python-facing glue of the CUDA parity reduction (compiled only into CUDA builds).
#include <stdexcept>
#include <string>

#include "bindings/glue.h"
#include "flashparity/parity_cuda.h"

namespace py = pybind11;

namespace flashparity {

namespace {

ParityAccum parity_device(const py::tuple& a_desc, const py::tuple& b_desc, double atol, double rtol,
                          std::uintptr_t stream_a, std::uintptr_t stream_b) {
  const PreparedParity r = prepare_parity(a_desc, b_desc, atol, rtol);
  py::gil_scoped_release release;
  const int dev_a = cuda_pointer_device(reinterpret_cast<std::uintptr_t>(r.a.data));
  const int dev_b = cuda_pointer_device(reinterpret_cast<std::uintptr_t>(r.b.data));
  if (dev_a != dev_b)
    throw std::invalid_argument("a is on cuda:" + std::to_string(dev_a) + " and b on cuda:" + std::to_string(dev_b) +
                                "; both must be on the same device");
  return parity_cuda(r.a, r.b, r.p, dev_a, stream_a, stream_b);
}

}  // namespace

void bind_parity_cuda(py::module_& m) {
  m.def("parity_cuda", &parity_device, py::arg("a"), py::arg("b"), py::arg("atol") = 0.0, py::arg("rtol") = 0.0,
        py::arg("stream_a") = 0, py::arg("stream_b") = 0,
        "One fused parity pass on the GPU over two device (ptr, dtype, shape, byte strides) descriptors.");
  m.def("parity_cuda_blocks", [](const py::tuple& a_desc, const py::tuple& b_desc, int device) {
        const PreparedParity r = prepare_parity(a_desc, b_desc, 0.0, 0.0);  // (descriptors of either side)
        return parity_cuda_blocks(r.a.dtype, r.b.dtype, r.a.numel(), device);
      }, py::arg("a"), py::arg("b"), py::arg("device") = 0,
      "Test tool: the blocks parity_cuda launches on `device` for this pair, the grid to give "
      "parity_grid_host.");
  m.def("cuda_pointer_device", [](std::uintptr_t ptr) { return cuda_pointer_device(ptr); }, py::arg("ptr"),
        "The CUDA device a pointer belongs to.");
}

}  // namespace flashparity
