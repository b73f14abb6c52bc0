// The shared-memory transport: bytes both ways through rings that wrap many
// times, shutdown waking blocked sides, a client process that exits or is
// killed being noticed (no hang), and impossible ring positions written by a
// hostile client ending the connection as Malformed instead of crashing.
#include "common/shm_transport.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <random>
#include <thread>
#include <vector>

#include "test/support/wait.h"

namespace ferry {
namespace {

std::vector<uint8_t> Pattern(size_t size, uint32_t seed) {
  std::vector<uint8_t> bytes(size);
  std::mt19937 rng(seed);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  return bytes;
}

// Writes `bytes` through `t` in random-sized pieces, several per Write.
Status WriteInPieces(Transport& t, const std::vector<uint8_t>& bytes, uint32_t seed) {
  std::mt19937 rng(seed);
  size_t at = 0;
  while (at < bytes.size()) {
    ConstBuffer pieces[3];
    size_t count = 0;
    for (; count < 3 && at < bytes.size(); ++count) {
      const size_t n = std::min<size_t>(bytes.size() - at, 1 + rng() % 200000);
      pieces[count] = {bytes.data() + at, n};
      at += n;
    }
    FERRY_RETURN_IF_ERROR(t.Write(std::span<const ConstBuffer>(pieces, count)));
  }
  return Status::Ok();
}

Status ReadInPieces(Transport& t, std::vector<uint8_t>* out, uint32_t seed) {
  std::mt19937 rng(seed);
  size_t at = 0;
  while (at < out->size()) {
    const size_t n = std::min<size_t>(out->size() - at, 1 + rng() % 150000);
    FERRY_RETURN_IF_ERROR(t.ReadExact(out->data() + at, n));
    at += n;
  }
  return Status::Ok();
}

TEST(ShmTransportTest, StreamsBytesBothWaysThroughRingsThatWrapManyTimes) {
  std::unique_ptr<Transport> server, client;
  ASSERT_TRUE(MakeShmTransportPair(&server, &client, 64 << 10).ok());
  const std::vector<uint8_t> up = Pattern(12 << 20, 1);
  const std::vector<uint8_t> down = Pattern(9 << 20, 2);
  std::vector<uint8_t> got_up(up.size()), got_down(down.size());
  Status write_up, write_down, read_down;
  std::thread client_writer([&] { write_up = WriteInPieces(*client, up, 3); });
  std::thread server_writer([&] { write_down = WriteInPieces(*server, down, 4); });
  std::thread client_reader([&] { read_down = ReadInPieces(*client, &got_down, 5); });
  ASSERT_TRUE(ReadInPieces(*server, &got_up, 6).ok());
  client_writer.join();
  server_writer.join();
  client_reader.join();
  EXPECT_TRUE(write_up.ok() && write_down.ok() && read_down.ok());
  EXPECT_EQ(got_up, up);
  EXPECT_EQ(got_down, down);
}

TEST(ShmTransportTest, PeerClosedIsNotTalking) {
  std::unique_ptr<Transport> server, client;
  ASSERT_TRUE(MakeShmTransportPair(&server, &client, 64 << 10).ok());
  EXPECT_FALSE(server->PeerClosed());
  const char byte = 7;
  const ConstBuffer buffer{&byte, 1};
  ASSERT_TRUE(client->Write(std::span<const ConstBuffer>(&buffer, 1)).ok());
  EXPECT_FALSE(server->PeerClosed());  // talking, not gone
  client.reset();
  EXPECT_TRUE(server->PeerClosed());
}

TEST(ShmTransportTest, ShutdownWakesBlockedCallsOnBothSides) {
  std::unique_ptr<Transport> server, client;
  ASSERT_TRUE(MakeShmTransportPair(&server, &client, 64 << 10).ok());
  Status server_read, client_write;
  std::thread server_reader([&] {
    uint8_t byte;
    server_read = server->ReadExact(&byte, 1);
  });
  // The client fills the server's incoming ring and blocks on it.
  std::thread client_writer([&] {
    const std::vector<uint8_t> lots(1 << 20, 9);
    client_write = client->Write(std::span<const ConstBuffer>(
        std::vector<ConstBuffer>{{lots.data(), lots.size()}}.data(), 1));
  });
  // Shut down once the client's ring is full, so its write is blocked.
  shm_layout::Header* header = static_cast<ShmTransport&>(*client).TEST_header();
  EXPECT_TRUE(test::WaitFor(
      [&] {
        return header->to_server.head.load() - header->to_server.tail.load() == header->ring_bytes;
      },
      std::chrono::seconds(10)));
  server->Shutdown();
  server_reader.join();
  client_writer.join();
  // The server's read got its byte or was woken by the shutdown; the client
  // could not have written a megabyte into a 64 KiB ring nobody drains.
  EXPECT_EQ(client_write.code(), StatusCode::kDisconnected) << client_write.ToString();
  uint8_t byte;
  EXPECT_EQ(server->ReadExact(&byte, 1).code(), StatusCode::kDisconnected);
  EXPECT_EQ(client->ReadExact(&byte, 1).code(), StatusCode::kDisconnected);
}

// The client side in a child process that ends after writing a few bytes:
// `kill` false: it exits without a word; true: the parent SIGKILLs it.
void ExpectServerNoticesTheClientGone(bool kill) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(fds[0]);
    std::unique_ptr<Transport> client;
    if (!ShmTransport::Join(fds[1], "parent", std::chrono::seconds(5), &client).ok()) _exit(2);
    const uint8_t partial[3] = {1, 2, 3};
    ConstBuffer b{partial, sizeof(partial)};
    if (!client->Write(std::span<const ConstBuffer>(&b, 1)).ok()) _exit(3);
    if (kill) pause();
    _exit(0);  // no Shutdown: only the kernel closing the socket tells
  }
  close(fds[1]);
  std::unique_ptr<Transport> server;
  ASSERT_TRUE(ShmTransport::Accept(fds[0], "child", 64 << 10, &server).ok());
  uint8_t first[3];
  ASSERT_TRUE(server->ReadExact(first, sizeof(first)).ok());
  if (kill) ::kill(child, SIGKILL);
  int status = 0;
  // The rest of a frame never comes: the read must end, not hang.
  uint8_t rest[100];
  const auto start = std::chrono::steady_clock::now();
  Status read = server->ReadExact(rest, sizeof(rest));
  EXPECT_EQ(read.code(), StatusCode::kDisconnected) << read.ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
  ASSERT_EQ(waitpid(child, &status, 0), child);
  if (!kill) {
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }
  // Writing to it fails the same way once the ring is full.
  std::vector<uint8_t> lots(1 << 20, 1);
  ConstBuffer b{lots.data(), lots.size()};
  EXPECT_EQ(server->Write(std::span<const ConstBuffer>(&b, 1)).code(), StatusCode::kDisconnected);
}

