// The TOML config: every key of README.md's pool example, and errors that name
// the file, the line and the key.
#include "server/pool/config.h"

#include <gtest/gtest.h>

#include <cstdio>
#include "test/support/pool_config.h"

namespace ferry::pool {
namespace {

constexpr const char* kExample = R"(# the example from the README
[server]
listen = ["127.0.0.1:7070"]
backend = "host"                 # or "cuda"
default_pool = "dev"

[[gpu]]
index = 0
memory = "8GiB"

[pool.dev]
slices_per_gpu = 4
[pool.train]
slices_per_gpu = 1

[[schedule]]
pool = "dev"
gpus = [0]
from = 08:00:00
to = 20:00:00
timezone = "Asia/Shanghai"
[[schedule]]
pool = "train"
gpus = [0]
from = 20:00:00
to = 08:00:00
timezone = "Asia/Shanghai"
on_rebind = "drain"
grace = "15m"
)";

TEST(ConfigTest, ParsesTheIssueExample) {
  Config config;
  Status status = ParseConfig(kExample, "ferryd.toml", &config);
  ASSERT_TRUE(status.ok()) << status.ToString();
  ASSERT_TRUE(config.server.listen.has_value());
  EXPECT_EQ(*config.server.listen, std::vector<std::string>{"127.0.0.1:7070"});
  EXPECT_EQ(config.server.backend, "host");
  EXPECT_EQ(config.server.default_pool, "dev");
  EXPECT_FALSE(config.server.cuda_driver.has_value());
  ASSERT_EQ(config.gpus.size(), 1u);
  EXPECT_EQ(config.gpus[0].index, 0);
  EXPECT_EQ(config.gpus[0].memory, 8ull << 30);
  EXPECT_EQ(config.gpus[0].line, 7);
  ASSERT_EQ(config.pools.size(), 2u);
  EXPECT_EQ(config.pools["dev"].slices_per_gpu, 4);
  EXPECT_EQ(config.pools["train"].slices_per_gpu, 1);
  ASSERT_EQ(config.schedules.size(), 2u);
  EXPECT_EQ(config.schedules[0].pool, "dev");
  EXPECT_EQ(config.schedules[0].window.ToString(), "08:00:00-20:00:00 Asia/Shanghai");
  EXPECT_EQ(config.schedules[0].on_rebind, RebindPolicy::kDrain);  // the [server] default
  EXPECT_EQ(config.schedules[0].grace, absl::Minutes(15));         // likewise
  EXPECT_EQ(config.schedules[1].window.ToString(), "20:00:00-08:00:00 Asia/Shanghai");
  EXPECT_EQ(config.schedules[1].gpus, std::vector<int>{0});
  EXPECT_EQ(config.schedules[1].line, 22);
  EXPECT_TRUE(config.pooling());
}

TEST(ConfigTest, ServerDefaultsAndOtherForms) {
  Config config;
  Status status = ParseConfig(R"(
[server]
listen = "0.0.0.0:7070"
backend = "cuda"
cuda_driver = "/opt/libcuda.so.1"
host_kernels = ["a.so", "b.so"]
log_level = "debug"
default_pool = "p"
on_rebind = "preempt"
grace = "1h30m"
[pool.p]
[[schedule]]
pool = "p"
gpus = [1, 0]
from = "22:00"
to = "06:30"
[[gpu]]
index = 1
[[gpu]]
index = 0
memory = 1048576
)",
                              "x.toml", &config);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(*config.server.listen, std::vector<std::string>{"0.0.0.0:7070"});
  EXPECT_EQ(*config.server.cuda_driver, "/opt/libcuda.so.1");
  EXPECT_EQ(config.server.host_kernels->size(), 2u);
  EXPECT_EQ(*config.server.log_level, "debug");
  EXPECT_EQ(config.pools["p"].slices_per_gpu, 1);  // the default
  ASSERT_EQ(config.schedules.size(), 1u);
  EXPECT_EQ(config.schedules[0].on_rebind, RebindPolicy::kPreempt);
  EXPECT_EQ(config.schedules[0].grace, absl::Minutes(90));
  EXPECT_EQ(config.schedules[0].window.ToString(), "22:00:00-06:30:00 UTC");
  EXPECT_EQ(config.gpus[1].memory, 1048576u);
  EXPECT_FALSE(config.gpus[0].memory.has_value());
}

