// The persistent helper threads behind parallel_for (threading.h).
#include "cpu/threading.h"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

namespace flashparity {

namespace {

using Clock = std::chrono::steady_clock;

// How long a helper that finished a job, or a caller waiting for its helpers, spins before parking:
// back-to-back calls (a loop over layers, a test suite) then never pay the wake-up.
constexpr auto kSpin = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

class Pool {
 public:
  bool run(int threads, void (*body)(void*, int), void* ctx) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lk(mu_);
      const std::uint64_t gen = generation_.load(std::memory_order_relaxed);
      // helpers are created on first need and never leave (their number only grows)
      while (started_ < threads - 1) {
        const int id = ++started_;
        std::thread(&Pool::loop, this, id, gen).detach();
      }
      body_ = body;
      ctx_ = ctx;
      helpers_ = threads - 1;
      pending_.store(threads - 1, std::memory_order_relaxed);
      generation_.store(gen + 1, std::memory_order_release);
    }
    wake_.notify_all();
    body(ctx, 0);
    const auto until = Clock::now() + kSpin;
    while (pending_.load(std::memory_order_acquire) != 0 && Clock::now() < until) cpu_relax();
    if (pending_.load(std::memory_order_acquire) != 0) {
      std::unique_lock<std::mutex> lk(mu_);
      done_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    return true;
  }

 private:
  // Helper `id` (1-based): takes part in every job that asks for at least id helpers. A job cannot
  // finish, and so no later job can start, before each of its helpers has run it: no helper misses
  // a job it belongs to.
  void loop(int id, std::uint64_t seen) {
    for (;;) {
      const auto until = Clock::now() + kSpin;
      while (generation_.load(std::memory_order_acquire) == seen && Clock::now() < until) cpu_relax();
      void (*body)(void*, int);
      void* ctx;
      {
        std::unique_lock<std::mutex> lk(mu_);
        wake_.wait(lk, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
        seen = generation_.load(std::memory_order_relaxed);
        if (id > helpers_) continue;
        body = body_;
        ctx = ctx_;
      }
      body(ctx, id);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);  // (the caller checks pending_ under mu_ before it sleeps)
        done_.notify_one();
      }
    }
  }

  std::mutex run_mu_;  // one job at a time
  std::mutex mu_;      // guards the job below and the sleeping
  std::condition_variable wake_, done_;
  std::atomic<std::uint64_t> generation_{0};  // one per job
  std::atomic<int> pending_{0};               // helpers of the current job still running
  int started_ = 0;
  int helpers_ = 0;
  void (*body_)(void*, int) = nullptr;
  void* ctx_ = nullptr;
};

// The process's pool, never destroyed (helpers park forever and die with the process). A forked
// child has none of its parent's threads: it drops the pointer and builds its own on first use.
std::atomic<Pool*> g_pool{nullptr};

Pool& pool() {
  static std::once_flag registered;
  std::call_once(registered, [] { pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); }); });
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p == nullptr) {
    Pool* fresh = new Pool();
    if (g_pool.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) p = fresh;
    else delete fresh;
  }
  return *p;
}

}  // namespace

bool run_on_pool(int threads, void (*body)(void* ctx, int worker), void* ctx) {
  return pool().run(threads, body, ctx);
}

}  // namespace flashparity
