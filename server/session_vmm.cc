// Session handlers for virtual memory management: address reservations,
// physical memory (charged to the slice's quota like any allocation), mappings
// and their access. A mapped range becomes the session's memory for copies,
// memsets and kernels (ranges_) only once some device may access it, and stops
// being it when the access is taken away or it is unmapped (README.md
// invariant 6). The backend keeps the pages for the work queued before until
// it has run (server/README.md, "Releasing memory"); nothing here waits. The
// schema's prose (MemCreate in ferry.capnp) gives the rules.

#include <cuda.h>

#include <algorithm>
#include <memory>
#include <mutex>

#include "common/log.h"
#include "server/session.h"
#include "server/session_internal.h"

namespace ferry::server {

using session_internal::Hex;

namespace {
// Address space a session may hold reserved at once: far beyond any GPU's
// memory (frameworks reserve about a device's memory per pool), yet bounded,
// so one session cannot take ferryd's whole address space.
constexpr uint64_t kMaxReservedBytes = uint64_t{1} << 44;  // 16 TiB

Status InvalidValue(std::string message) {
  return Status::Cuda(CUDA_ERROR_INVALID_VALUE, std::move(message));
}

bool Accessible(const std::vector<unsigned>& access) {
  for (unsigned flags : access) {
    if (flags != CU_MEM_ACCESS_FLAGS_PROT_NONE) return true;
  }
  return false;
}
}  // namespace

Status Session::FindPhysical(uint64_t id, PhysicalEntry** out) {
  FERRY_RETURN_IF_ERROR(physical_.Find(id, out));
  if ((*out)->references == 0) {
    return Status::InvalidHandle("allocation handle " + Hex(id) + " was released");
  }
  return Status::Ok();
}

void Session::DropPhysicalIfUnused(uint64_t id) {
  PhysicalEntry* p = nullptr;
  if (!physical_.Find(id, &p).ok() || p->references > 0 || p->mappings > 0) return;
  const int device = p->device;
  const uint64_t bytes = p->bytes;
  (void)physical_.Erase(id);  // releases the backend's memory (once no mapping holds it)
  UnchargeWhenReleased(device, bytes);
}

Status Session::WholeMappings(uint64_t address, uint64_t bytes, const char* call,
                              std::vector<uint64_t>* bases) {
  uint64_t at = address;
  while (bytes > 0 && at - address < bytes) {
    auto mapping = mappings_.FindBase(at);
    if (mapping.value == nullptr || mapping.size > bytes - (at - address)) {
      return InvalidValue(std::string(call) + "(" + Hex(address) + ", " + std::to_string(bytes) +
                          "): not whole mappings of this session, one after another");
    }
    bases->push_back(at);
    at += mapping.size;
  }
  if (bases->empty()) return InvalidValue(std::string(call) + " of 0 bytes");
  return Status::Ok();
}

Status Session::MemAddressReserve(wire::MemAddressReserve::Reader args, CallContext& cx) {
  const uint64_t bytes = args.getBytes();
  const uint64_t alignment = args.getAlignment();
  if (bytes == 0 || args.getFlags() != 0 || (alignment & (alignment - 1)) != 0) {
    return InvalidValue("cuMemAddressReserve: bad size, alignment or flags");
  }
  if (bytes > kMaxReservedBytes - reserved_bytes_) {
    return Status::Cuda(CUDA_ERROR_OUT_OF_MEMORY,
                        "cuMemAddressReserve: a session may hold at most " +
                            std::to_string(kMaxReservedBytes) + " bytes of reserved addresses");
  }
  uint64_t address = 0;
  FERRY_RETURN_IF_ERROR(
      backend_.ReserveAddressRange(bytes, alignment, args.getAddress(), &address));
  if (!reservations_.Insert(address, bytes, ReservationEntry{})) {
    (void)backend_.FreeAddressRange(address, bytes);
    return Status::Internal("cuMemAddressReserve returned " + Hex(address) +
                            ", which overlaps a reservation the session holds");
  }
  reserved_bytes_ += bytes;
  cx.reply.initMemAlloc().setDptr(address);
  return Status::Ok();
}

Status Session::MemAddressFree(wire::MemRange::Reader args) {
  auto reservation = reservations_.FindBase(args.getAddress());
  if (reservation.value == nullptr || reservation.size != args.getBytes()) {
    return InvalidValue("cuMemAddressFree(" + Hex(args.getAddress()) +
                        "): not a whole reservation of this session");
  }
  bool has_mappings = false;
  mappings_.ForEach([&](uint64_t base, uint64_t, MappingEntry&) {
    if (base >= reservation.base && base - reservation.base < reservation.size) {
      has_mappings = true;
    }
  });
  if (has_mappings) {
    return InvalidValue("cuMemAddressFree(" + Hex(args.getAddress()) +
                        "): the range is still mapped (cuMemUnmap it first)");
  }
  FERRY_RETURN_IF_ERROR(backend_.FreeAddressRange(reservation.base, reservation.size));
  reserved_bytes_ -= reservation.size;
  reservations_.Erase(reservation.base);
  return Status::Ok();
}

Status Session::MemCreate(wire::MemCreate::Reader args) {
  FERRY_RETURN_IF_ERROR(physical_.CheckNewId(args.getHandle()));
  int backend_device = 0;
  FERRY_RETURN_IF_ERROR(BackendDevice(args.getDevice(), &backend_device));
  if (args.getBytes() == 0 || args.getFlags() != 0) {
    return InvalidValue("cuMemCreate: size 0 or flags other than 0");
  }
  FERRY_RETURN_IF_ERROR(CheckQuotaAfterReleases(args.getDevice(), args.getBytes()));
  PhysicalEntry entry;
  FERRY_RETURN_IF_ERROR(WithRoom(args.getDevice(), args.getBytes(), [&] {
    return backend_.CreatePhysicalMemory(backend_device, args.getBytes(), &entry.memory);
  }));
  entry.device = args.getDevice();
  entry.bytes = args.getBytes();
  entry.references = 1;
  FERRY_RETURN_IF_ERROR(physical_.Insert(args.getHandle(), std::move(entry)));
  shares_.Charge(args.getDevice(), args.getBytes());
  return Status::Ok();
}

Status Session::MemRelease(wire::MemHandleRef::Reader args) {
  PhysicalEntry* p = nullptr;
  FERRY_RETURN_IF_ERROR(FindPhysical(args.getHandle(), &p));
  --p->references;
  DropPhysicalIfUnused(args.getHandle());
  return Status::Ok();
}

Status Session::MemMap(wire::MemMap::Reader args) {
  PhysicalEntry* p = nullptr;
  FERRY_RETURN_IF_ERROR(FindPhysical(args.getHandle(), &p));
  const uint64_t address = args.getAddress();
  const uint64_t bytes = args.getBytes();
  if (!reservations_.Contains(address, bytes) || bytes == 0) {
    return InvalidValue("cuMemMap(" + Hex(address) + ", " + std::to_string(bytes) +
                        "): not inside one reservation of this session");
  }
  if (args.getFlags() != 0 || args.getOffset() > p->bytes || bytes > p->bytes - args.getOffset()) {
    return InvalidValue("cuMemMap: flags other than 0, or offset and size beyond the memory's " +
                        std::to_string(p->bytes) + " bytes");
  }
  MappingEntry mapping{args.getHandle(), p->device,
                       std::vector<unsigned>(grant_.devices.size(), CU_MEM_ACCESS_FLAGS_PROT_NONE)};
  // Refuses overlap with a mapping before the backend maps anything.
  if (!mappings_.Insert(address, bytes, std::move(mapping))) {
    return InvalidValue("cuMemMap(" + Hex(address) + "): the range is already mapped");
  }
  if (Status status = backend_.MapMemory(address, bytes, *p->memory, args.getOffset());
      !status.ok()) {
    mappings_.Erase(address);
    return status;
  }
  ++p->mappings;
  return Status::Ok();
}

Status Session::MemUnmap(wire::MemRange::Reader args) {
  std::vector<uint64_t> bases;
  FERRY_RETURN_IF_ERROR(WholeMappings(args.getAddress(), args.getBytes(), "cuMemUnmap", &bases));
  // The ranges are refused to new work at once; the backend keeps the pages
  // for the work queued before (GpuBackend::UnmapMemory).
  for (uint64_t base : bases) {
    auto mapping = mappings_.FindBase(base);
    const uint64_t handle = mapping.value->handle;
    FERRY_RETURN_IF_ERROR(backend_.UnmapMemory(*tenant_, base, mapping.size));
    ranges_.Erase(base);  // if it was accessible
    mappings_.Erase(base);
    PhysicalEntry* p = nullptr;
    if (physical_.Find(handle, &p).ok()) --p->mappings;
    DropPhysicalIfUnused(handle);
  }
  return Status::Ok();
}

Status Session::MemSetAccess(wire::MemSetAccess::Reader args) {
  std::vector<uint64_t> bases;
  FERRY_RETURN_IF_ERROR(
      WholeMappings(args.getAddress(), args.getBytes(), "cuMemSetAccess", &bases));
  if (args.getAccess().size() == 0) return InvalidValue("cuMemSetAccess: no access descriptor");
  std::vector<int> named;  // session devices the call names
  for (wire::MemAccess::Reader a : args.getAccess()) {
    int backend_device = 0;
    FERRY_RETURN_IF_ERROR(BackendDevice(a.getDevice(), &backend_device));
    if (a.getFlags() != CU_MEM_ACCESS_FLAGS_PROT_NONE &&
        a.getFlags() != CU_MEM_ACCESS_FLAGS_PROT_READ &&
        a.getFlags() != CU_MEM_ACCESS_FLAGS_PROT_READWRITE) {
      return InvalidValue("cuMemSetAccess: bad access flags " + std::to_string(a.getFlags()));
    }
    named.push_back(a.getDevice());
  }
  // Access taken away is refused to new work at once; the backend keeps the
  // pages reachable for the work queued before (GpuBackend::SetMemoryAccess).
  for (uint64_t base : bases) {
    auto mapping = mappings_.FindBase(base);
    std::vector<unsigned> access = mapping.value->access;
    for (wire::MemAccess::Reader a : args.getAccess()) access[a.getDevice()] = a.getFlags();
    // Every device that has access after the call, and those the call names.
    std::vector<backend::MemoryAccess> descs;
    for (size_t device = 0; device < access.size(); ++device) {
      const bool is_named =
          std::find(named.begin(), named.end(), static_cast<int>(device)) != named.end();
      if (access[device] == CU_MEM_ACCESS_FLAGS_PROT_NONE && !is_named) continue;
      descs.push_back({grant_.devices[device].backend_device, access[device]});
    }
    FERRY_RETURN_IF_ERROR(backend_.SetMemoryAccess(*tenant_, base, mapping.size, descs));
    mapping.value->access = access;
    if (Accessible(access)) {
      (void)ranges_.Insert(base, mapping.size,
                           RangeEntry{0, 0, mapping.value->device, /*mapped=*/true});
    } else {
      ranges_.Erase(base);
    }
  }
  return Status::Ok();
}

Status Session::MemGetAccess(wire::MemGetAccess::Reader args, CallContext& cx) {
  auto mapping = mappings_.Find(args.getAddress());
  if (mapping.value == nullptr) {
    return InvalidValue("cuMemGetAccess(" + Hex(args.getAddress()) +
                        "): not mapped memory of this session");
  }
  int backend_device = 0;
  FERRY_RETURN_IF_ERROR(BackendDevice(args.getDevice(), &backend_device));
  cx.reply.setValue(mapping.value->access[args.getDevice()]);
  return Status::Ok();
}

Status Session::MemRetainAllocationHandle(wire::MemRange::Reader args, CallContext& cx) {
  auto mapping = mappings_.Find(args.getAddress());
  if (mapping.value == nullptr) {
    return InvalidValue("cuMemRetainAllocationHandle(" + Hex(args.getAddress()) +
                        "): not mapped memory of this session");
  }
  PhysicalEntry* p = nullptr;
  FERRY_RETURN_IF_ERROR(physical_.Find(mapping.value->handle, &p));
  ++p->references;
  cx.reply.setValue(static_cast<int64_t>(mapping.value->handle));
  return Status::Ok();
}

Status Session::MemGetAllocationGranularity(wire::MemGranularity::Reader args, CallContext& cx) {
  int backend_device = 0;
  FERRY_RETURN_IF_ERROR(BackendDevice(args.getDevice(), &backend_device));
  uint64_t bytes = 0;
  FERRY_RETURN_IF_ERROR(
      backend_.AllocationGranularity(backend_device, args.getRecommended(), &bytes));
  cx.reply.setValue(static_cast<int64_t>(bytes));
  return Status::Ok();
}

void Session::FreeVirtualMemory() {
  auto warn = [this](const char* what, uint64_t address, const Status& status) {
    if (status.ok()) return;
    FERRY_LOG(kWarning) << "session " << id_ << ": " << what << " " << Hex(address)
                        << " failed: " << status.ToString();
  };
  mappings_.ForEach([&](uint64_t base, uint64_t size, MappingEntry&) {
    warn("unmapping", base, backend_.UnmapMemory(*tenant_, base, size));
    ranges_.Erase(base);
  });
  mappings_.clear();
  reservations_.ForEach([&](uint64_t base, uint64_t size, ReservationEntry&) {
    warn("freeing the reservation at", base, backend_.FreeAddressRange(base, size));
  });
  reservations_.clear();
  reserved_bytes_ = 0;
  // The quota comes back after the memory: clearing the entries starts the
  // releases, which UnchargeWhenReleased then waits for.
  std::vector<std::pair<int, uint64_t>> charges;
  physical_.ForEach([&](uint64_t, PhysicalEntry& p) { charges.emplace_back(p.device, p.bytes); });
  physical_.Clear();
  for (const auto& [device, bytes] : charges) UnchargeWhenReleased(device, bytes);
}

}  // namespace ferry::server
