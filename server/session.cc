#include "server/session.h"

#include <cuda.h>
#include <kj/exception.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <system_error>
#include <utility>
#include <vector>

#include "common/log.h"
#include "common/units.h"

namespace ferry::server {
namespace {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool AddOverflows(uint64_t a, uint64_t b) { return a > std::numeric_limits<uint64_t>::max() - b; }

std::string Hex(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

Status InvalidContext(uint64_t ctx) {
  return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT,
                      "no context " + std::to_string(ctx) + " in this session");
}

// Back-pressure on reading while the executor is behind: past this many
// bytes of queued frames the reader waits, unless a host gate is closed (its
// gateOpen may be what the executor waits for, so the reader must go on).
constexpr uint64_t kInboxSoftLimit = 64ull << 20;
// Past this, with a gate closed, the client is flooding while its host
// callback holds a stream, and the session ends rather than buffer more.
constexpr uint64_t kInboxHardLimit = 4ull << 30;

uint64_t FrameBytes(const Frame& frame) {
  return frame.words.size() * sizeof(capnp::word) + frame.bulk.size;
}

// A shared_ptr that keeps `owner` alive while pointing at `data`.
template <typename T, typename U>
std::shared_ptr<T> Alias(const std::shared_ptr<U>& owner, T* data) {
  return std::shared_ptr<T>(owner, data);
}

}  // namespace

SessionGrant WholeDevices(const backend::GpuBackend& backend) {
  SessionGrant grant;
  for (size_t i = 0; i < backend.Devices().size(); ++i) {
    SessionDevice device;
    device.backend_device = static_cast<int>(i);
    device.gpu = static_cast<int>(i);
    grant.devices.push_back(device);
  }
  return grant;
}

void ChooseComputeMechanism(backend::GpuBackend& backend, SessionDevice* device) {
  device->sm_partition_sms = 0;
  if (device->compute_share >= 1.0 || device->slices_per_gpu < 2 || device->slice < 0 ||
      device->slice >= device->slices_per_gpu) {
    return;
  }
  // An SM group is 1/slices_per_gpu of the GPU; a share that is not exactly
  // that (none today: the pool gives every slice 1/slices_per_gpu) is
  // throttled instead.
  const double group_share = 1.0 / device->slices_per_gpu;
  if (std::abs(device->compute_share - group_share) > 1e-9) return;
  int sm_count = 0;
  if (backend.SmPartitionSize(device->backend_device, device->slices_per_gpu, &sm_count).ok() &&
      sm_count > 0) {
    device->sm_partition_sms = sm_count;
  }
}

namespace {
// `grant` with each device's compute mechanism chosen.
SessionGrant WithComputeMechanisms(backend::GpuBackend& backend, SessionGrant grant) {
  for (SessionDevice& device : grant.devices) ChooseComputeMechanism(backend, &device);
  return grant;
}
}  // namespace

std::string ComputeMechanism(const SessionDevice& device) {
  if (device.compute_share >= 1.0) return "whole-gpu";
  if (device.sm_partition_sms > 0) {
    return "sm-partition (" + std::to_string(device.sm_partition_sms) + " SMs)";
  }
  return "launch-throttle";
}

Session::Session(uint64_t id, std::unique_ptr<Transport> transport, backend::GpuBackend& backend,
                 wire::Hello::Reader hello, ModuleCache* module_cache)
    : Session(id, std::move(transport), backend, hello, WholeDevices(backend), module_cache) {}

Session::Session(uint64_t id, std::unique_ptr<Transport> transport, backend::GpuBackend& backend,
                 wire::Hello::Reader hello, SessionGrant grant, ModuleCache* module_cache)
    : id_(id),
      transport_(std::move(transport)),
      backend_(backend),
      module_cache_(module_cache),
      pid_(hello.getPid()),
      host_(hello.getHost().cStr()),
      program_(hello.getProgram().cStr()),
      since_unix_ms_(NowUnixMs()),
      grant_(WithComputeMechanisms(backend, std::move(grant))),
      device_bytes_(new std::atomic<uint64_t>[grant_.devices.size()]) {
  for (size_t i = 0; i < grant_.devices.size(); ++i) {
    device_bytes_[i].store(0);
    const SessionDevice& device = grant_.devices[i];
    // An SM partition enforces the share by itself: throttling on top would
    // only take away what the partition gives.
    const bool throttled = device.compute_share < 1.0 && device.sm_partition_sms == 0;
    throttles_.push_back(throttled ? std::make_unique<DeviceThrottle>(device.compute_share)
                                   : nullptr);
  }
}

Session::~Session() {
  // Run() has freed everything; wait for any completion still writing.
  std::unique_lock<std::mutex> lock(pending_mutex_);
  pending_cv_.wait(lock, [this] { return pending_completions_ == 0; });
}

void Session::Stop() {
  {
    std::lock_guard<std::mutex> lock(throttle_mutex_);
    interrupted_ = true;
  }
  throttle_cv_.notify_all();
  transport_->Shutdown();
}

void Session::Preempt(const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(throttle_mutex_);
    interrupted_ = true;  // a throttled launch stops waiting
  }
  throttle_cv_.notify_all();
  // A batch blocked behind a closed host gate holds exec_mutex_ until the
  // client opens the gate, which it may never do; the devices are going
  // away, so the gates open now (a later gateOpen for them is harmless).
  std::map<uint64_t, std::shared_ptr<backend::HostGate>> gates;
  {
    std::lock_guard<std::mutex> lock(serve_mutex_);
    gates.swap(gates_);
  }
  for (auto& [seq, gate] : gates) gate->Open();
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
    Stop();
    return;
  }
  if (!revoked_.ok()) return;
  revoked_ = Status::Cuda(CUDA_ERROR_DEVICE_UNAVAILABLE, reason);
  FERRY_LOG(kWarning) << "session " << id_ << " (pid " << pid_ << ", " << program_ << "@" << host_
                      << "): " << reason << "; freeing all its resources";
  FreeEverything();
  // The notice: seq 0 answers no call. Before the handshake, Run answers it.
  if (handshake_answered_) SendReply(0, revoked_);
}

