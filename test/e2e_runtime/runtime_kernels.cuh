// Kernels shared by the runtime programs in this folder (runtime_launch.cu,
// runtime_contexts.cu, runtime_graphs.cu, runtime_graph_streams.cu). Each has
// a host implementation of the same mangled name in host_kernels.cc, which
// must compute the same thing; the types passed by value are in
// runtime_types.h, shared with it.
//
// No kernel reads a __device__ or __constant__ variable by name: a host
// implementation cannot find module variables, so programs pass their
// addresses (cudaGetSymbolAddress) as parameters instead.
#pragma once

#include "runtime_types.h"

// acc[i] += x[i] for i < n.
__global__ void rt_accumulate(float* acc, const float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) acc[i] += x[i];
}

// c[i] = a[i] + b[i] for i < n.
__global__ void rt_vector_add(const float* a, const float* b, float* c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

// out[0..3] = tag, p.c, p.d (truncated), p.i.
__global__ void rt_padded(char tag, RtPadded p, long long* out) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    out[0] = tag;
    out[1] = p.c;
    out[2] = static_cast<long long>(p.d);
    out[3] = p.i;
  }
}

// out[k] = parameter k as a double (g contributes *g, h contributes
// h.x + h.y + h.z), out[11] = their sum.
__global__ void rt_many(char a, short b, int c, long long d, float e, double f, const int* g,
                        RtFloat3 h, unsigned char i, short k, unsigned long long l, double* out) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double v[11] = {static_cast<double>(a),  static_cast<double>(b),
                  static_cast<double>(c),  static_cast<double>(d),
                  static_cast<double>(e),  f,
                  static_cast<double>(*g), static_cast<double>(h.x) + h.y + h.z,
                  static_cast<double>(i),  static_cast<double>(k),
                  static_cast<double>(l)};
  double sum = 0;
  for (int j = 0; j < 11; ++j) {
    out[j] = v[j];
    sum += v[j];
  }
  out[11] = sum;
}

// data[i] *= factor for i < n.
template <typename T>
__global__ void rt_scale(T* data, T factor, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) data[i] *= factor;
}

// out[0..2] = gridDim, out[3..5] = blockDim, out[6] = dynamic shared bytes;
// every thread adds 1 to out[7].
__global__ void rt_geometry(unsigned* out) {
  extern __shared__ unsigned char scratch[];
  bool first = blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && threadIdx.x == 0 &&
               threadIdx.y == 0 && threadIdx.z == 0;
  if (first) {
    unsigned dynamic_smem;
    asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dynamic_smem));
    scratch[0] = 1;
    out[0] = gridDim.x;
    out[1] = gridDim.y;
    out[2] = gridDim.z;
    out[3] = blockDim.x;
    out[4] = blockDim.y;
    out[5] = blockDim.z;
    out[6] = dynamic_smem;
  }
  atomicAdd(&out[7], 1u);
}

// out[i] = coefficients[i % 4] * i for i < n, reading the coefficients
// through the pointer it is given.
__global__ void rt_apply(const float* coefficients, float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = coefficients[i % 4] * static_cast<float>(i);
}

// out[i] = base + i for i < n (runtime_vmm.cu: a kernel writing across
// mappings that lie side by side).
__global__ void rt_iota(unsigned* out, unsigned base, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = base + static_cast<unsigned>(i);
}
