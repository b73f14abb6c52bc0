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

Status Session::CaptureGuard(uint64_t stream, CaptureUse use,
                             std::initializer_list<DeviceRange> ranges, uint64_t module) {
  if (captures_.empty()) return Status::Ok();
  auto it = captures_.find(stream);
  if (it == captures_.end()) return Status::Ok();
  CaptureEntry& capture = it->second;
  if (capture.invalidated) {
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                        "the stream's capture was invalidated by an earlier call");
  }
  if (use == CaptureUse::kRecorded) {
    capture.uses.ranges.insert(capture.uses.ranges.end(), ranges.begin(), ranges.end());
    if (module != 0) capture.uses.modules.push_back(module);
    return Status::Ok();
  }
  capture.invalidated = true;
  const char* why = "the stream is capturing: it cannot be synchronized or queried";
  if (use == CaptureUse::kHostMemory) {
    why =
        "the stream is capturing: copies to or from host memory and host callbacks cannot be "
        "captured through ferry";
  } else if (use == CaptureUse::kNotRecorded) {
    why =
        "the stream is capturing: stream-ordered allocation, stream memory operations, copies "
        "to or from CUDA arrays and 3D copies cannot be captured through ferry";
  }
  return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, why);
}

Status Session::CaptureGuardContext(uint64_t ctx) {
  bool any = false;
  for (auto& [stream, capture] : captures_) {
    if (capture.ctx != ctx) continue;
    capture.invalidated = true;
    any = true;
  }
  if (!any) return Status::Ok();
  return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                      "a stream of the context is capturing: the context cannot be synchronized");
}

std::map<uint64_t, Session::CaptureEntry>::iterator Session::AbandonCapture(
    std::map<uint64_t, CaptureEntry>::iterator capture) {
  backend::Stream* stream = nullptr;
  std::unique_ptr<backend::Graph> discarded;
  if (FindStream(capture->second.ctx, capture->first, &stream).ok()) {
    (void)backend_.EndCapture(*stream, &discarded);
  }
  return captures_.erase(capture);
}

void Session::AbandonCaptureOf(wire::StreamRef::Reader args) {
  auto it = captures_.find(args.getStream());
  if (it != captures_.end() && it->second.ctx == args.getCtx()) AbandonCapture(it);
}

void Session::DestroyContextGraphs(uint64_t ctx) {
  for (auto it = captures_.begin(); it != captures_.end();) {
    it = it->second.ctx == ctx ? AbandonCapture(it) : std::next(it);
  }
  auto in_ctx = [ctx](uint64_t, const auto& entry) { return entry.ctx == ctx; };
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
  if (captures_.count(args.getStream()) != 0) {
    return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is capturing already");
  }
  FERRY_RETURN_IF_ERROR(graphs_.CheckNewId(args.getGraph()));
  FERRY_RETURN_IF_ERROR(backend_.BeginCapture(*stream, static_cast<int>(args.getMode())));
  CaptureEntry capture;
  capture.ctx = args.getCtx();
  capture.graph = args.getGraph();
  captures_.emplace(args.getStream(), std::move(capture));
  return Status::Ok();
}

Status Session::StreamEndCapture(wire::StreamRef::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  auto it = captures_.find(args.getStream());
  if (it == captures_.end()) {
    return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is not capturing");
  }
  CaptureEntry capture = std::move(it->second);
  captures_.erase(it);
  GraphEntry entry;
  FERRY_RETURN_IF_ERROR(backend_.EndCapture(*stream, &entry.graph));
  if (capture.invalidated) {
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                        "the capture was invalidated by an earlier call; no graph was made");
  }
  entry.ctx = capture.ctx;
  entry.uses = std::make_shared<const GraphUses>(std::move(capture.uses));
  return graphs_.Insert(capture.graph, std::move(entry));
}

