// PoolService (server/pool_service.h) on a fake clock: borrows granted up to
// the slices, a full pool refusing or queueing, a queued borrower served when
// a slice comes back, a schedule boundary preempting through the hook, and
// the test clock refused when the service does not run on one.
#include "server/pool_service.h"

#include <absl/time/civil_time.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "server/pool/config.h"
#include "test/support/pool_config.h"
#include "test/support/wait.h"

namespace ferry::server {
namespace {

using namespace std::chrono_literals;

absl::Time ShanghaiAt(int hour, int minute) {
  absl::TimeZone zone;
  EXPECT_TRUE(absl::LoadTimeZone("Asia/Shanghai", &zone));
  return absl::FromCivil(absl::CivilSecond(2026, 3, 10, hour, minute, 0), zone);
}

class PoolServiceTest : public ::testing::Test {
 protected:
  // One 64 MiB GPU, dev (4 slices) by day and train (1) by night; the clock
  // at 19:59 Shanghai, a minute before the night.
  void Make(const std::string& night_policy, bool test_clock = true) {
    test::DayNightConfig day_night;
    day_night.night_policy = night_policy;
    pool::Config config;
    const Status parsed = pool::ParseConfig(test::DayNightToml(day_night), "test.toml", &config);
    ASSERT_TRUE(parsed.ok()) << parsed.ToString();
    PoolService::Options options;
    options.clock = &clock_;
    options.test_clock = test_clock ? &clock_ : nullptr;
    options.preempt = [this](const pool::Preemption& preemption) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        preempted_.push_back(preemption.session);
      }
      service_->Return(preemption.session);
    };
    const Status created =
        PoolService::Create(config, {pool::PoolGpu{0, 64ull << 20}}, options, &service_);
    ASSERT_TRUE(created.ok()) << created.ToString();
  }
  void TearDown() override {
    if (service_) service_->Stop();
  }

  Status Borrow(uint64_t session, absl::Duration wait = absl::ZeroDuration(),
                const std::string& pool = "") {
    pool::BorrowRequest request;
    request.session = session;
    request.pool = pool;
    request.wait = wait;
    pool::Lease lease;
    return service_->Borrow(
        request, [] { return false; }, [](int) {}, &lease);
  }

  // Borrows for `session` on a thread of its own, queueing for up to an
  // hour; the queue position it is told lands in position_.
  std::future<Status> StartQueuedBorrow(uint64_t session) {
    return std::async(std::launch::async, [this, session] {
      pool::BorrowRequest request;
      request.session = session;
      request.wait = absl::Hours(1);
      pool::Lease lease;
      return service_->Borrow(
          request, [] { return false; }, [this](int p) { position_.store(p); }, &lease);
    });
  }

  std::vector<uint64_t> Preempted() {
    std::lock_guard<std::mutex> lock(mu_);
    return preempted_;
  }

  pool::FakeClock clock_{ShanghaiAt(19, 59)};
  std::atomic<int> position_{0};  // the queued borrower's last position
  std::mutex mu_;
  std::vector<uint64_t> preempted_;  // guarded by mu_
  // Last: destroyed (and stopped) before what its hook and waiters use.
  std::unique_ptr<PoolService> service_;
};

TEST_F(PoolServiceTest, GrantsUpToTheSlicesThenRefusesAtOnce) {
  Make("");
  for (uint64_t session = 1; session <= 4; ++session) {
    const Status status = Borrow(session);
    ASSERT_TRUE(status.ok()) << session << ": " << status.ToString();
  }
  const Status full = Borrow(5);
  EXPECT_FALSE(full.ok());
  EXPECT_NE(full.message().find("pool dev is full"), std::string::npos) << full.ToString();
  service_->Return(2);
  EXPECT_TRUE(Borrow(5).ok());
}

TEST_F(PoolServiceTest, AnUnknownPoolIsRefused) {
  Make("");
  const Status status = Borrow(1, absl::ZeroDuration(), "nosuchpool");
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
}

