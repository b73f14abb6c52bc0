#include "common/shm_transport.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>

#include "common/busy_poll.h"

namespace ferry {
namespace {

using shm_layout::Header;
using shm_layout::Ring;

// What the server sends with the descriptor.
struct SetupMessage {
  uint32_t magic;
  uint32_t version;
  uint64_t ring_bytes;
  uint64_t region_bytes;
};

// The msghdr that carries a SetupMessage and, beside it, one file descriptor
// (SCM_RIGHTS): the iovec and the control buffer it points at live here, so
// an envelope stays where it was made.
struct SetupEnvelope {
  explicit SetupEnvelope(SetupMessage* setup) : iov{setup, sizeof(*setup)} {
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
  }
  SetupEnvelope(const SetupEnvelope&) = delete;
  SetupEnvelope& operator=(const SetupEnvelope&) = delete;

  iovec iov;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
};

// Bytes copied between publications of a position, so the other side can
// start on the first part of a large write while the rest is copied.
constexpr uint64_t kPublishEvery = 256 << 10;

std::string ErrnoText(int err) { return std::strerror(err); }

// futex(2) on a word of the shared region: not FUTEX_PRIVATE, since the
// other side is another process.
void FutexWait(std::atomic<uint32_t>& word, uint32_t expected, std::chrono::milliseconds timeout) {
  timespec ts{};
  ts.tv_sec = timeout.count() / 1000;
  ts.tv_nsec = (timeout.count() % 1000) * 1000000;
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

void FutexWakeAll(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE, INT32_MAX, nullptr, nullptr,
          0);
}

// Wakes whoever sleeps on `event`, if anyone said it would.
void Signal(std::atomic<uint32_t>& event, std::atomic<uint32_t>& sleeping) {
  // Pairs with the sleeper's fence: either it sees the new position, or we
  // see its flag.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (sleeping.load(std::memory_order_relaxed) != 0) {
    event.fetch_add(1, std::memory_order_release);
    FutexWakeAll(event);
  }
}

uint64_t RegionBytes(uint64_t ring_bytes) { return shm_layout::kHeaderBytes + 2 * ring_bytes; }

bool ValidRingBytes(uint64_t ring_bytes) {
  return ring_bytes >= shm_layout::kMinRingBytes && ring_bytes <= shm_layout::kMaxRingBytes &&
         (ring_bytes & (ring_bytes - 1)) == 0;
}

Status WaitReadable(int fd, std::chrono::milliseconds timeout, const std::string& peer) {
  pollfd pfd{fd, POLLIN, 0};
  for (;;) {
    const int ready = ::poll(&pfd, 1, static_cast<int>(timeout.count()));
    if (ready > 0) return Status::Ok();
    if (ready == 0) {
      return Status::Disconnected("no shared memory from " + peer + " within " +
                                  std::to_string(timeout.count()) + " ms");
    }
    if (errno != EINTR) return Status::Disconnected("poll failed: " + ErrnoText(errno));
  }
}

}  // namespace

ShmTransport::ShmTransport(int socket, std::string peer_name, void* region, uint64_t region_bytes,
                           bool server_side, int memfd)
    : socket_(socket),
      memfd_(memfd),
      peer_name_(std::move(peer_name)),
      region_(region),
      region_bytes_(region_bytes),
      server_side_(server_side),
      header_(static_cast<Header*>(region)),
      ring_bytes_((region_bytes - shm_layout::kHeaderBytes) / 2),
      in_(server_side ? header_->to_server : header_->to_client),
      out_(server_side ? header_->to_client : header_->to_server) {
  uint8_t* rings = static_cast<uint8_t*>(region) + shm_layout::kHeaderBytes;
  in_data_ = server_side ? rings : rings + ring_bytes_;
  out_data_ = server_side ? rings + ring_bytes_ : rings;
}

ShmTransport::~ShmTransport() {
  // Released: the connection lives on in another process; close nothing
  // of it.
  if (socket_ >= 0) Shutdown();
  ::munmap(region_, region_bytes_);
  if (socket_ >= 0) ::close(socket_);
  if (memfd_ >= 0) ::close(memfd_);
}

Status ShmTransport::Release(TransportHandover* out) {
  if (!server_side_ || memfd_ < 0 || socket_ < 0) {
    return Status::Internal("only ferryd's side of a shared-memory connection can be handed over");
  }
  if (shut_down_.load(std::memory_order_acquire)) {
    return Status::Disconnected("connection to " + peer_name_ + " shut down");
  }
  out->kind = TransportHandover::Kind::kShm;
  out->peer_name = peer_name_;
  out->fds = {socket_, memfd_};
  out->read_position = in_tail_;
  out->write_position = out_head_;
  socket_ = -1;
  memfd_ = -1;
  // Nothing may touch the rings from here on: the adopter owns them.
  shut_down_.store(true, std::memory_order_release);
  return Status::Ok();
}

