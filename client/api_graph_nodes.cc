// Entry points: graph node kinds beyond api_graph.cc's — memory allocation
// and free nodes, graph memory (cuDeviceGet/SetGraphMemAttribute,
// cuDeviceGraphMemTrim), event record and wait nodes.
//
// An allocation node's address is the server's answer when the node is added
// (one round trip); the memory is the executable graph's, charged to the
// slice quota when the graph is instantiated (schema/ferry.capnp,
// GraphAddMemNode). Allocation nodes hold pinned memory of the current
// context's device, accessible to it; a graph allocation is freed by a free
// node (cuMemFree and cuMemFreeAsync refuse it) and goes with its executable
// graph. The parameters a node was added with are answered here
// (cuGraphMemAllocNodeGetParams, cuGraphMemFreeNodeGetParams).
//
// Event nodes record an event, or wait for one, at each launch, as
// cuEventRecord / cuStreamWaitEvent on the launch's stream would; a launch
// stays one message (schema/ferry.capnp, GraphAddEventNode). Their events are
// answered here (the client records them); setting one is fire-and-forget.
#include <cuda.h>

#include <memory>
#include <string>
#include <vector>

#include "client/entry_point.h"

using ferry::client::RecordedNodeParams;

namespace {

// A new node of `graph` after `deps` (checked: nodes of the graph), recorded
// in the client as of kind `type`; *id gets its id and *dependencies theirs.
Status NewNode(CUgraphNode* node, CUgraph graph, const CUgraphNode* deps, size_t count,
               CUgraphNodeType type, uint64_t* graph_id, uint64_t* id,
               std::vector<uint64_t>* dependencies) {
  Runtime& rt = Runtime::Get();
  if (node == nullptr) return Status::InvalidArgument("phGraphNode is NULL");
  if (count > 0 && deps == nullptr) return Status::InvalidArgument("dependencies is NULL");
  FERRY_RETURN_IF_ERROR(rt.Ready());
  *graph_id = Runtime::HandleId(graph);
  if (!rt.graphs().HasGraph(*graph_id)) return Status::InvalidHandle("not a graph of this client");
  if (rt.graphs().IsEmbedded(*graph_id)) {
    // cuda.h: a child-graph node's graph takes no allocation or free nodes;
    // event nodes are not forwarded in child graphs.
    if (type == CU_GRAPH_NODE_TYPE_MEM_ALLOC || type == CU_GRAPH_NODE_TYPE_MEM_FREE) {
      return Status::InvalidArgument("a child-graph node's graph takes no memory nodes");
    }
    return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, "child graphs with event nodes");
  }
  dependencies->resize(count);
  for (size_t i = 0; i < count; ++i) {
    (*dependencies)[i] = Runtime::HandleId(deps[i]);
    if (!rt.graphs().IsNodeOf((*dependencies)[i], *graph_id)) {
      return Status::InvalidArgument("dependency " + std::to_string(i) +
                                     " is not a node of the graph");
    }
  }
  *id = rt.graphs().NewNode(*graph_id, type, *dependencies);
  return Status::Ok();
}

void FillMemNode(wire::GraphAddMemNode::Builder args, uint64_t graph, uint64_t node,
                 const std::vector<uint64_t>& dependencies) {
  args.setGraph(graph);
  args.setNode(node);
  auto list = args.initDependencies(static_cast<unsigned>(dependencies.size()));
  for (size_t i = 0; i < dependencies.size(); ++i) {
    list.set(static_cast<unsigned>(i), dependencies[i]);
  }
}

