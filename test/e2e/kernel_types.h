// Types passed by value to the kernels in kernels.cu, shared by the kernels
// (nvcc), their host implementations (host_kernels.cc) and the programs that
// launch them. The static_asserts pin the layout that the device ABI gives
// these structs, which x86-64 gives them too, so the bytes a program passes
// are the bytes a host implementation reads.
#ifndef FERRY_TEST_E2E_KERNEL_TYPES_H_
#define FERRY_TEST_E2E_KERNEL_TYPES_H_

#include <cstddef>

// A struct with interior and tail padding: c@0, d@8, i@16; 24 bytes.
struct E2ePadded {
  char c;
  double d;
  int i;
};
static_assert(sizeof(E2ePadded) == 24 && alignof(E2ePadded) == 8);
static_assert(offsetof(E2ePadded, d) == 8 && offsetof(E2ePadded, i) == 16);

// A float3-like struct: x@0, y@4, z@8; 12 bytes, align 4.
struct E2eFloat3 {
  float x, y, z;
};
static_assert(sizeof(E2eFloat3) == 12 && alignof(E2eFloat3) == 4);

// Number of doubles that many_params writes: one per parameter that carries
// a value (11), then their sum.
inline constexpr int kManyParamsOutputs = 12;

#endif  // FERRY_TEST_E2E_KERNEL_TYPES_H_
