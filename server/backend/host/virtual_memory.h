// Private to the host backend: virtual memory management (cuMemAddressReserve,
// cuMemCreate, cuMemMap, cuMemSetAccess, ...) in ferryd's own address space.
//
// A reservation is a PROT_NONE, MAP_NORESERVE anonymous mapping: real
// addresses nobody else (no allocation of any session, no library) can get
// while it is held. Physical memory is a memfd, zero-filled, so mapping it
// (MAP_SHARED | MAP_FIXED over the reservation) in two places aliases the same
// bytes, as two mappings of one handle do on a GPU. A mapping starts PROT_NONE;
// access is the pages' protection (read-only access leaves them writable: see
// SetAccess). Unmapping puts the PROT_NONE reservation
// back. The memory is charged to its device from creation until it is released
// and no mapping holds it.
//
// Unmapping and taking access away change the books at once (the range may
// be mapped again, or freed, right after) but the pages only once the work
// that may still touch them has finished: the caller's Defer runs the page
// change then. Until it does, an unmapped range keeps its old pages (a
// "retiring" mapping, which also keeps the memory charged); a new mapping
// over it replaces them at once, and a freed reservation is unmapped once its
// last retiring mapping is gone. A page change never undoes what the books
// say now: it restores only ranges nothing maps, and narrows only a mapping
// whose access is still narrow.
//
// This object checks what it is asked against its own books (a reservation
// freed whole, a mapping inside a reservation and over nothing mapped,
// unmapping and access of a whole mapping), so a caller's slip cannot unmap
// memory of ferryd itself.
//
// Thread-safety: every method is thread-safe (mu_); physical memory may be
// released from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>

#include "absl/base/thread_annotations.h"
#include "common/status.h"
#include "server/backend/api/gpu_backend.h"

namespace ferry::backend::host_internal {

class HostVirtualMemory {
 public:
  // take(device, bytes) charges a device's memory (an error, such as
  // OutOfMemory, when it cannot); give(device, bytes) returns it. Both are
  // called without mu_ held and must outlive this object and every
  // PhysicalMemory it makes.
  using Take = std::function<Status(int device, uint64_t bytes)>;
  using Give = std::function<void(int device, uint64_t bytes)>;
  // Runs a page change once the work queued so far that may touch the pages
  // has finished (perhaps at once, on the calling thread).
  using Defer = std::function<void(std::function<void()>)>;
  HostVirtualMemory(Take take, Give give);
  // Gives back what is still mapped (its reservations go with the process).
  ~HostVirtualMemory();

  // The unit of sizes, offsets and addresses: the page size (host pages are
  // what the backend maps).
  static uint64_t Granularity();

  Status Create(int device, uint64_t bytes, std::unique_ptr<PhysicalMemory>* out);
  Status Reserve(uint64_t bytes, uint64_t alignment, uint64_t hint, uint64_t* address);
  Status Free(uint64_t address, uint64_t bytes);
  Status Map(uint64_t address, uint64_t bytes, PhysicalMemory& memory, uint64_t offset);
  Status Unmap(uint64_t address, uint64_t bytes, const Defer& defer);
  Status SetAccess(uint64_t address, uint64_t bytes, std::span<const MemoryAccess> access,
                   const Defer& defer);
  // A view of the memory mapped at [address, address + bytes), which must lie
  // inside one mapping: the same pages, readable and writable at `*at`, an
  // address of the view's own that stays valid while `*owner` lives,
  // whatever later happens to the mapping (unmapped, access taken away). For
  // objects that read the memory later: texture and surface objects.
  // InvalidValue when the range is not inside one mapping.
  Status View(uint64_t address, uint64_t bytes, std::shared_ptr<void>* owner, uint8_t** at);

 private:
  struct Physical;  // the memfd and its charge; shared by the handle and its mappings
  class Handle;
  struct Mapping {
    uint64_t bytes = 0;
    std::shared_ptr<Physical> physical;
    uint64_t offset = 0;  // into physical
    uint64_t id = 0;  // unique, so a deferred change can tell it is still this mapping
    int prot = 0;     // PROT_* the books give its pages
  };
  // The retiring mapping `id` is gone: restore what nothing maps now in its
  // range, unmap its reservation if that was freed and nothing else retires
  // in it, and drop its memory.
  void Retire(uint64_t address, uint64_t id);
  // Narrows the pages of mapping `id` at `address` to its books' access, if
  // it is still mapped there.
  void Narrow(uint64_t address, uint64_t id);

  const Take take_;
  const Give give_;
  std::mutex mu_;
  std::map<uint64_t, uint64_t> reservations_ ABSL_GUARDED_BY(mu_);  // base -> bytes
  std::map<uint64_t, Mapping> mappings_ ABSL_GUARDED_BY(mu_);       // by address
  std::multimap<uint64_t, Mapping> retiring_ ABSL_GUARDED_BY(mu_);  // unmapped, pages kept
  std::map<uint64_t, uint64_t> freed_reservations_ ABSL_GUARDED_BY(mu_);  // wait for retiring_
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace ferry::backend::host_internal
