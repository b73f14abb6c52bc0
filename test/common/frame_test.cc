// Frames and the socket transport: round trips, gathered writes, and every way
// a frame can be malformed.
#include "common/frame.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "common/transport.h"

namespace ferry {
namespace {

class FrameTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(MakeTransportPair(&a_, &b_).ok()); }
  std::unique_ptr<Transport> a_, b_;
};

TEST_F(FrameTest, RoundTripWithBulk) {
  capnp::MallocMessageBuilder message;
  auto hello = message.initRoot<wire::Hello>();
  hello.setPid(4242);
  hello.setProgram("frame_test");
  std::vector<uint8_t> first(100000), second(7);
  for (size_t i = 0; i < first.size(); ++i) first[i] = static_cast<uint8_t>(i * 7);
  for (size_t i = 0; i < second.size(); ++i) second[i] = static_cast<uint8_t>(200 + i);
  ConstBuffer bulk[2] = {{first.data(), first.size()}, {second.data(), second.size()}};
  std::thread writer(
      [&] { ASSERT_TRUE(WriteFrame(*a_, wire::FrameKind::HELLO, message, bulk).ok()); });
  Frame frame;
  ASSERT_TRUE(ReadFrame(*b_, &frame).ok());
  writer.join();
  EXPECT_EQ(frame.kind, wire::FrameKind::HELLO);
  capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
  EXPECT_EQ(reader.getRoot<wire::Hello>().getPid(), 4242u);
  EXPECT_STREQ(reader.getRoot<wire::Hello>().getProgram().cStr(), "frame_test");
  ASSERT_EQ(frame.bulk.size, first.size() + second.size());
  EXPECT_EQ(std::memcmp(frame.bulk.data.get(), first.data(), first.size()), 0);
  EXPECT_EQ(std::memcmp(frame.bulk.data.get() + first.size(), second.data(), second.size()), 0);
}

TEST_F(FrameTest, StatusSurvivesTheWire) {
  capnp::MallocMessageBuilder message;
  auto reply = message.initRoot<wire::Reply>();
  StatusToWire(Status::OutOfMemory("slice is full"), reply.initStatus());
  Status back = StatusFromWire(reply.getStatus());
  EXPECT_EQ(back.code(), StatusCode::kOutOfMemory);
  EXPECT_EQ(back.cuda_result(), 2);  // CUDA_ERROR_OUT_OF_MEMORY
  EXPECT_EQ(back.message(), "slice is full");
  EXPECT_TRUE(StatusFromWire(message.initRoot<wire::Reply>().initStatus()).ok());
}

// Writes raw bytes as if from a hostile peer and expects ReadFrame to refuse.
void ExpectMalformed(Transport& writer, Transport& reader, const std::vector<uint8_t>& bytes) {
  std::thread t([&] {
    ConstBuffer b{bytes.data(), bytes.size()};
    (void)writer.Write(std::span<const ConstBuffer>(&b, 1));
    writer.Shutdown();
  });
  Frame frame;
  Status status = ReadFrame(reader, &frame);
  t.join();
  EXPECT_FALSE(status.ok());
}

std::vector<uint8_t> Header(uint32_t magic, uint16_t kind, uint32_t message_bytes, uint64_t bulk) {
  std::vector<uint8_t> h(kFrameHeaderBytes, 0);
  std::memcpy(h.data(), &magic, 4);
  std::memcpy(h.data() + 4, &kind, 2);
  std::memcpy(h.data() + 8, &message_bytes, 4);
  std::memcpy(h.data() + 16, &bulk, 8);
  return h;
}

