// Session: one client process's connection to ferryd.
//
// A Session owns everything its client creates — contexts, streams, events,
// modules, allocations — and frees all of it when the connection ends for any
// reason (README.md invariant 5). It executes the client's calls in the order
// they were issued (invariant 4) on one executor thread (the thread that calls
// Run), validates every handle and device address range against its own tables
// (invariant 6), and latches the error of a fire-and-forget call until the
// next call that wants a reply (invariant 3).
//
// Calls that wait for the GPU (synchronize, device-to-host copies) do not
// block the executor: they queue a completion with the backend, and the reply
// is written from the backend's thread when the work is done, so later calls
// from the client's other threads keep running. When the work they wait for
// has already finished (GpuBackend::StreamIdleNow), they are answered at once
// on the executor instead: no thread hop for a call that need not wait.
//
// Bulk bytes are read per call as the batch executes (while no host gate is
// closed), so a large host-to-device copy onto an idle stream lands straight
// in device memory when the backend's device memory is host memory, and a
// device-to-host copy's reply is written straight from it (no staging
// buffer).
//
// Host callbacks (hostGate calls) hold a stream until the client opens the
// gate with a gateOpen frame. A call can then block the executor until the
// client's gateOpen arrives (destroying the held stream waits for it; the
// CUDA driver synchronizes inside many calls), so while a gate is closed,
// reading frames does not wait for execution: two threads share the session,
// one reading (and opening gates at once), the other executing the call
// batches read so far, in order (see ServeLoop in session.cc).
//
// Pools (README.md invariant 7): a session's devices are what it borrowed — whole
// backend devices, or slices of them (SessionDevice). The session reports
// each slice's memory as the device's total, refuses allocations past the
// slice's quota on every allocation path, and enforces the slice's compute
// share with an SM partition where the backend offers one, else by
// throttling its launches (ChooseComputeMechanism). Preempt takes the
// devices away: everything is freed at once, the client gets a notice, and
// every later call fails.
//
// Where things are: session.cc holds the serving core (handshake, the two
// serving roles, batches, replies, host gates, Dispatch); the handlers are in
// session_<area>.cc by API area (context, memory, module, stream_event); the
// handle tables are HandleTables, the device ranges a RangeMap, and the
// quotas and compute-share throttles a SessionShares.
//
// Thread-safety: the session's tables and everything Dispatch calls belong to
// the executor role, which one thread at a time holds (serve_mutex_ hands it
// over); a batch of calls executes under exec_mutex_. Preempt opens the
// session's host gates (so no batch stays blocked behind one) and then takes
// exec_mutex_ (waiting at most kPreemptBatchWait, else closing the session),
// so it frees the session's objects between two batches. Stop,
// Preempt, Info and the reply writer are safe from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <absl/base/thread_annotations.h>
#include <absl/time/time.h>

#include "common/frame.h"
#include "common/range_map.h"
#include "common/rdma/rdma_connector.h"
#include "common/rdma/rdma_wire.h"
#include "common/shm_rendezvous.h"
#include "common/status.h"
#include "common/transport.h"
#include "schema/ferry.capnp.h"
#include "server/backend/api/gpu_backend.h"
#include "server/counting_transport.h"
#include "server/handle_table.h"
#include "server/metrics/histogram.h"
#include "server/module_cache.h"
#include "server/session_shares.h"

namespace ferry::server {

// /metrics (server/server_metrics.cc): the buckets, in seconds, of how long
// ferryd took to answer a call whose client waits for the reply, from the
// start of the call's execution to its reply written (a synchronize or a
// device-to-host copy includes the GPU work it waited for).
inline constexpr double kSyncCallBucketSeconds[] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1,     0.25,   0.5,     1,      2.5,   5,      10,    30,   60};

// Whether and how sessions take a client's RDMA offer (Hello.rdma; ferryd
// --rdma, --rdma-device, --rdma-gid-index).
struct RdmaServing {
  bool enabled = false;
  std::string unavailable;  // !enabled: why, for the client's refusal
  const rdma::Verbs* verbs = nullptr;  // null: the system's libibverbs (tests give a fake)
  rdma::DeviceChoice device;
  rdma::RdmaOptions options;
};

// A snapshot of a session for ferryctl.
struct SessionInfo {
  uint64_t id = 0;
  std::string client;  // peer address
  uint32_t pid = 0;
  std::string host;
  std::string program;
  uint64_t bytes_allocated = 0;
  uint64_t allocations = 0;
  uint32_t contexts = 0;
  uint32_t streams = 0;
  uint32_t events = 0;
  uint32_t modules = 0;
  int64_t since_unix_ms = 0;
  // What carries its stream: Transport::Description ("tcp", "rdma ...").
  std::string transport;
  std::vector<uint64_t> device_bytes;        // allocated per session device
  uint64_t module_image_bytes_received = 0;  // image bytes the client sent
  // Allocations that did not fit the quota at first and waited for memory the
  // session had freed to be released (Session::CheckQuotaAfterReleases).
  uint64_t allocations_waited_for_releases = 0;
  // operator logs (server/session_log.h): who and what a session was, over
  // its life.
  std::string token_name, token_id;   // the token it authenticated with; "" = none
  uint64_t bytes_from_client = 0;     // frames and payloads read from the client
  uint64_t bytes_to_client = 0;       // frames and payloads written to it
  uint64_t peak_bytes_allocated = 0;  // the most device memory it held at once
  std::string end_reason;             // why serving ended; "" while it serves
  bool started = false;               // its handshake was answered: it served
  // /metrics (server/server_metrics.cc): counters over the session's life.
  uint64_t calls = 0;               // calls executed
  uint64_t launches = 0;            // kernel and graph launches among them
  uint64_t frames_from_client = 0;  // call batches and gate openings read
  uint64_t frames_to_client = 0;    // replies, keepalives and the handshake reply written
  // Calls the client waited for, by kSyncCallBucketSeconds.
  metrics::HistogramCounts sync_calls;
  // Parking (Session::Park): whether its device memory is parked now, how
  // much is (bytes_allocated - parked_bytes is resident), and over its life
  // how often and how much was parked and brought back, and how long its
  // calls waited for memory to come back.
  bool parked = false;
  uint64_t parked_bytes = 0;
  uint64_t parks = 0;
  uint64_t unparks = 0;
  uint64_t bytes_parked_total = 0;
  uint64_t bytes_unparked_total = 0;
  double park_seconds = 0;    // time spent copying memory out
  double unpark_seconds = 0;  // time its first calls waited for it to come back
  int64_t idle_ms = 0;        // since its last call (0 before the first)
  // Idle release (Session::ReleaseIdle): its slices are back in the pool
  // now (its memory parked); over its life how often that happened and how
  // often it borrowed them again.
  bool slices_released = false;
  uint64_t releases = 0;
  uint64_t reborrows = 0;
  uint64_t moves = 0;  // to another GPU (Session::MoveDevice)
};

// Migration between servers (Session::Depart): where a session goes.
struct SessionDeparture {
  std::string address;  // the target ferryd: HOST:PORT or unix:PATH
  int gpu = 0;          // its GPU index there
  std::string token;    // what the target requires (an admin token); "" = none
};

// A session that arrives from another server (Session::SetArrival): the
// source's MigrationOffer (its message's words) and the bulk bytes its calls
// carry, in order.
struct SessionArrival {
  kj::Array<capnp::word> offer;
  backend::HostBytes bulk;
  // Its addresses, kept free in this process until it places its memory
  // there (GpuBackend::HoldAddresses); may be null.
  std::shared_ptr<void> address_hold;
};

// A live client session as ferryd's Server holds it: a Session in this
// process, or a SessionWorker (server/session_worker.h) standing for one
// that runs in a worker process. Every method is safe from any thread.
class ServedSession {
 public:
  virtual ~ServedSession() = default;
  virtual SessionInfo Info() const = 0;
  // The devices the session holds, as granted (compute mechanisms chosen);
  // a copy, since a move to another GPU (MoveDevice) changes them.
  virtual SessionGrant grant() const = 0;
  // See Session::Preempt.
  virtual bool Preempt(const std::string& reason) = 0;
  // See Session::Park.
  // `count_device`: the backend device whose bytes *parked_bytes counts
  // (-1: all of them).
  virtual Status Park(absl::Duration min_idle, const std::string& reason, int count_device,
                      uint64_t* parked_bytes) = 0;
  // See Session::ReleaseIdle.
  virtual Status ReleaseIdle(absl::Duration min_idle, uint64_t* parked_bytes) = 0;
  // See Session::MoveDevice.
  virtual Status MoveDevice(int device, const SessionDevice& to) = 0;
  // See Session::Depart.
  virtual Status Depart(const SessionDeparture& to, std::string* summary) = 0;
  // Ends the session's connection; it frees everything and ends soon after.
  virtual void Stop() = 0;
};

