#include "server/session.h"

#include <cuda.h>
#include <kj/exception.h>

#include <chrono>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "common/log.h"

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
  return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "no context " + std::to_string(ctx) +
                                                      " in this session");
}

// A shared_ptr that keeps `owner` alive while pointing at `data`.
template <typename T, typename U>
std::shared_ptr<T> Alias(const std::shared_ptr<U>& owner, T* data) {
  return std::shared_ptr<T>(owner, data);
}

}  // namespace

Session::Session(uint64_t id, std::unique_ptr<Transport> transport, backend::GpuBackend& backend,
                 wire::Hello::Reader hello, ModuleCache* module_cache)
    : id_(id),
      transport_(std::move(transport)),
      backend_(backend),
      module_cache_(module_cache),
      pid_(hello.getPid()),
      host_(hello.getHost().cStr()),
      program_(hello.getProgram().cStr()),
      since_unix_ms_(NowUnixMs()) {}

Session::~Session() {
  // Run() has freed everything; wait for any completion still writing.
  std::unique_lock<std::mutex> lock(pending_mutex_);
  pending_cv_.wait(lock, [this] { return pending_completions_ == 0; });
}

void Session::Stop() { transport_->Shutdown(); }

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
  info.module_image_bytes_received = module_image_bytes_received_.load();
  return info;
}

