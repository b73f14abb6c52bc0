#include "server/backend/host/host_graph.h"

#include <cuda.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <queue>
#include <string>
#include <utility>

namespace ferry::backend::host_internal {

HostGraphAllocation::~HostGraphAllocation() { munmap(base, bytes); }

HostGraphMemory::~HostGraphMemory() {
  if (release) release();
}

namespace {

std::atomic<uint64_t> next_node_serial{1};

Status InvalidValue(std::string message) {
  return Status::Cuda(CUDA_ERROR_INVALID_VALUE, std::move(message));
}

}  // namespace

HostGraphNode::HostGraphNode(GraphNodeSpec::Kind kind, HostGraphOp op, size_t child_nodes)
    : serial(next_node_serial.fetch_add(1, std::memory_order_relaxed)),
      kind(kind),
      op(std::move(op)),
      child_nodes(child_nodes) {}

Status HostGraphNode::Work(HostGraphOp* out) const {
  if (embedded == nullptr) {
    *out = op;
    return Status::Ok();
  }
  auto ops = std::make_shared<HostGraphOps>();
  FERRY_RETURN_IF_ERROR(embedded->Order(ops.get()));
  *out = [ops = std::shared_ptr<const HostGraphOps>(std::move(ops))] {
    for (const HostGraphOp& child_op : *ops) child_op();
  };
  return Status::Ok();
}

size_t HostGraphNode::ChildNodes() const {
  return embedded != nullptr ? embedded->size() : child_nodes;
}

HostGraph::HostGraph(HostGraphOps ops) {
  HostGraphNode* previous = nullptr;
  for (HostGraphOp& op : ops) {
    nodes_.push_back(std::make_unique<HostGraphNode>(GraphNodeSpec::Kind::kEmpty, std::move(op)));
    if (previous != nullptr) nodes_.back()->dependencies.push_back(previous);
    previous = nodes_.back().get();
  }
}

size_t CountHostNodes(const HostGraphOps& ops) {
  return static_cast<size_t>(std::count_if(ops.begin(), ops.end(), [](const HostGraphOp& op) {
    return op.target<HostNodeOp>() != nullptr;
  }));
}

size_t HostGraph::HostNodes() const {
  return static_cast<size_t>(std::count_if(nodes_.begin(), nodes_.end(), [](const auto& node) {
    return node->op.template target<HostNodeOp>() != nullptr;
  }));
}

bool HostGraph::Holds(const GraphNode* node) const {
  return std::any_of(nodes_.begin(), nodes_.end(),
                     [node](const auto& n) { return n.get() == node; });
}

HostGraphNode* HostGraph::Add(GraphNodeSpec::Kind kind, HostGraphOp op,
                              std::span<GraphNode* const> dependencies, size_t child_nodes) {
  auto node = std::make_unique<HostGraphNode>(kind, std::move(op), child_nodes);
  for (GraphNode* d : dependencies) node->dependencies.push_back(static_cast<HostGraphNode*>(d));
  nodes_.push_back(std::move(node));
  return nodes_.back().get();
}

Status HostGraph::EditEdges(std::span<GraphNode* const> from, std::span<GraphNode* const> to,
                            bool remove) {
  if (from.size() != to.size()) return InvalidValue("as many `from` as `to` nodes are needed");
  // Check every edge first, so a refused edit changes nothing.
  std::vector<std::pair<HostGraphNode*, HostGraphNode*>> edges;
  for (size_t i = 0; i < from.size(); ++i) {
    if (!Holds(from[i]) || !Holds(to[i])) return InvalidValue("a node is not of this graph");
    auto* source = static_cast<HostGraphNode*>(from[i]);
    auto* target = static_cast<HostGraphNode*>(to[i]);
    if (source == target) return InvalidValue("a node cannot depend on itself");
    const auto& deps = target->dependencies;
    const bool present = std::find(deps.begin(), deps.end(), source) != deps.end();
    const bool listed =
        std::find(edges.begin(), edges.end(), std::pair{source, target}) != edges.end();
    if (listed) return InvalidValue("an edge is named twice");
    if (remove && !present) return InvalidValue("no such edge");
    if (!remove && present) return InvalidValue("the edge exists already");
    edges.emplace_back(source, target);
  }
  for (auto [source, target] : edges) {
    if (remove) {
      std::erase(target->dependencies, source);
    } else {
      target->dependencies.push_back(source);
    }
  }
  return Status::Ok();
}

Status HostGraph::Destroy(GraphNode& node) {
  auto it = std::find_if(nodes_.begin(), nodes_.end(),
                         [&node](const auto& n) { return n.get() == &node; });
  if (it == nodes_.end()) return InvalidValue("the node is not of this graph");
  for (auto& other : nodes_) std::erase(other->dependencies, it->get());
  nodes_.erase(it);
  return Status::Ok();
}

// Kahn's algorithm, always taking the earliest-added ready node: a graph
// whose nodes were added after their dependencies runs in the order added.
Status HostGraph::Order(HostGraphOps* ops, std::vector<size_t>* positions) const {
  std::unordered_map<const HostGraphNode*, size_t> position;
  for (size_t i = 0; i < nodes_.size(); ++i) position[nodes_[i].get()] = i;
  std::vector<size_t> waiting(nodes_.size());
  std::vector<std::vector<size_t>> dependents(nodes_.size());
  for (size_t i = 0; i < nodes_.size(); ++i) {
    waiting[i] = nodes_[i]->dependencies.size();
    for (const HostGraphNode* d : nodes_[i]->dependencies) dependents[position.at(d)].push_back(i);
  }
  std::priority_queue<size_t, std::vector<size_t>, std::greater<>> ready;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    if (waiting[i] == 0) ready.push(i);
  }
  HostGraphOps ordered;
  std::vector<size_t> order;
  while (!ready.empty()) {
    const size_t i = ready.top();
    ready.pop();
    if (ops != nullptr) {
      ordered.emplace_back();
      FERRY_RETURN_IF_ERROR(nodes_[i]->Work(&ordered.back()));
    }
    order.push_back(i);
    for (size_t dependent : dependents[i]) {
      if (--waiting[dependent] == 0) ready.push(dependent);
    }
  }
  if (order.size() != nodes_.size()) {
    return InvalidValue("the graph's dependencies form a cycle");
  }
  if (ops != nullptr) *ops = std::move(ordered);
  if (positions != nullptr) *positions = std::move(order);
  return Status::Ok();
}

