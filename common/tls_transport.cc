#include "common/tls_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "common/busy_poll.h"
#include "common/frame.h"

namespace ferry {
namespace {

// OpenSSL's queued errors, oldest first, then cleared; `fallback` if none.
std::string OpenSslErrors(const std::string& fallback) {
  std::string text;
  while (unsigned long e = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(e, buffer, sizeof(buffer));
    text += (text.empty() ? "" : "; ") + std::string(buffer);
  }
  return text.empty() ? fallback : text;
}

// Waits until `fd` is ready for `events`, or `deadline` passes (false).
// A closed or broken socket counts as ready: the next SSL call says why.
bool WaitFor(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    int timeout_ms = -1;
    if (deadline != kNoDeadline) {
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      timeout_ms = static_cast<int>(std::min<int64_t>(left.count(), 1 << 30));
    }
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, timeout_ms);
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return true;  // let the SSL call report it
  }
}

// Without waiting: whether `fd` has bytes to read, or is closed or broken.
bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  const int n = ::poll(&p, 1, 0);
  return n > 0 || (n < 0 && errno != EINTR);  // an error too: let the SSL call report it
}

std::string Handshake(SSL* ssl, int fd, bool accept,
                      std::chrono::steady_clock::time_point deadline);
bool AttachSocket(SSL* ssl, int fd);
Status NewClientSsl(const TlsContext& context, const std::string& server_name,
                    std::string_view address, SSL** out);

class TlsTransport final : public Transport {
 public:
  // ferryd's side.
  TlsTransport(int fd, SSL* ssl, std::string peer_name)
      : fd_(fd), ssl_(ssl), peer_name_(std::move(peer_name)) {}
  // A client's: `context` and `server_name` make the SSL of a hand-over's
  // new session.
  TlsTransport(int fd, SSL* ssl, std::string peer_name, std::shared_ptr<TlsContext> context,
               std::string server_name)
      : fd_(fd),
        ssl_(ssl),
        peer_name_(std::move(peer_name)),
        client_context_(std::move(context)),
        server_name_(std::move(server_name)) {}
  ~TlsTransport() override {
    SSL_free(ssl_);
    if (fd_ >= 0) ::close(fd_);
  }

  bool Encrypted() const override { return true; }
  bool OverTcp() const override { return true; }
  bool CanHandOver() const override { return client_context_ == nullptr; }

  // ferryd's side: ends this TLS session (close_notify) and gives up the
  // socket, for a worker to start a new session with the client.
  Status Release(TransportHandover* out) override {
    if (client_context_ != nullptr || fd_ < 0) {
      return Status::Internal("only ferryd's side of a TLS connection can be handed over");
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // Records received but not yet read (decrypted or not) would be lost.
      if (SSL_has_pending(ssl_) != 0) {
        return Status::Internal("the TLS connection to " + peer_name_ +
                                " has bytes read ahead; it cannot be handed over");
      }
      // Our close_notify, whole (the socket is non-blocking); the client's
      // answer is never read here — the client sends none: its next bytes
      // are the new handshake.
      const auto deadline = std::chrono::steady_clock::now() + kHandoverCloseTimeout;
      for (;;) {
        ERR_clear_error();  // SSL_get_error reads the queue: only this call's errors
        const int rc = SSL_shutdown(ssl_);
        if (rc >= 0) break;
        const int error = SSL_get_error(ssl_, rc);
        if ((error != SSL_ERROR_WANT_WRITE && error != SSL_ERROR_WANT_READ) ||
            !WaitFor(fd_, error == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, deadline)) {
          return Status::Disconnected("cannot end the TLS session with " + peer_name_ +
                                      " for the hand-over: " + OpenSslErrors("close_notify"));
        }
      }
    }
    out->kind = TransportHandover::Kind::kTlsRestart;
    out->peer_name = peer_name_;
    out->fds = {fd_};
    fd_ = -1;
    return Status::Ok();
  }

