// Session: one client process's connection to ferryd.
//
// A Session owns everything its client creates — contexts, streams, events,
// modules, allocations — and frees all of it when the connection ends for any
// reason (DESIGN invariant 5). It executes the client's calls in the order
// they were issued (invariant 4) on one executor thread (the thread that calls
// Run), validates every handle and device address range against its own tables
// (invariant 6), and latches the error of a fire-and-forget call until the
// next call that wants a reply (invariant 3).
//
// Calls that wait for the GPU (synchronize, device-to-host copies) do not
// block the executor: they queue a completion with the backend, and the reply
// is written from the backend's thread when the work is done, so later calls
// from the client's other threads keep running. When the work they wait for
// has already finished (GpuBackend::StreamIdleNow), they are answered at once
// on the executor instead: no thread hop for a call that need not wait.
//
// Bulk bytes are read per call as the batch executes, so a large
// host-to-device copy onto an idle stream lands straight in device memory
// when the backend's device memory is host memory, and a device-to-host
// copy's reply is written straight from it (no staging buffer).
//
// Thread-safety: Run and everything it calls are confined to the executor
// thread. Stop, Info and the reply writer are safe from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/api/gpu_backend.h"
#include "common/frame.h"
#include "common/status.h"
#include "common/transport.h"
#include "schema/ferry.capnp.h"
#include "server/module_cache.h"

namespace ferry::server {

// A snapshot of a session for ferryctl.
struct SessionInfo {
  uint64_t id = 0;
  std::string client;  // peer address
  uint32_t pid = 0;
  std::string host;
  std::string program;
  uint64_t bytes_allocated = 0;
  uint64_t allocations = 0;
  uint32_t contexts = 0;
  uint32_t streams = 0;
  uint32_t events = 0;
  uint32_t modules = 0;
  int64_t since_unix_ms = 0;
  uint64_t module_image_bytes_received = 0;  // image bytes the client sent
};

class Session {
 public:
  // `backend` and `module_cache` (may be null: no image cache) must outlive
  // the session. `hello` is the client's handshake.
  Session(uint64_t id, std::unique_ptr<Transport> transport, backend::GpuBackend& backend,
          wire::Hello::Reader hello, ModuleCache* module_cache = nullptr);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Answers the handshake, then executes calls until the connection ends, then
  // frees every resource of the session. Returns when all of that is done.
  void Run();

  // Ends the connection; Run returns soon after. Any thread.
  void Stop();

  SessionInfo Info() const;
  uint64_t id() const { return id_; }

 private:
  struct ContextEntry {
    std::unique_ptr<backend::Context> context;
    int device = 0;
  };
  struct StreamEntry {
    std::unique_ptr<backend::Stream> stream;
    uint64_t ctx = 0;
  };
  struct EventEntry {
    std::unique_ptr<backend::Event> event;
    uint64_t ctx = 0;
  };
  struct ModuleEntry {
    std::unique_ptr<backend::Module> module;
    uint64_t ctx = 0;
    backend::ModuleDescription description;
  };
  struct FunctionEntry {
    backend::Function* function = nullptr;
    uint64_t module = 0;
    uint64_t ctx = 0;
    uint64_t param_bytes = 0;  // the packed buffer a launch must supply
  };
  // A device range the session may touch: an allocation (module == 0) or a
  // module global.
  struct RangeEntry {
    uint64_t size = 0;
    uint64_t ctx = 0;
    uint64_t module = 0;
  };

  // Per call: what the handler needs and what it answers.
  struct CallContext {
    uint64_t seq = 0;
    bool wants_reply = false;
    backend::HostBytes bulk_in;
    // The reply is built in scratch space on the stack: no allocation for a
    // call that needs none. Must be zero before use (capnp's rule).
    capnp::word scratch[128] = {};
    capnp::MallocMessageBuilder message{kj::arrayPtr(scratch, 128)};
    wire::Reply::Builder reply;
    bool deferred = false;  // the handler arranged a later reply
    // Bytes the reply carries when it is sent at once (status OK only); they
    // must stay valid until the handler's caller has written the reply.
    ConstBuffer reply_bulk{nullptr, 0};
    CallContext() : reply(message.initRoot<wire::Reply>()) {}
  };
  // One call of a batch, found before any of them runs.
  struct BatchCall {
    kj::ArrayPtr<const capnp::word> words;
    uint64_t bulk_bytes = 0;
    bool direct_candidate = false;  // may land straight in device memory
  };

  void ServeFrames();
  // Executes one callBatch frame whose message part is `words`; its
  // `bulk_bytes` of payload are still on the transport and are read call by
  // call.
  Status ExecuteBatch(kj::ArrayPtr<const capnp::word> words, uint64_t bulk_bytes);
  // Reads `call`'s payload straight into device memory and performs it, when
  // it is a host-to-device copy that may (see the file comment). Returns
  // false, having read nothing, when it may not.
  bool TryDirectHostToDevice(wire::Call::Reader call, Status* read_status);
  void Execute(wire::Call::Reader call, backend::HostBytes bulk);
  Status Dispatch(wire::Call::Reader call, CallContext& cx);
  void FreeEverything();
  void DestroyContextResources(uint64_t ctx);

