// Entry points: explicit-graph editing and node parameters. The client
// records each graph's explicitly added nodes and edges (GraphRegistry), so
// every edit is checked here as the driver checks it and sent
// fire-and-forget; structure queries (client/api_graph.cc) follow the edits
// at no cost. The server runs a graph's nodes in a topological order of
// their dependencies, fixed at instantiation; a graph with a cycle is
// refused there, and here first (cuGraphInstantiate*, client/api_graph.cc).
//
// Node parameters: one path, SetNodeWork, for the kind-specific setters
// (cuGraph{Kernel,Memset,Memcpy}NodeSetParams, cuGraphExec{Kernel,Memset,
// Memcpy,ChildGraph}NodeSetParams) and the generic CUgraphNodeParams entry
// points (cuGraphAddNode, cuGraphNodeSetParams, cuGraphExecNodeSetParams),
// which turn their parameters into the same GraphNodeWork the kind-specific
// calls make. Node kinds ferry does not forward answer NOT_SUPPORTED and log
// once which kind it was. Kernel node attributes: see SetKernelAttribute.
#include <cuda.h>

#include <string>
#include <vector>

#include "client/entry_point.h"
#include "client/graph_node_work.h"

using ferry::client::AddWorkNode;
using ferry::client::CheckEdgeData;
using ferry::client::GraphNodeWork;
using ferry::client::KernelParamsV2;
using ferry::client::RecordedNodeParams;
using ferry::client::SetNodeWork;

Status ferry::client::SetNodeWork(CUgraphExec exec, CUgraphNode node, const GraphNodeWork& work) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  const uint64_t node_id = Runtime::HandleId(node);
  const uint64_t exec_id = exec != nullptr ? Runtime::HandleId(exec) : 0;
  const int type = work.type();
  if (exec_id != 0) {
    FERRY_RETURN_IF_ERROR(rt.graphs().CheckExecNode(exec_id, node_id, {type}));
  }
  if (type == CU_GRAPH_NODE_TYPE_GRAPH) {
    if (exec_id == 0) {
      return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED,
                          "a child-graph node's graph can only be changed in an executable graph "
                          "(cuGraphExecChildGraphNodeSetParams)");
    }
    FERRY_RETURN_IF_ERROR(rt.graphs().CheckChildGraphUpdate(node_id, work.child_graph()));
  } else {
    // The node's kind and context stay (the driver refuses a memset or copy
    // node's move to another context; a kernel's context is its own).
    std::shared_ptr<const RecordedNodeParams> recorded;
    FERRY_RETURN_IF_ERROR(rt.graphs().NodeParams(node_id, type, &recorded));
    if (recorded->ctx != work.ctx()) {
      return Status::InvalidArgument("a graph node's work cannot move to another context");
    }
  }
  // A kernel node's new work keeps the node's attributes.
  GraphNodeWork with_attributes = work;
  if (type == CU_GRAPH_NODE_TYPE_KERNEL) {
    ferry::client::KernelNodeAttributes attributes;
    FERRY_RETURN_IF_ERROR(rt.graphs().KernelAttributes(node_id, &attributes));
    with_attributes.SetKernelAttributes(attributes);
  }
  FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Post(
      [&](wire::Call::Builder call) {
        auto args = call.initGraphNodeSetParams();
        args.setExec(exec_id);
        args.setNode(node_id);
        with_attributes.Fill(args);
      },
      with_attributes.bulk()));
  if (exec_id == 0) rt.graphs().SetNodeParams(node_id, work.Record());
  return Status::Ok();
}

