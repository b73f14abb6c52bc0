// e2e program 3, launch: module loading and kernel launches. Loads the images
// built from kernels.cu every way a program can (cuModuleLoad of the fatbin
// and of the PTX file, cuModuleLoadData / cuModuleLoadDataEx of both,
// cuModuleLoadFatBinary) and runs vector_add from each; checks that each
// loaded module has its own fresh copy of the __device__ global; reads and
// writes the global through cuModuleGetGlobal and a kernel given its
// address; launches with kernelParams and with `extra`
// (CU_LAUNCH_PARAM_BUFFER_POINTER/SIZE), and with cuLaunchKernelEx; passes a
// padded struct by value, twelve parameters of mixed sizes (char, short, int,
// long long, float, double, pointers, a float3-like struct, unsigned char,
// unsigned long long) and runs two template instantiations; checks launch
// geometry and dynamic shared memory as a kernel sees them; and checks
// cuFuncGetAttribute / cuFuncSetAttribute / cuFuncSetCacheConfig and the
// NOT_FOUND errors for unknown kernel and global names. Usage:
// launch [IMAGE_DIR]. Exits 0 when every check passes.
#include <cuda.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "driver_check.h"
#include "kernel_types.h"

namespace {

namespace e2e = ::ferry::e2e;
using ::ferry::e2e::GetFunction;
using ::ferry::e2e::Ok;

struct Images {
  std::string fatbin_path;
  std::string ptx_path;
  std::vector<char> fatbin;
  std::vector<char> ptx;  // NUL-terminated, as cuModuleLoadData wants PTX
};

// Device buffers for one vector_add run over n elements.
class VectorAddBuffers {
 public:
  static constexpr int kN = 1000;  // not a multiple of the block size

  VectorAddBuffers() {
    for (int i = 0; i < kN; ++i) {
      a_[i] = 0.5f * static_cast<float>(i);
      b_[i] = static_cast<float>(kN - i);
    }
    E2E_CHECK_CU(cuMemAlloc(&a, sizeof(a_)));
    E2E_CHECK_CU(cuMemAlloc(&b, sizeof(b_)));
    E2E_CHECK_CU(cuMemAlloc(&c, sizeof(a_)));
    E2E_CHECK_CU(cuMemcpyHtoD(a, a_, sizeof(a_)));
    E2E_CHECK_CU(cuMemcpyHtoD(b, b_, sizeof(b_)));
    E2E_CHECK_CU(cuCtxSynchronize());  // see Clear
  }
  ~VectorAddBuffers() {
    E2E_CHECK_CU(cuMemFree(a));
    E2E_CHECK_CU(cuMemFree(b));
    E2E_CHECK_CU(cuMemFree(c));
  }

  // Reads c back and checks every element; `how` names the launch.
  void Check(const char* how) {
    float c_host[kN];
    E2E_CHECK_CU(cuMemcpyDtoH(c_host, c, sizeof(c_host)));
    for (int i = 0; i < kN; ++i) {
      E2E_CHECK(c_host[i] == a_[i] + b_[i], "%s: c[%d] = %g, expected %g", how, i, c_host[i],
                a_[i] + b_[i]);
    }
    Ok("vector_add (%s): %d sums", how, kN);
  }

  // Zeroes c and waits: the memset runs on the legacy default stream, which
  // a later launch on a non-blocking stream does not wait for.
  void Clear() {
    E2E_CHECK_CU(cuMemsetD32(c, 0, kN));
    E2E_CHECK_CU(cuCtxSynchronize());
  }

  CUdeviceptr a = 0, b = 0, c = 0;

