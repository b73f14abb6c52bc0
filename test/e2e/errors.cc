// e2e program 6, errors: wrong input gets a CUDA error and the program keeps
// working. Checks: a copy to and from a device address that was never
// allocated (synchronous and async; the error may come from the call or the
// next synchronize); a double cuMemFree; cuModuleLoadData on bytes that are
// not an image, and cuModuleLoad of a missing file
// (CUDA_ERROR_FILE_NOT_FOUND); launches with more threads per block, a larger
// block or grid dimension, or more dynamic shared memory than the device
// allows (CUDA_ERROR_INVALID_VALUE from the launch itself). Through ferry
// only (FERRY_SERVER set), where the native driver would crash or cannot
// fail: a copy past the end of a valid allocation; a memset of a bogus
// pointer; a launch of a kernel with no host implementation (the next
// synchronize reports it); bogus and destroyed CUstream / CUevent /
// CUfunction / CUmodule handles. After each error the
// program shows it still works: the next synchronize succeeds and a fresh
// allocation, copy and vector_add launch give the right data. Usage: errors
// [IMAGE_DIR]. Exits 0 when every check passes.
#include <cuda.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "driver_check.h"

namespace {

namespace e2e = ::ferry::e2e;
using ::ferry::e2e::Ok;

// Far from anything the process allocated; never a valid device address.
constexpr CUdeviceptr kBogusPointer = 0x00000dead0000000ull;

// Handle values that no call returned.
CUstream BogusStream() { return reinterpret_cast<CUstream>(0xdead0001ull); }
CUevent BogusEvent() { return reinterpret_cast<CUevent>(0xdead0002ull); }
CUfunction BogusFunction() { return reinterpret_cast<CUfunction>(0xdead0003ull); }
CUmodule BogusModule() { return reinterpret_cast<CUmodule>(0xdead0004ull); }

// The program still works: nothing is pending, and a fresh allocation, copy
// and (given a module) vector_add launch give the right data.
void CheckStillWorks(const char* after, CUmodule module) {
  E2E_CHECK_CU(cuCtxSynchronize());
  constexpr int kN = 777;
  std::vector<float> a(kN), b(kN), c(kN, 0);
  for (int i = 0; i < kN; ++i) {
    a[i] = static_cast<float>(i);
    b[i] = 2.0f * static_cast<float>(i);
  }
  CUdeviceptr da = 0, db = 0, dc = 0;
  E2E_CHECK_CU(cuMemAlloc(&da, kN * sizeof(float)));
  E2E_CHECK_CU(cuMemAlloc(&db, kN * sizeof(float)));
  E2E_CHECK_CU(cuMemAlloc(&dc, kN * sizeof(float)));
  E2E_CHECK_CU(cuMemcpyHtoD(da, a.data(), kN * sizeof(float)));
  E2E_CHECK_CU(cuMemcpyHtoD(db, b.data(), kN * sizeof(float)));
  if (module != nullptr) {
    CUfunction vector_add = e2e::GetFunction(module, e2e::kVectorAdd);
    int n = kN;
    void* params[] = {&da, &db, &dc, &n};
    E2E_CHECK_CU(
        cuLaunchKernel(vector_add, (kN + 127) / 128, 1, 1, 128, 1, 1, 0, nullptr, params, nullptr));
  } else {
    E2E_CHECK_CU(cuMemcpyDtoD(dc, da, kN * sizeof(float)));
  }
  E2E_CHECK_CU(cuMemcpyDtoH(c.data(), dc, kN * sizeof(float)));
  for (int i = 0; i < kN; ++i) {
    const float expected = module != nullptr ? a[i] + b[i] : a[i];
    E2E_CHECK(c[i] == expected, "after %s: element %d = %g, expected %g", after, i, c[i], expected);
  }
  E2E_CHECK_CU(cuMemFree(da));
  E2E_CHECK_CU(cuMemFree(db));
  E2E_CHECK_CU(cuMemFree(dc));
  E2E_CHECK_CU(cuCtxSynchronize());
  Ok("still works after %s (alloc, copy%s)", after, module != nullptr ? ", vector_add" : "");
}

void CheckBadPointers(CUmodule module) {
  std::vector<uint8_t> host(256, 0x42);
  E2E_EXPECT_ERROR_NOW_OR_AT(cuMemcpyHtoD(kBogusPointer, host.data(), 256), cuCtxSynchronize());
  CheckStillWorks("cuMemcpyHtoD to a bogus pointer", module);
  E2E_EXPECT_ERROR_NOW_OR_AT(cuMemcpyDtoH(host.data(), kBogusPointer, 256), cuCtxSynchronize());
  CheckStillWorks("cuMemcpyDtoH from a bogus pointer", module);

  CUstream stream = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  void* pinned = nullptr;
  E2E_CHECK_CU(cuMemAllocHost(&pinned, 256));
  E2E_EXPECT_ERROR_NOW_OR_AT(cuMemcpyHtoDAsync(kBogusPointer, pinned, 256, stream),
                             cuStreamSynchronize(stream));
  E2E_CHECK_CU(cuStreamSynchronize(stream));
  CheckStillWorks("cuMemcpyHtoDAsync to a bogus pointer", module);
  E2E_CHECK_CU(cuMemFreeHost(pinned));
  E2E_CHECK_CU(cuStreamDestroy(stream));

  if (e2e::UsingFerry()) {
    // The server checks whole ranges against the session's allocations
    // (the native driver may not notice within its allocation granularity).
    CUdeviceptr small = 0;
    E2E_CHECK_CU(cuMemAlloc(&small, 4096));
    std::vector<uint8_t> big(8192, 0x17);
    E2E_EXPECT_ERROR_NOW_OR_AT(cuMemcpyHtoD(small, big.data(), big.size()), cuCtxSynchronize());
    CheckStillWorks("cuMemcpyHtoD past the end of an allocation", module);
    E2E_EXPECT_ERROR_NOW_OR_AT(cuMemcpyDtoH(big.data(), small, big.size()), cuCtxSynchronize());
    CheckStillWorks("cuMemcpyDtoH past the end of an allocation", module);
    E2E_CHECK_CU(cuMemFree(small));
    E2E_EXPECT_ERROR_NOW_OR_AT(cuMemsetD32(kBogusPointer, 1, 64), cuCtxSynchronize());
    CheckStillWorks("cuMemsetD32 on a bogus pointer", module);
  }
}

void CheckDoubleFree(CUmodule module) {
  CUdeviceptr d = 0;
  E2E_CHECK_CU(cuMemAlloc(&d, 1 << 16));
  E2E_CHECK_CU(cuMemFree(d));
  E2E_EXPECT_ERROR_NOW_OR_AT(cuMemFree(d), cuCtxSynchronize());
  CheckStillWorks("a double cuMemFree", module);
}

void CheckBadImages() {
  // Binary junk, NUL-terminated so that a loader that takes it for PTX text
  // stops at the end of the buffer.
  std::vector<uint8_t> junk(512);
  for (size_t i = 0; i + 1 < junk.size(); ++i) {
    junk[i] = static_cast<uint8_t>(0x80 | ((i * 37 + 11) & 0x7f));
  }
  junk.back() = 0;
  CUmodule module = nullptr;
  CUresult result = cuModuleLoadData(&module, junk.data());
  E2E_CHECK(result != CUDA_SUCCESS, "cuModuleLoadData(junk) succeeded");
  Ok("cuModuleLoadData(junk) -> %s (%d)%s", e2e::ErrorName(result), result,
     result == CUDA_ERROR_INVALID_IMAGE ? "" : ", not CUDA_ERROR_INVALID_IMAGE");
  E2E_EXPECT_CU(CUDA_ERROR_FILE_NOT_FOUND, cuModuleLoad(&module, "/nonexistent/ferry-e2e.fatbin"));
  CheckStillWorks("bad module images", nullptr);
}

// A launch configuration that no kernel can run on the device is refused by
// cuLaunchKernel itself (CUDA_ERROR_INVALID_VALUE), not at the next
// synchronize: programs check cudaGetLastError right after <<<>>>.
void CheckImpossibleLaunches(CUmodule module) {
  CUdevice device = 0;
  E2E_CHECK_CU(cuCtxGetDevice(&device));
  int max_threads = 0, max_block_z = 0, max_grid_y = 0, max_shared = 0;
  E2E_CHECK_CU(
      cuDeviceGetAttribute(&max_threads, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, device));
  E2E_CHECK_CU(cuDeviceGetAttribute(&max_block_z, CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, device));
  E2E_CHECK_CU(cuDeviceGetAttribute(&max_grid_y, CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, device));
  E2E_CHECK_CU(cuDeviceGetAttribute(&max_shared,
                                    CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, device));
  CUfunction vector_add = e2e::GetFunction(module, e2e::kVectorAdd);
  CUdeviceptr d = 0;
  E2E_CHECK_CU(cuMemAlloc(&d, 1024 * sizeof(float)));
  int n = 0;  // the kernel would touch nothing, were it launched
  void* params[] = {&d, &d, &d, &n};
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_VALUE, cuLaunchKernel(vector_add, 1, 1, 1, max_threads + 1, 1, 1,
                                                         0, nullptr, params, nullptr));
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_VALUE, cuLaunchKernel(vector_add, 1, 1, 1, 1, 1, max_block_z + 1,
                                                         0, nullptr, params, nullptr));
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_VALUE, cuLaunchKernel(vector_add, 1, max_grid_y + 1u, 1, 32, 1,
                                                         1, 0, nullptr, params, nullptr));
  E2E_EXPECT_CU(
      CUDA_ERROR_INVALID_VALUE,
      cuLaunchKernel(vector_add, 1, 1, 1, 32, 1, 1, max_shared + 1u, nullptr, params, nullptr));
  E2E_CHECK_CU(cuMemFree(d));
  CheckStillWorks("launches no device can run", module);
}

