// Graph host nodes through the CUDA runtime: the host function runs in this
// process, in the middle of a replay that is one launch on the server.
//   - explicit host nodes: memset -> host node A -> kernel -> host node B,
//     replayed several times; A holds the replay until the program lets it
//     go, and meanwhile the stream is not done and B has not run; each replay
//     runs A, then B, once, and the kernel's result is right;
//   - node parameters: cudaGraphHostNodeGetParams answers what was added;
//     cudaGraphExecHostNodeSetParams changes one executable graph only;
//     cudaGraphHostNodeSetParams changes the graph (later instantiations);
//     the generic cudaGraphAddNode makes a host node too;
//   - captured host functions: cudaLaunchHostFunc on a capturing stream
//     becomes a host node (it does not run while capturing) between two
//     captured kernels, on a forked stream as well; the graph replays it;
//   - refusals: a graph with host nodes cannot be a child graph; launched
//     into a capture, it invalidates the capture;
//   - a child-graph node's graph (cudaGraphChildGraphNodeGetGraph): the node's
//     own copy of the child, the same handle each time, with the child's
//     nodes; a node added to it runs in later instantiations of the parent,
//     the child itself is unchanged; it takes no memory or host nodes and
//     cannot be destroyed;
//   - capture into a graph (cudaStreamBeginCaptureToGraph): captured kernels
//     and a host function join an existing graph after its memset node; the
//     capture's dependencies take a node of that graph
//     (cudaStreamUpdateCaptureDependencies), not one of another graph, and
//     only while capturing.
// Prints one line per part, then "all checks passed", or the first failure.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime_check.h"
#include "runtime_kernels.cuh"

namespace {

constexpr int kN = 1000;
constexpr size_t kBytes = kN * sizeof(float);
constexpr int kBlocks = (kN + 255) / 256;

// What the host functions did, in order (they run on the runtime's callback
// thread; the program reads the log after synchronizing).
std::mutex log_mu;
std::vector<int> host_log;
void Log(void* tag) {
  std::lock_guard<std::mutex> lock(log_mu);
  host_log.push_back(static_cast<int>(reinterpret_cast<intptr_t>(tag)));
}
std::vector<int> TakeLog() {
  std::lock_guard<std::mutex> lock(log_mu);
  std::vector<int> log;
  log.swap(host_log);
  return log;
}
void* Tag(int tag) { return reinterpret_cast<void*>(static_cast<intptr_t>(tag)); }

// Host node A: logs 1, then holds its replay until the program releases it.
struct Hold {
  std::atomic<bool> reached{false};
  std::atomic<bool> released{false};
};
void LogAndHold(void* p) {
  auto* hold = static_cast<Hold*>(p);
  Log(Tag(1));
  hold->reached.store(true);
  while (!hold->released.load()) std::this_thread::yield();
}

void Count(void* counter) { static_cast<std::atomic<int>*>(counter)->fetch_add(1); }

void ExpectValues(const float* device, float scale) {
  std::vector<float> host(kN);
  RT_CHECK(cudaMemcpy(host.data(), device, kBytes, cudaMemcpyDeviceToHost));
  for (int i = 0; i < kN; ++i) RT_EXPECT(host[i] == scale * static_cast<float>(i));
}

cudaKernelNodeParams AccumulateParams(void** args) {
  cudaKernelNodeParams k = {};
  k.func = reinterpret_cast<void*>(rt_accumulate);
  k.gridDim = dim3(kBlocks);
  k.blockDim = dim3(256);
  k.kernelParams = args;
  return k;
}

void ExplicitHostNodes(cudaStream_t s, float* acc, float* x) {
  int n = kN;
  void* args[] = {&acc, &x, &n};
  Hold hold;
  cudaGraph_t graph;
  RT_CHECK(cudaGraphCreate(&graph, 0));
  cudaMemsetParams m = {};
  m.dst = acc;
  m.value = 0;
  m.elementSize = 4;
  m.width = kN;
  m.height = 1;
  cudaGraphNode_t memset, a, kernel, b;
  RT_CHECK(cudaGraphAddMemsetNode(&memset, graph, nullptr, 0, &m));
  const cudaHostNodeParams pa = {LogAndHold, &hold};
  RT_CHECK(cudaGraphAddHostNode(&a, graph, &memset, 1, &pa));
  const cudaKernelNodeParams k = AccumulateParams(args);
  RT_CHECK(cudaGraphAddKernelNode(&kernel, graph, &a, 1, &k));
  const cudaHostNodeParams pb = {Log, Tag(2)};
  RT_CHECK(cudaGraphAddHostNode(&b, graph, &kernel, 1, &pb));
  cudaGraphExec_t exec;
  RT_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 3; ++replay) {
    hold.reached.store(false);
    hold.released.store(false);
    RT_CHECK(cudaGraphLaunch(exec, s));
    while (!hold.reached.load()) std::this_thread::yield();
    // Held at A: the replay is not done and B has not run.
    RT_EXPECT(cudaStreamQuery(s) == cudaErrorNotReady);
    RT_EXPECT(TakeLog() == std::vector<int>({1}));
    hold.released.store(true);
    RT_CHECK(cudaStreamSynchronize(s));
    RT_EXPECT(TakeLog() == std::vector<int>({2}));
    ExpectValues(acc, 1.0f);
  }
  // Two launches queued back to back run A, B, A, B.
  hold.released.store(true);
  RT_CHECK(cudaGraphLaunch(exec, s));
  RT_CHECK(cudaGraphLaunch(exec, s));
  RT_CHECK(cudaStreamSynchronize(s));
  RT_EXPECT(TakeLog() == std::vector<int>({1, 2, 1, 2}));
  RT_CHECK(cudaGraphExecDestroy(exec));
  RT_CHECK(cudaGraphDestroy(graph));
  std::printf("explicit host nodes replayed in order: ok\n");
}

