// Session handlers for graph host nodes (schema/ferry.capnp, "Graph host
// nodes"): a host node runs the client's function mid-replay, so each host
// node of a launch is a host gate of the launch's call. The gates are
// registered (RegisterGate) before the backend can reach them, keyed by the
// launch's seq and the gate's index; the backend reports each node as the
// replay reaches it (backend::GraphHostCall), and the client's gateOpen lets
// the replay go on. A session that ends opens its gates (EndServing), so a
// replay never waits on a client that went away.
//
// Also here: a child-graph node's own graph (graphChildGraphNodeGetGraph),
// whose edits reach the node.

#include <cuda.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "server/session.h"

namespace ferry::server {

Status Session::StreamCaptureHostFunc(wire::StreamCaptureHostFunc::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  if (args.getHostFunction() == 0) {
    return Status::InvalidArgument("a host node needs a host function id");
  }
  const CaptureEntry* capture = CaptureOfStream(args.getStream());
  if (capture == nullptr) {
    return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is not capturing");
  }
  backend::Stream* origin = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(capture->ctx, capture->origin, &origin));
  FERRY_RETURN_IF_ERROR(CaptureGuard(args.getStream(), CaptureUse::kRecorded));
  return backend_.CaptureHostNode(*stream, *origin, args.getHostFunction());
}

// Set: the stream's tips leave the dependency set, so they no longer have
// to be joined back (cuda.h).
Status Session::StreamUpdateCaptureDependencies(wire::StreamCaptureDependencies::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  StreamEntry* entry = nullptr;
  CaptureEntry* capture = CaptureOfStream(args.getStream(), &entry);
  if (capture == nullptr) {
    return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is not capturing");
  }
  if (capture->invalidated) {
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                        "the stream's capture was invalidated by an earlier call");
  }
  std::vector<backend::GraphNode*> dependencies;
  FERRY_RETURN_IF_ERROR(
      GraphNodeDependencies(entry->capture, args.getDependencies(), &dependencies));
  FERRY_RETURN_IF_ERROR(backend_.UpdateCaptureDependencies(*stream, dependencies, args.getSet()));
  if (args.getSet()) {
    for (uint64_t tip : entry->capture_tips) capture->leaves.erase(tip);
    entry->capture_tips.clear();
  }
  return Status::Ok();
}

// Each gate's gateReached reports, as a hostGate's does, the launch's own
// failure if any, else the error latched in the session when it was queued.
Status Session::GraphLaunchHostNodes(wire::GraphLaunch::Reader args, CallContext& cx) {
  const uint64_t seq = cx.seq;
  auto refuse = [&](Status status) {
    SendGateReached(seq, status, /*held=*/false, /*stream_failed=*/false,
                    wire::ALL_GATES_OF_THE_CALL);
    return status;
  };
  if (cx.wants_reply) {
    return refuse(Status::InvalidArgument(
        "a graphLaunchHostNodes call must not want a reply: its host gates are answered"));
  }
  // Checked before any gate is made: the count comes from the client.
  GraphExecEntry* exec = nullptr;
  Status status = graph_execs_.Find(args.getExec(), &exec);
  uint32_t host_nodes = 0;
  if (status.ok()) status = backend_.GraphExecHostNodes(*exec->exec, &host_nodes);
  if (status.ok() && (host_nodes == 0 || host_nodes != args.getHostNodes())) {
    status = Status::InvalidArgument("the executable graph has " + std::to_string(host_nodes) +
                                     " host nodes; the launch names " +
                                     std::to_string(args.getHostNodes()));
  }
  if (status.ok()) status = StartHelper();
  if (!status.ok()) return refuse(status);

  std::vector<backend::GraphHostCall> calls(host_nodes);
  const Status latched = latched_error_;
  for (uint32_t i = 0; i < host_nodes && status.ok(); ++i) {
    calls[i].gate = std::make_shared<backend::HostGate>();
    status = RegisterGate({seq, i}, calls[i].gate);
    if (!status.ok()) {
      calls.resize(i);  // the gates registered so far
      break;
    }
    calls[i].reached = [this, seq, i, latched](uint64_t host_function, Status launch_status,
                                               bool held) {
      if (!held) UnregisterGate({seq, i});
      const bool failed = !launch_status.ok() || !held;
      SendGateReached(seq, launch_status.ok() ? latched : launch_status, held, failed, i,
                      host_function);
      CompletionDone();
    };
    CompletionStarted();
  }
  if (status.ok()) status = LaunchGraphExec(args, calls);
  if (!status.ok()) {
    // The backend took none of the calls: their gates go, open.
    for (uint32_t i = 0; i < calls.size(); ++i) {
      UnregisterGate({seq, i});
      calls[i].gate->Open();
      if (calls[i].reached) CompletionDone();
    }
    return refuse(status);
  }
  return Status::Ok();
}

