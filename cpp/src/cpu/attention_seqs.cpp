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

std::vector<AttnBwdParams> sequence_backward_problems(const AttnBwdParams& base, const SeqLayout& L) {
  if (L.cu_q == nullptr || L.cu_k == nullptr)
    throw std::invalid_argument("the attention backward takes a varlen layout (cu_seqlens_q and cu_seqlens_k)");
  const std::vector<AttnParams> fwd = sequence_problems(base.fwd, L);
  std::vector<AttnBwdParams> out;
  out.reserve(fwd.size());
  const std::int64_t esize = dtype_size(base.fwd.q.dtype);
  const std::int64_t q_row = base.fwd.heads_q * base.fwd.head_dim * esize;  // bytes of one dq row
  const std::int64_t k_row = base.fwd.heads_kv * base.fwd.head_dim * esize;
  const auto at = [](void* p, std::int64_t bytes) { return p == nullptr ? p : static_cast<char*>(p) + bytes; };
  for (std::size_t b = 0; b < fwd.size(); ++b) {
    AttnBwdParams p = base;
    p.fwd = fwd[b];
    const std::int64_t q0 = L.cu_q[b], k0 = L.cu_k[b];
    for (TensorArg* t : {&p.out, &p.dout}) {
      t->data = static_cast<const char*>(t->data) + q0 * t->strides[1];
      t->shape[1] = p.fwd.seqlen_q;
    }
    p.lse.data = static_cast<const char*>(p.lse.data) + q0 * p.lse.strides[2];
    p.lse.shape[2] = p.fwd.seqlen_q;
    p.dq = at(base.dq, q0 * q_row);
    p.dk = at(base.dk, k0 * k_row);
    p.dv = at(base.dv, k0 * k_row);
    out.push_back(p);
  }
  return out;
}

}  // namespace flashparity