 private:
  float a_[kN];
  float b_[kN];
};

void LaunchVectorAdd(CUfunction function, VectorAddBuffers& buffers, CUstream stream) {
  int n = VectorAddBuffers::kN;
  void* params[] = {&buffers.a, &buffers.b, &buffers.c, &n};
  E2E_CHECK_CU(
      cuLaunchKernel(function, (n + 255) / 256, 1, 1, 256, 1, 1, 0, stream, params, nullptr));
}

void CheckGlobalIsInitial(CUmodule module, const char* how) {
  CUdeviceptr global = 0;
  size_t size = 0;
  E2E_CHECK_CU(cuModuleGetGlobal(&global, &size, module, e2e::kGlobalName));
  E2E_CHECK(size == sizeof(e2e::kGlobalInitial), "%s: global size %zu", how, size);
  int values[4] = {};
  E2E_CHECK_CU(cuMemcpyDtoH(values, global, sizeof(values)));
  E2E_CHECK_BYTES(values, e2e::kGlobalInitial, sizeof(values),
                  (std::string(how) + ": module global has its initial value").c_str());
}

// Loads the images every supported way; each module must run vector_add and
// have a fresh global (the main module's global was changed before).
void CheckLoadPaths(const Images& images, VectorAddBuffers& buffers) {
  struct LoadPath {
    const char* how;
    CUresult (*load)(CUmodule*, const Images&);
  };
  static char error_log[4096];
  const LoadPath paths[] = {
      {"cuModuleLoad(fatbin file)",
       [](CUmodule* m, const Images& i) { return cuModuleLoad(m, i.fatbin_path.c_str()); }},
      {"cuModuleLoadData(fatbin)",
       [](CUmodule* m, const Images& i) { return cuModuleLoadData(m, i.fatbin.data()); }},
      {"cuModuleLoadDataEx(fatbin, no options)",
       [](CUmodule* m, const Images& i) {
         return cuModuleLoadDataEx(m, i.fatbin.data(), 0, nullptr, nullptr);
       }},
      {"cuModuleLoadFatBinary(fatbin)",
       [](CUmodule* m, const Images& i) { return cuModuleLoadFatBinary(m, i.fatbin.data()); }},
      {"cuModuleLoad(PTX file)",
       [](CUmodule* m, const Images& i) { return cuModuleLoad(m, i.ptx_path.c_str()); }},
      {"cuModuleLoadData(PTX)",
       [](CUmodule* m, const Images& i) { return cuModuleLoadData(m, i.ptx.data()); }},
      {"cuModuleLoadDataEx(PTX, log buffer + optimization level)",
       [](CUmodule* m, const Images& i) {
         CUjit_option options[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
                                   CU_JIT_OPTIMIZATION_LEVEL};
         void* values[] = {error_log, reinterpret_cast<void*>(sizeof(error_log)),
                           reinterpret_cast<void*>(uintptr_t{3})};
         return cuModuleLoadDataEx(m, i.ptx.data(), 3, options, values);
       }},
  };
  for (const LoadPath& path : paths) {
    CUmodule module = nullptr;
    error_log[0] = '\0';
    CUresult result = path.load(&module, images);
    if (result != CUDA_SUCCESS) {
      ::ferry::e2e::FailAt(__FILE__, __LINE__,
                           e2e::Format("%s returned %s (%d); JIT error log: \"%s\"", path.how,
                                       e2e::ErrorName(result), result, error_log));
    }
    Ok("%s", path.how);
    CheckGlobalIsInitial(module, path.how);
    buffers.Clear();
    LaunchVectorAdd(GetFunction(module, e2e::kVectorAdd), buffers, nullptr);
    buffers.Check(path.how);
    E2E_CHECK_CU(cuModuleUnload(module));
  }
}

void CheckGlobal(CUmodule module) {
  CheckGlobalIsInitial(module, "main module");
  CUdeviceptr global = 0;
  E2E_CHECK_CU(cuModuleGetGlobal(&global, nullptr, module, e2e::kGlobalName));
  const int written[4] = {1, 2, 3, 4};
  E2E_CHECK_CU(cuMemcpyHtoD(global, written, sizeof(written)));
  int n = 4, delta = 100;
  void* params[] = {&global, &delta, &n};
  E2E_CHECK_CU(cuLaunchKernel(GetFunction(module, e2e::kAddInt), 1, 1, 1, 32, 1, 1, 0, nullptr,
                              params, nullptr));
  int values[4] = {};
  E2E_CHECK_CU(cuMemcpyDtoH(values, global, sizeof(values)));
  const int expected[4] = {101, 102, 103, 104};
  E2E_CHECK_BYTES(values, expected, sizeof(values),
                  "global written by HtoD, then add_int(&global, 100)");

  CUdeviceptr missing = 0;
  size_t size = 0;
  E2E_EXPECT_CU(CUDA_ERROR_NOT_FOUND, cuModuleGetGlobal(&missing, &size, module, "no_such_global"));
  CUfunction function = nullptr;
  E2E_EXPECT_CU(CUDA_ERROR_NOT_FOUND, cuModuleGetFunction(&function, module, "no_such_kernel"));
}

// The main module's global still holds what CheckGlobal left there after
// other modules from the same image were loaded and unloaded.
void CheckGlobalUnchanged(CUmodule module) {
  CUdeviceptr global = 0;
  E2E_CHECK_CU(cuModuleGetGlobal(&global, nullptr, module, e2e::kGlobalName));
  int values[4] = {};
  E2E_CHECK_CU(cuMemcpyDtoH(values, global, sizeof(values)));
  const int expected[4] = {101, 102, 103, 104};
  E2E_CHECK_BYTES(values, expected, sizeof(values),
                  "main module's global untouched by the other modules");
}

void CheckExtraParams(CUmodule module, VectorAddBuffers& buffers) {
  // vector_add(const float*, const float*, float*, int): 0, 8, 16, 24.
  uint8_t buffer[28];
  int n = VectorAddBuffers::kN;
  std::memcpy(buffer + 0, &buffers.a, 8);
  std::memcpy(buffer + 8, &buffers.b, 8);
  std::memcpy(buffer + 16, &buffers.c, 8);
  std::memcpy(buffer + 24, &n, 4);
  size_t size = sizeof(buffer);
  void* extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buffer, CU_LAUNCH_PARAM_BUFFER_SIZE, &size,
                   CU_LAUNCH_PARAM_END};
  buffers.Clear();
  E2E_CHECK_CU(cuLaunchKernel(GetFunction(module, e2e::kVectorAdd), (n + 255) / 256, 1, 1, 256, 1,
                              1, 0, nullptr, nullptr, extra));
  buffers.Check("extra: CU_LAUNCH_PARAM_BUFFER_POINTER/SIZE");

