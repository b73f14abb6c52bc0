// Session, driven in-process by a raw client that speaks frames directly, over
// a socketpair, against the real HostBackend. Covers ordering, validation of
// handles and ranges, latched asynchronous errors, malformed input, and that a
// session frees everything when its connection ends.
#include "server/session.h"

#include <capnp/dynamic.h>
#include <capnp/serialize.h>
#include <cuda.h>
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "common/frame.h"
#include "schema/call_table.h"
#include "server/backend/cuda/cuda_backend.h"
#include "test/support/host_backend.h"
#include "test/support/observed_transport.h"
#include "test/support/raw_client.h"
#include "test/support/tiny_library.h"
#include "test/support/wait.h"

namespace ferry::server {
namespace {

using test::OnStream;
using test::RawClient;
using test::ReplyResult;

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(test::CreateTestHostBackend(64 << 20, &backend_).ok());
    StartSession();
  }
  void TearDown() override { EndSession(); }

  void StartSession() {
    std::unique_ptr<Transport> server_side, client_side;
    ASSERT_TRUE(MakeTransportPair(&server_side, &client_side).ok());
    auto observed_server = std::make_unique<test::ObservedTransport>(std::move(server_side));
    auto observed_client = std::make_unique<test::ObservedTransport>(std::move(client_side));
    server_observed_ = observed_server.get();
    client_observed_ = observed_client.get();
    capnp::MallocMessageBuilder hello;
    auto h = hello.initRoot<wire::Hello>();
    h.setPid(7);
    h.setProgram("session_test");
    session_ = std::make_unique<Session>(1, std::move(observed_server), *backend_, h.asReader());
    if (buffer_limit_ != 0) session_->SetBufferLimit(buffer_limit_);
    if (slice_lease_.has_value()) session_->SetSliceLease(*slice_lease_);
    runner_ = std::thread([this] { session_->Run(); });
    client_ = std::make_unique<RawClient>(std::move(observed_client));
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

  // virtual memory management: `bytes` of physical memory on device 0 as
  // `handle`; the host backend's granularity.
  ReplyResult CreatePhysicalMemory(uint64_t handle, uint64_t bytes) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = c.initMemCreate();
      a.setHandle(handle);
      a.setDevice(0);
      a.setBytes(bytes);
    });
  }
  static uint64_t PageSize() { return static_cast<uint64_t>(sysconf(_SC_PAGESIZE)); }

  void CreateStream(uint64_t stream, unsigned flags = 0, uint64_t ctx = 100) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = OnStream(c.initStreamCreate(), stream, ctx);
          a.setFlags(flags);
        },
        false);
  }
  void CreateEvent(uint64_t event) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = c.initEventCreate();
          a.setCtx(100);
          a.setEvent(event);
        },
        false);
  }
  void RecordEvent(uint64_t stream, uint64_t event) {
    client_->Send(
        [&](wire::Call::Builder c) { OnStream(c.initEventRecord(), stream).setEvent(event); },
        false);
  }
  void CopyIn(uint64_t stream, uint64_t dst, const std::vector<uint8_t>& data) {
    client_->Send(
        [&](wire::Call::Builder c) { test::BuildMemcpyHtoD(c, 100, stream, dst, data.size()); },
        false, data);
  }
  void Fill(uint64_t stream, uint64_t dst, uint8_t value, uint64_t bytes) {
    client_->Send(
        [&](wire::Call::Builder c) { test::BuildMemsetD8(c, 100, stream, dst, value, bytes); },
        false);
  }
  ReplyResult CopyOut(uint64_t stream, uint64_t src, uint64_t bytes) {
    return client_->Call(
        [&](wire::Call::Builder c) { test::BuildMemcpyDtoH(c, 100, stream, src, bytes); });
  }
  // CUDA arrays, textures and surfaces: a float array (levels > 0: a
  // mipmapped one) of context 100.
  ReplyResult CreateArray(uint64_t array, uint64_t width, uint64_t height, uint64_t depth,
                          unsigned levels = 0, unsigned flags = 0, unsigned channels = 1) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = c.initArrayCreate();
      a.setCtx(100);
      a.setArray(array);
      a.setWidth(width);
      a.setHeight(height);
      a.setDepth(depth);
      a.setFormat(CU_AD_FORMAT_FLOAT);
      a.setNumChannels(channels);
      a.setFlags(flags);
      a.setLevels(levels);
    });
  }
  ReplyResult Sync(uint64_t stream) {
    return client_->Call(
        [&](wire::Call::Builder c) { OnStream(c.initStreamSynchronize(), stream); });
  }
  ReplyResult Query(uint64_t stream) {
    return client_->Call([&](wire::Call::Builder c) { OnStream(c.initStreamQuery(), stream); });
  }

  std::unique_ptr<backend::GpuBackend> backend_;
  uint64_t buffer_limit_ = 0;  // Session::SetBufferLimit before Run; 0: the default
  uint32_t keepalive_ms_ = 0;  // Hello.keepaliveMs
  std::unique_ptr<Session> session_;
  std::optional<Session::SliceLease> slice_lease_;  // StartSession gives it to the session
  std::thread runner_;
  std::unique_ptr<RawClient> client_;
  // The session's and the client's ends, owned by the session and client_:
  // how far each has read and written, for waits on the session's progress.
  test::ObservedTransport* server_observed_ = nullptr;
  test::ObservedTransport* client_observed_ = nullptr;

  // Waits until the session has read every byte the client wrote and is
  // reading again: it has taken every call sent so far off the connection.
  bool SessionReadEverything() {
    return test::WaitFor(
        [&] {
          return server_observed_->bytes_read() == client_observed_->bytes_written() &&
                 server_observed_->reading();
        },
        std::chrono::seconds(10));
  }
};

TEST_F(SessionTest, CopiesRoundTrip) {
  CreateContext();
  const uint64_t d = Alloc(4096);
  std::vector<uint8_t> data(4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 13);
  CopyIn(0, d, data);
  auto r = CopyOut(0, d, data.size());
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.bulk, data);
}

TEST_F(SessionTest, RangesOutsideTheSessionsAllocationsAreRefused) {
  CreateContext();
  const uint64_t d = Alloc(64);
  for (auto [src, bytes] : std::vector<std::pair<uint64_t, uint64_t>>{
           {d + 60, 8}, {d - 8, 8}, {0, 4}, {d, ~0ull}, {~0ull - 2, 4}}) {
    auto r = CopyOut(0, src, bytes);
    EXPECT_EQ(r.status.cuda_result(), CUDA_ERROR_INVALID_VALUE) << src << "+" << bytes;
  }
  // The session still works.
  EXPECT_NE(Alloc(64), 0u);
}

TEST_F(SessionTest, BadHandlesGetCudaErrors) {
  CreateContext();
  auto sync = Sync(12345);
  EXPECT_EQ(sync.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  auto alloc = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemAlloc();
    a.setCtx(999);
    a.setBytes(16);
  });
  EXPECT_EQ(alloc.status.cuda_result(), CUDA_ERROR_INVALID_CONTEXT);
  auto event = client_->Call([&](wire::Call::Builder c) { c.initEventQuery().setEvent(5); });
  EXPECT_EQ(event.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  auto attr =
      client_->Call([&](wire::Call::Builder c) { c.initFuncGetAttribute().setFunction(77); });
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
  const uint64_t bad_free =
      client_->Send([&](wire::Call::Builder c) { c.initMemFree().setDptr(0x1234); }, false);
  client_->Send([&](wire::Call::Builder c) { c.initMemFree().setDptr(0x5678); },
                false);  // second error: not reported
  auto first = client_->Call([&](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(first.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(first.latched_from, bad_free);
  auto second = client_->Call([&](wire::Call::Builder c) { c.setPing(); });
  EXPECT_TRUE(second.status.ok()) << second.status.ToString();
  EXPECT_EQ(second.latched_from, 0u);
}

// Migration between servers (session_departure.cc, session_arrival.cc): the
// calls only a move uses, sent by a client when no move is under way, are
// refused (a late refusal of a move only logged), and a move's marker is not
// the call a latched error answers.
TEST_F(SessionTest, MoveCallsWithoutAMoveAreRefused) {
  CreateContext();
  auto at = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemAllocAt();
    a.setCtx(100);
    a.setDptr(0x7f0000000000);
    a.setBytes(4096);
  });
  EXPECT_EQ(at.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_NE(at.status.message().find("a client may not send it"), std::string::npos)
      << at.status.ToString();
  const uint64_t bad_free =
      client_->Send([&](wire::Call::Builder c) { c.initMemFree().setDptr(0x1234); }, false);
  auto marker = client_->Call([&](wire::Call::Builder c) { c.initMoveMarker(); });
  EXPECT_EQ(marker.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_NE(marker.status.message().find("no move to another server is pending"),
            std::string::npos)
      << marker.status.ToString();
  EXPECT_EQ(marker.latched_from, 0u);
  auto ping = client_->Call([&](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(ping.latched_from, bad_free);
  // A late refusal (the move was given up) is no error of the program's.
  client_->Send([&](wire::Call::Builder c) { c.initMoveRefused().setReason("no room"); }, false);
  auto after = client_->Call([&](wire::Call::Builder c) { c.setPing(); });
  EXPECT_TRUE(after.status.ok()) << after.status.ToString();
  EXPECT_EQ(after.latched_from, 0u);
}

TEST_F(SessionTest, ResetPersistingL2CacheIsFireAndForgetAndItsErrorLatches) {
  CreateContext();
  auto reset = [&](uint64_t ctx) {
    return client_->Send(
        [&](wire::Call::Builder c) { c.initCtxResetPersistingL2Cache().setCtx(ctx); }, false);
  };
  reset(100);
  auto after_good = client_->Call([&](wire::Call::Builder c) { c.setPing(); });
  EXPECT_TRUE(after_good.status.ok()) << after_good.status.ToString();
  EXPECT_EQ(after_good.latched_from, 0u);
  const uint64_t bad = reset(999);
  auto after_bad = client_->Call([&](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(after_bad.status.cuda_result(), CUDA_ERROR_INVALID_CONTEXT)
      << after_bad.status.ToString();
  EXPECT_EQ(after_bad.latched_from, bad);
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
  ASSERT_TRUE(intruder
                  .Call([&](wire::Call::Builder c) {
                    auto a = c.initCtxCreate();
                    a.setCtx(100);
                    a.setDevice(0);
                  })
                  .status.ok());
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
  auto r = CopyOut(0, mine, 256);
  EXPECT_TRUE(r.status.ok()) << r.status.ToString();
}

TEST_F(SessionTest, StreamsEventsAndSynchronizeReplyInOrderOfCompletion) {
  CreateContext();
  const uint64_t d = Alloc(1 << 20);
  CreateStream(7);
  CreateEvent(8);
  client_->Send([&](wire::Call::Builder c) { test::BuildMemsetD8(c, 100, 7, d, 0xAB, 1 << 20); },
                false);
  RecordEvent(7, 8);
  auto sync = client_->Call([&](wire::Call::Builder c) { c.initEventSynchronize().setEvent(8); });
  ASSERT_TRUE(sync.status.ok()) << sync.status.ToString();
  auto r =
      client_->Call([&](wire::Call::Builder c) { test::BuildMemcpyDtoH(c, 100, 7, d + 1000, 4); });
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.bulk, std::vector<uint8_t>(4, 0xAB));
}

TEST_F(SessionTest, DisconnectFreesEverything) {
  CreateContext();
  Alloc(1 << 20);
  Alloc(3 << 20);
  CreateStream(9);
  ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
  EXPECT_EQ(session_->Info().bytes_allocated, 4u << 20);
  EXPECT_EQ(session_->Info().streams, 1u);
  // EndSession (TearDown) asserts that everything is gone.
}

// --- host gates ------------------------------------------------------------------

constexpr uint64_t kHeld = 7;   // a blocking stream the tests hold with gates
constexpr uint64_t kProbe = 8;  // a non-blocking stream that reads past them

TEST_F(SessionTest, HostGateIsAnsweredWhenReachedAndHoldsItsStreamUntilOpened) {
  CreateContext();
  const uint64_t d = Alloc(4096);
  CreateStream(kHeld);
  CreateStream(kProbe, CU_STREAM_NON_BLOCKING);
  const std::vector<uint8_t> before(4096, 0x5A);
  CopyIn(kHeld, d, before);
  const uint64_t gate = client_->SendGate(100, kHeld);
  Fill(kHeld, d, 0xCD, 4096);  // queued behind the gate

  ReplyResult reached = client_->ReadWithin();
  ASSERT_TRUE(reached.status.ok()) << reached.status.ToString();
  EXPECT_EQ(reached.seq, gate);
  EXPECT_TRUE(reached.gate_reached);
  EXPECT_TRUE(reached.held);
  EXPECT_FALSE(reached.stream_failed);
  // Held: the memset behind the gate has not run.
  EXPECT_EQ(Query(kHeld).status.cuda_result(), CUDA_ERROR_NOT_READY);
  ReplyResult probe = CopyOut(kProbe, d, 4096);
  ASSERT_TRUE(probe.status.ok()) << probe.status.ToString();
  EXPECT_EQ(probe.bulk, before);

  client_->OpenGate(gate);
  ReplyResult sync = Sync(kHeld);
  EXPECT_TRUE(sync.status.ok()) << sync.status.ToString();
  probe = CopyOut(kProbe, d, 4096);
  EXPECT_EQ(probe.bulk, std::vector<uint8_t>(4096, 0xCD));
}

// Parking (memory overcommit): only an idle session is parked — not one
// that made a call within the idle time asked for, nor one whose stream is
// held — and its next call brings the memory back with its bytes.
TEST_F(SessionTest, OnlyAnIdleSessionIsParkedAndItsNextCallBringsTheMemoryBack) {
  CreateContext();
  const uint64_t d = Alloc(1 << 20);
  std::vector<uint8_t> data(1 << 20);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  CopyIn(0, d, data);
  ASSERT_TRUE(Sync(0).status.ok());
  uint64_t parked = 0;
  Status refused = session_->Park(absl::Hours(1), "test", -1, &parked);
  EXPECT_EQ(refused.code(), StatusCode::kOverloaded) << refused.ToString();
  EXPECT_NE(refused.message().find("made a call"), std::string::npos) << refused.message();

  CreateStream(kHeld);
  const uint64_t gate = client_->SendGate(100, kHeld);
  ReplyResult reached = client_->ReadWithin();
  ASSERT_TRUE(reached.gate_reached);
  refused = session_->Park(absl::ZeroDuration(), "test", -1, &parked);
  EXPECT_EQ(refused.code(), StatusCode::kOverloaded) << refused.ToString();
  EXPECT_NE(refused.message().find("work running"), std::string::npos) << refused.message();
  EXPECT_FALSE(session_->Info().parked);
  client_->OpenGate(gate);
  ASSERT_TRUE(Sync(kHeld).status.ok());

  ASSERT_TRUE(session_->Park(absl::ZeroDuration(), "test", -1, &parked).ok());
  EXPECT_EQ(parked, 1u << 20);
  SessionInfo info = session_->Info();
  EXPECT_TRUE(info.parked);
  EXPECT_EQ(info.parked_bytes, 1u << 20);
  EXPECT_EQ(info.parks, 1u);
  // Parking a parked session moves nothing.
  ASSERT_TRUE(session_->Park(absl::ZeroDuration(), "test", -1, &parked).ok());
  EXPECT_EQ(parked, 0u);

  ReplyResult back = CopyOut(0, d, data.size());
  ASSERT_TRUE(back.status.ok()) << back.status.ToString();
  EXPECT_EQ(back.bulk, data);
  info = session_->Info();
  EXPECT_FALSE(info.parked);
  EXPECT_EQ(info.parked_bytes, 0u);
  EXPECT_EQ(info.unparks, 1u);
  EXPECT_EQ(info.bytes_unparked_total, 1u << 20);
}

// Parked memory that cannot come back (the device filled meanwhile): the
// batch's calls fail with CUDA_ERROR_OUT_OF_MEMORY, all but a free — which
// may be what makes the session fit — and the next batch tries again.
TEST_F(SessionTest, ParkedMemoryWithoutRoomFailsTheCallsButAFreeAndComesBackLater) {
  session_->TEST_SetUnparkWait(std::chrono::milliseconds(50));
  CreateContext();
  const uint64_t kept = Alloc(8 << 20);
  const uint64_t spare = Alloc(8 << 20);
  CopyIn(0, kept, std::vector<uint8_t>(4096, 0x33));
  ASSERT_TRUE(Sync(0).status.ok());
  uint64_t parked = 0;
  ASSERT_TRUE(session_->Park(absl::ZeroDuration(), "test", -1, &parked).ok());
  ASSERT_EQ(parked, 16u << 20);
  // Someone else takes all but 12 MiB of the 64 MiB device.
  std::unique_ptr<backend::Context> other;
  ASSERT_TRUE(backend_->CreateContext(0, 0, &other).ok());
  std::unique_ptr<backend::Tenant> other_tenant = backend_->CreateTenant();
  backend_->JoinTenant(*other, *other_tenant);
  uint64_t filler = 0;
  ASSERT_TRUE(backend_->MemAlloc(*other, 52 << 20, &filler).ok());

  ReplyResult refused = CopyOut(0, kept, 4096);
  EXPECT_EQ(refused.status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY) << refused.status.ToString();
  EXPECT_TRUE(session_->Info().parked);
  // The free goes through although the memory is parked; then 8 MiB fit.
  auto freed = client_->Call([&](wire::Call::Builder c) { c.initMemFree().setDptr(spare); });
  EXPECT_TRUE(freed.status.ok()) << freed.status.ToString();
  ReplyResult back = CopyOut(0, kept, 4096);
  ASSERT_TRUE(back.status.ok()) << back.status.ToString();
  EXPECT_EQ(back.bulk, std::vector<uint8_t>(4096, 0x33));
  EXPECT_FALSE(session_->Info().parked);
  ASSERT_TRUE(backend_->MemFree(*other, filler).ok());
}

// Idle release: ReleaseIdle parks the memory and gives the slices back (the
// lease's give_back, once); the next call borrows them again before the
// memory comes back. A refused borrow fails the batch's calls with the
// pool's reason, and a later batch tries again.
TEST_F(SessionTest, AReleasedSessionBorrowsAgainBeforeItsMemoryComesBack) {
  uint64_t parked = 0;
  EXPECT_EQ(session_->ReleaseIdle(absl::ZeroDuration(), &parked).code(),
            StatusCode::kUnimplemented);  // no pool to give slices back to
  EndSession();
  struct Pool {
    std::mutex mu;
    int given_back = 0;
    int asked = 0;
    bool parked_when_given_back = false;
    Status give_back_answer;
    Status answer;
  } pool;
  slice_lease_ = Session::SliceLease{
      [&] {
        std::lock_guard<std::mutex> lock(pool.mu);
        ++pool.given_back;
        pool.parked_when_given_back = session_->Info().parked;
        return pool.give_back_answer;
      },
      [&](const std::function<bool()>& gone) {
        std::lock_guard<std::mutex> lock(pool.mu);
        ++pool.asked;
        EXPECT_FALSE(gone());
        return pool.answer;
      }};
  StartSession();
  CreateContext();
  const uint64_t d = Alloc(1 << 20);
  const uint64_t spare = Alloc(64 << 10);
  constexpr uint64_t kParked = (1 << 20) + (64 << 10);
  std::vector<uint8_t> data(1 << 20);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 13 + 1);
  CopyIn(0, d, data);
  ASSERT_TRUE(Sync(0).status.ok());
  Status busy = session_->ReleaseIdle(absl::Hours(1), &parked);
  EXPECT_EQ(busy.code(), StatusCode::kOverloaded) << busy.ToString();
  EXPECT_EQ(pool.given_back, 0);
  // The pool does not take them (the session is being drained): the slices
  // stay the session's; the memory parked on the way stays parked.
  pool.give_back_answer = Status::Overloaded("session 1 is draining");
  EXPECT_EQ(session_->ReleaseIdle(absl::ZeroDuration(), &parked).code(), StatusCode::kOverloaded);
  EXPECT_EQ(parked, kParked);
  EXPECT_FALSE(session_->Info().slices_released);
  EXPECT_TRUE(session_->Info().parked);
  pool.give_back_answer = Status::Ok();

  ASSERT_TRUE(session_->ReleaseIdle(absl::ZeroDuration(), &parked).ok());
  EXPECT_EQ(parked, 0u);  // parked already
  EXPECT_EQ(pool.given_back, 2);
  EXPECT_TRUE(pool.parked_when_given_back);
  SessionInfo info = session_->Info();
  EXPECT_TRUE(info.slices_released);
  EXPECT_TRUE(info.parked);
  EXPECT_EQ(info.releases, 1u);
  ASSERT_TRUE(session_->ReleaseIdle(absl::ZeroDuration(), &parked).ok());
  EXPECT_EQ(parked, 0u);
  EXPECT_EQ(pool.given_back, 2);  // released once

  pool.answer = Status::Overloaded("slice 0 of GPU 0 is held by another session");
  ReplyResult refused = CopyOut(0, d, data.size());
  EXPECT_EQ(refused.status.cuda_result(), CUDA_ERROR_DEVICE_UNAVAILABLE)
      << refused.status.ToString();
  EXPECT_NE(refused.status.message().find("held by another session"), std::string::npos)
      << refused.status.message();
  EXPECT_EQ(pool.asked, 1);
  EXPECT_TRUE(session_->Info().slices_released);
  EXPECT_TRUE(session_->Info().parked);
  // A batch that only lets go of things runs without the slices.
  auto freed = client_->Call([&](wire::Call::Builder c) { c.initMemFree().setDptr(spare); });
  EXPECT_TRUE(freed.status.ok()) << freed.status.ToString();
  EXPECT_EQ(pool.asked, 1);
  EXPECT_TRUE(session_->Info().slices_released);

  pool.answer = Status::Ok();
  ReplyResult back = CopyOut(0, d, data.size());
  ASSERT_TRUE(back.status.ok()) << back.status.ToString();
  EXPECT_EQ(back.bulk, data);
  EXPECT_EQ(pool.asked, 2);
  info = session_->Info();
  EXPECT_FALSE(info.slices_released);
  EXPECT_FALSE(info.parked);
  EXPECT_EQ(info.reborrows, 1u);
  EXPECT_EQ(info.unparks, 1u);
}

// graph node kinds: an allocation node's range is the session's from
// instantiation, so work queued on any stream may use it; destroying the
// executable graph releases the memory (and its quota) only after that work,
// like every release (cuMemFree's).
TEST_F(SessionTest, GraphMemoryOutlivesWorkQueuedBeforeItsExecutableGraphIsDestroyed) {
  CreateContext();
  CreateStream(kHeld);
  client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(50); }, false);
  ReplyResult alloc = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initGraphAddMemAllocNode();
    a.setGraph(50);
    a.setNode(51);
    a.setCtx(100);
    a.setBytes(4096);
  });
  ASSERT_TRUE(alloc.status.ok()) << alloc.status.ToString();
  ReplyResult instantiated = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initGraphInstantiate();
    a.setGraph(50);
    a.setExec(60);
  });
  ASSERT_TRUE(instantiated.status.ok()) << instantiated.status.ToString();
  const uint64_t charged = session_->Info().device_bytes[0];
  ASSERT_GE(charged, 4096u);
  const uint64_t gate = client_->SendGate(100, kHeld);
  ASSERT_EQ(client_->ReadWithin().seq, gate);
  Fill(kHeld, alloc.dptr, 0xCD, 4096);  // queued behind the gate
  client_->Send([&](wire::Call::Builder c) { c.initGraphExecDestroy().setExec(60); }, false);
  ASSERT_TRUE(client_->Call([](wire::Call::Builder c) { c.setPing(); }).status.ok());
  // The memset has not run: the memory and its quota are still held.
  EXPECT_EQ(session_->Info().device_bytes[0], charged);
  client_->OpenGate(gate);
  ReplyResult sync = Sync(kHeld);
  EXPECT_TRUE(sync.status.ok()) << sync.status.ToString();
  EXPECT_TRUE(test::WaitFor([&] { return session_->Info().device_bytes[0] == 0; },
                            std::chrono::seconds(10)));
}

