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

#include <cstdlib>
#include <cstring>
#include <vector>

#include "client/entry_point.h"

using ferry::client::InBytes;
using ferry::client::OutBytes;

namespace {

Status CopyHostToDevice(CUdeviceptr dst, const void* src, size_t bytes, CUstream stream,
                        bool per_thread) {
  Runtime& rt = Runtime::Get();
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  if (bytes == 0) return Status::Ok();
  if (src == nullptr) return Status::InvalidArgument("source is NULL");
  FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice(dst, bytes, "destination"));
  return rt.connection().Post(
      [&](wire::Call::Builder call) {
        auto args = call.initMemcpyHtoD();
        SetStreamTarget(args, target);
        args.setDst(dst);
        args.setBytes(bytes);
      },
      OutBytes{src, bytes});
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
  auto fill = [&](wire::Call::Builder call) {
    auto args = call.initMemcpyDtoH();
    SetStreamTarget(args, target);
    args.setSrc(src);
    args.setBytes(bytes);
  };
  const void* base = nullptr;
  ferry::client::HostAllocation pinned;
  const bool page_locked =
      rt.allocations().FindHost(dst, &base, &pinned) &&
      bytes <= pinned.size - (static_cast<const char*>(dst) - static_cast<const char*>(base));
  if (async && page_locked) {
    return rt.connection().PostExpectingBytes(fill, InBytes{dst, bytes},
                                              ferry::client::StreamKey{target.ctx, target.stream});
  }
  return rt.connection().Call(fill, {}, InBytes{dst, bytes});
}

