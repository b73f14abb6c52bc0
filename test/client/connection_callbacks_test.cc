// Connection's host callbacks (client/connection.h, PostHostGate), driven
// against a real Session and HostBackend in this process over a socketpair:
// the function runs on the host-callback thread once its stream reaches it,
// in order, and its gate opens after it returns; calls that wait are refused
// inside it; a refused gate never runs its function; a lost connection runs
// the functions still pending with the loss; a graph launch runs the
// registered function of each host node; a gate ferry opens itself
// (PostOpenableGate) holds its stream until opened and is told, once, when
// it is refused or its session preempted. Also: waiting for one stream's
// asynchronous copies does not wait for another's, but does wait for the
// copies it depends on through event waits. Every wait is bounded.
#include "client/connection.h"

#include <cuda.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "common/frame.h"
#include "server/session.h"
#include "test/support/connection_fixture.h"
#include "test/support/host_backend.h"

namespace ferry::client {
namespace {

using namespace std::chrono_literals;

constexpr auto kTimeout = 10s;
constexpr uint64_t kCtx = 100;
constexpr uint64_t kStream = 7;
constexpr uint64_t kBytes = 4096;  // the size of the copies tests make

class HostCallbackConnectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(test::CreateTestHostBackend(16 << 20, &backend_).ok());
    std::unique_ptr<Transport> server_side, client_side;
    ASSERT_TRUE(MakeTransportPair(&server_side, &client_side).ok());
    const Status open_status =
        loop_.Open(*backend_, std::move(server_side), std::move(client_side), {}, kTimeout);
    ASSERT_TRUE(open_status.ok()) << open_status.ToString();
    ASSERT_TRUE(loop_.CreateContext(kCtx).ok());
    ASSERT_TRUE(loop_.CreateStream(kCtx, kStream).ok());
  }

  void TearDown() override {
    loop_.Close();  // closes the connection; the session frees everything
  }

  Status PostGate(uint64_t stream, Connection::HostFunction fn) {
    return connection_->PostHostGate(
        [stream](wire::Call::Builder c) {
          auto a = c.initHostGate();
          a.setCtx(kCtx);
          a.setStream(stream);
        },
        std::move(fn));
  }
  Status PostOpenableGate(uint64_t stream, Connection::GateReached reached) {
    return connection_->PostOpenableGate(
        [stream](wire::Call::Builder c) {
          auto a = c.initHostGate();
          a.setCtx(kCtx);
          a.setStream(stream);
        },
        std::move(reached));
  }
  Status Sync(uint64_t stream) {
    return connection_->Call([stream](wire::Call::Builder c) {
      auto a = c.initStreamSynchronize();
      a.setCtx(kCtx);
      a.setStream(stream);
    });
  }
  Status Ping() {
    return connection_->Call([](wire::Call::Builder c) { c.setPing(); });
  }
  // kBytes of device memory in kCtx that hold `source` (copied in on kStream,
  // which is then synchronized); 0 after a failure, which the test is told.
  uint64_t AllocHolding(const std::vector<uint8_t>& source) {
    uint64_t dptr = 0;
    EXPECT_TRUE(loop_.Alloc(kCtx, kBytes, &dptr).ok());
    EXPECT_TRUE(loop_.PostHtoD(kCtx, kStream, dptr, source.data(), kBytes).ok());
    EXPECT_TRUE(Sync(kStream).ok());
    return dptr;
  }
  // Holds `stream` behind a host function until `released` is ready.
  void HoldStream(uint64_t stream, std::shared_future<void> released) {
    ASSERT_TRUE(
        PostGate(stream, [released](const Status&, bool) { released.wait_for(kTimeout); }).ok());
  }

  std::unique_ptr<backend::GpuBackend> backend_;
  test::LoopbackConnection loop_;
  std::unique_ptr<Connection>& connection_ = loop_.connection_ptr();
};

// What one host function saw.
struct Seen {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int> order;
  bool on_callback_thread = true;
  std::thread::id thread;
  Status status;
  bool stream_failed = false;
  int calls = 0;