namespace {

Status EditEdges(CUgraph graph, const CUgraphNode* from, const CUgraphNode* to,
                 const CUgraphEdgeData* edge_data, size_t count, bool remove) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  if (count > 0 && (from == nullptr || to == nullptr)) {
    return Status::InvalidArgument("from or to is NULL");
  }
  FERRY_RETURN_IF_ERROR(CheckEdgeData(edge_data, count));
  const uint64_t graph_id = Runtime::HandleId(graph);
  if (remove) {
    FERRY_RETURN_IF_ERROR(CheckGraphWithoutMemoryNodes(graph_id, "cuGraphRemoveDependencies"));
  }
  std::vector<uint64_t> sources(count), targets(count);
  for (size_t i = 0; i < count; ++i) {
    sources[i] = Runtime::HandleId(from[i]);
    targets[i] = Runtime::HandleId(to[i]);
  }
  FERRY_RETURN_IF_ERROR(rt.graphs().EditEdges(graph_id, sources, targets, remove));
  return rt.CurrentConnection().Post([&](wire::Call::Builder call) {
    auto args = call.initGraphEditEdges();
    args.setGraph(graph_id);
    auto from_list = args.initFrom(static_cast<unsigned>(count));
    auto to_list = args.initTo(static_cast<unsigned>(count));
    for (size_t i = 0; i < count; ++i) {
      from_list.set(static_cast<unsigned>(i), sources[i]);
      to_list.set(static_cast<unsigned>(i), targets[i]);
    }
    args.setRemove(remove);
  });
}

// The name a node kind ferry does not forward is logged under (once each).
const char* UnforwardedKindName(CUgraphNodeType type) {
  switch (type) {
    case CU_GRAPH_NODE_TYPE_WAIT_EVENT:
      return "CUgraphNodeParams of an event wait node";
    case CU_GRAPH_NODE_TYPE_EVENT_RECORD:
      return "CUgraphNodeParams of an event record node";
    case CU_GRAPH_NODE_TYPE_EXT_SEMAS_SIGNAL:
      return "CUgraphNodeParams of an external semaphore signal node";
    case CU_GRAPH_NODE_TYPE_EXT_SEMAS_WAIT:
      return "CUgraphNodeParams of an external semaphore wait node";
    case CU_GRAPH_NODE_TYPE_MEM_ALLOC:
      return "CUgraphNodeParams of a memory allocation node";
    case CU_GRAPH_NODE_TYPE_MEM_FREE:
      return "CUgraphNodeParams of a memory free node";
    case CU_GRAPH_NODE_TYPE_BATCH_MEM_OP:
      return "CUgraphNodeParams of a batch memory operation node";
    case CU_GRAPH_NODE_TYPE_CONDITIONAL:
      return "CUgraphNodeParams of a conditional node";
    default:
      return "CUgraphNodeParams of an unknown node type";
  }
}

