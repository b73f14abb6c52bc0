// cuGetProcAddress / cuGetProcAddress_v2 of the built library: the same name
// resolves to the entry point of the ABI the caller's CUDA version expects,
// per-thread variants with the flag, before cuInit and with no server.
#include <gtest/gtest.h>

#include <string>

#include "driver_library.h"

namespace ferry::test {
namespace {

constexpr cuuint64_t kLegacy = CU_GET_PROC_ADDRESS_LEGACY_STREAM;
constexpr cuuint64_t kPerThread = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;

class ProcAddressTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NE(library_.handle(), nullptr) << library_.error(); }

  // The exported name `name` resolves to at `version` with `flags`.
  std::string Resolve(const std::string& name, int version, cuuint64_t flags = kLegacy) {
    void* function = nullptr;
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    const CUresult result = library_.GetProc(name, version, flags, &function, &status);
    if (result != CUDA_SUCCESS) return "error " + std::to_string(result);
    EXPECT_EQ(status, CU_GET_PROC_ADDRESS_SUCCESS);
    EXPECT_EQ(function, library_.Find(DriverLibrary::NameOf(function)));
    return DriverLibrary::NameOf(function);
  }

  const DriverLibrary& library_ = DriverLibrary::Get();
};

TEST_F(ProcAddressTest, VersionSelectsTheAbi) {
  EXPECT_EQ(Resolve("cuCtxSynchronize", 2000), "cuCtxSynchronize");
  EXPECT_EQ(Resolve("cuCtxSynchronize", 12090), "cuCtxSynchronize");
  EXPECT_EQ(Resolve("cuCtxSynchronize", 13000), "cuCtxSynchronize_v2");
  EXPECT_EQ(Resolve("cuCtxGetDevice", 12000), "cuCtxGetDevice");
  EXPECT_EQ(Resolve("cuCtxGetDevice", 13000), "cuCtxGetDevice_v2");
  EXPECT_EQ(Resolve("cuGetProcAddress", 11030), "cuGetProcAddress");
  EXPECT_EQ(Resolve("cuGetProcAddress", 11080), "cuGetProcAddress");
  EXPECT_EQ(Resolve("cuGetProcAddress", 12000), "cuGetProcAddress_v2");
  EXPECT_EQ(Resolve("cuMemAlloc", 2000), "cuMemAlloc");
  EXPECT_EQ(Resolve("cuMemAlloc", 3020), "cuMemAlloc_v2");
  EXPECT_EQ(Resolve("cuMemAlloc", 13000), "cuMemAlloc_v2");
  EXPECT_EQ(Resolve("cuCtxCreate", 11040), "cuCtxCreate_v3");
  EXPECT_EQ(Resolve("cuCtxCreate", 12050), "cuCtxCreate_v4");
  EXPECT_EQ(Resolve("cuStreamGetCaptureInfo", 10010), "cuStreamGetCaptureInfo");
  EXPECT_EQ(Resolve("cuStreamGetCaptureInfo", 11030), "cuStreamGetCaptureInfo_v2");
  EXPECT_EQ(Resolve("cuStreamGetCaptureInfo", 12030), "cuStreamGetCaptureInfo_v3");
  EXPECT_EQ(Resolve("cuMemcpyBatchAsync", 12080), "cuMemcpyBatchAsync");
  EXPECT_EQ(Resolve("cuMemcpyBatchAsync", 13000), "cuMemcpyBatchAsync_v2");
  EXPECT_EQ(Resolve("cuMemAdvise", 12020), "cuMemAdvise_v2");
  EXPECT_EQ(Resolve("cuProfilerStart", 4000), "cuProfilerStart");
}