  Connection::HostFunction Record(int id) {
    return [this, id](const Status& s, bool failed) {
      std::lock_guard<std::mutex> lock(mu);
      order.push_back(id);
      on_callback_thread = on_callback_thread && HostCallbackThread::OnThisThread();
      thread = std::this_thread::get_id();
      status = s;
      stream_failed = failed;
      ++calls;
      cv.notify_all();
    };
  }
  bool WaitCalls(int n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, kTimeout, [&] { return calls >= n; });
  }
};

TEST_F(HostCallbackConnectionTest, HostFunctionsRunInStreamOrderOnTheCallbackThread) {
  Seen seen;
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(PostGate(kStream, seen.Record(i)).ok());
  ASSERT_TRUE(Sync(kStream).ok());  // returns only once every gate opened
  std::lock_guard<std::mutex> lock(seen.mu);
  EXPECT_EQ(seen.order, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_TRUE(seen.on_callback_thread);
  EXPECT_NE(seen.thread, std::this_thread::get_id());
  EXPECT_TRUE(seen.status.ok()) << seen.status.ToString();
  EXPECT_FALSE(seen.stream_failed);
}

TEST_F(HostCallbackConnectionTest, CallsThatWaitAreRefusedInsideAHostFunction) {
  auto result = std::make_shared<std::promise<Status>>();
  ASSERT_TRUE(PostGate(kStream, [this, result](const Status&, bool) {
                result->set_value(Sync(kStream));  // would wait for itself
              }).ok());
  auto future = result->get_future();
  ASSERT_EQ(future.wait_for(kTimeout), std::future_status::ready);
  const Status refused = future.get();
  EXPECT_EQ(refused.code(), StatusCode::kPermissionDenied) << refused.ToString();
  EXPECT_EQ(refused.cuda_result(), CUDA_ERROR_NOT_PERMITTED);
  EXPECT_TRUE(Sync(kStream).ok());
}

TEST_F(HostCallbackConnectionTest, RefusedGateNeverRunsItsFunctionAndItsErrorIsReportedLater) {
  Seen seen;
  ASSERT_TRUE(PostGate(999, seen.Record(0)).ok());  // no such stream
  const Status ping = Ping();
  EXPECT_EQ(ping.cuda_result(), CUDA_ERROR_INVALID_HANDLE) << ping.ToString();
  ASSERT_TRUE(PostGate(kStream, seen.Record(1)).ok());
  ASSERT_TRUE(Sync(kStream).ok());
  std::lock_guard<std::mutex> lock(seen.mu);
  EXPECT_EQ(seen.order, std::vector<int>{1});
}

// graph host nodes: one launch carries a gate per host node; each runs the
// registered function its gateReached names, in the replay's order. A
// refused launch answers all of its gates at once and runs none.
TEST_F(HostCallbackConnectionTest, AGraphLaunchRunsTheRegisteredFunctionOfEachHostNode) {
  Seen seen;
  connection_->RegisterHostFunction(7, seen.Record(1));
  connection_->RegisterHostFunction(8, seen.Record(2));
  auto post = [&](const std::function<void(wire::Call::Builder)>& fill) {
    return connection_->Post([&](wire::Call::Builder c) { fill(c); });
  };
  ASSERT_TRUE(post([](wire::Call::Builder c) { c.initGraphCreate().setGraph(50); }).ok());
  for (auto [node, function] : {std::pair<uint64_t, uint64_t>{51, 8}, {52, 7}}) {
    ASSERT_TRUE(post([&](wire::Call::Builder c) {
                  auto a = c.initGraphAddNode();
                  a.setGraph(50);
                  a.setNode(node);
                  if (node == 52) a.initDependencies(1).set(0, 51);
                  a.setHost(function);
                }).ok());
  }
  ASSERT_TRUE(post([](wire::Call::Builder c) {
                auto a = c.initGraphInstantiate();
                a.setGraph(50);
                a.setExec(60);
              }).ok());
  auto launch = [&](uint32_t host_nodes) {
    return connection_->PostHostGates(
        [&](wire::Call::Builder c) {
          auto a = c.initGraphLaunchHostNodes();
          a.setCtx(kCtx);
          a.setStream(kStream);
          a.setExec(60);
          a.setHostNodes(host_nodes);
        },
        host_nodes);
  };
  ASSERT_TRUE(launch(2).ok());
  ASSERT_TRUE(launch(2).ok());
  ASSERT_TRUE(Sync(kStream).ok());  // returns only once every gate opened
  {
    std::lock_guard<std::mutex> lock(seen.mu);
    EXPECT_EQ(seen.order, (std::vector<int>{2, 1, 2, 1}));
    EXPECT_TRUE(seen.on_callback_thread);
  }
  ASSERT_TRUE(launch(3).ok());  // the executable graph has 2
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_INVALID_VALUE);
  ASSERT_TRUE(launch(2).ok());
  ASSERT_TRUE(Sync(kStream).ok());
  std::lock_guard<std::mutex> lock(seen.mu);
  EXPECT_EQ(seen.order, (std::vector<int>{2, 1, 2, 1, 2, 1}));
}

