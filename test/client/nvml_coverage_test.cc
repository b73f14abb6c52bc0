// Coverage of NVML (client/nvml, the same discipline as the driver's
// coverage_test.cc): every function NVIDIA's nvml.h declares is exported by
// ferry's libnvidia-ml.so.1 and nothing else is; each is either implemented
// (a strong definition) or listed with a reason in
// client/nvml/unsupported_functions.txt, and then returns
// NVML_ERROR_NOT_SUPPORTED; the list names nothing implemented or unknown.
// The library is opened as nvidia-ml-py and PyTorch open it (dlopen,
// RTLD_LOCAL) in a process without ferry's driver: nvmlInit then refuses.
#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace ferry::test {
namespace {

constexpr int kNvmlSuccess = 0;               // NVML_SUCCESS
constexpr int kNvmlErrorUninitialized = 1;    // NVML_ERROR_UNINITIALIZED
constexpr int kNvmlErrorNotSupported = 3;     // NVML_ERROR_NOT_SUPPORTED
constexpr int kNvmlErrorDriverNotLoaded = 9;  // NVML_ERROR_DRIVER_NOT_LOADED

void* Library() {
  static void* handle = dlopen(FERRY_TEST_NVML_LIBRARY, RTLD_NOW | RTLD_LOCAL);
  return handle;
}

// The functions nvml.h declares (generated from it at build time).
std::set<std::string> HeaderFunctions() {
  std::set<std::string> names;
  std::ifstream in(FERRY_TEST_NVML_SYMBOLS);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) names.insert(line);
  }
  return names;
}

// Defined dynamic symbols of the library: name -> 'T' (strong) or 'W' (weak:
// a generated NOT_SUPPORTED stub), and any other kind as its letter.
std::map<std::string, char> Exports() {
  std::map<std::string, char> exports;
  FILE* pipe = popen("nm -D --defined-only " FERRY_TEST_NVML_LIBRARY, "r");
  if (pipe == nullptr) return exports;
  char line[512];
  while (std::fgets(line, sizeof(line), pipe) != nullptr) {
    std::istringstream fields(line);
    std::string address, type, name;
    if (fields >> address >> type >> name) exports[name] = type[0];
  }
  pclose(pipe);
  return exports;
}

std::map<std::string, std::string> UnsupportedList() {
  std::map<std::string, std::string> reasons;
  std::ifstream in(FERRY_TEST_NVML_UNSUPPORTED_LIST);
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string name, reason;
    if (!(fields >> name) || name[0] == '#') continue;
    std::getline(fields >> std::ws, reason);
    reasons[name] = reason;
  }
  return reasons;
}

std::string Names(const std::vector<std::string>& names) {
  std::string text;
  for (size_t i = 0; i < names.size() && i < 20; ++i) text += " " + names[i];
  if (names.size() > 20) text += " ...";
  return text;
}

TEST(NvmlCoverageTest, EveryHeaderFunctionIsExportedAndNothingElse) {
  ASSERT_NE(Library(), nullptr) << dlerror();
  const std::set<std::string> names = HeaderFunctions();
  ASSERT_GT(names.size(), 400u) << FERRY_TEST_NVML_SYMBOLS << " lists too little";
  std::vector<std::string> missing, extra;
  for (const std::string& name : names) {
    if (dlsym(Library(), name.c_str()) == nullptr) missing.push_back(name);
  }
  for (const auto& [name, type] : Exports()) {
    if (names.count(name) == 0) extra.push_back(name);
  }
  EXPECT_TRUE(missing.empty()) << "nvml.h functions not exported:" << Names(missing);
  EXPECT_TRUE(extra.empty()) << "exported, not in nvml.h:" << Names(extra);
}

TEST(NvmlCoverageTest, EveryFunctionIsImplementedOrUnsupportedWithAReason) {
  const std::map<std::string, char> exports = Exports();
  const std::map<std::string, std::string> unsupported = UnsupportedList();
  ASSERT_GT(unsupported.size(), 0u) << "cannot read " << FERRY_TEST_NVML_UNSUPPORTED_LIST;
  std::vector<std::string> unaccounted, without_reason, listed_but_implemented;
  int implemented = 0;
  for (const std::string& name : HeaderFunctions()) {
    auto exported = exports.find(name);
    const bool strong = exported != exports.end() && exported->second == 'T';
    auto listed = unsupported.find(name);
    if (strong) {
      ++implemented;
      if (listed != unsupported.end()) listed_but_implemented.push_back(name);
    } else if (listed == unsupported.end()) {
      unaccounted.push_back(name);
    } else if (listed->second.size() < 10) {
      without_reason.push_back(name);
    }
  }
  EXPECT_TRUE(unaccounted.empty()) << "neither implemented nor listed in "
                                   << FERRY_TEST_NVML_UNSUPPORTED_LIST << ":" << Names(unaccounted);
  EXPECT_TRUE(without_reason.empty()) << "listed without a real reason:" << Names(without_reason);
  EXPECT_TRUE(listed_but_implemented.empty())
      << "implemented now; delete their lines:" << Names(listed_but_implemented);
  EXPECT_GE(implemented, 30) << "implemented NVML functions";
  std::printf("%d NVML functions implemented, %zu deliberately unsupported\n", implemented,
              unsupported.size());
}

// Each listed function really refuses (the generated stubs take no
// arguments, so calling them without any is safe). Their one-time log lines
// go to /dev/null.
TEST(NvmlCoverageTest, UnsupportedFunctionsReturnNotSupported) {
  ASSERT_NE(Library(), nullptr) << dlerror();
  const std::map<std::string, char> exports = Exports();
  const int saved = dup(2);
  const int null = open("/dev/null", O_WRONLY);
  ASSERT_GE(saved, 0);
  ASSERT_GE(null, 0);
  dup2(null, 2);
  std::vector<std::string> wrong;
  int called = 0;
  for (const auto& [name, reason] : UnsupportedList()) {
    auto kind = exports.find(name);
    if (kind == exports.end() || kind->second != 'W') continue;
    auto stub = reinterpret_cast<int (*)()>(dlsym(Library(), name.c_str()));
    ++called;
    if (stub == nullptr || stub() != kNvmlErrorNotSupported) wrong.push_back(name);
  }
  dup2(saved, 2);
  close(saved);
  close(null);
  EXPECT_GT(called, 300);
  EXPECT_TRUE(wrong.empty()) << "do not return NVML_ERROR_NOT_SUPPORTED:" << Names(wrong);
}

// No ferry driver in this process: nothing to answer from, and nothing is
// borrowed or connected to.
TEST(NvmlCoverageTest, WithoutTheDriversSessionInitRefuses) {
  ASSERT_NE(Library(), nullptr) << dlerror();
  auto init = reinterpret_cast<int (*)()>(dlsym(Library(), "nvmlInit_v2"));
  auto count = reinterpret_cast<int (*)(unsigned*)>(dlsym(Library(), "nvmlDeviceGetCount_v2"));
  auto error_string = reinterpret_cast<const char* (*)(int)>(dlsym(Library(), "nvmlErrorString"));
  ASSERT_TRUE(init != nullptr && count != nullptr && error_string != nullptr);
  ASSERT_EQ(dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD), nullptr) << "a driver is loaded";
  EXPECT_EQ(init(), kNvmlErrorDriverNotLoaded);
  unsigned devices = 0;
  EXPECT_EQ(count(&devices), kNvmlErrorUninitialized);
  for (int code = kNvmlSuccess; code < 1000; ++code) EXPECT_NE(error_string(code), nullptr);
}

}  // namespace
}  // namespace ferry::test
