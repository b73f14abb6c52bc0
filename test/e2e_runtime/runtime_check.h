// Checks for the runtime programs in this folder: each prints the failing
// call or condition with its line and ends the program with status 1; a
// program that gets to its end prints "all checks passed" (the runner's
// default expectation).
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define RT_CHECK(call)                                                        \
  do {                                                                        \
    const cudaError_t rt_error_ = (call);                                     \
    if (rt_error_ != cudaSuccess) {                                           \
      std::printf("FAILED line %d: %s: %s (%s, %d)\n", __LINE__, #call,       \
                  cudaGetErrorString(rt_error_), cudaGetErrorName(rt_error_), \
                  static_cast<int>(rt_error_));                               \
      std::fflush(stdout);                                                    \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)

#define RT_CHECK_CU(call)                                               \
  do {                                                                  \
    const CUresult rt_result_ = (call);                                 \
    if (rt_result_ != CUDA_SUCCESS) {                                   \
      std::printf("FAILED line %d: %s: CUresult %d\n", __LINE__, #call, \
                  static_cast<int>(rt_result_));                        \
      std::fflush(stdout);                                              \
      std::exit(1);                                                     \
    }                                                                   \
  } while (0)

#define RT_EXPECT(condition)                                           \
  do {                                                                 \
    if (!(condition)) {                                                \
      std::printf("FAILED line %d: check %s\n", __LINE__, #condition); \
      std::fflush(stdout);                                             \
      std::exit(1);                                                    \
    }                                                                  \
  } while (0)
