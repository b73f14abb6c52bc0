// Private to the host backend: how busy one emulated device was, for the
// utilization NVML reports (GpuBackend::ReadDeviceTelemetry).
//
// DeviceActivity records when operations of one kind (kernels, or copies and
// memsets) run on a device, from any number of stream threads at once, and
// answers the share of a trailing window (NVML's "past sample period", one
// second) during which at least one of them ran: overlapping operations count
// once, as NVML counts a GPU busy while any kernel runs. Busy spans closer
// than kMergeGap are merged, so the record stays small under a stream of
// tiny kernels.
//
// Times are passed in (steady clock), so tests replay exact timelines.
//
// Thread-safety: every method is safe from any thread.
#pragma once

#include <chrono>
#include <deque>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace ferry::backend::host_internal {

class DeviceActivity {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr Clock::duration kWindow = std::chrono::seconds(1);
  static constexpr Clock::duration kMergeGap = std::chrono::milliseconds(1);

  // An operation starts / ends running at `now`. Every Begin is matched by
  // one End, later.
  void Begin(Clock::time_point now);
  void End(Clock::time_point now);
  // Percent (0-100) of [now - kWindow, now] during which an operation ran.
  int PercentBusy(Clock::time_point now) const;

  // Begin at construction, End at destruction (on the stream's thread).
  class Scope {
   public:
    explicit Scope(DeviceActivity& activity) : activity_(activity) {
      activity_.Begin(Clock::now());
    }
    ~Scope() { activity_.End(Clock::now()); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    DeviceActivity& activity_;
  };

 private:
  struct Span {
    Clock::time_point begin, end;
  };
  // Drops spans that ended before `now - kWindow`.
  void Prune(Clock::time_point now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable std::mutex mu_;
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  Clock::time_point running_since_ ABSL_GUARDED_BY(mu_);
  std::deque<Span> spans_ ABSL_GUARDED_BY(mu_);  // ended spans, oldest first, disjoint
};

}  // namespace ferry::backend::host_internal
