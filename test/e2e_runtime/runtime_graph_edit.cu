// A CUDA runtime program for explicit-graph editing and node parameters:
//   - edges added and removed (cudaGraphAddDependencies,
//     cudaGraphRemoveDependencies) decide the order nodes run in: nodes
//     added as "acc += x; x *= 2; x = 1" with the edges x = 1 -> x *= 2 ->
//     acc += x run in that order (acc grows by 2 a launch); the structure
//     queries follow the edits; a duplicate edge, a missing one, a node of
//     another graph or a self edge are refused with cudaErrorInvalidValue;
//     an edge closing a cycle makes instantiation fail (cudaErrorInvalidValue,
//     cudaGraphInstantiateInvalidStructure naming a node on the cycle);
//   - cudaGraphDestroyNode takes the node and its edges out; cudaGraphExecUpdate
//     compares topologies after the edits (an edited graph updates from an
//     equal one built directly, and refuses one with an edge missing);
//   - a clone's nodes have handles (cudaGraphNodeFindInClone): its structure
//     is the original's, it is edited apart from it, and it can update an
//     executable graph of the original;
//   - cudaGraph{Kernel,Memset,Memcpy}NodeSetParams change the graph's node
//     (GetParams answers the new values; an executable graph made before
//     keeps the old work, a new one runs the new work); cudaGraphExec{Memset,
//     Memcpy,ChildGraph}NodeSetParams change one executable graph only (a
//     child graph of another topology, a node of another type or added after
//     instantiation are refused);
//   - the generic cudaGraphAddNode, cudaGraphNodeSetParams and
//     cudaGraphExecNodeSetParams build and change empty, kernel, memset,
//     memcpy and child-graph nodes; a kind ferry does not forward answers
//     cudaErrorNotSupported;
//   - kernel node attributes: the priority and the access policy window are
//     answered as set, cooperation and the cluster shape change the node's
//     work (it still computes the same), all of them copy to another kernel
//     node and stay when its parameters change; a memset node has none, and
//     an attribute ferry does not forward answers cudaErrorNotSupported;
//   - user objects: the destructor runs (on its own thread) when the last
//     reference goes: the program's, a graph's (moved or retained, released),
//     a child-graph node's, and an executable graph's, which outlive it until
//     its launches have finished (a launch held behind a host function keeps
//     the object alive after the executable graph is destroyed).
// Prints "all checks passed", or the first failure.
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime_check.h"
#include "runtime_kernels.cuh"

