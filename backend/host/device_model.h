// Private to the host backend: the documented model of the device it
// emulates, and of the per-context limits and per-function attributes it
// reports.
//
// The device is an sm_90-class GPU shaped like an H100 SXM (132 SMs, 50 MiB
// L2, 5120-bit HBM3 bus, 227 KiB opt-in shared memory per block). Features
// that a client could only use through calls the GpuBackend interface does not
// carry — mapped/managed memory, memory pools, virtual memory management, IPC,
// stream memory operations, cooperative launch — are reported as unsupported
// (0), so that runtimes take their portable paths instead of failing later.
//
// Thread-safety: pure functions and constants.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "backend/api/gpu_backend.h"
#include "common/status.h"

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

}  // namespace ferry::backend::host_internal
