// Entry points: stream capture and graphs. A capture happens on the server,
// where the work runs (schema/ferry.capnp, "stream capture and graphs"); the
// client records which streams capture (the origin and the streams forked
// into it through cuEventRecord + cuStreamWaitEvent), so capture queries cost
// no round trip while none does, and it applies the capture interaction
// modes (ForbidUnsafeCallDuringCapture). It chooses the ids of graphs, nodes
// and executable graphs and records the structure of the graphs built node
// by node, so structure queries are answered here. Beginning a capture,
// instantiating, launching and destroying are fire-and-forget; ending a
// capture waits, since the driver reports an invalidated or unjoined capture
// there. A graph launch is one call however many nodes the graph has.
//
// Host memory: a replay cannot reach the client's memory within its one
// message, so host copies and host functions are refused in captures and
// memcpy nodes are device-to-device only. Nodes: empty, kernel, memset,
// one-row device-to-device copy and child-graph nodes; an executable graph's
// kernel nodes can be updated, its kernel, memset and copy nodes disabled, and
// the whole of it updated from a graph of the same topology (cuGraphExecUpdate,
// for graphs built node by node). Edge edits, node destruction and node
// parameter setters: client/api_graph_edit.cc; memory and event nodes:
// client/api_graph_nodes.cc. Not forwarded (unsupported_functions.txt, with
// reasons): other node kinds, capture dependencies and capture into an
// existing graph.
#include <cuda.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "client/entry_point.h"
#include "client/graph_node_work.h"

using ferry::client::AddWorkNode;
using ferry::client::CaptureState;
using ferry::client::GraphNodeWork;
using ferry::client::KernelParamsV2;
using ferry::client::RecordedNodeParams;
using ferry::client::SetNodeWork;

namespace {

// The calling thread's capture mode (cuThreadExchangeStreamCaptureMode).
thread_local CUstreamCaptureMode thread_capture_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

bool KnownCaptureMode(int mode) {
  return mode == CU_STREAM_CAPTURE_MODE_GLOBAL || mode == CU_STREAM_CAPTURE_MODE_THREAD_LOCAL ||
         mode == CU_STREAM_CAPTURE_MODE_RELAXED;
}

// cuStreamBeginCapture*; with `graph` (cuStreamBeginCaptureToGraph), into
// that graph after `deps` (nodes of it).
Status BeginCapture(CUstream stream, bool per_thread, int mode, CUgraph graph = nullptr,
                    const CUgraphNode* deps = nullptr, const CUgraphEdgeData* edge_data = nullptr,
                    size_t count = 0) {
  Runtime& rt = Runtime::Get();
  if (!KnownCaptureMode(mode)) {
    return Status::InvalidArgument("unknown stream capture mode " + std::to_string(mode));
  }
  std::vector<uint64_t> dependencies;
  const uint64_t graph_id = Runtime::HandleId(graph);
  if (graph != nullptr) {
    if (count > 0 && deps == nullptr) return Status::InvalidArgument("dependencies is NULL");
    FERRY_RETURN_IF_ERROR(ferry::client::CheckEdgeData(edge_data, count));
    FERRY_RETURN_IF_ERROR(rt.Ready());
    if (!rt.graphs().HasGraph(graph_id)) return Status::InvalidHandle("not a graph of this client");
    for (size_t i = 0; i < count; ++i) {
      dependencies.push_back(Runtime::HandleId(deps[i]));
      if (!rt.graphs().IsNodeOf(dependencies.back(), graph_id)) {
        return Status::InvalidArgument("dependency " + std::to_string(i) +
                                       " is not a node of the graph");
      }
    }
  }
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  if (target.stream == 0) {
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                        "the legacy default stream cannot be captured");
  }
  ferry::client::StreamState stream_state;
  FERRY_RETURN_IF_ERROR(rt.streams().FindStream(target.stream, &stream_state));
  CaptureState capture;
  capture.ctx = target.ctx;
  capture.mode = mode;
  capture.blocking = (stream_state.flags & CU_STREAM_NON_BLOCKING) == 0;
  capture.to_graph = graph != nullptr;
  capture.graph = graph_id;
  FERRY_RETURN_IF_ERROR(rt.graphs().BeginCapture(target.stream, &capture));
  Status status = rt.ConnectionOf(target.ctx).Post([&](wire::Call::Builder call) {
    auto args = call.initStreamBeginCapture();
    SetStreamTarget(args, target);
    args.setMode(static_cast<uint32_t>(mode));
    args.setGraph(capture.graph);
    args.setToGraph(capture.to_graph);
    auto list = args.initDependencies(static_cast<unsigned>(dependencies.size()));
    for (size_t i = 0; i < dependencies.size(); ++i) {
      list.set(static_cast<unsigned>(i), dependencies[i]);
    }
  });
  if (!status.ok()) rt.graphs().ForgetCapture(capture.id);
  return status;
}

// Only the capture's origin stream ends it (the server answers UNMATCHED
// otherwise and the capture goes on, invalidated); a capture not begun in
// relaxed mode is ended by the thread that began it. Whatever else the server
// answers (a graph, INVALIDATED, UNJOINED), the capture is over.
Status EndCapture(CUstream stream, bool per_thread, CUgraph* graph) {
  Runtime& rt = Runtime::Get();
  if (graph == nullptr) return Status::InvalidArgument("phGraph is NULL");
  *graph = nullptr;
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  CaptureState capture;
  if (!rt.graphs().FindCapture(target.stream, &capture)) {
    return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is not capturing");
  }
  if (capture.origin == target.stream && capture.mode != CU_STREAM_CAPTURE_MODE_RELAXED &&
      capture.thread != std::this_thread::get_id()) {
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD,
                        "a capture not begun in relaxed mode must be ended by its own thread");
  }
  Status status = rt.ConnectionOf(target.ctx).Call([&](wire::Call::Builder call) {
    auto args = call.initStreamEndCapture();
    SetStreamTarget(args, target);
  });
  if (status.cuda_result() == CUDA_ERROR_STREAM_CAPTURE_UNMATCHED) return status;
  rt.graphs().ForgetCapture(capture.id);
  const uint32_t host_nodes = rt.graphs().TakeCapturedHostNodes(capture.graph);
  if (capture.to_graph) {
    // The graph has the captured nodes whatever the answer (the server
    // keeps their uses); it was the program's before.
    rt.graphs().NoteCapturedIntoGraph(capture.graph, host_nodes);
    FERRY_RETURN_IF_ERROR(status);
    *graph = Runtime::ToHandle<CUgraph>(capture.graph);
    return Status::Ok();
  }
  FERRY_RETURN_IF_ERROR(status);
  rt.graphs().AddGraph(capture.graph, /*opaque=*/true, host_nodes);
  *graph = Runtime::ToHandle<CUgraph>(capture.graph);
  return Status::Ok();
}

