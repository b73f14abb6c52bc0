// Session handlers for stream capture and graphs. A capture runs where the
// work runs: the backend records what is queued on a capturing stream; the
// session keeps the capture's rules (CaptureGuard: what a capturing stream
// refuses, invalidation) and the device ranges the recorded work touches,
// which every launch of the graph checks again (README.md invariant 6), so a
// graph whose memory was freed since is refused instead of replayed.

#include <cuda.h>

#include "server/session.h"

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

namespace ferry::server {

Session::CaptureEntry* Session::CaptureOfStream(uint64_t stream, StreamEntry** entry) {
  if (captures_.empty() || stream == 0) return nullptr;
  StreamEntry* s = nullptr;
  if (!streams_.Find(stream, &s).ok() || s->capture == 0) return nullptr;
  auto it = captures_.find(s->capture);
  if (it == captures_.end()) return nullptr;
  if (entry != nullptr) *entry = s;
  return &it->second;
}

Status Session::CaptureGuard(uint64_t stream, CaptureUse use,
                             std::initializer_list<DeviceRange> ranges, uint64_t module) {
  StreamEntry* entry = nullptr;
  CaptureEntry* capture = CaptureOfStream(stream, &entry);
  if (capture == nullptr) return Status::Ok();
  if (capture->invalidated) {
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                        "the stream's capture was invalidated by an earlier call");
  }
  if (use == CaptureUse::kRecorded) {
    capture->uses.ranges.insert(capture->uses.ranges.end(), ranges.begin(), ranges.end());
    if (module != 0) capture->uses.modules.push_back(module);
    // A new node after the stream's tips: they are no longer leaves.
    const uint64_t node = ++capture->nodes;
    for (uint64_t tip : entry->capture_tips) capture->leaves.erase(tip);
    capture->leaves.insert(node);
    entry->capture_tips.assign(1, node);
    return Status::Ok();
  }
  capture->invalidated = true;
  const char* why = "the stream is capturing: it cannot be synchronized or queried";
  if (use == CaptureUse::kHostMemory) {
    why =
        "the stream is capturing: copies to or from host memory, stream callbacks "
        "(cuStreamAddCallback) and launches of graphs with host nodes cannot be captured "
        "through ferry";
  } else if (use == CaptureUse::kNotRecorded) {
    why =
        "the stream is capturing: stream-ordered allocation, stream memory operations, copies "
        "to or from CUDA arrays and 3D copies cannot be captured through ferry";
  }
  return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, why);
}

Status Session::CaptureGuardContext(uint64_t ctx) {
  bool any = false;
  for (auto& [id, capture] : captures_) {
    if (capture.ctx != ctx) continue;
    capture.invalidated = true;
    any = true;
  }
  if (!any) return Status::Ok();
  return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                      "a stream of the context is capturing: the context cannot be synchronized");
}

Status Session::EndCaptureOf(uint64_t capture_id, std::unique_ptr<backend::Graph>* graph) {
  graph->reset();
  auto it = captures_.find(capture_id);
  if (it == captures_.end()) return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "no such capture");
  CaptureEntry capture = std::move(it->second);
  captures_.erase(it);
  // The backend ends the capture on its origin, which releases the streams
  // joined to it (as the driver does); the session's records follow.
  StreamEntry* origin = nullptr;
  Status status = Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the capture's origin stream is gone");
  for (uint64_t id : capture.streams) {
    StreamEntry* s = nullptr;
    if (!streams_.Find(id, &s).ok() || s->capture != capture_id) continue;
    s->capture = 0;
    s->capture_tips.clear();
    if (id == capture.origin) origin = s;
  }
  if (origin != nullptr) status = backend_.EndCapture(*origin->stream, graph);
  GraphEntry* target = nullptr;
  if (capture.to_graph && graphs_.Find(capture_id, &target).ok()) {
    // graphhost: the backend added what it recorded to the graph, whatever
    // the answer (and however the capture ended): its uses are the graph's.
    GraphUses all = *target->uses;
    all.Add(capture.uses);
    target->uses = std::make_shared<const GraphUses>(std::move(all));
    target->ctx = capture.ctx;
  }
  return status;
}

// The client forgets the whole capture whatever the end answers (but
// UNMATCHED, which a latched error never is), so the whole capture ends.
void Session::AbandonCaptureOf(wire::StreamRef::Reader args) {
  StreamEntry* entry = nullptr;
  if (CaptureOfStream(args.getStream(), &entry) == nullptr || entry->ctx != args.getCtx()) return;
  std::unique_ptr<backend::Graph> discarded;
  (void)EndCaptureOf(entry->capture, &discarded);
}

