// A fake libcuda.so.1 for cuda_backend_test, so the loader and CudaBackend's
// call sequences run on a machine without a GPU.
//
// Built in several variants (compile definitions):
//   FAKE_DEVICE_COUNT    devices cuDeviceGetCount reports (default 1)
//   FAKE_DRIVER_VERSION  what cuDriverGetVersion reports (default 13000)
//   FAKE_FERRY           also export cuFerryClientIdentity (ferry's marker)
//   FAKE_FULL            implement every entry point CudaBackend uses, with
//                        host memory as "device" memory and one in-order
//                        worker thread as the GPU, and virtual memory
//                        management (2 MiB granularity, 1 GiB a device
//                        unless fake_set_vmm_limit says otherwise);
//                        otherwise only the bootstrap entry points exist
//   FAKE_GREEN           (with FAKE_FULL) also the green-context entry points:
//                        each device has FAKE_SM_COUNT SMs (default 132), a
//                        minimum partition of 8 and an alignment of 8, like
//                        the CUDA docs' guideline for compute capability 9.0
// Every entry point is defined under its cuda.h name, so it gets the exact
// versioned export name and prototype (cuCtxCreate defines cuCtxCreate_v4).
// cuGetProcAddress answers like NVIDIA's CUDA 13 driver: with the newest
// variant at or below the version asked for, among every variant
// cudaTypedefs.h lists (fake_variants.inc, generated from it at configure
// time). The entry points it implements come from the backend's own list
// (server/backend/cuda/driver_entry_points.h), so a request for a variant
// the fake does not implement fails (and is counted) instead of handing back
// a function of another prototype.
//
// Like the real driver, the fake checks that a context is current on the
// calling thread and that a stream belongs to it, so the backend's
// make-current logic is exercised, and it calls stream callbacks on its own
// thread. Test hooks (fake_*) let the test pause the "GPU", inject a sticky
// error, and inspect what the backend asked for.
//
// Thread-safety: every entry point may be called from any thread.
#include <cuda.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "server/backend/cuda/driver_entry_points.h"

#ifndef FAKE_DEVICE_COUNT
#define FAKE_DEVICE_COUNT 1
#endif
#ifndef FAKE_DRIVER_VERSION
#define FAKE_DRIVER_VERSION 13000
#endif
#ifndef FAKE_SM_COUNT
#define FAKE_SM_COUNT 132
#endif

#define FAKE_HOOK extern "C" __attribute__((visibility("default")))

namespace {

std::atomic<int> g_init_calls{0};
std::atomic<int> g_proc_address_calls{0};
std::atomic<int> g_last_proc_version{0};
std::atomic<unsigned long long> g_last_proc_flags{~0ull};
std::atomic<int> g_unimplemented_variant_requests{0};

}  // namespace

#ifdef FAKE_FERRY
FAKE_HOOK const char* cuFerryClientIdentity() { return "ferry fake"; }
#endif

FAKE_HOOK int fake_init_calls() { return g_init_calls.load(); }
FAKE_HOOK int fake_proc_address_calls() { return g_proc_address_calls.load(); }
FAKE_HOOK int fake_last_proc_version() { return g_last_proc_version.load(); }
// Requests for a variant the fake does not implement (see cuGetProcAddress).
FAKE_HOOK int fake_unimplemented_variant_requests() {
  return g_unimplemented_variant_requests.load();
}
FAKE_HOOK unsigned long long fake_last_proc_flags() { return g_last_proc_flags.load(); }

CUresult cuInit(unsigned int flags) {
  ++g_init_calls;
  return flags == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuDriverGetVersion(int* version) {
  *version = FAKE_DRIVER_VERSION;
  return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char** name) {
  switch (error) {
    case CUDA_SUCCESS:
      *name = "CUDA_SUCCESS";
      return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_VALUE:
      *name = "CUDA_ERROR_INVALID_VALUE";
      return CUDA_SUCCESS;
    case CUDA_ERROR_NOT_READY:
      *name = "CUDA_ERROR_NOT_READY";
      return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_CONTEXT:
      *name = "CUDA_ERROR_INVALID_CONTEXT";
      return CUDA_SUCCESS;
    default:
      *name = nullptr;
      return CUDA_ERROR_INVALID_VALUE;
  }
}

CUresult cuGetErrorString(CUresult error, const char** text) {
  *text = error == CUDA_ERROR_INVALID_CONTEXT ? "fake: no current context" : "fake error";
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int* count) {
  *count = FAKE_DEVICE_COUNT;
  return CUDA_SUCCESS;
}

#if FAKE_FULL
namespace {

// --- the "GPU": one in-order worker for every stream -----------------------
class Gpu {
 public:
  void Push(std::function<void()> op) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_) {
      started_ = true;
      std::thread([this] { Loop(); }).detach();
    }
    queue_.push_back(std::move(op));
    wake_.notify_all();
  }
  void Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [this] { return queue_.empty() && !busy_; });
  }
  bool Idle() {
    std::lock_guard<std::mutex> lock(mu_);
    return queue_.empty() && !busy_;
  }
  void SetPaused(bool paused) {
    std::lock_guard<std::mutex> lock(mu_);
    paused_ = paused;
    wake_.notify_all();
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [this] { return !paused_ && !queue_.empty(); });
      std::function<void()> op = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      op();
      lock.lock();
      busy_ = false;
      if (queue_.empty()) idle_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable wake_, idle_;
  std::deque<std::function<void()>> queue_;
  bool busy_ = false, paused_ = false, started_ = false;
};

Gpu& TheGpu() {
  static Gpu* gpu = new Gpu();  // never destroyed: its thread outlives main
  return *gpu;
}

std::atomic<int> g_sticky_error{CUDA_SUCCESS};
std::atomic<bool> g_drop_callbacks{false};
// Deferred stream callbacks: held back until the test runs them, e.g. after
// their context is destroyed (nothing in the driver's contract forbids that).
std::atomic<bool> g_defer_callbacks{false};
std::mutex g_deferred_mu;
std::vector<std::function<void()>> g_deferred;  // guarded by g_deferred_mu
std::atomic<int> g_live_objects{0};
std::atomic<int> g_last_priority{0};
std::atomic<size_t> g_last_image_length{0};

struct FakeCtx {
  CUdevice device;
  std::mutex mu;
  std::map<int, size_t> limits;
  // A green context's converted context: its SMs are [first_sm, first_sm +
  // sm_count) of the device.
  bool green = false;
  unsigned first_sm = 0, sm_count = 0;
};
// A green context. The CUgreenCtx handle and the CUcontext that
// cuCtxFromGreenCtx returns are different pointers, as in the real driver,
// so a backend that confuses them is caught.
struct FakeGreenCtx {
  int magic = 0x67726e;
  FakeCtx ctx;
};
struct FakeStream {
  FakeCtx* ctx;
};
struct FakeEvent {
  FakeCtx* ctx;
  std::atomic<bool> done{true};
};
struct FakeFunction {
  const char* name;
  std::vector<std::pair<size_t, size_t>> params;  // offset, size
  std::map<int, int> attributes;
  int cache_config = 0;
};
struct FakeModule {
  FakeCtx* ctx;
  FakeFunction functions[2] = {{"fake_fill", {{0, 8}, {8, 4}, {12, 4}}, {}, 0},
                               {"fake_noargs", {}, {}, 0}};
};
struct LaunchRecord {
  unsigned grid[3], block[3], shared, num_attrs, cluster[3], cooperative;
  size_t params_size;
};
std::mutex g_launch_mu;
LaunchRecord g_last_launch;
alignas(16) unsigned char g_global[64];

