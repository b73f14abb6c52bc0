// Session handlers for stream-ordered allocation and memory pools
// (cuMemAllocAsync, cuMemFreeAsync, cuMemPool*), profiler control, and stream
// attributes (cuStreamSetAttribute and its kin).
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
  // Every pool of the session is its own, the default ones included, so
  // attributes and trims never reach another session (invariant 6).
  return CreateOnDevice(
      mem_pools_, args.getPool(), args.getDevice(), [&](int backend_device, MemPoolEntry* entry) {
        entry->is_default = args.getIsDefault();
        return backend_.CreateMemPool(backend_device, args.getMaxSize(), &entry->pool);
      });
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
  // stream capture: not recorded, so refused on a capturing stream.
  FERRY_RETURN_IF_ERROR(CaptureGuard(args.getStream(), CaptureUse::kNotRecorded));
  MemPoolEntry* pool = nullptr;
  FERRY_RETURN_IF_ERROR(mem_pools_.Find(args.getPool(), &pool));
  // The allocation belongs to the stream's context (it is freed with it), so
  // the pool must be of that context's device.
  ContextEntry* context = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &context));
  if (context->device != pool->device) {
    return Status::InvalidArgument("memory pool " + std::to_string(args.getPool()) +
                                   " is of device " + std::to_string(pool->device) +
                                   ", the stream's context of device " +
                                   std::to_string(context->device));
  }
  const uint64_t bytes = args.getBytes();
  if (bytes == 0) return Status::InvalidArgument("cuMemAllocAsync of 0 bytes");
  FERRY_RETURN_IF_ERROR(CheckQuotaAfterReleases(pool->device, bytes));
  uint64_t dptr = 0;
  FERRY_RETURN_IF_ERROR(WithRoom(pool->device, bytes, [&] {
    return backend_.MemAllocFromPool(*stream, *pool->pool, bytes, &dptr);
  }));
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
  // stream capture: not recorded, so refused on a capturing stream.
  FERRY_RETURN_IF_ERROR(CaptureGuard(args.getStream(), CaptureUse::kNotRecorded));
  auto range = ranges_.FindBase(args.getDptr());
  if (range.value == nullptr || range.value->module != 0 || range.value->mapped ||
      range.value->graph) {
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

// --- stream attributes -------------------------------------------------------

namespace ferry::server {

namespace {

// The value of `attribute` in `args`, checked, into `values`.
Status ParseStreamAttribute(wire::StreamAttribute::Reader args, backend::StreamAttributes* values) {
  switch (args.getAttribute()) {
    case CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW: {
      const float ratio = args.getHitRatio();
      if (!(ratio >= 0.0f && ratio <= 1.0f)) {
        return Status::InvalidArgument("access policy window: hitRatio must lie in [0, 1]");
      }
      auto valid = [](int p) {
        return p == CU_ACCESS_PROPERTY_NORMAL || p == CU_ACCESS_PROPERTY_STREAMING ||
               p == CU_ACCESS_PROPERTY_PERSISTING;
      };
      if (!valid(args.getHitProp()) || !valid(args.getMissProp()) ||
          args.getMissProp() == CU_ACCESS_PROPERTY_PERSISTING) {
        return Status::InvalidArgument("access policy window: bad hitProp or missProp");
      }
      values->window_base = args.getWindowBase();
      values->window_bytes = args.getWindowBytes();
      values->hit_ratio = ratio;
      values->hit_prop = args.getHitProp();
      values->miss_prop = args.getMissProp();
      return Status::Ok();
    }
    case CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY: {
      const uint32_t policy = args.getValue();
      if (policy < CU_SYNC_POLICY_AUTO || policy > CU_SYNC_POLICY_BLOCKING_SYNC) {
        return Status::InvalidArgument("bad synchronization policy " + std::to_string(policy));
      }
      values->sync_policy = static_cast<int>(policy);
      return Status::Ok();
    }
    default:
      return Status::Unimplemented("stream attribute " + std::to_string(args.getAttribute()) +
                                   " is not supported by ferry");
  }
}

}  // namespace

Status Session::StreamSetAttribute(wire::StreamAttribute::Reader args) {
  backend::Stream* stream = nullptr;
  backend::StreamAttributes* kept = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream, &kept));
  // A window names session memory whatever else is wrong with the call.
  if (args.getWindowBytes() > 0) {
    FERRY_RETURN_IF_ERROR(
        CheckRange(args.getWindowBase(), args.getWindowBytes(), "access policy window"));
  }
  backend::StreamAttributes values = *kept;
  FERRY_RETURN_IF_ERROR(ParseStreamAttribute(args, &values));
  FERRY_RETURN_IF_ERROR(backend_.SetStreamAttribute(*stream, args.getAttribute(), values));
  *kept = values;
  return Status::Ok();
}

Status Session::StreamGetAttribute(wire::StreamAttribute::Reader args, CallContext& cx) {
  backend::Stream* stream = nullptr;
  backend::StreamAttributes* kept = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream, &kept));
  const int attribute = args.getAttribute();
  if (attribute != CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW &&
      attribute != CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY) {
    return Status::Unimplemented("stream attribute " + std::to_string(attribute) +
                                 " is not supported by ferry");
  }
  const backend::StreamAttributes& values = *kept;
  auto out = cx.reply.initStreamAttribute();
  out.setCtx(args.getCtx());
  out.setStream(args.getStream());
  out.setAttribute(attribute);
  out.setWindowBase(values.window_base);
  out.setWindowBytes(values.window_bytes);
  out.setHitRatio(values.hit_ratio);
  out.setHitProp(values.hit_prop);
  out.setMissProp(values.miss_prop);
  out.setValue(static_cast<uint32_t>(values.sync_policy));
  return Status::Ok();
}

