// HostBackend: see host_backend.h for what it models.
//
// Structure. Each Stream owns a StreamQueue (one worker thread). Stream-ordered
// calls append closures to it; the closures capture everything they touch
// (HostBytes owners, copied launch parameters), so nothing the caller owns
// must outlive the call. Cross-stream order is expressed as StreamPoints that
// an operation waits for before it runs:
//  * legacy default stream (CU_STREAM_LEGACY): an operation on it waits for
//    the tail of every blocking stream of the context; an operation on a
//    blocking stream waits for the tail of the legacy stream. Both are taken
//    under ContextState::mu together with the append, so the context's
//    stream-ordered calls form one total order (the one a serial program
//    would see), whichever threads issue them.
//  * cuStreamWaitEvent: the event's latest record point.
// A host gate (EnqueueHostGate) is an operation that blocks its stream's
// worker until the gate opens.
// Completions run on one CompletionThread (see stream_queue.h).
//
// Releasing memory (GpuBackend "releasing memory"): one mechanism,
// ReleaseAfterQueuedWork, serves every release — MemFree, arrays, context
// teardown, MemFreeAsync, module globals, unmapped or narrowed virtual memory,
// graph memory (when its executable graph is destroyed).
// At the free it takes the tail of every stream of the tenant's contexts (a
// ticket per stream) and runs the release once all of them are reached: at
// once when they already are, else on the completion thread. Nothing blocks:
// not the caller, not a stream. The tenant's books (TenantState) count the
// releases still pending, so WhenReleased can tell when the memory, and the
// device bytes accounted for it, are really back.
#include "server/backend/host/host_backend.h"

#include <cuda.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "common/image/module_image.h"
#include "server/backend/host/device_activity.h"
#include "server/backend/host/device_ledger.h"
#include "server/backend/host/device_model.h"
#include "server/backend/host/ferry_host_kernel.h"
#include "server/backend/host/host_graph.h"
#include "server/backend/host/host_link.h"
#include "server/backend/host/stream_queue.h"
#include "server/backend/host/texture_sampler.h"
#include "server/backend/host/virtual_memory.h"

namespace ferry::backend {
namespace {

using host_internal::CompletionThread;
using host_internal::CountHostNodes;
using host_internal::DeviceActivity;
using host_internal::HostGraph;
using host_internal::HostGraphAllocation;
using host_internal::HostGraphExec;
using host_internal::HostGraphMemory;
using host_internal::HostGraphNode;
using host_internal::HostGraphOps;
using host_internal::HostNodeOp;
using host_internal::StreamPoint;
using host_internal::StreamQueue;

constexpr unsigned kKnownContextFlags = 0xff;  // CU_CTX_FLAGS_MASK
constexpr unsigned kKnownEventFlags =
    CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;
// Below this, allocations come from malloc (then cleared); at and above, from
// mmap, whose pages are zero and committed only when touched, so an 8 GiB
// cuMemAlloc costs nothing until used. (No MAP_NORESERVE: a request the
// kernel's overcommit check refuses should fail in MemAlloc, not later as a
// SIGSEGV inside ferryd.)
constexpr uint64_t kMmapThreshold = 64 * 1024;
// madvise(MADV_POPULATE_WRITE), Linux 5.14; older headers lack the name.
constexpr int kMadvPopulateWrite = 23;

Status InvalidValue(std::string message) {
  return Status::Cuda(CUDA_ERROR_INVALID_VALUE, std::move(message));
}

bool CheckedMul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}
bool CheckedAdd(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}
bool RoundUp(uint64_t value, uint64_t alignment, uint64_t* out) {
  uint64_t sum;
  if (!CheckedAdd(value, alignment - 1, &sum)) return false;
  *out = sum / alignment * alignment;
  return true;
}

// Bytes spanned by `rows` rows of `width` bytes starting `pitch` apart.
bool RowSpan(uint64_t width, uint64_t rows, uint64_t pitch, uint64_t* out) {
  if (rows == 0 || width == 0) {
    *out = 0;
    return true;
  }
  uint64_t before_last;
  return CheckedMul(rows - 1, pitch, &before_last) && CheckedAdd(before_last, width, out);
}

// Bytes spanned by `depth` slices, `slice_rows` rows of `pitch` bytes apart,
// of `rows` rows of `width` bytes.
bool SliceSpan(uint64_t width, uint64_t rows, uint64_t depth, uint64_t pitch, uint64_t slice_rows,
               uint64_t* out) {
  if (depth == 0 || rows == 0 || width == 0) {
    *out = 0;
    return true;
  }
  uint64_t last_row;
  return CheckedMul(depth - 1, slice_rows, &last_row) &&
         CheckedAdd(last_row, rows - 1, &last_row) && CheckedMul(last_row, pitch, &last_row) &&
         CheckedAdd(last_row, width, out);
}

// Zero-filled, `kAllocationAlignment`-aligned storage that frees itself. The
// zeroing matters beyond tidiness: sessions share this process, and memory
// one session freed must not show its bytes to the next (README.md invariant 6).
// Returns null when `bytes` cannot be had.
std::shared_ptr<void> AllocateDeviceStorage(uint64_t bytes) {
  // aligned_alloc wants a multiple of the alignment.
  if (bytes == 0 || !RoundUp(bytes, host_internal::kAllocationAlignment, &bytes)) return nullptr;
  if (bytes >= kMmapThreshold) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    return std::shared_ptr<void>(p, [bytes](void* q) { munmap(q, bytes); });
  }
  void* p = std::aligned_alloc(host_internal::kAllocationAlignment, bytes);
  if (p == nullptr) return nullptr;
  std::memset(p, 0, bytes);
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}

uint8_t* AsPointer(uint64_t address) { return reinterpret_cast<uint8_t*>(address); }

std::string HexAddress(uint64_t address) {
  char text[24];
  std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(address));
  return text;
}

int64_t SteadyNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// --- objects ---------------------------------------------------------------

// Runs `done` on the completion thread once every point is reached, with the
// first failure among the streams, if any. `points` must not be empty.
void WhenAllReached(std::vector<StreamPoint> points, Completion done) {
  struct Join {
    std::atomic<size_t> remaining;
    std::mutex mu;
    Status first_error;
    Completion done;
  };
  auto join = std::make_shared<Join>();
  join->remaining = points.size();
  join->done = std::move(done);
  for (const StreamPoint& p : points) {
    p.queue->WhenReached(p.seq, [join](Status s) {
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(join->mu);
        if (join->first_error.ok()) join->first_error = s;
      }
      if (join->remaining.fetch_sub(1) == 1) {
        Completion done = std::move(join->done);
        done(join->first_error);
      }
    });
  }
}

struct ContextState;

// A tenant's contexts and the releases it has started but not finished
// (GpuBackend::Tenant). Shared by the Tenant object, its contexts and its
// pending releases; thread-safe. No ContextState::mu is taken while mu is held
// (PendingTails copies the context list first).
struct TenantState {
  std::mutex mu;
  std::vector<std::weak_ptr<ContextState>> contexts ABSL_GUARDED_BY(mu);
  uint64_t started ABSL_GUARDED_BY(mu) = 0;        // tickets handed out
  std::set<uint64_t> pending ABSL_GUARDED_BY(mu);  // tickets not yet released
  // WhenReleased callers: each runs once no ticket below its number is pending.
  std::vector<std::pair<uint64_t, Completion>> waiters ABSL_GUARDED_BY(mu);

  void Join(const std::shared_ptr<ContextState>& ctx) {
    std::lock_guard<std::mutex> lock(mu);
    contexts.push_back(ctx);
  }
  void Leave(const ContextState* ctx) {
    std::lock_guard<std::mutex> lock(mu);
    std::erase_if(contexts, [ctx](const std::weak_ptr<ContextState>& c) {
      auto live = c.lock();
      return live == nullptr || live.get() == ctx;
    });
  }
  // The tails not yet reached of every stream of every context (defined
  // after ContextState).
  std::vector<StreamPoint> PendingTails();

  uint64_t StartRelease() {
    std::lock_guard<std::mutex> lock(mu);
    pending.insert(started);
    return started++;
  }
  void FinishRelease(uint64_t ticket) {
    std::vector<Completion> due;
    {
      std::lock_guard<std::mutex> lock(mu);
      pending.erase(ticket);
      const uint64_t oldest = pending.empty() ? started : *pending.begin();
      for (auto it = waiters.begin(); it != waiters.end();) {
        if (it->first > oldest) {
          ++it;
          continue;
        }
        due.push_back(std::move(it->second));
        it = waiters.erase(it);
      }
    }
    for (Completion& done : due) done(Status::Ok());
  }
  void WhenReleased(Completion done) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!pending.empty() && *pending.begin() < started) {
        waiters.emplace_back(started, std::move(done));
        return;
      }
    }
    done(Status::Ok());
  }
};

// Release `ticket` of `tenant` (TenantState::StartRelease): runs `release`
// once each of `before` is reached — at once on this thread when all are,
// else on the completion thread — then counts the release as done.
void ReleaseWhenReached(std::shared_ptr<TenantState> tenant, uint64_t ticket,
                        std::vector<StreamPoint> before, std::function<void()> release) {
  std::erase_if(before, [](const StreamPoint& p) { return p.Reached(); });
  auto finish = [tenant = std::move(tenant), ticket, release = std::move(release)](Status) {
    release();
    tenant->FinishRelease(ticket);
  };
  if (before.empty()) {
    finish(Status::Ok());
  } else {
    WhenAllReached(std::move(before), std::move(finish));
  }
}

// The one way this backend releases memory: `release` runs once every
// operation queued so far on any stream of `tenant` has finished (a ticket
// per stream: its tail now). WhenReleased counts it from this call.
void ReleaseAfterQueuedWork(const std::shared_ptr<TenantState>& tenant,
                            std::function<void()> release) {
  const uint64_t ticket = tenant->StartRelease();
  ReleaseWhenReached(tenant, ticket, tenant->PendingTails(), std::move(release));
}

// What a context's streams, events and modules share. Outlives the Context
// object if any of them outlive it (they hold a reference).
struct ContextState {
  ContextState(int device_index, unsigned context_flags)
      : device(device_index), flags(context_flags) {
    for (int i = 0; i < host_internal::kLimitCount; ++i) limits[i] = host_internal::DefaultLimit(i);
  }

  // Changes only while the context's tenant is idle (MoveTenantToDevice).
  mutable std::atomic<int> device;
  const unsigned flags;
  std::shared_ptr<StreamQueue> legacy;  // set once, before the context is shared

  struct StreamEntry {
    const void* key;  // the HostStream
    std::shared_ptr<StreamQueue> queue;
    bool non_blocking;
  };
  // Serializes the stream-ordered appends of this context (see file comment).
  std::mutex mu;
  std::vector<StreamEntry> streams ABSL_GUARDED_BY(mu);  // all but the legacy stream
  // cuCtxRecordEvent: a queue of its own whose operations wait for every
  // stream's tail at the time of the record (made on first use; shut down
  // with the context).
  std::shared_ptr<StreamQueue> marker ABSL_GUARDED_BY(mu);
  // cuCtxWaitEvent: points every operation appended to the context waits
  // for, until they are reached.
  std::vector<StreamPoint> barriers ABSL_GUARDED_BY(mu);

  std::mutex limits_mu;
  std::array<uint64_t, host_internal::kLimitCount> limits ABSL_GUARDED_BY(limits_mu);

  // Set by AbandonQueuedWork: launches of this context that have not started
  // return at once instead of running. Shared with the queued operations.
  const std::shared_ptr<std::atomic<bool>> abandoned = std::make_shared<std::atomic<bool>>(false);

  // The tails of every stream of the context, legacy included.
  std::vector<StreamPoint> Tails() {
    std::lock_guard<std::mutex> lock(mu);
    std::vector<StreamPoint> points;
    points.reserve(streams.size() + 1);
    points.push_back(legacy->Tail());
    for (const StreamEntry& e : streams) points.push_back(e.queue->Tail());
    return points;
  }

  // The tenant whose releases wait for this context's work (JoinTenant
  // changes it before any work is queued).
  std::shared_ptr<TenantState> tenant() {
    std::lock_guard<std::mutex> lock(mu);
    return tenant_;
  }
  void set_tenant(std::shared_ptr<TenantState> tenant) {
    std::lock_guard<std::mutex> lock(mu);
    tenant_ = std::move(tenant);
  }

 private:
  std::shared_ptr<TenantState> tenant_ ABSL_GUARDED_BY(mu);
};

std::vector<StreamPoint> TenantState::PendingTails() {
  std::vector<std::shared_ptr<ContextState>> live;
  {
    std::lock_guard<std::mutex> lock(mu);
    std::erase_if(contexts, [](const std::weak_ptr<ContextState>& c) { return c.expired(); });
    for (const auto& c : contexts) {
      if (auto ctx = c.lock()) live.push_back(std::move(ctx));
    }
  }
  std::vector<StreamPoint> points;
  for (const auto& ctx : live) {
    for (StreamPoint& p : ctx->Tails()) {
      if (!p.Reached()) points.push_back(std::move(p));
    }
  }
  return points;
}

class HostTenant final : public Tenant {
 public:
  const std::shared_ptr<TenantState> state = std::make_shared<TenantState>();
};

// A stream capture: what its streams queued, in the order the calls came.
// One list serves the origin and every stream joined to it through an event
// wait (fork/join): a node's dependencies are always queued before it, so
// arrival order is a valid order of the graph. The origin's EndCapture sets
// `ended`; a joined stream then stops capturing at its next use. Guarded by
// the streams' ContextState::mu (a capture's streams share one context).
struct HostCapture {
  HostGraphOps ops;
  bool ended = false;
  // BeginCaptureToGraph: the graph the ops join at the end, the first after
  // `after` (nodes of it).
  HostGraph* target = nullptr;
  std::vector<GraphNode*> after;
  // UpdateCaptureDependencies: more nodes the op at an index (of `ops`)
  // depends on; an index in `set_at` does not depend on `after`.
  std::map<size_t, std::vector<GraphNode*>> extra_after;
  std::set<size_t> set_at;
};

class HostStream final : public Stream {
 public:
  HostStream(std::shared_ptr<ContextState> ctx, std::shared_ptr<StreamQueue> queue, bool legacy,
             bool non_blocking)
      : ctx_(std::move(ctx)),
        queue_(std::move(queue)),
        legacy_(legacy),
        non_blocking_(non_blocking) {}

  // Waits for the queued work, then joins the worker (GpuBackend contract).
  // Stream memory waits still waiting end first (cancel_waits).
  ~HostStream() override {
    cancel_waits_->store(true);
    if (!legacy_) {
      std::lock_guard<std::mutex> lock(ctx_->mu);
      auto& v = ctx_->streams;
      v.erase(std::remove_if(v.begin(), v.end(),
                             [this](const ContextState::StreamEntry& e) { return e.key == this; }),
              v.end());
    }
    queue_->Shutdown();
  }

  ContextState& ctx() const { return *ctx_; }
  const ContextState* ctx_state() const { return ctx_.get(); }
  StreamQueue& queue() const { return *queue_; }
  const std::shared_ptr<StreamQueue>& queue_ptr() const { return queue_; }
  bool legacy() const { return legacy_; }
  bool non_blocking() const { return non_blocking_; }
  // Set when the stream is being destroyed: a stream memory wait queued on
  // it stops waiting, so destroying it cannot hang on a value never written.
  const std::shared_ptr<std::atomic<bool>>& cancel_waits() const { return cancel_waits_; }

  // stream capture: while `capture` is set and not ended, what is appended
  // to the stream is recorded there instead of queued. Guarded by ctx().mu
  // (the lock every append holds).
  std::shared_ptr<HostCapture> capture;
  // The capture the stream records into, or nullptr; forgets an ended one.
  // Call with ctx().mu held.
  HostCapture* ActiveCapture() {
    if (capture != nullptr && capture->ended) capture = nullptr;
    return capture.get();
  }

 private:
  const std::shared_ptr<std::atomic<bool>> cancel_waits_ = std::make_shared<std::atomic<bool>>();
  const std::shared_ptr<ContextState> ctx_;
  const std::shared_ptr<StreamQueue> queue_;
  const bool legacy_;
  const bool non_blocking_;
};

// graph node kinds: an event node's operation. Run, it does nothing:
// LaunchGraph splits the replay at it and queues the record or the wait as
// the ordinary stream operation (RecordEvent, StreamWaitEvent), so a wait
// never blocks a stream worker on a record that only later work of the same
// worker would make, and a record is seen by every event call.
struct HostEventNodeOp {
  Event* event;
  bool wait;
  void operator()() const {}
};

