// Fuzz target "session": a whole server::Session on the host backend, driven
// the way ferryd drives one (a Session over a Transport, Run on this thread)
// by a client whose frames are decoded from the input (session_codec.h): any
// call of the schema with any arguments, batches, bulk bytes, gateOpen
// frames and raw frames. Addresses the session hands out in replies feed
// later calls, so copies, frees and launches reach real allocations; the
// backend has a (no-op) host twin for kernel `k` of the seeds' PTX, so
// launches run.
//
// Checks, besides no crash, hang, leak or ASan/UBSan report:
//  * every frame the session writes is a well-formed Reply (or the
//    HelloReply first) that the client's reader accepts;
//  * when the input ends (the client disconnects) Run returns, the session
//    holds nothing (SessionInfo all zero), and the backend, shared by every
//    input as ferryd's is by every client, has all its memory free again:
//    nothing one client did survives into the next one's session.
#include <capnp/any.h>
#include <capnp/serialize.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/frame.h"
#include "common/log.h"
#include "server/backend/host/host_backend.h"
#include "server/session.h"
#include "test/fuzz/fuzz_input.h"
#include "test/fuzz/memory_transport.h"
#include "test/fuzz/session_codec.h"

namespace ferry::fuzz {
namespace {

// FERRY_FUZZ_LOG=debug|info|...: ferry's log level (default error, so that
// fuzzing is not slowed by a log line per session) and, at debug, every
// reply's status: to see what a seed or a reproducer does.
bool Verbose() {
  static const bool verbose = [] {
    LogLevel level = LogLevel::kError;
    if (const char* text = std::getenv("FERRY_FUZZ_LOG")) (void)ParseLogLevel(text, &level);
    SetMinLogLevel(level);
    return level == LogLevel::kDebug;
  }();
  return verbose;
}

void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "fuzz_session: broken invariant: %s\n", what);
    std::abort();
  }
}

// The client: frames are made from the input as the session reads them
// (so they can use what earlier replies said); replies are checked and
// their addresses remembered.
class FuzzClientTransport final : public Transport {
 public:
  explicit FuzzClientTransport(FuzzInput& in) : in_(in) {}

  Status ReadExact(void* data, size_t size) override {
    std::unique_lock<std::mutex> lock(mutex_);
    while (pending_.size() - read_at_ < size && !in_.empty() && !shut_down_) NextFrame();
    if (shut_down_) return Status::Disconnected("fuzz client: shut down");
    if (pending_.size() - read_at_ < size) return Status::Disconnected("fuzz client: input ended");
    std::memcpy(data, pending_.data() + read_at_, size);
    read_at_ += size;
    if (read_at_ == pending_.size()) {
      pending_.clear();
      read_at_ = 0;
    }
    return Status::Ok();
  }

  Status Write(std::span<const ConstBuffer> buffers) override {
    std::vector<uint8_t> frame;
    for (const ConstBuffer& b : buffers) {
      const auto* p = static_cast<const uint8_t*>(b.data);
      frame.insert(frame.end(), p, p + b.size);
    }
    CheckReply(frame);
    std::lock_guard<std::mutex> lock(mutex_);
    if (shut_down_) return Status::Disconnected("fuzz client: shut down");
    return Status::Ok();
  }

  void Shutdown() override {
    std::lock_guard<std::mutex> lock(mutex_);
    shut_down_ = true;
  }
  const std::string& PeerName() const override { return name_; }

 private:
  static constexpr size_t kSeenLimit = 64;

  void CheckReply(const std::vector<uint8_t>& bytes) {
    MemoryTransport reader(bytes);
    Frame frame;
    Require(ReadFrame(reader, &frame).ok() && reader.remaining() == 0,
            "the session wrote a frame its client cannot read");
    std::vector<uint64_t> addresses;
    try {
      capnp::FlatArrayMessageReader message(frame.words, PeerReaderOptions());
      if (frame.kind == wire::FrameKind::HELLO_REPLY) {
        (void)message.getRoot<wire::HelloReply>().getStatus().getCode();
      } else {
        Require(frame.kind == wire::FrameKind::REPLY, "the session wrote a frame of another kind");
        auto reply = message.getRoot<wire::Reply>();
        Collect(reply, 0, &addresses);
        if (Verbose()) {
          std::fprintf(stderr, "fuzz_session: reply %llu: %s\n",
                       static_cast<unsigned long long>(reply.getSeq()),
                       StatusFromWire(reply.getStatus()).ToString().c_str());
        }
      }
    } catch (const kj::Exception&) {
      Require(false, "the session wrote a malformed message");
    }
    std::lock_guard<std::mutex> lock(mutex_);
    for (uint64_t a : addresses) {
      if (seen_.size() == kSeenLimit) seen_.erase(seen_.begin());
      seen_.push_back(a);
    }
  }

  // Every 64-bit value of a reply that looks like an address (not a seq).
  static void Collect(capnp::DynamicStruct::Reader s, int depth, std::vector<uint64_t>* out) {
    if (depth > kMaxDepth) return;
    auto collect_field = [&](capnp::StructSchema::Field field) {
      if (field.getProto().isGroup()) {
        Collect(s.get(field).as<capnp::DynamicStruct>(), depth + 1, out);
        return;
      }
      const capnp::Type type = field.getType();
      if (type.isStruct()) {
        Collect(s.get(field).as<capnp::DynamicStruct>(), depth + 1, out);
      } else if (type.isUInt64() && field.getProto().getName() != "seq") {
        const uint64_t v = s.get(field).as<uint64_t>();
        if (v > 0xFFFF) out->push_back(v);
      }
    };
    for (auto field : s.getSchema().getNonUnionFields()) collect_field(field);
    KJ_IF_MAYBE (which, s.which()) {
      collect_field(*which);
    }
  }

