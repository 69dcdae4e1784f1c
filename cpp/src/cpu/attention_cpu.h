// CPU attention forward: the driver (attention_cpu.cpp) and the per-ISA task kernels it runs.
#pragma once

#include <cstdint>

#include "flashparity/attention_math.h"
#include "flashparity/dtype.h"

namespace flashparity {

enum class AttnImpl : int { Naive = 0, Flash2 = 1 };

// Computes query rows r0..r0+rows-1 of head h of batch b (rows <= rows_per_task), with the state a
// worker thread keeps for the length of one call (`scratch`, from the table's scratch_new).
using AttnTaskFn = void (*)(const AttnParams& p, void* scratch, std::int64_t b, std::int64_t h, std::int64_t r0,
                            std::int64_t rows);

// One ISA's attention kernels (attention_{scalar,avx2,avx512,avx512bf16,avx512amx,neon,neonbf16}.cpp).
// Common code reaches a unit's kernels only through its table, picked for the CPU by
// active_attention_table(). task_fn gives null for a dtype the unit is not dispatched for.
struct AttentionTable {
  AttnTaskFn (*task_fn)(AttnImpl impl, DType dtype);
  std::int64_t (*rows_per_task)(AttnImpl impl);  // the `rows` a task takes at most
  void* (*scratch_new)();                        // one worker's state for one call (K/V it converted)
  void (*scratch_free)(void* scratch);
};

// The table for the active SIMD level (cpu_dispatch.cpp); bfloat16 inputs get the AVX-512 BF16
// unit where the CPU has its dot products (the AMX unit at the opt-in avx512amx level; the AMX
// kernels with emulated tiles under FLASHPARITY_AMX_EMULATE=1).
const AttentionTable& active_attention_table(DType dtype);

// Runs the whole forward on the CPU threads: tasks are (batch, head, query-row tile), each written
// by one thread, so the output is the same for any thread count.
void attention_cpu(const AttnParams& p, AttnImpl impl);

// Several problems of one dtype (the sequences of a varlen batch or a KV cache) on the threads at
// once: tasks are (problem, batch, head, query-row tile).
void attention_cpu(const AttnParams* problems, std::int64_t n, AttnImpl impl);

}  // namespace flashparity
