// TLS for TCP connections: the frame codec runs unchanged over a TLS stream.
//
// TlsTransport is a Transport whose bytes travel inside a TLS session
// (OpenSSL, TLS 1.2 or later) over a connected TCP socket. ferryd accepts
// with a certificate and key (TlsServerContext); the client and ferryctl
// verify the server's chain against a CA file and the certificate's name
// against the host they connect to (or FERRY_TLS_SERVER_NAME). Shared-memory
// sessions never use TLS: they stay on one host and are set up over a unix
// socket (common/shm_transport.h).
//
// Thread-safety: as Transport (one reader and one writer at once; Shutdown
// from any thread). OpenSSL's SSL object is not safe for concurrent use, so
// every SSL call holds one mutex; the socket is non-blocking and each side
// waits for it in poll() without the mutex, so a reader waiting for bytes
// never blocks a writer. A reader busy-polls the socket for the busy-poll
// window (common/busy_poll.h), also without the mutex, before it sleeps.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"
#include "common/transport.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace ferry {

// An SSL_CTX, shared by every connection made with it. Immutable once made.
class TlsContext {
 public:
  // ferryd's: serves `cert_file` (PEM chain) with `key_file` (PEM key).
  static Status ForServer(const std::string& cert_file, const std::string& key_file,
                          std::shared_ptr<TlsContext>* out);
  // A client's: trusts the CAs of `ca_file` (PEM) and nothing else.
  static Status ForClient(const std::string& ca_file, std::shared_ptr<TlsContext>* out);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;
  SSL_CTX* get() const { return ctx_; }

 private:
  explicit TlsContext(SSL_CTX* ctx) : ctx_(ctx) {}
  SSL_CTX* ctx_;
};

// ferryd's side of a new TCP connection `fd` (owned from now on): the TLS
// handshake, done by `deadline`. A peer that starts with a plain ferry frame
// instead (a client without FERRY_TLS_CA) gets `*plain_peer` = true and a
// plain SocketTransport in `*out`, so that ferryd can answer it with a
// refusal it understands.
Status AcceptTls(int fd, std::string peer_name, const TlsContext& context,
                 std::chrono::steady_clock::time_point deadline, std::unique_ptr<Transport>* out,
                 bool* plain_peer);

// What a client needs to talk TLS to ferryd.
struct TlsClientConfig {
  std::string ca_file;      // PEM: the CAs that may sign ferryd's certificate
  std::string server_name;  // the name (or IP address) the certificate must carry
};

// FERRY_TLS_CA (TLS on when set) and FERRY_TLS_SERVER_NAME (default: the
// host of `address`). nullopt: plain TCP. unix: addresses never use TLS.
std::optional<TlsClientConfig> TlsClientConfigFromEnvironment(std::string_view address);

// As ConnectTransport (common/transport.h); with `tls`, a TCP connection
// runs inside TLS, verified as `tls` says. A certificate that does not verify
// is PermissionDenied naming why; other failures are Disconnected.
Status ConnectTransportWithTls(std::string_view address, std::chrono::milliseconds timeout,
                               const std::optional<TlsClientConfig>& tls,
                               std::unique_ptr<Transport>* out);

}  // namespace ferry
