// Entry points: stream-ordered allocation and memory pools (cuMemAllocAsync,
// cuMemFreeAsync, cuMemPool*, a device's default and current pool), and
// profiler control.
//
// Pools are ids the client chooses (README.md invariant 2); the devices'
// current pools are kept here, so cuMemAllocAsync names the pool it
// allocates from. cuMemAllocAsync waits for its reply: the address is real
// (invariant 2), so only the server can choose it; it allocates when it
// executes the call, without waiting for the stream, as the driver's
// stream-ordered allocator hands out addresses at once. Everything else that
// returns only a status is posted (invariant 3).
#include <cuda.h>
#include <cudaProfiler.h>

#include "client/entry_point.h"

namespace {

// Tells the server that `pool` is the session's default pool of `device`.
Status AnnounceDefault(Runtime& rt, int device, uint64_t pool) {
  return rt.DeviceConnection(device).Post([&](wire::Call::Builder call) {
    auto args = call.initMemPoolCreate();
    args.setPool(pool);
    args.setDevice(rt.ServerOrdinal(device));
    args.setIsDefault(true);
  });
}

Status PoolId(CUmemoryPool pool, int* device) {
  FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
  return Runtime::Get().mem_pools().Device(Runtime::HandleId(pool), device);
}

// `pool` 0: the current pool of the stream's device.
Status AllocAsync(CUdeviceptr* dptr, size_t bytes, uint64_t pool, CUstream stream,
                  bool per_thread) {
  if (dptr == nullptr) return Status::InvalidArgument("dptr is NULL");
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  if (bytes == 0) return Status::InvalidArgument("cuMemAllocAsync of 0 bytes");
  if (pool == 0) {
    int device = 0;
    FERRY_RETURN_IF_ERROR(rt.contexts().Device(target.ctx, &device));
    FERRY_RETURN_IF_ERROR(rt.mem_pools().Current(
        device, [&](uint64_t id) { return AnnounceDefault(rt, device, id); }, &pool));
  } else {
    int device = 0;
    FERRY_RETURN_IF_ERROR(rt.mem_pools().Device(pool, &device));
    if (&rt.DeviceConnection(device) != &rt.ConnectionOf(target.ctx)) {
      return Status::Unimplemented(
          "cuMemAllocFromPoolAsync: the pool and the stream are on devices of different servers");
    }
  }
  uint64_t result = 0;
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(target.ctx)
                            .Call(
                                [&](wire::Call::Builder call) {
                                  auto args = call.initMemAllocAsync();
                                  SetStreamTarget(args, target);
                                  args.setPool(pool);
                                  args.setBytes(bytes);
                                },
                                {}, {},
                                [&](wire::Reply::Reader reply) {
                                  result = reply.getMemAlloc().getDptr();
                                  return Status::Ok();
                                }));
  if (Status recorded = rt.RecordAllocation(target.ctx, result, bytes); !recorded.ok()) {
    (void)rt.ConnectionOf(target.ctx).Post([&](wire::Call::Builder call) {
      auto args = call.initMemFreeAsync();
      SetStreamTarget(args, target);
      args.setDptr(result);
    });
    return recorded;
  }
  *dptr = result;
  return Status::Ok();
}

Status FreeAsync(CUdeviceptr dptr, CUstream stream, bool per_thread) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  if (dptr == 0) return Status::Ok();  // freeing NULL is a no-op, as cuMemFree's
  ferry::client::DeviceAllocation allocation;
  if (rt.allocations().FindDevice(dptr, nullptr, &allocation) && allocation.ctx != 0 &&
      !rt.SameSession(allocation.ctx, target.ctx)) {
    return Status::Unimplemented(
        "cuMemFreeAsync: the memory and the stream are on devices of different servers");
  }
  FERRY_RETURN_IF_ERROR(rt.allocations().RemoveDevice(dptr));
  return rt.ConnectionOf(target.ctx).Post([&](wire::Call::Builder call) {
    auto args = call.initMemFreeAsync();
    SetStreamTarget(args, target);
    args.setDptr(dptr);
  });
}

