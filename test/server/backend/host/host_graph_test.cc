// HostGraph and HostGraphExec (server/backend/host/host_graph.h): the order
// nodes run in follows their dependencies as edited, cycles are refused,
// destroyed nodes take their edges, executable graphs keep what they were
// made with, child nodes run their embedded graphs as edited, host nodes are
// counted.
#include "server/backend/host/host_graph.h"

#include <cuda.h>
#include <gtest/gtest.h>

#include <memory>
#include <vector>

namespace ferry::backend::host_internal {
namespace {

using Kind = GraphNodeSpec::Kind;

// Nodes that append their label to `ran` when they run.
class HostGraphTest : public ::testing::Test {
 protected:
  HostGraphNode* Node(HostGraph& graph, int label, std::vector<GraphNode*> after = {}) {
    return graph.Add(
        Kind::kKernel, [this, label] { ran.push_back(label); }, after);
  }
  std::vector<int> Run(const HostGraphExec& exec) {
    ran.clear();
    for (const HostGraphOp& op : *exec.ops()) op();
    return ran;
  }
  std::vector<int> ran;
};

TEST_F(HostGraphTest, RunsNodesInATopologicalOrderOfTheEditedDependencies) {
  HostGraph graph;
  HostGraphNode* a = Node(graph, 1);
  HostGraphNode* b = Node(graph, 2);
  HostGraphNode* c = Node(graph, 3);
  // c -> b -> a: the reverse of the order added.
  std::vector<GraphNode*> from = {c, b}, to = {b, a};
  ASSERT_TRUE(graph.EditEdges(from, to, false).ok());
  std::unique_ptr<HostGraphExec> exec;
  ASSERT_TRUE(HostGraphExec::Make(graph, &exec).ok());
  EXPECT_EQ(Run(*exec), (std::vector<int>{3, 2, 1}));
  // Without b -> a, a is ready first (ties go to the node added first).
  std::vector<GraphNode*> b_only = {b}, a_only = {a};
  ASSERT_TRUE(graph.EditEdges(b_only, a_only, true).ok());
  std::unique_ptr<HostGraphExec> unordered;
  ASSERT_TRUE(HostGraphExec::Make(graph, &unordered).ok());
  EXPECT_EQ(Run(*unordered), (std::vector<int>{1, 3, 2}));
  EXPECT_EQ(Run(*exec), (std::vector<int>{3, 2, 1})) << "made before the edit";
}

TEST_F(HostGraphTest, RefusesCyclesAndInvalidEditsWithoutChangingAnything) {
  HostGraph graph, other;
  HostGraphNode* a = Node(graph, 1);
  HostGraphNode* b = Node(graph, 2, {a});
  HostGraphNode* stranger = Node(other, 9);
  std::vector<GraphNode*> ab = {a}, bb = {b}, ss = {stranger};
  EXPECT_EQ(graph.EditEdges(ab, bb, false).cuda_result(), CUDA_ERROR_INVALID_VALUE);  // present
  EXPECT_EQ(graph.EditEdges(bb, ab, true).cuda_result(), CUDA_ERROR_INVALID_VALUE);   // absent
  EXPECT_EQ(graph.EditEdges(ss, ab, false).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(graph.EditEdges(ab, ab, false).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  std::vector<GraphNode*> twice_from = {b, b}, twice_to = {a, a};
  EXPECT_EQ(graph.EditEdges(twice_from, twice_to, false).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_TRUE(a->dependencies.empty());
  // b -> a closes a cycle: no executable graph, and no child node of it.
  ASSERT_TRUE(graph.EditEdges(bb, ab, false).ok());
  std::unique_ptr<HostGraphExec> exec;
  EXPECT_EQ(HostGraphExec::Make(graph, &exec).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(graph.Order(nullptr).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  ASSERT_TRUE(graph.EditEdges(bb, ab, true).ok());
  ASSERT_TRUE(HostGraphExec::Make(graph, &exec).ok());
  EXPECT_EQ(Run(*exec), (std::vector<int>{1, 2}));
}

TEST_F(HostGraphTest, ADestroyedNodeTakesItsEdgesAndNeverNamesAnExecutableGraphsNode) {
  HostGraph graph;
  HostGraphNode* a = Node(graph, 1);
  HostGraphNode* b = Node(graph, 2, {a});
  HostGraphNode* c = Node(graph, 3, {b});
  std::unique_ptr<HostGraphExec> before;
  ASSERT_TRUE(HostGraphExec::Make(graph, &before).ok());
  ASSERT_TRUE(graph.Destroy(*b).ok());
  EXPECT_EQ(graph.size(), 2u);
  EXPECT_TRUE(c->dependencies.empty());
  // A node added now (perhaps where b was) is not one of `before`'s.
  HostGraphNode* d = Node(graph, 4);
  EXPECT_EQ(before->Replace(*d, [] {}).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Run(*before), (std::vector<int>{1, 2, 3}));
  // `before`'s own nodes can still be replaced and disabled.
  ASSERT_TRUE(before->Replace(*c, [this] { ran.push_back(30); }).ok());
  ASSERT_TRUE(before->SetEnabled(*a, false).ok());
  EXPECT_EQ(Run(*before), (std::vector<int>{2, 30}));
}

TEST_F(HostGraphTest, ClonesAndCapturedChainsKeepTheirOrder) {
  HostGraph captured(HostGraphOps{[this] { ran.push_back(1); }, [this] { ran.push_back(2); },
                                  [this] { ran.push_back(3); }});
  std::unique_ptr<HostGraphExec> exec;
  ASSERT_TRUE(HostGraphExec::Make(captured, &exec).ok());
  EXPECT_EQ(Run(*exec), (std::vector<int>{1, 2, 3}));
  HostGraph graph;
  HostGraphNode* a = Node(graph, 1);
  HostGraphNode* b = Node(graph, 2);
  std::vector<GraphNode*> from = {b}, to = {a};
  ASSERT_TRUE(graph.EditEdges(from, to, false).ok());
  std::unique_ptr<HostGraph> clone = graph.Clone();
  ASSERT_TRUE(graph.Destroy(*b).ok());  // the clone keeps its own copy
  ASSERT_TRUE(HostGraphExec::Make(*clone, &exec).ok());
  EXPECT_EQ(Run(*exec), (std::vector<int>{2, 1}));
}

// A child-graph node runs its embedded graph as it is when an executable
// graph is made: edits after the node was added reach later instantiations,
// not earlier ones; a clone of the parent gets its own copy.
TEST_F(HostGraphTest, AChildNodeRunsItsEmbeddedGraphAsEditedAtInstantiation) {
  HostGraph parent;
  HostGraphNode* child = parent.Add(Kind::kChild, [] {}, {});
  child->embedded = std::make_shared<HostGraph>();
  HostGraphNode* one = Node(*child->embedded, 1);
  Node(parent, 9, {child});
  std::unique_ptr<HostGraphExec> before;
  ASSERT_TRUE(HostGraphExec::Make(parent, &before).ok());
  Node(*child->embedded, 2, {one});
  std::unique_ptr<HostGraph> clone = parent.Clone();
  std::unique_ptr<HostGraphExec> after;
  ASSERT_TRUE(HostGraphExec::Make(parent, &after).ok());
  EXPECT_EQ(Run(*before), (std::vector<int>{1, 9}));
  EXPECT_EQ(Run(*after), (std::vector<int>{1, 2, 9}));
  Node(*child->embedded, 3);  // the clone's embedded graph is its own
  std::unique_ptr<HostGraphExec> of_clone;
  ASSERT_TRUE(HostGraphExec::Make(*clone, &of_clone).ok());
  EXPECT_EQ(Run(*of_clone), (std::vector<int>{1, 2, 9}));
  // A cycle in the embedded graph is refused where the parent is made.
  std::vector<GraphNode*> from = {child->embedded->nodes()[1].get()}, to = {one};
  ASSERT_TRUE(child->embedded->EditEdges(from, to, false).ok());
  EXPECT_EQ(HostGraphExec::Make(parent, &after).cuda_result(), CUDA_ERROR_INVALID_VALUE);
}

// Host nodes are counted wherever they are: added, or captured in a chain.
TEST_F(HostGraphTest, CountsHostNodes) {
  HostGraph graph;
  graph.Add(Kind::kHost, HostNodeOp{7}, {});
  Node(graph, 1);
  graph.Add(Kind::kHost, HostNodeOp{8}, {});
  EXPECT_EQ(graph.HostNodes(), 2u);
  HostGraph captured(HostGraphOps{[] {}, HostNodeOp{3}});
  EXPECT_EQ(captured.HostNodes(), 1u);
  std::unique_ptr<HostGraphExec> exec;
  ASSERT_TRUE(HostGraphExec::Make(graph, &exec).ok());
  EXPECT_EQ(CountHostNodes(*exec->ops()), 2u);
}

}  // namespace
}  // namespace ferry::backend::host_internal
