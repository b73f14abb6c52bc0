#include "client/graph_registry.h"

#include <cuda.h>

#include <algorithm>
#include <iterator>
#include <string>

namespace ferry::client {

Status GraphRegistry::BeginCapture(uint64_t stream, CaptureState* state) {
  std::lock_guard<std::mutex> lock(mu_);
  if (captures_.count(stream) != 0) {
    return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is capturing already");
  }
  if (state->to_graph) {
    for (const auto& [other, capture] : captures_) {
      if (capture.graph == state->graph) {
        return Status::InvalidArgument("another capture builds the graph already");
      }
    }
  }
  state->id = next_capture_id_.fetch_add(1);
  if (!state->to_graph) state->graph = ids_->New(HandleKind::kGraph);
  state->origin = stream;
  state->thread = std::this_thread::get_id();
  captures_.emplace(stream, *state);
  captures_active_.fetch_add(1, std::memory_order_release);
  return Status::Ok();
}

void GraphRegistry::ForgetCapture(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t before = captures_.size();
  std::erase_if(captures_, [id](const auto& entry) { return entry.second.id == id; });
  captures_active_.fetch_sub(static_cast<int>(before - captures_.size()),
                             std::memory_order_release);
  std::erase_if(capture_events_, [id](const auto& entry) { return entry.second == id; });
}

void GraphRegistry::ForgetStream(uint64_t stream) {
  CaptureState state;
  if (!FindCapture(stream, &state)) return;
  if (state.origin == stream) return ForgetCapture(state.id);
  std::lock_guard<std::mutex> lock(mu_);
  if (captures_.erase(stream) != 0) captures_active_.fetch_sub(1, std::memory_order_release);
}

bool GraphRegistry::FindCapture(uint64_t stream, CaptureState* state) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = captures_.find(stream);
  if (it == captures_.end()) return false;
  *state = it->second;
  return true;
}

void GraphRegistry::NoteEventRecord(uint64_t event, uint64_t stream) {
  if (!AnyCapture()) return;  // no capture: no marks either (ForgetCapture)
  std::lock_guard<std::mutex> lock(mu_);
  auto it = captures_.find(stream);
  if (it != captures_.end()) {
    capture_events_[event] = it->second.id;
  } else {
    capture_events_.erase(event);
  }
}

void GraphRegistry::NoteStreamWait(uint64_t stream, uint64_t ctx, bool blocking, uint64_t event) {
  if (!AnyCapture() || stream == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto mark = capture_events_.find(event);
  if (mark == capture_events_.end() || captures_.count(stream) != 0) return;
  for (const auto& [origin_stream, state] : captures_) {
    if (state.id != mark->second || state.origin != origin_stream) continue;
    if (state.ctx != ctx) return;  // the server refuses the join
    CaptureState joined = state;
    joined.blocking = blocking;
    captures_.emplace(stream, joined);
    captures_active_.fetch_add(1, std::memory_order_release);
    return;
  }
}

void GraphRegistry::ForgetEvent(uint64_t event) {
  if (!AnyCapture()) return;
  std::lock_guard<std::mutex> lock(mu_);
  capture_events_.erase(event);
}

std::vector<CaptureState> GraphRegistry::CapturesForbiddingUnsafeCalls(int thread_mode) {
  std::vector<CaptureState> forbidding;
  if (!AnyCapture() || thread_mode == CU_STREAM_CAPTURE_MODE_RELAXED) return forbidding;
  const std::thread::id self = std::this_thread::get_id();
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [stream, state] : captures_) {
    if (state.origin != stream) continue;  // one entry per capture
    const bool own = state.thread == self && state.mode != CU_STREAM_CAPTURE_MODE_RELAXED;
    const bool global =
        thread_mode == CU_STREAM_CAPTURE_MODE_GLOBAL && state.mode == CU_STREAM_CAPTURE_MODE_GLOBAL;
    if (own || global) forbidding.push_back(state);
  }
  return forbidding;
}

bool GraphRegistry::BlockingCaptureIn(uint64_t ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [stream, capture] : captures_) {
    if (capture.ctx == ctx && capture.blocking) return true;
  }
  return false;
}

uint64_t GraphRegistry::NewGraph(bool opaque) {
  const uint64_t id = ids_->New(HandleKind::kGraph);
  AddGraph(id, opaque);
  return id;
}

