// Transport: a reliable, ordered byte stream between a client and ferryd.
//
// Implementations: TCP (SocketTransport over a connected socket; AF_UNIX
// socketpairs give an in-process pair for tests) and shared memory for
// clients on the server's host (ShmTransport, common/shm_transport.h). RDMA
// comes later behind the same interface.
//
// Waiting: a read that finds nothing to read spins for the process-wide
// busy-poll window before its thread sleeps (common/busy_poll.h: ferryd
// --busy-poll, FERRY_BUSY_POLL), in every implementation, so that a reply or
// call that comes within the window costs no wake-up.
//
// Thread-safety: one reader and one writer may use a Transport at once (the
// caller serialises writers among themselves and readers among themselves).
// Shutdown may be called from any thread at any time; it makes blocked and
// later reads and writes fail with Disconnected.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/busy_poll.h"
#include "common/status.h"

namespace ferry {

struct ConstBuffer {
  const void* data;
  size_t size;
};

// A server-side connection given up by one process for another to continue
// (ferryd hands each client's connection to its session worker,
// server/session_worker.h): the descriptors that carry it and where its
// byte streams stand. Move-only; it closes the descriptors it still owns.
struct TransportHandover {
  // kTlsRestart: a TCP socket whose TLS session the sender ended (its
  // close_notify sent); the adopter runs a new TLS handshake with the client
  // (HelloReply.handoverSecret) — AdoptTransport cannot, it has no
  // certificate.
  enum class Kind : uint8_t { kSocket = 1, kShm = 2, kTlsRestart = 3 };
  Kind kind = Kind::kSocket;
  std::string peer_name;
  // kSocket, kTlsRestart: the connected socket. kShm: the unix socket, then
  // the region's memfd.
  std::vector<int> fds;
  // kShm only: bytes this side has consumed from the client's ring and
  // written into its own (the rings' positions are private to each side).
  uint64_t read_position = 0;
  uint64_t write_position = 0;

  TransportHandover() = default;
  TransportHandover(TransportHandover&& other) noexcept;
  TransportHandover& operator=(TransportHandover&& other) noexcept;
  TransportHandover(const TransportHandover&) = delete;
  TransportHandover& operator=(const TransportHandover&) = delete;
  ~TransportHandover();
  // Closes every descriptor still held (after they were sent elsewhere).
  void CloseFds();
};

class Transport {
 public:
  virtual ~Transport() = default;
  // Writes every byte of every buffer, in order.
  virtual Status Write(std::span<const ConstBuffer> buffers) = 0;
  // Reads exactly `size` bytes into `data`.
  virtual Status ReadExact(void* data, size_t size) = 0;
  virtual void Shutdown() = 0;
  // "127.0.0.1:40112" — for logs and ferryctl.
  virtual const std::string& PeerName() const = 0;
  // Without blocking: true when the peer has closed (or broken) the
  // connection, or has sent bytes that nobody reads yet. For a server that
  // waits on a peer that must stay silent meanwhile (a client queued for a
  // GPU), either means the peer is gone. A transport that cannot tell says
  // false.
  virtual bool PeerGoneOrTalking() { return false; }
  // Without blocking: true when the peer has closed (or broken) the
  // connection; bytes it sent that nobody read yet do not count. For a
  // server that waits on behalf of a peer that may keep talking meanwhile
  // (a session's call queued for its slice). A transport that cannot tell
  // says false.
  virtual bool PeerClosed() { return false; }
  // From now on a read that is still waiting for bytes when `deadline`
  // passes fails with Disconnected (a peer that stays silent: a handshake
  // that never comes, a server that stopped); time_point::max() (the
  // initial setting) waits forever. Reader thread only. A transport that
  // cannot bound its reads ignores it.
  virtual void SetReadDeadline(std::chrono::steady_clock::time_point deadline) { (void)deadline; }
  // What carries the bytes, for logs and ferryctl status: "tcp", "tls",
  // "shm, ring 8 MiB", "rdma mlx5_0 port 1 gid 3, ring 8 MiB".
  // A transport that does not say (tests' own) is "other".
  virtual std::string Description() const { return "other"; }
  // Host memory the program page-locked (cuMemHostAlloc, cuMemHostRegister)
  // and will likely pass again: a transport that can send straight from
  // registered memory (RDMA) registers it on first use; the others ignore
  // it. Unregister before the memory goes. Any thread.
  virtual void RegisterHostMemory(const void* address, size_t size) {
    (void)address;
    (void)size;
  }
  virtual void UnregisterHostMemory(const void* address) { (void)address; }
  // This side's address of a TCP connection (to choose the RDMA GID that
  // carries it); false for other transports.
  virtual bool LocalSocketAddress(sockaddr_storage* out) const {
    (void)out;
    return false;
  }
  // Whether the bytes travel over a TCP connection, plain or inside TLS
  // (not a unix socket, shared memory or RDMA): what a client on ferryd's
  // own host may move to shared memory in the handshake
  // (common/shm_rendezvous.h).
  virtual bool OverTcp() const { return false; }
  // Whether Release can work for this kind of transport (ferryd's side of
  // TCP, TLS and shared memory).
  virtual bool CanHandOver() const { return false; }
  // Whether the bytes travel inside TLS (a hand-over then needs a new TLS
  // session: TransportHandover::Kind::kTlsRestart).
  virtual bool Encrypted() const { return false; }
  // The client's side of a TLS hand-over (HelloReply.handoverSecret): reads
  // to the end of the current TLS session, then runs a new handshake on the
  // same socket by `deadline`, checking the certificate again. Transports
  // without TLS say Unimplemented.
  virtual Status FollowHandover(std::chrono::steady_clock::time_point deadline) {
    (void)deadline;
    return Status::Unimplemented("only a TLS connection is handed over this way");
  }
  // Gives the connection up, unclosed, for another process to continue
  // (AdoptTransport; a TLS connection's session is ended and the adopter
  // starts a new one: kTlsRestart): fills `out`, and this transport no longer
  // owns or touches its descriptors (destroying it then leaves the peer
  // connected). Only between frames, with no reader or writer active, and
  // only when nothing was read ahead (Internal otherwise). Transports that
  // cannot (CanHandOver false) say Unimplemented.
  virtual Status Release(TransportHandover* out) {
    (void)out;
    return Status::Unimplemented("this transport cannot be handed to another process");
  }
};

// The transport `handover` describes, owning its descriptors from now on
// (also on failure).
Status AdoptTransport(TransportHandover handover, std::unique_ptr<Transport>* out);

// The "no deadline" value of SetReadDeadline.
inline constexpr std::chrono::steady_clock::time_point kNoDeadline =
    std::chrono::steady_clock::time_point::max();

// Without blocking: whether the other end of socket `fd` closed or broke
// the connection (not whether it has bytes to read). Transport::PeerClosed
// of the transports over a socket.
bool SocketPeerClosed(int fd);

// Owns a connected stream socket `fd`. Small reads are served from a
// userspace buffer filled by one recv, large ones go straight to the caller.
// A read that finds no bytes busy-polls the socket with non-blocking
// receives for the busy-poll window (common/busy_poll.h) before it blocks.
class SocketTransport final : public Transport {
 public:
  SocketTransport(int fd, std::string peer_name);
  ~SocketTransport() override;
  SocketTransport(const SocketTransport&) = delete;
  SocketTransport& operator=(const SocketTransport&) = delete;