void NodeParameters(cudaStream_t s) {
  std::atomic<int> first{0}, second{0}, third{0};
  cudaGraph_t graph;
  RT_CHECK(cudaGraphCreate(&graph, 0));
  cudaGraphNode_t node, generic;
  const cudaHostNodeParams p = {Count, &first};
  RT_CHECK(cudaGraphAddHostNode(&node, graph, nullptr, 0, &p));
  cudaHostNodeParams read = {};
  RT_CHECK(cudaGraphHostNodeGetParams(node, &read));
  RT_EXPECT(read.fn == Count && read.userData == &first);
  cudaGraphNodeType type;
  RT_CHECK(cudaGraphNodeGetType(node, &type));
  RT_EXPECT(type == cudaGraphNodeTypeHost);
  // The generic entry point: a second host node after the first.
  cudaGraphNodeParams generic_params = {};
  generic_params.type = cudaGraphNodeTypeHost;
  generic_params.host.fn = Count;
  generic_params.host.userData = &third;
  RT_CHECK(cudaGraphAddNode(&generic, graph, &node, nullptr, 1, &generic_params));

  cudaGraphExec_t exec_a, exec_b;
  RT_CHECK(cudaGraphInstantiate(&exec_a, graph, 0));
  RT_CHECK(cudaGraphInstantiate(&exec_b, graph, 0));
  // One executable graph's node calls another function; the graph's stays.
  const cudaHostNodeParams to_second = {Count, &second};
  RT_CHECK(cudaGraphExecHostNodeSetParams(exec_b, node, &to_second));
  RT_CHECK(cudaGraphHostNodeGetParams(node, &read));
  RT_EXPECT(read.userData == &first);
  RT_CHECK(cudaGraphLaunch(exec_a, s));
  RT_CHECK(cudaGraphLaunch(exec_b, s));
  RT_CHECK(cudaGraphLaunch(exec_b, s));
  RT_CHECK(cudaStreamSynchronize(s));
  RT_EXPECT(first.load() == 1 && second.load() == 2 && third.load() == 3);
  // The graph's node changed: later instantiations call the new function.
  RT_CHECK(cudaGraphHostNodeSetParams(node, &to_second));
  RT_CHECK(cudaGraphHostNodeGetParams(node, &read));
  RT_EXPECT(read.userData == &second);
  cudaGraphExec_t exec_c;
  RT_CHECK(cudaGraphInstantiate(&exec_c, graph, 0));
  RT_CHECK(cudaGraphLaunch(exec_c, s));
  RT_CHECK(cudaGraphLaunch(exec_a, s));
  RT_CHECK(cudaStreamSynchronize(s));
  RT_EXPECT(first.load() == 2 && second.load() == 3 && third.load() == 5);
  // Bad parameters are refused.
  const cudaHostNodeParams no_function = {nullptr, &first};
  cudaGraphNode_t refused;
  RT_EXPECT(cudaGraphAddHostNode(&refused, graph, nullptr, 0, &no_function) ==
            cudaErrorInvalidValue);
  RT_EXPECT(cudaGraphHostNodeSetParams(node, nullptr) == cudaErrorInvalidValue);
  RT_CHECK(cudaGraphExecDestroy(exec_a));
  RT_CHECK(cudaGraphExecDestroy(exec_b));
  RT_CHECK(cudaGraphExecDestroy(exec_c));
  RT_CHECK(cudaGraphDestroy(graph));
  std::printf("host node parameters: ok\n");
}

