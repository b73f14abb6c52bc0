// Graph node kinds through the CUDA runtime. Without arguments, on a slice
// of a pool (ferryd runs with runtime_pools.toml: a quarter of the device):
//   - memory allocation and free nodes: a graph allocates a buffer, fills it
//     (memset, kernel), copies it out and frees it, replayed several times;
//     the nodes' parameters read back; the graph memory figures
//     (cudaDeviceGetGraphMemAttribute) follow instantiation and launches, and
//     their high watermarks reset; an allocation freed by another graph, read
//     between the two launches with an ordinary copy, or freed by cuMemFree;
//     a graph that never frees, launched and destroyed again and again
//     within the slice (graphs with memory nodes cannot be cloned or have
//     nodes or edges removed); a graph allocating more than the slice fails
//     to instantiate with cudaErrorMemoryAllocation;
// With the argument "events", on a whole device (a slice's compute share
// would hold the program's launches behind the held stream):
//   - event record and wait nodes: a graph on one stream computes and records
//     events, a graph on another waits for one and copies the result; while
//     the first stream is held (a host function waiting for the program), the
//     second is not ready; the records are seen by cudaEventQuery,
//     cudaEventSynchronize and cudaEventElapsedTime; an executable graph's
//     event changed (cudaGraphExecEventWaitNodeSetEvent) leaves the graph's
//     node as it was, a graph node's changed (cudaGraphEventRecordNodeSetEvent)
//     is read back.
// Prints one line per part, then "all checks passed", or the first failure.
#include <cuda.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "runtime_check.h"
#include "runtime_kernels.cuh"

namespace {

constexpr int kN = 1000;
constexpr size_t kBytes = kN * sizeof(float);
constexpr int kReplays = 4;

uint64_t GraphMem(cudaGraphMemAttributeType attribute) {
  uint64_t value = 0;
  RT_CHECK(cudaDeviceGetGraphMemAttribute(0, attribute, &value));
  return value;
}

cudaMemAllocNodeParams AllocParams(size_t bytes) {
  cudaMemAllocNodeParams p = {};
  p.poolProps.allocType = cudaMemAllocationTypePinned;
  p.poolProps.location.type = cudaMemLocationTypeDevice;
  p.poolProps.location.id = 0;
  p.bytesize = bytes;
  return p;
}

// A host function that holds its stream until the program releases it.
void HoldUntilReleased(void* released) {
  while (!static_cast<std::atomic<bool>*>(released)->load()) std::this_thread::yield();
}

void ExpectDoubled(const float* out) {
  std::vector<float> host(kN);
  RT_CHECK(cudaMemcpy(host.data(), out, kBytes, cudaMemcpyDeviceToHost));
  for (int i = 0; i < kN; ++i) RT_EXPECT(host[i] == 2.0f * static_cast<float>(i));
}

}  // namespace

// The event record and wait nodes part (see the file comment).
void EventNodes(float* a, float* out);

