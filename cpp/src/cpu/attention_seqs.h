// Variable-length batches and KV caches as lists of one-sequence problems: each sequence of a packed
// varlen batch or of a (paged) KV cache becomes an AttnParams of batch 1 whose pointers, lengths and
// lse layout are its own, so every kernel (CPU and CUDA) runs it unchanged; only K/V rows go through
// kv_row, which follows a paged cache's block table. Host code.
#pragma once

#include <cstdint>
#include <vector>

#include "flashparity/attention_backward.h"
#include "flashparity/attention_math.h"

namespace flashparity {

struct SeqLayout {
  std::int64_t batch = 0;
  // varlen: q [1, total_q, Hq, D] and k, v [1, total_k, Hkv, D] (packed, as Python passes them);
  // cu_q, cu_k host int32 [batch + 1]; out [total_q, Hq, D] contiguous, lse [Hq, total_q]
  const std::int32_t* cu_q = nullptr;
  const std::int32_t* cu_k = nullptr;
  // KV cache: q [batch, Sq, Hq, D]; cache_seqlens host int32 [batch]; k, v [batch, S_max, Hkv, D],
  // or with block_table (int32 [batch, block_table_stride] in the kernels' memory) the pool
  // [num_blocks, page_size, Hkv, D]; out like q, lse [batch, Hq, Sq]
  const std::int32_t* cache_seqlens = nullptr;
  const std::int32_t* block_table = nullptr;
  std::int64_t block_table_stride = 0;
};

// One problem per sequence (lengths and offsets already checked by the Python layer).
std::vector<AttnParams> sequence_problems(const AttnParams& base, const SeqLayout& layout);

// The backward's problems of a varlen layout, one per sequence (the forward's, plus out, dout and
// lse at the sequence's rows and dq, dk, dv at its rows of their contiguous packed outputs). base:
// q, out, dout [1, total_q, Hq, D] and k, v [1, total_k, Hkv, D] (any strides), lse [1, Hq, total_q]
// (any strides), dq [total_q, Hq, D] and dk, dv [total_k, Hkv, D] contiguous.
std::vector<AttnBwdParams> sequence_backward_problems(const AttnBwdParams& base, const SeqLayout& layout);

}  // namespace flashparity
