#include "client/allocation_registry.h"

#include <cuda.h>

#include <vector>

namespace ferry::client {

template <typename Value>
void AllocationRegistry::EraseOverlapping(RangeMap<Value>* map, uint64_t base, uint64_t size) {
  // Only on a conflict, which a well-behaved program never causes: a scan is
  // cheap enough.
  std::vector<uint64_t> stale;
  map->ForEach([&](uint64_t b, uint64_t s, const Value&) {
    if (b < base + size && base < b + s) stale.push_back(b);
  });
  for (uint64_t b : stale) map->Erase(b);
}

void AllocationRegistry::AddDevice(uint64_t dptr, uint64_t size, uint64_t ctx, bool global) {
  std::lock_guard<std::mutex> lock(mu_);
  const DeviceAllocation allocation{size, ctx, global};
  if (device_.Insert(dptr, size, allocation)) return;
  EraseOverlapping(&device_, dptr, size);
  device_.Insert(dptr, size, allocation);  // false only for size 0 or a wrapping range
}

Status AllocationRegistry::RemoveDevice(uint64_t dptr) {
  std::lock_guard<std::mutex> lock(mu_);
  RangeMap<DeviceAllocation>::Found found = device_.FindBase(dptr);
  if (found.value == nullptr || found.value->global) {
    return Status::InvalidArgument("not the start of a device allocation of this process");
  }
  device_.Erase(dptr);
  return Status::Ok();
}

Status AllocationRegistry::CheckDevice(uint64_t address, uint64_t bytes, const char* what) {
  std::lock_guard<std::mutex> lock(mu_);
  return device_.Check(address, bytes, what, "a device allocation");
}

Status AllocationRegistry::CheckDevice2D(uint64_t address, uint64_t pitch, uint64_t width_bytes,
                                         uint64_t height, const char* what) {
  std::lock_guard<std::mutex> lock(mu_);
  return device_.Check2D(address, pitch, width_bytes, height, what, "a device allocation");
}

bool AllocationRegistry::FindDevice(uint64_t address, uint64_t* base, DeviceAllocation* out) {
  std::lock_guard<std::mutex> lock(mu_);
  RangeMap<DeviceAllocation>::Found found = device_.Find(address);
  if (found.value == nullptr) return false;
  if (base != nullptr) *base = found.base;
  if (out != nullptr) *out = *found.value;
  return true;
}

Status AllocationRegistry::AddHost(const void* ptr, HostAllocation allocation) {
  const uint64_t base = reinterpret_cast<uintptr_t>(ptr);
  std::lock_guard<std::mutex> lock(mu_);
  if (host_.Insert(base, allocation.size, allocation)) return Status::Ok();
  if (allocation.size == 0) return Status::InvalidArgument("host range of 0 bytes");
  if (allocation.registered) {
    return Status::Cuda(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED,
                        "the range overlaps page-locked memory");
  }
  EraseOverlapping(&host_, base, allocation.size);
  if (!host_.Insert(base, allocation.size, allocation)) {
    return Status::InvalidArgument("host range wraps around the address space");
  }
  return Status::Ok();
}

Status AllocationRegistry::RemoveHost(const void* ptr, bool registered, HostAllocation* removed) {
  std::lock_guard<std::mutex> lock(mu_);
  RangeMap<HostAllocation>::Found found = host_.FindBase(reinterpret_cast<uintptr_t>(ptr));
  if (found.value == nullptr || found.value->registered != registered) {
    return registered ? Status::Cuda(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED,
                                     "host memory is not registered")
                      : Status::InvalidArgument("not page-locked memory allocated by the driver");
  }
  if (removed != nullptr) *removed = *found.value;
  host_.Erase(found.base);
  return Status::Ok();
}

bool AllocationRegistry::FindHost(const void* address, const void** base, HostAllocation* out) {
  std::lock_guard<std::mutex> lock(mu_);
  RangeMap<HostAllocation>::Found found = host_.Find(reinterpret_cast<uintptr_t>(address));
  if (found.value == nullptr) return false;
  if (base != nullptr) *base = reinterpret_cast<const void*>(found.base);
  if (out != nullptr) *out = *found.value;
  return true;
}

void AllocationRegistry::ForgetContext(uint64_t ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  device_.EraseIf([ctx](const DeviceAllocation& a) { return a.ctx == ctx; });
}

}  // namespace ferry::client
