#include "server/session.h"

#include <cuda.h>
#include <kj/exception.h>

// The serving core of a Session: handshake, the two serving roles (reader and
// executor), call batches and their payload, replies, host gates and
// dispatch. The handlers live in session_<area>.cc by API area.

#include <algorithm>
#include <chrono>
#include <cstring>
#include <system_error>
#include <utility>
#include <vector>

#include "common/log.h"
#include "common/shm_transport.h"
#include "server/session_internal.h"
#include "server/session_log.h"

namespace ferry::server {
namespace {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

using session_internal::Alias;

// Back-pressure on reading while the executor is behind: past this many
// bytes of queued frames the reader waits, unless a host gate is closed (its
// gateOpen may be what the executor waits for, so the reader must go on).
// The session's buffer limit (SetBufferLimit) bounds what it holds in all.
constexpr uint64_t kInboxSoftLimit = 64ull << 20;

uint64_t FrameBytes(const Frame& frame) {
  return frame.words.size() * sizeof(capnp::word) + frame.bulk.size;
}

}  // namespace

Status Session::InvalidContextStatus(std::string message) {
  return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, std::move(message));
}

Session::Session(uint64_t id, std::unique_ptr<Transport> transport, backend::GpuBackend& backend,
                 wire::Hello::Reader hello, ModuleImages* module_cache)
    : Session(id, std::move(transport), backend, hello, WholeDevices(backend), module_cache) {}

Session::Session(uint64_t id, std::unique_ptr<Transport> transport, backend::GpuBackend& backend,
                 wire::Hello::Reader hello, SessionGrant grant, ModuleImages* module_cache)
    : id_(id),
      transport_(std::make_unique<CountingTransport>(std::move(transport))),
      backend_(backend),
      module_cache_(module_cache),
      pid_(hello.getPid()),
      host_(hello.getHost().cStr()),
      program_(hello.getProgram().cStr()),
      since_unix_ms_(NowUnixMs()),
      grant_(WithComputeMechanisms(backend, std::move(grant))),
      shares_(grant_),
      tenant_(backend.CreateTenant()),
      keepalive_period_(hello.getKeepaliveMs() == 0
                            ? std::chrono::milliseconds(0)
                            : std::chrono::milliseconds(
                                  std::max<uint32_t>(hello.getKeepaliveMs(), kMinKeepaliveMs))),
      follows_moves_(hello.getFollowsMoves()) {
  bytes_awaiting_release_ = std::make_unique<std::atomic<uint64_t>[]>(grant_.devices.size());
  if (hello.hasRdma()) {
    rdma::RdmaEndpoint offer;
    rdma_offer_status_ = rdma::EndpointFromWire(hello.getRdma(), &offer);
    rdma_offer_ = std::move(offer);
  }
  if (hello.hasShm()) shm_offer_boot_id_ = hello.getShm().getBootId().cStr();
}

Session::~Session() {
  // Run() has freed everything; wait for any completion still writing.
  std::unique_lock<std::mutex> lock(pending_mutex_);
  pending_cv_.wait(lock, [this] { return pending_completions_ == 0; });
}

void Session::Stop() {
  shares_.Interrupt();
  transport_->Shutdown();
}

bool Session::Preempt(const std::string& reason) {
  shares_.Interrupt();  // a throttled launch stops waiting
  {
    // A batch waiting for device memory or for its slices stops waiting.
    std::lock_guard<std::mutex> lock(serve_mutex_);
    preempt_requested_.store(true);
  }
  serve_cv_.notify_all();
  // A batch blocked behind a closed host gate holds exec_mutex_ until the
  // client opens the gate, which it may never do; the devices are going
  // away, so the gates open now (a later gateOpen for them is harmless).
  std::map<GateKey, std::shared_ptr<backend::HostGate>> gates;
  {
    std::lock_guard<std::mutex> lock(serve_mutex_);
    gates.swap(gates_);
  }
  for (auto& [key, gate] : gates) gate->Open();
  // A batch still executing may be waiting for its client (payload bytes
  // that never come); the devices must not stay with it. Past the wait, the
  // session ends instead: Run frees everything once its thread sees the
  // connection gone, and the client gets a lost connection, not a notice.
  std::unique_lock<std::timed_mutex> exec(exec_mutex_, std::defer_lock);
  if (!exec.try_lock_for(preempt_batch_wait_)) {
    FERRY_LOG(kWarning) << "session " << id_ << " (pid " << pid_ << ", " << program_ << "@" << host_
                        << "): " << reason << "; its current batch did not end within "
                        << absl::FormatDuration(absl::FromChrono(preempt_batch_wait_))
                        << ", so the session is closed";
    SetEndReasonIfUnset("preempted: " + reason);
    Stop();
    return false;
  }
  if (!revoked_.ok()) return true;
  SetEndReasonIfUnset("preempted: " + reason);
  revoked_ = Status::Cuda(CUDA_ERROR_DEVICE_UNAVAILABLE, reason);
  FERRY_LOG(kWarning) << "session " << id_ << " (pid " << pid_ << ", " << program_ << "@" << host_
                      << "): " << reason << "; freeing all its resources";
  AbandonQueuedWork();
  FreeEverything();
  // The notice: seq 0 answers no call. Before the handshake, Run answers it.
  if (handshake_answered_) SendReply(0, revoked_);
  return true;
}

void Session::SetEndReasonIfUnset(const std::string& reason) {
  std::lock_guard<std::mutex> lock(end_reason_mutex_);
  if (end_reason_.empty()) end_reason_ = reason;
}

void Session::AbandonQueuedWork() {
  contexts_.ForEach([&](uint64_t, ContextEntry& c) { backend_.AbandonQueuedWork(*c.context); });
}