void Session::NoteCaptureEventRecord(uint64_t stream, EventEntry& event) {
  StreamEntry* entry = nullptr;
  CaptureEntry* capture = CaptureOfStream(stream, &entry);
  event.capture = capture != nullptr ? entry->capture : 0;
  event.capture_tips = capture != nullptr ? entry->capture_tips : CaptureNodes{};
  event.recorded_outside = capture == nullptr;
}

Status Session::CaptureStreamWaitEvent(uint64_t ctx, uint64_t stream, EventEntry& event) {
  StreamEntry* entry = nullptr;
  CaptureEntry* capture = CaptureOfStream(stream, &entry);
  const bool capture_event = event.capture != 0 && captures_.count(event.capture) != 0;
  if (capture == nullptr) {
    if (!capture_event) return Status::Ok();  // an ordinary wait
    // Fork: the stream joins the event's capture after the event's tips.
    CaptureEntry& joined = captures_.at(event.capture);
    if (stream == 0 || joined.ctx != ctx) {
      joined.invalidated = true;
      return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_ISOLATION,
                          "only a created stream of the capture's context can join a capture");
    }
    if (joined.invalidated) {
      return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                          "the event's capture was invalidated by an earlier call");
    }
    FERRY_RETURN_IF_ERROR(streams_.Find(stream, &entry));
    entry->capture = event.capture;
    entry->capture_tips = event.capture_tips;
    joined.streams.insert(stream);
    return Status::Ok();
  }
  if (capture->invalidated) {
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                        "the stream's capture was invalidated by an earlier call");
  }
  if (capture_event && event.capture != entry->capture) {
    capture->invalidated = true;
    captures_.at(event.capture).invalidated = true;
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_MERGE,
                        "the event was recorded in another capture: the two would merge");
  }
  if (!capture_event) {
    if (!event.recorded_outside) return Status::Ok();  // never recorded: nothing to wait for
    capture->invalidated = true;
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_ISOLATION,
                        "a capturing stream cannot wait for an event recorded outside the capture");
  }
  // Join: the stream's next work also depends on the event's tips.
  for (uint64_t tip : event.capture_tips) {
    if (std::find(entry->capture_tips.begin(), entry->capture_tips.end(), tip) ==
        entry->capture_tips.end()) {
      entry->capture_tips.push_back(tip);
    }
  }
  return Status::Ok();
}

void Session::DestroyContextGraphs(uint64_t ctx) {
  std::vector<uint64_t> ended;
  for (const auto& [id, capture] : captures_) {
    if (capture.ctx == ctx) ended.push_back(id);
  }
  for (uint64_t id : ended) {
    std::unique_ptr<backend::Graph> discarded;
    (void)EndCaptureOf(id, &discarded);
  }
  auto in_ctx = [ctx](uint64_t, const auto& entry) { return entry.ctx == ctx; };
  graph_execs_.ForEach([&](uint64_t, GraphExecEntry& exec) {
    if (exec.ctx == ctx) ForgetGraphExecMemory(exec);
  });
  graph_execs_.EraseIf(in_ctx);
  graph_nodes_.EraseIf([this, ctx](uint64_t, const GraphNodeEntry& n) {
    GraphEntry* g = nullptr;
    return graphs_.Find(n.graph, &g).ok() && g->ctx == ctx;
  });
  graphs_.EraseIf(in_ctx);
}

Status Session::StreamBeginCapture(wire::StreamBeginCapture::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  if (args.getStream() == 0) {
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                        "the legacy default stream cannot be captured");
  }
  StreamEntry* entry = nullptr;
  FERRY_RETURN_IF_ERROR(streams_.Find(args.getStream(), &entry));
  if (entry->capture != 0) {
    return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is capturing already");
  }
  if (captures_.count(args.getGraph()) != 0) {
    return Status::InvalidArgument("graph id " + std::to_string(args.getGraph()) +
                                   " is in use by another capture");
  }
  if (args.getToGraph()) {
    // graphhost: into an existing graph, after some of its nodes.
    GraphEntry* graph = nullptr;
    FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
    if (graph->ctx != 0 && graph->ctx != args.getCtx()) {
      return Status::InvalidArgument("a graph's nodes must belong to one context");
    }
    FERRY_RETURN_IF_ERROR(CheckGraphWithoutMemoryNodes(*graph, "capturing into a graph"));
    std::vector<backend::GraphNode*> dependencies;
    FERRY_RETURN_IF_ERROR(
        GraphNodeDependencies(args.getGraph(), args.getDependencies(), &dependencies));
    FERRY_RETURN_IF_ERROR(backend_.BeginCaptureToGraph(*stream, static_cast<int>(args.getMode()),
                                                       *graph->graph, dependencies));
  } else {
    FERRY_RETURN_IF_ERROR(graphs_.CheckNewId(args.getGraph()));
    FERRY_RETURN_IF_ERROR(backend_.BeginCapture(*stream, static_cast<int>(args.getMode())));
  }
  CaptureEntry capture;
  capture.to_graph = args.getToGraph();
  capture.ctx = args.getCtx();
  capture.origin = args.getStream();
  capture.streams.insert(args.getStream());
  captures_.emplace(args.getGraph(), std::move(capture));
  entry->capture = args.getGraph();
  entry->capture_tips.clear();
  return Status::Ok();
}

