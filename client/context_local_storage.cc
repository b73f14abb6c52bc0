#include "client/context_local_storage.h"

#include <vector>

namespace ferry::client {

void ContextLocalStorage::Put(uint64_t ctx, void* key, void* value, Destructor destructor) {
  std::lock_guard<std::mutex> lock(mu_);
  slots_[{ctx, reinterpret_cast<uintptr_t>(key)}] = Slot{value, destructor};
}

bool ContextLocalStorage::Delete(uint64_t ctx, void* key) {
  std::lock_guard<std::mutex> lock(mu_);
  return slots_.erase({ctx, reinterpret_cast<uintptr_t>(key)}) != 0;
}

bool ContextLocalStorage::Get(uint64_t ctx, void* key, void** value) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = slots_.find({ctx, reinterpret_cast<uintptr_t>(key)});
  if (it == slots_.end()) return false;
  *value = it->second.value;
  return true;
}

void ContextLocalStorage::RunDestructors(uint64_t ctx) {
  std::vector<std::pair<uintptr_t, Slot>> removed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = slots_.lower_bound({ctx, uintptr_t{0}});
    while (it != slots_.end() && it->first.first == ctx) {
      removed.emplace_back(it->first.second, it->second);
      it = slots_.erase(it);
    }
  }
  // Outside the lock: a destructor typically frees the runtime's resources
  // of this context through the driver, and may touch this storage again.
  for (const auto& [key, slot] : removed) {
    if (slot.destructor != nullptr) {
      slot.destructor(reinterpret_cast<void*>(static_cast<uintptr_t>(ctx)),
                      reinterpret_cast<void*>(key), slot.value);
    }
  }
}

}  // namespace ferry::client
