/* The ABI between ferryd's host backend and a host-kernel library
 * (`ferryd --host-kernels LIB.so`).
 *
 * For each kernel it implements, the library exports a C function named
 * "ferry_host_" + the kernel's mangled name, e.g. ferry_host__Z4vaddPKfS0_Pfi.
 * The backend calls it once per launch, on the stream's worker thread, after
 * the work queued before the launch has finished. `params[i]` points at the
 * bytes of parameter i (device pointers are host addresses in ferryd). The
 * function emulates the whole grid itself. It must not keep the pointers.
 *
 * Cooperative launches (cuLaunchCooperativeKernel, cudaLaunchCooperativeKernel,
 * CU_LAUNCH_ATTRIBUTE_COOPERATIVE) call the same function the same way: since
 * it runs the whole grid in one call, a grid-wide sync (cooperative_groups'
 * grid.sync()) is honoured by ordering its work in phases (all blocks' work
 * before the sync, then all blocks' work after it). The backend refuses, as a
 * GPU does, a cooperative grid larger than can be resident at once (blocks per
 * SM from its occupancy model times 132 SMs) with
 * CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE; such a launch never reaches the
 * function. */
#ifndef FERRY_HOST_KERNEL_H_
#define FERRY_HOST_KERNEL_H_

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ferry_launch {
  unsigned grid[3];
  unsigned block[3];
  unsigned shared_bytes;
} ferry_launch;

typedef void (*ferry_host_kernel_fn)(const ferry_launch* launch, void** params);

#define FERRY_HOST_KERNEL_PREFIX "ferry_host_"

#ifdef __cplusplus
}
#endif

#endif /* FERRY_HOST_KERNEL_H_ */