int main(int argc, char** argv) {
  const int blocks = (kN + 255) / 256;
  const bool events = argc > 1 && std::strcmp(argv[1], "events") == 0;
  cudaStream_t s;
  RT_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  float *a, *out;
  RT_CHECK(cudaMalloc(&a, kBytes));
  RT_CHECK(cudaMalloc(&out, kBytes));
  std::vector<float> ha(kN);
  for (int i = 0; i < kN; ++i) ha[i] = static_cast<float>(i);
  RT_CHECK(cudaMemcpy(a, ha.data(), kBytes, cudaMemcpyHostToDevice));
  RT_EXPECT(GraphMem(cudaGraphMemAttrUsedMemCurrent) == 0);
  RT_EXPECT(GraphMem(cudaGraphMemAttrReservedMemCurrent) == 0);
  if (events) {
    EventNodes(a, out);
    RT_CHECK(cudaFree(a));
    RT_CHECK(cudaFree(out));
    std::printf("all checks passed\n");
    return 0;
  }

  // alloc tmp -> tmp = 0 -> tmp = a + a -> out = tmp -> free tmp.
  {
    cudaGraph_t graph;
    RT_CHECK(cudaGraphCreate(&graph, 0));
    cudaMemAllocNodeParams alloc = AllocParams(kBytes);
    cudaGraphNode_t alloc_node, set_node, kernel_node, copy_node, free_node;
    RT_CHECK(cudaGraphAddMemAllocNode(&alloc_node, graph, nullptr, 0, &alloc));
    float* tmp = static_cast<float*>(alloc.dptr);
    RT_EXPECT(tmp != nullptr);
    cudaMemsetParams set = {};
    set.dst = tmp;
    set.elementSize = 4;
    set.width = kN;
    set.height = 1;
    RT_CHECK(cudaGraphAddMemsetNode(&set_node, graph, &alloc_node, 1, &set));
    int n = kN;
    void* args[] = {&a, &a, &tmp, &n};
    cudaKernelNodeParams kernel = {};
    kernel.func = reinterpret_cast<void*>(rt_vector_add);
    kernel.gridDim = dim3(blocks);
    kernel.blockDim = dim3(256);
    kernel.kernelParams = args;
    RT_CHECK(cudaGraphAddKernelNode(&kernel_node, graph, &set_node, 1, &kernel));
    RT_CHECK(cudaGraphAddMemcpyNode1D(&copy_node, graph, &kernel_node, 1, out, tmp, kBytes,
                                      cudaMemcpyDeviceToDevice));
    RT_CHECK(cudaGraphAddMemFreeNode(&free_node, graph, &copy_node, 1, tmp));

    cudaMemAllocNodeParams read_alloc = {};
    RT_CHECK(cudaGraphMemAllocNodeGetParams(alloc_node, &read_alloc));
    RT_EXPECT(read_alloc.dptr == tmp);
    RT_EXPECT(read_alloc.bytesize == kBytes);
    RT_EXPECT(read_alloc.poolProps.location.id == 0);
    void* freed = nullptr;
    RT_CHECK(cudaGraphMemFreeNodeGetParams(free_node, &freed));
    RT_EXPECT(freed == tmp);
    cudaGraphNodeType type;
    RT_CHECK(cudaGraphNodeGetType(alloc_node, &type));
    RT_EXPECT(type == cudaGraphNodeTypeMemAlloc);
    RT_CHECK(cudaGraphNodeGetType(free_node, &type));
    RT_EXPECT(type == cudaGraphNodeTypeMemFree);
    // A free node's parameters are not an allocation node's.
    RT_EXPECT(cudaGraphMemAllocNodeGetParams(free_node, &read_alloc) == cudaErrorInvalidValue);

    cudaGraphExec_t exec;
    RT_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    RT_EXPECT(GraphMem(cudaGraphMemAttrReservedMemCurrent) >= kBytes);
    for (int i = 0; i < kReplays; ++i) {
      RT_CHECK(cudaMemsetAsync(out, 0, kBytes, s));
      RT_CHECK(cudaGraphLaunch(exec, s));
      RT_CHECK(cudaStreamSynchronize(s));
      ExpectDoubled(out);
    }
    // Each launch allocated and freed: nothing is in use, the high mark saw it.
    RT_EXPECT(GraphMem(cudaGraphMemAttrUsedMemCurrent) == 0);
    RT_EXPECT(GraphMem(cudaGraphMemAttrUsedMemHigh) >= kBytes);
    uint64_t zero = 0;
    RT_CHECK(cudaDeviceSetGraphMemAttribute(0, cudaGraphMemAttrUsedMemHigh, &zero));
    RT_EXPECT(GraphMem(cudaGraphMemAttrUsedMemHigh) == 0);
    uint64_t one = 1;
    RT_EXPECT(cudaDeviceSetGraphMemAttribute(0, cudaGraphMemAttrUsedMemHigh, &one) ==
              cudaErrorInvalidValue);
    RT_CHECK(cudaGraphExecDestroy(exec));
    RT_CHECK(cudaGraphDestroy(graph));
    RT_CHECK(cudaDeviceSynchronize());
    RT_EXPECT(GraphMem(cudaGraphMemAttrReservedMemCurrent) == 0);
    RT_EXPECT(GraphMem(cudaGraphMemAttrReservedMemHigh) >= kBytes);
    RT_CHECK(cudaDeviceGraphMemTrim(0));
    std::printf("allocation and free nodes replayed %d times: ok\n", kReplays);
  }

  // One graph allocates and fills; the memory is readable between launches;
  // another graph frees it.
  {
    cudaGraph_t producer, consumer;
    RT_CHECK(cudaGraphCreate(&producer, 0));
    RT_CHECK(cudaGraphCreate(&consumer, 0));
    cudaMemAllocNodeParams alloc = AllocParams(kBytes);
    cudaGraphNode_t alloc_node, copy_node, free_node;
    RT_CHECK(cudaGraphAddMemAllocNode(&alloc_node, producer, nullptr, 0, &alloc));
    float* kept = static_cast<float*>(alloc.dptr);
    RT_CHECK(cudaGraphAddMemcpyNode1D(&copy_node, producer, &alloc_node, 1, kept, a, kBytes,
                                      cudaMemcpyDeviceToDevice));
    RT_CHECK(cudaGraphAddMemFreeNode(&free_node, consumer, nullptr, 0, kept));
    cudaGraphExec_t produce, consume;
    RT_CHECK(cudaGraphInstantiate(&produce, producer, 0));
    RT_CHECK(cudaGraphInstantiate(&consume, consumer, 0));
    RT_CHECK(cudaGraphLaunch(produce, s));
    RT_CHECK(cudaStreamSynchronize(s));
    RT_EXPECT(GraphMem(cudaGraphMemAttrUsedMemCurrent) >= kBytes);
    std::vector<float> host(kN);
    RT_CHECK(cudaMemcpy(host.data(), kept, kBytes, cudaMemcpyDeviceToHost));
    for (int i = 0; i < kN; ++i) RT_EXPECT(host[i] == static_cast<float>(i));
    // Allocated by a launch and not freed: cuMemFree may free it.
    RT_EXPECT(cuMemFree(reinterpret_cast<CUdeviceptr>(kept)) == CUDA_SUCCESS);
    RT_EXPECT(GraphMem(cudaGraphMemAttrUsedMemCurrent) == 0);
    RT_CHECK(cudaGraphLaunch(produce, s));
    RT_CHECK(cudaGraphLaunch(consume, s));
    RT_CHECK(cudaStreamSynchronize(s));
    RT_EXPECT(GraphMem(cudaGraphMemAttrUsedMemCurrent) == 0);
    // Freed, so the producer may run again.
    RT_CHECK(cudaGraphLaunch(produce, s));
    RT_CHECK(cudaGraphLaunch(consume, s));
    RT_CHECK(cudaStreamSynchronize(s));
    RT_CHECK(cudaGraphExecDestroy(consume));
    RT_CHECK(cudaGraphExecDestroy(produce));
    RT_CHECK(cudaGraphDestroy(consumer));
    RT_CHECK(cudaGraphDestroy(producer));
    std::printf("allocation freed by another graph: ok\n");
  }

  // A graph that allocates and never frees, launched and destroyed again and
  // again, each time half the slice: the executable graph takes the
  // allocation along, the quota comes back each time. Such a graph cannot
  // be cloned, nor its nodes or edges removed.
  {
    size_t free_bytes = 0, total = 0;
    RT_CHECK(cudaMemGetInfo(&free_bytes, &total));
    for (int i = 0; i < kReplays; ++i) {
      cudaGraph_t graph;
      RT_CHECK(cudaGraphCreate(&graph, 0));
      cudaMemAllocNodeParams alloc = AllocParams(free_bytes / 2);
      cudaGraphNode_t alloc_node, set_node;
      RT_CHECK(cudaGraphAddMemAllocNode(&alloc_node, graph, nullptr, 0, &alloc));
      cudaMemsetParams set = {};
      set.dst = alloc.dptr;
      set.elementSize = 1;
      set.width = 4096;
      set.height = 1;
      RT_CHECK(cudaGraphAddMemsetNode(&set_node, graph, &alloc_node, 1, &set));
      cudaGraph_t clone = nullptr;
      RT_EXPECT(cudaGraphClone(&clone, graph) == cudaErrorNotSupported);
      RT_EXPECT(cudaGraphRemoveDependencies(graph, &alloc_node, &set_node, nullptr, 1) ==
                cudaErrorNotSupported);
      RT_EXPECT(cudaGraphDestroyNode(set_node) == cudaErrorNotSupported);
      (void)cudaGetLastError();
      cudaGraphExec_t exec;
      RT_CHECK(cudaGraphInstantiate(&exec, graph, 0));
      RT_CHECK(cudaGraphLaunch(exec, s));
      RT_CHECK(cudaMemsetAsync(alloc.dptr, 1, 4096, s));  // after the launch, before the free
      RT_CHECK(cudaGraphExecDestroy(exec));
      RT_CHECK(cudaGraphDestroy(graph));
      RT_CHECK(cudaStreamSynchronize(s));
    }
    RT_EXPECT(GraphMem(cudaGraphMemAttrUsedMemCurrent) == 0);
    RT_CHECK(cudaDeviceGraphMemTrim(0));
    // Everything came back: the whole rest of the slice can be allocated.
    void* rest = nullptr;
    RT_CHECK(cudaMalloc(&rest, free_bytes));
    RT_CHECK(cudaFree(rest));
    std::printf("unfreed allocations go with their executable graph: ok\n");
  }

  // More than the slice holds: refused with cudaErrorMemoryAllocation, when
  // the node is added (more than the whole device: the host backend, and a
  // driver may, refuse at once) or else when the graph is instantiated (a
  // pool slice smaller than its device).
  {
    size_t free_bytes = 0, total = 0;
    RT_CHECK(cudaMemGetInfo(&free_bytes, &total));
    cudaGraph_t graph;
    RT_CHECK(cudaGraphCreate(&graph, 0));
    cudaMemAllocNodeParams alloc = AllocParams(total + (64u << 20));
    cudaGraphNode_t alloc_node;
    const cudaError_t added = cudaGraphAddMemAllocNode(&alloc_node, graph, nullptr, 0, &alloc);
    if (added == cudaSuccess) {
      cudaGraphExec_t exec = nullptr;
      RT_EXPECT(cudaGraphInstantiate(&exec, graph, 0) == cudaErrorMemoryAllocation);
    } else {
      RT_EXPECT(added == cudaErrorMemoryAllocation);
    }
    (void)cudaGetLastError();
    RT_CHECK(cudaGraphDestroy(graph));
    RT_EXPECT(GraphMem(cudaGraphMemAttrReservedMemCurrent) == 0);
    std::printf("graph allocation past the quota: ok\n");
  }

  RT_CHECK(cudaFree(a));
  RT_CHECK(cudaFree(out));
  RT_CHECK(cudaStreamDestroy(s));
  std::printf("all checks passed\n");
  return 0;
}