thread_local std::vector<CUcontext> t_stack;

FakeCtx* Current() {
  return t_stack.empty() ? nullptr : reinterpret_cast<FakeCtx*>(t_stack.back());
}

CUresult Sticky() { return static_cast<CUresult>(g_sticky_error.load()); }

// A stream is usable when a context is current and the stream is that
// context's (the legacy stream always is).
CUresult CheckStream(CUstream stream) {
  FakeCtx* ctx = Current();
  if (ctx == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  if (stream == nullptr || stream == CU_STREAM_LEGACY) return CUDA_SUCCESS;
  return reinterpret_cast<FakeStream*>(stream)->ctx == ctx ? CUDA_SUCCESS
                                                           : CUDA_ERROR_INVALID_CONTEXT;
}

#define FAKE_NEED_CONTEXT() \
  if (Current() == nullptr) return CUDA_ERROR_INVALID_CONTEXT
#define FAKE_NEED_STREAM(s) \
  if (CUresult r_ = CheckStream(s); r_ != CUDA_SUCCESS) return r_

}  // namespace

FAKE_HOOK void fake_set_paused(bool paused) { TheGpu().SetPaused(paused); }
FAKE_HOOK void fake_set_sticky_error(int error) { g_sticky_error = error; }
FAKE_HOOK void fake_set_drop_callbacks(bool drop) { g_drop_callbacks = drop; }
FAKE_HOOK void fake_set_defer_callbacks(bool defer) { g_defer_callbacks = defer; }
// cuMemcpyDtoHAsync calls into pageable memory (which return only when done).
FAKE_HOOK int fake_pageable_async_copies();
// Runs the deferred callbacks on the calling thread; returns how many.
FAKE_HOOK int fake_run_deferred_callbacks() {
  std::vector<std::function<void()>> deferred;
  {
    std::lock_guard<std::mutex> lock(g_deferred_mu);
    deferred.swap(g_deferred);
  }
  for (auto& callback : deferred) callback();
  return static_cast<int>(deferred.size());
}
FAKE_HOOK int fake_live_objects() { return g_live_objects.load(); }
FAKE_HOOK void* fake_current_context() { return Current(); }
FAKE_HOOK int fake_last_priority() { return g_last_priority.load(); }
FAKE_HOOK size_t fake_last_image_length() { return g_last_image_length.load(); }
// out: grid[3], block[3], shared, num_attrs, cluster[3]
FAKE_HOOK void fake_last_launch(unsigned out[12], size_t* params_size) {
  std::lock_guard<std::mutex> lock(g_launch_mu);
  const LaunchRecord& l = g_last_launch;
  const unsigned values[12] = {l.grid[0],    l.grid[1],    l.grid[2],    l.block[0],
                               l.block[1],   l.block[2],   l.shared,     l.num_attrs,
                               l.cluster[0], l.cluster[1], l.cluster[2], l.cooperative};
  std::memcpy(out, values, sizeof(values));
  *params_size = l.params_size;
}

