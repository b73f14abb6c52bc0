#include "common/rdma/rdma_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>


namespace ferry::rdma {
namespace {

// The immediate value of a credit message (a SEND); data SENDs carry none,
// ring chunks carry their length (below 2^31).
constexpr uint32_t kCreditImmediate = 0x80000000u;

// What a credit message says: cumulative counts (see the header).
struct CreditMessage {
  uint64_t data_read;
  uint64_t credits_processed;
};

// Work request ids: receives are their buffer's index; sends carry this bit.
constexpr uint64_t kSendId = 1ull << 63;

std::string ErrnoText(int err) { return std::strerror(err); }

bool IsPowerOfTwo(uint64_t value) { return value != 0 && (value & (value - 1)) == 0; }

}  // namespace

QueuePair::QueuePair(QueuePair&& other) noexcept { *this = std::move(other); }

QueuePair& QueuePair::operator=(QueuePair&& other) noexcept {
  if (this != &other) {
    Destroy();
    verbs = other.verbs;
    context = std::exchange(other.context, nullptr);
    pd = std::exchange(other.pd, nullptr);
    channel = std::exchange(other.channel, nullptr);
    cq = std::exchange(other.cq, nullptr);
    qp = std::exchange(other.qp, nullptr);
    max_inline = other.max_inline;
  }
  return *this;
}

QueuePair::~QueuePair() { Destroy(); }

void QueuePair::Destroy() {
  if (verbs == nullptr) return;
  if (qp != nullptr) verbs->destroy_qp(std::exchange(qp, nullptr));
  if (cq != nullptr) verbs->destroy_cq(std::exchange(cq, nullptr));
  if (channel != nullptr) verbs->destroy_comp_channel(std::exchange(channel, nullptr));
  if (pd != nullptr) verbs->dealloc_pd(std::exchange(pd, nullptr));
  if (context != nullptr) verbs->close_device(std::exchange(context, nullptr));
}

RdmaTransport::RdmaTransport(QueuePair queues, const RdmaOptions& options)
    : queues_(std::move(queues)), options_(options) {}

Status RdmaTransport::Prepare(QueuePair queues, const RdmaOptions& options,
                              std::unique_ptr<RdmaTransport>* out) {
  if (!IsPowerOfTwo(options.ring_bytes) || options.receive_depth <= 2 * kCreditReserve ||
      options.small_message_bytes < sizeof(CreditMessage) || options.chunk_bytes == 0 ||
      options.send_depth == 0) {
    return Status::InvalidArgument("RDMA options out of range (ring " +
                                   std::to_string(options.ring_bytes) + " bytes, depth " +
                                   std::to_string(options.receive_depth) + ")");
  }
  if (queues.verbs == nullptr || queues.qp == nullptr || queues.cq == nullptr ||
      queues.channel == nullptr || queues.pd == nullptr) {
    return Status::InvalidArgument("an RDMA transport needs a queue pair, its queue and channel");
  }
  std::unique_ptr<RdmaTransport> transport(new RdmaTransport(std::move(queues), options));
  FERRY_RETURN_IF_ERROR(transport->Register());
  *out = std::move(transport);
  return Status::Ok();
}

Status RdmaTransport::Register() {
  const Verbs& verbs = *queues_.verbs;
  wake_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_ < 0) return Status::Internal("eventfd: " + ErrnoText(errno));
  // The channel is read without blocking: poll(2) says when.
  const int flags = fcntl(queues_.channel->fd, F_GETFL);
  if (flags < 0 || fcntl(queues_.channel->fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return Status::Internal("RDMA completion channel: " + ErrnoText(errno));
  }
  ring_.reset(new uint8_t[options_.ring_bytes]);
  receive_buffers_.reset(
      new uint8_t[static_cast<size_t>(options_.receive_depth) * options_.small_message_bytes]);
  staging_.reset(new uint8_t[options_.ring_bytes]);
  ring_mr_ = verbs.reg_mr(queues_.pd, ring_.get(), options_.ring_bytes,
                          IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
  receive_mr_ = verbs.reg_mr(queues_.pd, receive_buffers_.get(),
                             static_cast<size_t>(options_.receive_depth) *
                                 options_.small_message_bytes,
                             IBV_ACCESS_LOCAL_WRITE);
  staging_mr_ = verbs.reg_mr(queues_.pd, staging_.get(), options_.ring_bytes, 0);
  if (ring_mr_ == nullptr || receive_mr_ == nullptr || staging_mr_ == nullptr) {
    return Status::Overloaded("registering " + std::to_string(2 * options_.ring_bytes >> 20) +
                              " MiB for RDMA failed: " + ErrnoText(errno) +
                              " (is the locked-memory limit, ulimit -l, too low?)");
  }
  for (uint32_t i = 0; i < options_.receive_depth; ++i) FERRY_RETURN_IF_ERROR(PostReceive(i));
  return Status::Ok();
}

RdmaTransport::~RdmaTransport() {
  Shutdown();
  // The queue pair goes first, so nothing lands in memory about to go.
  if (queues_.verbs != nullptr && queues_.qp != nullptr) {
    queues_.verbs->destroy_qp(queues_.qp);
    queues_.qp = nullptr;
  }
  const Verbs* verbs = queues_.verbs;
  if (verbs != nullptr) {
    for (auto& [start, region] : host_regions_) {
      if (region.mr != nullptr) verbs->dereg_mr(region.mr);
    }
    if (ring_mr_ != nullptr) verbs->dereg_mr(ring_mr_);
    if (receive_mr_ != nullptr) verbs->dereg_mr(receive_mr_);
    if (staging_mr_ != nullptr) verbs->dereg_mr(staging_mr_);
  }
  queues_.Destroy();
  if (liveness_ >= 0) close(liveness_);
  if (wake_ >= 0) close(wake_);
}

void RdmaTransport::DescribeReceiving(RdmaEndpoint* out) const {
  out->ring_address = reinterpret_cast<uint64_t>(ring_.get());
  out->ring_key = ring_mr_->rkey;
  out->ring_bytes = options_.ring_bytes;
  out->receive_depth = options_.receive_depth;
  out->small_message_bytes = options_.small_message_bytes;
}

Status RdmaTransport::Start(const RdmaEndpoint& peer, int liveness, std::string peer_name,
                            std::string description) {
  liveness_ = liveness;
  peer_name_ = std::move(peer_name);
  description_ = std::move(description);
  if (!IsPowerOfTwo(peer.ring_bytes) || peer.receive_depth <= 2 * kCreditReserve ||
      peer.small_message_bytes < sizeof(CreditMessage) || peer.ring_key == 0 ||
      peer.ring_address == 0) {
    return Status::Malformed("peer " + peer_name_ + " describes an unusable RDMA ring (" +
                             std::to_string(peer.ring_bytes) + " bytes, depth " +
                             std::to_string(peer.receive_depth) + ")");
  }
  peer_ring_address_ = peer.ring_address;
  peer_ring_key_ = peer.ring_key;
  peer_ring_bytes_ = peer.ring_bytes;
  peer_receive_depth_ = peer.receive_depth;
  peer_small_bytes_ = peer.small_message_bytes;
  std::lock_guard<std::mutex> lock(mutex_);
  started_ = true;
  return Status::Ok();
}

// --- Posting -----------------------------------------------------------------

Status RdmaTransport::PostReceive(uint32_t index) {
  ibv_sge sge{};
  sge.addr = reinterpret_cast<uint64_t>(receive_buffers_.get()) +
             static_cast<uint64_t>(index) * options_.small_message_bytes;
  sge.length = options_.small_message_bytes;
  sge.lkey = receive_mr_->lkey;
  ibv_recv_wr wr{};
  wr.wr_id = index;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  const int err = queues_.verbs->post_recv(queues_.qp, &wr, &bad);
  if (err != 0) {
    return Status::Disconnected("RDMA receive could not be posted toward " + peer_name_ + ": " +
                                ErrnoText(err));
  }
  return Status::Ok();
}

// Under mutex_.
Status RdmaTransport::PostSend(ibv_send_wr* wr, uint64_t staging_end) {
  wr->wr_id = kSendId | sends_posted_;
  wr->send_flags |= IBV_SEND_SIGNALED;
  ibv_send_wr* bad = nullptr;
  const int err = queues_.verbs->post_send(queues_.qp, wr, &bad);
  if (err != 0) {
    Status status = Status::Disconnected("RDMA send to " + peer_name_ +
                                         " could not be posted: " + ErrnoText(err));
    Fail(status);
    return status;
  }
  ++sends_posted_;
  posted_sends_.push_back({staging_end});
  return Status::Ok();
}

// Under mutex_.
Status RdmaTransport::PostCredit() {
  CreditMessage credit{data_read_, credits_processed_};
  ibv_sge sge{};
  sge.addr = reinterpret_cast<uint64_t>(&credit);
  sge.length = sizeof(credit);
  ibv_send_wr wr{};
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND_WITH_IMM;
  wr.imm_data = htonl(kCreditImmediate);
  if (sizeof(credit) <= queues_.max_inline) {
    wr.send_flags = IBV_SEND_INLINE;
  } else {
    // Too small a device for 16 inline bytes: stage it (room is always
    // kept, see WriteToRing's staging bound).
    const uint64_t at = staging_head_ % options_.ring_bytes;
    const uint64_t skip =
        at + sizeof(credit) > options_.ring_bytes ? options_.ring_bytes - at : 0;
    std::memcpy(staging_.get() + (at + skip) % options_.ring_bytes, &credit, sizeof(credit));
    sge.addr = reinterpret_cast<uint64_t>(staging_.get() + (at + skip) % options_.ring_bytes);
    sge.lkey = staging_mr_->lkey;
    staging_head_ += skip + sizeof(credit);
  }
  FERRY_RETURN_IF_ERROR(PostSend(&wr, staging_head_));
  ++credits_sent_;
  ++counters_.credits_sent;
  data_read_reported_ = data_read_;
  credits_processed_reported_ = credits_processed_;
  ring_read_reported_ = ring_read_;
  return Status::Ok();
}

// Under mutex_: gives credit back once enough was read to matter (a quarter
// of the receives or of the ring), or once the peer's credits need an
// answer, and while credits have room at the peer.
void RdmaTransport::MaybeSendCredit() {
  if (!started_ || !failed_.ok()) return;
  const bool enough =
      data_read_ - data_read_reported_ >= options_.receive_depth / 4 ||
      ring_read_ - ring_read_reported_ >= options_.ring_bytes / 4 ||
      credits_processed_ - credits_processed_reported_ >= kCreditReserve / 2;
  if (!enough) return;
  if (credits_sent_ - credits_processed_by_peer_ >= kCreditReserve) return;
  if (sends_posted_ - sends_completed_ >= options_.send_depth) return;
  (void)PostCredit();  // a failure fails the transport
}

uint64_t RdmaTransport::PeerRingFree() const {
  return peer_ring_bytes_ - (peer_ring_written_ - peer_ring_freed_);
}

bool RdmaTransport::DataMessageAllowed() const {
  return data_sent_ - data_read_by_peer_ < peer_receive_depth_ - kCreditReserve &&
         sends_posted_ - sends_completed_ < options_.send_depth;
}

void RdmaTransport::Fail(Status status) {
  if (failed_.ok()) failed_ = std::move(status);
  changed_.notify_all();
}

// --- Completions -------------------------------------------------------------

// Under mutex_.
void RdmaTransport::ProcessCompletion(const ibv_wc& wc) {
  if (wc.status != IBV_WC_SUCCESS) {
    if (wc.status == IBV_WC_WR_FLUSH_ERR && !failed_.ok()) return;  // after the first error
    Fail(Status::Disconnected(
        "RDMA connection to " + peer_name_ + " failed: " + queues_.verbs->wc_status_str(wc.status) +
        " (completion status " + std::to_string(static_cast<int>(wc.status)) + ", vendor error " +
        std::to_string(wc.vendor_err) + ")"));
    return;
  }
  if ((wc.wr_id & kSendId) != 0) {
    if (posted_sends_.empty()) {
      Fail(Status::Internal("RDMA: a send completed that was never posted"));
      return;
    }
    staging_tail_ = std::max(staging_tail_, posted_sends_.front().staging_end);
    posted_sends_.pop_front();
    ++sends_completed_;
    return;
  }
  if (wc.wr_id >= options_.receive_depth) {
    Fail(Status::Internal("RDMA: a receive completed with an unknown id"));
    return;
  }
  const auto index = static_cast<uint32_t>(wc.wr_id);
  const bool with_immediate = (wc.wc_flags & IBV_WC_WITH_IMM) != 0;
  const uint32_t immediate = with_immediate ? ntohl(wc.imm_data) : 0;
  if (wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
    // A ring chunk: `immediate` bytes where the last one ended.
    const uint64_t at = ring_received_ % options_.ring_bytes;
    if (immediate == 0 || immediate > options_.ring_bytes - at ||
        ring_received_ + immediate - ring_read_ > options_.ring_bytes) {
      Fail(Status::Malformed("peer " + peer_name_ + " announced " + std::to_string(immediate) +
                             " bytes that do not fit its RDMA ring"));
      return;
    }
    ring_received_ += immediate;
    segments_.push_back({ring_.get() + at, immediate, 0, index, true});
    return;
  }
  if (wc.opcode != IBV_WC_RECV) {
    Fail(Status::Malformed("peer " + peer_name_ + " sent an RDMA operation of kind " +
                           std::to_string(static_cast<int>(wc.opcode))));
    return;
  }
  const uint8_t* buffer =
      receive_buffers_.get() + static_cast<size_t>(index) * options_.small_message_bytes;
  if (with_immediate) {
    if (immediate != kCreditImmediate || wc.byte_len != sizeof(CreditMessage)) {
      Fail(Status::Malformed("peer " + peer_name_ + " sent a malformed RDMA credit"));
      return;
    }
    CreditMessage credit;
    std::memcpy(&credit, buffer, sizeof(credit));
    if (credit.data_read < data_read_by_peer_ || credit.data_read > data_sent_ ||
        credit.credits_processed < credits_processed_by_peer_ ||
        credit.credits_processed > credits_sent_) {
      Fail(Status::Malformed("peer " + peer_name_ + " gave back credit it never had"));
      return;
    }
    for (; data_read_by_peer_ < credit.data_read; ++data_read_by_peer_) {
      peer_ring_freed_ += ring_bytes_unread_.front();
      ring_bytes_unread_.pop_front();
    }
    credits_processed_by_peer_ = credit.credits_processed;
    ++credits_processed_;
    Status reposted = PostReceive(index);
    if (!reposted.ok()) Fail(std::move(reposted));
    return;
  }
  if (wc.byte_len == 0 || wc.byte_len > options_.small_message_bytes) {
    Fail(Status::Malformed("peer " + peer_name_ + " sent an RDMA message of " +
                           std::to_string(wc.byte_len) + " bytes"));
    return;
  }
  segments_.push_back({buffer, wc.byte_len, 0, index, false});
}

Status RdmaTransport::PollRound(BusyPoller* poller, std::vector<ibv_wc>* out,
                                std::chrono::steady_clock::time_point deadline) {
  const Verbs& verbs = *queues_.verbs;
  ibv_wc batch[32];
  auto drain = [&]() -> Status {
    for (;;) {
      const int n = verbs.poll_cq(queues_.cq, 32, batch);
      if (n < 0) return Status::Disconnected("polling RDMA completions failed");
      out->insert(out->end(), batch, batch + n);
      if (n < 32) return Status::Ok();
    }
  };
  FERRY_RETURN_IF_ERROR(drain());
  if (!out->empty()) return Status::Ok();
  Status spun = Status::Ok();
  if (poller->Spin(
          [&] {
            spun = drain();
            return !spun.ok() || !out->empty();
          },
          deadline)) {
    return spun;
  }
  // Arm, then look once more: a completion that came before the arming
  // raises no event.
  if (verbs.req_notify_cq(queues_.cq, 0) != 0) {
    return Status::Disconnected("arming RDMA completions failed");
  }
  FERRY_RETURN_IF_ERROR(drain());
  if (!out->empty()) return Status::Ok();
  const auto now = std::chrono::steady_clock::now();
  auto slice = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::min<std::chrono::steady_clock::duration>(kWaitSlice, deadline - now));
  pollfd fds[3] = {{queues_.channel->fd, POLLIN, 0},
                   {liveness_, POLLIN | POLLRDHUP, 0},
                   {wake_, POLLIN, 0}};
  const int ready = poll(fds, liveness_ >= 0 ? 3 : 1, static_cast<int>(std::max<int64_t>(slice.count(), 0)) + 1);
  if (ready < 0 && errno != EINTR) return Status::Internal("poll: " + ErrnoText(errno));
  if (ready > 0 && (fds[0].revents & POLLIN) != 0) {
    ibv_cq* cq = nullptr;
    void* context = nullptr;
    unsigned events = 0;
    while (verbs.get_cq_event(queues_.channel, &cq, &context) == 0) ++events;
    if (events > 0) verbs.ack_cq_events(queues_.cq, events);
  }
  FERRY_RETURN_IF_ERROR(drain());
  if (out->empty() && liveness_ >= 0 && ready > 0 && fds[1].revents != 0) {
    // The set-up socket carries nothing after the start: readable means
    // the peer closed it (or broke the protocol).
    return Status::Disconnected("peer " + peer_name_ + " closed the connection");
  }
  return Status::Ok();
}

template <typename Ready>
Status RdmaTransport::WaitLocked(std::unique_lock<std::mutex>& lock, BusyPoller* poller,
                                 Ready ready, std::chrono::steady_clock::time_point deadline) {
  std::vector<ibv_wc> completions;
  for (;;) {
    if (ready()) return Status::Ok();
    if (!failed_.ok()) return failed_;
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status::Disconnected("no data from " + peer_name_ + " in time (a silent peer)");
    }
    if (poller_active_) {
      changed_.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() + kWaitSlice));
      continue;
    }
    poller_active_ = true;
    lock.unlock();
    completions.clear();
    Status polled = PollRound(poller, &completions, deadline);
    lock.lock();
    poller_active_ = false;
    for (const ibv_wc& wc : completions) ProcessCompletion(wc);
    if (!polled.ok()) Fail(std::move(polled));
    MaybeSendCredit();
    changed_.notify_all();
  }
}

