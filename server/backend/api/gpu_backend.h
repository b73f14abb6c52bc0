// GpuBackend — the seam between a ferryd session and whatever executes its
// calls: the real driver (CudaBackend) or host memory and threads (HostBackend).
//
// Contract for every implementation:
//  * One GpuBackend serves all sessions of a ferryd; all methods are
//    thread-safe. A session calls them from its executor thread in the order
//    its client issued the calls (README.md invariant 4); Completion callbacks may
//    run on any backend thread.
//  * Nothing here blocks on device work. Stream operations are queued and
//    return at once; the caller learns of completion through When*Idle /
//    WhenEventComplete, which never block the caller either.
//  * Objects (contexts, streams, events, modules) are owned by the caller
//    through std::unique_ptr. Destroying a stream or context waits for the
//    work queued on it; memory (a module's globals, an array's storage) is
//    released after the work queued before on the tenant's streams, without
//    waiting ("releasing memory" below). The caller destroys streams, events
//    and modules of a context before the context itself.
//  * Device addresses are real: a host backend's are host addresses in the
//    ferryd process, a CUDA backend's are the driver's CUdeviceptr values. The
//    caller (the session) validates every address range against the session's
//    allocations before it calls in here; backends may trust them.
//  * Errors come back as Status; driver errors keep their CUresult
//    (Status::Cuda).
#pragma once

#include <array>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"

#include "common/array_shape.h"
#include "common/status.h"

