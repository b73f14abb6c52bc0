// e2e program: peers between the server's devices (ferryd with two host
// devices). Checks cuDeviceCanAccessPeer (a device cannot be its own peer,
// 0 and 1 reach each other), cuDeviceGetP2PAttribute (access supported; the
// same device twice is CUDA_ERROR_INVALID_DEVICE), cuCtxEnablePeerAccess /
// cuCtxDisablePeerAccess with the driver's errors (already enabled, not
// enabled, flags), cuMemcpyPeer from device 0 to device 1 read back in
// device 1's context, cuMemcpyPeerAsync back on a stream, device 0 to device
// 0, and a range of the wrong device refused. Exits 0 when every check passes.
#include <cuda.h>

#include <cstdint>
#include <vector>

#include "driver_check.h"

namespace e2e = ::ferry::e2e;
using ::ferry::e2e::Ok;

int main() {
  E2E_CHECK_CU(cuInit(0));
  int count = 0;
  E2E_CHECK_CU(cuDeviceGetCount(&count));
  E2E_CHECK(count >= 2, "needs two devices, has %d", count);
  CUdevice d0 = 0, d1 = 0;
  E2E_CHECK_CU(cuDeviceGet(&d0, 0));
  E2E_CHECK_CU(cuDeviceGet(&d1, 1));

  int can = -1;
  E2E_CHECK_CU(cuDeviceCanAccessPeer(&can, d0, d0));
  E2E_CHECK(can == 0, "device 0 is its own peer (%d)", can);
  E2E_CHECK_CU(cuDeviceCanAccessPeer(&can, d0, d1));
  E2E_CHECK(can == 1, "device 0 cannot access device 1 (%d)", can);
  E2E_CHECK_CU(cuDeviceCanAccessPeer(&can, d1, d0));
  E2E_CHECK(can == 1, "device 1 cannot access device 0 (%d)", can);
  Ok("cuDeviceCanAccessPeer: 0<->1 yes, 0->0 no");
  int value = -1;
  E2E_CHECK_CU(cuDeviceGetP2PAttribute(&value, CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED, d0, d1));
  E2E_CHECK(value == 1, "P2P access attribute %d", value);
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_DEVICE,
                cuDeviceGetP2PAttribute(&value, CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED, d0, d0));
  Ok("cuDeviceGetP2PAttribute");

  CUcontext c0 = nullptr, c1 = nullptr;
  E2E_CHECK_CU(cuDevicePrimaryCtxRetain(&c0, d0));
  E2E_CHECK_CU(cuDevicePrimaryCtxRetain(&c1, d1));
  E2E_CHECK_CU(cuCtxSetCurrent(c0));
  E2E_EXPECT_CU(CUDA_ERROR_PEER_ACCESS_NOT_ENABLED, cuCtxDisablePeerAccess(c1));
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_VALUE, cuCtxEnablePeerAccess(c1, 1));
  E2E_CHECK_CU(cuCtxEnablePeerAccess(c1, 0));
  E2E_EXPECT_CU(CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED, cuCtxEnablePeerAccess(c1, 0));
  E2E_CHECK_CU(cuCtxDisablePeerAccess(c1));
  E2E_EXPECT_CU(CUDA_ERROR_PEER_ACCESS_NOT_ENABLED, cuCtxDisablePeerAccess(c1));
  E2E_CHECK_CU(cuCtxEnablePeerAccess(c1, 0));
  E2E_CHECK_CU(cuCtxSynchronize());  // no asynchronous error was latched
  Ok("cuCtxEnablePeerAccess / cuCtxDisablePeerAccess with the driver's errors");

  const size_t n = 1 << 20;
  const std::vector<uint8_t> pattern = e2e::Pattern(n, 5);
  std::vector<uint8_t> back(n, 0);
  CUdeviceptr a0 = 0, b0 = 0, a1 = 0;
  E2E_CHECK_CU(cuMemAlloc(&a0, n));
  E2E_CHECK_CU(cuMemAlloc(&b0, n));
  E2E_CHECK_CU(cuMemcpyHtoD(a0, pattern.data(), n));
  E2E_CHECK_CU(cuCtxSetCurrent(c1));
  E2E_CHECK_CU(cuMemAlloc(&a1, n));
  E2E_CHECK_CU(cuMemsetD8(a1, 0, n));
  E2E_CHECK_CU(cuCtxSetCurrent(c0));
  E2E_CHECK_CU(cuMemcpyPeer(a1, c1, a0, c0, n));
  // Read in device 1's context: ordered after the copy.
  E2E_CHECK_CU(cuCtxSetCurrent(c1));
  E2E_CHECK_CU(cuMemcpyDtoH(back.data(), a1, n));
  E2E_CHECK_BYTES(back.data(), pattern.data(), n, "device 1 after cuMemcpyPeer");
  Ok("cuMemcpyPeer device 0 -> device 1");

  CUstream stream = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  E2E_CHECK_CU(cuMemcpyPeerAsync(b0, c0, a1, c1, n, stream));
  E2E_CHECK_CU(cuStreamSynchronize(stream));
  std::fill(back.begin(), back.end(), 0);
  E2E_CHECK_CU(cuCtxSetCurrent(c0));
  E2E_CHECK_CU(cuMemcpyDtoH(back.data(), b0, n));
  E2E_CHECK_BYTES(back.data(), pattern.data(), n, "device 0 after cuMemcpyPeerAsync");
  Ok("cuMemcpyPeerAsync device 1 -> device 0 on a stream");

  E2E_CHECK_CU(cuMemsetD8(b0, 0, n));
  E2E_CHECK_CU(cuMemcpyPeer(b0, c0, a0, c0, n));
  std::fill(back.begin(), back.end(), 0);
  E2E_CHECK_CU(cuMemcpyDtoH(back.data(), b0, n));
  E2E_CHECK_BYTES(back.data(), pattern.data(), n, "device 0 after cuMemcpyPeer to itself");
  Ok("cuMemcpyPeer device 0 -> device 0");

  // Device 1's memory named as device 0's: refused, reported by the next wait.
  E2E_EXPECT_ERROR_NOW_OR_AT(cuMemcpyPeer(b0, c0, a1, c0, n), cuCtxSynchronize());
  Ok("a range of the wrong device is refused");

  E2E_CHECK_CU(cuStreamDestroy(stream));
  E2E_CHECK_CU(cuMemFree(a0));
  E2E_CHECK_CU(cuMemFree(b0));
  E2E_CHECK_CU(cuMemFree(a1));
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(d1));
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(d0));
  std::printf("peers: all checks passed\n");
  return 0;
}