// cuStreamUpdateCaptureDependencies: the nodes named must be nodes of the
// capture's graph with handles, i.e. explicitly added nodes of a graph
// captured into (cuStreamBeginCaptureToGraph); captured nodes have none.
Status UpdateCaptureDependencies(CUstream stream, bool per_thread, CUgraphNode* deps,
                                 const CUgraphEdgeData* edge_data, size_t count, unsigned flags) {
  Runtime& rt = Runtime::Get();
  if (flags != CU_STREAM_ADD_CAPTURE_DEPENDENCIES && flags != CU_STREAM_SET_CAPTURE_DEPENDENCIES) {
    return Status::InvalidArgument(
        "flags must be CU_STREAM_ADD_ or CU_STREAM_SET_CAPTURE_DEPENDENCIES");
  }
  if (count > 0 && deps == nullptr) return Status::InvalidArgument("dependencies is NULL");
  FERRY_RETURN_IF_ERROR(ferry::client::CheckEdgeData(edge_data, count));
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  CaptureState capture;
  if (!rt.graphs().AnyCapture() || target.stream == 0 ||
      !rt.graphs().FindCapture(target.stream, &capture)) {
    return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is not capturing");
  }
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < count; ++i) {
    ids.push_back(Runtime::HandleId(deps[i]));
    if (!rt.graphs().IsNodeOf(ids.back(), capture.graph)) {
      return Status::InvalidArgument("dependency " + std::to_string(i) +
                                     " is not a node of the capture's graph with a handle");
    }
  }
  return rt.ConnectionOf(target.ctx).Post([&](wire::Call::Builder call) {
    auto args = call.initStreamUpdateCaptureDependencies();
    SetStreamTarget(args, target);
    auto list = args.initDependencies(static_cast<unsigned>(ids.size()));
    for (size_t i = 0; i < ids.size(); ++i) list.set(static_cast<unsigned>(i), ids[i]);
    args.setSet(flags == CU_STREAM_SET_CAPTURE_DEPENDENCIES);
  });
}

// The capture status of `stream` and, when it captures, its capture; asks
// the server (which knows whether the capture was invalidated) only when the
// stream captures.
Status CaptureInfo(CUstream stream, bool per_thread, CUstreamCaptureStatus* status,
                   CaptureState* capture) {
  Runtime& rt = Runtime::Get();
  if (status == nullptr) return Status::InvalidArgument("captureStatus is NULL");
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  *status = CU_STREAM_CAPTURE_STATUS_NONE;
  if (!rt.graphs().AnyCapture()) return Status::Ok();
  if (target.stream == 0) {
    if (rt.graphs().BlockingCaptureIn(target.ctx)) {
      return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT,
                          "the legacy stream synchronizes with a capturing stream");
    }
    return Status::Ok();
  }
  if (!rt.graphs().FindCapture(target.stream, capture)) return Status::Ok();
  int64_t value = 0;
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(target.ctx)
                            .Call(
                                [&](wire::Call::Builder call) {
                                  auto args = call.initStreamCaptureStatus();
                                  SetStreamTarget(args, target);
                                },
                                {}, {},
                                [&](wire::Reply::Reader reply) {
                                  value = reply.getValue();
                                  return Status::Ok();
                                }));
  *status = static_cast<CUstreamCaptureStatus>(value);
  return Status::Ok();
}

// cuStreamGetCaptureInfo, every version: the capture's id and graph while it
// is active or invalidated. Captured nodes have no client handles (the
// server records them), so the dependency set is reported empty
// (cuStreamUpdateCaptureDependencies takes only nodes with handles).
Status GetCaptureInfo(CUstream stream, bool per_thread, CUstreamCaptureStatus* status,
                      cuuint64_t* id, CUgraph* graph, const CUgraphNode** dependencies,
                      const CUgraphEdgeData** edge_data, size_t* count) {
  CaptureState capture;
  FERRY_RETURN_IF_ERROR(CaptureInfo(stream, per_thread, status, &capture));
  const bool capturing = *status != CU_STREAM_CAPTURE_STATUS_NONE;
  if (id != nullptr && capturing) *id = capture.id;
  if (graph != nullptr) *graph = capturing ? Runtime::ToHandle<CUgraph>(capture.graph) : nullptr;
  if (dependencies != nullptr) *dependencies = nullptr;
  if (edge_data != nullptr) *edge_data = nullptr;
  if (count != nullptr) *count = 0;
  return Status::Ok();
}

// Whether `graph` has memory allocation nodes, or is opaque (its nodes are
// the server's only, so it may).
bool GraphMayAllocate(uint64_t graph) {
  std::vector<ferry::client::GraphRegistry::NodeShape> shape;
  if (!Runtime::Get().graphs().GraphShape(graph, &shape).ok()) return true;
  return std::any_of(shape.begin(), shape.end(),
                     [](const auto& n) { return n.type == CU_GRAPH_NODE_TYPE_MEM_ALLOC; });
}

// A graph whose dependencies form a cycle is refused (INVALID_VALUE, as the
// driver refuses it) with *cycle_node (when given) set to a node on the
// cycle; the client records every edge, so it answers without the server.
Status Instantiate(CUgraphExec* exec, CUgraph graph, unsigned long long flags,
                   CUgraphNode* cycle_node = nullptr) {
  Runtime& rt = Runtime::Get();
  if (exec == nullptr) return Status::InvalidArgument("phGraphExec is NULL");
  FERRY_RETURN_IF_ERROR(rt.Ready());
  const uint64_t graph_id = Runtime::HandleId(graph);
  if (!rt.graphs().HasGraph(graph_id)) return Status::InvalidHandle("not a graph of this client");
  if (const uint64_t node = rt.graphs().NodeOnCycle(graph_id); node != 0) {
    if (cycle_node != nullptr) *cycle_node = Runtime::ToHandle<CUgraphNode>(node);
    return Status::InvalidArgument("the graph's dependencies form a cycle");
  }
  const uint64_t id = rt.graphs().NewExec(graph_id, flags);
  auto fill = [&](wire::Call::Builder call) {
    auto args = call.initGraphInstantiate();
    args.setGraph(graph_id);
    args.setExec(id);
    args.setFlags(flags);
  };
  // A graph that allocates memory (or may: an opaque one) is charged to the
  // quota here, so the call waits for OUT_OF_MEMORY as the driver reports it.
  const Status posted = GraphMayAllocate(graph_id) ? rt.CurrentConnection().Call(fill)
                                                   : rt.CurrentConnection().Post(fill);
  if (!posted.ok()) {
    (void)rt.graphs().RemoveExec(id);
    return posted;
  }
  rt.user_objects().Instantiated(graph_id, id);
  uint64_t ctx = 0;
  if (rt.CurrentContext(&ctx).ok()) NoteGraphMemory(graph_id, id, ctx);
  *exec = Runtime::ToHandle<CUgraphExec>(id);
  return Status::Ok();
}

