// CudaBackend: GpuBackend on the real driver. See cuda_backend.h for the
// behaviour the contract leaves open; this file explains the mechanics.
//
// Objects: each GpuBackend object wraps one driver handle and remembers its
// CudaContext, which every call makes current first. Destruction follows the
// contract (work queued on the object finishes first), so destructors
// synchronize before they destroy.
//
// Host work after stream work goes through cuStreamAddCallback rather than
// cuLaunchHostFunc: the driver skips host functions once the context has
// failed, but calls stream callbacks with the error, and both a Completion
// and the release of a host buffer must happen even then. Each callback is
// also tracked by its context, so one the driver never ran is still run (with
// an error) when the context is destroyed: no Completion is ever lost. Nothing
// promises that the driver runs no callback after cuCtxDestroy, so a
// callback's record is shared (the driver's reference, the tracker's) and
// runs its work once, whoever comes first; a late callback finds it claimed
// and touches nothing the context owned.
//
// Thread-safety: the backend's state is immutable after construction except
// the waiter pool and the per-object sets and caches, each behind its mutex
// (std::mutex, not absl::Mutex, so that TSan sees the ordering: the
// distribution's absl is built without its TSan hooks).
#include "server/backend/cuda/cuda_backend.h"

#include <absl/functional/function_ref.h>

#include <cuda.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/strings/str_cat.h"
#include "common/image/module_image.h"
#include "common/log.h"
#include "server/backend/cuda/driver_api.h"
#include "server/backend/cuda/graph_host_tokens.h"
#include "server/backend/cuda/nvml_telemetry.h"
#include "server/backend/cuda/waiter_pool.h"

