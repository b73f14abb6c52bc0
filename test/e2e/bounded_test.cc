// Bounded resources: what a hostile or vanished peer may cost ferryd, and
// what a client sees of a server that stops answering. Each test starts its
// own ferryd (host backend, the e2e host kernels) on loopback with the limits
// it needs, speaks raw frames to it or runs e2e programs against it, and
// stops everything it started. Not chained: the queued-work test counts what
// the host backend itself runs.
//
// Paths come from CMake as compile definitions (see CMakeLists.txt).
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "common/frame.h"
#include "common/transport.h"
#include "test/support/child_process.h"
#include "test/support/ferryd.h"
#include "test/support/raw_client.h"
#include "test/support/wait.h"

namespace ferry::e2e {
namespace {

using namespace std::chrono_literals;
using test::ChildProcess;
using test::ExitStatus;
using test::Tail;

constexpr auto kReadyTimeout = 10s;    // ferryd writes its ready file
constexpr auto kStopTimeout = 10s;     // ferryd exits after SIGTERM
constexpr auto kProgramTimeout = 60s;  // one e2e program runs to its end
constexpr auto kSettleTimeout = 20s;   // ferryd frees what a peer held
constexpr auto kPollInterval = 20ms;

// A "Key:   value kB" line of /proc/PID/status, as a number; -1 if absent.
long ProcStatusField(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key + ":", 0) == 0) return std::stol(line.substr(key.size() + 1));
  }
  return -1;
}

