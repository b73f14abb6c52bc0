// Session handlers for graph node kinds beyond session_graph.cc's: memory
// allocation and free nodes, and graph memory (cuDeviceGet/SetGraphMemAttribute,
// cuDeviceGraphMemTrim).
//
// Graph memory (schema/ferry.capnp, GraphAddMemNode): an allocation node gets
// its address when it is added; its memory belongs to the one executable
// graph of its graph, charged to the slice quota when the graph is
// instantiated (that is where a graph too large for the quota fails, with
// OUT_OF_MEMORY). From instantiation until the executable graph is destroyed
// its range is the session's (RangeEntry::graph), so every call may name it;
// before, only the memset and copy nodes of its own graph may. Destroying
// the executable graph releases the memory like cuMemFree does: once every
// operation queued before on the session's streams is done (the backend's
// tenant), and the quota comes back only after that (UnchargeWhenReleased;
// README.md invariant 7). A free node ends an allocation's life as far as
// launches are concerned (a graph that allocates cannot be launched again
// before its allocations were freed); the memory itself stays with its
// executable graph, which is what a driver's graph memory pool does with
// freed graph memory until it is trimmed. Unlike the driver, whose
// allocations that a launch made and nothing freed outlive the executable
// graph (until cuMemFree or another graph frees them), ferry frees them
// with it (FreeGraphAllocations): their range is no longer the session's
// either way, so nothing could ever free them otherwise.

#include <cuda.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/log.h"
#include "server/session.h"
#include "server/session_internal.h"

namespace ferry::server {

using session_internal::Hex;

namespace {

// Whether [address, address + bytes) lies within one of `allocations`.
template <typename Allocations>
bool WithinAllocation(const Allocations& allocations, uint64_t address, uint64_t bytes) {
  return std::any_of(allocations.begin(), allocations.end(), [&](const auto& a) {
    return address >= a.dptr && bytes <= a.bytes && address - a.dptr <= a.bytes - bytes;
  });
}

}  // namespace

Status Session::CheckGraphNodeRange(const GraphEntry& graph, uint64_t address, uint64_t bytes,
                                    const char* what) {
  Status status = CheckRange(address, bytes, what);
  if (status.ok() || WithinAllocation(graph.mem.allocations, address, bytes)) return Status::Ok();
  return status;
}

Status Session::CheckGraphNodeRange2D(const GraphEntry& graph, uint64_t address, uint64_t pitch,
                                      uint64_t width_bytes, uint64_t height, const char* what) {
  Status status = CheckRange2D(address, pitch, width_bytes, height, what);
  if (status.ok() || height == 0) return status;
  // The caller checked that the extent does not overflow.
  const uint64_t span = (height - 1) * pitch + width_bytes;
  if (WithinAllocation(graph.mem.allocations, address, span)) return Status::Ok();
  return status;
}

// A node of a kind of this file, added to `graph` (id `graph_id`) as `id`.
Status Session::InsertNodeOfKind(GraphEntry& graph, uint64_t graph_id, uint64_t id,
                                 backend::GraphNode* node, uint64_t ctx, int type) {
  GraphNodeEntry entry;
  entry.node = node;
  entry.graph = graph_id;
  entry.ctx = ctx;
  entry.type = type;
  graph.nodes.push_back(id);
  return graph_nodes_.Insert(id, std::move(entry));
}

// cuda.h (cuGraphAddMemAllocNode): a graph with memory allocation or free
// nodes cannot be cloned, nor its nodes or edges deleted.
Status Session::CheckGraphWithoutMemoryNodes(const GraphEntry& graph, const char* what) {
  if (graph.mem.empty()) return Status::Ok();
  return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED,
                      std::string(what) + ": the graph has memory allocation or free nodes");
}

