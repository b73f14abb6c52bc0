// The driver loader and the error-name helpers of DriverApi.
//
// Thread-safety: LoadDriver may run on any thread (dlopen/dlerror are
// per-thread safe); the functions here keep no state of their own.
#include "server/backend/cuda/driver_api.h"

#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"

namespace ferry::backend::cuda_internal {
namespace {

// Every CUresult cuda.h (CUDA 13.0) lists. The driver's cuGetErrorName is
// preferred; this table serves where it cannot answer: the toolkit's stub
// library fails every call, and stream callbacks must not call the driver.
#define FERRY_CU_RESULTS(X)                    \
  X(CUDA_SUCCESS)                              \
  X(CUDA_ERROR_INVALID_VALUE)                  \
  X(CUDA_ERROR_OUT_OF_MEMORY)                  \
  X(CUDA_ERROR_NOT_INITIALIZED)                \
  X(CUDA_ERROR_DEINITIALIZED)                  \
  X(CUDA_ERROR_PROFILER_DISABLED)              \
  X(CUDA_ERROR_PROFILER_NOT_INITIALIZED)       \
  X(CUDA_ERROR_PROFILER_ALREADY_STARTED)       \
  X(CUDA_ERROR_PROFILER_ALREADY_STOPPED)       \
  X(CUDA_ERROR_STUB_LIBRARY)                   \
  X(CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER)     \
  X(CUDA_ERROR_DEVICE_UNAVAILABLE)             \
  X(CUDA_ERROR_NO_DEVICE)                      \
  X(CUDA_ERROR_INVALID_DEVICE)                 \
  X(CUDA_ERROR_DEVICE_NOT_LICENSED)            \
  X(CUDA_ERROR_INVALID_IMAGE)                  \
  X(CUDA_ERROR_INVALID_CONTEXT)                \
  X(CUDA_ERROR_CONTEXT_ALREADY_CURRENT)        \
  X(CUDA_ERROR_MAP_FAILED)                     \
  X(CUDA_ERROR_UNMAP_FAILED)                   \
  X(CUDA_ERROR_ARRAY_IS_MAPPED)                \
  X(CUDA_ERROR_ALREADY_MAPPED)                 \
  X(CUDA_ERROR_NO_BINARY_FOR_GPU)              \
  X(CUDA_ERROR_ALREADY_ACQUIRED)               \
  X(CUDA_ERROR_NOT_MAPPED)                     \
  X(CUDA_ERROR_NOT_MAPPED_AS_ARRAY)            \
  X(CUDA_ERROR_NOT_MAPPED_AS_POINTER)          \
  X(CUDA_ERROR_ECC_UNCORRECTABLE)              \
  X(CUDA_ERROR_UNSUPPORTED_LIMIT)              \
  X(CUDA_ERROR_CONTEXT_ALREADY_IN_USE)         \
  X(CUDA_ERROR_PEER_ACCESS_UNSUPPORTED)        \
  X(CUDA_ERROR_INVALID_PTX)                    \
  X(CUDA_ERROR_INVALID_GRAPHICS_CONTEXT)       \
  X(CUDA_ERROR_NVLINK_UNCORRECTABLE)           \
  X(CUDA_ERROR_JIT_COMPILER_NOT_FOUND)         \
  X(CUDA_ERROR_UNSUPPORTED_PTX_VERSION)        \
  X(CUDA_ERROR_JIT_COMPILATION_DISABLED)       \
  X(CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY)      \
  X(CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC)       \
  X(CUDA_ERROR_CONTAINED)                      \
  X(CUDA_ERROR_INVALID_SOURCE)                 \
  X(CUDA_ERROR_FILE_NOT_FOUND)                 \
  X(CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND) \
  X(CUDA_ERROR_SHARED_OBJECT_INIT_FAILED)      \
  X(CUDA_ERROR_OPERATING_SYSTEM)               \
  X(CUDA_ERROR_INVALID_HANDLE)                 \
  X(CUDA_ERROR_ILLEGAL_STATE)                  \
  X(CUDA_ERROR_LOSSY_QUERY)                    \
  X(CUDA_ERROR_NOT_FOUND)                      \
  X(CUDA_ERROR_NOT_READY)                      \
  X(CUDA_ERROR_ILLEGAL_ADDRESS)                \
  X(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES)        \
  X(CUDA_ERROR_LAUNCH_TIMEOUT)                 \
  X(CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING)  \
  X(CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED)    \
  X(CUDA_ERROR_PEER_ACCESS_NOT_ENABLED)        \
  X(CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE)         \
  X(CUDA_ERROR_CONTEXT_IS_DESTROYED)           \
  X(CUDA_ERROR_ASSERT)                         \
  X(CUDA_ERROR_TOO_MANY_PEERS)                 \
  X(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED) \
  X(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED)     \
  X(CUDA_ERROR_HARDWARE_STACK_ERROR)           \
  X(CUDA_ERROR_ILLEGAL_INSTRUCTION)            \
  X(CUDA_ERROR_MISALIGNED_ADDRESS)             \
  X(CUDA_ERROR_INVALID_ADDRESS_SPACE)          \
  X(CUDA_ERROR_INVALID_PC)                     \
  X(CUDA_ERROR_LAUNCH_FAILED)                  \
  X(CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE)   \
  X(CUDA_ERROR_TENSOR_MEMORY_LEAK)             \
  X(CUDA_ERROR_NOT_PERMITTED)                  \
  X(CUDA_ERROR_NOT_SUPPORTED)                  \
  X(CUDA_ERROR_SYSTEM_NOT_READY)               \
  X(CUDA_ERROR_SYSTEM_DRIVER_MISMATCH)         \
  X(CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE) \
  X(CUDA_ERROR_MPS_CONNECTION_FAILED)          \
  X(CUDA_ERROR_MPS_RPC_FAILURE)                \
  X(CUDA_ERROR_MPS_SERVER_NOT_READY)           \
  X(CUDA_ERROR_MPS_MAX_CLIENTS_REACHED)        \
  X(CUDA_ERROR_MPS_MAX_CONNECTIONS_REACHED)    \
  X(CUDA_ERROR_MPS_CLIENT_TERMINATED)          \
  X(CUDA_ERROR_CDP_NOT_SUPPORTED)              \
  X(CUDA_ERROR_CDP_VERSION_MISMATCH)           \
  X(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)     \
  X(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED)     \
  X(CUDA_ERROR_STREAM_CAPTURE_MERGE)           \
  X(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED)       \
  X(CUDA_ERROR_STREAM_CAPTURE_UNJOINED)        \
  X(CUDA_ERROR_STREAM_CAPTURE_ISOLATION)       \
  X(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT)        \
  X(CUDA_ERROR_CAPTURED_EVENT)                 \
  X(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD)    \
  X(CUDA_ERROR_TIMEOUT)                        \
  X(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE)      \
  X(CUDA_ERROR_EXTERNAL_DEVICE)                \
  X(CUDA_ERROR_INVALID_CLUSTER_SIZE)           \
  X(CUDA_ERROR_FUNCTION_NOT_LOADED)            \
  X(CUDA_ERROR_INVALID_RESOURCE_TYPE)          \
  X(CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION) \
  X(CUDA_ERROR_KEY_ROTATION)                   \
  X(CUDA_ERROR_UNKNOWN)

std::string VersionString(int version) {
  return absl::StrCat(version / 1000, ".", (version % 1000) / 10);
}

// dlsym into a typed pointer; null when absent.
template <typename Fn>
Fn Symbol(void* handle, const char* name) {
  return reinterpret_cast<Fn>(dlsym(handle, name));
}

// The file the dynamic loader actually mapped for `handle` (a bare soname
// becomes the path it resolved to), for messages and logs.
std::string LoadedPath(void* handle, const std::string& requested) {
  struct link_map* map = nullptr;
  if (dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_name != nullptr &&
      map->l_name[0] != '\0') {
    return map->l_name;
  }
  return requested;
}

// Finds one entry point; see LoadDriver for the order and why.
template <typename Fn>
Status Resolve(const DriverApi& api, const char* base, const char* export_name, int version,
               Fn* out) {
  void* pointer = nullptr;
  if (api.used_proc_address) {
    CUdriverProcAddressQueryResult query = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    // LEGACY_STREAM, not DEFAULT: DEFAULT means "whatever the caller was
    // compiled for", which at this ABI level is legacy too, but the explicit
    // flag documents that stream 0 must be the legacy default stream.
    // `version` is the variant Fn is typed for (driver_entry_points.h); the
    // driver returns the newest variant at or below it, i.e. that one.
    CUresult result =
        api.cuGetProcAddress(base, &pointer, version, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &query);
    if (result != CUDA_SUCCESS || query != CU_GET_PROC_ADDRESS_SUCCESS) pointer = nullptr;
  }
  // The versioned export name pins the same ABI, so it is a safe fallback
  // (and the only way on a driver older than this header).
  if (pointer == nullptr) pointer = dlsym(api.handle, export_name);
  if (pointer == nullptr) {
    std::string what = export_name;
    if (std::string_view(base) != export_name) {
      absl::StrAppend(&what, " (", base, " as of CUDA ", VersionString(version), ")");
    }
    return Status::NotFound(absl::StrCat("CUDA driver ", api.path, " (CUDA ",
                                         VersionString(api.driver_version), ") lacks ", what));
  }
  *out = reinterpret_cast<Fn>(pointer);
  return Status::Ok();
}

// Initializes the driver behind `handle` and fills the table. Decisive: the
// caller does not try another candidate after this.
Status InitDriver(void* handle, std::string path, std::unique_ptr<DriverApi>* out) {
  auto api = std::make_unique<DriverApi>();
  api->handle = handle;
  api->path = std::move(path);
  api->cuInit = Symbol<decltype(api->cuInit)>(handle, "cuInit");
  api->cuDriverGetVersion = Symbol<decltype(api->cuDriverGetVersion)>(handle, "cuDriverGetVersion");
  api->cuGetErrorName = Symbol<decltype(api->cuGetErrorName)>(handle, "cuGetErrorName");
  api->cuGetErrorString = Symbol<decltype(api->cuGetErrorString)>(handle, "cuGetErrorString");
  api->cuGetProcAddress =
      Symbol<decltype(api->cuGetProcAddress)>(handle, FERRY_CUDA_EXPORT_NAME(cuGetProcAddress));
  if (api->cuInit == nullptr || api->cuDriverGetVersion == nullptr) {
    // Not a CUDA driver at all; nothing of it ran, so it may be unloaded.
    dlclose(handle);
    return Status::NotFound(
        absl::StrCat(api->path, " is not a CUDA driver (it lacks cuInit or cuDriverGetVersion)"));
  }
  // From here on the library is never closed (see DriverApi::handle).

  CUresult result = api->cuInit(0);
  if (result != CUDA_SUCCESS) {
    std::string hint;
    if (result == CUDA_ERROR_STUB_LIBRARY) {
      hint = " (this is the CUDA toolkit's link-time stub, not NVIDIA's driver)";
    } else if (result == CUDA_ERROR_NO_DEVICE) {
      hint = " (the driver sees no GPU)";
    }
    return Status::Cuda(result, absl::StrCat("CUDA driver ", api->path, ": ",
                                             api->Check(result, "cuInit(0)").message(), hint));
  }
  FERRY_RETURN_IF_ERROR(FERRY_CU(*api, cuDriverGetVersion, &api->driver_version)
                            .WithContext(absl::StrCat("CUDA driver ", api->path)));
  api->used_proc_address = api->cuGetProcAddress != nullptr && api->driver_version >= CUDA_VERSION;

  // Devices before the full table, so a driver without GPUs says so rather
  // than reporting whichever entry point it happens to lack.
  FERRY_RETURN_IF_ERROR(Resolve(*api, "cuDeviceGetCount", FERRY_CUDA_EXPORT_NAME(cuDeviceGetCount),
                                kVersion_cuDeviceGetCount, &api->cuDeviceGetCount));
  int count = 0;
  FERRY_RETURN_IF_ERROR(FERRY_CU(*api, cuDeviceGetCount, &count)
                            .WithContext(absl::StrCat("CUDA driver ", api->path)));
  if (count <= 0) {
    return Status::Cuda(CUDA_ERROR_NO_DEVICE, absl::StrCat("CUDA driver ", api->path, " (CUDA ",
                                                           VersionString(api->driver_version),
                                                           ") reports no CUDA devices"));
  }

#define FERRY_CUDA_RESOLVE_(name, version) \
  FERRY_RETURN_IF_ERROR(Resolve(*api, #name, FERRY_CUDA_EXPORT_NAME(name), version, &api->name));
  FERRY_CUDA_DRIVER_ENTRY_POINTS(FERRY_CUDA_RESOLVE_)
#undef FERRY_CUDA_RESOLVE_
  // Optional ones: absent is fine (their member stays null).
#define FERRY_CUDA_RESOLVE_OPTIONAL_(name, version) \
  (void)Resolve(*api, #name, FERRY_CUDA_EXPORT_NAME(name), version, &api->name);
  FERRY_CUDA_OPTIONAL_ENTRY_POINTS(FERRY_CUDA_RESOLVE_OPTIONAL_)
#undef FERRY_CUDA_RESOLVE_OPTIONAL_

  FERRY_LOG(kInfo) << "loaded CUDA driver " << api->path << " (CUDA "
                   << VersionString(api->driver_version) << ", " << count
                   << " device(s), entry points via "
                   << (api->used_proc_address ? "cuGetProcAddress" : "dlsym") << "; green contexts "
                   << (api->HasGreenContexts() ? "available" : "unavailable") << ")";
  *out = std::move(api);
  return Status::Ok();
}

}  // namespace

const char* CuResultName(CUresult result) {
  switch (result) {
#define FERRY_CU_RESULT_CASE_(name) \
  case name:                        \
    return #name;
    FERRY_CU_RESULTS(FERRY_CU_RESULT_CASE_)
#undef FERRY_CU_RESULT_CASE_
    default:
      break;
  }
  return "CUresult (unknown value)";
}

std::string DriverApi::ErrorName(CUresult result) const {
  const char* name = nullptr;
  if (cuGetErrorName != nullptr && cuGetErrorName(result, &name) == CUDA_SUCCESS &&
      name != nullptr) {
    return name;
  }
  const char* known = CuResultName(result);
  if (std::string_view(known).starts_with("CUDA_")) return known;
  return absl::StrCat("CUresult ", static_cast<int>(result));
}

Status DriverApi::Check(CUresult result, const char* call) const {
  if (result == CUDA_SUCCESS) return Status::Ok();
  std::string message = absl::StrCat(call, ": ", ErrorName(result));
  const char* text = nullptr;
  if (cuGetErrorString != nullptr && cuGetErrorString(result, &text) == CUDA_SUCCESS &&
      text != nullptr) {
    absl::StrAppend(&message, ": ", text);
  }
  return Status::Cuda(result, std::move(message));
}

std::vector<EntryPointName> EntryPointNames() {
  return {
#define FERRY_CUDA_NAME_(name, version) \
  EntryPointName{#name, FERRY_CUDA_EXPORT_NAME(name), version},
      FERRY_CUDA_DRIVER_ENTRY_POINTS(FERRY_CUDA_NAME_)
#undef FERRY_CUDA_NAME_
  };
}

std::vector<std::string> DefaultDriverCandidates() {
  return {
      // Debian/Ubuntu, then RHEL/SUSE-style multilib.
      "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
      "/usr/lib64/libcuda.so.1",
      "/usr/lib/aarch64-linux-gnu/libcuda.so.1",
      // Containers: the NVIDIA container toolkit / device plugin mounts.
      "/usr/local/nvidia/lib64/libcuda.so.1",
      "/usr/local/nvidia/lib/libcuda.so.1",
      // GPU operator's driver container, seen from the host.
      "/run/nvidia/driver/usr/lib/x86_64-linux-gnu/libcuda.so.1",
      // WSL2.
      "/usr/lib/wsl/lib/libcuda.so.1",
      "/usr/lib/libcuda.so.1",
      // Last: the loader's own search (LD_LIBRARY_PATH, ld.so.cache). This is
      // where ferry's stand-in may turn up; the marker check refuses it.
      "libcuda.so.1",
  };
}

Status LoadDriver(const std::vector<std::string>& candidates, bool explicit_path,
                  std::unique_ptr<DriverApi>* out, bool allow_ferry_driver) {
  std::vector<std::string> tried;
  for (const std::string& candidate : candidates) {
    const bool is_path = candidate.find('/') != std::string::npos;
    if (is_path && !explicit_path && access(candidate.c_str(), F_OK) != 0) {
      tried.push_back(absl::StrCat(candidate, " (absent)"));
      continue;
    }
    dlerror();  // clear any stale error
    void* handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* error = dlerror();
      std::string why = error != nullptr ? error : "dlopen failed";
      if (explicit_path) {
        return Status::NotFound(absl::StrCat("cannot load CUDA driver ", candidate, ": ", why));
      }
      tried.push_back(absl::StrCat(candidate, " (", why, ")"));
      continue;
    }
    std::string loaded = LoadedPath(handle, candidate);
    if (dlsym(handle, kFerryClientMarker) != nullptr && allow_ferry_driver) {
      FERRY_LOG(kWarning) << "loading " << loaded
                          << ", ferry's own stand-in libcuda, as the CUDA driver (allowed for "
                             "tests): every call is forwarded to another ferryd";
    } else if (dlsym(handle, kFerryClientMarker) != nullptr) {
      // ferry's stand-in would forward ferryd's calls back to a ferryd.
      dlclose(handle);
      std::string why = absl::StrCat(loaded, " is ferry's own stand-in libcuda (it exports ",
                                     kFerryClientMarker, "), not NVIDIA's driver");
      if (explicit_path) return Status::InvalidArgument(why + "; ferryd needs the real driver");
      FERRY_LOG(kWarning) << "skipping " << loaded << ": ferry's own stand-in libcuda (it exports "
                          << kFerryClientMarker << "), not NVIDIA's driver";
      tried.push_back(absl::StrCat(loaded, " (ferry's stand-in, skipped)"));
      continue;
    }
    return InitDriver(handle, std::move(loaded), out);
  }
  return Status::NotFound(
      absl::StrCat("no NVIDIA driver found; tried ", absl::StrJoin(tried, ", ")));
}

}  // namespace ferry::backend::cuda_internal