bool IsIntAttribute(CUmemPool_attribute attribute) {
  return attribute == CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES ||
         attribute == CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC ||
         attribute == CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES;
}

Status ProfilerControl(bool start) {
  Runtime& rt = Runtime::Get();
  uint64_t ctx = 0;
  FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
  return rt.ConnectionOf(ctx).Post([&](wire::Call::Builder call) {
    auto args = call.initProfilerControl();
    args.setCtx(ctx);
    args.setStart(start);
  });
}

// The pool of `dev` that *pool_out gets: its current pool when `current`,
// else its default pool (either made, and announced to the server, on first
// use).
Status DevicePool(CUmemoryPool* pool_out, CUdevice dev, bool current) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  FERRY_RETURN_IF_ERROR(rt.CheckDevice(dev));
  auto announce = [&](uint64_t id) { return AnnounceDefault(rt, dev, id); };
  uint64_t pool = 0;
  FERRY_RETURN_IF_ERROR(current ? rt.mem_pools().Current(dev, announce, &pool)
                                : rt.mem_pools().EnsureDefault(dev, announce, &pool));
  *pool_out = Runtime::ToHandle<CUmemoryPool>(pool);
  return Status::Ok();
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuDeviceGetDefaultMemPool(CUmemoryPool* pool_out, CUdevice dev) {
  return Api([&]() -> Status {
    if (pool_out == nullptr) return Status::InvalidArgument("pool_out is NULL");
    return DevicePool(pool_out, dev, /*current=*/false);
  });
}

CUresult CUDAAPI cuDeviceGetMemPool(CUmemoryPool* pool_out, CUdevice dev) {
  return Api([&]() -> Status {
    if (pool_out == nullptr) return Status::InvalidArgument("pool is NULL");
    return DevicePool(pool_out, dev, /*current=*/true);
  });
}

CUresult CUDAAPI cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    FERRY_RETURN_IF_ERROR(rt.CheckDevice(dev));
    return rt.mem_pools().SetCurrent(dev, Runtime::HandleId(pool));
  });
}

