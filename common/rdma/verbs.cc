#include "common/rdma/verbs.h"

#include <dlfcn.h>

#include <mutex>

namespace ferry::rdma {
namespace {

// The inline data-path functions of <infiniband/verbs.h>, as plain
// functions for the table: they dispatch through the provider's ops, so
// they need the header only, not a symbol of the library.
int InlineReqNotifyCq(ibv_cq* cq, int solicited_only) {
  return ibv_req_notify_cq(cq, solicited_only);
}
int InlinePollCq(ibv_cq* cq, int entries, ibv_wc* wc) { return ibv_poll_cq(cq, entries, wc); }
int InlinePostSend(ibv_qp* qp, ibv_send_wr* wr, ibv_send_wr** bad_wr) {
  return ibv_post_send(qp, wr, bad_wr);
}
int InlinePostRecv(ibv_qp* qp, ibv_recv_wr* wr, ibv_recv_wr** bad_wr) {
  return ibv_post_recv(qp, wr, bad_wr);
}

struct Loaded {
  Verbs table{};
  std::string why;
  bool ok = false;
};

template <typename Function>
bool Resolve(void* library, const char* name, Function* out, std::string* why) {
  *out = reinterpret_cast<Function>(dlsym(library, name));
  if (*out == nullptr && why->empty()) {
    *why = std::string("libibverbs.so.1 lacks ") + name;
  }
  return *out != nullptr;
}

Loaded Load() {
  Loaded loaded;
  // Kept open for the life of the process: its providers are loaded into it.
  void* library = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    const char* error = dlerror();
    loaded.why = std::string("libibverbs.so.1 cannot be loaded (install rdma-core's libibverbs1): ") +
                 (error != nullptr ? error : "unknown error");
    return loaded;
  }
  Verbs& t = loaded.table;
  std::string* why = &loaded.why;
  bool ok = true;
  ok &= Resolve(library, "ibv_get_device_list", &t.get_device_list, why);
  ok &= Resolve(library, "ibv_free_device_list", &t.free_device_list, why);
  ok &= Resolve(library, "ibv_get_device_name", &t.get_device_name, why);
  ok &= Resolve(library, "ibv_open_device", &t.open_device, why);
  ok &= Resolve(library, "ibv_close_device", &t.close_device, why);
  ok &= Resolve(library, "ibv_query_device", &t.query_device, why);
  ok &= Resolve(library, "ibv_query_port", &t.query_port, why);
  ok &= Resolve(library, "ibv_query_gid", &t.query_gid, why);
  ok &= Resolve(library, "ibv_alloc_pd", &t.alloc_pd, why);
  ok &= Resolve(library, "ibv_dealloc_pd", &t.dealloc_pd, why);
  ok &= Resolve(library, "ibv_reg_mr", &t.reg_mr, why);
  ok &= Resolve(library, "ibv_dereg_mr", &t.dereg_mr, why);
  ok &= Resolve(library, "ibv_create_comp_channel", &t.create_comp_channel, why);
  ok &= Resolve(library, "ibv_destroy_comp_channel", &t.destroy_comp_channel, why);
  ok &= Resolve(library, "ibv_create_cq", &t.create_cq, why);
  ok &= Resolve(library, "ibv_destroy_cq", &t.destroy_cq, why);
  ok &= Resolve(library, "ibv_get_cq_event", &t.get_cq_event, why);
  ok &= Resolve(library, "ibv_ack_cq_events", &t.ack_cq_events, why);
  ok &= Resolve(library, "ibv_create_qp", &t.create_qp, why);
  ok &= Resolve(library, "ibv_modify_qp", &t.modify_qp, why);
  ok &= Resolve(library, "ibv_destroy_qp", &t.destroy_qp, why);
  ok &= Resolve(library, "ibv_wc_status_str", &t.wc_status_str, why);
  // Optional: dma-buf registration (GPUDirect RDMA) came with rdma-core 34.
  t.reg_dmabuf_mr = reinterpret_cast<decltype(t.reg_dmabuf_mr)>(dlsym(library, "ibv_reg_dmabuf_mr"));
  t.req_notify_cq = InlineReqNotifyCq;
  t.poll_cq = InlinePollCq;
  t.post_send = InlinePostSend;
  t.post_recv = InlinePostRecv;
  loaded.ok = ok;
  return loaded;
}

}  // namespace

const Verbs* SystemVerbs(std::string* why) {
  static const Loaded loaded = Load();
  if (!loaded.ok) {
    if (why != nullptr) *why = loaded.why;
    return nullptr;
  }
  return &loaded.table;
}

}  // namespace ferry::rdma