class Session final : public ServedSession {
 public:
  // `backend` and `module_cache` (may be null: no image cache) must outlive
  // the session. `hello` is the client's handshake; `grant` the devices it
  // may use.
  Session(uint64_t id, std::unique_ptr<Transport> transport, backend::GpuBackend& backend,
          wire::Hello::Reader hello, SessionGrant grant, ModuleImages* module_cache = nullptr);
  // Every device of `backend`, whole.
  Session(uint64_t id, std::unique_ptr<Transport> transport, backend::GpuBackend& backend,
          wire::Hello::Reader hello, ModuleImages* module_cache = nullptr);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Answers the handshake, then executes calls until the connection ends, then
  // opens the session's host gates and frees every resource of the session.
  // Returns when all of that is done. A session preempted before Run answers
  // the handshake with the reason.
  void Run();

  // Ends the connection; Run returns soon after. Any thread.
  void Stop() override;

  // Takes the session's devices away, from any thread: waits for the batch
  // in progress, frees every resource of the session, sends the client a
  // notice (a Reply with seq 0) with `reason`, and from then on answers every
  // call with CUDA_ERROR_DEVICE_UNAVAILABLE and `reason`. The connection stays
  // up until the client closes it. Idempotent.
  // Returns true when it freed the session's resources (or Run had), so the
  // session's quota may be given back now; false when the session is being
  // closed instead (Run frees everything, and the caller's connection thread
  // gives the quota back after that).
  bool Preempt(const std::string& reason) override;
  // Before Run: the most bytes of call frames the session holds read but not
  // yet executed (its inbox, bulk payloads included). A frame that would go
  // past it waits until the executor has caught up and then streams; one
  // that cannot (a host gate is closed) ends the session. Default
  // kDefaultBufferLimit.
  void SetBufferLimit(uint64_t bytes) { buffer_limit_ = bytes; }
  // Before Run: whether the session takes the client's RDMA offer. Without
  // it (the default), an offer is answered with a refusal that says so.
  void SetRdma(RdmaServing rdma) { rdma_serving_ = std::move(rdma); }
  // Before Run: the token the client authenticated with, for logs and Info.
  void SetToken(std::string name, std::string id) {
    token_name_ = std::move(name);
    token_id_ = std::move(id);
  }
  static constexpr uint64_t kDefaultBufferLimit = 4ull << 30;
  // The shortest keepalive period a client may ask for (Hello.keepaliveMs).
  static constexpr uint32_t kMinKeepaliveMs = 10;
  // How long the client has to finish moving to RDMA after the handshake.
  static constexpr std::chrono::seconds kRdmaSetupTimeout{10};
  // How long the client has to answer a shared-memory invitation (its one
  // byte), and then to connect to the rendezvous.
  static constexpr std::chrono::seconds kShmSetupTimeout{10};
  // Tests only: how long the client may take to move to shared memory
  // (default kShmSetupTimeout).
  void TEST_SetShmSetupTimeout(std::chrono::milliseconds timeout) { shm_setup_timeout_ = timeout; }
  // Tests only: how long Preempt waits for the batch in execution.
  void TEST_SetPreemptBatchWait(std::chrono::milliseconds wait) { preempt_batch_wait_ = wait; }

  // Parking (memory overcommit; server/README.md "Parking"). Any thread.
  // Parks the session's device memory in host memory (GpuBackend::
  // ParkTenantMemory: same addresses, the device memory given back) when the
  // session is idle: its handshake answered, not preempted, no batch
  // executing or buffered (waits at most kParkLockWait for the executor),
  // no call for at least `min_idle`, and no work on any of its streams.
  // Otherwise Overloaded (busy, not idle) saying why, and nothing changes. A parked
  // session parks nothing more (OK, 0 bytes). The session's next batch
  // brings the memory back before any of its calls runs (its first call
  // waits), asking the memory-pressure hook for room if the device is full.
  Status Park(absl::Duration min_idle, const std::string& reason, int count_device,
              uint64_t* parked_bytes) override;
  // Before Run: who makes room on a full device. `relieve(device, bytes,
  // requester)` parks other idle sessions' memory on backend device `device`
  // until about `bytes` are free (never this session's) and returns the
  // bytes it parked. Called on the executor with exec_mutex_ held, so it
  // must not wait for this session. Unset: nobody (an allocation that does
  // not fit fails as before).
  using MemoryPressure = std::function<uint64_t(int device, uint64_t bytes, uint64_t requester)>;
  void SetMemoryPressure(MemoryPressure relieve) { relieve_ = std::move(relieve); }
  static constexpr std::chrono::milliseconds kParkLockWait{100};

  // Idle release (server/README.md "Idle release"). Before Run: how the
  // session's slices go back to the pool and come again. `give_back` runs
  // under exec_mutex_ once the memory is parked (no call of the session can
  // run before it returns; it must not wait for this session); an error
  // (the pool will not take them: the session is being preempted or
  // drained) leaves the slices the session's. `borrow_again` runs on the
  // executor before the next batch and blocks until the same slices are
  // the session's again, the borrow is refused (its error fails the batch's
  // calls), or `gone` says the session ended.
  struct SliceLease {
    std::function<Status()> give_back;
    std::function<Status(const std::function<bool()>& gone)> borrow_again;
  };
  void SetSliceLease(SliceLease lease) { slice_lease_ = std::move(lease); }
  // Any thread. Parks the session's memory as Park does (on the same
  // conditions, or Overloaded saying why not) and gives its slices back
  // (SliceLease::give_back); its next batch borrows them again, then brings
  // the memory back, before any of its calls runs. Memory that cannot be
  // parked (stream-ordered pool allocations) keeps the slices the
  // session's: Overloaded saying how much (its parkable memory stays
  // parked until the next call). Unimplemented without a SliceLease; OK and
  // 0 bytes when already released.
  Status ReleaseIdle(absl::Duration min_idle, uint64_t* parked_bytes) override;
  // How long a parked session's batch waits for room to bring its memory back
  // before its calls fail with CUDA_ERROR_OUT_OF_MEMORY (the next batch tries
  // again).
  static constexpr std::chrono::seconds kUnparkWaitLimit{10};
  // Tests only: how long a batch waits for its parked memory to come back.
  void TEST_SetUnparkWait(std::chrono::milliseconds wait) { unpark_wait_ = wait; }

  SessionInfo Info() const override;
  uint64_t id() const { return id_; }
  SessionGrant grant() const override {
    std::lock_guard<std::mutex> lock(grant_mutex_);
    return grant_;
  }
  // Migration between GPUs of one server (issue 16; server/README.md
  // "Migration"). Any thread. Moves everything of session device `device`
  // (its contexts with their streams, events and modules, and its device
  // memory, same addresses) to `to` (another backend device; quota, share
  // and slice as the pool granted there), at a batch boundary: waits (at
  // most kMoveQuiesceWait) for the batch in execution and for every stream
  // to be idle. The client sees a pause, its ids and device ordinals
  // unchanged. Refused (nothing changes) for a session that holds what
  // cannot move yet — arrays, textures, graphs, memory pools, virtual
  // memory, peer access, links — naming them; for one released or
  // preempted; and where the backend cannot (GpuBackend::MoveTenantToDevice).
  Status MoveDevice(int device, const SessionDevice& to) override;
  static constexpr std::chrono::seconds kMoveQuiesceWait{10};
  // Migration between servers (server/README.md "Migration"; schema
  // MigrationOffer). Any thread. Moves the session to GPU `to.gpu` of the
  // ferryd at `to.address`: tells the client (Reply.moveNotice), which sends
  // moveMarker after its last call; at the marker (on the executor, every
  // earlier call executed, the streams idle) the session's objects and
  // memory are offered to the target and the client is sent there with the
  // target's ticket. Returns OK once the client has left for the target
  // (*summary says so), or the error that kept the session here, serving
  // as before: what cannot move (as MoveDevice names it, plus module
  // globals the target cannot place), a client that cannot follow
  // (Hello.followsMoves), the target's refusal, or the client's
  // (moveRefused). Waits at most kDepartureWait.
  Status Depart(const SessionDeparture& to, std::string* summary) override;
  static constexpr std::chrono::seconds kDepartureWait{120};
  // Before Run: the session arrives from another server. Run makes its
  // objects and memory from `arrival` (the offer's calls, at the same ids
  // and addresses) before it answers the handshake, and answers with the
  // error instead, freeing what it made, when it cannot.
  void SetArrival(SessionArrival arrival) { arrival_ = std::move(arrival); }
  // Whether launches on session device `device` are throttled (tests).
  bool TEST_throttled(int device) const { return shares_.Throttled(device); }