namespace ferry::backend {

// What a client learns about a device once per session.
struct DeviceDescription {
  std::string name;
  std::array<uint8_t, 16> uuid{};
  uint64_t total_memory = 0;
  int pci_domain = 0, pci_bus = 0, pci_device = 0;
  // Indexed by CUdevice_attribute; size CU_DEVICE_ATTRIBUTE_MAX. Attributes
  // the backend does not know are 0.
  std::vector<int32_t> attributes;
};

// One kernel parameter: its byte offset in the packed parameter buffer and
// its size. The packed buffer holds every parameter at its offset, so a
// launch sends one contiguous buffer (the CU_LAUNCH_PARAM_BUFFER layout).
struct KernelParam {
  uint32_t offset = 0;
  uint32_t size = 0;
};
struct KernelDescription {
  std::string name;  // mangled name as in the image
  std::vector<KernelParam> params;
};
struct GlobalDescription {
  std::string name;
  uint64_t size = 0;
};
struct ModuleDescription {
  std::vector<KernelDescription> kernels;
  std::vector<GlobalDescription> globals;
};

// Read-only bytes that stay alive as long as `owner` does. Backends keep
// `owner` until the work that reads `data` has finished.
struct HostBytes {
  std::shared_ptr<const void> owner;
  const uint8_t* data = nullptr;
  uint64_t size = 0;
};
// Writable bytes; same ownership rule.
struct MutableHostBytes {
  std::shared_ptr<void> owner;
  uint8_t* data = nullptr;
  uint64_t size = 0;
};

// CUDA arrays, textures and surfaces. An array (cuArray3DCreate) and a
// mipmapped array belong to the context they were made in; destroying one
// frees its memory once the work queued before on the streams of its
// context's tenant has finished (GpuBackend, "releasing memory").
// The caller validates extents, formats and flags that every backend shares
// (CheckArrayShape, common/array_shape.h); a backend refuses, with a Status that says
// why, what it cannot honour.
class Array {
 public:
  virtual ~Array() = default;
};
class MipmappedArray {
 public:
  virtual ~MipmappedArray() = default;
};
// CUDA_ARRAY3D_DESCRIPTOR (common/array_shape.h).
using ArrayDescriptor = ArrayShape;
// A texture or surface object; destroying it is cuTexObjectDestroy /
// cuSurfObjectDestroy. `value` is what kernels receive (the CUtexObject or
// CUsurfObject), never 0.
class TextureObject {
 public:
  virtual ~TextureObject() = default;
  virtual uint64_t value() const = 0;
};
// CUDA_RESOURCE_DESC: an array, a mipmapped array, or device memory the
// caller checked against the session's ranges (linear: size_bytes; pitch2D:
// width x height texels, rows pitch_bytes apart).
struct TextureResource {
  enum class Kind { kArray, kMipmappedArray, kLinear, kPitch2D };
  Kind kind = Kind::kArray;
  Array* array = nullptr;
  MipmappedArray* mipmapped = nullptr;
  uint64_t dev_ptr = 0;
  int format = 0;  // CUarray_format (linear and pitch2D)
  unsigned channels = 1;
  uint64_t size_bytes = 0, width = 0, height = 0, pitch_bytes = 0;
};
// CUDA_TEXTURE_DESC and CUDA_RESOURCE_VIEW_DESC, field by field.
struct TextureDescription {
  std::array<int, 3> address_mode{};  // CUaddress_mode
  int filter_mode = 0;                // CUfilter_mode
  unsigned flags = 0;                 // CU_TRSF_*
  unsigned max_anisotropy = 0;
  int mipmap_filter_mode = 0;
  float mipmap_level_bias = 0, min_mipmap_level_clamp = 0, max_mipmap_level_clamp = 0;
  std::array<float, 4> border_color{};
};
struct TextureView {
  int format = 0;  // CUresourceViewFormat
  uint64_t width = 0, height = 0, depth = 0;
  unsigned first_level = 0, last_level = 0, first_layer = 0, last_layer = 0;
};

// A 2D or 3D copy: `depth` slices of `height` rows of `width_bytes`. Each
// side is host bytes (src_is_host: src_host, packed or pitched by
// src_pitch), device memory at src_device (rows src_pitch apart, slices
// src_height rows apart; 0: `height`), or an array (src_array, from byte
// src_x of row src_y of slice or layer src_z on; the caller checked the
// extent against the array's). Likewise for dst.
struct Copy2D {
  bool src_is_host = false;
  uint64_t src_device = 0;
  HostBytes src_host;
  uint64_t src_pitch = 0;
  bool dst_is_host = false;
  uint64_t dst_device = 0;
  MutableHostBytes dst_host;
  uint64_t dst_pitch = 0;
  uint64_t width_bytes = 0;
  uint64_t height = 0;
  // CUDA arrays, textures and surfaces
  uint64_t depth = 1;
  uint64_t src_height = 0, dst_height = 0;
  Array* src_array = nullptr;
  uint64_t src_x = 0, src_y = 0, src_z = 0;
  Array* dst_array = nullptr;
  uint64_t dst_x = 0, dst_y = 0, dst_z = 0;
};

struct LaunchConfig {
  std::array<uint32_t, 3> grid{1, 1, 1};
  std::array<uint32_t, 3> block{1, 1, 1};
  uint32_t shared_bytes = 0;
  std::array<uint32_t, 3> cluster{0, 0, 0};  // 0 = no cluster attribute
  // A cooperative launch (cuLaunchCooperativeKernel): every block of the grid
  // is resident at once, so blocks may wait for each other (a grid sync). A
  // backend refuses a grid larger than it can keep resident with
  // CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE.
  bool cooperative = false;
};

// Called once when the awaited work has finished (or failed). May run on any
// backend thread; must not block for long and must not destroy the object it
// waited on.
using Completion = std::function<void(Status)>;

// A gate in a stream, behind which a host callback runs (cuLaunchHostFunc,
// cuStreamAddCallback: the function runs on the client, so the server holds
// the stream until the client says it is done). Work queued on the stream
// after the gate waits until Open(). Shared by the caller, who opens it, and
// the backend, which waits on it. Thread-safe; Open is idempotent and may come
// before the gate is reached (it then never holds the stream).
class HostGate {
 public:
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    opened_.notify_all();
  }
  bool IsOpen() const {
    std::lock_guard<std::mutex> lock(mu_);
    return open_;
  }
  // Blocks until Open() has been called.
  void WaitOpen() const {
    std::unique_lock<std::mutex> lock(mu_);
    opened_.wait(lock, [this] { return open_; });
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable opened_;
  bool open_ ABSL_GUARDED_BY(mu_) = false;
};

class Context {
 public:
  virtual ~Context() = default;
};
class Stream {
 public:
  virtual ~Stream() = default;
};
class Event {
 public:
  virtual ~Event() = default;
};
class Function {
 public:
  virtual ~Function() = default;
};
class Module {
 public:
  virtual ~Module() = default;
};
// stream capture and graphs: a graph (captured or created) and its
// executable form. A captured graph's work belongs to its stream's context.
class Graph {
 public:
  virtual ~Graph() = default;
};
class GraphExec {
 public:
  virtual ~GraphExec() = default;
};
// A node of a graph, owned by the graph (valid while it lives).
class GraphNode {
 public:
  virtual ~GraphNode() = default;
};
// What an explicitly added graph node does (cuGraphAdd*Node): nothing, a
// kernel launch, a memset, a device-to-device copy or a child graph; the first four as the stream-ordered
// operation of the same name would. The caller validated every range.
struct GraphNodeSpec {
  // kChild: `child`'s nodes as one node (the child is copied: its later
  // changes do not reach the node).
  // kHost (graph host nodes): the client's host function `host_function`
  // runs when a launch reaches the node (GraphHostCall); it has no context.
  enum class Kind { kEmpty, kKernel, kMemset, kCopy, kChild, kHost };
  Kind kind = Kind::kEmpty;
  Context* ctx = nullptr;  // the work's context (all kinds but kEmpty)
  // kKernel
  Function* function = nullptr;
  LaunchConfig config;
  HostBytes params;  // packed, as Launch takes them
  // kMemset (as Memset) and kCopy (dst, src, bytes)
  uint64_t dst = 0, src = 0, bytes = 0;
  uint64_t pitch = 0, width = 0, height = 1;
  uint32_t value = 0;
  unsigned element_bytes = 1;
  // kChild
  Graph* child = nullptr;
  // kHost: the session's id of the host function (never 0)
  uint64_t host_function = 0;
};
// graph host nodes: one host node's part in one launch (LaunchGraph). When
// the replay reaches the node (its dependencies done), `reached` runs on a
// backend thread with the node's host function and the launch's status so
// far; with `held` true the replay then waits until `gate` is opened (the
// caller must open it, as for EnqueueHostGate). `held` false: the node will
// never run (its launch failed before it, or is gone), and nothing waits on
// the gate. `reached` runs exactly once for each call LaunchGraph accepted.
struct GraphHostCall {
  std::shared_ptr<HostGate> gate;
  std::function<void(uint64_t host_function, Status status, bool held)> reached;
};
// A loaded image that belongs to no context (cuLibraryLoadData); it gets a
// Module in each context that uses it (LoadLibraryModule).
class Library {
 public:
  virtual ~Library() = default;
};

// JIT linking (cuLinkCreate and the rest). A pending link of one context.
class Link {
 public:
  virtual ~Link() = default;
};
// A JIT option as the program gave it: a CUjit_option and the bits of its
// optionValues slot. Log buffers (CU_JIT_INFO_LOG_BUFFER,
// CU_JIT_ERROR_LOG_BUFFER) arrive with value 0: the backend logs into buffers
// of its own, of the size the matching *_SIZE_BYTES option gives.
struct JitOption {
  int option = 0;
  uint64_t value = 0;
};
// CU_JIT_GLOBAL_SYMBOL_NAMES/ADDRESSES: a name the inputs may reference and
// the device address it stands for (the caller checked the address). They
// reach the backend as this list, never as those options.
struct JitSymbol {
  std::string name;
  uint64_t address = 0;
};
// What a link call leaves for the program, filled whether the call succeeded
// or not: the logs so far (text without the NUL), and the option slots after
// the call as the driver left them (outputs such as CU_JIT_WALL_TIME, a
// float in the low 32 bits, and the log sizes; pointer slots are the
// backend's own and mean nothing to the program).
struct LinkReport {
  std::string info_log;
  std::string error_log;
  std::vector<JitOption> options;        // the link's (CreateLink's) options
  std::vector<JitOption> input_options;  // AddLinkInput's own options
};

// A stream's access policy window and synchronization policy
// (cuStreamSetAttribute); `attribute` says which one a call sets.
struct StreamAttributes {
  uint64_t window_base = 0;
  uint64_t window_bytes = 0;
  float hit_ratio = 0;
  int hit_prop = 0;     // CUaccessProperty
  int miss_prop = 0;    // CUaccessProperty
  int sync_policy = 1;  // CUsynchronizationPolicy; CU_SYNC_POLICY_AUTO
};

// One stream memory operation (cuStreamBatchMemOp's CUstreamBatchMemOpParams):
// `operation` a CUstreamBatchMemOpType, `flags` its flags.
struct StreamMemOp {
  int operation = 0;
  uint64_t address = 0;
  uint64_t value = 0;
  unsigned flags = 0;
};

// A memory pool for stream-ordered allocation (cuMemPoolCreate). Destroying
// it while allocations from it are outstanding is allowed: their memory stays
// valid until they are freed, as in CUDA.
class MemPool {
 public:
  virtual ~MemPool() = default;
};

// virtual memory management: physical memory made by
// CreatePhysicalMemory (cuMemCreate). Destroying it is cuMemRelease: the
// memory itself stays while a mapping holds it (MapMemory), as the driver
// keeps it.
class PhysicalMemory {
 public:
  virtual ~PhysicalMemory() = default;
};
// One CUmemAccessDesc: backend device `device` may touch a mapped range as
// CUmemAccess_flags `flags` says (0 none, 1 read, 3 read and write).
struct MemoryAccess {
  int device = 0;
  unsigned flags = 0;
};

// The contexts of one client (a session), for releasing memory. Work queued on
// any stream of a tenant's contexts may touch memory of any of them (peer
// access, unified addressing), never another tenant's; so memory a tenant
// frees is released once the work queued before the free on every stream of
// the tenant has finished, and one tenant's work never holds back another's
// releases. Made by GpuBackend::CreateTenant; owned by the caller, it must
// outlive the contexts that join it.
class Tenant {
 public:
  virtual ~Tenant() = default;
};

// Device memory of one tenant by backend device (parking, below): bytes and
// how many allocations they are.
struct ParkedMemory {
  std::vector<uint64_t> bytes;  // indexed by backend device; may be shorter
  uint64_t allocations = 0;

