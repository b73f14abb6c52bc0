// MemPoolRegistry: the program's memory pools (CUmemoryPool handles) and each
// device's current pool (cuDeviceSetMemPool), answered locally.
//
// A device's default pool gets its id on first use; whoever is told that the
// id is new (EnsureDefault's `announce`) tells the server, under the
// registry's lock, so no call naming the pool can reach the server first.
//
// Thread-safety: every method is thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include <absl/base/thread_annotations.h>
#include <absl/functional/function_ref.h>

#include "client/handles.h"
#include "common/status.h"

namespace ferry::client {

class MemPoolRegistry {
 public:
  explicit MemPoolRegistry(HandleIds* ids) : ids_(ids) {}

  // `device`'s default pool; the first call for a device runs `announce`
  // with the new id (under the lock) and records the id only if it succeeds.
  Status EnsureDefault(int device, absl::FunctionRef<Status(uint64_t)> announce, uint64_t* pool) {
    std::lock_guard<std::mutex> lock(mu_);
    return EnsureDefaultLocked(device, announce, pool);
  }
  // `device`'s current pool (its default pool unless cuDeviceSetMemPool chose
  // another), made as EnsureDefault does.
  Status Current(int device, absl::FunctionRef<Status(uint64_t)> announce, uint64_t* pool) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = current_.find(device);
    if (it != current_.end()) {
      *pool = it->second;
      return Status::Ok();
    }
    return EnsureDefaultLocked(device, announce, pool);
  }
  // cuDeviceSetMemPool: `pool` must be a live pool of `device`.
  Status SetCurrent(int device, uint64_t pool) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pools_.find(pool);
    if (it == pools_.end()) return Status::InvalidArgument("not a memory pool of this program");
    if (it->second.device != device) {
      return Status::InvalidArgument("the memory pool belongs to device " +
                                     std::to_string(it->second.device));
    }
    current_[device] = pool;
    return Status::Ok();
  }
  // A new pool of `device` (cuMemPoolCreate).
  uint64_t Add(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t id = ids_->New(HandleKind::kMemPool);
    pools_[id] = Pool{device, false};
    return id;
  }
  // The device of live pool `pool`; INVALID_VALUE for anything else.
  Status Device(uint64_t pool, int* device) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pools_.find(pool);
    if (it == pools_.end()) return Status::InvalidArgument("not a memory pool of this program");
    *device = it->second.device;
    return Status::Ok();
  }
  // cuMemPoolDestroy: forgets `pool` (a device whose current pool it was
  // goes back to its default pool). A default pool is refused.
  Status Remove(uint64_t pool) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pools_.find(pool);
    if (it == pools_.end()) return Status::InvalidArgument("not a memory pool of this program");
    if (it->second.is_default) {
      return Status::InvalidArgument("a device's default memory pool cannot be destroyed");
    }
    auto current = current_.find(it->second.device);
    if (current != current_.end() && current->second == pool) current_.erase(current);
    pools_.erase(it);
    return Status::Ok();
  }

 private:
  struct Pool {
    int device = 0;
    bool is_default = false;
  };
  Status EnsureDefaultLocked(int device, absl::FunctionRef<Status(uint64_t)> announce,
                             uint64_t* pool) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = defaults_.find(device);
    if (it != defaults_.end()) {
      *pool = it->second;
      return Status::Ok();
    }
    const uint64_t id = ids_->New(HandleKind::kMemPool);
    FERRY_RETURN_IF_ERROR(announce(id));
    defaults_[device] = id;
    pools_[id] = Pool{device, true};
    *pool = id;
    return Status::Ok();
  }

  HandleIds* const ids_;
  std::mutex mu_;
  std::map<uint64_t, Pool> pools_ ABSL_GUARDED_BY(mu_);
  std::map<int, uint64_t> defaults_ ABSL_GUARDED_BY(mu_);  // device -> its default pool
  std::map<int, uint64_t> current_ ABSL_GUARDED_BY(mu_);   // device -> pool set by the program
};

}  // namespace ferry::client
