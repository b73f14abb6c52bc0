// Entry points: device and page-locked memory, copies, memsets, pointer
// attributes.
//
// Every device range is checked against the client's own record of its
// allocations first, so a bad pointer is reported by the call that passed it
// (the server checks again: README.md invariant 6). Host-to-device copies are
// fire-and-forget once their bytes are taken; device-to-host copies wait for
// their bytes, except async copies into page-locked memory, which land when
// their reply arrives and are waited for by the next synchronising call.
//
// Page-locked ("pinned") memory is the client's own memory: the GPU is on
// another machine, so it cannot be mapped into the device's address space
// (cuMemHostGetDevicePointer is not supported).
#include <cuda.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "client/across_servers.h"
#include "client/entry_point.h"

using ferry::client::CopyBetweenServers;
using ferry::client::InBytes;
using ferry::client::OnOwnersServer;
using ferry::client::OutBytes;
using ferry::client::OwnerContext;

namespace {

Status CopyHostToDevice(CUdeviceptr dst, const void* src, size_t bytes, CUstream stream,
                        bool per_thread) {
  Runtime& rt = Runtime::Get();
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  if (bytes == 0) return Status::Ok();
  if (src == nullptr) return Status::InvalidArgument("source is NULL");
  FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice(dst, bytes, "destination"));
  return OnOwnersServer(target, OwnerContext(dst, target.ctx), [&](const StreamTarget& on) {
    return rt.ConnectionOf(on.ctx).Post(
        [&](wire::Call::Builder call) {
          auto args = call.initMemcpyHtoD();
          SetStreamTarget(args, on);
          args.setDst(dst);
          args.setBytes(bytes);
        },
        OutBytes{src, bytes});
  });
}

// `wait`: return after the bytes landed (synchronous copies, and async copies
// into pageable memory, which CUDA also performs synchronously).
Status CopyDeviceToHost(void* dst, CUdeviceptr src, size_t bytes, CUstream stream, bool per_thread,
                        bool async) {
  Runtime& rt = Runtime::Get();
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  if (bytes == 0) return Status::Ok();
  if (dst == nullptr) return Status::InvalidArgument("destination is NULL");
  FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice(src, bytes, "source"));
  const uint64_t owner = OwnerContext(src, target.ctx);
  const bool here = rt.SameSession(target.ctx, owner);
  return OnOwnersServer(target, owner, [&](const StreamTarget& on) {
    auto fill = [&](wire::Call::Builder call) {
      auto args = call.initMemcpyDtoH();
      SetStreamTarget(args, on);
      args.setSrc(src);
      args.setBytes(bytes);
    };
    const void* base = nullptr;
    ferry::client::HostAllocation pinned;
    const bool page_locked =
        rt.allocations().FindHost(dst, &base, &pinned) &&
        bytes <= pinned.size - (static_cast<const char*>(dst) - static_cast<const char*>(base));
    if (async && page_locked && here) {
      return rt.ConnectionOf(on.ctx).PostExpectingBytes(
          fill, InBytes{dst, bytes}, ferry::client::StreamKey{on.ctx, on.stream});
    }
    return rt.ConnectionOf(on.ctx).Call(fill, {}, InBytes{dst, bytes});
  });
}

Status CopyDeviceToDevice(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream,
                          bool per_thread) {
  Runtime& rt = Runtime::Get();
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  if (bytes == 0) return Status::Ok();
  FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice(src, bytes, "source"));
  FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice(dst, bytes, "destination"));
  const uint64_t src_owner = OwnerContext(src, target.ctx);
  const uint64_t dst_owner = OwnerContext(dst, target.ctx);
  if (!rt.SameSession(src_owner, dst_owner)) {
    return CopyBetweenServers(dst_owner, dst, src_owner, src, bytes, target);
  }
  return OnOwnersServer(target, dst_owner, [&](const StreamTarget& on) {
    return rt.ConnectionOf(on.ctx).Post([&](wire::Call::Builder call) {
      auto args = call.initMemcpyDtoD();
      SetStreamTarget(args, on);
      args.setDst(dst);
      args.setSrc(src);
      args.setBytes(bytes);
    });
  });
}

bool IsDevice(CUdeviceptr p) {
  return Runtime::Get().allocations().FindDevice(p, nullptr, nullptr);
}

// cuMemcpy / cuMemcpyAsync: unified addressing decides the direction.
Status CopyUnified(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream, bool per_thread,
                   bool async) {
  FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
  const bool dst_device = IsDevice(dst);
  const bool src_device = IsDevice(src);
  if (dst_device && src_device) return CopyDeviceToDevice(dst, src, bytes, stream, per_thread);
  if (dst_device) {
    return CopyHostToDevice(dst, reinterpret_cast<const void*>(src), bytes, stream, per_thread);
  }
  if (src_device) {
    return CopyDeviceToHost(reinterpret_cast<void*>(dst), src, bytes, stream, per_thread, async);
  }
  if (bytes > 0) {
    if (dst == 0 || src == 0) return Status::InvalidArgument("NULL pointer");
    std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
  }
  return Status::Ok();
}

bool IsHostSide(CUmemorytype type, CUdeviceptr device, const void* host) {
  if (type == CU_MEMORYTYPE_HOST) return true;
  if (type == CU_MEMORYTYPE_UNIFIED)
    return !IsDevice(device != 0 ? device : reinterpret_cast<CUdeviceptr>(host));
  return false;
}

// One side of a 2D or 3D copy, resolved: host memory, device memory or a
// CUDA array (arrays, textures and surfaces).
struct CopySide {
  wire::MemoryKind kind = wire::MemoryKind::DEVICE;
  char* host = nullptr;     // host: the first byte copied
  CUdeviceptr device = 0;   // device: the first byte copied
  uint64_t pitch = 0;       // host and device: bytes between rows
  uint64_t slice_rows = 0;  // host and device: rows between slices
  uint64_t array = 0;       // array: its id, and where the copy starts
  uint64_t x = 0, y = 0, z = 0;
};

