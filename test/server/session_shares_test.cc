// SessionShares: a session's memory quota per slice (check, charge, uncharge,
// what cuMemGetInfo reports) and its launch throttle (which devices are
// throttled, a launch waits for the device's previous kernel, Interrupt cuts
// every wait short). Also the compute-mechanism names the handshake shows.
#include "server/session_shares.h"

#include <cuda.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "test/support/host_backend.h"

namespace ferry::server {
namespace {

// Device 0: a quarter slice with a 1 MiB quota, throttled; device 1: whole;
// device 2: a half slice on an SM partition (not throttled).
SessionGrant TestGrant() {
  SessionGrant grant;
  grant.pooled = true;
  grant.pool = "p";
  SessionDevice quarter;
  quarter.memory_quota = 1 << 20;
  quarter.compute_share = 0.25;
  quarter.gpu = 3;
  quarter.slice = 1;
  quarter.slices_per_gpu = 4;
  SessionDevice whole;
  SessionDevice partitioned;
  partitioned.compute_share = 0.5;
  partitioned.slices_per_gpu = 2;
  partitioned.sm_partition_sms = 66;
  grant.devices = {quarter, whole, partitioned};
  return grant;
}

TEST(SessionSharesTest, QuotaRefusesWhatDoesNotFitAndFollowsChargesAndFrees) {
  const SessionGrant grant = TestGrant();
  SessionShares shares(grant);
  EXPECT_TRUE(shares.CheckQuota(0, 1 << 20).ok());
  Status over = shares.CheckQuota(0, (1 << 20) + 1);
  EXPECT_EQ(over.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_NE(over.message().find("slice 2/4 of GPU 3 (pool p)"), std::string::npos)
      << over.ToString();

  shares.Charge(0, 600 << 10);
  EXPECT_EQ(shares.device_bytes(0), 600u << 10);
  EXPECT_EQ(shares.bytes_allocated(), 600u << 10);
  EXPECT_EQ(shares.allocations(), 1u);
  EXPECT_FALSE(shares.CheckQuota(0, 500 << 10).ok());
  EXPECT_TRUE(shares.CheckQuota(0, 424 << 10).ok());
  // No quota on a whole device.
  EXPECT_TRUE(shares.CheckQuota(1, uint64_t{1} << 60).ok());
  shares.Charge(1, 100);
  EXPECT_EQ(shares.bytes_allocated(), (600u << 10) + 100);
  EXPECT_EQ(shares.allocations(), 2u);

  shares.Uncharge(0, 600 << 10);
  shares.Uncharge(1, 100);
  EXPECT_EQ(shares.device_bytes(0), 0u);
  EXPECT_EQ(shares.bytes_allocated(), 0u);
  EXPECT_EQ(shares.allocations(), 0u);
  EXPECT_TRUE(shares.CheckQuota(0, 1 << 20).ok());
}

TEST(SessionSharesTest, ThePeakIsTheMostHeldAtOnceAcrossDevices) {
  const SessionGrant grant = TestGrant();
  SessionShares shares(grant);
  EXPECT_EQ(shares.peak_bytes_allocated(), 0u);
  shares.Charge(0, 300);
  shares.Charge(1, 200);
  shares.Uncharge(0, 300);
  shares.Charge(1, 250);  // 450 held: below the 500 of before
  EXPECT_EQ(shares.peak_bytes_allocated(), 500u);
  shares.Charge(0, 100);  // 550
  shares.Uncharge(1, 450);
  EXPECT_EQ(shares.peak_bytes_allocated(), 550u);
  EXPECT_EQ(shares.bytes_allocated(), 100u);
}

TEST(SessionSharesTest, MemInfoOfASliceIsItsQuota) {
  const SessionGrant grant = TestGrant();
  SessionShares shares(grant);
  shares.Charge(0, 256 << 10);
  uint64_t free_bytes = 8ull << 30, total = 16ull << 30;
  shares.ApplyQuota(0, &free_bytes, &total);
  EXPECT_EQ(total, 1u << 20);
  EXPECT_EQ(free_bytes, 768u << 10);
  // Never more free than the device itself has.
  free_bytes = 1000;
  total = 16ull << 30;
  shares.ApplyQuota(0, &free_bytes, &total);
  EXPECT_EQ(free_bytes, 1000u);
  // A whole device: what the backend said.
  free_bytes = 5;
  total = 7;
  shares.ApplyQuota(1, &free_bytes, &total);
  EXPECT_EQ(free_bytes, 5u);
  EXPECT_EQ(total, 7u);
}

TEST(SessionSharesTest, OnlySharesWithoutAnSmPartitionAreThrottled) {
  const SessionGrant grant = TestGrant();
  SessionShares shares(grant);
  EXPECT_TRUE(shares.Throttled(0));
  EXPECT_FALSE(shares.Throttled(1));
  EXPECT_FALSE(shares.Throttled(2));
  EXPECT_THROW((void)shares.Throttled(3), std::out_of_range);
  EXPECT_EQ(ComputeMechanism(grant.devices[0]), "launch-throttle");
  EXPECT_EQ(ComputeMechanism(grant.devices[1]), "whole-gpu");
  EXPECT_EQ(ComputeMechanism(grant.devices[2]), "sm-partition (66 SMs)");
}

// --compute-sharing mps: a share below 1 is MPS's to enforce (the worker
// process's environment), so nothing is throttled and no SM partition is
// made; the status says so, and the environment carries the share and the
// quota (rounded up to MiB, per backend device).
TEST(SessionSharesTest, WithMpsSharesGoToTheWorkersEnvironment) {
  std::unique_ptr<backend::GpuBackend> backend;
  ASSERT_TRUE(test::CreateTestHostBackend(1 << 20, &backend, 2).ok());
  SessionGrant grant;
  grant.pooled = true;
  SessionDevice quarter;
  quarter.backend_device = 0;
  quarter.memory_quota = (3ull << 30) + 1;
  quarter.compute_share = 0.25;
  quarter.slice = 1;
  quarter.slices_per_gpu = 4;
  SessionDevice whole;
  whole.backend_device = 1;
  grant.devices = {quarter, whole};
  const SessionGrant chosen = WithComputeMechanisms(*backend, grant, ComputeSharing::kMps);
  EXPECT_TRUE(chosen.mechanisms_chosen);
  EXPECT_EQ(chosen.devices[0].mps_thread_percentage, 25);
  EXPECT_EQ(chosen.devices[0].sm_partition_sms, 0);
  EXPECT_EQ(chosen.devices[1].mps_thread_percentage, 0);
  EXPECT_EQ(ComputeMechanism(chosen.devices[0]), "mps (25% of SMs)");
  EXPECT_EQ(ComputeMechanism(chosen.devices[1]), "whole-gpu");
  SessionShares shares(chosen);
  EXPECT_FALSE(shares.Throttled(0));
  EXPECT_EQ(MpsEnvironment(chosen),
            (std::vector<std::string>{"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25",
                                      "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=3073M"}));
  // Chosen once: a grant that comes chosen (a worker's) stays as it is.
  EXPECT_EQ(WithComputeMechanisms(*backend, chosen).devices[0].mps_thread_percentage, 25);
  // Without MPS: the host backend has no SM partitions, so the quarter is
  // throttled and the environment is untouched.
  const SessionGrant automatic = WithComputeMechanisms(*backend, grant);
  EXPECT_EQ(ComputeMechanism(automatic.devices[0]), "launch-throttle");
  EXPECT_TRUE(MpsEnvironment(automatic).empty());
}

TEST(SessionSharesTest, ALaunchWaitsForTheDevicesPreviousKernel) {
  const SessionGrant grant = TestGrant();
  SessionShares shares(grant);
  backend::Completion done = shares.LaunchQueued(0);
  std::atomic<bool> completed{false};
  auto next = std::async(std::launch::async, [&] {
    shares.ThrottleBeforeLaunch(0);
    return completed.load();
  });
  // The next launch may not start before the kernel in flight is done.
  EXPECT_EQ(next.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout);
  completed.store(true);
  done(Status::Ok());
  // Then it waits at most for the busy time it must earn back (a kernel of
  // ~50 ms at share 1/4: well under 10 s).
  ASSERT_EQ(next.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(next.get());
}

TEST(SessionSharesTest, InterruptEndsEveryWait) {
  const SessionGrant grant = TestGrant();
  SessionShares shares(grant);
  backend::Completion done = shares.LaunchQueued(0);  // never completes before the wait
  auto waiter = std::async(std::launch::async, [&] { shares.ThrottleBeforeLaunch(0); });
  // The waiter is held by the kernel in flight (not yet interrupted), so the
  // interrupt below cuts a present wait short.
  ASSERT_EQ(waiter.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout);
  shares.Interrupt();
  ASSERT_EQ(waiter.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  // Later waits return at once too.
  shares.ThrottleBeforeLaunch(0);
  done(Status::Ok());
}

}  // namespace
}  // namespace ferry::server
