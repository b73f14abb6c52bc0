#include "client/connection.h"

#include <capnp/serialize.h>
#include <cuda.h>
#include <kj/exception.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "common/frame.h"
#include "common/log.h"
#include "common/rdma/rdma_wire.h"
#include "common/shm_rendezvous.h"
#include "common/shm_transport.h"
#include "common/units.h"
#include "schema/call_table.h"

namespace ferry::client {
namespace {

// How long a TLS hand-over's new handshake may take without a call deadline.
constexpr std::chrono::seconds kHandoverTimeout{30};

// Calls whose bulk is at most this many bytes are copied into the batch;
// larger ones are written straight from the caller's memory.
constexpr uint64_t kCopyIntoBatchLimit = 64 << 10;
// A batch is sent once it holds this much.
constexpr size_t kBatchWordsLimit = 32 << 10;
constexpr size_t kBatchBulkLimit = 1 << 20;
constexpr size_t kBatchCallsLimit = 1024;

// The keepalive period the client asks for (Hello.keepaliveMs): a quarter of
// the call deadline, so a late keepalive or two never looks like silence;
// between 10 ms and 10 s. 0 without a deadline.
uint32_t KeepalivePeriodMs(std::chrono::milliseconds call_timeout) {
  if (call_timeout.count() <= 0) return 0;
  return static_cast<uint32_t>(std::clamp<int64_t>(call_timeout.count() / 4, 10, 10000));
}

}  // namespace

Status CheckWaits(wire::Call::Which which, bool wants_reply, bool gate) {
  const wire::CallWaits* waits = wire::FindCallWaits(which);
  const char* refusal = nullptr;
  if (waits == nullptr) {
    refusal = "has no description in this client's schema";
  } else {
    switch (*waits) {
      case wire::CallWaits::kAlways:
        if (!wants_reply || gate) refusal = "always waits for its reply but was posted";
        break;
      case wire::CallWaits::kNever:
        if (wants_reply || gate) refusal = "never waits for a reply but was sent to wait";
        break;
      case wire::CallWaits::kByFlag:
        if (gate) refusal = "is no host gate but was sent as one";
        break;
      case wire::CallWaits::kGate:
        if (!gate) refusal = "is a host gate but was not sent through PostHostGate";
        break;
    }
  }
  if (refusal == nullptr) return Status::Ok();
  const std::string name = waits != nullptr
                               ? wire::kCallDescriptions[static_cast<size_t>(which)].name
                               : "ordinal " + std::to_string(static_cast<int>(which));
  const std::string message = "call " + name + " " + refusal + " (its $waits in ferry.capnp)";
  FERRY_LOG(kError) << "bug in the ferry client: " << message;
#ifndef NDEBUG
  // A debug build stops at the call site, where the wrong choice was made.
  std::abort();
#endif
  return Status::Internal(message);
}

Status Connection::PrepareRdma(Transport& transport, const ConnectionOptions& options,
                               std::unique_ptr<rdma::RdmaConnector>* out) {
  sockaddr_storage local{};
  if (!transport.LocalSocketAddress(&local)) {
    return Status::Unimplemented("RDMA is set up beside a plain TCP connection only, not " +
                                 transport.Description());
  }
  std::string why;
  const rdma::Verbs* verbs =
      options.rdma_verbs != nullptr ? options.rdma_verbs : rdma::SystemVerbs(&why);
  if (verbs == nullptr) return Status::Unimplemented(why);
  return rdma::RdmaConnector::Open(verbs, options.rdma_device, options.rdma_options, &local, out);
}

Status Connection::FinishRdma(std::unique_ptr<rdma::RdmaConnector> connector,
                              wire::HelloReply::Reader reply,
                              const std::string& server_name, bool required,
                              const ConnectionOptions& options,
                              std::unique_ptr<Transport>* transport) {
  if (!reply.hasRdma()) {
    const std::string refusal =
        reply.getRdmaRefusal().size() > 0 ? reply.getRdmaRefusal().cStr() : "it did not say why";
    if (required) {
      return Status::Unimplemented("ferryd at " + server_name +
                                   " does not take RDMA, which is required: " + refusal);
    }
    FERRY_LOG(kInfo) << "the connection to ferryd at " << server_name
                     << " stays on TCP: ferryd does not take RDMA: " << refusal;
    return Status::Ok();
  }
  rdma::RdmaEndpoint server_endpoint;
  Status moved = rdma::EndpointFromWire(reply.getRdma(), &server_endpoint);
  if (moved.ok()) moved = connector->ConnectQueuePair(server_endpoint);
  if (moved.ok()) {
    const auto deadline =
        std::chrono::steady_clock::now() +
        (options.call_timeout.count() > 0 ? options.call_timeout : kHandoverTimeout);
    moved = std::move(*connector).SwitchToRdma(transport, /*speak_first=*/true, deadline);
  }
  if (!moved.ok()) {
    // ferryd waits for this side's mark: the session there ends with the
    // connection.
    return Status::Disconnected("moving the connection to ferryd at " + server_name +
                                " to RDMA failed: " + moved.message());
  }
  FERRY_LOG(kInfo) << "connected to ferryd at " << server_name << " over "
                   << (*transport)->Description() << " (ferryd's side: " << server_endpoint.device
                   << ")";
  return Status::Ok();
}

Status Connection::PrepareShm(const Transport& transport, const ConnectionOptions& options,
                              std::string* boot_id) {
  if (!transport.OverTcp()) {
    return Status::Unimplemented("shared memory is set up beside a TCP connection only, not " +
                                 transport.Description());
  }
  if (!options.boot_id.empty()) {
    *boot_id = options.boot_id;
    return Status::Ok();
  }
  return BootId(boot_id);
}

Status Connection::FinishShm(wire::HelloReply::Reader reply, const std::string& server_name,
                             bool required, const ConnectionOptions& options,
                             std::unique_ptr<Transport>* transport) {
  const std::string from = (*transport)->Description();
  if (!reply.hasShm()) {
    const std::string refusal =
        reply.getShmRefusal().size() > 0
            ? reply.getShmRefusal().cStr()
            : "it does not say why (a ferryd from before shared-memory moves?)";
    if (required) {
      return Status::Unimplemented("ferryd at " + server_name +
                                   " does not move this connection to shared memory, which is "
                                   "required (FERRY_TRANSPORT=shm): " +
                                   refusal);
    }
    // The usual answer of a ferryd on another host: not worth a line.
    FERRY_LOG(kDebug) << "the connection to ferryd at " << server_name << " stays on " << from
                      << ": no shared memory: " << refusal;
    return Status::Ok();
  }
  std::string socket_name;
  std::vector<uint8_t> nonce;
  try {
    socket_name = reply.getShm().getSocket().cStr();
    auto data = reply.getShm().getNonce();
    nonce.assign(data.begin(), data.end());
  } catch (const kj::Exception& e) {
    return Status::Malformed("bad shared-memory invitation from ferryd at " + server_name + ": " +
                             e.getDescription().cStr());
  }
  if (options.TEST_shm_rendezvous) socket_name = options.TEST_shm_rendezvous(socket_name);
  const std::chrono::milliseconds timeout =
      options.call_timeout.count() > 0
          ? options.call_timeout
          : std::chrono::duration_cast<std::chrono::milliseconds>(kHandoverTimeout);
  int socket = -1;
  const Status reached = ConnectShmRendezvous(socket_name, nonce, timeout, &socket);
  // ferryd waits for this one byte on the old connection.
  const uint8_t answer = reached.ok() ? kShmMoving : kShmStaying;
  const ConstBuffer buffer{&answer, 1};
  Status said = (*transport)->Write({&buffer, 1});
  if (!said.ok()) {
    if (socket >= 0) ::close(socket);
    return said;
  }
  if (!reached.ok()) {
    const std::string why =
        "ferryd runs on this host, but its shared-memory socket cannot be "
        "reached from here (another network namespace?): " +
        reached.message();
    if (required) {
      return Status::Unimplemented("shared memory with ferryd at " + server_name +
                                   " is required (FERRY_TRANSPORT=shm): " + why);
    }
    FERRY_LOG(kInfo) << "the connection to ferryd at " << server_name << " stays on " << from
                     << ": " << why;
    return Status::Ok();
  }
  std::unique_ptr<Transport> shm;
  Status joined = ShmTransport::Join(socket, server_name, timeout, &shm);
  if (!joined.ok()) {
    // ferryd's session ends with the old connection, closed below.
    return Status::Disconnected("moving the connection to ferryd at " + server_name +
                                " to shared memory failed: " + joined.message());
  }
  *transport = std::move(shm);  // the TCP connection closes
  std::string old = from;
  for (char& c : old) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  FERRY_LOG(kInfo) << "connected to ferryd at " << server_name << " over "
                   << (*transport)->Description() << " (moved from " << old << ": same host)";
  return Status::Ok();
}

Status Connection::Open(std::unique_ptr<Transport> transport, std::string server_name,
                        const Borrow& borrow, std::unique_ptr<Connection>* out,
                        std::unique_ptr<capnp::MessageReader>* hello_reply,
                        kj::Array<capnp::word>* hello_words, ConnectionOptions options,
                        Redirect* redirect) {
  FERRY_RETURN_IF_ERROR(
      Handshake(&transport, server_name, borrow, options, redirect, hello_reply, hello_words));
  if (redirect != nullptr && (!redirect->address.empty() || !redirect->parts.empty())) {
    return Status::Ok();  // sent on: no connection here
  }
  out->reset(new Connection(std::move(transport), std::move(server_name), options, borrow));
  return Status::Ok();
}

Status Connection::Handshake(std::unique_ptr<Transport>* transport_inout,
                             const std::string& server_name, const Borrow& borrow,
                             const ConnectionOptions& options, Redirect* redirect,
                             std::unique_ptr<capnp::MessageReader>* hello_reply,
                             kj::Array<capnp::word>* hello_words) {
  using Carrier = ConnectionOptions::Carrier;
  std::unique_ptr<Transport>& transport = *transport_inout;
  // Shared memory is offered in the Hello over TCP or TLS; ferryd takes it
  // when it runs on this host. A unix: connection is shared memory already.
  std::string shm_boot_id;  // not empty: offered
  const bool shm_required = options.carrier == Carrier::kShm;
  const bool already_shm = dynamic_cast<const ShmTransport*>(transport.get()) != nullptr;
  if ((options.carrier == Carrier::kAuto || shm_required) && !already_shm) {
    Status prepared = PrepareShm(*transport, options, &shm_boot_id);
    if (!prepared.ok()) {
      if (shm_required) {
        return Status::Unimplemented("shared memory with ferryd at " + server_name +
                                     " is required (FERRY_TRANSPORT=shm), but " +
                                     prepared.message());
      }
      FERRY_LOG(kDebug) << "the connection to " << server_name
                        << " stays where it is: " << prepared.message();
    }
  }
  // RDMA is offered in the Hello when it may carry the stream: a plain TCP
  // connection (not TLS, not shared memory) and a device here.
  std::unique_ptr<rdma::RdmaConnector> rdma_connector;
  const bool rdma_required = options.carrier == Carrier::kRdma;
  if (options.carrier == Carrier::kAuto || rdma_required) {
    Status prepared = PrepareRdma(*transport, options, &rdma_connector);
    if (!prepared.ok()) {
      if (rdma_required) {
        return Status::Unimplemented("RDMA to ferryd at " + server_name +
                                     " is required, but this host cannot: " + prepared.message());
      }
      FERRY_LOG(kDebug) << "the connection to " << server_name
                        << " stays on TCP: " << prepared.message();
    }
  }
  // Kept: a TLS hand-over (below) sends it again.
  capnp::MallocMessageBuilder hello_message;
  {
    auto hello = hello_message.initRoot<wire::Hello>();
    hello.setProtocolVersion(wire::PROTOCOL_VERSION);
    hello.setRole(wire::Hello::Role::CLIENT);
    hello.setPid(static_cast<uint32_t>(getpid()));
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    hello.setHost(host);
    hello.setProgram(program_invocation_short_name);
    hello.setPool(borrow.pool);
    hello.setGpus(borrow.gpus);
    hello.setWaitMs(borrow.wait_ms);
    hello.setToken(borrow.token);
    hello.setKeepaliveMs(KeepalivePeriodMs(options.call_timeout));
    hello.setRedirects(borrow.redirects);
    hello.setFollowsRedirects(redirect != nullptr);
    hello.setQueueTicket(borrow.queue_ticket);
    hello.setTicketStays(borrow.ticket_stays);
    hello.setFollowsParts(redirect != nullptr);
    hello.setFollowsMoves(options.connect_to != nullptr);
    if (!borrow.resume_ticket.empty()) {
      hello.setResumeTicket(
          capnp::Data::Reader(reinterpret_cast<const uint8_t*>(borrow.resume_ticket.data()),
                              borrow.resume_ticket.size()));
    }
    if (rdma_connector != nullptr) {
      rdma::EndpointToWire(rdma_connector->Local(), hello.initRdma());
      hello.setRdmaRequired(rdma_required);
    }
    if (!shm_boot_id.empty()) {
      auto offer = hello.initShm();
      offer.setBootId(shm_boot_id);
      offer.setRequired(shm_required);
    }
    FERRY_RETURN_IF_ERROR(WriteFrame(*transport, wire::FrameKind::HELLO, hello_message));
  }
  // Interim replies (queued for a slice) come first; the last one answers.
  // Each must come within the call deadline, plus the borrow's wait once
  // the server queued it; a silent server is a lost one.
  bool queued = false;
  for (;;) {
    Frame frame;
    if (options.call_timeout.count() > 0) {
      transport->SetReadDeadline(
          std::chrono::steady_clock::now() + options.call_timeout +
          (queued ? std::chrono::milliseconds(borrow.wait_ms) : std::chrono::milliseconds(0)));
    }
    Status read = ReadFrame(*transport, &frame);
    if (!read.ok()) {
      return options.call_timeout.count() > 0 && read.code() == StatusCode::kDisconnected
                 ? Status::Disconnected(read.message() + " (FERRY_CALL_TIMEOUT " +
                                        FormatDuration(options.call_timeout) +
                                        " for each handshake reply)")
                 : read;
    }
    if (frame.kind != wire::FrameKind::HELLO_REPLY) {
      return Status::Malformed("server " + server_name +
                               " answered the handshake with frame kind " +
                               std::to_string(static_cast<int>(frame.kind)));
    }
    *hello_words = std::move(frame.words);
    try {
      auto reader =
          std::make_unique<capnp::FlatArrayMessageReader>(*hello_words, PeerReaderOptions());
      auto reply = reader->getRoot<wire::HelloReply>();
      Status status = StatusFromWire(reply.getStatus());
      if (!status.ok()) {
        // A refusal keeps its code: a full pool is not a lost server.
        return Status::FromWire(
            static_cast<uint8_t>(status.code()), status.cuda_result(),
            "ferryd at " + server_name + " gives no device: " + status.message());
      }
      if (reply.getRedirect().size() > 0 || reply.getParts().size() > 0) {
        if (redirect == nullptr) {
          return Status::Malformed("ferryd at " + server_name +
                                   " sends this client on, which it did not offer to follow");
        }
        redirect->address = reply.getRedirect().cStr();
        redirect->pool = reply.getPool().cStr();
        redirect->queue_ticket = reply.getQueueTicket().cStr();
        for (auto part : reply.getParts()) {
          if (part.getAddress().size() == 0 || part.getGpus() == 0) {
            return Status::Malformed("ferryd at " + server_name +
                                     " splits the borrow with an empty part");
          }
          redirect->parts.push_back({part.getAddress().cStr(), part.getGpus()});
        }
        return Status::Ok();
      }
      if (reply.getHandoverSecret().size() > 0) {
        // ferryd hands the connection to the process that serves the
        // session (server/session_worker.h): a new TLS session on the same
        // socket, then the Hello again with the secret that proves it is us.
        const auto deadline =
            std::chrono::steady_clock::now() +
            (options.call_timeout.count() > 0 ? options.call_timeout : kHandoverTimeout);
        FERRY_RETURN_IF_ERROR(transport->FollowHandover(deadline));
        hello_message.getRoot<wire::Hello>().setHandoverSecret(reply.getHandoverSecret());
        FERRY_RETURN_IF_ERROR(WriteFrame(*transport, wire::FrameKind::HELLO, hello_message));
        continue;
      }
      if (reply.getQueuePosition() != 0) {
        const std::string pool = reply.getPool().size() > 0
                                     ? "pool " + std::string(reply.getPool().cStr())
                                     : std::string("the default pool");
        FERRY_LOG(kInfo) << "waiting for a GPU slice of " << pool << " on " << server_name
                         << ": position " << reply.getQueuePosition() << " in the queue";
        queued = true;
        continue;
      }
      *hello_reply = std::move(reader);
      break;
    } catch (const kj::Exception& e) {
      return Status::Malformed("bad handshake reply from " + server_name + ": " +
                               e.getDescription().cStr());
    }
  }
  if (!shm_boot_id.empty()) {
    const auto reply = (*hello_reply)->getRoot<wire::HelloReply>();
    FERRY_RETURN_IF_ERROR(FinishShm(reply, server_name, shm_required, options, &transport));
    // A ferryd that invites the client to shared memory has refused its
    // RDMA offer: whether or not the client came, nothing else moves.
    if (reply.hasShm()) rdma_connector.reset();
  }
  if (rdma_connector != nullptr) {
    FERRY_RETURN_IF_ERROR(FinishRdma(std::move(rdma_connector),
                                     (*hello_reply)->getRoot<wire::HelloReply>(), server_name,
                                     rdma_required, options, &transport));
  }
  transport->SetReadDeadline(kNoDeadline);  // the watchdog bounds calls from now on
  return Status::Ok();
}

Connection::Connection(std::unique_ptr<Transport> transport, std::string server_name,
                       ConnectionOptions options, Borrow borrow)
    : server_name_(std::move(server_name)),
      options_(options),
      borrow_(std::move(borrow)),
      transport_(std::move(transport)) {
  batch_words_.reserve(4096);
  batch_bulk_.reserve(64 << 10);
  background_reader_ = std::thread([this] { BackgroundReaderLoop(); });
  flusher_ = std::thread([this] { FlusherLoop(); });
  if (options_.call_timeout.count() > 0) watchdog_ = std::thread([this] { WatchdogLoop(); });
}

Connection::~Connection() {
  {
    std::lock_guard<std::mutex> lock(flush_mutex_);
    stopping_ = true;
  }
  flush_cv_.notify_all();
  {
    std::lock_guard<std::mutex> lock(reply_mutex_);
    stopping_reader_ = true;
  }
  background_cv_.notify_all();
  watchdog_cv_.notify_all();
  transport_->Shutdown();
  if (flusher_.joinable()) flusher_.join();
  if (background_reader_.joinable()) background_reader_.join();
  if (watchdog_.joinable()) watchdog_.join();
}

Status Connection::health() {
  if (!broken_flag_.load(std::memory_order_acquire)) return Status::Ok();
  std::lock_guard<std::mutex> lock(reply_mutex_);
  return broken_.ok() ? revoked_ : broken_;
}

uint64_t Connection::NextSeq() {
  std::lock_guard<std::mutex> lock(send_mutex_);
  return next_seq_;
}

uint64_t Connection::AppendLocked(wire::Call::Builder call, capnp::MessageBuilder& message,
                                  bool wants_reply, uint64_t bulk_bytes) {
  const uint64_t seq = next_seq_++;
  call.setSeq(seq);
  call.setWantsReply(wants_reply);
  call.setBulkBytes(bulk_bytes);

  auto segments = message.getSegmentsForOutput();
  const size_t table_words = (segments.size() + 2) / 2;
  const size_t start = batch_words_.size();
  size_t total = table_words;
  for (auto segment : segments) total += segment.size();
  batch_words_.resize(start + total);
  auto* table = reinterpret_cast<uint32_t*>(batch_words_.data() + start);
  std::memset(table, 0, table_words * sizeof(capnp::word));
  table[0] = static_cast<uint32_t>(segments.size() - 1);
  capnp::word* out = batch_words_.data() + start + table_words;
  for (size_t i = 0; i < segments.size(); ++i) {
    table[i + 1] = static_cast<uint32_t>(segments[i].size());
    std::memcpy(out, segments[i].begin(), segments[i].size() * sizeof(capnp::word));
    out += segments[i].size();
  }
  ++batch_calls_;
  return seq;
}

Status Connection::WriteBatchLocked(OutBytes extra) {
  // The frame header, written by hand: the message part is the batch's words.
  uint8_t header[kFrameHeaderBytes] = {};
  const uint32_t magic = wire::FRAME_MAGIC;
  const uint16_t kind = static_cast<uint16_t>(wire::FrameKind::CALL_BATCH);
  const uint32_t message_bytes = static_cast<uint32_t>(batch_words_.size() * sizeof(capnp::word));
  const uint64_t bulk_bytes = batch_bulk_.size() + extra.size;
  std::memcpy(header, &magic, 4);
  std::memcpy(header + 4, &kind, 2);
  std::memcpy(header + 8, &message_bytes, 4);
  std::memcpy(header + 16, &bulk_bytes, 8);
  // One gathered write: header, calls, small payloads copied into the batch,
  // and the large payload straight from the caller's memory.
  ConstBuffer buffers[4] = {{header, sizeof(header)},
                            {batch_words_.data(), message_bytes},
                            {batch_bulk_.data(), batch_bulk_.size()},
                            {extra.data, extra.size}};
  // Timed for the watchdog: a server that stopped reading blocks the write.
  write_started_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                          std::memory_order_relaxed);
  Status status = transport_->Write(std::span<const ConstBuffer>(buffers, extra.size > 0 ? 4 : 3));
  write_started_ns_.store(0, std::memory_order_relaxed);
  batch_words_.clear();
  batch_bulk_.clear();
  batch_calls_ = 0;
  if (status.ok()) return status;
  Fail(status);
  return health();  // the connection's one failure, which names the server
}

