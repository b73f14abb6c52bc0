// The move to shared memory in the handshake, in one process: a client
// Connection over real loopback TCP offers its kernel's boot id (Hello.shm),
// a Session answers with a rendezvous (HelloReply.shm) or a refusal, and the
// stream moves to shared memory or stays on TCP as the two sides allow.
// Calls then work over whatever carries them. A client that misbehaves in
// the exchange (a wrong byte, none, a stranger at the socket) never costs
// ferryd more than its own session.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "client/connection.h"
#include "common/frame.h"
#include "common/shm_rendezvous.h"
#include "common/shm_transport.h"
#include "common/transport.h"
#include "server/session.h"
#include "test/support/connection_fixture.h"
#include "test/support/fake_verbs.h"
#include "test/support/host_backend.h"
#include "test/support/net.h"
#include "test/support/wait.h"

namespace ferry {
namespace {

using namespace std::chrono_literals;
using Carrier = client::ConnectionOptions::Carrier;
using test::FakeFabric;

bool StartsWith(const std::string& text, const std::string& prefix) {
  return text.rfind(prefix, 0) == 0;
}

class ShmHandshakeTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(test::CreateTestHostBackend(256 << 20, &backend_).ok()); }

  static client::ConnectionOptions Options(Carrier carrier) {
    client::ConnectionOptions options;
    options.carrier = carrier;
    options.rdma_verbs = FakeFabric::Get().verbs();
    return options;
  }
  Status Open(client::ConnectionOptions options, server::RdmaServing rdma = {}) {
    std::unique_ptr<Transport> server_side, client_side;
    Status made = test::MakeLoopbackTcpPair(&server_side, &client_side);
    if (!made.ok()) return made;
    return connection_.Open(*backend_, std::move(server_side), std::move(client_side),
                            std::move(options), 10s, std::move(rdma));
  }
  void ExpectCallsWork() { connection_.ExpectCallsWork(); }
  void ExpectTransports(const std::string& prefix) {
    EXPECT_TRUE(StartsWith(connection_.connection().transport_description(), prefix))
        << connection_.connection().transport_description();
    EXPECT_TRUE(StartsWith(connection_.session().Info().transport, prefix))
        << connection_.session().Info().transport;
  }

  std::unique_ptr<backend::GpuBackend> backend_;
  test::LoopbackConnection connection_;
};

TEST_F(ShmHandshakeTest, ALoopbackTcpClientMovesToSharedMemory) {
  ASSERT_TRUE(Open(Options(Carrier::kAuto)).ok());
  ExpectCallsWork();
  ExpectTransports("shm, ring 8 MiB");
  // The peer is still the TCP client it was.
  EXPECT_EQ(connection_.session().Info().client, "127.0.0.1 (test client)");
  // The session ends when the client goes, over the unix socket.
  connection_.Close();
  EXPECT_EQ(connection_.session().Info().transport.rfind("shm", 0), 0u);
}

TEST_F(ShmHandshakeTest, RequiredSharedMemoryIsHadOverLoopback) {
  ASSERT_TRUE(Open(Options(Carrier::kShm)).ok());
  ExpectCallsWork();
  ExpectTransports("shm");
}

TEST_F(ShmHandshakeTest, RequiredSharedMemoryOverAUnixConnectionIsHadAlready) {
  std::unique_ptr<Transport> server_side, client_side;
  ASSERT_TRUE(MakeShmTransportPair(&server_side, &client_side).ok());
  ASSERT_TRUE(
      connection_
          .Open(*backend_, std::move(server_side), std::move(client_side), Options(Carrier::kShm))
          .ok());
  ExpectCallsWork();
  ExpectTransports("shm");
}

TEST_F(ShmHandshakeTest, TcpChosenByTheClientIsKept) {
  ASSERT_TRUE(Open(Options(Carrier::kTcp)).ok());
  ExpectCallsWork();
  ExpectTransports("tcp");
}

TEST_F(ShmHandshakeTest, SharedMemoryWinsOverRdmaOnTheSameHost) {
  FakeFabric::Get().set_device_count(1);
  server::RdmaServing rdma;
  rdma.enabled = true;
  rdma.verbs = FakeFabric::Get().verbs();
  ASSERT_TRUE(Open(Options(Carrier::kAuto), std::move(rdma)).ok());
  ExpectCallsWork();
  ExpectTransports("shm");
}

TEST_F(ShmHandshakeTest, AClientOnAnotherHostGetsNoInvitation) {
  client::ConnectionOptions options = Options(Carrier::kAuto);
  options.boot_id = "00000000-0000-0000-0000-000000000000";
  options.TEST_shm_rendezvous = [](const std::string& name) {
    ADD_FAILURE() << "invited to " << name;
    return name;
  };
  ASSERT_TRUE(Open(options).ok());
  ExpectCallsWork();
  ExpectTransports("tcp");
}

