// RdmaTransport: the Transport over one reliable-connected (RC) queue pair.
//
// The byte stream is carried by three kinds of messages, all on one RC queue
// pair, so they arrive in the order they were posted:
//   - small writes (at most the peer's `small_message_bytes`, one Write
//     call) are one SEND into a receive buffer the peer posted beforehand,
//     inlined in the work request when the device allows;
//   - larger writes go into the peer's receive ring by RDMA WRITE WITH
//     IMMEDIATE, in chunks that never cross the ring's end: the immediate
//     value is the chunk's length, and the chunk lands where the previous
//     one ended. The bytes come straight from the caller's buffer when it
//     lies in memory this side registered (RegisterHostMemory: page-locked
//     client memory), else through a registered staging ring, copied a
//     chunk ahead of the network (pipelined);
//   - credits (a SEND with an immediate value, 16 bytes): how many of the
//     peer's data messages this side has read, and how many of its credits it
//     has processed — cumulative counts, so a lost order cannot double them.
//
// Credits are the flow control: every message uses one of the receives the
// peer posted (`receive_depth`), and the ring has room for `ring_bytes`. A
// side sends a data message only while fewer than receive_depth -
// kCreditReserve of its data messages are unread, and only into ring space
// the reader has freed; credits have kCreditReserve receives of their own,
// so a reader can always give credit back, even to a peer whose data it has
// not room for. Hence no receiver-not-ready (RNR) retries ever happen, and
// two sides that both write without reading block like TCP, without
// deadlocking what they do read.
//
// Waiting: completions (both directions, one completion queue) are polled
// by whichever thread waits (reader or writer; one at a time, the other
// waits on a condition variable). A waiter spins on the queue for the
// process's busy-poll window (common/busy_poll.h; the reader and the writer
// each have a BusyPoller), then arms the queue's completion
// channel and sleeps in poll(2) on it, on the liveness socket and on a
// wake-up descriptor, each sleep at most kWaitSlice.
//
// Liveness: the TCP connection the queue pair was set up on stays open
// beside it and carries nothing more. A peer that ends (or dies) closes it,
// which this side sees within a wait slice; a peer whose host vanished is
// caught by TCP keepalive on that socket, or by the queue pair's own retries
// (a completion in error). Any completion error, refused post or closed
// socket fails the transport: Disconnected, naming the peer and the reason.
//
// Trust: the peer may write anything into this side's ring and receive
// buffers at any time (it holds their key), but only into this connection's
// own memory; the lengths it announces are checked against the ring's and
// the buffers' bounds (a violation is Malformed), and bytes are copied out
// before anything parses them.
//
// Thread-safety: as Transport — one reader and one writer at a time;
// Shutdown from any thread. RegisterHostMemory/UnregisterHostMemory from any
// thread.
#pragma once

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/busy_poll.h"
#include "common/rdma/verbs.h"
#include "common/status.h"
#include "common/transport.h"

namespace ferry::rdma {

// What one side chooses for the messages it receives.
struct RdmaOptions {
  // The ring the peer RDMA-writes large messages into; a power of two.
  uint64_t ring_bytes = 8 << 20;
  // Receives posted: the most messages of the peer that may be unread.
  uint32_t receive_depth = 256;
  // A write of at most this many bytes is one SEND into a receive buffer.
  uint32_t small_message_bytes = 4096;
  // Send work requests in flight at once.
  uint32_t send_depth = 256;
  // The longest chunk of one RDMA WRITE (at most a quarter of the peer's ring).
  uint32_t chunk_bytes = 256 << 10;
  // Inline data asked of the queue pair (the device may grant less).
  uint32_t max_inline = 220;
};

// What a side tells its peer during set-up: how to reach its queue pair and
// where (and how much) to write.
struct RdmaEndpoint {
  std::array<uint8_t, 16> gid{};
  uint32_t lid = 0;
  uint32_t qp_number = 0;
  uint32_t packet_sequence = 0;
  uint32_t mtu = 0;  // an ibv_mtu value: the port's active MTU
  uint64_t ring_address = 0;
  uint32_t ring_key = 0;
  uint64_t ring_bytes = 0;
  uint32_t receive_depth = 0;
  uint32_t small_message_bytes = 0;
  std::string device;  // "mlx5_0 port 1 gid 3", for logs
};

// Messages of credits have this many receives of their own at the peer.
inline constexpr uint32_t kCreditReserve = 4;
// The longest one sleep lasts before the sleeper checks its deadline and
// the peer.
inline constexpr std::chrono::milliseconds kWaitSlice{50};

// The verbs objects of one connection. Owned by whoever holds it; the
// transport destroys them (queue pair, completion queue, channel, protection
// domain, then the device context) when it ends.
struct QueuePair {
  const Verbs* verbs = nullptr;
  ibv_context* context = nullptr;
  ibv_pd* pd = nullptr;
  ibv_comp_channel* channel = nullptr;
  ibv_cq* cq = nullptr;  // both directions' completions
  ibv_qp* qp = nullptr;
  uint32_t max_inline = 0;  // what the device granted

