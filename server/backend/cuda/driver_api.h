// DriverApi — NVIDIA's libcuda.so.1, loaded at run time with dlopen, and the
// table of driver entry points that CudaBackend calls. Private to
// server/backend/cuda (tests include it to exercise the loader).
//
// ABI by construction: the entry points and the CUDA version of the variant
// each one calls are listed once, in driver_entry_points.h. Each member is
// typed PFN_<name>_v<version> (cudaTypedefs.h), the loader asks
// cuGetProcAddress for that same version, and a static_assert below checks
// that the type is also the prototype cuda.h declares for the name, whose
// versioned export (cuCtxCreate -> cuCtxCreate_v4) is the dlsym fallback.
// Asking for CUDA_VERSION instead would be wrong: the driver answers with
// the newest variant at or below the version asked, which for some names
// (cuCtxSynchronize in CUDA 13) has another prototype than cuda.h declares.
//
// Thread-safety: a DriverApi is immutable once LoadDriver returns; the driver
// itself is thread-safe, so any thread may call through the table.
#pragma once

#include <cuda.h>
#include <cudaProfiler.h>
#include <cudaProfilerTypedefs.h>
#include <cudaTypedefs.h>

#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common/status.h"
#include "server/backend/cuda/driver_entry_points.h"

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

  // One member per entry point, typed by the variant the list names (the
  // member for cuCtxCreate is really called cuCtxCreate_v4: call sites write
  // cuCtxCreate and cuda.h's macro renames both).
#define FERRY_CUDA_DECLARE_ENTRY_POINT_(name, version) PFN_##name##_v##version name = nullptr;
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

  // Every JIT-linking entry point is there (all or nothing).
  bool HasLinker() const {
#define FERRY_CUDA_HAS_(name, version) &&name != nullptr
    return true FERRY_CUDA_LINK_ENTRY_POINTS(FERRY_CUDA_HAS_);
#undef FERRY_CUDA_HAS_
  }

  // Every stream-capture and graph entry point is there (all or nothing).
  bool HasGraphs() const {
#define FERRY_CUDA_HAS_(name, version) &&name != nullptr
    return true FERRY_CUDA_GRAPH_ENTRY_POINTS(FERRY_CUDA_HAS_);
#undef FERRY_CUDA_HAS_
  }

  // "CUDA_ERROR_OUT_OF_MEMORY", from the driver when it can say, else from
  // ferry's own table. Calls the driver: not for use in stream callbacks.
  std::string ErrorName(CUresult result) const;
  // OK for CUDA_SUCCESS, else Status::Cuda(result, "<call>: <name>: <string>").
  Status Check(CUresult result, const char* call) const;
};

// The variant each member holds has the prototype cuda.h declares for its
// name (see the top of this file): a mismatch does not compile.
#define FERRY_CUDA_CHECK_ENTRY_POINT_TYPE_(name, version)                   \
  static_assert(std::is_same_v<PFN_##name##_v##version, decltype(&::name)>, \
                #name ": PFN_" #name "_v" #version " is not the prototype cuda.h declares");
FERRY_CUDA_DRIVER_ENTRY_POINTS(FERRY_CUDA_CHECK_ENTRY_POINT_TYPE_)
FERRY_CUDA_OPTIONAL_ENTRY_POINTS(FERRY_CUDA_CHECK_ENTRY_POINT_TYPE_)
#undef FERRY_CUDA_CHECK_ENTRY_POINT_TYPE_

// kVersion_<name>: the variant's version for each entry point, for code that
// names one entry point (the loader resolves cuDeviceGetCount first).
#define FERRY_CUDA_DECLARE_VERSION_(name, version) inline constexpr int kVersion_##name = version;
FERRY_CUDA_DRIVER_ENTRY_POINTS(FERRY_CUDA_DECLARE_VERSION_)
FERRY_CUDA_OPTIONAL_ENTRY_POINTS(FERRY_CUDA_DECLARE_VERSION_)
#undef FERRY_CUDA_DECLARE_VERSION_

// Calls `api.fn(args...)` and turns its CUresult into a Status that names the
// export actually called (e.g. "cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY: ...").
#define FERRY_CU(api, fn, ...) (api).Check((api).fn(__VA_ARGS__), FERRY_CUDA_EXPORT_NAME(fn))

// The name cuda.h gives `result` ("CUDA_ERROR_STUB_LIBRARY"), or
// "CUresult <n>" for a value it does not list. Pure: safe in driver callbacks.
const char* CuResultName(CUresult result);

// An entry point as the loader asks for it: the base name and the variant's
// CUDA version cuGetProcAddress takes, and the versioned export name it
// falls back on with dlsym.
struct EntryPointName {
  const char* base;
  const char* export_name;
  int version;
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
// With `allow_ferry_driver` (tests only) ferry's stand-in is not skipped: it
// is loaded like a driver and forwards to the ferryd its FERRY_SERVER names.
// Entry points come from cuGetProcAddress(base, version, LEGACY_STREAM), with
// each one's version from driver_entry_points.h, when the driver is at least
// CUDA_VERSION; otherwise, or where that yields nothing, from dlsym of the
// versioned export name, which fixes the same ABI.
Status LoadDriver(const std::vector<std::string>& candidates, bool explicit_path,
                  std::unique_ptr<DriverApi>* out, bool allow_ferry_driver = false);

}  // namespace ferry::backend::cuda_internal