TEST(ShmTransportTest, AClientThatExitsIsNoticed) { ExpectServerNoticesTheClientGone(false); }

TEST(ShmTransportTest, AKilledClientIsNoticed) { ExpectServerNoticesTheClientGone(true); }

TEST(ShmTransportTest, ImpossiblePositionsFromTheClientAreMalformedNotFatal) {
  {
    std::unique_ptr<Transport> server, client;
    ASSERT_TRUE(MakeShmTransportPair(&server, &client, 64 << 10).ok());
    auto* header = static_cast<ShmTransport&>(*client).TEST_header();
    // A write position claiming more than the ring holds.
    header->to_server.head.store((64 << 10) + 1);
    uint8_t byte;
    EXPECT_EQ(server->ReadExact(&byte, 1).code(), StatusCode::kMalformed);
  }
  {
    std::unique_ptr<Transport> server, client;
    ASSERT_TRUE(MakeShmTransportPair(&server, &client, 64 << 10).ok());
    auto* header = static_cast<ShmTransport&>(*client).TEST_header();
    // A read position ahead of what the server ever wrote.
    header->to_client.tail.store(12345);
    const uint8_t byte = 7;
    ConstBuffer b{&byte, 1};
    EXPECT_EQ(server->Write(std::span<const ConstBuffer>(&b, 1)).code(), StatusCode::kMalformed);
  }
  {
    std::unique_ptr<Transport> server, client;
    ASSERT_TRUE(MakeShmTransportPair(&server, &client, 64 << 10).ok());
    auto* header = static_cast<ShmTransport&>(*client).TEST_header();
    // The header's own size field is not what the server goes by.
    header->ring_bytes = 1ull << 40;
    const std::vector<uint8_t> data = Pattern(200000, 8);
    std::vector<uint8_t> got(data.size());
    Status write;
    std::thread writer([&] { write = WriteInPieces(*client, data, 9); });
    EXPECT_TRUE(ReadInPieces(*server, &got, 10).ok());
    writer.join();
    EXPECT_TRUE(write.ok());
    EXPECT_EQ(got, data);
  }
}

// A read deadline ends a wait for a peer that stays silent, on both
// transports, and a read with bytes waiting still succeeds past it.
TEST(ReadDeadlineTest, ASilentPeerFailsTheReadAtTheDeadline) {
  for (bool shm : {false, true}) {
    std::unique_ptr<Transport> server, client;
    ASSERT_TRUE((shm ? MakeShmTransportPair(&server, &client, 64 << 10)
                     : MakeTransportPair(&server, &client))
                    .ok());
    uint8_t byte = 7;
    client->SetReadDeadline(std::chrono::steady_clock::now() + std::chrono::milliseconds(100));
    const Status silent = client->ReadExact(&byte, 1);
    EXPECT_EQ(silent.code(), StatusCode::kDisconnected)
        << (shm ? "shm: " : "socket: ") << silent.ToString();
    EXPECT_NE(silent.message().find("deadline"), std::string::npos) << silent.message();
    ConstBuffer b{&byte, 1};
    ASSERT_TRUE(server->Write(std::span<const ConstBuffer>(&b, 1)).ok());
    client->SetReadDeadline(kNoDeadline);
    EXPECT_TRUE(client->ReadExact(&byte, 1).ok());
  }
}

TEST(ShmTransportTest, ConnectingToNothingFailsFast) {
  std::unique_ptr<Transport> transport;
  Status status =
      ConnectTransport("unix:/nonexistent/ferry.sock", std::chrono::seconds(2), &transport);
  EXPECT_EQ(status.code(), StatusCode::kDisconnected) << status.ToString();
  EXPECT_NE(status.message().find("unix:/nonexistent/ferry.sock"), std::string::npos);
}

}  // namespace
}  // namespace ferry
