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

// The device of a call: that of every non-empty tensor among q, k, v and out (an empty one may
// carry any pointer, null included, and is never read); the current device when all are empty.
int attention_device_of(const AttnParams& p, std::uintptr_t out_ptr) {
  int device = -1;
  const auto check = [&](const char* name, std::uintptr_t ptr, std::int64_t numel) {
    if (numel == 0) return;
    const int d = cuda_pointer_device(ptr);
    if (device < 0) device = d;
    else if (d != device)
      throw std::invalid_argument(std::string(name) + " is on CUDA device " + std::to_string(d) +
                                  ", the other tensors on device " + std::to_string(device));
  };
  check("q", reinterpret_cast<std::uintptr_t>(p.q.data), p.q.numel());
  check("k", reinterpret_cast<std::uintptr_t>(p.k.data), p.k.numel());
  check("v", reinterpret_cast<std::uintptr_t>(p.v.data), p.v.numel());
  if (out_ptr != 0) check("out", out_ptr, p.q.numel());
  return device >= 0 ? device : current_device();
}

// out_ptr 0: a new DeviceArray; else the caller's C-contiguous device buffer of q's shape and dtype
// (checked in Python), returned as None. The kernels run on `stream`, after the work queued so far
// on each stream of `after` (the producer streams of k, v and out).
py::tuple attention_device(const py::tuple& q_desc, const py::tuple& k_desc, const py::tuple& v_desc, int impl,
                           double scale, double softcap, std::int64_t left, std::int64_t right, bool want_lse,
                           std::uintptr_t stream, std::uintptr_t out_ptr, const std::vector<std::uintptr_t>& after) {
  AttnParams p = make_attn_params(q_desc, k_desc, v_desc, impl, scale, softcap, left, right);
  const int device = attention_device_of(p, out_ptr);
  DeviceArrayPtr out;
  if (out_ptr == 0) {
    out = std::make_shared<DeviceArray>(p.q.dtype, std::vector<std::int64_t>{p.batch, p.seqlen_q, p.heads_q, p.head_dim},
                                        device);
    p.out = out->ptr;
  } else {
    p.out = reinterpret_cast<void*>(out_ptr);
  }
  DeviceArrayPtr lse;
  if (want_lse)
    lse = std::make_shared<DeviceArray>(DType::Float32, std::vector<std::int64_t>{p.batch, p.heads_q, p.seqlen_q},
                                        device);
  p.lse = lse ? static_cast<float*>(lse->ptr) : nullptr;
  {
    py::gil_scoped_release release;
    if (impl == 0) attention_naive_cuda(p, device, stream, after);
    else attention_flash2_cuda(p, device, stream, after);
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
        py::arg("stream") = 0, py::arg("out") = 0, py::arg("after") = std::vector<std::uintptr_t>{},
        "Attention forward on device tensors: (out DeviceArray or None when written to `out`, lse DeviceArray or None).\n"
        "Runs on `stream`, ordered after the work queued on each stream of `after`; returns when it is done.");
  m.def("cuda_attention_occupancy", [](int device) {
    py::list out;
    for (const AttnKernelOccupancy& o : attention_occupancy_cuda(device)) {
      py::dict d;
      d["kernel"] = o.kernel;
      d["dtype"] = o.dtype;
      d["head_dim"] = o.head_dim;
      d["threads"] = o.threads;
      d["dynamic_smem_bytes"] = o.dynamic_smem_bytes;
      d["blocks_per_sm"] = o.blocks_per_sm;
      out.append(d);
    }
    return out;
  }, py::arg("device"), "Resident blocks per SM of each CUDA flash2 kernel specialisation on `device`.");
}

}  // namespace flashparity
