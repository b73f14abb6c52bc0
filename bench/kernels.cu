// The kernels ferry-bench launches. extern "C" keeps the names plain, so the
// host implementations in host_kernels.cc are ferry_host_<name>.
extern "C" __global__ void ferry_bench_empty() {}
