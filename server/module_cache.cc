#include "server/module_cache.h"

namespace ferry::server {

ModuleCache::ModuleCache(uint64_t capacity_bytes) : capacity_bytes_(capacity_bytes) {}

bool ModuleCache::Find(const ContentHash& hash, uint64_t size, backend::HostBytes* image) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(Key{hash, size});
  if (it == entries_.end()) {
    ++stats_.misses;
    return false;
  }
  ++stats_.hits;
  lru_.splice(lru_.begin(), lru_, it->second.recency);
  *image = it->second.image;
  return true;
}

void ModuleCache::Insert(const ContentHash& hash, backend::HostBytes image) {
  if (image.size == 0 || image.size > capacity_bytes_) return;
  std::lock_guard<std::mutex> lock(mu_);
  const Key key{hash, image.size};
  if (entries_.count(key) != 0) return;
  while (stats_.bytes + image.size > capacity_bytes_ && !lru_.empty()) {
    auto victim = entries_.find(lru_.back());
    stats_.bytes -= victim->second.image.size;
    --stats_.images;
    ++stats_.evictions;
    entries_.erase(victim);
    lru_.pop_back();
  }
  lru_.push_front(key);
  stats_.bytes += image.size;
  ++stats_.images;
  ++stats_.insertions;
  entries_.emplace(key, Entry{std::move(image), lru_.begin()});
}

ModuleCacheStats ModuleCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace ferry::server
