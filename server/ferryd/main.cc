// ferryd: the GPU server. Holds the GPUs (or the host stand-in), accepts
// client sessions over TCP and executes their driver calls on a backend.
//
//   ferryd [--config FILE] --listen HOST:PORT [--listen ...] --backend cuda|host|auto
//          [--cuda-driver PATH] [--host-kernels LIB.so ...]
//          [--host-devices N] [--host-memory SIZE] [--module-cache SIZE]
//          [--ready-file PATH]
//          [--handshake-timeout DURATION] [--max-connections N] [--max-sessions N]
//          [--session-buffer SIZE] [--busy-poll MICROSECONDS]
//          [--token-file PATH | --no-auth] [--tls-cert PEM --tls-key PEM | --no-tls]
//          [--unix-group GROUP] [--unix-allow-uid UID ...] [--unix-allow-gid GID ...]
//          [--log-level debug|info|warning|error] [--log-format text|json]
//          [--compute-sharing auto|mps]
//          [--metrics-listen HOST:PORT [--metrics-sessions]]
//          [--sessions-in-process]
//          [--etcd URLS --name NAME --advertise HOST:PORT [--label KEY=VALUE ...]
//           [--cluster-ttl DURATION] [--cluster-prefix PREFIX]]
//   ferryd --help | --version
//
// --config reads a TOML file (server/pool/config.h): the same settings as the flags
// (flags win), the GPUs to serve, and the pools and schedule that slice them.
// Without pools every client gets every served device, whole.
//
// Access: with a token file (--token-file, [auth] token_file) every client
// and ferryctl must present one of its tokens (server/auth/tokens.h); without
// one ferryd serves anyone who reaches it and says so loudly on a non-loopback
// address (--no-auth ignores the config's token file on purpose). With
// --tls-cert/--tls-key every TCP listener speaks TLS; a TCP listener on a
// non-loopback address without TLS needs --no-tls. unix: sockets are created
// 0660 (group --unix-group) and may require the peer's uid or gid.
//
// With --etcd (or [cluster]) ferryd is one server of a cluster pool kept in
// etcd (server/cluster/): it registers itself and its GPUs under a lease,
// claims every borrow's slices in etcd before the session starts, and sends
// a client it has no room for to a server that has. Without it ferryd is a
// pool of its own and needs no etcd.
//
// --busy-poll sets how long a thread waiting for a client's next message
// (and any other wait on a connection) spins before it sleeps, in
// microseconds (common/busy_poll.h); 0 turns spinning off. The default
// depends on the CPUs ferryd may use; the window in force is logged at start.
//
// Each client session runs in a worker process of its own (server/
// session_worker.h), started as `ferryd <the same flags> --session-worker FD`;
// --sessions-in-process (tests and measurements) keeps them in this process.
//
// --metrics-listen serves Prometheus's /metrics over HTTP (server/
// server_metrics.h): TLS and tokens as the other listeners, and a
// non-loopback address without TLS needs --no-tls.
//
// SIGTERM and SIGINT stop it cleanly: listeners close, every session ends and
// frees its resources, and ferryd exits 0. SIGHUP re-reads the config file
// (as `ferryctl reload` does); a bad file is rejected and the old config stays.
// Under systemd (Type=notify) it reports ready once it listens, and reloads
// and stops as they begin (service_notify.h).
//
// --test-fake-clock TIME (tests only) runs the pool on a clock that stands at
// TIME (RFC 3339, e.g. 2026-03-10T19:59:00+08:00) and moves only when
// `ferryctl test-advance-clock` says so. --allow-ferry-cuda-driver (tests
// only) lets the CUDA backend load ferry's own libcuda.so.1, so one ferryd
// can be chained to another.
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>

#include <absl/strings/str_join.h>
#include <absl/time/clock.h>
#include <absl/time/time.h>
#include <cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/busy_poll.h"
#include "common/log.h"
#include "common/rdma/rdma_connector.h"
#include "common/units.h"
#include "server/backend/cuda/cuda_backend.h"
#include "server/backend/host/host_backend.h"
#include "server/cluster/cluster_member.h"
#include "server/etcd/etcd_client.h"
#include "server/pool/clock.h"
#include "server/pool/config.h"
#include "server/server.h"
#include "service_notify.h"

