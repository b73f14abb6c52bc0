// e2e program 8, unreachable: run with FERRY_SERVER naming a port where
// nothing listens. Checks that cuInit fails with
// CUDA_ERROR_DEVICE_UNAVAILABLE within 10 s, and that later calls
// (cuInit again, cuDeviceGetCount, cuDeviceGet, cuDevicePrimaryCtxRetain)
// fail the same way, each quickly; prints every
// code. The harness checks stderr for the client's one line that names the
// server. Exits 0 when every call failed as expected.
#include <cuda.h>

#include <chrono>
#include <cstdio>

#include "driver_check.h"

namespace {

namespace e2e = ::ferry::e2e;

// Runs `call`, prints its code and duration, and fails unless it returned
// CUDA_ERROR_DEVICE_UNAVAILABLE within 10 s.
template <typename Call>
void ExpectUnavailable(const char* what, Call call) {
  const auto start = std::chrono::steady_clock::now();
  const CUresult result = call();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%s -> %d %s in %.2f s\n", what, result, e2e::ErrorName(result), seconds);
  std::fflush(stdout);
  E2E_CHECK(result == CUDA_ERROR_DEVICE_UNAVAILABLE,
            "%s returned %s (%d), expected CUDA_ERROR_DEVICE_UNAVAILABLE (46)", what,
            e2e::ErrorName(result), result);
  E2E_CHECK(seconds < 10.0, "%s took %.2f s", what, seconds);
}

}  // namespace

int main() {
  E2E_CHECK(e2e::UsingFerry(), "FERRY_SERVER is not set");
  ExpectUnavailable("cuInit(0)", [] { return cuInit(0); });
  ExpectUnavailable("cuInit(0) again", [] { return cuInit(0); });
  ExpectUnavailable("cuDeviceGetCount", [] {
    int count = -1;
    return cuDeviceGetCount(&count);
  });
  ExpectUnavailable("cuDeviceGet(0)", [] {
    CUdevice device = -1;
    return cuDeviceGet(&device, 0);
  });
  ExpectUnavailable("cuDevicePrimaryCtxRetain(0)", [] {
    CUcontext context = nullptr;
    return cuDevicePrimaryCtxRetain(&context, 0);
  });
  std::printf(
      "unreachable: every call failed with "
      "CUDA_ERROR_DEVICE_UNAVAILABLE\n");
  return 0;
}