  // padded_by_value(char, E2ePadded, long long*): 0, 8 (24 bytes), 32.
  CUdeviceptr out = 0;
  E2E_CHECK_CU(cuMemAlloc(&out, 4 * sizeof(long long)));
  E2E_CHECK_CU(cuMemsetD8(out, 0, 4 * sizeof(long long)));
  const E2ePadded padded = {-7, 4096.0, 123456};
  const char tag = 42;
  uint8_t padded_buffer[40] = {};
  std::memcpy(padded_buffer + 0, &tag, 1);
  std::memcpy(padded_buffer + 8, &padded, sizeof(padded));
  std::memcpy(padded_buffer + 32, &out, 8);
  size_t padded_size = sizeof(padded_buffer);
  void* padded_extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, padded_buffer,
                          CU_LAUNCH_PARAM_BUFFER_SIZE, &padded_size, CU_LAUNCH_PARAM_END};
  E2E_CHECK_CU(cuLaunchKernel(GetFunction(module, e2e::kPaddedByValue), 1, 1, 1, 1, 1, 1, 0,
                              nullptr, nullptr, padded_extra));
  long long got[4] = {};
  E2E_CHECK_CU(cuMemcpyDtoH(got, out, sizeof(got)));
  const long long expected[4] = {42, -7, 4096, 123456};
  E2E_CHECK_BYTES(got, expected, sizeof(got), "padded_by_value through `extra`");
  E2E_CHECK_CU(cuMemFree(out));
}