namespace ferry::backend {
namespace {

using cuda_internal::CuResultName;
using cuda_internal::DriverApi;
using cuda_internal::WaiterPool;

class CudaBackend;
class CudaContext;

// Serial numbers name contexts in the per-thread cache below. Unlike CUcontext
// values they are never reused, so a thread whose cached context was
// destroyed can never mistake a new context at the same address for current.
std::atomic<uint64_t> g_next_context_serial{1};
// The serial of the context this thread last made current (0: none known).
constinit thread_local uint64_t tls_current_context = 0;

// Runs a Completion, keeping its exceptions on this side of the driver (or
// the pool) that called us.
void RunCompletion(Completion& done, Status status) {
  if (!done) return;
  try {
    done(std::move(status));
  } catch (const std::exception& e) {
    FERRY_LOG(kError) << "cuda backend: a Completion threw: " << e.what();
  } catch (...) {
    FERRY_LOG(kError) << "cuda backend: a Completion threw";
  }
}

// Runs `body`, turning an exception (allocation failure, thread creation)
// into a Status so that none escapes the backend.
template <typename Body>
Status Guarded(const char* what, Body&& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return Status::OutOfMemory(absl::StrCat(what, ": out of host memory"));
  } catch (const std::exception& e) {
    return Status::Internal(absl::StrCat(what, ": ", e.what()));
  } catch (...) {
    return Status::Internal(absl::StrCat(what, ": unknown exception"));
  }
}

// Logs a failed driver call whose error has no caller to go to (in
// destructors and cleanup). Never throws.
void LogFailure(const DriverApi& api, CUresult result, const char* call,
                const char* what) noexcept {
  if (result == CUDA_SUCCESS) return;
  try {
    FERRY_LOG(kWarning) << "cuda backend: " << what << ": " << api.Check(result, call).message();
  } catch (...) {
  }
}
#define FERRY_CU_QUIET(api, what, fn, ...) \
  LogFailure((api), (api).fn(__VA_ARGS__), FERRY_CUDA_EXPORT_NAME(fn), (what))

// Counts waits in flight on an object so that its destructor can wait for
// them. Done() notifies under the lock: the waiter may destroy this object as
// soon as it wakes, and it cannot wake before the notifier lets go.
class PendingWaits {
 public:
  void Add() {
    std::lock_guard<std::mutex> lock(mu_);
    ++count_;
  }
  // The object may be gone once this returns: touch nothing of it after.
  void Done() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--count_ == 0) idle_.notify_all();
  }
  // Calls Done() on scope exit, however the scope is left.
  class DoneOnExit {
   public:
    explicit DoneOnExit(PendingWaits& waits) : waits_(waits) {}
    ~DoneOnExit() { waits_.Done(); }
    DoneOnExit(const DoneOnExit&) = delete;
    DoneOnExit& operator=(const DoneOnExit&) = delete;

   private:
    PendingWaits& waits_;
  };
  void WaitIdle() {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [this] { return count_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable idle_;
  int count_ = 0;
};

struct HostCallback;

// The callbacks of one context that the driver has not run yet. Shared by the
// context and each of its callbacks, so a callback the driver runs after the
// context is gone still finds it.
struct CallbackTracker {
  std::mutex mu;
  absl::flat_hash_map<HostCallback*, std::shared_ptr<HostCallback>> pending ABSL_GUARDED_BY(mu);
};

// Host work queued behind stream work (cuStreamAddCallback). Shared: the
// driver holds one reference (a heap std::shared_ptr passed as user data,
// deleted by RunHostCallback), the tracker another until the callback runs
// or the context sweeps it. `run` runs at most once, on whichever thread
// claims it first, and is destroyed right after (releasing its captures).
struct HostCallback {
  std::shared_ptr<CallbackTracker> tracker;
  std::atomic<bool> claimed{false};
  absl::AnyInvocable<void(CUresult) &&> run;

  void RunOnce(CUresult status) {
    if (claimed.exchange(true, std::memory_order_acq_rel)) return;
    absl::AnyInvocable<void(CUresult)&&> work = std::move(run);
    try {
      std::move(work)(status);
    } catch (...) {
      FERRY_LOG(kError) << "cuda backend: a stream callback threw";
    }
  }
};

// What a stream has been given and what a WhenStreamIdle has seen done.
// Shared with the stream's completion callbacks (which may outlive it).
struct StreamProgress {
  static constexpr uint64_t kNone = ~uint64_t{0};
  // Stream-ordered operations queued so far (counted before each is queued).
  std::atomic<uint64_t> submitted{0};
  // `submitted` as it stood when the latest WhenStreamIdle that found the
  // stream's work done successfully was queued; kNone before the first.
  std::atomic<uint64_t> idle_through{kNone};
};

// graph host nodes: a graph's and an executable graph's host nodes, in the
// order added or captured (an update pairs them in that order), each with
// its driver node (null where the node has no handle here: captured) and the
// token its driver node carries (GraphHostTokens).
struct CudaHostNode {
  CUgraphNode node = nullptr;
  std::shared_ptr<const cuda_internal::GraphHostToken> token;
};

class CudaStream final : public Stream {
 public:
  CudaStream(CudaContext& context, CUstream handle, bool owned)
      : context(context), handle(handle), owned(owned) {}
  ~CudaStream() override;

  CudaContext& context;
  const CUstream handle;
  const bool owned;  // false for the legacy stream, which the context owns
  const std::shared_ptr<StreamProgress> progress = std::make_shared<StreamProgress>();
  // graph host nodes: those captured so far by the capture this stream
  // began (CaptureHostNode), the graph's once EndCapture makes it. Touched
  // by the owning session's executor only.
  std::vector<CudaHostNode> captured_host_nodes;
  // The graph a capture begun with BeginCaptureToGraph builds (the
  // session's; it outlives the capture). Executor only, as above.
  class CudaGraph* capture_target = nullptr;
  // Capturing (BeginCapture* until EndCapture). Executor only, as above.
  bool capturing = false;
};

// Page-locked buffers of one context for device-to-host copies: into pageable
// memory the driver performs cuMemcpyDtoHAsync synchronously, which would
// block the caller (a session's thread) until the stream reaches the copy,
// and a stream held by a host function reaches it only when the client says
// so, which that blocked thread would never hear. Shared with the copies'
// stream callbacks, which hand their buffer back (no driver calls there);
// buffers are allocated and freed only by callers, never in callbacks.
struct StagingCache {
  // Cached bytes past which CopyDeviceToHost frees idle buffers.
  static constexpr size_t kMaxCachedBytes = size_t{64} << 20;
  std::mutex mu;
  // Set when the context is being destroyed: a callback the driver runs
  // after that must not touch its buffer (cuCtxDestroy freed it).
  bool closed ABSL_GUARDED_BY(mu) = false;
  std::vector<std::pair<size_t, void*>> idle ABSL_GUARDED_BY(mu);  // capacity, buffer
  size_t idle_bytes ABSL_GUARDED_BY(mu) = 0;
};

// --- parkable allocations (the backend's own virtual memory management) -----
// With parkable allocations on (CudaBackendOptions::parkable_allocations and
// a driver and devices with virtual memory management), a tenant's MemAlloc
// and MemAllocPitch memory is made with cuMemAddressReserve + cuMemCreate +
// cuMemMap + cuMemSetAccess instead of cuMemAlloc, so that parking can give
// the physical memory back and keep the addresses (see "parking" in
// CudaBackend). A block is one such reservation with physical memory mapped
// over all of it (none while parked); an allocation under the granularity
// lives in a shared block (a chunk) of its context, so small allocations do
// not each take 2 MiB.
struct VmmBlock {
  uint64_t address = 0;
  uint64_t bytes = 0;  // a multiple of the device's granularity
  int device = 0;
  const CudaContext* owner = nullptr;  // identity; its destruction frees the block
  std::vector<int> access;             // backend devices that may read and write it
  bool mapped = false;                 // physical memory behind it (else parked)
  // Parked: the block's bytes, page-locked (cuMemHostAlloc) where the driver
  // gave such memory, else from malloc.
  void* parked = nullptr;
  bool parked_pinned = false;
  // A chunk of small allocations: its free ranges (offset -> bytes) and how
  // many allocations it holds.
  bool chunk = false;
  std::map<uint64_t, uint64_t> free_ranges;
  int users = 0;
};

// One allocation a client holds: `bytes` as asked (what the session charges),
// inside the block at `block`; in a chunk it takes `footprint` bytes.
struct VmmAllocation {
  uint64_t bytes = 0;
  uint64_t footprint = 0;
  uint64_t block = 0;
  int device = 0;
};

// A pool allocation (MemAllocFromPool): the driver's memory, never parked,
// counted as resident.
struct PoolAllocation {
  uint64_t bytes = 0;
  int device = 0;
  const CudaContext* owner = nullptr;
};

// The memory of one tenant (CudaTenant, or the backend's default tenant for
// contexts that join none). Every member is guarded by `mu`, which is held
// across the driver calls that change them.
struct TenantState {
  std::mutex mu;
  std::vector<CudaContext*> contexts ABSL_GUARDED_BY(mu);  // joined and alive
  // (accessing device, memory's device) for each EnablePeerAccess not yet
  // disabled: blocks on the second device give the first access.
  std::multiset<std::pair<int, int>> peer_grants ABSL_GUARDED_BY(mu);
  std::map<uint64_t, VmmBlock> blocks ABSL_GUARDED_BY(mu);            // by address
  std::map<uint64_t, VmmAllocation> allocations ABSL_GUARDED_BY(mu);  // by client address
  std::map<uint64_t, PoolAllocation> pool_allocations ABSL_GUARDED_BY(mu);
  // Freed while a stream of the tenant was capturing, when the backend may
  // not synchronize (the driver would refuse, and end the capture): their
  // memory is released at the next free that can wait, at parking, or with
  // its context. (client address, allocation)
  std::vector<std::pair<uint64_t, VmmAllocation>> deferred_frees ABSL_GUARDED_BY(mu);
};

class CudaTenant final : public Tenant {
 public:
  const std::shared_ptr<TenantState> memory = std::make_shared<TenantState>();
};

class CudaContext final : public Context {
 public:
  // `green`: the green context `handle` was converted from (owned; then
  // destroying this destroys it instead of `handle`), or null.
  CudaContext(CudaBackend& backend, int device, CUcontext handle, CUgreenCtx green = nullptr)
      : backend(backend),
        handle(handle),
        green(green),
        device(device),
        serial(g_next_context_serial.fetch_add(1, std::memory_order_relaxed)),
        // CU_STREAM_LEGACY names the legacy default stream of the current
        // context whichever entry point variant it reaches.
        legacy_stream(*this, CU_STREAM_LEGACY, /*owned=*/false) {}
  ~CudaContext() override;

  // A new callback record for `run`, registered before it is handed to the
  // driver (which may run it at once).
  std::shared_ptr<HostCallback> Track(absl::AnyInvocable<void(CUresult) &&> run) {
    auto callback = std::make_shared<HostCallback>();
    callback->tracker = callbacks_;
    callback->run = std::move(run);
    std::lock_guard<std::mutex> lock(callbacks_->mu);
    callbacks_->pending.emplace(callback.get(), callback);
    return callback;
  }

  CudaBackend& backend;
  const CUcontext handle;
  const CUgreenCtx green;
  const int device;  // backend device
  const uint64_t serial;
  CudaStream legacy_stream;
  // The tenant's memory: the backend's default tenant until JoinTenant,
  // which is called before any work (GpuBackend contract) and so before any
  // other thread reads it.
  std::shared_ptr<TenantState> tenant;
  // Streams of this context that are capturing (CudaStream::capturing).
  std::atomic<int> capturing_streams{0};
  // WhenEventComplete / WhenContextIdle waits on the pool for this context.
  PendingWaits waits;
  const std::shared_ptr<StagingCache> staging = std::make_shared<StagingCache>();

 private:
  const std::shared_ptr<CallbackTracker> callbacks_ = std::make_shared<CallbackTracker>();
};

// One WhenEventComplete. It must wait for the record the event had when the
// call was made, but the waiter thread may start later, after the client has
// recorded the event again. So RecordEvent retargets waits that have not
// started onto a private snapshot of the old record (see RecordEvent).
struct EventWait {
  CUevent target;              // what the waiter synchronizes
  CUevent snapshot = nullptr;  // owned: the private event target points at
};

class CudaEvent final : public Event {
 public:
  CudaEvent(CudaContext& context, CUevent handle) : context(context), handle(handle) {}
  ~CudaEvent() override;

  CudaContext& context;
  const CUevent handle;
  PendingWaits waits;  // WhenEventComplete jobs that use `handle`

  std::mutex waits_mu;
  // WhenEventComplete jobs not yet in cuEventSynchronize.
  std::vector<std::shared_ptr<EventWait>> unstarted ABSL_GUARDED_BY(waits_mu);
};

class CudaModule;

class CudaFunction final : public Function {
 public:
  CudaFunction(CudaModule& module, CUfunction handle) : module(module), handle(handle) {}

  CudaModule& module;
  const CUfunction handle;
};

class CudaModule final : public Module {
 public:
  CudaModule(CudaContext& context, CUmodule handle, bool owned = true)
      : context(context), handle(handle), owned(owned) {}
  ~CudaModule() override;

  CudaContext& context;
  const CUmodule handle;
  // false for a library's module in a context (cuLibraryGetModule): the
  // library owns it and unloads it with itself.
  const bool owned;

  std::mutex functions_mu;
  // By kernel name; a Function stays valid as long as the module.
  absl::flat_hash_map<std::string, std::unique_ptr<CudaFunction>> functions
      ABSL_GUARDED_BY(functions_mu);
};

// A context-independent image (cuLibraryLoadData). Its modules in contexts
// are CudaModules that do not own their handle.
class CudaLibrary final : public Library {
 public:
  CudaLibrary(const DriverApi& api, CUlibrary handle) : api(api), handle(handle) {}
  ~CudaLibrary() override;

  const DriverApi& api;
  const CUlibrary handle;
};

// stream capture and graphs: a driver graph and its executable form, each
// destroyed with its owner. A captured graph remembers its stream's context,
// where it is instantiated.
//
// graph host nodes: CudaHostNode (above).
// The entry of `node` in `host_nodes`, or nullptr.
CudaHostNode* FindHostNode(std::vector<CudaHostNode>& host_nodes, CUgraphNode node) {
  auto it = std::find_if(host_nodes.begin(), host_nodes.end(),
                         [node](const CudaHostNode& h) { return h.node == node; });
  return it == host_nodes.end() ? nullptr : &*it;
}
class CudaGraph final : public Graph {
 public:
  // `owned` false: a child-graph node's graph (EmbeddedGraph), which its
  // node destroys.
  CudaGraph(const DriverApi& api, CUgraph handle, const CudaContext* context, bool owned = true)
      : api(api), handle(handle), context(context), owned(owned) {}
  ~CudaGraph() override {
    if (owned) FERRY_CU_QUIET(api, "destroying a graph", cuGraphDestroy, handle);
  }

  const DriverApi& api;
  const CUgraph handle;
  const CudaContext* context;  // null: no work of any context yet
  const bool owned;
  std::vector<std::unique_ptr<GraphNode>> nodes;  // explicitly added ones
  int memory_device = -1;                // graph node kinds: backend device of its allocation nodes
  std::vector<CudaHostNode> host_nodes;  // graph host nodes
};
class CudaGraphNode final : public GraphNode {
 public:
  explicit CudaGraphNode(CUgraphNode handle) : handle(handle) {}
  const CUgraphNode handle;  // owned by its graph
  // A kernel node's attributes as last set (SetKernelNodeAttributes): only
  // changes are sent, so a driver never sees a request to clear what was
  // never set.
  std::array<uint32_t, 3> cluster{0, 0, 0};
  bool cooperative = false;
};
// A kernel node's driver parameters for a GraphNodeSpec of kind kKernel,
// the packed parameters passed by pointer (the driver copies them before the
// call that takes `params` returns; `spec` must outlive that call).
struct KernelNodeParams {
  CUDA_KERNEL_NODE_PARAMS params{};
  size_t params_size = 0;
  void* extra[5] = {};
  // The cluster shape and cooperation are node attributes, set apart
  // (CudaBackend::SetKernelNodeAttributes).
  Status Fill(const GraphNodeSpec& spec) {
    const LaunchConfig& c = spec.config;
    params.func = static_cast<CudaFunction&>(*spec.function).handle;
    params.gridDimX = c.grid[0];
    params.gridDimY = c.grid[1];
    params.gridDimZ = c.grid[2];
    params.blockDimX = c.block[0];
    params.blockDimY = c.block[1];
    params.blockDimZ = c.block[2];
    params.sharedMemBytes = c.shared_bytes;
    params_size = static_cast<size_t>(spec.params.size);
    extra[0] = CU_LAUNCH_PARAM_BUFFER_POINTER;
    extra[1] = const_cast<uint8_t*>(spec.params.data);
    extra[2] = CU_LAUNCH_PARAM_BUFFER_SIZE;
    extra[3] = &params_size;
    extra[4] = CU_LAUNCH_PARAM_END;
    params.extra = params_size != 0 ? extra : nullptr;
    return Status::Ok();
  }
};
// A memset node's driver parameters for a GraphNodeSpec of kind kMemset.
CUDA_MEMSET_NODE_PARAMS MemsetNodeParams(const GraphNodeSpec& spec) {
  CUDA_MEMSET_NODE_PARAMS p;
  std::memset(&p, 0, sizeof(p));
  p.dst = static_cast<CUdeviceptr>(spec.dst);
  p.pitch = static_cast<size_t>(spec.pitch);
  p.value = spec.value;
  p.elementSize = spec.element_bytes;
  p.width = static_cast<size_t>(spec.width);
  p.height = static_cast<size_t>(spec.height);
  return p;
}
// A copy node's driver parameters for a GraphNodeSpec of kind kCopy (one
// row, device to device).
CUDA_MEMCPY3D CopyNodeParams(const GraphNodeSpec& spec) {
  CUDA_MEMCPY3D p;
  std::memset(&p, 0, sizeof(p));
  p.srcMemoryType = CU_MEMORYTYPE_DEVICE;
  p.srcDevice = static_cast<CUdeviceptr>(spec.src);
  p.dstMemoryType = CU_MEMORYTYPE_DEVICE;
  p.dstDevice = static_cast<CUdeviceptr>(spec.dst);
  p.WidthInBytes = static_cast<size_t>(spec.bytes);
  p.Height = 1;
  p.Depth = 1;
  return p;
}
// A host node's driver parameters: RunGraphHostNode with `token`.
CUDA_HOST_NODE_PARAMS HostNodeParams(const cuda_internal::GraphHostToken& token) {
  CUDA_HOST_NODE_PARAMS p;
  std::memset(&p, 0, sizeof(p));
  p.fn = &cuda_internal::GraphHostTokens::RunGraphHostNode;
  p.userData = token.user_data();
  return p;
}
class CudaGraphExec final : public GraphExec {
 public:
  CudaGraphExec(const DriverApi& api, CUgraphExec handle) : api(api), handle(handle) {}
  ~CudaGraphExec() override {
    FERRY_CU_QUIET(api, "destroying an executable graph", cuGraphExecDestroy, handle);
    if (trim_device) {
      FERRY_CU_QUIET(api, "trimming graph memory", cuDeviceGraphMemTrim, *trim_device);
    }
  }

  const DriverApi& api;
  const CUgraphExec handle;
  std::vector<CudaHostNode> host_nodes;  // graph host nodes: what its launches run
  // CommitGraphMemory's: the context of the graph's allocation nodes and the
  // device of their memory. Freed graph memory (free nodes,
  // FreeGraphAllocations) stays reserved in the device's graph memory pool
  // until it is trimmed, and the driver trims only what no executable graph
  // holds: the destructor trims after destroying, so the device gets back
  // what the session's quota gives back (the quota comes back right after
  // this destructor: the default tenant).
  const CudaContext* context = nullptr;
  std::optional<CUdevice> trim_device;
};

// CUDA arrays, textures and surfaces: driver objects destroyed with their
// owners. A mipmapped array's levels are the driver's too (cuMipmappedArray-
// GetLevel), owned by it; their CudaArrays do not destroy them.
class CudaArray final : public Array {
 public:
  CudaArray(const DriverApi& api, CUarray handle, bool owned)
      : api(api), handle(handle), owned(owned) {}
  ~CudaArray() override {
    if (owned) FERRY_CU_QUIET(api, "destroying an array", cuArrayDestroy, handle);
  }

  const DriverApi& api;
  const CUarray handle;
  const bool owned;
};
class CudaMipmappedArray final : public MipmappedArray {
 public:
  CudaMipmappedArray(const DriverApi& api, CUmipmappedArray handle) : api(api), handle(handle) {}
  ~CudaMipmappedArray() override {
    levels.clear();
    FERRY_CU_QUIET(api, "destroying a mipmapped array", cuMipmappedArrayDestroy, handle);
  }

  const DriverApi& api;
  const CUmipmappedArray handle;
  std::map<unsigned, std::unique_ptr<CudaArray>> levels;  // asked for so far
};
class CudaTextureObject final : public TextureObject {
 public:
  CudaTextureObject(const DriverApi& api, uint64_t handle, bool surface)
      : api(api), handle(handle), surface(surface) {}
  ~CudaTextureObject() override {
    if (surface) {
      FERRY_CU_QUIET(api, "destroying a surface object", cuSurfObjectDestroy, handle);
    } else {
      FERRY_CU_QUIET(api, "destroying a texture object", cuTexObjectDestroy, handle);
    }
  }
  uint64_t value() const override { return handle; }

  const DriverApi& api;
  const uint64_t handle;
  const bool surface;
};

// JIT linking: a driver link state with the option arrays and log buffers it
// writes into, which the driver requires to live as long as the state.
class CudaLink final : public Link {
 public:
  CudaLink(const DriverApi& api, CudaContext& context) : api(api), context(context) {}
  ~CudaLink() override;

  const DriverApi& api;
  CudaContext& context;
  CUlinkState state = nullptr;
  std::vector<CUjit_option> options;
  std::vector<void*> values;
  std::vector<char> info_log, error_log;  // the buffers the log options point at
  // The global symbol table the CU_JIT_GLOBAL_SYMBOL_* options point at.
  std::vector<std::string> symbol_names;
  std::vector<const char*> symbol_name_pointers;
  std::vector<void*> symbol_addresses;
};

// The objects a caller hands back are the ones this backend made.
CudaContext& Ctx(Context& context) { return static_cast<CudaContext&>(context); }
CudaStream& Str(Stream& stream) { return static_cast<CudaStream&>(stream); }
CudaEvent& Ev(Event& event) { return static_cast<CudaEvent&>(event); }
CudaModule& Mod(Module& module) { return static_cast<CudaModule&>(module); }
CudaFunction& Fn(Function& function) { return static_cast<CudaFunction&>(function); }

// Keeps CudaContext::capturing_streams in step with `stream`'s capture.
void SetCapturing(CudaStream& stream, bool capturing) {
  if (stream.capturing == capturing) return;
  stream.capturing = capturing;
  stream.context.capturing_streams.fetch_add(capturing ? 1 : -1, std::memory_order_acq_rel);
}

// The driver's entry for every stream callback.
// It may run after its context was destroyed (and swept): it touches only
// the shared record and tracker, never the context.
void CUDA_CB RunHostCallback(CUstream /*stream*/, CUresult status, void* user_data) {
  std::unique_ptr<std::shared_ptr<HostCallback>> reference(
      static_cast<std::shared_ptr<HostCallback>*>(user_data));
  HostCallback& callback = **reference;
  {
    std::lock_guard<std::mutex> lock(callback.tracker->mu);
    callback.tracker->pending.erase(&callback);
  }
  callback.RunOnce(status);
}

// The driver finds an image's length from its own headers, so a truncated
// image would have it read past `image`: common/image checks the headers of
// the two binary formats against the bytes received. PTX text must end with
// a NUL (copied into `storage` with one when it does not). Sets `*data` to
// the bytes to load.
Status CheckModuleImage(std::span<const uint8_t> image, std::vector<uint8_t>* storage,
                        const void** data) {
  if (Status bounds = ferry::image::CheckImageBounds(image); !bounds.ok()) {
    // Bad client input, not the driver's refusal: InvalidArgument.
    return Status::InvalidArgument(absl::StrCat("module image: ", bounds.message()));
  }
  *data = image.data();
  // Anything but a fatbin or an ELF goes to the driver as PTX text, which it
  // reads up to a NUL.
  if (std::find(image.begin(), image.end(), uint8_t{0}) == image.end()) {
    storage->assign(image.begin(), image.end());
    storage->push_back(0);
    *data = storage->data();
  }
  return Status::Ok();
}

// A pool of the driver's stream-ordered allocator. Destroying it while
// allocations are outstanding is the driver's to handle: it releases the pool
// once they are freed.
class CudaMemPool final : public MemPool {
 public:
  CudaMemPool(const DriverApi& api, CUmemoryPool handle) : api(api), handle(handle) {}
  ~CudaMemPool() override {
    LogFailure(api, api.cuMemPoolDestroy(handle), FERRY_CUDA_EXPORT_NAME(cuMemPoolDestroy),
               "destroying a memory pool");
  }
  const DriverApi& api;
  const CUmemoryPool handle;
};

// Physical memory of the driver's virtual memory management (cuMemCreate);
// destroying it releases the handle, and the driver keeps the memory while a
// mapping holds it.
class CudaPhysicalMemory final : public PhysicalMemory {
 public:
  CudaPhysicalMemory(const DriverApi& api, CUmemGenericAllocationHandle handle)
      : api(api), handle(handle) {}
  ~CudaPhysicalMemory() override {
    LogFailure(api, api.cuMemRelease(handle), FERRY_CUDA_EXPORT_NAME(cuMemRelease),
               "releasing physical memory");
  }
  const DriverApi& api;
  const CUmemGenericAllocationHandle handle;
};

// The CUmemPool_attribute values whose value type is int (the others are
// cuuint64_t).
bool MemPoolAttributeIsInt(int attribute) {
  return attribute == CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES ||
         attribute == CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC ||
         attribute == CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES;
}

class CudaBackend final : public GpuBackend {
 public:
  CudaBackend(std::unique_ptr<DriverApi> api, std::vector<DeviceDescription> devices,
              std::vector<CUdevice> device_handles, size_t max_waiter_threads,
              bool parkable_allocations)
      : api_(std::move(api)),
        devices_(std::move(devices)),
        device_handles_(std::move(device_handles)),
        waiters_(max_waiter_threads),
        nvml_(api_->path) {
    if (parkable_allocations) granularity_ = ParkableGranularities();
  }

  const DriverApi& api() const { return *api_; }

  // Makes `context` current on the calling thread unless it already is.
  Status MakeCurrent(const CudaContext& context) {
    if (tls_current_context == context.serial) return Status::Ok();
    FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuCtxSetCurrent, context.handle));
    tls_current_context = context.serial;
    return Status::Ok();
  }
  // MakeCurrent for destructors: logs instead of returning a Status.
  bool MakeCurrentQuietly(const CudaContext& context, const char* what) noexcept {
    if (tls_current_context == context.serial) return true;
    CUresult result = api_->cuCtxSetCurrent(context.handle);
    LogFailure(*api_, result, FERRY_CUDA_EXPORT_NAME(cuCtxSetCurrent), what);
    if (result != CUDA_SUCCESS) return false;
    tls_current_context = context.serial;
    return true;
  }
  // For a context that is being destroyed on this thread.
  static void ForgetCurrent(const CudaContext& context) {
    if (tls_current_context == context.serial) tls_current_context = 0;
  }

  // Queues `run` behind the work queued so far on `stream` (context current).
  // On failure nothing was queued and `run` is dropped unrun.
  Status EnqueueCallback(CudaStream& stream, absl::AnyInvocable<void(CUresult) &&> run) {
    std::shared_ptr<HostCallback> callback = stream.context.Track(std::move(run));
    // The driver's reference; RunHostCallback deletes it. (Leaked if the
    // driver never calls back: the context's sweep still runs the work.)
    auto* reference = new std::shared_ptr<HostCallback>(callback);
    CUresult result = api_->cuStreamAddCallback(stream.handle, &RunHostCallback, reference, 0);
    if (result != CUDA_SUCCESS) {
      delete reference;
      {
        std::lock_guard<std::mutex> lock(callback->tracker->mu);
        callback->tracker->pending.erase(callback.get());
      }
      callback->claimed = true;  // dropped unrun, as documented
      return api_->Check(result, FERRY_CUDA_EXPORT_NAME(cuStreamAddCallback));
    }
    return Status::Ok();
  }

  // A page-locked buffer of at least `size` bytes from `context`'s cache or
  // the driver (`context` current), its capacity in `*capacity`; null when
  // the driver cannot give one. Frees idle buffers past the cache's bound.
  void* TakeStaging(CudaContext& context, size_t size, size_t* capacity) {
    StagingCache& cache = *context.staging;
    std::vector<void*> excess;
    void* found = nullptr;
    {
      std::lock_guard<std::mutex> lock(cache.mu);
      auto best = cache.idle.end();
      for (auto it = cache.idle.begin(); it != cache.idle.end(); ++it) {
        if (it->first >= size && (best == cache.idle.end() || it->first < best->first)) best = it;
      }
      if (best != cache.idle.end()) {
        found = best->second;
        *capacity = best->first;
        cache.idle_bytes -= best->first;
        cache.idle.erase(best);
      }
      while (cache.idle_bytes > StagingCache::kMaxCachedBytes && !cache.idle.empty()) {
        cache.idle_bytes -= cache.idle.back().first;
        excess.push_back(cache.idle.back().second);
        cache.idle.pop_back();
      }
    }
    for (void* buffer : excess) (void)api_->cuMemFreeHost(buffer);
    if (found != nullptr) return found;
    // Powers of two from 64 KiB, so that buffers are reused across sizes.
    size_t rounded = size_t{64} << 10;
    while (rounded < size && rounded <= (SIZE_MAX >> 1)) rounded <<= 1;
    if (rounded < size) return nullptr;
    void* buffer = nullptr;
    if (api_->cuMemHostAlloc(&buffer, rounded, 0) != CUDA_SUCCESS || buffer == nullptr) {
      return nullptr;
    }
    *capacity = rounded;
    return buffer;
  }

  // When `result` says the copy into `buffer` succeeded, copies its `height`
  // rows of `width` bytes, `pitch` bytes apart, to the same places in `dst`
  // (rows only: the bytes between them in `dst` are not the copy's). Then
  // gives `buffer` back to `cache`. Safe on the driver's callback thread (no
  // driver calls) and after the context's destruction began (then it
  // touches nothing).
  static void ReturnStaging(StagingCache& cache, void* buffer, size_t capacity, void* dst,
                            size_t pitch, size_t width, size_t height, CUresult result) {
    std::lock_guard<std::mutex> lock(cache.mu);
    if (cache.closed) return;
    if (result == CUDA_SUCCESS && dst != nullptr) {
      for (size_t row = 0; row < height; ++row) {
        std::memcpy(static_cast<uint8_t*>(dst) + row * pitch,
                    static_cast<const uint8_t*>(buffer) + row * pitch, width);
      }
    }
    cache.idle.emplace_back(capacity, buffer);
    cache.idle_bytes += capacity;
  }

  // Keeps `first` and `second` alive until the work queued so far on
  // `stream` is done; called right after queuing a copy that uses them.
  void KeepAlive(CudaStream& stream, std::shared_ptr<const void> first,
                 std::shared_ptr<const void> second = nullptr) {
    if (first == nullptr && second == nullptr) return;
    // Copies, not moves: if queuing fails, the callback is dropped and the
    // parameters must still hold the buffers while the stream drains.
    Status status = EnqueueCallback(stream, [first, second](CUresult) mutable {
      first.reset();
      second.reset();
    });
    if (!status.ok()) {
      // The copy is queued but nothing would hold its buffers: wait for it
      // instead (slow, but never a use-after-free). Rare: the callback could
      // only fail if the stream itself had just become invalid.
      FERRY_LOG(kWarning) << "cuda backend: " << status.message()
                          << "; synchronizing the stream to release a copy's host buffer";
      (void)api_->cuStreamSynchronize(stream.handle);
    }
  }

  // One device's SMs split into equal, disjoint groups (green contexts).
  struct SmSplit {
    Status status;  // why the device cannot be split so; then nothing else is set
    unsigned sm_per_group = 0;
    std::vector<CUdevResource> groups;  // index = group (a slice's index)
  };

  // The split of `device` into `groups` groups, computed once and kept: the
  // driver's split is deterministic, but keeping it makes sure every context
  // of group i gets exactly the resource of group i of one split, so groups
  // of different slices can never overlap. Failures are kept (and logged
  // once) too.
  Status FindSmSplit(int device, int groups, const SmSplit** out) {
    if (device < 0 || static_cast<size_t>(device) >= device_handles_.size()) {
      return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, absl::StrCat("no device ", device));
    }
    if (groups < 2) {
      return Status::InvalidArgument(
          absl::StrCat("an SM partition needs at least 2 groups, not ", groups));
    }
    std::lock_guard<std::mutex> lock(splits_mu_);
    auto [it, inserted] = splits_.try_emplace({device, groups});
    if (inserted) {
      it->second.status = ComputeSmSplit(device, groups, &it->second);
      if (!it->second.status.ok()) {
        FERRY_LOG(kInfo) << "cuda backend: device " << device << " in " << groups
                         << " slices: no SM partition (" << it->second.status.message()
                         << "); its slices use launch throttling";
      } else {
        FERRY_LOG(kInfo) << "cuda backend: device " << device << " in " << groups
                         << " slices: SM partitions of " << it->second.sm_per_group
                         << " SMs each (green contexts)";
      }
    }
    if (!it->second.status.ok()) return it->second.status;
    *out = &it->second;
    return Status::Ok();
  }

  // Rounding: each group gets floor(SMs / groups) rounded DOWN to the
  // driver's co-scheduling alignment (smCoscheduledAlignment), so that
  // `groups` groups always fit side by side; SMs left over belong to no
  // slice (e.g. 132 SMs with an alignment of 8: halves of 64, quarters of
  // 32, 4 SMs idle). A group smaller than the driver's minimum partition
  // (minSmPartitionSize) is refused: the slices then use launch throttling.
  Status ComputeSmSplit(int device, int groups, SmSplit* split) {
    if (!api_->HasGreenContexts()) {
      return Status::Unimplemented(absl::StrCat("the CUDA driver (", api_->driver_version / 1000,
                                                ".", (api_->driver_version % 1000) / 10,
                                                ") has no green contexts (CUDA 12.4+)"));
    }
    CUdevResource whole{};
    CUresult result = api_->cuDeviceGetDevResource(device_handles_[static_cast<size_t>(device)],
                                                   &whole, CU_DEV_RESOURCE_TYPE_SM);
    if (result != CUDA_SUCCESS) {
      // E.g. CUDA_ERROR_NOT_SUPPORTED on a GPU without SM partitions.
      return Status::Unimplemented(
          api_->Check(result, FERRY_CUDA_EXPORT_NAME(cuDeviceGetDevResource)).message());
    }
    const unsigned total = whole.sm.smCount;
    const unsigned alignment = std::max(1u, whole.sm.smCoscheduledAlignment);
    const unsigned minimum = std::max(1u, whole.sm.minSmPartitionSize);
    const unsigned per_group = total / static_cast<unsigned>(groups) / alignment * alignment;
    if (per_group < minimum) {
      return Status::Unimplemented(absl::StrCat(total, " SMs in ", groups, " groups is ",
                                                total / static_cast<unsigned>(groups), " each (",
                                                per_group, " aligned to ", alignment,
                                                "), under the driver's minimum of ", minimum));
    }
    split->groups.assign(static_cast<size_t>(groups), CUdevResource{});
    unsigned made = static_cast<unsigned>(groups);
    CUdevResource remaining{};
    result = api_->cuDevSmResourceSplitByCount(split->groups.data(), &made, &whole, &remaining, 0,
                                               per_group);
    if (result != CUDA_SUCCESS) {
      return Status::Unimplemented(
          api_->Check(result, FERRY_CUDA_EXPORT_NAME(cuDevSmResourceSplitByCount)).message());
    }
    if (made < static_cast<unsigned>(groups)) {
      return Status::Unimplemented(absl::StrCat("the driver split ", total, " SMs into only ", made,
                                                " groups of ", per_group, ", not ", groups));
    }
    // The driver may round a group up; every group must be the same size,
    // and what a slice is told is what its group really has.
    split->sm_per_group = split->groups[0].sm.smCount;
    for (const CUdevResource& group : split->groups) {
      if (group.sm.smCount != split->sm_per_group || group.sm.smCount == 0) {
        return Status::Unimplemented("the driver split the SMs into unequal groups");
      }
    }
    return Status::Ok();
  }

  // --- GpuBackend ---------------------------------------------------------
  std::string_view Name() const override { return "cuda"; }
  int DriverVersion() const override { return api_->driver_version; }
  const std::vector<DeviceDescription>& Devices() const override { return devices_; }

  // NVML stand-in: NVIDIA's NVML beside the driver, for the GPU of this UUID.
  Status ReadDeviceTelemetry(int device, DeviceTelemetry* out) override {
    if (device < 0 || device >= static_cast<int>(devices_.size())) {
      return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "no device " + std::to_string(device));
    }
    return nvml_.Read(devices_[device].uuid, out);
  }

  Status CreateContext(int device, unsigned flags, std::unique_ptr<Context>* out) override {
    return Guarded("CreateContext", [&]() -> Status {
      if (device < 0 || static_cast<size_t>(device) >= device_handles_.size()) {
        return Status::Cuda(CUDA_ERROR_INVALID_DEVICE,
                            absl::StrCat("CreateContext: no device ", device, " (",
                                         device_handles_.size(), " devices)"));
      }
      CUcontext handle = nullptr;
      // CUDA 13's cuCtxCreate (cuCtxCreate_v4): NULL creation parameters
      // mean neither execution affinity nor CIG, i.e. a plain context.
      FERRY_RETURN_IF_ERROR(
          FERRY_CU(*api_, cuCtxCreate, &handle, nullptr, flags, device_handles_[device]));
      // cuCtxCreate pushed the context on this thread; pop it so that this
      // thread is back to whatever was current (the cache stays right).
      CUcontext popped = nullptr;
      Status pop = FERRY_CU(*api_, cuCtxPopCurrent, &popped);
      if (!pop.ok() || popped != handle) {
        (void)api_->cuCtxDestroy(handle);
        tls_current_context = 0;  // whatever is current now, we do not know it
        return pop.ok() ? Status::Internal("CreateContext: cuCtxPopCurrent popped another context")
                        : pop;
      }
      *out = std::make_unique<CudaContext>(*this, device, handle);
      AdoptContext(Ctx(**out), default_tenant_);
      return Status::Ok();
    });
  }

  Status SmPartitionSize(int device, int groups, int* sm_count) override {
    return Guarded("SmPartitionSize", [&]() -> Status {
      const SmSplit* split = nullptr;
      FERRY_RETURN_IF_ERROR(FindSmSplit(device, groups, &split));
      *sm_count = static_cast<int>(split->sm_per_group);
      return Status::Ok();
    });
  }

  Status CreatePartitionedContext(int device, unsigned flags, int groups, int group,
                                  std::unique_ptr<Context>* out) override {
    return Guarded("CreatePartitionedContext", [&]() -> Status {
      const SmSplit* split = nullptr;
      FERRY_RETURN_IF_ERROR(FindSmSplit(device, groups, &split));
      if (group < 0 || group >= groups) {
        return Status::InvalidArgument(
            absl::StrCat("CreatePartitionedContext: no SM group ", group, " of ", groups));
      }
      // The scheduling flags of cuCtxCreate have no green-context equivalent;
      // a green context schedules like the primary context. They are dropped.
      (void)flags;
      // The descriptor holds exactly this group. The driver owns descriptors
      // (there is no call to free one).
      CUdevResource resource = split->groups[static_cast<size_t>(group)];
      CUdevResourceDesc desc = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuDevResourceGenerateDesc, &desc, &resource, 1));
      CUgreenCtx green = nullptr;
      // CU_GREEN_CTX_DEFAULT_STREAM is required: it gives the green context
      // the default stream that CU_STREAM_LEGACY names while it is current.
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGreenCtxCreate, &green, desc,
                                     device_handles_[static_cast<size_t>(device)],
                                     CU_GREEN_CTX_DEFAULT_STREAM));
      CUcontext handle = nullptr;
      Status converted = FERRY_CU(*api_, cuCtxFromGreenCtx, &handle, green);
      if (!converted.ok()) {
        FERRY_CU_QUIET(*api_, "undoing a green context", cuGreenCtxDestroy, green);
        return converted;
      }
      // cuGreenCtxCreate makes nothing current, so there is nothing to pop.
      *out = std::make_unique<CudaContext>(*this, device, handle, green);
      AdoptContext(Ctx(**out), default_tenant_);
      return Status::Ok();
    });
  }

  Stream& LegacyStream(Context& context) override { return Ctx(context).legacy_stream; }

  Status GetLimit(Context& context, int limit, uint64_t* value) override {
    return Guarded("GetLimit", [&]() -> Status {
      CudaContext& ctx = Ctx(context);
      FERRY_RETURN_IF_ERROR(MakeCurrent(ctx));
      size_t v = 0;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuCtxGetLimit, &v, static_cast<CUlimit>(limit)));
      *value = v;
      return Status::Ok();
    });
  }

  Status SetLimit(Context& context, int limit, uint64_t value) override {
    return Guarded("SetLimit", [&]() -> Status {
      CudaContext& ctx = Ctx(context);
      FERRY_RETURN_IF_ERROR(MakeCurrent(ctx));
      return FERRY_CU(*api_, cuCtxSetLimit, static_cast<CUlimit>(limit),
                      static_cast<size_t>(value));
    });
  }

  Status ResetPersistingL2Cache(Context& context) override {
    return Guarded("ResetPersistingL2Cache", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(
          NeedEntryPoint(api_->cuCtxResetPersistingL2Cache, "cuCtxResetPersistingL2Cache"));
      FERRY_RETURN_IF_ERROR(MakeCurrent(Ctx(context)));
      return FERRY_CU(*api_, cuCtxResetPersistingL2Cache);
    });
  }

  // The driver has no way to take back work it has queued: destroying the
  // context waits for it (or the GPU drops it when the context goes).
  void AbandonQueuedWork(Context& context) override { (void)context; }

  void WhenContextIdle(Context& context, Completion done) override {
    CudaContext& ctx = Ctx(context);
    ctx.waits.Add();
    SubmitWait(
        std::move(done),
        [this, &ctx]() -> Status {
          PendingWaits::DoneOnExit done_with_ctx(ctx.waits);  // then `ctx` may go
          Status status = MakeCurrent(ctx);
          if (status.ok()) status = FERRY_CU(*api_, cuCtxSynchronize);
          return status;
        },
        [&ctx] { ctx.waits.Done(); });
  }

  // --- stream-ordered allocation and memory pools ----------------------------
  Status CreateMemPool(int device, uint64_t max_size, std::unique_ptr<MemPool>* out) override {
    return Guarded("CreateMemPool", [&]() -> Status {
      if (api_->cuMemPoolCreate == nullptr || api_->cuMemPoolDestroy == nullptr) {
        return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, "the driver has no cuMemPoolCreate");
      }
      CUdevice device_handle = 0;
      FERRY_RETURN_IF_ERROR(DeviceHandle(device, &device_handle));
      CUmemPoolProps props;
      std::memset(&props, 0, sizeof(props));
      props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
      props.handleTypes = CU_MEM_HANDLE_TYPE_NONE;
      props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
      props.location.id = device_handle;
      props.maxSize = static_cast<size_t>(max_size);
      CUmemoryPool pool = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuMemPoolCreate, &pool, &props));
      *out = std::make_unique<CudaMemPool>(*api_, pool);
      return Status::Ok();
    });
  }

  // --- virtual memory management ------------------------------------------
  // Pinned device memory with no shareable handle type: what a session's
  // cuMemCreate gets, and what the granularity is asked for.
  Status PinnedDeviceProperties(int device, CUmemAllocationProp* props) const {
    CUdevice device_handle = 0;
    FERRY_RETURN_IF_ERROR(DeviceHandle(device, &device_handle));
    std::memset(props, 0, sizeof(*props));
    props->type = CU_MEM_ALLOCATION_TYPE_PINNED;
    props->requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
    props->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    props->location.id = device_handle;
    return Status::Ok();
  }

  Status AllocationGranularity(int device, bool recommended, uint64_t* bytes) override {
    return Guarded("AllocationGranularity", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(
          NeedEntryPoint(api_->cuMemGetAllocationGranularity, "cuMemGetAllocationGranularity"));
      CUmemAllocationProp props;
      FERRY_RETURN_IF_ERROR(PinnedDeviceProperties(device, &props));
      size_t granularity = 0;
      FERRY_RETURN_IF_ERROR(FERRY_CU(
          *api_, cuMemGetAllocationGranularity, &granularity, &props,
          recommended ? CU_MEM_ALLOC_GRANULARITY_RECOMMENDED : CU_MEM_ALLOC_GRANULARITY_MINIMUM));
      *bytes = granularity;
      return Status::Ok();
    });
  }

  Status CreatePhysicalMemory(int device, uint64_t bytes,
                              std::unique_ptr<PhysicalMemory>* out) override {
    return Guarded("CreatePhysicalMemory", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMemCreate, "cuMemCreate"));
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMemRelease, "cuMemRelease"));
      CUmemAllocationProp props;
      FERRY_RETURN_IF_ERROR(PinnedDeviceProperties(device, &props));
      CUmemGenericAllocationHandle handle = 0;
      FERRY_RETURN_IF_ERROR(
          FERRY_CU(*api_, cuMemCreate, &handle, static_cast<size_t>(bytes), &props, 0));
      *out = std::make_unique<CudaPhysicalMemory>(*api_, handle);
      return Status::Ok();
    });
  }

  Status ReserveAddressRange(uint64_t bytes, uint64_t alignment, uint64_t hint,
                             uint64_t* address) override {
    return Guarded("ReserveAddressRange", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMemAddressReserve, "cuMemAddressReserve"));
      CUdeviceptr p = 0;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuMemAddressReserve, &p, static_cast<size_t>(bytes),
                                     static_cast<size_t>(alignment), static_cast<CUdeviceptr>(hint),
                                     0));
      *address = p;
      return Status::Ok();
    });
  }

  Status FreeAddressRange(uint64_t address, uint64_t bytes) override {
    return Guarded("FreeAddressRange", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMemAddressFree, "cuMemAddressFree"));
      return FERRY_CU(*api_, cuMemAddressFree, static_cast<CUdeviceptr>(address),
                      static_cast<size_t>(bytes));
    });
  }

  Status MapMemory(uint64_t address, uint64_t bytes, PhysicalMemory& memory,
                   uint64_t offset) override {
    return Guarded("MapMemory", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMemMap, "cuMemMap"));
      return FERRY_CU(*api_, cuMemMap, static_cast<CUdeviceptr>(address),
                      static_cast<size_t>(bytes), static_cast<size_t>(offset),
                      static_cast<CudaPhysicalMemory&>(memory).handle, 0);
    });
  }

  // The tenant is not needed here: the driver synchronizes these calls as it
  // documents, and work that touches a range after it is gone faults on the
  // GPU (the program's error), never in ferryd.
  Status UnmapMemory(Tenant&, uint64_t address, uint64_t bytes) override {
    return Guarded("UnmapMemory", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMemUnmap, "cuMemUnmap"));
      return FERRY_CU(*api_, cuMemUnmap, static_cast<CUdeviceptr>(address),
                      static_cast<size_t>(bytes));
    });
  }

  Status SetMemoryAccess(Tenant&, uint64_t address, uint64_t bytes,
                         std::span<const MemoryAccess> access) override {
    return Guarded("SetMemoryAccess", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMemSetAccess, "cuMemSetAccess"));
      std::vector<CUmemAccessDesc> descs(access.size());
      for (size_t i = 0; i < access.size(); ++i) {
        CUdevice device_handle = 0;
        FERRY_RETURN_IF_ERROR(DeviceHandle(access[i].device, &device_handle));
        descs[i].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        descs[i].location.id = device_handle;
        descs[i].flags = static_cast<CUmemAccess_flags>(access[i].flags);
      }
      return FERRY_CU(*api_, cuMemSetAccess, static_cast<CUdeviceptr>(address),
                      static_cast<size_t>(bytes), descs.data(), descs.size());
    });
  }

  Status MemAllocFromPool(Stream& stream, MemPool& pool, uint64_t bytes, uint64_t* dptr) override {
    return Guarded("MemAllocFromPool", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(
          NeedEntryPoint(api_->cuMemAllocFromPoolAsync, "cuMemAllocFromPoolAsync"));
      CudaStream& s = Str(stream);
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      CUdeviceptr p = 0;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuMemAllocFromPoolAsync, &p, static_cast<size_t>(bytes),
                                     static_cast<CudaMemPool&>(pool).handle, s.handle));
      *dptr = p;
      {
        // Counted as resident (TenantMemory): the driver's addresses.
        TenantState& memory = *s.context.tenant;
        std::lock_guard<std::mutex> lock(memory.mu);
        memory.pool_allocations[p] = PoolAllocation{bytes, s.context.device, &s.context};
      }
      return Status::Ok();
    });
  }

  Status MemFreeAsync(Stream& stream, uint64_t dptr, Completion freed) override {
    return Guarded("MemFreeAsync", [&]() -> Status {
      CudaStream& s = Str(stream);
      // MemAlloc's memory is ours (virtual memory the driver's
      // cuMemFreeAsync knows nothing of): freed as MemFree frees it, after
      // the tenant's queued work; `freed` still runs behind the stream.
      bool ours = false;
      if (Parkable()) FERRY_RETURN_IF_ERROR(FreeParkable(s.context, dptr, &ours));
      if (!ours) FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMemFreeAsync, "cuMemFreeAsync"));
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      if (!ours) {
        FERRY_RETURN_IF_ERROR(
            FERRY_CU(*api_, cuMemFreeAsync, static_cast<CUdeviceptr>(dptr), s.handle));
        TenantState& memory = *s.context.tenant;
        std::lock_guard<std::mutex> lock(memory.mu);
        memory.pool_allocations.erase(dptr);
      }
      // A stream callback holds the stream until it has run, so the stream
      // is idle past the free only after `freed`.
      Status queued = EnqueueCallback(s, [freed](CUresult result) mutable {
        RunCompletion(freed, result == CUDA_SUCCESS
                                 ? Status::Ok()
                                 : Status::Cuda(result, "stream work failed before a free"));
      });
      if (!queued.ok()) {
        // `freed` promises the free has executed: without a callback, wait
        // for the stream here, as the other callback fallbacks do.
        RunCompletion(freed, FERRY_CU(*api_, cuStreamSynchronize, s.handle));
      }
      return Status::Ok();
    });
  }

  Status GetMemPoolAttribute(MemPool& pool, int attribute, uint64_t* value) override {
    return Guarded("GetMemPoolAttribute", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMemPoolGetAttribute, "cuMemPoolGetAttribute"));
      const CUmemoryPool handle = static_cast<CudaMemPool&>(pool).handle;
      const auto attr = static_cast<CUmemPool_attribute>(attribute);
      if (MemPoolAttributeIsInt(attribute)) {
        int v = 0;
        FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuMemPoolGetAttribute, handle, attr, &v));
        *value = static_cast<uint64_t>(v);
        return Status::Ok();
      }
      cuuint64_t v = 0;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuMemPoolGetAttribute, handle, attr, &v));
      *value = v;
      return Status::Ok();
    });
  }

  Status SetMemPoolAttribute(MemPool& pool, int attribute, uint64_t value) override {
    return Guarded("SetMemPoolAttribute", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMemPoolSetAttribute, "cuMemPoolSetAttribute"));
      const CUmemoryPool handle = static_cast<CudaMemPool&>(pool).handle;
      const auto attr = static_cast<CUmemPool_attribute>(attribute);
      if (MemPoolAttributeIsInt(attribute)) {
        int v = static_cast<int>(value);
        return FERRY_CU(*api_, cuMemPoolSetAttribute, handle, attr, &v);
      }
      cuuint64_t v = value;
      return FERRY_CU(*api_, cuMemPoolSetAttribute, handle, attr, &v);
    });
  }

  Status TrimMemPool(MemPool& pool, uint64_t min_bytes_to_keep) override {
    return Guarded("TrimMemPool", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMemPoolTrimTo, "cuMemPoolTrimTo"));
      return FERRY_CU(*api_, cuMemPoolTrimTo, static_cast<CudaMemPool&>(pool).handle,
                      static_cast<size_t>(min_bytes_to_keep));
    });
  }

  Status SetStreamAttribute(Stream& stream, int attribute,
                            const StreamAttributes& values) override {
    return Guarded("SetStreamAttribute", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuStreamSetAttribute, "cuStreamSetAttribute"));
      CudaStream& s = Str(stream);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      CUstreamAttrValue value;
      std::memset(&value, 0, sizeof(value));
      if (attribute == CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW) {
        value.accessPolicyWindow.base_ptr = reinterpret_cast<void*>(values.window_base);
        value.accessPolicyWindow.num_bytes = static_cast<size_t>(values.window_bytes);
        value.accessPolicyWindow.hitRatio = values.hit_ratio;
        value.accessPolicyWindow.hitProp = static_cast<CUaccessProperty>(values.hit_prop);
        value.accessPolicyWindow.missProp = static_cast<CUaccessProperty>(values.miss_prop);
      } else {
        value.syncPolicy = static_cast<CUsynchronizationPolicy>(values.sync_policy);
      }
      return FERRY_CU(*api_, cuStreamSetAttribute, s.handle, static_cast<CUstreamAttrID>(attribute),
                      &value);
    });
  }

  Status StreamMemOps(Stream& stream, std::vector<StreamMemOp> ops, unsigned flags) override {
    return Guarded("StreamMemOps", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuStreamBatchMemOp, "cuStreamBatchMemOp"));
      std::vector<CUstreamBatchMemOpParams> params(ops.size());
      for (size_t i = 0; i < ops.size(); ++i) {
        CUstreamBatchMemOpParams& p = params[i];
        std::memset(&p, 0, sizeof(p));
        const StreamMemOp& op = ops[i];
        p.operation = static_cast<CUstreamBatchMemOpType>(op.operation);
        switch (op.operation) {
          case CU_STREAM_MEM_OP_WAIT_VALUE_32:
          case CU_STREAM_MEM_OP_WAIT_VALUE_64:
            p.waitValue.address = static_cast<CUdeviceptr>(op.address);
            p.waitValue.value64 = op.value;
            p.waitValue.flags = op.flags;
            break;
          case CU_STREAM_MEM_OP_WRITE_VALUE_32:
          case CU_STREAM_MEM_OP_WRITE_VALUE_64:
            p.writeValue.address = static_cast<CUdeviceptr>(op.address);
            p.writeValue.value64 = op.value;
            p.writeValue.flags = op.flags;
            break;
          case CU_STREAM_MEM_OP_FLUSH_REMOTE_WRITES:
            p.flushRemoteWrites.flags = op.flags;
            break;
          default:
            p.memoryBarrier.flags = op.flags;
            break;
        }
      }
      CudaStream& s = Str(stream);
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      return FERRY_CU(*api_, cuStreamBatchMemOp, s.handle, static_cast<unsigned>(params.size()),
                      params.data(), flags);
    });
  }

  Status ProfilerControl(Context& context, bool start) override {
    return Guarded("ProfilerControl", [&]() -> Status {
      if (api_->cuProfilerStart == nullptr || api_->cuProfilerStop == nullptr) {
        return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, "the driver has no cuProfilerStart/Stop");
      }
      FERRY_RETURN_IF_ERROR(MakeCurrent(Ctx(context)));
      return start ? FERRY_CU(*api_, cuProfilerStart) : FERRY_CU(*api_, cuProfilerStop);
    });
  }

  // --- tenants ---------------------------------------------------------------
  // The CUDA driver orders releases itself (WhenReleased's default holds), but
  // parking needs to know a tenant's contexts and memory.
  std::unique_ptr<Tenant> CreateTenant() override { return std::make_unique<CudaTenant>(); }

  void JoinTenant(Context& context, Tenant& tenant) override {
    CudaContext& ctx = Ctx(context);
    const std::shared_ptr<TenantState>& to = static_cast<CudaTenant&>(tenant).memory;
    if (ctx.tenant == to) return;
    LeaveTenant(ctx);
    AdoptContext(ctx, to);
  }

  // `ctx` joins `memory` (new, or between LeaveTenant and the first work).
  static void AdoptContext(CudaContext& ctx, const std::shared_ptr<TenantState>& memory) {
    std::lock_guard<std::mutex> lock(memory->mu);
    memory->contexts.push_back(&ctx);
    ctx.tenant = memory;
  }
  // `ctx` leaves its tenant; memory it still holds there is released.
  void LeaveTenant(CudaContext& ctx) noexcept {
    if (ctx.tenant == nullptr) return;
    TenantState& memory = *ctx.tenant;
    std::lock_guard<std::mutex> lock(memory.mu);
    for (auto it = memory.blocks.begin(); it != memory.blocks.end();) {
      if (it->second.owner != &ctx) {
        ++it;
        continue;
      }
      const uint64_t address = it->first;
      std::erase_if(memory.allocations,
                    [address](const auto& entry) { return entry.second.block == address; });
      std::erase_if(memory.deferred_frees,
                    [address](const auto& entry) { return entry.second.block == address; });
      ReleaseBlock(it->second, "releasing a destroyed context's memory");
      it = memory.blocks.erase(it);
    }
    std::erase_if(memory.pool_allocations,
                  [&ctx](const auto& entry) { return entry.second.owner == &ctx; });
    std::erase(memory.contexts, &ctx);
  }

  // --- parking ---------------------------------------------------------------
  // Only parkable allocations (above) can be parked: parking copies each of
  // the tenant's blocks into host memory, unmaps it (its physical memory goes
  // back to the device, since the handle was released once mapped) and keeps
  // the reservation; unparking makes new physical memory, maps it at the same
  // addresses, gives it the same access and copies the bytes back. Pool
  // allocations are the driver's (their addresses cannot be kept) and stay
  // resident; so do CUDA arrays, module globals, graph memory and the
  // tenant's own virtual memory (not counted in TenantMemory). The figures
  // count each allocation with the bytes it asked for (what the session
  // charges); the device memory moved is its blocks, whole granules.

  bool CanParkMemory() const override { return Parkable(); }

  Status ParkTenantMemory(Tenant& tenant, ParkedMemory* moved) override {
    return Guarded("ParkTenantMemory", [&]() -> Status {
      if (!Parkable()) return GpuBackend::ParkTenantMemory(tenant, moved);
      TenantState& memory = *static_cast<CudaTenant&>(tenant).memory;
      std::lock_guard<std::mutex> lock(memory.mu);
      // The tenant is idle (the contract): frees put off can happen now.
      ReleaseDeferredFrees(memory);
      // Copy everything out first, so that a failure changes nothing.
      std::vector<VmmBlock*> parking;
      Status status = Status::Ok();
      for (auto& [address, block] : memory.blocks) {
        if (!block.mapped) continue;
        status = CopyOut(block);
        if (!status.ok()) break;
        parking.push_back(&block);
      }
      if (!status.ok()) {
        for (VmmBlock* block : parking) FreeParkedCopy(*block);
        return status;
      }
      std::set<uint64_t> parked_now;
      for (VmmBlock* block : parking) {
        // Unmapping memory whose handle is released frees it. A failure here
        // leaves that block mapped: then it is resident again (its copy goes).
        CUresult result = api_->cuMemUnmap(static_cast<CUdeviceptr>(block->address),
                                           static_cast<size_t>(block->bytes));
        if (result != CUDA_SUCCESS) {
          LogFailure(*api_, result, FERRY_CUDA_EXPORT_NAME(cuMemUnmap), "parking a block");
          FreeParkedCopy(*block);
          continue;
        }
        block->mapped = false;
        parked_now.insert(block->address);
      }
      if (moved != nullptr) {
        for (const auto& [dptr, allocation] : memory.allocations) {
          if (parked_now.contains(allocation.block))
            moved->Add(allocation.device, allocation.bytes);
        }
      }
      return Status::Ok();
    });
  }

  Status UnparkTenantMemory(Tenant& tenant, ParkedMemory* moved) override {
    return Guarded("UnparkTenantMemory", [&]() -> Status {
      if (!Parkable()) return GpuBackend::UnparkTenantMemory(tenant, moved);
      TenantState& memory = *static_cast<CudaTenant&>(tenant).memory;
      std::lock_guard<std::mutex> lock(memory.mu);
      std::vector<VmmBlock*> parked;
      std::map<int, uint64_t> needed;  // device -> bytes
      for (auto& [address, block] : memory.blocks) {
        if (block.mapped) continue;
        parked.push_back(&block);
        needed[block.device] += block.bytes;
      }
      // Map everything back before copying, so that a failure changes nothing.
      std::vector<VmmBlock*> remapped;
      for (VmmBlock* block : parked) {
        Status status = MapBlock(*block);
        if (!status.ok()) {
          for (VmmBlock* undo : remapped) {
            FERRY_CU_QUIET(*api_, "undoing an unpark", cuMemUnmap,
                           static_cast<CUdeviceptr>(undo->address),
                           static_cast<size_t>(undo->bytes));
            undo->mapped = false;
          }
          if (status.cuda_result() == CUDA_ERROR_OUT_OF_MEMORY) {
            return Status::OutOfMemory(absl::StrCat("cannot bring back ", needed[block->device],
                                                    " parked bytes on device ", block->device,
                                                    FreeBytesText(*block), ": ", status.message()));
          }
          return status;
        }
        remapped.push_back(block);
      }
      Status copied = Status::Ok();
      for (VmmBlock* block : parked) {
        Status status = CopyIn(*block);
        // The bytes are lost only if a copy into mapped device memory fails
        // (the context failed): report it, but the block is mapped either way.
        if (!status.ok() && copied.ok()) copied = status;
        FreeParkedCopy(*block);
      }
      if (moved != nullptr) {
        std::set<uint64_t> back;
        for (VmmBlock* block : parked) back.insert(block->address);
        for (const auto& [dptr, allocation] : memory.allocations) {
          if (back.contains(allocation.block)) moved->Add(allocation.device, allocation.bytes);
        }
      }
      return copied;
    });
  }

  void TenantMemory(Tenant& tenant, ParkedMemory* parked, ParkedMemory* resident) override {
    TenantState& memory = *static_cast<CudaTenant&>(tenant).memory;
    std::lock_guard<std::mutex> lock(memory.mu);
    for (const auto& [dptr, allocation] : memory.allocations) {
      const bool is_parked = !memory.blocks.at(allocation.block).mapped;
      ParkedMemory* into = is_parked ? parked : resident;
      if (into != nullptr) into->Add(allocation.device, allocation.bytes);
    }
    if (resident != nullptr) {
      for (const auto& [dptr, pool] : memory.pool_allocations)
        resident->Add(pool.device, pool.bytes);
    }
  }

  // --- memory -------------------------------------------------------------
  Status MemAlloc(Context& context, uint64_t bytes, uint64_t* dptr) override {
    return Guarded("MemAlloc", [&]() -> Status {
      if (Parkable()) return AllocateParkable(Ctx(context), bytes, dptr);
      FERRY_RETURN_IF_ERROR(MakeCurrent(Ctx(context)));
      CUdeviceptr p = 0;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuMemAlloc, &p, static_cast<size_t>(bytes)));
      *dptr = p;
      return Status::Ok();
    });
  }

  Status MemAllocPitch(Context& context, uint64_t width_bytes, uint64_t height,
                       unsigned element_bytes, uint64_t* dptr, uint64_t* pitch) override {
    return Guarded("MemAllocPitch", [&]() -> Status {
      if (Parkable()) {
        // The driver's cuMemAllocPitch cannot place memory in a reservation,
        // so the pitch is chosen here: rows kPitchAlignment bytes apart, as
        // the driver aligns them (a multiple of every GPU's texture pitch
        // alignment, so the rows can back a pitched texture).
        const uint64_t row = RoundUpTo(width_bytes, kPitchAlignment);
        if (width_bytes == 0 || height == 0 || row < width_bytes ||
            height > std::numeric_limits<uint64_t>::max() / row) {
          return Status::Cuda(CUDA_ERROR_INVALID_VALUE, "MemAllocPitch: bad extent");
        }
        (void)element_bytes;  // the session checked it; rows are aligned beyond it
        FERRY_RETURN_IF_ERROR(AllocateParkable(Ctx(context), row * height, dptr));
        *pitch = row;
        return Status::Ok();
      }
      FERRY_RETURN_IF_ERROR(MakeCurrent(Ctx(context)));
      CUdeviceptr p = 0;
      size_t row = 0;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuMemAllocPitch, &p, &row,
                                     static_cast<size_t>(width_bytes), static_cast<size_t>(height),
                                     element_bytes));
      *dptr = p;
      *pitch = row;
      return Status::Ok();
    });
  }

  Status MemFree(Context& context, uint64_t dptr) override {
    return Guarded("MemFree", [&]() -> Status {
      if (Parkable()) {
        bool found = false;
        FERRY_RETURN_IF_ERROR(FreeParkable(Ctx(context), dptr, &found));
        if (found) return Status::Ok();
        // Not one of ours: the driver's (a graph allocation).
      }
      FERRY_RETURN_IF_ERROR(MakeCurrent(Ctx(context)));
      // cuMemFree waits for the work that may still use the memory, like
      // cudaFree, which is what the contract asks (it allows returning later).
      return FERRY_CU(*api_, cuMemFree, static_cast<CUdeviceptr>(dptr));
    });
  }

  Status MemGetInfo(Context& context, uint64_t* free_bytes, uint64_t* total_bytes) override {
    return Guarded("MemGetInfo", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(MakeCurrent(Ctx(context)));
      size_t free_now = 0, total = 0;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuMemGetInfo, &free_now, &total));
      *free_bytes = free_now;
      *total_bytes = total;
      return Status::Ok();
    });
  }

  // --- stream-ordered operations ------------------------------------------
  Status CopyHostToDevice(Stream& stream, uint64_t dst, HostBytes src) override {
    return Guarded("CopyHostToDevice", [&]() -> Status {
      CudaStream& s = Str(stream);
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuMemcpyHtoDAsync, static_cast<CUdeviceptr>(dst),
                                     src.data, static_cast<size_t>(src.size), s.handle));
      KeepAlive(s, std::move(src.owner));
      return Status::Ok();
    });
  }

  Status CopyDeviceToHost(Stream& stream, MutableHostBytes dst, uint64_t src) override {
    return Guarded("CopyDeviceToHost", [&]() -> Status {
      CudaStream& s = Str(stream);
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      const size_t size = static_cast<size_t>(dst.size);
      size_t capacity = 0;
      void* staging = size > 0 ? TakeStaging(s.context, size, &capacity) : nullptr;
      if (staging == nullptr) {
        // No page-locked memory to be had: the driver copies synchronously.
        FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuMemcpyDtoHAsync, dst.data,
                                       static_cast<CUdeviceptr>(src), size, s.handle));
        KeepAlive(s, std::move(dst.owner));
        return Status::Ok();
      }
      std::shared_ptr<StagingCache> cache = s.context.staging;
      Status copied = FERRY_CU(*api_, cuMemcpyDtoHAsync, staging, static_cast<CUdeviceptr>(src),
                               size, s.handle);
      if (!copied.ok()) {
        ReturnStaging(*cache, staging, capacity, nullptr, 0, 0, 0, CUDA_ERROR_UNKNOWN);
        return copied;
      }
      // Lands the bytes once the copy is done (on the driver's callback
      // thread: memcpy, no driver call), then releases the destination.
      auto land = std::make_shared<MutableHostBytes>(std::move(dst));
      Status queued = EnqueueCallback(s, [cache, staging, capacity, land](CUresult result) {
        ReturnStaging(*cache, staging, capacity, land->data, land->size, land->size, 1, result);
        land->owner.reset();
      });
      if (!queued.ok()) {
        // Nothing would land the copy: wait for it here instead.
        FERRY_LOG(kWarning) << "cuda backend: " << queued.message()
                            << "; synchronizing the stream to land a device-to-host copy";
        const CUresult result = api_->cuStreamSynchronize(s.handle);
        ReturnStaging(*cache, staging, capacity, land->data, land->size, land->size, 1, result);
        land->owner.reset();
        return api_->Check(result, FERRY_CUDA_EXPORT_NAME(cuStreamSynchronize));
      }
      return Status::Ok();
    });
  }

  Status CopyDeviceToDevice(Stream& stream, uint64_t dst, uint64_t src, uint64_t bytes) override {
    return Guarded("CopyDeviceToDevice", [&]() -> Status {
      CudaStream& s = Str(stream);
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      return FERRY_CU(*api_, cuMemcpyDtoDAsync, static_cast<CUdeviceptr>(dst),
                      static_cast<CUdeviceptr>(src), static_cast<size_t>(bytes), s.handle);
    });
  }

  // 2D copies go to cuMemcpy2DAsync; 3D copies and copies with an array
  // side (CUDA arrays, textures and surfaces) to cuMemcpy3DAsync.
  Status Copy2DAsync(Stream& stream, Copy2D copy) override {
    return Guarded("Copy2DAsync", [&]() -> Status {
      const bool three_d = copy.depth > 1 || copy.src_array != nullptr || copy.dst_array != nullptr;
      if (three_d) FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMemcpy3DAsync, "cuMemcpy3DAsync"));
      // Host buffers come with their size and travel packed (a host side's
      // slices are `height` rows); make sure the rows fit, since the driver
      // would read or write whatever the pitch and extents say.
      const uint64_t host_rows = copy.height * copy.depth;
      auto fits = [&copy, host_rows](uint64_t buffer_size, uint64_t pitch) {
        if (host_rows == 0 || copy.width_bytes == 0) return true;
        if (host_rows > 1 && pitch < copy.width_bytes) return false;
        const uint64_t rows = host_rows - 1;
        if (rows != 0 && pitch > (UINT64_MAX - copy.width_bytes) / rows) return false;
        return rows * pitch + copy.width_bytes <= buffer_size;
      };
      if (copy.src_is_host && !fits(copy.src_host.size, copy.src_pitch)) {
        return Status::InvalidArgument("Copy2DAsync: source rows exceed the host buffer");
      }
      if (copy.dst_is_host && !fits(copy.dst_host.size, copy.dst_pitch)) {
        return Status::InvalidArgument("Copy2DAsync: destination rows exceed the host buffer");
      }
      CudaStream& s = Str(stream);
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      // Device to host: through a page-locked buffer laid out like the
      // destination, as CopyDeviceToHost does (and for the same reason).
      size_t capacity = 0;
      void* staging = nullptr;
      if (copy.dst_is_host && !copy.src_is_host && host_rows > 0 && copy.width_bytes > 0) {
        staging =
            TakeStaging(s.context, (host_rows - 1) * copy.dst_pitch + copy.width_bytes, &capacity);
      }
      void* dst_host = staging != nullptr ? staging : copy.dst_host.data;
      Status copied;
      if (three_d) {
        CUDA_MEMCPY3D m;
        std::memset(&m, 0, sizeof(m));
        DescribeCopySide(copy.src_is_host, const_cast<uint8_t*>(copy.src_host.data),
                         copy.src_device, copy.src_pitch, copy.src_height, copy.src_array,
                         copy.src_x, copy.src_y, copy.src_z, &m.srcMemoryType, &m.srcHost,
                         &m.srcDevice, &m.srcArray, &m.srcPitch, &m.srcHeight, &m.srcXInBytes,
                         &m.srcY, &m.srcZ);
        DescribeCopySide(copy.dst_is_host, dst_host, copy.dst_device, copy.dst_pitch,
                         copy.dst_height, copy.dst_array, copy.dst_x, copy.dst_y, copy.dst_z,
                         &m.dstMemoryType, &m.dstHost, &m.dstDevice, &m.dstArray, &m.dstPitch,
                         &m.dstHeight, &m.dstXInBytes, &m.dstY, &m.dstZ);
        if (copy.src_is_host) m.srcHeight = static_cast<size_t>(copy.height);
        if (copy.dst_is_host) m.dstHeight = static_cast<size_t>(copy.height);
        m.WidthInBytes = static_cast<size_t>(copy.width_bytes);
        m.Height = static_cast<size_t>(copy.height);
        m.Depth = static_cast<size_t>(copy.depth);
        copied = FERRY_CU(*api_, cuMemcpy3DAsync, &m, s.handle);
      } else {
        CUDA_MEMCPY2D m;
        std::memset(&m, 0, sizeof(m));
        if (copy.src_is_host) {
          m.srcMemoryType = CU_MEMORYTYPE_HOST;
          m.srcHost = copy.src_host.data;
        } else {
          m.srcMemoryType = CU_MEMORYTYPE_DEVICE;
          m.srcDevice = static_cast<CUdeviceptr>(copy.src_device);
        }
        m.srcPitch = static_cast<size_t>(copy.src_pitch);
        if (copy.dst_is_host) {
          m.dstMemoryType = CU_MEMORYTYPE_HOST;
          m.dstHost = dst_host;
        } else {
          m.dstMemoryType = CU_MEMORYTYPE_DEVICE;
          m.dstDevice = static_cast<CUdeviceptr>(copy.dst_device);
        }
        m.dstPitch = static_cast<size_t>(copy.dst_pitch);
        m.WidthInBytes = static_cast<size_t>(copy.width_bytes);
        m.Height = static_cast<size_t>(copy.height);
        copied = FERRY_CU(*api_, cuMemcpy2DAsync, &m, s.handle);
      }
      if (staging == nullptr) {
        FERRY_RETURN_IF_ERROR(copied);
        KeepAlive(s, copy.src_is_host ? std::move(copy.src_host.owner) : nullptr,
                  copy.dst_is_host ? std::move(copy.dst_host.owner) : nullptr);
        return Status::Ok();
      }
      std::shared_ptr<StagingCache> cache = s.context.staging;
      if (!copied.ok()) {
        ReturnStaging(*cache, staging, capacity, nullptr, 0, 0, 0, CUDA_ERROR_UNKNOWN);
        return copied;
      }
      auto land = std::make_shared<MutableHostBytes>(std::move(copy.dst_host));
      const size_t pitch = copy.dst_pitch, width = copy.width_bytes, rows = host_rows;
      auto finish = [cache, staging, capacity, land, pitch, width, rows](CUresult result) {
        ReturnStaging(*cache, staging, capacity, land->data, pitch, width, rows, result);
        land->owner.reset();
      };
      if (Status queued = EnqueueCallback(s, finish); !queued.ok()) {
        FERRY_LOG(kWarning) << "cuda backend: " << queued.message()
                            << "; synchronizing the stream to land a device-to-host copy";
        const CUresult result = api_->cuStreamSynchronize(s.handle);
        finish(result);
        return api_->Check(result, FERRY_CUDA_EXPORT_NAME(cuStreamSynchronize));
      }
      return Status::Ok();
    });
  }

  // --- CUDA arrays, textures and surfaces ---------------------------------------

  Status CreateArray(Context& context, const ArrayDescriptor& descriptor,
                     std::unique_ptr<Array>* out) override {
    return Guarded("CreateArray", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuArray3DCreate, "cuArray3DCreate"));
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuArrayDestroy, "cuArrayDestroy"));
      FERRY_RETURN_IF_ERROR(MakeCurrent(Ctx(context)));
      const CUDA_ARRAY3D_DESCRIPTOR d = DriverDescriptor(descriptor);
      CUarray handle = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuArray3DCreate, &handle, &d));
      *out = std::make_unique<CudaArray>(*api_, handle, /*owned=*/true);
      return Status::Ok();
    });
  }

  Status CreateMipmappedArray(Context& context, const ArrayDescriptor& descriptor, unsigned levels,
                              std::unique_ptr<MipmappedArray>* out) override {
    return Guarded("CreateMipmappedArray", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMipmappedArrayCreate, "cuMipmappedArrayCreate"));
      FERRY_RETURN_IF_ERROR(
          NeedEntryPoint(api_->cuMipmappedArrayDestroy, "cuMipmappedArrayDestroy"));
      FERRY_RETURN_IF_ERROR(MakeCurrent(Ctx(context)));
      const CUDA_ARRAY3D_DESCRIPTOR d = DriverDescriptor(descriptor);
      CUmipmappedArray handle = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuMipmappedArrayCreate, &handle, &d, levels));
      *out = std::make_unique<CudaMipmappedArray>(*api_, handle);
      return Status::Ok();
    });
  }

  Status MipmappedArrayLevel(MipmappedArray& mipmapped, unsigned level, Array** out) override {
    return Guarded("MipmappedArrayLevel", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(
          NeedEntryPoint(api_->cuMipmappedArrayGetLevel, "cuMipmappedArrayGetLevel"));
      auto& m = static_cast<CudaMipmappedArray&>(mipmapped);
      std::unique_ptr<CudaArray>& slot = m.levels[level];
      if (slot == nullptr) {
        CUarray handle = nullptr;
        Status got = FERRY_CU(*api_, cuMipmappedArrayGetLevel, &handle, m.handle, level);
        if (!got.ok()) {
          m.levels.erase(level);
          return got;
        }
        slot = std::make_unique<CudaArray>(*api_, handle, /*owned=*/false);
      }
      *out = slot.get();
      return Status::Ok();
    });
  }

  Status CreateTextureObject(Context& context, const TextureResource& resource,
                             const TextureDescription& texture, const TextureView* view,
                             std::unique_ptr<TextureObject>* out) override {
    return Guarded("CreateTextureObject", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuTexObjectCreate, "cuTexObjectCreate"));
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuTexObjectDestroy, "cuTexObjectDestroy"));
      FERRY_RETURN_IF_ERROR(MakeCurrent(Ctx(context)));
      const CUDA_RESOURCE_DESC r = DriverResource(resource);
      CUDA_TEXTURE_DESC t;
      std::memset(&t, 0, sizeof(t));
      for (int i = 0; i < 3; ++i)
        t.addressMode[i] = static_cast<CUaddress_mode>(texture.address_mode[i]);
      t.filterMode = static_cast<CUfilter_mode>(texture.filter_mode);
      t.flags = texture.flags;
      t.maxAnisotropy = texture.max_anisotropy;
      t.mipmapFilterMode = static_cast<CUfilter_mode>(texture.mipmap_filter_mode);
      t.mipmapLevelBias = texture.mipmap_level_bias;
      t.minMipmapLevelClamp = texture.min_mipmap_level_clamp;
      t.maxMipmapLevelClamp = texture.max_mipmap_level_clamp;
      for (int i = 0; i < 4; ++i) t.borderColor[i] = texture.border_color[i];
      CUDA_RESOURCE_VIEW_DESC v;
      std::memset(&v, 0, sizeof(v));
      if (view != nullptr) {
        v.format = static_cast<CUresourceViewFormat>(view->format);
        v.width = static_cast<size_t>(view->width);
        v.height = static_cast<size_t>(view->height);
        v.depth = static_cast<size_t>(view->depth);
        v.firstMipmapLevel = view->first_level;
        v.lastMipmapLevel = view->last_level;
        v.firstLayer = view->first_layer;
        v.lastLayer = view->last_layer;
      }
      CUtexObject handle = 0;
      FERRY_RETURN_IF_ERROR(
          FERRY_CU(*api_, cuTexObjectCreate, &handle, &r, &t, view != nullptr ? &v : nullptr));
      *out = std::make_unique<CudaTextureObject>(*api_, handle, /*surface=*/false);
      return Status::Ok();
    });
  }

  Status CreateSurfaceObject(Context& context, const TextureResource& resource,
                             std::unique_ptr<TextureObject>* out) override {
    return Guarded("CreateSurfaceObject", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuSurfObjectCreate, "cuSurfObjectCreate"));
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuSurfObjectDestroy, "cuSurfObjectDestroy"));
      FERRY_RETURN_IF_ERROR(MakeCurrent(Ctx(context)));
      const CUDA_RESOURCE_DESC r = DriverResource(resource);
      CUsurfObject handle = 0;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuSurfObjectCreate, &handle, &r));
      *out = std::make_unique<CudaTextureObject>(*api_, handle, /*surface=*/true);
      return Status::Ok();
    });
  }

  Status Memset(Stream& stream, uint64_t dst, uint64_t pitch, uint32_t value,
                unsigned element_bytes, uint64_t width, uint64_t height) override {
    return Guarded("Memset", [&]() -> Status {
      CudaStream& s = Str(stream);
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      const auto d = static_cast<CUdeviceptr>(dst);
      const auto w = static_cast<size_t>(width), h = static_cast<size_t>(height);
      const auto p = static_cast<size_t>(pitch);
      if (element_bytes != 1 && element_bytes != 2 && element_bytes != 4) {
        return Status::InvalidArgument(
            absl::StrCat("Memset: element size ", element_bytes, " is not 1, 2 or 4"));
      }
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      if (height == 1) {
        switch (element_bytes) {
          case 1:
            return FERRY_CU(*api_, cuMemsetD8Async, d, static_cast<unsigned char>(value), w,
                            s.handle);
          case 2:
            return FERRY_CU(*api_, cuMemsetD16Async, d, static_cast<unsigned short>(value), w,
                            s.handle);
          default:
            return FERRY_CU(*api_, cuMemsetD32Async, d, static_cast<unsigned int>(value), w,
                            s.handle);
        }
      }
      switch (element_bytes) {
        case 1:
          return FERRY_CU(*api_, cuMemsetD2D8Async, d, p, static_cast<unsigned char>(value), w, h,
                          s.handle);
        case 2:
          return FERRY_CU(*api_, cuMemsetD2D16Async, d, p, static_cast<unsigned short>(value), w, h,
                          s.handle);
        default:
          return FERRY_CU(*api_, cuMemsetD2D32Async, d, p, static_cast<unsigned int>(value), w, h,
                          s.handle);
      }
    });
  }

  Status Launch(Stream& stream, Function& function, const LaunchConfig& config,
                HostBytes params) override {
    return Guarded("Launch", [&]() -> Status {
      CudaStream& s = Str(stream);
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      CudaFunction& f = Fn(function);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      LaunchAttributes attributes;
      CUlaunchConfig launch = DriverLaunchConfig(config, &attributes);
      launch.hStream = s.handle;
      // The packed buffer goes to the driver as is; it copies the parameters
      // before cuLaunchKernelEx returns, so `params` need only live until then.
      size_t params_size = static_cast<size_t>(params.size);
      void* extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, const_cast<uint8_t*>(params.data),
                       CU_LAUNCH_PARAM_BUFFER_SIZE, &params_size, CU_LAUNCH_PARAM_END};
      return FERRY_CU(*api_, cuLaunchKernelEx, &launch, f.handle, nullptr,
                      params_size != 0 ? extra : nullptr);
    });
  }

  // --- streams ------------------------------------------------------------
  Status CreateStream(Context& context, unsigned flags, int priority,
                      std::unique_ptr<Stream>* out) override {
    return Guarded("CreateStream", [&]() -> Status {
      CudaContext& ctx = Ctx(context);
      FERRY_RETURN_IF_ERROR(MakeCurrent(ctx));
      CUstream handle = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuStreamCreateWithPriority, &handle, flags, priority));
      *out = std::make_unique<CudaStream>(ctx, handle, /*owned=*/true);
      return Status::Ok();
    });
  }

  Status QueryStream(Stream& stream) override {
    return Guarded("QueryStream", [&]() -> Status {
      CudaStream& s = Str(stream);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      const uint64_t submitted = s.progress->submitted.load(std::memory_order_acquire);
      const CUresult result = api_->cuStreamQuery(s.handle);
      // A WhenStreamIdle Completion runs inside its stream callback, so the
      // driver counts the stream busy until that callback returns, just
      // after the client has been told the stream is idle: a query right
      // after a synchronize would say NOT_READY. Nothing was queued since
      // that Completion found the work done, so the stream is idle.
      if (result == CUDA_ERROR_NOT_READY &&
          s.progress->idle_through.load(std::memory_order_acquire) == submitted) {
        return Status::Ok();
      }
      return api_->Check(result, FERRY_CUDA_EXPORT_NAME(cuStreamQuery));
    });
  }

  void WhenStreamIdle(Stream& stream, Completion done) override {
    CudaStream& s = Str(stream);
    Status status = Guarded("WhenStreamIdle", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      // `done` sits in a shared slot so it can be taken back if queuing fails.
      auto shared = std::make_shared<Completion>(std::move(done));
      const uint64_t through = s.progress->submitted.load(std::memory_order_acquire);
      Status queued =
          EnqueueCallback(s, [shared, progress = s.progress, through](CUresult result) mutable {
            if (result == CUDA_SUCCESS)
              progress->idle_through.store(through, std::memory_order_release);
            // Runs on the driver's thread: no driver calls, hence CuResultName.
            RunCompletion(*shared, result == CUDA_SUCCESS
                                       ? Status::Ok()
                                       : Status::Cuda(result, absl::StrCat("stream work failed: ",
                                                                           CuResultName(result))));
          });
      if (!queued.ok()) done = std::move(*shared);
      return queued;
    });
    if (!status.ok()) CompleteLater(std::move(done), std::move(status));
  }

  // The gate is a stream callback that reports `reached` and then waits for
  // the gate on the driver's callback thread: the simple way to hold a stream
  // for the host. What it costs: that driver thread is held for the client's
  // round trip and its function's run time, and the driver runs host
  // callbacks one at a time on it (CUDA documents only that callbacks of
  // independent streams "may be serialized"), so other streams'
  // WhenStreamIdle Completions and buffer releases wait meanwhile; their
  // device work does not. If the driver shares that thread between contexts,
  // that includes other sessions' completions, and a client that never opens
  // its gate stalls them until it disconnects. A wait on the device instead
  // (cuStreamWaitValue32 on a mapped host word that Open sets) would hold
  // only the stream; not done yet: the word's pinned memory must outlive
  // every gate of its context, and it needs a GPU to be checked on.
  Status EnqueueHostGate(Stream& stream, std::shared_ptr<HostGate> gate,
                         Completion reached) override {
    if (gate == nullptr) return Status::InvalidArgument("EnqueueHostGate: null gate");
    return Guarded("EnqueueHostGate", [&]() -> Status {
      CudaStream& s = Str(stream);
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      return EnqueueCallback(
          s, [reached = std::move(reached), gate = std::move(gate)](CUresult result) mutable {
            // The driver's callback thread: no driver calls (CuResultName).
            RunCompletion(reached, result == CUDA_SUCCESS
                                       ? Status::Ok()
                                       : Status::Cuda(result, absl::StrCat("stream work failed: ",
                                                                           CuResultName(result))));
            gate->WaitOpen();
          });
    });
  }

  // --- events -------------------------------------------------------------
  Status CreateEvent(Context& context, unsigned flags, std::unique_ptr<Event>* out) override {
    return Guarded("CreateEvent", [&]() -> Status {
      CudaContext& ctx = Ctx(context);
      FERRY_RETURN_IF_ERROR(MakeCurrent(ctx));
      CUevent handle = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuEventCreate, &handle, flags));
      *out = std::make_unique<CudaEvent>(ctx, handle);
      return Status::Ok();
    });
  }

  Status RecordEvent(Event& event, Stream& stream) override {
    return Guarded("RecordEvent", [&]() -> Status {
      CudaStream& s = Str(stream);
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      CudaEvent& e = Ev(event);
      std::lock_guard<std::mutex> lock(e.waits_mu);
      // Rare: a WhenEventComplete still waits for a thread. Pin it to the
      // record it was asked about before this call replaces that record.
      for (const std::shared_ptr<EventWait>& wait : e.unstarted) {
        if (wait->snapshot == nullptr) Snapshot(e, *wait);
      }
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      return FERRY_CU(*api_, cuEventRecord, e.handle, s.handle);
    });
  }

  Status RecordContextEvent(Context& context, Event& event) override {
    return Guarded("RecordContextEvent", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuCtxRecordEvent, "cuCtxRecordEvent"));
      CudaContext& ctx = Ctx(context);
      CudaEvent& e = Ev(event);
      std::lock_guard<std::mutex> lock(e.waits_mu);
      // As RecordEvent: waits not started keep the record they asked about.
      for (const std::shared_ptr<EventWait>& wait : e.unstarted) {
        if (wait->snapshot == nullptr) Snapshot(e, *wait);
      }
      FERRY_RETURN_IF_ERROR(MakeCurrent(ctx));
      return FERRY_CU(*api_, cuCtxRecordEvent, ctx.handle, e.handle);
    });
  }

  Status ContextWaitEvent(Context& context, Event& event) override {
    return Guarded("ContextWaitEvent", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuCtxWaitEvent, "cuCtxWaitEvent"));
      CudaContext& ctx = Ctx(context);
      FERRY_RETURN_IF_ERROR(MakeCurrent(ctx));
      return FERRY_CU(*api_, cuCtxWaitEvent, ctx.handle, Ev(event).handle);
    });
  }

  Status StreamWaitEvent(Stream& stream, Event& event) override {
    return Guarded("StreamWaitEvent", [&]() -> Status {
      CudaStream& s = Str(stream);
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      return FERRY_CU(*api_, cuStreamWaitEvent, s.handle, Ev(event).handle, 0);
    });
  }

  Status QueryEvent(Event& event) override {
    return Guarded("QueryEvent", [&]() -> Status {
      CudaEvent& e = Ev(event);
      FERRY_RETURN_IF_ERROR(MakeCurrent(e.context));
      return FERRY_CU(*api_, cuEventQuery, e.handle);
    });
  }

  void WhenEventComplete(Event& event, Completion done) override {
    CudaEvent& e = Ev(event);
    std::shared_ptr<EventWait> wait;
    Status status = Guarded("WhenEventComplete", [&]() -> Status {
      wait = std::make_shared<EventWait>(EventWait{e.handle});
      std::lock_guard<std::mutex> lock(e.waits_mu);
      e.unstarted.push_back(wait);
      return Status::Ok();
    });
    if (!status.ok()) return CompleteLater(std::move(done), std::move(status));
    e.context.waits.Add();
    e.waits.Add();
    SubmitWait(
        std::move(done),
        [this, &e, wait]() -> Status {
          CudaContext& ctx = e.context;
          // Released in reverse order on exit: `e`, then `ctx`, may then go.
          PendingWaits::DoneOnExit done_with_ctx(ctx.waits);
          PendingWaits::DoneOnExit done_with_event(e.waits);
          CUevent target;
          {
            std::lock_guard<std::mutex> lock(e.waits_mu);
            std::erase(e.unstarted, wait);
            target = wait->target;
          }
          // cuEventSynchronize waits for the record the event holds when it is
          // called; `target` is that record, or a snapshot of the one the
          // client asked about if it has been recorded again since.
          Status status = MakeCurrent(ctx);
          if (status.ok()) status = FERRY_CU(*api_, cuEventSynchronize, target);
          if (wait->snapshot != nullptr) (void)api_->cuEventDestroy(wait->snapshot);
          return status;
        },
        [this, &e, wait] {
          CudaContext& ctx = e.context;
          {
            std::lock_guard<std::mutex> lock(e.waits_mu);
            std::erase(e.unstarted, wait);
          }
          if (wait->snapshot != nullptr) (void)api_->cuEventDestroy(wait->snapshot);
          e.waits.Done();
          ctx.waits.Done();
        });
  }

  Status EventElapsedTime(Event& start, Event& end, float* milliseconds) override {
    return Guarded("EventElapsedTime", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(MakeCurrent(Ev(start).context));
      return FERRY_CU(*api_, cuEventElapsedTime, milliseconds, Ev(start).handle, Ev(end).handle);
    });
  }

  // --- modules and functions ----------------------------------------------
  Status LoadModule(Context& context, std::span<const uint8_t> image, std::unique_ptr<Module>* out,
                    ModuleDescription* description) override {
    return Guarded("LoadModule", [&]() -> Status {
      CudaContext& ctx = Ctx(context);
      std::vector<uint8_t> storage;
      const void* data = nullptr;
      FERRY_RETURN_IF_ERROR(CheckModuleImage(image, &storage, &data));
      FERRY_RETURN_IF_ERROR(MakeCurrent(ctx));
      CUmodule handle = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuModuleLoadData, &handle, data));
      auto module = std::make_unique<CudaModule>(ctx, handle);
      ModuleDescription described;
      // On failure `module`'s destructor unloads the image again.
      FERRY_RETURN_IF_ERROR(Describe(*module, &described));
      if (description != nullptr) *description = std::move(described);
      *out = std::move(module);
      return Status::Ok();
    });
  }

  // --- JIT linking: the driver's linker -------------------------------------
  // The program's options become the driver's, each slot holding the value
  // the program's held; a log buffer option points at a buffer of the link's
  // own, of the size its *_SIZE_BYTES option gives.
  Status CreateLink(Context& context, const std::vector<JitOption>& options,
                    const std::vector<JitSymbol>& symbols, std::unique_ptr<Link>* out) override {
    return Guarded("CreateLink", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedLinker());
      CudaContext& ctx = Ctx(context);
      auto link = std::make_unique<CudaLink>(*api_, ctx);
      auto size_of = [&options](int size_option) -> size_t {
        for (const JitOption& o : options) {
          if (o.option == size_option) return static_cast<uint32_t>(o.value);
        }
        return 0;
      };
      link->info_log.assign(std::max<size_t>(size_of(CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES), 1), 0);
      link->error_log.assign(std::max<size_t>(size_of(CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES), 1), 0);
      ToDriverOptions(options, link.get(), &link->options, &link->values);
      if (!symbols.empty()) {
        for (const JitSymbol& symbol : symbols) {
          link->symbol_names.push_back(symbol.name);
          link->symbol_addresses.push_back(reinterpret_cast<void*>(symbol.address));
        }
        for (const std::string& name : link->symbol_names) {
          link->symbol_name_pointers.push_back(name.c_str());
        }
        link->options.insert(link->options.end(),
                             {CU_JIT_GLOBAL_SYMBOL_NAMES, CU_JIT_GLOBAL_SYMBOL_ADDRESSES,
                              CU_JIT_GLOBAL_SYMBOL_COUNT});
        link->values.insert(link->values.end(),
                            {static_cast<void*>(link->symbol_name_pointers.data()),
                             static_cast<void*>(link->symbol_addresses.data()),
                             reinterpret_cast<void*>(uintptr_t{symbols.size()})});
      }
      FERRY_RETURN_IF_ERROR(MakeCurrent(ctx));
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuLinkCreate,
                                     static_cast<unsigned>(link->options.size()),
                                     link->options.data(), link->values.data(), &link->state));
      *out = std::move(link);
      return Status::Ok();
    });
  }

  Status AddLinkInput(Link& link, int type, std::span<const uint8_t> data, const std::string& name,
                      const std::vector<JitOption>& options, LinkReport* report) override {
    return Guarded("AddLinkInput", [&]() -> Status {
      auto& l = static_cast<CudaLink&>(link);
      std::vector<CUjit_option> input_options;
      std::vector<void*> input_values;
      ToDriverOptions(options, nullptr, &input_options, &input_values);
      FERRY_RETURN_IF_ERROR(MakeCurrent(l.context));
      const Status added = FERRY_CU(
          *api_, cuLinkAddData, l.state, static_cast<CUjitInputType>(type),
          const_cast<uint8_t*>(data.data()), data.size(), name.c_str(),
          static_cast<unsigned>(input_options.size()), input_options.data(), input_values.data());
      ReportLink(l, report);
      report->input_options = FromDriverOptions(input_options, input_values);
      return added;
    });
  }

  Status CompleteLink(Link& link, std::span<const uint8_t>* image, LinkReport* report) override {
    return Guarded("CompleteLink", [&]() -> Status {
      auto& l = static_cast<CudaLink&>(link);
      FERRY_RETURN_IF_ERROR(MakeCurrent(l.context));
      void* cubin = nullptr;
      size_t size = 0;
      const Status completed = FERRY_CU(*api_, cuLinkComplete, l.state, &cubin, &size);
      ReportLink(l, report);
      if (completed.ok()) *image = std::span<const uint8_t>(static_cast<uint8_t*>(cubin), size);
      return completed;
    });
  }

  Status GetFunction(Module& module, std::string_view name, Function** out) override {
    return Guarded("GetFunction", [&]() -> Status {
      CudaModule& m = Mod(module);
      std::lock_guard<std::mutex> lock(m.functions_mu);
      auto it = m.functions.find(absl::string_view(name.data(), name.size()));
      if (it == m.functions.end()) {
        FERRY_RETURN_IF_ERROR(MakeCurrent(m.context));
        CUfunction handle = nullptr;
        const std::string key(name);
        CUresult result = api_->cuModuleGetFunction(&handle, m.handle, key.c_str());
        if (result == CUDA_ERROR_NOT_FOUND) {
          return Status::NotFound(absl::StrCat("module has no kernel named '", key, "'"));
        }
        FERRY_RETURN_IF_ERROR(api_->Check(result, FERRY_CUDA_EXPORT_NAME(cuModuleGetFunction)));
        it = m.functions.emplace(key, std::make_unique<CudaFunction>(m, handle)).first;
      }
      *out = it->second.get();
      return Status::Ok();
    });
  }

  Status GetGlobal(Module& module, std::string_view name, uint64_t* dptr,
                   uint64_t* bytes) override {
    return Guarded("GetGlobal", [&]() -> Status {
      CudaModule& m = Mod(module);
      FERRY_RETURN_IF_ERROR(MakeCurrent(m.context));
      const std::string key(name);
      CUdeviceptr p = 0;
      size_t size = 0;
      CUresult result = api_->cuModuleGetGlobal(&p, &size, m.handle, key.c_str());
      if (result == CUDA_ERROR_NOT_FOUND) {
        return Status::NotFound(absl::StrCat("module has no global named '", key, "'"));
      }
      FERRY_RETURN_IF_ERROR(api_->Check(result, FERRY_CUDA_EXPORT_NAME(cuModuleGetGlobal)));
      *dptr = p;
      *bytes = size;
      return Status::Ok();
    });
  }

  Status GetFunctionAttribute(Function& function, int attribute, int* value) override {
    return Guarded("GetFunctionAttribute", [&]() -> Status {
      CudaFunction& f = Fn(function);
      FERRY_RETURN_IF_ERROR(MakeCurrent(f.module.context));
      return FERRY_CU(*api_, cuFuncGetAttribute, value,
                      static_cast<CUfunction_attribute>(attribute), f.handle);
    });
  }

  Status SetFunctionAttribute(Function& function, int attribute, int value) override {
    return Guarded("SetFunctionAttribute", [&]() -> Status {
      CudaFunction& f = Fn(function);
      FERRY_RETURN_IF_ERROR(MakeCurrent(f.module.context));
      return FERRY_CU(*api_, cuFuncSetAttribute, f.handle,
                      static_cast<CUfunction_attribute>(attribute), value);
    });
  }

  Status SetFunctionCacheConfig(Function& function, int config) override {
    return Guarded("SetFunctionCacheConfig", [&]() -> Status {
      CudaFunction& f = Fn(function);
      FERRY_RETURN_IF_ERROR(MakeCurrent(f.module.context));
      return FERRY_CU(*api_, cuFuncSetCacheConfig, f.handle, static_cast<CUfunc_cache>(config));
    });
  }

  // --- libraries ------------------------------------------------------------
  // A library is the driver's own: cuLibraryLoadData needs no context, and
  // the driver loads it into a context when LoadLibraryModule asks for the
  // library's module there (cuLibraryGetModule).
  Status LoadLibrary(std::span<const uint8_t> image, std::unique_ptr<Library>* out,
                     ModuleDescription* description) override {
    return Guarded("LoadLibrary", [&]() -> Status {
      std::vector<uint8_t> storage;
      const void* data = nullptr;
      FERRY_RETURN_IF_ERROR(CheckModuleImage(image, &storage, &data));
      CUlibrary handle = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuLibraryLoadData, &handle, data, nullptr, nullptr, 0,
                                     nullptr, nullptr, 0));
      auto library = std::make_unique<CudaLibrary>(*api_, handle);
      ModuleDescription described;
      // On failure `library`'s destructor unloads the image again.
      FERRY_RETURN_IF_ERROR(DescribeLibrary(*library, &described));
      if (description != nullptr) *description = std::move(described);
      *out = std::move(library);
      return Status::Ok();
    });
  }

  Status LoadLibraryModule(Context& context, Library& library,
                           std::unique_ptr<Module>* out) override {
    return Guarded("LoadLibraryModule", [&]() -> Status {
      CudaContext& ctx = Ctx(context);
      FERRY_RETURN_IF_ERROR(MakeCurrent(ctx));
      CUmodule handle = nullptr;
      FERRY_RETURN_IF_ERROR(
          FERRY_CU(*api_, cuLibraryGetModule, &handle, static_cast<CudaLibrary&>(library).handle));
      *out = std::make_unique<CudaModule>(ctx, handle, /*owned=*/false);
      return Status::Ok();
    });
  }

  // --- occupancy: the driver's own answers, in the function's context -------
  Status OccupancyMaxActiveBlocks(Function& function, int block_size, uint64_t dynamic_smem_bytes,
                                  unsigned flags, int* blocks) override {
    return Guarded("OccupancyMaxActiveBlocks", [&]() -> Status {
      CudaFunction& f = Fn(function);
      FERRY_RETURN_IF_ERROR(MakeCurrent(f.module.context));
      return FERRY_CU(*api_, cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags, blocks, f.handle,
                      block_size, static_cast<size_t>(dynamic_smem_bytes), flags);
    });
  }

  Status OccupancyAvailableDynamicSmem(Function& function, int num_blocks, int block_size,
                                       uint64_t* bytes) override {
    return Guarded("OccupancyAvailableDynamicSmem", [&]() -> Status {
      CudaFunction& f = Fn(function);
      FERRY_RETURN_IF_ERROR(MakeCurrent(f.module.context));
      size_t available = 0;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuOccupancyAvailableDynamicSMemPerBlock, &available,
                                     f.handle, num_blocks, block_size));
      *bytes = available;
      return Status::Ok();
    });
  }

  Status OccupancyMaxPotentialClusterSize(Function& function, const LaunchConfig& config,
                                          int* cluster_size) override {
    return Guarded("OccupancyMaxPotentialClusterSize", [&]() -> Status {
      CudaFunction& f = Fn(function);
      FERRY_RETURN_IF_ERROR(MakeCurrent(f.module.context));
      LaunchAttributes attributes;
      CUlaunchConfig launch = DriverLaunchConfig(config, &attributes);
      return FERRY_CU(*api_, cuOccupancyMaxPotentialClusterSize, cluster_size, f.handle, &launch);
    });
  }

  Status OccupancyMaxActiveClusters(Function& function, const LaunchConfig& config,
                                    int* clusters) override {
    return Guarded("OccupancyMaxActiveClusters", [&]() -> Status {
      CudaFunction& f = Fn(function);
      FERRY_RETURN_IF_ERROR(MakeCurrent(f.module.context));
      LaunchAttributes attributes;
      CUlaunchConfig launch = DriverLaunchConfig(config, &attributes);
      return FERRY_CU(*api_, cuOccupancyMaxActiveClusters, clusters, f.handle, &launch);
    });
  }

  // --- peers ---------------------------------------------------------------
  Status CanAccessPeer(int device, int peer, int* can_access) override {
    return Guarded("CanAccessPeer", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuDeviceCanAccessPeer, "cuDeviceCanAccessPeer"));
      CUdevice a = 0, b = 0;
      FERRY_RETURN_IF_ERROR(DeviceHandle(device, &a));
      FERRY_RETURN_IF_ERROR(DeviceHandle(peer, &b));
      return FERRY_CU(*api_, cuDeviceCanAccessPeer, can_access, a, b);
    });
  }

  Status GetP2PAttribute(int attribute, int src_device, int dst_device, int* value) override {
    return Guarded("GetP2PAttribute", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(
          NeedEntryPoint(api_->cuDeviceGetP2PAttribute, "cuDeviceGetP2PAttribute"));
      CUdevice src = 0, dst = 0;
      FERRY_RETURN_IF_ERROR(DeviceHandle(src_device, &src));
      FERRY_RETURN_IF_ERROR(DeviceHandle(dst_device, &dst));
      return FERRY_CU(*api_, cuDeviceGetP2PAttribute, value,
                      static_cast<CUdevice_P2PAttribute>(attribute), src, dst);
    });
  }

  Status EnablePeerAccess(Context& ctx, Context& peer) override {
    return Guarded("EnablePeerAccess", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuCtxEnablePeerAccess, "cuCtxEnablePeerAccess"));
      FERRY_RETURN_IF_ERROR(MakeCurrent(Ctx(ctx)));
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuCtxEnablePeerAccess, Ctx(peer).handle, 0u));
      // Peer access reaches cuMemAlloc'ed memory only: parkable blocks need
      // cuMemSetAccess for the accessing device too.
      return GrantPeerAccess(Ctx(ctx), Ctx(peer));
    });
  }

  Status DisablePeerAccess(Context& ctx, Context& peer) override {
    return Guarded("DisablePeerAccess", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuCtxDisablePeerAccess, "cuCtxDisablePeerAccess"));
      FERRY_RETURN_IF_ERROR(MakeCurrent(Ctx(ctx)));
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuCtxDisablePeerAccess, Ctx(peer).handle));
      // Blocks made from now on no longer give `ctx`'s device access; those
      // that already do keep it (within the tenant's own memory).
      if (Parkable() && Ctx(ctx).device != Ctx(peer).device) {
        TenantState& memory = *Ctx(ctx).tenant;
        std::lock_guard<std::mutex> lock(memory.mu);
        auto grant = memory.peer_grants.find({Ctx(ctx).device, Ctx(peer).device});
        if (grant != memory.peer_grants.end()) memory.peer_grants.erase(grant);
      }
      return Status::Ok();
    });
  }

  Status CopyPeer(Stream& stream, uint64_t dst, Context& dst_ctx, uint64_t src, Context& src_ctx,
                  uint64_t bytes) override {
    return Guarded("CopyPeer", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuMemcpyPeerAsync, "cuMemcpyPeerAsync"));
      CudaStream& s = Str(stream);
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      return FERRY_CU(*api_, cuMemcpyPeerAsync, static_cast<CUdeviceptr>(dst), Ctx(dst_ctx).handle,
                      static_cast<CUdeviceptr>(src), Ctx(src_ctx).handle,
                      static_cast<size_t>(bytes), s.handle);
    });
  }

  // --- stream capture and graphs ---------------------------------------------
  // The driver captures in relaxed mode: ferryd's own threads (waiters, other
  // sessions) make calls the stricter modes forbid, and the session keeps the
  // program's capture rules itself.
  Status BeginCapture(Stream& stream, int mode) override {
    return Guarded("BeginCapture", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      (void)mode;
      CudaStream& s = Str(stream);
      if (!s.owned) {
        return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                            "the legacy default stream cannot be captured");
      }
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      FERRY_RETURN_IF_ERROR(
          FERRY_CU(*api_, cuStreamBeginCapture, s.handle, CU_STREAM_CAPTURE_MODE_RELAXED));
      SetCapturing(s, true);
      return Status::Ok();
    });
  }

  Status EndCapture(Stream& stream, std::unique_ptr<Graph>* out) override {
    return Guarded("EndCapture", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      CudaStream& s = Str(stream);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      CUgraph graph = nullptr;
      std::vector<CudaHostNode> host_nodes = std::move(s.captured_host_nodes);
      s.captured_host_nodes.clear();
      CudaGraph* target = std::exchange(s.capture_target, nullptr);
      SetCapturing(s, false);  // cuStreamEndCapture ends it, whatever it answers
      if (target != nullptr) {
        // The driver added the nodes to the target, whatever it answers.
        for (CudaHostNode& host : host_nodes) target->host_nodes.push_back(std::move(host));
        return FERRY_CU(*api_, cuStreamEndCapture, s.handle, &graph);
      }
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuStreamEndCapture, s.handle, &graph));
      auto made = std::make_unique<CudaGraph>(*api_, graph, &s.context);
      made->host_nodes = std::move(host_nodes);
      *out = std::move(made);
      return Status::Ok();
    });
  }

  Status BeginCaptureToGraph(Stream& stream, int mode, Graph& graph,
                             std::span<GraphNode* const> dependencies) override {
    return Guarded("BeginCaptureToGraph", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      FERRY_RETURN_IF_ERROR(
          NeedEntryPoint(api_->cuStreamBeginCaptureToGraph, "cuStreamBeginCaptureToGraph"));
      (void)mode;  // relaxed, as BeginCapture says
      CudaStream& s = Str(stream);
      if (!s.owned) {
        return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                            "the legacy default stream cannot be captured");
      }
      CudaGraph& g = static_cast<CudaGraph&>(graph);
      std::vector<CUgraphNode> deps;
      for (GraphNode* d : dependencies) deps.push_back(static_cast<CudaGraphNode*>(d)->handle);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuStreamBeginCaptureToGraph, s.handle, g.handle,
                                     deps.data(), nullptr, deps.size(),
                                     CU_STREAM_CAPTURE_MODE_RELAXED));
      s.capture_target = &g;
      SetCapturing(s, true);
      if (g.context == nullptr) g.context = &s.context;
      return Status::Ok();
    });
  }

  Status UpdateCaptureDependencies(Stream& stream, std::span<GraphNode* const> dependencies,
                                   bool set) override {
    return Guarded("UpdateCaptureDependencies", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuStreamUpdateCaptureDependencies,
                                           "cuStreamUpdateCaptureDependencies"));
      CudaStream& s = Str(stream);
      std::vector<CUgraphNode> deps;
      for (GraphNode* d : dependencies) deps.push_back(static_cast<CudaGraphNode*>(d)->handle);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      return FERRY_CU(
          *api_, cuStreamUpdateCaptureDependencies, s.handle, deps.data(), nullptr, deps.size(),
          set ? CU_STREAM_SET_CAPTURE_DEPENDENCIES : CU_STREAM_ADD_CAPTURE_DEPENDENCIES);
    });
  }

  Status CreateGraph(unsigned flags, std::unique_ptr<Graph>* out) override {
    return Guarded("CreateGraph", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      CUgraph graph = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphCreate, &graph, flags));
      *out = std::make_unique<CudaGraph>(*api_, graph, nullptr);
      return Status::Ok();
    });
  }

  Status AddGraphNode(Graph& graph, std::span<GraphNode* const> dependencies,
                      const GraphNodeSpec& spec, GraphNode** out) override {
    return Guarded("AddGraphNode", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      CudaGraph& g = static_cast<CudaGraph&>(graph);
      std::vector<CUgraphNode> deps;
      for (GraphNode* d : dependencies) deps.push_back(static_cast<CudaGraphNode*>(d)->handle);
      CudaContext* ctx = spec.ctx != nullptr ? &Ctx(*spec.ctx) : nullptr;
      if (ctx != nullptr) FERRY_RETURN_IF_ERROR(MakeCurrent(*ctx));
      CUgraphNode node = nullptr;
      switch (spec.kind) {
        case GraphNodeSpec::Kind::kEmpty:
          FERRY_RETURN_IF_ERROR(
              FERRY_CU(*api_, cuGraphAddEmptyNode, &node, g.handle, deps.data(), deps.size()));
          break;
        case GraphNodeSpec::Kind::kKernel: {
          KernelNodeParams k;
          FERRY_RETURN_IF_ERROR(k.Fill(spec));
          FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphAddKernelNode, &node, g.handle, deps.data(),
                                         deps.size(), &k.params));
          break;
        }
        case GraphNodeSpec::Kind::kMemset: {
          if (ctx == nullptr) return Status::InvalidArgument("a memset node needs a context");
          const CUDA_MEMSET_NODE_PARAMS p = MemsetNodeParams(spec);
          FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphAddMemsetNode, &node, g.handle, deps.data(),
                                         deps.size(), &p, ctx->handle));
          break;
        }
        case GraphNodeSpec::Kind::kCopy: {
          if (ctx == nullptr) return Status::InvalidArgument("a copy node needs a context");
          const CUDA_MEMCPY3D p = CopyNodeParams(spec);
          FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphAddMemcpyNode, &node, g.handle, deps.data(),
                                         deps.size(), &p, ctx->handle));
          break;
        }
        case GraphNodeSpec::Kind::kChild: {
          CudaGraph& child = static_cast<CudaGraph&>(*spec.child);
          // Its host nodes' calls would have to come from the child's own
          // launches, which there are none of.
          if (!child.host_nodes.empty()) {
            return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, "child graphs with host nodes");
          }
          FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphAddChildGraphNode, &node, g.handle,
                                         deps.data(), deps.size(), child.handle));
          break;
        }
        case GraphNodeSpec::Kind::kHost: {
          FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuGraphAddHostNode, "cuGraphAddHostNode"));
          CudaHostNode host{nullptr, cuda_internal::GraphHostTokens::Get().New(spec.host_function)};
          const CUDA_HOST_NODE_PARAMS p = HostNodeParams(*host.token);
          FERRY_RETURN_IF_ERROR(
              FERRY_CU(*api_, cuGraphAddHostNode, &node, g.handle, deps.data(), deps.size(), &p));
          host.node = node;
          g.host_nodes.push_back(std::move(host));
          break;
        }
      }
      auto added = std::make_unique<CudaGraphNode>(node);
      if (spec.kind == GraphNodeSpec::Kind::kKernel) {
        // Attributes refused: the node goes again, as if never added.
        if (Status status = SetKernelNodeAttributes(*added, spec.config); !status.ok()) {
          if (api_->cuGraphDestroyNode != nullptr) {
            FERRY_CU_QUIET(*api_, "removing a kernel node", cuGraphDestroyNode, node);
          }
          return status;
        }
      }
      if (ctx != nullptr) g.context = ctx;
      g.nodes.push_back(std::move(added));
      *out = g.nodes.back().get();
      return Status::Ok();
    });
  }

  Status SetExecNode(GraphExec& exec, GraphNode& node, const GraphNodeSpec& spec) override {
    return Guarded("SetExecNode", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      CudaContext* ctx = spec.ctx != nullptr ? &Ctx(*spec.ctx) : nullptr;
      if (ctx != nullptr) FERRY_RETURN_IF_ERROR(MakeCurrent(*ctx));
      const CUgraphExec e = static_cast<CudaGraphExec&>(exec).handle;
      const CUgraphNode n = static_cast<CudaGraphNode&>(node).handle;
      switch (spec.kind) {
        case GraphNodeSpec::Kind::kKernel: {
          KernelNodeParams k;
          FERRY_RETURN_IF_ERROR(k.Fill(spec));
          return FERRY_CU(*api_, cuGraphExecKernelNodeSetParams, e, n, &k.params);
        }
        case GraphNodeSpec::Kind::kMemset: {
          if (ctx == nullptr) return Status::InvalidArgument("a memset node needs a context");
          FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuGraphExecMemsetNodeSetParams,
                                               "cuGraphExecMemsetNodeSetParams"));
          const CUDA_MEMSET_NODE_PARAMS p = MemsetNodeParams(spec);
          return FERRY_CU(*api_, cuGraphExecMemsetNodeSetParams, e, n, &p, ctx->handle);
        }
        case GraphNodeSpec::Kind::kCopy: {
          if (ctx == nullptr) return Status::InvalidArgument("a copy node needs a context");
          FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuGraphExecMemcpyNodeSetParams,
                                               "cuGraphExecMemcpyNodeSetParams"));
          const CUDA_MEMCPY3D p = CopyNodeParams(spec);
          return FERRY_CU(*api_, cuGraphExecMemcpyNodeSetParams, e, n, &p, ctx->handle);
        }
        case GraphNodeSpec::Kind::kChild:
          FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuGraphExecChildGraphNodeSetParams,
                                               "cuGraphExecChildGraphNodeSetParams"));
          return FERRY_CU(*api_, cuGraphExecChildGraphNodeSetParams, e, n,
                          static_cast<CudaGraph&>(*spec.child).handle);
        case GraphNodeSpec::Kind::kHost: {
          FERRY_RETURN_IF_ERROR(
              NeedEntryPoint(api_->cuGraphExecHostNodeSetParams, "cuGraphExecHostNodeSetParams"));
          CudaHostNode* host = FindHostNode(static_cast<CudaGraphExec&>(exec).host_nodes, n);
          if (host == nullptr) return Status::InvalidArgument("not a host node of the graph");
          auto token = cuda_internal::GraphHostTokens::Get().New(spec.host_function);
          const CUDA_HOST_NODE_PARAMS p = HostNodeParams(*token);
          FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphExecHostNodeSetParams, e, n, &p));
          host->token = std::move(token);
          return Status::Ok();
        }
        case GraphNodeSpec::Kind::kEmpty:
          break;
      }
      return Status::InvalidArgument("an empty node has no parameters");
    });
  }

  Status SetExecNodeEnabled(GraphExec& exec, GraphNode& node, bool enabled) override {
    return Guarded("SetExecNodeEnabled", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      return FERRY_CU(*api_, cuGraphNodeSetEnabled, static_cast<CudaGraphExec&>(exec).handle,
                      static_cast<CudaGraphNode&>(node).handle, enabled ? 1u : 0u);
    });
  }

  // The driver checks the update as cuGraphExecUpdate does; ferry's result
  // info is not carried back (the session's checks come first).
  Status UpdateGraphExec(GraphExec& exec, Graph& graph) override {
    return Guarded("UpdateGraphExec", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      CudaGraph& g = static_cast<CudaGraph&>(graph);
      if (g.context != nullptr) FERRY_RETURN_IF_ERROR(MakeCurrent(*g.context));
      CUgraphExecUpdateResultInfo info{};
      CudaGraphExec& e = static_cast<CudaGraphExec&>(exec);
      if (g.host_nodes.size() != e.host_nodes.size()) {
        return Status::Cuda(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE,
                            "the graph has another number of host nodes");
      }
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphExecUpdate, e.handle, g.handle, &info));
      // The driver nodes now carry the graph's tokens; the executable
      // graph's node handles stay its own graph's.
      for (size_t i = 0; i < g.host_nodes.size(); ++i) {
        e.host_nodes[i].token = g.host_nodes[i].token;
      }
      return Status::Ok();
    });
  }

  Status CloneGraph(Graph& graph, std::unique_ptr<Graph>* out) override {
    return Guarded("CloneGraph", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      CudaGraph& g = static_cast<CudaGraph&>(graph);
      CUgraph clone = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphClone, &clone, g.handle));
      auto copy = std::make_unique<CudaGraph>(*api_, clone, g.context);
      // The copies carry the same tokens; their handles come with
      // FindGraphNodeInClone.
      for (const CudaHostNode& host : g.host_nodes) {
        copy->host_nodes.push_back({nullptr, host.token});
      }
      *out = std::move(copy);
      return Status::Ok();
    });
  }

  Status GraphNodeCount(Graph& graph, uint64_t* count) override {
    return Guarded("GraphNodeCount", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      size_t n = 0;
      FERRY_RETURN_IF_ERROR(
          FERRY_CU(*api_, cuGraphGetNodes, static_cast<CudaGraph&>(graph).handle, nullptr, &n));
      *count = n;
      return Status::Ok();
    });
  }

  Status InstantiateGraph(Graph& graph, uint64_t flags, std::unique_ptr<GraphExec>* out) override {
    return Guarded("InstantiateGraph", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      CudaGraph& g = static_cast<CudaGraph&>(graph);
      if (g.context != nullptr) FERRY_RETURN_IF_ERROR(MakeCurrent(*g.context));
      CUgraphExec exec = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphInstantiateWithFlags, &exec, g.handle,
                                     static_cast<unsigned long long>(flags)));
      auto made = std::make_unique<CudaGraphExec>(*api_, exec);
      made->host_nodes = g.host_nodes;
      *out = std::move(made);
      return Status::Ok();
    });
  }

  // graph host nodes: each host node's call waits in its token's slot
  // (GraphHostTokens) for the driver node; a stream callback after the
  // launch reports the calls whose nodes never ran (the launch failed).
  Status LaunchGraph(GraphExec& exec, Stream& stream,
                     std::span<const GraphHostCall> host_calls) override {
    return Guarded("LaunchGraph", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      CudaGraphExec& e = static_cast<CudaGraphExec&>(exec);
      if (host_calls.size() != e.host_nodes.size()) {
        return Status::InvalidArgument(
            "the executable graph has " + std::to_string(e.host_nodes.size()) +
            " host nodes; the launch brought " + std::to_string(host_calls.size()) + " host gates");
      }
      CudaStream& s = Str(stream);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      if (host_calls.empty()) {
        s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
        return FERRY_CU(*api_, cuGraphLaunch, e.handle, s.handle);
      }
      auto& tokens = cuda_internal::GraphHostTokens::Get();
      const uint64_t launch = tokens.NewLaunch();
      std::vector<uint64_t> queued;
      for (size_t i = 0; i < host_calls.size(); ++i) {
        tokens.Queue(*e.host_nodes[i].token, launch, host_calls[i]);
        queued.push_back(e.host_nodes[i].token->value());
      }
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      if (Status launched = FERRY_CU(*api_, cuGraphLaunch, e.handle, s.handle); !launched.ok()) {
        tokens.Finish(launch, queued, launched, /*report=*/false);
        return launched;
      }
      Status finished = EnqueueCallback(s, [launch, queued](CUresult result) {
        // The driver's callback thread: no driver calls (CuResultName).
        ReportHostNodesNotRun(launch, queued, result);
      });
      if (!finished.ok()) {
        FERRY_LOG(kWarning) << "a graph launch's host nodes that never run will not be reported: "
                            << finished.message();
      }
      return Status::Ok();
    });
  }

  // graph host nodes: a launch's calls still waiting once its stream got
  // past it belong to nodes that never ran.
  static void ReportHostNodesNotRun(uint64_t launch, const std::vector<uint64_t>& queued,
                                    CUresult result) {
    const Status status =
        result == CUDA_SUCCESS
            ? Status::Cuda(CUDA_ERROR_ILLEGAL_STATE,
                           "the graph launch ended before its host node ran")
            : Status::Cuda(result, absl::StrCat("graph launch failed: ", CuResultName(result)));
    cuda_internal::GraphHostTokens::Get().Finish(launch, queued, status, /*report=*/true);
  }

  Status UploadGraph(GraphExec& exec, Stream& stream) override {
    return Guarded("UploadGraph", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      CudaStream& s = Str(stream);
      s.progress->submitted.fetch_add(1, std::memory_order_acq_rel);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      return FERRY_CU(*api_, cuGraphUpload, static_cast<CudaGraphExec&>(exec).handle, s.handle);
    });
  }

  // --- graph node kinds: host nodes ------------------------------------------
  // The driver records a host node of the token's (cuLaunchHostFunc); the
  // origin keeps the token until EndCapture gives it to the graph.
  Status CaptureHostNode(Stream& stream, Stream& origin, uint64_t host_function) override {
    return Guarded("CaptureHostNode", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuLaunchHostFunc, "cuLaunchHostFunc"));
      CudaStream& s = Str(stream);
      FERRY_RETURN_IF_ERROR(MakeCurrent(s.context));
      CudaHostNode host{nullptr, cuda_internal::GraphHostTokens::Get().New(host_function)};
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuLaunchHostFunc, s.handle,
                                     &cuda_internal::GraphHostTokens::RunGraphHostNode,
                                     host.token->user_data()));
      Str(origin).captured_host_nodes.push_back(std::move(host));
      return Status::Ok();
    });
  }

  // The driver's own embedded graph, with its nodes in the driver's order.
  Status EmbeddedGraph(Graph& graph, GraphNode& node, std::shared_ptr<Graph>* out,
                       std::vector<GraphNode*>* nodes) override {
    return Guarded("EmbeddedGraph", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      FERRY_RETURN_IF_ERROR(
          NeedEntryPoint(api_->cuGraphChildGraphNodeGetGraph, "cuGraphChildGraphNodeGetGraph"));
      CUgraph embedded = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphChildGraphNodeGetGraph,
                                     static_cast<CudaGraphNode&>(node).handle, &embedded));
      auto wrapper =
          std::make_shared<CudaGraph>(*api_, embedded, static_cast<CudaGraph&>(graph).context,
                                      /*owned=*/false);
      size_t count = 0;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphGetNodes, embedded, nullptr, &count));
      std::vector<CUgraphNode> handles(count);
      if (count != 0) {
        FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphGetNodes, embedded, handles.data(), &count));
      }
      for (size_t i = 0; i < count; ++i) {
        wrapper->nodes.push_back(std::make_unique<CudaGraphNode>(handles[i]));
        nodes->push_back(wrapper->nodes.back().get());
      }
      *out = std::move(wrapper);
      return Status::Ok();
    });
  }

  Status GraphExecHostNodes(GraphExec& exec, uint32_t* count) override {
    *count = static_cast<uint32_t>(static_cast<CudaGraphExec&>(exec).host_nodes.size());
    return Status::Ok();
  }

  // --- explicit-graph editing ------------------------------------------------
  Status EditGraphEdges(Graph& graph, std::span<GraphNode* const> from,
                        std::span<GraphNode* const> to, bool remove) override {
    return Guarded("EditGraphEdges", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      if (from.size() != to.size()) {
        return Status::InvalidArgument("as many `from` as `to` nodes are needed");
      }
      std::vector<CUgraphNode> sources, targets;
      for (size_t i = 0; i < from.size(); ++i) {
        sources.push_back(static_cast<CudaGraphNode*>(from[i])->handle);
        targets.push_back(static_cast<CudaGraphNode*>(to[i])->handle);
      }
      const CUgraph g = static_cast<CudaGraph&>(graph).handle;
      if (remove) {
        FERRY_RETURN_IF_ERROR(
            NeedEntryPoint(api_->cuGraphRemoveDependencies, "cuGraphRemoveDependencies"));
        return FERRY_CU(*api_, cuGraphRemoveDependencies, g, sources.data(), targets.data(),
                        nullptr, sources.size());
      }
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuGraphAddDependencies, "cuGraphAddDependencies"));
      return FERRY_CU(*api_, cuGraphAddDependencies, g, sources.data(), targets.data(), nullptr,
                      sources.size());
    });
  }

  Status DestroyGraphNode(Graph& graph, GraphNode& node) override {
    return Guarded("DestroyGraphNode", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuGraphDestroyNode, "cuGraphDestroyNode"));
      CudaGraph& g = static_cast<CudaGraph&>(graph);
      const CUgraphNode n = static_cast<CudaGraphNode&>(node).handle;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphDestroyNode, n));
      std::erase_if(g.host_nodes, [n](const CudaHostNode& host) { return host.node == n; });
      std::erase_if(g.nodes, [&node](const auto& n) { return n.get() == &node; });
      return Status::Ok();
    });
  }

  Status FindGraphNodeInClone(Graph& original, GraphNode& node, Graph& clone,
                              GraphNode** out) override {
    return Guarded("FindGraphNodeInClone", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuGraphNodeFindInClone, "cuGraphNodeFindInClone"));
      CudaGraph& c = static_cast<CudaGraph&>(clone);
      CUgraphNode copy = nullptr;
      const CUgraphNode n = static_cast<CudaGraphNode&>(node).handle;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphNodeFindInClone, &copy, n, c.handle));
      // graph host nodes: the clone's entries are the original's, in order.
      const auto& originals = static_cast<CudaGraph&>(original).host_nodes;
      for (size_t i = 0; i < originals.size() && i < c.host_nodes.size(); ++i) {
        if (originals[i].node == n) c.host_nodes[i].node = copy;
      }
      c.nodes.push_back(std::make_unique<CudaGraphNode>(copy));
      *out = c.nodes.back().get();
      return Status::Ok();
    });
  }

  Status SetGraphNode(Graph& graph, GraphNode& node, const GraphNodeSpec& spec) override {
    return Guarded("SetGraphNode", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      CudaContext* ctx = spec.ctx != nullptr ? &Ctx(*spec.ctx) : nullptr;
      if (ctx != nullptr) FERRY_RETURN_IF_ERROR(MakeCurrent(*ctx));
      const CUgraphNode n = static_cast<CudaGraphNode&>(node).handle;
      switch (spec.kind) {
        case GraphNodeSpec::Kind::kKernel: {
          FERRY_RETURN_IF_ERROR(
              NeedEntryPoint(api_->cuGraphKernelNodeSetParams, "cuGraphKernelNodeSetParams"));
          KernelNodeParams k;
          FERRY_RETURN_IF_ERROR(k.Fill(spec));
          FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphKernelNodeSetParams, n, &k.params));
          return SetKernelNodeAttributes(static_cast<CudaGraphNode&>(node), spec.config);
        }
        case GraphNodeSpec::Kind::kMemset: {
          FERRY_RETURN_IF_ERROR(
              NeedEntryPoint(api_->cuGraphMemsetNodeSetParams, "cuGraphMemsetNodeSetParams"));
          const CUDA_MEMSET_NODE_PARAMS p = MemsetNodeParams(spec);
          return FERRY_CU(*api_, cuGraphMemsetNodeSetParams, n, &p);
        }
        case GraphNodeSpec::Kind::kCopy: {
          FERRY_RETURN_IF_ERROR(
              NeedEntryPoint(api_->cuGraphMemcpyNodeSetParams, "cuGraphMemcpyNodeSetParams"));
          const CUDA_MEMCPY3D p = CopyNodeParams(spec);
          return FERRY_CU(*api_, cuGraphMemcpyNodeSetParams, n, &p);
        }
        case GraphNodeSpec::Kind::kHost: {
          FERRY_RETURN_IF_ERROR(
              NeedEntryPoint(api_->cuGraphHostNodeSetParams, "cuGraphHostNodeSetParams"));
          CudaHostNode* host = FindHostNode(static_cast<CudaGraph&>(graph).host_nodes, n);
          if (host == nullptr) return Status::InvalidArgument("not a host node of the graph");
          auto token = cuda_internal::GraphHostTokens::Get().New(spec.host_function);
          const CUDA_HOST_NODE_PARAMS p = HostNodeParams(*token);
          FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphHostNodeSetParams, n, &p));
          host->token = std::move(token);
          return Status::Ok();
        }
        case GraphNodeSpec::Kind::kEmpty:
        case GraphNodeSpec::Kind::kChild:
          break;
      }
      return Status::InvalidArgument("the node's parameters cannot be changed in its graph");
    });
  }

  // --- graph node kinds: memory allocation and free nodes ---------------------
  // The driver's own nodes: pinned memory of the device, accessible to it.
  Status AddGraphMemAllocNode(Graph& graph, std::span<GraphNode* const> dependencies, Context& ctx,
                              int device, uint64_t bytes, GraphNode** out,
                              uint64_t* dptr) override {
    return Guarded("AddGraphMemAllocNode", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuGraphAddMemAllocNode, "cuGraphAddMemAllocNode"));
      CudaGraph& g = static_cast<CudaGraph&>(graph);
      CudaContext& c = Ctx(ctx);
      FERRY_RETURN_IF_ERROR(MakeCurrent(c));
      CUdevice device_handle = 0;
      FERRY_RETURN_IF_ERROR(DeviceHandle(device, &device_handle));
      std::vector<CUgraphNode> deps;
      for (GraphNode* d : dependencies) deps.push_back(static_cast<CudaGraphNode*>(d)->handle);
      CUDA_MEM_ALLOC_NODE_PARAMS params;
      std::memset(&params, 0, sizeof(params));
      params.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
      params.poolProps.handleTypes = CU_MEM_HANDLE_TYPE_NONE;
      params.poolProps.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
      params.poolProps.location.id = device_handle;
      params.bytesize = static_cast<size_t>(bytes);
      CUgraphNode node = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphAddMemAllocNode, &node, g.handle, deps.data(),
                                     deps.size(), &params));
      g.context = &c;
      g.memory_device = device;
      g.nodes.push_back(std::make_unique<CudaGraphNode>(node));
      *out = g.nodes.back().get();
      *dptr = static_cast<uint64_t>(params.dptr);
      return Status::Ok();
    });
  }

  Status AddGraphMemFreeNode(Graph& graph, std::span<GraphNode* const> dependencies, uint64_t dptr,
                             GraphNode** out) override {
    return Guarded("AddGraphMemFreeNode", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuGraphAddMemFreeNode, "cuGraphAddMemFreeNode"));
      CudaGraph& g = static_cast<CudaGraph&>(graph);
      if (g.context != nullptr) FERRY_RETURN_IF_ERROR(MakeCurrent(*g.context));
      std::vector<CUgraphNode> deps;
      for (GraphNode* d : dependencies) deps.push_back(static_cast<CudaGraphNode*>(d)->handle);
      CUgraphNode node = nullptr;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphAddMemFreeNode, &node, g.handle, deps.data(),
                                     deps.size(), static_cast<CUdeviceptr>(dptr)));
      g.nodes.push_back(std::make_unique<CudaGraphNode>(node));
      *out = g.nodes.back().get();
      return Status::Ok();
    });
  }

  // The driver instantiated the allocation nodes with the graph and orders
  // their release itself (the default tenant).
  Status CommitGraphMemory(GraphExec& exec, Graph& graph, Tenant& tenant) override {
    (void)tenant;
    return Guarded("CommitGraphMemory", [&]() -> Status {
      CudaGraph& g = static_cast<CudaGraph&>(graph);
      CudaGraphExec& x = static_cast<CudaGraphExec&>(exec);
      if (g.memory_device < 0) return Status::Ok();
      CUdevice device_handle = 0;
      FERRY_RETURN_IF_ERROR(DeviceHandle(g.memory_device, &device_handle));
      x.context = g.context;
      x.trim_device = device_handle;
      return Status::Ok();
    });
  }

  // cuMemFree, which cuda.h allows for a graph allocation no graph frees,
  // waits for the work that may still use it (MemFree).
  Status FreeGraphAllocations(GraphExec& exec, std::span<const uint64_t> unfreed) override {
    return Guarded("FreeGraphAllocations", [&]() -> Status {
      CudaGraphExec& x = static_cast<CudaGraphExec&>(exec);
      if (unfreed.empty() || x.context == nullptr) return Status::Ok();
      FERRY_RETURN_IF_ERROR(MakeCurrent(*x.context));
      Status first = Status::Ok();
      for (uint64_t dptr : unfreed) {
        Status status = FERRY_CU(*api_, cuMemFree, static_cast<CUdeviceptr>(dptr));
        if (first.ok()) first = std::move(status);
      }
      return first;
    });
  }

  // --- graph node kinds: event record and wait nodes ---------------------------
  Status AddGraphEventNode(Graph& graph, std::span<GraphNode* const> dependencies, Event& event,
                           bool wait, GraphNode** out) override {
    return Guarded("AddGraphEventNode", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedGraphs());
      FERRY_RETURN_IF_ERROR(NeedEventNodes());
      CudaGraph& g = static_cast<CudaGraph&>(graph);
      CudaEvent& e = Ev(event);
      FERRY_RETURN_IF_ERROR(MakeCurrent(e.context));
      std::vector<CUgraphNode> deps;
      for (GraphNode* d : dependencies) deps.push_back(static_cast<CudaGraphNode*>(d)->handle);
      CUgraphNode node = nullptr;
      FERRY_RETURN_IF_ERROR(wait ? FERRY_CU(*api_, cuGraphAddEventWaitNode, &node, g.handle,
                                            deps.data(), deps.size(), e.handle)
                                 : FERRY_CU(*api_, cuGraphAddEventRecordNode, &node, g.handle,
                                            deps.data(), deps.size(), e.handle));
      g.context = &e.context;
      g.nodes.push_back(std::make_unique<CudaGraphNode>(node));
      *out = g.nodes.back().get();
      return Status::Ok();
    });
  }

  Status SetGraphEventNode(Graph& graph, GraphNode& node, Event& event, bool wait) override {
    return Guarded("SetGraphEventNode", [&]() -> Status {
      (void)graph;
      FERRY_RETURN_IF_ERROR(NeedEventNodes());
      const CUgraphNode n = static_cast<CudaGraphNode&>(node).handle;
      return wait ? FERRY_CU(*api_, cuGraphEventWaitNodeSetEvent, n, Ev(event).handle)
                  : FERRY_CU(*api_, cuGraphEventRecordNodeSetEvent, n, Ev(event).handle);
    });
  }

  Status SetExecEventNode(GraphExec& exec, GraphNode& node, Event& event, bool wait) override {
    return Guarded("SetExecEventNode", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEventNodes());
      const CUgraphExec x = static_cast<CudaGraphExec&>(exec).handle;
      const CUgraphNode n = static_cast<CudaGraphNode&>(node).handle;
      return wait ? FERRY_CU(*api_, cuGraphExecEventWaitNodeSetEvent, x, n, Ev(event).handle)
                  : FERRY_CU(*api_, cuGraphExecEventRecordNodeSetEvent, x, n, Ev(event).handle);
    });
  }

  Status NeedEventNodes() const {
    if (api_->cuGraphAddEventRecordNode == nullptr || api_->cuGraphAddEventWaitNode == nullptr ||
        api_->cuGraphEventRecordNodeSetEvent == nullptr ||
        api_->cuGraphEventWaitNodeSetEvent == nullptr ||
        api_->cuGraphExecEventRecordNodeSetEvent == nullptr ||
        api_->cuGraphExecEventWaitNodeSetEvent == nullptr) {
      return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, "the driver has no graph event nodes");
    }
    return Status::Ok();
  }

  Status TrimGraphMemory(int device) override {
    return Guarded("TrimGraphMemory", [&]() -> Status {
      FERRY_RETURN_IF_ERROR(NeedEntryPoint(api_->cuDeviceGraphMemTrim, "cuDeviceGraphMemTrim"));
      CUdevice device_handle = 0;
      FERRY_RETURN_IF_ERROR(DeviceHandle(device, &device_handle));
      return FERRY_CU(*api_, cuDeviceGraphMemTrim, device_handle);
    });
  }

 private:
  // --- parkable allocations: mechanics ------------------------------------------
  // Where a small allocation starts in its chunk: 512-byte aligned, as
  // cuMemAlloc's addresses are in practice (the guide promises 256), since
  // a texture over linear memory needs the device's texture alignment (512
  // on current GPUs); and the pitch MemAllocPitch's rows get.
  static constexpr uint64_t kAllocationAlignment = 512;
  static constexpr uint64_t kPitchAlignment = 512;

  bool Parkable() const { return !granularity_.empty(); }

  static uint64_t RoundUpTo(uint64_t value, uint64_t unit) {
    const uint64_t rest = value % unit;
    if (rest == 0) return value;
    if (value > std::numeric_limits<uint64_t>::max() - (unit - rest)) return 0;  // overflow
    return value + (unit - rest);
  }

  // Each device's minimum granularity, or none (MemAlloc then uses
  // cuMemAlloc) when the driver lacks a virtual memory call, a device lacks
  // virtual memory management, or the driver will not say the granularity.
  std::vector<uint64_t> ParkableGranularities() const {
    const bool has_calls = api_->cuMemGetAllocationGranularity != nullptr &&
                           api_->cuMemCreate != nullptr && api_->cuMemRelease != nullptr &&
                           api_->cuMemAddressReserve != nullptr &&
                           api_->cuMemAddressFree != nullptr && api_->cuMemMap != nullptr &&
                           api_->cuMemUnmap != nullptr && api_->cuMemSetAccess != nullptr;
    if (!has_calls) {
      FERRY_LOG(kInfo) << "cuda backend: the driver has no virtual memory management; "
                          "allocations are cuMemAlloc's and cannot be parked";
      return {};
    }
    std::vector<uint64_t> granularity;
    for (size_t device = 0; device < devices_.size(); ++device) {
      const std::vector<int>& attributes = devices_[device].attributes;
      if (attributes.size() <= CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED ||
          attributes[CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED] == 0) {
        FERRY_LOG(kInfo) << "cuda backend: device " << device
                         << " has no virtual memory management; allocations are cuMemAlloc's "
                            "and cannot be parked";
        return {};
      }
      CUmemAllocationProp props;
      size_t unit = 0;
      if (!PinnedDeviceProperties(static_cast<int>(device), &props).ok() ||
          api_->cuMemGetAllocationGranularity(&unit, &props, CU_MEM_ALLOC_GRANULARITY_MINIMUM) !=
              CUDA_SUCCESS ||
          unit == 0 || (unit & (unit - 1)) != 0) {
        FERRY_LOG(kInfo) << "cuda backend: no allocation granularity for device " << device
                         << "; allocations are cuMemAlloc's and cannot be parked";
        return {};
      }
      granularity.push_back(unit);
    }
    return granularity;
  }

  // MemAlloc with virtual memory management: a block of its own for `bytes`
  // of at least the granularity, else room in a chunk of `ctx`.
  Status AllocateParkable(CudaContext& ctx, uint64_t bytes, uint64_t* dptr) {
    const uint64_t granularity = granularity_[static_cast<size_t>(ctx.device)];
    TenantState& memory = *ctx.tenant;
    std::lock_guard<std::mutex> lock(memory.mu);
    if (bytes >= granularity) {
      const uint64_t rounded = RoundUpTo(bytes, granularity);
      if (rounded == 0) return Status::Cuda(CUDA_ERROR_OUT_OF_MEMORY, "MemAlloc: size overflows");
      VmmBlock* block = nullptr;
      FERRY_RETURN_IF_ERROR(NewBlock(memory, ctx, rounded, &block));
      memory.allocations[block->address] =
          VmmAllocation{bytes, rounded, block->address, ctx.device};
      *dptr = block->address;
      return Status::Ok();
    }
    const uint64_t footprint = RoundUpTo(std::max<uint64_t>(bytes, 1), kAllocationAlignment);
    VmmBlock* chunk = nullptr;
    uint64_t offset = 0;
    for (auto& [address, block] : memory.blocks) {
      if (!block.chunk || block.owner != &ctx) continue;
      for (const auto& [start, size] : block.free_ranges) {
        if (size >= footprint) {
          chunk = &block;
          offset = start;
          break;
        }
      }
      if (chunk != nullptr) break;
    }
    if (chunk == nullptr) {
      FERRY_RETURN_IF_ERROR(NewBlock(memory, ctx, granularity, &chunk));
      chunk->chunk = true;
      chunk->free_ranges[0] = granularity;
      offset = 0;
    }
    const uint64_t left = chunk->free_ranges[offset] - footprint;
    chunk->free_ranges.erase(offset);
    if (left > 0) chunk->free_ranges[offset + footprint] = left;
    ++chunk->users;
    *dptr = chunk->address + offset;
    memory.allocations[*dptr] = VmmAllocation{bytes, footprint, chunk->address, ctx.device};
    return Status::Ok();
  }

  // MemFree of a parkable allocation (`*found`: it was one). Like cuMemFree,
  // waits for the work queued on the tenant's contexts first: physical memory
  // must not go, or a chunk's bytes be handed out again, under running work.
  Status FreeParkable(CudaContext& ctx, uint64_t dptr, bool* found) {
    TenantState& memory = *ctx.tenant;
    std::lock_guard<std::mutex> lock(memory.mu);
    auto it = memory.allocations.find(dptr);
    *found = it != memory.allocations.end();
    if (!*found) return Status::Ok();
    memory.deferred_frees.emplace_back(dptr, it->second);
    memory.allocations.erase(it);
    for (CudaContext* member : memory.contexts) {
      // cuCtxSynchronize would fail and end the capture: later (above).
      if (member->capturing_streams.load(std::memory_order_acquire) > 0) return Status::Ok();
    }
    Status synced = Status::Ok();
    for (CudaContext* member : memory.contexts) {
      Status status = MakeCurrent(*member);
      if (status.ok()) status = FERRY_CU(*api_, cuCtxSynchronize);
      if (!status.ok() && synced.ok()) synced = status;
    }
    ReleaseDeferredFrees(memory);
    return synced;
  }

  // Releases the memory of memory.deferred_frees (memory.mu held; the work
  // that may use it has finished): a chunk's range becomes free, joined with
  // its neighbours; a block with nothing left in it goes.
  void ReleaseDeferredFrees(TenantState& memory) {
    for (const auto& [dptr, allocation] : memory.deferred_frees) {
      VmmBlock& block = memory.blocks.at(allocation.block);
      if (block.chunk && --block.users > 0) {
        uint64_t start = dptr - block.address, size = allocation.footprint;
        auto next = block.free_ranges.lower_bound(start);
        if (next != block.free_ranges.end() && next->first == start + size) {
          size += next->second;
          next = block.free_ranges.erase(next);
        }
        if (next != block.free_ranges.begin()) {
          auto before = std::prev(next);
          if (before->first + before->second == start) {
            start = before->first;
            size += before->second;
            block.free_ranges.erase(before);
          }
        }
        block.free_ranges[start] = size;
        continue;
      }
      ReleaseBlock(block, "freeing memory");
      memory.blocks.erase(allocation.block);
    }
    memory.deferred_frees.clear();
  }

  // A new block of `bytes` (a granularity multiple) on `ctx`'s device,
  // mapped, with the access the tenant's peer grants give (memory.mu held).
  Status NewBlock(TenantState& memory, CudaContext& ctx, uint64_t bytes, VmmBlock** out) {
    CUdeviceptr address = 0;
    FERRY_RETURN_IF_ERROR(
        FERRY_CU(*api_, cuMemAddressReserve, &address, static_cast<size_t>(bytes), 0, 0, 0));
    VmmBlock block;
    block.address = address;
    block.bytes = bytes;
    block.device = ctx.device;
    block.owner = &ctx;
    block.access.push_back(ctx.device);
    for (const auto& [accessor, owner_device] : memory.peer_grants) {
      if (owner_device == ctx.device &&
          std::find(block.access.begin(), block.access.end(), accessor) == block.access.end()) {
        block.access.push_back(accessor);
      }
    }
    Status mapped = MapBlock(block);
    if (!mapped.ok()) {
      FERRY_CU_QUIET(*api_, "undoing an allocation", cuMemAddressFree, address,
                     static_cast<size_t>(bytes));
      return mapped;
    }
    auto [it, inserted] = memory.blocks.emplace(block.address, std::move(block));
    *out = &it->second;
    return Status::Ok();
  }

  // New physical memory mapped over all of `block`, with its access. The
  // handle is released at once: the mapping holds the memory, and unmapping
  // frees it. On failure nothing is mapped.
  Status MapBlock(VmmBlock& block) {
    CUmemAllocationProp props;
    FERRY_RETURN_IF_ERROR(PinnedDeviceProperties(block.device, &props));
    CUmemGenericAllocationHandle handle = 0;
    FERRY_RETURN_IF_ERROR(
        FERRY_CU(*api_, cuMemCreate, &handle, static_cast<size_t>(block.bytes), &props, 0));
    const auto address = static_cast<CUdeviceptr>(block.address);
    const auto bytes = static_cast<size_t>(block.bytes);
    Status status = FERRY_CU(*api_, cuMemMap, address, bytes, 0, handle, 0);
    FERRY_CU_QUIET(*api_, "releasing mapped physical memory", cuMemRelease, handle);
    if (!status.ok()) return status;
    std::vector<CUmemAccessDesc> descs;
    for (int device : block.access) {
      CUmemAccessDesc desc;
      std::memset(&desc, 0, sizeof(desc));
      desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
      desc.location.id = device_handles_[static_cast<size_t>(device)];
      desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
      descs.push_back(desc);
    }
    status = FERRY_CU(*api_, cuMemSetAccess, address, bytes, descs.data(), descs.size());
    if (!status.ok()) {
      FERRY_CU_QUIET(*api_, "undoing a mapping", cuMemUnmap, address, bytes);
      return status;
    }
    block.mapped = true;
    return Status::Ok();
  }

  // Gives back everything `block` holds: its physical memory or its parked
  // copy, then its addresses. Never throws.
  void ReleaseBlock(VmmBlock& block, const char* what) noexcept {
    const auto address = static_cast<CUdeviceptr>(block.address);
    const auto bytes = static_cast<size_t>(block.bytes);
    if (block.mapped) FERRY_CU_QUIET(*api_, what, cuMemUnmap, address, bytes);
    block.mapped = false;
    FreeParkedCopy(block);
    FERRY_CU_QUIET(*api_, what, cuMemAddressFree, address, bytes);
  }

  // Copies mapped `block` into new host memory (block.parked), synchronously:
  // the tenant is idle (ParkTenantMemory's contract).
  Status CopyOut(VmmBlock& block) {
    FERRY_RETURN_IF_ERROR(MakeCurrent(*block.owner));
    void* copy = nullptr;
    bool pinned =
        api_->cuMemHostAlloc(&copy, static_cast<size_t>(block.bytes), 0) == CUDA_SUCCESS &&
        copy != nullptr;
    if (!pinned) {
      copy = std::malloc(static_cast<size_t>(block.bytes));
      if (copy == nullptr) {
        return Status::OutOfMemory(absl::StrCat("host memory exhausted parking ", block.bytes,
                                                " bytes of device ", block.device));
      }
    }
    block.parked = copy;
    block.parked_pinned = pinned;
    Status status =
        FERRY_CU(*api_, cuMemcpyDtoHAsync, copy, static_cast<CUdeviceptr>(block.address),
                 static_cast<size_t>(block.bytes), CU_STREAM_LEGACY);
    if (status.ok()) status = FERRY_CU(*api_, cuStreamSynchronize, CU_STREAM_LEGACY);
    if (!status.ok()) FreeParkedCopy(block);
    return status;
  }

  // Copies block.parked back into mapped `block`, synchronously.
  Status CopyIn(VmmBlock& block) {
    FERRY_RETURN_IF_ERROR(MakeCurrent(*block.owner));
    FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuMemcpyHtoDAsync,
                                   static_cast<CUdeviceptr>(block.address), block.parked,
                                   static_cast<size_t>(block.bytes), CU_STREAM_LEGACY));
    return FERRY_CU(*api_, cuStreamSynchronize, CU_STREAM_LEGACY);
  }

  void FreeParkedCopy(VmmBlock& block) noexcept {
    if (block.parked == nullptr) return;
    if (block.parked_pinned) {
      FERRY_CU_QUIET(*api_, "freeing a parked copy", cuMemFreeHost, block.parked);
    } else {
      std::free(block.parked);
    }
    block.parked = nullptr;
    block.parked_pinned = false;
  }

  // " (N of M bytes free)" on `block`'s device, or nothing if unknown.
  std::string FreeBytesText(const VmmBlock& block) {
    size_t free_now = 0, total = 0;
    if (!MakeCurrent(*block.owner).ok() || api_->cuMemGetInfo(&free_now, &total) != CUDA_SUCCESS) {
      return "";
    }
    return absl::StrCat(" (", free_now, " of ", total, " bytes free)");
  }

  // After EnablePeerAccess(ctx, peer): `ctx`'s device may touch the tenant's
  // blocks on `peer`'s device, those there now (mapped ones at once, parked
  // ones when unparked) and those made later.
  Status GrantPeerAccess(CudaContext& ctx, CudaContext& peer) {
    if (!Parkable() || ctx.device == peer.device) return Status::Ok();
    TenantState& memory = *ctx.tenant;
    std::lock_guard<std::mutex> lock(memory.mu);
    memory.peer_grants.emplace(ctx.device, peer.device);
    CUmemAccessDesc desc;
    std::memset(&desc, 0, sizeof(desc));
    desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    desc.location.id = device_handles_[static_cast<size_t>(ctx.device)];
    desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    for (auto& [address, block] : memory.blocks) {
      if (block.device != peer.device ||
          std::find(block.access.begin(), block.access.end(), ctx.device) != block.access.end()) {
        continue;
      }
      if (block.mapped) {
        FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuMemSetAccess, static_cast<CUdeviceptr>(address),
                                       static_cast<size_t>(block.bytes), &desc, 1));
      }
      block.access.push_back(ctx.device);
    }
    return Status::Ok();
  }

  // NOT_SUPPORTED, naming `name`, when the driver lacks an optional entry
  // point.
  // One side of a CUDA_MEMCPY3D (CUDA arrays, textures and surfaces).
  static void DescribeCopySide(bool is_host, void* host, uint64_t device, uint64_t pitch,
                               uint64_t slice_rows, Array* array, uint64_t x, uint64_t y,
                               uint64_t z, CUmemorytype* type, const void** host_out,
                               CUdeviceptr* device_out, CUarray* array_out, size_t* pitch_out,
                               size_t* height_out, size_t* x_out, size_t* y_out, size_t* z_out) {
    if (is_host) {
      *type = CU_MEMORYTYPE_HOST;
      *host_out = host;
    } else if (array != nullptr) {
      *type = CU_MEMORYTYPE_ARRAY;
      *array_out = static_cast<CudaArray&>(*array).handle;
      *x_out = static_cast<size_t>(x);
      *y_out = static_cast<size_t>(y);
      *z_out = static_cast<size_t>(z);
      return;
    } else {
      *type = CU_MEMORYTYPE_DEVICE;
      *device_out = static_cast<CUdeviceptr>(device);
    }
    *pitch_out = static_cast<size_t>(pitch);
    *height_out = static_cast<size_t>(slice_rows);
  }
  static void DescribeCopySide(bool is_host, void* host, uint64_t device, uint64_t pitch,
                               uint64_t slice_rows, Array* array, uint64_t x, uint64_t y,
                               uint64_t z, CUmemorytype* type, void** host_out,
                               CUdeviceptr* device_out, CUarray* array_out, size_t* pitch_out,
                               size_t* height_out, size_t* x_out, size_t* y_out, size_t* z_out) {
    const void* out = nullptr;
    DescribeCopySide(is_host, host, device, pitch, slice_rows, array, x, y, z, type, &out,
                     device_out, array_out, pitch_out, height_out, x_out, y_out, z_out);
    *host_out = const_cast<void*>(out);
  }
  static CUDA_ARRAY3D_DESCRIPTOR DriverDescriptor(const ArrayDescriptor& d) {
    CUDA_ARRAY3D_DESCRIPTOR out;
    std::memset(&out, 0, sizeof(out));
    out.Width = static_cast<size_t>(d.width);
    out.Height = static_cast<size_t>(d.height);
    out.Depth = static_cast<size_t>(d.depth);
    out.Format = static_cast<CUarray_format>(d.format);
    out.NumChannels = d.channels;
    out.Flags = d.flags;
    return out;
  }
  static CUDA_RESOURCE_DESC DriverResource(const TextureResource& r) {
    CUDA_RESOURCE_DESC out;
    std::memset(&out, 0, sizeof(out));
    switch (r.kind) {
      case TextureResource::Kind::kArray:
        out.resType = CU_RESOURCE_TYPE_ARRAY;
        out.res.array.hArray = static_cast<CudaArray&>(*r.array).handle;
        break;
      case TextureResource::Kind::kMipmappedArray:
        out.resType = CU_RESOURCE_TYPE_MIPMAPPED_ARRAY;
        out.res.mipmap.hMipmappedArray = static_cast<CudaMipmappedArray&>(*r.mipmapped).handle;
        break;
      case TextureResource::Kind::kLinear:
        out.resType = CU_RESOURCE_TYPE_LINEAR;
        out.res.linear.devPtr = static_cast<CUdeviceptr>(r.dev_ptr);
        out.res.linear.format = static_cast<CUarray_format>(r.format);
        out.res.linear.numChannels = r.channels;
        out.res.linear.sizeInBytes = static_cast<size_t>(r.size_bytes);
        break;
      case TextureResource::Kind::kPitch2D:
        out.resType = CU_RESOURCE_TYPE_PITCH2D;
        out.res.pitch2D.devPtr = static_cast<CUdeviceptr>(r.dev_ptr);
        out.res.pitch2D.format = static_cast<CUarray_format>(r.format);
        out.res.pitch2D.numChannels = r.channels;
        out.res.pitch2D.width = static_cast<size_t>(r.width);
        out.res.pitch2D.height = static_cast<size_t>(r.height);
        out.res.pitch2D.pitchInBytes = static_cast<size_t>(r.pitch_bytes);
        break;
    }
    return out;
  }

  template <typename Fn>
  static Status NeedEntryPoint(Fn* fn, const char* name) {
    if (fn != nullptr) return Status::Ok();
    return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, absl::StrCat("the driver has no ", name));
  }
  Status DeviceHandle(int device, CUdevice* out) const {
    if (device < 0 || static_cast<size_t>(device) >= device_handles_.size()) {
      return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, absl::StrCat("no device ", device));
    }
    *out = device_handles_[device];
    return Status::Ok();
  }

  // JIT linking: NOT_SUPPORTED where the driver lacks it.
  Status NeedLinker() const {
    if (api_->HasLinker()) return Status::Ok();
    return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, "the driver has no JIT linker");
  }
  // `options` as the driver's arrays. With `link`, its log buffers take the
  // place of the log buffer options' values (the program's pointers never
  // reach here).
  static void ToDriverOptions(const std::vector<JitOption>& options, CudaLink* link,
                              std::vector<CUjit_option>* ids, std::vector<void*>* values) {
    for (const JitOption& o : options) {
      ids->push_back(static_cast<CUjit_option>(o.option));
      void* value = nullptr;
      if (link != nullptr && o.option == CU_JIT_INFO_LOG_BUFFER) {
        value = link->info_log.data();
      } else if (link != nullptr && o.option == CU_JIT_ERROR_LOG_BUFFER) {
        value = link->error_log.data();
      } else {
        std::memcpy(&value, &o.value, sizeof(value));
      }
      values->push_back(value);
    }
  }
  // The slots after a driver call, with the log buffers' pointers left out
  // and the global symbol table's options dropped (they follow the
  // program's own, so the rest keep the program's order).
  static std::vector<JitOption> FromDriverOptions(const std::vector<CUjit_option>& ids,
                                                  const std::vector<void*>& values) {
    std::vector<JitOption> out;
    for (size_t i = 0; i < ids.size(); ++i) {
      JitOption o{static_cast<int>(ids[i]), 0};
      if (ids[i] == CU_JIT_GLOBAL_SYMBOL_NAMES || ids[i] == CU_JIT_GLOBAL_SYMBOL_ADDRESSES ||
          ids[i] == CU_JIT_GLOBAL_SYMBOL_COUNT) {
        continue;  // the table's, not the program's options
      }
      if (ids[i] != CU_JIT_INFO_LOG_BUFFER && ids[i] != CU_JIT_ERROR_LOG_BUFFER) {
        std::memcpy(&o.value, &values[i], sizeof(o.value));
      }
      out.push_back(o);
    }
    return out;
  }
  // The logs and option slots of `link` as the driver left them.
  static void ReportLink(const CudaLink& link, LinkReport* report) {
    auto text = [](const std::vector<char>& log) {
      return std::string(log.data(), strnlen(log.data(), log.size()));
    };
    report->info_log = text(link.info_log);
    report->error_log = text(link.error_log);
    report->options = FromDriverOptions(link.options, link.values);
  }

  // stream capture and graphs: NOT_SUPPORTED where the driver lacks them.
  // A kernel node's cluster shape and cooperation (node attributes), each
  // sent only when it differs from what the node has.
  Status SetKernelNodeAttributes(CudaGraphNode& node, const LaunchConfig& c) {
    if (c.cluster == node.cluster && c.cooperative == node.cooperative) return Status::Ok();
    FERRY_RETURN_IF_ERROR(
        NeedEntryPoint(api_->cuGraphKernelNodeSetAttribute, "cuGraphKernelNodeSetAttribute"));
    CUkernelNodeAttrValue value;
    if (c.cluster != node.cluster) {
      std::memset(&value, 0, sizeof(value));
      value.clusterDim.x = c.cluster[0];
      value.clusterDim.y = c.cluster[1];
      value.clusterDim.z = c.cluster[2];
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphKernelNodeSetAttribute, node.handle,
                                     CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION, &value));
      node.cluster = c.cluster;
    }
    if (c.cooperative != node.cooperative) {
      std::memset(&value, 0, sizeof(value));
      value.cooperative = c.cooperative ? 1 : 0;
      FERRY_RETURN_IF_ERROR(FERRY_CU(*api_, cuGraphKernelNodeSetAttribute, node.handle,
                                     CU_LAUNCH_ATTRIBUTE_COOPERATIVE, &value));
      node.cooperative = c.cooperative;
    }
    return Status::Ok();
  }
  Status NeedGraphs() const {
    if (api_->HasGraphs()) return Status::Ok();
    return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, "the driver has no stream capture or graphs");
  }

  // The attributes a CUlaunchConfig from DriverLaunchConfig points at.
  using LaunchAttributes = std::array<CUlaunchAttribute, 2>;
  // `config` as the driver takes it (no stream: the current context, for the
  // occupancy queries): the cluster dimension when given and the cooperative
  // flag when set become attributes, stored in `*attributes`.
  static CUlaunchConfig DriverLaunchConfig(const LaunchConfig& config,
                                           LaunchAttributes* attributes) {
    CUlaunchConfig launch;
    std::memset(&launch, 0, sizeof(launch));
    std::memset(attributes->data(), 0, sizeof(*attributes));
    launch.gridDimX = config.grid[0];
    launch.gridDimY = config.grid[1];
    launch.gridDimZ = config.grid[2];
    launch.blockDimX = config.block[0];
    launch.blockDimY = config.block[1];
    launch.blockDimZ = config.block[2];
    launch.sharedMemBytes = config.shared_bytes;
    launch.hStream = nullptr;
    launch.attrs = attributes->data();
    if (config.cluster[0] != 0 || config.cluster[1] != 0 || config.cluster[2] != 0) {
      CUlaunchAttribute& cluster = (*attributes)[launch.numAttrs++];
      cluster.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
      // A zero in one dimension of a requested cluster means 1 there.
      cluster.value.clusterDim.x = std::max<uint32_t>(config.cluster[0], 1);
      cluster.value.clusterDim.y = std::max<uint32_t>(config.cluster[1], 1);
      cluster.value.clusterDim.z = std::max<uint32_t>(config.cluster[2], 1);
    }
    if (config.cooperative) {
      CUlaunchAttribute& cooperative = (*attributes)[launch.numAttrs++];
      cooperative.id = CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
      cooperative.value.cooperative = 1;
    }
    if (launch.numAttrs == 0) launch.attrs = nullptr;
    return launch;
  }

  // Reads a kernel's parameter layout through `query` (cuFuncGetParamInfo or
  // cuKernelGetParamInfo, named `query_name` in errors). The driver has no
  // parameter count; it answers INVALID_VALUE for the first index past the
  // end. A kernel's parameters fit in 32 KiB, so the loop is bounded even for
  // a driver that never says stop.
  Status ReadParams(const char* query_name,
                    absl::FunctionRef<CUresult(size_t, size_t*, size_t*)> query,
                    KernelDescription* kernel) {
    constexpr size_t kMaxParams = 32768;
    for (size_t index = 0;; ++index) {
      size_t offset = 0, size = 0;
      const CUresult result = query(index, &offset, &size);
      if (result == CUDA_ERROR_INVALID_VALUE) return Status::Ok();
      FERRY_RETURN_IF_ERROR(
          api_->Check(result, query_name)
              .WithContext(absl::StrCat("kernel ", kernel->name, " parameter ", index)));
      if (index >= kMaxParams) {
        return Status::Internal(absl::StrCat("kernel ", kernel->name, ": driver reports over ",
                                             kMaxParams, " parameters"));
      }
      kernel->params.push_back(
          KernelParam{static_cast<uint32_t>(offset), static_cast<uint32_t>(size)});
    }
  }

  // Describes the kernels a module or library lists: `get_count` and
  // `enumerate` list their handles, `get_name` names each, and `query` (the
  // entry point `query_name`) reads each one's parameter layout.
  template <typename Handle>
  Status DescribeKernels(absl::FunctionRef<Status(unsigned*)> get_count,
                         absl::FunctionRef<Status(Handle*, unsigned)> enumerate,
                         absl::FunctionRef<Status(Handle, const char**)> get_name,
                         const char* query_name,
                         absl::FunctionRef<CUresult(Handle, size_t, size_t*, size_t*)> query,
                         ModuleDescription* description) {
    unsigned count = 0;
    FERRY_RETURN_IF_ERROR(get_count(&count));
    std::vector<Handle> handles(count);
    if (count != 0) FERRY_RETURN_IF_ERROR(enumerate(handles.data(), count));
    description->kernels.reserve(count);
    for (Handle handle : handles) {
      const char* name = nullptr;
      FERRY_RETURN_IF_ERROR(get_name(handle, &name));
      KernelDescription kernel;
      kernel.name = name != nullptr ? name : "";
      FERRY_RETURN_IF_ERROR(ReadParams(
          query_name,
          [&](size_t index, size_t* offset, size_t* size) {
            return query(handle, index, offset, size);
          },
          &kernel));
      description->kernels.push_back(std::move(kernel));
    }
    return Status::Ok();
  }

  // Lists the library's kernels with their parameter layouts (no context
  // needed: kernels are context-independent).
  Status DescribeLibrary(CudaLibrary& library, ModuleDescription* description) {
    return DescribeKernels<CUkernel>(
        [&](unsigned* count) {
          return FERRY_CU(*api_, cuLibraryGetKernelCount, count, library.handle);
        },
        [&](CUkernel* kernels, unsigned count) {
          return FERRY_CU(*api_, cuLibraryEnumerateKernels, kernels, count, library.handle);
        },
        [&](CUkernel kernel, const char** name) {
          return FERRY_CU(*api_, cuKernelGetName, name, kernel);
        },
        FERRY_CUDA_EXPORT_NAME(cuKernelGetParamInfo),
        [&](CUkernel kernel, size_t index, size_t* offset, size_t* size) {
          return api_->cuKernelGetParamInfo(kernel, index, offset, size);
        },
        description);
  }

  // Runs `wait` on the pool, then `done` with its result. If the job cannot
  // even be queued, runs `undo` (to release what the caller counted) and
  // reports the failure through `done`, still off the caller's thread if it
  // can be.
  void SubmitWait(Completion done, absl::AnyInvocable<Status() &&> wait,
                  absl::AnyInvocable<void() &&> undo) {
    try {
      waiters_.Submit([done = std::move(done), wait = std::move(wait)]() mutable {
        Status status = std::move(wait)();
        RunCompletion(done, std::move(status));
      });
    } catch (...) {
      // Only allocation can fail here, and then `done` may already be
      // moved; nothing better than logging remains.
      std::move(undo)();
      FERRY_LOG(kError) << "cuda backend: could not queue a wait (out of memory)";
    }
  }

  // Reports an error for a When* call on the pool, never on the caller's
  // thread, so callers need not expect re-entrant Completions.
  void CompleteLater(Completion done, Status status) {
    try {
      waiters_.Submit([done = std::move(done), status = std::move(status)]() mutable {
        RunCompletion(done, std::move(status));
      });
    } catch (...) {
      FERRY_LOG(kError) << "cuda backend: could not report an error (out of memory)";
    }
  }

  // Points `wait` at a private event that completes with `e`'s current
  // record: a throwaway stream waits for `e`, then records the private event
  // (a never-recorded `e` makes the wait a no-op, as for cuEventSynchronize).
  // On failure `wait` stays on `e`, i.e. on the new record (logged).
  void Snapshot(CudaEvent& e, EventWait& wait) ABSL_EXCLUSIVE_LOCKS_REQUIRED(e.waits_mu) {
    Status status = MakeCurrent(e.context);
    CUstream stream = nullptr;
    CUevent snapshot = nullptr;
    if (status.ok()) {
      status = FERRY_CU(*api_, cuStreamCreateWithPriority, &stream, CU_STREAM_NON_BLOCKING, 0);
    }
    if (status.ok()) status = FERRY_CU(*api_, cuEventCreate, &snapshot, CU_EVENT_DISABLE_TIMING);
    if (status.ok()) status = FERRY_CU(*api_, cuStreamWaitEvent, stream, e.handle, 0);
    if (status.ok()) status = FERRY_CU(*api_, cuEventRecord, snapshot, stream);
    // The driver releases the stream once its work is done.
    if (stream != nullptr) (void)api_->cuStreamDestroy(stream);
    if (!status.ok()) {
      if (snapshot != nullptr) (void)api_->cuEventDestroy(snapshot);
      FERRY_LOG(kWarning) << "cuda backend: cannot pin a pending event wait to its record ("
                          << status.message() << "); it waits for the new record instead";
      return;
    }
    wait.target = snapshot;
    wait.snapshot = snapshot;
  }

  // Lists the module's kernels with their parameter layouts.
  Status Describe(CudaModule& module, ModuleDescription* description) {
    return DescribeKernels<CUfunction>(
        [&](unsigned* count) {
          return FERRY_CU(*api_, cuModuleGetFunctionCount, count, module.handle);
        },
        [&](CUfunction* functions, unsigned count) {
          return FERRY_CU(*api_, cuModuleEnumerateFunctions, functions, count, module.handle);
        },
        [&](CUfunction function, const char** name) {
          return FERRY_CU(*api_, cuFuncGetName, name, function);
        },
        FERRY_CUDA_EXPORT_NAME(cuFuncGetParamInfo),
        [&](CUfunction function, size_t index, size_t* offset, size_t* size) {
          CUresult result = api_->cuFuncGetParamInfo(function, index, offset, size);
          if (result == CUDA_ERROR_FUNCTION_NOT_LOADED) {
            // Enumerated handles may be only partly loaded (lazy loading);
            // the driver documents this error for queries that need more.
            result = api_->cuFuncLoad(function);
            if (result == CUDA_SUCCESS)
              result = api_->cuFuncGetParamInfo(function, index, offset, size);
          }
          return result;
        },
        description);
  }

  const std::unique_ptr<DriverApi> api_;
  const std::vector<DeviceDescription> devices_;
  const std::vector<CUdevice> device_handles_;  // by ordinal, as devices_
  WaiterPool waiters_;
  cuda_internal::NvmlTelemetry nvml_;  // after api_: loaded beside its driver
  // Parkable allocations: each device's minimum granularity for pinned
  // memory; empty when MemAlloc uses cuMemAlloc. Set in the constructor.
  std::vector<uint64_t> granularity_;
  // The tenant of contexts that join none.
  const std::shared_ptr<TenantState> default_tenant_ = std::make_shared<TenantState>();
  std::mutex splits_mu_;
  // By (device, groups); entries are never removed, so pointers stay valid.
  std::map<std::pair<int, int>, SmSplit> splits_ ABSL_GUARDED_BY(splits_mu_);
};

