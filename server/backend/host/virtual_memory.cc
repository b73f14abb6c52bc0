#include "server/backend/host/virtual_memory.h"

#include <cuda.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace ferry::backend::host_internal {
namespace {

Status InvalidValue(std::string message) {
  return Status::Cuda(CUDA_ERROR_INVALID_VALUE, std::move(message));
}

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

void* At(uint64_t address) { return reinterpret_cast<void*>(address); }

// A PROT_NONE range that reserves addresses without committing memory.
constexpr int kReservationFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;

}  // namespace

struct HostVirtualMemory::Physical {
  Physical(int fd, int device, uint64_t bytes, Give give)
      : fd(fd), device(device), bytes(bytes), give(std::move(give)) {}
  // Runs when the handle is released and the last mapping is gone.
  ~Physical() {
    close(fd);
    give(device, bytes);
  }
  const int fd;
  const int device;
  const uint64_t bytes;
  const Give give;
};

class HostVirtualMemory::Handle final : public PhysicalMemory {
 public:
  explicit Handle(std::shared_ptr<Physical> physical) : physical(std::move(physical)) {}
  const std::shared_ptr<Physical> physical;
};

HostVirtualMemory::HostVirtualMemory(Take take, Give give)
    : take_(std::move(take)), give_(std::move(give)) {}

HostVirtualMemory::~HostVirtualMemory() {
  std::map<uint64_t, Mapping> mappings;
  std::multimap<uint64_t, Mapping> retiring;
  {
    std::lock_guard<std::mutex> lock(mu_);
    mappings.swap(mappings_);
    retiring.swap(retiring_);
  }
  // Dropping the mappings' references gives their memory back.
}

uint64_t HostVirtualMemory::Granularity() {
  static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return page;
}

Status HostVirtualMemory::Create(int device, uint64_t bytes, std::unique_ptr<PhysicalMemory>* out) {
  if (bytes == 0 || bytes % Granularity() != 0) {
    return InvalidValue("cuMemCreate: size " + std::to_string(bytes) +
                        " is not a positive multiple of the granularity " +
                        std::to_string(Granularity()));
  }
  FERRY_RETURN_IF_ERROR(take_(device, bytes));
  const int fd = memfd_create("ferry-physical-memory", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const std::string why = Errno("memfd");
    if (fd >= 0) close(fd);
    give_(device, bytes);
    return Status::OutOfMemory("cuMemCreate of " + std::to_string(bytes) + " bytes: " + why);
  }
  *out = std::make_unique<Handle>(std::make_shared<Physical>(fd, device, bytes, give_));
  return Status::Ok();
}

Status HostVirtualMemory::Reserve(uint64_t bytes, uint64_t alignment, uint64_t hint,
                                  uint64_t* address) {
  const uint64_t page = Granularity();
  if (alignment < page) alignment = page;
  if (bytes == 0 || bytes % page != 0 || (alignment & (alignment - 1)) != 0) {
    return InvalidValue("cuMemAddressReserve: bad size or alignment");
  }
  void* p = MAP_FAILED;
  if (hint != 0 && hint % alignment == 0) {
    // The hint, if nothing is there (older kernels take MAP_FIXED_NOREPLACE
    // as a plain hint and may answer elsewhere: then it is not honoured).
    p = mmap(At(hint), bytes, PROT_NONE, kReservationFlags | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != MAP_FAILED && p != At(hint)) {
      munmap(p, bytes);
      p = MAP_FAILED;
    }
  }
  if (p == MAP_FAILED) {
    // Over-reserve by the alignment and trim both ends.
    const uint64_t padded = bytes + alignment - page;
    if (padded < bytes) return Status::OutOfMemory("cuMemAddressReserve: size overflows");
    void* raw = mmap(nullptr, padded, PROT_NONE, kReservationFlags, -1, 0);
    if (raw == MAP_FAILED) {
      return Status::OutOfMemory("cuMemAddressReserve of " + std::to_string(bytes) +
                                 " bytes: " + Errno("mmap"));
    }
    const uint64_t start = reinterpret_cast<uint64_t>(raw);
    const uint64_t aligned = (start + alignment - 1) / alignment * alignment;
    if (aligned > start) munmap(raw, aligned - start);
    if (start + padded > aligned + bytes)
      munmap(At(aligned + bytes), start + padded - aligned - bytes);
    p = At(aligned);
  }
  *address = reinterpret_cast<uint64_t>(p);
  std::lock_guard<std::mutex> lock(mu_);
  reservations_[*address] = bytes;
  return Status::Ok();
}

