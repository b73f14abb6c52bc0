// Helpers for the end-to-end driver-API programs in this folder: check each
// CUresult and condition, print what passed, and stop with a message on the
// first failure (exit status 1). The programs are ordinary CUDA programs:
// they use only cuda.h and the C++ library, link against the toolkit's stub
// libcuda.so, and get ferry's libcuda.so.1 at run time from LD_LIBRARY_PATH.
//
// Thread-safety: every helper may be called from any thread (stdio locks);
// a failure on any thread ends the whole process.
#pragma once

#include <cuda.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "kernel_names.h"

namespace ferry::e2e {

// "CUDA_ERROR_..." for `result`, or "?" where the driver does not name it.
inline const char* ErrorName(CUresult result) {
  const char* name = nullptr;
  if (cuGetErrorName(result, &name) != CUDA_SUCCESS || name == nullptr) {
    return "?";
  }
  return name;
}

__attribute__((format(printf, 1, 2))) inline std::string Format(const char* format, ...) {
  va_list args;
  va_start(args, format);
  char buffer[1024];
  std::vsnprintf(buffer, sizeof(buffer), format, args);
  va_end(args);
  return buffer;
}

// Prints the failure and ends the process at once: other threads may still
// be running, so no destructors or atexit handlers run.
[[noreturn]] inline void FailAt(const char* file, int line, const std::string& what) {
  std::fflush(stdout);
  std::fprintf(stderr, "FAIL %s:%d: %s\n", file, line, what.c_str());
  std::fflush(stderr);
  std::_Exit(1);
}

__attribute__((format(printf, 1, 2))) inline void Ok(const char* format, ...) {
  va_list args;
  va_start(args, format);
  char buffer[1024];
  std::vsnprintf(buffer, sizeof(buffer), format, args);
  va_end(args);
  std::printf("ok: %s\n", buffer);
  std::fflush(stdout);
}

inline void CheckCu(CUresult result, const char* expr, const char* file, int line) {
  if (result != CUDA_SUCCESS) {
    FailAt(file, line, Format("%s returned %s (%d)", expr, ErrorName(result), result));
  }
}

inline void ExpectCu(CUresult expected, CUresult result, const char* expr, const char* file,
                     int line) {
  if (result != expected) {
    FailAt(file, line,
           Format("%s returned %s (%d), expected %s (%d)", expr, ErrorName(result), result,
                  ErrorName(expected), expected));
  }
  Ok("%s -> %s", expr, ErrorName(result));
}

// For a call whose error CUDA may report either at once or at the next call
// that waits (`sync`, e.g. cuCtxSynchronize): fails unless one of the two
// reports an error. Returns the error reported.
template <typename Sync>
CUresult ExpectErrorNowOrAtSync(CUresult now, const char* expr, Sync sync, const char* sync_expr,
                                const char* file, int line) {
  if (now != CUDA_SUCCESS) {
    Ok("%s -> %s (reported by the call)", expr, ErrorName(now));
    return now;
  }
  CUresult later = sync();
  if (later == CUDA_SUCCESS) {
    FailAt(file, line,
           Format("%s succeeded and so did the next %s; expected an error", expr, sync_expr));
  }
  Ok("%s -> CUDA_SUCCESS, then %s -> %s", expr, sync_expr, ErrorName(later));
  return later;
}

// Fails unless `n` bytes at `actual` equal those at `expected`; names the
// first byte that differs.
inline void CheckBytes(const void* actual, const void* expected, size_t n, const char* what,
                       const char* file, int line) {
  const auto* a = static_cast<const uint8_t*>(actual);
  const auto* e = static_cast<const uint8_t*>(expected);
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != e[i]) {
      FailAt(file, line,
             Format("%s: byte %zu of %zu is 0x%02x, expected 0x%02x", what, i, n, a[i], e[i]));
    }
  }
  Ok("%s (%zu bytes)", what, n);
}

// A byte pattern that differs for each seed and does not repeat every 256
// bytes, so shifted or truncated copies show.
inline void FillPattern(void* data, size_t n, uint32_t seed) {
  auto* bytes = static_cast<uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    bytes[i] = static_cast<uint8_t>(i * 131u + (i >> 9) + seed * 97u + 1u);
  }
}

