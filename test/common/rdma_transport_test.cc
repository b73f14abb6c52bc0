// The RDMA transport (common/rdma/) over the fake fabric
// (test/support/fake_verbs.h): set-up through RdmaConnector (device and GID
// choice, queue pair states, the ready marks on the TCP socket), the byte
// stream in every message kind (inline and staged SENDs, ring chunks across
// the ring's end, zero-copy from registered memory), credits (writers wait,
// receivers are never unready), and every failure mapped to Disconnected or
// Malformed. Real verbs: the rxe test (test/rxe/).
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/rdma/rdma_connector.h"
#include "common/rdma/rdma_transport.h"
#include "common/transport.h"
#include "test/support/fake_verbs.h"

namespace ferry::rdma {
namespace {

using namespace std::chrono_literals;
using test::FakeFabric;

std::vector<uint8_t> RandomBytes(size_t size, uint32_t seed) {
  std::vector<uint8_t> bytes(size);
  std::mt19937 random(seed);
  for (auto& b : bytes) b = static_cast<uint8_t>(random());
  return bytes;
}

Status WriteAll(Transport& transport, const void* data, size_t size) {
  ConstBuffer buffer{data, size};
  return transport.Write(std::span<const ConstBuffer>(&buffer, 1));
}

// Writes `size` bytes from `data` on `from` while reading them on `to`
// (a large write waits for the reader's credit); what arrived.
std::vector<uint8_t> Carry(Transport& from, Transport& to, const uint8_t* data, size_t size) {
  auto writer = std::async(std::launch::async, [&] { return WriteAll(from, data, size); });
  std::vector<uint8_t> got(size);
  Status read = to.ReadExact(got.data(), got.size());
  Status written = writer.get();
  EXPECT_TRUE(read.ok()) << read.ToString();
  EXPECT_TRUE(written.ok()) << written.ToString();
  return got;
}

// Small rings and depths, so that credits and the ring's end come into play
// within a few hundred kilobytes.
RdmaOptions SmallOptions() {
  RdmaOptions options;
  options.ring_bytes = 64 << 10;
  options.receive_depth = 16;
  options.small_message_bytes = 256;
  options.send_depth = 16;
  options.chunk_bytes = 8 << 10;
  return options;
}

// A connected pair, set up as ferry sets one up: each side opens a
// connector, they swap endpoints, connect their queue pairs, and meet on a
// TCP-like socket pair.
class RdmaTransportTest : public ::testing::Test {
 protected:
  void SetUp() override { FakeFabric::Get().set_max_inline(64); }

  void Connect(const RdmaOptions& client_options, const RdmaOptions& server_options) {
    const Verbs* verbs = FakeFabric::Get().verbs();
    std::unique_ptr<RdmaConnector> client_connector, server_connector;
    ASSERT_TRUE(RdmaConnector::Open(verbs, {}, client_options, nullptr, &client_connector).ok());
    ASSERT_TRUE(RdmaConnector::Open(verbs, {}, server_options, nullptr, &server_connector).ok());
    ASSERT_TRUE(client_connector->ConnectQueuePair(server_connector->Local()).ok());
    ASSERT_TRUE(server_connector->ConnectQueuePair(client_connector->Local()).ok());
    ASSERT_TRUE(MakeTransportPair(&client_, &server_).ok());
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    auto server_side = std::async(std::launch::async, [&] {
      return std::move(*server_connector).SwitchToRdma(&server_, false, deadline);
    });
    Status client_switched = std::move(*client_connector).SwitchToRdma(&client_, true, deadline);
    Status server_switched = server_side.get();
    ASSERT_TRUE(client_switched.ok()) << client_switched.ToString();
    ASSERT_TRUE(server_switched.ok()) << server_switched.ToString();
  }
  void Connect() { Connect(SmallOptions(), SmallOptions()); }
  RdmaTransport& Rdma(std::unique_ptr<Transport>& t) { return static_cast<RdmaTransport&>(*t); }

