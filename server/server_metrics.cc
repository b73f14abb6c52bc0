// Server's /metrics: the figures of `ferryctl status` (the same sources: the
// sessions' SessionInfo, asked of their workers; the pool's snapshot) and the
// counters kept for Prometheus (PoolService::Counters, SessionTotals), as
// Prometheus text. README.md "Metrics" lists the series.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/log.h"
#include "server/cluster/cluster_records.h"
#include "server/metrics/prometheus_text.h"
#include "server/server.h"

namespace ferry::server {
namespace {

using metrics::Labels;
using metrics::MetricType;
using metrics::PrometheusText;

std::string HostName() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "";
  return name;
}

// When this process started, in Unix seconds: its start in clock ticks
// after boot (/proc/self/stat, field 22) plus the boot time (/proc/stat
// btime). 0 when either cannot be read.
double ProcessStartSeconds() {
  std::ifstream stat_file("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  // The command name (field 2) may hold spaces: count fields after its ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 1));
  std::string field;
  unsigned long long start_ticks = 0;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
    if (i == 22) start_ticks = std::strtoull(field.c_str(), nullptr, 10);
  }
  std::ifstream proc_stat("/proc/stat");
  unsigned long long boot = 0;
  for (std::string line; std::getline(proc_stat, line);) {
    if (line.rfind("btime ", 0) == 0) boot = std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  const long ticks_per_second = ::sysconf(_SC_CLK_TCK);
  if (start_ticks == 0 || boot == 0 || ticks_per_second <= 0) return 0;
  return static_cast<double>(boot) + static_cast<double>(start_ticks) / ticks_per_second;
}

// "sm-partition (12 SMs)" -> "sm-partition": the kind, a label value that
// does not change with the device.
std::string MechanismKind(const SessionDevice& device) {
  const std::string mechanism = ComputeMechanism(device);
  return mechanism.substr(0, mechanism.find(' '));
}

Labels With(Labels labels, std::string name, std::string value) {
  labels.emplace_back(std::move(name), std::move(value));
  return labels;
}

}  // namespace

void SessionTotals::Add(const SessionInfo& info) {
  ++sessions;
  calls += info.calls;
  launches += info.launches;
  frames_from_client += info.frames_from_client;
  frames_to_client += info.frames_to_client;
  bytes_from_client += info.bytes_from_client;
  bytes_to_client += info.bytes_to_client;
  sync_calls.Add(info.sync_calls);
  parks += info.parks;
  unparks += info.unparks;
  idle_releases += info.releases;
  reborrows += info.reborrows;
  bytes_parked += info.bytes_parked_total;
  bytes_unparked += info.bytes_unparked_total;
  park_seconds += info.park_seconds;
  unpark_seconds += info.unpark_seconds;
}

Status Server::ServeMetrics(const MetricsOptions& options) {
  if (metrics_.endpoint != nullptr) return Status::InvalidArgument("/metrics is served already");
  metrics_.options = options;
  metrics_.host_name = HostName();
  if (metrics_.options.server_name.empty()) metrics_.options.server_name = metrics_.host_name;
  metrics_.start_seconds = ProcessStartSeconds();
  metrics::MetricsEndpoint::Options endpoint;
  endpoint.address = options.listen;
  endpoint.tls = tls_;
  if (!token_file_.empty()) {
    endpoint.authorize = [this](std::string_view token) { return AcceptsMetricsToken(token); };
  }
  endpoint.render = [this] { return MetricsText(); };
  return metrics::MetricsEndpoint::Start(std::move(endpoint), &metrics_.endpoint);
}

std::string Server::MetricsAddress() const {
  return metrics_.endpoint != nullptr ? metrics_.endpoint->bound_address() : "";
}

bool Server::AcceptsMetricsToken(std::string_view token) const {
  std::shared_ptr<const auth::TokenSet> tokens;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    tokens = tokens_;
  }
  if (tokens == nullptr) return true;  // no token file: no authentication
  return !token.empty() && tokens->Find(token) != nullptr;
}

