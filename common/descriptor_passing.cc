#include "common/descriptor_passing.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace ferry {

Status SendWithDescriptors(int socket, std::span<const uint8_t> bytes, std::span<const int> fds,
                           std::chrono::steady_clock::time_point deadline) {
  if (fds.size() > kMaxPassedDescriptors) {
    return Status::InvalidArgument("at most " + std::to_string(kMaxPassedDescriptors) +
                                   " descriptors go with one message");
  }
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxPassedDescriptors)] = {};
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  const bool bounded = deadline != std::chrono::steady_clock::time_point::max();
  ssize_t sent;
  for (;;) {
    sent = ::sendmsg(socket, &msg, MSG_NOSIGNAL | (bounded ? MSG_DONTWAIT : 0));
    if (sent >= 0 || errno == EINTR) {
      if (sent >= 0) break;
      continue;
    }
    if (!bounded || (errno != EAGAIN && errno != EWOULDBLOCK)) break;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return Status::Disconnected("the peer takes no messages (its buffer is full)");
    pollfd pfd{socket, POLLOUT, 0};
    (void)::poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
  }
  if (sent < 0) return Status::Disconnected(std::string("sendmsg failed: ") + std::strerror(errno));
  if (static_cast<size_t>(sent) != bytes.size()) return Status::Disconnected("short sendmsg");
  return Status::Ok();
}

Status ReceiveWithDescriptors(int socket, size_t max_bytes, std::vector<uint8_t>* bytes,
                              std::vector<int>* fds) {
  fds->clear();
  // One byte more than allowed, so that an over-long message shows.
  bytes->resize(max_bytes + 1);
  iovec iov{bytes->data(), bytes->size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxPassedDescriptors)] = {};
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t got;
  do {
    got = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
  } while (got < 0 && errno == EINTR);
  if (got < 0) return Status::Disconnected(std::string("recvmsg failed: ") + std::strerror(errno));
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds->push_back(fd);
    }
  }
  auto refuse = [&](const std::string& why) {
    for (int fd : *fds) ::close(fd);
    fds->clear();
    return Status::Malformed(why);
  };
  if ((msg.msg_flags & MSG_CTRUNC) != 0 || fds->size() > kMaxPassedDescriptors) {
    return refuse("a message came with too many descriptors");
  }
  if (got == 0 && fds->empty()) return Status::Disconnected("the peer closed the socket");
  if (static_cast<size_t>(got) > max_bytes || (msg.msg_flags & MSG_TRUNC) != 0) {
    return refuse("a message longer than " + std::to_string(max_bytes) + " bytes");
  }
  bytes->resize(static_cast<size_t>(got));
  return Status::Ok();
}

}  // namespace ferry
