// e2e program 7, hold_and_wait: a client that holds server resources and
// keeps work in flight, for the harness to SIGKILL. It allocates device
// memory (3 x 8 MiB), creates two streams, loads the fatbin, prints "READY"
// (flushed), then loops: launches e2e_increment on one stream, queues async
// copies on the other, synchronizes every fifth round, sleeps 20 ms. It
// gives up by itself after about 60 s (exit 0) so a lost harness leaves no
// process behind. Usage: hold_and_wait [IMAGE_DIR].
#include <cuda.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "driver_check.h"

int main(int argc, char** argv) {
  namespace e2e = ::ferry::e2e;
  e2e::PrimaryContext primary = e2e::SetUpPrimaryContext();

  constexpr size_t kBytes = size_t{8} << 20;
  constexpr int kCount = static_cast<int>(kBytes / sizeof(unsigned));
  CUdeviceptr buffers[3] = {};
  for (CUdeviceptr& buffer : buffers) {
    E2E_CHECK_CU(cuMemAlloc(&buffer, kBytes));
    E2E_CHECK_CU(cuMemsetD32(buffer, 0, kCount));
  }
  CUstream compute = nullptr, copy = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&compute, CU_STREAM_NON_BLOCKING));
  E2E_CHECK_CU(cuStreamCreate(&copy, CU_STREAM_NON_BLOCKING));
  CUmodule module = e2e::LoadFatbin(argc, argv);
  CUfunction increment = e2e::GetFunction(module, e2e::kIncrement);
  void* pinned = nullptr;
  E2E_CHECK_CU(cuMemAllocHost(&pinned, 1 << 20));
  E2E_CHECK_CU(cuCtxSynchronize());

  std::printf("READY\n");
  std::fflush(stdout);

  int n = kCount;
  void* params[] = {&buffers[0], &n};
  for (int round = 0; round < 3000; ++round) {  // about 60 s
    E2E_CHECK_CU(cuLaunchKernel(increment, (kCount + 255) / 256, 1, 1, 256, 1, 1, 0, compute,
                                params, nullptr));
    E2E_CHECK_CU(cuMemcpyDtoDAsync(buffers[1], buffers[2], kBytes, copy));
    E2E_CHECK_CU(cuMemcpyHtoDAsync(buffers[2], pinned, 1 << 20, copy));
    if (round % 5 == 4) E2E_CHECK_CU(cuStreamSynchronize(compute));
    // Pacing: a client that keeps working until the test kills it.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::printf("hold_and_wait: not killed; exiting\n");
  E2E_CHECK_CU(cuCtxSynchronize());
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(primary.device));
  return 0;
}
