// Device arrays flashparity returns (CUDA builds): owned device memory exposed zero-copy through
// __cuda_array_interface__ and __dlpack__ (PyTorch, CuPy and flashparity itself take them), plus
// the CUDA attention glue that produces them.
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "flashparity/attention_cuda.h"
#include "flashparity/device_array.h"
#include "flashparity/dlpack.h"
#include "flashparity/parity_cuda.h"
#include "glue.h"

namespace py = pybind11;

namespace flashparity {

namespace {

struct DeviceArray {
  void* ptr = nullptr;
  int device = 0;
  DType dtype = DType::Float32;
  std::vector<std::int64_t> shape;

  DeviceArray(DType t, std::vector<std::int64_t> s, int dev) : device(dev), dtype(t), shape(std::move(s)) {
    ptr = device_alloc(nbytes(), device);
  }
  ~DeviceArray() { device_free(ptr, device); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (std::int64_t d : shape) n *= d;
    return n;
  }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype); }
};

using DeviceArrayPtr = std::shared_ptr<DeviceArray>;

const char* cai_typestr(DType t) {
  switch (t) {
    case DType::Float64: return "<f8";
    case DType::Float32: return "<f4";
    case DType::Float16: return "<f2";
    default: return nullptr;  // bfloat16 has no typestr: DLPack carries it
  }
}

py::dict cuda_array_interface(const DeviceArrayPtr& a) {
  const char* ts = cai_typestr(a->dtype);
  if (ts == nullptr)
    throw py::attribute_error("bfloat16 has no __cuda_array_interface__ typestr; use __dlpack__ (torch.from_dlpack)");
  py::dict d;
  d["shape"] = py::tuple(py::cast(a->shape));
  d["typestr"] = ts;
  d["data"] = py::make_tuple(reinterpret_cast<std::uintptr_t>(a->ptr), false);
  d["strides"] = py::none();
  d["version"] = 3;
  d["stream"] = py::none();  // the producing kernels have finished (their stream was synchronized)
  return d;
}

// The managed tensor owns a reference to the array; its deleter drops it (no Python needed).
struct Exported {
  dlpack::ManagedTensor managed;
  DeviceArrayPtr owner;
  std::vector<std::int64_t> shape;
};

py::capsule to_dlpack(const DeviceArrayPtr& a, const py::object& /*stream: work already complete*/) {
  auto* e = new Exported{};
  e->owner = a;
  e->shape = a->shape;
  dlpack::Tensor& t = e->managed.dl_tensor;
  t.data = a->ptr;
  t.device = {dlpack::kCUDA, a->device};
  t.ndim = static_cast<std::int32_t>(a->shape.size());
  t.dtype = {a->dtype == DType::BFloat16 ? dlpack::kBfloat : dlpack::kFloat,
             static_cast<std::uint8_t>(dtype_size(a->dtype) * 8), 1};
  t.shape = e->shape.data();
  t.strides = nullptr;  // C-contiguous
  t.byte_offset = 0;
  e->managed.manager_ctx = e;
  e->managed.deleter = [](dlpack::ManagedTensor* m) { delete static_cast<Exported*>(m->manager_ctx); };
  return py::capsule(&e->managed, "dltensor", [](PyObject* cap) {
    // an unconsumed capsule still owns the tensor
    if (PyCapsule_IsValid(cap, "dltensor")) {
      auto* m = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
      if (m != nullptr && m->deleter != nullptr) m->deleter(m);
    }
  });
}

py::bytes to_host_bytes(const DeviceArrayPtr& a) {
  std::string buf(a->nbytes(), '\0');
  {
    py::gil_scoped_release release;
    copy_to_host(buf.data(), a->ptr, buf.size(), a->device);
  }
  return py::bytes(buf);
}

DeviceArrayPtr from_host(std::uintptr_t host_ptr, int dtype_code, std::vector<std::int64_t> shape, int device) {
  if (dtype_code < 0 || dtype_code > 3) throw std::invalid_argument("unknown dtype code");
  auto a = std::make_shared<DeviceArray>(static_cast<DType>(dtype_code), std::move(shape), device);
  py::gil_scoped_release release;
  copy_to_device(a->ptr, reinterpret_cast<const void*>(host_ptr), a->nbytes(), device);
  return a;
}

// out_ptr 0: a new DeviceArray; else the caller's C-contiguous device buffer of q's shape and dtype
// (checked in Python), returned as None.
py::tuple attention_device(const py::tuple& q_desc, const py::tuple& k_desc, const py::tuple& v_desc, int impl,
                           double scale, double softcap, std::int64_t left, std::int64_t right, bool want_lse,
                           std::uintptr_t stream, std::uintptr_t out_ptr) {
  AttnParams p = make_attn_params(q_desc, k_desc, v_desc, impl, scale, softcap, left, right);
  const int device = cuda_pointer_device(reinterpret_cast<std::uintptr_t>(p.q.data));
  for (const TensorArg* t : {&p.k, &p.v})
    if (cuda_pointer_device(reinterpret_cast<std::uintptr_t>(t->data)) != device)
      throw std::invalid_argument("q, k and v must be on the same CUDA device");
  DeviceArrayPtr out;
  if (out_ptr == 0) {
    out = std::make_shared<DeviceArray>(p.q.dtype, std::vector<std::int64_t>{p.batch, p.seqlen_q, p.heads_q, p.head_dim},
                                        device);
    p.out = out->ptr;
  } else {
    if (cuda_pointer_device(out_ptr) != device) throw std::invalid_argument("out must be on the device of q, k and v");
    p.out = reinterpret_cast<void*>(out_ptr);
  }
  DeviceArrayPtr lse;
  if (want_lse)
    lse = std::make_shared<DeviceArray>(DType::Float32, std::vector<std::int64_t>{p.batch, p.heads_q, p.seqlen_q},
                                        device);
  p.lse = lse ? static_cast<float*>(lse->ptr) : nullptr;
  {
    py::gil_scoped_release release;
    if (impl == 0) attention_naive_cuda(p, device, stream);
    else attention_flash2_cuda(p, device, stream);
  }
  return py::make_tuple(out ? py::cast(out) : py::none(), lse ? py::cast(lse) : py::none());
}

}  // namespace

void bind_device_cuda(py::module_& m) {
  py::class_<DeviceArray, DeviceArrayPtr>(m, "DeviceArray",
                                          "A C-contiguous device array owned by flashparity (zero-copy exports).")
      .def_property_readonly("shape", [](const DeviceArrayPtr& a) { return py::tuple(py::cast(a->shape)); })
      .def_property_readonly("dtype", [](const DeviceArrayPtr& a) { return std::string(dtype_name(a->dtype)); })
      .def_property_readonly("device", [](const DeviceArrayPtr& a) { return a->device; })
      .def_property_readonly("__cuda_array_interface__", &cuda_array_interface)
      .def("__dlpack__", &to_dlpack, py::arg("stream") = py::none())
      .def("__dlpack_device__", [](const DeviceArrayPtr& a) { return py::make_tuple(2, a->device); })
      .def("to_host_bytes", &to_host_bytes, "A copy of the data on the host, as bytes.")
      .def_static("from_host", &from_host, py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("device"),
                  "A device copy of a contiguous host buffer.");
  m.def("attention_cuda", &attention_device, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("impl"),
        py::arg("scale"), py::arg("softcap"), py::arg("window_left"), py::arg("window_right"), py::arg("want_lse"),
        py::arg("stream") = 0, py::arg("out") = 0,
        "Attention forward on device tensors: (out DeviceArray or None when written to `out`, lse DeviceArray or None).");
}

}  // namespace flashparity