// The driver's order of checks: the capture must be this stream's own
// (UNMATCHED otherwise, the capture going on, invalidated); then, ending it
// whatever happens, an invalidated capture and a fork not joined back into
// the origin (UNJOINED) make no graph.
Status Session::StreamEndCapture(wire::StreamRef::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  StreamEntry* entry = nullptr;
  CaptureEntry* capture = CaptureOfStream(args.getStream(), &entry);
  if (capture == nullptr) {
    return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is not capturing");
  }
  if (capture->origin != args.getStream()) {
    capture->invalidated = true;
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED,
                        "the stream joined a capture begun on another stream; only that stream "
                        "can end it");
  }
  const uint64_t graph_id = entry->capture;
  const bool invalidated = capture->invalidated;
  const CaptureNodes origin_tips = entry->capture_tips;
  bool joined = true;
  for (uint64_t leaf : capture->leaves) {
    if (std::find(origin_tips.begin(), origin_tips.end(), leaf) == origin_tips.end())
      joined = false;
  }
  const bool to_graph = capture->to_graph;
  // Into an existing graph, EndCaptureOf gives it the capture's uses.
  GraphUses uses = to_graph ? GraphUses{} : std::move(capture->uses);
  GraphEntry graph;
  std::unique_ptr<backend::Graph> captured;
  FERRY_RETURN_IF_ERROR(EndCaptureOf(graph_id, &captured));
  graph.graph = std::move(captured);
  if (invalidated) {
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                        "the capture was invalidated by an earlier call; no graph was made");
  }
  if (!joined) {
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNJOINED,
                        "work forked into another stream during the capture was not joined back "
                        "into the capturing stream; no graph was made");
  }
  if (to_graph) return Status::Ok();
  graph.ctx = args.getCtx();
  graph.uses = std::make_shared<GraphUses>(std::move(uses));
  return graphs_.Insert(graph_id, std::move(graph));
}

Status Session::StreamCaptureStatus(wire::StreamRef::Reader args, CallContext& cx) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  const CaptureEntry* capture = CaptureOfStream(args.getStream());
  int64_t status = CU_STREAM_CAPTURE_STATUS_NONE;
  if (capture != nullptr) {
    status = capture->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                  : CU_STREAM_CAPTURE_STATUS_ACTIVE;
  }
  cx.reply.setValue(status);
  return Status::Ok();
}

Status Session::GraphCreate(wire::GraphCreate::Reader args) {
  FERRY_RETURN_IF_ERROR(graphs_.CheckNewId(args.getGraph()));
  GraphEntry entry;
  std::unique_ptr<backend::Graph> created;
  FERRY_RETURN_IF_ERROR(backend_.CreateGraph(args.getFlags(), &created));
  entry.graph = std::move(created);
  entry.uses = std::make_shared<GraphUses>();
  return graphs_.Insert(args.getGraph(), std::move(entry));
}

Status Session::GraphDestroy(wire::GraphRef::Reader args) {
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
  if (graph->embedded_in != 0) {
    return Status::InvalidArgument("a child-graph node's graph belongs to its node");
  }
  if (captures_.count(args.getGraph()) != 0) {
    return Status::InvalidArgument("a capture builds the graph (cuStreamBeginCaptureToGraph)");
  }
  for (uint64_t id : graph->nodes) {
    GraphNodeEntry* node = nullptr;
    if (graph_nodes_.Find(id, &node).ok() && node->embedded_graph != 0) {
      ForgetEmbeddedGraph(node->embedded_graph);
    }
  }
  FERRY_RETURN_IF_ERROR(graphs_.Erase(args.getGraph()));
  graph_nodes_.EraseIf(
      [graph = args.getGraph()](uint64_t, const GraphNodeEntry& n) { return n.graph == graph; });
  // Executable graphs made from it live on, but no node of theirs can be
  // named any more: a later graph that reuses the id must not reach them.
  graph_execs_.ForEach([graph = args.getGraph()](uint64_t, GraphExecEntry& exec) {
    if (exec.graph == graph) exec.graph = 0;
  });
  return Status::Ok();
}