// on_rebind = "migrate" in [server] (the default of schedules and manual
// rebinds) and in a schedule, next to the other two policies.
TEST(ConfigTest, RebindPolicies) {
  Config config;
  Status status = ParseConfig(R"(
[server]
default_pool = "p"
on_rebind = "migrate"
[pool.p]
[pool.q]
[[schedule]]
pool = "q"
gpus = [0]
from = "22:00"
to = "06:00"
[[schedule]]
pool = "q"
gpus = [1]
from = "22:00"
to = "06:00"
on_rebind = "preempt"
[[schedule]]
pool = "q"
gpus = [2]
from = "22:00"
to = "06:00"
on_rebind = "drain"
)",
                              "x.toml", &config);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(config.server.on_rebind, RebindPolicy::kMigrate);
  ASSERT_EQ(config.schedules.size(), 3u);
  EXPECT_EQ(config.schedules[0].on_rebind, RebindPolicy::kMigrate);  // the [server] default
  EXPECT_EQ(config.schedules[1].on_rebind, RebindPolicy::kPreempt);
  EXPECT_EQ(config.schedules[2].on_rebind, RebindPolicy::kDrain);
  EXPECT_EQ(RebindPolicyName(RebindPolicy::kMigrate), "migrate");
  EXPECT_EQ(RebindPolicyName(RebindPolicy::kPreempt), "preempt");
  EXPECT_EQ(RebindPolicyName(RebindPolicy::kDrain), "drain");
  status = ParseConfig(
      "[server]\ndefault_pool = \"p\"\n[pool.p]\n[[schedule]]\npool = \"p\"\n"
      "gpus = [0]\nfrom = \"22:00\"\nto = \"06:00\"\non_rebind = \"move\"\n",
      "bad.toml", &config);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("bad.toml:9: schedule[0].on_rebind: 'move' is not \"drain\", "
                                  "\"preempt\" or \"migrate\""),
            std::string::npos)
      << status.message();
}

TEST(ConfigTest, ServerOnlyMeansNoPools) {
  Config config;
  ASSERT_TRUE(ParseConfig("[server]\nbackend = \"host\"\n", "s.toml", &config).ok());
  EXPECT_FALSE(config.pooling());
}

// Parses `text` and expects an error whose message starts with `prefix`
// ("FILE:LINE: key") and contains `detail`.
void ExpectError(const std::string& text, const std::string& prefix, const std::string& detail) {
  Config config;
  Status status = ParseConfig(text, "bad.toml", &config);
  ASSERT_FALSE(status.ok()) << text;
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message().rfind(prefix, 0), 0u) << status.message();
  EXPECT_NE(status.message().find(detail), std::string::npos) << status.message();
}

TEST(ConfigTest, ServerLimits) {
  Config config;
  Status status = ParseConfig(R"(
[server]
handshake_timeout = "2s"
max_connections = 64
max_sessions = 8
session_buffer = "256MiB"
compute_sharing = "mps"
busy_poll = 100
)",
                              "x.toml", &config);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(*config.server.handshake_timeout, absl::Seconds(2));
  EXPECT_EQ(*config.server.max_connections, 64);
  EXPECT_EQ(*config.server.max_sessions, 8);
  EXPECT_EQ(*config.server.session_buffer, 256ull << 20);
  EXPECT_EQ(*config.server.compute_sharing, "mps");
  EXPECT_EQ(*config.server.busy_poll, std::chrono::microseconds(100));
  ExpectError("[server]\ncompute_sharing = \"mig\"\n", "bad.toml:2: server.compute_sharing",
              "not \"auto\" or \"mps\"");
  ExpectError("[server]\nmax_sessions = 0\n", "bad.toml:2: server.max_sessions", "out of range");
  ExpectError("[server]\nhandshake_timeout = \"0\"\n", "bad.toml:2: server.handshake_timeout",
              "more than 0");
  ExpectError("[server]\nsession_buffer = \"lots\"\n", "bad.toml:2: server.session_buffer",
              "not a size");
  ExpectError("[server]\nbusy_poll = 1001\n", "bad.toml:2: server.busy_poll", "out of range");
  ExpectError("[server]\nbusy_poll = \"50us\"\n", "bad.toml:2: server.busy_poll", "an integer");
}

