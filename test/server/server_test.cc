// Server (server/server.h), ferryd's listener, in process on loopback TCP
// with the host backend: the bound address, a control request answered, a
// client session listed while it lives, and bad handshakes refused without
// stopping the server. Every wait is bounded.
#include "server/server.h"

#include <capnp/serialize.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/frame.h"
#include "common/transport.h"
#include "test/support/host_backend.h"
#include "test/support/raw_client.h"
#include "test/support/wait.h"

namespace ferry::server {
namespace {

using namespace std::chrono_literals;

constexpr int kClientRole = static_cast<int>(wire::Hello::Role::CLIENT);
constexpr int kControlRole = static_cast<int>(wire::Hello::Role::CONTROL);

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(test::CreateTestHostBackend(16 << 20, &backend_).ok());
    server_ = std::make_unique<Server>(*backend_);
    ASSERT_TRUE(server_->Listen("127.0.0.1:0").ok());
    server_->Start();
    ASSERT_EQ(server_->BoundAddresses().size(), 1u);
    address_ = server_->BoundAddresses()[0];
  }
  void TearDown() override { server_->Stop(); }

  // A new connection that has sent a Hello with `version` and `role`.
  std::unique_ptr<Transport> Hello(uint32_t version, int role) {
    std::unique_ptr<Transport> transport;
    EXPECT_TRUE(ConnectTcp(address_, 5000ms, &transport).ok());
    if (transport == nullptr) return nullptr;
    EXPECT_TRUE(test::WriteBytes(*transport, test::HelloFrame(version, role)).ok());
    return transport;
  }

  // Reads the HelloReply; its status (Malformed if none came).
  static Status ReadHelloReply(Transport& transport) {
    Frame frame;
    Status status = ReadFrame(transport, &frame);
    if (!status.ok()) return status;
    if (frame.kind != wire::FrameKind::HELLO_REPLY) return Status::Malformed("not a HelloReply");
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    return StatusFromWire(reader.getRoot<wire::HelloReply>().getStatus());
  }

  // Sends a status request on a control connection; the reply's status, and
  // its session count and backend name.
  static Status ControlStatus(Transport& transport, size_t* sessions, std::string* backend) {
    capnp::MallocMessageBuilder request;
    request.initRoot<wire::ControlRequest>().setStatus();
    FERRY_RETURN_IF_ERROR(WriteFrame(transport, wire::FrameKind::CONTROL_REQUEST, request));
    Frame frame;
    FERRY_RETURN_IF_ERROR(ReadFrame(transport, &frame));
    if (frame.kind != wire::FrameKind::CONTROL_REPLY) return Status::Malformed("not a reply");
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    auto reply = reader.getRoot<wire::ControlReply>();
    *sessions = reply.isSessions() ? reply.getSessions().size() : 0;
    *backend = reply.getBackend().cStr();
    return StatusFromWire(reply.getStatus());
  }

  // A status request over a fresh control connection must be answered.
  void ExpectControlAnswers() {
    std::unique_ptr<Transport> control = Hello(wire::PROTOCOL_VERSION, kControlRole);
    ASSERT_NE(control, nullptr);
    ASSERT_TRUE(ReadHelloReply(*control).ok());
    size_t sessions = 99;
    std::string backend;
    const Status status = ControlStatus(*control, &sessions, &backend);
    ASSERT_TRUE(status.ok()) << status.ToString();
    EXPECT_EQ(backend, backend_->Name());
  }

  std::unique_ptr<backend::GpuBackend> backend_;
  std::unique_ptr<Server> server_;
  std::string address_;
};

TEST_F(ServerTest, ListensOnAnEphemeralPort) {
  EXPECT_EQ(address_.rfind("127.0.0.1:", 0), 0u) << address_;
  EXPECT_NE(address_, "127.0.0.1:0");
}

