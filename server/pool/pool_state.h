// PoolState: the GPU pool as a pure, deterministic model — which pool each
// GPU serves, who holds which slice, who waits, and what happens when the
// time of day moves. It performs no I/O, starts no thread and never reads a
// clock: every method that depends on time takes `now`, so a test can stand
// at 19:59:59 and step over 20:00 (server/pool/clock.h).
//
// Terms:
//  * A pool is a named layout: `slices_per_gpu` N splits each GPU it serves
//    into N slices, each with 1/N of the memory (the quota, enforced by the
//    server) and 1/N of the compute.
//  * A GPU serves one pool at a time: the first schedule window (file order)
//    that covers it now, else the default pool; a manual rebind overrides the
//    schedule until the GPU's next scheduled change.
//  * A borrow asks for N devices of one pool: N slices on N distinct GPUs,
//    given out GPU by GPU (lowest index first) so whole GPUs stay free. A
//    borrow that cannot be served now either waits in a first-come,
//    first-served queue until its deadline, or is refused at once. Nobody
//    overtakes an earlier waiter of the same pool.
//  * Idle release: a holder may give its slices back while it is idle
//    (ReleaseSlices). The pool remembers it as released: its slices' capacity
//    is free for others, new borrowers take other slice numbers first, and
//    it comes back with a borrow pinned to the same slices (its contexts and
//    address ranges live on those GPUs), placed only there, a drained GPU
//    included (it never left). While it waits, later borrowers of its pool
//    may take any other slice, never its. A rebind, a drain grace or a reload
//    that removes its pool preempts it as it would a holder.
//  * When a GPU moves to another pool, holders of the old pool's slices are
//    drained (they keep their slice until they end or the grace passes),
//    preempted at once, or (on_rebind = "migrate") moved to free slices of
//    their pool on other GPUs — drained where there is none or the move
//    fails. Capacity is accounted in exact fractions, so during a
//    drain the new pool's slices are handed out as the old ones free up.
//  * A preempted lease keeps its capacity until the server has freed the
//    session's resources and calls Return, so a new holder never finds the
//    memory still in use.
//
// Every mutating method reports what the server must act on in PoolChanges:
// sessions to preempt, waiters granted, waits ended, and log lines.
//
// Thread-safety: none; the owner serialises all calls (ferryd holds a mutex).
#pragma once

#include <absl/time/time.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "server/pool/config.h"

namespace ferry::pool {

// A GPU the pool manages: its index ([[gpu]] index, the device's number on
// the server) and its memory in bytes.
struct PoolGpu {
  int index = 0;
  uint64_t memory = 0;
};

// A slice a borrow is pinned to: this GPU, this slice number, this layout.
struct PinnedSlice {
  int gpu = 0;
  int slice = 0;
  int slices_per_gpu = 1;
};

struct BorrowRequest {
  uint64_t session = 0;                        // unique per borrower (ferryd's connection id)
  std::string pool;                            // "" = the default pool
  int gpus = 1;                                // devices wanted: slices on this many distinct GPUs
  absl::Duration wait = absl::ZeroDuration();  // 0: refuse at once when full
  // Who asks, for status.
  std::string host;
  uint32_t pid = 0;
  std::string program;
  // Not empty: exactly these slices (one per device, `gpus` of them), else
  // nothing. A released session's borrow again.
  std::vector<PinnedSlice> pinned;
};

// One borrowed slice; the session's device i is slices[i].
struct SliceGrant {
  int gpu = 0;
  int slice = 0;  // 0..slices_per_gpu-1 among the GPU's slices of this layout
  int slices_per_gpu = 1;
  // bytes: the GPU's memory x the pool's memory_overcommit / slices_per_gpu
  uint64_t memory_quota = 0;
  double compute_share = 1.0;
};

struct Lease {
  uint64_t session = 0;
  std::string pool;
  std::vector<SliceGrant> slices;
  absl::Time since;
  std::string host;
  uint32_t pid = 0;
  std::string program;
  bool preempting = false;  // preempted; its slices return when the server calls Return
  std::string preempt_reason;
};

struct Preemption {
  uint64_t session = 0;
  std::string reason;  // "preempted by the schedule: ..." — for the client and the log
  std::string pool;    // a released session's (it has no lease to find it by); else ""
};

// A holder that a rebind with on_rebind = "migrate" moves to another GPU:
// the lease's slice `device` (the session's device of that index) is `to`
// already, reserved as MoveSlice reserves, while `from` stays held until the
// server has moved the session and calls FinishMove — or CancelMove when it
// cannot, and the holder stays on `from`, draining as on_rebind = "drain"
// would have it (its grace counted from the rebind).
struct Migration {
  uint64_t session = 0;
  size_t device = 0;
  SliceGrant from;
  SliceGrant to;
  std::string rebind;  // "by the schedule: GPU 1 was rebound from ..." — for the log
};

// What the server must do after a change of state.
struct PoolChanges {
  // Free these sessions' resources, tell their clients, then Return them.
  std::vector<Preemption> preempted;
  // Waiters that now hold a lease (FindLease has it).
  std::vector<uint64_t> granted;
  // Waiters dropped from the queue, with the error their borrow ends with.
  std::vector<std::pair<uint64_t, Status>> ended_waits;
  // Holders a rebind began to drain (they keep their slices until they end
  // or the grace passes); for ferryd's counters. Under on_rebind = "migrate"
  // those that cannot move, once that is known.
  std::vector<uint64_t> drained;
  // on_rebind = "migrate": holders whose target slices are reserved; the
  // server moves each session, then calls FinishMove or CancelMove.
  std::vector<Migration> migrations;
  // How rebind migrations ended, for ferryd's counters: moved (FinishMove),
  // or left draining (no free slice of the pool elsewhere, or CancelMove).
  std::vector<uint64_t> migrated;
  std::vector<uint64_t> not_migrated;
  // Rebinds and other events worth a log line.
  std::vector<std::string> log;

