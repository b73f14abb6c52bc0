// runtime_link's first JIT-link input (nvcc -rdc=true --ptx): a kernel that
// calls a device function defined only in link_op.cu, so its PTX declares
// rt_link_op `.extern` and links only with link_op's.
extern "C" __device__ float rt_link_op(float x, float a);

// y[i] = rt_link_op(x[i], a)
extern "C" __global__ void rt_link_apply(const float* x, float* y, float a, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = rt_link_op(x[i], a);
}
