// WaiterPool — a small, bounded set of threads that run blocking waits
// (cuEventSynchronize, cuCtxSynchronize) for CudaBackend, so that the callers
// of WhenEventComplete / WhenContextIdle never block.
//
// Threads start on demand, one per job that finds no idle thread, up to
// `max_threads`; past that, jobs queue in FIFO order. The bound trades
// latency for thread count: with every thread blocked on a long wait, a
// short one waits for a free thread.
//
// Thread-safety: Submit may be called from any thread, including from a job.
// The destructor runs every queued job, then joins the threads; it must not
// be called from a job.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"

namespace ferry::backend::cuda_internal {

class WaiterPool {
 public:
  using Job = absl::AnyInvocable<void() &&>;

  explicit WaiterPool(size_t max_threads);
  ~WaiterPool();

  WaiterPool(const WaiterPool&) = delete;
  WaiterPool& operator=(const WaiterPool&) = delete;

  // Runs `job` on a pool thread. If no thread can be started at all (the
  // system refuses threads and none exists yet), runs it on the caller's
  // thread rather than lose it.
  void Submit(Job job);

  size_t TEST_thread_count();

 private:
  void WorkerLoop();

  const size_t max_threads_;
  // std::mutex rather than absl::Mutex: the distribution's absl is built
  // without TSan hooks, so TSan could not see its ordering.
  std::mutex mu_;
  std::condition_variable wake_;  // a job was queued, or stopping_ was set
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  size_t idle_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::backend::cuda_internal
