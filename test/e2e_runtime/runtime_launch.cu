// An ordinary CUDA runtime program with kernels: <<<>>> launches with
// scalars, pointers, a padded struct by value, twelve parameters of mixed
// sizes and two template instantiations; 3D launch geometry with dynamic
// shared memory above the default limit after cudaFuncSetAttribute;
// cudaLaunchKernelEx with a cluster; launches on a created stream;
// __constant__ / __device__ variables through cudaMemcpyToSymbol,
// cudaMemcpyFromSymbol and cudaGetSymbolAddress; cudaFuncGetAttributes; and
// the occupancy queries. Through ferry each launch reaches the driver as
// cuLibraryLoadData + cuLibraryGetKernel + cuLaunchKernel(Ex) with a CUkernel.
// Prints what it checked and "all checks passed", or the first failure.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "runtime_check.h"
#include "runtime_kernels.cuh"

__constant__ float rt_coefficients[4];
__device__ int rt_counters[8] = {1, 2, 3, 4, 5, 6, 7, 8};

namespace {

void CheckVectorAdd() {
  const int n = 1000;  // not a multiple of the block size
  std::vector<float> a(n), b(n), c(n, -1.0f);
  for (int i = 0; i < n; ++i) {
    a[i] = 0.5f * static_cast<float>(i);
    b[i] = static_cast<float>(n - i);
  }
  float *da, *db, *dc;
  RT_CHECK(cudaMalloc(&da, n * sizeof(float)));
  RT_CHECK(cudaMalloc(&db, n * sizeof(float)));
  RT_CHECK(cudaMalloc(&dc, n * sizeof(float)));
  RT_CHECK(cudaMemcpy(da, a.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  RT_CHECK(cudaMemcpy(db, b.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  rt_vector_add<<<(n + 255) / 256, 256>>>(da, db, dc, n);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaMemcpy(c.data(), dc, n * sizeof(float), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i) RT_EXPECT(c[i] == a[i] + b[i]);
  std::printf("vector_add <<<4, 256>>>: %d sums ok\n", n);

  // The same kernel on a created stream, and with cudaLaunchKernelEx and a
  // cluster of two blocks (the grid is a multiple of the cluster).
  cudaStream_t stream;
  RT_CHECK(cudaStreamCreate(&stream));
  RT_CHECK(cudaMemsetAsync(dc, 0, n * sizeof(float), stream));
  rt_vector_add<<<(n + 127) / 128, 128, 0, stream>>>(da, da, dc, n);
  RT_CHECK(cudaStreamSynchronize(stream));
  RT_CHECK(cudaMemcpy(c.data(), dc, n * sizeof(float), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i) RT_EXPECT(c[i] == a[i] + a[i]);
  std::printf("vector_add on a created stream: ok\n");

  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(8, 1, 1);
  config.blockDim = dim3(128, 1, 1);
  config.stream = stream;
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = 2;
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  RT_CHECK(cudaLaunchKernelEx(&config, rt_vector_add, static_cast<const float*>(db),
                              static_cast<const float*>(db), dc, n));
  RT_CHECK(cudaStreamSynchronize(stream));
  RT_CHECK(cudaMemcpy(c.data(), dc, n * sizeof(float), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i) RT_EXPECT(c[i] == b[i] + b[i]);
  std::printf("cudaLaunchKernelEx with a 2-block cluster: ok\n");
  RT_CHECK(cudaStreamDestroy(stream));
  RT_CHECK(cudaFree(da));
  RT_CHECK(cudaFree(db));
  RT_CHECK(cudaFree(dc));
}

void CheckParameters() {
  long long* out;
  RT_CHECK(cudaMalloc(&out, 4 * sizeof(long long)));
  RtPadded p{'p', 1234.75, -77};
  rt_padded<<<1, 1>>>('t', p, out);
  long long got[4];
  RT_CHECK(cudaMemcpy(got, out, sizeof(got), cudaMemcpyDeviceToHost));
  RT_EXPECT(got[0] == 't' && got[1] == 'p' && got[2] == 1234 && got[3] == -77);
  std::printf("padded struct by value: ok\n");
  RT_CHECK(cudaFree(out));

  int* g;
  double* many;
  RT_CHECK(cudaMalloc(&g, sizeof(int)));
  RT_CHECK(cudaMalloc(&many, 12 * sizeof(double)));
  const int g_value = 4242;
  RT_CHECK(cudaMemcpy(g, &g_value, sizeof(int), cudaMemcpyHostToDevice));
  RtFloat3 h{0.5f, 1.5f, 2.0f};
  rt_many<<<1, 32>>>(-3, 300, -70000, 5000000000LL, 2.5f, -0.125, g, h, 200, -12,
                     18000000000000000000ULL, many);
  double v[12];
  RT_CHECK(cudaMemcpy(v, many, sizeof(v), cudaMemcpyDeviceToHost));
  const double expected[11] = {-3,  300, -70000, 5000000000.0,          2.5, -0.125, 4242,
                               4.0, 200, -12,    18000000000000000000.0};
  double sum = 0;
  for (int k = 0; k < 11; ++k) {
    RT_EXPECT(v[k] == expected[k]);
    sum += expected[k];
  }
  RT_EXPECT(v[11] == sum);
  std::printf("twelve parameters of mixed sizes: ok\n");
  RT_CHECK(cudaFree(g));
  RT_CHECK(cudaFree(many));

  const int n = 300;
  std::vector<float> f(n);
  std::vector<double> d(n);
  for (int i = 0; i < n; ++i) {
    f[i] = static_cast<float>(i);
    d[i] = 0.25 * i;
  }
  float* df;
  double* dd;
  RT_CHECK(cudaMalloc(&df, n * sizeof(float)));
  RT_CHECK(cudaMalloc(&dd, n * sizeof(double)));
  RT_CHECK(cudaMemcpy(df, f.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  RT_CHECK(cudaMemcpy(dd, d.data(), n * sizeof(double), cudaMemcpyHostToDevice));
  rt_scale<float><<<3, 128>>>(df, 3.0f, n);
  rt_scale<double><<<3, 128>>>(dd, -2.0, n);
  std::vector<float> f2(n);
  std::vector<double> d2(n);
  RT_CHECK(cudaMemcpy(f2.data(), df, n * sizeof(float), cudaMemcpyDeviceToHost));
  RT_CHECK(cudaMemcpy(d2.data(), dd, n * sizeof(double), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i) RT_EXPECT(f2[i] == 3.0f * f[i] && d2[i] == -2.0 * d[i]);
  std::printf("templates scale<float> and scale<double>: ok\n");
  RT_CHECK(cudaFree(df));
  RT_CHECK(cudaFree(dd));
}

void CheckGeometryAndAttributes() {
  unsigned* out;
  RT_CHECK(cudaMalloc(&out, 8 * sizeof(unsigned)));
  RT_CHECK(cudaMemset(out, 0, 8 * sizeof(unsigned)));
  rt_geometry<<<dim3(3, 2, 2), dim3(4, 4, 2), 1000>>>(out);
  unsigned got[8];
  RT_CHECK(cudaMemcpy(got, out, sizeof(got), cudaMemcpyDeviceToHost));
  const unsigned expected[8] = {3, 2, 2, 4, 4, 2, 1000, 12 * 32};
  for (int k = 0; k < 8; ++k) RT_EXPECT(got[k] == expected[k]);
  std::printf("3D geometry with 1000 bytes of dynamic shared memory: ok\n");

  // More dynamic shared memory than the 48 KiB default needs the opt-in.
  const int big = 100 * 1024;
  RT_CHECK(cudaFuncSetAttribute(rt_geometry, cudaFuncAttributeMaxDynamicSharedMemorySize, big));
  cudaFuncAttributes attributes;
  RT_CHECK(cudaFuncGetAttributes(&attributes, rt_geometry));
  RT_EXPECT(attributes.maxDynamicSharedSizeBytes == big);
  RT_EXPECT(attributes.maxThreadsPerBlock > 0);
  RT_CHECK(cudaMemset(out, 0, 8 * sizeof(unsigned)));
  rt_geometry<<<2, 64, big>>>(out);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaMemcpy(got, out, sizeof(got), cudaMemcpyDeviceToHost));
  RT_EXPECT(got[6] == static_cast<unsigned>(big) && got[7] == 128);
  std::printf("cudaFuncSetAttribute(MaxDynamicSharedMemorySize, %d) then a launch using it: ok\n",
              big);
  RT_CHECK(cudaFuncSetCacheConfig(rt_geometry, cudaFuncCachePreferShared));
  RT_CHECK(cudaFree(out));

  RT_CHECK(cudaFuncGetAttributes(&attributes, rt_vector_add));
  std::printf("cudaFuncGetAttributes(vector_add): %d threads, %d registers, %zu bytes shared\n",
              attributes.maxThreadsPerBlock, attributes.numRegs, attributes.sharedSizeBytes);
  RT_EXPECT(attributes.maxThreadsPerBlock >= 256);
}

void CheckOccupancy() {
  int device = 0, sms = 0;
  RT_CHECK(cudaGetDevice(&device));
  RT_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  int blocks = 0;
  RT_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, rt_vector_add, 256, 0));
  RT_EXPECT(blocks >= 1);
  int fewer = 0;
  RT_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fewer, rt_geometry, 256, 60 * 1024));
  RT_EXPECT(fewer >= 1 && fewer < blocks);
  int min_grid = 0, block = 0;
  RT_CHECK(cudaOccupancyMaxPotentialBlockSize(&min_grid, &block, rt_vector_add, 0, 0));
  RT_EXPECT(block > 0 && block <= 1024 && block % 32 == 0);
  RT_EXPECT(min_grid > 0 && min_grid % sms == 0);
  size_t available = 0;
  RT_CHECK(cudaOccupancyAvailableDynamicSMemPerBlock(&available, rt_geometry, 2, 256));
  RT_EXPECT(available > 0);
  std::printf(
      "occupancy: %d blocks of 256 per SM, %d with 60 KiB shared; best block %d, "
      "grid >= %d; %zu bytes shared for 2 blocks\n",
      blocks, fewer, block, min_grid, available);
}

void CheckSymbols() {
  const float coefficients[4] = {1.0f, -2.0f, 0.5f, 4.0f};
  RT_CHECK(cudaMemcpyToSymbol(rt_coefficients, coefficients, sizeof(coefficients)));
  float back[4] = {};
  RT_CHECK(cudaMemcpyFromSymbol(back, rt_coefficients, sizeof(back)));
  RT_EXPECT(std::memcmp(back, coefficients, sizeof(back)) == 0);
  size_t size = 0;
  RT_CHECK(cudaGetSymbolSize(&size, rt_coefficients));
  RT_EXPECT(size == sizeof(coefficients));
  void* address = nullptr;
  RT_CHECK(cudaGetSymbolAddress(&address, rt_coefficients));
  const int n = 64;
  float* out;
  RT_CHECK(cudaMalloc(&out, n * sizeof(float)));
  rt_apply<<<1, n>>>(static_cast<const float*>(address), out, n);
  float got[n];
  RT_CHECK(cudaMemcpy(got, out, sizeof(got), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i) RT_EXPECT(got[i] == coefficients[i % 4] * static_cast<float>(i));
  RT_CHECK(cudaFree(out));
  std::printf("__constant__ through cudaMemcpyToSymbol / FromSymbol / GetSymbolAddress: ok\n");

  int counters[8] = {};
  RT_CHECK(cudaMemcpyFromSymbol(counters, rt_counters, sizeof(counters)));
  for (int i = 0; i < 8; ++i) RT_EXPECT(counters[i] == i + 1);
  const int replacement[2] = {70, 80};
  RT_CHECK(cudaMemcpyToSymbol(rt_counters, replacement, sizeof(replacement), 6 * sizeof(int)));
  RT_CHECK(cudaMemcpyFromSymbol(counters, rt_counters, sizeof(counters)));
  RT_EXPECT(counters[5] == 6 && counters[6] == 70 && counters[7] == 80);
  std::printf("__device__ initial values and an offset cudaMemcpyToSymbol: ok\n");
}

}  // namespace

int main() {
  CheckVectorAdd();
  CheckParameters();
  CheckGeometryAndAttributes();
  CheckOccupancy();
  CheckSymbols();
  RT_CHECK(cudaDeviceSynchronize());
  RT_CHECK(cudaGetLastError());
  std::printf("all checks passed\n");
  return 0;
}