namespace {

constexpr int kN = 1000;
constexpr size_t kBytes = kN * sizeof(float);
constexpr int kBlocks = (kN + 255) / 256;

std::vector<float> Read(const float* device) {
  std::vector<float> out(kN);
  RT_CHECK(cudaMemcpy(out.data(), device, kBytes, cudaMemcpyDeviceToHost));
  return out;
}

void ExpectAll(const float* device, float want) {
  const std::vector<float> got = Read(device);
  for (int i = 0; i < kN; ++i) RT_EXPECT(got[i] == want);
}

void Fill(float* device, float value) {
  const std::vector<float> values(kN, value);
  RT_CHECK(cudaMemcpy(device, values.data(), kBytes, cudaMemcpyHostToDevice));
}

unsigned Bits(float value) {
  unsigned bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

cudaMemsetParams SetAll(float* dst, float value) {
  cudaMemsetParams set = {};
  set.dst = dst;
  set.value = Bits(value);
  set.elementSize = 4;
  set.width = kN;
  set.height = 1;
  return set;
}

// A kernel node's parameters; `args` must outlive their use.
cudaKernelNodeParams Kernel(void* func, void** args) {
  cudaKernelNodeParams kernel = {};
  kernel.func = func;
  kernel.gridDim = dim3(kBlocks);
  kernel.blockDim = dim3(256);
  kernel.kernelParams = args;
  return kernel;
}

size_t Count(cudaGraph_t graph) {
  size_t n = 0;
  RT_CHECK(cudaGraphGetNodes(graph, nullptr, &n));
  return n;
}
size_t Edges(cudaGraph_t graph) {
  size_t n = 0;
  RT_CHECK(cudaGraphGetEdges(graph, nullptr, nullptr, nullptr, &n));
  return n;
}

void Launch(cudaGraphExec_t exec) {
  RT_CHECK(cudaGraphLaunch(exec, 0));
  RT_CHECK(cudaStreamSynchronize(0));
}

void EdgeEdits(float* x, float* acc) {
  int n = kN;
  float two = 2.0f;
  void* accumulate_args[] = {&acc, &x, &n};
  void* scale_args[] = {&x, &two, &n};
  const cudaKernelNodeParams accumulate =
      Kernel(reinterpret_cast<void*>(rt_accumulate), accumulate_args);
  const cudaKernelNodeParams scale = Kernel(reinterpret_cast<void*>(rt_scale<float>), scale_args);
  const cudaMemsetParams one = SetAll(x, 1.0f);

  cudaGraph_t graph = nullptr;
  RT_CHECK(cudaGraphCreate(&graph, 0));
  cudaGraphNode_t add, twice, set;
  RT_CHECK(cudaGraphAddKernelNode(&add, graph, nullptr, 0, &accumulate));
  RT_CHECK(cudaGraphAddKernelNode(&twice, graph, nullptr, 0, &scale));
  RT_CHECK(cudaGraphAddMemsetNode(&set, graph, nullptr, 0, &one));
  const cudaGraphNode_t from[] = {set, twice};
  const cudaGraphNode_t to[] = {twice, add};
  RT_CHECK(cudaGraphAddDependencies(graph, from, to, nullptr, 2));
  RT_EXPECT(Edges(graph) == 2);
  cudaGraphNode_t listed[3] = {};
  size_t count = 3;
  RT_CHECK(cudaGraphGetRootNodes(graph, listed, &count));
  RT_EXPECT(count == 1 && listed[0] == set);
  count = 3;
  RT_CHECK(cudaGraphNodeGetDependencies(add, listed, nullptr, &count));
  RT_EXPECT(count == 1 && listed[0] == twice);
  count = 3;
  RT_CHECK(cudaGraphNodeGetDependentNodes(set, listed, nullptr, &count));
  RT_EXPECT(count == 1 && listed[0] == twice);

  // Refused edits change nothing.
  RT_EXPECT(cudaGraphAddDependencies(graph, &set, &twice, nullptr, 1) == cudaErrorInvalidValue);
  RT_EXPECT(cudaGraphRemoveDependencies(graph, &add, &set, nullptr, 1) == cudaErrorInvalidValue);
  RT_EXPECT(cudaGraphAddDependencies(graph, &add, &add, nullptr, 1) == cudaErrorInvalidValue);
  cudaGraph_t other = nullptr;
  RT_CHECK(cudaGraphCreate(&other, 0));
  cudaGraphNode_t stranger;
  RT_CHECK(cudaGraphAddEmptyNode(&stranger, other, nullptr, 0));
  RT_EXPECT(cudaGraphAddDependencies(graph, &stranger, &add, nullptr, 1) ==
            cudaErrorInvalidValue);
  const cudaGraphNode_t half_from[] = {add, set};  // the second edge exists: neither is added
  const cudaGraphNode_t half_to[] = {set, twice};
  RT_EXPECT(cudaGraphAddDependencies(graph, half_from, half_to, nullptr, 2) ==
            cudaErrorInvalidValue);
  (void)cudaGetLastError();
  RT_EXPECT(Edges(graph) == 2);

  // Topological order, not the order added: acc += 2 per launch.
  cudaGraphExec_t exec = nullptr;
  RT_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  Fill(x, 5.0f);
  RT_CHECK(cudaMemset(acc, 0, kBytes));
  for (int r = 0; r < 3; ++r) RT_CHECK(cudaGraphLaunch(exec, 0));
  RT_CHECK(cudaStreamSynchronize(0));
  ExpectAll(acc, 6.0f);
  ExpectAll(x, 2.0f);

  // A cycle: add -> set closes set -> twice -> add.
  RT_CHECK(cudaGraphAddDependencies(graph, &add, &set, nullptr, 1));
  cudaGraphExec_t refused = nullptr;
  RT_EXPECT(cudaGraphInstantiate(&refused, graph, 0) == cudaErrorInvalidValue);
  (void)cudaGetLastError();
  cudaGraphInstantiateParams params = {};
  RT_EXPECT(cudaGraphInstantiateWithParams(&refused, graph, &params) == cudaErrorInvalidValue);
  (void)cudaGetLastError();
  RT_EXPECT(params.result_out == cudaGraphInstantiateInvalidStructure);
  RT_EXPECT(params.errNode_out == add || params.errNode_out == set || params.errNode_out == twice);
  RT_CHECK(cudaGraphRemoveDependencies(graph, &add, &set, nullptr, 1));
  RT_EXPECT(Edges(graph) == 2);

  // Destroying the scaling node takes its two edges; the graph then sets x
  // and, unordered, adds it. An edge restores the order: acc += 1.
  RT_CHECK(cudaGraphDestroyNode(twice));
  RT_EXPECT(Count(graph) == 2 && Edges(graph) == 0);
  RT_CHECK(cudaGraphAddDependencies(graph, &set, &add, nullptr, 1));
  cudaGraphExec_t edited = nullptr;
  RT_CHECK(cudaGraphInstantiate(&edited, graph, 0));
  RT_CHECK(cudaMemset(acc, 0, kBytes));
  Launch(edited);
  ExpectAll(acc, 1.0f);
  // The executable graph made before the edits runs what it was made with.
  Launch(exec);
  ExpectAll(acc, 3.0f);

  // Exec update after the edits: the edited graph (add, set; set -> add)
  // against the same shape built directly, and one without the edge.
  cudaGraph_t direct = nullptr;
  RT_CHECK(cudaGraphCreate(&direct, 0));
  cudaGraphNode_t direct_add, direct_set;
  const cudaMemsetParams three = SetAll(x, 3.0f);
  RT_CHECK(cudaGraphAddKernelNode(&direct_add, direct, nullptr, 0, &accumulate));
  RT_CHECK(cudaGraphAddMemsetNode(&direct_set, direct, nullptr, 0, &three));
  cudaGraphExecUpdateResultInfo info = {};
  RT_EXPECT(cudaGraphExecUpdate(edited, direct, &info) == cudaErrorGraphExecUpdateFailure);
  (void)cudaGetLastError();
  RT_EXPECT(info.result == cudaGraphExecUpdateErrorTopologyChanged && info.errorNode == direct_add &&
            info.errorFromNode == direct_set);
  RT_CHECK(cudaGraphAddDependencies(direct, &direct_set, &direct_add, nullptr, 1));
  info = {};
  RT_CHECK(cudaGraphExecUpdate(edited, direct, &info));
  RT_EXPECT(info.result == cudaGraphExecUpdateSuccess);
  RT_CHECK(cudaMemset(acc, 0, kBytes));
  Launch(edited);
  ExpectAll(acc, 3.0f);

  // A clone of the edited graph has handles for its nodes (found with
  // cudaGraphNodeFindInClone) and the same edges; edits of the clone leave
  // the original alone, and an executable graph of the original updates
  // from the clone.
  cudaGraph_t clone = nullptr;
  RT_CHECK(cudaGraphClone(&clone, graph));
  cudaGraphNode_t clone_add = nullptr, clone_set = nullptr;
  RT_CHECK(cudaGraphNodeFindInClone(&clone_add, add, clone));
  RT_CHECK(cudaGraphNodeFindInClone(&clone_set, set, clone));
  RT_EXPECT(clone_add != add && clone_set != set && Count(clone) == 2 && Edges(clone) == 1);
  count = 3;
  RT_CHECK(cudaGraphNodeGetDependencies(clone_add, listed, nullptr, &count));
  RT_EXPECT(count == 1 && listed[0] == clone_set);
  cudaGraphNode_t none = nullptr;
  RT_EXPECT(cudaGraphNodeFindInClone(&none, stranger, clone) == cudaErrorInvalidValue);
  (void)cudaGetLastError();
  const cudaMemsetParams four = SetAll(x, 4.0f);
  RT_CHECK(cudaGraphMemsetNodeSetParams(clone_set, &four));
  info = {};
  RT_CHECK(cudaGraphExecUpdate(edited, clone, &info));
  RT_CHECK(cudaMemset(acc, 0, kBytes));
  Launch(edited);
  ExpectAll(acc, 4.0f);
  cudaMemsetParams original_set = {};
  RT_CHECK(cudaGraphMemsetNodeGetParams(set, &original_set));
  RT_EXPECT(original_set.value == Bits(1.0f));
  RT_CHECK(cudaGraphRemoveDependencies(clone, &clone_set, &clone_add, nullptr, 1));
  RT_EXPECT(Edges(clone) == 0 && Edges(graph) == 1);

  for (cudaGraphExec_t e : {exec, edited}) RT_CHECK(cudaGraphExecDestroy(e));
  for (cudaGraph_t g : {graph, other, direct, clone}) RT_CHECK(cudaGraphDestroy(g));
  std::printf("edge edits: ok\n");
}

// x = value; x *= factor; y = x: the three kinds whose parameters change.
struct Pipeline {
  cudaGraph_t graph = nullptr;
  cudaGraphNode_t set, scale, copy;
};

void NodeParams(float* x, float* y, float* z) {
  int n = kN;
  float two = 2.0f, three = 3.0f;
  void* by_two[] = {&x, &two, &n};
  void* by_three[] = {&x, &three, &n};
  const cudaKernelNodeParams scale_two = Kernel(reinterpret_cast<void*>(rt_scale<float>), by_two);
  const cudaKernelNodeParams scale_three =
      Kernel(reinterpret_cast<void*>(rt_scale<float>), by_three);
  const cudaMemsetParams set_one = SetAll(x, 1.0f), set_five = SetAll(x, 5.0f),
                         set_seven = SetAll(x, 7.0f);
  Pipeline p;
  RT_CHECK(cudaGraphCreate(&p.graph, 0));
  RT_CHECK(cudaGraphAddMemsetNode(&p.set, p.graph, nullptr, 0, &set_one));
  RT_CHECK(cudaGraphAddKernelNode(&p.scale, p.graph, &p.set, 1, &scale_two));
  RT_CHECK(cudaGraphAddMemcpyNode1D(&p.copy, p.graph, &p.scale, 1, y, x, kBytes,
                                    cudaMemcpyDeviceToDevice));
  cudaGraphExec_t before = nullptr;
  RT_CHECK(cudaGraphInstantiate(&before, p.graph, 0));

  // The graph's nodes change: GetParams answers the new values, and an
  // instantiation made now runs them (z = 5 * 3); the one made before
  // still computes y = 1 * 2.
  RT_CHECK(cudaGraphMemsetNodeSetParams(p.set, &set_five));
  RT_CHECK(cudaGraphKernelNodeSetParams(p.scale, &scale_three));
  RT_CHECK(cudaGraphMemcpyNodeSetParams1D(p.copy, z, x, kBytes, cudaMemcpyDeviceToDevice));
  cudaMemsetParams set_now = {};
  RT_CHECK(cudaGraphMemsetNodeGetParams(p.set, &set_now));
  RT_EXPECT(set_now.value == Bits(5.0f) && set_now.dst == x);
  cudaKernelNodeParams scale_now = {};
  RT_CHECK(cudaGraphKernelNodeGetParams(p.scale, &scale_now));
  RT_EXPECT(*static_cast<float*>(scale_now.kernelParams[1]) == 3.0f);
  cudaMemcpy3DParms copy_now = {};
  RT_CHECK(cudaGraphMemcpyNodeGetParams(p.copy, &copy_now));
  RT_EXPECT(copy_now.dstPtr.ptr == z);
  cudaGraphExec_t after = nullptr;
  RT_CHECK(cudaGraphInstantiate(&after, p.graph, 0));
  RT_CHECK(cudaMemset(y, 0, kBytes));
  RT_CHECK(cudaMemset(z, 0, kBytes));
  Launch(before);
  ExpectAll(y, 2.0f);
  ExpectAll(z, 0.0f);
  Launch(after);
  ExpectAll(z, 15.0f);

  // One executable graph's nodes change; the graph's do not.
  RT_CHECK(cudaGraphExecMemsetNodeSetParams(before, p.set, &set_seven));
  RT_CHECK(cudaGraphExecMemcpyNodeSetParams1D(before, p.copy, z, x, kBytes,
                                              cudaMemcpyDeviceToDevice));
  Launch(before);
  ExpectAll(z, 14.0f);
  RT_CHECK(cudaGraphMemsetNodeGetParams(p.set, &set_now));
  RT_EXPECT(set_now.value == Bits(5.0f));
  Launch(after);
  ExpectAll(z, 15.0f);

  // Refused: parameters of another node type, a node added after
  // instantiation.
  RT_EXPECT(cudaGraphMemsetNodeSetParams(p.scale, &set_seven) == cudaErrorInvalidValue);
  RT_EXPECT(cudaGraphExecMemsetNodeSetParams(before, p.scale, &set_seven) ==
            cudaErrorInvalidValue);
  cudaGraphNode_t late;
  RT_CHECK(cudaGraphAddMemsetNode(&late, p.graph, &p.copy, 1, &set_one));
  RT_EXPECT(cudaGraphExecMemsetNodeSetParams(before, late, &set_seven) == cudaErrorInvalidValue);
  (void)cudaGetLastError();
  Launch(before);
  ExpectAll(z, 14.0f);

  // Child graphs: the executable graph's child changes to one of the same
  // topology (x = 7 instead of x = 1), not to one of another.
  cudaGraph_t child_one = nullptr, child_seven = nullptr, child_two_nodes = nullptr;
  cudaGraphNode_t unused;
  for (cudaGraph_t* child : {&child_one, &child_seven, &child_two_nodes}) {
    RT_CHECK(cudaGraphCreate(child, 0));
  }
  RT_CHECK(cudaGraphAddMemsetNode(&unused, child_one, nullptr, 0, &set_one));
  RT_CHECK(cudaGraphAddMemsetNode(&unused, child_seven, nullptr, 0, &set_seven));
  RT_CHECK(cudaGraphAddMemsetNode(&unused, child_two_nodes, nullptr, 0, &set_seven));
  RT_CHECK(cudaGraphAddEmptyNode(&unused, child_two_nodes, &unused, 1));
  cudaGraph_t parent = nullptr;
  RT_CHECK(cudaGraphCreate(&parent, 0));
  cudaGraphNode_t child_node, parent_copy;
  RT_CHECK(cudaGraphAddChildGraphNode(&child_node, parent, nullptr, 0, child_one));
  RT_CHECK(cudaGraphAddMemcpyNode1D(&parent_copy, parent, &child_node, 1, y, x, kBytes,
                                    cudaMemcpyDeviceToDevice));
  cudaGraphExec_t parent_exec = nullptr;
  RT_CHECK(cudaGraphInstantiate(&parent_exec, parent, 0));
  Launch(parent_exec);
  ExpectAll(y, 1.0f);
  RT_CHECK(cudaGraphExecChildGraphNodeSetParams(parent_exec, child_node, child_seven));
  Launch(parent_exec);
  ExpectAll(y, 7.0f);
  RT_EXPECT(cudaGraphExecChildGraphNodeSetParams(parent_exec, child_node, child_two_nodes) ==
            cudaErrorInvalidValue);
  (void)cudaGetLastError();

  for (cudaGraphExec_t e : {before, after, parent_exec}) RT_CHECK(cudaGraphExecDestroy(e));
  for (cudaGraph_t g : {p.graph, child_one, child_seven, child_two_nodes, parent}) {
    RT_CHECK(cudaGraphDestroy(g));
  }
  std::printf("node parameters set: ok\n");
}

void GenericNodes(float* x, float* y) {
  int n = kN;
  float two = 2.0f, ten = 10.0f;
  void* by_two[] = {&x, &two, &n};
  void* by_ten[] = {&x, &ten, &n};
  cudaGraph_t graph = nullptr;
  RT_CHECK(cudaGraphCreate(&graph, 0));
  cudaGraphNodeParams start = {};
  start.type = cudaGraphNodeTypeEmpty;
  cudaGraphNode_t start_node, set_node, scale_node, copy_node;
  RT_CHECK(cudaGraphAddNode(&start_node, graph, nullptr, nullptr, 0, &start));
  cudaGraphNodeParams set = {};
  set.type = cudaGraphNodeTypeMemset;
  set.memset.dst = x;
  set.memset.value = Bits(4.0f);
  set.memset.elementSize = 4;
  set.memset.width = kN;
  set.memset.height = 1;
  RT_CHECK(cudaGraphAddNode(&set_node, graph, &start_node, nullptr, 1, &set));
  cudaGraphNodeParams scale = {};
  scale.type = cudaGraphNodeTypeKernel;
  scale.kernel.func = reinterpret_cast<void*>(rt_scale<float>);
  scale.kernel.gridDim = dim3(kBlocks);
  scale.kernel.blockDim = dim3(256);
  scale.kernel.kernelParams = by_two;
  RT_CHECK(cudaGraphAddNode(&scale_node, graph, &set_node, nullptr, 1, &scale));
  cudaGraphNodeParams copy = {};
  copy.type = cudaGraphNodeTypeMemcpy;
  copy.memcpy.copyParams.srcPtr = make_cudaPitchedPtr(x, kBytes, kN, 1);
  copy.memcpy.copyParams.dstPtr = make_cudaPitchedPtr(y, kBytes, kN, 1);
  copy.memcpy.copyParams.extent = make_cudaExtent(kBytes, 1, 1);
  copy.memcpy.copyParams.kind = cudaMemcpyDeviceToDevice;
  RT_CHECK(cudaGraphAddNode(&copy_node, graph, &scale_node, nullptr, 1, &copy));
  cudaGraphNodeType type = cudaGraphNodeTypeEmpty;
  RT_CHECK(cudaGraphNodeGetType(copy_node, &type));
  RT_EXPECT(type == cudaGraphNodeTypeMemcpy && Count(graph) == 4 && Edges(graph) == 3);
  cudaGraphExec_t exec = nullptr;
  RT_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  Launch(exec);
  ExpectAll(y, 8.0f);

  // The generic setters, on the executable graph and on the graph.
  scale.kernel.kernelParams = by_ten;
  RT_CHECK(cudaGraphExecNodeSetParams(exec, scale_node, &scale));
  Launch(exec);
  ExpectAll(y, 40.0f);
  set.memset.value = Bits(0.5f);
  RT_CHECK(cudaGraphNodeSetParams(set_node, &set));
  cudaMemsetParams set_now = {};
  RT_CHECK(cudaGraphMemsetNodeGetParams(set_node, &set_now));
  RT_EXPECT(set_now.value == Bits(0.5f));
  cudaGraphExec_t again = nullptr;
  RT_CHECK(cudaGraphInstantiate(&again, graph, 0));
  Launch(again);
  ExpectAll(y, 1.0f);
  // Parameters of another kind than the node's are refused.
  RT_EXPECT(cudaGraphNodeSetParams(scale_node, &set) == cudaErrorInvalidValue);
  (void)cudaGetLastError();

  // A child graph through the generic call.
  cudaGraph_t parent = nullptr;
  RT_CHECK(cudaGraphCreate(&parent, 0));
  cudaGraphNodeParams child = {};
  child.type = cudaGraphNodeTypeGraph;
  child.graph.graph = graph;
  cudaGraphNode_t child_node;
  RT_CHECK(cudaGraphAddNode(&child_node, parent, nullptr, nullptr, 0, &child));
  RT_CHECK(cudaGraphNodeGetType(child_node, &type));
  RT_EXPECT(type == cudaGraphNodeTypeGraph);
  cudaGraphExec_t parent_exec = nullptr;
  RT_CHECK(cudaGraphInstantiate(&parent_exec, parent, 0));
  RT_CHECK(cudaMemset(y, 0, kBytes));
  Launch(parent_exec);
  ExpectAll(y, 1.0f);

  // A node kind ferry does not forward.
  cudaGraphNodeParams semaphore = {};
  semaphore.type = cudaGraphNodeTypeExtSemaphoreSignal;
  cudaGraphNode_t refused;
  RT_EXPECT(cudaGraphAddNode(&refused, graph, nullptr, nullptr, 0, &semaphore) ==
            cudaErrorNotSupported);
  (void)cudaGetLastError();
  RT_EXPECT(Count(graph) == 4);

  for (cudaGraphExec_t e : {exec, again, parent_exec}) RT_CHECK(cudaGraphExecDestroy(e));
  for (cudaGraph_t g : {graph, parent}) RT_CHECK(cudaGraphDestroy(g));
  std::printf("generic node entry points: ok\n");
}

void KernelNodeAttributes(float* x) {
  int n = kN;
  float two = 2.0f;
  void* by_two[] = {&x, &two, &n};
  const cudaKernelNodeParams scale = Kernel(reinterpret_cast<void*>(rt_scale<float>), by_two);
  cudaGraph_t graph = nullptr;
  RT_CHECK(cudaGraphCreate(&graph, 0));
  cudaGraphNode_t first, second, set;
  RT_CHECK(cudaGraphAddKernelNode(&first, graph, nullptr, 0, &scale));
  RT_CHECK(cudaGraphAddKernelNode(&second, graph, &first, 1, &scale));
  const cudaMemsetParams one = SetAll(x, 1.0f);
  RT_CHECK(cudaGraphAddMemsetNode(&set, graph, nullptr, 0, &one));
  RT_CHECK(cudaGraphAddDependencies(graph, &set, &first, nullptr, 1));

  // Hints, answered as set; none set: zero.
  cudaKernelNodeAttrValue value = {};
  RT_CHECK(cudaGraphKernelNodeGetAttribute(first, cudaLaunchAttributePriority, &value));
  RT_EXPECT(value.priority == 0);
  value.priority = 5;
  RT_CHECK(cudaGraphKernelNodeSetAttribute(first, cudaLaunchAttributePriority, &value));
  value = {};
  value.accessPolicyWindow.base_ptr = x;
  value.accessPolicyWindow.num_bytes = kBytes;
  value.accessPolicyWindow.hitRatio = 0.5f;
  value.accessPolicyWindow.hitProp = cudaAccessPropertyPersisting;
  value.accessPolicyWindow.missProp = cudaAccessPropertyStreaming;
  RT_CHECK(cudaGraphKernelNodeSetAttribute(first, cudaLaunchAttributeAccessPolicyWindow, &value));
  value.accessPolicyWindow.hitRatio = 2.0f;
  RT_EXPECT(cudaGraphKernelNodeSetAttribute(first, cudaLaunchAttributeAccessPolicyWindow,
                                            &value) == cudaErrorInvalidValue);
  value = {};
  RT_CHECK(cudaGraphKernelNodeGetAttribute(first, cudaLaunchAttributeAccessPolicyWindow, &value));
  RT_EXPECT(value.accessPolicyWindow.base_ptr == x && value.accessPolicyWindow.hitRatio == 0.5f &&
            value.accessPolicyWindow.num_bytes == kBytes);
  // Cooperation and the cluster shape change the node's work: it still
  // computes the same, launched cooperatively in clusters of one block.
  value = {};
  value.cooperative = 1;
  RT_CHECK(cudaGraphKernelNodeSetAttribute(first, cudaLaunchAttributeCooperative, &value));
  value = {};
  value.clusterDim.x = 1;
  value.clusterDim.y = 1;
  value.clusterDim.z = 1;
  RT_CHECK(cudaGraphKernelNodeSetAttribute(first, cudaLaunchAttributeClusterDimension, &value));
  value = {};
  RT_CHECK(cudaGraphKernelNodeGetAttribute(first, cudaLaunchAttributeCooperative, &value));
  RT_EXPECT(value.cooperative == 1);
  // Copied to the second node: all of them.
  RT_CHECK(cudaGraphKernelNodeCopyAttributes(second, first));
  value = {};
  RT_CHECK(cudaGraphKernelNodeGetAttribute(second, cudaLaunchAttributePriority, &value));
  RT_EXPECT(value.priority == 5);
  RT_CHECK(cudaGraphKernelNodeGetAttribute(second, cudaLaunchAttributeClusterDimension, &value));
  RT_EXPECT(value.clusterDim.x == 1 && value.clusterDim.y == 1 && value.clusterDim.z == 1);
  // A kernel's new parameters keep the node's attributes.
  RT_CHECK(cudaGraphKernelNodeSetParams(second, &scale));
  RT_CHECK(cudaGraphKernelNodeGetAttribute(second, cudaLaunchAttributeCooperative, &value));
  RT_EXPECT(value.cooperative == 1);
  cudaGraphExec_t exec = nullptr;
  RT_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  Launch(exec);
  ExpectAll(x, 4.0f);

  // Not a kernel node; an attribute ferry does not forward.
  RT_EXPECT(cudaGraphKernelNodeGetAttribute(set, cudaLaunchAttributePriority, &value) ==
            cudaErrorInvalidValue);
  RT_EXPECT(cudaGraphKernelNodeGetAttribute(first, cudaLaunchAttributeMemSyncDomain, &value) ==
            cudaErrorNotSupported);
  (void)cudaGetLastError();
  RT_CHECK(cudaGraphExecDestroy(exec));
  RT_CHECK(cudaGraphDestroy(graph));
  std::printf("kernel node attributes: ok\n");
}

// User objects: counts its destructor's runs.
void CountDestroyed(void* counter) { static_cast<std::atomic<int>*>(counter)->fetch_add(1); }

// Whether `counter` reaches `want` within ten seconds (destructors run on a
// thread of their own, after the call that released the last reference).
bool Reaches(const std::atomic<int>& counter, int want) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (counter.load() != want) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// A host function that holds its stream until Open.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  static void Wait(void* data) {
    auto* gate = static_cast<Gate*>(data);
    std::unique_lock<std::mutex> lock(gate->mu);
    gate->cv.wait(lock, [gate] { return gate->open; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu);
    open = true;
    cv.notify_all();
  }
};

void UserObjects(float* x) {
  int n = kN;
  float two = 2.0f;
  void* by_two[] = {&x, &two, &n};
  const cudaKernelNodeParams scale = Kernel(reinterpret_cast<void*>(rt_scale<float>), by_two);
  std::atomic<int> destroyed{0};

  // The program's references: two, then one released, then the other.
  cudaUserObject_t object = nullptr;
  RT_CHECK(cudaUserObjectCreate(&object, &destroyed, CountDestroyed, 2,
                                cudaUserObjectNoDestructorSync));
  RT_CHECK(cudaUserObjectRelease(object, 1));
  RT_CHECK(cudaUserObjectRetain(object, 1));
  RT_CHECK(cudaUserObjectRelease(object, 1));
  RT_EXPECT(destroyed.load() == 0);

  // A graph's, moved from the program; an executable graph's, which outlive
  // the graph and the executable graph until its launches have finished.
  cudaGraph_t graph = nullptr;
  RT_CHECK(cudaGraphCreate(&graph, 0));
  cudaGraphNode_t node;
  RT_CHECK(cudaGraphAddKernelNode(&node, graph, nullptr, 0, &scale));
  RT_CHECK(cudaGraphRetainUserObject(graph, object, 1, cudaGraphUserObjectMove));
  RT_EXPECT(cudaGraphReleaseUserObject(graph, object, 2) == cudaErrorInvalidValue);
  (void)cudaGetLastError();
  cudaGraphExec_t exec = nullptr;
  RT_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  RT_CHECK(cudaGraphDestroy(graph));
  cudaStream_t s = nullptr;
  RT_CHECK(cudaStreamCreate(&s));
  Gate gate;
  RT_CHECK(cudaLaunchHostFunc(s, Gate::Wait, &gate));
  RT_CHECK(cudaGraphLaunch(exec, s));
  RT_CHECK(cudaGraphExecDestroy(exec));
  RT_EXPECT(destroyed.load() == 0);  // the launch is held behind the gate
  gate.Open();
  RT_CHECK(cudaStreamSynchronize(s));
  RT_EXPECT(Reaches(destroyed, 1));

  // A child-graph node holds its child's references; a released graph
  // reference and the node's go with the parent.
  std::atomic<int> second_destroyed{0};
  cudaUserObject_t second = nullptr;
  RT_CHECK(cudaUserObjectCreate(&second, &second_destroyed, CountDestroyed, 1,
                                cudaUserObjectNoDestructorSync));
  cudaGraph_t child = nullptr, parent = nullptr;
  RT_CHECK(cudaGraphCreate(&child, 0));
  RT_CHECK(cudaGraphCreate(&parent, 0));
  RT_CHECK(cudaGraphAddKernelNode(&node, child, nullptr, 0, &scale));
  RT_CHECK(cudaGraphRetainUserObject(child, second, 2, 0));
  RT_CHECK(cudaGraphReleaseUserObject(child, second, 1));
  RT_CHECK(cudaGraphAddChildGraphNode(&node, parent, nullptr, 0, child));
  RT_CHECK(cudaUserObjectRelease(second, 1));
  RT_CHECK(cudaGraphDestroy(child));
  RT_EXPECT(second_destroyed.load() == 0);
  RT_CHECK(cudaGraphDestroy(parent));
  RT_EXPECT(Reaches(second_destroyed, 1));
  RT_CHECK(cudaStreamDestroy(s));
  std::printf("user objects: ok\n");
}

}  // namespace

int main() {
  float *x, *y, *z, *acc;
  for (float** p : {&x, &y, &z, &acc}) RT_CHECK(cudaMalloc(p, kBytes));
  EdgeEdits(x, acc);
  NodeParams(x, y, z);
  GenericNodes(x, y);
  KernelNodeAttributes(x);
  UserObjects(x);
  for (float* p : {x, y, z, acc}) RT_CHECK(cudaFree(p));
  std::printf("all checks passed\n");
  return 0;
}
