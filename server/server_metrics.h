// ferryd's /metrics: what Server exposes in Prometheus's text format
// (Server::ServeMetrics, Server::MetricsText in server_metrics.cc) and the
// figures kept for it. The writer and the HTTP listener are ferry_metrics
// (server/metrics/); README.md "Metrics" lists every series.
//
// Thread-safety: plain values.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "server/metrics/histogram.h"
#include "server/metrics/metrics_endpoint.h"
#include "server/session.h"

namespace ferry::server {

// ferryd --metrics-listen, --metrics-sessions and what the series say about
// this ferryd.
struct MetricsOptions {
  std::string listen;        // "HOST:PORT"; port 0 picks one
  bool per_session = false;  // series per live client session (bounded by --max-sessions)
  std::string server_name;   // every series' `server` label; "" = this host's name
  std::string version;       // ferry_build_info's `version`
};

// Client sessions' counters added up. Server keeps those of the sessions
// that ended, so that its totals (calls, frames, bytes, sync-call
// durations) never go down when a session ends.
struct SessionTotals {
  uint64_t sessions = 0;
  uint64_t calls = 0;
  uint64_t launches = 0;
  uint64_t frames_from_client = 0;
  uint64_t frames_to_client = 0;
  uint64_t bytes_from_client = 0;
  uint64_t bytes_to_client = 0;
  metrics::HistogramCounts sync_calls;  // by kSyncCallBucketSeconds
  // parking (memory overcommit)
  uint64_t parks = 0, unparks = 0;
  uint64_t idle_releases = 0, reborrows = 0;  // idle release
  uint64_t bytes_parked = 0, bytes_unparked = 0;
  double park_seconds = 0, unpark_seconds = 0;

  void Add(const SessionInfo& info);
};

// What Server::ServeMetrics sets up; fixed after it.
struct MetricsState {
  MetricsOptions options;                              // server_name filled in
  std::string host_name;                               // the GPUs' `Hostname` label
  double start_seconds = 0;                            // the process's start, Unix seconds
  std::unique_ptr<metrics::MetricsEndpoint> endpoint;  // null: no /metrics
};

}  // namespace ferry::server
