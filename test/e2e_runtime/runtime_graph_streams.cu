// A CUDA runtime program for the rest of the stream-capture family:
//   - fork/join capture over two streams (cudaEventRecord on the capturing
//     stream, cudaStreamWaitEvent on another, and back): both streams report
//     the same active capture, the graph has the four kernels, and replayed
//     kReplays times it computes what kReplays ordered runs compute (the join
//     orders the origin's last kernel after the forked stream's);
//   - a fork not joined back: cudaStreamEndCapture answers
//     cudaErrorStreamCaptureUnjoined, no graph, and the forked stream stops
//     capturing and runs work again;
//   - capture interaction modes: in global mode cudaMalloc during a global
//     capture fails with cudaErrorStreamCaptureUnsupported and invalidates it;
//     a thread in relaxed mode may allocate; a thread-local capture forbids
//     its own thread, not another;
//   - a graph built node by node reports its nodes, roots, edges, node types,
//     dependencies and dependents as built;
//   - child-graph nodes run the child (copied when added) in order;
//   - cudaGraphExecKernelNodeSetParams changes a kernel node's argument for
//     later launches of the executable graph (cudaGraphExecGetFlags reports
//     its instantiation flags); a node of another graph or missing arguments
//     are refused; a disabled node does nothing until enabled again;
//   - cudaGraphKernelNodeGetParams, cudaGraphMemsetNodeGetParams and
//     cudaGraphMemcpyNodeGetParams answer what each node was added with (an
//     update of the executable graph does not change the graph's node), and
//     a node of another type is refused with cudaErrorInvalidValue;
//   - cudaGraphExecUpdate from a graph of the same topology changes a kernel
//     argument and a memset value for later launches; a graph with another
//     node count, node type or edge is refused with
//     cudaErrorGraphExecUpdateFailure and the result info naming what
//     changed (the executable graph keeps running what it ran); a captured
//     graph's update answers cudaGraphExecUpdateErrorNotSupported.
// Prints "all checks passed", or the first failure.
#include <cuda_runtime.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "runtime_check.h"
#include "runtime_kernels.cuh"

