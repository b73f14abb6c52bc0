// Runtime: the stand-in driver's one global (STYLE 11). It is created on first
// use and never destroyed, so cu* calls from atexit handlers and static
// destructors still work.
//
// It holds the connection to ferryd (opened by cuInit), the devices the
// server described at the handshake (all device queries are answered from
// them), and the client's handle tables. Handles the program sees are ids the
// client chooses (DESIGN invariant 2): the value of a CUcontext, CUstream,
// CUevent, CUmodule, CUfunction, CUlibrary or CUkernel is (kind << 48 |
// serial), a non-canonical address, and the same id names the object on the
// wire.
//
// Libraries and kernels are context-independent: a CUlibrary is loaded once
// (the server keeps its image), and a CUkernel names (library, kernel name).
// Where one is used in a context, the library gets an ordinary module there
// (LibraryModule) and the kernel a function in that module (KernelFunction),
// each registered with the server by a fire-and-forget call the first time,
// so a CUkernel works in the primary context and in created contexts alike,
// and costs no round trip on its first launch in each. Every handle a
// program passes in is looked up here first, so a bad one is answered
// locally with CUDA_ERROR_INVALID_HANDLE / INVALID_CONTEXT.
//
// Thread-safety: all methods are thread-safe; the tables are guarded by mu_.
// The current-context stack is per thread, as in CUDA.
#pragma once

#include <cuda.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "client/connection.h"
#include "common/status.h"

namespace ferry::client {

struct DeviceInfo {
  std::string name;
  std::array<uint8_t, 16> uuid{};
  uint64_t total_memory = 0;
  int pci_domain = 0, pci_bus = 0, pci_device = 0;
  std::vector<int32_t> attributes;
  int Attribute(int attribute) const {
    return attribute >= 0 && attribute < static_cast<int>(attributes.size()) ? attributes[attribute]
                                                                             : 0;
  }
};

enum class HandleKind : uint64_t {
  kContext = 0xC7,
  kStream = 0x57,
  kEvent = 0xE7,
  kModule = 0x3D,
  kFunction = 0xF7,
  kLibrary = 0x1B,
  kKernel = 0x4E,
};

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

struct ContextState {
  int device = 0;
  unsigned flags = 0;
  bool primary = false;
  bool live = false;  // exists on the server
};
struct StreamState {
  uint64_t ctx = 0;
  unsigned flags = 0;
  int priority = 0;
};
struct EventState {
  uint64_t ctx = 0;
  unsigned flags = 0;
  // Its latest cuEventRecord: the stream and the record call's seq (0: never
  // recorded).
  StreamKey recorded_on;
  uint64_t recorded_seq = 0;
};
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
struct DeviceAllocation {
  uint64_t size = 0;
  uint64_t ctx = 0;
  bool global = false;  // a module global: copyable, never freed by cuMemFree
};
struct HostAllocation {
  uint64_t size = 0;
  unsigned flags = 0;
  bool registered = false;  // cuMemHostRegister'ed program memory (not ours to free)
};

// Where a stream-ordered call goes on the wire.
struct StreamTarget {
  uint64_t ctx = 0;
  uint64_t stream = 0;  // 0 = the context's legacy stream
};

// Runs and drops the CUDA runtime's context-local storage destructors of
// `ctx` (export_tables.cc). Called when a context goes away, while it still
// exists (the destructors free the runtime's resources in it through the
// driver) and without Runtime's lock held.
void RunContextLocalStorageDestructors(uint64_t ctx);

class Runtime {
 public:
  static Runtime& Get();

  // cuInit: connects to FERRY_SERVER (default 127.0.0.1:7070) once; later
  // calls return the first outcome.
  Status Init(unsigned flags);
  // OK after a successful cuInit; NOT_INITIALIZED before; the connection's
  // failure once it broke.
  Status Ready();
  Connection& connection() { return *connection_; }
  const std::vector<DeviceInfo>& devices() const { return devices_; }
  Status CheckDevice(int device) const;

  static uint64_t HandleId(const void* handle) { return reinterpret_cast<uint64_t>(handle); }
  static bool IsKind(uint64_t id, HandleKind kind) {
    return (id >> 48) == static_cast<uint64_t>(kind);
  }
  template <typename Handle>
  static Handle ToHandle(uint64_t id) {
    return reinterpret_cast<Handle>(id);
  }
  uint64_t NewId(HandleKind kind);