  Status Write(std::span<const ConstBuffer> buffers) override;
  Status ReadExact(void* data, size_t size) override;
  void Shutdown() override;
  const std::string& PeerName() const override { return peer_name_; }
  std::string Description() const override { return "tcp"; }
  bool LocalSocketAddress(sockaddr_storage* out) const override;
  // True for an AF_INET or AF_INET6 socket; false for a socketpair's.
  bool OverTcp() const override;
  bool PeerGoneOrTalking() override;
  bool PeerClosed() override;
  void SetReadDeadline(std::chrono::steady_clock::time_point deadline) override {
    read_deadline_ = deadline;
  }
  bool CanHandOver() const override { return true; }
  Status Release(TransportHandover* out) override;

  // For tests: the reader's busy polling (its counters).
  const BusyPoller& TEST_read_poller() const { return read_poller_; }

 private:
  static constexpr size_t kReadBufferBytes = 64 << 10;
  // Waits until the socket is readable or the read deadline passes.
  Status WaitReadable();

  int fd_;
  std::string peer_name_;
  // Bytes received but not yet read: [read_begin_, read_end_) of
  // read_buffer_. Reader thread only.
  std::unique_ptr<char[]> read_buffer_;
  size_t read_begin_ = 0;
  size_t read_end_ = 0;
  std::chrono::steady_clock::time_point read_deadline_ = kNoDeadline;  // reader thread
  BusyPoller read_poller_;                                             // reader thread
};

// Splits "host:port" ("[::1]:7070" for IPv6). Port 0 is allowed.
Status ParseHostPort(std::string_view address, std::string* host, uint16_t* port);

// Whether TCP to `address` ("127.0.0.1:7070", "[::1]:0", "localhost:7070")
// stays on this host: 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) or the
// name localhost. Any other name is not resolved and counts as remote.
bool IsLoopbackAddress(std::string_view address);

// Connects over TCP with TCP_NODELAY and large buffers; gives up after
// `timeout` with Disconnected naming the address and the reason.
Status ConnectTcp(std::string_view address, std::chrono::milliseconds timeout,
                  std::unique_ptr<Transport>* out);

// As ConnectTcp, returning the connected, tuned, blocking socket (the
// caller owns it).
Status ConnectTcpSocket(std::string_view address, std::chrono::milliseconds timeout, int* fd);

// "rdma://HOST:PORT": ferryd at HOST:PORT over TCP, the stream moved to
// RDMA in the handshake (common/rdma/rdma_connector.h), or no connection.
inline constexpr std::string_view kRdmaScheme = "rdma://";

// Connects to a ferryd address: "unix:/path" (shared memory, see
// common/shm_transport.h), "host:port" (TCP) or "rdma://host:port" (TCP, for
// the handshake to move to RDMA).
Status ConnectTransport(std::string_view address, std::chrono::milliseconds timeout,
                        std::unique_ptr<Transport>* out);

// Tunes an accepted or connected TCP socket the way ferry wants it: no
// Nagle delay, large buffers, and liveness: TCP keepalive probes after
// kTcpKeepaliveIdle of silence, and TCP_USER_TIMEOUT, so that a peer whose
// host vanished (no FIN, no RST) breaks the connection within about
// kTcpUserTimeout instead of leaving reads and writes blocked forever.
void TuneTcpSocket(int fd);
inline constexpr std::chrono::seconds kTcpKeepaliveIdle{30};
inline constexpr std::chrono::seconds kTcpKeepaliveInterval{10};
inline constexpr int kTcpKeepaliveProbes = 3;
inline constexpr std::chrono::seconds kTcpUserTimeout{60};

// Two connected in-process transports (AF_UNIX socketpair), for tests.
Status MakeTransportPair(std::unique_ptr<Transport>* a, std::unique_ptr<Transport>* b);

}  // namespace ferry
