// Helpers for the host implementations of test kernels (the --host-kernels
// plugins of test/e2e, test/e2e_runtime and test/server/backend/host), which
// follow server/backend/host/ferry_host_kernel.h: params[i] points at the
// bytes of parameter i, and one call emulates the whole grid.
//
// Header only: the plugins are MODULE libraries that take the include
// folder of ferry_test_support and link nothing of it.
//
// Thread-safety: the backend may call kernels from several stream threads at
// once; these helpers keep no state.
#pragma once

#include <cstring>

#include "server/backend/host/ferry_host_kernel.h"

namespace ferry::test {

// Parameter i of a launch, read as T (memcpy: the bytes may be unaligned).
template <typename T>
T Param(void** params, int i) {
  T value;
  std::memcpy(&value, params[i], sizeof(T));
  return value;
}

inline unsigned long long BlockCount(const ferry_launch* launch) {
  return 1ull * launch->grid[0] * launch->grid[1] * launch->grid[2];
}

inline unsigned long long BlockSize(const ferry_launch* launch) {
  return 1ull * launch->block[0] * launch->block[1] * launch->block[2];
}

// Every thread of the launch, all dimensions.
inline unsigned long long ThreadCount(const ferry_launch* launch) {
  return BlockCount(launch) * BlockSize(launch);
}

// Calls body(i) for each linear thread index i = blockIdx.x * blockDim.x +
// threadIdx.x of a one-dimensional launch.
template <typename Body>
void ForEachThreadX(const ferry_launch* launch, Body body) {
  const long long total = 1ll * launch->grid[0] * launch->block[0];
  for (long long i = 0; i < total; ++i) body(i);
}

}  // namespace ferry::test

// Defines the exported host implementation of kernel `mangled` (its mangled
// name), found by the backend as "ferry_host_" + that name.
#define FERRY_TEST_HOST_KERNEL(mangled)                                        \
  extern "C" __attribute__((visibility("default"))) void ferry_host_##mangled( \
      const ferry_launch* launch, void** params)
