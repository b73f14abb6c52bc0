// Session handlers for device memory: allocation (charged to the slice's
// quota), copies and memset, each range checked against the session's own
// ranges (README.md invariant 6).

#include "server/session.h"

#include <cuda.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "common/log.h"
#include "server/session_internal.h"

namespace ferry::server {

using session_internal::Alias;
using session_internal::Hex;

namespace {
constexpr char kRangeOwner[] = "an allocation of this session";

// Mappings placed side by side are one stretch of device addresses.
constexpr auto kBothMapped = [](const auto& left, const auto& right) {
  return left.mapped && right.mapped;
};
}  // namespace

Status Session::CheckRange(uint64_t address, uint64_t bytes, const char* what) {
  return ranges_.CheckJoined(address, bytes, what, kRangeOwner, kBothMapped);
}

Status Session::CheckRange2D(uint64_t address, uint64_t pitch, uint64_t width_bytes,
                             uint64_t height, const char* what) {
  return ranges_.Check2DJoined(address, pitch, width_bytes, height, what, kRangeOwner, kBothMapped);
}

Status Session::AllocateInContext(uint64_t ctx, ContextEntry& c, uint64_t bytes, const char* call,
                                  const std::function<Status(uint64_t* dptr)>& allocate,
                                  uint64_t* dptr) {
  if (bytes == 0) return Status::InvalidArgument(std::string(call) + " of 0 bytes");
  FERRY_RETURN_IF_ERROR(CheckQuotaAfterReleases(c.device, bytes));
  // The device may be full (quotas may add up to more than it has: memory
  // overcommit): idle sessions' memory may be parked to make room.
  FERRY_RETURN_IF_ERROR(WithRoom(c.device, bytes, [&] { return allocate(dptr); }));
  if (!ranges_.Insert(*dptr, bytes, RangeEntry{ctx, 0, c.device})) {
    // The backend gave out memory the session already holds: never keep
    // two entries for one address.
    (void)backend_.MemFree(*c.context, *dptr);
    return Status::Internal(std::string(call) + " returned " + Hex(*dptr) +
                            ", which overlaps a range the session holds");
  }
  shares_.Charge(c.device, bytes);
  return Status::Ok();
}

Status Session::MemAlloc(wire::MemAlloc::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  uint64_t dptr = 0;
  FERRY_RETURN_IF_ERROR(AllocateInContext(
      args.getCtx(), *c, args.getBytes(), "cuMemAlloc",
      [&](uint64_t* out) { return backend_.MemAlloc(*c->context, args.getBytes(), out); },
      &dptr));
  cx.reply.initMemAlloc().setDptr(dptr);
  return Status::Ok();
}

Status Session::MemAllocPitch(wire::MemAllocPitch::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  const unsigned element = args.getElementBytes();
  if (args.getWidthBytes() == 0 || args.getHeight() == 0 ||
      (element != 4 && element != 8 && element != 16)) {
    return Status::InvalidArgument("cuMemAllocPitch: bad width, height or element size");
  }
  // The pitch is the backend's to choose; the quota is checked before with
  // the least the allocation can take, and after with what it took.
  if (args.getHeight() > std::numeric_limits<uint64_t>::max() / args.getWidthBytes()) {
    return Status::OutOfMemory("cuMemAllocPitch: extent overflows");
  }
  FERRY_RETURN_IF_ERROR(CheckQuotaAfterReleases(c->device, args.getWidthBytes() * args.getHeight()));
  uint64_t dptr = 0, pitch = 0;
  FERRY_RETURN_IF_ERROR(WithRoom(c->device, args.getWidthBytes() * args.getHeight(), [&] {
    return backend_.MemAllocPitch(*c->context, args.getWidthBytes(), args.getHeight(), element,
                                  &dptr, &pitch);
  }));
  const uint64_t bytes = pitch * args.getHeight();
  if (Status quota = CheckQuotaAfterReleases(c->device, bytes); !quota.ok()) {
    (void)backend_.MemFree(*c->context, dptr);
    return quota;
  }
  if (!ranges_.Insert(dptr, bytes, RangeEntry{args.getCtx(), 0, c->device})) {
    (void)backend_.MemFree(*c->context, dptr);
    return Status::Internal("cuMemAllocPitch returned " + Hex(dptr) +
                            ", which overlaps a range the session holds");
  }
  shares_.Charge(c->device, bytes);
  auto result = cx.reply.initMemAlloc();
  result.setDptr(dptr);
  result.setPitch(pitch);
  return Status::Ok();
}

Status Session::MemFree(wire::MemFree::Reader args) {
  auto range = ranges_.FindBase(args.getDptr());
  if (range.value != nullptr && range.value->graph) return FreeGraphAllocation(args.getDptr());
  if (range.value == nullptr || range.value->module != 0 || range.value->mapped) {
    return Status::InvalidArgument("cuMemFree(" + Hex(args.getDptr()) +
                                   "): not the start of an allocation of this session");
  }
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(range.value->ctx, &c));
  const int device = range.value->device;
  const uint64_t bytes = range.size;
  ranges_.Erase(args.getDptr());
  Status status = backend_.MemFree(*c->context, args.getDptr());
  UnchargeWhenReleased(device, bytes);
  return status;
}