// What ferry's allocation nodes hold: pinned memory of the current context's
// device, with no shareable handle, accessible to that device (read-write).
Status CheckMemAllocParams(const CUDA_MEM_ALLOC_NODE_PARAMS& p, int ctx_device) {
  const CUmemPoolProps& props = p.poolProps;
  if (p.bytesize == 0) return Status::InvalidArgument("bytesize is 0");
  if (props.allocType != CU_MEM_ALLOCATION_TYPE_PINNED ||
      props.location.type != CU_MEM_LOCATION_TYPE_DEVICE) {
    return Status::InvalidArgument("graph allocations are pinned device memory");
  }
  FERRY_RETURN_IF_ERROR(Runtime::Get().CheckDevice(props.location.id));
  if (props.location.id != ctx_device) {
    return Status::Unimplemented(
        "cuGraphAddMemAllocNode: ferry allocates on the current context's device only");
  }
  if (props.handleTypes != CU_MEM_HANDLE_TYPE_NONE) {
    return Status::Unimplemented("cuGraphAddMemAllocNode: shareable graph memory");
  }
  if (p.accessDescCount > 0 && p.accessDescs == nullptr) {
    return Status::InvalidArgument("accessDescs is NULL");
  }
  for (size_t i = 0; i < p.accessDescCount; ++i) {
    const CUmemAccessDesc& d = p.accessDescs[i];
    if (d.location.type != CU_MEM_LOCATION_TYPE_DEVICE || d.location.id != ctx_device ||
        (d.flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE &&
         d.flags != CU_MEM_ACCESS_FLAGS_PROT_READ)) {
      return Status::Unimplemented(
          "cuGraphAddMemAllocNode: graph memory is accessible to its own device only");
    }
  }
  return Status::Ok();
}

Status AddMemAllocNode(CUgraphNode* node, CUgraph graph, const CUgraphNode* deps, size_t count,
                       CUDA_MEM_ALLOC_NODE_PARAMS* params) {
  Runtime& rt = Runtime::Get();
  if (params == nullptr) return Status::InvalidArgument("nodeParams is NULL");
  uint64_t ctx = 0;
  FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
  int device = 0;
  FERRY_RETURN_IF_ERROR(rt.contexts().Device(ctx, &device));
  FERRY_RETURN_IF_ERROR(CheckMemAllocParams(*params, device));
  uint64_t graph_id = 0, id = 0;
  std::vector<uint64_t> dependencies;
  FERRY_RETURN_IF_ERROR(NewNode(node, graph, deps, count, CU_GRAPH_NODE_TYPE_MEM_ALLOC, &graph_id,
                                &id, &dependencies));
  uint64_t dptr = 0;
  Status status = rt.ConnectionOf(ctx).Call(
      [&](wire::Call::Builder call) {
        auto args = call.initGraphAddMemAllocNode();
        FillMemNode(args, graph_id, id, dependencies);
        args.setCtx(ctx);
        args.setBytes(params->bytesize);
      },
      {}, {},
      [&](wire::Reply::Reader reply) {
        dptr = reply.getMemAlloc().getDptr();
        return Status::Ok();
      });
  if (!status.ok()) {
    rt.graphs().ForgetNode(id);
    return status;
  }
  params->dptr = static_cast<CUdeviceptr>(dptr);
  auto record = std::make_shared<RecordedNodeParams>();
  record->mem_alloc = *params;
  record->mem_alloc_access.assign(params->accessDescs,
                                  params->accessDescs + params->accessDescCount);
  record->mem_alloc.accessDescs = record->mem_alloc_access.data();
  rt.graphs().SetNodeParams(id, std::move(record));
  *node = Runtime::ToHandle<CUgraphNode>(id);
  return Status::Ok();
}

Status AddMemFreeNode(CUgraphNode* node, CUgraph graph, const CUgraphNode* deps, size_t count,
                      CUdeviceptr dptr) {
  Runtime& rt = Runtime::Get();
  uint64_t graph_id = 0, id = 0;
  std::vector<uint64_t> dependencies;
  FERRY_RETURN_IF_ERROR(NewNode(node, graph, deps, count, CU_GRAPH_NODE_TYPE_MEM_FREE, &graph_id,
                                &id, &dependencies));
  FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Post([&](wire::Call::Builder call) {
    auto args = call.initGraphAddMemFreeNode();
    FillMemNode(args, graph_id, id, dependencies);
    args.setDptr(dptr);
  }));
  auto record = std::make_shared<RecordedNodeParams>();
  record->mem_free = dptr;
  rt.graphs().SetNodeParams(id, std::move(record));
  *node = Runtime::ToHandle<CUgraphNode>(id);
  return Status::Ok();
}