SessionInfo Session::Info() const {
  SessionInfo info;
  info.id = id_;
  info.client = transport_->PeerName();
  info.pid = pid_;
  info.host = host_;
  info.program = program_;
  info.bytes_allocated = bytes_allocated_.load();
  info.allocations = allocation_count_.load();
  info.contexts = context_count_.load();
  info.streams = stream_count_.load();
  info.events = event_count_.load();
  info.modules = module_count_.load();
  info.since_unix_ms = since_unix_ms_;
  for (size_t i = 0; i < grant_.devices.size(); ++i)
    info.device_bytes.push_back(device_bytes_[i].load());
  info.module_image_bytes_received = module_image_bytes_received_.load();
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
      (void)WriteFrame(*transport_, wire::FrameKind::HELLO_REPLY, message);
      return;
    }
    handshake_answered_ = true;
    StatusToWire(Status::Ok(), reply.initStatus());
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
      // A slice is a device with the slice's memory (DESIGN invariant 7).
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
    if (!status.ok()) {
      FERRY_LOG(kWarning) << "session " << id_ << ": handshake reply failed: " << status.ToString();
      return;
    }
  }
  FERRY_LOG(kInfo) << "session " << id_ << " opened: " << transport_->PeerName() << " pid " << pid_
                   << " (" << program_ << "@" << host_ << ")";
  ServeLoop(/*helper=*/false);
  // Serving has ended and every gate is open, so the helper finishes the
  // batch it may be executing and returns.
  if (helper_.joinable()) helper_.join();
  transport_->Shutdown();
  {
    std::lock_guard<std::timed_mutex> exec(exec_mutex_);
    FreeEverything();
  }
  FERRY_LOG(kInfo) << "session " << id_ << " closed; all its resources are freed";
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
        if (inbox_bytes_ > kInboxHardLimit) {
          status = Status::Overloaded("the client queued more than " +
                                      std::to_string(kInboxHardLimit >> 20) +
                                      " MiB of calls while its host callback held a stream");
        }
      }
      wire::FrameKind kind = wire::FrameKind::INVALID;
      kj::Array<capnp::word> words;
      uint64_t bulk_bytes = 0;
      if (status.ok()) status = ReadFrameHead(*transport_, &kind, &words, &bulk_bytes);
      if (status.ok()) {
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
        std::lock_guard<std::mutex> lock(serve_mutex_);
        streaming = !executing_ && inbox_.empty() && gates_.empty() && !BatchHasHostGate(words);
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
      if (reader.getRoot<wire::Call>().which() == wire::Call::HOST_GATE) return true;
      rest = kj::arrayPtr(reader.getEnd(), rest.end());
    }
  } catch (const kj::Exception&) {
    // ExecuteBatch reports the malformed message.
  }
  return false;
}