namespace {

constexpr int kN = 1000;
constexpr int kReplays = 5;
constexpr size_t kBytes = kN * sizeof(float);
constexpr int kBlocks = (kN + 255) / 256;

std::vector<float> Read(const float* device) {
  std::vector<float> out(kN);
  RT_CHECK(cudaMemcpy(out.data(), device, kBytes, cudaMemcpyDeviceToHost));
  return out;
}

void ForkJoin(cudaStream_t s, cudaStream_t s2, const float* a, const float* b) {
  float *x, *acc1, *acc2;
  RT_CHECK(cudaMalloc(&x, kBytes));
  RT_CHECK(cudaMalloc(&acc1, kBytes));
  RT_CHECK(cudaMalloc(&acc2, kBytes));
  RT_CHECK(cudaMemset(acc1, 0, kBytes));
  RT_CHECK(cudaMemset(acc2, 0, kBytes));
  // The memsets ran on the legacy stream, which s and s2 (non-blocking) do not
  // wait for.
  RT_CHECK(cudaDeviceSynchronize());
  cudaEvent_t fork, join;
  RT_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  RT_CHECK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));

  // x = a + b on s; fork: acc1 += x on s, acc2 += x on s2; join: acc1 += acc2 on s.
  RT_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  rt_vector_add<<<kBlocks, 256, 0, s>>>(a, b, x, kN);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaEventRecord(fork, s));
  RT_CHECK(cudaStreamWaitEvent(s2, fork, 0));
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  unsigned long long id1 = 0, id2 = 0;
  RT_CHECK(cudaStreamGetCaptureInfo(s, &status, &id1));
  RT_EXPECT(status == cudaStreamCaptureStatusActive);
  RT_CHECK(cudaStreamGetCaptureInfo(s2, &status, &id2));
  RT_EXPECT(status == cudaStreamCaptureStatusActive);
  RT_EXPECT(id1 == id2 && id1 != 0);
  rt_accumulate<<<kBlocks, 256, 0, s>>>(acc1, x, kN);
  RT_CHECK(cudaGetLastError());
  rt_accumulate<<<kBlocks, 256, 0, s2>>>(acc2, x, kN);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaEventRecord(join, s2));
  RT_CHECK(cudaStreamWaitEvent(s, join, 0));
  rt_accumulate<<<kBlocks, 256, 0, s>>>(acc1, acc2, kN);
  RT_CHECK(cudaGetLastError());
  cudaGraph_t graph = nullptr;
  RT_CHECK(cudaStreamEndCapture(s, &graph));
  RT_CHECK(cudaStreamIsCapturing(s2, &status));
  RT_EXPECT(status == cudaStreamCaptureStatusNone);
  size_t nodes = 0;
  RT_CHECK(cudaGraphGetNodes(graph, nullptr, &nodes));
  RT_EXPECT(nodes == 4);

  cudaGraphExec_t exec = nullptr;
  RT_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int r = 0; r < kReplays; ++r) RT_CHECK(cudaGraphLaunch(exec, s));
  RT_CHECK(cudaStreamSynchronize(s));
  const std::vector<float> got1 = Read(acc1), got2 = Read(acc2);
  for (int i = 0; i < kN; ++i) {
    float x_i = 3.0f * i, e1 = 0, e2 = 0;  // the replays, run in order on the host
    for (int r = 0; r < kReplays; ++r) {
      e1 += x_i;
      e2 += x_i;
      e1 += e2;
    }
    RT_EXPECT(got1[i] == e1);
    RT_EXPECT(got2[i] == e2);
  }
  std::printf("fork/join graph of %zu nodes replayed %d times: ok\n", nodes, kReplays);

  // A fork never joined back.
  RT_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  RT_CHECK(cudaEventRecord(fork, s));
  RT_CHECK(cudaStreamWaitEvent(s2, fork, 0));
  rt_accumulate<<<kBlocks, 256, 0, s2>>>(acc2, x, kN);
  RT_CHECK(cudaGetLastError());
  cudaGraph_t unjoined = nullptr;
  RT_EXPECT(cudaStreamEndCapture(s, &unjoined) == cudaErrorStreamCaptureUnjoined);
  RT_EXPECT(unjoined == nullptr);
  (void)cudaGetLastError();
  RT_CHECK(cudaStreamIsCapturing(s2, &status));
  RT_EXPECT(status == cudaStreamCaptureStatusNone);
  rt_accumulate<<<kBlocks, 256, 0, s2>>>(acc2, x, kN);  // runs now: one more x
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaStreamSynchronize(s2));
  const std::vector<float> after = Read(acc2);
  for (int i = 0; i < kN; ++i) RT_EXPECT(after[i] == got2[i] + 3.0f * i);
  std::printf("unjoined fork: ok\n");

  RT_CHECK(cudaGraphExecDestroy(exec));
  RT_CHECK(cudaGraphDestroy(graph));
  RT_CHECK(cudaEventDestroy(fork));
  RT_CHECK(cudaEventDestroy(join));
  for (float* p : {x, acc1, acc2}) RT_CHECK(cudaFree(p));
}

void CaptureModes(cudaStream_t s, float* c) {
  // Global mode (the default): allocating during a global capture fails and
  // invalidates the capture.
  RT_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  rt_scale<float><<<kBlocks, 256, 0, s>>>(c, 2.0f, kN);
  RT_CHECK(cudaGetLastError());
  void* p = nullptr;
  RT_EXPECT(cudaMalloc(&p, 256) == cudaErrorStreamCaptureUnsupported);
  cudaGraph_t graph = nullptr;
  RT_EXPECT(cudaStreamEndCapture(s, &graph) == cudaErrorStreamCaptureInvalidated);
  RT_EXPECT(graph == nullptr);
  (void)cudaGetLastError();

  // This thread in relaxed mode may allocate, and the capture goes on.
  RT_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  RT_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  RT_CHECK(cudaMalloc(&p, 256));
  RT_CHECK(cudaFree(p));
  RT_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  RT_EXPECT(mode == cudaStreamCaptureModeRelaxed);
  rt_scale<float><<<kBlocks, 256, 0, s>>>(c, 2.0f, kN);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaStreamEndCapture(s, &graph));
  RT_CHECK(cudaGraphDestroy(graph));

  // A thread-local capture forbids its own thread, not another one.
  RT_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  cudaError_t other = cudaErrorUnknown;
  std::thread([&] {
    void* q = nullptr;
    other = cudaMalloc(&q, 256);
    if (other == cudaSuccess) other = cudaFree(q);
  }).join();
  RT_CHECK(other);
  RT_EXPECT(cudaMalloc(&p, 256) == cudaErrorStreamCaptureUnsupported);
  RT_EXPECT(cudaStreamEndCapture(s, &graph) == cudaErrorStreamCaptureInvalidated);
  (void)cudaGetLastError();
  std::printf("capture modes: ok\n");
}

