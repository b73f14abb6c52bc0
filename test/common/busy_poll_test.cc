// Busy polling (common/busy_poll.h): the setting's parsing and default rule,
// SpinUntil's contract, BusyPoller's adaptation, and the TCP and shared
// memory transports with a window: reads still return the bytes, still end
// at their deadline and at Shutdown, and window 0 never spins. No figure
// here depends on timing: what is checked is whether a spin happened
// (the pollers' counters) and what the reads return.
#include "common/busy_poll.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>

#include "common/shm_transport.h"
#include "common/transport.h"

namespace ferry {
namespace {

using namespace std::chrono_literals;

// Sets the process-wide window for one test and puts the old one back.
class WindowScope {
 public:
  explicit WindowScope(std::chrono::microseconds window) : previous_(BusyPollWindow()) {
    SetBusyPollWindow(window);
  }
  ~WindowScope() { SetBusyPollWindow(previous_); }

 private:
  std::chrono::microseconds previous_;
};

TEST(BusyPollWindowTest, ParsesWholeMicrosecondsFromZeroToTheMaximum) {
  std::chrono::microseconds window{7};
  ASSERT_TRUE(ParseBusyPollWindow("0", &window).ok());
  EXPECT_EQ(window, 0us);
  ASSERT_TRUE(ParseBusyPollWindow("50", &window).ok());
  EXPECT_EQ(window, 50us);
  ASSERT_TRUE(ParseBusyPollWindow("100us", &window).ok());
  EXPECT_EQ(window, 100us);
  ASSERT_TRUE(ParseBusyPollWindow("1000", &window).ok());
  EXPECT_EQ(window, kMaxBusyPollWindow);
  for (const char* bad : {"", "-1", "1001", "abc", "50ms", "5.5", "us", " 50", "50 ", "0x10",
                          "99999999999999999999"}) {
    window = 7us;
    const Status status = ParseBusyPollWindow(bad, &window);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << "'" << bad << "'";
    EXPECT_NE(status.message().find("microseconds from 0 (off) to 1000"), std::string::npos)
        << status.message();
    EXPECT_NE(status.message().find("'" + std::string(bad) + "'"), std::string::npos)
        << status.message();
    EXPECT_EQ(window, 7us) << "a refused value leaves the output alone";
  }
}

TEST(BusyPollWindowTest, TheSetterClampsAndTheDefaultFollowsTheCpus) {
  WindowScope scope(0us);
  EXPECT_EQ(BusyPollWindow(), 0us);
  SetBusyPollWindow(20us);
  EXPECT_EQ(BusyPollWindow(), 20us);
  SetBusyPollWindow(-5us);
  EXPECT_EQ(BusyPollWindow(), 0us);
  SetBusyPollWindow(5000us);
  EXPECT_EQ(BusyPollWindow(), kMaxBusyPollWindow);
  EXPECT_EQ(DefaultBusyPollWindowFor(1), 0us);
  EXPECT_EQ(DefaultBusyPollWindowFor(kBusyPollMinCpus), kDefaultBusyPollWindow);
  EXPECT_EQ(DefaultBusyPollWindowFor(128), kDefaultBusyPollWindow);
  EXPECT_LE(DefaultBusyPollWindow(), kMaxBusyPollWindow);
}

TEST(SpinUntilTest, CallsThePredicateUntilItHoldsAndNeverAfter) {
  int calls = 0;
  EXPECT_TRUE(SpinUntil(1s, [&] { return ++calls == 3; }));
  EXPECT_EQ(calls, 3);
}

TEST(SpinUntilTest, ANothingBudgetOrAPassedLimitCallsNothing) {
  int calls = 0;
  EXPECT_FALSE(SpinUntil(0ns, [&] { return ++calls > 0; }));
  EXPECT_FALSE(SpinUntil(-1ns, [&] { return ++calls > 0; }));
  EXPECT_FALSE(SpinUntil(
      1s, [&] { return ++calls > 0; }, std::chrono::steady_clock::now() - 1ms));
  EXPECT_EQ(calls, 0);
}

TEST(SpinUntilTest, GivesUpWhenTheBudgetOrTheLimitPasses) {
  int calls = 0;
  EXPECT_FALSE(SpinUntil(200us, [&] { return ++calls < 0; }));
  EXPECT_GE(calls, 1);
  calls = 0;
  EXPECT_FALSE(SpinUntil(
      1h, [&] { return ++calls < 0; }, std::chrono::steady_clock::now() + 200us));
  EXPECT_GE(calls, 1);
}

// A preemption counter the test moves (BusyPoller's pause for busy CPUs).
std::atomic<uint64_t> fake_preemptions{0};
uint64_t FakePreemptions() { return fake_preemptions.load(); }

TEST(BusyPollerTest, WindowZeroNeverSpins) {
  WindowScope scope(0us);
  BusyPoller poller(&FakePreemptions);
  int calls = 0;
  for (int i = 0; i < 20; ++i) EXPECT_FALSE(poller.Spin([&] { return ++calls > 0; }));
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(poller.spins(), 0u);
  EXPECT_EQ(poller.caught(), 0u);
}

TEST(BusyPollerTest, BacksOffAfterMissesProbesAndComesBackOnACatch) {
  WindowScope scope(40us);
  BusyPoller poller(&FakePreemptions);
  EXPECT_TRUE(poller.Spin([] { return true; }));
  EXPECT_EQ(poller.last_budget(), 40us);
  EXPECT_EQ(poller.halvings(), 0);
  // Waits the spin does not catch halve the next spin, down to an eighth;
  // every kProbeEvery-th wait below the whole window spins all of it.
  const std::chrono::nanoseconds budgets[] = {40us, 20us, 10us, 5us, 5us, 5us,
                                              5us,  5us,  40us, 5us, 5us};
  static_assert(BusyPoller::kProbeEvery == 8 && BusyPoller::kMaxHalvings == 3);
  for (size_t i = 0; i < std::size(budgets); ++i) {
    EXPECT_FALSE(poller.Spin([] { return false; }));
    EXPECT_EQ(poller.last_budget(), budgets[i]) << "wait " << i;
    EXPECT_EQ(poller.halvings(), std::min<int>(i + 1, BusyPoller::kMaxHalvings));
  }
  // One catch restores the whole window.
  EXPECT_TRUE(poller.Spin([] { return true; }));
  EXPECT_EQ(poller.halvings(), 0);
  EXPECT_TRUE(poller.Spin([] { return true; }));
  EXPECT_EQ(poller.last_budget(), 40us);
  EXPECT_EQ(poller.spins(), 14u);
  EXPECT_EQ(poller.caught(), 3u);
}

TEST(BusyPollerTest, PausesWhileItsThreadIsPreemptedAndProbesBack) {
  WindowScope scope(40us);
  BusyPoller poller(&FakePreemptions);
  EXPECT_FALSE(poller.Spin([] { return false; }));  // the first look: nothing to compare
  EXPECT_FALSE(poller.paused_for_busy_cpus());
  // Preempted since: other work wants the CPU; it stops spinning.
  fake_preemptions += 1;
  EXPECT_FALSE(poller.Spin([] { return false; }));
  EXPECT_TRUE(poller.paused_for_busy_cpus());
  const uint64_t spun = poller.spins();
  int calls = 0;
  for (uint32_t i = 1; i < BusyPoller::kBusyProbeEvery; ++i) {
    EXPECT_FALSE(poller.Spin([&] { return ++calls > 0; }));
  }
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(poller.spins(), spun);
  // Every kBusyProbeEvery-th wait probes with an eighth of the window;
  // preempted again, the pause goes on (a catch is still a catch).
  fake_preemptions += 1;
  EXPECT_TRUE(poller.Spin([&] { return ++calls > 0; }));
  EXPECT_EQ(poller.last_budget(), 5us);
  EXPECT_TRUE(poller.paused_for_busy_cpus());
  for (uint32_t i = 1; i < BusyPoller::kBusyProbeEvery; ++i) {
    EXPECT_FALSE(poller.Spin([&] { return ++calls > 0; }));
  }
  EXPECT_EQ(calls, 1);
  // A probe that runs unpreempted and catches ends the pause: the whole
  // window again.
  EXPECT_TRUE(poller.Spin([] { return true; }));
  EXPECT_EQ(poller.last_budget(), 5us);
  EXPECT_FALSE(poller.paused_for_busy_cpus());
  EXPECT_EQ(poller.halvings(), 0);
  EXPECT_TRUE(poller.Spin([] { return true; }));
  EXPECT_EQ(poller.last_budget(), 40us);
}

TEST(BusyPollerTest, APassedDeadlineSkipsTheSpin) {
  WindowScope scope(1000us);
  BusyPoller poller(&FakePreemptions);
  int calls = 0;
  EXPECT_FALSE(poller.Spin([&] { return ++calls > 0; }, std::chrono::steady_clock::now() - 1ms));
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(poller.spins(), 0u);
  EXPECT_EQ(poller.halvings(), 0) << "a skipped spin is no miss";
}

// The transports, each with a reader we can inspect.
struct Pair {
  std::unique_ptr<Transport> writer;
  std::unique_ptr<Transport> reader;
  const BusyPoller* poller = nullptr;  // the reader's
};

Pair MakePair(bool shm) {
  Pair pair;
  if (shm) {
    std::unique_ptr<Transport> server;
    EXPECT_TRUE(MakeShmTransportPair(&server, &pair.writer, 64 << 10).ok());
    pair.reader = std::move(server);
    pair.poller = &static_cast<ShmTransport&>(*pair.reader).TEST_read_poller();
  } else {
    EXPECT_TRUE(MakeTransportPair(&pair.writer, &pair.reader).ok());
    pair.poller = &static_cast<SocketTransport&>(*pair.reader).TEST_read_poller();
  }
  return pair;
}

Status WriteBytes(Transport& t, const std::string& bytes) {
  const ConstBuffer buffer{bytes.data(), bytes.size()};
  return t.Write(std::span<const ConstBuffer>(&buffer, 1));
}

class TransportBusyPollTest : public ::testing::TestWithParam<bool> {};

TEST_P(TransportBusyPollTest, AReadWithAWindowReturnsTheBytes) {
  WindowScope scope(1000us);
  Pair pair = MakePair(GetParam());
  ASSERT_NE(pair.poller, nullptr);
  // Bytes already there.
  ASSERT_TRUE(WriteBytes(*pair.writer, "ferry").ok());
  std::string got(5, '\0');
  ASSERT_TRUE(pair.reader->ReadExact(got.data(), got.size()).ok());
  EXPECT_EQ(got, "ferry");
  // A socket read always looks through the spin: its first look caught them.
  // (Shared memory reads bytes that are there without waiting at all.)
  if (!GetParam()) {
    EXPECT_EQ(pair.poller->spins(), 1u);
    EXPECT_EQ(pair.poller->caught(), 1u);
  }
  // Bytes that come while the reader waits (spinning or, later, asleep).
  auto read = std::async(std::launch::async, [&] {
    std::string bytes(4096, '\0');
    Status status = pair.reader->ReadExact(bytes.data(), bytes.size());
    return status.ok() ? bytes : status.ToString();
  });
  const std::string sent(4096, 'x');
  ASSERT_TRUE(WriteBytes(*pair.writer, sent).ok());
  ASSERT_EQ(read.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(read.get(), sent);
}

TEST_P(TransportBusyPollTest, WindowZeroReadsWithoutSpinning) {
  WindowScope scope(0us);
  Pair pair = MakePair(GetParam());
  ASSERT_NE(pair.poller, nullptr);
  ASSERT_TRUE(WriteBytes(*pair.writer, "ferry").ok());
  std::string got(5, '\0');
  ASSERT_TRUE(pair.reader->ReadExact(got.data(), got.size()).ok());
  EXPECT_EQ(got, "ferry");
  auto read = std::async(std::launch::async, [&] {
    char byte = 0;
    Status status = pair.reader->ReadExact(&byte, 1);
    return status.ok() ? std::string(1, byte) : status.ToString();
  });
  ASSERT_TRUE(WriteBytes(*pair.writer, "!").ok());
  ASSERT_EQ(read.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(read.get(), "!");
  // A wait that surely happens: nothing comes before the deadline.
  pair.reader->SetReadDeadline(std::chrono::steady_clock::now() + 10ms);
  char byte = 0;
  EXPECT_EQ(pair.reader->ReadExact(&byte, 1).code(), StatusCode::kDisconnected);
  EXPECT_EQ(pair.poller->spins(), 0u);
}

TEST_P(TransportBusyPollTest, TheReadDeadlineStillEndsAWait) {
  WindowScope scope(1000us);
  Pair pair = MakePair(GetParam());
  pair.reader->SetReadDeadline(std::chrono::steady_clock::now() + 30ms);
  char byte = 0;
  const Status silent = pair.reader->ReadExact(&byte, 1);
  EXPECT_EQ(silent.code(), StatusCode::kDisconnected) << silent.ToString();
  EXPECT_NE(silent.message().find("deadline"), std::string::npos) << silent.message();
  EXPECT_EQ(pair.poller->spins(), 1u) << "the wait spun before it slept";
  EXPECT_EQ(pair.poller->caught(), 0u);
  // A deadline already past: no spin at all, the same answer.
  EXPECT_EQ(pair.reader->ReadExact(&byte, 1).code(), StatusCode::kDisconnected);
  EXPECT_EQ(pair.poller->spins(), 1u);
}

TEST_P(TransportBusyPollTest, ShutdownEndsASpinningOrSleepingRead) {
  WindowScope scope(1000us);
  Pair pair = MakePair(GetParam());
  std::atomic<bool> started{false};
  auto read = std::async(std::launch::async, [&] {
    started.store(true);
    char byte = 0;
    return pair.reader->ReadExact(&byte, 1);
  });
  while (!started.load()) CpuRelax();
  pair.reader->Shutdown();
  ASSERT_EQ(read.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(read.get().code(), StatusCode::kDisconnected);
}

TEST_P(TransportBusyPollTest, APeerThatClosesEndsASpinningRead) {
  WindowScope scope(1000us);
  Pair pair = MakePair(GetParam());
  auto read = std::async(std::launch::async, [&] {
    char byte = 0;
    return pair.reader->ReadExact(&byte, 1);
  });
  pair.writer.reset();
  ASSERT_EQ(read.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(read.get().code(), StatusCode::kDisconnected);
}

INSTANTIATE_TEST_SUITE_P(Transports, TransportBusyPollTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("Shm") : std::string("Socket");
                         });

}  // namespace
}  // namespace ferry
