// Entry points: occupancy (cuOccupancy*). The server answers every question
// about how many blocks fit (the CUDA backend asks the driver, the host
// backend its documented device model), for the function in its context; a
// CUkernel is taken in the current context, as the driver does.
//
// cuOccupancyMaxPotentialBlockSize takes a callback in the program, which
// the server cannot call. So the client runs the search itself: it lists the
// candidate block sizes (the kernel's largest, then every multiple of the warp
// size below it), asks the callback for each one's dynamic shared memory, and
// sends all the candidates in one occupancyMaxActiveBlocks call. The best is
// the candidate with the most resident threads per SM (blocks x size), the
// largest size among equals; the minimum grid is its blocks per SM times the
// SM count. With no callback the same search runs with the fixed size.
//
// Thread-safety: every entry point may be called from any thread.
#include <cuda.h>

#include <algorithm>
#include <vector>

#include "client/cuda_result.h"
#include "client/runtime.h"

using ferry::Status;
using ferry::client::Api;
using ferry::client::FunctionState;
using ferry::client::Runtime;
using ferry::client::StreamTarget;
namespace wire = ferry::wire;

namespace {

// Blocks per SM for each (block size, dynamic shared bytes) pair.
Status MaxActiveBlocks(uint64_t function, const std::vector<uint32_t>& block_sizes,
                       const std::vector<uint64_t>& smem, unsigned flags,
                       std::vector<int>* blocks) {
  return Runtime::Get().connection().Call(
      [&](wire::Call::Builder call) {
        auto args = call.initOccupancyMaxActiveBlocks();
        args.setFunction(function);
        auto sizes = args.initBlockSizes(static_cast<unsigned>(block_sizes.size()));
        auto bytes = args.initDynamicSmemBytes(static_cast<unsigned>(smem.size()));
        for (unsigned i = 0; i < block_sizes.size(); ++i) {
          sizes.set(i, block_sizes[i]);
          bytes.set(i, smem[i]);
        }
        args.setFlags(flags);
      },
      {}, {},
      [&](wire::Reply::Reader reply) {
        if (!reply.isValues() || reply.getValues().size() != block_sizes.size()) {
          return Status::Malformed("occupancy reply does not answer every block size");
        }
        blocks->clear();
        for (int64_t v : reply.getValues()) blocks->push_back(static_cast<int>(v));
        return Status::Ok();
      });
}

// The function `f` names in the current context (a CUkernel included), and
// the device of that context.
Status Resolve(CUfunction f, uint64_t* id, int* device) {
  Runtime& rt = Runtime::Get();
  FunctionState function;
  FERRY_RETURN_IF_ERROR(rt.ResolveFunction(Runtime::HandleId(f), 0, id, &function));
  return rt.contexts().Device(function.ctx, device);
}

Status FunctionAttribute(uint64_t function, CUfunction_attribute attribute, int* value) {
  return Runtime::Get().connection().Call(
      [&](wire::Call::Builder call) {
        auto args = call.initFuncGetAttribute();
        args.setFunction(function);
        args.setAttribute(attribute);
      },
      {}, {},
      [&](wire::Reply::Reader reply) {
        *value = static_cast<int>(reply.getValue());
        return Status::Ok();
      });
}

Status MaxPotentialBlockSize(int* min_grid_size, int* block_size, CUfunction func,
                             CUoccupancyB2DSize smem_of_block_size, size_t dynamic_smem,
                             int block_size_limit, unsigned flags) {
  if (min_grid_size == nullptr || block_size == nullptr) {
    return Status::InvalidArgument("minGridSize or blockSize is NULL");
  }
  if (block_size_limit < 0) return Status::InvalidArgument("blockSizeLimit is negative");
  Runtime& rt = Runtime::Get();
  uint64_t function = 0;
  int device = 0;
  FERRY_RETURN_IF_ERROR(Resolve(func, &function, &device));
  const auto& info = rt.devices()[device];
  const int warp = std::max(1, info.Attribute(CU_DEVICE_ATTRIBUTE_WARP_SIZE));
  int function_max = 0;
  FERRY_RETURN_IF_ERROR(
      FunctionAttribute(function, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, &function_max));
  int largest = std::min(info.Attribute(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK), function_max);
  if (block_size_limit > 0) largest = std::min(largest, block_size_limit);
  if (largest <= 0) {
    *min_grid_size = 0;
    *block_size = 0;
    return Status::Ok();
  }
  std::vector<uint32_t> sizes;
  std::vector<uint64_t> smem;
  for (int aligned = (largest + warp - 1) / warp * warp; aligned > 0; aligned -= warp) {
    const int size = std::min(largest, aligned);
    sizes.push_back(static_cast<uint32_t>(size));
    smem.push_back(smem_of_block_size != nullptr ? smem_of_block_size(size) : dynamic_smem);
  }
  std::vector<int> blocks;
  FERRY_RETURN_IF_ERROR(MaxActiveBlocks(function, sizes, smem, flags, &blocks));
  int best_size = 0, best_blocks = 0;
  long long best_threads = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const long long threads = 1ll * blocks[i] * sizes[i];
    if (threads > best_threads) {
      best_threads = threads;
      best_size = static_cast<int>(sizes[i]);
      best_blocks = blocks[i];
    }
  }
  *block_size = best_size;
  *min_grid_size = best_blocks * info.Attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
  return Status::Ok();
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
  return rt.connection().Call(
      [&](wire::Call::Builder call) {
        auto args = call.initOccupancyCluster();
        args.setFunction(id);
        args.setQuery(query);
        args.setGridX(config->gridDimX);
        args.setGridY(config->gridDimY);
        args.setGridZ(config->gridDimZ);
        args.setBlockX(config->blockDimX);
        args.setBlockY(config->blockDimY);
        args.setBlockZ(config->blockDimZ);
        args.setSharedBytes(config->sharedMemBytes);
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
    FERRY_RETURN_IF_ERROR(MaxActiveBlocks(function, {static_cast<uint32_t>(blockSize)},
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
    return Runtime::Get().connection().Call(
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