// --- destructors: make the owner current, wait, destroy ---------------------
// Errors here have no caller to go to; they are logged. A context that has
// failed (say, an illegal address) reports its error from every call, and
// destruction still goes ahead.

CudaStream::~CudaStream() {
  if (!owned) return;
  SetCapturing(*this, false);
  CudaBackend& backend = context.backend;
  const DriverApi& api = backend.api();
  constexpr char kWhat[] = "destroying a stream";
  if (backend.MakeCurrentQuietly(context, kWhat)) {
    FERRY_CU_QUIET(api, kWhat, cuStreamSynchronize, handle);
  }
  FERRY_CU_QUIET(api, kWhat, cuStreamDestroy, handle);
}

CudaEvent::~CudaEvent() {
  waits.WaitIdle();  // no waiter is still in cuEventSynchronize on `handle`
  CudaBackend& backend = context.backend;
  constexpr char kWhat[] = "destroying an event";
  (void)backend.MakeCurrentQuietly(context, kWhat);
  // The driver defers the release itself if the event's work is pending.
  FERRY_CU_QUIET(backend.api(), kWhat, cuEventDestroy, handle);
}

CudaLink::~CudaLink() {
  if (state == nullptr) return;
  if (context.backend.MakeCurrentQuietly(context, "destroying a link")) {
    FERRY_CU_QUIET(api, "destroying a link", cuLinkDestroy, state);
  }
}

