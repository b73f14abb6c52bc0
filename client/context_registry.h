// ContextRegistry: the client's table of contexts, created and primary, and
// the per-device primary-context bookkeeping (id, retain count, flags).
//
// A context is recorded before it exists on the server and is "live" once the
// server created it (Runtime::EnsureLive). A primary context's id is made on
// first use and stays the same for the process, across resets. The calling
// thread's current-context stack is not kept here: it is per thread (Runtime).
//
// Thread-safety: all methods are thread-safe; mu_ (a std::mutex, which TSan
// sees, unlike the distribution's absl::Mutex) guards the tables. The
// registry never calls out while holding mu_, so other registries may call it
// under their own locks.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "client/handles.h"
#include "common/status.h"

namespace ferry::client {

struct ContextState {
  int device = 0;
  unsigned flags = 0;
  bool primary = false;
  bool live = false;  // exists on the server
};

class ContextRegistry {
 public:
  // `ids` hands out context ids; it must outlive the registry.
  explicit ContextRegistry(HandleIds* ids) : ids_(ids) {}

  // Records a created (not primary) context of `device`, not live yet.
  uint64_t Add(int device, unsigned flags);
  // INVALID_CONTEXT unless `ctx` is recorded.
  Status Check(uint64_t ctx);
  Status Find(uint64_t ctx, ContextState* out);
  Status Device(uint64_t ctx, int* device);
  Status Flags(uint64_t ctx, unsigned* flags);
  // True when `ctx` is recorded and live.
  bool IsLive(uint64_t ctx);
  // Marks `ctx` live; false when it is not recorded (destroyed meanwhile).
  bool MarkLive(uint64_t ctx);
  // Marks `ctx` not live; true when it was live (so the caller owns the
  // teardown), false when it was not or is not recorded.
  bool MarkNotLive(uint64_t ctx);
  // The live contexts, in no particular order.
  std::vector<uint64_t> LiveContexts();

  // OK when `ctx` may be destroyed by cuCtxDestroy: recorded and not primary.
  Status CheckDestroyable(uint64_t ctx);
  // Forgets a created context (CheckDestroyable first); `*was_live` says
  // whether it existed on the server.
  Status Remove(uint64_t ctx, bool* was_live);
  // Forgets `ctx` whatever it is (a creation that failed).
  void Erase(uint64_t ctx);

  // The primary context id of `device`, recorded on first use.
  uint64_t PrimaryId(int device);
  void RetainPrimary(int device);
  // Drops one retain; `*last` is true when that was the last one.
  // INVALID_CONTEXT when the primary context is not retained.
  Status ReleasePrimary(int device, bool* last);
  // Sets the flags the primary context of `device` is (re)created with.
  void SetPrimaryFlags(int device, unsigned flags);
  // cuDevicePrimaryCtxGetState: the flags, and 1 when live and retained.
  void PrimaryState(int device, unsigned* flags, int* active);

  // --- peers ---
  // Facts of a device pair that never change, once the server told them:
  // `what` is a CUdevice_P2PAttribute, or kCanAccessPeer for
  // cuDeviceCanAccessPeer's answer. PeerFact is false while unknown.
  static constexpr int kCanAccessPeer = -1;
  bool PeerFact(int device, int peer, int what, int* value);
  void NotePeerFact(int device, int peer, int what, int value);
  // Records that `ctx` has peer access to `peer`'s memory:
  // PEER_ACCESS_ALREADY_ENABLED when it has. A context's pairs (either side)
  // are forgotten once it is not live (destroyed, or a primary context
  // reset), as the driver forgets them.
  Status EnablePeer(uint64_t ctx, uint64_t peer);
  // Forgets it: PEER_ACCESS_NOT_ENABLED when `ctx` has no such access.
  Status DisablePeer(uint64_t ctx, uint64_t peer);

 private:
  uint64_t PrimaryIdLocked(int device) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  HandleIds* const ids_;
  std::mutex mu_;
  std::unordered_map<uint64_t, ContextState> contexts_ ABSL_GUARDED_BY(mu_);
  std::map<int, uint64_t> primary_ids_ ABSL_GUARDED_BY(mu_);
  std::map<int, int> primary_refcounts_ ABSL_GUARDED_BY(mu_);
  std::map<int, unsigned> primary_flags_ ABSL_GUARDED_BY(mu_);
  // peers
  void ForgetPeersLocked(uint64_t ctx) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::map<std::tuple<int, int, int>, int> peer_facts_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<uint64_t, uint64_t>> peer_access_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::client