// Resolves and checks one side of `p` (the src* or dst* fields, passed
// one by one), for a copy of `width` bytes x `height` x `depth`.
Status ResolveCopySide(CUmemorytype type, const void* host, CUdeviceptr device, CUarray array,
                       size_t x, size_t y, size_t z, size_t lod, size_t pitch, size_t slice_rows,
                       uint64_t width, uint64_t height, uint64_t depth, const char* what,
                       CopySide* out) {
  Runtime& rt = Runtime::Get();
  if (lod != 0) return Status::InvalidArgument(std::string(what) + ": LOD must be 0");
  if (type == CU_MEMORYTYPE_ARRAY) {
    ferry::client::ArrayRecord record;
    out->kind = wire::MemoryKind::ARRAY;
    out->array = Runtime::HandleId(array);
    FERRY_RETURN_IF_ERROR(rt.arrays().Find(out->array, &record));
    if (record.levels > 0) {
      return Status::InvalidHandle(std::string(what) +
                                   ": a mipmapped array is copied level by level");
    }
    FERRY_RETURN_IF_ERROR(ferry::CheckArrayExtent(record.shape, record.element_bytes, x, y, z,
                                                  width, height, depth, what));
    out->x = x;
    out->y = y;
    out->z = z;
    return Status::Ok();
  }
  if (type != CU_MEMORYTYPE_HOST && type != CU_MEMORYTYPE_DEVICE && type != CU_MEMORYTYPE_UNIFIED) {
    return Status::InvalidArgument(std::string(what) + ": unknown memory type");
  }
  if ((height > 1 || depth > 1) && pitch < width) {
    return Status::InvalidArgument(std::string(what) + ": pitch smaller than WidthInBytes");
  }
  if (depth > 1 && slice_rows < height) {
    return Status::InvalidArgument(std::string(what) + ": height smaller than the copy's");
  }
  uint64_t offset, span;
  if (__builtin_mul_overflow(static_cast<uint64_t>(z), slice_rows, &offset) ||
      __builtin_add_overflow(offset, y, &offset) ||
      __builtin_mul_overflow(offset, pitch, &offset) ||
      __builtin_add_overflow(offset, x, &offset) ||
      __builtin_mul_overflow(depth - 1, slice_rows, &span) ||
      __builtin_add_overflow(span, height - 1, &span) ||
      __builtin_mul_overflow(span, pitch, &span) || __builtin_add_overflow(span, width, &span)) {
    return Status::InvalidArgument(std::string(what) + ": extent overflows");
  }
  out->pitch = pitch;
  out->slice_rows = slice_rows;
  if (IsHostSide(type, device, host)) {
    out->kind = wire::MemoryKind::HOST;
    const char* base = static_cast<const char*>(
        type == CU_MEMORYTYPE_UNIFIED ? reinterpret_cast<const void*>(device) : host);
    if (base == nullptr) return Status::InvalidArgument(std::string(what) + " is NULL");
    out->host = const_cast<char*>(base) + offset;
    return Status::Ok();
  }
  out->kind = wire::MemoryKind::DEVICE;
  out->device = device + offset;
  if (depth == 1) return rt.allocations().CheckDevice2D(out->device, pitch, width, height, what);
  return rt.allocations().CheckDevice(out->device, span, what);
}

// The address of row `row` of slice `slice` of a host side.
char* HostRow(const CopySide& side, uint64_t slice, uint64_t row) {
  return side.host + (slice * side.slice_rows + row) * side.pitch;
}

// The context a device or array side of a copy lives in (`fallback` for a
// host side, or memory not tied to a context).
uint64_t SideOwner(const CopySide& side, uint64_t fallback) {
  if (side.kind == wire::MemoryKind::DEVICE) return OwnerContext(side.device, fallback);
  ferry::client::ArrayRecord record;
  if (side.kind == wire::MemoryKind::ARRAY &&
      Runtime::Get().arrays().Find(side.array, &record).ok() && record.ctx != 0) {
    return record.ctx;
  }
  return fallback;
}

Status CopyPacked(const StreamTarget& on, const CopySide& src, const CopySide& dst, uint64_t width,
                  uint64_t height, uint64_t depth, uint64_t packed);

// Every 2D and 3D copy, array sides included (cuMemcpy2D*, cuMemcpy3D*,
// cuMemcpy*A*): one memcpy2D call. Host sides travel packed.
Status Copy3D(const CUDA_MEMCPY3D* p, CUstream stream, bool per_thread, bool async) {
  (void)async;  // copies into host memory are performed synchronously: rows are unpacked here
  Runtime& rt = Runtime::Get();
  if (p == nullptr) return Status::InvalidArgument("pCopy is NULL");
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  const uint64_t width = p->WidthInBytes, height = p->Height, depth = p->Depth;
  if (width == 0 || height == 0 || depth == 0) return Status::Ok();
  if (p->reserved0 != nullptr || p->reserved1 != nullptr) {
    return Status::InvalidArgument("reserved fields of CUDA_MEMCPY3D must be NULL");
  }
  uint64_t packed;
  if (__builtin_mul_overflow(width, height, &packed) ||
      __builtin_mul_overflow(packed, depth, &packed)) {
    return Status::InvalidArgument("copy extent overflows");
  }
  CopySide src, dst;
  FERRY_RETURN_IF_ERROR(ResolveCopySide(p->srcMemoryType, p->srcHost, p->srcDevice, p->srcArray,
                                        p->srcXInBytes, p->srcY, p->srcZ, p->srcLOD, p->srcPitch,
                                        p->srcHeight, width, height, depth, "source", &src));
  FERRY_RETURN_IF_ERROR(ResolveCopySide(p->dstMemoryType, p->dstHost, p->dstDevice, p->dstArray,
                                        p->dstXInBytes, p->dstY, p->dstZ, p->dstLOD, p->dstPitch,
                                        p->dstHeight, width, height, depth, "destination", &dst));
  const bool src_host = src.kind == wire::MemoryKind::HOST;
  const bool dst_host = dst.kind == wire::MemoryKind::HOST;
  if (src_host && dst_host) {
    for (uint64_t slice = 0; slice < depth; ++slice) {
      for (uint64_t row = 0; row < height; ++row) {
        std::memmove(HostRow(dst, slice, row), HostRow(src, slice, row), width);
      }
    }
    return Status::Ok();
  }
  // Devices on several servers: the copy runs where its device sides are.
  const uint64_t src_owner = SideOwner(src, target.ctx), dst_owner = SideOwner(dst, target.ctx);
  if (!src_host && !dst_host && !rt.SameSession(src_owner, dst_owner)) {
    return Status::Unimplemented(
        "2D and 3D copies between devices of different servers are not supported by ferry; "
        "copy through host memory, or with cuMemcpyPeer");
  }
  return OnOwnersServer(target, dst_host ? src_owner : dst_owner, [&](const StreamTarget& on) {
    return CopyPacked(on, src, dst, width, height, depth, packed);
  });
}

// Copy3D's work on the stream `on`: one memcpy2D call, host rows packed.
Status CopyPacked(const StreamTarget& on, const CopySide& src, const CopySide& dst, uint64_t width,
                  uint64_t height, uint64_t depth, uint64_t packed) {
  Runtime& rt = Runtime::Get();
  const bool src_host = src.kind == wire::MemoryKind::HOST;
  const bool dst_host = dst.kind == wire::MemoryKind::HOST;
  auto fill = [&](wire::Call::Builder call) {
    auto args = call.initMemcpy2D();
    SetStreamTarget(args, on);
    args.setWidthBytes(width);
    args.setHeight(height);
    args.setDepth(depth);
    args.setSrcKind(src.kind);
    args.setSrcDevice(src.device);
    args.setSrcPitch(src_host ? width : src.pitch);
    args.setSrcHeight(src.kind == wire::MemoryKind::DEVICE && depth > 1 ? src.slice_rows : 0);
    args.setSrcArray(src.array);
    args.setSrcX(src.x);
    args.setSrcY(src.y);
    args.setSrcZ(src.z);
    args.setDstKind(dst.kind);
    args.setDstDevice(dst.device);
    args.setDstPitch(dst_host ? width : dst.pitch);
    args.setDstHeight(dst.kind == wire::MemoryKind::DEVICE && depth > 1 ? dst.slice_rows : 0);
    args.setDstArray(dst.array);
    args.setDstX(dst.x);
    args.setDstY(dst.y);
    args.setDstZ(dst.z);
  };
  // Host rows travel packed (pitch = width, slices = height rows).
  const bool src_packed = src.pitch == width && (depth == 1 || src.slice_rows == height);
  const bool dst_packed = dst.pitch == width && (depth == 1 || dst.slice_rows == height);
  if (src_host) {
    if (src_packed) return rt.ConnectionOf(on.ctx).Post(fill, OutBytes{src.host, packed});
    std::vector<char> bytes(packed);
    for (uint64_t slice = 0; slice < depth; ++slice) {
      for (uint64_t row = 0; row < height; ++row) {
        std::memcpy(bytes.data() + (slice * height + row) * width, HostRow(src, slice, row), width);
      }
    }
    return rt.ConnectionOf(on.ctx).Post(fill, OutBytes{bytes.data(), bytes.size()});
  }
  if (dst_host) {
    // Performed synchronously, async or not: the rows must be unpacked here.
    if (dst_packed) return rt.ConnectionOf(on.ctx).Call(fill, {}, InBytes{dst.host, packed});
    std::vector<char> bytes(packed);
    FERRY_RETURN_IF_ERROR(
        rt.ConnectionOf(on.ctx).Call(fill, {}, InBytes{bytes.data(), bytes.size()}));
    for (uint64_t slice = 0; slice < depth; ++slice) {
      for (uint64_t row = 0; row < height; ++row) {
        std::memcpy(HostRow(dst, slice, row), bytes.data() + (slice * height + row) * width, width);
      }
    }
    return Status::Ok();
  }
  return rt.ConnectionOf(on.ctx).Post(fill);
}

