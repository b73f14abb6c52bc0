// ferry's demo: an ordinary CUDA driver-API program. It is linked against
// the toolkit's libcuda stub like any CUDA program; run with ferry's
// libcuda.so.1 first on LD_LIBRARY_PATH and FERRY_SERVER=host:port, every
// call goes to ferryd.
//
//   vector_add KERNEL.fatbin [N]
#include <cuda.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

void Check(CUresult result, const char* what) {
  if (result == CUDA_SUCCESS) return;
  const char* name = "?";
  cuGetErrorName(result, &name);
  std::fprintf(stderr, "vector_add: %s failed: %s (%d)\n", what, name, static_cast<int>(result));
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: vector_add KERNEL.fatbin [N]\n");
    return 2;
  }
  const int n = argc > 2 ? std::atoi(argv[2]) : (1 << 20);
  const auto start = std::chrono::steady_clock::now();

  Check(cuInit(0), "cuInit");
  CUdevice device;
  Check(cuDeviceGet(&device, 0), "cuDeviceGet");
  char name[256];
  Check(cuDeviceGetName(name, sizeof(name), device), "cuDeviceGetName");
  size_t total = 0;
  Check(cuDeviceTotalMem(&total, device), "cuDeviceTotalMem");
  std::printf("device 0: %s, %zu MiB\n", name, total >> 20);

  CUcontext context;
  Check(cuDevicePrimaryCtxRetain(&context, device), "cuDevicePrimaryCtxRetain");
  Check(cuCtxSetCurrent(context), "cuCtxSetCurrent");
  CUmodule module;
  Check(cuModuleLoad(&module, argv[1]), "cuModuleLoad");
  CUfunction kernel;
  Check(cuModuleGetFunction(&kernel, module, "vector_add"), "cuModuleGetFunction");

  std::vector<float> a(n), b(n), c(n, 0.0f);
  for (int i = 0; i < n; ++i) {
    a[i] = static_cast<float>(i);
    b[i] = 0.5f * static_cast<float>(i);
  }
  const size_t bytes = sizeof(float) * static_cast<size_t>(n);
  CUdeviceptr da, db, dc;
  Check(cuMemAlloc(&da, bytes), "cuMemAlloc a");
  Check(cuMemAlloc(&db, bytes), "cuMemAlloc b");
  Check(cuMemAlloc(&dc, bytes), "cuMemAlloc c");
  Check(cuMemcpyHtoD(da, a.data(), bytes), "cuMemcpyHtoD a");
  Check(cuMemcpyHtoD(db, b.data(), bytes), "cuMemcpyHtoD b");
  void* params[] = {&da, &db, &dc, const_cast<int*>(&n)};
  const unsigned block = 256;
  const unsigned grid = (static_cast<unsigned>(n) + block - 1) / block;
  Check(cuLaunchKernel(kernel, grid, 1, 1, block, 1, 1, 0, nullptr, params, nullptr),
        "cuLaunchKernel");
  Check(cuCtxSynchronize(), "cuCtxSynchronize");
  Check(cuMemcpyDtoH(c.data(), dc, bytes), "cuMemcpyDtoH c");

  int wrong = 0;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(c[i] - (a[i] + b[i])) > 1e-6f * std::fabs(a[i] + b[i])) ++wrong;
  }
  Check(cuMemFree(da), "cuMemFree");
  Check(cuMemFree(db), "cuMemFree");
  Check(cuMemFree(dc), "cuMemFree");
  Check(cuModuleUnload(module), "cuModuleUnload");
  Check(cuDevicePrimaryCtxRelease(device), "cuDevicePrimaryCtxRelease");
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  if (wrong != 0) {
    std::printf("vector_add: FAIL: %d of %d elements wrong\n", wrong, n);
    return 1;
  }
  std::printf("vector_add: PASS: c = a + b for %d elements (c[%d] = %.1f), %.1f ms end to end\n", n,
              n - 1, static_cast<double>(c[n - 1]), ms);
  return 0;
}