// The node's memory is on the device of its context; the backend reserves
// its address now.
Status Session::GraphAddMemAllocNode(wire::GraphAddMemNode::Reader args, CallContext& cx) {
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
  FERRY_RETURN_IF_ERROR(CheckEmbeddedGraphTakes(*graph, "memory allocation nodes", true));
  std::vector<backend::GraphNode*> dependencies;
  FERRY_RETURN_IF_ERROR(NewGraphNodeDependencies(args.getGraph(), args.getNode(),
                                                 args.getDependencies(), &dependencies));
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  if (graph->ctx != 0 && graph->ctx != args.getCtx()) {
    return Status::InvalidArgument("a graph's nodes must belong to one context");
  }
  if (args.getBytes() == 0) return Status::InvalidArgument("a graph allocation of 0 bytes");
  int backend_device = 0;
  FERRY_RETURN_IF_ERROR(BackendDevice(c->device, &backend_device));
  backend::GraphNode* node = nullptr;
  uint64_t dptr = 0;
  FERRY_RETURN_IF_ERROR(backend_.AddGraphMemAllocNode(
      *graph->graph, dependencies, *c->context, backend_device, args.getBytes(), &node, &dptr));
  graph->ctx = args.getCtx();
  graph->mem.allocations.push_back(GraphAllocation{dptr, args.getBytes(), c->device});
  FERRY_RETURN_IF_ERROR(InsertNodeOfKind(*graph, args.getGraph(), args.getNode(), node,
                                         args.getCtx(), CU_GRAPH_NODE_TYPE_MEM_ALLOC));
  cx.reply.initMemAlloc().setDptr(dptr);
  return Status::Ok();
}

// `dptr` must be the address of an allocation node of one of the session's
// graphs or executable graphs. It is checked before anything else, as every
// range is.
Status Session::GraphAddMemFreeNode(wire::GraphAddMemNode::Reader args) {
  const uint64_t dptr = args.getDptr();
  bool allocated = false;
  auto look = [&](uint64_t, const auto& entry) {
    for (const GraphAllocation& a : entry.mem.allocations) allocated |= a.dptr == dptr;
  };
  graphs_.ForEach(look);
  graph_execs_.ForEach(look);
  const Status not_graph_memory =
      Status::InvalidArgument("cuGraphAddMemFreeNode(" + Hex(dptr) +
                              "): not the address of a graph allocation of this session");
  // An address of no allocation at all is the range's error, before the
  // graph's; one of an ordinary allocation is refused after it.
  if (!allocated && ranges_.FindBase(dptr).value == nullptr) return not_graph_memory;
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
  FERRY_RETURN_IF_ERROR(CheckEmbeddedGraphTakes(*graph, "memory free nodes", true));
  if (!allocated) return not_graph_memory;
  std::vector<backend::GraphNode*> dependencies;
  FERRY_RETURN_IF_ERROR(NewGraphNodeDependencies(args.getGraph(), args.getNode(),
                                                 args.getDependencies(), &dependencies));
  if (std::find(graph->mem.frees.begin(), graph->mem.frees.end(), dptr) != graph->mem.frees.end()) {
    return Status::InvalidArgument("the graph frees " + Hex(dptr) + " already");
  }
  backend::GraphNode* node = nullptr;
  FERRY_RETURN_IF_ERROR(backend_.AddGraphMemFreeNode(*graph->graph, dependencies, dptr, &node));
  graph->mem.frees.push_back(dptr);
  return InsertNodeOfKind(*graph, args.getGraph(), args.getNode(), node, graph->ctx,
                          CU_GRAPH_NODE_TYPE_MEM_FREE);
}

Status Session::CheckGraphMemory(const GraphEntry& graph) {
  if (graph.mem.allocations.empty()) return Status::Ok();
  std::map<int, uint64_t> bytes;  // by session device
  for (const GraphAllocation& a : graph.mem.allocations) {
    if (ranges_.FindBase(a.dptr).value != nullptr) {
      return Status::InvalidArgument(
          "an executable graph of this graph (or of a clone) exists already: a graph with "
          "memory allocation nodes has one at a time");
    }
    bytes[a.device] += a.bytes;
  }
  for (const auto& [device, total] : bytes) {
    FERRY_RETURN_IF_ERROR(CheckQuotaAfterReleases(device, total));
  }
  return Status::Ok();
}