void GraphRegistry::AddGraph(uint64_t id, bool opaque, uint32_t captured_host_nodes) {
  std::lock_guard<std::mutex> lock(mu_);
  graphs_[id] = GraphState{opaque, {}, captured_host_nodes};
}

bool GraphRegistry::IsOpaque(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = graphs_.find(id);
  return it != graphs_.end() && it->second.opaque;
}

Status GraphRegistry::GraphShape(uint64_t graph, std::vector<NodeShape>* nodes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = graphs_.find(graph);
  if (it == graphs_.end()) return Status::InvalidHandle("not a graph of this client");
  if (it->second.opaque) {
    return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED,
                        "the graph has captured (or cloned) nodes, which have no handles in "
                        "ferry: only its node count is known");
  }
  *nodes = ShapeLocked(it->second);
  return Status::Ok();
}

std::vector<GraphRegistry::NodeShape> GraphRegistry::ShapeLocked(const GraphState& graph) {
  std::vector<NodeShape> nodes;
  nodes.reserve(graph.nodes.size());
  for (uint64_t id : graph.nodes) {
    const NodeState& n = nodes_.at(id);
    nodes.push_back(NodeShape{id, n.type, n.dependencies});
  }
  return nodes;
}

namespace {

// A node's dependencies as positions in its graph (the order nodes were added).
std::vector<size_t> DependencyPositions(const GraphRegistry::NodeShape& node,
                                        const std::unordered_map<uint64_t, size_t>& position) {
  std::vector<size_t> positions;
  positions.reserve(node.dependencies.size());
  for (uint64_t dependency : node.dependencies) positions.push_back(position.at(dependency));
  std::sort(positions.begin(), positions.end());
  return positions;
}

std::unordered_map<uint64_t, size_t> Positions(const std::vector<GraphRegistry::NodeShape>& shape) {
  std::unordered_map<uint64_t, size_t> position;
  for (size_t i = 0; i < shape.size(); ++i) position[shape[i].id] = i;
  return position;
}

}  // namespace

GraphRegistry::ExecUpdateCheck GraphRegistry::CompareForExecUpdate(
    const std::vector<NodeShape>& exec_shape, const std::vector<NodeShape>& graph_shape) {
  ExecUpdateCheck check;
  if (exec_shape.size() != graph_shape.size()) {
    check.result = CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED;
    return check;
  }
  const auto exec_position = Positions(exec_shape);
  const auto graph_position = Positions(graph_shape);
  for (size_t i = 0; i < graph_shape.size(); ++i) {
    const NodeShape& node = graph_shape[i];
    if (node.type != exec_shape[i].type) {
      check.result = CU_GRAPH_EXEC_UPDATE_ERROR_NODE_TYPE_CHANGED;
      check.error_node = node.id;
      return check;
    }
    const std::vector<size_t> before = DependencyPositions(exec_shape[i], exec_position);
    const std::vector<size_t> after = DependencyPositions(node, graph_position);
    if (before == after) continue;
    check.result = CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED;
    check.error_node = node.id;
    // An edge one side has and the other lacks.
    std::vector<size_t> changed;
    std::set_symmetric_difference(before.begin(), before.end(), after.begin(), after.end(),
                                  std::back_inserter(changed));
    check.error_from_node = graph_shape[changed.front()].id;
    return check;
  }
  return check;
}

Status GraphRegistry::CheckExecUpdate(uint64_t exec, uint64_t graph, ExecUpdateCheck* check) {
  std::lock_guard<std::mutex> lock(mu_);
  auto e = execs_.find(exec);
  if (e == execs_.end()) return Status::InvalidHandle("not an executable graph of this client");
  auto g = graphs_.find(graph);
  if (g == graphs_.end()) return Status::InvalidHandle("not a graph of this client");
  if (e->second.opaque || g->second.opaque) {
    *check = ExecUpdateCheck{CU_GRAPH_EXEC_UPDATE_ERROR_NOT_SUPPORTED, 0, 0};
    return Status::Ok();
  }
  *check = CompareForExecUpdate(e->second.shape, ShapeLocked(g->second));
  return Status::Ok();
}

Status GraphRegistry::GraphOfNode(uint64_t node, uint64_t* graph) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return Status::InvalidHandle("not a graph node of this client");
  *graph = it->second.graph;
  return Status::Ok();
}

