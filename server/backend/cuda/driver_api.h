// DriverApi — NVIDIA's libcuda.so.1, loaded at run time with dlopen, and the
// table of driver entry points that CudaBackend calls. Private to
// server/backend/cuda (tests include it to exercise the loader).
//
// ABI by construction: every entry point is named below by its cuda.h name
// (cuCtxCreate, cuMemAlloc, ...). cuda.h maps many of those names to a
// versioned symbol (cuCtxCreate -> cuCtxCreate_v4, cuEventElapsedTime ->
// cuEventElapsedTime_v2). The table expands the name, so the pointer's type is
// the prototype cuda.h declares for that version, the symbol we dlsym is that
// version's export name, and the version we hand cuGetProcAddress is
// CUDA_VERSION of the same header: the three cannot disagree.
//
// Thread-safety: a DriverApi is immutable once LoadDriver returns; the driver
// itself is thread-safe, so any thread may call through the table.
#pragma once

#include <cuda.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

#if defined(CUDA_API_PER_THREAD_DEFAULT_STREAM)
// The per-thread-default-stream build renames the stream functions to their
// _ptsz/_ptds variants, whose stream 0 is a different stream. ferry's
// contexts use the legacy default stream (GpuBackend::LegacyStream).
#error "server/backend/cuda must be built without CUDA_API_PER_THREAD_DEFAULT_STREAM"
#endif

// Expands to a string literal of `name` after macro expansion:
// FERRY_CUDA_EXPORT_NAME(cuCtxCreate) is "cuCtxCreate_v4" with the CUDA 13 header.
#define FERRY_CUDA_EXPORT_NAME(name) FERRY_CUDA_STRINGIFY_(name)
#define FERRY_CUDA_STRINGIFY_(name) #name

// Every entry point the backend needs beyond the bootstrap ones (cuInit,
// cuDriverGetVersion, cuGetErrorName/String, cuGetProcAddress), which the
// loader finds with dlsym. All are required: a driver without one of them is
// refused with a Status that names it.
#define FERRY_CUDA_DRIVER_ENTRY_POINTS(X)                 \
  X(cuDeviceGetCount)                                     \
  X(cuDeviceGet)                                          \
  X(cuDeviceGetName)                                      \
  X(cuDeviceGetUuid)                                      \
  X(cuDeviceTotalMem)                                     \
  X(cuDeviceGetAttribute)                                 \
  X(cuCtxCreate)                                          \
  X(cuCtxDestroy)                                         \
  X(cuCtxPopCurrent)                                      \
  X(cuCtxSetCurrent)                                      \
  X(cuCtxSynchronize)                                     \
  X(cuCtxGetLimit)                                        \
  X(cuCtxSetLimit)                                        \
  X(cuMemAlloc)                                           \
  X(cuMemAllocPitch)                                      \
  X(cuMemFree)                                            \
  X(cuMemGetInfo)                                         \
  X(cuMemcpyHtoDAsync)                                    \
  X(cuMemcpyDtoHAsync)                                    \
  X(cuMemcpyDtoDAsync)                                    \
  X(cuMemcpy2DAsync)                                      \
  X(cuMemsetD8Async)                                      \
  X(cuMemsetD16Async)                                     \
  X(cuMemsetD32Async)                                     \
  X(cuMemsetD2D8Async)                                    \
  X(cuMemsetD2D16Async)                                   \
  X(cuMemsetD2D32Async)                                   \
  X(cuLaunchKernelEx)                                     \
  X(cuStreamCreateWithPriority)                           \
  X(cuStreamQuery)                                        \
  X(cuStreamSynchronize)                                  \
  X(cuStreamDestroy)                                      \
  X(cuStreamAddCallback)                                  \
  X(cuStreamWaitEvent)                                    \
  X(cuEventCreate)                                        \
  X(cuEventRecord)                                        \
  X(cuEventQuery)                                         \
  X(cuEventSynchronize)                                   \
  X(cuEventElapsedTime)                                   \
  X(cuEventDestroy)                                       \
  X(cuModuleLoadData)                                     \
  X(cuModuleUnload)                                       \
  X(cuModuleGetFunction)                                  \
  X(cuModuleGetGlobal)                                    \
  X(cuModuleGetFunctionCount)                             \
  X(cuModuleEnumerateFunctions)                           \
  X(cuFuncGetName)                                        \
  X(cuFuncGetParamInfo)                                   \
  X(cuFuncLoad)                                           \
  X(cuFuncGetAttribute)                                   \
  X(cuFuncSetAttribute)                                   \
  X(cuFuncSetCacheConfig)                                 \
  X(cuLibraryLoadData)                                    \
  X(cuLibraryUnload)                                      \
  X(cuLibraryGetModule)                                   \
  X(cuLibraryGetKernelCount)                              \
  X(cuLibraryEnumerateKernels)                            \
  X(cuKernelGetName)                                      \
  X(cuKernelGetParamInfo)                                 \
  X(cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags) \
  X(cuOccupancyAvailableDynamicSMemPerBlock)              \
  X(cuOccupancyMaxPotentialClusterSize)                   \
  X(cuOccupancyMaxActiveClusters)