Status Session::StreamCaptureStatus(wire::StreamRef::Reader args, CallContext& cx) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  auto it = captures_.find(args.getStream());
  int64_t status = CU_STREAM_CAPTURE_STATUS_NONE;
  if (it != captures_.end()) {
    status = it->second.invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                    : CU_STREAM_CAPTURE_STATUS_ACTIVE;
  }
  cx.reply.setValue(status);
  return Status::Ok();
}

Status Session::GraphCreate(wire::GraphCreate::Reader args) {
  FERRY_RETURN_IF_ERROR(graphs_.CheckNewId(args.getGraph()));
  GraphEntry entry;
  FERRY_RETURN_IF_ERROR(backend_.CreateGraph(args.getFlags(), &entry.graph));
  entry.uses = std::make_shared<const GraphUses>();
  return graphs_.Insert(args.getGraph(), std::move(entry));
}

Status Session::GraphDestroy(wire::GraphRef::Reader args) {
  FERRY_RETURN_IF_ERROR(graphs_.Erase(args.getGraph()));
  graph_nodes_.EraseIf(
      [graph = args.getGraph()](uint64_t, const GraphNodeEntry& n) { return n.graph == graph; });
  return Status::Ok();
}

Status Session::GraphAddNode(wire::GraphAddNode::Reader args, CallContext& cx) {
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
  FERRY_RETURN_IF_ERROR(graph_nodes_.CheckNewId(args.getNode()));
  std::vector<backend::GraphNode*> dependencies;
  for (uint64_t id : args.getDependencies()) {
    GraphNodeEntry* dependency = nullptr;
    FERRY_RETURN_IF_ERROR(graph_nodes_.Find(id, &dependency));
    if (dependency->graph != args.getGraph()) {
      return Status::InvalidArgument("dependency " + std::to_string(id) +
                                     " is not a node of graph " + std::to_string(args.getGraph()));
    }
    dependencies.push_back(dependency->node);
  }
  backend::GraphNodeSpec spec;
  uint64_t ctx = 0;
  GraphUses uses;  // of the new node
  switch (args.which()) {
    case wire::GraphAddNode::EMPTY:
      break;
    case wire::GraphAddNode::KERNEL: {
      auto k = args.getKernel();
      ctx = k.getCtx();
      FunctionEntry* f = nullptr;
      FERRY_RETURN_IF_ERROR(functions_.Find(k.getFunction(), &f));
      if (f->ctx != ctx) return Status::InvalidArgument("the kernel belongs to another context");
      if (cx.bulk_in.size < f->param_bytes) {
        return Status::InvalidArgument("kernel node carried " + std::to_string(cx.bulk_in.size) +
                                       " parameter bytes; the kernel takes " +
                                       std::to_string(f->param_bytes));
      }
      spec.kind = backend::GraphNodeSpec::Kind::kKernel;
      spec.function = f->function;
      spec.config.grid = {k.getGridX(), k.getGridY(), k.getGridZ()};
      spec.config.block = {k.getBlockX(), k.getBlockY(), k.getBlockZ()};
      spec.config.shared_bytes = k.getSharedBytes();
      spec.config.cluster = {k.getClusterX(), k.getClusterY(), k.getClusterZ()};
      for (int i = 0; i < 3; ++i) {
        if (spec.config.grid[i] == 0 || spec.config.block[i] == 0) {
          return Status::InvalidArgument("kernel node with a zero grid or block dimension");
        }
      }
      spec.params = cx.bulk_in;
      uses.modules.push_back(f->module);
      break;
    }
    case wire::GraphAddNode::MEMSET: {
      auto m = args.getMemset();
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
      FERRY_RETURN_IF_ERROR(CheckRange2D(m.getDst(), pitch, width * element, height, "memset"));
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
      auto m = args.getMemcpy();
      ctx = m.getCtx();
      if (m.getBytes() == 0) return Status::InvalidArgument("empty memcpy node");
      FERRY_RETURN_IF_ERROR(CheckRange(m.getSrc(), m.getBytes(), "source"));
      FERRY_RETURN_IF_ERROR(CheckRange(m.getDst(), m.getBytes(), "destination"));
      uses.ranges.push_back({m.getSrc(), m.getBytes()});
      uses.ranges.push_back({m.getDst(), m.getBytes()});
      spec.kind = backend::GraphNodeSpec::Kind::kCopy;
      spec.dst = m.getDst();
      spec.src = m.getSrc();
      spec.bytes = m.getBytes();
      break;
    }
    default:
      return Status::InvalidArgument("unknown graph node kind");
  }
  if (ctx != 0) {
    ContextEntry* c = nullptr;
    FERRY_RETURN_IF_ERROR(contexts_.Find(ctx, &c));
    if (graph->ctx != 0 && graph->ctx != ctx) {
      return Status::InvalidArgument("a graph's nodes must belong to one context");
    }
    spec.ctx = c->context.get();
  }
  backend::GraphNode* node = nullptr;
  FERRY_RETURN_IF_ERROR(backend_.AddGraphNode(*graph->graph, dependencies, spec, &node));
  if (ctx != 0) graph->ctx = ctx;
  if (!uses.ranges.empty() || !uses.modules.empty()) {
    // Clones and executable graphs share the uses they were made with.
    auto all = std::make_shared<GraphUses>(*graph->uses);
    all->Add(uses);
    graph->uses = std::move(all);
  }
  return graph_nodes_.Insert(args.getNode(), GraphNodeEntry{node, args.getGraph()});
}

