// runtime_link's second JIT-link input (nvcc -rdc=true --ptx): the device
// function link_kernel.cu's kernel calls, and a kernel of its own.
extern "C" __device__ float rt_link_op(float x, float a) { return x * a + 1.0f; }

// y[i] = v
extern "C" __global__ void rt_link_fill(float* y, float v, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = v;
}
