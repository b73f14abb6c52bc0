// JIT linking through the driver API, in a runtime program (the runtime makes
// the context): two PTX files built with nvcc -rdc=true --ptx, link_kernel.ptx
// (rt_link_apply, which calls rt_link_op) and link_op.ptx (rt_link_op and
// rt_link_fill), are linked with cuLinkAddData and cuLinkAddFile, the result
// is loaded with cuModuleLoadData and kernels from both inputs run with the
// right values. The link's options behave as the driver's: the wall time and
// the log sizes are written back into the program's optionValues. Linking
// link_kernel.ptx alone fails at cuLinkComplete with an error log that names
// the missing rt_link_op; an input that is no PTX is refused at
// cuLinkAddData. link_counter.ptx's `.extern` rt_link_counter resolves
// through the link's global symbol table (CU_JIT_GLOBAL_SYMBOL_*), and
// fails to without it (its kernel is not launched: a host twin cannot see
// where the table put the counter).
//
// Usage: runtime_link LINK_KERNEL_PTX LINK_OP_PTX LINK_COUNTER_PTX
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "runtime_check.h"

namespace {

std::vector<char> ReadText(const char* path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::printf("FAILED: cannot read %s\n", path);
    std::exit(1);
  }
  std::vector<char> text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  text.push_back('\0');  // PTX for cuLinkAddData ends with its NUL
  return text;
}

