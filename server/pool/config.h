// ferryd's TOML configuration (`ferryd --config FILE`): server settings, the
// GPUs to serve, the pools and the schedule that binds GPUs to pools.
//
//   [server]
//   listen = ["127.0.0.1:7070"]     # or one string
//   backend = "host"                # "cuda", "host" or "auto"
//   default_pool = "dev"            # the pool of a GPU no window covers
//   cuda_driver = "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
//   host_kernels = ["kernels.so"]   # host backend: kernel implementations
//   log_level = "info"              # debug, info, warning, error
//   on_rebind = "drain"             # default for windows and manual rebinds
//   grace = "15m"                   # default drain grace
//   metrics_listen = "127.0.0.1:9400"  # /metrics (Prometheus); off when unset
//   metrics_sessions = false        # /metrics: series per live session too
//   busy_poll = 50                  # microseconds a waiting thread spins (0: never)
//
//   [auth]
//   token_file = "/etc/ferry/tokens.toml"   # clients and ferryctl need a token
//   tls_cert = "/etc/ferry/cert.pem"        # TCP listeners speak TLS
//   tls_key = "/etc/ferry/key.pem"
//   unix_group = "ferry"                    # unix: sockets are 0660, this group
//   unix_allow_uids = [1000]                # unix: peers' uid (or gid) must be listed
//   unix_allow_gids = [100]
//
//   [cluster]                       # a cluster pool on etcd (server/cluster/)
//   etcd = ["http://10.0.0.5:2379"]  # or one string
//   name = "gpu-a"                  # this server: its GPUs are gpu-a:INDEX
//   advertise = "10.0.0.11:7070"    # where clients sent here connect
//   labels = { rack = "r1" }
//   ttl = "10s"                     # the server's lease
//   prefix = "/ferry/"              # the cluster's keys in etcd
//
//   [[gpu]]                         # cuda: which GPUs to serve; host: the
//   index = 0                       # emulated devices, indices 0..N-1
//   memory = "8GiB"                 # host backend only
//
//   [pool.dev]
//   slices_per_gpu = 4              # 1..32; each slice 1/N of memory and compute
//   memory_overcommit = 1.5         # 1..8: slice quotas x1.5 (idle sessions parked)
//   park_after = "30s"              # idle this long: a session's memory may be parked
//   idle_release = "15m"            # idle this long: memory parked, slice given back
//
//   [[schedule]]                    # the first window (file order) that
//   pool = "train"                  # covers a GPU at a moment wins
//   gpus = [0]
//   from = 20:00:00                 # TOML local time, or "20:00"
//   to = 08:00:00                   # earlier than from: wraps midnight
//   timezone = "Asia/Shanghai"      # IANA name; default "UTC"
//   on_rebind = "drain"             # or "preempt", or "migrate"
//   grace = "15m"
//
// Every error names the file, the line and the key: unknown keys, values of
// the wrong type, sizes and durations that do not parse, pools that are not
// defined, zones that do not exist. Facts that only the backend knows (how
// many GPUs exist) are checked when the pool is built (pool_state.h).
//
// Thread-safety: plain values.
#pragma once

#include <absl/time/time.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "server/pool/schedule.h"

