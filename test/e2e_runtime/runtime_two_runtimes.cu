// Two copies of the CUDA runtime in one process, as with any program that
// uses a CUDA library: this program (its own cudart, static or shared) loads
// runtime_two_runtimes_lib.so (another cudart, static, with its own kernels)
// with dlopen, and both share the device's primary context:
//   - both runtimes make the same context current;
//   - memory allocated by one is used by the other's kernels and copies, and
//     freed by the other;
//   - cudaDeviceSynchronize in either waits for work the other queued on its
//     own non-blocking stream (held by a host function until a helper thread
//     releases it, so "waited" does not depend on speed);
//   - after dlclose, whose runtime teardown drops the library's hold on the
//     primary context, the program's runtime still works in the same context.
//
//   runtime_two_runtimes LIBRARY [keep-loaded]
// With keep-loaded the library is never closed and its runtime is torn down
// at exit instead. Prints what it checked and "all checks passed", or the
// first failure.
#include <cuda.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "runtime_check.h"
#include "runtime_hold.h"
#include "runtime_kernels.cuh"

namespace {

// The library's entry points (runtime_two_runtimes_lib.cu).
struct Library {
  void* handle = nullptr;
  int (*init)(void** context) = nullptr;
  int (*alloc_filled)(float** out, int n, float factor) = nullptr;
  int (*accumulate_after)(RtHold* hold, float* dst, const float* src, int n) = nullptr;
  int (*stream_query)() = nullptr;
  int (*device_synchronize)() = nullptr;
  int (*read)(float* host, const float* device, int n) = nullptr;
  int (*pointer_is_device)(const void* pointer) = nullptr;
  int (*free)(void* pointer) = nullptr;
  int (*finish)() = nullptr;
};

template <typename Fn>
void Bind(void* handle, const char* name, Fn* out) {
  *out = reinterpret_cast<Fn>(dlsym(handle, name));
  if (*out == nullptr) {
    std::printf("FAILED dlsym %s: %s\n", name, dlerror());
    std::exit(1);
  }
}

Library Open(const char* path) {
  Library lib;
  lib.handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib.handle == nullptr) {
    std::printf("FAILED dlopen %s: %s\n", path, dlerror());
    std::exit(1);
  }
  Bind(lib.handle, "rt_lib_init", &lib.init);
  Bind(lib.handle, "rt_lib_alloc_filled", &lib.alloc_filled);
  Bind(lib.handle, "rt_lib_accumulate_after", &lib.accumulate_after);
  Bind(lib.handle, "rt_lib_stream_query", &lib.stream_query);
  Bind(lib.handle, "rt_lib_device_synchronize", &lib.device_synchronize);
  Bind(lib.handle, "rt_lib_read", &lib.read);
  Bind(lib.handle, "rt_lib_pointer_is_device", &lib.pointer_is_device);
  Bind(lib.handle, "rt_lib_free", &lib.free);
  Bind(lib.handle, "rt_lib_finish", &lib.finish);
  return lib;
}

#define LIB_CHECK(call) RT_CHECK(static_cast<cudaError_t>(call))

constexpr int kN = 5000;
constexpr auto kReleaseDelay = std::chrono::milliseconds(30);

int Blocks(int n) { return (n + 255) / 256; }

CUcontext Current() {
  CUcontext context = nullptr;
  RT_CHECK_CU(cuCtxGetCurrent(&context));
  return context;
}

