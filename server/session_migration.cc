// Session: moving to another GPU of the same server (migration, issue 16;
// server/README.md "Migration"). Runs on whichever thread asks (ferryd's
// control connection, or a worker's link reader); holds exec_mutex_, so no
// call of the session runs meanwhile, and the client sees only a pause.
#include <chrono>
#include <mutex>
#include <string>
#include <vector>

#include "common/log.h"
#include "common/units.h"
#include "server/session.h"
#include "server/session_internal.h"

namespace ferry::server {

using session_internal::SteadyNowNs;

Status Session::MoveDevice(int device, const SessionDevice& to) {
  const std::string who = "session " + std::to_string(id_);
  std::unique_lock<std::timed_mutex> exec(exec_mutex_, std::defer_lock);
  if (!exec.try_lock_for(kMoveQuiesceWait)) {
    return Status::Overloaded(who + " is executing a batch that did not end within " +
                              std::to_string(kMoveQuiesceWait.count()) + " s");
  }
  {
    std::lock_guard<std::mutex> lock(serve_mutex_);
    if (!handshake_answered_ || !revoked_.ok() || serving_ended_) {
      return Status::Overloaded(who + " is not serving");
    }
  }
  if (device < 0 || static_cast<size_t>(device) >= grant_.devices.size()) {
    return Status::InvalidArgument(who + " has no device " + std::to_string(device));
  }
  const int from = grant_.devices[device].backend_device;
  if (to.backend_device < 0 ||
      static_cast<size_t>(to.backend_device) >= backend_.Devices().size()) {
    return Status::InvalidArgument("no backend device " + std::to_string(to.backend_device));
  }
  for (const SessionDevice& held : grant_.devices) {
    if (held.backend_device == to.backend_device) {
      return Status::InvalidArgument(who + " has a device on GPU " + std::to_string(to.gpu) +
                                     " already");
    }
  }
  // The quota and what cudaGetDeviceProperties said stay: the same memory on
  // both sides (the session's shares are not re-made).
  const SessionDevice& now = grant_.devices[device];
  if (to.memory_quota != now.memory_quota ||
      (to.memory_quota == 0 && backend_.Devices()[from].total_memory !=
                                   backend_.Devices()[to.backend_device].total_memory)) {
    return Status::Unimplemented(who + ": GPU " + std::to_string(to.gpu) +
                                 " has another amount of memory than GPU " +
                                 std::to_string(now.gpu) +
                                 "; moves between GPUs of different memory are not built yet");
  }
  if (slices_released_.load()) {
    return Status::Overloaded(who + " gave its slices back while idle; it moves once it holds "
                                    "them again");
  }
  FERRY_RETURN_IF_ERROR(ImmovableObjects("another GPU"));
  FERRY_RETURN_IF_ERROR(QuiesceForMove());
  const int64_t started = SteadyNowNs();
  FERRY_RETURN_IF_ERROR(backend_.MoveTenantToDevice(*tenant_, from, to.backend_device));
  const SessionDevice before = grant_.devices[device];
  {
    std::lock_guard<std::mutex> lock(grant_mutex_);
    grant_.devices[device] = to;
  }
  moves_.fetch_add(1);
  FERRY_LOG(kInfo) << who << " (" << program_ << "@" << host_ << "): device " << device
                   << " moved from GPU " << before.gpu << " (slice " << before.slice + 1 << "/"
                   << before.slices_per_gpu << ") to GPU " << to.gpu << " (slice " << to.slice + 1
                   << "/" << to.slices_per_gpu << ") in "
                   << absl::FormatDuration(absl::Trunc(
                          absl::Nanoseconds(SteadyNowNs() - started), absl::Microseconds(100)))
                   << " (" << (shares_.device_bytes(device) >> 20) << " MiB of device memory)";
  return Status::Ok();
}

Status Session::ImmovableObjects(const std::string& where) {
  std::vector<std::string> held;
  if (arrays_.size() > 0) held.push_back(Plural(arrays_.size(), "array", "arrays"));
  if (textures_.size() > 0) {
    held.push_back(Plural(textures_.size(), "texture or surface object", "texture or surface objects"));
  }
  if (graphs_.size() > 0 || graph_execs_.size() > 0 || !captures_.empty()) {
    held.push_back("graphs");
  }
  // A device's default pool too (stream-ordered allocations made one): a
  // pool belongs to its device in the backend.
  if (mem_pools_.size() > 0) {
    held.push_back(Plural(mem_pools_.size(), "memory pool", "memory pools") +
                   " (stream-ordered allocation)");
  }
  if (physical_.size() > 0 || !reservations_.empty()) held.push_back("virtual memory");
  if (!peer_access_.empty()) held.push_back("peer access");
  if (links_.size() > 0) held.push_back(Plural(links_.size(), "link", "links"));
  if (held.empty()) return Status::Ok();
  std::string list;
  for (const std::string& h : held) list += (list.empty() ? "" : ", ") + h;
  return Status::Unimplemented("session " + std::to_string(id_) + " holds " + list +
                               ", which cannot move to " + where + " yet");
}

Status Session::QuiesceForMove() {
  const std::string who = "session " + std::to_string(id_);
  // In-flight work finishes first (a completion still writing a reply from
  // device memory included).
  const auto deadline = std::chrono::steady_clock::now() + kMoveQuiesceWait;
  {
    std::unique_lock<std::mutex> lock(pending_mutex_);
    if (!pending_cv_.wait_until(lock, deadline, [this] { return pending_completions_ == 0; })) {
      return Status::Overloaded(who + " has replies still being written");
    }
  }
  for (int round = 0; !AllStreamsIdle(); ++round) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status::Overloaded(who + "'s streams did not finish their work within " +
                                std::to_string(kMoveQuiesceWait.count()) + " s");
    }
    std::unique_lock<std::mutex> lock(serve_mutex_);
    serve_cv_.wait_for(lock, std::chrono::milliseconds(std::min(100, 5 << std::min(round, 5))),
                       [this] { return serving_ended_; });
    if (serving_ended_) return Status::Disconnected(who + " ended");
  }
  return Status::Ok();
}

}  // namespace ferry::server