void CheckStructByValue(CUmodule module) {
  CUdeviceptr out = 0;
  E2E_CHECK_CU(cuMemAlloc(&out, 4 * sizeof(long long)));
  E2E_CHECK_CU(cuMemsetD8(out, 0, 4 * sizeof(long long)));
  char tag = -5;
  E2ePadded padded;
  std::memset(&padded, 0x5A, sizeof(padded));  // padding bytes are junk
  padded.c = 7;
  padded.d = 12345.75;
  padded.i = -99999;
  void* params[] = {&tag, &padded, &out};
  E2E_CHECK_CU(cuLaunchKernel(GetFunction(module, e2e::kPaddedByValue), 1, 1, 1, 1, 1, 1, 0,
                              nullptr, params, nullptr));
  long long got[4] = {};
  E2E_CHECK_CU(cuMemcpyDtoH(got, out, sizeof(got)));
  const long long expected[4] = {-5, 7, 12345, -99999};
  E2E_CHECK_BYTES(got, expected, sizeof(got),
                  "padded_by_value(char, {char, double, int}, long long*)");
  E2E_CHECK_CU(cuMemFree(out));
}

void CheckManyParams(CUmodule module) {
  ManyParamsArgs args;
  CUdeviceptr g = 0, out = 0;
  E2E_CHECK_CU(cuMemAlloc(&g, sizeof(args.g_value)));
  E2E_CHECK_CU(cuMemcpyHtoD(g, &args.g_value, sizeof(args.g_value)));
  E2E_CHECK_CU(cuMemAlloc(&out, kManyParamsOutputs * sizeof(double)));
  E2E_CHECK_CU(cuMemsetD8(out, 0, kManyParamsOutputs * sizeof(double)));
  void* params[] = {&args.a, &args.b, &args.c, &args.d, &args.e, &args.f,
                    &g,      &args.h, &args.i, &args.k, &args.l, &out};
  E2E_CHECK_CU(cuLaunchKernel(GetFunction(module, e2e::kManyParams), 1, 1, 1, 1, 1, 1, 0, nullptr,
                              params, nullptr));
  double got[kManyParamsOutputs] = {};
  E2E_CHECK_CU(cuMemcpyDtoH(got, out, sizeof(got)));

  double values[kManyParamsOutputs - 1];
  args.Expected(values);
  static const char* const kNames[] = {"char a",  "short b",  "int c", "long long d",
                                       "float e", "double f", "*g",    "Float3 h",
                                       "uchar i", "short k",  "ull l"};
  double sum = 0;
  for (int j = 0; j < kManyParamsOutputs - 1; ++j) {
    E2E_CHECK(got[j] == values[j],
              "many_params: parameter %s = %.17g, "
              "expected %.17g",
              kNames[j], got[j], values[j]);
    sum += values[j];
  }
  E2E_CHECK(got[kManyParamsOutputs - 1] == sum, "many_params checksum %.17g, expected %.17g",
            got[kManyParamsOutputs - 1], sum);
  Ok("many_params: 12 parameters of mixed sizes, checksum %.17g", sum);
  E2E_CHECK_CU(cuMemFree(g));
  E2E_CHECK_CU(cuMemFree(out));
}

template <typename T>
void CheckScale(CUmodule module, const char* name, T factor) {
  constexpr int kN = 300;
  T data[kN];
  for (int i = 0; i < kN; ++i) data[i] = static_cast<T>(i) + T(0.5);
  CUdeviceptr d = 0;
  E2E_CHECK_CU(cuMemAlloc(&d, sizeof(data)));
  E2E_CHECK_CU(cuMemcpyHtoD(d, data, sizeof(data)));
  int n = kN;
  void* params[] = {&d, &factor, &n};
  E2E_CHECK_CU(
      cuLaunchKernel(GetFunction(module, name), 3, 1, 1, 128, 1, 1, 0, nullptr, params, nullptr));
  T got[kN];
  E2E_CHECK_CU(cuMemcpyDtoH(got, d, sizeof(got)));
  for (int i = 0; i < kN; ++i) {
    E2E_CHECK(got[i] == data[i] * factor, "%s: element %d = %g, expected %g", name, i,
              static_cast<double>(got[i]), static_cast<double>(data[i] * factor));
  }
  Ok("template instantiation %s", name);
  E2E_CHECK_CU(cuMemFree(d));
}

