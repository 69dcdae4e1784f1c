// The pybind11 module flashparity._core: build facts and the kernels' entry points.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "bindings/glue.h"
#include "flashparity/build_config.h"
#include "flashparity/cpu_features.h"
#include "flashparity/cuda_info.h"

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
  d["amx"] = amx_status();
  d["amx_emulation"] = amx_emulation() && cpu_has_avx512bf16();  // (in effect: bfloat16 flash2 takes it)

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

// The calling thread's sticky floating-point exception flags, by name: MXCSR's on x86 (the SSE/AVX
// unit's: IE DE ZE OE UE PE), FPSR's on aarch64 (IOC DZC OFC UFC IXC IDC; IDC only counts inputs
// flushed under FPCR.FZ, so an Arm core with FZ clear never sets it: a denormal operand leaves no
// flag there, and UFC, a tiny inexact result, is what shows one being made). For the tests that
// check the kernels never compute with denormal numbers on normal data (an Intel core takes a
// microcode assist of ~100 cycles for each such instruction). The kernels run on the calling thread
// when FLASHPARITY_NUM_THREADS=1.
std::vector<std::string> fp_flags() {
  std::vector<std::string> set;
#if defined(__x86_64__) || defined(__i386__)
  const unsigned csr = _mm_getcsr();
  const char* names[] = {"IE", "DE", "ZE", "OE", "UE", "PE"};
  for (int i = 0; i < 6; ++i)
    if (csr & (1u << i)) set.emplace_back(names[i]);
#elif defined(__aarch64__)
  std::uint64_t fpsr;
  __asm__ volatile("mrs %0, fpsr" : "=r"(fpsr));
  const struct {
    int bit;
    const char* name;
  } flags[] = {{0, "IOC"}, {1, "DZC"}, {2, "OFC"}, {3, "UFC"}, {4, "IXC"}, {7, "IDC"}};
  for (const auto& f : flags)
    if (fpsr & (std::uint64_t{1} << f.bit)) set.emplace_back(f.name);
#endif
  return set;
}

void fp_clear_flags() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_setcsr(_mm_getcsr() & ~0x3fu);
#elif defined(__aarch64__)
  std::uint64_t fpsr;
  __asm__ volatile("mrs %0, fpsr" : "=r"(fpsr));
  fpsr &= ~std::uint64_t{0x9f};
  __asm__ volatile("msr fpsr, %0" : : "r"(fpsr));
#endif
}

// The flags this CPU (or emulator) raises for a denormal operand and a denormal result, found by
// making both; the caller's flags are cleared. An emulator may not keep every flag (a test that
// expects one must know).
std::vector<std::string> fp_flags_probe() {
  fp_clear_flags();
  volatile float tiny = 1e-40f, third = 0.3f, small = 1e-30f, smaller = 1e-10f;
  volatile float from_denormal = tiny * third;  // a denormal operand (and result)
  volatile float to_denormal = small * smaller;  // normal operands, a denormal result
  (void)from_denormal;
  (void)to_denormal;
  std::vector<std::string> set = fp_flags();
  fp_clear_flags();
  return set;
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
  m.def("_fp_flags", &fp_flags,
        "The calling thread's sticky floating-point exception flags that are set, by name (x86 MXCSR: "
        "IE DE ZE OE UE PE; aarch64 FPSR: IOC DZC OFC UFC IXC IDC; elsewhere none). For tests.");
  m.def("_fp_clear_flags", &fp_clear_flags, "Clears the calling thread's sticky floating-point exception flags.");
  m.def("_fp_flags_probe", &fp_flags_probe,
        "The flags a denormal operand and a denormal result raise here (the caller's flags are cleared).");
  bind_parity(m);
  bind_dlpack(m);
  bind_attention(m);
  bind_attention_backward(m);
  bind_merge_states(m);
#if FP_WITH_CUDA
  bind_parity_cuda(m);
  bind_device_cuda(m);
#endif
}
