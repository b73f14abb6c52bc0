// GraphRegistry: the client's stream captures, graphs and executable graphs.
// Captures begin through the client, so it knows whether any is active in
// the process: while none is, capture queries are answered here, without a
// round trip.
//
// Thread-safety: all methods are thread-safe; mu_ guards the tables and is
// never held while calling out. AnyCapture is one atomic load.
#pragma once

#include <cuda.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "client/handles.h"
#include "common/status.h"

namespace ferry::client {

// A stream's part in a capture: the capture began on it (origin == the
// stream) or it joined through cuStreamWaitEvent on an event recorded in the
// capture (fork); every stream of one capture shares id, graph, origin, mode
// and thread.
struct CaptureState {
  uint64_t ctx = 0;
  uint64_t id = 0;         // unique in the process, as cuStreamGetCaptureInfo reports it
  uint64_t graph = 0;      // the graph the capture builds
  uint64_t origin = 0;     // the stream that began it (only it can end it)
  int mode = 0;            // CUstreamCaptureMode given to cuStreamBeginCapture
  std::thread::id thread;  // the thread that began it
  bool blocking = false;   // this stream synchronizes with the legacy stream
  bool to_graph = false;   // cuStreamBeginCaptureToGraph: `graph` existed before
};

// What a node does, as cuGraph*NodeGetParams answers it: its parameters when
// added or last set by cuGraph*NodeSetParams (cuGraphExec*SetParams does not
// change them). Never changed once made (a setter records a new one):
// `kernel` points into kernel_arguments, so it is shared, never copied.
struct RecordedNodeParams {
  uint64_t ctx = 0;                     // the context the node's work runs in
  CUDA_MEMSET_NODE_PARAMS memset{};     // CU_GRAPH_NODE_TYPE_MEMSET
  CUDA_MEMCPY3D memcpy{};               // CU_GRAPH_NODE_TYPE_MEMCPY
  CUDA_KERNEL_NODE_PARAMS_v2 kernel{};  // CU_GRAPH_NODE_TYPE_KERNEL: kernelParams, extra NULL
  std::vector<uint8_t> kernel_bytes;    // the packed arguments
  std::vector<void*> kernel_arguments;  // kernel.kernelParams: one pointer into kernel_bytes each
  // graph node kinds (client/api_graph_nodes.cc)
  CUDA_MEM_ALLOC_NODE_PARAMS mem_alloc{};         // CU_GRAPH_NODE_TYPE_MEM_ALLOC: dptr filled in
  std::vector<CUmemAccessDesc> mem_alloc_access;  // mem_alloc.accessDescs
  CUdeviceptr mem_free = 0;                       // CU_GRAPH_NODE_TYPE_MEM_FREE
  // CU_GRAPH_NODE_TYPE_EVENT_RECORD, _WAIT_EVENT (setting the event replaces the record)
  CUevent event = nullptr;
  CUDA_HOST_NODE_PARAMS host{};  // CU_GRAPH_NODE_TYPE_HOST (client/api_graph_host.cc)
};

// A kernel node's attributes (cuGraphKernelNodeSetAttribute), the launch
// attributes ferry forwards for launches and streams: the cluster shape and
// cooperation change the node's work (sent with it); the priority and the
// access policy window are hints, answered as set.
struct KernelNodeAttributes {
  std::array<unsigned, 3> cluster{0, 0, 0};  // 0: no cluster attribute
  bool cooperative = false;
  int priority = 0;
  CUaccessPolicyWindow window{};
};

class GraphRegistry {
 public:
  // `ids` hands out graph ids; it must outlive the registry.
  explicit GraphRegistry(HandleIds* ids) : ids_(ids) {}