// A 2D copy is a 3D copy of one slice.
Status Copy2D(const CUDA_MEMCPY2D* p, CUstream stream, bool per_thread, bool async) {
  if (p == nullptr) return Status::InvalidArgument("pCopy is NULL");
  CUDA_MEMCPY3D m;
  std::memset(&m, 0, sizeof(m));
  m.srcXInBytes = p->srcXInBytes;
  m.srcY = p->srcY;
  m.srcMemoryType = p->srcMemoryType;
  m.srcHost = p->srcHost;
  m.srcDevice = p->srcDevice;
  m.srcArray = p->srcArray;
  m.srcPitch = p->srcPitch;
  m.srcHeight = p->Height;
  m.dstXInBytes = p->dstXInBytes;
  m.dstY = p->dstY;
  m.dstMemoryType = p->dstMemoryType;
  m.dstHost = p->dstHost;
  m.dstDevice = p->dstDevice;
  m.dstArray = p->dstArray;
  m.dstPitch = p->dstPitch;
  m.dstHeight = p->Height;
  m.WidthInBytes = p->WidthInBytes;
  m.Height = p->Height;
  m.Depth = 1;
  return Copy3D(&m, stream, per_thread, async);
}

// cuMemcpy*A*: a copy of `bytes` within one row of an array (or between a
// row and linear memory), as a one-row 3D copy.
struct LinearSide {
  CUmemorytype type;
  const void* host;
  CUdeviceptr device;
  CUarray array;
  size_t offset;  // bytes into the array's first row (arrays)
};
Status CopyArrayRow(LinearSide dst, LinearSide src, size_t bytes, CUstream stream, bool per_thread,
                    bool async) {
  CUDA_MEMCPY3D m;
  std::memset(&m, 0, sizeof(m));
  m.srcMemoryType = src.type;
  m.srcHost = src.host;
  m.srcDevice = src.device;
  m.srcArray = src.array;
  m.srcXInBytes = src.type == CU_MEMORYTYPE_ARRAY ? src.offset : 0;
  m.srcPitch = bytes;
  m.srcHeight = 1;
  m.dstMemoryType = dst.type;
  m.dstHost = const_cast<void*>(dst.host);
  m.dstDevice = dst.device;
  m.dstArray = dst.array;
  m.dstXInBytes = dst.type == CU_MEMORYTYPE_ARRAY ? dst.offset : 0;
  m.dstPitch = bytes;
  m.dstHeight = 1;
  m.WidthInBytes = bytes;
  m.Height = 1;
  m.Depth = 1;
  return Copy3D(&m, stream, per_thread, async);
}
LinearSide HostSide(const void* p) { return {CU_MEMORYTYPE_HOST, p, 0, nullptr, 0}; }
LinearSide DeviceSide(CUdeviceptr p) { return {CU_MEMORYTYPE_DEVICE, nullptr, p, nullptr, 0}; }
LinearSide ArraySide(CUarray a, size_t offset) {
  return {CU_MEMORYTYPE_ARRAY, nullptr, 0, a, offset};
}

Status Memset(CUdeviceptr dst, size_t pitch, uint32_t value, unsigned element, size_t width,
              size_t height, CUstream stream, bool per_thread) {
  Runtime& rt = Runtime::Get();
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  if (width == 0 || height == 0) return Status::Ok();
  const size_t row_bytes = width * element;
  if (height > 1 && pitch < row_bytes) return Status::InvalidArgument("pitch smaller than the row");
  FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice2D(dst, pitch, row_bytes, height, "memset"));
  return OnOwnersServer(target, OwnerContext(dst, target.ctx), [&](const StreamTarget& on) {
    return rt.ConnectionOf(on.ctx).Post([&](wire::Call::Builder call) {
      auto args = call.initMemset();
      SetStreamTarget(args, on);
      args.setDst(dst);
      args.setPitch(pitch);
      args.setValue(value);
      args.setElementBytes(static_cast<uint8_t>(element));
      args.setWidth(width);
      args.setHeight(height);
    });
  });
}

