// The attention backward's parameters and its per-element math, shared by the CPU kernels and
// (with the same formulas) the CUDA ones. Host/device.
//
// Forward, per (batch, head): S = scale q kᵀ, T = softcap tanh(S / softcap) (or S), Z = T + ALiBi,
// P = softmax(Z) over each row's visible keys, out = P v. Given dout:
//   dv = Pᵀ dout;  dP = dout vᵀ;  D_i = Σ_j P_ij dP_ij = dout_i · out_i;
//   dZ = P (dP − D);  dS = dZ (1 − (T / softcap)²);  dq = scale dS k;  dk = scale dSᵀ q,
// a GQA group's query heads summed into their k and v head. Masked pairs (i, j) are skipped, not
// multiplied by 0: a masked key gets exactly 0, whatever its values or those of the rows.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "flashparity/attention_math.h"
#include "flashparity/common.h"
#include "flashparity/tensor.h"

namespace flashparity {

// One problem: a dense batch, or one sequence of a varlen batch as a batch of 1 whose pointers sit at
// the sequence's rows (cpu/attention_seqs.h's sequence_backward_problems).
struct AttnBwdParams {
  // q, k, v and the options as the forward ran (fwd.out and fwd.lse unused; no FP8, no paging).
  AttnParams fwd;
  TensorArg out, dout;  // [batch, seqlen_q, heads_q, head_dim], q's dtype, any strides
  // The forward's lse, float32 [batch, heads_q, seqlen_q], any strides; -inf: the row saw no key
  // (its gradients are 0).
  TensorArg lse;
  // Outputs, contiguous, in the inputs' dtype: dq like q [batch, seqlen_q, heads_q, head_dim], dk
  // and dv like k [batch, seqlen_k, heads_kv, head_dim]. Every element is written.
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
};

FP_HOST_DEVICE FP_INLINE float lse_at(const AttnBwdParams& p, std::int64_t b, std::int64_t h, std::int64_t i) {
  float x;
  const char* at = static_cast<const char*>(p.lse.data) + b * p.lse.strides[0] + h * p.lse.strides[1] + i * p.lse.strides[2];
  std::memcpy(&x, at, sizeof(x));  // (a view may be aligned to less than 4 bytes)
  return x;
}

// P of one visible pair from its final score z and the row's lse (0 for a row that saw no key).
template <typename Acc>
FP_HOST_DEVICE FP_INLINE Acc backward_prob(Acc z, Acc lse) {
  return lse == Acc(-INFINITY) ? Acc(0) : std::exp(z - lse);
}

// dS of one visible pair: p (dp − D) times the softcap's derivative 1 − (t / cap)² (t: the capped
// score before ALiBi; cap 0: no cap).
template <typename Acc>
FP_HOST_DEVICE FP_INLINE Acc backward_dscore(Acc p, Acc dp, Acc D, Acc t, Acc cap) {
  const Acc dz = p * (dp - D);
  if (cap == Acc(0)) return dz;
  const Acc r = t / cap;
  return dz * (Acc(1) - r * r);
}

}  // namespace flashparity