 private:
  struct ContextEntry {
    std::unique_ptr<backend::Context> context;
    int device = 0;
    unsigned flags = 0;  // as created (a move to another server makes it again)
    backend::StreamAttributes legacy_stream_attributes;  // as the client set them
  };
  // A capture's nodes as the session counts them (session_graph.cc): ids in
  // recording order, for the fork/join bookkeeping only.
  using CaptureNodes = std::vector<uint64_t>;
  struct StreamEntry {
    std::unique_ptr<backend::Stream> stream;
    uint64_t ctx = 0;
    backend::StreamAttributes attributes;  // as the client set them
    unsigned flags = 0;  // as created
    int priority = 0;
    // stream capture: the capture (key in captures_) the stream records into,
    // as its origin or joined through an event wait; 0: none. `capture_tips`:
    // the capture's nodes its next recorded work depends on.
    uint64_t capture = 0;
    CaptureNodes capture_tips;
  };
  struct EventEntry {
    std::unique_ptr<backend::Event> event;
    uint64_t ctx = 0;
    // Last recorded on a capturing stream: that capture and the stream's tips
    // then (a stream waiting on the event joins the capture after them).
    // `recorded_outside`: last recorded on a stream that did not capture.
    uint64_t capture = 0;
    CaptureNodes capture_tips;
    bool recorded_outside = false;
    unsigned flags = 0;  // as created
  };
  // A module or library image as it was loaded, for a move to another
  // server: its name in the image cache, or (loaded unnamed, so not kept
  // there) the bytes themselves.
  struct LoadedImage {
    bool named = false;
    ContentHash hash{};
    uint64_t size = 0;
    backend::HostBytes unnamed;
  };
  struct ModuleEntry {
    std::unique_ptr<backend::Module> module;
    uint64_t ctx = 0;
    // Shared by a library's modules in every context.
    std::shared_ptr<const backend::ModuleDescription> description;
    uint64_t library = 0;  // nonzero: this is that library's module in `ctx`
    LoadedImage image;     // library == 0
  };
  // A context-independent image (cuLibraryLoadData); its modules in
  // contexts are ModuleEntries that name it.
  struct LibraryEntry {
    std::unique_ptr<backend::Library> library;
    std::shared_ptr<const backend::ModuleDescription> description;
    LoadedImage image;
  };
  struct FunctionEntry {
    backend::Function* function = nullptr;
    uint64_t module = 0;
    uint64_t ctx = 0;
    uint64_t param_bytes = 0;  // the packed buffer a launch must supply
    std::string name;          // as fetched
    // Set by the client (funcSetAttribute, funcSetCacheConfig): the last
    // value of each attribute.
    std::map<int, int> attributes;
    std::optional<int> cache_config;
  };
  // A memory pool: one cuMemPoolCreate made, or the session's default pool
  // of a device (which cuMemPoolDestroy refuses).
  struct MemPoolEntry {
    std::unique_ptr<backend::MemPool> pool;
    int device = 0;  // session device: allocations from it charge its quota
    bool is_default = false;
  };
  // What a device range the session may touch is (ranges_ holds its base
  // and size): an allocation (module == 0) or a module global.
  struct RangeEntry {
    uint64_t ctx = 0;
    uint64_t module = 0;
    int device = 0;  // allocations: the session device charged for it
    // virtual memory management: a mapping that some device may access (ctx
    // and module 0; device: its physical memory's). Mappings side by side
    // form one span for range checks; cuMemFree never frees one.
    bool mapped = false;
    // graph node kinds: an allocation node's memory, held by an executable
    // graph (session_graph_nodes.cc); only a free node or destroying the
    // executable graph frees it, never cuMemFree.
    bool graph = false;
    // A module global: its name (module != 0), and whether the client knows
    // its address (it asked; a move made it anew otherwise, anywhere).
    std::string global;
    bool known_to_client = true;
  };
  // virtual memory management (session_vmm.cc). Physical memory
  // (cuMemCreate) under the client's id: charged to `device` until the
  // client holds no reference and no mapping holds it either (then the entry
  // and the backend's memory go).
  struct PhysicalEntry {
    std::unique_ptr<backend::PhysicalMemory> memory;
    int device = 0;  // session device
    uint64_t bytes = 0;
    int references = 0;  // cuMemCreate's and each cuMemRetainAllocationHandle's
    int mappings = 0;
  };
  // A mapping (cuMemMap) inside a reservation; ranges_ holds it too while
  // any device may access it.
  struct MappingEntry {
    uint64_t handle = 0;
    int device = 0;                // the physical memory's session device
    std::vector<unsigned> access;  // CUmemAccess_flags per session device
  };
  struct ReservationEntry {};

