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

// The arguments the tests pass to many_params (every scalar size, a pointer
// to g_value and a by-value struct), and the values it must write for them.
struct ManyParamsArgs {
  char a = -3;
  short b = -1234;
  int c = 100000;
  long long d = -(1LL << 40) - 7;
  float e = 2.5f;
  double f = -1024.25;
  int g_value = 777;  // what the pointer parameter g points at
  E2eFloat3 h = {1.5f, -2.25f, 3.0f};
  unsigned char i = 200;
  short k = 31000;
  unsigned long long l = (1ULL << 45) + 3;

  // out[0..10] as many_params writes them: each parameter as a double, *g
  // for g and h.x + h.y + h.z for h.
  void Expected(double (&out)[kManyParamsOutputs - 1]) const {
    const double values[kManyParamsOutputs - 1] = {
        static_cast<double>(a),       static_cast<double>(b),
        static_cast<double>(c),       static_cast<double>(d),
        static_cast<double>(e),       f,
        static_cast<double>(g_value), static_cast<double>(h.x) + h.y + h.z,
        static_cast<double>(i),       static_cast<double>(k),
        static_cast<double>(l)};
    for (int j = 0; j < kManyParamsOutputs - 1; ++j) out[j] = values[j];
  }
};

#endif  // FERRY_TEST_E2E_KERNEL_TYPES_H_