inline std::vector<uint8_t> Pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> bytes(n);
  FillPattern(bytes.data(), n, seed);
  return bytes;
}

// The folder that holds the images built from kernels.cu: the program's
// first argument, or the build folder the program was compiled for.
inline std::string ImageDir(int argc, char** argv) {
  if (argc > 1) return argv[1];
#ifdef FERRY_E2E_IMAGE_DIR
  return FERRY_E2E_IMAGE_DIR;
#else
  return ".";
#endif
}

inline std::vector<char> ReadFileOrDie(const std::string& path, const char* file, int line) {
  std::ifstream in(path, std::ios::binary);
  if (!in) FailAt(file, line, Format("cannot open %s", path.c_str()));
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.empty()) FailAt(file, line, Format("%s is empty", path.c_str()));
  return bytes;
}

// True when the program runs through ferry (FERRY_SERVER is set). A few
// checks exist only there: ones the native driver answers by crashing
// (bogus handles) or cannot detect (kernels without a host implementation).
inline bool UsingFerry() {
  const char* server = std::getenv("FERRY_SERVER");
  return server != nullptr && server[0] != '\0';
}

}  // namespace ferry::e2e

// Fails unless `call` returns CUDA_SUCCESS.
#define E2E_CHECK_CU(call) ::ferry::e2e::CheckCu((call), #call, __FILE__, __LINE__)

// Fails unless `call` returns `expected`; prints the result when it does.
#define E2E_EXPECT_CU(expected, call) \
  ::ferry::e2e::ExpectCu((expected), (call), #call, __FILE__, __LINE__)

// Fails with the printf-style message unless `cond` holds.
#define E2E_CHECK(cond, ...)                                                                 \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      ::ferry::e2e::FailAt(__FILE__, __LINE__,                                               \
                           "check failed: " #cond ": " + ::ferry::e2e::Format(__VA_ARGS__)); \
    }                                                                                        \
  } while (0)

// Fails unless `call` or, when `call` succeeds, the next `sync_call` reports
// an error; evaluates to the error reported.
#define E2E_EXPECT_ERROR_NOW_OR_AT(call, sync_call)                                            \
  ::ferry::e2e::ExpectErrorNowOrAtSync((call), #call, [&] { return (sync_call); }, #sync_call, \
                                       __FILE__, __LINE__)

#define E2E_CHECK_BYTES(actual, expected, n, what) \
  ::ferry::e2e::CheckBytes((actual), (expected), (n), (what), __FILE__, __LINE__)

#define E2E_READ_FILE(path) ::ferry::e2e::ReadFileOrDie((path), __FILE__, __LINE__)

namespace ferry::e2e {

struct PrimaryContext {
  CUdevice device;
  CUcontext context;
};

// cuInit, then device 0's primary context retained and made current. The
// caller releases it with cuDevicePrimaryCtxRelease(device).
inline PrimaryContext SetUpPrimaryContext() {
  PrimaryContext primary{};
  E2E_CHECK_CU(cuInit(0));
  E2E_CHECK_CU(cuDeviceGet(&primary.device, 0));
  E2E_CHECK_CU(cuDevicePrimaryCtxRetain(&primary.context, primary.device));
  E2E_CHECK_CU(cuCtxSetCurrent(primary.context));
  return primary;
}

// The function `name` of `module`; fails unless the driver finds it.
inline CUfunction GetFunction(CUmodule module, const char* name) {
  CUfunction function = nullptr;
  E2E_CHECK_CU(cuModuleGetFunction(&function, module, name));
  E2E_CHECK(function != nullptr, "null function for %s", name);
  return function;
}

// Loads the fatbin built from kernels.cu (kFatbinFile in ImageDir) into the
// current context; the caller unloads it, or lets the process end do so.
inline CUmodule LoadFatbin(int argc, char** argv) {
  const std::string path = ImageDir(argc, argv) + "/" + kFatbinFile;
  CUmodule module = nullptr;
  E2E_CHECK_CU(cuModuleLoad(&module, path.c_str()));
  return module;
}

}  // namespace ferry::e2e