  // stream capture and graphs (session_graph.cc). A device range: base, bytes.
  using DeviceRange = std::pair<uint64_t, uint64_t>;
  // A stream that is capturing, keyed by its id in captures_.
  // What recorded work relies on still being there when it runs: the device
  // ranges it touches and the modules of its kernels. A graph launch checks
  // them, so a graph never reaches freed memory or an unloaded kernel.
  struct GraphUses {
    std::vector<DeviceRange> ranges;
    std::vector<uint64_t> modules;
    void Add(const GraphUses& other) {
      ranges.insert(ranges.end(), other.ranges.begin(), other.ranges.end());
      modules.insert(modules.end(), other.modules.begin(), other.modules.end());
    }
  };
  // A capture, keyed in captures_ by the id its graph gets at the end. Its
  // streams (the origin and those joined through event waits) point at it
  // through StreamEntry::capture; `streams` lists them. `leaves`: recorded
  // nodes nothing recorded depends on yet; the capture can only end when the
  // origin's tips hold them all (every fork joined back).
  struct CaptureEntry {
    uint64_t ctx = 0;
    uint64_t origin = 0;  // the stream that began it; only it may end it
    bool invalidated = false;
    GraphUses uses;  // of the recorded work
    std::set<uint64_t> streams;
    std::set<uint64_t> leaves;
    uint64_t nodes = 0;  // recorded so far; the next node's id is nodes + 1
    bool to_graph = false;  // cuStreamBeginCaptureToGraph: into an existing graph
  };
  // graph node kinds: an allocation node's memory (session device, address,
  // size).
  struct GraphAllocation {
    uint64_t dptr = 0;
    uint64_t bytes = 0;
    int device = 0;
  };
  // The memory nodes of a graph, or of the graph an executable graph was
  // instantiated from (copied with it).
  struct GraphMemNodes {
    std::vector<GraphAllocation> allocations;  // its allocation nodes
    std::vector<uint64_t> frees;               // the addresses its free nodes free
    bool empty() const { return allocations.empty() && frees.empty(); }
  };
  // graph node kinds: the event an event node names, as its id and the
  // backend object (a launch checks that the id still names that object, so
  // a destroyed event, even with its id reused, is never reached).
  struct GraphNodeEvent {
    uint64_t id = 0;
    backend::Event* event = nullptr;
    bool wait = false;  // a wait node (else a record node)
  };
  using GraphEventNodes = std::map<uint64_t, GraphNodeEvent>;  // by node id
  // A graph's uses are those of its nodes without ids (captured or cloned:
  // `uses`, fixed) and those of its explicitly added nodes (each node's own,
  // so a node whose work changes or that is destroyed takes its uses along):
  // UsesOfGraph.
  struct GraphEntry {
    // Shared: a child-graph node's graph (session_graph_host.cc) is also
    // the node's.
    std::shared_ptr<backend::Graph> graph;
    uint64_t ctx = 0;  // of the captured work; 0: no context's (an empty graph)
    // Shared with clones (never changed once made).
    std::shared_ptr<const GraphUses> uses;
    std::vector<uint64_t> nodes;  // explicitly added node ids, in the order added
    GraphMemNodes mem;            // graph node kinds: memory allocation and free nodes
    GraphEventNodes events;       // graph node kinds: event record and wait nodes
    // A child-graph node's graph (graphChildGraphNodeGetGraph): the node.
    uint64_t embedded_in = 0;
  };
  struct GraphNodeEntry {
    backend::GraphNode* node = nullptr;  // owned by the graph
    uint64_t graph = 0;
    wire::GraphAddNode::Which kind = wire::GraphAddNode::EMPTY;
    uint64_t ctx = 0;  // of its work; 0 for an empty node
    GraphUses uses;    // of its work
    int type = 0;      // CUgraphNodeType of the node kinds of session_graph_nodes.cc (else 0)
    // Child-graph nodes: the child's explicitly added nodes when it was
    // added, in order (what the nodes of the node's own graph are), and the
    // id of that graph once the client named it (0 until then).
    std::shared_ptr<const std::vector<GraphNodeEntry>> child_nodes;
    uint64_t embedded_graph = 0;
  };
  // An executable graph's uses, like a graph's: `base` (its source's
  // nodes without ids) and each explicitly added node's (node_uses, by the
  // source's node ids, which cuGraphExec*NodeSetParams change); `uses` is
  // their union, each range and module once (RefreshExecUses).
  struct GraphExecEntry {
    std::unique_ptr<backend::GraphExec> exec;
    uint64_t graph = 0;  // the graph it was instantiated from (its nodes can be updated)
    uint64_t ctx = 0;
    uint64_t nodes = 0;              // how many (cuGraphExecUpdate keeps the count)
    std::vector<uint64_t> node_ids;  // its source's explicitly added nodes, in the order added
    GraphUses base;
    std::map<uint64_t, GraphUses> node_uses;
    std::shared_ptr<const GraphUses> uses;
    GraphMemNodes mem;       // graph node kinds: its graph's memory nodes
    bool auto_free = false;  // instantiated with AUTO_FREE_ON_LAUNCH
    GraphEventNodes events;  // graph node kinds: its event nodes' events
  };
  // A node's work as a GraphNodeSpec (graphAddNode, graphNodeSetParams):
  // the wire description of its kind (`kind` says which reader is set).
  struct NodeWorkArgs {
    wire::GraphAddNode::Which kind = wire::GraphAddNode::EMPTY;
    wire::Launch::Reader kernel;
    wire::Memset::Reader memset;
    wire::Memcpy::Reader memcpy;
    uint64_t child = 0;
    uint64_t host = 0;  // graph host nodes: the host function's id
  };
  struct NodeWork {
    backend::GraphNodeSpec spec;
    uint64_t ctx = 0;  // of the work (0: an empty node, or a child graph without work)
    GraphUses uses;
  };
  // CUDA arrays, textures and surfaces (session_arrays.cc). An array id
  // names an array, a mipmapped array, or a level of one (owned by the
  // mipmapped array `parent`, whose entry goes first and takes it along).
  struct ArrayEntry {
    std::unique_ptr<backend::Array> array;
    std::unique_ptr<backend::MipmappedArray> mipmapped;
    backend::Array* level = nullptr;
    uint64_t parent = 0;
    uint64_t ctx = 0;
    int device = 0;
    uint64_t charged = 0;                 // bytes charged to `device`'s quota
    backend::ArrayDescriptor descriptor;  // a level's own extents
    unsigned levels = 0;                  // a mipmapped array's
    unsigned element_bytes = 0;
    // The array copies reach (not a mipmapped array), or null.
    backend::Array* copyable() const { return array ? array.get() : level; }
  };
  struct TextureEntry {
    std::unique_ptr<backend::TextureObject> object;
    uint64_t ctx = 0;
    bool surface = false;
  };

  // JIT linking (session_link.cc): a pending or completed link of `ctx`.
  struct LinkEntry {
    std::unique_ptr<backend::Link> link;
    uint64_t ctx = 0;
    std::span<const uint8_t> image;  // after CompleteLink succeeded; owned by `link`
  };
  // How a stream-ordered call uses its stream, for CaptureGuard.
  enum class CaptureUse {
    kRecorded,      // queued work a capture records (launch, device-only copy, memset)
    kSynchronizes,  // waits for the stream or reads its state (synchronize, query)
    kHostMemory,    // a copy to or from host memory, a host gate
    kNotRecorded,   // work ferry does not record (stream-ordered allocation, memory operations,
                    // array and 3D copies)
  };

  // A context the session lacks: the driver's own code for it.
  static Status InvalidContextStatus(std::string message);

  // Per call: what the handler needs and what it answers.
  struct CallContext {
    uint64_t seq = 0;
    bool wants_reply = false;
    backend::HostBytes bulk_in;
    // The reply is built in scratch space on the stack: no allocation for a
    // call that needs none. Must be zero before use (capnp's rule).
    capnp::word scratch[128] = {};
    capnp::MallocMessageBuilder message{kj::arrayPtr(scratch, 128)};
    wire::Reply::Builder reply;
    bool deferred = false;  // the handler arranged a later reply
    // When the call started to execute (/metrics: sync-call durations).
    std::chrono::steady_clock::time_point started;
    // Bytes the reply carries when it is sent at once (status OK only); they
    // must stay valid until the handler's caller has written the reply.
    ConstBuffer reply_bulk{nullptr, 0};
    CallContext() : reply(message.initRoot<wire::Reply>()) {}
  };
  // One call of a batch, found before any of them runs.
  struct BatchCall {
    kj::ArrayPtr<const capnp::word> words;
    uint64_t bulk_bytes = 0;
    bool direct_candidate = false;  // may land straight in device memory
  };

  // Where a batch's bulk payload comes from: still on the transport
  // (streaming) or already buffered with the frame (from the inbox). Read
  // takes the next `bytes` of it, in call order.
  class PayloadSource {
   public:
    virtual ~PayloadSource() = default;
    virtual Status Read(void* into, uint64_t bytes) = 0;
  };
  class TransportPayload final : public PayloadSource {
   public:
    explicit TransportPayload(Transport& transport) : transport_(transport) {}
    Status Read(void* into, uint64_t bytes) override { return transport_.ReadExact(into, bytes); }

   private:
    Transport& transport_;
  };
  class BufferedPayload final : public PayloadSource {
   public:
    BufferedPayload(const uint8_t* data, uint64_t size) : data_(data), left_(size) {}
    Status Read(void* into, uint64_t bytes) override;

   private:
    const uint8_t* data_;
    uint64_t left_;
  };

