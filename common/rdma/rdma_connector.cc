#include "common/rdma/rdma_connector.h"

#include <netinet/in.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

namespace ferry::rdma {
namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

// The GID that carries `address` on the port, or -1. RoCE v2 lists an IPv4
// address as ::ffff:a.b.c.d.
int GidIndexFor(const Verbs& verbs, ibv_context* context, uint8_t port, int table_length,
                const sockaddr_storage& address) {
  uint8_t wanted[16] = {};
  if (address.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(address);
    wanted[10] = 0xff;
    wanted[11] = 0xff;
    std::memcpy(wanted + 12, &v4.sin_addr, 4);
  } else if (address.ss_family == AF_INET6) {
    std::memcpy(wanted, &reinterpret_cast<const sockaddr_in6&>(address).sin6_addr, 16);
  } else {
    return -1;
  }
  for (int i = 0; i < std::min(table_length, 256); ++i) {
    ibv_gid gid{};
    if (verbs.query_gid(context, port, i, &gid) != 0) continue;
    if (std::memcmp(gid.raw, wanted, 16) == 0) return i;
  }
  return -1;
}

Status WriteByte(int fd, char byte) {
  for (;;) {
    const ssize_t n = ::send(fd, &byte, 1, MSG_NOSIGNAL);
    if (n == 1) return Status::Ok();
    if (n < 0 && errno == EINTR) continue;
    return Status::Disconnected("RDMA set-up: the TCP connection broke: " + ErrnoText(errno));
  }
}

Status ReadByte(int fd, char expected, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Status::Disconnected("RDMA set-up: the peer did not finish it in time");
    }
    pollfd p{fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    char byte = 0;
    const ssize_t n = ::recv(fd, &byte, 1, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n != 1) return Status::Disconnected("RDMA set-up: the peer closed the connection");
    if (byte != expected) {
      return Status::Malformed("RDMA set-up: the peer sent something else than its ready mark");
    }
    return Status::Ok();
  }
}

}  // namespace

bool LocalAddressOf(int fd, sockaddr_storage* out) {
  socklen_t length = sizeof(*out);
  return getsockname(fd, reinterpret_cast<sockaddr*>(out), &length) == 0;
}

Status RdmaConnector::Open(const Verbs* verbs, const DeviceChoice& choice,
                           const RdmaOptions& options, const sockaddr_storage* local_address,
                           std::unique_ptr<RdmaConnector>* out) {
  if (verbs == nullptr) return Status::Unimplemented("no verbs library");
  std::unique_ptr<RdmaConnector> connector(new RdmaConnector());
  connector->verbs_ = verbs;
  QueuePair queues;
  queues.verbs = verbs;
  // The device and its port.
  int count = 0;
  ibv_device** list = verbs->get_device_list(&count);
  if (list == nullptr || count == 0) {
    if (list != nullptr) verbs->free_device_list(list);
    return Status::Unimplemented("this host has no RDMA device");
  }
  std::string tried;
  for (int d = 0; d < count && queues.context == nullptr; ++d) {
    const char* name = verbs->get_device_name(list[d]);
    const std::string device_name = name != nullptr ? name : "?";
    if (!choice.device.empty() && device_name != choice.device) continue;
    ibv_context* context = verbs->open_device(list[d]);
    if (context == nullptr) {
      tried += " " + device_name + " (cannot be opened: " + ErrnoText(errno) + ")";
      continue;
    }
    ibv_device_attr device_attr{};
    if (verbs->query_device(context, &device_attr) != 0) {
      verbs->close_device(context);
      continue;
    }
    for (uint8_t port = 1; port <= device_attr.phys_port_cnt; ++port) {
      ibv_port_attr port_attr{};
      if (verbs->query_port(context, port, &port_attr) != 0) continue;
      if (port_attr.state != IBV_PORT_ACTIVE) continue;
      queues.context = context;
      connector->port_ = port;
      connector->ethernet_ = port_attr.link_layer == IBV_LINK_LAYER_ETHERNET;
      connector->local_.lid = port_attr.lid;
      connector->local_.mtu = port_attr.active_mtu;
      int gid_index = choice.gid_index;
      if (gid_index < 0 && local_address != nullptr) {
        gid_index = GidIndexFor(*verbs, context, port, port_attr.gid_tbl_len, *local_address);
      }
      connector->gid_index_ = std::max(gid_index, 0);
      connector->local_.device = device_name + " port " + std::to_string(port) + " gid " +
                                 std::to_string(connector->gid_index_);
      break;
    }
    if (queues.context == nullptr) {
      tried += " " + device_name + " (no active port)";
      verbs->close_device(context);
    }
  }
  verbs->free_device_list(list);
  if (queues.context == nullptr) {
    return Status::Unimplemented(
        choice.device.empty() ? "no RDMA device has an active port:" + tried
                              : "RDMA device " + choice.device +
                                    (tried.empty() ? " is not on this host" : " is unusable:" + tried));
  }
  ibv_gid gid{};
  if (verbs->query_gid(queues.context, connector->port_, connector->gid_index_, &gid) != 0) {
    return Status::Unimplemented("RDMA device " + connector->local_.device + " has no such GID");
  }
  std::memcpy(connector->local_.gid.data(), gid.raw, 16);
  // Its queues.
  queues.pd = verbs->alloc_pd(queues.context);
  if (queues.pd == nullptr) return Status::Unimplemented("RDMA: no protection domain");
  queues.channel = verbs->create_comp_channel(queues.context);
  if (queues.channel == nullptr) return Status::Unimplemented("RDMA: no completion channel");
  const int cq_entries =
      static_cast<int>(options.send_depth + kCreditReserve + 8 + options.receive_depth);
  queues.cq = verbs->create_cq(queues.context, cq_entries, nullptr, queues.channel, 0);
  if (queues.cq == nullptr) {
    return Status::Unimplemented("RDMA: a completion queue of " + std::to_string(cq_entries) +
                                 " entries was refused: " + ErrnoText(errno));
  }
  ibv_qp_init_attr init{};
  init.send_cq = queues.cq;
  init.recv_cq = queues.cq;
  init.qp_type = IBV_QPT_RC;
  init.cap.max_send_wr = options.send_depth + kCreditReserve + 8;
  init.cap.max_recv_wr = options.receive_depth;
  init.cap.max_send_sge = 1;
  init.cap.max_recv_sge = 1;
  init.cap.max_inline_data = options.max_inline;
  queues.qp = verbs->create_qp(queues.pd, &init);
  if (queues.qp == nullptr && options.max_inline > 0) {
    init.cap.max_inline_data = 0;  // a device without inline sends
    queues.qp = verbs->create_qp(queues.pd, &init);
  }
  if (queues.qp == nullptr) return Status::Unimplemented("RDMA: the queue pair was refused: " + ErrnoText(errno));
  queues.max_inline = init.cap.max_inline_data;
  ibv_qp_attr attr{};
  attr.qp_state = IBV_QPS_INIT;
  attr.pkey_index = 0;
  attr.port_num = connector->port_;
  attr.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
  if (verbs->modify_qp(queues.qp, &attr,
                       IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) != 0) {
    return Status::Unimplemented("RDMA: the queue pair cannot be initialized: " + ErrnoText(errno));
  }
  connector->local_.qp_number = queues.qp->qp_num;
  std::random_device random;
  connector->local_.packet_sequence = random() & 0xffffff;
  FERRY_RETURN_IF_ERROR(RdmaTransport::Prepare(std::move(queues), options, &connector->transport_));
  connector->transport_->DescribeReceiving(&connector->local_);
  *out = std::move(connector);
  return Status::Ok();
}