// --- devices ----------------------------------------------------------------
CUresult cuDeviceGet(CUdevice* device, int ordinal) {
  if (ordinal < 0 || ordinal >= FAKE_DEVICE_COUNT) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal;
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int length, CUdevice device) {
  std::string value = "Fake GPU " + std::to_string(device);
  std::strncpy(name, value.c_str(), static_cast<size_t>(length));
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetUuid(CUuuid* uuid, CUdevice device) {
  for (int i = 0; i < 16; ++i) uuid->bytes[i] = static_cast<char>(i + 16 * device);
  return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem(size_t* bytes, CUdevice device) {
  *bytes = (size_t{2} << 30) + device;
  return CUDA_SUCCESS;
}
// Attributes 1..99 are "known" (value 10 * attribute + device); the rest are
// rejected like retired or future ones, except that a full fake supports
// virtual memory management.
CUresult cuDeviceGetAttribute(int* value, CUdevice_attribute attribute, CUdevice device) {
#if FAKE_FULL
  if (attribute == CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED) {
    *value = 1;  // the fake's virtual memory management calls below
    return CUDA_SUCCESS;
  }
#endif
  if (attribute <= 0 || attribute >= 100) return CUDA_ERROR_INVALID_VALUE;
  *value = 10 * static_cast<int>(attribute) + device;
  return CUDA_SUCCESS;
}

// --- contexts ---------------------------------------------------------------
// Every live context (plain, and green contexts' converted ones), so that an
// entry point taking a context can refuse a value that is not one, as the
// driver does, instead of dereferencing it.
namespace {
std::mutex g_contexts_mu;
std::set<CUcontext> g_contexts;  // guarded by g_contexts_mu
void AddLiveContext(CUcontext context) {
  std::lock_guard<std::mutex> lock(g_contexts_mu);
  g_contexts.insert(context);
}
void RemoveLiveContext(CUcontext context) {
  std::lock_guard<std::mutex> lock(g_contexts_mu);
  g_contexts.erase(context);
}
bool LiveContext(CUcontext context) {
  std::lock_guard<std::mutex> lock(g_contexts_mu);
  return g_contexts.count(context) != 0;
}
}  // namespace

CUresult cuCtxCreate(CUcontext* context, CUctxCreateParams* params, unsigned int flags,
                     CUdevice device) {
  if (params != nullptr) return CUDA_ERROR_INVALID_VALUE;  // the backend passes none
  if (device < 0 || device >= FAKE_DEVICE_COUNT) return CUDA_ERROR_INVALID_DEVICE;
  auto* ctx = new FakeCtx{device, {}, {}};
  ++g_live_objects;
  *context = reinterpret_cast<CUcontext>(ctx);
  AddLiveContext(*context);
  t_stack.push_back(*context);
  return CUDA_SUCCESS;
}
CUresult cuCtxPopCurrent(CUcontext* context) {
  if (t_stack.empty()) return CUDA_ERROR_INVALID_CONTEXT;
  if (context != nullptr) *context = t_stack.back();
  t_stack.pop_back();
  return CUDA_SUCCESS;
}
CUresult cuCtxSetCurrent(CUcontext context) {
  if (t_stack.empty()) {
    if (context != nullptr) t_stack.push_back(context);
  } else if (context == nullptr) {
    t_stack.pop_back();
  } else {
    t_stack.back() = context;
  }
  return CUDA_SUCCESS;
}
CUresult cuCtxDestroy(CUcontext context) {
  // A green context's converted context is the primary context with the
  // green context's resources: only cuGreenCtxDestroy may end it.
  if (reinterpret_cast<FakeCtx*>(context)->green) return CUDA_ERROR_INVALID_CONTEXT;
  TheGpu().Drain();
  if (!t_stack.empty() && t_stack.back() == context) t_stack.pop_back();
  RemoveLiveContext(context);
  delete reinterpret_cast<FakeCtx*>(context);
  --g_live_objects;
  return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize() {
  FAKE_NEED_CONTEXT();
  TheGpu().Drain();
  return Sticky();
}
// The CUDA 13 variant (what cuGetProcAddress returns for version 13000): the
// context is an argument; null means the current one. Like the driver, a
// value that is not a live context is CUDA_ERROR_INVALID_CONTEXT.
CUresult cuCtxSynchronize_v2(CUcontext context) {
  if (context == nullptr) return cuCtxSynchronize();
  if (!LiveContext(context)) return CUDA_ERROR_INVALID_CONTEXT;
  TheGpu().Drain();
  return Sticky();
}
CUresult cuCtxGetLimit(size_t* value, CUlimit limit) {
  FAKE_NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(Current()->mu);
  *value = Current()->limits[limit];
  return CUDA_SUCCESS;
}
CUresult cuCtxSetLimit(CUlimit limit, size_t value) {
  FAKE_NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(Current()->mu);
  Current()->limits[limit] = value;
  return CUDA_SUCCESS;
}

// --- memory -----------------------------------------------------------------
CUresult cuMemAlloc(CUdeviceptr* pointer, size_t bytes) {
  FAKE_NEED_CONTEXT();
  *pointer = reinterpret_cast<CUdeviceptr>(std::malloc(bytes == 0 ? 1 : bytes));
  ++g_live_objects;
  return CUDA_SUCCESS;
}
CUresult cuMemAllocPitch(CUdeviceptr* pointer, size_t* pitch, size_t width, size_t height,
                         unsigned int element_bytes) {
  FAKE_NEED_CONTEXT();
  if (element_bytes != 4 && element_bytes != 8 && element_bytes != 16) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  *pitch = (width + 255) & ~size_t{255};
  *pointer = reinterpret_cast<CUdeviceptr>(std::malloc(*pitch * height));
  ++g_live_objects;
  return CUDA_SUCCESS;
}
CUresult cuMemFree(CUdeviceptr pointer) {
  FAKE_NEED_CONTEXT();
  TheGpu().Drain();  // like cudaFree
  std::free(reinterpret_cast<void*>(pointer));
  --g_live_objects;
  return CUDA_SUCCESS;
}
// --- virtual memory management -------------------------------------------------
// Like the driver: a reservation is a range of addresses nothing can touch
// (an inaccessible anonymous mapping), physical memory is a memfd of a
// granularity multiple, cuMemMap puts it into a reservation (still
// inaccessible), cuMemSetAccess makes it readable and writable, cuMemUnmap
// turns the range back into a bare reservation, and the memory itself goes
// when it is released and no mapping holds it. A stray touch of an unmapped
// or parked range faults, as on the GPU. Each device has room for
// g_vmm_limit bytes of physical memory (fake_set_vmm_limit); past it
// cuMemCreate is CUDA_ERROR_OUT_OF_MEMORY, and cuMemGetInfo's free bytes
// are what is left. cuMemAlloc'ed memory is not counted.
namespace {
constexpr size_t kFakeGranularity = size_t{2} << 20;  // like the driver's, for pinned device memory
struct FakePhysical {
  int fd = -1;
  size_t bytes = 0;
  int device = 0;
  int mappings = 0;
  bool released = false;
};
struct FakeMapping {
  size_t bytes = 0;
  CUmemGenericAllocationHandle handle = 0;
};
std::mutex g_vmm_mu;
std::map<CUmemGenericAllocationHandle, FakePhysical> g_physical;  // guarded by g_vmm_mu
std::map<CUdeviceptr, size_t> g_reservations;                     // guarded by g_vmm_mu
std::map<CUdeviceptr, FakeMapping> g_mappings;                    // guarded by g_vmm_mu
std::map<int, size_t> g_vmm_used;                                 // by device; g_vmm_mu
size_t g_vmm_limit = size_t{1} << 30;                             // guarded by g_vmm_mu
CUmemGenericAllocationHandle g_next_physical = 1;                 // guarded by g_vmm_mu
std::atomic<int> g_vmm_creates{0};

// The physical memory's bytes go once nothing holds them (g_vmm_mu held).
void MaybeDropPhysical(CUmemGenericAllocationHandle handle) {
  auto it = g_physical.find(handle);
  if (it == g_physical.end() || !it->second.released || it->second.mappings > 0) return;
  close(it->second.fd);
  g_vmm_used[it->second.device] -= it->second.bytes;
  g_physical.erase(it);
}
// The reservation that holds [address, address + bytes), or end().
std::map<CUdeviceptr, size_t>::iterator ReservationOf(CUdeviceptr address, size_t bytes) {
  auto it = g_reservations.upper_bound(address);
  if (it == g_reservations.begin()) return g_reservations.end();
  --it;
  if (address + bytes > it->first + it->second) return g_reservations.end();
  return it;
}
bool PinnedDeviceProps(const CUmemAllocationProp* prop) {
  return prop != nullptr && prop->type == CU_MEM_ALLOCATION_TYPE_PINNED &&
         prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE && prop->location.id >= 0 &&
         prop->location.id < FAKE_DEVICE_COUNT;
}
}  // namespace

FAKE_HOOK void fake_set_vmm_limit(size_t bytes) {
  std::lock_guard<std::mutex> lock(g_vmm_mu);
  g_vmm_limit = bytes;
}
// Physical bytes of `device` now held (created and not gone).
FAKE_HOOK size_t fake_vmm_used(int device) {
  std::lock_guard<std::mutex> lock(g_vmm_mu);
  return g_vmm_used[device];
}
// Reservations, physical memories and mappings alive (all 0 when the
// backend has given everything back).
FAKE_HOOK int fake_vmm_objects() {
  std::lock_guard<std::mutex> lock(g_vmm_mu);
  return static_cast<int>(g_reservations.size() + g_physical.size() + g_mappings.size());
}
FAKE_HOOK int fake_vmm_creates() { return g_vmm_creates.load(); }

CUresult cuMemGetAllocationGranularity(size_t* granularity, const CUmemAllocationProp* prop,
                                       CUmemAllocationGranularity_flags option) {
  if (granularity == nullptr || !PinnedDeviceProps(prop)) return CUDA_ERROR_INVALID_VALUE;
  *granularity =
      option == CU_MEM_ALLOC_GRANULARITY_RECOMMENDED ? 2 * kFakeGranularity : kFakeGranularity;
  return CUDA_SUCCESS;
}
CUresult cuMemCreate(CUmemGenericAllocationHandle* handle, size_t size,
                     const CUmemAllocationProp* prop, unsigned long long flags) {
  if (handle == nullptr || !PinnedDeviceProps(prop) || flags != 0 || size == 0 ||
      size % kFakeGranularity != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  std::lock_guard<std::mutex> lock(g_vmm_mu);
  const int device = prop->location.id;
  if (g_vmm_used[device] + size > g_vmm_limit) return CUDA_ERROR_OUT_OF_MEMORY;
  const int fd = memfd_create("fake-cuda-physical", MFD_CLOEXEC);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    close(fd);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  g_vmm_used[device] += size;
  *handle = g_next_physical++;
  g_physical[*handle] = FakePhysical{fd, size, device, 0, false};
  ++g_vmm_creates;
  return CUDA_SUCCESS;
}
CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  std::lock_guard<std::mutex> lock(g_vmm_mu);
  auto it = g_physical.find(handle);
  if (it == g_physical.end() || it->second.released) return CUDA_ERROR_INVALID_VALUE;
  it->second.released = true;
  MaybeDropPhysical(handle);
  return CUDA_SUCCESS;
}
CUresult cuMemAddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags) {
  if (ptr == nullptr || size == 0 || size % kFakeGranularity != 0 || flags != 0 ||
      (alignment & (alignment - 1)) != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  (void)addr;  // a hint only; the fake never honours it
  if (alignment < kFakeGranularity) alignment = kFakeGranularity;
  // Over-reserve, then trim to an aligned range.
  void* raw = mmap(nullptr, size + alignment, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + alignment - 1) & ~(uintptr_t{alignment} - 1);
  if (aligned > start) munmap(raw, aligned - start);
  if (aligned + size < start + size + alignment) {
    munmap(reinterpret_cast<void*>(aligned + size), start + size + alignment - aligned - size);
  }
  std::lock_guard<std::mutex> lock(g_vmm_mu);
  g_reservations[aligned] = size;
  *ptr = aligned;
  return CUDA_SUCCESS;
}
CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  std::lock_guard<std::mutex> lock(g_vmm_mu);
  auto it = g_reservations.find(ptr);
  if (it == g_reservations.end() || it->second != size) return CUDA_ERROR_INVALID_VALUE;
  // Like the driver: everything mapped in it must be unmapped first.
  auto mapped = g_mappings.lower_bound(ptr);
  if (mapped != g_mappings.end() && mapped->first < ptr + size) return CUDA_ERROR_INVALID_VALUE;
  munmap(reinterpret_cast<void*>(ptr), size);
  g_reservations.erase(it);
  return CUDA_SUCCESS;
}
CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags) {
  if (flags != 0 || size == 0 || size % kFakeGranularity != 0 || offset % kFakeGranularity != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  std::lock_guard<std::mutex> lock(g_vmm_mu);
  auto physical = g_physical.find(handle);
  if (physical == g_physical.end() || physical->second.released) return CUDA_ERROR_INVALID_HANDLE;
  if (offset + size > physical->second.bytes) return CUDA_ERROR_INVALID_VALUE;
  if (ReservationOf(ptr, size) == g_reservations.end()) return CUDA_ERROR_INVALID_VALUE;
  auto next = g_mappings.lower_bound(ptr);
  if (next != g_mappings.end() && next->first < ptr + size) return CUDA_ERROR_INVALID_VALUE;
  if (next != g_mappings.begin() && std::prev(next)->first + std::prev(next)->second.bytes > ptr) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  if (mmap(reinterpret_cast<void*>(ptr), size, PROT_NONE, MAP_SHARED | MAP_FIXED,
           physical->second.fd, static_cast<off_t>(offset)) == MAP_FAILED) {
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  ++physical->second.mappings;
  g_mappings[ptr] = FakeMapping{size, handle};
  return CUDA_SUCCESS;
}
CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
  std::lock_guard<std::mutex> lock(g_vmm_mu);
  auto it = g_mappings.find(ptr);
  if (it == g_mappings.end() || it->second.bytes != size) return CUDA_ERROR_INVALID_VALUE;
  // Back to a bare reservation.
  mmap(reinterpret_cast<void*>(ptr), size, PROT_NONE,
       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  const CUmemGenericAllocationHandle handle = it->second.handle;
  g_mappings.erase(it);
  --g_physical[handle].mappings;
  MaybeDropPhysical(handle);
  return CUDA_SUCCESS;
}
CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc, size_t count) {
  if (desc == nullptr || count == 0) return CUDA_ERROR_INVALID_VALUE;
  int prot = PROT_NONE;
  for (size_t i = 0; i < count; ++i) {
    if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || desc[i].location.id < 0 ||
        desc[i].location.id >= FAKE_DEVICE_COUNT) {
      return CUDA_ERROR_INVALID_DEVICE;
    }
    if (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE) prot = PROT_READ | PROT_WRITE;
  }
  std::lock_guard<std::mutex> lock(g_vmm_mu);
  // Every byte must be mapped, as the driver requires.
  for (CUdeviceptr at = ptr; at < ptr + size;) {
    auto it = g_mappings.upper_bound(at);
    if (it == g_mappings.begin()) return CUDA_ERROR_INVALID_VALUE;
    --it;
    if (it->first + it->second.bytes <= at) return CUDA_ERROR_INVALID_VALUE;
    at = it->first + it->second.bytes;
  }
  if (prot != PROT_NONE && mprotect(reinterpret_cast<void*>(ptr), size, prot) != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}

CUresult cuMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  FAKE_NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(g_vmm_mu);
  const size_t used = g_vmm_used[Current()->device];
  *free_bytes = used < g_vmm_limit ? g_vmm_limit - used : 0;
  *total_bytes = size_t{2} << 30;
  return CUDA_SUCCESS;
}

// --- stream work --------------------------------------------------------------
CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t bytes, CUstream stream) {
  FAKE_NEED_STREAM(stream);
  TheGpu().Push([=] { std::memcpy(reinterpret_cast<void*>(dst), src, bytes); });
  return CUDA_SUCCESS;
}
// Page-locked host memory (cuMemHostAlloc): start -> size.
namespace {
std::mutex g_pinned_mu;
std::map<const void*, size_t> g_pinned;  // guarded by g_pinned_mu
std::atomic<int> g_pageable_async_copies{0};
bool Pinned(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_pinned_mu);
  auto it = g_pinned.upper_bound(p);
  if (it == g_pinned.begin()) return false;
  --it;
  const auto* start = static_cast<const char*>(it->first);
  const auto* q = static_cast<const char*>(p);
  return q >= start && q + bytes <= start + it->second;
}
}  // namespace
CUresult cuMemHostAlloc(void** pp, size_t bytes, unsigned int flags) {
  FAKE_NEED_CONTEXT();
  if (pp == nullptr || bytes == 0 || flags != 0) return CUDA_ERROR_INVALID_VALUE;
  *pp = std::malloc(bytes);
  if (*pp == nullptr) return CUDA_ERROR_OUT_OF_MEMORY;
  std::lock_guard<std::mutex> lock(g_pinned_mu);
  g_pinned[*pp] = bytes;
  return CUDA_SUCCESS;
}
CUresult cuMemFreeHost(void* p) {
  {
    std::lock_guard<std::mutex> lock(g_pinned_mu);
    if (g_pinned.erase(p) == 0) return CUDA_ERROR_INVALID_VALUE;
  }
  std::free(p);
  return CUDA_SUCCESS;
}
// Like the real driver, an "asynchronous" copy into pageable memory returns
// only once it is done; into page-locked memory it returns at once.
CUresult cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t bytes, CUstream stream) {
  FAKE_NEED_STREAM(stream);
  TheGpu().Push([=] { std::memcpy(dst, reinterpret_cast<const void*>(src), bytes); });
  if (!Pinned(dst, bytes)) {
    ++g_pageable_async_copies;
    TheGpu().Drain();
  }
  return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream) {
  FAKE_NEED_STREAM(stream);
  TheGpu().Push([=] {
    std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
  });
  return CUDA_SUCCESS;
}
CUresult cuMemcpy2DAsync(const CUDA_MEMCPY2D* copy, CUstream stream) {
  FAKE_NEED_STREAM(stream);
  CUDA_MEMCPY2D m = *copy;
  TheGpu().Push([m] {
    auto* src = static_cast<const unsigned char*>(m.srcMemoryType == CU_MEMORYTYPE_HOST
                                                      ? m.srcHost
                                                      : reinterpret_cast<const void*>(m.srcDevice));
    auto* dst = static_cast<unsigned char*>(
        m.dstMemoryType == CU_MEMORYTYPE_HOST ? m.dstHost : reinterpret_cast<void*>(m.dstDevice));
    for (size_t row = 0; row < m.Height; ++row) {
      std::memcpy(dst + row * m.dstPitch, src + row * m.srcPitch, m.WidthInBytes);
    }
  });
  // Into pageable memory it returns once done, as cuMemcpyDtoHAsync does.
  if (m.dstMemoryType == CU_MEMORYTYPE_HOST && m.Height > 0 &&
      !Pinned(m.dstHost, (m.Height - 1) * m.dstPitch + m.WidthInBytes)) {
    ++g_pageable_async_copies;
    TheGpu().Drain();
  }
  return CUDA_SUCCESS;
}