// graph node kinds: an allocation a launch made and no free node freed can
// be freed by cuMemFree (once), after which the executable graph may be
// launched again; one still unfreed when the executable graph is destroyed
// goes with it, and its quota comes back only then. A graph with memory
// nodes cannot be cloned, nor its nodes or edges removed.
TEST_F(SessionTest, UnfreedGraphAllocationsAreFreedByMemFreeOrWithTheirExecutableGraph) {
  CreateContext();
  CreateStream(kHeld);
  auto ping = [&] { return client_->Call([](wire::Call::Builder c) { c.setPing(); }).status; };
  client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(50); }, false);
  ReplyResult alloc = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initGraphAddMemAllocNode();
    a.setGraph(50);
    a.setNode(51);
    a.setCtx(100);
    a.setBytes(4096);
  });
  ASSERT_TRUE(alloc.status.ok()) << alloc.status.ToString();
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = c.initGraphAddNode();
        a.setGraph(50);
        a.setNode(52);
        a.initDependencies(1).set(0, 51);
        a.setEmpty();
      },
      false);
  ASSERT_TRUE(ping().ok());
  client_->Send(
      [&](wire::Call::Builder c) {
        auto e = c.initGraphEditEdges();
        e.setGraph(50);
        e.initFrom(1).set(0, 51);
        e.initTo(1).set(0, 52);
        e.setRemove(true);
      },
      false);
  EXPECT_EQ(ping().cuda_result(), CUDA_ERROR_NOT_SUPPORTED);
  client_->Send([&](wire::Call::Builder c) { c.initGraphDestroyNode().setNode(52); }, false);
  EXPECT_EQ(ping().cuda_result(), CUDA_ERROR_NOT_SUPPORTED);
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = c.initGraphClone();
        a.setGraph(50);
        a.setClone(55);
      },
      false);
  EXPECT_EQ(ping().cuda_result(), CUDA_ERROR_NOT_SUPPORTED);
  ReplyResult instantiated = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initGraphInstantiate();
    a.setGraph(50);
    a.setExec(60);
  });
  ASSERT_TRUE(instantiated.status.ok()) << instantiated.status.ToString();
  const uint64_t charged = session_->Info().device_bytes[0];
  auto launch = [&] {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = c.initGraphLaunch();
          a.setCtx(100);
          a.setExec(60);
          a.setStream(kHeld);
        },
        false);
    return ping();
  };
  auto mem_free = [&] {
    client_->Send([&](wire::Call::Builder c) { c.initMemFree().setDptr(alloc.dptr); }, false);
    return ping();
  };
  // Not allocated by a launch yet: cuMemFree refuses it.
  EXPECT_EQ(mem_free().cuda_result(), CUDA_ERROR_INVALID_VALUE);
  ASSERT_TRUE(launch().ok());
  EXPECT_EQ(launch().cuda_result(), CUDA_ERROR_INVALID_VALUE);  // not freed
  ASSERT_TRUE(mem_free().ok());
  EXPECT_EQ(mem_free().cuda_result(), CUDA_ERROR_INVALID_VALUE);  // freed already
  ASSERT_TRUE(launch().ok());
  // Still charged: the memory is the executable graph's.
  EXPECT_EQ(session_->Info().device_bytes[0], charged);
  // The second launch's allocation is not freed when the executable graph
  // goes: it goes with it, and the quota comes back.
  const uint64_t gate = client_->SendGate(100, kHeld);
  ASSERT_EQ(client_->ReadWithin().seq, gate);
  Fill(kHeld, alloc.dptr, 0xCD, 4096);  // queued behind the gate
  client_->Send([&](wire::Call::Builder c) { c.initGraphExecDestroy().setExec(60); }, false);
  ASSERT_TRUE(ping().ok());
  EXPECT_EQ(session_->Info().device_bytes[0], charged);
  EXPECT_EQ(mem_free().cuda_result(), CUDA_ERROR_INVALID_VALUE);  // no longer the session's
  client_->OpenGate(gate);
  EXPECT_TRUE(Sync(kHeld).status.ok());
  EXPECT_TRUE(test::WaitFor([&] { return session_->Info().device_bytes[0] == 0; },
                            std::chrono::seconds(10)));
  // The graph can be instantiated again.
  instantiated = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initGraphInstantiate();
    a.setGraph(50);
    a.setExec(61);
  });
  EXPECT_TRUE(instantiated.status.ok()) << instantiated.status.ToString();
}

TEST_F(SessionTest, RepliesOfCopiesBeforeAGateComeBeforeItsAnswer) {
  CreateContext();
  const uint64_t d = Alloc(1 << 20);
  CreateStream(kHeld);
  Fill(kHeld, d, 0x3C, 1 << 20);
  const uint64_t copy = client_->Send(
      [&](wire::Call::Builder c) { test::BuildMemcpyDtoH(c, 100, kHeld, d, 1 << 20); }, true);
  const uint64_t gate = client_->SendGate(100, kHeld);
  ReplyResult first = client_->ReadWithin();
  ReplyResult second = client_->ReadWithin();
  EXPECT_EQ(first.seq, copy);
  EXPECT_EQ(first.bulk, std::vector<uint8_t>(1 << 20, 0x3C));
  EXPECT_EQ(second.seq, gate);
  EXPECT_TRUE(second.held);
  client_->OpenGate(gate);
  EXPECT_TRUE(Sync(kHeld).status.ok());
}

TEST_F(SessionTest, GatesOfAStreamAreAnsweredInOrderNeverPastAClosedOne) {
  CreateContext();
  CreateStream(kHeld);
  const uint64_t first = client_->SendGate(100, kHeld);
  const uint64_t second = client_->SendGate(100, kHeld);
  ReplyResult r = client_->ReadWithin();
  EXPECT_EQ(r.seq, first);
  // The second is not reached while the first holds the stream: the next
  // reply is the ping's.
  const uint64_t ping = client_->Send([&](wire::Call::Builder c) { c.setPing(); }, true);
  EXPECT_EQ(client_->ReadWithin().seq, ping);
  client_->OpenGate(first);
  r = client_->ReadWithin();
  EXPECT_EQ(r.seq, second);
  EXPECT_TRUE(r.held);
  client_->OpenGate(second);
  EXPECT_TRUE(Sync(kHeld).status.ok());
}

// A call that blocks the executor until a gate opens (destroying the held
// stream) must not keep the session from reading the gateOpen, nor lose or
// reorder the calls that arrive meanwhile.
TEST_F(SessionTest, CallsWaitingBehindAGateDoNotKeepItsOpenFromBeingRead) {
  CreateContext();
  CreateStream(kHeld);
  const uint64_t gate = client_->SendGate(100, kHeld);
  ASSERT_EQ(client_->ReadWithin().seq, gate);
  client_->Send([&](wire::Call::Builder c) { OnStream(c.initStreamDestroy(), kHeld); }, false);
  std::vector<uint64_t> pings;
  for (int i = 0; i < 50; ++i) {
    pings.push_back(client_->Send([&](wire::Call::Builder c) { c.setPing(); }, true));
  }
  client_->OpenGate(gate);
  for (uint64_t ping : pings) {
    ReplyResult r = client_->ReadWithin();
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(r.seq, ping);
  }
  EXPECT_EQ(session_->Info().streams, 0u);
}

TEST_F(SessionTest, HostGateCarriesTheLatchedErrorAndLeavesItLatched) {
  CreateContext();
  const uint64_t bad_free =
      client_->Send([&](wire::Call::Builder c) { c.initMemFree().setDptr(0x1234); }, false);
  const uint64_t gate = client_->SendGate(100, 0);  // the legacy stream
  ReplyResult reached = client_->ReadWithin();
  EXPECT_EQ(reached.seq, gate);
  EXPECT_TRUE(reached.held);
  EXPECT_FALSE(reached.stream_failed);
  EXPECT_EQ(reached.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  client_->OpenGate(gate);
  ReplyResult ping = client_->Call([&](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(ping.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(ping.latched_from, bad_free);
}

TEST_F(SessionTest, HostGateOnAnUnknownStreamIsRefusedAndLatched) {
  CreateContext();
  const uint64_t gate = client_->SendGate(100, 999);
  ReplyResult refused = client_->ReadWithin();
  EXPECT_EQ(refused.seq, gate);
  EXPECT_TRUE(refused.gate_reached);
  EXPECT_FALSE(refused.held);
  EXPECT_EQ(refused.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  ReplyResult ping = client_->Call([&](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(ping.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(ping.latched_from, gate);
}

TEST_F(SessionTest, HostGateThatWantsAReplyIsRefused) {
  CreateContext();
  const uint64_t gate = client_->SendGate(100, 0, /*wants_reply=*/true);
  ReplyResult r = client_->ReadWithin();
  EXPECT_EQ(r.seq, gate);
  EXPECT_FALSE(r.held);
  EXPECT_EQ(r.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
}

// A hostile client reuses the seq of a closed gate: refused, and the first
// gate still opens when the session ends (EndSession would hang otherwise).
TEST_F(SessionTest, HostGateReusingTheSeqOfAClosedGateIsRefused) {
  CreateContext();
  CreateStream(kHeld);
  const uint64_t gate = client_->SendGate(100, kHeld);
  ASSERT_EQ(client_->ReadWithin().seq, gate);
  capnp::MallocMessageBuilder message;
  auto call = message.initRoot<wire::Call>();
  call.setSeq(gate);
  auto args = call.initHostGate();
  args.setCtx(100);
  args.setStream(kHeld);
  ASSERT_TRUE(WriteFrame(client_->transport(), wire::FrameKind::CALL_BATCH, message).ok());
  ReplyResult again = client_->ReadWithin();
  EXPECT_EQ(again.seq, gate);
  EXPECT_FALSE(again.held);
  EXPECT_EQ(again.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
}

TEST_F(SessionTest, GateOpenForNoGateIsHarmless) {
  CreateContext();
  client_->OpenGate(12345);
  EXPECT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
}

TEST_F(SessionTest, MalformedGateOpenClosesTheSession) {
  CreateContext();
  const uint64_t words[2] = {0xffffffffffffffffull, 0x1234};
  const std::vector<uint8_t> header = test::FrameHeader(wire::FrameKind::GATE_OPEN, sizeof(words));
  ConstBuffer buffers[2] = {{header.data(), header.size()}, {words, sizeof(words)}};
  ASSERT_TRUE(client_->transport().Write(buffers).ok());
  EXPECT_FALSE(client_->ReadWithin().status.ok());  // closed
}

// The client dies while a gate holds a stream and calls wait behind it: the
// session opens the gate itself and frees everything (EndSession checks).
TEST_F(SessionTest, DisconnectWithAClosedGateFreesEverything) {
  CreateContext();
  const uint64_t d = Alloc(1 << 20);
  CreateStream(kHeld);
  const uint64_t gate = client_->SendGate(100, kHeld);
  client_->SendGate(100, kHeld);  // never reached before the end
  Fill(kHeld, d, 1, 1 << 20);
  ASSERT_EQ(client_->ReadWithin().seq, gate);
  client_->Send([&](wire::Call::Builder c) { OnStream(c.initStreamDestroy(), kHeld); }, false);
  // Queued behind the blocked destroy, never answered. The connection ends
  // only once the session has taken both calls off it.
  client_->Send([&](wire::Call::Builder c) { c.setPing(); }, true);
  ASSERT_TRUE(SessionReadEverything());
  EXPECT_EQ(session_->Info().streams, 1u);
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

// With a 256 KiB buffer limit, a 1 MiB host-to-device copy still lands (it
// streams), and a frame whose payload would all be buffered past the limit
// (a module image) closes the session instead of being buffered.
TEST_F(SessionTest, FramesPastTheBufferLimitStreamOrCloseTheSession) {
  EndSession();
  buffer_limit_ = 256 << 10;
  StartSession();
  CreateContext();
  const uint64_t dst = Alloc(1 << 20);
  CreateStream(1);
  std::vector<uint8_t> data(1 << 20);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 13 + 5);
  CopyIn(1, dst, data);
  ReplyResult out = CopyOut(1, dst, data.size());
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.bulk, data);

  const std::vector<uint8_t> image(512 << 10, 0x7f);
  uint64_t seq = 0;
  // The session may close the connection before the whole frame is written.
  (void)client_->TrySend(
      [&](wire::Call::Builder c) {
        auto a = c.initModuleLoad();
        a.setCtx(100);
        a.setModule(7);
      },
      true, image, &seq);
  const ReplyResult refused = client_->Read();
  EXPECT_EQ(refused.status.code(), StatusCode::kDisconnected) << refused.status.ToString();
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
    const std::vector<uint8_t> header =
        test::FrameHeader(wire::FrameKind::CALL_BATCH, static_cast<uint32_t>(n));
    ConstBuffer buffers[2] = {{header.data(), header.size()}, {bytes, n}};
    ASSERT_TRUE(client_->transport().Write(buffers).ok());
    // Whatever the frame said, the session answers it or closes the
    // connection; either way a ping after it is answered or finds it closed.
    uint64_t ping = 0;
    if (!client_->TrySend([&](wire::Call::Builder c) { c.setPing(); }, true, {}, &ping).ok())
      continue;
    for (int reads = 0; reads < 4; ++reads) {
      ReplyResult r = client_->Read();
      if (r.seq == ping || r.status.code() == StatusCode::kDisconnected ||
          r.status.code() == StatusCode::kMalformed) {
        break;
      }
    }
  }
}

// --- libraries and occupancy ---------------------------------------------------

// --- stream capture and graphs ------------------------------------------------------

class SessionGraphTest : public SessionTest {
 protected:
  void BeginCapture(uint64_t stream, uint64_t graph, uint64_t ctx = 100) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = OnStream(c.initStreamBeginCapture(), stream, ctx);
          a.setMode(CU_STREAM_CAPTURE_MODE_GLOBAL);
          a.setGraph(graph);
        },
        false);
  }
  ReplyResult EndCapture(uint64_t stream) {
    return client_->Call(
        [&](wire::Call::Builder c) { OnStream(c.initStreamEndCapture(), stream); });
  }
  ReplyResult CaptureStatus(uint64_t stream) {
    return client_->Call(
        [&](wire::Call::Builder c) { OnStream(c.initStreamCaptureStatus(), stream); });
  }
  void Instantiate(uint64_t graph, uint64_t exec) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = c.initGraphInstantiate();
          a.setGraph(graph);
          a.setExec(exec);
        },
        false);
  }
  void Launch(uint64_t exec, uint64_t stream) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = OnStream(c.initGraphLaunch(), stream);
          a.setExec(exec);
        },
        false);
  }
  void CopyDtoD(uint64_t stream, uint64_t dst, uint64_t src, uint64_t bytes) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = OnStream(c.initMemcpyDtoD(), stream);
          a.setDst(dst);
          a.setSrc(src);
          a.setBytes(bytes);
        },
        false);
  }
  Status Ping() {
    return client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status;
  }
};

TEST_F(SessionGraphTest, CaptureRecordsInsteadOfRunningAndOneLaunchReplaysIt) {
  CreateContext();
  CreateStream(5);
  const uint64_t a = Alloc(64);
  const uint64_t b = Alloc(64);
  EXPECT_EQ(CaptureStatus(5).value, CU_STREAM_CAPTURE_STATUS_NONE);
  BeginCapture(5, 50);
  Fill(5, a, 0x11, 64);
  CopyDtoD(5, b, a, 64);
  ReplyResult status = CaptureStatus(5);
  ASSERT_TRUE(status.status.ok()) << status.status.ToString();
  EXPECT_EQ(status.value, CU_STREAM_CAPTURE_STATUS_ACTIVE);
  // Recorded, not run: another stream sees the memory untouched.
  EXPECT_EQ(CopyOut(0, b, 64).bulk, std::vector<uint8_t>(64, 0));
  ReplyResult ended = EndCapture(5);
  ASSERT_TRUE(ended.status.ok()) << ended.status.ToString();
  EXPECT_EQ(CaptureStatus(5).value, CU_STREAM_CAPTURE_STATUS_NONE);
  ReplyResult count =
      client_->Call([&](wire::Call::Builder c) { c.initGraphNodeCount().setGraph(50); });
  ASSERT_TRUE(count.status.ok()) << count.status.ToString();
  EXPECT_EQ(count.value, 2);
  Instantiate(50, 60);
  for (int replay = 0; replay < 3; ++replay) {
    Fill(5, b, 0, 64);
    Launch(60, 5);
    ReplyResult out = CopyOut(5, b, 64);
    ASSERT_TRUE(out.status.ok()) << out.status.ToString();
    EXPECT_EQ(out.bulk, std::vector<uint8_t>(64, 0x11)) << "replay " << replay;
  }
  // The executable graph outlives its graph.
  client_->Send([&](wire::Call::Builder c) { c.initGraphDestroy().setGraph(50); }, false);
  Fill(5, b, 0, 64);
  Launch(60, 5);
  EXPECT_EQ(CopyOut(5, b, 64).bulk, std::vector<uint8_t>(64, 0x11));
  client_->Send([&](wire::Call::Builder c) { c.initGraphExecDestroy().setExec(60); }, false);
  EXPECT_TRUE(Ping().ok());
}

// graph host nodes: a graph memset -> host node (function 7) -> copy ->
// host node (function 8); one launch, two host gates of its call.
class SessionGraphHostTest : public SessionGraphTest {
 protected:
  void AddNode(uint64_t graph, uint64_t node, std::initializer_list<uint64_t> deps,
               const std::function<void(wire::GraphAddNode::Builder)>& work) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = c.initGraphAddNode();
          a.setGraph(graph);
          a.setNode(node);
          auto list = a.initDependencies(static_cast<unsigned>(deps.size()));
          unsigned i = 0;
          for (uint64_t d : deps) list.set(i++, d);
          work(a);
        },
        false);
  }
  // Graph 50: memset a (0x11) -> host 7 -> copy a to b -> host 8.
  void BuildGraph(uint64_t a, uint64_t b) {
    client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(50); }, false);
    AddNode(50, 51, {}, [&](wire::GraphAddNode::Builder n) {
      auto m = n.initMemset();
      m.setCtx(100);
      m.setDst(a);
      m.setValue(0x11);
      m.setElementBytes(1);
      m.setWidth(64);
      m.setHeight(1);
    });
    AddNode(50, 52, {51}, [](wire::GraphAddNode::Builder n) { n.setHost(7); });
    AddNode(50, 53, {52}, [&](wire::GraphAddNode::Builder n) {
      auto m = n.initMemcpy();
      m.setCtx(100);
      m.setDst(b);
      m.setSrc(a);
      m.setBytes(64);
    });
    AddNode(50, 54, {53}, [](wire::GraphAddNode::Builder n) { n.setHost(8); });
  }
  uint64_t LaunchWithHostNodes(uint64_t exec, uint64_t stream, uint32_t host_nodes) {
    return client_->Send(
        [&](wire::Call::Builder c) {
          auto a = OnStream(c.initGraphLaunchHostNodes(), stream);
          a.setExec(exec);
          a.setHostNodes(host_nodes);
        },
        false);
  }
};

TEST_F(SessionGraphHostTest, HostNodesHoldTheReplayAtTheirGatesInOrder) {
  CreateContext();
  CreateStream(kHeld);
  CreateStream(kProbe, CU_STREAM_NON_BLOCKING);
  const uint64_t a = Alloc(64);
  const uint64_t b = Alloc(64);
  BuildGraph(a, b);
  Instantiate(50, 60);
  for (int replay = 0; replay < 2; ++replay) {
    Fill(kHeld, b, 0, 64);
    const uint64_t launch = LaunchWithHostNodes(60, kHeld, 2);
    ReplyResult first = client_->ReadWithin();
    ASSERT_TRUE(first.status.ok()) << first.status.ToString();
    EXPECT_EQ(first.seq, launch);
    EXPECT_TRUE(first.gate_reached && first.held && !first.stream_failed);
    EXPECT_EQ(first.gate_index, 0u);
    EXPECT_EQ(first.host_function, 7u);
    // Held at the first host node: the copy after it has not run.
    EXPECT_EQ(Query(kHeld).status.cuda_result(), CUDA_ERROR_NOT_READY);
    EXPECT_EQ(CopyOut(kProbe, b, 64).bulk, std::vector<uint8_t>(64, 0));
    client_->OpenGate(launch, 0);
    ReplyResult second = client_->ReadWithin();
    EXPECT_EQ(second.seq, launch);
    EXPECT_TRUE(second.held);
    EXPECT_EQ(second.gate_index, 1u);
    EXPECT_EQ(second.host_function, 8u);
    EXPECT_EQ(CopyOut(kProbe, b, 64).bulk, std::vector<uint8_t>(64, 0x11));
    EXPECT_EQ(Query(kHeld).status.cuda_result(), CUDA_ERROR_NOT_READY);
    client_->OpenGate(launch, 1);
    EXPECT_TRUE(Sync(kHeld).status.ok());
  }
  // An executable graph's host node set to another function.
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = c.initGraphNodeSetParams();
        a.setExec(60);
        a.setNode(54);
        a.setHost(9);
      },
      false);
  const uint64_t launch = LaunchWithHostNodes(60, kHeld, 2);
  ReplyResult first = client_->ReadWithin();
  EXPECT_EQ(first.host_function, 7u);
  client_->OpenGate(launch, 0);
  ReplyResult second = client_->ReadWithin();
  EXPECT_EQ(second.host_function, 9u);
  client_->OpenGate(launch, 1);
  EXPECT_TRUE(Sync(kHeld).status.ok());
}

TEST_F(SessionGraphHostTest, AGraphWithHostNodesLaunchesOnlyWithAllItsGates) {
  CreateContext();
  CreateStream(kHeld);
  BuildGraph(Alloc(64), Alloc(64));
  Instantiate(50, 60);
  Launch(60, kHeld);  // without gates
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_VALUE);
  const uint64_t launch = LaunchWithHostNodes(60, kHeld, 1);  // one gate short
  ReplyResult refused = client_->ReadWithin();
  EXPECT_EQ(refused.seq, launch);
  EXPECT_FALSE(refused.held);
  EXPECT_EQ(refused.gate_index, wire::ALL_GATES_OF_THE_CALL);
  EXPECT_EQ(refused.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_VALUE);
  // Nor as a child graph.
  client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(70); }, false);
  AddNode(70, 71, {}, [](wire::GraphAddNode::Builder n) { n.setChildGraph(50); });
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_TRUE(Sync(kHeld).status.ok());
}

