// The CPU kernels' thread pool: tasks claimed from an atomic counter by the calling thread and
// num_threads - 1 helpers. Which thread runs a task never changes a result.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace flashparity {

int cpu_num_threads();

// Workers parallel_for uses for num_tasks tasks (size per-worker state with it).
inline int parallel_workers(std::int64_t num_tasks) {
  return static_cast<int>(std::min<std::int64_t>(cpu_num_threads(), std::max<std::int64_t>(num_tasks, 1)));
}

// Calls fn(task, worker) for every task in [0, num_tasks), worker in [0, parallel_workers(num_tasks)).
template <typename Fn>
void parallel_for(std::int64_t num_tasks, Fn&& fn) {
  const int threads = parallel_workers(num_tasks);
  std::atomic<std::int64_t> next{0};
  auto worker = [&](int w) {
    for (std::int64_t t = next++; t < num_tasks; t = next++) fn(t, w);
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int w = 1; w < threads; ++w) pool.emplace_back(worker, w);
  worker(0);
  for (auto& th : pool) th.join();
}

}  // namespace flashparity