template <typename T>
CUresult Fill2D(CUdeviceptr dst, size_t pitch, T value, size_t width, size_t height,
                CUstream stream) {
  FAKE_NEED_STREAM(stream);
  TheGpu().Push([=] {
    for (size_t row = 0; row < height; ++row) {
      T* line = reinterpret_cast<T*>(dst + row * pitch);
      for (size_t i = 0; i < width; ++i) line[i] = value;
    }
  });
  return CUDA_SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) {
  return Fill2D(d, 0, v, n, 1, s);
}
CUresult cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, CUstream s) {
  return Fill2D(d, 0, v, n, 1, s);
}
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream s) {
  return Fill2D(d, 0, v, n, 1, s);
}
CUresult cuMemsetD2D8Async(CUdeviceptr d, size_t p, unsigned char v, size_t w, size_t h,
                           CUstream s) {
  return Fill2D(d, p, v, w, h, s);
}
CUresult cuMemsetD2D16Async(CUdeviceptr d, size_t p, unsigned short v, size_t w, size_t h,
                            CUstream s) {
  return Fill2D(d, p, v, w, h, s);
}
CUresult cuMemsetD2D32Async(CUdeviceptr d, size_t p, unsigned int v, size_t w, size_t h,
                            CUstream s) {
  return Fill2D(d, p, v, w, h, s);
}

