// Clock: where the pool reads the time of day. Schedules, grace periods and
// wait deadlines all go through a Clock, so tests (and ferryd's test-only
// --test-fake-clock) can stand at 19:59 and step over 20:00 without waiting.
//
// Thread-safety: Now() is safe from any thread for every implementation;
// FakeClock's setters too.
#pragma once

#include <absl/synchronization/mutex.h>
#include <absl/time/clock.h>
#include <absl/time/time.h>

namespace ferry::pool {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

// The real time of day.
class SystemClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

// A clock that stands still until told to move. Never goes backwards unless
// Set says so.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start) : now_(start) {}

  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration by) {
    absl::MutexLock lock(&mu_);
    now_ += by;
  }
  void Set(absl::Time to) {
    absl::MutexLock lock(&mu_);
    now_ = to;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::pool