  QueuePair() = default;
  QueuePair(QueuePair&& other) noexcept;
  QueuePair& operator=(QueuePair&& other) noexcept;
  QueuePair(const QueuePair&) = delete;
  QueuePair& operator=(const QueuePair&) = delete;
  ~QueuePair();
  void Destroy();
};

class RdmaTransport final : public Transport {
 public:
  // Takes `queues` (its queue pair in INIT or later), registers this side's
  // ring, receive buffers and staging ring, and posts the receives; the
  // caller then connects the queue pair (RTR, RTS) and calls Start.
  static Status Prepare(QueuePair queues, const RdmaOptions& options,
                        std::unique_ptr<RdmaTransport>* out);
  ~RdmaTransport() override;
  RdmaTransport(const RdmaTransport&) = delete;
  RdmaTransport& operator=(const RdmaTransport&) = delete;

  // Fills the receiving half of this side's endpoint (ring, depth, sizes).
  void DescribeReceiving(RdmaEndpoint* out) const;
  ibv_qp* queue_pair() const { return queues_.qp; }
  // Starts the stream toward `peer` (whose receiving half it names), once
  // the queue pair is connected; `liveness` is the set-up socket, owned from
  // now on (also on failure). `description` is what Description() says.
  Status Start(const RdmaEndpoint& peer, int liveness, std::string peer_name,
               std::string description);

  Status Write(std::span<const ConstBuffer> buffers) override;
  Status ReadExact(void* data, size_t size) override;
  void Shutdown() override;
  const std::string& PeerName() const override { return peer_name_; }
  bool PeerGoneOrTalking() override;
  bool PeerClosed() override;
  void SetReadDeadline(std::chrono::steady_clock::time_point deadline) override {
    read_deadline_ = deadline;
  }
  std::string Description() const override { return description_; }
  void RegisterHostMemory(const void* address, size_t size) override;
  void UnregisterHostMemory(const void* address) override;

  // Figures for tests and bench.
  struct Counters {
    uint64_t small_sends = 0;       // data SENDs
    uint64_t inline_sends = 0;      // of which inlined
    uint64_t ring_writes = 0;       // RDMA WRITE WITH IMMEDIATE chunks
    uint64_t zero_copy_bytes = 0;   // written straight from registered memory
    uint64_t staged_bytes = 0;      // copied into the staging ring first
    uint64_t credits_sent = 0;
    uint64_t credit_waits = 0;      // writes that waited for credit
    uint64_t registrations = 0;     // memory regions registered for host memory
  };
  Counters counters() const;

 private:
  explicit RdmaTransport(QueuePair queues, const RdmaOptions& options);
  Status Register();

  // A received message, not yet read whole.
  struct Segment {
    const uint8_t* data;
    uint32_t size;
    uint32_t consumed;
    uint32_t receive_index;  // its receive buffer (repost when read)
    bool in_ring;            // a ring chunk (frees ring bytes when read)
  };
  // A host memory range registered for zero-copy sends.
  struct HostRegion {
    uint64_t end = 0;
    ibv_mr* mr = nullptr;  // null until first used
    uint32_t users = 0;    // writes using it now
    bool forgotten = false;  // unregistered while in use: deregister after
  };
  // A posted send, in order (send completions come in order).
  struct PostedSend {
    uint64_t staging_end;  // staging position freed by its completion
  };