  // Serving (session.cc explains the two roles). ServeLoop runs on Run's
  // thread and, once the session has had a host gate, on helper_ as well,
  // which serves only while a gate is closed.
  void ServeLoop(bool helper);
  // Executes the inbox until it is empty; the caller holds the executor role.
  void DrainInbox();
  // True when the batch holds a call carrying host gates (hostGate,
  // graphLaunchHostNodes): then it is not streamed.
  static bool BatchHasHostGate(kj::ArrayPtr<const capnp::word> words);
  // Ends serving for `why`: later reads and executions stop, every host gate
  // opens, the transport shuts down. Idempotent; any thread.
  void EndServing(const Status& why);
  // Starts helper_ if it is not running (executor role, on Run's thread).
  Status StartHelper();
  // A gateOpen frame (reader role).
  Status OpenGate(kj::ArrayPtr<const capnp::word> words, uint64_t bulk_bytes);
  // A gateReached reply for gate `index` of call `seq` (graph host nodes:
  // the node's `host_function`; 0 for a hostGate call's own gate).
  void SendGateReached(uint64_t seq, const Status& status, bool held, bool stream_failed,
                       uint32_t index = 0, uint64_t host_function = 0);
  // A host gate: the seq of the call that carries it and which of the call's
  // gates it is (graph host nodes; 0 for a hostGate call).
  using GateKey = std::pair<uint64_t, uint32_t>;
  // Registers `gate` as closed under `key` before the backend can reach it,
  // so the client's gateOpen always finds it; a session whose client is gone
  // opens it at once instead. INVALID_VALUE for a key still registered.
  Status RegisterGate(GateKey key, const std::shared_ptr<backend::HostGate>& gate);
  // Takes `key` out (a gate the backend will never reach).
  void UnregisterGate(GateKey key);
  // Executes one callBatch frame whose message part is `words`; its
  // `bulk_bytes` of payload come from `payload`, call by call.
  Status ExecuteBatch(kj::ArrayPtr<const capnp::word> words, uint64_t bulk_bytes,
                      PayloadSource& payload);
  // Reads `call`'s payload straight into device memory and performs it, when
  // it is a host-to-device copy that may (see the file comment). Returns
  // false, having read nothing, when it may not.
  bool TryDirectHostToDevice(wire::Call::Reader call, PayloadSource& payload, Status* read_status);
  void Execute(wire::Call::Reader call, backend::HostBytes bulk);
  Status Dispatch(wire::Call::Reader call, CallContext& cx);
  void FreeEverything();
  // The session is ending: the backend may drop its queued work that has
  // not started (GpuBackend::AbandonQueuedWork on every context).
  void AbandonQueuedWork();
  void DestroyContextResources(uint64_t ctx);

  // Replies; thread-safe.
  void SendReply(uint64_t seq, const Status& status);
  void SendReplyMessage(capnp::MallocMessageBuilder& message, std::span<const ConstBuffer> bulk);
  // Defers cx's reply until `wait` calls its completion; `bulk` (may be empty)
  // becomes the reply payload.
  backend::Completion DeferReply(CallContext& cx, backend::MutableHostBytes bulk = {});
  void CompletionDone();

  // Counts a completion handed to the backend; the destructor waits until
  // each has called CompletionDone.
  void CompletionStarted();

