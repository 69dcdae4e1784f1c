// CPU attention forward: the driver (attention_cpu.cpp) and the per-ISA task kernels it runs.
#pragma once

#include <cstdint>

#include "flashparity/attention_math.h"
#include "flashparity/dtype.h"

namespace flashparity {

enum class AttnImpl : int { Naive = 0, Flash2 = 1 };

// Computes query rows r0..r0+rows-1 of head h of batch b (rows <= attention_rows_per_task).
using AttnTaskFn = void (*)(const AttnParams& p, std::int64_t b, std::int64_t h, std::int64_t r0, std::int64_t rows);

namespace isa_scalar {
AttnTaskFn attention_task_fn(AttnImpl impl, DType dtype);
std::int64_t attention_rows_per_task(AttnImpl impl);
}  // namespace isa_scalar
namespace isa_avx2 {
AttnTaskFn attention_task_fn(AttnImpl impl, DType dtype);
std::int64_t attention_rows_per_task(AttnImpl impl);
}  // namespace isa_avx2
namespace isa_avx512 {
AttnTaskFn attention_task_fn(AttnImpl impl, DType dtype);
std::int64_t attention_rows_per_task(AttnImpl impl);
}  // namespace isa_avx512
namespace isa_avx512bf16 {  // AVX-512 plus the BF16 dot products (bfloat16 flash2)
AttnTaskFn attention_task_fn(AttnImpl impl, DType dtype);
std::int64_t attention_rows_per_task(AttnImpl impl);
void attention_release_thread_cache();  // frees the calling thread's repacked K/V
}  // namespace isa_avx512bf16

// Runs the whole forward on the CPU threads: tasks are (batch, head, query-row tile), each written
// by one thread, so the output is the same for any thread count.
void attention_cpu(const AttnParams& p, AttnImpl impl);

}  // namespace flashparity