CudaModule::~CudaModule() {
  CudaBackend& backend = context.backend;
  const DriverApi& api = backend.api();
  constexpr char kWhat[] = "unloading a module";
  // A library's module is the library's to unload: nothing to wait for.
  if (!owned) return;
  if (backend.MakeCurrentQuietly(context, kWhat)) {
    // Kernels of this module may still be queued or running.
    FERRY_CU_QUIET(api, kWhat, cuCtxSynchronize);
  }
  FERRY_CU_QUIET(api, kWhat, cuModuleUnload, handle);
}

CudaLibrary::~CudaLibrary() {
  // Every module of the library in a context is gone (GpuBackend contract),
  // and each synchronized its context first.
  FERRY_CU_QUIET(api, "unloading a library", cuLibraryUnload, handle);
}

CudaContext::~CudaContext() {
  const DriverApi& api = backend.api();
  constexpr char kWhat[] = "destroying a context";
  if (backend.MakeCurrentQuietly(*this, kWhat)) {
    // Device work and stream callbacks (Completions, buffer releases) first.
    FERRY_CU_QUIET(api, kWhat, cuCtxSynchronize);
  }
  waits.WaitIdle();  // pool threads done with this context
  // Its parkable memory (cuCtxDestroy frees only the driver's allocations),
  // while the context exists: parked copies may be its page-locked memory.
  backend.LeaveTenant(*this);
  // Idle staging buffers go back to the driver; any still in a copy go with
  // the context, and a callback that runs after this finds the cache closed.
  std::vector<std::pair<size_t, void*>> idle_staging;
  {
    std::lock_guard<std::mutex> lock(staging->mu);
    staging->closed = true;
    idle_staging.swap(staging->idle);
    staging->idle_bytes = 0;
  }
  for (const auto& [unused, buffer] : idle_staging) {
    FERRY_CU_QUIET(api, kWhat, cuMemFreeHost, buffer);
  }
  if (green != nullptr) {
    // The converted handle is the device's primary context with this green
    // context's resources: cuCtxDestroy must not touch it.
    FERRY_CU_QUIET(api, kWhat, cuGreenCtxDestroy, green);
  } else {
    FERRY_CU_QUIET(api, kWhat, cuCtxDestroy, handle);
  }
  CudaBackend::ForgetCurrent(*this);
  // Run the callbacks the driver has not run (possible after a context
  // failure) so no Completion is lost and every host buffer is released. The
  // driver may still call some of them later: they find their work claimed
  // (HostCallback::RunOnce) and the tracker alive (shared).
  absl::flat_hash_map<HostCallback*, std::shared_ptr<HostCallback>> orphans;
  {
    std::lock_guard<std::mutex> lock(callbacks_->mu);
    orphans.swap(callbacks_->pending);
  }
  if (!orphans.empty()) {
    try {
      FERRY_LOG(kWarning) << "cuda backend: " << orphans.size()
                          << " stream callback(s) never ran; completing them at context "
                             "destruction";
    } catch (...) {
    }
  }
  for (auto& [unused, callback] : orphans) callback->RunOnce(CUDA_ERROR_CONTEXT_IS_DESTROYED);
}

