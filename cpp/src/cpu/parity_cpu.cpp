// CPU driver of the fused parity reduction: splits the flat C-order index space into fixed
// superblocks and blocks, gathers strided blocks into contiguous buffers, dispatches each block to
// the ISA kernel picked at run time, and merges partial results in index order.
#if defined(__linux__)
#include <sched.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu/parity_cpu.h"
#include "cpu/threading.h"

namespace flashparity {

namespace {

// Superblock: the unit of work a thread claims (whole blocks). Both sizes depend only on n, never
// on the thread count: partial results are combined in index order, so the stats are bit-identical
// for any number of threads. 16 blocks (2^16 elements, ~35 us on one Zen 4 core) let two threads
// share inputs from 2^17 elements up.
constexpr std::int64_t kMinSuperBlock = 16 * kBlock;
constexpr std::int64_t kMaxSuperBlocks = 4096;  // bounds the partials: O(1) extra memory in n

using ScalarFn = void (*)(ParityAccum&, const void*, const void*, std::int64_t, std::int64_t, const ParityParams&);

template <typename TA, typename TB>
void scalar_block(ParityAccum& out, const void* a, const void* b, std::int64_t n, std::int64_t index0,
                  const ParityParams& p) {
  accum_block_scalar(out, static_cast<const TA*>(a), static_cast<const TB*>(b), n, index0, p);
}

ScalarFn scalar_fn(DType a, DType b) {
  return FP_DTYPE_SWITCH_ALL(a, TA, [&] { return FP_DTYPE_SWITCH_ALL(b, TB, [&] { return &scalar_block<TA, TB>; }); });
}

// Reads the C-order sequence of a strided tensor in runs (gathering strided blocks).
struct Walker : CollapsedView {
  explicit Walker(const TensorArg& t) : CollapsedView(collapse_dims(t)) {}

  // Read in place: contiguous and aligned to the element size (the kernels load elements through
  // typed pointers). A view at an odd byte offset is gathered like a strided one (memcpy per element).
  bool direct() const { return contiguous() && reinterpret_cast<std::uintptr_t>(base) % esize == 0; }

  // Copy elements [start, start + n) of the C-order sequence into dst.
  void gather(std::int64_t start, std::int64_t n, void* dst) const {
    std::int64_t idx[kMaxDims];
    std::int64_t rem = start, off = 0;
    for (int i = ndim - 1; i >= 0; --i) {
      idx[i] = rem % shape[i];
      rem /= shape[i];
      off += idx[i] * strides[i];
    }
    char* out = static_cast<char*>(dst);
    const int last = ndim - 1;
    const std::int64_t s = strides[last];
    while (n > 0) {
      const std::int64_t run = std::min(n, shape[last] - idx[last]);
      const char* src = base + off;
      switch (esize) {
        case 8: copy_run<std::uint64_t>(src, s, run, out); break;
        case 4: copy_run<std::uint32_t>(src, s, run, out); break;
        case 2: copy_run<std::uint16_t>(src, s, run, out); break;
        default: copy_run<std::uint8_t>(src, s, run, out); break;
      }
      out += run * esize;
      n -= run;
      // advance the multi-index past the run, carrying into outer dimensions
      off += run * s;
      idx[last] += run;
      for (int i = last; i > 0 && idx[i] == shape[i]; --i) {
        off -= idx[i] * strides[i];
        idx[i] = 0;
        ++idx[i - 1];
        off += strides[i - 1];
      }
    }
  }

  template <typename U>
  static void copy_run(const char* src, std::int64_t stride, std::int64_t n, char* out) {
    U* o = reinterpret_cast<U*>(out);
    for (std::int64_t i = 0; i < n; ++i) std::memcpy(o + i, src + i * stride, sizeof(U));
  }
};

// The largest maximum located so far by any thread: a lower bound of the final maximum, so a block
// whose maximum stays below it cannot hold it and skips locating its index (or, for the ratio, the
// exact pass). Without it every superblock would start from nothing and redo that work for each new
// running maximum (~ln 16 times per superblock; ~13% of the time with superblocks of 64 blocks,
// ad-hoc, one Zen 4 core). Which thread raises it when only changes how much work is skipped, never
// a result.
class SharedMax {
 public:
  void raise(double x) {
    if (!(x >= 0.0 && x < INFINITY)) return;  // (NaN and +inf come with their own rules)
    double cur = v_.load(std::memory_order_relaxed);
    while (x > cur && !v_.compare_exchange_weak(cur, x, std::memory_order_relaxed)) {
    }
  }
  // A threshold for blocks: strictly below the value, since an equal maximum may come first in
  // index order and must be located; at most `cap`; -1 (none) before any value.
  double below(double cap) const {
    const double cur = v_.load(std::memory_order_relaxed);
    return cur > 0.0 ? std::min(std::nextafter(cur, 0.0), cap) : -1.0;
  }

