// A CUDA runtime program that captures work into a CUDA graph and replays it:
//   - no stream captures at first: cudaStreamIsCapturing and
//     cudaStreamGetCaptureInfo answer cudaStreamCaptureStatusNone (on a
//     created stream and on the legacy stream), and the thread's capture mode
//     swaps through cudaThreadExchangeStreamCaptureMode;
//   - a capture of a memset, three kernel launches and a device-to-device copy
//     on a stream reports itself active (with an id), runs nothing, and ends
//     with a graph of five nodes; instantiated and launched kReplays times, it
//     accumulates kReplays times what one run adds;
//   - a graph built node by node (memset, kernel, copy, each after the one
//     before), then cloned, replays on the legacy stream;
//   - synchronizing a capturing stream fails with
//     cudaErrorStreamCaptureUnsupported, and the capture then ends with
//     cudaErrorStreamCaptureInvalidated and no graph.
// Prints "all checks passed", or the first failure.
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "runtime_check.h"
#include "runtime_kernels.cuh"

namespace {

constexpr int kN = 1000;
constexpr int kReplays = 7;
constexpr size_t kBytes = kN * sizeof(float);

}  // namespace

int main() {
  const int blocks = (kN + 255) / 256;
  cudaStream_t s;
  RT_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

  // Nothing captures.
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusActive;
  RT_CHECK(cudaStreamIsCapturing(s, &status));
  RT_EXPECT(status == cudaStreamCaptureStatusNone);
  status = cudaStreamCaptureStatusActive;
  RT_CHECK(cudaStreamIsCapturing(0, &status));
  RT_EXPECT(status == cudaStreamCaptureStatusNone);
  unsigned long long capture_id = 0;
  RT_CHECK(cudaStreamGetCaptureInfo(s, &status, &capture_id));
  RT_EXPECT(status == cudaStreamCaptureStatusNone);
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  RT_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  RT_EXPECT(mode == cudaStreamCaptureModeGlobal);
  RT_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  RT_EXPECT(mode == cudaStreamCaptureModeRelaxed);

  float *a, *b, *c, *d, *acc;
  RT_CHECK(cudaMalloc(&a, kBytes));
  RT_CHECK(cudaMalloc(&b, kBytes));
  RT_CHECK(cudaMalloc(&c, kBytes));
  RT_CHECK(cudaMalloc(&d, kBytes));
  RT_CHECK(cudaMalloc(&acc, kBytes));
  std::vector<float> ha(kN), hb(kN);
  for (int i = 0; i < kN; ++i) {
    ha[i] = static_cast<float>(i);
    hb[i] = static_cast<float>(2 * i);
  }
  RT_CHECK(cudaMemcpy(a, ha.data(), kBytes, cudaMemcpyHostToDevice));
  RT_CHECK(cudaMemcpy(b, hb.data(), kBytes, cudaMemcpyHostToDevice));
  RT_CHECK(cudaMemset(c, 0x7f, kBytes));
  RT_CHECK(cudaMemset(d, 0, kBytes));
  RT_CHECK(cudaMemset(acc, 0, kBytes));

  // Capture: c = 0; c = a + b (3i); c *= 2 (6i); d = c; acc += d.
  RT_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  RT_CHECK(cudaStreamIsCapturing(s, &status));
  RT_EXPECT(status == cudaStreamCaptureStatusActive);
  RT_CHECK(cudaStreamGetCaptureInfo(s, &status, &capture_id));
  RT_EXPECT(status == cudaStreamCaptureStatusActive);
  RT_EXPECT(capture_id != 0);
  RT_CHECK(cudaMemsetAsync(c, 0, kBytes, s));
  rt_vector_add<<<blocks, 256, 0, s>>>(a, b, c, kN);
  RT_CHECK(cudaGetLastError());
  rt_scale<float><<<blocks, 256, 0, s>>>(c, 2.0f, kN);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaMemcpyAsync(d, c, kBytes, cudaMemcpyDeviceToDevice, s));
  rt_accumulate<<<blocks, 256, 0, s>>>(acc, d, kN);
  RT_CHECK(cudaGetLastError());
  cudaGraph_t graph = nullptr;
  RT_CHECK(cudaStreamEndCapture(s, &graph));
  RT_EXPECT(graph != nullptr);
  RT_CHECK(cudaStreamIsCapturing(s, &status));
  RT_EXPECT(status == cudaStreamCaptureStatusNone);
  size_t nodes = 0;
  RT_CHECK(cudaGraphGetNodes(graph, nullptr, &nodes));
  RT_EXPECT(nodes == 5);

  // Recorded, not run.
  std::vector<float> out(kN);
  RT_CHECK(cudaMemcpy(out.data(), d, kBytes, cudaMemcpyDeviceToHost));
  for (int i = 0; i < kN; ++i) RT_EXPECT(out[i] == 0.0f);

  cudaGraphExec_t exec = nullptr;
  RT_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  RT_CHECK(cudaGraphUpload(exec, s));
  for (int r = 0; r < kReplays; ++r) RT_CHECK(cudaGraphLaunch(exec, s));
  RT_CHECK(cudaStreamSynchronize(s));
  RT_CHECK(cudaMemcpy(out.data(), d, kBytes, cudaMemcpyDeviceToHost));
  for (int i = 0; i < kN; ++i) RT_EXPECT(out[i] == 6.0f * i);
  RT_CHECK(cudaMemcpy(out.data(), acc, kBytes, cudaMemcpyDeviceToHost));
  for (int i = 0; i < kN; ++i) RT_EXPECT(out[i] == 6.0f * i * kReplays);
  std::printf("graph of %zu nodes replayed %d times: ok\n", nodes, kReplays);

  // A capture invalidated by synchronizing its stream.
  RT_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  rt_scale<float><<<blocks, 256, 0, s>>>(c, 2.0f, kN);
  RT_EXPECT(cudaStreamSynchronize(s) == cudaErrorStreamCaptureUnsupported);
  cudaGraph_t broken = nullptr;
  RT_EXPECT(cudaStreamEndCapture(s, &broken) == cudaErrorStreamCaptureInvalidated);
  RT_EXPECT(broken == nullptr);
  (void)cudaGetLastError();
  RT_CHECK(cudaStreamIsCapturing(s, &status));
  RT_EXPECT(status == cudaStreamCaptureStatusNone);
  std::printf("invalidated capture: ok\n");

  // A graph built node by node: e = 0; e = a + b (after the memset);
  // f = e (after the kernel); replayed on the legacy stream.
  float *e, *f;
  RT_CHECK(cudaMalloc(&e, kBytes));
  RT_CHECK(cudaMalloc(&f, kBytes));
  cudaGraph_t built = nullptr;
  RT_CHECK(cudaGraphCreate(&built, 0));
  cudaMemsetParams set = {};
  set.dst = e;
  set.value = 0;
  set.elementSize = 4;
  set.width = kN;
  set.height = 1;
  cudaGraphNode_t set_node, kernel_node, copy_node;
  RT_CHECK(cudaGraphAddMemsetNode(&set_node, built, nullptr, 0, &set));
  int n = kN;
  void* args[] = {&a, &b, &e, &n};
  cudaKernelNodeParams kernel = {};
  kernel.func = reinterpret_cast<void*>(rt_vector_add);
  kernel.gridDim = dim3(blocks);
  kernel.blockDim = dim3(256);
  kernel.kernelParams = args;
  RT_CHECK(cudaGraphAddKernelNode(&kernel_node, built, &set_node, 1, &kernel));
  RT_CHECK(cudaGraphAddMemcpyNode1D(&copy_node, built, &kernel_node, 1, f, e, kBytes,
                                    cudaMemcpyDeviceToDevice));
  RT_CHECK(cudaGraphGetNodes(built, nullptr, &nodes));
  RT_EXPECT(nodes == 3);
  // Instantiated from a clone (the original destroyed first).
  cudaGraph_t clone = nullptr;
  RT_CHECK(cudaGraphClone(&clone, built));
  RT_CHECK(cudaGraphDestroy(built));
  built = clone;
  cudaGraphExec_t built_exec = nullptr;
  RT_CHECK(cudaGraphInstantiate(&built_exec, built, 0));
  for (int r = 0; r < 3; ++r) RT_CHECK(cudaGraphLaunch(built_exec, 0));
  RT_CHECK(cudaMemcpy(out.data(), f, kBytes, cudaMemcpyDeviceToHost));
  for (int i = 0; i < kN; ++i) RT_EXPECT(out[i] == 3.0f * i);
  RT_CHECK(cudaGraphExecDestroy(built_exec));
  RT_CHECK(cudaGraphDestroy(built));
  RT_CHECK(cudaFree(e));
  RT_CHECK(cudaFree(f));
  std::printf("graph built node by node: ok\n");

  RT_CHECK(cudaGraphExecDestroy(exec));
  RT_CHECK(cudaGraphDestroy(graph));
  RT_CHECK(cudaStreamSynchronize(s));
  RT_CHECK(cudaMemcpy(out.data(), c, kBytes, cudaMemcpyDeviceToHost));
  for (int i = 0; i < kN; ++i) RT_EXPECT(out[i] == 6.0f * i);  // the invalidated work never ran
  for (float* p : {a, b, c, d, acc}) RT_CHECK(cudaFree(p));
  RT_CHECK(cudaStreamDestroy(s));
  std::printf("all checks passed\n");
  return 0;
}
