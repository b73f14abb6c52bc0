// What an operator relies on, against the built programs: ferryd's readiness
// protocol under systemd (Type=notify), its log lines (--log-format json, the
// session start and end lines with who, what, how long, bytes and peak
// memory), and ferry-run's client config. The packages themselves:
// packaging_test.cc.
//
// Paths come from CMake as compile definitions (CMakeLists.txt).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "ops_support.h"
#include "test/support/ferryd.h"
#include "test/support/wait.h"

namespace ferry::test {
namespace {

using namespace std::chrono_literals;
using e2e::JsonValue;

constexpr auto kNotifyTimeout = 30s;
// The demo's three buffers of 1M floats: the session's peak device memory.
constexpr double kVectorAddPeakBytes = 3.0 * (1 << 20) * sizeof(float);

void WriteFile(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path) << text;
}

class ServiceNotifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("notify");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    if (ferryd_.has_value() && ferryd_->running()) {
      ferryd_->Kill(SIGKILL);
      ferryd_->Wait(10s);
    }
  }

  // Starts ferryd with NOTIFY_SOCKET = `notify`, no --ready-file: the
  // notification is the only sign of readiness.
  void StartFerryd(const NotifySocket& notify, std::vector<std::string> args) {
    args.insert(args.begin(), FERRY_TEST_FERRYD);
    std::string error;
    ferryd_ =
        ChildProcess::Start(args, {{"NOTIFY_SOCKET", notify.address()}}, dir_ + "/ferryd", &error);
    ASSERT_TRUE(ferryd_.has_value()) << error;
  }

  // The next notification, which must hold `key`=... .
  std::string Expect(NotifySocket& notify, const std::string& key) {
    std::optional<std::string> message = notify.Receive(kNotifyTimeout);
    if (!message.has_value()) {
      ADD_FAILURE() << "no notification within " << kNotifyTimeout.count() << " s; waiting for "
                    << key << "\n"
                    << ferryd_->Describe();
      return "";
    }
    EXPECT_TRUE(NotifyValue(*message, key).has_value()) << "wanted " << key << ", got:\n"
                                                        << *message;
    return *message;
  }

  std::string dir_;
  std::optional<ChildProcess> ferryd_;
};

TEST_F(ServiceNotifyTest, ReadyArrivesOnceTheListenerAccepts) {
  NotifySocket notify(dir_ + "/notify.sock");
  ASSERT_TRUE(notify.ok());
  StartFerryd(notify, {"--listen", "127.0.0.1:0", "--backend", "host"});
  const std::string ready = Expect(notify, "READY");
  EXPECT_EQ(NotifyValue(ready, "READY"), "1");
  // STATUS names the bound address: the port was 0.
  const std::optional<std::string> status = NotifyValue(ready, "STATUS");
  ASSERT_TRUE(status.has_value()) << ready;
  const std::string prefix = "listening on ";
  ASSERT_EQ(status->rfind(prefix, 0), 0u) << *status;
  const std::string address = status->substr(prefix.size());
  // Ready means serving: the first ferryctl, with no retry, gets an answer.
  RunResult ctl =
      RunToEnd({FERRY_TEST_FERRYCTL, "status", "--server", address}, {}, dir_ + "/ferryctl");
  EXPECT_TRUE(ctl.status.success()) << ctl.Describe();
  ferryd_->Kill(SIGTERM);
  Expect(notify, "STOPPING");
  EXPECT_TRUE(ferryd_->Wait(30s).success()) << ferryd_->Describe();
}

