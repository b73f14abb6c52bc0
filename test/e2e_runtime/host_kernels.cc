// Host implementations of the kernels of the runtime programs in this folder,
// loaded by the ferryd each runner starts (`--host-kernels`). Each is exported
// as "ferry_host_" + the kernel's mangled name and follows
// server/backend/host/ferry_host_kernel.h: params[i] points at the bytes of
// parameter i, device pointers are addresses in ferryd, and the function
// emulates the whole grid. A program's new kernels get their implementation
// here, computing what the CUDA version computes.
//
// Thread-safety: the backend may call these from several stream threads at
// once; they keep no state.
#include <cstdint>
#include <cstring>

#include "runtime_types.h"
#include "test/support/host_kernel.h"

namespace {

using ferry::test::BlockCount;
using ferry::test::BlockSize;
using ferry::test::ForEachThreadX;
using ferry::test::Param;

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

#define FERRY_RT_HOST_KERNEL(mangled) FERRY_TEST_HOST_KERNEL(mangled)

// rt_vector_add(const float* a, const float* b, float* c, int n)
FERRY_RT_HOST_KERNEL(_Z13rt_vector_addPKfS0_Pfi) {
  const auto* a = Param<const float*>(params, 0);
  const auto* b = Param<const float*>(params, 1);
  auto* c = Param<float*>(params, 2);
  const int n = Param<int>(params, 3);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) c[i] = a[i] + b[i];
  });
}

// rt_padded(char tag, RtPadded p, long long* out)
FERRY_RT_HOST_KERNEL(_Z9rt_paddedc8RtPaddedPx) {
  if (BlockCount(launch) == 0 || BlockSize(launch) == 0) return;
  const RtPadded p = Param<RtPadded>(params, 1);
  auto* out = Param<long long*>(params, 2);
  out[0] = Param<char>(params, 0);
  out[1] = p.c;
  out[2] = static_cast<long long>(p.d);
  out[3] = p.i;
}

// rt_many(char a, short b, int c, long long d, float e, double f,
//         const int* g, RtFloat3 h, unsigned char i, short k,
//         unsigned long long l, double* out)
FERRY_RT_HOST_KERNEL(_Z7rt_manycsixfdPKi8RtFloat3hsyPd) {
  if (BlockCount(launch) == 0 || BlockSize(launch) == 0) return;
  const RtFloat3 h = Param<RtFloat3>(params, 7);
  const double v[11] = {static_cast<double>(Param<char>(params, 0)),
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
  for (int j = 0; j < 11; ++j) {
    out[j] = v[j];
    sum += v[j];
  }
  out[11] = sum;
}

// rt_scale<float>(float*, float, int) and rt_scale<double>(double*, double, int)
FERRY_RT_HOST_KERNEL(_Z8rt_scaleIfEvPT_S0_i) { Scale<float>(launch, params); }
FERRY_RT_HOST_KERNEL(_Z8rt_scaleIdEvPT_S0_i) { Scale<double>(launch, params); }

// rt_geometry(unsigned* out)
FERRY_RT_HOST_KERNEL(_Z11rt_geometryPj) {
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

// rt_apply(const float* coefficients, float* out, int n)
FERRY_RT_HOST_KERNEL(_Z8rt_applyPKfPfi) {
  const auto* coefficients = Param<const float*>(params, 0);
  auto* out = Param<float*>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) out[i] = coefficients[i % 4] * static_cast<float>(i);
  });
}

// runtime_two_runtimes_lib.cu: rt_lib_fill(float* out, float factor, int n)
FERRY_RT_HOST_KERNEL(_Z11rt_lib_fillPffi) {
  auto* out = Param<float*>(params, 0);
  const float factor = Param<float>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) out[i] = factor * static_cast<float>(i);
  });
}

// runtime_two_runtimes_lib.cu: rt_lib_accumulate(float* dst, const float* src, int n)
FERRY_RT_HOST_KERNEL(_Z17rt_lib_accumulatePfPKfi) {
  auto* dst = Param<float*>(params, 0);
  const auto* src = Param<const float*>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) dst[i] += src[i];
  });
}
