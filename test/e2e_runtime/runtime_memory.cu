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

#define CHECK(call)                                                              \
  do {                                                                           \
    const cudaError_t error_ = (call);                                           \
    if (error_ != cudaSuccess) {                                                 \
      std::printf("FAILED %s: %s (%s, %d)\n", #call, cudaGetErrorString(error_), \
                  cudaGetErrorName(error_), static_cast<int>(error_));           \
      return 1;                                                                  \
    }                                                                            \
  } while (0)

#define EXPECT(condition)                           \
  do {                                              \
    if (!(condition)) {                             \
      std::printf("FAILED check %s\n", #condition); \
      return 1;                                     \
    }                                               \
  } while (0)

int main() {
  int runtime_version = 0, driver_version = 0;
  CHECK(cudaRuntimeGetVersion(&runtime_version));
  CHECK(cudaDriverGetVersion(&driver_version));
  std::printf("runtime %d driver %d\n", runtime_version, driver_version);

  int count = 0;
  CHECK(cudaGetDeviceCount(&count));
  std::printf("devices %d\n", count);
  EXPECT(count >= 1);

  cudaDeviceProp prop;
  std::memset(&prop, 0, sizeof(prop));
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device 0: %s, compute %d.%d, %zu bytes, %d SMs\n", prop.name, prop.major, prop.minor,
              prop.totalGlobalMem, prop.multiProcessorCount);
  EXPECT(prop.name[0] != '\0');
  EXPECT(prop.totalGlobalMem > 0);
  CHECK(cudaSetDevice(0));

  const size_t n = 1 << 20;
  const size_t bytes = n * sizeof(float);
  std::vector<float> host(n), back(n, -1.0f);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<float>(i) * 0.5f;

  float* a = nullptr;
  float* b = nullptr;
  CHECK(cudaMalloc(&a, bytes));
  CHECK(cudaMalloc(&b, bytes));
  EXPECT(a != nullptr && b != nullptr && a != b);

  CHECK(cudaMemcpy(a, host.data(), bytes, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(back.data(), a, bytes, cudaMemcpyDeviceToHost));
  EXPECT(std::memcmp(back.data(), host.data(), bytes) == 0);
  std::printf("copy host -> device -> host: %zu floats ok\n", n);

  CHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
  CHECK(cudaMemset(a, 0x5a, bytes));
  CHECK(cudaDeviceSynchronize());
  std::vector<unsigned char> raw(bytes, 0);
  CHECK(cudaMemcpy(raw.data(), a, bytes, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < bytes; ++i) EXPECT(raw[i] == 0x5a);
  std::printf("memset: %zu bytes ok\n", bytes);
  std::fill(back.begin(), back.end(), -1.0f);
  CHECK(cudaMemcpy(back.data(), b, bytes, cudaMemcpyDeviceToHost));
  EXPECT(std::memcmp(back.data(), host.data(), bytes) == 0);
  std::printf("copy device -> device: ok\n");

  size_t free_bytes = 0, total_bytes = 0;
  CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  std::printf("memory: %zu free of %zu\n", free_bytes, total_bytes);

  // cudaPointerGetAttributes asks the driver for every attribute at once,
  // including ones that do not apply to the pointer's kind of memory.
  cudaPointerAttributes attributes;
  std::memset(&attributes, 0xff, sizeof(attributes));
  CHECK(cudaPointerGetAttributes(&attributes, a + 10));
  EXPECT(attributes.type == cudaMemoryTypeDevice);
  EXPECT(attributes.device == 0);
  EXPECT(attributes.devicePointer == a + 10);
  EXPECT(attributes.hostPointer == nullptr);
  float* pinned = nullptr;
  CHECK(cudaMallocHost(&pinned, 4096));
  std::memset(&attributes, 0xff, sizeof(attributes));
  CHECK(cudaPointerGetAttributes(&attributes, pinned));
  EXPECT(attributes.type == cudaMemoryTypeHost);
  EXPECT(attributes.hostPointer == pinned);
  CHECK(cudaFreeHost(pinned));
  std::memset(&attributes, 0xff, sizeof(attributes));
  CHECK(cudaPointerGetAttributes(&attributes, host.data()));
  EXPECT(attributes.type == cudaMemoryTypeUnregistered);
  std::printf("cudaPointerGetAttributes of device, pinned and pageable memory: ok\n");

  CHECK(cudaFree(a));
  CHECK(cudaFree(b));
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaGetLastError());
  std::printf("all checks passed\n");
  return 0;
}
