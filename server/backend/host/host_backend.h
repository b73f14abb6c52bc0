// HostBackend — the CPU stand-in GPU behind every test (README.md, "Design"):
// "device" memory is host memory of the ferryd process, each stream runs its
// operations in order on its own host thread, and a kernel
// runs by calling a host implementation exported by a --host-kernels library
// (server/backend/host/ferry_host_kernel.h).
//
// What it models (the values a client sees):
//  * devices: `device_count` identical sm_90-class devices ("ferry host device
//    (emulated sm_90)", compute capability 9.0, 132 SMs, H100-like limits),
//    each with `device_memory` bytes; see device_model.h for every attribute;
//  * driver version 13000;
//  * CUDA's legacy default-stream semantics within a context, events with
//    steady-clock timestamps, per-context limits, function attributes.
//
// Thread-safety: the returned GpuBackend is safe to use from any thread (the
// GpuBackend contract). It must outlive every object it creates.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "server/backend/api/gpu_backend.h"
#include "server/backend/host/device_ledger.h"

namespace ferry::backend {

struct HostBackendOptions {
  // Paths of shared libraries exporting "ferry_host_<mangled kernel name>"
  // functions; searched in this order for each kernel.
  std::vector<std::string> kernel_libraries;
  int device_count = 1;                 // 1..64
  uint64_t device_memory = 8ull << 30;  // bytes per device; > 0
  // When not empty: one entry (bytes, > 0) per device, at most 64; replaces
  // device_count and device_memory (ferryd's [[gpu]] memory).
  std::vector<uint64_t> device_memories;
  // Books of the devices' memory shared with other processes' host backends
  // (ferryd's session workers: device_ledger.h); it must describe the same
  // devices. Null: books of this backend's own.
  std::shared_ptr<DeviceLedger> ledger;
};

// Creates a host backend. Fails (InvalidArgument) on bad options, or when a
// kernel library cannot be loaded; the message names the library and carries
// dlerror()'s reason.
Status CreateHostBackend(const HostBackendOptions& options, std::unique_ptr<GpuBackend>* out);

}  // namespace ferry::backend