  Status FollowHandover(std::chrono::steady_clock::time_point deadline) override {
    if (client_context_ == nullptr) return Transport::FollowHandover(deadline);
    std::lock_guard<std::mutex> lock(mutex_);
    // To the end of this session: the server's close_notify. Nothing else
    // may come before it.
    for (;;) {
      char byte;
      const int n = SSL_read(ssl_, &byte, 1);
      const int error = n > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl_, n);
      if (error == SSL_ERROR_ZERO_RETURN) break;
      if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
        if (!WaitFor(fd_, error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
          return Status::Disconnected(peer_name_ +
                                      " did not end its TLS session for the hand-over");
        }
        continue;
      }
      return Status::Disconnected(
          n > 0 ? "bytes from " + peer_name_ + " after it announced a hand-over"
                : "TLS read from " + peer_name_ +
                      " failed during the hand-over: " + OpenSslErrors("connection closed"));
    }
    // No close_notify of ours: the next bytes on the socket must be the new
    // handshake.
    SSL_set_quiet_shutdown(ssl_, 1);
    SSL_free(ssl_);
    ssl_ = nullptr;
    SSL* ssl = nullptr;
    FERRY_RETURN_IF_ERROR(NewClientSsl(*client_context_, server_name_, peer_name_, &ssl));
    const std::string failed = AttachSocket(ssl, fd_)
                                   ? Handshake(ssl, fd_, /*accept=*/false, deadline)
                                   : std::string("out of memory");
    if (!failed.empty()) {
      SSL_free(ssl);
      ssl_ = SSL_new(client_context_->get());  // keeps the destructor simple
      return Status::Disconnected("TLS with " + peer_name_ + " after the hand-over: " + failed);
    }
    ssl_ = ssl;
    return Status::Ok();
  }

  Status Write(std::span<const ConstBuffer> buffers) override {
    // Small buffers (a frame's header and message) are gathered into one
    // record; large ones (bulk) go out as they are.
    for (const ConstBuffer& buffer : buffers) {
      if (buffer.size <= kGatherBytes - gathered_.size()) {
        gathered_.append(static_cast<const char*>(buffer.data), buffer.size);
        continue;
      }
      FERRY_RETURN_IF_ERROR(WriteAll(gathered_.data(), gathered_.size()));
      gathered_.clear();
      if (buffer.size <= kGatherBytes) {
        gathered_.append(static_cast<const char*>(buffer.data), buffer.size);
      } else {
        FERRY_RETURN_IF_ERROR(WriteAll(buffer.data, buffer.size));
      }
    }
    Status status = WriteAll(gathered_.data(), gathered_.size());
    gathered_.clear();
    return status;
  }

  Status ReadExact(void* data, size_t size) override {
    return Transfer(/*reading=*/true, static_cast<char*>(data), size, read_deadline_);
  }

  void Shutdown() override { ::shutdown(fd_, SHUT_RDWR); }
  const std::string& PeerName() const override { return peer_name_; }
  std::string Description() const override { return "tls"; }

  bool PeerClosed() override { return fd_ < 0 || SocketPeerClosed(fd_); }

  bool PeerGoneOrTalking() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (SSL_pending(ssl_) > 0) return true;
    }
    pollfd p{fd_, static_cast<short>(POLLIN | POLLRDHUP), 0};
    int n;
    do {
      n = ::poll(&p, 1, 0);
    } while (n < 0 && errno == EINTR);
    return n > 0 && (p.revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
  }

  void SetReadDeadline(std::chrono::steady_clock::time_point deadline) override {
    read_deadline_ = deadline;
  }

 private:
  static constexpr size_t kGatherBytes = 16 << 10;  // one TLS record
  // How long ending the TLS session for a hand-over may wait for the socket.
  static constexpr std::chrono::seconds kHandoverCloseTimeout{5};

  Status WriteAll(const void* data, size_t size) {
    return Transfer(/*reading=*/false, static_cast<char*>(const_cast<void*>(data)), size,
                    kNoDeadline);
  }

  // Moves `size` bytes with SSL_read into `p` (reading) or SSL_write from
  // it, waiting on the socket for what OpenSSL asks (until `deadline`).
  // Each SSL call holds mutex_; the waits do not.
  Status Transfer(bool reading, char* p, size_t size,
                  std::chrono::steady_clock::time_point deadline) {
    while (size > 0) {
      const int chunk = static_cast<int>(std::min<size_t>(size, 1 << 30));
      int n = 0, error = 0;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        n = reading ? SSL_read(ssl_, p, chunk) : SSL_write(ssl_, p, chunk);
        error = n > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl_, n);
      }
      if (n > 0) {
        p += n;
        size -= static_cast<size_t>(n);
        continue;
      }
      if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
        // A reader busy-polls the socket (common/busy_poll.h) before it
        // sleeps in poll(); readable or closed, SSL_read says which.
        if (reading && error == SSL_ERROR_WANT_READ &&
            read_poller_.Spin([this] { return Readable(fd_); }, deadline)) {
          continue;
        }
        if (!WaitFor(fd_, error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
          return Status::Disconnected(reading ? "no data from " + peer_name_ +
                                                    " before the read deadline"
                                              : "cannot write to " + peer_name_);
        }
        continue;
      }
      if (reading && error == SSL_ERROR_ZERO_RETURN) {
        return Status::Disconnected("connection closed by " + peer_name_);
      }
      return Status::Disconnected(
          std::string(reading ? "TLS read from " : "TLS write to ") + peer_name_ +
          " failed: " + OpenSslErrors(errno != 0 ? std::strerror(errno) : "connection closed"));
    }
    return Status::Ok();
  }

  int fd_;    // -1 once released
  SSL* ssl_;  // every use holds mutex_; replaced by a hand-over (client)
  const std::string peer_name_;
  const std::shared_ptr<TlsContext> client_context_;  // null on ferryd's side
  const std::string server_name_;                     // client: the name the certificate must carry
  std::mutex mutex_;
  std::string gathered_;                                               // writer thread
  std::chrono::steady_clock::time_point read_deadline_ = kNoDeadline;  // reader thread
  BusyPoller read_poller_;                                             // reader thread
};