TEST_F(HostCallbackConnectionTest, LostConnectionRunsPendingFunctionsWithTheLoss) {
  // The first function holds its stream until released; the second is
  // behind it, so it is still pending when the server goes away.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  Seen first, second;
  ASSERT_TRUE(PostGate(kStream, [&first, released](const Status& s, bool failed) {
                first.Record(0)(s, failed);
                released.wait_for(kTimeout);
              }).ok());
  ASSERT_TRUE(PostGate(kStream, second.Record(1)).ok());
  ASSERT_TRUE(first.WaitCalls(1));
  loop_.session().Stop();
  release.set_value();
  ASSERT_TRUE(second.WaitCalls(1));
  std::lock_guard<std::mutex> lock(second.mu);
  EXPECT_EQ(second.status.code(), StatusCode::kDisconnected) << second.status.ToString();
  EXPECT_TRUE(second.stream_failed);
  EXPECT_EQ(Ping().code(), StatusCode::kDisconnected);
}

// What an openable gate's handler saw (PostOpenableGate): how often it ran,
// with what, and how to open the gate.
struct Reached {
  std::mutex mu;
  std::condition_variable cv;
  int calls = 0;
  Status status;
  std::function<void()> open;

  Connection::GateReached Handler() {
    return [this](Status s, std::function<void()> o) {
      std::lock_guard<std::mutex> lock(mu);
      ++calls;
      status = std::move(s);
      open = std::move(o);
      cv.notify_all();
    };
  }
  bool Wait() {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, kTimeout, [&] { return calls > 0; });
  }
};

// A gate ferry opens itself: reached once, with a way to open it; the stream
// stays held until it is opened, and goes on after.
TEST_F(HostCallbackConnectionTest, AnOpenableGateHoldsItsStreamUntilOpened) {
  Reached gate;
  ASSERT_TRUE(PostOpenableGate(kStream, gate.Handler()).ok());
  ASSERT_TRUE(gate.Wait());
  std::function<void()> open;
  {
    std::lock_guard<std::mutex> lock(gate.mu);
    EXPECT_TRUE(gate.status.ok()) << gate.status.ToString();
    ASSERT_TRUE(gate.open);
    open = gate.open;
  }
  const Status held = connection_->Call([](wire::Call::Builder c) {
    auto a = c.initStreamQuery();
    a.setCtx(kCtx);
    a.setStream(kStream);
  });
  EXPECT_EQ(held.cuda_result(), CUDA_ERROR_NOT_READY) << held.ToString();
  open();
  EXPECT_TRUE(Sync(kStream).ok());
  std::lock_guard<std::mutex> lock(gate.mu);
  EXPECT_EQ(gate.calls, 1);
}

// Refused by the server (no such stream): told once, with the error and no
// way to open (nothing is held).
TEST_F(HostCallbackConnectionTest, ARefusedOpenableGateIsToldSo) {
  Reached gate;
  ASSERT_TRUE(PostOpenableGate(999, gate.Handler()).ok());
  ASSERT_TRUE(gate.Wait());
  std::lock_guard<std::mutex> lock(gate.mu);
  EXPECT_EQ(gate.calls, 1);
  EXPECT_FALSE(gate.status.ok());
  EXPECT_FALSE(gate.open);
}

