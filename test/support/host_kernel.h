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

// --- kernels that test/e2e and test/e2e_runtime both define ------------------
// The two suites give these kernels their own names and their own by-value
// types (the same layouts); their host implementations call these.

// (const float* a, const float* b, float* c, int n): c[i] = a[i] + b[i].
inline void VectorAddKernel(const ferry_launch* launch, void** params) {
  const auto* a = Param<const float*>(params, 0);
  const auto* b = Param<const float*>(params, 1);
  auto* c = Param<float*>(params, 2);
  const int n = Param<int>(params, 3);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) c[i] = a[i] + b[i];
  });
}

// (char tag, Padded p, long long* out), Padded = {char c; double d; int i;}:
// out[0..3] = tag, p.c, p.d (truncated), p.i, when any thread runs.
template <typename Padded>
void PaddedKernel(const ferry_launch* launch, void** params) {
  if (BlockCount(launch) == 0 || BlockSize(launch) == 0) return;
  const Padded p = Param<Padded>(params, 1);
  auto* out = Param<long long*>(params, 2);
  out[0] = Param<char>(params, 0);
  out[1] = p.c;
  out[2] = static_cast<long long>(p.d);
  out[3] = p.i;
}

// (char a, short b, int c, long long d, float e, double f, const int* g,
//  Float3 h, unsigned char i, short k, unsigned long long l, double* out):
// out[0..10] = each parameter as a double (*g for g, h.x + h.y + h.z for h),
// out[11] = their sum in that order, when any thread runs.
template <typename Float3>
void ManyParamsKernel(const ferry_launch* launch, void** params) {
  constexpr int kValues = 11;
  if (BlockCount(launch) == 0 || BlockSize(launch) == 0) return;
  const Float3 h = Param<Float3>(params, 7);
  const double v[kValues] = {static_cast<double>(Param<char>(params, 0)),
                             static_cast<double>(Param<short>(params, 1)),
                             static_cast<double>(Param<int>(params, 2)),
                             static_cast<double>(Param<long long>(params, 3)),
                             static_cast<double>(Param<float>(params, 4)),
                             Param<double>(params, 5),
                             static_cast<double>(*Param<const int*>(params, 6)),
                             static_cast<double>(h.x) + h.y + h.z,
                             static_cast<double>(Param<unsigned char>(params, 8)),
                             static_cast<double>(Param<short>(params, 9)),
                             static_cast<double>(Param<unsigned long long>(params, 10))};
  auto* out = Param<double*>(params, 11);
  double sum = 0;
  for (int j = 0; j < kValues; ++j) {
    out[j] = v[j];
    sum += v[j];
  }
  out[kValues] = sum;
}

// (T* data, T factor, int n): data[i] *= factor.
template <typename T>
void ScaleKernel(const ferry_launch* launch, void** params) {
  auto* data = Param<T*>(params, 0);
  const T factor = Param<T>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) data[i] *= factor;
  });
}

// (unsigned* out): out[0..2] = the grid, out[3..5] = the block, out[6] = the
// dynamic shared bytes, and out[7] grows by the number of threads (each
// thread's atomicAdd of 1).
inline void GeometryKernel(const ferry_launch* launch, void** params) {
  auto* out = Param<unsigned*>(params, 0);
  const unsigned long long threads = ThreadCount(launch);
  if (threads == 0) return;
  for (int k = 0; k < 3; ++k) {
    out[k] = launch->grid[k];
    out[3 + k] = launch->block[k];
  }
  out[6] = launch->shared_bytes;
  out[7] += static_cast<unsigned>(threads);
}

}  // namespace ferry::test

// Defines the exported host implementation of kernel `mangled` (its mangled
// name), found by the backend as "ferry_host_" + that name.
#define FERRY_TEST_HOST_KERNEL(mangled)                                        \
  extern "C" __attribute__((visibility("default"))) void ferry_host_##mangled( \
      const ferry_launch* launch, void** params)

// Defines the exported host implementations of the kernels that test/e2e and
// test/e2e_runtime both define (see VectorAddKernel and the rest above),
// given one suite's mangled names and its by-value types.
#define FERRY_TEST_SHARED_HOST_KERNELS(vector_add, padded, many_params, scale_float, scale_double, \
                                       geometry, Padded, Float3)                                   \
  FERRY_TEST_HOST_KERNEL(vector_add) { ::ferry::test::VectorAddKernel(launch, params); }           \
  FERRY_TEST_HOST_KERNEL(padded) { ::ferry::test::PaddedKernel<Padded>(launch, params); }          \
  FERRY_TEST_HOST_KERNEL(many_params) { ::ferry::test::ManyParamsKernel<Float3>(launch, params); } \
  FERRY_TEST_HOST_KERNEL(scale_float) { ::ferry::test::ScaleKernel<float>(launch, params); }       \
  FERRY_TEST_HOST_KERNEL(scale_double) { ::ferry::test::ScaleKernel<double>(launch, params); }     \
  FERRY_TEST_HOST_KERNEL(geometry) { ::ferry::test::GeometryKernel(launch, params); }
