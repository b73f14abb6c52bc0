// Types the runtime programs pass to kernels by value, shared by the kernels
// (nvcc) and their host implementations (host_kernels.cc). The
// static_asserts pin the layout both compilers give them.
#pragma once

#include <cstddef>

// Interior and tail padding: c@0, d@8, i@16; 24 bytes.
struct RtPadded {
  char c;
  double d;
  int i;
};
static_assert(sizeof(RtPadded) == 24 && alignof(RtPadded) == 8, "RtPadded layout");
static_assert(offsetof(RtPadded, d) == 8 && offsetof(RtPadded, i) == 16, "RtPadded layout");

// float3-like: x@0, y@4, z@8; 12 bytes, align 4.
struct RtFloat3 {
  float x, y, z;
};
static_assert(sizeof(RtFloat3) == 12 && alignof(RtFloat3) == 4, "RtFloat3 layout");