Status Connection::FlushLocked() {
  if (batch_calls_ == 0) return Status::Ok();
  return WriteBatchLocked({});
}

Status Connection::Send(Fill fill, OutBytes bulk, bool wants_reply, Waiter* waiter,
                        std::unique_ptr<Waiter> async_waiter, uint64_t* seq_out,
                        PendingGates gates) {
  const bool gate = gates.left > 0;
  // Small calls are built in a scratch segment on the stack: no allocation.
  // Built before the lock, so a refused call changes nothing.
  capnp::word scratch[64];
  std::memset(scratch, 0, sizeof(scratch));
  capnp::MallocMessageBuilder message(kj::arrayPtr(scratch, 64));
  auto call = message.initRoot<wire::Call>();
  fill(call);
  FERRY_RETURN_IF_ERROR(CheckWaits(call.which(), wants_reply, gate));
  bool wake_flusher = false;
  {
    std::unique_lock<std::mutex> lock(send_mutex_);
    // A move to another server holds the program's calls (FollowMove).
    send_cv_.wait(lock, [this] { return !moving_; });
    if (broken_flag_.load(std::memory_order_acquire)) return health();
    if (waiter != nullptr || async_waiter != nullptr || gate) {
      std::lock_guard<std::mutex> reply_lock(reply_mutex_);
      if (!broken_.ok()) return broken_;
      if (!revoked_.ok()) return revoked_;
      // Registered before the frame leaves, so the reply always finds it.
      const auto now = std::chrono::steady_clock::now();
      if (waiter != nullptr) {
        waiter->sent = now;
        waiters_[next_seq_] = waiter;
      }
      if (async_waiter != nullptr) async_waiter->sent = now;
      // Nobody waits for these replies: the background reader reads them
      // whenever no caller holds the reader role.
      const bool unclaimed = async_waiter != nullptr || gate;
      if (async_waiter != nullptr) async_copies_[next_seq_] = std::move(async_waiter);
      if (gate) gates_[next_seq_] = std::move(gates);
      if (unclaimed && !reader_busy_) background_cv_.notify_one();
    }
    const bool was_empty = batch_calls_ == 0;
    const uint64_t seq = AppendLocked(call, message, wants_reply, bulk.size);
    if (seq_out != nullptr) *seq_out = seq;
    if (bulk.size > kCopyIntoBatchLimit) return WriteBatchLocked(bulk);
    if (bulk.size > 0) {
      const auto* p = static_cast<const uint8_t*>(bulk.data);
      batch_bulk_.insert(batch_bulk_.end(), p, p + bulk.size);
    }
    if (wants_reply || batch_words_.size() >= kBatchWordsLimit ||
        batch_bulk_.size() >= kBatchBulkLimit || batch_calls_ >= kBatchCallsLimit) {
      return FlushLocked();
    }
    wake_flusher = was_empty;
  }
  if (wake_flusher) {
    {
      std::lock_guard<std::mutex> lock(flush_mutex_);
      flush_requested_ = true;
    }
    flush_cv_.notify_one();
  }
  return Status::Ok();
}

