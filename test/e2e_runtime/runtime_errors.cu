// A CUDA runtime program that makes mistakes and checks that each is reported
// with the error CUDA documents, and that the program keeps working after it
// (every error here is non-sticky: a kernel and copies run afterwards):
//   - cudaMalloc and cudaMallocHost of more than exists: cudaErrorMemoryAllocation;
//   - cudaFree of a pointer never allocated, of the inside of an allocation,
//     and twice; cudaFreeHost of a pointer never allocated: an error;
//   - copies and memsets outside an allocation: cudaErrorInvalidValue;
//   - cudaSetDevice of a device that does not exist: cudaErrorInvalidDevice;
//   - launches whose configuration no device can run (too many threads per
//     block, a block or grid dimension too large, more shared memory than a
//     block can have): an error from cudaGetLastError right after the
//     launch, as CUDA checks them when the launch is made;
//   - a launch of a kernel that the host backend has no implementation for
//     (rt_not_on_host: host_kernels.cc deliberately lacks it): the launch is
//     asynchronous, so cudaGetLastError after it is clean and the next
//     synchronisation reports cudaErrorNotSupported, and ferry's log names
//     the kernel.
// Meant for ferryd --backend host (on a GPU rt_not_on_host would simply run).
// Prints what it checked and "all checks passed", or the first failure.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "runtime_check.h"
#include "runtime_kernels.cuh"

// Has no host implementation in host_kernels.cc, on purpose.
__global__ void rt_not_on_host(int* out) { out[threadIdx.x] = 42; }