TEST_F(ServiceNotifyTest, ReloadsAreBracketedAndAReloadThatFailsStillEndsReady) {
  NotifySocket notify(dir_ + "/notify.sock");
  ASSERT_TRUE(notify.ok());
  const std::string config = dir_ + "/ferryd.toml";
  WriteFile(config, "[server]\nlisten = [\"127.0.0.1:0\"]\nbackend = \"host\"\n");
  StartFerryd(notify, {"--config", config});
  Expect(notify, "READY");

  ferryd_->Kill(SIGHUP);
  const std::string reloading = Expect(notify, "RELOADING");
  const std::optional<std::string> usec = NotifyValue(reloading, "MONOTONIC_USEC");
  ASSERT_TRUE(usec.has_value()) << reloading;
  EXPECT_GT(std::stoull(*usec), 0u);
  EXPECT_NE(NotifyValue(Expect(notify, "READY"), "STATUS")->find("reloaded"), std::string::npos);

  // A bad file is rejected; ferryd serves on with the old config and says so.
  WriteFile(config, "[server\n");
  ferryd_->Kill(SIGHUP);
  Expect(notify, "RELOADING");
  const std::string after_failure = Expect(notify, "READY");
  EXPECT_NE(after_failure.find("reload rejected"), std::string::npos) << after_failure;

  ferryd_->Kill(SIGTERM);
  Expect(notify, "STOPPING");
  EXPECT_TRUE(ferryd_->Wait(30s).success()) << ferryd_->Describe();
}

TEST_F(ServiceNotifyTest, AnAbstractSocketIsReached) {
  NotifySocket notify("@" + std::filesystem::path(dir_).filename().string() + "-notify");
  ASSERT_TRUE(notify.ok());
  StartFerryd(notify, {"--listen", "127.0.0.1:0", "--backend", "host"});
  EXPECT_EQ(NotifyValue(Expect(notify, "READY"), "READY"), "1");
}

// The demo program through ferry: three 4 MiB buffers, two copies in, one out.
RunResult RunVectorAdd(const std::string& dir, const std::string& address,
                       const std::map<std::string, std::string>& extra_env = {}) {
  return RunToEnd({FERRY_TEST_VECTOR_ADD, FERRY_TEST_VECTOR_ADD_FATBIN},
                  ClientEnv(FERRY_TEST_CLIENT_LIB_DIR, address, extra_env), dir + "/vector_add");
}

double Number(const JsonValue& line, const std::string& key) {
  const JsonValue* value = line.Find(key);
  EXPECT_TRUE(value != nullptr && value->is_number()) << key;
  return value != nullptr ? value->number : -1;
}

std::string String(const JsonValue& line, const std::string& key) {
  const JsonValue* value = line.Find(key);
  EXPECT_TRUE(value != nullptr && value->is_string()) << key;
  return value != nullptr ? value->string : "";
}

