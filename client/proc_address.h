// cuGetProcAddress's map: (function name, requested CUDA version, per-thread
// default stream flag) -> the ferry entry point with that ABI.
//
// The CUDA runtime finds nearly every driver function through
// cuGetProcAddress_v2, asking for a bare name ("cuMemAlloc") and the CUDA
// version it was built for; the driver must answer with the entry point whose
// parameters match that version (cuMemAlloc at 2000 takes 32-bit sizes,
// cuMemAlloc_v2 from 3020 takes size_t). The table is generated at build time
// from the toolkit's cudaTypedefs.h (see generate_driver_tables.py), one row
// per ABI generation, and holds addresses taken at link time: the library may
// be loaded RTLD_LOCAL, where dlsym(RTLD_DEFAULT) would not find it.
//
// Deliberately free of cuda.h: the generated table declares the driver's
// names without parameters.
//
// Thread-safety: the table is immutable; lookups are thread-safe, need no
// server and work before cuInit.
#pragma once

#include <cstddef>
#include <string_view>

namespace ferry::client {

using DriverFunction = void (*)();

// One ABI generation of a driver function.
struct ProcAddressEntry {
  const char* name;  // without version suffix: "cuMemcpyHtoDAsync"
  int version;       // the CUDA version that introduced this ABI
  DriverFunction function;
  int per_thread_version;              // when the per-thread variant appeared; 0 if none
  DriverFunction per_thread_function;  // its _ptds/_ptsz export, or nullptr
};

// Generated; sorted by (name, version).
extern const ProcAddressEntry kProcAddressEntries[];
extern const size_t kProcAddressEntryCount;

enum class ProcLookup {
  kFound,
  kNotFound,              // ferry knows no function of that name
  kVersionNotSufficient,  // it exists, but only from a later CUDA version
};

// The entry point for `name` as a program built for `cuda_version` expects
// it: the newest generation introduced at or before `cuda_version`, and with
// `per_thread` its per-thread-default-stream export when that generation has
// one (and it existed by `cuda_version`). `*function` is nullptr unless
// kFound.
ProcLookup LookUpProcAddress(std::string_view name, int cuda_version, bool per_thread,
                             DriverFunction* function);

}  // namespace ferry::client
