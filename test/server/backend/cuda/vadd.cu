// Kernels for cuda_backend_gpu_test, built by nvcc at build time into a
// fatbin, a cubin and PTX (-arch=sm_90) that the test loads through
// CudaBackend::LoadModule.
__device__ int ferry_counter[4];

__global__ void vadd(const float* a, const float* b, float* c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

// Adds `amount` to ferry_counter[0] once per launch.
__global__ void bump(int amount) {
  if (blockIdx.x == 0 && threadIdx.x == 0) ferry_counter[0] += amount;
}

// Writes through a bad pointer to poison its context (sticky error test).
__global__ void fault(int* pointer) { *pointer = 1; }

// SM partitions (green contexts). Each block writes the SM it ran on, after a
// short spin so that the blocks spread over every SM the context may use.
__global__ void sm_of_block(unsigned* out) {
  unsigned sm;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  long long start = clock64();
  while (clock64() - start < 100000) {
  }
  if (threadIdx.x == 0) out[blockIdx.x] = sm;
}

// Compute-bound: `iterations` dependent FMAs per thread, no memory traffic
// but the final store.
__global__ void spin(float* out, int iterations) {
  float x = threadIdx.x * 1e-3f;
  for (int i = 0; i < iterations; ++i) x = x * 0.999999f + 0.5f;
  out[blockIdx.x * blockDim.x + threadIdx.x] = x;
}
