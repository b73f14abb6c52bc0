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
// With session workers (server/session_worker.h) the cache lives in ferryd's
// main process and workers reach it through their link: images travel as
// SealedImages (a memfd that nobody can change any more), which the main
// process hashes itself before it keeps one, and which workers map
// read-only, so one copy of an image serves every worker.
//
// Thread-safety: every method is safe from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <span>
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

// Where a session finds and keeps module images by name: the ModuleCache in
// its own process, or (in a session worker) the main process's cache over the
// worker's link.
class ModuleImages {
 public:
  virtual ~ModuleImages() = default;
  // The image named (`hash`, `size`), sharing ownership of its bytes; false
  // when it is not held.
  virtual bool Find(const ContentHash& hash, uint64_t size, backend::HostBytes* image) = 0;
  // Keeps `image` under `hash`, which the caller has verified is the SHA-256
  // of exactly these bytes. A name already held keeps its bytes.
  virtual void Insert(const ContentHash& hash, backend::HostBytes image) = 0;
};

// An image in a sealed memfd (no writes, no resizing, no more seals), mapped
// read-only: bytes another process can map and trust to stay as they were
// when they were checked. Immutable; safe from any thread.
class SealedImage {
 public:
  // Copies `bytes` into a new sealed memfd.
  static Status FromBytes(std::span<const uint8_t> bytes, std::shared_ptr<const SealedImage>* out);
  // `size` bytes that `fill(data)` writes (a migrating session's offer and
  // its bytes, read from the other ferryd straight into the memfd), then
  // sealed; fill's error fails it.
  static Status Fill(uint64_t size, const std::function<Status(uint8_t* data)>& fill,
                     std::shared_ptr<const SealedImage>* out);
  // Takes `fd` (owned from now on, also on failure), which must be a memfd
  // sealed as above and exactly `size` bytes long.
  static Status FromFd(int fd, uint64_t size, std::shared_ptr<const SealedImage>* out);
  ~SealedImage();
  SealedImage(const SealedImage&) = delete;
  SealedImage& operator=(const SealedImage&) = delete;

  int fd() const { return fd_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // The bytes, kept alive by `self` (this image).
  static backend::HostBytes Bytes(const std::shared_ptr<const SealedImage>& self);

 private:
  SealedImage(int fd, const uint8_t* data, uint64_t size) : fd_(fd), data_(data), size_(size) {}
  const int fd_;
  const uint8_t* const data_;
  const uint64_t size_;
};

class ModuleCache final : public ModuleImages {
 public:
  explicit ModuleCache(uint64_t capacity_bytes);
  ModuleCache(const ModuleCache&) = delete;
  ModuleCache& operator=(const ModuleCache&) = delete;

  bool Find(const ContentHash& hash, uint64_t size, backend::HostBytes* image) override;
  void Insert(const ContentHash& hash, backend::HostBytes image) override;

  // For session workers: the image as a SealedImage, made (once) from the
  // bytes held if they are not one yet; false when it is not held.
  bool FindSealed(const ContentHash& hash, uint64_t size,
                  std::shared_ptr<const SealedImage>* image);
  // Keeps `image` under `hash` after checking that `hash` is its SHA-256
  // (the bytes come from a worker, which ferryd's main process does not
  // trust); false, keeping nothing, when it is not.
  bool InsertSealed(const ContentHash& hash, std::shared_ptr<const SealedImage> image);

  ModuleCacheStats stats() const;
  uint64_t capacity_bytes() const { return capacity_bytes_; }

 private:
  using Key = std::pair<ContentHash, uint64_t>;  // hash, size
  struct Entry {
    backend::HostBytes image;
    std::shared_ptr<const SealedImage> sealed;  // null until a worker needs it
    std::list<Key>::iterator recency;           // position in lru_
  };

  // The entry named (`hash`, `size`), counted as a hit (and made the most
  // recent) or a miss; null when not held.
  Entry* LookUpLocked(const ContentHash& hash, uint64_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void InsertLocked(const ContentHash& hash, backend::HostBytes image,
                    std::shared_ptr<const SealedImage> sealed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint64_t capacity_bytes_;
  mutable std::mutex mu_;
  std::map<Key, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::list<Key> lru_ ABSL_GUARDED_BY(mu_);  // most recently used first
  ModuleCacheStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::server
