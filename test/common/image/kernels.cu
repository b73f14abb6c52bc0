// Test kernels for image_test: compiled by nvcc at build time into every
// image form (fatbin plain / zstd / LZ4, cubin, PTX). Their parameter lists
// are chosen to exercise the layout rules the parser must reproduce; the
// expected offsets live in module_image_test.cc. Nothing here ever runs.
#include <cstdint>

struct Padded {  // 24 bytes, align 8: c@0, d@8, i@16
  char c;
  double d;
  int i;
};

struct Float3 {  // 12 bytes, align 4
  float x, y, z;
};

struct Huge {  // 17000 bytes, align 1: too big for EIATTR_KPARAM_INFO
  char bytes[17000];
};

__constant__ float ferry_coeffs[8] = {1, 2, 3, 4, 5, 6, 7, 8};
__constant__ int ferry_const_scalar = 42;
__device__ int ferry_counter = 7;
__device__ double ferry_table[16] = {0.5, 1.5};
__device__ uint8_t ferry_zeroed[100];

__global__ void vadd(const float* a, const float* b, float* c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i] + ferry_coeffs[i % 8];
  if (i == 0) ferry_counter += ferry_const_scalar;
}

// A device function, not a kernel: -rdc cubins give it `.text.` and
// `.nv.info.` sections like a kernel's, PTX declares it with `.func`.
__device__ __noinline__ int helper(const int* p, int i) { return p[i] * 3; }

__global__ void by_value(char tag, Padded p, int* out) {
  out[0] = tag + p.c + static_cast<int>(p.d) + p.i + ferry_zeroed[p.i & 63] + helper(out, p.i);
}

__global__ void many(char a, short b, int c, long long d, float e, double f, const int* g, Float3 h,
                     char i, double* j, short k, unsigned long long l) {
  j[0] = a + b + c + d + e + f + *g + h.x + h.y + h.z + i + k + l + ferry_table[c & 15];
}

template <typename T, int N>
__global__ void scale(T* data, T factor) {
  data[threadIdx.x % N] *= factor;
}
template __global__ void scale<float, 4>(float*, float);
template __global__ void scale<double, 2>(double*, double);

extern "C" __global__ void plain_c(unsigned char flag, void* p, uint16_t s) {
  if (flag) static_cast<uint16_t*>(p)[0] = s;
}

__global__ void big_param(char c, Huge h, int i, short s, double* p) {
  p[0] = c + h.bytes[i & 1023] + i + s;
}

// Cluster dimensions give the kernel's .nv.info an NVAL attribute, the
// format no other kernel here produces.
__global__ void __cluster_dims__(2, 1, 1) no_params() { ferry_counter = 0; }
