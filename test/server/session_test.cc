// Session, driven in-process by a raw client that speaks frames directly, over
// a socketpair, against the real HostBackend. Covers ordering, validation of
// handles and ranges, latched asynchronous errors, malformed input, and that a
// session frees everything when its connection ends.
#include "server/session.h"

#include <capnp/serialize.h>
#include <cuda.h>
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "backend/host/host_backend.h"
#include "common/frame.h"

namespace ferry::server {
namespace {

struct ReplyResult {
  Status status;
  uint64_t seq = 0;
  uint64_t latched_from = 0;
  int64_t value = 0;
  uint64_t dptr = 0;
  std::vector<uint8_t> bulk;
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
    return WriteFrame(*transport_, wire::FrameKind::CALL_BATCH, message,
                      bulk.empty() ? std::span<const ConstBuffer>() : std::span<const ConstBuffer>(&b, 1));
  }

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
    if (reply.isValue()) result.value = reply.getValue();
    if (reply.isMemAlloc()) result.dptr = reply.getMemAlloc().getDptr();
    if (frame.bulk.size > 0) result.bulk.assign(frame.bulk.data.get(), frame.bulk.data.get() + frame.bulk.size);
    return result;
  }

  ReplyResult Call(const std::function<void(wire::Call::Builder)>& fill, const std::vector<uint8_t>& bulk = {}) {
    const uint64_t seq = Send(fill, true, bulk);
    ReplyResult r = Read();
    EXPECT_EQ(r.seq, seq);
    return r;
  }

  Transport& transport() { return *transport_; }

 private:
  std::unique_ptr<Transport> transport_;
  uint64_t next_seq_ = 1;
};

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend::HostBackendOptions options;
    options.device_memory = 64 << 20;
    ASSERT_TRUE(backend::CreateHostBackend(options, &backend_).ok());
    StartSession();
  }
  void TearDown() override { EndSession(); }

  void StartSession() {
    std::unique_ptr<Transport> server_side, client_side;
    ASSERT_TRUE(MakeTransportPair(&server_side, &client_side).ok());
    capnp::MallocMessageBuilder hello;
    auto h = hello.initRoot<wire::Hello>();
    h.setPid(7);
    h.setProgram("session_test");
    session_ = std::make_unique<Session>(1, std::move(server_side), *backend_, h.asReader());
    runner_ = std::thread([this] { session_->Run(); });
    client_ = std::make_unique<RawClient>(std::move(client_side));
    Frame frame;
    ASSERT_TRUE(ReadFrame(client_->transport(), &frame).ok());
    ASSERT_EQ(frame.kind, wire::FrameKind::HELLO_REPLY);
  }

  // Waits for Run to return (the connection ended) and checks the session
  // left nothing behind.
  void EndSession() {
    if (!session_) return;
    client_.reset();  // closes the client's end
    runner_.join();
    SessionInfo info = session_->Info();
    EXPECT_EQ(info.bytes_allocated, 0u);
    EXPECT_EQ(info.allocations, 0u);
    EXPECT_EQ(info.contexts, 0u);
    EXPECT_EQ(info.streams, 0u);
    EXPECT_EQ(info.events, 0u);
    EXPECT_EQ(info.modules, 0u);
    session_.reset();
    // The backend got every byte back.
    std::unique_ptr<backend::Context> probe;
    ASSERT_TRUE(backend_->CreateContext(0, 0, &probe).ok());
    uint64_t free_bytes = 0, total = 0;
    ASSERT_TRUE(backend_->MemGetInfo(*probe, &free_bytes, &total).ok());
    EXPECT_EQ(free_bytes, total);
  }

  void CreateContext(uint64_t ctx = 100) {
    auto r = client_->Call([&](wire::Call::Builder c) {
      auto a = c.initCtxCreate();
      a.setCtx(ctx);
      a.setDevice(0);
    });
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  }

  uint64_t Alloc(uint64_t bytes, uint64_t ctx = 100) {
    auto r = client_->Call([&](wire::Call::Builder c) {
      auto a = c.initMemAlloc();
      a.setCtx(ctx);
      a.setBytes(bytes);
    });
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    return r.dptr;
  }

  std::unique_ptr<backend::GpuBackend> backend_;
  std::unique_ptr<Session> session_;
  std::thread runner_;
  std::unique_ptr<RawClient> client_;
};

