// CPU attention driver: picks the ISA kernels at run time and spreads (batch, head, row tile)
// tasks over the threads.
#include "attention_cpu.h"

#include <atomic>

#include "threading.h"

namespace flashparity {

void attention_cpu(const AttnParams& params, AttnImpl impl) {
  static std::atomic<std::uint64_t> calls{0};
  AttnParams p = params;
  p.call_id = ++calls;
  const AttentionTable& kernels = active_attention_table(p.q.dtype);
  const AttnTaskFn fn = kernels.task_fn(impl, p.q.dtype);
  const std::int64_t rows_per_task = kernels.rows_per_task(impl);
  const std::int64_t tiles = (p.seqlen_q + rows_per_task - 1) / rows_per_task;
  const std::int64_t tasks = p.batch * p.heads_q * tiles;
  if (tasks == 0) return;
  parallel_for(tasks, [&](std::int64_t t, int) {
    const std::int64_t tile = t % tiles, bh = t / tiles;
    const std::int64_t h = bh % p.heads_q, b = bh / p.heads_q;
    const std::int64_t r0 = tile * rows_per_task;
    fn(p, b, h, r0, std::min(rows_per_task, p.seqlen_q - r0));
  });
  kernels.release_thread_cache();  // the caller's thread keeps no K/V copy
}

}  // namespace flashparity
