// Entry points: stream capture and graphs. A capture happens on the server,
// where the work runs (schema/ferry.capnp, "stream capture and graphs"); the
// client records which streams capture, so capture queries cost no round
// trip while none does, and chooses the ids of graphs and executable graphs.
// Beginning a capture, instantiating, launching and destroying are
// fire-and-forget; ending a capture waits, since the driver reports an
// invalidated capture there. A graph launch is one call however many nodes
// the graph has.
//
// Not forwarded (unsupported_functions.txt): the explicit graph-building API
// (nodes, dependencies, clone, update), capture into an existing graph, and
// node handles.
#include <cuda.h>

#include <cstring>
#include <string>

#include "client/cuda_result.h"
#include "client/runtime.h"

using ferry::Status;
using ferry::client::Api;
using ferry::client::CaptureState;
using ferry::client::Runtime;
using ferry::client::StreamTarget;
namespace wire = ferry::wire;

namespace {

// The calling thread's capture mode (cuThreadExchangeStreamCaptureMode).
thread_local CUstreamCaptureMode thread_capture_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

bool KnownCaptureMode(int mode) {
  return mode == CU_STREAM_CAPTURE_MODE_GLOBAL || mode == CU_STREAM_CAPTURE_MODE_THREAD_LOCAL ||
         mode == CU_STREAM_CAPTURE_MODE_RELAXED;
}

Status BeginCapture(CUstream stream, bool per_thread, int mode) {
  Runtime& rt = Runtime::Get();
  if (!KnownCaptureMode(mode)) {
    return Status::InvalidArgument("unknown stream capture mode " + std::to_string(mode));
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
  FERRY_RETURN_IF_ERROR(rt.graphs().BeginCapture(target.stream, &capture));
  Status status = rt.connection().Post([&](wire::Call::Builder call) {
    auto args = call.initStreamBeginCapture();
    args.setCtx(target.ctx);
    args.setStream(target.stream);
    args.setMode(static_cast<uint32_t>(mode));
    args.setGraph(capture.graph);
  });
  if (!status.ok()) (void)rt.graphs().EndCapture(target.stream, &capture);
  return status;
}

Status EndCapture(CUstream stream, bool per_thread, CUgraph* graph) {
  Runtime& rt = Runtime::Get();
  if (graph == nullptr) return Status::InvalidArgument("phGraph is NULL");
  *graph = nullptr;
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  CaptureState capture;
  FERRY_RETURN_IF_ERROR(rt.graphs().EndCapture(target.stream, &capture));
  FERRY_RETURN_IF_ERROR(rt.connection().Call([&](wire::Call::Builder call) {
    auto args = call.initStreamEndCapture();
    args.setCtx(target.ctx);
    args.setStream(target.stream);
  }));
  rt.graphs().AddGraph(capture.graph);
  *graph = Runtime::ToHandle<CUgraph>(capture.graph);
  return Status::Ok();
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
  FERRY_RETURN_IF_ERROR(rt.connection().Call(
      [&](wire::Call::Builder call) {
        auto args = call.initStreamCaptureStatus();
        args.setCtx(target.ctx);
        args.setStream(target.stream);
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
// is active or invalidated. Dependencies (node handles) are not forwarded:
// the set is reported empty.
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

Status Instantiate(CUgraphExec* exec, CUgraph graph, unsigned long long flags) {
  Runtime& rt = Runtime::Get();
  if (exec == nullptr) return Status::InvalidArgument("phGraphExec is NULL");
  FERRY_RETURN_IF_ERROR(rt.Ready());
  const uint64_t graph_id = Runtime::HandleId(graph);
  if (!rt.graphs().HasGraph(graph_id)) return Status::InvalidHandle("not a graph of this client");
  const uint64_t id = rt.graphs().NewExec();
  FERRY_RETURN_IF_ERROR(rt.connection().Post([&](wire::Call::Builder call) {
    auto args = call.initGraphInstantiate();
    args.setGraph(graph_id);
    args.setExec(id);
    args.setFlags(flags);
  }));
  *exec = Runtime::ToHandle<CUgraphExec>(id);
  return Status::Ok();
}

// cuGraphLaunch (`upload` false) and cuGraphUpload: one call, ordered on the
// stream.
Status LaunchOrUpload(CUgraphExec exec, CUstream stream, bool per_thread, bool upload) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  const uint64_t id = Runtime::HandleId(exec);
  if (!rt.graphs().HasExec(id)) {
    return Status::InvalidHandle("not an executable graph of this client");
  }
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  return rt.connection().Post([&](wire::Call::Builder call) {
    wire::GraphLaunch::Builder args = upload ? call.initGraphUpload() : call.initGraphLaunch();
    args.setCtx(target.ctx);
    args.setStream(target.stream);
    args.setExec(id);
  });
}

}  // namespace

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

CUresult CUDAAPI cuStreamGetCaptureInfo(CUstream hStream, CUstreamCaptureStatus* captureStatus_out,
                                        cuuint64_t* id_out) {
  return Api([&] {
    return GetCaptureInfo(hStream, false, captureStatus_out, id_out, nullptr, nullptr, nullptr,
                          nullptr);
  });
}
CUresult CUDAAPI cuStreamGetCaptureInfo_ptsz(CUstream hStream,
                                             CUstreamCaptureStatus* captureStatus_out,
                                             cuuint64_t* id_out) {
  return Api([&] {
    return GetCaptureInfo(hStream, true, captureStatus_out, id_out, nullptr, nullptr, nullptr,
                          nullptr);
  });
}
CUresult CUDAAPI cuStreamGetCaptureInfo_v2(CUstream hStream,
                                           CUstreamCaptureStatus* captureStatus_out,
                                           cuuint64_t* id_out, CUgraph* graph_out,
                                           const CUgraphNode** dependencies_out,
                                           size_t* numDependencies_out) {
  return Api([&] {
    return GetCaptureInfo(hStream, false, captureStatus_out, id_out, graph_out, dependencies_out,
                          nullptr, numDependencies_out);
  });
}
CUresult CUDAAPI cuStreamGetCaptureInfo_v2_ptsz(CUstream hStream,
                                                CUstreamCaptureStatus* captureStatus_out,
                                                cuuint64_t* id_out, CUgraph* graph_out,
                                                const CUgraphNode** dependencies_out,
                                                size_t* numDependencies_out) {
  return Api([&] {
    return GetCaptureInfo(hStream, true, captureStatus_out, id_out, graph_out, dependencies_out,
                          nullptr, numDependencies_out);
  });
}
CUresult CUDAAPI cuStreamGetCaptureInfo_v3(CUstream hStream,
                                           CUstreamCaptureStatus* captureStatus_out,
                                           cuuint64_t* id_out, CUgraph* graph_out,
                                           const CUgraphNode** dependencies_out,
                                           const CUgraphEdgeData** edgeData_out,
                                           size_t* numDependencies_out) {
  return Api([&] {
    return GetCaptureInfo(hStream, false, captureStatus_out, id_out, graph_out, dependencies_out,
                          edgeData_out, numDependencies_out);
  });
}
CUresult CUDAAPI cuStreamGetCaptureInfo_v3_ptsz(CUstream hStream,
                                                CUstreamCaptureStatus* captureStatus_out,
                                                cuuint64_t* id_out, CUgraph* graph_out,
                                                const CUgraphNode** dependencies_out,
                                                const CUgraphEdgeData** edgeData_out,
                                                size_t* numDependencies_out) {
  return Api([&] {
    return GetCaptureInfo(hStream, true, captureStatus_out, id_out, graph_out, dependencies_out,
                          edgeData_out, numDependencies_out);
  });
}

CUresult CUDAAPI cuGraphCreate(CUgraph* phGraph, unsigned int flags) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    if (phGraph == nullptr) return Status::InvalidArgument("phGraph is NULL");
    if (flags != 0) return Status::InvalidArgument("cuGraphCreate flags must be 0");
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t id = rt.graphs().NewGraph();
    FERRY_RETURN_IF_ERROR(rt.connection().Post([&](wire::Call::Builder call) {
      auto args = call.initGraphCreate();
      args.setGraph(id);
      args.setFlags(flags);
    }));
    *phGraph = Runtime::ToHandle<CUgraph>(id);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuGraphDestroy(CUgraph hGraph) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t id = Runtime::HandleId(hGraph);
    FERRY_RETURN_IF_ERROR(rt.graphs().RemoveGraph(id));
    return rt.connection().Post(
        [&](wire::Call::Builder call) { call.initGraphDestroy().setGraph(id); });
  });
}

// cuGraphGetNodes: the count only. Node handles are not forwarded.
CUresult CUDAAPI cuGraphGetNodes(CUgraph hGraph, CUgraphNode* nodes, size_t* numNodes) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    if (numNodes == nullptr) return Status::InvalidArgument("numNodes is NULL");
    if (nodes != nullptr) {
      return Status::Unimplemented(
          "cuGraphGetNodes: graph node handles are not forwarded by ferry");
    }
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t id = Runtime::HandleId(hGraph);
    if (!rt.graphs().HasGraph(id)) return Status::InvalidHandle("not a graph of this client");
    return rt.connection().Call(
        [&](wire::Call::Builder call) { call.initGraphNodeCount().setGraph(id); }, {}, {},
        [&](wire::Reply::Reader reply) {
          *numNodes = static_cast<size_t>(reply.getValue());
          return Status::Ok();
        });
  });
}

// The first two generations report an error node and a log; nothing fails
// late here, so the node is NULL and the log empty.
CUresult CUDAAPI cuGraphInstantiate(CUgraphExec* phGraphExec, CUgraph hGraph,
                                    CUgraphNode* phErrorNode, char* logBuffer, size_t bufferSize) {
  if (phErrorNode != nullptr) *phErrorNode = nullptr;
  if (logBuffer != nullptr && bufferSize > 0) logBuffer[0] = '\0';
  return Api([&] { return Instantiate(phGraphExec, hGraph, 0); });
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
    FERRY_RETURN_IF_ERROR(Instantiate(phGraphExec, hGraph, params->flags));
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
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t id = Runtime::HandleId(hGraphExec);
    FERRY_RETURN_IF_ERROR(rt.graphs().RemoveExec(id));
    return rt.connection().Post(
        [&](wire::Call::Builder call) { call.initGraphExecDestroy().setExec(id); });
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
