// Entry points: occupancy (cuOccupancy*). The server answers every question
// about how many blocks fit (the CUDA backend asks the driver, the host
// backend its documented device model), for the function in its context; a
// CUkernel is taken in the current context, as the driver does.
//
// cuOccupancyMaxPotentialBlockSize runs its search on the client, in one
// round trip (client/occupancy.h).
//
// Thread-safety: every entry point may be called from any thread.
#include <cuda.h>

#include <algorithm>
#include <vector>

#include "client/entry_point.h"
#include "client/occupancy.h"

using ferry::client::FunctionState;

namespace {

// The function `f` names in the current context (a CUkernel included), and
// the device of that context.
Status Resolve(CUfunction f, uint64_t* id, int* device) {
  Runtime& rt = Runtime::Get();
  FunctionState function;
  FERRY_RETURN_IF_ERROR(rt.ResolveFunction(Runtime::HandleId(f), 0, id, &function));
  return rt.contexts().Device(function.ctx, device);
}

Status MaxPotentialBlockSize(int* min_grid_size, int* block_size, CUfunction func,
                             CUoccupancyB2DSize smem_of_block_size, size_t dynamic_smem,
                             int block_size_limit, unsigned flags) {
  return ferry::client::MaxPotentialBlockSize(
      Runtime::Get(), Runtime::HandleId(func),
      [&](int size) {
        return smem_of_block_size != nullptr ? smem_of_block_size(size) : dynamic_smem;
      },
      block_size_limit, flags, min_grid_size, block_size);
}

Status ClusterQuery(int* out, CUfunction func, const CUlaunchConfig* config,
                    wire::OccupancyCluster::Query query) {
  if (out == nullptr || config == nullptr) return Status::InvalidArgument("NULL argument");
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  // The context is the stream's, or the current one for no stream.
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(config->hStream, false, &target));
  FunctionState function;
  uint64_t id = 0;
  FERRY_RETURN_IF_ERROR(rt.ResolveFunction(Runtime::HandleId(func), target.ctx, &id, &function));
  unsigned cluster[3] = {0, 0, 0};
  for (unsigned i = 0; i < config->numAttrs; ++i) {
    const CUlaunchAttribute& a = config->attrs[i];
    if (a.id == CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION) {
      cluster[0] = a.value.clusterDim.x;
      cluster[1] = a.value.clusterDim.y;
      cluster[2] = a.value.clusterDim.z;
    }
  }
  return rt.FunctionConnection(id).Call(
      [&](wire::Call::Builder call) {
        auto args = call.initOccupancyCluster();
        args.setFunction(id);
        args.setQuery(query);
        SetLaunchShape(args, *config);
        args.setClusterX(cluster[0]);
        args.setClusterY(cluster[1]);
        args.setClusterZ(cluster[2]);
      },
      {}, {},
      [&](wire::Reply::Reader reply) {
        *out = static_cast<int>(reply.getValue());
        return Status::Ok();
      });
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    int* numBlocks, CUfunction func, int blockSize, size_t dynamicSMemSize, unsigned int flags) {
  return Api([&]() -> Status {
    if (numBlocks == nullptr) return Status::InvalidArgument("numBlocks is NULL");
    if (blockSize <= 0) return Status::InvalidArgument("blockSize must be positive");
    uint64_t function = 0;
    int device = 0;
    FERRY_RETURN_IF_ERROR(Resolve(func, &function, &device));
    std::vector<int> blocks;
    FERRY_RETURN_IF_ERROR(ferry::client::MaxActiveBlocks(Runtime::Get(), function,
                                                         {static_cast<uint32_t>(blockSize)},
                                                         {dynamicSMemSize}, flags, &blocks));
    *numBlocks = blocks[0];
    return Status::Ok();
  });
}

CUresult CUDAAPI cuOccupancyMaxActiveBlocksPerMultiprocessor(int* numBlocks, CUfunction func,
                                                             int blockSize,
                                                             size_t dynamicSMemSize) {
  return cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
      numBlocks, func, blockSize, dynamicSMemSize, CU_OCCUPANCY_DEFAULT);
}

CUresult CUDAAPI cuOccupancyMaxPotentialBlockSizeWithFlags(
    int* minGridSize, int* blockSize, CUfunction func,
    CUoccupancyB2DSize blockSizeToDynamicSMemSize, size_t dynamicSMemSize, int blockSizeLimit,
    unsigned int flags) {
  return Api([&] {
    return MaxPotentialBlockSize(minGridSize, blockSize, func, blockSizeToDynamicSMemSize,
                                 dynamicSMemSize, blockSizeLimit, flags);
  });
}

CUresult CUDAAPI cuOccupancyMaxPotentialBlockSize(int* minGridSize, int* blockSize, CUfunction func,
                                                  CUoccupancyB2DSize blockSizeToDynamicSMemSize,
                                                  size_t dynamicSMemSize, int blockSizeLimit) {
  return cuOccupancyMaxPotentialBlockSizeWithFlags(minGridSize, blockSize, func,
                                                   blockSizeToDynamicSMemSize, dynamicSMemSize,
                                                   blockSizeLimit, CU_OCCUPANCY_DEFAULT);
}

CUresult CUDAAPI cuOccupancyAvailableDynamicSMemPerBlock(size_t* dynamicSmemSize, CUfunction func,
                                                         int numBlocks, int blockSize) {
  return Api([&]() -> Status {
    if (dynamicSmemSize == nullptr) return Status::InvalidArgument("dynamicSmemSize is NULL");
    if (numBlocks <= 0 || blockSize <= 0) {
      return Status::InvalidArgument("numBlocks and blockSize must be positive");
    }
    uint64_t function = 0;
    int device = 0;
    FERRY_RETURN_IF_ERROR(Resolve(func, &function, &device));
    return Runtime::Get().FunctionConnection(function).Call(
        [&](wire::Call::Builder call) {
          auto args = call.initOccupancyAvailableDynamicSmem();
          args.setFunction(function);
          args.setNumBlocks(static_cast<uint32_t>(numBlocks));
          args.setBlockSize(static_cast<uint32_t>(blockSize));
        },
        {}, {},
        [&](wire::Reply::Reader reply) {
          *dynamicSmemSize = static_cast<size_t>(reply.getValue());
          return Status::Ok();
        });
  });
}

CUresult CUDAAPI cuOccupancyMaxPotentialClusterSize(int* clusterSize, CUfunction func,
                                                    const CUlaunchConfig* config) {
  return Api([&] {
    return ClusterQuery(clusterSize, func, config,
                        wire::OccupancyCluster::Query::MAX_POTENTIAL_CLUSTER_SIZE);
  });
}

CUresult CUDAAPI cuOccupancyMaxActiveClusters(int* numClusters, CUfunction func,
                                              const CUlaunchConfig* config) {
  return Api([&] {
    return ClusterQuery(numClusters, func, config,
                        wire::OccupancyCluster::Query::MAX_ACTIVE_CLUSTERS);
  });
}

}  // extern "C"