Status ShmTransport::Adopt(TransportHandover handover, std::unique_ptr<Transport>* out) {
  if (handover.kind != TransportHandover::Kind::kShm || handover.fds.size() != 2) {
    return Status::InvalidArgument("not a shared-memory connection handover");
  }
  const int memfd = handover.fds[1];
  struct stat st {};
  if (::fstat(memfd, &st) != 0 || st.st_size < static_cast<off_t>(shm_layout::kHeaderBytes)) {
    return Status::InvalidArgument("the handed-over shared region cannot be sized");
  }
  const uint64_t region_bytes = static_cast<uint64_t>(st.st_size);
  const uint64_t ring_bytes = (region_bytes - shm_layout::kHeaderBytes) / 2;
  if (!ValidRingBytes(ring_bytes) || RegionBytes(ring_bytes) != region_bytes) {
    return Status::InvalidArgument("the handed-over shared region has a bad size");
  }
  void* region = ::mmap(nullptr, region_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (region == MAP_FAILED) {
    return Status::OutOfMemory("cannot map the handed-over shared region: " + ErrnoText(errno));
  }
  auto* transport = new ShmTransport(handover.fds[0], std::move(handover.peer_name), region,
                                     region_bytes, /*server_side=*/true, memfd);
  handover.fds.clear();
  transport->in_tail_ = handover.read_position;
  transport->out_head_ = handover.write_position;
  out->reset(transport);
  return Status::Ok();
}

Status ShmTransport::Accept(int socket, std::string peer_name, uint64_t ring_bytes,
                            std::unique_ptr<Transport>* out) {
  if (!ValidRingBytes(ring_bytes)) {
    ::close(socket);
    return Status::InvalidArgument("shared memory ring of " + std::to_string(ring_bytes) +
                                   " bytes: must be a power of two between 64 KiB and 1 GiB");
  }
  const uint64_t region_bytes = RegionBytes(ring_bytes);
  const int memfd = ::memfd_create("ferry-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (memfd < 0) {
    ::close(socket);
    return Status::Internal("memfd_create failed: " + ErrnoText(errno));
  }
  // Sealed: the client can neither shrink the region under ferryd's mapping
  // (which would fault ferryd) nor grow it.
  if (::ftruncate(memfd, static_cast<off_t>(region_bytes)) != 0 ||
      ::fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    const int err = errno;
    ::close(memfd);
    ::close(socket);
    return Status::Internal("cannot size and seal the shared region: " + ErrnoText(err));
  }
  void* region = ::mmap(nullptr, region_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (region == MAP_FAILED) {
    const int err = errno;
    ::close(memfd);
    ::close(socket);
    return Status::OutOfMemory("cannot map a shared region of " + std::to_string(region_bytes) +
                               " bytes: " + ErrnoText(err));
  }
  Header* header = new (region) Header{};
  header->magic = shm_layout::kMagic;
  header->version = shm_layout::kVersion;
  header->ring_bytes = ring_bytes;

  SetupMessage setup{shm_layout::kMagic, shm_layout::kVersion, ring_bytes, region_bytes};
  SetupEnvelope envelope(&setup);
  msghdr& msg = envelope.msg;
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), &memfd, sizeof(int));
  ssize_t sent;
  do {
    sent = ::sendmsg(socket, &msg, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  const int err = errno;
  if (sent != static_cast<ssize_t>(sizeof(setup))) {
    ::close(memfd);
    ::munmap(region, region_bytes);
    ::close(socket);
    return Status::Disconnected("cannot pass shared memory to " + peer_name + ": " +
                                (sent < 0 ? ErrnoText(err) : std::string("short write")));
  }
  // ferryd keeps the memfd, so that it can hand the connection over.
  out->reset(new ShmTransport(socket, std::move(peer_name), region, region_bytes,
                              /*server_side=*/true, memfd));
  return Status::Ok();
}

Status ShmTransport::Join(int socket, std::string peer_name, std::chrono::milliseconds timeout,
                          std::unique_ptr<Transport>* out) {
  auto fail = [&](Status status) {
    ::close(socket);
    return status;
  };
  Status ready = WaitReadable(socket, timeout, peer_name);
  if (!ready.ok()) return fail(ready);
  SetupMessage setup{};
  SetupEnvelope envelope(&setup);
  msghdr& msg = envelope.msg;
  ssize_t got;
  do {
    got = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
  } while (got < 0 && errno == EINTR);
  int memfd = -1;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
        c->cmsg_len == CMSG_LEN(sizeof(int))) {
      std::memcpy(&memfd, CMSG_DATA(c), sizeof(int));
    }
  }
  if (got != static_cast<ssize_t>(sizeof(setup)) || memfd < 0) {
    if (memfd >= 0) ::close(memfd);
    return fail(Status::Disconnected(peer_name + " did not hand over shared memory" +
                                     (got < 0 ? ": " + ErrnoText(errno) : std::string())));
  }
  struct stat st {};
  if (setup.magic != shm_layout::kMagic || setup.version != shm_layout::kVersion ||
      !ValidRingBytes(setup.ring_bytes) || setup.region_bytes != RegionBytes(setup.ring_bytes) ||
      ::fstat(memfd, &st) != 0 || static_cast<uint64_t>(st.st_size) != setup.region_bytes) {
    ::close(memfd);
    return fail(Status::Malformed("bad shared memory setup from " + peer_name));
  }
  void* region = ::mmap(nullptr, setup.region_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  const int err = errno;
  ::close(memfd);
  if (region == MAP_FAILED) {
    return fail(Status::OutOfMemory("cannot map the shared region: " + ErrnoText(err)));
  }
  out->reset(new ShmTransport(socket, std::move(peer_name), region, setup.region_bytes,
                              /*server_side=*/false, /*memfd=*/-1));
  return Status::Ok();
}

Status ShmTransport::Alive(bool check_socket) {
  if (shut_down_.load(std::memory_order_acquire)) {
    return Status::Disconnected("connection to " + peer_name_ + " shut down");
  }
  const std::atomic<uint32_t>& peer_closed =
      server_side_ ? header_->client_closed : header_->server_closed;
  if (peer_closed.load(std::memory_order_acquire) != 0) {
    return Status::Disconnected("connection closed by " + peer_name_);
  }
  if (check_socket) {
    pollfd pfd{socket_, POLLIN | POLLRDHUP, 0};
    if (::poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLIN)) != 0) {
      // Nothing is ever sent on the socket after the setup, so readable
      // means closed.
      return Status::Disconnected("connection closed by " + peer_name_ + " (it exited)");
    }
  }
  return Status::Ok();
}