TEST(LogFormatTest, EveryJsonLineParsesAndTheSessionLinesSayWhoWhatHowLongAndHowMuch) {
  const std::string dir = MakeTempDir("jsonlog");
  ASSERT_FALSE(dir.empty());
  const std::string tokens = dir + "/tokens.toml";
  RunResult created = RunToEnd({FERRY_TEST_FERRYCTL, "token", "create", "--token-file", tokens,
                                "--pools", "*", "--name", "alice"},
                               {}, dir + "/token");
  ASSERT_TRUE(created.status.success()) << created.Describe();
  const std::string secret = created.out.substr(0, created.out.find('\n'));

  std::string address, error;
  std::optional<ChildProcess> ferryd =
      StartFerryd(FERRY_TEST_FERRYD,
                  {"--listen", "127.0.0.1:0", "--backend", "host", "--host-kernels",
                   FERRY_TEST_VECTOR_ADD_HOST, "--token-file", tokens, "--log-format", "json"},
                  dir, 30s, &address, &error);
  ASSERT_TRUE(ferryd.has_value()) << error;
  const RunResult demo = RunVectorAdd(dir, address, {{"FERRY_TOKEN", secret}});
  EXPECT_TRUE(demo.status.success()) << demo.Describe();
  // The end line comes once ferryd has seen the client go.
  ASSERT_TRUE(WaitForEvent(*ferryd, "session_end", 30s, &error).has_value()) << error;
  ASSERT_EQ(StopFerryd("ferryd", ferryd, 30s), "");

  const std::optional<std::vector<JsonValue>> lines = ParseJsonLines(ferryd->Stderr(), &error);
  ASSERT_TRUE(lines.has_value()) << error;
  ASSERT_GE(lines->size(), 4u) << ferryd->Stderr();
  for (const JsonValue& line : *lines) {
    for (const char* key : {"time", "level", "program", "msg"}) {
      EXPECT_TRUE(line.Find(key) != nullptr && line.Find(key)->is_string()) << key;
    }
    // ferryd's own, or its session worker's (session_worker.h).
    EXPECT_GT(Number(line, "pid"), 0);
  }
  const JsonValue* start = FindEvent(*lines, "session_start");
  const JsonValue* end = FindEvent(*lines, "session_end");
  ASSERT_NE(start, nullptr) << ferryd->Stderr();
  ASSERT_NE(end, nullptr) << ferryd->Stderr();
  for (const JsonValue* line : {start, end}) {
    EXPECT_EQ(Number(*line, "client_pid"), demo.pid);
    EXPECT_EQ(String(*line, "client_program"), "vector_add");
    EXPECT_FALSE(String(*line, "client_host").empty());
    EXPECT_EQ(String(*line, "peer").rfind("127.0.0.1:", 0), 0u);
    EXPECT_EQ(String(*line, "token_name"), "alice");
    EXPECT_EQ(String(*line, "token_id").size(), 16u);
    EXPECT_EQ(String(*line, "devices"), "gpu0");
  }
  EXPECT_EQ(Number(*start, "session"), Number(*end, "session"));
  EXPECT_GE(Number(*end, "duration_ms"), 0);
  EXPECT_EQ(Number(*end, "peak_bytes_allocated"), kVectorAddPeakBytes);
  // Two buffers went in and one came out, plus the calls and replies.
  EXPECT_GT(Number(*end, "bytes_from_client"), 2 * kVectorAddPeakBytes / 3);
  EXPECT_GT(Number(*end, "bytes_to_client"), kVectorAddPeakBytes / 3);
  EXPECT_LT(Number(*end, "bytes_to_client"), 2 * kVectorAddPeakBytes / 3);
  EXPECT_FALSE(String(*end, "reason").empty());
}

TEST(LogFormatTest, TextLinesCarryTheSameFieldsAsKeyValuePairs) {
  const std::string dir = MakeTempDir("textlog");
  ASSERT_FALSE(dir.empty());
  std::string address, error;
  std::optional<ChildProcess> ferryd = StartFerryd(FERRY_TEST_FERRYD,
                                                   {"--listen", "127.0.0.1:0", "--backend", "host",
                                                    "--host-kernels", FERRY_TEST_VECTOR_ADD_HOST},
                                                   dir, 30s, &address, &error);
  ASSERT_TRUE(ferryd.has_value()) << error;
  const RunResult demo = RunVectorAdd(dir, address);
  EXPECT_TRUE(demo.status.success()) << demo.Describe();
  ASSERT_TRUE(WaitFor(
      [&] { return ferryd->Stderr().find(" event=session_end ") != std::string::npos; }, 30s, 10ms))
      << ferryd->Stderr();
  ASSERT_EQ(StopFerryd("ferryd", ferryd, 30s), "");
  std::string end_line;
  std::istringstream lines(ferryd->Stderr());
  for (std::string line; std::getline(lines, line);) {
    if (line.find(" event=session_end ") != std::string::npos) end_line = line;
  }
  ASSERT_FALSE(end_line.empty()) << ferryd->Stderr();
  for (const std::string& field :
       {std::string(" client_pid=") + std::to_string(demo.pid) + " ",
        std::string(" client_program=vector_add "), std::string(" devices=gpu0 "),
        std::string(" peak_bytes_allocated=") +
            std::to_string(static_cast<uint64_t>(kVectorAddPeakBytes)) + " "}) {
    EXPECT_NE(end_line.find(field), std::string::npos) << field << " in\n" << end_line;
  }
  // A value with spaces is quoted, so the line splits back into its fields.
  EXPECT_NE(end_line.find(" reason=\""), std::string::npos) << end_line;
}