TEST_F(ShmHandshakeTest, RequiredSharedMemoryFromAnotherHostFailsSayingWhy) {
  client::ConnectionOptions options = Options(Carrier::kShm);
  options.boot_id = "00000000-0000-0000-0000-000000000000";
  const Status opened = Open(options);
  EXPECT_EQ(opened.code(), StatusCode::kUnimplemented) << opened.ToString();
  EXPECT_NE(opened.message().find("required (FERRY_TRANSPORT=shm): ferryd is on another host"),
            std::string::npos)
      << opened.message();
}

TEST_F(ShmHandshakeTest, RequiredSharedMemoryOverASocketPairFailsBeforeTheHello) {
  std::unique_ptr<Transport> server_side, client_side;
  ASSERT_TRUE(MakeTransportPair(&server_side, &client_side).ok());
  const Status opened = connection_.Open(*backend_, std::move(server_side), std::move(client_side),
                                         Options(Carrier::kShm));
  EXPECT_EQ(opened.code(), StatusCode::kUnimplemented) << opened.ToString();
  EXPECT_NE(opened.message().find("beside a TCP connection only"), std::string::npos)
      << opened.message();
}

TEST_F(ShmHandshakeTest, AClientThatCannotReachTheSocketStaysOnTcp) {
  client::ConnectionOptions options = Options(Carrier::kAuto);
  options.TEST_shm_rendezvous = [](const std::string&) {
    return std::string("ferry-shm-nobody-listens-here");
  };
  ASSERT_TRUE(Open(options).ok());
  ExpectCallsWork();
  ExpectTransports("tcp");
}

TEST_F(ShmHandshakeTest, RequiredSharedMemoryThatCannotBeReachedFailsSayingWhy) {
  client::ConnectionOptions options = Options(Carrier::kShm);
  options.TEST_shm_rendezvous = [](const std::string&) {
    return std::string("ferry-shm-nobody-listens-here");
  };
  const Status opened = Open(options);
  EXPECT_EQ(opened.code(), StatusCode::kUnimplemented) << opened.ToString();
  EXPECT_NE(opened.message().find("shared-memory socket cannot be reached"), std::string::npos)
      << opened.message();
}

// Whether the other end of `fd` closes within 5 s.
bool ClosedSoon(int fd) {
  pollfd pfd{fd, POLLIN, 0};
  if (::poll(&pfd, 1, 5000) != 1) return false;
  char byte;
  return ::recv(fd, &byte, 1, MSG_DONTWAIT) == 0;
}

// Any local process can see the rendezvous and connect first: one with a
// wrong nonce and one that says nothing are turned away, and the client
// still moves.
TEST_F(ShmHandshakeTest, StrangersAtTheSocketAreTurnedAwayAndTheClientStillMoves) {
  int wrong = -1, silent = -1;
  client::ConnectionOptions options = Options(Carrier::kShm);
  options.TEST_shm_rendezvous = [&](const std::string& name) {
    const ShmNonce guess{};
    EXPECT_TRUE(ConnectShmRendezvous(name, guess, 5s, &wrong).ok());
    silent = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path + 1, name.data(), name.size());
    EXPECT_EQ(::connect(silent, reinterpret_cast<sockaddr*>(&address),
                        static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size())),
              0);
    return name;
  };
  testing::internal::CaptureStderr();
  const Status opened = Open(options);
  const std::string log = testing::internal::GetCapturedStderr();
  ASSERT_TRUE(opened.ok()) << opened.ToString();
  ExpectCallsWork();
  ExpectTransports("shm");
  EXPECT_TRUE(ClosedSoon(wrong));
  EXPECT_TRUE(ClosedSoon(silent));
  EXPECT_NE(log.find("is turned away: wrong nonce"), std::string::npos) << log;
  ::close(wrong);
  ::close(silent);
}

