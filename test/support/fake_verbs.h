// FakeFabric: verbs (common/rdma/verbs.h) over an in-process fabric, so the
// RDMA transport's protocol — credits, chunking across the ring's end,
// inline and staged sends, zero-copy from registered memory, error mapping —
// is tested on machines whose kernel has no RDMA. The real verbs run in the
// `rxe` test (Soft-RoCE in a VM, test/rxe/).
//
// The fabric has one device, "fake0", port 1 active, Ethernet (RoCE), with
// GID 0 fe80::1 and GID 1 ::ffff:127.0.0.1. A post delivers at once, as a
// NIC would: a SEND takes the peer queue pair's oldest posted receive (none:
// the sender gets IBV_WC_RNR_RETRY_EXC_ERR and rnr_events() counts it); an
// RDMA WRITE checks the remote key, the range and the region's
// remote-write access (else IBV_WC_REM_ACCESS_ERR); local keys and ranges
// are checked too (IBV_WC_LOC_PROT_ERR). Completions go to the queues'
// completion queues and raise an event on an armed queue's channel (an
// eventfd, so poll(2) works on it).
//
// Injection: the next post_send (or reg_mr) can be refused with an errno,
// and a completion with any status can be pushed onto a queue pair's send
// queue (a QP error, a retry exceeded).
//
// Thread-safety: everything is under one mutex; any thread.
#pragma once

#include <cstdint>
#include <mutex>

#include "common/rdma/verbs.h"

namespace ferry::test {

class FakeFabric {
 public:
  // Made once per process; tests share it (each connection has its own
  // objects; counters are per fabric, read them as differences).
  static FakeFabric& Get();
  const rdma::Verbs* verbs() const;

  // The inline bytes a queue pair is granted (set before creating it).
  void set_max_inline(uint32_t bytes);
  // Devices listed from now on (0: "this host has no RDMA device").
  void set_device_count(int count);
  // The next post_send fails with `err` (0: none).
  void FailNextPostSend(int err);
  // The next reg_mr fails (returns null with `err` in errno).
  void FailNextRegistration(int err);
  // Pushes a completion with `status` onto `qp`'s send completion queue.
  void InjectCompletion(ibv_qp* qp, ibv_wc_status status);
  // Receivers that were not ready when a SEND or WRITE WITH IMMEDIATE came.
  uint64_t rnr_events() const;

 private:
  FakeFabric() = default;
};

}  // namespace ferry::test