Status Session::HoldGraphMemory(GraphEntry& graph, GraphExecEntry& exec) {
  exec.events = graph.events;
  exec.mem = graph.mem;
  if (graph.mem.allocations.empty()) return Status::Ok();
  std::map<int, uint64_t> bytes;  // by session device
  for (const GraphAllocation& a : graph.mem.allocations) bytes[a.device] += a.bytes;
  const auto commit = [&] { return backend_.CommitGraphMemory(*exec.exec, *graph.graph, *tenant_); };
  Status status = commit();
  // A full device: as every allocation path, wait for room (on every
  // device the graph allocates on, one wait). A refused commit takes
  // nothing, so trying again is safe.
  if (status.code() == StatusCode::kOutOfMemory) {
    status = WaitForRoom({bytes.begin(), bytes.end()}, std::move(status), commit);
  }
  if (!status.ok()) {
    exec.mem = GraphMemNodes{};
    return status;
  }
  for (const auto& [device, total] : bytes) {
    shares_.Charge(device, total);
    GraphMemFigures& figures = graph_mem_[device];
    figures.reserved += total;
    figures.reserved_high = std::max(figures.reserved_high, figures.reserved);
  }
  for (const GraphAllocation& a : graph.mem.allocations) {
    RangeEntry range{graph.ctx, 0, a.device};
    range.graph = true;
    (void)ranges_.Insert(a.dptr, a.bytes, range);  // CheckGraphMemory: none is held
  }
  return Status::Ok();
}

void Session::ForgetGraphExecMemory(GraphExecEntry& exec) {
  if (exec.mem.allocations.empty()) return;
  std::map<int, uint64_t> bytes;
  std::vector<uint64_t> unfreed;
  for (const GraphAllocation& a : exec.mem.allocations) {
    ranges_.Erase(a.dptr);
    bytes[a.device] += a.bytes;
    GraphMemFigures& figures = graph_mem_[a.device];
    figures.reserved -= std::min(figures.reserved, a.bytes);
    if (graph_mem_live_.erase(a.dptr) != 0) {
      figures.used -= std::min(figures.used, a.bytes);
      unfreed.push_back(a.dptr);
    }
  }
  exec.mem = GraphMemNodes{};
  if (!unfreed.empty()) {
    Status status = backend_.FreeGraphAllocations(*exec.exec, unfreed);
    if (!status.ok()) {
      FERRY_LOG(kWarning) << "freeing the unfreed allocations of an executable graph: "
                          << status.ToString();
    }
  }
  // Destroying the backend's executable graph starts the release of its
  // memory on the tenant; the quota waits for it like every release.
  exec.exec.reset();
  for (const auto& [device, total] : bytes) UnchargeWhenReleased(device, total);
}

Status Session::CheckGraphMemoryLaunch(const GraphExecEntry& exec) {
  if (exec.auto_free) return Status::Ok();
  for (const GraphAllocation& a : exec.mem.allocations) {
    if (graph_mem_live_.count(a.dptr) != 0) {
      return Status::InvalidArgument(
          "the executable graph's allocation at " + Hex(a.dptr) +
          " from its previous launch was not freed (instantiate with "
          "CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH to free it at each launch)");
    }
  }
  return Status::Ok();
}

Status Session::FreeGraphAllocation(uint64_t dptr) {
  auto live = graph_mem_live_.find(dptr);
  if (live == graph_mem_live_.end()) {
    return Status::InvalidArgument("cuMemFree(" + Hex(dptr) +
                                   "): graph memory that no launch allocated, or freed already "
                                   "(or by a free node of its own graph)");
  }
  GraphExecEntry* holder = nullptr;
  graph_execs_.ForEach([&](uint64_t, GraphExecEntry& exec) {
    if (WithinAllocation(exec.mem.allocations, dptr, 1)) holder = &exec;
  });
  if (holder == nullptr) return Status::Internal("a live graph allocation without its graph");
  const uint64_t unfreed[] = {dptr};
  FERRY_RETURN_IF_ERROR(backend_.FreeGraphAllocations(*holder->exec, unfreed));
  GraphMemFigures& figures = graph_mem_[live->second.device];
  figures.used -= std::min(figures.used, live->second.bytes);
  graph_mem_live_.erase(live);
  return Status::Ok();
}