  // Appends the next frame of the input to pending_ (mutex_ held).
  void NextFrame() {
    std::vector<uint64_t> seen = seen_;
    CallDecoder decoder(in_, seen, used_);
    const uint8_t what = in_.Byte() % 8;
    capnp::MallocMessageBuilder message;
    if (what == 0) {
      message.initRoot<wire::GateOpen>().setGate(decoder.U64());
      Append(wire::FrameKind::GATE_OPEN, message);
    } else if (what == 1) {
      // Raw: any kind, any claimed bulk, any message bytes.
      const uint16_t kind = in_.Integral<uint16_t>();
      const uint16_t bulk = in_.Integral<uint16_t>();
      auto body = in_.Bytes(in_.Byte());
      // Its claimed bulk is whatever frames follow.
      AppendFrame(kind, body, {}, bulk);
    } else {
      const unsigned count = in_.Byte() % 4 + 1;
      std::vector<std::unique_ptr<capnp::MallocMessageBuilder>> calls;
      std::vector<uint8_t> bulk;
      std::vector<uint8_t> words;
      for (unsigned i = 0; i < count; ++i) {
        calls.push_back(std::make_unique<capnp::MallocMessageBuilder>());
        auto call = calls.back()->initRoot<wire::Call>();
        std::vector<uint8_t> call_bulk;
        decoder.Call(call, &call_bulk);
        call.setSeq(next_seq_++);
        bulk.insert(bulk.end(), call_bulk.begin(), call_bulk.end());
        auto flat = capnp::messageToFlatArray(*calls.back());
        auto flat_bytes = flat.asBytes();
        words.insert(words.end(), flat_bytes.begin(), flat_bytes.end());
      }
      AppendFrame(static_cast<uint16_t>(wire::FrameKind::CALL_BATCH), words, bulk, bulk.size());
    }
  }

  void Append(wire::FrameKind kind, capnp::MallocMessageBuilder& message) {
    auto flat = capnp::messageToFlatArray(message);
    AppendFrame(static_cast<uint16_t>(kind), flat.asBytes(), {}, 0);
  }

  // A frame header (common/frame.h's layout) claiming `claimed_bulk`, then
  // `message` and `bulk` as they are.
  void AppendFrame(uint16_t kind, std::span<const uint8_t> message, std::span<const uint8_t> bulk,
                   uint64_t claimed_bulk) {
    uint8_t header[kFrameHeaderBytes] = {};
    const uint32_t magic = wire::FRAME_MAGIC;
    const uint32_t size = static_cast<uint32_t>(message.size());
    std::memcpy(header, &magic, 4);
    std::memcpy(header + 4, &kind, 2);
    std::memcpy(header + 8, &size, 4);
    std::memcpy(header + 16, &claimed_bulk, 8);
    pending_.insert(pending_.end(), header, header + sizeof(header));
    pending_.insert(pending_.end(), message.begin(), message.end());
    pending_.insert(pending_.end(), bulk.begin(), bulk.end());
  }

  FuzzInput& in_;
  std::mutex mutex_;
  std::vector<uint8_t> pending_;  // frames made, not read yet
  size_t read_at_ = 0;
  std::vector<uint64_t> seen_;  // addresses from replies, oldest first
  std::vector<uint64_t> used_;  // 64-bit values of the calls made so far
  uint64_t next_seq_ = 1;
  bool shut_down_ = false;
  const std::string name_ = "fuzz-client";
};

backend::GpuBackend& SharedBackend() {
  static std::unique_ptr<backend::GpuBackend> backend = [] {
    backend::HostBackendOptions options;
    options.device_count = 2;
    options.device_memory = 64 << 20;
    options.kernel_libraries = {FERRY_FUZZ_HOST_KERNELS};
    std::unique_ptr<backend::GpuBackend> made;
    Require(backend::CreateHostBackend(options, &made).ok(), "no host backend");
    return made;
  }();
  return *backend;
}

}  // namespace
}  // namespace ferry::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ferry;
  using fuzz::Require;
  (void)fuzz::Verbose();
  backend::GpuBackend& backend = fuzz::SharedBackend();
  fuzz::FuzzInput in(data, size);
  capnp::MallocMessageBuilder hello;
  auto h = hello.initRoot<wire::Hello>();
  h.setProtocolVersion(wire::PROTOCOL_VERSION);
  h.setPid(1);
  h.setProgram("fuzz_session");
  {
    server::Session session(1, std::make_unique<fuzz::FuzzClientTransport>(in), backend,
                            h.asReader());
    session.Run();
    const server::SessionInfo info = session.Info();
    Require(info.bytes_allocated == 0 && info.allocations == 0 && info.contexts == 0 &&
                info.streams == 0 && info.events == 0 && info.modules == 0,
            "the session kept resources after its client left");
  }
  for (int device = 0; device < 2; ++device) {
    std::unique_ptr<backend::Context> probe;
    Require(backend.CreateContext(device, 0, &probe).ok(), "no context after a session");
    uint64_t free_bytes = 0, total = 0;
    Require(backend.MemGetInfo(*probe, &free_bytes, &total).ok() && free_bytes == total,
            "device memory stayed allocated after the session ended");
  }
  return 0;
}
