#include "server/backend/host/device_model.h"

#include <algorithm>
#include <string>

namespace ferry::backend::host_internal {
namespace {

// FNV-1a over `text`, started from `seed`: a stable, dependency-free way to
// turn a name into UUID bytes (UUIDs must not change between ferryd runs, or
// a client's device selection by UUID would break).
uint64_t Fnv1a(std::string_view text, uint64_t seed) {
  uint64_t h = seed;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

std::array<uint8_t, 16> DeviceUuid(int index) {
  const std::string name = "ferry host device " + std::to_string(index);
  const uint64_t hi = Fnv1a(name, 0xcbf29ce484222325ull);
  const uint64_t lo = Fnv1a(name, hi ^ 0x9e3779b97f4a7c15ull);
  std::array<uint8_t, 16> uuid{};
  for (int i = 0; i < 8; ++i) {
    uuid[i] = static_cast<uint8_t>(hi >> (56 - 8 * i));
    uuid[8 + i] = static_cast<uint8_t>(lo >> (56 - 8 * i));
  }
  // Shape it like an RFC 4122 name-based (version 5) UUID, as NVIDIA's are
  // printed "GPU-xxxxxxxx-...": tools that parse UUIDs accept it.
  uuid[6] = static_cast<uint8_t>((uuid[6] & 0x0f) | 0x50);
  uuid[8] = static_cast<uint8_t>((uuid[8] & 0x3f) | 0x80);
  return uuid;
}

}  // namespace

DeviceDescription MakeDeviceDescription(int index, uint64_t memory) {
  DeviceDescription d;
  d.name = "ferry host device (emulated sm_90)";
  d.uuid = DeviceUuid(index);
  d.total_memory = memory;
  // Plausible PCI location: one device per bus, as on an HGX board.
  d.pci_domain = 0;
  d.pci_bus = 0x18 + index;
  d.pci_device = 0;

  std::vector<int32_t>& a = d.attributes;
  a.assign(CU_DEVICE_ATTRIBUTE_MAX, 0);
  auto set = [&a](CUdevice_attribute attr, int32_t value) { a[attr] = value; };

  // Execution configuration.
  set(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, kMaxThreadsPerBlock);
  set(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, static_cast<int32_t>(kMaxBlockDim[0]));
  set(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y, static_cast<int32_t>(kMaxBlockDim[1]));
  set(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, static_cast<int32_t>(kMaxBlockDim[2]));
  set(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, static_cast<int32_t>(kMaxGridDim[0]));
  set(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, static_cast<int32_t>(kMaxGridDim[1]));
  set(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z, static_cast<int32_t>(kMaxGridDim[2]));
  set(CU_DEVICE_ATTRIBUTE_WARP_SIZE, 32);
  set(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, kMultiprocessorCount);
  set(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, 2048);
  set(CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR, 32);
  set(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 9);
  set(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 0);
  set(CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH, 1);
  // Cooperative launches: a twin emulates the whole grid in one call, so a
  // grid-wide sync is honoured by construction (ferry_host_kernel.h); grids
  // larger than the occupancy model can keep resident are refused as on a GPU.
  set(CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH, 1);

  // Memories.
  set(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, kSharedMemoryPerBlock);
  set(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, kSharedMemoryPerBlockOptin);
  set(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR, 228 * 1024);
  set(CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK, 1024);
  set(CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY, 64 * 1024);
  set(CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK, 65536);
  set(CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR, 65536);
  set(CU_DEVICE_ATTRIBUTE_MAX_PITCH, 2147483647);
  set(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, 50 * 1024 * 1024);
  set(CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE, kMaxPersistingL2CacheSize);
  set(CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE, 134213632);
  set(CU_DEVICE_ATTRIBUTE_GLOBAL_L1_CACHE_SUPPORTED, 1);
  set(CU_DEVICE_ATTRIBUTE_LOCAL_L1_CACHE_SUPPORTED, 1);
  set(CU_DEVICE_ATTRIBUTE_ECC_ENABLED, 1);
  set(CU_DEVICE_ATTRIBUTE_MEM_SYNC_DOMAIN_COUNT, 4);

  // Clocks and bus (kHz, bits).
  set(CU_DEVICE_ATTRIBUTE_CLOCK_RATE, 1980000);
  set(CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, 2619000);
  set(CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, 5120);
  set(CU_DEVICE_ATTRIBUTE_SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO, 2);

  // Concurrency and scheduling.
  set(CU_DEVICE_ATTRIBUTE_GPU_OVERLAP, 1);
  set(CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT, 2);
  set(CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS, 1);
  set(CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED, 1);
  set(CU_DEVICE_ATTRIBUTE_COMPUTE_PREEMPTION_SUPPORTED, 1);
  set(CU_DEVICE_ATTRIBUTE_COMPUTE_MODE, CU_COMPUTEMODE_DEFAULT);
  set(CU_DEVICE_ATTRIBUTE_KERNEL_EXEC_TIMEOUT, 0);
  set(CU_DEVICE_ATTRIBUTE_TENSOR_MAP_ACCESS_SUPPORTED, 1);

  // Addressing. Unified addressing holds: device pointers never collide with
  // the client's host pointers in meaning, and the client tells them apart by
  // its allocation table. Host memory registration is a client-local matter
  // (pinning changes nothing for a remote copy); mapping it into the device
  // is impossible across the network.
  set(CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, 1);
  set(CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED, 1);
  set(CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED, 1);  // the client accepts the flag
  set(CU_DEVICE_ATTRIBUTE_INTEGRATED, 0);
  set(CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY, 0);
  set(CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY, 0);
  // Stream-ordered allocation (cuMemAllocAsync, cuMemPool*) is forwarded;
  // pools cannot be shared between processes (no IPC handle types).
  set(CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, 1);
  // Stream memory operations (cuStreamWaitValue*, cuStreamWriteValue*,
  // cuStreamBatchMemOp) run on the stream's thread, 64-bit and NOR included.
  set(CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS, 1);
  set(CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR, 1);
  // Virtual memory management (cuMemAddressReserve, cuMemCreate, cuMemMap,
  // cuMemSetAccess) is forwarded; its handles cannot be exported to other
  // processes (no shareable handle types), and there is no compression or
  // RDMA.
  set(CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 1);
  set(CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, 0);
  set(CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_WIN32_HANDLE_SUPPORTED, 0);
  set(CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_WIN32_KMT_HANDLE_SUPPORTED, 0);
  set(CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED, 0);
  set(CU_DEVICE_ATTRIBUTE_GENERIC_COMPRESSION_SUPPORTED, 0);
  set(CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED, 0);

  // Textures and surfaces: sm_90 limits for what the host backend
  // implements (arrays of every shape; point-sampled or linearly filtered 1D, 2D,
  // 3D and layered textures over arrays and memory; surfaces over arrays, cubemap ones as
  // 6-face arrays). It samples no cubemap or mipmapped texture and has no
  // texture gather, so those limits are 0 (texture_sampler.h).
  set(CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT, 512);
  set(CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT, 32);
  set(CU_DEVICE_ATTRIBUTE_SURFACE_ALIGNMENT, 512);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE1D_WIDTH, 131072);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_WIDTH, 131072);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_HEIGHT, 65536);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_WIDTH, 16384);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_HEIGHT, 16384);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_DEPTH, 16384);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_WIDTH_ALTERNATE, 8192);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_HEIGHT_ALTERNATE, 8192);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_DEPTH_ALTERNATE, 32768);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_LAYERED_WIDTH, 32768);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_LAYERED_HEIGHT, 32768);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_LAYERED_LAYERS, 2048);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE1D_LAYERED_WIDTH, 32768);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE1D_LAYERED_LAYERS, 2048);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_GATHER_WIDTH, 0);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_GATHER_HEIGHT, 0);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURECUBEMAP_WIDTH, 0);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURECUBEMAP_LAYERED_WIDTH, 0);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURECUBEMAP_LAYERED_LAYERS, 0);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE1D_LINEAR_WIDTH, 268435456);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_LINEAR_WIDTH, 131072);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_LINEAR_HEIGHT, 65000);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_LINEAR_PITCH, 2097120);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_MIPMAPPED_WIDTH, 0);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_MIPMAPPED_HEIGHT, 0);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE1D_MIPMAPPED_WIDTH, 0);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE1D_WIDTH, 32768);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE2D_WIDTH, 131072);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE2D_HEIGHT, 65536);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE3D_WIDTH, 16384);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE3D_HEIGHT, 16384);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE3D_DEPTH, 16384);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE1D_LAYERED_WIDTH, 32768);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE1D_LAYERED_LAYERS, 2048);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE2D_LAYERED_WIDTH, 32768);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE2D_LAYERED_HEIGHT, 32768);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACE2D_LAYERED_LAYERS, 2048);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACECUBEMAP_WIDTH, 32768);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACECUBEMAP_LAYERED_WIDTH, 32768);
  set(CU_DEVICE_ATTRIBUTE_MAXIMUM_SURFACECUBEMAP_LAYERED_LAYERS, 2046);

  // Location and identity.
  set(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, d.pci_domain);
  set(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, d.pci_bus);
  set(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, d.pci_device);
  set(CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD, 0);
  set(CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD_GROUP_ID, index);
  set(CU_DEVICE_ATTRIBUTE_TCC_DRIVER, 0);
  set(CU_DEVICE_ATTRIBUTE_NUMA_CONFIG, CU_DEVICE_NUMA_CONFIG_NONE);
  set(CU_DEVICE_ATTRIBUTE_NUMA_ID, -1);
  set(CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID, -1);
  // H100 SXM5 80GB: device 0x2330, vendor 0x10de (NVIDIA); subsystem 0x16c1.
  set(CU_DEVICE_ATTRIBUTE_GPU_PCI_DEVICE_ID, static_cast<int32_t>((0x2330u << 16) | 0x10deu));
  set(CU_DEVICE_ATTRIBUTE_GPU_PCI_SUBSYSTEM_ID, static_cast<int32_t>((0x16c1u << 16) | 0x10deu));
  return d;
}

