#include "common/transport.h"

#include "common/shm_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

namespace ferry {
namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

}  // namespace

TransportHandover::TransportHandover(TransportHandover&& other) noexcept
    : kind(other.kind),
      peer_name(std::move(other.peer_name)),
      fds(std::move(other.fds)),
      read_position(other.read_position),
      write_position(other.write_position) {
  other.fds.clear();
}

TransportHandover& TransportHandover::operator=(TransportHandover&& other) noexcept {
  if (this != &other) {
    CloseFds();
    kind = other.kind;
    peer_name = std::move(other.peer_name);
    fds = std::move(other.fds);
    other.fds.clear();
    read_position = other.read_position;
    write_position = other.write_position;
  }
  return *this;
}

TransportHandover::~TransportHandover() { CloseFds(); }

void TransportHandover::CloseFds() {
  for (int fd : fds) {
    if (fd >= 0) ::close(fd);
  }
  fds.clear();
}

Status AdoptTransport(TransportHandover handover, std::unique_ptr<Transport>* out) {
  switch (handover.kind) {
    case TransportHandover::Kind::kSocket:
      if (handover.fds.size() != 1) break;
      out->reset(new SocketTransport(handover.fds[0], std::move(handover.peer_name)));
      handover.fds.clear();
      return Status::Ok();
    case TransportHandover::Kind::kShm:
      return ShmTransport::Adopt(std::move(handover), out);
    case TransportHandover::Kind::kTlsRestart:
      // A new TLS session needs ferryd's certificate: the session worker
      // runs it (AcceptTls), not this function.
      return Status::InvalidArgument(
          "a TLS hand-over is adopted by a new TLS handshake, not by AdoptTransport");
  }
  return Status::InvalidArgument("a transport handover with " +
                                 std::to_string(handover.fds.size()) +
                                 " descriptor(s) does not describe a connection");
}

SocketTransport::SocketTransport(int fd, std::string peer_name)
    : fd_(fd), peer_name_(std::move(peer_name)) {}

SocketTransport::~SocketTransport() {
  if (fd_ >= 0) ::close(fd_);
}

Status SocketTransport::Write(std::span<const ConstBuffer> buffers) {
  // writev in rounds of at most IOV_MAX buffers, resuming after short writes.
  constexpr size_t kMaxIov = 64;
  size_t index = 0;
  size_t offset = 0;  // into buffers[index]
  while (index < buffers.size()) {
    iovec iov[kMaxIov];
    int count = 0;
    for (size_t i = index; i < buffers.size() && count < static_cast<int>(kMaxIov); ++i) {
      const size_t skip = (i == index) ? offset : 0;
      if (buffers[i].size == skip) continue;
      iov[count].iov_base = const_cast<char*>(static_cast<const char*>(buffers[i].data) + skip);
      iov[count].iov_len = buffers[i].size - skip;
      ++count;
    }
    if (count == 0) break;
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = count;
    ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::Disconnected("write to " + peer_name_ + " failed: " + ErrnoText(errno));
    }
    size_t left = static_cast<size_t>(n);
    while (index < buffers.size() && left > 0) {
      const size_t available = buffers[index].size - offset;
      if (left >= available) {
        left -= available;
        ++index;
        offset = 0;
      } else {
        offset += left;
        left = 0;
      }
    }
    while (index < buffers.size() && buffers[index].size == offset) {
      ++index;
      offset = 0;
    }
  }
  return Status::Ok();
}