Status GraphRegistry::RemoveGraph(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = graphs_.find(id);
  if (it == graphs_.end()) return Status::InvalidHandle("no graph " + std::to_string(id));
  if (it->second.embedded_in != 0) {
    return Status::InvalidArgument("a child-graph node's graph belongs to its node");
  }
  for (uint64_t node : it->second.nodes) {
    if (auto n = nodes_.find(node); n != nodes_.end()) ForgetEmbeddedLocked(n->second);
  }
  graphs_.erase(id);
  std::erase_if(nodes_, [id](const auto& entry) { return entry.second.graph == id; });
  return Status::Ok();
}

void GraphRegistry::ForgetEmbeddedLocked(const NodeState& node) {
  auto g = graphs_.find(node.embedded_graph);
  if (node.embedded_graph == 0 || g == graphs_.end()) return;
  const uint64_t id = node.embedded_graph;
  for (uint64_t inner : g->second.nodes) {
    if (auto n = nodes_.find(inner); n != nodes_.end()) ForgetEmbeddedLocked(n->second);
  }
  graphs_.erase(id);
  std::erase_if(nodes_, [id](const auto& entry) { return entry.second.graph == id; });
}

uint64_t GraphRegistry::NewNode(uint64_t graph, int type, std::vector<uint64_t> dependencies) {
  const uint64_t id = ids_->New(HandleKind::kGraphNode);
  std::lock_guard<std::mutex> lock(mu_);
  NodeState& node = nodes_[id];
  node.graph = graph;
  node.type = type;
  node.dependencies = std::move(dependencies);
  if (auto it = graphs_.find(graph); it != graphs_.end()) it->second.nodes.push_back(id);
  return id;
}

void GraphRegistry::ForgetNode(uint64_t node) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return;
  if (auto g = graphs_.find(it->second.graph); g != graphs_.end())
    std::erase(g->second.nodes, node);
  nodes_.erase(it);
}

void GraphRegistry::SetNodeParams(uint64_t node, std::shared_ptr<const RecordedNodeParams> params) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = nodes_.find(node); it != nodes_.end()) it->second.params = std::move(params);
}

Status GraphRegistry::NodeParams(uint64_t node, int type,
                                 std::shared_ptr<const RecordedNodeParams>* params) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return Status::InvalidHandle("not a graph node of this client");
  if (it->second.type != type || it->second.params == nullptr) {
    return Status::InvalidArgument("the node is of type " + std::to_string(it->second.type) +
                                   ", not " + std::to_string(type));
  }
  *params = it->second.params;
  return Status::Ok();
}

bool GraphRegistry::IsNodeOf(uint64_t node, uint64_t graph) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(node);
  return it != nodes_.end() && it->second.graph == graph;
}

Status GraphRegistry::CheckExecNode(uint64_t exec, uint64_t node,
                                    std::initializer_list<int> types) {
  std::lock_guard<std::mutex> lock(mu_);
  auto e = execs_.find(exec);
  if (e == execs_.end()) return Status::InvalidHandle("not an executable graph of this client");
  auto n = nodes_.find(node);
  if (n == nodes_.end()) return Status::InvalidHandle("not a graph node of this client");
  if (n->second.graph != e->second.graph) {
    return Status::InvalidArgument(
        "the node is not a node of the graph the executable graph was instantiated from");
  }
  if (std::find(types.begin(), types.end(), n->second.type) == types.end()) {
    return Status::InvalidArgument("the call does not apply to a node of type " +
                                   std::to_string(n->second.type));
  }
  const auto& shape = e->second.shape;
  if (!e->second.opaque && std::none_of(shape.begin(), shape.end(),
                                        [node](const NodeShape& s) { return s.id == node; })) {
    return Status::InvalidArgument(
        "the node was added to the graph after the executable graph was instantiated");
  }
  return Status::Ok();
}

void GraphRegistry::SetNodeEnabled(uint64_t exec, uint64_t node, bool enabled) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = execs_.find(exec);
  if (it == execs_.end()) return;
  if (enabled) {
    it->second.disabled.erase(node);
  } else {
    it->second.disabled.insert(node);
  }
}

bool GraphRegistry::NodeEnabled(uint64_t exec, uint64_t node) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = execs_.find(exec);
  return it != execs_.end() && it->second.disabled.count(node) == 0;
}

bool GraphRegistry::HasGraph(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  return graphs_.count(id) != 0;
}

Status GraphRegistry::ExecFlags(uint64_t exec, uint64_t* flags) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = execs_.find(exec);
  if (it == execs_.end()) return Status::InvalidHandle("not an executable graph of this client");
  *flags = it->second.flags;
  return Status::Ok();
}