// --- The stream --------------------------------------------------------------

Status RdmaTransport::Write(std::span<const ConstBuffer> buffers) {
  size_t total = 0;
  for (const ConstBuffer& buffer : buffers) total += buffer.size;
  if (total == 0) return Status::Ok();
  std::unique_lock<std::mutex> lock(mutex_);
  if (!started_) return Status::Internal("RDMA transport written before it started");
  if (!failed_.ok()) return failed_;
  if (total <= peer_small_bytes_) {
    // One SEND, gathered: inline when the device takes it, else staged.
    uint8_t small[512];
    const bool inlined = total <= std::min<uint64_t>(queues_.max_inline, sizeof(small));
    const uint64_t staging_need = inlined ? 0 : total;
    auto room = [&] {
      if (!DataMessageAllowed()) return false;
      const uint64_t at = staging_head_ % options_.ring_bytes;
      const uint64_t skip = at + staging_need > options_.ring_bytes ? options_.ring_bytes - at : 0;
      return staging_head_ + skip + staging_need - staging_tail_ <= options_.ring_bytes;
    };
    if (!room()) {
      ++counters_.credit_waits;
      FERRY_RETURN_IF_ERROR(WaitLocked(lock, &write_poller_, room, kNoDeadline));
    }
    uint8_t* gather = small;
    uint64_t staging_end = staging_head_;
    if (!inlined) {
      const uint64_t at = staging_head_ % options_.ring_bytes;
      const uint64_t skip = at + total > options_.ring_bytes ? options_.ring_bytes - at : 0;
      gather = staging_.get() + (at + skip) % options_.ring_bytes;
      staging_head_ += skip + total;
      staging_end = staging_head_;
    }
    size_t offset = 0;
    for (const ConstBuffer& buffer : buffers) {
      if (buffer.size == 0) continue;
      std::memcpy(gather + offset, buffer.data, buffer.size);
      offset += buffer.size;
    }
    ibv_sge sge{};
    sge.addr = reinterpret_cast<uint64_t>(gather);
    sge.length = static_cast<uint32_t>(total);
    sge.lkey = inlined ? 0 : staging_mr_->lkey;
    ibv_send_wr wr{};
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = inlined ? IBV_SEND_INLINE : 0;
    FERRY_RETURN_IF_ERROR(PostSend(&wr, staging_end));
    ++data_sent_;
    ring_bytes_unread_.push_back(0);
    ++counters_.small_sends;
    if (inlined) ++counters_.inline_sends;
    return Status::Ok();
  }
  // Ring chunks, each buffer straight from registered memory when it lies
  // in some, else staged.
  for (const ConstBuffer& buffer : buffers) {
    if (buffer.size == 0) continue;
    const auto* data = static_cast<const uint8_t*>(buffer.data);
    lock.unlock();
    HostRegion* region = AcquireRegion(data, buffer.size);
    lock.lock();
    Status status = WriteToRing(lock, data, buffer.size, region != nullptr ? region->mr->lkey : 0);
    if (region != nullptr) {
      const uint64_t last_direct_send = sends_posted_;
      if (status.ok()) {
        // The caller may reuse its buffer once Write returns: wait until
        // the device has read it.
        status = WaitLocked(lock, &write_poller_, [&] { return sends_completed_ >= last_direct_send; },
                            kNoDeadline);
      }
      lock.unlock();
      ReleaseRegion(region);
      lock.lock();
    }
    FERRY_RETURN_IF_ERROR(status);
  }
  return Status::Ok();
}

