// e2e program 9, library: the library and kernel API (cuLibrary*, cuKernel*)
// and occupancy queries, as the CUDA runtime and cuBLAS use them. Loads the
// images built from kernels.cu every way a library can be loaded (a raw
// fatbin, fatbin wrappers of versions 1 and 2, a raw ELF cubin, PTX text, and
// each file with cuLibraryLoadFromFile) and launches a CUkernel from each;
// enumerates kernels, names and parameter layouts; reads the library's global
// with its real size; launches the same CUkernel in the primary context and
// in created contexts (each with its own copy of the global), also on a
// stream of a context that is not current; sets per-device kernel attributes
// that also apply in contexts created afterwards; launches with
// cuLaunchKernelEx; asks the occupancy queries, one with a block-size
// callback; and unloads. Usage: library [IMAGE_DIR]. Exits 0 when every check
// passes.
#include <cuda.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "driver_check.h"
#include "kernel_types.h"

namespace {

namespace e2e = ::ferry::e2e;
using ::ferry::e2e::Ok;

// __fatBinC_Wrapper_t, as nvcc emits it for the CUDA runtime.
struct FatbinWrapper {
  int magic;
  int version;
  const void* data;
  void* filename_or_fatbins;
};
constexpr int kFatbinWrapperMagic = 0x466243B1;

CUkernel Kernel(CUlibrary library, const char* name) {
  CUkernel kernel = nullptr;
  E2E_CHECK_CU(cuLibraryGetKernel(&kernel, library, name));
  E2E_CHECK(kernel != nullptr, "null kernel for %s", name);
  return kernel;
}

// Runs vector_add from `kernel` (cast to CUfunction, as the runtime does) on
// `stream` in the context that is current, and checks the sums.
void RunVectorAdd(CUkernel kernel, CUstream stream, const char* how) {
  constexpr int kN = 777;
  float a[kN], b[kN], c[kN];
  for (int i = 0; i < kN; ++i) {
    a[i] = 1.5f * static_cast<float>(i);
    b[i] = static_cast<float>(2 * kN - i);
  }
  CUdeviceptr da, db, dc;
  E2E_CHECK_CU(cuMemAlloc(&da, sizeof(a)));
  E2E_CHECK_CU(cuMemAlloc(&db, sizeof(b)));
  E2E_CHECK_CU(cuMemAlloc(&dc, sizeof(c)));
  E2E_CHECK_CU(cuMemcpyHtoD(da, a, sizeof(a)));
  E2E_CHECK_CU(cuMemcpyHtoD(db, b, sizeof(b)));
  int n = kN;
  void* params[] = {&da, &db, &dc, &n};
  E2E_CHECK_CU(cuLaunchKernel(reinterpret_cast<CUfunction>(kernel), (kN + 127) / 128, 1, 1, 128, 1,
                              1, 0, stream, params, nullptr));
  E2E_CHECK_CU(cuStreamSynchronize(stream));
  E2E_CHECK_CU(cuMemcpyDtoH(c, dc, sizeof(c)));
  for (int i = 0; i < kN; ++i) {
    E2E_CHECK(c[i] == a[i] + b[i], "%s: c[%d] = %g, expected %g", how, i, c[i], a[i] + b[i]);
  }
  E2E_CHECK_CU(cuMemFree(da));
  E2E_CHECK_CU(cuMemFree(db));
  E2E_CHECK_CU(cuMemFree(dc));
  Ok("vector_add from a CUkernel (%s)", how);
}

// Checks that `library` holds exactly the kernels of kernels.cu, launches
// vector_add from it and unloads it.
void CheckAndUnload(CUlibrary library, const char* how) {
  unsigned count = 0;
  E2E_CHECK_CU(cuLibraryGetKernelCount(&count, library));
  constexpr unsigned kExpected = sizeof(e2e::kAllKernels) / sizeof(e2e::kAllKernels[0]);
  E2E_CHECK(count == kExpected, "%s: %u kernels, expected %u", how, count, kExpected);
  RunVectorAdd(Kernel(library, e2e::kVectorAdd), nullptr, how);
  E2E_CHECK_CU(cuLibraryUnload(library));
}

void LoadEveryWay(const std::string& dir) {
  const std::string fatbin_path = dir + "/" + e2e::kFatbinFile;
  const std::string ptx_path = dir + "/" + e2e::kPtxFile;
  const std::string cubin_path = dir + "/" + e2e::kCubinFile;
  const std::vector<char> fatbin = E2E_READ_FILE(fatbin_path);
  std::vector<char> ptx = E2E_READ_FILE(ptx_path);
  ptx.push_back('\0');
  const std::vector<char> cubin = E2E_READ_FILE(cubin_path);
  CUlibrary library = nullptr;

  E2E_CHECK_CU(
      cuLibraryLoadData(&library, fatbin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0));
  CheckAndUnload(library, "raw fatbin");
  FatbinWrapper v1{kFatbinWrapperMagic, 1, fatbin.data(), nullptr};
  E2E_CHECK_CU(cuLibraryLoadData(&library, &v1, nullptr, nullptr, 0, nullptr, nullptr, 0));
  CheckAndUnload(library, "fatbin wrapper v1");
  void* no_prelinked[] = {nullptr};
  FatbinWrapper v2{kFatbinWrapperMagic, 2, fatbin.data(), no_prelinked};
  E2E_CHECK_CU(cuLibraryLoadData(&library, &v2, nullptr, nullptr, 0, nullptr, nullptr, 0));
  CheckAndUnload(library, "fatbin wrapper v2");
  E2E_CHECK_CU(cuLibraryLoadData(&library, cubin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0));
  CheckAndUnload(library, "raw ELF cubin");
  E2E_CHECK_CU(cuLibraryLoadData(&library, ptx.data(), nullptr, nullptr, 0, nullptr, nullptr, 0));
  CheckAndUnload(library, "PTX text");
  CUlibraryOption preserved = CU_LIBRARY_BINARY_IS_PRESERVED;
  void* preserved_value = reinterpret_cast<void*>(1);
  for (const std::string& path : {fatbin_path, cubin_path, ptx_path}) {
    E2E_CHECK_CU(cuLibraryLoadFromFile(&library, path.c_str(), nullptr, nullptr, 0, &preserved,
                                       &preserved_value, 1));
    CheckAndUnload(library, ("cuLibraryLoadFromFile " + path).c_str());
  }
  E2E_EXPECT_CU(CUDA_ERROR_FILE_NOT_FOUND,
                cuLibraryLoadFromFile(&library, (dir + "/no-such-image").c_str(), nullptr, nullptr,
                                      0, nullptr, nullptr, 0));
}

void CheckQueries(CUlibrary library) {
  unsigned count = 0;
  E2E_CHECK_CU(cuLibraryGetKernelCount(&count, library));
  std::vector<CUkernel> kernels(count);
  E2E_CHECK_CU(cuLibraryEnumerateKernels(kernels.data(), count, library));
  std::set<std::string> names;
  for (CUkernel kernel : kernels) {
    const char* name = nullptr;
    E2E_CHECK_CU(cuKernelGetName(&name, kernel));
    names.insert(name);
    CUkernel again = Kernel(library, name);
    E2E_CHECK(again == kernel, "cuLibraryGetKernel(%s) differs from the enumerated handle", name);
    CUlibrary owner = nullptr;
    E2E_CHECK_CU(cuKernelGetLibrary(&owner, kernel));
    E2E_CHECK(owner == library, "cuKernelGetLibrary(%s) is another library", name);
  }
  for (const char* name : e2e::kAllKernels) {
    E2E_CHECK(names.count(name) == 1, "enumeration lacks %s", name);
  }
  Ok("%u kernels enumerated by name, each the same handle as cuLibraryGetKernel", count);
  CUkernel missing = nullptr;
  E2E_EXPECT_CU(CUDA_ERROR_NOT_FOUND, cuLibraryGetKernel(&missing, library, "no_such_kernel"));

  // many_params: char@0, short@2, int@4, long long@8, float@16, double@24,
  // const int*@32, E2eFloat3@40 (12), unsigned char@52, short@54,
  // unsigned long long@56, double*@64.
  const size_t offsets[12] = {0, 2, 4, 8, 16, 24, 32, 40, 52, 54, 56, 64};
  const size_t sizes[12] = {1, 2, 4, 8, 4, 8, 8, 12, 1, 2, 8, 8};
  CUkernel many = Kernel(library, e2e::kManyParams);
  for (size_t i = 0; i < 12; ++i) {
    size_t offset = 0, size = 0;
    E2E_CHECK_CU(cuKernelGetParamInfo(many, i, &offset, &size));
    E2E_CHECK(offset == offsets[i] && size == sizes[i], "param %zu at %zu size %zu", i, offset,
              size);
  }
  size_t offset = 0, size = 0;
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_VALUE, cuKernelGetParamInfo(many, 12, &offset, &size));
  Ok("cuKernelGetParamInfo: the twelve parameters of many_params");