  uint64_t Total() const {
    uint64_t total = 0;
    for (uint64_t b : bytes) total += b;
    return total;
  }
  void Add(int device, uint64_t count) {
    if (bytes.size() <= static_cast<size_t>(device)) bytes.resize(device + 1, 0);
    bytes[device] += count;
    ++allocations;
  }
};

// NVML stand-in: what a monitor reads of a whole GPU (DeviceTelemetry). A
// figure the backend cannot read is -1.
struct DeviceTelemetry {
  int gpu_utilization = -1;     // percent of the recent past the GPU ran work
  int memory_utilization = -1;  // percent of the recent past memory was read or written
  int temperature_c = -1;       // core temperature, degrees Celsius
  int power_milliwatts = -1;    // power draw
};

class GpuBackend {
 public:
  virtual ~GpuBackend() = default;

  virtual std::string_view Name() const = 0;  // "host" or "cuda"
  virtual int DriverVersion() const = 0;      // as cuDriverGetVersion reports it
  virtual const std::vector<DeviceDescription>& Devices() const = 0;

  // --- contexts -----------------------------------------------------------
  virtual Status CreateContext(int device, unsigned flags, std::unique_ptr<Context>* out) = 0;
  // --- SM partitions (compute shares) -------------------------------------
  // Whether `device` can be split into `groups` equal, disjoint groups of SMs
  // (CUDA: green contexts). On success *sm_count is the SMs in each group;
  // otherwise the Status says why not (Unimplemented where the backend, the
  // driver or the GPU has no SM partitions, or the device has too few SMs for
  // that many groups), and the caller shares compute another way (launch
  // throttling). The answer for given arguments never changes. The default:
  // no SM partitions (the host backend).
  virtual Status SmPartitionSize(int device, int groups, int* sm_count) {
    (void)device, (void)groups, (void)sm_count;
    return Status::Unimplemented(std::string(Name()) + " backend has no SM partitions");
  }
  // Like CreateContext, but the context's kernels run only on SM group
  // `group` (0-based) of `groups` (SmPartitionSize(device, groups) must
  // succeed). Contexts with the same (device, groups, group) share one group;
  // different groups of one split never overlap.
  virtual Status CreatePartitionedContext(int device, unsigned flags, int groups, int group,
                                          std::unique_ptr<Context>* out) {
    (void)device, (void)flags, (void)groups, (void)group, (void)out;
    return Status::Unimplemented(std::string(Name()) + " backend has no SM partitions");
  }

  // The context's legacy default stream (CUstream 0). Owned by the context.
  virtual Stream& LegacyStream(Context& ctx) = 0;
  virtual Status GetLimit(Context& ctx, int limit, uint64_t* value) = 0;
  virtual Status SetLimit(Context& ctx, int limit, uint64_t value) = 0;
  // cuCtxResetPersistingL2Cache: returns the persisting lines of the L2 cache
  // to normal. Queued behind `ctx`'s work, as CUDA does.
  virtual Status ResetPersistingL2Cache(Context& ctx) = 0;
  // Calls `done` once all work queued so far on every stream of `ctx` is done.
  virtual void WhenContextIdle(Context& ctx, Completion done) = 0;

  // --- memory -------------------------------------------------------------
  virtual Status MemAlloc(Context& ctx, uint64_t bytes, uint64_t* dptr) = 0;
  virtual Status MemAllocPitch(Context& ctx, uint64_t width_bytes, uint64_t height,
                               unsigned element_bytes, uint64_t* dptr, uint64_t* pitch) = 0;
  // Frees once the work queued before this call on every stream of `ctx`'s
  // tenant has finished; returns at once (see "releasing memory" below).
  virtual Status MemFree(Context& ctx, uint64_t dptr) = 0;
  virtual Status MemGetInfo(Context& ctx, uint64_t* free_bytes, uint64_t* total_bytes) = 0;

  // --- stream-ordered operations (queued; return at once) -----------------
  virtual Status CopyHostToDevice(Stream& stream, uint64_t dst, HostBytes src) = 0;
  virtual Status CopyDeviceToHost(Stream& stream, MutableHostBytes dst, uint64_t src) = 0;
  virtual Status CopyDeviceToDevice(Stream& stream, uint64_t dst, uint64_t src, uint64_t bytes) = 0;
  virtual Status Copy2DAsync(Stream& stream, Copy2D copy) = 0;
  // Sets width x height elements of `element_bytes` (1, 2 or 4) to `value`;
  // rows start `pitch` bytes apart (pitch is ignored when height == 1).
  virtual Status Memset(Stream& stream, uint64_t dst, uint64_t pitch, uint32_t value,
                        unsigned element_bytes, uint64_t width, uint64_t height) = 0;
  // `params` is the packed parameter buffer laid out per the function's
  // KernelDescription.
  virtual Status Launch(Stream& stream, Function& function, const LaunchConfig& config,
                        HostBytes params) = 0;

  // --- streams ------------------------------------------------------------
  virtual Status CreateStream(Context& ctx, unsigned flags, int priority,
                              std::unique_ptr<Stream>* out) = 0;
  // OK when all queued work is done, Status::Cuda(CUDA_ERROR_NOT_READY) if not.
  virtual Status QueryStream(Stream& stream) = 0;
  virtual void WhenStreamIdle(Stream& stream, Completion done) = 0;
  // Queues `gate` on `stream`. Once the work queued on the stream before it
  // has finished, `reached` runs (like a WhenStreamIdle Completion, with the
  // stream's status); the work queued after it waits until gate->Open(), which
  // the caller must eventually call, or the stream (and destroying it) waits
  // forever. Implementations say what a closed gate costs beyond its stream.
  // On failure nothing is queued and `reached` never runs.
  virtual Status EnqueueHostGate(Stream& stream, std::shared_ptr<HostGate> gate,
                                 Completion reached) = 0;