void Session::Run() {
  {
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<wire::HelloReply>();
    StatusToWire(Status::Ok(), reply.initStatus());
    reply.setSessionId(id_);
    reply.setDriverVersion(backend_.DriverVersion());
    reply.setBackend(std::string(backend_.Name()));
    const auto& devices = backend_.Devices();
    auto list = reply.initDevices(static_cast<unsigned>(devices.size()));
    for (size_t i = 0; i < devices.size(); ++i) {
      const auto& d = devices[i];
      auto out = list[static_cast<unsigned>(i)];
      out.setName(d.name);
      out.setUuid(kj::arrayPtr(d.uuid.data(), d.uuid.size()));
      out.setTotalMemory(d.total_memory);
      out.setPciDomain(d.pci_domain);
      out.setPciBus(d.pci_bus);
      out.setPciDevice(d.pci_device);
      auto attrs = out.initAttributes(static_cast<unsigned>(d.attributes.size()));
      for (size_t a = 0; a < d.attributes.size(); ++a) attrs.set(static_cast<unsigned>(a), d.attributes[a]);
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
  ServeFrames();
  transport_->Shutdown();
  FreeEverything();
  FERRY_LOG(kInfo) << "session " << id_ << " closed; all its resources are freed";
}

void Session::ServeFrames() {
  for (;;) {
    wire::FrameKind kind;
    kj::Array<capnp::word> words;
    uint64_t bulk_bytes = 0;
    Status status = ReadFrameHead(*transport_, &kind, &words, &bulk_bytes);
    if (status.ok()) {
      if (kind != wire::FrameKind::CALL_BATCH) {
        status = Status::Malformed("unexpected frame kind " +
                                   std::to_string(static_cast<int>(kind)) +
                                   " on a client session");
      } else {
        status = ExecuteBatch(words, bulk_bytes);
      }
    }
    if (!status.ok()) {
      if (status.code() == StatusCode::kDisconnected) {
        FERRY_LOG(kInfo) << "session " << id_ << ": " << status.message();
      } else {
        FERRY_LOG(kWarning) << "session " << id_ << " from " << transport_->PeerName()
                            << ": closing: " << status.ToString();
      }
      return;
    }
  }
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

Status Session::ExecuteBatch(kj::ArrayPtr<const capnp::word> words, uint64_t bulk_bytes) {
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
          if (TryDirectHostToDevice(call, &read)) {
            FERRY_RETURN_IF_ERROR(read);
            continue;
          }
          std::shared_ptr<uint8_t[]> own = AllocateBulk(entry.bulk_bytes);
          if (!own) {
            return Status::OutOfMemory("cannot buffer a bulk payload of " +
                                       std::to_string(entry.bulk_bytes) + " bytes");
          }
          FERRY_RETURN_IF_ERROR(transport_->ReadExact(own.get(), entry.bulk_bytes));
          bulk.data = own.get();
          bulk.owner = Alias<const void>(own, own.get());
        } else {
          uint8_t* at = shared.get() + shared_offset;
          shared_offset += entry.bulk_bytes;
          FERRY_RETURN_IF_ERROR(transport_->ReadExact(at, entry.bulk_bytes));
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

bool Session::TryDirectHostToDevice(wire::Call::Reader call, Status* read_status) {
  auto args = call.getMemcpyHtoD();
  if (call.getWantsReply() || args.getBytes() != call.getBulkBytes()) return false;
  backend::Stream* stream = nullptr;
  if (!FindStream(args.getCtx(), args.getStream(), &stream).ok()) return false;
  if (!CheckRange(args.getDst(), args.getBytes(), "destination").ok()) return false;
  // Only onto an idle stream: then writing now is what the queued copy would
  // do when its turn came, and no earlier work can still read these bytes.
  Status stream_status;
  if (!backend_.StreamIdleNow(*stream, &stream_status) || !stream_status.ok()) return false;
  *read_status = transport_->ReadExact(reinterpret_cast<void*>(args.getDst()), args.getBytes());
  return true;
}

void Session::Execute(wire::Call::Reader call, backend::HostBytes bulk) {
  CallContext cx;
  cx.seq = call.getSeq();
  cx.wants_reply = call.getWantsReply();
  cx.bulk_in = std::move(bulk);
  cx.reply.setSeq(cx.seq);

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
      latched_error_ = status.WithContext("asynchronous error from call " +
                                          std::to_string(cx.seq));
      latched_seq_ = cx.seq;
    }
    FERRY_LOG(kDebug) << "session " << id_ << ": call " << cx.seq << " failed: " << status.ToString();
  }
}

Status Session::Dispatch(wire::Call::Reader call, CallContext& cx) {
  using W = wire::Call;
  switch (call.which()) {
    case W::PING: return Status::Ok();
    case W::CTX_CREATE: return CtxCreate(call.getCtxCreate());
    case W::CTX_DESTROY: return CtxDestroy(call.getCtxDestroy());
    case W::CTX_SYNCHRONIZE: return CtxSynchronize(call.getCtxSynchronize(), cx);
    case W::CTX_GET_LIMIT: return CtxGetLimit(call.getCtxGetLimit(), cx);
    case W::CTX_SET_LIMIT: return CtxSetLimit(call.getCtxSetLimit());
    case W::MEM_ALLOC: return MemAlloc(call.getMemAlloc(), cx);
    case W::MEM_ALLOC_PITCH: return MemAllocPitch(call.getMemAllocPitch(), cx);
    case W::MEM_FREE: return MemFree(call.getMemFree());
    case W::MEM_GET_INFO: return MemGetInfo(call.getMemGetInfo(), cx);
    case W::MEMCPY_HTO_D: return MemcpyHtoD(call.getMemcpyHtoD(), cx);
    case W::MEMCPY_DTO_H: return MemcpyDtoH(call.getMemcpyDtoH(), cx);
    case W::MEMCPY_DTO_D: return MemcpyDtoD(call.getMemcpyDtoD());
    case W::MEMCPY2_D: return Memcpy2D(call.getMemcpy2D(), cx);
    case W::MEMSET: return Memset(call.getMemset());
    case W::MODULE_LOAD: return ModuleLoad(call.getModuleLoad(), cx);
    case W::MODULE_UNLOAD: return ModuleUnload(call.getModuleUnload());
    case W::MODULE_GET_FUNCTION: return ModuleGetFunction(call.getModuleGetFunction());
    case W::MODULE_GET_GLOBAL: return ModuleGetGlobal(call.getModuleGetGlobal(), cx);
    case W::FUNC_GET_ATTRIBUTE: return FuncGetAttribute(call.getFuncGetAttribute(), cx);
    case W::FUNC_SET_ATTRIBUTE: return FuncSetAttribute(call.getFuncSetAttribute());
    case W::FUNC_SET_CACHE_CONFIG: return FuncSetCacheConfig(call.getFuncSetCacheConfig());
    case W::LAUNCH: return Launch(call.getLaunch(), cx);
    case W::STREAM_CREATE: return StreamCreate(call.getStreamCreate());
    case W::STREAM_DESTROY: return StreamDestroy(call.getStreamDestroy());
    case W::STREAM_SYNCHRONIZE: return StreamSynchronize(call.getStreamSynchronize(), cx);
    case W::STREAM_QUERY: return StreamQuery(call.getStreamQuery());
    case W::STREAM_WAIT_EVENT: return StreamWaitEvent(call.getStreamWaitEvent());
    case W::EVENT_CREATE: return EventCreate(call.getEventCreate());
    case W::EVENT_RECORD: return EventRecord(call.getEventRecord());
    case W::EVENT_QUERY: return EventQuery(call.getEventQuery());
    case W::EVENT_SYNCHRONIZE: return EventSynchronize(call.getEventSynchronize(), cx);
    case W::EVENT_ELAPSED_TIME: return EventElapsedTime(call.getEventElapsedTime(), cx);
    case W::EVENT_DESTROY: return EventDestroy(call.getEventDestroy());
  }
  return Status::Unimplemented("call ordinal " + std::to_string(static_cast<int>(call.which())) +
                               " is not known to this ferryd");
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
    SendReplyMessage(message, status.ok() && bulk.size > 0 ? std::span<const ConstBuffer>(&payload, 1)
                                                           : std::span<const ConstBuffer>());
    CompletionDone();
  };
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

// --- contexts -----------------------------------------------------------------

Status Session::CtxCreate(wire::CtxCreate::Reader args) {
  const uint64_t id = args.getCtx();
  if (id == 0 || contexts_.count(id) != 0) {
    return Status::InvalidArgument("context id " + std::to_string(id) + " is 0 or already in use");
  }
  const int device = args.getDevice();
  if (device < 0 || device >= static_cast<int>(backend_.Devices().size())) {
    return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "no device " + std::to_string(device));
  }
  ContextEntry entry;
  entry.device = device;
  FERRY_RETURN_IF_ERROR(backend_.CreateContext(device, args.getFlags(), &entry.context));
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
        bytes_allocated_.fetch_sub(it->second.size);
        allocation_count_.fetch_sub(1);
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

// --- memory ---------------------------------------------------------------------

Status Session::MemAlloc(wire::MemAlloc::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  if (args.getBytes() == 0) return Status::InvalidArgument("cuMemAlloc of 0 bytes");
  uint64_t dptr = 0;
  FERRY_RETURN_IF_ERROR(backend_.MemAlloc(*c->context, args.getBytes(), &dptr));
  ranges_[dptr] = RangeEntry{args.getBytes(), args.getCtx(), 0};
  bytes_allocated_.fetch_add(args.getBytes());
  allocation_count_.fetch_add(1);
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
  uint64_t dptr = 0, pitch = 0;
  FERRY_RETURN_IF_ERROR(backend_.MemAllocPitch(*c->context, args.getWidthBytes(), args.getHeight(),
                                               element, &dptr, &pitch));
  const uint64_t bytes = pitch * args.getHeight();
  ranges_[dptr] = RangeEntry{bytes, args.getCtx(), 0};
  bytes_allocated_.fetch_add(bytes);
  allocation_count_.fetch_add(1);
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
  ranges_.erase(it);
  bytes_allocated_.fetch_sub(size);
  allocation_count_.fetch_sub(1);
  return backend_.MemFree(*c->context, args.getDptr());
}

Status Session::MemGetInfo(wire::CtxRef::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  uint64_t free_bytes = 0, total = 0;
  FERRY_RETURN_IF_ERROR(backend_.MemGetInfo(*c->context, &free_bytes, &total));
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
    if (!bytes) return Status::OutOfMemory("cannot buffer " + std::to_string(args.getBytes()) + " bytes");
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
  if (src_host && dst_host) return Status::InvalidArgument("host-to-host 2D copy reached the server");
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
    FERRY_RETURN_IF_ERROR(CheckRange2D(args.getSrcDevice(), args.getSrcPitch(), width, height, "source"));
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
    FERRY_RETURN_IF_ERROR(CheckRange2D(args.getDstDevice(), args.getDstPitch(), width, height, "destination"));
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

Status Session::ModuleLoad(wire::ModuleLoad::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(FindContext(args.getCtx(), &c));
  const uint64_t id = args.getModule();
  if (id == 0 || modules_.count(id) != 0) {
    return Status::InvalidArgument("module id " + std::to_string(id) + " is 0 or already in use");
  }
  // The image: sent with the call, or named by its hash and taken from the
  // cache (see the protocol prose in schema/ferry.capnp).
  auto hash_data = args.getImageHash();
  const bool named = hash_data.size() > 0;
  ContentHash hash{};
  if (named) {
    if (hash_data.size() != hash.size()) {
      return Status::InvalidArgument("module image hash of " + std::to_string(hash_data.size()) +
                                     " bytes; SHA-256 has 32");
    }
    std::memcpy(hash.data(), hash_data.begin(), hash.size());
  }
  backend::HostBytes image = cx.bulk_in;
  if (image.size > 0) {
    module_image_bytes_received_.fetch_add(image.size);
    // Only bytes that are what their name says may be kept under it (there
    // is nothing to keep, and so nothing to check, without a cache).
    if (named && module_cache_ != nullptr &&
        (args.getImageBytes() != image.size ||
         HashContent(std::span<const uint8_t>(image.data, image.size)) != hash)) {
      return Status::InvalidArgument("module image bytes do not match the SHA-256 sent with them");
    }
  } else if (named) {
    if (module_cache_ == nullptr || !module_cache_->Find(hash, args.getImageBytes(), &image)) {
      cx.reply.setImageNotCached(true);
      return Status::Ok();
    }
  } else {
    return Status::Cuda(CUDA_ERROR_INVALID_IMAGE, "empty module image");
  }
  ModuleEntry entry;
  entry.ctx = args.getCtx();
  FERRY_RETURN_IF_ERROR(backend_.LoadModule(
      *c->context, std::span<const uint8_t>(image.data, image.size), &entry.module,
      &entry.description));
  if (named && cx.bulk_in.size > 0 && module_cache_ != nullptr) {
    module_cache_->Insert(hash, cx.bulk_in);
  }
  auto result = cx.reply.initModuleLoad();
  auto kernels = result.initKernels(static_cast<unsigned>(entry.description.kernels.size()));
  for (size_t i = 0; i < entry.description.kernels.size(); ++i) {
    const auto& k = entry.description.kernels[i];
    auto out = kernels[static_cast<unsigned>(i)];
    out.setName(k.name);
    auto params = out.initParams(static_cast<unsigned>(k.params.size()));
    for (size_t p = 0; p < k.params.size(); ++p) {
      params[static_cast<unsigned>(p)].setOffset(k.params[p].offset);
      params[static_cast<unsigned>(p)].setSize(k.params[p].size);
    }
  }
  auto globals = result.initGlobals(static_cast<unsigned>(entry.description.globals.size()));
  for (size_t i = 0; i < entry.description.globals.size(); ++i) {
    globals[static_cast<unsigned>(i)].setName(entry.description.globals[i].name);
    globals[static_cast<unsigned>(i)].setSize(entry.description.globals[i].size);
  }
  modules_.emplace(id, std::move(entry));
  module_count_.fetch_add(1);
  return Status::Ok();
}

Status Session::ModuleUnload(wire::ModuleRef::Reader args) {
  const uint64_t id = args.getModule();
  if (modules_.count(id) == 0) {
    return Status::InvalidHandle("no module " + std::to_string(id) + " in this session");
  }
  for (auto it = functions_.begin(); it != functions_.end();) {
    it = it->second.module == id ? functions_.erase(it) : std::next(it);
  }
  for (auto it = ranges_.begin(); it != ranges_.end();) {
    it = it->second.module == id ? ranges_.erase(it) : std::next(it);
  }
  modules_.erase(id);
  module_count_.fetch_sub(1);
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
  for (const auto& kernel : m->description.kernels) {
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
  return backend_.Launch(*stream, *f->function, config, cx.bulk_in);
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
    return Status::InvalidHandle("no stream " + std::to_string(args.getStream()) + " in this session");
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
    return Status::InvalidHandle("no event " + std::to_string(args.getEvent()) + " in this session");
  }
  event_count_.fetch_sub(1);
  return Status::Ok();
}

}  // namespace ferry::server
