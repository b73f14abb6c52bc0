// Entry points: virtual memory management (cuMemAddressReserve, cuMemCreate,
// cuMemMap, cuMemSetAccess and the rest; the schema's MemCreate says what the
// server keeps).
//
// Physical memory handles are ids the client chooses (README.md invariant 2);
// addresses are the server's real ones. Every call waits for its reply, so each
// error is the call's own; they are rare (a framework grows its memory in
// large steps). The client records mappings and their access after the server
// accepted them (AllocationRegistry): a mapping some device may access is
// device memory for copies and unified addressing from then on, and mappings
// side by side form one span, as on a GPU.
//
// Shareable handles (cuMemExportToShareableHandle, cuMemImportFromShareableHandle)
// are not forwarded: their file descriptor would have to be one of the
// client's process that names memory on another machine. cuMemCreate accepts
// a request for one (frameworks ask by default) and records it, as the
// properties the program asked for; only exporting is refused.
#include <cuda.h>

#include <utility>
#include <vector>

#include "client/entry_point.h"

namespace {

using ferry::client::HandleKind;

// Virtual memory is one address space per server, and the reservations of
// two servers could overlap: a program whose devices span servers gets none
// (refused where reservations and physical memory are made), so an address
// never names memory of two servers. With one server, every call here goes
// to it and device ordinals are its own.
Status OneServer() {
  if (Runtime::Get().part_count() <= 1) return Status::Ok();
  return Status::Unimplemented(
      "virtual memory management is not supported by ferry for a program whose devices are on "
      "several servers");
}

// Pinned memory on one of the session's devices: what ferry can create.
Status CheckProperties(const CUmemAllocationProp* prop) {
  if (prop == nullptr) return Status::InvalidArgument("prop is NULL");
  if (prop->type != CU_MEM_ALLOCATION_TYPE_PINNED) {
    return Status::Unimplemented("only CU_MEM_ALLOCATION_TYPE_PINNED memory is forwarded");
  }
  if (prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE) {
    return Status::Unimplemented("only device memory (CU_MEM_LOCATION_TYPE_DEVICE) is forwarded");
  }
  if (prop->allocFlags.compressionType != 0) {
    return Status::Unimplemented("compressible memory is not forwarded");
  }
  return Runtime::Get().CheckDevice(prop->location.id);
}

// The value a call's reply carries.
template <typename Fill>
Status CallForValue(const Fill& fill, int64_t* value) {
  return Runtime::Get().CurrentConnection().Call(fill, {}, {}, [&](wire::Reply::Reader reply) {
    *value = reply.getValue();
    return Status::Ok();
  });
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuMemGetAllocationGranularity(size_t* granularity, const CUmemAllocationProp* prop,
                                               CUmemAllocationGranularity_flags option) {
  return Api([&]() -> Status {
    if (granularity == nullptr) return Status::InvalidArgument("granularity is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    FERRY_RETURN_IF_ERROR(CheckProperties(prop));
    if (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM &&
        option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED) {
      return Status::InvalidArgument("bad granularity option");
    }
    int64_t value = 0;
    FERRY_RETURN_IF_ERROR(CallForValue(
        [&](wire::Call::Builder call) {
          auto args = call.initMemGetAllocationGranularity();
          args.setDevice(prop->location.id);
          args.setRecommended(option == CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
        },
        &value));
    *granularity = static_cast<size_t>(value);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemCreate(CUmemGenericAllocationHandle* handle, size_t size,
                             const CUmemAllocationProp* prop, unsigned long long flags) {
  return Api([&]() -> Status {
    if (handle == nullptr) return Status::InvalidArgument("handle is NULL");
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    FERRY_RETURN_IF_ERROR(CheckProperties(prop));
    if (size == 0 || flags != 0) return Status::InvalidArgument("size 0 or flags other than 0");
    FERRY_RETURN_IF_ERROR(OneServer());
    const uint64_t id = rt.NewId(HandleKind::kPhysicalMemory);
    FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Call([&](wire::Call::Builder call) {
      auto args = call.initMemCreate();
      args.setHandle(id);
      args.setDevice(prop->location.id);
      args.setBytes(size);
    }));
    rt.allocations().AddPhysical(id, *prop);
    *handle = id;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemRelease(CUmemGenericAllocationHandle handle) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    FERRY_RETURN_IF_ERROR(rt.allocations().CheckPhysical(handle, nullptr));
    FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Call(
        [&](wire::Call::Builder call) { call.initMemRelease().setHandle(handle); }));
    rt.allocations().ReleasePhysical(handle);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp* prop,
                                                        CUmemGenericAllocationHandle handle) {
  return Api([&]() -> Status {
    if (prop == nullptr) return Status::InvalidArgument("prop is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    ferry::client::PhysicalAllocation physical;
    FERRY_RETURN_IF_ERROR(Runtime::Get().allocations().CheckPhysical(handle, &physical));
    *prop = physical.prop;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemAddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment,
                                     CUdeviceptr addr, unsigned long long flags) {
  return Api([&]() -> Status {
    if (ptr == nullptr) return Status::InvalidArgument("ptr is NULL");
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    FERRY_RETURN_IF_ERROR(OneServer());
    uint64_t address = 0;
    FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Call(
        [&](wire::Call::Builder call) {
          auto args = call.initMemAddressReserve();
          args.setBytes(size);
          args.setAlignment(alignment);
          args.setAddress(addr);
          args.setFlags(flags);
        },
        {}, {},
        [&](wire::Reply::Reader reply) {
          address = reply.getMemAlloc().getDptr();
          return Status::Ok();
        }));
    *ptr = address;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  return Api([&]() -> Status {
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    return Runtime::Get().CurrentConnection().Call([&](wire::Call::Builder call) {
      auto args = call.initMemAddressFree();
      args.setAddress(ptr);
      args.setBytes(size);
    });
  });
}

CUresult CUDAAPI cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                          CUmemGenericAllocationHandle handle, unsigned long long flags) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    FERRY_RETURN_IF_ERROR(rt.allocations().CheckPhysical(handle, nullptr));
    FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Call([&](wire::Call::Builder call) {
      auto args = call.initMemMap();
      args.setAddress(ptr);
      args.setBytes(size);
      args.setOffset(offset);
      args.setHandle(handle);
      args.setFlags(flags);
    }));
    rt.allocations().AddMapping(ptr, size, handle);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemUnmap(CUdeviceptr ptr, size_t size) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Call([&](wire::Call::Builder call) {
      auto args = call.initMemUnmap();
      args.setAddress(ptr);
      args.setBytes(size);
    }));
    rt.allocations().RemoveMappings(ptr, size);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc,
                                size_t count) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    if (desc == nullptr || count == 0) return Status::InvalidArgument("no access descriptor");
    std::vector<std::pair<int, unsigned>> access;
    for (size_t i = 0; i < count; ++i) {
      if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE) {
        return Status::Unimplemented("access from host memory locations is not forwarded");
      }
      FERRY_RETURN_IF_ERROR(rt.CheckDevice(desc[i].location.id));
      access.emplace_back(desc[i].location.id, static_cast<unsigned>(desc[i].flags));
    }
    FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Call([&](wire::Call::Builder call) {
      auto args = call.initMemSetAccess();
      args.setAddress(ptr);
      args.setBytes(size);
      auto list = args.initAccess(static_cast<unsigned>(access.size()));
      for (size_t i = 0; i < access.size(); ++i) {
        list[i].setDevice(access[i].first);
        list[i].setFlags(access[i].second);
      }
    }));
    rt.allocations().SetMappingAccess(ptr, size, access);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemGetAccess(unsigned long long* flags, const CUmemLocation* location,
                                CUdeviceptr ptr) {
  return Api([&]() -> Status {
    if (flags == nullptr || location == nullptr) return Status::InvalidArgument("NULL argument");
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    if (location->type != CU_MEM_LOCATION_TYPE_DEVICE) {
      return Status::Unimplemented("access from host memory locations is not forwarded");
    }
    FERRY_RETURN_IF_ERROR(rt.CheckDevice(location->id));
    int64_t value = 0;
    FERRY_RETURN_IF_ERROR(CallForValue(
        [&](wire::Call::Builder call) {
          auto args = call.initMemGetAccess();
          args.setAddress(ptr);
          args.setDevice(location->id);
        },
        &value));
    *flags = static_cast<unsigned long long>(value);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemRetainAllocationHandle(CUmemGenericAllocationHandle* handle, void* addr) {
  return Api([&]() -> Status {
    if (handle == nullptr) return Status::InvalidArgument("handle is NULL");
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    int64_t value = 0;
    FERRY_RETURN_IF_ERROR(CallForValue(
        [&](wire::Call::Builder call) {
          call.initMemRetainAllocationHandle().setAddress(reinterpret_cast<uint64_t>(addr));
        },
        &value));
    rt.allocations().RetainPhysical(static_cast<uint64_t>(value));
    *handle = static_cast<CUmemGenericAllocationHandle>(value);
    return Status::Ok();
  });
}

}  // extern "C"