uint64_t DefaultLimit(int limit) {
  switch (limit) {
    case CU_LIMIT_STACK_SIZE:
      return 1024;
    case CU_LIMIT_PRINTF_FIFO_SIZE:
      return 1 << 20;
    case CU_LIMIT_MALLOC_HEAP_SIZE:
      return 8 << 20;
    case CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH:
      return 2;
    case CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT:
      return 2048;
    case CU_LIMIT_MAX_L2_FETCH_GRANULARITY:
      return 32;
    case CU_LIMIT_PERSISTING_L2_CACHE_SIZE:
      return 0;
    case CU_LIMIT_SHMEM_SIZE:
      return kSharedMemoryPerBlockOptin;
    case CU_LIMIT_CIG_ENABLED:
      return 0;
    case CU_LIMIT_CIG_SHMEM_FALLBACK_ENABLED:
      return 1;
    default:
      return 0;
  }
}

Status CheckSetLimit(int limit, uint64_t value) {
  switch (limit) {
    case CU_LIMIT_STACK_SIZE:
    case CU_LIMIT_PRINTF_FIFO_SIZE:
    case CU_LIMIT_MALLOC_HEAP_SIZE:
    case CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT:
      return Status::Ok();
    case CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH:
      // The device runtime nests at most 24 levels.
      if (value > 24) return Status::Cuda(CUDA_ERROR_INVALID_VALUE, "sync depth above 24");
      return Status::Ok();
    case CU_LIMIT_MAX_L2_FETCH_GRANULARITY:
      if (value > 128) {
        return Status::Cuda(CUDA_ERROR_INVALID_VALUE, "L2 fetch granularity above 128 bytes");
      }
      return Status::Ok();
    case CU_LIMIT_PERSISTING_L2_CACHE_SIZE:
      if (value > static_cast<uint64_t>(kMaxPersistingL2CacheSize)) {
        return Status::Cuda(CUDA_ERROR_INVALID_VALUE,
                            "persisting L2 cache size above the device maximum");
      }
      return Status::Ok();
    case CU_LIMIT_CIG_SHMEM_FALLBACK_ENABLED:
      if (value > 1) return Status::Cuda(CUDA_ERROR_INVALID_VALUE, "expected 0 or 1");
      return Status::Ok();
    case CU_LIMIT_SHMEM_SIZE:
    case CU_LIMIT_CIG_ENABLED:
      return Status::Cuda(CUDA_ERROR_INVALID_VALUE,
                          "limit " + std::to_string(limit) + " can only be queried");
    default:
      return Status::Cuda(CUDA_ERROR_UNSUPPORTED_LIMIT, "unknown limit " + std::to_string(limit));
  }
}