TEST_F(PoolServiceTest, AQueuedBorrowerIsServedWhenASliceComesBack) {
  Make("");
  for (uint64_t session = 1; session <= 4; ++session) ASSERT_TRUE(Borrow(session).ok());
  std::future<Status> waiter = StartQueuedBorrow(5);
  ASSERT_TRUE(test::WaitFor([&] { return position_.load() == 1; }, 10s));
  EXPECT_EQ(waiter.wait_for(0s), std::future_status::timeout);
  // The wait is counted when it begins and timed when it ends.
  EXPECT_EQ(service_->Counters().at("dev").waits, 1u);
  EXPECT_EQ(service_->Counters().at("dev").wait_seconds.total(), 0u);
  service_->Return(3);
  ASSERT_EQ(waiter.wait_for(10s), std::future_status::ready);
  const Status status = waiter.get();
  EXPECT_TRUE(status.ok()) << status.ToString();
  const std::map<std::string, PoolService::PoolCounters> counters = service_->Counters();
  EXPECT_EQ(counters.at("dev").waits, 1u);
  EXPECT_EQ(counters.at("dev").wait_seconds.total(), 1u);
  EXPECT_EQ(counters.at("dev").wait_seconds.counts.size(),
            std::size(PoolService::kWaitBucketSeconds) + 1);
  EXPECT_GE(counters.at("dev").wait_seconds.sum, 0.0);
  // Every configured pool is there, counted or not.
  EXPECT_EQ(counters.at("train").waits, 0u);
  EXPECT_EQ(counters.at("train").wait_seconds.total(), 0u);
}