size_t FileSize(const std::string& path) {
  std::error_code error;
  const auto size = std::filesystem::file_size(path, error);
  return error ? 0 : static_cast<size_t>(size);
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

class BoundedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::MakeTempDir("ferry-bounded-");
    ASSERT_FALSE(dir_.empty()) << "mkdtemp failed";
    tick_file_ = dir_ + "/ticks";
  }

  // Starts ferryd with `extra` flags; the tick kernel reports to tick_file_.
  void StartServer(const std::vector<std::string>& extra = {}) {
    unix_address_ = "unix:" + dir_ + "/ferryd.sock";
    std::vector<std::string> args = {"--listen",       "127.0.0.1:0",         "--listen",
                                     unix_address_,    "--backend",           "host",
                                     "--host-kernels", FERRY_E2E_HOST_KERNELS};
    args.insert(args.end(), extra.begin(), extra.end());
    std::string error;
    ferryd_ = test::StartFerryd(FERRY_E2E_FERRYD, args, dir_, kReadyTimeout, &address_, &error,
                                {{"FERRY_E2E_TICK_FILE", tick_file_}});
    ASSERT_TRUE(ferryd_.has_value()) << error;
  }

  void TearDown() override {
    if (ferryd_.has_value() && ferryd_->running()) ::kill(ferryd_->pid(), SIGCONT);
    const std::string failed = test::StopFerryd("ferryd", ferryd_, kStopTimeout);
    EXPECT_TRUE(failed.empty()) << failed;
    if (HasFailure()) {
      if (ferryd_.has_value()) std::cerr << "ferryd log:\n" << Tail(ferryd_->Stderr(), 12000);
      std::cerr << "test files kept in " << dir_ << "\n";
    } else {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

  std::optional<ChildProcess> StartProgram(const std::string& name, const std::string& address,
                                           const std::map<std::string, std::string>& env = {}) {
    std::map<std::string, std::string> full_env =
        test::ClientEnv(FERRY_E2E_CLIENT_LIB_DIR, address, env);
    std::string error;
    std::optional<ChildProcess> program = ChildProcess::Start(
        {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_" + name, FERRY_E2E_IMAGE_DIR}, full_env,
        dir_ + "/" + name + std::to_string(++programs_), &error);
    if (!program.has_value()) ADD_FAILURE() << "cannot start " << name << ": " << error;
    return program;
  }

  bool WaitForReady(ChildProcess& program) {
    const bool ready = test::WaitFor(
        [&] { return program.Stdout().find("READY\n") != std::string::npos || program.Poll(); },
        kProgramTimeout, kPollInterval);
    if (ready && program.running()) return true;
    ADD_FAILURE() << "no READY\n" << program.Describe();
    return false;
  }

  // A raw TCP connection to ferryd that has said nothing.
  std::unique_ptr<Transport> Connect() {
    std::unique_ptr<Transport> transport;
    Status status = ConnectTcp(address_, 5000ms, &transport);
    EXPECT_TRUE(status.ok()) << status.ToString();
    return transport;
  }

  // Reads from `transport` until ferryd closes it; the failure of the read
  // says whether it was closed (not the test's own deadline).
  static Status ReadUntilClosed(Transport& transport) {
    transport.SetReadDeadline(std::chrono::steady_clock::now() + kSettleTimeout);
    uint8_t byte = 0;
    Status status;
    while ((status = transport.ReadExact(&byte, 1)).ok()) {
    }
    return status;
  }

  // Waits until ferryd's log holds `what` at least `times` times.
  bool WaitForLog(const std::string& what, size_t times = 1) {
    return test::WaitFor([&] { return Count(ferryd_->Stderr(), what) >= times; }, kSettleTimeout,
                         kPollInterval);
  }

  std::string dir_;
  std::string tick_file_;
  std::string address_;
  std::string unix_address_;
  std::optional<ChildProcess> ferryd_;
  int programs_ = 0;
};

// Two Hellos that announce 16 GiB of bulk, the first 64 MiB of it sent: the
// frame is refused at its header, and ferryd's memory does not grow.
TEST_F(BoundedTest, HelloAnnouncingHugeBulkIsRefusedWithoutGrowingMemory) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const long rss_before_kb = ProcStatusField(ferryd_->pid(), "VmRSS");
  ASSERT_GT(rss_before_kb, 0);
  for (int i = 0; i < 2; ++i) {
    std::unique_ptr<Transport> peer = Connect();
    ASSERT_NE(peer, nullptr);
    std::vector<uint8_t> hello = test::HelloFrame(wire::PROTOCOL_VERSION, 0);
    const uint64_t announced = 16ull << 30;
    std::memcpy(hello.data() + 16, &announced, sizeof(announced));
    ASSERT_TRUE(test::WriteBytes(*peer, hello).ok());
    // ferryd closes the connection at the header; the writes may fail then.
    const std::vector<uint8_t> chunk(1 << 20, 0x5a);
    for (int mib = 0; mib < 64; ++mib) {
      if (!test::WriteBytes(*peer, chunk).ok()) break;
    }
    const Status closed = ReadUntilClosed(*peer);
    EXPECT_EQ(closed.message().find("deadline"), std::string::npos) << closed.ToString();
  }
  ASSERT_TRUE(WaitForLog("17179869184 bytes", 2)) << ferryd_->Stderr();
  EXPECT_NE(ferryd_->Stderr().find("before the handshake"), std::string::npos);
  const long rss_after_kb = ProcStatusField(ferryd_->pid(), "VmRSS");
  EXPECT_LT(rss_after_kb - rss_before_kb, 16 * 1024)
      << "VmRSS " << rss_before_kb << " kB -> " << rss_after_kb << " kB";

  // A Hello whose message is larger than a handshake's is refused too.
  std::unique_ptr<Transport> peer = Connect();
  ASSERT_NE(peer, nullptr);
  ASSERT_TRUE(test::WriteBytes(*peer, test::FrameHeader(wire::FrameKind::HELLO, 32u << 20)).ok());
  (void)ReadUntilClosed(*peer);
  EXPECT_TRUE(WaitForLog("bad message size 33554432")) << ferryd_->Stderr();
}

// 200 connections that never say Hello are closed once the (short)
// handshake deadline passes, and their threads end.
TEST_F(BoundedTest, IdleConnectionsAreClosedAtTheHandshakeDeadline) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--handshake-timeout", "1s"}));
  const long threads_before = ProcStatusField(ferryd_->pid(), "Threads");
  ASSERT_GT(threads_before, 0);
  constexpr int kIdle = 200;
  std::vector<std::unique_ptr<Transport>> idle;
  for (int i = 0; i < kIdle; ++i) {
    idle.push_back(Connect());
    ASSERT_NE(idle.back(), nullptr);
  }
  for (auto& peer : idle) {
    const Status closed = ReadUntilClosed(*peer);
    ASSERT_EQ(closed.message().find("deadline"), std::string::npos) << closed.ToString();
  }
  EXPECT_TRUE(WaitForLog("no complete Hello within 1000 ms", kIdle));
  long threads = 0;
  EXPECT_TRUE(test::WaitFor(
      [&] { return (threads = ProcStatusField(ferryd_->pid(), "Threads")) <= threads_before; },
      kSettleTimeout, kPollInterval))
      << threads << " threads, " << threads_before << " before the idle connections";
  // And ferryd still serves.
  std::optional<ChildProcess> query = StartProgram("device_query", address_);
  ASSERT_TRUE(query.has_value());
  EXPECT_TRUE(query->Wait(kProgramTimeout).success()) << query->Describe();
}