// A raw client against a Session over loopback TCP: it offers shared memory,
// gets its invitation, and then does `misbehave` instead of moving. The
// session must end (or stay on TCP) on its own, naming why, within its
// set-up timeout.
class MisbehavingClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(test::CreateTestHostBackend(64 << 20, &backend_).ok());
    std::unique_ptr<Transport> server_side;
    ASSERT_TRUE(test::MakeLoopbackTcpPair(&server_side, &client_).ok());
    std::string boot_id;
    ASSERT_TRUE(BootId(&boot_id).ok());
    capnp::MallocMessageBuilder hello_message;
    auto hello = hello_message.initRoot<wire::Hello>();
    hello.setProtocolVersion(wire::PROTOCOL_VERSION);
    hello.setRole(wire::Hello::Role::CLIENT);
    hello.setProgram("misbehaving");
    hello.initShm().setBootId(boot_id);
    session_ = std::make_unique<server::Session>(7, std::move(server_side), *backend_,
                                                 hello_message.getRoot<wire::Hello>().asReader());
    session_->TEST_SetShmSetupTimeout(SetupTimeout());
    runner_ = std::thread([this] { session_->Run(); });
    Frame frame;
    ASSERT_TRUE(ReadFrame(*client_, &frame).ok());
    ASSERT_EQ(frame.kind, wire::FrameKind::HELLO_REPLY);
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    auto reply = reader.getRoot<wire::HelloReply>();
    ASSERT_TRUE(reply.hasShm()) << reply.getShmRefusal().cStr();
    socket_name_ = reply.getShm().getSocket().cStr();
    auto nonce = reply.getShm().getNonce();
    nonce_.assign(nonce.begin(), nonce.end());
  }
  // The session's shared-memory set-up timeout: short, since most of these
  // tests wait for it.
  virtual std::chrono::milliseconds SetupTimeout() const { return 500ms; }
  void TearDown() override {
    if (client_ != nullptr) client_->Shutdown();
    if (runner_.joinable()) runner_.join();
  }
  Status WriteByte(uint8_t byte) {
    const ConstBuffer buffer{&byte, 1};
    return client_->Write({&buffer, 1});
  }
  // Waits (bounded by the set-up timeout: Run ends by itself) for the
  // session to end; its end reason.
  std::string Ended() {
    runner_.join();
    return session_->Info().end_reason;
  }

  std::unique_ptr<backend::GpuBackend> backend_;
  std::unique_ptr<Transport> client_;
  std::unique_ptr<server::Session> session_;
  std::thread runner_;
  std::string socket_name_;
  std::vector<uint8_t> nonce_;
};

TEST_F(MisbehavingClientTest, AWrongByteEndsTheSession) {
  ASSERT_TRUE(WriteByte('X').ok());
  const std::string reason = Ended();
  EXPECT_NE(reason.find("shared-memory set-up failed"), std::string::npos) << reason;
  EXPECT_NE(reason.find("byte 88, not 'S' or 'T'"), std::string::npos) << reason;
}

TEST_F(MisbehavingClientTest, NoByteEndsTheSessionAtTheDeadline) {
  const std::string reason = Ended();
  EXPECT_NE(reason.find("shared-memory set-up failed: reading the client's answer"),
            std::string::npos)
      << reason;
}

TEST_F(MisbehavingClientTest, AClientThatDiesInsteadOfAnsweringEndsTheSession) {
  client_.reset();  // closes the connection
  const std::string reason = Ended();
  EXPECT_NE(reason.find("shared-memory set-up failed: reading the client's answer"),
            std::string::npos)
      << reason;
}

TEST_F(MisbehavingClientTest, SayingItMovesButNeverComingEndsTheSession) {
  ASSERT_TRUE(WriteByte(kShmMoving).ok());
  const std::string reason = Ended();
  EXPECT_NE(reason.find("did not connect to the shared-memory socket in time"), std::string::npos)
      << reason;
}

// A deadline the test would time out waiting for: the session must notice the
// client's end by itself.
class ClientThatDiesAfterSayingItMovesTest : public MisbehavingClientTest {
 protected:
  std::chrono::milliseconds SetupTimeout() const override { return 600s; }
};

TEST_F(ClientThatDiesAfterSayingItMovesTest, EndsTheSessionAtOnce) {
  ASSERT_TRUE(WriteByte(kShmMoving).ok());
  client_.reset();
  const std::string reason = Ended();
  EXPECT_NE(reason.find("the client left (or spoke on its old connection)"), std::string::npos)
      << reason;
}

TEST_F(MisbehavingClientTest, AWrongNonceIsTurnedAwayAndTheSessionEnds) {
  std::vector<uint8_t> wrong = nonce_;
  wrong[0] ^= 0xff;
  int socket = -1;
  ASSERT_TRUE(ConnectShmRendezvous(socket_name_, wrong, 1s, &socket).ok());
  ASSERT_TRUE(WriteByte(kShmMoving).ok());
  const std::string reason = Ended();
  EXPECT_NE(reason.find("did not connect to the shared-memory socket in time"), std::string::npos)
      << reason;
  EXPECT_TRUE(ClosedSoon(socket));
  ::close(socket);
}

TEST_F(MisbehavingClientTest, StayingOnTcpKeepsTheSessionServing) {
  ASSERT_TRUE(WriteByte(kShmStaying).ok());
  // The session serves on TCP: it is started, and says so.
  ASSERT_TRUE(test::WaitFor([&] { return session_->Info().started; }, 5s));
  EXPECT_EQ(session_->Info().transport, "tcp");
  EXPECT_EQ(session_->Info().end_reason, "");
}

}  // namespace
}  // namespace ferry