Status Connection::Post(const Fill& fill, OutBytes bulk, uint64_t* seq_out) {
  return Send(fill, bulk, /*wants_reply=*/false, nullptr, nullptr, seq_out, {});
}

namespace {

// A call that waits, made from inside a host callback: CUDA forbids it, and
// waiting there for work queued behind the callback's own gate would never
// end, so it is refused.
Status RefuseWaitInHostCallback() {
  static std::once_flag logged;
  std::call_once(logged, [] {
    FERRY_LOG(kWarning) << "a host callback called a CUDA function that waits for the server; "
                           "CUDA forbids CUDA calls in host callbacks, so ferry refuses it "
                           "(CUDA_ERROR_NOT_PERMITTED)";
  });
  return Status::PermissionDenied("CUDA calls that wait are not permitted in a host callback");
}

}  // namespace

Status Connection::Call(const Fill& fill, OutBytes bulk, InBytes reply_bulk,
                        const OnReply& on_reply, uint64_t* seq_out) {
  if (HostCallbackThread::OnThisThread()) return RefuseWaitInHostCallback();
  Waiter waiter;
  waiter.bulk = reply_bulk;
  uint64_t seq = 0;
  Status status = Send(fill, bulk, /*wants_reply=*/true, &waiter, nullptr, &seq, {});
  if (seq_out != nullptr) *seq_out = seq;
  if (!status.ok()) {
    std::lock_guard<std::mutex> lock(reply_mutex_);
    waiters_.erase(seq);
    return status;
  }
  {
    std::unique_lock<std::mutex> lock(reply_mutex_);
    WaitUntil(lock, [&] { return waiter.done; });
    if (!waiter.done) {  // broken while nobody could read for it
      waiters_.erase(seq);
      return broken_;
    }
  }
  if (!waiter.status.ok() || !on_reply) return waiter.status;
  try {
    capnp::FlatArrayMessageReader reader(waiter.words, PeerReaderOptions());
    return on_reply(reader.getRoot<wire::Reply>());
  } catch (const kj::Exception& e) {
    return Status::Malformed("bad reply from " + server_name_ + ": " + e.getDescription().cStr());
  }
}