TEST(ConfigTest, MemoryOvercommitAndParkAfter) {
  Config config;
  Status status = ParseConfig(
      "[server]\ndefault_pool = \"shared\"\n"
      "[pool.shared]\nslices_per_gpu = 2\nmemory_overcommit = 1.5\npark_after = \"45s\"\n"
      "[pool.plain]\nslices_per_gpu = 2\n",
      "x.toml", &config);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(config.pools["shared"].memory_overcommit, 1.5);
  EXPECT_EQ(config.pools["shared"].park_after, absl::Seconds(45));
  EXPECT_EQ(config.pools["plain"].memory_overcommit, 1.0);  // the defaults
  EXPECT_EQ(config.pools["plain"].park_after, absl::Seconds(30));
  ExpectError("[pool.p]\nmemory_overcommit = 0.5\n", "bad.toml:2: pool.p.memory_overcommit",
              "out of range");
  ExpectError("[pool.p]\nmemory_overcommit = 9\n", "bad.toml:2: pool.p.memory_overcommit",
              "out of range");
  ExpectError("[pool.p]\nmemory_overcommit = \"2x\"\n", "bad.toml:2: pool.p.memory_overcommit",
              "a number");
  ExpectError("[pool.p]\npark_after = \"soon\"\n", "bad.toml:2: pool.p.park_after",
              "not a duration");
}

TEST(ConfigTest, IdleRelease) {
  Config config;
  Status status = ParseConfig(
      "[server]\ndefault_pool = \"dev\"\n"
      "[pool.dev]\nslices_per_gpu = 4\nidle_release = \"15m\"\n"
      "[pool.train]\n",
      "x.toml", &config);
  ASSERT_TRUE(status.ok()) << status.ToString();
  ASSERT_TRUE(config.pools["dev"].idle_release.has_value());
  EXPECT_EQ(*config.pools["dev"].idle_release, absl::Minutes(15));
  EXPECT_FALSE(config.pools["train"].idle_release.has_value());  // the default: never
  ExpectError("[pool.p]\nidle_release = \"50ms\"\n", "bad.toml:2: pool.p.idle_release",
              "at least 100ms");
  ExpectError("[pool.p]\nidle_release = 60\n", "bad.toml:2: pool.p.idle_release",
              "expected a string");
  ExpectError("[pool.p]\nidle_release = \"later\"\n", "bad.toml:2: pool.p.idle_release",
              "not a duration");
}

TEST(ConfigTest, MetricsKeys) {
  Config config;
  Status status = ParseConfig(
      "[server]\nmetrics_listen = \"127.0.0.1:9400\"\n"
      "metrics_sessions = true\n",
      "x.toml", &config);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(*config.server.metrics_listen, "127.0.0.1:9400");
  EXPECT_TRUE(*config.server.metrics_sessions);
  Config unset;
  ASSERT_TRUE(ParseConfig("[server]\n", "x.toml", &unset).ok());
  EXPECT_FALSE(unset.server.metrics_listen.has_value());
  EXPECT_FALSE(unset.server.metrics_sessions.has_value());
  ExpectError("[server]\nmetrics_listen = \"9400\"\n", "bad.toml:2: server.metrics_listen",
              "host:port");
  ExpectError("[server]\nmetrics_listen = 9400\n", "bad.toml:2: server.metrics_listen", "a string");
  ExpectError("[server]\n\nmetrics_sessions = \"yes\"\n", "bad.toml:3: server.metrics_sessions",
              "true or false");
}

TEST(ConfigTest, AuthTable) {
  Config config;
  Status status = ParseConfig(R"(
[auth]
token_file = "/etc/ferry/tokens.toml"
tls_cert = "cert.pem"
tls_key = "key.pem"
unix_group = "ferry"
unix_allow_uids = [1000, 1001]
unix_allow_gids = [100]
)",
                              "x.toml", &config);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(*config.auth.token_file, "/etc/ferry/tokens.toml");
  EXPECT_EQ(*config.auth.tls_cert, "cert.pem");
  EXPECT_EQ(*config.auth.tls_key, "key.pem");
  EXPECT_EQ(*config.auth.unix_group, "ferry");
  EXPECT_EQ(*config.auth.unix_allow_uids, (std::vector<uint32_t>{1000, 1001}));
  EXPECT_EQ(*config.auth.unix_allow_gids, (std::vector<uint32_t>{100}));
  ExpectError("[auth]\ntoken = \"x\"\n", "bad.toml:2: auth.token", "unknown key");
  ExpectError("[auth]\ntoken_file = 3\n", "bad.toml:2: auth.token_file", "a string");
  ExpectError("[auth]\nunix_allow_uids = [-1]\n", "bad.toml:2: auth.unix_allow_uids",
              "out of range");
}

