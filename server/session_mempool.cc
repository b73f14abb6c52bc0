// Session handlers for stream-ordered allocation and memory pools
// (cuMemAllocAsync, cuMemFreeAsync, cuMemPool*), and profiler control.
//
// Every allocation is charged to the quota of its pool's device when the
// call executes and given back when the stream-ordered free has executed
// (README.md invariant 7). An allocation's range is the session's from its
// allocation call until its free call, so calls issued in between may name
// it, and none after the free may (invariant 6).

#include "server/session.h"

#include <cuda.h>

#include "common/log.h"
#include "server/session_internal.h"

namespace ferry::server {

using session_internal::Hex;

Status Session::MemPoolCreate(wire::MemPoolCreate::Reader args) {
  const uint64_t id = args.getPool();
  FERRY_RETURN_IF_ERROR(mem_pools_.CheckNewId(id));
  const int device = args.getDevice();
  if (device < 0 || device >= static_cast<int>(grant_.devices.size())) {
    return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "no device " + std::to_string(device));
  }
  MemPoolEntry entry;
  entry.device = device;
  entry.is_default = args.getIsDefault();
  // Every pool of the session is its own, the default ones included, so
  // attributes and trims never reach another session (invariant 6).
  FERRY_RETURN_IF_ERROR(backend_.CreateMemPool(grant_.devices[device].backend_device,
                                               args.getMaxSize(), &entry.pool));
  return mem_pools_.Insert(id, std::move(entry));
}

Status Session::MemPoolDestroy(wire::MemPoolRef::Reader args) {
  MemPoolEntry* pool = nullptr;
  FERRY_RETURN_IF_ERROR(mem_pools_.Find(args.getPool(), &pool));
  if (pool->is_default) {
    return Status::InvalidArgument("cuMemPoolDestroy: a device's default pool cannot be destroyed");
  }
  // Allocations still outstanding stay valid until freed (GpuBackend::MemPool).
  return mem_pools_.Erase(args.getPool());
}

Status Session::MemPoolSetAttribute(wire::MemPoolAttribute::Reader args) {
  MemPoolEntry* pool = nullptr;
  FERRY_RETURN_IF_ERROR(mem_pools_.Find(args.getPool(), &pool));
  return backend_.SetMemPoolAttribute(*pool->pool, args.getAttribute(), args.getValue());
}

Status Session::MemPoolGetAttribute(wire::MemPoolAttribute::Reader args, CallContext& cx) {
  MemPoolEntry* pool = nullptr;
  FERRY_RETURN_IF_ERROR(mem_pools_.Find(args.getPool(), &pool));
  uint64_t value = 0;
  FERRY_RETURN_IF_ERROR(backend_.GetMemPoolAttribute(*pool->pool, args.getAttribute(), &value));
  cx.reply.setValue(static_cast<int64_t>(value));
  return Status::Ok();
}

Status Session::MemPoolTrimTo(wire::MemPoolTrim::Reader args) {
  MemPoolEntry* pool = nullptr;
  FERRY_RETURN_IF_ERROR(mem_pools_.Find(args.getPool(), &pool));
  return backend_.TrimMemPool(*pool->pool, args.getMinBytesToKeep());
}

Status Session::MemAllocAsync(wire::MemAllocAsync::Reader args, CallContext& cx) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  MemPoolEntry* pool = nullptr;
  FERRY_RETURN_IF_ERROR(mem_pools_.Find(args.getPool(), &pool));
  const uint64_t bytes = args.getBytes();
  if (bytes == 0) return Status::InvalidArgument("cuMemAllocAsync of 0 bytes");
  FERRY_RETURN_IF_ERROR(shares_.CheckQuota(pool->device, bytes));
  uint64_t dptr = 0;
  FERRY_RETURN_IF_ERROR(backend_.MemAllocFromPool(*stream, *pool->pool, bytes, &dptr));
  if (!ranges_.Insert(dptr, bytes, RangeEntry{args.getCtx(), 0, pool->device})) {
    (void)backend_.MemFreeAsync(*stream, dptr, [](Status) {});
    return Status::Internal("cuMemAllocAsync returned " + Hex(dptr) +
                            ", which overlaps a range the session holds");
  }
  shares_.Charge(pool->device, bytes);
  cx.reply.initMemAlloc().setDptr(dptr);
  return Status::Ok();
}

Status Session::MemFreeAsync(wire::MemFreeAsync::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  auto range = ranges_.FindBase(args.getDptr());
  if (range.value == nullptr || range.value->module != 0) {
    return Status::InvalidArgument("cuMemFreeAsync(" + Hex(args.getDptr()) +
                                   "): not the start of an allocation of this session");
  }
  const int device = range.value->device;
  const uint64_t size = range.size;
  // The quota comes back once the free has executed (until then the memory
  // is in use by the work queued before it), and before anything can see the
  // stream idle past it: a synchronize after the free finds it given back.
  CompletionStarted();
  Status status = backend_.MemFreeAsync(*stream, args.getDptr(), [this, device, size](Status) {
    shares_.Uncharge(device, size);
    CompletionDone();
  });
  if (!status.ok()) {
    CompletionDone();
    return status;
  }
  ranges_.Erase(args.getDptr());
  return Status::Ok();
}

Status Session::ProfilerControl(wire::ProfilerControl::Reader args) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  return backend_.ProfilerControl(*c->context, args.getStart());
}

}  // namespace ferry::server