void CapturedHostFunctions(cudaStream_t s, float* acc, float* x) {
  cudaStream_t side;
  RT_CHECK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
  cudaEvent_t fork, join;
  RT_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  RT_CHECK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  std::atomic<int> on_side{0};
  RT_CHECK(cudaMemsetAsync(acc, 0, kBytes, s));  // on s: it is non-blocking
  RT_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  rt_accumulate<<<kBlocks, 256, 0, s>>>(acc, x, kN);
  RT_CHECK(cudaLaunchHostFunc(s, Log, Tag(3)));
  rt_accumulate<<<kBlocks, 256, 0, s>>>(acc, x, kN);
  RT_CHECK(cudaEventRecord(fork, s));
  RT_CHECK(cudaStreamWaitEvent(side, fork, 0));
  RT_CHECK(cudaLaunchHostFunc(side, Count, &on_side));
  RT_CHECK(cudaEventRecord(join, side));
  RT_CHECK(cudaStreamWaitEvent(s, join, 0));
  RT_CHECK(cudaLaunchHostFunc(s, Log, Tag(4)));
  cudaGraph_t graph;
  RT_CHECK(cudaStreamEndCapture(s, &graph));
  // Captured, not run.
  RT_EXPECT(TakeLog().empty() && on_side.load() == 0);
  cudaGraphExec_t exec;
  RT_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  constexpr int kReplays = 4;
  for (int i = 0; i < kReplays; ++i) RT_CHECK(cudaGraphLaunch(exec, s));
  RT_CHECK(cudaStreamSynchronize(s));
  std::vector<int> expected;
  for (int i = 0; i < kReplays; ++i) expected.insert(expected.end(), {3, 4});
  RT_EXPECT(TakeLog() == expected);
  RT_EXPECT(on_side.load() == kReplays);
  ExpectValues(acc, 2.0f * kReplays);
  RT_CHECK(cudaGraphExecDestroy(exec));
  RT_CHECK(cudaGraphDestroy(graph));
  RT_CHECK(cudaEventDestroy(fork));
  RT_CHECK(cudaEventDestroy(join));
  RT_CHECK(cudaStreamDestroy(side));
  std::printf("captured host functions replayed: ok\n");
}

void Refusals(cudaStream_t s) {
  std::atomic<int> count{0};
  cudaGraph_t child, parent;
  RT_CHECK(cudaGraphCreate(&child, 0));
  RT_CHECK(cudaGraphCreate(&parent, 0));
  cudaGraphNode_t node;
  const cudaHostNodeParams p = {Count, &count};
  RT_CHECK(cudaGraphAddHostNode(&node, child, nullptr, 0, &p));
  RT_EXPECT(cudaGraphAddChildGraphNode(&node, parent, nullptr, 0, child) == cudaErrorNotSupported);
  // Launched into a capture, a graph with host nodes invalidates it.
  cudaGraphExec_t exec;
  RT_CHECK(cudaGraphInstantiate(&exec, child, 0));
  cudaStream_t capturing;
  RT_CHECK(cudaStreamCreateWithFlags(&capturing, cudaStreamNonBlocking));
  RT_CHECK(cudaStreamBeginCapture(capturing, cudaStreamCaptureModeRelaxed));
  RT_EXPECT(cudaGraphLaunch(exec, capturing) == cudaErrorStreamCaptureUnsupported);
  cudaGraph_t captured = nullptr;
  RT_EXPECT(cudaStreamEndCapture(capturing, &captured) == cudaErrorStreamCaptureInvalidated);
  RT_EXPECT(captured == nullptr);
  (void)cudaGetLastError();
  // Nothing ran; the graph still launches.
  RT_CHECK(cudaGraphLaunch(exec, s));
  RT_CHECK(cudaStreamSynchronize(s));
  RT_EXPECT(count.load() == 1);
  RT_CHECK(cudaStreamDestroy(capturing));
  RT_CHECK(cudaGraphExecDestroy(exec));
  RT_CHECK(cudaGraphDestroy(parent));
  RT_CHECK(cudaGraphDestroy(child));
  std::printf("host node refusals: ok\n");
}