  CUdeviceptr global = 0;
  size_t bytes = 0;
  E2E_CHECK_CU(cuLibraryGetGlobal(&global, &bytes, library, e2e::kGlobalName));
  E2E_CHECK(bytes == sizeof(e2e::kGlobalInitial), "global of %zu bytes", bytes);
  int values[4] = {};
  E2E_CHECK_CU(cuMemcpyDtoH(values, global, sizeof(values)));
  E2E_CHECK_BYTES(values, e2e::kGlobalInitial, sizeof(values),
                  "cuLibraryGetGlobal's initial values");
  E2E_EXPECT_CU(CUDA_ERROR_NOT_FOUND,
                cuLibraryGetGlobal(&global, &bytes, library, "no_such_global"));

  // The library's module in this context names the same objects.
  CUmodule module = nullptr;
  E2E_CHECK_CU(cuLibraryGetModule(&module, library));
  CUdeviceptr module_global = 0;
  E2E_CHECK_CU(cuModuleGetGlobal(&module_global, &bytes, module, e2e::kGlobalName));
  E2E_CHECK(module_global == global, "the module's global is elsewhere");
  CUfunction from_module = nullptr, from_kernel = nullptr;
  E2E_CHECK_CU(cuModuleGetFunction(&from_module, module, e2e::kVectorAdd));
  E2E_CHECK_CU(cuKernelGetFunction(&from_kernel, Kernel(library, e2e::kVectorAdd)));
  E2E_CHECK(from_module == from_kernel, "cuKernelGetFunction differs from cuModuleGetFunction");
  CUmodule owner = nullptr;
  E2E_CHECK_CU(cuFuncGetModule(&owner, from_kernel));
  E2E_CHECK(owner == module, "cuFuncGetModule is not the library's module");
  Ok("cuLibraryGetModule, cuKernelGetFunction and cuLibraryGetGlobal agree");
}