TEST_F(ServerTest, AnswersAControlStatusRequest) {
  std::unique_ptr<Transport> control = Hello(wire::PROTOCOL_VERSION, kControlRole);
  ASSERT_NE(control, nullptr);
  ASSERT_TRUE(ReadHelloReply(*control).ok());
  size_t sessions = 99;
  std::string backend;
  // Several requests on one connection, each answered.
  for (int i = 0; i < 3; ++i) {
    const Status status = ControlStatus(*control, &sessions, &backend);
    ASSERT_TRUE(status.ok()) << status.ToString();
    EXPECT_EQ(sessions, 0u);
    EXPECT_EQ(backend, backend_->Name());
  }
}

TEST_F(ServerTest, AClientSessionIsListedWhileItsConnectionLives) {
  std::unique_ptr<Transport> client = Hello(wire::PROTOCOL_VERSION, kClientRole);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(ReadHelloReply(*client).ok());
  ASSERT_TRUE(test::WaitFor([&] { return server_->Sessions().size() == 1; }, 10s));
  client.reset();
  EXPECT_TRUE(test::WaitFor([&] { return server_->Sessions().empty(); }, 10s));
}

TEST_F(ServerTest, AHelloFromAnotherProtocolVersionIsRefused) {
  std::unique_ptr<Transport> client = Hello(wire::PROTOCOL_VERSION + 1, kClientRole);
  ASSERT_NE(client, nullptr);
  const Status status = ReadHelloReply(*client);
  EXPECT_EQ(status.code(), StatusCode::kUnimplemented) << status.ToString();
  EXPECT_TRUE(server_->Sessions().empty());
  ExpectControlAnswers();
}

TEST_F(ServerTest, BadHandshakesCloseTheConnectionAndTheServerGoesOn) {
  // Noise instead of a Hello; a Hello cut short; a control request before
  // any Hello.
  std::vector<std::vector<uint8_t>> openings;
  openings.push_back(std::vector<uint8_t>(64, 0xab));
  std::vector<uint8_t> cut = test::HelloFrame(wire::PROTOCOL_VERSION, kClientRole);
  cut.resize(cut.size() / 2);
  openings.push_back(cut);
  openings.push_back(test::FrameHeader(wire::FrameKind::CONTROL_REQUEST, 0));
  for (size_t i = 0; i < openings.size(); ++i) {
    std::unique_ptr<Transport> transport;
    ASSERT_TRUE(ConnectTcp(address_, 5000ms, &transport).ok());
    ASSERT_TRUE(test::WriteBytes(*transport, openings[i]).ok());
    if (i == 1) transport->Shutdown();  // the rest of the Hello never comes
    // The server answers with a refusal or closes; it never holds a session.
    Frame frame;
    while (ReadFrame(*transport, &frame).ok()) {
      ASSERT_EQ(frame.kind, wire::FrameKind::HELLO_REPLY) << "opening " << i;
      capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
      EXPECT_FALSE(StatusFromWire(reader.getRoot<wire::HelloReply>().getStatus()).ok())
          << "opening " << i;
    }
  }
  EXPECT_TRUE(test::WaitFor([&] { return server_->Sessions().empty(); }, 10s));
  ExpectControlAnswers();
}

TEST_F(ServerTest, StopEndsLiveConnections) {
  std::unique_ptr<Transport> client = Hello(wire::PROTOCOL_VERSION, kClientRole);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(ReadHelloReply(*client).ok());
  server_->Stop();
  EXPECT_TRUE(server_->Sessions().empty());
  Frame frame;
  EXPECT_EQ(ReadFrame(*client, &frame).code(), StatusCode::kDisconnected);
}

TEST(UnixGroupTest, ANumericGroupMustBeAGid) {
  uint32_t gid = 7;
  ASSERT_TRUE(LookUpGroup("100", &gid).ok());
  EXPECT_EQ(gid, 100u);
  // Past 32 bits a cast would wrap (4294967296 to 0: root's group);
  // 4294967295 is (gid_t)-1, "no group" to chown.
  for (const char* bad : {"4294967295", "4294967296", "99999999999999999999999999"}) {
    gid = 7;
    const Status status = LookUpGroup(bad, &gid);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << bad << ": " << status.ToString();
    EXPECT_NE(status.message().find("out of range"), std::string::npos) << status.message();
    EXPECT_EQ(gid, 7u);
  }
}

}  // namespace
}  // namespace ferry::server
