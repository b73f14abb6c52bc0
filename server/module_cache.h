// ModuleCache: module images by content, shared by every session of one
// ferryd, so that a process loading an image the server already holds sends
// only its hash (schema/README.md; schema ModuleLoad.imageHash).
//
// An image is named by its SHA-256 and its length. The session inserts only
// bytes whose hash it has computed itself and found equal to the name the
// client gave, so no session can plant bytes under another image's name; a
// lookup by name therefore yields exactly the bytes that name stands for.
//
// Bounded: once the images held exceed `capacity_bytes`, the least recently
// used go; an image larger than the capacity is never kept. An image a
// session is loading stays alive while it does (shared ownership), so
// eviction never pulls bytes from under a load.
//
// Thread-safety: every method is safe from any thread.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <utility>

#include <absl/base/thread_annotations.h>

#include "common/content_hash.h"
#include "server/backend/api/gpu_backend.h"

namespace ferry::server {

struct ModuleCacheStats {
  uint64_t hits = 0;        // lookups that found the image
  uint64_t misses = 0;      // lookups that did not
  uint64_t insertions = 0;  // images added
  uint64_t evictions = 0;   // images dropped to stay within the capacity
  uint64_t images = 0;      // images held now
  uint64_t bytes = 0;       // bytes held now
};

class ModuleCache {
 public:
  explicit ModuleCache(uint64_t capacity_bytes);
  ModuleCache(const ModuleCache&) = delete;
  ModuleCache& operator=(const ModuleCache&) = delete;

  // The image named (`hash`, `size`), sharing ownership of its bytes; false
  // when it is not held.
  bool Find(const ContentHash& hash, uint64_t size, backend::HostBytes* image);

  // Keeps `image` under `hash`, which the caller has verified is the SHA-256
  // of exactly these bytes. A name already held keeps its bytes.
  void Insert(const ContentHash& hash, backend::HostBytes image);

  ModuleCacheStats stats() const;
  uint64_t capacity_bytes() const { return capacity_bytes_; }

 private:
  using Key = std::pair<ContentHash, uint64_t>;  // hash, size
  struct Entry {
    backend::HostBytes image;
    std::list<Key>::iterator recency;  // position in lru_
  };

  const uint64_t capacity_bytes_;
  mutable std::mutex mu_;
  std::map<Key, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::list<Key> lru_ ABSL_GUARDED_BY(mu_);  // most recently used first
  ModuleCacheStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::server
