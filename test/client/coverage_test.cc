// Coverage of the driver API (STYLE 4): every function cuda.h declares, every
// name its version macros expand to (_v2, _ptds, _ptsz) and every symbol of
// the toolkit's stub libcuda.so is exported by ferry's libcuda.so.1, and
// every PFN typedef of cudaTypedefs.h resolves through cuGetProcAddress_v2,
// without a server, to an export of the matching kind.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "driver_library.h"

namespace ferry::test {
namespace {

bool EndsWith(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

TEST(CoverageTest, LibraryOpensWithoutServer) {
  ASSERT_NE(DriverLibrary::Get().handle(), nullptr) << DriverLibrary::Get().error();
}

TEST(CoverageTest, EveryCudaHeaderFunctionIsExported) {
  const DriverLibrary& library = DriverLibrary::Get();
  ASSERT_NE(library.handle(), nullptr) << library.error();
  const std::set<std::string> names = CudaHeaderFunctionNames();
  ASSERT_GT(names.size(), 500u) << "cuda.h parsed badly";
  std::vector<std::string> missing;
  for (const std::string& name : names) {
    if (library.Find(name) == nullptr) missing.push_back(name);
  }
  EXPECT_TRUE(missing.empty()) << missing.size() << " cuda.h functions not exported, first: "
                               << missing.front();
}

TEST(CoverageTest, EveryStubLibrarySymbolIsExported) {
  const DriverLibrary& library = DriverLibrary::Get();
  ASSERT_NE(library.handle(), nullptr) << library.error();
  const std::set<std::string> names = StubLibraryExports();
  ASSERT_GT(names.size(), 600u) << "nm -D " << FERRY_TEST_STUB_LIBRARY << " listed too little";
  std::vector<std::string> missing;
  for (const std::string& name : names) {
    if (library.Find(name) == nullptr) missing.push_back(name);
  }
  EXPECT_TRUE(missing.empty()) << missing.size() << " stub library symbols not exported, first: "
                               << missing.front();
}

TEST(CoverageTest, EveryPfnTypedefResolves) {
  const DriverLibrary& library = DriverLibrary::Get();
  ASSERT_NE(library.handle(), nullptr) << library.error();
  const std::vector<PfnTypedef> typedefs = ToolkitPfnTypedefs();
  ASSERT_GT(typedefs.size(), 600u) << "cudaTypedefs.h parsed badly";
  // name -> version -> the export it resolved to (plain typedefs only).
  std::map<std::string, std::map<int, std::string>> generations;
  for (const PfnTypedef& pfn : typedefs) {
    SCOPED_TRACE("PFN_" + pfn.name + "_v" + std::to_string(pfn.version) + pfn.suffix);
    const cuuint64_t flags = pfn.suffix.empty() ? CU_GET_PROC_ADDRESS_LEGACY_STREAM
                                                : CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
    void* function = nullptr;
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    ASSERT_EQ(library.GetProc(pfn.name, pfn.version, flags, &function, &status), CUDA_SUCCESS);
    EXPECT_EQ(status, CU_GET_PROC_ADDRESS_SUCCESS);
    ASSERT_NE(function, nullptr);
    const std::string exported = DriverLibrary::NameOf(function);
    ASSERT_FALSE(exported.empty()) << "resolves to an address that is not an exported function";
    // The export is a version of this name, and per-thread exactly when asked.
    EXPECT_EQ(exported.rfind(pfn.name, 0), 0u) << exported;
    if (pfn.suffix.empty()) {
      EXPECT_FALSE(EndsWith(exported, "_ptds") || EndsWith(exported, "_ptsz")) << exported;
      generations[pfn.name][pfn.version] = exported;
    } else {
      EXPECT_TRUE(EndsWith(exported, pfn.suffix)) << exported;
    }
  }
  // Each ABI generation of a name is a different entry point.
  for (const auto& [name, versions] : generations) {
    std::set<std::string> distinct;
    for (const auto& [version, exported] : versions) distinct.insert(exported);
    EXPECT_EQ(distinct.size(), versions.size()) << name << ": two ABI versions share an entry point";
  }
}

}  // namespace
}  // namespace ferry::test