Status Session::StreamCopyAttributes(wire::StreamCopyAttributes::Reader args) {
  backend::Stream* dst = nullptr;
  backend::Stream* src = nullptr;
  backend::StreamAttributes* dst_kept = nullptr;
  backend::StreamAttributes* src_kept = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getDstCtx(), args.getDst(), &dst, &dst_kept));
  FERRY_RETURN_IF_ERROR(FindStream(args.getSrcCtx(), args.getSrc(), &src, &src_kept));
  const backend::StreamAttributes values = *src_kept;
  // The window was checked when it was set on src; it may have been freed
  // since, so check it again before it reaches dst.
  if (values.window_bytes > 0) {
    FERRY_RETURN_IF_ERROR(
        CheckRange(values.window_base, values.window_bytes, "access policy window"));
  }
  for (int attribute :
       {CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW, CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY}) {
    FERRY_RETURN_IF_ERROR(backend_.SetStreamAttribute(*dst, attribute, values));
  }
  *dst_kept = values;
  return Status::Ok();
}

}  // namespace ferry::server

// --- stream memory operations --------------------------------------------------

namespace ferry::server {

Status Session::StreamMemOps(wire::StreamMemOps::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  // stream capture: not recorded, so refused on a capturing stream.
  FERRY_RETURN_IF_ERROR(CaptureGuard(args.getStream(), CaptureUse::kNotRecorded));
  auto ops = args.getOps();
  if (ops.size() == 0 || ops.size() > 256) {
    return Status::InvalidArgument("a batch of stream memory operations holds 1 to 256 of them");
  }
  if (args.getFlags() != 0) return Status::InvalidArgument("cuStreamBatchMemOp flags must be 0");
  std::vector<backend::StreamMemOp> checked;
  checked.reserve(ops.size());
  for (auto op : ops) {
    backend::StreamMemOp out{op.getOperation(), op.getAddress(), op.getValue(), op.getFlags()};
    uint64_t width = 0;
    switch (out.operation) {
      case CU_STREAM_MEM_OP_WAIT_VALUE_32:
      case CU_STREAM_MEM_OP_WAIT_VALUE_64:
        width = out.operation == CU_STREAM_MEM_OP_WAIT_VALUE_32 ? 4 : 8;
        if ((out.flags & ~static_cast<unsigned>(CU_STREAM_WAIT_VALUE_FLUSH)) > 3) {
          return Status::InvalidArgument("bad wait flags " + std::to_string(out.flags));
        }
        break;
      case CU_STREAM_MEM_OP_WRITE_VALUE_32:
      case CU_STREAM_MEM_OP_WRITE_VALUE_64:
        width = out.operation == CU_STREAM_MEM_OP_WRITE_VALUE_32 ? 4 : 8;
        if ((out.flags & ~static_cast<unsigned>(CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER)) != 0) {
          return Status::InvalidArgument("bad write flags " + std::to_string(out.flags));
        }
        break;
      case CU_STREAM_MEM_OP_FLUSH_REMOTE_WRITES:
        if (out.flags != 0) return Status::InvalidArgument("flush flags must be 0");
        break;
      case CU_STREAM_MEM_OP_BARRIER:
        if (out.flags != CU_STREAM_MEMORY_BARRIER_TYPE_SYS &&
            out.flags != CU_STREAM_MEMORY_BARRIER_TYPE_GPU) {
          return Status::InvalidArgument("bad barrier type " + std::to_string(out.flags));
        }
        break;
      default:
        return Status::InvalidArgument("unknown stream memory operation " +
                                       std::to_string(out.operation));
    }
    if (width > 0) {
      if (out.address % width != 0) {
        return Status::InvalidArgument("stream memory operation on " + Hex(out.address) +
                                       ", which is not " + std::to_string(width) + "-byte aligned");
      }
      if (width == 4 && out.value > UINT32_MAX) {
        return Status::InvalidArgument("a 32-bit operation's value does not fit in 32 bits");
      }
      FERRY_RETURN_IF_ERROR(CheckRange(out.address, width, "stream memory operation"));
    }
    checked.push_back(out);
  }
  return backend_.StreamMemOps(*stream, std::move(checked), args.getFlags());
}

}  // namespace ferry::server

// --- context-wide events ---------------------------------------------------------

namespace ferry::server {

Status Session::CtxRecordEvent(wire::CtxEvent::Reader args) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  EventEntry* e = nullptr;
  FERRY_RETURN_IF_ERROR(events_.Find(args.getEvent(), &e));
  if (e->ctx != args.getCtx()) {
    return Status::InvalidHandle("cuCtxRecordEvent: the event belongs to another context");
  }
  FERRY_RETURN_IF_ERROR(backend_.RecordContextEvent(*c->context, *e->event));
  NoteCaptureEventRecord(/*stream=*/0, *e);  // recorded outside any capture
  return Status::Ok();
}

Status Session::CtxWaitEvent(wire::CtxEvent::Reader args) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  EventEntry* e = nullptr;
  FERRY_RETURN_IF_ERROR(events_.Find(args.getEvent(), &e));
  if (e->ctx != args.getCtx()) {
    return Status::InvalidHandle("cuCtxWaitEvent: the event belongs to another context");
  }
  return backend_.ContextWaitEvent(*c->context, *e->event);
}

}  // namespace ferry::server
