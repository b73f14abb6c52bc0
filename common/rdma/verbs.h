// Verbs: every libibverbs call ferry makes, as one table of function
// pointers.
//
// Why a table: (1) the stub libcuda and ferryd must run on hosts without
// rdma-core, so libibverbs.so.1 is opened at run time (dlopen) and never
// linked — a host without it simply has no RDMA; (2) unit tests swap the
// table for one that injects failures (a post refused, a completion with an
// error status, a queue pair in error) or for an in-process fake fabric
// (test/support/fake_verbs.h), so the transport's protocol logic is tested
// without a kernel that has RDMA.
//
// The data-path calls that rdma-core defines as inline functions (posting
// work requests, polling and arming completion queues) are entries here
// too; the system table fills them with those inline functions.
//
// Thread-safety: a table is immutable once made; SystemVerbs is safe to call
// from any thread (it loads the library once).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <infiniband/verbs.h>

namespace ferry::rdma {

struct Verbs {
  // Devices.
  ibv_device** (*get_device_list)(int* count);
  void (*free_device_list)(ibv_device** list);
  const char* (*get_device_name)(ibv_device* device);
  ibv_context* (*open_device)(ibv_device* device);
  int (*close_device)(ibv_context* context);
  int (*query_device)(ibv_context* context, ibv_device_attr* attr);
  int (*query_port)(ibv_context* context, uint8_t port, ibv_port_attr* attr);
  int (*query_gid)(ibv_context* context, uint8_t port, int index, ibv_gid* gid);

  // Protection domains and memory regions.
  ibv_pd* (*alloc_pd)(ibv_context* context);
  int (*dealloc_pd)(ibv_pd* pd);
  ibv_mr* (*reg_mr)(ibv_pd* pd, void* addr, size_t length, int access);
  // Null where the library is older than dma-buf support (rdma-core 34).
  ibv_mr* (*reg_dmabuf_mr)(ibv_pd* pd, uint64_t offset, size_t length, uint64_t iova, int fd,
                           int access);
  int (*dereg_mr)(ibv_mr* mr);

  // Completion channels and queues.
  ibv_comp_channel* (*create_comp_channel)(ibv_context* context);
  int (*destroy_comp_channel)(ibv_comp_channel* channel);
  ibv_cq* (*create_cq)(ibv_context* context, int entries, void* cq_context,
                       ibv_comp_channel* channel, int comp_vector);
  int (*destroy_cq)(ibv_cq* cq);
  int (*req_notify_cq)(ibv_cq* cq, int solicited_only);
  int (*get_cq_event)(ibv_comp_channel* channel, ibv_cq** cq, void** cq_context);
  void (*ack_cq_events)(ibv_cq* cq, unsigned int count);
  int (*poll_cq)(ibv_cq* cq, int entries, ibv_wc* wc);

  // Queue pairs.
  ibv_qp* (*create_qp)(ibv_pd* pd, ibv_qp_init_attr* attr);
  int (*modify_qp)(ibv_qp* qp, ibv_qp_attr* attr, int mask);
  int (*destroy_qp)(ibv_qp* qp);
  int (*post_send)(ibv_qp* qp, ibv_send_wr* wr, ibv_send_wr** bad_wr);
  int (*post_recv)(ibv_qp* qp, ibv_recv_wr* wr, ibv_recv_wr** bad_wr);

  const char* (*wc_status_str)(ibv_wc_status status);
};

// The table over the system's libibverbs.so.1, loaded on first use; null
// when the library (or a symbol ferry needs) is missing, with the reason in
// `why`.
const Verbs* SystemVerbs(std::string* why);

}  // namespace ferry::rdma