TEST_F(SessionGraphHostTest, ACapturedHostFunctionBecomesAHostNode) {
  CreateContext();
  CreateStream(kHeld);
  CreateStream(kProbe, CU_STREAM_NON_BLOCKING);
  const uint64_t a = Alloc(64);
  const uint64_t b = Alloc(64);
  auto capture_host_func = [&](uint64_t stream, uint64_t function) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto args = OnStream(c.initStreamCaptureHostFunc(), stream);
          args.setHostFunction(function);
        },
        false);
  };
  capture_host_func(kHeld, 3);  // not capturing
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_ILLEGAL_STATE);
  BeginCapture(kHeld, 80);
  Fill(kHeld, a, 0x22, 64);
  capture_host_func(kHeld, 3);
  CopyDtoD(kHeld, b, a, 64);
  ReplyResult ended = EndCapture(kHeld);
  ASSERT_TRUE(ended.status.ok()) << ended.status.ToString();
  EXPECT_EQ(CopyOut(kProbe, a, 64).bulk, std::vector<uint8_t>(64, 0));  // recorded, not run
  Instantiate(80, 81);
  const uint64_t launch = LaunchWithHostNodes(81, kHeld, 1);
  ReplyResult reached = client_->ReadWithin();
  EXPECT_EQ(reached.seq, launch);
  EXPECT_TRUE(reached.held);
  EXPECT_EQ(reached.host_function, 3u);
  EXPECT_EQ(CopyOut(kProbe, a, 64).bulk, std::vector<uint8_t>(64, 0x22));
  EXPECT_EQ(CopyOut(kProbe, b, 64).bulk, std::vector<uint8_t>(64, 0));
  client_->OpenGate(launch, 0);
  EXPECT_TRUE(Sync(kHeld).status.ok());
  EXPECT_EQ(CopyOut(kProbe, b, 64).bulk, std::vector<uint8_t>(64, 0x22));
  // Launched into a capture, it invalidates the capture.
  CreateStream(9);
  BeginCapture(9, 90);
  const uint64_t into_capture = LaunchWithHostNodes(81, 9, 1);
  ReplyResult refused = client_->ReadWithin();
  EXPECT_EQ(refused.seq, into_capture);
  EXPECT_FALSE(refused.held);
  EXPECT_EQ(refused.status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  // The error is latched (answered to the next call that waits); then the
  // capture ends, invalidated.
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  EXPECT_EQ(EndCapture(9).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
}

// The client goes away while a replay waits at a host node: the session
// opens the gate itself and frees everything (EndSession checks).
TEST_F(SessionGraphHostTest, DisconnectWhileAHostNodeHoldsAReplayFreesEverything) {
  CreateContext();
  CreateStream(kHeld);
  BuildGraph(Alloc(64), Alloc(64));
  Instantiate(50, 60);
  const uint64_t launch = LaunchWithHostNodes(60, kHeld, 2);
  ASSERT_EQ(client_->ReadWithin().seq, launch);
  client_->Send([&](wire::Call::Builder c) { OnStream(c.initStreamDestroy(), kHeld); }, false);
  client_->Send([&](wire::Call::Builder c) { c.setPing(); }, true);
  ASSERT_TRUE(SessionReadEverything());
}

// cuStreamBeginCaptureToGraph: the captured work joins an existing graph,
// after the nodes named; the graph cannot be destroyed meanwhile.
TEST_F(SessionGraphHostTest, ACaptureIntoAGraphAddsItsWorkAfterTheNodesNamed) {
  CreateContext();
  CreateStream(kHeld);
  const uint64_t a = Alloc(64);
  const uint64_t b = Alloc(64);
  client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(50); }, false);
  AddNode(50, 51, {}, [&](wire::GraphAddNode::Builder n) {
    auto m = n.initMemset();
    m.setCtx(100);
    m.setDst(a);
    m.setValue(0x11);
    m.setElementBytes(1);
    m.setWidth(64);
    m.setHeight(1);
  });
  auto begin_into = [&](uint64_t graph, uint64_t after) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto args = OnStream(c.initStreamBeginCapture(), kHeld);
          args.setMode(CU_STREAM_CAPTURE_MODE_GLOBAL);
          args.setGraph(graph);
          args.setToGraph(true);
          args.initDependencies(1).set(0, after);
        },
        false);
    return Ping();
  };
  EXPECT_EQ(begin_into(70, 51).cuda_result(), CUDA_ERROR_INVALID_HANDLE);  // no graph 70
  EXPECT_EQ(begin_into(50, 99).cuda_result(), CUDA_ERROR_INVALID_HANDLE);  // no node 99
  auto update = [&](uint64_t stream, uint64_t node, bool set) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto args = OnStream(c.initStreamUpdateCaptureDependencies(), stream);
          args.initDependencies(1).set(0, node);
          args.setSet(set);
        },
        false);
    return Ping();
  };
  EXPECT_EQ(update(kHeld, 51, false).cuda_result(), CUDA_ERROR_ILLEGAL_STATE);  // not capturing
  ASSERT_TRUE(begin_into(50, 51).ok());
  EXPECT_TRUE(update(kHeld, 51, false).ok());
  EXPECT_TRUE(update(kHeld, 51, true).ok());
  CopyDtoD(kHeld, b, a, 64);
  client_->Send([&](wire::Call::Builder c) { c.initGraphDestroy().setGraph(50); }, false);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_VALUE);  // being captured into
  ReplyResult ended = EndCapture(kHeld);
  ASSERT_TRUE(ended.status.ok()) << ended.status.ToString();
  ReplyResult count =
      client_->Call([&](wire::Call::Builder c) { c.initGraphNodeCount().setGraph(50); });
  EXPECT_EQ(count.value, 2);
  Instantiate(50, 60);
  Launch(60, kHeld);
  EXPECT_EQ(CopyOut(kHeld, b, 64).bulk, std::vector<uint8_t>(64, 0x11));
}

// cuGraphChildGraphNodeGetGraph: the node's own copy of the child, named by
// the client, takes edits that reach the node; the child stays as it was.
TEST_F(SessionGraphHostTest, AChildGraphNodesGraphTakesEditsThatReachTheNode) {
  CreateContext();
  CreateStream(kHeld);
  const uint64_t a = Alloc(64);
  const uint64_t b = Alloc(64);
  client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(30); }, false);
  AddNode(30, 31, {}, [&](wire::GraphAddNode::Builder n) {
    auto m = n.initMemset();
    m.setCtx(100);
    m.setDst(a);
    m.setValue(0x33);
    m.setElementBytes(1);
    m.setWidth(64);
    m.setHeight(1);
  });
  client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(40); }, false);
  AddNode(40, 41, {}, [](wire::GraphAddNode::Builder n) { n.setChildGraph(30); });
  auto get_graph = [&](uint64_t graph, std::initializer_list<uint64_t> nodes) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto args = c.initGraphChildGraphNodeGetGraph();
          args.setNode(41);
          args.setGraph(graph);
          auto list = args.initNodes(static_cast<unsigned>(nodes.size()));
          unsigned i = 0;
          for (uint64_t id : nodes) list.set(i++, id);
        },
        false);
    return Ping();
  };
  EXPECT_EQ(get_graph(45, {46, 47}).cuda_result(), CUDA_ERROR_INVALID_VALUE);  // one node only
  ASSERT_TRUE(get_graph(45, {46}).ok());
  EXPECT_EQ(get_graph(48, {}).cuda_result(), CUDA_ERROR_INVALID_VALUE);  // named already
  // An edit of the node's graph: a copy after the memset.
  AddNode(45, 47, {46}, [&](wire::GraphAddNode::Builder n) {
    auto m = n.initMemcpy();
    m.setCtx(100);
    m.setDst(b);
    m.setSrc(a);
    m.setBytes(64);
  });
  ASSERT_TRUE(Ping().ok());
  Instantiate(40, 60);
  Launch(60, kHeld);
  EXPECT_EQ(CopyOut(kHeld, b, 64).bulk, std::vector<uint8_t>(64, 0x33));
  ReplyResult count =
      client_->Call([&](wire::Call::Builder c) { c.initGraphNodeCount().setGraph(30); });
  EXPECT_EQ(count.value, 1);  // the child is as it was
  // What it cannot take, and cannot be.
  ReplyResult alloc = client_->Call([&](wire::Call::Builder c) {
    auto args = c.initGraphAddMemAllocNode();
    args.setGraph(45);
    args.setNode(49);
    args.setCtx(100);
    args.setBytes(4096);
  });
  EXPECT_EQ(alloc.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  AddNode(45, 49, {}, [](wire::GraphAddNode::Builder n) { n.setHost(5); });
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_NOT_SUPPORTED);
  client_->Send([&](wire::Call::Builder c) { c.initGraphDestroy().setGraph(45); }, false);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_VALUE);
  // It goes with its node's graph; the executable graph lives on.
  client_->Send([&](wire::Call::Builder c) { c.initGraphDestroy().setGraph(40); }, false);
  count = client_->Call([&](wire::Call::Builder c) { c.initGraphNodeCount().setGraph(45); });
  EXPECT_EQ(count.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  Fill(kHeld, b, 0, 64);
  Launch(60, kHeld);
  EXPECT_EQ(CopyOut(kHeld, b, 64).bulk, std::vector<uint8_t>(64, 0x33));
}

TEST_F(SessionGraphTest, CapturesSpanStreamsThroughEventsWithTheDriversRules) {
  CreateContext();
  CreateStream(5);
  CreateStream(6);
  CreateStream(7);
  CreateEvent(8);
  CreateEvent(9);
  const uint64_t a = Alloc(64);
  const uint64_t b = Alloc(64);
  auto wait = [&](uint64_t stream, uint64_t event) {
    client_->Send(
        [&](wire::Call::Builder c) { OnStream(c.initStreamWaitEvent(), stream).setEvent(event); },
        false);
  };
  // Fork 5 -> 6 and join back: one graph with both streams' work, in order.
  BeginCapture(5, 50);
  Fill(5, a, 0x11, 64);
  RecordEvent(5, 8);
  wait(6, 8);
  EXPECT_EQ(CaptureStatus(6).value, CU_STREAM_CAPTURE_STATUS_ACTIVE);
  CopyDtoD(6, b, a, 64);
  RecordEvent(6, 9);
  wait(5, 9);
  // Only the origin ends it: a joined stream gets UNMATCHED (invalidating it).
  EXPECT_EQ(EndCapture(6).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_UNMATCHED);
  EXPECT_EQ(EndCapture(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  EXPECT_EQ(CaptureStatus(6).value, CU_STREAM_CAPTURE_STATUS_NONE);
  // Again, ended properly.
  BeginCapture(5, 51);
  Fill(5, a, 0x22, 64);
  RecordEvent(5, 8);
  wait(6, 8);
  CopyDtoD(6, b, a, 64);
  RecordEvent(6, 9);
  wait(5, 9);
  ReplyResult ended = EndCapture(5);
  ASSERT_TRUE(ended.status.ok()) << ended.status.ToString();
  Instantiate(51, 61);
  Launch(61, 7);
  EXPECT_EQ(CopyOut(7, b, 64).bulk, std::vector<uint8_t>(64, 0x22));

  // Two captures cannot merge: waiting on the other capture's event.
  BeginCapture(5, 52);
  BeginCapture(6, 53);
  RecordEvent(6, 9);
  wait(5, 9);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_STREAM_CAPTURE_MERGE);
  EXPECT_EQ(EndCapture(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  EXPECT_EQ(EndCapture(6).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  // Nor wait on an event recorded outside any capture.
  RecordEvent(7, 9);
  BeginCapture(5, 54);
  wait(5, 9);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_STREAM_CAPTURE_ISOLATION);
  EXPECT_EQ(EndCapture(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  // A joined stream destroyed invalidates the capture; its origin ends it.
  BeginCapture(5, 55);
  RecordEvent(5, 8);
  wait(6, 8);
  client_->Send([&](wire::Call::Builder c) { OnStream(c.initStreamDestroy(), 6); }, false);
  EXPECT_EQ(EndCapture(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  // streamCaptureInvalidate (a call the capture mode forbade) invalidates.
  BeginCapture(5, 56);
  client_->Send([&](wire::Call::Builder c) { OnStream(c.initStreamCaptureInvalidate(), 5); },
                false);
  EXPECT_EQ(CaptureStatus(5).value, CU_STREAM_CAPTURE_STATUS_INVALIDATED);
  EXPECT_EQ(EndCapture(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  EXPECT_TRUE(Ping().ok());
}

TEST_F(SessionGraphTest, SynchronizingACapturingStreamInvalidatesTheCapture) {
  CreateContext();
  CreateStream(5);
  const uint64_t a = Alloc(64);
  BeginCapture(5, 50);
  Fill(5, a, 0x11, 64);
  EXPECT_EQ(Sync(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  EXPECT_EQ(CaptureStatus(5).value, CU_STREAM_CAPTURE_STATUS_INVALIDATED);
  // Later work on the stream fails (latched), and so does the end.
  Fill(5, a, 0x22, 64);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  EXPECT_EQ(EndCapture(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  EXPECT_EQ(CaptureStatus(5).value, CU_STREAM_CAPTURE_STATUS_NONE);
  Instantiate(50, 60);  // no graph was made
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  // Nothing recorded ever ran; the stream works normally again.
  EXPECT_EQ(CopyOut(5, a, 64).bulk, std::vector<uint8_t>(64, 0));
}

TEST_F(SessionGraphTest, CaptureRefusesHostCopiesQueriesAndContextSynchronize) {
  CreateContext();
  CreateStream(5);
  const uint64_t a = Alloc(64);
  BeginCapture(5, 50);
  EXPECT_EQ(CopyOut(5, a, 64).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  EXPECT_EQ(EndCapture(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  BeginCapture(5, 51);
  CopyIn(5, a, std::vector<uint8_t>(64, 7));
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  EXPECT_EQ(EndCapture(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  BeginCapture(5, 52);
  EXPECT_EQ(Query(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  EXPECT_EQ(EndCapture(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  // Stream-ordered frees are not recorded: refused inside a capture.
  BeginCapture(5, 57);
  client_->Send(
      [&](wire::Call::Builder c) {
        auto f = c.initMemFreeAsync();
        f.setCtx(100);
        f.setStream(5);
        f.setDptr(a);
      },
      false);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  EXPECT_EQ(EndCapture(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  BeginCapture(5, 53);
  EXPECT_EQ(client_->Call([&](wire::Call::Builder c) { c.initCtxSynchronize().setCtx(100); })
                .status.cuda_result(),
            CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  EXPECT_EQ(EndCapture(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  // The legacy stream cannot capture; a stream cannot capture twice; a stream
  // that does not capture cannot end a capture.
  BeginCapture(0, 54);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  BeginCapture(5, 55);
  BeginCapture(5, 56);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_ILLEGAL_STATE);
  EXPECT_TRUE(EndCapture(5).status.ok());
  EXPECT_EQ(EndCapture(5).status.cuda_result(), CUDA_ERROR_ILLEGAL_STATE);
  EXPECT_EQ(CopyOut(5, a, 64).bulk, std::vector<uint8_t>(64, 0));
}

// A framework that captures a host copy (refused, fire-and-forget) and then
// ends the capture gets the copy's error from the end: the capture must end
// all the same, or every later use of the stream fails.
TEST_F(SessionGraphTest, EndCaptureAnsweredByALatchedErrorStillEndsTheCapture) {
  CreateContext();
  CreateStream(5);
  const uint64_t a = Alloc(64);
  BeginCapture(5, 50);
  CopyIn(5, a, std::vector<uint8_t>(64, 7));
  EXPECT_EQ(EndCapture(5).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  EXPECT_EQ(CaptureStatus(5).value, CU_STREAM_CAPTURE_STATUS_NONE);
  EXPECT_TRUE(Sync(5).status.ok());
  Instantiate(50, 60);  // no graph was made
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  // The stream copies and captures again.
  CopyIn(5, a, std::vector<uint8_t>(64, 9));
  EXPECT_EQ(CopyOut(5, a, 64).bulk, std::vector<uint8_t>(64, 9));
  BeginCapture(5, 51);
  Fill(5, a, 0x33, 64);
  ReplyResult ended = EndCapture(5);
  ASSERT_TRUE(ended.status.ok()) << ended.status.ToString();
  // A latched error answering the end of another stream's capture leaves
  // this one alone.
  CreateStream(6);
  BeginCapture(5, 52);
  BeginCapture(6, 53);
  CopyIn(6, a, std::vector<uint8_t>(64, 1));
  EXPECT_EQ(EndCapture(6).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  EXPECT_EQ(CaptureStatus(5).value, CU_STREAM_CAPTURE_STATUS_ACTIVE);
  EXPECT_TRUE(EndCapture(5).status.ok());
}

TEST_F(SessionGraphTest, BadGraphHandlesAndFreedMemoryAreRefused) {
  CreateContext();
  CreateStream(5);
  Launch(999, 5);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  Instantiate(999, 60);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  client_->Send([&](wire::Call::Builder c) { c.initGraphDestroy().setGraph(999); }, false);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  client_->Send([&](wire::Call::Builder c) { c.initGraphExecDestroy().setExec(999); }, false);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(client_->Call([&](wire::Call::Builder c) { c.initGraphNodeCount().setGraph(999); })
                .status.cuda_result(),
            CUDA_ERROR_INVALID_HANDLE);
  // An empty graph launches and does nothing.
  client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(40); }, false);
  Instantiate(40, 41);
  Launch(41, 5);
  EXPECT_TRUE(Ping().ok());
  EXPECT_EQ(
      client_->Call([&](wire::Call::Builder c) { c.initGraphNodeCount().setGraph(40); }).value, 0);
  // A graph whose memory was freed is not replayed.
  const uint64_t a = Alloc(64);
  BeginCapture(5, 50);
  Fill(5, a, 0x11, 64);
  ASSERT_TRUE(EndCapture(5).status.ok());
  Instantiate(50, 60);
  client_->Send([&](wire::Call::Builder c) { c.initMemFree().setDptr(a); }, false);
  Launch(60, 5);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_VALUE);
  // A graph of one context does not launch on another's stream.
  CreateContext(200);
  const uint64_t b = Alloc(64);
  BeginCapture(5, 70);
  Fill(5, b, 0x11, 64);
  ASSERT_TRUE(EndCapture(5).status.ok());
  Instantiate(70, 71);
  client_->Send(
      [&](wire::Call::Builder c) {
        auto l = c.initGraphLaunch();
        l.setCtx(200);
        l.setStream(0);
        l.setExec(71);
      },
      false);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_CONTEXT);
}

TEST_F(SessionGraphTest, ExplicitNodesRunInDependencyOrderAndAreValidated) {
  CreateContext();
  CreateStream(5);
  const uint64_t a = Alloc(64);
  const uint64_t b = Alloc(64);
  client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(40); }, false);
  client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(90); }, false);
  auto add = [&](uint64_t graph, uint64_t node, std::vector<uint64_t> deps,
                 const std::function<void(wire::GraphAddNode::Builder)>& fill) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto n = c.initGraphAddNode();
          n.setGraph(graph);
          n.setNode(node);
          auto d = n.initDependencies(static_cast<unsigned>(deps.size()));
          for (size_t i = 0; i < deps.size(); ++i) d.set(static_cast<unsigned>(i), deps[i]);
          fill(n);
        },
        false);
  };
  add(40, 41, {}, [&](wire::GraphAddNode::Builder n) {
    auto m = n.initMemset();
    m.setCtx(100);
    m.setDst(a);
    m.setValue(0x11);
    m.setElementBytes(1);
    m.setWidth(64);
    m.setHeight(1);
  });
  add(40, 42, {41}, [&](wire::GraphAddNode::Builder n) {
    auto m = n.initMemcpy();
    m.setCtx(100);
    m.setDst(b);
    m.setSrc(a);
    m.setBytes(64);
  });
  add(40, 43, {41, 42}, [&](wire::GraphAddNode::Builder n) { n.setEmpty(); });
  EXPECT_TRUE(Ping().ok());
  EXPECT_EQ(
      client_->Call([&](wire::Call::Builder c) { c.initGraphNodeCount().setGraph(40); }).value, 3);
  Instantiate(40, 60);
  Launch(60, 5);
  ReplyResult out = CopyOut(5, b, 64);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.bulk, std::vector<uint8_t>(64, 0x11));
  // A dependency of another graph, an unknown one, a range outside the
  // session, a node id in use.
  add(90, 91, {41}, [&](wire::GraphAddNode::Builder n) { n.setEmpty(); });
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_VALUE);
  add(90, 92, {777}, [&](wire::GraphAddNode::Builder n) { n.setEmpty(); });
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  add(90, 93, {}, [&](wire::GraphAddNode::Builder n) {
    auto m = n.initMemcpy();
    m.setCtx(100);
    m.setDst(b + 32);
    m.setSrc(a);
    m.setBytes(64);
  });
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_VALUE);
  add(90, 41, {}, [&](wire::GraphAddNode::Builder n) { n.setEmpty(); });
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_VALUE);
  add(999, 94, {}, [&](wire::GraphAddNode::Builder n) { n.setEmpty(); });
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_HANDLE);
}

// An executable graph outlives the graph it was made from, but once that
// graph is gone its nodes can no longer be named: a new graph that reuses the
// id must not reach the executable graph through its own nodes.
// graph node kinds: event record and wait nodes record and wait at each
// launch like the stream calls; an executable graph's node can be pointed at
// another event; a launch into a capture, a child graph with event nodes and
// a launch whose event was destroyed are refused, and the session goes on.
TEST_F(SessionGraphTest, EventNodesRecordAtEachLaunchAndTheirEventsAreCheckedEachTime) {
  CreateContext();
  CreateStream(5);
  CreateStream(6);
  CreateEvent(8);
  CreateEvent(9);
  auto add_event_node = [&](uint64_t graph, uint64_t node, uint64_t event, bool wait,
                            std::vector<uint64_t> deps) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = c.initGraphAddEventNode();
          a.setGraph(graph);
          a.setNode(node);
          auto list = a.initDependencies(static_cast<unsigned>(deps.size()));
          for (size_t i = 0; i < deps.size(); ++i) list.set(static_cast<unsigned>(i), deps[i]);
          a.setEvent(event);
          a.setWait(wait);
        },
        false);
    return Ping();
  };
  // Elapsed time needs both events recorded (and reached).
  auto elapsed = [&](uint64_t start, uint64_t end) {
    return client_
        ->Call([&](wire::Call::Builder c) {
          auto a = c.initEventElapsedTime();
          a.setStart(start);
          a.setEnd(end);
        })
        .status;
  };
  auto sync = [&](uint64_t stream) {
    return client_
        ->Call([&](wire::Call::Builder c) { OnStream(c.initStreamSynchronize(), stream); })
        .status;
  };
  client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(50); }, false);
  ASSERT_TRUE(add_event_node(50, 51, 8, false, {}).ok());
  ASSERT_TRUE(add_event_node(50, 52, 9, true, {51}).ok());
  EXPECT_EQ(add_event_node(50, 53, 0x7777, false, {}).cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  Instantiate(50, 60);
  EXPECT_FALSE(elapsed(8, 8).ok()) << "event 8 is not recorded yet";
  Launch(60, 5);
  ASSERT_TRUE(sync(5).ok());
  EXPECT_TRUE(elapsed(8, 8).ok()) << "the record node recorded event 8";
  EXPECT_FALSE(elapsed(8, 9).ok()) << "the wait node records nothing";
  // Node 51 records event 9 in the executable graph from now on.
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = c.initGraphExecEventNodeSetEvent();
        a.setExec(60);
        a.setNode(51);
        a.setEvent(9);
      },
      false);
  ASSERT_TRUE(Ping().ok());
  Launch(60, 5);
  ASSERT_TRUE(sync(5).ok());
  EXPECT_TRUE(elapsed(8, 9).ok());
  // Not into a capture, not as a child.
  BeginCapture(6, 70);
  Launch(60, 6);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  EXPECT_EQ(EndCapture(6).status.cuda_result(), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(80); }, false);
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = c.initGraphAddNode();
        a.setGraph(80);
        a.setNode(81);
        a.setChildGraph(50);
      },
      false);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_NOT_SUPPORTED);
  // Its event destroyed, the executable graph is refused.
  client_->Send([&](wire::Call::Builder c) { c.initEventDestroy().setEvent(9); }, false);
  Launch(60, 5);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  client_->Send([&](wire::Call::Builder c) { c.initGraphExecDestroy().setExec(60); }, false);
  EXPECT_TRUE(Ping().ok());
}

TEST_F(SessionGraphTest, ANewGraphWithADestroyedGraphsIdCannotUpdateItsExecutableGraph) {
  CreateContext();
  CreateStream(5);
  const uint64_t a = Alloc(64);
  auto memset_graph = [&](uint64_t node, uint8_t value) {
    client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(40); }, false);
    client_->Send(
        [&](wire::Call::Builder c) {
          auto n = c.initGraphAddNode();
          n.setGraph(40);
          n.setNode(node);
          auto m = n.initMemset();
          m.setCtx(100);
          m.setDst(a);
          m.setValue(value);
          m.setElementBytes(1);
          m.setWidth(64);
          m.setHeight(1);
        },
        false);
  };
  auto set_enabled = [&](uint64_t node, bool enabled) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto e = c.initGraphExecNodeSetEnabled();
          e.setExec(60);
          e.setNode(node);
          e.setEnabled(enabled);
        },
        false);
    return Ping();
  };
  memset_graph(41, 0x22);
  Instantiate(40, 60);
  ASSERT_TRUE(set_enabled(41, true).ok());  // its own node, while its graph lives
  client_->Send([&](wire::Call::Builder c) { c.initGraphDestroy().setGraph(40); }, false);
  memset_graph(44, 0x33);
  EXPECT_EQ(set_enabled(44, false).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  // The executable graph still runs its own memset.
  Launch(60, 5);
  const ReplyResult out = CopyOut(5, a, 64);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.bulk, std::vector<uint8_t>(64, 0x22));
}