TEST_F(SessionTest, CopiesRoundTrip) {
  CreateContext();
  const uint64_t d = Alloc(4096);
  std::vector<uint8_t> data(4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 13);
  client_->Send([&](wire::Call::Builder c) {
    auto a = c.initMemcpyHtoD();
    a.setCtx(100);
    a.setDst(d);
    a.setBytes(data.size());
  }, false, data);
  auto r = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemcpyDtoH();
    a.setCtx(100);
    a.setSrc(d);
    a.setBytes(data.size());
  });
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.bulk, data);
}

TEST_F(SessionTest, RangesOutsideTheSessionsAllocationsAreRefused) {
  CreateContext();
  const uint64_t d = Alloc(64);
  for (auto [src, bytes] : std::vector<std::pair<uint64_t, uint64_t>>{
           {d + 60, 8}, {d - 8, 8}, {0, 4}, {d, ~0ull}, {~0ull - 2, 4}}) {
    auto r = client_->Call([&](wire::Call::Builder c) {
      auto a = c.initMemcpyDtoH();
      a.setCtx(100);
      a.setSrc(src);
      a.setBytes(bytes);
    });
    EXPECT_EQ(r.status.cuda_result(), CUDA_ERROR_INVALID_VALUE) << src << "+" << bytes;
  }
  // The session still works.
  EXPECT_NE(Alloc(64), 0u);
}

TEST_F(SessionTest, BadHandlesGetCudaErrors) {
  CreateContext();
  auto sync = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initStreamSynchronize();
    a.setCtx(100);
    a.setStream(12345);
  });
  EXPECT_EQ(sync.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  auto alloc = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemAlloc();
    a.setCtx(999);
    a.setBytes(16);
  });
  EXPECT_EQ(alloc.status.cuda_result(), CUDA_ERROR_INVALID_CONTEXT);
  auto event = client_->Call([&](wire::Call::Builder c) { c.initEventQuery().setEvent(5); });
  EXPECT_EQ(event.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  auto attr = client_->Call([&](wire::Call::Builder c) { c.initFuncGetAttribute().setFunction(77); });
  EXPECT_EQ(attr.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  auto device = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initCtxCreate();
    a.setCtx(101);
    a.setDevice(3);
  });
  EXPECT_EQ(device.status.cuda_result(), CUDA_ERROR_INVALID_DEVICE);
  auto reuse = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initCtxCreate();
    a.setCtx(100);
    a.setDevice(0);
  });
  EXPECT_EQ(reuse.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
}