// The generic parameters as the work of the kind-specific calls: empty,
// kernel, memset, memcpy, child-graph and host nodes; other kinds NOT_SUPPORTED
// (logged once per kind).
Status WorkOf(const CUgraphNodeParams* params, GraphNodeWork* work) {
  if (params == nullptr) return Status::InvalidArgument("nodeParams is NULL");
  const CUgraphNodeParams& p = *params;
  if (p.reserved0[0] != 0 || p.reserved0[1] != 0 || p.reserved0[2] != 0 || p.reserved2 != 0) {
    return Status::InvalidArgument("the reserved fields of CUgraphNodeParams must be zero");
  }
  switch (p.type) {
    case CU_GRAPH_NODE_TYPE_EMPTY:
      work->FromEmpty();
      return Status::Ok();
    case CU_GRAPH_NODE_TYPE_KERNEL: {
      const CUDA_KERNEL_NODE_PARAMS_v2 k = KernelParamsV2(p.kernel);
      return work->FromKernel(&k);
    }
    case CU_GRAPH_NODE_TYPE_MEMSET: {
      CUDA_MEMSET_NODE_PARAMS m{};
      m.dst = p.memset.dst;
      m.pitch = p.memset.pitch;
      m.value = p.memset.value;
      m.elementSize = p.memset.elementSize;
      m.width = p.memset.width;
      m.height = p.memset.height;
      return work->FromMemset(&m, p.memset.ctx);
    }
    case CU_GRAPH_NODE_TYPE_MEMCPY:
      if (p.memcpy.flags != 0 || p.memcpy.reserved != 0) {
        return Status::InvalidArgument("memcpy node flags and reserved fields must be zero");
      }
      return work->FromMemcpy(&p.memcpy.copyParams, p.memcpy.copyCtx);
    case CU_GRAPH_NODE_TYPE_GRAPH:
      if (p.graph.ownership != CU_GRAPH_CHILD_GRAPH_OWNERSHIP_CLONE) {
        ferry::client::Unsupported("CUgraphNodeParams of a child graph moved into its parent",
                                   "child graphs are cloned into their nodes");
        return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED,
                            "only cloned child graphs (CU_GRAPH_CHILD_GRAPH_OWNERSHIP_CLONE) are "
                            "forwarded");
      }
      return work->FromChildGraph(p.graph.graph);
    case CU_GRAPH_NODE_TYPE_HOST: {
      const CUDA_HOST_NODE_PARAMS host{p.host.fn, p.host.userData};
      return work->FromHost(&host);
    }
    default: {
      const char* name = UnforwardedKindName(p.type);
      ferry::client::Unsupported(name,
                                 "ferry forwards empty, kernel, memset, memcpy, "
                                 "child-graph and host nodes through the generic entry points");
      return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, std::string(name) + " is not forwarded");
    }
  }
}

Status AddGenericNode(CUgraphNode* node, CUgraph graph, const CUgraphNode* deps,
                      const CUgraphEdgeData* edge_data, size_t count, CUgraphNodeParams* params) {
  FERRY_RETURN_IF_ERROR(CheckEdgeData(edge_data, count));
  GraphNodeWork work;
  FERRY_RETURN_IF_ERROR(WorkOf(params, &work));
  return AddWorkNode(node, graph, deps, count, work);
}

// The generic setters: the node's own type decides (a node of another type
// than `params` names is refused, as the driver refuses it).
Status SetGenericNode(CUgraphExec exec, CUgraphNode node, CUgraphNodeParams* params) {
  GraphNodeWork work;
  FERRY_RETURN_IF_ERROR(WorkOf(params, &work));
  if (work.type() == CU_GRAPH_NODE_TYPE_EMPTY) {
    return Status::InvalidArgument("an empty node has no parameters to set");
  }
  return SetNodeWork(exec, node, work);
}

// Kernel node attributes: those ferry forwards for launches and streams.
// The cluster shape and cooperation are part of the node's work, so setting
// them sends the node's recorded kernel again with them (the server checks
// it as a launch with those attributes); the priority and the access policy
// window are hints, kept here and answered as set. Others: NOT_SUPPORTED,
// logged once.
bool ChangesWork(CUkernelNodeAttrID attr) {
  return attr == CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION || attr == CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
}

Status UnforwardedAttribute(CUkernelNodeAttrID attr) {
  ferry::client::Unsupported(
      "a kernel node attribute other than the cluster dimension, "
      "cooperation, priority or access policy window",
      "ferry forwards those a launch or stream takes");
  return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED,
                      "kernel node attribute " + std::to_string(attr) + " is not forwarded");
}

// The node's recorded kernel sent again (with the attributes it has now).
Status ResendKernelWork(CUgraphNode node) {
  std::shared_ptr<const RecordedNodeParams> recorded;
  FERRY_RETURN_IF_ERROR(Runtime::Get().graphs().NodeParams(Runtime::HandleId(node),
                                                           CU_GRAPH_NODE_TYPE_KERNEL, &recorded));
  GraphNodeWork work;
  FERRY_RETURN_IF_ERROR(work.FromKernel(&recorded->kernel));
  return SetNodeWork(nullptr, node, work);
}