// Explicit-graph editing: edges added after the nodes decide their order;
// a node's uses are those of its current work, in the graph and in each
// executable graph, so memory its old work touched may be freed.
TEST_F(SessionGraphTest, EditedEdgesOrderNodesAndANodesUsesFollowItsWork) {
  CreateContext();
  CreateStream(5);
  const uint64_t a = Alloc(64);
  const uint64_t b = Alloc(64);
  const uint64_t c = Alloc(64);
  client_->Send([&](wire::Call::Builder call) { call.initGraphCreate().setGraph(40); }, false);
  client_->Send([&](wire::Call::Builder call) { call.initGraphCreate().setGraph(90); }, false);
  auto copy = [](auto m, uint64_t dst, uint64_t src) {
    m.setCtx(100);
    m.setDst(dst);
    m.setSrc(src);
    m.setBytes(64);
  };
  auto set = [](auto m, uint64_t dst, uint8_t value) {
    m.setCtx(100);
    m.setDst(dst);
    m.setValue(value);
    m.setElementBytes(1);
    m.setWidth(64);
    m.setHeight(1);
  };
  auto add = [&](uint64_t graph, uint64_t node, auto fill) {
    client_->Send(
        [&](wire::Call::Builder call) {
          auto n = call.initGraphAddNode();
          n.setGraph(graph);
          n.setNode(node);
          fill(n);
        },
        false);
  };
  auto edges = [&](uint64_t graph, uint64_t from, uint64_t to, bool remove) {
    client_->Send(
        [&](wire::Call::Builder call) {
          auto e = call.initGraphEditEdges();
          e.setGraph(graph);
          e.initFrom(1).set(0, from);
          e.initTo(1).set(0, to);
          e.setRemove(remove);
        },
        false);
    return Ping();
  };
  // Added as "b = a; a = 0x11", ordered by an edge as "a = 0x11; b = a".
  add(40, 41, [&](wire::GraphAddNode::Builder n) { copy(n.initMemcpy(), b, a); });
  add(40, 42, [&](wire::GraphAddNode::Builder n) { set(n.initMemset(), a, 0x11); });
  add(90, 91, [&](wire::GraphAddNode::Builder n) { n.setEmpty(); });
  ASSERT_TRUE(edges(40, 42, 41, false).ok());
  EXPECT_EQ(edges(40, 42, 41, false).cuda_result(), CUDA_ERROR_INVALID_VALUE);  // twice
  EXPECT_EQ(edges(40, 41, 42, true).cuda_result(), CUDA_ERROR_INVALID_VALUE);   // absent
  EXPECT_EQ(edges(40, 91, 41, false).cuda_result(), CUDA_ERROR_INVALID_VALUE);  // other graph
  EXPECT_EQ(edges(40, 41, 41, false).cuda_result(), CUDA_ERROR_INVALID_VALUE);  // self
  EXPECT_EQ(edges(999, 42, 41, false).cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  // A cycle is refused at instantiation.
  ASSERT_TRUE(edges(40, 41, 42, false).ok());
  Instantiate(40, 59);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_VALUE);
  ASSERT_TRUE(edges(40, 41, 42, true).ok());
  Instantiate(40, 60);
  Launch(60, 5);
  ReplyResult out = CopyOut(5, b, 64);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.bulk, std::vector<uint8_t>(64, 0x11));

  // The graph's memset now fills c (later instantiations run that), and the
  // executable graph's copy reads c: nothing uses a any more, which is freed.
  auto set_params = [&](uint64_t exec, uint64_t node, auto fill) {
    client_->Send(
        [&](wire::Call::Builder call) {
          auto p = call.initGraphNodeSetParams();
          p.setExec(exec);
          p.setNode(node);
          fill(p);
        },
        false);
    return Ping();
  };
  ASSERT_TRUE(set_params(0, 42, [&](auto p) { set(p.initMemset(), c, 0x22); }).ok());
  ASSERT_TRUE(set_params(0, 41, [&](auto p) { copy(p.initMemcpy(), b, c); }).ok());
  ASSERT_TRUE(set_params(60, 42, [&](auto p) { set(p.initMemset(), c, 0x33); }).ok());
  ASSERT_TRUE(set_params(60, 41, [&](auto p) { copy(p.initMemcpy(), b, c); }).ok());
  // Refused: another kind than the node's, another context, a node of
  // another graph, a child graph set in a graph.
  EXPECT_EQ(set_params(0, 41, [&](auto p) { set(p.initMemset(), c, 1); }).cuda_result(),
            CUDA_ERROR_INVALID_VALUE);
  CreateContext(200);
  const uint64_t other_ctx = Alloc(64, 200);
  EXPECT_EQ(set_params(60, 42,
                       [&](auto p) {
                         set(p.initMemset(), other_ctx, 1);
                         p.getMemset().setCtx(200);
                       })
                .cuda_result(),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(set_params(60, 91, [&](auto p) { set(p.initMemset(), c, 1); }).cuda_result(),
            CUDA_ERROR_INVALID_VALUE);
  client_->Send([&](wire::Call::Builder call) { call.initMemFree().setDptr(a); }, false);
  Launch(60, 5);
  out = CopyOut(5, b, 64);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.bulk, std::vector<uint8_t>(64, 0x33));
  Instantiate(40, 61);
  Launch(61, 5);
  out = CopyOut(5, b, 64);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.bulk, std::vector<uint8_t>(64, 0x22));

  // A destroyed node takes its work and uses along: with the copy destroyed
  // the memset still uses c, so once c is freed the graph is refused; with
  // the memset destroyed too, it is empty and launches.
  client_->Send([&](wire::Call::Builder call) { call.initGraphDestroyNode().setNode(41); }, false);
  EXPECT_TRUE(Ping().ok());
  EXPECT_EQ(client_->Call([&](wire::Call::Builder call) { call.initGraphNodeCount().setGraph(40); })
                .value,
            1);
  client_->Send([&](wire::Call::Builder call) { call.initGraphDestroyNode().setNode(41); }, false);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  client_->Send([&](wire::Call::Builder call) { call.initMemFree().setDptr(c); }, false);
  Instantiate(40, 62);
  Launch(62, 5);
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_VALUE);
  client_->Send([&](wire::Call::Builder call) { call.initGraphDestroyNode().setNode(42); }, false);
  Instantiate(40, 63);
  Launch(63, 5);
  EXPECT_TRUE(Ping().ok());
}

// A clone whose nodes the client named (cuGraphNodeFindInClone): each copy
// is a node of the clone, changed apart from its original.
TEST_F(SessionGraphTest, AClonesNamedNodesChangeApartFromTheirOriginals) {
  CreateContext();
  CreateStream(5);
  const uint64_t a = Alloc(64);
  const uint64_t b = Alloc(64);
  client_->Send([&](wire::Call::Builder call) { call.initGraphCreate().setGraph(40); }, false);
  auto set = [](auto m, uint64_t dst, uint8_t value) {
    m.setCtx(100);
    m.setDst(dst);
    m.setValue(value);
    m.setElementBytes(1);
    m.setWidth(64);
    m.setHeight(1);
  };
  client_->Send(
      [&](wire::Call::Builder call) {
        auto n = call.initGraphAddNode();
        n.setGraph(40);
        n.setNode(41);
        set(n.initMemset(), a, 0x11);
      },
      false);
  auto clone = [&](uint64_t id, std::vector<uint64_t> originals, std::vector<uint64_t> copies) {
    client_->Send(
        [&](wire::Call::Builder call) {
          auto c = call.initGraphClone();
          c.setGraph(40);
          c.setClone(id);
          auto o = c.initOriginals(static_cast<unsigned>(originals.size()));
          auto k = c.initCopies(static_cast<unsigned>(copies.size()));
          for (unsigned i = 0; i < originals.size(); ++i) o.set(i, originals[i]);
          for (unsigned i = 0; i < copies.size(); ++i) k.set(i, copies[i]);
        },
        false);
    return Ping();
  };
  // Refused: a copy for a node not of the graph, a copy id in use, two
  // copies named for one node.
  EXPECT_EQ(clone(50, {999}, {51}).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(clone(50, {41}, {41}).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(clone(50, {41, 41}, {51, 52}).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  ASSERT_TRUE(clone(50, {41}, {51}).ok());
  client_->Send(
      [&](wire::Call::Builder call) {
        auto p = call.initGraphNodeSetParams();
        p.setNode(51);
        set(p.initMemset(), b, 0x22);
      },
      false);
  ASSERT_TRUE(Ping().ok());
  Instantiate(40, 60);
  Instantiate(50, 61);
  Launch(60, 5);
  Launch(61, 5);
  EXPECT_EQ(CopyOut(5, a, 64).bulk, std::vector<uint8_t>(64, 0x11));
  EXPECT_EQ(CopyOut(5, b, 64).bulk, std::vector<uint8_t>(64, 0x22));
  // The clone's node uses b only: a freed, the clone still launches.
  client_->Send([&](wire::Call::Builder call) { call.initMemFree().setDptr(a); }, false);
  Launch(61, 5);
  EXPECT_TRUE(Ping().ok());
}

// Peers: two host devices, a context on each.
class SessionPeerTest : public SessionTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(test::CreateTestHostBackend(64 << 20, &backend_, 2).ok());
    StartSession();
    CreateContext(100);
    auto r = client_->Call([&](wire::Call::Builder c) {
      auto a = c.initCtxCreate();
      a.setCtx(200);
      a.setDevice(1);
    });
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  }
  // A call that does not wait, then a ping: the ping reports its error.
  Status PostThenPing(const std::function<void(wire::Call::Builder)>& fill) {
    client_->Send(fill, false);
    return client_->Call([](wire::Call::Builder c) { c.setPing(); }).status;
  }
  Status CopyPeer(uint64_t dst, uint64_t dst_ctx, uint64_t src, uint64_t src_ctx, uint64_t bytes,
                  bool synchronous = true) {
    return PostThenPing([&](wire::Call::Builder c) {
      auto a = c.initMemcpyPeer();
      a.setCtx(100);
      a.setDst(dst);
      a.setDstCtx(dst_ctx);
      a.setSrc(src);
      a.setSrcCtx(src_ctx);
      a.setBytes(bytes);
      a.setSynchronous(synchronous);
    });
  }
  Status PeerAccess(bool enable, uint64_t ctx, uint64_t peer, unsigned flags = 0) {
    return PostThenPing([&](wire::Call::Builder c) {
      auto a = enable ? c.initCtxEnablePeerAccess() : c.initCtxDisablePeerAccess();
      a.setCtx(ctx);
      a.setPeer(peer);
      a.setFlags(flags);
    });
  }
};

TEST_F(SessionPeerTest, CanAccessPeerAndP2PAttributesForTheSessionsDevicesOnly) {
  auto ask = [&](bool attribute, int device, int peer) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = attribute ? c.initDeviceGetP2PAttribute() : c.initDeviceCanAccessPeer();
      a.setDevice(device);
      a.setPeer(peer);
      a.setAttribute(CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED);
    });
  };
  ReplyResult r = ask(false, 0, 1);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.value, 1);
  r = ask(false, 1, 1);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.value, 0);
  EXPECT_EQ(ask(false, 0, 2).status.cuda_result(), CUDA_ERROR_INVALID_DEVICE);
  EXPECT_EQ(ask(false, -1, 0).status.cuda_result(), CUDA_ERROR_INVALID_DEVICE);
  r = ask(true, 1, 0);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.value, 1);
  EXPECT_EQ(ask(true, 0, 0).status.cuda_result(), CUDA_ERROR_INVALID_DEVICE);
  EXPECT_EQ(ask(true, 0, 5).status.cuda_result(), CUDA_ERROR_INVALID_DEVICE);
}

TEST_F(SessionPeerTest, PeerAccessStateIsPerContextPairWithTheDriversErrors) {
  EXPECT_EQ(PeerAccess(false, 100, 200).cuda_result(), CUDA_ERROR_PEER_ACCESS_NOT_ENABLED);
  EXPECT_EQ(PeerAccess(true, 100, 200, 1).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(PeerAccess(true, 100, 100).cuda_result(), CUDA_ERROR_PEER_ACCESS_UNSUPPORTED);
  EXPECT_EQ(PeerAccess(true, 100, 999).cuda_result(), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_TRUE(PeerAccess(true, 100, 200).ok());
  EXPECT_EQ(PeerAccess(true, 100, 200).cuda_result(), CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED);
  EXPECT_TRUE(PeerAccess(true, 200, 100).ok());  // the other direction is its own
  EXPECT_TRUE(PeerAccess(false, 100, 200).ok());
  EXPECT_EQ(PeerAccess(false, 100, 200).cuda_result(), CUDA_ERROR_PEER_ACCESS_NOT_ENABLED);
  EXPECT_TRUE(PeerAccess(true, 100, 200).ok());
  // Destroying a context forgets its pairs.
  EXPECT_TRUE(PostThenPing([](wire::Call::Builder c) { c.initCtxDestroy().setCtx(200); }).ok());
  auto r = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initCtxCreate();
    a.setCtx(200);
    a.setDevice(1);
  });
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_TRUE(PeerAccess(true, 100, 200).ok());
}

TEST_F(SessionPeerTest, CopiesBetweenDevicesCheckBothRangesAgainstTheirContextsDevices) {
  const uint64_t a0 = Alloc(4096, 100);
  const uint64_t a1 = Alloc(4096, 200);
  std::vector<uint8_t> data(4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  CopyIn(0, a0, data);
  ASSERT_TRUE(CopyPeer(a1, 200, a0, 100, 4096).ok());
  ASSERT_TRUE(CopyPeer(a0 + 2048, 100, a1, 200, 2048, /*synchronous=*/false).ok());
  ReplyResult out = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemcpyDtoH();
    a.setCtx(200);
    a.setSrc(a1);
    a.setBytes(4096);
  });
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.bulk, data);
  out = CopyOut(0, a0 + 2048, 2048);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.bulk, std::vector<uint8_t>(data.begin(), data.begin() + 2048));

  // Outside the allocations, past their ends, on the wrong device, or with
  // an unknown context: refused, and nothing is copied.
  EXPECT_EQ(CopyPeer(a1, 200, a0 + 4000, 100, 200).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(CopyPeer(a1 + 4000, 200, a0, 100, 200).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(CopyPeer(0x1000, 200, a0, 100, 16).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(CopyPeer(a1, 100, a0, 100, 16).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(CopyPeer(a1, 200, a0, 200, 16).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(CopyPeer(a1, 999, a0, 100, 16).cuda_result(), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(CopyPeer(a1, 200, a0, 100, ~0ull).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  // Device 0 to device 0 is a copy within it.
  ASSERT_TRUE(CopyPeer(a0 + 2048, 100, a0, 100, 2048).ok());
  out = CopyOut(0, a0 + 2048, 2048);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.bulk, std::vector<uint8_t>(data.begin(), data.begin() + 2048));
}

class SessionLibraryTest : public SessionTest {
 protected:
  // Ends the session and starts a new one on a backend that also runs the
  // tiny library's kernel (a capture records it, a launch runs it).
  void RestartWithTinyLibraryKernels() {
    EndSession();
    backend::HostBackendOptions options;
    options.device_memory = 64 << 20;
    options.kernel_libraries = {SESSION_TEST_HOST_KERNELS};
    ASSERT_TRUE(backend::CreateHostBackend(options, &backend_).ok());
    StartSession();
  }
  ReplyResult LoadLibrary(uint64_t library) {
    return client_->Call([&](wire::Call::Builder c) { c.initLibraryLoad().setLibrary(library); },
                         test::TinyLibraryImage());
  }
  // The library's module in `ctx` and its kernel as `function`, posted
  // without replies as the client does; a ping reports any error.
  Status LoadIntoContext(uint64_t library, uint64_t ctx, uint64_t module, uint64_t function) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = c.initLibraryLoadModule();
          a.setLibrary(library);
          a.setCtx(ctx);
          a.setModule(module);
        },
        false);
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = c.initModuleGetFunction();
          a.setModule(module);
          a.setFunction(function);
          a.setName("k");
        },
        false);
    return client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status;
  }
  ReplyResult Global(uint64_t module) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = c.initModuleGetGlobal();
      a.setModule(module);
      a.setName("counter");
    });
  }
};

// A graph keeps the modules of its kernels in view: once the library behind a
// captured kernel is unloaded, launching the graph is refused instead of
// handing the backend a function of an unloaded module.
TEST_F(SessionLibraryTest, AGraphWhoseKernelsModuleIsUnloadedIsRefused) {
  ASSERT_NO_FATAL_FAILURE(RestartWithTinyLibraryKernels());
  CreateContext();
  CreateStream(5);
  ASSERT_TRUE(LoadLibrary(600).status.ok());
  ASSERT_TRUE(LoadIntoContext(600, 100, 400, 500).ok());
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = test::OnStream(c.initStreamBeginCapture(), 5);
        a.setMode(CU_STREAM_CAPTURE_MODE_GLOBAL);
        a.setGraph(60);
      },
      false);
  const std::vector<uint8_t> params(12, 0);
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = test::OnStream(c.initLaunch(), 5);
        a.setFunction(500);
        a.setGridX(1);
        a.setGridY(1);
        a.setGridZ(1);
        a.setBlockX(1);
        a.setBlockY(1);
        a.setBlockZ(1);
      },
      false, params);
  const Status ended =
      client_->Call([&](wire::Call::Builder c) { test::OnStream(c.initStreamEndCapture(), 5); })
          .status;
  ASSERT_TRUE(ended.ok()) << ended.ToString();
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = c.initGraphInstantiate();
        a.setGraph(60);
        a.setExec(61);
      },
      false);
  client_->Send([&](wire::Call::Builder c) { c.initLibraryUnload().setLibrary(600); }, false);
  client_->Send([&](wire::Call::Builder c) { test::OnStream(c.initGraphLaunch(), 5).setExec(61); },
                false);
  const Status launched = client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status;
  EXPECT_EQ(launched.cuda_result(), CUDA_ERROR_INVALID_HANDLE) << launched.ToString();
  client_->Send([&](wire::Call::Builder c) { c.initGraphExecDestroy().setExec(61); }, false);
  client_->Send([&](wire::Call::Builder c) { c.initGraphDestroy().setGraph(60); }, false);
  client_->Send([&](wire::Call::Builder c) { c.initCtxDestroy().setCtx(100); }, false);
  ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
}

// Every handle and device-range field that a call's description names in the
// schema ($handles, $ranges) is validated by its handler. For each such field
// the call is sent with that field alone holding something this session does
// not own; handle fields of kinds the test can make hold this session's
// objects, range fields its allocation, and other integer fields 4 (sizes,
// counts, flags), so the error is the field's own: INVALID_HANDLE (or
// INVALID_CONTEXT) for a handle, INVALID_VALUE for a range. Each call is sent
// the way its description says the client sends it (a call that always waits
// wants a reply; the others are posted, and a ping reports the latched error),
// and the session keeps working after each.
TEST_F(SessionLibraryTest, EveryDescribedHandleAndRangeIsValidated) {
  constexpr uint64_t kUnknownId = 0x7777;
  constexpr uint64_t kForeignAddress = 0x10;
  CreateContext();
  const uint64_t buffer = Alloc(4096);
  CreateStream(200);
  for (uint64_t event : {300, 301}) {
    CreateEvent(event);
  }
  ASSERT_TRUE(LoadLibrary(600).status.ok());
  ASSERT_TRUE(LoadIntoContext(600, 100, 400, 500).ok());
  ASSERT_TRUE(CreatePhysicalMemory(700, PageSize()).status.ok());  // virtual memory management
  // CUDA arrays, textures and surfaces: an array and a mipmapped array.
  for (auto [array, levels] : {std::pair{800, 0u}, std::pair{801, 2u}}) {
    ASSERT_TRUE(CreateArray(array, 64, 64, 0, levels).status.ok());
  }
  const std::map<std::string, uint64_t> valid = {
      {"ctx", 100},    {"dstCtx", 100},   {"srcCtx", 100},   {"peer", 100},
      {"stream", 200}, {"event", 300},    {"start", 300},    {"end", 301},
      {"module", 400}, {"function", 500}, {"library", 600},  {"handle", 700},
      {"array", 800},  {"srcArray", 800}, {"dstArray", 800}, {"mipmappedArray", 801}};
  auto split = [](const char* list) {
    std::vector<std::string> names;
    for (std::string_view rest = list; !rest.empty();) {
      const size_t comma = rest.find(',');
      names.emplace_back(rest.substr(0, comma));
      rest = comma == std::string_view::npos ? "" : rest.substr(comma + 1);
    }
    return names;
  };
  int checked = 0;
  for (const wire::CallDescription& description : wire::kCallDescriptions) {
    const std::vector<std::string> handles = split(description.handles);
    const std::vector<std::string> ranges = split(description.ranges);
    auto contains = [](const std::vector<std::string>& names, const std::string& name) {
      return std::find(names.begin(), names.end(), name) != names.end();
    };
    const wire::CallWaits waits = wire::kCallWaits[&description - wire::kCallDescriptions];
    const bool wants_reply = waits == wire::CallWaits::kAlways;
    auto send_with_bad = [&](const std::string& bad) {
      const uint64_t seq = client_->Send(
          [&](wire::Call::Builder c) {
            capnp::DynamicStruct::Builder call = capnp::toDynamic(c);
            auto args = call.init(call.getSchema().getFieldByName(description.name))
                            .as<capnp::DynamicStruct>();
            for (capnp::StructSchema::Field field : args.getSchema().getFields()) {
              const std::string name = field.getProto().getName();
              const capnp::Type type = field.getType();
              if (!(type.isUInt8() || type.isUInt16() || type.isUInt32() || type.isUInt64() ||
                    type.isInt32() || type.isInt64())) {
                continue;
              }
              uint64_t value = 4;
              if (contains(handles, name)) {
                auto it = valid.find(name);
                value = name == bad || it == valid.end() ? kUnknownId : it->second;
              } else if (contains(ranges, name)) {
                value = name == bad ? kForeignAddress : buffer;
              }
              args.set(name, value);
            }
          },
          wants_reply);
      if (wants_reply) {
        const ReplyResult reply = client_->ReadWithin();
        EXPECT_EQ(reply.seq, seq);
        return reply.status;
      }
      if (waits == wire::CallWaits::kGate) {
        // A refused gate is answered at once, and its error is latched too.
        const ReplyResult refused = client_->ReadWithin();
        EXPECT_EQ(refused.seq, seq);
        EXPECT_EQ(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.cuda_result(),
                  refused.status.cuda_result());
        return refused.status;
      }
      return client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status;
    };
    for (const std::string& handle : handles) {
      const Status status = send_with_bad(handle);
      EXPECT_TRUE(status.cuda_result() == CUDA_ERROR_INVALID_HANDLE ||
                  status.cuda_result() == CUDA_ERROR_INVALID_CONTEXT)
          << description.name << "." << handle << ": " << status.ToString();
      ++checked;
    }
    for (const std::string& range : ranges) {
      const Status status = send_with_bad(range);
      EXPECT_EQ(status.cuda_result(), CUDA_ERROR_INVALID_VALUE)
          << description.name << "." << range << ": " << status.ToString();
      ++checked;
    }
    ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok())
        << "the session stopped working after " << description.name;
  }
  EXPECT_GT(checked, 40);
  // Leave nothing behind for EndSession's check.
  client_->Send([&](wire::Call::Builder c) { c.initLibraryUnload().setLibrary(600); }, false);
  client_->Send([&](wire::Call::Builder c) { c.initCtxDestroy().setCtx(100); }, false);
  ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
}

TEST_F(SessionLibraryTest, LoadsOnceAndGivesEachContextItsOwnModule) {
  CreateContext(100);
  CreateContext(200);
  ReplyResult loaded = LoadLibrary(7);
  ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
  EXPECT_EQ(loaded.kernels, std::vector<std::string>{"k"});
  EXPECT_EQ(session_->Info().modules, 0u);  // no context has it yet
  ASSERT_TRUE(LoadIntoContext(7, 100, 11, 12).ok());
  ASSERT_TRUE(LoadIntoContext(7, 200, 21, 22).ok());
  EXPECT_EQ(session_->Info().modules, 2u);
  ReplyResult first = Global(11);
  ReplyResult second = Global(21);
  ASSERT_TRUE(first.status.ok() && second.status.ok());
  EXPECT_EQ(first.bytes, 8u);
  EXPECT_NE(first.dptr, second.dptr) << "two contexts share one copy of the global";
  // The global is a range the session may copy to.
  std::vector<uint8_t> bytes(8, 0x5A);
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = c.initMemcpyHtoD();
        a.setCtx(200);
        a.setDst(second.dptr);
        a.setBytes(8);
      },
      false, bytes);
  auto back = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemcpyDtoH();
    a.setCtx(200);
    a.setSrc(second.dptr);
    a.setBytes(8);
  });
  ASSERT_TRUE(back.status.ok()) << back.status.ToString();
  EXPECT_EQ(back.bulk, bytes);
}

