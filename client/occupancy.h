// Occupancy questions the client answers with the server's help (ferry_client_core,
// so tests can run them on a Runtime of their own).
//
// cuOccupancyMaxPotentialBlockSize takes a callback in the program, which the
// server cannot call, so the search runs here: the candidate block sizes are
// the function's largest (the least of the device's and the function's
// CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK and the caller's limit), then every
// multiple of the warp size below it; the callback gives each one's dynamic
// shared memory, and all candidates go to the server in one
// occupancyMaxActiveBlocks call. The best is the candidate with the most
// resident threads per SM (blocks x size), the largest size among equals;
// the minimum grid is its blocks per SM times the SM count.
//
// Round trips: one per search. The function's maximum block size, which the
// candidates depend on, is fetched once per function (a property of its
// code) and kept in the module registry.
//
// Thread-safety: safe from any thread, as the Runtime is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "client/runtime.h"
#include "common/status.h"

namespace ferry::client {

// The value of `attribute` (a CUfunction_attribute) of `function` (a function
// id), asked of the server.
Status FunctionAttribute(Runtime& rt, uint64_t function, int attribute, int* value);

// Blocks per SM of `function` (a function id, not a kernel) for each
// (block size, dynamic shared bytes) pair, in one call.
Status MaxActiveBlocks(Runtime& rt, uint64_t function, const std::vector<uint32_t>& block_sizes,
                       const std::vector<uint64_t>& smem, unsigned flags, std::vector<int>* blocks);

// The search above for `handle` (a CUfunction, or a CUkernel in the current
// context). `smem_of_block_size(size)` gives the dynamic shared memory of a
// candidate; `block_size_limit` 0 means none.
Status MaxPotentialBlockSize(Runtime& rt, uint64_t handle,
                             absl::FunctionRef<size_t(int)> smem_of_block_size,
                             int block_size_limit, unsigned flags, int* min_grid_size,
                             int* block_size);

}  // namespace ferry::client
