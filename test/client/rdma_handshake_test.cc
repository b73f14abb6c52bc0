// The RDMA handshake end to end in one process: a client Connection offers
// its queue pair in the Hello, a Session answers (HelloReply.rdma or
// rdmaRefusal), and the stream moves to RDMA or stays on TCP as the two sides
// allow — over the fake fabric (test/support/fake_verbs.h); the real verbs
// run in the rxe test. Calls then work over whatever carries them.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "client/connection.h"
#include "common/shm_transport.h"
#include "common/transport.h"
#include "server/session.h"
#include "test/support/connection_fixture.h"
#include "test/support/fake_verbs.h"
#include "test/support/host_backend.h"

namespace ferry {
namespace {

using test::FakeFabric;

class RdmaHandshakeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(test::CreateTestHostBackend(256 << 20, &backend_).ok());
    FakeFabric::Get().set_device_count(1);
  }
  void TearDown() override { FakeFabric::Get().set_device_count(1); }

  static client::ConnectionOptions ClientOptions(client::ConnectionOptions::Carrier carrier) {
    client::ConnectionOptions options;
    options.carrier = carrier;
    options.rdma_verbs = FakeFabric::Get().verbs();
    return options;
  }
  static server::RdmaServing Serving(bool enabled) {
    server::RdmaServing rdma;
    rdma.enabled = enabled;
    rdma.unavailable = enabled ? "" : "RDMA is off on this ferryd (--rdma off)";
    rdma.verbs = FakeFabric::Get().verbs();
    return rdma;
  }
  Status Open(client::ConnectionOptions options, server::RdmaServing rdma) {
    std::unique_ptr<Transport> server_side, client_side;
    Status made = MakeTransportPair(&server_side, &client_side);
    if (!made.ok()) return made;
    return connection_.Open(*backend_, std::move(server_side), std::move(client_side), options,
                            std::chrono::seconds(10), std::move(rdma));
  }
  void ExpectCallsWork() { connection_.ExpectCallsWork(); }

  std::unique_ptr<backend::GpuBackend> backend_;
  test::LoopbackConnection connection_;
};

TEST_F(RdmaHandshakeTest, BothSidesWillingMovesTheStreamToRdma) {
  ASSERT_TRUE(Open(ClientOptions(client::ConnectionOptions::Carrier::kAuto), Serving(true)).ok());
  ExpectCallsWork();
  const std::string transport = connection_.session().Info().transport;
  EXPECT_EQ(transport.rfind("rdma fake0 port 1", 0), 0u) << transport;
}

TEST_F(RdmaHandshakeTest, AServerThatRefusesLeavesAnAutoClientOnTcp) {
  ASSERT_TRUE(Open(ClientOptions(client::ConnectionOptions::Carrier::kAuto), Serving(false)).ok());
  ExpectCallsWork();
  EXPECT_EQ(connection_.session().Info().transport, "tcp");
}

TEST_F(RdmaHandshakeTest, AClientThatRequiresRdmaFromAServerThatRefusesGetsTheReason) {
  Status opened = Open(ClientOptions(client::ConnectionOptions::Carrier::kRdma), Serving(false));
  EXPECT_EQ(opened.code(), StatusCode::kUnimplemented) << opened.ToString();
  EXPECT_NE(opened.message().find("--rdma off"), std::string::npos) << opened.message();
}

TEST_F(RdmaHandshakeTest, AClientWithoutADeviceThatRequiresRdmaSaysSoBeforeTheHello) {
  FakeFabric::Get().set_device_count(0);
  Status opened = Open(ClientOptions(client::ConnectionOptions::Carrier::kRdma), Serving(true));
  EXPECT_EQ(opened.code(), StatusCode::kUnimplemented) << opened.ToString();
  EXPECT_NE(opened.message().find("this host cannot: this host has no RDMA device"),
            std::string::npos)
      << opened.message();
}

TEST_F(RdmaHandshakeTest, AnAutoClientWithoutADeviceStaysOnTcp) {
  FakeFabric::Get().set_device_count(0);
  ASSERT_TRUE(Open(ClientOptions(client::ConnectionOptions::Carrier::kAuto), Serving(true)).ok());
  ExpectCallsWork();
  EXPECT_EQ(connection_.session().Info().transport, "tcp");
}

TEST_F(RdmaHandshakeTest, TcpChosenByTheClientIsKept) {
  ASSERT_TRUE(Open(ClientOptions(client::ConnectionOptions::Carrier::kTcp), Serving(true)).ok());
  ExpectCallsWork();
  EXPECT_EQ(connection_.session().Info().transport, "tcp");
}

TEST_F(RdmaHandshakeTest, SharedMemoryNeverOffersRdma) {
  std::unique_ptr<Transport> server_side, client_side;
  ASSERT_TRUE(MakeShmTransportPair(&server_side, &client_side).ok());
  Status opened = connection_.Open(*backend_, std::move(server_side), std::move(client_side),
                                   ClientOptions(client::ConnectionOptions::Carrier::kRdma),
                                   std::chrono::seconds(10), Serving(true));
  EXPECT_EQ(opened.code(), StatusCode::kUnimplemented) << opened.ToString();
  EXPECT_NE(opened.message().find("plain TCP connection only"), std::string::npos)
      << opened.message();
}

}  // namespace
}  // namespace ferry
