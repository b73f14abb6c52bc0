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

void AllocationRegistry::AddDevice(uint64_t dptr, uint64_t size, uint64_t ctx, bool global,
                                   bool graph) {
  std::lock_guard<std::mutex> lock(mu_);
  DeviceAllocation allocation{size, ctx, global};
  allocation.graph = graph;
  if (device_.Insert(dptr, size, allocation)) return;
  EraseOverlapping(&device_, dptr, size);
  device_.Insert(dptr, size, allocation);  // false only for size 0 or a wrapping range
}

bool AllocationRegistry::AddDeviceUnlessOverlapping(
    uint64_t dptr, uint64_t size, uint64_t ctx,
    const std::function<bool(uint64_t other_ctx)>& elsewhere, bool global) {
  std::lock_guard<std::mutex> lock(mu_);
  if (size == 0) return true;  // nothing is recorded, as AddDevice
  DeviceAllocation allocation{size, ctx, global};
  if (device_.Insert(dptr, size, allocation)) return true;  // overlaps nothing
  bool clash = false;
  device_.ForEach([&](uint64_t base, uint64_t s, const DeviceAllocation& other) {
    if (base < dptr + size && dptr < base + s && elsewhere(other.ctx)) clash = true;
  });
  if (clash) return false;
  EraseOverlapping(&device_, dptr, size);
  device_.Insert(dptr, size, allocation);
  return true;
}

bool AllocationRegistry::IsGraphMemory(uint64_t dptr) {
  std::lock_guard<std::mutex> lock(mu_);
  RangeMap<DeviceAllocation>::Found found = device_.FindBase(dptr);
  return found.value != nullptr && found.value->graph;
}

Status AllocationRegistry::RemoveDevice(uint64_t dptr) {
  std::lock_guard<std::mutex> lock(mu_);
  RangeMap<DeviceAllocation>::Found found = device_.FindBase(dptr);
  if (found.value == nullptr || found.value->global || found.value->mapped) {
    return Status::InvalidArgument("not the start of a device allocation of this process");
  }
  device_.Erase(dptr);
  return Status::Ok();
}

void AllocationRegistry::ForgetDevice(uint64_t dptr) {
  std::lock_guard<std::mutex> lock(mu_);
  device_.Erase(dptr);
}

namespace {
constexpr auto kBothMapped = [](const DeviceAllocation& left, const DeviceAllocation& right) {
  return left.mapped && right.mapped;
};
}  // namespace

Status AllocationRegistry::CheckDevice(uint64_t address, uint64_t bytes, const char* what) {
  std::lock_guard<std::mutex> lock(mu_);
  return device_.CheckJoined(address, bytes, what, "a device allocation", kBothMapped);
}

Status AllocationRegistry::CheckDevice2D(uint64_t address, uint64_t pitch, uint64_t width_bytes,
                                         uint64_t height, const char* what) {
  std::lock_guard<std::mutex> lock(mu_);
  return device_.Check2DJoined(address, pitch, width_bytes, height, what, "a device allocation",
                               kBothMapped);
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
  device_.EraseIf([ctx](const DeviceAllocation& a) { return !a.mapped && a.ctx == ctx; });
}

// --- virtual memory management -------------------------------------------------

void AllocationRegistry::AddPhysical(uint64_t handle, const CUmemAllocationProp& prop) {
  std::lock_guard<std::mutex> lock(mu_);
  physical_[handle] = PhysicalAllocation{prop, 1};
}

Status AllocationRegistry::CheckPhysical(uint64_t handle, PhysicalAllocation* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = physical_.find(handle);
  if (it == physical_.end() || it->second.references == 0) {
    return Status::InvalidHandle("not an allocation handle this process holds");
  }
  if (out != nullptr) *out = it->second;
  return Status::Ok();
}

void AllocationRegistry::ReleasePhysical(uint64_t handle) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = physical_.find(handle);
  if (it == physical_.end() || it->second.references == 0) return;
  --it->second.references;
  DropPhysicalIfUnused(handle);
}

void AllocationRegistry::RetainPhysical(uint64_t handle) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = physical_.find(handle);
  if (it != physical_.end()) ++it->second.references;
}

void AllocationRegistry::DropPhysicalIfUnused(uint64_t handle) {
  auto it = physical_.find(handle);
  if (it == physical_.end() || it->second.references > 0) return;
  bool mapped = false;
  mappings_.ForEach([&](uint64_t, uint64_t, const Mapping& m) { mapped |= m.handle == handle; });
  if (!mapped) physical_.erase(it);
}

void AllocationRegistry::AddMapping(uint64_t address, uint64_t bytes, uint64_t handle) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!mappings_.Insert(address, bytes, Mapping{handle, {}})) {
    EraseOverlapping(&mappings_, address, bytes);  // a stale record (the server decides)
    mappings_.Insert(address, bytes, Mapping{handle, {}});
  }
}

void AllocationRegistry::SetMappingAccess(uint64_t address, uint64_t bytes,
                                          std::span<const std::pair<int, unsigned>> access) {
  std::lock_guard<std::mutex> lock(mu_);
  mappings_.ForEach([&](uint64_t base, uint64_t size, Mapping& m) {
    if (base < address || base - address >= bytes) return;
    for (const auto& [device, flags] : access) {
      if (flags == CU_MEM_ACCESS_FLAGS_PROT_NONE) {
        m.access.erase(device);
      } else {
        m.access[device] = flags;
      }
    }
    device_.Erase(base);
    if (m.access.empty()) return;
    const auto physical = physical_.find(m.handle);
    const int device = physical == physical_.end() ? 0 : physical->second.prop.location.id;
    EraseOverlapping(&device_, base, size);
    device_.Insert(base, size, DeviceAllocation{size, 0, false, true, device});
  });
}

void AllocationRegistry::RemoveMappings(uint64_t address, uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<uint64_t, uint64_t>> removed;  // base, handle
  mappings_.ForEach([&](uint64_t base, uint64_t, Mapping& m) {
    if (base >= address && base - address < bytes) removed.emplace_back(base, m.handle);
  });
  for (const auto& [base, handle] : removed) {
    mappings_.Erase(base);
    RangeMap<DeviceAllocation>::Found found = device_.FindBase(base);
    if (found.value != nullptr && found.value->mapped) device_.Erase(base);
    DropPhysicalIfUnused(handle);
  }
}

}  // namespace ferry::client