uint64_t GraphRegistry::NewExec(uint64_t graph, uint64_t flags) {
  const uint64_t id = ids_->New(HandleKind::kGraphExec);
  std::lock_guard<std::mutex> lock(mu_);
  ExecState state{graph, flags, {}, false, {}, {}};
  auto g = graphs_.find(graph);
  if (g == graphs_.end() || g->second.opaque) {
    state.opaque = true;
  } else {
    state.shape = ShapeLocked(g->second);
  }
  if (g != graphs_.end()) state.host_nodes = HostNodesLocked(g->second);
  execs_[id] = std::move(state);
  return id;
}

Status GraphRegistry::RemoveExec(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (execs_.erase(id) == 0) {
    return Status::InvalidHandle("no executable graph " + std::to_string(id));
  }
  return Status::Ok();
}

void GraphRegistry::SetExecMemory(uint64_t exec, GraphMemory memory) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = execs_.find(exec); it != execs_.end()) it->second.memory = std::move(memory);
}

GraphRegistry::GraphMemory GraphRegistry::TakeExecMemory(uint64_t exec) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = execs_.find(exec);
  return it == execs_.end() ? GraphMemory{} : std::move(it->second.memory);
}

bool GraphRegistry::HasExec(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  return execs_.count(id) != 0;
}

void GraphRegistry::ForgetContext(uint64_t ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t before = captures_.size();
  std::erase_if(captures_, [ctx](const auto& entry) { return entry.second.ctx == ctx; });
  captures_active_.fetch_sub(static_cast<int>(before - captures_.size()),
                             std::memory_order_release);
  if (captures_.empty()) capture_events_.clear();
}

Status GraphRegistry::EditEdges(uint64_t graph, const std::vector<uint64_t>& from,
                                const std::vector<uint64_t>& to, bool remove) {
  std::lock_guard<std::mutex> lock(mu_);
  if (graphs_.count(graph) == 0) return Status::InvalidHandle("not a graph of this client");
  if (from.size() != to.size()) return Status::InvalidArgument("from and to differ in length");
  // Check every edge before changing any, so a refused edit changes nothing.
  std::vector<std::pair<uint64_t, uint64_t>> edges;
  for (size_t i = 0; i < from.size(); ++i) {
    for (uint64_t id : {from[i], to[i]}) {
      auto it = nodes_.find(id);
      if (it == nodes_.end() || it->second.graph != graph) {
        return Status::InvalidArgument("edge " + std::to_string(i) +
                                       " names a node that is not of the graph");
      }
    }
    if (from[i] == to[i]) return Status::InvalidArgument("a node cannot depend on itself");
    const std::pair<uint64_t, uint64_t> edge{from[i], to[i]};
    if (std::find(edges.begin(), edges.end(), edge) != edges.end()) {
      return Status::InvalidArgument("edge " + std::to_string(i) + " is named twice");
    }
    const auto& deps = nodes_.at(to[i]).dependencies;
    const bool present = std::find(deps.begin(), deps.end(), from[i]) != deps.end();
    if (remove && !present) {
      return Status::InvalidArgument("edge " + std::to_string(i) + " is not in the graph");
    }
    if (!remove && present) {
      return Status::InvalidArgument("edge " + std::to_string(i) + " is in the graph already");
    }
    edges.push_back(edge);
  }
  for (const auto& [source, target] : edges) {
    auto& deps = nodes_.at(target).dependencies;
    if (remove) {
      std::erase(deps, source);
    } else {
      deps.push_back(source);
    }
  }
  return Status::Ok();
}

Status GraphRegistry::DestroyNode(uint64_t node, uint64_t* graph) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return Status::InvalidHandle("not a graph node of this client");
  *graph = it->second.graph;
  if (auto g = graphs_.find(*graph); g != graphs_.end()) {
    std::erase(g->second.nodes, node);
    for (uint64_t other : g->second.nodes) std::erase(nodes_.at(other).dependencies, node);
  }
  ForgetEmbeddedLocked(it->second);
  nodes_.erase(node);
  return Status::Ok();
}