// The CUkernel is context-independent: it runs in every context, each with
// its own copy of the library's global.
void CheckContexts(CUlibrary library, e2e::PrimaryContext primary) {
  CUkernel vector_add = Kernel(library, e2e::kVectorAdd);
  RunVectorAdd(vector_add, nullptr, "primary context");
  CUdeviceptr primary_global = 0;
  size_t bytes = 0;
  E2E_CHECK_CU(cuLibraryGetGlobal(&primary_global, &bytes, library, e2e::kGlobalName));
  const int changed[4] = {-1, -2, -3, -4};
  E2E_CHECK_CU(cuMemcpyHtoD(primary_global, changed, sizeof(changed)));

  CUcontext created = nullptr;
  E2E_CHECK_CU(cuCtxCreate(&created, nullptr, 0, primary.device));
  RunVectorAdd(vector_add, nullptr, "created context");
  CUdeviceptr created_global = 0;
  E2E_CHECK_CU(cuLibraryGetGlobal(&created_global, &bytes, library, e2e::kGlobalName));
  E2E_CHECK(created_global != primary_global, "both contexts share one global");
  int values[4] = {};
  E2E_CHECK_CU(cuMemcpyDtoH(values, created_global, sizeof(values)));
  E2E_CHECK_BYTES(values, e2e::kGlobalInitial, sizeof(values),
                  "the created context's global has the image's values");
  CUfunction in_created = nullptr, in_primary = nullptr;
  E2E_CHECK_CU(cuKernelGetFunction(&in_created, vector_add));

  // A stream of the created context, used while the primary one is current:
  // the kernel runs in the stream's context. A blocking stream, so that the
  // launch is ordered after the copy below on the context's legacy stream.
  CUstream stream = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&stream, CU_STREAM_DEFAULT));
  E2E_CHECK_CU(cuCtxSetCurrent(primary.context));
  E2E_CHECK_CU(cuKernelGetFunction(&in_primary, vector_add));
  E2E_CHECK(in_primary != in_created, "one CUfunction for two contexts");
  E2E_CHECK_CU(cuMemcpyDtoH(values, primary_global, sizeof(values)));
  E2E_CHECK_BYTES(values, changed, sizeof(values), "the primary context's global kept its values");
  E2E_CHECK_CU(cuCtxSetCurrent(created));
  constexpr int kN = 256;
  unsigned host[kN];
  for (int i = 0; i < kN; ++i) host[i] = static_cast<unsigned>(3 * i);
  CUdeviceptr data = 0;
  E2E_CHECK_CU(cuMemAlloc(&data, sizeof(host)));
  E2E_CHECK_CU(cuMemcpyHtoD(data, host, sizeof(host)));
  E2E_CHECK_CU(cuCtxSetCurrent(primary.context));
  int n = kN;
  void* params[] = {&data, &n};
  E2E_CHECK_CU(cuLaunchKernel(reinterpret_cast<CUfunction>(Kernel(library, e2e::kIncrement)), 2, 1,
                              1, 128, 1, 1, 0, stream, params, nullptr));
  E2E_CHECK_CU(cuStreamSynchronize(stream));
  E2E_CHECK_CU(cuCtxSetCurrent(created));
  unsigned back[kN];
  E2E_CHECK_CU(cuMemcpyDtoH(back, data, sizeof(back)));
  for (int i = 0; i < kN; ++i) E2E_CHECK(back[i] == host[i] + 1, "back[%d] = %u", i, back[i]);
  Ok("a CUkernel launched on a stream of a context that is not current runs there");
  E2E_CHECK_CU(cuMemFree(data));
  E2E_CHECK_CU(cuStreamDestroy(stream));
  E2E_CHECK_CU(cuCtxDestroy(created));
  E2E_CHECK_CU(cuCtxSetCurrent(primary.context));
  RunVectorAdd(vector_add, nullptr, "primary context after the created one is gone");
}

