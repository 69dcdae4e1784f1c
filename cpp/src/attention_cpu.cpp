// CPU attention driver: picks the ISA kernels at run time and spreads (batch, head, row tile)
// tasks over the threads.
#include "attention_cpu.h"

#include <atomic>

#include "flashparity/cpu_features.h"
#include "threading.h"

namespace flashparity {

void attention_cpu(const AttnParams& params, AttnImpl impl) {
  static std::atomic<std::uint64_t> calls{0};
  AttnParams p = params;
  p.call_id = ++calls;
  AttnTaskFn fn;
  std::int64_t rows_per_task;
  switch (active_simd_level()) {
    case SimdLevel::Avx512Icl:  // nothing in attention needs more than AVX-512
    case SimdLevel::Avx512:
      if (p.q.dtype == DType::BFloat16 && cpu_has_avx512bf16()) {
        fn = isa_avx512bf16::attention_task_fn(impl, p.q.dtype);
        rows_per_task = isa_avx512bf16::attention_rows_per_task(impl);
      } else {
        fn = isa_avx512::attention_task_fn(impl, p.q.dtype);
        rows_per_task = isa_avx512::attention_rows_per_task(impl);
      }
      break;
    case SimdLevel::Avx2:
      fn = isa_avx2::attention_task_fn(impl, p.q.dtype);
      rows_per_task = isa_avx2::attention_rows_per_task(impl);
      break;
    default:
      fn = isa_scalar::attention_task_fn(impl, p.q.dtype);
      rows_per_task = isa_scalar::attention_rows_per_task(impl);
  }
  const std::int64_t tiles = (p.seqlen_q + rows_per_task - 1) / rows_per_task;
  const std::int64_t tasks = p.batch * p.heads_q * tiles;
  if (tasks == 0) return;
  parallel_for(tasks, [&](std::int64_t t, int) {
    const std::int64_t tile = t % tiles, bh = t / tiles;
    const std::int64_t h = bh % p.heads_q, b = bh / p.heads_q;
    const std::int64_t r0 = tile * rows_per_task;
    fn(p, b, h, r0, std::min(rows_per_task, p.seqlen_q - r0));
  });
  isa_avx512bf16::attention_release_thread_cache();  // the caller's thread keeps no K/V copy
}

}  // namespace flashparity