Status CopyDeviceToDevice(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream,
                          bool per_thread) {
  Runtime& rt = Runtime::Get();
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  if (bytes == 0) return Status::Ok();
  FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice(src, bytes, "source"));
  FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice(dst, bytes, "destination"));
  return rt.connection().Post([&](wire::Call::Builder call) {
    auto args = call.initMemcpyDtoD();
    SetStreamTarget(args, target);
    args.setDst(dst);
    args.setSrc(src);
    args.setBytes(bytes);
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

Status Copy2D(const CUDA_MEMCPY2D* p, CUstream stream, bool per_thread, bool async) {
  Runtime& rt = Runtime::Get();
  if (p == nullptr) return Status::InvalidArgument("pCopy is NULL");
  if (p->srcMemoryType == CU_MEMORYTYPE_ARRAY || p->dstMemoryType == CU_MEMORYTYPE_ARRAY) {
    return Status::Unimplemented("2D copies to or from CUDA arrays are not supported by ferry");
  }
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  const size_t width = p->WidthInBytes;
  const size_t height = p->Height;
  if (width == 0 || height == 0) return Status::Ok();
  const bool src_host = IsHostSide(p->srcMemoryType, p->srcDevice, p->srcHost);
  const bool dst_host = IsHostSide(p->dstMemoryType, p->dstDevice, p->dstHost);
  if ((height > 1 && (p->srcPitch < width || p->dstPitch < width))) {
    return Status::InvalidArgument("pitch smaller than WidthInBytes");
  }
  // Start addresses after the X/Y offsets.
  const char* src_host_start =
      static_cast<const char*>(p->srcMemoryType == CU_MEMORYTYPE_UNIFIED
                                   ? reinterpret_cast<const void*>(p->srcDevice)
                                   : p->srcHost) +
      p->srcY * p->srcPitch + p->srcXInBytes;
  char* dst_host_start = static_cast<char*>(p->dstMemoryType == CU_MEMORYTYPE_UNIFIED
                                                ? reinterpret_cast<void*>(p->dstDevice)
                                                : p->dstHost) +
                         p->dstY * p->dstPitch + p->dstXInBytes;
  const CUdeviceptr src_device = p->srcDevice + p->srcY * p->srcPitch + p->srcXInBytes;
  const CUdeviceptr dst_device = p->dstDevice + p->dstY * p->dstPitch + p->dstXInBytes;
  if (src_host && dst_host) {
    for (size_t row = 0; row < height; ++row) {
      std::memmove(dst_host_start + row * p->dstPitch, src_host_start + row * p->srcPitch, width);
    }
    return Status::Ok();
  }
  if (!src_host) {
    FERRY_RETURN_IF_ERROR(
        rt.allocations().CheckDevice2D(src_device, p->srcPitch, width, height, "source"));
  }
  if (!dst_host) {
    FERRY_RETURN_IF_ERROR(
        rt.allocations().CheckDevice2D(dst_device, p->dstPitch, width, height, "destination"));
  }
  auto fill = [&](wire::Call::Builder call) {
    auto args = call.initMemcpy2D();
    SetStreamTarget(args, target);
    args.setSrcKind(src_host ? wire::MemoryKind::HOST : wire::MemoryKind::DEVICE);
    args.setSrcDevice(src_host ? 0 : src_device);
    args.setSrcPitch(src_host ? width : p->srcPitch);
    args.setDstKind(dst_host ? wire::MemoryKind::HOST : wire::MemoryKind::DEVICE);
    args.setDstDevice(dst_host ? 0 : dst_device);
    args.setDstPitch(dst_host ? width : p->dstPitch);
    args.setWidthBytes(width);
    args.setHeight(height);
  };
  // Host rows travel packed (pitch = width).
  if (src_host) {
    if (p->srcPitch == width) {
      return rt.connection().Post(fill, OutBytes{src_host_start, width * height});
    }
    std::vector<char> packed(width * height);
    for (size_t row = 0; row < height; ++row) {
      std::memcpy(packed.data() + row * width, src_host_start + row * p->srcPitch, width);
    }
    return rt.connection().Post(fill, OutBytes{packed.data(), packed.size()});
  }
  if (dst_host) {
    // Performed synchronously, async or not: the rows must be unpacked here.
    (void)async;
    if (p->dstPitch == width) {
      return rt.connection().Call(fill, {}, InBytes{dst_host_start, width * height});
    }
    std::vector<char> packed(width * height);
    FERRY_RETURN_IF_ERROR(rt.connection().Call(fill, {}, InBytes{packed.data(), packed.size()}));
    for (size_t row = 0; row < height; ++row) {
      std::memcpy(dst_host_start + row * p->dstPitch, packed.data() + row * width, width);
    }
    return Status::Ok();
  }
  return rt.connection().Post(fill);
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
  return rt.connection().Post([&](wire::Call::Builder call) {
    auto args = call.initMemset();
    SetStreamTarget(args, target);
    args.setDst(dst);
    args.setPitch(pitch);
    args.setValue(value);
    args.setElementBytes(static_cast<uint8_t>(element));
    args.setWidth(width);
    args.setHeight(height);
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
    FERRY_RETURN_IF_ERROR(rt.connection().Call(
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
    rt.allocations().AddDevice(result, pitch * Height, ctx);
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
    FERRY_RETURN_IF_ERROR(rt.allocations().RemoveDevice(dptr));
    return rt.connection().Post(
        [&](wire::Call::Builder call) { call.initMemFree().setDptr(dptr); });
  });
}

CUresult CUDAAPI cuMemGetInfo_v2(size_t* free, size_t* total) {
  return Api([&]() -> Status {
    if (free == nullptr || total == nullptr) return Status::InvalidArgument("NULL output");
    Runtime& rt = Runtime::Get();
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
    return rt.connection().Call(
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
    // Nothing to pin locally: the bytes cross the network either way. The
    // record makes async copies into this range asynchronous. A range that
    // overlaps page-locked memory is refused (ALREADY_REGISTERED).
    return rt.allocations().AddHost(p, ferry::client::HostAllocation{bytesize, Flags, true});
  });
}

CUresult CUDAAPI cuMemHostRegister(void* p, size_t bytesize, unsigned int Flags) {
  return cuMemHostRegister_v2(p, bytesize, Flags);
}

CUresult CUDAAPI cuMemHostUnregister(void* p) {
  return Api([&]() -> Status {
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    return Runtime::Get().allocations().RemoveHost(p, /*registered=*/true, nullptr);
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
