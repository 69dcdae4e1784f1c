// CPU attention driver: picks the ISA kernels at run time and spreads (batch, head, row tile)
// tasks over the threads.
#include "cpu/attention_cpu.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/threading.h"

namespace flashparity {

void attention_cpu(const AttnParams& p, AttnImpl impl) { attention_cpu(&p, 1, impl); }

void attention_cpu(const AttnParams* problems, std::int64_t n, AttnImpl impl) {
  if (n == 0) return;
  const AttentionTable& kernels = active_attention_table(problems[0].q.dtype);
  const AttnTaskFn fn = kernels.task_fn(impl, problems[0].q.dtype);
  if (fn == nullptr)  // (the dispatcher's promise broken: never a silent no-op)
    throw std::logic_error(std::string("no CPU attention kernel for ") + dtype_name(problems[0].q.dtype) +
                           " at this SIMD level");
  const std::int64_t rows_per_task = kernels.rows_per_task(impl);
  // first task of each problem (tiles of rows_per_task query rows per (batch, head))
  std::vector<std::int64_t> first(static_cast<std::size_t>(n) + 1, 0);
  for (std::int64_t i = 0; i < n; ++i) {
    const AttnParams& p = problems[i];
    const std::int64_t tiles = (p.seqlen_q + rows_per_task - 1) / rows_per_task;
    first[i + 1] = first[i] + p.batch * p.heads_q * tiles;
  }
  const std::int64_t tasks = first[n];
  if (tasks == 0) return;
  // one scratch per worker, freed when the call ends: a worker that runs several query tiles of a
  // head converts its K and V once, and nothing outlives the call
  const int workers = parallel_workers(tasks);
  std::vector<void*> scratch(static_cast<std::size_t>(workers), nullptr);
  struct Free {
    const AttentionTable& k;
    std::vector<void*>& s;
    ~Free() {
      for (void* x : s)
        if (x) k.scratch_free(x);
    }
  } free_scratch{kernels, scratch};
  for (void*& x : scratch) x = kernels.scratch_new();
  parallel_for(tasks, workers, [&](std::int64_t t, int w) {
    const std::int64_t i = std::upper_bound(first.begin(), first.end(), t) - first.begin() - 1;
    const AttnParams& p = problems[i];
    const std::int64_t tiles = (p.seqlen_q + rows_per_task - 1) / rows_per_task, local = t - first[i];
    const std::int64_t tile = local % tiles, bh = local / tiles;
    const std::int64_t h = bh % p.heads_q, b = bh / p.heads_q;
    const std::int64_t r0 = tile * rows_per_task;
    fn(p, scratch[static_cast<std::size_t>(w)], b, h, r0, std::min(rows_per_task, p.seqlen_q - r0));
  });
}

}  // namespace flashparity
