// Host implementations of host_test_kernels.cu for HostBackend, loaded by
// host_backend_test through HostBackendOptions::kernel_libraries. Each
// function emulates the whole grid (server/backend/host/ferry_host_kernel.h).
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "host_test_kernel_types.h"
#include "test/support/host_kernel.h"

using ferry::test::Param;

static unsigned long long Threads(const ferry_launch* l) { return ferry::test::ThreadCount(l); }

extern "C" {

void ferry_host__Z4vaddPKfS0_Pfi(const ferry_launch* l, void** params) {
  auto a = Param<const float*>(params, 0);
  auto b = Param<const float*>(params, 1);
  auto c = Param<float*>(params, 2);
  auto n = Param<int>(params, 3);
  for (unsigned long long i = 0; i < Threads(l) && i < static_cast<unsigned long long>(n); ++i) {
    c[i] = a[i] + b[i];
  }
}

void ferry_host__Z5scale9ScaleArgs(const ferry_launch* l, void** params) {
  auto args = Param<ScaleArgs>(params, 0);
  for (unsigned long long i = 0; i < Threads(l) && i < static_cast<unsigned long long>(args.n);
       ++i) {
    args.data[i] = args.data[i] * args.factor + args.offset;
  }
}

void ferry_host__Z10log_appendPiii(const ferry_launch*, void** params) {
  auto log = Param<int*>(params, 0);
  auto id = Param<int>(params, 1);
  auto sleep_ms = Param<int>(params, 2);
  // A slow kernel: the sleep is the behaviour the tests need, not a wait.
  if (sleep_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
  int k = std::atomic_ref<int>(log[0]).fetch_add(1);
  if (k < kLogCapacity) std::atomic_ref<int>(log[1 + k]).store(id);
}

void ferry_host__Z4gatePKi(const ferry_launch*, void** params) {
  auto flag = Param<int*>(params, 0);  // const in the signature; read only
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  // Polls the flag with a deadline: the kernel waits on a condition.
  while (std::atomic_ref<int>(*flag).load() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void ferry_host__Z11launch_infoPj(const ferry_launch* l, void** params) {
  auto out = Param<unsigned*>(params, 0);
  for (int i = 0; i < 3; ++i) {
    out[i] = l->grid[i];
    out[3 + i] = l->block[i];
  }
  out[6] = l->shared_bytes;
}

// CUDA arrays, textures and surfaces: through the launch's services.
void ferry_host__Z8texel_atyffPf(const ferry_launch* l, void** params) {
  auto tex = Param<unsigned long long>(params, 0);
  auto x = Param<float>(params, 1);
  auto y = Param<float>(params, 2);
  auto out = Param<float*>(params, 3);
  out[4] = static_cast<float>(l->services->tex_fetch(l, tex, x, y, 0, out));
}

void ferry_host__Z11surface_putyiifPi(const ferry_launch* l, void** params) {
  auto surf = Param<unsigned long long>(params, 0);
  auto x_bytes = Param<int>(params, 1);
  auto y = Param<int>(params, 2);
  auto value = Param<float>(params, 3);
  auto status = Param<int*>(params, 4);
  *status = l->services->surf_write(l, surf, x_bytes, y, 0, &value, sizeof(value));
}

}  // extern "C"