// Under mutex_ (via `lock`).
Status RdmaTransport::WriteToRing(std::unique_lock<std::mutex>& lock, const uint8_t* data,
                                  size_t size, uint32_t lkey) {
  const uint64_t max_chunk =
      std::max<uint64_t>(1, std::min<uint64_t>(options_.chunk_bytes, peer_ring_bytes_ / 4));
  while (size > 0) {
    const uint64_t at = peer_ring_written_ % peer_ring_bytes_;
    const uint64_t chunk = std::min<uint64_t>({size, max_chunk, peer_ring_bytes_ - at});
    // Staged chunks need contiguous staging room too (kept below the ring's
    // size by a small message's worth, for credits that cannot inline).
    auto room = [&] {
      if (!DataMessageAllowed() || PeerRingFree() < chunk) return false;
      if (lkey != 0) return true;
      const uint64_t s = staging_head_ % options_.ring_bytes;
      const uint64_t skip = s + chunk > options_.ring_bytes ? options_.ring_bytes - s : 0;
      return staging_head_ + skip + chunk - staging_tail_ + sizeof(CreditMessage) * 2 <=
             options_.ring_bytes;
    };
    if (!room()) {
      ++counters_.credit_waits;
      FERRY_RETURN_IF_ERROR(WaitLocked(lock, &write_poller_, room, kNoDeadline));
    }
    ibv_sge sge{};
    sge.length = static_cast<uint32_t>(chunk);
    uint64_t staging_end = staging_head_;
    if (lkey != 0) {
      sge.addr = reinterpret_cast<uint64_t>(data);
      sge.lkey = lkey;
      counters_.zero_copy_bytes += chunk;
    } else {
      const uint64_t s = staging_head_ % options_.ring_bytes;
      const uint64_t skip = s + chunk > options_.ring_bytes ? options_.ring_bytes - s : 0;
      uint8_t* to = staging_.get() + (s + skip) % options_.ring_bytes;
      staging_head_ += skip + chunk;
      staging_end = staging_head_;
      // The copy runs without the lock: the reader (and the poller) go on
      // meanwhile; the staging bytes are this writer's alone until posted.
      lock.unlock();
      std::memcpy(to, data, chunk);
      lock.lock();
      if (!failed_.ok()) return failed_;
      sge.addr = reinterpret_cast<uint64_t>(to);
      sge.lkey = staging_mr_->lkey;
      counters_.staged_bytes += chunk;
    }
    ibv_send_wr wr{};
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
    wr.imm_data = htonl(static_cast<uint32_t>(chunk));
    wr.wr.rdma.remote_addr = peer_ring_address_ + at;
    wr.wr.rdma.rkey = peer_ring_key_;
    FERRY_RETURN_IF_ERROR(PostSend(&wr, staging_end));
    peer_ring_written_ += chunk;
    ++data_sent_;
    ring_bytes_unread_.push_back(static_cast<uint32_t>(chunk));
    ++counters_.ring_writes;
    data += chunk;
    size -= chunk;
  }
  return Status::Ok();
}