TEST_F(SessionLibraryTest, RefusesBadIdsAndASecondModuleInOneContext) {
  CreateContext(100);
  EXPECT_EQ(client_
                ->Call([&](wire::Call::Builder c) { c.initLibraryLoad().setLibrary(0); },
                       test::TinyLibraryImage())
                .status.cuda_result(),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(LoadLibrary(7).status.cuda_result(), CUDA_SUCCESS);
  EXPECT_EQ(LoadLibrary(7).status.cuda_result(), CUDA_ERROR_INVALID_VALUE);  // id in use
  EXPECT_EQ(client_->Call([&](wire::Call::Builder c) { c.initLibraryLoad().setLibrary(8); })
                .status.cuda_result(),
            CUDA_ERROR_INVALID_IMAGE);  // no image
  const std::vector<uint8_t> junk(64, 0x42);
  EXPECT_NE(client_->Call([&](wire::Call::Builder c) { c.initLibraryLoad().setLibrary(9); }, junk)
                .status.cuda_result(),
            CUDA_SUCCESS);
  EXPECT_EQ(LoadIntoContext(99, 100, 11, 12).cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(LoadIntoContext(7, 555, 11, 12).cuda_result(), CUDA_ERROR_INVALID_CONTEXT);
  ASSERT_TRUE(LoadIntoContext(7, 100, 11, 12).ok());
  EXPECT_EQ(LoadIntoContext(7, 100, 13, 14).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  // A library's module is unloaded with the library, not on its own.
  auto unload = client_->Call([&](wire::Call::Builder c) { c.initModuleUnload().setModule(11); });
  EXPECT_EQ(unload.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(client_->Call([&](wire::Call::Builder c) { c.initLibraryUnload().setLibrary(42); })
                .status.cuda_result(),
            CUDA_ERROR_INVALID_HANDLE);
}

TEST_F(SessionLibraryTest, UnloadAndContextDestructionDropTheRightModules) {
  CreateContext(100);
  CreateContext(200);
  ASSERT_TRUE(LoadLibrary(7).status.ok());
  ASSERT_TRUE(LoadIntoContext(7, 100, 11, 12).ok());
  ASSERT_TRUE(LoadIntoContext(7, 200, 21, 22).ok());
  const uint64_t global_in_200 = Global(21).dptr;
  // Destroying context 200 drops the library's module there, not the library.
  client_->Send([&](wire::Call::Builder c) { c.initCtxDestroy().setCtx(200); }, false);
  ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
  EXPECT_EQ(session_->Info().modules, 1u);
  EXPECT_EQ(Global(21).status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  auto stale = CopyOut(0, global_in_200, 8);
  EXPECT_EQ(stale.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  CreateContext(300);
  ASSERT_TRUE(LoadIntoContext(7, 300, 31, 32).ok());
  // Unloading the library drops its modules and functions everywhere.
  client_->Send([&](wire::Call::Builder c) { c.initLibraryUnload().setLibrary(7); }, false);
  ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
  EXPECT_EQ(session_->Info().modules, 0u);
  EXPECT_EQ(client_->Call([&](wire::Call::Builder c) { c.initFuncGetAttribute().setFunction(12); })
                .status.cuda_result(),
            CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(LoadIntoContext(7, 100, 41, 42).cuda_result(), CUDA_ERROR_INVALID_HANDLE);
}

TEST_F(SessionLibraryTest, EndingTheSessionFreesLibraries) {
  CreateContext(100);
  ASSERT_TRUE(LoadLibrary(7).status.ok());
  ASSERT_TRUE(LoadLibrary(8).status.ok());
  ASSERT_TRUE(LoadIntoContext(7, 100, 11, 12).ok());
  // EndSession (TearDown) checks that nothing is left.
}

TEST_F(SessionLibraryTest, OccupancyQueriesAnswerPerBlockSize) {
  CreateContext(100);
  ASSERT_TRUE(LoadLibrary(7).status.ok());
  ASSERT_TRUE(LoadIntoContext(7, 100, 11, 12).ok());
  auto blocks = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initOccupancyMaxActiveBlocks();
    a.setFunction(12);
    auto sizes = a.initBlockSizes(3);
    auto smem = a.initDynamicSmemBytes(3);
    sizes.set(0, 1024);
    sizes.set(1, 128);
    sizes.set(2, 128);
    smem.set(0, 0);
    smem.set(1, 0);
    smem.set(2, 40 * 1024);
  });
  ASSERT_TRUE(blocks.status.ok()) << blocks.status.ToString();
  // The host model: 2048 threads per SM; 228 KiB shared, 1 KiB reserved per block.
  EXPECT_EQ(blocks.values, (std::vector<int64_t>{2, 16, 5}));
  auto mismatched = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initOccupancyMaxActiveBlocks();
    a.setFunction(12);
    a.initBlockSizes(2);
    a.initDynamicSmemBytes(1);
  });
  EXPECT_EQ(mismatched.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  auto zero = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initOccupancyMaxActiveBlocks();
    a.setFunction(12);
    a.initBlockSizes(1).set(0, 0);
    a.initDynamicSmemBytes(1);
  });
  EXPECT_EQ(zero.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  auto available = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initOccupancyAvailableDynamicSmem();
    a.setFunction(12);
    a.setNumBlocks(4);
    a.setBlockSize(256);
  });
  ASSERT_TRUE(available.status.ok());
  EXPECT_EQ(available.value, 48 * 1024);  // a quarter of the SM, capped by the kernel's 48 KiB
  auto clusters = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initOccupancyCluster();
    a.setFunction(12);
    a.setQuery(wire::OccupancyCluster::Query::MAX_ACTIVE_CLUSTERS);
    a.setGridX(16);
    a.setGridY(1);
    a.setGridZ(1);
    a.setBlockX(1024);
    a.setBlockY(1);
    a.setBlockZ(1);
    a.setClusterX(4);
    a.setClusterY(1);
    a.setClusterZ(1);
  });
  ASSERT_TRUE(clusters.status.ok()) << clusters.status.ToString();
  EXPECT_EQ(clusters.value, 2 * 16 / 4 * 8);  // 2 blocks per SM, 16 SMs per GPC, 8 GPCs
  auto bad_function = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initOccupancyAvailableDynamicSmem();
    a.setFunction(999);
    a.setNumBlocks(1);
    a.setBlockSize(32);
  });
  EXPECT_EQ(bad_function.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
}

// --- virtual memory management -----------------------------------------------

// Two mappings of one physical allocation side by side: copies are refused
// until access is set, then run across both (one span) and see one set of
// bytes through both addresses; a released handle stays mapped (and usable)
// but can no longer be mapped, and cuMemRetainAllocationHandle finds it again.
// Everything is left mapped at the end: the session frees it (EndSession checks
// the backend got every byte back).
TEST_F(SessionTest, MappedMemoryNeedsAccessJoinsAndIsFreedWithTheSession) {
  CreateContext();
  const uint64_t page = PageSize();
  const ReplyResult reserved = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemAddressReserve();
    a.setBytes(4 * page);
  });
  ASSERT_TRUE(reserved.status.ok()) << reserved.status.ToString();
  const uint64_t base = reserved.dptr;
  ASSERT_TRUE(CreatePhysicalMemory(900, 2 * page).status.ok());
  for (uint64_t at : {base, base + 2 * page}) {
    const ReplyResult mapped = client_->Call([&](wire::Call::Builder c) {
      auto a = c.initMemMap();
      a.setAddress(at);
      a.setBytes(2 * page);
      a.setHandle(900);
    });
    ASSERT_TRUE(mapped.status.ok()) << mapped.status.ToString();
  }
  auto write = [&](uint64_t at, const std::vector<uint8_t>& bytes) {
    client_->Send(
        [&](wire::Call::Builder c) { test::BuildMemcpyHtoD(c, 100, 0, at, bytes.size()); }, false,
        bytes);
    return client_->Call([](wire::Call::Builder c) { c.setPing(); }).status;
  };
  std::vector<uint8_t> pattern(page + 16);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<uint8_t>(i * 7);
  EXPECT_EQ(write(base, pattern).cuda_result(), CUDA_ERROR_INVALID_VALUE);  // no access yet

  const ReplyResult access = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemSetAccess();
    a.setAddress(base);
    a.setBytes(4 * page);
    auto desc = a.initAccess(1);
    desc[0].setDevice(0);
    desc[0].setFlags(CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
  });
  ASSERT_TRUE(access.status.ok()) << access.status.ToString();
  // Across the boundary of the two mappings: one span.
  ASSERT_TRUE(write(base + 2 * page - 8, pattern).ok());
  const ReplyResult read = client_->Call([&](wire::Call::Builder c) {
    test::BuildMemcpyDtoH(c, 100, 0, base - 8 + 2 * page + 2 * page, 8);
  });
  ASSERT_TRUE(read.status.ok()) << read.status.ToString();
  // base + 4 pages - 8 aliases base + 2 pages - 8: the first bytes written.
  EXPECT_EQ(read.bulk, std::vector<uint8_t>(pattern.begin(), pattern.begin() + 8));
  EXPECT_EQ(write(base + 4 * page - 8, pattern).cuda_result(), CUDA_ERROR_INVALID_VALUE);

  const ReplyResult released =
      client_->Call([](wire::Call::Builder c) { c.initMemRelease().setHandle(900); });
  ASSERT_TRUE(released.status.ok());
  EXPECT_TRUE(write(base, pattern).ok());  // the mappings hold the memory
  const ReplyResult remapped = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemUnmap();
    a.setAddress(base);
    a.setBytes(page);  // part of a mapping
  });
  EXPECT_EQ(remapped.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  const ReplyResult retained = client_->Call([&](wire::Call::Builder c) {
    c.initMemRetainAllocationHandle().setAddress(base + page + 3);
  });
  ASSERT_TRUE(retained.status.ok());
  EXPECT_EQ(retained.value, 900);
  const ReplyResult freed = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemAddressFree();
    a.setAddress(base);
    a.setBytes(4 * page);
  });
  EXPECT_EQ(freed.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);  // still mapped

  // Read-only access is reported as such; a copy into it never faults ferryd.
  const ReplyResult read_only = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemSetAccess();
    a.setAddress(base);
    a.setBytes(4 * page);
    auto desc = a.initAccess(1);
    desc[0].setDevice(0);
    desc[0].setFlags(CU_MEM_ACCESS_FLAGS_PROT_READ);
  });
  ASSERT_TRUE(read_only.status.ok()) << read_only.status.ToString();
  const ReplyResult flags = client_->Call(
      [&](wire::Call::Builder c) { c.initMemGetAccess().setAddress(base + 3 * page); });
  ASSERT_TRUE(flags.status.ok());
  EXPECT_EQ(flags.value, CU_MEM_ACCESS_FLAGS_PROT_READ);
  EXPECT_TRUE(write(base, pattern).ok());
}

// Releasing memory never waits on the executor for queued work: the call is
// answered at once, the range is refused to new work at once, and the memory
// itself (its pages, on the host backend) stays until the work queued before
// on every stream of the session has run. A memset held behind a host gate
// still lands in the physical memory, which shows its bytes when mapped
// again.
class SessionReleaseTest : public SessionTest {
 protected:
  // One page of physical memory (handle 900) mapped at a new reservation
  // with read-write access; returns the address.
  uint64_t MappedPage() {
    const ReplyResult reserved = client_->Call([&](wire::Call::Builder c) {
      auto a = c.initMemAddressReserve();
      a.setBytes(PageSize());
    });
    EXPECT_TRUE(reserved.status.ok()) << reserved.status.ToString();
    EXPECT_TRUE(CreatePhysicalMemory(900, PageSize()).status.ok());
    Map(reserved.dptr);
    EXPECT_TRUE(SetAccess(reserved.dptr, CU_MEM_ACCESS_FLAGS_PROT_READWRITE).ok());
    return reserved.dptr;
  }
  void Map(uint64_t base) {
    const ReplyResult mapped = client_->Call([&](wire::Call::Builder c) {
      auto a = c.initMemMap();
      a.setAddress(base);
      a.setBytes(PageSize());
      a.setHandle(900);
    });
    EXPECT_TRUE(mapped.status.ok()) << mapped.status.ToString();
  }
  Status SetAccess(uint64_t base, unsigned flags) {
    return client_
        ->Call([&](wire::Call::Builder c) {
          auto a = c.initMemSetAccess();
          a.setAddress(base);
          a.setBytes(PageSize());
          auto desc = a.initAccess(1);
          desc[0].setDevice(0);
          desc[0].setFlags(flags);
        })
        .status;
  }
  // Holds stream kHeld of `ctx` with a closed host gate; returns the gate.
  uint64_t HoldStream(uint64_t ctx = 100) {
    const uint64_t gate = client_->SendGate(ctx, kHeld);
    const ReplyResult reached = client_->ReadWithin();
    EXPECT_EQ(reached.seq, gate);
    EXPECT_TRUE(reached.held);
    return gate;
  }
  // A memset on kProbe (posted), then a ping: the memset's error, if any.
  Status FillOnProbe(uint64_t dst, uint64_t bytes) {
    Fill(kProbe, dst, 0x11, bytes);
    return client_->Call([](wire::Call::Builder c) { c.setPing(); }).status;
  }
};

TEST_F(SessionReleaseTest, UnmapIsAnsweredWhileAStreamIsHeldAndTheQueuedWorkStillLands) {
  CreateContext();
  CreateStream(kHeld);
  CreateStream(kProbe, CU_STREAM_NON_BLOCKING);
  const uint64_t base = MappedPage();
  const uint64_t gate = HoldStream();
  Fill(kHeld, base, 0x5A, PageSize());  // queued behind the closed gate
  const ReplyResult unmapped = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initMemUnmap();
    a.setAddress(base);
    a.setBytes(PageSize());
  });
  ASSERT_TRUE(unmapped.status.ok()) << unmapped.status.ToString();
  EXPECT_EQ(FillOnProbe(base, PageSize()).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  client_->OpenGate(gate);
  ASSERT_TRUE(Sync(kHeld).status.ok());
  Map(base);
  ASSERT_TRUE(SetAccess(base, CU_MEM_ACCESS_FLAGS_PROT_READWRITE).ok());
  const ReplyResult read = CopyOut(kHeld, base, PageSize());
  ASSERT_TRUE(read.status.ok()) << read.status.ToString();
  EXPECT_EQ(read.bulk, std::vector<uint8_t>(PageSize(), 0x5A));
}

TEST_F(SessionReleaseTest, TakingAccessAwayIsAnsweredWhileAStreamIsHeld) {
  CreateContext();
  CreateStream(kHeld);
  CreateStream(kProbe, CU_STREAM_NON_BLOCKING);
  const uint64_t base = MappedPage();
  const uint64_t gate = HoldStream();
  Fill(kHeld, base, 0x5A, PageSize());
  ASSERT_TRUE(SetAccess(base, CU_MEM_ACCESS_FLAGS_PROT_NONE).ok());
  EXPECT_EQ(FillOnProbe(base, PageSize()).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  client_->OpenGate(gate);
  ASSERT_TRUE(Sync(kHeld).status.ok());
  ASSERT_TRUE(SetAccess(base, CU_MEM_ACCESS_FLAGS_PROT_READWRITE).ok());
  const ReplyResult read = CopyOut(kHeld, base, PageSize());
  ASSERT_TRUE(read.status.ok()) << read.status.ToString();
  EXPECT_EQ(read.bulk, std::vector<uint8_t>(PageSize(), 0x5A));
}

// A memset queued on another context's stream targets memory of context 100
// (one address space for the session's contexts). Freeing it is answered at
// once; the memory, and the session's quota for it, come back only after the
// memset ran (the host backend would otherwise write freed pages).
TEST_F(SessionReleaseTest, FreeWaitsForWorkQueuedOnAnotherContextsStream) {
  CreateContext(100);
  CreateContext(101);
  CreateStream(kHeld, 0, 101);
  CreateStream(kProbe, CU_STREAM_NON_BLOCKING);
  constexpr uint64_t kBytes = 1 << 20;  // mmap'ed by the host backend
  const uint64_t d = Alloc(kBytes);
  const uint64_t gate = HoldStream(101);
  client_->Send([&](wire::Call::Builder c) { test::BuildMemsetD8(c, 101, kHeld, d, 0x5A, kBytes); },
                false);
  const ReplyResult freed =
      client_->Call([&](wire::Call::Builder c) { c.initMemFree().setDptr(d); });
  ASSERT_TRUE(freed.status.ok()) << freed.status.ToString();
  EXPECT_EQ(FillOnProbe(d, 16).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(session_->Info().bytes_allocated, kBytes) << "quota back before the memory";
  client_->OpenGate(gate);
  const ReplyResult sync = client_->Call(
      [&](wire::Call::Builder c) { OnStream(c.initStreamSynchronize(), kHeld, 101); });
  ASSERT_TRUE(sync.status.ok()) << sync.status.ToString();
  EXPECT_TRUE(test::WaitFor([&] { return session_->Info().bytes_allocated == 0; },
                            std::chrono::seconds(10)));
}

// --- CUDA arrays, textures and surfaces ----------------------------------------

// One side of a memcpy2D (a 2D or 3D copy) naming an array.
struct ArraySide {
  uint64_t array = 0;
  uint64_t x = 0, y = 0, z = 0;
};

// A copy of `depth` slices of `height` rows of `width` bytes from host bytes
// `data` into `dst`, posted; a ping reports its error.
Status CopyHostToArray(RawClient& client, ArraySide dst, uint64_t width, uint64_t height,
                       uint64_t depth, const std::vector<uint8_t>& data) {
  client.Send(
      [&](wire::Call::Builder c) {
        auto a = test::OnStream(c.initMemcpy2D(), 0);
        a.setSrcKind(wire::MemoryKind::HOST);
        a.setSrcPitch(width);
        a.setDstKind(wire::MemoryKind::ARRAY);
        a.setDstArray(dst.array);
        a.setDstX(dst.x);
        a.setDstY(dst.y);
        a.setDstZ(dst.z);
        a.setWidthBytes(width);
        a.setHeight(height);
        a.setDepth(depth);
      },
      false, data);
  return client.Call([&](wire::Call::Builder c) { c.setPing(); }).status;
}

// The same from `src` to the host (the reply's bulk).
ReplyResult CopyArrayToHost(RawClient& client, ArraySide src, uint64_t width, uint64_t height,
                            uint64_t depth) {
  return client.Call([&](wire::Call::Builder c) {
    auto a = test::OnStream(c.initMemcpy2D(), 0);
    a.setSrcKind(wire::MemoryKind::ARRAY);
    a.setSrcArray(src.array);
    a.setSrcX(src.x);
    a.setSrcY(src.y);
    a.setSrcZ(src.z);
    a.setDstKind(wire::MemoryKind::HOST);
    a.setDstPitch(width);
    a.setWidthBytes(width);
    a.setHeight(height);
    a.setDepth(depth);
  });
}

TEST_F(SessionTest, ArraysAreChargedCopiedIn3DAndRefuseCopiesPastTheirExtent) {
  CreateContext();
  // A 4 x 3 x 2 float array: 96 bytes, charged while it lives.
  ASSERT_TRUE(CreateArray(700, 4, 3, 2).status.ok());
  EXPECT_EQ(session_->Info().bytes_allocated, 96u);
  // Shapes no array has: no width, 3D without a height, 3 channels.
  EXPECT_EQ(CreateArray(701, 0, 3, 0).status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(CreateArray(701, 4, 0, 2).status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(CreateArray(701, 4, 3, 0, 0, 0, 3).status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(session_->Info().bytes_allocated, 96u);

  std::vector<uint8_t> volume(96);
  for (size_t i = 0; i < volume.size(); ++i) volume[i] = static_cast<uint8_t>(i * 7 + 1);
  ASSERT_TRUE(CopyHostToArray(*client_, {700}, 16, 3, 2, volume).ok());
  ReplyResult whole = CopyArrayToHost(*client_, {700}, 16, 3, 2);
  ASSERT_TRUE(whole.status.ok()) << whole.status.ToString();
  EXPECT_EQ(whole.bulk, volume);
  // Array -> pitched device memory (rows 32 bytes apart, slices 4 rows
  // apart) -> host: the rows land where the pitch says.
  const uint64_t device = Alloc(256);
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = test::OnStream(c.initMemcpy2D(), 0);
        a.setSrcKind(wire::MemoryKind::ARRAY);
        a.setSrcArray(700);
        a.setDstKind(wire::MemoryKind::DEVICE);
        a.setDstDevice(device);
        a.setDstPitch(32);
        a.setDstHeight(4);
        a.setWidthBytes(16);
        a.setHeight(3);
        a.setDepth(2);
      },
      false);
  ReplyResult pitched = CopyOut(0, device, 256);
  ASSERT_TRUE(pitched.status.ok());
  for (uint64_t z = 0; z < 2; ++z) {
    for (uint64_t y = 0; y < 3; ++y) {
      const uint8_t* row = pitched.bulk.data() + (z * 4 + y) * 32;
      EXPECT_TRUE(std::equal(row, row + 16, volume.begin() + (z * 3 + y) * 16));
    }
  }
  // A 2 x 2 block of slice 1 at element (1, 1).
  ReplyResult block = CopyArrayToHost(*client_, {700, 4, 1, 1}, 8, 2, 1);
  ASSERT_TRUE(block.status.ok());
  std::vector<uint8_t> expected;
  for (uint64_t y = 1; y < 3; ++y) {
    auto row = volume.begin() + (3 + y) * 16 + 4;
    expected.insert(expected.end(), row, row + 8);
  }
  EXPECT_EQ(block.bulk, expected);

  // Past the extent on every axis, a partial element, and a mipmapped
  // array (copied level by level): refused, the array untouched.
  for (ArraySide bad : {ArraySide{700, 4, 0, 0}, ArraySide{700, 0, 1, 0}, ArraySide{700, 0, 0, 1},
                        ArraySide{700, 2, 0, 0}}) {
    EXPECT_EQ(CopyArrayToHost(*client_, bad, 16, 3, 2).status.cuda_result(),
              CUDA_ERROR_INVALID_VALUE)
        << bad.x << "," << bad.y << "," << bad.z;
    EXPECT_EQ(CopyHostToArray(*client_, bad, 16, 3, 2, volume).cuda_result(),
              CUDA_ERROR_INVALID_VALUE);
  }
  ASSERT_TRUE(CreateArray(702, 8, 8, 0, 2).status.ok());
  EXPECT_EQ(CopyArrayToHost(*client_, {702}, 4, 1, 1).status.cuda_result(),
            CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(CopyArrayToHost(*client_, {700}, 16, 3, 2).bulk, volume);

  // A level of the mipmapped array is an array of its own extents (4 x 4).
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = c.initMipmappedArrayGetLevel();
        a.setMipmappedArray(702);
        a.setLevel(1);
        a.setArray(703);
      },
      false);
  std::vector<uint8_t> level(64, 0x5A);
  EXPECT_TRUE(CopyHostToArray(*client_, {703}, 16, 4, 1, level).ok());
  EXPECT_EQ(CopyArrayToHost(*client_, {703}, 16, 4, 1).bulk, level);
  EXPECT_EQ(CopyArrayToHost(*client_, {703}, 16, 5, 1).status.cuda_result(),
            CUDA_ERROR_INVALID_VALUE);
  // A level goes with its mipmapped array, never by itself.
  client_->Send([&](wire::Call::Builder c) { c.initArrayDestroy().setArray(703); }, false);
  EXPECT_EQ(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.cuda_result(),
            CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(session_->Info().bytes_allocated, 96u + 256u + (8 * 8 + 4 * 4) * 4u);
  for (uint64_t array : {700, 702}) {
    client_->Send([&](wire::Call::Builder c) { c.initArrayDestroy().setArray(array); }, false);
  }
  ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
  EXPECT_EQ(session_->Info().bytes_allocated, 256u);
  EXPECT_EQ(CopyArrayToHost(*client_, {703}, 16, 4, 1).status.cuda_result(),
            CUDA_ERROR_INVALID_HANDLE);
}

TEST_F(SessionTest, TextureAndSurfaceObjectsNameTheSessionsArraysAndMemory) {
  CreateContext();
  ASSERT_TRUE(CreateArray(700, 8, 8, 0).status.ok());
  ASSERT_TRUE(CreateArray(701, 8, 8, 0, 0, CUDA_ARRAY3D_SURFACE_LDST).status.ok());
  const uint64_t buffer = Alloc(1024);
  auto create = [&](bool surface, unsigned type, uint64_t array, uint64_t dev_ptr,
                    uint64_t size_bytes, bool view = false) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = c.initTexObjectCreate();
      a.setCtx(100);
      a.setSurface(surface);
      a.setResourceType(type);
      a.setArray(array);
      a.setDevPtr(dev_ptr);
      a.setFormat(CU_AD_FORMAT_FLOAT);
      a.setNumChannels(1);
      a.setSizeBytes(size_bytes);
      a.initAddressMode(3);
      a.setHasView(view);
    });
  };
  auto destroy = [&](uint64_t object, bool surface) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = c.initTexObjectDestroy();
          a.setObject(object);
          a.setSurface(surface);
        },
        false);
    return client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status;
  };
  ReplyResult texture = create(false, CU_RESOURCE_TYPE_ARRAY, 700, 0, 0);
  ASSERT_TRUE(texture.status.ok()) << texture.status.ToString();
  EXPECT_NE(texture.value, 0);
  ReplyResult linear = create(false, CU_RESOURCE_TYPE_LINEAR, 0, buffer + 512, 512);
  ASSERT_TRUE(linear.status.ok()) << linear.status.ToString();
  EXPECT_NE(linear.value, texture.value);
  ReplyResult surface = create(true, CU_RESOURCE_TYPE_ARRAY, 701, 0, 0);
  ASSERT_TRUE(surface.status.ok()) << surface.status.ToString();

  // Memory past the session's range, an unknown array, a surface over an
  // array without CUDA_ARRAY3D_SURFACE_LDST or over memory, and (on the
  // host backend) a resource view: refused.
  EXPECT_EQ(create(false, CU_RESOURCE_TYPE_LINEAR, 0, buffer + 512, 513).status.cuda_result(),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(create(false, CU_RESOURCE_TYPE_ARRAY, 799, 0, 0).status.cuda_result(),
            CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(create(true, CU_RESOURCE_TYPE_ARRAY, 700, 0, 0).status.cuda_result(),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(create(true, CU_RESOURCE_TYPE_LINEAR, 0, buffer, 512).status.cuda_result(),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(create(false, CU_RESOURCE_TYPE_ARRAY, 700, 0, 0, /*view=*/true).status.cuda_result(),
            CUDA_ERROR_NOT_SUPPORTED);

  // Destroyed as what it is, once.
  EXPECT_EQ(destroy(texture.value, true).cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_TRUE(destroy(texture.value, false).ok());
  EXPECT_EQ(destroy(texture.value, false).cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(destroy(surface.value, false).cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  // The rest (linear, surface, the arrays) goes with the session: EndSession
  // checks that every byte came back.
}

// --- pooled sessions: slices, quotas, preemption ------------------------------

constexpr uint64_t kSliceQuota = 1 << 20;

// A session whose one device is slice 2/4 (quota 1 MiB) of the host backend's
// device 1, as a pool grants it.
class PooledSessionTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(test::CreateTestHostBackend(64 << 20, &backend_, 2).ok()); }
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
    grant.park_after = park_after_;
    return grant;
  }

  // Starts the session; `before_run` runs on it before Run. Returns the
  // HelloReply frame.
  Frame Start(const std::function<void(Session&)>& before_run = nullptr) {
    std::unique_ptr<Transport> server_side, client_side;
    EXPECT_TRUE(MakeTransportPair(&server_side, &client_side).ok());
    auto observed = std::make_unique<test::ObservedTransport>(std::move(server_side));
    server_observed_ = observed.get();
    capnp::MallocMessageBuilder hello;
    auto h = hello.initRoot<wire::Hello>();
    h.setPid(8);
    h.setProgram("pooled_test");
    h.setKeepaliveMs(keepalive_ms_);
    session_ = std::make_unique<Session>(2, std::move(observed), *backend_, h.asReader(), Grant());
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
  // Fills the quota, queues a memset of it behind a closed host gate, frees
  // it and asks for the whole quota again: the allocation waits for the
  // release, which the gate's opening lets happen. `expect_keepalive`: a
  // keepalive frame comes while it waits (keepalive_ms_ set).
  void AllocationWaitingForARelease(bool expect_keepalive);
  // Another tenant (as another session would be) holding all of backend
  // device `device` but `left` bytes.
  struct OtherTenant {
    std::unique_ptr<backend::Context> context;
    std::unique_ptr<backend::Tenant> tenant;
    uint64_t allocation = 0;
  };
  OtherTenant FillDevice(int device, uint64_t left) {
    OtherTenant other;
    EXPECT_TRUE(backend_->CreateContext(device, 0, &other.context).ok());
    other.tenant = backend_->CreateTenant();
    backend_->JoinTenant(*other.context, *other.tenant);
    EXPECT_TRUE(backend_->MemAlloc(*other.context, (64 << 20) - left, &other.allocation).ok());
    return other;
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
  uint64_t buffer_limit_ = 0;  // Session::SetBufferLimit before Run; 0: the default
  uint32_t keepalive_ms_ = 0;  // Hello.keepaliveMs
  std::optional<absl::Duration> park_after_;  // the grant's (memory overcommit)
  std::unique_ptr<Session> session_;
  std::thread runner_;
  std::unique_ptr<RawClient> client_;
  test::ObservedTransport* server_observed_ = nullptr;  // the session's end, owned by it
};

// A free is answered at once, but its memory (and quota) come back only after
// the work queued before it on the session's streams. An allocation that
// fits only once that memory is released waits for the release, as a
// program that frees and then allocates within its quota expects (a real
// cuMemFree returns once the memory is free), instead of failing with
// OUT_OF_MEMORY.
TEST_F(PooledSessionTest, AnAllocationWaitsForMemoryTheSessionFreedToBeReleased) {
  AllocationWaitingForARelease(/*expect_keepalive=*/false);
}

// Memory overcommit: a graph whose allocation nodes do not fit on a full
// device asks the memory-pressure hook for room, as every allocation path
// does, and is committed once room was made.
TEST_F(PooledSessionTest, AGraphsMemoryAsksForRoomOnAFullDevice) {
  park_after_ = absl::ZeroDuration();
  OtherTenant other = FillDevice(1, kSliceQuota / 2);
  uint64_t& filler = other.allocation;
  std::mutex asked_mutex;
  std::vector<std::pair<int, uint64_t>> asked;
  Start([&](Session& session) {
    session.SetMemoryPressure([&](int device, uint64_t bytes, uint64_t) -> uint64_t {
      std::lock_guard<std::mutex> lock(asked_mutex);
      asked.emplace_back(device, bytes);
      if (filler == 0) return 0;
      EXPECT_TRUE(backend_->MemFree(*other.context, filler).ok());  // as if parked
      filler = 0;
      return bytes;
    });
  });
  ASSERT_TRUE(CreateContext(0).status.ok());
  client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(50); }, false);
  ReplyResult alloc = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initGraphAddMemAllocNode();
    a.setGraph(50);
    a.setNode(51);
    a.setCtx(100);
    a.setBytes(kSliceQuota);
  });
  ASSERT_TRUE(alloc.status.ok()) << alloc.status.ToString();
  ReplyResult instantiated = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initGraphInstantiate();
    a.setGraph(50);
    a.setExec(60);
  });
  EXPECT_TRUE(instantiated.status.ok()) << instantiated.status.ToString();
  std::lock_guard<std::mutex> lock(asked_mutex);
  EXPECT_EQ(asked, (std::vector<std::pair<int, uint64_t>>{{1, kSliceQuota}}));
  EXPECT_EQ(filler, 0u);
}

