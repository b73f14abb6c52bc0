#include "client/graph_node_work.h"

#include <cstring>
#include <string>

namespace ferry::client {

namespace {
// The fields every version of the kernel node parameters has.
template <typename Params>
CUDA_KERNEL_NODE_PARAMS_v2 CommonKernelParams(const Params& in) {
  CUDA_KERNEL_NODE_PARAMS_v2 p{};
  p.func = in.func;
  p.gridDimX = in.gridDimX;
  p.gridDimY = in.gridDimY;
  p.gridDimZ = in.gridDimZ;
  p.blockDimX = in.blockDimX;
  p.blockDimY = in.blockDimY;
  p.blockDimZ = in.blockDimZ;
  p.sharedMemBytes = in.sharedMemBytes;
  p.kernelParams = in.kernelParams;
  p.extra = in.extra;
  return p;
}
}  // namespace

CUDA_KERNEL_NODE_PARAMS_v2 KernelParamsV2(const CUDA_KERNEL_NODE_PARAMS_v1& v1) {
  return CommonKernelParams(v1);
}

CUDA_KERNEL_NODE_PARAMS_v2 KernelParamsV2(const CUDA_KERNEL_NODE_PARAMS_v3& v3) {
  CUDA_KERNEL_NODE_PARAMS_v2 p = CommonKernelParams(v3);
  p.kern = v3.kern;
  p.ctx = v3.ctx;
  return p;
}

Status NodeContext(CUcontext ctx, uint64_t* out) {
  Runtime& rt = Runtime::Get();
  if (ctx == nullptr) return rt.CurrentContext(out);
  *out = Runtime::HandleId(ctx);
  return rt.EnsureLive(*out);
}

// `func` (or `kern` where func is NULL) in its context, the parameters
// packed as a launch packs them.
Status GraphNodeWork::FromKernel(const CUDA_KERNEL_NODE_PARAMS_v2* p) {
  Runtime& rt = Runtime::Get();
  if (p == nullptr) return Status::InvalidArgument("nodeParams is NULL");
  type_ = CU_GRAPH_NODE_TYPE_KERNEL;
  kernel_ = *p;
  FERRY_RETURN_IF_ERROR(NodeContext(p->func != nullptr ? nullptr : p->ctx, &ctx_));
  const uint64_t handle =
      Runtime::HandleId(p->func != nullptr ? static_cast<const void*>(p->func) : p->kern);
  std::shared_ptr<const FunctionState> state;
  FERRY_RETURN_IF_ERROR(rt.ResolveFunction(handle, ctx_, &function_, &state));
  const auto& kernel = state->kernel;
  for (const auto& param : kernel.params) argument_offsets_.push_back(param.offset);
  if (p->kernelParams != nullptr) {
    kernel_bytes_.assign(kernel.param_bytes, 0);
    for (size_t i = 0; i < kernel.params.size(); ++i) {
      if (p->kernelParams[i] == nullptr) {
        return Status::InvalidArgument("kernelParams[" + std::to_string(i) + "] is NULL");
      }
      std::memcpy(kernel_bytes_.data() + kernel.params[i].offset, p->kernelParams[i],
                  kernel.params[i].size);
    }
  } else if (p->extra != nullptr) {
    // CU_LAUNCH_PARAM_BUFFER_POINTER / _SIZE: the packed buffer as is.
    const void* pointer = nullptr;
    const size_t* size = nullptr;
    for (size_t i = 0; p->extra[i] != CU_LAUNCH_PARAM_END; i += 2) {
      if (p->extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER) {
        pointer = p->extra[i + 1];
      } else if (p->extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE) {
        size = static_cast<const size_t*>(p->extra[i + 1]);
      } else {
        return Status::InvalidArgument("unknown entry in the kernel node's extra array");
      }
    }
    if (pointer == nullptr || size == nullptr || *size < kernel.param_bytes) {
      return Status::InvalidArgument(
          "extra needs CU_LAUNCH_PARAM_BUFFER_POINTER and _SIZE covering the parameters");
    }
    const auto* bytes = static_cast<const uint8_t*>(pointer);
    kernel_bytes_.assign(bytes, bytes + *size);
  } else if (kernel.param_bytes != 0) {
    return Status::InvalidArgument(state->name + " takes parameters; kernelParams is NULL");
  }
  return Status::Ok();
}

Status GraphNodeWork::FromMemset(const CUDA_MEMSET_NODE_PARAMS* p, CUcontext ctx) {
  if (p == nullptr) return Status::InvalidArgument("memsetParams is NULL");
  type_ = CU_GRAPH_NODE_TYPE_MEMSET;
  memset_ = *p;
  return NodeContext(ctx, &ctx_);
}

Status GraphNodeWork::FromMemcpy(const CUDA_MEMCPY3D* p, CUcontext ctx) {
  if (p == nullptr) return Status::InvalidArgument("copyParams is NULL");
  const CUDA_MEMCPY3D& c = *p;
  auto device = [](CUmemorytype type) {
    return type == CU_MEMORYTYPE_DEVICE || type == CU_MEMORYTYPE_UNIFIED;
  };
  if (!device(c.srcMemoryType) || !device(c.dstMemoryType) || c.Height > 1 || c.Depth > 1 ||
      c.srcY != 0 || c.srcZ != 0 || c.dstY != 0 || c.dstZ != 0) {
    return Status::Unimplemented(
        "memcpy nodes: only one-row device-to-device copies are forwarded by ferry");
  }
  type_ = CU_GRAPH_NODE_TYPE_MEMCPY;
  memcpy_ = c;
  return NodeContext(ctx, &ctx_);
}

Status GraphNodeWork::FromChildGraph(CUgraph child) {
  child_ = Runtime::HandleId(child);
  if (!Runtime::Get().graphs().HasGraph(child_)) {
    return Status::InvalidHandle("childGraph is not a graph of this client");
  }
  // graph host nodes: a host node's gate belongs to a launch of its own graph.
  if (Runtime::Get().graphs().GraphHostNodes(child_) != 0) {
    return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, "child graphs with host nodes");
  }
  type_ = CU_GRAPH_NODE_TYPE_GRAPH;
  return Status::Ok();
}

