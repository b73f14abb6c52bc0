// Stream-ordered allocation and memory pools through the CUDA runtime, on a
// slice of a pool (ferryd runs with runtime_pools.toml: a quarter of the
// device):
// cudaMallocAsync / cudaFreeAsync on a stream with a kernel in between, the
// device's default and current pool, a created pool with attributes set and
// read back, allocation past the slice's quota failing with out of memory,
// stream attributes (access policy window, synchronization policy), stream
// memory operations and a context-wide event through the driver API on the
// runtime's streams, and cudaProfilerStart / cudaProfilerStop.
#include <cuda.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "runtime_check.h"
#include "runtime_kernels.cuh"

namespace {

// Copies `n` floats of `d` back (synchronising `stream`) and checks that
// element i is i * factor.
void ExpectScaled(const float* d, int n, float factor, cudaStream_t stream) {
  std::vector<float> out(n);
  RT_CHECK(cudaMemcpyAsync(out.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost, stream));
  RT_CHECK(cudaStreamSynchronize(stream));
  for (int i = 0; i < n; ++i) RT_EXPECT(out[i] == static_cast<float>(i) * factor);
}

uint64_t PoolAttribute(cudaMemPool_t pool, cudaMemPoolAttr attribute) {
  uint64_t value = 0;
  RT_CHECK(cudaMemPoolGetAttribute(pool, attribute, &value));
  return value;
}

}  // namespace