  // True while some stream of this client captures.
  bool AnyCapture() const { return captures_active_.load(std::memory_order_acquire) > 0; }
  // Starts a capture of `stream` (not the legacy stream): CUDA_ERROR_ILLEGAL_STATE
  // when it captures already. Fills in state->id, graph (a new id, unless
  // state->to_graph: then the caller's, which no other capture may build),
  // origin and thread.
  Status BeginCapture(uint64_t stream, CaptureState* state);
  // cuStreamBeginCaptureToGraph's capture into `graph` ended: the graph has
  // nodes without handles now (opaque), `host_nodes` of them host nodes.
  void NoteCapturedIntoGraph(uint64_t graph, uint32_t host_nodes);
  bool FindCapture(uint64_t stream, CaptureState* state);
  // Capture `id` ended (or never began): its streams stop capturing and the
  // events recorded in it become ordinary.
  void ForgetCapture(uint64_t id);
  // `stream` is destroyed: a capture it began ends; one it joined loses it.
  void ForgetStream(uint64_t stream);
  // Fork/join as the driver does it (the server does the same with the real
  // rules): cuEventRecord on a capturing stream marks the event with the
  // capture; a later record elsewhere unmarks it. cuStreamWaitEvent of a
  // stream not capturing (blocking: not CU_STREAM_NON_BLOCKING) on a marked
  // event of the stream's context joins the stream to that capture. Free
  // while nothing captures.
  void NoteEventRecord(uint64_t event, uint64_t stream);
  void NoteStreamWait(uint64_t stream, uint64_t ctx, bool blocking, uint64_t event);
  void ForgetEvent(uint64_t event);
  // cuThreadExchangeStreamCaptureMode's rules for a potentially unsafe call
  // (allocating or freeing memory, synchronizing) made by this thread in
  // capture interaction mode `thread_mode`: the captures that forbid it (one
  // entry per capture) — in GLOBAL mode those this thread began in a mode
  // other than RELAXED and those any thread began in GLOBAL mode; in
  // THREAD_LOCAL mode only the former; RELAXED: none.
  std::vector<CaptureState> CapturesForbiddingUnsafeCalls(int thread_mode);
  // Whether a blocking stream of `ctx` captures (the legacy stream then may
  // not be used: CUDA_ERROR_STREAM_CAPTURE_IMPLICIT).
  bool BlockingCaptureIn(uint64_t ctx);

  uint64_t NewGraph(bool opaque = false);  // a graph id, recorded (see AddGraph)
  // Records graph `id`. `opaque`: it has nodes the client has no handles
  // for (captured ones, or a clone of such a graph), so its structure is the
  // server's only. `captured_host_nodes`: how many of those are host nodes.
  void AddGraph(uint64_t id, bool opaque = false, uint32_t captured_host_nodes = 0);
  // A graph's structure as the client recorded it (its explicitly added
  // nodes, in the order they were added, with their types and dependencies):
  // enough to answer cuGraphGetNodes, cuGraphGetEdges, cuGraphNodeGet* without
  // a round trip. INVALID_HANDLE for an unknown graph; NOT_SUPPORTED for an
  // opaque one.
  struct NodeShape {
    uint64_t id = 0;
    int type = 0;  // CUgraphNodeType
    std::vector<uint64_t> dependencies;
  };
  Status GraphShape(uint64_t graph, std::vector<NodeShape>* nodes);
  // The graph of `node`; INVALID_HANDLE for an unknown node.
  Status GraphOfNode(uint64_t node, uint64_t* graph);
  // Whether graph `id` is opaque (see AddGraph); false for unknown ids.
  bool IsOpaque(uint64_t id);
  // INVALID_HANDLE for an unknown id; INVALID_VALUE for a child-graph node's
  // graph (the node owns it). The graphs of its child-graph nodes go with it.
  Status RemoveGraph(uint64_t id);
  bool HasGraph(uint64_t id);
  // An executable graph id, instantiated from `graph`.
  uint64_t NewExec(uint64_t graph, uint64_t flags);
  // cuGraphExecGetFlags: the flags it was instantiated with.
  Status ExecFlags(uint64_t exec, uint64_t* flags);
  Status RemoveExec(uint64_t id);
  // graph node kinds: the graph memory (address, bytes) executable graph
  // `exec` holds, recorded at instantiation and taken when it is destroyed.
  using GraphMemory = std::vector<std::pair<uint64_t, uint64_t>>;
  void SetExecMemory(uint64_t exec, GraphMemory memory);
  GraphMemory TakeExecMemory(uint64_t exec);
  bool HasExec(uint64_t id);
  // A node id of `graph` (explicitly added nodes), of kind `type`
  // (CUgraphNodeType), after `dependencies` (nodes of the graph).
  uint64_t NewNode(uint64_t graph, int type, std::vector<uint64_t> dependencies);
  // A node the server refused (answered at once): it leaves its graph.
  void ForgetNode(uint64_t node);
  // Records what `node` was added with (see RecordedNodeParams).
  void SetNodeParams(uint64_t node, std::shared_ptr<const RecordedNodeParams> params);
  // cuGraph*NodeGetParams: what `node` was added with when it is a node of
  // type `type`; INVALID_HANDLE for an unknown node, INVALID_VALUE for a node
  // of another type.
  Status NodeParams(uint64_t node, int type, std::shared_ptr<const RecordedNodeParams>* params);
  // Whether `node` is a node of `graph`.
  bool IsNodeOf(uint64_t node, uint64_t graph);
  // cuGraphExec*NodeSetParams, cuGraphNodeSet/GetEnabled: `node` must be a
  // node of one of the kinds `types` of the graph `exec` was instantiated
  // from, and have been one when it was instantiated (answered here: the
  // client records both), INVALID_HANDLE for unknown handles, INVALID_VALUE
  // otherwise.
  Status CheckExecNode(uint64_t exec, uint64_t node, std::initializer_list<int> types);
  // cuGraphNodeSetEnabled / GetEnabled: the client records which nodes of an
  // executable graph are disabled (call CheckExecNode first).
  void SetNodeEnabled(uint64_t exec, uint64_t node, bool enabled);
  bool NodeEnabled(uint64_t exec, uint64_t node);
  // cuGraphExecUpdate: whether `graph` has the topology of the graph `exec`
  // was instantiated from, as it was then (the same node count, node types in
  // the order added and dependencies, by position). check->result is a
  // CUgraphExecUpdateResult: SUCCESS, TOPOLOGY_CHANGED (error_node: the first
  // node of `graph` whose dependencies differ, error_from_node: a dependency
  // it gained or lost; both 0 when the node counts differ), NODE_TYPE_CHANGED
  // (error_node: the first node of another type) or NOT_SUPPORTED (either
  // graph is opaque: its structure is the server's only). INVALID_HANDLE for
  // unknown ids.
  struct ExecUpdateCheck {
    int result = CU_GRAPH_EXEC_UPDATE_SUCCESS;
    uint64_t error_node = 0;
    uint64_t error_from_node = 0;
  };
  Status CheckExecUpdate(uint64_t exec, uint64_t graph, ExecUpdateCheck* check);
  // The comparison itself, of the shapes (GraphShape) of the executable
  // graph's source and of the new graph.
  static ExecUpdateCheck CompareForExecUpdate(const std::vector<NodeShape>& exec_shape,
                                              const std::vector<NodeShape>& graph_shape);
  // Forgets the captures of `ctx` (its streams are gone).
  void ForgetContext(uint64_t ctx);