TEST_F(SessionTest, AsyncErrorIsReportedByTheNextCallThatWaitsThenClears) {
  CreateContext();
  const uint64_t bad_free = client_->Send([&](wire::Call::Builder c) { c.initMemFree().setDptr(0x1234); }, false);
  client_->Send([&](wire::Call::Builder c) { c.initMemFree().setDptr(0x5678); }, false);  // second error: not reported
  auto first = client_->Call([&](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(first.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(first.latched_from, bad_free);
  auto second = client_->Call([&](wire::Call::Builder c) { c.setPing(); });
  EXPECT_TRUE(second.status.ok()) << second.status.ToString();
  EXPECT_EQ(second.latched_from, 0u);
}

TEST_F(SessionTest, FreeingAnotherSessionsMemoryIsRefused) {
  CreateContext();
  const uint64_t mine = Alloc(256);
  // A second session on the same backend.
  std::unique_ptr<Transport> server_side, client_side;
  ASSERT_TRUE(MakeTransportPair(&server_side, &client_side).ok());
  capnp::MallocMessageBuilder hello;
  Session other(2, std::move(server_side), *backend_, hello.initRoot<wire::Hello>().asReader());
  std::thread runner([&] { other.Run(); });
  RawClient intruder(std::move(client_side));
  Frame frame;
  ASSERT_TRUE(ReadFrame(intruder.transport(), &frame).ok());
  ASSERT_TRUE(intruder.Call([&](wire::Call::Builder c) {
    auto a = c.initCtxCreate();
    a.setCtx(100);
    a.setDevice(0);
  }).status.ok());
  intruder.Send([&](wire::Call::Builder c) { c.initMemFree().setDptr(mine); }, false);
  std::vector<uint8_t> junk(256, 0xEE);
  auto write = intruder.Call([&](wire::Call::Builder c) {
    auto a = c.initMemcpyDtoH();
    a.setCtx(100);
    a.setSrc(mine);
    a.setBytes(16);
  });
  EXPECT_FALSE(write.status.ok());  // the latched free error, or the range check
  auto read = intruder.Call([&](wire::Call::Builder c) {
    auto a = c.initMemcpyDtoH();
    a.setCtx(100);
    a.setSrc(mine);
    a.setBytes(16);
  });
  EXPECT_EQ(read.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  intruder.transport().Shutdown();
  runner.join();
  // The owner's memory is intact and still its own.
  auto r = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemcpyDtoH();
    a.setCtx(100);
    a.setSrc(mine);
    a.setBytes(256);
  });
  EXPECT_TRUE(r.status.ok()) << r.status.ToString();
}

TEST_F(SessionTest, StreamsEventsAndSynchronizeReplyInOrderOfCompletion) {
  CreateContext();
  const uint64_t d = Alloc(1 << 20);
  client_->Send([&](wire::Call::Builder c) {
    auto a = c.initStreamCreate();
    a.setCtx(100);
    a.setStream(7);
  }, false);
  client_->Send([&](wire::Call::Builder c) {
    auto a = c.initEventCreate();
    a.setCtx(100);
    a.setEvent(8);
  }, false);
  client_->Send([&](wire::Call::Builder c) {
    auto a = c.initMemset();
    a.setCtx(100);
    a.setStream(7);
    a.setDst(d);
    a.setValue(0xAB);
    a.setElementBytes(1);
    a.setWidth(1 << 20);
    a.setHeight(1);
  }, false);
  client_->Send([&](wire::Call::Builder c) {
    auto a = c.initEventRecord();
    a.setCtx(100);
    a.setStream(7);
    a.setEvent(8);
  }, false);
  auto sync = client_->Call([&](wire::Call::Builder c) { c.initEventSynchronize().setEvent(8); });
  ASSERT_TRUE(sync.status.ok()) << sync.status.ToString();
  auto r = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemcpyDtoH();
    a.setCtx(100);
    a.setStream(7);
    a.setSrc(d + 1000);
    a.setBytes(4);
  });
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.bulk, std::vector<uint8_t>(4, 0xAB));
}

TEST_F(SessionTest, DisconnectFreesEverything) {
  CreateContext();
  Alloc(1 << 20);
  Alloc(3 << 20);
  client_->Send([&](wire::Call::Builder c) {
    auto a = c.initStreamCreate();
    a.setCtx(100);
    a.setStream(9);
  }, false);
  ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
  EXPECT_EQ(session_->Info().bytes_allocated, 4u << 20);
  EXPECT_EQ(session_->Info().streams, 1u);
  // EndSession (TearDown) asserts that everything is gone.
}

TEST_F(SessionTest, BulkClaimedPastTheFrameClosesTheSession) {
  CreateContext();
  Alloc(4096);
  capnp::MallocMessageBuilder message;
  auto call = message.initRoot<wire::Call>();
  call.setSeq(99);
  call.setBulkBytes(1 << 20);  // the frame carries none
  call.initMemcpyHtoD().setBytes(1 << 20);
  ASSERT_TRUE(WriteFrame(client_->transport(), wire::FrameKind::CALL_BATCH, message).ok());
  EXPECT_FALSE(client_->Read().status.ok());  // the session closed the connection
}