CUresult CUDAAPI cuMemPoolCreate(CUmemoryPool* pool, const CUmemPoolProps* props) {
  return Api([&]() -> Status {
    if (pool == nullptr || props == nullptr) return Status::InvalidArgument("NULL argument");
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    if (props->allocType != CU_MEM_ALLOCATION_TYPE_PINNED ||
        props->location.type != CU_MEM_LOCATION_TYPE_DEVICE) {
      return Status::Unimplemented("ferry's memory pools hold pinned device memory only");
    }
    if (props->handleTypes != CU_MEM_HANDLE_TYPE_NONE) {
      return Status::Unimplemented(
          "memory pools cannot be shared between processes through ferry (handleTypes must be "
          "CU_MEM_HANDLE_TYPE_NONE)");
    }
    const int device = props->location.id;
    FERRY_RETURN_IF_ERROR(rt.CheckDevice(device));
    const uint64_t id = rt.mem_pools().Add(device);
    FERRY_RETURN_IF_ERROR(rt.DeviceConnection(device).Post([&](wire::Call::Builder call) {
      auto args = call.initMemPoolCreate();
      args.setPool(id);
      args.setDevice(rt.ServerOrdinal(device));
      args.setMaxSize(props->maxSize);
    }));
    *pool = Runtime::ToHandle<CUmemoryPool>(id);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemPoolDestroy(CUmemoryPool pool) {
  return Api([&] {
    return DestroyHandle(
        pool, [](Runtime& rt, uint64_t id) { return rt.mem_pools().Remove(id); },
        [](wire::Call::Builder call, uint64_t id) { call.initMemPoolDestroy().setPool(id); });
  });
}

CUresult CUDAAPI cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void* value) {
  return Api([&]() -> Status {
    int device = 0;
    FERRY_RETURN_IF_ERROR(PoolId(pool, &device));
    if (value == nullptr) return Status::InvalidArgument("value is NULL");
    uint64_t v = 0;
    switch (attr) {
      case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
      case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
      case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
        v = static_cast<uint64_t>(*static_cast<const int*>(value));
        break;
      case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD:
        v = *static_cast<const cuuint64_t*>(value);
        break;
      case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:
      case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
        v = *static_cast<const cuuint64_t*>(value);
        if (v != 0) return Status::InvalidArgument("a high-water mark can only be reset to 0");
        break;
      default:
        return Status::InvalidArgument("memory pool attribute " + std::to_string(attr) +
                                       " cannot be set");
    }
    Runtime& rt = Runtime::Get();
    return rt.DeviceConnection(device).Post([&](wire::Call::Builder call) {
      auto args = call.initMemPoolSetAttribute();
      args.setPool(Runtime::HandleId(pool));
      args.setAttribute(attr);
      args.setValue(v);
    });
  });
}

CUresult CUDAAPI cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void* value) {
  return Api([&]() -> Status {
    int device = 0;
    FERRY_RETURN_IF_ERROR(PoolId(pool, &device));
    if (value == nullptr) return Status::InvalidArgument("value is NULL");
    if (attr < CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES ||
        attr > CU_MEMPOOL_ATTR_USED_MEM_HIGH) {
      return Status::InvalidArgument("unknown memory pool attribute " + std::to_string(attr));
    }
    uint64_t v = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().DeviceConnection(device).Call(
        [&](wire::Call::Builder call) {
          auto args = call.initMemPoolGetAttribute();
          args.setPool(Runtime::HandleId(pool));
          args.setAttribute(attr);
        },
        {}, {},
        [&](wire::Reply::Reader reply) {
          v = static_cast<uint64_t>(reply.getValue());
          return Status::Ok();
        }));
    if (IsIntAttribute(attr)) {
      *static_cast<int*>(value) = static_cast<int>(v);
    } else {
      *static_cast<cuuint64_t*>(value) = v;
    }
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep) {
  return Api([&]() -> Status {
    int device = 0;
    FERRY_RETURN_IF_ERROR(PoolId(pool, &device));
    return Runtime::Get().DeviceConnection(device).Post([&](wire::Call::Builder call) {
      auto args = call.initMemPoolTrimTo();
      args.setPool(Runtime::HandleId(pool));
      args.setMinBytesToKeep(minBytesToKeep);
    });
  });
}

CUresult CUDAAPI cuMemAllocAsync(CUdeviceptr* dptr, size_t bytesize, CUstream hStream) {
  return Api([&] { return AllocAsync(dptr, bytesize, 0, hStream, false); });
}
CUresult CUDAAPI cuMemAllocAsync_ptsz(CUdeviceptr* dptr, size_t bytesize, CUstream hStream) {
  return Api([&] { return AllocAsync(dptr, bytesize, 0, hStream, true); });
}
CUresult CUDAAPI cuMemAllocFromPoolAsync(CUdeviceptr* dptr, size_t bytesize, CUmemoryPool pool,
                                         CUstream hStream) {
  return Api([&]() -> Status {
    if (pool == nullptr) return Status::InvalidArgument("pool is NULL");
    return AllocAsync(dptr, bytesize, Runtime::HandleId(pool), hStream, false);
  });
}
CUresult CUDAAPI cuMemAllocFromPoolAsync_ptsz(CUdeviceptr* dptr, size_t bytesize, CUmemoryPool pool,
                                              CUstream hStream) {
  return Api([&]() -> Status {
    if (pool == nullptr) return Status::InvalidArgument("pool is NULL");
    return AllocAsync(dptr, bytesize, Runtime::HandleId(pool), hStream, true);
  });
}
CUresult CUDAAPI cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) {
  return Api([&] { return FreeAsync(dptr, hStream, false); });
}
CUresult CUDAAPI cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream) {
  return Api([&] { return FreeAsync(dptr, hStream, true); });
}

CUresult CUDAAPI cuProfilerStart() {
  return Api([&] { return ProfilerControl(true); });
}
CUresult CUDAAPI cuProfilerStop() {
  return Api([&] { return ProfilerControl(false); });
}

}  // extern "C"
