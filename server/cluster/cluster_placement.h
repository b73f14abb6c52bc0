// Where in a cluster pool a borrow can go, judged from a ClusterSnapshot:
// the servers' published GPU states (cluster_records.h). Pure functions, no
// etcd: what they say may be out of date by the time a client gets there,
// and the server it reaches decides with its own pool model (a part that
// finds no room there waits or is refused as any borrow is).
//
// Counting rule: a borrow takes one device per GPU, so a server can give a
// borrow as many devices as it has GPUs of the pool that are not drained
// and have a free slice ("fitting" GPUs).
//
// Thread-safety: plain values and free functions.
#pragma once

#include <string>
#include <vector>

#include "server/cluster/cluster_records.h"

namespace ferry::cluster {

// A server's room in one pool, as its published GPU states show it.
struct ServerRoom {
  std::string server;
  std::string advertise;  // HOST:PORT clients reach it at
  int fitting = 0;        // devices one borrow can take there
  int free_slices = 0;    // over those GPUs
};

// Every server of `snapshot` that clients can reach (its advertise is not
// empty) with at least one fitting GPU of `pool`: most fitting first, then
// most free slices, then by name.
std::vector<ServerRoom> RoomInPool(const ClusterSnapshot& snapshot, const std::string& pool);

// One server's share of a borrow split across servers (wire::BorrowPart).
struct BorrowPart {
  std::string server;
  std::string advertise;
  int gpus = 0;

  bool operator==(const BorrowPart&) const = default;
};

// How a borrow of `gpus` devices of `pool` can be split across the servers
// of `snapshot` (whichever server asks is one of them): the fewest parts —
// the servers with the most fitting GPUs first (RoomInPool's order), each
// taking all it can, the last only what is left — in that order. Empty
// when the whole cluster has fewer than `gpus` fitting GPUs. One part when
// one server has room for all (the caller decides whether that is a split).
std::vector<BorrowPart> SplitBorrow(const ClusterSnapshot& snapshot, const std::string& pool,
                                    int gpus);

}  // namespace ferry::cluster
