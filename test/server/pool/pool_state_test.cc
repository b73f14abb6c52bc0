// PoolState with a fake clock: slices, the borrow queue, schedules that wrap
// midnight and cross DST, drains, preemption, manual actions and reloads.
#include "server/pool/pool_state.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "server/pool/clock.h"
#include "test/support/pool_config.h"

namespace ferry::pool {
namespace {

constexpr uint64_t kGiB = 1ull << 30;

absl::TimeZone Zone(const std::string& name) {
  absl::TimeZone zone;
  EXPECT_TRUE(LoadIanaTimeZone(name, &zone).ok());
  return zone;
}

absl::Time Shanghai(int y, int mo, int d, int h, int mi, int s = 0) {
  return absl::FromCivil(absl::CivilSecond(y, mo, d, h, mi, s), Zone("Asia/Shanghai"));
}

Config MustParse(const std::string& text) {
  Config config;
  Status status = ParseConfig(text, "test.toml", &config);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return config;
}

// README.md's pool example with `gpus` GPUs of 8 GiB: dev (4 slices) by day,
// train (1 slice) by night, drain with a 15-minute grace.
std::string DayNight(const std::string& night_policy = "on_rebind = \"drain\"\ngrace = \"15m\"\n",
                     const std::string& gpus = "[0]") {
  test::DayNightConfig config;
  config.gpus = gpus;
  config.night_policy = night_policy;
  return test::DayNightToml(config);
}

class PoolStateTest : public ::testing::Test {
 protected:
  void Make(const std::string& config_text, int gpu_count = 1,
            absl::Time start = Shanghai(2026, 3, 10, 19, 0)) {
    clock_ = std::make_unique<FakeClock>(start);
    std::vector<PoolGpu> gpus;
    for (int i = 0; i < gpu_count; ++i) gpus.push_back(PoolGpu{i, 8 * kGiB});
    Status status = PoolState::Create(MustParse(config_text), gpus, clock_->Now(), &pool_);
    ASSERT_TRUE(status.ok()) << status.ToString();
  }

  BorrowResult Borrow(uint64_t session, const std::string& pool = "", int gpus = 1,
                      absl::Duration wait = absl::ZeroDuration(),
                      std::vector<PinnedSlice> pinned = {}) {
    BorrowRequest request;
    request.pinned = std::move(pinned);
    request.session = session;
    request.pool = pool;
    request.gpus = gpus;
    request.wait = wait;
    request.host = "host" + std::to_string(session);
    request.pid = static_cast<uint32_t>(1000 + session);
    request.program = "prog";
    BorrowResult result = pool_->Borrow(request, clock_->Now());
    for (const Preemption& p : result.changes.preempted) preempted_.push_back(p);
    return result;
  }

  PoolChanges AdvanceBy(absl::Duration d) {
    clock_->Advance(d);
    PoolChanges changes = pool_->Advance(clock_->Now());
    for (const Preemption& p : changes.preempted) preempted_.push_back(p);
    return changes;
  }

  PoolChanges AdvanceTo(absl::Time t) { return AdvanceBy(t - clock_->Now()); }

  const GpuSnapshot& Gpu(int index) {
    snapshot_ = pool_->Snapshot(clock_->Now());
    return snapshot_.gpus.at(index);
  }