// One cuEventRecord: where it sits in its stream, and when it was reached.
struct EventRecord {
  StreamPoint point;
  // Recorded on a capturing stream: a stream waiting on it joins the capture.
  std::shared_ptr<HostCapture> capture;
  std::atomic<int64_t> reached_ns{0};  // written by the worker before `point` is reached
};

class HostEvent final : public Event {
 public:
  explicit HostEvent(unsigned flags) : flags_(flags) {}

  bool timing() const { return (flags_ & CU_EVENT_DISABLE_TIMING) == 0; }

  std::shared_ptr<EventRecord> latest() {
    std::lock_guard<std::mutex> lock(mu_);
    return latest_;
  }
  void set_latest(std::shared_ptr<EventRecord> record) {
    std::lock_guard<std::mutex> lock(mu_);
    latest_ = std::move(record);
  }

 private:
  const unsigned flags_;
  std::mutex mu_;
  std::shared_ptr<EventRecord> latest_ ABSL_GUARDED_BY(mu_);  // null: never recorded
};

class HostFunction final : public Function {
 public:
  HostFunction(const ContextState* ctx, std::string name, const std::vector<KernelParam>& params,
               ferry_host_kernel_fn fn)
      : ctx_(ctx), name_(std::move(name)), fn_(fn) {
    auto offsets = std::make_shared<std::vector<uint32_t>>();
    for (const KernelParam& p : params) {
      offsets->push_back(p.offset);
      params_end_ = std::max(params_end_, static_cast<uint64_t>(p.offset) + p.size);
    }
    offsets_ = std::move(offsets);
    for (int i = 0; i < host_internal::kFunctionAttributeCount; ++i) {
      attributes_[i] = host_internal::DefaultFunctionAttribute(i);
    }
  }

  const ContextState* ctx() const { return ctx_; }
  const std::string& name() const { return name_; }
  // Shared with queued launches, which may run after the module is gone only
  // if the caller broke the destruction order; they then still read valid
  // offsets.
  const std::shared_ptr<const std::vector<uint32_t>>& offsets() const { return offsets_; }
  uint64_t params_end() const { return params_end_; }
  ferry_host_kernel_fn fn() const { return fn_; }

  int attribute(int a) {
    std::lock_guard<std::mutex> lock(mu_);
    return attributes_[a];
  }
  void set_attribute(int a, int value) {
    std::lock_guard<std::mutex> lock(mu_);
    attributes_[a] = value;
  }
  void set_cache_config(int config) {
    std::lock_guard<std::mutex> lock(mu_);
    cache_config_ = config;
  }

 private:
  const ContextState* const ctx_;  // of the module; identity only
  const std::string name_;
  std::shared_ptr<const std::vector<uint32_t>> offsets_;  // set in the constructor
  uint64_t params_end_ = 0;        // bytes the packed buffer must hold; set in the constructor
  const ferry_host_kernel_fn fn_;  // null: no host implementation
  std::mutex mu_;
  std::array<int, host_internal::kFunctionAttributeCount> attributes_ ABSL_GUARDED_BY(mu_);
  // Stored for completeness; the host has no L1/shared split to apply it to.
  int cache_config_ ABSL_GUARDED_BY(mu_) = CU_FUNC_CACHE_PREFER_NONE;
};

class HostModule final : public Module {
 public:
  explicit HostModule(std::shared_ptr<ContextState> ctx) : ctx_(std::move(ctx)) {}

  // Kernels queued on any stream of the tenant may still read or write its
  // globals: they go once that work has finished. (Queued launches hold
  // nothing else of the module: see HostFunction::offsets.)
  ~HostModule() override {
    std::vector<std::shared_ptr<void>> storages;
    for (auto& [name, global] : globals) storages.push_back(std::move(global.storage));
    ReleaseAfterQueuedWork(ctx_->tenant(),
                           [storages = std::move(storages)]() mutable { storages.clear(); });
  }

  struct Global {
    std::shared_ptr<void> storage;
    uint64_t size = 0;
  };

  // Written only while loading, before the module is handed out; read-only
  // afterwards, hence no lock.
  std::vector<std::unique_ptr<HostFunction>> functions;
  absl::flat_hash_map<std::string, HostFunction*> functions_by_name;
  absl::flat_hash_map<std::string, Global> globals;

 private:
  const std::shared_ptr<ContextState> ctx_;
};

// A library keeps its parsed image; each context that uses it gets a
// HostModule built from it (so each has its own globals).
class HostLibrary final : public Library {
 public:
  image::ImageLayout layout;  // written once while loading; read-only after
};

class HostBackend;

class HostContext final : public Context {
 public:
  HostContext(HostBackend* backend, std::shared_ptr<ContextState> state,
              std::unique_ptr<HostStream> legacy)
      : backend_(backend), state_(std::move(state)), legacy_(std::move(legacy)) {}
  ~HostContext() override;

  const std::shared_ptr<ContextState>& state() const { return state_; }
  HostStream& legacy() const { return *legacy_; }

 private:
  HostBackend* const backend_;
  const std::shared_ptr<ContextState> state_;
  std::unique_ptr<HostStream> legacy_;
};

// A memory pool's state, shared by the pool and its outstanding allocations
// (which may outlive the pool). Memory goes back to the device as soon as an
// allocation is freed, so reserved memory is always the used memory and
// trimming has nothing to release.
struct HostMemPoolState {
  explicit HostMemPoolState(int device, uint64_t max_size) : device(device), max_size(max_size) {}
  const int device;
  const uint64_t max_size;  // 0: only the device's memory limits it
  std::mutex mu;
  int follow_event_dependencies ABSL_GUARDED_BY(mu) = 1;
  int allow_opportunistic ABSL_GUARDED_BY(mu) = 1;
  int allow_internal_dependencies ABSL_GUARDED_BY(mu) = 1;
  uint64_t release_threshold ABSL_GUARDED_BY(mu) = 0;
  uint64_t used ABSL_GUARDED_BY(mu) = 0;
  uint64_t used_high ABSL_GUARDED_BY(mu) = 0;
  uint64_t reserved_high ABSL_GUARDED_BY(mu) = 0;

  void Release(uint64_t bytes) {
    std::lock_guard<std::mutex> lock(mu);
    used -= bytes;
  }
};

class HostMemPool final : public MemPool {
 public:
  explicit HostMemPool(std::shared_ptr<HostMemPoolState> state) : state(std::move(state)) {}
  const std::shared_ptr<HostMemPoolState> state;
};

// --- CUDA arrays, textures and surfaces ----------------------------------------
//
// An array is an allocation of the array's bytes laid out without padding:
// rows of width x element bytes, slices (depth or layers) of rows. Copies
// reach it as device memory at Address(). A mipmapped array is one such
// array per level.
class HostArray final : public Array {
 public:
  HostArray(HostBackend* backend, std::shared_ptr<ContextState> ctx, uint64_t base,
            const ArrayDescriptor& descriptor, unsigned element_bytes)
      : backend(backend),
        ctx(std::move(ctx)),
        base(base),
        descriptor(descriptor),
        element_bytes(element_bytes),
        row_pitch(descriptor.width * element_bytes),
        slice_pitch(row_pitch * ArrayRows(descriptor)) {}
  ~HostArray() override;

  uint64_t Address(uint64_t x_bytes, uint64_t y, uint64_t z) const {
    return base + z * slice_pitch + y * row_pitch + x_bytes;
  }

  HostBackend* const backend;
  const std::shared_ptr<ContextState> ctx;
  const uint64_t base;
  const ArrayDescriptor descriptor;
  const unsigned element_bytes;
  const uint64_t row_pitch, slice_pitch;
};

class HostMipmappedArray final : public MipmappedArray {
 public:
  std::vector<std::unique_ptr<HostArray>> levels;
};

// A texture or surface object as host kernels reach it: its texels (kept
// alive by `storage` even if the memory under it is freed first, which CUDA
// leaves undefined), its description, and the context it belongs to (a
// launch of another context does not resolve it).
struct HostTextureState {
  const ContextState* owner = nullptr;
  bool surface = false;
  host_internal::TexelLayout layout;
  TextureDescription texture;
  std::shared_ptr<void> storage;
};

// Every texture and surface object of every host backend in the process, by
// value. Values are never reused, so a stale or guessed one resolves to
// nothing, or to an object the owner check then refuses. Thread-safe.
class TextureRegistry {
 public:
  static TextureRegistry& Get() {
    static TextureRegistry* registry = new TextureRegistry;  // never destroyed
    return *registry;
  }
  uint64_t Add(std::shared_ptr<const HostTextureState> state) {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t value = next_value_++;
    objects_.emplace(value, std::move(state));
    return value;
  }
  void Remove(uint64_t value) {
    std::shared_ptr<const HostTextureState> state;  // dropped outside the lock
    std::lock_guard<std::mutex> lock(mu_);
    auto it = objects_.find(value);
    if (it == objects_.end()) return;
    state = std::move(it->second);
    objects_.erase(it);
  }
  // The object `value` names for a launch in context `scope`, or null.
  std::shared_ptr<const HostTextureState> Resolve(uint64_t value, const void* scope, bool surface) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = objects_.find(value);
    if (it == objects_.end() || it->second->owner != scope || it->second->surface != surface) {
      return nullptr;
    }
    return it->second;
  }

 private:
  std::mutex mu_;
  uint64_t next_value_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, std::shared_ptr<const HostTextureState>> objects_
      ABSL_GUARDED_BY(mu_);
};

class HostTextureObject final : public TextureObject {
 public:
  explicit HostTextureObject(uint64_t value) : value_(value) {}
  ~HostTextureObject() override { TextureRegistry::Get().Remove(value_); }
  uint64_t value() const override { return value_; }

 private:
  const uint64_t value_;
};

// The services of ferry_host_kernel.h. A launch's services_scope is its
// context's ContextState.
int ServiceTexFetch(const ferry_launch* launch, unsigned long long tex, float x, float y, float z,
                    float out[4]) {
  auto state = TextureRegistry::Get().Resolve(tex, launch->services_scope, false);
  if (state == nullptr) return FERRY_HOST_BAD_OBJECT;
  if (state->texture.filter_mode == CU_TR_FILTER_MODE_LINEAR) {
    host_internal::SampleLinear(state->layout, state->texture, x, y, z, out);
    return FERRY_HOST_OK;
  }
  const uint8_t* element = host_internal::FetchElement(state->layout, state->texture, x, y, z);
  host_internal::ElementToFloats(state->layout, state->texture, element, out);
  return FERRY_HOST_OK;
}
int ServiceTexFetchElement(const ferry_launch* launch, unsigned long long tex, float x, float y,
                           float z, void* out, unsigned bytes) {
  auto state = TextureRegistry::Get().Resolve(tex, launch->services_scope, false);
  if (state == nullptr) return FERRY_HOST_BAD_OBJECT;
  if (bytes != state->layout.element_bytes) return FERRY_HOST_OUT_OF_RANGE;
  const uint8_t* element = host_internal::FetchElement(state->layout, state->texture, x, y, z);
  if (element == nullptr) {
    std::memset(out, 0, bytes);  // the border (its color applies to float reads)
  } else {
    std::memcpy(out, element, bytes);
  }
  return FERRY_HOST_OK;
}
int ServiceSurfRead(const ferry_launch* launch, unsigned long long surf, int x_bytes, int y, int z,
                    void* out, unsigned bytes) {
  auto state = TextureRegistry::Get().Resolve(surf, launch->services_scope, true);
  if (state == nullptr) return FERRY_HOST_BAD_OBJECT;
  const uint8_t* p = host_internal::SurfaceBytes(state->layout, x_bytes, y, z, bytes);
  if (p == nullptr) return FERRY_HOST_OUT_OF_RANGE;
  std::memcpy(out, p, bytes);
  return FERRY_HOST_OK;
}
int ServiceSurfWrite(const ferry_launch* launch, unsigned long long surf, int x_bytes, int y, int z,
                     const void* in, unsigned bytes) {
  auto state = TextureRegistry::Get().Resolve(surf, launch->services_scope, true);
  if (state == nullptr) return FERRY_HOST_BAD_OBJECT;
  uint8_t* p = host_internal::SurfaceBytes(state->layout, x_bytes, y, z, bytes);
  if (p == nullptr) return FERRY_HOST_OUT_OF_RANGE;
  std::memcpy(p, in, bytes);
  return FERRY_HOST_OK;
}
constexpr ferry_host_services kHostServices = {sizeof(ferry_host_services), ServiceTexFetch,
                                               ServiceTexFetchElement, ServiceSurfRead,
                                               ServiceSurfWrite};

struct KernelLibrary {
  std::string path;
  void* handle;
};

// --- the backend -------------------------------------------------------------

class HostBackend final : public GpuBackend {
 public:
  // `books`: options.ledger, or books of its own.
  HostBackend(const HostBackendOptions& options, std::vector<KernelLibrary> libraries,
              std::shared_ptr<DeviceLedger> books)
      : device_memory_(DeviceMemories(options)),
        libraries_(std::move(libraries)),
        books_(std::move(books)),
        completions_(std::make_unique<CompletionThread>()) {
    for (size_t i = 0; i < device_memory_.size(); ++i) {
      devices_.push_back(
          host_internal::MakeDeviceDescription(static_cast<int>(i), device_memory_[i]));
      kernel_activity_.push_back(std::make_shared<DeviceActivity>());
      memory_activity_.push_back(std::make_shared<DeviceActivity>());
    }
  }

  // One entry per device: device_memories when given, else device_count
  // times device_memory.
  static std::vector<uint64_t> DeviceMemories(const HostBackendOptions& options) {
    if (!options.device_memories.empty()) return options.device_memories;
    return std::vector<uint64_t>(static_cast<size_t>(options.device_count), options.device_memory);
  }

  ~HostBackend() override {
    // Runs the completions still due while the rest of the backend exists.
    completions_.reset();
    for (const KernelLibrary& lib : libraries_) dlclose(lib.handle);
  }

  std::string_view Name() const override { return "host"; }
  int DriverVersion() const override { return host_internal::kDriverVersion; }
  const std::vector<DeviceDescription>& Devices() const override { return devices_; }

  // --- contexts ---------------------------------------------------------------