void Session::EndServing(const Status& why) {
  std::map<uint64_t, std::shared_ptr<backend::HostGate>> gates;
  {
    std::lock_guard<std::mutex> lock(serve_mutex_);
    if (serving_ended_) return;
    serving_ended_ = true;
    gates.swap(gates_);
    serve_cv_.notify_all();
  }
  if (why.code() == StatusCode::kDisconnected) {
    FERRY_LOG(kInfo) << "session " << id_ << ": " << why.message();
  } else {
    FERRY_LOG(kWarning) << "session " << id_ << " from " << transport_->PeerName()
                        << ": closing: " << why.ToString();
  }
  // Nobody will open these now; the streams they hold must drain.
  for (auto& [seq, gate] : gates) gate->Open();
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
  uint64_t seq = 0;
  try {
    capnp::FlatArrayMessageReader reader(words, PeerReaderOptions());
    seq = reader.getRoot<wire::GateOpen>().getGate();
  } catch (const kj::Exception& e) {
    return Status::Malformed(std::string("bad gateOpen message: ") + e.getDescription().cStr());
  }
  std::shared_ptr<backend::HostGate> gate;
  {
    std::lock_guard<std::mutex> lock(serve_mutex_);
    auto it = gates_.find(seq);
    if (it != gates_.end()) {
      gate = std::move(it->second);
      gates_.erase(it);
    }
  }
  if (gate == nullptr) {
    // Nothing to open: harmless to everyone else, but a client bug.
    FERRY_LOG(kWarning) << "session " << id_ << ": gateOpen for " << seq
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

Status Session::ExecuteBatch(kj::ArrayPtr<const capnp::word> words, uint64_t bulk_bytes,
                             PayloadSource& payload) {
  std::lock_guard<std::timed_mutex> exec(exec_mutex_);
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
  auto args = call.getMemcpyHtoD();
  if (call.getWantsReply() || args.getBytes() != call.getBulkBytes()) return false;
  backend::Stream* stream = nullptr;
  if (!FindStream(args.getCtx(), args.getStream(), &stream).ok()) return false;
  if (!CheckRange(args.getDst(), args.getBytes(), "destination").ok()) return false;
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

  if (!revoked_.ok()) {
    // Preempted: the session has no devices any more.
    if (cx.wants_reply) SendReply(cx.seq, revoked_);
    return;
  }
  if (cx.wants_reply && !latched_error_.ok()) {
    // The error of an earlier fire-and-forget call is this call's answer.
    StatusToWire(latched_error_, cx.reply.initStatus());
    cx.reply.setLatchedFromSeq(latched_seq_);
    latched_error_ = Status::Ok();
    SendReplyMessage(cx.message, {});
    return;
  }
  Status status = Dispatch(call, cx);
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
#include "schema/session_dispatch.inc"
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
  if (!status.ok()) {
    // The reader sees the same failure and ends the session.
    FERRY_LOG(kDebug) << "session " << id_ << ": reply not sent: " << status.ToString();
  }
}

backend::Completion Session::DeferReply(CallContext& cx, backend::MutableHostBytes bulk) {
  cx.deferred = true;
  {
    std::lock_guard<std::mutex> lock(pending_mutex_);
    ++pending_completions_;
  }
  const uint64_t seq = cx.seq;
  return [this, seq, bulk = std::move(bulk)](Status status) {
    capnp::MallocMessageBuilder message(64);
    auto reply = message.initRoot<wire::Reply>();
    reply.setSeq(seq);
    StatusToWire(status, reply.initStatus());
    ConstBuffer payload{bulk.data, bulk.size};
    SendReplyMessage(message, status.ok() && bulk.size > 0
                                  ? std::span<const ConstBuffer>(&payload, 1)
                                  : std::span<const ConstBuffer>());
    CompletionDone();
  };
}

void Session::SendGateReached(uint64_t seq, const Status& status, bool held, bool stream_failed) {
  capnp::MallocMessageBuilder message(64);
  auto reply = message.initRoot<wire::Reply>();
  reply.setSeq(seq);
  StatusToWire(status, reply.initStatus());
  auto reached = reply.initGateReached();
  reached.setHeld(held);
  reached.setStreamFailed(stream_failed);
  SendReplyMessage(message, {});
}

void Session::CompletionDone() {
  std::lock_guard<std::mutex> lock(pending_mutex_);
  --pending_completions_;
  pending_cv_.notify_all();
}

// --- lookups and validation -------------------------------------------------

Status Session::FindContext(uint64_t ctx, ContextEntry** out) {
  auto it = contexts_.find(ctx);
  if (it == contexts_.end()) return InvalidContext(ctx);
  *out = &it->second;
  return Status::Ok();
}

Status Session::FindStream(uint64_t ctx, uint64_t stream, backend::Stream** out) {
  if (stream == 0) {
    ContextEntry* c = nullptr;
    FERRY_RETURN_IF_ERROR(FindContext(ctx, &c));
    *out = &backend_.LegacyStream(*c->context);
    return Status::Ok();
  }
  auto it = streams_.find(stream);
  if (it == streams_.end()) {
    return Status::InvalidHandle("no stream " + std::to_string(stream) + " in this session");
  }
  *out = it->second.stream.get();
  return Status::Ok();
}

Status Session::FindEvent(uint64_t event, EventEntry** out) {
  auto it = events_.find(event);
  if (it == events_.end()) {
    return Status::InvalidHandle("no event " + std::to_string(event) + " in this session");
  }
  *out = &it->second;
  return Status::Ok();
}

Status Session::FindModule(uint64_t module, ModuleEntry** out) {
  auto it = modules_.find(module);
  if (it == modules_.end()) {
    return Status::InvalidHandle("no module " + std::to_string(module) + " in this session");
  }
  *out = &it->second;
  return Status::Ok();
}

Status Session::FindFunction(uint64_t function, FunctionEntry** out) {
  auto it = functions_.find(function);
  if (it == functions_.end()) {
    return Status::InvalidHandle("no function " + std::to_string(function) + " in this session");
  }
  *out = &it->second;
  return Status::Ok();
}

Status Session::CheckRange(uint64_t address, uint64_t bytes, const char* what) const {
  if (bytes == 0) return Status::Ok();
  auto it = ranges_.upper_bound(address);
  if (it != ranges_.begin()) {
    --it;
    const uint64_t base = it->first;
    const uint64_t size = it->second.size;
    if (address >= base && !AddOverflows(address, bytes) && address + bytes <= base + size) {
      return Status::Ok();
    }
  }
  return Status::InvalidArgument(std::string(what) + " range [" + Hex(address) + ", +" +
                                 std::to_string(bytes) +
                                 ") is not inside an allocation of this session");
}

Status Session::CheckRange2D(uint64_t address, uint64_t pitch, uint64_t width_bytes,
                             uint64_t height, const char* what) const {
  if (width_bytes == 0 || height == 0) return Status::Ok();
  if (height > 1 && pitch < width_bytes) {
    return Status::InvalidArgument(std::string(what) + " pitch " + std::to_string(pitch) +
                                   " is smaller than the row width " + std::to_string(width_bytes));
  }
  // span = pitch * (height - 1) + width, without overflow.
  const uint64_t rows = height - 1;
  if (rows != 0 && pitch > (std::numeric_limits<uint64_t>::max() - width_bytes) / rows) {
    return Status::InvalidArgument(std::string(what) + " 2D extent overflows");
  }
  return CheckRange(address, pitch * rows + width_bytes, what);
}

// --- quotas and shares ------------------------------------------------------------

Status Session::CheckQuota(int device, uint64_t bytes) const {
  const SessionDevice& d = grant_.devices[device];
  if (d.memory_quota == 0) return Status::Ok();
  const uint64_t used = device_bytes_[device].load();
  if (used <= d.memory_quota && bytes <= d.memory_quota - used) return Status::Ok();
  return Status::OutOfMemory(
      "cannot allocate " + std::to_string(bytes) + " bytes on device " + std::to_string(device) +
      ": it is slice " + std::to_string(d.slice + 1) + "/" + std::to_string(d.slices_per_gpu) +
      " of GPU " + std::to_string(d.gpu) + " (pool " + grant_.pool + ") with a quota of " +
      FormatByteSize(d.memory_quota) + ", " + std::to_string(used) + " bytes in use");
}

void Session::Charge(int device, uint64_t bytes) {
  device_bytes_[device].fetch_add(bytes);
  bytes_allocated_.fetch_add(bytes);
  allocation_count_.fetch_add(1);
}

void Session::Uncharge(int device, uint64_t bytes) {
  device_bytes_[device].fetch_sub(bytes);
  bytes_allocated_.fetch_sub(bytes);
  allocation_count_.fetch_sub(1);
}

void Session::ThrottleBeforeLaunch(int device) {
  DeviceThrottle& t = *throttles_[device];
  // Only this session waits (its calls keep their order); Stop and Preempt
  // cut the wait short.
  std::unique_lock<std::mutex> lock(throttle_mutex_);
  throttle_cv_.wait(lock, [&] { return interrupted_ || t.in_flight == 0; });
  if (interrupted_) return;
  const absl::Duration delay = t.throttle.DelayBeforeLaunch(absl::Now());
  if (delay <= absl::ZeroDuration()) return;
  throttle_cv_.wait_for(lock, absl::ToChronoNanoseconds(delay), [this] { return interrupted_; });
}

void Session::MeasureLaunch(int device, backend::Stream& stream) {
  {
    std::lock_guard<std::mutex> lock(pending_mutex_);
    ++pending_completions_;
  }
  DeviceThrottle* t = throttles_[device].get();
  {
    std::lock_guard<std::mutex> lock(throttle_mutex_);
    ++t->in_flight;
  }
  const absl::Time queued = absl::Now();
  // The device had nothing else of this session in flight, so the time from
  // queueing to the stream going idle is this kernel's busy time.
  backend_.WhenStreamIdle(stream, [this, t, queued](Status) {
    {
      std::lock_guard<std::mutex> lock(throttle_mutex_);
      const absl::Time done = absl::Now();
      if (done > queued) t->throttle.ChargeBusy(done - queued, done);
      --t->in_flight;
    }
    throttle_cv_.notify_all();
    CompletionDone();
  });
}

// --- contexts -----------------------------------------------------------------

Status Session::CtxCreate(wire::CtxCreate::Reader args) {
  const uint64_t id = args.getCtx();
  if (id == 0 || contexts_.count(id) != 0) {
    return Status::InvalidArgument("context id " + std::to_string(id) + " is 0 or already in use");
  }
  const int device = args.getDevice();
  if (device < 0 || device >= static_cast<int>(grant_.devices.size())) {
    return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "no device " + std::to_string(device));
  }
  ContextEntry entry;
  entry.device = device;
  const SessionDevice& where = grant_.devices[device];
  if (where.sm_partition_sms > 0) {
    FERRY_RETURN_IF_ERROR(backend_.CreatePartitionedContext(
        where.backend_device, args.getFlags(), where.slices_per_gpu, where.slice, &entry.context));
  } else {
    FERRY_RETURN_IF_ERROR(
        backend_.CreateContext(where.backend_device, args.getFlags(), &entry.context));
  }
  contexts_.emplace(id, std::move(entry));
  context_count_.fetch_add(1);
  return Status::Ok();
}

void Session::DestroyContextResources(uint64_t ctx) {
  // Events and streams first (destroying a stream waits for its work), then
  // modules and memory, so nothing in flight touches freed memory.
  for (auto it = events_.begin(); it != events_.end();) {
    if (it->second.ctx == ctx) {
      it = events_.erase(it);
      event_count_.fetch_sub(1);
    } else {
      ++it;
    }
  }
  for (auto it = streams_.begin(); it != streams_.end();) {
    if (it->second.ctx == ctx) {
      it = streams_.erase(it);
      stream_count_.fetch_sub(1);
    } else {
      ++it;
    }
  }
  auto context_it = contexts_.find(ctx);
  for (auto it = ranges_.begin(); it != ranges_.end();) {
    if (it->second.ctx == ctx) {
      if (it->second.module == 0) {
        if (context_it != contexts_.end()) {
          Status status = backend_.MemFree(*context_it->second.context, it->first);
          if (!status.ok()) {
            FERRY_LOG(kWarning) << "session " << id_ << ": freeing " << Hex(it->first)
                                << " failed: " << status.ToString();
          }
        }
        Uncharge(it->second.device, it->second.size);
      }
      it = ranges_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = functions_.begin(); it != functions_.end();) {
    it = it->second.ctx == ctx ? functions_.erase(it) : std::next(it);
  }
  for (auto it = modules_.begin(); it != modules_.end();) {
    if (it->second.ctx == ctx) {
      it = modules_.erase(it);
      module_count_.fetch_sub(1);
    } else {
      ++it;
    }
  }
}

Status Session::CtxDestroy(wire::CtxRef::Reader args) {
  auto it = contexts_.find(args.getCtx());
  if (it == contexts_.end()) return InvalidContext(args.getCtx());
  DestroyContextResources(args.getCtx());
  contexts_.erase(args.getCtx());
  context_count_.fetch_sub(1);
  return Status::Ok();
}

void Session::FreeEverything() {
  std::vector<uint64_t> ids;
  for (auto& [id, entry] : contexts_) ids.push_back(id);
  for (uint64_t id : ids) {
    DestroyContextResources(id);
    contexts_.erase(id);
    context_count_.fetch_sub(1);
  }
  // Anything left belongs to no context (cannot happen by construction).
  events_.clear();
  streams_.clear();
  functions_.clear();
  modules_.clear();
  ranges_.clear();
  // Libraries last: their modules went with the contexts.
  libraries_.clear();
}

Status Session::CtxSynchronize(wire::CtxRef::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  Status idle_status;
  if (backend_.ContextIdleNow(*c->context, &idle_status)) return idle_status;
  backend_.WhenContextIdle(*c->context, DeferReply(cx));
  return Status::Ok();
}

Status Session::CtxGetLimit(wire::CtxLimit::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  uint64_t value = 0;
  FERRY_RETURN_IF_ERROR(backend_.GetLimit(*c->context, static_cast<int>(args.getLimit()), &value));
  cx.reply.setValue(static_cast<int64_t>(value));
  return Status::Ok();
}

Status Session::CtxSetLimit(wire::CtxLimit::Reader args) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  return backend_.SetLimit(*c->context, static_cast<int>(args.getLimit()), args.getValue());
}

Status Session::CtxResetPersistingL2Cache(wire::CtxRef::Reader args) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  return backend_.ResetPersistingL2Cache(*c->context);
}

