// RdmaConnector: sets up one RDMA connection beside a TCP connection
// (ferry's "upgrade from the TCP handshake", see common/rdma/README.md).
//
// Each side opens a device, makes its queue pair and its RdmaTransport's
// memory (Open), and sends its RdmaEndpoint in the handshake (the client in
// Hello.rdma, ferryd in HelloReply.rdma). With the other's endpoint it
// connects the queue pair (ConnectQueuePair: RTR, then RTS), and both sides
// then meet on the TCP socket (SwitchToRdma): the client writes one byte once
// its queue pair is ready to receive, ferryd answers with one byte once it
// has read it, and from then on every byte of the stream travels over RDMA;
// the socket stays open beside it only so that each side learns when the
// other is gone.
//
// Device choice: a named device (FERRY_RDMA_DEVICE, ferryd --rdma-device)
// or the first one with an active port. GID choice: a given index, else the
// GID that carries the TCP connection's local IP address (RoCE v2: the
// IPv4-mapped one), else index 0 (InfiniBand, or RoCE on one link).
//
// Thread-safety: a connector belongs to one thread.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "common/rdma/rdma_transport.h"
#include "common/rdma/verbs.h"
#include "common/status.h"
#include "common/transport.h"

namespace ferry::rdma {

struct DeviceChoice {
  std::string device;  // "" = the first device with an active port
  int gid_index = -1;  // negative: chosen by the local address (above)
};

class RdmaConnector {
 public:
  // Opens the device and prepares the queue pair and its transport.
  // `local_address`: the TCP connection's own address (for the GID choice),
  // or null. Fails with a message saying why this host cannot (no
  // libibverbs, no device, no active port, memory registration refused).
  static Status Open(const Verbs* verbs, const DeviceChoice& choice, const RdmaOptions& options,
                     const sockaddr_storage* local_address, std::unique_ptr<RdmaConnector>* out);

  // This side's endpoint, to send to the peer.
  const RdmaEndpoint& Local() const { return local_; }
  // Connects the queue pair to `peer`'s (RTR, then RTS).
  Status ConnectQueuePair(const RdmaEndpoint& peer);
  // Meets the peer on `*transport`'s socket (above) by `deadline` and
  // replaces `*transport` with the RDMA transport. `speak_first`: the
  // client's side. On failure `*transport` is unusable.
  Status SwitchToRdma(std::unique_ptr<Transport>* transport, bool speak_first,
                      std::chrono::steady_clock::time_point deadline) &&;

 private:
  RdmaConnector() = default;

  const Verbs* verbs_ = nullptr;
  std::unique_ptr<RdmaTransport> transport_;
  RdmaEndpoint local_;
  RdmaEndpoint peer_;
  uint8_t port_ = 1;
  int gid_index_ = 0;
  bool ethernet_ = false;
};

// The local address of a connected socket (for DeviceChoice's GID choice).
bool LocalAddressOf(int fd, sockaddr_storage* out);

}  // namespace ferry::rdma