Status RdmaTransport::ReadExact(void* data, size_t size) {
  auto* to = static_cast<uint8_t*>(data);
  std::unique_lock<std::mutex> lock(mutex_);
  if (!started_) return Status::Internal("RDMA transport read before it started");
  while (size > 0) {
    if (segments_.empty()) {
      FERRY_RETURN_IF_ERROR(WaitLocked(lock, &read_poller_, [&] { return !segments_.empty(); }, read_deadline_));
    }
    Segment& segment = segments_.front();
    const size_t n = std::min<size_t>(size, segment.size - segment.consumed);
    std::memcpy(to, segment.data + segment.consumed, n);
    segment.consumed += static_cast<uint32_t>(n);
    to += n;
    size -= n;
    if (segment.consumed == segment.size) {
      if (segment.in_ring) ring_read_ += segment.size;
      const uint32_t index = segment.receive_index;
      segments_.pop_front();
      ++data_read_;
      Status reposted = PostReceive(index);
      if (!reposted.ok()) {
        Fail(reposted);
        return reposted;
      }
      MaybeSendCredit();
    }
  }
  return Status::Ok();
}

void RdmaTransport::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Fail(Status::Disconnected("the connection to " + peer_name_ + " was shut down"));
  }
  if (wake_ >= 0) {
    const uint64_t one = 1;
    (void)!write(wake_, &one, sizeof(one));
  }
  // The peer sees its liveness socket close.
  if (liveness_ >= 0) shutdown(liveness_, SHUT_RDWR);
}