// cuGraphLaunch (`upload` false) and cuGraphUpload: one call, ordered on the
// stream. A launch of a graph with host nodes carries one host gate per host
// node (client/api_graph_host.cc).
Status LaunchOrUpload(CUgraphExec exec, CUstream stream, bool per_thread, bool upload) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  const uint64_t id = Runtime::HandleId(exec);
  if (!rt.graphs().HasExec(id)) {
    return Status::InvalidHandle("not an executable graph of this client");
  }
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  const uint32_t host_nodes = upload ? 0 : rt.graphs().ExecHostNodes(id);
  CaptureState capture;
  if (host_nodes != 0 && rt.graphs().AnyCapture() && target.stream != 0 &&
      rt.graphs().FindCapture(target.stream, &capture)) {
    // A host node holds its launch's stream for this process, which a
    // capture cannot record (the server refuses it too): the capture is
    // invalidated, as for any call it cannot take.
    FERRY_RETURN_IF_ERROR(rt.ConnectionOf(target.ctx).Post([&](wire::Call::Builder call) {
      auto args = call.initStreamCaptureInvalidate();
      SetStreamTarget(args, target);
    }));
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                        "a graph with host nodes cannot be launched into a capture");
  }
  if (host_nodes != 0) {
    FERRY_RETURN_IF_ERROR(rt.ConnectionOf(target.ctx)
                              .PostHostGates(
                                  [&](wire::Call::Builder call) {
                                    wire::GraphLaunch::Builder args =
                                        call.initGraphLaunchHostNodes();
                                    SetStreamTarget(args, target);
                                    args.setExec(id);
                                    args.setHostNodes(host_nodes);
                                  },
                                  host_nodes));
  } else {
    FERRY_RETURN_IF_ERROR(rt.ConnectionOf(target.ctx).Post([&](wire::Call::Builder call) {
      wire::GraphLaunch::Builder args = upload ? call.initGraphUpload() : call.initGraphLaunch();
      SetStreamTarget(args, target);
      args.setExec(id);
    }));
  }
  // The executable graph's user-object references outlive it until this
  // launch has finished.
  if (!upload) rt.user_objects().ExecLaunched(id, stream, per_thread);
  return Status::Ok();
}

// The driver's way of answering a node list: with `out` NULL, *count gets
// the number of nodes; otherwise *count is out's capacity, the first
// min(capacity, n) entries are filled, the rest NULL, and *count gets how many
// were filled. Edge data, where asked for, is the default (all zero): ferry's
// graphs have plain dependencies only.
void ListNodes(const std::vector<uint64_t>& ids, CUgraphNode* out, CUgraphEdgeData* edge_data,
               size_t* count) {
  if (out == nullptr) {
    *count = ids.size();
    return;
  }
  const size_t capacity = *count;
  const size_t n = std::min(capacity, ids.size());
  for (size_t i = 0; i < capacity; ++i) {
    out[i] = i < n ? Runtime::ToHandle<CUgraphNode>(ids[i]) : nullptr;
    if (edge_data != nullptr) edge_data[i] = CUgraphEdgeData{};
  }
  *count = n;
}

// Calls `visit(node, graph's nodes)` with `node`'s record: answered in the
// client, which records the structure of the graphs it builds.
template <typename Visit>
Status NodeShapeOf(CUgraphNode node, Visit visit) {
  Runtime& rt = Runtime::Get();
  const uint64_t id = Runtime::HandleId(node);
  uint64_t graph = 0;
  FERRY_RETURN_IF_ERROR(rt.graphs().GraphOfNode(id, &graph));
  std::vector<ferry::client::GraphRegistry::NodeShape> shape;
  FERRY_RETURN_IF_ERROR(rt.graphs().GraphShape(graph, &shape));
  for (const auto& n : shape) {
    if (n.id == id) {
      visit(n, shape);
      return Status::Ok();
    }
  }
  return Status::InvalidHandle("not a graph node of this client");
}

}  // namespace

Status ForbidUnsafeCallDuringCapture(const char* what) {
  Runtime& rt = Runtime::Get();
  if (!rt.graphs().AnyCapture()) return Status::Ok();
  const std::vector<CaptureState> forbidding =
      rt.graphs().CapturesForbiddingUnsafeCalls(thread_capture_mode);
  if (forbidding.empty()) return Status::Ok();
  // As the driver does: the call fails and invalidates the captures that
  // forbade it (their cuStreamEndCapture answers INVALIDATED).
  for (const CaptureState& capture : forbidding) {
    FERRY_RETURN_IF_ERROR(rt.ConnectionOf(capture.ctx).Post([&](wire::Call::Builder call) {
      auto args = call.initStreamCaptureInvalidate();
      args.setCtx(capture.ctx);
      args.setStream(capture.origin);
    }));
  }
  return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                      std::string(what) +
                          " is not permitted while a stream captures in global or thread-local "
                          "mode (see cuThreadExchangeStreamCaptureMode)");
}

extern "C" {

CUresult CUDAAPI cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode* mode) {
  return Api([&]() -> Status {
    if (mode == nullptr) return Status::InvalidArgument("mode is NULL");
    if (!KnownCaptureMode(*mode)) return Status::InvalidArgument("unknown stream capture mode");
    std::swap(*mode, thread_capture_mode);
    return Status::Ok();
  });
}

// The first generation took no mode: global.
CUresult CUDAAPI cuStreamBeginCapture(CUstream hStream) {
  return Api([&] { return BeginCapture(hStream, false, CU_STREAM_CAPTURE_MODE_GLOBAL); });
}
CUresult CUDAAPI cuStreamBeginCapture_ptsz(CUstream hStream) {
  return Api([&] { return BeginCapture(hStream, true, CU_STREAM_CAPTURE_MODE_GLOBAL); });
}
CUresult CUDAAPI cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode) {
  return Api([&] { return BeginCapture(hStream, false, mode); });
}
CUresult CUDAAPI cuStreamBeginCapture_v2_ptsz(CUstream hStream, CUstreamCaptureMode mode) {
  return Api([&] { return BeginCapture(hStream, true, mode); });
}

// graphhost: the captured nodes join an existing graph (schema/ferry.capnp,
// StreamBeginCapture); they have no handles, so the graph's structure is the
// server's from then on (its node count stays known).
CUresult CUDAAPI cuStreamBeginCaptureToGraph(CUstream hStream, CUgraph hGraph,
                                             const CUgraphNode* dependencies,
                                             const CUgraphEdgeData* dependencyData,
                                             size_t numDependencies, CUstreamCaptureMode mode) {
  return Api([&] {
    if (hGraph == nullptr) return Status::InvalidHandle("hGraph is NULL");
    return BeginCapture(hStream, false, mode, hGraph, dependencies, dependencyData,
                        numDependencies);
  });
}
CUresult CUDAAPI cuStreamBeginCaptureToGraph_ptsz(CUstream hStream, CUgraph hGraph,
                                                  const CUgraphNode* dependencies,
                                                  const CUgraphEdgeData* dependencyData,
                                                  size_t numDependencies,
                                                  CUstreamCaptureMode mode) {
  return Api([&] {
    if (hGraph == nullptr) return Status::InvalidHandle("hGraph is NULL");
    return BeginCapture(hStream, true, mode, hGraph, dependencies, dependencyData, numDependencies);
  });
}

CUresult CUDAAPI cuStreamEndCapture(CUstream hStream, CUgraph* phGraph) {
  return Api([&] { return EndCapture(hStream, false, phGraph); });
}
CUresult CUDAAPI cuStreamEndCapture_ptsz(CUstream hStream, CUgraph* phGraph) {
  return Api([&] { return EndCapture(hStream, true, phGraph); });
}

CUresult CUDAAPI cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus* captureStatus) {
  CaptureState capture;
  return Api([&] { return CaptureInfo(hStream, false, captureStatus, &capture); });
}
CUresult CUDAAPI cuStreamIsCapturing_ptsz(CUstream hStream, CUstreamCaptureStatus* captureStatus) {
  CaptureState capture;
  return Api([&] { return CaptureInfo(hStream, true, captureStatus, &capture); });
}

