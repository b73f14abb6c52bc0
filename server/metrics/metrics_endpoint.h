// MetricsEndpoint: the HTTP listener behind ferryd's `/metrics` (ferryd
// --metrics-listen). A deliberately small HTTP/1.1 server for one document,
// bounded in every way a peer could push it:
//
//  * connections: at most Options::max_connections at once; the next one
//    gets `503` and is closed at once by the accepting thread;
//  * time: the TLS handshake and the whole request head must arrive within
//    Options::request_timeout of the accept, and the whole exchange, answer
//    included, within Options::connection_timeout (past it the connection is
//    shut down, whatever it is doing);
//  * size: a request head of at most Options::max_request_bytes (`431`
//    past it); a request with a body is refused (`413`).
//
// One request per connection (answers say `Connection: close`). `GET` and
// `HEAD` of `/metrics` (any query string) are answered with Options::render's
// text; anything else gets a 4xx and a one-line reason: `400` for a request
// that is not HTTP/1.x, `401` without an accepted `Authorization: Bearer
// TOKEN` when Options::authorize is set, `404` for another path, `405` for
// another method, `505` for another HTTP version. A bad request affects only
// its own connection.
//
// With Options::tls every connection runs inside TLS (common/tls_transport.h),
// with ferryd's certificate.
//
// Thread-safety: Start and Stop from one thread; bound_address from any.
// Each connection is served on a thread of its own; `render` and
// `authorize` are called from those threads, concurrently.
#pragma once

#include <absl/base/thread_annotations.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "common/status.h"
#include "common/tls_transport.h"

namespace ferry::metrics {

class MetricsEndpoint {
 public:
  struct Options {
    std::string address;              // "HOST:PORT" ("[::1]:PORT"); port 0 picks one
    std::shared_ptr<TlsContext> tls;  // null: plain HTTP
    // Whether a request with `Authorization: Bearer TOKEN` may read; null:
    // every request may (no authentication). `token` is what followed
    // "Bearer ", or "" when the request had no such header.
    std::function<bool(std::string_view token)> authorize;
    // The body of a 200 answer (Prometheus text, kTextContentType).
    std::function<std::string()> render;
    int max_connections = 8;
    std::chrono::milliseconds request_timeout{5000};
    std::chrono::milliseconds connection_timeout{30000};
    size_t max_request_bytes = 8192;
  };

  // Binds and listens on `options.address`, then serves on a thread of its
  // own. InvalidArgument naming the address when it cannot listen there.
  static Status Start(Options options, std::unique_ptr<MetricsEndpoint>* out);
  ~MetricsEndpoint();  // Stop()s
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  // "127.0.0.1:9400" (the port bound when 0 was asked for), "[::1]:9400".
  const std::string& bound_address() const { return bound_; }

  // Stops accepting, shuts down every open connection and waits for their
  // threads. Idempotent.
  void Stop();

 private:
  MetricsEndpoint(Options options, int listen_fd, int stop_fd, std::string bound);
  void AcceptLoop();
  // Registers accepted socket `fd` and serves it on a new thread, or
  // answers 503 and closes it when max_connections are open.
  void Admit(int fd, std::string peer);
  void Serve(uint64_t id, int fd, const std::string& peer);
  // The answer to request head `head` (complete, ending with an empty
  // line): status line, headers and body.
  std::string Answer(std::string_view head, const std::string& peer);
  // Shuts down the connections past their deadline; the time until the next
  // deadline (-1: none), for poll.
  int ShutDownOverdueLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const Options options_;
  const int listen_fd_;
  const int stop_fd_;  // an eventfd: written by Stop
  const std::string bound_;
  std::thread accept_thread_;

  struct Connection {
    std::chrono::steady_clock::time_point deadline;
    // A duplicate of the connection's socket, owned here: shutting it down
    // ends the connection's reads and writes, and its number is never
    // reused while it is in the map (the serving thread closes its own).
    int watch_fd = -1;
  };
  std::mutex mutex_;
  std::condition_variable finished_;
  std::map<uint64_t, Connection> connections_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_id_ ABSL_GUARDED_BY(mutex_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace ferry::metrics
