// The command lines of ferryd and ferryctl, run as the built programs:
// global flags before or after the command, --flag=value and --flag value,
// --help on every command, --version, unknown commands and flags named with
// exit status 2, and ferryctl's status from a ferryd this test starts (host
// backend, port 0, --ready-file). Every child is bounded by a timeout.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "test/support/child_process.h"
#include "test/support/ferryd.h"

namespace ferry {
namespace {

using namespace std::chrono_literals;
using test::ChildProcess;
using test::ExitStatus;

constexpr auto kRunTimeout = 10s;    // one ferryctl or ferryd that exits at once
constexpr auto kReadyTimeout = 10s;  // ferryd writes its ready file
constexpr auto kStopTimeout = 10s;   // ferryd exits after SIGTERM

struct Result {
  int code = -1;  // the exit status; -1 when it did not exit normally in time
  std::string out;
  std::string err;
};

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::MakeTempDir("ferry-cli-");
    ASSERT_FALSE(dir_.empty()) << "mkdtemp failed";
  }

  void TearDown() override {
    StopFerryd();
    std::error_code ignored;
    if (!HasFailure()) std::filesystem::remove_all(dir_, ignored);
  }

  // Runs `program` with `args`; FERRY_SERVER is empty unless `env` sets it,
  // so the caller's environment cannot pick a server.
  Result Run(const std::string& program, const std::vector<std::string>& args,
             std::map<std::string, std::string> env = {}) {
    std::vector<std::string> argv = {program};
    argv.insert(argv.end(), args.begin(), args.end());
    env.emplace("FERRY_SERVER", "");
    std::string error;
    std::optional<ChildProcess> child =
        ChildProcess::Start(argv, env, dir_ + "/run" + std::to_string(runs_++), &error);
    if (!child.has_value()) {
      ADD_FAILURE() << "cannot start " << program << ": " << error;
      return {};
    }
    const ExitStatus status = child->Wait(kRunTimeout);
    EXPECT_TRUE(status.exited) << child->Describe();
    return Result{status.exited ? status.code : -1, child->Stdout(), child->Stderr()};
  }

  Result Ctl(const std::vector<std::string>& args, std::map<std::string, std::string> env = {}) {
    return Run(FERRY_TEST_FERRYCTL, args, std::move(env));
  }
  Result Ferryd(const std::vector<std::string>& args) { return Run(FERRY_TEST_FERRYD, args); }

  // Starts ferryd (host backend, two TCP listeners on port 0, given as
  // --flag=value and --flag value) and waits for its ready file.
  void StartFerryd() {
    std::string error;
    ferryd_ = test::StartFerryd(FERRY_TEST_FERRYD,
                                {"--listen=127.0.0.1:0", "--listen", "127.0.0.1:0",
                                 "--backend=host", "--host-devices", "2"},
                                dir_, kReadyTimeout, &address_, &error);
    ASSERT_TRUE(ferryd_.has_value()) << "cannot start ferryd: " << error;
  }

  void StopFerryd() {
    if (!ferryd_.has_value() || !ferryd_->running()) return;
    ferryd_->Kill(SIGTERM);
    const ExitStatus status = ferryd_->Wait(kStopTimeout);
    EXPECT_TRUE(status.success()) << ferryd_->Describe();
  }

  std::string dir_;
  std::string address_;
  std::optional<ChildProcess> ferryd_;
  int runs_ = 0;
};

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST_F(CliTest, VersionComesFromTheProject) {
  Result ctl = Ctl({"--version"});
  EXPECT_EQ(ctl.code, 0) << ctl.err;
  EXPECT_EQ(ctl.out, std::string("ferryctl ") + FERRY_TEST_VERSION + "\n");
  Result d = Ferryd({"--version"});
  EXPECT_EQ(d.code, 0) << d.err;
  EXPECT_EQ(d.out, std::string("ferryd ") + FERRY_TEST_VERSION + "\n");
}