void ExecKernelUpdate(float* c) {
  cudaGraph_t graph = nullptr;
  RT_CHECK(cudaGraphCreate(&graph, 0));
  cudaMemsetParams set = {};
  set.dst = c;
  set.value = 0;
  set.elementSize = 4;
  set.width = kN;
  set.height = 1;
  cudaGraphNode_t set_node, scale_node;
  RT_CHECK(cudaGraphAddMemsetNode(&set_node, graph, nullptr, 0, &set));
  int n = kN;
  float factor = 2.0f;
  void* args[] = {&c, &factor, &n};
  cudaKernelNodeParams kernel = {};
  kernel.func = reinterpret_cast<void*>(rt_scale<float>);
  kernel.gridDim = dim3(kBlocks);
  kernel.blockDim = dim3(256);
  kernel.kernelParams = args;
  RT_CHECK(cudaGraphAddKernelNode(&scale_node, graph, &set_node, 1, &kernel));
  // The structure, as built: two nodes, one root, one edge.
  size_t count = 0;
  RT_CHECK(cudaGraphGetNodes(graph, nullptr, &count));
  RT_EXPECT(count == 2);
  cudaGraphNode_t listed[3] = {};
  count = 3;
  RT_CHECK(cudaGraphGetNodes(graph, listed, &count));
  RT_EXPECT(count == 2 && listed[0] == set_node && listed[1] == scale_node && listed[2] == nullptr);
  count = 2;
  RT_CHECK(cudaGraphGetRootNodes(graph, listed, &count));
  RT_EXPECT(count == 1 && listed[0] == set_node);
  cudaGraphNode_t from = nullptr, to = nullptr;
  count = 1;
  RT_CHECK(cudaGraphGetEdges(graph, &from, &to, nullptr, &count));
  RT_EXPECT(count == 1 && from == set_node && to == scale_node);
  cudaGraphNodeType type = cudaGraphNodeTypeEmpty;
  RT_CHECK(cudaGraphNodeGetType(scale_node, &type));
  RT_EXPECT(type == cudaGraphNodeTypeKernel);
  RT_CHECK(cudaGraphNodeGetType(set_node, &type));
  RT_EXPECT(type == cudaGraphNodeTypeMemset);
  count = 1;
  RT_CHECK(cudaGraphNodeGetDependencies(scale_node, listed, nullptr, &count));
  RT_EXPECT(count == 1 && listed[0] == set_node);
  count = 1;
  RT_CHECK(cudaGraphNodeGetDependentNodes(set_node, listed, nullptr, &count));
  RT_EXPECT(count == 1 && listed[0] == scale_node);
  RT_CHECK(cudaGraphNodeGetDependentNodes(scale_node, nullptr, nullptr, &count));
  RT_EXPECT(count == 0);
  // The DOT file names one edge.
  char dot_path[] = "/tmp/rt_graph_dot_XXXXXX";
  const int dot_fd = mkstemp(dot_path);
  RT_EXPECT(dot_fd >= 0);
  close(dot_fd);
  RT_CHECK(cudaGraphDebugDotPrint(graph, dot_path, 0));
  std::FILE* dot = std::fopen(dot_path, "r");
  RT_EXPECT(dot != nullptr);
  char dot_text[4096] = {};
  const size_t dot_bytes = std::fread(dot_text, 1, sizeof(dot_text) - 1, dot);
  std::fclose(dot);
  std::remove(dot_path);
  int arrows = 0;
  for (size_t i = 0; i + 1 < dot_bytes; ++i) arrows += dot_text[i] == '-' && dot_text[i + 1] == '>';
  RT_EXPECT(arrows == 1);
  // The graph updated: one kernel node scaling c in place.
  cudaGraph_t scale_only = nullptr;
  RT_CHECK(cudaGraphCreate(&scale_only, 0));
  cudaGraphNode_t only_node;
  RT_CHECK(cudaGraphAddKernelNode(&only_node, scale_only, nullptr, 0, &kernel));
  cudaGraphExec_t exec = nullptr;
  RT_CHECK(cudaGraphInstantiateWithFlags(&exec, scale_only, cudaGraphInstantiateFlagUseNodePriority));
  unsigned long long exec_flags = 0;
  RT_CHECK(cudaGraphExecGetFlags(exec, &exec_flags));
  RT_EXPECT(exec_flags == cudaGraphInstantiateFlagUseNodePriority);

  std::vector<float> start(kN);
  for (int i = 0; i < kN; ++i) start[i] = static_cast<float>(i);
  RT_CHECK(cudaMemcpy(c, start.data(), kBytes, cudaMemcpyHostToDevice));
  RT_CHECK(cudaGraphLaunch(exec, 0));
  factor = 3.0f;  // the node keeps the value it was given: 2
  RT_CHECK(cudaGraphLaunch(exec, 0));
  std::vector<float> got = Read(c);
  for (int i = 0; i < kN; ++i) RT_EXPECT(got[i] == 4.0f * i);
  RT_CHECK(cudaGraphExecKernelNodeSetParams(exec, only_node, &kernel));  // now 3
  RT_CHECK(cudaGraphLaunch(exec, 0));
  got = Read(c);
  for (int i = 0; i < kN; ++i) RT_EXPECT(got[i] == 12.0f * i);

  // Refused: a kernel node of another graph, missing arguments.
  RT_EXPECT(cudaGraphExecKernelNodeSetParams(exec, scale_node, &kernel) != cudaSuccess);
  (void)cudaGetLastError();
  cudaKernelNodeParams no_args = kernel;
  no_args.kernelParams = nullptr;
  RT_EXPECT(cudaGraphExecKernelNodeSetParams(exec, only_node, &no_args) != cudaSuccess);
  (void)cudaGetLastError();
  RT_CHECK(cudaGraphLaunch(exec, 0));  // still the updated node
  got = Read(c);
  for (int i = 0; i < kN; ++i) RT_EXPECT(got[i] == 36.0f * i);
  // Disabled, the node does nothing; enabled again, its updated work.
  unsigned enabled = 0;
  RT_CHECK(cudaGraphNodeGetEnabled(exec, only_node, &enabled));
  RT_EXPECT(enabled == 1);
  RT_CHECK(cudaGraphNodeSetEnabled(exec, only_node, 0));
  RT_CHECK(cudaGraphNodeGetEnabled(exec, only_node, &enabled));
  RT_EXPECT(enabled == 0);
  RT_CHECK(cudaGraphLaunch(exec, 0));
  got = Read(c);
  for (int i = 0; i < kN; ++i) RT_EXPECT(got[i] == 36.0f * i);
  RT_CHECK(cudaGraphNodeSetEnabled(exec, only_node, 1));
  RT_CHECK(cudaGraphLaunch(exec, 0));
  got = Read(c);
  for (int i = 0; i < kN; ++i) RT_EXPECT(got[i] == 108.0f * i);
  RT_CHECK(cudaGraphExecDestroy(exec));
  std::printf("executable graph kernel update: ok\n");

  // Child graphs: an empty node, then scale_only twice as child-graph nodes
  // (its kernel node was updated in the executable graph only: the graph
  // itself still scales by 2). The child is copied when added, so
  // destroying it afterwards changes nothing. Per launch: c *= 4.
  cudaGraph_t parent = nullptr;
  RT_CHECK(cudaGraphCreate(&parent, 0));
  cudaGraphNode_t start_node, first, second;
  RT_CHECK(cudaGraphAddEmptyNode(&start_node, parent, nullptr, 0));
  RT_CHECK(cudaGraphAddChildGraphNode(&first, parent, &start_node, 1, scale_only));
  RT_CHECK(cudaGraphAddChildGraphNode(&second, parent, &first, 1, scale_only));
  RT_CHECK(cudaGraphDestroy(scale_only));
  cudaGraphNodeType type_of_child = cudaGraphNodeTypeEmpty;
  RT_CHECK(cudaGraphNodeGetType(second, &type_of_child));
  RT_EXPECT(type_of_child == cudaGraphNodeTypeGraph);
  RT_CHECK(cudaGraphInstantiate(&exec, parent, 0));
  RT_CHECK(cudaMemcpy(c, start.data(), kBytes, cudaMemcpyHostToDevice));
  RT_CHECK(cudaGraphLaunch(exec, 0));
  RT_CHECK(cudaGraphLaunch(exec, 0));
  got = Read(c);
  for (int i = 0; i < kN; ++i) RT_EXPECT(got[i] == 16.0f * i);
  RT_CHECK(cudaGraphExecDestroy(exec));
  RT_CHECK(cudaGraphDestroy(parent));
  RT_CHECK(cudaGraphDestroy(graph));
  std::printf("child graph nodes: ok\n");
}

