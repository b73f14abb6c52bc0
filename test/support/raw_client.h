// A raw client for tests that speak ferry's frames directly to a Session or
// to ferryd: one call per CALL_BATCH frame, replies decoded into ReplyResult,
// and byte-level builders for frames a well-behaved client never sends.
//
// Thread-safety: a RawClient belongs to one thread, except that transport()
// may be Shutdown from any thread (see common/transport.h).
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/frame.h"
#include "common/status.h"
#include "common/transport.h"

namespace ferry::test {

// The 24-byte frame header (common/frame.h's layout: magic, kind, message
// bytes, bulk bytes), for frames built by hand.
std::vector<uint8_t> FrameHeader(wire::FrameKind kind, uint32_t message_bytes,
                                 uint64_t bulk_bytes = 0);

// A whole HELLO frame with `version` and `role` (a raw number, so that
// unknown roles can be sent); the rest of the Hello is left default.
std::vector<uint8_t> HelloFrame(uint32_t version, int role);

// Writes `bytes` as they are; the transport's status.
Status WriteBytes(Transport& transport, const std::vector<uint8_t>& bytes);

// Sets the context and stream that every stream-ordered call's arguments
// carry; returns the arguments, for the call's other fields.
template <typename Args>
Args OnStream(Args args, uint64_t stream, uint64_t ctx = 100) {
  args.setCtx(ctx);
  args.setStream(stream);
  return args;
}

// Makes `call` a byte-wise memset (cuMemsetD8Async) of `bytes` bytes at `dst`
// to `value`, in context `ctx`, on `stream`.
void BuildMemsetD8(wire::Call::Builder call, uint64_t ctx, uint64_t stream, uint64_t dst,
                   uint8_t value, uint64_t bytes);

// Makes `call` a copy of `bytes` bytes from the host (the call's bulk bytes)
// to `dst`, in context `ctx`, on `stream`.
void BuildMemcpyHtoD(wire::Call::Builder call, uint64_t ctx, uint64_t stream, uint64_t dst,
                     uint64_t bytes);

// Makes `call` a copy of `bytes` bytes at `src` to the host (the reply's bulk
// bytes), in context `ctx`, on `stream`.
void BuildMemcpyDtoH(wire::Call::Builder call, uint64_t ctx, uint64_t stream, uint64_t src,
                     uint64_t bytes);

struct ReplyResult {
  Status status;
  uint64_t seq = 0;
  uint64_t latched_from = 0;
  int64_t value = 0;
  uint64_t dptr = 0;
  uint64_t bytes = 0;                // moduleGetGlobal
  std::vector<int64_t> values;       // occupancyMaxActiveBlocks
  std::vector<std::string> kernels;  // moduleLoad / libraryLoad
  std::vector<uint8_t> bulk;
  // streamGetAttribute
  bool stream_attribute = false;
  uint64_t window_base = 0, window_bytes = 0;
  float hit_ratio = 0;
  int hit_prop = 0, miss_prop = 0;
  uint32_t sync_policy = 0;
  bool gate_reached = false;  // a hostGate's answer
  bool held = false;
  bool stream_failed = false;
  uint32_t gate_index = 0;        // graph host nodes: which gate of the call
  uint64_t host_function = 0;     // graph host nodes: the function the gate runs
  bool image_not_cached = false;  // a load that named an image the server lacks
  // JIT linking: a linkResult
  bool link_result = false;
  Status link_outcome;
  std::string info_log, error_log;
  std::map<int, uint64_t> link_options;  // option -> slot after the call
  uint64_t image_bytes = 0;
};

// The client side of a session, one frame at a time.
class RawClient {
 public:
  explicit RawClient(std::unique_ptr<Transport> transport) : transport_(std::move(transport)) {}

  // Sends one call in its own batch frame; the write must succeed.
  uint64_t Send(const std::function<void(wire::Call::Builder)>& fill, bool wants_reply,
                const std::vector<uint8_t>& bulk = {}) {
    uint64_t seq = 0;
    EXPECT_TRUE(TrySend(fill, wants_reply, bulk, &seq).ok());
    return seq;
  }

  // Sends one call; the peer may already have closed the connection.
  Status TrySend(const std::function<void(wire::Call::Builder)>& fill, bool wants_reply,
                 const std::vector<uint8_t>& bulk, uint64_t* seq_out) {
    capnp::MallocMessageBuilder message;
    auto call = message.initRoot<wire::Call>();
    fill(call);
    const uint64_t seq = next_seq_++;
    call.setSeq(seq);
    call.setWantsReply(wants_reply);
    call.setBulkBytes(bulk.size());
    ConstBuffer b{bulk.data(), bulk.size()};
    *seq_out = seq;
    return WriteFrame(
        *transport_, wire::FrameKind::CALL_BATCH, message,
        bulk.empty() ? std::span<const ConstBuffer>() : std::span<const ConstBuffer>(&b, 1));
  }