TEST(LogFormatTest, APreemptedSessionsEndLineNamesItsSliceAndThePreemption) {
  const std::string dir = MakeTempDir("preemptlog");
  ASSERT_FALSE(dir.empty());
  const std::string config = dir + "/ferryd.toml";
  WriteFile(config,
            "[server]\nlisten = [\"127.0.0.1:0\"]\nbackend = \"host\"\ndefault_pool = \"dev\"\n"
            "[[gpu]]\nindex = 0\nmemory = \"1GiB\"\n"
            "[pool.dev]\nslices_per_gpu = 2\n[pool.train]\nslices_per_gpu = 1\n");
  std::string address, error;
  std::optional<ChildProcess> ferryd = StartFerryd(
      FERRY_TEST_FERRYD, {"--config", config, "--log-format", "json"}, dir, 30s, &address, &error);
  ASSERT_TRUE(ferryd.has_value()) << error;
  // pool_client holds a slice (and 1 MiB on it) until its calls fail.
  std::optional<ChildProcess> holder =
      ChildProcess::Start({FERRY_TEST_POOL_CLIENT, "hold", dir + "/release"},
                          ClientEnv(FERRY_TEST_CLIENT_LIB_DIR, address), dir + "/holder", &error);
  ASSERT_TRUE(holder.has_value()) << error;
  ASSERT_TRUE(
      WaitFor([&] { return holder->Stdout().find("READY") != std::string::npos; }, 60s, 10ms))
      << holder->Describe();
  RunResult rebind =
      RunToEnd({FERRY_TEST_FERRYCTL, "rebind", "0", "train", "--preempt", "--server", address}, {},
               dir + "/rebind");
  ASSERT_TRUE(rebind.status.success()) << rebind.Describe();
  EXPECT_EQ(holder->Wait(60s).code, 4) << holder->Describe();  // its calls failed
  const std::optional<std::vector<JsonValue>> lines =
      WaitForEvent(*ferryd, "session_end", 30s, &error);
  ASSERT_TRUE(lines.has_value()) << error;
  ASSERT_EQ(StopFerryd("ferryd", ferryd, 30s), "");
  const JsonValue* end = FindEvent(*lines, "session_end");
  ASSERT_NE(end, nullptr) << ferryd->Stderr();
  EXPECT_EQ(String(*end, "pool"), "dev");
  EXPECT_EQ(String(*end, "devices"), "gpu0:slice1/2");
  EXPECT_EQ(Number(*end, "peak_bytes_allocated"), 1 << 20);
  EXPECT_EQ(String(*end, "reason").rfind("preempted: ", 0), 0u) << String(*end, "reason");
  EXPECT_EQ(Number(*end, "client_pid"), holder->pid());
}

// A session's worker process that dies sends no final figures: its end line
// comes anyway, saying how it died.
TEST(LogFormatTest, ASessionWhoseWorkerDiedStillGetsAnEndLine) {
  const std::string dir = MakeTempDir("workerlog");
  ASSERT_FALSE(dir.empty());
  std::string address, error;
  std::optional<ChildProcess> ferryd = StartFerryd(
      FERRY_TEST_FERRYD, {"--listen", "127.0.0.1:0", "--backend", "host", "--log-format", "json"},
      dir, 30s, &address, &error);
  ASSERT_TRUE(ferryd.has_value()) << error;
  std::optional<ChildProcess> holder =
      ChildProcess::Start({FERRY_TEST_POOL_CLIENT, "hold", dir + "/release"},
                          ClientEnv(FERRY_TEST_CLIENT_LIB_DIR, address), dir + "/holder", &error);
  ASSERT_TRUE(holder.has_value()) << error;
  ASSERT_TRUE(
      WaitFor([&] { return holder->Stdout().find("READY") != std::string::npos; }, 60s, 10ms))
      << holder->Describe();
  // The start line comes from the session's worker process: its pid. It may
  // follow the client's READY (it is written after the handshake's reply).
  std::optional<std::vector<JsonValue>> lines = WaitForEvent(*ferryd, "session_start", 30s, &error);
  ASSERT_TRUE(lines.has_value()) << error;
  const JsonValue* start = FindEvent(*lines, "session_start");
  const auto worker = static_cast<pid_t>(Number(*start, "pid"));
  ASSERT_NE(worker, ferryd->pid()) << "the session did not run in a worker process";
  ASSERT_EQ(kill(worker, SIGKILL), 0);
  EXPECT_NE(holder->Wait(60s).code, 0) << holder->Describe();
  lines = WaitForEvent(*ferryd, "session_end", 30s, &error);
  ASSERT_TRUE(lines.has_value()) << error;
  ASSERT_EQ(StopFerryd("ferryd", ferryd, 30s), "");
  const JsonValue* end = FindEvent(*lines, "session_end");
  ASSERT_NE(end, nullptr) << ferryd->Stderr();
  EXPECT_EQ(Number(*end, "pid"), ferryd->pid());
  EXPECT_EQ(Number(*end, "client_pid"), holder->pid());
  EXPECT_NE(String(*end, "reason").find("worker process killed by signal 9"), std::string::npos)
      << String(*end, "reason");
}

