// LaunchThrottle: the compute share of a slice where the GPU offers no SM
// partition — a duty-cycle model of launch-rate throttling.
//
// A slice with share s may keep its device busy for a fraction s of wall
// time. The throttle holds a credit of busy time that grows by s seconds per
// second of wall time (up to `burst`) and shrinks by the busy time of each
// kernel that ran. A launch waits while the credit is negative, for as long as
// it takes to earn it back: credit / s. So a session alone on its GPU with
// share 1/4 that launches back-to-back kernels of 10 ms runs one every 40 ms.
//
// The model is pure: the caller supplies the times (the server measures
// kernel busy time as the time from a launch's start to its stream going
// idle). It throttles a session against its own share only; it never waits
// for another session.
//
// Thread-safety: none; the caller serialises (ferryd: a mutex per session).
#pragma once

#include <absl/time/time.h>

#include <algorithm>

namespace ferry::pool {

class LaunchThrottle {
 public:
  // `share` in (0, 1]; a share of 1 never throttles.
  LaunchThrottle(double share, absl::Duration burst, absl::Time now)
      : share_(share), burst_(burst), credit_(burst), updated_(now) {}

  double share() const { return share_; }
  bool throttles() const { return share_ < 1.0; }

  // How long a launch issued at `now` must wait.
  absl::Duration DelayBeforeLaunch(absl::Time now) {
    Refill(now);
    if (!throttles() || credit_ >= absl::ZeroDuration()) return absl::ZeroDuration();
    return -credit_ / share_;
  }

  // Kernels ran for `busy` (measured, completed at `now`).
  void ChargeBusy(absl::Duration busy, absl::Time now) {
    if (!throttles() || busy <= absl::ZeroDuration()) {
      Refill(now);
      return;
    }
    // Idle time before the kernel earns credit up to the burst; the kernel's
    // own time earns at the share without the cap, and costs its length.
    const absl::Time start = now - busy;
    Refill(start);
    const absl::Time earning_from = std::max(start, updated_);
    if (now > earning_from) credit_ += (now - earning_from) * share_;
    credit_ -= busy;
    if (now > updated_) updated_ = now;
  }

 private:
  void Refill(absl::Time now) {
    if (now <= updated_) return;
    credit_ += (now - updated_) * share_;
    if (credit_ > burst_) credit_ = burst_;
    updated_ = now;
  }

  const double share_;
  const absl::Duration burst_;
  absl::Duration credit_;
  absl::Time updated_;
};

}  // namespace ferry::pool