// Launches launch_geometry (one block of 32) with `shared` bytes of dynamic
// shared memory in the current context and checks what it saw.
void RunGeometry(CUkernel kernel, unsigned shared, const char* how) {
  CUdeviceptr out = 0;
  E2E_CHECK_CU(cuMemAlloc(&out, 8 * sizeof(unsigned)));
  E2E_CHECK_CU(cuMemsetD8(out, 0, 8 * sizeof(unsigned)));
  void* params[] = {&out};
  E2E_CHECK_CU(cuLaunchKernel(reinterpret_cast<CUfunction>(kernel), 1, 1, 1, 32, 1, 1, shared,
                              nullptr, params, nullptr));
  unsigned got[8];
  E2E_CHECK_CU(cuMemcpyDtoH(got, out, sizeof(got)));
  E2E_CHECK(got[6] == shared && got[7] == 32, "%s: smem %u, threads %u", how, got[6], got[7]);
  E2E_CHECK_CU(cuMemFree(out));
  Ok("launch_geometry with %u bytes of dynamic shared memory (%s)", shared, how);
}

// A one-dimensional launch configuration: `grid` blocks of `block` threads
// with `shared_bytes` of dynamic shared memory, on the default stream, with
// no attributes.
CUlaunchConfig LineLaunch(unsigned grid, unsigned block, unsigned shared_bytes) {
  CUlaunchConfig config;
  std::memset(&config, 0, sizeof(config));
  config.gridDimX = grid;
  config.gridDimY = config.gridDimZ = 1;
  config.blockDimX = block;
  config.blockDimY = config.blockDimZ = 1;
  config.sharedMemBytes = shared_bytes;
  return config;
}