std::unique_ptr<HostGraph> HostGraph::Clone() const {
  auto clone = std::make_unique<HostGraph>();
  std::unordered_map<const HostGraphNode*, HostGraphNode*> copy_of;
  for (const auto& node : nodes_) {
    clone->nodes_.push_back(
        std::make_unique<HostGraphNode>(node->kind, node->op, node->child_nodes));
    if (node->embedded != nullptr) clone->nodes_.back()->embedded = node->embedded->Clone();
    copy_of[node.get()] = clone->nodes_.back().get();
  }
  for (size_t i = 0; i < nodes_.size(); ++i) {
    for (const HostGraphNode* d : nodes_[i]->dependencies) {
      clone->nodes_[i]->dependencies.push_back(copy_of.at(d));
    }
  }
  return clone;
}

Status HostGraphExec::Make(const HostGraph& graph, std::unique_ptr<HostGraphExec>* out) {
  std::unique_ptr<HostGraphExec> exec(new HostGraphExec());
  FERRY_RETURN_IF_ERROR(graph.Order(nullptr, &exec->order_));
  for (size_t i = 0; i < graph.size(); ++i) {
    const HostGraphNode& node = *graph.nodes()[i];
    exec->position_[node.serial] = i;
    exec->node_ops_.emplace_back();
    FERRY_RETURN_IF_ERROR(node.Work(&exec->node_ops_.back()));
    exec->child_nodes_.push_back(node.ChildNodes());
  }
  exec->disabled_.assign(graph.size(), false);
  exec->Publish();
  *out = std::move(exec);
  return Status::Ok();
}

Status HostGraphExec::PositionOf(const HostGraphNode& node, size_t* position) const {
  auto it = position_.find(node.serial);
  if (it == position_.end()) return InvalidValue("the node is not in the executable graph");
  *position = it->second;
  return Status::Ok();
}

Status HostGraphExec::Replace(const HostGraphNode& node, HostGraphOp op) {
  size_t position = 0;
  FERRY_RETURN_IF_ERROR(PositionOf(node, &position));
  node_ops_[position] = std::move(op);
  Publish();
  return Status::Ok();
}

Status HostGraphExec::ReplaceAll(const HostGraph& graph) {
  if (graph.size() != node_ops_.size()) {
    return Status::Cuda(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE,
                        "the graph has another number of nodes than the executable graph");
  }
  HostGraphOps ops(graph.size());
  for (size_t i = 0; i < graph.size(); ++i) FERRY_RETURN_IF_ERROR(graph.nodes()[i]->Work(&ops[i]));
  for (size_t i = 0; i < graph.size(); ++i) {
    node_ops_[i] = std::move(ops[i]);
    child_nodes_[i] = graph.nodes()[i]->ChildNodes();
  }
  Publish();
  return Status::Ok();
}

Status HostGraphExec::SetEnabled(const HostGraphNode& node, bool enabled) {
  size_t position = 0;
  FERRY_RETURN_IF_ERROR(PositionOf(node, &position));
  disabled_[position] = !enabled;
  Publish();
  return Status::Ok();
}

Status HostGraphExec::ChildNodes(const HostGraphNode& node, size_t* count) const {
  size_t position = 0;
  FERRY_RETURN_IF_ERROR(PositionOf(node, &position));
  *count = child_nodes_[position];
  return Status::Ok();
}

void HostGraphExec::Publish() {
  auto ops = std::make_shared<HostGraphOps>();
  ops->reserve(order_.size());
  for (size_t position : order_) {
    if (disabled_[position]) continue;
    ops->push_back(node_ops_[position]);
  }
  ops_ = std::move(ops);
}

}  // namespace ferry::backend::host_internal