// Stores `attributes` for `node` and, when `resend`, sends its work again;
// a refusal leaves the attributes as they were.
Status ApplyKernelAttributes(CUgraphNode node,
                             const ferry::client::KernelNodeAttributes& attributes, bool resend) {
  Runtime& rt = Runtime::Get();
  const uint64_t id = Runtime::HandleId(node);
  ferry::client::KernelNodeAttributes before;
  FERRY_RETURN_IF_ERROR(rt.graphs().KernelAttributes(id, &before));
  FERRY_RETURN_IF_ERROR(rt.graphs().SetKernelAttributes(id, attributes));
  if (!resend) return Status::Ok();
  Status status = ResendKernelWork(node);
  if (!status.ok()) (void)rt.graphs().SetKernelAttributes(id, before);
  return status;
}

Status SetKernelAttribute(CUgraphNode node, CUkernelNodeAttrID attr,
                          const CUkernelNodeAttrValue* value) {
  if (value == nullptr) return Status::InvalidArgument("value is NULL");
  ferry::client::KernelNodeAttributes attributes;
  FERRY_RETURN_IF_ERROR(
      Runtime::Get().graphs().KernelAttributes(Runtime::HandleId(node), &attributes));
  switch (attr) {
    case CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION:
      attributes.cluster = {value->clusterDim.x, value->clusterDim.y, value->clusterDim.z};
      break;
    case CU_LAUNCH_ATTRIBUTE_COOPERATIVE:
      attributes.cooperative = value->cooperative != 0;
      break;
    case CU_LAUNCH_ATTRIBUTE_PRIORITY:
      attributes.priority = value->priority;
      break;
    case CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW: {
      const CUaccessPolicyWindow& w = value->accessPolicyWindow;
      if (!(w.hitRatio >= 0.0f && w.hitRatio <= 1.0f)) {
        return Status::InvalidArgument("the access policy window's hitRatio is not in [0, 1]");
      }
      attributes.window = w;
      break;
    }
    default:
      return UnforwardedAttribute(attr);
  }
  return ApplyKernelAttributes(node, attributes, ChangesWork(attr));
}