bool RdmaTransport::PeerGoneOrTalking() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!failed_.ok() || !segments_.empty()) return true;
  if (!poller_active_) {
    ibv_wc batch[16];
    int n;
    while ((n = queues_.verbs->poll_cq(queues_.cq, 16, batch)) > 0) {
      for (int i = 0; i < n; ++i) ProcessCompletion(batch[i]);
    }
    if (!failed_.ok() || !segments_.empty()) return true;
  }
  if (liveness_ >= 0) {
    pollfd fd{liveness_, POLLIN | POLLRDHUP, 0};
    if (poll(&fd, 1, 0) > 0) return true;
  }
  return false;
}

bool RdmaTransport::PeerClosed() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!failed_.ok()) return true;
  }
  return liveness_ >= 0 && SocketPeerClosed(liveness_);
}

// --- Registered host memory --------------------------------------------------

void RdmaTransport::RegisterHostMemory(const void* address, size_t size) {
  if (address == nullptr || size == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  const auto start = reinterpret_cast<uint64_t>(address);
  auto [it, inserted] = host_regions_.try_emplace(start);
  if (!inserted && it->second.users > 0) return;  // the same range again: keep it
  if (!inserted && it->second.mr != nullptr) queues_.verbs->dereg_mr(it->second.mr);
  it->second = HostRegion{start + size, nullptr, 0, false};
}

void RdmaTransport::UnregisterHostMemory(const void* address) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = host_regions_.find(reinterpret_cast<uint64_t>(address));
  if (it == host_regions_.end()) return;
  if (it->second.users > 0) {
    it->second.forgotten = true;  // the write using it deregisters it
    return;
  }
  if (it->second.mr != nullptr) queues_.verbs->dereg_mr(it->second.mr);
  host_regions_.erase(it);
}