  // --- contexts ---------------------------------------------------------------
  // The calling thread's current context (0 if none).
  uint64_t CurrentContextId();
  // The current context, created on the server if it is a primary context
  // that is not live yet. INVALID_CONTEXT when there is none.
  Status CurrentContext(uint64_t* ctx);
  Status EnsureLive(uint64_t ctx);
  Status CheckContext(uint64_t ctx);
  void SetCurrent(uint64_t ctx);
  void PushCurrent(uint64_t ctx);
  uint64_t PopCurrent();
  // The primary context id of `device` (stable for the process).
  uint64_t PrimaryContextId(int device);
  Status RetainPrimary(int device, uint64_t* ctx);
  Status ReleasePrimary(int device);
  Status ResetPrimary(int device);
  Status SetPrimaryFlags(int device, unsigned flags);
  void PrimaryState(int device, unsigned* flags, int* active);
  Status CreateContext(int device, unsigned flags, uint64_t* ctx);
  Status DestroyContext(uint64_t ctx);
  Status ContextDevice(uint64_t ctx, int* device);
  Status ContextFlags(uint64_t ctx, unsigned* flags);

  // --- streams and events -------------------------------------------------------
  // Maps a CUstream from the program to its wire target. `per_thread_default`
  // is true for the _ptsz/_ptds entry points, where stream 0 means the
  // per-thread default stream.
  Status ResolveStream(CUstream stream, bool per_thread_default, StreamTarget* target);
  Status AddStream(uint64_t ctx, unsigned flags, int priority, uint64_t* id);
  Status RemoveStream(uint64_t id, StreamState* removed);
  Status FindStream(uint64_t id, StreamState* out);
  Status AddEvent(uint64_t ctx, unsigned flags, uint64_t* id);
  Status RemoveEvent(uint64_t id);
  Status FindEvent(uint64_t id, EventState* out);
  // Notes that the record call `seq` on `stream` is event `id`'s latest.
  void NoteEventRecord(uint64_t id, StreamKey stream, uint64_t seq);

  // --- modules and functions ----------------------------------------------------
  void AddModule(uint64_t id, ModuleState module);
  Status RemoveModule(uint64_t id);
  Status FindModule(uint64_t id, ModuleState* out);
  // The function `name` of `module`: one id per (module, name), registered
  // with the server (posted, no round trip) the first time it is asked for.
  // NOT_FOUND if the module has no such kernel.
  Status ModuleFunction(uint64_t module, const std::string& name, uint64_t* id);
  Status FindFunction(uint64_t id, FunctionState* out);
  // The same without copying (the launch path): the state is immutable.
  Status FindFunction(uint64_t id, std::shared_ptr<const FunctionState>* out);

  // The function a CUfunction handle names. A CUkernel cast to CUfunction is
  // accepted (as the driver does): it names the kernel's function in `ctx`,
  // or in the current context when `ctx` is 0. `*id` is the function's id.
  Status ResolveFunction(uint64_t handle, uint64_t ctx, uint64_t* id, FunctionState* out);
  Status ResolveFunction(uint64_t handle, uint64_t ctx, uint64_t* id,
                         std::shared_ptr<const FunctionState>* out);
  // cuModuleGetGlobal: asks the server for the global's address and size in
  // `module` and makes that range copyable.
  Status ModuleGlobal(uint64_t module, const char* name, uint64_t* dptr, uint64_t* bytes);

  // --- libraries and kernels ----------------------------------------------------
  // Records a library the server has loaded; with eager loading
  // (CUDA_MODULE_LOADING=EAGER) it is loaded into every live context at once.
  Status AddLibrary(uint64_t id, LibraryState library);
  // Forgets the library, its kernels, and its modules and functions in every
  // context, and tells the server. INVALID_HANDLE for an unknown id.
  Status UnloadLibrary(uint64_t id);
  Status FindLibrary(uint64_t id, LibraryState* out);
  // The CUkernel of `name` in `library` (one id per name); NOT_FOUND if the
  // library has no such kernel.
  Status LibraryKernel(uint64_t library, const std::string& name, uint64_t* kernel);
  Status FindKernel(uint64_t id, KernelState* out);
  // The library's module in live context `ctx`, loaded there on first use.
  Status LibraryModule(uint64_t library, uint64_t ctx, uint64_t* module);
  // The kernel's function in live context `ctx`, made on first use (with the
  // kernel's per-device attributes applied).
  Status KernelFunction(uint64_t kernel, uint64_t ctx, uint64_t* function);
  // A live context of `device` to answer per-device kernel queries in: the
  // current context if it is on `device`, else the device's primary context.
  Status ContextForDevice(int device, uint64_t* ctx);
  // cuKernelSetAttribute / cuKernelSetCacheConfig on `device`: validated by
  // the server on the kernel's function in ContextForDevice, then recorded
  // and applied to the kernel's functions in every context of the device.
  Status SetKernelAttribute(uint64_t kernel, int device, int attribute, int value);
  Status SetKernelCacheConfig(uint64_t kernel, int device, int config);

