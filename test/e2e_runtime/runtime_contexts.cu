// A CUDA runtime program that also manages contexts with the driver API, so
// the same kernels (one CUkernel each, loaded once with cuLibraryLoadData)
// run in the primary context and in created contexts: <<<>>> launches in the
// primary context; in a context made current with cuCtxCreate, where the
// runtime's allocations, launches and __device__ variables are that
// context's own; back in the primary context after cuCtxDestroy, where its
// variables kept their values; in a second created context; and after
// cudaDeviceReset, which makes the runtime load its kernels again. Prints
// what it checked and "all checks passed", or the first failure.
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "runtime_check.h"
#include "runtime_kernels.cuh"

__device__ int rt_marker[2] = {5, 6};

namespace {

// Scales n floats by `factor` with a kernel in the current context and
// checks the result; `where` names the context in the output.
void ScaleAndCheck(float factor, const char* where) {
  const int n = 200;
  std::vector<float> host(n), back(n);
  for (int i = 0; i < n; ++i) host[i] = static_cast<float>(i) - 50.0f;
  float* device = nullptr;
  RT_CHECK(cudaMalloc(&device, n * sizeof(float)));
  RT_CHECK(cudaMemcpy(device, host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  rt_scale<float><<<2, 128>>>(device, factor, n);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaMemcpy(back.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i) RT_EXPECT(back[i] == factor * host[i]);
  RT_CHECK(cudaFree(device));
  std::printf("scale<float> by %g in %s: ok\n", factor, where);
}

int Marker(int index) {
  int values[2] = {};
  RT_CHECK(cudaMemcpyFromSymbol(values, rt_marker, sizeof(values)));
  return values[index];
}

}  // namespace

int main() {
  RT_CHECK(cudaSetDevice(0));
  ScaleAndCheck(2.0f, "the primary context");
  CUcontext primary = nullptr;
  RT_CHECK_CU(cuCtxGetCurrent(&primary));
  RT_EXPECT(primary != nullptr);
  const int set_in_primary[2] = {50, 60};
  RT_CHECK(cudaMemcpyToSymbol(rt_marker, set_in_primary, sizeof(set_in_primary)));

  CUdevice device = 0;
  RT_CHECK_CU(cuDeviceGet(&device, 0));
  CUcontext created = nullptr;
  RT_CHECK_CU(cuCtxCreate(&created, nullptr, 0, device));
  CUcontext current = nullptr;
  RT_CHECK_CU(cuCtxGetCurrent(&current));
  RT_EXPECT(current == created && created != primary);
  ScaleAndCheck(-3.0f, "a created context");
  // The created context has its own copy of the variable, initialised from
  // the image, whatever the primary context's copy holds.
  RT_EXPECT(Marker(0) == 5 && Marker(1) == 6);
  const int set_in_created[2] = {-1, -2};
  RT_CHECK(cudaMemcpyToSymbol(rt_marker, set_in_created, sizeof(set_in_created)));
  RT_EXPECT(Marker(0) == -1);
  std::printf("__device__ variable of the created context is its own: ok\n");

  RT_CHECK_CU(cuCtxDestroy(created));
  RT_CHECK_CU(cuCtxSetCurrent(primary));
  ScaleAndCheck(0.5f, "the primary context after cuCtxDestroy");
  RT_EXPECT(Marker(0) == 50 && Marker(1) == 60);
  std::printf("__device__ variable of the primary context kept its values: ok\n");

  CUcontext second = nullptr;
  RT_CHECK_CU(cuCtxCreate(&second, nullptr, 0, device));
  ScaleAndCheck(4.0f, "a second created context");
  RT_EXPECT(Marker(1) == 6);
  RT_CHECK_CU(cuCtxDestroy(second));
  RT_CHECK_CU(cuCtxSetCurrent(primary));

  RT_CHECK(cudaDeviceReset());
  ScaleAndCheck(-1.0f, "the primary context after cudaDeviceReset");
  RT_EXPECT(Marker(0) == 5);
  std::printf("the variable is fresh after cudaDeviceReset: ok\n");

  RT_CHECK(cudaDeviceSynchronize());
  std::printf("all checks passed\n");
  return 0;
}