// Describes every device the driver reports.
Status DescribeDevices(const DriverApi& api, std::vector<DeviceDescription>* devices,
                       std::vector<CUdevice>* handles) {
  int count = 0;
  FERRY_RETURN_IF_ERROR(FERRY_CU(api, cuDeviceGetCount, &count));
  for (int ordinal = 0; ordinal < count; ++ordinal) {
    CUdevice device = 0;
    FERRY_RETURN_IF_ERROR(FERRY_CU(api, cuDeviceGet, &device, ordinal));
    DeviceDescription d;
    char name[256] = {};
    FERRY_RETURN_IF_ERROR(
        FERRY_CU(api, cuDeviceGetName, name, static_cast<int>(sizeof(name) - 1), device));
    d.name = name;
    CUuuid uuid;
    std::memset(&uuid, 0, sizeof(uuid));
    FERRY_RETURN_IF_ERROR(FERRY_CU(api, cuDeviceGetUuid, &uuid, device));
    static_assert(sizeof(uuid.bytes) == sizeof(d.uuid));
    std::memcpy(d.uuid.data(), uuid.bytes, sizeof(uuid.bytes));
    size_t total = 0;
    FERRY_RETURN_IF_ERROR(FERRY_CU(api, cuDeviceTotalMem, &total, device));
    d.total_memory = total;
    // Every attribute this header knows. A driver rejects the numbers it has
    // retired or does not know yet; those read as 0, as the contract says.
    d.attributes.assign(CU_DEVICE_ATTRIBUTE_MAX, 0);
    for (int attribute = 0; attribute < CU_DEVICE_ATTRIBUTE_MAX; ++attribute) {
      int value = 0;
      if (api.cuDeviceGetAttribute(&value, static_cast<CUdevice_attribute>(attribute), device) ==
          CUDA_SUCCESS) {
        d.attributes[attribute] = value;
      }
    }
    d.pci_domain = d.attributes[CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID];
    d.pci_bus = d.attributes[CU_DEVICE_ATTRIBUTE_PCI_BUS_ID];
    d.pci_device = d.attributes[CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID];
    devices->push_back(std::move(d));
    handles->push_back(device);
  }
  return Status::Ok();
}

}  // namespace

Status CreateCudaBackend(const CudaBackendOptions& options, std::unique_ptr<GpuBackend>* out) {
  return Guarded("CreateCudaBackend", [&]() -> Status {
    const bool explicit_path = !options.driver_path.empty();
    std::vector<std::string> candidates = explicit_path
                                              ? std::vector<std::string>{options.driver_path}
                                              : cuda_internal::DefaultDriverCandidates();
    std::unique_ptr<DriverApi> api;
    FERRY_RETURN_IF_ERROR(
        cuda_internal::LoadDriver(candidates, explicit_path, &api, options.allow_ferry_driver));
    std::vector<DeviceDescription> devices;
    std::vector<CUdevice> handles;
    FERRY_RETURN_IF_ERROR(DescribeDevices(*api, &devices, &handles)
                              .WithContext(absl::StrCat("CUDA driver ", api->path)));
    const size_t waiters = options.max_waiter_threads > 0
                               ? static_cast<size_t>(options.max_waiter_threads)
                               : size_t{1};
    *out = std::make_unique<CudaBackend>(std::move(api), std::move(devices), std::move(handles),
                                         waiters, options.parkable_allocations);
    return Status::Ok();
  });
}

}  // namespace ferry::backend