TEST_F(ProcAddressTest, PerThreadFlagPicksThePerThreadExport) {
  EXPECT_EQ(Resolve("cuMemcpyHtoDAsync", 13000, kPerThread), "cuMemcpyHtoDAsync_v2_ptsz");
  EXPECT_EQ(Resolve("cuMemcpyHtoDAsync", 13000, kLegacy), "cuMemcpyHtoDAsync_v2");
  EXPECT_EQ(Resolve("cuMemcpyHtoDAsync", 13000, CU_GET_PROC_ADDRESS_DEFAULT),
            "cuMemcpyHtoDAsync_v2");
  EXPECT_EQ(Resolve("cuMemcpyHtoDAsync", 2000, kPerThread), "cuMemcpyHtoDAsync");
  // Per-thread variants appeared in CUDA 7.0: a program built for 6.5 gets
  // the legacy-stream export even when it asks.
  EXPECT_EQ(Resolve("cuMemcpyHtoDAsync", 6050, kPerThread), "cuMemcpyHtoDAsync_v2");
  EXPECT_EQ(Resolve("cuMemcpy", 13000, kPerThread), "cuMemcpy_ptds");
  EXPECT_EQ(Resolve("cuMemcpyHtoD", 13000, kPerThread), "cuMemcpyHtoD_v2_ptds");
  EXPECT_EQ(Resolve("cuLaunchKernel", 13000, kPerThread), "cuLaunchKernel_ptsz");
  EXPECT_EQ(Resolve("cuStreamGetCaptureInfo", 11030, kPerThread), "cuStreamGetCaptureInfo_v2_ptsz");
  EXPECT_EQ(Resolve("cuMemPrefetchAsync", 12020, kPerThread), "cuMemPrefetchAsync_v2_ptsz");
  // No per-thread variant: the flag changes nothing.
  EXPECT_EQ(Resolve("cuCtxSynchronize", 13000, kPerThread), "cuCtxSynchronize_v2");
}

TEST_F(ProcAddressTest, UnknownNamesAreNotFound) {
  for (const char* name : {"", "cuNoSuchFunction", "cuMemAlloc_v2", "cudaMalloc", "cuMemAllo"}) {
    SCOPED_TRACE(name);
    void* function = reinterpret_cast<void*>(1);
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SUCCESS;
    EXPECT_EQ(library_.GetProc(name, 13000, kLegacy, &function, &status), CUDA_ERROR_NOT_FOUND);
    EXPECT_EQ(status, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    EXPECT_EQ(function, nullptr);
  }
}

TEST_F(ProcAddressTest, TooOldVersionIsVersionNotSufficient) {
  void* function = reinterpret_cast<void*>(1);
  CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SUCCESS;
  EXPECT_EQ(library_.GetProc("cuGetProcAddress", 11020, kLegacy, &function, &status),
            CUDA_ERROR_NOT_FOUND);
  EXPECT_EQ(status, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
  EXPECT_EQ(function, nullptr);
  EXPECT_EQ(library_.GetProc("cuMemcpyBatchAsync", 12000, kPerThread, &function, &status),
            CUDA_ERROR_NOT_FOUND);
  EXPECT_EQ(status, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
}

TEST_F(ProcAddressTest, BadArguments) {
  void* function = nullptr;
  EXPECT_EQ(library_.GetProc("cuInit", 13000, kLegacy, nullptr, nullptr), CUDA_ERROR_INVALID_VALUE);
  using GetProcAddressV2 =
      CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
  auto get = library_.Symbol<GetProcAddressV2>("cuGetProcAddress_v2");
  ASSERT_NE(get, nullptr);
  EXPECT_EQ(get(nullptr, &function, 13000, 0, nullptr), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(get("cuInit", &function, 13000, 1u << 7, nullptr), CUDA_ERROR_INVALID_VALUE);
  // symbolStatus is optional.
  EXPECT_EQ(get("cuInit", &function, 13000, 0, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(function, library_.Find("cuInit"));
}

TEST_F(ProcAddressTest, LegacyEntryPointAndSelfResolution) {
  using GetProcAddressV1 = CUresult (*)(const char*, void**, int, cuuint64_t);
  auto get = library_.Symbol<GetProcAddressV1>("cuGetProcAddress");
  ASSERT_NE(get, nullptr);
  void* function = nullptr;
  ASSERT_EQ(get("cuMemFree", &function, 11040, kLegacy), CUDA_SUCCESS);
  EXPECT_EQ(function, library_.Find("cuMemFree_v2"));
  EXPECT_EQ(get("cuNoSuchFunction", &function, 11040, kLegacy), CUDA_ERROR_NOT_FOUND);
  EXPECT_EQ(Resolve("cuGetExportTable", 13000), "cuGetExportTable");
}

}  // namespace
}  // namespace ferry::test
