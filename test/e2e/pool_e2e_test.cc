// End-to-end tests of the GPU pool: real client processes
// (pool_client through ferry's libcuda.so.1) against `ferryd --config FILE
// --backend host`, observed through `ferryctl status -o json`. Schedules run
// on ferryd's test-only fake clock (--test-fake-clock), moved by `ferryctl
// test-advance-clock`, so no test waits for 20:00. Every wait is bounded;
// pass or fail never depends on how long something took.
#include <capnp/message.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "common/frame.h"
#include "common/transport.h"
#include "mini_json.h"
#include "test/support/child_process.h"
#include "test/support/ferryd.h"
#include "test/support/pool_config.h"
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
constexpr auto kConditionTimeout = 15s;
constexpr auto kPollInterval = 30ms;

constexpr uint64_t kGpuMemory = 64ull << 20;  // [[gpu]] memory = "64MiB"

// The day/night example on one 64 MiB GPU, in Shanghai time.
std::string DayNightConfig(const std::string& night_policy) {
  test::DayNightConfig config;
  config.server_keys =
      std::string("backend = \"host\"\nhost_kernels = [\"") + FERRY_E2E_HOST_KERNELS + "\"]\n";
  config.gpu_memory = "64MiB";
  config.night_policy = night_policy;
  return test::DayNightToml(config);
}

// 19:59:00 in Shanghai, one minute before the night window.
constexpr char kBeforeNight[] = "2026-03-10T19:59:00+08:00";

std::string MakeTestDir() { return test::MakeTempDir("ferry-pool-e2e-"); }

class PoolTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (auto& [name, program] : programs_) {
      if (program.running()) program.Kill(SIGKILL);
    }
    const std::string stop_failed = test::StopFerryd("ferryd", ferryd_, kStopTimeout);
    EXPECT_TRUE(stop_failed.empty()) << stop_failed;
    if (HasFailure()) {
      if (ferryd_.has_value())
        std::cerr << "ferryd log:\n" << Tail(ferryd_->Stderr(), 12000) << "\n";
      for (auto& [name, program] : programs_) std::cerr << program.Describe(3000) << "\n";
      std::cerr << "test files kept in " << dir_ << "\n";
    } else if (!dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

  void WriteConfig(const std::string& text) {
    ASSERT_TRUE(test::WriteTextFile(config_path_, text)) << config_path_;
  }

  // Starts ferryd on `config` (optionally on the fake clock) and waits for
  // its ready file.
  void StartFerryd(const std::string& config, const char* fake_clock = nullptr,
                   const std::vector<std::string>& extra_args = {}) {
    dir_ = MakeTestDir();
    ASSERT_FALSE(dir_.empty());
    config_path_ = dir_ + "/ferryd.toml";
    WriteConfig(config);
    std::vector<std::string> args = {"--config", config_path_, "--listen", "127.0.0.1:0"};
    if (fake_clock != nullptr) {
      args.push_back("--test-fake-clock");
      args.push_back(fake_clock);
    }
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::string error;
    ferryd_ = test::StartFerryd(FERRY_E2E_FERRYD, args, dir_, kReadyTimeout, &address_, &error);
    ASSERT_TRUE(ferryd_.has_value()) << error;
  }

  std::map<std::string, std::string> ClientEnv(const std::map<std::string, std::string>& extra) {
    return test::ClientEnv(FERRY_E2E_CLIENT_LIB_DIR, address_, extra);
  }

  // Starts `pool_client hold` as `name`; it releases its slice when the file
  // dir_/name.release appears.
  ChildProcess* StartHolder(const std::string& name,
                            const std::map<std::string, std::string>& env = {}) {
    std::string error;
    std::optional<ChildProcess> child = ChildProcess::Start(
        {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_pool_client", "hold", ReleaseFile(name)},
        ClientEnv(env), dir_ + "/" + name, &error);
    if (!child.has_value()) {
      ADD_FAILURE() << "cannot start " << name << ": " << error;
      return nullptr;
    }
    return &programs_.emplace(name, std::move(*child)).first->second;
  }

  // StartHolder, then waits until the holder printed READY (it holds its
  // slice); nullptr (with a failure) if it does not get there.
  ChildProcess* StartReadyHolder(const std::string& name,
                                 const std::map<std::string, std::string>& env = {}) {
    ChildProcess* holder = StartHolder(name, env);
    if (holder == nullptr || !WaitForOutput(*holder, "READY\n")) return nullptr;
    return holder;
  }

  // Starts "holder0" to "holder3", each READY with one of the day pool's four
  // slices of GPU 0; `*holders` (when given) receives them in that order.
  void HoldEveryDaySlice(std::vector<ChildProcess*>* holders = nullptr) {
    for (int i = 0; i < 4; ++i) {
      ChildProcess* h = StartReadyHolder("holder" + std::to_string(i));
      ASSERT_NE(h, nullptr);
      if (holders != nullptr) holders->push_back(h);
    }
  }

  // A host-backend ferryd with `gpus` GPUs of 64 MiB and pool "dev" (the
  // default) of `pool_lines`, its sessions in worker processes or in
  // process.
  void StartHostPool(int gpus, const std::string& pool_lines, bool in_process) {
    std::string config = std::string("[server]\nbackend = \"host\"\nhost_kernels = [\"") +
                         FERRY_E2E_HOST_KERNELS + "\"]\ndefault_pool = \"dev\"\n";
    for (int g = 0; g < gpus; ++g) {
      config += "\n[[gpu]]\nindex = " + std::to_string(g) + "\nmemory = \"64MiB\"\n";
    }
    config += "\n[pool.dev]\n" + pool_lines;
    StartFerryd(config, nullptr,
                in_process ? std::vector<std::string>{"--sessions-in-process"}
                           : std::vector<std::string>{});
  }
  // Starts `pool_client turns BYTES dir_/NAME.turn ROUNDS` as `name`: a ring
  // of device pointers followed turn by turn (a turn starts when the test
  // writes dir_/NAME.turnR); with `async`, allocated with cuMemAllocAsync.
  // Null (with a failure) if it does not start.
  ChildProcess* StartTurns(const std::string& name, uint64_t bytes, int rounds,
                           const std::map<std::string, std::string>& env = {}, bool async = false) {
    std::string error;
    std::vector<std::string> argv = {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_pool_client",
                                     "turns", std::to_string(bytes), dir_ + "/" + name + ".turn",
                                     std::to_string(rounds)};
    if (async) argv.push_back("async");
    std::optional<ChildProcess> child =
        ChildProcess::Start(argv, ClientEnv(env), dir_ + "/" + name, &error);
    if (!child.has_value()) {
      ADD_FAILURE() << "cannot start " << name << ": " << error;
      return nullptr;
    }
    return &programs_.emplace(name, std::move(*child)).first->second;
  }
  void Turn(const std::string& name, int round) {
    std::ofstream(dir_ + "/" + name + ".turn" + std::to_string(round)) << "go\n";
  }
  std::string ReleaseFile(const std::string& name) { return dir_ + "/" + name + ".release"; }
  void Release(const std::string& name) { std::ofstream(ReleaseFile(name)) << "go\n"; }

  bool WaitForOutput(ChildProcess& program, const std::string& text) {
    return test::WaitForOutput(program, text, kProgramTimeout, kPollInterval);
  }

  // Runs ferryctl with `args`; its exit code and output.
  int Ferryctl(const std::vector<std::string>& args, std::string* out, std::string* err = nullptr) {
    std::vector<std::string> argv = {FERRY_E2E_FERRYCTL};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back("--server");
    argv.push_back(address_);
    std::string error;
    std::optional<ChildProcess> ctl = ChildProcess::Start(argv, {}, dir_ + "/ferryctl", &error);
    if (!ctl.has_value()) {
      ADD_FAILURE() << error;
      return -1;
    }
    const ExitStatus status = ctl->Wait(10s);
    *out = ctl->Stdout();
    if (err != nullptr) *err = ctl->Stderr();
    return status.exited ? status.code : -1;
  }

  // `ferryctl status -o json`, parsed; its "pool" member.
  std::optional<JsonValue> PoolStatus(std::string* text) {
    if (Ferryctl({"status", "-o", "json"}, text) != 0) return std::nullopt;
    std::optional<JsonValue> json = ParseJson(*text);
    if (!json.has_value() || json->Find("pool") == nullptr) return std::nullopt;
    return *json->Find("pool");
  }

  // Polls the pool status until `done` holds; fails after a bound.
  void WaitForPool(const std::string& what, const std::function<bool(const JsonValue&)>& done) {
    std::string text;
    const bool reached = test::WaitFor(
        [&] {
          std::optional<JsonValue> pool = PoolStatus(&text);
          return pool.has_value() && done(*pool);
        },
        kConditionTimeout, kPollInterval);
    if (reached) return;
    ADD_FAILURE() << "the pool never reached: " << what << "; last status:\n" << text;
  }

  static const JsonValue* Gpu(const JsonValue& pool, int index) {
    const JsonValue* gpus = pool.Find("gpus");
    if (gpus == nullptr || !gpus->is_array() || static_cast<int>(gpus->array.size()) <= index) {
      return nullptr;
    }
    return &gpus->array[index];
  }
  static std::vector<JsonValue> Holders(const JsonValue& pool, int gpu) {
    const JsonValue* g = Gpu(pool, gpu);
    const JsonValue* holders = g != nullptr ? g->Find("holders") : nullptr;
    return holders != nullptr && holders->is_array() ? holders->array : std::vector<JsonValue>{};
  }
  static std::vector<JsonValue> Queue(const JsonValue& pool) {
    const JsonValue* queue = pool.Find("queue");
    return queue != nullptr && queue->is_array() ? queue->array : std::vector<JsonValue>{};
  }
  static const JsonValue* HolderWithPid(const std::vector<JsonValue>& holders, pid_t pid) {
    for (const JsonValue& h : holders) {
      if (NumberMember(&h, "pid") == pid) return &h;
    }
    return nullptr;
  }

  void AdvanceClock(const std::string& by) {
    std::string out;
    ASSERT_EQ(Ferryctl({"test-advance-clock", by}, &out), 0) << out;
  }

  std::string dir_;
  std::string config_path_;
  std::string address_;
  std::optional<ChildProcess> ferryd_;
  std::map<std::string, ChildProcess> programs_;
};

TEST_F(PoolTest, FourSlicesHeldAtOnceAndAFifthRefused) {
  StartFerryd(DayNightConfig(""), kBeforeNight);
  std::vector<ChildProcess*> holders;
  ASSERT_NO_FATAL_FAILURE(HoldEveryDaySlice(&holders));
  for (ChildProcess* h : holders) {
    // Each sees one device of a quarter of the GPU.
    EXPECT_NE(h->Stdout().find("BORROWED devices=1 total=" + std::to_string(kGpuMemory / 4)),
              std::string::npos)
        << h->Describe();
  }
  std::string text;
  std::optional<JsonValue> pool = PoolStatus(&text);
  ASSERT_TRUE(pool.has_value()) << text;
  const std::vector<JsonValue> held = Holders(*pool, 0);
  ASSERT_EQ(held.size(), 4u) << text;
  for (ChildProcess* h : holders) {
    const JsonValue* holder = HolderWithPid(held, h->pid());
    ASSERT_NE(holder, nullptr) << "pid " << h->pid() << " not among the holders:\n" << text;
    EXPECT_EQ(StringMember(holder, "pool"), "dev");
    EXPECT_EQ(NumberMember(holder, "memory_quota"), kGpuMemory / 4);
    EXPECT_EQ(NumberMember(holder, "memory_used"), 1 << 20) << text;  // its 1 MiB
    EXPECT_EQ(StringMember(holder, "mechanism"), "launch-throttle");
    EXPECT_GT(NumberMember(holder, "since_unix_ms"), 0);
    EXPECT_FALSE(StringMember(holder, "host").empty());
  }
  EXPECT_EQ(NumberMember(Gpu(*pool, 0), "free_slices"), 0) << text;
  EXPECT_EQ(StringMember(Gpu(*pool, 0), "window"), "08:00:00-20:00:00 Asia/Shanghai");
  EXPECT_EQ(NumberMember(pool->Find("next_change"), "unix_ms"), 1773144000000.0)
      << text;  // 20:00 +08
  EXPECT_EQ(StringMember(pool->Find("next_change"), "pool"), "train");

  // The fifth, without FERRY_WAIT, is refused at cuInit.
  ChildProcess* fifth = StartHolder("fifth");
  ASSERT_NE(fifth, nullptr);
  const ExitStatus status = fifth->Wait(kProgramTimeout);
  EXPECT_TRUE(status.exited && status.code == 3) << fifth->Describe();
  EXPECT_NE(fifth->Stdout().find("CUINIT CUDA_ERROR_DEVICE_UNAVAILABLE (46)"), std::string::npos)
      << fifth->Describe();
  EXPECT_NE(fifth->Stderr().find("pool dev is full"), std::string::npos) << fifth->Describe();

  // The table form shows the same.
  std::string table;
  ASSERT_EQ(Ferryctl({"status"}, &table), 0);
  EXPECT_NE(table.find("launch-throttle"), std::string::npos) << table;
  EXPECT_NE(table.find("next scheduled change"), std::string::npos) << table;

  for (int i = 0; i < 4; ++i) Release("holder" + std::to_string(i));
  for (ChildProcess* h : holders) EXPECT_TRUE(h->Wait(kProgramTimeout).success()) << h->Describe();
  WaitForPool("every slice free", [](const JsonValue& p) { return Holders(p, 0).empty(); });
}

TEST_F(PoolTest, AWaiterIsServedWhenAKilledHolderReturnsItsSlice) {
  StartFerryd(DayNightConfig(""), kBeforeNight);
  std::vector<ChildProcess*> holders;
  ASSERT_NO_FATAL_FAILURE(HoldEveryDaySlice(&holders));
  ChildProcess* waiter = StartHolder("waiter", {{"FERRY_WAIT", "5m"}});
  ASSERT_NE(waiter, nullptr);
  WaitForPool("one waiter queued", [&](const JsonValue& p) {
    const std::vector<JsonValue> queue = Queue(p);
    return queue.size() == 1 && NumberMember(&queue[0], "pid") == waiter->pid() &&
           NumberMember(&queue[0], "position") == 1 && StringMember(&queue[0], "pool") == "dev";
  });
  EXPECT_TRUE(waiter->running());
  // The waiting client logs its place in the queue.
  test::WaitFor(
      [&] { return waiter->Stderr().find("position 1 in the queue") != std::string::npos; },
      kConditionTimeout, kPollInterval);
  EXPECT_NE(waiter->Stderr().find("position 1 in the queue"), std::string::npos)
      << waiter->Describe();

  // SIGKILL a holder: its session ends, its slice goes to the waiter.
  const pid_t killed = holders[1]->pid();
  holders[1]->Kill(SIGKILL);
  holders[1]->Wait(kStopTimeout);
  ASSERT_TRUE(WaitForOutput(*waiter, "READY\n"));
  WaitForPool("the waiter holds the killed holder's slice", [&](const JsonValue& p) {
    const std::vector<JsonValue> held = Holders(p, 0);
    return held.size() == 4 && HolderWithPid(held, waiter->pid()) != nullptr &&
           HolderWithPid(held, killed) == nullptr && Queue(p).empty();
  });
  for (const char* name : {"holder0", "holder2", "holder3", "waiter"}) Release(name);
}

// Each session runs in a worker process (server/session_worker.h): a worker
// that dies (here SIGKILL; a fault would do the same) is reaped by ferryd,
// whose pool gives its slice to the next in the queue. Only that worker's
// client loses its session.
TEST_F(PoolTest, AKilledSessionWorkerReturnsItsSliceToTheWaiter) {
  StartFerryd(DayNightConfig(""), kBeforeNight);
  std::vector<ChildProcess*> holders;
  ASSERT_NO_FATAL_FAILURE(HoldEveryDaySlice(&holders));
  ChildProcess* waiter = StartHolder("waiter", {{"FERRY_WAIT", "5m"}});
  ASSERT_NE(waiter, nullptr);
  WaitForPool("one waiter queued", [&](const JsonValue& p) { return Queue(p).size() == 1; });
  const std::vector<int> workers = test::SessionWorkerPids(ferryd_->pid());
  ASSERT_EQ(workers.size(), 4u) << "one worker per holder";
  ::kill(workers[0], SIGKILL);
  ASSERT_TRUE(WaitForOutput(*waiter, "READY\n"));
  WaitForPool("the waiter holds the dead worker's slice", [&](const JsonValue& p) {
    const std::vector<JsonValue> held = Holders(p, 0);
    return held.size() == 4 && HolderWithPid(held, waiter->pid()) != nullptr && Queue(p).empty();
  });
  EXPECT_NE(ferryd_->Stderr().find("killed by signal 9"), std::string::npos) << ferryd_->Stderr();
  // Released, the three holders whose workers live end well; the one whose
  // worker was killed finds its session gone.
  for (const char* name : {"holder0", "holder1", "holder2", "holder3", "waiter"}) Release(name);
  int failed = 0;
  for (ChildProcess* h : holders) failed += h->Wait(kProgramTimeout).success() ? 0 : 1;
  EXPECT_EQ(failed, 1);
  EXPECT_TRUE(waiter->Wait(kProgramTimeout).success()) << waiter->Describe();
  WaitForPool("every slice free", [](const JsonValue& p) { return Holders(p, 0).empty(); });
}

TEST_F(PoolTest, AKilledWaiterLeavesTheQueue) {
  StartFerryd(DayNightConfig(""), kBeforeNight);
  ASSERT_NO_FATAL_FAILURE(HoldEveryDaySlice());
  ChildProcess* waiter = StartHolder("waiter", {{"FERRY_WAIT", "1h"}});
  ASSERT_NE(waiter, nullptr);
  WaitForPool("one waiter", [](const JsonValue& p) { return Queue(p).size() == 1; });
  waiter->Kill(SIGKILL);
  WaitForPool("an empty queue", [](const JsonValue& p) { return Queue(p).empty(); });
  for (int i = 0; i < 4; ++i) Release("holder" + std::to_string(i));
}

TEST_F(PoolTest, QuotaIsEnforcedAndMemGetInfoShowsTheSlice) {
  StartFerryd(DayNightConfig(""), kBeforeNight);
  std::string error;
  std::optional<ChildProcess> program =
      ChildProcess::Start({std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_pool_client", "quota",
                           std::to_string(kGpuMemory / 4), FERRY_E2E_IMAGE_DIR},
                          ClientEnv({}), dir_ + "/quota", &error);
  ASSERT_TRUE(program.has_value()) << error;
  const ExitStatus status = program->Wait(kProgramTimeout);
  EXPECT_TRUE(status.success() && program->Stdout().find("all checks passed") != std::string::npos)
      << program->Describe();
  // The program's slice comes back once ferryd has seen it go (over shared
  // memory, the liveness check's next slice): only then may the GPU move.
  WaitForPool("the quota program's slice back",
              [](const JsonValue& p) { return Holders(p, 0).empty(); });
  // A whole-GPU slice of the night pool sees the whole memory.
  ChildProcess* night = nullptr;
  AdvanceClock("1m");
  night = StartReadyHolder("night", {{"FERRY_POOL", "train"}});
  ASSERT_NE(night, nullptr);
  EXPECT_NE(night->Stdout().find("total=" + std::to_string(kGpuMemory)), std::string::npos)
      << night->Describe();
  Release("night");
}

// Memory overcommit (issue 16): two borrowers of one 64 MiB GPU whose slices'
// quotas (48 MiB each: memory_overcommit 1.5) add up to 1.5x the GPU take
// turns with 40 MiB each. Every turn needs the other's memory parked: the
// first allocation of the second borrower, and every later turn's first
// call, which brings the session's own memory back. Each turn follows a
// ring of device pointers stored in device memory, so memory that came back
// anywhere but at its addresses, or without its bytes, fails the program.
class OvercommitTest : public PoolTest, public ::testing::WithParamInterface<bool> {};

TEST_P(OvercommitTest, TwoSessionsTakeTurnsAndTheIdleOnesMemoryIsParked) {
  const bool in_process = GetParam();
  const std::string config = std::string("[server]\nbackend = \"host\"\nhost_kernels = [\"") +
                             FERRY_E2E_HOST_KERNELS +
                             "\"]\ndefault_pool = \"shared\"\n\n[[gpu]]\nindex = 0\nmemory = "
                             "\"64MiB\"\n\n[pool.shared]\nslices_per_gpu = 2\nmemory_overcommit = "
                             "1.5\npark_after = \"0s\"\n";
  StartFerryd(config, nullptr,
              in_process ? std::vector<std::string>{"--sessions-in-process"}
                         : std::vector<std::string>{});
  constexpr uint64_t kTurnBytes = 40ull << 20;
  constexpr int kTurns = 3;
  std::map<std::string, ChildProcess*> borrowers;
  for (const std::string name : {"a", "b"}) {
    std::string error;
    // b allocates from the device's memory pool (cuMemAllocAsync): its first
    // allocation, the one that needs a parked, takes that path.
    std::vector<std::string> argv = {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_pool_client",
                                     "turns", std::to_string(kTurnBytes),
                                     dir_ + "/" + name + ".turn", std::to_string(kTurns)};
    if (name == "b") argv.push_back("async");
    std::optional<ChildProcess> child =
        ChildProcess::Start(argv, ClientEnv({}), dir_ + "/" + name, &error);
    ASSERT_TRUE(child.has_value()) << error;
    borrowers[name] = &programs_.emplace(name, std::move(*child)).first->second;
  }
  for (int turn = 1; turn <= kTurns; ++turn) {
    for (const std::string name : {"a", "b"}) {
      std::ofstream(dir_ + "/" + name + ".turn" + std::to_string(turn)) << "go\n";
      ASSERT_TRUE(WaitForOutput(*borrowers[name], "TURN " + std::to_string(turn) + " OK"));
    }
  }
  // a: parked for b's turns 1, 2 and 3, back for its turns 2 and 3; b:
  // parked for a's turns 2 and 3, back for its turns 2 and 3. a is parked
  // now, its 40 MiB in host memory.
  std::string text;
  ASSERT_EQ(Ferryctl({"status", "-o", "json"}, &text), 0) << text;
  std::optional<JsonValue> json = ParseJson(text);
  ASSERT_TRUE(json.has_value()) << text;
  const JsonValue* sessions = json->Find("sessions");
  ASSERT_TRUE(sessions != nullptr && sessions->is_array() && sessions->array.size() == 2) << text;
  std::map<pid_t, const JsonValue*> by_pid;
  for (const JsonValue& s : sessions->array) by_pid[static_cast<pid_t>(NumberMember(&s, "pid"))] = &s;
  const JsonValue* a = by_pid[borrowers["a"]->pid()];
  const JsonValue* b = by_pid[borrowers["b"]->pid()];
  ASSERT_TRUE(a != nullptr && b != nullptr) << text;
  EXPECT_EQ(NumberMember(a, "parks"), 3) << text;
  EXPECT_EQ(NumberMember(a, "unparks"), 2) << text;
  EXPECT_EQ(NumberMember(a, "parked_bytes"), static_cast<double>(kTurnBytes)) << text;
  EXPECT_EQ(NumberMember(a, "resident_bytes"), 0) << text;
  EXPECT_EQ(NumberMember(b, "parks"), 2) << text;
  EXPECT_EQ(NumberMember(b, "unparks"), 2) << text;
  EXPECT_EQ(NumberMember(b, "parked_bytes"), 0) << text;
  EXPECT_EQ(NumberMember(b, "resident_bytes"), static_cast<double>(kTurnBytes)) << text;
  for (const std::string name : {"a", "b"}) {
    std::ofstream(dir_ + "/" + name + ".turn" + std::to_string(kTurns + 1)) << "go\n";
    const ExitStatus status = borrowers[name]->Wait(kProgramTimeout);
    EXPECT_TRUE(status.success() &&
                borrowers[name]->Stdout().find("all checks passed") != std::string::npos)
        << borrowers[name]->Describe();
  }
  EXPECT_NE(ferryd_->Stderr().find("parked 40 MiB of device memory"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Sessions, OvercommitTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "InProcess" : "InWorkers";
                         });

// Idle release (issue 16): a borrower of a whole 64 MiB GPU builds a 40 MiB
// ring of device pointers and goes idle; ferryd parks its memory and gives
// the GPU back to the pool. Another client borrows it meanwhile (without
// waiting) and allocates 48 MiB, which fits only with the first one's
// memory off the device. The first one's next call waits in the pool's
// queue until the other ends, then gets its slice back and follows its ring
// at the same addresses.
class IdleReleaseTest : public PoolTest, public ::testing::WithParamInterface<bool> {};

TEST_P(IdleReleaseTest, AnIdleSessionGivesItsSliceBackAndResumesAfterAnotherUsedIt) {
  StartHostPool(1, "slices_per_gpu = 1\nidle_release = \"300ms\"\n", GetParam());
  constexpr uint64_t kRingBytes = 40ull << 20;
  ChildProcess* a = StartTurns("a", kRingBytes, 2, {{"FERRY_WAIT", "2m"}});
  ASSERT_NE(a, nullptr);
  std::string error;
  Turn("a", 1);
  ASSERT_TRUE(WaitForOutput(*a, "TURN 1 OK"));

  // Idle: released. ferryctl shows it parked and released, and the GPU free.
  const auto a_session = [&](const JsonValue& status) -> const JsonValue* {
    const JsonValue* sessions = status.Find("sessions");
    if (sessions == nullptr || !sessions->is_array()) return nullptr;
    for (const JsonValue& s : sessions->array) {
      if (NumberMember(&s, "pid") == a->pid()) return &s;
    }
    return nullptr;
  };
  std::string text;
  const bool released = test::WaitFor(
      [&] {
        if (Ferryctl({"status", "-o", "json"}, &text) != 0) return false;
        std::optional<JsonValue> json = ParseJson(text);
        const JsonValue* s = json.has_value() ? a_session(*json) : nullptr;
        const JsonValue* pool = json.has_value() ? json->Find("pool") : nullptr;
        const JsonValue* gpu = pool != nullptr ? Gpu(*pool, 0) : nullptr;
        const JsonValue* listed = gpu != nullptr ? gpu->Find("released") : nullptr;
        return s != nullptr && s->Find("slices_released") != nullptr &&
               s->Find("slices_released")->boolean &&
               NumberMember(s, "parked_bytes") == static_cast<double>(kRingBytes) &&
               Holders(*pool, 0).empty() && listed != nullptr && listed->is_array() &&
               listed->array.size() == 1 && NumberMember(&listed->array[0], "pid") == a->pid();
      },
      kConditionTimeout, kPollInterval);
  ASSERT_TRUE(released) << "a was never released; last status:\n" << text;
  std::string table;
  ASSERT_EQ(Ferryctl({"status"}, &table), 0) << table;
  EXPECT_NE(table.find("40.0 MiB, released"), std::string::npos) << table;
  EXPECT_NE(table.find("released (idle), comes back on its next call"), std::string::npos) << table;

  // Another client takes the GPU at once and uses 48 MiB of it.
  std::optional<ChildProcess> other = ChildProcess::Start(
      {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_pool_client", "hold", ReleaseFile("b"),
       std::to_string(48ull << 20)},
      ClientEnv({}), dir_ + "/b", &error);
  ASSERT_TRUE(other.has_value()) << error;
  ChildProcess* b = &programs_.emplace("b", std::move(*other)).first->second;
  ASSERT_TRUE(WaitForOutput(*b, "READY\n"));

  // a's next call queues for its slice while b holds it.
  Turn("a", 2);
  WaitForPool("a waits for its slice", [&](const JsonValue& p) {
    const std::vector<JsonValue> queue = Queue(p);
    return queue.size() == 1 && NumberMember(&queue[0], "pid") == a->pid();
  });
  EXPECT_EQ(a->Stdout().find("TURN 2 OK"), std::string::npos) << a->Describe();
  Release("b");
  EXPECT_TRUE(b->Wait(kProgramTimeout).success()) << b->Describe();
  ASSERT_TRUE(WaitForOutput(*a, "TURN 2 OK"));
  Turn("a", 3);
  const ExitStatus status = a->Wait(kProgramTimeout);
  EXPECT_TRUE(status.success() && a->Stdout().find("all checks passed") != std::string::npos)
      << a->Describe();
  EXPECT_NE(ferryd_->Stderr().find("went back to the pool"), std::string::npos);
  EXPECT_NE(ferryd_->Stderr().find("waits to borrow its slice(s) of pool dev again: position 1"),
            std::string::npos);
  EXPECT_NE(ferryd_->Stderr().find("borrowed its slice(s) of pool dev again"), std::string::npos);
}

// A released session whose program dies while its call waits for the slice
// leaves the queue at once (not when its FERRY_WAIT ends), and the pool
// forgets it.
TEST_P(IdleReleaseTest, AReleasedSessionThatDiesWhileWaitingLeavesThePool) {
  StartHostPool(1, "slices_per_gpu = 1\nidle_release = \"200ms\"\n", GetParam());
  ChildProcess* a = StartTurns("a", 8ull << 20, 2, {{"FERRY_WAIT", "1h"}});
  ASSERT_NE(a, nullptr);
  Turn("a", 1);
  ASSERT_TRUE(WaitForOutput(*a, "TURN 1 OK"));
  WaitForPool("a released", [&](const JsonValue& p) {
    const JsonValue* listed = Gpu(p, 0) != nullptr ? Gpu(p, 0)->Find("released") : nullptr;
    return listed != nullptr && listed->is_array() && listed->array.size() == 1;
  });
  ChildProcess* b = StartReadyHolder("b");
  ASSERT_NE(b, nullptr);
  Turn("a", 2);
  WaitForPool("a waits for its slice", [&](const JsonValue& p) { return Queue(p).size() == 1; });
  a->Kill(SIGKILL);
  a->Wait(kProgramTimeout);
  WaitForPool("a gone from the queue and the pool", [&](const JsonValue& p) {
    const JsonValue* listed = Gpu(p, 0) != nullptr ? Gpu(p, 0)->Find("released") : nullptr;
    return Queue(p).empty() && listed != nullptr && listed->is_array() && listed->array.empty() &&
           Holders(p, 0).size() == 1;
  });
  Release("b");
  EXPECT_TRUE(b->Wait(kProgramTimeout).success()) << b->Describe();
  WaitForPool("GPU 0 free", [](const JsonValue& p) {
    return Holders(p, 0).empty() && NumberMember(Gpu(p, 0), "free_slices") == 1;
  });
}

// Migration between GPUs of one server (issue 16): a program that follows a
// ring of device pointers moves from GPU 0 to GPU 1 between two of its
// turns (ferryctl migrate) and keeps following it at the same addresses;
// GPU 0 is then whole for another client. A move to a GPU with no free
// slice is refused and the program goes on where it is.
class MigrationTest : public PoolTest, public ::testing::WithParamInterface<bool> {};

TEST_P(MigrationTest, ASessionMovesToAnotherGpuOfItsServer) {
  StartHostPool(2, "slices_per_gpu = 1\n", GetParam());
  constexpr uint64_t kRingBytes = 24ull << 20;
  ChildProcess* a = StartTurns("a", kRingBytes, 3);
  ASSERT_NE(a, nullptr);
  std::string error;
  Turn("a", 1);
  ASSERT_TRUE(WaitForOutput(*a, "TURN 1 OK"));
  std::string text;
  ASSERT_EQ(Ferryctl({"status", "-o", "json"}, &text), 0) << text;
  std::optional<JsonValue> json = ParseJson(text);
  ASSERT_TRUE(json.has_value()) << text;
  const JsonValue* sessions = json->Find("sessions");
  ASSERT_TRUE(sessions != nullptr && sessions->is_array() && sessions->array.size() == 1) << text;
  const std::string id = std::to_string(static_cast<uint64_t>(NumberMember(&sessions->array[0], "id")));
  std::optional<JsonValue> pool = PoolStatus(&text);
  ASSERT_TRUE(pool.has_value());
  ASSERT_EQ(Holders(*pool, 0).size(), 1u) << text;

  std::string out, err;
  ASSERT_EQ(Ferryctl({"migrate", id, "--to", "1"}, &out, &err), 0) << out << err;
  EXPECT_NE(out.find("moved from GPU 0 to GPU 1"), std::string::npos) << out;
  pool = PoolStatus(&text);
  ASSERT_TRUE(pool.has_value());
  EXPECT_TRUE(Holders(*pool, 0).empty()) << text;
  const std::vector<JsonValue> on_one = Holders(*pool, 1);
  ASSERT_EQ(on_one.size(), 1u) << text;
  EXPECT_EQ(NumberMember(&on_one[0], "pid"), a->pid());
  EXPECT_EQ(NumberMember(&on_one[0], "memory_used"), static_cast<double>(kRingBytes)) << text;
  // GPU 0 is whole again: another client takes 48 MiB of its 64 (which
  // would not fit beside the ring's 24 MiB).
  std::optional<ChildProcess> other = ChildProcess::Start(
      {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_pool_client", "hold", ReleaseFile("b"),
       std::to_string(48ull << 20)},
      ClientEnv({}), dir_ + "/b", &error);
  ASSERT_TRUE(other.has_value()) << error;
  ChildProcess* b = &programs_.emplace("b", std::move(*other)).first->second;
  ASSERT_TRUE(WaitForOutput(*b, "READY\n"));
  Turn("a", 2);
  ASSERT_TRUE(WaitForOutput(*a, "TURN 2 OK"));

  // Back to GPU 0 while b holds it: refused, and a goes on on GPU 1.
  EXPECT_EQ(Ferryctl({"migrate", id, "--to", "0"}, &out, &err), 1) << out << err;
  EXPECT_NE(err.find("GPU 0 has no free slice of pool dev"), std::string::npos) << err;
  Turn("a", 3);
  ASSERT_TRUE(WaitForOutput(*a, "TURN 3 OK"));
  Release("b");
  EXPECT_TRUE(b->Wait(kProgramTimeout).success()) << b->Describe();
  Turn("a", 4);
  const ExitStatus status = a->Wait(kProgramTimeout);
  EXPECT_TRUE(status.success() && a->Stdout().find("all checks passed") != std::string::npos)
      << a->Describe();
  EXPECT_NE(ferryd_->Stderr().find("device 0 moved from GPU 0 (slice 1/1) to GPU 1 (slice 1/1)"),
            std::string::npos);
}

// on_rebind = "migrate" (issue 16): pool day on GPUs 0 and 1 (64 MiB, one
// slice each); at 20:00 Shanghai GPU 1 goes to pool night. A program that
// follows its ring of device pointers on GPU 1 moves to GPU 0 when GPU 0 is
// free — not preempted, same addresses, its checks pass — and GPU 1 is
// whole for a night borrower; when GPU 0 is held it stays on GPU 1 and
// drains instead, running to the end within the grace.
class RebindMigrationTest : public PoolTest, public ::testing::WithParamInterface<bool> {
 protected:
  static constexpr uint64_t kRingBytes = 24ull << 20;
  // 20:15 +08, the end of the 15-minute grace after 20:00.
  static constexpr double kGraceEndMs = 1773144900000.0;

  void StartDayNightOnGpuOne() {
    std::string config = std::string("[server]\nbackend = \"host\"\nhost_kernels = [\"") +
                         FERRY_E2E_HOST_KERNELS + "\"]\ndefault_pool = \"day\"\n";
    for (int g = 0; g < 2; ++g) {
      config += "\n[[gpu]]\nindex = " + std::to_string(g) + "\nmemory = \"64MiB\"\n";
    }
    config +=
        "\n[pool.day]\nslices_per_gpu = 1\n[pool.night]\nslices_per_gpu = 1\n"
        "\n[[schedule]]\npool = \"night\"\ngpus = [1]\nfrom = 20:00:00\nto = 08:00:00\n"
        "timezone = \"Asia/Shanghai\"\non_rebind = \"migrate\"\ngrace = \"15m\"\n";
    StartFerryd(config, kBeforeNight,
                GetParam() ? std::vector<std::string>{"--sessions-in-process"}
                           : std::vector<std::string>{});
  }

  // "b" holds GPU 0; "a" then borrows GPU 1 and runs its first turn there
  // (with `async`, its ring comes from the device's memory pool).
  void StartOnGpuOne(ChildProcess** a, ChildProcess** b, bool async = false) {
    *b = StartReadyHolder("b");
    ASSERT_NE(*b, nullptr);
    *a = StartTurns("a", kRingBytes, 3, {}, async);
    ASSERT_NE(*a, nullptr);
    Turn("a", 1);
    ASSERT_TRUE(WaitForOutput(**a, "TURN 1 OK"));
    std::string text;
    std::optional<JsonValue> pool = PoolStatus(&text);
    ASSERT_TRUE(pool.has_value()) << text;
    const std::vector<JsonValue> on_one = Holders(*pool, 1);
    ASSERT_NE(HolderWithPid(on_one, (*a)->pid()), nullptr) << text;
  }

  // a's last turns and its end: every check passed, no call failed.
  void FinishTurns(ChildProcess* a) {
    Turn("a", 2);
    ASSERT_TRUE(WaitForOutput(*a, "TURN 2 OK"));
    Turn("a", 3);
    ASSERT_TRUE(WaitForOutput(*a, "TURN 3 OK"));
    Turn("a", 4);
    const ExitStatus status = a->Wait(kProgramTimeout);
    EXPECT_TRUE(status.success() && a->Stdout().find("all checks passed") != std::string::npos)
        << a->Describe();
    EXPECT_EQ(a->Stdout().find("CALL FAILED"), std::string::npos) << a->Describe();
  }
};

TEST_P(RebindMigrationTest, TheHolderMovesToAFreeGpuOfItsPool) {
  StartDayNightOnGpuOne();
  ChildProcess* a = nullptr;
  ChildProcess* b = nullptr;
  ASSERT_NO_FATAL_FAILURE(StartOnGpuOne(&a, &b));
  Release("b");
  ASSERT_TRUE(b->Wait(kProgramTimeout).success()) << b->Describe();
  WaitForPool("GPU 0 free", [](const JsonValue& p) {
    return Holders(p, 0).empty() && NumberMember(Gpu(p, 0), "free_slices") == 1;
  });

  AdvanceClock("1m");  // 20:00: GPU 1 goes to night; a moves to GPU 0
  WaitForPool("a on GPU 0, not draining; GPU 1 serves night, free", [&](const JsonValue& p) {
    const std::vector<JsonValue> on_zero = Holders(p, 0);
    const JsonValue* moved = HolderWithPid(on_zero, a->pid());
    return StringMember(Gpu(p, 1), "pool") == "night" && Holders(p, 1).empty() &&
           NumberMember(Gpu(p, 1), "free_slices") == 1 && moved != nullptr &&
           NumberMember(moved, "drain_deadline_unix_ms") == 0 &&
           NumberMember(moved, "memory_used") == static_cast<double>(kRingBytes) &&
           StringMember(moved, "pool") == "day";
  });
  // GPU 1 is whole for the night: a borrower of night gets all 64 MiB.
  ChildProcess* night = StartReadyHolder("night", {{"FERRY_POOL", "night"}});
  ASSERT_NE(night, nullptr);
  EXPECT_NE(night->Stdout().find("total=" + std::to_string(kGpuMemory)), std::string::npos)
      << night->Describe();
  ASSERT_NO_FATAL_FAILURE(FinishTurns(a));
  Release("night");
  EXPECT_TRUE(night->Wait(kProgramTimeout).success()) << night->Describe();
  const std::string log = ferryd_->Stderr();
  EXPECT_NE(log.find("on_rebind = migrate by the schedule: GPU 1 was rebound from pool day to "
                     "pool night"),
            std::string::npos);
  EXPECT_NE(log.find("moved from GPU 1 to GPU 0 (slice 1/1; its calls paused"), std::string::npos);
  EXPECT_NE(log.find("device 0 moved from GPU 1 (slice 1/1) to GPU 0 (slice 1/1)"),
            std::string::npos);
  EXPECT_EQ(log.find("preempted"), std::string::npos);
}

TEST_P(RebindMigrationTest, WithNoFreeSliceElsewhereTheHolderDrains) {
  StartDayNightOnGpuOne();
  ChildProcess* a = nullptr;
  ChildProcess* b = nullptr;
  ASSERT_NO_FATAL_FAILURE(StartOnGpuOne(&a, &b));

  AdvanceClock("1m");  // 20:00: GPU 0 is held by b, so a stays and drains
  WaitForPool("a draining on GPU 1, which serves night", [&](const JsonValue& p) {
    const std::vector<JsonValue> on_one = Holders(p, 1);
    const JsonValue* stays = HolderWithPid(on_one, a->pid());
    return StringMember(Gpu(p, 1), "pool") == "night" && stays != nullptr &&
           NumberMember(stays, "drain_deadline_unix_ms") == kGraceEndMs &&
           HolderWithPid(Holders(p, 0), b->pid()) != nullptr;
  });
  // Within the grace it runs to its end where it is.
  ASSERT_NO_FATAL_FAILURE(FinishTurns(a));
  WaitForPool("GPU 1 free for night", [](const JsonValue& p) {
    return Holders(p, 1).empty() && NumberMember(Gpu(p, 1), "free_slices") == 1;
  });
  Release("b");
  EXPECT_TRUE(b->Wait(kProgramTimeout).success()) << b->Describe();
  const std::string log = ferryd_->Stderr();
  EXPECT_NE(log.find("stays on GPU 1 and drains (on_rebind = migrate: no free slice of pool day "
                     "on another GPU)"),
            std::string::npos);
  EXPECT_EQ(log.find("preempted"), std::string::npos);
  EXPECT_EQ(log.find("device 0 moved"), std::string::npos);
}

// A holder whose move the session refuses (a memory pool cannot move yet)
// stays on GPU 1 and drains; the slice reserved on GPU 0 is free again.
TEST_P(RebindMigrationTest, AHolderThatCannotMoveDrainsInstead) {
  StartDayNightOnGpuOne();
  ChildProcess* a = nullptr;
  ChildProcess* b = nullptr;
  ASSERT_NO_FATAL_FAILURE(StartOnGpuOne(&a, &b, /*async=*/true));
  Release("b");
  ASSERT_TRUE(b->Wait(kProgramTimeout).success()) << b->Describe();
  WaitForPool("GPU 0 free", [](const JsonValue& p) { return Holders(p, 0).empty(); });

  AdvanceClock("1m");  // 20:00: a move is tried, refused, and a drains
  WaitForPool("a draining on GPU 1; GPU 0 free again", [&](const JsonValue& p) {
    const std::vector<JsonValue> on_one = Holders(p, 1);
    const JsonValue* stays = HolderWithPid(on_one, a->pid());
    return stays != nullptr && NumberMember(stays, "drain_deadline_unix_ms") == kGraceEndMs &&
           Holders(p, 0).empty() && NumberMember(Gpu(p, 0), "free_slices") == 1;
  });
  ASSERT_NO_FATAL_FAILURE(FinishTurns(a));
  const std::string log = ferryd_->Stderr();
  EXPECT_NE(log.find("could not move to GPU 0, so it drains"), std::string::npos);
  EXPECT_NE(log.find("which cannot move to another GPU yet"), std::string::npos);
  EXPECT_NE(log.find("stays on GPU 1 and drains until 2026-03-10 12:15:00 UTC (on_rebind = "
                     "migrate: it could not move)"),
            std::string::npos);
  EXPECT_EQ(log.find("preempted"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Sessions, RebindMigrationTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "InProcess" : "InWorkers";
                         });

INSTANTIATE_TEST_SUITE_P(Sessions, MigrationTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "InProcess" : "InWorkers";
                         });

INSTANTIATE_TEST_SUITE_P(Sessions, IdleReleaseTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "InProcess" : "InWorkers";
                         });

// ferry's NVML stand-in shows the borrowed slice (a quarter of the GPU) as the
// device's memory, and the session's own use in it.
TEST_F(PoolTest, NvmlShowsTheSliceAndTheSessionsUse) {
  StartFerryd(DayNightConfig(""), kBeforeNight);
  std::string error;
  std::optional<ChildProcess> program = ChildProcess::Start(
      {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_nvml_query"},
      ClientEnv({{"FERRY_E2E_NVML_SENSORS", "absent"}}), dir_ + "/nvml", &error);
  ASSERT_TRUE(program.has_value()) << error;
  const ExitStatus status = program->Wait(kProgramTimeout);
  EXPECT_TRUE(status.success() && program->Stdout().find("all checks passed") != std::string::npos)
      << program->Describe();
  EXPECT_NE(program->Stdout().find("memory: total " + std::to_string(kGpuMemory / 4) + " "),
            std::string::npos)
      << program->Describe();
}

TEST_F(PoolTest, DrainRebindLetsTheHolderRunUntilTheGraceThenPreemptsIt) {
  StartFerryd(DayNightConfig("on_rebind = \"drain\"\ngrace = \"15m\"\n"), kBeforeNight);
  ChildProcess* day = StartReadyHolder("day");
  ASSERT_NE(day, nullptr);
  AdvanceClock("1m");  // 20:00: the GPU moves to train; the day holder drains
  WaitForPool("GPU 0 serves train with the day holder draining", [&](const JsonValue& p) {
    const std::vector<JsonValue> held = Holders(p, 0);
    return StringMember(Gpu(p, 0), "pool") == "train" && held.size() == 1 &&
           NumberMember(&held[0], "drain_deadline_unix_ms") == 1773144900000.0;  // 20:15 +08
  });
  // A training job queues for the whole GPU.
  ChildProcess* night = StartHolder("night", {{"FERRY_POOL", "train"}, {"FERRY_WAIT", "1h"}});
  ASSERT_NE(night, nullptr);
  WaitForPool("the training job waits", [](const JsonValue& p) { return Queue(p).size() == 1; });
  AdvanceClock("14m");  // 20:14: still within the grace
  std::string text;
  std::optional<JsonValue> pool = PoolStatus(&text);
  ASSERT_TRUE(pool.has_value());
  EXPECT_EQ(Holders(*pool, 0).size(), 1u) << text;
  EXPECT_TRUE(day->running()) << day->Describe();
  EXPECT_EQ(day->Stdout().find("CALL FAILED"), std::string::npos) << day->Describe();

  AdvanceClock("1m");  // 20:15: the grace ran out
  ASSERT_TRUE(WaitForOutput(*day, "CALL FAILED CUDA_ERROR_DEVICE_UNAVAILABLE (46)"));
  EXPECT_EQ(day->Wait(kProgramTimeout).code, 4);
  EXPECT_NE(day->Stderr().find("preempted by the schedule"), std::string::npos) << day->Describe();
  EXPECT_NE(ferryd_->Stderr().find("preempted by the schedule"), std::string::npos);
  // Its resources were freed and the training job got the GPU, whole.
  ASSERT_TRUE(WaitForOutput(*night, "READY\n"));
  EXPECT_NE(night->Stdout().find("total=" + std::to_string(kGpuMemory)), std::string::npos);
  WaitForPool("the training job holds GPU 0", [&](const JsonValue& p) {
    const std::vector<JsonValue> held = Holders(p, 0);
    return held.size() == 1 && NumberMember(&held[0], "pid") == night->pid() && Queue(p).empty();
  });
  Release("night");
}

TEST_F(PoolTest, PreemptRebindPreemptsAtTheBoundary) {
  StartFerryd(DayNightConfig("on_rebind = \"preempt\"\n"), kBeforeNight);
  ChildProcess* day = StartReadyHolder("day");
  ASSERT_NE(day, nullptr);
  AdvanceClock("1m");
  ASSERT_TRUE(WaitForOutput(*day, "CALL FAILED CUDA_ERROR_DEVICE_UNAVAILABLE (46)"));
  EXPECT_NE(day->Stderr().find("preempted by the schedule"), std::string::npos) << day->Describe();
  EXPECT_NE(day->Stderr().find("on_rebind = preempt"), std::string::npos) << day->Describe();
  WaitForPool("GPU 0 free for train", [](const JsonValue& p) {
    return StringMember(Gpu(p, 0), "pool") == "train" && Holders(p, 0).empty() &&
           NumberMember(Gpu(p, 0), "free_slices") == 1;
  });
}

TEST_F(PoolTest, ReloadWithABadFileKeepsTheOldConfig) {
  const std::string good = DayNightConfig("");
  StartFerryd(good, kBeforeNight);
  ChildProcess* holder = StartReadyHolder("holder");
  ASSERT_NE(holder, nullptr);

  // An unknown key: ferryctl reload fails, naming file, line and key.
  std::string bad = good;
  bad.replace(bad.find("slices_per_gpu = 4"), 18, "slices_per_gpu = 4\nslice_memory = 1");
  WriteConfig(bad);
  std::string out, err;
  EXPECT_EQ(Ferryctl({"reload"}, &out, &err), 1);
  const std::string where =
      config_path_ + ":" + std::to_string(test::LineOf(bad, "slice_memory")) + ":";
  EXPECT_NE(err.find(where + " pool.dev.slice_memory: unknown key"), std::string::npos) << err;
  EXPECT_NE(err.find("the old config stays"), std::string::npos) << err;
  // SIGHUP with the bad file: rejected too, ferryd lives on.
  ferryd_->Kill(SIGHUP);
  test::WaitFor(
      [&] { return ferryd_->Stderr().find("SIGHUP: reload rejected") != std::string::npos; },
      kConditionTimeout, kPollInterval);
  EXPECT_NE(ferryd_->Stderr().find("SIGHUP: reload rejected"), std::string::npos);
  std::optional<JsonValue> pool = PoolStatus(&out);
  ASSERT_TRUE(pool.has_value()) << out;
  EXPECT_EQ(NumberMember(Gpu(*pool, 0), "slices_per_gpu"), 4) << out;
  EXPECT_EQ(Holders(*pool, 0).size(), 1u) << out;

  // A good file with two slices per GPU is taken; the holder keeps its slice.
  std::string two = good;
  two.replace(two.find("slices_per_gpu = 4"), 18, "slices_per_gpu = 2");
  WriteConfig(two);
  ASSERT_EQ(Ferryctl({"reload"}, &out, &err), 0) << err;
  EXPECT_NE(out.find("reloaded"), std::string::npos) << out;
  pool = PoolStatus(&out);
  ASSERT_TRUE(pool.has_value());
  EXPECT_EQ(NumberMember(Gpu(*pool, 0), "slices_per_gpu"), 2) << out;
  const std::vector<JsonValue> held = Holders(*pool, 0);
  ASSERT_EQ(held.size(), 1u) << out;
  EXPECT_EQ(NumberMember(&held[0], "memory_quota"), kGpuMemory / 4);
  EXPECT_TRUE(holder->running());
  Release("holder");
  EXPECT_TRUE(holder->Wait(kProgramTimeout).success()) << holder->Describe();
}

TEST_F(PoolTest, ManualDrainAndRebind) {
  StartFerryd(DayNightConfig(""), kBeforeNight);
  ChildProcess* holder = StartReadyHolder("holder");
  ASSERT_NE(holder, nullptr);
  std::string out, err;
  ASSERT_EQ(Ferryctl({"drain", "0"}, &out, &err), 0) << err;
  ChildProcess* refused = StartHolder("refused");
  ASSERT_NE(refused, nullptr);
  EXPECT_EQ(refused->Wait(kProgramTimeout).code, 3) << refused->Describe();
  EXPECT_NE(refused->Stderr().find("1 drained"), std::string::npos) << refused->Describe();
  EXPECT_TRUE(holder->running());
  ASSERT_EQ(Ferryctl({"undrain", "0"}, &out, &err), 0) << err;
  // By hand, at once: the holder is preempted, by ferryctl rather than the schedule.
  ASSERT_EQ(Ferryctl({"rebind", "0", "train", "--preempt"}, &out, &err), 0) << err;
  ASSERT_TRUE(WaitForOutput(*holder, "CALL FAILED CUDA_ERROR_DEVICE_UNAVAILABLE (46)"));
  EXPECT_NE(holder->Stderr().find("preempted by ferryctl rebind"), std::string::npos)
      << holder->Describe();
  WaitForPool("GPU 0 rebound by hand", [](const JsonValue& p) {
    return StringMember(Gpu(p, 0), "pool") == "train" &&
           StringMember(Gpu(p, 0), "source") == "manual" && Holders(p, 0).empty();
  });
  EXPECT_EQ(Ferryctl({"rebind", "0", "nosuchpool"}, &out, &err), 1);
  EXPECT_NE(err.find("no pool 'nosuchpool'"), std::string::npos) << err;
}

TEST_F(PoolTest, SeveralDevicesComeFromDistinctGpusAndWaitsEndAtTheirDeadline) {
  StartFerryd(std::string(R"(
[server]
backend = "host"
default_pool = "dev"
[[gpu]]
index = 0
memory = "64MiB"
[[gpu]]
index = 1
memory = "64MiB"
[pool.dev]
slices_per_gpu = 2
)"),
              kBeforeNight);
  ChildProcess* a = StartReadyHolder("a", {{"FERRY_GPUS", "2"}});
  ASSERT_NE(a, nullptr);
  EXPECT_NE(a->Stdout().find("BORROWED devices=2 total=" + std::to_string(kGpuMemory / 2)),
            std::string::npos)
      << a->Describe();
  ChildProcess* b = StartReadyHolder("b", {{"FERRY_GPUS", "2"}});
  ASSERT_NE(b, nullptr);
  std::string text;
  std::optional<JsonValue> pool = PoolStatus(&text);
  ASSERT_TRUE(pool.has_value()) << text;
  for (int gpu = 0; gpu < 2; ++gpu) {
    const std::vector<JsonValue> held = Holders(*pool, gpu);
    EXPECT_EQ(held.size(), 2u) << text;
    EXPECT_NE(HolderWithPid(held, a->pid()), nullptr) << text;
    EXPECT_NE(HolderWithPid(held, b->pid()), nullptr) << text;
  }
  // A waiter whose FERRY_WAIT runs out (on the fake clock) gets the refusal.
  ChildProcess* c = StartHolder("c", {{"FERRY_WAIT", "30s"}});
  ASSERT_NE(c, nullptr);
  WaitForPool("c waits", [](const JsonValue& p) { return Queue(p).size() == 1; });
  AdvanceClock("31s");
  const ExitStatus status = c->Wait(kProgramTimeout);
  EXPECT_EQ(status.code, 3) << c->Describe();
  EXPECT_NE(c->Stdout().find("CUINIT CUDA_ERROR_DEVICE_UNAVAILABLE"), std::string::npos)
      << c->Describe();
  EXPECT_NE(c->Stderr().find("no slice became free within 30s"), std::string::npos)
      << c->Describe();
  // Bad requests fail cuInit with a message that says why.
  for (const auto& [key, value, says] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"FERRY_GPUS", "3", "this server has 2 GPUs"},
           {"FERRY_WAIT", "soon", "FERRY_WAIT='soon' is not a duration"},
           {"FERRY_POOL", "inference", "no pool 'inference'"}}) {
    ChildProcess* bad = StartHolder("bad_" + key, {{key, value}});
    ASSERT_NE(bad, nullptr);
    EXPECT_EQ(bad->Wait(kProgramTimeout).code, 3) << bad->Describe();
    EXPECT_NE(bad->Stdout().find("CUINIT CUDA_ERROR_INVALID_VALUE (1)"), std::string::npos)
        << bad->Describe();
    EXPECT_NE(bad->Stderr().find(says), std::string::npos) << bad->Describe();
  }
  Release("a");
  Release("b");
}

