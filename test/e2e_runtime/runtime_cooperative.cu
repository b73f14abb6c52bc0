// Cooperative launches through the runtime: a kernel whose blocks meet at a
// cooperative_groups grid.sync() (each thread reads, after the sync, what a
// thread of the next block wrote before it), launched with
// cudaLaunchCooperativeKernel and with cudaLaunchKernelEx's cooperative
// attribute at the largest grid that can be resident at once; one block more
// is refused with cudaErrorCooperativeLaunchTooLarge at the launch, and
// nothing runs.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "runtime_check.h"

namespace cg = cooperative_groups;

// Phase 1: stage[i] = i + 1. grid.sync(). Phase 2: out[i] = stage[(i +
// blockDim.x) % n], written by a thread of the next block (of the first, for
// the last block).
__global__ void rt_coop_rotate(int* stage, int* out, int n) {
  cg::grid_group grid = cg::this_grid();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) stage[i] = i + 1;
  grid.sync();
  if (i < n) out[i] = stage[(i + blockDim.x) % n];
}

namespace {

constexpr int kBlock = 128;

void CheckRotated(const int* d_out, int n) {
  std::vector<int> out(n);
  RT_CHECK(cudaMemcpy(out.data(), d_out, n * sizeof(int), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i) {
    const int expected = (i + kBlock) % n + 1;
    if (out[i] != expected) {
      std::printf("FAILED: out[%d] = %d, expected %d\n", i, out[i], expected);
      std::exit(1);
    }
  }
}

}  // namespace

int main() {
  int device = 0;
  RT_CHECK(cudaSetDevice(device));
  int cooperative = 0, sms = 0;
  RT_CHECK(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  RT_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  RT_EXPECT(cooperative == 1);
  int per_sm = 0;
  RT_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, rt_coop_rotate, kBlock, 0));
  RT_EXPECT(per_sm > 0);
  const int blocks = per_sm * sms;  // the largest grid that is resident at once
  const int n = blocks * kBlock;
  int *d_stage = nullptr, *d_out = nullptr;
  RT_CHECK(cudaMalloc(&d_stage, n * sizeof(int)));
  RT_CHECK(cudaMalloc(&d_out, n * sizeof(int)));

  // cudaLaunchCooperativeKernel at the limit.
  RT_CHECK(cudaMemset(d_out, 0, n * sizeof(int)));
  int arg_n = n;
  void* args[] = {&d_stage, &d_out, &arg_n};
  RT_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(rt_coop_rotate), dim3(blocks),
                                       dim3(kBlock), args, 0, nullptr));
  RT_CHECK(cudaDeviceSynchronize());
  CheckRotated(d_out, n);
  std::printf("cooperative grid of %d blocks synced: ok\n", blocks);

  // One block more cannot be resident: refused at the launch, which runs
  // nothing (d_out keeps its zeros), and the error is not sticky.
  RT_CHECK(cudaMemset(d_out, 0, n * sizeof(int)));
  const cudaError_t too_large = cudaLaunchCooperativeKernel(
      reinterpret_cast<void*>(rt_coop_rotate), dim3(blocks + 1), dim3(kBlock), args, 0, nullptr);
  RT_EXPECT(too_large == cudaErrorCooperativeLaunchTooLarge);
  (void)cudaGetLastError();
  RT_CHECK(cudaDeviceSynchronize());
  std::vector<int> untouched(n);
  RT_CHECK(cudaMemcpy(untouched.data(), d_out, n * sizeof(int), cudaMemcpyDeviceToHost));
  for (int v : untouched) RT_EXPECT(v == 0);
  std::printf("cooperative grid of %d blocks refused: ok\n", blocks + 1);

  // cudaLaunchKernelEx with the cooperative attribute: the same rules.
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeCooperative;
  attribute.val.cooperative = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(kBlock);
  config.attrs = &attribute;
  config.numAttrs = 1;
  RT_CHECK(cudaLaunchKernelEx(&config, rt_coop_rotate, d_stage, d_out, n));
  RT_CHECK(cudaDeviceSynchronize());
  CheckRotated(d_out, n);
  config.gridDim = dim3(blocks + 1);
  RT_EXPECT(cudaLaunchKernelEx(&config, rt_coop_rotate, d_stage, d_out, n) ==
            cudaErrorCooperativeLaunchTooLarge);
  (void)cudaGetLastError();
  RT_CHECK(cudaDeviceSynchronize());
  std::printf("cooperative attribute of cudaLaunchKernelEx: ok\n");

  RT_CHECK(cudaFree(d_stage));
  RT_CHECK(cudaFree(d_out));
  std::printf("all checks passed\n");
  return 0;
}