  // Waits (polling or sleeping, see the file comment) until `ready` holds
  // (evaluated under mutex_), the transport fails or `deadline` passes.
  // `poller`: the waiting thread's (read_poller_ or write_poller_).
  template <typename Ready>
  Status WaitLocked(std::unique_lock<std::mutex>& lock, BusyPoller* poller, Ready ready,
                    std::chrono::steady_clock::time_point deadline);
  // One round of polling by the thread that holds the poller role:
  // completions into `out`; sleeps when there are none.
  Status PollRound(BusyPoller* poller, std::vector<ibv_wc>* out,
                   std::chrono::steady_clock::time_point deadline);
  void ProcessCompletion(const ibv_wc& wc);
  Status PostReceive(uint32_t index);
  Status PostCredit();
  void MaybeSendCredit();
  Status PostSend(ibv_send_wr* wr, uint64_t staging_end);
  void Fail(Status status);
  // Ring bytes free at the peer, and whether a data message may go now.
  uint64_t PeerRingFree() const;
  bool DataMessageAllowed() const;
  // Sends [data, data+size) as ring chunks; `lkey` nonzero: straight from
  // registered memory.
  Status WriteToRing(std::unique_lock<std::mutex>& lock, const uint8_t* data, size_t size,
                     uint32_t lkey);
  // The registered region holding [data, data+size), or null; counts a user.
  HostRegion* AcquireRegion(const uint8_t* data, size_t size);
  void ReleaseRegion(HostRegion* region);

  QueuePair queues_;
  const RdmaOptions options_;
  BusyPoller read_poller_;   // the reader thread's
  BusyPoller write_poller_;  // the writer thread's
  std::string peer_name_;
  std::string description_;
  int liveness_ = -1;
  int wake_ = -1;  // an eventfd Shutdown writes

  // This side's memory.
  std::unique_ptr<uint8_t[]> ring_;            // the peer writes here
  std::unique_ptr<uint8_t[]> receive_buffers_;  // receive_depth x small_message_bytes
  std::unique_ptr<uint8_t[]> staging_;          // ring_bytes, the source of staged writes
  ibv_mr* ring_mr_ = nullptr;
  ibv_mr* receive_mr_ = nullptr;
  ibv_mr* staging_mr_ = nullptr;

  // The peer's receiving half (Start).
  uint64_t peer_ring_address_ = 0;
  uint32_t peer_ring_key_ = 0;
  uint64_t peer_ring_bytes_ = 0;
  uint32_t peer_receive_depth_ = 0;
  uint32_t peer_small_bytes_ = 0;

  mutable std::mutex mutex_;  // everything below
  std::condition_variable changed_;
  bool poller_active_ = false;
  Status failed_ = Status::Ok();
  bool started_ = false;
  // Sending.
  uint64_t peer_ring_written_ = 0;  // bytes written into the peer's ring
  uint64_t peer_ring_freed_ = 0;    // of which it has read
  uint64_t data_sent_ = 0;          // data messages sent
  uint64_t data_read_by_peer_ = 0;  // of which the peer has read (its credits)
  std::deque<uint32_t> ring_bytes_unread_;  // per unread data message: its ring bytes
  uint64_t credits_sent_ = 0;
  uint64_t credits_processed_by_peer_ = 0;
  std::deque<PostedSend> posted_sends_;
  uint64_t sends_completed_ = 0;
  uint64_t sends_posted_ = 0;
  uint64_t staging_head_ = 0;  // staging ring: [tail, head) awaits completions
  uint64_t staging_tail_ = 0;
  // Receiving.
  std::deque<Segment> segments_;
  uint64_t ring_received_ = 0;  // ring bytes the peer wrote
  uint64_t ring_read_ = 0;      // ring bytes read
  uint64_t data_read_ = 0;      // the peer's data messages read whole
  uint64_t credits_processed_ = 0;
  uint64_t data_read_reported_ = 0;
  uint64_t credits_processed_reported_ = 0;
  uint64_t ring_read_reported_ = 0;
  // Registered host memory by start address.
  std::map<uint64_t, HostRegion> host_regions_;
  Counters counters_;

  std::chrono::steady_clock::time_point read_deadline_ = kNoDeadline;  // reader thread
};

}  // namespace ferry::rdma