SessionInfo Session::Info() const {
  SessionInfo info;
  info.id = id_;
  info.client = transport_->PeerName();
  info.transport = transport_->Description();
  info.pid = pid_;
  info.host = host_;
  info.program = program_;
  info.bytes_allocated = shares_.bytes_allocated();
  info.allocations = shares_.allocations();
  info.contexts = static_cast<uint32_t>(contexts_.size());
  info.streams = static_cast<uint32_t>(streams_.size());
  info.events = static_cast<uint32_t>(events_.size());
  info.modules = static_cast<uint32_t>(modules_.size());
  info.since_unix_ms = since_unix_ms_;
  info.allocations_waited_for_releases = allocations_waited_for_releases_.load();
  for (size_t i = 0; i < grant_.devices.size(); ++i) {
    info.device_bytes.push_back(shares_.device_bytes(static_cast<int>(i)));
  }
  info.module_image_bytes_received = module_image_bytes_received_.load();
  info.token_name = token_name_;
  info.token_id = token_id_;
  info.bytes_from_client = transport_->bytes_read();
  info.bytes_to_client = transport_->bytes_written();
  info.peak_bytes_allocated = shares_.peak_bytes_allocated();
  info.parked = parked_.load();
  info.parked_bytes = parked_bytes_.load();
  info.parks = parks_.load();
  info.unparks = unparks_.load();
  info.bytes_parked_total = bytes_parked_total_.load();
  info.bytes_unparked_total = bytes_unparked_total_.load();
  info.park_seconds = static_cast<double>(park_ns_.load()) / 1e9;
  info.unpark_seconds = static_cast<double>(unpark_ns_.load()) / 1e9;
  info.slices_released = slices_released_.load();
  info.releases = releases_.load();
  info.reborrows = reborrows_.load();
  info.moves = moves_.load();
  // A batch executing now (a long synchronous call) is not idleness.
  if (const int64_t last = last_call_ns_.load(); last != 0 && !in_batch_.load()) {
    info.idle_ms = (session_internal::SteadyNowNs() - last) / 1000000;
  }
  {
    std::lock_guard<std::mutex> lock(end_reason_mutex_);
    info.end_reason = end_reason_;
  }
  info.started = started_.load();
  info.calls = calls_.load(std::memory_order_relaxed);
  info.launches = launches_.load(std::memory_order_relaxed);
  info.frames_from_client = frames_from_client_.load(std::memory_order_relaxed);
  info.frames_to_client = frames_to_client_.load(std::memory_order_relaxed);
  info.sync_calls = sync_calls_.Snapshot();
  return info;
}