  // --- events -------------------------------------------------------------
  virtual Status CreateEvent(Context& ctx, unsigned flags, std::unique_ptr<Event>* out) = 0;
  virtual Status RecordEvent(Event& event, Stream& stream) = 0;
  virtual Status StreamWaitEvent(Stream& stream, Event& event) = 0;
  virtual Status QueryEvent(Event& event) = 0;  // OK or Cuda(CUDA_ERROR_NOT_READY)
  // cuCtxRecordEvent: `event` (of `ctx`) captures the work queued so far on
  // every stream of `ctx`. cuCtxWaitEvent: every operation queued on `ctx`
  // after this call waits for `event`'s record. Defaults: Unimplemented.
  virtual Status RecordContextEvent(Context& ctx, Event& event) {
    (void)ctx, (void)event;
    return Status::Unimplemented(std::string(Name()) + " backend has no context-wide events");
  }
  virtual Status ContextWaitEvent(Context& ctx, Event& event) {
    (void)ctx, (void)event;
    return Status::Unimplemented(std::string(Name()) + " backend has no context-wide events");
  }
  virtual void WhenEventComplete(Event& event, Completion done) = 0;
  virtual Status EventElapsedTime(Event& start, Event& end, float* milliseconds) = 0;

  // --- fast paths (optional) ------------------------------------------------
  // They let ferryd answer a call on the thread that read it, instead of
  // queueing it and replying from a backend thread. A backend that cannot
  // tell answers false and the caller takes the queued path.
  //
  // True when an operation appended to `stream` now would start at once: the
  // stream's own work and everything its ordering makes a new operation wait
  // for (legacy default-stream semantics) has finished. `*status` is then
  // what WhenStreamIdle's completion would report.
  virtual bool StreamIdleNow(Stream& stream, Status* status) { return false; }
  // True when every stream of `ctx` is idle; `*status` as WhenContextIdle's.
  virtual bool ContextIdleNow(Context& ctx, Status* status) { return false; }
  // True when device addresses are addresses in this process that ferryd may
  // read and write directly (the host backend), so bulk bytes can move
  // between the wire and device memory without a staging buffer — done only
  // while the stream is idle (StreamIdleNow), which keeps stream order.
  virtual bool DeviceMemoryIsHostMemory() const { return false; }

  // --- modules and functions ----------------------------------------------
  // `image` is a fatbin, a cubin (ELF) or NUL-terminated PTX text. On success
  // `description` lists the image's kernels with their parameter layouts and
  // its globals.
  virtual Status LoadModule(Context& ctx, std::span<const uint8_t> image,
                            std::unique_ptr<Module>* out, ModuleDescription* description) = 0;
  // The returned Function is owned by the module and valid until it is
  // destroyed. NotFound if the module has no such kernel.
  virtual Status GetFunction(Module& module, std::string_view name, Function** out) = 0;
  virtual Status GetGlobal(Module& module, std::string_view name, uint64_t* dptr,
                           uint64_t* bytes) = 0;
  virtual Status GetFunctionAttribute(Function& function, int attribute, int* value) = 0;
  virtual Status SetFunctionAttribute(Function& function, int attribute, int value) = 0;
  virtual Status SetFunctionCacheConfig(Function& function, int config) = 0;

  // --- libraries (context-independent images) -----------------------------
  // Loads `image` (as LoadModule takes it) into no context. `description`
  // lists its kernels with their parameter layouts, and its globals where the
  // backend can enumerate them. The backend keeps what it needs of `image`.
  virtual Status LoadLibrary(std::span<const uint8_t> image, std::unique_ptr<Library>* out,
                             ModuleDescription* description) = 0;
  // The library's module in `ctx`: its kernels and its own copy of the
  // globals in that context (cuLibraryGetModule). Destroying the Module ends
  // the library's use of the context; the caller destroys every Module of a
  // library before the library, and a context's Modules before the context.
  virtual Status LoadLibraryModule(Context& ctx, Library& library,
                                   std::unique_ptr<Module>* out) = 0;

  // --- JIT linking ---------------------------------------------------------
  // cuLinkCreate in `ctx` with `options` and the global symbol table
  // `symbols`. The caller bounds the log sizes.
  virtual Status CreateLink(Context& ctx, const std::vector<JitOption>& options,
                            const std::vector<JitSymbol>& symbols, std::unique_ptr<Link>* out) = 0;
  // cuLinkAddData: input `data` of CUjitInputType `type`, called `name` in
  // logs, with its own compiler `options`. The backend keeps what it needs of
  // `data`. `report` as LinkReport says.
  virtual Status AddLinkInput(Link& link, int type, std::span<const uint8_t> data,
                              const std::string& name, const std::vector<JitOption>& options,
                              LinkReport* report) = 0;
  // cuLinkComplete: links the inputs; `*image` is the result (an image
  // LoadModule accepts), owned by `link` until it is destroyed.
  virtual Status CompleteLink(Link& link, std::span<const uint8_t>* image, LinkReport* report) = 0;

  // --- occupancy (in the function's context) -------------------------------
  // cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags.
  virtual Status OccupancyMaxActiveBlocks(Function& function, int block_size,
                                          uint64_t dynamic_smem_bytes, unsigned flags,
                                          int* blocks) = 0;
  // cuOccupancyAvailableDynamicSMemPerBlock.
  virtual Status OccupancyAvailableDynamicSmem(Function& function, int num_blocks, int block_size,
                                               uint64_t* bytes) = 0;
  // cuOccupancyMaxPotentialClusterSize / cuOccupancyMaxActiveClusters for a
  // launch of `function` with `config` (config.cluster all 0: none given).
  virtual Status OccupancyMaxPotentialClusterSize(Function& function, const LaunchConfig& config,
                                                  int* cluster_size) = 0;
  virtual Status OccupancyMaxActiveClusters(Function& function, const LaunchConfig& config,
                                            int* clusters) = 0;

  // --- peers (backend device indices) --------------------------------------
  // cuDeviceCanAccessPeer: whether `device` can access `peer`'s memory
  // (0 for the device itself).
  virtual Status CanAccessPeer(int device, int peer, int* can_access) = 0;
  // cuDeviceGetP2PAttribute of the link from `src_device` to `dst_device`
  // (two different devices; else CUDA_ERROR_INVALID_DEVICE).
  virtual Status GetP2PAttribute(int attribute, int src_device, int dst_device, int* value) = 0;
  // cuCtxEnablePeerAccess / cuCtxDisablePeerAccess: `ctx` gains or loses
  // access to the memory of `peer`'s device. The caller keeps the state and
  // calls these only to change it (contexts of different devices that can
  // access each other).
  virtual Status EnablePeerAccess(Context& ctx, Context& peer) = 0;
  virtual Status DisablePeerAccess(Context& ctx, Context& peer) = 0;
  // cuMemcpyPeerAsync: `bytes` from `src` (memory of `src_ctx`'s device) to
  // `dst` (memory of `dst_ctx`'s device), queued on `stream`.
  virtual Status CopyPeer(Stream& stream, uint64_t dst, Context& dst_ctx, uint64_t src,
                          Context& src_ctx, uint64_t bytes) = 0;