Status Connection::PostExpectingBytes(const Fill& fill, InBytes reply_bulk, StreamKey stream) {
  auto waiter = std::make_unique<Waiter>();
  waiter->bulk = reply_bulk;
  waiter->async = true;
  waiter->stream = stream;
  return Send(fill, {}, /*wants_reply=*/true, nullptr, std::move(waiter), nullptr, {});
}

Status Connection::PostHostGate(const Fill& fill, HostFunction fn) {
  if (!fn) return Status::InvalidArgument("null host function");
  return Send(fill, {}, /*wants_reply=*/false, nullptr, nullptr, nullptr,
              PendingGates{std::move(fn), 1});
}

Status Connection::PostOpenableGate(const Fill& fill, GateReached reached) {
  if (!reached) return Status::InvalidArgument("null gate handler");
  // Called once whichever way the gate ends: reached, refused by the
  // server, lost with the connection (Fail, Revoke) or never sent (below).
  auto called = std::make_shared<std::atomic<bool>>(false);
  GateReached once = [called, reached = std::move(reached)](Status status,
                                                            std::function<void()> open) {
    if (!called->exchange(true)) reached(std::move(status), std::move(open));
  };
  Status sent = Send(fill, {}, /*wants_reply=*/false, nullptr, nullptr, nullptr,
                     PendingGates{nullptr, 1, once});
  if (!sent.ok()) once(sent, {});
  return sent;
}