// With --max-connections 3 and three connections open, the next client is
// refused with a message that names the limit; once they close, it gets in.
TEST_F(BoundedTest, ConnectionCapRefusesTheNextClientClearly) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--max-connections", "3", "--handshake-timeout", "60s"}));
  std::vector<std::unique_ptr<Transport>> held;
  for (int i = 0; i < 3; ++i) held.push_back(Connect());
  std::optional<ChildProcess> refused = StartProgram("device_query", address_);
  ASSERT_TRUE(refused.has_value());
  const ExitStatus status = refused->Wait(kProgramTimeout);
  EXPECT_FALSE(status.success()) << refused->Describe();
  EXPECT_NE(refused->Stderr().find("at most 3 connections at once (--max-connections)"),
            std::string::npos)
      << refused->Describe();
  EXPECT_NE((refused->Stdout() + refused->Stderr()).find("CUDA_ERROR_DEVICE_UNAVAILABLE"),
            std::string::npos)
      << refused->Describe();
  // The operator is not locked out: ferryctl passes the cap.
  std::string error;
  std::optional<ChildProcess> ctl = ChildProcess::Start(
      {FERRY_E2E_FERRYCTL, "status", "--server", address_}, {}, dir_ + "/ferryctl", &error);
  ASSERT_TRUE(ctl.has_value()) << error;
  EXPECT_TRUE(ctl->Wait(kProgramTimeout).success()) << ctl->Describe();

  held.clear();
  ASSERT_TRUE(WaitForLog("dropped before its handshake", 3)) << ferryd_->Stderr();
  std::optional<ChildProcess> admitted = StartProgram("device_query", address_);
  ASSERT_TRUE(admitted.has_value());
  EXPECT_TRUE(admitted->Wait(kProgramTimeout).success()) << admitted->Describe();
}

// With --max-sessions 1 and one client holding its session, the next
// client is refused with a message that names the limit.
TEST_F(BoundedTest, SessionCapRefusesTheNextClientClearly) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--max-sessions", "1"}));
  std::optional<ChildProcess> holder = StartProgram("hold_and_wait", address_);
  ASSERT_TRUE(holder.has_value());
  ASSERT_TRUE(WaitForReady(*holder));
  std::optional<ChildProcess> refused = StartProgram("device_query", address_);
  ASSERT_TRUE(refused.has_value());
  EXPECT_FALSE(refused->Wait(kProgramTimeout).success()) << refused->Describe();
  EXPECT_NE(refused->Stderr().find("at most 1 sessions at once (--max-sessions)"),
            std::string::npos)
      << refused->Describe();
  holder->Kill(SIGKILL);
  holder->Wait(kProgramTimeout);
}

// A killed client's queued launches stop: of 2000 slow ticks (5 ms each)
// queued, only those that start before the session notices the kill run
// after it (the host backend drops the rest), counted once the session is
// freed; without the drop, all of them run first.
TEST_F(BoundedTest, KilledClientsQueuedLaunchesDoNotRun) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  std::optional<ChildProcess> client =
      StartProgram("launch_queue", address_,
                   {{"LAUNCH_QUEUE_COUNT", "2000"}, {"LAUNCH_QUEUE_SLEEP_US", "5000"}});
  ASSERT_TRUE(client.has_value());
  ASSERT_TRUE(WaitForReady(*client));
  const size_t ran_before_kill = FileSize(tick_file_);
  client->Kill(SIGKILL);
  client->Wait(kProgramTimeout);
  ASSERT_TRUE(WaitForLog("closed; all its resources are freed")) << ferryd_->Stderr();
  const size_t ran = FileSize(tick_file_);
  // 2 ticks checked before the queue, then the queue of 2000.
  EXPECT_LT(ran, 2u + 2000u) << "every queued launch ran";
  EXPECT_LT(ran - ran_before_kill, 100u)
      << ran_before_kill << " ticks ran before the kill, " << ran << " by the session's end";
}