// fake_fill(uint32_t* out, uint32_t n, uint32_t first): out[i] = first + i.
CUresult cuLaunchKernelEx(const CUlaunchConfig* config, CUfunction function, void** kernel_params,
                          void** extra) {
  FAKE_NEED_STREAM(config->hStream);
  auto* f = reinterpret_cast<FakeFunction*>(function);
  std::vector<unsigned char> params;
  if (extra != nullptr) {
    // The CU_LAUNCH_PARAM_BUFFER form, exactly: pointer, size, end.
    if (kernel_params != nullptr || extra[0] != CU_LAUNCH_PARAM_BUFFER_POINTER ||
        extra[2] != CU_LAUNCH_PARAM_BUFFER_SIZE || extra[4] != CU_LAUNCH_PARAM_END) {
      return CUDA_ERROR_INVALID_VALUE;
    }
    const size_t size = *static_cast<size_t*>(extra[3]);
    const auto* data = static_cast<const unsigned char*>(extra[1]);
    params.assign(data, data + size);  // copied now, as the driver does
  }
  {
    std::lock_guard<std::mutex> lock(g_launch_mu);
    LaunchRecord& l = g_last_launch;
    l = LaunchRecord{{config->gridDimX, config->gridDimY, config->gridDimZ},
                     {config->blockDimX, config->blockDimY, config->blockDimZ},
                     config->sharedMemBytes,
                     config->numAttrs,
                     {0, 0, 0},
                     0,
                     params.size()};
    for (unsigned i = 0; i < config->numAttrs; ++i) {
      if (config->attrs[i].id == CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION) {
        l.cluster[0] = config->attrs[i].value.clusterDim.x;
        l.cluster[1] = config->attrs[i].value.clusterDim.y;
        l.cluster[2] = config->attrs[i].value.clusterDim.z;
      }
      if (config->attrs[i].id == CU_LAUNCH_ATTRIBUTE_COOPERATIVE) {
        l.cooperative = config->attrs[i].value.cooperative;
      }
    }
  }
  if (std::strcmp(f->name, "fake_fill") == 0) {
    if (params.size() != 16) return CUDA_ERROR_INVALID_VALUE;
    uint64_t out;
    uint32_t n, first;
    std::memcpy(&out, params.data(), 8);
    std::memcpy(&n, params.data() + 8, 4);
    std::memcpy(&first, params.data() + 12, 4);
    TheGpu().Push([=] {
      for (uint32_t i = 0; i < n; ++i) reinterpret_cast<uint32_t*>(out)[i] = first + i;
    });
  } else if (!params.empty()) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}

// --- streams ------------------------------------------------------------------
CUresult cuStreamCreateWithPriority(CUstream* stream, unsigned int flags, int priority) {
  FAKE_NEED_CONTEXT();
  g_last_priority = priority;
  *stream = reinterpret_cast<CUstream>(new FakeStream{Current()});
  ++g_live_objects;
  return CUDA_SUCCESS;
}
CUresult cuStreamQuery(CUstream stream) {
  FAKE_NEED_STREAM(stream);
  if (Sticky() != CUDA_SUCCESS) return Sticky();
  return TheGpu().Idle() ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}
