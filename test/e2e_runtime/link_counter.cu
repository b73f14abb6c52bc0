// runtime_link's third JIT-link input (nvcc -rdc=true --ptx): a kernel whose
// counter no input defines; the link's global symbol table
// (CU_JIT_GLOBAL_SYMBOL_*) gives its address.
extern __device__ unsigned rt_link_counter;

extern "C" __global__ void rt_link_count() { atomicAdd(&rt_link_counter, 1u); }
