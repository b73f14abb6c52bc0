// A graph node's work as the client sends it: what cuGraphAdd*Node,
// cuGraph*NodeSetParams, cuGraphExec*NodeSetParams and the generic
// CUgraphNodeParams entry points share (client/api_graph.cc,
// client/api_graph_edit.cc), so every path checks and sends a kind's
// parameters the same way. Include from those files only (after
// entry_point.h).
#pragma once

#include <cuda.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "client/entry_point.h"
#include "client/graph_registry.h"

namespace ferry::client {

// The context a node's work runs in: `ctx`, or the current one when NULL.
Status NodeContext(CUcontext ctx, uint64_t* out);

// Edge data other than the default (plain, full dependencies) is not
// forwarded: ferry's graphs have plain dependencies only (NOT_SUPPORTED).
Status CheckEdgeData(const CUgraphEdgeData* edge_data, size_t count);

// Kernel node parameters as CUDA_KERNEL_NODE_PARAMS_v2, from v1 (no kern,
// no ctx) or v3 (v2's layout, inside CUgraphNodeParams).
CUDA_KERNEL_NODE_PARAMS_v2 KernelParamsV2(const CUDA_KERNEL_NODE_PARAMS_v1& v1);
CUDA_KERNEL_NODE_PARAMS_v2 KernelParamsV2(const CUDA_KERNEL_NODE_PARAMS_v3& v3);

// One node's work: its type and what the wire carries for it. Made by one
// of the From* functions (each checks the driver's parameters as the
// stream-ordered call of the kind would be checked); then Fill sets the
// union of a graphAddNode or graphNodeSetParams call, bulk() is the call's
// bulk bytes, and Record() what cuGraph*NodeGetParams answers from then on.
class GraphNodeWork {
 public:
  Status FromKernel(const CUDA_KERNEL_NODE_PARAMS_v2* p);
  Status FromMemset(const CUDA_MEMSET_NODE_PARAMS* p, CUcontext ctx);
  // Device-to-device copies of one row (WidthInBytes at the given byte
  // offsets); anything else: NOT_SUPPORTED.
  Status FromMemcpy(const CUDA_MEMCPY3D* p, CUcontext ctx);
  Status FromChildGraph(CUgraph child);
  // graph host nodes: `p->fn` called with `p->userData` (HostFunctionId).
  Status FromHost(const CUDA_HOST_NODE_PARAMS* p);
  void FromEmpty() { type_ = CU_GRAPH_NODE_TYPE_EMPTY; }
  // A kernel node's attributes that change its work (cluster shape,
  // cooperation); a new node has none.
  void SetKernelAttributes(const KernelNodeAttributes& attributes) {
    cluster_ = attributes.cluster;
    cooperative_ = attributes.cooperative;
  }

  CUgraphNodeType type() const { return type_; }
  uint64_t child_graph() const { return child_; }
  uint64_t ctx() const { return ctx_; }
  OutBytes bulk() const { return {kernel_bytes_.data(), kernel_bytes_.size()}; }
  // Sets the union member of `args` (a GraphAddNode or GraphNodeSetParams
  // builder); an empty node's only for GraphAddNode (see FillAdd).
  template <typename Builder>
  void Fill(Builder args) const {
    switch (type_) {
      case CU_GRAPH_NODE_TYPE_KERNEL: {
        auto k = args.initKernel();
        k.setCtx(ctx_);
        k.setFunction(function_);
        ::SetLaunchShape(k, kernel_);
        k.setClusterX(cluster_[0]);
        k.setClusterY(cluster_[1]);
        k.setClusterZ(cluster_[2]);
        k.setCooperative(cooperative_);
        break;
      }
      case CU_GRAPH_NODE_TYPE_MEMSET: {
        auto set = args.initMemset();
        set.setCtx(ctx_);
        set.setDst(memset_.dst);
        set.setPitch(memset_.pitch);
        set.setValue(memset_.value);
        set.setElementBytes(static_cast<uint8_t>(memset_.elementSize));
        set.setWidth(memset_.width);
        set.setHeight(memset_.height);
        break;
      }
      case CU_GRAPH_NODE_TYPE_MEMCPY: {
        auto copy = args.initMemcpy();
        copy.setCtx(ctx_);
        copy.setDst(memcpy_.dstDevice + memcpy_.dstXInBytes);
        copy.setSrc(memcpy_.srcDevice + memcpy_.srcXInBytes);
        copy.setBytes(memcpy_.WidthInBytes);
        break;
      }
      case CU_GRAPH_NODE_TYPE_GRAPH:
        args.setChildGraph(child_);
        break;
      case CU_GRAPH_NODE_TYPE_HOST:
        args.setHost(host_function_);
        break;
      default:
        break;
    }
  }
  void FillAdd(wire::GraphAddNode::Builder args) const {
    if (type_ == CU_GRAPH_NODE_TYPE_EMPTY) {
      args.setEmpty();
    } else {
      Fill(args);
    }
  }
  // What cuGraph*NodeGetParams answers for a node doing this work; nullptr
  // for kinds without recorded parameters (empty, child graph).
  std::shared_ptr<const RecordedNodeParams> Record() const;

 private:
  CUgraphNodeType type_ = CU_GRAPH_NODE_TYPE_EMPTY;
  uint64_t ctx_ = 0;
  // kernel
  uint64_t function_ = 0;
  CUDA_KERNEL_NODE_PARAMS_v2 kernel_{};
  std::vector<uint8_t> kernel_bytes_;
  std::vector<size_t> argument_offsets_;  // of each kernel argument in kernel_bytes_
  std::array<unsigned, 3> cluster_{0, 0, 0};
  bool cooperative_ = false;
  CUDA_MEMSET_NODE_PARAMS memset_{};
  CUDA_MEMCPY3D memcpy_{};
  uint64_t child_ = 0;
  CUDA_HOST_NODE_PARAMS host_{};
  uint64_t host_function_ = 0;
};

// graph host nodes (client/api_graph_host.cc): *id gets the id the server
// knows `fn` called with `user_data` by (schema/ferry.capnp, "Graph host
// nodes"). The connection gets the function the first time a pair is seen;
// one id per distinct pair, kept for the process's life.
Status HostFunctionId(CUhostFn fn, void* user_data, uint64_t* id);

// Adds a node doing `work` to `graph` after `deps` (cuGraphAdd*Node,
// cuGraphAddNode) and records its parameters (client/api_graph.cc).
Status AddWorkNode(CUgraphNode* node, CUgraph graph, const CUgraphNode* deps, size_t count,
                   const GraphNodeWork& work);
// `node` does `work` (of its kind) from now on: in its graph when `exec` is
// NULL (cuGraph*NodeSetParams: later instantiations take it, and GetParams
// answers it), else in executable graph `exec` only (cuGraphExec*NodeSetParams,
// with the driver's restrictions: a node of the graph `exec` was
// instantiated from, the work in the node's context, a child graph of the
// same topology) (client/api_graph_edit.cc).
Status SetNodeWork(CUgraphExec exec, CUgraphNode node, const GraphNodeWork& work);

}  // namespace ferry::client