Status Session::GraphAddNode(wire::GraphAddNode::Reader args, CallContext& cx) {
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
  std::vector<backend::GraphNode*> dependencies;
  FERRY_RETURN_IF_ERROR(NewGraphNodeDependencies(args.getGraph(), args.getNode(),
                                                 args.getDependencies(), &dependencies));
  NodeWorkArgs work_args;
  work_args.kind = args.which();
  switch (args.which()) {
    case wire::GraphAddNode::EMPTY:
      break;
    case wire::GraphAddNode::KERNEL:
      work_args.kernel = args.getKernel();
      break;
    case wire::GraphAddNode::MEMSET:
      work_args.memset = args.getMemset();
      break;
    case wire::GraphAddNode::MEMCPY:
      work_args.memcpy = args.getMemcpy();
      break;
    case wire::GraphAddNode::CHILD_GRAPH:
      work_args.child = args.getChildGraph();
      break;
    case wire::GraphAddNode::HOST:
      work_args.host = args.getHost();
      break;
    default:
      return Status::InvalidArgument("unknown graph node kind");
  }
  NodeWork work;
  FERRY_RETURN_IF_ERROR(NodeWorkOf(work_args, *graph, cx.bulk_in, &work));
  if (work.ctx != 0 && graph->ctx != 0 && graph->ctx != work.ctx) {
    return Status::InvalidArgument("a graph's nodes must belong to one context");
  }
  if (args.which() == wire::GraphAddNode::HOST) {
    FERRY_RETURN_IF_ERROR(CheckEmbeddedGraphTakes(*graph, "host nodes", /*memory=*/false));
  }
  backend::GraphNode* node = nullptr;
  FERRY_RETURN_IF_ERROR(backend_.AddGraphNode(*graph->graph, dependencies, work.spec, &node));
  if (work.ctx != 0) graph->ctx = work.ctx;
  graph->nodes.push_back(args.getNode());
  GraphNodeEntry entry;
  entry.node = node;
  entry.graph = args.getGraph();
  entry.kind = args.which();
  entry.ctx = work.ctx;
  entry.uses = std::move(work.uses);
  if (args.which() == wire::GraphAddNode::CHILD_GRAPH) {
    // The node's own graph is a copy of the child as it is now.
    GraphEntry* child = nullptr;
    auto nodes = std::make_shared<std::vector<GraphNodeEntry>>();
    if (graphs_.Find(args.getChildGraph(), &child).ok()) {
      for (uint64_t id : child->nodes) {
        GraphNodeEntry* n = nullptr;
        if (graph_nodes_.Find(id, &n).ok()) nodes->push_back(*n);
      }
    }
    entry.child_nodes = std::move(nodes);
  }
  return graph_nodes_.Insert(args.getNode(), std::move(entry));
}

Status Session::NodeWorkOf(const NodeWorkArgs& args, const GraphEntry& graph,
                           const backend::HostBytes& bulk, NodeWork* work) {
  backend::GraphNodeSpec& spec = work->spec;
  GraphUses& uses = work->uses;
  uint64_t ctx = 0;
  switch (args.kind) {
    case wire::GraphAddNode::EMPTY:
      break;
    case wire::GraphAddNode::KERNEL: {
      ctx = args.kernel.getCtx();
      uint64_t module = 0;
      FERRY_RETURN_IF_ERROR(KernelNodeSpec(args.kernel, bulk, &spec, &module));
      uses.modules.push_back(module);
      break;
    }
    case wire::GraphAddNode::MEMSET: {
      auto m = args.memset;
      ctx = m.getCtx();
      const unsigned element = m.getElementBytes();
      if (element != 1 && element != 2 && element != 4) {
        return Status::InvalidArgument("memset element size must be 1, 2 or 4");
      }
      const uint64_t width = m.getWidth();
      const uint64_t height = m.getHeight() == 0 ? 1 : m.getHeight();
      if (width == 0 || width > std::numeric_limits<uint64_t>::max() / element) {
        return Status::InvalidArgument("memset node extent is empty or overflows");
      }
      const uint64_t pitch = height == 1 ? width * element : m.getPitch();
      FERRY_RETURN_IF_ERROR(
          CheckGraphNodeRange2D(graph, m.getDst(), pitch, width * element, height, "memset"));
      uses.ranges.push_back({m.getDst(), (height - 1) * pitch + width * element});
      spec.kind = backend::GraphNodeSpec::Kind::kMemset;
      spec.dst = m.getDst();
      spec.pitch = pitch;
      spec.value = m.getValue();
      spec.element_bytes = element;
      spec.width = width;
      spec.height = height;
      break;
    }
    case wire::GraphAddNode::MEMCPY: {
      auto m = args.memcpy;
      ctx = m.getCtx();
      if (m.getBytes() == 0) return Status::InvalidArgument("empty memcpy node");
      FERRY_RETURN_IF_ERROR(CheckGraphNodeRange(graph, m.getSrc(), m.getBytes(), "source"));
      FERRY_RETURN_IF_ERROR(CheckGraphNodeRange(graph, m.getDst(), m.getBytes(), "destination"));
      uses.ranges.push_back({m.getSrc(), m.getBytes()});
      uses.ranges.push_back({m.getDst(), m.getBytes()});
      spec.kind = backend::GraphNodeSpec::Kind::kCopy;
      spec.dst = m.getDst();
      spec.src = m.getSrc();
      spec.bytes = m.getBytes();
      break;
    }
    case wire::GraphAddNode::CHILD_GRAPH: {
      GraphEntry* child = nullptr;
      FERRY_RETURN_IF_ERROR(graphs_.Find(args.child, &child));
      if (child == &graph) return Status::InvalidArgument("a graph cannot be its own child");
      if (!child->mem.empty()) {
        return Status::InvalidArgument("a child graph cannot have memory allocation or free nodes");
      }
      if (!child->events.empty()) {
        return Status::Unimplemented("child graphs with event record or wait nodes");
      }
      ctx = child->ctx;
      uses = UsesOfGraph(*child);
      spec.kind = backend::GraphNodeSpec::Kind::kChild;
      spec.child = child->graph.get();
      break;
    }
    case wire::GraphAddNode::HOST:
      // graph host nodes: the function is the client's; it touches no range.
      if (args.host == 0) return Status::InvalidArgument("a host node needs a host function id");
      spec.kind = backend::GraphNodeSpec::Kind::kHost;
      spec.host_function = args.host;
      break;
    default:
      return Status::InvalidArgument("unknown graph node kind");
  }
  if (ctx != 0) {
    ContextEntry* c = nullptr;
    FERRY_RETURN_IF_ERROR(contexts_.Find(ctx, &c));
    spec.ctx = c->context.get();
  }
  work->ctx = ctx;
  return Status::Ok();
}

