// End-to-end tests: ordinary driver-API programs, linked against
// the toolkit's stub libcuda.so, run through ferry's libcuda.so.1
// (LD_LIBRARY_PATH) against a ferryd with the host backend that each test
// starts on an ephemeral port. Every child process is bounded in time and is
// killed if the harness dies. A test that fails prints the programs' and
// ferryd's output and keeps its folder of logs.
//
// Paths come from CMake as compile definitions (see CMakeLists.txt).
//
// Chained (FERRY_E2E_CHAIN_DRIVER names ferry's libcuda.so.1; ctest label
// "chain"): the programs talk to a ferryd with the CUDA backend whose driver
// is ferry's own libcuda.so.1, forwarding to a second ferryd with the host
// backend. So the CUDA backend runs against a driver that nobody here faked.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <capnp/serialize.h>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/frame.h"
#include "common/shm_rendezvous.h"
#include "common/shm_transport.h"
#include "common/transport.h"
#include "kernel_names.h"
#include "mini_json.h"
#include "test/support/child_process.h"
#include "test/support/ferryd.h"
#include "test/support/net.h"
#include "test/support/raw_client.h"
#include "test/support/wait.h"

namespace ferry::e2e {
namespace {

using namespace std::chrono_literals;
using test::ChildProcess;
using test::ExitStatus;
using test::Tail;

constexpr auto kReadyTimeout = 10s;     // ferryd writes its ready file
constexpr auto kStopTimeout = 10s;      // ferryd exits after SIGTERM
constexpr auto kProgramTimeout = 60s;   // one e2e program runs to its end
constexpr auto kFerryctlTimeout = 10s;  // one ferryctl call
constexpr auto kSessionGoneTimeout = 10s;
constexpr auto kPollInterval = 50ms;

std::string ProgramPath(const std::string& name) {
  return std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_" + name;
}

// The environment that makes a program use ferry's libcuda.so.1 and the
// server at `address`.
std::map<std::string, std::string> ClientEnv(const std::string& address) {
  return test::ClientEnv(FERRY_E2E_CLIENT_LIB_DIR, address);
}

// A fresh folder for one test's files.
std::string MakeTestDir() { return test::MakeTempDir("ferry-e2e-"); }

std::vector<std::string> NonEmptyLines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.find_first_not_of(" \t\r") != std::string::npos) {
      lines.push_back(line);
    }
  }
  return lines;
}

// Runs a started program to its end and expects it to pass: exit 0 and
// its final "all checks passed" line.
void ExpectPasses(ChildProcess& program) {
  const ExitStatus status = program.Wait(kProgramTimeout);
  EXPECT_TRUE(status.success() && program.Stdout().find("all checks passed") != std::string::npos)
      << program.Describe();
}

// Waits until `program` printed its READY line; false (with a failure) if it
// ends first or takes longer than kProgramTimeout.
bool WaitForReady(ChildProcess& program) {
  bool ended = false;
  const bool ready = test::WaitFor(
      [&] {
        if (program.Stdout().find("READY\n") != std::string::npos) return true;
        ended = program.Poll();
        return ended;
      },
      kProgramTimeout, kPollInterval);
  if (ready && !ended) return true;
  ADD_FAILURE() << (ended ? "exited before READY\n" : "no READY\n") << program.Describe();
  return false;
}

// ferry's libcuda.so.1 when the tests run chained (see the top), else empty.
std::string ChainDriver() {
  const char* driver = std::getenv("FERRY_E2E_CHAIN_DRIVER");
  return driver != nullptr ? driver : "";
}

