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
