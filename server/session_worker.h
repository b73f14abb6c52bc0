// Session workers: each client session runs in a process of its own.
//
// ferryd's main process accepts, authenticates and borrows (server.h); then
// it spawns a worker — ferryd again, run as `ferryd <its own flags>
// --session-worker 3` — which opens its own backend (the driver, or the host
// backend with its kernel plugins) and tells the main process it is ready.
// The main process then hands it the client: the connection's descriptors
// (a TCP socket, or the unix socket and shared region of a shm client,
// common/transport.h TransportHandover), the client's Hello and the grant.
// The worker runs the Session directly with the client (no extra hop on the
// data path) until the connection ends, then frees everything and exits.
//
// So device memory, contexts, host-kernel plugins and faults belong to one
// session's process: a kernel that dereferences another tenant's pointer
// finds nothing of that tenant there, and a worker that crashes (a wild
// pointer in a host kernel, a driver fault) ends its own session alone; its
// client's connection closes, and the main process reaps it and gives its
// slices back. The main process returns a session's slices only once its
// worker has exited, so the quota never comes back before the memory.
//
// A TLS connection's session cannot travel: after the borrow, ferryd sends
// the client a secret (HelloReply.handoverSecret), ends the TLS session and
// hands the bare socket over; the client runs a new TLS handshake on it —
// now with the worker, checking the certificate again — and sends its Hello
// again with the secret, which the worker requires. Someone who could inject
// bytes into the TCP connection still cannot take the session over.
//
// The link: a SOCK_SEQPACKET socketpair, fd 3 in the worker, carrying
// schema/worker.capnp messages (descriptors beside them): the start, preempt
// notices and their answers, status requests, and module images (the
// ModuleCache stays in the main process; images travel as sealed memfds,
// server/module_cache.h). When the main process closes the link (ferryd
// stops, or dies), the worker ends its session the way a closed connection
// would.
//
// What this isolates: faults, wild pointers and sticky errors of one session,
// which end its worker alone. Workers run as ferryd's user, not dumpable
// (no ptrace or /proc/PID/mem between ferryd's processes); a worker taken
// over by its tenant's code could still signal ferryd's processes or read
// its files — separate users per worker would be the next step.
//
// Thread-safety: SessionWorker's methods are safe from any thread, except
// Start (before the worker is shared); Supervise runs on one (the
// connection's) thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <absl/base/thread_annotations.h>
#include <capnp/common.h>

#include "common/status.h"
#include "common/tls_transport.h"
#include "common/transport.h"
#include "server/backend/api/gpu_backend.h"
#include "server/module_cache.h"
#include "server/session.h"

namespace ferry::server {

// The main process's side of one worker: spawns it, hands it its client, and
// stands for its session in the Server's table.
// Books of device memory that workers share with ferryd's main process (the
// host backend's DeviceLedger, server/backend/host/device_ledger.h, seen
// through this seam so that this target needs no backend): the descriptor
// every worker inherits, and a slot per worker, given back once the worker
// has been reaped (what it still held goes back to the devices then).
struct WorkerBooks {
  int fd = -1;
  std::function<int()> new_slot;
  std::function<void(int slot)> release_slot;
};

class SessionWorker final : public ServedSession {
 public:
  // How long a new worker may take to open its backend.
  static constexpr std::chrono::seconds kReadyTimeout{60};
  // After the link closes (the session ended, or ferryd stops), how long the
  // worker may take to exit before it is killed.
  static constexpr std::chrono::seconds kExitGrace{15};
  // How long Info waits for the worker's answer before it shows what it
  // last knew.
  static constexpr std::chrono::seconds kInfoTimeout{2};
  // How long a message to the worker may wait for room on the link; a
  // worker that reads nothing for that long is ended.
  static constexpr std::chrono::seconds kLinkSendTimeout{5};
  // How long Preempt waits for the worker's answer (its batch in progress
  // may take Session::kPreemptBatchWait) before it ends the worker.
  static constexpr std::chrono::seconds kPreemptAnswerTimeout{20};