// cuStreamGetCaptureInfo at every generation, each also with _ptsz.
#define FERRY_CAPTURE_INFO(name, per_thread)                                                  \
  CUresult CUDAAPI name(CUstream hStream, CUstreamCaptureStatus* captureStatus_out,           \
                        cuuint64_t* id_out) {                                                 \
    return Api([&] {                                                                          \
      return GetCaptureInfo(hStream, per_thread, captureStatus_out, id_out, nullptr, nullptr, \
                            nullptr, nullptr);                                                \
    });                                                                                       \
  }
#define FERRY_CAPTURE_INFO_V2(name, per_thread)                                              \
  CUresult CUDAAPI name(CUstream hStream, CUstreamCaptureStatus* captureStatus_out,          \
                        cuuint64_t* id_out, CUgraph* graph_out,                              \
                        const CUgraphNode** dependencies_out, size_t* numDependencies_out) { \
    return Api([&] {                                                                         \
      return GetCaptureInfo(hStream, per_thread, captureStatus_out, id_out, graph_out,       \
                            dependencies_out, nullptr, numDependencies_out);                 \
    });                                                                                      \
  }
#define FERRY_CAPTURE_INFO_V3(name, per_thread)                                              \
  CUresult CUDAAPI name(CUstream hStream, CUstreamCaptureStatus* captureStatus_out,          \
                        cuuint64_t* id_out, CUgraph* graph_out,                              \
                        const CUgraphNode** dependencies_out,                                \
                        const CUgraphEdgeData** edgeData_out, size_t* numDependencies_out) { \
    return Api([&] {                                                                         \
      return GetCaptureInfo(hStream, per_thread, captureStatus_out, id_out, graph_out,       \
                            dependencies_out, edgeData_out, numDependencies_out);            \
    });                                                                                      \
  }

FERRY_CAPTURE_INFO(cuStreamGetCaptureInfo, false)
FERRY_CAPTURE_INFO(cuStreamGetCaptureInfo_ptsz, true)
FERRY_CAPTURE_INFO_V2(cuStreamGetCaptureInfo_v2, false)
FERRY_CAPTURE_INFO_V2(cuStreamGetCaptureInfo_v2_ptsz, true)
FERRY_CAPTURE_INFO_V3(cuStreamGetCaptureInfo_v3, false)
FERRY_CAPTURE_INFO_V3(cuStreamGetCaptureInfo_v3_ptsz, true)

CUresult CUDAAPI cuStreamUpdateCaptureDependencies(CUstream hStream, CUgraphNode* dependencies,
                                                   size_t numDependencies, unsigned int flags) {
  return Api([&] {
    return UpdateCaptureDependencies(hStream, false, dependencies, nullptr, numDependencies, flags);
  });
}
CUresult CUDAAPI cuStreamUpdateCaptureDependencies_ptsz(CUstream hStream, CUgraphNode* dependencies,
                                                        size_t numDependencies,
                                                        unsigned int flags) {
  return Api([&] {
    return UpdateCaptureDependencies(hStream, true, dependencies, nullptr, numDependencies, flags);
  });
}
CUresult CUDAAPI cuStreamUpdateCaptureDependencies_v2(CUstream hStream, CUgraphNode* dependencies,
                                                      const CUgraphEdgeData* dependencyData,
                                                      size_t numDependencies, unsigned int flags) {
  return Api([&] {
    return UpdateCaptureDependencies(hStream, false, dependencies, dependencyData, numDependencies,
                                     flags);
  });
}
CUresult CUDAAPI cuStreamUpdateCaptureDependencies_v2_ptsz(CUstream hStream,
                                                           CUgraphNode* dependencies,
                                                           const CUgraphEdgeData* dependencyData,
                                                           size_t numDependencies,
                                                           unsigned int flags) {
  return Api([&] {
    return UpdateCaptureDependencies(hStream, true, dependencies, dependencyData, numDependencies,
                                     flags);
  });
}

CUresult CUDAAPI cuGraphCreate(CUgraph* phGraph, unsigned int flags) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    if (phGraph == nullptr) return Status::InvalidArgument("phGraph is NULL");
    if (flags != 0) return Status::InvalidArgument("cuGraphCreate flags must be 0");
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t id = rt.graphs().NewGraph();
    FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Post([&](wire::Call::Builder call) {
      auto args = call.initGraphCreate();
      args.setGraph(id);
      args.setFlags(flags);
    }));
    *phGraph = Runtime::ToHandle<CUgraph>(id);
    return Status::Ok();
  });
}

// A clone of a graph built node by node gets handles for its nodes (the
// client records the original's structure; cuGraphNodeFindInClone answers
// from that record), so it is not opaque; a clone of an opaque graph is.
CUresult CUDAAPI cuGraphClone(CUgraph* phGraphClone, CUgraph originalGraph) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    if (phGraphClone == nullptr) return Status::InvalidArgument("phGraphClone is NULL");
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t original = Runtime::HandleId(originalGraph);
    FERRY_RETURN_IF_ERROR(CheckGraphWithoutMemoryNodes(original, "cuGraphClone"));
    uint64_t id = 0;
    std::vector<std::pair<uint64_t, uint64_t>> copies;
    FERRY_RETURN_IF_ERROR(rt.graphs().CloneGraph(original, &id, &copies));
    rt.user_objects().GraphCloned(original, id);
    FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Post([&](wire::Call::Builder call) {
      auto args = call.initGraphClone();
      args.setGraph(original);
      args.setClone(id);
      auto originals = args.initOriginals(static_cast<unsigned>(copies.size()));
      auto copy_ids = args.initCopies(static_cast<unsigned>(copies.size()));
      for (size_t i = 0; i < copies.size(); ++i) {
        originals.set(static_cast<unsigned>(i), copies[i].first);
        copy_ids.set(static_cast<unsigned>(i), copies[i].second);
      }
    }));
    *phGraphClone = Runtime::ToHandle<CUgraph>(id);
    return Status::Ok();
  });
}

