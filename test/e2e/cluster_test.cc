// End-to-end tests of a cluster pool: a real etcd (test/support/etcd_server.h,
// started and killed by PID here), several `ferryd --etcd ... --backend host`
// on loopback ports, pool_client processes through ferry's libcuda.so.1, and
// `ferryctl status --etcd URL -o json` to see what the cluster holds. Every
// wait is bounded; pass or fail never depends on how long something took.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "common/frame.h"
#include "common/transport.h"
#include "mini_json.h"
#include "test/support/child_process.h"
#include "test/support/etcd_server.h"
#include "test/support/ferryd.h"
#include "test/support/net.h"
#include "test/support/pool_config.h"
#include "test/support/wait.h"

namespace ferry::e2e {
namespace {

using namespace std::chrono_literals;
using test::ChildProcess;
using test::ExitStatus;

constexpr auto kReadyTimeout = 15s;
constexpr auto kStopTimeout = 15s;
constexpr auto kProgramTimeout = 60s;
constexpr auto kConditionTimeout = 30s;
constexpr auto kPollInterval = 50ms;

// One slice of the cluster as `ferryctl status --etcd -o json` shows it.
struct Holding {
  std::string gpu;  // "SERVER:INDEX"
  int slice = 0;
  int pid = 0;
  bool operator<(const Holding& o) const {
    return std::tie(gpu, slice, pid) < std::tie(o.gpu, o.slice, o.pid);
  }
};

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::MakeTempDir("ferry-cluster-e2e-");
    ASSERT_FALSE(dir_.empty());
    std::string error;
    etcd_ = test::EtcdServer::Start(&error);
    ASSERT_NE(etcd_, nullptr) << error;
  }