// An event of this client, by handle.
Status EventId(CUevent event, uint64_t* id) {
  *id = Runtime::HandleId(event);
  ferry::client::EventState state;
  return Runtime::Get().streams().FindEvent(*id, &state);
}

Status AddEventNode(CUgraphNode* node, CUgraph graph, const CUgraphNode* deps, size_t count,
                    CUevent event, bool wait) {
  Runtime& rt = Runtime::Get();
  uint64_t event_id = 0;
  FERRY_RETURN_IF_ERROR(EventId(event, &event_id));
  uint64_t graph_id = 0, id = 0;
  std::vector<uint64_t> dependencies;
  FERRY_RETURN_IF_ERROR(
      NewNode(node, graph, deps, count,
              wait ? CU_GRAPH_NODE_TYPE_WAIT_EVENT : CU_GRAPH_NODE_TYPE_EVENT_RECORD, &graph_id,
              &id, &dependencies));
  FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Post([&](wire::Call::Builder call) {
    auto args = call.initGraphAddEventNode();
    args.setGraph(graph_id);
    args.setNode(id);
    auto list = args.initDependencies(static_cast<unsigned>(dependencies.size()));
    for (size_t i = 0; i < dependencies.size(); ++i) {
      list.set(static_cast<unsigned>(i), dependencies[i]);
    }
    args.setEvent(event_id);
    args.setWait(wait);
  }));
  auto record = std::make_shared<RecordedNodeParams>();
  record->event = event;
  rt.graphs().SetNodeParams(id, std::move(record));
  *node = Runtime::ToHandle<CUgraphNode>(id);
  return Status::Ok();
}

CUgraphNodeType EventNodeType(bool wait) {
  return wait ? CU_GRAPH_NODE_TYPE_WAIT_EVENT : CU_GRAPH_NODE_TYPE_EVENT_RECORD;
}

Status GetNodeEvent(CUgraphNode node, bool wait, CUevent* out) {
  if (out == nullptr) return Status::InvalidArgument("event_out is NULL");
  std::shared_ptr<const RecordedNodeParams> params;
  FERRY_RETURN_IF_ERROR(
      Runtime::Get().graphs().NodeParams(Runtime::HandleId(node), EventNodeType(wait), &params));
  *out = params->event;
  return Status::Ok();
}

// cuGraphEvent{Record,Wait}NodeSetEvent (`exec` NULL) and
// cuGraphExecEvent{Record,Wait}NodeSetEvent.
Status SetNodeEvent(CUgraphExec exec, CUgraphNode node, bool wait, CUevent event) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  uint64_t event_id = 0;
  FERRY_RETURN_IF_ERROR(EventId(event, &event_id));
  const uint64_t node_id = Runtime::HandleId(node);
  const uint64_t exec_id = Runtime::HandleId(exec);
  std::shared_ptr<const RecordedNodeParams> params;
  if (exec != nullptr) {
    FERRY_RETURN_IF_ERROR(rt.graphs().CheckExecNode(exec_id, node_id, {EventNodeType(wait)}));
  } else {
    FERRY_RETURN_IF_ERROR(rt.graphs().NodeParams(node_id, EventNodeType(wait), &params));
  }
  FERRY_RETURN_IF_ERROR(rt.CurrentConnection().Post([&](wire::Call::Builder call) {
    auto args =
        exec != nullptr ? call.initGraphExecEventNodeSetEvent() : call.initGraphEventNodeSetEvent();
    args.setExec(exec_id);
    args.setNode(node_id);
    args.setEvent(event_id);
  }));
  if (exec == nullptr) {  // the graph's node names the event from now on
    auto record = std::make_shared<RecordedNodeParams>();
    record->event = event;
    rt.graphs().SetNodeParams(node_id, std::move(record));
  }
  return Status::Ok();
}