// Answered from the client's record of the clone (see cuGraphClone).
CUresult CUDAAPI cuGraphNodeFindInClone(CUgraphNode* phNode, CUgraphNode hOriginalNode,
                                        CUgraph hClonedGraph) {
  return Api([&]() -> Status {
    if (phNode == nullptr) return Status::InvalidArgument("phNode is NULL");
    uint64_t copy = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().graphs().FindInClone(
        Runtime::HandleId(hOriginalNode), Runtime::HandleId(hClonedGraph), &copy));
    *phNode = Runtime::ToHandle<CUgraphNode>(copy);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuGraphDestroy(CUgraph hGraph) {
  return Api([&] {
    return DestroyHandle(
        hGraph,
        [](Runtime& rt, uint64_t id) {
          FERRY_RETURN_IF_ERROR(rt.graphs().RemoveGraph(id));
          rt.user_objects().GraphDestroyed(id);
          return Status::Ok();
        },
        [](wire::Call::Builder call, uint64_t id) { call.initGraphDestroy().setGraph(id); });
  });
}

// cuGraphGetNodes: answered from the client's record of the graph (see
// GraphRegistry::GraphShape); an opaque graph's node count is asked of the
// server, and its nodes, which have no handles here, are not listed.
CUresult CUDAAPI cuGraphGetNodes(CUgraph hGraph, CUgraphNode* nodes, size_t* numNodes) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    if (numNodes == nullptr) return Status::InvalidArgument("numNodes is NULL");
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t id = Runtime::HandleId(hGraph);
    if (!rt.graphs().HasGraph(id)) return Status::InvalidHandle("not a graph of this client");
    if (nodes == nullptr && rt.graphs().IsOpaque(id)) {
      return rt.CurrentConnection().Call(
          [&](wire::Call::Builder call) { call.initGraphNodeCount().setGraph(id); }, {}, {},
          [&](wire::Reply::Reader reply) {
            *numNodes = static_cast<size_t>(reply.getValue());
            return Status::Ok();
          });
    }
    std::vector<ferry::client::GraphRegistry::NodeShape> shape;
    FERRY_RETURN_IF_ERROR(rt.graphs().GraphShape(id, &shape));
    std::vector<uint64_t> all;
    for (const auto& n : shape) all.push_back(n.id);
    ListNodes(all, nodes, nullptr, numNodes);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuGraphGetRootNodes(CUgraph hGraph, CUgraphNode* rootNodes, size_t* numRootNodes) {
  return Api([&]() -> Status {
    if (numRootNodes == nullptr) return Status::InvalidArgument("numRootNodes is NULL");
    std::vector<ferry::client::GraphRegistry::NodeShape> shape;
    FERRY_RETURN_IF_ERROR(Runtime::Get().graphs().GraphShape(Runtime::HandleId(hGraph), &shape));
    std::vector<uint64_t> roots;
    for (const auto& n : shape) {
      if (n.dependencies.empty()) roots.push_back(n.id);
    }
    ListNodes(roots, rootNodes, nullptr, numRootNodes);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuGraphGetEdges_v2(CUgraph hGraph, CUgraphNode* from, CUgraphNode* to,
                                    CUgraphEdgeData* edgeData, size_t* numEdges) {
  return Api([&]() -> Status {
    if (numEdges == nullptr) return Status::InvalidArgument("numEdges is NULL");
    if ((from == nullptr) != (to == nullptr)) {
      return Status::InvalidArgument("from and to must both be NULL or both be given");
    }
    std::vector<ferry::client::GraphRegistry::NodeShape> shape;
    FERRY_RETURN_IF_ERROR(Runtime::Get().graphs().GraphShape(Runtime::HandleId(hGraph), &shape));
    std::vector<uint64_t> sources, targets;
    for (const auto& n : shape) {
      for (uint64_t d : n.dependencies) {
        sources.push_back(d);
        targets.push_back(n.id);
      }
    }
    size_t capacity = *numEdges;
    ListNodes(sources, from, edgeData, numEdges);
    ListNodes(targets, to, nullptr, &capacity);
    return Status::Ok();
  });
}
CUresult CUDAAPI cuGraphGetEdges(CUgraph hGraph, CUgraphNode* from, CUgraphNode* to,
                                 size_t* numEdges) {
  return cuGraphGetEdges_v2(hGraph, from, to, nullptr, numEdges);
}

CUresult CUDAAPI cuGraphNodeGetType(CUgraphNode hNode, CUgraphNodeType* type) {
  return Api([&]() -> Status {
    if (type == nullptr) return Status::InvalidArgument("type is NULL");
    return NodeShapeOf(
        hNode, [&](const auto& n, const auto&) { *type = static_cast<CUgraphNodeType>(n.type); });
  });
}

CUresult CUDAAPI cuGraphNodeGetDependencies_v2(CUgraphNode hNode, CUgraphNode* dependencies,
                                               CUgraphEdgeData* edgeData, size_t* numDependencies) {
  return Api([&]() -> Status {
    if (numDependencies == nullptr) return Status::InvalidArgument("numDependencies is NULL");
    return NodeShapeOf(hNode, [&](const auto& n, const auto&) {
      ListNodes(n.dependencies, dependencies, edgeData, numDependencies);
    });
  });
}
CUresult CUDAAPI cuGraphNodeGetDependencies(CUgraphNode hNode, CUgraphNode* dependencies,
                                            size_t* numDependencies) {
  return cuGraphNodeGetDependencies_v2(hNode, dependencies, nullptr, numDependencies);
}

CUresult CUDAAPI cuGraphNodeGetDependentNodes_v2(CUgraphNode hNode, CUgraphNode* dependentNodes,
                                                 CUgraphEdgeData* edgeData,
                                                 size_t* numDependentNodes) {
  return Api([&]() -> Status {
    if (numDependentNodes == nullptr) return Status::InvalidArgument("numDependentNodes is NULL");
    return NodeShapeOf(hNode, [&](const auto& n, const auto& graph) {
      std::vector<uint64_t> dependents;
      for (const auto& other : graph) {
        if (std::find(other.dependencies.begin(), other.dependencies.end(), n.id) !=
            other.dependencies.end()) {
          dependents.push_back(other.id);
        }
      }
      ListNodes(dependents, dependentNodes, edgeData, numDependentNodes);
    });
  });
}
CUresult CUDAAPI cuGraphNodeGetDependentNodes(CUgraphNode hNode, CUgraphNode* dependentNodes,
                                              size_t* numDependentNodes) {
  return cuGraphNodeGetDependentNodes_v2(hNode, dependentNodes, nullptr, numDependentNodes);
}

// The structure the client recorded, as a DOT digraph (node handles, types
// and edges; `flags` asks for more detail, which ferry does not keep).
// Opaque graphs (captured, or cloned from captured ones): NOT_SUPPORTED.
CUresult CUDAAPI cuGraphDebugDotPrint(CUgraph hGraph, const char* path, unsigned int flags) {
  return Api([&]() -> Status {
    (void)flags;
    if (path == nullptr) return Status::InvalidArgument("path is NULL");
    std::vector<ferry::client::GraphRegistry::NodeShape> shape;
    FERRY_RETURN_IF_ERROR(Runtime::Get().graphs().GraphShape(Runtime::HandleId(hGraph), &shape));
    std::string dot = "digraph ferry_graph {\n";
    for (const auto& n : shape) {
      dot += "  n" + std::to_string(n.id) + " [label=\"node " + std::to_string(n.id) + " type " +
             std::to_string(n.type) + "\"];\n";
      for (uint64_t d : n.dependencies) {
        dot += "  n" + std::to_string(d) + " -> n" + std::to_string(n.id) + ";\n";
      }
    }
    dot += "}\n";
    std::FILE* file = std::fopen(path, "w");
    if (file == nullptr) {
      return Status::Cuda(CUDA_ERROR_OPERATING_SYSTEM, std::string("cannot write ") + path);
    }
    const bool written = std::fwrite(dot.data(), 1, dot.size(), file) == dot.size();
    if (std::fclose(file) != 0 || !written) {
      return Status::Cuda(CUDA_ERROR_OPERATING_SYSTEM, std::string("cannot write ") + path);
    }
    return Status::Ok();
  });
}

CUresult CUDAAPI cuGraphExecGetFlags(CUgraphExec hGraphExec, cuuint64_t* flags) {
  return Api([&]() -> Status {
    if (flags == nullptr) return Status::InvalidArgument("flags is NULL");
    uint64_t value = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().graphs().ExecFlags(Runtime::HandleId(hGraphExec), &value));
    *flags = value;
    return Status::Ok();
  });
}

// The first two generations report an error node (a node on a cycle) and a
// log (empty).
CUresult CUDAAPI cuGraphInstantiate(CUgraphExec* phGraphExec, CUgraph hGraph,
                                    CUgraphNode* phErrorNode, char* logBuffer, size_t bufferSize) {
  if (phErrorNode != nullptr) *phErrorNode = nullptr;
  if (logBuffer != nullptr && bufferSize > 0) logBuffer[0] = '\0';
  return Api([&] { return Instantiate(phGraphExec, hGraph, 0, phErrorNode); });
}
CUresult CUDAAPI cuGraphInstantiate_v2(CUgraphExec* phGraphExec, CUgraph hGraph,
                                       CUgraphNode* phErrorNode, char* logBuffer,
                                       size_t bufferSize) {
  return cuGraphInstantiate(phGraphExec, hGraph, phErrorNode, logBuffer, bufferSize);
}
CUresult CUDAAPI cuGraphInstantiateWithFlags(CUgraphExec* phGraphExec, CUgraph hGraph,
                                             unsigned long long flags) {
  return Api([&] { return Instantiate(phGraphExec, hGraph, flags); });
}

// With CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD the graph is also uploaded on
// hUploadStream.
static CUresult InstantiateWithParams(CUgraphExec* phGraphExec, CUgraph hGraph,
                                      CUDA_GRAPH_INSTANTIATE_PARAMS* params, bool per_thread) {
  return Api([&]() -> Status {
    if (params == nullptr) return Status::InvalidArgument("instantiateParams is NULL");
    params->hErrNode_out = nullptr;
    params->result_out = CUDA_GRAPH_INSTANTIATE_ERROR;
    Status status = Instantiate(phGraphExec, hGraph, params->flags, &params->hErrNode_out);
    if (params->hErrNode_out != nullptr) {
      params->result_out = CUDA_GRAPH_INSTANTIATE_INVALID_STRUCTURE;
    }
    FERRY_RETURN_IF_ERROR(status);
    if (params->flags & CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD) {
      FERRY_RETURN_IF_ERROR(LaunchOrUpload(*phGraphExec, params->hUploadStream, per_thread, true));
    }
    params->result_out = CUDA_GRAPH_INSTANTIATE_SUCCESS;
    return Status::Ok();
  });
}
CUresult CUDAAPI cuGraphInstantiateWithParams(CUgraphExec* phGraphExec, CUgraph hGraph,
                                              CUDA_GRAPH_INSTANTIATE_PARAMS* instantiateParams) {
  return InstantiateWithParams(phGraphExec, hGraph, instantiateParams, false);
}
CUresult CUDAAPI cuGraphInstantiateWithParams_ptsz(
    CUgraphExec* phGraphExec, CUgraph hGraph, CUDA_GRAPH_INSTANTIATE_PARAMS* instantiateParams) {
  return InstantiateWithParams(phGraphExec, hGraph, instantiateParams, true);
}

CUresult CUDAAPI cuGraphExecDestroy(CUgraphExec hGraphExec) {
  return Api([&] {
    return DestroyHandle(
        hGraphExec,
        [](Runtime& rt, uint64_t id) {
          ForgetGraphMemory(id);
          FERRY_RETURN_IF_ERROR(rt.graphs().RemoveExec(id));
          ferry::client::UserObjects::Refs refs;
          ferry::client::UserObjects::LaunchStreams streams;
          rt.user_objects().ExecDestroyed(id, &refs, &streams);
          ferry::client::ReleaseBehindLaunches(std::move(refs), streams);
          return Status::Ok();
        },
        [](wire::Call::Builder call, uint64_t id) { call.initGraphExecDestroy().setExec(id); });
  });
}

CUresult CUDAAPI cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream) {
  return Api([&] { return LaunchOrUpload(hGraphExec, hStream, false, false); });
}
CUresult CUDAAPI cuGraphLaunch_ptsz(CUgraphExec hGraphExec, CUstream hStream) {
  return Api([&] { return LaunchOrUpload(hGraphExec, hStream, true, false); });
}
CUresult CUDAAPI cuGraphUpload(CUgraphExec hGraphExec, CUstream hStream) {
  return Api([&] { return LaunchOrUpload(hGraphExec, hStream, false, true); });
}
CUresult CUDAAPI cuGraphUpload_ptsz(CUgraphExec hGraphExec, CUstream hStream) {
  return Api([&] { return LaunchOrUpload(hGraphExec, hStream, true, true); });
}

}  // extern "C"

// --- explicit graph nodes ------------------------------------------------------------
// Each node gets a client-chosen id and one fire-and-forget call; its work is
// checked by the server as the stream-ordered call of the same kind would be.

namespace {

// Sends a graphAddNode call for a new node of `graph` after `deps`; `fill`
// sets the node's kind. *node gets its handle.
Status AddNode(CUgraphNode* node, CUgraph graph, const CUgraphNode* deps, size_t count,
               CUgraphNodeType type, const std::function<void(wire::GraphAddNode::Builder)>& fill,
               ferry::client::OutBytes bulk = {}) {
  Runtime& rt = Runtime::Get();
  if (node == nullptr) return Status::InvalidArgument("phGraphNode is NULL");
  if (count > 0 && deps == nullptr) return Status::InvalidArgument("dependencies is NULL");
  FERRY_RETURN_IF_ERROR(rt.Ready());
  const uint64_t graph_id = Runtime::HandleId(graph);
  if (!rt.graphs().HasGraph(graph_id)) return Status::InvalidHandle("not a graph of this client");
  for (size_t i = 0; i < count; ++i) {
    if (!rt.graphs().IsNodeOf(Runtime::HandleId(deps[i]), graph_id)) {
      return Status::InvalidArgument("dependency " + std::to_string(i) +
                                     " is not a node of the graph");
    }
  }
  std::vector<uint64_t> dependencies(count);
  for (size_t i = 0; i < count; ++i) dependencies[i] = Runtime::HandleId(deps[i]);
  const uint64_t id = rt.graphs().NewNode(graph_id, type, dependencies);
  FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Post(
      [&](wire::Call::Builder call) {
        auto args = call.initGraphAddNode();
        args.setGraph(graph_id);
        args.setNode(id);
        auto list = args.initDependencies(static_cast<unsigned>(count));
        for (size_t i = 0; i < count; ++i) list.set(static_cast<unsigned>(i), dependencies[i]);
        fill(args);
      },
      bulk));
  *node = Runtime::ToHandle<CUgraphNode>(id);
  return Status::Ok();
}

}  // namespace

Status ferry::client::AddWorkNode(CUgraphNode* node, CUgraph graph, const CUgraphNode* deps,
                                  size_t count, const GraphNodeWork& work) {
  if (work.type() == CU_GRAPH_NODE_TYPE_GRAPH && Runtime::HandleId(graph) == work.child_graph()) {
    return Status::InvalidArgument("a graph cannot be its own child");
  }
  if (work.type() == CU_GRAPH_NODE_TYPE_HOST &&
      Runtime::Get().graphs().IsEmbedded(Runtime::HandleId(graph))) {
    return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, "child graphs with host nodes");
  }
  FERRY_RETURN_IF_ERROR(AddNode(
      node, graph, deps, count, work.type(),
      [&](wire::GraphAddNode::Builder args) { work.FillAdd(args); }, work.bulk()));
  Runtime& rt = Runtime::Get();
  const uint64_t id = Runtime::HandleId(*node);
  if (auto record = work.Record(); record != nullptr) rt.graphs().SetNodeParams(id, record);
  if (work.type() == CU_GRAPH_NODE_TYPE_GRAPH) {
    rt.graphs().NoteChildGraph(id, work.child_graph());
    rt.user_objects().ChildAdded(Runtime::HandleId(graph), id, work.child_graph());
  }
  return Status::Ok();
}