  std::unique_ptr<Transport> client_;
  std::unique_ptr<Transport> server_;
};

TEST_F(RdmaTransportTest, SmallMessagesCrossBothWaysInlinedOrStaged) {
  Connect();
  EXPECT_NE(client_->Description().find("rdma fake0 port 1 gid 0"), std::string::npos)
      << client_->Description();
  const std::string tiny = "hello";                    // inline (64 bytes granted)
  const std::string staged(200, 's');                  // a SEND from the staging ring
  ASSERT_TRUE(WriteAll(*client_, tiny.data(), tiny.size()).ok());
  ASSERT_TRUE(WriteAll(*client_, staged.data(), staged.size()).ok());
  std::string got(tiny.size() + staged.size(), '\0');
  ASSERT_TRUE(server_->ReadExact(got.data(), got.size()).ok());
  EXPECT_EQ(got, tiny + staged);
  ASSERT_TRUE(WriteAll(*server_, "pong", 4).ok());
  char pong[4];
  ASSERT_TRUE(client_->ReadExact(pong, 4).ok());
  EXPECT_EQ(std::string(pong, 4), "pong");
  const auto counters = Rdma(client_).counters();
  EXPECT_EQ(counters.small_sends, 2u);
  EXPECT_EQ(counters.inline_sends, 1u);
  EXPECT_EQ(counters.ring_writes, 0u);
}

TEST_F(RdmaTransportTest, ABufferGatheredFromSeveralPiecesIsOneMessage) {
  Connect();
  const std::string a = "header-", b = "body";
  const ConstBuffer pieces[] = {{a.data(), a.size()}, {nullptr, 0}, {b.data(), b.size()}};
  ASSERT_TRUE(client_->Write(pieces).ok());
  std::string got(a.size() + b.size(), '\0');
  ASSERT_TRUE(server_->ReadExact(got.data(), got.size()).ok());
  EXPECT_EQ(got, a + b);
  EXPECT_EQ(Rdma(client_).counters().small_sends, 1u);
}

TEST_F(RdmaTransportTest, LargeWritesWrapTheRingAndWaitForCreditNeverForAReceiver) {
  Connect();
  const uint64_t rnr_before = FakeFabric::Get().rnr_events();
  // 1 MiB through a 64 KiB ring: chunks cross the ring's end many times,
  // and the writer must wait for the reader's credit.
  const auto sent = RandomBytes(1 << 20, 1);
  auto writer = std::async(std::launch::async,
                           [&] { return WriteAll(*client_, sent.data(), sent.size()); });
  std::vector<uint8_t> received(sent.size());
  // Read in odd pieces, so reads end inside chunks.
  size_t at = 0;
  while (at < received.size()) {
    const size_t n = std::min<size_t>(received.size() - at, 7777);
    ASSERT_TRUE(server_->ReadExact(received.data() + at, n).ok());
    at += n;
  }
  ASSERT_TRUE(writer.get().ok());
  EXPECT_EQ(received, sent);
  const auto counters = Rdma(client_).counters();
  EXPECT_EQ(counters.staged_bytes, sent.size());
  EXPECT_GE(counters.ring_writes, sent.size() / (8 << 10));
  EXPECT_GT(counters.credit_waits, 0u);
  EXPECT_GT(Rdma(server_).counters().credits_sent, 0u);
  EXPECT_EQ(FakeFabric::Get().rnr_events(), rnr_before);
}

TEST_F(RdmaTransportTest, BothSidesStreamingAtOnceNeitherStallsNorLosesOrder) {
  Connect();
  const uint64_t rnr_before = FakeFabric::Get().rnr_events();
  // Each side writes a mix of small and large messages while reading the
  // other's: credits flow both ways beside data.
  auto run_side = [](Transport& me, uint32_t seed) {
    return std::async(std::launch::async, [&me, seed] {
      std::mt19937 random(seed);
      for (int i = 0; i < 300; ++i) {
        const size_t size = (random() % 4 == 0) ? 1 + random() % 20000 : 1 + random() % 200;
        std::vector<uint8_t> message(size + 4);
        const uint32_t length = static_cast<uint32_t>(size);
        std::memcpy(message.data(), &length, 4);
        for (size_t j = 0; j < size; ++j) message[4 + j] = static_cast<uint8_t>(i + j);
        Status s = WriteAll(me, message.data(), message.size());
        if (!s.ok()) return s;
      }
      return Status::Ok();
    });
  };
  auto check_side = [](Transport& me) {
    return std::async(std::launch::async, [&me] {
      for (int i = 0; i < 300; ++i) {
        uint32_t length = 0;
        Status s = me.ReadExact(&length, 4);
        if (!s.ok()) return s;
        std::vector<uint8_t> body(length);
        s = me.ReadExact(body.data(), length);
        if (!s.ok()) return s;
        for (size_t j = 0; j < length; ++j) {
          if (body[j] != static_cast<uint8_t>(i + j)) {
            return Status::Internal("message " + std::to_string(i) + " differs at " +
                                    std::to_string(j));
          }
        }
      }
      return Status::Ok();
    });
  };
  auto client_writes = run_side(*client_, 7);
  auto server_writes = run_side(*server_, 8);
  auto server_reads = check_side(*server_);
  auto client_reads = check_side(*client_);
  for (auto* f : {&client_writes, &server_writes, &server_reads, &client_reads}) {
    Status s = f->get();
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  EXPECT_EQ(FakeFabric::Get().rnr_events(), rnr_before);
}

TEST_F(RdmaTransportTest, RegisteredHostMemoryIsSentWithoutACopyAndRegisteredOnce) {
  Connect();
  auto pinned = RandomBytes(100000, 3);  // as if from cuMemHostAlloc
  client_->RegisterHostMemory(pinned.data(), pinned.size());
  for (int round = 0; round < 3; ++round) {
    const auto got = Carry(*client_, *server_, pinned.data() + 1000, pinned.size() - 1000);
    ASSERT_EQ(0, std::memcmp(got.data(), pinned.data() + 1000, got.size()));
  }
  auto counters = Rdma(client_).counters();
  EXPECT_EQ(counters.registrations, 1u);
  EXPECT_EQ(counters.zero_copy_bytes, 3 * (pinned.size() - 1000));
  EXPECT_EQ(counters.staged_bytes, 0u);
  // Unregistered: staged again.
  client_->UnregisterHostMemory(pinned.data());
  EXPECT_EQ(Carry(*client_, *server_, pinned.data(), pinned.size()), pinned);
  EXPECT_EQ(Rdma(client_).counters().staged_bytes, pinned.size());
}

TEST_F(RdmaTransportTest, MemoryThatCannotBeRegisteredIsStagedInstead) {
  Connect();
  auto pinned = RandomBytes(50000, 4);
  client_->RegisterHostMemory(pinned.data(), pinned.size());
  FakeFabric::Get().FailNextRegistration(ENOMEM);
  EXPECT_EQ(Carry(*client_, *server_, pinned.data(), pinned.size()), pinned);
  EXPECT_EQ(Rdma(client_).counters().staged_bytes, pinned.size());
}

TEST_F(RdmaTransportTest, APeerThatShutsDownEndsTheOthersReads) {
  Connect();
  auto reader = std::async(std::launch::async, [&] {
    char byte;
    return server_->ReadExact(&byte, 1);
  });
  client_->Shutdown();
  Status read = reader.get();
  EXPECT_EQ(read.code(), StatusCode::kDisconnected) << read.ToString();
  EXPECT_TRUE(server_->PeerGoneOrTalking());
}

TEST_F(RdmaTransportTest, APeerThatIsDestroyedEndsTheOthersReads) {
  Connect();
  client_.reset();
  char byte;
  Status read = server_->ReadExact(&byte, 1);
  EXPECT_EQ(read.code(), StatusCode::kDisconnected) << read.ToString();
}

TEST_F(RdmaTransportTest, ACompletionErrorIsALostConnection) {
  Connect();
  FakeFabric::Get().InjectCompletion(Rdma(server_).queue_pair(), IBV_WC_RETRY_EXC_ERR);
  char byte;
  Status read = server_->ReadExact(&byte, 1);
  EXPECT_EQ(read.code(), StatusCode::kDisconnected);
  EXPECT_NE(read.message().find("transport retry counter exceeded"), std::string::npos)
      << read.message();
  EXPECT_EQ(WriteAll(*server_, "x", 1).code(), StatusCode::kDisconnected);
}

TEST_F(RdmaTransportTest, ARefusedPostIsALostConnection) {
  Connect();
  FakeFabric::Get().FailNextPostSend(ENOMEM);
  Status write = WriteAll(*client_, "x", 1);
  EXPECT_EQ(write.code(), StatusCode::kDisconnected);
  EXPECT_NE(write.message().find("could not be posted"), std::string::npos) << write.message();
  EXPECT_EQ(WriteAll(*client_, "y", 1).code(), StatusCode::kDisconnected);
}

TEST_F(RdmaTransportTest, AChunkAnnouncedPastTheRingIsMalformed) {
  Connect();
  // A hostile peer posts by hand: a WRITE WITH IMMEDIATE whose immediate
  // value claims more than the ring holds.
  RdmaEndpoint server_side;
  Rdma(server_).DescribeReceiving(&server_side);
  std::vector<uint8_t> bytes(16, 1);
  const Verbs* verbs = FakeFabric::Get().verbs();
  ibv_sge sge{reinterpret_cast<uint64_t>(bytes.data()), 16, 0};
  ibv_send_wr wr{};
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
  wr.send_flags = IBV_SEND_INLINE;
  wr.imm_data = htonl(static_cast<uint32_t>(server_side.ring_bytes + 1));
  wr.wr.rdma.remote_addr = server_side.ring_address;
  wr.wr.rdma.rkey = server_side.ring_key;
  ibv_send_wr* bad = nullptr;
  ASSERT_EQ(verbs->post_send(Rdma(client_).queue_pair(), &wr, &bad), 0);
  char byte;
  Status read = server_->ReadExact(&byte, 1);
  EXPECT_EQ(read.code(), StatusCode::kMalformed) << read.ToString();
}

TEST_F(RdmaTransportTest, ASilentPeerEndsAReadAtItsDeadline) {
  Connect();
  server_->SetReadDeadline(std::chrono::steady_clock::now() + 100ms);
  char byte;
  Status read = server_->ReadExact(&byte, 1);
  EXPECT_EQ(read.code(), StatusCode::kDisconnected);
  EXPECT_NE(read.message().find("silent peer"), std::string::npos) << read.message();
}

TEST_F(RdmaTransportTest, SidesWithDifferentSizesEachWriteWhatTheOtherTakes) {
  RdmaOptions big = SmallOptions();
  big.ring_bytes = 1 << 20;
  big.small_message_bytes = 4096;
  big.receive_depth = 64;
  Connect(SmallOptions(), big);
  // The client sends SENDs of up to the server's 4096 bytes; the server
  // only up to the client's 256.
  const auto sent = RandomBytes(3000, 5);
  ASSERT_TRUE(WriteAll(*client_, sent.data(), sent.size()).ok());
  std::vector<uint8_t> got(sent.size());
  ASSERT_TRUE(server_->ReadExact(got.data(), got.size()).ok());
  EXPECT_EQ(got, sent);
  EXPECT_EQ(Rdma(client_).counters().small_sends, 1u);
  EXPECT_EQ(Carry(*server_, *client_, sent.data(), sent.size()), sent);
  EXPECT_EQ(Rdma(server_).counters().small_sends, 0u);
  EXPECT_GT(Rdma(server_).counters().ring_writes, 0u);
}

TEST(RdmaConnectorTest, AHostWithoutDevicesSaysSo) {
  FakeFabric::Get().set_device_count(0);
  std::unique_ptr<RdmaConnector> connector;
  Status status = RdmaConnector::Open(FakeFabric::Get().verbs(), {}, SmallOptions(), nullptr,
                                      &connector);
  FakeFabric::Get().set_device_count(1);
  EXPECT_EQ(status.code(), StatusCode::kUnimplemented);
  EXPECT_NE(status.message().find("no RDMA device"), std::string::npos) << status.message();
}

TEST(RdmaConnectorTest, ANamedDeviceThatIsNotThereIsNamed) {
  std::unique_ptr<RdmaConnector> connector;
  DeviceChoice choice;
  choice.device = "mlx5_9";
  Status status =
      RdmaConnector::Open(FakeFabric::Get().verbs(), choice, SmallOptions(), nullptr, &connector);
  EXPECT_EQ(status.code(), StatusCode::kUnimplemented);
  EXPECT_NE(status.message().find("mlx5_9"), std::string::npos) << status.message();
}

TEST(RdmaConnectorTest, TheGidCarryingTheConnectionsAddressIsChosen) {
  sockaddr_storage local{};
  auto& v4 = reinterpret_cast<sockaddr_in&>(local);
  v4.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &v4.sin_addr);
  std::unique_ptr<RdmaConnector> connector;
  ASSERT_TRUE(
      RdmaConnector::Open(FakeFabric::Get().verbs(), {}, SmallOptions(), &local, &connector).ok());
  EXPECT_EQ(connector->Local().device, "fake0 port 1 gid 1");
  EXPECT_EQ(connector->Local().gid[10], 0xff);
  EXPECT_EQ(connector->Local().gid[12], 127);
  // An address no GID carries: index 0.
  inet_pton(AF_INET, "10.9.8.7", &v4.sin_addr);
  ASSERT_TRUE(
      RdmaConnector::Open(FakeFabric::Get().verbs(), {}, SmallOptions(), &local, &connector).ok());
  EXPECT_EQ(connector->Local().device, "fake0 port 1 gid 0");
}

TEST(RdmaConnectorTest, AnUnusablePeerEndpointIsRefused) {
  std::unique_ptr<RdmaConnector> connector;
  ASSERT_TRUE(
      RdmaConnector::Open(FakeFabric::Get().verbs(), {}, SmallOptions(), nullptr, &connector).ok());
  RdmaEndpoint peer = connector->Local();
  peer.mtu = 99;
  EXPECT_EQ(connector->ConnectQueuePair(peer).code(), StatusCode::kMalformed);
  peer = connector->Local();
  peer.ring_bytes = 1000;  // not a power of two
  ASSERT_TRUE(connector->ConnectQueuePair(peer).ok());
  std::unique_ptr<Transport> a, b;
  ASSERT_TRUE(MakeTransportPair(&a, &b).ok());
  // The other side of the socket says it is ready, but the ring it
  // described is unusable: the switch fails, clearly.
  ASSERT_TRUE(WriteAll(*b, "R", 1).ok());
  Status switched = std::move(*connector).SwitchToRdma(
      &a, true, std::chrono::steady_clock::now() + 5s);
  EXPECT_EQ(switched.code(), StatusCode::kMalformed) << switched.ToString();
}

}  // namespace
}  // namespace ferry::rdma
