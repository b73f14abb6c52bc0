// DeviceLedger: the books of the host backend's emulated device memory —
// how many bytes of each device are taken — kept where several processes can
// share them.
//
// A GPU's memory is one pool for every process that uses it: with ferryd's
// session workers (one process per session) each worker opens its own host
// backend, and without shared books each would see a whole device of its
// own, so sessions could together take more than the device has and a full
// device (memory overcommit parks idle sessions' memory then) would never
// happen. ferryd's main process makes one shared ledger (a memfd) for its
// devices and hands it to every worker it spawns; a host backend that is
// given none keeps private books (the same code, in its own memory).
//
// Crash safety: each process that takes memory from a shared ledger does it
// through a slot of its own (chosen by the main process, which knows its
// workers); when a worker has ended, however it ended, the main process
// gives back whatever its slot still holds (ReleaseSlot). Taking is: the
// device's count first (a compare-and-swap that never goes past the
// capacity), then the slot's; a process killed between the two leaks those
// bytes until ferryd restarts — never more than one allocation's.
//
// Thread-safety: every method is safe from any thread of any process that
// maps the ledger (the counts are lock-free atomics in the shared memory);
// slot assignment (NewSlot, ReleaseSlot) belongs to the process that created
// the ledger.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace ferry::backend {

class DeviceLedger {
 public:
  static constexpr int kMaxDevices = 64;
  static constexpr int kMaxSlots = 1024;

  // Books for devices of `capacity` bytes each. `shared`: in a memfd that
  // other processes may Join (fd()); else in this process's memory.
  static Status Create(std::span<const uint64_t> capacity, bool shared,
                       std::unique_ptr<DeviceLedger>* out);
  // Another process's shared ledger, from its memfd `fd` (owned from now
  // on), taking through `slot` (from the creator's NewSlot). Fails
  // (InvalidArgument) on a descriptor that is not such a ledger, or a slot
  // out of range.
  static Status Join(int fd, int slot, std::unique_ptr<DeviceLedger>* out);
  ~DeviceLedger();
  DeviceLedger(const DeviceLedger&) = delete;
  DeviceLedger& operator=(const DeviceLedger&) = delete;

  // The memfd of a shared ledger (-1 for private books), for the workers.
  int fd() const { return fd_; }
  int devices() const;
  uint64_t capacity(int device) const;
  uint64_t used(int device) const;
  uint64_t free_bytes(int device) const { return capacity(device) - used(device); }

  // Takes `bytes` of `device`: true, or false (nothing taken) when the
  // device has not that much free.
  bool Take(int device, uint64_t bytes);
  // Takes bytes[d] of every device d, all or none: true, or false with
  // `*short_device` the first device that had not enough.
  bool TakeAll(std::span<const uint64_t> bytes, int* short_device);
  void Give(int device, uint64_t bytes);

  // The creator of a shared ledger: a free slot for a new worker (-1 when
  // all kMaxSlots are in use: that worker's takes are then counted only in
  // the devices' totals, and what it holds when it dies stays taken), and
  // the slot back once that worker has ended: what it still holds is given
  // back to the devices.
  int NewSlot();
  void ReleaseSlot(int slot);
  // What `slot` holds on `device` now (tests).
  uint64_t SlotBytes(int slot, int device) const;

 private:
  struct Region;
  DeviceLedger(Region* region, size_t bytes, int fd, int slot)
      : region_(region), region_bytes_(bytes), fd_(fd), slot_(slot) {}

  Region* const region_;
  const size_t region_bytes_;
  const int fd_;
  const int slot_;  // this process's; -1: none (the creator, private books)
  std::mutex slots_mutex_;
  std::vector<bool> slots_in_use_;  // the creator's, by NewSlot
};

}  // namespace ferry::backend
