// e2e program 2, memory: allocation and every kind of copy and memset.
// Checks cuMemAlloc/Free (and that a zero-byte allocation fails),
// cuMemGetInfo (free memory drops after a 64 MiB allocation),
// cuMemGetAddressRange, cuMemAllocPitch, pinned host memory (cuMemAllocHost,
// cuMemHostAlloc, cuMemHostRegister/Unregister, cuMemFreeHost), synchronous
// copies HtoD / DtoH / DtoD (large, odd-sized and unaligned), cuMemcpy on
// unified addresses, cuMemcpy2D HtoD / DtoD / DtoH with distinct pitches and
// offsets (bytes outside the rectangle stay untouched), the Async form of
// each on a stream with pinned memory, memsets D8/D16/D32 (sync, async, 2D)
// at unaligned offsets, and cuPointerGetAttribute(s). Exits 0 when every
// check passes.
#include <cuda.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "driver_check.h"

namespace {

using ::ferry::e2e::Ok;
using ::ferry::e2e::Pattern;

constexpr size_t kMiB = size_t{1} << 20;

CUdeviceptr AsDevicePtr(const void* p) { return reinterpret_cast<CUdeviceptr>(p); }

void CheckAllocAndInfo() {
  size_t free_before = 0, total_before = 0;
  E2E_CHECK_CU(cuMemGetInfo(&free_before, &total_before));
  E2E_CHECK(total_before > 0 && free_before <= total_before, "cuMemGetInfo: free %zu, total %zu",
            free_before, total_before);
  Ok("cuMemGetInfo: free %zu of %zu", free_before, total_before);

  const size_t size = 64 * kMiB;
  CUdeviceptr d = 0;
  E2E_CHECK_CU(cuMemAlloc(&d, size));
  E2E_CHECK(d != 0, "cuMemAlloc returned a null pointer");
  size_t free_after = 0, total_after = 0;
  E2E_CHECK_CU(cuMemGetInfo(&free_after, &total_after));
  E2E_CHECK(total_after == total_before, "total changed: %zu -> %zu", total_before, total_after);
  E2E_CHECK(free_after < free_before, "free did not drop after a 64 MiB allocation: %zu -> %zu",
            free_before, free_after);
  Ok("free dropped by %zu bytes after cuMemAlloc(64 MiB)", free_before - free_after);

  CUdeviceptr base = 0;
  size_t range_size = 0;
  E2E_CHECK_CU(cuMemGetAddressRange(&base, &range_size, d + 12345));
  E2E_CHECK(base == d && range_size == size,
            "cuMemGetAddressRange(d + 12345) = [0x%llx, +%zu), expected "
            "[0x%llx, +%zu)",
            static_cast<unsigned long long>(base), range_size, static_cast<unsigned long long>(d),
            size);
  Ok("cuMemGetAddressRange of an interior pointer gives the allocation");
  E2E_CHECK_CU(cuMemFree(d));

  E2E_EXPECT_CU(CUDA_ERROR_INVALID_VALUE, cuMemAlloc(&d, 0));
}

void CheckLinearCopies() {
  const size_t n = 24 * kMiB + 13;  // large and odd-sized
  std::vector<uint8_t> src = Pattern(n, 1);
  CUdeviceptr d1 = 0, d2 = 0;
  E2E_CHECK_CU(cuMemAlloc(&d1, n));
  E2E_CHECK_CU(cuMemAlloc(&d2, n));

  E2E_CHECK_CU(cuMemcpyHtoD(d1, src.data(), n));
  std::vector<uint8_t> back(n, 0);
  E2E_CHECK_CU(cuMemcpyDtoH(back.data(), d1, n));
  E2E_CHECK_BYTES(back.data(), src.data(), n, "HtoD then DtoH");

  E2E_CHECK_CU(cuMemcpyDtoD(d2, d1, n));
  std::fill(back.begin(), back.end(), 0);
  E2E_CHECK_CU(cuMemcpyDtoH(back.data(), d2, n));
  E2E_CHECK_BYTES(back.data(), src.data(), n, "DtoD then DtoH");

  // Unaligned offsets on both sides; the bytes around them stay as they were.
  const size_t window = 2048, patch_size = 1001;
  std::vector<uint8_t> patch = Pattern(patch_size, 2);
  E2E_CHECK_CU(cuMemcpyHtoD(d1 + 3, patch.data(), patch_size));
  std::vector<uint8_t> expected(src.begin(), src.begin() + window);
  std::memcpy(expected.data() + 3, patch.data(), patch_size);
  std::vector<uint8_t> got(window, 0);
  E2E_CHECK_CU(cuMemcpyDtoH(got.data(), d1, window));
  E2E_CHECK_BYTES(got.data(), expected.data(), window,
                  "HtoD at offset 3 leaves its neighbours alone");

  E2E_CHECK_CU(cuMemcpyDtoD(d2 + 5, d1 + 3, patch_size));
  expected.assign(src.begin(), src.begin() + window);
  std::memcpy(expected.data() + 5, patch.data(), patch_size);
  E2E_CHECK_CU(cuMemcpyDtoH(got.data(), d2, window));
  E2E_CHECK_BYTES(got.data(), expected.data(), window, "DtoD from offset 3 to offset 5");

  // DtoH from an interior offset.
  E2E_CHECK_CU(cuMemcpyDtoH(got.data(), d1 + n - window, window));
  E2E_CHECK_BYTES(got.data(), src.data() + n - window, window, "DtoH of the last 2048 bytes");

  E2E_CHECK_CU(cuMemFree(d1));
  E2E_CHECK_CU(cuMemFree(d2));
}

void CheckUnifiedCopies() {
  // cuMemcpy infers each direction from the address (unified addressing);
  // host buffers are pinned, so the driver knows them.
  const size_t n = kMiB + 7;
  void* h1 = nullptr;
  void* h2 = nullptr;
  E2E_CHECK_CU(cuMemAllocHost(&h1, n));
  E2E_CHECK_CU(cuMemAllocHost(&h2, n));
  ferry::e2e::FillPattern(h1, n, 3);
  std::memset(h2, 0, n);
  CUdeviceptr d1 = 0, d2 = 0;
  E2E_CHECK_CU(cuMemAlloc(&d1, n));
  E2E_CHECK_CU(cuMemAlloc(&d2, n));
  E2E_CHECK_CU(cuMemcpy(d1, AsDevicePtr(h1), n));  // host -> device
  E2E_CHECK_CU(cuMemcpy(d2, d1, n));               // device -> device
  E2E_CHECK_CU(cuMemcpy(AsDevicePtr(h2), d2, n));  // device -> host
  E2E_CHECK_BYTES(h2, h1, n, "cuMemcpy host -> device -> device -> host");
  E2E_CHECK_CU(cuMemFree(d1));
  E2E_CHECK_CU(cuMemFree(d2));
  E2E_CHECK_CU(cuMemFreeHost(h1));
  E2E_CHECK_CU(cuMemFreeHost(h2));
}

// One end of a 2D copy: host memory or device memory, rows `pitch` apart.
struct End2D {
  CUmemorytype type;
  const void* host;
  CUdeviceptr device;
  size_t pitch;
};
End2D Host2D(const void* host, size_t pitch) { return {CU_MEMORYTYPE_HOST, host, 0, pitch}; }
End2D Device2D(CUdeviceptr device, size_t pitch) {
  return {CU_MEMORYTYPE_DEVICE, nullptr, device, pitch};
}

// A 2D copy of `width` x `height` bytes from `src` to `dst`, both at (0, 0);
// a host destination must be writable.
CUDA_MEMCPY2D Copy2D(size_t width, size_t height, End2D src, End2D dst) {
  return CUDA_MEMCPY2D{.srcXInBytes = 0,
                       .srcY = 0,
                       .srcMemoryType = src.type,
                       .srcHost = src.host,
                       .srcDevice = src.device,
                       .srcArray = nullptr,
                       .srcPitch = src.pitch,
                       .dstXInBytes = 0,
                       .dstY = 0,
                       .dstMemoryType = dst.type,
                       .dstHost = const_cast<void*>(dst.host),
                       .dstDevice = dst.device,
                       .dstArray = nullptr,
                       .dstPitch = dst.pitch,
                       .WidthInBytes = width,
                       .Height = height};
}

void CheckPitchedCopies() {
  const size_t width = 1000, height = 37;
  CUdeviceptr pitched = 0;
  size_t pitch = 0;
  E2E_CHECK_CU(cuMemAllocPitch(&pitched, &pitch, width, height, 4));
  E2E_CHECK(pitch >= width && pitch % 4 == 0, "pitch %zu for width %zu", pitch, width);
  Ok("cuMemAllocPitch(1000 x 37) pitch %zu", pitch);

  // Host rows 1024 bytes apart, device rows `pitch` apart.
  const size_t host_pitch = 1024;
  std::vector<uint8_t> src = Pattern(host_pitch * height, 4);
  CUDA_MEMCPY2D htod =
      Copy2D(width, height, Host2D(src.data(), host_pitch), Device2D(pitched, pitch));
  E2E_CHECK_CU(cuMemcpy2D(&htod));

  // Back to host rows 1100 bytes apart; the 100 bytes after each row keep
  // their guard value.
  const size_t back_pitch = 1100;
  const uint8_t kGuard = 0xEE;
  std::vector<uint8_t> back(back_pitch * height, kGuard);
  CUDA_MEMCPY2D dtoh =
      Copy2D(width, height, Device2D(pitched, pitch), Host2D(back.data(), back_pitch));
  E2E_CHECK_CU(cuMemcpy2D(&dtoh));
  std::vector<uint8_t> expected(back_pitch * height, kGuard);
  for (size_t row = 0; row < height; ++row) {
    std::memcpy(&expected[row * back_pitch], &src[row * host_pitch], width);
  }
  E2E_CHECK_BYTES(back.data(), expected.data(), back.size(),
                  "cuMemcpy2D HtoD (pitch 1024) then DtoH (pitch 1100)");

  // DtoD of a sub-rectangle: source offset x 8, y 2 into another pitched
  // allocation at x 0, y 0.
  CUdeviceptr pitched2 = 0;
  size_t pitch2 = 0;
  E2E_CHECK_CU(cuMemAllocPitch(&pitched2, &pitch2, width, height, 16));
  const size_t sub_width = width - 8, sub_height = height - 2;
  CUDA_MEMCPY2D dtod =
      Copy2D(sub_width, sub_height, Device2D(pitched, pitch), Device2D(pitched2, pitch2));
  dtod.srcXInBytes = 8;
  dtod.srcY = 2;
  E2E_CHECK_CU(cuMemcpy2D(&dtod));
  std::vector<uint8_t> sub(sub_width * sub_height, 0);
  CUDA_MEMCPY2D sub_back =
      Copy2D(sub_width, sub_height, Device2D(pitched2, pitch2), Host2D(sub.data(), sub_width));
  E2E_CHECK_CU(cuMemcpy2D(&sub_back));
  std::vector<uint8_t> sub_expected(sub.size());
  for (size_t row = 0; row < sub_height; ++row) {
    std::memcpy(&sub_expected[row * sub_width], &src[(row + 2) * host_pitch + 8], sub_width);
  }
  E2E_CHECK_BYTES(sub.data(), sub_expected.data(), sub.size(),
                  "cuMemcpy2D DtoD of a sub-rectangle at (8, 2)");

  // cuMemsetD2D32 over the whole pitched rectangle.
  const uint32_t kWord = 0x01020304u;
  E2E_CHECK_CU(cuMemsetD2D32(pitched2, pitch2, kWord, width / 4, height));
  std::vector<uint32_t> words(width / 4 * height, 0);
  CUDA_MEMCPY2D words_back =
      Copy2D(width, height, Device2D(pitched2, pitch2), Host2D(words.data(), width));
  E2E_CHECK_CU(cuMemcpy2D(&words_back));
  std::vector<uint32_t> words_expected(words.size(), kWord);
  E2E_CHECK_BYTES(words.data(), words_expected.data(), words.size() * sizeof(uint32_t),
                  "cuMemsetD2D32");

  E2E_CHECK_CU(cuMemFree(pitched));
  E2E_CHECK_CU(cuMemFree(pitched2));
}

void CheckPinnedHostMemory() {
  const size_t n = 4 * kMiB;
  void* allocated = nullptr;
  void* portable = nullptr;
  E2E_CHECK_CU(cuMemAllocHost(&allocated, n));
  E2E_CHECK_CU(cuMemHostAlloc(&portable, n, CU_MEMHOSTALLOC_PORTABLE));
  E2E_CHECK(allocated != nullptr && portable != nullptr, "null pinned pointer");
  ferry::e2e::FillPattern(allocated, n, 6);  // the memory is writable
  std::memset(portable, 0, n);
  CUdeviceptr d = 0;
  E2E_CHECK_CU(cuMemAlloc(&d, n));
  E2E_CHECK_CU(cuMemcpyHtoD(d, allocated, n));
  E2E_CHECK_CU(cuMemcpyDtoH(portable, d, n));
  E2E_CHECK_BYTES(portable, allocated, n, "cuMemAllocHost -> device -> cuMemHostAlloc(PORTABLE)");

  // Register ordinary page-aligned memory, copy through it, unregister.
  const size_t registered_size = kMiB;
  void* registered = std::aligned_alloc(4096, registered_size);
  E2E_CHECK(registered != nullptr, "aligned_alloc failed");
  E2E_CHECK_CU(cuMemHostRegister(registered, registered_size, CU_MEMHOSTREGISTER_PORTABLE));
  ferry::e2e::FillPattern(registered, registered_size, 7);
  std::vector<uint8_t> expected(static_cast<uint8_t*>(registered),
                                static_cast<uint8_t*>(registered) + registered_size);
  E2E_CHECK_CU(cuMemcpyHtoD(d, registered, registered_size));
  std::memset(registered, 0, registered_size);
  E2E_CHECK_CU(cuMemcpyDtoH(registered, d, registered_size));
  E2E_CHECK_BYTES(registered, expected.data(), registered_size,
                  "copies through cuMemHostRegister'ed memory");
  E2E_CHECK_CU(cuMemHostUnregister(registered));
  std::free(registered);

  E2E_CHECK_CU(cuMemFree(d));
  E2E_CHECK_CU(cuMemFreeHost(allocated));
  E2E_CHECK_CU(cuMemFreeHost(portable));
}

void CheckAsyncCopies() {
  CUstream stream = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  const size_t n = 2 * kMiB + 3;
  uint8_t* source = nullptr;
  uint8_t* via_dtoh = nullptr;
  uint8_t* via_unified = nullptr;
  uint8_t* memsets = nullptr;
  E2E_CHECK_CU(cuMemAllocHost(reinterpret_cast<void**>(&source), n));
  E2E_CHECK_CU(cuMemAllocHost(reinterpret_cast<void**>(&via_dtoh), n));
  E2E_CHECK_CU(cuMemAllocHost(reinterpret_cast<void**>(&via_unified), n));
  E2E_CHECK_CU(cuMemAllocHost(reinterpret_cast<void**>(&memsets), 400));
  ferry::e2e::FillPattern(source, n, 8);
  std::memset(via_dtoh, 0, n);
  std::memset(via_unified, 0, n);
  std::memset(memsets, 0, 400);
  CUdeviceptr d1 = 0, d2 = 0, d3 = 0;
  E2E_CHECK_CU(cuMemAlloc(&d1, n));
  E2E_CHECK_CU(cuMemAlloc(&d2, n));
  E2E_CHECK_CU(cuMemAlloc(&d3, n));

  // One stream, so each step sees the previous one's result.
  E2E_CHECK_CU(cuMemcpyHtoDAsync(d1, source, n, stream));
  E2E_CHECK_CU(cuMemcpyDtoDAsync(d2, d1, n, stream));
  E2E_CHECK_CU(cuMemcpyDtoHAsync(via_dtoh, d2, n, stream));
  E2E_CHECK_CU(cuMemcpyAsync(d3, d2, n, stream));
  E2E_CHECK_CU(cuMemcpyAsync(AsDevicePtr(via_unified), d3, n, stream));

  // Memsets at the start of d1, then read back 400 bytes.
  E2E_CHECK_CU(cuMemsetD8Async(d1, 0x11, 100, stream));
  E2E_CHECK_CU(cuMemsetD16Async(d1 + 100, 0x2233, 50, stream));
  E2E_CHECK_CU(cuMemsetD32Async(d1 + 200, 0x44556677u, 25, stream));
  E2E_CHECK_CU(cuMemcpyDtoHAsync(memsets, d1, 400, stream));

  // 2D: 300 x 20 from pinned host (pitch 320) to d3 (pitch 512) and back
  // (pitch 300).
  const size_t width = 300, height = 20;
  uint8_t* rect_src = nullptr;
  uint8_t* rect_back = nullptr;
  E2E_CHECK_CU(cuMemAllocHost(reinterpret_cast<void**>(&rect_src), 320 * height));
  E2E_CHECK_CU(cuMemAllocHost(reinterpret_cast<void**>(&rect_back), width * height));
  ferry::e2e::FillPattern(rect_src, 320 * height, 9);
  std::memset(rect_back, 0, width * height);
  CUDA_MEMCPY2D htod = Copy2D(width, height, Host2D(rect_src, 320), Device2D(d3, 512));
  E2E_CHECK_CU(cuMemcpy2DAsync(&htod, stream));
  CUDA_MEMCPY2D dtoh = Copy2D(width, height, Device2D(d3, 512), Host2D(rect_back, width));
  E2E_CHECK_CU(cuMemcpy2DAsync(&dtoh, stream));

  E2E_CHECK_CU(cuStreamSynchronize(stream));
  E2E_CHECK_BYTES(via_dtoh, source, n, "async HtoD -> DtoD -> DtoH on one stream");
  E2E_CHECK_BYTES(via_unified, source, n, "async cuMemcpyAsync device -> device -> host");
  std::vector<uint8_t> expected(source, source + 400);
  std::memset(expected.data(), 0x11, 100);
  for (size_t i = 100; i < 200; i += 2) {
    expected[i] = 0x33;  // little-endian 0x2233
    expected[i + 1] = 0x22;
  }
  for (size_t i = 200; i < 300; i += 4) {
    const uint32_t word = 0x44556677u;
    std::memcpy(&expected[i], &word, 4);
  }
  E2E_CHECK_BYTES(memsets, expected.data(), 400,
                  "cuMemsetD8/D16/D32Async (bytes 300..399 untouched)");
  std::vector<uint8_t> rect_expected(width * height);
  for (size_t row = 0; row < height; ++row) {
    std::memcpy(&rect_expected[row * width], &rect_src[row * 320], width);
  }
  E2E_CHECK_BYTES(rect_back, rect_expected.data(), width * height,
                  "cuMemcpy2DAsync HtoD then DtoH");

  E2E_CHECK_CU(cuMemFree(d1));
  E2E_CHECK_CU(cuMemFree(d2));
  E2E_CHECK_CU(cuMemFree(d3));
  for (void* p :
       {static_cast<void*>(source), static_cast<void*>(via_dtoh), static_cast<void*>(via_unified),
        static_cast<void*>(memsets), static_cast<void*>(rect_src), static_cast<void*>(rect_back)}) {
    E2E_CHECK_CU(cuMemFreeHost(p));
  }
  E2E_CHECK_CU(cuStreamDestroy(stream));
}

void CheckMemsets() {
  const size_t n = 4096;
  CUdeviceptr d = 0;
  E2E_CHECK_CU(cuMemAlloc(&d, n));
  E2E_CHECK_CU(cuMemsetD8(d, 0, n));
  E2E_CHECK_CU(cuMemsetD8(d + 1, 0xA5, 1001));            // odd start
  E2E_CHECK_CU(cuMemsetD16(d + 1010, 0xBEEF, 333));       // 2-aligned
  E2E_CHECK_CU(cuMemsetD32(d + 1700, 0xDEADBEEFu, 555));  // 4-aligned
  std::vector<uint8_t> expected(n, 0);
  std::memset(&expected[1], 0xA5, 1001);
  for (size_t i = 0; i < 333; ++i) {
    const uint16_t half = 0xBEEF;
    std::memcpy(&expected[1010 + 2 * i], &half, 2);
  }
  for (size_t i = 0; i < 555; ++i) {
    const uint32_t word = 0xDEADBEEFu;
    std::memcpy(&expected[1700 + 4 * i], &word, 4);
  }
  std::vector<uint8_t> got(n, 0xFF);
  E2E_CHECK_CU(cuMemcpyDtoH(got.data(), d, n));
  E2E_CHECK_BYTES(got.data(), expected.data(), n, "cuMemsetD8/D16/D32 at offsets 1, 1010, 1700");
  E2E_CHECK_CU(cuMemFree(d));
}

// Memory is allocated in device 0's primary context.
void CheckPointerAttributes() {
  const size_t size = 2 * kMiB;  // a whole allocation granule
  CUdeviceptr d = 0;
  E2E_CHECK_CU(cuMemAlloc(&d, size));

  unsigned int memory_type = 0;
  E2E_CHECK_CU(cuPointerGetAttribute(&memory_type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, d + 100));
  E2E_CHECK(memory_type == CU_MEMORYTYPE_DEVICE, "memory type %u", memory_type);
  CUdeviceptr start = 0;
  E2E_CHECK_CU(cuPointerGetAttribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, d + 100));
  E2E_CHECK(start == d, "range start 0x%llx, expected 0x%llx",
            static_cast<unsigned long long>(start), static_cast<unsigned long long>(d));
  size_t range_size = 0;
  E2E_CHECK_CU(cuPointerGetAttribute(&range_size, CU_POINTER_ATTRIBUTE_RANGE_SIZE, d + 100));
  E2E_CHECK(range_size == size, "range size %zu, expected %zu", range_size, size);
  Ok("cuPointerGetAttribute: device memory, range start and size");