void Session::Run() {
  {
    std::lock_guard<std::timed_mutex> exec(exec_mutex_);
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<wire::HelloReply>();
    if (!revoked_.ok()) {
      StatusToWire(revoked_, reply.initStatus());
      std::lock_guard<std::mutex> lock(write_mutex_);
      if (WriteFrame(*transport_, wire::FrameKind::HELLO_REPLY, message).ok()) {
        frames_to_client_.fetch_add(1, std::memory_order_relaxed);
      }
      return;
    }
    if (arrival_.has_value()) {
      // From another server: its objects and memory first, at the same ids
      // and addresses; the client goes back to the source when this fails.
      Status arrived = Arrive();
      arrival_.reset();
      if (!arrived.ok()) {
        FERRY_LOG(kWarning) << "session " << id_ << " (" << program_ << "@" << host_
                            << ") cannot arrive: " << arrived.message();
        FreeEverything();
        SetEndReasonIfUnset("could not arrive: " + arrived.message());
        StatusToWire(arrived.WithContext("this server cannot take the session"),
                     reply.initStatus());
        std::lock_guard<std::mutex> lock(write_mutex_);
        if (WriteFrame(*transport_, wire::FrameKind::HELLO_REPLY, message).ok()) {
          frames_to_client_.fetch_add(1, std::memory_order_relaxed);
        }
        return;
      }
    }
    handshake_answered_ = true;
    StatusToWire(Status::Ok(), reply.initStatus());
    // Shared memory first: a client on this host that offers it never needs
    // RDMA.
    std::unique_ptr<ShmRendezvous> shm;
    if (shm_offer_boot_id_.has_value()) {
      Status opened = OpenShmRendezvous(&shm);
      if (opened.ok()) {
        auto invite = reply.initShm();
        invite.setSocket(shm->name());
        invite.setNonce(kj::arrayPtr(shm->nonce().data(), shm->nonce().size()));
      } else {
        reply.setShmRefusal(opened.message());
        // A client on another host is the usual case; a socket that cannot
        // be made is ferryd's trouble.
        if (opened.code() == StatusCode::kInternal) {
          FERRY_LOG(kWarning) << "session " << id_ << " (" << program_ << "@" << host_
                              << "): stays on " << transport_->Description()
                              << "; shared memory cannot be set up: " << opened.message();
        } else {
          FERRY_LOG(kDebug) << "session " << id_ << " (" << program_ << "@" << host_
                            << "): stays on " << transport_->Description()
                            << "; its shared-memory offer is refused: " << opened.message();
        }
      }
    }
    std::unique_ptr<rdma::RdmaConnector> rdma;
    if (rdma_offer_.has_value() && shm != nullptr) {
      reply.setRdmaRefusal("the client is on ferryd's host: shared memory instead");
    } else if (rdma_offer_.has_value()) {
      Status accepted = AcceptRdma(&rdma);
      if (accepted.ok()) {
        rdma::EndpointToWire(rdma->Local(), reply.initRdma());
      } else {
        reply.setRdmaRefusal(accepted.message());
        FERRY_LOG(kInfo) << "session " << id_ << " (" << program_ << "@" << host_
                         << "): stays on " << transport_->Description()
                         << "; its RDMA offer is refused: " << accepted.message();
      }
    }
    reply.setSessionId(id_);
    reply.setDriverVersion(backend_.DriverVersion());
    reply.setBackend(std::string(backend_.Name()));
    const auto& devices = grant_.devices;
    auto list = reply.initDevices(static_cast<unsigned>(devices.size()));
    for (size_t i = 0; i < devices.size(); ++i) {
      const SessionDevice& device = devices[i];
      const auto& d = backend_.Devices()[device.backend_device];
      auto out = list[static_cast<unsigned>(i)];
      out.setName(d.name);
      out.setUuid(kj::arrayPtr(d.uuid.data(), d.uuid.size()));
      // A slice is a device with the slice's memory (README.md invariant 7).
      out.setTotalMemory(device.memory_quota != 0 ? device.memory_quota : d.total_memory);
      out.setPciDomain(d.pci_domain);
      out.setPciBus(d.pci_bus);
      out.setPciDevice(d.pci_device);
      auto attrs = out.initAttributes(static_cast<unsigned>(d.attributes.size()));
      for (size_t a = 0; a < d.attributes.size(); ++a) {
        int32_t value = d.attributes[a];
        if (a == CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT && device.compute_share < 1.0) {
          // The slice's SMs (its partition's, or its share of the card's),
          // so that programs size their grids for what they get.
          value = device.sm_partition_sms > 0
                      ? device.sm_partition_sms
                      : std::max<int32_t>(1, static_cast<int32_t>(value * device.compute_share));
        }
        attrs.set(static_cast<unsigned>(a), value);
      }
    }
    if (grant_.pooled) {
      reply.setPool(grant_.pool);
      auto slices = reply.initSlices(static_cast<unsigned>(devices.size()));
      for (size_t i = 0; i < devices.size(); ++i) {
        auto out = slices[static_cast<unsigned>(i)];
        out.setGpu(static_cast<uint32_t>(devices[i].gpu));
        out.setSlice(static_cast<uint32_t>(devices[i].slice));
        out.setSlicesPerGpu(static_cast<uint32_t>(devices[i].slices_per_gpu));
        out.setMemoryQuota(devices[i].memory_quota);
        out.setComputeShare(devices[i].compute_share);
        out.setMechanism(ComputeMechanism(devices[i]));
      }
    }
    Status status;
    {
      std::lock_guard<std::mutex> lock(write_mutex_);
      status = WriteFrame(*transport_, wire::FrameKind::HELLO_REPLY, message);
    }
    if (status.ok()) frames_to_client_.fetch_add(1, std::memory_order_relaxed);
    if (!status.ok()) {
      FERRY_LOG(kWarning) << "session " << id_ << ": handshake reply failed: " << status.ToString();
      return;
    }
    if (shm != nullptr) {
      status = MoveToShm(*shm);
      if (!status.ok()) {
        FERRY_LOG(kWarning) << "session " << id_ << " (" << program_ << "@" << host_
                            << "): moving to shared memory failed: " << status.message();
        SetEndReasonIfUnset("shared-memory set-up failed: " + status.message());
        return;
      }
    }
    if (rdma != nullptr) {
      // The client connects its queue pair and says so on the TCP
      // connection; the stream moves to RDMA (rdma_connector.h).
      status = transport_->ReplaceInner([&](std::unique_ptr<Transport>* inner) {
        return std::move(*rdma).SwitchToRdma(inner, /*speak_first=*/false,
                                             std::chrono::steady_clock::now() + kRdmaSetupTimeout);
      });
      if (!status.ok()) {
        FERRY_LOG(kWarning) << "session " << id_ << " (" << program_ << "@" << host_
                            << "): moving to RDMA failed: " << status.message();
        SetEndReasonIfUnset("RDMA set-up failed: " + status.message());
        return;
      }
    }
  }
  started_.store(true);
  LogSessionStarted(Info(), grant());
  ServeLoop(/*helper=*/false);
  // Serving ends only when reading failed (the peer left or broke the
  // protocol), so nobody reads what is still written. The transport is shut
  // down before the joins: a thread blocked writing to a peer that stopped
  // reading (the keepalive, a reply of the helper's batch) fails at once
  // instead of keeping Run here forever. Writes after Shutdown fail; the
  // writers treat that as the end of the session.
  transport_->Shutdown();
  // Every gate is open, so the helper finishes the batch it may be
  // executing and returns.
  if (helper_.joinable()) helper_.join();
  {
    std::lock_guard<std::mutex> lock(keepalive_mutex_);
    keepalive_stopping_ = true;
  }
  keepalive_cv_.notify_all();
  if (keepalive_.joinable()) keepalive_.join();
  {
    std::lock_guard<std::timed_mutex> exec(exec_mutex_);
    // Nobody will see what the queued work computes: what has not started
    // is dropped where the backend can, so the session's memory (and its
    // quota) is free as soon as the work already running ends.
    AbandonQueuedWork();
    FreeEverything();
  }
  // The session's end line (LogSessionEnded) comes from its owner, which
  // returns its slices after this.
  FERRY_LOG(kDebug) << "session " << id_ << ": all its resources are freed";
}

Status Session::AcceptRdma(std::unique_ptr<rdma::RdmaConnector>* out) {
  FERRY_RETURN_IF_ERROR(rdma_offer_status_);
  if (!rdma_serving_.enabled) {
    return Status::Unimplemented(rdma_serving_.unavailable.empty() ? "this ferryd serves no RDMA"
                                                                   : rdma_serving_.unavailable);
  }
  sockaddr_storage local{};
  if (!transport_->LocalSocketAddress(&local)) {
    return Status::Unimplemented("RDMA is set up beside a plain TCP connection only, not " +
                                 transport_->Description() +
                                 " (RDMA would carry the stream unencrypted)");
  }
  std::string why;
  const rdma::Verbs* verbs =
      rdma_serving_.verbs != nullptr ? rdma_serving_.verbs : rdma::SystemVerbs(&why);
  if (verbs == nullptr) return Status::Unimplemented(why);
  FERRY_RETURN_IF_ERROR(
      rdma::RdmaConnector::Open(verbs, rdma_serving_.device, rdma_serving_.options, &local, out));
  return (*out)->ConnectQueuePair(*rdma_offer_);
}

Status Session::OpenShmRendezvous(std::unique_ptr<ShmRendezvous>* out) {
  if (!transport_->OverTcp()) {
    return Status::Unimplemented("shared memory is set up beside a TCP connection only, not " +
                                 transport_->Description());
  }
  std::string boot_id;
  FERRY_RETURN_IF_ERROR(BootId(&boot_id));
  if (*shm_offer_boot_id_ != boot_id) {
    return Status::Unimplemented("ferryd is on another host (the kernel boot ids differ)");
  }
  return ShmRendezvous::Open("session " + std::to_string(id_) + " (" + program_ + "@" + host_ + ")",
                             out);
}