  // Spawns `command` (argv; "--session-worker 3" is appended) with ferryd's
  // environment plus `environment` ("NAME=value": MpsEnvironment), and waits
  // until it has opened its backend. It serves whichever session Start gives
  // it (ferryd keeps one such worker spare, so that a session's start does
  // not wait for a backend to open). A worker that
  // cannot (no driver, a plugin that does not load) is reaped and its reason
  // returned.
  // With `books`, the worker inherits its descriptor as descriptor 4 and a
  // slot of its own ("--host-memory-ledger 4:SLOT" is appended).
  static Status Spawn(const std::vector<std::string>& command,
                      const std::vector<std::string>& environment,
                      std::shared_ptr<SessionWorker>* out, const WorkerBooks* books = nullptr);
  // The descriptor a worker finds its shared books on.
  static constexpr int kWorkerBooksFd = 4;
  ~SessionWorker() override;
  SessionWorker(const SessionWorker&) = delete;
  SessionWorker& operator=(const SessionWorker&) = delete;

  // Hands the client over, before the worker is published to other threads:
  // sends `handover` (the connection Transport::Release gave up) with the
  // client's Hello (`hello`, the frame's words), `grant` (compute mechanisms
  // chosen), the session's buffer limit and, when not empty, the reason it
  // was preempted before it started. `basics` is what Info shows when the
  // worker cannot be asked; its token name and id go to the worker's session
  // (its log lines). On success `handover`'s descriptors are closed
  // here (the worker has its own); on failure they stay in `handover`, for
  // another worker.
  // Over TLS the caller has sent the client `tls_secret`
  // (HelloReply.handoverSecret); the worker runs the new TLS session and
  // accepts only a Hello that carries it.
  // A session that arrives from another server comes with `arrival`: its
  // MigrationOffer's words (the first `arrival_offer_bytes`) followed by the
  // offer's bulk bytes (Session::SetArrival), sent beside as a memfd.
  Status Start(uint64_t session_id, TransportHandover& handover, std::span<const capnp::word> hello,
               SessionGrant grant, uint64_t buffer_limit, const std::string& preemption,
               SessionInfo basics, const RdmaServing& rdma,
               std::span<const uint8_t> tls_secret = {},
               const std::shared_ptr<const SealedImage>& arrival = nullptr,
               uint64_t arrival_offer_bytes = 0);

  // Serves the worker's requests (module images from `images`, may be null)
  // and delivers its answers (its session's final figures, FromWorker.final,
  // become what Info shows) until the link closes; then waits for the
  // worker to exit (killing it after kExitGrace) and returns how it ended:
  // "" for a clean exit, else e.g. "killed by signal 11 (Segmentation
  // fault)". The calling thread is the worker's supervisor.
  std::string Supervise(ModuleCache* images);

  SessionInfo Info() const override;
  SessionGrant grant() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return grant_;
  }
  // Asks the worker's session to move (Session::MoveDevice; ToWorker.move)
  // and waits at most kMoveAnswerTimeout; on success the grant here follows.
  Status MoveDevice(int device, const SessionDevice& to) override;
  static constexpr std::chrono::seconds kMoveAnswerTimeout{30};
  // Asks the worker's session to move to another server (Session::Depart;
  // ToWorker.depart) and waits for its answer, which comes within
  // Session::kDepartureWait.
  Status Depart(const SessionDeparture& to, std::string* summary) override;
  // Sends the preemption and waits (at most kPreemptAnswerTimeout) for the
  // worker's answer: true when it says it freed the session's resources
  // (the slices may go back then; a worker is ferryd itself, trusted that
  // far); false when it ended or was ended instead (the slices come back
  // once it has exited).
  bool Preempt(const std::string& reason) override;
  // Asks the worker's session to park its memory (Session::Park) and waits
  // at most kParkAnswerTimeout for the answer (else Overloaded).
  Status Park(absl::Duration min_idle, const std::string& reason, int count_device,
              uint64_t* parked_bytes) override;
  // The same, giving the slices back (Session::ReleaseIdle): the worker's
  // session asks (FromWorker.releaseSlices) and the link's reader calls the
  // SliceLease's give_back and answers before it reads anything more.
  Status ReleaseIdle(absl::Duration min_idle, uint64_t* parked_bytes) override;
  // Before Supervise: who answers the worker's requests for room on a full
  // device (FromWorker.relieve; Session::SetMemoryPressure). Unset: 0 bytes.
  void SetMemoryPressure(Session::MemoryPressure relieve) { relieve_ = std::move(relieve); }
  // Before Supervise: how the worker's session gives its slices back and
  // borrows them again (FromWorker.releaseSlices, FromWorker.borrowAgain;
  // the borrow runs on a thread of its own and ends when the link closes).
  // Unset: the session is never released.
  void SetSliceLease(Session::SliceLease lease) { slice_lease_ = std::move(lease); }
  static constexpr std::chrono::seconds kParkAnswerTimeout{15};
  // Closes the link: the worker ends its session.
  void Stop() override;