// Entry points the backend uses where the driver has them and does without
// where it does not: a driver that lacks one still loads, and its member
// stays null. Green contexts (CUDA 12.4+) give a slice an SM partition;
// without them compute shares fall back to launch throttling. Call sites
// check HasGreenContexts() first. cuCtxResetPersistingL2Cache (CUDA 11.0+)
// is answered CUDA_ERROR_NOT_SUPPORTED where missing.
#define FERRY_CUDA_OPTIONAL_ENTRY_POINTS(X) \
  X(cuCtxResetPersistingL2Cache)            \
  X(cuDeviceGetDevResource)                 \
  X(cuDevSmResourceSplitByCount)            \
  X(cuDevResourceGenerateDesc)              \
  X(cuGreenCtxCreate)                       \
  X(cuGreenCtxDestroy)                      \
  X(cuCtxFromGreenCtx)

namespace ferry::backend::cuda_internal {

// The symbol ferry's stand-in libcuda.so.1 exports so that ferryd can tell it
// from NVIDIA's driver and refuse to load it (it would forward to itself).
inline constexpr char kFerryClientMarker[] = "cuFerryClientIdentity";

struct DriverApi {
  // The dlopen handle. Never closed: once cuInit has run, the driver owns
  // threads and atexit handlers that must not outlive its code.
  void* handle = nullptr;
  std::string path;                // the file actually loaded (resolved by the loader)
  int driver_version = 0;          // cuDriverGetVersion
  bool used_proc_address = false;  // entry points came from cuGetProcAddress

  // Bootstrap entry points (dlsym). cuGetProcAddress is cuda.h's name for
  // cuGetProcAddress_v2; it may be null on a driver older than CUDA 12.0.
  decltype(&::cuInit) cuInit = nullptr;
  decltype(&::cuDriverGetVersion) cuDriverGetVersion = nullptr;
  decltype(&::cuGetErrorName) cuGetErrorName = nullptr;
  decltype(&::cuGetErrorString) cuGetErrorString = nullptr;
  decltype(&::cuGetProcAddress) cuGetProcAddress = nullptr;

  // One member per entry point, named and typed by cuda.h (the member for
  // cuCtxCreate is really called cuCtxCreate_v4; call sites write cuCtxCreate
  // and the same macro renames them).
#define FERRY_CUDA_DECLARE_ENTRY_POINT_(name) decltype(&::name) name = nullptr;
  FERRY_CUDA_DRIVER_ENTRY_POINTS(FERRY_CUDA_DECLARE_ENTRY_POINT_)
  // Optional: null where the driver lacks them.
  FERRY_CUDA_OPTIONAL_ENTRY_POINTS(FERRY_CUDA_DECLARE_ENTRY_POINT_)
#undef FERRY_CUDA_DECLARE_ENTRY_POINT_

  // Every green-context entry point is there (all or nothing counts: a
  // driver with half of them cannot make a green context).
  bool HasGreenContexts() const {
    return cuDeviceGetDevResource != nullptr && cuDevSmResourceSplitByCount != nullptr &&
           cuDevResourceGenerateDesc != nullptr && cuGreenCtxCreate != nullptr &&
           cuGreenCtxDestroy != nullptr && cuCtxFromGreenCtx != nullptr;
  }

  // "CUDA_ERROR_OUT_OF_MEMORY", from the driver when it can say, else from
  // ferry's own table. Calls the driver: not for use in stream callbacks.
  std::string ErrorName(CUresult result) const;
  // OK for CUDA_SUCCESS, else Status::Cuda(result, "<call>: <name>: <string>").
  Status Check(CUresult result, const char* call) const;
};

// Calls `api.fn(args...)` and turns its CUresult into a Status that names the
// export actually called (e.g. "cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY: ...").
#define FERRY_CU(api, fn, ...) (api).Check((api).fn(__VA_ARGS__), FERRY_CUDA_EXPORT_NAME(fn))

// The name cuda.h gives `result` ("CUDA_ERROR_STUB_LIBRARY"), or
// "CUresult <n>" for a value it does not list. Pure: safe in driver callbacks.
const char* CuResultName(CUresult result);

// An entry point as the loader asks for it: the base name cuGetProcAddress
// takes, and the versioned export name it falls back on with dlsym.
struct EntryPointName {
  const char* base;
  const char* export_name;
};
std::vector<EntryPointName> EntryPointNames();

// Where to look for the driver when no path is configured: absolute system
// paths first (so LD_LIBRARY_PATH, which may point at ferry's own build/lib,
// cannot shadow the real driver), then the bare soname for the loader's search.
std::vector<std::string> DefaultDriverCandidates();

// Loads the first usable driver among `candidates`:
//  * a candidate that cannot be opened, or that is ferry's stand-in (exports
//    kFerryClientMarker), is skipped and noted in the diagnostics;
//  * the first one that opens and is not ferry's decides: it is initialized
//    (cuInit(0)), must report at least one device, and must provide every
//    required entry point, or its error is returned. Optional entry points
//    it lacks stay null.
// With `explicit_path` (one configured candidate) skipping is an error.
// Entry points come from cuGetProcAddress(base, CUDA_VERSION, LEGACY_STREAM)
// when the driver is at least CUDA_VERSION (the documented way to get the ABI
// this header declares); otherwise, or where that yields nothing, from dlsym
// of the versioned export name, which fixes the ABI just as well.
Status LoadDriver(const std::vector<std::string>& candidates, bool explicit_path,
                  std::unique_ptr<DriverApi>* out);

}  // namespace ferry::backend::cuda_internal