// s1 runs start -> out = a + a -> done -> end; s2 waits for done, then copies
// out to copied.
void EventNodes(float* a, float* out) {
  const int blocks = (kN + 255) / 256;
  {
    cudaStream_t s1, s2;
    RT_CHECK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
    RT_CHECK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    cudaEvent_t start, done, end, other;
    RT_CHECK(cudaEventCreate(&start));
    RT_CHECK(cudaEventCreate(&done));
    RT_CHECK(cudaEventCreate(&end));
    RT_CHECK(cudaEventCreate(&other));
    float* copied = nullptr;
    RT_CHECK(cudaMalloc(&copied, kBytes));
    RT_CHECK(cudaMemset(out, 0, kBytes));
    RT_CHECK(cudaMemset(copied, 0, kBytes));
    RT_CHECK(cudaDeviceSynchronize());  // before the non-blocking streams use them

    cudaGraph_t compute, consume;
    RT_CHECK(cudaGraphCreate(&compute, 0));
    RT_CHECK(cudaGraphCreate(&consume, 0));
    cudaGraphNode_t start_node, kernel_node, done_node, end_node, wait_node, copy_node;
    RT_CHECK(cudaGraphAddEventRecordNode(&start_node, compute, nullptr, 0, start));
    int n = kN;
    void* args[] = {&a, &a, &out, &n};
    cudaKernelNodeParams kernel = {};
    kernel.func = reinterpret_cast<void*>(rt_vector_add);
    kernel.gridDim = dim3(blocks);
    kernel.blockDim = dim3(256);
    kernel.kernelParams = args;
    RT_CHECK(cudaGraphAddKernelNode(&kernel_node, compute, &start_node, 1, &kernel));
    RT_CHECK(cudaGraphAddEventRecordNode(&done_node, compute, &kernel_node, 1, done));
    RT_CHECK(cudaGraphAddEventRecordNode(&end_node, compute, &done_node, 1, end));
    RT_CHECK(cudaGraphAddEventWaitNode(&wait_node, consume, nullptr, 0, done));
    RT_CHECK(cudaGraphAddMemcpyNode1D(&copy_node, consume, &wait_node, 1, copied, out, kBytes,
                                      cudaMemcpyDeviceToDevice));
    cudaGraphNodeType type;
    RT_CHECK(cudaGraphNodeGetType(done_node, &type));
    RT_EXPECT(type == cudaGraphNodeTypeEventRecord);
    RT_CHECK(cudaGraphNodeGetType(wait_node, &type));
    RT_EXPECT(type == cudaGraphNodeTypeWaitEvent);
    cudaEvent_t read = nullptr;
    RT_CHECK(cudaGraphEventRecordNodeGetEvent(done_node, &read));
    RT_EXPECT(read == done);
    RT_CHECK(cudaGraphEventWaitNodeGetEvent(wait_node, &read));
    RT_EXPECT(read == done);
    RT_EXPECT(cudaGraphEventWaitNodeGetEvent(done_node, &read) == cudaErrorInvalidValue);

    cudaGraphExec_t compute_exec, consume_exec;
    RT_CHECK(cudaGraphInstantiate(&compute_exec, compute, 0));
    RT_CHECK(cudaGraphInstantiate(&consume_exec, consume, 0));
    // s1 is held before its graph: s2's graph waits for `done` behind it.
    std::atomic<bool> released{false};
    RT_CHECK(cudaLaunchHostFunc(s1, HoldUntilReleased, &released));
    RT_CHECK(cudaGraphLaunch(compute_exec, s1));
    RT_CHECK(cudaGraphLaunch(consume_exec, s2));
    RT_EXPECT(cudaStreamQuery(s2) == cudaErrorNotReady);
    RT_EXPECT(cudaEventQuery(done) == cudaErrorNotReady);
    released.store(true);
    RT_CHECK(cudaStreamSynchronize(s2));
    ExpectDoubled(copied);
    RT_CHECK(cudaEventSynchronize(end));
    RT_CHECK(cudaEventQuery(done));
    float ms = -1.0f;
    RT_CHECK(cudaEventElapsedTime(&ms, start, end));
    RT_EXPECT(ms >= 0.0f);

    // The executable graph now waits for `other` (recorded nowhere yet: no
    // wait), the graph's node still names `done`.
    RT_CHECK(cudaGraphExecEventWaitNodeSetEvent(consume_exec, wait_node, other));
    RT_CHECK(cudaGraphEventWaitNodeGetEvent(wait_node, &read));
    RT_EXPECT(read == done);
    RT_CHECK(cudaMemsetAsync(copied, 0, kBytes, s2));
    RT_CHECK(cudaGraphLaunch(consume_exec, s2));
    RT_CHECK(cudaStreamSynchronize(s2));
    ExpectDoubled(copied);
    RT_CHECK(cudaGraphEventRecordNodeSetEvent(end_node, other));
    RT_CHECK(cudaGraphEventRecordNodeGetEvent(end_node, &read));
    RT_EXPECT(read == other);
    cudaGraphExec_t again;
    RT_CHECK(cudaGraphInstantiate(&again, compute, 0));
    RT_CHECK(cudaGraphLaunch(again, s1));
    RT_CHECK(cudaEventSynchronize(other));
    RT_CHECK(cudaEventElapsedTime(&ms, start, other));
    RT_EXPECT(ms >= 0.0f);

    RT_CHECK(cudaGraphExecDestroy(again));
    RT_CHECK(cudaGraphExecDestroy(consume_exec));
    RT_CHECK(cudaGraphExecDestroy(compute_exec));
    RT_CHECK(cudaGraphDestroy(consume));
    RT_CHECK(cudaGraphDestroy(compute));
    for (cudaEvent_t e : {start, done, end, other}) RT_CHECK(cudaEventDestroy(e));
    RT_CHECK(cudaFree(copied));
    RT_CHECK(cudaStreamDestroy(s1));
    RT_CHECK(cudaStreamDestroy(s2));
    std::printf("event record and wait nodes: ok\n");
  }
}
