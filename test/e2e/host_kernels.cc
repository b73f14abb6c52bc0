// Host implementations of the kernels in kernels.cu, loaded by ferryd's host
// backend (`ferryd --backend host --host-kernels libe2e_host_kernels.so`).
// Each is exported as "ferry_host_" + the kernel's mangled name (see
// kernel_names.h) and follows server/backend/host/ferry_host_kernel.h: params[i]
// points at the bytes of parameter i, device pointers are addresses in
// ferryd's memory, and the function emulates the whole grid by looping over
// every block and thread. _Z19missing_host_kernelPi has no implementation
// here on purpose. plugin_test.cc checks these against the images and runs
// them directly.
//
// Thread-safety: the backend may call these from several stream threads at
// once; they keep no state.
#include <cstdint>
#include <cstring>

#include "kernel_types.h"
#include "test/support/host_kernel.h"

using ferry::test::BlockCount;
using ferry::test::BlockSize;
using ferry::test::ForEachThreadX;
using ferry::test::Param;

#define FERRY_E2E_HOST_KERNEL(mangled) FERRY_TEST_HOST_KERNEL(mangled)

// vector_add(const float* a, const float* b, float* c, int n)
FERRY_E2E_HOST_KERNEL(_Z10vector_addPKfS0_Pfi) {
  const auto* a = Param<const float*>(params, 0);
  const auto* b = Param<const float*>(params, 1);
  auto* c = Param<float*>(params, 2);
  const int n = Param<int>(params, 3);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) c[i] = a[i] + b[i];
  });
}

// padded_by_value(char tag, E2ePadded p, long long* out)
FERRY_E2E_HOST_KERNEL(_Z15padded_by_valuec9E2ePaddedPx) {
  const char tag = Param<char>(params, 0);
  const E2ePadded p = Param<E2ePadded>(params, 1);
  auto* out = Param<long long*>(params, 2);
  if (BlockCount(launch) == 0 || BlockSize(launch) == 0) return;
  out[0] = tag;
  out[1] = p.c;
  out[2] = static_cast<long long>(p.d);
  out[3] = p.i;
}

// many_params(char a, short b, int c, long long d, float e, double f,
//             const int* g, E2eFloat3 h, unsigned char i, short k,
//             unsigned long long l, double* out)
FERRY_E2E_HOST_KERNEL(_Z11many_paramscsixfdPKi9E2eFloat3hsyPd) {
  if (BlockCount(launch) == 0 || BlockSize(launch) == 0) return;
  const E2eFloat3 h = Param<E2eFloat3>(params, 7);
  const double v[kManyParamsOutputs - 1] = {
      static_cast<double>(Param<char>(params, 0)),
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
  for (int j = 0; j < kManyParamsOutputs - 1; ++j) {
    out[j] = v[j];
    sum += v[j];
  }
  out[kManyParamsOutputs - 1] = sum;
}

namespace {

// scale<T>(T* data, T factor, int n)
template <typename T>
void Scale(const ferry_launch* launch, void** params) {
  auto* data = Param<T*>(params, 0);
  const T factor = Param<T>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) data[i] *= factor;
  });
}

}  // namespace

FERRY_E2E_HOST_KERNEL(_Z5scaleIfEvPT_S0_i) { Scale<float>(launch, params); }
FERRY_E2E_HOST_KERNEL(_Z5scaleIdEvPT_S0_i) { Scale<double>(launch, params); }

// launch_geometry(unsigned* out)
FERRY_E2E_HOST_KERNEL(_Z15launch_geometryPj) {
  auto* out = Param<unsigned*>(params, 0);
  const unsigned long long threads = BlockCount(launch) * BlockSize(launch);
  if (threads == 0) return;
  for (int k = 0; k < 3; ++k) {
    out[k] = launch->grid[k];
    out[3 + k] = launch->block[k];
  }
  out[6] = launch->shared_bytes;
  out[7] += static_cast<unsigned>(threads);  // one atomicAdd per thread
}

// add_int(int* data, int delta, int n)
FERRY_E2E_HOST_KERNEL(_Z7add_intPiii) {
  auto* data = Param<int*>(params, 0);
  const int delta = Param<int>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) data[i] += delta;
  });
}

// produce(int* out, int n, int mul, int add, int spin); the spin only delays
// the kernel on a GPU and changes no data.
FERRY_E2E_HOST_KERNEL(_Z7producePiiiii) {
  auto* out = Param<int*>(params, 0);
  const int n = Param<int>(params, 1);
  const int mul = Param<int>(params, 2);
  const int add = Param<int>(params, 3);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) out[i] = static_cast<int>(i) * mul + add;
  });
}

// consume(const int* in, int* out, int n)
FERRY_E2E_HOST_KERNEL(_Z7consumePKiPii) {
  const auto* in = Param<const int*>(params, 0);
  auto* out = Param<int*>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) out[i] = in[i] * 2 + 1;
  });
}

// extern "C" e2e_increment(unsigned* data, int n)
FERRY_E2E_HOST_KERNEL(e2e_increment) {
  auto* data = Param<unsigned*>(params, 0);
  const int n = Param<int>(params, 1);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) data[i] += 1;
  });
}