int DefaultFunctionAttribute(int attribute) {
  switch (attribute) {
    case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK:
      return kMaxThreadsPerBlock;
    case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES:
      return 0;
    case CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES:
      return 0;
    case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES:
      return 0;
    case CU_FUNC_ATTRIBUTE_NUM_REGS:
      return 32;
    case CU_FUNC_ATTRIBUTE_PTX_VERSION:
      return 90;
    case CU_FUNC_ATTRIBUTE_BINARY_VERSION:
      return 90;
    case CU_FUNC_ATTRIBUTE_CACHE_MODE_CA:
      return 0;
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES:
      return kSharedMemoryPerBlock;
    case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT:
      return -1;  // no preference
    default:
      return 0;  // cluster attributes: none required, portable only
  }
}

Status CheckSetFunctionAttribute(int attribute, int value) {
  auto bad = [&](const char* why) {
    return Status::Cuda(CUDA_ERROR_INVALID_VALUE, "function attribute " +
                                                      std::to_string(attribute) + " = " +
                                                      std::to_string(value) + ": " + why);
  };
  switch (attribute) {
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES:
      // Static shared memory is modelled as 0, so all of the opt-in is left.
      if (value < 0 || value > kSharedMemoryPerBlockOptin) return bad("out of range");
      return Status::Ok();
    case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT:
      if (value < -1 || value > 100) return bad("expected -1..100");
      return Status::Ok();
    case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH:
    case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_HEIGHT:
    case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH:
      if (value < 0 || value > kNonPortableClusterSize) return bad("out of range");
      return Status::Ok();
    case CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED:
      if (value != 0 && value != 1) return bad("expected 0 or 1");
      return Status::Ok();
    case CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE:
      if (value < CU_CLUSTER_SCHEDULING_POLICY_DEFAULT ||
          value > CU_CLUSTER_SCHEDULING_POLICY_LOAD_BALANCING) {
        return bad("unknown scheduling policy");
      }
      return Status::Ok();
    default:
      if (attribute >= 0 && attribute < kFunctionAttributeCount) return bad("read-only");
      return bad("unknown attribute");
  }
}