namespace ferry::pool {

inline constexpr int kMaxSlicesPerGpu = 32;

enum class RebindPolicy {
  kDrain,    // holders keep their slices until they end or the grace passes
  kPreempt,  // holders lose their slices at once
  // Holders move to a free slice of their pool on another GPU of the server
  // (PoolState reports them in PoolChanges::migrations); one with no such
  // slice, or whose move the server cannot make, is drained instead.
  kMigrate,
};
std::string_view RebindPolicyName(RebindPolicy policy);

struct ServerConfig {
  // Each is set only when the file sets it, so that command-line flags and
  // built-in defaults can fill the rest.
  std::optional<std::vector<std::string>> listen;
  std::optional<std::string> backend;
  std::optional<std::string> cuda_driver;
  std::optional<std::vector<std::string>> host_kernels;
  std::optional<std::string> log_level;
  // Bounded resources (ferryd's --handshake-timeout, --max-connections,
  // --max-sessions, --session-buffer).
  std::optional<absl::Duration> handshake_timeout;
  std::optional<int> max_connections;
  std::optional<int> max_sessions;
  std::optional<uint64_t> session_buffer;
  // How sessions share a GPU's compute: "auto" or "mps" (ferryd --compute-sharing).
  std::optional<std::string> compute_sharing;
  // /metrics (ferryd --metrics-listen, --metrics-sessions).
  std::optional<std::string> metrics_listen;
  std::optional<bool> metrics_sessions;
  // How long a thread waiting on a connection spins before it sleeps
  // (ferryd --busy-poll; common/busy_poll.h).
  std::optional<std::chrono::microseconds> busy_poll;
  std::string default_pool;  // "" = no pools
  RebindPolicy on_rebind = RebindPolicy::kDrain;
  absl::Duration grace = absl::Minutes(15);
};

struct GpuConfig {
  int index = 0;
  std::optional<uint64_t> memory;  // host backend: the emulated memory
  int line = 0;                    // of the [[gpu]] table, for messages
};

struct PoolConfig {
  std::string name;
  int slices_per_gpu = 1;
  // Memory overcommit (server/README.md, "Parking"): each slice's memory
  // quota is the GPU's memory x memory_overcommit / slices_per_gpu, so the
  // quotas may add up to more than the GPU has; when an allocation finds the
  // device full, ferryd parks the device memory of sessions idle for at
  // least park_after in host RAM (same addresses) and brings it back on their
  // next call. 1 = no overcommit: this pool's sessions are never parked.
  double memory_overcommit = 1.0;
  absl::Duration park_after = absl::Seconds(30);
  // Idle release (server/README.md, "Idle release"): a session that has made
  // no call for this long has its device memory parked and its slices given
  // back to the pool; its next call borrows the same slices again (through
  // the queue, within its FERRY_WAIT) and brings the memory back.
  // nullopt: sessions keep their slices while idle.
  std::optional<absl::Duration> idle_release;
};
// The shortest idle_release a pool may set.
inline constexpr absl::Duration kMinIdleRelease = absl::Milliseconds(100);
// The largest memory_overcommit a pool may set.
inline constexpr double kMaxMemoryOvercommit = 8.0;

struct ScheduleConfig {
  std::string pool;
  std::vector<int> gpus;  // this server's GPU indices
  // In a cluster's config: GPUs named "SERVER:INDEX" or "SERVER:*", and
  // every GPU of the servers whose labels include all of `server_labels`.
  // LocalizeSchedules turns them into `gpus` for one server.
  std::vector<std::string> gpu_names;
  std::map<std::string, std::string> server_labels;
  DailyWindow window;
  RebindPolicy on_rebind = RebindPolicy::kDrain;  // the [server] default when unset
  absl::Duration grace = absl::Minutes(15);       // likewise
  int line = 0;                                   // of the [[schedule]] table
};

// [auth]: who may talk to ferryd, and how (ferryd's --token-file,
// --tls-cert, --tls-key, --unix-group, --unix-allow-uid, --unix-allow-gid).
// Each is set only when the file sets it; flags win.
struct AuthConfig {
  std::optional<std::string> token_file;
  std::optional<std::string> tls_cert;
  std::optional<std::string> tls_key;
  std::optional<std::string> unix_group;
  std::optional<std::vector<uint32_t>> unix_allow_uids;
  std::optional<std::vector<uint32_t>> unix_allow_gids;
  bool operator==(const AuthConfig&) const = default;
};

// [cluster]: this ferryd in a cluster pool on etcd (ferryd's --etcd,
// --name, --advertise, --label, --cluster-ttl, --cluster-prefix; flags win).
// Each is set only when the file sets it.
struct ClusterConfig {
  std::optional<std::vector<std::string>> etcd;  // "http://host:port" each
  std::optional<std::string> name;
  std::optional<std::string> advertise;
  std::optional<std::map<std::string, std::string>> labels;
  std::optional<absl::Duration> ttl;
  std::optional<std::string> prefix;
  bool operator==(const ClusterConfig&) const = default;
};

struct Config {
  std::string path;  // for messages; "" when parsed from text
  ServerConfig server;
  AuthConfig auth;
  ClusterConfig cluster;
  std::vector<GpuConfig> gpus;              // file order
  std::map<std::string, PoolConfig> pools;  // by name
  std::vector<ScheduleConfig> schedules;    // file order = precedence

  // Pools are in use: at least one pool is defined (then default_pool names
  // one of them).
  bool pooling() const { return !pools.empty(); }
};

// Parses `text` as a ferryd config; `path` names it in messages.
// InvalidArgument("FILE:LINE: key: what is wrong") on the first problem.
Status ParseConfig(std::string_view text, const std::string& path, Config* out);

// Reads and parses the file at `path`.
Status LoadConfigFile(const std::string& path, Config* out);

// A cluster's pool config (`ferryctl apply`, kept in etcd): [server] with
// only default_pool, on_rebind and grace, [pool.NAME] tables and
// [[schedule]]s that select GPUs by name ("SERVER:INDEX", "SERVER:*") or
// by server labels (`labels = { rack = "r1" }`), never by bare index.
// What belongs to one server ([server] listen, backend..., [auth],
// [cluster], [[gpu]]) is an error naming the file and line.
Status ParseClusterConfig(std::string_view text, const std::string& path, Config* out);

// `config` as server `server` (with `labels`, serving GPUs `gpu_indices`)
// applies it: each schedule's GPU names and label selection become this
// server's indices; a schedule that selects none of them is dropped (the
// rest keep their order, so their precedence holds). Schedules with
// indices only are kept as they are.
Config LocalizeSchedules(const Config& config, const std::string& server,
                         const std::map<std::string, std::string>& labels,
                         const std::vector<int>& gpu_indices);

// `base` (one server's file) with the pools, schedules, default pool and
// rebind defaults of `cluster` (a cluster's pool config).
Config WithClusterPools(const Config& base, const Config& cluster);

}  // namespace ferry::pool