Status Session::MoveToShm(ShmRendezvous& rendezvous) {
  const auto deadline = std::chrono::steady_clock::now() + shm_setup_timeout_;
  uint8_t answer = 0;
  transport_->SetReadDeadline(deadline);
  Status read = transport_->ReadExact(&answer, 1);
  transport_->SetReadDeadline(kNoDeadline);
  if (!read.ok()) {
    return read.WithContext("reading the client's answer to the shared-memory invitation");
  }
  if (answer == kShmStaying) {
    FERRY_LOG(kInfo) << "session " << id_ << " (" << program_ << "@" << host_ << "): stays on "
                     << transport_->Description()
                     << ": the client is on this host but cannot reach the shared-memory "
                        "socket (another network namespace?)";
    return Status::Ok();
  }
  if (answer != kShmMoving) {
    return Status::Malformed("the client answered the shared-memory invitation with byte " +
                             std::to_string(answer) + ", not 'S' or 'T'");
  }
  int socket = -1;
  // A client that dies after its 'S' ends the session at once, not at the
  // deadline: after 'S' it sends nothing more on the old connection.
  FERRY_RETURN_IF_ERROR(rendezvous.AcceptClient(
      deadline, &socket, [this] { return transport_->PeerGoneOrTalking(); }));
  std::unique_ptr<Transport> shm;
  FERRY_RETURN_IF_ERROR(
      ShmTransport::Accept(socket, transport_->PeerName(), ShmTransport::kDefaultRingBytes, &shm));
  // The old connection closes with its transport; the unix socket tells
  // each side from now on when the other is gone.
  return transport_->ReplaceInner([&](std::unique_ptr<Transport>* inner) {
    *inner = std::move(shm);
    return Status::Ok();
  });
}

// Two roles serve a session: the reader reads frames from the transport,
// opens host gates at once (gateOpen frames) and appends call batches to the
// inbox; the executor executes the inbox in order. A thread that has read a
// batch and finds no executor becomes it, so with one thread this is the
// plain loop "read a batch, execute it" and costs no hand-off.
//
// A session starts with Run's thread alone. Its first host gate starts
// helper_, which takes part only while a gate is closed: then one of the two
// threads is always free to read, so a call that blocks the executor until a
// gate opens (destroying the held stream, a driver call that synchronizes)
// never keeps the gateOpen from being read. While no gate is closed the
// helper sleeps, and Run's thread serves alone again: nothing the executor
// waits for then depends on the client, and the hand-over between two
// threads (a wake-up per frame) is not paid.
//
// Frames enter the inbox under read_mutex_, so their order is the wire's.
void Session::ServeLoop(bool helper) {
  for (;;) {
    if (helper) {
      std::unique_lock<std::mutex> lock(serve_mutex_);
      serve_cv_.wait(lock, [this] { return serving_ended_ || !gates_.empty(); });
      if (serving_ended_) return;
    }
    {
      std::lock_guard<std::mutex> read_lock(read_mutex_);
      Status status;
      {
        std::unique_lock<std::mutex> lock(serve_mutex_);
        serve_cv_.wait(lock, [this] {
          return serving_ended_ || inbox_bytes_ < kInboxSoftLimit || !gates_.empty();
        });
        if (serving_ended_) return;
        if (inbox_bytes_ > buffer_limit_) {
          status = Status::Overloaded("the client queued more than " +
                                      std::to_string(buffer_limit_ >> 20) +
                                      " MiB of calls while its host callback held a stream");
        }
      }
      wire::FrameKind kind = wire::FrameKind::INVALID;
      kj::Array<capnp::word> words;
      uint64_t bulk_bytes = 0;
      if (status.ok()) status = ReadFrameHead(*transport_, &kind, &words, &bulk_bytes);
      if (status.ok()) {
        frames_from_client_.fetch_add(1, std::memory_order_relaxed);
        if (kind == wire::FrameKind::GATE_OPEN) {
          status = OpenGate(words, bulk_bytes);
          if (status.ok()) continue;
        } else if (kind != wire::FrameKind::CALL_BATCH) {
          status =
              Status::Malformed("unexpected frame kind " + std::to_string(static_cast<int>(kind)) +
                                " on a client session");
        }
      }
      // Streaming: with no gate closed, nothing queued and no hostGate in
      // the batch, nothing this batch does can wait for a frame behind it,
      // so it executes while its payload is still on the transport, and each
      // call's bytes are read just before it runs (a large host-to-device
      // copy onto an idle stream lands straight in device memory).
      bool streaming = false;
      if (status.ok()) {
        std::unique_lock<std::mutex> lock(serve_mutex_);
        // A frame whose payload would take the buffered bytes past the
        // limit is not buffered: it waits for the executor to catch up and
        // then streams — unless a gate is closed (then nothing may wait for
        // the executor) or it holds a gate itself, which ends the session.
        const bool over_limit =
            inbox_bytes_ + words.size() * sizeof(capnp::word) + bulk_bytes > buffer_limit_;
        if (over_limit) {
          serve_cv_.wait(lock, [this] {
            return serving_ended_ || !gates_.empty() || (!executing_ && inbox_.empty());
          });
          if (serving_ended_) return;
        }
        const bool may_stream = !executing_ && inbox_.empty() && gates_.empty();
        // Parsed only when it matters: the batch is walked once more.
        const bool has_gate = (over_limit || may_stream) && BatchHasHostGate(words);
        if (over_limit && (!gates_.empty() || has_gate)) {
          status = Status::Overloaded(
              "a call frame of " + std::to_string(bulk_bytes) +
              " payload bytes would take the session's buffered calls past its limit of " +
              std::to_string(buffer_limit_) + " bytes (ferryd --session-buffer)");
        }
        streaming = status.ok() && may_stream && !has_gate;
        if (streaming) executing_ = true;
      }
      if (streaming) {
        TransportPayload payload(*transport_);
        status = ExecuteBatch(words, bulk_bytes, payload);
        {
          std::lock_guard<std::mutex> lock(serve_mutex_);
          executing_ = false;
        }
        if (!status.ok()) {
          EndServing(status);
          return;
        }
        continue;
      }
      // Buffered: the whole frame goes to the inbox, so this thread is free
      // to read the next frame (a gateOpen) while the executor runs it.
      Frame frame;
      frame.kind = kind;
      frame.words = std::move(words);
      if (status.ok()) status = ReadFrameBulk(*transport_, bulk_bytes, &frame);
      if (!status.ok()) {
        EndServing(status);
        return;
      }
      std::lock_guard<std::mutex> lock(serve_mutex_);
      inbox_bytes_ += FrameBytes(frame);
      inbox_.push_back(std::move(frame));
      if (executing_) continue;  // the executor takes it; keep reading
      executing_ = true;
    }
    DrainInbox();
  }
}

