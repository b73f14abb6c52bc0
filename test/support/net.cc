#include "test/support/net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>

namespace ferry::test {
namespace {

// Binds a new TCP socket to 127.0.0.1:0; its port in `*port`, or -1.
int BindLoopback(int* port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    close(fd);
    return -1;
  }
  *port = ntohs(address.sin_port);
  return fd;
}

}  // namespace

int ListenOnLoopback(int* port) {
  const int fd = BindLoopback(port);
  if (fd < 0) return -1;
  if (listen(fd, 16) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

Status MakeLoopbackTcpPair(std::unique_ptr<Transport>* server, std::unique_ptr<Transport>* client) {
  int port = 0;
  const int listener = ListenOnLoopback(&port);
  if (listener < 0) return Status::Internal("cannot listen on 127.0.0.1");
  const std::string address = "127.0.0.1:" + std::to_string(port);
  Status connected = ConnectTcp(address, std::chrono::seconds(5), client);
  const int fd = connected.ok() ? accept4(listener, nullptr, nullptr, SOCK_CLOEXEC) : -1;
  close(listener);
  if (!connected.ok()) return connected;
  if (fd < 0) return Status::Internal("accept on 127.0.0.1 failed");
  *server = std::make_unique<SocketTransport>(fd, "127.0.0.1 (test client)");
  return Status::Ok();
}

int ClosedLoopbackPort() {
  int port = -1;
  const int fd = BindLoopback(&port);
  if (fd < 0) return -1;
  close(fd);
  return port;
}

}  // namespace ferry::test