Status CheckEdgeData(const CUgraphEdgeData* edge_data, size_t count) {
  if (edge_data == nullptr) return Status::Ok();
  for (size_t i = 0; i < count; ++i) {
    const CUgraphEdgeData& e = edge_data[i];
    if (e.from_port != 0 || e.to_port != 0 || e.type != CU_GRAPH_DEPENDENCY_TYPE_DEFAULT) {
      return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED,
                          "edges with ports or programmatic dependencies are not forwarded");
    }
  }
  return Status::Ok();
}

Status GraphNodeWork::FromHost(const CUDA_HOST_NODE_PARAMS* p) {
  if (p == nullptr) return Status::InvalidArgument("nodeParams is NULL");
  if (p->fn == nullptr) return Status::InvalidArgument("a host node's fn is NULL");
  FERRY_RETURN_IF_ERROR(HostFunctionId(p->fn, p->userData, &host_function_));
  host_ = *p;
  type_ = CU_GRAPH_NODE_TYPE_HOST;
  return Status::Ok();
}

// A kernel node answers the same kernel, shape and context, the arguments
// as kernelParams (pointers into the record, valid while the record lives)
// and no extra.
std::shared_ptr<const RecordedNodeParams> GraphNodeWork::Record() const {
  auto record = std::make_shared<RecordedNodeParams>();
  record->ctx = ctx_;
  switch (type_) {
    case CU_GRAPH_NODE_TYPE_KERNEL:
      record->kernel = kernel_;
      record->kernel_bytes = kernel_bytes_;
      for (size_t offset : argument_offsets_) {
        record->kernel_arguments.push_back(record->kernel_bytes.data() + offset);
      }
      record->kernel.kernelParams = record->kernel_arguments.data();
      record->kernel.extra = nullptr;
      return record;
    case CU_GRAPH_NODE_TYPE_MEMSET:
      record->memset = memset_;
      return record;
    case CU_GRAPH_NODE_TYPE_MEMCPY:
      record->memcpy = memcpy_;
      return record;
    case CU_GRAPH_NODE_TYPE_HOST:
      record->host = host_;
      return record;
    default:
      return nullptr;
  }
}

}  // namespace ferry::client