  void TearDown() override {
    for (auto& [name, program] : programs_) {
      if (program.running()) program.Kill(SIGKILL);
    }
    for (auto& [name, ferryd] : servers_) {
      const std::string stop_failed = test::StopFerryd(name, ferryd, kStopTimeout);
      EXPECT_TRUE(stop_failed.empty()) << stop_failed;
    }
    if (HasFailure()) {
      for (auto& [name, ferryd] : servers_) {
        if (ferryd.has_value()) std::cerr << name << " log:\n" << test::Tail(ferryd->Stderr(), 8000) << "\n";
      }
      for (auto& [name, program] : programs_) std::cerr << program.Describe(3000) << "\n";
      if (etcd_ != nullptr) std::cerr << etcd_->Describe() << "\n";
      std::cerr << "test files kept in " << dir_ << "\n";
    } else {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

  // Starts ferryd `name` of the cluster with `gpus` host GPUs of 64 MiB,
  // pool "dev" split 4 ways; returns its address ("" with a failure).
  // A lease of 5 s: long against a loaded machine's delays, short enough
  // for a test that waits for one to expire (which sets `ttl` lower).
  std::string StartServer(const std::string& name, int gpus = 1,
                          const std::vector<std::string>& extra_args = {},
                          const std::string& ttl = "5s") {
    const std::string server_dir = dir_ + "/" + name;
    std::filesystem::create_directories(server_dir);
    std::string config = std::string("[server]\nbackend = \"host\"\nhost_kernels = [\"") +
                         FERRY_E2E_HOST_KERNELS + "\"]\ndefault_pool = \"dev\"\n\n[pool.dev]\n"
                         "slices_per_gpu = 4\n";
    for (int i = 0; i < gpus; ++i) {
      config += "\n[[gpu]]\nindex = " + std::to_string(i) + "\nmemory = \"64MiB\"\n";
    }
    config += "\n[cluster]\nlabels = { rack = \"r-" + name + "\" }\n";
    const std::string config_path = server_dir + "/ferryd.toml";
    EXPECT_TRUE(test::WriteTextFile(config_path, config));
    std::string address, error;
    std::vector<std::string> args = {"--config", config_path, "--listen", "127.0.0.1:0",
                                     "--etcd", etcd_->endpoint(), "--name", name,
                                     "--cluster-ttl", ttl};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::optional<ChildProcess> ferryd =
        test::StartFerryd(FERRY_E2E_FERRYD, args, server_dir, kReadyTimeout, &address, &error);
    if (!ferryd.has_value()) {
      ADD_FAILURE() << error;
      return "";
    }
    servers_[name] = std::move(ferryd);
    addresses_[name] = address;
    // Ready once etcd shows it: registration follows the listener.
    EXPECT_TRUE(test::WaitFor([&] { return ServerNames().count(name) == 1; }, kConditionTimeout,
                              kPollInterval))
        << "server " << name << " never appeared in etcd";
    return address;
  }

  ChildProcess* StartHolder(const std::string& name, const std::string& server_list,
                            const std::map<std::string, std::string>& env = {}) {
    std::string error;
    std::optional<ChildProcess> child = ChildProcess::Start(
        {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_pool_client", "hold", ReleaseFile(name)},
        test::ClientEnv(FERRY_E2E_CLIENT_LIB_DIR, server_list, env), dir_ + "/" + name, &error);
    if (!child.has_value()) {
      ADD_FAILURE() << "cannot start " << name << ": " << error;
      return nullptr;
    }
    return &programs_.insert_or_assign(name, std::move(*child)).first->second;
  }

  // Waits until `program` printed READY (true) or ended (false); bounded.
  bool Ready(ChildProcess& program) {
    bool ended = false;
    const bool done = test::WaitFor(
        [&] {
          if (program.Stdout().find("READY\n") != std::string::npos) return true;
          ended = program.Poll();
          return ended;
        },
        kProgramTimeout, kPollInterval);
    EXPECT_TRUE(done) << program.Describe();
    return done && !ended;
  }

  ChildProcess* StartReadyHolder(const std::string& name, const std::string& server_list,
                                 const std::map<std::string, std::string>& env = {}) {
    ChildProcess* holder = StartHolder(name, server_list, env);
    if (holder == nullptr) return nullptr;
    if (!Ready(*holder)) {
      ADD_FAILURE() << name << " did not get a slice:\n" << holder->Describe();
      return nullptr;
    }
    return holder;
  }

  std::string ReleaseFile(const std::string& name) { return dir_ + "/" + name + ".release"; }
  void Release(const std::string& name) { std::ofstream(ReleaseFile(name)) << "go\n"; }

  // Runs ferryctl with `args`; its exit code, stdout and stderr.
  int Ferryctl(const std::vector<std::string>& args, std::string* out, std::string* err) {
    std::vector<std::string> argv = {FERRY_E2E_FERRYCTL};
    argv.insert(argv.end(), args.begin(), args.end());
    std::string error;
    std::optional<ChildProcess> ctl = ChildProcess::Start(argv, {}, dir_ + "/ferryctl", &error);
    if (!ctl.has_value()) {
      ADD_FAILURE() << error;
      return -1;
    }
    const ExitStatus status = ctl->Wait(15s);
    *out = ctl->Stdout();
    *err = ctl->Stderr();
    return status.exited ? status.code : -1;
  }

  // `ferryctl apply -f FILE` of `toml` (written to dir_/NAME); its exit code.
  int Apply(const std::string& name, const std::string& toml, std::string* err) {
    const std::string path = dir_ + "/" + name;
    EXPECT_TRUE(test::WriteTextFile(path, toml));
    std::string out;
    return Ferryctl({"apply", "-f", path, "--etcd", etcd_->endpoint()}, &out, err);
  }

  // A field of GPU `gpu` ("SERVER:INDEX") in the cluster status ("" if absent).
  std::string GpuField(const std::string& gpu, const char* field) {
    std::optional<JsonValue> status = ClusterStatus();
    const JsonValue* servers = status.has_value() ? status->Find("servers") : nullptr;
    if (servers == nullptr || !servers->is_array()) return "";
    for (const JsonValue& server : servers->array) {
      const JsonValue* gpus = server.Find("gpus");
      if (gpus == nullptr) continue;
      for (const JsonValue& g : gpus->array) {
        const JsonValue* name = g.Find("gpu");
        const JsonValue* value = g.Find(field);
        if (name == nullptr || name->string != gpu || value == nullptr) continue;
        if (value->is_string()) return value->string;
        if (value->type == JsonValue::Type::kBool) return value->boolean ? "true" : "false";
        if (value->is_number()) return std::to_string(static_cast<long long>(value->number));
      }
    }
    return "";
  }

  // `ferryctl status --etcd URL -o json`, parsed.
  std::optional<JsonValue> ClusterStatus(std::string* text = nullptr) {
    std::string error, out;
    std::optional<ChildProcess> ctl = ChildProcess::Start(
        {FERRY_E2E_FERRYCTL, "status", "--etcd", etcd_->endpoint(), "-o", "json"}, {},
        dir_ + "/ferryctl", &error);
    if (!ctl.has_value()) return std::nullopt;
    const ExitStatus status = ctl->Wait(15s);
    out = ctl->Stdout();
    if (text != nullptr) *text = out + ctl->Stderr();
    if (!status.success()) return std::nullopt;
    return ParseJson(out);
  }

  std::set<std::string> ServerNames() {
    std::set<std::string> names;
    std::optional<JsonValue> status = ClusterStatus();
    const JsonValue* servers = status.has_value() ? status->Find("servers") : nullptr;
    if (servers == nullptr || !servers->is_array()) return names;
    for (const JsonValue& s : servers->array) {
      if (const JsonValue* name = s.Find("name"); name != nullptr) names.insert(name->string);
    }
    return names;
  }

  // Every held slice in the cluster.
  std::vector<Holding> Holdings() {
    std::vector<Holding> out;
    std::optional<JsonValue> status = ClusterStatus();
    const JsonValue* servers = status.has_value() ? status->Find("servers") : nullptr;
    if (servers == nullptr || !servers->is_array()) return out;
    for (const JsonValue& server : servers->array) {
      const JsonValue* gpus = server.Find("gpus");
      if (gpus == nullptr) continue;
      for (const JsonValue& gpu : gpus->array) {
        const JsonValue* holders = gpu.Find("holders");
        if (holders == nullptr) continue;
        for (const JsonValue& h : holders->array) {
          out.push_back(Holding{gpu.Find("gpu")->string,
                                static_cast<int>(h.Find("slice")->number),
                                static_cast<int>(h.Find("pid")->number)});
        }
      }
    }
    return out;
  }

  // The free slices `gpu` ("SERVER:INDEX") publishes; -1 if it is not there.
  int FreeSlices(const std::string& gpu) {
    std::optional<JsonValue> status = ClusterStatus();
    const JsonValue* servers = status.has_value() ? status->Find("servers") : nullptr;
    if (servers == nullptr || !servers->is_array()) return -1;
    for (const JsonValue& server : servers->array) {
      const JsonValue* gpus = server.Find("gpus");
      if (gpus == nullptr) continue;
      for (const JsonValue& g : gpus->array) {
        const JsonValue* name = g.Find("gpu");
        const JsonValue* free = g.Find("free_slices");
        if (name != nullptr && name->string == gpu && free != nullptr) {
          return static_cast<int>(free->number);
        }
      }
    }
    return -1;
  }

  // How many borrows wait in the cluster's queue; -1 when it cannot be read.
  int QueueLength() {
    std::optional<JsonValue> status = ClusterStatus();
    const JsonValue* queue = status.has_value() ? status->Find("queue") : nullptr;
    return queue != nullptr && queue->is_array() ? static_cast<int>(queue->array.size()) : -1;
  }

  // Waits (bounded) until the queue holds `length` borrows.
  bool WaitForQueueLength(int length) {
    const bool reached =
        test::WaitFor([&] { return QueueLength() == length; }, kConditionTimeout, kPollInterval);
    EXPECT_TRUE(reached) << "the queue never held " << length << "; it holds " << QueueLength();
    return reached;
  }

  int HoldersOn(const std::string& gpu) {
    int n = 0;
    for (const Holding& h : Holdings()) n += h.gpu == gpu ? 1 : 0;
    return n;
  }

  std::string dir_;
  std::unique_ptr<test::EtcdServer> etcd_;
  std::map<std::string, std::optional<ChildProcess>> servers_;
  std::map<std::string, std::string> addresses_;
  std::map<std::string, ChildProcess> programs_;
};

TEST_F(ClusterTest, EightBorrowsThroughOneServerLandOnTwoAndTheNinthIsRefused) {
  const std::string a = StartServer("a");
  ASSERT_FALSE(StartServer("b").empty());
  ASSERT_FALSE(a.empty());
  std::map<int, std::string> names_by_pid;
  for (int i = 0; i < 8; ++i) {
    const std::string name = "holder" + std::to_string(i);
    ChildProcess* holder = StartReadyHolder(name, a);
    ASSERT_NE(holder, nullptr);
    names_by_pid[holder->pid()] = name;
  }
  std::vector<Holding> holdings = Holdings();
  ASSERT_EQ(holdings.size(), 8u);
  // Both full, as each server publishes: the ninth cannot be sent anywhere.
  ASSERT_TRUE(test::WaitFor([&] { return FreeSlices("a:0") == 0 && FreeSlices("b:0") == 0; },
                            kConditionTimeout, kPollInterval));
  EXPECT_EQ(HoldersOn("a:0"), 4);
  EXPECT_EQ(HoldersOn("b:0"), 4);
  std::set<std::pair<std::string, int>> slices;
  for (const Holding& h : holdings) {
    EXPECT_EQ(names_by_pid.count(h.pid), 1u) << "pid " << h.pid << " holds " << h.gpu;
    EXPECT_TRUE(slices.insert({h.gpu, h.slice}).second) << h.gpu << " slice " << h.slice;
  }
  // The ninth finds no room anywhere.
  ChildProcess* ninth = StartHolder("ninth", a);
  ASSERT_NE(ninth, nullptr);
  const ExitStatus refused = ninth->Wait(kProgramTimeout);
  EXPECT_EQ(refused.code, 3) << ninth->Describe();
  EXPECT_NE(ninth->Stdout().find("CUINIT CUDA_ERROR_DEVICE_UNAVAILABLE"), std::string::npos)
      << ninth->Describe();
  EXPECT_NE(ninth->Stderr().find("full"), std::string::npos) << ninth->Describe();
  // A holder on b leaves: the next borrow through a is sent to b.
  int leaving = 0;
  for (const Holding& h : holdings) {
    if (h.gpu == "b:0") leaving = h.pid;
  }
  Release(names_by_pid[leaving]);
  ASSERT_EQ(programs_.at(names_by_pid[leaving]).Wait(kProgramTimeout).code, 0);
  // Once b says so (its published state), a sends borrows there again.
  ASSERT_TRUE(test::WaitFor([&] { return HoldersOn("b:0") == 3 && FreeSlices("b:0") == 1; },
                            kConditionTimeout, kPollInterval));
  ChildProcess* tenth = StartReadyHolder("tenth", a);
  ASSERT_NE(tenth, nullptr);
  EXPECT_NE(tenth->Stderr().find("sends this program to " + addresses_["b"]), std::string::npos)
      << tenth->Describe();
  EXPECT_EQ(HoldersOn("b:0"), 4);
}

// A program's name is the client's to choose, bytes that are not UTF-8
// included; it goes into etcd's JSON and must not end ferryd.
TEST_F(ClusterTest, AProgramNameThatIsNotUtf8IsHeldLikeAnyOther) {
  const std::string a = StartServer("a");
  ASSERT_FALSE(a.empty());
  const std::string odd = dir_ + "/odd\xff\xfe";
  std::filesystem::copy_file(std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_pool_client", odd);
  std::filesystem::permissions(odd, std::filesystem::perms::owner_all);
  std::string error;
  std::optional<ChildProcess> child = ChildProcess::Start(
      {odd, "hold", ReleaseFile("odd")}, test::ClientEnv(FERRY_E2E_CLIENT_LIB_DIR, a),
      dir_ + "/odd", &error);
  ASSERT_TRUE(child.has_value()) << error;
  ChildProcess& holder = programs_.insert_or_assign("odd", std::move(*child)).first->second;
  ASSERT_TRUE(Ready(holder)) << holder.Describe();
  ASSERT_EQ(Holdings().size(), 1u);
  EXPECT_TRUE(servers_["a"]->running());
  // And a second client is served after it.
  EXPECT_NE(StartReadyHolder("after", a), nullptr);
}

TEST_F(ClusterTest, ServersThatCannotBeReachedArePassedOverInOrder) {
  const std::string a = StartServer("a");
  ASSERT_FALSE(a.empty());
  const int closed = test::ClosedLoopbackPort();
  ASSERT_GT(closed, 0);
  ChildProcess* holder =
      StartReadyHolder("holder", "127.0.0.1:" + std::to_string(closed) + ", " + a);
  ASSERT_NE(holder, nullptr);
  EXPECT_EQ(HoldersOn("a:0"), 1);
}

TEST_F(ClusterTest, AKilledServerLeavesTheClusterWithinItsLease) {
  ASSERT_FALSE(StartServer("a").empty());
  const std::string b = StartServer("b", 1, {}, "2s");
  ASSERT_FALSE(b.empty());
  ChildProcess* holder = StartReadyHolder("holder", b);
  ASSERT_NE(holder, nullptr);
  ASSERT_EQ(HoldersOn("b:0"), 1);
  servers_["b"]->Kill(SIGKILL);
  servers_["b"]->Wait(kStopTimeout);
  servers_.erase("b");
  // Its lease (2 s) runs out: the server, its GPU and its claims are gone.
  std::string text;
  EXPECT_TRUE(test::WaitFor(
      [&] {
        std::optional<JsonValue> status = ClusterStatus(&text);
        return status.has_value() && ServerNames() == std::set<std::string>{"a"} &&
               Holdings().empty();
      },
      kConditionTimeout, kPollInterval))
      << text;
  // Its client learns it is gone (the session worker ends with ferryd).
  const ExitStatus ended = holder->Wait(kProgramTimeout);
  EXPECT_EQ(ended.code, 4) << holder->Describe();
}

TEST_F(ClusterTest, AKilledHolderFreesItsClaim) {
  const std::string a = StartServer("a");
  ASSERT_FALSE(a.empty());
  ChildProcess* holder = StartReadyHolder("holder", a);
  ASSERT_NE(holder, nullptr);
  ASSERT_EQ(Holdings().size(), 1u);
  EXPECT_EQ(Holdings()[0].pid, holder->pid());
  holder->Kill(SIGKILL);
  holder->Wait(kStopTimeout);
  EXPECT_TRUE(test::WaitFor([&] { return Holdings().empty(); }, kConditionTimeout, kPollInterval));
}

TEST_F(ClusterTest, WithoutEtcdSessionsGoOnAndBorrowsFailUntilItIsBack) {
  const std::string a = StartServer("a");
  ASSERT_FALSE(a.empty());
  ChildProcess* running = StartReadyHolder("running", a);
  ASSERT_NE(running, nullptr);
  etcd_->Stop();
  ChildProcess* refused = StartHolder("refused", a);
  ASSERT_NE(refused, nullptr);
  EXPECT_EQ(refused->Wait(kProgramTimeout).code, 3) << refused->Describe();
  EXPECT_NE(refused->Stderr().find("cluster"), std::string::npos) << refused->Describe();
  std::string error;
  ASSERT_TRUE(etcd_->Restart(&error)) << error;
  // Borrows work again once ferryd has found etcd (bounded tries).
  bool borrowed = false;
  for (int attempt = 0; attempt < 40 && !borrowed; ++attempt) {
    const std::string name = "after" + std::to_string(attempt);
    ChildProcess* holder = StartHolder(name, a);
    ASSERT_NE(holder, nullptr);
    borrowed = Ready(*holder);
  }
  EXPECT_TRUE(borrowed);
  // The claim of the session that ran through it all still stands.
  bool still_claimed = false;
  for (const Holding& h : Holdings()) still_claimed = still_claimed || h.pid == running->pid();
  EXPECT_TRUE(still_claimed);
  // And the session still works and ends cleanly.
  Release("running");
  const ExitStatus ended = running->Wait(kProgramTimeout);
  EXPECT_EQ(ended.code, 0) << running->Describe();
  EXPECT_NE(running->Stdout().find("RELEASED"), std::string::npos);
}

TEST_F(ClusterTest, ConcurrentBorrowsThroughTwoEntriesNeverShareASlice) {
  const std::string a = StartServer("a");
  const std::string b = StartServer("b");
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  constexpr int kClients = 12;  // for 8 slices
  std::vector<ChildProcess*> clients;
  for (int i = 0; i < kClients; ++i) {
    ChildProcess* c = StartHolder("client" + std::to_string(i), i % 2 == 0 ? a : b);
    ASSERT_NE(c, nullptr);
    clients.push_back(c);
  }
  int ready = 0, refused = 0;
  std::set<int> ready_pids;
  for (ChildProcess* c : clients) {
    if (Ready(*c)) {
      ++ready;
      ready_pids.insert(c->pid());
    } else {
      EXPECT_EQ(c->Wait(kProgramTimeout).code, 3) << c->Describe();
      ++refused;
    }
  }
  EXPECT_EQ(ready + refused, kClients);
  // Nobody waits, every refusal saw both servers full: all 8 slices held.
  EXPECT_EQ(ready, 8);
  const std::vector<Holding> holdings = Holdings();
  EXPECT_EQ(static_cast<int>(holdings.size()), ready);
  std::set<std::pair<std::string, int>> slices;
  std::set<int> pids;
  for (const Holding& h : holdings) {
    EXPECT_TRUE(slices.insert({h.gpu, h.slice}).second) << h.gpu << " slice " << h.slice << " twice";
    EXPECT_TRUE(pids.insert(h.pid).second) << "pid " << h.pid << " twice";
  }
  EXPECT_EQ(pids, ready_pids);
  EXPECT_LE(HoldersOn("a:0"), 4);
  EXPECT_LE(HoldersOn("b:0"), 4);
  // What each server serves (its own status) is what etcd says it holds.
  for (const auto& [name, address] : addresses_) {
    std::string out, err;
    ASSERT_EQ(Ferryctl({"status", "--server", address, "-o", "json"}, &out, &err), 0) << err;
    std::optional<JsonValue> json = ParseJson(out);
    ASSERT_TRUE(json.has_value()) << out;
    std::set<std::pair<int, int>> served;  // (slice, pid)
    for (const JsonValue& gpu : json->Find("pool")->Find("gpus")->array) {
      for (const JsonValue& h : gpu.Find("holders")->array) {
        EXPECT_TRUE(served.insert({static_cast<int>(h.Find("slice")->number),
                                   static_cast<int>(h.Find("pid")->number)})
                        .second);
      }
    }
    std::set<std::pair<int, int>> claimed;
    for (const Holding& h : holdings) {
      if (h.gpu == name + ":0") claimed.insert({h.slice, h.pid});
    }
    EXPECT_EQ(served, claimed) << name;
  }
}

TEST_F(ClusterTest, WaitersAreServedInOrderAcrossEntryServers) {
  const std::string a = StartServer("a");
  const std::string b = StartServer("b");
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  std::map<std::string, int> pid_of;
  for (int i = 0; i < 8; ++i) {
    const std::string name = "holder" + std::to_string(i);
    ChildProcess* holder = StartReadyHolder(name, i < 4 ? a : b);
    ASSERT_NE(holder, nullptr);
    pid_of[name] = holder->pid();
  }
  ASSERT_EQ(HoldersOn("a:0"), 4);
  ASSERT_EQ(HoldersOn("b:0"), 4);
  // First through a, then through b: both wait in the one queue.
  ChildProcess* first = StartHolder("first", a, {{"FERRY_WAIT", "60s"}});
  ASSERT_NE(first, nullptr);
  std::string text;
  ASSERT_TRUE(WaitForQueueLength(1));
  ChildProcess* second = StartHolder("second", b, {{"FERRY_WAIT", "60s"}});
  ASSERT_NE(second, nullptr);
  ASSERT_TRUE(WaitForQueueLength(2));
  {
    std::optional<JsonValue> status = ClusterStatus(&text);
    ASSERT_TRUE(status.has_value());
    const std::vector<JsonValue>& queue = status->Find("queue")->array;
    EXPECT_EQ(queue[0].Find("pid")->number, first->pid()) << text;
    EXPECT_EQ(queue[0].Find("server")->string, "a") << text;
    EXPECT_EQ(queue[1].Find("position")->number, 2) << text;
  }
  // A slice frees on b: the older waiter (queued through a) gets it, not
  // the one waiting on b itself.
  Release("holder4");
  ASSERT_TRUE(Ready(*first)) << first->Describe();
  EXPECT_NE(first->Stderr().find("sends this program to " + addresses_["b"]), std::string::npos)
      << first->Describe();
  EXPECT_TRUE(second->running());
  EXPECT_EQ(second->Stdout().find("READY"), std::string::npos);
  // Then one frees on a: the second waiter goes there.
  Release("holder0");
  ASSERT_TRUE(Ready(*second)) << second->Describe();
  EXPECT_TRUE(WaitForQueueLength(0));
  EXPECT_EQ(HoldersOn("a:0"), 4);
  EXPECT_EQ(HoldersOn("b:0"), 4);
}

TEST_F(ClusterTest, AWaiterWhoseDeadlinePassesLeavesTheQueue) {
  const std::string a = StartServer("a");
  ASSERT_FALSE(a.empty());
  for (int i = 0; i < 4; ++i) ASSERT_NE(StartReadyHolder("holder" + std::to_string(i), a), nullptr);
  ChildProcess* waiter = StartHolder("waiter", a, {{"FERRY_WAIT", "1s"}});
  ASSERT_NE(waiter, nullptr);
  EXPECT_EQ(waiter->Wait(kProgramTimeout).code, 3) << waiter->Describe();
  EXPECT_NE(waiter->Stderr().find("waited 1s in the cluster's queue"), std::string::npos)
      << waiter->Describe();
  std::string text;
  std::optional<JsonValue> status = ClusterStatus(&text);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->Find("queue")->array.empty()) << text;
  // A killed waiter's place goes too.
  ChildProcess* killed = StartHolder("killed", a, {{"FERRY_WAIT", "60s"}});
  ASSERT_NE(killed, nullptr);
  ASSERT_TRUE(WaitForQueueLength(1));
  killed->Kill(SIGKILL);
  killed->Wait(kStopTimeout);
  EXPECT_TRUE(WaitForQueueLength(0));
}

// Day pool "dev" (4 slices), night pool "train" (1 slice) from 20:00 to
// 08:00 in Shanghai: on every GPU of server a by name, on server b's by its
// label. Drained holders keep their slice for 10 minutes.
constexpr char kClusterDayNight[] = R"([server]
default_pool = "dev"
on_rebind = "drain"
grace = "10m"
[pool.dev]
slices_per_gpu = 4
[pool.train]
slices_per_gpu = 1
[[schedule]]
pool = "train"
gpus = ["a:*"]
from = 20:00:00
to = 08:00:00
timezone = "Asia/Shanghai"
[[schedule]]
pool = "train"
labels = { rack = "r-b" }
from = 20:00:00
to = 08:00:00
timezone = "Asia/Shanghai"
)";

// 19:59:00 in Shanghai, one minute before the night window.
constexpr char kBeforeNight[] = "2026-03-10T19:59:00+08:00";

TEST_F(ClusterTest, OneAppliedConfigDrainsThenHandsGpusOfTwoServersToTheNightPool) {
  const std::string a = StartServer("a", 1, {"--test-fake-clock", kBeforeNight});
  const std::string b = StartServer("b", 1, {"--test-fake-clock", kBeforeNight});
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  std::string err;
  ASSERT_EQ(Apply("cluster.toml", kClusterDayNight, &err), 0) << err;
  // Both servers follow it: each publishes the night change ahead.
  ASSERT_TRUE(test::WaitFor(
      [&] { return GpuField("a:0", "next_pool") == "train" && GpuField("b:0", "next_pool") == "train"; },
      kConditionTimeout, kPollInterval));
  ChildProcess* on_a = StartReadyHolder("day-a", a);
  ChildProcess* on_b = StartReadyHolder("day-b", b);
  ASSERT_NE(on_a, nullptr);
  ASSERT_NE(on_b, nullptr);
  std::string out;
  for (const std::string& server : {a, b}) {
    ASSERT_EQ(Ferryctl({"test-advance-clock", "2m", "--server", server}, &out, &err), 0) << err;
  }
  // 20:01: the GPUs serve "train"; the day holders drain (still held).
  ASSERT_TRUE(test::WaitFor(
      [&] { return GpuField("a:0", "pool") == "train" && GpuField("b:0", "pool") == "train"; },
      kConditionTimeout, kPollInterval));
  EXPECT_EQ(HoldersOn("a:0"), 1);
  EXPECT_EQ(HoldersOn("b:0"), 1);
  EXPECT_TRUE(on_a->running());
  // The grace passes: the holders are preempted and the GPUs free up.
  for (const std::string& server : {a, b}) {
    ASSERT_EQ(Ferryctl({"test-advance-clock", "11m", "--server", server}, &out, &err), 0) << err;
  }
  EXPECT_EQ(on_a->Wait(kProgramTimeout).code, 4) << on_a->Describe();
  EXPECT_EQ(on_b->Wait(kProgramTimeout).code, 4) << on_b->Describe();
  ASSERT_TRUE(test::WaitFor(
      [&] { return Holdings().empty() && GpuField("b:0", "free_slices") == "1"; },
      kConditionTimeout, kPollInterval));
  // Two night borrows through a: one whole GPU on each server.
  ChildProcess* night1 = StartReadyHolder("night1", a, {{"FERRY_POOL", "train"}});
  ASSERT_NE(night1, nullptr);
  ASSERT_TRUE(test::WaitFor([&] { return GpuField("a:0", "free_slices") == "0"; },
                            kConditionTimeout, kPollInterval));
  ChildProcess* night2 = StartReadyHolder("night2", a, {{"FERRY_POOL", "train"}});
  ASSERT_NE(night2, nullptr);
  EXPECT_EQ(HoldersOn("a:0"), 1);
  EXPECT_EQ(HoldersOn("b:0"), 1);
  EXPECT_NE(night1->Stdout().find("total=67108864"), std::string::npos) << night1->Describe();
}

TEST_F(ClusterTest, ApplyRefusesABadConfigAndStoresNothing) {
  ASSERT_FALSE(StartServer("a").empty());
  std::string err;
  // A bare index means nothing in a cluster.
  EXPECT_EQ(Apply("bad.toml",
                  "[server]\ndefault_pool = \"dev\"\n[pool.dev]\n[[schedule]]\npool = \"dev\"\n"
                  "gpus = [0]\nfrom = 08:00:00\nto = 09:00:00\n",
                  &err),
            1);
  EXPECT_NE(err.find("bad.toml:6: schedule[0].gpus"), std::string::npos) << err;
  EXPECT_NE(err.find("nothing stored"), std::string::npos) << err;
  // A GPU that server a does not have.
  EXPECT_EQ(Apply("missing.toml",
                  "[server]\ndefault_pool = \"dev\"\n[pool.dev]\n[[schedule]]\npool = \"dev\"\n"
                  "gpus = [\"a:5\"]\nfrom = 08:00:00\nto = 09:00:00\n",
                  &err),
            1);
  EXPECT_NE(err.find("server a has no GPU 5"), std::string::npos) << err;
  // One server's settings do not belong there.
  EXPECT_EQ(Apply("server.toml", "[server]\ndefault_pool = \"dev\"\nbackend = \"host\"\n[pool.dev]\n",
                  &err),
            1);
  EXPECT_NE(err.find("server.toml:3: server.backend"), std::string::npos) << err;
  // Nothing was stored: a's own pool (dev, 4 slices) is still the one.
  EXPECT_EQ(GpuField("a:0", "slices_per_gpu"), "4");
  EXPECT_EQ(GpuField("a:0", "pool"), "dev");
}

TEST_F(ClusterTest, RebindAndDrainFindTheServerThatOwnsTheGpu) {
  const std::string a = StartServer("a");
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(StartServer("b").empty());
  std::string err, out;
  ASSERT_EQ(Apply("pools.toml",
                  "[server]\ndefault_pool = \"dev\"\n[pool.dev]\nslices_per_gpu = 4\n"
                  "[pool.train]\nslices_per_gpu = 1\n",
                  &err),
            0)
      << err;
  ASSERT_EQ(Ferryctl({"rebind", "b:0", "train", "--etcd", etcd_->endpoint()}, &out, &err), 0)
      << err;
  ASSERT_TRUE(test::WaitFor([&] { return GpuField("b:0", "pool") == "train"; }, kConditionTimeout,
                            kPollInterval));
  EXPECT_EQ(GpuField("a:0", "pool"), "dev");
  ASSERT_EQ(Ferryctl({"drain", "a:0", "--etcd", etcd_->endpoint()}, &out, &err), 0) << err;
  ASSERT_TRUE(test::WaitFor([&] { return GpuField("a:0", "drained") == "true"; },
                            kConditionTimeout, kPollInterval));
  EXPECT_EQ(Ferryctl({"drain", "c:0", "--etcd", etcd_->endpoint()}, &out, &err), 1);
  EXPECT_NE(err.find("no server c"), std::string::npos) << err;
  EXPECT_EQ(Ferryctl({"drain", "a:0", "--server", a}, &out, &err), 2);
  EXPECT_NE(err.find("pass --etcd"), std::string::npos) << err;
}

TEST_F(ClusterTest, StatusOfAnyServerShowsTheWholeCluster) {
  const std::string a = StartServer("a");
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(StartServer("b").empty());
  ASSERT_NE(StartReadyHolder("holder", a), nullptr);
  std::string out, err;
  ASSERT_EQ(Ferryctl({"status", "--server", a, "-o", "json"}, &out, &err), 0) << err;
  std::optional<JsonValue> json = ParseJson(out);
  ASSERT_TRUE(json.has_value()) << out;
  const JsonValue* cluster = json->Find("cluster");
  ASSERT_NE(cluster, nullptr) << out;
  EXPECT_EQ(cluster->Find("name")->string, "a");
  EXPECT_TRUE(cluster->Find("registered")->boolean);
  const JsonValue* view = cluster->Find("view");
  ASSERT_NE(view, nullptr) << out;
  EXPECT_EQ(view->Find("servers")->array.size(), 2u) << out;
  ASSERT_EQ(Ferryctl({"status", "--server", a}, &out, &err), 0) << err;
  EXPECT_NE(out.find("this server is a of the cluster"), std::string::npos) << out;
  EXPECT_NE(out.find("b:0"), std::string::npos) << out;
}

// A client's Hello as a test sends it by hand (pool "dev", no wait).
struct RawHello {
  uint32_t gpus = 1;
  std::string ticket;
  bool ticket_stays = false;
  bool follows_parts = true;
  uint32_t redirects = 0;
};

// The final HelloReply to a raw Hello (queue positions skipped).
struct RawReply {
  Status status;
  std::string redirect, pool, ticket;
  std::vector<std::pair<std::string, uint32_t>> parts;  // (address, gpus)
  size_t devices = 0;
};

// Sends `hello` on a new connection to `address` (left open in `*transport`:
// a granted session lives as long as it) and reads the answer.
void SendRawHello(const std::string& address, const RawHello& hello,
                  std::unique_ptr<Transport>* transport, RawReply* reply) {
  ASSERT_TRUE(ConnectTcp(address, 5000ms, transport).ok()) << address;
  capnp::MallocMessageBuilder message;
  auto out = message.initRoot<wire::Hello>();
  out.setProtocolVersion(wire::PROTOCOL_VERSION);
  out.setRole(wire::Hello::Role::CLIENT);
  out.setPid(static_cast<uint32_t>(getpid()));
  out.setHost("raw-client");
  out.setProgram("raw-hello");
  out.setGpus(hello.gpus);
  out.setFollowsRedirects(true);
  out.setRedirects(hello.redirects);
  out.setQueueTicket(hello.ticket);
  out.setTicketStays(hello.ticket_stays);
  out.setFollowsParts(hello.follows_parts);
  ASSERT_TRUE(WriteFrame(**transport, wire::FrameKind::HELLO, message).ok());
  (*transport)->SetReadDeadline(std::chrono::steady_clock::now() + kProgramTimeout);
  for (;;) {
    Frame frame;
    Status read = ReadFrame(**transport, &frame);
    ASSERT_TRUE(read.ok()) << read.message();
    ASSERT_EQ(frame.kind, wire::FrameKind::HELLO_REPLY);
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    auto in = reader.getRoot<wire::HelloReply>();
    if (in.getQueuePosition() != 0) continue;
    reply->status = StatusFromWire(in.getStatus());
    reply->redirect = in.getRedirect().cStr();
    reply->pool = in.getPool().cStr();
    reply->ticket = in.getQueueTicket().cStr();
    for (auto part : in.getParts()) {
      reply->parts.emplace_back(part.getAddress().cStr(), part.getGpus());
    }
    reply->devices = in.getDevices().size();
    return;
  }
}

// Two servers of one GPU each, a borrow of two devices: no one server has
// room, so the entry answers with two parts and a queue ticket; each part,
// borrowed on its server, claims there, the first leaving the ticket for
// the second, which spends it.
TEST_F(ClusterTest, ABorrowNoOneServerHasRoomForIsSplitAcrossServers) {
  const std::string a = StartServer("a");
  const std::string b = StartServer("b");
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  std::unique_ptr<Transport> entry;
  // Three devices: the cluster has not enough; refused (no wait), and no
  // place in the queue is left behind.
  RawHello too_many;
  too_many.gpus = 3;
  RawReply refused;
  ASSERT_NO_FATAL_FAILURE(SendRawHello(b, too_many, &entry, &refused));
  EXPECT_EQ(refused.status.code(), StatusCode::kOverloaded) << refused.status.message();
  EXPECT_TRUE(refused.parts.empty());
  EXPECT_EQ(QueueLength(), 0);
  // A client that follows redirects but not parts (an older stub) is not
  // given a split it could not read: refused as before, no queue place left.
  RawHello older;
  older.gpus = 2;
  older.follows_parts = false;
  RawReply not_split;
  ASSERT_NO_FATAL_FAILURE(SendRawHello(b, older, &entry, &not_split));
  EXPECT_EQ(not_split.status.code(), StatusCode::kOverloaded) << not_split.status.message();
  EXPECT_TRUE(not_split.parts.empty());
  EXPECT_EQ(QueueLength(), 0);
  RawReply split;
  RawHello whole;
  whole.gpus = 2;
  ASSERT_NO_FATAL_FAILURE(SendRawHello(b, whole, &entry, &split));
  ASSERT_TRUE(split.status.ok()) << split.status.message();
  EXPECT_EQ(split.redirect, "");
  EXPECT_EQ(split.devices, 0u);
  EXPECT_EQ(split.pool, "dev");
  // Equal room (one GPU, four free slices each): by name.
  ASSERT_EQ(split.parts, (std::vector<std::pair<std::string, uint32_t>>{{a, 1}, {b, 1}}));
  ASSERT_FALSE(split.ticket.empty());
  const std::string logged =
      "no one server has room for 2 devices in pool dev; split across a at " + a + " (1), b at " +
      b + " (1)";
  EXPECT_NE(servers_["b"]->Stderr().find(logged), std::string::npos)
      << test::Tail(servers_["b"]->Stderr(), 4000);
  entry.reset();
  EXPECT_EQ(QueueLength(), 1);  // the borrow's place, taken for the parts
  // Each part as the wire says: one device, the ticket, sent on as often
  // as ferryd allows; all but the last leave the ticket.
  RawHello part;
  part.ticket = split.ticket;
  part.redirects = 2;
  part.ticket_stays = true;
  std::unique_ptr<Transport> first, second;
  RawReply on_a, on_b;
  ASSERT_NO_FATAL_FAILURE(SendRawHello(a, part, &first, &on_a));
  ASSERT_TRUE(on_a.status.ok()) << on_a.status.message();
  EXPECT_EQ(on_a.devices, 1u);
  EXPECT_EQ(QueueLength(), 1);  // left for the next part
  part.ticket_stays = false;
  ASSERT_NO_FATAL_FAILURE(SendRawHello(b, part, &second, &on_b));
  ASSERT_TRUE(on_b.status.ok()) << on_b.status.message();
  EXPECT_EQ(on_b.devices, 1u);
  EXPECT_EQ(QueueLength(), 0);  // spent by the last part's claim
  EXPECT_EQ(HoldersOn("a:0"), 1);
  EXPECT_EQ(HoldersOn("b:0"), 1);
  // The parts end with their connections.
  first.reset();
  second.reset();
  EXPECT_TRUE(test::WaitFor([&] { return Holdings().empty(); }, kConditionTimeout, kPollInterval));
}

// FERRY_GPUS=2 through one entry of a cluster whose servers have one GPU
// each: the program gets a device of each server and runs the span program
// (test/e2e/span.cc: a kernel on each, copies between them every way, an
// event of one server waited for on the other's stream), values checked;
// while it runs it holds a slice on each server, and both come back when it
// ends.
TEST_F(ClusterTest, AProgramWithDevicesOfTwoServersRunsAndCopiesBetweenThem) {
  const std::string a = StartServer("a");
  const std::string b = StartServer("b");
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  std::string error;
  std::optional<ChildProcess> span = ChildProcess::Start(
      {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_span", FERRY_E2E_IMAGE_DIR},
      test::ClientEnv(FERRY_E2E_CLIENT_LIB_DIR, b, {{"FERRY_GPUS", "2"}}), dir_ + "/span", &error);
  ASSERT_TRUE(span.has_value()) << error;
  // Holding a slice on each server while it runs (it pauses at the event
  // check only for an instant, so this is looked at once it has ended too:
  // the claims must be gone then).
  const ExitStatus ended = span->Wait(kProgramTimeout);
  EXPECT_TRUE(ended.success()) << span->Describe();
  for (const char* check :
       {"two devices, not peers of each other", "a kernel on a device of each server",
        "cuMemcpyPeer between servers", "cuMemcpyPeerAsync between servers, in stream order",
        "with unified addressing across servers",
        "an event of one server waited for on a stream of another"}) {
    EXPECT_NE(span->Stdout().find(check), std::string::npos) << check << "\n" << span->Describe();
  }
  EXPECT_NE(span->Stderr().find("this program's devices span 2 servers: devices 0-0 at " + a +
                                ", devices 1-1 at " + b),
            std::string::npos)
      << span->Describe();
  EXPECT_NE(servers_["b"]->Stderr().find("split across a at " + a + " (1), b at " + b + " (1)"),
            std::string::npos)
      << test::Tail(servers_["b"]->Stderr(), 4000);
  // Both servers served a session of it, and both slices came back.
  EXPECT_NE(servers_["a"]->Stderr().find("borrowed 1 slice(s) of pool dev"), std::string::npos);
  EXPECT_NE(servers_["b"]->Stderr().find("borrowed 1 slice(s) of pool dev"), std::string::npos);
  EXPECT_TRUE(test::WaitFor([&] { return Holdings().empty(); }, kConditionTimeout, kPollInterval));
  EXPECT_EQ(QueueLength(), 0);
}

}  // namespace
}  // namespace ferry::e2e
