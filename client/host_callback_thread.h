// HostCallbackThread: the client thread on which the program's host callbacks
// (cuLaunchHostFunc, cuStreamAddCallback) run. CUDA runs them on a thread of
// the driver's, one at a time; so does this: jobs run in the order they are
// posted, each after the previous one has returned, so the callbacks of one
// stream (posted in stream order) run in stream order. A callback that never
// returns holds back every later one, as in CUDA.
//
// The thread starts with the first job, so a program without host callbacks
// never has it.
//
// Thread-safety: Post may be called from any thread. The destructor must not
// be called from a job; it waits for the job that is running and drops the
// ones not started.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"

#include "common/status.h"

namespace ferry::client {

class HostCallbackThread {
 public:
  HostCallbackThread() = default;
  ~HostCallbackThread();
  HostCallbackThread(const HostCallbackThread&) = delete;
  HostCallbackThread& operator=(const HostCallbackThread&) = delete;

  // Queues `job`. Fails (Internal) only if the thread cannot be started; the
  // job is then dropped.
  Status Post(std::function<void()> job);

  // True on a host-callback thread, i.e. inside a host callback, where CUDA
  // forbids CUDA calls.
  static bool OnThisThread();

 private:
  void Run();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // started under mu_ by the first Post
};

}  // namespace ferry::client
