// Runtime: one client of ferryd. The stand-in driver's entry points use the
// process's one global instance (Get(); README.md, "Rules of the code"),
// created on first use and never destroyed, so cu* calls from atexit
// handlers and static destructors still work; it connects at cuInit, to the
// server the environment names. A test builds instances of its own on a
// session it opened (Connect, or the constructor), as many as it likes in one
// process: nothing of one instance is shared with another, per-thread state
// (the current-context stack, the per-thread default streams) included.
//
// It holds the connection to ferryd, the devices the server described at the
// handshake (all device queries are answered from them), the CUDA runtime's
// context-local storage, and the client's handle tables, one registry per
// job: contexts (ContextRegistry), streams and events (StreamRegistry),
// modules, functions, libraries and kernels (ModuleRegistry), and device and
// page-locked host memory (AllocationRegistry). Handles the program sees are
// ids the client chooses (client/handles.h). Runtime is the glue: what needs
// the connection or more than one registry (creating a context on the
// server, forgetting a destroyed context's objects everywhere) is done here;
// plain lookups go to the registries directly.
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
// Thread-safety: all methods are thread-safe; each registry has its own
// lock, and Runtime never holds one while calling another, except
// ModuleRegistry's call into ContextRegistry (see module_registry.h) and
// AllocationRegistry's (RecordAllocation, with devices on several servers). The
// current-context stack is per thread (and per instance), as in CUDA.
#pragma once

#include <cuda.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "client/allocation_registry.h"
#include "client/array_registry.h"
#include "client/connection.h"
#include "client/context_local_storage.h"
#include "client/context_registry.h"
#include "client/graph_registry.h"
#include "client/handles.h"
#include "client/mempool_registry.h"
#include "client/module_registry.h"
#include "client/stream_registry.h"
#include "client/user_objects.h"
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

// Where a stream-ordered call goes on the wire.
struct StreamTarget {
  uint64_t ctx = 0;
  uint64_t stream = 0;  // 0 = the context's legacy stream
};

// Orders a call on `target`'s stream: `args` is any wire builder with the
// ctx and stream fields.
template <typename Builder>
void SetStreamTarget(Builder args, const StreamTarget& target) {
  args.setCtx(target.ctx);
  args.setStream(target.stream);
}

class Runtime {
 public:
  // The process's global instance, not connected until Init.
  static Runtime& Get();

  // A Runtime on a session that is open already: `connection` after its
  // handshake, `devices` as the HelloReply described them, `session_id` the
  // server's id of the session. Ready() is OK at once and Init does nothing.
  Runtime(std::unique_ptr<Connection> connection, std::vector<DeviceInfo> devices,
          uint64_t session_id);
  // Ends the session (the server frees everything the instance made). Only
  // instances a test built are destroyed; no call may be in progress.
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // A Runtime on several sessions that are open already, one per server, in
  // device order: what a borrow split across servers gives (below, "the
  // sessions behind the devices"). Each `server` names its transport.
  static Status ConnectParts(std::vector<std::unique_ptr<Transport>> transports,
                             const std::vector<std::string>& servers,
                             const Connection::Borrow& borrow, std::unique_ptr<Runtime>* out);

  // Says Hello over `transport` (to a server called `server_name` in
  // messages), borrowing as `borrow` says, and builds a Runtime on the
  // session: what the global's cuInit does after reading the environment.
  // DISCONNECTED when the connection fails or no valid HelloReply comes; the
  // server's refusal (a full pool, an unknown pool) as the server said it.
  static Status Connect(std::unique_ptr<Transport> transport, const std::string& server_name,
                        const Connection::Borrow& borrow, std::unique_ptr<Runtime>* out,
                        ConnectionOptions options = {});

  // cuInit: connects to FERRY_SERVER (default 127.0.0.1:7070) once; later
  // calls return the first outcome. Nothing to do for an instance built on
  // an open session.
  Status Init(unsigned flags);
  // OK after a successful cuInit; NOT_INITIALIZED before; the connection's
  // failure once it broke.
  Status Ready();
  const std::vector<DeviceInfo>& devices() const { return devices_; }
  // The server's id of this client's session (0 before a successful Init);
  // of its first part when the program's devices span servers.
  uint64_t session_id() const { return parts_.empty() ? 0 : parts_.front().session_id; }
  Status CheckDevice(int device) const;