TEST_F(FrameTest, BadMagic) { ExpectMalformed(*a_, *b_, Header(0xdeadbeef, 3, 8, 0)); }
TEST_F(FrameTest, UnknownKind) { ExpectMalformed(*a_, *b_, Header(wire::FRAME_MAGIC, 99, 8, 0)); }
TEST_F(FrameTest, OversizedMessage) {
  ExpectMalformed(*a_, *b_, Header(wire::FRAME_MAGIC, 3, kMaxMessageBytes + 8, 0));
}
TEST_F(FrameTest, UnalignedMessage) {
  ExpectMalformed(*a_, *b_, Header(wire::FRAME_MAGIC, 3, 12, 0));
}
TEST_F(FrameTest, OversizedBulk) {
  ExpectMalformed(*a_, *b_, Header(wire::FRAME_MAGIC, 3, 8, kMaxBulkBytes + 1));
}
TEST_F(FrameTest, HandshakeLimitsRefuseBulkAndLargeMessagesAtTheHeader) {
  // Only the header is written: the refusal comes before any payload.
  for (const auto& header :
       {Header(wire::FRAME_MAGIC, 1, 8, 1), Header(wire::FRAME_MAGIC, 1, 8, 16ull << 30),
        Header(wire::FRAME_MAGIC, 1, (64u << 10) + 8, 0)}) {
    ConstBuffer b{header.data(), header.size()};
    ASSERT_TRUE(a_->Write(std::span<const ConstBuffer>(&b, 1)).ok());
    Frame frame;
    const Status status = ReadFrame(*b_, &frame, kHandshakeFrameLimits);
    EXPECT_EQ(status.code(), StatusCode::kMalformed) << status.ToString();
    EXPECT_NE(status.message().find("before the handshake"), std::string::npos) << status.message();
  }
}
TEST_F(FrameTest, TruncatedFrame) {
  auto bytes = Header(wire::FRAME_MAGIC, 3, 64, 0);
  bytes.resize(bytes.size() + 10);  // 10 of the 64 promised bytes, then EOF
  ExpectMalformed(*a_, *b_, bytes);
}

TEST(TransportTest, ParseHostPort) {
  std::string host;
  uint16_t port = 0;
  ASSERT_TRUE(ParseHostPort("127.0.0.1:7070", &host, &port).ok());
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 7070);
  ASSERT_TRUE(ParseHostPort("[::1]:0", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, 0);
  EXPECT_FALSE(ParseHostPort("localhost", &host, &port).ok());
  EXPECT_FALSE(ParseHostPort("host:70700", &host, &port).ok());
  EXPECT_FALSE(ParseHostPort("127.0.0.1:99999", &host, &port).ok());
  EXPECT_FALSE(ParseHostPort("host:7a", &host, &port).ok());
  EXPECT_FALSE(ParseHostPort(":7070", &host, &port).ok());
}

TEST(TransportTest, OnlyLoopbackAddressesCountAsLoopback) {
  for (const char* local : {"127.0.0.1:7070", "127.3.4.5:1", "[::1]:0", "localhost:7070",
                            "[::ffff:127.0.0.1]:7070"}) {
    EXPECT_TRUE(IsLoopbackAddress(local)) << local;
  }
  for (const char* remote : {"192.0.2.1:7070", "10.0.0.1:7070", "[::2]:7070", "0.0.0.0:7070",
                             "gpu.example.org:7070", "localhost.example.org:7070",
                             "[::ffff:10.0.0.1]:7070", "127.0.0.1", "unix:/tmp/ferryd.sock"}) {
    EXPECT_FALSE(IsLoopbackAddress(remote)) << remote;
  }
}

TEST(TransportTest, RefusedConnectionNamesTheServer) {
  // A port that was just free: bind, learn it, close.
  std::unique_ptr<Transport> transport;
  Status status = ConnectTcp("127.0.0.1:1", std::chrono::milliseconds(2000), &transport);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kDisconnected);
  EXPECT_NE(status.message().find("127.0.0.1:1"), std::string::npos) << status.message();
}

TEST(TransportTest, LargeGatheredWriteArrivesWhole) {
  std::unique_ptr<Transport> a, b;
  ASSERT_TRUE(MakeTransportPair(&a, &b).ok());
  // More buffers than one writev takes, and more bytes than a socket buffer.
  std::vector<std::vector<uint8_t>> parts(200);
  size_t total = 0;
  std::mt19937 rng(7);
  for (auto& p : parts) {
    p.resize(rng() % 50000);
    for (auto& byte : p) byte = static_cast<uint8_t>(rng());
    total += p.size();
  }
  std::vector<ConstBuffer> buffers;
  for (auto& p : parts) buffers.push_back({p.data(), p.size()});
  std::thread writer([&] { ASSERT_TRUE(a->Write(buffers).ok()); });
  std::vector<uint8_t> got(total);
  ASSERT_TRUE(b->ReadExact(got.data(), got.size()).ok());
  writer.join();
  size_t offset = 0;
  for (auto& p : parts) {
    ASSERT_EQ(std::memcmp(got.data() + offset, p.data(), p.size()), 0);
    offset += p.size();
  }
}

}  // namespace
}  // namespace ferry
