// Coverage of the driver API (README.md invariant 1): every function
// cuda.h declares, every name its version macros expand to (_v2, _ptds,
// _ptsz) and every symbol of the toolkit's stub libcuda.so is exported by
// ferry's libcuda.so.1; each is either implemented by ferry (a strong
// definition: forwarded to ferryd or answered locally) or listed with a
// reason in client/unsupported_functions.txt (and then answers
// CUDA_ERROR_NOT_SUPPORTED); and every PFN typedef of cudaTypedefs.h resolves
// through cuGetProcAddress_v2, without a server, to an export of the matching
// kind.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "driver_library.h"

namespace ferry::test {
namespace {

bool EndsWith(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
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
  EXPECT_TRUE(missing.empty()) << missing.size()
                               << " cuda.h functions not exported, first: " << missing.front();
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
  EXPECT_TRUE(missing.empty()) << missing.size()
                               << " stub library symbols not exported, first: " << missing.front();
}

// client/unsupported_functions.txt: symbol -> reason.
std::map<std::string, std::string> UnsupportedList() {
  std::map<std::string, std::string> reasons;
  std::ifstream in(FERRY_TEST_UNSUPPORTED_LIST);
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string name, reason;
    if (!(fields >> name) || name[0] == '#') continue;
    std::getline(fields >> std::ws, reason);
    reasons[name] = reason;
  }
  return reasons;
}

// Joins up to 20 names for a failure message.
std::string Names(const std::vector<std::string>& names) {
  std::string text;
  for (size_t i = 0; i < names.size() && i < 20; ++i) text += " " + names[i];
  if (names.size() > 20) text += " ...";
  return text;
}

TEST(CoverageTest, EveryDriverFunctionIsImplementedOrUnsupportedWithAReason) {
  const std::map<std::string, char> exported = ExportedFunctions(FERRY_TEST_CLIENT_LIBRARY);
  ASSERT_GT(exported.size(), 600u) << "nm -D " << FERRY_TEST_CLIENT_LIBRARY << " listed too little";
  const std::map<std::string, std::string> unsupported = UnsupportedList();
  ASSERT_GT(unsupported.size(), 0u) << "cannot read " << FERRY_TEST_UNSUPPORTED_LIST;
  std::set<std::string> names = StubLibraryExports();
  for (const std::string& name : CudaHeaderFunctionNames()) names.insert(name);
  std::vector<std::string> unaccounted, without_reason;
  int implemented = 0;
  for (const std::string& name : names) {
    auto it = exported.find(name);
    if (it != exported.end() && it->second == 'T') {
      ++implemented;
      continue;
    }
    auto listed = unsupported.find(name);
    if (listed == unsupported.end()) {
      unaccounted.push_back(name);
    } else if (listed->second.size() < 10) {
      without_reason.push_back(name);
    }
  }
  EXPECT_TRUE(unaccounted.empty())
      << unaccounted.size() << " driver functions are neither implemented nor listed in "
      << FERRY_TEST_UNSUPPORTED_LIST << " with a reason:" << Names(unaccounted);
  EXPECT_TRUE(without_reason.empty()) << "listed without a real reason:" << Names(without_reason);
  EXPECT_GT(implemented, 150) << "implemented driver functions";
  std::printf("%d driver functions implemented, %zu deliberately unsupported, of %zu\n",
              implemented, unsupported.size(), names.size());
}

TEST(CoverageTest, UnsupportedListNamesOnlyUnimplementedDriverFunctions) {
  const std::map<std::string, char> exported = ExportedFunctions(FERRY_TEST_CLIENT_LIBRARY);
  std::set<std::string> names = StubLibraryExports();
  for (const std::string& name : CudaHeaderFunctionNames()) names.insert(name);
  std::vector<std::string> implemented, unknown;
  for (const auto& [name, reason] : UnsupportedList()) {
    if (names.count(name) == 0) unknown.push_back(name);
    auto it = exported.find(name);
    if (it != exported.end() && it->second == 'T') implemented.push_back(name);
  }
  EXPECT_TRUE(implemented.empty()) << "implemented now; delete their lines from "
                                   << FERRY_TEST_UNSUPPORTED_LIST << ":" << Names(implemented);
  EXPECT_TRUE(unknown.empty()) << "not driver functions:" << Names(unknown);
}

// Each listed function really refuses. Only the generated stubs are called
// (they take no arguments, so calling them without any is safe; a listed
// function that ferry implements is reported by the test above instead).
// Their one-time log lines go to /dev/null.
TEST(CoverageTest, UnsupportedFunctionsReturnNotSupported) {
  const DriverLibrary& library = DriverLibrary::Get();
  ASSERT_NE(library.handle(), nullptr) << library.error();
  const std::map<std::string, char> exported = ExportedFunctions(FERRY_TEST_CLIENT_LIBRARY);
  const int saved = dup(2);
  const int null = open("/dev/null", O_WRONLY);
  ASSERT_GE(saved, 0);
  ASSERT_GE(null, 0);
  dup2(null, 2);
  std::vector<std::string> wrong;
  for (const auto& [name, reason] : UnsupportedList()) {
    auto kind = exported.find(name);
    if (kind == exported.end() || kind->second != 'W') continue;
    auto stub = library.Symbol<int (*)()>(name);
    if (stub == nullptr || stub() != CUDA_ERROR_NOT_SUPPORTED) wrong.push_back(name);
  }
  dup2(saved, 2);
  close(saved);
  close(null);
  EXPECT_TRUE(wrong.empty()) << "listed but not answering CUDA_ERROR_NOT_SUPPORTED:"
                             << Names(wrong);
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
    EXPECT_EQ(distinct.size(), versions.size())
        << name << ": two ABI versions share an entry point";
  }
}

}  // namespace
}  // namespace ferry::test
