// CPU parity reduction: the driver (parity_cpu.cpp) and the per-ISA block kernels it dispatches to.
#pragma once

#include <cstdint>

#include "flashparity/dtype.h"
#include "flashparity/parity_stats.h"
#include "flashparity/tensor.h"

namespace flashparity {

// Elements per block: the unit of vector reduction (lane sums of at most 512 terms).
constexpr std::int64_t kBlock = 4096;

// The block kernels screen ratios in float32 against a running maximum below this; a larger one (or
// none) sends every block of a narrow pair to the exact ratio pass.
constexpr double kRelScreenMax = 1e37;

// Reduces one block of n <= kBlock contiguous elements (global indices index0..index0+n-1) into the freshly
// constructed `out`; false when a difference is not finite (the caller then runs the scalar kernel).
// thr_abs/thr_rel: maxima the block must beat to matter (running maxima of earlier indices, or values
// strictly below a maximum found anywhere; -1 for none); the block's maxima get an index only when
// they beat them (-1 otherwise, which accum_merge ignores).
using BlockFn = bool (*)(ParityAccum& out, const void* a, const void* b, std::int64_t n, std::int64_t index0,
                         const ParityParams& p, double thr_abs, double thr_rel);

// One ISA's parity kernels (parity_block_{scalar,avx2,avx512,avx512icl}.cpp). Common code reaches a
// unit's kernels only through its table, picked for the CPU by active_parity_table().
struct ParityTable {
  // The kernel for a dtype pair; `with_tolerance` false (atol = rtol = 0) skips the isclose test:
  // a mismatch is then any nonzero difference, counted by the histogram's zero bin.
  BlockFn (*block_fn)(DType a, DType b, bool with_tolerance);
  // Reads every byte of a buffer with the least work (the benchmarks' read limit): the wrapping sum
  // of its 8-byte words, then of its last bytes.
  std::uint64_t (*read_probe)(const void* p, std::int64_t bytes);
  // zlib's crc32(crc, p, bytes): the CRC-32 of the zip format, continued from `crc` (0 to start).
  std::uint32_t (*crc32)(std::uint32_t crc, const void* p, std::int64_t bytes);
};

// The table for the active SIMD level (cpu_dispatch.cpp).
const ParityTable& active_parity_table();

// One fused pass over a and b (same shape, any strides) on the CPU. Releases nothing itself: the
// caller drops the GIL. Deterministic for any thread count.
ParityAccum parity_cpu(const TensorArg& a, const TensorArg& b, const ParityParams& p);

// Reads two contiguous buffers once with the same threads and blocks as parity_cpu but no
// arithmetic to speak of: the memory-read limit parity_cpu is measured against.
std::uint64_t read_probe_cpu(const void* a, std::int64_t bytes_a, const void* b, std::int64_t bytes_b);

// zlib's crc32(crc, p, bytes) on the active SIMD level (carry-less multiplies from AVX2 up).
std::uint32_t crc32_cpu(std::uint32_t crc, const void* p, std::int64_t bytes);

// Worker threads used by the CPU kernels: FLASHPARITY_NUM_THREADS, else the CPUs this process may
// run on. Throws std::invalid_argument on a malformed FLASHPARITY_NUM_THREADS.
int cpu_num_threads();

}  // namespace flashparity