  bool empty() const {
    return preempted.empty() && granted.empty() && ended_waits.empty() && drained.empty() &&
           migrations.empty() && migrated.empty() && not_migrated.empty() && log.empty();
  }
};

enum class BorrowOutcome { kGranted, kQueued, kRefused };
struct BorrowResult {
  BorrowOutcome outcome = BorrowOutcome::kRefused;
  int queue_position = 0;  // kQueued: 1 = next of its pool
  Status error;            // kRefused: why (Overloaded when full)
  PoolChanges changes;
};

enum class BindingSource { kDefault, kSchedule, kManual };

// A read-only picture for ferryctl status.
struct HoldingSnapshot {
  uint64_t session = 0;
  std::string pool;
  SliceGrant slice;
  absl::Time since;
  std::string host;
  uint32_t pid = 0;
  std::string program;
  absl::Time deadline = absl::InfiniteFuture();  // drain grace end, if draining
  bool preempting = false;
};
struct GpuSnapshot {
  int index = 0;
  uint64_t memory = 0;
  std::string pool;
  BindingSource source = BindingSource::kDefault;
  std::string window;  // kSchedule: the window; kManual: "until ..."; kDefault: ""
  absl::Time manual_until = absl::InfiniteFuture();
  bool drained = false;
  int slices_per_gpu = 1;  // the current pool's layout
  int free_slices = 0;     // slices of the current layout that fit now
  std::vector<HoldingSnapshot> holdings;
  // Sessions that gave their slice of this GPU back while idle (idle
  // release); their contexts are still here and they come back to it.
  // `deadline`: when a rebind preempts them.
  std::vector<HoldingSnapshot> released;
  absl::Time next_change = absl::InfiniteFuture();  // the next scheduled change of pool
  std::string next_pool;
};
struct WaiterSnapshot {
  uint64_t session = 0;
  std::string pool;
  int gpus = 1;
  int position = 0;  // within its pool
  absl::Time since;
  absl::Time deadline;
  std::string host;
  uint32_t pid = 0;
  std::string program;
};
struct PoolSnapshot {
  std::vector<GpuSnapshot> gpus;
  std::vector<WaiterSnapshot> queue;  // first come first
  absl::Time next_change = absl::InfiniteFuture();
  int next_change_gpu = -1;
  std::string next_change_pool;
};

class PoolState {
 public:
  // `config.pooling()` must hold. Fails when a schedule names a GPU that is
  // not in `gpus` (the message names the file and line). The GPUs are bound
  // as the schedule says at `now`.
  static Status Create(const Config& config, std::vector<PoolGpu> gpus, absl::Time now,
                       std::unique_ptr<PoolState>* out);

