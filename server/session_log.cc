#include "server/session_log.h"

#include <chrono>
#include <vector>

#include "common/log.h"

namespace ferry::server {
namespace {

// Who the session is and what it holds: the fields both lines share.
std::vector<LogField> SessionFields(const char* event, const SessionInfo& info,
                                    const SessionGrant& grant) {
  std::vector<LogField> fields;
  fields.emplace_back("event", event);
  fields.emplace_back("session", info.id);
  fields.emplace_back("peer", info.client);
  fields.emplace_back("transport", info.transport);
  fields.emplace_back("client_pid", info.pid);
  fields.emplace_back("client_host", info.host);
  fields.emplace_back("client_program", info.program);
  if (!info.token_id.empty()) {
    fields.emplace_back("token_name", info.token_name);
    fields.emplace_back("token_id", info.token_id);
  }
  if (grant.pooled) fields.emplace_back("pool", grant.pool);
  fields.emplace_back("devices", DescribeDevices(grant));
  return fields;
}

}  // namespace

std::string DescribeDevices(const SessionGrant& grant) {
  std::string out;
  for (const SessionDevice& device : grant.devices) {
    if (!out.empty()) out += ",";
    out += "gpu" + std::to_string(device.gpu);
    if (grant.pooled && device.slices_per_gpu > 1) {
      out +=
          ":slice" + std::to_string(device.slice + 1) + "/" + std::to_string(device.slices_per_gpu);
    }
  }
  return out;
}

void LogSessionStarted(const SessionInfo& info, const SessionGrant& grant) {
  if (LogLevel::kInfo < MinLogLevel()) return;
  const std::vector<LogField> fields = SessionFields("session_start", info, grant);
  WriteLogLine(LogLevel::kInfo, "session " + std::to_string(info.id) + " started", fields);
}

void LogSessionEnded(const SessionInfo& info, const SessionGrant& grant) {
  // A session refused at its handshake (preempted before it started) never
  // served: its refusal was logged, and it has no start line to end.
  if (!info.started || LogLevel::kInfo < MinLogLevel()) return;
  std::vector<LogField> fields = SessionFields("session_end", info, grant);
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  fields.emplace_back("duration_ms", now_ms - info.since_unix_ms);
  fields.emplace_back("bytes_from_client", info.bytes_from_client);
  fields.emplace_back("bytes_to_client", info.bytes_to_client);
  fields.emplace_back("peak_bytes_allocated", info.peak_bytes_allocated);
  fields.emplace_back("module_image_bytes_received", info.module_image_bytes_received);
  fields.emplace_back("reason", info.end_reason);
  WriteLogLine(LogLevel::kInfo,
               "session " + std::to_string(info.id) + " closed; all its resources are freed",
               fields);
}

void LogWorkerSessionEnded(const SessionWorker& worker, const std::string& how_it_died,
                           bool ferryd_stopping) {
  SessionInfo info = worker.Info();
  if (!worker.SentFinalFigures()) {
    // It was handed its client, so it served (or was about to).
    info.started = true;
    if (!how_it_died.empty()) {
      info.end_reason = "its worker process " + how_it_died;
    } else if (info.end_reason.empty()) {
      info.end_reason = ferryd_stopping ? "ferryd stopped" : "its worker process ended";
    }
  }
  LogSessionEnded(info, worker.grant());
}

}  // namespace ferry::server