  // --- the sessions behind the devices ----------------------------------------------
  // A program's devices come from one session, or — a borrow split across the
  // servers of a cluster pool (FERRY_GPUS spanning servers) — from one session
  // per server, its *parts*, in device order. Every object belongs to one
  // context, so to one device and one part: its calls go to that part's
  // connection, with device ordinals as that server numbers them. Only after
  // Init (or on an instance built on an open session).
  size_t part_count() const { return parts_.size(); }
  Connection& PartConnection(size_t part) { return *parts_[part].connection; }
  // The part serving `device` (a valid ordinal) and the device's ordinal there.
  size_t PartOfDevice(int device) const;
  int ServerOrdinal(int device) const;
  Connection& DeviceConnection(int device) { return PartConnection(PartOfDevice(device)); }
  // The connection of context `ctx`'s device. A context the registry does not
  // know goes to the first part, where the call fails as the driver's would.
  Connection& ConnectionOf(uint64_t ctx);
  // Page-locked host memory (cuMemHostAlloc, cuMemHostRegister), told to
  // every server's connection (Connection::NoteHostMemory); forgotten before
  // it is freed or unregistered.
  void NoteHostMemory(const void* address, size_t size) {
    for (SessionPart& part : parts_) part.connection->NoteHostMemory(address, size);
  }
  void ForgetHostMemory(const void* address) {
    for (SessionPart& part : parts_) part.connection->ForgetHostMemory(address);
  }
  // The connection of function `function`'s context (the first part's for an
  // unknown function, which fails there).
  Connection& FunctionConnection(uint64_t function);
  // The connection of the calling thread's current context (the first
  // part's without one).
  Connection& CurrentConnection() { return ConnectionOf(CurrentContextId()); }
  // The connection serving the object a handle id names: a context, stream,
  // event, module, function, memory pool or array by the context (or device)
  // it belongs to; any other kind (graphs and their executables, links,
  // physical allocations) by the current context. An unknown id goes to the
  // current context's part, whose server refuses it as unknown.
  Connection& ObjectConnection(uint64_t id);
  // A non-blocking stream of ferry's own in live context `ctx`, made on its
  // server on first use and gone with the context: where copies between
  // servers run (client/across_servers.h), so they neither wait for nor hold
  // up the program's streams there.
  Status TransferStream(uint64_t ctx, StreamTarget* out);
  // Whether contexts `a` and `b` are served by the same session.
  bool SameSession(uint64_t a, uint64_t b);
  // The CUDA runtime's context-local storage (export_tables.cc). Its
  // destructors for a context run when the context goes away.
  ContextLocalStorage& context_local_storage() { return context_local_storage_; }

  // The registries (never null, live as long as the Runtime). Their lookups
  // are answered locally; creating and destroying objects on the server goes
  // through the methods below.
  ContextRegistry& contexts() { return contexts_; }
  StreamRegistry& streams() { return streams_; }
  ModuleRegistry& modules() { return modules_; }
  AllocationRegistry& allocations() { return allocations_; }
  MemPoolRegistry& mem_pools() { return mem_pools_; }
  GraphRegistry& graphs() { return graphs_; }
  ArrayRegistry& arrays() { return arrays_; }  // CUDA arrays, textures and surfaces
  UserObjects& user_objects() { return user_objects_; }

  static uint64_t HandleId(const void* handle) { return reinterpret_cast<uint64_t>(handle); }
  static bool IsKind(uint64_t id, HandleKind kind) { return IsHandleKind(id, kind); }
  template <typename Handle>
  static Handle ToHandle(uint64_t id) {
    return reinterpret_cast<Handle>(id);
  }
  uint64_t NewId(HandleKind kind) { return ids_.New(kind); }

  // --- contexts ---------------------------------------------------------------
  // The calling thread's current context (0 if none).
  uint64_t CurrentContextId();
  // The current context, created on the server if it is a primary context
  // that is not live yet. INVALID_CONTEXT when there is none.
  Status CurrentContext(uint64_t* ctx);
  // Creates `ctx` on the server unless it is live already.
  Status EnsureLive(uint64_t ctx);
  void SetCurrent(uint64_t ctx);
  void PushCurrent(uint64_t ctx);
  uint64_t PopCurrent();
  Status RetainPrimary(int device, uint64_t* ctx);
  Status ReleasePrimary(int device);
  Status ResetPrimary(int device);
  Status SetPrimaryFlags(int device, unsigned flags);
  void PrimaryState(int device, unsigned* flags, int* active);
  Status CreateContext(int device, unsigned flags, uint64_t* ctx);
  Status DestroyContext(uint64_t ctx);

