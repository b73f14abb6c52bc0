// Messages with file descriptors beside them, over a unix socket
// (SCM_RIGHTS): how ferryd's main process hands a client's connection to the
// worker process that serves its session (server/session_worker.h), and how
// the two exchange module images as sealed memfds.
//
// Meant for SOCK_SEQPACKET sockets, where each send is one message that
// arrives whole or not at all.
//
// Thread-safety: none of its own; one sender and one receiver at a time per
// socket.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"

namespace ferry {

// The most descriptors one message carries.
inline constexpr size_t kMaxPassedDescriptors = 4;

// Sends `bytes` as one message with `fds` (at most kMaxPassedDescriptors)
// beside it; the caller keeps its copies of `fds`. With a `deadline`, a peer
// that does not take the message by then (its socket buffer stays full) is
// Disconnected instead of blocking the sender.
Status SendWithDescriptors(
    int socket, std::span<const uint8_t> bytes, std::span<const int> fds,
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max());

// Receives one message of at most `max_bytes` into `bytes` and the
// descriptors that came with it into `fds` (close-on-exec, owned by the
// caller). Disconnected when the peer closed its end; Malformed for a
// message that was longer than `max_bytes` or carried too many descriptors
// (their descriptors are closed).
Status ReceiveWithDescriptors(int socket, size_t max_bytes, std::vector<uint8_t>* bytes,
                              std::vector<int>* fds);

}  // namespace ferry