// Memory overcommit: an allocation that finds the device full while no other
// session is idle enough to be parked waits (bounded) for one to become
// so, asking again, instead of failing at once; past the wait the
// backend's OUT_OF_MEMORY stands.
TEST_F(PooledSessionTest, AnAllocationWaitsForRoomUntilAnotherSessionIsParked) {
  park_after_ = absl::ZeroDuration();
  OtherTenant other = FillDevice(1, kSliceQuota / 2);
  uint64_t& filler = other.allocation;
  std::mutex mutex;
  int asked = 0;
  int idle_at = 3;  // the other session is idle from the third question on
  Start([&](Session& session) {
    session.TEST_SetUnparkWait(std::chrono::milliseconds(1000));
    session.SetMemoryPressure([&](int, uint64_t bytes, uint64_t) -> uint64_t {
      std::lock_guard<std::mutex> lock(mutex);
      if (++asked < idle_at || filler == 0) return 0;
      EXPECT_TRUE(backend_->MemFree(*other.context, filler).ok());  // as if parked
      filler = 0;
      return bytes;
    });
  });
  ASSERT_TRUE(CreateContext(0).status.ok());
  const ReplyResult fits = Alloc(kSliceQuota);
  ASSERT_TRUE(fits.status.ok()) << fits.status.ToString();
  const ReplyResult freed = client_->Call([&](wire::Call::Builder c) {
    c.initMemFree().setDptr(fits.dptr);
  });
  ASSERT_TRUE(freed.status.ok());
  ASSERT_TRUE(test::WaitFor([&] { return BackendMemory(1).first == 64u << 20; },
                            std::chrono::seconds(10)));
  {
    std::lock_guard<std::mutex> lock(mutex);
    EXPECT_EQ(asked, 3);
    // Nobody will be idle again: the next allocation that does not fit
    // fails once the wait is over.
    idle_at = 1 << 30;
    ASSERT_TRUE(backend_->MemAlloc(*other.context, (64 << 20) - kSliceQuota / 2, &filler).ok());
  }
  EXPECT_EQ(Alloc(kSliceQuota).status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY);
  std::lock_guard<std::mutex> lock(mutex);
  EXPECT_GT(asked, 4);  // asked again while it waited
  EXPECT_TRUE(backend_->MemFree(*other.context, filler).ok());
}

// A preemption ends a wait for room at once: Preempt gets the session's
// batch lock (and frees everything, with a notice) instead of waiting past
// its bound and closing the session.
TEST_F(PooledSessionTest, APreemptionEndsAWaitForRoom) {
  park_after_ = absl::ZeroDuration();
  OtherTenant other = FillDevice(1, kSliceQuota / 2);
  uint64_t& filler = other.allocation;
  std::atomic<int> asked{0};
  Start([&](Session& session) {
    session.TEST_SetUnparkWait(std::chrono::seconds(60));
    session.TEST_SetPreemptBatchWait(std::chrono::seconds(5));
    session.SetMemoryPressure([&](int, uint64_t, uint64_t) -> uint64_t {
      ++asked;
      return 0;  // nobody is ever idle
    });
  });
  ASSERT_TRUE(CreateContext(0).status.ok());
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = c.initMemAlloc();
        a.setCtx(100);
        a.setBytes(kSliceQuota);
      },
      true);
  ASSERT_TRUE(test::WaitFor([&] { return asked.load() >= 2; }, std::chrono::seconds(10)));
  const auto started = std::chrono::steady_clock::now();
  EXPECT_TRUE(session_->Preempt("preempted by the test"));  // freed: it got the lock
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5));
  ReplyResult refused = client_->ReadWithin();
  EXPECT_EQ(refused.status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY) << refused.status.ToString();
  EXPECT_TRUE(backend_->MemFree(*other.context, filler).ok());
}

// Migration between GPUs of one server: the session's device moves from
// backend device 1 to 0 with its memory (same address, same bytes, now on
// the other device's books) and its context; the grant follows. A session
// holding what cannot move yet is refused, naming it, and stays.
TEST_F(PooledSessionTest, MoveDeviceMovesMemoryAndContextToAnotherGpu) {
  Start();
  ASSERT_TRUE(CreateContext(0).status.ok());
  const ReplyResult alloc = Alloc(kSliceQuota / 2);
  ASSERT_TRUE(alloc.status.ok());
  std::vector<uint8_t> data(kSliceQuota / 2);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 31 + 5);
  client_->Send([&](wire::Call::Builder c) {
    test::BuildMemcpyHtoD(c, 100, 0, alloc.dptr, data.size());
  }, false, data);
  ASSERT_TRUE(client_->Call([](wire::Call::Builder c) { c.setPing(); }).status.ok());
  EXPECT_EQ(BackendMemory(1).first, (64u << 20) - kSliceQuota / 2);
  SessionDevice to = Grant().devices[0];
  to.backend_device = 0;
  to.gpu = 0;
  to.slice = 3;
  ASSERT_TRUE(session_->MoveDevice(0, to).ok());
  EXPECT_EQ(BackendMemory(0).first, (64u << 20) - kSliceQuota / 2);
  EXPECT_EQ(BackendMemory(1).first, 64u << 20);
  EXPECT_EQ(session_->grant().devices[0].backend_device, 0);
  EXPECT_EQ(session_->grant().devices[0].slice, 3);
  EXPECT_EQ(session_->Info().moves, 1u);
  const ReplyResult back = client_->Call([&](wire::Call::Builder c) {
    test::BuildMemcpyDtoH(c, 100, 0, alloc.dptr, data.size());
  });
  ASSERT_TRUE(back.status.ok()) << back.status.ToString();
  EXPECT_EQ(back.bulk, data);
  // New allocations come from the new device too.
  ASSERT_TRUE(Alloc(kSliceQuota / 4).status.ok());
  EXPECT_EQ(BackendMemory(0).first, (64u << 20) - 3 * kSliceQuota / 4);
  // An array cannot move yet: refused, nothing changes.
  ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) {
                auto a = c.initArrayCreate();
                a.setCtx(100);
                a.setArray(700);
                a.setWidth(16);
                a.setHeight(16);
                a.setFormat(CU_AD_FORMAT_FLOAT);
                a.setNumChannels(1);
              }).status.ok());
  Status refused = session_->MoveDevice(0, Grant().devices[0]);
  EXPECT_EQ(refused.code(), StatusCode::kUnimplemented) << refused.ToString();
  EXPECT_NE(refused.message().find("holds 1 array"), std::string::npos) << refused.message();
  EXPECT_EQ(session_->grant().devices[0].backend_device, 0);
}

// An allocation that would not fit even once the session's pending releases
// happened is refused at once: waiting could not help.
TEST_F(PooledSessionTest, AnAllocationPendingReleasesCannotMakeRoomForIsRefusedAtOnce) {
  Start();
  ASSERT_TRUE(CreateContext(0).status.ok());
  constexpr uint64_t kHeld = 300;
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = test::OnStream(c.initStreamCreate(), kHeld, 100);
        a.setFlags(CU_STREAM_NON_BLOCKING);
      },
      false);
  const ReplyResult half = Alloc(kSliceQuota / 2);
  ASSERT_TRUE(half.status.ok()) << half.status.ToString();
  const uint64_t gate = client_->SendGate(100, kHeld);
  const ReplyResult reached = client_->ReadWithin();
  ASSERT_EQ(reached.seq, gate);
  client_->Send(
      [&](wire::Call::Builder c) {
        test::BuildMemsetD8(c, 100, kHeld, half.dptr, 0x5A, kSliceQuota / 2);
      },
      false);  // queued behind the closed gate: the free's release waits
  client_->Send([&](wire::Call::Builder c) { c.initMemFree().setDptr(half.dptr); }, false);
  EXPECT_EQ(Alloc(kSliceQuota + 4096).status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_EQ(session_->Info().allocations_waited_for_releases, 0u);
  client_->OpenGate(gate);
}

// The client's call deadline measures silence: while the executor waits for
// the releases, keepalives go out as for a deferred reply.
TEST_F(PooledSessionTest, KeepalivesGoOutWhileAnAllocationWaitsForReleases) {
  keepalive_ms_ = Session::kMinKeepaliveMs;
  AllocationWaitingForARelease(/*expect_keepalive=*/true);
}

void PooledSessionTest::AllocationWaitingForARelease(bool expect_keepalive) {
  Start();
  ASSERT_TRUE(CreateContext(0).status.ok());
  constexpr uint64_t kHeld = 300;
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = test::OnStream(c.initStreamCreate(), kHeld, 100);
        a.setFlags(CU_STREAM_NON_BLOCKING);
      },
      false);
  const ReplyResult whole = Alloc(kSliceQuota);
  ASSERT_TRUE(whole.status.ok()) << whole.status.ToString();
  const uint64_t gate = client_->SendGate(100, kHeld);
  const ReplyResult reached = client_->ReadWithin();
  ASSERT_EQ(reached.seq, gate);
  ASSERT_TRUE(reached.held);
  client_->Send(
      [&](wire::Call::Builder c) {
        test::BuildMemsetD8(c, 100, kHeld, whole.dptr, 0x5A, kSliceQuota);
      },
      false);  // queued behind the closed gate
  client_->Send([&](wire::Call::Builder c) { c.initMemFree().setDptr(whole.dptr); }, false);
  const uint64_t again = client_->Send(
      [&](wire::Call::Builder c) {
        auto a = c.initMemAlloc();
        a.setCtx(100);
        a.setBytes(kSliceQuota);
      },
      true);
  ASSERT_TRUE(test::WaitFor([&] { return session_->Info().allocations_waited_for_releases == 1; },
                            std::chrono::seconds(10)))
      << "the allocation did not wait for the release";
  if (expect_keepalive) {
    const ReplyResult keepalive = client_->ReadWithin();
    EXPECT_EQ(keepalive.seq, 0u) << "a reply came before any keepalive";
  }
  client_->OpenGate(gate);
  ReplyResult allocated = client_->ReadWithin();
  while (expect_keepalive && allocated.seq == 0 && allocated.status.ok()) {
    allocated = client_->ReadWithin();  // later keepalives
  }
  EXPECT_EQ(allocated.seq, again);
  EXPECT_TRUE(allocated.status.ok()) << allocated.status.ToString();
  EXPECT_EQ(session_->Info().bytes_allocated, kSliceQuota);
}

// virtual memory management: cuMemCreate is charged to the slice like any
// allocation, and cuMemRelease gives it back.
TEST_F(PooledSessionTest, PhysicalMemoryCountsAgainstTheSliceQuota) {
  Start();
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  auto create = [&](uint64_t handle, uint64_t bytes) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = c.initMemCreate();
      a.setHandle(handle);
      a.setDevice(0);
      a.setBytes(bytes);
    });
  };
  ASSERT_TRUE(create(700, kSliceQuota / 2).status.ok());
  EXPECT_EQ(create(701, kSliceQuota / 2 + page).status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY);
  ASSERT_TRUE(
      client_->Call([](wire::Call::Builder c) { c.initMemRelease().setHandle(700); }).status.ok());
  EXPECT_TRUE(create(701, kSliceQuota / 2 + page).status.ok());
  EXPECT_EQ(session_->Info().bytes_allocated, kSliceQuota / 2 + page);
}

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
    const uint64_t seq =
        client_->Send([](wire::Call::Builder c) { c.initMemGetInfo().setCtx(100); }, true);
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

// NVML stand-in: deviceTelemetry shows the slice's quota as the total and the
// session's charged bytes as used, with the backend's figures for the whole
// GPU (the host backend: utilization, no temperature or power); a device the
// session lacks is refused.
TEST_F(PooledSessionTest, DeviceTelemetryShowsTheSliceAndTheSessionsUse) {
  Start();
  ASSERT_TRUE(CreateContext(0).status.ok());
  auto telemetry = [&](int device, Status* status) {
    const uint64_t seq = client_->Send(
        [&](wire::Call::Builder c) { c.initDeviceTelemetry().setDevice(device); }, true);
    Frame frame;
    EXPECT_TRUE(ReadFrame(client_->transport(), &frame).ok());
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    auto reply = reader.getRoot<wire::Reply>();
    EXPECT_EQ(reply.getSeq(), seq);
    *status = StatusFromWire(reply.getStatus());
    std::array<int64_t, 6> figures{};
    if (status->ok() && reply.isDeviceTelemetry()) {
      auto t = reply.getDeviceTelemetry();
      figures = {static_cast<int64_t>(t.getMemoryTotal()),
                 static_cast<int64_t>(t.getMemoryUsed()),
                 t.getGpuUtilization(),
                 t.getMemoryUtilization(),
                 t.getTemperatureC(),
                 t.getPowerMilliwatts()};
    }
    return figures;
  };
  Status status;
  std::array<int64_t, 6> figures = telemetry(0, &status);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(figures[0], static_cast<int64_t>(kSliceQuota));
  EXPECT_EQ(figures[1], 0);
  EXPECT_GE(figures[2], 0);
  EXPECT_LE(figures[2], 100);
  EXPECT_GE(figures[3], 0);
  EXPECT_EQ(figures[4], -1);
  EXPECT_EQ(figures[5], -1);
  ReplyResult a = Alloc(kSliceQuota / 4);
  ASSERT_TRUE(a.status.ok());
  figures = telemetry(0, &status);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(figures[1], static_cast<int64_t>(kSliceQuota / 4));
  telemetry(1, &status);  // the session has one device
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_INVALID_DEVICE) << status.ToString();
  telemetry(-1, &status);
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_INVALID_DEVICE) << status.ToString();
}

// graph node kinds: an allocation node's memory is charged to the slice when
// its graph is instantiated (out of memory past the quota), is the session's
// range from then until the executable graph is destroyed (cuMemFree refuses
// it), is held by one executable graph at a time, cannot be allocated again
// by a launch before it was freed, and comes back to the quota once the
// executable graph is gone.
TEST_F(PooledSessionTest, GraphMemoryIsChargedAtInstantiationAndGivenBackWithTheExecutableGraph) {
  Start();
  ASSERT_TRUE(CreateContext(0).status.ok());
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  auto ping = [&] { return client_->Call([](wire::Call::Builder c) { c.setPing(); }).status; };
  auto create_graph = [&](uint64_t graph) {
    client_->Send([&](wire::Call::Builder c) { c.initGraphCreate().setGraph(graph); }, false);
  };
  auto add_alloc = [&](uint64_t graph, uint64_t node, uint64_t bytes) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = c.initGraphAddMemAllocNode();
      a.setGraph(graph);
      a.setNode(node);
      a.setCtx(100);
      a.setBytes(bytes);
    });
  };
  auto instantiate = [&](uint64_t graph, uint64_t exec) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = c.initGraphInstantiate();
      a.setGraph(graph);
      a.setExec(exec);
    });
  };
  auto memset = [&](uint64_t dptr) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = c.initMemset();
          a.setCtx(100);
          a.setDst(dptr);
          a.setValue(1);
          a.setElementBytes(1);
          a.setWidth(16);
          a.setHeight(1);
        },
        false);
    return ping();
  };
  auto launch = [&](uint64_t exec) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = c.initGraphLaunch();
          a.setCtx(100);
          a.setExec(exec);
        },
        false);
    return ping();
  };
  create_graph(50);
  ReplyResult half = add_alloc(50, 51, kSliceQuota / 2);
  ASSERT_TRUE(half.status.ok()) << half.status.ToString();
  // A node of its own graph may name the allocation; other calls may not yet.
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = c.initGraphAddNode();
        a.setGraph(50);
        a.setNode(52);
        a.initDependencies(1).set(0, 51);
        auto m = a.initMemset();
        m.setCtx(100);
        m.setDst(half.dptr);
        m.setValue(7);
        m.setElementBytes(1);
        m.setWidth(64);
        m.setHeight(1);
      },
      false);
  ASSERT_TRUE(ping().ok());
  EXPECT_EQ(memset(half.dptr).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(session_->Info().device_bytes, std::vector<uint64_t>{0});
  ASSERT_TRUE(instantiate(50, 60).status.ok());
  EXPECT_EQ(session_->Info().device_bytes, std::vector<uint64_t>{kSliceQuota / 2});
  EXPECT_TRUE(memset(half.dptr).ok());
  client_->Send([&](wire::Call::Builder c) { c.initMemFree().setDptr(half.dptr); }, false);
  EXPECT_EQ(ping().cuda_result(), CUDA_ERROR_INVALID_VALUE);
  // One executable graph at a time; more than the slice's rest is out of memory.
  EXPECT_EQ(instantiate(50, 61).status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  create_graph(70);
  ASSERT_TRUE(add_alloc(70, 71, kSliceQuota / 2 + page).status.ok());
  EXPECT_EQ(instantiate(70, 72).status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY);
  // Nothing frees the allocation, so a second launch is refused.
  EXPECT_TRUE(launch(60).ok());
  EXPECT_EQ(launch(60).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  ReplyResult used = client_->Call([](wire::Call::Builder c) {
    auto a = c.initDeviceGetGraphMemAttribute();
    a.setAttribute(CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT);
  });
  ASSERT_TRUE(used.status.ok());
  EXPECT_EQ(static_cast<uint64_t>(used.value), kSliceQuota / 2);
  // The executable graph goes: the range is no longer the session's and the
  // quota comes back once the backend has given the memory back.
  ASSERT_TRUE(
      client_->Call([](wire::Call::Builder c) { c.initCtxSynchronize().setCtx(100); }).status.ok());
  client_->Send([&](wire::Call::Builder c) { c.initGraphExecDestroy().setExec(60); }, false);
  ASSERT_TRUE(ping().ok());
  EXPECT_EQ(memset(half.dptr).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_TRUE(test::WaitFor([&] { return session_->Info().device_bytes[0] == 0; },
                            std::chrono::seconds(10)));
  // Now the larger graph fits.
  EXPECT_TRUE(instantiate(70, 72).status.ok());
  client_.reset();
  runner_.join();
  EXPECT_EQ(BackendMemory(1).first, BackendMemory(1).second);
}

// CUDA arrays, textures and surfaces: an array (or mipmapped array, all its
// levels) past the slice's quota is out of memory, and a destroyed one gives
// its bytes back.
TEST_F(PooledSessionTest, ArraysPastTheQuotaAreOutOfMemory) {
  Start();
  ASSERT_TRUE(CreateContext(0).status.ok());
  auto create = [&](uint64_t array, uint64_t width, uint64_t height, unsigned levels) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = c.initArrayCreate();
      a.setCtx(100);
      a.setArray(array);
      a.setWidth(width);
      a.setHeight(height);
      a.setFormat(CU_AD_FORMAT_FLOAT);
      a.setNumChannels(1);
      a.setLevels(levels);
    });
  };
  // 1024 x 512 floats: 2 MiB, twice the quota.
  EXPECT_EQ(create(700, 1024, 512, 0).status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY);
  ASSERT_TRUE(create(701, 512, 256, 0).status.ok());  // half of it
  EXPECT_EQ(session_->Info().device_bytes, std::vector<uint64_t>{kSliceQuota / 2});
  // Half again, plus a second level: past it.
  EXPECT_EQ(create(702, 512, 256, 2).status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY);
  ASSERT_TRUE(create(703, 512, 256, 0).status.ok());
  client_->Send([&](wire::Call::Builder c) { c.initArrayDestroy().setArray(701); }, false);
  ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
  EXPECT_EQ(session_->Info().device_bytes, std::vector<uint64_t>{kSliceQuota / 2});
  EXPECT_EQ(create(704, 1024, 256, 0).status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY);
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

// A client that announces a payload and never sends it keeps its batch
// executing; a preemption must still take its devices: past the wait, the
// session is closed and frees everything.
TEST_F(PooledSessionTest, PreemptClosesASessionStuckInAnUnfinishedBatch) {
  Start([](Session& s) { s.TEST_SetPreemptBatchWait(std::chrono::milliseconds(200)); });
  ASSERT_TRUE(CreateContext(0).status.ok());
  ReplyResult a = Alloc(4096);
  ASSERT_TRUE(a.status.ok());
  // A callBatch whose copy claims 4096 payload bytes, with none sent.
  capnp::MallocMessageBuilder message;
  auto call = message.initRoot<wire::Call>();
  call.setSeq(1000);
  call.setBulkBytes(4096);
  auto copy = call.initMemcpyHtoD();
  copy.setCtx(100);
  copy.setDst(a.dptr);
  copy.setBytes(4096);
  kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  const auto bytes = words.asBytes();
  const std::vector<uint8_t> header = test::FrameHeader(
      wire::FrameKind::CALL_BATCH, static_cast<uint32_t>(bytes.size()), /*bulk_bytes=*/4096);
  ConstBuffer parts[] = {{header.data(), header.size()}, {bytes.begin(), bytes.size()}};
  const uint64_t read_before = server_observed_->bytes_read();
  ASSERT_TRUE(client_->transport().Write(parts).ok());
  // The session has read the header and the message and waits for the
  // payload that never comes.
  ASSERT_TRUE(test::WaitFor(
      [&] {
        return server_observed_->bytes_read() >= read_before + header.size() + bytes.size() &&
               server_observed_->reading();
      },
      std::chrono::seconds(10)));
  const auto start = std::chrono::steady_clock::now();
  session_->Preempt("preempted by the schedule: test");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  // Closed, not notified: the client's next read finds the connection gone.
  Frame frame;
  const bool notified = ReadFrame(client_->transport(), &frame).ok();
  EXPECT_FALSE(notified) << "the stuck batch let Preempt through";
  if (notified) client_.reset();
  runner_.join();
  EXPECT_EQ(session_->Info().bytes_allocated, 0u);
  EXPECT_EQ(BackendMemory(1).first, BackendMemory(1).second);
}

TEST_F(PooledSessionTest, PreemptedBeforeItStartsRefusesTheHandshake) {
  Frame frame = Start([](Session& s) { s.Preempt("preempted by the schedule: early"); });
  capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
  Status status = StatusFromWire(reader.getRoot<wire::HelloReply>().getStatus());
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_DEVICE_UNAVAILABLE);
  EXPECT_EQ(status.message(), "preempted by the schedule: early");
}