void Session::DrainInbox() {
  for (;;) {
    Frame frame;
    {
      std::lock_guard<std::mutex> lock(serve_mutex_);
      if (inbox_.empty() || serving_ended_) {
        executing_ = false;
        serve_cv_.notify_all();  // a reader may wait for the executor to be idle
        return;
      }
      frame = std::move(inbox_.front());
      inbox_.pop_front();
      inbox_bytes_ -= FrameBytes(frame);
      serve_cv_.notify_all();  // a reader may wait for the inbox to shrink
    }
    BufferedPayload payload(frame.bulk.data.get(), frame.bulk.size);
    Status status = ExecuteBatch(frame.words.asPtr(), frame.bulk.size, payload);
    if (!status.ok()) EndServing(status);
  }
}

Status Session::BufferedPayload::Read(void* into, uint64_t bytes) {
  if (bytes > left_) return Status::Malformed("a call claims bulk bytes past the frame's payload");
  std::memcpy(into, data_, bytes);
  data_ += bytes;
  left_ -= bytes;
  return Status::Ok();
}

bool Session::BatchHasHostGate(kj::ArrayPtr<const capnp::word> words) {
  try {
    for (kj::ArrayPtr<const capnp::word> rest = words; rest.size() > 0;) {
      capnp::FlatArrayMessageReader reader(rest, PeerReaderOptions());
      const auto which = reader.getRoot<wire::Call>().which();
      if (which == wire::Call::HOST_GATE || which == wire::Call::GRAPH_LAUNCH_HOST_NODES) {
        return true;
      }
      rest = kj::arrayPtr(reader.getEnd(), rest.end());
    }
  } catch (const kj::Exception&) {
    // ExecuteBatch reports the malformed message.
  }
  return false;
}

void Session::EndServing(const Status& why) {
  std::map<GateKey, std::shared_ptr<backend::HostGate>> gates;
  {
    std::lock_guard<std::mutex> lock(serve_mutex_);
    if (serving_ended_) return;
    serving_ended_ = true;
    if (departure_state_ == DepartureState::kHandedOver) {
      SetEndReasonIfUnset("moved to " + departure_.address);
    }
    serving_ended_flag_.store(true, std::memory_order_relaxed);
    gates.swap(gates_);
    serve_cv_.notify_all();
  }
  SetEndReasonIfUnset(why.message());
  if (why.code() == StatusCode::kDisconnected) {
    FERRY_LOG(kInfo) << "session " << id_ << ": " << why.message();
  } else {
    FERRY_LOG(kWarning) << "session " << id_ << " from " << transport_->PeerName()
                        << ": closing: " << why.ToString();
  }
  // Nobody will open these now; the streams they hold must drain.
  for (auto& [key, gate] : gates) gate->Open();
  // A launch throttled behind one of them stops waiting: nothing more is
  // dispatched for a client that is gone.
  shares_.Interrupt();
  // Ends a read the other thread may be blocked in.
  transport_->Shutdown();
}

Status Session::StartHelper() {
  if (helper_.joinable()) return Status::Ok();
  try {
    helper_ = std::thread([this] { ServeLoop(/*helper=*/true); });
  } catch (const std::system_error& e) {
    return Status::Internal(std::string("cannot start the session's second thread: ") + e.what());
  }
  return Status::Ok();
}

Status Session::OpenGate(kj::ArrayPtr<const capnp::word> words, uint64_t bulk_bytes) {
  if (bulk_bytes != 0) return Status::Malformed("a gateOpen frame carried bulk bytes");
  GateKey key;
  try {
    capnp::FlatArrayMessageReader reader(words, PeerReaderOptions());
    key = {reader.getRoot<wire::GateOpen>().getGate(), reader.getRoot<wire::GateOpen>().getIndex()};
  } catch (const kj::Exception& e) {
    return Status::Malformed(std::string("bad gateOpen message: ") + e.getDescription().cStr());
  }
  std::shared_ptr<backend::HostGate> gate;
  {
    std::lock_guard<std::mutex> lock(serve_mutex_);
    auto it = gates_.find(key);
    if (it != gates_.end()) {
      gate = std::move(it->second);
      gates_.erase(it);
    }
  }
  if (gate == nullptr) {
    // Nothing to open: harmless to everyone else, but a client bug.
    FERRY_LOG(kWarning) << "session " << id_ << ": gateOpen for " << key.first << "/" << key.second
                        << ", which is no closed gate of this session";
    return Status::Ok();
  }
  gate->Open();
  return Status::Ok();
}

namespace {

// Host-to-device copies at least this large may land straight in device
// memory; smaller ones travel in the batch's shared payload buffer.
constexpr uint64_t kDirectCopyMinBytes = 64 << 10;

std::shared_ptr<uint8_t[]> AllocateBulk(uint64_t bytes) {
  // Uninitialised on purpose: pages are committed only as bytes arrive.
  return std::shared_ptr<uint8_t[]>(new (std::nothrow) uint8_t[bytes]);
}

}  // namespace