// ferryd stopping ends every session: each still gets its end line.
TEST(LogFormatTest, SessionsEndedByFerrydStoppingGetEndLines) {
  const std::string dir = MakeTempDir("stoplog");
  ASSERT_FALSE(dir.empty());
  std::string address, error;
  std::optional<ChildProcess> ferryd = StartFerryd(
      FERRY_TEST_FERRYD, {"--listen", "127.0.0.1:0", "--backend", "host", "--log-format", "json"},
      dir, 30s, &address, &error);
  ASSERT_TRUE(ferryd.has_value()) << error;
  std::optional<ChildProcess> holder =
      ChildProcess::Start({FERRY_TEST_POOL_CLIENT, "hold", dir + "/release"},
                          ClientEnv(FERRY_TEST_CLIENT_LIB_DIR, address), dir + "/holder", &error);
  ASSERT_TRUE(holder.has_value()) << error;
  ASSERT_TRUE(WaitForEvent(*ferryd, "session_start", 30s, &error).has_value()) << error;
  ASSERT_EQ(StopFerryd("ferryd", ferryd, 30s), "");
  EXPECT_NE(holder->Wait(60s).code, 0) << holder->Describe();

  const std::optional<std::vector<JsonValue>> lines = ParseJsonLines(ferryd->Stderr(), &error);
  ASSERT_TRUE(lines.has_value()) << error;
  const JsonValue* end = FindEvent(*lines, "session_end");
  ASSERT_NE(end, nullptr) << ferryd->Stderr();
  EXPECT_EQ(Number(*end, "client_pid"), holder->pid());
  EXPECT_FALSE(String(*end, "reason").empty());
}

class FerryRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("ferry_run");
    ASSERT_FALSE(dir_.empty());
    home_ = dir_ + "/home";
  }
  // ferry-run PROGRAM... with HOME = home_ (XDG_CONFIG_HOME unset) and `env`.
  RunResult FerryRun(const std::vector<std::string>& args,
                     std::map<std::string, std::string> env = {}) {
    std::vector<std::string> argv = {FERRY_TEST_FERRY_RUN};
    argv.insert(argv.end(), args.begin(), args.end());
    env.emplace("HOME", home_);
    env.emplace("XDG_CONFIG_HOME", "");
    return RunToEnd(argv, env, dir_ + "/run" + std::to_string(runs_++));
  }
  std::string dir_, home_;
  int runs_ = 0;
};

// NAME=value lines of env(1) as a map.
std::map<std::string, std::string> EnvOutput(const std::string& out) {
  std::map<std::string, std::string> vars;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) vars[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return vars;
}