// --- compute shares on the CUDA backend (fake driver) -------------------------
// The fake driver (test/server/backend/cuda/fake_driver.cc) has 132 SMs per device,
// partitions of at least 8 aligned to 8; fake_cuda_old lacks green contexts.

template <typename Fn>
Fn FakeHook(const char* library, const char* name) {
  void* handle = dlopen(library, RTLD_NOW | RTLD_NOLOAD);
  return handle != nullptr ? reinterpret_cast<Fn>(dlsym(handle, name)) : nullptr;
}

// Sessions holding slices of the CUDA backend's device 0.
class CudaSliceSessionTest : public ::testing::Test {
 protected:
  struct Running {
    std::unique_ptr<Session> session;
    std::thread runner;
    std::unique_ptr<RawClient> client;
    std::string mechanism;
    int32_t sm_attribute = 0;
  };

  void Load(const char* driver) {
    Status status = backend::CreateCudaBackend({.driver_path = driver}, &backend_);
    ASSERT_TRUE(status.ok()) << status.ToString();
  }
  void TearDown() override {
    for (auto& r : running_) {
      r->client.reset();
      r->runner.join();
      r->session.reset();
    }
  }

  // Starts a session holding slice `slice` of `slices` of device 0.
  Running& Start(int slice, int slices) {
    SessionGrant grant;
    grant.pooled = true;
    grant.pool = "dev";
    SessionDevice device;
    device.backend_device = 0;
    device.memory_quota = 1 << 20;
    device.compute_share = 1.0 / slices;
    device.slice = slice;
    device.slices_per_gpu = slices;
    grant.devices.push_back(device);
    std::unique_ptr<Transport> server_side, client_side;
    EXPECT_TRUE(MakeTransportPair(&server_side, &client_side).ok());
    capnp::MallocMessageBuilder hello;
    hello.initRoot<wire::Hello>().setProgram("slice_test");
    auto r = std::make_unique<Running>();
    r->session = std::make_unique<Session>(10 + running_.size(), std::move(server_side), *backend_,
                                           hello.getRoot<wire::Hello>().asReader(), grant);
    Session* session = r->session.get();
    r->runner = std::thread([session] { session->Run(); });
    r->client = std::make_unique<RawClient>(std::move(client_side));
    Frame frame;
    EXPECT_TRUE(ReadFrame(r->client->transport(), &frame).ok());
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    auto reply = reader.getRoot<wire::HelloReply>();
    EXPECT_TRUE(StatusFromWire(reply.getStatus()).ok());
    if (reply.getSlices().size() == 1 && reply.getDevices().size() == 1) {
      r->mechanism = reply.getSlices()[0].getMechanism().cStr();
      r->sm_attribute =
          reply.getDevices()[0].getAttributes()[CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT];
    }
    running_.push_back(std::move(r));
    return *running_.back();
  }

  static ReplyResult CreateContext(Running& r) {
    return r.client->Call([](wire::Call::Builder c) {
      auto a = c.initCtxCreate();
      a.setCtx(100);
      a.setDevice(0);
    });
  }

  std::unique_ptr<backend::GpuBackend> backend_;
  std::vector<std::unique_ptr<Running>> running_;
};

TEST_F(CudaSliceSessionTest, HalvesGetDisjointSmPartitionsAndNoThrottle) {
  Load(FAKE_FULL_PATH);
  auto greens = FakeHook<int (*)(unsigned*, unsigned*, int)>(FAKE_FULL_PATH, "fake_green_contexts");
  ASSERT_NE(greens, nullptr);
  Running& a = Start(0, 2);
  Running& b = Start(1, 2);
  for (Running* r : {&a, &b}) {
    EXPECT_EQ(r->mechanism, "sm-partition (64 SMs)");
    EXPECT_EQ(r->sm_attribute, 64);  // the partition's SMs, not the card's
    EXPECT_EQ(r->session->grant().devices[0].sm_partition_sms, 64);
    EXPECT_FALSE(r->session->TEST_throttled(0));
    ReplyResult created = CreateContext(*r);
    ASSERT_TRUE(created.status.ok()) << created.status.ToString();
  }
  unsigned first[4] = {}, count[4] = {};
  ASSERT_EQ(greens(first, count, 4), 2);
  EXPECT_EQ(count[0], 64u);
  EXPECT_EQ(count[1], 64u);
  EXPECT_TRUE(first[0] + count[0] <= first[1] || first[1] + count[1] <= first[0]);
  // Ending the sessions destroys their green contexts.
  TearDown();
  running_.clear();
  EXPECT_EQ(greens(first, count, 4), 0);
}

TEST_F(CudaSliceSessionTest, TooManySlicesForTheSmsFallBackToThrottling) {
  Load(FAKE_FULL_PATH);
  // 132 / 32 = 4 SMs per slice, under the driver's minimum of 8.
  Running& r = Start(3, 32);
  EXPECT_EQ(r.mechanism, "launch-throttle");
  EXPECT_TRUE(r.session->TEST_throttled(0));
}

TEST_F(CudaSliceSessionTest, DriverWithoutGreenContextsThrottles) {
  Load(FAKE_OLD_PATH);
  Running& r = Start(1, 2);
  EXPECT_EQ(r.mechanism, "launch-throttle");
  EXPECT_TRUE(r.session->TEST_throttled(0));
  const int card = backend_->Devices()[0].attributes[CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT];
  EXPECT_EQ(r.sm_attribute, card / 2);
  ReplyResult created = CreateContext(r);
  EXPECT_TRUE(created.status.ok()) << created.status.ToString();
}

