#include "common/shm_rendezvous.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <vector>

#include "common/log.h"
#include "common/random_bytes.h"

namespace ferry {
namespace {

constexpr char kBootIdPath[] = "/proc/sys/kernel/random/boot_id";
constexpr char kNamePrefix[] = "ferry-shm-";
// Connections turned away that are logged one by one; the rest are counted.
constexpr size_t kLoggedTurnedAway = 4;

std::string ErrnoText(int err) { return std::strerror(err); }

// The abstract address of `name` (sun_path starts with a NUL) and its length.
bool AbstractAddress(std::string_view name, sockaddr_un* address, socklen_t* length) {
  *address = {};
  address->sun_family = AF_UNIX;
  if (name.empty() || name.size() + 1 > sizeof(address->sun_path) ||
      name.find('\0') != std::string_view::npos) {
    return false;
  }
  std::memcpy(address->sun_path + 1, name.data(), name.size());
  *length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return true;
}

// "pid 123, uid 1000" for a connected unix socket, or what is known.
std::string PeerOf(int fd) {
  ucred credentials{};
  socklen_t length = sizeof(credentials);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) {
    return "credentials unknown";
  }
  return "pid " + std::to_string(credentials.pid) + ", uid " + std::to_string(credentials.uid);
}

}  // namespace

Status BootId(std::string* out) {
  struct Read {
    Status status;
    std::string id;
  };
  static const Read* const read = [] {
    auto* r = new Read;
    std::ifstream in(kBootIdPath);
    if (!std::getline(in, r->id) || r->id.empty()) {
      r->status = Status::Unimplemented(std::string("cannot read this kernel's boot id (") +
                                        kBootIdPath + ")");
      r->id.clear();
    }
    return r;
  }();
  if (!read->status.ok()) return read->status;
  *out = read->id;
  return Status::Ok();
}

ShmRendezvous::ShmRendezvous(int listener, std::string name, const ShmNonce& nonce,
                             std::string owner)
    : listener_(listener), name_(std::move(name)), nonce_(nonce), owner_(std::move(owner)) {}

ShmRendezvous::~ShmRendezvous() { ::close(listener_); }

Status ShmRendezvous::Open(std::string owner, std::unique_ptr<ShmRendezvous>* out) {
  ShmNonce nonce{};
  FERRY_RETURN_IF_ERROR(RandomBytes(nonce.data(), nonce.size()));
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::Internal("cannot make a unix socket: " + ErrnoText(errno));
  // A random name: 128 bits, so a taken one (EADDRINUSE) means someone
  // squats names; a few tries tell that from bad luck.
  std::string last_error;
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::string random;
    FERRY_RETURN_IF_ERROR(RandomHex(16, &random));
    const std::string name = kNamePrefix + random;
    sockaddr_un address;
    socklen_t length = 0;
    AbstractAddress(name, &address, &length);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&address), length) != 0) {
      last_error = "cannot bind an abstract unix socket: " + ErrnoText(errno);
      if (errno == EADDRINUSE) continue;
      break;
    }
    if (::listen(fd, static_cast<int>(kMaxCandidates)) != 0) {
      last_error = "cannot listen on an abstract unix socket: " + ErrnoText(errno);
      break;
    }
    out->reset(new ShmRendezvous(fd, std::move(name), nonce, std::move(owner)));
    return Status::Ok();
  }
  ::close(fd);
  return Status::Internal(last_error);
}