int main() {
  int supported = 0;
  RT_CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, 0));
  RT_EXPECT(supported == 1);
  RT_CHECK(cudaProfilerStart());

  cudaStream_t stream;
  RT_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const int n = 1 << 16;
  const size_t bytes = n * sizeof(float);
  std::vector<float> host(n);
  for (int i = 0; i < n; ++i) host[i] = static_cast<float>(i);

  // Allocate, fill, scale with a kernel, read back, free: all in stream order.
  float* d = nullptr;
  RT_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&d), bytes, stream));
  RT_EXPECT(d != nullptr);
  RT_CHECK(cudaMemcpyAsync(d, host.data(), bytes, cudaMemcpyHostToDevice, stream));
  // A stream attribute over the allocation: set, read back, copied.
  cudaStreamAttrValue window = {};
  window.accessPolicyWindow.base_ptr = d;
  window.accessPolicyWindow.num_bytes = bytes;
  window.accessPolicyWindow.hitRatio = 0.6f;
  window.accessPolicyWindow.hitProp = cudaAccessPropertyPersisting;
  window.accessPolicyWindow.missProp = cudaAccessPropertyStreaming;
  RT_CHECK(cudaStreamSetAttribute(stream, cudaStreamAttributeAccessPolicyWindow, &window));
  rt_scale<float><<<(n + 255) / 256, 256, 0, stream>>>(d, 2.0f, n);
  RT_CHECK(cudaGetLastError());
  ExpectScaled(d, n, 2.0f, stream);
  cudaStream_t copy;
  RT_CHECK(cudaStreamCreate(&copy));
  RT_CHECK(cudaStreamCopyAttributes(copy, stream));
  cudaStreamAttrValue read_window = {};
  RT_CHECK(cudaStreamGetAttribute(copy, cudaStreamAttributeAccessPolicyWindow, &read_window));
  RT_EXPECT(read_window.accessPolicyWindow.base_ptr == d);
  RT_EXPECT(read_window.accessPolicyWindow.num_bytes == bytes);
  RT_EXPECT(read_window.accessPolicyWindow.hitRatio == 0.6f);
  RT_EXPECT(read_window.accessPolicyWindow.hitProp == cudaAccessPropertyPersisting);
  cudaStreamAttrValue policy = {};
  policy.syncPolicy = cudaSyncPolicyYield;
  RT_CHECK(cudaStreamSetAttribute(copy, cudaStreamAttributeSynchronizationPolicy, &policy));
  cudaStreamAttrValue read_policy = {};
  RT_CHECK(cudaStreamGetAttribute(copy, cudaStreamAttributeSynchronizationPolicy, &read_policy));
  RT_EXPECT(read_policy.syncPolicy == cudaSyncPolicyYield);
  window.accessPolicyWindow.num_bytes = 0;  // reset before the memory goes
  RT_CHECK(cudaStreamSetAttribute(stream, cudaStreamAttributeAccessPolicyWindow, &window));
  RT_CHECK(cudaStreamDestroy(copy));
  std::printf("stream attributes: ok\n");
  RT_CHECK(cudaFreeAsync(d, stream));
  RT_CHECK(cudaStreamSynchronize(stream));
  std::printf("cudaMallocAsync / kernel / cudaFreeAsync: ok\n");

  // The default pool is the device's current pool.
  cudaMemPool_t default_pool, current;
  RT_CHECK(cudaDeviceGetDefaultMemPool(&default_pool, 0));
  RT_CHECK(cudaDeviceGetMemPool(&current, 0));
  RT_EXPECT(current == default_pool);

  // A created pool: attributes set and read back.
  cudaMemPoolProps props = {};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = 0;
  cudaMemPool_t pool;
  RT_CHECK(cudaMemPoolCreate(&pool, &props));
  uint64_t threshold = uint64_t{32} << 20;
  RT_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  RT_EXPECT(PoolAttribute(pool, cudaMemPoolAttrReleaseThreshold) == threshold);
  int opportunistic = 0;
  RT_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolReuseAllowOpportunistic, &opportunistic));
  int read_back = -1;
  RT_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolReuseAllowOpportunistic, &read_back));
  RT_EXPECT(read_back == 0);

  // From the created pool, explicitly and as the device's current pool.
  float* a = nullptr;
  float* b = nullptr;
  RT_CHECK(cudaMallocFromPoolAsync(reinterpret_cast<void**>(&a), bytes, pool, stream));
  RT_CHECK(cudaDeviceSetMemPool(0, pool));
  RT_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&b), bytes, stream));
  RT_EXPECT(PoolAttribute(pool, cudaMemPoolAttrUsedMemCurrent) >= 2 * bytes);
  RT_CHECK(cudaMemcpyAsync(a, host.data(), bytes, cudaMemcpyHostToDevice, stream));
  RT_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream));
  rt_scale<float><<<(n + 255) / 256, 256, 0, stream>>>(b, 3.0f, n);
  RT_CHECK(cudaGetLastError());
  ExpectScaled(b, n, 3.0f, stream);
  RT_CHECK(cudaFreeAsync(a, stream));
  RT_CHECK(cudaFreeAsync(b, stream));
  RT_CHECK(cudaStreamSynchronize(stream));
  RT_EXPECT(PoolAttribute(pool, cudaMemPoolAttrUsedMemCurrent) == 0);
  RT_CHECK(cudaMemPoolTrimTo(pool, 0));
  RT_CHECK(cudaDeviceSetMemPool(0, default_pool));
  RT_CHECK(cudaMemPoolDestroy(pool));
  std::printf("created pool with attributes: ok\n");

  // The slice's quota holds for stream-ordered allocations.
  size_t free_bytes = 0, total = 0;
  RT_CHECK(cudaMemGetInfo(&free_bytes, &total));
  RT_EXPECT(total > 0 && free_bytes > 0 && free_bytes <= total);
  const size_t first = free_bytes / 2;
  const size_t rest = free_bytes - first;
  void* half = nullptr;
  void* over = nullptr;
  RT_CHECK(cudaMallocAsync(&half, first, stream));
  RT_EXPECT(cudaMallocAsync(&over, rest + 1, stream) == cudaErrorMemoryAllocation);
  RT_EXPECT(cudaGetLastError() == cudaErrorMemoryAllocation);
  RT_CHECK(cudaFreeAsync(half, stream));
  RT_CHECK(cudaStreamSynchronize(stream));
  // Given back once the free has executed.
  RT_CHECK(cudaMallocAsync(&over, rest + 1, stream));
  RT_CHECK(cudaFreeAsync(over, stream));
  RT_CHECK(cudaStreamSynchronize(stream));
  std::printf("allocation past the slice's quota: out of memory\n");

  // Stream memory operations: a stream waits for a value another writes.
  unsigned* flag = nullptr;
  RT_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&flag), 2 * sizeof(unsigned), stream));
  RT_CHECK(cudaMemsetAsync(flag, 0, 2 * sizeof(unsigned), stream));
  RT_CHECK(cudaStreamSynchronize(stream));
  cudaStream_t waiter;
  RT_CHECK(cudaStreamCreateWithFlags(&waiter, cudaStreamNonBlocking));
  RT_CHECK_CU(
      cuStreamWaitValue32(waiter, reinterpret_cast<CUdeviceptr>(flag), 1, CU_STREAM_WAIT_VALUE_EQ));
  RT_CHECK(cudaMemsetAsync(flag + 1, 0xFF, sizeof(unsigned), waiter));
  RT_EXPECT(cudaStreamQuery(waiter) == cudaErrorNotReady);
  (void)cudaGetLastError();
  RT_CHECK_CU(cuStreamWriteValue32(stream, reinterpret_cast<CUdeviceptr>(flag), 1, 0));
  RT_CHECK(cudaStreamSynchronize(waiter));
  unsigned after = 0;
  RT_CHECK(cudaMemcpy(&after, flag + 1, sizeof(after), cudaMemcpyDeviceToHost));
  RT_EXPECT(after == 0xFFFFFFFFu);
  // A context-wide event captures both streams.
  CUcontext ctx = nullptr;
  RT_CHECK_CU(cuCtxGetCurrent(&ctx));
  cudaEvent_t everything;
  RT_CHECK(cudaEventCreate(&everything));
  RT_CHECK_CU(cuCtxRecordEvent(ctx, reinterpret_cast<CUevent>(everything)));
  RT_CHECK_CU(cuCtxWaitEvent(ctx, reinterpret_cast<CUevent>(everything)));
  RT_CHECK(cudaEventSynchronize(everything));
  RT_CHECK(cudaEventDestroy(everything));
  RT_CHECK(cudaFreeAsync(flag, stream));
  RT_CHECK(cudaStreamDestroy(waiter));
  std::printf("stream memory operations and context events: ok\n");

  RT_CHECK(cudaStreamDestroy(stream));
  RT_CHECK(cudaProfilerStop());
  std::printf("all checks passed\n");
  return 0;
}
