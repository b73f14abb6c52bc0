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

using ferry::test::ForEachThreadX;
using ferry::test::Param;

#define FERRY_RT_HOST_KERNEL(mangled) FERRY_TEST_HOST_KERNEL(mangled)

// rt_vector_add(const float* a, const float* b, float* c, int n),
// rt_padded(char tag, RtPadded p, long long* out),
// rt_many(char a, short b, int c, long long d, float e, double f,
//         const int* g, RtFloat3 h, unsigned char i, short k,
//         unsigned long long l, double* out),
// rt_scale<float> and rt_scale<double>(T* data, T factor, int n),
// rt_geometry(unsigned* out).
FERRY_TEST_SHARED_HOST_KERNELS(_Z13rt_vector_addPKfS0_Pfi, _Z9rt_paddedc8RtPaddedPx,
                               _Z7rt_manycsixfdPKi8RtFloat3hsyPd, _Z8rt_scaleIfEvPT_S0_i,
                               _Z8rt_scaleIdEvPT_S0_i, _Z11rt_geometryPj, RtPadded, RtFloat3)

// rt_apply(const float* coefficients, float* out, int n)
FERRY_RT_HOST_KERNEL(_Z8rt_applyPKfPfi) {
  const auto* coefficients = Param<const float*>(params, 0);
  auto* out = Param<float*>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) out[i] = coefficients[i % 4] * static_cast<float>(i);
  });
}

// rt_iota(unsigned* out, unsigned base, int n)
FERRY_RT_HOST_KERNEL(_Z7rt_iotaPjji) {
  auto* out = Param<unsigned*>(params, 0);
  const unsigned base = Param<unsigned>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) out[i] = base + static_cast<unsigned>(i);
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

// runtime_kernels.cuh: rt_accumulate(float* acc, const float* x, int n)
FERRY_RT_HOST_KERNEL(_Z13rt_accumulatePfPKfi) {
  auto* acc = Param<float*>(params, 0);
  const auto* x = Param<const float*>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) acc[i] += x[i];
  });
}

// runtime_arrays.cu (CUDA arrays, textures and surfaces), through the
// backend's texture and surface services (ferry_host_kernel.h). A texture
// or surface that does not resolve leaves NaN where the kernel would have
// written, so a program that checks its values sees it.

// rt_tex_sample(cudaTextureObject_t tex, const float* coords, float* out, int n)
FERRY_RT_HOST_KERNEL(rt_tex_sample) {
  const auto tex = Param<unsigned long long>(params, 0);
  const auto* coords = Param<const float*>(params, 1);
  auto* out = Param<float*>(params, 2);
  const int n = Param<int>(params, 3);
  ForEachThreadX(launch, [&](long long i) {
    if (i >= n) return;
    float texel[4];
    const int status =
        launch->services->tex_fetch(launch, tex, coords[2 * i], coords[2 * i + 1], 0, texel);
    out[i] = status == FERRY_HOST_OK ? texel[0] : __builtin_nanf("");
  });
}

// rt_tex_fetch1d(cudaTextureObject_t tex, float* out, int n)
FERRY_RT_HOST_KERNEL(rt_tex_fetch1d) {
  const auto tex = Param<unsigned long long>(params, 0);
  auto* out = Param<float*>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i >= n) return;
    float value;
    const int status = launch->services->tex_fetch_element(launch, tex, static_cast<float>(i), 0, 0,
                                                           &value, sizeof(value));
    out[i] = status == FERRY_HOST_OK ? value : __builtin_nanf("");
  });
}

// rt_surf_scale(cudaSurfaceObject_t surf, int width, int height, float factor)
FERRY_RT_HOST_KERNEL(rt_surf_scale) {
  const auto surf = Param<unsigned long long>(params, 0);
  const int width = Param<int>(params, 1);
  const int height = Param<int>(params, 2);
  const float factor = Param<float>(params, 3);
  ForEachThreadX(launch, [&](long long i) {
    if (i >= 1ll * width * height) return;
    const int x = static_cast<int>(i % width), y = static_cast<int>(i / width);
    float v = __builtin_nanf("");
    launch->services->surf_read(launch, surf, x * 4, y, 0, &v, sizeof(v));
    v = v * factor + static_cast<float>(x);
    launch->services->surf_write(launch, surf, x * 4, y, 0, &v, sizeof(v));
  });
}

// runtime_cooperative.cu: rt_coop_rotate(int* stage, int* out, int n), a
// cooperative kernel with one grid.sync(): the whole grid's first phase runs
// before any of its second, which is what the sync guarantees on a GPU.
FERRY_RT_HOST_KERNEL(_Z14rt_coop_rotatePiS_i) {
  auto* stage = Param<int*>(params, 0);
  auto* out = Param<int*>(params, 1);
  const int n = Param<int>(params, 2);
  const long long block = launch->block[0];
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) stage[i] = static_cast<int>(i + 1);
  });
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) out[i] = stage[(i + block) % n];
  });
}

// runtime_link.cu, JIT-linked from link_kernel.ptx and link_op.ptx (extern
// "C" names): rt_link_apply(const float* x, float* y, float a, int n) calls
// link_op's rt_link_op(x, a) = x * a + 1; rt_link_fill(float* y, float v, int n).
FERRY_RT_HOST_KERNEL(rt_link_apply) {
  const auto* x = Param<const float*>(params, 0);
  auto* y = Param<float*>(params, 1);
  const float a = Param<float>(params, 2);
  const int n = Param<int>(params, 3);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) y[i] = x[i] * a + 1.0f;
  });
}

FERRY_RT_HOST_KERNEL(rt_link_fill) {
  auto* y = Param<float*>(params, 0);
  const float v = Param<float>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) y[i] = v;
  });
}
