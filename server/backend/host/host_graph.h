// The host backend's graphs: a graph is a set of nodes, each its kind, its
// work (one host operation) and the nodes it depends on; an executable graph
// runs its nodes' work in a topological order of the dependencies, fixed
// when it is made (HostGraph::Order). Captured graphs are a chain of nodes in
// the order the work was queued (a valid order of the capture's fork/join
// graph: a node's dependencies are always queued before it).
//
// Thread-safety: a HostGraph is used by one session's executor at a time;
// a HostGraphExec's published operation list (ops()) is immutable and may
// be run by a stream worker while the executor publishes a new one.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "server/backend/api/gpu_backend.h"

namespace ferry::backend::host_internal {

// A unit of graph work, run on a stream worker.
using HostGraphOp = std::function<void()>;
using HostGraphOps = std::vector<HostGraphOp>;

// graph host nodes: a host node's operation. Run, it does nothing: the
// backend's LaunchGraph splits the replay at it and holds the stream at a
// host gate there (GraphHostCall), as EnqueueHostGate does.
struct HostNodeOp {
  uint64_t host_function;
  void operator()() const {}
};
// How many of `ops` are host nodes (HostNodeOp).
size_t CountHostNodes(const HostGraphOps& ops);

// graph node kinds: an allocation node's memory. Its address range is
// reserved (PROT_NONE, nothing behind it) from the node's creation until no
// graph or executable graph names it; it is readable and writable only while
// an executable graph holds it (HostGraphMemory). `held` is guarded by the
// backend's lock.
struct HostGraphAllocation {
  HostGraphAllocation(void* base, uint64_t bytes, int device)
      : base(base), bytes(bytes), device(device) {}
  ~HostGraphAllocation();  // unmaps the range
  void* const base;
  const uint64_t bytes;  // whole pages
  const int device;
  bool held = false;
};
// The memory an executable graph holds. When the executable graph goes,
// `release` runs: the backend's one release mechanism
// (ReleaseAfterQueuedWork over the session's tenant) then drops the pages
// and makes the ranges PROT_NONE again once every operation queued before
// on the tenant's streams (the graph's launches and any other work that used
// the range) has finished.
struct HostGraphMemory {
  std::vector<std::shared_ptr<HostGraphAllocation>> allocations;
  std::function<void()> release;
  ~HostGraphMemory();
};

class HostGraph;

class HostGraphNode final : public GraphNode {
 public:
  HostGraphNode(GraphNodeSpec::Kind kind, HostGraphOp op, size_t child_nodes = 0);
  // Unique in the process, never reused: an executable graph names its
  // nodes by serial, so a node destroyed (and its memory reused by a new
  // node) can never reach an executable graph made before.
  const uint64_t serial;
  const GraphNodeSpec::Kind kind;
  HostGraphOp op;
  std::vector<HostGraphNode*> dependencies;  // nodes of the same graph
  size_t child_nodes;                        // kChild: how many nodes the child had
  // kChild nodes added to a graph: the graph the node runs, a copy of the
  // child owned by the node (cuGraphChildGraphNodeGetGraph hands it out, so
  // its edits reach the node's later instantiations). Null otherwise.
  std::shared_ptr<HostGraph> embedded;
  // The node's work as it is now: `op`, or the embedded graph's nodes in a
  // topological order (INVALID_VALUE when they form a cycle).
  Status Work(HostGraphOp* out) const;
  // kChild: how many nodes its child has now.
  size_t ChildNodes() const;
};

class HostGraph final : public Graph {
 public:
  HostGraph() = default;
  // A captured graph: `ops` as a chain, each after the one before.
  explicit HostGraph(HostGraphOps ops);

  // A new node of `kind` doing `op`, after `dependencies` (nodes of this graph).
  HostGraphNode* Add(GraphNodeSpec::Kind kind, HostGraphOp op,
                     std::span<GraphNode* const> dependencies, size_t child_nodes = 0);
  // cuGraphAddDependencies / cuGraphRemoveDependencies, all edges or none:
  // CUDA_ERROR_INVALID_VALUE for an edge added twice (in the graph already or
  // twice in the lists) or removed when absent, or a node of another graph.
  Status EditEdges(std::span<GraphNode* const> from, std::span<GraphNode* const> to, bool remove);
  // `node` and its edges leave the graph; the node is destroyed.
  Status Destroy(GraphNode& node);
  // The nodes' work in a topological order (ties broken by the order added),
  // or CUDA_ERROR_INVALID_VALUE when the dependencies have a cycle.
  // `positions` (optional) gets the position (order added) of each op.
  Status Order(HostGraphOps* ops, std::vector<size_t>* positions = nullptr) const;
  // A copy: the same kinds, work and edges, new nodes.
  std::unique_ptr<HostGraph> Clone() const;
  size_t size() const { return nodes_.size(); }
  // graph host nodes: how many nodes run a HostNodeOp.
  size_t HostNodes() const;
  // graph node kinds: of its allocation nodes (shared with clones).
  std::vector<std::shared_ptr<HostGraphAllocation>> allocations;
  const std::vector<std::unique_ptr<HostGraphNode>>& nodes() const { return nodes_; }

 private:
  bool Holds(const GraphNode* node) const;
  std::vector<std::unique_ptr<HostGraphNode>> nodes_;  // in the order added
};

// Updates (Replace, SetEnabled, ReplaceAll) change what later launches run;
// launches queued already keep the list they were queued with (a new list is
// published).
class HostGraphExec final : public GraphExec {
 public:
  // CUDA_ERROR_INVALID_VALUE when `graph` has a cycle.
  static Status Make(const HostGraph& graph, std::unique_ptr<HostGraphExec>* out);
  const std::shared_ptr<const HostGraphOps>& ops() const { return ops_; }
  // graph node kinds: the memory of its graph's allocation nodes
  // (CommitGraphMemory), released with this executable graph.
  std::shared_ptr<HostGraphMemory> memory;
  // Node `node` (of the graph this was made from, when it was made) runs
  // `op` from now on (when enabled); INVALID_VALUE for another node.
  Status Replace(const HostGraphNode& node, HostGraphOp op);
  // Every node runs the work of its counterpart (by position, the order
  // added) in `graph` from now on (cuGraphExecUpdate); the order stays.
  Status ReplaceAll(const HostGraph& graph);
  Status SetEnabled(const HostGraphNode& node, bool enabled);
  // How many nodes the child of child-graph node `node` had (its topology
  // must stay for an update); INVALID_VALUE for another node.
  Status ChildNodes(const HostGraphNode& node, size_t* count) const;

 private:
  HostGraphExec() = default;
  Status PositionOf(const HostGraphNode& node, size_t* position) const;
  void Publish();
  std::unordered_map<uint64_t, size_t> position_;  // node serial -> position
  std::vector<size_t> child_nodes_;                // by position
  HostGraphOps node_ops_;                          // each node's current work, by position
  std::vector<bool> disabled_;                     // by position
  std::vector<size_t> order_;                      // positions, in the order they run
  std::shared_ptr<const HostGraphOps> ops_;        // what launches run
};

}  // namespace ferry::backend::host_internal