void Connection::RegisterHostFunction(uint64_t id, HostFunction fn) {
  std::lock_guard<std::mutex> lock(reply_mutex_);
  host_functions_[id] = std::move(fn);
}

Status Connection::PostHostGates(const Fill& fill, uint32_t gates) {
  if (gates == 0) return Status::InvalidArgument("a call with host gates carries at least one");
  return Send(fill, {}, /*wants_reply=*/false, nullptr, nullptr, nullptr,
              PendingGates{nullptr, gates});
}

void Connection::RunHostFunction(uint64_t seq, uint32_t index, HostFunction fn, Status status,
                                 bool held, bool stream_failed) {
  if (!held && !stream_failed) {
    // The server refused the gate call; the session latched the error, and
    // the next call that waits reports it. The function never runs, as it
    // would not after a failed cuLaunchHostFunc.
    FERRY_LOG(kWarning) << "a host callback will not run: " << status.message();
    return;
  }
  if (!fn) {
    // A gate naming a host function never registered: a server bug. The
    // stream must not stay held.
    FERRY_LOG(kError) << "a graph host node names an unknown host function; it is skipped";
    if (held) (void)OpenGate(seq, index);
    return;
  }
  Status posted = host_callbacks_.Post(
      [this, seq, index, fn = std::move(fn), status = std::move(status), held, stream_failed] {
        try {
          fn(status, stream_failed);
        } catch (...) {
          FERRY_LOG(kError) << "a host callback threw; its stream goes on";
        }
        if (held) (void)OpenGate(seq, index);
      });
  if (!posted.ok()) {
    // Without the thread the function cannot run; the stream must not stay
    // held, or everything behind it would wait forever.
    FERRY_LOG(kError) << posted.message() << "; a host callback is skipped";
    if (held) (void)OpenGate(seq, index);
  }
}

Status Connection::OpenGate(uint64_t seq, uint32_t index) {
  capnp::MallocMessageBuilder message(16);
  auto open = message.initRoot<wire::GateOpen>();
  open.setGate(seq);
  open.setIndex(index);
  std::lock_guard<std::mutex> lock(send_mutex_);
  {
    // Taking reply_mutex_ here, after the host function ran, also orders the
    // function's effects before every reply the server sends once the gate
    // opens (say, a synchronize of later work): the reader takes it to hand
    // such a reply over, and can only do so after this.
    std::lock_guard<std::mutex> reply_lock(reply_mutex_);
    if (!broken_.ok()) return broken_;
  }
  Status status = WriteFrame(*transport_, wire::FrameKind::GATE_OPEN, message);
  if (!status.ok()) Fail(status);
  return status;
}

Status Connection::WaitForEarlierCopies(uint64_t before_seq) {
  if (HostCallbackThread::OnThisThread()) return RefuseWaitInHostCallback();
  std::unique_lock<std::mutex> lock(reply_mutex_);
  WaitUntil(lock,
            [&] { return async_copies_.empty() || async_copies_.begin()->first >= before_seq; });
  if (!broken_.ok()) return broken_;
  Status error = async_error_;
  async_error_ = Status::Ok();
  return error;
}

