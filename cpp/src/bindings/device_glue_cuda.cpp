// Device arrays flashparity returns (CUDA builds): owned device memory exposed zero-copy through
// __cuda_array_interface__ and __dlpack__ (PyTorch, CuPy and flashparity itself take them), plus
// the CUDA attention glue that produces them.
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/stl.h>

#include "bindings/glue.h"
#include "flashparity/attention_cuda.h"
#include "flashparity/device_array.h"
#include "flashparity/dlpack.h"
#include "flashparity/parity_cuda.h"

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
    throw py::attribute_error(std::string(dtype_name(a->dtype)) +
                              " has no __cuda_array_interface__ typestr; use __dlpack__ (torch.from_dlpack)");
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
  t.dtype = {a->dtype == DType::BFloat16     ? dlpack::kBfloat
             : a->dtype == DType::Float8E4M3 ? dlpack::kFloat8E4M3FN
             : a->dtype == DType::Float8E5M2 ? dlpack::kFloat8E5M2
                                             : dlpack::kFloat,
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
  if (dtype_code < 0 || dtype_code > 5) throw std::invalid_argument("unknown dtype code");
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

// `bytes` of host memory copied into a new device buffer of `device` for the length of a call (ALiBi
// slopes, block tables, descales: small), queued on the call's `stream` ahead of its kernels; null
// for a null `host`.
DeviceArrayPtr upload(const void* host, std::int64_t bytes, int device, std::uintptr_t stream) {
  if (host == nullptr) return nullptr;
  auto buf = std::make_shared<DeviceArray>(DType::Float32, std::vector<std::int64_t>{(bytes + 3) / 4}, device);
  if (bytes > 0) {
    py::gil_scoped_release release;
    copy_to_device_on(buf->ptr, host, static_cast<std::size_t>(bytes), device, stream);
  }
  return buf;
}

// Host slopes ([batch, heads_q], contiguous) copied to the device for the call; device slopes checked
// to be on `device`. Host descales ([3, batch, heads_kv]) copied likewise.
std::pair<DeviceArrayPtr, DeviceArrayPtr> place_alibi_and_descale(AttnParams& p, bool alibi_on_host, int device,
                                                                  std::int64_t batch, std::uintptr_t stream) {
  DeviceArrayPtr slopes;
  if (p.alibi != nullptr && alibi_on_host) {
    slopes = upload(p.alibi, batch * p.heads_q * 4, device, stream);
    p.alibi = static_cast<const float*>(slopes->ptr);
    p.alibi_stride_b = p.heads_q;
    p.alibi_stride_h = 1;
  } else if (p.alibi != nullptr && cuda_pointer_device(reinterpret_cast<std::uintptr_t>(p.alibi)) != device) {
    throw std::invalid_argument("alibi_slopes is on CUDA device " +
                                std::to_string(cuda_pointer_device(reinterpret_cast<std::uintptr_t>(p.alibi))) +
                                ", q, k and v on device " + std::to_string(device));
  }
  DeviceArrayPtr descale = upload(p.descale, 3 * p.descale_plane * 4, device, stream);
  if (descale) p.descale = static_cast<const float*>(descale->ptr);
  return {slopes, descale};
}

void run_device(const AttnParams& p, int impl, int device, std::uintptr_t stream,
                const std::vector<std::uintptr_t>& after) {
  if (impl == 0) attention_naive_cuda(p, device, stream, after);
  else attention_flash2_cuda(p, device, stream, after);
}

// out_ptr 0: a new DeviceArray; else the caller's C-contiguous device buffer of q's shape and the
// output dtype (q's; bfloat16 for FP8), checked in Python, returned as None. The kernels run on `stream`, after the work queued so far
// on each stream of `after` (the producer streams of k, v and out).
py::tuple attention_device(const py::tuple& q_desc, const py::tuple& k_desc, const py::tuple& v_desc, int impl,
                           double scale, double softcap, std::int64_t left, std::int64_t right, bool want_lse,
                           std::uintptr_t stream, std::uintptr_t out_ptr, const std::vector<std::uintptr_t>& after,
                           const py::tuple& alibi, bool alibi_on_host, const py::tuple& descale) {
  AttnParams p = make_attn_params(q_desc, k_desc, v_desc, impl, scale, softcap, left, right);
  set_alibi(p, alibi);
  set_descale(p, descale);
  const int device = attention_device_of(p, out_ptr);
  const auto placed = place_alibi_and_descale(p, alibi_on_host, device, p.batch, stream);
  DeviceArrayPtr out;
  if (out_ptr == 0) {
    out = std::make_shared<DeviceArray>(attention_out_dtype(p.q.dtype),
                                        std::vector<std::int64_t>{p.batch, p.seqlen_q, p.heads_q, p.head_dim}, device);
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
    run_device(p, impl, device, stream, after);
  }
  return py::make_tuple(out ? py::cast(out) : py::none(), lse ? py::cast(lse) : py::none());
}

// fp.attention_varlen / fp.attention_kvcache on device tensors: one problem per sequence, run one
// after the other on `stream` (the first waits for `after`). A host block table (int32, contiguous
// [batch, block_table_stride]) is copied to the device for the call; out_shape and lse_shape are the
// user-facing shapes of the outputs; out_ptr as attention_device.
py::tuple attention_seqs_device(const py::tuple& q_desc, const py::tuple& k_desc, const py::tuple& v_desc, int impl,
                                double scale, double softcap, std::int64_t left, std::int64_t right, bool want_lse,
                                std::uintptr_t stream, std::uintptr_t out_ptr, const std::vector<std::uintptr_t>& after,
                                const py::tuple& alibi, bool alibi_on_host, const SeqLayoutArgs& layout,
                                std::vector<std::int64_t> out_shape, std::vector<std::int64_t> lse_shape,
                                const py::tuple& descale) {
  const std::uintptr_t host_table = layout.block_table;
  AttnParams base = make_attn_params(q_desc, k_desc, v_desc, impl, scale, softcap, left, right, host_table != 0);
  set_alibi(base, alibi);
  set_descale(base, descale);
  const int device = attention_device_of(base, out_ptr);
  const std::int64_t batch = layout.batch;
  const auto placed = place_alibi_and_descale(base, alibi_on_host, device, batch, stream);
  const DeviceArrayPtr table =
      upload(reinterpret_cast<const void*>(host_table), batch * layout.block_table_stride * 4, device, stream);
  DeviceArrayPtr out;
  if (out_ptr == 0) {
    out = std::make_shared<DeviceArray>(attention_out_dtype(base.q.dtype), std::move(out_shape), device);
    base.out = out->ptr;
  } else {
    base.out = reinterpret_cast<void*>(out_ptr);
  }
  DeviceArrayPtr lse;
  if (want_lse) lse = std::make_shared<DeviceArray>(DType::Float32, std::move(lse_shape), device);
  base.lse = lse ? static_cast<float*>(lse->ptr) : nullptr;
  const std::vector<AttnParams> seqs = sequence_problems_from_python(
      base, layout, table ? static_cast<const std::int32_t*>(table->ptr) : nullptr);
  {
    py::gil_scoped_release release;
    // (the first sequence's launcher orders the stream after `after`, even when it has no query)
    for (std::size_t i = 0; i < seqs.size(); ++i)
      run_device(seqs[i], impl, device, stream, i == 0 ? after : std::vector<std::uintptr_t>{});
  }
  return py::make_tuple(out ? py::cast(out) : py::none(), lse ? py::cast(lse) : py::none());
}

// fp.merge_attention_states on device tensors: new DeviceArrays of the caller's shapes (out_shape,
// lse_shape: o's and lse's as the user gave them, 3-D/2-D or 4-D/3-D).
py::tuple merge_states_device(const py::tuple& oa, const py::tuple& lsea, const py::tuple& ob, const py::tuple& lseb,
                              std::vector<std::int64_t> out_shape, std::vector<std::int64_t> lse_shape,
                              std::uintptr_t stream, const std::vector<std::uintptr_t>& after) {
  MergeParams p = merge_params_from_python(oa, lsea, ob, lseb, 0, 0);
  int device = -1;
  const std::pair<const char*, const TensorArg*> inputs[] = {{"o_a", &p.oa}, {"lse_a", &p.lsea}, {"o_b", &p.ob},
                                                             {"lse_b", &p.lseb}};
  for (const auto& [name, t] : inputs) {
    if (t->numel() == 0) continue;
    const int d = cuda_pointer_device(reinterpret_cast<std::uintptr_t>(t->data));
    if (device < 0) device = d;
    else if (d != device)
      throw std::invalid_argument(std::string(name) + " is on CUDA device " + std::to_string(d) +
                                  ", the other tensors on device " + std::to_string(device));
  }
  if (device < 0) device = current_device();
  auto out = std::make_shared<DeviceArray>(p.oa.dtype, std::move(out_shape), device);
  auto lse = std::make_shared<DeviceArray>(p.lsea.dtype, std::move(lse_shape), device);
  p.out = out->ptr;
  p.lse_out = lse->ptr;
  {
    py::gil_scoped_release release;
    merge_states_cuda(p, device, stream, after);
  }
  return py::make_tuple(out, lse);
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
        py::arg("alibi") = py::make_tuple(0, 0, 1), py::arg("alibi_on_host") = false,
        py::arg("descale") = py::make_tuple(0, 0),
        "Attention forward on device tensors: (out DeviceArray or None when written to `out`, lse DeviceArray or None).\n"
        "Runs on `stream`, ordered after the work queued on each stream of `after`; returns when it is done.");
  m.def("attention_seqs_cuda", &attention_seqs_device, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("impl"),
        py::arg("scale"), py::arg("softcap"), py::arg("window_left"), py::arg("window_right"), py::arg("want_lse"),
        py::arg("stream"), py::arg("out"), py::arg("after"), py::arg("alibi"), py::arg("alibi_on_host"),
        py::arg("layout"), py::arg("out_shape"), py::arg("lse_shape"), py::arg("descale") = py::make_tuple(0, 0),
        "Attention over a varlen batch or KV cache of device tensors, one problem per sequence: (out, lse).");
  m.def("copy_device_to_host", [](std::uintptr_t ptr, std::size_t nbytes, std::uintptr_t after) {
    std::string buf(nbytes, '\0');
    if (nbytes > 0) {
      const int device = cuda_pointer_device(ptr);
      py::gil_scoped_release release;
      copy_to_host(buf.data(), reinterpret_cast<const void*>(ptr), nbytes, device, after);
    }
    return py::bytes(buf);
  }, py::arg("ptr"), py::arg("nbytes"), py::arg("after") = 0,
     "A host copy of `nbytes` of device memory (the metadata of attention calls), after the work queued on\n"
     "stream `after` (as __cuda_array_interface__ names streams; 0: none).");
  m.def("merge_states_cuda", &merge_states_device, py::arg("o_a"), py::arg("lse_a"), py::arg("o_b"), py::arg("lse_b"),
        py::arg("out_shape"), py::arg("lse_shape"), py::arg("stream") = 0,
        py::arg("after") = std::vector<std::uintptr_t>{},
        "merge_attention_states on device tensors: (out DeviceArray, lse DeviceArray) of the given shapes.");
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
