#include "server/cluster/cluster_placement.h"

#include <algorithm>
#include <map>

namespace ferry::cluster {

std::vector<ServerRoom> RoomInPool(const ClusterSnapshot& snapshot, const std::string& pool) {
  std::map<std::string, ServerRoom> by_name;
  for (const ServerRecord& server : snapshot.servers) {
    if (server.advertise.empty()) continue;  // clients could not get there
    by_name[server.name] = ServerRoom{server.name, server.advertise, 0, 0};
  }
  for (const GpuState& gpu : snapshot.gpus) {
    if (gpu.pool != pool || gpu.drained || gpu.free_slices <= 0) continue;
    auto it = by_name.find(gpu.server);
    if (it == by_name.end()) continue;  // its server's record is gone (or unreachable)
    ++it->second.fitting;
    it->second.free_slices += gpu.free_slices;
  }
  std::vector<ServerRoom> rooms;
  for (auto& [name, room] : by_name) {
    if (room.fitting > 0) rooms.push_back(std::move(room));
  }
  std::stable_sort(rooms.begin(), rooms.end(), [](const ServerRoom& a, const ServerRoom& b) {
    if (a.fitting != b.fitting) return a.fitting > b.fitting;
    return a.free_slices > b.free_slices;  // the map gave name order for the rest
  });
  return rooms;
}

std::vector<BorrowPart> SplitBorrow(const ClusterSnapshot& snapshot, const std::string& pool,
                                    int gpus) {
  std::vector<BorrowPart> parts;
  int left = gpus;
  // Taking the largest rooms first gives the fewest parts: no k servers
  // have more fitting GPUs together than the k largest.
  for (const ServerRoom& room : RoomInPool(snapshot, pool)) {
    if (left <= 0) break;
    const int take = std::min(left, room.fitting);
    parts.push_back(BorrowPart{room.server, room.advertise, take});
    left -= take;
  }
  if (left > 0) parts.clear();  // the cluster has not enough
  return parts;
}

}  // namespace ferry::cluster
