// The compute-share check of the GPU check: a compute-bound kernel, timed.
// scripts/gpu-check.sh runs it through ferry on a half slice alone, then
// two at once on the two halves of one GPU, and natively on the whole GPU.
//
//   gpu_compute_share [--iterations N] [--go-file PATH]
//
// After a warm-up launch it prints "READY"; with --go-file it then waits
// (up to 60 s) for that file, so two processes can start their timed
// launch together. Prints "spin_ms <ms> grid <blocks> sms <SMs the device
// reports>" and exits 0, or the error and 1.
#include <cuda_runtime.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

// No memory traffic but the final store: the time is SM time, so a share of
// the SMs shows as a share of the speed.
__global__ void spin(float* out, int iterations) {
  float x = threadIdx.x * 1e-3f;
  for (int i = 0; i < iterations; ++i) x = x * 0.999999f + 0.5f;
  out[blockIdx.x * blockDim.x + threadIdx.x] = x;
}

bool Report(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return false;
  std::printf("%s: %s (%s)\n", what, cudaGetErrorName(error), cudaGetErrorString(error));
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 1 << 20;
  std::string go_file;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
      iterations = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--go-file") == 0 && i + 1 < argc) {
      go_file = argv[++i];
    } else {
      std::fprintf(stderr, "usage: gpu_compute_share [--iterations N] [--go-file PATH]\n");
      return 2;
    }
  }
  int sms = 0;
  if (Report(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "SM count")) return 1;
  // A fixed grid (H100 SXM: 132 SMs), not one derived from what a slice
  // reports, so every run does the same work.
  constexpr int kGrid = 132 * 16;
  float* out = nullptr;
  if (Report(cudaMalloc(&out, kGrid * 256 * sizeof(float)), "cudaMalloc")) return 1;
  spin<<<kGrid, 256>>>(out, 16);
  if (Report(cudaDeviceSynchronize(), "warm-up")) return 1;
  std::printf("READY\n");
  std::fflush(stdout);
  if (!go_file.empty()) {
    for (int i = 0; access(go_file.c_str(), F_OK) != 0; ++i) {
      if (i == 60000) {
        std::printf("no go file after 60 s\n");
        return 1;
      }
      usleep(1000);
    }
  }
  const auto start = std::chrono::steady_clock::now();
  spin<<<kGrid, 256>>>(out, iterations);
  if (Report(cudaDeviceSynchronize(), "spin")) return 1;
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::printf("spin_ms %.3f grid %d sms %d\n", ms, kGrid, sms);
  return Report(cudaFree(out), "cudaFree") ? 1 : 0;
}