  // --- memory -----------------------------------------------------------------
  // cuMemAlloc's work: `bytes` of device memory in `ctx` at *dptr, recorded
  // in allocations() (RecordAllocation).
  Status AllocDevice(uint64_t ctx, uint64_t bytes, uint64_t* dptr);
  // Records a new allocation (or module global) of `ctx` at [dptr, dptr +
  // bytes). With devices on several servers an address names memory only
  // while no two servers hand out overlapping ranges (each picks its own): a
  // range overlapping live memory of another server's device is refused with
  // CUDA_ERROR_OUT_OF_MEMORY and not recorded (the caller gives it back).
  Status RecordAllocation(uint64_t ctx, uint64_t dptr, uint64_t bytes, bool global = false);

  // --- streams ------------------------------------------------------------------
  // Maps a CUstream from the program to its wire target. `per_thread_default`
  // is true for the _ptsz/_ptds entry points, where stream 0 means the
  // per-thread default stream.
  Status ResolveStream(CUstream stream, bool per_thread_default, StreamTarget* target);

  // --- modules and functions ----------------------------------------------------
  // The function `name` of `module`: one id per (module, name), registered
  // with the server (posted, no round trip) the first time it is asked for.
  // NOT_FOUND if the module has no such kernel.
  Status ModuleFunction(uint64_t module, const std::string& name, uint64_t* id);

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
  // cuLibraryLoadData: has the server load `image` (one whole fatbin, cubin
  // or PTX text) as a new library and records it (AddLibrary); `*id` is its
  // CUlibrary. The server's error when it cannot load the image.
  Status LoadLibrary(std::span<const uint8_t> image, uint64_t* id);
  // Records a library the server has loaded; with eager loading
  // (CUDA_MODULE_LOADING=EAGER) it is loaded into every live context at once.
  Status AddLibrary(uint64_t id, LibraryState library);
  // Forgets the library, its kernels, and its modules and functions in every
  // context, and tells the server. INVALID_HANDLE for an unknown id.
  Status UnloadLibrary(uint64_t id);
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
  // Waits until `seq` (of context `ctx`'s connection) and every asynchronous
  // copy issued before it there landed.
  Status AfterSynchronize(uint64_t ctx, uint64_t seq);
  // cuStreamSynchronize and cuCtxSynchronize: the server's wait, then
  // AfterSynchronize, so the bytes of earlier copies into page-locked memory
  // are there too.
  Status SynchronizeStream(const StreamTarget& target);
  Status SynchronizeContext(uint64_t ctx);
  // After a query found `stream`'s work up to `seq` done: waits until the
  // asynchronous copies queued on it before `seq`, and those it depends on
  // through event waits issued before `seq`, landed (done already, so only
  // their replies are awaited), so the program can read their bytes.
  Status AfterQuery(StreamKey stream, uint64_t seq);

 private:
  // One server's share of the program's devices (above, "the sessions behind
  // the devices").
  struct SessionPart {
    std::unique_ptr<Connection> connection;
    std::string server;       // as FERRY_SERVER or the cluster named it
    uint64_t session_id = 0;  // the server's id of the session
    int first_device = 0;     // the program's ordinal of the part's device 0
    int device_count = 0;
  };
  // What one thread keeps of one instance.
  struct ThreadState {
    std::vector<uint64_t> context_stack;  // the back is the current context
    // context -> this thread's per-thread default stream there
    std::unordered_map<uint64_t, uint64_t> per_thread_streams;
  };