// Makes `*cluster` a cluster of `x` blocks and `*config`'s only attribute;
// `*cluster` must outlive the uses of `*config`.
void AddCluster(unsigned x, CUlaunchAttribute* cluster, CUlaunchConfig* config) {
  std::memset(cluster, 0, sizeof(*cluster));
  cluster->id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
  cluster->value.clusterDim.x = x;
  cluster->value.clusterDim.y = cluster->value.clusterDim.z = 1;
  config->attrs = cluster;
  config->numAttrs = 1;
}

void CheckAttributes(CUlibrary library, e2e::PrimaryContext primary) {
  CUkernel geometry = Kernel(library, e2e::kLaunchGeometry);
  int value = 0;
  E2E_CHECK_CU(cuKernelGetAttribute(&value, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, geometry,
                                    primary.device));
  E2E_CHECK(value >= 32, "max threads per block %d", value);
  const int big = 64 * 1024;
  E2E_CHECK_CU(cuKernelSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, big, geometry,
                                    primary.device));
  E2E_CHECK_CU(cuKernelGetAttribute(&value, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                    geometry, primary.device));
  E2E_CHECK(value == big, "max dynamic shared memory %d after setting %d", value, big);
  RunGeometry(geometry, big, "primary context");
  // A context created afterwards gets the kernel with the attribute set.
  CUcontext later = nullptr;
  E2E_CHECK_CU(cuCtxCreate(&later, nullptr, 0, primary.device));
  CUfunction function = nullptr;
  E2E_CHECK_CU(cuKernelGetFunction(&function, geometry));
  E2E_CHECK_CU(
      cuFuncGetAttribute(&value, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, function));
  E2E_CHECK(value == big, "in a later context: %d", value);
  RunGeometry(geometry, big, "context created after cuKernelSetAttribute");
  E2E_CHECK_CU(cuCtxDestroy(later));
  E2E_CHECK_CU(cuCtxSetCurrent(primary.context));
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_VALUE,
                cuKernelSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, -5, geometry,
                                     primary.device));
  E2E_CHECK_CU(cuKernelSetCacheConfig(geometry, CU_FUNC_CACHE_PREFER_SHARED, primary.device));
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_DEVICE,
                cuKernelGetAttribute(&value, CU_FUNC_ATTRIBUTE_NUM_REGS, geometry, 99));

  // cuLaunchKernelEx takes a CUkernel too.
  CUdeviceptr out = 0;
  E2E_CHECK_CU(cuMemAlloc(&out, 8 * sizeof(unsigned)));
  E2E_CHECK_CU(cuMemsetD8(out, 0, 8 * sizeof(unsigned)));
  CUlaunchConfig config = LineLaunch(4, 64, 512);
  CUlaunchAttribute cluster;
  AddCluster(2, &cluster, &config);
  void* params[] = {&out};
  E2E_CHECK_CU(cuLaunchKernelEx(&config, reinterpret_cast<CUfunction>(geometry), params, nullptr));
  unsigned got[8];
  E2E_CHECK_CU(cuMemcpyDtoH(got, out, sizeof(got)));
  E2E_CHECK(got[0] == 4 && got[3] == 64 && got[6] == 512 && got[7] == 256,
            "cuLaunchKernelEx saw grid %u block %u smem %u threads %u", got[0], got[3], got[6],
            got[7]);
  E2E_CHECK_CU(cuMemFree(out));
  Ok("cuLaunchKernelEx with a CUkernel and a cluster of 2");
}

int g_callback_calls = 0;
size_t SharedForBlockSize(int block_size) {
  ++g_callback_calls;
  return static_cast<size_t>(block_size) * 16;
}