  // --- stream-ordered allocation and memory pools ----------------------------
  // A pool on backend device `device` (CUmemPoolProps with pinned device
  // memory there; `max_size` 0: no limit of its own). The default
  // implementations answer Unimplemented.
  virtual Status CreateMemPool(int device, uint64_t max_size, std::unique_ptr<MemPool>* out) {
    (void)device, (void)max_size, (void)out;
    return Status::Unimplemented(std::string(Name()) + " backend has no memory pools");
  }
  // cuMemAllocFromPoolAsync: `*dptr` is valid at once (the address is never
  // handed out twice while allocated); the memory may be used by work queued
  // on `stream` after this call, or ordered after it.
  virtual Status MemAllocFromPool(Stream& stream, MemPool& pool, uint64_t bytes, uint64_t* dptr) {
    (void)stream, (void)pool, (void)bytes, (void)dptr;
    return Status::Unimplemented(std::string(Name()) + " backend has no memory pools");
  }
  // cuMemFreeAsync: frees `dptr` (from MemAllocFromPool, MemAlloc or
  // MemAllocPitch) when `stream` reaches this point and the work queued before
  // this call on the other streams of its tenant has finished; returns at
  // once. On success `freed` runs once the memory is released: before the
  // stream counts as idle past the free when that other work had finished by
  // then (so whoever sees the stream idle sees `freed` done), else once it
  // has; on failure it never runs.
  virtual Status MemFreeAsync(Stream& stream, uint64_t dptr, Completion freed) {
    (void)stream, (void)dptr, (void)freed;
    return Status::Unimplemented(std::string(Name()) + " backend has no memory pools");
  }
  // cuMemPoolGetAttribute / cuMemPoolSetAttribute; int attributes as their
  // value. A bad attribute or value is CUDA_ERROR_INVALID_VALUE.
  virtual Status GetMemPoolAttribute(MemPool& pool, int attribute, uint64_t* value) {
    (void)pool, (void)attribute, (void)value;
    return Status::Unimplemented(std::string(Name()) + " backend has no memory pools");
  }
  virtual Status SetMemPoolAttribute(MemPool& pool, int attribute, uint64_t value) {
    (void)pool, (void)attribute, (void)value;
    return Status::Unimplemented(std::string(Name()) + " backend has no memory pools");
  }
  virtual Status TrimMemPool(MemPool& pool, uint64_t min_bytes_to_keep) {
    (void)pool, (void)min_bytes_to_keep;
    return Status::Unimplemented(std::string(Name()) + " backend has no memory pools");
  }

  // --- virtual memory management ------------------------------------------------
  // The driver's virtual memory calls. The caller (the session) keeps which
  // reservations, mappings and physical memory are whose, and checks every
  // address, size and offset against them (sizes and offsets multiples of
  // AllocationGranularity) before it calls in here. Unmapping and taking
  // access away change the backend's books at once (the range can be mapped
  // again at once); the memory itself stays reachable by the work queued
  // before on `tenant`'s streams until that work has finished, and neither
  // call waits for it. The defaults answer CUDA_ERROR_NOT_SUPPORTED.
  //
  // cuMemGetAllocationGranularity for pinned memory on backend device
  // `device` (recommended, else minimum): the unit sizes, offsets and
  // addresses come in.
  virtual Status AllocationGranularity(int device, bool recommended, uint64_t* bytes) {
    (void)device, (void)recommended, (void)bytes;
    return NoVirtualMemory();
  }
  // cuMemCreate: `bytes` of pinned memory on backend device `device`,
  // zero-filled (memory another session freed never shows its bytes).
  virtual Status CreatePhysicalMemory(int device, uint64_t bytes,
                                      std::unique_ptr<PhysicalMemory>* out) {
    (void)device, (void)bytes, (void)out;
    return NoVirtualMemory();
  }
  // cuMemAddressReserve: `bytes` of addresses aligned to `alignment` (a
  // power of two), at `hint` if that is free (a hint only, as the driver
  // takes it; 0: anywhere). Nothing is accessible until mapped.
  virtual Status ReserveAddressRange(uint64_t bytes, uint64_t alignment, uint64_t hint,
                                     uint64_t* address) {
    (void)bytes, (void)alignment, (void)hint, (void)address;
    return NoVirtualMemory();
  }
  // cuMemAddressFree of a whole reservation with nothing mapped in it.
  virtual Status FreeAddressRange(uint64_t address, uint64_t bytes) {
    (void)address, (void)bytes;
    return NoVirtualMemory();
  }
  // cuMemMap: [offset, offset + bytes) of `memory` at `address`, inside a
  // reservation where nothing is mapped; no device may touch it until
  // SetMemoryAccess. Two mappings of one memory alias the same bytes.
  virtual Status MapMemory(uint64_t address, uint64_t bytes, PhysicalMemory& memory,
                           uint64_t offset) {
    (void)address, (void)bytes, (void)memory, (void)offset;
    return NoVirtualMemory();
  }
  // cuMemUnmap of one whole mapping: its addresses are reserved again.
  virtual Status UnmapMemory(Tenant& tenant, uint64_t address, uint64_t bytes) {
    (void)tenant, (void)address, (void)bytes;
    return NoVirtualMemory();
  }
  // cuMemSetAccess of one whole mapping: `access` is every device's access
  // to it after the call (devices not named: none).
  virtual Status SetMemoryAccess(Tenant& tenant, uint64_t address, uint64_t bytes,
                                 std::span<const MemoryAccess> access) {
    (void)tenant, (void)address, (void)bytes, (void)access;
    return NoVirtualMemory();
  }

  // --- stream attributes -----------------------------------------------------
  // cuStreamSetAttribute of `attribute` (CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW
  // or CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY) to its value in `values`,
  // validated by the caller. The default accepts them: a backend without an
  // L2 cache or blocking policies has nothing to apply.
  virtual Status SetStreamAttribute(Stream& stream, int attribute, const StreamAttributes& values) {
    (void)stream, (void)attribute, (void)values;
    return Status::Ok();
  }

  // --- stream memory operations -----------------------------------------------
  // Queues `ops` on `stream`, executed in order when the stream reaches them
  // (cuStreamBatchMemOp). The caller has checked each operation and address.
  // A wait holds the stream until its condition holds; destroying the stream
  // ends the wait (the host backend) or is the driver's to handle.
  virtual Status StreamMemOps(Stream& stream, std::vector<StreamMemOp> ops, unsigned flags) {
    (void)stream, (void)ops, (void)flags;
    return Status::Unimplemented(std::string(Name()) + " backend has no stream memory operations");
  }

  // --- profiler --------------------------------------------------------------
  // cuProfilerStart / cuProfilerStop in `ctx`. The default accepts them: with
  // no profiler attached both do nothing, as in CUDA.
  virtual Status ProfilerControl(Context& ctx, bool start) {
    (void)ctx, (void)start;
    return Status::Ok();
  }