TEST_F(CliTest, HelpOnEveryCommandNamesItsFlags) {
  const std::map<std::vector<std::string>, std::vector<std::string>> cases = {
      {{"--help"}, {"status", "reload", "rebind", "drain", "undrain", "--server", "--version"}},
      {{"-h"}, {"status", "--server"}},
      {{"help"}, {"status", "--server"}},
      {{"status", "--help"}, {"--output", "json", "--server"}},
      {{"reload", "-h"}, {"--server"}},
      {{"rebind", "--help"},
       {"GPU", "POOL", "--preempt", "--drain", "--migrate", "--grace", "--server"}},
      {{"drain", "--help"}, {"GPU", "--server"}},
      {{"undrain", "-h"}, {"GPU", "--server"}},
  };
  for (const auto& [args, names] : cases) {
    Result r = Ctl(args);
    EXPECT_EQ(r.code, 0) << args.front() << "\n" << r.err;
    for (const std::string& name : names) {
      EXPECT_TRUE(Contains(r.out, name))
          << "ferryctl " << args.front() << " help lacks " << name << ":\n"
          << r.out;
    }
  }
  Result d = Ferryd({"--help"});
  EXPECT_EQ(d.code, 0) << d.err;
  for (const char* flag :
       {"--config", "--listen", "--backend", "--cuda-driver", "--allow-ferry-cuda-driver",
        "--host-kernels", "--host-devices", "--host-memory", "--module-cache", "--ready-file",
        "--log-level", "--test-fake-clock", "--metrics-listen", "--metrics-sessions", "--busy-poll",
        "--version"}) {
    EXPECT_TRUE(Contains(d.out, flag)) << "ferryd --help lacks " << flag << ":\n" << d.out;
  }
  EXPECT_EQ(Ferryd({"-h"}).code, 0);
}