CUresult cuStreamSynchronize(CUstream stream) {
  FAKE_NEED_STREAM(stream);
  TheGpu().Drain();
  return Sticky();
}
CUresult cuStreamDestroy(CUstream stream) {
  FAKE_NEED_STREAM(stream);
  if (stream == nullptr || stream == CU_STREAM_LEGACY) return CUDA_ERROR_INVALID_HANDLE;
  delete reinterpret_cast<FakeStream*>(stream);
  --g_live_objects;
  return CUDA_SUCCESS;
}
CUresult cuStreamAddCallback(CUstream stream, CUstreamCallback callback, void* user_data,
                             unsigned int flags) {
  FAKE_NEED_STREAM(stream);
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (g_drop_callbacks) return CUDA_SUCCESS;  // as a failed context might
  if (g_defer_callbacks) {
    std::lock_guard<std::mutex> lock(g_deferred_mu);
    g_deferred.push_back([=] { callback(stream, CUDA_ERROR_CONTEXT_IS_DESTROYED, user_data); });
    return CUDA_SUCCESS;
  }
  TheGpu().Push([=] { callback(stream, Sticky(), user_data); });
  return CUDA_SUCCESS;
}
CUresult cuStreamWaitEvent(CUstream stream, CUevent event, unsigned int flags) {
  FAKE_NEED_STREAM(stream);
  return event != nullptr && flags == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// --- events -------------------------------------------------------------------
CUresult cuEventCreate(CUevent* event, unsigned int flags) {
  FAKE_NEED_CONTEXT();
  *event = reinterpret_cast<CUevent>(new FakeEvent{Current()});
  ++g_live_objects;
  return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent event, CUstream stream) {
  FAKE_NEED_STREAM(stream);
  auto* e = reinterpret_cast<FakeEvent*>(event);
  if (e->ctx != Current()) return CUDA_ERROR_INVALID_HANDLE;
  e->done = false;
  TheGpu().Push([e] { e->done = true; });
  return CUDA_SUCCESS;
}
CUresult cuEventQuery(CUevent event) {
  FAKE_NEED_CONTEXT();
  return reinterpret_cast<FakeEvent*>(event)->done ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}
CUresult cuEventSynchronize(CUevent event) {
  FAKE_NEED_CONTEXT();
  TheGpu().Drain();
  return Sticky();
}
CUresult cuEventElapsedTime(float* milliseconds, CUevent start, CUevent end) {
  FAKE_NEED_CONTEXT();
  *milliseconds = 1.5f;
  return CUDA_SUCCESS;
}
CUresult cuEventDestroy(CUevent event) {
  TheGpu().Drain();  // a pending record still refers to it
  delete reinterpret_cast<FakeEvent*>(event);
  --g_live_objects;
  return CUDA_SUCCESS;
}

// --- modules ------------------------------------------------------------------
// An image is "FAKEMOD" followed by anything, NUL-terminated like PTX.
CUresult cuModuleLoadData(CUmodule* module, const void* image) {
  FAKE_NEED_CONTEXT();
  const char* text = static_cast<const char*>(image);
  if (std::strncmp(text, "FAKEMOD", 7) != 0) return CUDA_ERROR_INVALID_IMAGE;
  g_last_image_length = std::strlen(text);
  *module = reinterpret_cast<CUmodule>(new FakeModule{Current()});
  ++g_live_objects;
  return CUDA_SUCCESS;
}
CUresult cuModuleUnload(CUmodule module) {
  delete reinterpret_cast<FakeModule*>(module);
  --g_live_objects;
  return CUDA_SUCCESS;
}
CUresult cuModuleGetFunctionCount(unsigned int* count, CUmodule module) {
  *count = 2;
  return CUDA_SUCCESS;
}
CUresult cuModuleEnumerateFunctions(CUfunction* functions, unsigned int count, CUmodule module) {
  auto* m = reinterpret_cast<FakeModule*>(module);
  for (unsigned i = 0; i < count && i < 2; ++i) {
    functions[i] = reinterpret_cast<CUfunction>(&m->functions[i]);
  }
  return CUDA_SUCCESS;
}
CUresult cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name) {
  FAKE_NEED_CONTEXT();
  auto* m = reinterpret_cast<FakeModule*>(module);
  for (FakeFunction& f : m->functions) {
    if (std::strcmp(f.name, name) == 0) {
      *function = reinterpret_cast<CUfunction>(&f);
      return CUDA_SUCCESS;
    }
  }
  return CUDA_ERROR_NOT_FOUND;
}
CUresult cuModuleGetGlobal(CUdeviceptr* pointer, size_t* bytes, CUmodule module, const char* name) {
  FAKE_NEED_CONTEXT();
  if (std::strcmp(name, "fake_global") != 0) return CUDA_ERROR_NOT_FOUND;
  *pointer = reinterpret_cast<CUdeviceptr>(g_global);
  *bytes = sizeof(g_global);
  return CUDA_SUCCESS;
}
CUresult cuFuncGetName(const char** name, CUfunction function) {
  *name = reinterpret_cast<FakeFunction*>(function)->name;
  return CUDA_SUCCESS;
}
CUresult cuFuncGetParamInfo(CUfunction function, size_t index, size_t* offset, size_t* size) {
  auto* f = reinterpret_cast<FakeFunction*>(function);
  if (index >= f->params.size()) return CUDA_ERROR_INVALID_VALUE;
  *offset = f->params[index].first;
  if (size != nullptr) *size = f->params[index].second;
  return CUDA_SUCCESS;
}
CUresult cuFuncLoad(CUfunction function) { return CUDA_SUCCESS; }
CUresult cuFuncGetAttribute(int* value, CUfunction_attribute attribute, CUfunction function) {
  auto* f = reinterpret_cast<FakeFunction*>(function);
  if (attribute == CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK) {
    *value = 1024;
    return CUDA_SUCCESS;
  }
  *value = f->attributes[attribute];
  return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(CUfunction function, CUfunction_attribute attribute, int value) {
  reinterpret_cast<FakeFunction*>(function)->attributes[attribute] = value;
  return CUDA_SUCCESS;
}
CUresult cuFuncSetCacheConfig(CUfunction function, CUfunc_cache config) {
  reinterpret_cast<FakeFunction*>(function)->cache_config = config;
  return CUDA_SUCCESS;
}

// --- libraries ----------------------------------------------------------------
// A library takes the same "FAKEMOD" images; its kernels are a module's two,
// and it has one module per context, made on first cuLibraryGetModule there.
namespace {
struct FakeLibrary {
  FakeModule kernels{nullptr};
  std::mutex mu;
  std::map<FakeCtx*, FakeModule*> modules;
};
std::atomic<int> g_library_modules{0};
}  // namespace
FAKE_HOOK int fake_library_modules() { return g_library_modules.load(); }

CUresult cuLibraryLoadData(CUlibrary* library, const void* code, CUjit_option*, void**,
                           unsigned int, CUlibraryOption*, void**, unsigned int) {
  const char* text = static_cast<const char*>(code);
  if (std::strncmp(text, "FAKEMOD", 7) != 0) return CUDA_ERROR_INVALID_IMAGE;
  g_last_image_length = std::strlen(text);
  *library = reinterpret_cast<CUlibrary>(new FakeLibrary);
  ++g_live_objects;
  return CUDA_SUCCESS;
}
CUresult cuLibraryUnload(CUlibrary library) {
  auto* l = reinterpret_cast<FakeLibrary*>(library);
  for (auto& [ctx, module] : l->modules) {
    delete module;
    --g_library_modules;
  }
  delete l;
  --g_live_objects;
  return CUDA_SUCCESS;
}
CUresult cuLibraryGetModule(CUmodule* module, CUlibrary library) {
  FAKE_NEED_CONTEXT();
  auto* l = reinterpret_cast<FakeLibrary*>(library);
  std::lock_guard<std::mutex> lock(l->mu);
  FakeModule*& m = l->modules[Current()];
  if (m == nullptr) {
    m = new FakeModule{Current()};
    ++g_library_modules;
  }
  *module = reinterpret_cast<CUmodule>(m);
  return CUDA_SUCCESS;
}
CUresult cuLibraryGetKernelCount(unsigned int* count, CUlibrary library) {
  *count = 2;
  return CUDA_SUCCESS;
}
CUresult cuLibraryEnumerateKernels(CUkernel* kernels, unsigned int count, CUlibrary library) {
  auto* l = reinterpret_cast<FakeLibrary*>(library);
  for (unsigned i = 0; i < count && i < 2; ++i) {
    kernels[i] = reinterpret_cast<CUkernel>(&l->kernels.functions[i]);
  }
  return CUDA_SUCCESS;
}
CUresult cuKernelGetName(const char** name, CUkernel kernel) {
  *name = reinterpret_cast<FakeFunction*>(kernel)->name;
  return CUDA_SUCCESS;
}
CUresult cuKernelGetParamInfo(CUkernel kernel, size_t index, size_t* offset, size_t* size) {
  return cuFuncGetParamInfo(reinterpret_cast<CUfunction>(kernel), index, offset, size);
}

// --- occupancy: canned answers that show what was asked -------------------------
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* blocks, CUfunction function,
                                                              int block_size, size_t smem,
                                                              unsigned int flags) {
  FAKE_NEED_CONTEXT();
  if (block_size <= 0) return CUDA_ERROR_INVALID_VALUE;
  *blocks = 2048 / block_size - static_cast<int>(smem / 1024) - static_cast<int>(flags);
  return CUDA_SUCCESS;
}
CUresult cuOccupancyAvailableDynamicSMemPerBlock(size_t* bytes, CUfunction function, int blocks,
                                                 int block_size) {
  FAKE_NEED_CONTEXT();
  *bytes = 1000u * static_cast<size_t>(blocks) + static_cast<size_t>(block_size);
  return CUDA_SUCCESS;
}
CUresult cuOccupancyMaxPotentialClusterSize(int* size, CUfunction function,
                                            const CUlaunchConfig* config) {
  FAKE_NEED_CONTEXT();
  *size = static_cast<int>(config->blockDimX / 32 + config->numAttrs);
  return CUDA_SUCCESS;
}
CUresult cuOccupancyMaxActiveClusters(int* clusters, CUfunction function,
                                      const CUlaunchConfig* config) {
  FAKE_NEED_CONTEXT();
  *clusters = config->numAttrs == 1 ? static_cast<int>(config->attrs[0].value.clusterDim.x) : -1;
  return CUDA_SUCCESS;
}