void* AllocatePageLocked(size_t bytes) {
  // Page-aligned and zero-filled, like the driver's.
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

Status HostAlloc(void** pp, size_t bytes, unsigned flags) {
  Runtime& rt = Runtime::Get();
  if (pp == nullptr) return Status::InvalidArgument("pp is NULL");
  FERRY_RETURN_IF_ERROR(ForbidUnsafeCallDuringCapture("cuMemHostAlloc"));
  uint64_t ctx = 0;
  FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
  if (bytes == 0) return Status::InvalidArgument("size is 0");
  void* p = AllocatePageLocked(bytes);
  if (p == nullptr)
    return Status::OutOfMemory("cannot allocate " + std::to_string(bytes) +
                               " bytes of host memory");
  // Fresh memory: a stale record over it is replaced, so this cannot fail.
  FERRY_RETURN_IF_ERROR(
      rt.allocations().AddHost(p, ferry::client::HostAllocation{bytes, flags, false}));
  rt.NoteHostMemory(p, bytes);
  *pp = p;
  return Status::Ok();
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytesize) {
  return Api([&]() -> Status {
    FERRY_RETURN_IF_ERROR(ForbidUnsafeCallDuringCapture("cuMemAlloc"));
    if (dptr == nullptr) return Status::InvalidArgument("dptr is NULL");
    Runtime& rt = Runtime::Get();
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
    if (bytesize == 0) return Status::InvalidArgument("cuMemAlloc of 0 bytes");
    uint64_t result = 0;
    FERRY_RETURN_IF_ERROR(rt.AllocDevice(ctx, bytesize, &result));
    *dptr = result;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemAllocPitch_v2(CUdeviceptr* dptr, size_t* pPitch, size_t WidthInBytes,
                                    size_t Height, unsigned int ElementSizeBytes) {
  return Api([&]() -> Status {
    FERRY_RETURN_IF_ERROR(ForbidUnsafeCallDuringCapture("cuMemAllocPitch"));
    if (dptr == nullptr || pPitch == nullptr) return Status::InvalidArgument("NULL output");
    Runtime& rt = Runtime::Get();
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
    uint64_t result = 0, pitch = 0;
    FERRY_RETURN_IF_ERROR(rt.ConnectionOf(ctx).Call(
        [&](wire::Call::Builder call) {
          auto args = call.initMemAllocPitch();
          args.setCtx(ctx);
          args.setWidthBytes(WidthInBytes);
          args.setHeight(Height);
          args.setElementBytes(ElementSizeBytes);
        },
        {}, {},
        [&](wire::Reply::Reader reply) {
          result = reply.getMemAlloc().getDptr();
          pitch = reply.getMemAlloc().getPitch();
          return Status::Ok();
        }));
    if (Status recorded = rt.RecordAllocation(ctx, result, pitch * Height); !recorded.ok()) {
      (void)rt.ConnectionOf(ctx).Post(
          [&](wire::Call::Builder call) { call.initMemFree().setDptr(result); });
      return recorded;
    }
    *dptr = result;
    *pPitch = pitch;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemFree_v2(CUdeviceptr dptr) {
  return Api([&]() -> Status {
    FERRY_RETURN_IF_ERROR(ForbidUnsafeCallDuringCapture("cuMemFree"));
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    if (dptr == 0) return Status::Ok();  // freeing NULL is a no-op, as in CUDA
    const uint64_t owner = OwnerContext(dptr, rt.CurrentContextId());
    // Graph memory: the server frees it if a launch allocated it and nothing
    // freed it (an error otherwise comes with the next call that waits).
    if (!rt.allocations().IsGraphMemory(dptr)) {
      FERRY_RETURN_IF_ERROR(rt.allocations().RemoveDevice(dptr));
    }
    return rt.ConnectionOf(owner).Post(
        [&](wire::Call::Builder call) { call.initMemFree().setDptr(dptr); });
  });
}

CUresult CUDAAPI cuMemGetInfo_v2(size_t* free, size_t* total) {
  return Api([&]() -> Status {
    if (free == nullptr || total == nullptr) return Status::InvalidArgument("NULL output");
    Runtime& rt = Runtime::Get();
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
    return rt.ConnectionOf(ctx).Call(
        [&](wire::Call::Builder call) { call.initMemGetInfo().setCtx(ctx); }, {}, {},
        [&](wire::Reply::Reader reply) {
          *free = reply.getMemGetInfo().getFree();
          *total = reply.getMemGetInfo().getTotal();
          return Status::Ok();
        });
  });
}

CUresult CUDAAPI cuMemGetAddressRange_v2(CUdeviceptr* pbase, size_t* psize, CUdeviceptr dptr) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    uint64_t base = 0;
    ferry::client::DeviceAllocation allocation;
    if (!rt.allocations().FindDevice(dptr, &base, &allocation)) {
      return Status::Cuda(CUDA_ERROR_NOT_FOUND, "not inside a device allocation of this process");
    }
    if (pbase != nullptr) *pbase = base;
    if (psize != nullptr) *psize = allocation.size;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemAllocHost_v2(void** pp, size_t bytesize) {
  return Api([&] { return HostAlloc(pp, bytesize, 0); });
}

CUresult CUDAAPI cuMemHostAlloc(void** pp, size_t bytesize, unsigned int Flags) {
  return Api([&] { return HostAlloc(pp, bytesize, Flags); });
}

CUresult CUDAAPI cuMemFreeHost(void* p) {
  return Api([&]() -> Status {
    FERRY_RETURN_IF_ERROR(ForbidUnsafeCallDuringCapture("cuMemFreeHost"));
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    ferry::client::HostAllocation removed;
    FERRY_RETURN_IF_ERROR(rt.allocations().RemoveHost(p, /*registered=*/false, &removed));
    rt.ForgetHostMemory(p);
    munmap(p, removed.size);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemHostGetFlags(unsigned int* pFlags, void* p) {
  return Api([&]() -> Status {
    if (pFlags == nullptr) return Status::InvalidArgument("pFlags is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    const void* base = nullptr;
    ferry::client::HostAllocation allocation;
    if (!Runtime::Get().allocations().FindHost(p, &base, &allocation)) {
      return Status::InvalidArgument("not page-locked memory of this process");
    }
    *pFlags = allocation.flags;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemHostRegister_v2(void* p, size_t bytesize, unsigned int Flags) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
    if (p == nullptr || bytesize == 0) return Status::InvalidArgument("bad range");
    constexpr unsigned kKnownFlags = CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP |
                                     CU_MEMHOSTREGISTER_IOMEMORY | CU_MEMHOSTREGISTER_READ_ONLY;
    if ((Flags & ~kKnownFlags) != 0) {
      return Status::InvalidArgument("cuMemHostRegister: unknown flags " + std::to_string(Flags));
    }
    // PORTABLE and READ_ONLY need nothing here: the remote GPU reaches the
    // range only through copies this process performs itself. Mapping it
    // into the device is impossible across the network, and so is
    // registering I/O memory (the driver answers NOT_SUPPORTED where it
    // cannot).
    if (Flags & CU_MEMHOSTREGISTER_DEVICEMAP) {
      return Status::Unimplemented(
          "cuMemHostRegister with CU_MEMHOSTREGISTER_DEVICEMAP: host memory "
          "cannot be mapped into a remote GPU");
    }
    if (Flags & CU_MEMHOSTREGISTER_IOMEMORY) {
      return Status::Unimplemented(
          "cuMemHostRegister with CU_MEMHOSTREGISTER_IOMEMORY: I/O memory cannot be "
          "registered with a remote GPU");
    }
    if (rt.allocations().FindHost(p, nullptr, nullptr)) {
      return Status::Cuda(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, "already page-locked");
    }
    // The record makes async copies into this range asynchronous; over RDMA
    // the transport registers the range on first use and sends from it
    // without a copy (Runtime::NoteHostMemory). A range that overlaps
    // page-locked memory is refused (ALREADY_REGISTERED).
    FERRY_RETURN_IF_ERROR(
        rt.allocations().AddHost(p, ferry::client::HostAllocation{bytesize, Flags, true}));
    rt.NoteHostMemory(p, bytesize);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemHostRegister(void* p, size_t bytesize, unsigned int Flags) {
  return cuMemHostRegister_v2(p, bytesize, Flags);
}

CUresult CUDAAPI cuMemHostUnregister(void* p) {
  return Api([&]() -> Status {
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    FERRY_RETURN_IF_ERROR(Runtime::Get().allocations().RemoveHost(p, /*registered=*/true, nullptr));
    Runtime::Get().ForgetHostMemory(p);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMemHostGetDevicePointer_v2(CUdeviceptr* pdptr, void* p, unsigned int Flags) {
  return ferry::client::Unsupported(
      "cuMemHostGetDevicePointer (client host memory cannot be mapped into a remote GPU)");
}

// --- copies -----------------------------------------------------------------------

CUresult CUDAAPI cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
  return Api([&] { return CopyHostToDevice(dst, src, n, nullptr, false); });
}
CUresult CUDAAPI cuMemcpyHtoD_v2_ptds(CUdeviceptr dst, const void* src, size_t n) {
  return Api([&] { return CopyHostToDevice(dst, src, n, nullptr, true); });
}
CUresult CUDAAPI cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
  return Api([&] { return CopyHostToDevice(dst, src, n, s, false); });
}
CUresult CUDAAPI cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
  return Api([&] { return CopyHostToDevice(dst, src, n, s, true); });
}
CUresult CUDAAPI cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
  return Api([&] { return CopyDeviceToHost(dst, src, n, nullptr, false, false); });
}
CUresult CUDAAPI cuMemcpyDtoH_v2_ptds(void* dst, CUdeviceptr src, size_t n) {
  return Api([&] { return CopyDeviceToHost(dst, src, n, nullptr, true, false); });
}
CUresult CUDAAPI cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
  return Api([&] { return CopyDeviceToHost(dst, src, n, s, false, true); });
}
CUresult CUDAAPI cuMemcpyDtoHAsync_v2_ptsz(void* dst, CUdeviceptr src, size_t n, CUstream s) {
  return Api([&] { return CopyDeviceToHost(dst, src, n, s, true, true); });
}
CUresult CUDAAPI cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  return Api([&] { return CopyDeviceToDevice(dst, src, n, nullptr, false); });
}
CUresult CUDAAPI cuMemcpyDtoD_v2_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  return Api([&] { return CopyDeviceToDevice(dst, src, n, nullptr, true); });
}
CUresult CUDAAPI cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
  return Api([&] { return CopyDeviceToDevice(dst, src, n, s, false); });
}
CUresult CUDAAPI cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
  return Api([&] { return CopyDeviceToDevice(dst, src, n, s, true); });
}
CUresult CUDAAPI cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  return Api([&] { return CopyUnified(dst, src, n, nullptr, false, false); });
}
CUresult CUDAAPI cuMemcpy_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  return Api([&] { return CopyUnified(dst, src, n, nullptr, true, false); });
}
CUresult CUDAAPI cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
  return Api([&] { return CopyUnified(dst, src, n, s, false, true); });
}
CUresult CUDAAPI cuMemcpyAsync_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
  return Api([&] { return CopyUnified(dst, src, n, s, true, true); });
}
CUresult CUDAAPI cuMemcpy2D_v2(const CUDA_MEMCPY2D* p) {
  return Api([&] { return Copy2D(p, nullptr, false, false); });
}
CUresult CUDAAPI cuMemcpy2D_v2_ptds(const CUDA_MEMCPY2D* p) {
  return Api([&] { return Copy2D(p, nullptr, true, false); });
}
CUresult CUDAAPI cuMemcpy2DUnaligned_v2(const CUDA_MEMCPY2D* p) {
  return Api([&] { return Copy2D(p, nullptr, false, false); });
}
CUresult CUDAAPI cuMemcpy2DUnaligned_v2_ptds(const CUDA_MEMCPY2D* p) {
  return Api([&] { return Copy2D(p, nullptr, true, false); });
}
CUresult CUDAAPI cuMemcpy2DAsync_v2(const CUDA_MEMCPY2D* p, CUstream s) {
  return Api([&] { return Copy2D(p, s, false, true); });
}
CUresult CUDAAPI cuMemcpy2DAsync_v2_ptsz(const CUDA_MEMCPY2D* p, CUstream s) {
  return Api([&] { return Copy2D(p, s, true, true); });
}
// CUDA arrays, textures and surfaces: 3D copies and copies to and from arrays.
CUresult CUDAAPI cuMemcpy3D_v2(const CUDA_MEMCPY3D* p) {
  return Api([&] { return Copy3D(p, nullptr, false, false); });
}
CUresult CUDAAPI cuMemcpy3D_v2_ptds(const CUDA_MEMCPY3D* p) {
  return Api([&] { return Copy3D(p, nullptr, true, false); });
}
CUresult CUDAAPI cuMemcpy3DAsync_v2(const CUDA_MEMCPY3D* p, CUstream s) {
  return Api([&] { return Copy3D(p, s, false, true); });
}
CUresult CUDAAPI cuMemcpy3DAsync_v2_ptsz(const CUDA_MEMCPY3D* p, CUstream s) {
  return Api([&] { return Copy3D(p, s, true, true); });
}
#define FERRY_ARRAY_COPY(name, params, dst, src, bytes)                               \
  CUresult CUDAAPI name##_v2 params {                                                 \
    return Api([&] { return CopyArrayRow(dst, src, bytes, nullptr, false, false); }); \
  }                                                                                   \
  CUresult CUDAAPI name##_v2_ptds params {                                            \
    return Api([&] { return CopyArrayRow(dst, src, bytes, nullptr, true, false); });  \
  }
FERRY_ARRAY_COPY(cuMemcpyHtoA, (CUarray a, size_t off, const void* h, size_t n), ArraySide(a, off),
                 HostSide(h), n)
FERRY_ARRAY_COPY(cuMemcpyAtoH, (void* h, CUarray a, size_t off, size_t n), HostSide(h),
                 ArraySide(a, off), n)
FERRY_ARRAY_COPY(cuMemcpyDtoA, (CUarray a, size_t off, CUdeviceptr d, size_t n), ArraySide(a, off),
                 DeviceSide(d), n)
FERRY_ARRAY_COPY(cuMemcpyAtoD, (CUdeviceptr d, CUarray a, size_t off, size_t n), DeviceSide(d),
                 ArraySide(a, off), n)
FERRY_ARRAY_COPY(cuMemcpyAtoA, (CUarray a, size_t off, CUarray b, size_t boff, size_t n),
                 ArraySide(a, off), ArraySide(b, boff), n)
#undef FERRY_ARRAY_COPY
CUresult CUDAAPI cuMemcpyHtoAAsync_v2(CUarray a, size_t off, const void* h, size_t n, CUstream s) {
  return Api([&] { return CopyArrayRow(ArraySide(a, off), HostSide(h), n, s, false, true); });
}
CUresult CUDAAPI cuMemcpyHtoAAsync_v2_ptsz(CUarray a, size_t off, const void* h, size_t n,
                                           CUstream s) {
  return Api([&] { return CopyArrayRow(ArraySide(a, off), HostSide(h), n, s, true, true); });
}
CUresult CUDAAPI cuMemcpyAtoHAsync_v2(void* h, CUarray a, size_t off, size_t n, CUstream s) {
  return Api([&] { return CopyArrayRow(HostSide(h), ArraySide(a, off), n, s, false, true); });
}
CUresult CUDAAPI cuMemcpyAtoHAsync_v2_ptsz(void* h, CUarray a, size_t off, size_t n, CUstream s) {
  return Api([&] { return CopyArrayRow(HostSide(h), ArraySide(a, off), n, s, true, true); });
}

// --- memsets ------------------------------------------------------------------------

#define FERRY_MEMSET_1D(name, suffix, type, element, per_thread)                           \
  CUresult CUDAAPI name##suffix(CUdeviceptr dst, type value, size_t n) {                   \
    return Api([&] { return Memset(dst, 0, value, element, n, 1, nullptr, per_thread); }); \
  }
#define FERRY_MEMSET_1D_ASYNC(name, suffix, type, element, per_thread)               \
  CUresult CUDAAPI name##suffix(CUdeviceptr dst, type value, size_t n, CUstream s) { \
    return Api([&] { return Memset(dst, 0, value, element, n, 1, s, per_thread); }); \
  }
