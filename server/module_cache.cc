#include "server/module_cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace ferry::server {
namespace {

constexpr int kImageSeals = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

}  // namespace

Status SealedImage::FromBytes(std::span<const uint8_t> bytes,
                              std::shared_ptr<const SealedImage>* out) {
  return Fill(
      bytes.size(),
      [&](uint8_t* data) {
        std::memcpy(data, bytes.data(), bytes.size());
        return Status::Ok();
      },
      out);
}

Status SealedImage::Fill(uint64_t size, const std::function<Status(uint8_t* data)>& fill,
                         std::shared_ptr<const SealedImage>* out) {
  const int fd = ::memfd_create("ferry-sealed-bytes", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return Status::Internal(std::string("memfd_create: ") + std::strerror(errno));
  auto fail = [fd](const std::string& what) {
    const int err = errno;
    ::close(fd);
    return Status::Internal(what + ": " + std::strerror(err));
  };
  if (size == 0 || ::ftruncate(fd, static_cast<off_t>(size)) != 0) return fail("ftruncate");
  void* data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (data == MAP_FAILED) return fail("mmap");
  Status filled = fill(static_cast<uint8_t*>(data));
  ::munmap(data, size);  // before the seal: no writable mapping may remain
  if (!filled.ok()) {
    ::close(fd);
    return filled;
  }
  if (::fcntl(fd, F_ADD_SEALS, kImageSeals) != 0) return fail("cannot seal a memfd");
  return FromFd(fd, size, out);
}

Status SealedImage::FromFd(int fd, uint64_t size, std::shared_ptr<const SealedImage>* out) {
  auto fail = [fd](const std::string& why) {
    ::close(fd);
    return Status::InvalidArgument("module image memfd: " + why);
  };
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & kImageSeals) != kImageSeals) return fail("not sealed");
  const off_t length = ::lseek(fd, 0, SEEK_END);
  if (length < 0 || static_cast<uint64_t>(length) != size || size == 0) {
    return fail("holds " + std::to_string(length) + " bytes, not " + std::to_string(size));
  }
  void* data = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (data == MAP_FAILED) return fail(std::string("mmap: ") + std::strerror(errno));
  out->reset(new SealedImage(fd, static_cast<const uint8_t*>(data), size));
  return Status::Ok();
}

SealedImage::~SealedImage() {
  ::munmap(const_cast<uint8_t*>(data_), size_);
  ::close(fd_);
}

backend::HostBytes SealedImage::Bytes(const std::shared_ptr<const SealedImage>& self) {
  return backend::HostBytes{self, self->data(), self->size()};
}

ModuleCache::ModuleCache(uint64_t capacity_bytes) : capacity_bytes_(capacity_bytes) {}

ModuleCache::Entry* ModuleCache::LookUpLocked(const ContentHash& hash, uint64_t size) {
  auto it = entries_.find(Key{hash, size});
  if (it == entries_.end()) {
    ++stats_.misses;
    return nullptr;
  }
  ++stats_.hits;
  lru_.splice(lru_.begin(), lru_, it->second.recency);
  return &it->second;
}

bool ModuleCache::Find(const ContentHash& hash, uint64_t size, backend::HostBytes* image) {
  std::lock_guard<std::mutex> lock(mu_);
  const Entry* entry = LookUpLocked(hash, size);
  if (entry == nullptr) return false;
  *image = entry->image;
  return true;
}

void ModuleCache::Insert(const ContentHash& hash, backend::HostBytes image) {
  std::lock_guard<std::mutex> lock(mu_);
  InsertLocked(hash, std::move(image), nullptr);
}

void ModuleCache::InsertLocked(const ContentHash& hash, backend::HostBytes image,
                               std::shared_ptr<const SealedImage> sealed) {
  if (image.size == 0 || image.size > capacity_bytes_) return;
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
  entries_.emplace(key, Entry{std::move(image), std::move(sealed), lru_.begin()});
}

bool ModuleCache::FindSealed(const ContentHash& hash, uint64_t size,
                             std::shared_ptr<const SealedImage>* image) {
  backend::HostBytes bytes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const Entry* entry = LookUpLocked(hash, size);
    if (entry == nullptr) return false;
    if (entry->sealed != nullptr) {
      *image = entry->sealed;
      return true;
    }
    bytes = entry->image;
  }
  // Held as plain bytes (inserted in this process): sealed once, outside the
  // lock, and remembered.
  std::shared_ptr<const SealedImage> sealed;
  if (!SealedImage::FromBytes(std::span<const uint8_t>(bytes.data, bytes.size), &sealed).ok()) {
    return false;
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(Key{hash, size});
  if (it != entries_.end() && it->second.sealed == nullptr) it->second.sealed = sealed;
  *image = std::move(sealed);
  return true;
}

bool ModuleCache::InsertSealed(const ContentHash& hash, std::shared_ptr<const SealedImage> image) {
  if (HashContent(std::span<const uint8_t>(image->data(), image->size())) != hash) return false;
  backend::HostBytes bytes = SealedImage::Bytes(image);
  std::lock_guard<std::mutex> lock(mu_);
  InsertLocked(hash, std::move(bytes), std::move(image));
  return true;
}

ModuleCacheStats ModuleCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace ferry::server