Status Session::MemGetInfo(wire::CtxRef::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  uint64_t free_bytes = 0, total = 0;
  FERRY_RETURN_IF_ERROR(backend_.MemGetInfo(*c->context, &free_bytes, &total));
  shares_.ApplyQuota(c->device, &free_bytes, &total);
  auto info = cx.reply.initMemGetInfo();
  info.setFree(free_bytes);
  info.setTotal(total);
  return Status::Ok();
}

Status Session::MemcpyHtoD(wire::Memcpy::Reader args, CallContext& cx) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  if (cx.bulk_in.size != args.getBytes()) {
    return Status::InvalidArgument("host-to-device copy of " + std::to_string(args.getBytes()) +
                                   " bytes carried " + std::to_string(cx.bulk_in.size));
  }
  FERRY_RETURN_IF_ERROR(CheckRange(args.getDst(), args.getBytes(), "destination"));
  FERRY_RETURN_IF_ERROR(CaptureGuard(args.getStream(), CaptureUse::kHostMemory));
  if (args.getBytes() == 0) return Status::Ok();
  Status idle_status;
  if (backend_.DeviceMemoryIsHostMemory() && backend_.StreamIdleNow(*stream, &idle_status) &&
      idle_status.ok()) {
    // What the queued copy would do when its turn came; no thread hop.
    std::memcpy(reinterpret_cast<void*>(args.getDst()), cx.bulk_in.data, args.getBytes());
    return Status::Ok();
  }
  return backend_.CopyHostToDevice(*stream, args.getDst(), cx.bulk_in);
}

Status Session::MemcpyDtoH(wire::Memcpy::Reader args, CallContext& cx) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  FERRY_RETURN_IF_ERROR(CheckRange(args.getSrc(), args.getBytes(), "source"));
  FERRY_RETURN_IF_ERROR(CaptureGuard(args.getStream(), CaptureUse::kHostMemory));
  if (!cx.wants_reply) return Status::InvalidArgument("a device-to-host copy must want a reply");
  Status idle_status;
  if (backend_.StreamIdleNow(*stream, &idle_status)) {
    // Nothing queued can still change the source: answer now.
    if (!idle_status.ok()) return idle_status;
    if (args.getBytes() == 0) return Status::Ok();
    if (backend_.DeviceMemoryIsHostMemory()) {
      // The reply is written from device memory itself before the executor
      // runs the session's next call, so nothing of this session can change
      // the bytes meanwhile.
      cx.reply_bulk = ConstBuffer{reinterpret_cast<const void*>(args.getSrc()), args.getBytes()};
      return Status::Ok();
    }
  }
  backend::MutableHostBytes buffer;
  if (args.getBytes() > 0) {
    std::shared_ptr<uint8_t[]> bytes(new (std::nothrow) uint8_t[args.getBytes()]);
    if (!bytes)
      return Status::OutOfMemory("cannot buffer " + std::to_string(args.getBytes()) + " bytes");
    buffer.data = bytes.get();
    buffer.size = args.getBytes();
    buffer.owner = Alias<void>(bytes, bytes.get());
    FERRY_RETURN_IF_ERROR(backend_.CopyDeviceToHost(*stream, buffer, args.getSrc()));
  }
  backend_.WhenStreamIdle(*stream, DeferReply(cx, buffer));
  return Status::Ok();
}