TEST_F(SessionTest, GarbageMessagesNeverCrashTheServer) {
  // Bounded: 300 sessions, each fed one mutated frame.
  std::mt19937 rng(1234);
  capnp::MallocMessageBuilder valid;
  auto call = valid.initRoot<wire::Call>();
  call.setSeq(1);
  call.setWantsReply(true);
  auto copy = call.initMemcpy2D();
  copy.setCtx(100);
  copy.setWidthBytes(16);
  copy.setHeight(4);
  auto words = capnp::messageToFlatArray(valid);
  for (int round = 0; round < 300; ++round) {
    EndSession();
    StartSession();
    CreateContext();
    std::vector<capnp::word> mutated(words.begin(), words.end());
    auto* bytes = reinterpret_cast<uint8_t*>(mutated.data());
    const size_t n = mutated.size() * sizeof(capnp::word);
    for (int flips = 1 + static_cast<int>(rng() % 8); flips > 0; --flips) {
      bytes[8 + rng() % (n - 8)] ^= static_cast<uint8_t>(1u << (rng() % 8));
    }
    uint8_t header[kFrameHeaderBytes] = {};
    const uint32_t magic = wire::FRAME_MAGIC;
    const uint16_t kind = static_cast<uint16_t>(wire::FrameKind::CALL_BATCH);
    const uint32_t message_bytes = static_cast<uint32_t>(n);
    std::memcpy(header, &magic, 4);
    std::memcpy(header + 4, &kind, 2);
    std::memcpy(header + 8, &message_bytes, 4);
    ConstBuffer buffers[2] = {{header, sizeof(header)}, {bytes, n}};
    ASSERT_TRUE(client_->transport().Write(buffers).ok());
    // Whatever the frame said, the session answers it or closes the
    // connection; either way a ping after it is answered or finds it closed.
    uint64_t ping = 0;
    if (!client_->TrySend([&](wire::Call::Builder c) { c.setPing(); }, true, {}, &ping).ok()) continue;
    for (int reads = 0; reads < 4; ++reads) {
      ReplyResult r = client_->Read();
      if (r.seq == ping || r.status.code() == StatusCode::kDisconnected ||
          r.status.code() == StatusCode::kMalformed) {
        break;
      }
    }
  }
}

// --- pooled sessions: slices, quotas, preemption ------------------------------

constexpr uint64_t kSliceQuota = 1 << 20;

// A session whose one device is slice 2/4 (quota 1 MiB) of the host backend's
// device 1, as a pool grants it.
class PooledSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend::HostBackendOptions options;
    options.device_count = 2;
    options.device_memory = 64 << 20;
    ASSERT_TRUE(backend::CreateHostBackend(options, &backend_).ok());
  }
  void TearDown() override {
    if (runner_.joinable()) {
      client_.reset();
      runner_.join();
    }
    session_.reset();
  }

  SessionGrant Grant() {
    SessionGrant grant;
    grant.pooled = true;
    grant.pool = "dev";
    SessionDevice device;
    device.backend_device = 1;
    device.memory_quota = kSliceQuota;
    device.compute_share = 0.25;
    device.gpu = 1;
    device.slice = 1;
    device.slices_per_gpu = 4;
    grant.devices.push_back(device);
    return grant;
  }

  // Starts the session; `before_run` runs on it before Run. Returns the
  // HelloReply frame.
  Frame Start(const std::function<void(Session&)>& before_run = nullptr) {
    std::unique_ptr<Transport> server_side, client_side;
    EXPECT_TRUE(MakeTransportPair(&server_side, &client_side).ok());
    capnp::MallocMessageBuilder hello;
    auto h = hello.initRoot<wire::Hello>();
    h.setPid(8);
    h.setProgram("pooled_test");
    session_ = std::make_unique<Session>(2, std::move(server_side), *backend_, h.asReader(), Grant());
    if (before_run) before_run(*session_);
    runner_ = std::thread([this] { session_->Run(); });
    client_ = std::make_unique<RawClient>(std::move(client_side));
    Frame frame;
    EXPECT_TRUE(ReadFrame(client_->transport(), &frame).ok());
    EXPECT_EQ(frame.kind, wire::FrameKind::HELLO_REPLY);
    return frame;
  }

  ReplyResult CreateContext(int device) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = c.initCtxCreate();
      a.setCtx(100 + static_cast<uint64_t>(device));
      a.setDevice(device);
    });
  }
  ReplyResult Alloc(uint64_t bytes) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = c.initMemAlloc();
      a.setCtx(100);
      a.setBytes(bytes);
    });
  }
  // Free and total of backend device `device`, as the backend counts.
  std::pair<uint64_t, uint64_t> BackendMemory(int device) {
    std::unique_ptr<backend::Context> probe;
    EXPECT_TRUE(backend_->CreateContext(device, 0, &probe).ok());
    uint64_t free_bytes = 0, total = 0;
    EXPECT_TRUE(backend_->MemGetInfo(*probe, &free_bytes, &total).ok());
    return {free_bytes, total};
  }

  std::unique_ptr<backend::GpuBackend> backend_;
  std::unique_ptr<Session> session_;
  std::thread runner_;
  std::unique_ptr<RawClient> client_;
};

