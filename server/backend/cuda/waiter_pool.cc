// WaiterPool: see waiter_pool.h.
#include "server/backend/cuda/waiter_pool.h"

#include <exception>
#include <system_error>
#include <utility>

#include "common/log.h"

namespace ferry::backend::cuda_internal {

WaiterPool::WaiterPool(size_t max_threads) : max_threads_(max_threads == 0 ? 1 : max_threads) {}

WaiterPool::~WaiterPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  // Workers drain the queue before they exit. A job may still Submit (and
  // so start a thread) meanwhile, so join by index under no lock, re-reading
  // the size until every started thread has been joined.
  for (size_t joined = 0;;) {
    std::thread next;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (joined == threads_.size()) break;
      next = std::move(threads_[joined]);
    }
    if (next.joinable()) next.join();
    ++joined;
  }
}

void WaiterPool::Submit(Job job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(job));
    wake_.notify_one();
    // Each queued job beyond the idle threads gets a thread of its own while
    // the bound allows: a waiter blocks for as long as the GPU work takes.
    if (queue_.size() <= idle_ || threads_.size() >= max_threads_) return;
    try {
      threads_.emplace_back([this] { WorkerLoop(); });
      return;
    } catch (const std::system_error& e) {
      FERRY_LOG(kWarning) << "cuda backend: cannot start a waiter thread: " << e.what();
      if (!threads_.empty()) return;  // an existing thread will get to it
      job = std::move(queue_.back());
      queue_.pop_back();
    }
  }
  // No thread exists and none can be started: block the caller instead of
  // dropping a Completion.
  try {
    std::move(job)();
  } catch (...) {
    FERRY_LOG(kError) << "cuda backend: a waiter job threw";
  }
}

size_t WaiterPool::TEST_thread_count() {
  std::lock_guard<std::mutex> lock(mu_);
  return threads_.size();
}

void WaiterPool::WorkerLoop() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      ++idle_;
      wake_.wait(lock, [this] { return !queue_.empty() || stopping_; });
      --idle_;
      if (queue_.empty()) return;  // stopping, and nothing left to run
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    try {
      std::move(job)();
    } catch (const std::exception& e) {
      FERRY_LOG(kError) << "cuda backend: a waiter job threw: " << e.what();
    } catch (...) {
      FERRY_LOG(kError) << "cuda backend: a waiter job threw";
    }
  }
}

}  // namespace ferry::backend::cuda_internal