  // Reads one frame and decodes it as a Reply.
  ReplyResult Read() {
    ReplyResult result;
    Frame frame;
    Status status = ReadFrame(*transport_, &frame);
    if (!status.ok()) {
      result.status = status;
      return result;
    }
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    auto reply = reader.getRoot<wire::Reply>();
    result.status = StatusFromWire(reply.getStatus());
    result.seq = reply.getSeq();
    result.latched_from = reply.getLatchedFromSeq();
    result.image_not_cached = reply.getImageNotCached();
    if (reply.isValue()) result.value = reply.getValue();
    if (reply.isMemAlloc()) result.dptr = reply.getMemAlloc().getDptr();
    if (reply.isModuleGetGlobal()) {
      result.dptr = reply.getModuleGetGlobal().getDptr();
      result.bytes = reply.getModuleGetGlobal().getBytes();
    }
    if (reply.isValues()) {
      for (int64_t v : reply.getValues()) result.values.push_back(v);
    }
    if (reply.isModuleLoad()) {
      for (auto k : reply.getModuleLoad().getKernels())
        result.kernels.push_back(k.getName().cStr());
    }
    if (reply.isStreamAttribute()) {
      auto a = reply.getStreamAttribute();
      result.stream_attribute = true;
      result.window_base = a.getWindowBase();
      result.window_bytes = a.getWindowBytes();
      result.hit_ratio = a.getHitRatio();
      result.hit_prop = a.getHitProp();
      result.miss_prop = a.getMissProp();
      result.sync_policy = a.getValue();
    }
    if (reply.isGateReached()) {
      result.gate_reached = true;
      result.held = reply.getGateReached().getHeld();
      result.stream_failed = reply.getGateReached().getStreamFailed();
      result.gate_index = reply.getGateReached().getIndex();
      result.host_function = reply.getGateReached().getHostFunction();
    }
    if (reply.isLinkResult()) {
      auto link = reply.getLinkResult();
      result.link_result = true;
      result.link_outcome = StatusFromWire(link.getOutcome());
      auto text = [](capnp::Data::Reader log) { return std::string(log.begin(), log.end()); };
      result.info_log = text(link.getInfoLog());
      result.error_log = text(link.getErrorLog());
      for (auto o : link.getOptions()) result.link_options[o.getOption()] = o.getValue();
      result.image_bytes = link.getImageBytes();
    }
    if (frame.bulk.size > 0)
      result.bulk.assign(frame.bulk.data.get(), frame.bulk.data.get() + frame.bulk.size);
    return result;
  }

  // Read, bounded: past `timeout` the connection is shut down and the result
  // says that nothing came.
  ReplyResult ReadWithin(std::chrono::seconds timeout = std::chrono::seconds(10)) {
    auto future = std::async(std::launch::async, [this] { return Read(); });
    if (future.wait_for(timeout) == std::future_status::ready) return future.get();
    transport_->Shutdown();
    ReplyResult r = future.get();
    r.status = Status::Internal("no reply within " + std::to_string(timeout.count()) + " s");
    return r;
  }

  ReplyResult Call(const std::function<void(wire::Call::Builder)>& fill,
                   const std::vector<uint8_t>& bulk = {}) {
    const uint64_t seq = Send(fill, true, bulk);
    ReplyResult r = ReadWithin();
    EXPECT_EQ(r.seq, seq);
    return r;
  }

  // A hostGate call on (ctx, stream); returns its seq.
  uint64_t SendGate(uint64_t ctx, uint64_t stream, bool wants_reply = false) {
    return Send(
        [&](wire::Call::Builder c) {
          auto a = c.initHostGate();
          a.setCtx(ctx);
          a.setStream(stream);
        },
        wants_reply);
  }
  // A gateOpen frame for gate `index` of call `seq` (a hostGate call's one
  // gate, or a graph launch's host node `index`).
  void OpenGate(uint64_t seq, uint32_t index = 0) {
    capnp::MallocMessageBuilder message;
    auto open = message.initRoot<wire::GateOpen>();
    open.setGate(seq);
    open.setIndex(index);
    EXPECT_TRUE(WriteFrame(*transport_, wire::FrameKind::GATE_OPEN, message).ok());
  }

  Transport& transport() { return *transport_; }

 private:
  std::unique_ptr<Transport> transport_;
  uint64_t next_seq_ = 1;
};

}  // namespace ferry::test