TEST_F(PooledSessionTest, HandshakeDescribesTheSlice) {
  Frame frame = Start();
  capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
  auto reply = reader.getRoot<wire::HelloReply>();
  ASSERT_TRUE(StatusFromWire(reply.getStatus()).ok());
  ASSERT_EQ(reply.getDevices().size(), 1u);
  auto device = reply.getDevices()[0];
  EXPECT_EQ(device.getTotalMemory(), kSliceQuota);
  const int sms = backend_->Devices()[1].attributes[CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT];
  EXPECT_EQ(device.getAttributes()[CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT], sms / 4);
  EXPECT_EQ(std::string(reply.getPool().cStr()), "dev");
  ASSERT_EQ(reply.getSlices().size(), 1u);
  EXPECT_EQ(reply.getSlices()[0].getGpu(), 1u);
  EXPECT_EQ(reply.getSlices()[0].getSlice(), 1u);
  EXPECT_EQ(reply.getSlices()[0].getSlicesPerGpu(), 4u);
  EXPECT_EQ(reply.getSlices()[0].getMemoryQuota(), kSliceQuota);
  EXPECT_EQ(std::string(reply.getSlices()[0].getMechanism().cStr()), "launch-throttle");
  EXPECT_EQ(reply.getQueuePosition(), 0u);
}

TEST_F(PooledSessionTest, DeviceOrdinalsMapToTheBorrowedGpu) {
  Start();
  EXPECT_EQ(CreateContext(1).status.cuda_result(), CUDA_ERROR_INVALID_DEVICE);
  ASSERT_TRUE(CreateContext(0).status.ok());
  ASSERT_TRUE(Alloc(4096).status.ok());
  // The allocation landed on backend device 1, not 0.
  EXPECT_EQ(BackendMemory(0).first, BackendMemory(0).second);
  EXPECT_LT(BackendMemory(1).first, BackendMemory(1).second);
}