// --- occupancy (the model is described in device_model.h) ----------------------

namespace {

int CeilDiv(uint64_t a, uint64_t b) { return static_cast<int>((a + b - 1) / b); }
uint64_t RoundUpTo(uint64_t value, uint64_t unit) { return (value + unit - 1) / unit * unit; }

// Blocks per SM as limited by warps, registers and the block cap (not shared
// memory).
int BlocksByThreadsAndRegisters(const KernelResources& kernel, int block_size) {
  const int warps = CeilDiv(static_cast<uint64_t>(block_size), kWarpSize);
  int blocks = std::min(kMaxWarpsPerMultiprocessor / warps, kMaxBlocksPerMultiprocessor);
  if (kernel.num_regs > 0) {
    const uint64_t registers_per_warp =
        RoundUpTo(static_cast<uint64_t>(kernel.num_regs) * kWarpSize, kRegisterAllocationUnit);
    const int warps_by_registers =
        static_cast<int>(kRegistersPerMultiprocessor / registers_per_warp);
    blocks = std::min(blocks, warps_by_registers / warps);
  }
  return blocks;
}

uint64_t SharedBytesPerBlock(const KernelResources& kernel, uint64_t dynamic_shared_bytes) {
  return RoundUpTo(static_cast<uint64_t>(kernel.static_shared_bytes) + dynamic_shared_bytes +
                       kReservedSharedMemoryPerBlock,
                   kSharedMemoryAllocationUnit);
}

}  // namespace