// The fake driver has no cuCtxResetPersistingL2Cache: the CUDA backend loads
// it without, and answers the call CUDA_ERROR_NOT_SUPPORTED.
TEST_F(CudaSliceSessionTest, ResetPersistingL2CacheWithoutTheEntryPointIsNotSupported) {
  Load(FAKE_FULL_PATH);
  Running& r = Start(0, 1);
  ASSERT_TRUE(CreateContext(r).status.ok());
  const uint64_t reset = r.client->Send(
      [](wire::Call::Builder c) { c.initCtxResetPersistingL2Cache().setCtx(100); }, false);
  ReplyResult ping = r.client->Call([](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(ping.status.cuda_result(), CUDA_ERROR_NOT_SUPPORTED) << ping.status.ToString();
  EXPECT_EQ(ping.latched_from, reset);
}

// --- stream-ordered allocation and memory pools --------------------------------

constexpr uint64_t kDefaultPool = 900;
constexpr uint64_t kCreatedPool = 901;
constexpr uint64_t kPoolStream = 9;

// Calls of the stream-ordered allocator, as the client builds them.
void BuildPoolCreate(wire::Call::Builder c, uint64_t pool, int device, bool is_default,
                     uint64_t max_size = 0) {
  auto a = c.initMemPoolCreate();
  a.setPool(pool);
  a.setDevice(device);
  a.setIsDefault(is_default);
  a.setMaxSize(max_size);
}
void BuildAllocAsync(wire::Call::Builder c, uint64_t pool, uint64_t bytes,
                     uint64_t stream = kPoolStream) {
  auto a = OnStream(c.initMemAllocAsync(), stream);
  a.setPool(pool);
  a.setBytes(bytes);
}
void BuildFreeAsync(wire::Call::Builder c, uint64_t dptr, uint64_t stream = kPoolStream) {
  auto a = OnStream(c.initMemFreeAsync(), stream);
  a.setDptr(dptr);
}
void BuildPoolAttribute(wire::Call::Builder c, bool set, uint64_t pool, CUmemPool_attribute attr,
                        uint64_t value = 0) {
  auto a = set ? c.initMemPoolSetAttribute() : c.initMemPoolGetAttribute();
  a.setPool(pool);
  a.setAttribute(attr);
  a.setValue(value);
}

TEST_F(SessionTest, AsyncAllocationIsUsableInStreamOrderUntilItsAsyncFree) {
  CreateContext();
  CreateStream(kPoolStream);
  client_->Send([](wire::Call::Builder c) { BuildPoolCreate(c, kDefaultPool, 0, true); }, false);
  ReplyResult alloc =
      client_->Call([](wire::Call::Builder c) { BuildAllocAsync(c, kDefaultPool, 4096); });
  ASSERT_TRUE(alloc.status.ok()) << alloc.status.ToString();
  ASSERT_NE(alloc.dptr, 0u);
  Fill(kPoolStream, alloc.dptr, 0xAB, 4096);
  ReplyResult out = CopyOut(kPoolStream, alloc.dptr, 4096);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.bulk, std::vector<uint8_t>(4096, 0xAB));
  // Copies on another stream may use it too (the range is the session's).
  ReplyResult legacy = CopyOut(0, alloc.dptr, 16);
  EXPECT_TRUE(legacy.status.ok()) << legacy.status.ToString();
  client_->Send([&](wire::Call::Builder c) { BuildFreeAsync(c, alloc.dptr); }, false);
  // After the free, the range is no longer the session's.
  ReplyResult after = CopyOut(kPoolStream, alloc.dptr, 16);
  EXPECT_EQ(after.status.cuda_result(), CUDA_ERROR_INVALID_VALUE) << after.status.ToString();
  // Once the stream is idle past the free, its quota is back.
  EXPECT_TRUE(Sync(kPoolStream).status.ok());
  EXPECT_EQ(session_->Info().bytes_allocated, 0u);
}

TEST_F(SessionTest, BadPoolsAndAsyncFreesGetCudaErrors) {
  CreateContext();
  CreateStream(kPoolStream);
  // An unknown pool.
  ReplyResult unknown =
      client_->Call([](wire::Call::Builder c) { BuildAllocAsync(c, 12345, 4096); });
  EXPECT_EQ(unknown.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE) << unknown.status.ToString();
  ReplyResult get_unknown = client_->Call([](wire::Call::Builder c) {
    BuildPoolAttribute(c, false, 12345, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD);
  });
  EXPECT_EQ(get_unknown.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  // A pool on a device the session lacks: latched.
  const uint64_t bad_device = client_->Send(
      [](wire::Call::Builder c) { BuildPoolCreate(c, kCreatedPool, 7, false); }, false);
  ReplyResult ping = client_->Call([](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(ping.status.cuda_result(), CUDA_ERROR_INVALID_DEVICE) << ping.status.ToString();
  EXPECT_EQ(ping.latched_from, bad_device);
  // The default pool cannot be destroyed.
  client_->Send([](wire::Call::Builder c) { BuildPoolCreate(c, kDefaultPool, 0, true); }, false);
  client_->Send([](wire::Call::Builder c) { c.initMemPoolDestroy().setPool(kDefaultPool); }, false);
  ping = client_->Call([](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(ping.status.cuda_result(), CUDA_ERROR_INVALID_VALUE) << ping.status.ToString();
  // Zero bytes, an unknown attribute.
  ReplyResult zero =
      client_->Call([](wire::Call::Builder c) { BuildAllocAsync(c, kDefaultPool, 0); });
  EXPECT_EQ(zero.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  ReplyResult bad_attr = client_->Call([](wire::Call::Builder c) {
    BuildPoolAttribute(c, false, kDefaultPool, static_cast<CUmemPool_attribute>(999));
  });
  EXPECT_EQ(bad_attr.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  // An async free of what is no allocation, and on an unknown stream.
  const uint64_t d = Alloc(4096);
  client_->Send([&](wire::Call::Builder c) { BuildFreeAsync(c, d + 16); }, false);
  ping = client_->Call([](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(ping.status.cuda_result(), CUDA_ERROR_INVALID_VALUE) << ping.status.ToString();
  client_->Send([&](wire::Call::Builder c) { BuildFreeAsync(c, d, 4242); }, false);
  ping = client_->Call([](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(ping.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE) << ping.status.ToString();
  // The allocation is still there: an async free of an ordinary allocation works.
  client_->Send([&](wire::Call::Builder c) { BuildFreeAsync(c, d); }, false);
  ping = client_->Call([](wire::Call::Builder c) { c.setPing(); });
  EXPECT_TRUE(ping.status.ok()) << ping.status.ToString();
}

TEST_F(SessionTest, PoolAttributesAreStoredAndUsageIsCounted) {
  CreateContext();
  CreateStream(kPoolStream);
  client_->Send([](wire::Call::Builder c) { BuildPoolCreate(c, kCreatedPool, 0, false, 1 << 20); },
                false);
  auto get = [&](CUmemPool_attribute attr) {
    ReplyResult r = client_->Call(
        [&](wire::Call::Builder c) { BuildPoolAttribute(c, false, kCreatedPool, attr); });
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    return r.value;
  };
  EXPECT_EQ(get(CU_MEMPOOL_ATTR_RELEASE_THRESHOLD), 0);
  client_->Send(
      [](wire::Call::Builder c) {
        BuildPoolAttribute(c, true, kCreatedPool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, 1 << 30);
      },
      false);
  client_->Send(
      [](wire::Call::Builder c) {
        BuildPoolAttribute(c, true, kCreatedPool, CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC, 0);
      },
      false);
  EXPECT_EQ(get(CU_MEMPOOL_ATTR_RELEASE_THRESHOLD), int64_t{1} << 30);
  EXPECT_EQ(get(CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC), 0);
  EXPECT_EQ(get(CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES), 1);
  ReplyResult a =
      client_->Call([](wire::Call::Builder c) { BuildAllocAsync(c, kCreatedPool, 4096); });
  ASSERT_TRUE(a.status.ok()) << a.status.ToString();
  EXPECT_EQ(get(CU_MEMPOOL_ATTR_USED_MEM_CURRENT), 4096);
  EXPECT_EQ(get(CU_MEMPOOL_ATTR_USED_MEM_HIGH), 4096);
  // The pool's own maximum size holds.
  ReplyResult over =
      client_->Call([](wire::Call::Builder c) { BuildAllocAsync(c, kCreatedPool, 1 << 20); });
  EXPECT_EQ(over.status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY) << over.status.ToString();
  client_->Send([&](wire::Call::Builder c) { BuildFreeAsync(c, a.dptr); }, false);
  EXPECT_TRUE(Sync(kPoolStream).status.ok());
  EXPECT_EQ(get(CU_MEMPOOL_ATTR_USED_MEM_CURRENT), 0);
  client_->Send(
      [](wire::Call::Builder c) {
        BuildPoolAttribute(c, true, kCreatedPool, CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0);
      },
      false);
  EXPECT_EQ(get(CU_MEMPOOL_ATTR_USED_MEM_HIGH), 0);
  client_->Send(
      [](wire::Call::Builder c) {
        auto t = c.initMemPoolTrimTo();
        t.setPool(kCreatedPool);
        t.setMinBytesToKeep(0);
      },
      false);
  // A pool destroyed while an allocation from it is outstanding: the memory
  // stays usable until it is freed.
  ReplyResult b =
      client_->Call([](wire::Call::Builder c) { BuildAllocAsync(c, kCreatedPool, 4096); });
  ASSERT_TRUE(b.status.ok()) << b.status.ToString();
  client_->Send([](wire::Call::Builder c) { c.initMemPoolDestroy().setPool(kCreatedPool); }, false);
  Fill(kPoolStream, b.dptr, 0x11, 4096);
  ReplyResult out = CopyOut(kPoolStream, b.dptr, 4096);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.bulk, std::vector<uint8_t>(4096, 0x11));
  // Left allocated: the session's end frees it (EndSession checks).
}

TEST_F(SessionTest, ProfilerControlIsAcceptedInAContext) {
  CreateContext();
  client_->Send(
      [](wire::Call::Builder c) {
        auto p = c.initProfilerControl();
        p.setCtx(100);
        p.setStart(true);
      },
      false);
  client_->Send([](wire::Call::Builder c) { c.initProfilerControl().setCtx(100); }, false);
  ReplyResult ping = client_->Call([](wire::Call::Builder c) { c.setPing(); });
  EXPECT_TRUE(ping.status.ok()) << ping.status.ToString();
  client_->Send([](wire::Call::Builder c) { c.initProfilerControl().setCtx(555); }, false);
  ping = client_->Call([](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(ping.status.cuda_result(), CUDA_ERROR_INVALID_CONTEXT) << ping.status.ToString();
}

TEST_F(SessionTest, StreamAttributesAreStoredCheckedAndCopied) {
  CreateContext();
  CreateStream(kPoolStream);
  CreateStream(kPoolStream + 1);
  const uint64_t d = Alloc(1 << 16);
  auto set_window = [&](uint64_t stream, uint64_t base, uint64_t bytes, float ratio) {
    return client_->Send(
        [&](wire::Call::Builder c) {
          auto a = OnStream(c.initStreamSetAttribute(), stream);
          a.setAttribute(CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW);
          a.setWindowBase(base);
          a.setWindowBytes(bytes);
          a.setHitRatio(ratio);
          a.setHitProp(CU_ACCESS_PROPERTY_PERSISTING);
          a.setMissProp(CU_ACCESS_PROPERTY_STREAMING);
        },
        false);
  };
  auto get = [&](uint64_t stream, CUlaunchAttributeID attr) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = OnStream(c.initStreamGetAttribute(), stream);
      a.setAttribute(attr);
    });
  };
  auto ping = [&] { return client_->Call([](wire::Call::Builder c) { c.setPing(); }); };
  set_window(kPoolStream, d, 4096, 0.5f);
  client_->Send(
      [](wire::Call::Builder c) {
        auto a = OnStream(c.initStreamSetAttribute(), kPoolStream);
        a.setAttribute(CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY);
        a.setValue(CU_SYNC_POLICY_BLOCKING_SYNC);
      },
      false);
  EXPECT_TRUE(ping().status.ok());
  auto expect_set = [&](uint64_t stream) {
    ReplyResult window = get(stream, CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW);
    ASSERT_TRUE(window.status.ok()) << window.status.ToString();
    EXPECT_TRUE(window.stream_attribute);
    EXPECT_EQ(window.window_base, d);
    EXPECT_EQ(window.window_bytes, 4096u);
    EXPECT_EQ(window.hit_ratio, 0.5f);
    EXPECT_EQ(window.hit_prop, CU_ACCESS_PROPERTY_PERSISTING);
    EXPECT_EQ(window.miss_prop, CU_ACCESS_PROPERTY_STREAMING);
    ReplyResult policy = get(stream, CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY);
    ASSERT_TRUE(policy.status.ok()) << policy.status.ToString();
    EXPECT_EQ(policy.sync_policy, static_cast<uint32_t>(CU_SYNC_POLICY_BLOCKING_SYNC));
  };
  expect_set(kPoolStream);
  // A second stream starts with the defaults, then gets src's by copy.
  ReplyResult fresh = get(kPoolStream + 1, CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW);
  EXPECT_EQ(fresh.window_bytes, 0u);
  EXPECT_EQ(get(kPoolStream + 1, CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY).sync_policy,
            static_cast<uint32_t>(CU_SYNC_POLICY_AUTO));
  client_->Send(
      [](wire::Call::Builder c) {
        auto a = c.initStreamCopyAttributes();
        a.setDstCtx(100);
        a.setDst(kPoolStream + 1);
        a.setSrcCtx(100);
        a.setSrc(kPoolStream);
      },
      false);
  EXPECT_TRUE(ping().status.ok());
  expect_set(kPoolStream + 1);
  // Bad input: a window outside the session's memory, a ratio past 1, an
  // unknown policy, an unknown attribute, an unknown stream.
  const uint64_t outside = set_window(kPoolStream, d + (1 << 16), 4096, 0.5f);
  ReplyResult bad = ping();
  EXPECT_EQ(bad.status.cuda_result(), CUDA_ERROR_INVALID_VALUE) << bad.status.ToString();
  EXPECT_EQ(bad.latched_from, outside);
  set_window(kPoolStream, d, 4096, 1.5f);
  EXPECT_EQ(ping().status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  client_->Send(
      [](wire::Call::Builder c) {
        auto a = OnStream(c.initStreamSetAttribute(), kPoolStream);
        a.setAttribute(CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY);
        a.setValue(77);
      },
      false);
  EXPECT_EQ(ping().status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(get(kPoolStream, CU_LAUNCH_ATTRIBUTE_PRIORITY).status.cuda_result(),
            CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_EQ(get(4242, CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW).status.cuda_result(),
            CUDA_ERROR_INVALID_HANDLE);
}

// Stream memory operations, as the client builds them.
void BuildMemOp(wire::Call::Builder c, uint64_t stream, CUstreamBatchMemOpType operation,
                uint64_t address, uint64_t value, unsigned flags = 0) {
  auto a = OnStream(c.initStreamMemOps(), stream);
  auto op = a.initOps(1)[0];
  op.setOperation(operation);
  op.setAddress(address);
  op.setValue(value);
  op.setFlags(flags);
}

TEST_F(SessionTest, StreamWaitValueHoldsItsStreamUntilAnotherStreamWritesIt) {
  CreateContext();
  CreateStream(kPoolStream);
  CreateStream(kProbe, CU_STREAM_NON_BLOCKING);
  const uint64_t d = Alloc(4096);
  Fill(kProbe, d, 0, 4096);
  ASSERT_TRUE(Sync(kProbe).status.ok());
  // kPoolStream waits for d[0] == 7 (32-bit), then fills the rest.
  client_->Send(
      [&](wire::Call::Builder c) {
        BuildMemOp(c, kPoolStream, CU_STREAM_MEM_OP_WAIT_VALUE_32, d, 7, CU_STREAM_WAIT_VALUE_EQ);
      },
      false);
  Fill(kPoolStream, d + 64, 0xAB, 64);
  EXPECT_EQ(Query(kPoolStream).status.cuda_result(), CUDA_ERROR_NOT_READY);
  ReplyResult before = CopyOut(kProbe, d + 64, 64);
  ASSERT_TRUE(before.status.ok()) << before.status.ToString();
  EXPECT_EQ(before.bulk, std::vector<uint8_t>(64, 0));
  // A 64-bit write of 7 on the other stream releases it (little-endian:
  // the low word is 7).
  client_->Send(
      [&](wire::Call::Builder c) { BuildMemOp(c, kProbe, CU_STREAM_MEM_OP_WRITE_VALUE_64, d, 7); },
      false);
  ASSERT_TRUE(Sync(kPoolStream).status.ok());
  ReplyResult after = CopyOut(kProbe, d + 64, 64);
  EXPECT_EQ(after.bulk, std::vector<uint8_t>(64, 0xAB));
  // A batch: GEQ on a 64-bit value already reached, a write, a barrier.
  client_->Send(
      [&](wire::Call::Builder c) {
        auto a = OnStream(c.initStreamMemOps(), kPoolStream);
        auto ops = a.initOps(3);
        ops[0].setOperation(CU_STREAM_MEM_OP_WAIT_VALUE_64);
        ops[0].setAddress(d);
        ops[0].setValue(5);
        ops[0].setFlags(CU_STREAM_WAIT_VALUE_GEQ);
        ops[1].setOperation(CU_STREAM_MEM_OP_WRITE_VALUE_32);
        ops[1].setAddress(d + 8);
        ops[1].setValue(0x01020304);
        ops[2].setOperation(CU_STREAM_MEM_OP_BARRIER);
        ops[2].setFlags(CU_STREAM_MEMORY_BARRIER_TYPE_GPU);
      },
      false);
  ReplyResult written = CopyOut(kPoolStream, d + 8, 4);
  ASSERT_TRUE(written.status.ok()) << written.status.ToString();
  EXPECT_EQ(written.bulk, (std::vector<uint8_t>{4, 3, 2, 1}));
}

TEST_F(SessionTest, BadStreamMemoryOperationsGetCudaErrors) {
  CreateContext();
  CreateStream(kPoolStream);
  const uint64_t d = Alloc(4096);
  auto expect_latched = [&](CUstreamBatchMemOpType operation, uint64_t address, uint64_t value,
                            unsigned flags) {
    const uint64_t seq = client_->Send(
        [&](wire::Call::Builder c) {
          BuildMemOp(c, kPoolStream, operation, address, value, flags);
        },
        false);
    ReplyResult ping = client_->Call([](wire::Call::Builder c) { c.setPing(); });
    EXPECT_EQ(ping.status.cuda_result(), CUDA_ERROR_INVALID_VALUE) << ping.status.ToString();
    EXPECT_EQ(ping.latched_from, seq);
  };
  expect_latched(CU_STREAM_MEM_OP_WRITE_VALUE_32, d + 2, 1, 0);       // unaligned
  expect_latched(CU_STREAM_MEM_OP_WRITE_VALUE_64, d + 4096, 1, 0);    // outside
  expect_latched(CU_STREAM_MEM_OP_WAIT_VALUE_32, d, 1, 7);            // bad flags
  expect_latched(CU_STREAM_MEM_OP_WRITE_VALUE_32, d, 1ull << 40, 0);  // too wide
  expect_latched(static_cast<CUstreamBatchMemOpType>(42), d, 1, 0);   // unknown
  // Nothing was written.
  ReplyResult out = CopyOut(kPoolStream, d, 8);
  EXPECT_EQ(out.bulk, std::vector<uint8_t>(8, 0));
}

TEST_F(SessionTest, AStreamWaitingForAValueNeverWrittenDoesNotHoldTheSessionsEnd) {
  CreateContext();
  CreateStream(kPoolStream);
  const uint64_t d = Alloc(4096);
  client_->Send(
      [&](wire::Call::Builder c) {
        BuildMemOp(c, kPoolStream, CU_STREAM_MEM_OP_WAIT_VALUE_32, d, 1, CU_STREAM_WAIT_VALUE_EQ);
      },
      false);
  EXPECT_EQ(Query(kPoolStream).status.cuda_result(), CUDA_ERROR_NOT_READY);
  // TearDown ends the session: destroying the stream ends the wait.
}

TEST_F(SessionTest, ContextEventsCaptureEveryStreamAndHoldLaterWork) {
  CreateContext();
  CreateStream(kHeld);
  CreateStream(kProbe, CU_STREAM_NON_BLOCKING);
  const uint64_t d = Alloc(4096);
  constexpr uint64_t kEvent = 50;
  CreateEvent(kEvent);
  auto ctx_event = [&](bool record, uint64_t ctx, uint64_t event) {
    return client_->Send(
        [&](wire::Call::Builder c) {
          auto a = record ? c.initCtxRecordEvent() : c.initCtxWaitEvent();
          a.setCtx(ctx);
          a.setEvent(event);
        },
        false);
  };
  auto query_event = [&] {
    return client_->Call([](wire::Call::Builder c) { c.initEventQuery().setEvent(kEvent); });
  };
  // kHeld is held by a gate: a context-wide record is not reached.
  const uint64_t gate = client_->SendGate(100, kHeld);
  ReplyResult reached = client_->ReadWithin();
  ASSERT_TRUE(reached.gate_reached);
  ctx_event(true, 100, kEvent);
  EXPECT_EQ(query_event().status.cuda_result(), CUDA_ERROR_NOT_READY);
  // After a context-wide wait, even the non-blocking stream's work waits.
  ctx_event(false, 100, kEvent);
  Fill(kProbe, d, 0x5C, 4096);
  EXPECT_EQ(Query(kProbe).status.cuda_result(), CUDA_ERROR_NOT_READY);
  client_->OpenGate(gate);
  ASSERT_TRUE(Sync(kProbe).status.ok());
  EXPECT_TRUE(query_event().status.ok());
  ReplyResult out = CopyOut(kProbe, d, 4096);
  EXPECT_EQ(out.bulk, std::vector<uint8_t>(4096, 0x5C));
  // Once reached, the wait holds nothing back.
  Fill(kProbe, d, 0x11, 16);
  EXPECT_TRUE(Sync(kProbe).status.ok());
  // An event of another context, an unknown event.
  CreateContext(101);
  const uint64_t other = ctx_event(true, 101, kEvent);
  ReplyResult ping = client_->Call([](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(ping.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE) << ping.status.ToString();
  EXPECT_EQ(ping.latched_from, other);
  ctx_event(false, 100, 4242);
  ping = client_->Call([](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(ping.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE) << ping.status.ToString();
}

TEST_F(PooledSessionTest, AsyncAllocationsChargeTheQuotaUntilTheirFreeExecutes) {
  Start();
  ASSERT_TRUE(CreateContext(0).status.ok());
  client_->Send([](wire::Call::Builder c) { OnStream(c.initStreamCreate(), kPoolStream); }, false);
  client_->Send([](wire::Call::Builder c) { BuildPoolCreate(c, kDefaultPool, 0, true); }, false);
  client_->Send([](wire::Call::Builder c) { BuildPoolCreate(c, kCreatedPool, 0, false); }, false);
  ReplyResult a = client_->Call(
      [](wire::Call::Builder c) { BuildAllocAsync(c, kDefaultPool, kSliceQuota / 2); });
  ASSERT_TRUE(a.status.ok()) << a.status.ToString();
  // Past the quota, from either pool: out of memory, naming the slice.
  for (uint64_t pool : {kDefaultPool, kCreatedPool}) {
    ReplyResult over = client_->Call(
        [&](wire::Call::Builder c) { BuildAllocAsync(c, pool, kSliceQuota / 2 + 1); });
    EXPECT_EQ(over.status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY) << over.status.ToString();
    EXPECT_NE(over.status.message().find("slice 2/4"), std::string::npos);
  }
  // Ordinary allocations share the same quota.
  EXPECT_EQ(Alloc(kSliceQuota / 2 + 1).status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY);
  // The free is held behind a gate: until it executes, the quota stays used.
  const uint64_t gate = client_->SendGate(100, kPoolStream);
  client_->Send([&](wire::Call::Builder c) { BuildFreeAsync(c, a.dptr); }, false);
  ReplyResult reached = client_->ReadWithin();
  ASSERT_TRUE(reached.gate_reached);
  ReplyResult held = client_->Call(
      [](wire::Call::Builder c) { BuildAllocAsync(c, kCreatedPool, kSliceQuota / 2 + 1); });
  EXPECT_EQ(held.status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY) << held.status.ToString();
  EXPECT_EQ(session_->Info().device_bytes, std::vector<uint64_t>{kSliceQuota / 2});
  client_->OpenGate(gate);
  // Once the stream is idle past the free, its quota is back.
  ReplyResult sync = client_->Call(
      [](wire::Call::Builder c) { OnStream(c.initStreamSynchronize(), kPoolStream); });
  ASSERT_TRUE(sync.status.ok()) << sync.status.ToString();
  EXPECT_EQ(session_->Info().device_bytes, std::vector<uint64_t>{0});
  ReplyResult whole =
      client_->Call([](wire::Call::Builder c) { BuildAllocAsync(c, kCreatedPool, kSliceQuota); });
  EXPECT_TRUE(whole.status.ok()) << whole.status.ToString();
  // The session's end frees it all.
  client_.reset();
  runner_.join();
  EXPECT_EQ(session_->Info().bytes_allocated, 0u);
  EXPECT_EQ(BackendMemory(1).first, BackendMemory(1).second);
}

// The fake driver has none of the stream-ordered allocator's entry points, nor
// the profiler's: the CUDA backend loads without them and answers
// CUDA_ERROR_NOT_SUPPORTED.
TEST_F(CudaSliceSessionTest, PoolsAndProfilerWithoutTheEntryPointsAreNotSupported) {
  Load(FAKE_FULL_PATH);
  Running& r = Start(0, 1);
  ASSERT_TRUE(CreateContext(r).status.ok());
  const uint64_t create = r.client->Send(
      [](wire::Call::Builder c) { BuildPoolCreate(c, kCreatedPool, 0, false); }, false);
  ReplyResult ping = r.client->Call([](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(ping.status.cuda_result(), CUDA_ERROR_NOT_SUPPORTED) << ping.status.ToString();
  EXPECT_EQ(ping.latched_from, create);
  const uint64_t profile = r.client->Send(
      [](wire::Call::Builder c) {
        auto p = c.initProfilerControl();
        p.setCtx(100);
        p.setStart(true);
      },
      false);
  ping = r.client->Call([](wire::Call::Builder c) { c.setPing(); });
  EXPECT_EQ(ping.status.cuda_result(), CUDA_ERROR_NOT_SUPPORTED) << ping.status.ToString();
  EXPECT_EQ(ping.latched_from, profile);
}

TEST(ComputeMechanismTest, NamesEachMechanism) {
  SessionDevice device;
  EXPECT_EQ(ComputeMechanism(device), "whole-gpu");
  device.compute_share = 0.25;
  EXPECT_EQ(ComputeMechanism(device), "launch-throttle");
  device.sm_partition_sms = 32;
  EXPECT_EQ(ComputeMechanism(device), "sm-partition (32 SMs)");
}

TEST(ComputeMechanismTest, HostBackendKeepsLaunchThrottling) {
  std::unique_ptr<backend::GpuBackend> host;
  ASSERT_TRUE(test::CreateTestHostBackend(16 << 20, &host).ok());
  SessionDevice device;
  device.compute_share = 0.5;
  device.slices_per_gpu = 2;
  device.slice = 1;
  ChooseComputeMechanism(*host, &device);
  EXPECT_EQ(device.sm_partition_sms, 0);
  EXPECT_EQ(ComputeMechanism(device), "launch-throttle");
}

// --- JIT linking and cooperative launches --------------------------------------------

class SessionLinkTest : public SessionTest {
 protected:
  // a.ptx calls op, which only b.ptx defines; each has a kernel of its own.
  static std::vector<uint8_t> Ptx(std::string_view text) {
    std::vector<uint8_t> bytes(text.begin(), text.end());
    bytes.push_back(0);
    return bytes;
  }
  static std::vector<uint8_t> UsesOp() {
    return Ptx(R"ptx(.version 9.0
.target sm_90
.address_size 64
.extern .func (.param .b32 r) op(.param .b32 x);
.visible .entry uses_op(.param .u64 p) { ret; }
)ptx");
  }
  static std::vector<uint8_t> DefinesOp() {
    return Ptx(R"ptx(.version 9.0
.target sm_90
.address_size 64
.visible .func (.param .b32 r) op(.param .b32 x) { ret; }
.visible .entry other(.param .u32 n) { ret; }
)ptx");
  }

  // linkCreate of `link` in context 100 with both logs (256 bytes each),
  // the wall time and verbose logging.
  ReplyResult CreateLink(uint64_t link) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = c.initLinkCreate();
      a.setCtx(100);
      a.setLink(link);
      const std::pair<CUjit_option, uint64_t> options[] = {
          {CU_JIT_INFO_LOG_BUFFER, 0},  {CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES, 256},
          {CU_JIT_ERROR_LOG_BUFFER, 0}, {CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, 256},
          {CU_JIT_WALL_TIME, 0},        {CU_JIT_LOG_VERBOSE, 1}};
      auto list = a.initOptions(std::size(options));
      for (unsigned i = 0; i < std::size(options); ++i) {
        list[i].setOption(options[i].first);
        list[i].setValue(options[i].second);
      }
    });
  }
  ReplyResult AddPtx(uint64_t link, const char* name, const std::vector<uint8_t>& ptx) {
    return client_->Call(
        [&](wire::Call::Builder c) {
          auto a = c.initLinkAddData();
          a.setLink(link);
          a.setType(CU_JIT_INPUT_PTX);
          a.setName(name);
        },
        ptx);
  }
  ReplyResult Complete(uint64_t link) {
    return client_->Call([&](wire::Call::Builder c) { c.initLinkComplete().setLink(link); });
  }
  ReplyResult Image(uint64_t link) {
    return client_->Call([&](wire::Call::Builder c) { c.initLinkImage().setLink(link); });
  }
};

TEST_F(SessionLinkTest, TwoPtxInputsLinkIntoAModuleWithTheKernelsOfBoth) {
  CreateContext();
  ASSERT_TRUE(CreateLink(900).status.ok());
  for (const auto& [name, ptx] : {std::pair{"a.ptx", UsesOp()}, std::pair{"b.ptx", DefinesOp()}}) {
    const ReplyResult added = AddPtx(900, name, ptx);
    ASSERT_TRUE(added.status.ok() && added.link_result) << added.status.ToString();
    EXPECT_TRUE(added.link_outcome.ok()) << added.link_outcome.ToString();
  }
  const ReplyResult completed = Complete(900);
  ASSERT_TRUE(completed.status.ok() && completed.link_outcome.ok())
      << completed.link_outcome.ToString();
  ASSERT_GT(completed.image_bytes, 0u);
  // The outputs: an empty error log is its NUL alone; the verbose info log
  // fits its buffer; the wall time is a float in the slot's low 32 bits.
  EXPECT_EQ(completed.error_log, "");
  EXPECT_EQ(completed.link_options.at(CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES), 1u);
  EXPECT_NE(completed.info_log.find("linked 2 inputs"), std::string::npos) << completed.info_log;
  EXPECT_EQ(completed.link_options.at(CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES),
            completed.info_log.size() + 1);
  const float ms =
      std::bit_cast<float>(static_cast<uint32_t>(completed.link_options.at(CU_JIT_WALL_TIME)));
  EXPECT_GE(ms, 0.0f);
  // No server pointer comes back in a log buffer's slot.
  EXPECT_EQ(completed.link_options.at(CU_JIT_INFO_LOG_BUFFER), 0u);

  const ReplyResult image = Image(900);
  ASSERT_TRUE(image.status.ok()) << image.status.ToString();
  ASSERT_EQ(image.bulk.size(), completed.image_bytes);
  const ReplyResult loaded = client_->Call(
      [&](wire::Call::Builder c) {
        auto a = c.initModuleLoad();
        a.setCtx(100);
        a.setModule(400);
      },
      image.bulk);
  ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
  EXPECT_EQ(std::set<std::string>(loaded.kernels.begin(), loaded.kernels.end()),
            (std::set<std::string>{"uses_op", "other"}));
  // A complete link takes no more inputs.
  const ReplyResult late = AddPtx(900, "late.ptx", DefinesOp());
  EXPECT_EQ(late.status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  client_->Send([&](wire::Call::Builder c) { c.initModuleUnload().setModule(400); }, false);
  client_->Send([&](wire::Call::Builder c) { c.initLinkDestroy().setLink(900); }, false);
  EXPECT_EQ(Image(900).status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  client_->Send([&](wire::Call::Builder c) { c.initCtxDestroy().setCtx(100); }, false);
  ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
}

TEST_F(SessionLinkTest, AnUnresolvedReferenceFailsWithItsNameInTheErrorLog) {
  CreateContext();
  ASSERT_TRUE(CreateLink(900).status.ok());
  ASSERT_TRUE(AddPtx(900, "a.ptx", UsesOp()).link_outcome.ok());
  const ReplyResult completed = Complete(900);
  ASSERT_TRUE(completed.status.ok() && completed.link_result);
  EXPECT_EQ(completed.link_outcome.cuda_result(), CUDA_ERROR_UNKNOWN);
  EXPECT_EQ(completed.error_log, "error   : Undefined reference to 'op' in 'a.ptx'\n");
  EXPECT_EQ(completed.link_options.at(CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES),
            completed.error_log.size() + 1);
  EXPECT_EQ(completed.image_bytes, 0u);
  EXPECT_EQ(Image(900).status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  // An input that is not what its type says: refused, named in the log.
  const std::vector<uint8_t> junk = {'n', 'o', 't', 0};
  const ReplyResult bad = AddPtx(900, "junk.ptx", junk);
  EXPECT_EQ(bad.link_outcome.cuda_result(), CUDA_ERROR_INVALID_PTX);
  EXPECT_NE(bad.error_log.find("'junk.ptx'"), std::string::npos) << bad.error_log;
  // The context takes its links with it.
  client_->Send([&](wire::Call::Builder c) { c.initCtxDestroy().setCtx(100); }, false);
  EXPECT_EQ(Complete(900).status.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
}

TEST_F(SessionLinkTest, LogBuffersAreBoundedAndPointerOptionsRefused) {
  CreateContext();
  // Pointers into the program never arrive as option values.
  auto create_with = [&](uint64_t link, CUjit_option option) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = c.initLinkCreate();
      a.setCtx(100);
      a.setLink(link);
      auto list = a.initOptions(1);
      list[0].setOption(option);
      list[0].setValue(0x1234);
    });
  };
  EXPECT_EQ(create_with(901, CU_JIT_REFERENCED_KERNEL_NAMES).status.cuda_result(),
            CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_EQ(create_with(901, CU_JIT_GLOBAL_SYMBOL_NAMES).status.cuda_result(),
            CUDA_ERROR_INVALID_VALUE);
  const ReplyResult unknown = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initLinkCreate();
    a.setCtx(100);
    a.setLink(902);
    a.initOptions(1)[0].setOption(CU_JIT_NUM_OPTIONS);
  });
  EXPECT_EQ(unknown.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  // A log size past the bound is clamped: the link works.
  const ReplyResult huge = client_->Call([&](wire::Call::Builder c) {
    auto a = c.initLinkCreate();
    a.setCtx(100);
    a.setLink(903);
    auto list = a.initOptions(2);
    list[0].setOption(CU_JIT_ERROR_LOG_BUFFER);
    list[1].setOption(CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES);
    list[1].setValue(0xffffffffu);
  });
  ASSERT_TRUE(huge.status.ok()) << huge.status.ToString();
  ASSERT_TRUE(AddPtx(903, "a.ptx", UsesOp()).link_outcome.ok());
  EXPECT_EQ(Complete(903).link_options.at(CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES),
            std::string("error   : Undefined reference to 'op' in 'a.ptx'\n").size() + 1);
  client_->Send([&](wire::Call::Builder c) { c.initCtxDestroy().setCtx(100); }, false);
  ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
}

// The global symbol table (CU_JIT_GLOBAL_SYMBOL_*) defines names for the
// inputs: an `.extern .global` it names resolves; its addresses must be the
// session's own.
TEST_F(SessionLinkTest, TheGlobalSymbolTableResolvesExternVariables) {
  CreateContext();
  const uint64_t counter = Alloc(256);
  const std::vector<uint8_t> uses_counter = Ptx(R"ptx(.version 9.0
.target sm_90
.address_size 64
.extern .global .align 4 .u32 counter;
.visible .entry bump() { ret; }
)ptx");
  auto create = [&](uint64_t link, uint64_t address) {
    return client_->Call([&](wire::Call::Builder c) {
      auto a = c.initLinkCreate();
      a.setCtx(100);
      a.setLink(link);
      auto table = a.initGlobalSymbols(1);
      table[0].setName("counter");
      table[0].setAddress(address);
    });
  };
  EXPECT_EQ(create(910, 0x10).status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  ASSERT_TRUE(create(911, counter).status.ok());
  ASSERT_TRUE(AddPtx(911, "counter.ptx", uses_counter).link_outcome.ok());
  const ReplyResult completed = Complete(911);
  EXPECT_TRUE(completed.link_outcome.ok()) << completed.link_outcome.ToString();
  // Without the table the same input leaves counter unresolved.
  ASSERT_TRUE(CreateLink(912).status.ok());
  ASSERT_TRUE(AddPtx(912, "counter.ptx", uses_counter).link_outcome.ok());
  EXPECT_EQ(Complete(912).error_log,
            "error   : Undefined reference to 'counter' in 'counter.ptx'\n");
  client_->Send([&](wire::Call::Builder c) { c.initCtxDestroy().setCtx(100); }, false);
  ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
}

// A cooperative launch of the tiny library's kernel: 128-thread blocks fit
// 16 to an SM on the host backend's model, 132 SMs: 2112 blocks are the most
// that are resident at once, one more is refused (the error latches).
TEST_F(SessionLibraryTest, ACooperativeGridLargerThanCanBeResidentIsRefused) {
  ASSERT_NO_FATAL_FAILURE(RestartWithTinyLibraryKernels());
  CreateContext();
  ASSERT_TRUE(LoadLibrary(600).status.ok());
  ASSERT_TRUE(LoadIntoContext(600, 100, 400, 500).ok());
  const std::vector<uint8_t> params(12, 0);
  auto launch = [&](uint32_t blocks) {
    client_->Send(
        [&](wire::Call::Builder c) {
          auto a = c.initLaunch();
          a.setCtx(100);
          a.setFunction(500);
          a.setGridX(blocks);
          a.setGridY(1);
          a.setGridZ(1);
          a.setBlockX(128);
          a.setBlockY(1);
          a.setBlockZ(1);
          a.setCooperative(true);
        },
        false, params);
    return client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status;
  };
  EXPECT_TRUE(launch(2112).ok());
  EXPECT_EQ(launch(2113).cuda_result(), CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE);
  client_->Send([&](wire::Call::Builder c) { c.initLibraryUnload().setLibrary(600); }, false);
  client_->Send([&](wire::Call::Builder c) { c.initCtxDestroy().setCtx(100); }, false);
  ASSERT_TRUE(client_->Call([&](wire::Call::Builder c) { c.setPing(); }).status.ok());
}

}  // namespace
}  // namespace ferry::server
