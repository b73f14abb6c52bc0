// Private to the host backend: the execution machinery behind its streams.
//
//  * StreamQueue runs closures in order on its own worker thread; an operation
//    may also wait for points in other queues first (how the backend builds
//    legacy-stream semantics and cuStreamWaitEvent).
//  * CompletionThread runs completion callbacks, one at a time, in the order
//    they became due. Callbacks never run on a stream's worker, so a slow
//    callback cannot stall a stream, and a callback can never be asked to run
//    on the caller's thread (the GpuBackend contract: When* never block and
//    never call back inline).
//
// Thread-safety: every method is safe from any thread. Lock order:
// StreamQueue::mu_ before CompletionThread::mu_ (a queue posts its due
// completions while holding its lock, which keeps completions of one queue
// in order); nothing calls out while holding CompletionThread::mu_.
//
// std::mutex rather than absl::Mutex: the distribution's absl is built
// without ThreadSanitizer annotations, so TSan cannot see absl::Mutex's
// ordering and reports false races; std::mutex keeps this code checkable by
// TSan. ABSL_GUARDED_BY still documents what each mutex guards.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/status.h"

namespace ferry::backend::host_internal {

class CompletionThread {
 public:
  CompletionThread();
  // Runs every callback already posted, then joins the thread.
  ~CompletionThread();
  CompletionThread(const CompletionThread&) = delete;
  CompletionThread& operator=(const CompletionThread&) = delete;

  void Post(std::function<void()> fn);

 private:
  void Run();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts once the members above exist
};

class StreamQueue;

// A position in a StreamQueue: reached once the queue has finished its first
// `seq` operations. seq 0 is reached from the start.
struct StreamPoint {
  std::shared_ptr<StreamQueue> queue;
  uint64_t seq = 0;

  bool Reached() const;
  void Wait() const;
};

class StreamQueue : public std::enable_shared_from_this<StreamQueue> {
 public:
  // Starts a queue with its worker thread. `completions` must outlive it.
  // Fails (Internal) if no thread can be started.
  static Status Create(CompletionThread* completions, std::shared_ptr<StreamQueue>* out);

  StreamQueue(const StreamQueue&) = delete;
  StreamQueue& operator=(const StreamQueue&) = delete;
  ~StreamQueue();

  // Appends `op`. It runs on the worker after every operation appended before
  // it and after each point in `after` is reached. Points must lie in other
  // queues and have been taken before this call, which keeps the
  // happens-before graph acyclic. Returns the point `op` completes. Must not
  // be called after Shutdown.
  StreamPoint Enqueue(std::vector<StreamPoint> after, std::function<void()> op);

  // The point reached once everything appended so far has finished.
  StreamPoint Tail();
  bool Reached(uint64_t seq);
  // True when everything appended so far has finished; `*error` (if given)
  // is then the queue's first failure (OK if none), as WhenReached reports.
  bool IdleNow(Status* error);
  // Blocks until `seq` is reached.
  void WaitReached(uint64_t seq);
  // Posts `done(status)` to the completion thread once `seq` is reached (at
  // once if it is). `status` is OK unless an operation of this queue failed.
  void WhenReached(uint64_t seq, std::function<void(Status)> done);

  // Lets every appended operation finish, then ends the worker thread.
  // Idempotent. Called from the worker itself (a callback destroying its own
  // stream), it detaches instead of joining; the worker holds a reference to
  // the queue until it exits.
  void Shutdown();

 private:
  struct Op {
    std::vector<StreamPoint> after;
    std::function<void()> fn;
  };

  explicit StreamQueue(CompletionThread* completions);
  void Run();

  CompletionThread* const completions_;
  std::mutex mu_;
  std::condition_variable work_cv_;  // ops_ or stopping_ changed
  std::condition_variable done_cv_;  // done_ advanced
  std::deque<Op> ops_ ABSL_GUARDED_BY(mu_);
  uint64_t enqueued_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t done_ ABSL_GUARDED_BY(mu_) = 0;
  // Keyed by seq; equal keys keep their insertion order.
  std::multimap<uint64_t, std::function<void(Status)>> waiters_ ABSL_GUARDED_BY(mu_);
  Status error_ ABSL_GUARDED_BY(mu_);  // first failure, sticky
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::mutex thread_mu_;  // serializes Shutdown
  std::thread thread_ ABSL_GUARDED_BY(thread_mu_);
};

}  // namespace ferry::backend::host_internal