Status Connection::WaitForEarlierCopiesOn(StreamKey stream, uint64_t before_seq) {
  if (HostCallbackThread::OnThisThread()) return RefuseWaitInHostCallback();
  std::unique_lock<std::mutex> lock(reply_mutex_);
  const std::pair<uint64_t, uint64_t> key{stream.ctx, stream.stream};
  WaitUntil(lock, [&] {
    for (auto it = async_copies_.begin(); it != async_copies_.end() && it->first < before_seq;
         ++it) {
      if (it->second->stream == stream) return false;
    }
    auto deps = copy_dependencies_.find(key);
    if (deps == copy_dependencies_.end()) return true;
    for (const auto& [since, copy] : deps->second) {
      if (since < before_seq && async_copies_.count(copy) != 0) return false;
    }
    return true;
  });
  if (!broken_.ok()) return broken_;
  if (auto deps = copy_dependencies_.find(key); deps != copy_dependencies_.end()) {
    std::erase_if(deps->second, [&](const auto& d) { return async_copies_.count(d.second) == 0; });
    if (deps->second.empty()) copy_dependencies_.erase(deps);
  }
  Status error = async_error_;
  async_error_ = Status::Ok();
  return error;
}

std::vector<uint64_t> Connection::CopiesBefore(StreamKey stream, uint64_t before_seq) {
  std::vector<uint64_t> copies;
  std::lock_guard<std::mutex> lock(reply_mutex_);
  for (auto it = async_copies_.begin(); it != async_copies_.end() && it->first < before_seq; ++it) {
    if (it->second->stream == stream) copies.push_back(it->first);
  }
  auto deps = copy_dependencies_.find({stream.ctx, stream.stream});
  if (deps != copy_dependencies_.end()) {
    for (const auto& [since, copy] : deps->second) {
      if (since < before_seq && async_copies_.count(copy) != 0) copies.push_back(copy);
    }
  }
  return copies;
}

void Connection::AddCopyDependencies(StreamKey stream, uint64_t since_seq,
                                     const std::vector<uint64_t>& copies) {
  if (copies.empty()) return;  // the common case: no lock taken
  std::lock_guard<std::mutex> lock(reply_mutex_);
  bool added = false;
  for (uint64_t copy : copies) {
    if (async_copies_.count(copy) == 0) continue;
    if (!added) {
      // Something to keep: drop what landed everywhere first, so the table
      // stays as small as the copies in flight (destroyed streams included).
      for (auto it = copy_dependencies_.begin(); it != copy_dependencies_.end();) {
        std::erase_if(it->second,
                      [&](const auto& d) { return async_copies_.count(d.second) == 0; });
        it = it->second.empty() ? copy_dependencies_.erase(it) : std::next(it);
      }
      added = true;
    }
    copy_dependencies_[{stream.ctx, stream.stream}].emplace_back(since_seq, copy);
  }
}

Status Connection::WaitForCopies(const std::vector<uint64_t>& copies) {
  if (HostCallbackThread::OnThisThread()) return RefuseWaitInHostCallback();
  std::unique_lock<std::mutex> lock(reply_mutex_);
  WaitUntil(lock, [&] {
    for (uint64_t copy : copies) {
      if (async_copies_.count(copy) != 0) return false;
    }
    return true;
  });
  if (!broken_.ok()) return broken_;
  Status error = async_error_;
  async_error_ = Status::Ok();
  return error;
}

Status Connection::Flush() {
  std::lock_guard<std::mutex> lock(send_mutex_);
  return FlushLocked();
}

void Connection::FlusherLoop() {
  // sleep_for below should sleep about what it asks: the default timer slack
  // (50 us) would more than triple the delay.
  prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(flush_mutex_);
      flush_cv_.wait(lock, [this] { return flush_requested_ || stopping_; });
      if (stopping_) return;
      flush_requested_ = false;
    }
    // Let a burst of posts (a launch loop) accumulate into one frame.
    {
      std::unique_lock<std::mutex> lock(flush_mutex_);
      if (flush_cv_.wait_for(lock, options_.flush_delay, [this] { return stopping_; })) return;
    }
    std::lock_guard<std::mutex> lock(send_mutex_);
    (void)FlushLocked();
  }
}

void Connection::WaitUntil(std::unique_lock<std::mutex>& lock, absl::FunctionRef<bool()> done) {
  while (!done() && broken_.ok()) {
    if (!reader_busy_) {
      ReadOneReplyAsReader(lock);
    } else {
      ++sleepers_;
      reply_cv_.wait(lock);
      --sleepers_;
    }
  }
  // The background reader stands aside while callers wait; once none does,
  // asynchronous copies still in flight are its to read.
  if (!reader_busy_ && sleepers_ == 0 && UnclaimedRepliesPendingLocked()) {
    background_cv_.notify_one();
  }
}

void Connection::ReleaseReaderLocked() {
  reader_busy_ = false;
  // A sleeper's reply may have arrived, or it must take the role over.
  if (sleepers_ > 0) reply_cv_.notify_all();
  if (UnclaimedRepliesPendingLocked()) background_cv_.notify_one();
}

void Connection::ReadOneReplyAsReader(std::unique_lock<std::mutex>& lock) {
  reader_busy_ = true;
  lock.unlock();
  Status status = ReadOneReply();
  if (!status.ok()) Fail(status);
  lock.lock();
  ReleaseReaderLocked();
}

void Connection::BackgroundReaderLoop() {
  std::unique_lock<std::mutex> lock(reply_mutex_);
  for (;;) {
    // While nobody reads, it also looks now and then whether the server
    // said something unasked (a notice: a move to another server, which the
    // client must answer even when the program is idle, or a preemption),
    // or went away.
    const bool woken = background_cv_.wait_for(lock, kIdleLookInterval, [this] {
      return stopping_reader_ || !broken_.ok() ||
             (UnclaimedRepliesPendingLocked() && !reader_busy_ && sleepers_ == 0);
    });
    if (stopping_reader_ || !broken_.ok()) return;
    if (!woken && (reader_busy_ || sleepers_ > 0 || !transport_->PeerGoneOrTalking())) continue;
    ReadOneReplyAsReader(lock);
  }
}

