#include "driver_library.h"

#include <dlfcn.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>

namespace ferry::test {

DriverLibrary& DriverLibrary::Get() {
  static auto* library = new DriverLibrary;
  return *library;
}

DriverLibrary::DriverLibrary() {
  handle_ = dlopen(FERRY_TEST_CLIENT_LIBRARY, RTLD_NOW | RTLD_LOCAL);
  if (handle_ == nullptr) error_ = dlerror();
}

void* DriverLibrary::Find(const std::string& name) const {
  return handle_ == nullptr ? nullptr : dlsym(handle_, name.c_str());
}

std::string DriverLibrary::NameOf(const void* address) {
  Dl_info info{};
  if (address == nullptr || dladdr(address, &info) == 0 || info.dli_sname == nullptr ||
      info.dli_saddr != address) {
    return "";
  }
  return info.dli_sname;
}

CUresult DriverLibrary::GetProc(const std::string& name, int version, cuuint64_t flags, void** pfn,
                                CUdriverProcAddressQueryResult* status) const {
  using GetProcAddressV2 =
      CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
  auto get = Symbol<GetProcAddressV2>("cuGetProcAddress_v2");
  if (get == nullptr) return CUDA_ERROR_NOT_FOUND;
  return get(name.c_str(), pfn, version, flags, status);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<PfnTypedef> ToolkitPfnTypedefs() {
  std::vector<PfnTypedef> typedefs;
  const std::regex pfn(
      R"(typedef\s+CUresult\s*\(\s*CUDAAPI\s*\*\s*PFN_(cu\w+?)_v(\d+)(_ptds|_ptsz)?\s*\))");
  std::stringstream paths(FERRY_TEST_TYPEDEF_HEADERS);
  for (std::string path; std::getline(paths, path, ':');) {
    const std::string text = ReadFile(path);
    for (std::sregex_iterator it(text.begin(), text.end(), pfn), end; it != end; ++it) {
      typedefs.push_back({(*it)[1].str(), std::stoi((*it)[2].str()), (*it)[3].str()});
    }
  }
  return typedefs;
}

std::set<std::string> CudaHeaderFunctionNames() {
  const std::string text = ReadFile(FERRY_TEST_CUDA_HEADER);
  std::set<std::string> names;
  std::set<std::string> inline_helpers;  // header-only wrappers, not driver symbols
  const std::regex declaration(R"((static\s+inline\s+)?CUresult\s+(?:CUDAAPI\s+)?(cu\w+)\s*\()");
  for (std::sregex_iterator it(text.begin(), text.end(), declaration), end; it != end; ++it) {
    ((*it)[1].matched ? inline_helpers : names).insert((*it)[2].str());
  }
  // #define cuMemAlloc cuMemAlloc_v2, #define cuMemcpy __CUDA_API_PTDS(cuMemcpy):
  // a program compiled against cuda.h calls these names.
  const std::regex macro(
      R"(\n[ \t]*#define[ \t]+cu\w+[ \t]+(?:__CUDA_API_PT(DS|SZ)\((cu\w+)\)|(cu\w+))[ \t]*(?=\n))");
  for (std::sregex_iterator it(text.begin(), text.end(), macro), end; it != end; ++it) {
    const std::string target = (*it)[2].matched ? (*it)[2].str() : (*it)[3].str();
    names.insert(target);
    if ((*it)[1].matched) names.insert(target + ((*it)[1].str() == "DS" ? "_ptds" : "_ptsz"));
  }
  for (const std::string& helper : inline_helpers) names.erase(helper);
  return names;
}

std::map<std::string, char> ExportedFunctions(const std::string& library) {
  std::map<std::string, char> functions;
  const std::string command = "nm -D --defined-only " + library;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return functions;
  char line[512];
  while (std::fgets(line, sizeof(line), pipe) != nullptr) {
    std::istringstream fields(line);
    std::string address, type, name;
    if (fields >> address >> type >> name && (type == "T" || type == "W") &&
        name.rfind("cu", 0) == 0) {
      functions[name] = type[0];
    }
  }
  pclose(pipe);
  return functions;
}

std::set<std::string> StubLibraryExports() {
  std::set<std::string> names;
  for (const auto& [name, type] : ExportedFunctions(FERRY_TEST_STUB_LIBRARY)) names.insert(name);
  return names;
}

}  // namespace ferry::test