  std::unique_ptr<FakeClock> clock_;
  std::unique_ptr<PoolState> pool_;
  std::vector<Preemption> preempted_;
  PoolSnapshot snapshot_;
};

// A schedule that names GPUs by server is a cluster's; a pool that was not
// given it for one server (LocalizeSchedules) refuses it.
TEST(PoolStateCreateTest, SchedulesNamingServersNeedACluster) {
  const Config config = MustParse(
      "[server]\ndefault_pool = \"dev\"\n[pool.dev]\n[[schedule]]\npool = \"dev\"\n"
      "gpus = [\"a:0\"]\nfrom = 08:00:00\nto = 09:00:00\n");
  std::unique_ptr<PoolState> pool;
  Status status = PoolState::Create(config, {PoolGpu{0, 8 * kGiB}}, absl::Now(), &pool);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("test.toml:4"), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("only a ferryd in a cluster"), std::string::npos)
      << status.message();
  const Config local = LocalizeSchedules(config, "a", {}, {0});
  EXPECT_TRUE(PoolState::Create(local, {PoolGpu{0, 8 * kGiB}}, absl::Now(), &pool).ok());
}

// memory_overcommit scales each slice's quota: two slices of 1.5x add up to
// 1.5x the GPU; the slices themselves stay two.
TEST_F(PoolStateTest, MemoryOvercommitScalesTheQuotasNotTheSlices) {
  Make("[server]\ndefault_pool = \"shared\"\n[pool.shared]\nslices_per_gpu = 2\n"
       "memory_overcommit = 1.5\n");
  for (uint64_t s = 1; s <= 2; ++s) {
    ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
    EXPECT_EQ(pool_->FindLease(s)->slices[0].memory_quota, 6 * kGiB);
    EXPECT_DOUBLE_EQ(pool_->FindLease(s)->slices[0].compute_share, 0.5);
  }
  EXPECT_EQ(Borrow(3).outcome, BorrowOutcome::kRefused);
}

TEST_F(PoolStateTest, FourSlicesHeldAndTheFifthRefused) {
  Make(DayNight());
  for (uint64_t s = 1; s <= 4; ++s) {
    BorrowResult r = Borrow(s);
    ASSERT_EQ(r.outcome, BorrowOutcome::kGranted) << r.error.ToString();
    const Lease* lease = pool_->FindLease(s);
    ASSERT_NE(lease, nullptr);
    EXPECT_EQ(lease->pool, "dev");
    ASSERT_EQ(lease->slices.size(), 1u);
    EXPECT_EQ(lease->slices[0].gpu, 0);
    EXPECT_EQ(lease->slices[0].slice, static_cast<int>(s - 1));
    EXPECT_EQ(lease->slices[0].slices_per_gpu, 4);
    EXPECT_EQ(lease->slices[0].memory_quota, 2 * kGiB);
    EXPECT_DOUBLE_EQ(lease->slices[0].compute_share, 0.25);
  }
  BorrowResult fifth = Borrow(5);
  EXPECT_EQ(fifth.outcome, BorrowOutcome::kRefused);
  EXPECT_EQ(fifth.error.code(), StatusCode::kOverloaded);
  EXPECT_NE(fifth.error.message().find("pool dev is full"), std::string::npos)
      << fifth.error.message();
  EXPECT_NE(fifth.error.message().find("FERRY_WAIT"), std::string::npos);
  EXPECT_EQ(pool_->FindLease(5), nullptr);
  EXPECT_EQ(Gpu(0).holdings.size(), 4u);
  EXPECT_EQ(Gpu(0).free_slices, 0);
}

TEST_F(PoolStateTest, AWaiterIsServedWhenASliceFrees) {
  Make(DayNight());
  for (uint64_t s = 1; s <= 4; ++s) ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
  BorrowResult waiter = Borrow(5, "dev", 1, absl::Minutes(5));
  ASSERT_EQ(waiter.outcome, BorrowOutcome::kQueued);
  EXPECT_EQ(waiter.queue_position, 1);
  EXPECT_EQ(Borrow(6, "dev", 1, absl::Minutes(5)).queue_position, 2);
  EXPECT_EQ(pool_->QueuePosition(6), 2);
  clock_->Advance(absl::Minutes(1));
  PoolChanges changes = pool_->Return(3, clock_->Now());
  EXPECT_EQ(changes.granted, std::vector<uint64_t>{5});
  ASSERT_NE(pool_->FindLease(5), nullptr);
  EXPECT_EQ(pool_->FindLease(5)->slices[0].slice, 2);  // the slice that freed
  EXPECT_EQ(pool_->QueuePosition(6), 1);               // moved up
  EXPECT_EQ(pool_->FindLease(3), nullptr);
}

TEST_F(PoolStateTest, NobodyOvertakesAnEarlierWaiter) {
  Make(DayNight("", "[0, 1]"), 2);
  for (uint64_t s = 1; s <= 8; ++s) ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
  // Wants two GPUs; then a one-GPU borrower queues behind it.
  ASSERT_EQ(Borrow(10, "dev", 2, absl::Hours(1)).outcome, BorrowOutcome::kQueued);
  ASSERT_EQ(Borrow(11, "dev", 1, absl::Hours(1)).outcome, BorrowOutcome::kQueued);
  // One slice frees on GPU 0: not enough for 10, and 11 must not jump it.
  EXPECT_TRUE(pool_->Return(1, clock_->Now()).granted.empty());
  // A newcomer without a wait is refused although a slice is free.
  BorrowResult late = Borrow(12);
  EXPECT_EQ(late.outcome, BorrowOutcome::kRefused);
  EXPECT_NE(late.error.message().find("2 borrowers wait ahead"), std::string::npos)
      << late.error.message();
  // A slice on GPU 1 frees: 10 gets one slice on each GPU, then 11 waits on.
  PoolChanges changes = pool_->Return(5, clock_->Now());
  EXPECT_EQ(changes.granted, std::vector<uint64_t>{10});
  const Lease* lease = pool_->FindLease(10);
  ASSERT_NE(lease, nullptr);
  ASSERT_EQ(lease->slices.size(), 2u);
  EXPECT_EQ(lease->slices[0].gpu, 0);
  EXPECT_EQ(lease->slices[1].gpu, 1);
  EXPECT_EQ(pool_->QueuePosition(11), 1);
}

TEST_F(PoolStateTest, SlicesFillTheLowestGpuFirstOnDistinctGpus) {
  Make(DayNight("", "[0, 1]"), 2);
  ASSERT_EQ(Borrow(1, "dev", 2).outcome, BorrowOutcome::kGranted);
  const Lease* lease = pool_->FindLease(1);
  ASSERT_EQ(lease->slices.size(), 2u);
  EXPECT_NE(lease->slices[0].gpu, lease->slices[1].gpu);
  ASSERT_EQ(Borrow(2).outcome, BorrowOutcome::kGranted);
  EXPECT_EQ(pool_->FindLease(2)->slices[0].gpu, 0);
  // Three GPUs are more than the server has.
  BorrowResult r = Borrow(3, "dev", 3);
  EXPECT_EQ(r.outcome, BorrowOutcome::kRefused);
  EXPECT_EQ(r.error.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.error.message().find("2 GPUs"), std::string::npos) << r.error.message();
}

TEST_F(PoolStateTest, UnknownPoolIsRefusedWithTheNames) {
  Make(DayNight());
  BorrowResult r = Borrow(1, "inference");
  EXPECT_EQ(r.outcome, BorrowOutcome::kRefused);
  EXPECT_NE(r.error.message().find("no pool 'inference'"), std::string::npos);
  EXPECT_NE(r.error.message().find("dev, train"), std::string::npos);
}

TEST_F(PoolStateTest, AWaitEndsAtItsDeadline) {
  Make(DayNight());
  for (uint64_t s = 1; s <= 4; ++s) ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
  ASSERT_EQ(Borrow(5, "dev", 1, absl::Seconds(30)).outcome, BorrowOutcome::kQueued);
  EXPECT_EQ(pool_->NextEventTime(clock_->Now()), clock_->Now() + absl::Seconds(30));
  EXPECT_TRUE(AdvanceBy(absl::Seconds(29)).ended_waits.empty());
  PoolChanges changes = AdvanceBy(absl::Seconds(1));
  ASSERT_EQ(changes.ended_waits.size(), 1u);
  EXPECT_EQ(changes.ended_waits[0].first, 5u);
  EXPECT_EQ(changes.ended_waits[0].second.code(), StatusCode::kOverloaded);
  EXPECT_NE(changes.ended_waits[0].second.message().find("within 30s"), std::string::npos)
      << changes.ended_waits[0].second.message();
  EXPECT_EQ(pool_->QueuePosition(5), 0);
}

TEST_F(PoolStateTest, AQueuedBorrowerThatLeavesIsForgotten) {
  Make(DayNight());
  for (uint64_t s = 1; s <= 4; ++s) ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
  ASSERT_EQ(Borrow(5, "dev", 1, absl::Minutes(1)).outcome, BorrowOutcome::kQueued);
  ASSERT_EQ(Borrow(6, "dev", 1, absl::Minutes(1)).outcome, BorrowOutcome::kQueued);
  pool_->Return(5, clock_->Now());  // the client died while waiting
  EXPECT_EQ(pool_->QueuePosition(5), 0);
  EXPECT_EQ(pool_->QueuePosition(6), 1);
  EXPECT_EQ(pool_->Return(2, clock_->Now()).granted, std::vector<uint64_t>{6});
}

TEST_F(PoolStateTest, NightDrainLetsHoldersFinishThenPreemptsAfterTheGrace) {
  Make(DayNight(), 1, Shanghai(2026, 3, 10, 19, 59));
  ASSERT_EQ(Borrow(1).outcome, BorrowOutcome::kGranted);
  ASSERT_EQ(Borrow(2).outcome, BorrowOutcome::kGranted);
  EXPECT_EQ(Gpu(0).pool, "dev");
  EXPECT_EQ(Gpu(0).window, "08:00:00-20:00:00 Asia/Shanghai");
  EXPECT_EQ(Gpu(0).next_change, Shanghai(2026, 3, 10, 20, 0));
  EXPECT_EQ(Gpu(0).next_pool, "train");
  EXPECT_EQ(pool_->NextEventTime(clock_->Now()), Shanghai(2026, 3, 10, 20, 0));

  PoolChanges at_eight = AdvanceTo(Shanghai(2026, 3, 10, 20, 0));
  EXPECT_TRUE(at_eight.preempted.empty());
  ASSERT_EQ(at_eight.log.size(), 1u);
  EXPECT_NE(at_eight.log[0].find("from pool dev to pool train"), std::string::npos)
      << at_eight.log[0];
  EXPECT_NE(at_eight.log[0].find("draining 2 holders (grace 15m)"), std::string::npos);
  // Both holders begin to drain (counted once each, for ferryd's metrics).
  EXPECT_EQ(at_eight.drained, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(Gpu(0).pool, "train");
  EXPECT_EQ(Gpu(0).window, "20:00:00-08:00:00 Asia/Shanghai");
  EXPECT_EQ(Gpu(0).holdings[0].deadline, Shanghai(2026, 3, 10, 20, 15));
  // New borrows follow the new layout: dev has no GPU now, and train's one
  // whole slice does not fit beside the dev holders.
  EXPECT_NE(Borrow(3, "dev").error.message().find("pool dev serves no GPU"), std::string::npos);
  ASSERT_EQ(Borrow(4, "train", 1, absl::Hours(1)).outcome, BorrowOutcome::kQueued);

  // Holder 1 finishes within the grace; 4 still waits for holder 2.
  EXPECT_TRUE(pool_->Return(1, clock_->Now()).granted.empty());
  EXPECT_EQ(pool_->NextEventTime(clock_->Now()), Shanghai(2026, 3, 10, 20, 15));
  EXPECT_TRUE(AdvanceTo(Shanghai(2026, 3, 10, 20, 14, 59)).preempted.empty());
  PoolChanges at_grace = AdvanceTo(Shanghai(2026, 3, 10, 20, 15));
  EXPECT_TRUE(at_grace.drained.empty());  // already draining: not counted again
  ASSERT_EQ(at_grace.preempted.size(), 1u);
  EXPECT_EQ(at_grace.preempted[0].session, 2u);
  const std::string& reason = at_grace.preempted[0].reason;
  EXPECT_EQ(
      reason.rfind("preempted by the schedule: GPU 0 was rebound from pool dev to pool train", 0),
      0u)
      << reason;
  EXPECT_NE(reason.find("the drain grace of 15m ran out"), std::string::npos) << reason;
  // The preempted lease keeps its capacity until its resources are freed.
  EXPECT_TRUE(at_grace.granted.empty());
  EXPECT_TRUE(pool_->FindLease(2)->preempting);
  EXPECT_TRUE(Gpu(0).holdings[0].preempting);
  PoolChanges freed = pool_->Return(2, clock_->Now());
  EXPECT_EQ(freed.granted, std::vector<uint64_t>{4});
  EXPECT_EQ(pool_->FindLease(4)->slices[0].memory_quota, 8 * kGiB);
  EXPECT_DOUBLE_EQ(pool_->FindLease(4)->slices[0].compute_share, 1.0);
}

TEST_F(PoolStateTest, PreemptRebindPreemptsAtOnce) {
  Make(DayNight("on_rebind = \"preempt\"\n"), 1, Shanghai(2026, 3, 10, 19, 59, 59));
  ASSERT_EQ(Borrow(1).outcome, BorrowOutcome::kGranted);
  ASSERT_EQ(Borrow(2).outcome, BorrowOutcome::kGranted);
  PoolChanges changes = AdvanceBy(absl::Seconds(1));
  ASSERT_EQ(changes.preempted.size(), 2u);
  EXPECT_NE(changes.preempted[0].reason.find("(on_rebind = preempt)"), std::string::npos);
  EXPECT_EQ(changes.preempted[0].reason.rfind("preempted by the schedule", 0), 0u);
  pool_->Return(1, clock_->Now());
  pool_->Return(2, clock_->Now());
  EXPECT_EQ(Borrow(3, "train").outcome, BorrowOutcome::kGranted);
}

TEST_F(PoolStateTest, MorningRebindAfterMidnightHandsTheGpuBackToDev) {
  Make(DayNight(), 1, Shanghai(2026, 3, 10, 23, 30));
  EXPECT_EQ(Gpu(0).pool, "train");
  ASSERT_EQ(Borrow(1, "train").outcome, BorrowOutcome::kGranted);
  // Past midnight the night window still holds.
  EXPECT_TRUE(AdvanceTo(Shanghai(2026, 3, 11, 0, 30)).log.empty());
  EXPECT_EQ(Gpu(0).pool, "train");
  EXPECT_EQ(Gpu(0).next_change, Shanghai(2026, 3, 11, 8, 0));
  PoolChanges morning = AdvanceTo(Shanghai(2026, 3, 11, 8, 0));
  EXPECT_EQ(Gpu(0).pool, "dev");
  ASSERT_EQ(morning.log.size(), 1u);
  // The day window has no policy of its own: the [server] default, drain 15m.
  EXPECT_EQ(Gpu(0).holdings[0].deadline, Shanghai(2026, 3, 11, 8, 15));
  // Dev slices fit only when the whole-GPU train slice is gone.
  EXPECT_EQ(Borrow(2).outcome, BorrowOutcome::kRefused);
  pool_->Return(1, clock_->Now());
  EXPECT_EQ(Borrow(2).outcome, BorrowOutcome::kGranted);
}

TEST_F(PoolStateTest, ScheduleAcrossDstInNewYork) {
  const std::string config = R"(
[server]
default_pool = "dev"
[pool.dev]
slices_per_gpu = 2
[pool.train]
[[schedule]]
pool = "train"
gpus = [0]
from = 20:00:00
to = 08:00:00
timezone = "America/New_York"
on_rebind = "preempt"
)";
  const absl::TimeZone ny = Zone("America/New_York");
  // Saturday 2026-03-07 19:00 EST; the night crosses the spring-forward.
  Make(config, 1, absl::FromCivil(absl::CivilSecond(2026, 3, 7, 19, 0, 0), ny));
  EXPECT_EQ(Gpu(0).pool, "dev");
  const absl::Time night = absl::FromCivil(absl::CivilSecond(2026, 3, 7, 20, 0, 0), ny);
  EXPECT_EQ(Gpu(0).next_change, night);
  AdvanceTo(night);
  EXPECT_EQ(Gpu(0).pool, "train");
  // 11 hours later it is 08:00 EDT: the night was an hour short.
  EXPECT_EQ(Gpu(0).next_change, night + absl::Hours(11));
  AdvanceTo(night + absl::Hours(11) - absl::Seconds(1));
  EXPECT_EQ(Gpu(0).pool, "train");
  AdvanceBy(absl::Seconds(1));
  EXPECT_EQ(Gpu(0).pool, "dev");
}

TEST_F(PoolStateTest, DrainFromFourToTwoSlicesHandsOutSlicesAsTheyFree) {
  const std::string config = R"(
[server]
default_pool = "dev"
[pool.dev]
slices_per_gpu = 4
[pool.half]
slices_per_gpu = 2
)";
  Make(config);
  for (uint64_t s = 1; s <= 4; ++s) ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
  PoolChanges changes;
  ASSERT_TRUE(
      pool_->Rebind(0, "half", RebindPolicy::kDrain, absl::Hours(1), clock_->Now(), &changes).ok());
  ASSERT_EQ(Borrow(5, "half", 1, absl::Hours(1)).outcome, BorrowOutcome::kQueued);
  ASSERT_EQ(Borrow(6, "half", 1, absl::Hours(1)).outcome, BorrowOutcome::kQueued);
  // One quarter free is not half a GPU; two quarters are.
  EXPECT_TRUE(pool_->Return(1, clock_->Now()).granted.empty());
  EXPECT_EQ(pool_->Return(2, clock_->Now()).granted, std::vector<uint64_t>{5});
  EXPECT_EQ(pool_->FindLease(5)->slices[0].memory_quota, 4 * kGiB);
  EXPECT_EQ(Gpu(0).free_slices, 0);
  EXPECT_TRUE(pool_->Return(3, clock_->Now()).granted.empty());
  EXPECT_EQ(pool_->Return(4, clock_->Now()).granted, std::vector<uint64_t>{6});
  EXPECT_EQ(pool_->FindLease(6)->slices[0].slice, 1);
}

