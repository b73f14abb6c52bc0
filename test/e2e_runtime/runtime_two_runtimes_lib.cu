// The shared library of runtime_two_runtimes: built by nvcc with
// -shared -Xcompiler -fPIC -cudart static, so it carries its own copy of the
// CUDA runtime (and its own kernels, registered with that copy), as libraries
// such as cuBLAS do. The program loads it with dlopen and calls these
// functions; each returns a cudaError_t as an int. No function synchronises
// unless its name says so, so the program can check that its own
// synchronisation covers the library's work.
#include <cuda.h>
#include <cuda_runtime.h>

#include "runtime_hold.h"

// out[i] = factor * i for i < n.
__global__ void rt_lib_fill(float* out, float factor, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = factor * static_cast<float>(i);
}

// dst[i] += src[i] for i < n.
__global__ void rt_lib_accumulate(float* dst, const float* src, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] += src[i];
}

namespace {

cudaStream_t g_stream = nullptr;  // the library's own non-blocking stream

int Blocks(int n) { return (n + 255) / 256; }

}  // namespace

#define RT_LIB_API extern "C" __attribute__((visibility("default")))

// Starts the library's runtime on device 0 and reports the context it made
// current (its first runtime call sets the device's primary context).
RT_LIB_API int rt_lib_init(void** context) {
  cudaError_t error = cudaSetDevice(0);
  if (error == cudaSuccess) error = cudaFree(nullptr);
  if (error == cudaSuccess) error = cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking);
  if (error != cudaSuccess) return error;
  CUcontext current = nullptr;
  if (cuCtxGetCurrent(&current) != CUDA_SUCCESS) return cudaErrorUnknown;
  *context = current;
  return cudaSuccess;
}

// Allocates n floats and fills them with rt_lib_fill on the default stream.
RT_LIB_API int rt_lib_alloc_filled(float** out, int n, float factor) {
  cudaError_t error = cudaMalloc(out, n * sizeof(float));
  if (error != cudaSuccess) return error;
  rt_lib_fill<<<Blocks(n), 256>>>(*out, factor, n);
  return cudaGetLastError();
}

// On the library's stream: waits for `hold`, then dst[i] += src[i].
RT_LIB_API int rt_lib_accumulate_after(RtHold* hold, float* dst, const float* src, int n) {
  cudaError_t error = cudaLaunchHostFunc(g_stream, RtHoldStream, hold);
  if (error != cudaSuccess) return error;
  rt_lib_accumulate<<<Blocks(n), 256, 0, g_stream>>>(dst, src, n);
  return cudaGetLastError();
}

RT_LIB_API int rt_lib_stream_query() { return cudaStreamQuery(g_stream); }

RT_LIB_API int rt_lib_device_synchronize() { return cudaDeviceSynchronize(); }

RT_LIB_API int rt_lib_read(float* host, const float* device, int n) {
  return cudaMemcpy(host, device, n * sizeof(float), cudaMemcpyDeviceToHost);
}

RT_LIB_API int rt_lib_pointer_is_device(const void* pointer) {
  cudaPointerAttributes attributes{};
  cudaError_t error = cudaPointerGetAttributes(&attributes, pointer);
  if (error != cudaSuccess) return error;
  return attributes.type == cudaMemoryTypeDevice ? cudaSuccess : cudaErrorInvalidValue;
}

RT_LIB_API int rt_lib_free(void* pointer) { return cudaFree(pointer); }

RT_LIB_API int rt_lib_finish() {
  cudaError_t error = cudaStreamDestroy(g_stream);
  g_stream = nullptr;
  return error;
}
