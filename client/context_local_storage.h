// ContextLocalStorage: the CUDA runtime's per-context slots (served through
// the context-local-storage export table, see export_tables.cc).
//
// Every runtime instance in a process (the program's cudart, cuBLAS's,
// cuBLASLt's) keeps its per-context state here under its own key, and reads
// it before almost every runtime call, so this is a local map, never a round
// trip. A slot may carry a destructor that the driver calls when the context
// goes away (primary context reset or release, cuCtxDestroy).
//
// Thread-safety: all methods are thread-safe. Destructors run on the thread
// that destroys the context, outside the lock, so they may call back into
// the driver (and into this storage).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "absl/base/thread_annotations.h"

namespace ferry::client {

class ContextLocalStorage {
 public:
  // Called as destructor(context, key, value) when the context goes away.
  // The CUcontext is passed as the id it stands for.
  using Destructor = void (*)(void* context, void* key, void* value);

  // Stores `value` under (ctx, key), replacing an earlier value (whose
  // destructor is dropped, not run, as the runtime replaces its own state).
  void Put(uint64_t ctx, void* key, void* value, Destructor destructor);
  // Removes (ctx, key) without running its destructor; false if absent.
  bool Delete(uint64_t ctx, void* key);
  // The value under (ctx, key); false if absent.
  bool Get(uint64_t ctx, void* key, void** value);
  // Removes every slot of `ctx` and runs their destructors (in key order).
  void RunDestructors(uint64_t ctx);

 private:
  struct Slot {
    void* value = nullptr;
    Destructor destructor = nullptr;
  };
  std::mutex mu_;
  // (context id, key address) -> slot
  std::map<std::pair<uint64_t, uintptr_t>, Slot> slots_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::client