void CheckOccupancy(CUlibrary library, e2e::PrimaryContext primary) {
  auto vector_add = reinterpret_cast<CUfunction>(Kernel(library, e2e::kVectorAdd));
  int sms = 0;
  E2E_CHECK_CU(
      cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, primary.device));
  int blocks = 0;
  E2E_CHECK_CU(cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, vector_add, 128, 0));
  E2E_CHECK(blocks >= 1, "%d blocks of 128", blocks);
  int with_shared = 0;
  E2E_CHECK_CU(cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
      &with_shared, vector_add, 128, 40 * 1024, CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE));
  E2E_CHECK(with_shared >= 1 && with_shared < blocks, "%d blocks with 40 KiB, %d without",
            with_shared, blocks);
  int min_grid = 0, block = 0;
  E2E_CHECK_CU(cuOccupancyMaxPotentialBlockSize(&min_grid, &block, vector_add, nullptr, 0, 0));
  E2E_CHECK(block >= 32 && block % 32 == 0 && min_grid >= sms && min_grid % sms == 0,
            "block %d grid %d", block, min_grid);
  int limited = 0, limited_grid = 0;
  E2E_CHECK_CU(cuOccupancyMaxPotentialBlockSize(&limited_grid, &limited, vector_add,
                                                &SharedForBlockSize, 0, 200));
  E2E_CHECK(limited > 0 && limited <= 200 && limited_grid % sms == 0 && g_callback_calls > 0,
            "block %d with a limit of 200, %d callback calls", limited, g_callback_calls);
  size_t available = 0;
  E2E_CHECK_CU(cuOccupancyAvailableDynamicSMemPerBlock(&available, vector_add, 2, 128));
  E2E_CHECK(available > 0, "no shared memory for 2 blocks");
  CUlaunchConfig config = LineLaunch(16, 128, 0);
  int cluster_size = 0;
  E2E_CHECK_CU(cuOccupancyMaxPotentialClusterSize(&cluster_size, vector_add, &config));
  E2E_CHECK(cluster_size >= 2, "largest cluster %d", cluster_size);
  CUlaunchAttribute cluster;
  AddCluster(2, &cluster, &config);
  int clusters = 0;
  E2E_CHECK_CU(cuOccupancyMaxActiveClusters(&clusters, vector_add, &config));
  E2E_CHECK(clusters >= 1, "%d active clusters of 2", clusters);
  Ok("occupancy: %d blocks of 128 per SM (%d with 40 KiB), best block %d (grid %d), %d with a "
     "callback and a limit of 200, %zu bytes for 2 blocks, clusters up to %d, %d of 2 at once",
     blocks, with_shared, block, min_grid, limited, available, cluster_size, clusters);
}

void CheckUnload(CUlibrary library) {
  CUkernel kernel = Kernel(library, e2e::kVectorAdd);
  E2E_CHECK_CU(cuLibraryUnload(library));
  unsigned count = 0;
  E2E_CHECK(cuLibraryGetKernelCount(&count, library) != CUDA_SUCCESS,
            "a query of an unloaded library succeeded");
  const char* name = nullptr;
  E2E_CHECK(cuKernelGetName(&name, kernel) != CUDA_SUCCESS, "a kernel outlived its library");
  Ok("an unloaded library and its kernels are gone");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = e2e::ImageDir(argc, argv);
  e2e::PrimaryContext primary = e2e::SetUpPrimaryContext();
  CUmoduleLoadingMode mode;
  E2E_CHECK_CU(cuModuleGetLoadingMode(&mode));
  Ok("module loading mode %s", mode == CU_MODULE_LAZY_LOADING ? "lazy" : "eager");

  LoadEveryWay(dir);
  const std::vector<char> fatbin = E2E_READ_FILE(dir + "/" + e2e::kFatbinFile);
  CUlibrary library = nullptr;
  E2E_CHECK_CU(
      cuLibraryLoadData(&library, fatbin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0));
  CheckQueries(library);
  CheckContexts(library, primary);
  CheckAttributes(library, primary);
  CheckOccupancy(library, primary);
  CheckUnload(library);
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(primary.device));
  std::printf("all checks passed\n");
  return 0;
}
