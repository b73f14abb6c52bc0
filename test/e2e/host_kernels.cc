// Host implementations of the kernels in kernels.cu, loaded by ferryd's host
// backend (`ferryd --backend host --host-kernels libe2e_host_kernels.so`).
// Each is exported as "ferry_host_" + the kernel's mangled name (see
// kernel_names.h) and follows server/backend/host/ferry_host_kernel.h: params[i]
// points at the bytes of parameter i, device pointers are addresses in
// ferryd's memory, and the function emulates the whole grid by looping over
// every block and thread. _Z19missing_host_kernelPi has no implementation
// here on purpose. plugin_test.cc checks these against the images and runs
// them directly.
//
// Thread-safety: the backend may call these from several stream threads at
// once; they keep no state (tick appends to a file with O_APPEND writes).
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "kernel_types.h"
#include "test/support/host_kernel.h"

using ferry::test::ForEachThreadX;
using ferry::test::Param;

#define FERRY_E2E_HOST_KERNEL(mangled) FERRY_TEST_HOST_KERNEL(mangled)

// vector_add(const float* a, const float* b, float* c, int n),
// padded_by_value(char tag, E2ePadded p, long long* out),
// many_params(char a, short b, int c, long long d, float e, double f,
//             const int* g, E2eFloat3 h, unsigned char i, short k,
//             unsigned long long l, double* out),
// scale<float> and scale<double>(T* data, T factor, int n),
// launch_geometry(unsigned* out).
static_assert(kManyParamsOutputs == 12, "ManyParamsKernel writes 11 values and their sum");
FERRY_TEST_SHARED_HOST_KERNELS(_Z10vector_addPKfS0_Pfi, _Z15padded_by_valuec9E2ePaddedPx,
                               _Z11many_paramscsixfdPKi9E2eFloat3hsyPd, _Z5scaleIfEvPT_S0_i,
                               _Z5scaleIdEvPT_S0_i, _Z15launch_geometryPj, E2ePadded, E2eFloat3)

// add_int(int* data, int delta, int n)
FERRY_E2E_HOST_KERNEL(_Z7add_intPiii) {
  auto* data = Param<int*>(params, 0);
  const int delta = Param<int>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) data[i] += delta;
  });
}

// produce(int* out, int n, int mul, int add, int spin); the spin only delays
// the kernel on a GPU and changes no data.
FERRY_E2E_HOST_KERNEL(_Z7producePiiiii) {
  auto* out = Param<int*>(params, 0);
  const int n = Param<int>(params, 1);
  const int mul = Param<int>(params, 2);
  const int add = Param<int>(params, 3);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) out[i] = static_cast<int>(i) * mul + add;
  });
}

// consume(const int* in, int* out, int n)
FERRY_E2E_HOST_KERNEL(_Z7consumePKiPii) {
  const auto* in = Param<const int*>(params, 0);
  auto* out = Param<int*>(params, 1);
  const int n = Param<int>(params, 2);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) out[i] = in[i] * 2 + 1;
  });
}

// extern "C" e2e_increment(unsigned* data, int n)
FERRY_E2E_HOST_KERNEL(e2e_increment) {
  auto* data = Param<unsigned*>(params, 0);
  const int n = Param<int>(params, 1);
  ForEachThreadX(launch, [&](long long i) {
    if (i < n) data[i] += 1;
  });
}

// extern "C" e2e_ring_step(unsigned long long head, int nodes): one thread
// walks the ring, adding 1 to each node's value.
FERRY_E2E_HOST_KERNEL(e2e_ring_step) {
  (void)launch;
  uint64_t at = Param<unsigned long long>(params, 0);
  const int nodes = Param<int>(params, 1);
  for (int i = 0; i < nodes; ++i) {
    auto* node = reinterpret_cast<uint64_t*>(at);
    node[1] += 1;
    at = node[0];
  }
}

// tick(unsigned* counter, int sleep_us): counter[0] += 1 after sleep_us of
// work (a sleep stands in for a slow kernel). When ferryd's environment
// names FERRY_E2E_TICK_FILE, each run also appends one byte there, so a test
// can count how many launches ran even after their session's memory is gone.
FERRY_E2E_HOST_KERNEL(_Z4tickPji) {
  (void)launch;
  auto* counter = Param<unsigned*>(params, 0);
  const int sleep_us = Param<int>(params, 1);
  std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
  *counter += 1;
  if (const char* path = std::getenv("FERRY_E2E_TICK_FILE"); path != nullptr) {
    const int fd = ::open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
      (void)!::write(fd, "t", 1);
      ::close(fd);
    }
  }
}