  // --- CUDA arrays, textures and surfaces -------------------------------------
  // Arrays are made in `ctx`; `levels` > 0 makes a mipmapped array of that
  // many levels. A level (MipmappedArrayLevel) is owned by its mipmapped
  // array. Texture and surface objects are made in `ctx`; `view` may be null.
  // A surface takes an array resource only. The defaults answer
  // CUDA_ERROR_NOT_SUPPORTED.
  virtual Status CreateArray(Context& ctx, const ArrayDescriptor& descriptor,
                             std::unique_ptr<Array>* out) {
    (void)ctx, (void)descriptor, (void)out;
    return NoArrays();
  }
  virtual Status CreateMipmappedArray(Context& ctx, const ArrayDescriptor& descriptor,
                                      unsigned levels, std::unique_ptr<MipmappedArray>* out) {
    (void)ctx, (void)descriptor, (void)levels, (void)out;
    return NoArrays();
  }
  virtual Status MipmappedArrayLevel(MipmappedArray& mipmapped, unsigned level, Array** out) {
    (void)mipmapped, (void)level, (void)out;
    return NoArrays();
  }
  virtual Status CreateTextureObject(Context& ctx, const TextureResource& resource,
                                     const TextureDescription& texture, const TextureView* view,
                                     std::unique_ptr<TextureObject>* out) {
    (void)ctx, (void)resource, (void)texture, (void)view, (void)out;
    return NoArrays();
  }
  virtual Status CreateSurfaceObject(Context& ctx, const TextureResource& resource,
                                     std::unique_ptr<TextureObject>* out) {
    (void)ctx, (void)resource, (void)out;
    return NoArrays();
  }

  // --- stream capture and graphs --------------------------------------------
  // The defaults answer CUDA_ERROR_NOT_SUPPORTED. The caller (the session)
  // keeps the capture's rules (what a capturing stream refuses, invalidation);
  // a backend records what is queued on a capturing stream instead of
  // running it.
  // Starts capturing `stream` (CUstreamCaptureMode `mode`): the stream-ordered
  // operations queued on it from now on are recorded, not run. The legacy
  // stream cannot capture (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED); a stream
  // that captures already: CUDA_ERROR_ILLEGAL_STATE.
  virtual Status BeginCapture(Stream& stream, int mode) {
    (void)stream, (void)mode;
    return NoGraphs();
  }
  // Ends the capture of `stream`; *out is what it recorded, in stream order
  // (a capture begun with BeginCaptureToGraph adds it to its graph instead,
  // and *out stays null). CUDA_ERROR_ILLEGAL_STATE when the stream is not
  // capturing.
  virtual Status EndCapture(Stream& stream, std::unique_ptr<Graph>* out) {
    (void)stream, (void)out;
    return NoGraphs();
  }
  // An empty graph (cuGraphCreate).
  virtual Status CreateGraph(unsigned flags, std::unique_ptr<Graph>* out) {
    (void)flags, (void)out;
    return NoGraphs();
  }
  // Adds a node after `dependencies` (nodes of `graph`). A graph's nodes may
  // belong to one context only.
  virtual Status AddGraphNode(Graph& graph, std::span<GraphNode* const> dependencies,
                              const GraphNodeSpec& spec, GraphNode** out) {
    (void)graph, (void)dependencies, (void)spec, (void)out;
    return NoGraphs();
  }
  // cuGraphExec*NodeSetParams: node `node` (added to the graph `exec` was
  // instantiated from) runs `spec` (of the node's kind and context; kChild:
  // a graph of the topology of the node's child) from the next launch of
  // `exec` on; launches queued already run what they were queued with.
  virtual Status SetExecNode(GraphExec& exec, GraphNode& node, const GraphNodeSpec& spec) {
    (void)exec, (void)node, (void)spec;
    return NoGraphs();
  }
  // cuGraphNodeSetEnabled: a kernel, memset or copy node of the graph `exec`
  // was instantiated from does nothing (disabled) or its work again, from the
  // next launch of `exec` on.
  virtual Status SetExecNodeEnabled(GraphExec& exec, GraphNode& node, bool enabled) {
    (void)exec, (void)node, (void)enabled;
    return NoGraphs();
  }
  // cuGraphExecUpdate: `exec` runs `graph`'s nodes from its next launch on
  // (launches queued already run what they were queued with). The caller
  // checked that `graph` has as many nodes as `exec`, with the same kinds and
  // dependencies; node enabled states stay as they are.
  virtual Status UpdateGraphExec(GraphExec& exec, Graph& graph) {
    (void)exec, (void)graph;
    return NoGraphs();
  }
  // A graph with the same nodes and dependencies (cuGraphClone).
  virtual Status CloneGraph(Graph& graph, std::unique_ptr<Graph>* out) {
    (void)graph, (void)out;
    return NoGraphs();
  }
  virtual Status GraphNodeCount(Graph& graph, uint64_t* count) {
    (void)graph, (void)count;
    return NoGraphs();
  }
  // The executable graph keeps what it needs of `graph`: destroying the graph
  // afterwards leaves it launchable.
  virtual Status InstantiateGraph(Graph& graph, uint64_t flags, std::unique_ptr<GraphExec>* out) {
    (void)graph, (void)flags, (void)out;
    return NoGraphs();
  }
  // Queues all of `exec`'s work on `stream` as one stream operation (event
  // nodes, where a graph has them, queue their records and waits as stream
  // operations of their own between its parts). `host_calls`: one per host
  // node of `exec` (GraphExecHostNodes), used in the order the replay
  // reaches the nodes; on failure none of them is used.
  virtual Status LaunchGraph(GraphExec& exec, Stream& stream,
                             std::span<const GraphHostCall> host_calls = {}) {
    (void)exec, (void)stream, (void)host_calls;
    return NoGraphs();
  }
  virtual Status UploadGraph(GraphExec& exec, Stream& stream) {
    (void)exec, (void)stream;
    return NoGraphs();
  }

  // --- graph node kinds: memory allocation and free nodes ---------------------
  // cuGraphAddMemAllocNode: a node of `graph` (after `dependencies`) that
  // allocates `bytes` of `ctx`'s memory on backend device `device` (ctx's);
  // *dptr is its address, fixed from now on. The memory exists while an
  // executable graph of `graph` holds it (CommitGraphMemory).
  virtual Status AddGraphMemAllocNode(Graph& graph, std::span<GraphNode* const> dependencies,
                                      Context& ctx, int device, uint64_t bytes, GraphNode** out,
                                      uint64_t* dptr) {
    (void)graph, (void)dependencies, (void)ctx, (void)device, (void)bytes, (void)out, (void)dptr;
    return NoGraphs();
  }
  // cuGraphAddMemFreeNode: a node that frees `dptr`, the address of an
  // allocation node (the caller checked that).
  virtual Status AddGraphMemFreeNode(Graph& graph, std::span<GraphNode* const> dependencies,
                                     uint64_t dptr, GraphNode** out) {
    (void)graph, (void)dependencies, (void)dptr, (void)out;
    return NoGraphs();
  }
  // `exec`, just instantiated from `graph`, holds the memory of `graph`'s
  // allocation nodes (the caller charged it and checked that no other
  // executable graph holds it): OUT_OF_MEMORY when the device has too little.
  // When `exec` is destroyed the memory is released like any freed memory of
  // `tenant` ("releasing memory" below: after every operation queued before
  // on the tenant's streams), so WhenReleased(tenant) tells when it is back.
  virtual Status CommitGraphMemory(GraphExec& exec, Graph& graph, Tenant& tenant) {
    (void)exec, (void)graph, (void)tenant;
    return NoGraphs();
  }
  // Frees `unfreed`, allocations of `exec`'s launches that no free node
  // freed (the caller checked that): for cuMemFree on such an allocation,
  // which cuda.h allows, and as `exec` is about to be destroyed (the driver
  // would keep them past it, but their ranges stop being the session's, so
  // nothing could free them later). The memory stays `exec`'s, like memory
  // a free node frees, until `exec` goes.
  virtual Status FreeGraphAllocations(GraphExec& exec, std::span<const uint64_t> unfreed) {
    (void)exec, (void)unfreed;
    return NoGraphs();
  }
  // cuDeviceGraphMemTrim: graph memory that no executable graph holds goes
  // back to backend device `device`.
  virtual Status TrimGraphMemory(int device) {
    (void)device;
    return NoGraphs();
  }

