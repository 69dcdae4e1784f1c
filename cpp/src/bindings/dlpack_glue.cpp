// Consuming a DLPack capsule: read the tensor in place and own it until the view is dropped.
#include <stdexcept>
#include <string>

#include <pybind11/pybind11.h>

#include "flashparity/dlpack.h"
#include "flashparity/dtype.h"

namespace py = pybind11;

namespace flashparity {

namespace {

std::string dl_dtype_name(const dlpack::DataType& t) {
  const char* kind = t.code == dlpack::kInt ? "int" : t.code == dlpack::kUInt ? "uint"
                   : t.code == dlpack::kFloat ? "float" : t.code == dlpack::kBfloat ? "bfloat"
                   : t.code == dlpack::kComplex ? "complex" : t.code == dlpack::kBool ? "bool"
                   : t.code == dlpack::kFloat8E4M3FN ? "float8_e4m3fn/" : t.code == dlpack::kFloat8E5M2 ? "float8_e5m2/"
                   : "code";
  std::string s = std::string(kind) + std::to_string(t.bits);
  if (t.lanes != 1) s += "x" + std::to_string(t.lanes);
  return s;
}

int dl_dtype_code(const dlpack::DataType& t, const char* name) {
  if (t.lanes == 1) {
    if (t.code == dlpack::kFloat && t.bits == 64) return static_cast<int>(DType::Float64);
    if (t.code == dlpack::kFloat && t.bits == 32) return static_cast<int>(DType::Float32);
    if (t.code == dlpack::kFloat && t.bits == 16) return static_cast<int>(DType::Float16);
    if (t.code == dlpack::kBfloat && t.bits == 16) return static_cast<int>(DType::BFloat16);
    if (t.code == dlpack::kFloat8E4M3FN && t.bits == 8) return static_cast<int>(DType::Float8E4M3);
    if (t.code == dlpack::kFloat8E5M2 && t.bits == 8) return static_cast<int>(DType::Float8E5M2);
  }
  throw py::type_error(std::string(name) + " has dtype " + dl_dtype_name(t) +
                       "; supported dtypes are float64, float32, float16, bfloat16, float8_e4m3fn and float8_e5m2 "
                       "(integer, bool and complex tensors are not compared)");
}

// (ptr, dtype code, shape, byte strides, device type, device id, owner). The owner capsule calls
// the producer's deleter when the last reference to it goes away.
py::tuple from_dlpack(py::capsule capsule, const std::string& name) {
  if (std::string(capsule.name() ? capsule.name() : "") != "dltensor")
    throw py::value_error(name + ": expected an unconsumed DLPack capsule named 'dltensor'");
  auto* mt = capsule.get_pointer<dlpack::ManagedTensor>();
  if (mt == nullptr) throw py::value_error(name + ": empty DLPack capsule");
  // Take ownership: mark the capsule consumed so the producer does not free it twice.
  if (PyCapsule_SetName(capsule.ptr(), "used_dltensor") != 0) throw py::error_already_set();
  py::capsule owner(mt, [](void* p) {
    auto* m = static_cast<dlpack::ManagedTensor*>(p);
    if (m->deleter != nullptr) m->deleter(m);
  });
  const dlpack::Tensor& t = mt->dl_tensor;
  const int code = dl_dtype_code(t.dtype, name.c_str());
  const std::int64_t esize = t.dtype.bits / 8;
  py::tuple shape(t.ndim), strides(t.ndim);
  std::int64_t contiguous = esize;
  for (int i = t.ndim - 1; i >= 0; --i) {
    shape[i] = t.shape[i];
    strides[i] = t.strides != nullptr ? t.strides[i] * esize : contiguous;
    contiguous *= t.shape[i];
  }
  const auto ptr = reinterpret_cast<std::uintptr_t>(static_cast<char*>(t.data) + t.byte_offset);
  return py::make_tuple(ptr, code, shape, strides, t.device.device_type, t.device.device_id, owner);
}

}  // namespace

void bind_dlpack(py::module_& m) {
  m.def("from_dlpack", &from_dlpack, py::arg("capsule"), py::arg("name") = "tensor",
        "Consume a DLPack capsule: (ptr, dtype code, shape, byte strides, device type, device id, owner).");
}

}  // namespace flashparity
