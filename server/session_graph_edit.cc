// Session handlers for explicit-graph editing (schema/ferry.capnp, "explicit-
// graph editing"): edges added and removed, nodes destroyed, a node's work
// replaced in its graph or in one executable graph. The client checked each
// edit against the structure it records; these handlers check again what
// keeps the session sound whatever a client sends (nodes of the named graph,
// work of the node's kind and context, ranges and kernels the session's),
// and keep each graph's and executable graph's uses (README.md invariant 6)
// those of the work it now does.

#include <cuda.h>

#include "server/session.h"

#include <algorithm>
#include <string>
#include <vector>

namespace ferry::server {

Status Session::GraphEditEdges(wire::GraphEdges::Reader args) {
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
  auto from_ids = args.getFrom();
  auto to_ids = args.getTo();
  if (from_ids.size() != to_ids.size()) {
    return Status::InvalidArgument("an edge edit needs as many `from` nodes as `to` nodes");
  }
  // Edges name nodes by position in the lists: both ends must be nodes of
  // this graph (CUDA_ERROR_INVALID_VALUE otherwise, as the driver answers).
  auto node_of_graph = [&](uint64_t id, backend::GraphNode** out) -> Status {
    GraphNodeEntry* node = nullptr;
    if (!graph_nodes_.Find(id, &node).ok() || node->graph != args.getGraph()) {
      return Status::InvalidArgument("node " + std::to_string(id) + " is not a node of graph " +
                                     std::to_string(args.getGraph()));
    }
    *out = node->node;
    return Status::Ok();
  };
  std::vector<backend::GraphNode*> from(from_ids.size()), to(to_ids.size());
  for (unsigned i = 0; i < from_ids.size(); ++i) {
    FERRY_RETURN_IF_ERROR(node_of_graph(from_ids[i], &from[i]));
    FERRY_RETURN_IF_ERROR(node_of_graph(to_ids[i], &to[i]));
    if (from[i] == to[i]) return Status::InvalidArgument("a node cannot depend on itself");
  }
  if (args.getRemove()) {
    FERRY_RETURN_IF_ERROR(CheckGraphWithoutMemoryNodes(*graph, "removing dependencies"));
  }
  return backend_.EditGraphEdges(*graph->graph, from, to, args.getRemove());
}

// Executable graphs made from the graph keep the node's work and uses; the
// node's id can no longer name it in them (as with the driver, whose node
// handle is gone).
Status Session::GraphDestroyNode(wire::GraphNodeRef::Reader args) {
  GraphNodeEntry* node = nullptr;
  FERRY_RETURN_IF_ERROR(graph_nodes_.Find(args.getNode(), &node));
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(node->graph, &graph));
  FERRY_RETURN_IF_ERROR(CheckGraphWithoutMemoryNodes(*graph, "destroying a node"));
  const uint64_t embedded = node->embedded_graph;
  FERRY_RETURN_IF_ERROR(backend_.DestroyGraphNode(*graph->graph, *node->node));
  if (embedded != 0) ForgetEmbeddedGraph(embedded);
  graph->events.erase(args.getNode());  // graph node kinds: an event node's event
  std::erase(graph->nodes, args.getNode());
  return graph_nodes_.Erase(args.getNode());
}

Status Session::GraphNodeSetParams(wire::GraphNodeSetParams::Reader args, CallContext& cx) {
  GraphNodeEntry* node = nullptr;
  FERRY_RETURN_IF_ERROR(graph_nodes_.Find(args.getNode(), &node));
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(node->graph, &graph));
  NodeWorkArgs work_args;
  switch (args.which()) {
    case wire::GraphNodeSetParams::KERNEL:
      work_args.kind = wire::GraphAddNode::KERNEL;
      work_args.kernel = args.getKernel();
      break;
    case wire::GraphNodeSetParams::MEMSET:
      work_args.kind = wire::GraphAddNode::MEMSET;
      work_args.memset = args.getMemset();
      break;
    case wire::GraphNodeSetParams::MEMCPY:
      work_args.kind = wire::GraphAddNode::MEMCPY;
      work_args.memcpy = args.getMemcpy();
      break;
    case wire::GraphNodeSetParams::CHILD_GRAPH:
      work_args.kind = wire::GraphAddNode::CHILD_GRAPH;
      work_args.child = args.getChildGraph();
      break;
    case wire::GraphNodeSetParams::HOST:
      work_args.kind = wire::GraphAddNode::HOST;
      work_args.host = args.getHost();
      break;
    default:
      return Status::InvalidArgument("unknown graph node kind");
  }
  NodeWork work;
  FERRY_RETURN_IF_ERROR(NodeWorkOf(work_args, *graph, cx.bulk_in, &work));
  return SetNodeWork(args.getExec(), args.getNode(), std::move(work));
}

Status Session::SetNodeWork(uint64_t exec_id, uint64_t node_id, NodeWork work) {
  GraphNodeEntry* node = nullptr;
  FERRY_RETURN_IF_ERROR(graph_nodes_.Find(node_id, &node));
  GraphExecEntry* exec = nullptr;
  if (exec_id != 0) {
    FERRY_RETURN_IF_ERROR(graph_execs_.Find(exec_id, &exec));
    FERRY_RETURN_IF_ERROR(FindExecNode(*exec, node_id, &node));
  }
  const wire::GraphAddNode::Which kind =
      work.spec.kind == backend::GraphNodeSpec::Kind::kKernel   ? wire::GraphAddNode::KERNEL
      : work.spec.kind == backend::GraphNodeSpec::Kind::kMemset ? wire::GraphAddNode::MEMSET
      : work.spec.kind == backend::GraphNodeSpec::Kind::kCopy   ? wire::GraphAddNode::MEMCPY
      : work.spec.kind == backend::GraphNodeSpec::Kind::kChild  ? wire::GraphAddNode::CHILD_GRAPH
      : work.spec.kind == backend::GraphNodeSpec::Kind::kHost   ? wire::GraphAddNode::HOST
                                                                : wire::GraphAddNode::EMPTY;
  if (kind != node->kind || kind == wire::GraphAddNode::EMPTY) {
    return Status::InvalidArgument("the parameters are not of the node's kind");
  }
  // A node's work stays in its context (the driver's rule for memset and
  // memcpy nodes; kernel nodes' kernels belong to the context too). A child
  // graph without work of any context fits any.
  if (work.ctx != node->ctx && !(kind == wire::GraphAddNode::CHILD_GRAPH && work.ctx == 0)) {
    return Status::InvalidArgument("a graph node's work cannot move to another context");
  }
  if (exec == nullptr) {
    if (kind == wire::GraphAddNode::CHILD_GRAPH) {
      return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED,
                          "a child-graph node's graph can be changed in an executable graph only");
    }
    GraphEntry* graph = nullptr;
    FERRY_RETURN_IF_ERROR(graphs_.Find(node->graph, &graph));
    FERRY_RETURN_IF_ERROR(backend_.SetGraphNode(*graph->graph, *node->node, work.spec));
    node->uses = std::move(work.uses);
    return Status::Ok();
  }
  FERRY_RETURN_IF_ERROR(backend_.SetExecNode(*exec->exec, *node->node, work.spec));
  exec->node_uses[node_id] = std::move(work.uses);
  RefreshExecUses(*exec);
  return Status::Ok();
}

}  // namespace ferry::server