#define FERRY_MEMSET_2D(name, suffix, type, element, per_thread)                                 \
  CUresult CUDAAPI name##suffix(CUdeviceptr dst, size_t pitch, type value, size_t w, size_t h) { \
    return Api([&] { return Memset(dst, pitch, value, element, w, h, nullptr, per_thread); });   \
  }
#define FERRY_MEMSET_2D_ASYNC(name, suffix, type, element, per_thread)                         \
  CUresult CUDAAPI name##suffix(CUdeviceptr dst, size_t pitch, type value, size_t w, size_t h, \
                                CUstream s) {                                                  \
    return Api([&] { return Memset(dst, pitch, value, element, w, h, s, per_thread); });       \
  }

FERRY_MEMSET_1D(cuMemsetD8_v2, , unsigned char, 1, false)
FERRY_MEMSET_1D(cuMemsetD8_v2, _ptds, unsigned char, 1, true)
FERRY_MEMSET_1D(cuMemsetD16_v2, , unsigned short, 2, false)
FERRY_MEMSET_1D(cuMemsetD16_v2, _ptds, unsigned short, 2, true)
FERRY_MEMSET_1D(cuMemsetD32_v2, , unsigned int, 4, false)
FERRY_MEMSET_1D(cuMemsetD32_v2, _ptds, unsigned int, 4, true)
FERRY_MEMSET_1D_ASYNC(cuMemsetD8Async, , unsigned char, 1, false)
FERRY_MEMSET_1D_ASYNC(cuMemsetD8Async, _ptsz, unsigned char, 1, true)
FERRY_MEMSET_1D_ASYNC(cuMemsetD16Async, , unsigned short, 2, false)
FERRY_MEMSET_1D_ASYNC(cuMemsetD16Async, _ptsz, unsigned short, 2, true)
FERRY_MEMSET_1D_ASYNC(cuMemsetD32Async, , unsigned int, 4, false)
FERRY_MEMSET_1D_ASYNC(cuMemsetD32Async, _ptsz, unsigned int, 4, true)
FERRY_MEMSET_2D(cuMemsetD2D8_v2, , unsigned char, 1, false)
FERRY_MEMSET_2D(cuMemsetD2D8_v2, _ptds, unsigned char, 1, true)
FERRY_MEMSET_2D(cuMemsetD2D16_v2, , unsigned short, 2, false)
FERRY_MEMSET_2D(cuMemsetD2D16_v2, _ptds, unsigned short, 2, true)
FERRY_MEMSET_2D(cuMemsetD2D32_v2, , unsigned int, 4, false)
FERRY_MEMSET_2D(cuMemsetD2D32_v2, _ptds, unsigned int, 4, true)
FERRY_MEMSET_2D_ASYNC(cuMemsetD2D8Async, , unsigned char, 1, false)
FERRY_MEMSET_2D_ASYNC(cuMemsetD2D8Async, _ptsz, unsigned char, 1, true)
FERRY_MEMSET_2D_ASYNC(cuMemsetD2D16Async, , unsigned short, 2, false)
FERRY_MEMSET_2D_ASYNC(cuMemsetD2D16Async, _ptsz, unsigned short, 2, true)
FERRY_MEMSET_2D_ASYNC(cuMemsetD2D32Async, , unsigned int, 4, false)
FERRY_MEMSET_2D_ASYNC(cuMemsetD2D32Async, _ptsz, unsigned int, 4, true)