TEST_F(PoolServiceTest, StopEndsAWaitWithDisconnected) {
  Make("");
  for (uint64_t session = 1; session <= 4; ++session) ASSERT_TRUE(Borrow(session).ok());
  std::future<Status> waiter = StartQueuedBorrow(5);
  ASSERT_TRUE(test::WaitFor([&] { return position_.load() == 1; }, 10s));
  service_->Stop();
  ASSERT_EQ(waiter.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(waiter.get().code(), StatusCode::kDisconnected);
}

TEST_F(PoolServiceTest, TheNightBoundaryPreemptsThroughTheHook) {
  Make("on_rebind = \"preempt\"\n");
  ASSERT_TRUE(Borrow(1).ok());
  std::string summary;
  const Status advanced = service_->AdvanceTestClock(absl::Minutes(1), &summary);
  ASSERT_TRUE(advanced.ok()) << advanced.ToString();
  EXPECT_TRUE(test::WaitFor([&] { return Preempted() == std::vector<uint64_t>{1}; }, 10s));
  EXPECT_EQ(service_->Counters().at("dev").preemptions, 1u);
  EXPECT_EQ(service_->Counters().at("dev").drains, 0u);
  // The GPU now serves train, whole: one borrower, then full.
  EXPECT_TRUE(Borrow(2, absl::ZeroDuration(), "train").ok());
  EXPECT_FALSE(Borrow(3, absl::ZeroDuration(), "train").ok());
}

TEST_F(PoolServiceTest, TheNightBoundaryDrainsAreCounted) {
  Make("on_rebind = \"drain\"\ngrace = \"15m\"\n");
  ASSERT_TRUE(Borrow(1).ok());
  ASSERT_TRUE(Borrow(2).ok());
  std::string summary;
  ASSERT_TRUE(service_->AdvanceTestClock(absl::Minutes(1), &summary).ok());
  EXPECT_EQ(service_->Counters().at("dev").drains, 2u);
  EXPECT_EQ(service_->Counters().at("dev").preemptions, 0u);
  // The grace runs out: both are preempted, not drained again.
  ASSERT_TRUE(service_->AdvanceTestClock(absl::Minutes(15), &summary).ok());
  EXPECT_TRUE(test::WaitFor([&] { return Preempted().size() == 2; }, 10s));
  EXPECT_EQ(service_->Counters().at("dev").drains, 2u);
  EXPECT_EQ(service_->Counters().at("dev").preemptions, 2u);
}

// on_rebind = "migrate" on two GPUs (dev, 2 slices each, by day; GPU 1
// serves train at night): at the boundary the holder with a free slice on
// GPU 0 goes to the migrate hook, which moves it (FinishMove); the other
// drains. Without a hook the service cancels the move and the holder
// drains too. Both outcomes are counted.
TEST(PoolServiceMigrateTest, AMigrateRebindGoesThroughTheHookAndIsCounted) {
  const std::string text =
      "[server]\ndefault_pool = \"dev\"\n[pool.dev]\nslices_per_gpu = 2\n"
      "[pool.train]\nslices_per_gpu = 1\n[[schedule]]\npool = \"train\"\ngpus = [1]\n"
      "from = 20:00:00\nto = 08:00:00\ntimezone = \"Asia/Shanghai\"\n"
      "on_rebind = \"migrate\"\ngrace = \"15m\"\n";
  pool::Config config;
  ASSERT_TRUE(pool::ParseConfig(text, "test.toml", &config).ok());
  for (const bool with_hook : {true, false}) {
    SCOPED_TRACE(with_hook ? "with a migrate hook" : "without one");
    pool::FakeClock clock(ShanghaiAt(19, 59));
    std::unique_ptr<PoolService> service;
    std::mutex mu;
    std::vector<pool::Migration> migrations;
    PoolService::Options options;
    options.clock = &clock;
    options.test_clock = &clock;
    if (with_hook) {
      options.migrate = [&](const pool::Migration& migration) {
        {
          std::lock_guard<std::mutex> lock(mu);
          migrations.push_back(migration);
        }
        service->FinishMove(migration.session);  // moved
      };
    }
    ASSERT_TRUE(PoolService::Create(config,
                                    {pool::PoolGpu{0, 64ull << 20}, pool::PoolGpu{1, 64ull << 20}},
                                    options, &service)
                    .ok());
    pool::Lease lease;
    for (uint64_t session = 1; session <= 4; ++session) {
      pool::BorrowRequest request;
      request.session = session;
      ASSERT_TRUE(service
                      ->Borrow(
                          request, [] { return false; }, [](int) {}, &lease)
                      .ok());
    }
    ASSERT_EQ(lease.slices[0].gpu, 1);
    service->Return(1);  // GPU 0 slice 0 free
    std::string summary;
    ASSERT_TRUE(service->AdvanceTestClock(absl::Minutes(1), &summary).ok());
    EXPECT_NE(summary.find("moving 1 session(s) to other GPUs (on_rebind = migrate)"),
              std::string::npos)
        << summary;
    absl::Time now;
    const pool::PoolSnapshot snapshot = service->Snapshot(&now);
    const std::map<std::string, PoolService::PoolCounters> counters = service->Counters();
    if (with_hook) {
      ASSERT_EQ(migrations.size(), 1u);
      EXPECT_EQ(migrations[0].session, 3u);
      EXPECT_EQ(migrations[0].to.gpu, 0);
      ASSERT_EQ(snapshot.gpus[0].holdings.size(), 2u);  // 2, and 3 moved here
      ASSERT_EQ(snapshot.gpus[1].holdings.size(), 1u);  // 4, draining
      EXPECT_EQ(snapshot.gpus[1].holdings[0].session, 4u);
      EXPECT_EQ(counters.at("dev").rebind_migrations, 1u);
      EXPECT_EQ(counters.at("dev").rebind_migration_fallbacks, 1u);
      EXPECT_EQ(counters.at("dev").drains, 1u);
    } else {
      ASSERT_EQ(snapshot.gpus[1].holdings.size(), 2u);  // both stay, draining
      for (const pool::HoldingSnapshot& h : snapshot.gpus[1].holdings) {
        EXPECT_EQ(h.deadline, ShanghaiAt(20, 15));
      }
      EXPECT_EQ(snapshot.gpus[0].free_slices, 1);
      EXPECT_EQ(counters.at("dev").rebind_migrations, 0u);
      EXPECT_EQ(counters.at("dev").rebind_migration_fallbacks, 2u);
      EXPECT_EQ(counters.at("dev").drains, 2u);
    }
    EXPECT_EQ(counters.at("dev").preemptions, 0u);
    service->Stop();
  }
}

TEST_F(PoolServiceTest, TheTestClockIsRefusedWithoutOne) {
  Make("", /*test_clock=*/false);
  std::string summary;
  EXPECT_EQ(service_->AdvanceTestClock(absl::Minutes(1), &summary).code(),
            StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace ferry::server