  // Lookups beyond the handle tables' own Find; each returns a Status naming
  // what was wrong.
  // Stream 0 is `ctx`'s legacy stream; any other names a stream of the session.
  Status FindStream(uint64_t ctx, uint64_t stream, backend::Stream** out);
  // The same, with the attributes the client set on the stream (kept in its
  // entry, or in its context's for the legacy stream, so they go with it).
  Status FindStream(uint64_t ctx, uint64_t stream, backend::Stream** out,
                    backend::StreamAttributes** attributes);
  // Makes an object of context `ctx` under the client's new `id` in `table`:
  // the context must exist and the id be new; create(context, &entry) makes
  // the backend object. Entry has a `ctx` member.
  template <typename Entry, typename Create>
  Status CreateInContext(HandleTable<Entry>& table, uint64_t ctx, uint64_t id, Create create) {
    ContextEntry* c = nullptr;
    FERRY_RETURN_IF_ERROR(contexts_.Find(ctx, &c));
    FERRY_RETURN_IF_ERROR(table.CheckNewId(id));
    Entry entry;
    entry.ctx = ctx;
    FERRY_RETURN_IF_ERROR(create(*c->context, &entry));
    return table.Insert(id, std::move(entry));
  }
  // Makes an object of session device `device` under the client's new `id`
  // in `table`: the id must be new and the device the session's;
  // create(backend_device, &entry) makes the backend object. Entry has a
  // `device` member.
  template <typename Entry, typename Create>
  Status CreateOnDevice(HandleTable<Entry>& table, uint64_t id, int device, Create create) {
    FERRY_RETURN_IF_ERROR(table.CheckNewId(id));
    int backend_device = 0;
    FERRY_RETURN_IF_ERROR(BackendDevice(device, &backend_device));
    Entry entry;
    entry.device = device;
    FERRY_RETURN_IF_ERROR(create(backend_device, &entry));
    return table.Insert(id, std::move(entry));
  }
  // virtual memory management: the client's live reference to physical
  // memory `id` (INVALID_HANDLE if it holds none); drops `id` once nothing
  // holds it; the bases of the whole mappings that make up exactly
  // [address, address + bytes), one after another.
  Status FindPhysical(uint64_t id, PhysicalEntry** out);
  void DropPhysicalIfUnused(uint64_t id);
  Status WholeMappings(uint64_t address, uint64_t bytes, const char* call,
                       std::vector<uint64_t>* bases);
  // releasing memory: gives `bytes` of session device `device` back to the
  // quota once every release the session started so far has happened (the
  // memory is really free; GpuBackend::WhenReleased). Never waits.
  void UnchargeWhenReleased(int device, uint64_t bytes);
  // Blocks until every release the session started has happened. Only at the
  // end of the session, after its contexts are gone (so no queued work can
  // hold a release back), before its slices go back to the pool.
  void WaitForReleases();
  // Waits up to `limit` for every release the session started so far; true
  // when they all happened.
  bool WaitForReleasesFor(absl::Duration limit);
  // Every allocation path's quota check: shares_.CheckQuota, but when `bytes`
  // do not fit while memory the session freed on that device is still
  // waiting for its queued work (UnchargeWhenReleased) and would make room
  // enough once released, first waits for those releases — at most
  // kReleaseWaitLimit, on the executor — and checks again. A real
  // driver's cuMemFree returns only once the memory is free, so a program
  // that frees and then allocates within its quota must not see
  // OUT_OF_MEMORY here just because ferry answers frees at once. The wait is
  // bounded because queued work may itself wait for a later call (a stream
  // memory operation) that the blocked executor would never run.
  Status CheckQuotaAfterReleases(int device, uint64_t bytes);
  static constexpr absl::Duration kReleaseWaitLimit = absl::Seconds(5);
  void FreeVirtualMemory();  // at the end of the session, after the contexts
  // CUDA arrays, textures and surfaces: drops the texture and surface
  // objects and arrays of `ctx`, giving back their quota.
  void DestroyContextArrays(uint64_t ctx);
  // The array side of a copy: `id` names an array (not a mipmapped one) of
  // the session in which (x bytes, y, z) + (width_bytes, height, depth) fits.
  Status FindCopyArray(uint64_t id, uint64_t x, uint64_t y, uint64_t z, uint64_t width_bytes,
                       uint64_t height, uint64_t depth, const char* what, backend::Array** out);
  // Drops module `id` with its functions and global ranges.
  void EraseModule(uint64_t id);
  // OK when [address, address + bytes) lies inside one range of this session.
  Status CheckRange(uint64_t address, uint64_t bytes, const char* what);
  // peers: the backend device of session device `device`
  // (CUDA_ERROR_INVALID_DEVICE for one the session lacks), and CheckRange
  // that also requires the range to be memory of session device `device`.
  Status BackendDevice(int device, int* backend_device);
  Status CheckRangeOnDevice(uint64_t address, uint64_t bytes, int device, const char* what);
  Status CheckRange2D(uint64_t address, uint64_t pitch, uint64_t width_bytes, uint64_t height,
                      const char* what);
  // stream capture: OK when `stream` is not capturing, or when `use` is
  // kRecorded (then `ranges` and the kernel's `module`, if any, join the
  // capture's uses). Any other use of a
  // capturing stream invalidates its capture and fails with
  // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED; any use of an invalidated one fails
  // with CUDA_ERROR_STREAM_CAPTURE_INVALIDATED. Free when nothing captures.
  // A launch or upload of `exec` on a stream of `stream_ctx`: same context,
  // and every range and kernel module the graph uses still the session's.
  Status CheckGraphExec(const GraphExecEntry& exec, uint64_t stream_ctx);
  // An executable graph's uses of a graph's: each range and module once.
  static std::shared_ptr<const GraphUses> ExecUses(const GraphUses& graph_uses);
  // Everything graph `graph`'s work uses (see GraphEntry; a child-graph
  // node with a graph of its own named uses that graph's).
  GraphUses UsesOfGraph(const GraphEntry& graph);
  // A child-graph node's graph goes (with its node, or its node's graph),
  // with its nodes and their own graphs (session_graph_host.cc).
  void ForgetEmbeddedGraph(uint64_t graph);
  // Refuses node kinds a child-graph node's graph cannot take: memory
  // allocation and free nodes (INVALID_VALUE, as cuda.h documents), event and
  // host nodes (NOT_SUPPORTED, as in any child graph).
  static Status CheckEmbeddedGraphTakes(const GraphEntry& graph, const char* kind, bool memory);
  // exec.uses from exec.base and exec.node_uses.
  static void RefreshExecUses(GraphExecEntry& exec);
  // Checks a node's work, as the stream-ordered call of its kind checks it,
  // and describes it for the backend. `graph`: the node's graph (a graph
  // cannot be its own child).
  Status NodeWorkOf(const NodeWorkArgs& args, const GraphEntry& graph,
                    const backend::HostBytes& bulk, NodeWork* work);
  // cuGraph*NodeSetParams (exec_id 0) and cuGraphExec*NodeSetParams: node
  // `node_id` does `work` (of its kind and context) from now on.
  Status SetNodeWork(uint64_t exec_id, uint64_t node_id, NodeWork work);
  // graphLaunch and graphLaunchHostNodes: executable graph `args.exec` runs
  // on `args.stream` after the launch checks (its uses, memory and event
  // nodes), with `host_calls` one per host node of it (graph host nodes,
  // session_graph_host.cc; a count that differs is refused).
  Status LaunchGraphExec(wire::GraphLaunch::Reader args,
                         std::span<const backend::GraphHostCall> host_calls);
  Status CaptureGuard(uint64_t stream, CaptureUse use,
                      std::initializer_list<DeviceRange> ranges = {}, uint64_t module = 0);
  // cuCtxSynchronize while streams of `ctx` capture: invalidates them and
  // fails with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED.
  Status CaptureGuardContext(uint64_t ctx);
  // A kernel node's work from its wire description and packed `params`,
  // checked as a launch of it is (the function is the session's and of
  // k.ctx, the parameters cover the kernel's, no grid or block dimension is
  // zero); *module gets the kernel's module.
  // The node `node_id` of the graph `exec` was instantiated from, for an
  // update of the executable graph.
  Status FindExecNode(const GraphExecEntry& exec, uint64_t node_id, GraphNodeEntry** node);
  // The backend nodes of `ids`, each a node of `graph` (INVALID_VALUE
  // otherwise).
  Status GraphNodeDependencies(uint64_t graph, capnp::List<uint64_t>::Reader ids,
                               std::vector<backend::GraphNode*>* dependencies);
  // Every cuGraphAdd*Node: `node` is a new node id and `ids` its
  // dependencies (GraphNodeDependencies).
  Status NewGraphNodeDependencies(uint64_t graph, uint64_t node, capnp::List<uint64_t>::Reader ids,
                                  std::vector<backend::GraphNode*>* dependencies);
  Status KernelNodeSpec(wire::Launch::Reader k, const backend::HostBytes& params,
                        backend::GraphNodeSpec* spec, uint64_t* module);
  // The capture `stream` records into, or nullptr (also for the legacy
  // stream and unknown streams); *entry gets the stream's entry when found.
  CaptureEntry* CaptureOfStream(uint64_t stream, StreamEntry** entry = nullptr);
  // Ends capture `capture` (a key of captures_) everywhere: its streams stop
  // capturing and *graph gets what the backend recorded (nullptr when the
  // backend could not end it). The one way a capture ends: cuStreamEndCapture,
  // destroying its origin stream, destroying its context.
  Status EndCaptureOf(uint64_t capture, std::unique_ptr<backend::Graph>* graph);
  // cuEventRecord and cuStreamWaitEvent under capture (fork and join):
  // the event remembers the capture and the stream's tips; a stream waiting
  // on such an event joins the capture (or, capturing already, adds them to
  // its tips). Errors as the driver's: waiting on an event of another capture
  // (CUDA_ERROR_STREAM_CAPTURE_MERGE) or on one recorded outside any capture
  // (CUDA_ERROR_STREAM_CAPTURE_ISOLATION) invalidates the capture.
  void NoteCaptureEventRecord(uint64_t stream, EventEntry& event);
  Status CaptureStreamWaitEvent(uint64_t ctx, uint64_t stream, EventEntry& event);
  // Forgets the captures, graphs and executable graphs of `ctx` (before its
  // streams and memory go).
  void DestroyContextGraphs(uint64_t ctx);
  // graph node kinds (session_graph_nodes.cc). A node's device range, as a
  // memset or copy node of `graph` names it: the session's, or within one of
  // the graph's own allocation nodes.
  Status CheckGraphNodeRange(const GraphEntry& graph, uint64_t address, uint64_t bytes,
                             const char* what);
  Status CheckGraphNodeRange2D(const GraphEntry& graph, uint64_t address, uint64_t pitch,
                               uint64_t width_bytes, uint64_t height, const char* what);
  // Instantiation of a graph with allocation nodes: only one executable graph
  // may hold their memory at a time; it is charged to the slice quota
  // (OUT_OF_MEMORY) and its ranges become the session's until
  // ForgetGraphExecMemory. Call Check before the backend instantiates, Hold
  // after.
  Status InsertNodeOfKind(GraphEntry& graph, uint64_t graph_id, uint64_t id,
                          backend::GraphNode* node, uint64_t ctx, int type);
  // cuGraphClone, cuGraphDestroyNode and cuGraphRemoveDependencies:
  // NOT_SUPPORTED for a graph with memory allocation or free nodes (their
  // memory and its order are fixed with the graph).
  Status CheckGraphWithoutMemoryNodes(const GraphEntry& graph, const char* what);
  Status CheckGraphMemory(const GraphEntry& graph);
  // Also gives `exec` its graph's event nodes.
  Status HoldGraphMemory(GraphEntry& graph, GraphExecEntry& exec);
  // The executable graph goes: its ranges stop being the session's, its
  // backend object is destroyed (the allocations a launch made and nothing
  // freed go with it), and the quota comes back once the backend has given
  // the memory back (UnchargeWhenReleased).
  void ForgetGraphExecMemory(GraphExecEntry& exec);
  // A launch of `exec`: INVALID_VALUE while a previous launch's allocations
  // are not freed (unless AUTO_FREE_ON_LAUNCH); GraphMemoryLaunched counts
  // what the launch allocates and frees (the used figures).
  Status CheckGraphMemoryLaunch(const GraphExecEntry& exec);
  // cuMemFree of graph memory at `dptr` (an allocation's start): cuda.h
  // lets it free an allocation a launch made and no free node freed, as a
  // free node would (the memory stays with its executable graph); any other
  // graph memory is INVALID_VALUE.
  Status FreeGraphAllocation(uint64_t dptr);
  void GraphMemoryLaunched(const GraphExecEntry& exec);
  // A launch of `exec` on `stream`: its event nodes' events must still exist
  // (INVALID_HANDLE), and a capturing stream is refused; afterwards its
  // record nodes count as records made outside any capture.
  Status CheckGraphEventsLaunch(const GraphExecEntry& exec, uint64_t stream);
  void GraphEventsLaunched(const GraphExecEntry& exec);
  // The event node `node_id` (of `graph`), its entry and the event `event_id`
  // of the node's context, for a SetEvent call.
  Status FindEventNode(uint64_t graph, uint64_t node_id, uint64_t event_id, GraphNodeEntry** node,
                       EventEntry** event);
  // cuStreamEndCapture answered by a latched error: the capture of that
  // stream (if any, begun there or joined) ends without a graph, as the
  // client has forgotten it.
  void AbandonCaptureOf(wire::StreamRef::Reader args);
  // Launches on a throttled device wait for its share and are measured.
  void MeasureLaunch(int device, backend::Stream& stream);
  // Runs `launch` (a kernel or graph launch on `stream`) under the compute
  // share of context `ctx`'s device: throttled devices wait their turn
  // before it and measure it after.
  template <typename Launch>
  Status LaunchUnderShare(uint64_t ctx, backend::Stream& stream, Launch launch) {
    ContextEntry* context = nullptr;
    const int device = contexts_.Find(ctx, &context).ok() ? context->device : 0;
    const bool throttled = shares_.Throttled(device);
    if (throttled) shares_.ThrottleBeforeLaunch(device);
    FERRY_RETURN_IF_ERROR(launch());
    if (throttled) MeasureLaunch(device, stream);
    return Status::Ok();
  }