// Ferry only: the host backend has no host implementation for this kernel,
// so the launch fails; the error surfaces at the next synchronize.
void CheckMissingHostKernel(CUmodule module) {
  CUfunction missing = e2e::GetFunction(module, e2e::kMissingHostKernel);
  CUdeviceptr out = 0;
  E2E_CHECK_CU(cuMemAlloc(&out, 32 * sizeof(int)));
  void* params[] = {&out};
  CUresult reported = E2E_EXPECT_ERROR_NOW_OR_AT(
      cuLaunchKernel(missing, 1, 1, 1, 32, 1, 1, 0, nullptr, params, nullptr), cuCtxSynchronize());
  if (reported != CUDA_ERROR_NOT_SUPPORTED) {
    std::printf("note: expected CUDA_ERROR_NOT_SUPPORTED, got %s\n", e2e::ErrorName(reported));
  }
  E2E_CHECK_CU(cuMemFree(out));
  CheckStillWorks("a launch of a kernel without a host implementation", module);
}

// Ferry only: the native driver takes handles for pointers and crashes.
void CheckBogusHandles(CUmodule module) {
  E2E_EXPECT_ERROR_NOW_OR_AT(cuStreamSynchronize(BogusStream()), cuCtxSynchronize());
  E2E_EXPECT_ERROR_NOW_OR_AT(cuStreamQuery(BogusStream()), cuCtxSynchronize());
  E2E_EXPECT_ERROR_NOW_OR_AT(cuEventQuery(BogusEvent()), cuCtxSynchronize());
  E2E_EXPECT_ERROR_NOW_OR_AT(cuEventSynchronize(BogusEvent()), cuCtxSynchronize());
  E2E_EXPECT_ERROR_NOW_OR_AT(cuEventRecord(BogusEvent(), nullptr), cuCtxSynchronize());
  CUdeviceptr d = 0;
  E2E_CHECK_CU(cuMemAlloc(&d, 4096));
  E2E_EXPECT_ERROR_NOW_OR_AT(cuMemsetD8Async(d, 0, 4096, BogusStream()), cuCtxSynchronize());
  void* params[] = {&d};
  E2E_EXPECT_ERROR_NOW_OR_AT(
      cuLaunchKernel(BogusFunction(), 1, 1, 1, 1, 1, 1, 0, nullptr, params, nullptr),
      cuCtxSynchronize());
  CUfunction function = nullptr;
  E2E_EXPECT_ERROR_NOW_OR_AT(cuModuleGetFunction(&function, BogusModule(), e2e::kVectorAdd),
                             cuCtxSynchronize());
  E2E_EXPECT_ERROR_NOW_OR_AT(cuMemFree(kBogusPointer), cuCtxSynchronize());
  E2E_CHECK_CU(cuMemFree(d));
  CheckStillWorks("bogus handles", module);

  // Handles that were valid once.
  CUstream stream = nullptr;
  CUevent event = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  E2E_CHECK_CU(cuEventCreate(&event, CU_EVENT_DEFAULT));
  E2E_CHECK_CU(cuStreamDestroy(stream));
  E2E_CHECK_CU(cuEventDestroy(event));
  E2E_EXPECT_ERROR_NOW_OR_AT(cuStreamQuery(stream), cuCtxSynchronize());
  E2E_EXPECT_ERROR_NOW_OR_AT(cuEventQuery(event), cuCtxSynchronize());
  CheckStillWorks("destroyed stream and event handles", module);
}

}  // namespace

int main(int argc, char** argv) {
  e2e::PrimaryContext primary = e2e::SetUpPrimaryContext();
  CUmodule module = e2e::LoadFatbin(argc, argv);
  CheckStillWorks("setup", module);

  CheckBadPointers(module);
  CheckDoubleFree(module);
  CheckBadImages();
  CheckImpossibleLaunches(module);
  if (e2e::UsingFerry()) {
    // On a real GPU (scripts/gpu-check.sh sets FERRY_E2E_BACKEND=cuda) the
    // "missing" kernel exists and simply runs.
    const char* backend = std::getenv("FERRY_E2E_BACKEND");
    if (backend == nullptr || std::string(backend) != "cuda") {
      CheckMissingHostKernel(module);
    }
    CheckBogusHandles(module);
  } else {
    std::printf(
        "skipped: missing host kernel and bogus handles "
        "(FERRY_SERVER is not set: native driver)\n");
  }

  E2E_CHECK_CU(cuModuleUnload(module));
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(primary.device));
  std::printf("errors: all checks passed\n");
  return 0;
}
