// Varlen batches and KV caches split into one-sequence problems (attention_seqs.h).
#include "cpu/attention_seqs.h"

#include <stdexcept>

namespace flashparity {

std::vector<AttnParams> sequence_problems(const AttnParams& base, const SeqLayout& L) {
  std::vector<AttnParams> out;
  out.reserve(static_cast<std::size_t>(L.batch));
  const std::int64_t esize = dtype_size(attention_out_dtype(base.q.dtype));
  const std::int64_t row_elems = base.heads_q * base.head_dim;  // one query row of out
  for (std::int64_t b = 0; b < L.batch; ++b) {
    AttnParams p = base;
    p.batch = 1;
    std::int64_t q0, sq, sk;
    if (L.cu_q != nullptr) {  // varlen: every tensor packed along dim 1 (batch dim 0 of size 1)
      q0 = L.cu_q[b];
      sq = L.cu_q[b + 1] - q0;
      const std::int64_t k0 = L.cu_k[b];
      sk = L.cu_k[b + 1] - k0;
      p.q.data = static_cast<const char*>(base.q.data) + q0 * base.q.strides[1];
      p.k.data = static_cast<const char*>(base.k.data) + k0 * base.k.strides[1];
      p.v.data = static_cast<const char*>(base.v.data) + k0 * base.v.strides[1];
      p.lse_stride_h = base.seqlen_q;  // [Hq, total_q]
      if (base.lse != nullptr) p.lse = base.lse + q0;
    } else {  // KV cache
      if (L.cache_seqlens == nullptr) throw std::invalid_argument("sequence_problems: no layout");
      q0 = b * base.seqlen_q;
      sq = base.seqlen_q;
      sk = L.cache_seqlens[b];
      p.q.data = static_cast<const char*>(base.q.data) + b * base.q.strides[0];
      if (L.block_table != nullptr) {
        p.block_table = L.block_table + b * L.block_table_stride;
        p.block_table_stride = 0;
        p.page_size = base.k.shape[1];
      } else {
        p.k.data = static_cast<const char*>(base.k.data) + b * base.k.strides[0];
        p.v.data = static_cast<const char*>(base.v.data) + b * base.v.strides[0];
      }
      if (base.lse != nullptr) p.lse = base.lse + b * base.heads_q * sq;
    }
    p.q.shape[0] = 1;
    p.q.shape[1] = sq;
    if (p.block_table == nullptr) {
      p.k.shape[0] = p.v.shape[0] = 1;
      p.k.shape[1] = p.v.shape[1] = sk;
    }
    p.seqlen_q = sq;
    p.seqlen_k = sk;
    if (base.out != nullptr) p.out = static_cast<char*>(base.out) + q0 * row_elems * esize;
    if (base.descale != nullptr) p.descale = base.descale + b * base.heads_kv;  // (planes stay apart)
    if (base.alibi != nullptr) {
      p.alibi = base.alibi + b * base.alibi_stride_b;
      p.alibi_stride_b = 0;
    }
    out.push_back(p);
  }
  return out;
}

}  // namespace flashparity