  // A load's image, from the call or from the module cache.
  struct ImageSource {
    bool named = false;  // the call named the image by its SHA-256
    ContentHash hash{};
    backend::HostBytes image;  // the bytes to load
    bool not_cached = false;   // named, not sent, not in the cache
  };
  Status TakeImage(capnp::Data::Reader hash_data, uint64_t image_bytes, CallContext& cx,
                   ImageSource* source);
  void KeepImage(const ImageSource& source, const CallContext& cx);
  LoadedImage LoadedImageOf(const ImageSource& source, uint64_t image_bytes) const;
  // Handlers (executor thread): one per member of wire::Call's union, generated
  // from the schema's call descriptions (schema/generate_calls.py), so the
  // signatures and the dispatch that calls them cannot drift apart. A handler
  // takes `cx` where the schema gives the member $usesContext.
#include "server/generated/session_handlers.inc"

  const uint64_t id_;
  // Counts the bytes each way for Info (operator logs).
  const std::unique_ptr<CountingTransport> transport_;
  backend::GpuBackend& backend_;
  ModuleImages* const module_cache_;
  const uint32_t pid_;
  const std::string host_;
  const std::string program_;
  const int64_t since_unix_ms_;
  // Devices change only under exec_mutex_ and grant_mutex_ (MoveDevice):
  // the executor reads them freely, other threads through grant().
  SessionGrant grant_;
  mutable std::mutex grant_mutex_;
  std::string token_name_, token_id_;  // SetToken, before Run
  RdmaServing rdma_serving_;           // SetRdma, before Run
  // The client's RDMA offer (Hello.rdma), or why it cannot be taken.
  std::optional<rdma::RdmaEndpoint> rdma_offer_;
  Status rdma_offer_status_ = Status::Ok();
  // Run's thread: takes the offer (opens a device, connects a queue pair)
  // or says why not.
  Status AcceptRdma(std::unique_ptr<rdma::RdmaConnector>* out);
  // The client's shared-memory offer (Hello.shm): its kernel's boot id.
  std::optional<std::string> shm_offer_boot_id_;
  std::chrono::milliseconds shm_setup_timeout_ = kShmSetupTimeout;  // before Run
  // Run's thread: takes the offer (the client shares ferryd's kernel) and
  // listens for it (common/shm_rendezvous.h), or says why not.
  Status OpenShmRendezvous(std::unique_ptr<ShmRendezvous>* out);
  // Run's thread, after the HelloReply invited the client: reads its one
  // byte and, on 'S', moves the stream to shared memory. OK also when the
  // client stays ('T'); an error ends the session.
  Status MoveToShm(ShmRendezvous& rendezvous);

  // Quotas and compute shares of the grant's devices (after grant_).
  SessionShares shares_;
  // The session's contexts as the backend groups them for releasing memory:
  // what the session frees is released after the work queued before on any
  // of its streams (GpuBackend "releasing memory"). Outlives the contexts.
  const std::unique_ptr<backend::Tenant> tenant_;

  // Executor-role state (the tables' sizes may be read by anyone).
  HandleTable<ContextEntry> contexts_{"context", &InvalidContextStatus};
  HandleTable<StreamEntry> streams_{"stream"};
  HandleTable<EventEntry> events_{"event"};
  HandleTable<ModuleEntry> modules_{"module"};
  HandleTable<LibraryEntry> libraries_{"library"};
  HandleTable<FunctionEntry> functions_{"function"};
  RangeMap<RangeEntry> ranges_;
  // peers: (context, peer context) pairs with peer access enabled; a
  // context's pairs go with it.
  std::set<std::pair<uint64_t, uint64_t>> peer_access_;
  HandleTable<MemPoolEntry> mem_pools_{"memory pool"};
  // virtual memory management
  HandleTable<PhysicalEntry> physical_{"allocation handle"};
  RangeMap<ReservationEntry> reservations_;
  RangeMap<MappingEntry> mappings_;
  uint64_t reserved_bytes_ = 0;
  // stream capture and graphs
  std::map<uint64_t, CaptureEntry> captures_;  // by graph id (see CaptureEntry)
  HandleTable<GraphEntry> graphs_{"graph"};
  HandleTable<GraphExecEntry> graph_execs_{"executable graph"};
  HandleTable<GraphNodeEntry> graph_nodes_{"graph node"};
  // graph node kinds: graph memory figures per session device
  // (cuDeviceGetGraphMemAttribute), and the allocations launched graphs made
  // that nothing freed yet (address -> its GraphAllocation).
  struct GraphMemFigures {
    uint64_t used = 0, used_high = 0, reserved = 0, reserved_high = 0;
  };
  std::map<int, GraphMemFigures> graph_mem_;
  std::map<uint64_t, GraphAllocation> graph_mem_live_;
  // CUDA arrays, textures and surfaces
  HandleTable<ArrayEntry> arrays_{"array"};
  HandleTable<TextureEntry> textures_{"texture or surface object"};
  // JIT linking
  HandleTable<LinkEntry> links_{"link"};
  Status latched_error_;
  uint64_t latched_seq_ = 0;

  // Image bytes received, for Info (written by the executor, read by anyone).
  std::atomic<uint64_t> module_image_bytes_received_{0};

  // Parking (session_parking.cc).
  // Whether every call of a batch only lets go of something (frees,
  // destroys, unloads, pings): what a released session may run without
  // borrowing its slices again (a program ending after hours idle does not
  // queue for a slice just to free its memory).
  static bool OnlyLetsGo(kj::ArrayPtr<const capnp::word> words);
  // Brings parked memory back (on the executor, exec_mutex_ held, before a
  // batch runs); OK when nothing is parked.
  Status UnparkForBatch();
  // Every allocation path: runs `allocate`; when the backend refuses it for
  // lack of device memory on session device `device` and the session's
  // pool overcommits memory, asks for room (other idle sessions parked) and
  // runs it again, until it fits or unpark_wait_ has passed (no session may
  // be idle at the first try; keepalives go out meanwhile). Then the
  // backend's error stands.
  template <typename Allocate>
  Status WithRoom(int device, uint64_t bytes, Allocate allocate) {
    Status allocated = allocate();
    if (allocated.code() != StatusCode::kOutOfMemory) return allocated;
    return WaitForRoom({{device, bytes}}, allocated, allocate);
  }
  // `needs`: session device and bytes (a graph's allocations may be on
  // several).
  Status WaitForRoom(const std::vector<std::pair<int, uint64_t>>& needs, Status refused,
                     const std::function<Status()>& allocate);
  // Whether every stream of every context is idle (no queued or running work).
  bool AllStreamsIdle();
  // Park and ReleaseIdle: parks if idle; `release` also gives the slices back.
  Status ParkIdle(absl::Duration min_idle, const std::string& reason, bool release,
                  int count_device, uint64_t* parked_bytes);
  // Every wait for device memory (UnparkForBatch, WaitForRoom): runs
  // `attempt` again while it fails with OUT_OF_MEMORY, asking the pressure
  // hook for room on each of `needs` (backend device, bytes) before each
  // try and, while nobody can be parked, waiting 10 ms doubling to 200 ms;
  // stops at unpark_wait_, when serving ends or a preemption comes.
  // Keepalives go out meanwhile. Returns the last attempt's status.
  Status RetryWithRoom(const std::vector<std::pair<int, uint64_t>>& needs, Status status,
                       const std::function<Status()>& attempt);
  // Preempt is waiting for exec_mutex_: waits for memory end at once.
  std::atomic<bool> preempt_requested_{false};
  // UnparkForBatch, for a session whose slices went back: borrows them again.
  Status BorrowSlicesAgain();
  MemoryPressure relieve_;
  SliceLease slice_lease_;  // before Run
  // Set under exec_mutex_ (ReleaseIdle, BorrowSlicesAgain), read by Info.
  std::atomic<bool> slices_released_{false};
  std::atomic<uint64_t> releases_{0}, reborrows_{0};
  std::atomic<uint64_t> moves_{0};  // MoveDevice