void Session::GraphMemoryLaunched(const GraphExecEntry& exec) {
  for (const GraphAllocation& a : exec.mem.allocations) {
    if (!graph_mem_live_.emplace(a.dptr, a).second) continue;  // AUTO_FREE_ON_LAUNCH
    GraphMemFigures& figures = graph_mem_[a.device];
    figures.used += a.bytes;
    figures.used_high = std::max(figures.used_high, figures.used);
  }
  for (uint64_t dptr : exec.mem.frees) {
    auto it = graph_mem_live_.find(dptr);
    if (it == graph_mem_live_.end()) continue;
    GraphMemFigures& figures = graph_mem_[it->second.device];
    figures.used -= std::min(figures.used, it->second.bytes);
    graph_mem_live_.erase(it);
  }
}

Status Session::DeviceGetGraphMemAttribute(wire::DeviceGraphMem::Reader args, CallContext& cx) {
  int backend_device = 0;
  FERRY_RETURN_IF_ERROR(BackendDevice(args.getDevice(), &backend_device));
  const GraphMemFigures& figures = graph_mem_[args.getDevice()];
  uint64_t value = 0;
  switch (args.getAttribute()) {
    case CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT:
      value = figures.used;
      break;
    case CU_GRAPH_MEM_ATTR_USED_MEM_HIGH:
      value = figures.used_high;
      break;
    case CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT:
      value = figures.reserved;
      break;
    case CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH:
      value = figures.reserved_high;
      break;
    default:
      return Status::InvalidArgument("unknown graph memory attribute " +
                                     std::to_string(args.getAttribute()));
  }
  cx.reply.setValue(static_cast<int64_t>(value));
  return Status::Ok();
}

// As the driver: only the high watermarks can be set, and only to 0 (which
// resets them to the current figure).
Status Session::DeviceSetGraphMemAttribute(wire::DeviceGraphMem::Reader args) {
  int backend_device = 0;
  FERRY_RETURN_IF_ERROR(BackendDevice(args.getDevice(), &backend_device));
  GraphMemFigures& figures = graph_mem_[args.getDevice()];
  const int attribute = args.getAttribute();
  if (attribute != CU_GRAPH_MEM_ATTR_USED_MEM_HIGH &&
      attribute != CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH) {
    return Status::InvalidArgument("only the graph memory high watermarks can be set");
  }
  if (args.getValue() != 0) {
    return Status::InvalidArgument("a graph memory high watermark can only be reset (to 0)");
  }
  if (attribute == CU_GRAPH_MEM_ATTR_USED_MEM_HIGH) {
    figures.used_high = figures.used;
  } else {
    figures.reserved_high = figures.reserved;
  }
  return Status::Ok();
}

Status Session::DeviceGraphMemTrim(wire::DeviceGraphMem::Reader args) {
  int backend_device = 0;
  FERRY_RETURN_IF_ERROR(BackendDevice(args.getDevice(), &backend_device));
  return backend_.TrimGraphMemory(backend_device);
}

// --- event record and wait nodes --------------------------------------------------
// The node's event names the graph's context (an event of another context
// is INVALID_VALUE, as for a kernel of another context).

Status Session::GraphAddEventNode(wire::GraphAddEventNode::Reader args) {
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(args.getGraph(), &graph));
  FERRY_RETURN_IF_ERROR(CheckEmbeddedGraphTakes(*graph, "event nodes", false));
  EventEntry* event = nullptr;
  FERRY_RETURN_IF_ERROR(events_.Find(args.getEvent(), &event));
  std::vector<backend::GraphNode*> dependencies;
  FERRY_RETURN_IF_ERROR(NewGraphNodeDependencies(args.getGraph(), args.getNode(),
                                                 args.getDependencies(), &dependencies));
  if (graph->ctx != 0 && graph->ctx != event->ctx) {
    return Status::InvalidArgument("a graph's nodes must belong to one context");
  }
  backend::GraphNode* node = nullptr;
  FERRY_RETURN_IF_ERROR(backend_.AddGraphEventNode(*graph->graph, dependencies, *event->event,
                                                   args.getWait(), &node));
  graph->ctx = event->ctx;
  graph->events[args.getNode()] =
      GraphNodeEvent{args.getEvent(), event->event.get(), args.getWait()};
  const int type = args.getWait() ? CU_GRAPH_NODE_TYPE_WAIT_EVENT : CU_GRAPH_NODE_TYPE_EVENT_RECORD;
  return InsertNodeOfKind(*graph, args.getGraph(), args.getNode(), node, event->ctx, type);
}

