#include "test/support/fake_verbs.h"

#include <arpa/inet.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <utility>
#include <memory>
#include <vector>

namespace ferry::test {
namespace {

// Every fake object starts with the verbs struct it stands for, so the
// pointers the transport holds are ours to cast back.
struct FakeChannel {
  ibv_comp_channel base{};
};
struct FakeCq {
  ibv_cq base{};
  FakeChannel* channel = nullptr;
  std::deque<ibv_wc> entries;
  bool armed = false;
};
struct FakeQp {
  ibv_qp base{};
  ibv_qp_state state = IBV_QPS_RESET;
  uint32_t dest_qp = 0;
  uint32_t max_inline = 0;
  FakeCq* send_cq = nullptr;
  FakeCq* recv_cq = nullptr;
  struct Receive {
    uint64_t wr_id;
    std::vector<ibv_sge> sges;
  };
  std::deque<Receive> receives;
};
struct Region {
  uint64_t address;
  uint64_t length;
  int access;
  ibv_pd* pd;
};

struct State {
  std::mutex mutex;
  uint32_t max_inline = 64;
  int device_count = 1;
  int fail_post_send = 0;
  int fail_registration = 0;
  uint64_t rnr_events = 0;
  uint32_t next_qp = 100;
  uint32_t next_key = 1000;
  std::map<uint32_t, FakeQp*> qps;
  std::map<uint32_t, Region> regions;  // by key (lkey == rkey)
  ibv_device device{};
};

State& S() {
  static State* state = new State();
  return *state;
}

// Under the mutex: a completion onto `cq`, waking its channel when armed.
void Complete(FakeCq* cq, const ibv_wc& wc) {
  cq->entries.push_back(wc);
  if (cq->armed && cq->channel != nullptr) {
    cq->armed = false;
    const uint64_t one = 1;
    (void)!write(cq->channel->base.fd, &one, sizeof(one));
  }
}

// Under the mutex: whether [address, address + length) lies in the region
// `key` with `access` (0: any), in protection domain `pd`.
bool InRegion(uint32_t key, uint64_t address, uint64_t length, int access, ibv_pd* pd) {
  auto it = S().regions.find(key);
  if (it == S().regions.end()) return false;
  const Region& region = it->second;
  if (pd != nullptr && region.pd != pd) return false;
  if ((region.access & access) != access) return false;
  return address >= region.address && address + length <= region.address + region.length;
}

ibv_device** GetDeviceList(int* count) {
  std::lock_guard<std::mutex> lock(S().mutex);
  *count = S().device_count;
  auto** list = new ibv_device*[2]{};
  if (S().device_count > 0) list[0] = &S().device;
  return list;
}
void FreeDeviceList(ibv_device** list) { delete[] list; }
const char* GetDeviceName(ibv_device*) { return "fake0"; }
ibv_context* OpenDevice(ibv_device* device) {
  auto* context = new ibv_context{};
  context->device = device;
  return context;
}
int CloseDevice(ibv_context* context) {
  delete context;
  return 0;
}
int QueryDevice(ibv_context*, ibv_device_attr* attr) {
  *attr = ibv_device_attr{};
  attr->phys_port_cnt = 1;
  return 0;
}
int QueryPort(ibv_context*, uint8_t port, ibv_port_attr* attr) {
  if (port != 1) return EINVAL;
  *attr = ibv_port_attr{};
  attr->state = IBV_PORT_ACTIVE;
  attr->active_mtu = IBV_MTU_1024;
  attr->link_layer = IBV_LINK_LAYER_ETHERNET;
  attr->gid_tbl_len = 4;
  return 0;
}
int QueryGid(ibv_context*, uint8_t port, int index, ibv_gid* gid) {
  if (port != 1 || index < 0 || index >= 4) return EINVAL;
  *gid = ibv_gid{};
  if (index == 0) {
    gid->raw[0] = 0xfe;
    gid->raw[1] = 0x80;
    gid->raw[15] = 1;
  } else if (index == 1) {
    gid->raw[10] = 0xff;
    gid->raw[11] = 0xff;
    gid->raw[12] = 127;
    gid->raw[15] = 1;
  }
  return 0;
}
ibv_pd* AllocPd(ibv_context* context) {
  auto* pd = new ibv_pd{};
  pd->context = context;
  return pd;
}
int DeallocPd(ibv_pd* pd) {
  delete pd;
  return 0;
}
ibv_mr* RegMr(ibv_pd* pd, void* addr, size_t length, int access) {
  std::lock_guard<std::mutex> lock(S().mutex);
  if (S().fail_registration != 0) {
    errno = S().fail_registration;
    S().fail_registration = 0;
    return nullptr;
  }
  auto* mr = new ibv_mr{};
  mr->context = pd->context;
  mr->pd = pd;
  mr->addr = addr;
  mr->length = length;
  mr->lkey = mr->rkey = S().next_key++;
  S().regions[mr->lkey] = {reinterpret_cast<uint64_t>(addr), length, access, pd};
  return mr;
}
int DeregMr(ibv_mr* mr) {
  std::lock_guard<std::mutex> lock(S().mutex);
  S().regions.erase(mr->lkey);
  delete mr;
  return 0;
}
ibv_comp_channel* CreateCompChannel(ibv_context* context) {
  auto* channel = new FakeChannel();
  channel->base.context = context;
  channel->base.fd = eventfd(0, EFD_CLOEXEC | EFD_SEMAPHORE);
  return &channel->base;
}
int DestroyCompChannel(ibv_comp_channel* channel) {
  close(channel->fd);
  delete reinterpret_cast<FakeChannel*>(channel);
  return 0;
}
ibv_cq* CreateCq(ibv_context* context, int, void* cq_context, ibv_comp_channel* channel, int) {
  auto* cq = new FakeCq();
  cq->base.context = context;
  cq->base.cq_context = cq_context;
  cq->channel = reinterpret_cast<FakeChannel*>(channel);
  return &cq->base;
}
int DestroyCq(ibv_cq* cq) {
  std::lock_guard<std::mutex> lock(S().mutex);
  delete reinterpret_cast<FakeCq*>(cq);
  return 0;
}
int ReqNotifyCq(ibv_cq* cq, int) {
  std::lock_guard<std::mutex> lock(S().mutex);
  reinterpret_cast<FakeCq*>(cq)->armed = true;
  return 0;
}
int GetCqEvent(ibv_comp_channel* channel, ibv_cq** cq, void** cq_context) {
  uint64_t value = 0;
  if (read(channel->fd, &value, sizeof(value)) != sizeof(value)) return -1;  // errno: EAGAIN
  *cq = nullptr;
  *cq_context = nullptr;
  return 0;
}
void AckCqEvents(ibv_cq*, unsigned) {}
int PollCq(ibv_cq* cq, int entries, ibv_wc* wc) {
  std::lock_guard<std::mutex> lock(S().mutex);
  auto* fake = reinterpret_cast<FakeCq*>(cq);
  int n = 0;
  while (n < entries && !fake->entries.empty()) {
    wc[n++] = fake->entries.front();
    fake->entries.pop_front();
  }
  return n;
}
ibv_qp* CreateQp(ibv_pd* pd, ibv_qp_init_attr* attr) {
  std::lock_guard<std::mutex> lock(S().mutex);
  if (attr->cap.max_inline_data > S().max_inline) attr->cap.max_inline_data = S().max_inline;
  auto* qp = new FakeQp();
  qp->base.context = pd->context;
  qp->base.pd = pd;
  qp->base.send_cq = attr->send_cq;
  qp->base.recv_cq = attr->recv_cq;
  qp->base.qp_num = S().next_qp++;
  qp->max_inline = attr->cap.max_inline_data;
  qp->send_cq = reinterpret_cast<FakeCq*>(attr->send_cq);
  qp->recv_cq = reinterpret_cast<FakeCq*>(attr->recv_cq);
  S().qps[qp->base.qp_num] = qp;
  return &qp->base;
}
int ModifyQp(ibv_qp* qp, ibv_qp_attr* attr, int mask) {
  std::lock_guard<std::mutex> lock(S().mutex);
  auto* fake = reinterpret_cast<FakeQp*>(qp);
  if ((mask & IBV_QP_STATE) == 0) return EINVAL;
  if (attr->qp_state == IBV_QPS_RTR) {
    if ((mask & IBV_QP_DEST_QPN) == 0 || (mask & IBV_QP_AV) == 0) return EINVAL;
    fake->dest_qp = attr->dest_qp_num;
  }
  fake->state = attr->qp_state;
  return 0;
}
int DestroyQp(ibv_qp* qp) {
  std::lock_guard<std::mutex> lock(S().mutex);
  S().qps.erase(qp->qp_num);
  delete reinterpret_cast<FakeQp*>(qp);
  return 0;
}
int PostRecv(ibv_qp* qp, ibv_recv_wr* wr, ibv_recv_wr** bad) {
  std::lock_guard<std::mutex> lock(S().mutex);
  auto* fake = reinterpret_cast<FakeQp*>(qp);
  for (; wr != nullptr; wr = wr->next) {
    if (fake->state == IBV_QPS_RESET || fake->state == IBV_QPS_ERR) {
      *bad = wr;
      return EINVAL;
    }
    fake->receives.push_back({wr->wr_id, std::vector<ibv_sge>(wr->sg_list, wr->sg_list + wr->num_sge)});
  }
  return 0;
}

// Under the mutex: one send work request, delivered at once.
ibv_wc_status Deliver(FakeQp* qp, const ibv_send_wr& wr) {
  // Gather the bytes.
  std::vector<uint8_t> bytes;
  for (int i = 0; i < wr.num_sge; ++i) {
    const ibv_sge& sge = wr.sg_list[i];
    if ((wr.send_flags & IBV_SEND_INLINE) != 0) {
      if (sge.length > qp->max_inline) return IBV_WC_LOC_LEN_ERR;
    } else if (!InRegion(sge.lkey, sge.addr, sge.length, 0, qp->base.pd)) {
      return IBV_WC_LOC_PROT_ERR;
    }
    const auto* from = reinterpret_cast<const uint8_t*>(sge.addr);
    bytes.insert(bytes.end(), from, from + sge.length);
  }
  auto peer_it = S().qps.find(qp->dest_qp);
  if (peer_it == S().qps.end()) return IBV_WC_RETRY_EXC_ERR;
  FakeQp* peer = peer_it->second;
  if (peer->state != IBV_QPS_RTR && peer->state != IBV_QPS_RTS) return IBV_WC_RETRY_EXC_ERR;
  const bool with_immediate =
      wr.opcode == IBV_WR_SEND_WITH_IMM || wr.opcode == IBV_WR_RDMA_WRITE_WITH_IMM;
  if (wr.opcode == IBV_WR_RDMA_WRITE || wr.opcode == IBV_WR_RDMA_WRITE_WITH_IMM) {
    if (!InRegion(wr.wr.rdma.rkey, wr.wr.rdma.remote_addr, bytes.size(), IBV_ACCESS_REMOTE_WRITE,
                  nullptr)) {
      return IBV_WC_REM_ACCESS_ERR;
    }
    if (wr.opcode == IBV_WR_RDMA_WRITE_WITH_IMM && peer->receives.empty()) {
      ++S().rnr_events;
      return IBV_WC_RNR_RETRY_EXC_ERR;
    }
    std::memcpy(reinterpret_cast<void*>(wr.wr.rdma.remote_addr), bytes.data(), bytes.size());
    if (wr.opcode == IBV_WR_RDMA_WRITE) return IBV_WC_SUCCESS;
    const FakeQp::Receive receive = peer->receives.front();
    peer->receives.pop_front();
    ibv_wc wc{};
    wc.wr_id = receive.wr_id;
    wc.status = IBV_WC_SUCCESS;
    wc.opcode = IBV_WC_RECV_RDMA_WITH_IMM;
    wc.byte_len = static_cast<uint32_t>(bytes.size());
    wc.wc_flags = IBV_WC_WITH_IMM;
    wc.imm_data = wr.imm_data;
    wc.qp_num = peer->base.qp_num;
    Complete(peer->recv_cq, wc);
    return IBV_WC_SUCCESS;
  }
  if (wr.opcode != IBV_WR_SEND && wr.opcode != IBV_WR_SEND_WITH_IMM) return IBV_WC_LOC_QP_OP_ERR;
  if (peer->receives.empty()) {
    ++S().rnr_events;
    return IBV_WC_RNR_RETRY_EXC_ERR;
  }
  const FakeQp::Receive receive = peer->receives.front();
  peer->receives.pop_front();
  size_t offset = 0;
  for (const ibv_sge& sge : receive.sges) {
    if (offset == bytes.size()) break;
    const size_t n = std::min<size_t>(sge.length, bytes.size() - offset);
    if (!InRegion(sge.lkey, sge.addr, n, IBV_ACCESS_LOCAL_WRITE, nullptr)) {
      return IBV_WC_REM_ACCESS_ERR;
    }
    std::memcpy(reinterpret_cast<void*>(sge.addr), bytes.data() + offset, n);
    offset += n;
  }
  if (offset < bytes.size()) return IBV_WC_REM_INV_REQ_ERR;  // too long for the receive
  ibv_wc wc{};
  wc.wr_id = receive.wr_id;
  wc.status = IBV_WC_SUCCESS;
  wc.opcode = IBV_WC_RECV;
  wc.byte_len = static_cast<uint32_t>(bytes.size());
  wc.wc_flags = with_immediate ? IBV_WC_WITH_IMM : 0;
  wc.imm_data = wr.imm_data;
  wc.qp_num = peer->base.qp_num;
  Complete(peer->recv_cq, wc);
  return IBV_WC_SUCCESS;
}

int PostSend(ibv_qp* qp, ibv_send_wr* wr, ibv_send_wr** bad) {
  std::lock_guard<std::mutex> lock(S().mutex);
  auto* fake = reinterpret_cast<FakeQp*>(qp);
  for (; wr != nullptr; wr = wr->next) {
    if (S().fail_post_send != 0) {
      *bad = wr;
      return std::exchange(S().fail_post_send, 0);
    }
    if (fake->state != IBV_QPS_RTS) {
      *bad = wr;
      return EINVAL;
    }
    const ibv_wc_status status = Deliver(fake, *wr);
    if (status != IBV_WC_SUCCESS || (wr->send_flags & IBV_SEND_SIGNALED) != 0) {
      ibv_wc wc{};
      wc.wr_id = wr->wr_id;
      wc.status = status;
      wc.opcode = wr->opcode == IBV_WR_SEND || wr->opcode == IBV_WR_SEND_WITH_IMM
                      ? IBV_WC_SEND
                      : IBV_WC_RDMA_WRITE;
      wc.qp_num = qp->qp_num;
      Complete(fake->send_cq, wc);
    }
    if (status != IBV_WC_SUCCESS) fake->state = IBV_QPS_ERR;
  }
  return 0;
}
const char* WcStatusStr(ibv_wc_status status) {
  switch (status) {
    case IBV_WC_SUCCESS: return "success";
    case IBV_WC_RETRY_EXC_ERR: return "transport retry counter exceeded";
    case IBV_WC_RNR_RETRY_EXC_ERR: return "RNR retry counter exceeded";
    case IBV_WC_REM_ACCESS_ERR: return "remote access error";
    case IBV_WC_LOC_PROT_ERR: return "local protection error";
    case IBV_WC_WR_FLUSH_ERR: return "Work Request Flushed Error";
    default: return "fake completion error";
  }
}

const rdma::Verbs kFakeVerbs = {
    GetDeviceList, FreeDeviceList, GetDeviceName, OpenDevice,   CloseDevice,
    QueryDevice,   QueryPort,      QueryGid,      AllocPd,      DeallocPd,
    RegMr,         nullptr,        DeregMr,       CreateCompChannel, DestroyCompChannel,
    CreateCq,      DestroyCq,      ReqNotifyCq,   GetCqEvent,   AckCqEvents,
    PollCq,        CreateQp,       ModifyQp,      DestroyQp,    PostSend,
    PostRecv,      WcStatusStr,
};

}  // namespace

FakeFabric& FakeFabric::Get() {
  static FakeFabric fabric;
  return fabric;
}

const rdma::Verbs* FakeFabric::verbs() const { return &kFakeVerbs; }

void FakeFabric::set_max_inline(uint32_t bytes) {
  std::lock_guard<std::mutex> lock(S().mutex);
  S().max_inline = bytes;
}

void FakeFabric::set_device_count(int count) {
  std::lock_guard<std::mutex> lock(S().mutex);
  S().device_count = count;
}

void FakeFabric::FailNextPostSend(int err) {
  std::lock_guard<std::mutex> lock(S().mutex);
  S().fail_post_send = err;
}

void FakeFabric::FailNextRegistration(int err) {
  std::lock_guard<std::mutex> lock(S().mutex);
  S().fail_registration = err;
}

void FakeFabric::InjectCompletion(ibv_qp* qp, ibv_wc_status status) {
  std::lock_guard<std::mutex> lock(S().mutex);
  auto* fake = reinterpret_cast<FakeQp*>(qp);
  ibv_wc wc{};
  wc.wr_id = 1ull << 63;
  wc.status = status;
  wc.opcode = IBV_WC_SEND;
  wc.qp_num = qp->qp_num;
  Complete(fake->send_cq, wc);
  fake->state = IBV_QPS_ERR;
}

uint64_t FakeFabric::rnr_events() const {
  std::lock_guard<std::mutex> lock(S().mutex);
  return S().rnr_events;
}

}  // namespace ferry::test