Status SocketTransport::ReadExact(void* data, size_t size) {
  auto* p = static_cast<char*>(data);
  // Bytes an earlier read took from the socket first.
  const size_t buffered = std::min(size, read_end_ - read_begin_);
  if (buffered > 0) {
    std::memcpy(p, read_buffer_.get() + read_begin_, buffered);
    read_begin_ += buffered;
    p += buffered;
    size -= buffered;
  }
  while (size > 0) {
    // A large read goes straight into its destination; a small one reads
    // whatever the socket has into the buffer, so that a frame's header,
    // message and small payload usually cost one system call together.
    const bool direct = size >= kReadBufferBytes / 2;
    if (!direct && read_buffer_ == nullptr) read_buffer_.reset(new char[kReadBufferBytes]);
    char* const into = direct ? p : read_buffer_.get();
    const size_t room = direct ? size : kReadBufferBytes;
    // Busy polling (common/busy_poll.h): non-blocking receives until bytes
    // come, the connection ends or the window passes; only then block. A
    // shut-down socket ends the spin at once (recv returns 0).
    ssize_t n = -1;
    int err = 0;
    const bool spun = read_poller_.Spin(
        [&] {
          n = ::recv(fd_, into, room, MSG_DONTWAIT);
          err = n < 0 ? errno : 0;
          return n >= 0 || (err != EAGAIN && err != EWOULDBLOCK && err != EINTR);
        },
        read_deadline_);
    if (!spun) {
      FERRY_RETURN_IF_ERROR(WaitReadable());
      n = ::recv(fd_, into, room, 0);
      err = n < 0 ? errno : 0;
    }
    if (n == 0) return Status::Disconnected("connection closed by " + peer_name_);
    if (n < 0) {
      if (err == EINTR) continue;
      return Status::Disconnected("read from " + peer_name_ + " failed: " + ErrnoText(err));
    }
    if (direct) {
      p += n;
      size -= static_cast<size_t>(n);
      continue;
    }
    const size_t take = std::min(size, static_cast<size_t>(n));
    std::memcpy(p, read_buffer_.get(), take);
    p += take;
    size -= take;
    read_begin_ = take;
    read_end_ = static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status SocketTransport::WaitReadable() {
  if (read_deadline_ == kNoDeadline) return Status::Ok();  // recv blocks
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(
        read_deadline_ - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Status::Disconnected("no data from " + peer_name_ + " before the read deadline");
    }
    pollfd p{fd_, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1 << 30)));
    if (n > 0) return Status::Ok();  // readable, closed or broken: recv says which
    if (n < 0 && errno != EINTR) {
      return Status::Disconnected("poll on " + peer_name_ + " failed: " + ErrnoText(errno));
    }
  }
}

void SocketTransport::Shutdown() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

Status SocketTransport::Release(TransportHandover* out) {
  if (read_begin_ != read_end_) {
    return Status::Internal("the connection to " + peer_name_ + " has " +
                            std::to_string(read_end_ - read_begin_) +
                            " byte(s) read ahead; it cannot be handed over");
  }
  out->kind = TransportHandover::Kind::kSocket;
  out->peer_name = peer_name_;
  out->fds = {fd_};
  fd_ = -1;
  return Status::Ok();
}

bool SocketTransport::LocalSocketAddress(sockaddr_storage* out) const {
  socklen_t length = sizeof(*out);
  return fd_ >= 0 && getsockname(fd_, reinterpret_cast<sockaddr*>(out), &length) == 0;
}

bool SocketTransport::OverTcp() const {
  sockaddr_storage local{};
  return LocalSocketAddress(&local) && (local.ss_family == AF_INET || local.ss_family == AF_INET6);
}