TEST_F(PoolStateTest, ManualRebindLastsUntilTheNextScheduledChange) {
  Make(DayNight(), 1, Shanghai(2026, 3, 10, 10, 0));
  ASSERT_EQ(Borrow(1).outcome, BorrowOutcome::kGranted);
  PoolChanges changes;
  ASSERT_TRUE(pool_
                  ->Rebind(0, "train", RebindPolicy::kPreempt, absl::ZeroDuration(), clock_->Now(),
                           &changes)
                  .ok());
  ASSERT_EQ(changes.preempted.size(), 1u);
  EXPECT_EQ(changes.preempted[0].reason.rfind("preempted by ferryctl rebind: GPU 0 was rebound", 0),
            0u)
      << changes.preempted[0].reason;
  EXPECT_EQ(Gpu(0).pool, "train");
  EXPECT_EQ(Gpu(0).source, BindingSource::kManual);
  EXPECT_EQ(Gpu(0).manual_until, Shanghai(2026, 3, 10, 20, 0));
  // The schedule's own change at 20:00 (to train) ends the override; the
  // morning brings dev back as scheduled.
  AdvanceTo(Shanghai(2026, 3, 10, 20, 0));
  EXPECT_EQ(Gpu(0).source, BindingSource::kSchedule);
  EXPECT_EQ(Gpu(0).pool, "train");
  AdvanceTo(Shanghai(2026, 3, 11, 8, 0));
  EXPECT_EQ(Gpu(0).pool, "dev");
}