Status HostVirtualMemory::Free(uint64_t address, uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = reservations_.find(address);
  if (it == reservations_.end() || it->second != bytes) {
    return InvalidValue("cuMemAddressFree: not a whole reservation");
  }
  auto mapped = mappings_.lower_bound(address);
  if (mapped != mappings_.end() && mapped->first < address + bytes) {
    return InvalidValue("cuMemAddressFree: the reservation still has mappings");
  }
  reservations_.erase(it);
  auto retiring = retiring_.lower_bound(address);
  if (retiring != retiring_.end() && retiring->first < address + bytes) {
    // Work may still touch a retiring mapping: the last one's Retire unmaps.
    freed_reservations_[address] = bytes;
    return Status::Ok();
  }
  munmap(At(address), bytes);
  return Status::Ok();
}

Status HostVirtualMemory::Map(uint64_t address, uint64_t bytes, PhysicalMemory& memory,
                              uint64_t offset) {
  const std::shared_ptr<Physical>& physical = static_cast<Handle&>(memory).physical;
  const uint64_t page = Granularity();
  if (bytes == 0 || bytes % page != 0 || offset % page != 0 || address % page != 0 ||
      offset > physical->bytes || bytes > physical->bytes - offset) {
    return InvalidValue("cuMemMap: size, offset or address not within the memory");
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto reservation = reservations_.upper_bound(address);
  if (reservation == reservations_.begin()) return InvalidValue("cuMemMap: not reserved");
  --reservation;
  if (address - reservation->first >= reservation->second ||
      bytes > reservation->second - (address - reservation->first)) {
    return InvalidValue("cuMemMap: the range is not inside one reservation");
  }
  auto next = mappings_.lower_bound(address);
  if ((next != mappings_.end() && next->first < address + bytes) ||
      (next != mappings_.begin() &&
       std::prev(next)->first + std::prev(next)->second.bytes > address)) {
    return InvalidValue("cuMemMap: the range is already mapped");
  }
  void* p = mmap(At(address), bytes, PROT_NONE, MAP_SHARED | MAP_FIXED, physical->fd,
                 static_cast<off_t>(offset));
  if (p == MAP_FAILED) return Status::OutOfMemory("cuMemMap: " + Errno("mmap"));
  mappings_.emplace(address, Mapping{bytes, physical, offset, next_id_++, PROT_NONE});
  return Status::Ok();
}

Status HostVirtualMemory::View(uint64_t address, uint64_t bytes, std::shared_ptr<void>* owner,
                               uint8_t** at) {
  std::shared_ptr<Physical> physical;
  uint64_t file_offset = 0, length = 0, inside = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = mappings_.upper_bound(address);
    if (it == mappings_.begin()) return InvalidValue("no mapping holds the range");
    --it;
    const uint64_t start = it->first;
    const Mapping& mapping = it->second;
    if (address - start >= mapping.bytes || bytes > mapping.bytes - (address - start)) {
      return InvalidValue("the range is not inside one mapping");
    }
    const uint64_t page = Granularity();
    const uint64_t first_page = (address - start) / page * page;
    inside = address - start - first_page;
    length = (inside + bytes + page - 1) / page * page;
    file_offset = mapping.offset + first_page;
    physical = mapping.physical;
  }
  void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, physical->fd,
                 static_cast<off_t>(file_offset));
  if (p == MAP_FAILED) return Status::OutOfMemory(Errno("mmap of a view"));
  // The view holds the memory (its memfd and charge) until it goes.
  *owner = std::shared_ptr<void>(p, [length, physical](void* q) { munmap(q, length); });
  *at = static_cast<uint8_t*>(p) + inside;
  return Status::Ok();
}

Status HostVirtualMemory::Unmap(uint64_t address, uint64_t bytes, const Defer& defer) {
  uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = mappings_.find(address);
    if (it == mappings_.end() || it->second.bytes != bytes) {
      return InvalidValue("cuMemUnmap: not a whole mapping");
    }
    id = it->second.id;
    retiring_.emplace(address, std::move(it->second));
    mappings_.erase(it);
  }
  defer([this, address, id] { Retire(address, id); });
  return Status::Ok();
}