bool Session::OnlyLetsGo(kj::ArrayPtr<const capnp::word> words) {
  try {
    for (kj::ArrayPtr<const capnp::word> rest = words; rest.size() > 0;) {
      capnp::FlatArrayMessageReader reader(rest, PeerReaderOptions());
      switch (reader.getRoot<wire::Call>().which()) {
        case wire::Call::PING:
        case wire::Call::MEM_FREE:
        case wire::Call::CTX_DESTROY:
        case wire::Call::MODULE_UNLOAD:
        case wire::Call::LIBRARY_UNLOAD:
        case wire::Call::STREAM_DESTROY:
        case wire::Call::EVENT_DESTROY:
        case wire::Call::MEM_POOL_DESTROY:
        case wire::Call::GRAPH_DESTROY:
        case wire::Call::GRAPH_EXEC_DESTROY:
        case wire::Call::ARRAY_DESTROY:
        case wire::Call::TEX_OBJECT_DESTROY:
        case wire::Call::LINK_DESTROY:
          break;
        default:
          return false;
      }
      rest = kj::arrayPtr(reader.getEnd(), rest.end());
    }
  } catch (const kj::Exception&) {
    return false;  // ExecuteBatch reports it
  }
  return true;
}

Status Session::ExecuteBatch(kj::ArrayPtr<const capnp::word> words, uint64_t bulk_bytes,
                             PayloadSource& payload) {
  std::lock_guard<std::timed_mutex> exec(exec_mutex_);
  // Idle time counts from the end of the last batch; while one executes
  // the session is not idle at all.
  in_batch_.store(true);
  struct BatchEnd {
    Session* session;
    ~BatchEnd() {
      session->last_call_ns_.store(session_internal::SteadyNowNs());
      session->in_batch_.store(false);
    }
  } batch_end{this};
  // Parked memory comes back before any call of the batch runs; if it
  // cannot, every call of the batch fails with the reason. A released
  // session's batch that only lets go of things needs neither its slices
  // nor its memory back.
  batch_refusal_ =
      slices_released_.load() && OnlyLetsGo(words) ? Status::Ok() : UnparkForBatch();
  // kj reports a message that breaks its own rules (bad pointers, traversal
  // limit) as an exception; none may escape into the server.
  try {
    // First find every call and how much payload it claims, so that all the
    // payload that is not read straight into device memory shares one buffer.
    batch_calls_.clear();
    uint64_t claimed = 0;
    uint64_t shared_bytes = 0;
    const bool direct_possible = backend_.DeviceMemoryIsHostMemory();
    for (kj::ArrayPtr<const capnp::word> rest = words; rest.size() > 0;) {
      capnp::FlatArrayMessageReader reader(rest, PeerReaderOptions());
      auto call = reader.getRoot<wire::Call>();
      BatchCall entry;
      entry.words = kj::arrayPtr(rest.begin(), reader.getEnd());
      entry.bulk_bytes = call.getBulkBytes();
      if (entry.bulk_bytes > bulk_bytes - claimed) {
        return Status::Malformed("call " + std::to_string(call.getSeq()) + " claims " +
                                 std::to_string(entry.bulk_bytes) +
                                 " bulk bytes past the frame's payload");
      }
      claimed += entry.bulk_bytes;
      entry.direct_candidate = direct_possible && call.which() == wire::Call::MEMCPY_HTO_D &&
                               entry.bulk_bytes >= kDirectCopyMinBytes;
      if (!entry.direct_candidate) shared_bytes += entry.bulk_bytes;
      batch_calls_.push_back(entry);
      rest = kj::arrayPtr(reader.getEnd(), rest.end());
    }
    if (claimed != bulk_bytes) {
      return Status::Malformed("frame carried " + std::to_string(bulk_bytes - claimed) +
                               " bulk bytes that no call claimed");
    }
    if (shared_bytes > buffer_limit_) {
      return Status::Overloaded("a call frame carries " + std::to_string(shared_bytes) +
                                " payload bytes to buffer, past the session's limit of " +
                                std::to_string(buffer_limit_) + " (ferryd --session-buffer)");
    }
    std::shared_ptr<uint8_t[]> shared;
    if (shared_bytes > 0) {
      shared = AllocateBulk(shared_bytes);
      if (!shared) {
        return Status::OutOfMemory("cannot buffer a bulk payload of " +
                                   std::to_string(shared_bytes) + " bytes");
      }
    }
    uint64_t shared_offset = 0;
    // Then execute them in order, reading each one's payload just before it
    // runs (the payload follows the message on the transport, in call order).
    for (const BatchCall& entry : batch_calls_) {
      // The connection is gone: the rest of the batch would only queue work
      // that nobody will see.
      if (serving_ended_flag_.load(std::memory_order_relaxed)) {
        return Status::Disconnected("the connection ended in the middle of a batch");
      }
      capnp::FlatArrayMessageReader reader(entry.words, PeerReaderOptions());
      auto call = reader.getRoot<wire::Call>();
      backend::HostBytes bulk;
      if (entry.bulk_bytes > 0) {
        if (entry.direct_candidate) {
          Status read;
          if (TryDirectHostToDevice(call, payload, &read)) {
            FERRY_RETURN_IF_ERROR(read);
            continue;
          }
          std::shared_ptr<uint8_t[]> own = AllocateBulk(entry.bulk_bytes);
          if (!own) {
            return Status::OutOfMemory("cannot buffer a bulk payload of " +
                                       std::to_string(entry.bulk_bytes) + " bytes");
          }
          FERRY_RETURN_IF_ERROR(payload.Read(own.get(), entry.bulk_bytes));
          bulk.data = own.get();
          bulk.owner = Alias<const void>(own, own.get());
        } else {
          uint8_t* at = shared.get() + shared_offset;
          shared_offset += entry.bulk_bytes;
          FERRY_RETURN_IF_ERROR(payload.Read(at, entry.bulk_bytes));
          bulk.data = at;
          bulk.owner = Alias<const void>(shared, at);
        }
        bulk.size = entry.bulk_bytes;
      }
      Execute(call, std::move(bulk));
    }
  } catch (const kj::Exception& e) {
    return Status::Malformed(std::string("bad message: ") + e.getDescription().cStr());
  }
  return Status::Ok();
}

