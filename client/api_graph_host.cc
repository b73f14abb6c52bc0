// Entry points: graph host nodes (schema/ferry.capnp, "Graph host nodes") —
// cuGraphAddHostNode, cuGraphHostNode{Get,Set}Params,
// cuGraphExecHostNodeSetParams, and cuLaunchHostFunc on a capturing stream
// (client/api_stream_event.cc calls CaptureHostFunc).
//
// A host node's function runs in this process, mid-replay: the server knows
// each (function, user data) pair by an id (HostFunctionId), and a launch of
// an executable graph with host nodes carries one host gate per host node
// (client/api_graph.cc, Connection::PostHostGates). When the replay reaches a
// host node, the connection's host-callback thread runs the function the
// gate names and opens the gate; the replay goes on. As with cuLaunchHostFunc,
// the function is skipped when the launch failed before the node, and it must
// not call CUDA functions that wait.
//
// Also here: cuGraphChildGraphNodeGetGraph. A child-graph node runs its own
// copy of the child (made when the node was added); the handle names that
// copy, so its edits reach the node's later instantiations (cuda.h). It
// belongs to the node: cuGraphDestroy refuses it, and it goes with the node.
#include <cuda.h>

#include <map>
#include <mutex>
#include <utility>

#include "client/entry_point.h"
#include "client/graph_node_work.h"

using ferry::client::AddWorkNode;
using ferry::client::CaptureState;
using ferry::client::GraphNodeWork;
using ferry::client::RecordedNodeParams;
using ferry::client::SetNodeWork;

namespace {

// One id per distinct (function, user data) pair: a program that captures
// the same callback in a loop does not grow the table. Registration with the
// connection happens under the lock, so no id is sent before its function
// is known to the connection.
class HostFunctionIds {
 public:
  Status Id(CUhostFn fn, void* user_data, uint64_t* id) {
    Runtime& rt = Runtime::Get();
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, added] = ids_.try_emplace({fn, user_data}, 0);
    if (added) {
      it->second = next_++;
      // Known to every server's connection: the graph may be launched on any.
      for (size_t part = 0; part < rt.part_count(); ++part) {
        rt.PartConnection(part).RegisterHostFunction(it->second,
                                                     LaunchedHostFunction(fn, user_data));
      }
    }
    *id = it->second;
    return Status::Ok();
  }

 private:
  std::mutex mu_;
  std::map<std::pair<CUhostFn, void*>, uint64_t> ids_;
  uint64_t next_ = 1;
};

HostFunctionIds& Ids() {
  static auto* ids = new HostFunctionIds();  // never destroyed (atexit-safe)
  return *ids;
}

Status HostNodeParams(CUgraphNode node, CUDA_HOST_NODE_PARAMS* out) {
  if (out == nullptr) return Status::InvalidArgument("nodeParams is NULL");
  FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
  std::shared_ptr<const RecordedNodeParams> params;
  FERRY_RETURN_IF_ERROR(Runtime::Get().graphs().NodeParams(Runtime::HandleId(node),
                                                           CU_GRAPH_NODE_TYPE_HOST, &params));
  *out = params->host;
  return Status::Ok();
}

// cuGraphHostNodeSetParams (`exec` NULL) and cuGraphExecHostNodeSetParams.
Status SetHostNode(CUgraphExec exec, CUgraphNode node, const CUDA_HOST_NODE_PARAMS* p) {
  FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
  GraphNodeWork work;
  FERRY_RETURN_IF_ERROR(work.FromHost(p));
  return SetNodeWork(exec, node, work);
}

}  // namespace

Status ferry::client::HostFunctionId(CUhostFn fn, void* user_data, uint64_t* id) {
  FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
  return Ids().Id(fn, user_data, id);
}

ferry::client::Connection::HostFunction LaunchedHostFunction(CUhostFn fn, void* user_data) {
  return [fn, user_data](const Status&, bool stream_failed) {
    if (!stream_failed) fn(user_data);
  };
}

Status CaptureHostFunc(const StreamTarget& target, CUhostFn fn, void* user_data, bool* captured) {
  Runtime& rt = Runtime::Get();
  *captured = false;
  CaptureState capture;
  if (!rt.graphs().AnyCapture() || target.stream == 0 ||
      !rt.graphs().FindCapture(target.stream, &capture)) {
    return Status::Ok();
  }
  *captured = true;
  uint64_t id = 0;
  FERRY_RETURN_IF_ERROR(ferry::client::HostFunctionId(fn, user_data, &id));
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(target.ctx).Post([&](wire::Call::Builder call) {
    auto args = call.initStreamCaptureHostFunc();
    SetStreamTarget(args, target);
    args.setHostFunction(id);
  }));
  rt.graphs().NoteCapturedHostNode(capture.graph);
  return Status::Ok();
}

extern "C" {

CUresult CUDAAPI cuGraphAddHostNode(CUgraphNode* phGraphNode, CUgraph hGraph,
                                    const CUgraphNode* dependencies, size_t numDependencies,
                                    const CUDA_HOST_NODE_PARAMS* nodeParams) {
  return Api([&]() -> Status {
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    GraphNodeWork work;
    FERRY_RETURN_IF_ERROR(work.FromHost(nodeParams));
    return AddWorkNode(phGraphNode, hGraph, dependencies, numDependencies, work);
  });
}

CUresult CUDAAPI cuGraphHostNodeGetParams(CUgraphNode hNode, CUDA_HOST_NODE_PARAMS* nodeParams) {
  return Api([&] { return HostNodeParams(hNode, nodeParams); });
}

CUresult CUDAAPI cuGraphHostNodeSetParams(CUgraphNode hNode,
                                          const CUDA_HOST_NODE_PARAMS* nodeParams) {
  return Api([&] { return SetHostNode(nullptr, hNode, nodeParams); });
}

CUresult CUDAAPI cuGraphChildGraphNodeGetGraph(CUgraphNode hNode, CUgraph* phGraph) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    if (phGraph == nullptr) return Status::InvalidArgument("phGraph is NULL");
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t node = Runtime::HandleId(hNode);
    uint64_t graph = 0;
    bool is_new = false;
    std::vector<uint64_t> node_ids;
    FERRY_RETURN_IF_ERROR(rt.graphs().EmbeddedGraph(node, &graph, &is_new, &node_ids));
    if (is_new) {
      FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Post([&](wire::Call::Builder call) {
        auto args = call.initGraphChildGraphNodeGetGraph();
        args.setNode(node);
        args.setGraph(graph);
        auto list = args.initNodes(static_cast<unsigned>(node_ids.size()));
        for (size_t i = 0; i < node_ids.size(); ++i)
          list.set(static_cast<unsigned>(i), node_ids[i]);
      }));
    }
    *phGraph = Runtime::ToHandle<CUgraph>(graph);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuGraphExecHostNodeSetParams(CUgraphExec hGraphExec, CUgraphNode hNode,
                                              const CUDA_HOST_NODE_PARAMS* nodeParams) {
  return Api([&]() -> Status {
    if (hGraphExec == nullptr) return Status::InvalidHandle("hGraphExec is NULL");
    return SetHostNode(hGraphExec, hNode, nodeParams);
  });
}

}  // extern "C"
