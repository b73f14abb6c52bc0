// Batched copies through the CUDA runtime: cudaMemcpyBatchAsync (host to
// device, device to device, device to host, with attribute ranges) and
// cudaMemcpy3DBatchAsync (pointers with row lengths and layer heights, to and
// from a CUDA array), checked by value; a refused batch (the legacy stream,
// bad attributes, a copy past its allocation, flags) queues none of its
// copies.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "runtime_check.h"

namespace {

cudaMemcpyAttributes Attributes(cudaMemcpySrcAccessOrder order) {
  cudaMemcpyAttributes a = {};
  a.srcAccessOrder = order;
  return a;
}

std::vector<uint32_t> Pattern(size_t n, uint32_t seed) {
  std::vector<uint32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = seed * 1000003u + static_cast<uint32_t>(i);
  return v;
}

cudaMemcpy3DOperand PointerOperand(void* p, size_t row_length, size_t layer_height) {
  cudaMemcpy3DOperand o = {};
  o.type = cudaMemcpyOperandTypePointer;
  o.op.ptr.ptr = p;
  o.op.ptr.rowLength = row_length;
  o.op.ptr.layerHeight = layer_height;
  return o;
}

cudaMemcpy3DOperand ArrayOperand(cudaArray_t array, size_t x, size_t y) {
  cudaMemcpy3DOperand o = {};
  o.type = cudaMemcpyOperandTypeArray;
  o.op.array.array = array;
  o.op.array.offset = {x, y, 0};
  return o;
}

}  // namespace