void HostVirtualMemory::Retire(uint64_t address, uint64_t id) {
  std::shared_ptr<Physical> dropped;  // released after mu_
  std::lock_guard<std::mutex> lock(mu_);
  auto [first, last] = retiring_.equal_range(address);
  auto it = std::find_if(first, last, [id](const auto& entry) { return entry.second.id == id; });
  if (it == last) return;
  const uint64_t end = address + it->second.bytes;
  dropped = std::move(it->second.physical);
  retiring_.erase(it);
  // The reservation again, in place (MAP_FIXED replaces the pages atomically),
  // wherever no other mapping covers the range: neither one mapped since nor
  // one still retiring (whose pages may be the ones there now; the last of
  // them to retire restores what is left).
  std::vector<std::pair<uint64_t, uint64_t>> covered;  // [begin, end) overlapping the range
  auto collect = [&](const auto& books) {
    for (const auto& [base, mapping] : books) {
      if (base < end && base + mapping.bytes > address)
        covered.emplace_back(base, base + mapping.bytes);
    }
  };
  collect(mappings_);
  collect(retiring_);
  std::sort(covered.begin(), covered.end());
  auto restore = [](uint64_t from, uint64_t to) {
    if (to > from) mmap(At(from), to - from, PROT_NONE, kReservationFlags | MAP_FIXED, -1, 0);
  };
  uint64_t at = address;
  for (const auto& [from, to] : covered) {
    restore(at, std::min(from, end));
    at = std::max(at, to);
  }
  restore(at, end);
  // A freed reservation goes once nothing retires in it any more.
  auto freed = freed_reservations_.upper_bound(address);
  if (freed == freed_reservations_.begin()) return;
  --freed;
  const uint64_t freed_end = freed->first + freed->second;
  if (address >= freed_end) return;
  auto still = retiring_.lower_bound(freed->first);
  if (still != retiring_.end() && still->first < freed_end) return;
  munmap(At(freed->first), freed->second);
  freed_reservations_.erase(freed);
}

void HostVirtualMemory::Narrow(uint64_t address, uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = mappings_.find(address);
  if (it == mappings_.end() || it->second.id != id || it->second.prot != PROT_NONE) return;
  mprotect(At(address), it->second.bytes, PROT_NONE);
}

Status HostVirtualMemory::SetAccess(uint64_t address, uint64_t bytes,
                                    std::span<const MemoryAccess> access, const Defer& defer) {
  // One address space serves every device: the pages get the widest access
  // any device has. Read-only access still leaves the pages writable: ferryd
  // itself writes device memory for copies and memsets, and a write the
  // driver would refuse must never fault ferryd (a host kernel's write to
  // read-only memory therefore lands instead of faulting, the one way this
  // backend differs from a GPU here).
  unsigned flags = 0;
  for (const MemoryAccess& a : access) {
    if (a.flags != CU_MEM_ACCESS_FLAGS_PROT_NONE && a.flags != CU_MEM_ACCESS_FLAGS_PROT_READ &&
        a.flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE) {
      return InvalidValue("cuMemSetAccess: bad access flags " + std::to_string(a.flags));
    }
    flags |= a.flags;
  }
  const int prot = flags != CU_MEM_ACCESS_FLAGS_PROT_NONE ? PROT_READ | PROT_WRITE : PROT_NONE;
  uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = mappings_.find(address);
    if (it == mappings_.end() || it->second.bytes != bytes) {
      return InvalidValue("cuMemSetAccess: not a whole mapping");
    }
    const int before = it->second.prot;
    if (prot != PROT_NONE) {
      // Widening (or keeping) access acts at once.
      if (mprotect(At(address), bytes, prot) != 0) {
        return Status::Internal("cuMemSetAccess: " + Errno("mprotect"));
      }
      it->second.prot = prot;
      return Status::Ok();
    }
    it->second.prot = prot;
    if (before == PROT_NONE) return Status::Ok();
    id = it->second.id;
  }
  defer([this, address, id] { Narrow(address, id); });
  return Status::Ok();
}

}  // namespace ferry::backend::host_internal
