// Private to the host backend: the documented model of the device it
// emulates, and of the per-context limits and per-function attributes it
// reports.
//
// The device is an sm_90-class GPU shaped like an H100 SXM (132 SMs, 50 MiB
// L2, 5120-bit HBM3 bus, 227 KiB opt-in shared memory per block). Features
// that a client could only use through calls the GpuBackend interface does not
// carry — mapped/managed memory, IPC, cooperative launch — are reported as unsupported
// (0), so that runtimes take their portable paths instead of failing later.
//
// Thread-safety: pure functions and constants.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "common/status.h"
#include "server/backend/api/gpu_backend.h"

namespace ferry::backend::host_internal {

inline constexpr int kDriverVersion = 13000;

// Device limits the backend also enforces.
inline constexpr int kMaxThreadsPerBlock = 1024;
inline constexpr uint32_t kMaxBlockDim[3] = {1024, 1024, 64};
inline constexpr uint32_t kMaxGridDim[3] = {2147483647u, 65535u, 65535u};
inline constexpr int kSharedMemoryPerBlock = 48 * 1024;        // without opt-in
inline constexpr int kSharedMemoryPerBlockOptin = 227 * 1024;  // 232448
inline constexpr int kPortableClusterSize = 8;
inline constexpr int kNonPortableClusterSize = 16;
inline constexpr int kMaxPersistingL2CacheSize = 30 * 1024 * 1024;
// cuMemAllocPitch's pitch granularity (CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT
// is 32; real drivers pad to 512 on sm_90, which is what programs observe).
inline constexpr uint64_t kPitchAlignment = 512;
// Every allocation starts on this boundary, as cuMemAlloc guarantees.
inline constexpr uint64_t kAllocationAlignment = 256;

// The description of emulated device `index` with `memory` bytes. The UUID
// and PCI location are deterministic functions of `index`.
DeviceDescription MakeDeviceDescription(int index, uint64_t memory);

// --- context limits (CUlimit) ------------------------------------------------
inline constexpr int kLimitCount = CU_LIMIT_MAX;
// Default value of each limit.
uint64_t DefaultLimit(int limit);
// OK if `limit` may be set to `value`; CUDA_ERROR_UNSUPPORTED_LIMIT for an
// unknown limit, CUDA_ERROR_INVALID_VALUE for a read-only one or a bad value.
Status CheckSetLimit(int limit, uint64_t value);

// --- function attributes (CUfunction_attribute) ------------------------------
inline constexpr int kFunctionAttributeCount = CU_FUNC_ATTRIBUTE_MAX;
// Default value of each attribute for every kernel (the host backend cannot
// know a kernel's real register or static shared-memory use).
int DefaultFunctionAttribute(int attribute);
// OK if `attribute` may be set to `value` (cuFuncSetAttribute); otherwise
// CUDA_ERROR_INVALID_VALUE naming the problem.
Status CheckSetFunctionAttribute(int attribute, int value);

// --- occupancy ---------------------------------------------------------------
// The model behind the host backend's cuOccupancy* answers: the resources of
// one sm_90 multiprocessor as the device attributes above report them, and a
// kernel's use of them as its function attributes report it (the host cannot
// know a kernel's real register count: CU_FUNC_ATTRIBUTE_NUM_REGS is 32 and
// static shared memory 0 unless a cubin says otherwise).
//
// Blocks of B threads using S bytes of dynamic shared memory fit on one SM
// min(by warps, by registers, by shared memory, 32) times, where
//  * by warps      = 64 / ceil(B / 32)                   (2048 threads per SM)
//  * by registers  = floor(65536 / R) / ceil(B / 32), R = the registers one
//                    warp holds: NUM_REGS * 32 rounded up to 256
//  * by shared mem = floor(233472 / round_up(static + S + 1024, 128)): 228 KiB
//                    per SM, 1 KiB reserved per block, 128-byte granules
// and 0 when B exceeds the kernel's MAX_THREADS_PER_BLOCK or S its
// MAX_DYNAMIC_SHARED_SIZE_BYTES. Clusters: a cluster is placed within one GPC
// of 16 SMs, and the device has 8 such GPCs; the largest cluster is 8 blocks
// (16 with NON_PORTABLE_CLUSTER_SIZE_ALLOWED).
inline constexpr int kWarpSize = 32;
inline constexpr int kMaxWarpsPerMultiprocessor = 64;
inline constexpr int kMaxBlocksPerMultiprocessor = 32;
inline constexpr int kRegistersPerMultiprocessor = 65536;
inline constexpr int kRegisterAllocationUnit = 256;  // per warp
inline constexpr int kSharedMemoryPerMultiprocessor = 228 * 1024;
inline constexpr int kReservedSharedMemoryPerBlock = 1024;
inline constexpr int kSharedMemoryAllocationUnit = 128;
inline constexpr int kMultiprocessorCount = 132;  // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
inline constexpr int kMultiprocessorsPerGpc = 16;
inline constexpr int kGpcCount = 8;

// What the model needs to know of a kernel (its function attributes).
struct KernelResources {
  int max_threads_per_block = kMaxThreadsPerBlock;
  int num_regs = 32;
  int static_shared_bytes = 0;
  int max_dynamic_shared_bytes = kSharedMemoryPerBlock;
  bool non_portable_cluster_size_allowed = false;
  int required_cluster[3] = {0, 0, 0};  // 0: none required
};

// Blocks per SM; InvalidValue for block_size <= 0.
Status MaxActiveBlocksPerMultiprocessor(const KernelResources& kernel, int block_size,
                                        uint64_t dynamic_shared_bytes, int* blocks);
// The most dynamic shared memory each of `num_blocks` blocks of `block_size`
// threads may use with all of them resident on one SM (0 if they cannot be).
Status AvailableDynamicSharedMemoryPerBlock(const KernelResources& kernel, int num_blocks,
                                            int block_size, uint64_t* bytes);
// The largest cluster (in blocks) a launch with `block_size` threads and
// `dynamic_shared_bytes` per block could use (0 if one block cannot fit).
Status MaxPotentialClusterSize(const KernelResources& kernel, int block_size,
                               uint64_t dynamic_shared_bytes, int* cluster_size);
// Clusters of `cluster_blocks` blocks (0: the kernel's required cluster, or
// 1) that can be resident on the device at once.
Status MaxActiveClusters(const KernelResources& kernel, int block_size,
                         uint64_t dynamic_shared_bytes, int cluster_blocks, int* clusters);

}  // namespace ferry::backend::host_internal