Session::GraphUses Session::UsesOfGraph(const GraphEntry& graph) {
  GraphUses all = graph.uses != nullptr ? *graph.uses : GraphUses{};
  for (uint64_t id : graph.nodes) {
    GraphNodeEntry* node = nullptr;
    if (!graph_nodes_.Find(id, &node).ok()) continue;
    GraphEntry* embedded = nullptr;
    if (node->embedded_graph != 0 && graphs_.Find(node->embedded_graph, &embedded).ok()) {
      all.Add(UsesOfGraph(*embedded));
    } else {
      all.Add(node->uses);
    }
  }
  return all;
}

void Session::RefreshExecUses(GraphExecEntry& exec) {
  GraphUses all = exec.base;
  for (const auto& [node, uses] : exec.node_uses) all.Add(uses);
  exec.uses = ExecUses(all);
}

Status Session::NewGraphNodeDependencies(uint64_t graph, uint64_t node,
                                         capnp::List<uint64_t>::Reader ids,
                                         std::vector<backend::GraphNode*>* dependencies) {
  FERRY_RETURN_IF_ERROR(graph_nodes_.CheckNewId(node));
  return GraphNodeDependencies(graph, ids, dependencies);
}

Status Session::GraphNodeDependencies(uint64_t graph, capnp::List<uint64_t>::Reader ids,
                                      std::vector<backend::GraphNode*>* dependencies) {
  for (uint64_t id : ids) {
    GraphNodeEntry* dependency = nullptr;
    FERRY_RETURN_IF_ERROR(graph_nodes_.Find(id, &dependency));
    if (dependency->graph != graph) {
      return Status::InvalidArgument("dependency " + std::to_string(id) +
                                     " is not a node of graph " + std::to_string(graph));
    }
    dependencies->push_back(dependency->node);
  }
  return Status::Ok();
}

Status Session::KernelNodeSpec(wire::Launch::Reader k, const backend::HostBytes& params,
                               backend::GraphNodeSpec* spec, uint64_t* module) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(functions_.Find(k.getFunction(), &f));
  if (f->ctx != k.getCtx()) return Status::InvalidArgument("the kernel belongs to another context");
  if (params.size < f->param_bytes) {
    return Status::InvalidArgument("kernel node carried " + std::to_string(params.size) +
                                   " parameter bytes; the kernel takes " +
                                   std::to_string(f->param_bytes));
  }
  spec->kind = backend::GraphNodeSpec::Kind::kKernel;
  spec->function = f->function;
  spec->config.grid = {k.getGridX(), k.getGridY(), k.getGridZ()};
  spec->config.block = {k.getBlockX(), k.getBlockY(), k.getBlockZ()};
  spec->config.shared_bytes = k.getSharedBytes();
  spec->config.cluster = {k.getClusterX(), k.getClusterY(), k.getClusterZ()};
  spec->config.cooperative = k.getCooperative();
  for (int i = 0; i < 3; ++i) {
    if (spec->config.grid[i] == 0 || spec->config.block[i] == 0) {
      return Status::InvalidArgument("kernel node with a zero grid or block dimension");
    }
  }
  spec->params = params;
  *module = f->module;
  return Status::Ok();
}