// A stopped (SIGSTOP) ferryd: the client's synchronize fails with
// CUDA_ERROR_DEVICE_UNAVAILABLE (46) after FERRY_CALL_TIMEOUT, with a log
// line naming it, over TCP and over shared memory alike. The queue (5000
// ticks of 2 ms) outlasts the 2 s timeout five times on a running server, so
// however late the stop lands on a loaded machine, the synchronize still
// waits for the stopped server (500 ticks, 1 s, sometimes finished first).
class TransportParamTest : public BoundedTest, public ::testing::WithParamInterface<std::string> {
 protected:
  // FERRY_TRANSPORT for the parameter: "tcp" means TCP (a loopback client
  // would otherwise move to shared memory); "unix" is shared memory anyway.
  std::string TransportSetting() const { return GetParam() == "tcp" ? "tcp" : "auto"; }
};

class StoppedServerTest : public TransportParamTest {};

TEST_P(StoppedServerTest, CallFailsWithDeviceUnavailableAfterTheCallTimeout) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const std::string address = GetParam() == "tcp" ? address_ : unix_address_;
  std::optional<ChildProcess> client = StartProgram("launch_queue", address,
                                                    {{"FERRY_CALL_TIMEOUT", "2"},
                                                     {"LAUNCH_QUEUE_COUNT", "5000"},
                                                     {"FERRY_TRANSPORT", TransportSetting()}});
  ASSERT_TRUE(client.has_value());
  ASSERT_TRUE(WaitForReady(*client));
  // The whole server: ferryd and the worker process that serves the session.
  std::vector<int> stopped = test::SessionWorkerPids(ferryd_->pid());
  ASSERT_EQ(stopped.size(), 1u) << "expected one session worker";
  stopped.push_back(ferryd_->pid());
  for (int pid : stopped) ::kill(pid, SIGSTOP);
  const ExitStatus status = client->Wait(kProgramTimeout);
  for (int pid : stopped) ::kill(pid, SIGCONT);
  EXPECT_TRUE(status.success()) << client->Describe();
  EXPECT_NE(client->Stdout().find("SYNC 46\n"), std::string::npos) << client->Describe();
  EXPECT_NE(client->Stderr().find("FERRY_CALL_TIMEOUT"), std::string::npos) << client->Describe();
}

INSTANTIATE_TEST_SUITE_P(Transports, StoppedServerTest, ::testing::Values("tcp", "unix"),
                         [](const auto& info) { return info.param; });

// A running ferryd that works on a synchronize for longer than
// FERRY_CALL_TIMEOUT (a queue of 1000 ticks of 4 ms, twice the 2 s deadline)
// keeps the call alive with keepalives: the synchronize succeeds. (Before
// keepalives the deadline counted from the send, and this failed with 46.)
class BusyServerTest : public TransportParamTest {};

TEST_P(BusyServerTest, CallLongerThanTheCallTimeoutSucceedsWhileTheServerIsAlive) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const std::string address = GetParam() == "tcp" ? address_ : unix_address_;
  std::optional<ChildProcess> client = StartProgram("launch_queue", address,
                                                    {{"FERRY_CALL_TIMEOUT", "2"},
                                                     {"LAUNCH_QUEUE_COUNT", "1000"},
                                                     {"LAUNCH_QUEUE_SLEEP_US", "4000"},
                                                     {"FERRY_TRANSPORT", TransportSetting()}});
  ASSERT_TRUE(client.has_value());
  const ExitStatus status = client->Wait(kProgramTimeout);
  EXPECT_TRUE(status.success()) << client->Describe();
  EXPECT_NE(client->Stdout().find("SYNC 0\n"), std::string::npos) << client->Describe();
  EXPECT_EQ(client->Stderr().find("FERRY_CALL_TIMEOUT"), std::string::npos) << client->Describe();
}

INSTANTIATE_TEST_SUITE_P(Transports, BusyServerTest, ::testing::Values("tcp", "unix"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace ferry::e2e
