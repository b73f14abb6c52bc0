#include "client/occupancy.h"

#include <cuda.h>

#include <algorithm>

namespace ferry::client {

Status MaxActiveBlocks(Runtime& rt, uint64_t function, const std::vector<uint32_t>& block_sizes,
                       const std::vector<uint64_t>& smem, unsigned flags,
                       std::vector<int>* blocks) {
  return rt.FunctionConnection(function).Call(
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

Status FunctionAttribute(Runtime& rt, uint64_t function, int attribute, int* value) {
  return rt.FunctionConnection(function).Call(
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

namespace {

// The function's CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: asked of the
// server the first time only.
Status FunctionMaxThreads(Runtime& rt, uint64_t function, int* value) {
  if (rt.modules().MaxThreadsPerBlock(function, value)) return Status::Ok();
  FERRY_RETURN_IF_ERROR(
      FunctionAttribute(rt, function, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, value));
  rt.modules().NoteMaxThreadsPerBlock(function, *value);
  return Status::Ok();
}

}  // namespace

Status MaxPotentialBlockSize(Runtime& rt, uint64_t handle,
                             absl::FunctionRef<size_t(int)> smem_of_block_size,
                             int block_size_limit, unsigned flags, int* min_grid_size,
                             int* block_size) {
  if (min_grid_size == nullptr || block_size == nullptr) {
    return Status::InvalidArgument("minGridSize or blockSize is NULL");
  }
  if (block_size_limit < 0) return Status::InvalidArgument("blockSizeLimit is negative");
  uint64_t function = 0;
  FunctionState state;
  FERRY_RETURN_IF_ERROR(rt.ResolveFunction(handle, 0, &function, &state));
  int device = 0;
  FERRY_RETURN_IF_ERROR(rt.contexts().Device(state.ctx, &device));
  const auto& info = rt.devices()[device];
  const int warp = std::max(1, info.Attribute(CU_DEVICE_ATTRIBUTE_WARP_SIZE));
  int function_max = 0;
  FERRY_RETURN_IF_ERROR(FunctionMaxThreads(rt, function, &function_max));
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
    smem.push_back(smem_of_block_size(size));
  }
  std::vector<int> blocks;
  FERRY_RETURN_IF_ERROR(MaxActiveBlocks(rt, function, sizes, smem, flags, &blocks));
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

}  // namespace ferry::client