 private:
  std::atomic<double> v_{-1.0};
};

}  // namespace

int cpu_num_threads() {
  if (const char* env = std::getenv("FLASHPARITY_NUM_THREADS"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (*end != '\0' || v < 1 || v > 4096)
      throw std::invalid_argument(std::string("FLASHPARITY_NUM_THREADS must be an integer from 1 to 4096, got '") +
                                  env + "'");
    return static_cast<int>(v);
  }
#if defined(__linux__)
  cpu_set_t set;  // (the CPUs this process may run on: a container's or taskset's share)
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

std::uint32_t crc32_cpu(std::uint32_t crc, const void* p, std::int64_t bytes) {
  return active_parity_table().crc32(crc, p, bytes);
}

std::uint64_t read_probe_cpu(const void* a, std::int64_t bytes_a, const void* b, std::int64_t bytes_b) {
  const auto probe = active_parity_table().read_probe;
  // the same split as parity_cpu: chunks of both buffers claimed by the threads
  constexpr std::int64_t kChunk = 1 << 20;
  const std::int64_t chunks = (std::max(bytes_a, bytes_b) + kChunk - 1) / kChunk;
  const int workers = parallel_workers(chunks);
  std::vector<std::uint64_t> sums(static_cast<std::size_t>(workers), 0);
  const double fa = static_cast<double>(bytes_a) / chunks, fb = static_cast<double>(bytes_b) / chunks;
  parallel_for(chunks, workers, [&](std::int64_t c, int w) {
    const std::int64_t a0 = static_cast<std::int64_t>(fa * c), a1 = static_cast<std::int64_t>(fa * (c + 1));
    const std::int64_t b0 = static_cast<std::int64_t>(fb * c), b1 = static_cast<std::int64_t>(fb * (c + 1));
    sums[w] += probe(static_cast<const char*>(a) + a0, (c + 1 == chunks ? bytes_a : a1) - a0);
    sums[w] += probe(static_cast<const char*>(b) + b0, (c + 1 == chunks ? bytes_b : b1) - b0);
  });
  std::uint64_t total = 0;
  for (std::uint64_t v : sums) total += v;
  return total;
}

ParityAccum parity_cpu(const TensorArg& a, const TensorArg& b, const ParityParams& p) {
  const std::int64_t n = a.numel();
  const Walker wa(a), wb(b);
  const BlockFn vfn = active_parity_table().block_fn(a.dtype, b.dtype, p.atol != 0.0 || p.rtol != 0.0);
  const ScalarFn sfn = scalar_fn(a.dtype, b.dtype);

  const std::int64_t nsb = std::clamp<std::int64_t>((n + kMinSuperBlock - 1) / kMinSuperBlock, 1, kMaxSuperBlocks);
  std::int64_t sb_size = (n + nsb - 1) / nsb;
  sb_size = (sb_size + kBlock - 1) / kBlock * kBlock;
  const std::int64_t num_sb = (n + sb_size - 1) / sb_size;
  std::vector<ParityAccum> partial(num_sb);
  // gather buffers for strided inputs, one pair per worker
  const int workers = parallel_workers(num_sb);
  std::vector<std::vector<std::uint64_t>> buf_a(workers), buf_b(workers);
  SharedMax seen_abs, seen_rel;
  parallel_for(num_sb, workers, [&](std::int64_t sb, int w) {
    if (!wa.direct()) buf_a[w].resize(kBlock);
    if (!wb.direct()) buf_b[w].resize(kBlock);
    ParityAccum& acc = partial[sb];
    const std::int64_t end = std::min(n, (sb + 1) * sb_size);
    for (std::int64_t start = sb * sb_size; start < end; start += kBlock) {
      const std::int64_t len = std::min(kBlock, end - start);
      const void* pa = wa.base + start * wa.esize;
      const void* pb = wb.base + start * wb.esize;
      if (!wa.direct()) {
        wa.gather(start, len, buf_a[w].data());
        pa = buf_a[w].data();
      }
      if (!wb.direct()) {
        wb.gather(start, len, buf_b[w].data());
        pb = buf_b[w].data();
      }
      ParityAccum blk;
      // the superblock's own maxima come from earlier indices (a tie loses to them); the shared
      // ones are taken strictly below (the ratio's capped where the block kernel still screens)
      const double thr_abs = std::max(acc.max_abs_index < 0 ? -1.0 : acc.max_abs, seen_abs.below(INFINITY));
      const double thr_rel = std::max(acc.max_rel_index < 0 ? -1.0 : acc.max_rel, seen_rel.below(kRelScreenMax / 2));
      if (!vfn(blk, pa, pb, len, start, p, thr_abs, thr_rel)) {
        blk = ParityAccum();
        sfn(blk, pa, pb, len, start, p);
      }
      accum_merge(acc, blk, 0);
      if (blk.max_abs_index >= 0) seen_abs.raise(blk.max_abs);
      if (blk.max_rel_index >= 0) seen_rel.raise(blk.max_rel);
    }
  });

  ParityAccum total;
  for (const ParityAccum& part : partial) accum_merge(total, part, 0);
  return total;
}

}  // namespace flashparity