namespace {

Status AddKernelNode(CUgraphNode* node, CUgraph graph, const CUgraphNode* deps, size_t count,
                     const CUDA_KERNEL_NODE_PARAMS_v2* p) {
  GraphNodeWork work;
  FERRY_RETURN_IF_ERROR(work.FromKernel(p));
  return AddWorkNode(node, graph, deps, count, work);
}

// cuGraph*NodeGetParams: what `node` was added with, as the client recorded
// it (or as cuGraph*NodeSetParams last set it).
Status RecordedParams(CUgraphNode node, CUgraphNodeType type, const void* out,
                      std::shared_ptr<const RecordedNodeParams>* params) {
  if (out == nullptr) return Status::InvalidArgument("nodeParams is NULL");
  return Runtime::Get().graphs().NodeParams(Runtime::HandleId(node), type, params);
}

// cuGraphExecKernelNodeSetParams: the kernel and its parameters are
// checked as a new kernel node's are, here and on the server.
Status SetExecKernelNode(CUgraphExec exec, CUgraphNode node, const CUDA_KERNEL_NODE_PARAMS_v2* p) {
  GraphNodeWork work;
  FERRY_RETURN_IF_ERROR(work.FromKernel(p));
  return SetNodeWork(exec, node, work);
}

// cuGraphExecUpdate(_v2): the client compares the structure it recorded of
// the graph `exec` was instantiated from (as it was then) with `graph`'s;
// when they match, one message makes `exec` run `graph`'s nodes (kernels,
// arguments, memset values and ranges, copy ranges, child graphs), each
// checked when it was added to `graph`, as a new node. Executable graphs of
// captured graphs (or their clones), whose structure only the server knows, answer
// NOT_SUPPORTED in the result: callers re-instantiate, as frameworks do when
// an update fails. `info` is always filled (v2's contract).
Status ExecUpdate(CUgraphExec exec, CUgraph graph, CUgraphExecUpdateResultInfo* info) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  if (info == nullptr) return Status::InvalidArgument("resultInfo is NULL");
  *info = CUgraphExecUpdateResultInfo{};
  const uint64_t exec_id = Runtime::HandleId(exec);
  const uint64_t graph_id = Runtime::HandleId(graph);
  ferry::client::GraphRegistry::ExecUpdateCheck check;
  FERRY_RETURN_IF_ERROR(rt.graphs().CheckExecUpdate(exec_id, graph_id, &check));
  info->result = static_cast<CUgraphExecUpdateResult>(check.result);
  info->errorNode = Runtime::ToHandle<CUgraphNode>(check.error_node);
  info->errorFromNode = Runtime::ToHandle<CUgraphNode>(check.error_from_node);
  if (check.result != CU_GRAPH_EXEC_UPDATE_SUCCESS) {
    return Status::Cuda(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE,
                        check.result == CU_GRAPH_EXEC_UPDATE_ERROR_NOT_SUPPORTED
                            ? "the graph or the executable graph's has captured nodes, whose "
                              "structure only the server knows: instantiate the graph"
                            : "the graph's topology differs from the executable graph's");
  }
  Status status = rt.CurrentConnection().Call([&](wire::Call::Builder call) {
    auto args = call.initGraphExecUpdate();
    args.setExec(exec_id);
    args.setGraph(graph_id);
  });
  if (!status.ok()) {
    info->result = CU_GRAPH_EXEC_UPDATE_ERROR;
    return status;
  }
  // The executable graph now holds the new graph's user-object references;
  // its old ones go once its launches so far have finished.
  ferry::client::UserObjects::Refs old;
  ferry::client::UserObjects::LaunchStreams streams;
  rt.user_objects().ExecUpdated(exec_id, graph_id, &old, &streams);
  ferry::client::ReleaseBehindLaunches(std::move(old), streams);
  return Status::Ok();
}

