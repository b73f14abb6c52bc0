// ferry-park-bench: what parking a session's device memory costs on the host
// backend (memory overcommit, issue 16) — the copy out to host memory and the
// copy back at the same addresses, per allocation size.
//
//   ferry-park-bench [--reps N] [--max-mib M]
//
// For each size from 1 MiB to M MiB (default 1024), one tenant allocates it
// (every page written, as a program's working set would be), then parks and
// unparks it N times (default 5). Prints the median of each, in milliseconds
// and GB/s. What a session's first call after a park waits is about the
// unpark figure. A timing, never a test.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "server/backend/host/host_backend.h"

namespace ferry {
namespace {

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

double Since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

int Main(int argc, char** argv) {
  int reps = 5;
  uint64_t max_mib = 1024;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--reps") reps = std::max(1, std::atoi(argv[i + 1]));
    if (flag == "--max-mib") max_mib = std::strtoull(argv[i + 1], nullptr, 10);
  }
  backend::HostBackendOptions options;
  // Room for one size while the previous one is still being released.
  options.device_memory = (2 * max_mib + 64) << 20;
  std::unique_ptr<backend::GpuBackend> gpu;
  Status status = backend::CreateHostBackend(options, &gpu);
  if (!status.ok()) {
    std::fprintf(stderr, "ferry-park-bench: %s\n", status.ToString().c_str());
    return 1;
  }
  std::unique_ptr<backend::Tenant> tenant = gpu->CreateTenant();
  std::unique_ptr<backend::Context> context;
  if (!gpu->CreateContext(0, 0, &context).ok()) return 1;
  gpu->JoinTenant(*context, *tenant);
  std::printf("| size | park (ms) | park GB/s | unpark (ms) | unpark GB/s |\n");
  std::printf("|---:|---:|---:|---:|---:|\n");
  for (uint64_t mib = 1; mib <= max_mib; mib *= 4) {
    const uint64_t bytes = mib << 20;
    uint64_t dptr = 0;
    if (!gpu->MemAlloc(*context, bytes, &dptr).ok()) return 1;
    // Host backend: device addresses are this process's.
    std::memset(reinterpret_cast<void*>(dptr), 0x5a, bytes);
    std::vector<double> park, unpark;
    for (int r = 0; r < reps; ++r) {
      auto start = std::chrono::steady_clock::now();
      if (!gpu->ParkTenantMemory(*tenant, nullptr).ok()) return 1;
      park.push_back(Since(start));
      start = std::chrono::steady_clock::now();
      if (!gpu->UnparkTenantMemory(*tenant, nullptr).ok()) return 1;
      unpark.push_back(Since(start));
    }
    const double gb = static_cast<double>(bytes) / 1e9;
    std::printf("| %llu MiB | %.2f | %.1f | %.2f | %.1f |\n", static_cast<unsigned long long>(mib),
                Median(park), gb / (Median(park) / 1e3), Median(unpark),
                gb / (Median(unpark) / 1e3));
    std::fflush(stdout);
    if (!gpu->MemFree(*context, dptr).ok()) return 1;
  }
  return 0;
}

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::Main(argc, argv); }