// --- memory ---------------------------------------------------------------------

Status Session::MemAlloc(wire::MemAlloc::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  if (args.getBytes() == 0) return Status::InvalidArgument("cuMemAlloc of 0 bytes");
  FERRY_RETURN_IF_ERROR(CheckQuota(c->device, args.getBytes()));
  uint64_t dptr = 0;
  FERRY_RETURN_IF_ERROR(backend_.MemAlloc(*c->context, args.getBytes(), &dptr));
  ranges_[dptr] = RangeEntry{args.getBytes(), args.getCtx(), 0, c->device};
  Charge(c->device, args.getBytes());
  cx.reply.initMemAlloc().setDptr(dptr);
  return Status::Ok();
}

Status Session::MemAllocPitch(wire::MemAllocPitch::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  const unsigned element = args.getElementBytes();
  if (args.getWidthBytes() == 0 || args.getHeight() == 0 ||
      (element != 4 && element != 8 && element != 16)) {
    return Status::InvalidArgument("cuMemAllocPitch: bad width, height or element size");
  }
  // The pitch is the backend's to choose; the quota is checked before with
  // the least the allocation can take, and after with what it took.
  if (args.getHeight() > std::numeric_limits<uint64_t>::max() / args.getWidthBytes()) {
    return Status::OutOfMemory("cuMemAllocPitch: extent overflows");
  }
  FERRY_RETURN_IF_ERROR(CheckQuota(c->device, args.getWidthBytes() * args.getHeight()));
  uint64_t dptr = 0, pitch = 0;
  FERRY_RETURN_IF_ERROR(backend_.MemAllocPitch(*c->context, args.getWidthBytes(), args.getHeight(),
                                               element, &dptr, &pitch));
  const uint64_t bytes = pitch * args.getHeight();
  if (Status quota = CheckQuota(c->device, bytes); !quota.ok()) {
    (void)backend_.MemFree(*c->context, dptr);
    return quota;
  }
  ranges_[dptr] = RangeEntry{bytes, args.getCtx(), 0, c->device};
  Charge(c->device, bytes);
  auto result = cx.reply.initMemAlloc();
  result.setDptr(dptr);
  result.setPitch(pitch);
  return Status::Ok();
}

Status Session::MemFree(wire::MemFree::Reader args) {
  auto it = ranges_.find(args.getDptr());
  if (it == ranges_.end() || it->second.module != 0) {
    return Status::InvalidArgument("cuMemFree(" + Hex(args.getDptr()) +
                                   "): not the start of an allocation of this session");
  }
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(it->second.ctx, &c));
  const uint64_t size = it->second.size;
  const int device = it->second.device;
  ranges_.erase(it);
  Uncharge(device, size);
  return backend_.MemFree(*c->context, args.getDptr());
}

Status Session::MemGetInfo(wire::CtxRef::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  uint64_t free_bytes = 0, total = 0;
  FERRY_RETURN_IF_ERROR(backend_.MemGetInfo(*c->context, &free_bytes, &total));
  const uint64_t quota = grant_.devices[c->device].memory_quota;
  if (quota != 0) {
    // The slice: its size, and what is left of it (never more than the
    // device itself has free).
    const uint64_t used = device_bytes_[c->device].load();
    total = quota;
    free_bytes = std::min(free_bytes, used < quota ? quota - used : 0);
  }
  auto info = cx.reply.initMemGetInfo();
  info.setFree(free_bytes);
  info.setTotal(total);
  return Status::Ok();
}

Status Session::MemcpyHtoD(wire::Memcpy::Reader args, CallContext& cx) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  if (cx.bulk_in.size != args.getBytes()) {
    return Status::InvalidArgument("host-to-device copy of " + std::to_string(args.getBytes()) +
                                   " bytes carried " + std::to_string(cx.bulk_in.size));
  }
  FERRY_RETURN_IF_ERROR(CheckRange(args.getDst(), args.getBytes(), "destination"));
  if (args.getBytes() == 0) return Status::Ok();
  Status idle_status;
  if (backend_.DeviceMemoryIsHostMemory() && backend_.StreamIdleNow(*stream, &idle_status) &&
      idle_status.ok()) {
    // What the queued copy would do when its turn came; no thread hop.
    std::memcpy(reinterpret_cast<void*>(args.getDst()), cx.bulk_in.data, args.getBytes());
    return Status::Ok();
  }
  return backend_.CopyHostToDevice(*stream, args.getDst(), cx.bulk_in);
}