Status Session::GraphClone(wire::GraphClone::Reader args) {
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
  FERRY_RETURN_IF_ERROR(graphs_.CheckNewId(args.getClone()));
  GraphEntry clone;
  FERRY_RETURN_IF_ERROR(backend_.CloneGraph(*graph->graph, &clone.graph));
  clone.ctx = graph->ctx;
  clone.uses = graph->uses;
  return graphs_.Insert(args.getClone(), std::move(clone));
}

Status Session::GraphInstantiate(wire::GraphInstantiate::Reader args) {
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
  FERRY_RETURN_IF_ERROR(graph_execs_.CheckNewId(args.getExec()));
  GraphExecEntry entry;
  FERRY_RETURN_IF_ERROR(backend_.InstantiateGraph(*graph->graph, args.getFlags(), &entry.exec));
  entry.ctx = graph->ctx;
  // Each launch checks every use: keep each range and module once.
  auto uses = std::make_shared<GraphUses>(*graph->uses);
  std::sort(uses->modules.begin(), uses->modules.end());
  uses->modules.erase(std::unique(uses->modules.begin(), uses->modules.end()), uses->modules.end());
  std::sort(uses->ranges.begin(), uses->ranges.end());
  uses->ranges.erase(std::unique(uses->ranges.begin(), uses->ranges.end()), uses->ranges.end());
  entry.uses = std::move(uses);
  return graph_execs_.Insert(args.getExec(), std::move(entry));
}

Status Session::GraphExecDestroy(wire::GraphExecRef::Reader args) {
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

Status Session::GraphLaunch(wire::GraphLaunch::Reader args) {
  GraphExecEntry* exec = nullptr;
  FERRY_RETURN_IF_ERROR(graph_execs_.Find(args.getExec(), &exec));
  backend::Stream* stream = nullptr;
  // FindStream checked that the stream is one of args.ctx's.
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  FERRY_RETURN_IF_ERROR(CheckGraphExec(*exec, args.getCtx()));
  FERRY_RETURN_IF_ERROR(CaptureGuard(args.getStream(), CaptureUse::kRecorded));
  if (auto it = captures_.find(args.getStream()); it != captures_.end()) {
    it->second.uses.Add(*exec->uses);
  }
  // A graph launch is a launch: a throttled device's share applies to it.
  return LaunchUnderShare(args.getCtx(), *stream,
                          [&] { return backend_.LaunchGraph(*exec->exec, *stream); });
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
