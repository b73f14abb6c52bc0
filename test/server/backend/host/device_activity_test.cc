// DeviceActivity (the host backend's utilization for NVML): exact timelines,
// no clocks read.
#include "server/backend/host/device_activity.h"

#include <gtest/gtest.h>

namespace ferry::backend::host_internal {
namespace {

using std::chrono::milliseconds;
using Clock = DeviceActivity::Clock;

const Clock::time_point kStart = Clock::time_point() + std::chrono::hours(1);

Clock::time_point At(int ms) { return kStart + milliseconds(ms); }

TEST(DeviceActivityTest, IdleDeviceIsZeroPercentBusy) {
  DeviceActivity activity;
  EXPECT_EQ(activity.PercentBusy(At(0)), 0);
  EXPECT_EQ(activity.PercentBusy(At(5000)), 0);
}

TEST(DeviceActivityTest, BusyShareOfTheLastSecond) {
  DeviceActivity activity;
  activity.Begin(At(0));
  activity.End(At(250));
  EXPECT_EQ(activity.PercentBusy(At(1000)), 25);
  // The window slides: at 1.1 s only [100, 250) of the span is inside.
  EXPECT_EQ(activity.PercentBusy(At(1100)), 15);
  EXPECT_EQ(activity.PercentBusy(At(1300)), 0);
}

TEST(DeviceActivityTest, RunningOperationCountsUpToNow) {
  DeviceActivity activity;
  activity.Begin(At(0));
  EXPECT_EQ(activity.PercentBusy(At(500)), 50);
  EXPECT_EQ(activity.PercentBusy(At(3000)), 100);
  activity.End(At(3000));
  EXPECT_EQ(activity.PercentBusy(At(3500)), 50);
}

// Two streams at once keep the device busy once, not twice.
TEST(DeviceActivityTest, OverlappingOperationsCountOnce) {
  DeviceActivity activity;
  activity.Begin(At(0));
  activity.Begin(At(100));
  activity.End(At(300));
  activity.End(At(400));
  EXPECT_EQ(activity.PercentBusy(At(1000)), 40);
}

// Many tiny operations back to back are one span (the record stays small)
// and still count as the time they ran.
TEST(DeviceActivityTest, OperationsCloseTogetherMerge) {
  DeviceActivity activity;
  for (int i = 0; i < 500; ++i) {
    activity.Begin(kStart + std::chrono::microseconds(1000 * i));
    activity.End(kStart + std::chrono::microseconds(1000 * i + 600));
  }
  // Merged into one span from 0 to 499.6 ms.
  EXPECT_EQ(activity.PercentBusy(At(1000)), 50);
}

}  // namespace
}  // namespace ferry::backend::host_internal
