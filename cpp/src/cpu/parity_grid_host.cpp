// The CUDA parity kernel's algorithm run on the CPU: every thread of a given grid, one after the
// other, through the same host/device functions the kernel runs (parity_grid.h), then each block's
// fold (histogram columns, reduction tree) and the final kernel's fold of the block partials. For the
// same grid the GPU gives the same maxima, indices, counts and histogram, and the same sums but for
// the roundings nvcc saves by fusing a * b + c (the host build does not fuse), so the CPU suite
// checks the kernel's logic:
// which elements each thread visits and in which order, the vector and element-wise paths, the
// short last chunk, the tree, the merge. A test tool, not a fast path.
#include "cpu/parity_grid_host.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "flashparity/parity_grid.h"

namespace flashparity {

namespace {

template <typename TA, typename TB>
ParityAccum run_grid(const ParityGridParams& g, int blocks, int threads) {
  std::vector<ParityAccum> partials(blocks);
  std::vector<unsigned> hist(static_cast<std::size_t>(kHistBins) * threads);  // [bin][thread], as in shared memory
  std::vector<ParityCore> core(threads);
  const std::int64_t stride = static_cast<std::int64_t>(blocks) * threads;
  for (int blk = 0; blk < blocks; ++blk) {
    std::fill(hist.begin(), hist.end(), 0u);
    for (int t = 0; t < threads; ++t) {
      ElementAccum e;
      parity_grid_thread<TA, TB>(g, static_cast<std::int64_t>(blk) * threads + t, stride, e, hist.data() + t, threads);
      e.fold_into(core[t]);
    }
    for (int s = threads / 2; s > 0; s >>= 1)
      for (int t = 0; t < s; ++t) grid_tree_step(core.data(), t, s);
    ParityAccum& part = partials[blk];
    static_cast<ParityCore&>(part) = core[0];
    for (int k = 0; k < kHistBins; ++k) {
      std::int64_t c = 0;
      for (int t = 0; t < threads; ++t) c += hist[static_cast<std::size_t>(k) * threads + t];
      part.hist[k] = c;
    }
  }
  // the second step, as the final kernel runs it
  std::vector<ParityCore> fin(kGridFinalThreads);
  for (int t = 0; t < kGridFinalThreads; ++t) grid_final_thread(partials.data(), blocks, t, fin[t]);
  for (int s = kGridFinalThreads / 2; s > 0; s >>= 1)
    for (int t = 0; t < s; ++t) grid_tree_step(fin.data(), t, s);
  ParityAccum total;
  static_cast<ParityCore&>(total) = fin[0];
  for (int k = 0; k < kHistBins; ++k) total.hist[k] = grid_final_bin(partials.data(), blocks, k);
  return total;
}

}  // namespace

ParityAccum parity_grid_host(const TensorArg& a, const TensorArg& b, const ParityParams& p, int blocks, int threads) {
  if (threads < 1 || threads > 1024 || (threads & (threads - 1)) != 0)
    throw std::invalid_argument("threads must be a power of two in [1, 1024], got " + std::to_string(threads));
  if (blocks < 1) throw std::invalid_argument("blocks must be >= 1, got " + std::to_string(blocks));
  const ParityGridParams g = grid_params(a, b, p);
  if (static_cast<std::int64_t>(blocks) * threads * kGridMaxPerThread < g.n)
    throw std::invalid_argument("a grid of " + std::to_string(blocks) + " x " + std::to_string(threads) +
                                " threads would give a thread 2^31 elements or more");
  ParityAccum out;
  FP_DTYPE_SWITCH_ALL(a.dtype, TA, [&] { FP_DTYPE_SWITCH_ALL(b.dtype, TB, [&] { out = run_grid<TA, TB>(g, blocks, threads); }); });
  return out;
}

std::int64_t parity_grid_blocks(std::int64_t n, int threads, std::int64_t resident) {
  return grid_blocks(n, threads, resident);
}

}  // namespace flashparity