  // Borrows for `request.session` (which must hold nothing and not wait).
  BorrowResult Borrow(const BorrowRequest& request, absl::Time now);
  // Ends a lease (its slices free up), a wait, or a release; serves the
  // queue. A session the pool does not know is ignored.
  PoolChanges Return(uint64_t session, absl::Time now);
  // Idle release: `session`'s slices go back to the pool; it stays known as
  // released until it borrows them again (a pinned Borrow) or Returns.
  // NotFound without a lease; Overloaded for a lease being preempted or
  // drained (it is going away anyway).
  Status ReleaseSlices(uint64_t session, absl::Time now, PoolChanges* changes);
  // Migration, in two phases. MoveSlice: `session`'s slice on GPU `from`
  // becomes a slice of the same pool and layout on GPU `to` (slice number
  // `prefer` if free, else the lowest free one that no released session
  // comes back to; *moved gets it), while the slice on `from` stays held
  // until FinishMove (the session's memory is still there) or CancelMove
  // (the move failed: everything as before). NotFound without such a
  // lease; Overloaded when `to` serves another pool or layout, is drained,
  // or has no free slice (saying which), or the lease is being preempted,
  // drained or moved.
  Status MoveSlice(uint64_t session, int from, int to, int prefer, absl::Time now,
                   PoolChanges* changes, SliceGrant* moved);
  // Also ends a rebind's migration (PoolChanges::migrations). While a move
  // is in flight its source slice's drain grace does not run out; after a
  // CancelMove one that has passed preempts the session at once.
  void FinishMove(uint64_t session, absl::Time now, PoolChanges* changes);
  void CancelMove(uint64_t session, absl::Time now, PoolChanges* changes);
  // Idle release: the slices a released session comes back to (empty when
  // it is not released: preempted meanwhile, or never).
  std::vector<PinnedSlice> ReleasedSlices(uint64_t session) const;

  // Moves the model to `now`: schedule rebinds, manual overrides that end,
  // drain graces that run out, wait deadlines that pass, then the queue.
  PoolChanges Advance(absl::Time now);
  // The earliest instant after `now` at which Advance may change something
  // (absl::InfiniteFuture() when nothing is due).
  absl::Time NextEventTime(absl::Time now) const;

  // ferryctl rebind: `gpu` serves `pool` until its next scheduled change
  // (rebinding to the pool the schedule says ends the override at once).
  // Holders of other pools are drained with `grace` or preempted.
  Status Rebind(int gpu, const std::string& pool, RebindPolicy policy, absl::Duration grace,
                absl::Time now, PoolChanges* changes);
  // ferryctl drain: a drained GPU takes no new borrows; its holders stay.
  Status SetDrained(int gpu, bool drained, absl::Time now, PoolChanges* changes);

  // A reloaded config. The GPUs must be the same (index and memory); pools,
  // default pool and schedules may change. Leases keep their slices (and
  // quotas); GPUs whose pool changes are rebound as the new config says;
  // waiters for a pool that is gone are refused.
  Status Reconfigure(const Config& config, absl::Time now, PoolChanges* changes);

  const Lease* FindLease(uint64_t session) const;
  // 1-based position among the waiters of the same pool; 0 when not waiting.
  int QueuePosition(uint64_t session) const;
  PoolSnapshot Snapshot(absl::Time now) const;
  const Config& config() const { return config_; }

  // Capacity of a GPU in units: a slice of a pool with N slices per GPU
  // takes kCapacityUnits / N, exactly, for every N up to kMaxSlicesPerGpu.
  static constexpr uint64_t kCapacityUnits = 144403552893600ull;  // lcm(1..32)

 private:
  struct Holding {
    uint64_t session = 0;
    int slice = 0;
    int slices_per_gpu = 1;
    absl::Time deadline = absl::InfiniteFuture();  // drain: must be gone by then
    std::string drain_reason;  // what the preemption message says when it is not
    bool leaving = false;      // a migration's source slice, held until FinishMove
  };
  struct Gpu {
    PoolGpu spec;
    std::string pool;
    BindingSource source = BindingSource::kDefault;
    int schedule = -1;  // kSchedule: index into config_.schedules
    bool drained = false;
    std::string manual_pool;  // kManual
    absl::Time manual_until = absl::InfiniteFuture();
    std::vector<Holding> holdings;
  };
  struct Waiter {
    BorrowRequest request;  // pool resolved
    absl::Time since;
    absl::Time deadline;
  };
  struct Binding {
    std::string pool;
    BindingSource source = BindingSource::kDefault;
    int schedule = -1;
    RebindPolicy policy = RebindPolicy::kDrain;
    absl::Duration grace;
  };

  PoolState(Config config, std::vector<PoolGpu> gpus);
  static Status CheckScheduleGpus(const Config& config, const std::vector<PoolGpu>& gpus);