  // --- graph node kinds: event record and wait nodes ---------------------------
  // cuGraphAddEventRecordNode (`wait` false) / cuGraphAddEventWaitNode: at
  // each launch the node records `event` on the launch's stream (as
  // RecordEvent there would) or makes the nodes after it wait for the event's
  // latest record (as StreamWaitEvent). The caller keeps `event` alive while a
  // graph or executable graph names it, and checks that it still exists
  // before each launch.
  virtual Status AddGraphEventNode(Graph& graph, std::span<GraphNode* const> dependencies,
                                   Event& event, bool wait, GraphNode** out) {
    (void)graph, (void)dependencies, (void)event, (void)wait, (void)out;
    return NoGraphs();
  }
  // Event node `node` (of `graph`; `wait`: a wait node) names `event` from
  // now on: in the graph (later instantiations), or in `exec` (its next
  // launches; `node` of the graph `exec` was instantiated from).
  virtual Status SetGraphEventNode(Graph& graph, GraphNode& node, Event& event, bool wait) {
    (void)graph, (void)node, (void)event, (void)wait;
    return NoGraphs();
  }
  virtual Status SetExecEventNode(GraphExec& exec, GraphNode& node, Event& event, bool wait) {
    (void)exec, (void)node, (void)event, (void)wait;
    return NoGraphs();
  }

  // --- graph node kinds: host nodes (graphhost) --------------------------------
  // Host nodes are GraphNodeSpec::Kind::kHost (AddGraphNode, SetGraphNode,
  // SetExecNode); a graph with host nodes cannot be a child graph
  // (AddGraphNode refuses it: CUDA_ERROR_NOT_SUPPORTED).
  // cuStreamBeginCaptureToGraph: as BeginCapture, but what is captured is
  // added to `graph` (the caller keeps it alive until EndCapture), the first
  // node after `dependencies` (nodes of it).
  virtual Status BeginCaptureToGraph(Stream& stream, int mode, Graph& graph,
                                     std::span<GraphNode* const> dependencies) {
    (void)stream, (void)mode, (void)graph, (void)dependencies;
    return NoGraphs();
  }
  // cuStreamUpdateCaptureDependencies: the next node capturing `stream`
  // records also depends on `dependencies` (nodes of the graph a capture
  // begun with BeginCaptureToGraph builds); `set`: instead of the stream's
  // current tips (the host backend keeps its capture's order regardless).
  virtual Status UpdateCaptureDependencies(Stream& stream, std::span<GraphNode* const> dependencies,
                                           bool set) {
    (void)stream, (void)dependencies, (void)set;
    return NoGraphs();
  }
  // cuLaunchHostFunc on capturing `stream`: the capture records a host node
  // calling `host_function` (CUDA_ERROR_ILLEGAL_STATE when not capturing).
  // `origin`: the stream the capture began on (EndCapture's), which is
  // `stream` or one `stream` joined.
  virtual Status CaptureHostNode(Stream& stream, Stream& origin, uint64_t host_function) {
    (void)stream, (void)origin, (void)host_function;
    return NoGraphs();
  }
  // How many host nodes `exec` runs per launch.
  virtual Status GraphExecHostNodes(GraphExec& exec, uint32_t* count) {
    (void)exec;
    *count = 0;
    return Status::Ok();
  }

  // --- a child-graph node's graph (graphhost) -----------------------------------
  // cuGraphChildGraphNodeGetGraph: the graph child-graph node `node` (added
  // to `graph` by AddGraphNode) runs, owned by the node and valid while it
  // is: edits of *out reach the node (instantiations of `graph` made after
  // them run them). *nodes gets its nodes in the order the child's were
  // added (owned by *out).
  virtual Status EmbeddedGraph(Graph& graph, GraphNode& node, std::shared_ptr<Graph>* out,
                               std::vector<GraphNode*>* nodes) {
    (void)graph, (void)node, (void)out, (void)nodes;
    return NoGraphs();
  }

  // --- explicit-graph editing (graphedit) ------------------------------------
  // The caller checked every edit as the driver does (nodes of `graph`, no
  // edge added twice or removed when absent); a cycle the edits make is
  // refused by InstantiateGraph (CUDA_ERROR_INVALID_VALUE), as the driver
  // refuses it. Executable graphs made already keep what they were made with.
  // Adds (remove false) or removes the edges from[i] -> to[i].
  virtual Status EditGraphEdges(Graph& graph, std::span<GraphNode* const> from,
                                std::span<GraphNode* const> to, bool remove) {
    (void)graph, (void)from, (void)to, (void)remove;
    return NoGraphs();
  }
  // `node` and its edges leave `graph`; the node is destroyed.
  virtual Status DestroyGraphNode(Graph& graph, GraphNode& node) {
    (void)graph, (void)node;
    return NoGraphs();
  }
  // cuGraphNodeFindInClone: *out gets the copy of `node` (a node of
  // `original`) in `clone`, made from `original` by CloneGraph with no edit
  // of either since; owned by `clone`.
  virtual Status FindGraphNodeInClone(Graph& original, GraphNode& node, Graph& clone,
                                      GraphNode** out) {
    (void)original, (void)node, (void)clone, (void)out;
    return NoGraphs();
  }
  // cuGraph*NodeSetParams: `node` of `graph` does `spec` (of the node's kind
  // and context; not kChild) from now on.
  virtual Status SetGraphNode(Graph& graph, GraphNode& node, const GraphNodeSpec& spec) {
    (void)graph, (void)node, (void)spec;
    return NoGraphs();
  }

  // --- NVML stand-in (monitoring) --------------------------------------------
  // The figures NVML would report for backend device `device` (a valid
  // index) now: the CUDA backend asks NVIDIA's NVML (loaded beside the
  // driver; every figure -1 without it), the host backend its own accounting
  // (utilization only). Any thread.
  virtual Status ReadDeviceTelemetry(int device, DeviceTelemetry* out) = 0;