Status Session::MemcpyDtoD(wire::Memcpy::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  FERRY_RETURN_IF_ERROR(CheckRange(args.getSrc(), args.getBytes(), "source"));
  FERRY_RETURN_IF_ERROR(CheckRange(args.getDst(), args.getBytes(), "destination"));
  FERRY_RETURN_IF_ERROR(
      CaptureGuard(args.getStream(), CaptureUse::kRecorded,
                   {{args.getSrc(), args.getBytes()}, {args.getDst(), args.getBytes()}}));
  if (args.getBytes() == 0) return Status::Ok();
  return backend_.CopyDeviceToDevice(*stream, args.getDst(), args.getSrc(), args.getBytes());
}

// 2D and 3D copies, array sides included (CUDA arrays, textures and
// surfaces): every side is checked before anything is queued.
Status Session::Memcpy2D(wire::Memcpy2D::Reader args, CallContext& cx) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  // An array id named must be the session's whatever the kinds say.
  for (uint64_t array : {args.getSrcArray(), args.getDstArray()}) {
    ArrayEntry* entry = nullptr;
    if (array != 0) FERRY_RETURN_IF_ERROR(arrays_.Find(array, &entry));
  }
  const uint64_t width = args.getWidthBytes();
  const uint64_t height = args.getHeight();
  const uint64_t depth = args.getDepth();
  uint64_t packed;
  if (__builtin_mul_overflow(width, height, &packed) ||
      __builtin_mul_overflow(packed, depth, &packed)) {
    return Status::InvalidArgument("copy extent overflows");
  }
  const bool src_host = args.getSrcKind() == wire::MemoryKind::HOST;
  const bool dst_host = args.getDstKind() == wire::MemoryKind::HOST;
  if (src_host && dst_host)
    return Status::InvalidArgument("host-to-host 2D copy reached the server");
  backend::Copy2D copy;
  copy.width_bytes = width;
  copy.height = height;
  copy.depth = depth;
  // The span of `depth` slices of `slice_rows` rows of `pitch` bytes that a
  // device side covers from `address` must be one of the session's ranges.
  auto check_device = [&](uint64_t address, uint64_t pitch, uint64_t slice_rows,
                          const char* what) -> Status {
    if (depth <= 1) return CheckRange2D(address, pitch, width, height, what);
    if (slice_rows < height || pitch < width) {
      return Status::InvalidArgument(std::string(what) + ": rows or slices overlap");
    }
    uint64_t rows, span;
    if (__builtin_mul_overflow(depth - 1, slice_rows, &rows) ||
        __builtin_add_overflow(rows, height - 1, &rows) ||
        __builtin_mul_overflow(rows, pitch, &span) || __builtin_add_overflow(span, width, &span)) {
      return Status::InvalidArgument(std::string(what) + ": extent overflows");
    }
    return CheckRange(address, span, what);
  };
  const bool arrays =
      args.getSrcKind() == wire::MemoryKind::ARRAY || args.getDstKind() == wire::MemoryKind::ARRAY;
  if (src_host) {
    if (cx.bulk_in.size != packed) {
      return Status::InvalidArgument("2D copy expected " + std::to_string(packed) +
                                     " packed bytes, got " + std::to_string(cx.bulk_in.size));
    }
    copy.src_is_host = true;
    copy.src_host = cx.bulk_in;
    copy.src_pitch = width;
  } else if (args.getSrcKind() == wire::MemoryKind::ARRAY) {
    FERRY_RETURN_IF_ERROR(FindCopyArray(args.getSrcArray(), args.getSrcX(), args.getSrcY(),
                                        args.getSrcZ(), width, height, depth, "source",
                                        &copy.src_array));
    copy.src_x = args.getSrcX();
    copy.src_y = args.getSrcY();
    copy.src_z = args.getSrcZ();
  } else {
    copy.src_height = args.getSrcHeight() == 0 ? height : args.getSrcHeight();
    FERRY_RETURN_IF_ERROR(
        check_device(args.getSrcDevice(), args.getSrcPitch(), copy.src_height, "source"));
    copy.src_device = args.getSrcDevice();
    copy.src_pitch = args.getSrcPitch();
  }
  backend::MutableHostBytes buffer;
  if (dst_host) {
    if (!cx.wants_reply) return Status::InvalidArgument("a 2D copy to the host must want a reply");
    std::shared_ptr<uint8_t[]> bytes(new (std::nothrow) uint8_t[packed > 0 ? packed : 1]);
    if (!bytes) return Status::OutOfMemory("cannot buffer " + std::to_string(packed) + " bytes");
    buffer.data = bytes.get();
    buffer.size = packed;
    buffer.owner = Alias<void>(bytes, bytes.get());
    copy.dst_is_host = true;
    copy.dst_host = buffer;
    copy.dst_pitch = width;
  } else if (args.getDstKind() == wire::MemoryKind::ARRAY) {
    FERRY_RETURN_IF_ERROR(FindCopyArray(args.getDstArray(), args.getDstX(), args.getDstY(),
                                        args.getDstZ(), width, height, depth, "destination",
                                        &copy.dst_array));
    copy.dst_x = args.getDstX();
    copy.dst_y = args.getDstY();
    copy.dst_z = args.getDstZ();
  } else {
    copy.dst_height = args.getDstHeight() == 0 ? height : args.getDstHeight();
    FERRY_RETURN_IF_ERROR(
        check_device(args.getDstDevice(), args.getDstPitch(), copy.dst_height, "destination"));
    copy.dst_device = args.getDstDevice();
    copy.dst_pitch = args.getDstPitch();
  }
  if (src_host || dst_host) {
    FERRY_RETURN_IF_ERROR(CaptureGuard(args.getStream(), CaptureUse::kHostMemory));
  } else if (arrays || depth > 1) {
    FERRY_RETURN_IF_ERROR(CaptureGuard(args.getStream(), CaptureUse::kNotRecorded));
  } else if (packed > 0) {
    // Both checked by CheckRange2D above: the spans do not overflow.
    const uint64_t rows_before_last = (height - 1);
    FERRY_RETURN_IF_ERROR(
        CaptureGuard(args.getStream(), CaptureUse::kRecorded,
                     {{copy.src_device, rows_before_last * copy.src_pitch + width},
                      {copy.dst_device, rows_before_last * copy.dst_pitch + width}}));
  }
  if (packed > 0) FERRY_RETURN_IF_ERROR(backend_.Copy2DAsync(*stream, std::move(copy)));
  if (dst_host) backend_.WhenStreamIdle(*stream, DeferReply(cx, buffer));
  return Status::Ok();
}

Status Session::Memset(wire::Memset::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  const unsigned element = args.getElementBytes();
  if (element != 1 && element != 2 && element != 4) {
    return Status::InvalidArgument("memset element size must be 1, 2 or 4");
  }
  const uint64_t width = args.getWidth();
  if (width > std::numeric_limits<uint64_t>::max() / element) {
    return Status::InvalidArgument("memset extent overflows");
  }
  const uint64_t height = args.getHeight() == 0 ? 1 : args.getHeight();
  FERRY_RETURN_IF_ERROR(CheckRange2D(args.getDst(), height == 1 ? width * element : args.getPitch(),
                                     width * element, height, "memset"));
  FERRY_RETURN_IF_ERROR(CaptureGuard(
      args.getStream(), CaptureUse::kRecorded,
      {{args.getDst(), (height - 1) * (height == 1 ? 0 : args.getPitch()) + width * element}}));
  if (width == 0) return Status::Ok();
  return backend_.Memset(*stream, args.getDst(), args.getPitch(), args.getValue(), element, width,
                         height);
}

}  // namespace ferry::server
