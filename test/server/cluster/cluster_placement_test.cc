// Where a borrow can go in a cluster pool, from a snapshot alone (no etcd):
// the room each server has, and how a borrow no one server has room for is
// split across several.
#include "server/cluster/cluster_placement.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ferry::cluster {
namespace {

class ClusterPlacementTest : public ::testing::Test {
 protected:
  void AddServer(const std::string& name, const std::string& advertise) {
    ServerRecord server;
    server.name = name;
    server.advertise = advertise;
    snapshot_.servers.push_back(server);
  }
  // One GPU of `server` bound to `pool` with `free` of its 4 slices free.
  void AddGpu(const std::string& server, const std::string& pool, int free, bool drained = false) {
    GpuState gpu;
    gpu.server = server;
    gpu.index = next_index_++;
    gpu.pool = pool;
    gpu.slices_per_gpu = 4;
    gpu.free_slices = free;
    gpu.drained = drained;
    snapshot_.gpus.push_back(gpu);
  }

  ClusterSnapshot snapshot_;
  int next_index_ = 0;
};

TEST_F(ClusterPlacementTest, RoomCountsReachableServersGpusOfThePoolWithAFreeSlice) {
  AddServer("a", "10.0.0.1:7070");
  AddServer("b", "10.0.0.2:7070");
  AddServer("hidden", "");  // clients could not reach it
  AddGpu("a", "dev", 1);
  AddGpu("a", "dev", 0);                    // full
  AddGpu("a", "dev", 4, /*drained=*/true);  // being drained
  AddGpu("a", "train", 4);                  // another pool
  AddGpu("b", "dev", 2);
  AddGpu("b", "dev", 3);
  AddGpu("hidden", "dev", 4);
  AddGpu("gone", "dev", 4);  // its server's record expired
  const std::vector<ServerRoom> rooms = RoomInPool(snapshot_, "dev");
  ASSERT_EQ(rooms.size(), 2u);
  EXPECT_EQ(rooms[0].server, "b");  // most fitting GPUs first
  EXPECT_EQ(rooms[0].advertise, "10.0.0.2:7070");
  EXPECT_EQ(rooms[0].fitting, 2);
  EXPECT_EQ(rooms[0].free_slices, 5);
  EXPECT_EQ(rooms[1].server, "a");
  EXPECT_EQ(rooms[1].fitting, 1);
  EXPECT_EQ(rooms[1].free_slices, 1);
  EXPECT_TRUE(RoomInPool(snapshot_, "nope").empty());
}

TEST_F(ClusterPlacementTest, TiesGoToMoreFreeSlicesThenToTheName) {
  AddServer("a", "a:1");
  AddServer("b", "b:1");
  AddServer("c", "c:1");
  AddGpu("a", "dev", 1);
  AddGpu("b", "dev", 1);
  AddGpu("c", "dev", 3);
  const std::vector<ServerRoom> rooms = RoomInPool(snapshot_, "dev");
  ASSERT_EQ(rooms.size(), 3u);
  EXPECT_EQ(rooms[0].server, "c");
  EXPECT_EQ(rooms[1].server, "a");
  EXPECT_EQ(rooms[2].server, "b");
}

TEST_F(ClusterPlacementTest, ASplitTakesTheFewestPartsLargestFirst) {
  AddServer("a", "a:1");
  AddServer("b", "b:1");
  AddServer("c", "c:1");
  AddGpu("a", "dev", 1);
  AddGpu("b", "dev", 4);
  AddGpu("b", "dev", 4);
  AddGpu("b", "dev", 4);
  AddGpu("c", "dev", 2);
  AddGpu("c", "dev", 2);
  // 3 + 2 + 1 fitting GPUs.
  EXPECT_EQ(SplitBorrow(snapshot_, "dev", 3), (std::vector<BorrowPart>{{"b", "b:1", 3}}));
  EXPECT_EQ(SplitBorrow(snapshot_, "dev", 4),
            (std::vector<BorrowPart>{{"b", "b:1", 3}, {"c", "c:1", 1}}));
  EXPECT_EQ(SplitBorrow(snapshot_, "dev", 5),
            (std::vector<BorrowPart>{{"b", "b:1", 3}, {"c", "c:1", 2}}));
  EXPECT_EQ(SplitBorrow(snapshot_, "dev", 6),
            (std::vector<BorrowPart>{{"b", "b:1", 3}, {"c", "c:1", 2}, {"a", "a:1", 1}}));
}

TEST_F(ClusterPlacementTest, NoSplitWhenTheClusterHasNotEnough) {
  AddServer("a", "a:1");
  AddServer("b", "b:1");
  AddGpu("a", "dev", 1);
  AddGpu("b", "dev", 1);
  AddGpu("b", "dev", 0);
  AddGpu("b", "train", 4);  // another pool's room does not count
  EXPECT_TRUE(SplitBorrow(snapshot_, "dev", 3).empty());
  EXPECT_EQ(SplitBorrow(snapshot_, "dev", 2).size(), 2u);
  EXPECT_TRUE(SplitBorrow(snapshot_, "other", 1).empty());
  EXPECT_TRUE(SplitBorrow(ClusterSnapshot{}, "dev", 1).empty());
}

}  // namespace
}  // namespace ferry::cluster
