// The duty-cycle model of launch-rate throttling.
#include "server/pool/launch_throttle.h"

#include <gtest/gtest.h>

namespace ferry::pool {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1'000'000);

TEST(LaunchThrottleTest, WholeShareNeverWaits) {
  LaunchThrottle throttle(1.0, absl::Milliseconds(10), kStart);
  EXPECT_FALSE(throttle.throttles());
  throttle.ChargeBusy(absl::Seconds(5), kStart);
  EXPECT_EQ(throttle.DelayBeforeLaunch(kStart), absl::ZeroDuration());
}

TEST(LaunchThrottleTest, QuarterShareWaitsThreeTimesTheBusyTime) {
  LaunchThrottle throttle(0.25, absl::ZeroDuration(), kStart);
  // A 10 ms kernel from kStart to kStart + 10 ms.
  const absl::Time done = kStart + absl::Milliseconds(10);
  throttle.ChargeBusy(absl::Milliseconds(10), done);
  // It earned 2.5 ms of credit while it ran: 7.5 ms short, 30 ms to earn.
  EXPECT_EQ(throttle.DelayBeforeLaunch(done), absl::Milliseconds(30));
  EXPECT_EQ(throttle.DelayBeforeLaunch(done + absl::Milliseconds(20)), absl::Milliseconds(10));
  EXPECT_EQ(throttle.DelayBeforeLaunch(done + absl::Milliseconds(30)), absl::ZeroDuration());
}

TEST(LaunchThrottleTest, BackToBackKernelsSettleAtTheShare) {
  // Launch whenever allowed, each kernel busy for 4 ms: over a simulated
  // second the busy fraction approaches the share of 1/2.
  LaunchThrottle throttle(0.5, absl::Milliseconds(4), kStart);
  absl::Time now = kStart;
  absl::Duration busy = absl::ZeroDuration();
  while (now < kStart + absl::Seconds(1)) {
    now += throttle.DelayBeforeLaunch(now);
    now += absl::Milliseconds(4);
    busy += absl::Milliseconds(4);
    throttle.ChargeBusy(absl::Milliseconds(4), now);
  }
  const double fraction = absl::FDivDuration(busy, now - kStart);
  EXPECT_NEAR(fraction, 0.5, 0.01);
}

TEST(LaunchThrottleTest, IdleTimeEarnsAtMostTheBurst) {
  LaunchThrottle throttle(0.5, absl::Milliseconds(5), kStart);
  // An hour idle earns only the 5 ms burst. A 15 ms kernel earns 7.5 ms
  // while it runs, so 2.5 ms are owed: 5 ms of waiting at share 1/2.
  const absl::Time later = kStart + absl::Hours(1);
  throttle.ChargeBusy(absl::Milliseconds(15), later);
  EXPECT_EQ(throttle.DelayBeforeLaunch(later), absl::Milliseconds(5));
}

}  // namespace
}  // namespace ferry::pool
