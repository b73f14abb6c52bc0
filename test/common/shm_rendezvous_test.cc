// ShmRendezvous and ConnectShmRendezvous (common/shm_rendezvous.h): the
// client with the nonce is accepted, whatever else connects first (a wrong
// nonce, silence, a flood past the cap, a nonce in pieces); nobody by the
// deadline is Disconnected; names nobody listens on, or no rendezvous could
// have, are told apart; the boot id is this kernel's.
#include "common/shm_rendezvous.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <vector>

namespace ferry {
namespace {

using namespace std::chrono_literals;

// A connection to the abstract socket `name` that writes nothing; -1 if it
// cannot connect. Non-blocking, so a full backlog fails instead of waiting.
int ConnectSilently(const std::string& name) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path + 1, name.data(), name.size());
  const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), length) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Whether ferryd's end of `fd` closes within `timeout` (a read sees the end).
bool ClosedWithin(int fd, std::chrono::milliseconds timeout) {
  pollfd pfd{fd, POLLIN, 0};
  if (::poll(&pfd, 1, static_cast<int>(timeout.count())) != 1) return false;
  char byte;
  return ::recv(fd, &byte, 1, MSG_DONTWAIT) == 0;
}

// Whether `a` and `b` are the two ends of one connection.
bool Connected(int a, int b) {
  const char sent = 'x';
  char got = 0;
  return ::send(a, &sent, 1, MSG_NOSIGNAL) == 1 && ::recv(b, &got, 1, 0) == 1 && got == sent;
}

class ShmRendezvousTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(ShmRendezvous::Open("test session", &rendezvous_).ok()); }

  // AcceptClient on a thread of its own, with `timeout`.
  std::future<Status> AcceptAsync(std::chrono::milliseconds timeout, int* socket) {
    return std::async(std::launch::async, [this, timeout, socket] {
      return rendezvous_->AcceptClient(std::chrono::steady_clock::now() + timeout, socket);
    });
  }

  std::unique_ptr<ShmRendezvous> rendezvous_;
};

TEST(BootIdTest, IsThisKernelsAndTheSameEveryTime) {
  std::string first, second;
  ASSERT_TRUE(BootId(&first).ok());
  ASSERT_TRUE(BootId(&second).ok());
  EXPECT_EQ(first, second);
  EXPECT_EQ(first.size(), 36u) << first;  // a UUID
}

TEST_F(ShmRendezvousTest, NamesAreAbstractRandomAndNoncesRandom) {
  std::unique_ptr<ShmRendezvous> other;
  ASSERT_TRUE(ShmRendezvous::Open("other", &other).ok());
  EXPECT_EQ(rendezvous_->name().rfind("ferry-shm-", 0), 0u) << rendezvous_->name();
  EXPECT_NE(rendezvous_->name(), other->name());
  EXPECT_NE(rendezvous_->nonce(), other->nonce());
}

TEST_F(ShmRendezvousTest, TheClientWithTheNonceIsAccepted) {
  int server = -1;
  std::future<Status> accepted = AcceptAsync(10s, &server);
  int client = -1;
  ASSERT_TRUE(ConnectShmRendezvous(rendezvous_->name(), rendezvous_->nonce(), 5s, &client).ok());
  ASSERT_TRUE(accepted.get().ok());
  EXPECT_TRUE(Connected(client, server));
  ::close(client);
  ::close(server);
}

TEST_F(ShmRendezvousTest, StrangersAreTurnedAwayAndTheClientAcceptedAfterThem) {
  // All connect before ferryd looks: a wrong nonce, silence, and one that
  // hangs up half-way.
  int wrong = -1;
  ShmNonce bad = rendezvous_->nonce();
  bad[7] ^= 1;
  ASSERT_TRUE(ConnectShmRendezvous(rendezvous_->name(), bad, 5s, &wrong).ok());
  const int silent = ConnectSilently(rendezvous_->name());
  ASSERT_GE(silent, 0);
  const int quitter = ConnectSilently(rendezvous_->name());
  ASSERT_GE(quitter, 0);
  ASSERT_EQ(::send(quitter, rendezvous_->nonce().data(), 5, MSG_NOSIGNAL), 5);
  ::close(quitter);
  // The client's nonce in two pieces.
  const int client = ConnectSilently(rendezvous_->name());
  ASSERT_GE(client, 0);
  ASSERT_EQ(::send(client, rendezvous_->nonce().data(), 3, MSG_NOSIGNAL), 3);

  int server = -1;
  std::future<Status> accepted = AcceptAsync(10s, &server);
  ASSERT_EQ(::send(client, rendezvous_->nonce().data() + 3, kShmNonceBytes - 3, MSG_NOSIGNAL),
            static_cast<ssize_t>(kShmNonceBytes - 3));
  ASSERT_TRUE(accepted.get().ok());
  EXPECT_TRUE(ClosedWithin(wrong, 5000ms));
  EXPECT_TRUE(ClosedWithin(silent, 5000ms));
  pollfd pfd{client, POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 0), 0) << "the client's connection must stay open";
  EXPECT_TRUE(Connected(server, client));
  for (int fd : {wrong, silent, client, server}) ::close(fd);
}

TEST_F(ShmRendezvousTest, AFloodOfSilentConnectionsDoesNotKeepTheClientOut) {
  int server = -1;
  std::future<Status> accepted = AcceptAsync(20s, &server);
  std::vector<int> strangers;
  for (size_t i = 0; i < 2 * ShmRendezvous::kMaxCandidates; ++i) {
    const int fd = ConnectSilently(rendezvous_->name());
    if (fd >= 0) strangers.push_back(fd);
  }
  int client = -1;
  const Status connected =
      ConnectShmRendezvous(rendezvous_->name(), rendezvous_->nonce(), 10s, &client);
  ASSERT_TRUE(connected.ok()) << connected.ToString();
  ASSERT_TRUE(accepted.get().ok());
  EXPECT_TRUE(Connected(client, server));
  for (int fd : strangers) EXPECT_TRUE(ClosedWithin(fd, 5000ms));
  for (int fd : strangers) ::close(fd);
  ::close(client);
  ::close(server);
}

TEST_F(ShmRendezvousTest, ASilentStrangerAloneEndsInDisconnectedAtTheDeadline) {
  const int silent = ConnectSilently(rendezvous_->name());
  ASSERT_GE(silent, 0);
  int server = -1;
  const Status accepted =
      rendezvous_->AcceptClient(std::chrono::steady_clock::now() + 300ms, &server);
  EXPECT_EQ(accepted.code(), StatusCode::kDisconnected) << accepted.ToString();
  EXPECT_TRUE(ClosedWithin(silent, 5000ms));
  ::close(silent);
}

TEST(ConnectShmRendezvousTest, SaysWhyItCannotReachOrUseAName) {
  const ShmNonce nonce{};
  int fd = -1;
  const Status nobody = ConnectShmRendezvous("ferry-shm-nobody-listens-here", nonce, 1s, &fd);
  EXPECT_EQ(nobody.code(), StatusCode::kDisconnected) << nobody.ToString();
  EXPECT_NE(nobody.message().find("Connection refused"), std::string::npos) << nobody.message();
  EXPECT_EQ(ConnectShmRendezvous("", nonce, 1s, &fd).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ConnectShmRendezvous(std::string(200, 'x'), nonce, 1s, &fd).code(),
            StatusCode::kInvalidArgument);
  const std::vector<uint8_t> short_nonce(4);
  EXPECT_EQ(ConnectShmRendezvous("ferry-shm-x", short_nonce, 1s, &fd).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ferry