// cuDeviceGet/SetGraphMemAttribute, cuDeviceGraphMemTrim: the session's own
// figures for `device` (schema/ferry.capnp, DeviceGraphMem).
Status GraphMemCall(CUdevice device, int attribute, uint64_t value, bool get, uint64_t* out) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  FERRY_RETURN_IF_ERROR(rt.CheckDevice(device));
  auto fill = [&](wire::DeviceGraphMem::Builder args) {
    args.setDevice(rt.ServerOrdinal(device));
    args.setAttribute(attribute);
    args.setValue(value);
  };
  if (!get) {
    return rt.DeviceConnection(device).Call(
        [&](wire::Call::Builder call) { fill(call.initDeviceSetGraphMemAttribute()); });
  }
  return rt.DeviceConnection(device).Call(
      [&](wire::Call::Builder call) { fill(call.initDeviceGetGraphMemAttribute()); }, {}, {},
      [&](wire::Reply::Reader reply) {
        *out = static_cast<uint64_t>(reply.getValue());
        return Status::Ok();
      });
}

}  // namespace

void NoteGraphMemory(uint64_t graph, uint64_t exec, uint64_t ctx) {
  Runtime& rt = Runtime::Get();
  std::vector<ferry::client::GraphRegistry::NodeShape> shape;
  if (!rt.graphs().GraphShape(graph, &shape).ok()) return;
  ferry::client::GraphRegistry::GraphMemory memory;
  for (const auto& node : shape) {
    std::shared_ptr<const RecordedNodeParams> params;
    if (node.type != CU_GRAPH_NODE_TYPE_MEM_ALLOC ||
        !rt.graphs().NodeParams(node.id, CU_GRAPH_NODE_TYPE_MEM_ALLOC, &params).ok()) {
      continue;
    }
    memory.emplace_back(params->mem_alloc.dptr, params->mem_alloc.bytesize);
    rt.allocations().AddDevice(params->mem_alloc.dptr, params->mem_alloc.bytesize, ctx,
                               /*global=*/true, /*graph=*/true);
  }
  if (!memory.empty()) rt.graphs().SetExecMemory(exec, std::move(memory));
}

ferry::Status CheckGraphWithoutMemoryNodes(uint64_t graph, const char* what) {
  std::vector<ferry::client::GraphRegistry::NodeShape> shape;
  if (!Runtime::Get().graphs().GraphShape(graph, &shape).ok()) return ferry::Status::Ok();
  for (const auto& node : shape) {
    if (node.type == CU_GRAPH_NODE_TYPE_MEM_ALLOC || node.type == CU_GRAPH_NODE_TYPE_MEM_FREE) {
      return ferry::Status::Cuda(CUDA_ERROR_NOT_SUPPORTED,
                                 std::string(what) + ": the graph has memory allocation or free "
                                                     "nodes");
    }
  }
  return ferry::Status::Ok();
}

void ForgetGraphMemory(uint64_t exec) {
  Runtime& rt = Runtime::Get();
  for (const auto& [dptr, bytes] : rt.graphs().TakeExecMemory(exec)) {
    rt.allocations().ForgetDevice(dptr);
  }
}