// Runs SSL_accept or SSL_connect on non-blocking `fd` until done or
// `deadline`; "" on success, else why not.
std::string Handshake(SSL* ssl, int fd, bool accept,
                      std::chrono::steady_clock::time_point deadline) {
  ERR_clear_error();
  for (;;) {
    const int rc = accept ? SSL_accept(ssl) : SSL_connect(ssl);
    if (rc == 1) return "";
    const int error = SSL_get_error(ssl, rc);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
      if (!WaitFor(fd, error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
        return "no TLS handshake before the deadline";
      }
      continue;
    }
    if (!accept && SSL_get_verify_result(ssl) != X509_V_OK) {
      ERR_clear_error();
      return std::string("the server's certificate does not verify: ") +
             X509_verify_cert_error_string(SSL_get_verify_result(ssl));
    }
    return OpenSslErrors(error == SSL_ERROR_SYSCALL
                             ? "the peer closed the connection during the TLS handshake"
                             : "TLS handshake failed");
  }
}

void SetNonBlocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

// OpenSSL's socket BIO writes with write(2), which raises SIGPIPE on a
// connection the peer closed: that would kill the program using ferry's
// libcuda.so.1. This BIO sends with MSG_NOSIGNAL instead; the socket is its
// data, owned by the TlsTransport (or the handshake's caller), never closed here.
int BioFd(BIO* bio) { return static_cast<int>(reinterpret_cast<intptr_t>(BIO_get_data(bio))); }

int BioRetry(BIO* bio, ssize_t n, bool reading) {
  BIO_clear_retry_flags(bio);
  if (n >= 0) return static_cast<int>(n);
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
    reading ? BIO_set_retry_read(bio) : BIO_set_retry_write(bio);
  }
  return -1;
}

int BioWrite(BIO* bio, const char* data, int size) {
  return BioRetry(bio, ::send(BioFd(bio), data, static_cast<size_t>(size), MSG_NOSIGNAL), false);
}

int BioRead(BIO* bio, char* data, int size) {
  return BioRetry(bio, ::recv(BioFd(bio), data, static_cast<size_t>(size), 0), true);
}

long BioControl(BIO*, int command, long, void*) { return command == BIO_CTRL_FLUSH ? 1 : 0; }

