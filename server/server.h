// Server: ferryd's listeners and its table of live sessions.
//
// Each accepted connection gets a thread that reads the Hello frame and then
// either runs a client Session (role client) or answers ferryctl's requests
// (role control). Stop closes the listeners, ends every session (each frees
// its resources) and joins all threads.
//
// Thread-safety: every public method is safe from any thread.
#pragma once

#include <asio.hpp>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backend/api/gpu_backend.h"
#include "common/status.h"
#include "server/session.h"

namespace ferry::server {

class Server {
 public:
  // `backend` must outlive the server. Sessions share a module image cache of
  // `module_cache_bytes` (0: none).
  explicit Server(backend::GpuBackend& backend, uint64_t module_cache_bytes = kDefaultModuleCacheBytes);
  static constexpr uint64_t kDefaultModuleCacheBytes = 1ull << 30;
  ~Server();  // Stop()s

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
  void ServeConnection(uint64_t id, std::unique_ptr<Transport> transport);
  void ServeControl(Transport& transport);
  void ConnectionFinished(uint64_t id);

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
  std::map<uint64_t, Session*> sessions_;  // guarded by mutex_; owned by their threads
  // Every live connection's transport, so Stop can end them all, handshakes
  // in progress included. Guarded by mutex_; owned by the connection threads.
  std::map<uint64_t, Transport*> connections_;
  int live_connections_ = 0;                // guarded by mutex_
  uint64_t next_id_ = 1;                    // guarded by mutex_
  bool stopping_ = false;                   // guarded by mutex_
};

}  // namespace ferry::server