// The node kinds cuGraphNodeSetEnabled applies to.
constexpr std::initializer_list<int> kCanBeDisabled = {
    CU_GRAPH_NODE_TYPE_KERNEL, CU_GRAPH_NODE_TYPE_MEMSET, CU_GRAPH_NODE_TYPE_MEMCPY};

}  // namespace

extern "C" {

CUresult CUDAAPI cuGraphAddEmptyNode(CUgraphNode* phGraphNode, CUgraph hGraph,
                                     const CUgraphNode* dependencies, size_t numDependencies) {
  return Api([&] {
    return AddNode(phGraphNode, hGraph, dependencies, numDependencies, CU_GRAPH_NODE_TYPE_EMPTY,
                   [](wire::GraphAddNode::Builder args) { args.setEmpty(); });
  });
}

CUresult CUDAAPI cuGraphAddKernelNode(CUgraphNode* phGraphNode, CUgraph hGraph,
                                      const CUgraphNode* dependencies, size_t numDependencies,
                                      const CUDA_KERNEL_NODE_PARAMS_v1* nodeParams) {
  return Api([&]() -> Status {
    if (nodeParams == nullptr) return Status::InvalidArgument("nodeParams is NULL");
    const CUDA_KERNEL_NODE_PARAMS_v2 p = KernelParamsV2(*nodeParams);
    return AddKernelNode(phGraphNode, hGraph, dependencies, numDependencies, &p);
  });
}
CUresult CUDAAPI cuGraphAddKernelNode_v2(CUgraphNode* phGraphNode, CUgraph hGraph,
                                         const CUgraphNode* dependencies, size_t numDependencies,
                                         const CUDA_KERNEL_NODE_PARAMS_v2* nodeParams) {
  return Api([&] {
    return AddKernelNode(phGraphNode, hGraph, dependencies, numDependencies, nodeParams);
  });
}

CUresult CUDAAPI cuGraphExecKernelNodeSetParams(CUgraphExec hGraphExec, CUgraphNode hNode,
                                                const CUDA_KERNEL_NODE_PARAMS_v1* nodeParams) {
  return Api([&]() -> Status {
    if (nodeParams == nullptr) return Status::InvalidArgument("nodeParams is NULL");
    const CUDA_KERNEL_NODE_PARAMS_v2 p = KernelParamsV2(*nodeParams);
    return SetExecKernelNode(hGraphExec, hNode, &p);
  });
}
CUresult CUDAAPI cuGraphExecKernelNodeSetParams_v2(CUgraphExec hGraphExec, CUgraphNode hNode,
                                                   const CUDA_KERNEL_NODE_PARAMS_v2* nodeParams) {
  return Api([&] { return SetExecKernelNode(hGraphExec, hNode, nodeParams); });
}

CUresult CUDAAPI cuGraphExecUpdate_v2(CUgraphExec hGraphExec, CUgraph hGraph,
                                      CUgraphExecUpdateResultInfo* resultInfo) {
  return Api([&] { return ExecUpdate(hGraphExec, hGraph, resultInfo); });
}
// v1 reports the result and the error node through two pointers, both required.
CUresult CUDAAPI cuGraphExecUpdate(CUgraphExec hGraphExec, CUgraph hGraph,
                                   CUgraphNode* hErrorNode_out,
                                   CUgraphExecUpdateResult* updateResult_out) {
  return Api([&]() -> Status {
    if (hErrorNode_out == nullptr || updateResult_out == nullptr) {
      return Status::InvalidArgument("hErrorNode_out or updateResult_out is NULL");
    }
    CUgraphExecUpdateResultInfo info{};
    Status status = ExecUpdate(hGraphExec, hGraph, &info);
    *hErrorNode_out = info.errorNode;
    *updateResult_out = info.result;
    return status;
  });
}

// The child is copied into the node as it is now (the server does the
// copying); cuGraphChildGraphNodeGetGraph names that copy
// (client/api_graph_host.cc).
CUresult CUDAAPI cuGraphAddChildGraphNode(CUgraphNode* phGraphNode, CUgraph hGraph,
                                          const CUgraphNode* dependencies, size_t numDependencies,
                                          CUgraph childGraph) {
  return Api([&]() -> Status {
    GraphNodeWork work;
    FERRY_RETURN_IF_ERROR(work.FromChildGraph(childGraph));
    return AddWorkNode(phGraphNode, hGraph, dependencies, numDependencies, work);
  });
}

// cuGraphNodeSetEnabled: kernel, memset and memcpy nodes; the client keeps
// the state, so cuGraphNodeGetEnabled is answered here.
CUresult CUDAAPI cuGraphNodeSetEnabled(CUgraphExec hGraphExec, CUgraphNode hNode,
                                       unsigned int isEnabled) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t exec = Runtime::HandleId(hGraphExec);
    const uint64_t node = Runtime::HandleId(hNode);
    FERRY_RETURN_IF_ERROR(rt.graphs().CheckExecNode(exec, node, kCanBeDisabled));
    FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Post([&](wire::Call::Builder call) {
      auto args = call.initGraphExecNodeSetEnabled();
      args.setExec(exec);
      args.setNode(node);
      args.setEnabled(isEnabled != 0);
    }));
    rt.graphs().SetNodeEnabled(exec, node, isEnabled != 0);
    return Status::Ok();
  });
}
CUresult CUDAAPI cuGraphNodeGetEnabled(CUgraphExec hGraphExec, CUgraphNode hNode,
                                       unsigned int* isEnabled) {
  return Api([&]() -> Status {
    if (isEnabled == nullptr) return Status::InvalidArgument("isEnabled is NULL");
    Runtime& rt = Runtime::Get();
    const uint64_t exec = Runtime::HandleId(hGraphExec);
    const uint64_t node = Runtime::HandleId(hNode);
    FERRY_RETURN_IF_ERROR(rt.graphs().CheckExecNode(exec, node, kCanBeDisabled));
    *isEnabled = rt.graphs().NodeEnabled(exec, node) ? 1 : 0;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuGraphAddMemsetNode(CUgraphNode* phGraphNode, CUgraph hGraph,
                                      const CUgraphNode* dependencies, size_t numDependencies,
                                      const CUDA_MEMSET_NODE_PARAMS* memsetParams, CUcontext ctx) {
  return Api([&]() -> Status {
    GraphNodeWork work;
    FERRY_RETURN_IF_ERROR(work.FromMemset(memsetParams, ctx));
    return AddWorkNode(phGraphNode, hGraph, dependencies, numDependencies, work);
  });
}

// Device-to-device copies of one row (WidthInBytes at the given byte
// offsets); anything else is not forwarded.
CUresult CUDAAPI cuGraphAddMemcpyNode(CUgraphNode* phGraphNode, CUgraph hGraph,
                                      const CUgraphNode* dependencies, size_t numDependencies,
                                      const CUDA_MEMCPY3D* copyParams, CUcontext ctx) {
  return Api([&]() -> Status {
    GraphNodeWork work;
    FERRY_RETURN_IF_ERROR(work.FromMemcpy(copyParams, ctx));
    return AddWorkNode(phGraphNode, hGraph, dependencies, numDependencies, work);
  });
}

CUresult CUDAAPI cuGraphKernelNodeGetParams_v2(CUgraphNode hNode,
                                               CUDA_KERNEL_NODE_PARAMS_v2* nodeParams) {
  return Api([&]() -> Status {
    std::shared_ptr<const RecordedNodeParams> params;
    FERRY_RETURN_IF_ERROR(RecordedParams(hNode, CU_GRAPH_NODE_TYPE_KERNEL, nodeParams, &params));
    *nodeParams = params->kernel;
    return Status::Ok();
  });
}
// The v1 structure has no kern and no ctx: a node added with a CUkernel
// answers it as its func, as the v1 entry point can only say.
CUresult CUDAAPI cuGraphKernelNodeGetParams(CUgraphNode hNode,
                                            CUDA_KERNEL_NODE_PARAMS_v1* nodeParams) {
  return Api([&]() -> Status {
    std::shared_ptr<const RecordedNodeParams> params;
    FERRY_RETURN_IF_ERROR(RecordedParams(hNode, CU_GRAPH_NODE_TYPE_KERNEL, nodeParams, &params));
    const CUDA_KERNEL_NODE_PARAMS_v2& k = params->kernel;
    CUDA_KERNEL_NODE_PARAMS_v1 v1{};
    v1.func = k.func != nullptr ? k.func : reinterpret_cast<CUfunction>(k.kern);
    v1.gridDimX = k.gridDimX;
    v1.gridDimY = k.gridDimY;
    v1.gridDimZ = k.gridDimZ;
    v1.blockDimX = k.blockDimX;
    v1.blockDimY = k.blockDimY;
    v1.blockDimZ = k.blockDimZ;
    v1.sharedMemBytes = k.sharedMemBytes;
    v1.kernelParams = k.kernelParams;
    v1.extra = nullptr;
    *nodeParams = v1;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuGraphMemsetNodeGetParams(CUgraphNode hNode,
                                            CUDA_MEMSET_NODE_PARAMS* nodeParams) {
  return Api([&]() -> Status {
    std::shared_ptr<const RecordedNodeParams> params;
    FERRY_RETURN_IF_ERROR(RecordedParams(hNode, CU_GRAPH_NODE_TYPE_MEMSET, nodeParams, &params));
    *nodeParams = params->memset;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuGraphMemcpyNodeGetParams(CUgraphNode hNode, CUDA_MEMCPY3D* nodeParams) {
  return Api([&]() -> Status {
    std::shared_ptr<const RecordedNodeParams> params;
    FERRY_RETURN_IF_ERROR(RecordedParams(hNode, CU_GRAPH_NODE_TYPE_MEMCPY, nodeParams, &params));
    *nodeParams = params->memcpy;
    return Status::Ok();
  });
}

}  // extern "C"