  // --- bounded resources (a session that ends) ------------------------------
  // The session that owns `ctx` is gone and nobody will see what its queued
  // work computes: work queued on `ctx`'s streams that has not started yet
  // may be dropped, so that destroying the context (which waits for the
  // queued work) ends soon. Kernel launches are what may be dropped;
  // copies, memsets, event records and frees still run, so that every
  // completion still fires. The context must not be used for new work
  // afterwards, only destroyed. Any thread; returns at once.
  virtual void AbandonQueuedWork(Context& ctx) = 0;

  // --- parking (memory overcommit, idle reclaim) ------------------------------
  // Parking moves an idle tenant's device memory into host memory and gives
  // the device memory back, keeping every address reserved, so that the
  // tenant's pointers — those its client holds and those stored inside its
  // device memory — are valid again, with the same bytes, once it is
  // unparked. What is parked: the tenant's device allocations (MemAlloc,
  // pitched, pool allocations, array storage). What stays resident (small,
  // or owned by objects the tenant made itself): module globals, physical
  // memory of its own virtual memory management, graph memory; the figures
  // say how much.
  //
  // Contract: the caller guarantees that no work of the tenant is queued or
  // running (every stream of its contexts idle) from ParkTenantMemory until
  // UnparkTenantMemory returns, and that no call of the tenant runs in
  // between. Whole or nothing: a failure leaves everything as it was.
  //
  // Whether this backend can park at all (the default: no).
  virtual bool CanParkMemory() const { return false; }
  // Parks the tenant's device allocations. Parking a tenant that is parked,
  // or that has nothing to park, is OK and moves nothing.
  virtual Status ParkTenantMemory(Tenant& tenant, ParkedMemory* moved) {
    (void)tenant, (void)moved;
    return Status::Unimplemented(std::string(Name()) + " backend cannot park memory");
  }
  // Brings the tenant's parked memory back at the same addresses. Needs room
  // on each device for all of it: OutOfMemory otherwise (naming the device
  // and the bytes short), with everything still parked.
  virtual Status UnparkTenantMemory(Tenant& tenant, ParkedMemory* moved) {
    (void)tenant, (void)moved;
    return Status::Unimplemented(std::string(Name()) + " backend cannot park memory");
  }
  // The tenant's device memory now: parked and resident bytes per device.
  virtual void TenantMemory(Tenant& tenant, ParkedMemory* parked, ParkedMemory* resident) {
    (void)tenant, (void)parked, (void)resident;
  }

  // --- moving a tenant to another device (migration, issue 16) ----------------
  // Every context of `tenant` on backend device `from`, with its streams,
  // events, modules and device allocations (resident or parked), is on
  // device `to` from now on: the same objects, the same device addresses
  // and bytes. Same contract as parking: nothing of the tenant runs or is
  // queued meanwhile. OutOfMemory when `to` has no room for the resident
  // bytes; Unimplemented for what cannot move (the caller refuses tenants
  // with other objects: arrays, graph memory, pools, virtual memory). Whole
  // or nothing. The default: nothing can move.
  virtual bool CanMoveTenants() const { return false; }
  // Migration between servers (server/README.md "Migration"): MemAlloc of
  // exactly [address, address + bytes) in `ctx`, zero-filled, for a session
  // that held that allocation on another server (so the pointers its memory
  // holds stay right). Every other rule is MemAlloc's (the device's
  // room, MemFree frees it); CUDA_ERROR_ALREADY_MAPPED naming the address
  // when any of it is taken. The default: this backend cannot place memory.
  // Whether MemAllocAt is built (a target asks before it takes a session's
  // bytes).
  virtual bool CanPlaceMemory() const { return false; }
  virtual Status MemAllocAt(Context& ctx, uint64_t address, uint64_t bytes) {
    (void)ctx, (void)address, (void)bytes;
    return Status::Unimplemented(std::string(Name()) +
                                 " backend cannot place memory at a given address yet");
  }
  // Keeps the addresses of `ranges` ({address, bytes}) free in this process
  // until `*held` goes (nothing else this process maps lands there
  // meanwhile: the buffers an arriving session's bytes come in), so that
  // MemAllocAt can have them once `*held` is dropped; CUDA_ERROR_ALREADY_MAPPED
  // naming the first address taken. The default holds nothing (OK, null).
  virtual Status HoldAddresses(std::span<const std::pair<uint64_t, uint64_t>> ranges,
                               std::shared_ptr<void>* held) {
    (void)ranges;
    held->reset();
    return Status::Ok();
  }
  virtual Status MoveTenantToDevice(Tenant& tenant, int from, int to) {
    (void)tenant, (void)from, (void)to;
    return Status::Unimplemented(std::string(Name()) +
                                 " backend cannot move a session to another GPU yet");
  }

  // --- releasing memory (tenants) ---------------------------------------------
  // Memory a tenant frees — MemFree, MemFreeAsync, destroyed arrays and
  // modules (their globals), unmapped virtual memory and memory whose access
  // is taken away — is released once every operation queued before the free
  // on any stream of the tenant has finished. Nothing waits for that: the
  // calls return at once, and the release happens on a backend thread. A
  // context that joins no tenant shares one default tenant with every other
  // such context.
  //
  // A new tenant. The default suits a backend whose driver orders releases
  // itself (the CUDA driver).
  virtual std::unique_ptr<Tenant> CreateTenant() { return std::make_unique<Tenant>(); }
  // `ctx` belongs to `tenant` from now on; called before any work is queued
  // on `ctx`.
  virtual void JoinTenant(Context& ctx, Tenant& tenant) { (void)ctx, (void)tenant; }
  // Calls `done` once every release `tenant` started before this call has
  // happened (the memory is back on its device), perhaps at once on the
  // caller's thread. The default: at once (the driver released it in the call).
  virtual void WhenReleased(Tenant& tenant, Completion done) {
    (void)tenant;
    done(Status::Ok());
  }

 private:
  Status NoVirtualMemory() const {
    constexpr int kCudaErrorNotSupported = 801;  // CUDA_ERROR_NOT_SUPPORTED (no cuda.h here)
    return Status::Cuda(kCudaErrorNotSupported,
                        std::string(Name()) + " backend has no virtual memory management");
  }
  Status NoGraphs() const {
    constexpr int kCudaErrorNotSupported = 801;  // CUDA_ERROR_NOT_SUPPORTED (no cuda.h here)
    return Status::Cuda(kCudaErrorNotSupported,
                        std::string(Name()) + " backend has no stream capture or graphs");
  }
  Status NoArrays() const {
    constexpr int kCudaErrorNotSupported = 801;  // CUDA_ERROR_NOT_SUPPORTED (no cuda.h here)
    return Status::Cuda(kCudaErrorNotSupported,
                        std::string(Name()) + " backend has no CUDA arrays or textures");
  }
};

}  // namespace ferry::backend