bool SocketTransport::PeerGoneOrTalking() {
  pollfd p{};
  p.fd = fd_;
  p.events = POLLIN | POLLRDHUP;
  int n;
  do {
    n = ::poll(&p, 1, 0);
  } while (n < 0 && errno == EINTR);
  return n > 0 && (p.revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

bool SocketPeerClosed(int fd) {
  pollfd p{};
  p.fd = fd;
  p.events = POLLRDHUP;
  int n;
  do {
    n = ::poll(&p, 1, 0);
  } while (n < 0 && errno == EINTR);
  return n > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

bool SocketTransport::PeerClosed() { return fd_ < 0 || SocketPeerClosed(fd_); }

Status ParseHostPort(std::string_view address, std::string* host, uint16_t* port) {
  std::string_view h, p;
  if (!address.empty() && address.front() == '[') {
    size_t close = address.find(']');
    if (close == std::string_view::npos || close + 1 >= address.size() ||
        address[close + 1] != ':') {
      return Status::InvalidArgument("bad address '" + std::string(address) +
                                     "': expected [v6-host]:port");
    }
    h = address.substr(1, close - 1);
    p = address.substr(close + 2);
  } else {
    size_t colon = address.rfind(':');
    if (colon == std::string_view::npos) {
      return Status::InvalidArgument("bad address '" + std::string(address) +
                                     "': expected host:port");
    }
    h = address.substr(0, colon);
    p = address.substr(colon + 1);
  }
  if (h.empty() || p.empty() || p.size() > 5) {
    return Status::InvalidArgument("bad address '" + std::string(address) +
                                   "': expected host:port");
  }
  unsigned value = 0;
  for (char c : p) {
    if (c < '0' || c > '9') {
      return Status::InvalidArgument("bad port in '" + std::string(address) + "'");
    }
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value > 65535) return Status::InvalidArgument("bad port in '" + std::string(address) + "'");
  *host = std::string(h);
  *port = static_cast<uint16_t>(value);
  return Status::Ok();
}

bool IsLoopbackAddress(std::string_view address) {
  std::string host;
  uint16_t port = 0;
  if (!ParseHostPort(address, &host, &port).ok()) return false;
  if (host == "localhost") return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, host.c_str(), &v6) != 1) return false;
  if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
  return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
}

void TuneTcpSocket(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  int buffer = 4 << 20;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof(buffer));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof(buffer));
  // Best effort: a socket that is not TCP (tests' socketpairs) refuses these.
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  int idle = static_cast<int>(kTcpKeepaliveIdle.count());
  int interval = static_cast<int>(kTcpKeepaliveInterval.count());
  int probes = kTcpKeepaliveProbes;
  unsigned user_timeout_ms =
      static_cast<unsigned>(std::chrono::milliseconds(kTcpUserTimeout).count());
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
  ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof(user_timeout_ms));
}

Status ConnectTcp(std::string_view address, std::chrono::milliseconds timeout,
                  std::unique_ptr<Transport>* out) {
  int fd = -1;
  FERRY_RETURN_IF_ERROR(ConnectTcpSocket(address, timeout, &fd));
  *out = std::make_unique<SocketTransport>(fd, std::string(address));
  return Status::Ok();
}

Status ConnectTcpSocket(std::string_view address, std::chrono::milliseconds timeout, int* out) {
  std::string host;
  uint16_t port = 0;
  FERRY_RETURN_IF_ERROR(ParseHostPort(address, &host, &port));
  const std::string name(address);

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* results = nullptr;
  int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &results);
  if (rc != 0) {
    return Status::Disconnected("cannot resolve server " + name + ": " + gai_strerror(rc));
  }
  std::string last_error = "no address";
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (addrinfo* ai = results; ai != nullptr; ai = ai->ai_next) {
    int fd =
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) {
      last_error = ErrnoText(errno);
      continue;
    }
    rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd pfd{fd, POLLOUT, 0};
      int ready = left.count() > 0 ? ::poll(&pfd, 1, static_cast<int>(left.count())) : 0;
      if (ready <= 0) {
        last_error = "timed out after " + std::to_string(timeout.count()) + " ms";
        ::close(fd);
        continue;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      rc = err == 0 ? 0 : -1;
      errno = err;
    }
    if (rc != 0) {
      last_error = ErrnoText(errno);
      ::close(fd);
      continue;
    }
    // Back to blocking mode: reader and writer threads block on the socket.
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    TuneTcpSocket(fd);
    ::freeaddrinfo(results);
    *out = fd;
    return Status::Ok();
  }
  ::freeaddrinfo(results);
  return Status::Disconnected("cannot connect to server " + name + ": " + last_error);
}

Status ConnectTransport(std::string_view address, std::chrono::milliseconds timeout,
                        std::unique_ptr<Transport>* out) {
  constexpr std::string_view kUnix = "unix:";
  if (address.substr(0, kUnix.size()) == kUnix) {
    return ConnectShm(address.substr(kUnix.size()), timeout, out);
  }
  // RDMA is set up beside a TCP connection, in the handshake.
  if (address.substr(0, kRdmaScheme.size()) == kRdmaScheme) {
    return ConnectTcp(address.substr(kRdmaScheme.size()), timeout, out);
  }
  return ConnectTcp(address, timeout, out);
}

Status MakeTransportPair(std::unique_ptr<Transport>* a, std::unique_ptr<Transport>* b) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return Status::Internal("socketpair failed: " + ErrnoText(errno));
  }
  *a = std::make_unique<SocketTransport>(fds[0], "pair:a");
  *b = std::make_unique<SocketTransport>(fds[1], "pair:b");
  return Status::Ok();
}

}  // namespace ferry
