// The TCP transport (common/transport.h) over loopback: a frame connected,
// sent and received both ways; a peer that closes makes reads fail with
// Disconnected; a connect to a port where nothing listens fails with
// Disconnected, within its timeout, naming the address.
#include "common/transport.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <memory>
#include <string>

#include "common/frame.h"
#include "test/support/net.h"
#include "test/support/wait.h"

namespace ferry {
namespace {

using namespace std::chrono_literals;

// A connected pair over loopback TCP: the client from ConnectTcp, the server
// side accepted from a listening socket.
class TcpTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int port = -1;
    listen_fd_ = test::ListenOnLoopback(&port);
    ASSERT_GE(listen_fd_, 0);
    address_ = "127.0.0.1:" + std::to_string(port);
    ASSERT_TRUE(ConnectTcp(address_, 5000ms, &client_).ok());
    // The connection is queued on the listener already: accept does not block.
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(fd, 0);
    server_ = std::make_unique<SocketTransport>(fd, "test-client");
  }
  void TearDown() override {
    if (listen_fd_ >= 0) close(listen_fd_);
  }

  int listen_fd_ = -1;
  std::string address_;
  std::unique_ptr<Transport> client_;
  std::unique_ptr<Transport> server_;
};

TEST_F(TcpTransportTest, AFrameCrossesBothWays) {
  EXPECT_EQ(client_->PeerName(), address_);
  capnp::MallocMessageBuilder message;
  message.initRoot<wire::GateOpen>().setGate(42);
  const std::string bulk(100000, 'x');  // larger than one read buffer
  const ConstBuffer bulk_buffer{bulk.data(), bulk.size()};
  ASSERT_TRUE(WriteFrame(*client_, wire::FrameKind::GATE_OPEN, message,
                         std::span<const ConstBuffer>(&bulk_buffer, 1))
                  .ok());
  Frame frame;
  ASSERT_TRUE(ReadFrame(*server_, &frame).ok());
  EXPECT_EQ(frame.kind, wire::FrameKind::GATE_OPEN);
  capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
  EXPECT_EQ(reader.getRoot<wire::GateOpen>().getGate(), 42u);
  ASSERT_EQ(frame.bulk.size, bulk.size());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(frame.bulk.data.get()), frame.bulk.size),
            bulk);

  // And back, bytes only.
  const char reply[] = "pong";
  const ConstBuffer reply_buffer{reply, sizeof(reply)};
  ASSERT_TRUE(server_->Write(std::span<const ConstBuffer>(&reply_buffer, 1)).ok());
  char got[sizeof(reply)] = {};
  ASSERT_TRUE(client_->ReadExact(got, sizeof(got)).ok());
  EXPECT_STREQ(got, "pong");
}

TEST_F(TcpTransportTest, PeerCloseMakesReadsFailWithDisconnected) {
  EXPECT_FALSE(server_->PeerGoneOrTalking());
  // A read that is blocked when the peer goes away is woken.
  auto blocked = std::async(std::launch::async, [&] {
    char byte;
    return server_->ReadExact(&byte, 1);
  });
  client_.reset();  // closes the socket
  ASSERT_EQ(blocked.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(blocked.get().code(), StatusCode::kDisconnected);
  EXPECT_TRUE(server_->PeerGoneOrTalking());
  char byte;
  EXPECT_EQ(server_->ReadExact(&byte, 1).code(), StatusCode::kDisconnected);
}

// PeerClosed tells a peer that went away from one that is talking.
TEST_F(TcpTransportTest, PeerClosedIsNotTalking) {
  EXPECT_FALSE(server_->PeerClosed());
  const char byte = 7;
  const ConstBuffer buffer{&byte, 1};
  ASSERT_TRUE(client_->Write(std::span<const ConstBuffer>(&buffer, 1)).ok());
  ASSERT_TRUE(test::WaitFor([&] { return server_->PeerGoneOrTalking(); }, 10s));
  EXPECT_FALSE(server_->PeerClosed());  // talking, not gone
  client_.reset();
  EXPECT_TRUE(test::WaitFor([&] { return server_->PeerClosed(); }, 10s));
}

TEST_F(TcpTransportTest, ShutdownWakesABlockedRead) {
  auto blocked = std::async(std::launch::async, [&] {
    char byte;
    return client_->ReadExact(&byte, 1);
  });
  client_->Shutdown();
  ASSERT_EQ(blocked.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(blocked.get().code(), StatusCode::kDisconnected);
  const char byte = 1;
  const ConstBuffer buffer{&byte, 1};
  EXPECT_EQ(client_->Write(std::span<const ConstBuffer>(&buffer, 1)).code(),
            StatusCode::kDisconnected);
}

TEST(TcpConnectTest, AClosedPortFailsWithDisconnectedWithinTheTimeout) {
  const int port = test::ClosedLoopbackPort();
  ASSERT_GT(port, 0);
  const std::string address = "127.0.0.1:" + std::to_string(port);
  std::unique_ptr<Transport> transport;
  const auto start = std::chrono::steady_clock::now();
  const Status status = ConnectTcp(address, 2000ms, &transport);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  EXPECT_EQ(status.code(), StatusCode::kDisconnected) << status.ToString();
  EXPECT_NE(status.message().find(address), std::string::npos) << status.ToString();
  EXPECT_EQ(transport, nullptr);
}

TEST(TcpConnectTest, BadAddressesAreRefused) {
  std::unique_ptr<Transport> transport;
  EXPECT_FALSE(ConnectTcp("no-port-here", 100ms, &transport).ok());
  EXPECT_FALSE(ConnectTcp("127.0.0.1:99999", 100ms, &transport).ok());
}

}  // namespace
}  // namespace ferry
