// Merging two partial attentions over disjoint key sets (split-KV and cascade attention), as
// vLLM's and FlashInfer's merge-state kernels do: the reference their outputs are checked against.
// The math is shared by the CPU loop and the CUDA kernel (host/device).
#pragma once

#include <cstdint>
#include <vector>

#include "flashparity/attention_math.h"
#include "flashparity/tensor.h"

namespace flashparity {

// o_a, o_b: [batch, seqlen, heads, head_dim], one dtype, any byte strides; lse_a, lse_b:
// [batch, heads, seqlen], float32 or float64 (one dtype). out: contiguous [batch, seqlen, heads,
// head_dim] of o's dtype; lse_out: contiguous [batch, heads, seqlen] of lse's dtype.
struct MergeParams {
  TensorArg oa, lsea, ob, lseb;
  void* out = nullptr;
  void* lse_out = nullptr;
};

// The merged row: lse = log(exp(lse_a) + exp(lse_b)) (max-shifted) and each side's weight
// exp(lse_s - lse). An lse of +inf (FlashAttention-2's value for a row that saw no key) counts as
// -inf, as vLLM's merge reads it; a side at -inf weighs 0, so both at -inf give lse -inf and output
// 0. A NaN lse makes the row NaN.
struct MergedState {
  double lse, wa, wb;
};

FP_HOST_DEVICE FP_INLINE MergedState merge_state(double la, double lb) {
  if (la == INFINITY) la = -INFINITY;
  if (lb == INFINITY) lb = -INFINITY;
  if (la != la || lb != lb) {
    const double nan = la != la ? la : lb;
    return {nan, nan, nan};
  }
  const double lse = merge_split_lse<double>(2, [&](int s) { return s == 0 ? la : lb; });
  return {lse, split_weight(la, lse), split_weight(lb, lse)};
}

// One output element: a side of weight 0 contributes nothing, whatever its values (the partial
// output of a split that saw no key is often left uninitialized).
FP_HOST_DEVICE FP_INLINE double merge_value(const MergedState& m, double oa, double ob) {
  return (m.wa != 0.0 ? m.wa * oa : 0.0) + (m.wb != 0.0 ? m.wb * ob : 0.0);
}

// On the CPU (cpp/src/cpu/merge_states.cpp): the rows on the worker threads; inputs host memory.
// Releases nothing itself: the caller drops the GIL.
void merge_states_cpu(const MergeParams& p);

// On the GPU (cuda/merge_states.cu): the same float64 math; inputs element-aligned device memory
// on `device`; ordered on `stream` after the work queued on each stream of `after`; returns when done.
void merge_states_cuda(const MergeParams& p, int device, std::uintptr_t stream,
                       const std::vector<std::uintptr_t>& after = {});

}  // namespace flashparity
