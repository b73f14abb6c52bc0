// Types shared by the host-backend test kernels (host_test_kernels.cu, built
// by nvcc for their images), their host implementations
// (host_test_kernels_host.cc) and host_backend_test.cc. The static_asserts pin
// the layout the device ABI gives these structs, which x86-64 gives them too.
#ifndef FERRY_TEST_BACKEND_HOST_HOST_TEST_KERNEL_TYPES_H_
#define FERRY_TEST_BACKEND_HOST_HOST_TEST_KERNEL_TYPES_H_

#include <cstddef>

// Passed by value to `scale`: data[i] = data[i] * factor + offset, i < n.
struct ScaleArgs {
  float factor;  // @0
  int n;         // @4
  float* data;   // @8
  float offset;  // @16, then 4 bytes of tail padding
};
static_assert(sizeof(ScaleArgs) == 24 && alignof(ScaleArgs) == 8);
static_assert(offsetof(ScaleArgs, data) == 8 && offsetof(ScaleArgs, offset) == 16);

// Entries a `log_append` log holds after its counter (log[0]).
inline constexpr int kLogCapacity = 63;

#endif  // FERRY_TEST_BACKEND_HOST_HOST_TEST_KERNEL_TYPES_H_
