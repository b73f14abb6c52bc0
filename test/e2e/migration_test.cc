// End-to-end tests of migration between servers (issue 16; server/README.md
// "Migration"): two ferryds with the host backend on loopback, a real client
// process (pool_client turns ... kernel: a ring of device pointers that a
// kernel follows on the device) moved from one to the other and back with
// `ferryctl migrate SESSION --to SERVER:GPU`, and moves that are refused
// while the program goes on where it is. Sessions run in worker processes
// and in ferryd's own process. Every wait is bounded.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mini_json.h"
#include "test/support/child_process.h"
#include "test/support/ferryd.h"
#include "test/support/wait.h"

namespace ferry::e2e {
namespace {

using namespace std::chrono_literals;
using test::ChildProcess;
using test::ExitStatus;
using test::Tail;

constexpr auto kReadyTimeout = 10s;
constexpr auto kStopTimeout = 10s;
constexpr auto kProgramTimeout = 60s;
constexpr auto kPollInterval = 30ms;
constexpr uint64_t kRingBytes = 24ull << 20;

class MigrationBetweenServersTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    dir_ = test::MakeTempDir("ferry-migration-e2e-");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    for (auto& [name, program] : programs_) {
      if (program.running()) program.Kill(SIGKILL);
    }
    for (auto& [name, ferryd] : ferryds_) {
      const std::string stop_failed = test::StopFerryd(name, ferryd, kStopTimeout);
      EXPECT_TRUE(stop_failed.empty()) << stop_failed;
    }
    if (HasFailure()) {
      for (auto& [name, ferryd] : ferryds_) {
        if (ferryd.has_value()) std::cerr << name << " log:\n" << Tail(ferryd->Stderr(), 8000) << "\n";
      }
      for (auto& [name, program] : programs_) std::cerr << program.Describe(3000) << "\n";
      std::cerr << "test files kept in " << dir_ << "\n";
    } else {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

  // Starts ferryd `name`: the host backend, one 64 MiB GPU in pool "dev" of
  // one slice.
  void StartServer(const std::string& name) {
    const std::string config_path = dir_ + "/" + name + ".toml";
    std::ofstream(config_path) << "[server]\nbackend = \"host\"\nhost_kernels = [\""
                               << FERRY_E2E_HOST_KERNELS
                               << "\"]\ndefault_pool = \"dev\"\n\n[[gpu]]\nindex = 0\n"
                                  "memory = \"64MiB\"\n\n[pool.dev]\nslices_per_gpu = 1\n";
    std::vector<std::string> args = {"--config", config_path, "--listen", "127.0.0.1:0"};
    if (GetParam()) args.push_back("--sessions-in-process");
    std::string error;
    std::filesystem::create_directories(dir_ + "/" + name);
    std::optional<ChildProcess> ferryd = test::StartFerryd(FERRY_E2E_FERRYD, args, dir_ + "/" + name,
                                                           kReadyTimeout, &addresses_[name], &error);
    ASSERT_TRUE(ferryd.has_value()) << error;
    ferryds_.emplace(name, std::move(ferryd));
  }

  ChildProcess* StartProgram(const std::string& name, const std::string& server,
                             const std::vector<std::string>& args) {
    std::string error;
    std::vector<std::string> argv = {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_pool_client"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::optional<ChildProcess> child = ChildProcess::Start(
        argv, test::ClientEnv(FERRY_E2E_CLIENT_LIB_DIR, addresses_[server]), dir_ + "/" + name,
        &error);
    if (!child.has_value()) {
      ADD_FAILURE() << "cannot start " << name << ": " << error;
      return nullptr;
    }
    return &programs_.emplace(name, std::move(*child)).first->second;
  }
  void Turn(int round) { std::ofstream(dir_ + "/ring.turn" + std::to_string(round)) << "go\n"; }

  bool WaitForOutput(ChildProcess& program, const std::string& text) {
    return test::WaitForOutput(program, text, kProgramTimeout, kPollInterval);
  }

  // ferryctl ARGS --server (ferryd `server`'s address); its exit code.
  int Ferryctl(const std::string& server, std::vector<std::string> args, std::string* out,
               std::string* err) {
    std::vector<std::string> argv = {FERRY_E2E_FERRYCTL};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back("--server");
    argv.push_back(addresses_[server]);
    std::string error;
    std::optional<ChildProcess> ctl = ChildProcess::Start(argv, {}, dir_ + "/ferryctl", &error);
    if (!ctl.has_value()) {
      ADD_FAILURE() << error;
      return -1;
    }
    const ExitStatus status = ctl->Wait(150s);
    *out = ctl->Stdout();
    *err = ctl->Stderr();
    return status.exited ? status.code : -1;
  }

  // The sessions ferryd `server` lists (ferryctl status -o json).
  std::vector<JsonValue> Sessions(const std::string& server) {
    std::string out, err;
    if (Ferryctl(server, {"status", "-o", "json"}, &out, &err) != 0) {
      ADD_FAILURE() << err;
      return {};
    }
    std::optional<JsonValue> json = ParseJson(out);
    const JsonValue* sessions = json.has_value() ? json->Find("sessions") : nullptr;
    if (sessions == nullptr || !sessions->is_array()) {
      ADD_FAILURE() << "no sessions in " << out;
      return {};
    }
    return sessions->array;
  }
  std::string OnlySessionId(const std::string& server) {
    const std::vector<JsonValue> sessions = Sessions(server);
    if (sessions.size() != 1) {
      ADD_FAILURE() << server << " lists " << sessions.size() << " sessions, not 1";
      return "";
    }
    return std::to_string(static_cast<uint64_t>(NumberMember(&sessions[0], "id")));
  }

  std::string dir_;
  std::map<std::string, std::optional<ChildProcess>> ferryds_;
  std::map<std::string, std::string> addresses_;
  std::map<std::string, ChildProcess> programs_;
};

TEST_P(MigrationBetweenServersTest, AProgramWhoseKernelFollowsDevicePointersMovesAndComesBack) {
  StartServer("a");
  StartServer("b");
  ChildProcess* ring = StartProgram(
      "ring", "a",
      {"turns", std::to_string(kRingBytes), dir_ + "/ring.turn", "4", "kernel", FERRY_E2E_IMAGE_DIR});
  ASSERT_NE(ring, nullptr);
  Turn(1);
  Turn(2);
  ASSERT_TRUE(WaitForOutput(*ring, "TURN 2 OK"));
  const std::string on_a = OnlySessionId("a");
  ASSERT_FALSE(on_a.empty());

  // To b, mid-run: same ids, same addresses; the kernel follows the ring there.
  std::string out, err;
  ASSERT_EQ(Ferryctl("a", {"migrate", on_a, "--to", addresses_["b"] + ":0"}, &out, &err), 0)
      << out << err;
  EXPECT_NE(out.find("moved to " + addresses_["b"] + " GPU 0"), std::string::npos) << out;
  EXPECT_TRUE(Sessions("a").empty()) << "a still lists the session";
  const std::vector<JsonValue> on_b = Sessions("b");
  ASSERT_EQ(on_b.size(), 1u);
  EXPECT_EQ(NumberMember(&on_b[0], "pid"), ring->pid());
  EXPECT_EQ(NumberMember(&on_b[0], "bytes_allocated"), static_cast<double>(kRingBytes));
  EXPECT_EQ(NumberMember(&on_b[0], "modules"), 1);
  Turn(3);
  ASSERT_TRUE(WaitForOutput(*ring, "TURN 3 OK"));

  // Refused (nothing changes, the program goes on on b): a GPU that a does
  // not serve; then a's only slice, held by another program.
  const std::string id_b = OnlySessionId("b");
  EXPECT_EQ(Ferryctl("b", {"migrate", id_b, "--to", addresses_["a"] + ":7"}, &out, &err), 1);
  EXPECT_NE(err.find("serves no GPU 7"), std::string::npos) << err;
  ChildProcess* holder = StartProgram("holder", "a", {"hold", dir_ + "/holder.release"});
  ASSERT_NE(holder, nullptr);
  ASSERT_TRUE(WaitForOutput(*holder, "READY\n"));
  EXPECT_EQ(Ferryctl("b", {"migrate", id_b, "--to", addresses_["a"] + ":0"}, &out, &err), 1);
  EXPECT_NE(err.find("GPU 0 has no free slice of pool dev"), std::string::npos) << err;
  Turn(4);
  ASSERT_TRUE(WaitForOutput(*ring, "TURN 4 OK"));

  // Back to a once its slice is free.
  std::ofstream(dir_ + "/holder.release") << "go\n";
  EXPECT_TRUE(holder->Wait(kProgramTimeout).success()) << holder->Describe();
  bool moved_back = false;
  ASSERT_TRUE(test::WaitFor(
      [&] {
        // The holder's slice goes back once its session has ended.
        moved_back =
            Ferryctl("b", {"migrate", id_b, "--to", addresses_["a"] + ":0"}, &out, &err) == 0;
        return moved_back;
      },
      15s, 100ms))
      << err;
  Turn(5);
  const ExitStatus status = ring->Wait(kProgramTimeout);
  EXPECT_TRUE(status.success() && ring->Stdout().find("all checks passed") != std::string::npos)
      << ring->Describe();
  EXPECT_NE(ring->Stderr().find("the session moved from ferryd at"), std::string::npos);
  EXPECT_NE(ferryds_["a"]->Stderr().find("reason=\"moved to " + addresses_["b"] + "\""),
            std::string::npos);
}

TEST_P(MigrationBetweenServersTest, AMoveToNoSessionOrAServerNotThereIsRefused) {
  // ferryctl names a session that does not exist, then a server that is not
  // there: refused, and the program runs on.
  StartServer("a");
  ChildProcess* ring =
      StartProgram("ring", "a", {"turns", std::to_string(kRingBytes), dir_ + "/ring.turn", "1"});
  ASSERT_NE(ring, nullptr);
  Turn(1);
  ASSERT_TRUE(WaitForOutput(*ring, "TURN 1 OK"));
  std::string out, err;
  EXPECT_EQ(Ferryctl("a", {"migrate", "999", "--to", "127.0.0.1:1:0"}, &out, &err), 1);
  EXPECT_NE(err.find("no session 999"), std::string::npos) << err;
  const std::string id = OnlySessionId("a");
  EXPECT_EQ(Ferryctl("a", {"migrate", id, "--to", "127.0.0.1:1:0"}, &out, &err), 1);
  EXPECT_NE(err.find("cannot reach ferryd at 127.0.0.1:1"), std::string::npos) << err;
  EXPECT_EQ(Sessions("a").size(), 1u);
  Turn(2);
  const ExitStatus status = ring->Wait(kProgramTimeout);
  EXPECT_TRUE(status.success()) << ring->Describe();
}

INSTANTIATE_TEST_SUITE_P(Sessions, MigrationBetweenServersTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "InProcess" : "InWorkers";
                         });

}  // namespace
}  // namespace ferry::e2e