  // --- memory ------------------------------------------------------------------
  void AddDeviceAllocation(uint64_t dptr, uint64_t size, uint64_t ctx, bool global = false);
  // OK when [address, address + bytes) lies inside one device allocation.
  Status CheckDeviceRange(uint64_t address, uint64_t bytes, const char* what);
  Status RemoveDeviceAllocation(uint64_t dptr);
  // The allocation containing `address`, if any.
  bool FindDeviceAllocation(uint64_t address, uint64_t* base, DeviceAllocation* out);
  void AddHostAllocation(const void* ptr, HostAllocation allocation);
  Status RemoveHostAllocation(const void* ptr, bool registered, HostAllocation* removed);
  bool FindHostAllocation(const void* address, const void** base, HostAllocation* out);

  // Waits until `seq` and every asynchronous copy issued before it landed.
  Status AfterSynchronize(uint64_t seq);
  // After a query found `stream`'s work up to `seq` done: waits until the
  // asynchronous copies queued on it before `seq` landed (done already, so
  // only their replies are awaited), so the program can read their bytes.
  Status AfterQuery(StreamKey stream, uint64_t seq);

 private:
  Runtime() = default;
  Status Connect();
  // Frees the client-side records of everything `ctx` owned.
  void ForgetContextResources(uint64_t ctx);
  // One id per (module, name); `*created` is true the first time.
  Status AddFunction(uint64_t module, const std::string& name, uint64_t* id, bool* created);
  // ModuleFunction / LibraryModule / KernelFunction with registration_mu_ held.
  Status ModuleFunctionLocked(uint64_t module, const std::string& name, uint64_t* id);
  Status LibraryModuleLocked(uint64_t library, uint64_t ctx, uint64_t* module);
  Status KernelFunctionLocked(uint64_t kernel, uint64_t ctx, uint64_t* function);
  // Eager loading: loads every library into `ctx` (just created).
  void LoadLibrariesEagerly(uint64_t ctx);

  std::once_flag init_once_;
  Status init_status_ = Status::Cuda(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
  std::atomic<bool> initialized_{false};
  std::unique_ptr<Connection> connection_;
  std::vector<DeviceInfo> devices_;  // fixed after Init

  std::mutex mu_;
  std::atomic<uint64_t> next_serial_{1};
  std::unordered_map<uint64_t, ContextState> contexts_;                           // guarded by mu_
  std::map<int, uint64_t> primary_ids_;                                           // guarded by mu_
  std::map<int, int> primary_refcounts_;                                          // guarded by mu_
  std::map<int, unsigned> primary_flags_;                                         // guarded by mu_
  std::unordered_map<uint64_t, StreamState> streams_;                             // guarded by mu_
  std::unordered_map<uint64_t, EventState> events_;                               // guarded by mu_
  std::unordered_map<uint64_t, ModuleState> modules_;                             // guarded by mu_
  std::unordered_map<uint64_t, std::shared_ptr<const FunctionState>> functions_;  // guarded by mu_
  std::unordered_map<uint64_t, LibraryState> libraries_;                          // guarded by mu_
  std::unordered_map<uint64_t, KernelState> kernels_;                             // guarded by mu_
  // Serialises making a function, a library's module or a kernel's function
  // in a context with posting the calls that register them with the server,
  // so that a call another thread issues after finding one registered reaches
  // the server after them. Taken before mu_, never while waiting for a
  // context to be created.
  std::mutex registration_mu_;
  std::map<uint64_t, DeviceAllocation> device_allocations_;  // guarded by mu_
  std::map<uintptr_t, HostAllocation> host_allocations_;     // guarded by mu_
};

}  // namespace ferry::client