int main() {
  cudaStream_t stream;
  RT_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  constexpr size_t kWords = 1024;
  constexpr size_t kBytes = kWords * sizeof(uint32_t);
  uint32_t *d1 = nullptr, *d2 = nullptr, *d3 = nullptr;
  RT_CHECK(cudaMalloc(&d1, kBytes));
  RT_CHECK(cudaMalloc(&d2, kBytes));
  RT_CHECK(cudaMalloc(&d3, kBytes));

  // Two host-to-device copies from pageable memory, read during the call.
  const std::vector<uint32_t> a = Pattern(kWords, 1), b = Pattern(kWords, 2);
  {
    void* dsts[] = {d1, d2};
    const void* srcs[] = {a.data(), b.data()};
    size_t sizes[] = {kBytes, kBytes};
    cudaMemcpyAttributes attrs[] = {Attributes(cudaMemcpySrcAccessOrderDuringApiCall)};
    size_t idxs[] = {0};
    RT_CHECK(cudaMemcpyBatchAsync(dsts, srcs, sizes, 2, attrs, idxs, 1, stream));
  }
  // Device to device and device to host (pageable and page-locked), two
  // attribute ranges.
  std::vector<uint32_t> out2(kWords, 0);
  uint32_t* pinned = nullptr;
  RT_CHECK(cudaMallocHost(&pinned, kBytes));
  {
    void* dsts[] = {d3, out2.data(), pinned};
    const void* srcs[] = {d1, d2, d1};
    size_t sizes[] = {kBytes, kBytes, kBytes / 2};
    cudaMemcpyAttributes attrs[] = {Attributes(cudaMemcpySrcAccessOrderStream),
                                    Attributes(cudaMemcpySrcAccessOrderAny)};
    size_t idxs[] = {0, 1};
    RT_CHECK(cudaMemcpyBatchAsync(dsts, srcs, sizes, 3, attrs, idxs, 2, stream));
  }
  RT_CHECK(cudaStreamSynchronize(stream));
  RT_EXPECT(out2 == b);
  for (size_t i = 0; i < kWords / 2; ++i) RT_EXPECT(pinned[i] == a[i]);
  std::vector<uint32_t> out3(kWords, 0);
  RT_CHECK(cudaMemcpy(out3.data(), d3, kBytes, cudaMemcpyDeviceToHost));
  RT_EXPECT(out3 == a);

  // Refused batches queue nothing: d2 keeps b.
  const std::vector<uint32_t> c = Pattern(kWords, 3);
  {
    void* dsts[] = {d2, reinterpret_cast<char*>(d1) + kBytes - 16};
    const void* srcs[] = {c.data(), c.data()};
    size_t sizes[] = {kBytes, 64};  // the second runs past d1
    cudaMemcpyAttributes good[] = {Attributes(cudaMemcpySrcAccessOrderStream)};
    cudaMemcpyAttributes invalid[] = {Attributes(cudaMemcpySrcAccessOrderInvalid)};
    size_t idxs[] = {0}, bad_idxs[] = {1};
    RT_EXPECT(cudaMemcpyBatchAsync(dsts, srcs, sizes, 2, good, idxs, 1, stream) ==
              cudaErrorInvalidValue);
    RT_EXPECT(cudaMemcpyBatchAsync(dsts, srcs, sizes, 1, invalid, idxs, 1, stream) ==
              cudaErrorInvalidValue);
    RT_EXPECT(cudaMemcpyBatchAsync(dsts, srcs, sizes, 1, good, bad_idxs, 1, stream) ==
              cudaErrorInvalidValue);
    RT_EXPECT(cudaMemcpyBatchAsync(dsts, srcs, sizes, 1, good, idxs, 1, cudaStreamLegacy) ==
              cudaErrorInvalidValue);
    (void)cudaGetLastError();
  }
  RT_CHECK(cudaStreamSynchronize(stream));
  RT_CHECK(cudaMemcpy(out2.data(), d2, kBytes, cudaMemcpyDeviceToHost));
  RT_EXPECT(out2 == b);

  // 3D batch: a 16 x 8 block of words from host rows of 20 words into a 2D
  // array at (2, 1), then from the array into device memory packed, and
  // pointer to pointer with layers.
  constexpr size_t kW = 16, kH = 8, kRow = 20;
  cudaChannelFormatDesc format = cudaCreateChannelDesc<uint32_t>();
  cudaArray_t array = nullptr;
  RT_CHECK(cudaMallocArray(&array, &format, 32, 16));
  std::vector<uint32_t> rows = Pattern(kRow * kH, 4);
  uint32_t* packed = nullptr;
  RT_CHECK(cudaMalloc(&packed, kW * kH * sizeof(uint32_t)));
  {
    cudaMemcpy3DBatchOp ops[2] = {};
    ops[0].src = PointerOperand(rows.data(), kRow, 0);
    ops[0].dst = ArrayOperand(array, 2, 1);
    ops[0].extent = make_cudaExtent(kW, kH, 1);
    ops[0].srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    RT_CHECK(cudaMemcpy3DBatchAsync(1, ops, 0, stream));
    ops[1].src = ArrayOperand(array, 2, 1);
    ops[1].dst = PointerOperand(packed, 0, 0);
    ops[1].extent = make_cudaExtent(kW, kH, 1);
    ops[1].srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    RT_CHECK(cudaMemcpy3DBatchAsync(1, ops + 1, 0, stream));
    // Refused: flags, an extent of 0, an offset past the array.
    RT_EXPECT(cudaMemcpy3DBatchAsync(1, ops, 1, stream) == cudaErrorInvalidValue);
    cudaMemcpy3DBatchOp empty = ops[0];
    empty.extent = make_cudaExtent(0, kH, 1);
    RT_EXPECT(cudaMemcpy3DBatchAsync(1, &empty, 0, stream) == cudaErrorInvalidValue);
    cudaMemcpy3DBatchOp outside = ops[0];
    outside.dst = ArrayOperand(array, 20, 1);  // 20 + 16 > 32
    RT_EXPECT(cudaMemcpy3DBatchAsync(1, &outside, 0, stream) == cudaErrorInvalidValue);
    (void)cudaGetLastError();
  }
  std::vector<uint32_t> block(kW * kH, 0);
  RT_CHECK(cudaMemcpyAsync(block.data(), packed, block.size() * sizeof(uint32_t),
                           cudaMemcpyDeviceToHost, stream));
  RT_CHECK(cudaStreamSynchronize(stream));
  for (size_t y = 0; y < kH; ++y) {
    for (size_t x = 0; x < kW; ++x) RT_EXPECT(block[y * kW + x] == rows[y * kRow + x]);
  }
  // Pointer to pointer, two layers of 4 rows of 8 bytes, from a host layout
  // with 12-byte rows and 5-row layers into device memory packed.
  {
    std::vector<uint8_t> layered(12 * 5 * 2);
    for (size_t i = 0; i < layered.size(); ++i) layered[i] = static_cast<uint8_t>(i * 7);
    cudaMemcpy3DBatchOp op = {};
    op.src = PointerOperand(layered.data(), 12, 5);
    op.dst = PointerOperand(d3, 0, 0);
    op.extent = make_cudaExtent(8, 4, 2);
    op.srcAccessOrder = cudaMemcpySrcAccessOrderDuringApiCall;
    RT_CHECK(cudaMemcpy3DBatchAsync(1, &op, 0, stream));
    std::vector<uint8_t> got(8 * 4 * 2);
    RT_CHECK(cudaMemcpyAsync(got.data(), d3, got.size(), cudaMemcpyDeviceToHost, stream));
    RT_CHECK(cudaStreamSynchronize(stream));
    for (size_t z = 0; z < 2; ++z) {
      for (size_t y = 0; y < 4; ++y) {
        for (size_t x = 0; x < 8; ++x) {
          RT_EXPECT(got[(z * 4 + y) * 8 + x] == layered[(z * 5 + y) * 12 + x]);
        }
      }
    }
  }

  RT_CHECK(cudaFreeArray(array));
  RT_CHECK(cudaFree(packed));
  RT_CHECK(cudaFreeHost(pinned));
  RT_CHECK(cudaFree(d1));
  RT_CHECK(cudaFree(d2));
  RT_CHECK(cudaFree(d3));
  RT_CHECK(cudaStreamDestroy(stream));
  std::printf("all checks passed\n");
  return 0;
}