bool Session::TryDirectHostToDevice(wire::Call::Reader call, PayloadSource& payload,
                                    Status* read_status) {
  if (!batch_refusal_.ok()) return false;  // parked: the memory is not there
  auto args = call.getMemcpyHtoD();
  if (call.getWantsReply() || args.getBytes() != call.getBulkBytes()) return false;
  backend::Stream* stream = nullptr;
  if (!FindStream(args.getCtx(), args.getStream(), &stream).ok()) return false;
  if (!CheckRange(args.getDst(), args.getBytes(), "destination").ok()) return false;
  if (!captures_.empty()) return false;  // stream capture: the handler's rules apply
  // Only onto an idle stream: then writing now is what the queued copy would
  // do when its turn came, and no earlier work can still read these bytes.
  Status stream_status;
  if (!backend_.StreamIdleNow(*stream, &stream_status) || !stream_status.ok()) return false;
  *read_status = payload.Read(reinterpret_cast<void*>(args.getDst()), args.getBytes());
  return true;
}

void Session::Execute(wire::Call::Reader call, backend::HostBytes bulk) {
  CallContext cx;
  cx.seq = call.getSeq();
  cx.wants_reply = call.getWantsReply();
  cx.bulk_in = std::move(bulk);
  cx.reply.setSeq(cx.seq);
  calls_.fetch_add(1, std::memory_order_relaxed);
  const wire::Call::Which which = call.which();
  if (which == wire::Call::LAUNCH || which == wire::Call::GRAPH_LAUNCH ||
      which == wire::Call::GRAPH_LAUNCH_HOST_NODES) {
    launches_.fetch_add(1, std::memory_order_relaxed);
  }
  if (cx.wants_reply) cx.started = std::chrono::steady_clock::now();

  if (!revoked_.ok()) {
    // Preempted: the session has no devices any more.
    if (cx.wants_reply) {
      SendReply(cx.seq, revoked_);
      CountSyncCall(cx.started);
    }
    return;
  }
  // A move's marker is not the call a latched error answers: the error
  // travels with the session (MigrationOffer.latched) or stays here.
  if (cx.wants_reply && !latched_error_.ok() && which != wire::Call::MOVE_MARKER) {
    // The error of an earlier fire-and-forget call is this call's answer,
    // and the call does not run. Except that an end of capture still ends
    // the capture: the client forgot it when it sent the call, and CUDA ends
    // a capture whatever cuStreamEndCapture answers; a stream left capturing
    // here would refuse the program's later work on it (a capture that
    // failed in a framework, then an ordinary copy).
    if (call.isStreamEndCapture()) AbandonCaptureOf(call.getStreamEndCapture());
    StatusToWire(latched_error_, cx.reply.initStatus());
    cx.reply.setLatchedFromSeq(latched_seq_);
    latched_error_ = Status::Ok();
    SendReplyMessage(cx.message, {});
    CountSyncCall(cx.started);
    return;
  }
  Status status;
  if (!batch_refusal_.ok() && which != wire::Call::MEM_FREE) {
    // Its memory is parked and could not come back: nothing runs but a free
    // (the backend frees parked memory as it is), which may be what lets the
    // session fit again; every other call fails as a failed call does. An
    // end of capture still ends the capture, as with a latched error.
    if (call.isStreamEndCapture()) AbandonCaptureOf(call.getStreamEndCapture());
    status = batch_refusal_;
  } else {
    status = Dispatch(call, cx);
  }
  // A handler defers its reply only as its last, infallible step; the
  // completion it handed to the backend answers the call.
  if (cx.deferred) return;
  if (cx.wants_reply) {
    if (status.ok()) {
      StatusToWire(status, cx.reply.initStatus());
      SendReplyMessage(cx.message, cx.reply_bulk.size > 0
                                       ? std::span<const ConstBuffer>(&cx.reply_bulk, 1)
                                       : std::span<const ConstBuffer>());
    } else {
      SendReply(cx.seq, status);
    }
    CountSyncCall(cx.started);
  } else if (!status.ok()) {
    if (latched_error_.ok()) {
      latched_error_ = status.WithContext("asynchronous error from call " + std::to_string(cx.seq));
      latched_seq_ = cx.seq;
    }
    FERRY_LOG(kDebug) << "session " << id_ << ": call " << cx.seq
                      << " failed: " << status.ToString();
  }
}

Status Session::Dispatch(wire::Call::Reader call, CallContext& cx) {
  // A switch over the call's union member, calling its handler; generated
  // from the schema (schema/generate_calls.py). An ordinal this ferryd does
  // not know is answered Unimplemented.
#include "server/generated/session_dispatch.inc"
}

// --- replies ---------------------------------------------------------------

void Session::SendReply(uint64_t seq, const Status& status) {
  capnp::MallocMessageBuilder message(64);
  auto reply = message.initRoot<wire::Reply>();
  reply.setSeq(seq);
  StatusToWire(status, reply.initStatus());
  SendReplyMessage(message, {});
}

void Session::SendReplyMessage(capnp::MallocMessageBuilder& message,
                               std::span<const ConstBuffer> bulk) {
  std::lock_guard<std::mutex> lock(write_mutex_);
  Status status = WriteFrame(*transport_, wire::FrameKind::REPLY, message, bulk);
  last_write_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                       std::memory_order_relaxed);
  if (status.ok()) frames_to_client_.fetch_add(1, std::memory_order_relaxed);
  if (!status.ok()) {
    // The reader sees the same failure and ends the session.
    FERRY_LOG(kDebug) << "session " << id_ << ": reply not sent: " << status.ToString();
  }
}