Status RdmaConnector::ConnectQueuePair(const RdmaEndpoint& peer) {
  if (peer.qp_number == 0 || peer.qp_number > 0xffffff || peer.mtu < IBV_MTU_256 ||
      peer.mtu > IBV_MTU_4096) {
    return Status::Malformed("the peer's RDMA endpoint is not usable");
  }
  peer_ = peer;
  ibv_qp* qp = transport_->queue_pair();
  ibv_qp_attr attr{};
  attr.qp_state = IBV_QPS_RTR;
  attr.path_mtu = static_cast<ibv_mtu>(std::min(local_.mtu, peer.mtu));
  attr.dest_qp_num = peer.qp_number;
  attr.rq_psn = peer.packet_sequence & 0xffffff;
  attr.max_dest_rd_atomic = 1;
  attr.min_rnr_timer = 12;
  attr.ah_attr.dlid = static_cast<uint16_t>(peer.lid);
  attr.ah_attr.sl = 0;
  attr.ah_attr.port_num = port_;
  // RoCE routes by GID (a global route header); InfiniBand by LID, with a
  // GID too when the peer's LID is none (another subnet).
  if (ethernet_ || peer.lid == 0) {
    attr.ah_attr.is_global = 1;
    std::memcpy(attr.ah_attr.grh.dgid.raw, peer.gid.data(), 16);
    attr.ah_attr.grh.sgid_index = static_cast<uint8_t>(gid_index_);
    attr.ah_attr.grh.hop_limit = 64;
  }
  if (verbs_->modify_qp(qp, &attr,
                        IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                            IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER) !=
      0) {
    return Status::Disconnected("RDMA: the queue pair cannot reach the peer's (RTR): " +
                                ErrnoText(errno));
  }
  attr = ibv_qp_attr{};
  attr.qp_state = IBV_QPS_RTS;
  attr.timeout = 14;  // 4.096 us * 2^14 = 67 ms per try
  attr.retry_cnt = 7;
  // Credits keep every receive posted before a message comes, so a
  // receiver-not-ready answer is a bug: a few retries, then an error.
  attr.rnr_retry = 3;
  attr.sq_psn = local_.packet_sequence & 0xffffff;
  attr.max_rd_atomic = 1;
  if (verbs_->modify_qp(qp, &attr,
                        IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                            IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC) != 0) {
    return Status::Disconnected("RDMA: the queue pair cannot send (RTS): " + ErrnoText(errno));
  }
  return Status::Ok();
}

Status RdmaConnector::SwitchToRdma(std::unique_ptr<Transport>* transport, bool speak_first,
                                   std::chrono::steady_clock::time_point deadline) && {
  TransportHandover handover;
  FERRY_RETURN_IF_ERROR((*transport)->Release(&handover));
  if (handover.kind != TransportHandover::Kind::kSocket || handover.fds.size() != 1) {
    return Status::Internal("RDMA set-up needs a plain TCP connection");
  }
  transport->reset();
  const int fd = handover.fds[0];
  handover.fds.clear();
  constexpr char kReady = 'R';
  Status met = speak_first ? WriteByte(fd, kReady) : ReadByte(fd, kReady, deadline);
  if (met.ok()) met = speak_first ? ReadByte(fd, kReady, deadline) : WriteByte(fd, kReady);
  if (!met.ok()) {
    close(fd);
    return met;
  }
  const std::string description =
      "rdma " + local_.device + ", ring " + std::to_string(local_.ring_bytes >> 20) + " MiB";
  Status started = transport_->Start(peer_, fd, handover.peer_name, description);
  if (!started.ok()) return started;
  *transport = std::move(transport_);
  return Status::Ok();
}

}  // namespace ferry::rdma