// A link's options: both logs, the wall time, verbose logging, the
// context's target. The arrays live as long as the link, as CUDA requires
// when output options are used.
struct LinkOptions {
  static constexpr unsigned kLogBytes = 4096;
  char info[kLogBytes] = {};
  char error[kLogBytes] = {};
  CUjit_option options[7] = {CU_JIT_INFO_LOG_BUFFER,
                             CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
                             CU_JIT_ERROR_LOG_BUFFER,
                             CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
                             CU_JIT_WALL_TIME,
                             CU_JIT_LOG_VERBOSE,
                             CU_JIT_TARGET_FROM_CUCONTEXT};
  void* values[7] = {};
  LinkOptions() {
    values[0] = info;
    values[1] = reinterpret_cast<void*>(uintptr_t{kLogBytes});
    values[2] = error;
    values[3] = reinterpret_cast<void*>(uintptr_t{kLogBytes});
    values[4] = nullptr;  // the driver writes a float here
    values[5] = reinterpret_cast<void*>(uintptr_t{1});
    values[6] = nullptr;
  }
  unsigned Count() const { return 7; }
  // The output slots after a call.
  size_t ErrorLogBytes() const {
    return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(values[3]));
  }
  float WallMs() const {
    float ms = -1;
    std::memcpy(&ms, &values[4], sizeof(ms));
    return ms;
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::printf("usage: runtime_link LINK_KERNEL_PTX LINK_OP_PTX LINK_COUNTER_PTX\n");
    return 2;
  }
  RT_CHECK(cudaSetDevice(0));
  RT_CHECK(cudaFree(nullptr));  // the primary context, current
  std::vector<char> kernel_ptx = ReadText(argv[1]);

  // Two inputs, one by data and one by file; kernels of both run.
  LinkOptions good;
  CUlinkState link = nullptr;
  RT_CHECK_CU(cuLinkCreate(good.Count(), good.options, good.values, &link));
  RT_CHECK_CU(cuLinkAddData(link, CU_JIT_INPUT_PTX, kernel_ptx.data(), kernel_ptx.size(),
                            "link_kernel.ptx", 0, nullptr, nullptr));
  RT_CHECK_CU(cuLinkAddFile(link, CU_JIT_INPUT_PTX, argv[2], 0, nullptr, nullptr));
  void* cubin = nullptr;
  size_t cubin_bytes = 0;
  RT_CHECK_CU(cuLinkComplete(link, &cubin, &cubin_bytes));
  RT_EXPECT(cubin != nullptr && cubin_bytes > 0);
  RT_EXPECT(good.WallMs() >= 0.0f);  // written: it was a null pointer's bits
  RT_EXPECT(good.error[0] == '\0');
  CUmodule module = nullptr;
  RT_CHECK_CU(cuModuleLoadData(&module, cubin));
  // The image is the link's until cuLinkDestroy; the module keeps what it loaded.
  RT_CHECK_CU(cuLinkDestroy(link));
  CUfunction apply = nullptr, fill = nullptr;
  RT_CHECK_CU(cuModuleGetFunction(&apply, module, "rt_link_apply"));
  RT_CHECK_CU(cuModuleGetFunction(&fill, module, "rt_link_fill"));

  constexpr int kN = 1000;
  std::vector<float> x(kN);
  for (int i = 0; i < kN; ++i) x[i] = static_cast<float>(i) * 0.5f;
  CUdeviceptr d_x = 0, d_y = 0;
  RT_CHECK_CU(cuMemAlloc(&d_x, kN * sizeof(float)));
  RT_CHECK_CU(cuMemAlloc(&d_y, kN * sizeof(float)));
  RT_CHECK_CU(cuMemcpyHtoD(d_x, x.data(), kN * sizeof(float)));
  int n = kN;
  float a = 3.0f;
  void* apply_args[] = {&d_x, &d_y, &a, &n};
  RT_CHECK_CU(
      cuLaunchKernel(apply, (kN + 127) / 128, 1, 1, 128, 1, 1, 0, nullptr, apply_args, nullptr));
  std::vector<float> y(kN);
  RT_CHECK_CU(cuMemcpyDtoH(y.data(), d_y, kN * sizeof(float)));
  for (int i = 0; i < kN; ++i) RT_EXPECT(y[i] == x[i] * 3.0f + 1.0f);
  float v = 7.25f;
  void* fill_args[] = {&d_y, &v, &n};
  RT_CHECK_CU(
      cuLaunchKernel(fill, (kN + 127) / 128, 1, 1, 128, 1, 1, 0, nullptr, fill_args, nullptr));
  RT_CHECK_CU(cuMemcpyDtoH(y.data(), d_y, kN * sizeof(float)));
  for (int i = 0; i < kN; ++i) RT_EXPECT(y[i] == 7.25f);
  // Kernel parameter checks apply to linked modules as to any: a launch
  // without parameters for a kernel that takes them is refused.
  RT_EXPECT(cuLaunchKernel(apply, 1, 1, 1, 1, 1, 1, 0, nullptr, nullptr, nullptr) ==
            CUDA_ERROR_INVALID_VALUE);
  RT_CHECK_CU(cuModuleUnload(module));
  std::printf("two PTX inputs linked, kernels of both ran: ok\n");

  // An unresolved reference: link_kernel.ptx alone.
  LinkOptions missing;
  RT_CHECK_CU(cuLinkCreate(missing.Count(), missing.options, missing.values, &link));
  RT_CHECK_CU(cuLinkAddData(link, CU_JIT_INPUT_PTX, kernel_ptx.data(), kernel_ptx.size(),
                            "link_kernel.ptx", 0, nullptr, nullptr));
  const CUresult unresolved = cuLinkComplete(link, &cubin, &cubin_bytes);
  RT_EXPECT(unresolved != CUDA_SUCCESS);
  RT_EXPECT(std::strstr(missing.error, "rt_link_op") != nullptr);
  RT_EXPECT(missing.ErrorLogBytes() > 0 && missing.ErrorLogBytes() <= LinkOptions::kLogBytes);
  std::printf("error log: %s\n", missing.error);
  RT_CHECK_CU(cuLinkDestroy(link));
  std::printf("unresolved rt_link_op refused with its name in the error log: ok\n");

  // An input that is no PTX.
  LinkOptions bad;
  RT_CHECK_CU(cuLinkCreate(bad.Count(), bad.options, bad.values, &link));
  char not_ptx[] = "this is not PTX";
  RT_EXPECT(cuLinkAddData(link, CU_JIT_INPUT_PTX, not_ptx, sizeof(not_ptx), "not.ptx", 0, nullptr,
                          nullptr) != CUDA_SUCCESS);
  RT_EXPECT(bad.error[0] != '\0');
  RT_CHECK_CU(cuLinkDestroy(link));
  std::printf("bad input refused: ok\n");

  // The global symbol table gives link_counter.ptx's extern variable an
  // address of the program's.
  std::vector<char> counter_ptx = ReadText(argv[3]);
  const char* names[] = {"rt_link_counter"};
  void* addresses[] = {reinterpret_cast<void*>(d_y)};
  char table_error[1024] = {};
  CUjit_option table_options[] = {CU_JIT_GLOBAL_SYMBOL_NAMES, CU_JIT_GLOBAL_SYMBOL_ADDRESSES,
                                  CU_JIT_GLOBAL_SYMBOL_COUNT, CU_JIT_ERROR_LOG_BUFFER,
                                  CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
  void* table_values[] = {names, addresses, reinterpret_cast<void*>(uintptr_t{1}), table_error,
                          reinterpret_cast<void*>(uintptr_t{sizeof(table_error)})};
  RT_CHECK_CU(cuLinkCreate(5, table_options, table_values, &link));
  RT_CHECK_CU(cuLinkAddData(link, CU_JIT_INPUT_PTX, counter_ptx.data(), counter_ptx.size(),
                            "link_counter.ptx", 0, nullptr, nullptr));
  RT_CHECK_CU(cuLinkComplete(link, &cubin, &cubin_bytes));
  RT_EXPECT(cubin_bytes > 0 && table_error[0] == '\0');
  RT_CHECK_CU(cuLinkDestroy(link));
  LinkOptions no_table;
  RT_CHECK_CU(cuLinkCreate(no_table.Count(), no_table.options, no_table.values, &link));
  RT_CHECK_CU(cuLinkAddData(link, CU_JIT_INPUT_PTX, counter_ptx.data(), counter_ptx.size(),
                            "link_counter.ptx", 0, nullptr, nullptr));
  RT_EXPECT(cuLinkComplete(link, &cubin, &cubin_bytes) != CUDA_SUCCESS);
  RT_EXPECT(std::strstr(no_table.error, "rt_link_counter") != nullptr);
  RT_CHECK_CU(cuLinkDestroy(link));
  std::printf("global symbol table resolves rt_link_counter: ok\n");

  RT_CHECK_CU(cuMemFree(d_x));
  RT_CHECK_CU(cuMemFree(d_y));
  std::printf("all checks passed\n");
  return 0;
}