// Hostile borrowers: odd pool names, device counts and waits, connections
// that vanish while granted or queued, bytes sent while queued. ferryd lives
// on and every slice and queue place comes back.
TEST_F(PoolTest, HostileBorrowersNeverStopTheServerOrKeepASlice) {
  StartFerryd(DayNightConfig(""), kBeforeNight);
  std::mt19937 rng(6);
  const std::vector<std::string> pools = {"", "dev", "train", "nope", std::string(5000, 'p')};
  const std::vector<uint32_t> gpus = {0, 1, 2, 1000, 0xffffffffu};
  const std::vector<uint64_t> waits = {0, 1, 60000, ~0ull};
  for (int i = 0; i < 80; ++i) {
    std::unique_ptr<Transport> t;
    ASSERT_TRUE(ConnectTcp(address_, 2000ms, &t).ok());
    capnp::MallocMessageBuilder message;
    auto hello = message.initRoot<wire::Hello>();
    hello.setProtocolVersion(wire::PROTOCOL_VERSION);
    hello.setRole(wire::Hello::Role::CLIENT);
    hello.setPool(pools[rng() % pools.size()]);
    hello.setGpus(gpus[rng() % gpus.size()]);
    hello.setWaitMs(waits[rng() % waits.size()]);
    ASSERT_TRUE(WriteFrame(*t, wire::FrameKind::HELLO, message).ok());
    switch (rng() % 3) {
      case 0:  // vanish at once
        break;
      case 1:  // wait a moment (granted or queued), then vanish: the pause is the
               // hostile behaviour under test, not a synchronization
        std::this_thread::sleep_for(5ms);
        break;
      case 2: {  // talk out of turn
        const uint8_t noise[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
        ConstBuffer b{noise, sizeof(noise)};
        (void)t->Write(std::span<const ConstBuffer>(&b, 1));
        std::this_thread::sleep_for(2ms);  // as case 1: the behaviour under test
        break;
      }
    }
    ASSERT_FALSE(ferryd_->Poll()) << "ferryd died after hostile borrower " << i << "\n"
                                  << ferryd_->Describe();
  }
  WaitForPool("no holder and no waiter left",
              [](const JsonValue& p) { return Holders(p, 0).empty() && Queue(p).empty(); });
  ChildProcess* holder = StartReadyHolder("holder");
  ASSERT_NE(holder, nullptr);
  Release("holder");
}

TEST_F(PoolTest, TheTestClockIsRefusedWithoutTheTestFlag) {
  StartFerryd(DayNightConfig(""));
  std::string out, err;
  EXPECT_EQ(Ferryctl({"test-advance-clock", "1h"}, &out, &err), 1);
  EXPECT_NE(err.find("--test-fake-clock"), std::string::npos) << err;
}

}  // namespace
}  // namespace ferry::e2e
