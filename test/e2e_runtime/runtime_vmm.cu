// Virtual memory management and registered host memory through an nvcc-built
// runtime program, on a slice of a pool (ferryd runs with runtime_pools.toml:
// a quarter of the device), so physical memory past the slice's quota fails:
// reserve a range, create two physical allocations, map them side by side, set
// access, a kernel writing across both and a copy reading them back, a second
// mapping of one allocation aliasing its bytes, copies into reserved but
// unmapped (or inaccessible) addresses refused, retained handles and
// properties, quota kept by a released but still mapped allocation; then
// cuMemHostRegister'ed memory with async copies on a stream.
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "runtime_check.h"
#include "runtime_kernels.cuh"

namespace {

CUmemAllocationProp PinnedOnDevice0() {
  CUmemAllocationProp prop;
  std::memset(&prop, 0, sizeof(prop));
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 0;
  return prop;
}

void SetReadWrite(CUdeviceptr address, size_t bytes) {
  CUmemAccessDesc access;
  std::memset(&access, 0, sizeof(access));
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = 0;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  RT_CHECK_CU(cuMemSetAccess(address, bytes, &access, 1));
}

// Element i of [address, address + count * 4) must be first + i.
void ExpectCounting(CUdeviceptr address, size_t count, unsigned first) {
  std::vector<unsigned> out(count);
  RT_CHECK(cudaMemcpy(out.data(), reinterpret_cast<void*>(address), count * sizeof(unsigned),
                      cudaMemcpyDefault));
  for (size_t i = 0; i < count; ++i) RT_EXPECT(out[i] == first + static_cast<unsigned>(i));
}

void VirtualMemory() {
  CUdevice device;
  RT_CHECK_CU(cuDeviceGet(&device, 0));
  int supported = 0;
  RT_CHECK_CU(cuDeviceGetAttribute(
      &supported, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, device));
  RT_EXPECT(supported == 1);
  const CUmemAllocationProp prop = PinnedOnDevice0();
  size_t granularity = 0, recommended = 0;
  RT_CHECK_CU(cuMemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
  RT_CHECK_CU(
      cuMemGetAllocationGranularity(&recommended, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
  RT_EXPECT(granularity > 0 && recommended >= granularity && recommended % granularity == 0);

  // Two allocations side by side in a range of three chunks.
  const size_t chunk = granularity * 4;
  const size_t count = chunk / sizeof(unsigned);  // elements per chunk
  CUdeviceptr range = 0;
  RT_CHECK_CU(cuMemAddressReserve(&range, 3 * chunk, 0, 0, 0));
  RT_EXPECT(range != 0 && range % granularity == 0);
  CUmemGenericAllocationHandle first = 0, second = 0;
  RT_CHECK_CU(cuMemCreate(&first, chunk, &prop, 0));
  RT_CHECK_CU(cuMemCreate(&second, chunk, &prop, 0));
  RT_EXPECT(first != second);
  RT_CHECK_CU(cuMemMap(range, chunk, 0, first, 0));
  RT_CHECK_CU(cuMemMap(range + chunk, chunk, 0, second, 0));
  RT_EXPECT(cuMemMap(range + chunk, chunk, 0, first, 0) == CUDA_ERROR_INVALID_VALUE);  // taken

  // Mapped but without access, and reserved but unmapped: not memory yet.
  std::vector<unsigned> host(2 * count, 0);
  RT_EXPECT(cuMemcpyHtoD(range, host.data(), 16) == CUDA_ERROR_INVALID_VALUE);
  RT_EXPECT(cuMemcpyHtoD(range + 2 * chunk, host.data(), 16) == CUDA_ERROR_INVALID_VALUE);
  RT_EXPECT(cuMemsetD32(range, 0, 4) == CUDA_ERROR_INVALID_VALUE);

  SetReadWrite(range, 2 * chunk);
  CUmemLocation location = prop.location;
  unsigned long long flags = 0;
  RT_CHECK_CU(cuMemGetAccess(&flags, &location, range + chunk + 8));
  RT_EXPECT(flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
  // The third chunk is still only reserved.
  RT_EXPECT(cuMemcpyHtoD(range + 2 * chunk - 8, host.data(), 16) == CUDA_ERROR_INVALID_VALUE);

  // A kernel writes across both mappings; a copy reads across both.
  const int n = static_cast<int>(2 * count);
  rt_iota<<<(n + 255) / 256, 256>>>(reinterpret_cast<unsigned*>(range), 7u, n);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaDeviceSynchronize());
  ExpectCounting(range, 2 * count, 7);
  std::printf("kernel and copy across two mappings: ok\n");

  // A second mapping of `second` elsewhere aliases its bytes both ways.
  CUdeviceptr alias = 0;
  RT_CHECK_CU(cuMemAddressReserve(&alias, chunk, 0, 0, 0));
  RT_CHECK_CU(cuMemMap(alias, chunk, 0, second, 0));
  SetReadWrite(alias, chunk);
  ExpectCounting(alias, count, 7 + static_cast<unsigned>(count));
  RT_CHECK_CU(cuMemsetD32(alias, 0xabcdu, count));
  RT_CHECK(cudaDeviceSynchronize());
  std::vector<unsigned> through_first_range(count);
  RT_CHECK_CU(cuMemcpyDtoH(through_first_range.data(), range + chunk, chunk));
  for (unsigned v : through_first_range) RT_EXPECT(v == 0xabcdu);
  std::printf("second mapping aliases the bytes: ok\n");

  // The handle behind an address, and the properties behind a handle.
  CUmemGenericAllocationHandle retained = 0;
  RT_CHECK_CU(cuMemRetainAllocationHandle(&retained, reinterpret_cast<void*>(alias + 64)));
  RT_EXPECT(retained == second);
  RT_CHECK_CU(cuMemRelease(retained));
  CUmemAllocationProp read_back;
  RT_CHECK_CU(cuMemGetAllocationPropertiesFromHandle(&read_back, first));
  RT_EXPECT(read_back.type == CU_MEM_ALLOCATION_TYPE_PINNED &&
            read_back.location.type == CU_MEM_LOCATION_TYPE_DEVICE && read_back.location.id == 0);

  // Access taken away, then an unmapped chunk: copies refused again.
  CUmemAccessDesc none;
  std::memset(&none, 0, sizeof(none));
  none.location = prop.location;
  none.flags = CU_MEM_ACCESS_FLAGS_PROT_NONE;
  RT_CHECK_CU(cuMemSetAccess(alias, chunk, &none, 1));
  RT_EXPECT(cuMemcpyDtoH(host.data(), alias, 16) == CUDA_ERROR_INVALID_VALUE);
  RT_CHECK_CU(cuMemUnmap(alias, chunk));
  RT_CHECK_CU(cuMemAddressFree(alias, chunk));
  RT_CHECK_CU(cuMemUnmap(range + chunk, chunk));
  RT_EXPECT(cuMemcpyDtoH(host.data(), range + chunk - 8, 16) == CUDA_ERROR_INVALID_VALUE);
  ExpectCounting(range, count, 7);  // the first mapping still holds its bytes
  RT_CHECK_CU(cuMemUnmap(range, chunk));
  RT_CHECK_CU(cuMemRelease(first));
  RT_CHECK_CU(cuMemRelease(second));
  RT_EXPECT(cuMemRelease(second) == CUDA_ERROR_INVALID_HANDLE);
  RT_CHECK_CU(cuMemAddressFree(range, 3 * chunk));
  std::printf("unmap, release, free: ok\n");

  // Physical memory counts against the slice's quota until it is released
  // and no mapping holds it.
  size_t total = 0;
  RT_CHECK_CU(cuDeviceTotalMem(&total, device));
  const size_t most = total / 5 * 3 / granularity * granularity;  // 60% of the slice
  CUmemGenericAllocationHandle big = 0, other = 0;
  RT_EXPECT(cuMemCreate(&other, (total / granularity + 1) * granularity, &prop, 0) ==
            CUDA_ERROR_OUT_OF_MEMORY);
  RT_CHECK_CU(cuMemCreate(&big, most, &prop, 0));
  RT_EXPECT(cuMemCreate(&other, most, &prop, 0) == CUDA_ERROR_OUT_OF_MEMORY);
  CUdeviceptr big_range = 0;
  RT_CHECK_CU(cuMemAddressReserve(&big_range, most, 0, 0, 0));
  RT_CHECK_CU(cuMemMap(big_range, most, 0, big, 0));
  RT_CHECK_CU(cuMemRelease(big));  // the mapping still holds it
  RT_EXPECT(cuMemCreate(&other, most, &prop, 0) == CUDA_ERROR_OUT_OF_MEMORY);
  RT_CHECK_CU(cuMemUnmap(big_range, most));
  RT_CHECK_CU(cuMemCreate(&other, most, &prop, 0));  // now it is back
  RT_CHECK_CU(cuMemRelease(other));
  RT_CHECK_CU(cuMemAddressFree(big_range, most));
  std::printf("quota of physical memory: ok\n");
}

void RegisteredHostMemory() {
  const int n = 1 << 16;
  const size_t bytes = n * sizeof(float);
  float* host = static_cast<float*>(std::aligned_alloc(4096, bytes));
  RT_EXPECT(host != nullptr);
  for (int i = 0; i < n; ++i) host[i] = static_cast<float>(i);
  RT_EXPECT(cuMemHostRegister(host, bytes, 0x80) == CUDA_ERROR_INVALID_VALUE);
  RT_CHECK_CU(cuMemHostRegister(host, bytes, CU_MEMHOSTREGISTER_PORTABLE));
  RT_EXPECT(cuMemHostRegister(host + 16, 64, 0) == CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
  unsigned flags = 0;
  RT_CHECK_CU(cuMemHostGetFlags(&flags, host + 3));
  RT_EXPECT(flags == CU_MEMHOSTREGISTER_PORTABLE);

  cudaStream_t stream;
  RT_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  float* device = nullptr;
  RT_CHECK(cudaMalloc(&device, bytes));
  RT_CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream));
  rt_scale<float><<<(n + 255) / 256, 256, 0, stream>>>(device, 3.0f, n);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream));
  RT_CHECK(cudaStreamSynchronize(stream));
  for (int i = 0; i < n; ++i) RT_EXPECT(host[i] == static_cast<float>(i) * 3.0f);
  std::printf("async copies through registered memory: ok\n");

  RT_CHECK(cudaFree(device));
  RT_CHECK(cudaStreamDestroy(stream));
  RT_CHECK_CU(cuMemHostUnregister(host));
  RT_EXPECT(cuMemHostUnregister(host) == CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED);
  std::free(host);
}

}  // namespace

int main() {
  RT_CHECK(cudaFree(nullptr));  // the runtime's primary context, current
  VirtualMemory();
  RegisteredHostMemory();
  std::printf("all checks passed\n");
  return 0;
}