Status GetKernelAttribute(CUgraphNode node, CUkernelNodeAttrID attr, CUkernelNodeAttrValue* value) {
  if (value == nullptr) return Status::InvalidArgument("value_out is NULL");
  ferry::client::KernelNodeAttributes attributes;
  FERRY_RETURN_IF_ERROR(
      Runtime::Get().graphs().KernelAttributes(Runtime::HandleId(node), &attributes));
  switch (attr) {
    case CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION:
      value->clusterDim.x = attributes.cluster[0];
      value->clusterDim.y = attributes.cluster[1];
      value->clusterDim.z = attributes.cluster[2];
      return Status::Ok();
    case CU_LAUNCH_ATTRIBUTE_COOPERATIVE:
      value->cooperative = attributes.cooperative ? 1 : 0;
      return Status::Ok();
    case CU_LAUNCH_ATTRIBUTE_PRIORITY:
      value->priority = attributes.priority;
      return Status::Ok();
    case CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW:
      value->accessPolicyWindow = attributes.window;
      return Status::Ok();
    default:
      return UnforwardedAttribute(attr);
  }
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuGraphKernelNodeSetAttribute(CUgraphNode hNode, CUkernelNodeAttrID attr,
                                               const CUkernelNodeAttrValue* value) {
  return Api([&] { return SetKernelAttribute(hNode, attr, value); });
}
CUresult CUDAAPI cuGraphKernelNodeGetAttribute(CUgraphNode hNode, CUkernelNodeAttrID attr,
                                               CUkernelNodeAttrValue* value_out) {
  return Api([&] { return GetKernelAttribute(hNode, attr, value_out); });
}
// Every forwarded attribute of `src` becomes `dst`'s (both kernel nodes).
CUresult CUDAAPI cuGraphKernelNodeCopyAttributes(CUgraphNode dst, CUgraphNode src) {
  return Api([&]() -> Status {
    ferry::client::KernelNodeAttributes from, to;
    FERRY_RETURN_IF_ERROR(Runtime::Get().graphs().KernelAttributes(Runtime::HandleId(src), &from));
    FERRY_RETURN_IF_ERROR(Runtime::Get().graphs().KernelAttributes(Runtime::HandleId(dst), &to));
    const bool resend = from.cluster != to.cluster || from.cooperative != to.cooperative;
    return ApplyKernelAttributes(dst, from, resend);
  });
}

CUresult CUDAAPI cuGraphAddDependencies(CUgraph hGraph, const CUgraphNode* from,
                                        const CUgraphNode* to, size_t numDependencies) {
  return Api([&] { return EditEdges(hGraph, from, to, nullptr, numDependencies, false); });
}
CUresult CUDAAPI cuGraphAddDependencies_v2(CUgraph hGraph, const CUgraphNode* from,
                                           const CUgraphNode* to, const CUgraphEdgeData* edgeData,
                                           size_t numDependencies) {
  return Api([&] { return EditEdges(hGraph, from, to, edgeData, numDependencies, false); });
}
CUresult CUDAAPI cuGraphRemoveDependencies(CUgraph hGraph, const CUgraphNode* from,
                                           const CUgraphNode* to, size_t numDependencies) {
  return Api([&] { return EditEdges(hGraph, from, to, nullptr, numDependencies, true); });
}
CUresult CUDAAPI cuGraphRemoveDependencies_v2(CUgraph hGraph, const CUgraphNode* from,
                                              const CUgraphNode* to,
                                              const CUgraphEdgeData* edgeData,
                                              size_t numDependencies) {
  return Api([&] { return EditEdges(hGraph, from, to, edgeData, numDependencies, true); });
}

CUresult CUDAAPI cuGraphDestroyNode(CUgraphNode hNode) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t id = Runtime::HandleId(hNode);
    uint64_t node_graph = 0;
    if (rt.graphs().GraphOfNode(id, &node_graph).ok()) {
      FERRY_RETURN_IF_ERROR(CheckGraphWithoutMemoryNodes(node_graph, "cuGraphDestroyNode"));
    }
    uint64_t graph = 0;
    FERRY_RETURN_IF_ERROR(rt.graphs().DestroyNode(id, &graph));
    rt.user_objects().NodeDestroyed(graph, id);
    return rt.CurrentConnection().Post(
        [&](wire::Call::Builder call) { call.initGraphDestroyNode().setNode(id); });
  });
}

CUresult CUDAAPI cuGraphKernelNodeSetParams_v2(CUgraphNode hNode,
                                               const CUDA_KERNEL_NODE_PARAMS_v2* nodeParams) {
  return Api([&]() -> Status {
    GraphNodeWork work;
    FERRY_RETURN_IF_ERROR(work.FromKernel(nodeParams));
    return SetNodeWork(nullptr, hNode, work);
  });
}
CUresult CUDAAPI cuGraphKernelNodeSetParams(CUgraphNode hNode,
                                            const CUDA_KERNEL_NODE_PARAMS_v1* nodeParams) {
  return Api([&]() -> Status {
    if (nodeParams == nullptr) return Status::InvalidArgument("nodeParams is NULL");
    const CUDA_KERNEL_NODE_PARAMS_v2 p = KernelParamsV2(*nodeParams);
    GraphNodeWork work;
    FERRY_RETURN_IF_ERROR(work.FromKernel(&p));
    return SetNodeWork(nullptr, hNode, work);
  });
}

