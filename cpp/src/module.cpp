// The pybind11 module flashparity._core: build facts and the kernels' entry points.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "flashparity/build_config.h"
#include "flashparity/cpu_features.h"
#include "flashparity/cuda_info.h"
#include "glue.h"

namespace py = pybind11;
using namespace flashparity;

namespace {

std::string version_string(int v) {  // 13000 -> "13.0"
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

py::dict build_info() {
  py::dict d;
  d["version"] = FP_VERSION;
  d["kernel_digest"] = FP_KERNEL_DIGEST;
  d["build_type"] = FP_BUILD_TYPE;
  d["cxx_compiler"] = FP_CXX_COMPILER;
  d["simd"] = simd_level_name(active_simd_level());
  d["simd_detected"] = simd_level_name(detected_simd_level());
  d["cpu_features"] = cpu_feature_names();

  CudaInfo cuda;
  {
    py::gil_scoped_release release;
    cuda = query_cuda_info();
  }
  d["cuda"] = cuda.compiled;
  d["cuda_architectures"] = cuda.compiled ? py::object(py::str(FP_CUDA_ARCHITECTURES)) : py::none();
  d["cuda_compiler"] = cuda.compiled ? py::object(py::str(FP_CUDA_COMPILER)) : py::none();
  d["cuda_runtime"] =
      cuda.compiled ? py::object(py::str(version_string(cuda.runtime_version))) : py::none();
  d["cuda_driver"] =
      cuda.driver_version > 0 ? py::object(py::str(version_string(cuda.driver_version))) : py::none();
  py::list devices;
  for (const CudaDeviceInfo& dev : cuda.devices) {
    py::dict e;
    e["index"] = dev.index;
    e["name"] = dev.name;
    e["compute_capability"] = std::to_string(dev.major) + "." + std::to_string(dev.minor);
    e["total_memory"] = dev.total_memory;
    e["multiprocessors"] = dev.multiprocessors;
    devices.append(e);
  }
  d["devices"] = devices;
  d["cuda_status"] = cuda.status.empty() ? py::object(py::none()) : py::object(py::str(cuda.status));
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "flashparity's compiled core (private: use the flashparity package)";
  m.attr("__version__") = FP_VERSION;
  m.attr("KERNEL_DIGEST") = FP_KERNEL_DIGEST;
  m.attr("CUDA_COMPILED") = static_cast<bool>(FP_WITH_CUDA);
  m.def("build_info", &build_info, "Build facts and what this machine offers, as a dict.");
  m.def("simd_level", [] { return std::string(simd_level_name(active_simd_level())); },
        "The SIMD level the CPU kernels use now (FLASHPARITY_SIMD caps the detected one).");
  m.def("simd_levels", &simd_level_names, "This architecture's SIMD level names, lowest first.");
  bind_parity(m);
  bind_dlpack(m);
  bind_attention(m);
  bind_merge_states(m);
#if FP_WITH_CUDA
  bind_parity_cuda(m);
  bind_device_cuda(m);
#endif
}