  // cuMemAlloc's path, and memAllocAt's (session_memory.cc): the quota
  // (waiting for releases), room on the device (parking others when it is
  // overcommitted), the memory `allocate` makes (its address into *dptr),
  // then the range and the charge. InvalidArgument for 0 bytes.
  Status AllocateInContext(uint64_t ctx, ContextEntry& c, uint64_t bytes, const char* call,
                           const std::function<Status(uint64_t* dptr)>& allocate,
                           uint64_t* dptr);
  // Moves (session_migration.cc): Unimplemented naming what the session
  // holds that cannot move to `where` yet, else OK; then, waiting at most
  // kMoveQuiesceWait, until every reply owed is written and every stream is
  // idle. Executor role with exec_mutex_ held.
  Status ImmovableObjects(const std::string& where);
  Status QuiesceForMove();
  // Migration between servers (session_departure.cc, session_arrival.cc).
  // The offer that makes this session again elsewhere: the calls, into
  // `offer`; their bulk bytes (images, device memory), into `bulk`, kept
  // alive by `keep`. Executor role, streams idle.
  Status DescribeForMove(wire::MigrationOffer::Builder offer, std::vector<ConstBuffer>* bulk,
                         std::vector<std::shared_ptr<const void>>* keep);
  // Sends the offer to `to` and reads its answer: the ticket.
  Status OfferTo(const SessionDeparture& to, std::string* ticket, uint64_t* target_session);
  // Makes the session's objects and memory from arrival_ (Run, before the
  // handshake is answered; exec_mutex_ held).
  Status Arrive();
  // The move asked of the session (Depart), under serve_mutex_: kNoticed
  // once the client was told, kOffering while the marker's offer goes to the
  // target, kHandedOver once the marker was answered with the target's
  // ticket; departure_outcome_ is set when it is decided.
  enum class DepartureState { kNone, kNoticed, kOffering, kHandedOver };
  DepartureState departure_state_ ABSL_GUARDED_BY(serve_mutex_) = DepartureState::kNone;
  SessionDeparture departure_ ABSL_GUARDED_BY(serve_mutex_);
  std::optional<Status> departure_outcome_ ABSL_GUARDED_BY(serve_mutex_);
  std::string departure_summary_ ABSL_GUARDED_BY(serve_mutex_);
  std::optional<SessionArrival> arrival_;
  bool arriving_ = false;  // executor: Arrive runs (memAllocAt is allowed)
  const bool follows_moves_;
  std::chrono::milliseconds unpark_wait_{kUnparkWaitLimit};
  // Set under exec_mutex_, read by Info from any thread.
  std::atomic<bool> parked_{false};
  std::atomic<uint64_t> parked_bytes_{0};
  // The batch executing may not run: its memory is parked and could not
  // come back (UnparkForBatch's error). Executor.
  Status batch_refusal_;
  std::atomic<uint64_t> parks_{0}, unparks_{0};
  std::atomic<uint64_t> bytes_parked_total_{0}, bytes_unparked_total_{0};
  std::atomic<int64_t> park_ns_{0}, unpark_ns_{0};
  // steady_clock nanoseconds of the last batch's end; 0 before the first.
  // in_batch_: a batch is executing now.
  std::atomic<int64_t> last_call_ns_{0};
  std::atomic<bool> in_batch_{false};

  // Held while a batch executes and while Preempt frees everything.
  std::timed_mutex exec_mutex_;
  // How long Preempt waits for the batch in execution before it closes the
  // session instead.
  static constexpr std::chrono::milliseconds kPreemptBatchWait{10000};
  std::chrono::milliseconds preempt_batch_wait_{kPreemptBatchWait};
  Status revoked_ ABSL_GUARDED_BY(exec_mutex_);  // set by Preempt
  bool handshake_answered_ ABSL_GUARDED_BY(exec_mutex_) = false;

  std::mutex write_mutex_;  // serialises reply frames on transport_

  std::vector<BatchCall> batch_calls_;  // executor thread; reused per frame

  std::mutex pending_mutex_;
  std::condition_variable pending_cv_;
  int pending_completions_ ABSL_GUARDED_BY(pending_mutex_) = 0;
  // Bytes freed whose quota comes back only once they are released
  // (UnchargeWhenReleased), by session device; the array is fixed at
  // construction, its counters are used from any thread.
  std::unique_ptr<std::atomic<uint64_t>[]> bytes_awaiting_release_;
  std::atomic<uint64_t> allocations_waited_for_releases_{0};  // SessionInfo's
  // SessionInfo's /metrics counters; any thread.
  std::atomic<uint64_t> calls_{0};
  std::atomic<uint64_t> launches_{0};
  std::atomic<uint64_t> frames_from_client_{0};
  std::atomic<uint64_t> frames_to_client_{0};
  metrics::AtomicHistogram sync_calls_{kSyncCallBucketSeconds};
  // A call whose client waits was answered (at once or by a completion).
  void CountSyncCall(std::chrono::steady_clock::time_point started);

  // Serving. read_mutex_ is held by the thread that reads the transport;
  // serve_mutex_ guards what the two roles share.
  std::mutex read_mutex_;
  std::mutex serve_mutex_;
  std::condition_variable serve_cv_;  // inbox shrank, gates changed, or serving ended
  std::deque<Frame> inbox_ ABSL_GUARDED_BY(serve_mutex_);  // read, not yet executed
  uint64_t inbox_bytes_ ABSL_GUARDED_BY(serve_mutex_) = 0;
  bool executing_ ABSL_GUARDED_BY(serve_mutex_) = false;  // a thread holds the executor role
  bool serving_ended_ ABSL_GUARDED_BY(serve_mutex_) = false;
  // Why the session ends: its devices taken (Preempt) or, first, why serving
  // ended (EndServing). For Info; any thread.
  mutable std::mutex end_reason_mutex_;
  std::string end_reason_ ABSL_GUARDED_BY(end_reason_mutex_);
  std::atomic<bool> started_{false};  // Run answered the handshake
  void SetEndReasonIfUnset(const std::string& reason);
  // serving_ended_, readable without the lock: the executor stops
  // dispatching the rest of a batch once the connection is gone.
  std::atomic<bool> serving_ended_flag_{false};
  uint64_t buffer_limit_ = kDefaultBufferLimit;  // set before Run
  // Host gates not yet opened.
  std::map<GateKey, std::shared_ptr<backend::HostGate>> gates_ ABSL_GUARDED_BY(serve_mutex_);
  // The second serving thread. Started by the executor while that is still
  // Run's thread (before helper_ exists nobody else serves), joined by Run.
  std::thread helper_;

  // call deadline (keepalive): while replies are deferred (DeferReply) or the
  // executor blocks in a bounded wait before replying (CheckQuotaAfterReleases),
  // a keepalive frame every keepalive_period_ that saw no other frame, so that
  // the client's deadline measures silence (schema: Keepalives). The thread
  // starts with the first such reply (StartKeepaliveIfAsked, executor role
  // only) and is joined by Run.
  void StartKeepaliveIfAsked();
  void KeepaliveLoop();
  const std::chrono::milliseconds keepalive_period_;  // 0: the client asked for none
  std::atomic<int> deferred_replies_{0};              // owed, being worked on
  // While the executor waits on the client's behalf (memory freed, room,
  // its slices) the client waits for a call of this batch: keepalives go
  // out as for a deferred reply, so its call deadline measures silence
  // only. Executor thread, for the scope of the wait.
  class ClientWaits {
   public:
    explicit ClientWaits(Session& session) : session_(session) {
      session_.deferred_replies_.fetch_add(1);
      session_.StartKeepaliveIfAsked();
    }
    ~ClientWaits() { session_.deferred_replies_.fetch_sub(1); }
    ClientWaits(const ClientWaits&) = delete;
    ClientWaits& operator=(const ClientWaits&) = delete;

   private:
    Session& session_;
  };
  std::atomic<int64_t> last_write_ns_{0};             // steady clock, last frame sent
  std::mutex keepalive_mutex_;
  std::condition_variable keepalive_cv_;
  bool keepalive_stopping_ ABSL_GUARDED_BY(keepalive_mutex_) = false;
  std::thread keepalive_;  // started and joined by the executor role's holder / Run
};

}  // namespace ferry::server