TEST_F(PoolStateTest, RebindWithZeroGraceAndErrors) {
  Make(DayNight(), 1, Shanghai(2026, 3, 10, 10, 0));
  ASSERT_EQ(Borrow(1).outcome, BorrowOutcome::kGranted);
  PoolChanges changes;
  EXPECT_EQ(
      pool_->Rebind(3, "dev", RebindPolicy::kDrain, absl::ZeroDuration(), clock_->Now(), &changes)
          .code(),
      StatusCode::kNotFound);
  EXPECT_EQ(
      pool_->Rebind(0, "nope", RebindPolicy::kDrain, absl::ZeroDuration(), clock_->Now(), &changes)
          .code(),
      StatusCode::kNotFound);
  ASSERT_TRUE(
      pool_->Rebind(0, "train", RebindPolicy::kDrain, absl::ZeroDuration(), clock_->Now(), &changes)
          .ok());
  ASSERT_EQ(changes.preempted.size(), 1u);  // drain with no grace ends at once
  EXPECT_NE(changes.preempted[0].reason.find("grace of 0s ran out"), std::string::npos);
}

TEST_F(PoolStateTest, DrainedGpuTakesNoNewBorrowsAndKeepsItsHolders) {
  Make(DayNight());
  ASSERT_EQ(Borrow(1).outcome, BorrowOutcome::kGranted);
  PoolChanges changes;
  ASSERT_TRUE(pool_->SetDrained(0, true, clock_->Now(), &changes).ok());
  EXPECT_TRUE(changes.preempted.empty());
  EXPECT_TRUE(Gpu(0).drained);
  EXPECT_NE(pool_->FindLease(1), nullptr);
  ASSERT_EQ(Borrow(2, "dev", 1, absl::Hours(1)).outcome, BorrowOutcome::kQueued);
  PoolChanges undrain;
  ASSERT_TRUE(pool_->SetDrained(0, false, clock_->Now(), &undrain).ok());
  EXPECT_EQ(undrain.granted, std::vector<uint64_t>{2});
}

// Idle release: a session that gave its slice back is remembered as
// released (newcomers take other slices first) and borrows exactly that
// slice again: it waits while another holds it, and is placed there (not on
// another free slice) as soon as it frees.
TEST_F(PoolStateTest, AReleasedSessionComesBackToItsOwnSlice) {
  Make(DayNight());
  for (uint64_t s = 1; s <= 3; ++s) ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
  PoolChanges changes;
  ASSERT_TRUE(pool_->ReleaseSlices(2, clock_->Now(), &changes).ok());
  EXPECT_EQ(pool_->FindLease(2), nullptr);
  ASSERT_EQ(Gpu(0).released.size(), 1u);
  EXPECT_EQ(Gpu(0).released[0].session, 2u);
  EXPECT_EQ(Gpu(0).released[0].slice.slice, 1);
  EXPECT_EQ(Gpu(0).holdings.size(), 2u);
  EXPECT_EQ(Gpu(0).free_slices, 2);
  // Newcomers take slice 3 first, then session 2's slice 1.
  ASSERT_EQ(Borrow(9).outcome, BorrowOutcome::kGranted);
  EXPECT_EQ(pool_->FindLease(9)->slices[0].slice, 3);
  ASSERT_EQ(Borrow(10).outcome, BorrowOutcome::kGranted);
  EXPECT_EQ(pool_->FindLease(10)->slices[0].slice, 1);
  const std::vector<PinnedSlice> mine = {PinnedSlice{0, 1, 4}};
  BorrowResult refused = Borrow(2, "dev", 1, absl::ZeroDuration(), mine);
  ASSERT_EQ(refused.outcome, BorrowOutcome::kRefused);
  EXPECT_EQ(refused.error.code(), StatusCode::kOverloaded);
  EXPECT_NE(refused.error.message().find("slice 1 of GPU 0 is held by another session"),
            std::string::npos)
      << refused.error.message();
  ASSERT_EQ(Borrow(2, "dev", 1, absl::Hours(1), mine).outcome, BorrowOutcome::kQueued);
  ASSERT_EQ(Borrow(11, "dev", 1, absl::Hours(1)).outcome, BorrowOutcome::kQueued);
  EXPECT_EQ(pool_->Return(10, clock_->Now()).granted, std::vector<uint64_t>{2});
  EXPECT_EQ(pool_->FindLease(2)->slices[0].slice, 1);
  EXPECT_TRUE(Gpu(0).released.empty());  // back: a holder again
  EXPECT_EQ(pool_->Return(9, clock_->Now()).granted, std::vector<uint64_t>{11});
  EXPECT_EQ(pool_->FindLease(11)->slices[0].slice, 3);
  // Only a holder can release; a draining one does not.
  EXPECT_EQ(pool_->ReleaseSlices(77, clock_->Now(), &changes).code(), StatusCode::kNotFound);
}