TEST(ConfigTest, ClusterTable) {
  Config config;
  Status status = ParseConfig(R"(
[cluster]
etcd = ["http://10.0.0.5:2379", "http://10.0.0.6:2379"]
name = "gpu-a"
advertise = "10.0.0.11:7070"
labels = { rack = "r1", zone = "z" }
ttl = "5s"
prefix = "/ferry-test"
)",
                              "x.toml", &config);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(config.cluster.etcd->size(), 2u);
  EXPECT_EQ(*config.cluster.name, "gpu-a");
  EXPECT_EQ(*config.cluster.advertise, "10.0.0.11:7070");
  EXPECT_EQ(config.cluster.labels->at("zone"), "z");
  EXPECT_EQ(*config.cluster.ttl, absl::Seconds(5));
  EXPECT_EQ(*config.cluster.prefix, "/ferry-test");
  ASSERT_TRUE(ParseConfig("[cluster]\netcd = \"http://e:2379\"\n", "x.toml", &config).ok());
  EXPECT_EQ(*config.cluster.etcd, std::vector<std::string>{"http://e:2379"});
  ExpectError("[cluster]\nttl = \"1s\"\n", "bad.toml:2: cluster.ttl", "at least 2s");
  ExpectError("[cluster]\nname = \"\"\n", "bad.toml:2: cluster.name", "is empty");
  ExpectError("[cluster]\nlabels = { rack = 1 }\n", "bad.toml:2: cluster.labels.rack", "a string");
  ExpectError("[cluster]\nleader = true\n", "bad.toml:2: cluster.leader", "unknown key");
}

TEST(ConfigTest, ClusterConfigNamesGpusByServer) {
  Config config;
  Status status = ParseClusterConfig(R"([server]
default_pool = "dev"
grace = "5m"
[pool.dev]
slices_per_gpu = 4
[pool.train]
slices_per_gpu = 1
[[schedule]]
pool = "train"
gpus = ["a:*", "b:1"]
from = 20:00:00
to = 08:00:00
[[schedule]]
pool = "train"
labels = { rack = "r2" }
from = 22:00:00
to = 06:00:00
)",
                                     "cluster.toml", &config);
  ASSERT_TRUE(status.ok()) << status.ToString();
  ASSERT_EQ(config.schedules.size(), 2u);
  EXPECT_EQ(config.schedules[0].gpu_names, (std::vector<std::string>{"a:*", "b:1"}));
  EXPECT_TRUE(config.schedules[0].gpus.empty());
  EXPECT_EQ(config.schedules[1].server_labels.at("rack"), "r2");
  EXPECT_EQ(config.schedules[0].grace, absl::Minutes(5));

  // As server a (GPUs 0 and 1): the first schedule, both GPUs.
  Config a = LocalizeSchedules(config, "a", {{"rack", "r1"}}, {0, 1});
  ASSERT_EQ(a.schedules.size(), 1u);
  EXPECT_EQ(a.schedules[0].gpus, (std::vector<int>{0, 1}));
  EXPECT_TRUE(a.schedules[0].gpu_names.empty());
  // As server b in rack r2: GPU 1 from the first, every GPU from the second,
  // in file order.
  Config b = LocalizeSchedules(config, "b", {{"rack", "r2"}}, {0, 1, 2});
  ASSERT_EQ(b.schedules.size(), 2u);
  EXPECT_EQ(b.schedules[0].gpus, (std::vector<int>{1}));
  EXPECT_EQ(b.schedules[1].gpus, (std::vector<int>{0, 1, 2}));
  // Server c, named nowhere and in no such rack: no schedule.
  EXPECT_TRUE(LocalizeSchedules(config, "c", {}, {0}).schedules.empty());

  // The cluster's pools replace a server's own.
  Config local;
  ASSERT_TRUE(ParseConfig("[server]\nlisten = \"127.0.0.1:1\"\ndefault_pool = \"x\"\n[pool.x]\n",
                          "local.toml", &local)
                  .ok());
  Config merged = WithClusterPools(local, config);
  EXPECT_EQ(merged.server.default_pool, "dev");
  EXPECT_EQ(merged.pools.count("x"), 0u);
  EXPECT_EQ(merged.pools.count("train"), 1u);
  EXPECT_EQ(merged.server.listen->at(0), "127.0.0.1:1");
}