  // --- graph host nodes (client/api_graph_host.cc) ----------------------------
  // A launch of an executable graph with host nodes carries one host gate per
  // host node, so the client counts them: explicitly added ones are nodes of
  // type HOST; captured ones are counted per capture (by the graph it builds)
  // and given to the graph when the capture ends.
  void NoteCapturedHostNode(uint64_t capture_graph);
  uint32_t TakeCapturedHostNodes(uint64_t capture_graph);
  // How many host nodes `graph` has (0 for an unknown graph).
  uint32_t GraphHostNodes(uint64_t graph);
  // How many host nodes each launch of `exec` runs: its graph's when it was
  // instantiated (an update keeps the node kinds).
  uint32_t ExecHostNodes(uint64_t exec);

  // --- a child-graph node's graph (client/api_graph_host.cc) -----------------
  // cuGraphChildGraphNodeGetGraph: the id of child-graph node `node`'s own
  // graph (the copy of the child it runs; the same id every time). The first
  // time (*is_new) it is recorded with nodes like the child's when the node
  // was added (*node_ids, in the order added, parameters as recorded then;
  // none, and an opaque graph, when the child was opaque). INVALID_HANDLE for
  // an unknown node, INVALID_VALUE for another kind.
  Status EmbeddedGraph(uint64_t node, uint64_t* graph, bool* is_new,
                       std::vector<uint64_t>* node_ids);
  // Whether `graph` is a child-graph node's graph.
  bool IsEmbedded(uint64_t graph);