// A session whose devices are taken away (preempted) opens its gates and
// answers no more calls that want no reply: an openable gate pending then is
// told exactly once — reached (its stream already let go by the server; an
// open is harmless) or, when the notice comes first, with the revocation —
// so nothing waits for it forever.
TEST_F(HostCallbackConnectionTest, AnOpenableGatePendingWhenTheSessionIsPreemptedIsToldOnce) {
  std::promise<void> release;
  HoldStream(kStream, release.get_future().share());
  Reached gate;
  ASSERT_TRUE(PostOpenableGate(kStream, gate.Handler()).ok());
  ASSERT_TRUE(Ping().ok());  // the gate is registered on the server, behind the hold
  loop_.session().Preempt("a test takes the devices");
  ASSERT_TRUE(gate.Wait());
  release.set_value();
  EXPECT_EQ(Ping().cuda_result(), CUDA_ERROR_DEVICE_UNAVAILABLE);  // the notice has come
  std::lock_guard<std::mutex> lock(gate.mu);
  EXPECT_EQ(gate.calls, 1);
  if (gate.status.ok()) {
    ASSERT_TRUE(gate.open);
    gate.open();
  } else {
    EXPECT_EQ(gate.status.cuda_result(), CUDA_ERROR_DEVICE_UNAVAILABLE) << gate.status.ToString();
    EXPECT_FALSE(gate.open);
  }
}

// An asynchronous copy on one stream lands without waiting for a copy on
// another stream that is held behind a host function; each stream's wait
// covers its own copies only, so a query of one stream never waits for
// another's work.
TEST_F(HostCallbackConnectionTest, WaitForEarlierCopiesOnWaitsForThatStreamsCopiesOnly) {
  constexpr uint64_t kOther = 8;
  ASSERT_TRUE(loop_.CreateStream(kCtx, kOther).ok());
  const std::vector<uint8_t> source(kBytes, 0x5a);
  const uint64_t dptr = AllocHolding(source);
  ASSERT_NE(dptr, 0u);

  std::promise<void> release;
  HoldStream(kStream, release.get_future().share());
  std::vector<uint8_t> held(kBytes, 0), free_running(kBytes, 0);
  auto copy_into = [&](uint64_t stream, std::vector<uint8_t>& buffer) {
    return connection_->PostExpectingBytes(
        [&](wire::Call::Builder c) { test::BuildMemcpyDtoH(c, kCtx, stream, dptr, kBytes); },
        InBytes{buffer.data(), kBytes}, StreamKey{kCtx, stream});
  };
  ASSERT_TRUE(copy_into(kStream, held).ok());
  ASSERT_TRUE(copy_into(kOther, free_running).ok());
  const uint64_t before = connection_->NextSeq();

  auto other = std::async(std::launch::async, [&] {
    return connection_->WaitForEarlierCopiesOn(StreamKey{kCtx, kOther}, before);
  });
  ASSERT_EQ(other.wait_for(kTimeout), std::future_status::ready);
  EXPECT_TRUE(other.get().ok());
  EXPECT_EQ(free_running, source);
  EXPECT_EQ(held, std::vector<uint8_t>(kBytes, 0));  // still behind the gate

  release.set_value();
  auto own = std::async(std::launch::async, [&] {
    return connection_->WaitForEarlierCopiesOn(StreamKey{kCtx, kStream}, before);
  });
  ASSERT_EQ(own.wait_for(kTimeout), std::future_status::ready);
  EXPECT_TRUE(own.get().ok());
  EXPECT_EQ(held, source);
}

