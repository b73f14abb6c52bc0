// ShmTransport: the Transport for a client on the GPU host itself
// (FERRY_SERVER=unix:/path, ferryd --listen unix:/path). Frames — calls,
// replies and their bulk bytes — travel through two single-producer /
// single-consumer byte rings in one shared memory region; no system call on
// the data path while both sides keep up.
//
// Setup: the client connects to ferryd's unix socket; ferryd creates the
// region (a memfd, sealed so that it can never shrink or grow), maps it, and
// passes its descriptor to the client over the socket (SCM_RIGHTS) with the
// ring size. The socket stays open beside the rings and carries nothing more:
// its closing tells each side that the other is gone, even when the other
// died without a word.
//
// Waiting: a side that finds its ring empty (or full) busy-polls the ring
// for the process-wide busy-poll window (common/busy_poll.h: BusyPoller,
// which spins less after waits that its spin did not catch, and not at all
// with window 0), then sleeps on a futex in the region that the other side
// wakes when it moves the ring's position. Every sleep is bounded (kWaitSlice); after each slice
// the sleeper checks the socket, so a dead peer never hangs the other side.
//
// Trust (ferryd's side): nothing the client writes into the region is
// trusted. ferryd keeps its own positions in private memory and only
// publishes them; a position the client publishes is checked against them
// (a ring that claims more bytes than it can hold ends the connection as
// Malformed); every offset is reduced modulo the ring size; and bytes are
// copied out of the ring before anything parses them, so a client that
// rewrites the ring concurrently can only garble its own frames.
//
// Thread-safety: as Transport — one reader and one writer at a time;
// Shutdown from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "common/busy_poll.h"
#include "common/status.h"
#include "common/transport.h"

namespace ferry {

// The shared region: a header page, then the ring the client writes
// (client -> server), then the ring ferryd writes (server -> client).
namespace shm_layout {

inline constexpr uint32_t kMagic = 0x46525953;  // "FRYS"
inline constexpr uint32_t kVersion = 1;
inline constexpr uint64_t kHeaderBytes = 4096;
inline constexpr uint64_t kMinRingBytes = 64 << 10;
inline constexpr uint64_t kMaxRingBytes = 1ull << 30;

// One direction. Positions count bytes since the start and only grow; the
// ring holds [tail, head). Each field is written by one side only (noted).
struct Ring {
  alignas(64) std::atomic<uint64_t> head;  // writer: bytes written so far
  std::atomic<uint32_t> data_event;        // writer bumps it to wake the reader
  std::atomic<uint32_t> reader_sleeping;   // reader: 1 while it may sleep
  alignas(64) std::atomic<uint64_t> tail;  // reader: bytes consumed so far
  std::atomic<uint32_t> space_event;       // reader bumps it to wake the writer
  std::atomic<uint32_t> writer_sleeping;   // writer: 1 while it may sleep
};

struct Header {
  uint32_t magic;
  uint32_t version;
  uint64_t ring_bytes;                              // a power of two
  alignas(64) std::atomic<uint32_t> client_closed;  // client: it shut down
  alignas(64) std::atomic<uint32_t> server_closed;  // server: it shut down
  Ring to_server;
  Ring to_client;
};
static_assert(sizeof(Header) <= kHeaderBytes);
static_assert(std::atomic<uint64_t>::is_always_lock_free &&
                  std::atomic<uint32_t>::is_always_lock_free,
              "the region's atomics must work across processes");

}  // namespace shm_layout

class ShmTransport final : public Transport {
 public:
  // Default bytes per ring.
  static constexpr uint64_t kDefaultRingBytes = 8 << 20;
  // The longest a wait sleeps before it checks that the peer is alive.
  static constexpr std::chrono::milliseconds kWaitSlice{50};

  // ferryd's side: creates the region for the client connected on `socket`
  // (owned from now on, also on failure), passes it, and returns the
  // transport.
  static Status Accept(int socket, std::string peer_name, uint64_t ring_bytes,
                       std::unique_ptr<Transport>* out);
  // The client's side: receives the region on `socket` (owned from now on),
  // waiting at most `timeout` for it.
  static Status Join(int socket, std::string peer_name, std::chrono::milliseconds timeout,
                     std::unique_ptr<Transport>* out);
  // ferryd's side again, in another process: continues the connection that
  // ferryd's Release described (its kind is kShm).
  static Status Adopt(TransportHandover handover, std::unique_ptr<Transport>* out);