// A memset or copy node keeps its context (the driver's rule): the one it
// was added with is the one the new parameters run in.
CUresult CUDAAPI cuGraphMemsetNodeSetParams(CUgraphNode hNode,
                                            const CUDA_MEMSET_NODE_PARAMS* nodeParams) {
  return Api([&]() -> Status {
    std::shared_ptr<const RecordedNodeParams> recorded;
    FERRY_RETURN_IF_ERROR(Runtime::Get().graphs().NodeParams(Runtime::HandleId(hNode),
                                                             CU_GRAPH_NODE_TYPE_MEMSET, &recorded));
    GraphNodeWork work;
    FERRY_RETURN_IF_ERROR(work.FromMemset(nodeParams, Runtime::ToHandle<CUcontext>(recorded->ctx)));
    return SetNodeWork(nullptr, hNode, work);
  });
}
CUresult CUDAAPI cuGraphMemcpyNodeSetParams(CUgraphNode hNode, const CUDA_MEMCPY3D* nodeParams) {
  return Api([&]() -> Status {
    std::shared_ptr<const RecordedNodeParams> recorded;
    FERRY_RETURN_IF_ERROR(Runtime::Get().graphs().NodeParams(Runtime::HandleId(hNode),
                                                             CU_GRAPH_NODE_TYPE_MEMCPY, &recorded));
    GraphNodeWork work;
    FERRY_RETURN_IF_ERROR(work.FromMemcpy(nodeParams, Runtime::ToHandle<CUcontext>(recorded->ctx)));
    return SetNodeWork(nullptr, hNode, work);
  });
}

CUresult CUDAAPI cuGraphExecMemsetNodeSetParams(CUgraphExec hGraphExec, CUgraphNode hNode,
                                                const CUDA_MEMSET_NODE_PARAMS* memsetParams,
                                                CUcontext ctx) {
  return Api([&]() -> Status {
    GraphNodeWork work;
    FERRY_RETURN_IF_ERROR(work.FromMemset(memsetParams, ctx));
    return SetNodeWork(hGraphExec, hNode, work);
  });
}
CUresult CUDAAPI cuGraphExecMemcpyNodeSetParams(CUgraphExec hGraphExec, CUgraphNode hNode,
                                                const CUDA_MEMCPY3D* copyParams, CUcontext ctx) {
  return Api([&]() -> Status {
    GraphNodeWork work;
    FERRY_RETURN_IF_ERROR(work.FromMemcpy(copyParams, ctx));
    return SetNodeWork(hGraphExec, hNode, work);
  });
}
CUresult CUDAAPI cuGraphExecChildGraphNodeSetParams(CUgraphExec hGraphExec, CUgraphNode hNode,
                                                    CUgraph childGraph) {
  return Api([&]() -> Status {
    GraphNodeWork work;
    FERRY_RETURN_IF_ERROR(work.FromChildGraph(childGraph));
    return SetNodeWork(hGraphExec, hNode, work);
  });
}

CUresult CUDAAPI cuGraphAddNode(CUgraphNode* phGraphNode, CUgraph hGraph,
                                const CUgraphNode* dependencies, size_t numDependencies,
                                CUgraphNodeParams* nodeParams) {
  return Api([&] {
    return AddGenericNode(phGraphNode, hGraph, dependencies, nullptr, numDependencies, nodeParams);
  });
}
CUresult CUDAAPI cuGraphAddNode_v2(CUgraphNode* phGraphNode, CUgraph hGraph,
                                   const CUgraphNode* dependencies,
                                   const CUgraphEdgeData* dependencyData, size_t numDependencies,
                                   CUgraphNodeParams* nodeParams) {
  return Api([&] {
    return AddGenericNode(phGraphNode, hGraph, dependencies, dependencyData, numDependencies,
                          nodeParams);
  });
}
CUresult CUDAAPI cuGraphNodeSetParams(CUgraphNode hNode, CUgraphNodeParams* nodeParams) {
  return Api([&] { return SetGenericNode(nullptr, hNode, nodeParams); });
}
CUresult CUDAAPI cuGraphExecNodeSetParams(CUgraphExec hGraphExec, CUgraphNode hNode,
                                          CUgraphNodeParams* nodeParams) {
  return Api([&] { return SetGenericNode(hGraphExec, hNode, nodeParams); });
}

}  // extern "C"
