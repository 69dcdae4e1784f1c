// CPU attention backward driver: picks the ISA kernels at run time and spreads each pass's tasks,
// over every problem (the batch, or each sequence of a varlen batch), across the threads.
#include "cpu/attention_backward_cpu.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/threading.h"

namespace flashparity {

namespace {

// One task of a pass: problem `p`, (batch, head) (b, h), items [t0, t0 + n).
struct BwdTask {
  const AttnBwdParams* p;
  std::int64_t b, h, t0, n;
};

// Appends a task for every (batch, head, tile of `per` items out of `items`) of `heads` heads of
// problem p (one task of 0 items when there are none, as a whole-head task wants).
void add_tiles(std::vector<BwdTask>& tasks, const AttnBwdParams& p, std::int64_t heads, std::int64_t items,
               std::int64_t per) {
  const std::int64_t tiles = std::max<std::int64_t>(1, (items + per - 1) / per);
  for (std::int64_t b = 0; b < p.fwd.batch; ++b)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t tile = 0; tile < tiles; ++tile) {
        const std::int64_t t0 = tile * per;
        tasks.push_back({&p, b, h, t0, std::max<std::int64_t>(0, std::min(per, items - t0))});
      }
}

void run_tasks(const std::vector<BwdTask>& tasks, AttnBwdTaskFn fn) {
  const auto n = static_cast<std::int64_t>(tasks.size());
  if (n == 0) return;
  parallel_for(n, parallel_workers(n), [&](std::int64_t t, int) {
    const BwdTask& k = tasks[static_cast<std::size_t>(t)];
    fn(*k.p, k.b, k.h, k.t0, k.n);
  });
}

}  // namespace

void attention_backward_cpu(const AttnBwdParams& bp, AttnImpl impl) { attention_backward_cpu(&bp, 1, impl); }

void attention_backward_cpu(const AttnBwdParams* problems, std::int64_t count, AttnImpl impl) {
  if (count == 0) return;
  const DType dtype = problems[0].fwd.q.dtype;
  const AttentionBackwardTable& table = active_attention_backward_table(dtype);
  const auto fn = [&](AttnBwdKind kind) {
    const AttnBwdTaskFn f = table.task_fn(kind, dtype);
    if (f == nullptr)
      throw std::invalid_argument(std::string("the attention backward takes float64, float32, float16 and "
                                              "bfloat16 inputs, got ") + dtype_name(dtype));
    return f;
  };
  std::vector<BwdTask> tasks;
  const AttnBwdParams* const end = problems + count;
  if (impl == AttnImpl::Naive) {
    for (const AttnBwdParams* bp = problems; bp != end; ++bp) add_tiles(tasks, *bp, bp->fwd.heads_kv, 1, 1);
    run_tasks(tasks, fn(AttnBwdKind::Naive));
    return;
  }
  // fused when there are enough (problem, batch, kv head) tasks and every one's dQ accumulators (a
  // GQA group's heads, whole rows) fit: a choice from the shapes only, and both schemes give the
  // same bits anyway
  std::int64_t pairs = 0, dq_rows_bytes = 0;
  for (const AttnBwdParams* bp = problems; bp != end; ++bp) {
    const AttnParams& p = bp->fwd;
    pairs += p.batch * p.heads_kv;
    dq_rows_bytes = std::max<std::int64_t>(
        dq_rows_bytes,
        (p.heads_q / p.heads_kv) * p.seqlen_q * (p.head_dim + 16) * static_cast<std::int64_t>(sizeof(double)));
  }
  if (pairs >= kFusedMinTasks && dq_rows_bytes <= kFusedMaxDqBytes) {
    for (const AttnBwdParams* bp = problems; bp != end; ++bp) add_tiles(tasks, *bp, bp->fwd.heads_kv, 1, 1);
    run_tasks(tasks, fn(AttnBwdKind::Flash2Fused));
    return;
  }
  const AttnBwdTaskFn dkdv = fn(AttnBwdKind::Flash2DkDv), dq = fn(AttnBwdKind::Flash2Dq);
  for (const AttnBwdParams* bp = problems; bp != end; ++bp)
    if (bp->fwd.seqlen_k > 0) add_tiles(tasks, *bp, bp->fwd.heads_kv, bp->fwd.seqlen_k, table.keys_per_task);
  run_tasks(tasks, dkdv);
  tasks.clear();
  for (const AttnBwdParams* bp = problems; bp != end; ++bp)
    if (bp->fwd.seqlen_q > 0) add_tiles(tasks, *bp, bp->fwd.heads_q, bp->fwd.seqlen_q, table.rows_per_task);
  run_tasks(tasks, dq);
}

}  // namespace flashparity
