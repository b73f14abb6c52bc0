#include "server/backend/host/stream_queue.h"

#include <cstdio>
#include <exception>
#include <system_error>
#include <utility>

namespace ferry::backend::host_internal {

// --- CompletionThread --------------------------------------------------------

CompletionThread::CompletionThread() : thread_([this] { Run(); }) {}

CompletionThread::~CompletionThread() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  thread_.join();
}

void CompletionThread::Post(std::function<void()> fn) {
  std::unique_lock<std::mutex> lock(mu_);
  queue_.push_back(std::move(fn));
  cv_.notify_one();
}

void CompletionThread::Run() {
  for (;;) {
    std::function<void()> fn;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return !queue_.empty() || stopping_; });
      if (queue_.empty()) return;  // stopping and drained
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    // A throwing callback must not take ferryd down with it; the contract
    // gives callbacks no way to report failure, so it is only logged.
    try {
      fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ferry host backend: completion callback threw: %s\n", e.what());
    } catch (...) {
      std::fprintf(stderr, "ferry host backend: completion callback threw\n");
    }
  }
}

// --- StreamPoint ---------------------------------------------------------------

bool StreamPoint::Reached() const { return queue == nullptr || queue->Reached(seq); }

void StreamPoint::Wait() const {
  if (queue != nullptr) queue->WaitReached(seq);
}

// --- StreamQueue ---------------------------------------------------------------

StreamQueue::StreamQueue(CompletionThread* completions) : completions_(completions) {}

Status StreamQueue::Create(CompletionThread* completions, std::shared_ptr<StreamQueue>* out) {
  std::shared_ptr<StreamQueue> queue(new StreamQueue(completions));
  std::lock_guard<std::mutex> lock(queue->thread_mu_);
  try {
    // The worker owns a reference until it exits, so a detached worker (see
    // Shutdown) never touches a destroyed queue.
    queue->thread_ = std::thread([self = queue] { self->Run(); });
  } catch (const std::system_error& e) {
    return Status::Internal(std::string("cannot start a stream worker thread: ") + e.what());
  }
  *out = std::move(queue);
  return Status::Ok();
}

StreamQueue::~StreamQueue() {
  // Only reachable once the worker has exited (it holds a reference), so the
  // thread object is joined or detached already.
}

StreamPoint StreamQueue::Enqueue(std::vector<StreamPoint> after, std::function<void()> op) {
  std::unique_lock<std::mutex> lock(mu_);
  ops_.push_back(Op{std::move(after), std::move(op)});
  ++enqueued_;
  work_cv_.notify_one();
  return StreamPoint{shared_from_this(), enqueued_};
}

StreamPoint StreamQueue::Tail() {
  std::unique_lock<std::mutex> lock(mu_);
  return StreamPoint{shared_from_this(), enqueued_};
}

bool StreamQueue::Reached(uint64_t seq) {
  std::unique_lock<std::mutex> lock(mu_);
  return done_ >= seq;
}

bool StreamQueue::IdleNow(Status* error) {
  std::unique_lock<std::mutex> lock(mu_);
  if (done_ < enqueued_) return false;
  if (error != nullptr) *error = error_;
  return true;
}

void StreamQueue::WaitReached(uint64_t seq) {
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [this, seq] { return done_ >= seq; });
}

void StreamQueue::WhenReached(uint64_t seq, std::function<void(Status)> done) {
  std::unique_lock<std::mutex> lock(mu_);
  if (done_ >= seq) {
    // Posted under the lock so that it cannot overtake a completion the
    // worker is about to post for an earlier seq of this queue.
    completions_->Post([done = std::move(done), status = error_] { done(status); });
    return;
  }
  waiters_.emplace(seq, std::move(done));
}

void StreamQueue::Shutdown() {
  std::lock_guard<std::mutex> thread_lock(thread_mu_);
  {
    std::unique_lock<std::mutex> lock(mu_);
    stopping_ = true;
    work_cv_.notify_one();
  }
  if (!thread_.joinable()) return;
  if (thread_.get_id() == std::this_thread::get_id()) {
    thread_.detach();
  } else {
    thread_.join();
  }
}

void StreamQueue::Run() {
  for (;;) {
    Op op;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [this] { return !ops_.empty() || stopping_; });
      if (ops_.empty()) return;  // stopping, and everything appended has run
      op = std::move(ops_.front());
      ops_.pop_front();
    }
    for (const StreamPoint& point : op.after) point.Wait();
    op.after.clear();  // drop references to other queues early
    Status failure;
    try {
      if (op.fn) op.fn();
    } catch (const std::exception& e) {
      failure = Status::Internal(std::string("host stream operation threw: ") + e.what());
    } catch (...) {
      failure = Status::Internal("host stream operation threw an exception");
    }
    // Whatever the op captured (buffers, HostBytes owners) is released
    // before the op counts as done, so "done" means the backend no longer
    // holds the caller's bytes.
    op.fn = nullptr;
    std::unique_lock<std::mutex> lock(mu_);
    if (!failure.ok() && error_.ok()) error_ = std::move(failure);
    ++done_;
    done_cv_.notify_all();
    while (!waiters_.empty() && waiters_.begin()->first <= done_) {
      auto node = waiters_.extract(waiters_.begin());
      completions_->Post([done = std::move(node.mapped()), status = error_] { done(status); });
    }
  }
}

}  // namespace ferry::backend::host_internal
