// e2e program 10, host_callback_hold: a client that dies while a host
// function holds a stream, for the harness to SIGKILL. It queues work, a
// host function that never returns by itself, more work behind it, and a
// cuStreamDestroy of the held stream (which waits behind the gate on the
// server); the host function prints "READY" (flushed) once it runs, i.e. once
// the server holds the stream for it. The main thread then idles. Everything
// gives up by itself after about 60 s (exit 0) so a lost harness leaves no
// process behind. Usage: host_callback_hold [IMAGE_DIR].
#include <cuda.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "driver_check.h"

namespace {

void CUDA_CB HoldForever(void*) {
  std::printf("READY\n");
  std::fflush(stdout);
  // Holds the stream until the test kills this process (bounded).
  std::this_thread::sleep_for(std::chrono::seconds(60));
}

}  // namespace

int main(int argc, char** argv) {
  namespace e2e = ::ferry::e2e;
  e2e::PrimaryContext primary = e2e::SetUpPrimaryContext();
  CUmodule module = e2e::LoadFatbin(argc, argv);
  CUfunction increment = e2e::GetFunction(module, e2e::kIncrement);
  constexpr int kCount = 1 << 20;
  CUdeviceptr buffer = 0;
  E2E_CHECK_CU(cuMemAlloc(&buffer, kCount * sizeof(unsigned)));
  CUstream held = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&held, CU_STREAM_NON_BLOCKING));

  int n = kCount;
  void* params[] = {&buffer, &n};
  E2E_CHECK_CU(
      cuLaunchKernel(increment, (kCount + 255) / 256, 1, 1, 256, 1, 1, 0, held, params, nullptr));
  E2E_CHECK_CU(cuLaunchHostFunc(held, HoldForever, nullptr));
  E2E_CHECK_CU(
      cuLaunchKernel(increment, (kCount + 255) / 256, 1, 1, 256, 1, 1, 0, held, params, nullptr));
  E2E_CHECK_CU(cuStreamDestroy(held));
  // Waits to be killed by the test (bounded).
  std::this_thread::sleep_for(std::chrono::seconds(60));
  std::printf("host_callback_hold: not killed; exiting\n");
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(primary.device));
  return 0;
}
