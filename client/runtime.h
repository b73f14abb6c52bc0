// Runtime: the stand-in driver's one global (STYLE 11). It is created on first
// use and never destroyed, so cu* calls from atexit handlers and static
// destructors still work.
//
// It holds the connection to ferryd (opened by cuInit), the devices the
// server described at the handshake (all device queries are answered from
// them), and the client's handle tables. Handles the program sees are ids the
// client chooses (DESIGN invariant 2): the value of a CUcontext, CUstream,
// CUevent, CUmodule or CUfunction is (kind << 48 | serial), a non-canonical
// address, and the same id names the object on the wire. Every handle a
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
    return attribute >= 0 && attribute < static_cast<int>(attributes.size()) ? attributes[attribute] : 0;
  }
};

enum class HandleKind : uint64_t {
  kContext = 0xC7,
  kStream = 0x57,
  kEvent = 0xE7,
  kModule = 0x3D,
  kFunction = 0xF7,
};

struct ParamLayout {
  uint32_t offset = 0;
  uint32_t size = 0;
};
struct KernelInfo {
  std::vector<ParamLayout> params;
  uint64_t param_bytes = 0;  // size of the packed buffer
};

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
};
struct ModuleState {
  uint64_t ctx = 0;
  std::map<std::string, KernelInfo> kernels;
  std::map<std::string, uint64_t> globals;  // name -> size
};
struct FunctionState {
  uint64_t module = 0;
  uint64_t ctx = 0;
  std::string name;
  KernelInfo kernel;
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

  // --- modules and functions ----------------------------------------------------
  void AddModule(uint64_t id, ModuleState module);
  Status RemoveModule(uint64_t id);
  Status FindModule(uint64_t id, ModuleState* out);
  // The function `name` of `module`: one id per (module, name). `*created` is
  // true the first time, when the caller must register it with the server.
  Status AddFunction(uint64_t module, const std::string& name, uint64_t* id, bool* created);
  Status FindFunction(uint64_t id, FunctionState* out);
  // The same without copying (the launch path): the state is immutable.
  Status FindFunction(uint64_t id, std::shared_ptr<const FunctionState>* out);

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

 private:
  Runtime() = default;
  Status Connect();
  // Frees the client-side records of everything `ctx` owned.
  void ForgetContextResources(uint64_t ctx);

  std::once_flag init_once_;
  Status init_status_ = Status::Cuda(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
  std::atomic<bool> initialized_{false};
  std::unique_ptr<Connection> connection_;
  std::vector<DeviceInfo> devices_;  // fixed after Init

  std::mutex mu_;
  std::atomic<uint64_t> next_serial_{1};
  std::unordered_map<uint64_t, ContextState> contexts_;  // guarded by mu_
  std::map<int, uint64_t> primary_ids_;                  // guarded by mu_
  std::map<int, int> primary_refcounts_;                 // guarded by mu_
  std::map<int, unsigned> primary_flags_;                // guarded by mu_
  std::unordered_map<uint64_t, StreamState> streams_;    // guarded by mu_
  std::unordered_map<uint64_t, EventState> events_;      // guarded by mu_
  std::unordered_map<uint64_t, ModuleState> modules_;    // guarded by mu_
  std::unordered_map<uint64_t, std::shared_ptr<const FunctionState>> functions_;  // guarded by mu_
  std::map<uint64_t, DeviceAllocation> device_allocations_;  // guarded by mu_
  std::map<uintptr_t, HostAllocation> host_allocations_;     // guarded by mu_
};

}  // namespace ferry::client