namespace ferry {
namespace {

// What the command line says; unset means "from the config, else default".
struct Flags {
  std::string config_path;
  std::vector<std::string> listen;
  std::optional<std::string> backend;
  std::optional<std::string> cuda_driver;
  std::vector<std::string> host_kernels;
  std::optional<int> host_devices;
  std::optional<uint64_t> host_memory;
  std::optional<std::string> log_level;
  uint64_t module_cache = server::Server::kDefaultModuleCacheBytes;
  std::string ready_file;
  std::optional<std::chrono::milliseconds> handshake_timeout;
  std::optional<int> max_connections;
  std::optional<int> max_sessions;
  std::optional<uint64_t> session_buffer;
  std::optional<std::chrono::microseconds> busy_poll;
  std::optional<absl::Time> test_fake_clock;
  bool allow_ferry_cuda_driver = false;  // tests only
  std::optional<std::string> token_file;
  bool no_auth = false;
  std::optional<std::string> tls_cert;
  std::optional<std::string> tls_key;
  bool no_tls = false;
  std::optional<std::string> unix_group;
  std::vector<uint32_t> unix_allow_uids;
  std::vector<uint32_t> unix_allow_gids;
  bool sessions_in_process = false;
  std::optional<std::string> compute_sharing;
  std::string rdma = "auto";  // --rdma
  std::string rdma_device;    // --rdma-device
  int rdma_gid_index = -1;    // --rdma-gid-index
  std::optional<std::string> metrics_listen;
  bool metrics_sessions = false;
  std::optional<int> session_worker_link;  // set: this process is a session worker
  // A session worker of a host backend: "FD:SLOT", the device memory books
  // it shares with the main process (server/backend/host/device_ledger.h).
  std::optional<std::string> host_memory_ledger;
  // A cluster pool (server/cluster/).
  std::optional<std::string> etcd;  // comma-separated URLs
  std::optional<std::string> name;
  std::optional<std::string> advertise;
  std::vector<std::string> labels;  // KEY=VALUE
  std::optional<absl::Duration> cluster_ttl;
  std::optional<std::string> cluster_prefix;
};

bool SetLogLevel(const std::string& v) {
  LogLevel level = LogLevel::kInfo;
  if (!ParseLogLevel(v, &level)) return false;
  SetMinLogLevel(level);
  return true;
}

// CLI11 validators: an empty string accepts the value, anything else is the
// reason it is refused.
CLI::Validator ByteSize(bool allow_zero, const std::string& example) {
  return CLI::Validator(
      [allow_zero, example](const std::string& text) {
        uint64_t bytes = 0;
        if (ParseByteSize(text, &bytes) && (allow_zero || bytes != 0)) return std::string();
        return "bad size '" + text + "' (e.g. " + example + ")";
      },
      "");
}

const CLI::Validator kPositiveDuration(
    [](const std::string& text) {
      std::chrono::milliseconds ms;
      if (ParseDuration(text, &ms) && ms.count() > 0) return std::string();
      return "bad duration '" + text + "' (e.g. 5s, 500ms; more than 0)";
    },
    "");

const CLI::Validator kBusyPollWindow(
    [](const std::string& text) {
      std::chrono::microseconds window;
      const Status status = ParseBusyPollWindow(text, &window);
      return status.ok() ? std::string() : status.message();
    },
    "");

const CLI::Validator kRfc3339(
    [](const std::string& text) {
      absl::Time t;
      std::string why;
      if (absl::ParseTime(absl::RFC3339_full, text, &t, &why)) return std::string();
      return "'" + text + "' is not an RFC 3339 time (" + why + ")";
    },
    "");

// What a parse error says, naming the offending argument (CLI11's own
// wording for extras is "not expected").
std::string ParseErrorMessage(const CLI::App& app, const CLI::ParseError& error) {
  if (dynamic_cast<const CLI::ExtrasError*>(&error) == nullptr) return error.what();
  for (const std::string& arg : app.remaining()) {
    if (!arg.empty() && arg[0] == '-') return "unknown flag '" + arg + "'";
    return "unexpected argument '" + arg + "' (ferryd takes no positional arguments)";
  }
  return error.what();
}

// Parses the command line into `flags`. Returns -1 to go on, else the exit
// status: 0 after --help or --version, 2 on a usage error (reported on stderr).
int ParseArgs(int argc, char** argv, Flags* flags) {
  CLI::App app(
      "ferryd: the GPU server. Holds the GPUs (or the host stand-in), accepts client sessions\n"
      "and executes their driver calls on a backend.",
      "ferryd");
  app.set_version_flag("--version", std::string("ferryd ") + FERRY_VERSION,
                       "Print the version and exit");
  app.footer(
      "SIGTERM and SIGINT stop ferryd cleanly (exit 0); SIGHUP re-reads --config.\n"
      "Exit status: 0 after a clean stop, 1 when it cannot start, 2 on bad usage.");
  std::string backend, cuda_driver, host_memory, log_level, test_fake_clock;
  std::string module_cache;
  int host_devices = 0;
  app.add_option("--config", flags->config_path,
                 "TOML: [server] (as the flags; flags win), [[gpu]], [pool.NAME], [[schedule]];\n"
                 "SIGHUP or `ferryctl reload` re-reads it")
      ->type_name("FILE");
  // Repeatable: one address per --listen.
  app.add_option("--listen", flags->listen,
                 "HOST:PORT (TCP), rdma://HOST:PORT (TCP for the handshake, the stream then\n"
                 "on RDMA: needs --rdma auto and an RDMA device), or unix:PATH (clients on\n"
                 "this host, shared memory);\n"
                 "repeat for more addresses (at least one here or in [server] listen)")
      ->allow_extra_args(false)
      ->type_name("ADDRESS");
  CLI::Option* backend_option =
      app.add_option("--backend", backend, "cuda, host or auto (default: auto)")
          ->check(CLI::IsMember({"cuda", "host", "auto"}))
          ->type_name("BACKEND");
  CLI::Option* cuda_driver_option =
      app.add_option("--cuda-driver", cuda_driver, "NVIDIA's libcuda.so.1 (default: the system's)")
          ->type_name("PATH");
  app.add_flag("--allow-ferry-cuda-driver", flags->allow_ferry_cuda_driver,
               "tests only: accept ferry's own libcuda.so.1 as --cuda-driver, to chain a\n"
               "CUDA-backend ferryd to another ferryd");
  // Repeatable: one plugin per --host-kernels.
  app.add_option("--host-kernels", flags->host_kernels,
                 "host backend: a plugin with host implementations of kernels; repeatable")
      ->allow_extra_args(false)
      ->type_name("LIB.so");
  CLI::Option* host_devices_option =
      app.add_option("--host-devices", host_devices, "host backend: devices to emulate (1-64)")
          ->check(CLI::Range(1, 64))
          ->type_name("N");
  CLI::Option* host_memory_option =
      app.add_option("--host-memory", host_memory, "host backend: memory per device (default 8GiB)")
          ->check(ByteSize(/*allow_zero=*/false, "8GiB, 512MiB"))
          ->type_name("SIZE");
  CLI::Option* module_cache_option =
      app.add_option("--module-cache", module_cache, "module image cache (default 1GiB, 0: off)")
          ->check(ByteSize(/*allow_zero=*/true, "1GiB, 0 to turn it off"))
          ->type_name("SIZE");
  app.add_option("--ready-file", flags->ready_file,
                 "once listening, write the first bound address to PATH (and, with\n"
                 "--metrics-listen, a second line: metrics HOST:PORT)")
      ->type_name("PATH");
  std::string handshake_timeout, session_buffer;
  int max_connections = 0, max_sessions = 0;
  CLI::Option* handshake_timeout_option =
      app.add_option("--handshake-timeout", handshake_timeout,
                     "close a connection that has not sent its Hello by then (default 5s)")
          ->check(kPositiveDuration)
          ->type_name("DURATION");
  CLI::Option* max_connections_option =
      app.add_option("--max-connections", max_connections,
                     "connections at once; the next is refused with a message (default 512)")
          ->check(CLI::Range(1, 1 << 20))
          ->type_name("N");
  CLI::Option* max_sessions_option =
      app.add_option("--max-sessions", max_sessions,
                     "client sessions at once; the next is refused with a message (default 256)")
          ->check(CLI::Range(1, 1 << 20))
          ->type_name("N");
  CLI::Option* session_buffer_option =
      app.add_option("--session-buffer", session_buffer,
                     "per session: call frames held read but not yet executed (default 4GiB)")
          ->check(ByteSize(/*allow_zero=*/false, "4GiB, 256MiB"))
          ->type_name("SIZE");
  std::string busy_poll;
  CLI::Option* busy_poll_option =
      app.add_option(
             "--busy-poll", busy_poll,
             "how long a thread waiting on a connection spins before it sleeps, in\n"
             "microseconds (0-1000; 0: never spin; default: 50 with 2 or more CPUs, else 0)")
          ->check(kBusyPollWindow)
          ->type_name("MICROSECONDS");
  std::string token_file, tls_cert, tls_key, unix_group;
  CLI::Option* token_file_option =
      app.add_option("--token-file", token_file,
                     "clients and ferryctl must present a token of this file (made by\n"
                     "`ferryctl token create`); SIGHUP re-reads it")
          ->type_name("PATH");
  app.add_flag("--no-auth", flags->no_auth,
               "serve without tokens even if the config names a token file")
      ->excludes(token_file_option);
  CLI::Option* tls_cert_option =
      app.add_option("--tls-cert", tls_cert, "TLS on every TCP listener: the certificate chain")
          ->type_name("PEM");
  CLI::Option* tls_key_option =
      app.add_option("--tls-key", tls_key, "the certificate's private key")->type_name("PEM");
  app.add_flag("--no-tls", flags->no_tls,
               "allow plain TCP on a non-loopback address (loopback needs no flag)")
      ->excludes(tls_cert_option);
  CLI::Option* unix_group_option =
      app.add_option("--unix-group", unix_group,
                     "unix: sockets are created 0660 owned by this group (name or gid)")
          ->type_name("GROUP");
  app.add_option("--unix-allow-uid", flags->unix_allow_uids,
                 "unix: only peers with one of these uids (or an allowed gid); repeatable")
      ->allow_extra_args(false)
      ->type_name("UID");
  app.add_option("--unix-allow-gid", flags->unix_allow_gids,
                 "unix: only peers whose primary gid (SO_PEERCRED; supplementary groups\n"
                 "do not count) is one of these (or with an allowed uid); repeatable")
      ->allow_extra_args(false)
      ->type_name("GID");
  CLI::Option* log_level_option =
      app.add_option("--log-level", log_level, "debug, info, warning or error")
          ->check(CLI::IsMember({"debug", "info", "warning", "error"}))
          ->type_name("LEVEL");
  // Operators (README.md "Logs"): every log line as one JSON object instead
  // of text. Applied while parsing, so the lines about the rest of the
  // command line and the config are in that format too.
  app.add_option_function<std::string>(
         "--log-format",
         [](const std::string& text) {
           LogFormat format = LogFormat::kText;
           if (ParseLogFormat(text, &format)) SetLogFormat(format);
         },
         "text (default) or json: one JSON object per line, every line")
      ->check(CLI::IsMember({"text", "json"}))
      ->type_name("FORMAT");
  CLI::Option* fake_clock_option =
      app.add_option("--test-fake-clock", test_fake_clock,
                     "tests only: the pool's clock stands at TIME (RFC 3339) and moves only by\n"
                     "`ferryctl test-advance-clock`")
          ->check(kRfc3339)
          ->type_name("TIME");
  std::string compute_sharing;
  CLI::Option* compute_sharing_option =
      app.add_option("--compute-sharing", compute_sharing,
                     "how slices share a GPU's compute: auto (SM partitions where the driver\n"
                     "offers them, else launch throttling) or mps (the host runs NVIDIA's MPS\n"
                     "daemon; each session's process gets its share as its thread percentage)")
          ->check(CLI::IsMember({"auto", "mps"}))
          ->type_name("MODE");
  app.add_option("--rdma", flags->rdma,
                 "auto (default): a client on a plain TCP connection that offers RDMA in its\n"
                 "handshake gets its stream moved to RDMA when this host has an active RDMA\n"
                 "port; off: such offers are refused and streams stay on TCP")
      ->check(CLI::IsMember({"auto", "off"}))
      ->type_name("MODE");
  app.add_option("--rdma-device", flags->rdma_device,
                 "the RDMA device to use (ibv_devices); default: the first with an active port")
      ->type_name("NAME");
  app.add_option("--rdma-gid-index", flags->rdma_gid_index,
                 "the GID index to use; default: the GID that carries the connection's\n"
                 "own IP address (RoCE v2), else 0")
      ->check(CLI::Range(0, 255))
      ->type_name("N");
  std::string metrics_listen;
  CLI::Option* metrics_listen_option =
      app.add_option("--metrics-listen", metrics_listen,
                     "serve Prometheus metrics at http(s)://HOST:PORT/metrics (port 0 picks one);\n"
                     "TLS and tokens as the other listeners")
          ->type_name("HOST:PORT");
  app.add_flag("--metrics-sessions", flags->metrics_sessions,
               "/metrics: series per live client session too (calls, bytes, launches)");
  app.add_flag("--sessions-in-process", flags->sessions_in_process,
               "run client sessions inside ferryd's process instead of one worker process\n"
               "each (tests and measurements only: tenants then share one address space)");
  std::string etcd, name, advertise, cluster_ttl, cluster_prefix;
  CLI::Option* etcd_option =
      app.add_option("--etcd", etcd,
                     "join a cluster pool kept in etcd (comma-separated http:// URLs, tried in\n"
                     "order); needs --name, --advertise and pools ([pool.NAME] in --config)")
          ->type_name("URLS");
  CLI::Option* name_option =
      app.add_option("--name", name, "this server's name in the cluster: its GPUs are NAME:INDEX")
          ->type_name("NAME");
  CLI::Option* advertise_option =
      app.add_option("--advertise", advertise,
                     "where clients that other servers of the cluster send here connect")
          ->type_name("HOST:PORT");
  app.add_option("--label", flags->labels, "a label of this server in the cluster (repeatable)")
      ->check([](const std::string& text) {
        const size_t eq = text.find('=');
        return eq == std::string::npos || eq == 0 ? "a label is KEY=VALUE" : "";
      })
      ->type_name("KEY=VALUE");
  CLI::Option* cluster_ttl_option =
      app.add_option("--cluster-ttl", cluster_ttl,
                     "the lease that keeps this server in the cluster (default 10s): a dead\n"
                     "server leaves within it")
          ->check(kPositiveDuration)
          ->type_name("DURATION");
  CLI::Option* cluster_prefix_option =
      app.add_option("--cluster-prefix", cluster_prefix,
                     "the cluster's keys in etcd (default /ferry/)")
          ->type_name("PREFIX");
  int session_worker_link = -1;
  CLI::Option* session_worker_option =
      app.add_option("--session-worker", session_worker_link)
          ->group("")  // internal: how ferryd starts its session workers
          ->check(CLI::Range(0, 1 << 20));
  std::string host_memory_ledger;
  CLI::Option* host_memory_ledger_option =
      app.add_option("--host-memory-ledger", host_memory_ledger)->group("");  // internal, too
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    if (error.get_exit_code() == 0) return app.exit(error);  // --help, --version
    std::fprintf(stderr, "ferryd: %s\nRun 'ferryd --help' for usage.\n",
                 ParseErrorMessage(app, error).c_str());
    return 2;
  }
  // The validators above accepted every value, so these conversions succeed.
  if (session_worker_option->count() > 0) flags->session_worker_link = session_worker_link;
  if (host_memory_ledger_option->count() > 0) flags->host_memory_ledger = host_memory_ledger;
  if (etcd_option->count() > 0) flags->etcd = etcd;
  if (name_option->count() > 0) flags->name = name;
  if (advertise_option->count() > 0) flags->advertise = advertise;
  if (cluster_prefix_option->count() > 0) flags->cluster_prefix = cluster_prefix;
  if (std::chrono::milliseconds ttl; cluster_ttl_option->count() > 0 &&
                                      ParseDuration(cluster_ttl, &ttl)) {
    flags->cluster_ttl = absl::FromChrono(ttl);
  }
  if (compute_sharing_option->count() > 0) flags->compute_sharing = compute_sharing;
  if (metrics_listen_option->count() > 0) flags->metrics_listen = metrics_listen;
  if (backend_option->count() > 0) flags->backend = backend;
  if (cuda_driver_option->count() > 0) flags->cuda_driver = cuda_driver;
  if (host_devices_option->count() > 0) flags->host_devices = host_devices;
  uint64_t bytes = 0;
  if (host_memory_option->count() > 0 && ParseByteSize(host_memory, &bytes)) {
    flags->host_memory = bytes;
  }
  if (module_cache_option->count() > 0) ParseByteSize(module_cache, &flags->module_cache);
  if (log_level_option->count() > 0) flags->log_level = log_level;
  std::chrono::milliseconds ms;
  if (handshake_timeout_option->count() > 0 && ParseDuration(handshake_timeout, &ms)) {
    flags->handshake_timeout = ms;
  }
  if (max_connections_option->count() > 0) flags->max_connections = max_connections;
  if (token_file_option->count() > 0) flags->token_file = token_file;
  if (tls_cert_option->count() > 0) flags->tls_cert = tls_cert;
  if (tls_key_option->count() > 0) flags->tls_key = tls_key;
  if (unix_group_option->count() > 0) flags->unix_group = unix_group;
  if (max_sessions_option->count() > 0) flags->max_sessions = max_sessions;
  if (session_buffer_option->count() > 0 && ParseByteSize(session_buffer, &bytes)) {
    flags->session_buffer = bytes;
  }
  if (std::chrono::microseconds window;
      busy_poll_option->count() > 0 && ParseBusyPollWindow(busy_poll, &window).ok()) {
    flags->busy_poll = window;
  }
  absl::Time t;
  std::string why;
  if (fake_clock_option->count() > 0 &&
      absl::ParseTime(absl::RFC3339_full, test_fake_clock, &t, &why)) {
    flags->test_fake_clock = t;
  }
  return -1;
}

// --rdma and its device, checked once here: whether this host can serve
// RDMA at all, said in the log (sessions then open their own queue pairs).
server::RdmaServing RdmaFromFlags(const Flags& flags, bool serves_tls) {
  server::RdmaServing rdma;
  rdma.device.device = flags.rdma_device;
  rdma.device.gid_index = flags.rdma_gid_index;
  if (flags.rdma == "off") {
    rdma.unavailable = "RDMA is off on this ferryd (--rdma off)";
    FERRY_LOG(kInfo) << "RDMA: off (--rdma off); every stream stays on TCP or shared memory";
    return rdma;
  }
  if (serves_tls) {
    rdma.unavailable = "this ferryd serves TLS, and RDMA would carry the stream unencrypted";
    FERRY_LOG(kInfo) << "RDMA: not offered: " << rdma.unavailable;
    return rdma;
  }
  std::string why;
  const rdma::Verbs* verbs = rdma::SystemVerbs(&why);
  std::unique_ptr<rdma::RdmaConnector> probe;
  Status status = verbs != nullptr
                      ? rdma::RdmaConnector::Open(verbs, rdma.device, rdma.options, nullptr, &probe)
                      : Status::Unimplemented(why);
  if (!status.ok()) {
    rdma.unavailable = "this ferryd's host cannot serve RDMA: " + status.message();
    FERRY_LOG(kInfo) << "RDMA: not offered: " << status.message();
    return rdma;
  }
  rdma.enabled = true;
  FERRY_LOG(kInfo) << "RDMA: offered to clients on plain TCP connections (device "
                   << probe->Local().device << "; the GID follows each connection's address"
                   << (flags.rdma_gid_index >= 0 ? " unless --rdma-gid-index is given" : "")
                   << ")";
  return rdma;
}

// The settings in force: flags over the config file over defaults.
struct Settings {
  std::vector<std::string> listen;
  std::string backend = "auto";
  std::string cuda_driver;
  std::vector<std::string> host_kernels;
  std::string ready_file;
  server::ServerLimits limits;
  std::string token_file;         // "" = no authentication
  std::string tls_cert, tls_key;  // "" = plain TCP
  server::UnixAccess unix_access;
  server::ComputeSharing compute_sharing = server::ComputeSharing::kAuto;
  std::string metrics_listen;  // "" = no /metrics
  bool metrics_sessions = false;
  // Unset: DefaultBusyPollWindow() (common/busy_poll.h).
  std::optional<std::chrono::microseconds> busy_poll;
  // A cluster pool: empty endpoints = a server of its own.
  std::vector<std::string> etcd;
  cluster::ClusterMember::Options cluster;
};

// --etcd and the rest over [cluster]. Without either, no cluster.
Status MergeCluster(const Flags& flags, const pool::Config& config, Settings* settings) {
  const pool::ClusterConfig& file = config.cluster;
  if (flags.etcd.has_value()) {
    FERRY_RETURN_IF_ERROR(etcd::EtcdClient::ParseEndpoints(*flags.etcd, &settings->etcd));
  } else if (file.etcd.has_value()) {
    std::string joined;
    for (const std::string& url : *file.etcd) joined += (joined.empty() ? "" : ",") + url;
    FERRY_RETURN_IF_ERROR(etcd::EtcdClient::ParseEndpoints(joined, &settings->etcd));
  }
  cluster::ClusterMember::Options& options = settings->cluster;
  options.name = flags.name.value_or(file.name.value_or(""));
  options.advertise = flags.advertise.value_or(file.advertise.value_or(""));
  options.labels = file.labels.value_or(std::map<std::string, std::string>{});
  for (const std::string& label : flags.labels) {
    const size_t eq = label.find('=');
    options.labels[label.substr(0, eq)] = label.substr(eq + 1);
  }
  options.ttl = flags.cluster_ttl.value_or(file.ttl.value_or(options.ttl));
  options.prefix = flags.cluster_prefix.value_or(file.prefix.value_or(options.prefix));
  if (settings->etcd.empty()) {
    if (flags.name || flags.advertise || !flags.labels.empty() || flags.cluster_ttl ||
        flags.cluster_prefix) {
      return Status::InvalidArgument(
          "--name, --advertise, --label, --cluster-ttl and --cluster-prefix are for a cluster: "
          "pass --etcd (or [cluster] etcd) too");
    }
    return Status::Ok();
  }
  if (options.name.empty()) {
    return Status::InvalidArgument("a cluster needs this server's --name (or [cluster] name)");
  }
  FERRY_RETURN_IF_ERROR(cluster::CheckServerName(options.name));
  if (flags.session_worker_link.has_value()) settings->etcd.clear();  // workers stay out
  return Status::Ok();
}

Status Merge(const Flags& flags, const pool::Config& config, Settings* settings) {
  settings->listen = !flags.listen.empty()
                         ? flags.listen
                         : config.server.listen.value_or(std::vector<std::string>{});
  if (settings->listen.empty()) {
    return Status::InvalidArgument(
        "at least one --listen HOST:PORT (or [server] listen) is required");
  }
  settings->backend = flags.backend.value_or(config.server.backend.value_or("auto"));
  settings->cuda_driver = flags.cuda_driver.value_or(config.server.cuda_driver.value_or(""));
  settings->host_kernels = !flags.host_kernels.empty()
                               ? flags.host_kernels
                               : config.server.host_kernels.value_or(std::vector<std::string>{});
  settings->ready_file = flags.ready_file;
  server::ServerLimits& limits = settings->limits;
  if (flags.handshake_timeout) {
    limits.handshake_timeout = *flags.handshake_timeout;
  } else if (config.server.handshake_timeout) {
    limits.handshake_timeout = absl::ToChronoMilliseconds(*config.server.handshake_timeout);
  }
  limits.max_connections = flags.max_connections.value_or(
      config.server.max_connections.value_or(limits.max_connections));
  limits.max_sessions =
      flags.max_sessions.value_or(config.server.max_sessions.value_or(limits.max_sessions));
  limits.session_buffer_bytes = flags.session_buffer.value_or(
      config.server.session_buffer.value_or(limits.session_buffer_bytes));
  settings->busy_poll = flags.busy_poll ? flags.busy_poll : config.server.busy_poll;
  if (!flags.no_auth) {
    settings->token_file = flags.token_file.value_or(config.auth.token_file.value_or(""));
  }
  if (!flags.no_tls) {
    settings->tls_cert = flags.tls_cert.value_or(config.auth.tls_cert.value_or(""));
    settings->tls_key = flags.tls_key.value_or(config.auth.tls_key.value_or(""));
  }
  if (settings->tls_cert.empty() != settings->tls_key.empty()) {
    return Status::InvalidArgument("--tls-cert and --tls-key go together");
  }
  server::UnixAccess& unix_access = settings->unix_access;
  const std::string group = flags.unix_group.value_or(config.auth.unix_group.value_or(""));
  if (!group.empty()) {
    uint32_t gid = 0;
    FERRY_RETURN_IF_ERROR(server::LookUpGroup(group, &gid));
    unix_access.group = gid;
  }
  unix_access.allow_uids = !flags.unix_allow_uids.empty()
                               ? flags.unix_allow_uids
                               : config.auth.unix_allow_uids.value_or(std::vector<uint32_t>{});
  unix_access.allow_gids = !flags.unix_allow_gids.empty()
                               ? flags.unix_allow_gids
                               : config.auth.unix_allow_gids.value_or(std::vector<uint32_t>{});
  // Plain TCP off loopback only on purpose: tokens and data would cross the
  // network readable by anyone on the path.
  if (settings->tls_cert.empty() && !flags.no_tls) {
    for (const std::string& address : settings->listen) {
      const std::string tcp =
          address.starts_with(kRdmaScheme) ? address.substr(kRdmaScheme.size()) : address;
      if (address.rfind("unix:", 0) != 0 && !IsLoopbackAddress(tcp)) {
        return Status::InvalidArgument(
            "listening on " + address +
            " without TLS: pass --tls-cert and --tls-key, or --no-tls to serve plain TCP there");
      }
    }
  }
  settings->metrics_listen =
      flags.metrics_listen.value_or(config.server.metrics_listen.value_or(""));
  settings->metrics_sessions =
      flags.metrics_sessions || config.server.metrics_sessions.value_or(false);
  if (!settings->metrics_listen.empty()) {
    std::string host;
    uint16_t port = 0;
    FERRY_RETURN_IF_ERROR(ParseHostPort(settings->metrics_listen, &host, &port));
    // Scrapes carry tokens too: the same rule as the listeners.
    if (settings->tls_cert.empty() && !flags.no_tls &&
        !IsLoopbackAddress(settings->metrics_listen)) {
      return Status::InvalidArgument(
          "--metrics-listen " + settings->metrics_listen +
          " without TLS: pass --tls-cert and --tls-key, or --no-tls to serve plain HTTP there");
    }
  } else if (settings->metrics_sessions) {
    return Status::InvalidArgument("--metrics-sessions needs --metrics-listen");
  }
  const std::string sharing =
      flags.compute_sharing.value_or(config.server.compute_sharing.value_or("auto"));
  if (sharing == "mps") {
    if (flags.sessions_in_process) {
      return Status::InvalidArgument(
          "--compute-sharing mps needs a process per session (not --sessions-in-process): MPS "
          "takes a client's share from its environment");
    }
    settings->compute_sharing = server::ComputeSharing::kMps;
  }
  FERRY_RETURN_IF_ERROR(MergeCluster(flags, config, settings));
  const std::optional<std::string> level =
      flags.log_level ? flags.log_level : config.server.log_level;
  if (level.has_value()) SetLogLevel(*level);
  return Status::Ok();
}

// [[gpu]] tables, sorted by index.
std::vector<pool::GpuConfig> SortedGpus(const pool::Config& config) {
  std::vector<pool::GpuConfig> gpus = config.gpus;
  std::sort(gpus.begin(), gpus.end(),
            [](const pool::GpuConfig& a, const pool::GpuConfig& b) { return a.index < b.index; });
  return gpus;
}

// `ledger`: shared device memory books for a host backend (a session
// worker's); null: its own.
Status MakeBackend(const Flags& flags, const Settings& settings, const pool::Config& config,
                   std::unique_ptr<backend::GpuBackend>* out,
                   std::shared_ptr<backend::DeviceLedger> ledger = nullptr) {
  if (settings.backend == "cuda" || settings.backend == "auto") {
    backend::CudaBackendOptions cuda;
    cuda.driver_path = settings.cuda_driver;
    cuda.allow_ferry_driver = flags.allow_ferry_cuda_driver;
    Status status = backend::CreateCudaBackend(cuda, out);
    if (status.ok() || settings.backend == "cuda") return status;
    FERRY_LOG(kInfo) << "no usable NVIDIA driver (" << status.message()
                     << "); using the host backend";
  }
  backend::HostBackendOptions host;
  host.kernel_libraries = settings.host_kernels;
  host.ledger = std::move(ledger);
  if (flags.host_devices.has_value() || flags.host_memory.has_value() || config.gpus.empty()) {
    // The flags (or their defaults) describe identical devices.
    host.device_count =
        flags.host_devices.value_or(config.gpus.empty() ? 1 : static_cast<int>(config.gpus.size()));
    host.device_memory = flags.host_memory.value_or(8ull << 30);
  } else {
    // One emulated device per [[gpu]], in index order.
    for (const pool::GpuConfig& gpu : SortedGpus(config)) {
      host.device_memories.push_back(gpu.memory.value_or(8ull << 30));
    }
  }
  return backend::CreateHostBackend(host, out);
}

// Which GPUs ferryd serves: every backend device, or the [[gpu]] list.
Status ServedGpus(const pool::Config& config, const backend::GpuBackend& backend,
                  std::vector<server::ServedGpu>* out) {
  const auto& devices = backend.Devices();
  if (config.gpus.empty()) {
    for (size_t i = 0; i < devices.size(); ++i) {
      out->push_back(
          server::ServedGpu{static_cast<int>(i), static_cast<int>(i), devices[i].total_memory});
    }
    return Status::Ok();
  }
  const bool host = backend.Name() == "host";
  const std::vector<pool::GpuConfig> gpus = SortedGpus(config);
  for (size_t i = 0; i < gpus.size(); ++i) {
    const pool::GpuConfig& gpu = gpus[i];
    const std::string where =
        config.path + ":" + std::to_string(gpu.line) + ": gpu index " + std::to_string(gpu.index);
    // The host backend emulates one device per [[gpu]]; the CUDA backend
    // serves the real GPU with that index.
    const int device = host ? static_cast<int>(i) : gpu.index;
    if (device >= static_cast<int>(devices.size())) {
      return Status::InvalidArgument(where + ": the " + std::string(backend.Name()) +
                                     " backend has " + std::to_string(devices.size()) +
                                     " device(s)");
    }
    if (!host && gpu.memory.has_value()) {
      return Status::InvalidArgument(where +
                                     ": memory is for the host backend; the cuda backend "
                                     "serves each GPU's real memory");
    }
    out->push_back(server::ServedGpu{gpu.index, device, devices[device].total_memory});
  }
  return Status::Ok();
}

// --compute-sharing mps: the shares are MPS's to enforce, so MPS must be
// there — the CUDA backend, and the control daemon's pipe (the directory
// CUDA_MPS_PIPE_DIRECTORY names, as clients find it, else /tmp/nvidia-mps).
Status CheckMps(const backend::GpuBackend& backend) {
  if (backend.Name() != "cuda") {
    return Status::InvalidArgument(
        "--compute-sharing mps needs the cuda backend (this ferryd runs "
        "the " +
        std::string(backend.Name()) + " backend)");
  }
  const char* directory = std::getenv("CUDA_MPS_PIPE_DIRECTORY");
  const std::string control =
      std::string(directory != nullptr && *directory != '\0' ? directory : "/tmp/nvidia-mps") +
      "/control";
  struct stat st {};
  if (::stat(control.c_str(), &st) != 0 || !S_ISFIFO(st.st_mode)) {
    return Status::InvalidArgument(
        "--compute-sharing mps: no MPS control daemon (" + control +
        " is not its pipe); start nvidia-cuda-mps-control -d first, or set "
        "CUDA_MPS_PIPE_DIRECTORY to where it runs");
  }
  return Status::Ok();
}

int Main(int argc, char** argv) {
  SetLogProgram("ferryd");
  // Before any thread starts: it edits the environment.
  ServiceNotifier service_manager = ServiceNotifier::FromEnvironment();
  Flags flags;
  if (const int exit_status = ParseArgs(argc, argv, &flags); exit_status >= 0) return exit_status;
  pool::Config config;
  if (!flags.config_path.empty()) {
    Status status = pool::LoadConfigFile(flags.config_path, &config);
    if (!status.ok()) {
      std::fprintf(stderr, "ferryd: %s\n", status.message().c_str());
      return 2;
    }
  }
  Settings settings;
  if (Status status = Merge(flags, config, &settings); !status.ok()) {
    std::fprintf(stderr, "ferryd: %s\nRun 'ferryd --help' for usage.\n", status.message().c_str());
    return 2;
  }
  // Session workers get the same flags and config, so the same window.
  if (settings.busy_poll.has_value()) SetBusyPollWindow(*settings.busy_poll);

  if (flags.session_worker_link.has_value()) {
    // A session worker (server/session_worker.h): its own backend, one
    // session, then exit. Signals stay default: SIGTERM ends it at once.
    signal(SIGPIPE, SIG_IGN);
    std::unique_ptr<backend::GpuBackend> backend;
    std::shared_ptr<backend::DeviceLedger> ledger;
    Status status = Status::Ok();
    if (flags.host_memory_ledger.has_value()) {
      // "FD:SLOT" from the main process (SessionWorker::Spawn).
      int fd = -1, slot = -1;
      std::unique_ptr<backend::DeviceLedger> joined;
      if (std::sscanf(flags.host_memory_ledger->c_str(), "%d:%d", &fd, &slot) != 2) {
        status = Status::InvalidArgument("--host-memory-ledger wants FD:SLOT");
      } else {
        status = backend::DeviceLedger::Join(fd, slot, &joined);
      }
      ledger = std::move(joined);
    }
    if (status.ok()) status = MakeBackend(flags, settings, config, &backend, ledger);
    // Sessions handed over from TLS connections: the worker runs their new
    // TLS session with the same certificate.
    std::shared_ptr<TlsContext> tls;
    if (status.ok() && !settings.tls_cert.empty()) {
      status = TlsContext::ForServer(settings.tls_cert, settings.tls_key, &tls);
      if (!status.ok()) backend.reset();
    }
    return server::RunSessionWorker(*flags.session_worker_link, backend.get(), status,
                                    std::move(tls));
  }

  // Not dumpable: session workers (same user) cannot ptrace this process or
  // read its memory (the token set, other sessions' state).
  ::prctl(PR_SET_DUMPABLE, 0);

  // Block the stop and reload signals in every thread; the main thread
  // waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<backend::GpuBackend> backend;
  Status status = MakeBackend(flags, settings, config, &backend);
  if (!status.ok()) {
    FERRY_LOG(kError) << "cannot start the " << settings.backend
                      << " backend: " << status.message();
    return 1;
  }
  FERRY_LOG(kInfo) << "backend " << backend->Name() << ": " << backend->Devices().size()
                   << " device(s), driver version " << backend->DriverVersion();
  if (settings.busy_poll.has_value()) {
    FERRY_LOG(kInfo) << "busy-poll window " << BusyPollWindow().count() << " us";
  } else {
    FERRY_LOG(kInfo) << "busy-poll window " << BusyPollWindow().count() << " us (the default with "
                     << UsableCpus() << " usable CPU(s); --busy-poll sets it)";
  }
  if (settings.compute_sharing == server::ComputeSharing::kMps) {
    status = CheckMps(*backend);
    if (!status.ok()) {
      FERRY_LOG(kError) << status.message();
      return 1;
    }
  }
  std::vector<server::ServedGpu> gpus;
  status = ServedGpus(config, *backend, &gpus);
  if (!status.ok()) {
    FERRY_LOG(kError) << status.message();
    return 1;
  }
  for (const server::ServedGpu& gpu : gpus) {
    FERRY_LOG(kInfo) << "  GPU " << gpu.index << ": " << backend->Devices()[gpu.backend_device].name
                     << ", " << FormatByteSize(gpu.memory);
  }

  pool::SystemClock system_clock;
  std::unique_ptr<pool::FakeClock> fake_clock;
  pool::Clock* clock = &system_clock;
  if (flags.test_fake_clock.has_value()) {
    fake_clock = std::make_unique<pool::FakeClock>(*flags.test_fake_clock);
    clock = fake_clock.get();
    FERRY_LOG(kWarning) << "TEST ONLY: the pool runs on a fake clock standing at "
                        << absl::FormatTime(absl::RFC3339_full, *flags.test_fake_clock,
                                            absl::UTCTimeZone());
  }

  // Outlives the server (its workers' slots are given back as they end).
  std::shared_ptr<backend::DeviceLedger> shared_books;
  server::Server server(*backend, flags.module_cache);
  server.ServeGpus(gpus);
  server.SetComputeSharing(settings.compute_sharing);
  if (!flags.sessions_in_process) {
    // Each session in a worker process: ferryd again, with the same flags.
    std::vector<std::string> command{"/proc/self/exe"};
    for (int i = 1; i < argc; ++i) command.emplace_back(argv[i]);
    server::WorkerBooks books;
    if (backend->Name() == "host") {
      // The workers' host backends share one set of device memory books,
      // so that sessions fill one device as they would a GPU.
      std::vector<uint64_t> capacity;
      for (const auto& device : backend->Devices()) capacity.push_back(device.total_memory);
      std::unique_ptr<backend::DeviceLedger> made;
      status = backend::DeviceLedger::Create(capacity, /*shared=*/true, &made);
      if (!status.ok()) {
        FERRY_LOG(kError) << "cannot make the device memory books: " << status.message();
        return 1;
      }
      shared_books = std::move(made);
      books.fd = shared_books->fd();
      books.new_slot = [ledger = shared_books.get()] { return ledger->NewSlot(); };
      books.release_slot = [ledger = shared_books.get()](int slot) { ledger->ReleaseSlot(slot); };
    }
    server.UseSessionWorkers(std::move(command), std::move(books));
  }
  server.SetLimits(settings.limits);
  server.SetRdma(RdmaFromFlags(flags, !settings.tls_cert.empty()));
  if (!flags.config_path.empty()) server.SetConfigFile(flags.config_path, config);
  if (!settings.token_file.empty()) {
    status = server.SetTokenFile(settings.token_file);
    if (!status.ok()) {
      FERRY_LOG(kError) << status.message();
      return 1;
    }
  }
  if (!settings.tls_cert.empty()) {
    status = server.SetTls(settings.tls_cert, settings.tls_key);
    if (!status.ok()) {
      FERRY_LOG(kError) << status.message();
      return 1;
    }
  }
  server.SetUnixAccess(settings.unix_access);
  for (const std::string& address : settings.listen) {
    status = server.Listen(address);
    if (!status.ok()) {
      FERRY_LOG(kError) << status.message();
      return 1;
    }
  }
  std::string advertised;
  int64_t cluster_pools_revision = 0;
  if (!settings.etcd.empty()) {
    etcd::EtcdClient::Options store_options;
    store_options.endpoints = settings.etcd;
    // A renewal (every third of the TTL) that waits out the timeout still
    // lands well within the lease.
    store_options.request_timeout = std::min(absl::Seconds(2), settings.cluster.ttl / 3);
    std::unique_ptr<etcd::EtcdClient> store;
    std::unique_ptr<cluster::ClusterMember> member;
    cluster::ClusterMember::Options member_options = settings.cluster;
    if (member_options.advertise.empty()) {
      // The first TCP address ferryd listens on (its bound port), unless it
      // is a wildcard, which says nothing about where to connect.
      for (const std::string& bound : server.BoundAddresses()) {
        if (bound.rfind("unix:", 0) != 0) {
          member_options.advertise = bound;
          break;
        }
      }
      if (member_options.advertise.empty() || member_options.advertise.rfind("0.0.0.0:", 0) == 0 ||
          member_options.advertise.rfind("[::]:", 0) == 0) {
        FERRY_LOG(kError) << "cannot join the cluster: pass --advertise HOST:PORT (where clients "
                             "that other servers send here connect; ferryd listens on "
                          << (member_options.advertise.empty() ? "no TCP address"
                                                               : member_options.advertise)
                          << ")";
        return 1;
      }
    }
    std::string advertise_host;
    uint16_t advertise_port = 0;
    if (!ParseHostPort(member_options.advertise, &advertise_host, &advertise_port).ok() ||
        advertise_port == 0) {
      FERRY_LOG(kError) << "cannot join the cluster: --advertise " << member_options.advertise
                        << " is not HOST:PORT";
      return 1;
    }
    if (IsLoopbackAddress(member_options.advertise)) {
      bool etcd_local = true;
      for (const std::string& url : settings.etcd) {
        etcd_local = etcd_local && (url.find("//127.") != std::string::npos ||
                                    url.find("//localhost") != std::string::npos ||
                                    url.find("//[::1]") != std::string::npos);
      }
      if (!etcd_local) {
        FERRY_LOG(kWarning) << "cluster: advertising the loopback address "
                            << member_options.advertise
                            << ": clients on other hosts sent here reach themselves; pass "
                               "--advertise with an address they can reach";
      }
    }
    advertised = member_options.advertise;
    status = etcd::EtcdClient::Create(store_options, &store);
    if (status.ok()) status = cluster::ClusterMember::Create(std::move(store), member_options,
                                              &member);
    if (!status.ok()) {
      FERRY_LOG(kError) << "cannot join the cluster: " << status.message();
      return 1;
    }
    // The cluster's pool config, when one is stored, replaces the file's
    // pools and schedules; unreadable now, it is applied once etcd answers.
    std::optional<std::string> pool_text;
    status = member->ReadPoolConfig(&pool_text, &cluster_pools_revision);
    if (!status.ok()) {
      cluster_pools_revision = 0;
      FERRY_LOG(kWarning) << "cluster: cannot read the cluster's pool config now ("
                          << status.message() << "); it applies once etcd answers";
    } else if (pool_text.has_value()) {
      pool::Config cluster_pools;
      status = pool::ParseClusterConfig(*pool_text, "cluster-pool-config", &cluster_pools);
      if (status.ok()) {
        server.SetClusterPools(std::move(cluster_pools));
        FERRY_LOG(kInfo) << "cluster: the cluster's pool config (etcd revision "
                         << cluster_pools_revision << ") replaces --config's pools";
      } else {
        FERRY_LOG(kError) << "cluster: the cluster's pool config does not parse ("
                          << status.message() << "); --config's pools apply";
      }
    }
    server.SetCluster(std::move(member));
  }
  if (config.pooling() || !settings.etcd.empty()) {
    status = server.EnablePool(config, *clock, fake_clock.get());
    if (!status.ok()) {
      FERRY_LOG(kError) << "cannot set up the pool: " << status.message();
      return 1;
    }
    for (const auto& [name, pool] : config.pools) {
      FERRY_LOG(kInfo) << "pool " << name << ": " << pool.slices_per_gpu << " slice(s) per GPU";
    }
  }
  // Before Start, after everything it reads (the pool, tokens, TLS) is set.
  if (!settings.metrics_listen.empty()) {
    server::MetricsOptions metrics;
    metrics.listen = settings.metrics_listen;
    metrics.per_session = settings.metrics_sessions;
    metrics.server_name = settings.cluster.name;  // "" outside a cluster: the host's name
    metrics.version = FERRY_VERSION;
    status = server.ServeMetrics(metrics);
    if (!status.ok()) {
      FERRY_LOG(kError) << "--metrics-listen: " << status.message();
      return 1;
    }
    const std::string url =
        (settings.tls_cert.empty() ? "http://" : "https://") + server.MetricsAddress() + "/metrics";
    FERRY_LOG(kInfo) << "metrics at " << url
                     << (settings.token_file.empty() ? "" : ", tokens required");
    if (settings.token_file.empty() && !IsLoopbackAddress(server.MetricsAddress())) {
      FERRY_LOG(kWarning) << "*** NO AUTHENTICATION on " << url
                          << ": anyone who reaches it reads every session's program and host. ***";
    }
  }
  server.Start();
  if (!settings.etcd.empty()) {
    // Registered after Start: a client sent here by another server finds
    // this one listening. Failing now is not fatal: the member keeps trying.
    cluster::ServerRecord self;
    self.labels = settings.cluster.labels;
    self.backend = std::string(backend->Name());
    self.pid = static_cast<uint32_t>(::getpid());
    self.started_unix_ms = absl::ToUnixMillis(absl::Now());
    for (const server::ServedGpu& gpu : gpus) {
      const backend::DeviceDescription& device = backend->Devices()[gpu.backend_device];
      cluster::GpuRecord record;
      record.index = gpu.index;
      record.uuid = cluster::FormatGpuUuid(device.uuid);
      record.name = device.name;
      record.memory = gpu.memory;
      if (device.attributes.size() > CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT) {
        record.sms = device.attributes[CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT];
      }
      self.gpus.push_back(std::move(record));
    }
    status = server.JoinCluster(std::move(self));
    server.FollowClusterPools(cluster_pools_revision);
    FERRY_LOG(kInfo) << "cluster: server " << settings.cluster.name << " (advertised at "
                     << advertised << ") in etcd "
                     << absl::StrJoin(settings.etcd, ",")
                     << (status.ok() ? ": registered" : ": not yet registered: " + status.message());
  }
  for (const std::string& bound : server.BoundAddresses()) {
    const bool unix_socket = bound.rfind("unix:", 0) == 0;
    FERRY_LOG(kInfo) << "listening on " << bound
                     << (unix_socket || settings.tls_cert.empty() ? "" : " (TLS)")
                     << (settings.token_file.empty() ? "" : ", tokens required");
    if (settings.token_file.empty() && !unix_socket && !IsLoopbackAddress(bound)) {
      FERRY_LOG(kWarning) << "*** NO AUTHENTICATION on " << bound
                          << ": anyone who reaches it gets GPUs and every ferryctl command. "
                             "Create a token (`ferryctl token create --token-file PATH --pools "
                             "'*' --admin`) and run ferryd with --token-file PATH. ***";
    }
  }
  if (!settings.ready_file.empty()) {
    // Written whole, then renamed, so a watcher never reads half a line.
    const std::string temp = settings.ready_file + ".tmp";
    {
      std::ofstream out(temp);
      out << server.BoundAddresses().front() << "\n";
      // With --metrics-listen, a second line: "metrics HOST:PORT".
      if (!server.MetricsAddress().empty()) out << "metrics " << server.MetricsAddress() << "\n";
    }
    if (std::rename(temp.c_str(), settings.ready_file.c_str()) != 0) {
      FERRY_LOG(kError) << "cannot write --ready-file " << settings.ready_file;
      return 1;
    }
  }
  std::string listening = "listening on";
  for (const std::string& bound : server.BoundAddresses()) listening += " " + bound;
  service_manager.Ready(listening);

  for (;;) {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    if (signal_number == SIGHUP) {
      service_manager.Reloading();
      std::string summary;
      Status reloaded = server.Reload(&summary);
      if (!reloaded.ok()) {
        FERRY_LOG(kWarning) << "SIGHUP: " << reloaded.message();
      }
      service_manager.Ready(reloaded.ok() ? listening + "; reloaded"
                                          : listening + "; reload rejected: " + reloaded.message());
      continue;
    }
    FERRY_LOG(kInfo) << "received " << strsignal(signal_number) << "; stopping";
    break;
  }
  service_manager.Stopping();
  server.Stop();
  backend.reset();
  FERRY_LOG(kInfo) << "stopped";
  return 0;
}

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::Main(argc, argv); }