#if FAKE_GREEN
// --- green contexts -----------------------------------------------------------
namespace {
// What the fake keeps in a CUdevResource's internal padding.
struct FakeSmRange {
  int device;
  unsigned first_sm;
};
FakeSmRange RangeOf(const CUdevResource& resource) {
  FakeSmRange range;
  std::memcpy(&range, resource._internal_padding, sizeof(range));
  return range;
}
void SetSm(CUdevResource* resource, int device, unsigned first_sm, unsigned count) {
  std::memset(resource, 0, sizeof(*resource));
  resource->type = CU_DEV_RESOURCE_TYPE_SM;
  resource->sm.smCount = count;
  resource->sm.minSmPartitionSize = 8;
  resource->sm.smCoscheduledAlignment = 8;
  const FakeSmRange range{device, first_sm};
  std::memcpy(resource->_internal_padding, &range, sizeof(range));
}
struct FakeDesc {
  CUdevResource resource;
};
std::atomic<int> g_split_calls{0};
std::atomic<unsigned> g_last_split_min_count{0};

std::mutex g_greens_mu;
std::vector<FakeGreenCtx*> g_greens;  // live green contexts, guarded by g_greens_mu
}  // namespace

FAKE_HOOK int fake_split_calls() { return g_split_calls.load(); }
// The SMs of every live green context (at most `max`); returns how many live.
FAKE_HOOK int fake_green_contexts(unsigned* first_sms, unsigned* sm_counts, int max) {
  std::lock_guard<std::mutex> lock(g_greens_mu);
  for (int i = 0; i < max && i < static_cast<int>(g_greens.size()); ++i) {
    first_sms[i] = g_greens[static_cast<size_t>(i)]->ctx.first_sm;
    sm_counts[i] = g_greens[static_cast<size_t>(i)]->ctx.sm_count;
  }
  return static_cast<int>(g_greens.size());
}
FAKE_HOOK unsigned fake_last_split_min_count() { return g_last_split_min_count.load(); }
// Whether `context` (a CUcontext) is a green context's, and its SMs.
FAKE_HOOK int fake_context_sms(void* context, unsigned* first_sm, unsigned* sm_count) {
  const auto* ctx = static_cast<const FakeCtx*>(context);
  *first_sm = ctx->first_sm;
  *sm_count = ctx->sm_count;
  return ctx->green ? 1 : 0;
}