// cuGraphExecKernelNodeSetParams as sent by earlier clients (later ones send
// graphNodeSetParams): the same path.
Status Session::GraphExecKernelNodeSetParams(wire::GraphExecKernelNode::Reader args,
                                             CallContext& cx) {
  if (args.getExec() == 0) return Status::InvalidHandle("no executable graph 0");
  GraphNodeEntry* node = nullptr;
  FERRY_RETURN_IF_ERROR(graph_nodes_.Find(args.getNode(), &node));
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(node->graph, &graph));
  NodeWorkArgs work_args;
  work_args.kind = wire::GraphAddNode::KERNEL;
  work_args.kernel = args.getKernel();
  NodeWork work;
  FERRY_RETURN_IF_ERROR(NodeWorkOf(work_args, *graph, cx.bulk_in, &work));
  return SetNodeWork(args.getExec(), args.getNode(), std::move(work));
}

Status Session::FindExecNode(const GraphExecEntry& exec, uint64_t node_id, GraphNodeEntry** node) {
  FERRY_RETURN_IF_ERROR(graph_nodes_.Find(node_id, node));
  if ((*node)->graph != exec.graph) {
    return Status::InvalidArgument(
        "the node is not a node of the graph the executable graph "
        "was instantiated from");
  }
  return Status::Ok();
}

// Kernel, memset and copy nodes can be disabled (they then do nothing).
Status Session::GraphExecNodeSetEnabled(wire::GraphExecNodeEnabled::Reader args) {
  GraphExecEntry* exec = nullptr;
  FERRY_RETURN_IF_ERROR(graph_execs_.Find(args.getExec(), &exec));
  GraphNodeEntry* node = nullptr;
  FERRY_RETURN_IF_ERROR(FindExecNode(*exec, args.getNode(), &node));
  if (node->kind != wire::GraphAddNode::KERNEL && node->kind != wire::GraphAddNode::MEMSET &&
      node->kind != wire::GraphAddNode::MEMCPY) {
    return Status::InvalidArgument("only kernel, memset and memcpy nodes can be disabled");
  }
  if (node->ctx != 0) {
    ContextEntry* c = nullptr;
    FERRY_RETURN_IF_ERROR(contexts_.Find(node->ctx, &c));
  }
  return backend_.SetExecNodeEnabled(*exec->exec, *node->node, args.getEnabled());
}

Status Session::StreamCaptureInvalidate(wire::StreamRef::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  if (CaptureEntry* capture = CaptureOfStream(args.getStream()); capture != nullptr) {
    capture->invalidated = true;
  }
  return Status::Ok();
}

// With node ids for the copies (graphedit), the clone's explicitly added
// nodes are named and carry their own uses, as the original's; without, all
// of the original's uses are the clone's base.
Status Session::GraphClone(wire::GraphClone::Reader args) {
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
  FERRY_RETURN_IF_ERROR(graphs_.CheckNewId(args.getClone()));
  FERRY_RETURN_IF_ERROR(CheckGraphWithoutMemoryNodes(*graph, "cloning a graph"));
  auto originals = args.getOriginals();
  auto copies = args.getCopies();
  const bool named = copies.size() != 0;
  if (originals.size() != copies.size() || (named && copies.size() != graph->nodes.size())) {
    return Status::InvalidArgument("a clone names a copy for each of the graph's nodes, or none");
  }
  std::map<uint64_t, uint64_t> copy_of;  // original node id -> copy id
  std::set<uint64_t> copy_ids;
  for (unsigned i = 0; i < copies.size(); ++i) {
    FERRY_RETURN_IF_ERROR(graph_nodes_.CheckNewId(copies[i]));
    if (!copy_of.emplace(originals[i], copies[i]).second || !copy_ids.insert(copies[i]).second) {
      return Status::InvalidArgument("a node or a copy id is named twice");
    }
  }
  GraphEntry clone;
  std::unique_ptr<backend::Graph> cloned;
  FERRY_RETURN_IF_ERROR(backend_.CloneGraph(*graph->graph, &cloned));
  clone.graph = std::move(cloned);
  clone.ctx = graph->ctx;
  std::vector<std::pair<uint64_t, GraphNodeEntry>> nodes;
  for (uint64_t id : named ? graph->nodes : std::vector<uint64_t>{}) {
    auto copy = copy_of.find(id);
    GraphNodeEntry* original = nullptr;
    if (copy == copy_of.end() || !graph_nodes_.Find(id, &original).ok()) {
      return Status::InvalidArgument("node " + std::to_string(id) + " of the graph has no copy");
    }
    GraphNodeEntry entry = *original;
    entry.graph = args.getClone();
    entry.embedded_graph = 0;  // the copy's own graph has no id yet
    FERRY_RETURN_IF_ERROR(
        backend_.FindGraphNodeInClone(*graph->graph, *original->node, *clone.graph, &entry.node));
    nodes.emplace_back(copy->second, std::move(entry));
  }
  if (named) {
    clone.uses = graph->uses;
    for (auto& [id, entry] : nodes) {
      clone.nodes.push_back(id);
      FERRY_RETURN_IF_ERROR(graph_nodes_.Insert(id, std::move(entry)));
    }
  } else {
    // The clone's nodes have no ids: all of the original's uses are its base.
    clone.uses =
        graph->nodes.empty() ? graph->uses : std::make_shared<const GraphUses>(UsesOfGraph(*graph));
  }
  // graph node kinds: the same memory nodes; event nodes by their copies' ids.
  clone.mem = graph->mem;
  for (const auto& [id, event] : graph->events) {
    auto copy = copy_of.find(id);
    clone.events[copy != copy_of.end() ? copy->second : id] = event;
  }
  return graphs_.Insert(args.getClone(), std::move(clone));
}

