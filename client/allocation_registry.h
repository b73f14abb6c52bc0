// AllocationRegistry: the client's record of device allocations (cuMemAlloc,
// cuMemAllocPitch, and module globals the program asked for) and of
// page-locked host memory (cuMemHostAlloc'ed or cuMemHostRegister'ed), as
// address ranges (RangeMap). Device ranges let the client refuse a copy that
// leaves an allocation before it reaches the server; host ranges make copies
// into page-locked memory asynchronous.
//
// The server is the authority on device addresses: a range it hands out that
// overlaps a recorded one means the record is stale (memory the program freed
// behind the client's back, a global of an unloaded module), so the new range
// replaces it. The same holds for host memory the driver allocates; a
// registration that overlaps recorded host memory is refused.
//
// Thread-safety: all methods are thread-safe; mu_ guards both maps and is
// never held while calling out.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/range_map.h"
#include "common/status.h"

namespace ferry::client {

struct DeviceAllocation {
  uint64_t size = 0;
  uint64_t ctx = 0;
  // A module global or graph memory: copyable, never forgotten by cuMemFree.
  bool global = false;
  // virtual memory management: an accessible mapping (ctx 0) of physical
  // memory on `device`; never freed by cuMemFree. Mappings side by side are
  // one span for range checks, as they are one stretch of addresses on a GPU.
  bool mapped = false;
  int device = 0;
  // graph node kinds: an allocation node's memory (global too), which
  // cuMemFree may free while its executable graph lives (the server checks).
  bool graph = false;
};
// virtual memory management: physical memory the program created
// (cuMemCreate), by its handle id.
struct PhysicalAllocation {
  CUmemAllocationProp prop{};  // as the program asked for it
  int references = 0;          // cuMemCreate's and each cuMemRetainAllocationHandle's
};
struct HostAllocation {
  uint64_t size = 0;
  unsigned flags = 0;
  bool registered = false;  // cuMemHostRegister'ed program memory (not ours to free)
};

class AllocationRegistry {
 public:
  // Records [dptr, dptr + size) of `ctx`, replacing overlapping records.
  // Nothing is recorded for size 0.
  void AddDevice(uint64_t dptr, uint64_t size, uint64_t ctx, bool global = false,
                 bool graph = false);
  // AddDevice, unless a record it would replace belongs to a context for
  // which `elsewhere(ctx)` is true (a program whose devices span servers:
  // another server's memory at the same addresses); then false, and nothing
  // changes. Checked and recorded under one lock, so two threads cannot both
  // pass. `elsewhere` must not call into this registry.
  bool AddDeviceUnlessOverlapping(uint64_t dptr, uint64_t size, uint64_t ctx,
                                  const std::function<bool(uint64_t other_ctx)>& elsewhere,
                                  bool global = false);
  // cuMemFree: forgets the allocation starting at `dptr`; INVALID_VALUE when
  // none does or it is a module global.
  Status RemoveDevice(uint64_t dptr);
  // Whether an allocation node's memory starts at `dptr` (cuMemFree sends
  // it to the server, which decides, and keeps the record: the range is its
  // executable graph's until that goes).
  bool IsGraphMemory(uint64_t dptr);
  // Forgets the record starting at `dptr`, whatever it is (graph memory
  // whose executable graph is destroyed).
  void ForgetDevice(uint64_t dptr);
  // OK when [address, address + bytes) lies inside one device allocation
  // (always for bytes == 0); otherwise INVALID_VALUE naming `what`.
  Status CheckDevice(uint64_t address, uint64_t bytes, const char* what);
  // The same for `height` rows of `width_bytes`, `pitch` apart.
  Status CheckDevice2D(uint64_t address, uint64_t pitch, uint64_t width_bytes, uint64_t height,
                       const char* what);
  // The allocation containing `address`, if any (either output may be null).
  bool FindDevice(uint64_t address, uint64_t* base, DeviceAllocation* out);

  // Records page-locked host memory at `ptr`. Driver-allocated memory
  // replaces overlapping records; a registration (allocation.registered)
  // overlapping recorded memory is refused with
  // HOST_MEMORY_ALREADY_REGISTERED. INVALID_VALUE for size 0.
  Status AddHost(const void* ptr, HostAllocation allocation);
  // Forgets the host memory starting at `ptr`, which must have been recorded
  // as `registered` (HOST_MEMORY_NOT_REGISTERED / INVALID_VALUE otherwise).
  // `removed` may be null.
  Status RemoveHost(const void* ptr, bool registered, HostAllocation* removed);
  // The host memory containing `address`, if any (either output may be null).
  bool FindHost(const void* address, const void** base, HostAllocation* out);

  // Forgets the device allocations of `ctx` (its globals included).
  void ForgetContext(uint64_t ctx);

  // virtual memory management, recorded after the server accepted each call
  // (it checks everything first). AddPhysical: cuMemCreate made `handle`.
  // ReleasePhysical / RetainPhysical: the program's reference count
  // (INVALID_HANDLE for a handle it does not hold); the record goes once no
  // reference and no mapping is left. FindPhysical: its properties.
  void AddPhysical(uint64_t handle, const CUmemAllocationProp& prop);
  Status CheckPhysical(uint64_t handle, PhysicalAllocation* out);
  void ReleasePhysical(uint64_t handle);
  void RetainPhysical(uint64_t handle);
  // cuMemMap of `handle` at [address, address + bytes): not accessible yet.
  void AddMapping(uint64_t address, uint64_t bytes, uint64_t handle);
  // cuMemSetAccess over whole mappings: (device, flags) pairs; a mapping
  // that some device may access is device memory from then on, one no device
  // may access is not.
  void SetMappingAccess(uint64_t address, uint64_t bytes,
                        std::span<const std::pair<int, unsigned>> access);
  // cuMemUnmap of whole mappings.
  void RemoveMappings(uint64_t address, uint64_t bytes);

 private:
  template <typename Value>
  static void EraseOverlapping(RangeMap<Value>* map, uint64_t base, uint64_t size);

  std::mutex mu_;
  RangeMap<DeviceAllocation> device_ ABSL_GUARDED_BY(mu_);
  RangeMap<HostAllocation> host_ ABSL_GUARDED_BY(mu_);
  struct Mapping {
    uint64_t handle = 0;
    std::map<int, unsigned> access;  // by device; absent: none
  };
  void DropPhysicalIfUnused(uint64_t handle) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::map<uint64_t, PhysicalAllocation> physical_ ABSL_GUARDED_BY(mu_);
  RangeMap<Mapping> mappings_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::client
