// The CPU kernels' thread pool: tasks claimed from an atomic counter by the calling thread and
// num_threads - 1 helpers. Which thread runs a task never changes a result.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace flashparity {

int cpu_num_threads();

// Workers parallel_for uses for num_tasks tasks (size per-worker state with it).
inline int parallel_workers(std::int64_t num_tasks) {
  return static_cast<int>(std::min<std::int64_t>(cpu_num_threads(), std::max<std::int64_t>(num_tasks, 1)));
}

// Runs body(ctx, w) for w in [1, threads) on the process's persistent helper threads while the
// caller runs body(ctx, 0), and returns once all have finished. Starting a thread costs ~0.1 ms on
// a virtual machine, as much as reducing 2^18 elements, and a parked thread takes tens of
// microseconds to wake, so helpers stay parked between calls but spin briefly first. Returns false,
// running nothing, when another thread is using the pool (the caller then starts threads of its
// own). A forked child gets a fresh pool.
bool run_on_pool(int threads, void (*body)(void* ctx, int worker), void* ctx);

// Calls fn(task, worker) for every task in [0, num_tasks) on `threads` workers, worker in
// [0, threads): size per-worker state with the same `threads` (parallel_workers(num_tasks), read
// once: FLASHPARITY_NUM_THREADS or the CPU affinity may change meanwhile). An exception from fn
// (an allocation that fails) stops the claiming of tasks; the first one is rethrown once every
// worker has stopped.
template <typename Fn>
void parallel_for(std::int64_t num_tasks, int threads, Fn&& fn) {
  if (threads < 1) threads = 1;
  std::atomic<std::int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_lock;
  auto worker = [&](int w) {
    for (std::int64_t t = next++; t < num_tasks; t = next++) {
      try {
        fn(t, w);
      } catch (...) {
        const std::lock_guard<std::mutex> hold(error_lock);
        if (!error) error = std::current_exception();
        next = num_tasks;
        return;
      }
    }
  };
  if (threads == 1) {
    worker(0);
  } else {
    auto body = [](void* ctx, int w) { (*static_cast<decltype(worker)*>(ctx))(w); };
    if (!run_on_pool(threads, body, &worker)) {
      std::vector<std::thread> pool;
      pool.reserve(threads - 1);
      for (int w = 1; w < threads; ++w) pool.emplace_back(worker, w);
      worker(0);
      for (auto& th : pool) th.join();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace flashparity