// Launches launch_geometry and checks what it reports against the launch.
void CheckGeometry(CUfunction function, const unsigned grid[3], const unsigned block[3],
                   unsigned shared_bytes, CUstream stream, bool use_launch_ex) {
  CUdeviceptr out = 0;
  E2E_CHECK_CU(cuMemAlloc(&out, 8 * sizeof(unsigned)));
  E2E_CHECK_CU(cuMemsetD32(out, 0, 8));
  E2E_CHECK_CU(cuCtxSynchronize());  // `stream` may be non-blocking
  void* params[] = {&out};
  if (use_launch_ex) {
    CUlaunchConfig config;
    std::memset(&config, 0, sizeof(config));
    config.gridDimX = grid[0];
    config.gridDimY = grid[1];
    config.gridDimZ = grid[2];
    config.blockDimX = block[0];
    config.blockDimY = block[1];
    config.blockDimZ = block[2];
    config.sharedMemBytes = shared_bytes;
    config.hStream = stream;
    config.attrs = nullptr;
    config.numAttrs = 0;
    E2E_CHECK_CU(cuLaunchKernelEx(&config, function, params, nullptr));
  } else {
    E2E_CHECK_CU(cuLaunchKernel(function, grid[0], grid[1], grid[2], block[0], block[1], block[2],
                                shared_bytes, stream, params, nullptr));
  }
  E2E_CHECK_CU(cuStreamSynchronize(stream));
  unsigned got[8] = {};
  E2E_CHECK_CU(cuMemcpyDtoH(got, out, sizeof(got)));
  const unsigned threads = grid[0] * grid[1] * grid[2] * block[0] * block[1] * block[2];
  const unsigned expected[8] = {grid[0],  grid[1],  grid[2],      block[0],
                                block[1], block[2], shared_bytes, threads};
  E2E_CHECK(std::memcmp(got, expected, sizeof(got)) == 0,
            "%s saw grid (%u,%u,%u) block (%u,%u,%u) shared %u threads %u; "
            "expected (%u,%u,%u) (%u,%u,%u) %u %u",
            use_launch_ex ? "cuLaunchKernelEx" : "cuLaunchKernel", got[0], got[1], got[2], got[3],
            got[4], got[5], got[6], got[7], expected[0], expected[1], expected[2], expected[3],
            expected[4], expected[5], expected[6], expected[7]);
  Ok("%s: grid (%u,%u,%u), block (%u,%u,%u), %u dynamic shared bytes, %u "
     "threads",
     use_launch_ex ? "cuLaunchKernelEx" : "cuLaunchKernel", grid[0], grid[1], grid[2], block[0],
     block[1], block[2], shared_bytes, threads);
  E2E_CHECK_CU(cuMemFree(out));
}

void CheckLaunchGeometry(CUmodule module, CUstream stream) {
  CUfunction function = GetFunction(module, e2e::kLaunchGeometry);
  const unsigned grid_a[3] = {3, 2, 2}, block_a[3] = {4, 2, 3};
  CheckGeometry(function, grid_a, block_a, 256, stream, true);
  const unsigned grid_b[3] = {5, 1, 1}, block_b[3] = {32, 1, 1};
  CheckGeometry(function, grid_b, block_b, 0, nullptr, false);
  CheckGeometry(function, grid_b, block_b, 0, stream, true);
}

void CheckFunctionAttributes(CUmodule module, CUstream stream) {
  CUfunction function = GetFunction(module, e2e::kLaunchGeometry);
  int value = -1;
  E2E_CHECK_CU(cuFuncGetAttribute(&value, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, function));
  E2E_CHECK(value >= 32 && value <= 4096, "max threads per block %d", value);
  Ok("CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK = %d", value);
  E2E_CHECK_CU(cuFuncGetAttribute(&value, CU_FUNC_ATTRIBUTE_NUM_REGS, function));
  E2E_CHECK(value >= 0 && value <= 255, "registers %d", value);
  Ok("CU_FUNC_ATTRIBUTE_NUM_REGS = %d", value);
  E2E_CHECK_CU(cuFuncGetAttribute(&value, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, function));
  E2E_CHECK(value >= 0, "static shared bytes %d", value);
  Ok("CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = %d", value);

  E2E_CHECK_CU(cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 8192));
  E2E_CHECK_CU(
      cuFuncGetAttribute(&value, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, function));
  E2E_CHECK(value == 8192, "max dynamic shared bytes %d after setting 8192", value);
  Ok("cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES, 8192) reads back");
  E2E_CHECK_CU(cuFuncSetCacheConfig(function, CU_FUNC_CACHE_PREFER_SHARED));
  Ok("cuFuncSetCacheConfig(CU_FUNC_CACHE_PREFER_SHARED)");

  const unsigned grid[3] = {2, 1, 1}, block[3] = {64, 1, 1};
  CheckGeometry(function, grid, block, 8192, stream, false);
}

