// e2e program 14, launch_queue: a client with a long queue of slow kernels,
// for bounded_test.cc to stop its server or kill it. First it checks that
// cuLaunchKernel refuses kernelParams and extra together
// (CUDA_ERROR_INVALID_VALUE, as the driver does). Then it queues
// LAUNCH_QUEUE_COUNT (default 2000) launches of tick (each about
// LAUNCH_QUEUE_SLEEP_US, default 2000 us, on the host backend) on one
// stream, makes sure they all reached the server (a cuStreamQuery that finds
// the stream busy), prints "READY" (flushed), synchronizes the stream and
// prints "SYNC <CUresult>" and "all checks passed"; it exits 0 whatever the
// synchronize returned, so the harness judges the result.
// Usage: launch_queue [IMAGE_DIR].
#include <cuda.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "driver_check.h"

namespace {

int EnvInt(const char* name, int fallback) {
  const char* text = std::getenv(name);
  return text != nullptr && std::atoi(text) > 0 ? std::atoi(text) : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  namespace e2e = ::ferry::e2e;
  e2e::PrimaryContext primary = e2e::SetUpPrimaryContext();
  CUmodule module = e2e::LoadFatbin(argc, argv);
  CUfunction tick = e2e::GetFunction(module, e2e::kTick);
  CUdeviceptr counter = 0;
  E2E_CHECK_CU(cuMemAlloc(&counter, sizeof(unsigned)));
  CUstream stream = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  // On the ticks' own stream: a memset on the legacy stream is not ordered
  // with a non-blocking stream, and the host backend ran it after the first
  // tick now and then (one tick counted of two).
  E2E_CHECK_CU(cuMemsetD32Async(counter, 0, 1, stream));

  int sleep_us = EnvInt("LAUNCH_QUEUE_SLEEP_US", 2000);
  void* params[] = {&counter, &sleep_us};
  // The same parameters packed for `extra`: a pointer, then the int.
  struct {
    CUdeviceptr counter;
    int sleep_us;
  } packed{counter, sleep_us};
  size_t packed_size = sizeof(packed);
  void* extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, &packed, CU_LAUNCH_PARAM_BUFFER_SIZE,
                   &packed_size, CU_LAUNCH_PARAM_END};
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_VALUE,
                cuLaunchKernel(tick, 1, 1, 1, 1, 1, 1, 0, stream, params, extra));
  // Either alone is fine, and the refused launch left nothing behind.
  E2E_CHECK_CU(cuLaunchKernel(tick, 1, 1, 1, 1, 1, 1, 0, stream, nullptr, extra));
  E2E_CHECK_CU(cuLaunchKernel(tick, 1, 1, 1, 1, 1, 1, 0, stream, params, nullptr));
  E2E_CHECK_CU(cuStreamSynchronize(stream));
  unsigned ticks = 0;
  E2E_CHECK_CU(cuMemcpyDtoH(&ticks, counter, sizeof(ticks)));
  E2E_CHECK(ticks == 2, "%u ticks after two launches", ticks);

  const int count = EnvInt("LAUNCH_QUEUE_COUNT", 2000);
  for (int i = 0; i < count; ++i) {
    E2E_CHECK_CU(cuLaunchKernel(tick, 1, 1, 1, 1, 1, 1, 0, stream, params, nullptr));
  }
  // Answered after every launch before it reached the server.
  E2E_EXPECT_CU(CUDA_ERROR_NOT_READY, cuStreamQuery(stream));
  std::printf("READY\n");
  std::fflush(stdout);

  const CUresult synced = cuStreamSynchronize(stream);
  std::printf("SYNC %d\n", static_cast<int>(synced));
  std::printf("all checks passed\n");
  std::fflush(stdout);
  if (synced == CUDA_SUCCESS) {
    E2E_CHECK_CU(cuStreamDestroy(stream));
    E2E_CHECK_CU(cuDevicePrimaryCtxRelease(primary.device));
  }
  return 0;
}
