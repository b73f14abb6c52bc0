// Checks the e2e kernels' pieces that need no server: the names in
// kernel_names.h are the .entry names nvcc put in the PTX image, the fatbin
// starts with the fatbin magic, the host-kernel plugin exports
// "ferry_host_" + name for every kernel except the deliberately missing one,
// and a few host implementations compute what the programs expect when
// called directly the way the host backend calls them.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "kernel_names.h"
#include "kernel_types.h"
#include "server/backend/host/ferry_host_kernel.h"
#include "test/support/child_process.h"

namespace ferry::e2e {
namespace {

using test::ReadWholeFile;

std::string ImagePath(const char* file) { return std::string(FERRY_E2E_IMAGE_DIR) + "/" + file; }

TEST(E2eImagesTest, PtxEntriesAreTheNamedKernels) {
  const std::string ptx = ReadWholeFile(ImagePath(kPtxFile));
  ASSERT_FALSE(ptx.empty());
  std::set<std::string> entries;
  const std::regex entry(R"(\.entry\s+([A-Za-z_$][A-Za-z0-9_$]*)\s*\()");
  for (auto it = std::sregex_iterator(ptx.begin(), ptx.end(), entry); it != std::sregex_iterator();
       ++it) {
    entries.insert((*it)[1].str());
  }
  const std::set<std::string> named(std::begin(kAllKernels), std::end(kAllKernels));
  EXPECT_EQ(entries, named);
  EXPECT_NE(ptx.find(std::string(".global .align 4 .b8 ") + kGlobalName), std::string::npos);
}

TEST(E2eImagesTest, FatbinHasTheMagic) {
  const std::string fatbin = ReadWholeFile(ImagePath(kFatbinFile));
  ASSERT_GE(fatbin.size(), 16u);
  uint32_t magic = 0;
  std::memcpy(&magic, fatbin.data(), 4);
  EXPECT_EQ(magic, 0xBA55ED50u);
}

class HostKernelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    handle_ = dlopen(FERRY_E2E_HOST_KERNELS, RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(handle_, nullptr) << dlerror();
  }
  void TearDown() override {
    if (handle_ != nullptr) dlclose(handle_);
  }

  ferry_host_kernel_fn Find(const char* kernel) {
    return reinterpret_cast<ferry_host_kernel_fn>(
        dlsym(handle_, (std::string(FERRY_HOST_KERNEL_PREFIX) + kernel).c_str()));
  }

  void* handle_ = nullptr;
};

TEST_F(HostKernelsTest, ExportsEveryKernelButTheMissingOne) {
  for (const char* kernel : kAllKernels) {
    if (std::strcmp(kernel, kMissingHostKernel) == 0) {
      EXPECT_EQ(Find(kernel), nullptr) << kernel << " must stay unimplemented";
    } else {
      EXPECT_NE(Find(kernel), nullptr) << "no host implementation of " << kernel;
    }
  }
}

TEST_F(HostKernelsTest, VectorAddCoversTheGridAndStopsAtN) {
  ferry_host_kernel_fn vector_add = Find(kVectorAdd);
  ASSERT_NE(vector_add, nullptr);
  std::vector<float> a(1024), b(1024), c(1024, -1.0f);
  for (int i = 0; i < 1024; ++i) {
    a[i] = static_cast<float>(i);
    b[i] = 0.5f;
  }
  const float* a_ptr = a.data();
  const float* b_ptr = b.data();
  float* c_ptr = c.data();
  int n = 1000;
  void* params[] = {&a_ptr, &b_ptr, &c_ptr, &n};
  const ferry_launch launch = {{4, 1, 1}, {256, 1, 1}, 0, nullptr, nullptr};
  vector_add(&launch, params);
  for (int i = 0; i < 1024; ++i) {
    ASSERT_EQ(c[i], i < n ? a[i] + b[i] : -1.0f) << "element " << i;
  }
}

TEST_F(HostKernelsTest, ManyParamsReadsEachParameter) {
  ferry_host_kernel_fn many = Find(kManyParams);
  ASSERT_NE(many, nullptr);
  ManyParamsArgs args;
  const int* g = &args.g_value;
  double out[kManyParamsOutputs] = {};
  double* out_ptr = out;
  void* params[] = {&args.a, &args.b, &args.c, &args.d, &args.e, &args.f,
                    &g,      &args.h, &args.i, &args.k, &args.l, &out_ptr};
  const ferry_launch launch = {{1, 1, 1}, {1, 1, 1}, 0, nullptr, nullptr};
  many(&launch, params);
  double expected[kManyParamsOutputs - 1];
  args.Expected(expected);
  double sum = 0;
  for (int j = 0; j < kManyParamsOutputs - 1; ++j) {
    EXPECT_EQ(out[j], expected[j]) << "parameter " << j;
    sum += expected[j];
  }
  EXPECT_EQ(out[kManyParamsOutputs - 1], sum);
}

TEST_F(HostKernelsTest, LaunchGeometryReportsTheLaunch) {
  ferry_host_kernel_fn geometry = Find(kLaunchGeometry);
  ASSERT_NE(geometry, nullptr);
  unsigned out[8] = {};
  unsigned* out_ptr = out;
  void* params[] = {&out_ptr};
  const ferry_launch launch = {{3, 2, 2}, {4, 2, 3}, 256, nullptr, nullptr};
  geometry(&launch, params);
  const unsigned expected[8] = {3, 2, 2, 4, 2, 3, 256, 288};
  EXPECT_EQ(std::memcmp(out, expected, sizeof(out)), 0);
}

}  // namespace
}  // namespace ferry::e2e