backend::Completion Session::DeferReply(CallContext& cx, backend::MutableHostBytes bulk) {
  cx.deferred = true;
  CompletionStarted();
  deferred_replies_.fetch_add(1);
  StartKeepaliveIfAsked();
  const uint64_t seq = cx.seq;
  const bool wants_reply = cx.wants_reply;
  const auto started = cx.started;
  return [this, seq, wants_reply, started, bulk = std::move(bulk)](Status status) {
    capnp::MallocMessageBuilder message(64);
    auto reply = message.initRoot<wire::Reply>();
    reply.setSeq(seq);
    StatusToWire(status, reply.initStatus());
    ConstBuffer payload{bulk.data, bulk.size};
    SendReplyMessage(message, status.ok() && bulk.size > 0
                                  ? std::span<const ConstBuffer>(&payload, 1)
                                  : std::span<const ConstBuffer>());
    if (wants_reply) CountSyncCall(started);
    deferred_replies_.fetch_sub(1);
    CompletionDone();
  };
}

void Session::CountSyncCall(std::chrono::steady_clock::time_point started) {
  sync_calls_.Observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
}

void Session::StartKeepaliveIfAsked() {
  // Only the executor role starts it, and Run joins it after serving.
  if (keepalive_period_.count() > 0 && !keepalive_.joinable()) {
    keepalive_ = std::thread([this] { KeepaliveLoop(); });
  }
}

void Session::KeepaliveLoop() {
  std::unique_lock<std::mutex> lock(keepalive_mutex_);
  for (;;) {
    keepalive_cv_.wait_for(lock, keepalive_period_, [this] { return keepalive_stopping_; });
    if (keepalive_stopping_) return;
    const auto since_write = std::chrono::steady_clock::now().time_since_epoch() -
                             std::chrono::steady_clock::duration(last_write_ns_.load());
    if (deferred_replies_.load() == 0 || since_write < keepalive_period_) continue;
    lock.unlock();
    capnp::MallocMessageBuilder message(16);
    message.initRoot<wire::Reply>();
    {
      std::lock_guard<std::mutex> write(write_mutex_);
      // A failed write: the reader sees the same failure and ends the session.
      if (WriteFrame(*transport_, wire::FrameKind::KEEPALIVE, message).ok()) {
        frames_to_client_.fetch_add(1, std::memory_order_relaxed);
      }
      last_write_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count());
    }
    lock.lock();
  }
}

void Session::SendGateReached(uint64_t seq, const Status& status, bool held, bool stream_failed,
                              uint32_t index, uint64_t host_function) {
  capnp::MallocMessageBuilder message(64);
  auto reply = message.initRoot<wire::Reply>();
  reply.setSeq(seq);
  StatusToWire(status, reply.initStatus());
  auto reached = reply.initGateReached();
  reached.setHeld(held);
  reached.setStreamFailed(stream_failed);
  reached.setIndex(index);
  reached.setHostFunction(host_function);
  SendReplyMessage(message, {});
}

Status Session::RegisterGate(GateKey key, const std::shared_ptr<backend::HostGate>& gate) {
  std::lock_guard<std::mutex> lock(serve_mutex_);
  if (serving_ended_) {
    gate->Open();  // the client is gone; the gate must not hold anything
    return Status::Ok();
  }
  if (!gates_.emplace(key, gate).second) {
    // A seq used twice: the earlier gate must stay findable, or nothing
    // could open it when the session ends.
    return Status::InvalidArgument("call " + std::to_string(key.first) + " names host gate " +
                                   std::to_string(key.second) + ", which is still closed");
  }
  serve_cv_.notify_all();  // a reader held back by the inbox limit reads again
  return Status::Ok();
}

void Session::UnregisterGate(GateKey key) {
  std::lock_guard<std::mutex> lock(serve_mutex_);
  gates_.erase(key);
}

void Session::UnchargeWhenReleased(int device, uint64_t bytes) {
  CompletionStarted();
  bytes_awaiting_release_[device] += bytes;
  backend_.WhenReleased(*tenant_, [this, device, bytes](Status) {
    shares_.Uncharge(device, bytes);
    bytes_awaiting_release_[device] -= bytes;
    CompletionDone();
  });
}

void Session::WaitForReleases() {
  while (!WaitForReleasesFor(absl::InfiniteDuration())) {
  }
}

bool Session::WaitForReleasesFor(absl::Duration limit) {
  // Shared with the completion, which may run after a timed-out wait returned.
  struct Released {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
  };
  auto released = std::make_shared<Released>();
  backend_.WhenReleased(*tenant_, [released](Status) {
    std::lock_guard<std::mutex> lock(released->mu);
    released->done = true;
    released->cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(released->mu);
  if (limit == absl::InfiniteDuration()) {
    released->cv.wait(lock, [&] { return released->done; });
    return true;
  }
  return released->cv.wait_for(lock, absl::ToChronoNanoseconds(limit),
                               [&] { return released->done; });
}

Status Session::CheckQuotaAfterReleases(int device, uint64_t bytes) {
  Status quota = shares_.CheckQuota(device, bytes);
  if (quota.ok()) return quota;
  const uint64_t awaiting = bytes_awaiting_release_[device].load();
  // Nothing to wait for, or not enough: the releases would not make room.
  if (awaiting == 0 || !shares_.CheckQuota(device, bytes > awaiting ? bytes - awaiting : 0).ok()) {
    return quota;
  }
  allocations_waited_for_releases_.fetch_add(1);
  bool released = false;
  {
    ClientWaits waits(*this);
    released = WaitForReleasesFor(kReleaseWaitLimit);
  }
  if (!released) {
    FERRY_LOG(kWarning) << "session " << id_ << ": memory it freed is still waiting for its queued "
                        << "work after " << absl::FormatDuration(kReleaseWaitLimit)
                        << "; the allocation is refused";
  }
  return shares_.CheckQuota(device, bytes);
}

void Session::CompletionStarted() {
  std::lock_guard<std::mutex> lock(pending_mutex_);
  ++pending_completions_;
}

void Session::CompletionDone() {
  std::lock_guard<std::mutex> lock(pending_mutex_);
  --pending_completions_;
  pending_cv_.notify_all();
}

}  // namespace ferry::server