Status Session::MemcpyDtoH(wire::Memcpy::Reader args, CallContext& cx) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  FERRY_RETURN_IF_ERROR(CheckRange(args.getSrc(), args.getBytes(), "source"));
  if (!cx.wants_reply) return Status::InvalidArgument("a device-to-host copy must want a reply");
  Status idle_status;
  if (backend_.StreamIdleNow(*stream, &idle_status)) {
    // Nothing queued can still change the source: answer now.
    if (!idle_status.ok()) return idle_status;
    if (args.getBytes() == 0) return Status::Ok();
    if (backend_.DeviceMemoryIsHostMemory()) {
      // The reply is written from device memory itself before the executor
      // runs the session's next call, so nothing of this session can change
      // the bytes meanwhile.
      cx.reply_bulk = ConstBuffer{reinterpret_cast<const void*>(args.getSrc()), args.getBytes()};
      return Status::Ok();
    }
  }
  backend::MutableHostBytes buffer;
  if (args.getBytes() > 0) {
    std::shared_ptr<uint8_t[]> bytes(new (std::nothrow) uint8_t[args.getBytes()]);
    if (!bytes)
      return Status::OutOfMemory("cannot buffer " + std::to_string(args.getBytes()) + " bytes");
    buffer.data = bytes.get();
    buffer.size = args.getBytes();
    buffer.owner = Alias<void>(bytes, bytes.get());
    FERRY_RETURN_IF_ERROR(backend_.CopyDeviceToHost(*stream, buffer, args.getSrc()));
  }
  backend_.WhenStreamIdle(*stream, DeferReply(cx, buffer));
  return Status::Ok();
}

Status Session::MemcpyDtoD(wire::Memcpy::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  FERRY_RETURN_IF_ERROR(CheckRange(args.getSrc(), args.getBytes(), "source"));
  FERRY_RETURN_IF_ERROR(CheckRange(args.getDst(), args.getBytes(), "destination"));
  if (args.getBytes() == 0) return Status::Ok();
  return backend_.CopyDeviceToDevice(*stream, args.getDst(), args.getSrc(), args.getBytes());
}

Status Session::Memcpy2D(wire::Memcpy2D::Reader args, CallContext& cx) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  const uint64_t width = args.getWidthBytes();
  const uint64_t height = args.getHeight();
  if (width != 0 && height > std::numeric_limits<uint64_t>::max() / width) {
    return Status::InvalidArgument("2D copy extent overflows");
  }
  const uint64_t packed = width * height;
  const bool src_host = args.getSrcKind() == wire::MemoryKind::HOST;
  const bool dst_host = args.getDstKind() == wire::MemoryKind::HOST;
  if (src_host && dst_host)
    return Status::InvalidArgument("host-to-host 2D copy reached the server");
  backend::Copy2D copy;
  copy.width_bytes = width;
  copy.height = height;
  if (src_host) {
    if (cx.bulk_in.size != packed) {
      return Status::InvalidArgument("2D copy expected " + std::to_string(packed) +
                                     " packed bytes, got " + std::to_string(cx.bulk_in.size));
    }
    copy.src_is_host = true;
    copy.src_host = cx.bulk_in;
    copy.src_pitch = width;
  } else {
    FERRY_RETURN_IF_ERROR(
        CheckRange2D(args.getSrcDevice(), args.getSrcPitch(), width, height, "source"));
    copy.src_device = args.getSrcDevice();
    copy.src_pitch = args.getSrcPitch();
  }
  backend::MutableHostBytes buffer;
  if (dst_host) {
    if (!cx.wants_reply) return Status::InvalidArgument("a 2D copy to the host must want a reply");
    std::shared_ptr<uint8_t[]> bytes(new (std::nothrow) uint8_t[packed > 0 ? packed : 1]);
    if (!bytes) return Status::OutOfMemory("cannot buffer " + std::to_string(packed) + " bytes");
    buffer.data = bytes.get();
    buffer.size = packed;
    buffer.owner = Alias<void>(bytes, bytes.get());
    copy.dst_is_host = true;
    copy.dst_host = buffer;
    copy.dst_pitch = width;
  } else {
    FERRY_RETURN_IF_ERROR(
        CheckRange2D(args.getDstDevice(), args.getDstPitch(), width, height, "destination"));
    copy.dst_device = args.getDstDevice();
    copy.dst_pitch = args.getDstPitch();
  }
  if (packed > 0) FERRY_RETURN_IF_ERROR(backend_.Copy2DAsync(*stream, std::move(copy)));
  if (dst_host) backend_.WhenStreamIdle(*stream, DeferReply(cx, buffer));
  return Status::Ok();
}

Status Session::Memset(wire::Memset::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  const unsigned element = args.getElementBytes();
  if (element != 1 && element != 2 && element != 4) {
    return Status::InvalidArgument("memset element size must be 1, 2 or 4");
  }
  const uint64_t width = args.getWidth();
  if (width > std::numeric_limits<uint64_t>::max() / element) {
    return Status::InvalidArgument("memset extent overflows");
  }
  const uint64_t height = args.getHeight() == 0 ? 1 : args.getHeight();
  FERRY_RETURN_IF_ERROR(CheckRange2D(args.getDst(), height == 1 ? width * element : args.getPitch(),
                                     width * element, height, "memset"));
  if (width == 0) return Status::Ok();
  return backend_.Memset(*stream, args.getDst(), args.getPitch(), args.getValue(), element, width,
                         height);
}

// --- modules and functions ---------------------------------------------------

namespace {

// Fills a moduleLoad reply (also libraryLoad's) from what the backend found.
void DescribeInReply(const backend::ModuleDescription& description, wire::Reply::Builder reply) {
  auto result = reply.initModuleLoad();
  auto kernels = result.initKernels(static_cast<unsigned>(description.kernels.size()));
  for (size_t i = 0; i < description.kernels.size(); ++i) {
    const auto& k = description.kernels[i];
    auto out = kernels[static_cast<unsigned>(i)];
    out.setName(k.name);
    auto params = out.initParams(static_cast<unsigned>(k.params.size()));
    for (size_t p = 0; p < k.params.size(); ++p) {
      params[static_cast<unsigned>(p)].setOffset(k.params[p].offset);
      params[static_cast<unsigned>(p)].setSize(k.params[p].size);
    }
  }
  auto globals = result.initGlobals(static_cast<unsigned>(description.globals.size()));
  for (size_t i = 0; i < description.globals.size(); ++i) {
    globals[static_cast<unsigned>(i)].setName(description.globals[i].name);
    globals[static_cast<unsigned>(i)].setSize(description.globals[i].size);
  }
}

}  // namespace