Status Session::GraphInstantiate(wire::GraphInstantiate::Reader args) {
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
  FERRY_RETURN_IF_ERROR(graph_execs_.CheckNewId(args.getExec()));
  FERRY_RETURN_IF_ERROR(CheckGraphMemory(*graph));
  GraphExecEntry entry;
  FERRY_RETURN_IF_ERROR(backend_.InstantiateGraph(*graph->graph, args.getFlags(), &entry.exec));
  entry.graph = args.getGraph();
  entry.ctx = graph->ctx;
  entry.base = *graph->uses;
  entry.node_ids = graph->nodes;
  for (uint64_t id : graph->nodes) {
    GraphNodeEntry* node = nullptr;
    if (graph_nodes_.Find(id, &node).ok()) entry.node_uses[id] = node->uses;
  }
  RefreshExecUses(entry);
  entry.auto_free = (args.getFlags() & CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH) != 0;
  FERRY_RETURN_IF_ERROR(backend_.GraphNodeCount(*graph->graph, &entry.nodes));
  FERRY_RETURN_IF_ERROR(HoldGraphMemory(*graph, entry));
  return graph_execs_.Insert(args.getExec(), std::move(entry));
}

// Each launch checks every use: keep each range and module once.
std::shared_ptr<const Session::GraphUses> Session::ExecUses(const GraphUses& graph_uses) {
  auto uses = std::make_shared<GraphUses>(graph_uses);
  std::sort(uses->modules.begin(), uses->modules.end());
  uses->modules.erase(std::unique(uses->modules.begin(), uses->modules.end()), uses->modules.end());
  std::sort(uses->ranges.begin(), uses->ranges.end());
  uses->ranges.erase(std::unique(uses->ranges.begin(), uses->ranges.end()), uses->ranges.end());
  return uses;
}

// The client compared the two graphs' structure (it records it); the server
// checks what keeps the backends sound whatever a client sends: as many
// nodes (the host backend replaces node by node) and no move to another
// context. The new nodes were checked when they were added. The executable
// graph keeps its node ids (those of the graph it was instantiated from) and
// takes the new graph's uses: its old nodes' work no longer runs.
Status Session::GraphExecUpdate(wire::GraphExecUpdate::Reader args) {
  GraphExecEntry* exec = nullptr;
  FERRY_RETURN_IF_ERROR(graph_execs_.Find(args.getExec(), &exec));
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
  uint64_t graph_nodes = 0;
  FERRY_RETURN_IF_ERROR(backend_.GraphNodeCount(*graph->graph, &graph_nodes));
  if (graph_nodes != exec->nodes) {
    return Status::Cuda(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE,
                        "the graph has " + std::to_string(graph_nodes) +
                            " nodes; the executable graph " + std::to_string(exec->nodes));
  }
  if (!graph->mem.empty() || !exec->mem.empty() || !graph->events.empty() ||
      !exec->events.empty()) {
    return Status::Cuda(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE,
                        "graphs with memory allocation, free or event nodes cannot be updated");
  }
  if (graph->ctx != 0 && exec->ctx != 0 && graph->ctx != exec->ctx) {
    return Status::Cuda(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE,
                        "the graph's work belongs to another context than the executable graph's");
  }
  FERRY_RETURN_IF_ERROR(backend_.UpdateGraphExec(*exec->exec, *graph->graph));
  if (exec->ctx == 0) exec->ctx = graph->ctx;
  // The executable graph keeps its node ids; the new graph's nodes take
  // their places in the order added (as the update pairs them).
  exec->node_uses.clear();
  if (graph->nodes.size() == exec->node_ids.size()) {
    exec->base = *graph->uses;
    for (size_t i = 0; i < graph->nodes.size(); ++i) {
      GraphNodeEntry* node = nullptr;
      if (graph_nodes_.Find(graph->nodes[i], &node).ok()) {
        exec->node_uses[exec->node_ids[i]] = node->uses;
      }
    }
  } else {
    exec->base = UsesOfGraph(*graph);
  }
  RefreshExecUses(*exec);
  return Status::Ok();
}