namespace {

// The program still works: allocates, copies both ways, launches a kernel,
// checks its result and frees. `after` names the preceding error.
void StillWorks(const char* after) {
  const int n = 300;
  std::vector<float> a(n), b(n), c(n);
  for (int i = 0; i < n; ++i) {
    a[i] = static_cast<float>(i);
    b[i] = 0.5f * static_cast<float>(i);
  }
  float *da = nullptr, *db = nullptr, *dc = nullptr;
  RT_CHECK(cudaMalloc(&da, n * sizeof(float)));
  RT_CHECK(cudaMalloc(&db, n * sizeof(float)));
  RT_CHECK(cudaMalloc(&dc, n * sizeof(float)));
  RT_CHECK(cudaMemcpy(da, a.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  RT_CHECK(cudaMemcpy(db, b.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  rt_vector_add<<<(n + 127) / 128, 128>>>(da, db, dc, n);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaMemcpy(c.data(), dc, n * sizeof(float), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i) RT_EXPECT(c[i] == a[i] + b[i]);
  RT_CHECK(cudaFree(da));
  RT_CHECK(cudaFree(db));
  RT_CHECK(cudaFree(dc));
  RT_CHECK(cudaDeviceSynchronize());
  RT_EXPECT(cudaGetLastError() == cudaSuccess);
  std::printf("  the program still works after %s\n", after);
}

// `error` was just returned: cudaGetLastError reports it once, then nothing
// (it is not sticky).
void ExpectReportedOnce(cudaError_t error) {
  RT_EXPECT(cudaGetLastError() == error);
  RT_EXPECT(cudaGetLastError() == cudaSuccess);
}

void TooLargeAllocations() {
  void* p = nullptr;
  const size_t huge = size_t{1} << 50;  // 1 PiB
  const cudaError_t device = cudaMalloc(&p, huge);
  std::printf("cudaMalloc(1 PiB): %s\n", cudaGetErrorName(device));
  RT_EXPECT(device == cudaErrorMemoryAllocation);
  ExpectReportedOnce(cudaErrorMemoryAllocation);
  StillWorks("a too large cudaMalloc");

  void* host = nullptr;
  const cudaError_t pinned = cudaMallocHost(&host, huge);
  std::printf("cudaMallocHost(1 PiB): %s\n", cudaGetErrorName(pinned));
  RT_EXPECT(pinned == cudaErrorMemoryAllocation);
  ExpectReportedOnce(cudaErrorMemoryAllocation);
  StillWorks("a too large cudaMallocHost");
}

void BadFrees() {
  void* bogus = reinterpret_cast<void*>(uintptr_t{0x1234560});
  const cudaError_t never = cudaFree(bogus);
  std::printf("cudaFree(never allocated): %s\n", cudaGetErrorName(never));
  RT_EXPECT(never != cudaSuccess);
  ExpectReportedOnce(never);
  StillWorks("cudaFree of a pointer never allocated");

  char* device = nullptr;
  RT_CHECK(cudaMalloc(&device, 4096));
  const cudaError_t inside = cudaFree(device + 64);
  std::printf("cudaFree(inside an allocation): %s\n", cudaGetErrorName(inside));
  RT_EXPECT(inside != cudaSuccess);
  ExpectReportedOnce(inside);
  RT_CHECK(cudaFree(device));  // the allocation itself is still there
  const cudaError_t twice = cudaFree(device);
  std::printf("cudaFree twice: %s\n", cudaGetErrorName(twice));
  RT_EXPECT(twice != cudaSuccess);
  ExpectReportedOnce(twice);
  StillWorks("cudaFree of the inside of an allocation and a double cudaFree");

  int on_stack = 0;
  const cudaError_t host = cudaFreeHost(&on_stack);
  std::printf("cudaFreeHost(not page-locked): %s\n", cudaGetErrorName(host));
  RT_EXPECT(host != cudaSuccess);
  ExpectReportedOnce(host);
  StillWorks("cudaFreeHost of memory it did not allocate");
}

void OutOfRangeCopies() {
  const size_t bytes = 1024;
  char* device = nullptr;
  RT_CHECK(cudaMalloc(&device, bytes));
  std::vector<char> host(2 * bytes, 1);
  RT_EXPECT(cudaMemcpy(device, host.data(), 2 * bytes, cudaMemcpyHostToDevice) ==
            cudaErrorInvalidValue);
  ExpectReportedOnce(cudaErrorInvalidValue);
  RT_EXPECT(cudaMemcpy(host.data(), device + 512, bytes, cudaMemcpyDeviceToHost) ==
            cudaErrorInvalidValue);
  ExpectReportedOnce(cudaErrorInvalidValue);
  RT_EXPECT(cudaMemset(device + 1000, 0, 100) == cudaErrorInvalidValue);
  ExpectReportedOnce(cudaErrorInvalidValue);
  // The allocation is intact.
  RT_CHECK(cudaMemset(device, 7, bytes));
  RT_CHECK(cudaMemcpy(host.data(), device, bytes, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < bytes; ++i) RT_EXPECT(host[i] == 7);
  RT_CHECK(cudaFree(device));
  std::printf("copies and memsets outside an allocation: cudaErrorInvalidValue\n");

  int count = 0;
  RT_CHECK(cudaGetDeviceCount(&count));
  RT_EXPECT(cudaSetDevice(count + 3) == cudaErrorInvalidDevice);
  ExpectReportedOnce(cudaErrorInvalidDevice);
  int current = -1;
  RT_CHECK(cudaGetDevice(&current));
  RT_EXPECT(current == 0);
  std::printf("cudaSetDevice(%d): cudaErrorInvalidDevice\n", count + 3);
  StillWorks("bad copies, memsets and cudaSetDevice");
}

// A launch configuration the device cannot run is refused by the launch.
void ExpectLaunchRefused(const char* what) {
  const cudaError_t error = cudaGetLastError();
  std::printf("launch with %s: %s\n", what, cudaGetErrorName(error));
  RT_EXPECT(error != cudaSuccess);
  RT_EXPECT(cudaGetLastError() == cudaSuccess);
}

void BadLaunchConfigurations() {
  cudaDeviceProp prop{};
  RT_CHECK(cudaGetDeviceProperties(&prop, 0));
  float* data = nullptr;
  RT_CHECK(cudaMalloc(&data, 1024 * sizeof(float)));
  rt_scale<float><<<1, prop.maxThreadsPerBlock + 1>>>(data, 2.0f, 1024);
  ExpectLaunchRefused("one thread per block too many");
  rt_scale<float><<<1, dim3(1, 1, prop.maxThreadsDim[2] + 1)>>>(data, 2.0f, 1024);
  ExpectLaunchRefused("a block z dimension too large");
  rt_scale<float><<<dim3(1, prop.maxGridSize[1] + 1u), 32>>>(data, 2.0f, 1024);
  ExpectLaunchRefused("a grid y dimension too large");
  rt_scale<float><<<1, 32, prop.sharedMemPerBlockOptin + 1>>>(data, 2.0f, 1024);
  ExpectLaunchRefused("more dynamic shared memory than a block can have");
  RT_CHECK(cudaDeviceSynchronize());
  RT_CHECK(cudaFree(data));
  StillWorks("refused launches");
}

void KernelWithoutHostImplementation() {
  int* out = nullptr;
  RT_CHECK(cudaMalloc(&out, 32 * sizeof(int)));
  RT_CHECK(cudaMemset(out, 0, 32 * sizeof(int)));
  rt_not_on_host<<<1, 32>>>(out);
  // The launch itself is asynchronous: nothing to report yet.
  RT_CHECK(cudaGetLastError());
  const cudaError_t sync = cudaDeviceSynchronize();
  std::printf("cudaDeviceSynchronize after rt_not_on_host: %s\n", cudaGetErrorName(sync));
  RT_EXPECT(sync == cudaErrorNotSupported);
  ExpectReportedOnce(cudaErrorNotSupported);
  // Reported once: the next synchronisation is clean, and the kernel did
  // not run.
  RT_CHECK(cudaDeviceSynchronize());
  int first = -1;
  RT_CHECK(cudaMemcpy(&first, out, sizeof(int), cudaMemcpyDeviceToHost));
  RT_EXPECT(first == 0);
  RT_CHECK(cudaFree(out));
  StillWorks("a kernel without a host implementation");
}

}  // namespace

int main() {
  RT_CHECK(cudaSetDevice(0));
  StillWorks("nothing (a first run)");
  TooLargeAllocations();
  BadFrees();
  OutOfRangeCopies();
  BadLaunchConfigurations();
  KernelWithoutHostImplementation();
  std::printf("all checks passed\n");
  return 0;
}