  // --- explicit-graph editing (client/api_graph_edit.cc) ---------------------
  // cuGraphAddDependencies (remove false) / cuGraphRemoveDependencies: the
  // edges from[i] -> to[i] of `graph`, all or none, with the driver's rules:
  // INVALID_HANDLE for an unknown graph; INVALID_VALUE for a node unknown or
  // of another graph, a node depending on itself, an edge named twice, added
  // when present or removed when absent.
  Status EditEdges(uint64_t graph, const std::vector<uint64_t>& from,
                   const std::vector<uint64_t>& to, bool remove);
  // cuGraphDestroyNode: the node and its edges leave its graph (*graph gets
  // it); INVALID_HANDLE for an unknown node. Executable graphs keep their
  // recorded shapes; the node can no longer be named in them.
  Status DestroyNode(uint64_t node, uint64_t* graph);
  // A node of `graph` on a cycle of its dependencies, or 0 when none (the
  // driver refuses to instantiate a graph with a cycle).
  uint64_t NodeOnCycle(uint64_t graph);
  // cuGraphClone: a new graph id for a clone of `original`. A clone of a
  // graph that is not opaque has its nodes (ids chosen here; *copies gets
  // (original node, copy) pairs in the original's order) and is not opaque
  // either; a clone of an opaque one is opaque. INVALID_HANDLE for an
  // unknown graph.
  Status CloneGraph(uint64_t original, uint64_t* clone,
                    std::vector<std::pair<uint64_t, uint64_t>>* copies);
  // cuGraphNodeFindInClone: the copy in `clone` of `original_node`;
  // INVALID_HANDLE for an unknown graph, INVALID_VALUE when the clone has
  // no such copy (not cloned from its graph, or the copy was destroyed).
  Status FindInClone(uint64_t original_node, uint64_t clone, uint64_t* copy);
  // A kernel node's attributes (all zero until set): INVALID_HANDLE for an
  // unknown node, INVALID_VALUE for a node that is not a kernel node.
  Status KernelAttributes(uint64_t node, KernelNodeAttributes* attributes);
  Status SetKernelAttributes(uint64_t node, const KernelNodeAttributes& attributes);
  // Child-graph node `node` was added with `child` as it is now: its shape
  // is kept, for cuGraphExecChildGraphNodeSetParams (CheckChildGraphUpdate).
  void NoteChildGraph(uint64_t node, uint64_t child);
  // Whether `child` has the topology the child of node `node` had when
  // added (INVALID_VALUE otherwise; OK where either is opaque: the server
  // checks what it can).
  Status CheckChildGraphUpdate(uint64_t node, uint64_t child);

 private:
  HandleIds* const ids_;
  std::atomic<int> captures_active_{0};
  inline static std::atomic<uint64_t> next_capture_id_{1};
  std::mutex mu_;
  std::unordered_map<uint64_t, CaptureState> captures_ ABSL_GUARDED_BY(mu_);  // by stream
  // Events last recorded on a capturing stream: event -> capture id.
  std::unordered_map<uint64_t, uint64_t> capture_events_ ABSL_GUARDED_BY(mu_);
  struct GraphState {
    bool opaque = false;          // see AddGraph
    std::vector<uint64_t> nodes;  // explicitly added, in order
    uint32_t captured_host_nodes = 0;  // host nodes among those without handles
    uint64_t embedded_in = 0;          // a child-graph node's graph: the node
  };
  uint32_t HostNodesLocked(const GraphState& graph) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Host nodes captured so far, by the graph their capture builds.
  std::unordered_map<uint64_t, uint32_t> capture_host_nodes_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, GraphState> graphs_ ABSL_GUARDED_BY(mu_);
  struct ExecState {
    uint64_t graph = 0;  // instantiated from
    uint64_t flags = 0;
    std::set<uint64_t> disabled;  // nodes
    bool opaque = false;          // its graph's structure is the server's only
    std::vector<NodeShape> shape;  // its graph's when it was instantiated
    GraphMemory memory;            // see SetExecMemory
    uint32_t host_nodes = 0;       // see ExecHostNodes
  };
  std::unordered_map<uint64_t, ExecState> execs_ ABSL_GUARDED_BY(mu_);
  struct NodeState {
    uint64_t graph = 0;
    int type = 0;  // CUgraphNodeType
    std::vector<uint64_t> dependencies;
    std::shared_ptr<const RecordedNodeParams> params;  // kernel, memset and memcpy nodes
    uint64_t original = 0;  // in a clone: the node this one is the copy of
    KernelNodeAttributes attributes;  // kernel nodes
    // child-graph nodes: the child's shape when added (opaque: unknown)
    bool child_opaque = false;
    std::vector<NodeShape> child_shape;
    uint64_t embedded_graph = 0;  // child-graph nodes: their own graph's id, once asked
  };
  std::unordered_map<uint64_t, NodeState> nodes_ ABSL_GUARDED_BY(mu_);
  // Forgets child-graph node `node`'s graph, if it has one, with its nodes.
  void ForgetEmbeddedLocked(const NodeState& node) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // GraphShape's work, for a graph known not to be opaque.
  std::vector<NodeShape> ShapeLocked(const GraphState& graph) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace ferry::client