// A pinned waiter holds up its own slice only: another released session
// whose slice is free comes back at once, and newcomers may take any slice
// but those.
TEST_F(PoolStateTest, APinnedWaiterHoldsUpOnlyItsOwnSlice) {
  Make(DayNight());
  for (uint64_t s = 1; s <= 4; ++s) ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
  PoolChanges changes;
  ASSERT_TRUE(pool_->ReleaseSlices(1, clock_->Now(), &changes).ok());  // slice 0
  ASSERT_TRUE(pool_->ReleaseSlices(3, clock_->Now(), &changes).ok());  // slice 2
  // Only released sessions' slices are free: the lowest goes.
  ASSERT_EQ(Borrow(9).outcome, BorrowOutcome::kGranted);
  EXPECT_EQ(pool_->FindLease(9)->slices[0].slice, 0);
  ASSERT_EQ(Borrow(1, "dev", 1, absl::Hours(1), {PinnedSlice{0, 0, 4}}).outcome,
            BorrowOutcome::kQueued);
  EXPECT_EQ(Borrow(3, "dev", 1, absl::ZeroDuration(), {PinnedSlice{0, 2, 4}}).outcome,
            BorrowOutcome::kGranted);
  EXPECT_EQ(pool_->FindLease(3)->slices[0].slice, 2);
  EXPECT_EQ(Borrow(12).outcome, BorrowOutcome::kRefused);  // full
  EXPECT_EQ(pool_->Return(9, clock_->Now()).granted, std::vector<uint64_t>{1});
  EXPECT_EQ(pool_->FindLease(1)->slices[0].slice, 0);
}

// A pinned slice comes back on a drained GPU (its session never left it),
// but not when the GPU serves another pool or layout now, and a waiter for
// such a slice holds nobody up. A rebind treats released sessions as
// holders: a drain preempts them when its grace runs out.
TEST_F(PoolStateTest, ReleasedSessionsAndRebinds) {
  Make(DayNight());
  ASSERT_EQ(Borrow(1).outcome, BorrowOutcome::kGranted);
  ASSERT_EQ(Borrow(2).outcome, BorrowOutcome::kGranted);
  PoolChanges changes;
  ASSERT_TRUE(pool_->ReleaseSlices(2, clock_->Now(), &changes).ok());
  ASSERT_TRUE(pool_->SetDrained(0, true, clock_->Now(), &changes).ok());
  EXPECT_EQ(Borrow(3).outcome, BorrowOutcome::kRefused);
  ASSERT_EQ(Borrow(2, "dev", 1, absl::ZeroDuration(), {PinnedSlice{0, 1, 4}}).outcome,
            BorrowOutcome::kGranted);
  ASSERT_TRUE(pool_->SetDrained(0, false, clock_->Now(), &changes).ok());
  ASSERT_TRUE(pool_->ReleaseSlices(2, clock_->Now(), &changes).ok());
  pool_->Return(1, clock_->Now());
  // 20:00: GPU 0 moves to train with a 15-minute drain.
  PoolChanges night = AdvanceTo(Shanghai(2026, 3, 10, 20, 0, 1));
  EXPECT_TRUE(night.preempted.empty());
  ASSERT_EQ(Gpu(0).released.size(), 1u);
  EXPECT_EQ(Gpu(0).released[0].deadline, Shanghai(2026, 3, 10, 20, 15, 1));
  BorrowResult wrong_pool = Borrow(2, "dev", 1, absl::ZeroDuration(), {PinnedSlice{0, 1, 4}});
  ASSERT_EQ(wrong_pool.outcome, BorrowOutcome::kRefused);
  EXPECT_NE(wrong_pool.error.message().find("the GPU serves pool train now, not dev"),
            std::string::npos)
      << wrong_pool.error.message();
  BorrowResult layout = Borrow(2, "train", 1, absl::ZeroDuration(), {PinnedSlice{0, 1, 4}});
  ASSERT_EQ(layout.outcome, BorrowOutcome::kRefused);
  EXPECT_NE(layout.error.message().find("has 1 slice per GPU now, not 4"), std::string::npos)
      << layout.error.message();
  EXPECT_EQ(Borrow(2, "dev", 2, absl::ZeroDuration(), {PinnedSlice{0, 1, 4}}).error.code(),
            StatusCode::kInvalidArgument);
  // Waiting to come back holds no training job up.
  ASSERT_EQ(Borrow(2, "dev", 1, absl::Hours(1), {PinnedSlice{0, 1, 4}}).outcome,
            BorrowOutcome::kQueued);
  ASSERT_EQ(Borrow(7, "train", 1, absl::Hours(1)).outcome, BorrowOutcome::kGranted);
  // The grace ends: the released session is preempted, its wait ended.
  PoolChanges grace = AdvanceTo(Shanghai(2026, 3, 10, 20, 15, 1));
  ASSERT_EQ(grace.preempted.size(), 1u);
  EXPECT_EQ(grace.preempted[0].session, 2u);
  EXPECT_NE(grace.preempted[0].reason.find("while its slices were released"), std::string::npos)
      << grace.preempted[0].reason;
  ASSERT_EQ(grace.ended_waits.size(), 1u);
  EXPECT_EQ(grace.ended_waits[0].first, 2u);
  EXPECT_TRUE(Gpu(0).released.empty());
  EXPECT_EQ(pool_->QueuePosition(2), 0);
}

// A reload that splits the GPU another way, or removes the pool, preempts
// released sessions: their slices can never come back.
TEST_F(PoolStateTest, AReloadThatChangesTheLayoutPreemptsReleasedSessions) {
  const std::string text = DayNight();
  Make(text);
  ASSERT_EQ(Borrow(1).outcome, BorrowOutcome::kGranted);
  ASSERT_EQ(Borrow(2).outcome, BorrowOutcome::kGranted);
  PoolChanges changes;
  ASSERT_TRUE(pool_->ReleaseSlices(1, clock_->Now(), &changes).ok());
  std::string two = text;
  two.replace(two.find("slices_per_gpu = 4"), 18, "slices_per_gpu = 2");
  PoolChanges reload;
  ASSERT_TRUE(pool_->Reconfigure(MustParse(two), clock_->Now(), &reload).ok());
  ASSERT_EQ(reload.preempted.size(), 1u);
  EXPECT_EQ(reload.preempted[0].session, 1u);
  EXPECT_EQ(reload.preempted[0].pool, "dev");
  EXPECT_NE(reload.preempted[0].reason.find("has 2 slices per GPU now, not the 4"),
            std::string::npos)
      << reload.preempted[0].reason;
  EXPECT_TRUE(Gpu(0).released.empty());
  EXPECT_NE(pool_->FindLease(2), nullptr);  // a holder keeps its slice
}