  pid_t pid() const { return pid_; }
  // Whether the worker sent its session's final figures (FromWorker.final)
  // before the link closed; not when ferryd closed the link first (Stop) or
  // the worker died.
  bool SentFinalFigures() const;
  // Whether the process has ended (a spare that died waiting), without
  // waiting.
  bool Exited() const;

 private:
  SessionWorker(pid_t pid, int pidfd, int link) : pid_(pid), pidfd_(pidfd), link_(link) {}
  Status Send(std::span<const uint8_t> bytes, std::span<const int> fds = {});
  // Waits for the worker process to end (at most `grace`, then SIGKILL) and
  // says how it ended ("" for exit status 0).
  std::string Reap(std::chrono::milliseconds grace);

  const pid_t pid_;
  const int pidfd_;
  const int link_;
  // Its slot in the shared books (-1: none), given back by Reap.
  int books_slot_ = -1;
  std::function<void(int)> release_books_slot_;
  uint64_t session_id_ = 0;  // set by Start, fixed after
  SessionGrant grant_;       // set by Start; devices change by MoveDevice (under mutex_)

  std::mutex send_mutex_;  // one message at a time on the link

  std::mutex preempt_mutex_;  // one preemption at a time

  mutable std::mutex mutex_;
  mutable std::condition_variable answered_;
  SessionInfo last_info_ ABSL_GUARDED_BY(mutex_);
  mutable uint64_t next_request_ ABSL_GUARDED_BY(mutex_) = 1;
  // Info requests still asked (empty until answered); answers to anything
  // else are dropped.
  mutable std::map<uint64_t, std::optional<SessionInfo>> info_answers_ ABSL_GUARDED_BY(mutex_);
  uint64_t preempt_request_ ABSL_GUARDED_BY(mutex_) = 0;  // the one asked now
  std::optional<bool> preempt_answer_ ABSL_GUARDED_BY(mutex_);
  // Move requests still asked (empty until answered).
  std::map<uint64_t, std::optional<Status>> move_answers_ ABSL_GUARDED_BY(mutex_);
  // Departures asked (empty until answered): status and summary.
  std::map<uint64_t, std::optional<std::pair<Status, std::string>>> depart_answers_
      ABSL_GUARDED_BY(mutex_);
  // Park requests still asked (empty until answered): status and bytes.
  std::map<uint64_t, std::optional<std::pair<Status, uint64_t>>> park_answers_
      ABSL_GUARDED_BY(mutex_);
  Session::MemoryPressure relieve_;  // set before Supervise
  Session::SliceLease slice_lease_;  // set before Supervise
  // One request to the worker and its answer: `encode(request_id)` makes
  // the message; the link's reader hands the answer to Deliver. Waits at
  // most `timeout`, or until the link closes; nullopt when no answer came
  // (the link closed or was closed before the question).
  template <typename Answer>
  std::optional<Answer> Ask(std::map<uint64_t, std::optional<Answer>>& answers,
                            std::chrono::seconds timeout,
                            const std::function<std::vector<uint8_t>(uint64_t)>& encode);
  // The link's reader: the answer to request `request`, kept only while it
  // is still asked.
  template <typename Answer>
  void Deliver(std::map<uint64_t, std::optional<Answer>>& answers, uint64_t request,
               Answer answer);
  // Park and ReleaseIdle: one request to the worker and its answer.
  Status AskToPark(absl::Duration min_idle, const std::string& reason, bool release,
                   int count_device, uint64_t* parked_bytes);
  bool link_closed_ ABSL_GUARDED_BY(mutex_) = false;
  bool final_received_ ABSL_GUARDED_BY(mutex_) = false;
  bool reaped_ ABSL_GUARDED_BY(mutex_) = false;
};

// A worker process's whole life (`ferryd --session-worker FD`): tells the
// main process on `link` that `backend` is ready (or, with `backend` null,
// why it could not open: `backend_status`), receives its session, serves it,
// and returns the process's exit status once the session has ended and freed
// everything.
// `tls` (null without TLS): the certificate for sessions handed over from a
// TLS connection.
int RunSessionWorker(int link, backend::GpuBackend* backend, const Status& backend_status,
                     std::shared_ptr<TlsContext> tls);

}  // namespace ferry::server