extern "C" {

CUresult CUDAAPI cuGraphAddMemAllocNode(CUgraphNode* phGraphNode, CUgraph hGraph,
                                        const CUgraphNode* dependencies, size_t numDependencies,
                                        CUDA_MEM_ALLOC_NODE_PARAMS* nodeParams) {
  return Api([&] {
    return AddMemAllocNode(phGraphNode, hGraph, dependencies, numDependencies, nodeParams);
  });
}

CUresult CUDAAPI cuGraphAddMemFreeNode(CUgraphNode* phGraphNode, CUgraph hGraph,
                                       const CUgraphNode* dependencies, size_t numDependencies,
                                       CUdeviceptr dptr) {
  return Api(
      [&] { return AddMemFreeNode(phGraphNode, hGraph, dependencies, numDependencies, dptr); });
}

CUresult CUDAAPI cuGraphMemAllocNodeGetParams(CUgraphNode hNode,
                                              CUDA_MEM_ALLOC_NODE_PARAMS* params_out) {
  return Api([&]() -> Status {
    if (params_out == nullptr) return Status::InvalidArgument("params_out is NULL");
    std::shared_ptr<const RecordedNodeParams> params;
    FERRY_RETURN_IF_ERROR(Runtime::Get().graphs().NodeParams(
        Runtime::HandleId(hNode), CU_GRAPH_NODE_TYPE_MEM_ALLOC, &params));
    *params_out = params->mem_alloc;  // accessDescs: valid while the node lives
    return Status::Ok();
  });
}

CUresult CUDAAPI cuGraphMemFreeNodeGetParams(CUgraphNode hNode, CUdeviceptr* dptr_out) {
  return Api([&]() -> Status {
    if (dptr_out == nullptr) return Status::InvalidArgument("dptr_out is NULL");
    std::shared_ptr<const RecordedNodeParams> params;
    FERRY_RETURN_IF_ERROR(Runtime::Get().graphs().NodeParams(Runtime::HandleId(hNode),
                                                             CU_GRAPH_NODE_TYPE_MEM_FREE, &params));
    *dptr_out = params->mem_free;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuDeviceGetGraphMemAttribute(CUdevice device, CUgraphMem_attribute attr,
                                              void* value) {
  return Api([&]() -> Status {
    if (value == nullptr) return Status::InvalidArgument("value is NULL");
    uint64_t figure = 0;
    FERRY_RETURN_IF_ERROR(GraphMemCall(device, attr, 0, true, &figure));
    *static_cast<cuuint64_t*>(value) = figure;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuDeviceSetGraphMemAttribute(CUdevice device, CUgraphMem_attribute attr,
                                              void* value) {
  return Api([&]() -> Status {
    if (value == nullptr) return Status::InvalidArgument("value is NULL");
    return GraphMemCall(device, attr, *static_cast<const cuuint64_t*>(value), false, nullptr);
  });
}

CUresult CUDAAPI cuGraphAddEventRecordNode(CUgraphNode* phGraphNode, CUgraph hGraph,
                                           const CUgraphNode* dependencies, size_t numDependencies,
                                           CUevent event) {
  return Api([&] {
    return AddEventNode(phGraphNode, hGraph, dependencies, numDependencies, event, false);
  });
}
CUresult CUDAAPI cuGraphAddEventWaitNode(CUgraphNode* phGraphNode, CUgraph hGraph,
                                         const CUgraphNode* dependencies, size_t numDependencies,
                                         CUevent event) {
  return Api([&] {
    return AddEventNode(phGraphNode, hGraph, dependencies, numDependencies, event, true);
  });
}

CUresult CUDAAPI cuGraphEventRecordNodeGetEvent(CUgraphNode hNode, CUevent* event_out) {
  return Api([&] { return GetNodeEvent(hNode, false, event_out); });
}
CUresult CUDAAPI cuGraphEventWaitNodeGetEvent(CUgraphNode hNode, CUevent* event_out) {
  return Api([&] { return GetNodeEvent(hNode, true, event_out); });
}
CUresult CUDAAPI cuGraphEventRecordNodeSetEvent(CUgraphNode hNode, CUevent event) {
  return Api([&] { return SetNodeEvent(nullptr, hNode, false, event); });
}
CUresult CUDAAPI cuGraphEventWaitNodeSetEvent(CUgraphNode hNode, CUevent event) {
  return Api([&] { return SetNodeEvent(nullptr, hNode, true, event); });
}
CUresult CUDAAPI cuGraphExecEventRecordNodeSetEvent(CUgraphExec hGraphExec, CUgraphNode hNode,
                                                    CUevent event) {
  return Api([&]() -> Status {
    if (hGraphExec == nullptr) return Status::InvalidHandle("hGraphExec is NULL");
    return SetNodeEvent(hGraphExec, hNode, false, event);
  });
}
CUresult CUDAAPI cuGraphExecEventWaitNodeSetEvent(CUgraphExec hGraphExec, CUgraphNode hNode,
                                                  CUevent event) {
  return Api([&]() -> Status {
    if (hGraphExec == nullptr) return Status::InvalidHandle("hGraphExec is NULL");
    return SetNodeEvent(hGraphExec, hNode, true, event);
  });
}

CUresult CUDAAPI cuDeviceGraphMemTrim(CUdevice device) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    FERRY_RETURN_IF_ERROR(rt.CheckDevice(device));
    return rt.DeviceConnection(device).Post([&](wire::Call::Builder call) {
      call.initDeviceGraphMemTrim().setDevice(rt.ServerOrdinal(device));
    });
  });
}

}  // extern "C"
