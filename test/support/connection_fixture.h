// LoopbackConnection: a client Connection (client/connection.h) opened
// against a server::Session that runs in this process, over a transport pair
// the test chooses — what ferryd's listener does, without a listener.
//
// Header only: the test that includes it links ferry_client_core for the
// Connection, ferry_server for the Session and ferry_test_support for the call
// builders (test/client/CMakeLists.txt).
//
// Thread-safety: one object belongs to the test's thread; the session runs on
// a thread of its own until Close.
#pragma once

#include <capnp/serialize.h>

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "client/connection.h"
#include "common/frame.h"
#include "server/session.h"
#include "test/support/raw_client.h"

namespace ferry::test {

class LoopbackConnection {
 public:
  LoopbackConnection() = default;
  LoopbackConnection(const LoopbackConnection&) = delete;
  LoopbackConnection& operator=(const LoopbackConnection&) = delete;
  ~LoopbackConnection() { Close(); }

  // Opens a Connection over `client_side` while a Session on `server_side`
  // (and `backend`, which must outlive this object) answers its Hello. Fails
  // if the Hello does not come, the session refuses it, or Open does not
  // return within `timeout`.
  Status Open(backend::GpuBackend& backend, std::unique_ptr<Transport> server_side,
              std::unique_ptr<Transport> client_side, client::ConnectionOptions options = {},
              std::chrono::milliseconds timeout = std::chrono::seconds(10),
              server::RdmaServing rdma = {}) {
    std::unique_ptr<capnp::MessageReader> reply;
    kj::Array<capnp::word> words;
    // Open says Hello and waits for the answer, so it runs beside the
    // server's side: read the Hello first, then let the session answer it.
    auto opened = std::async(std::launch::async, [&] {
      return client::Connection::Open(std::move(client_side), "test-server",
                                      client::Connection::Borrow{}, &connection_, &reply, &words,
                                      options);
    });
    Frame hello;
    Status status = ReadFrame(*server_side, &hello);
    if (status.ok() && hello.kind != wire::FrameKind::HELLO) {
      status = Status::Malformed("the client's first frame is not a Hello");
    }
    if (!status.ok()) {
      server_side->Shutdown();  // Open fails too, and the future can be waited for
      // A client that gave up before its Hello says why better than the
      // closed connection does.
      Status client = opened.get();
      return client.ok() ? status : client;
    }
    capnp::FlatArrayMessageReader hello_reader(hello.words, PeerReaderOptions());
    session_ = std::make_unique<server::Session>(1, std::move(server_side), backend,
                                                 hello_reader.getRoot<wire::Hello>());
    session_->SetRdma(std::move(rdma));
    runner_ = std::thread([this] { session_->Run(); });
    if (opened.wait_for(timeout) != std::future_status::ready) {
      // Ending the session makes Open fail, so the future (whose destructor
      // would wait for it) is ready before this returns.
      session_->Stop();
      opened.wait();
      return Status::Internal("Connection::Open did not return in time");
    }
    return opened.get();
  }

  // Creates context `ctx` on device 0 (a call that waits).
  Status CreateContext(uint64_t ctx) {
    return connection_->Call([ctx](wire::Call::Builder c) {
      auto a = c.initCtxCreate();
      a.setCtx(ctx);
      a.setDevice(0);
    });
  }

  // Creates stream `stream` in context `ctx` (a post: a failure shows at
  // the next call that waits).
  Status CreateStream(uint64_t ctx, uint64_t stream, unsigned flags = 0) {
    return connection_->Post([=](wire::Call::Builder c) {
      auto a = c.initStreamCreate();
      a.setCtx(ctx);
      a.setStream(stream);
      a.setFlags(flags);
    });
  }

  // Allocates `bytes` of device memory in context `ctx` (a call that waits);
  // *dptr is its address.
  Status Alloc(uint64_t ctx, uint64_t bytes, uint64_t* dptr) {
    return connection_->Call(
        [=](wire::Call::Builder c) {
          auto a = c.initMemAlloc();
          a.setCtx(ctx);
          a.setBytes(bytes);
        },
        {}, {},
        [dptr](wire::Reply::Reader reply) {
          *dptr = reply.getMemAlloc().getDptr();
          return Status::Ok();
        });
  }

  // Posts a copy of `bytes` from `data` to `dst` on `stream` of `ctx`.
  Status PostHtoD(uint64_t ctx, uint64_t stream, uint64_t dst, const void* data, uint64_t bytes) {
    return connection_->Post(
        [=](wire::Call::Builder c) { test::BuildMemcpyHtoD(c, ctx, stream, dst, bytes); },
        client::OutBytes{data, bytes});
  }

  // Closes the client's end and waits for the session to end (it frees what
  // the client left). session() stays readable afterwards.
  // Calls that cross both ways over whatever carries the stream, a large
  // copy among them (the second allocation's reply comes after the copy's
  // bytes went through). Fails the test (gtest) where one does not work.
  void ExpectCallsWork() {
    ASSERT_TRUE(CreateContext(1).ok());
    uint64_t dptr = 0;
    ASSERT_TRUE(Alloc(1, 4 << 20, &dptr).ok());
    std::vector<uint8_t> bytes(3 << 20, 7);
    ASSERT_TRUE(PostHtoD(1, 0, dptr, bytes.data(), bytes.size()).ok());
    uint64_t second = 0;
    ASSERT_TRUE(Alloc(1, 1 << 20, &second).ok());
    EXPECT_NE(second, 0u);
  }

  void Close() {
    connection_.reset();
    if (runner_.joinable()) runner_.join();
  }

  // Stops the session as ferryd's shutdown does and waits for it to end; the
  // Connection stays, to see how it fails.
  void StopSession() {
    session_->Stop();
    if (runner_.joinable()) runner_.join();
  }

  client::Connection& connection() { return *connection_; }
  std::unique_ptr<client::Connection>& connection_ptr() { return connection_; }
  bool has_session() const { return session_ != nullptr; }
  server::Session& session() { return *session_; }

 private:
  std::unique_ptr<client::Connection> connection_;
  std::unique_ptr<server::Session> session_;
  std::thread runner_;
};

}  // namespace ferry::test