// --- pointer attributes -------------------------------------------------------------

namespace {

// `all_at_once`: for cuPointerGetAttributes, which answers every attribute of
// a known pointer, an attribute that does not apply to its kind of memory
// (the host pointer of device memory, the device pointer of host memory that
// no GPU can map) gets its null value instead of failing the whole call; the
// CUDA runtime's cudaPointerGetAttributes asks for both on every pointer.
Status PointerAttribute(void* data, CUpointer_attribute attribute, CUdeviceptr ptr,
                        bool all_at_once = false) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  if (data == nullptr) return Status::InvalidArgument("data is NULL");
  uint64_t device_base = 0;
  ferry::client::DeviceAllocation device;
  const void* host_base = nullptr;
  ferry::client::HostAllocation host;
  const bool is_device = rt.allocations().FindDevice(ptr, &device_base, &device);
  const bool is_host = !is_device && rt.allocations().FindHost(reinterpret_cast<const void*>(ptr),
                                                               &host_base, &host);
  if (!is_device && !is_host) {
    return Status::InvalidArgument(
        "pointer is not memory allocated or registered through this driver");
  }
  uint64_t ctx = is_device ? device.ctx : rt.CurrentContextId();
  int ordinal = 0;
  if (ctx != 0) (void)rt.contexts().Device(ctx, &ordinal);
  if (is_device && device.mapped) ordinal = device.device;  // a mapping belongs to no context
  switch (attribute) {
    case CU_POINTER_ATTRIBUTE_CONTEXT:
      *static_cast<CUcontext*>(data) = Runtime::ToHandle<CUcontext>(ctx);
      return Status::Ok();
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
      *static_cast<unsigned int*>(data) = is_device ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST;
      return Status::Ok();
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
      if (!is_device && !all_at_once) {
        return Status::InvalidArgument("host memory has no device pointer under ferry");
      }
      *static_cast<CUdeviceptr*>(data) = is_device ? ptr : 0;
      return Status::Ok();
    case CU_POINTER_ATTRIBUTE_HOST_POINTER:
      if (!is_host && !all_at_once) {
        return Status::InvalidArgument("device memory has no host pointer");
      }
      *static_cast<void**>(data) = is_host ? reinterpret_cast<void*>(ptr) : nullptr;
      return Status::Ok();
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
    case CU_POINTER_ATTRIBUTE_MAPPED:
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
      *static_cast<unsigned int*>(data) =
          attribute == CU_POINTER_ATTRIBUTE_MAPPED && is_device ? 1 : 0;
      return Status::Ok();
    case CU_POINTER_ATTRIBUTE_SYNC_MEMOPS:
      *static_cast<unsigned int*>(data) = 1;  // every ferry copy is ordered
      return Status::Ok();
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
      *static_cast<int*>(data) = ordinal;
      return Status::Ok();
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
      *static_cast<unsigned long long*>(data) =
          is_device ? device_base : reinterpret_cast<uintptr_t>(host_base);
      return Status::Ok();
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
      *static_cast<CUdeviceptr*>(data) =
          is_device ? device_base : reinterpret_cast<uintptr_t>(host_base);
      return Status::Ok();
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
      *static_cast<size_t*>(data) = is_device ? device.size : host.size;
      return Status::Ok();
    default:
      return Status::Unimplemented("pointer attribute " + std::to_string(attribute) +
                                   " is not supported by ferry");
  }
}

}  // namespace

CUresult CUDAAPI cuPointerGetAttribute(void* data, CUpointer_attribute attribute, CUdeviceptr ptr) {
  return Api([&] { return PointerAttribute(data, attribute, ptr); });
}

