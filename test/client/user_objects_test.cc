// UserObjects (client/user_objects.h): the references the program, graphs,
// child-graph nodes, clones and executable graphs hold, and the destructor
// run once, on a thread of its own, when the last one goes.
#include "client/user_objects.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace ferry::client {
namespace {

struct Counter {
  std::atomic<int> runs{0};
  std::atomic<bool> other_thread{false};
  std::thread::id caller = std::this_thread::get_id();
  static void Destroy(void* data) {
    auto* c = static_cast<Counter*>(data);
    c->other_thread = std::this_thread::get_id() != c->caller;
    c->runs.fetch_add(1);
  }
  // Whether the destructor has run `want` times within ten seconds.
  bool Reaches(int want) const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (runs.load() != want) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::yield();
    }
    return true;
  }
};

int Code(const Status& status) { return status.cuda_result(); }

TEST(UserObjectsTest, TheDestructorRunsOnceOnItsOwnThreadWhenTheLastReferenceGoes) {
  HandleIds ids;
  UserObjects objects(&ids);
  Counter counter;
  uint64_t object = 0;
  EXPECT_EQ(Code(objects.Create(&counter, Counter::Destroy, 1, 0, &object)),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(objects.Create(&counter, nullptr, 1, CU_USER_OBJECT_NO_DESTRUCTOR_SYNC, &object)),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(objects.Create(&counter, Counter::Destroy, 0, CU_USER_OBJECT_NO_DESTRUCTOR_SYNC,
                                &object)),
            CUDA_ERROR_INVALID_VALUE);
  ASSERT_TRUE(
      objects.Create(&counter, Counter::Destroy, 2, CU_USER_OBJECT_NO_DESTRUCTOR_SYNC, &object)
          .ok());
  EXPECT_EQ(Code(objects.Release(object, 3)), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(objects.Retain(object, 0)), CUDA_ERROR_INVALID_VALUE);
  ASSERT_TRUE(objects.Release(object, 1).ok());
  EXPECT_EQ(counter.runs.load(), 0);
  ASSERT_TRUE(objects.Release(object, 1).ok());
  EXPECT_TRUE(counter.Reaches(1));
  EXPECT_TRUE(counter.other_thread.load());
  EXPECT_EQ(Code(objects.Retain(object, 1)), CUDA_ERROR_INVALID_VALUE);  // gone
}

TEST(UserObjectsTest, GraphsClonesChildNodesAndExecutableGraphsHoldReferences) {
  HandleIds ids;
  UserObjects objects(&ids);
  Counter counter;
  uint64_t object = 0;
  ASSERT_TRUE(
      objects.Create(&counter, Counter::Destroy, 1, CU_USER_OBJECT_NO_DESTRUCTOR_SYNC, &object)
          .ok());
  constexpr uint64_t kGraph = 1, kClone = 2, kParent = 3, kNode = 4, kExec = 5;
  EXPECT_EQ(Code(objects.GraphRetain(kGraph, object, 2, /*move=*/true)), CUDA_ERROR_INVALID_VALUE);
  ASSERT_TRUE(objects.GraphRetain(kGraph, object, 1, /*move=*/true).ok());  // the program's
  objects.GraphCloned(kGraph, kClone);
  objects.ChildAdded(kParent, kNode, kGraph);
  objects.Instantiated(kParent, kExec);
  objects.ExecLaunched(kExec, nullptr, false);
  EXPECT_EQ(Code(objects.GraphRelease(kGraph, object, 2)), CUDA_ERROR_INVALID_VALUE);
  objects.GraphDestroyed(kGraph);
  objects.GraphDestroyed(kClone);
  objects.NodeDestroyed(kParent, kNode);
  objects.GraphDestroyed(kParent);
  EXPECT_EQ(counter.runs.load(), 0) << "the executable graph holds a reference";
  UserObjects::Refs refs;
  UserObjects::LaunchStreams streams;
  objects.ExecDestroyed(kExec, &refs, &streams);
  EXPECT_EQ(streams.size(), 1u);
  ASSERT_EQ(refs.size(), 1u);
  EXPECT_EQ(refs.at(object), 1u);
  EXPECT_EQ(counter.runs.load(), 0) << "released by the caller, behind the launches";
  objects.ReleaseRefs(refs);
  EXPECT_TRUE(counter.Reaches(1));
}

}  // namespace
}  // namespace ferry::client