// The image of a moduleLoad or libraryLoad: sent with the call, or named by
// its hash and taken from the cache (the protocol prose in
// schema/ferry.capnp). `source->not_cached`: the server lacks it, the reply
// says so and nothing is to be created.
Status Session::TakeImage(capnp::Data::Reader hash_data, uint64_t image_bytes, CallContext& cx,
                          ImageSource* source) {
  source->named = hash_data.size() > 0;
  if (source->named) {
    if (hash_data.size() != source->hash.size()) {
      return Status::InvalidArgument("image hash of " + std::to_string(hash_data.size()) +
                                     " bytes; SHA-256 has 32");
    }
    std::memcpy(source->hash.data(), hash_data.begin(), source->hash.size());
  }
  source->image = cx.bulk_in;
  if (source->image.size > 0) {
    module_image_bytes_received_.fetch_add(source->image.size);
    // Only bytes that are what their name says may be kept under it (there
    // is nothing to keep, and so nothing to check, without a cache).
    if (source->named && module_cache_ != nullptr &&
        (image_bytes != source->image.size ||
         HashContent(std::span<const uint8_t>(source->image.data, source->image.size)) !=
             source->hash)) {
      return Status::InvalidArgument("image bytes do not match the SHA-256 sent with them");
    }
    return Status::Ok();
  }
  if (!source->named) return Status::Cuda(CUDA_ERROR_INVALID_IMAGE, "empty image");
  if (module_cache_ == nullptr || !module_cache_->Find(source->hash, image_bytes, &source->image)) {
    source->not_cached = true;
    cx.reply.setImageNotCached(true);
  }
  return Status::Ok();
}

// After a successful load: named bytes that came with the call go into the
// cache for the next process.
void Session::KeepImage(const ImageSource& source, const CallContext& cx) {
  if (source.named && cx.bulk_in.size > 0 && module_cache_ != nullptr) {
    module_cache_->Insert(source.hash, cx.bulk_in);
  }
}

Status Session::ModuleLoad(wire::ModuleLoad::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  const uint64_t id = args.getModule();
  if (id == 0 || modules_.count(id) != 0) {
    return Status::InvalidArgument("module id " + std::to_string(id) + " is 0 or already in use");
  }
  ImageSource source;
  FERRY_RETURN_IF_ERROR(TakeImage(args.getImageHash(), args.getImageBytes(), cx, &source));
  if (source.not_cached) return Status::Ok();
  const backend::HostBytes& image = source.image;
  ModuleEntry entry;
  entry.ctx = args.getCtx();
  auto description = std::make_shared<backend::ModuleDescription>();
  FERRY_RETURN_IF_ERROR(backend_.LoadModule(*c->context,
                                            std::span<const uint8_t>(image.data, image.size),
                                            &entry.module, description.get()));
  KeepImage(source, cx);
  DescribeInReply(*description, cx.reply);
  entry.description = std::move(description);
  modules_.emplace(id, std::move(entry));
  module_count_.fetch_add(1);
  return Status::Ok();
}

void Session::EraseModule(uint64_t id) {
  for (auto it = functions_.begin(); it != functions_.end();) {
    it = it->second.module == id ? functions_.erase(it) : std::next(it);
  }
  for (auto it = ranges_.begin(); it != ranges_.end();) {
    it = it->second.module == id ? ranges_.erase(it) : std::next(it);
  }
  if (modules_.erase(id) != 0) module_count_.fetch_sub(1);
}

Status Session::ModuleUnload(wire::ModuleRef::Reader args) {
  const uint64_t id = args.getModule();
  auto it = modules_.find(id);
  if (it == modules_.end()) {
    return Status::InvalidHandle("no module " + std::to_string(id) + " in this session");
  }
  if (it->second.library != 0) {
    return Status::InvalidHandle("module " + std::to_string(id) +
                                 " belongs to a library; cuLibraryUnload unloads it");
  }
  EraseModule(id);
  return Status::Ok();
}

Status Session::ModuleGetFunction(wire::ModuleGetFunction::Reader args) {
  ModuleEntry* m = nullptr;
  FERRY_RETURN_IF_ERROR(FindModule(args.getModule(), &m));
  const uint64_t id = args.getFunction();
  if (id == 0 || functions_.count(id) != 0) {
    return Status::InvalidArgument("function id " + std::to_string(id) + " is 0 or already in use");
  }
  const std::string name(args.getName().cStr());
  FunctionEntry entry;
  entry.module = args.getModule();
  entry.ctx = m->ctx;
  FERRY_RETURN_IF_ERROR(backend_.GetFunction(*m->module, name, &entry.function));
  for (const auto& kernel : m->description->kernels) {
    if (kernel.name != name) continue;
    for (const auto& p : kernel.params) {
      entry.param_bytes = std::max<uint64_t>(entry.param_bytes, uint64_t{p.offset} + p.size);
    }
  }
  functions_.emplace(id, entry);
  return Status::Ok();
}

Status Session::ModuleGetGlobal(wire::ModuleGetGlobal::Reader args, CallContext& cx) {
  ModuleEntry* m = nullptr;
  FERRY_RETURN_IF_ERROR(FindModule(args.getModule(), &m));
  uint64_t dptr = 0, bytes = 0;
  FERRY_RETURN_IF_ERROR(backend_.GetGlobal(*m->module, args.getName().cStr(), &dptr, &bytes));
  // The global becomes a range the session may copy to and from.
  if (bytes > 0 && ranges_.count(dptr) == 0) {
    ranges_[dptr] = RangeEntry{bytes, m->ctx, args.getModule()};
  }
  auto result = cx.reply.initModuleGetGlobal();
  result.setDptr(dptr);
  result.setBytes(bytes);
  return Status::Ok();
}

Status Session::FuncGetAttribute(wire::FuncAttribute::Reader args, CallContext& cx) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(FindFunction(args.getFunction(), &f));
  int value = 0;
  FERRY_RETURN_IF_ERROR(backend_.GetFunctionAttribute(*f->function, args.getAttribute(), &value));
  cx.reply.setValue(value);
  return Status::Ok();
}

Status Session::FuncSetAttribute(wire::FuncAttribute::Reader args) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(FindFunction(args.getFunction(), &f));
  return backend_.SetFunctionAttribute(*f->function, args.getAttribute(), args.getValue());
}

Status Session::FuncSetCacheConfig(wire::FuncCacheConfig::Reader args) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(FindFunction(args.getFunction(), &f));
  return backend_.SetFunctionCacheConfig(*f->function, args.getConfig());
}