BIO* NewSocketBio(int fd) {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ferry socket");
    BIO_meth_set_write(m, BioWrite);
    BIO_meth_set_read(m, BioRead);
    BIO_meth_set_ctrl(m, BioControl);
    return m;
  }();
  BIO* bio = BIO_new(method);
  if (bio == nullptr) return nullptr;
  BIO_set_data(bio, reinterpret_cast<void*>(static_cast<intptr_t>(fd)));
  BIO_set_init(bio, 1);
  return bio;
}

// Gives `ssl` a BIO on `fd`; false if OpenSSL has no memory.
bool AttachSocket(SSL* ssl, int fd) {
  BIO* bio = NewSocketBio(fd);
  if (bio == nullptr) return false;
  SSL_set_bio(ssl, bio, bio);
  return true;
}

Status NewClientSsl(const TlsContext& context, const std::string& server_name,
                    std::string_view address, SSL** out) {
  SSL* ssl = SSL_new(context.get());
  if (ssl == nullptr) return Status::Internal(OpenSslErrors("SSL_new failed"));
  // The certificate must name the server: an IP address against its IP
  // entries, else a DNS name (also sent as SNI). OpenSSL checks no name at
  // all when none is set, so a failed call refuses the connection.
  in6_addr ip{};
  const bool is_ip = ::inet_pton(AF_INET, server_name.c_str(), &ip) == 1 ||
                     ::inet_pton(AF_INET6, server_name.c_str(), &ip) == 1;
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  bool name_set = false;
  if (is_ip) {
    name_set = X509_VERIFY_PARAM_set1_ip_asc(param, server_name.c_str()) == 1;
  } else {
    // "*.example.org" matches one whole label; "gpu*.example.org" nothing.
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    name_set = X509_VERIFY_PARAM_set1_host(param, server_name.c_str(), 0) == 1 &&
               SSL_set_tlsext_host_name(ssl, server_name.c_str()) == 1;
  }
  if (!name_set) {
    SSL_free(ssl);
    return Status::PermissionDenied("TLS with " + std::string(address) +
                                    ": cannot check ferryd's certificate for the name '" +
                                    server_name + "': " + OpenSslErrors("OpenSSL refused it"));
  }
  *out = ssl;
  return Status::Ok();
}

}  // namespace

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

Status TlsContext::ForServer(const std::string& cert_file, const std::string& key_file,
                             std::shared_ptr<TlsContext>* out) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return Status::Internal(OpenSslErrors("SSL_CTX_new failed"));
  std::shared_ptr<TlsContext> context(new TlsContext(ctx));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // Sessions are long; resumption tickets would only cost a write.
  SSL_CTX_set_num_tickets(ctx, 0);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1) {
    return Status::InvalidArgument("--tls-cert " + cert_file + ": " +
                                   OpenSslErrors("cannot load the certificate"));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return Status::InvalidArgument("--tls-key " + key_file + ": " +
                                   OpenSslErrors("cannot load the key"));
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return Status::InvalidArgument("--tls-key " + key_file + " does not match --tls-cert " +
                                   cert_file);
  }
  *out = std::move(context);
  return Status::Ok();
}

Status TlsContext::ForClient(const std::string& ca_file, std::shared_ptr<TlsContext>* out) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) return Status::Internal(OpenSslErrors("SSL_CTX_new failed"));
  std::shared_ptr<TlsContext> context(new TlsContext(ctx));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1) {
    return Status::InvalidArgument("FERRY_TLS_CA " + ca_file + ": " +
                                   OpenSslErrors("cannot load the CA file"));
  }
  *out = std::move(context);
  return Status::Ok();
}