// memset(c, value) -> c *= factor: c[i] == value * factor after a launch.
// `kernel_first`: the kernel node is added first (and the memset after it);
// `edge`: the second node depends on the first. The kernel's arguments are
// copied when its node is added.
cudaGraph_t SetThenScale(float* c, float value, float factor, bool kernel_first = false,
                         bool edge = true) {
  int n = kN;
  cudaGraph_t graph = nullptr;
  RT_CHECK(cudaGraphCreate(&graph, 0));
  cudaMemsetParams set = {};
  set.dst = c;
  std::memcpy(&set.value, &value, sizeof(float));
  set.elementSize = 4;
  set.width = kN;
  set.height = 1;
  void* args[] = {&c, &factor, &n};
  cudaKernelNodeParams kernel = {};
  kernel.func = reinterpret_cast<void*>(rt_scale<float>);
  kernel.gridDim = dim3(kBlocks);
  kernel.blockDim = dim3(256);
  kernel.kernelParams = args;
  cudaGraphNode_t first, second;
  if (kernel_first) {
    RT_CHECK(cudaGraphAddKernelNode(&first, graph, nullptr, 0, &kernel));
    RT_CHECK(cudaGraphAddMemsetNode(&second, graph, edge ? &first : nullptr, edge ? 1 : 0, &set));
  } else {
    RT_CHECK(cudaGraphAddMemsetNode(&first, graph, nullptr, 0, &set));
    RT_CHECK(
        cudaGraphAddKernelNode(&second, graph, edge ? &first : nullptr, edge ? 1 : 0, &kernel));
  }
  return graph;
}