// A depth-first search for a back edge over the graph's recorded nodes
// (captured nodes cannot be on a cycle: edges reach only nodes with ids).
uint64_t GraphRegistry::NodeOnCycle(uint64_t graph) {
  std::lock_guard<std::mutex> lock(mu_);
  auto g = graphs_.find(graph);
  if (g == graphs_.end()) return 0;
  enum class Mark { kNew, kOnPath, kDone };
  std::unordered_map<uint64_t, Mark> mark;
  for (uint64_t start : g->second.nodes) {
    if (mark[start] != Mark::kNew) continue;
    // (node, index of the next dependency to visit)
    std::vector<std::pair<uint64_t, size_t>> path{{start, 0}};
    mark[start] = Mark::kOnPath;
    while (!path.empty()) {
      auto& [id, next] = path.back();
      const auto& deps = nodes_.at(id).dependencies;
      if (next == deps.size()) {
        mark[id] = Mark::kDone;
        path.pop_back();
        continue;
      }
      const uint64_t dependency = deps[next++];
      if (mark[dependency] == Mark::kOnPath) return dependency;
      if (mark[dependency] == Mark::kNew) {
        mark[dependency] = Mark::kOnPath;
        path.emplace_back(dependency, 0);
      }
    }
  }
  return 0;
}

Status GraphRegistry::CloneGraph(uint64_t original, uint64_t* clone,
                                 std::vector<std::pair<uint64_t, uint64_t>>* copies) {
  const uint64_t id = ids_->New(HandleKind::kGraph);
  std::lock_guard<std::mutex> lock(mu_);
  auto g = graphs_.find(original);
  if (g == graphs_.end()) return Status::InvalidHandle("not a graph of this client");
  GraphState state{g->second.opaque, {}, g->second.captured_host_nodes};
  // An opaque clone has no node handles: its explicit host nodes are among
  // those without.
  if (g->second.opaque) state.captured_host_nodes = HostNodesLocked(g->second);
  copies->clear();
  if (!g->second.opaque) {
    std::unordered_map<uint64_t, uint64_t> copy_of;
    for (uint64_t node : g->second.nodes) {
      copy_of[node] = ids_->New(HandleKind::kGraphNode);
      copies->emplace_back(node, copy_of[node]);
    }
    for (uint64_t node : g->second.nodes) {
      NodeState copy = nodes_.at(node);
      copy.graph = id;
      copy.original = node;
      copy.embedded_graph = 0;  // the copy's own graph has no id yet
      for (uint64_t& dependency : copy.dependencies) dependency = copy_of.at(dependency);
      nodes_[copy_of.at(node)] = std::move(copy);
      state.nodes.push_back(copy_of.at(node));
    }
  }
  graphs_[id] = std::move(state);
  *clone = id;
  return Status::Ok();
}

Status GraphRegistry::FindInClone(uint64_t original_node, uint64_t clone, uint64_t* copy) {
  std::lock_guard<std::mutex> lock(mu_);
  auto c = graphs_.find(clone);
  if (c == graphs_.end()) return Status::InvalidHandle("not a graph of this client");
  for (uint64_t node : c->second.nodes) {
    if (nodes_.at(node).original == original_node) {
      *copy = node;
      return Status::Ok();
    }
  }
  return Status::InvalidArgument("the clone has no copy of the node");
}

Status GraphRegistry::KernelAttributes(uint64_t node, KernelNodeAttributes* attributes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return Status::InvalidHandle("not a graph node of this client");
  if (it->second.type != CU_GRAPH_NODE_TYPE_KERNEL) {
    return Status::InvalidArgument("kernel node attributes apply to kernel nodes only");
  }
  *attributes = it->second.attributes;
  return Status::Ok();
}

Status GraphRegistry::SetKernelAttributes(uint64_t node, const KernelNodeAttributes& attributes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return Status::InvalidHandle("not a graph node of this client");
  if (it->second.type != CU_GRAPH_NODE_TYPE_KERNEL) {
    return Status::InvalidArgument("kernel node attributes apply to kernel nodes only");
  }
  it->second.attributes = attributes;
  return Status::Ok();
}

void GraphRegistry::NoteChildGraph(uint64_t node, uint64_t child) {
  std::lock_guard<std::mutex> lock(mu_);
  auto n = nodes_.find(node);
  auto c = graphs_.find(child);
  if (n == nodes_.end() || c == graphs_.end()) return;
  n->second.child_opaque = c->second.opaque;
  if (!c->second.opaque) n->second.child_shape = ShapeLocked(c->second);
}