// Migration: the target slice is the session's at once, its old one stays
// held until the move finishes (its memory is still there), and a cancelled
// move leaves everything as it was. A released session's slice number is
// taken last.
TEST_F(PoolStateTest, AMoveHoldsBothSlicesUntilItFinishesOrIsCancelled) {
  Make(DayNight("", "[0, 1]"), 2);
  ASSERT_EQ(Borrow(1).outcome, BorrowOutcome::kGranted);   // GPU 0 slice 0
  for (uint64_t s = 2; s <= 8; ++s) ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
  PoolChanges changes;
  ASSERT_TRUE(pool_->ReleaseSlices(5, clock_->Now(), &changes).ok());  // GPU 1 slice 0
  ASSERT_TRUE(pool_->ReleaseSlices(6, clock_->Now(), &changes).ok());  // GPU 1 slice 1
  ASSERT_EQ(Borrow(10, "dev", 1, absl::Hours(1)).outcome, BorrowOutcome::kGranted);  // slice 0
  SliceGrant moved;
  ASSERT_TRUE(pool_->MoveSlice(1, 0, 1, 0, clock_->Now(), &changes, &moved).ok());
  EXPECT_EQ(moved.gpu, 1);
  EXPECT_EQ(moved.slice, 1);  // the only free one, though session 6 comes back to it
  EXPECT_EQ(pool_->FindLease(1)->slices[0].gpu, 1);
  EXPECT_EQ(Gpu(0).free_slices, 0);  // still held
  ASSERT_EQ(Borrow(11, "dev", 1, absl::Hours(1)).outcome, BorrowOutcome::kQueued);
  PoolChanges cancelled;
  pool_->CancelMove(1, clock_->Now(), &cancelled);
  EXPECT_EQ(pool_->FindLease(1)->slices[0].gpu, 0);
  EXPECT_EQ(pool_->FindLease(1)->slices[0].slice, 0);
  EXPECT_EQ(cancelled.granted, std::vector<uint64_t>{11});  // the target slice it let go
  EXPECT_EQ(pool_->FindLease(11)->slices[0].gpu, 1);
  pool_->Return(11, clock_->Now());
  ASSERT_TRUE(pool_->MoveSlice(1, 0, 1, 0, clock_->Now(), &changes, &moved).ok());
  ASSERT_EQ(Borrow(12, "dev", 1, absl::Hours(1)).outcome, BorrowOutcome::kQueued);
  PoolChanges finished;
  pool_->FinishMove(1, clock_->Now(), &finished);
  EXPECT_EQ(finished.granted, std::vector<uint64_t>{12});  // the slice it left
  EXPECT_EQ(pool_->FindLease(12)->slices[0].gpu, 0);
  EXPECT_EQ(pool_->MoveSlice(1, 1, 0, 0, clock_->Now(), &changes, &moved).code(),
            StatusCode::kOverloaded);  // GPU 0 is full
  EXPECT_EQ(pool_->MoveSlice(5, 1, 0, 0, clock_->Now(), &changes, &moved).code(),
            StatusCode::kNotFound);  // released
}

// Pool dev (2 slices per GPU) on GPUs 0 and 1 by day; at night (20:00-08:00
// Shanghai) GPU 1 serves train, rebinding with `night_policy`.
std::string NightOnGpuOne(const std::string& night_policy, const std::string& gpus = "[1]") {
  return "[server]\ndefault_pool = \"dev\"\n[pool.dev]\nslices_per_gpu = 2\n"
         "[pool.train]\nslices_per_gpu = 1\n"
         "[[schedule]]\npool = \"train\"\ngpus = " +
         gpus + "\nfrom = 20:00:00\nto = 08:00:00\ntimezone = \"Asia/Shanghai\"\n" + night_policy;
}

bool Logged(const PoolChanges& changes, const std::string& text) {
  return std::any_of(changes.log.begin(), changes.log.end(),
                     [&](const std::string& line) { return line.find(text) != std::string::npos; });
}

// on_rebind = "migrate": at 20:00 the holder of GPU 1 for which GPU 0 has a
// free slice is reported for migration with that slice reserved; the other
// one, with no free slice left, drains with the grace instead. The move
// ends with FinishMove: the slice on GPU 1 goes, and the grace of the one
// left behind runs out as a drain's does.
TEST_F(PoolStateTest, AMigrateRebindMovesHoldersToFreeSlicesElsewhereElseDrains) {
  Make(NightOnGpuOne("on_rebind = \"migrate\"\ngrace = \"15m\"\n"), 2,
       Shanghai(2026, 3, 10, 19, 59));
  for (uint64_t s = 1; s <= 4; ++s) ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
  ASSERT_EQ(pool_->FindLease(3)->slices[0].gpu, 1);
  ASSERT_EQ(pool_->FindLease(4)->slices[0].gpu, 1);
  pool_->Return(1, clock_->Now());  // GPU 0 slice 0 free

  PoolChanges night = AdvanceTo(Shanghai(2026, 3, 10, 20, 0));
  EXPECT_TRUE(night.preempted.empty());
  ASSERT_EQ(night.migrations.size(), 1u);
  const Migration& m = night.migrations[0];
  EXPECT_EQ(m.session, 3u);
  EXPECT_EQ(m.device, 0u);
  EXPECT_EQ(m.from.gpu, 1);
  EXPECT_EQ(m.from.slice, 0);
  EXPECT_EQ(m.to.gpu, 0);
  EXPECT_EQ(m.to.slice, 0);
  EXPECT_EQ(m.to.slices_per_gpu, 2);
  EXPECT_EQ(m.to.memory_quota, 4 * kGiB);
  EXPECT_EQ(m.rebind.rfind("by the schedule: GPU 1 was rebound from pool dev to pool train", 0), 0u)
      << m.rebind;
  EXPECT_EQ(night.drained, std::vector<uint64_t>{4});
  EXPECT_EQ(night.not_migrated, std::vector<uint64_t>{4});
  EXPECT_TRUE(Logged(night, "; moving 1 holder to other GPUs, draining 1 holder (grace 15m)"));
  EXPECT_TRUE(Logged(night,
                     "session 4 stays on GPU 1 and drains (on_rebind = migrate: no free "
                     "slice of pool dev on another GPU)"));
  // The target slice is the session's at once; its old one stays held
  // until the move ends.
  EXPECT_EQ(pool_->FindLease(3)->slices[0].gpu, 0);
  EXPECT_EQ(Gpu(0).free_slices, 0);
  EXPECT_EQ(Gpu(1).holdings.size(), 2u);
  EXPECT_EQ(Borrow(5, "dev").outcome, BorrowOutcome::kRefused);
  ASSERT_EQ(Borrow(6, "train", 1, absl::Hours(1)).outcome, BorrowOutcome::kQueued);
  EXPECT_EQ(pool_->NextEventTime(clock_->Now()), Shanghai(2026, 3, 10, 20, 15));

  PoolChanges finished;
  pool_->FinishMove(3, clock_->Now(), &finished);
  EXPECT_EQ(finished.migrated, std::vector<uint64_t>{3});
  EXPECT_TRUE(Logged(finished,
                     "session 3 moved from GPU 1 to GPU 0 (slice 1/2 of pool dev; "
                     "on_rebind = migrate)"));
  ASSERT_EQ(Gpu(1).holdings.size(), 1u);
  EXPECT_EQ(Gpu(1).holdings[0].session, 4u);
  EXPECT_EQ(Gpu(0).holdings.size(), 2u);
  EXPECT_EQ(Gpu(0).holdings[1].deadline, absl::InfiniteFuture());  // moved: not draining

  PoolChanges grace = AdvanceTo(Shanghai(2026, 3, 10, 20, 15));
  ASSERT_EQ(grace.preempted.size(), 1u);
  EXPECT_EQ(grace.preempted[0].session, 4u);
  EXPECT_NE(grace.preempted[0].reason.find("the drain grace of 15m ran out"), std::string::npos);
  EXPECT_EQ(pool_->Return(4, clock_->Now()).granted, std::vector<uint64_t>{6});
}