TEST_F(FerryRunTest, TheUsersConfigSetsVariablesTheEnvironmentWinsAndTheStubComesFirst) {
  WriteFile(home_ + "/.config/ferry/client.toml",
            "# a comment\n"
            "server = \"gpu-host:7070\"\n"
            "token_file = \"~/.ferry/token\"\n"
            "pool = \"dev\"\n"
            "gpus = 2\n"
            "allow_plain_token = true\n"
            "call_timeout = 600\n"
            "busy_poll = 20\n");
  RunResult run = FerryRun({"/usr/bin/env"}, {{"FERRY_POOL", "train"}, {"LD_LIBRARY_PATH", "/x"}});
  ASSERT_TRUE(run.status.success()) << run.Describe();
  std::map<std::string, std::string> vars = EnvOutput(run.out);
  EXPECT_EQ(vars["FERRY_SERVER"], "gpu-host:7070");
  EXPECT_EQ(vars["FERRY_TOKEN_FILE"], home_ + "/.ferry/token");
  EXPECT_EQ(vars["FERRY_POOL"], "train");  // the environment wins
  EXPECT_EQ(vars["FERRY_GPUS"], "2");
  EXPECT_EQ(vars["FERRY_ALLOW_PLAIN_TOKEN"], "1");
  EXPECT_EQ(vars["FERRY_CALL_TIMEOUT"], "600");
  EXPECT_EQ(vars["FERRY_BUSY_POLL"], "20");
  const std::string stub_dir =
      std::filesystem::canonical(FERRY_TEST_CLIENT_LIB_DIR).lexically_normal().string();
  EXPECT_EQ(vars["LD_LIBRARY_PATH"], stub_dir + ":/x");

  // --config names another file; it must exist.
  WriteFile(dir_ + "/other.toml", "server = \"other:1\"\n");
  run = FerryRun({"--config", dir_ + "/other.toml", "/usr/bin/env"});
  ASSERT_TRUE(run.status.success()) << run.Describe();
  EXPECT_EQ(EnvOutput(run.out)["FERRY_SERVER"], "other:1");
  run = FerryRun({"--config", dir_ + "/missing.toml", "/usr/bin/env"});
  EXPECT_EQ(run.status.code, 2) << run.Describe();
}

TEST_F(FerryRunTest, AMistakeInTheConfigIsRefusedNamingFileAndLine) {
  const std::string config = home_ + "/.config/ferry/client.toml";
  WriteFile(config, "server = \"gpu-host:7070\"\nsevrer = \"typo:1\"\n");
  RunResult run = FerryRun({"/usr/bin/env"});
  EXPECT_EQ(run.status.code, 2) << run.Describe();
  EXPECT_NE(run.err.find(config + ":2: unknown key 'sevrer'"), std::string::npos) << run.err;

  WriteFile(config, "gpus = \"two\"\n");
  run = FerryRun({"/usr/bin/env"});
  EXPECT_EQ(run.status.code, 2) << run.Describe();
  EXPECT_NE(run.err.find(config + ":1: gpus must be an integer"), std::string::npos) << run.err;

  // As env(1): 127 for a program that is not there.
  WriteFile(config, "gpus = 2\n");
  run = FerryRun({dir_ + "/no-such-program"});
  EXPECT_EQ(run.status.code, 127) << run.Describe();
  EXPECT_NE(run.err.find("cannot run " + dir_ + "/no-such-program"), std::string::npos) << run.err;
}

TEST_F(FerryRunTest, RunsAProgramThroughFerry) {
  std::string address, error;
  std::optional<ChildProcess> ferryd = StartFerryd(FERRY_TEST_FERRYD,
                                                   {"--listen", "127.0.0.1:0", "--backend", "host",
                                                    "--host-kernels", FERRY_TEST_VECTOR_ADD_HOST},
                                                   dir_, 30s, &address, &error);
  ASSERT_TRUE(ferryd.has_value()) << error;
  WriteFile(home_ + "/.config/ferry/client.toml", "server = \"" + address + "\"\n");
  RunResult run = FerryRun({FERRY_TEST_VECTOR_ADD, FERRY_TEST_VECTOR_ADD_FATBIN});
  EXPECT_TRUE(run.status.success()) << run.Describe();
  EXPECT_NE(run.out.find("PASS"), std::string::npos) << run.out;
  EXPECT_EQ(StopFerryd("ferryd", ferryd, 30s), "");
}

}  // namespace
}  // namespace ferry::test
