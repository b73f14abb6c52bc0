// The sticky-fault check of the GPU check: one session's kernel faults
// while another session keeps working. scripts/gpu-check.sh runs two
// processes of this program through ferry against one ferryd.
//
//   gpu_fault_check worker STOP_FILE
//     Rounds of H2D copy, kernel, D2H copy, each result checked on the CPU.
//     Prints "READY" after the first round, stops once STOP_FILE exists (or
//     after 60 s, so nothing is left behind) and prints
//     "worker: N rounds, all correct" (exit 0) or what went wrong (exit 1).
//
//   gpu_fault_check fault
//     A good kernel, then one that stores to an address no allocation
//     covers, then a synchronize. Prints "FAULT <error name>" and exits 0
//     when the synchronize reports cudaErrorIllegalAddress, 3 on any other
//     error, 4 when nothing failed.
#include <cuda_runtime.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {

__global__ void scale_add(int* data, int count, int add) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) data[i] = data[i] * 2 + add;
}

// The address is below any allocation the driver hands out, so the store
// faults instead of corrupting another buffer.
__global__ void store_to_illegal_address(int* bad) { bad[threadIdx.x] = 1; }

bool Report(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return false;
  std::printf("%s: %s (%s)\n", what, cudaGetErrorName(error), cudaGetErrorString(error));
  std::fflush(stdout);
  return true;
}

int Worker(const char* stop_file) {
  constexpr int kCount = 1 << 20;
  std::vector<int> input(kCount), output(kCount);
  int* device = nullptr;
  if (Report(cudaMalloc(&device, kCount * sizeof(int)), "worker: cudaMalloc")) return 1;
  const auto start = std::chrono::steady_clock::now();
  long rounds = 0;
  for (;; ++rounds) {
    for (int i = 0; i < kCount; ++i) input[i] = i ^ static_cast<int>(rounds);
    const int add = static_cast<int>(rounds % 1000);
    if (Report(cudaMemcpy(device, input.data(), kCount * sizeof(int), cudaMemcpyHostToDevice),
               "worker: H2D copy"))
      return 1;
    scale_add<<<(kCount + 255) / 256, 256>>>(device, kCount, add);
    if (Report(cudaGetLastError(), "worker: launch")) return 1;
    if (Report(cudaMemcpy(output.data(), device, kCount * sizeof(int), cudaMemcpyDeviceToHost),
               "worker: D2H copy"))
      return 1;
    for (int i = 0; i < kCount; ++i) {
      if (output[i] != input[i] * 2 + add) {
        std::printf("worker: round %ld: element %d is %d, expected %d\n", rounds, i, output[i],
                    input[i] * 2 + add);
        return 1;
      }
    }
    if (rounds == 0) {
      std::printf("READY\n");
      std::fflush(stdout);
    }
    if (access(stop_file, F_OK) == 0) break;
    if (std::chrono::steady_clock::now() - start > std::chrono::seconds(60)) {
      std::printf("worker: no stop file after 60 s; stopping\n");
      break;
    }
  }
  if (Report(cudaFree(device), "worker: cudaFree")) return 1;
  std::printf("worker: %ld rounds, all correct\n", rounds + 1);
  return 0;
}

int Fault() {
  int* device = nullptr;
  if (Report(cudaMalloc(&device, 1024 * sizeof(int)), "fault: cudaMalloc")) return 3;
  scale_add<<<4, 256>>>(device, 1024, 1);
  if (Report(cudaDeviceSynchronize(), "fault: good kernel")) return 3;
  store_to_illegal_address<<<1, 32>>>(reinterpret_cast<int*>(uintptr_t{16}));
  cudaError_t launch = cudaGetLastError();
  cudaError_t sync = cudaDeviceSynchronize();
  const cudaError_t error = launch != cudaSuccess ? launch : sync;
  if (error == cudaSuccess) {
    std::printf("fault: the illegal store reported no error\n");
    return 4;
  }
  std::printf("FAULT %s (%s)\n", cudaGetErrorName(error), cudaGetErrorString(error));
  // The error is sticky: later calls of this process fail the same way.
  const cudaError_t after = cudaMemset(device, 0, 16);
  std::printf("fault: a later call returns %s\n", cudaGetErrorName(after));
  return error == cudaErrorIllegalAddress ? 0 : 3;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], "worker") == 0) return Worker(argv[2]);
  if (argc == 2 && std::strcmp(argv[1], "fault") == 0) return Fault();
  std::fprintf(stderr, "usage: gpu_fault_check worker STOP_FILE | fault\n");
  return 2;
}
