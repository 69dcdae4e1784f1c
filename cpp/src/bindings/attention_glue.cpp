// Python-facing glue of the CPU attention forward: checks the descriptors the Python layer built
// (it validated shapes with the user's names already), then runs the kernels with the GIL released.
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/stl.h>

#include "bindings/glue.h"
#include "cpu/attention_cpu.h"
#include "cpu/attention_seqs.h"
#include "cpu/mma_layout_check.h"

namespace py = pybind11;

namespace flashparity {

void set_alibi(AttnParams& p, const py::tuple& alibi) {
  if (alibi.size() != 3) throw std::invalid_argument("alibi must be (pointer, batch stride, head stride)");
  p.alibi = reinterpret_cast<const float*>(alibi[0].cast<std::uintptr_t>());
  p.alibi_stride_b = alibi[1].cast<std::int64_t>();
  p.alibi_stride_h = alibi[2].cast<std::int64_t>();
}

void set_descale(AttnParams& p, const py::tuple& descale) {
  if (descale.size() != 2) throw std::invalid_argument("descale must be (pointer, plane stride)");
  p.descale = reinterpret_cast<const float*>(descale[0].cast<std::uintptr_t>());
  p.descale_plane = descale[1].cast<std::int64_t>();
  if (p.descale != nullptr && !is_fp8(p.q.dtype))
    throw std::invalid_argument(std::string("descales are for float8 inputs, got ") + dtype_name(p.q.dtype));
}

AttnParams make_attn_params(const py::tuple& q_desc, const py::tuple& k_desc, const py::tuple& v_desc, int impl,
                            double scale, double softcap, std::int64_t left, std::int64_t right, bool kv_pool) {
  AttnParams p;
  p.q = tensor_arg(q_desc, "q");
  p.k = tensor_arg(k_desc, "k");
  p.v = tensor_arg(v_desc, "v");
  if (p.q.ndim != 4 || p.k.ndim != 4 || p.v.ndim != 4) throw std::invalid_argument("q, k and v must be 4-D (BSHD)");
  if (p.k.dtype != p.q.dtype || p.v.dtype != p.q.dtype)
    throw std::invalid_argument("q, k and v must have the same dtype");
  for (int i = 0; i < 4; ++i)
    if (p.k.shape[i] != p.v.shape[i]) throw std::invalid_argument("k and v must have the same shape");
  p.batch = p.q.shape[0];
  p.seqlen_q = p.q.shape[1];
  p.heads_q = p.q.shape[2];
  p.head_dim = p.q.shape[3];
  p.seqlen_k = p.k.shape[1];
  p.heads_kv = p.k.shape[2];
  if ((!kv_pool && p.k.shape[0] != p.batch) || p.k.shape[3] != p.head_dim)
    throw std::invalid_argument("q and k must have the same batch size and head_dim");
  if (p.head_dim < 1 || p.heads_kv < 1 || p.heads_q % p.heads_kv != 0)
    throw std::invalid_argument("heads_q must be a positive multiple of heads_kv, head_dim >= 1");
  if (impl != 0 && impl != 1) throw std::invalid_argument("impl must be 0 (naive) or 1 (flash2)");
  if (impl == 1 && p.head_dim > 256) throw std::invalid_argument("flash2 supports head_dim 1..256");
  if (!std::isfinite(scale) || !std::isfinite(softcap) || softcap < 0)
    throw std::invalid_argument("scale must be finite and softcap finite and >= 0");
  if (left < -1 || right < -1) throw std::invalid_argument("window bounds must be >= -1");
  p.scale = scale;
  p.softcap = softcap;
  p.window_left = left;
  p.window_right = right;
  return p;
}

std::vector<AttnParams> sequence_problems_from_python(const AttnParams& base, const SeqLayoutArgs& layout,
                                                      const std::int32_t* block_table) {
  const auto ptr = [](std::uintptr_t p) { return reinterpret_cast<const std::int32_t*>(p); };
  SeqLayout L;
  L.batch = layout.batch;
  L.cu_q = ptr(layout.cu_seqlens_q);
  L.cu_k = ptr(layout.cu_seqlens_k);
  L.cache_seqlens = ptr(layout.cache_seqlens);
  L.block_table = layout.block_table != 0 ? block_table : nullptr;
  L.block_table_stride = layout.block_table_stride;
  return sequence_problems(base, L);
}

namespace {

// fp.attention_varlen / fp.attention_kvcache on the CPU: every sequence a problem of its own.
void attention_seqs_host(const py::tuple& q_desc, const py::tuple& k_desc, const py::tuple& v_desc, std::uintptr_t out,
                         std::uintptr_t lse, int impl, double scale, double softcap, std::int64_t left,
                         std::int64_t right, const py::tuple& alibi, const SeqLayoutArgs& layout,
                         const py::tuple& descale) {
  AttnParams base = make_attn_params(q_desc, k_desc, v_desc, impl, scale, softcap, left, right, layout.block_table != 0);
  set_alibi(base, alibi);
  set_descale(base, descale);
  base.out = reinterpret_cast<void*>(out);
  base.lse = reinterpret_cast<float*>(lse);
  const std::vector<AttnParams> seqs =
      sequence_problems_from_python(base, layout, reinterpret_cast<const std::int32_t*>(layout.block_table));
  py::gil_scoped_release release;
  attention_cpu(seqs.data(), static_cast<std::int64_t>(seqs.size()), static_cast<AttnImpl>(impl));
}

void attention_host(const py::tuple& q_desc, const py::tuple& k_desc, const py::tuple& v_desc, std::uintptr_t out,
                    std::uintptr_t lse, int impl, double scale, double softcap, std::int64_t left,
                    std::int64_t right, const py::tuple& alibi, const py::tuple& descale) {
  AttnParams p = make_attn_params(q_desc, k_desc, v_desc, impl, scale, softcap, left, right);
  set_alibi(p, alibi);
  set_descale(p, descale);
  p.out = reinterpret_cast<void*>(out);
  p.lse = reinterpret_cast<float*>(lse);
  py::gil_scoped_release release;
  attention_cpu(p, static_cast<AttnImpl>(impl));
}

// The split-KV math the CUDA flash2 shares (attention_math.h), for the CPU tests.
py::tuple merge_split_lse_py(const std::vector<double>& lse_parts) {
  const double lse = merge_split_lse<double>(static_cast<int>(lse_parts.size()),
                                             [&](int s) { return lse_parts[static_cast<std::size_t>(s)]; });
  std::vector<double> w;
  for (double x : lse_parts) w.push_back(split_weight(x, lse));
  return py::make_tuple(lse, w);
}

// _core.SeqLayout(batch=..., cu_seqlens_q=..., ...): what a layout must hold to be one.
SeqLayoutArgs make_seq_layout(std::int64_t batch, std::uintptr_t cu_seqlens_q, std::uintptr_t cu_seqlens_k,
                              std::uintptr_t cache_seqlens, std::uintptr_t block_table,
                              std::int64_t block_table_stride) {
  if (batch < 0) throw std::invalid_argument("SeqLayout: batch must be >= 0, got " + std::to_string(batch));
  if ((cu_seqlens_q == 0) != (cu_seqlens_k == 0))
    throw std::invalid_argument("SeqLayout: a varlen layout has both cu_seqlens_q and cu_seqlens_k");
  if (cu_seqlens_q == 0 && cache_seqlens == 0)
    throw std::invalid_argument("SeqLayout: give cu_seqlens_q and cu_seqlens_k (varlen) or cache_seqlens (KV cache)");
  if (block_table_stride < 0)
    throw std::invalid_argument("SeqLayout: block_table_stride must be >= 0, got " +
                                std::to_string(block_table_stride));
  return SeqLayoutArgs{batch, cu_seqlens_q, cu_seqlens_k, cache_seqlens, block_table, block_table_stride};
}

std::vector<std::pair<std::int64_t, std::int64_t>> split_spans_py(std::int64_t begin, std::int64_t end, std::int64_t n) {
  if (n < 1) throw std::invalid_argument("n_splits must be >= 1");
  std::vector<std::pair<std::int64_t, std::int64_t>> r;
  for (std::int64_t s = 0; s < n; ++s) {
    const TileSpan t = split_span({begin, end}, s, n);
    r.emplace_back(t.begin, t.end);
  }
  return r;
}

}  // namespace

void bind_attention(py::module_& m) {
  py::class_<SeqLayoutArgs>(m, "SeqLayout",
                            "A varlen batch's or KV cache's sequence layout for attention_seqs_host/_cuda, by\n"
                            "keyword only: host int32 array pointers or 0 (varlen: cu_seqlens_q, cu_seqlens_k\n"
                            "[batch + 1]; KV cache: cache_seqlens [batch], a paged one's block_table\n"
                            "[batch, block_table_stride]). The arrays must outlive the call it is given to.")
      .def(py::init(&make_seq_layout), py::kw_only(), py::arg("batch"), py::arg("cu_seqlens_q") = 0,
           py::arg("cu_seqlens_k") = 0, py::arg("cache_seqlens") = 0, py::arg("block_table") = 0,
           py::arg("block_table_stride") = 0)
      .def_readonly("batch", &SeqLayoutArgs::batch)
      .def_readonly("cu_seqlens_q", &SeqLayoutArgs::cu_seqlens_q)
      .def_readonly("cu_seqlens_k", &SeqLayoutArgs::cu_seqlens_k)
      .def_readonly("cache_seqlens", &SeqLayoutArgs::cache_seqlens)
      .def_readonly("block_table", &SeqLayoutArgs::block_table)
      .def_readonly("block_table_stride", &SeqLayoutArgs::block_table_stride);
  m.def("_mma_layout_check",
        [](int d, int bc, int warp) {
          if (d < 16 || d % 16 != 0 || bc < 16 || bc % 16 != 0 || warp < 0 || warp > 3)
            throw std::invalid_argument("d and bc must be positive multiples of 16 and warp in 0..3");
          return mma_layout_check(d, bc, warp);
        },
        py::arg("d"), py::arg("bc"), py::arg("warp"),
        "CPU emulation of the tensor-core flash2 tile math: '' when exact, else what differed.");
  m.def("_merge_split_lse", &merge_split_lse_py, "Split-KV merge of per-split lse values: (lse, weights).");
  m.def("_split_spans", &split_spans_py, "The key-tile spans of n splits of [begin, end).");
  m.def("_flash2_split_count", &flash2_split_count, py::arg("blocks"), py::arg("sms"), py::arg("key_tiles"),
        "How many KV splits the CUDA flash2 uses for a grid of `blocks` on `sms` SMs.");
  m.def("_row_block_key_tiles",
        [](std::int64_t r0, std::int64_t rows, std::int64_t sq, std::int64_t sk, std::int64_t left, std::int64_t right,
           std::int64_t bc) {
          AttnParams p;
          p.seqlen_q = sq;
          p.seqlen_k = sk;
          p.window_left = left;
          p.window_right = right;
          const TileSpan t = row_block_key_tiles(r0, rows, p, bc);
          return py::make_tuple(t.begin, t.end);
        },
        "The key tiles query rows [r0, r0 + rows) visit.");
  m.def("attention_host", &attention_host, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
        py::arg("impl"), py::arg("scale"), py::arg("softcap"), py::arg("window_left"), py::arg("window_right"),
        py::arg("alibi") = py::make_tuple(0, 0, 1), py::arg("descale") = py::make_tuple(0, 0),
        "CPU attention forward into a contiguous `out` (q's dtype; bfloat16 for FP8 inputs) and optional\n"
        "float32 `lse` (0: none); alibi = (float32 slopes pointer or 0, batch stride, head stride), strides\n"
        "in elements; descale = (float32 [3, batch, heads_kv] q/k/v descales pointer or 0, plane stride).");
  m.def("attention_seqs_host", &attention_seqs_host, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("lse"), py::arg("impl"), py::arg("scale"), py::arg("softcap"), py::arg("window_left"),
        py::arg("window_right"), py::arg("alibi"), py::arg("layout"), py::arg("descale") = py::make_tuple(0, 0),
        "CPU attention over a varlen batch or a KV cache, one problem per sequence; layout a SeqLayout;\n"
        "descale as attention_host.");
  m.attr("FLASH2_MAX_HEAD_DIM") = 256;
}

}  // namespace flashparity
