// Server: ferryd's listeners and its table of live sessions.
//
// Each accepted connection gets a thread that reads the Hello frame and then
// either runs a client Session (role client) or answers ferryctl's requests
// (role control). Stop closes the listeners, ends every session (each frees
// its resources) and joins all threads.
//
// Without a pool every session gets every served device, whole. With one
// (EnablePool), a client's handshake borrows slices first — waiting in the
// queue if it asked to — and gives them back when its session ends; a
// preempted session loses its devices at once (Session::Preempt).
//
// Thread-safety: every public method is safe from any thread.
#pragma once

#include <absl/base/thread_annotations.h>
#include <asio.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "server/backend/api/gpu_backend.h"
#include "server/pool/clock.h"
#include "server/pool/config.h"
#include "server/pool_service.h"
#include "server/session.h"

namespace ferry::server {

// A GPU ferryd serves: its index (the [[gpu]] index, as operators and
// ferryctl name it), the backend device behind it, and its memory.
struct ServedGpu {
  int index = 0;
  int backend_device = 0;
  uint64_t memory = 0;
};

// What ferryd lets peers hold (ferryd flags and [server] in the config).
struct ServerLimits {
  // A connection that has not sent its whole Hello by then is closed.
  std::chrono::milliseconds handshake_timeout{5000};
  // Connections at once (handshakes, sessions and ferryctl's); the next one
  // is refused with a HelloReply that says so.
  int max_connections = 512;
  // Client sessions at once; the next client is refused the same way.
  int max_sessions = 256;
  // Per session: bytes of call frames read but not yet executed
  // (Session::SetBufferLimit).
  uint64_t session_buffer_bytes = Session::kDefaultBufferLimit;
};

class Server {
 public:
  // `backend` must outlive the server. Sessions share a module image cache of
  // `module_cache_bytes` (0: none).
  explicit Server(backend::GpuBackend& backend,
                  uint64_t module_cache_bytes = kDefaultModuleCacheBytes);
  static constexpr uint64_t kDefaultModuleCacheBytes = 1ull << 30;
  ~Server();  // Stop()s

  // Before Start. Without a pool: sessions see these GPUs, whole, in this
  // order (default: every backend device).
  void ServeGpus(std::vector<ServedGpu> gpus);
  // Before Start (default: ServerLimits{}).
  void SetLimits(const ServerLimits& limits) { limits_ = limits; }
  // Before Start. Clients borrow slices of the served GPUs as `config` says
  // (`config.pooling()` must hold). `clock` (and `test_clock`, the same
  // object when ferryd runs --test-fake-clock) must outlive the server.
  Status EnablePool(const pool::Config& config, pool::Clock& clock,
                    pool::FakeClock* test_clock = nullptr);
  // Before Start. The config file Reload re-reads; `loaded` is what it held
  // at start (settings that need a restart are compared against it).
  void SetConfigFile(const std::string& path, const pool::Config& loaded);
  // SIGHUP and ferryctl reload: re-reads the config file. A file that does
  // not parse, or that changes what needs a restart, is rejected and the old
  // config stays (the caller logs why); `summary` says what happened.
  Status Reload(std::string* summary);

  // Binds and listens on "host:port" (TCP; port 0 picks one) or
  // "unix:/path" (clients on this host, over shared memory; a stale socket
  // file at the path is replaced). Call before Start.
  Status Listen(const std::string& address);
  // The bound "host:port" of each listener, in Listen order.
  std::vector<std::string> BoundAddresses() const;

  // Starts accepting connections on a background thread.
  void Start();
  void Stop();

  std::vector<SessionInfo> Sessions() const;
  ModuleCacheStats module_cache_stats() const;

 private:
  void StartAccept(asio::ip::tcp::acceptor& acceptor);
  void StartAcceptUnix(asio::local::stream_protocol::acceptor& acceptor);
  // Registers a new connection and serves it on a thread of its own;
  // `make_transport` runs on that thread.
  void ServeOnNewThread(std::function<Status(std::unique_ptr<Transport>*)> make_transport,
                        std::string peer);
  void ServeConnection(uint64_t id, std::unique_ptr<Transport> transport, bool over_cap);
  // Answers a handshake with `refusal` (a HelloReply), for a peer that is
  // refused before it gets a session.
  static void Refuse(Transport& transport, const Status& refusal);
  // Borrows the client's devices and runs its session until it ends (the
  // caller's thread); frees it and returns its slices.
  void ServeClient(uint64_t id, std::unique_ptr<Transport> transport, wire::Hello::Reader hello);
  void ServeControl(Transport& transport);
  Status HandleControl(wire::ControlRequest::Reader request, wire::ControlReply::Builder reply);
  void FillPoolStatus(wire::PoolStatus::Builder out);
  void ConnectionFinished(uint64_t id);
  // Borrows for the client whose handshake is `hello`; sends interim
  // HelloReplys while it waits. Fills `grant` when it gets devices.
  Status BorrowFor(uint64_t id, Transport& transport, wire::Hello::Reader hello,
                   SessionGrant* grant);
  // The pool's preempt hook.
  void PreemptSession(const pool::Preemption& preemption);
  // The backend device behind served GPU `gpu_index` (0 if none serves it).
  int BackendDeviceOf(int gpu_index) const;

  backend::GpuBackend& backend_;
  std::unique_ptr<ModuleCache> module_cache_;  // null: no cache
  asio::io_context io_;
  std::vector<std::unique_ptr<asio::ip::tcp::acceptor>> acceptors_;
  std::vector<std::unique_ptr<asio::local::stream_protocol::acceptor>> unix_acceptors_;
  std::vector<std::string> unix_paths_;  // removed at Stop
  std::vector<std::string> bound_;
  std::thread io_thread_;

  mutable std::mutex mutex_;
  std::condition_variable connections_cv_;
  std::vector<ServedGpu> gpus_;        // fixed after Start
  ServerLimits limits_;                // fixed after Start
  std::unique_ptr<PoolService> pool_;  // null without pools; set before Start
  std::string config_path_ ABSL_GUARDED_BY(mutex_);
  pool::Config loaded_config_ ABSL_GUARDED_BY(mutex_);
  std::mutex reload_mutex_;  // one reload at a time

  // Shared with preemption workers, which may outlive the connection thread's
  // use of a session.
  std::map<uint64_t, std::shared_ptr<Session>> sessions_ ABSL_GUARDED_BY(mutex_);
  // Preemptions that arrived between a grant and the session's start.
  std::map<uint64_t, std::string> early_preemptions_ ABSL_GUARDED_BY(mutex_);
  // Every live connection's transport, so Stop can end them all, handshakes
  // in progress included. Owned by the connection threads.
  std::map<uint64_t, Transport*> connections_ ABSL_GUARDED_BY(mutex_);
  int live_connections_ ABSL_GUARDED_BY(mutex_) = 0;  // preemption workers too
  // Accepted connections whose thread has not finished (live_connections_
  // less the preemption workers): what max_connections bounds.
  int open_connections_ ABSL_GUARDED_BY(mutex_) = 0;
  int client_sessions_ ABSL_GUARDED_BY(mutex_) = 0;  // past the max_sessions check
  uint64_t next_id_ ABSL_GUARDED_BY(mutex_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace ferry::server