RdmaTransport::HostRegion* RdmaTransport::AcquireRegion(const uint8_t* data, size_t size) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto start = reinterpret_cast<uint64_t>(data);
  auto it = host_regions_.upper_bound(start);
  if (it == host_regions_.begin()) return nullptr;
  --it;
  HostRegion& region = it->second;
  if (region.forgotten || start + size > region.end) return nullptr;
  if (region.mr == nullptr) {
    // Registered on first use, then kept: registration pins pages and costs
    // far more than one copy, so only memory the program page-locked (it
    // means to reuse it) is offered here.
    region.mr = queues_.verbs->reg_mr(queues_.pd, reinterpret_cast<void*>(it->first),
                                      region.end - it->first, 0);
    if (region.mr == nullptr) {
      region.forgotten = true;  // staged from now on
      return nullptr;
    }
    ++counters_.registrations;
  }
  ++region.users;
  return &region;
}

void RdmaTransport::ReleaseRegion(HostRegion* region) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (--region->users > 0 || !region->forgotten) return;
  for (auto it = host_regions_.begin(); it != host_regions_.end(); ++it) {
    if (&it->second != region) continue;
    if (region->mr != nullptr) queues_.verbs->dereg_mr(region->mr);
    host_regions_.erase(it);
    return;
  }
}

RdmaTransport::Counters RdmaTransport::counters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return counters_;
}

}  // namespace ferry::rdma