Status Session::GraphExecDestroy(wire::GraphExecRef::Reader args) {
  GraphExecEntry* exec = nullptr;
  FERRY_RETURN_IF_ERROR(graph_execs_.Find(args.getExec(), &exec));
  ForgetGraphExecMemory(*exec);
  return graph_execs_.Erase(args.getExec());
}

Status Session::CheckGraphExec(const GraphExecEntry& exec, uint64_t stream_ctx) {
  if (exec.ctx != 0 && exec.ctx != stream_ctx) {
    return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT,
                        "the graph's work belongs to another context than the stream");
  }
  for (const DeviceRange& range : exec.uses->ranges) {
    FERRY_RETURN_IF_ERROR(CheckRange(range.first, range.second, "graph node"));
  }
  for (uint64_t module : exec.uses->modules) {
    if (!modules_.Contains(module)) {
      return Status::InvalidHandle("the graph runs a kernel of module " + std::to_string(module) +
                                   ", which was unloaded");
    }
  }
  return Status::Ok();
}

Status Session::GraphLaunch(wire::GraphLaunch::Reader args) { return LaunchGraphExec(args, {}); }

Status Session::LaunchGraphExec(wire::GraphLaunch::Reader args,
                                std::span<const backend::GraphHostCall> host_calls) {
  GraphExecEntry* exec = nullptr;
  FERRY_RETURN_IF_ERROR(graph_execs_.Find(args.getExec(), &exec));
  backend::Stream* stream = nullptr;
  // FindStream checked that the stream is one of args.ctx's.
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  FERRY_RETURN_IF_ERROR(CheckGraphExec(*exec, args.getCtx()));
  uint32_t host_nodes = 0;
  FERRY_RETURN_IF_ERROR(backend_.GraphExecHostNodes(*exec->exec, &host_nodes));
  if (host_nodes != host_calls.size()) {
    return Status::InvalidArgument(
        "the executable graph has " + std::to_string(host_nodes) +
        " host nodes; its launch must carry as many host gates (graphLaunchHostNodes), not " +
        std::to_string(host_calls.size()));
  }
  // graph host nodes: a host node holds its launch's stream for a client
  // round trip, which a capture cannot record.
  FERRY_RETURN_IF_ERROR(CaptureGuard(
      args.getStream(), host_nodes != 0 ? CaptureUse::kHostMemory : CaptureUse::kRecorded));
  if (CaptureEntry* capture = CaptureOfStream(args.getStream()); capture != nullptr) {
    capture->uses.Add(*exec->uses);
  }
  FERRY_RETURN_IF_ERROR(CheckGraphMemoryLaunch(*exec));
  FERRY_RETURN_IF_ERROR(CheckGraphEventsLaunch(*exec, args.getStream()));
  // A graph launch is a launch: a throttled device's share applies to it.
  FERRY_RETURN_IF_ERROR(LaunchUnderShare(args.getCtx(), *stream, [&] {
    return backend_.LaunchGraph(*exec->exec, *stream, host_calls);
  }));
  GraphMemoryLaunched(*exec);
  GraphEventsLaunched(*exec);
  return Status::Ok();
}

Status Session::GraphUpload(wire::GraphLaunch::Reader args) {
  GraphExecEntry* exec = nullptr;
  FERRY_RETURN_IF_ERROR(graph_execs_.Find(args.getExec(), &exec));
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  FERRY_RETURN_IF_ERROR(CheckGraphExec(*exec, args.getCtx()));
  FERRY_RETURN_IF_ERROR(CaptureGuard(args.getStream(), CaptureUse::kRecorded));
  return backend_.UploadGraph(*exec->exec, *stream);
}

Status Session::GraphNodeCount(wire::GraphRef::Reader args, CallContext& cx) {
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
  uint64_t count = 0;
  FERRY_RETURN_IF_ERROR(backend_.GraphNodeCount(*graph->graph, &count));
  cx.reply.setValue(static_cast<int64_t>(count));
  return Status::Ok();
}

}  // namespace ferry::server