// The program's runtime still allocates, copies and launches in `context`.
void ProgramStillWorks(CUcontext context, const char* when) {
  std::vector<float> host(kN), back(kN);
  for (int i = 0; i < kN; ++i) host[i] = static_cast<float>(i % 97);
  float* data = nullptr;
  RT_CHECK(cudaMalloc(&data, kN * sizeof(float)));
  RT_CHECK(cudaMemcpy(data, host.data(), kN * sizeof(float), cudaMemcpyHostToDevice));
  rt_scale<float><<<Blocks(kN), 256>>>(data, -2.0f, kN);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaMemcpy(back.data(), data, kN * sizeof(float), cudaMemcpyDeviceToHost));
  for (int i = 0; i < kN; ++i) RT_EXPECT(back[i] == -2.0f * host[i]);
  RT_CHECK(cudaFree(data));
  RT_EXPECT(Current() == context);
  std::printf("the program's runtime works %s: ok\n", when);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::printf("usage: %s LIBRARY [keep-loaded]\n", argv[0]);
    return 2;
  }
  const bool keep_loaded = argc > 2 && std::strcmp(argv[2], "keep-loaded") == 0;
  RT_CHECK(cudaSetDevice(0));
  RT_CHECK(cudaFree(nullptr));
  const CUcontext context = Current();
  CUdevice device = 0;
  RT_CHECK_CU(cuDeviceGet(&device, 0));
  CUcontext primary = nullptr;
  RT_CHECK_CU(cuDevicePrimaryCtxRetain(&primary, device));
  RT_CHECK_CU(cuDevicePrimaryCtxRelease(device));
  RT_EXPECT(context == primary);
  ProgramStillWorks(context, "before the library is loaded");

  Library lib = Open(argv[1]);
  void* lib_context = nullptr;
  LIB_CHECK(lib.init(&lib_context));
  RT_EXPECT(lib_context == context);
  RT_EXPECT(Current() == context);
  std::printf("both runtimes use the primary context: ok\n");

  // The library allocates and fills; the program synchronises, then scales
  // the library's memory with its own kernel.
  float* from_lib = nullptr;
  LIB_CHECK(lib.alloc_filled(&from_lib, kN, 3.0f));
  RT_CHECK(cudaDeviceSynchronize());
  rt_scale<float><<<Blocks(kN), 256>>>(from_lib, 2.0f, kN);
  RT_CHECK(cudaGetLastError());
  std::vector<float> back(kN);
  RT_CHECK(cudaMemcpy(back.data(), from_lib, kN * sizeof(float), cudaMemcpyDeviceToHost));
  for (int i = 0; i < kN; ++i) RT_EXPECT(back[i] == 6.0f * static_cast<float>(i));
  std::printf("the program's kernel ran on memory the library allocated and filled: ok\n");

  // The library's kernel adds the program's memory into it, on the library's
  // own stream, behind a hold; the program's cudaDeviceSynchronize must wait
  // for it.
  std::vector<float> ones(kN, 1.0f);
  float* from_program = nullptr;
  RT_CHECK(cudaMalloc(&from_program, kN * sizeof(float)));
  RT_CHECK(cudaMemcpy(from_program, ones.data(), kN * sizeof(float), cudaMemcpyHostToDevice));
  LIB_CHECK(lib.pointer_is_device(from_program));
  RtHold lib_hold;
  LIB_CHECK(lib.accumulate_after(&lib_hold, from_lib, from_program, kN));
  RT_EXPECT(static_cast<cudaError_t>(lib.stream_query()) == cudaErrorNotReady);
  std::thread release = RtReleaseLater(lib_hold, kReleaseDelay);
  RT_CHECK(cudaDeviceSynchronize());
  // It returned only after the hold was released and the kernel behind it ran.
  RT_EXPECT(lib_hold.released.load() && lib_hold.entered.load() && !lib_hold.gave_up.load());
  release.join();
  LIB_CHECK(lib.stream_query());
  RT_CHECK(cudaMemcpy(back.data(), from_lib, kN * sizeof(float), cudaMemcpyDeviceToHost));
  for (int i = 0; i < kN; ++i) RT_EXPECT(back[i] == 6.0f * static_cast<float>(i) + 1.0f);
  std::printf("the program's cudaDeviceSynchronize waited for the library's stream: ok\n");

  // The other way round: the program's kernel on its own stream behind a
  // hold; the library's cudaDeviceSynchronize must wait for it.
  cudaStream_t stream = nullptr;
  RT_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  RtHold program_hold;
  RT_CHECK(cudaLaunchHostFunc(stream, RtHoldStream, &program_hold));
  rt_vector_add<<<Blocks(kN), 256, 0, stream>>>(from_lib, from_program, from_program, kN);
  RT_CHECK(cudaGetLastError());
  RT_EXPECT(cudaStreamQuery(stream) == cudaErrorNotReady);
  release = RtReleaseLater(program_hold, kReleaseDelay);
  LIB_CHECK(lib.device_synchronize());
  RT_EXPECT(program_hold.released.load() && program_hold.entered.load() &&
            !program_hold.gave_up.load());
  release.join();
  RT_CHECK(cudaStreamQuery(stream));
  LIB_CHECK(lib.read(back.data(), from_program, kN));
  for (int i = 0; i < kN; ++i) RT_EXPECT(back[i] == 6.0f * static_cast<float>(i) + 2.0f);
  RT_CHECK(cudaStreamDestroy(stream));
  std::printf("the library's cudaDeviceSynchronize waited for the program's stream: ok\n");

  // Each frees what the other allocated.
  LIB_CHECK(lib.free(from_program));
  RT_CHECK(cudaFree(from_lib));
  LIB_CHECK(lib.finish());
  LIB_CHECK(lib.device_synchronize());
  std::printf("each runtime freed the other's allocation: ok\n");

  if (keep_loaded) {
    ProgramStillWorks(context, "with the library still loaded");
  } else {
    if (dlclose(lib.handle) != 0) {
      std::printf("FAILED dlclose: %s\n", dlerror());
      return 1;
    }
    ProgramStillWorks(context, "after dlclose of the library");
  }
  RT_CHECK(cudaDeviceSynchronize());
  std::printf("all checks passed\n");
  return 0;
}