// The first node cudaGraphGetNodes lists at `index`.
cudaGraphNode_t NodeAt(cudaGraph_t graph, size_t index) {
  cudaGraphNode_t nodes[4] = {};
  size_t count = 4;
  RT_CHECK(cudaGraphGetNodes(graph, nodes, &count));
  RT_EXPECT(index < count);
  return nodes[index];
}

void ExpectAll(const float* c, float want) {
  std::vector<float> got = Read(c);
  for (int i = 0; i < kN; ++i) RT_EXPECT(got[i] == want);
}

void WholeGraphUpdate(cudaStream_t s, float* c) {
  cudaGraph_t built = SetThenScale(c, 1.0f, 2.0f);
  cudaGraphExec_t exec = nullptr;
  RT_CHECK(cudaGraphInstantiate(&exec, built, 0));
  RT_CHECK(cudaGraphLaunch(exec, 0));
  ExpectAll(c, 2.0f);
  // Same topology, another memset value and kernel argument.
  cudaGraph_t same = SetThenScale(c, 3.0f, 5.0f);
  cudaGraphExecUpdateResultInfo info = {};
  RT_CHECK(cudaGraphExecUpdate(exec, same, &info));
  RT_EXPECT(info.result == cudaGraphExecUpdateSuccess);
  RT_CHECK(cudaGraphLaunch(exec, 0));
  ExpectAll(c, 15.0f);

  // Refused, with what changed; the executable graph runs what it ran.
  cudaGraph_t fewer = nullptr;
  RT_CHECK(cudaGraphCreate(&fewer, 0));
  cudaGraphNode_t lone;
  RT_CHECK(cudaGraphAddEmptyNode(&lone, fewer, nullptr, 0));
  info = {};
  RT_EXPECT(cudaGraphExecUpdate(exec, fewer, &info) == cudaErrorGraphExecUpdateFailure);
  (void)cudaGetLastError();
  RT_EXPECT(info.result == cudaGraphExecUpdateErrorTopologyChanged && info.errorNode == nullptr);
  cudaGraph_t swapped = SetThenScale(c, 3.0f, 5.0f, /*kernel_first=*/true);
  info = {};
  RT_EXPECT(cudaGraphExecUpdate(exec, swapped, &info) == cudaErrorGraphExecUpdateFailure);
  (void)cudaGetLastError();
  RT_EXPECT(info.result == cudaGraphExecUpdateErrorNodeTypeChanged &&
            info.errorNode == NodeAt(swapped, 0));
  cudaGraph_t unordered = SetThenScale(c, 3.0f, 5.0f, false, /*edge=*/false);
  info = {};
  RT_EXPECT(cudaGraphExecUpdate(exec, unordered, &info) == cudaErrorGraphExecUpdateFailure);
  (void)cudaGetLastError();
  RT_EXPECT(info.result == cudaGraphExecUpdateErrorTopologyChanged &&
            info.errorNode == NodeAt(unordered, 1) && info.errorFromNode == NodeAt(unordered, 0));
  RT_CHECK(cudaMemset(c, 0, kBytes));
  RT_CHECK(cudaGraphLaunch(exec, 0));
  ExpectAll(c, 15.0f);

  // A captured graph's structure is the server's: NotSupported (callers
  // instantiate instead).
  cudaGraph_t captured = nullptr;
  RT_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  RT_CHECK(cudaMemsetAsync(c, 0, kBytes, s));
  rt_scale<float><<<kBlocks, 256, 0, s>>>(c, 2.0f, kN);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaStreamEndCapture(s, &captured));
  info = {};
  RT_EXPECT(cudaGraphExecUpdate(exec, captured, &info) == cudaErrorGraphExecUpdateFailure);
  (void)cudaGetLastError();
  RT_EXPECT(info.result == cudaGraphExecUpdateErrorNotSupported);
  RT_CHECK(cudaGraphExecDestroy(exec));
  for (cudaGraph_t g : {built, same, fewer, swapped, unordered, captured}) {
    RT_CHECK(cudaGraphDestroy(g));
  }
  std::printf("whole-graph executable update: ok\n");
}