// --- a child-graph node's graph -----------------------------------------------

// The graph the node runs is the backend's copy of the child (the node owns
// it); its named nodes are the child's as they were when the node was added.
// Its uses start as the node's (the child's then); a named node's new work
// adds its own, so a launch checks everything the node may still use.
Status Session::GraphChildGraphNodeGetGraph(wire::GraphChildGraph::Reader args) {
  GraphNodeEntry* node = nullptr;
  FERRY_RETURN_IF_ERROR(graph_nodes_.Find(args.getNode(), &node));
  if (node->kind != wire::GraphAddNode::CHILD_GRAPH) {
    return Status::InvalidArgument("not a child-graph node");
  }
  if (node->embedded_graph != 0) {
    return Status::InvalidArgument("the node's graph has an id already");
  }
  FERRY_RETURN_IF_ERROR(graphs_.CheckNewId(args.getGraph()));
  auto ids = args.getNodes();
  std::set<uint64_t> unique;
  for (uint64_t id : ids) {
    FERRY_RETURN_IF_ERROR(graph_nodes_.CheckNewId(id));
    if (!unique.insert(id).second) return Status::InvalidArgument("a node id is named twice");
  }
  GraphEntry* parent = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(node->graph, &parent));
  GraphEntry embedded;
  std::vector<backend::GraphNode*> nodes;
  FERRY_RETURN_IF_ERROR(
      backend_.EmbeddedGraph(*parent->graph, *node->node, &embedded.graph, &nodes));
  const std::vector<GraphNodeEntry> no_nodes;
  const std::vector<GraphNodeEntry>& child_nodes =
      node->child_nodes != nullptr ? *node->child_nodes : no_nodes;
  if (ids.size() != 0 && (ids.size() != nodes.size() || ids.size() != child_nodes.size())) {
    return Status::InvalidArgument("the node's graph has " + std::to_string(nodes.size()) +
                                   " nodes; the call names " + std::to_string(ids.size()));
  }
  embedded.ctx = node->ctx != 0 ? node->ctx : parent->ctx;
  embedded.uses = std::make_shared<const GraphUses>(node->uses);
  embedded.embedded_in = args.getNode();
  for (unsigned i = 0; i < ids.size(); ++i) {
    GraphNodeEntry entry = child_nodes[i];
    entry.node = nodes[i];
    entry.graph = args.getGraph();
    entry.uses = {};  // the graph's uses hold them
    entry.embedded_graph = 0;
    embedded.nodes.push_back(ids[i]);
    FERRY_RETURN_IF_ERROR(graph_nodes_.Insert(ids[i], std::move(entry)));
  }
  node->embedded_graph = args.getGraph();
  return graphs_.Insert(args.getGraph(), std::move(embedded));
}

void Session::ForgetEmbeddedGraph(uint64_t graph_id) {
  GraphEntry* graph = nullptr;
  if (!graphs_.Find(graph_id, &graph).ok()) return;
  for (uint64_t id : graph->nodes) {
    GraphNodeEntry* node = nullptr;
    if (graph_nodes_.Find(id, &node).ok() && node->embedded_graph != 0) {
      ForgetEmbeddedGraph(node->embedded_graph);
    }
    (void)graph_nodes_.Erase(id);
  }
  // Executable graphs made from it live on; its node ids name nothing now.
  graph_execs_.ForEach([graph_id](uint64_t, GraphExecEntry& exec) {
    if (exec.graph == graph_id) exec.graph = 0;
  });
  (void)graphs_.Erase(graph_id);
}

Status Session::CheckEmbeddedGraphTakes(const GraphEntry& graph, const char* kind, bool memory) {
  if (graph.embedded_in == 0) return Status::Ok();
  const std::string why = std::string("a child-graph node's graph cannot take ") + kind;
  return memory ? Status::InvalidArgument(why) : Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, why);
}

}  // namespace ferry::server