void ChildGraphNodeGraph(cudaStream_t s, float* acc, float* x) {
  int n = kN;
  void* args[] = {&acc, &x, &n};
  const cudaKernelNodeParams k = AccumulateParams(args);
  cudaGraph_t child, parent;
  RT_CHECK(cudaGraphCreate(&child, 0));
  cudaGraphNode_t first;
  RT_CHECK(cudaGraphAddKernelNode(&first, child, nullptr, 0, &k));
  RT_CHECK(cudaGraphCreate(&parent, 0));
  cudaMemsetParams m = {};
  m.dst = acc;
  m.elementSize = 4;
  m.width = kN;
  m.height = 1;
  cudaGraphNode_t memset, child_node;
  RT_CHECK(cudaGraphAddMemsetNode(&memset, parent, nullptr, 0, &m));
  RT_CHECK(cudaGraphAddChildGraphNode(&child_node, parent, &memset, 1, child));
  cudaGraph_t embedded, again;
  RT_CHECK(cudaGraphChildGraphNodeGetGraph(child_node, &embedded));
  RT_CHECK(cudaGraphChildGraphNodeGetGraph(child_node, &again));
  RT_EXPECT(embedded == again && embedded != child);
  size_t count = 0;
  RT_CHECK(cudaGraphGetNodes(embedded, nullptr, &count));
  RT_EXPECT(count == 1);
  cudaGraphNode_t copy;
  RT_CHECK(cudaGraphGetNodes(embedded, &copy, &count));
  RT_EXPECT(copy != first);
  cudaKernelNodeParams read = {};
  RT_CHECK(cudaGraphKernelNodeGetParams(copy, &read));
  RT_EXPECT(read.func == reinterpret_cast<void*>(rt_accumulate));
  // An edit of the node's graph: a second accumulation after the first.
  cudaGraphNode_t second;
  RT_CHECK(cudaGraphAddKernelNode(&second, embedded, &copy, 1, &k));
  cudaGraphExec_t exec;
  RT_CHECK(cudaGraphInstantiate(&exec, parent, 0));
  RT_CHECK(cudaGraphLaunch(exec, s));
  RT_CHECK(cudaStreamSynchronize(s));
  ExpectValues(acc, 2.0f);
  // The child itself is as it was: one accumulation.
  RT_CHECK(cudaMemsetAsync(acc, 0, kBytes, s));  // on s: it is non-blocking
  cudaGraphExec_t child_exec;
  RT_CHECK(cudaGraphInstantiate(&child_exec, child, 0));
  RT_CHECK(cudaGraphLaunch(child_exec, s));
  RT_CHECK(cudaStreamSynchronize(s));
  ExpectValues(acc, 1.0f);
  // What the node's graph cannot take.
  cudaMemAllocNodeParams alloc = {};
  alloc.poolProps.allocType = cudaMemAllocationTypePinned;
  alloc.poolProps.location.type = cudaMemLocationTypeDevice;
  alloc.bytesize = kBytes;
  cudaGraphNode_t refused;
  RT_EXPECT(cudaGraphAddMemAllocNode(&refused, embedded, nullptr, 0, &alloc) ==
            cudaErrorInvalidValue);
  std::atomic<int> count_calls{0};
  const cudaHostNodeParams host = {Count, &count_calls};
  RT_EXPECT(cudaGraphAddHostNode(&refused, embedded, nullptr, 0, &host) == cudaErrorNotSupported);
  RT_EXPECT(cudaGraphDestroy(embedded) == cudaErrorInvalidValue);
  (void)cudaGetLastError();
  RT_CHECK(cudaGraphExecDestroy(exec));
  RT_CHECK(cudaGraphExecDestroy(child_exec));
  RT_CHECK(cudaGraphDestroy(parent));  // the node's graph goes with it
  RT_CHECK(cudaGraphDestroy(child));
  std::printf("child graph node's graph: ok\n");
}

