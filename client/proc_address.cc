// Entry points cuGetProcAddress and cuGetProcAddress_v2, answered from the
// generated table (proc_address.h). Purely local: no server, no cuInit.
#include "client/proc_address.h"

#include <cuda.h>

#include <algorithm>
#include <cstring>

namespace ferry::client {

ProcLookup LookUpProcAddress(std::string_view name, int cuda_version, bool per_thread,
                             DriverFunction* function) {
  *function = nullptr;
  const ProcAddressEntry* begin = kProcAddressEntries;
  const ProcAddressEntry* end = kProcAddressEntries + kProcAddressEntryCount;
  const ProcAddressEntry* first = std::lower_bound(
      begin, end, name, [](const ProcAddressEntry& e, std::string_view n) { return e.name < n; });
  if (first == end || first->name != name) return ProcLookup::kNotFound;
  // The generations of one name are adjacent and in version order: take the
  // newest one the caller's CUDA version knows.
  const ProcAddressEntry* chosen = nullptr;
  for (const ProcAddressEntry* e = first; e != end && e->name == name; ++e) {
    if (e->version <= cuda_version) chosen = e;
  }
  if (chosen == nullptr) return ProcLookup::kVersionNotSufficient;
  // The per-thread variant has the same ABI as its generation; a program
  // built before it existed gets the legacy-stream export.
  if (per_thread && chosen->per_thread_function != nullptr &&
      chosen->per_thread_version <= cuda_version) {
    *function = chosen->per_thread_function;
  } else {
    *function = chosen->function;
  }
  return ProcLookup::kFound;
}

namespace {

CUresult GetProcAddress(const char* symbol, void** pfn, int cuda_version, cuuint64_t flags,
                        CUdriverProcAddressQueryResult* status) {
  if (status != nullptr) *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  if (symbol == nullptr || pfn == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *pfn = nullptr;
  constexpr cuuint64_t kKnownFlags =
      CU_GET_PROC_ADDRESS_LEGACY_STREAM | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
  if ((flags & ~kKnownFlags) != 0) return CUDA_ERROR_INVALID_VALUE;
  // CU_GET_PROC_ADDRESS_DEFAULT means the legacy stream for a library (only
  // code compiled with CUDA_API_PER_THREAD_DEFAULT_STREAM asks otherwise,
  // and then it says so with the flag).
  const bool per_thread = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
  DriverFunction function = nullptr;
  switch (LookUpProcAddress(symbol, cuda_version, per_thread, &function)) {
    case ProcLookup::kFound:
      *pfn = reinterpret_cast<void*>(function);
      if (status != nullptr) *status = CU_GET_PROC_ADDRESS_SUCCESS;
      return CUDA_SUCCESS;
    case ProcLookup::kVersionNotSufficient:
      if (status != nullptr) *status = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
      return CUDA_ERROR_NOT_FOUND;
    case ProcLookup::kNotFound:
      break;
  }
  return CUDA_ERROR_NOT_FOUND;
}

}  // namespace
}  // namespace ferry::client

extern "C" {

// CUDA 12.0+: reports through `symbolStatus` why a name was not found.
CUresult CUDAAPI cuGetProcAddress_v2(const char* symbol, void** pfn, int cudaVersion,
                                     cuuint64_t flags,
                                     CUdriverProcAddressQueryResult* symbolStatus) {
  return ferry::client::GetProcAddress(symbol, pfn, cudaVersion, flags, symbolStatus);
}

// CUDA 11.3 - 11.8.
CUresult CUDAAPI cuGetProcAddress(const char* symbol, void** pfn, int cudaVersion,
                                  cuuint64_t flags) {
  return ferry::client::GetProcAddress(symbol, pfn, cudaVersion, flags, nullptr);
}

}  // extern "C"
