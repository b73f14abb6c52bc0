// Host implementation of the demo kernel for ferryd's host backend
// (ferryd --host-kernels libvector_add_host.so): the whole grid, on the CPU.
#include "server/backend/host/ferry_host_kernel.h"

extern "C" void ferry_host_vector_add(const ferry_launch* launch, void** params) {
  const float* a = *static_cast<const float**>(params[0]);
  const float* b = *static_cast<const float**>(params[1]);
  float* c = *static_cast<float**>(params[2]);
  const int n = *static_cast<const int*>(params[3]);
  const long threads = static_cast<long>(launch->grid[0]) * launch->block[0];
  for (long i = 0; i < threads && i < n; ++i) c[i] = a[i] + b[i];
}