  Gpu* FindGpu(int index);
  const Gpu* FindGpu(int index) const;
  // What the schedule alone says for `gpu` at `t`.
  Binding Scheduled(const Gpu& gpu, absl::Time t) const;
  // What `gpu` should serve at `t`, manual override included.
  Binding Desired(const Gpu& gpu, absl::Time t) const;
  // The first instant after `t` at which the schedule gives `gpu` another
  // pool, and that pool; InfiniteFuture when never.
  std::pair<absl::Time, std::string> NextScheduledChange(const Gpu& gpu, absl::Time t) const;
  std::string DescribeBinding(const Binding& binding) const;

  // Binds every GPU as Desired says at `now`; `by` names who rebinds in the
  // messages ("the schedule", "a config reload").
  void ApplyBindings(absl::Time now, const std::string& by, PoolChanges* changes);
  // Moves `gpu` to `pool`: holders of other pools are drained, preempted or
  // (kMigrate) moved to other GPUs, else drained.
  // `detail` says which window or action ("window 20:00:00-08:00:00 UTC").
  void MoveGpu(Gpu& gpu, const std::string& pool, RebindPolicy policy, absl::Duration grace,
               absl::Time now, const std::string& by, const std::string& detail,
               PoolChanges* changes);
  void Preempt(uint64_t session, const std::string& reason, PoolChanges* changes);
  // Migration: the slice number a slice of `lease` of layout `n` would take
  // on `target` — `prefer` if free, else the lowest free one that no
  // released session comes back to, else any free one; -1 when none fits or
  // `target` cannot take it (serves another pool, drained, full, or holds a
  // slice of the lease already). `*why` (may be null) says why not.
  int MoveTarget(const Lease& lease, const Gpu& target, int n, int prefer, std::string* why) const;
  // Reserves slice `number` of `target` for `lease.slices[index]` (which
  // becomes it); the source holding stays, leaving, until FinishMove or
  // CancelMove.
  SliceGrant BeginMove(Lease& lease, size_t index, Gpu& target, int number, bool rebind);
  // A released session is preempted: it is forgotten (nothing of the pool's
  // is its), its wait to borrow again ends, and the server frees it.
  void PreemptReleased(uint64_t session, const std::string& reason, PoolChanges* changes);
  void ExpireGraces(absl::Time now, PoolChanges* changes);
  void ExpireWaits(absl::Time now, PoolChanges* changes);
  void ServeQueue(absl::Time now, PoolChanges* changes);
  // What earlier waiters hold up, per pool: the whole pool (an unpinned
  // waiter that does not fit), or the slices pinned waiters wait for (their
  // numbers, on GPUs that serve their pool in their layout; and the capacity
  // of those whose slice is free, which can only be short under mixed
  // layouts during a drain).
  struct Blocked {
    struct OnGpu {
      std::set<int> slices;
      int capacity = 0;  // slices' worth of capacity held back
    };
    struct InPool {
      bool whole = false;
      std::map<int, OnGpu> gpus;
    };
    std::map<std::string, InPool> pools;
    const InPool* Of(const std::string& pool) const;
  };
  // Whether `request` may not be placed before earlier waiters (`blocked`).
  bool HeldUp(const BorrowRequest& request, const Blocked& blocked) const;
  // `request`, a waiter that does not fit now, holds up later ones.
  void HoldUp(const BorrowRequest& request, Blocked* blocked) const;
  // Places `request` if its slices fit now, around what earlier waiters
  // hold back (`blocked`, may be null); creates the lease.
  bool TryPlace(const BorrowRequest& request, absl::Time now, const Blocked::InPool* blocked);
  // Why a pinned request does not fit now (for its refusal).
  std::string DescribePinnedFull(const BorrowRequest& request) const;
  uint64_t UsedUnits(const Gpu& gpu) const;
  int FreeSlices(const Gpu& gpu, int slices_per_gpu) const;
  std::string DescribeFull(const std::string& pool) const;

  Config config_;
  std::vector<Gpu> gpus_;             // by index order
  std::map<uint64_t, Lease> leases_;  // by session
  // Idle release: sessions that gave their slices back (their last lease,
  // whose slices they come back to).
  struct Released {
    Lease lease;
    absl::Time since;
    absl::Time deadline = absl::InfiniteFuture();  // a rebind's drain: preempted then
    std::string drain_reason;
  };
  std::map<uint64_t, Released> released_;
  // Migrations between MoveSlice and FinishMove/CancelMove: which of the
  // lease's slices moved, and what it was.
  struct Move {
    size_t index = 0;
    SliceGrant from;
    bool rebind = false;  // on_rebind = "migrate" started it (counted, logged)
  };
  std::map<uint64_t, Move> moves_;
  std::vector<Waiter> queue_;         // first come first
};

}  // namespace ferry::pool
