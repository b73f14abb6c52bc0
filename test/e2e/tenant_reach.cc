// e2e program tenant_reach: one tenant's device pointer in another tenant's
// kernel (issue 11: sessions run in worker processes of their own).
//
//   TENANT_REACH=owner tenant_reach [IMAGE_DIR]
//     Allocates 1 MiB, fills it with kPattern, prints "POINTER 0x…" and
//     "READY" (flushed), then waits (at most 60 s) for SIGUSR1. Then it
//     checks that every word still holds kPattern, increments them all with
//     a kernel of its own and checks kPattern + 1: its session is intact and
//     still works. Ends with "all checks passed".
//   TENANT_REACH=intruder TENANT_REACH_POINTER=0x… tenant_reach [IMAGE_DIR]
//     Launches e2e_increment over the owner's 1 MiB at POINTER, which is not
//     its own, and synchronizes; prints "INTRUDER RESULT <CUresult>" and
//     exits 0 whatever the result (the harness judges it).
#include <cuda.h>
#include <signal.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <vector>

#include "driver_check.h"

namespace {

constexpr size_t kBytes = size_t{1} << 20;
constexpr int kWords = static_cast<int>(kBytes / sizeof(unsigned));
constexpr unsigned kPattern = 0x5A5A5A5Au;

void CheckWords(CUdeviceptr buffer, unsigned expected, const char* when) {
  std::vector<unsigned> host(kWords);
  E2E_CHECK_CU(cuMemcpyDtoH(host.data(), buffer, kBytes));
  for (int i = 0; i < kWords; ++i) {
    E2E_CHECK(host[i] == expected, "%s: word %d is 0x%08x, not 0x%08x", when, i, host[i], expected);
  }
}

int Owner(int argc, char** argv) {
  namespace e2e = ::ferry::e2e;
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, nullptr);  // before READY: the signal waits for sigtimedwait

  e2e::PrimaryContext primary = e2e::SetUpPrimaryContext();
  CUmodule module = e2e::LoadFatbin(argc, argv);
  CUfunction increment = e2e::GetFunction(module, e2e::kIncrement);
  CUdeviceptr buffer = 0;
  E2E_CHECK_CU(cuMemAlloc(&buffer, kBytes));
  E2E_CHECK_CU(cuMemsetD32(buffer, kPattern, kWords));
  E2E_CHECK_CU(cuCtxSynchronize());
  std::printf("POINTER 0x%" PRIx64 "\nREADY\n", static_cast<uint64_t>(buffer));
  std::fflush(stdout);

  timespec timeout{60, 0};
  E2E_CHECK(sigtimedwait(&usr1, nullptr, &timeout) == SIGUSR1, "no SIGUSR1 within 60 s");
  CheckWords(buffer, kPattern, "after the intruder");
  std::printf("OWNER INTACT\n");
  int n = kWords;
  void* params[] = {&buffer, &n};
  E2E_CHECK_CU(cuLaunchKernel(increment, (kWords + 255) / 256, 1, 1, 256, 1, 1, 0, nullptr, params,
                              nullptr));
  E2E_CHECK_CU(cuCtxSynchronize());
  CheckWords(buffer, kPattern + 1, "after its own kernel");
  E2E_CHECK_CU(cuMemFree(buffer));
  E2E_CHECK_CU(cuModuleUnload(module));
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(primary.device));
  std::printf("all checks passed\n");
  return 0;
}

int Intruder(int argc, char** argv) {
  namespace e2e = ::ferry::e2e;
  const char* pointer = std::getenv("TENANT_REACH_POINTER");
  E2E_CHECK(pointer != nullptr, "TENANT_REACH_POINTER is not set");
  CUdeviceptr target = static_cast<CUdeviceptr>(std::strtoull(pointer, nullptr, 16));
  e2e::PrimaryContext primary = e2e::SetUpPrimaryContext();
  CUmodule module = e2e::LoadFatbin(argc, argv);
  CUfunction increment = e2e::GetFunction(module, e2e::kIncrement);
  int n = kWords;
  void* params[] = {&target, &n};
  CUresult result =
      cuLaunchKernel(increment, (kWords + 255) / 256, 1, 1, 256, 1, 1, 0, nullptr, params, nullptr);
  if (result == CUDA_SUCCESS) result = cuCtxSynchronize();
  std::printf("INTRUDER RESULT %d\n", static_cast<int>(result));
  std::fflush(stdout);
  (void)primary;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const char* mode = std::getenv("TENANT_REACH");
  if (mode != nullptr && std::strcmp(mode, "owner") == 0) return Owner(argc, argv);
  if (mode != nullptr && std::strcmp(mode, "intruder") == 0) return Intruder(argc, argv);
  std::fprintf(stderr, "usage: TENANT_REACH=owner|intruder tenant_reach [IMAGE_DIR]\n");
  return 2;
}