TEST_F(CliTest, UnknownCommandsAndFlagsAreNamed) {
  Result r = Ctl({"frobnicate", "--server", "127.0.0.1:1"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(Contains(r.err, "unknown command 'frobnicate'")) << r.err;

  r = Ctl({"--server=127.0.0.1:1", "frobnicate"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(Contains(r.err, "unknown command 'frobnicate'")) << r.err;

  r = Ctl({"status", "--bogus", "--server", "127.0.0.1:1"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(Contains(r.err, "unknown flag '--bogus'")) << r.err;

  r = Ctl({"--bogus", "status"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(Contains(r.err, "unknown flag '--bogus'")) << r.err;

  // A flag of another command is unknown here.
  r = Ctl({"reload", "--preempt", "--server", "127.0.0.1:1"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(Contains(r.err, "'--preempt'")) << r.err;

  r = Ctl({"stray", "status", "--server", "127.0.0.1:1"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(Contains(r.err, "unexpected argument 'stray'")) << r.err;

  r = Ctl({});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(Contains(r.err, "no command")) << r.err;

  r = Ferryd({"--bogus", "--listen", "127.0.0.1:0"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(Contains(r.err, "unknown flag '--bogus'")) << r.err;

  r = Ferryd({"--listen", "127.0.0.1:0", "stray"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(Contains(r.err, "'stray'")) << r.err;

  // A bad value is reported as such, even beside an unexpected argument.
  r = Ferryd({"stray", "--backend", "gpu", "--listen", "127.0.0.1:0"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(Contains(r.err, "--backend")) << r.err;
}

TEST_F(CliTest, BadValuesAreUsageErrors) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> ctl_cases = {
      {{"status", "-o", "xml"}, "--output"},
      {{"rebind", "5000", "train"}, "GPU"},
      {{"rebind", "0", "train", "--preempt", "--drain"}, "--preempt"},
      {{"rebind", "0", "train", "--migrate", "--drain"}, "--migrate"},
      {{"rebind", "0", "train", "--grace=soon"}, "--grace"},
      {{"rebind", "0"}, "POOL"},
      {{"drain"}, "GPU"},
      {{"undrain", "x"}, "GPU"},
      {{"status", "extra"}, "'extra'"},
  };
  for (const auto& [args, named] : ctl_cases) {
    std::vector<std::string> argv = args;
    argv.push_back("--server=127.0.0.1:1");
    Result r = Ctl(argv);
    EXPECT_EQ(r.code, 2) << args.front() << " " << args.back();
    EXPECT_TRUE(Contains(r.err, named)) << r.err;
  }
  // No server anywhere: a usage error that says how to give one.
  Result r = Ctl({"status"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(Contains(r.err, "--server")) << r.err;

  const std::vector<std::pair<std::vector<std::string>, std::string>> ferryd_cases = {
      {{"--backend", "gpu"}, "--backend"},
      {{"--host-devices", "0"}, "--host-devices"},
      {{"--host-devices=65"}, "--host-devices"},
      {{"--host-memory", "0"}, "--host-memory"},
      {{"--module-cache=lots"}, "--module-cache"},
      {{"--log-level", "loud"}, "--log-level"},
      {{"--test-fake-clock", "yesterday"}, "--test-fake-clock"},
      {{"--busy-poll", "1001"}, "microseconds from 0 (off) to 1000"},
      {{"--busy-poll=-1"}, "--busy-poll"},
      {{"--busy-poll", "50ms"}, "--busy-poll"},
      {{"--listen"}, "--listen"},
      {{"--backend", "host"}, "--listen"},  // no address anywhere
  };
  for (const auto& [args, named] : ferryd_cases) {
    std::vector<std::string> argv = args;
    if (named != "--listen") argv.insert(argv.end(), {"--listen", "127.0.0.1:0"});
    Result d = Ferryd(argv);
    EXPECT_EQ(d.code, 2) << args.front();
    EXPECT_TRUE(Contains(d.err, named)) << d.err;
  }
}

// Access settings: plain TCP off loopback only on purpose, TLS flags in
// pairs, no auth and a token file not both, a token file that must load.
TEST_F(CliTest, AccessFlagsAreCheckedAtStart) {
  Result d = Ferryd({"--listen", "0.0.0.0:0", "--backend", "host"});
  EXPECT_EQ(d.code, 2);
  EXPECT_TRUE(Contains(d.err, "without TLS")) << d.err;
  EXPECT_TRUE(Contains(d.err, "--no-tls")) << d.err;
  // /metrics carries tokens and tenants' names: the same rule.
  d = Ferryd({"--listen", "127.0.0.1:0", "--backend", "host", "--metrics-listen", "0.0.0.0:0"});
  EXPECT_EQ(d.code, 2);
  EXPECT_TRUE(Contains(d.err, "--metrics-listen 0.0.0.0:0 without TLS")) << d.err;
  EXPECT_TRUE(Contains(d.err, "--no-tls")) << d.err;
  d = Ferryd({"--listen", "127.0.0.1:0", "--backend", "host", "--metrics-listen", "nowhere"});
  EXPECT_EQ(d.code, 2);
  EXPECT_TRUE(Contains(d.err, "nowhere")) << d.err;
  d = Ferryd({"--listen", "127.0.0.1:0", "--backend", "host", "--metrics-sessions"});
  EXPECT_EQ(d.code, 2);
  EXPECT_TRUE(Contains(d.err, "--metrics-sessions needs --metrics-listen")) << d.err;
  d = Ferryd({"--listen", "127.0.0.1:0", "--backend", "host", "--tls-cert", "c.pem"});
  EXPECT_EQ(d.code, 2);
  EXPECT_TRUE(Contains(d.err, "--tls-cert and --tls-key go together")) << d.err;
  d = Ferryd({"--listen", "127.0.0.1:0", "--backend", "host", "--no-auth", "--token-file", "t"});
  EXPECT_EQ(d.code, 2);
  EXPECT_TRUE(Contains(d.err, "--no-auth")) << d.err;
  d = Ferryd(
      {"--listen", "127.0.0.1:0", "--backend", "host", "--token-file", dir_ + "/missing.toml"});
  EXPECT_EQ(d.code, 1);
  EXPECT_TRUE(Contains(d.err, "missing.toml")) << d.err;
  // MPS enforces shares only where it runs: a process per session, the
  // cuda backend, the control daemon's pipe.
  d = Ferryd({"--listen", "127.0.0.1:0", "--backend", "host", "--compute-sharing", "mps",
              "--sessions-in-process"});
  EXPECT_EQ(d.code, 2);
  EXPECT_TRUE(Contains(d.err, "needs a process per session")) << d.err;
  d = Ferryd({"--listen", "127.0.0.1:0", "--backend", "host", "--compute-sharing", "mps"});
  EXPECT_EQ(d.code, 1);
  EXPECT_TRUE(Contains(d.err, "needs the cuda backend")) << d.err;
  d = Ferryd({"--listen", "127.0.0.1:0", "--backend", "host", "--unix-group", "no-such-group-x"});
  EXPECT_EQ(d.code, 2);
  EXPECT_TRUE(Contains(d.err, "no-such-group-x")) << d.err;
  // A cluster needs etcd, a name and pools; the cluster flags need --etcd.
  d = Ferryd({"--listen", "127.0.0.1:0", "--backend", "host", "--name", "a"});
  EXPECT_EQ(d.code, 2);
  EXPECT_TRUE(Contains(d.err, "pass --etcd")) << d.err;
  d = Ferryd({"--listen", "127.0.0.1:0", "--backend", "host", "--etcd", "http://127.0.0.1:1"});
  EXPECT_EQ(d.code, 2);
  EXPECT_TRUE(Contains(d.err, "--name")) << d.err;
  d = Ferryd({"--listen", "127.0.0.1:0", "--backend", "host", "--etcd", "http://127.0.0.1:1",
              "--name", "a/b"});
  EXPECT_EQ(d.code, 2);
  EXPECT_TRUE(Contains(d.err, "server name 'a/b'")) << d.err;
  // No pools here, and none from the cluster (its etcd does not answer).
  d = Ferryd({"--listen", "127.0.0.1:0", "--backend", "host", "--etcd", "http://127.0.0.1:1",
              "--name", "a"});
  EXPECT_EQ(d.code, 1);
  EXPECT_TRUE(Contains(d.err, "no pools")) << d.err;
  EXPECT_TRUE(Contains(d.err, "ferryctl apply")) << d.err;
  d = Ferryd({"--listen", "127.0.0.1:0", "--backend", "host", "--etcd", "https://127.0.0.1:1",
              "--name", "a"});
  EXPECT_EQ(d.code, 2);
  EXPECT_TRUE(Contains(d.err, "https")) << d.err;
  Result ctl = Ctl({"status", "--etcd", "http://127.0.0.1:1"});
  EXPECT_EQ(ctl.code, 1);
  EXPECT_TRUE(Contains(ctl.err, "cannot read the cluster from etcd")) << ctl.err;
  ctl = Ctl({"token", "create", "--token-file", dir_ + "/t.toml", "--pools", "a b"});
  EXPECT_EQ(ctl.code, 2);
  EXPECT_TRUE(Contains(ctl.err, "bad pool name")) << ctl.err;
  ctl = Ctl({"token", "create", "--pools", "a"});
  EXPECT_EQ(ctl.code, 2);
  EXPECT_TRUE(Contains(ctl.err, "--token-file")) << ctl.err;
}

// Serving plain TCP with nobody authenticated, off loopback, is allowed on
// purpose (--no-tls) and said loudly.
TEST_F(CliTest, FerrydWithoutAuthenticationOffLoopbackSaysSoLoudly) {
  std::string error;
  ferryd_ = test::StartFerryd(FERRY_TEST_FERRYD,
                              {"--listen", "0.0.0.0:0", "--no-tls", "--backend", "host"}, dir_,
                              kReadyTimeout, &address_, &error);
  ASSERT_TRUE(ferryd_.has_value()) << "cannot start ferryd: " << error;
  EXPECT_TRUE(Contains(ferryd_->Stderr(), "*** NO AUTHENTICATION on 0.0.0.0:"))
      << ferryd_->Stderr();
}

TEST_F(CliTest, StatusWithTheServerBeforeOrAfterTheCommand) {
  ASSERT_NO_FATAL_FAILURE(StartFerryd());
  const std::vector<std::vector<std::string>> forms = {
      {"--server", address_, "status"},   {"--server=" + address_, "status"},
      {"-s", address_, "status"},         {"status", "--server", address_},
      {"status", "--server=" + address_},
  };
  for (const auto& args : forms) {
    Result r = Ctl(args);
    EXPECT_EQ(r.code, 0) << args.front() << "\n" << r.err;
    EXPECT_TRUE(Contains(r.out, "server " + address_ + " (host backend): 0 session(s)"))
        << args.front() << "\n"
        << r.out;
  }
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"status", "-o", "json", "--server", address_},
           {"--server", address_, "status", "--output=json"},
       }) {
    Result r = Ctl(args);
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_TRUE(Contains(r.out, "\"backend\":\"host\"")) << r.out;
    EXPECT_TRUE(Contains(r.out, "\"sessions\":[]")) << r.out;
  }
  // FERRY_SERVER is the default; --server wins over it.
  Result r = Ctl({"status"}, {{"FERRY_SERVER", address_}});
  EXPECT_EQ(r.code, 0) << r.err;
  r = Ctl({"status", "--server", address_}, {{"FERRY_SERVER", "127.0.0.1:1"}});
  EXPECT_EQ(r.code, 0) << r.err;
  // A failure that is not a usage error: ferryd has no config to reload.
  r = Ctl({"reload", "--server", address_});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(Contains(r.err, "--config")) << r.err;
}

TEST_F(CliTest, UnreachableServerExitsOne) {
  // Port 1 on loopback: nothing listens there.
  Result r = Ctl({"status", "--server", "127.0.0.1:1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_FALSE(r.err.empty());
}

}  // namespace
}  // namespace ferry