CUresult CUDAAPI cuPointerGetAttributes(unsigned int numAttributes, CUpointer_attribute* attributes,
                                        void** data, CUdeviceptr ptr) {
  return Api([&]() -> Status {
    if (attributes == nullptr || data == nullptr) return Status::InvalidArgument("NULL array");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    const bool known =
        Runtime::Get().allocations().FindDevice(ptr, nullptr, nullptr) ||
        Runtime::Get().allocations().FindHost(reinterpret_cast<const void*>(ptr), nullptr, nullptr);
    for (unsigned i = 0; i < numAttributes; ++i) {
      if (data[i] == nullptr) continue;
      if (!known) {
        // As CUDA does for memory it does not know: unregistered host memory.
        switch (attributes[i]) {
          case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
          case CU_POINTER_ATTRIBUTE_IS_MANAGED:
          case CU_POINTER_ATTRIBUTE_MAPPED:
            *static_cast<unsigned int*>(data[i]) = 0;
            continue;
          case CU_POINTER_ATTRIBUTE_CONTEXT:
            *static_cast<CUcontext*>(data[i]) = nullptr;
            continue;
          case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
            *static_cast<int*>(data[i]) = -2;
            continue;
          default:
            continue;
        }
      }
      FERRY_RETURN_IF_ERROR(PointerAttribute(data[i], attributes[i], ptr, /*all_at_once=*/true));
    }
    return Status::Ok();
  });
}

}  // extern "C"

// --- batched copies (cuMemcpyBatchAsync, cuMemcpy3DBatchAsync) -----------------
//
// A batch is checked whole before any copy is queued, so a refused batch
// queues nothing and `failIdx` (the legacy entry points) names the copy at
// fault (SIZE_MAX when the fault is not one copy's). The copies are then
// queued in the order given, on one stream, through the ordinary copy paths:
// CUDA leaves their order within the batch open, so stream order is one valid
// order. Every source access order is honoured as the strictest one (STREAM):
// host sources are read while the call runs (host-to-device bytes are taken
// at once), which also satisfies DURING_API_CALL and ANY.
namespace {

constexpr size_t kNoCopyAtFault = SIZE_MAX;

Status CheckBatchStream(CUstream stream, bool per_thread) {
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(Runtime::Get().ResolveStream(stream, per_thread, &target));
  if (target.stream == 0) {
    return Status::InvalidArgument("batched copies cannot use the legacy NULL stream");
  }
  return Status::Ok();
}

Status CheckBatchCopyFlags(CUmemcpySrcAccessOrder order, unsigned flags) {
  if (order != CU_MEMCPY_SRC_ACCESS_ORDER_STREAM &&
      order != CU_MEMCPY_SRC_ACCESS_ORDER_DURING_API_CALL &&
      order != CU_MEMCPY_SRC_ACCESS_ORDER_ANY) {
    return Status::InvalidArgument("invalid srcAccessOrder " + std::to_string(order));
  }
  if ((flags & ~static_cast<unsigned>(CU_MEMCPY_FLAG_PREFER_OVERLAP_WITH_COMPUTE)) != 0) {
    return Status::InvalidArgument("unknown copy flags " + std::to_string(flags));
  }
  return Status::Ok();
}

// One pointer of a copy: device memory the program holds (checked for
// `bytes`), else host memory, which must not be NULL.
Status CheckBatchPointer(CUdeviceptr p, size_t bytes, const char* what) {
  if (IsDevice(p)) return Runtime::Get().allocations().CheckDevice(p, bytes, what);
  if (p == 0) return Status::InvalidArgument(std::string(what) + " is NULL");
  return Status::Ok();
}

Status MemcpyBatch(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count,
                   CUmemcpyAttributes* attrs, size_t* attrs_idxs, size_t num_attrs,
                   size_t* fail_idx, CUstream stream, bool per_thread) {
  if (fail_idx != nullptr) *fail_idx = kNoCopyAtFault;
  FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
  FERRY_RETURN_IF_ERROR(CheckBatchStream(stream, per_thread));
  if (count == 0) return Status::InvalidArgument("a batch of no copies");
  if (dsts == nullptr || srcs == nullptr || sizes == nullptr || attrs == nullptr ||
      attrs_idxs == nullptr) {
    return Status::InvalidArgument("NULL array");
  }
  if (num_attrs == 0 || num_attrs > count) {
    return Status::InvalidArgument("numAttrs must be 1 to count");
  }
  if (attrs_idxs[0] != 0) return Status::InvalidArgument("attrsIdxs[0] must be 0");
  for (size_t k = 0; k < num_attrs; ++k) {
    if (k > 0 && attrs_idxs[k] <= attrs_idxs[k - 1]) {
      return Status::InvalidArgument("attrsIdxs must increase");
    }
    if (attrs_idxs[k] >= count) return Status::InvalidArgument("attrsIdxs past the batch");
    FERRY_RETURN_IF_ERROR(CheckBatchCopyFlags(attrs[k].srcAccessOrder, attrs[k].flags));
  }
  for (size_t i = 0; i < count; ++i) {
    if (sizes[i] == 0) continue;
    Status checked = CheckBatchPointer(srcs[i], sizes[i], "source");
    if (checked.ok()) checked = CheckBatchPointer(dsts[i], sizes[i], "destination");
    if (!checked.ok()) {
      if (fail_idx != nullptr) *fail_idx = i;
      return Status::Cuda(checked.cuda_result(),
                          "copy " + std::to_string(i) + ": " + checked.message());
    }
  }
  for (size_t i = 0; i < count; ++i) {
    Status queued = CopyUnified(dsts[i], srcs[i], sizes[i], stream, per_thread, true);
    if (!queued.ok()) {
      if (fail_idx != nullptr) *fail_idx = i;
      return queued;
    }
  }
  return Status::Ok();
}

// One operand of a 3D batch copy as a side of a CUDA_MEMCPY3D; `element` is
// the copy's element size in bytes.
void SetBatchOperand(const CUmemcpy3DOperand& operand, const CUextent3D& extent, size_t element,
                     bool source, CUDA_MEMCPY3D* m) {
  CUmemorytype type = CU_MEMORYTYPE_UNIFIED;
  CUdeviceptr device = 0;
  CUarray array = nullptr;
  size_t x = 0, y = 0, z = 0, pitch = 0, rows = 0;
  if (operand.type == CU_MEMCPY_OPERAND_TYPE_ARRAY) {
    type = CU_MEMORYTYPE_ARRAY;
    array = operand.op.array.array;
    x = operand.op.array.offset.x * element;
    y = operand.op.array.offset.y;
    z = operand.op.array.offset.z;
  } else {
    device = operand.op.ptr.ptr;
    pitch = (operand.op.ptr.rowLength != 0 ? operand.op.ptr.rowLength : extent.width) * element;
    rows = operand.op.ptr.layerHeight != 0 ? operand.op.ptr.layerHeight : extent.height;
  }
  if (source) {
    m->srcMemoryType = type, m->srcDevice = device, m->srcArray = array;
    m->srcXInBytes = x, m->srcY = y, m->srcZ = z, m->srcPitch = pitch, m->srcHeight = rows;
  } else {
    m->dstMemoryType = type, m->dstDevice = device, m->dstArray = array;
    m->dstXInBytes = x, m->dstY = y, m->dstZ = z, m->dstPitch = pitch, m->dstHeight = rows;
  }
}

// The element size of an array operand (0 for a pointer).
Status OperandElementBytes(const CUmemcpy3DOperand& operand, size_t* element) {
  *element = 0;
  if (operand.type == CU_MEMCPY_OPERAND_TYPE_POINTER) return Status::Ok();
  if (operand.type != CU_MEMCPY_OPERAND_TYPE_ARRAY) {
    return Status::InvalidArgument("unknown operand type " + std::to_string(operand.type));
  }
  ferry::client::ArrayRecord record;
  FERRY_RETURN_IF_ERROR(
      Runtime::Get().arrays().Find(Runtime::HandleId(operand.op.array.array), &record));
  *element = record.element_bytes;
  return Status::Ok();
}

// `op` as a CUDA_MEMCPY3D, checked as cuMemcpy3DBatchAsync checks it.
Status BatchOpAs3D(const CUDA_MEMCPY3D_BATCH_OP& op, CUDA_MEMCPY3D* m) {
  FERRY_RETURN_IF_ERROR(CheckBatchCopyFlags(op.srcAccessOrder, op.flags));
  const CUextent3D& e = op.extent;
  if (e.width == 0 || e.height == 0 || e.depth == 0) {
    return Status::InvalidArgument("an extent of 0");
  }
  size_t src_element = 0, dst_element = 0;
  FERRY_RETURN_IF_ERROR(OperandElementBytes(op.src, &src_element));
  FERRY_RETURN_IF_ERROR(OperandElementBytes(op.dst, &dst_element));
  if (src_element != 0 && dst_element != 0 && src_element != dst_element) {
    return Status::InvalidArgument("the two arrays' element sizes differ");
  }
  // Pointer to pointer: bytes; with an array: the array's elements.
  const size_t element = std::max<size_t>({src_element, dst_element, 1});
  for (const CUmemcpy3DOperand* operand : {&op.src, &op.dst}) {
    if (operand->type != CU_MEMCPY_OPERAND_TYPE_POINTER) continue;
    if (operand->op.ptr.rowLength != 0 && operand->op.ptr.rowLength < e.width) {
      return Status::InvalidArgument("rowLength smaller than the copy's width");
    }
    if (operand->op.ptr.layerHeight != 0 && operand->op.ptr.layerHeight < e.height) {
      return Status::InvalidArgument("layerHeight smaller than the copy's height");
    }
  }
  size_t width_bytes = 0;
  if (__builtin_mul_overflow(e.width, element, &width_bytes)) {
    return Status::InvalidArgument("copy extent overflows");
  }
  std::memset(m, 0, sizeof(*m));
  SetBatchOperand(op.src, e, element, true, m);
  SetBatchOperand(op.dst, e, element, false, m);
  m->WidthInBytes = width_bytes;
  m->Height = e.height;
  m->Depth = e.depth;
  CopySide side;
  FERRY_RETURN_IF_ERROR(ResolveCopySide(
      m->srcMemoryType, nullptr, m->srcDevice, m->srcArray, m->srcXInBytes, m->srcY, m->srcZ, 0,
      m->srcPitch, m->srcHeight, width_bytes, e.height, e.depth, "source", &side));
  return ResolveCopySide(m->dstMemoryType, nullptr, m->dstDevice, m->dstArray, m->dstXInBytes,
                         m->dstY, m->dstZ, 0, m->dstPitch, m->dstHeight, width_bytes, e.height,
                         e.depth, "destination", &side);
}

Status Memcpy3DBatch(size_t num_ops, CUDA_MEMCPY3D_BATCH_OP* ops, size_t* fail_idx,
                     unsigned long long flags, CUstream stream, bool per_thread) {
  if (fail_idx != nullptr) *fail_idx = kNoCopyAtFault;
  FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
  FERRY_RETURN_IF_ERROR(CheckBatchStream(stream, per_thread));
  if (flags != 0) return Status::InvalidArgument("cuMemcpy3DBatchAsync flags must be 0");
  if (num_ops == 0) return Status::InvalidArgument("a batch of no copies");
  if (ops == nullptr) return Status::InvalidArgument("opList is NULL");
  std::vector<CUDA_MEMCPY3D> copies(num_ops);
  for (size_t i = 0; i < num_ops; ++i) {
    Status checked = BatchOpAs3D(ops[i], &copies[i]);
    if (!checked.ok()) {
      if (fail_idx != nullptr) *fail_idx = i;
      return Status::Cuda(checked.cuda_result(),
                          "copy " + std::to_string(i) + ": " + checked.message());
    }
  }
  for (size_t i = 0; i < num_ops; ++i) {
    Status queued = Copy3D(&copies[i], stream, per_thread, true);
    if (!queued.ok()) {
      if (fail_idx != nullptr) *fail_idx = i;
      return queued;
    }
  }
  return Status::Ok();
}

}  // namespace

