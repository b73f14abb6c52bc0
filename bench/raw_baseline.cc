#include "raw_baseline.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "common/transport.h"

namespace ferry::bench {
namespace {

using Clock = std::chrono::steady_clock;

// A connected loopback TCP pair, both ends tuned like ferry's sockets.
struct SocketPair {
  int client = -1;
  int server = -1;
  ~SocketPair() {
    if (client >= 0) ::close(client);
    if (server >= 0) ::close(server);
  }
};

Status MakeLoopbackPair(SocketPair* pair) {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) return Status::Internal("socket failed");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    ::close(listener);
    return Status::Internal(std::string("cannot listen on loopback: ") + std::strerror(errno));
  }
  pair->client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (pair->client < 0 ||
      ::connect(pair->client, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ::close(listener);
    return Status::Internal(std::string("cannot connect on loopback: ") + std::strerror(errno));
  }
  pair->server = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  ::close(listener);
  if (pair->server < 0) return Status::Internal("accept failed");
  TuneTcpSocket(pair->client);
  TuneTcpSocket(pair->server);
  return Status::Ok();
}

// Moves all `size` bytes at `p` with `io` (one send or recv call on the
// pointer and the bytes left), again after EINTR; false when the peer is gone
// or the socket fails.
template <typename Byte, typename Io>
bool TransferAll(Byte* p, size_t size, Io io) {
  while (size > 0) {
    const ssize_t n = io(p, size);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return false;
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool SendAll(int fd, const void* data, size_t size) {
  return TransferAll(static_cast<const char*>(data), size,
                     [fd](const char* p, size_t n) { return ::send(fd, p, n, MSG_NOSIGNAL); });
}

bool RecvAll(int fd, void* data, size_t size) {
  return TransferAll(static_cast<char*>(data), size,
                     [fd](char* p, size_t n) { return ::recv(fd, p, n, 0); });
}

}  // namespace

Status RawTcpRoundTrip(int iterations, double* median_us) {
  SocketPair pair;
  FERRY_RETURN_IF_ERROR(MakeLoopbackPair(&pair));
  constexpr size_t kMessage = 64;
  const int warmup = std::max(100, iterations / 10);
  std::thread echo([&] {
    char buffer[kMessage];
    for (int i = 0; i < warmup + iterations; ++i) {
      if (!RecvAll(pair.server, buffer, kMessage) || !SendAll(pair.server, buffer, kMessage))
        return;
    }
  });
  char buffer[kMessage] = {1};
  std::vector<double> samples;
  samples.reserve(iterations);
  bool ok = true;
  for (int i = 0; i < warmup + iterations && ok; ++i) {
    const auto start = Clock::now();
    ok = SendAll(pair.client, buffer, kMessage) && RecvAll(pair.client, buffer, kMessage);
    if (i >= warmup) {
      samples.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    }
  }
  echo.join();
  if (!ok) return Status::Internal("loopback ping-pong failed");
  std::nth_element(samples.begin(), samples.begin() + samples.size() / 2, samples.end());
  *median_us = samples[samples.size() / 2];
  return Status::Ok();
}

Status RawTcpBandwidth(uint64_t total_bytes, uint64_t chunk_bytes, double* gb_per_s) {
  SocketPair pair;
  FERRY_RETURN_IF_ERROR(MakeLoopbackPair(&pair));
  std::vector<char> send_buffer(chunk_bytes, 7);
  std::vector<char> receive_buffer(chunk_bytes, 0);
  const uint64_t chunks = std::max<uint64_t>(1, total_bytes / chunk_bytes);
  bool receive_ok = true;
  std::thread receiver([&] {
    for (uint64_t i = 0; i < chunks && receive_ok; ++i) {
      receive_ok = RecvAll(pair.server, receive_buffer.data(), chunk_bytes);
    }
    char ack = 1;
    SendAll(pair.server, &ack, 1);
  });
  const auto start = Clock::now();
  bool send_ok = true;
  for (uint64_t i = 0; i < chunks && send_ok; ++i) {
    send_ok = SendAll(pair.client, send_buffer.data(), chunk_bytes);
  }
  char ack = 0;
  send_ok = send_ok && RecvAll(pair.client, &ack, 1);  // the receiver has every byte
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  receiver.join();
  if (!send_ok || !receive_ok) return Status::Internal("loopback stream failed");
  *gb_per_s = static_cast<double>(chunks * chunk_bytes) / seconds / 1e9;
  return Status::Ok();
}

double MemcpyBandwidth(uint64_t buffer_bytes, uint64_t total_bytes) {
  std::vector<char> from(buffer_bytes, 3);
  std::vector<char> to(buffer_bytes, 0);
  std::memcpy(to.data(), from.data(), buffer_bytes);  // warm both
  const uint64_t rounds = std::max<uint64_t>(1, total_bytes / buffer_bytes);
  const auto start = Clock::now();
  for (uint64_t i = 0; i < rounds; ++i) {
    from[i % buffer_bytes] = static_cast<char>(i);
    std::memcpy(to.data(), from.data(), buffer_bytes);
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  // Keeps the copies observable.
  volatile char sink = to[rounds % buffer_bytes];
  (void)sink;
  return static_cast<double>(rounds * buffer_bytes) / seconds / 1e9;
}

}  // namespace ferry::bench