Status AcceptTls(int fd, std::string peer_name, const TlsContext& context,
                 std::chrono::steady_clock::time_point deadline, std::unique_ptr<Transport>* out,
                 bool* plain_peer) {
  *plain_peer = false;
  // A plain ferry client starts with a frame's magic; a TLS one with a
  // handshake record. Looking first lets ferryd tell the plain one why.
  uint32_t magic = 0;
  ssize_t peeked = 0;
  for (;;) {
    if (!WaitFor(fd, POLLIN, deadline)) break;
    peeked = ::recv(fd, &magic, sizeof(magic), MSG_PEEK | MSG_DONTWAIT);
    if (peeked == sizeof(magic) || peeked == 0 ||
        (peeked < 0 && errno != EAGAIN && errno != EINTR)) {
      break;
    }
    // Fewer than 4 bytes so far: only a frame's first byte is worth waiting
    // for (briefly: the rest of a header comes in the same segment).
    if (peeked > 0 && reinterpret_cast<const uint8_t*>(&magic)[0] != (wire::FRAME_MAGIC & 0xff)) {
      break;
    }
    if (peeked > 0) ::usleep(1000);
  }
  if (peeked == sizeof(magic) && magic == wire::FRAME_MAGIC) {
    *plain_peer = true;
    *out = std::make_unique<SocketTransport>(fd, std::move(peer_name));
    return Status::Ok();
  }
  SSL* ssl = SSL_new(context.get());
  if (ssl == nullptr) {
    ::close(fd);
    return Status::Internal(OpenSslErrors("SSL_new failed"));
  }
  SetNonBlocking(fd);
  const std::string failed = AttachSocket(ssl, fd) ? Handshake(ssl, fd, /*accept=*/true, deadline)
                                                   : std::string("out of memory");
  if (!failed.empty()) {
    SSL_free(ssl);
    ::close(fd);
    return Status::Disconnected("TLS handshake with " + peer_name + " failed: " + failed);
  }
  *out = std::make_unique<TlsTransport>(fd, ssl, std::move(peer_name));
  return Status::Ok();
}

std::optional<TlsClientConfig> TlsClientConfigFromEnvironment(std::string_view address) {
  const char* ca = std::getenv("FERRY_TLS_CA");
  // Shared memory stays on the host; RDMA carries the stream unencrypted.
  if (ca == nullptr || *ca == '\0' || address.substr(0, 5) == "unix:" ||
      address.starts_with(kRdmaScheme)) {
    return std::nullopt;
  }
  TlsClientConfig config;
  config.ca_file = ca;
  if (const char* name = std::getenv("FERRY_TLS_SERVER_NAME"); name != nullptr && *name != '\0') {
    config.server_name = name;
  } else {
    std::string host;
    uint16_t port = 0;
    if (ParseHostPort(address, &host, &port).ok()) config.server_name = host;
  }
  return config;
}

Status ConnectTransportWithTls(std::string_view address, std::chrono::milliseconds timeout,
                               const std::optional<TlsClientConfig>& tls,
                               std::unique_ptr<Transport>* out) {
  if (!tls.has_value() || address.substr(0, 5) == "unix:") {
    return ConnectTransport(address, timeout, out);
  }
  if (tls->server_name.empty()) {
    return Status::PermissionDenied("TLS with " + std::string(address) +
                                    ": no name to check ferryd's certificate against (set "
                                    "FERRY_TLS_SERVER_NAME)");
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::shared_ptr<TlsContext> context;
  FERRY_RETURN_IF_ERROR(TlsContext::ForClient(tls->ca_file, &context));
  int fd = -1;
  FERRY_RETURN_IF_ERROR(ConnectTcpSocket(address, timeout, &fd));
  SSL* ssl = nullptr;
  if (Status made = NewClientSsl(*context, tls->server_name, address, &ssl); !made.ok()) {
    ::close(fd);
    return made;
  }
  SetNonBlocking(fd);
  const std::string failed = AttachSocket(ssl, fd) ? Handshake(ssl, fd, /*accept=*/false, deadline)
                                                   : std::string("out of memory");
  if (!failed.empty()) {
    const bool untrusted = SSL_get_verify_result(ssl) != X509_V_OK;
    SSL_free(ssl);
    ::close(fd);
    const std::string message = "TLS with " + std::string(address) + " (FERRY_TLS_CA " +
                                tls->ca_file + ", name " + tls->server_name + "): " + failed;
    return untrusted ? Status::PermissionDenied(message) : Status::Disconnected(message);
  }
  *out = std::make_unique<TlsTransport>(fd, ssl, std::string(address), std::move(context),
                                        tls->server_name);
  return Status::Ok();
}

}  // namespace ferry