// A stream that waited for an event depends on the copies before the event's
// record on another stream: a query of the waiting stream (and of the event)
// that found it done returns only once those copies' bytes landed, and the
// dependency carries on through a second event (transitively).
TEST_F(HostCallbackConnectionTest, QueriesWaitForCopiesTheStreamDependsOnThroughEventWaits) {
  constexpr uint64_t kWaiting = 8, kThird = 9;
  constexpr uint64_t kEvent = 50, kSecondEvent = 51;
  for (uint64_t stream : {kWaiting, kThird}) {
    ASSERT_TRUE(loop_.CreateStream(kCtx, stream).ok());
  }
  for (uint64_t event : {kEvent, kSecondEvent}) {
    ASSERT_TRUE(connection_
                    ->Post([event](wire::Call::Builder c) {
                      auto a = c.initEventCreate();
                      a.setCtx(kCtx);
                      a.setEvent(event);
                    })
                    .ok());
  }
  const std::vector<uint8_t> source(kBytes, 0x3c);
  const uint64_t dptr = AllocHolding(source);
  ASSERT_NE(dptr, 0u);

  // kStream: held by a gate, then a copy, then the event's record.
  std::promise<void> release;
  HoldStream(kStream, release.get_future().share());
  std::vector<uint8_t> landed(kBytes, 0);
  ASSERT_TRUE(
      connection_
          ->PostExpectingBytes(
              [&](wire::Call::Builder c) { test::BuildMemcpyDtoH(c, kCtx, kStream, dptr, kBytes); },
              InBytes{landed.data(), kBytes}, StreamKey{kCtx, kStream})
          .ok());
  auto record = [&](uint64_t event, uint64_t stream) {
    uint64_t seq = 0;
    EXPECT_TRUE(connection_
                    ->Post(
                        [&](wire::Call::Builder c) {
                          auto a = c.initEventRecord();
                          a.setCtx(kCtx);
                          a.setStream(stream);
                          a.setEvent(event);
                        },
                        {}, &seq)
                    .ok());
    return connection_->CopiesBefore(StreamKey{kCtx, stream}, seq);
  };
  auto wait = [&](uint64_t stream, uint64_t event, const std::vector<uint64_t>& copies) {
    uint64_t seq = 0;
    EXPECT_TRUE(connection_
                    ->Post(
                        [&](wire::Call::Builder c) {
                          auto a = c.initStreamWaitEvent();
                          a.setCtx(kCtx);
                          a.setStream(stream);
                          a.setEvent(event);
                        },
                        {}, &seq)
                    .ok());
    connection_->AddCopyDependencies(StreamKey{kCtx, stream}, seq, copies);
  };
  const std::vector<uint64_t> first = record(kEvent, kStream);
  ASSERT_EQ(first.size(), 1u);
  // A query before the wait does not depend on the copy.
  const uint64_t before_wait = connection_->NextSeq();
  wait(kWaiting, kEvent, first);
  // Transitively: kThird waits for an event recorded on kWaiting after its wait.
  const std::vector<uint64_t> second = record(kSecondEvent, kWaiting);
  EXPECT_EQ(second, first);
  wait(kThird, kSecondEvent, second);
  const uint64_t after = connection_->NextSeq();

  auto query_waiting = std::async(std::launch::async, [&] {
    return connection_->WaitForEarlierCopiesOn(StreamKey{kCtx, kWaiting}, after);
  });
  auto query_third = std::async(std::launch::async, [&] {
    return connection_->WaitForEarlierCopiesOn(StreamKey{kCtx, kThird}, after);
  });
  auto query_event =
      std::async(std::launch::async, [&] { return connection_->WaitForCopies(first); });
  auto unrelated = std::async(std::launch::async, [&] {
    return connection_->WaitForEarlierCopiesOn(StreamKey{kCtx, kWaiting}, before_wait);
  });
  ASSERT_EQ(unrelated.wait_for(kTimeout), std::future_status::ready);
  EXPECT_TRUE(unrelated.get().ok());
  // The copy is held behind the gate, so every dependent query still waits.
  EXPECT_EQ(query_waiting.wait_for(50ms), std::future_status::timeout);
  EXPECT_EQ(query_third.wait_for(0ms), std::future_status::timeout);
  EXPECT_EQ(query_event.wait_for(0ms), std::future_status::timeout);
  release.set_value();
  for (auto* query : {&query_waiting, &query_third, &query_event}) {
    ASSERT_EQ(query->wait_for(kTimeout), std::future_status::ready);
    EXPECT_TRUE(query->get().ok());
  }
  EXPECT_EQ(landed, source);
  // Landed, the copy is no dependency any more.
  EXPECT_TRUE(connection_->CopiesBefore(StreamKey{kCtx, kWaiting}, after).empty());
}

}  // namespace
}  // namespace ferry::client