TEST(ConfigTest, ClusterConfigHoldsNoOneServersSettings) {
  const auto expect = [](const std::string& text, const std::string& where,
                         const std::string& what) {
    Config config;
    Status status = ParseClusterConfig(text, "c.toml", &config);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << text;
    EXPECT_NE(status.message().find(where), std::string::npos) << status.message();
    EXPECT_NE(status.message().find(what), std::string::npos) << status.message();
  };
  const std::string pools = "[pool.dev]\n";
  expect("[server]\ndefault_pool = \"dev\"\nlisten = \"a:1\"\n" + pools, "c.toml:3: server.listen",
         "one server's config");
  expect("[[gpu]]\nindex = 0\n", "c.toml:1: gpu", "one server's config");
  expect("[cluster]\nname = \"a\"\n", "c.toml:1: cluster", "one server's config");
  expect("[server]\ndefault_pool = \"dev\"\n" + pools +
             "[[schedule]]\npool = \"dev\"\ngpus = [0]\nfrom = 08:00:00\nto = 09:00:00\n",
         "c.toml:6: schedule[0].gpus", "SERVER:INDEX");
  expect("[server]\ndefault_pool = \"dev\"\n" + pools +
             "[[schedule]]\npool = \"dev\"\ngpus = [\"a\"]\nfrom = 08:00:00\nto = 09:00:00\n",
         "c.toml:6: schedule[0].gpus", "'a' is not SERVER:INDEX");
  expect("[server]\ndefault_pool = \"dev\"\n" + pools +
             "[[schedule]]\npool = \"dev\"\nfrom = 08:00:00\nto = 09:00:00\n",
         "schedule[0].gpus", "missing");
  // A server's own config may not name GPUs by server unless it is in a
  // cluster: the pool refuses it (PoolState), not the parser.
  Config local;
  EXPECT_TRUE(ParseConfig("[server]\ndefault_pool = \"dev\"\n" + pools +
                              "[[schedule]]\npool = \"dev\"\ngpus = [\"a:0\"]\nfrom = 08:00:00\n"
                              "to = 09:00:00\n",
                          "l.toml", &local)
                  .ok());
}

TEST(ConfigTest, UnknownKeysNameFileLineAndKey) {
  ExpectError("[server]\nlisten = \"a:1\"\nlisen = 3\n", "bad.toml:3: server.lisen", "unknown key");
  ExpectError("[servers]\n", "bad.toml:1: servers", "unknown key");
  ExpectError("[server]\ndefault_pool = \"d\"\n[pool.d]\nslices = 2\n", "bad.toml:4: pool.d.slices",
              "unknown key");
  ExpectError("[[gpu]]\nindex = 0\nmem = \"1GiB\"\n", "bad.toml:3: gpu[0].mem", "unknown key");
  ExpectError(
      "[server]\ndefault_pool = \"d\"\n[pool.d]\n[[schedule]]\npool = \"d\"\ngpus = [0]\n"
      "from = 08:00:00\nto = 09:00:00\ntz = \"UTC\"\n",
      "bad.toml:9: schedule[0].tz", "unknown key");
}

TEST(ConfigTest, BadValuesNameFileLineAndKey) {
  ExpectError("[[gpu]]\nindex = 0\nmemory = \"8 GiB\"\n", "bad.toml:3: gpu[0].memory",
              "'8 GiB' is not a size");
  ExpectError("[[gpu]]\nindex = 0\nmemory = \"0\"\n", "bad.toml:3: gpu[0].memory", "not a size");
  ExpectError("[[gpu]]\nindex = -1\n", "bad.toml:2: gpu[0].index", "out of range");
  ExpectError("[[gpu]]\nmemory = \"1GiB\"\n", "bad.toml:1: gpu[0].index", "missing");
  ExpectError("[[gpu]]\nindex = 0\n[[gpu]]\nindex = 0\n", "bad.toml:3: gpu[1].index",
              "listed twice");
  ExpectError("[server]\ngrace = \"15 minutes\"\n", "bad.toml:2: server.grace",
              "is not a duration");
  ExpectError("[server]\ngrace = 15\n", "bad.toml:2: server.grace", "expected a string");
  ExpectError("[server]\non_rebind = \"kill\"\n", "bad.toml:2: server.on_rebind",
              "'kill' is not \"drain\", \"preempt\" or \"migrate\"");
  ExpectError("[server]\nbackend = \"gpu\"\n", "bad.toml:2: server.backend", "'gpu'");
  ExpectError("[server]\nlisten = []\n", "bad.toml:2: server.listen", "at least one");
  ExpectError("[server]\nlisten = [7070]\n", "bad.toml:2: server.listen", "array of strings");
  ExpectError("[server]\ndefault_pool = \"d\"\n[pool.d]\nslices_per_gpu = 33\n",
              "bad.toml:4: pool.d.slices_per_gpu", "out of range (1 to 32)");
  ExpectError("[server]\ndefault_pool = \"d\"\n[pool.d]\nslices_per_gpu = \"4\"\n",
              "bad.toml:4: pool.d.slices_per_gpu", "expected an integer");
  ExpectError("[server]\ndefault_pool = \"d\"\n[pool.\"a b\"]\n", "bad.toml:3: pool.a b",
              "letters, digits");
}