TEST_F(PooledSessionTest, QuotaHoldsOnEveryAllocationPathAndMemGetInfoShowsTheSlice) {
  Start();
  ASSERT_TRUE(CreateContext(0).status.ok());
  auto mem_info = [&] {
    const uint64_t seq = client_->Send([](wire::Call::Builder c) { c.initMemGetInfo().setCtx(100); }, true);
    Frame frame;
    EXPECT_TRUE(ReadFrame(client_->transport(), &frame).ok());
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    auto reply = reader.getRoot<wire::Reply>();
    EXPECT_EQ(reply.getSeq(), seq);
    EXPECT_TRUE(StatusFromWire(reply.getStatus()).ok());
    return std::make_pair(reply.getMemGetInfo().getFree(), reply.getMemGetInfo().getTotal());
  };
  EXPECT_EQ(mem_info(), std::make_pair(kSliceQuota, kSliceQuota));
  ReplyResult a = Alloc(kSliceQuota / 2);
  ASSERT_TRUE(a.status.ok());
  EXPECT_EQ(mem_info(), std::make_pair(kSliceQuota / 2, kSliceQuota));
  // One byte past the quota: out of memory, naming the slice.
  ReplyResult over = Alloc(kSliceQuota / 2 + 1);
  EXPECT_EQ(over.status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_NE(over.status.message().find("slice 2/4 of GPU 1 (pool dev)"), std::string::npos)
      << over.status.message();
  // Pitched allocations count their padded rows: 512 rows of 600 bytes pad
  // to 1024 bytes each (half a MiB) and do not fit beside the first half.
  ReplyResult pitched = client_->Call([](wire::Call::Builder c) {
    auto a = c.initMemAllocPitch();
    a.setCtx(100);
    a.setWidthBytes(600);
    a.setHeight(600);
    a.setElementBytes(4);
  });
  EXPECT_EQ(pitched.status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY) << pitched.status.ToString();
  // Exactly the rest fits.
  ReplyResult rest = Alloc(kSliceQuota / 2);
  ASSERT_TRUE(rest.status.ok()) << rest.status.ToString();
  EXPECT_EQ(mem_info(), std::make_pair(uint64_t{0}, kSliceQuota));
  EXPECT_EQ(Alloc(1).status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY);
  // Freeing gives it back.
  client_->Send([&](wire::Call::Builder c) { c.initMemFree().setDptr(a.dptr); }, false);
  EXPECT_EQ(mem_info(), std::make_pair(kSliceQuota / 2, kSliceQuota));
  EXPECT_EQ(session_->Info().device_bytes, std::vector<uint64_t>{kSliceQuota / 2});
  // Nothing the refused allocations took is left on the backend.
  client_.reset();
  runner_.join();
  EXPECT_EQ(BackendMemory(1).first, BackendMemory(1).second);
}

TEST_F(PooledSessionTest, PreemptFreesEverythingAndEveryLaterCallFails) {
  Start();
  ASSERT_TRUE(CreateContext(0).status.ok());
  ASSERT_TRUE(Alloc(4096).status.ok());
  session_->Preempt("preempted by the schedule: test");
  // The notice comes first, unasked.
  ReplyResult notice = client_->Read();
  EXPECT_EQ(notice.seq, 0u);
  EXPECT_EQ(notice.status.cuda_result(), CUDA_ERROR_DEVICE_UNAVAILABLE);
  EXPECT_EQ(notice.status.message(), "preempted by the schedule: test");
  // Everything is freed while the connection is still up.
  const SessionInfo info = session_->Info();
  EXPECT_EQ(info.bytes_allocated, 0u);
  EXPECT_EQ(info.contexts, 0u);
  EXPECT_EQ(BackendMemory(1).first, BackendMemory(1).second);
  ReplyResult after = Alloc(16);
  EXPECT_EQ(after.status.cuda_result(), CUDA_ERROR_DEVICE_UNAVAILABLE);
  EXPECT_EQ(after.status.message(), "preempted by the schedule: test");
  session_->Preempt("again");  // idempotent: no second notice
  EXPECT_EQ(CreateContext(0).status.message(), "preempted by the schedule: test");
}

TEST_F(PooledSessionTest, PreemptedBeforeItStartsRefusesTheHandshake) {
  Frame frame = Start([](Session& s) { s.Preempt("preempted by the schedule: early"); });
  capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
  Status status = StatusFromWire(reader.getRoot<wire::HelloReply>().getStatus());
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_DEVICE_UNAVAILABLE);
  EXPECT_EQ(status.message(), "preempted by the schedule: early");
}

}  // namespace
}  // namespace ferry::server
