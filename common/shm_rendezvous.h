// Moving a TCP (or TLS) connection between a client and ferryd on the same
// host to shared memory in the handshake (schema/ferry.capnp Hello.shm,
// HelloReply.shm; README.md "Transports"): how the two sides tell that they
// share a kernel, and how the client reaches the session's shared region.
//
// Same host: the client puts its kernel's boot id (BootId) in the Hello;
// ferryd's session compares it with its own. Equal boot ids mean one kernel,
// so memfds and unix sockets can pass between the two processes.
//
// The rendezvous: ferryd's session listens on an abstract unix socket with a
// random name (ShmRendezvous::Open) and sends the name and a random nonce in
// the HelloReply, inside the connection the client already holds. The
// client connects to that name and writes the nonce (ConnectShmRendezvous),
// then says 'S' on the old connection; ferryd accepts the connection whose
// nonce matches (AcceptClient) and hands the region over it as for a unix
// client (ShmTransport::Accept / Join). Abstract socket names belong to the
// network namespace: a client in another container of the same kernel
// cannot connect, says 'T' instead, and stays on TCP. Any local process can
// see the name (/proc/net/unix) and connect to it, but without the nonce it
// is closed unheard: it can neither take the session over nor hold the real
// client off (AcceptClient reads all connections at once, each for a short
// while, and drops the oldest when it holds kMaxCandidates). At worst a
// flood makes the client stay on TCP.
//
// Thread-safety: ShmRendezvous belongs to one thread (the session's Run);
// the free functions are independent.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "common/status.h"

namespace ferry {

// This kernel's boot id (/proc/sys/kernel/random/boot_id, a UUID that is
// new at every boot and the same in every container of the kernel), read
// once and kept; Unimplemented with the reason when it cannot be read.
Status BootId(std::string* out);

// The nonce that proves a connection to the rendezvous comes from the
// session's client.
inline constexpr size_t kShmNonceBytes = 16;
using ShmNonce = std::array<uint8_t, kShmNonceBytes>;

// The one byte the client writes on the old connection after a
// HelloReply.shm: it connected to the rendezvous and wrote the nonce
// (kShmMoving), or it cannot reach it and stays (kShmStaying).
inline constexpr uint8_t kShmMoving = 'S';
inline constexpr uint8_t kShmStaying = 'T';

// ferryd's side: a listening abstract unix socket for one session's client.
// Closed when destroyed.
class ShmRendezvous {
 public:
  // At most this many connections are read at once; past it the oldest is
  // closed.
  static constexpr size_t kMaxCandidates = 16;
  // How long a connection may take to send its nonce.
  static constexpr std::chrono::milliseconds kNonceTimeout{2000};

  // Listens on a new random abstract name with a new random nonce.
  // `owner` names the session in log lines ("session 3 (prog@host)").
  static Status Open(std::string owner, std::unique_ptr<ShmRendezvous>* out);
  ~ShmRendezvous();
  ShmRendezvous(const ShmRendezvous&) = delete;
  ShmRendezvous& operator=(const ShmRendezvous&) = delete;

  // The abstract name without its leading NUL ("ferry-shm-<32 hex>"), for
  // HelloReply.shm.socket.
  const std::string& name() const { return name_; }
  const ShmNonce& nonce() const { return nonce_; }

  // Waits until `deadline` for a connection that sends the nonce and stores
  // its socket (blocking, close-on-exec; the caller owns it) in `*socket`.
  // Every other connection is closed (a wrong nonce, end of stream, silence
  // past kNonceTimeout, the oldest past kMaxCandidates) and logged with its
  // peer's pid and uid, once each up to a few. Disconnected when none came
  // by the deadline, or as soon as `client_gone` (asked every
  // kGoneCheckPeriod at most, when given) says the client left meanwhile.
  Status AcceptClient(std::chrono::steady_clock::time_point deadline, int* socket,
                      const std::function<bool()>& client_gone = nullptr);
  static constexpr std::chrono::milliseconds kGoneCheckPeriod{100};

 private:
  ShmRendezvous(int listener, std::string name, const ShmNonce& nonce, std::string owner);

  const int listener_;
  const std::string name_;
  const ShmNonce nonce_;
  const std::string owner_;
};

// The client's side: connects to the abstract socket `name` (as
// HelloReply.shm.socket says it) within `timeout` and writes `nonce`; the
// connected socket goes to `*socket` (the caller owns it; ShmTransport::Join
// takes it next). Disconnected naming the reason when the name cannot be
// reached (another network namespace, ferryd gone); InvalidArgument for a
// name no rendezvous could have.
Status ConnectShmRendezvous(std::string_view name, std::span<const uint8_t> nonce,
                            std::chrono::milliseconds timeout, int* socket);

}  // namespace ferry