  Status CreateContext(int device, unsigned flags, std::unique_ptr<Context>* out) override {
    if (device < 0 || device >= static_cast<int>(devices_.size())) {
      return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "no device " + std::to_string(device));
    }
    const unsigned sched = flags & CU_CTX_SCHED_MASK;
    if ((flags & ~kKnownContextFlags) != 0 ||
        (sched != CU_CTX_SCHED_AUTO && sched != CU_CTX_SCHED_SPIN && sched != CU_CTX_SCHED_YIELD &&
         sched != CU_CTX_SCHED_BLOCKING_SYNC)) {
      return InvalidValue("bad context flags " + std::to_string(flags));
    }
    auto state = std::make_shared<ContextState>(device, flags);
    FERRY_RETURN_IF_ERROR(StreamQueue::Create(completions_.get(), &state->legacy));
    state->set_tenant(default_tenant_);
    default_tenant_->Join(state);
    auto legacy = std::make_unique<HostStream>(state, state->legacy, /*legacy=*/true,
                                               /*non_blocking=*/false);
    *out = std::make_unique<HostContext>(this, std::move(state), std::move(legacy));
    return Status::Ok();
  }

  Stream& LegacyStream(Context& ctx) override { return AsContext(ctx).legacy(); }

  Status GetLimit(Context& ctx, int limit, uint64_t* value) override {
    if (limit < 0 || limit >= host_internal::kLimitCount) {
      return Status::Cuda(CUDA_ERROR_UNSUPPORTED_LIMIT, "unknown limit " + std::to_string(limit));
    }
    ContextState& c = *AsContext(ctx).state();
    std::lock_guard<std::mutex> lock(c.limits_mu);
    *value = c.limits[limit];
    return Status::Ok();
  }

  Status SetLimit(Context& ctx, int limit, uint64_t value) override {
    FERRY_RETURN_IF_ERROR(host_internal::CheckSetLimit(limit, value));
    ContextState& c = *AsContext(ctx).state();
    std::lock_guard<std::mutex> lock(c.limits_mu);
    c.limits[limit] = value;
    return Status::Ok();
  }

  // Host memory has no persisting L2 lines: nothing to reset.
  Status ResetPersistingL2Cache(Context& ctx) override { return Status::Ok(); }

  void WhenContextIdle(Context& ctx, Completion done) override {
    WhenAllReached(AsContext(ctx).state()->Tails(), std::move(done));
  }

  void AbandonQueuedWork(Context& ctx) override {
    AsContext(ctx).state()->abandoned->store(true, std::memory_order_relaxed);
  }

  // --- releasing memory (tenants) ---------------------------------------------

  std::unique_ptr<Tenant> CreateTenant() override { return std::make_unique<HostTenant>(); }

  void JoinTenant(Context& ctx, Tenant& tenant) override {
    const std::shared_ptr<ContextState>& state = AsContext(ctx).state();
    const std::shared_ptr<TenantState>& joined = static_cast<HostTenant&>(tenant).state;
    state->tenant()->Leave(state.get());
    joined->Join(state);
    state->set_tenant(joined);
  }

  void WhenReleased(Tenant& tenant, Completion done) override {
    static_cast<HostTenant&>(tenant).state->WhenReleased(std::move(done));
  }

  // --- parking ----------------------------------------------------------------
  // A parked allocation's bytes live in `parked` (host memory that is not the
  // device's); its addresses stay this allocation's. Storage from mmap (at
  // least kMmapThreshold bytes) is replaced by an inaccessible reservation of
  // the same range, so its pages go back to the system and a stray touch
  // faults instead of reading stale bytes; smaller storage is heap memory
  // that cannot be unmapped on its own, so it is cleared and keeps its pages
  // (under 64 KiB each). Either way the bytes leave the device's books.

  bool CanParkMemory() const override { return true; }

  // Both copy outside mu_ (seconds for GiBs; other tenants' allocations,
  // frees and releases must not wait for that): what they copy is found
  // under mu_ by address, with its storage held, and the change is made
  // under mu_ again. The tenant is idle (the contract), so none of its
  // allocations comes or goes meanwhile.
  struct ParkingEntry {
    uint64_t base = 0;
    std::shared_ptr<void> storage;
    std::shared_ptr<uint8_t[]> copy;
    uint64_t bytes = 0;
    int device = 0;
  };

  Status ParkTenantMemory(Tenant& tenant, ParkedMemory* moved) override {
    const std::set<const ContextState*> owners = TenantContexts(tenant);
    std::vector<ParkingEntry> entries;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [base, allocation] : allocations_) {
        if (allocation.parked != nullptr || !owners.contains(allocation.owner)) continue;
        entries.push_back({base, allocation.storage, nullptr, allocation.bytes, allocation.device});
      }
    }
    // Copy everything first, so that a failure changes nothing.
    for (ParkingEntry& entry : entries) {
      entry.copy = ParkingSpace(entry.bytes);
      if (entry.copy == nullptr) {
        return Status::OutOfMemory("host memory exhausted parking " + std::to_string(entry.bytes) +
                                   " bytes");
      }
      std::memcpy(entry.copy.get(), entry.storage.get(), entry.bytes);
    }
    for (ParkingEntry& entry : entries) {
      void* base = entry.storage.get();
      if (entry.bytes >= kMmapThreshold) {
        // Same mapping, its pages dropped and no access left (a stray
        // touch faults instead of reading stale bytes).
        madvise(base, entry.bytes, MADV_DONTNEED);
        if (mprotect(base, entry.bytes, PROT_NONE) != 0) {
          std::memset(base, 0, entry.bytes);  // cleared, at least
        }
      } else {
        std::memset(base, 0, entry.bytes);
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (ParkingEntry& entry : entries) {
      auto it = allocations_.find(entry.base);
      if (it == allocations_.end()) continue;  // cannot happen while the tenant is idle
      it->second.parked = std::move(entry.copy);
      books_->Give(entry.device, entry.bytes);
      if (moved != nullptr) moved->Add(entry.device, entry.bytes);
    }
    return Status::Ok();
  }

  Status UnparkTenantMemory(Tenant& tenant, ParkedMemory* moved) override {
    const std::set<const ContextState*> owners = TenantContexts(tenant);
    std::vector<ParkingEntry> entries;
    std::vector<uint64_t> needed(device_memory_.size(), 0);
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [base, allocation] : allocations_) {
        if (allocation.parked == nullptr || !owners.contains(allocation.owner)) continue;
        entries.push_back(
            {base, allocation.storage, allocation.parked, allocation.bytes, allocation.device});
        needed[allocation.device] += allocation.bytes;
      }
    }
    int short_device = 0;
    if (!books_->TakeAll(needed, &short_device)) {
      const int d = short_device;
      return Status::OutOfMemory("cannot bring back " + std::to_string(needed[d]) +
                                 " parked bytes on device " + std::to_string(d) + ": " +
                                 std::to_string(books_->free_bytes(d)) + " of " +
                                 std::to_string(device_memory_[d]) + " bytes free");
    }
    // Map everything back before copying, so that a failure changes nothing.
    std::vector<const ParkingEntry*> remapped;
    for (const ParkingEntry& entry : entries) {
      if (entry.bytes < kMmapThreshold) continue;
      if (mprotect(entry.storage.get(), entry.bytes, PROT_READ | PROT_WRITE) != 0) {
        const int err = errno;
        for (const ParkingEntry* undo : remapped) {
          mprotect(undo->storage.get(), undo->bytes, PROT_NONE);
        }
        for (size_t d = 0; d < needed.size(); ++d) books_->Give(static_cast<int>(d), needed[d]);
        return Status::OutOfMemory("cannot map " + std::to_string(entry.bytes) +
                                   " parked bytes back: " + std::strerror(err));
      }
      remapped.push_back(&entry);
    }
    for (const ParkingEntry& entry : entries) {
      // The pages in place first, in one call (as ParkingSpace does); a
      // kernel without MADV_POPULATE_WRITE faults them in during the copy.
      if (entry.bytes >= kMmapThreshold) {
        madvise(entry.storage.get(), entry.bytes, kMadvPopulateWrite);
      }
      std::memcpy(entry.storage.get(), entry.copy.get(), entry.bytes);
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (const ParkingEntry& entry : entries) {
      auto it = allocations_.find(entry.base);
      if (it != allocations_.end()) it->second.parked.reset();
      if (moved != nullptr) moved->Add(entry.device, entry.bytes);
    }
    return Status::Ok();
  }

  // Moving: the host backend's device memory is this process's memory, so
  // nothing is copied; the books and the labels move.
  bool CanMoveTenants() const override { return true; }
  Status MoveTenantToDevice(Tenant& tenant, int from, int to) override {
    FERRY_RETURN_IF_ERROR(CheckDevice(from));
    FERRY_RETURN_IF_ERROR(CheckDevice(to));
    if (from == to) return Status::Ok();
    const std::set<const ContextState*> owners = TenantContexts(tenant);
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t resident = 0;
    for (const auto& [base, allocation] : allocations_) {
      if (!owners.contains(allocation.owner) || allocation.device != from) continue;
      if (allocation.pool != nullptr) {
        return Status::Unimplemented("allocations from a memory pool cannot move yet");
      }
      if (allocation.parked == nullptr) resident += allocation.bytes;
    }
    std::vector<uint64_t> needed(device_memory_.size(), 0);
    needed[to] = resident;
    int short_device = 0;
    if (!books_->TakeAll(needed, &short_device)) {
      return Status::OutOfMemory("device " + std::to_string(to) + " has " +
                                 std::to_string(books_->free_bytes(to)) + " bytes free; " +
                                 std::to_string(resident) + " are needed");
    }
    books_->Give(from, resident);
    for (auto& [base, allocation] : allocations_) {
      if (owners.contains(allocation.owner) && allocation.device == from) allocation.device = to;
    }
    for (const ContextState* context : owners) {
      if (context->device == from) context->device = to;
    }
    return Status::Ok();
  }

  void TenantMemory(Tenant& tenant, ParkedMemory* parked, ParkedMemory* resident) override {
    const std::set<const ContextState*> owners = TenantContexts(tenant);
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [base, allocation] : allocations_) {
      if (!owners.contains(allocation.owner)) continue;
      ParkedMemory* into = allocation.parked != nullptr ? parked : resident;
      if (into != nullptr) into->Add(allocation.device, allocation.bytes);
    }
  }

  // Host memory for `bytes` parked bytes, or null. Large ones are mapped
  // with their pages already in place (MAP_POPULATE: one call instead of a
  // page fault per page during the copy, most of a park's time otherwise).
  static std::shared_ptr<uint8_t[]> ParkingSpace(uint64_t bytes) {
    if (bytes < kMmapThreshold) {
      return std::shared_ptr<uint8_t[]>(new (std::nothrow) uint8_t[bytes]);
    }
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    return std::shared_ptr<uint8_t[]>(static_cast<uint8_t*>(p),
                                      [bytes](uint8_t* q) { munmap(q, bytes); });
  }

  // The contexts of `tenant` (identity only).
  static std::set<const ContextState*> TenantContexts(Tenant& tenant) {
    TenantState& state = *static_cast<HostTenant&>(tenant).state;
    std::lock_guard<std::mutex> lock(state.mu);
    std::set<const ContextState*> owners;
    for (const auto& weak : state.contexts) {
      if (auto ctx = weak.lock()) owners.insert(ctx.get());
    }
    return owners;
  }

  // --- memory ---------------------------------------------------------------

  Status MemAlloc(Context& ctx, uint64_t bytes, uint64_t* dptr) override {
    const ContextState* owner = AsContext(ctx).state().get();
    return Allocate(owner, owner->device, bytes, dptr);
  }

  // Pages at exactly `address` in this process: the interior of the range
  // is this allocation's own mapping; its first and last page may be shared
  // with a neighbour placed before (allocations below kMmapThreshold need
  // not start or end on a page), so those are kept per page
  // (placed_pages_) and unmapped when the last allocation on them goes.
  bool CanPlaceMemory() const override { return true; }
  Status MemAllocAt(Context& ctx, uint64_t address, uint64_t bytes) override {
    const ContextState* owner = AsContext(ctx).state().get();
    const int device = owner->device;
    uint64_t rounded, end;
    if (bytes == 0 || address == 0 || address % host_internal::kAllocationAlignment != 0 ||
        !RoundUp(bytes, host_internal::kAllocationAlignment, &rounded) ||
        !CheckedAdd(address, rounded, &end)) {
      return InvalidValue("no allocation can be placed at " + std::to_string(address) + " (" +
                          std::to_string(bytes) + " bytes)");
    }
    const std::string where = "[" + HexAddress(address) + ", " + HexAddress(end) + ")";
    if (!books_->Take(device, rounded)) {
      return Status::OutOfMemory("cannot allocate " + std::to_string(bytes) + " bytes on device " +
                                 std::to_string(device) + ": " +
                                 std::to_string(books_->free_bytes(device)) + " of " +
                                 std::to_string(device_memory_[device]) + " bytes free");
    }
    std::shared_ptr<PlacedPages> pages;
    std::vector<std::pair<uint64_t, uint64_t>> reused;
    Status placed = PlacePages(address, end, &pages, &reused);
    std::lock_guard<std::mutex> lock(mu_);
    // Checked where it is added (another arrival may place a neighbour on a
    // shared page meanwhile): a page placed before may be reused, but no
    // allocation may overlap another. A scan: placing is rare (a session
    // arriving), allocations a hash map.
    if (placed.ok() &&
        std::any_of(allocations_.begin(), allocations_.end(), [&](const auto& a) {
          return a.first < end && a.first + a.second.bytes > address;
        })) {
      placed = Status::Cuda(CUDA_ERROR_ALREADY_MAPPED, "it overlaps device memory this server holds");
    }
    if (!placed.ok()) {
      books_->Give(device, rounded);
      return Status::Cuda(CUDA_ERROR_ALREADY_MAPPED,
                          where + " cannot be had in this process: " + placed.message());
    }
    // Fresh pages are zero; a shared page may hold a freed neighbour's bytes.
    for (const auto& [page, page_end] : reused) {
      const uint64_t from = std::max(page, address), to = std::min(page_end, end);
      std::memset(AsPointer(from), 0, to - from);
    }
    // The storage points at `address` and owns the pages under it.
    allocations_.emplace(address, Allocation{std::shared_ptr<void>(pages, AsPointer(address)),
                                             rounded, device, owner, nullptr});
    return Status::Ok();
  }

  // Inaccessible mappings over the ranges' pages (adjacent or shared pages
  // merged), unmapped when the hold goes.
  Status HoldAddresses(std::span<const std::pair<uint64_t, uint64_t>> ranges,
                       std::shared_ptr<void>* held) override {
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    std::vector<std::pair<uint64_t, uint64_t>> spans;  // page-aligned [start, end)
    for (const auto& [address, bytes] : ranges) {
      uint64_t end;
      if (bytes == 0 || !CheckedAdd(address, bytes, &end) || end > UINT64_MAX - page) {
        return InvalidValue("no memory can be held at " + HexAddress(address));
      }
      spans.emplace_back(address / page * page, (end + page - 1) / page * page);
    }
    std::sort(spans.begin(), spans.end());
    std::vector<std::pair<uint64_t, uint64_t>> merged;
    for (const auto& span : spans) {
      if (!merged.empty() && span.first <= merged.back().second) {
        merged.back().second = std::max(merged.back().second, span.second);
      } else {
        merged.push_back(span);
      }
    }
    auto release = [](std::vector<std::pair<uint64_t, uint64_t>>* spans) {
      for (const auto& [start, end] : *spans) munmap(AsPointer(start), end - start);
      delete spans;
    };
    std::unique_ptr<std::vector<std::pair<uint64_t, uint64_t>>, decltype(release)> done(
        new std::vector<std::pair<uint64_t, uint64_t>>(), release);
    for (const auto& [start, end] : merged) {
      void* p = mmap(AsPointer(start), end - start, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
      if (p != MAP_FAILED && p != AsPointer(start)) munmap(p, end - start);
      if (p == MAP_FAILED || p != AsPointer(start)) {
        return Status::Cuda(CUDA_ERROR_ALREADY_MAPPED,
                            HexAddress(start) + " is taken in this ferryd's process");
      }
      done->emplace_back(start, end);
    }
    *held = std::shared_ptr<void>(done.release(), [release](void* spans) {
      release(static_cast<std::vector<std::pair<uint64_t, uint64_t>>*>(spans));
    });
    return Status::Ok();
  }

  Status MemAllocPitch(Context& ctx, uint64_t width_bytes, uint64_t height, unsigned element_bytes,
                       uint64_t* dptr, uint64_t* pitch) override {
    if (element_bytes != 4 && element_bytes != 8 && element_bytes != 16) {
      return InvalidValue("element size must be 4, 8 or 16 bytes, not " +
                          std::to_string(element_bytes));
    }
    if (width_bytes == 0 || height == 0) return InvalidValue("empty pitched allocation");
    uint64_t p, total;
    if (!RoundUp(width_bytes, host_internal::kPitchAlignment, &p) ||
        !CheckedMul(p, height, &total)) {
      return Status::OutOfMemory("pitched allocation size overflows");
    }
    FERRY_RETURN_IF_ERROR(MemAlloc(ctx, total, dptr));
    *pitch = p;
    return Status::Ok();
  }

  Status MemFree(Context& ctx, uint64_t dptr) override {
    return Release(*AsContext(ctx).state(), dptr);
  }

  // Frees the allocation at `dptr` once the tenant's earlier work is done.
  // The address is no allocation of this backend from now on.
  Status Release(ContextState& ctx, uint64_t dptr) {
    std::vector<Allocation> released(1);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = allocations_.find(dptr);
      if (it == allocations_.end()) {
        return InvalidValue("no allocation starts at " + std::to_string(dptr));
      }
      released[0] = std::move(it->second);
      allocations_.erase(it);
    }
    ReleaseAfterQueuedWork(ctx.tenant(), ReleaseAllocations(std::move(released)));
    return Status::Ok();
  }

  Status MemGetInfo(Context& ctx, uint64_t* free_bytes, uint64_t* total_bytes) override {
    const int device = AsContext(ctx).state()->device;
    std::lock_guard<std::mutex> lock(mu_);
    *total_bytes = device_memory_[device];
    *free_bytes = books_->free_bytes(device);
    return Status::Ok();
  }

  // Frees what `owner` still holds; called as its context goes away.
  void ReleaseContextAllocations(ContextState& owner) {
    std::vector<Allocation> released;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = allocations_.begin(); it != allocations_.end();) {
        if (it->second.owner != &owner) {
          ++it;
          continue;
        }
        released.push_back(std::move(it->second));
        allocations_.erase(it++);
      }
    }
    if (released.empty()) return;
    ReleaseAfterQueuedWork(owner.tenant(), ReleaseAllocations(std::move(released)));
  }

  // --- virtual memory management (host_internal::HostVirtualMemory) -----------

  Status AllocationGranularity(int device, bool recommended, uint64_t* bytes) override {
    (void)recommended;  // pages are what this backend maps, whatever the request
    FERRY_RETURN_IF_ERROR(CheckDevice(device));
    *bytes = host_internal::HostVirtualMemory::Granularity();
    return Status::Ok();
  }
  Status CreatePhysicalMemory(int device, uint64_t bytes,
                              std::unique_ptr<PhysicalMemory>* out) override {
    FERRY_RETURN_IF_ERROR(CheckDevice(device));
    return virtual_memory_.Create(device, bytes, out);
  }
  Status ReserveAddressRange(uint64_t bytes, uint64_t alignment, uint64_t hint,
                             uint64_t* address) override {
    return virtual_memory_.Reserve(bytes, alignment, hint, address);
  }
  Status FreeAddressRange(uint64_t address, uint64_t bytes) override {
    return virtual_memory_.Free(address, bytes);
  }
  Status MapMemory(uint64_t address, uint64_t bytes, PhysicalMemory& memory,
                   uint64_t offset) override {
    return virtual_memory_.Map(address, bytes, memory, offset);
  }
  Status UnmapMemory(Tenant& tenant, uint64_t address, uint64_t bytes) override {
    return virtual_memory_.Unmap(address, bytes, AfterQueuedWorkOf(tenant));
  }
  Status SetMemoryAccess(Tenant& tenant, uint64_t address, uint64_t bytes,
                         std::span<const MemoryAccess> access) override {
    return virtual_memory_.SetAccess(address, bytes, access, AfterQueuedWorkOf(tenant));
  }
  // How the virtual memory's page changes wait for `tenant`'s queued work.
  static host_internal::HostVirtualMemory::Defer AfterQueuedWorkOf(Tenant& tenant) {
    return [state = static_cast<HostTenant&>(tenant).state](std::function<void()> release) {
      ReleaseAfterQueuedWork(state, std::move(release));
    };
  }

  // --- stream-ordered allocation and memory pools ------------------------------

  Status CreateMemPool(int device, uint64_t max_size, std::unique_ptr<MemPool>* out) override {
    FERRY_RETURN_IF_ERROR(CheckDevice(device));
    *out = std::make_unique<HostMemPool>(std::make_shared<HostMemPoolState>(device, max_size));
    return Status::Ok();
  }

  // The memory exists from the call on (host memory needs no stream order to
  // become usable), so the address is valid at once.
  Status MemAllocFromPool(Stream& stream, MemPool& pool, uint64_t bytes, uint64_t* dptr) override {
    const std::shared_ptr<HostMemPoolState>& p = static_cast<HostMemPool&>(pool).state;
    uint64_t rounded;
    if (bytes == 0) return InvalidValue("cannot allocate 0 bytes");
    if (!RoundUp(bytes, host_internal::kAllocationAlignment, &rounded)) {
      return Status::OutOfMemory("allocation of " + std::to_string(bytes) + " bytes overflows");
    }
    {
      // Reserve in the pool first, so concurrent allocations cannot both pass.
      std::lock_guard<std::mutex> lock(p->mu);
      if (p->max_size != 0 && rounded > p->max_size - std::min(p->used, p->max_size)) {
        return Status::OutOfMemory("cannot allocate " + std::to_string(bytes) +
                                   " bytes from a pool of at most " + std::to_string(p->max_size) +
                                   " bytes, " + std::to_string(p->used) + " in use");
      }
      p->used += rounded;
      p->used_high = std::max(p->used_high, p->used);
      p->reserved_high = std::max(p->reserved_high, p->used);
    }
    Status status = Allocate(AsStream(stream).ctx_state(), p->device, bytes, dptr, p);
    if (!status.ok()) p->Release(rounded);
    return status;
  }

  Status MemFreeAsync(Stream& stream, uint64_t dptr, Completion freed) override {
    Allocation allocation;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = allocations_.find(dptr);
      if (it == allocations_.end()) {
        return InvalidValue("no allocation starts at " + std::to_string(dptr));
      }
      allocation = std::move(it->second);
      allocations_.erase(it);
    }
    // The memory goes back to the device (and its pool) when the stream
    // reaches the free and the tenant's other streams have finished what was
    // queued before it: from the stream itself when they have by then (so the
    // stream is idle past the free only after `freed`), else from the
    // completion thread once they have. The stream never waits for them.
    HostStream& s = AsStream(stream);
    std::shared_ptr<TenantState> tenant = s.ctx().tenant();
    const uint64_t ticket = tenant->StartRelease();
    std::vector<StreamPoint> before = tenant->PendingTails();
    std::vector<Allocation> released;
    released.push_back(std::move(allocation));
    std::function<void()> release = ReleaseAllocations(std::move(released));
    Append(stream, {},
           [tenant, ticket, before = std::move(before), release = std::move(release),
            freed = std::move(freed)] {
             ReleaseWhenReached(tenant, ticket, before, [release, freed] {
               release();
               freed(Status::Ok());
             });
           });
    return Status::Ok();
  }

  Status GetMemPoolAttribute(MemPool& pool, int attribute, uint64_t* value) override {
    HostMemPoolState& p = *static_cast<HostMemPool&>(pool).state;
    std::lock_guard<std::mutex> lock(p.mu);
    switch (attribute) {
      case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
        *value = p.follow_event_dependencies;
        return Status::Ok();
      case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
        *value = p.allow_opportunistic;
        return Status::Ok();
      case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
        *value = p.allow_internal_dependencies;
        return Status::Ok();
      case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD:
        *value = p.release_threshold;
        return Status::Ok();
      case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT:
      case CU_MEMPOOL_ATTR_USED_MEM_CURRENT:
        *value = p.used;
        return Status::Ok();
      case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:
        *value = p.reserved_high;
        return Status::Ok();
      case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
        *value = p.used_high;
        return Status::Ok();
      default:
        return InvalidValue("unknown memory pool attribute " + std::to_string(attribute));
    }
  }

  Status SetMemPoolAttribute(MemPool& pool, int attribute, uint64_t value) override {
    HostMemPoolState& p = *static_cast<HostMemPool&>(pool).state;
    std::lock_guard<std::mutex> lock(p.mu);
    switch (attribute) {
      case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
        p.follow_event_dependencies = value != 0;
        return Status::Ok();
      case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
        p.allow_opportunistic = value != 0;
        return Status::Ok();
      case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
        p.allow_internal_dependencies = value != 0;
        return Status::Ok();
      case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD:
        p.release_threshold = value;
        return Status::Ok();
      case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:
      case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
        // Only a reset (to 0) is allowed; the mark restarts at the current use.
        if (value != 0) return InvalidValue("a pool's high-water mark can only be reset to 0");
        (attribute == CU_MEMPOOL_ATTR_USED_MEM_HIGH ? p.used_high : p.reserved_high) = p.used;
        return Status::Ok();
      default:
        return InvalidValue("memory pool attribute " + std::to_string(attribute) +
                            " cannot be set");
    }
  }

  // Freed memory is never kept: nothing to trim.
  Status TrimMemPool(MemPool& pool, uint64_t min_bytes_to_keep) override { return Status::Ok(); }

  // --- stream memory operations ---------------------------------------------------

  // Emulates the GPU's memory operations on the stream's thread: writes are
  // sequentially consistent stores, waits poll the value (yielding, then
  // sleeping briefly between looks: a device-side spin) until it holds or the
  // stream is destroyed. Flushes and barriers have nothing to order in host
  // memory beyond what the stores and loads already order.
  Status StreamMemOps(Stream& stream, std::vector<StreamMemOp> ops, unsigned flags) override {
    std::shared_ptr<std::atomic<bool>> cancel = AsStream(stream).cancel_waits();
    Append(stream, {}, [ops = std::move(ops), cancel] {
      for (const StreamMemOp& op : ops) {
        switch (op.operation) {
          case CU_STREAM_MEM_OP_WRITE_VALUE_32:
            __atomic_store_n(reinterpret_cast<uint32_t*>(op.address),
                             static_cast<uint32_t>(op.value), __ATOMIC_SEQ_CST);
            break;
          case CU_STREAM_MEM_OP_WRITE_VALUE_64:
            __atomic_store_n(reinterpret_cast<uint64_t*>(op.address), op.value, __ATOMIC_SEQ_CST);
            break;
          case CU_STREAM_MEM_OP_WAIT_VALUE_32:
          case CU_STREAM_MEM_OP_WAIT_VALUE_64:
            WaitValue(op, *cancel);
            break;
          default:
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            break;
        }
      }
    });
    return Status::Ok();
  }

  // True when the wait `op` is satisfied by the value now at its address.
  static bool WaitSatisfied(const StreamMemOp& op) {
    const bool wide = op.operation == CU_STREAM_MEM_OP_WAIT_VALUE_64;
    const uint64_t now =
        wide ? __atomic_load_n(reinterpret_cast<const uint64_t*>(op.address), __ATOMIC_SEQ_CST)
             : __atomic_load_n(reinterpret_cast<const uint32_t*>(op.address), __ATOMIC_SEQ_CST);
    const uint64_t mask = wide ? ~uint64_t{0} : uint64_t{0xFFFFFFFF};
    switch (op.flags & 3u) {
      case CU_STREAM_WAIT_VALUE_GEQ:
        return wide ? static_cast<int64_t>(now - op.value) >= 0
                    : static_cast<int32_t>(static_cast<uint32_t>(now - op.value)) >= 0;
      case CU_STREAM_WAIT_VALUE_EQ:
        return now == op.value;
      case CU_STREAM_WAIT_VALUE_AND:
        return (now & op.value) != 0;
      default:  // CU_STREAM_WAIT_VALUE_NOR
        return (~(now | op.value) & mask) != 0;
    }
  }

  static void WaitValue(const StreamMemOp& op, const std::atomic<bool>& cancel) {
    for (int spins = 0; !WaitSatisfied(op); ++spins) {
      if (cancel.load()) return;
      if (spins < 1000) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
  }

  // --- stream-ordered operations ----------------------------------------------

  Status CopyHostToDevice(Stream& stream, uint64_t dst, HostBytes src) override {
    if (src.size == 0) return Status::Ok();
    if (src.data == nullptr) return InvalidValue("null host source");
    AppendMemoryOp(
        stream, [dst, src = std::move(src)] { std::memcpy(AsPointer(dst), src.data, src.size); });
    return Status::Ok();
  }

  Status CopyDeviceToHost(Stream& stream, MutableHostBytes dst, uint64_t src) override {
    if (dst.size == 0) return Status::Ok();
    if (dst.data == nullptr) return InvalidValue("null host destination");
    AppendMemoryOp(
        stream, [dst = std::move(dst), src] { std::memcpy(dst.data, AsPointer(src), dst.size); });
    return Status::Ok();
  }

  Status CopyDeviceToDevice(Stream& stream, uint64_t dst, uint64_t src, uint64_t bytes) override {
    if (bytes == 0) return Status::Ok();
    // memmove: overlapping ranges are undefined in CUDA; here they are at
    // least not a crash.
    AppendMemoryOp(stream,
                   [dst, src, bytes] { std::memmove(AsPointer(dst), AsPointer(src), bytes); });
    return Status::Ok();
  }

  // 2D and 3D copies; an array side is device memory laid out as HostArray
  // says.
  Status Copy2DAsync(Stream& stream, Copy2D copy) override {
    if (copy.width_bytes == 0 || copy.height == 0 || copy.depth == 0) return Status::Ok();
    auto array_as_device = [](const Array* array, uint64_t x, uint64_t y, uint64_t z,
                              uint64_t* device, uint64_t* pitch, uint64_t* slice_rows) {
      const auto& a = static_cast<const HostArray&>(*array);
      *device = a.Address(x, y, z);
      *pitch = a.row_pitch;
      *slice_rows = ArrayRows(a.descriptor);
    };
    if (copy.src_array != nullptr) {
      array_as_device(copy.src_array, copy.src_x, copy.src_y, copy.src_z, &copy.src_device,
                      &copy.src_pitch, &copy.src_height);
    }
    if (copy.dst_array != nullptr) {
      array_as_device(copy.dst_array, copy.dst_x, copy.dst_y, copy.dst_z, &copy.dst_device,
                      &copy.dst_pitch, &copy.dst_height);
    }
    if (copy.src_height == 0) copy.src_height = copy.height;
    if (copy.dst_height == 0) copy.dst_height = copy.height;
    if ((copy.height > 1 || copy.depth > 1) &&
        (copy.src_pitch < copy.width_bytes || copy.dst_pitch < copy.width_bytes)) {
      return InvalidValue("2D copy pitch smaller than its width");
    }
    if (copy.depth > 1 && (copy.src_height < copy.height || copy.dst_height < copy.height)) {
      return InvalidValue("3D copy slices overlap");
    }
    uint64_t src_span, dst_span;
    if (!SliceSpan(copy.width_bytes, copy.height, copy.depth, copy.src_pitch, copy.src_height,
                   &src_span) ||
        !SliceSpan(copy.width_bytes, copy.height, copy.depth, copy.dst_pitch, copy.dst_height,
                   &dst_span)) {
      return InvalidValue("2D copy extent overflows");
    }
    if (copy.src_is_host && (copy.src_host.data == nullptr || copy.src_host.size < src_span)) {
      return InvalidValue("2D copy host source holds " + std::to_string(copy.src_host.size) +
                          " bytes, needs " + std::to_string(src_span));
    }
    if (copy.dst_is_host && (copy.dst_host.data == nullptr || copy.dst_host.size < dst_span)) {
      return InvalidValue("2D copy host destination holds " + std::to_string(copy.dst_host.size) +
                          " bytes, needs " + std::to_string(dst_span));
    }
    AppendMemoryOp(stream, [copy = std::move(copy)] {
      const uint8_t* src = copy.src_is_host ? copy.src_host.data : AsPointer(copy.src_device);
      uint8_t* dst = copy.dst_is_host ? copy.dst_host.data : AsPointer(copy.dst_device);
      for (uint64_t z = 0; z < copy.depth; ++z) {
        for (uint64_t row = 0; row < copy.height; ++row) {
          std::memmove(dst + (z * copy.dst_height + row) * copy.dst_pitch,
                       src + (z * copy.src_height + row) * copy.src_pitch, copy.width_bytes);
        }
      }
    });
    return Status::Ok();
  }

  // --- CUDA arrays, textures and surfaces ---------------------------------------

  // Flags whose arrays are plain memory here; the others (sparse, deferred
  // mapping, depth textures, color attachments, video) need a GPU's.
  static constexpr unsigned kHostArrayFlags = CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_SURFACE_LDST |
                                              CUDA_ARRAY3D_CUBEMAP | CUDA_ARRAY3D_TEXTURE_GATHER;

  Status CreateArray(Context& ctx, const ArrayDescriptor& descriptor,
                     std::unique_ptr<Array>* out) override {
    std::unique_ptr<HostArray> array;
    FERRY_RETURN_IF_ERROR(MakeArray(AsContext(ctx).state(), descriptor, &array));
    *out = std::move(array);
    return Status::Ok();
  }

  Status CreateMipmappedArray(Context& ctx, const ArrayDescriptor& descriptor, unsigned levels,
                              std::unique_ptr<MipmappedArray>* out) override {
    auto mipmapped = std::make_unique<HostMipmappedArray>();
    for (unsigned level = 0; level < levels; ++level) {
      std::unique_ptr<HostArray> array;
      FERRY_RETURN_IF_ERROR(
          MakeArray(AsContext(ctx).state(), ArrayLevelShape(descriptor, level), &array));
      mipmapped->levels.push_back(std::move(array));
    }
    *out = std::move(mipmapped);
    return Status::Ok();
  }

  Status MipmappedArrayLevel(MipmappedArray& mipmapped, unsigned level, Array** out) override {
    auto& m = static_cast<HostMipmappedArray&>(mipmapped);
    if (level >= m.levels.size()) {
      return InvalidValue("no level " + std::to_string(level) + " in a mipmapped array of " +
                          std::to_string(m.levels.size()));
    }
    *out = m.levels[level].get();
    return Status::Ok();
  }

  Status CreateTextureObject(Context& ctx, const TextureResource& resource,
                             const TextureDescription& texture, const TextureView* view,
                             std::unique_ptr<TextureObject>* out) override {
    const HostArray* array =
        resource.kind == TextureResource::Kind::kArray ? &AsArray(*resource.array) : nullptr;
    FERRY_RETURN_IF_ERROR(host_internal::CheckSampledTexture(
        resource, array != nullptr ? &array->descriptor : nullptr, texture, view));
    auto state = std::make_shared<HostTextureState>();
    state->texture = texture;
    FERRY_RETURN_IF_ERROR(DescribeTexels(AsContext(ctx), resource, state.get()));
    *out = std::make_unique<HostTextureObject>(TextureRegistry::Get().Add(std::move(state)));
    return Status::Ok();
  }

  Status CreateSurfaceObject(Context& ctx, const TextureResource& resource,
                             std::unique_ptr<TextureObject>* out) override {
    if (resource.kind != TextureResource::Kind::kArray) {
      return InvalidValue("a surface object takes an array resource");
    }
    if ((AsArray(*resource.array).descriptor.flags & CUDA_ARRAY3D_SURFACE_LDST) == 0) {
      return InvalidValue("a surface's array needs CUDA_ARRAY3D_SURFACE_LDST");
    }
    auto state = std::make_shared<HostTextureState>();
    state->surface = true;
    FERRY_RETURN_IF_ERROR(DescribeTexels(AsContext(ctx), resource, state.get()));
    *out = std::make_unique<HostTextureObject>(TextureRegistry::Get().Add(std::move(state)));
    return Status::Ok();
  }

  Status Memset(Stream& stream, uint64_t dst, uint64_t pitch, uint32_t value,
                unsigned element_bytes, uint64_t width, uint64_t height) override {
    std::function<void()> op;
    FERRY_RETURN_IF_ERROR(MemsetOp(dst, pitch, value, element_bytes, width, height, &op));
    if (op) AppendMemoryOp(stream, std::move(op));
    return Status::Ok();
  }

  // The operation a memset runs; null when there is nothing to set.
  static Status MemsetOp(uint64_t dst, uint64_t pitch, uint32_t value, unsigned element_bytes,
                         uint64_t width, uint64_t height, std::function<void()>* out) {
    if (element_bytes != 1 && element_bytes != 2 && element_bytes != 4) {
      return InvalidValue("memset element size must be 1, 2 or 4, not " +
                          std::to_string(element_bytes));
    }
    uint64_t row_bytes;
    if (!CheckedMul(width, element_bytes, &row_bytes))
      return InvalidValue("memset width overflows");
    if (row_bytes == 0 || height == 0) return Status::Ok();
    uint64_t span;
    if (height > 1 && pitch < row_bytes) return InvalidValue("memset pitch smaller than its width");
    if (height == 1) pitch = row_bytes;
    if (!RowSpan(row_bytes, height, pitch, &span)) return InvalidValue("memset extent overflows");
    *out = [dst, pitch, value, element_bytes, row_bytes, height] {
      uint8_t* base = AsPointer(dst);
      for (uint64_t row = 0; row < height; ++row) {
        uint8_t* p = base + row * pitch;
        if (element_bytes == 1) {
          std::memset(p, static_cast<int>(value & 0xff), row_bytes);
        } else if (element_bytes == 2) {
          const uint16_t v = static_cast<uint16_t>(value);
          for (uint64_t i = 0; i < row_bytes; i += 2) std::memcpy(p + i, &v, 2);
        } else {
          for (uint64_t i = 0; i < row_bytes; i += 4) std::memcpy(p + i, &value, 4);
        }
      }
    };
    return Status::Ok();
  }

  Status Launch(Stream& stream, Function& function, const LaunchConfig& config,
                HostBytes params) override {
    std::function<void()> op;
    FERRY_RETURN_IF_ERROR(LaunchOp(AsStream(stream).ctx(), function, config, params, &op));
    Append(stream, {}, std::move(op));
    return Status::Ok();
  }

  // The operation a launch of `function` in `ctx` runs, checked.
  Status LaunchOp(const ContextState& ctx, Function& function, const LaunchConfig& config,
                  const HostBytes& params, std::function<void()>* out) {
    auto& f = static_cast<HostFunction&>(function);
    if (f.ctx() != &ctx) {
      return Status::InvalidHandle("kernel " + f.name() +
                                   " belongs to another context than the stream");
    }
    FERRY_RETURN_IF_ERROR(CheckLaunchConfig(f, config));
    if (params.size < f.params_end()) {
      return InvalidValue("kernel " + f.name() + " takes " + std::to_string(f.params_end()) +
                          " bytes of parameters, got " + std::to_string(params.size));
    }
    if (params.size > 0 && params.data == nullptr) return InvalidValue("null parameter buffer");
    if (f.fn() == nullptr) {
      std::string libs;
      for (const KernelLibrary& lib : libraries_) {
        if (!libs.empty()) libs += ", ";
        libs += lib.path;
      }
      return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED,
                          "no host implementation for kernel " + f.name() +
                              ": none of the --host-kernels libraries [" + libs + "] exports " +
                              FERRY_HOST_KERNEL_PREFIX + f.name());
    }
    // The parameters are copied into storage aligned for any type: the packed
    // buffer arrives at whatever alignment the wire gave it, and host kernels
    // dereference params[i] as the parameter's type. This also frees the
    // caller's buffer at once.
    auto storage = std::make_shared<std::vector<std::max_align_t>>(
        (params.size + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t));
    if (params.size > 0) std::memcpy(storage->data(), params.data, params.size);
    ferry_launch launch{};
    for (int i = 0; i < 3; ++i) {
      launch.grid[i] = config.grid[i];
      launch.block[i] = config.block[i];
    }
    launch.shared_bytes = config.shared_bytes;
    launch.services = &kHostServices;
    launch.services_scope = &ctx;
    *out = [fn = f.fn(), launch, storage = std::move(storage), offsets = f.offsets(),
            abandoned = ctx.abandoned, activity = kernel_activity_[ctx.device]] {
      if (abandoned->load(std::memory_order_relaxed)) return;  // its session is gone
      DeviceActivity::Scope busy(*activity);
      auto* base = reinterpret_cast<uint8_t*>(storage->data());
      std::vector<void*> pointers(offsets->size() + 1, nullptr);  // +1: never a null array
      for (size_t i = 0; i < offsets->size(); ++i) pointers[i] = base + (*offsets)[i];
      fn(&launch, pointers.data());
    };
    return Status::Ok();
  }

  // --- streams --------------------------------------------------------------

  Status CreateStream(Context& ctx, unsigned flags, int priority,
                      std::unique_ptr<Stream>* out) override {
    if ((flags & ~static_cast<unsigned>(CU_STREAM_NON_BLOCKING)) != 0) {
      return InvalidValue("bad stream flags " + std::to_string(flags));
    }
    // Priorities only order work among ready streams on a GPU; with a thread
    // per stream there is nothing to order, so `priority` is accepted (CUDA
    // clamps it to the device's range, [-5, 0] on sm_90) and unused.
    const std::shared_ptr<ContextState>& state = AsContext(ctx).state();
    std::shared_ptr<StreamQueue> queue;
    FERRY_RETURN_IF_ERROR(StreamQueue::Create(completions_.get(), &queue));
    const bool non_blocking = (flags & CU_STREAM_NON_BLOCKING) != 0;
    auto stream = std::make_unique<HostStream>(state, queue, /*legacy=*/false, non_blocking);
    {
      std::lock_guard<std::mutex> lock(state->mu);
      state->streams.push_back({stream.get(), queue, non_blocking});
    }
    *out = std::move(stream);
    return Status::Ok();
  }

  Status QueryStream(Stream& stream) override {
    if (!AsStream(stream).queue().Tail().Reached()) {
      return Status::Cuda(CUDA_ERROR_NOT_READY, "stream has pending work");
    }
    return Status::Ok();
  }

  void WhenStreamIdle(Stream& stream, Completion done) override {
    StreamPoint tail = AsStream(stream).queue().Tail();
    tail.queue->WhenReached(tail.seq, std::move(done));
  }

  // Two operations, appended together: an empty marker that carries the
  // stream's ordering (its legacy-stream `after` points), so it is done once
  // everything the gate follows has finished, and `reached` is posted then;
  // and an operation that holds the stream's worker until the gate opens.
  // Cost of a closed gate: this stream's worker thread waits, nothing else;
  // other streams and the completion thread go on, and work ordered after the
  // stream (legacy semantics, event waits) waits as it would on a GPU.
  Status EnqueueHostGate(Stream& stream, std::shared_ptr<HostGate> gate,
                         Completion reached) override {
    if (gate == nullptr) return InvalidValue("null host gate");
    StreamPoint marker;
    {
      std::lock_guard<std::mutex> lock(AsStream(stream).ctx().mu);
      marker = AppendLocked(stream, {}, nullptr);
      AppendLocked(stream, {}, [gate = std::move(gate)] { gate->WaitOpen(); });
    }
    marker.queue->WhenReached(marker.seq, std::move(reached));
    return Status::Ok();
  }

  bool StreamIdleNow(Stream& stream, Status* status) override {
    HostStream& s = AsStream(stream);
    ContextState& c = s.ctx();
    // What Append would make a new operation wait for, under the same lock.
    std::lock_guard<std::mutex> lock(c.mu);
    if (!s.queue().IdleNow(status)) return false;
    for (const StreamPoint& p : c.barriers) {
      if (!p.Reached()) return false;
    }
    if (s.legacy()) {
      for (const ContextState::StreamEntry& e : c.streams) {
        if (!e.non_blocking && !e.queue->IdleNow(nullptr)) return false;
      }
    } else if (!s.non_blocking()) {
      if (!c.legacy->IdleNow(nullptr)) return false;
    }
    return true;
  }

  bool ContextIdleNow(Context& ctx, Status* status) override {
    ContextState& c = *AsContext(ctx).state();
    std::lock_guard<std::mutex> lock(c.mu);
    Status first;
    Status error;
    if (!c.legacy->IdleNow(&first)) return false;
    for (const ContextState::StreamEntry& e : c.streams) {
      if (!e.queue->IdleNow(&error)) return false;
      if (first.ok()) first = error;
    }
    *status = first;
    return true;
  }

  bool DeviceMemoryIsHostMemory() const override { return true; }

  // --- events -----------------------------------------------------------------

  Status CreateEvent(Context& ctx, unsigned flags, std::unique_ptr<Event>* out) override {
    if ((flags & ~kKnownEventFlags) != 0) {
      return InvalidValue("bad event flags " + std::to_string(flags));
    }
    if ((flags & CU_EVENT_INTERPROCESS) != 0 && (flags & CU_EVENT_DISABLE_TIMING) == 0) {
      return InvalidValue("an interprocess event must disable timing");
    }
    *out = std::make_unique<HostEvent>(flags);
    return Status::Ok();
  }

  Status RecordEvent(Event& event, Stream& stream) override {
    auto record = std::make_shared<EventRecord>();
    HostStream& s = AsStream(stream);
    {
      std::lock_guard<std::mutex> lock(s.ctx().mu);
      if (s.ActiveCapture() != nullptr) {
        // Under capture a record queues nothing: it marks a fork or join.
        record->capture = s.capture;
        record->point = StreamPoint{s.queue_ptr(), 0};
      } else {
        // The op holds the record only until it runs; the event keeps it after.
        record->point = AppendLocked(stream, {}, [record] {
          record->reached_ns.store(SteadyNowNs(), std::memory_order_relaxed);
        });
      }
    }
    static_cast<HostEvent&>(event).set_latest(std::move(record));
    return Status::Ok();
  }

  Status StreamWaitEvent(Stream& stream, Event& event) override {
    std::shared_ptr<EventRecord> record = static_cast<HostEvent&>(event).latest();
    if (record != nullptr && record->capture != nullptr) {
      // Fork: a stream not capturing joins the event's capture (a capturing
      // one is in it already; the list orders its work after the event's).
      HostStream& s = AsStream(stream);
      std::lock_guard<std::mutex> lock(s.ctx().mu);
      if (!record->capture->ended && s.ActiveCapture() == nullptr) s.capture = record->capture;
      return Status::Ok();
    }
    // Never recorded, or already reached: nothing to wait for.
    if (record == nullptr || record->point.Reached()) return Status::Ok();
    Append(stream, {record->point}, nullptr);
    return Status::Ok();
  }

  Status RecordContextEvent(Context& ctx, Event& event) override {
    ContextState& c = *AsContext(ctx).state();
    auto record = std::make_shared<EventRecord>();
    {
      std::lock_guard<std::mutex> lock(c.mu);
      if (c.marker == nullptr)
        FERRY_RETURN_IF_ERROR(StreamQueue::Create(completions_.get(), &c.marker));
      std::vector<StreamPoint> pending;
      auto add_if_pending = [&pending](StreamPoint p) {
        if (!p.Reached()) pending.push_back(std::move(p));
      };
      add_if_pending(c.legacy->Tail());
      for (const ContextState::StreamEntry& e : c.streams) add_if_pending(e.queue->Tail());
      record->point = c.marker->Enqueue(std::move(pending), [record] {
        record->reached_ns.store(SteadyNowNs(), std::memory_order_relaxed);
      });
    }
    static_cast<HostEvent&>(event).set_latest(std::move(record));
    return Status::Ok();
  }

  Status ContextWaitEvent(Context& ctx, Event& event) override {
    std::shared_ptr<EventRecord> record = static_cast<HostEvent&>(event).latest();
    if (record == nullptr || record->point.Reached()) return Status::Ok();
    ContextState& c = *AsContext(ctx).state();
    std::lock_guard<std::mutex> lock(c.mu);
    c.barriers.push_back(record->point);
    return Status::Ok();
  }

  Status QueryEvent(Event& event) override {
    std::shared_ptr<EventRecord> record = static_cast<HostEvent&>(event).latest();
    if (record != nullptr && !record->point.Reached()) {
      return Status::Cuda(CUDA_ERROR_NOT_READY, "event not reached yet");
    }
    return Status::Ok();
  }

  void WhenEventComplete(Event& event, Completion done) override {
    std::shared_ptr<EventRecord> record = static_cast<HostEvent&>(event).latest();
    if (record == nullptr) {
      completions_->Post([done = std::move(done)] { done(Status::Ok()); });
      return;
    }
    record->point.queue->WhenReached(record->point.seq, std::move(done));
  }

  Status EventElapsedTime(Event& start, Event& end, float* milliseconds) override {
    auto& s = static_cast<HostEvent&>(start);
    auto& e = static_cast<HostEvent&>(end);
    if (!s.timing() || !e.timing()) {
      return Status::InvalidHandle("event created with CU_EVENT_DISABLE_TIMING");
    }
    std::shared_ptr<EventRecord> rs = s.latest();
    std::shared_ptr<EventRecord> re = e.latest();
    if (rs == nullptr || re == nullptr) return Status::InvalidHandle("event never recorded");
    // Reached() synchronizes with the worker that stored reached_ns.
    if (!rs->point.Reached() || !re->point.Reached()) {
      return Status::Cuda(CUDA_ERROR_NOT_READY, "event not reached yet");
    }
    const int64_t ns = re->reached_ns.load(std::memory_order_relaxed) -
                       rs->reached_ns.load(std::memory_order_relaxed);
    *milliseconds = static_cast<float>(static_cast<double>(ns) / 1e6);
    return Status::Ok();
  }

  // --- modules and functions ------------------------------------------------

  Status LoadModule(Context& ctx, std::span<const uint8_t> image, std::unique_ptr<Module>* out,
                    ModuleDescription* description) override {
    image::ImageLayout layout;
    Status parsed = image::ParseImage(image, &layout);
    if (!parsed.ok()) return parsed.WithContext("cannot load module");
    return BuildModule(ctx, layout, out, description);
  }

  Status LoadLibrary(std::span<const uint8_t> image, std::unique_ptr<Library>* out,
                     ModuleDescription* description) override {
    auto library = std::make_unique<HostLibrary>();
    Status parsed = image::ParseImage(image, &library->layout);
    if (!parsed.ok()) return parsed.WithContext("cannot load library");
    // The description is what every context's module will describe.
    *description = Describe(library->layout);
    *out = std::move(library);
    return Status::Ok();
  }

  Status LoadLibraryModule(Context& ctx, Library& library, std::unique_ptr<Module>* out) override {
    ModuleDescription ignored;
    return BuildModule(ctx, static_cast<HostLibrary&>(library).layout, out, &ignored);
  }

  Status GetFunction(Module& module, std::string_view name, Function** out) override {
    auto& m = static_cast<HostModule&>(module);
    // absl here has its own string_view type, distinct from std::string_view.
    auto it = m.functions_by_name.find(absl::string_view(name.data(), name.size()));
    if (it == m.functions_by_name.end()) {
      return Status::NotFound("module has no kernel named " + std::string(name));
    }
    *out = it->second;
    return Status::Ok();
  }

  Status GetGlobal(Module& module, std::string_view name, uint64_t* dptr,
                   uint64_t* bytes) override {
    auto& m = static_cast<HostModule&>(module);
    auto it = m.globals.find(absl::string_view(name.data(), name.size()));
    if (it == m.globals.end()) {
      return Status::NotFound("module has no global named " + std::string(name));
    }
    *dptr = reinterpret_cast<uint64_t>(it->second.storage.get());
    *bytes = it->second.size;
    return Status::Ok();
  }

  Status GetFunctionAttribute(Function& function, int attribute, int* value) override {
    if (attribute < 0 || attribute >= host_internal::kFunctionAttributeCount) {
      return InvalidValue("unknown function attribute " + std::to_string(attribute));
    }
    *value = static_cast<HostFunction&>(function).attribute(attribute);
    return Status::Ok();
  }

  Status SetFunctionAttribute(Function& function, int attribute, int value) override {
    FERRY_RETURN_IF_ERROR(host_internal::CheckSetFunctionAttribute(attribute, value));
    static_cast<HostFunction&>(function).set_attribute(attribute, value);
    return Status::Ok();
  }

  Status SetFunctionCacheConfig(Function& function, int config) override {
    if (config < CU_FUNC_CACHE_PREFER_NONE || config > CU_FUNC_CACHE_PREFER_EQUAL) {
      return InvalidValue("unknown cache config " + std::to_string(config));
    }
    static_cast<HostFunction&>(function).set_cache_config(config);
    return Status::Ok();
  }

  // --- JIT linking: host_link.h says what it means here ----------------------

  Status CreateLink(Context& ctx, const std::vector<JitOption>& options,
                    const std::vector<JitSymbol>& symbols, std::unique_ptr<Link>* out) override {
    (void)ctx;  // every context's devices run the same host twins
    *out = std::make_unique<host_internal::HostLink>(options, symbols);
    return Status::Ok();
  }

  Status AddLinkInput(Link& link, int type, std::span<const uint8_t> data, const std::string& name,
                      const std::vector<JitOption>& options, LinkReport* report) override {
    return static_cast<host_internal::HostLink&>(link).AddInput(type, data, name, options, report);
  }

  Status CompleteLink(Link& link, std::span<const uint8_t>* image, LinkReport* report) override {
    return static_cast<host_internal::HostLink&>(link).Complete(image, report);
  }

  // --- occupancy: the model in device_model.h ---------------------------------

  Status OccupancyMaxActiveBlocks(Function& function, int block_size, uint64_t dynamic_smem_bytes,
                                  unsigned flags, int* blocks) override {
    // CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE changes nothing: the model has no
    // caching mode that trades against occupancy.
    if ((flags & ~static_cast<unsigned>(CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE)) != 0) {
      return InvalidValue("unknown occupancy flags " + std::to_string(flags));
    }
    return host_internal::MaxActiveBlocksPerMultiprocessor(Resources(function), block_size,
                                                           dynamic_smem_bytes, blocks);
  }

  Status OccupancyAvailableDynamicSmem(Function& function, int num_blocks, int block_size,
                                       uint64_t* bytes) override {
    return host_internal::AvailableDynamicSharedMemoryPerBlock(Resources(function), num_blocks,
                                                               block_size, bytes);
  }

  Status OccupancyMaxPotentialClusterSize(Function& function, const LaunchConfig& config,
                                          int* cluster_size) override {
    int threads = 0;
    FERRY_RETURN_IF_ERROR(BlockThreads(config, &threads));
    return host_internal::MaxPotentialClusterSize(Resources(function), threads, config.shared_bytes,
                                                  cluster_size);
  }

  Status OccupancyMaxActiveClusters(Function& function, const LaunchConfig& config,
                                    int* clusters) override {
    int threads = 0;
    FERRY_RETURN_IF_ERROR(BlockThreads(config, &threads));
    const auto& c = config.cluster;
    const bool given = c[0] != 0 || c[1] != 0 || c[2] != 0;
    if (given && (c[0] == 0 || c[1] == 0 || c[2] == 0)) {
      return Status::Cuda(CUDA_ERROR_INVALID_CLUSTER_SIZE, "a cluster dimension is 0");
    }
    const uint64_t cluster_blocks = given ? uint64_t{c[0]} * c[1] * c[2] : 0;
    if (cluster_blocks > static_cast<uint64_t>(host_internal::kNonPortableClusterSize)) {
      *clusters = 0;
      return Status::Ok();
    }
    return host_internal::MaxActiveClusters(Resources(function), threads, config.shared_bytes,
                                            static_cast<int>(cluster_blocks), clusters);
  }

  // --- peers ---------------------------------------------------------------
  // Every device's memory is this process's memory: any two devices reach
  // each other, and a copy between them is a copy in host memory.
  Status CanAccessPeer(int device, int peer, int* can_access) override {
    FERRY_RETURN_IF_ERROR(CheckDevice(device));
    FERRY_RETURN_IF_ERROR(CheckDevice(peer));
    *can_access = device != peer ? 1 : 0;
    return Status::Ok();
  }

  Status GetP2PAttribute(int attribute, int src_device, int dst_device, int* value) override {
    FERRY_RETURN_IF_ERROR(CheckDevice(src_device));
    FERRY_RETURN_IF_ERROR(CheckDevice(dst_device));
    if (src_device == dst_device) {
      return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "a P2P attribute needs two devices");
    }
    switch (attribute) {
      case CU_DEVICE_P2P_ATTRIBUTE_PERFORMANCE_RANK:
        *value = 0;
        return Status::Ok();
      case CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED:
      case CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED:
        *value = 1;
        return Status::Ok();
      case CU_DEVICE_P2P_ATTRIBUTE_CUDA_ARRAY_ACCESS_SUPPORTED:
      case CU_DEVICE_P2P_ATTRIBUTE_ONLY_PARTIAL_NATIVE_ATOMIC_SUPPORTED:
        *value = 0;
        return Status::Ok();
      default:
        return InvalidValue("unknown P2P attribute " + std::to_string(attribute));
    }
  }

  Status EnablePeerAccess(Context&, Context&) override { return Status::Ok(); }
  Status DisablePeerAccess(Context&, Context&) override { return Status::Ok(); }

  Status CopyPeer(Stream& stream, uint64_t dst, Context&, uint64_t src, Context&,
                  uint64_t bytes) override {
    return CopyDeviceToDevice(stream, dst, src, bytes);
  }

  // --- stream capture and graphs ---------------------------------------------
  Status BeginCapture(Stream& stream, int mode) override {
    return StartCapture(stream, mode, std::make_shared<HostCapture>());
  }

  Status BeginCaptureToGraph(Stream& stream, int mode, Graph& graph,
                             std::span<GraphNode* const> dependencies) override {
    auto capture = std::make_shared<HostCapture>();
    capture->target = &static_cast<HostGraph&>(graph);
    capture->after.assign(dependencies.begin(), dependencies.end());
    return StartCapture(stream, mode, std::move(capture));
  }

  Status StartCapture(Stream& stream, int mode, std::shared_ptr<HostCapture> capture) {
    HostStream& s = AsStream(stream);
    if (mode != CU_STREAM_CAPTURE_MODE_GLOBAL && mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
        mode != CU_STREAM_CAPTURE_MODE_RELAXED) {
      return InvalidValue("unknown stream capture mode " + std::to_string(mode));
    }
    if (s.legacy()) {
      return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                          "the legacy default stream cannot be captured");
    }
    std::lock_guard<std::mutex> lock(s.ctx().mu);
    if (s.ActiveCapture() != nullptr) {
      return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is capturing already");
    }
    s.capture = std::move(capture);
    return Status::Ok();
  }

  // Ends the capture on its origin; the streams joined to it stop capturing
  // as they next use it (HostStream::ActiveCapture).
  Status EndCapture(Stream& stream, std::unique_ptr<Graph>* out) override {
    HostStream& s = AsStream(stream);
    HostGraphOps ops;
    std::shared_ptr<HostCapture> capture;
    {
      std::lock_guard<std::mutex> lock(s.ctx().mu);
      if (s.ActiveCapture() == nullptr) {
        return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is not capturing");
      }
      s.capture->ended = true;
      ops = std::move(s.capture->ops);
      capture = std::move(s.capture);
    }
    if (capture->target == nullptr) {
      *out = std::make_unique<HostGraph>(std::move(ops));
      return Status::Ok();
    }
    // Into the existing graph: a chain after the given nodes, with the
    // dependencies UpdateCaptureDependencies added.
    std::vector<GraphNode*> after =
        capture->set_at.count(0) != 0 ? std::vector<GraphNode*>{} : capture->after;
    for (size_t i = 0; i < ops.size(); ++i) {
      if (auto extra = capture->extra_after.find(i); extra != capture->extra_after.end()) {
        after.insert(after.end(), extra->second.begin(), extra->second.end());
      }
      GraphNode* node = capture->target->Add(GraphNodeSpec::Kind::kEmpty, std::move(ops[i]), after);
      after.assign(1, node);
    }
    return Status::Ok();
  }

  Status CreateGraph(unsigned flags, std::unique_ptr<Graph>* out) override {
    if (flags != 0) return InvalidValue("cuGraphCreate flags must be 0");
    *out = std::make_unique<HostGraph>();
    return Status::Ok();
  }

  Status AddGraphNode(Graph& graph, std::span<GraphNode* const> dependencies,
                      const GraphNodeSpec& spec, GraphNode** out) override {
    std::function<void()> op;
    size_t child_nodes = 0;
    FERRY_RETURN_IF_ERROR(NodeOp(spec, &op, &child_nodes));
    HostGraphNode* node =
        static_cast<HostGraph&>(graph).Add(spec.kind, std::move(op), dependencies, child_nodes);
    // The node runs its own copy of the child (EmbeddedGraph).
    if (spec.kind == GraphNodeSpec::Kind::kChild) {
      node->embedded = static_cast<const HostGraph&>(*spec.child).Clone();
    }
    *out = node;
    return Status::Ok();
  }

  Status SetExecNode(GraphExec& exec, GraphNode& node, const GraphNodeSpec& spec) override {
    auto& e = static_cast<HostGraphExec&>(exec);
    auto& n = static_cast<HostGraphNode&>(node);
    if (spec.kind != n.kind) return InvalidValue("the parameters are not of the node's kind");
    std::function<void()> op;
    size_t child_nodes = 0;
    FERRY_RETURN_IF_ERROR(NodeOp(spec, &op, &child_nodes));
    if (spec.kind == GraphNodeSpec::Kind::kChild) {
      size_t before = 0;
      FERRY_RETURN_IF_ERROR(e.ChildNodes(n, &before));
      if (before != child_nodes) {
        return InvalidValue("the new child graph's topology differs from the node's child's");
      }
    }
    return e.Replace(n, std::move(op));
  }

  Status SetExecNodeEnabled(GraphExec& exec, GraphNode& node, bool enabled) override {
    return static_cast<HostGraphExec&>(exec).SetEnabled(static_cast<HostGraphNode&>(node), enabled);
  }

  Status UpdateGraphExec(GraphExec& exec, Graph& graph) override {
    return static_cast<HostGraphExec&>(exec).ReplaceAll(static_cast<HostGraph&>(graph));
  }

  Status CloneGraph(Graph& graph, std::unique_ptr<Graph>* out) override {
    std::unique_ptr<HostGraph> clone = static_cast<HostGraph&>(graph).Clone();
    clone->allocations = static_cast<HostGraph&>(graph).allocations;
    *out = std::move(clone);
    return Status::Ok();
  }

  Status GraphNodeCount(Graph& graph, uint64_t* count) override {
    *count = static_cast<HostGraph&>(graph).size();
    return Status::Ok();
  }

  Status InstantiateGraph(Graph& graph, uint64_t flags, std::unique_ptr<GraphExec>* out) override {
    (void)flags;  // upload, auto-free, device launch, priority: nothing to do on the host
    std::unique_ptr<HostGraphExec> exec;
    FERRY_RETURN_IF_ERROR(HostGraphExec::Make(static_cast<HostGraph&>(graph), &exec));
    *out = std::move(exec);
    return Status::Ok();
  }

  // One stream operation runs every node, in order; event nodes split it
  // into segments, each one stream operation, with the events' records and
  // waits queued between them (HostEventNodeOp), and so do host nodes, each
  // a host gate between two segments (HostNodeOp; the replay's order is the
  // order of `host_calls`).
  Status LaunchGraph(GraphExec& exec, Stream& stream,
                     std::span<const GraphHostCall> host_calls) override {
    auto& e = static_cast<HostGraphExec&>(exec);
    const std::shared_ptr<const HostGraphOps> ops = e.ops();
    if (CountHostNodes(*ops) != host_calls.size()) {
      return InvalidValue("the executable graph has " + std::to_string(CountHostNodes(*ops)) +
                          " host nodes; the launch brought " + std::to_string(host_calls.size()) +
                          " host gates");
    }
    for (const GraphHostCall& call : host_calls) {
      if (call.gate == nullptr || !call.reached) return InvalidValue("a host node without a gate");
    }
    size_t next_host_call = 0;
    size_t begin = 0;
    auto queue_segment = [&](size_t end) {
      Append(stream, {}, [ops, begin, end] {
        for (size_t i = begin; i < end; ++i) (*ops)[i]();
      });
    };
    for (size_t i = 0; i < ops->size(); ++i) {
      const auto* event_node = (*ops)[i].target<HostEventNodeOp>();
      const auto* host_node = (*ops)[i].target<HostNodeOp>();
      if (event_node == nullptr && host_node == nullptr) continue;
      if (i > begin) queue_segment(i);
      begin = i + 1;
      if (host_node != nullptr) {
        const GraphHostCall& call = host_calls[next_host_call++];
        FERRY_RETURN_IF_ERROR(EnqueueHostGate(
            stream, call.gate,
            [reached = call.reached, host_function = host_node->host_function](Status status) {
              reached(host_function, std::move(status), /*held=*/true);
            }));
        continue;
      }
      FERRY_RETURN_IF_ERROR(event_node->wait ? StreamWaitEvent(stream, *event_node->event)
                                             : RecordEvent(*event_node->event, stream));
    }
    if (begin < ops->size() || begin == 0) queue_segment(ops->size());
    return Status::Ok();
  }

  // Host memory needs no upload, so there is nothing to queue on the stream.
  Status UploadGraph(GraphExec& exec, Stream& stream) override { return Status::Ok(); }

  // --- graph node kinds: memory allocation and free nodes ---------------------
  // An allocation node reserves its address range now and runs nothing: its
  // memory is the executable graph's (CommitGraphMemory), so the node has
  // nothing to do at launch; a free node has nothing to do either (the memory
  // goes with the executable graph).
  Status AddGraphMemAllocNode(Graph& graph, std::span<GraphNode* const> dependencies, Context& ctx,
                              int device, uint64_t bytes, GraphNode** out,
                              uint64_t* dptr) override {
    (void)ctx;
    FERRY_RETURN_IF_ERROR(CheckDevice(device));
    uint64_t rounded = 0;
    if (bytes == 0 || !RoundUp(bytes, host_internal::HostVirtualMemory::Granularity(), &rounded)) {
      return InvalidValue("a graph allocation of " + std::to_string(bytes) + " bytes");
    }
    if (rounded > device_memory_[device]) {
      return Status::OutOfMemory("a graph allocation of " + std::to_string(bytes) +
                                 " bytes exceeds device " + std::to_string(device) + "'s memory");
    }
    void* base =
        mmap(nullptr, rounded, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
      return Status::OutOfMemory("cannot reserve " + std::to_string(rounded) +
                                 " bytes of addresses");
    }
    auto allocation = std::make_shared<HostGraphAllocation>(base, rounded, device);
    FERRY_RETURN_IF_ERROR(AddGraphNode(graph, dependencies, GraphNodeSpec{}, out));
    static_cast<HostGraph&>(graph).allocations.push_back(std::move(allocation));
    *dptr = reinterpret_cast<uint64_t>(base);
    return Status::Ok();
  }

  Status AddGraphMemFreeNode(Graph& graph, std::span<GraphNode* const> dependencies, uint64_t dptr,
                             GraphNode** out) override {
    (void)dptr;
    return AddGraphNode(graph, dependencies, GraphNodeSpec{}, out);
  }

  // The memory goes back like every release (ReleaseAfterQueuedWork over
  // `tenant`) when the executable graph goes, unfreed allocations with it.
  Status CommitGraphMemory(GraphExec& exec, Graph& graph, Tenant& tenant) override {
    const auto& allocations = static_cast<HostGraph&>(graph).allocations;
    std::vector<uint64_t> bytes(device_memory_.size(), 0);
    for (const auto& a : allocations) bytes[a->device] += a->bytes;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& a : allocations) {
        if (a->held) return InvalidValue("another executable graph holds the graph's memory");
      }
      int d = 0;
      if (!books_->TakeAll(bytes, &d)) {
        return Status::OutOfMemory("the graph allocates " + std::to_string(bytes[d]) +
                                   " bytes on device " + std::to_string(d) + "; " +
                                   std::to_string(books_->free_bytes(d)) + " are free");
      }
      for (const auto& a : allocations) a->held = true;
    }
    auto give_back = [this, bytes, allocations] {
      for (const auto& a : allocations) {
        madvise(a->base, a->bytes, MADV_DONTNEED);
        mprotect(a->base, a->bytes, PROT_NONE);
      }
      // Under mu_, as CommitGraphMemory takes them: a commit in between
      // never sees the memory held with its bytes already given back.
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& a : allocations) a->held = false;
      for (size_t d = 0; d < bytes.size(); ++d) books_->Give(static_cast<int>(d), bytes[d]);
    };
    auto memory = std::make_shared<HostGraphMemory>();
    memory->allocations = allocations;
    memory->release = [state = static_cast<HostTenant&>(tenant).state,
                       give_back = std::move(give_back)] {
      ReleaseAfterQueuedWork(state, give_back);
    };
    for (const auto& a : allocations) {
      if (mprotect(a->base, a->bytes, PROT_READ | PROT_WRITE) != 0) {
        return Status::OutOfMemory("cannot make a graph allocation accessible");  // `memory` undoes
      }
    }
    static_cast<HostGraphExec&>(exec).memory = std::move(memory);
    return Status::Ok();
  }

  // Nothing to do: the memory is the executable graph's (above).
  Status FreeGraphAllocations(GraphExec& exec, std::span<const uint64_t> unfreed) override {
    (void)exec, (void)unfreed;
    return Status::Ok();
  }

  // --- graph node kinds: event record and wait nodes ---------------------------
  Status AddGraphEventNode(Graph& graph, std::span<GraphNode* const> dependencies, Event& event,
                           bool wait, GraphNode** out) override {
    FERRY_RETURN_IF_ERROR(AddGraphNode(graph, dependencies, GraphNodeSpec{}, out));
    SetGraphNodeOp(graph, **out, HostEventNodeOp{&event, wait});
    return Status::Ok();
  }

  Status SetGraphEventNode(Graph& graph, GraphNode& node, Event& event, bool wait) override {
    SetGraphNodeOp(graph, node, HostEventNodeOp{&event, wait});
    return Status::Ok();
  }

  Status SetExecEventNode(GraphExec& exec, GraphNode& node, Event& event, bool wait) override {
    return static_cast<HostGraphExec&>(exec).Replace(static_cast<HostGraphNode&>(node),
                                                     HostEventNodeOp{&event, wait});
  }

  Status UpdateCaptureDependencies(Stream& stream, std::span<GraphNode* const> dependencies,
                                   bool set) override {
    HostStream& s = AsStream(stream);
    std::lock_guard<std::mutex> lock(s.ctx().mu);
    HostCapture* capture = s.ActiveCapture();
    if (capture == nullptr) {
      return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is not capturing");
    }
    const size_t next = capture->ops.size();
    auto& extra = capture->extra_after[next];
    if (set) {
      extra.clear();
      capture->set_at.insert(next);
    }
    extra.insert(extra.end(), dependencies.begin(), dependencies.end());
    return Status::Ok();
  }

  // --- graph node kinds: host nodes ----------------------------------------------
  // Recorded as a HostNodeOp in the capture's list (AppendLocked).
  Status CaptureHostNode(Stream& stream, Stream& origin, uint64_t host_function) override {
    (void)origin;  // the capture's one list serves all of its streams
    HostStream& s = AsStream(stream);
    std::lock_guard<std::mutex> lock(s.ctx().mu);
    if (s.ActiveCapture() == nullptr) {
      return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is not capturing");
    }
    AppendLocked(stream, {}, HostNodeOp{host_function});
    return Status::Ok();
  }

  Status GraphExecHostNodes(GraphExec& exec, uint32_t* count) override {
    *count = static_cast<uint32_t>(CountHostNodes(*static_cast<HostGraphExec&>(exec).ops()));
    return Status::Ok();
  }

  Status EmbeddedGraph(Graph& graph, GraphNode& node, std::shared_ptr<Graph>* out,
                       std::vector<GraphNode*>* nodes) override {
    (void)graph;
    auto& n = static_cast<HostGraphNode&>(node);
    if (n.embedded == nullptr) return InvalidValue("not a child-graph node");
    for (const auto& embedded_node : n.embedded->nodes()) nodes->push_back(embedded_node.get());
    *out = n.embedded;
    return Status::Ok();
  }

  // Graph memory is an executable graph's for as long as it lives, and goes
  // back to the device with it: nothing is kept to trim.
  Status TrimGraphMemory(int device) override { return CheckDevice(device); }

  // --- explicit-graph editing --------------------------------------------------
  Status EditGraphEdges(Graph& graph, std::span<GraphNode* const> from,
                        std::span<GraphNode* const> to, bool remove) override {
    return static_cast<HostGraph&>(graph).EditEdges(from, to, remove);
  }

  Status DestroyGraphNode(Graph& graph, GraphNode& node) override {
    return static_cast<HostGraph&>(graph).Destroy(node);
  }

  // A clone's nodes are the original's, in the same order (HostGraph::Clone).
  Status FindGraphNodeInClone(Graph& original, GraphNode& node, Graph& clone,
                              GraphNode** out) override {
    const auto& from = static_cast<HostGraph&>(original).nodes();
    const auto& to = static_cast<HostGraph&>(clone).nodes();
    auto it =
        std::find_if(from.begin(), from.end(), [&node](const auto& n) { return n.get() == &node; });
    if (it == from.end() || from.size() != to.size()) {
      return InvalidValue("the node has no copy in the clone");
    }
    *out = to[static_cast<size_t>(it - from.begin())].get();
    return Status::Ok();
  }

  Status SetGraphNode(Graph& graph, GraphNode& node, const GraphNodeSpec& spec) override {
    (void)graph;
    auto& n = static_cast<HostGraphNode&>(node);
    if (spec.kind != n.kind || spec.kind == GraphNodeSpec::Kind::kChild) {
      return InvalidValue("the parameters are not of the node's kind");
    }
    size_t child_nodes = 0;
    return NodeOp(spec, &n.op, &child_nodes);
  }

 private:
  // The work of a node described by `spec` (kChild: the child's nodes, in a
  // topological order, copied now; *child_nodes gets how many).
  // Node `node` of `graph` does `op` from now on (later instantiations).
  static void SetGraphNodeOp(Graph& graph, GraphNode& node, std::function<void()> op) {
    (void)graph;
    static_cast<HostGraphNode&>(node).op = std::move(op);
  }
  Status NodeOp(const GraphNodeSpec& spec, std::function<void()>* op, size_t* child_nodes) {
    *op = [] {};
    switch (spec.kind) {
      case GraphNodeSpec::Kind::kEmpty:
        return Status::Ok();
      case GraphNodeSpec::Kind::kKernel:
        return LaunchOp(*AsContext(*spec.ctx).state(), *spec.function, spec.config, spec.params,
                        op);
      case GraphNodeSpec::Kind::kMemset:
        return MemsetOp(spec.dst, spec.pitch, spec.value, spec.element_bytes, spec.width,
                        spec.height, op);
      case GraphNodeSpec::Kind::kCopy:
        *op = [dst = spec.dst, src = spec.src, bytes = spec.bytes] {
          std::memmove(AsPointer(dst), AsPointer(src), bytes);
        };
        return Status::Ok();
      case GraphNodeSpec::Kind::kHost:
        if (spec.host_function == 0) return InvalidValue("host node without a host function");
        *op = HostNodeOp{spec.host_function};
        return Status::Ok();
      case GraphNodeSpec::Kind::kChild: {
        const auto& child = static_cast<const HostGraph&>(*spec.child);
        // A host node's gate belongs to the launch of the graph that holds
        // it; inside a child's one operation it could not hold the stream.
        if (child.HostNodes() != 0) {
          return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, "child graphs with host nodes");
        }
        auto ops = std::make_shared<HostGraphOps>();
        FERRY_RETURN_IF_ERROR(child.Order(ops.get()));
        *child_nodes = child.size();
        *op = [ops = std::shared_ptr<const HostGraphOps>(std::move(ops))] {
          for (const std::function<void()>& child_op : *ops) child_op();
        };
        return Status::Ok();
      }
    }
    return InvalidValue("unknown graph node kind");
  }
  Status CheckDevice(int device) const {
    if (device < 0 || device >= static_cast<int>(devices_.size())) {
      return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "no device " + std::to_string(device));
    }
    return Status::Ok();
  }

  static host_internal::KernelResources Resources(Function& function) {
    auto& f = static_cast<HostFunction&>(function);
    host_internal::KernelResources r;
    r.max_threads_per_block = f.attribute(CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK);
    r.num_regs = f.attribute(CU_FUNC_ATTRIBUTE_NUM_REGS);
    r.static_shared_bytes = f.attribute(CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES);
    r.max_dynamic_shared_bytes = f.attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES);
    r.non_portable_cluster_size_allowed =
        f.attribute(CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED) != 0;
    r.required_cluster[0] = f.attribute(CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH);
    r.required_cluster[1] = f.attribute(CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_HEIGHT);
    r.required_cluster[2] = f.attribute(CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH);
    return r;
  }

  // Threads per block of `config`, checked against the device's limits.
  static Status BlockThreads(const LaunchConfig& config, int* threads) {
    uint64_t product = 1;
    for (int i = 0; i < 3; ++i) {
      if (config.block[i] == 0 || config.block[i] > host_internal::kMaxBlockDim[i]) {
        return InvalidValue("block dimension " + std::to_string(i) + " = " +
                            std::to_string(config.block[i]) + " out of range");
      }
      product *= config.block[i];
    }
    if (product > static_cast<uint64_t>(host_internal::kMaxThreadsPerBlock)) {
      return InvalidValue(std::to_string(product) + " threads per block exceed the device maximum");
    }
    *threads = static_cast<int>(product);
    return Status::Ok();
  }

  // What an image describes: each kernel and global once, first one wins.
  static ModuleDescription Describe(const image::ImageLayout& layout) {
    ModuleDescription desc;
    absl::flat_hash_map<std::string, bool> seen_kernels, seen_globals;
    for (const image::KernelLayout& k : layout.kernels) {
      if (!seen_kernels.emplace(k.name, true).second) continue;
      KernelDescription kd;
      kd.name = k.name;
      for (const image::ParamLayout& p : k.params)
        kd.params.push_back(KernelParam{p.offset, p.size});
      desc.kernels.push_back(std::move(kd));
    }
    for (const image::GlobalLayout& g : layout.globals) {
      if (!seen_globals.emplace(g.name, true).second) continue;
      desc.globals.push_back(GlobalDescription{g.name, g.size});
    }
    return desc;
  }

  // A module of `ctx` with `layout`'s kernels (bound to their host
  // implementations) and fresh copies of its globals.
  Status BuildModule(Context& ctx, const image::ImageLayout& layout, std::unique_ptr<Module>* out,
                     ModuleDescription* description) {
    auto module = std::make_unique<HostModule>(AsContext(ctx).state());
    ModuleDescription desc = Describe(layout);
    for (const KernelDescription& kd : desc.kernels) {
      auto fn = std::make_unique<HostFunction>(AsContext(ctx).state().get(), kd.name, kd.params,
                                               FindHostKernel(kd.name));
      module->functions_by_name.emplace(kd.name, fn.get());
      module->functions.push_back(std::move(fn));
    }
    for (const image::GlobalLayout& g : layout.globals) {
      if (module->globals.contains(g.name)) continue;
      // At least one byte, so that even an empty global has a distinct address.
      std::shared_ptr<void> storage = AllocateDeviceStorage(std::max<uint64_t>(g.size, 1));
      if (storage == nullptr) {
        return Status::OutOfMemory("cannot allocate global " + g.name + " (" +
                                   std::to_string(g.size) + " bytes)");
      }
      if (!g.initial.empty()) {
        std::memcpy(storage.get(), g.initial.data(), std::min<uint64_t>(g.initial.size(), g.size));
      }
      module->globals.emplace(g.name, HostModule::Global{std::move(storage), g.size});
    }
    *description = std::move(desc);
    *out = std::move(module);
    return Status::Ok();
  }

  // MemAllocAt: a mapping at a fixed address, unmapped when it goes.
  struct PlacedMapping {
    void* address = nullptr;
    size_t bytes = 0;
    ~PlacedMapping() { munmap(address, bytes); }
  };
  // The mappings under one placed allocation: its own interior and its
  // boundary pages (shared through placed_pages_).
  struct PlacedPages {
    std::vector<std::shared_ptr<PlacedMapping>> mappings;
  };
  // Maps [from, to) rounded out to pages at exactly those addresses,
  // reusing boundary pages placed before (listed in `reused`, [start, end)
  // each); fails, mapping nothing, when any page is taken.
  Status PlacePages(uint64_t from, uint64_t to, std::shared_ptr<PlacedPages>* out,
                    std::vector<std::pair<uint64_t, uint64_t>>* reused) {
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    const uint64_t first = from / page * page;
    const uint64_t last = (to - 1) / page * page;  // the last page's start
    auto result = std::make_shared<PlacedPages>();
    auto map_at = [](uint64_t address, uint64_t bytes, std::shared_ptr<PlacedMapping>* mapping) {
      void* p = mmap(AsPointer(address), bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
      if (p == MAP_FAILED) {
        return Status::Cuda(CUDA_ERROR_ALREADY_MAPPED, HexAddress(address) + " is taken (" +
                                                           std::string(std::strerror(errno)) + ")");
      }
      if (p != AsPointer(address)) {  // a kernel without MAP_FIXED_NOREPLACE took it as a hint
        munmap(p, bytes);
        return Status::Cuda(CUDA_ERROR_ALREADY_MAPPED, HexAddress(address) + " is taken");
      }
      *mapping = std::make_shared<PlacedMapping>();
      (*mapping)->address = p;
      (*mapping)->bytes = bytes;
      return Status::Ok();
    };
    std::lock_guard<std::mutex> lock(placed_mu_);
    auto boundary = [&](uint64_t address) {
      auto it = placed_pages_.find(address);
      if (it != placed_pages_.end()) {
        if (auto alive = it->second.lock()) {
          result->mappings.push_back(std::move(alive));
          reused->emplace_back(address, address + page);
          return Status::Ok();
        }
      }
      std::shared_ptr<PlacedMapping> mapping;
      FERRY_RETURN_IF_ERROR(map_at(address, page, &mapping));
      placed_pages_[address] = mapping;
      result->mappings.push_back(std::move(mapping));
      return Status::Ok();
    };
    FERRY_RETURN_IF_ERROR(boundary(first));
    if (last != first) {
      if (last > first + page) {
        std::shared_ptr<PlacedMapping> interior;
        FERRY_RETURN_IF_ERROR(map_at(first + page, last - first - page, &interior));
        result->mappings.push_back(std::move(interior));
      }
      FERRY_RETURN_IF_ERROR(boundary(last));
    }
    // Pages whose allocations all went are forgotten here too.
    std::erase_if(placed_pages_, [](const auto& entry) { return entry.second.expired(); });
    *out = std::move(result);
    return Status::Ok();
  }
  std::mutex placed_mu_;  // after mu_ when both are taken
  std::map<uint64_t, std::weak_ptr<PlacedMapping>> placed_pages_ ABSL_GUARDED_BY(placed_mu_);

  struct Allocation {
    std::shared_ptr<void> storage;
    uint64_t bytes = 0;  // as accounted (rounded up)
    int device = 0;
    const ContextState* owner = nullptr;     // identity only
    std::shared_ptr<HostMemPoolState> pool;  // the pool it came from, or null
    // Parked (ParkTenantMemory): the bytes, while the storage holds none.
    std::shared_ptr<uint8_t[]> parked;
  };

  // What releases `allocations`: their storage goes, then their bytes are
  // back on their devices (and pools).
  std::function<void()> ReleaseAllocations(std::vector<Allocation> allocations) {
    auto owned = std::make_shared<std::vector<Allocation>>(std::move(allocations));
    return [this, owned] {
      std::vector<Allocation> gone = std::move(*owned);
      for (Allocation& a : gone) {
        a.storage.reset();
        if (a.pool) a.pool->Release(a.bytes);
      }
      std::lock_guard<std::mutex> lock(mu_);
      for (const Allocation& a : gone) {
        if (a.parked == nullptr) books_->Give(a.device, a.bytes);  // parked: off the books already
      }
    };
  }

  // The GpuBackend contract hands back only objects this backend created.
  static HostArray& AsArray(Array& array) { return static_cast<HostArray&>(array); }
  static HostContext& AsContext(Context& ctx) { return static_cast<HostContext&>(ctx); }

  // CUDA arrays, textures and surfaces: an array's memory is an allocation
  // of `ctx` (so it is accounted and freed as one).
  Status MakeArray(const std::shared_ptr<ContextState>& ctx, const ArrayDescriptor& descriptor,
                   std::unique_ptr<HostArray>* out) {
    if ((descriptor.flags & ~kHostArrayFlags) != 0) {
      return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED,
                          "the host backend's arrays are plain memory: flags " +
                              std::to_string(descriptor.flags & ~kHostArrayFlags) +
                              " (sparse, deferred mapping, depth, color attachment or video "
                              "arrays) are not supported");
    }
    unsigned element_bytes = 0;
    uint64_t bytes = 0;
    FERRY_RETURN_IF_ERROR(CheckArrayShape(descriptor, 0, &element_bytes, &bytes));
    uint64_t base = 0;
    FERRY_RETURN_IF_ERROR(Allocate(ctx.get(), ctx->device, bytes, &base));
    *out = std::make_unique<HostArray>(this, ctx, base, descriptor, element_bytes);
    return Status::Ok();
  }

  // Fills `state`'s layout, owner and storage from `resource`.
  Status DescribeTexels(HostContext& ctx, const TextureResource& resource,
                        HostTextureState* state) {
    host_internal::TexelLayout& layout = state->layout;
    state->owner = ctx.state().get();
    if (resource.kind == TextureResource::Kind::kArray) {
      const HostArray& array = AsArray(*resource.array);
      const ArrayDescriptor& d = array.descriptor;
      layout.base = AsPointer(array.base);
      layout.width = d.width;
      layout.height = ArrayRows(d);
      layout.depth = ArraySlices(d);
      layout.row_pitch = array.row_pitch;
      layout.slice_pitch = array.slice_pitch;
      layout.format = d.format;
      layout.channels = d.channels;
      layout.element_bytes = array.element_bytes;
      layout.layered = (d.flags & CUDA_ARRAY3D_LAYERED) != 0;
      layout.dimensions = d.height == 0 ? 1 : (d.depth == 0 || layout.layered ? 2 : 3);
      if (layout.layered && d.height == 0) layout.height = 1;
    } else {
      layout.base = AsPointer(resource.dev_ptr);
      layout.format = resource.format;
      layout.channels = resource.channels;
      layout.element_bytes = ArrayFormatBytes(resource.format) * resource.channels;
      if (layout.element_bytes == 0) return InvalidValue("unknown resource format");
      if (resource.kind == TextureResource::Kind::kLinear) {
        layout.width = resource.size_bytes / layout.element_bytes;
        layout.row_pitch = layout.width * layout.element_bytes;
        layout.dimensions = 1;
      } else {
        layout.width = resource.width;
        layout.height = resource.height;
        layout.row_pitch = resource.pitch_bytes;
        layout.dimensions = 2;
      }
      layout.slice_pitch = layout.row_pitch * layout.height;
      if (layout.width == 0) return InvalidValue("the resource holds no whole element");
    }
    // Keep the memory under the texels alive as long as the object.
    const uint64_t address = reinterpret_cast<uint64_t>(layout.base);
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [base, allocation] : allocations_) {
        if (address >= base && address - base < allocation.bytes) {
          state->storage = allocation.storage;
          return Status::Ok();
        }
      }
    }
    // Virtual memory (the memory of a CUDA backend over this one, and
    // programs' own cuMemMap): the object reads a view of its own of the
    // mapped pages, so unmapping them later can never leave it reading
    // pages that are gone.
    uint64_t span = 0;
    if (resource.kind == TextureResource::Kind::kLinear) {
      span = resource.size_bytes;
    } else if (!RowSpan(layout.width * layout.element_bytes, layout.height, layout.row_pitch,
                        &span)) {
      return InvalidValue("the resource's extent overflows");
    }
    uint8_t* view = nullptr;
    if (virtual_memory_.View(address, span, &state->storage, &view).ok()) {
      layout.base = view;
      return Status::Ok();
    }
    return InvalidValue("the resource is not memory of this backend");
  }
  static HostStream& AsStream(Stream& stream) { return static_cast<HostStream&>(stream); }

  Status Allocate(const ContextState* owner, int device, uint64_t bytes, uint64_t* dptr,
                  std::shared_ptr<HostMemPoolState> pool = nullptr) {
    if (bytes == 0) return InvalidValue("cannot allocate 0 bytes");
    uint64_t rounded;
    if (!RoundUp(bytes, host_internal::kAllocationAlignment, &rounded)) {
      return Status::OutOfMemory("allocation of " + std::to_string(bytes) + " bytes overflows");
    }
    // Taken first (atomically), so that concurrent allocations cannot both
    // pass.
    if (!books_->Take(device, rounded)) {
      return Status::OutOfMemory("cannot allocate " + std::to_string(bytes) + " bytes on device " +
                                 std::to_string(device) + ": " +
                                 std::to_string(books_->free_bytes(device)) + " of " +
                                 std::to_string(device_memory_[device]) + " bytes free");
    }
    std::shared_ptr<void> storage = AllocateDeviceStorage(rounded);
    std::lock_guard<std::mutex> lock(mu_);
    if (storage == nullptr) {
      books_->Give(device, rounded);
      return Status::OutOfMemory("host memory exhausted allocating " + std::to_string(bytes) +
                                 " bytes");
    }
    *dptr = reinterpret_cast<uint64_t>(storage.get());
    allocations_.emplace(*dptr,
                         Allocation{std::move(storage), rounded, device, owner, std::move(pool)});
    return Status::Ok();
  }

  // Appends `op` to `stream` after `after` and after what legacy-stream
  // semantics order before it (see the file comment). Returns its point.
  StreamPoint Append(Stream& stream, std::vector<StreamPoint> after, std::function<void()> op) {
    std::lock_guard<std::mutex> lock(AsStream(stream).ctx().mu);
    return AppendLocked(stream, std::move(after), std::move(op));
  }
  // Append of a copy or memset: its run counts as the device's memory
  // activity (NVML's memory utilization).
  void AppendMemoryOp(Stream& stream, std::function<void()> op) {
    Append(stream, {},
           [op = std::move(op), activity = memory_activity_[AsStream(stream).ctx().device]] {
             DeviceActivity::Scope busy(*activity);
             op();
           });
  }

 public:
  // NVML stand-in: utilization from this backend's own accounting (the share
  // of the last second during which a kernel, or a copy or memset queued on a
  // stream, ran on the device). Copies the session makes at once on an idle
  // stream, without queueing, are not counted. No temperature or power.
  Status ReadDeviceTelemetry(int device, DeviceTelemetry* out) override {
    if (device < 0 || device >= static_cast<int>(devices_.size())) {
      return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "no device " + std::to_string(device));
    }
    const DeviceActivity::Clock::time_point now = DeviceActivity::Clock::now();
    *out = DeviceTelemetry{};
    out->gpu_utilization = kernel_activity_[device]->PercentBusy(now);
    out->memory_utilization = memory_activity_[device]->PercentBusy(now);
    return Status::Ok();
  }

 private:
  // Append with the stream's ContextState::mu held by the caller.
  StreamPoint AppendLocked(Stream& stream, std::vector<StreamPoint> after,
                           std::function<void()> op) {
    HostStream& s = AsStream(stream);
    ContextState& c = s.ctx();
    if (HostCapture* capture = s.ActiveCapture(); capture != nullptr) {
      // Recorded, not run: the point returned is reached from the start.
      if (op) capture->ops.push_back(std::move(op));
      return StreamPoint{s.queue_ptr(), 0};
    }
    auto add_if_pending = [&after](StreamPoint p) {
      if (!p.Reached()) after.push_back(std::move(p));
    };
    if (!c.barriers.empty()) {
      std::erase_if(c.barriers, [](const StreamPoint& p) { return p.Reached(); });
      for (const StreamPoint& p : c.barriers) after.push_back(p);
    }
    if (s.legacy()) {
      for (const ContextState::StreamEntry& e : c.streams) {
        if (!e.non_blocking) add_if_pending(e.queue->Tail());
      }
    } else if (!s.non_blocking()) {
      add_if_pending(c.legacy->Tail());
    }
    return s.queue().Enqueue(std::move(after), std::move(op));
  }

  Status CheckLaunchConfig(HostFunction& f, const LaunchConfig& config) {
    uint64_t threads = 1;
    for (int i = 0; i < 3; ++i) {
      if (config.grid[i] == 0 || config.grid[i] > host_internal::kMaxGridDim[i]) {
        return InvalidValue("grid dimension " + std::to_string(i) + " = " +
                            std::to_string(config.grid[i]) + " out of range");
      }
      if (config.block[i] == 0 || config.block[i] > host_internal::kMaxBlockDim[i]) {
        return InvalidValue("block dimension " + std::to_string(i) + " = " +
                            std::to_string(config.block[i]) + " out of range");
      }
      threads *= config.block[i];
    }
    if (threads > static_cast<uint64_t>(f.attribute(CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK))) {
      return InvalidValue(std::to_string(threads) + " threads per block exceed the maximum");
    }
    if (config.shared_bytes >
        static_cast<uint32_t>(f.attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES))) {
      return InvalidValue(std::to_string(config.shared_bytes) +
                          " bytes of dynamic shared memory exceed the kernel's maximum "
                          "(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)");
    }
    const auto& cl = config.cluster;
    if (cl[0] != 0 || cl[1] != 0 || cl[2] != 0) {
      const uint64_t max_cluster =
          f.attribute(CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED) != 0
              ? host_internal::kNonPortableClusterSize
              : host_internal::kPortableClusterSize;
      uint64_t cluster_blocks = 1;
      for (int i = 0; i < 3; ++i) {
        if (cl[i] == 0 || config.grid[i] % cl[i] != 0) {
          return Status::Cuda(CUDA_ERROR_INVALID_CLUSTER_SIZE,
                              "cluster dimensions must be non-zero and divide the grid");
        }
        cluster_blocks *= cl[i];
      }
      if (cluster_blocks > max_cluster) {
        return Status::Cuda(
            CUDA_ERROR_INVALID_CLUSTER_SIZE,
            "cluster of " + std::to_string(cluster_blocks) + " blocks is too large");
      }
    }
    if (config.cooperative) return CheckCooperativeGrid(f, config, static_cast<int>(threads));
    return Status::Ok();
  }

  // A cooperative grid must fit on the device at once: at most the occupancy
  // model's blocks per SM times the SM count, as the driver computes it. (The
  // twin emulates the whole grid, so any grid would run; the limit is kept so
  // that a program sees the GPU's answer.)
  Status CheckCooperativeGrid(HostFunction& f, const LaunchConfig& config, int threads) {
    int per_sm = 0;
    FERRY_RETURN_IF_ERROR(host_internal::MaxActiveBlocksPerMultiprocessor(
        Resources(f), threads, config.shared_bytes, &per_sm));
    const uint64_t resident = uint64_t(per_sm) * host_internal::kMultiprocessorCount;
    const uint64_t blocks = uint64_t{config.grid[0]} * config.grid[1] * config.grid[2];
    if (blocks > resident) {
      return Status::Cuda(CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE,
                          "cooperative grid of " + std::to_string(blocks) + " blocks exceeds the " +
                              std::to_string(resident) + " that can be resident at once (" +
                              std::to_string(per_sm) + " per SM)");
    }
    return Status::Ok();
  }

  ferry_host_kernel_fn FindHostKernel(const std::string& name) const {
    const std::string symbol = FERRY_HOST_KERNEL_PREFIX + name;
    for (const KernelLibrary& lib : libraries_) {
      if (void* sym = dlsym(lib.handle, symbol.c_str())) {
        return reinterpret_cast<ferry_host_kernel_fn>(sym);
      }
    }
    return nullptr;
  }

  const std::vector<uint64_t> device_memory_;  // per device
  // How much of each device is taken: shared with other processes'
  // backends (HostBackendOptions::ledger), or this backend's own.
  const std::shared_ptr<DeviceLedger> books_;
  const std::vector<KernelLibrary> libraries_;
  std::vector<DeviceDescription> devices_;  // fixed after construction
  // NVML stand-in: per device, when kernels (kernel_activity_) and copies and
  // memsets queued on streams (memory_activity_) ran. Fixed after
  // construction; shared with the queued operations that record into them.
  std::vector<std::shared_ptr<DeviceActivity>> kernel_activity_;
  std::vector<std::shared_ptr<DeviceActivity>> memory_activity_;

  std::mutex mu_;
  absl::flat_hash_map<uint64_t, Allocation> allocations_ ABSL_GUARDED_BY(mu_);

  std::unique_ptr<CompletionThread> completions_;
  // The tenant of contexts that join no other (tests that use the backend
  // directly): their releases wait for each other's work.
  const std::shared_ptr<TenantState> default_tenant_ = std::make_shared<TenantState>();

  // Physical memory is charged to the books like any allocation (after
  // books_, so it goes before them).
  host_internal::HostVirtualMemory virtual_memory_{
      [this](int device, uint64_t bytes) -> Status {
        if (!books_->Take(device, bytes)) {
          return Status::OutOfMemory("cannot create " + std::to_string(bytes) +
                                     " bytes on device " + std::to_string(device) + ": " +
                                     std::to_string(books_->free_bytes(device)) + " bytes free");
        }
        return Status::Ok();
      },
      [this](int device, uint64_t bytes) { books_->Give(device, bytes); }};
};