TEST(ConfigTest, SchedulesAreChecked) {
  const std::string head = "[server]\ndefault_pool = \"dev\"\n[pool.dev]\n[[schedule]]\n";
  ExpectError(head + "pool = \"train\"\ngpus = [0]\nfrom = 08:00:00\nto = 09:00:00\n",
              "bad.toml:5: schedule[0].pool", "no pool 'train' is defined (pools: dev)");
  ExpectError(head +
                  "pool = \"dev\"\ngpus = [0]\nfrom = 08:00:00\nto = 09:00:00\n"
                  "timezone = \"Asia/Atlantis\"\n",
              "bad.toml:9: schedule[0].timezone", "unknown time zone 'Asia/Atlantis'");
  ExpectError(head + "pool = \"dev\"\ngpus = [0]\nfrom = \"25:00\"\nto = 09:00:00\n",
              "bad.toml:7: schedule[0].from", "not a time of day");
  ExpectError(head + "pool = \"dev\"\ngpus = [0]\nfrom = 25:00:00\nto = 09:00:00\n",
              "bad.toml:7:", "hour");  // TOML itself rejects it
  ExpectError(head + "pool = \"dev\"\ngpus = [0]\nto = 09:00:00\n", "bad.toml:4: schedule[0].from",
              "missing");
  ExpectError(head + "pool = \"dev\"\ngpus = []\nfrom = 08:00:00\nto = 09:00:00\n",
              "bad.toml:6: schedule[0].gpus", "lists no GPU");
  ExpectError(head + "pool = \"dev\"\ngpus = [0, 0]\nfrom = 08:00:00\nto = 09:00:00\n",
              "bad.toml:6: schedule[0].gpus", "listed twice");
  ExpectError("[[gpu]]\nindex = 0\n" + head +
                  "pool = \"dev\"\ngpus = [1]\nfrom = 08:00:00\nto = 09:00:00\n",
              "bad.toml:8: schedule[0].gpus", "GPU 1 has no [[gpu]] table");
  ExpectError(head + "pool = \"dev\"\ngpus = [0]\nfrom = 08:00:00.5\nto = 09:00:00\n",
              "bad.toml:7: schedule[0].from", "fractions");
}

TEST(ConfigTest, DefaultPoolIsRequiredWithPoolsAndMustExist) {
  ExpectError("[pool.dev]\n", "bad.toml:1: server.default_pool", "missing");
  ExpectError("[server]\ndefault_pool = \"x\"\n[pool.dev]\n", "bad.toml:2: server.default_pool",
              "no pool 'x'");
  ExpectError("[server]\ndefault_pool = \"x\"\n", "bad.toml:2: server.default_pool",
              "add a [pool.NAME] table");
}

TEST(ConfigTest, SyntaxErrorsNameFileLineAndColumn) {
  Config config;
  Status status = ParseConfig("[server]\nlisten = [\"a\"\n", "syntax.toml", &config);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message().rfind("syntax.toml:", 0), 0u) << status.message();
  status = ParseConfig("[server]\n\nbackend = host\n", "syntax.toml", &config);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message().rfind("syntax.toml:3:", 0), 0u) << status.message();
}

TEST(ConfigTest, LoadsFilesAndNamesMissingOnes) {
  const std::string path = ::testing::TempDir() + "/ferry-config-test.toml";
  ASSERT_TRUE(test::WriteTextFile(path, kExample));
  Config config;
  Status status = LoadConfigFile(path, &config);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(config.path, path);
  std::remove(path.c_str());
  status = LoadConfigFile(path, &config);
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find(path), std::string::npos);
}

}  // namespace
}  // namespace ferry::pool