Status ShmRendezvous::AcceptClient(std::chrono::steady_clock::time_point deadline, int* socket,
                                   const std::function<bool()>& client_gone) {
  using Clock = std::chrono::steady_clock;
  struct Candidate {
    int fd = -1;  // -1 once closed
    std::string peer;
    Clock::time_point since;
    ShmNonce got{};
    size_t have = 0;
  };
  std::vector<Candidate> candidates;
  size_t turned_away = 0;
  auto turn_away = [&](Candidate& c, const std::string& why) {
    if (turned_away < kLoggedTurnedAway) {
      FERRY_LOG(kWarning) << owner_ << ": a local process (" << c.peer
                          << ") connected to its shared-memory socket and is turned away: " << why;
    }
    ++turned_away;
    ::close(c.fd);
    c.fd = -1;
  };
  auto close_all = [&](const std::string& why) {
    for (Candidate& c : candidates) {
      if (c.fd >= 0) turn_away(c, why);
    }
    if (turned_away > kLoggedTurnedAway) {
      FERRY_LOG(kWarning) << owner_ << ": " << turned_away
                          << " connections to its shared-memory socket were turned away in all";
    }
  };
  // Reads what `c` sent so far: true once it sent the nonce; false while it
  // has not yet, or when it was turned away (its fd is -1 then).
  auto heard_client = [&](Candidate& c) {
    const ssize_t got = ::recv(c.fd, c.got.data() + c.have, c.got.size() - c.have, MSG_DONTWAIT);
    if (got < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) turn_away(c, ErrnoText(errno));
      return false;
    }
    if (got == 0) {
      turn_away(c, "it closed before sending the nonce");
      return false;
    }
    c.have += static_cast<size_t>(got);
    if (c.have < c.got.size()) return false;
    if (CRYPTO_memcmp(c.got.data(), nonce_.data(), nonce_.size()) != 0) {
      turn_away(c, "wrong nonce");
      return false;
    }
    return true;
  };
  auto accept_client = [&](Candidate& c) {
    const int winner = c.fd;
    c.fd = -1;
    close_all("the session's client came first");
    ::fcntl(winner, F_SETFL, ::fcntl(winner, F_GETFL) & ~O_NONBLOCK);
    *socket = winner;
    return Status::Ok();
  };
  std::vector<pollfd> fds;
  for (;;) {
    const Clock::time_point now = Clock::now();
    Clock::time_point wake = deadline;
    for (Candidate& c : candidates) {
      if (now - c.since >= kNonceTimeout) {
        turn_away(c, "no nonce within " + std::to_string(kNonceTimeout.count()) + " ms");
      } else {
        wake = std::min(wake, c.since + kNonceTimeout);
      }
    }
    std::erase_if(candidates, [](const Candidate& c) { return c.fd < 0; });
    if (now >= deadline) {
      close_all("the client never came");
      return Status::Disconnected("the client did not connect to the shared-memory socket in time");
    }
    if (client_gone != nullptr && client_gone()) {
      close_all("the client left");
      return Status::Disconnected(
          "the client left (or spoke on its old connection) instead of connecting to the "
          "shared-memory socket");
    }
    fds.assign(1, pollfd{listener_, POLLIN, 0});
    for (const Candidate& c : candidates) fds.push_back(pollfd{c.fd, POLLIN, 0});
    const auto wait = std::chrono::ceil<std::chrono::milliseconds>(wake - now);
    const int ready =
        ::poll(fds.data(), fds.size(),
               static_cast<int>(std::clamp<int64_t>(
                   wait.count(), 1, client_gone != nullptr ? kGoneCheckPeriod.count() : 1000)));
    if (ready < 0 && errno != EINTR) {
      const int err = errno;
      close_all("ferryd gave up waiting");
      return Status::Internal("poll failed: " + ErrnoText(err));
    }
    if (ready <= 0) continue;
    // Candidates first (their indices match fds), then new connections.
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (fds[i + 1].revents != 0 && heard_client(candidates[i])) {
        return accept_client(candidates[i]);
      }
    }
    std::erase_if(candidates, [](const Candidate& c) { return c.fd < 0; });
    if ((fds[0].revents & POLLIN) == 0) continue;
    for (;;) {
      const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) break;  // EAGAIN: none left (anything else: try again on the next round)
      Candidate c;
      c.fd = fd;
      c.peer = PeerOf(fd);
      c.since = Clock::now();
      // The client writes its nonce as soon as it is connected: it is
      // usually there already.
      if (heard_client(c)) return accept_client(c);
      if (c.fd < 0) continue;
      // Full: the oldest goes, so that connections that stay silent can
      // never keep a newer one (the client's) from being read.
      if (candidates.size() >= kMaxCandidates) {
        turn_away(candidates.front(), "too many connections at once (the oldest is dropped)");
        candidates.erase(candidates.begin());
      }
      candidates.push_back(std::move(c));
    }
  }
}

Status ConnectShmRendezvous(std::string_view name, std::span<const uint8_t> nonce,
                            std::chrono::milliseconds timeout, int* socket) {
  sockaddr_un address;
  socklen_t length = 0;
  if (!AbstractAddress(name, &address, &length)) {
    return Status::InvalidArgument("'" + std::string(name) + "' is no abstract unix socket name");
  }
  if (nonce.size() != kShmNonceBytes) {
    return Status::InvalidArgument("a shared-memory nonce of " + std::to_string(nonce.size()) +
                                   " bytes, not " + std::to_string(kShmNonceBytes));
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::Internal("cannot make a unix socket: " + ErrnoText(errno));
  // Bounds a connect that waits for room in a full backlog, and the write.
  const timeval limit{static_cast<time_t>(timeout.count() / 1000),
                      static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&address), length);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    const int err = errno;
    ::close(fd);
    return Status::Disconnected("cannot connect to ferryd's shared-memory socket @" +
                                std::string(name) + ": " + ErrnoText(err));
  }
  size_t sent = 0;
  while (sent < nonce.size()) {
    const ssize_t n = ::send(fd, nonce.data() + sent, nonce.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      return Status::Disconnected("cannot write to ferryd's shared-memory socket: " +
                                  ErrnoText(err));
    }
    sent += static_cast<size_t>(n);
  }
  *socket = fd;
  return Status::Ok();
}

}  // namespace ferry