void CheckExternCKernel(CUmodule module, CUstream stream) {
  constexpr int kN = 500;
  unsigned data[kN];
  for (int i = 0; i < kN; ++i) data[i] = static_cast<unsigned>(i);
  CUdeviceptr d = 0;
  E2E_CHECK_CU(cuMemAlloc(&d, sizeof(data)));
  E2E_CHECK_CU(cuMemcpyHtoD(d, data, sizeof(data)));
  E2E_CHECK_CU(cuCtxSynchronize());  // `stream` is non-blocking
  CUfunction function = GetFunction(module, e2e::kIncrement);
  int n = kN;
  void* params[] = {&d, &n};
  for (int round = 0; round < 2; ++round) {
    E2E_CHECK_CU(cuLaunchKernel(function, 4, 1, 1, 128, 1, 1, 0, stream, params, nullptr));
  }
  E2E_CHECK_CU(cuStreamSynchronize(stream));
  unsigned got[kN];
  E2E_CHECK_CU(cuMemcpyDtoH(got, d, sizeof(got)));
  for (int i = 0; i < kN; ++i) {
    E2E_CHECK(got[i] == static_cast<unsigned>(i) + 2, "data[%d] = %u", i, got[i]);
  }
  Ok("extern \"C\" kernel %s launched twice on a stream", e2e::kIncrement);
  E2E_CHECK_CU(cuMemFree(d));
}

}  // namespace

int main(int argc, char** argv) {
  const std::string image_dir = e2e::ImageDir(argc, argv);
  Images images;
  images.fatbin_path = image_dir + "/" + e2e::kFatbinFile;
  images.ptx_path = image_dir + "/" + e2e::kPtxFile;
  images.fatbin = E2E_READ_FILE(images.fatbin_path);
  images.ptx = E2E_READ_FILE(images.ptx_path);
  images.ptx.push_back('\0');

  e2e::PrimaryContext primary = e2e::SetUpPrimaryContext();
  CUmodule module = nullptr;
  E2E_CHECK_CU(cuModuleLoadData(&module, images.fatbin.data()));
  CUstream stream = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  {
    VectorAddBuffers buffers;
    LaunchVectorAdd(GetFunction(module, e2e::kVectorAdd), buffers, nullptr);
    buffers.Check("kernelParams, default stream");
    buffers.Clear();
    LaunchVectorAdd(GetFunction(module, e2e::kVectorAdd), buffers, stream);
    E2E_CHECK_CU(cuStreamSynchronize(stream));
    buffers.Check("kernelParams, created stream");

    CheckGlobal(module);  // changes the main module's global
    CheckLoadPaths(images, buffers);
    CheckGlobalUnchanged(module);
    CheckExtraParams(module, buffers);
  }
  CheckStructByValue(module);
  CheckManyParams(module);
  CheckScale<float>(module, e2e::kScaleFloat, 1.5f);
  CheckScale<double>(module, e2e::kScaleDouble, -2.0);
  CheckLaunchGeometry(module, stream);
  CheckFunctionAttributes(module, stream);
  CheckExternCKernel(module, stream);

  E2E_CHECK_CU(cuStreamDestroy(stream));
  E2E_CHECK_CU(cuModuleUnload(module));
  E2E_CHECK_CU(cuCtxSynchronize());
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(primary.device));
  std::printf("launch: all checks passed\n");
  return 0;
}
