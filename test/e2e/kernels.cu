// Kernels for the end-to-end programs in this folder. nvcc compiles this file
// at build time into a fatbin (sm_90 SASS + PTX) and a PTX image, which the
// programs load at run time. Through ferry's host backend each kernel runs as
// the host implementation of the same name in host_kernels.cc; the two files
// must agree on every signature and on what each kernel computes. The
// parameter lists are chosen to exercise parameter layout: by-value structs
// with padding, every scalar size, pointers, and a template instantiation.
//
// No kernel here touches a __device__ global by name: a host implementation
// cannot find a module global, so kernels receive its address as a parameter.
#include "kernel_types.h"

// Read back and rewritten by the launch program through cuModuleGetGlobal.
__device__ int e2e_global[4] = {11, 22, 33, 44};

// c[i] = a[i] + b[i] for i < n.
__global__ void vector_add(const float* a, const float* b, float* c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

// out[0..3] = tag, p.c, p.d (truncated), p.i.
__global__ void padded_by_value(char tag, E2ePadded p, long long* out) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    out[0] = tag;
    out[1] = p.c;
    out[2] = static_cast<long long>(p.d);
    out[3] = p.i;
  }
}

// out[k] = parameter k as a double for k = 0..10 (the pointer g contributes
// *g, h contributes x + y + z), out[11] = their sum in that order: a checksum
// that also shows which parameter arrived wrong.
__global__ void many_params(char a, short b, int c, long long d, float e, double f, const int* g,
                            E2eFloat3 h, unsigned char i, short k, unsigned long long l,
                            double* out) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double v[kManyParamsOutputs - 1] = {static_cast<double>(a),  static_cast<double>(b),
                                      static_cast<double>(c),  static_cast<double>(d),
                                      static_cast<double>(e),  f,
                                      static_cast<double>(*g), static_cast<double>(h.x) + h.y + h.z,
                                      static_cast<double>(i),  static_cast<double>(k),
                                      static_cast<double>(l)};
  double sum = 0;
  for (int j = 0; j < kManyParamsOutputs - 1; ++j) {
    out[j] = v[j];
    sum += v[j];
  }
  out[kManyParamsOutputs - 1] = sum;
}

// data[i] *= factor for i < n.
template <typename T>
__global__ void scale(T* data, T factor, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) data[i] *= factor;
}
template __global__ void scale<float>(float*, float, int);
template __global__ void scale<double>(double*, double, int);

// Writes the launch geometry: out[0..2] = gridDim, out[3..5] = blockDim,
// out[6] = dynamic shared memory bytes; every thread adds 1 to out[7].
__global__ void launch_geometry(unsigned* out) {
  bool first = blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && threadIdx.x == 0 &&
               threadIdx.y == 0 && threadIdx.z == 0;
  if (first) {
    unsigned dynamic_smem;
    asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dynamic_smem));
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

// data[i] += delta for i < n (used on the module global's address).
__global__ void add_int(int* data, int delta, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) data[i] += delta;
}

// Stream-order producer: out[i] = i * mul + add. On a real GPU it first spins
// for `spin` iterations so that a consumer that does not wait would see stale
// data.
__global__ void produce(int* out, int n, int mul, int add, int spin) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  volatile int sink = 0;
  for (int s = 0; s < spin; ++s) sink = sink + s;
  if (i < n) out[i] = i * mul + add;
}

// Stream-order consumer: out[i] = in[i] * 2 + 1.
__global__ void consume(const int* in, int* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i] * 2 + 1;
}

// extern "C" kernel (unmangled name): data[i] += 1 for i < n.
extern "C" __global__ void e2e_increment(unsigned* data, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) data[i] += 1;
}

// A ring of nodes in device memory, each {next node's address, value}:
// walks `nodes` of them from `head` (one thread), adding 1 to each value
// (the pointers it follows are the device's own addresses, so the ring is
// only right where those addresses are).
extern "C" __global__ void e2e_ring_step(unsigned long long head, int nodes) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  unsigned long long at = head;
  for (int i = 0; i < nodes; ++i) {
    unsigned long long* node = reinterpret_cast<unsigned long long*>(at);
    node[1] += 1;
    at = node[0];
  }
}

// One tick: counter[0] += 1, after `sleep_us` of work. Its host twin is
// slow on purpose and also reports each run (see host_kernels.cc), so a test
// can count the launches that ran (launch_queue, bounded_test.cc).
__global__ void tick(unsigned* counter, int sleep_us) {
  if (blockIdx.x == 0 && threadIdx.x == 0) atomicAdd(counter, 1u);
}

// Deliberately has no host implementation: launching it through the host
// backend must fail with an error that names it.
__global__ void missing_host_kernel(int* out) { out[threadIdx.x] = 1; }
