// ferry-tenant-rounds: one tenant of bench/overcommit.sh — a program that
// alternates work on its device memory with idle time, as a notebook or an
// evaluation loop does. Built against the toolkit's stub libcuda.so like any
// CUDA program; at run time LD_LIBRARY_PATH picks ferry's libcuda.so.1.
//
//   ferry-tenant-rounds BYTES ROUNDS BUSY_MS IDLE_MS
//
// Allocates BYTES on device 0, then ROUNDS times: fills the whole
// allocation with memsets until BUSY_MS have passed (synchronizing after
// each), reads one byte back and checks it, then makes no call for IDLE_MS.
// Prints "rounds R memsets M seconds S" and exits 0; any failed call prints
// "FAILED <call> <error>" and exits 1.
#include <cuda.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace {

bool Ok(CUresult result, const char* call) {
  if (result == CUDA_SUCCESS) return true;
  const char* name = nullptr;
  cuGetErrorName(result, &name);
  std::printf("FAILED %s %s\n", call, name != nullptr ? name : "?");
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: ferry-tenant-rounds BYTES ROUNDS BUSY_MS IDLE_MS\n");
    return 2;
  }
  const size_t bytes = std::strtoull(argv[1], nullptr, 10);
  const int rounds = std::atoi(argv[2]);
  const auto busy = std::chrono::milliseconds(std::atoi(argv[3]));
  const auto idle = std::chrono::milliseconds(std::atoi(argv[4]));
  const auto started = std::chrono::steady_clock::now();
  CUdevice device = 0;
  CUcontext context = nullptr;
  CUdeviceptr memory = 0;
  if (!Ok(cuInit(0), "cuInit") || !Ok(cuDeviceGet(&device, 0), "cuDeviceGet") ||
      !Ok(cuDevicePrimaryCtxRetain(&context, device), "cuDevicePrimaryCtxRetain") ||
      !Ok(cuCtxSetCurrent(context), "cuCtxSetCurrent") ||
      !Ok(cuMemAlloc(&memory, bytes), "cuMemAlloc")) {
    return 1;
  }
  long memsets = 0;
  for (int round = 0; round < rounds; ++round) {
    const auto busy_until = std::chrono::steady_clock::now() + busy;
    const unsigned char value = static_cast<unsigned char>(round + 1);
    do {
      if (!Ok(cuMemsetD8(memory, value, bytes), "cuMemsetD8") ||
          !Ok(cuCtxSynchronize(), "cuCtxSynchronize")) {
        return 1;
      }
      ++memsets;
    } while (std::chrono::steady_clock::now() < busy_until);
    unsigned char last = 0;
    if (!Ok(cuMemcpyDtoH(&last, memory + bytes - 1, 1), "cuMemcpyDtoH")) return 1;
    if (last != value) {
      std::printf("FAILED check: byte %u, expected %u\n", last, value);
      return 1;
    }
    // Idle: no call, so ferryd may park this tenant's memory meanwhile.
    std::this_thread::sleep_for(idle);
  }
  if (!Ok(cuMemFree(memory), "cuMemFree")) return 1;
  cuDevicePrimaryCtxRelease(device);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::printf("rounds %d memsets %ld seconds %.3f\n", rounds, memsets, seconds);
  return 0;
}