std::string Server::MetricsText() const {
  // The live sessions and what ended ones left, as one set: a session
  // leaves sessions_ and adds its final figures to ended_sessions_ under
  // the same lock, so it is counted once, and totals never go down.
  std::vector<std::shared_ptr<ServedSession>> live;
  SessionTotals totals;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [id, session] : sessions_) live.push_back(session);
    totals = ended_sessions_;
  }
  // Asked outside the lock: a worker takes up to SessionWorker::kInfoTimeout.
  std::vector<SessionInfo> infos;
  for (const auto& session : live) {
    infos.push_back(session->Info());
    totals.Add(infos.back());
  }
  totals.sync_calls.counts.resize(std::size(kSyncCallBucketSeconds) + 1, 0);

  pool::PoolSnapshot snapshot;
  std::map<std::string, PoolService::PoolCounters> pool_counters;
  if (pool_ != nullptr) {
    absl::Time now;
    snapshot = pool_->Snapshot(&now);
    pool_counters = pool_->Counters();
  }
  const Labels server_label = {{"server", metrics_.options.server_name}};
  PrometheusText out;

  // --- per GPU -------------------------------------------------------------
  struct GpuFigures {
    int index = 0;
    Labels labels;
    uint64_t memory = 0;
    uint64_t used = 0;
    std::set<uint64_t> sessions;
    const pool::GpuSnapshot* pooled = nullptr;  // null without pools
    std::string mechanism;
  };
  std::vector<GpuFigures> gpus;
  for (const ServedGpu& gpu : gpus_) {
    GpuFigures figures;
    const backend::DeviceDescription& device = backend_.Devices()[gpu.backend_device];
    figures.index = gpu.index;
    figures.memory = gpu.memory;
    SessionDevice whole;  // the mechanism a slice of this GPU gets now
    whole.backend_device = gpu.backend_device;
    whole.gpu = gpu.index;
    for (const pool::GpuSnapshot& g : snapshot.gpus) {
      if (g.index == gpu.index) figures.pooled = &g;
    }
    if (figures.pooled != nullptr) {
      whole.slices_per_gpu = std::max(figures.pooled->slices_per_gpu, 1);
      whole.compute_share = 1.0 / whole.slices_per_gpu;
      ChooseComputeMechanism(backend_, &whole, sharing_);
    }
    figures.mechanism = MechanismKind(whole);
    // As DCGM's exporter names them, then ferry's own.
    figures.labels = {{"gpu", std::to_string(gpu.index)},
                      {"UUID", cluster::FormatGpuUuid(device.uuid)},
                      {"modelName", device.name},
                      {"Hostname", metrics_.host_name},
                      {"server", metrics_.options.server_name},
                      {"pool", figures.pooled != nullptr ? figures.pooled->pool : ""}};
    gpus.push_back(std::move(figures));
  }
  for (size_t s = 0; s < live.size(); ++s) {
    const SessionGrant& grant = live[s]->grant();
    for (size_t i = 0; i < grant.devices.size(); ++i) {
      for (GpuFigures& gpu : gpus) {
        if (gpu.index != grant.devices[i].gpu) continue;
        if (i < infos[s].device_bytes.size()) gpu.used += infos[s].device_bytes[i];
        gpu.sessions.insert(infos[s].id);
      }
    }
  }
  out.Family("ferry_gpu_memory_total_bytes", MetricType::kGauge, "The GPU's memory.");
  for (const GpuFigures& gpu : gpus) out.Count(gpu.labels, gpu.memory);
  out.Family("ferry_gpu_memory_used_bytes", MetricType::kGauge,
             "Device memory the sessions on the GPU hold (as ferryctl status's memory used).");
  for (const GpuFigures& gpu : gpus) out.Count(gpu.labels, gpu.used);
  out.Family("ferry_gpu_sessions", MetricType::kGauge, "Client sessions using the GPU.");
  for (const GpuFigures& gpu : gpus) out.Count(gpu.labels, gpu.sessions.size());
  out.Family("ferry_gpu_compute_mechanism", MetricType::kGauge,
             "How the GPU's slices share its compute (the mechanism label: whole-gpu, "
             "sm-partition, mps, launch-throttle); always 1.");
  for (const GpuFigures& gpu : gpus) out.Count(With(gpu.labels, "mechanism", gpu.mechanism), 1);
  if (pool_ != nullptr) {
    out.Family("ferry_gpu_slices", MetricType::kGauge,
               "Slices of the GPU in its current pool's layout.");
    for (const GpuFigures& gpu : gpus) {
      if (gpu.pooled != nullptr) out.Count(gpu.labels, gpu.pooled->slices_per_gpu);
    }
    out.Family("ferry_gpu_slices_held", MetricType::kGauge,
               "Slices of the GPU held by sessions (of any pool, draining ones included).");
    for (const GpuFigures& gpu : gpus) {
      if (gpu.pooled != nullptr) out.Count(gpu.labels, gpu.pooled->holdings.size());
    }
    out.Family("ferry_gpu_drained", MetricType::kGauge,
               "1 while the GPU is drained (ferryctl drain): it takes no new borrows.");
    for (const GpuFigures& gpu : gpus) {
      if (gpu.pooled != nullptr) out.Count(gpu.labels, gpu.pooled->drained ? 1 : 0);
    }
  }

  // --- per pool ------------------------------------------------------------
  if (pool_ != nullptr) {
    std::map<std::string, uint64_t> serving, queued;
    std::map<std::string, std::set<uint64_t>> holders;
    for (const pool::GpuSnapshot& g : snapshot.gpus) {
      ++serving[g.pool];
      for (const pool::HoldingSnapshot& h : g.holdings) holders[h.pool].insert(h.session);
    }
    for (const pool::WaiterSnapshot& w : snapshot.queue) ++queued[w.pool];
    const auto pool_labels = [&](const std::string& pool) {
      return With(server_label, "pool", pool);
    };
    out.Family("ferry_pool_gpus", MetricType::kGauge, "GPUs serving the pool now.");
    for (const auto& [pool, counters] : pool_counters) out.Count(pool_labels(pool), serving[pool]);
    out.Family("ferry_pool_holders", MetricType::kGauge, "Sessions holding slices of the pool.");
    for (const auto& [pool, counters] : pool_counters) {
      out.Count(pool_labels(pool), holders[pool].size());
    }
    out.Family("ferry_pool_queue_length", MetricType::kGauge,
               "Borrows of the pool waiting in the queue.");
    for (const auto& [pool, counters] : pool_counters) out.Count(pool_labels(pool), queued[pool]);
    out.Family("ferry_pool_waits_total", MetricType::kCounter,
               "Borrows of the pool that had to wait in the queue.");
    for (const auto& [pool, counters] : pool_counters) {
      out.Count(pool_labels(pool), counters.waits);
    }
    out.Family("ferry_pool_wait_duration_seconds", MetricType::kHistogram,
               "How long each ended wait in the pool's queue lasted (granted or not).");
    for (const auto& [pool, counters] : pool_counters) {
      out.Histogram(pool_labels(pool), PoolService::kWaitBucketSeconds, counters.wait_seconds);
    }
    out.Family("ferry_pool_preemptions_total", MetricType::kCounter,
               "Holders of the pool preempted (a schedule, a rebind, a drain grace that ran out).");
    for (const auto& [pool, counters] : pool_counters) {
      out.Count(pool_labels(pool), counters.preemptions);
    }
    out.Family("ferry_pool_drains_total", MetricType::kCounter,
               "Holders of the pool that a rebind began to drain.");
    for (const auto& [pool, counters] : pool_counters) {
      out.Count(pool_labels(pool), counters.drains);
    }
    out.Family("ferry_pool_rebind_migrations_total", MetricType::kCounter,
               "Holders of the pool that a rebind with on_rebind = \"migrate\" moved to another "
               "GPU (outcome \"moved\") or left draining (\"drained\": no free slice elsewhere, "
               "or the move failed).");
    for (const auto& [pool, counters] : pool_counters) {
      out.Count(With(pool_labels(pool), "outcome", "moved"), counters.rebind_migrations);
      out.Count(With(pool_labels(pool), "outcome", "drained"), counters.rebind_migration_fallbacks);
    }
  }

  // --- per session (--metrics-sessions; live sessions only, so at most
  // --max-sessions of each) ----------------------------------------------
  if (metrics_.options.per_session) {
    std::vector<Labels> labels;
    for (size_t s = 0; s < live.size(); ++s) {
      labels.push_back({{"server", metrics_.options.server_name},
                        {"session", std::to_string(infos[s].id)},
                        {"pool", live[s]->grant().pool},
                        {"program", infos[s].program},
                        {"client_host", infos[s].host}});
    }
    out.Family("ferry_session_calls_total", MetricType::kCounter,
               "Calls the session's client made that ferryd executed.");
    for (size_t s = 0; s < live.size(); ++s) out.Count(labels[s], infos[s].calls);
    out.Family("ferry_session_launches_total", MetricType::kCounter,
               "Kernel and graph launches among them.");
    for (size_t s = 0; s < live.size(); ++s) out.Count(labels[s], infos[s].launches);
    out.Family("ferry_session_bytes_from_client_total", MetricType::kCounter,
               "Bytes read from the session's connection (calls and data).");
    for (size_t s = 0; s < live.size(); ++s) out.Count(labels[s], infos[s].bytes_from_client);
    out.Family("ferry_session_bytes_to_client_total", MetricType::kCounter,
               "Bytes written to the session's connection (replies and data).");
    for (size_t s = 0; s < live.size(); ++s) out.Count(labels[s], infos[s].bytes_to_client);
    out.Family("ferry_session_memory_bytes", MetricType::kGauge,
               "Device memory the session holds (ferryctl status's allocated).");
    for (size_t s = 0; s < live.size(); ++s) out.Count(labels[s], infos[s].bytes_allocated);
  }

  // --- transport: every client session, ended ones included ----------------
  out.Family("ferry_sessions", MetricType::kGauge, "Client sessions now.");
  out.Count(server_label, live.size());
  out.Family("ferry_sessions_started_total", MetricType::kCounter,
             "Client sessions that started (whose devices were handed to them).");
  out.Count(server_label, totals.sessions);
  out.Family("ferry_calls_total", MetricType::kCounter, "Calls of clients that ferryd executed.");
  out.Count(server_label, totals.calls);
  out.Family("ferry_launches_total", MetricType::kCounter, "Kernel and graph launches among them.");
  out.Count(server_label, totals.launches);
  out.Family("ferry_frames_received_total", MetricType::kCounter,
             "Frames read from clients (call batches, gate openings).");
  out.Count(server_label, totals.frames_from_client);
  out.Family("ferry_frames_sent_total", MetricType::kCounter,
             "Frames written to clients (replies, keepalives, handshake replies).");
  out.Count(server_label, totals.frames_to_client);
  out.Family("ferry_bytes_received_total", MetricType::kCounter,
             "Bytes read from clients' sessions (frames and their data).");
  out.Count(server_label, totals.bytes_from_client);
  out.Family("ferry_bytes_sent_total", MetricType::kCounter,
             "Bytes written to clients' sessions (frames and their data).");
  out.Count(server_label, totals.bytes_to_client);
  out.Family("ferry_sync_call_duration_seconds", MetricType::kHistogram,
             "How long ferryd took to answer each call its client waited for, from the start of "
             "its execution to its reply written.");
  out.Histogram(server_label, kSyncCallBucketSeconds, totals.sync_calls);

  // --- parking (memory overcommit): every client session, ended ones included
  uint64_t parked_now = 0;
  for (const SessionInfo& info : infos) parked_now += info.parked_bytes;
  out.Family("ferry_parked_memory_bytes", MetricType::kGauge,
             "Device memory of idle sessions parked in host memory now (memory overcommit).");
  out.Count(server_label, parked_now);
  out.Family("ferry_parks_total", MetricType::kCounter,
             "Times an idle session's device memory was parked in host memory.");
  out.Count(server_label, totals.parks);
  out.Family("ferry_unparks_total", MetricType::kCounter,
             "Times parked memory was brought back for a session's next call.");
  out.Count(server_label, totals.unparks);
  out.Family("ferry_parked_bytes_total", MetricType::kCounter, "Bytes parked in host memory.");
  out.Count(server_label, totals.bytes_parked);
  out.Family("ferry_unparked_bytes_total", MetricType::kCounter,
             "Bytes brought back from host memory.");
  out.Count(server_label, totals.bytes_unparked);
  out.Family("ferry_park_seconds_total", MetricType::kCounter,
             "Time spent parking memory (copying it out).");
  out.Value(server_label, totals.park_seconds);
  out.Family("ferry_unpark_seconds_total", MetricType::kCounter,
             "Time sessions' calls waited for their parked memory to come back.");
  out.Value(server_label, totals.unpark_seconds);
  // --- idle release
  uint64_t released_now = 0;
  for (const SessionInfo& info : infos) released_now += info.slices_released ? 1 : 0;
  out.Family("ferry_released_sessions", MetricType::kGauge,
             "Sessions whose slices went back to the pool while they are idle (idle release).");
  out.Count(server_label, released_now);
  out.Family("ferry_idle_releases_total", MetricType::kCounter,
             "Times an idle session's slices went back to the pool (its memory parked).");
  out.Count(server_label, totals.idle_releases);
  out.Family("ferry_reborrows_total", MetricType::kCounter,
             "Times a released session borrowed its slices again for its next call.");
  out.Count(server_label, totals.reborrows);

  // --- process -------------------------------------------------------------
  out.Family("process_start_time_seconds", MetricType::kGauge,
             "When ferryd's main process started, in seconds since the Unix epoch.");
  out.Value({}, metrics_.start_seconds);
  out.Family("ferry_build_info", MetricType::kGauge,
             "ferryd's version and backend (labels); always 1.");
  out.Count(With(With(server_label, "version", metrics_.options.version), "backend",
                 std::string(backend_.Name())),
            1);

  if (!out.error().empty()) {
    static std::atomic<bool> logged{false};
    if (!logged.exchange(true)) {
      FERRY_LOG(kError) << "/metrics left a series out (a bug): " << out.error();
    }
  }
  return out.text();
}

}  // namespace ferry::server