CUresult cuDeviceGetDevResource(CUdevice device, CUdevResource* resource, CUdevResourceType type) {
  if (device < 0 || device >= FAKE_DEVICE_COUNT) return CUDA_ERROR_INVALID_DEVICE;
  if (type != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_RESOURCE_TYPE;
  SetSm(resource, device, 0, FAKE_SM_COUNT);
  return CUDA_SUCCESS;
}

// As documented: groups of at least minCount SMs, rounded up to the minimum
// and the alignment; as many as fit (at most *nbGroups); the rest in
// `remaining`.
CUresult cuDevSmResourceSplitByCount(CUdevResource* result, unsigned int* nbGroups,
                                     const CUdevResource* input, CUdevResource* remaining,
                                     unsigned int useFlags, unsigned int minCount) {
  ++g_split_calls;
  g_last_split_min_count = minCount;
  if (nbGroups == nullptr || input == nullptr || useFlags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (input->type != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_RESOURCE_TYPE;
  const unsigned total = input->sm.smCount;
  if (minCount > total) return CUDA_ERROR_INVALID_VALUE;
  unsigned per = std::max(minCount, input->sm.minSmPartitionSize);
  per = (per + input->sm.smCoscheduledAlignment - 1) / input->sm.smCoscheduledAlignment *
        input->sm.smCoscheduledAlignment;
  const unsigned fit = total / per;
  if (result == nullptr) {
    *nbGroups = fit;
    return CUDA_SUCCESS;
  }
  const unsigned made = std::min(*nbGroups, fit);
  const FakeSmRange range = RangeOf(*input);
  for (unsigned i = 0; i < made; ++i) {
    SetSm(&result[i], range.device, range.first_sm + i * per, per);
  }
  if (remaining != nullptr) {
    SetSm(remaining, range.device, range.first_sm + made * per, total - made * per);
  }
  *nbGroups = made;
  return CUDA_SUCCESS;
}

CUresult cuDevResourceGenerateDesc(CUdevResourceDesc* desc, CUdevResource* resources,
                                   unsigned int count) {
  // The fake supports one resource per descriptor (all the backend needs).
  if (desc == nullptr || resources == nullptr || count != 1) return CUDA_ERROR_INVALID_VALUE;
  if (resources[0].type != CU_DEV_RESOURCE_TYPE_SM) return CUDA_ERROR_INVALID_RESOURCE_TYPE;
  // Owned by the "driver" (the API has no destroy call): kept until the
  // process exits, reachable, so leak checkers see no leak.
  static std::mutex mu;
  static auto* descs = new std::vector<std::unique_ptr<FakeDesc>>;
  std::lock_guard<std::mutex> lock(mu);
  descs->push_back(std::make_unique<FakeDesc>(FakeDesc{resources[0]}));
  *desc = reinterpret_cast<CUdevResourceDesc>(descs->back().get());
  return CUDA_SUCCESS;
}

CUresult cuGreenCtxCreate(CUgreenCtx* green, CUdevResourceDesc desc, CUdevice device,
                          unsigned int flags) {
  if (green == nullptr || desc == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if ((flags & CU_GREEN_CTX_DEFAULT_STREAM) == 0) return CUDA_ERROR_INVALID_VALUE;  // required
  const CUdevResource& resource = reinterpret_cast<FakeDesc*>(desc)->resource;
  const FakeSmRange range = RangeOf(resource);
  if (device < 0 || device >= FAKE_DEVICE_COUNT || range.device != device) {
    return CUDA_ERROR_INVALID_DEVICE;
  }
  auto* g = new FakeGreenCtx;
  g->ctx.device = device;
  g->ctx.green = true;
  g->ctx.first_sm = range.first_sm;
  g->ctx.sm_count = resource.sm.smCount;
  ++g_live_objects;
  {
    std::lock_guard<std::mutex> lock(g_greens_mu);
    g_greens.push_back(g);
  }
  AddLiveContext(reinterpret_cast<CUcontext>(&g->ctx));
  *green = reinterpret_cast<CUgreenCtx>(g);  // not made current (documented)
  return CUDA_SUCCESS;
}

CUresult cuCtxFromGreenCtx(CUcontext* context, CUgreenCtx green) {
  if (context == nullptr || green == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *context = reinterpret_cast<CUcontext>(&reinterpret_cast<FakeGreenCtx*>(green)->ctx);
  return CUDA_SUCCESS;
}

CUresult cuGreenCtxDestroy(CUgreenCtx green) {
  if (green == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  auto* g = reinterpret_cast<FakeGreenCtx*>(green);
  if (g->magic != 0x67726e) return CUDA_ERROR_INVALID_CONTEXT;  // a CUcontext, not a CUgreenCtx
  TheGpu().Drain();
  auto* context = reinterpret_cast<CUcontext>(&g->ctx);
  if (!t_stack.empty() && t_stack.back() == context) t_stack.pop_back();
  RemoveLiveContext(context);
  {
    std::lock_guard<std::mutex> lock(g_greens_mu);
    std::erase(g_greens, g);
  }
  delete g;
  --g_live_objects;
  return CUDA_SUCCESS;
}
#endif  // FAKE_GREEN
#endif  // FAKE_FULL

// cuGetProcAddress_v2, as NVIDIA's CUDA 13 driver answers it: the newest
// variant of `symbol` at or below `cuda_version` (every variant
// cudaTypedefs.h lists), if the fake implements that variant.
CUresult cuGetProcAddress(const char* symbol, void** function, int cuda_version, cuuint64_t flags,
                          CUdriverProcAddressQueryResult* status) {
  ++g_proc_address_calls;
  g_last_proc_version = cuda_version;
  g_last_proc_flags = flags;
  *function = nullptr;
  // The real driver refuses versions newer than itself.
  if (cuda_version > FAKE_DRIVER_VERSION) return CUDA_ERROR_INVALID_VALUE;
  struct Variant {
    const char* name;
    int version;
  };
  static const Variant kVariants[] = {
#define FAKE_VARIANT(name, version) Variant{#name, version},
#include "fake_variants.inc"
#undef FAKE_VARIANT
  };
  struct Entry {
    const char* name;
    int version;
    void* function;
  };
#define FAKE_ENTRY(name, version) Entry{#name, version, reinterpret_cast<void*>(&name)},
  // clang-format off
  static const Entry kEntries[] = {
      FAKE_ENTRY(cuInit, 2000)
      FAKE_ENTRY(cuDriverGetVersion, 2020)
#if FAKE_FULL
      FERRY_CUDA_DRIVER_ENTRY_POINTS(FAKE_ENTRY)
      FERRY_CUDA_VMM_ENTRY_POINTS(FAKE_ENTRY)
      // Newer variants than the backend's, so that asking for them gets
      // what the real driver gives (another prototype), not the old one.
      Entry{"cuCtxSynchronize", 13000, reinterpret_cast<void*>(&cuCtxSynchronize_v2)},
#else
      FAKE_ENTRY(cuDeviceGetCount, 2000)
#endif
#if FAKE_FULL && FAKE_GREEN
      FERRY_CUDA_GREEN_CONTEXT_ENTRY_POINTS(FAKE_ENTRY)
#endif
  };
  // clang-format on
#undef FAKE_ENTRY
  int newest = 0;
  for (const Variant& variant : kVariants) {
    if (std::strcmp(variant.name, symbol) == 0 && variant.version <= cuda_version) {
      newest = std::max(newest, variant.version);
    }
  }
  bool known = false;
  for (const Entry& entry : kEntries) {
    if (std::strcmp(entry.name, symbol) != 0) continue;
    known = true;
    if (entry.version == newest) {
      *function = entry.function;
      if (status != nullptr) *status = CU_GET_PROC_ADDRESS_SUCCESS;
      return CUDA_SUCCESS;
    }
  }
  if (known && newest != 0) {
    // The driver would return a variant the fake lacks: fail loudly rather
    // than hand back a function of another prototype.
    ++g_unimplemented_variant_requests;
    std::fprintf(stderr, "fake libcuda: %s variant v%d (asked for %d) is not implemented\n", symbol,
                 newest, cuda_version);
    if (status != nullptr) *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return CUDA_ERROR_NOT_FOUND;
  }
  if (status != nullptr) {
    *status =
        known ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  }
  return CUDA_ERROR_NOT_FOUND;
}

#if FAKE_FULL
FAKE_HOOK int fake_pageable_async_copies() { return g_pageable_async_copies.load(); }
// Page-locked buffers not freed yet (counted apart from fake_live_objects).
FAKE_HOOK int fake_pinned_buffers() {
  std::lock_guard<std::mutex> lock(g_pinned_mu);
  return static_cast<int>(g_pinned.size());
}
#endif