  // Replies; thread-safe.
  void SendReply(uint64_t seq, const Status& status);
  void SendReplyMessage(capnp::MallocMessageBuilder& message, std::span<const ConstBuffer> bulk);
  // Defers cx's reply until `wait` calls its completion; `bulk` (may be empty)
  // becomes the reply payload.
  backend::Completion DeferReply(CallContext& cx, backend::MutableHostBytes bulk = {});
  void CompletionDone();

  // Lookups: each returns a Status naming what was wrong.
  Status FindContext(uint64_t ctx, ContextEntry** out);
  Status FindStream(uint64_t ctx, uint64_t stream, backend::Stream** out);
  Status FindEvent(uint64_t event, EventEntry** out);
  Status FindModule(uint64_t module, ModuleEntry** out);
  Status FindFunction(uint64_t function, FunctionEntry** out);
  // OK when [address, address + bytes) lies inside one range of this session.
  Status CheckRange(uint64_t address, uint64_t bytes, const char* what) const;
  Status CheckRange2D(uint64_t address, uint64_t pitch, uint64_t width_bytes, uint64_t height,
                      const char* what) const;

  // Handlers (executor thread).
  Status CtxCreate(wire::CtxCreate::Reader args);
  Status CtxDestroy(wire::CtxRef::Reader args);
  Status CtxSynchronize(wire::CtxRef::Reader args, CallContext& cx);
  Status CtxGetLimit(wire::CtxLimit::Reader args, CallContext& cx);
  Status CtxSetLimit(wire::CtxLimit::Reader args);
  Status MemAlloc(wire::MemAlloc::Reader args, CallContext& cx);
  Status MemAllocPitch(wire::MemAllocPitch::Reader args, CallContext& cx);
  Status MemFree(wire::MemFree::Reader args);
  Status MemGetInfo(wire::CtxRef::Reader args, CallContext& cx);
  Status MemcpyHtoD(wire::Memcpy::Reader args, CallContext& cx);
  Status MemcpyDtoH(wire::Memcpy::Reader args, CallContext& cx);
  Status MemcpyDtoD(wire::Memcpy::Reader args);
  Status Memcpy2D(wire::Memcpy2D::Reader args, CallContext& cx);
  Status Memset(wire::Memset::Reader args);
  Status ModuleLoad(wire::ModuleLoad::Reader args, CallContext& cx);
  Status ModuleUnload(wire::ModuleRef::Reader args);
  Status ModuleGetFunction(wire::ModuleGetFunction::Reader args);
  Status ModuleGetGlobal(wire::ModuleGetGlobal::Reader args, CallContext& cx);
  Status FuncGetAttribute(wire::FuncAttribute::Reader args, CallContext& cx);
  Status FuncSetAttribute(wire::FuncAttribute::Reader args);
  Status FuncSetCacheConfig(wire::FuncCacheConfig::Reader args);
  Status Launch(wire::Launch::Reader args, CallContext& cx);
  Status StreamCreate(wire::StreamCreate::Reader args);
  Status StreamDestroy(wire::StreamRef::Reader args);
  Status StreamSynchronize(wire::StreamRef::Reader args, CallContext& cx);
  Status StreamQuery(wire::StreamRef::Reader args);
  Status StreamWaitEvent(wire::StreamWaitEvent::Reader args);
  Status EventCreate(wire::EventCreate::Reader args);
  Status EventRecord(wire::EventRecord::Reader args);
  Status EventQuery(wire::EventRef::Reader args);
  Status EventSynchronize(wire::EventRef::Reader args, CallContext& cx);
  Status EventElapsedTime(wire::EventElapsedTime::Reader args, CallContext& cx);
  Status EventDestroy(wire::EventRef::Reader args);

  const uint64_t id_;
  std::unique_ptr<Transport> transport_;
  backend::GpuBackend& backend_;
  ModuleCache* const module_cache_;
  const uint32_t pid_;
  const std::string host_;
  const std::string program_;
  const int64_t since_unix_ms_;

  // Executor-thread state.
  std::unordered_map<uint64_t, ContextEntry> contexts_;
  std::unordered_map<uint64_t, StreamEntry> streams_;
  std::unordered_map<uint64_t, EventEntry> events_;
  std::unordered_map<uint64_t, ModuleEntry> modules_;
  std::unordered_map<uint64_t, FunctionEntry> functions_;
  std::map<uint64_t, RangeEntry> ranges_;  // by base address
  Status latched_error_;
  uint64_t latched_seq_ = 0;

  // Counters for Info (written by the executor, read by anyone).
  std::atomic<uint64_t> bytes_allocated_{0};
  std::atomic<uint64_t> allocation_count_{0};
  std::atomic<uint32_t> context_count_{0};
  std::atomic<uint32_t> stream_count_{0};
  std::atomic<uint32_t> event_count_{0};
  std::atomic<uint32_t> module_count_{0};
  std::atomic<uint64_t> module_image_bytes_received_{0};

  std::mutex write_mutex_;  // serialises reply frames on transport_

  std::vector<BatchCall> batch_calls_;  // executor thread; reused per frame

  std::mutex pending_mutex_;
  std::condition_variable pending_cv_;
  int pending_completions_ = 0;  // guarded by pending_mutex_
};

}  // namespace ferry::server
