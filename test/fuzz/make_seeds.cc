// fuzz_make_seeds: writes the seed corpus of the frame, session and shm_ring
// fuzz targets (make_seeds.sh adds the image seeds, which nvcc builds), from
// frames and calls made with the project's own code: WriteFrame for frames,
// session_codec.h's Encoder for the session target's call language.
//
// Usage: fuzz_make_seeds CORPUS_DIR (writes CORPUS_DIR/<target>/<name>).
#include <capnp/message.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/frame.h"
#include "schema/ferry.capnp.h"
#include "test/fuzz/session_codec.h"
#include "test/fuzz/shm_ring_ops.h"

namespace ferry::fuzz {
namespace {

std::filesystem::path corpus;

void WriteSeed(const std::string& target, const std::string& name,
               const std::vector<uint8_t>& bytes) {
  std::filesystem::create_directories(corpus / target);
  std::ofstream out(corpus / target / name, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// A Transport that keeps what is written.
class Recorder final : public Transport {
 public:
  std::vector<uint8_t> bytes;
  Status Write(std::span<const ConstBuffer> buffers) override {
    for (const ConstBuffer& b : buffers) {
      const auto* p = static_cast<const uint8_t*>(b.data);
      bytes.insert(bytes.end(), p, p + b.size);
    }
    return Status::Ok();
  }
  Status ReadExact(void*, size_t) override { return Status::Disconnected("write only"); }
  void Shutdown() override {}
  const std::string& PeerName() const override { return name_; }

 private:
  const std::string name_ = "recorder";
};

using Fill = std::function<void(wire::Call::Builder)>;
struct SeedCall {
  SeedCall(Fill fill, bool wants_reply = false, std::vector<uint8_t> bulk = {})
      : fill(std::move(fill)), wants_reply(wants_reply), bulk(std::move(bulk)) {}
  Fill fill;
  bool wants_reply;
  std::vector<uint8_t> bulk;
};

void CtxCreate(wire::Call::Builder c) {
  auto a = c.initCtxCreate();
  a.setCtx(100);
  a.setDevice(0);
}
Fill MemAlloc(uint64_t bytes) {
  return [bytes](wire::Call::Builder c) {
    auto a = c.initMemAlloc();
    a.setCtx(100);
    a.setBytes(bytes);
  };
}
Fill StreamCreate(uint64_t stream) {
  return [stream](wire::Call::Builder c) {
    auto a = c.initStreamCreate();
    a.setCtx(100);
    a.setStream(stream);
  };
}
// A copy on stream 1 between the host and the latest allocation.
Fill Copy(bool to_device, uint64_t bytes) {
  return [=](wire::Call::Builder c) {
    auto a = to_device ? c.initMemcpyHtoD() : c.initMemcpyDtoH();
    a.setCtx(100);
    a.setStream(1);
    if (to_device)
      a.setDst(SeenValue(0, 0));
    else
      a.setSrc(SeenValue(0, 0));
    a.setBytes(bytes);
  };
}

void FrameSeeds() {
  Recorder r;
  capnp::MallocMessageBuilder hello;
  auto h = hello.initRoot<wire::Hello>();
  h.setProtocolVersion(wire::PROTOCOL_VERSION);
  h.setPid(7);
  h.setProgram("seed");
  (void)WriteFrame(r, wire::FrameKind::HELLO, hello);
  WriteSeed("frame", "hello", r.bytes);
  // Two calls in one batch, the second with 16 bulk bytes.
  Recorder batch;
  std::vector<uint8_t> call_words;
  for (int i = 0; i < 2; ++i) {
    capnp::MallocMessageBuilder m;
    auto c = m.initRoot<wire::Call>();
    c.setSeq(i + 1);
    if (i == 0)
      CtxCreate(c);
    else {
      Copy(true, 16)(c);
      c.getMemcpyHtoD().setDst(0x10000);
      c.setBulkBytes(16);
    }
    auto flat = capnp::messageToFlatArray(m);
    call_words.insert(call_words.end(), flat.asBytes().begin(), flat.asBytes().end());
  }
  // WriteFrame takes one message; a batch of two is its header and words.
  std::vector<uint8_t> frame(kFrameHeaderBytes, 0);
  const uint32_t magic = wire::FRAME_MAGIC, size = call_words.size();
  const uint16_t kind = static_cast<uint16_t>(wire::FrameKind::CALL_BATCH);
  const uint64_t bulk = 16;
  std::memcpy(frame.data(), &magic, 4);
  std::memcpy(frame.data() + 4, &kind, 2);
  std::memcpy(frame.data() + 8, &size, 4);
  std::memcpy(frame.data() + 16, &bulk, 8);
  frame.insert(frame.end(), call_words.begin(), call_words.end());
  frame.insert(frame.end(), 16, 0xAB);
  capnp::MallocMessageBuilder gate;
  gate.initRoot<wire::GateOpen>().setGate(2);
  (void)WriteFrame(batch, wire::FrameKind::GATE_OPEN, gate);
  std::vector<uint8_t> all = r.bytes;
  all.insert(all.end(), frame.begin(), frame.end());
  all.insert(all.end(), batch.bytes.begin(), batch.bytes.end());
  WriteSeed("frame", "hello_batch_gate", all);
}

// Each call in a batch of its own.
void SessionSeed(const std::string& name, const std::vector<SeedCall>& calls,
                 const std::vector<uint64_t>& gates_after = {}) {
  Encoder e;
  for (size_t i = 0; i < calls.size(); ++i) {
    capnp::MallocMessageBuilder m;
    auto c = m.initRoot<wire::Call>();
    calls[i].fill(c);
    c.setWantsReply(calls[i].wants_reply);
    e.Batch({{c.asReader(), calls[i].bulk}});
    for (uint64_t g : gates_after) {
      if (g == i + 1) e.GateOpen(g);
    }
  }
  WriteSeed("session", name, e.bytes);
}

void SessionSeeds() {
  const std::vector<uint8_t> sixteen(16, 0x5A);
  SessionSeed("alloc_copy_free",
              {{CtxCreate, true},
               {MemAlloc(4096), true},
               {StreamCreate(1)},
               {Copy(true, 16), false, sixteen},
               {Copy(false, 16), true},
               {[](wire::Call::Builder c) { c.initMemFree().setDptr(SeenValue(0, 0)); }, true}});
  const char ptx[] =
      ".version 8.0\n.target sm_90\n.address_size 64\n"
      ".visible .global .align 4 .b8 counter[8];\n"
      ".visible .entry k(.param .u64 k_p, .param .u32 k_n)\n{\n  ret;\n}\n";
  SessionSeed("module_launch",
              {{CtxCreate, true},
               {[](wire::Call::Builder c) {
                  auto a = c.initModuleLoad();
                  a.setCtx(100);
                  a.setModule(7);
                },
                true, std::vector<uint8_t>(ptx, ptx + sizeof(ptx))},
               {[](wire::Call::Builder c) {
                  auto a = c.initModuleGetFunction();
                  a.setModule(7);
                  a.setFunction(8);
                  a.setName("k");
                },
                true},
               {StreamCreate(1)},
               {[](wire::Call::Builder c) {
                  auto a = c.initLaunch();
                  a.setCtx(100);
                  a.setStream(1);
                  a.setFunction(8);
                  a.setGridX(1);
                  a.setGridY(1);
                  a.setGridZ(1);
                  a.setBlockX(1);
                  a.setBlockY(1);
                  a.setBlockZ(1);
                },
                false, std::vector<uint8_t>(12, 0)},
               {[](wire::Call::Builder c) { c.initCtxSynchronize().setCtx(100); }, true}});
  // An event recorded on stream 1, waited for on stream 2, synchronized.
  SessionSeed("events",
              {{CtxCreate, true},
               {StreamCreate(1)},
               {StreamCreate(2)},
               {[](wire::Call::Builder c) {
                 auto a = c.initEventCreate();
                 a.setCtx(100);
                 a.setEvent(9);
               }},
               {[](wire::Call::Builder c) {
                 auto a = c.initEventRecord();
                 a.setCtx(100);
                 a.setStream(1);
                 a.setEvent(9);
               }},
               {[](wire::Call::Builder c) {
                 auto a = c.initStreamWaitEvent();
                 a.setCtx(100);
                 a.setStream(2);
                 a.setEvent(9);
               }},
               {[](wire::Call::Builder c) { c.initEventSynchronize().setEvent(9); }, true},
               {[](wire::Call::Builder c) { c.initEventDestroy().setEvent(9); }},
               {[](wire::Call::Builder c) {
                  auto a = c.initStreamDestroy();
                  a.setCtx(100);
                  a.setStream(2);
                },
                true}});
  // Stream 1 waits for a value that stream 2 writes (cuStreamWaitValue32,
  // cuStreamWriteValue32: CU_STREAM_MEM_OP_WAIT_VALUE_32 = 1, WRITE = 2).
  auto mem_op = [](uint64_t stream, int32_t operation) {
    return [=](wire::Call::Builder c) {
      auto a = c.initStreamMemOps();
      a.setCtx(100);
      a.setStream(stream);
      auto op = a.initOps(1)[0];
      op.setOperation(operation);
      op.setAddress(SeenValue(0, 0));
      op.setValue(5);
    };
  };
  SessionSeed("wait_value",
              {{CtxCreate, true},
               {MemAlloc(64), true},
               {StreamCreate(1)},
               {StreamCreate(2)},
               {mem_op(1, 1)},
               {mem_op(2, 2)},
               {[](wire::Call::Builder c) { c.initCtxSynchronize().setCtx(100); }, true}});
  // A host gate (seq 3) held, work queued behind it, then the gate opened.
  SessionSeed("host_gate",
              {{CtxCreate, true},
               {StreamCreate(1)},
               {[](wire::Call::Builder c) {
                 auto a = c.initHostGate();
                 a.setCtx(100);
                 a.setStream(1);
               }},
               {MemAlloc(256), true},
               {[](wire::Call::Builder c) {
                 auto a = c.initMemset();
                 a.setCtx(100);
                 a.setStream(1);
                 a.setDst(SeenValue(0, 0));
                 a.setElementBytes(1);
                 a.setWidth(256);
                 a.setHeight(1);
               }},
               {[](wire::Call::Builder c) { c.initCtxSynchronize().setCtx(100); }, true}},
              {3});
}

void ShmSeeds() {
  using namespace shm_ring;
  auto below = [](Encoder& e, uint64_t v, uint64_t bound) { e.Below(v, bound); };
  auto client_writes = [&](Encoder& e, uint64_t n, uint8_t pattern) {
    e.Byte(kClientWrites);
    below(e, n, 3 * kRing / 2);
    e.Byte(0);  // one pattern byte
    e.Byte(pattern);
  };
  auto publish = [](Encoder& e) {
    e.Byte(kClientPublishes);
    e.Byte(1);
  };
  auto read = [&](Encoder& e, uint64_t n) {
    e.Byte(kServerReads);
    below(e, n - 1, 2 * kRing);
  };
  auto write = [&](Encoder& e, uint64_t n) {
    e.Byte(kServerWrites);
    below(e, 0, 3);
    below(e, n, kRing + 1);
  };
  auto tail_at_head = [&](Encoder& e) {
    e.Byte(kClientSetsTail);
    e.Byte(1);
    below(e, 0, 2 * kRing);
  };
  {
    Encoder e;  // a round trip
    client_writes(e, 100, 0x11);
    publish(e);
    read(e, 100);
    write(e, 50);
    tail_at_head(e);
    WriteSeed("shm_ring", "round_trip", e.bytes);
  }
  {
    Encoder e;  // both rings wrap
    for (int i = 0; i < 3; ++i) {
      client_writes(e, 40000, static_cast<uint8_t>(i));
      publish(e);
      read(e, 40000);
      write(e, 40000);
      tail_at_head(e);
    }
    WriteSeed("shm_ring", "wraps", e.bytes);
  }
  {
    Encoder e;  // a head and a tail that claim more than a ring
    client_writes(e, 10, 0x22);
    e.Byte(kClientPublishes);
    e.Byte(0);
    e.Raw<uint64_t>(kRing + 1);
    read(e, 10);
    e.Byte(kClientSetsTail);
    e.Byte(0);
    e.Raw<uint64_t>(~0ull);
    write(e, 10);
    WriteSeed("shm_ring", "impossible_positions", e.bytes);
  }
  {
    Encoder e;  // a read of more than was published
    client_writes(e, 10, 0x33);
    publish(e);
    read(e, 20);
    WriteSeed("shm_ring", "short_read", e.bytes);
  }
}

}  // namespace
}  // namespace ferry::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  ferry::fuzz::corpus = argv[1];
  ferry::fuzz::FrameSeeds();
  ferry::fuzz::SessionSeeds();
  ferry::fuzz::ShmSeeds();
  return 0;
}
