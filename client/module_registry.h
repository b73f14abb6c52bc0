// ModuleRegistry: the client's table of code objects — modules and their
// functions (per context), libraries and their kernels (context-independent),
// and where each library and kernel has been instantiated in a context (the
// library's module there, the kernel's function there).
//
// Libraries and kernels outlive contexts: when a context goes, only their
// share in it (modules, functions) goes. Making a module or function also
// means registering it with the server; Runtime does that and records the
// outcome here, so nothing in this class talks to the server.
//
// Thread-safety: all methods are thread-safe; mu_ guards every table. The
// one call out under mu_ is AddLibraryModule's `still_live`, which may take
// the context registry's lock (lock order: ModuleRegistry::mu_, then
// ContextRegistry's), so the context registry never calls in here.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "client/handles.h"
#include "common/status.h"

namespace ferry::client {

struct ParamLayout {
  uint32_t offset = 0;
  uint32_t size = 0;
};
struct KernelInfo {
  std::vector<ParamLayout> params;
  uint64_t param_bytes = 0;  // size of the packed buffer
};

// cuFuncGetParamInfo / cuKernelGetParamInfo: where parameter `index` of
// `kernel` lies in its packed buffer (either output may be null).
Status ParamInfo(const KernelInfo& kernel, size_t index, size_t* offset, size_t* size);

// Kernel layouts by name; immutable once made, so a library shares one with
// its modules in every context and copies of a state are cheap.
using KernelTable = std::shared_ptr<const std::map<std::string, KernelInfo>>;

struct ModuleState {
  uint64_t ctx = 0;
  KernelTable kernels;
  std::map<std::string, uint64_t> globals;  // name -> size
  uint64_t library = 0;                     // nonzero: this is that library's module in `ctx`
};
struct FunctionState {
  uint64_t module = 0;
  uint64_t ctx = 0;
  std::string name;
  KernelInfo kernel;
};
struct LibraryState {
  std::vector<std::string> kernel_names;  // in the order the image lists them
  KernelTable kernels;
  std::map<std::string, uint64_t> globals;     // name -> size
  std::map<std::string, uint64_t> kernel_ids;  // the CUkernel of each name asked for
  std::map<uint64_t, uint64_t> modules;        // context -> the library's module there
};
struct KernelState {
  uint64_t library = 0;
  std::string name;
  KernelInfo info;
  std::map<uint64_t, uint64_t> functions;  // context -> the kernel's function there
  // cuKernelSetAttribute / cuKernelSetCacheConfig, per device: applied to the
  // kernel's function in every context of that device, present and future.
  std::map<int, std::map<int, int>> attributes;  // device -> attribute -> value
  std::map<int, int> cache_configs;              // device -> CUfunc_cache
};

class ModuleRegistry {
 public:
  // `ids` hands out function and kernel ids; it must outlive the registry.
  explicit ModuleRegistry(HandleIds* ids) : ids_(ids) {}

  // --- modules and functions ---
  void AddModule(uint64_t id, ModuleState module);
  // Forgets a module loaded with cuModuleLoad* and its functions;
  // INVALID_HANDLE for an unknown id or a library's module.
  Status RemoveModule(uint64_t id);
  Status FindModule(uint64_t id, ModuleState* out);
  // The function `name` of `module`: one id per (module, name); `*created`
  // is true the first time. NOT_FOUND if the module has no such kernel.
  Status AddFunction(uint64_t module, const std::string& name, uint64_t* id, bool* created);
  // Forgets a function (its registration with the server failed).
  void EraseFunction(uint64_t id);
  Status FindFunction(uint64_t id, FunctionState* out);
  // The same without copying (the launch path): the state is immutable.
  Status FindFunction(uint64_t id, std::shared_ptr<const FunctionState>* out);
  // The function's CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, once the server
  // told it (a property of the loaded code that no call changes): false
  // while unknown or once the function is gone.
  bool MaxThreadsPerBlock(uint64_t id, int* value);
  void NoteMaxThreadsPerBlock(uint64_t id, int value);

  // --- libraries and kernels ---
  void AddLibrary(uint64_t id, LibraryState library);
  // Forgets the library, its kernels, and its modules and functions in every
  // context. INVALID_HANDLE for an unknown id.
  Status RemoveLibrary(uint64_t id);
  Status FindLibrary(uint64_t id, LibraryState* out);
  std::vector<uint64_t> LibraryIds();
  // The CUkernel of `name` in `library` (one id per name); NOT_FOUND if the
  // library has no such kernel.
  Status LibraryKernel(uint64_t library, const std::string& name, uint64_t* kernel);
  Status FindKernel(uint64_t id, KernelState* out);

  // The library's module in `ctx`: `*module` is its id, or 0 when there is
  // none yet and `*fresh` is filled with the state one there would have.
  // INVALID_HANDLE for an unknown library.
  Status LibraryModuleIn(uint64_t library, uint64_t ctx, uint64_t* module, ModuleState* fresh);
  // Records `module` (made from LibraryModuleIn's `fresh`) as the library's
  // module in its context, if `still_live()` (called under mu_) says the
  // context still exists; INVALID_CONTEXT otherwise, and INVALID_HANDLE when
  // the library went meanwhile.
  Status AddLibraryModule(uint64_t library, uint64_t module, ModuleState state,
                          absl::FunctionRef<bool()> still_live);
  // The kernel's function in `ctx`: `*function` is its id, or 0 when there is
  // none yet and `*kernel_state` is filled. INVALID_HANDLE for an unknown
  // kernel.
  Status KernelFunctionIn(uint64_t kernel, uint64_t ctx, uint64_t* function,
                          KernelState* kernel_state);
  // Records `function` as the kernel's function in `ctx`. INVALID_CONTEXT
  // when the function is gone (its context was destroyed meanwhile).
  Status SetKernelFunction(uint64_t kernel, uint64_t ctx, uint64_t function);
  // Records an attribute (or cache config) of the kernel on `device` and
  // returns the kernel's functions as (context, function) pairs.
  Status SetKernelAttribute(uint64_t kernel, int device, int attribute, int value,
                            std::vector<std::pair<uint64_t, uint64_t>>* functions);
  Status SetKernelCacheConfig(uint64_t kernel, int device, int config,
                              std::vector<std::pair<uint64_t, uint64_t>>* functions);

  // Forgets the modules and functions of `ctx`, and the share of every
  // library and kernel in it.
  void ForgetContext(uint64_t ctx);

 private:
  HandleIds* const ids_;
  std::mutex mu_;
  std::unordered_map<uint64_t, ModuleState> modules_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, std::shared_ptr<const FunctionState>> functions_
      ABSL_GUARDED_BY(mu_);
  // NoteMaxThreadsPerBlock's values; entries of functions gone are pruned
  // when one is added.
  std::unordered_map<uint64_t, int> max_threads_per_block_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, LibraryState> libraries_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, KernelState> kernels_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::client