void CaptureIntoGraph(cudaStream_t s, float* acc, float* x) {
  cudaGraph_t graph, other;
  RT_CHECK(cudaGraphCreate(&graph, 0));
  RT_CHECK(cudaGraphCreate(&other, 0));
  cudaMemsetParams m = {};
  m.dst = acc;
  m.elementSize = 4;
  m.width = kN;
  m.height = 1;
  cudaGraphNode_t memset, foreign;
  RT_CHECK(cudaGraphAddMemsetNode(&memset, graph, nullptr, 0, &m));
  RT_CHECK(cudaGraphAddEmptyNode(&foreign, other, nullptr, 0));
  RT_EXPECT(cudaStreamBeginCaptureToGraph(s, graph, &foreign, nullptr, 1,
                                          cudaStreamCaptureModeGlobal) == cudaErrorInvalidValue);
  std::atomic<int> count{0};
  RT_CHECK(
      cudaStreamBeginCaptureToGraph(s, graph, &memset, nullptr, 1, cudaStreamCaptureModeGlobal));
  rt_accumulate<<<kBlocks, 256, 0, s>>>(acc, x, kN);
  RT_CHECK(cudaLaunchHostFunc(s, Count, &count));
  RT_CHECK(cudaStreamUpdateCaptureDependencies(s, &memset, nullptr, 1,
                                               cudaStreamAddCaptureDependencies));
  RT_EXPECT(cudaStreamUpdateCaptureDependencies(s, &foreign, nullptr, 1,
                                                cudaStreamAddCaptureDependencies) ==
            cudaErrorInvalidValue);
  rt_accumulate<<<kBlocks, 256, 0, s>>>(acc, x, kN);
  cudaGraph_t ended = nullptr;
  RT_CHECK(cudaStreamEndCapture(s, &ended));
  RT_EXPECT(ended == graph && count.load() == 0);
  RT_EXPECT(cudaStreamUpdateCaptureDependencies(
                s, &memset, nullptr, 1, cudaStreamAddCaptureDependencies) == cudaErrorIllegalState);
  cudaGraphExec_t exec;
  RT_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  RT_CHECK(cudaGraphLaunch(exec, s));
  RT_CHECK(cudaGraphLaunch(exec, s));
  RT_CHECK(cudaStreamSynchronize(s));
  ExpectValues(acc, 2.0f);  // the memset runs first in each launch
  RT_EXPECT(count.load() == 2);
  RT_CHECK(cudaGraphExecDestroy(exec));
  RT_CHECK(cudaGraphDestroy(graph));
  RT_CHECK(cudaGraphDestroy(other));
  std::printf("capture into a graph: ok\n");
}

}  // namespace

int main() {
  cudaStream_t s;
  RT_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  float *acc, *x;
  RT_CHECK(cudaMalloc(&acc, kBytes));
  RT_CHECK(cudaMalloc(&x, kBytes));
  std::vector<float> host(kN);
  for (int i = 0; i < kN; ++i) host[i] = static_cast<float>(i);
  RT_CHECK(cudaMemcpy(x, host.data(), kBytes, cudaMemcpyHostToDevice));

  ExplicitHostNodes(s, acc, x);
  NodeParameters(s);
  CapturedHostFunctions(s, acc, x);
  Refusals(s);
  ChildGraphNodeGraph(s, acc, x);
  CaptureIntoGraph(s, acc, x);

  RT_CHECK(cudaFree(acc));
  RT_CHECK(cudaFree(x));
  RT_CHECK(cudaStreamDestroy(s));
  std::printf("all checks passed\n");
  return 0;
}
