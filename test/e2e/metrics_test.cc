// End-to-end tests of ferryd's /metrics (--metrics-listen): real client
// processes (pool_client through ferry's libcuda.so.1, each session in its
// own worker process) against `ferryd --config FILE --backend host`, scraped
// over HTTP while they run. Every scrape is parsed whole by the strict parser
// of test/support (every line, every rule), and its figures are checked
// against `ferryctl status -o json` taken while nothing changes: sessions,
// slices held, memory used, queue length. Then the counters that outlive
// sessions (calls, frames, bytes, waits, drains, preemptions) are checked as
// sessions end and rebinds happen; tokens and bad requests last.
//
// ferryd is started with --metrics-listen 127.0.0.1:0; its ready file's
// second line ("metrics 127.0.0.1:PORT") says where it listens. Every wait
// is bounded; none decides by how long something took.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mini_json.h"
#include "test/support/child_process.h"
#include "test/support/ferryd.h"
#include "test/support/http_client.h"
#include "test/support/pool_config.h"
#include "test/support/prometheus_text_parser.h"
#include "test/support/wait.h"

namespace ferry::e2e {
namespace {

using namespace std::chrono_literals;
using test::ChildProcess;
using test::ExitStatus;
using test::PromExposition;
using test::Tail;

constexpr auto kReadyTimeout = 10s;
constexpr auto kStopTimeout = 10s;
constexpr auto kProgramTimeout = 60s;
constexpr auto kConditionTimeout = 15s;
constexpr auto kPollInterval = 30ms;
constexpr auto kScrapeTimeout = 10s;

// Two 64 MiB GPUs; pool dev splits each in two, pool other keeps them whole.
std::string TwoGpuConfig() {
  return std::string("[server]\nbackend = \"host\"\nhost_kernels = [\"") + FERRY_E2E_HOST_KERNELS +
         "\"]\ndefault_pool = \"dev\"\n"
         "[[gpu]]\nindex = 0\nmemory = \"64MiB\"\n[[gpu]]\nindex = 1\nmemory = \"64MiB\"\n"
         "[pool.dev]\nslices_per_gpu = 2\n[pool.other]\nslices_per_gpu = 1\n";
}

class MetricsTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (auto& [name, program] : programs_) {
      if (program.running()) program.Kill(SIGKILL);
    }
    const std::string stop_failed = test::StopFerryd("ferryd", ferryd_, kStopTimeout);
    EXPECT_TRUE(stop_failed.empty()) << stop_failed;
    if (HasFailure()) {
      if (ferryd_.has_value()) {
        std::cerr << "ferryd log:\n" << Tail(ferryd_->Stderr(), 12000) << "\n";
      }
      for (auto& [name, program] : programs_) std::cerr << program.Describe(3000) << "\n";
      std::cerr << "last scrape:\n" << last_scrape_ << "\ntest files kept in " << dir_ << "\n";
    } else if (!dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

  // Starts ferryd with `args` and --metrics-listen 127.0.0.1:0 (its port
  // read from the ready file's second line).
  void StartFerryd(std::vector<std::string> args) {
    if (dir_.empty()) dir_ = test::MakeTempDir("ferry-metrics-e2e-");
    ASSERT_FALSE(dir_.empty());
    args.insert(args.end(), {"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"});
    std::string error;
    ferryd_ = test::StartFerryd(FERRY_E2E_FERRYD, args, dir_, kReadyTimeout, &address_, &error);
    ASSERT_TRUE(ferryd_.has_value()) << error;
    std::ifstream ready(dir_ + "/ready");
    std::string first, second;
    ASSERT_TRUE(std::getline(ready, first) && std::getline(ready, second));
    ASSERT_EQ(second.rfind("metrics 127.0.0.1:", 0), 0u) << second;
    metrics_address_ = second.substr(8);
    EXPECT_NE(metrics_address_, "127.0.0.1:0");
  }

  void StartPooled(std::vector<std::string> extra = {}) {
    dir_ = test::MakeTempDir("ferry-metrics-e2e-");
    ASSERT_FALSE(dir_.empty());
    ASSERT_TRUE(test::WriteTextFile(dir_ + "/ferryd.toml", TwoGpuConfig()));
    std::vector<std::string> args = {"--config", dir_ + "/ferryd.toml"};
    args.insert(args.end(), extra.begin(), extra.end());
    ASSERT_NO_FATAL_FAILURE(StartFerryd(args));
  }

  // GET /metrics with `headers`; the answer (a failure if none came).
  test::HttpResponse Get(const std::string& headers = "") {
    std::string error;
    std::optional<test::HttpResponse> response = test::HttpExchange(
        metrics_address_, test::HttpGetRequest("/metrics", headers), kScrapeTimeout, &error);
    EXPECT_TRUE(response.has_value()) << error;
    return response.value_or(test::HttpResponse{});
  }

  // A scrape that must succeed and parse, every line.
  PromExposition Scrape(const std::string& headers = "") {
    test::HttpResponse response = Get(headers);
    last_scrape_ = response.body;
    EXPECT_EQ(response.status, 200) << response.body;
    EXPECT_EQ(response.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    PromExposition parsed;
    const std::string error = test::ParsePrometheusText(response.body, &parsed);
    EXPECT_EQ(error, "") << response.body;
    return parsed;
  }

  // `ferryctl status -o json`, parsed (with `env`: a token).
  std::optional<JsonValue> Status(std::string* text,
                                  const std::map<std::string, std::string>& env = {}) {
    if (Ferryctl({"status", "-o", "json"}, text, env) != 0) return std::nullopt;
    return ParseJson(*text);
  }

  int Ferryctl(std::vector<std::string> args, std::string* out,
               const std::map<std::string, std::string>& env = {}) {
    args.insert(args.begin(), FERRY_E2E_FERRYCTL);
    if (args[1] != "token") args.insert(args.end(), {"--server", address_});
    std::string error;
    std::optional<ChildProcess> ctl =
        ChildProcess::Start(args, env, dir_ + "/ferryctl" + std::to_string(++runs_), &error);
    if (!ctl.has_value()) {
      ADD_FAILURE() << error;
      return -1;
    }
    const ExitStatus status = ctl->Wait(kProgramTimeout);
    *out = ctl->Stdout() + ctl->Stderr();
    return status.exited ? status.code : -1;
  }

  // Starts `pool_client hold` as `name` (released by Release(name)).
  ChildProcess* StartHolder(const std::string& name,
                            const std::map<std::string, std::string>& env = {}) {
    std::string error;
    std::optional<ChildProcess> child = ChildProcess::Start(
        {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_pool_client", "hold",
         dir_ + "/" + name + ".release"},
        test::ClientEnv(FERRY_E2E_CLIENT_LIB_DIR, address_, env), dir_ + "/" + name, &error);
    if (!child.has_value()) {
      ADD_FAILURE() << "cannot start " << name << ": " << error;
      return nullptr;
    }
    return &programs_.emplace(name, std::move(*child)).first->second;
  }

  ChildProcess* StartReadyHolder(const std::string& name,
                                 const std::map<std::string, std::string>& env = {}) {
    ChildProcess* holder = StartHolder(name, env);
    if (holder == nullptr) return nullptr;
    const bool ready = test::WaitFor(
        [&] { return holder->Stdout().find("READY\n") != std::string::npos || holder->Poll(); },
        kProgramTimeout, kPollInterval);
    if (!ready || holder->Stdout().find("READY\n") == std::string::npos) {
      ADD_FAILURE() << name << " never held its slice\n" << holder->Describe();
      return nullptr;
    }
    return holder;
  }

  void Release(const std::string& name) { std::ofstream(dir_ + "/" + name + ".release") << "go\n"; }

  // Polls `ferryctl status -o json` until `done` holds; the status then.
  std::optional<JsonValue> WaitForStatus(const std::string& what,
                                         const std::function<bool(const JsonValue&)>& done) {
    std::string text;
    std::optional<JsonValue> status;
    const bool reached = test::WaitFor(
        [&] {
          status = Status(&text);
          return status.has_value() && done(*status);
        },
        kConditionTimeout, kPollInterval);
    if (reached) return status;
    ADD_FAILURE() << "ferryd never reached: " << what << "; last status:\n" << text;
    return std::nullopt;
  }

  std::string dir_;
  std::string address_;
  std::string metrics_address_;
  std::string last_scrape_;
  std::optional<ChildProcess> ferryd_;
  std::map<std::string, ChildProcess> programs_;
  int runs_ = 0;
};

// The figures that `ferryctl status` also shows must agree with it, scraped
// while the pool holds still: four holders on two GPUs and one waiter.
void ExpectScrapeMatchesStatus(const PromExposition& scrape, const JsonValue& status) {
  const std::vector<JsonValue> sessions = ArrayMember(&status, "sessions");
  const JsonValue* pool = status.Find("pool");
  EXPECT_EQ(scrape.Value("ferry_sessions"), static_cast<double>(sessions.size()));
  for (const JsonValue& gpu : ArrayMember(pool, "gpus")) {
    const std::map<std::string, std::string> labels = {
        {"gpu", std::to_string(static_cast<int>(NumberMember(&gpu, "index")))},
        {"pool", StringMember(&gpu, "pool")}};
    const std::vector<JsonValue> holders = ArrayMember(&gpu, "holders");
    double used = 0;
    for (const JsonValue& h : holders) used += NumberMember(&h, "memory_used");
    EXPECT_EQ(scrape.Value("ferry_gpu_slices_held", labels), static_cast<double>(holders.size()))
        << labels.at("gpu");
    EXPECT_EQ(scrape.Value("ferry_gpu_sessions", labels), static_cast<double>(holders.size()));
    EXPECT_EQ(scrape.Value("ferry_gpu_memory_used_bytes", labels), used) << labels.at("gpu");
    EXPECT_EQ(scrape.Value("ferry_gpu_memory_total_bytes", labels), NumberMember(&gpu, "memory"));
    EXPECT_EQ(scrape.Value("ferry_gpu_slices", labels), NumberMember(&gpu, "slices_per_gpu"));
    EXPECT_EQ(scrape.Value("ferry_gpu_drained", labels), 0.0);
    if (holders.empty()) continue;
    const std::string mechanism = StringMember(&holders[0], "mechanism");
    EXPECT_EQ(scrape.Value("ferry_gpu_compute_mechanism",
                           {{"gpu", labels.at("gpu")}, {"mechanism", mechanism}}),
              1.0)
        << mechanism;
  }
  std::map<std::string, double> queued, held;
  for (const JsonValue& w : ArrayMember(pool, "queue")) ++queued[StringMember(&w, "pool")];
  for (const JsonValue& gpu : ArrayMember(pool, "gpus")) {
    for (const JsonValue& h : ArrayMember(&gpu, "holders")) ++held[StringMember(&h, "pool")];
  }
  for (const char* name : {"dev", "other"}) {
    EXPECT_EQ(scrape.Value("ferry_pool_queue_length", {{"pool", name}}), queued[name]) << name;
    EXPECT_EQ(scrape.Value("ferry_pool_holders", {{"pool", name}}), held[name]) << name;
  }
  // Per session (--metrics-sessions): one series each, with its memory.
  EXPECT_EQ(scrape.Find("ferry_session_memory_bytes").size(), sessions.size());
  for (const JsonValue& s : sessions) {
    const std::string id = std::to_string(static_cast<long long>(NumberMember(&s, "id")));
    const std::map<std::string, std::string> labels = {{"session", id},
                                                       {"program", StringMember(&s, "program")},
                                                       {"client_host", StringMember(&s, "host")}};
    EXPECT_EQ(scrape.Value("ferry_session_memory_bytes", labels),
              NumberMember(&s, "bytes_allocated"))
        << "session " << id;
    EXPECT_GT(scrape.Value("ferry_session_calls_total", labels).value_or(0), 0) << id;
    EXPECT_GT(scrape.Value("ferry_session_bytes_from_client_total", labels).value_or(0), 0) << id;
    EXPECT_GT(scrape.Value("ferry_session_bytes_to_client_total", labels).value_or(0), 0) << id;
    EXPECT_TRUE(scrape.Value("ferry_session_launches_total", labels).has_value()) << id;
  }
}

double Sum(const PromExposition& scrape, const std::string& name) {
  double sum = 0;
  for (const test::PromSample* sample : scrape.Find(name)) sum += sample->value;
  return sum;
}

TEST_F(MetricsTest, ScrapesAgreeWithFerryctlStatusWhileSessionsRun) {
  ASSERT_NO_FATAL_FAILURE(StartPooled({"--metrics-sessions"}));

  // Before anything: every GPU and pool is there, with DCGM's labels.
  PromExposition idle = Scrape();
  EXPECT_EQ(idle.Value("ferry_sessions"), 0.0);
  for (const char* gpu : {"0", "1"}) {
    const std::vector<const test::PromSample*> total =
        idle.Find("ferry_gpu_memory_total_bytes", {{"gpu", gpu}});
    ASSERT_EQ(total.size(), 1u) << last_scrape_;
    EXPECT_EQ(total[0]->value, 64 << 20);
    EXPECT_EQ(total[0]->labels.at("UUID").rfind("GPU-", 0), 0u);
    EXPECT_FALSE(total[0]->labels.at("modelName").empty());
    EXPECT_FALSE(total[0]->labels.at("Hostname").empty());
    EXPECT_EQ(total[0]->labels.at("server"), total[0]->labels.at("Hostname"));
    EXPECT_EQ(total[0]->labels.at("pool"), "dev");
  }
  EXPECT_EQ(idle.Value("ferry_pool_gpus", {{"pool", "dev"}}), 2.0);
  EXPECT_EQ(idle.Value("ferry_pool_gpus", {{"pool", "other"}}), 0.0);
  EXPECT_GT(idle.Value("process_start_time_seconds").value_or(0), 1.7e9);
  EXPECT_EQ(idle.Value("ferry_build_info", {{"backend", "host"}}), 1.0);
  EXPECT_EQ(idle.Value("ferry_sync_call_duration_seconds_count"), 0.0);

  // Four holders fill both GPUs; a fifth waits.
  for (int i = 0; i < 4; ++i) ASSERT_NE(StartReadyHolder("holder" + std::to_string(i)), nullptr);
  ASSERT_NE(StartHolder("waiter", {{"FERRY_WAIT", "5m"}}), nullptr);
  std::optional<JsonValue> status = WaitForStatus("four sessions and one waiter", [](auto& s) {
    return ArrayMember(&s, "sessions").size() == 4 &&
           ArrayMember(s.Find("pool"), "queue").size() == 1;
  });
  ASSERT_TRUE(status.has_value());
  PromExposition busy = Scrape();
  ExpectScrapeMatchesStatus(busy, *status);
  // The same figures from one more status after the scrape: nothing moved.
  std::string text;
  std::optional<JsonValue> after = Status(&text);
  ASSERT_TRUE(after.has_value()) << text;
  ExpectScrapeMatchesStatus(busy, *after);
  EXPECT_EQ(busy.Value("ferry_pool_waits_total", {{"pool", "dev"}}), 1.0);
  EXPECT_EQ(busy.Value("ferry_pool_wait_duration_seconds_count", {{"pool", "dev"}}), 0.0);
  EXPECT_EQ(busy.Value("ferry_sessions_started_total"), 4.0);
  // Nothing has ended yet: the totals are the sessions' sums.
  EXPECT_EQ(busy.Value("ferry_calls_total"), Sum(busy, "ferry_session_calls_total"));
  EXPECT_EQ(busy.Value("ferry_launches_total"), Sum(busy, "ferry_session_launches_total"));
  EXPECT_EQ(busy.Value("ferry_bytes_received_total"),
            Sum(busy, "ferry_session_bytes_from_client_total"));
  EXPECT_EQ(busy.Value("ferry_bytes_sent_total"), Sum(busy, "ferry_session_bytes_to_client_total"));
  EXPECT_GT(busy.Value("ferry_frames_received_total").value_or(0), 0);
  EXPECT_GT(busy.Value("ferry_frames_sent_total").value_or(0), 0);
  EXPECT_GE(busy.Value("ferry_sync_call_duration_seconds_count").value_or(0), 4);

  // holder0 ends; the waiter gets its slice. Its wait is timed, and what
  // holder0's session did stays in the totals.
  Release("holder0");
  EXPECT_TRUE(programs_.at("holder0").Wait(kProgramTimeout).success());
  status = WaitForStatus("the waiter holds a slice", [&](auto& s) {
    const pid_t waiter = programs_.at("waiter").pid();
    bool holds = false;
    for (const JsonValue& gpu : ArrayMember(s.Find("pool"), "gpus")) {
      for (const JsonValue& h : ArrayMember(&gpu, "holders"))
        holds |= NumberMember(&h, "pid") == waiter;
    }
    return holds && ArrayMember(&s, "sessions").size() == 4 &&
           ArrayMember(s.Find("pool"), "queue").empty();
  });
  ASSERT_TRUE(status.has_value());
  ASSERT_TRUE(test::WaitFor(
      [&] { return programs_.at("waiter").Stdout().find("READY\n") != std::string::npos; },
      kProgramTimeout, kPollInterval));
  status = Status(&text);
  ASSERT_TRUE(status.has_value()) << text;
  PromExposition later = Scrape();
  ExpectScrapeMatchesStatus(later, *status);
  EXPECT_EQ(later.Value("ferry_pool_waits_total", {{"pool", "dev"}}), 1.0);
  EXPECT_EQ(later.Value("ferry_pool_wait_duration_seconds_count", {{"pool", "dev"}}), 1.0);
  EXPECT_EQ(
      later.Value("ferry_pool_wait_duration_seconds_bucket", {{"pool", "dev"}, {"le", "+Inf"}}),
      1.0);
  EXPECT_EQ(later.Value("ferry_sessions_started_total"), 5.0);
  for (const char* counter :
       {"ferry_calls_total", "ferry_launches_total", "ferry_frames_received_total",
        "ferry_frames_sent_total", "ferry_bytes_received_total", "ferry_bytes_sent_total",
        "ferry_sync_call_duration_seconds_count", "ferry_sync_call_duration_seconds_sum"}) {
    EXPECT_GE(later.Value(counter).value_or(-1), busy.Value(counter).value_or(0)) << counter;
  }
  // The ended session's calls are still counted: more than the live ones'.
  EXPECT_GT(later.Value("ferry_calls_total").value_or(0), Sum(later, "ferry_session_calls_total"));

  // A drain rebind of GPU 1 (holder2, holder3) and a preempting one of GPU 0.
  std::string out;
  ASSERT_EQ(Ferryctl({"rebind", "1", "other", "--drain", "--grace", "10m"}, &out), 0) << out;
  ASSERT_EQ(Ferryctl({"rebind", "0", "other", "--preempt"}, &out), 0) << out;
  PromExposition rebound = Scrape();
  EXPECT_EQ(rebound.Value("ferry_pool_drains_total", {{"pool", "dev"}}), 2.0);
  EXPECT_EQ(rebound.Value("ferry_pool_preemptions_total", {{"pool", "dev"}}), 2.0);
  EXPECT_EQ(rebound.Value("ferry_pool_drains_total", {{"pool", "other"}}), 0.0);
  EXPECT_EQ(rebound.Value("ferry_pool_gpus", {{"pool", "other"}}), 2.0);
  EXPECT_EQ(rebound.Find("ferry_gpu_slices", {{"gpu", "1"}, {"pool", "other"}}).size(), 1u);
  for (const char* name : {"holder1", "holder2", "holder3", "waiter"}) Release(name);
}

TEST_F(MetricsTest, AChangeOfTheMetricsSettingsNeedsARestart) {
  ASSERT_NO_FATAL_FAILURE(StartPooled());
  std::string config = TwoGpuConfig();
  config.insert(config.find("default_pool"), "metrics_listen = \"127.0.0.1:0\"\n");
  ASSERT_TRUE(test::WriteTextFile(dir_ + "/ferryd.toml", config));
  std::string out;
  EXPECT_EQ(Ferryctl({"reload"}, &out), 1) << out;
  EXPECT_NE(out.find("server.metrics_listen changed; that needs a restart"), std::string::npos)
      << out;
  // The old settings stay, and so does the listener.
  EXPECT_EQ(Scrape().Value("ferry_sessions"), 0.0);
}

TEST_F(MetricsTest, WithATokenFileAScrapeNeedsAToken) {
  dir_ = test::MakeTempDir("ferry-metrics-e2e-");
  ASSERT_FALSE(dir_.empty());
  const std::string token_file = dir_ + "/tokens.toml";
  std::string token;
  ASSERT_EQ(Ferryctl({"token", "create", "--token-file", token_file, "--pools", "dev", "--name",
                      "scraper"},
                     &token),
            0)
      << token;
  token = token.substr(0, token.find('\n'));
  ASSERT_EQ(token.rfind("ferry_", 0), 0u) << token;
  ASSERT_TRUE(test::WriteTextFile(dir_ + "/ferryd.toml", TwoGpuConfig()));
  ASSERT_NO_FATAL_FAILURE(
      StartFerryd({"--config", dir_ + "/ferryd.toml", "--token-file", token_file}));

  test::HttpResponse none = Get();
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(none.headers["www-authenticate"], "Bearer realm=\"ferryd\"");
  EXPECT_EQ(none.body.find("ferry_"), std::string::npos) << none.body;
  std::string wrong = token;
  wrong.back() = wrong.back() == '0' ? '1' : '0';
  EXPECT_EQ(Get("Authorization: Bearer " + wrong + "\r\n").status, 401);
  EXPECT_NE(ferryd_->Stderr().find("metrics request from 127.0.0.1"), std::string::npos);
  // Any token of the file will do (this one is no admin and has one pool).
  PromExposition scrape = Scrape("Authorization: Bearer " + token + "\r\n");
  EXPECT_EQ(scrape.Value("ferry_sessions"), 0.0);
  EXPECT_EQ(scrape.Value("ferry_pool_holders", {{"pool", "dev"}}), 0.0);
  // Per-session series are opt-in: their families are not there.
  EXPECT_EQ(scrape.Family("ferry_session_calls_total"), nullptr);
}

TEST_F(MetricsTest, BadRequestsGetA4xxAndNothingElseIsAffected) {
  // No pools: every session gets every GPU, whole; no pool series.
  ASSERT_NO_FATAL_FAILURE(
      StartFerryd({"--backend", "host", "--host-kernels", FERRY_E2E_HOST_KERNELS}));
  ChildProcess* holder = StartReadyHolder("holder");
  ASSERT_NE(holder, nullptr);
  const std::vector<std::pair<std::string, int>> bad = {
      {"\x16\x03\x01\x02\x05 not HTTP\r\n\r\n", 400},  // a TLS record to a plain listener
      {"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + std::string(20000, 'x') + "\r\n\r\n", 431},
      {"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405},
      {"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n", 404},
  };
  for (const auto& [request, code] : bad) {
    std::string error;
    std::optional<test::HttpResponse> response =
        test::HttpExchange(metrics_address_, request, kScrapeTimeout, &error);
    ASSERT_TRUE(response.has_value()) << error;
    EXPECT_EQ(response->status, code) << request.substr(0, 40);
  }
  // The session went on, ferryd serves the next scrape, and the client's
  // figures are whole.
  EXPECT_TRUE(holder->running()) << holder->Describe();
  PromExposition scrape = Scrape();
  EXPECT_EQ(scrape.Value("ferry_sessions"), 1.0);
  EXPECT_EQ(scrape.Value("ferry_gpu_sessions", {{"gpu", "0"}, {"pool", ""}}), 1.0);
  EXPECT_EQ(scrape.Value("ferry_gpu_memory_used_bytes", {{"gpu", "0"}}), 1 << 20);
  EXPECT_EQ(scrape.Value("ferry_gpu_compute_mechanism", {{"gpu", "0"}, {"mechanism", "whole-gpu"}}),
            1.0);
  EXPECT_EQ(scrape.Family("ferry_pool_holders"), nullptr);
  EXPECT_EQ(scrape.Family("ferry_gpu_slices"), nullptr);
  Release("holder");
  EXPECT_TRUE(holder->Wait(kProgramTimeout).success()) << holder->Describe();
}

}  // namespace
}  // namespace ferry::e2e