  ~ShmTransport() override;
  ShmTransport(const ShmTransport&) = delete;
  ShmTransport& operator=(const ShmTransport&) = delete;

  Status Write(std::span<const ConstBuffer> buffers) override;
  Status ReadExact(void* data, size_t size) override;
  void Shutdown() override;
  const std::string& PeerName() const override { return peer_name_; }
  std::string Description() const override {
    return "shm, ring " + std::to_string(ring_bytes_ >> 20) + " MiB";
  }
  bool PeerClosed() override { return !Alive(/*check_socket=*/true).ok(); }
  // Reader thread (or whoever holds its role): bytes wait in the ring, or
  // the peer is gone.
  bool PeerGoneOrTalking() override {
    return in_.head.load(std::memory_order_acquire) != in_tail_ || PeerClosed();
  }
  void SetReadDeadline(std::chrono::steady_clock::time_point deadline) override {
    read_deadline_ = deadline;
  }
  // ferryd's side only (it alone keeps the region's memfd).
  bool CanHandOver() const override { return server_side_; }
  Status Release(TransportHandover* out) override;

  // For tests that play a hostile client: the shared region's header.
  shm_layout::Header* TEST_header() { return header_; }
  // For tests: the reader's busy polling (its counters).
  const BusyPoller& TEST_read_poller() const { return read_poller_; }

 private:
  // `memfd`: the region's descriptor, kept by ferryd's side (so that the
  // connection can be handed over), -1 on the client's.
  ShmTransport(int socket, std::string peer_name, void* region, uint64_t region_bytes,
               bool server_side, int memfd);

  // Waits until `ready()`, the connection ends or `deadline` passes (then
  // Disconnected: a silent peer); `event` is the futex word the other side
  // bumps and `sleeping` the flag that asks it to; `poller` belongs to the
  // calling thread.
  Status Wait(std::atomic<uint32_t>& event, std::atomic<uint32_t>& sleeping, BusyPoller* poller,
              const std::function<bool()>& ready,
              std::chrono::steady_clock::time_point deadline = kNoDeadline);
  // Disconnected when this side shut down, the peer shut down, or its socket
  // closed.
  Status Alive(bool check_socket);
  // A position the peer published that would put more than a ring's bytes
  // in flight.
  Status Corrupt(const char* what);

  int socket_;  // -1 once released
  int memfd_;   // -1 on the client's side and once released
  const std::string peer_name_;
  void* const region_;
  const uint64_t region_bytes_;
  const bool server_side_;
  shm_layout::Header* const header_;
  uint64_t ring_bytes_ = 0;  // private copy: the header's may be rewritten by the peer
  shm_layout::Ring& in_;     // the ring this side reads
  shm_layout::Ring& out_;    // the ring this side writes
  uint8_t* in_data_ = nullptr;
  uint8_t* out_data_ = nullptr;
  // This side's positions, private (the region's copies are published only).
  uint64_t in_tail_ = 0;                                               // reader thread
  uint64_t out_head_ = 0;                                              // writer thread
  BusyPoller read_poller_;                                             // reader thread
  BusyPoller write_poller_;                                            // writer thread
  std::chrono::steady_clock::time_point read_deadline_ = kNoDeadline;  // reader thread
  std::atomic<bool> shut_down_{false};
};

// Connects to ferryd's unix socket at `path` and joins its shared region.
Status ConnectShm(std::string_view path, std::chrono::milliseconds timeout,
                  std::unique_ptr<Transport>* out);

// A connected in-process pair over shared memory (a socketpair carries the
// setup), for tests: `server` is ferryd's side.
Status MakeShmTransportPair(std::unique_ptr<Transport>* server, std::unique_ptr<Transport>* client,
                            uint64_t ring_bytes = ShmTransport::kDefaultRingBytes);

}  // namespace ferry