Status ShmTransport::Corrupt(const char* what) {
  return Status::Malformed(std::string("shared memory ring from ") + peer_name_ + ": " + what);
}

Status ShmTransport::Wait(std::atomic<uint32_t>& event, std::atomic<uint32_t>& sleeping,
                          BusyPoller* poller, const std::function<bool()>& ready,
                          std::chrono::steady_clock::time_point deadline) {
  // Busy polling first (common/busy_poll.h): a peer that answers within the
  // window costs neither side a system call. The poller adapts: it spins the
  // whole window while spins catch the data, less after waits that ended in
  // a sleep; window 0 goes straight to the futex.
  Status gone;
  const bool spun = poller->Spin(
      [&] {
        if (ready()) return true;
        gone = Alive(/*check_socket=*/false);
        return !gone.ok();
      },
      deadline);
  if (spun) return gone;
  for (;;) {
    const uint32_t seen = event.load(std::memory_order_acquire);
    sleeping.store(1, std::memory_order_relaxed);
    // Pairs with Signal's fence: the other side either sees the flag or we
    // see its new position below.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (ready()) {
      sleeping.store(0, std::memory_order_relaxed);
      return Status::Ok();
    }
    FERRY_RETURN_IF_ERROR(Alive(/*check_socket=*/true));
    if (deadline != kNoDeadline && std::chrono::steady_clock::now() >= deadline) {
      sleeping.store(0, std::memory_order_relaxed);
      return Status::Disconnected("no data from " + peer_name_ + " before the read deadline");
    }
    FutexWait(event, seen, kWaitSlice);
    sleeping.store(0, std::memory_order_relaxed);
    if (ready()) return Status::Ok();
  }
}

