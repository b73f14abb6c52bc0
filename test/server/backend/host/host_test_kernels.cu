// Kernels whose images (built by nvcc at build time) host_backend_test loads.
// Nothing here runs on a GPU: HostBackend runs the host implementations in
// host_test_kernels_host.cc, found by mangled name. The device bodies only
// keep nvcc from optimizing the kernels and globals away.
#include "host_test_kernel_types.h"

__device__ int ferry_test_counter = 42;
__device__ float ferry_test_table[4] = {1.5f, 2.5f, 3.5f, 4.5f};
__device__ int ferry_test_zeroed[8];
__constant__ int ferry_test_const[2] = {7, 9};

// _Z4vaddPKfS0_Pfi
__global__ void vadd(const float* a, const float* b, float* c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

// _Z5scale9ScaleArgs
__global__ void scale(ScaleArgs args) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < args.n) args.data[i] = args.data[i] * args.factor + args.offset;
}

// _Z10log_appendPiii: sleeps `sleep_ms`, then appends `id` to `log`.
__global__ void log_append(int* log, int id, int sleep_ms) {
  int k = atomicAdd(&log[0], 1);
  log[1 + k] = id + sleep_ms;
}

// _Z4gatePKi: returns once *flag != 0 (the host version gives up after 10 s).
__global__ void gate(const int* flag) {
  while (*(volatile const int*)flag == 0) {
  }
}

// _Z11launch_infoPj: writes grid[3], block[3], shared bytes.
__global__ void launch_info(unsigned* out) {
  out[0] = gridDim.x + ferry_test_const[0] + ferry_test_zeroed[0] + ferry_test_counter +
           static_cast<int>(ferry_test_table[1]);
}

// _Z6nohostPi: deliberately has no host implementation.
__global__ void nohost(int* p) { *p = 1; }

// CUDA arrays, textures and surfaces. _Z8texel_atyffPf: out[0..3] = the
// texel at (x, y), out[4] = the service's status (host version only).
__global__ void texel_at(unsigned long long tex, float x, float y, float* out) {
  out[0] = x + y + static_cast<float>(tex);
}

// _Z11surface_putyiifPi: writes `value` at (x_bytes, y) of the surface,
// *status = the service's status (host version only).
__global__ void surface_put(unsigned long long surf, int x_bytes, int y, float value, int* status) {
  *status = x_bytes + y + static_cast<int>(value) + static_cast<int>(surf);
}