Status Connection::ReadOneReply() {
  wire::FrameKind kind;
  kj::Array<capnp::word> words;
  uint64_t bulk_bytes = 0;
  FERRY_RETURN_IF_ERROR(ReadFrameHead(*transport_, &kind, &words, &bulk_bytes));
  last_heard_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                       std::memory_order_relaxed);
  if (kind == wire::FrameKind::KEEPALIVE && bulk_bytes == 0) return Status::Ok();
  if (kind != wire::FrameKind::REPLY) {
    return Status::Malformed("unexpected frame kind " + std::to_string(static_cast<int>(kind)));
  }
  uint64_t seq = 0;
  Status reply_status;
  bool gate_held = false, gate_stream_failed = false;
  uint32_t gate_index = 0;
  uint64_t gate_function = 0;
  bool move_notice = false;
  try {
    capnp::FlatArrayMessageReader reader(words, PeerReaderOptions());
    auto reply = reader.getRoot<wire::Reply>();
    seq = reply.getSeq();
    move_notice = reply.isMoveNotice();
    reply_status = StatusFromWire(reply.getStatus());
    if (reply.isGateReached()) {
      gate_held = reply.getGateReached().getHeld();
      gate_stream_failed = reply.getGateReached().getStreamFailed();
      gate_index = reply.getGateReached().getIndex();
      gate_function = reply.getGateReached().getHostFunction();
    }
    if (reply.getLatchedFromSeq() != 0) {
      // Nobody else would ever see why an asynchronous call failed.
      FERRY_LOG(kWarning) << "an asynchronous call failed on " << server_name_ << ": "
                          << reply_status.message();
    }
  } catch (const kj::Exception& e) {
    return Status::Malformed(std::string("bad reply: ") + e.getDescription().cStr());
  }
  if (seq == 0 && bulk_bytes == 0 && move_notice) {
    // A notice: the server moves the session to another server.
    FollowMove();
    return Status::Ok();
  }
  if (seq == 0 && bulk_bytes == 0) {
    // A notice, not an answer: the server took the session's devices away.
    Revoke(reply_status);
    return Status::Ok();
  }
  Waiter* waiter = nullptr;
  {
    std::lock_guard<std::mutex> lock(reply_mutex_);
    auto it = waiters_.find(seq);
    if (it != waiters_.end()) {
      waiter = it->second;
    } else {
      auto async = async_copies_.find(seq);
      if (async != async_copies_.end()) waiter = async->second.get();
    }
  }
  // Bulk bytes go straight into the waiter's buffer; the waiter is not
  // touched by anyone else until it is marked done below.
  if (bulk_bytes > 0) {
    if (waiter != nullptr && waiter->bulk.size == bulk_bytes) {
      FERRY_RETURN_IF_ERROR(transport_->ReadExact(waiter->bulk.data, bulk_bytes));
    } else {
      reply_status = Status::Internal("reply " + std::to_string(seq) + " carried " +
                                      std::to_string(bulk_bytes) + " bytes, expected " +
                                      std::to_string(waiter ? waiter->bulk.size : 0));
      while (bulk_bytes > 0) {
        discard_.resize(std::min<uint64_t>(bulk_bytes, 1 << 20));
        FERRY_RETURN_IF_ERROR(transport_->ReadExact(discard_.data(), discard_.size()));
        bulk_bytes -= discard_.size();
      }
    }
  } else if (waiter != nullptr && waiter->bulk.size > 0 && reply_status.ok()) {
    reply_status = Status::Internal("reply " + std::to_string(seq) + " carried no bytes");
  }
  HostFunction gate;
  GateReached openable;
  bool gate_reached = false;
  {
    std::lock_guard<std::mutex> lock(reply_mutex_);
    auto it = waiters_.find(seq);
    if (it != waiters_.end()) {
      it->second->status = reply_status;
      it->second->words = std::move(words);
      it->second->done = true;
      waiters_.erase(it);
    } else if (auto async = async_copies_.find(seq); async != async_copies_.end()) {
      if (!reply_status.ok() && async_error_.ok()) async_error_ = reply_status;
      async_copies_.erase(async);
    } else if (auto g = gates_.find(seq); g != gates_.end()) {
      gate_reached = true;
      PendingGates& pending = g->second;
      if (pending.reached) {
        openable = std::move(pending.reached);
      } else if (pending.fn) {
        gate = std::move(pending.fn);  // a hostGate call's one gate
      } else if (auto f = host_functions_.find(gate_function); f != host_functions_.end()) {
        gate = f->second;
      }
      // A refused graph launch answers once for all of its gates.
      if (gate_index == wire::ALL_GATES_OF_THE_CALL || --pending.left == 0) gates_.erase(g);
    }
  }
  // Replies are read in the order the server sent them, so the bytes of
  // every copy the gate's stream waited for have landed by now. The host
  // function runs on the host-callback thread, never on this one.
  if (gate_reached && openable) {
    if (gate_held) {
      openable(Status::Ok(), [this, seq, index = gate_index] { (void)OpenGate(seq, index); });
    } else {
      openable(reply_status.ok() ? Status::Internal("gate not held") : reply_status, {});
    }
  } else if (gate_reached) {
    RunHostFunction(seq, gate_index, std::move(gate), std::move(reply_status), gate_held,
                    gate_stream_failed);
  }
  return Status::Ok();
}

void Connection::Revoke(const Status& notice) {
  std::vector<GateReached> revoked_gates;
  Status revoked;
  {
    std::lock_guard<std::mutex> lock(reply_mutex_);
    if (!broken_.ok() || !revoked_.ok()) return;
    revoked_ = notice.ok() ? Status::Cuda(CUDA_ERROR_DEVICE_UNAVAILABLE,
                                          "ferryd at " + ServerNameLocked() +
                                              " took the devices away")
                           : notice;
    broken_flag_.store(true, std::memory_order_release);
    FERRY_LOG(kError) << "ferryd at " << ServerNameLocked() << ": " << revoked_.message()
                      << "; from now on every CUDA call fails with CUDA_ERROR_DEVICE_UNAVAILABLE";
    // The server answers no call that wants no reply from now on: gates
    // ferry opens itself are told here (the server opened its side).
    for (auto it = gates_.begin(); it != gates_.end();) {
      if (it->second.reached) {
        revoked_gates.push_back(std::move(it->second.reached));
        it = gates_.erase(it);
      } else {
        ++it;
      }
    }
    revoked = revoked_;
  }
  for (GateReached& reached : revoked_gates) reached(revoked, {});
  // Calls in flight still get their answers from the server (the same error).
  reply_cv_.notify_all();
}

void Connection::WatchdogLoop() {
  const auto timeout = options_.call_timeout;
  std::unique_lock<std::mutex> lock(reply_mutex_);
  while (!stopping_reader_ && broken_.ok()) {
    // The oldest reply still awaited (seqs grow with time, so each map's
    // first entry) and the write in progress, if any.
    auto oldest = std::chrono::steady_clock::time_point::max();
    if (!waiters_.empty()) oldest = std::min(oldest, waiters_.begin()->second->sent);
    if (!async_copies_.empty()) oldest = std::min(oldest, async_copies_.begin()->second->sent);
    if (oldest != std::chrono::steady_clock::time_point::max()) {
      // A reply is overdue only after that long without a word from the
      // server (keepalives included) as well.
      oldest = std::max(oldest,
                        std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(
                            last_heard_ns_.load(std::memory_order_relaxed))));
    }
    if (const int64_t ns = write_started_ns_.load(std::memory_order_relaxed); ns != 0) {
      oldest = std::min(
          oldest, std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(ns)));
    }
    const auto now = std::chrono::steady_clock::now();
    if (oldest != std::chrono::steady_clock::time_point::max() && now - oldest >= timeout) {
      lock.unlock();
      Fail(Status::Disconnected("no answer for " + FormatDuration(timeout) +
                                " (FERRY_CALL_TIMEOUT): the server is stopped, overloaded or "
                                "unreachable"));
      return;
    }
    // Nothing awaited: whatever is sent from now on is due a full timeout
    // later, so looking again then is soon enough.
    watchdog_cv_.wait_until(lock, oldest == std::chrono::steady_clock::time_point::max()
                                      ? now + timeout
                                      : oldest + timeout);
  }
}

