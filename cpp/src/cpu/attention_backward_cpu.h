// CPU attention backward: the driver (attention_backward_cpu.cpp) and the per-ISA task kernels it
// runs (isa/attention_backward_impl.h), reached through active_attention_backward_table().
#pragma once

#include <cstdint>

#include "cpu/attention_cpu.h"
#include "flashparity/attention_backward.h"
#include "flashparity/dtype.h"

namespace flashparity {

enum class AttnBwdKind : int { Naive = 0, Flash2DkDv = 1, Flash2Dq = 2, Flash2Fused = 3 };

// A task of one pass: head h of batch b (a kv head for Naive, Flash2DkDv and Flash2Fused, a query
// head for Flash2Dq) and its items [t0, t0 + n) (keys for Flash2DkDv, query rows for Flash2Dq; Naive
// and Flash2Fused take the whole head and ignore them). Each task writes its own rows of dq, dk, dv.
using AttnBwdTaskFn = void (*)(const AttnBwdParams& p, std::int64_t b, std::int64_t h, std::int64_t t0,
                               std::int64_t n);

struct AttentionBackwardTable {
  AttnBwdTaskFn (*task_fn)(AttnBwdKind kind, DType dtype);  // null for a dtype it does not take
  std::int64_t rows_per_task;  // Flash2Dq's n
  std::int64_t keys_per_task;  // Flash2DkDv's n
};

// The backward table for the active SIMD level (cpu_dispatch.cpp): the forward's unit's, but at the
// avx512amx level (whose unit has no backward) the AVX-512 BF16 unit's.
const AttentionBackwardTable& active_attention_backward_table(DType dtype);

// The whole backward on the CPU threads (float64, float32, float16, bfloat16) of `count` problems:
// a dense BSHD batch is one, a varlen batch one per sequence (attention_seqs.h's
// sequence_backward_problems). Naive: one task per (problem, batch, kv head); flash2: one fused task
// per (problem, batch, kv head) when there are at least kFusedMinTasks of them and each one's dQ
// accumulators fit kFusedMaxDqBytes, else a dK/dV pass over (problem, batch, kv head, key tile)
// tasks, then a dQ pass over (problem, batch, head, query tile) tasks (the scores computed twice, for
// more tasks). The choice depends on the shapes only, and both give dQ's terms in the same order:
// the gradients are the same for any thread count.
constexpr std::int64_t kFusedMinTasks = 16;
constexpr std::int64_t kFusedMaxDqBytes = std::int64_t{64} << 20;  // per fused task (an upper bound is checked)

void attention_backward_cpu(const AttnBwdParams* problems, std::int64_t count, AttnImpl impl);
void attention_backward_cpu(const AttnBwdParams& p, AttnImpl impl);  // (one problem)

}  // namespace flashparity
