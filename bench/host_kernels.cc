// Host implementations of bench/kernels.cu for ferryd's host backend
// (`ferryd --host-kernels libferry_bench_host_kernels.so`), per
// server/backend/host/ferry_host_kernel.h. The empty kernel does nothing, so the
// pipelined launch rate measures ferry's path and not the kernel.
//
// Thread-safety: stateless.
#include "server/backend/host/ferry_host_kernel.h"

extern "C" __attribute__((visibility("default"))) void ferry_host_ferry_bench_empty(
    const ferry_launch* /*launch*/, void** /*params*/) {}