  CUpointer_attribute attributes[] = {
      CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
      CU_POINTER_ATTRIBUTE_RANGE_SIZE, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL};
  memory_type = 0;
  start = 0;
  range_size = 0;
  int ordinal = -1;
  void* data[] = {&memory_type, &start, &range_size, &ordinal};
  E2E_CHECK_CU(cuPointerGetAttributes(4, attributes, data, d + size - 1));
  E2E_CHECK(memory_type == CU_MEMORYTYPE_DEVICE && start == d && range_size == size && ordinal == 0,
            "cuPointerGetAttributes: type %u, start 0x%llx, size %zu, "
            "ordinal %d",
            memory_type, static_cast<unsigned long long>(start), range_size, ordinal);
  Ok("cuPointerGetAttributes on the last byte of the allocation");

  void* pinned = nullptr;
  E2E_CHECK_CU(cuMemAllocHost(&pinned, 4096));
  memory_type = 0;
  E2E_CHECK_CU(
      cuPointerGetAttribute(&memory_type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, AsDevicePtr(pinned)));
  E2E_CHECK(memory_type == CU_MEMORYTYPE_HOST, "pinned host memory type %u, expected %d",
            memory_type, CU_MEMORYTYPE_HOST);
  Ok("cuPointerGetAttribute: pinned memory is host memory");
  E2E_CHECK_CU(cuMemFreeHost(pinned));
  E2E_CHECK_CU(cuMemFree(d));
}

}  // namespace

int main() {
  ferry::e2e::PrimaryContext primary = ferry::e2e::SetUpPrimaryContext();
  CheckAllocAndInfo();
  CheckLinearCopies();
  CheckUnifiedCopies();
  CheckPitchedCopies();
  CheckPinnedHostMemory();
  CheckAsyncCopies();
  CheckMemsets();
  CheckPointerAttributes();
  E2E_CHECK_CU(cuCtxSynchronize());
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(primary.device));
  std::printf("memory: all checks passed\n");
  return 0;
}
