// The demo's kernel, compiled by nvcc into a fatbin (sm_80, sm_90 SASS and
// compute_90 PTX) that the demo loads with cuModuleLoad.
extern "C" __global__ void vector_add(const float* a, const float* b, float* c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}