Status MaxActiveBlocksPerMultiprocessor(const KernelResources& kernel, int block_size,
                                        uint64_t dynamic_shared_bytes, int* blocks) {
  if (block_size <= 0) {
    return Status::Cuda(CUDA_ERROR_INVALID_VALUE, "block size must be positive");
  }
  if (block_size > kernel.max_threads_per_block ||
      dynamic_shared_bytes > static_cast<uint64_t>(kernel.max_dynamic_shared_bytes)) {
    *blocks = 0;
    return Status::Ok();
  }
  const uint64_t by_shared =
      kSharedMemoryPerMultiprocessor / SharedBytesPerBlock(kernel, dynamic_shared_bytes);
  *blocks = static_cast<int>(
      std::min<uint64_t>(BlocksByThreadsAndRegisters(kernel, block_size), by_shared));
  return Status::Ok();
}

Status AvailableDynamicSharedMemoryPerBlock(const KernelResources& kernel, int num_blocks,
                                            int block_size, uint64_t* bytes) {
  if (num_blocks <= 0 || block_size <= 0) {
    return Status::Cuda(CUDA_ERROR_INVALID_VALUE, "block count and size must be positive");
  }
  *bytes = 0;
  if (block_size > kernel.max_threads_per_block ||
      num_blocks > BlocksByThreadsAndRegisters(kernel, block_size)) {
    return Status::Ok();
  }
  const uint64_t share = kSharedMemoryPerMultiprocessor / static_cast<uint64_t>(num_blocks) /
                         kSharedMemoryAllocationUnit * kSharedMemoryAllocationUnit;
  const uint64_t overhead =
      static_cast<uint64_t>(kernel.static_shared_bytes) + kReservedSharedMemoryPerBlock;
  if (share <= overhead) return Status::Ok();
  *bytes =
      std::min<uint64_t>(share - overhead, static_cast<uint64_t>(kernel.max_dynamic_shared_bytes));
  return Status::Ok();
}

Status MaxPotentialClusterSize(const KernelResources& kernel, int block_size,
                               uint64_t dynamic_shared_bytes, int* cluster_size) {
  int blocks = 0;
  FERRY_RETURN_IF_ERROR(
      MaxActiveBlocksPerMultiprocessor(kernel, block_size, dynamic_shared_bytes, &blocks));
  const int limit =
      kernel.non_portable_cluster_size_allowed ? kNonPortableClusterSize : kPortableClusterSize;
  *cluster_size = std::min(limit, blocks * kMultiprocessorsPerGpc);
  return Status::Ok();
}

Status MaxActiveClusters(const KernelResources& kernel, int block_size,
                         uint64_t dynamic_shared_bytes, int cluster_blocks, int* clusters) {
  if (cluster_blocks < 0) {
    return Status::Cuda(CUDA_ERROR_INVALID_CLUSTER_SIZE, "negative cluster size");
  }
  if (cluster_blocks == 0) {
    cluster_blocks = 1;
    for (int d : kernel.required_cluster) cluster_blocks *= d > 0 ? d : 1;
  }
  int largest = 0;
  FERRY_RETURN_IF_ERROR(
      MaxPotentialClusterSize(kernel, block_size, dynamic_shared_bytes, &largest));
  if (cluster_blocks > largest) {
    *clusters = 0;
    return Status::Ok();
  }
  int blocks = 0;
  FERRY_RETURN_IF_ERROR(
      MaxActiveBlocksPerMultiprocessor(kernel, block_size, dynamic_shared_bytes, &blocks));
  *clusters = blocks * kMultiprocessorsPerGpc / cluster_blocks * kGpcCount;
  return Status::Ok();
}

}  // namespace ferry::backend::host_internal