void Connection::FollowMove() {
  if (!options_.connect_to) return;  // the Hello did not offer to follow: a confused server
  Waiter marker;
  {
    std::lock_guard<std::mutex> send(send_mutex_);
    if (moving_) return;  // a second notice while this move runs
    {
      std::lock_guard<std::mutex> lock(reply_mutex_);
      if (!broken_.ok() || !revoked_.ok()) return;
      marker.sent = std::chrono::steady_clock::now();
      waiters_[next_seq_] = &marker;
    }
    // After everything queued: every call before it is executed there. The
    // program's calls wait from here on (Send); host gates still open.
    moving_ = true;
    capnp::MallocMessageBuilder message(16);
    auto call = message.initRoot<wire::Call>();
    call.initMoveMarker();
    AppendLocked(call, message, /*wants_reply=*/true, 0);
    if (Status flushed = FlushLocked(); !flushed.ok()) Fail(flushed);
  }
  // Whatever happens, the program's calls go on (here or there) after this.
  struct Resume {
    Connection& c;
    ~Resume() {
      {
        std::lock_guard<std::mutex> send(c.send_mutex_);
        c.moving_ = false;
      }
      c.send_cv_.notify_all();
    }
  } resume{*this};
  // This thread keeps the reader role: it hands the replies of the calls
  // before the marker to their waiters, up to the marker's own.
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(reply_mutex_);
      if (marker.done) break;
    }
    if (Status read = ReadOneReply(); !read.ok()) {
      Fail(read);
      return;
    }
    reply_cv_.notify_all();  // a waiter whose reply came
  }
  std::string here;
  {
    std::lock_guard<std::mutex> lock(reply_mutex_);
    here = ServerNameLocked();
  }
  if (!marker.status.ok()) {
    FERRY_LOG(kWarning) << "ferryd at " << here
                        << " did not move the session: " << marker.status.message();
    return;
  }
  std::string address, ticket;
  try {
    capnp::FlatArrayMessageReader reader(marker.words, PeerReaderOptions());
    auto reply = reader.getRoot<wire::Reply>();
    if (!reply.isMoved()) {
      Fail(Status::Malformed("ferryd answered the move's marker without saying where to"));
      return;
    }
    address = reply.getMoved().getAddress().cStr();
    auto bytes = reply.getMoved().getTicket();
    ticket.assign(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
  } catch (const kj::Exception& e) {
    Fail(Status::Malformed(std::string("bad answer to the move's marker: ") +
                           e.getDescription().cStr()));
    return;
  }
  std::unique_ptr<Transport> next;
  std::unique_ptr<capnp::MessageReader> hello_reply;
  kj::Array<capnp::word> hello_words;
  Borrow borrow = borrow_;
  borrow.resume_ticket = ticket;
  Status joined = options_.connect_to(address, &next);
  if (joined.ok()) {
    joined = Handshake(&next, address, borrow, options_, nullptr, &hello_reply, &hello_words);
  }
  std::lock_guard<std::mutex> send(send_mutex_);
  if (!joined.ok()) {
    // The source still has everything: say why, and carry on there.
    FERRY_LOG(kWarning) << "the session stays on ferryd at " << here << ": ferryd at " << address
                        << " did not take it: " << joined.message();
    capnp::MallocMessageBuilder message;
    auto call = message.initRoot<wire::Call>();
    call.initMoveRefused().setReason(joined.message());
    AppendLocked(call, message, /*wants_reply=*/false, 0);
    if (Status flushed = FlushLocked(); !flushed.ok()) Fail(flushed);
    return;
  }
  const uint64_t session = hello_reply->getRoot<wire::HelloReply>().getSessionId();
  std::unique_ptr<Transport> old;
  {
    std::unique_lock<std::shared_mutex> lock(transport_mutex_);
    old = std::move(transport_);
    transport_ = std::move(next);
  }
  // Nobody else holds it: the send lock, the reader role and
  // transport_mutex_ are all this thread's. The source's session ends with
  // this connection and frees everything.
  old->Shutdown();
  old.reset();
  last_heard_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                       std::memory_order_relaxed);
  FERRY_LOG(kInfo) << "the session moved from ferryd at " << here << " to ferryd at " << address
                   << " (session " << session << " there, over " << transport_->Description()
                   << ")";
  std::lock_guard<std::mutex> lock(reply_mutex_);
  moved_to_ = address;
}

void Connection::Fail(const Status& status) {
  std::map<uint64_t, PendingGates> gates;
  Status broken;
  {
    std::lock_guard<std::mutex> lock(reply_mutex_);
    if (!broken_.ok()) return;
    broken_ = Status::Disconnected("lost connection to ferryd at " + ServerNameLocked() + ": " +
                                   status.message());
    broken_flag_.store(true, std::memory_order_release);
    FERRY_LOG(kError) << broken_.message();
    broken = broken_;
    for (auto& [seq, waiter] : waiters_) {
      waiter->status = broken_;
      waiter->done = true;
    }
    waiters_.clear();
    async_copies_.clear();
    gates.swap(gates_);
  }
  reply_cv_.notify_all();
  background_cv_.notify_all();
  {
    std::shared_lock<std::shared_mutex> lock(transport_mutex_);
    transport_->Shutdown();
  }
  // Their streams will never reach them: a lost device, as far as the
  // program can tell (cuStreamAddCallback reports it, cuLaunchHostFunc skips).
  // Graph host nodes not reached are skipped (their launch is lost with it).
  for (auto& [seq, pending] : gates) {
    if (pending.reached) pending.reached(broken, {});
    if (!pending.fn) continue;
    RunHostFunction(seq, 0, std::move(pending.fn), broken, /*held=*/false,
                    /*stream_failed=*/true);
  }
}

}  // namespace ferry::client
