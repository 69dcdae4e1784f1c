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

struct AttentionBackwardTable;  // cpu/attention_backward_cpu.h

// One ISA's attention kernels (attention_{scalar,avx2,avx512,avx512bf16}.cpp). Common code reaches
// a unit's kernels only through its table, picked for the CPU by active_attention_table().
struct AttentionTable {
  AttnTaskFn (*task_fn)(AttnImpl impl, DType dtype);
  std::int64_t (*rows_per_task)(AttnImpl impl);  // the `rows` a task takes at most
  void* (*scratch_new)();                        // one worker's state for one call (K/V it converted)
  void (*scratch_free)(void* scratch);
  const AttentionBackwardTable* backward;        // the same unit's backward kernels
};

// The table for the active SIMD level (cpu_dispatch.cpp); bfloat16 inputs get the AVX-512 BF16
// unit where the CPU has its dot products.
const AttentionTable& active_attention_table(DType dtype);

// Runs the whole forward on the CPU threads: tasks are (batch, head, query-row tile), each written
// by one thread, so the output is the same for any thread count.
void attention_cpu(const AttnParams& p, AttnImpl impl);

// Several problems of one dtype (the sequences of a varlen batch or a KV cache) on the threads at
// once: tasks are (problem, batch, head, query-row tile).
void attention_cpu(const AttnParams* problems, std::int64_t n, AttnImpl impl);

}  // namespace flashparity