Status Session::FindEventNode(uint64_t graph, uint64_t node_id, uint64_t event_id,
                              GraphNodeEntry** node, EventEntry** event) {
  FERRY_RETURN_IF_ERROR(graph_nodes_.Find(node_id, node));
  FERRY_RETURN_IF_ERROR(events_.Find(event_id, event));
  if ((*node)->graph != graph) {
    return Status::InvalidArgument(
        "the node is not a node of the graph the executable graph "
        "was instantiated from");
  }
  if ((*node)->type != CU_GRAPH_NODE_TYPE_EVENT_RECORD &&
      (*node)->type != CU_GRAPH_NODE_TYPE_WAIT_EVENT) {
    return Status::InvalidArgument("the node is not an event record or wait node");
  }
  if ((*event)->ctx != (*node)->ctx) {
    return Status::InvalidArgument("an event node's event cannot move to another context");
  }
  return Status::Ok();
}

Status Session::GraphEventNodeSetEvent(wire::GraphEventNodeEvent::Reader args) {
  GraphNodeEntry* node = nullptr;
  FERRY_RETURN_IF_ERROR(graph_nodes_.Find(args.getNode(), &node));
  GraphEntry* graph = nullptr;
  FERRY_RETURN_IF_ERROR(graphs_.Find(node->graph, &graph));
  EventEntry* event = nullptr;
  FERRY_RETURN_IF_ERROR(FindEventNode(node->graph, args.getNode(), args.getEvent(), &node, &event));
  FERRY_RETURN_IF_ERROR(backend_.SetGraphEventNode(*graph->graph, *node->node, *event->event,
                                                   node->type == CU_GRAPH_NODE_TYPE_WAIT_EVENT));
  graph->events[args.getNode()] = GraphNodeEvent{args.getEvent(), event->event.get(),
                                                 node->type == CU_GRAPH_NODE_TYPE_WAIT_EVENT};
  return Status::Ok();
}

Status Session::GraphExecEventNodeSetEvent(wire::GraphEventNodeEvent::Reader args) {
  GraphExecEntry* exec = nullptr;
  FERRY_RETURN_IF_ERROR(graph_execs_.Find(args.getExec(), &exec));
  GraphNodeEntry* node = nullptr;
  EventEntry* event = nullptr;
  FERRY_RETURN_IF_ERROR(FindEventNode(exec->graph, args.getNode(), args.getEvent(), &node, &event));
  FERRY_RETURN_IF_ERROR(backend_.SetExecEventNode(*exec->exec, *node->node, *event->event,
                                                  node->type == CU_GRAPH_NODE_TYPE_WAIT_EVENT));
  exec->events[args.getNode()] = GraphNodeEvent{args.getEvent(), event->event.get(),
                                                node->type == CU_GRAPH_NODE_TYPE_WAIT_EVENT};
  return Status::Ok();
}

Status Session::CheckGraphEventsLaunch(const GraphExecEntry& exec, uint64_t stream) {
  if (exec.events.empty()) return Status::Ok();
  for (const auto& [node, named] : exec.events) {
    EventEntry* event = nullptr;
    if (!events_.Find(named.id, &event).ok() || event->event.get() != named.event) {
      return Status::InvalidHandle("the graph records or waits for event " +
                                   std::to_string(named.id) + ", which was destroyed");
    }
  }
  if (CaptureEntry* capture = CaptureOfStream(stream); capture != nullptr) {
    capture->invalidated = true;
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                        "graphs with event record or wait nodes cannot be launched into a "
                        "capture through ferry");
  }
  return Status::Ok();
}

void Session::GraphEventsLaunched(const GraphExecEntry& exec) {
  for (const auto& [node, named] : exec.events) {
    EventEntry* event = nullptr;
    if (!named.wait && events_.Find(named.id, &event).ok()) {
      NoteCaptureEventRecord(/*stream=*/0, *event);  // recorded outside any capture
    }
  }
}

}  // namespace ferry::server