CUresult CUDAAPI cuMemcpyBatchAsync_v2(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes,
                                       size_t count, CUmemcpyAttributes* attrs, size_t* attrsIdxs,
                                       size_t numAttrs, CUstream hStream) {
  return Api([&] {
    return MemcpyBatch(dsts, srcs, sizes, count, attrs, attrsIdxs, numAttrs, nullptr, hStream,
                       false);
  });
}
CUresult CUDAAPI cuMemcpyBatchAsync_v2_ptsz(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes,
                                            size_t count, CUmemcpyAttributes* attrs,
                                            size_t* attrsIdxs, size_t numAttrs, CUstream hStream) {
  return Api([&] {
    return MemcpyBatch(dsts, srcs, sizes, count, attrs, attrsIdxs, numAttrs, nullptr, hStream,
                       true);
  });
}
CUresult CUDAAPI cuMemcpyBatchAsync(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes,
                                    size_t count, CUmemcpyAttributes* attrs, size_t* attrsIdxs,
                                    size_t numAttrs, size_t* failIdx, CUstream hStream) {
  return Api([&] {
    return MemcpyBatch(dsts, srcs, sizes, count, attrs, attrsIdxs, numAttrs, failIdx, hStream,
                       false);
  });
}
CUresult CUDAAPI cuMemcpyBatchAsync_ptsz(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes,
                                         size_t count, CUmemcpyAttributes* attrs, size_t* attrsIdxs,
                                         size_t numAttrs, size_t* failIdx, CUstream hStream) {
  return Api([&] {
    return MemcpyBatch(dsts, srcs, sizes, count, attrs, attrsIdxs, numAttrs, failIdx, hStream,
                       true);
  });
}
CUresult CUDAAPI cuMemcpy3DBatchAsync_v2(size_t numOps, CUDA_MEMCPY3D_BATCH_OP* opList,
                                         unsigned long long flags, CUstream hStream) {
  return Api([&] { return Memcpy3DBatch(numOps, opList, nullptr, flags, hStream, false); });
}
CUresult CUDAAPI cuMemcpy3DBatchAsync_v2_ptsz(size_t numOps, CUDA_MEMCPY3D_BATCH_OP* opList,
                                              unsigned long long flags, CUstream hStream) {
  return Api([&] { return Memcpy3DBatch(numOps, opList, nullptr, flags, hStream, true); });
}
CUresult CUDAAPI cuMemcpy3DBatchAsync(size_t numOps, CUDA_MEMCPY3D_BATCH_OP* opList,
                                      size_t* failIdx, unsigned long long flags, CUstream hStream) {
  return Api([&] { return Memcpy3DBatch(numOps, opList, failIdx, flags, hStream, false); });
}
CUresult CUDAAPI cuMemcpy3DBatchAsync_ptsz(size_t numOps, CUDA_MEMCPY3D_BATCH_OP* opList,
                                           size_t* failIdx, unsigned long long flags,
                                           CUstream hStream) {
  return Api([&] { return Memcpy3DBatch(numOps, opList, failIdx, flags, hStream, true); });
}