// Base for the tests that need a server: starts ferryd (host backend, the
// e2e host kernels) in SetUp, stops it with SIGTERM in TearDown and expects
// it to exit 0. Chained, `ferryd_` is the CUDA-backend ferryd the programs
// use and `upstream_` the host-backend one it forwards to (files in
// DIR/upstream).
class FerrydTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTestDir();
    ASSERT_FALSE(dir_.empty()) << "mkdtemp failed";
    std::string error;
    unix_address_ = "unix:" + dir_ + "/ferryd.sock";
    const std::vector<std::string> host_backend = {"--backend",      "host",
                                                   "--host-kernels", FERRY_E2E_HOST_KERNELS,
                                                   "--host-devices", std::to_string(HostDevices())};
    std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--listen", unix_address_};
    std::map<std::string, std::string> env;
    const std::string chain_driver = ChainDriver();
    if (chain_driver.empty()) {
      args.insert(args.end(), host_backend.begin(), host_backend.end());
    } else {
      const std::string upstream_dir = dir_ + "/upstream";
      std::error_code made;
      std::filesystem::create_directory(upstream_dir, made);
      ASSERT_FALSE(made) << "cannot make " << upstream_dir << ": " << made.message();
      std::vector<std::string> upstream_args = {"--listen", "127.0.0.1:0"};
      upstream_args.insert(upstream_args.end(), host_backend.begin(), host_backend.end());
      upstream_ = test::StartFerryd(FERRY_E2E_FERRYD, upstream_args, upstream_dir, kReadyTimeout,
                                    &upstream_address_, &error);
      ASSERT_TRUE(upstream_.has_value()) << "upstream: " << error;
      args.insert(args.end(), {"--backend", "cuda", "--cuda-driver", chain_driver,
                               "--allow-ferry-cuda-driver"});
      env["FERRY_SERVER"] = upstream_address_;
    }
    ferryd_ =
        test::StartFerryd(FERRY_E2E_FERRYD, args, dir_, kReadyTimeout, &address_, &error, env);
    ASSERT_TRUE(ferryd_.has_value()) << error;
    ASSERT_EQ(address_.rfind("127.0.0.1:", 0), 0u) << "ready file holds \"" << address_ << "\"";
  }

  // SIGTERM, and expects exit 0 (a ferryd that died earlier fails the test).
  static void StopFerryd(const char* name, std::optional<ChildProcess>& ferryd) {
    const std::string failed = test::StopFerryd(name, ferryd, kStopTimeout);
    EXPECT_TRUE(failed.empty()) << failed;
  }

  // Both ferryds' logs (chained: the CUDA-backend one, then its upstream).
  std::string FerrydLogs() const {
    std::string logs = ferryd_.has_value() ? ferryd_->Stderr() : "";
    if (upstream_.has_value()) logs += upstream_->Stderr();
    return logs;
  }

  void TearDown() override {
    // The chained ferryd first: it is its upstream's client.
    StopFerryd("ferryd", ferryd_);
    StopFerryd("upstream ferryd", upstream_);
    if (HasFailure()) {
      if (ferryd_.has_value()) {
        std::cerr << "ferryd log:\n" << Tail(ferryd_->Stderr(), 12000) << "\n";
      }
      if (upstream_.has_value()) {
        std::cerr << "upstream ferryd log:\n" << Tail(upstream_->Stderr(), 12000) << "\n";
      }
      std::cerr << "test files kept in " << dir_ << "\n";
    } else if (!dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

  // Starts e2e program `name` (with the image folder as its argument)
  // against this test's ferryd; nullopt (and a failure) if it cannot start.
  // `env` adds to (or overrides) the client environment.
  std::optional<ChildProcess> StartProgram(const std::string& name,
                                           const std::map<std::string, std::string>& env = {}) {
    std::string error;
    std::map<std::string, std::string> full_env = ClientEnv(ClientAddress());
    for (const auto& [key, value] : ClientTransportEnv()) full_env[key] = value;
    // Tells the programs what is behind ferry (see host_callbacks.cc).
    if (!ChainDriver().empty()) full_env["FERRY_E2E_BACKEND"] = "chain";
    for (const auto& [key, value] : env) full_env[key] = value;
    std::optional<ChildProcess> program = ChildProcess::Start(
        {ProgramPath(name), FERRY_E2E_IMAGE_DIR}, full_env, dir_ + "/" + name, &error);
    if (!program.has_value()) {
      ADD_FAILURE() << "cannot start " << name << ": " << error;
    }
    return program;
  }

  struct Status {
    JsonValue json;
    std::string text;
    const std::vector<JsonValue>& sessions() const { return json.Find("sessions")->array; }
  };

  // `ferryctl status --server ADDRESS -o json`, parsed; nullopt with the
  // reason in `why` when it fails or prints something else.
  std::optional<Status> SessionStatus(std::string* why) {
    std::string error;
    std::optional<ChildProcess> ctl =
        ChildProcess::Start({FERRY_E2E_FERRYCTL, "status", "--server", address_, "-o", "json"}, {},
                            dir_ + "/ferryctl", &error);
    if (!ctl.has_value()) {
      *why = "cannot start ferryctl: " + error;
      return std::nullopt;
    }
    if (!ctl->Wait(kFerryctlTimeout).success()) {
      *why = ctl->Describe();
      return std::nullopt;
    }
    Status status;
    status.text = ctl->Stdout();
    std::optional<JsonValue> json = ParseJson(status.text, &error);
    if (!json.has_value() || !json->is_object() || json->Find("sessions") == nullptr ||
        !json->Find("sessions")->is_array()) {
      *why = "ferryctl printed no {\"sessions\": [...]} object (" + error + "):\n" + status.text;
      return std::nullopt;
    }
    status.json = std::move(*json);
    return status;
  }

  // Polls ferryctl until it lists no session; fails the test after
  // kSessionGoneTimeout.
  void ExpectNoSessionsSoon(const char* after) {
    std::string last;
    const bool gone = test::WaitFor(
        [&] {
          std::optional<Status> status = SessionStatus(&last);
          if (!status.has_value()) return false;
          last = status->text;
          return status->sessions().empty();
        },
        kSessionGoneTimeout, kPollInterval);
    if (gone) return;
    ADD_FAILURE() << "sessions remain 10 s after " << after << "; last ferryctl status:\n" << last;
  }

  // Starts `program`, a client that prints READY once it holds what it
  // checks, waits for READY, and reads ferryd's status into `*status` while
  // that client is its one session.
  void StartHolder(const std::string& program, std::optional<ChildProcess>* holder,
                   std::optional<Status>* status) {
    *holder = StartProgram(program);
    ASSERT_TRUE(holder->has_value());
    ASSERT_TRUE(WaitForReady(**holder));
    std::string why;
    *status = SessionStatus(&why);
    ASSERT_TRUE(status->has_value()) << why;
    ASSERT_EQ((*status)->sessions().size(), 1u) << (*status)->text << "\n" << (*holder)->Describe();
  }

  // Kills `holder` with SIGKILL and expects ferryd to free its session (`after`
  // names the case in the message).
  void KillAndExpectSessionFreed(ChildProcess& holder, const char* after) {
    holder.Kill(SIGKILL);
    const ExitStatus killed = holder.Wait(kStopTimeout);
    EXPECT_TRUE(!killed.exited && killed.signal == SIGKILL) << killed.ToString();
    ExpectNoSessionsSoon(after);
  }

  // Runs program `name` to its end and expects it to pass.
  void RunAndExpectPass(const std::string& name,
                        const std::map<std::string, std::string>& env = {}) {
    std::optional<ChildProcess> program = StartProgram(name, env);
    if (program.has_value()) ExpectPasses(*program);
  }

  // How many devices the host backend emulates.
  virtual int HostDevices() const { return 1; }

  // Where the programs connect: TCP here; FerrydTransportTest picks.
  virtual std::string ClientAddress() const { return address_; }
  // What the programs' environment adds to choose the transport: nothing
  // here (a loopback client moves to shared memory); FerrydTransportTest
  // picks.
  virtual std::map<std::string, std::string> ClientTransportEnv() const { return {}; }

  std::string dir_;
  std::string address_;       // "127.0.0.1:PORT"; ferryctl always uses it
  std::string unix_address_;  // "unix:DIR/ferryd.sock", the same ferryd
  std::optional<ChildProcess> ferryd_;
  // Chained only: the host-backend ferryd that ferryd_ forwards to.
  std::optional<ChildProcess> upstream_;
  std::string upstream_address_;
};

// The tests that run programs, once over TCP and once over shared memory.
// "tcp" says FERRY_TRANSPORT=tcp: a loopback client would otherwise move to
// shared memory in the handshake.
class FerrydTransportTest : public FerrydTest, public ::testing::WithParamInterface<std::string> {
 protected:
  std::string ClientAddress() const override {
    return GetParam() == "unix" ? unix_address_ : address_;
  }
  std::map<std::string, std::string> ClientTransportEnv() const override {
    if (GetParam() == "tcp") return {{"FERRY_TRANSPORT", "tcp"}};
    return {};
  }
};

INSTANTIATE_TEST_SUITE_P(Transports, FerrydTransportTest, ::testing::Values("tcp", "unix"),
                         [](const auto& info) { return info.param; });

TEST_P(FerrydTransportTest, DeviceQuery) { RunAndExpectPass("device_query"); }

TEST_P(FerrydTransportTest, Memory) { RunAndExpectPass("memory"); }

TEST_P(FerrydTransportTest, Launch) { RunAndExpectPass("launch"); }

TEST_P(FerrydTransportTest, Library) { RunAndExpectPass("library"); }

// ferry's NVML stand-in in a CUDA program answers for the program's session
// (chained too: the CUDA backend's NVML is then the stand-in beside ferry's
// driver, and the host backend at the end reads no sensors).
TEST_P(FerrydTransportTest, NvmlQuery) {
  RunAndExpectPass("nvml_query", {{"FERRY_E2E_NVML_SENSORS", "absent"}});
}

// Eager loading puts every library into every context at once; the program
// must not be able to tell, except by the loading mode it is told.
TEST_F(FerrydTest, LibraryWithEagerLoading) {
  std::optional<ChildProcess> program = StartProgram("library", {{"CUDA_MODULE_LOADING", "EAGER"}});
  ASSERT_TRUE(program.has_value());
  ExpectPasses(*program);
  EXPECT_NE(program->Stdout().find("module loading mode eager"), std::string::npos)
      << program->Describe();
}

// Busy polling (FERRY_BUSY_POLL; ferryd at its default): off and at the
// longest window the same program passes and the session's line names the
// window; a value that does not parse fails cuInit with a line naming it.
TEST_P(FerrydTransportTest, BusyPollSettings) {
  for (const std::string window : {"0", "1000"}) {
    std::optional<ChildProcess> program =
        StartProgram("memory", {{"FERRY_BUSY_POLL", window}, {"FERRY_LOG_LEVEL", "debug"}});
    ASSERT_TRUE(program.has_value());
    ExpectPasses(*program);
    EXPECT_NE(program->Stderr().find("busy-poll " + window + " us)"), std::string::npos)
        << program->Describe();
  }
  std::optional<ChildProcess> bad = StartProgram("device_query", {{"FERRY_BUSY_POLL", "fast"}});
  ASSERT_TRUE(bad.has_value());
  EXPECT_FALSE(bad->Wait(kProgramTimeout).success()) << bad->Describe();
  EXPECT_NE(bad->Stderr().find("FERRY_BUSY_POLL: 'fast' is not a busy-poll window"),
            std::string::npos)
      << bad->Describe();
}

TEST_P(FerrydTransportTest, StreamsEvents) { RunAndExpectPass("streams_events"); }

TEST_P(FerrydTransportTest, Contexts) { RunAndExpectPass("contexts"); }

// Peers need two devices.
class FerrydTwoDeviceTest : public FerrydTest {
 protected:
  int HostDevices() const override { return 2; }
};

TEST_F(FerrydTwoDeviceTest, Peers) { RunAndExpectPass("peers"); }

TEST_P(FerrydTransportTest, Errors) {
  std::optional<ChildProcess> program = StartProgram("errors");
  ASSERT_TRUE(program.has_value());
  ExpectPasses(*program);
  // The launch of the kernel without a host implementation failed with a
  // message that names it, in the client's log or in ferryd's.
  const std::string logs = program->Stderr() + FerrydLogs();
  EXPECT_NE(logs.find("missing_host_kernel"), std::string::npos)
      << "no log line names " << kMissingHostKernel << "\n"
      << program->Describe();
}

TEST_P(FerrydTransportTest, TwoClientsAtOnce) {
  std::optional<ChildProcess> memory = StartProgram("memory");
  std::optional<ChildProcess> launch = StartProgram("launch");
  ASSERT_TRUE(memory.has_value() && launch.has_value());
  ExpectPasses(*memory);
  ExpectPasses(*launch);
  ExpectNoSessionsSoon("both clients exited");
}

TEST_P(FerrydTransportTest, KilledClientSessionIsFreed) {
  std::optional<ChildProcess> started;
  std::optional<Status> status;
  ASSERT_NO_FATAL_FAILURE(StartHolder("hold_and_wait", &started, &status));
  ChildProcess& holder = *started;
  const JsonValue& session = status->sessions()[0];
  EXPECT_EQ(NumberMember(&session, "pid"), holder.pid()) << status->text;
  const JsonValue* program = session.Find("program");
  EXPECT_TRUE(program != nullptr && program->is_string() &&
              program->string.find("hold_and_wait") != std::string::npos)
      << status->text;
  EXPECT_GE(NumberMember(&session, "bytes_allocated"), 3 * 8 * 1024 * 1024) << status->text;
  EXPECT_GE(NumberMember(&session, "allocations"), 3) << status->text;
  EXPECT_GE(NumberMember(&session, "contexts"), 1) << status->text;
  EXPECT_GE(NumberMember(&session, "streams"), 2) << status->text;
  EXPECT_GE(NumberMember(&session, "modules"), 1) << status->text;

  KillAndExpectSessionFreed(holder, "SIGKILL of the client");

  // The server still serves a new client.
  RunAndExpectPass("device_query");
}

TEST_P(FerrydTransportTest, HostCallbacks) { RunAndExpectPass("host_callbacks"); }

// A client killed while its host function holds a stream (and a destroy of
// that stream waits behind it on the server): ferryd opens the gate itself,
// frees the session and goes on serving.
// Issue 11: each session runs in its own worker process. Another tenant's
// kernel given the owner's device pointer finds nothing of the owner's there:
// the owner's bytes stay as they were, the intruder alone gets an error (its
// worker faults and ends; on the host backend the wild write is a SIGSEGV in
// that worker), and ferryd and the owner's session go on.
TEST_P(FerrydTransportTest, AnotherTenantsPointerInAKernelReachesNothing) {
  std::optional<ChildProcess> owner = StartProgram("tenant_reach", {{"TENANT_REACH", "owner"}});
  ASSERT_TRUE(owner.has_value());
  ASSERT_TRUE(WaitForReady(*owner));
  const std::string out = owner->Stdout();
  const size_t at = out.find("POINTER ");
  ASSERT_NE(at, std::string::npos) << owner->Describe();
  const std::string pointer = out.substr(at + 8, out.find('\n', at) - at - 8);

  std::optional<ChildProcess> intruder = StartProgram(
      "tenant_reach", {{"TENANT_REACH", "intruder"}, {"TENANT_REACH_POINTER", pointer}});
  ASSERT_TRUE(intruder.has_value());
  const ExitStatus intruded = intruder->Wait(kProgramTimeout);
  EXPECT_TRUE(intruded.success()) << intruder->Describe();
  EXPECT_NE(intruder->Stdout().find("INTRUDER RESULT "), std::string::npos) << intruder->Describe();
  EXPECT_EQ(intruder->Stdout().find("INTRUDER RESULT 0\n"), std::string::npos)
      << "the intruder's kernel on another tenant's pointer succeeded\n"
      << intruder->Describe();
  ASSERT_FALSE(ferryd_->Poll()) << ferryd_->Describe();

  owner->Kill(SIGUSR1);
  ExpectPasses(*owner);
  EXPECT_NE(owner->Stdout().find("OWNER INTACT"), std::string::npos) << owner->Describe();
  // The worker that ran the wild kernel ended alone, and ferryd said so.
  EXPECT_NE(FerrydLogs().find("killed by signal"), std::string::npos) << FerrydLogs();
  RunAndExpectPass("device_query");
  ExpectNoSessionsSoon("both tenants ended");
}

// A program whose FERRY_SERVER is ferryd's loopback TCP address runs over
// shared memory: the handshake moves it (HelloReply.shm), the program says
// so once, ferryd's session line and ferryctl status say shm. With
// FERRY_TRANSPORT=tcp it stays on TCP, and with FERRY_TRANSPORT=shm it is
// had. (Chained, the programs' ferryd is itself such a client of its
// upstream.)
TEST_F(FerrydTest, ALoopbackTcpClientMovesToSharedMemory) {
  ASSERT_EQ(ClientAddress().rfind("127.0.0.1:", 0), 0u);
  const std::string moved = "over shm, ring 8 MiB (moved from TCP: same host)";
  std::optional<ChildProcess> program = StartProgram("memory");
  ASSERT_TRUE(program.has_value());
  ExpectPasses(*program);
  EXPECT_NE(program->Stderr().find("connected to ferryd at " + ClientAddress() + " " + moved),
            std::string::npos)
      << program->Describe();
  EXPECT_NE(ferryd_->Stderr().find("transport=\"shm, ring 8 MiB\" client_pid=" +
                                   std::to_string(program->pid())),
            std::string::npos)
      << ferryd_->Stderr();

  std::optional<ChildProcess> tcp = StartProgram("memory", {{"FERRY_TRANSPORT", "tcp"}});
  ASSERT_TRUE(tcp.has_value());
  ExpectPasses(*tcp);
  EXPECT_EQ(tcp->Stderr().find("over shm"), std::string::npos) << tcp->Describe();
  EXPECT_NE(ferryd_->Stderr().find("transport=tcp client_pid=" + std::to_string(tcp->pid())),
            std::string::npos)
      << ferryd_->Stderr();

  std::optional<ChildProcess> required = StartProgram("device_query", {{"FERRY_TRANSPORT", "shm"}});
  ASSERT_TRUE(required.has_value());
  ExpectPasses(*required);

  // ferryctl status names the transport of a live session.
  std::optional<ChildProcess> holder;
  std::optional<Status> status;
  ASSERT_NO_FATAL_FAILURE(StartHolder("hold_and_wait", &holder, &status));
  const JsonValue* transport = status->sessions()[0].Find("transport");
  ASSERT_TRUE(transport != nullptr && transport->is_string()) << status->text;
  EXPECT_EQ(transport->string, "shm, ring 8 MiB") << status->text;
  KillAndExpectSessionFreed(*holder, "SIGKILL of a client moved to shared memory");
}

// Clients that misbehave in the move to shared memory — a wrong answer, one
// that says 'S' and leaves, one that leaves without a word, one whose
// stranger-like connection has the wrong nonce — each end their own session
// only: ferryd stays up, and a session moved before them keeps serving.
TEST_F(FerrydTest, ClientsThatMisbehaveInTheMoveCostOnlyTheirOwnSession) {
  std::optional<ChildProcess> holder;
  std::optional<Status> status;
  ASSERT_NO_FATAL_FAILURE(StartHolder("hold_and_wait", &holder, &status));
  std::string boot_id;
  ASSERT_TRUE(ferry::BootId(&boot_id).ok());
  for (int how = 0; how < 4; ++how) {
    std::unique_ptr<ferry::Transport> t;
    ASSERT_TRUE(ferry::ConnectTransport(address_, 2000ms, &t).ok());
    capnp::MallocMessageBuilder message;
    auto hello = message.initRoot<wire::Hello>();
    hello.setProtocolVersion(wire::PROTOCOL_VERSION);
    hello.setRole(wire::Hello::Role::CLIENT);
    hello.setProgram("misbehaving");
    hello.initShm().setBootId(boot_id);
    ASSERT_TRUE(WriteFrame(*t, wire::FrameKind::HELLO, message).ok());
    t->SetReadDeadline(std::chrono::steady_clock::now() + kProgramTimeout);
    Frame frame;
    ASSERT_TRUE(ReadFrame(*t, &frame).ok()) << FerrydLogs();
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    auto reply = reader.getRoot<wire::HelloReply>();
    ASSERT_TRUE(reply.hasShm()) << reply.getShmRefusal().cStr();
    auto say = [&](uint8_t byte) {
      const ferry::ConstBuffer b{&byte, 1};
      EXPECT_TRUE(t->Write(std::span<const ferry::ConstBuffer>(&b, 1)).ok());
    };
    int stranger = -1;
    switch (how) {
      case 0:  // a wrong answer
        say('X');
        break;
      case 1:  // says it moves, then leaves
        say(ferry::kShmMoving);
        break;
      case 2:  // leaves without a word
        break;
      case 3: {  // connects with a wrong nonce, says it moves, then leaves
        std::vector<uint8_t> wrong(reply.getShm().getNonce().begin(),
                                   reply.getShm().getNonce().end());
        wrong[0] ^= 1;
        ASSERT_TRUE(
            ferry::ConnectShmRendezvous(reply.getShm().getSocket().cStr(), wrong, 2000ms, &stranger)
                .ok());
        say(ferry::kShmMoving);
        // ferryd closes it (the wrong nonce) while the client is still there.
        pollfd pfd{stranger, POLLIN, 0};
        char byte;
        EXPECT_TRUE(::poll(&pfd, 1, 5000) == 1 && ::recv(stranger, &byte, 1, 0) == 0);
        break;
      }
    }
    t.reset();
    if (stranger >= 0) ::close(stranger);
    ASSERT_FALSE(ferryd_->Poll()) << ferryd_->Describe();
  }
  // The misbehaving sessions end by themselves; the holder's stays.
  std::string last;
  EXPECT_TRUE(test::WaitFor(
      [&] {
        std::optional<Status> now = SessionStatus(&last);
        if (!now.has_value()) return false;
        last = now->text;
        return now->sessions().size() == 1;
      },
      kSessionGoneTimeout, kPollInterval))
      << last;
  EXPECT_NE(ferryd_->Stderr().find("not 'S' or 'T'"), std::string::npos) << ferryd_->Stderr();
  EXPECT_NE(ferryd_->Stderr().find("is turned away: wrong nonce"), std::string::npos)
      << ferryd_->Stderr();
  ASSERT_FALSE(holder->Poll()) << "the moved session's program ended\n" << holder->Describe();
  KillAndExpectSessionFreed(*holder, "SIGKILL of the holder after the misbehaving clients");
  RunAndExpectPass("device_query");
}

TEST_F(FerrydTest, ClientKilledWhileAHostCallbackHoldsAStream) {
  std::optional<ChildProcess> started;
  std::optional<Status> status;
  ASSERT_NO_FATAL_FAILURE(StartHolder("host_callback_hold", &started, &status));
  EXPECT_GE(NumberMember(&status->sessions()[0], "streams"), 1) << status->text;

  KillAndExpectSessionFreed(*started, "SIGKILL of a client whose host function held a stream");
  RunAndExpectPass("host_callbacks");
}

// Nothing a client sends may stop ferryd: 240 connections, each hostile in
// one way, then an ordinary program must still pass and no session remain.
TEST_P(FerrydTransportTest, HostileClientsNeverStopTheServer) {
  std::mt19937 rng(2026);
  auto send_raw = [&](const std::vector<uint8_t>& bytes) {
    std::unique_ptr<ferry::Transport> t;
    ASSERT_TRUE(ferry::ConnectTransport(ClientAddress(), 2000ms, &t).ok());
    ferry::ConstBuffer b{bytes.data(), bytes.size()};
    (void)t->Write(std::span<const ferry::ConstBuffer>(&b, 1));
    if (GetParam() == "unix" && rng() % 3 == 0) {
      // Shared memory lets a client write more than bytes: impossible ring
      // positions too.
      auto* header = static_cast<ferry::ShmTransport&>(*t).TEST_header();
      header->to_server.head.store(rng() % 2 ? ~0ull - rng() % 100
                                             : header->to_server.head + (1ull << 40));
      header->to_client.tail.store(rng());
      header->to_server.data_event.fetch_add(1);
    }
    // Closing at once, or after a moment, covers both a peer that vanishes
    // mid-frame and one that waits for an answer: the pause is the hostile
    // behaviour under test, not a synchronization.
    if (rng() % 2 == 0) std::this_thread::sleep_for(2ms);
  };
  const auto hello_frame = test::HelloFrame;
  for (int i = 0; i < 240; ++i) {
    std::vector<uint8_t> bytes;
    switch (i % 6) {
      case 0:  // noise
        bytes.resize(rng() % 4096);
        for (auto& b : bytes) b = static_cast<uint8_t>(rng());
        break;
      case 1:  // a Hello cut short
        bytes = hello_frame(ferry::wire::PROTOCOL_VERSION, 0);
        bytes.resize(rng() % bytes.size());
        break;
      case 2:  // a Hello from a future protocol
        bytes = hello_frame(ferry::wire::PROTOCOL_VERSION + 1 + rng() % 100, 0);
        break;
      case 3: {  // a good Hello, then a call batch of noise
        bytes = hello_frame(ferry::wire::PROTOCOL_VERSION, 0);
        const uint32_t size = 8 * (1 + rng() % 64);
        const std::vector<uint8_t> header = test::FrameHeader(wire::FrameKind::CALL_BATCH, size);
        bytes.insert(bytes.end(), header.begin(), header.end());
        for (uint32_t k = 0; k < size; ++k) bytes.push_back(static_cast<uint8_t>(rng()));
        break;
      }
      case 4:  // a good Hello with its bits flipped
        bytes = hello_frame(ferry::wire::PROTOCOL_VERSION, static_cast<int>(rng() % 2));
        for (int flips = 0; flips < 4; ++flips) bytes[rng() % bytes.size()] ^= 1u << (rng() % 8);
        break;
      case 5:  // a control connection that says too little
        bytes = hello_frame(ferry::wire::PROTOCOL_VERSION, 1);
        bytes.push_back(0x31);
        break;
    }
    send_raw(bytes);
    ASSERT_FALSE(ferryd_->Poll()) << "ferryd died after hostile connection " << i << "\n"
                                  << ferryd_->Describe();
  }
  RunAndExpectPass("device_query");
  ExpectNoSessionsSoon("the hostile connections closed");
}

TEST(UnreachableServerTest, CallsFailFastWithOneLineNamingTheServer) {
  const int port = test::ClosedLoopbackPort();
  ASSERT_GT(port, 0) << "cannot find a free port";
  const std::string address = "127.0.0.1:" + std::to_string(port);
  const std::string dir = MakeTestDir();
  ASSERT_FALSE(dir.empty());
  std::string error;
  std::optional<ChildProcess> program = ChildProcess::Start(
      {ProgramPath("unreachable")}, ClientEnv(address), dir + "/unreachable", &error);
  ASSERT_TRUE(program.has_value()) << error;
  // The program checks each call's code and that it took < 10 s.
  const ExitStatus status = program->Wait(30s);
  EXPECT_TRUE(status.success()) << program->Describe();
  EXPECT_NE(program->Stdout().find("cuInit(0) -> 46 "), std::string::npos) << program->Describe();

  const std::vector<std::string> lines = NonEmptyLines(program->Stderr());
  int naming = 0;
  for (const std::string& line : lines) {
    if (line.find(address) != std::string::npos) ++naming;
  }
  EXPECT_EQ(naming, 1) << "expected one stderr line naming " << address << "\n"
                       << program->Describe();
  EXPECT_EQ(lines.size(), 1u) << "expected stderr to be that one line\n" << program->Describe();
  if (!HasFailure()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
}

}  // namespace
}  // namespace ferry::e2e
