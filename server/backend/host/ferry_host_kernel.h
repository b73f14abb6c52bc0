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
 * Textures and surfaces. A kernel parameter of type CUtexObject /
 * cudaTextureObject_t or CUsurfObject / cudaSurfaceObject_t holds the value
 * ferryd handed out; `launch->services` turns it into texels. The members
 * `services` and `services_scope` were appended to ferry_launch when ferryd
 * learnt textures; a library built before them simply never reads them.
 * A library that reads them must run under a ferryd that has them (NULL
 * `services` means none: no texture can be read).
 *
 * Each service takes the launch it was called for and answers
 * FERRY_HOST_OK, FERRY_HOST_BAD_OBJECT when the value names no object of the
 * launch's context (objects of other contexts and sessions never resolve),
 * or FERRY_HOST_OUT_OF_RANGE (surfaces only: the access lies outside the
 * array; nothing is read or written, as a trapping boundary mode would not).
 *
 *  tex_fetch: the texel at (x, y, z), point-sampled, or with
 *    CU_TR_FILTER_MODE_LINEAR the texels around it weighted by the distance
 *    (texel centres at i + 0.5; exact weights, where a GPU's are 9-bit fixed
 *    point). Coordinates are normalized when the texture was made with
 *    CU_TRSF_NORMALIZED_COORDINATES and count texels otherwise (a linear
 *    resource: x is the element index, as tex1Dfetch takes it); for a
 *    layered array z is the layer index (1D layered ones too: y is then
 *    ignored), never normalized. Coordinates outside are resolved by the
 *    texture's address modes (clamp, border, and with normalized coordinates
 *    wrap and mirror). out[c] is channel c as float: 8- and 16-bit integers
 *    read as normalized floats unless CU_TRSF_READ_AS_INTEGER, 32-bit
 *    integers as their value; channels the format lacks are 0 (alpha 1 for
 *    normalized reads).
 *  tex_fetch_element: the same texel's raw bytes (element_bytes of them,
 *    format size x channels), always point-sampled, e.g. for tex2D<int> or
 *    tex2D<uchar4>; fails with FERRY_HOST_OUT_OF_RANGE when `bytes` is not
 *    the element's size.
 *  surf_read / surf_write: `bytes` bytes at byte x_bytes of row y of slice
 *    (or layer) z of a surface's array, as surf*Dread / surf*Dwrite.
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

struct ferry_host_services;

typedef struct ferry_launch {
  unsigned grid[3];
  unsigned block[3];
  unsigned shared_bytes;
  /* textures and surfaces (see above); appended, so older libraries work */
  const struct ferry_host_services* services;
  const void* services_scope; /* ferryd's own: which context the launch is in */
} ferry_launch;

#define FERRY_HOST_OK 0
#define FERRY_HOST_BAD_OBJECT 1
#define FERRY_HOST_OUT_OF_RANGE 2

typedef struct ferry_host_services {
  /* sizeof(ferry_host_services) in ferryd: a member exists when `size` covers it */
  unsigned size;
  int (*tex_fetch)(const ferry_launch* launch, unsigned long long tex, float x, float y, float z,
                   float out[4]);
  int (*tex_fetch_element)(const ferry_launch* launch, unsigned long long tex, float x, float y,
                           float z, void* out, unsigned bytes);
  int (*surf_read)(const ferry_launch* launch, unsigned long long surf, int x_bytes, int y, int z,
                   void* out, unsigned bytes);
  int (*surf_write)(const ferry_launch* launch, unsigned long long surf, int x_bytes, int y, int z,
                    const void* in, unsigned bytes);
} ferry_host_services;

typedef void (*ferry_host_kernel_fn)(const ferry_launch* launch, void** params);

#define FERRY_HOST_KERNEL_PREFIX "ferry_host_"

#ifdef __cplusplus
}
#endif

#endif /* FERRY_HOST_KERNEL_H_ */