Status GraphRegistry::CheckChildGraphUpdate(uint64_t node, uint64_t child) {
  std::lock_guard<std::mutex> lock(mu_);
  auto n = nodes_.find(node);
  if (n == nodes_.end()) return Status::InvalidHandle("not a graph node of this client");
  auto c = graphs_.find(child);
  if (c == graphs_.end()) return Status::InvalidHandle("childGraph is not a graph of this client");
  if (n->second.child_opaque || c->second.opaque) return Status::Ok();
  const ExecUpdateCheck check = CompareForExecUpdate(n->second.child_shape, ShapeLocked(c->second));
  if (check.result != CU_GRAPH_EXEC_UPDATE_SUCCESS) {
    return Status::InvalidArgument(
        "the new child graph's topology differs from the one the node was added with");
  }
  return Status::Ok();
}

void GraphRegistry::NoteCapturedHostNode(uint64_t capture_graph) {
  std::lock_guard<std::mutex> lock(mu_);
  ++capture_host_nodes_[capture_graph];
}

uint32_t GraphRegistry::TakeCapturedHostNodes(uint64_t capture_graph) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = capture_host_nodes_.find(capture_graph);
  if (it == capture_host_nodes_.end()) return 0;
  const uint32_t count = it->second;
  capture_host_nodes_.erase(it);
  return count;
}

uint32_t GraphRegistry::HostNodesLocked(const GraphState& graph) {
  uint32_t count = graph.captured_host_nodes;
  for (uint64_t id : graph.nodes) {
    if (auto n = nodes_.find(id); n != nodes_.end() && n->second.type == CU_GRAPH_NODE_TYPE_HOST) {
      ++count;
    }
  }
  return count;
}

uint32_t GraphRegistry::GraphHostNodes(uint64_t graph) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = graphs_.find(graph);
  return it == graphs_.end() ? 0 : HostNodesLocked(it->second);
}

Status GraphRegistry::EmbeddedGraph(uint64_t node, uint64_t* graph, bool* is_new,
                                    std::vector<uint64_t>* node_ids) {
  const uint64_t new_graph = ids_->New(HandleKind::kGraph);
  std::lock_guard<std::mutex> lock(mu_);
  auto n = nodes_.find(node);
  if (n == nodes_.end()) return Status::InvalidHandle("not a graph node of this client");
  if (n->second.type != CU_GRAPH_NODE_TYPE_GRAPH) {
    return Status::InvalidArgument("not a child-graph node");
  }
  *is_new = n->second.embedded_graph == 0;
  node_ids->clear();
  if (!*is_new) {
    *graph = n->second.embedded_graph;
    return Status::Ok();
  }
  GraphState state;
  state.opaque = n->second.child_opaque;
  state.embedded_in = node;
  const std::vector<NodeShape> shape = n->second.child_shape;  // copied: nodes_ grows
  std::unordered_map<uint64_t, uint64_t> copy_of;
  for (const NodeShape& child : shape) copy_of[child.id] = ids_->New(HandleKind::kGraphNode);
  for (const NodeShape& child : state.opaque ? std::vector<NodeShape>{} : shape) {
    NodeState copy;
    if (auto original = nodes_.find(child.id); original != nodes_.end()) {
      copy = original->second;  // its parameters and attributes as recorded
      copy.embedded_graph = 0;
    } else if (child.type == CU_GRAPH_NODE_TYPE_GRAPH) {
      copy.child_opaque = true;  // its child's shape is gone with it
    }
    copy.graph = new_graph;
    copy.type = child.type;
    copy.original = 0;
    copy.dependencies.clear();
    for (uint64_t d : child.dependencies) copy.dependencies.push_back(copy_of.at(d));
    nodes_[copy_of.at(child.id)] = std::move(copy);
    state.nodes.push_back(copy_of.at(child.id));
  }
  *node_ids = state.nodes;
  graphs_[new_graph] = std::move(state);
  nodes_.at(node).embedded_graph = new_graph;
  *graph = new_graph;
  return Status::Ok();
}

void GraphRegistry::NoteCapturedIntoGraph(uint64_t graph, uint32_t host_nodes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = graphs_.find(graph);
  if (it == graphs_.end()) return;
  it->second.opaque = true;
  it->second.captured_host_nodes += host_nodes;
}

bool GraphRegistry::IsEmbedded(uint64_t graph) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = graphs_.find(graph);
  return it != graphs_.end() && it->second.embedded_in != 0;
}

uint32_t GraphRegistry::ExecHostNodes(uint64_t exec) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = execs_.find(exec);
  return it == execs_.end() ? 0 : it->second.host_nodes;
}

}  // namespace ferry::client