Status Session::Launch(wire::Launch::Reader args, CallContext& cx) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(FindFunction(args.getFunction(), &f));
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  if (cx.bulk_in.size < f->param_bytes) {
    return Status::InvalidArgument("launch carried " + std::to_string(cx.bulk_in.size) +
                                   " parameter bytes; the kernel takes " +
                                   std::to_string(f->param_bytes));
  }
  backend::LaunchConfig config;
  config.grid = {args.getGridX(), args.getGridY(), args.getGridZ()};
  config.block = {args.getBlockX(), args.getBlockY(), args.getBlockZ()};
  config.shared_bytes = args.getSharedBytes();
  config.cluster = {args.getClusterX(), args.getClusterY(), args.getClusterZ()};
  for (int i = 0; i < 3; ++i) {
    if (config.grid[i] == 0 || config.block[i] == 0) {
      return Status::InvalidArgument("launch with a zero grid or block dimension");
    }
  }
  // The function's context names the device whose compute share applies.
  auto context = contexts_.find(f->ctx);
  const int device = context != contexts_.end() ? context->second.device : 0;
  const bool throttled = throttles_[device] != nullptr;
  if (throttled) ThrottleBeforeLaunch(device);
  FERRY_RETURN_IF_ERROR(backend_.Launch(*stream, *f->function, config, cx.bulk_in));
  if (throttled) MeasureLaunch(device, *stream);
  return Status::Ok();
}

// --- streams and events ---------------------------------------------------------

Status Session::StreamCreate(wire::StreamCreate::Reader args) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  const uint64_t id = args.getStream();
  if (id == 0 || streams_.count(id) != 0) {
    return Status::InvalidArgument("stream id " + std::to_string(id) + " is 0 or already in use");
  }
  StreamEntry entry;
  entry.ctx = args.getCtx();
  FERRY_RETURN_IF_ERROR(
      backend_.CreateStream(*c->context, args.getFlags(), args.getPriority(), &entry.stream));
  streams_.emplace(id, std::move(entry));
  stream_count_.fetch_add(1);
  return Status::Ok();
}

Status Session::StreamDestroy(wire::StreamRef::Reader args) {
  if (streams_.erase(args.getStream()) == 0) {
    return Status::InvalidHandle("no stream " + std::to_string(args.getStream()) +
                                 " in this session");
  }
  stream_count_.fetch_sub(1);
  return Status::Ok();
}

Status Session::StreamSynchronize(wire::StreamRef::Reader args, CallContext& cx) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  Status idle_status;
  if (backend_.StreamIdleNow(*stream, &idle_status)) return idle_status;
  backend_.WhenStreamIdle(*stream, DeferReply(cx));
  return Status::Ok();
}

Status Session::StreamQuery(wire::StreamRef::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  return backend_.QueryStream(*stream);
}

Status Session::StreamWaitEvent(wire::StreamWaitEvent::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  EventEntry* e = nullptr;
  FERRY_RETURN_IF_ERROR(FindEvent(args.getEvent(), &e));
  return backend_.StreamWaitEvent(*stream, *e->event);
}

Status Session::EventCreate(wire::EventCreate::Reader args) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  const uint64_t id = args.getEvent();
  if (id == 0 || events_.count(id) != 0) {
    return Status::InvalidArgument("event id " + std::to_string(id) + " is 0 or already in use");
  }
  EventEntry entry;
  entry.ctx = args.getCtx();
  FERRY_RETURN_IF_ERROR(backend_.CreateEvent(*c->context, args.getFlags(), &entry.event));
  events_.emplace(id, std::move(entry));
  event_count_.fetch_add(1);
  return Status::Ok();
}

Status Session::EventRecord(wire::EventRecord::Reader args) {
  EventEntry* e = nullptr;
  FERRY_RETURN_IF_ERROR(FindEvent(args.getEvent(), &e));
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  return backend_.RecordEvent(*e->event, *stream);
}

Status Session::EventQuery(wire::EventRef::Reader args) {
  EventEntry* e = nullptr;
  FERRY_RETURN_IF_ERROR(FindEvent(args.getEvent(), &e));
  return backend_.QueryEvent(*e->event);
}

Status Session::EventSynchronize(wire::EventRef::Reader args, CallContext& cx) {
  EventEntry* e = nullptr;
  FERRY_RETURN_IF_ERROR(FindEvent(args.getEvent(), &e));
  backend_.WhenEventComplete(*e->event, DeferReply(cx));
  return Status::Ok();
}

Status Session::EventElapsedTime(wire::EventElapsedTime::Reader args, CallContext& cx) {
  EventEntry* start = nullptr;
  EventEntry* end = nullptr;
  FERRY_RETURN_IF_ERROR(FindEvent(args.getStart(), &start));
  FERRY_RETURN_IF_ERROR(FindEvent(args.getEnd(), &end));
  float ms = 0;
  FERRY_RETURN_IF_ERROR(backend_.EventElapsedTime(*start->event, *end->event, &ms));
  cx.reply.setElapsedMs(ms);
  return Status::Ok();
}

Status Session::EventDestroy(wire::EventRef::Reader args) {
  if (events_.erase(args.getEvent()) == 0) {
    return Status::InvalidHandle("no event " + std::to_string(args.getEvent()) +
                                 " in this session");
  }
  event_count_.fetch_sub(1);
  return Status::Ok();
}

// --- libraries ---------------------------------------------------------------------

Status Session::LibraryLoad(wire::LibraryLoad::Reader args, CallContext& cx) {
  const uint64_t id = args.getLibrary();
  if (id == 0 || libraries_.count(id) != 0) {
    return Status::InvalidArgument("library id " + std::to_string(id) + " is 0 or already in use");
  }
  ImageSource source;
  FERRY_RETURN_IF_ERROR(TakeImage(args.getImageHash(), args.getImageBytes(), cx, &source));
  if (source.not_cached) return Status::Ok();
  LibraryEntry entry;
  auto description = std::make_shared<backend::ModuleDescription>();
  FERRY_RETURN_IF_ERROR(
      backend_.LoadLibrary(std::span<const uint8_t>(source.image.data, source.image.size),
                           &entry.library, description.get()));
  KeepImage(source, cx);
  DescribeInReply(*description, cx.reply);
  entry.description = std::move(description);
  libraries_.emplace(id, std::move(entry));
  return Status::Ok();
}

Status Session::LibraryUnload(wire::LibraryRef::Reader args) {
  const uint64_t id = args.getLibrary();
  auto it = libraries_.find(id);
  if (it == libraries_.end()) {
    return Status::InvalidHandle("no library " + std::to_string(id) + " in this session");
  }
  // Its modules in every context first (GpuBackend contract).
  std::vector<uint64_t> modules;
  for (const auto& [module_id, module] : modules_) {
    if (module.library == id) modules.push_back(module_id);
  }
  for (uint64_t module_id : modules) EraseModule(module_id);
  libraries_.erase(it);
  return Status::Ok();
}