void NodeParamsAsAdded(float* a, float* c) {
  cudaGraph_t graph;
  RT_CHECK(cudaGraphCreate(&graph, 0));
  cudaMemsetParams set = {};
  set.dst = c;
  set.value = 0x3f800000u;  // 1.0f
  set.elementSize = 4;
  set.width = kN;
  set.height = 1;
  cudaGraphNode_t set_node, copy_node, add_node;
  RT_CHECK(cudaGraphAddMemsetNode(&set_node, graph, nullptr, 0, &set));
  RT_CHECK(cudaGraphAddMemcpyNode1D(&copy_node, graph, &set_node, 1, c, a, kBytes / 2,
                                    cudaMemcpyDeviceToDevice));
  float* acc = c;
  const float* x = a;
  int n = kN;
  void* args[] = {&acc, &x, &n};
  cudaKernelNodeParams kernel = {};
  kernel.func = reinterpret_cast<void*>(rt_accumulate);
  kernel.gridDim = dim3(kBlocks);
  kernel.blockDim = dim3(256);
  kernel.kernelParams = args;
  RT_CHECK(cudaGraphAddKernelNode(&add_node, graph, &copy_node, 1, &kernel));
  // The caller's argument storage changes: the node keeps what it was given.
  n = 7;
  acc = nullptr;

  cudaMemsetParams set_got = {};
  RT_CHECK(cudaGraphMemsetNodeGetParams(set_node, &set_got));
  RT_EXPECT(set_got.dst == c && set_got.value == 0x3f800000u && set_got.elementSize == 4 &&
            set_got.width == kN && set_got.height == 1);
  cudaMemcpy3DParms copy_got = {};
  RT_CHECK(cudaGraphMemcpyNodeGetParams(copy_node, &copy_got));
  RT_EXPECT(copy_got.dstPtr.ptr == c && copy_got.srcPtr.ptr == a);
  RT_EXPECT(copy_got.extent.width == kBytes / 2 && copy_got.extent.height == 1 &&
            copy_got.extent.depth == 1);
  cudaKernelNodeParams kernel_got = {};
  RT_CHECK(cudaGraphKernelNodeGetParams(add_node, &kernel_got));
  RT_EXPECT(kernel_got.func == reinterpret_cast<void*>(rt_accumulate));
  RT_EXPECT(kernel_got.gridDim.x == kBlocks && kernel_got.blockDim.x == 256 &&
            kernel_got.sharedMemBytes == 0 && kernel_got.extra == nullptr);
  RT_EXPECT(kernel_got.kernelParams != nullptr);
  RT_EXPECT(*static_cast<float**>(kernel_got.kernelParams[0]) == c);
  RT_EXPECT(*static_cast<const float**>(kernel_got.kernelParams[1]) == a);
  RT_EXPECT(*static_cast<int*>(kernel_got.kernelParams[2]) == kN);

  // An update of the executable graph leaves the graph's node as it was.
  cudaGraphExec_t exec;
  RT_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  int half = kN / 2;
  acc = c;
  void* half_args[] = {&acc, &x, &half};
  cudaKernelNodeParams updated = kernel;
  updated.kernelParams = half_args;
  RT_CHECK(cudaGraphExecKernelNodeSetParams(exec, add_node, &updated));
  RT_CHECK(cudaGraphKernelNodeGetParams(add_node, &kernel_got));
  RT_EXPECT(*static_cast<int*>(kernel_got.kernelParams[2]) == kN);
  // The replay: c = 1 everywhere, its first half copied from a, then the
  // updated kernel adds a to the first half.
  RT_CHECK(cudaGraphLaunch(exec, 0));
  std::vector<float> got = Read(c);
  for (int i = 0; i < kN; ++i) RT_EXPECT(got[i] == (i < kN / 2 ? 2.0f * i : 1.0f));

  // Each query applies to its own node type only.
  RT_EXPECT(cudaGraphMemsetNodeGetParams(add_node, &set_got) == cudaErrorInvalidValue);
  (void)cudaGetLastError();
  RT_EXPECT(cudaGraphKernelNodeGetParams(set_node, &kernel_got) == cudaErrorInvalidValue);
  (void)cudaGetLastError();
  RT_EXPECT(cudaGraphMemcpyNodeGetParams(add_node, &copy_got) == cudaErrorInvalidValue);
  (void)cudaGetLastError();
  RT_CHECK(cudaGraphExecDestroy(exec));
  RT_CHECK(cudaGraphDestroy(graph));
  std::printf("node parameters as added: ok\n");
}

}  // namespace

int main() {
  cudaStream_t s, s2;
  RT_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  RT_CHECK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  float *a, *b, *c;
  RT_CHECK(cudaMalloc(&a, kBytes));
  RT_CHECK(cudaMalloc(&b, kBytes));
  RT_CHECK(cudaMalloc(&c, kBytes));
  std::vector<float> ha(kN), hb(kN);
  for (int i = 0; i < kN; ++i) {
    ha[i] = static_cast<float>(i);
    hb[i] = static_cast<float>(2 * i);
  }
  RT_CHECK(cudaMemcpy(a, ha.data(), kBytes, cudaMemcpyHostToDevice));
  RT_CHECK(cudaMemcpy(b, hb.data(), kBytes, cudaMemcpyHostToDevice));

  ForkJoin(s, s2, a, b);
  CaptureModes(s, c);
  ExecKernelUpdate(c);
  NodeParamsAsAdded(a, c);
  WholeGraphUpdate(s, c);

  for (float* p : {a, b, c}) RT_CHECK(cudaFree(p));
  RT_CHECK(cudaStreamDestroy(s));
  RT_CHECK(cudaStreamDestroy(s2));
  std::printf("all checks passed\n");
  return 0;
}