// A migration the server cannot make (CancelMove) leaves the holder where it
// was, draining: the grace, counted from the rebind, does not run out while
// the move is in flight, and preempts at once if it passed meanwhile. A
// zero grace (ferryctl rebind --migrate --grace 0) still lets a holder with
// a target move, and preempts one without.
TEST_F(PoolStateTest, AMigrationThatFailsDrainsFromTheRebind) {
  Make(NightOnGpuOne("on_rebind = \"migrate\"\ngrace = \"15m\"\n"), 2,
       Shanghai(2026, 3, 10, 19, 59));
  for (uint64_t s = 1; s <= 4; ++s) ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
  pool_->Return(2, clock_->Now());  // GPU 0 slice 1 free
  PoolChanges night = AdvanceTo(Shanghai(2026, 3, 10, 20, 0));
  ASSERT_EQ(night.migrations.size(), 1u);
  EXPECT_EQ(night.migrations[0].session, 3u);
  EXPECT_EQ(night.migrations[0].to.slice, 1);  // slice 0 (its own number) is taken

  PoolChanges cancelled;
  clock_->Advance(absl::Minutes(5));
  pool_->CancelMove(3, clock_->Now(), &cancelled);
  EXPECT_EQ(cancelled.drained, std::vector<uint64_t>{3});
  EXPECT_EQ(cancelled.not_migrated, std::vector<uint64_t>{3});
  EXPECT_TRUE(cancelled.preempted.empty());
  EXPECT_TRUE(Logged(cancelled,
                     "session 3 stays on GPU 1 and drains until 2026-03-10 12:15:00 UTC "
                     "(on_rebind = migrate: it could not move)"));
  EXPECT_EQ(pool_->FindLease(3)->slices[0].gpu, 1);
  EXPECT_EQ(Gpu(0).free_slices, 1);
  EXPECT_EQ(Gpu(1).holdings[0].deadline, Shanghai(2026, 3, 10, 20, 15));

  // Morning: GPU 1 is dev's again. Tonight's rebind with 3 on GPU 1 and a
  // free slice on GPU 0: the move is in flight past the grace.
  AdvanceTo(Shanghai(2026, 3, 10, 20, 15));
  for (const Preemption& p : preempted_) pool_->Return(p.session, clock_->Now());
  preempted_.clear();
  AdvanceTo(Shanghai(2026, 3, 11, 8, 0));
  ASSERT_EQ(Borrow(7).outcome, BorrowOutcome::kGranted);  // GPU 0 slice 1
  ASSERT_EQ(Borrow(8).outcome, BorrowOutcome::kGranted);  // GPU 1
  ASSERT_EQ(pool_->FindLease(8)->slices[0].gpu, 1);
  pool_->Return(7, clock_->Now());
  night = AdvanceTo(Shanghai(2026, 3, 11, 20, 0));
  ASSERT_EQ(night.migrations.size(), 1u);
  EXPECT_EQ(night.migrations[0].session, 8u);
  EXPECT_TRUE(AdvanceTo(Shanghai(2026, 3, 11, 20, 30)).preempted.empty());
  EXPECT_GT(pool_->NextEventTime(clock_->Now()), clock_->Now());
  cancelled = PoolChanges();
  pool_->CancelMove(8, clock_->Now(), &cancelled);
  ASSERT_EQ(cancelled.preempted.size(), 1u);
  EXPECT_EQ(cancelled.preempted[0].session, 8u);
  EXPECT_NE(cancelled.preempted[0].reason.find("the drain grace of 15m ran out"),
            std::string::npos);
  pool_->Return(8, clock_->Now());

  // ferryctl rebind --migrate --grace 0 at 08:30 next morning.
  AdvanceTo(Shanghai(2026, 3, 12, 8, 30));
  for (uint64_t s = 10; s <= 12; ++s) ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
  // 1 holds GPU 0 slice 0; 10: GPU 0 slice 1; 11, 12: GPU 1.
  pool_->Return(10, clock_->Now());
  PoolChanges rebind;
  ASSERT_TRUE(
      pool_
          ->Rebind(1, "train", RebindPolicy::kMigrate, absl::ZeroDuration(), clock_->Now(), &rebind)
          .ok());
  ASSERT_EQ(rebind.migrations.size(), 1u);
  EXPECT_EQ(rebind.migrations[0].session, 11u);
  EXPECT_EQ(rebind.migrations[0].rebind.rfind("by ferryctl rebind: GPU 1 was rebound", 0), 0u);
  ASSERT_EQ(rebind.preempted.size(), 1u);
  EXPECT_EQ(rebind.preempted[0].session, 12u);
}

// A migrate rebind never moves a holder to a GPU that the same boundary
// rebinds too (GPU 2 here, free but going to train with GPU 1).
TEST_F(PoolStateTest, AMigrateRebindSkipsGpusRebindingAtTheSameMoment) {
  Make(NightOnGpuOne("on_rebind = \"migrate\"\n", "[1, 2]"), 3, Shanghai(2026, 3, 10, 19, 59));
  for (uint64_t s = 1; s <= 3; ++s) ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
  ASSERT_EQ(pool_->FindLease(3)->slices[0].gpu, 1);
  PoolChanges night = AdvanceTo(Shanghai(2026, 3, 10, 20, 0));
  EXPECT_TRUE(night.migrations.empty());
  EXPECT_EQ(night.drained, std::vector<uint64_t>{3});
  EXPECT_TRUE(Logged(night,
                     "session 3 stays on GPU 1 and drains (on_rebind = migrate: no free "
                     "slice of pool dev on another GPU)"));
  EXPECT_EQ(Gpu(2).pool, "train");
  EXPECT_TRUE(Gpu(2).holdings.empty());
}

