// An ordinary CUDA runtime program (no kernels): device count and
// properties, allocation, copies both ways, memset, device-to-device copy,
// pointer attributes, synchronisation, free. Built twice by nvcc (-cudart static and shared) and
// run through ferry's libcuda.so.1 by runtime_e2e_test; prints what it found
// and "all checks passed", or the first failure and exits 1.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "runtime_check.h"

int main() {
  int runtime_version = 0, driver_version = 0;
  RT_CHECK(cudaRuntimeGetVersion(&runtime_version));
  RT_CHECK(cudaDriverGetVersion(&driver_version));
  std::printf("runtime %d driver %d\n", runtime_version, driver_version);

  int count = 0;
  RT_CHECK(cudaGetDeviceCount(&count));
  std::printf("devices %d\n", count);
  RT_EXPECT(count >= 1);

  cudaDeviceProp prop;
  std::memset(&prop, 0, sizeof(prop));
  RT_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device 0: %s, compute %d.%d, %zu bytes, %d SMs\n", prop.name, prop.major, prop.minor,
              prop.totalGlobalMem, prop.multiProcessorCount);
  RT_EXPECT(prop.name[0] != '\0');
  RT_EXPECT(prop.totalGlobalMem > 0);
  RT_CHECK(cudaSetDevice(0));

  const size_t n = 1 << 20;
  const size_t bytes = n * sizeof(float);
  std::vector<float> host(n), back(n, -1.0f);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<float>(i) * 0.5f;

  float* a = nullptr;
  float* b = nullptr;
  RT_CHECK(cudaMalloc(&a, bytes));
  RT_CHECK(cudaMalloc(&b, bytes));
  RT_EXPECT(a != nullptr && b != nullptr && a != b);

  RT_CHECK(cudaMemcpy(a, host.data(), bytes, cudaMemcpyHostToDevice));
  RT_CHECK(cudaMemcpy(back.data(), a, bytes, cudaMemcpyDeviceToHost));
  RT_EXPECT(std::memcmp(back.data(), host.data(), bytes) == 0);
  std::printf("copy host -> device -> host: %zu floats ok\n", n);

  RT_CHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
  RT_CHECK(cudaMemset(a, 0x5a, bytes));
  RT_CHECK(cudaDeviceSynchronize());
  std::vector<unsigned char> raw(bytes, 0);
  RT_CHECK(cudaMemcpy(raw.data(), a, bytes, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < bytes; ++i) RT_EXPECT(raw[i] == 0x5a);
  std::printf("memset: %zu bytes ok\n", bytes);
  std::fill(back.begin(), back.end(), -1.0f);
  RT_CHECK(cudaMemcpy(back.data(), b, bytes, cudaMemcpyDeviceToHost));
  RT_EXPECT(std::memcmp(back.data(), host.data(), bytes) == 0);
  std::printf("copy device -> device: ok\n");

  size_t free_bytes = 0, total_bytes = 0;
  RT_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  std::printf("memory: %zu free of %zu\n", free_bytes, total_bytes);

  // cudaPointerGetAttributes asks the driver for every attribute at once,
  // including ones that do not apply to the pointer's kind of memory.
  cudaPointerAttributes attributes;
  std::memset(&attributes, 0xff, sizeof(attributes));
  RT_CHECK(cudaPointerGetAttributes(&attributes, a + 10));
  RT_EXPECT(attributes.type == cudaMemoryTypeDevice);
  RT_EXPECT(attributes.device == 0);
  RT_EXPECT(attributes.devicePointer == a + 10);
  RT_EXPECT(attributes.hostPointer == nullptr);
  float* pinned = nullptr;
  RT_CHECK(cudaMallocHost(&pinned, 4096));
  std::memset(&attributes, 0xff, sizeof(attributes));
  RT_CHECK(cudaPointerGetAttributes(&attributes, pinned));
  RT_EXPECT(attributes.type == cudaMemoryTypeHost);
  RT_EXPECT(attributes.hostPointer == pinned);
  RT_CHECK(cudaFreeHost(pinned));
  std::memset(&attributes, 0xff, sizeof(attributes));
  RT_CHECK(cudaPointerGetAttributes(&attributes, host.data()));
  RT_EXPECT(attributes.type == cudaMemoryTypeUnregistered);
  std::printf("cudaPointerGetAttributes of device, pinned and pageable memory: ok\n");

  RT_CHECK(cudaFree(a));
  RT_CHECK(cudaFree(b));
  RT_CHECK(cudaDeviceSynchronize());
  RT_CHECK(cudaGetLastError());
  std::printf("all checks passed\n");
  return 0;
}