HostArray::~HostArray() {
  // The context may have released it already (it went first): then there
  // is nothing left to free.
  (void)backend->Release(*ctx, base);
}

HostContext::~HostContext() {
  legacy_.reset();  // drains the legacy stream
  std::shared_ptr<StreamQueue> marker;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    marker = std::move(state_->marker);
    state_->barriers.clear();
  }
  if (marker != nullptr) marker->Shutdown();
  backend_->ReleaseContextAllocations(*state_);
}

}  // namespace

Status CreateHostBackend(const HostBackendOptions& options, std::unique_ptr<GpuBackend>* out) {
  if (!options.device_memories.empty()) {
    if (options.device_memories.size() > 64) {
      return Status::InvalidArgument("host backend: at most 64 devices, not " +
                                     std::to_string(options.device_memories.size()));
    }
    for (uint64_t memory : options.device_memories) {
      if (memory == 0)
        return Status::InvalidArgument("host backend: device memory must be positive");
    }
  } else if (options.device_count < 1 || options.device_count > 64) {
    return Status::InvalidArgument("host backend: device_count must be 1..64, not " +
                                   std::to_string(options.device_count));
  } else if (options.device_memory == 0) {
    return Status::InvalidArgument("host backend: device_memory must be positive");
  }
  std::shared_ptr<DeviceLedger> books = options.ledger;
  if (books == nullptr) {
    std::unique_ptr<DeviceLedger> own;
    FERRY_RETURN_IF_ERROR(
        DeviceLedger::Create(HostBackend::DeviceMemories(options), /*shared=*/false, &own));
    books = std::move(own);
  } else {
    // Shared books must describe these very devices.
    const std::vector<uint64_t> memories = HostBackend::DeviceMemories(options);
    bool same = options.ledger->devices() == static_cast<int>(memories.size());
    for (size_t d = 0; same && d < memories.size(); ++d) {
      same = options.ledger->capacity(static_cast<int>(d)) == memories[d];
    }
    if (!same) {
      return Status::InvalidArgument(
          "host backend: the shared device ledger describes other devices than these");
    }
  }
  std::vector<KernelLibrary> libraries;
  auto close_all = [&libraries] {
    for (const KernelLibrary& lib : libraries) dlclose(lib.handle);
  };
  for (const std::string& path : options.kernel_libraries) {
    // RTLD_LOCAL: two libraries may define the same helper symbols; each
    // kernel is looked up by handle, in the order given.
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = dlerror();
      close_all();
      return Status::InvalidArgument("cannot load --host-kernels library '" + path +
                                     "': " + (why != nullptr ? why : "unknown dlopen error"));
    }
    libraries.push_back(KernelLibrary{path, handle});
  }
  try {
    *out = std::make_unique<HostBackend>(options, std::move(libraries), std::move(books));
  } catch (const std::system_error& e) {  // the completion thread could not start
    close_all();
    return Status::Internal(std::string("host backend: ") + e.what());
  }
  return Status::Ok();
}

}  // namespace ferry::backend