TEST_F(PoolStateTest, APreemptRebindPreemptsReleasedSessionsAtOnce) {
  Make(DayNight("on_rebind = \"preempt\"\n"));
  ASSERT_EQ(Borrow(1).outcome, BorrowOutcome::kGranted);
  PoolChanges changes;
  ASSERT_TRUE(pool_->ReleaseSlices(1, clock_->Now(), &changes).ok());
  PoolChanges night = AdvanceTo(Shanghai(2026, 3, 10, 20, 0, 1));
  ASSERT_EQ(night.preempted.size(), 1u);
  EXPECT_EQ(night.preempted[0].session, 1u);
  EXPECT_NE(night.preempted[0].reason.find("on_rebind = preempt"), std::string::npos);
  EXPECT_TRUE(Gpu(0).released.empty());
}

TEST_F(PoolStateTest, ReloadAppliesNewPoolsAndABadOneKeepsTheOld) {
  Make(DayNight(), 1, Shanghai(2026, 3, 10, 10, 0));
  for (uint64_t s = 1; s <= 4; ++s) ASSERT_EQ(Borrow(s).outcome, BorrowOutcome::kGranted);
  ASSERT_EQ(Borrow(5, "dev", 1, absl::Hours(1)).outcome, BorrowOutcome::kQueued);
  // A config whose schedule names GPU 7 is rejected; nothing changes.
  std::string bad = DayNight("", "[7]");
  PoolChanges changes;
  Status status = pool_->Reconfigure(MustParse(bad), clock_->Now(), &changes);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("test.toml:"), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("GPU 7"), std::string::npos);
  EXPECT_EQ(pool_->config().schedules[0].gpus, std::vector<int>{0});
  EXPECT_EQ(pool_->QueuePosition(5), 1);
  // A good one: dev becomes 8 slices per GPU. Holders keep their quarter
  // (the GPU stays full); when one quarter frees, the waiter gets an eighth.
  std::string good = DayNight();
  good.replace(good.find("slices_per_gpu = 4"), 18, "slices_per_gpu = 8");
  ASSERT_TRUE(pool_->Reconfigure(MustParse(good), clock_->Now(), &changes).ok());
  EXPECT_TRUE(changes.granted.empty());
  EXPECT_EQ(Gpu(0).slices_per_gpu, 8);
  EXPECT_EQ(Gpu(0).free_slices, 0);
  EXPECT_EQ(pool_->Return(1, clock_->Now()).granted, std::vector<uint64_t>{5});
  EXPECT_EQ(pool_->FindLease(2)->slices[0].memory_quota, 2 * kGiB);
  ASSERT_NE(pool_->FindLease(5), nullptr);
  EXPECT_EQ(pool_->FindLease(5)->slices[0].memory_quota, 1 * kGiB);
  EXPECT_EQ(Gpu(0).free_slices, 1);
}

TEST_F(PoolStateTest, ReloadThatRemovesAPoolRefusesItsWaitersAndRebinds) {
  Make(DayNight(), 1, Shanghai(2026, 3, 10, 21, 0));
  ASSERT_EQ(Borrow(1, "train").outcome, BorrowOutcome::kGranted);
  ASSERT_EQ(Borrow(2, "train", 1, absl::Hours(1)).outcome, BorrowOutcome::kQueued);
  PoolChanges changes;
  ASSERT_TRUE(pool_
                  ->Reconfigure(MustParse("[server]\ndefault_pool = \"dev\"\non_rebind = "
                                          "\"preempt\"\n[pool.dev]\nslices_per_gpu = 2\n"),
                                clock_->Now(), &changes)
                  .ok());
  ASSERT_EQ(changes.ended_waits.size(), 1u);
  EXPECT_EQ(changes.ended_waits[0].first, 2u);
  EXPECT_NE(changes.ended_waits[0].second.message().find("removed by a config reload"),
            std::string::npos);
  ASSERT_EQ(changes.preempted.size(), 1u);
  EXPECT_EQ(changes.preempted[0].reason.rfind("preempted by a config reload", 0), 0u)
      << changes.preempted[0].reason;
  EXPECT_EQ(Gpu(0).pool, "dev");
}

TEST_F(PoolStateTest, SnapshotShowsHoldersQueueAndTheNextChange) {
  Make(DayNight("", "[0, 1]"), 2, Shanghai(2026, 3, 10, 7, 0));
  EXPECT_EQ(Gpu(0).pool, "train");
  ASSERT_EQ(Borrow(1, "train").outcome, BorrowOutcome::kGranted);
  ASSERT_EQ(Borrow(2, "train").outcome, BorrowOutcome::kGranted);
  ASSERT_EQ(Borrow(3, "train", 1, absl::Minutes(10)).outcome, BorrowOutcome::kQueued);
  const PoolSnapshot snapshot = pool_->Snapshot(clock_->Now());
  ASSERT_EQ(snapshot.gpus.size(), 2u);
  ASSERT_EQ(snapshot.gpus[1].holdings.size(), 1u);
  const HoldingSnapshot& h = snapshot.gpus[1].holdings[0];
  EXPECT_EQ(h.session, 2u);
  EXPECT_EQ(h.host, "host2");
  EXPECT_EQ(h.pid, 1002u);
  EXPECT_EQ(h.since, clock_->Now());
  EXPECT_EQ(h.slice.memory_quota, 8 * kGiB);
  ASSERT_EQ(snapshot.queue.size(), 1u);
  EXPECT_EQ(snapshot.queue[0].session, 3u);
  EXPECT_EQ(snapshot.queue[0].position, 1);
  EXPECT_EQ(snapshot.queue[0].deadline, clock_->Now() + absl::Minutes(10));
  EXPECT_EQ(snapshot.next_change, Shanghai(2026, 3, 10, 8, 0));
  EXPECT_EQ(snapshot.next_change_gpu, 0);
  EXPECT_EQ(snapshot.next_change_pool, "dev");
}

TEST_F(PoolStateTest, ScheduleNamingAMissingGpuIsRefusedAtCreation) {
  std::unique_ptr<PoolState> pool;
  Status status =
      PoolState::Create(MustParse(DayNight("", "[0, 2]")), {PoolGpu{0, kGiB}}, absl::Now(), &pool);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("GPU 2 is not served"), std::string::npos) << status.message();
}

TEST(PoolCapacityTest, UnitsAreExactForEverySliceCount) {
  for (uint64_t n = 1; n <= kMaxSlicesPerGpu; ++n) {
    EXPECT_EQ(PoolState::kCapacityUnits % n, 0u) << n;
  }
}

}  // namespace
}  // namespace ferry::pool