Status ShmTransport::Write(std::span<const ConstBuffer> buffers) {
  FERRY_RETURN_IF_ERROR(Alive(/*check_socket=*/false));
  const uint64_t mask = ring_bytes_ - 1;
  uint64_t unpublished = 0;
  for (const ConstBuffer& buffer : buffers) {
    const auto* p = static_cast<const uint8_t*>(buffer.data);
    uint64_t left = buffer.size;
    while (left > 0) {
      const uint64_t tail = out_.tail.load(std::memory_order_acquire);
      const uint64_t used = out_head_ - tail;  // wraps to huge if the peer lied
      if (used > ring_bytes_) return Corrupt("its read position is impossible");
      uint64_t space = ring_bytes_ - used;
      if (space == 0) {
        if (unpublished > 0) {
          out_.head.store(out_head_, std::memory_order_release);
          Signal(out_.data_event, out_.reader_sleeping);
          unpublished = 0;
        }
        FERRY_RETURN_IF_ERROR(Wait(out_.space_event, out_.writer_sleeping, &write_poller_, [this] {
          return out_head_ - out_.tail.load(std::memory_order_acquire) != ring_bytes_;
        }));
        continue;
      }
      const uint64_t n = std::min({space, left, kPublishEvery});
      const uint64_t at = out_head_ & mask;
      const uint64_t first = std::min(n, ring_bytes_ - at);
      std::memcpy(out_data_ + at, p, first);
      if (n > first) std::memcpy(out_data_, p + first, n - first);
      out_head_ += n;
      p += n;
      left -= n;
      unpublished += n;
      if (unpublished >= kPublishEvery) {
        out_.head.store(out_head_, std::memory_order_release);
        Signal(out_.data_event, out_.reader_sleeping);
        unpublished = 0;
      }
    }
  }
  if (unpublished > 0) {
    out_.head.store(out_head_, std::memory_order_release);
    Signal(out_.data_event, out_.reader_sleeping);
  }
  return Status::Ok();
}

Status ShmTransport::ReadExact(void* data, size_t size) {
  if (shut_down_.load(std::memory_order_acquire)) {
    return Status::Disconnected("connection to " + peer_name_ + " shut down");
  }
  const uint64_t mask = ring_bytes_ - 1;
  auto* p = static_cast<uint8_t*>(data);
  while (size > 0) {
    const uint64_t head = in_.head.load(std::memory_order_acquire);
    const uint64_t available = head - in_tail_;  // wraps to huge if the peer lied
    if (available > ring_bytes_) return Corrupt("its write position is impossible");
    if (available == 0) {
      FERRY_RETURN_IF_ERROR(Wait(
          in_.data_event, in_.reader_sleeping, &read_poller_,
          [this] { return in_.head.load(std::memory_order_acquire) != in_tail_; }, read_deadline_));
      continue;
    }
    const uint64_t n = std::min<uint64_t>(available, size);
    const uint64_t at = in_tail_ & mask;
    const uint64_t first = std::min(n, ring_bytes_ - at);
    std::memcpy(p, in_data_ + at, first);
    if (n > first) std::memcpy(p + first, in_data_, n - first);
    in_tail_ += n;
    p += n;
    size -= n;
    in_.tail.store(in_tail_, std::memory_order_release);
    Signal(in_.space_event, in_.writer_sleeping);
  }
  return Status::Ok();
}

void ShmTransport::Shutdown() {
  if (shut_down_.exchange(true)) return;
  (server_side_ ? header_->server_closed : header_->client_closed)
      .store(1, std::memory_order_release);
  // Wake every sleeper, on both sides: each rechecks and sees the close.
  for (Ring* ring : {&in_, &out_}) {
    ring->data_event.fetch_add(1, std::memory_order_release);
    ring->space_event.fetch_add(1, std::memory_order_release);
    FutexWakeAll(ring->data_event);
    FutexWakeAll(ring->space_event);
  }
  ::shutdown(socket_, SHUT_RDWR);
}

Status ConnectShm(std::string_view path, std::chrono::milliseconds timeout,
                  std::unique_ptr<Transport>* out) {
  const std::string name = "unix:" + std::string(path);
  sockaddr_un address{};
  if (path.empty() || path.size() >= sizeof(address.sun_path)) {
    return Status::InvalidArgument("bad unix socket path in '" + name + "'");
  }
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::Internal("socket failed: " + ErrnoText(errno));
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    const int err = errno;
    ::close(fd);
    return Status::Disconnected("cannot connect to server " + name + ": " + ErrnoText(err));
  }
  return ShmTransport::Join(fd, name, timeout, out);
}

Status MakeShmTransportPair(std::unique_ptr<Transport>* server, std::unique_ptr<Transport>* client,
                            uint64_t ring_bytes) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return Status::Internal("socketpair failed: " + ErrnoText(errno));
  }
  Status status = ShmTransport::Accept(fds[0], "shm-pair:client", ring_bytes, server);
  if (!status.ok()) {
    ::close(fds[1]);
    return status;
  }
  return ShmTransport::Join(fds[1], "shm-pair:server", std::chrono::seconds(5), client);
}

}  // namespace ferry