  Runtime();  // the global, not connected
  // Opens a session over `transport`: the connection, the devices and the
  // session's id from the HelloReply. With `redirect`, a server that sends
  // the client on leaves where in it (and everything else unset).
  static Status OpenSession(std::unique_ptr<Transport> transport, const std::string& server_name,
                            const Connection::Borrow& borrow, ConnectionOptions options,
                            std::unique_ptr<Connection>* connection,
                            std::vector<DeviceInfo>* devices, uint64_t* session_id,
                            Connection::Redirect* redirect = nullptr);
  // Connects to `server` (TLS as the environment says) and opens a session:
  // OpenSession over a fresh transport. PERMISSION_DENIED for a certificate
  // that does not verify or a token that may not travel; DISCONNECTED when
  // the server cannot be reached.
  static Status OpenSessionAt(const std::string& server, const Connection::Borrow& borrow,
                              ConnectionOptions options, int timeout_ms, SessionPart* part,
                              std::vector<DeviceInfo>* devices, Connection::Redirect* redirect);
  // Appends a part opened as OpenSessionAt's `part` and `devices` say.
  void AddPart(SessionPart part, std::vector<DeviceInfo> devices);
  // Borrows every part of a borrow split across servers, in order; the
  // parts already opened end when one fails.
  Status OpenParts(const std::vector<Connection::BorrowPart>& parts, Connection::Borrow borrow,
                   const std::string& pool, const std::string& ticket, ConnectionOptions options,
                   int timeout_ms);
  // The global's cuInit: connects to the server the environment names
  // (FERRY_SERVER: one or more, comma-separated, tried in order while they
  // cannot be reached), following a cluster's redirects.
  Status ConnectFromEnvironment();
  // The calling thread's state of this instance, made on first use. A thread
  // keeps the state of an instance that was destroyed until it exits;
  // instances are told apart by a serial that is never reused.
  ThreadState& ThisThread();
  // Runs and drops the context-local storage destructors of `ctx`. Called
  // when a context goes away, while it still exists (the destructors free
  // the runtime's resources in it through the driver) and under no lock.
  void RunContextLocalStorageDestructors(uint64_t ctx);
  // Frees the client-side records of everything `ctx` owned, in every
  // registry. Called after `ctx` was removed or marked not live, so that an
  // object registered concurrently is either refused or forgotten here.
  void ForgetContextResources(uint64_t ctx);
  // ModuleFunction / LibraryModule / KernelFunction with registration_mu_ held.
  Status ModuleFunctionLocked(uint64_t module, const std::string& name, uint64_t* id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(registration_mu_);
  Status LibraryModuleLocked(uint64_t library, uint64_t ctx, uint64_t* module)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(registration_mu_);
  Status KernelFunctionLocked(uint64_t kernel, uint64_t ctx, uint64_t* function)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(registration_mu_);
  // Those of `functions` (context, function) whose context is on `device`,
  // `skip` excepted.
  std::vector<uint64_t> FunctionsOnDevice(
      const std::vector<std::pair<uint64_t, uint64_t>>& functions, int device, uint64_t skip);
  // Eager loading: loads every library into `ctx` (just created).
  void LoadLibrariesEagerly(uint64_t ctx);

  std::once_flag init_once_;
  Status init_status_ = Status::Cuda(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
  std::atomic<bool> initialized_{false};
  // Tells this instance's per-thread state apart from other instances'.
  const uint64_t instance_;
  std::vector<SessionPart> parts_;   // fixed after Init
  std::vector<DeviceInfo> devices_;  // every part's, in order; fixed after Init
  std::mutex transfer_mu_;
  std::map<uint64_t, uint64_t> transfer_streams_ ABSL_GUARDED_BY(transfer_mu_);  // ctx -> stream
  ContextLocalStorage context_local_storage_;

  HandleIds ids_;
  ContextRegistry contexts_{&ids_};
  StreamRegistry streams_{&ids_};
  ModuleRegistry modules_{&ids_};
  AllocationRegistry allocations_;
  MemPoolRegistry mem_pools_{&ids_};
  GraphRegistry graphs_{&ids_};
  ArrayRegistry arrays_{&ids_};
  UserObjects user_objects_{&ids_};
  // Serialises creating contexts on the server, so two threads never create
  // the same primary context. Held across the round trip; taken before any
  // registry's lock.
  std::mutex create_mu_;
  // Serialises making a function, a library's module or a kernel's function
  // in a context with posting the calls that register them with the server,
  // so that a call another thread issues after finding one registered reaches
  // the server after them. Taken before the registries' locks, never while
  // waiting for a context to be created.
  std::mutex registration_mu_;
};

}  // namespace ferry::client
