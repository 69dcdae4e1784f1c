// CPU attention backward driver: picks the ISA kernels at run time and spreads each pass's tasks
// over the threads.
#include "cpu/attention_backward_cpu.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cpu/threading.h"

namespace flashparity {

namespace {

// Runs fn(b, h, t0, n) for every (batch, head, tile of `per` items out of `items`) of `heads` heads.
template <typename Fn>
void run_tiles(std::int64_t batch, std::int64_t heads, std::int64_t items, std::int64_t per, Fn fn) {
  const std::int64_t tiles = std::max<std::int64_t>(1, (items + per - 1) / per);
  const std::int64_t tasks = batch * heads * tiles;
  if (tasks == 0) return;
  parallel_for(tasks, parallel_workers(tasks), [&](std::int64_t t, int) {
    const std::int64_t tile = t % tiles, bh = t / tiles;
    const std::int64_t t0 = tile * per;
    fn(bh / heads, bh % heads, t0, std::max<std::int64_t>(0, std::min(per, items - t0)));
  });
}

}  // namespace

void attention_backward_cpu(const AttnBwdParams& bp, AttnImpl impl) {
  const AttnParams& p = bp.fwd;
  const AttentionBackwardTable& table = *active_attention_table(p.q.dtype).backward;
  const auto fn = [&](AttnBwdKind kind) {
    const AttnBwdTaskFn f = table.task_fn(kind, p.q.dtype);
    if (f == nullptr)
      throw std::invalid_argument(std::string("the attention backward takes float64, float32, float16 and "
                                              "bfloat16 inputs, got ") + dtype_name(p.q.dtype));
    return f;
  };
  if (impl == AttnImpl::Naive) {
    const AttnBwdTaskFn naive = fn(AttnBwdKind::Naive);
    run_tiles(p.batch, p.heads_kv, 1, 1, [&](std::int64_t b, std::int64_t h, std::int64_t, std::int64_t) {
      naive(bp, b, h, 0, 0);
    });
    return;
  }
  const std::int64_t dq_rows_bytes =  // (the fused task's dQ accumulators: a GQA group's heads, whole rows)
      (p.heads_q / p.heads_kv) * p.seqlen_q * (p.head_dim + 16) * static_cast<std::int64_t>(sizeof(double));
  if (p.batch * p.heads_kv >= kFusedMinTasks && dq_rows_bytes <= kFusedMaxDqBytes) {
    const AttnBwdTaskFn fused = fn(AttnBwdKind::Flash2Fused);
    run_tiles(p.batch, p.heads_kv, 1, 1, [&](std::int64_t b, std::int64_t h, std::int64_t, std::int64_t) {
      fused(bp, b, h, 0, 0);
    });
    return;
  }
  const AttnBwdTaskFn dkdv = fn(AttnBwdKind::Flash2DkDv), dq = fn(AttnBwdKind::Flash2Dq);
  if (p.seqlen_k > 0)
    run_tiles(p.batch, p.heads_kv, p.seqlen_k, table.keys_per_task,
              [&](std::int64_t b, std::int64_t h, std::int64_t j0, std::int64_t n) { dkdv(bp, b, h, j0, n); });
  if (p.seqlen_q > 0)
    run_tiles(p.batch, p.heads_q, p.seqlen_q, table.rows_per_task,
              [&](std::int64_t b, std::int64_t h, std::int64_t i0, std::int64_t n) { dq(bp, b, h, i0, n); });
}

}  // namespace flashparity
