// Test helper: ferry's built libcuda.so.1, opened the way the CUDA runtime
// opens a driver (dlopen RTLD_LOCAL, no server), and the toolkit's lists of
// driver names (cuda.h declarations, stub library exports, PFN typedefs).
//
// Thread-safety: DriverLibrary::Get() is thread-safe; the rest reads files.
#pragma once

#include <cuda.h>

#include <map>
#include <set>
#include <string>
#include <vector>

namespace ferry::test {

class DriverLibrary {
 public:
  // The library opened once per process (never closed); nullptr handle and
  // error() set when it could not be opened.
  static DriverLibrary& Get();

  void* handle() const { return handle_; }
  const std::string& error() const { return error_; }

  // dlsym in this library only; nullptr when absent.
  void* Find(const std::string& name) const;

  template <typename Function>
  Function Symbol(const std::string& name) const {
    return reinterpret_cast<Function>(Find(name));
  }

  // The exported name of the function at `address` ("" if unknown).
  static std::string NameOf(const void* address);

  // Shorthand for cuGetProcAddress_v2 of this library.
  CUresult GetProc(const std::string& name, int version, cuuint64_t flags, void** pfn,
                   CUdriverProcAddressQueryResult* status) const;

 private:
  DriverLibrary();
  void* handle_ = nullptr;
  std::string error_;
};

// One PFN_<name>_v<version>[_ptds|_ptsz] typedef.
struct PfnTypedef {
  std::string name;
  int version = 0;
  std::string suffix;  // "", "_ptds" or "_ptsz"
};

std::string ReadFile(const std::string& path);
// The PFN typedefs of the toolkit's *Typedefs.h headers.
std::vector<PfnTypedef> ToolkitPfnTypedefs();
// The functions cuda.h declares, and the names its version macros expand to.
std::set<std::string> CudaHeaderFunctionNames();
// The symbols the toolkit's stub libcuda.so exports (nm -D).
std::set<std::string> StubLibraryExports();
// The cu* functions `library` exports (nm -D): 'T' for a strong definition,
// 'W' for a weak one (in ferry's library: a generated NOT_SUPPORTED stub).
std::map<std::string, char> ExportedFunctions(const std::string& library);

}  // namespace ferry::test