Status Session::LibraryLoadModule(wire::LibraryLoadModule::Reader args) {
  auto library = libraries_.find(args.getLibrary());
  if (library == libraries_.end()) {
    return Status::InvalidHandle("no library " + std::to_string(args.getLibrary()) +
                                 " in this session");
  }
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  const uint64_t id = args.getModule();
  if (id == 0 || modules_.count(id) != 0) {
    return Status::InvalidArgument("module id " + std::to_string(id) + " is 0 or already in use");
  }
  for (const auto& [module_id, module] : modules_) {
    if (module.library == args.getLibrary() && module.ctx == args.getCtx()) {
      return Status::InvalidArgument("library " + std::to_string(args.getLibrary()) +
                                     " already has module " + std::to_string(module_id) +
                                     " in context " + std::to_string(args.getCtx()));
    }
  }
  ModuleEntry entry;
  entry.ctx = args.getCtx();
  entry.library = args.getLibrary();
  entry.description = library->second.description;
  FERRY_RETURN_IF_ERROR(
      backend_.LoadLibraryModule(*c->context, *library->second.library, &entry.module));
  modules_.emplace(id, std::move(entry));
  module_count_.fetch_add(1);
  return Status::Ok();
}

// --- occupancy ------------------------------------------------------------------------

Status Session::OccupancyMaxActiveBlocks(wire::OccupancyMaxActiveBlocks::Reader args,
                                         CallContext& cx) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(FindFunction(args.getFunction(), &f));
  auto sizes = args.getBlockSizes();
  auto smem = args.getDynamicSmemBytes();
  constexpr unsigned kMaxQueries = 1024;
  if (sizes.size() != smem.size() || sizes.size() == 0 || sizes.size() > kMaxQueries) {
    return Status::InvalidArgument(
        "occupancy query needs 1 to 1024 (block size, shared bytes) pairs");
  }
  std::vector<int64_t> answers;
  answers.reserve(sizes.size());
  for (unsigned i = 0; i < sizes.size(); ++i) {
    if (sizes[i] > static_cast<uint32_t>(std::numeric_limits<int>::max())) {
      return Status::Cuda(CUDA_ERROR_INVALID_VALUE, "block size out of range");
    }
    int blocks = 0;
    FERRY_RETURN_IF_ERROR(backend_.OccupancyMaxActiveBlocks(
        *f->function, static_cast<int>(sizes[i]), smem[i], args.getFlags(), &blocks));
    answers.push_back(blocks);
  }
  auto values = cx.reply.initValues(static_cast<unsigned>(answers.size()));
  for (unsigned i = 0; i < answers.size(); ++i) values.set(i, answers[i]);
  return Status::Ok();
}

Status Session::OccupancyAvailableDynamicSmem(wire::OccupancyAvailableDynamicSmem::Reader args,
                                              CallContext& cx) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(FindFunction(args.getFunction(), &f));
  constexpr uint32_t kIntMax = std::numeric_limits<int>::max();
  if (args.getNumBlocks() > kIntMax || args.getBlockSize() > kIntMax) {
    return Status::Cuda(CUDA_ERROR_INVALID_VALUE, "block count or size out of range");
  }
  uint64_t bytes = 0;
  FERRY_RETURN_IF_ERROR(
      backend_.OccupancyAvailableDynamicSmem(*f->function, static_cast<int>(args.getNumBlocks()),
                                             static_cast<int>(args.getBlockSize()), &bytes));
  cx.reply.setValue(static_cast<int64_t>(bytes));
  return Status::Ok();
}

Status Session::OccupancyCluster(wire::OccupancyCluster::Reader args, CallContext& cx) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(FindFunction(args.getFunction(), &f));
  backend::LaunchConfig config;
  config.grid = {args.getGridX(), args.getGridY(), args.getGridZ()};
  config.block = {args.getBlockX(), args.getBlockY(), args.getBlockZ()};
  config.shared_bytes = args.getSharedBytes();
  config.cluster = {args.getClusterX(), args.getClusterY(), args.getClusterZ()};
  for (int i = 0; i < 3; ++i) {
    if (config.grid[i] == 0 || config.block[i] == 0) {
      return Status::Cuda(CUDA_ERROR_INVALID_VALUE, "a grid or block dimension is 0");
    }
  }
  int value = 0;
  switch (args.getQuery()) {
    case wire::OccupancyCluster::Query::MAX_POTENTIAL_CLUSTER_SIZE:
      FERRY_RETURN_IF_ERROR(
          backend_.OccupancyMaxPotentialClusterSize(*f->function, config, &value));
      break;
    case wire::OccupancyCluster::Query::MAX_ACTIVE_CLUSTERS:
      FERRY_RETURN_IF_ERROR(backend_.OccupancyMaxActiveClusters(*f->function, config, &value));
      break;
    default:
      return Status::InvalidArgument("unknown cluster occupancy query");
  }
  cx.reply.setValue(value);
  return Status::Ok();
}

// --- host callbacks ------------------------------------------------------------

// The gate is registered before the backend can reach it, so the client's
// gateOpen (sent only after gateReached) always finds it. Its gateReached
// reports, for cuStreamAddCallback, the stream's own failure if any, else the
// error latched in the session so far (left latched: the next call that
// waits reports it as well).
Status Session::HostGate(wire::StreamRef::Reader args, CallContext& cx) {
  if (cx.wants_reply) {
    return Status::InvalidArgument(
        "a hostGate call must not want a reply: its answer is sent "
        "when the stream reaches it");
  }
  const uint64_t seq = cx.seq;
  backend::Stream* stream = nullptr;
  Status status = FindStream(args.getCtx(), args.getStream(), &stream);
  if (status.ok()) status = StartHelper();
  if (!status.ok()) {
    SendGateReached(seq, status, /*held=*/false, /*stream_failed=*/false);
    return status;
  }
  auto gate = std::make_shared<backend::HostGate>();
  {
    std::lock_guard<std::mutex> lock(serve_mutex_);
    if (serving_ended_) {
      gate->Open();  // the client is gone; the gate must not hold anything
    } else if (!gates_.emplace(seq, gate).second) {
      // A seq used twice: the earlier gate must stay findable, or nothing
      // could open it when the session ends.
      status = Status::InvalidArgument("hostGate seq " + std::to_string(seq) +
                                       " names a gate that is still closed");
    } else {
      serve_cv_.notify_all();  // a reader held back by the inbox limit reads again
    }
  }
  if (!status.ok()) {
    SendGateReached(seq, status, /*held=*/false, /*stream_failed=*/false);
    return status;
  }
  {
    std::lock_guard<std::mutex> lock(pending_mutex_);
    ++pending_completions_;
  }
  const Status latched = latched_error_;
  status = backend_.EnqueueHostGate(*stream, gate, [this, seq, latched](Status stream_status) {
    const bool failed = !stream_status.ok();
    SendGateReached(seq, failed ? stream_status : latched, /*held=*/true, failed);
    CompletionDone();
  });
  if (!status.ok()) {
    {
      std::lock_guard<std::mutex> lock(serve_mutex_);
      gates_.erase(seq);
    }
    gate->Open();
    CompletionDone();
    SendGateReached(seq, status, /*held=*/false, /*stream_failed=*/false);
  }
  return status;
}

}  // namespace ferry::server
