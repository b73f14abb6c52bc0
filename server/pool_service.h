// PoolService: ferryd's GPU pool at run time. It keeps a pool::PoolState
// behind one mutex, moves it along a pool::Clock on a timer thread (schedule
// boundaries, drain graces, wait deadlines), lets client handshakes borrow
// (blocking while they wait in the queue), and hands preemptions to the
// server through a hook, as it does the migrations of on_rebind = "migrate".
//
// Thread-safety: every public method is safe from any thread. The preempt
// hook and log lines run on the thread that caused the change, without the
// service's lock held, so the hook may call back into the service.
#pragma once

#include <absl/base/thread_annotations.h>
#include <absl/time/time.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "server/metrics/histogram.h"
#include "server/pool/clock.h"
#include "server/pool/config.h"
#include "server/pool/pool_state.h"

namespace ferry::server {

class PoolService {
 public:
  struct Options {
    pool::Clock* clock = nullptr;  // required; outlives the service
    // ferryd --test-fake-clock: the same object as `clock`, which then only
    // moves by AdvanceTestClock. Null in production.
    pool::FakeClock* test_clock = nullptr;
    // Must free the session's resources and then call Return(session). Runs
    // without the service's lock; must not block for long.
    std::function<void(const pool::Preemption&)> preempt;
    // on_rebind = "migrate": must move the session to `migration.to` (the
    // pool has reserved it) and then call FinishMove(session), or
    // CancelMove(session) when it cannot (the holder then drains). Runs
    // without the service's lock; must not block for long. Unset: every
    // such migration is cancelled at once.
    std::function<void(const pool::Migration&)> migrate;
    // In a cluster (server/cluster/): Return(session) calls it before it frees the session's slices here
    // (so a new borrow never finds their claims still standing). May block
    // for as long as the cluster store takes to answer.
    std::function<void(uint64_t session)> release;
    // After any change of the pool's state (borrows, returns, rebinds, the
    // schedule, reloads). Must not block.
    std::function<void()> changed;
    // These hooks and `preempt` run without the service's lock.
  };

  static Status Create(const pool::Config& config, std::vector<pool::PoolGpu> gpus, Options options,
                       std::unique_ptr<PoolService>* out);
  ~PoolService();  // Stop()s
  PoolService(const PoolService&) = delete;
  PoolService& operator=(const PoolService&) = delete;

  // Borrows for `request.session`. Returns at once when granted or refused;
  // while queued, calls `on_position` with each new queue position and polls
  // `gone` (the client went away: the wait ends). On success `*lease` is the
  // grant; the caller must Return(request.session) when the session ends.
  Status Borrow(const pool::BorrowRequest& request, const std::function<bool()>& gone,
                const std::function<void(int position)>& on_position, pool::Lease* lease);
  // The session ended and its resources are freed: its slices go back.
  void Return(uint64_t session);
  // Idle release (PoolState::ReleaseSlices): the session's memory is parked
  // and its slices go back; it borrows them again with a pinned Borrow.
  // Outside a cluster only (its claims would stay in etcd).
  Status ReleaseSlices(uint64_t session);
  // Migration (PoolState::MoveSlice, FinishMove, CancelMove).
  Status MoveSlice(uint64_t session, int from, int to, int prefer, pool::SliceGrant* moved);
  void FinishMove(uint64_t session);
  void CancelMove(uint64_t session);
  // Idle release (PoolState::ReleasedSlices).
  std::vector<pool::PinnedSlice> ReleasedSlices(uint64_t session) const;

  // A reloaded config (already parsed); a config the pool cannot take is
  // refused and the old one stays.
  Status Reload(const pool::Config& config, std::string* summary);
  // ferryctl rebind; `policy` / `grace` default to the config's [server] values.
  Status Rebind(int gpu, const std::string& pool, std::optional<pool::RebindPolicy> policy,
                std::optional<absl::Duration> grace, std::string* summary);
  Status SetDrained(int gpu, bool drained, std::string* summary);
  // TEST ONLY: moves the fake clock and applies what falls due, before
  // returning. PermissionDenied unless the service runs on a test clock.
  Status AdvanceTestClock(absl::Duration by, std::string* summary);

  pool::PoolSnapshot Snapshot(absl::Time* now) const;
  std::string config_path() const;
  // The pool a borrow that names none gets ([server] default_pool).
  std::string default_pool() const;
  // Whether the config in force now has a pool of that name.
  bool HasPool(const std::string& pool) const;
  // How long a session of `pool` must be idle before its memory may be
  // parked; nullopt when the pool does not overcommit memory (or is gone).
  std::optional<absl::Duration> ParkAfter(const std::string& pool) const;
  // How long a session of `pool` may be idle before its slices go back to
  // the pool (idle release); nullopt when never. Read at each look, so a
  // reload applies to sessions already holding.
  std::optional<absl::Duration> IdleRelease(const std::string& pool) const;
  // The shortest idle_release of any pool (how often ferryd looks), or
  // nullopt when no pool releases idle sessions.
  std::optional<absl::Duration> ShortestIdleRelease() const;
  bool uses_test_clock() const { return options_.test_clock != nullptr; }

  // /metrics (server/server_metrics.cc): what happened in each pool since
  // the service started.
  struct PoolCounters {
    uint64_t waits = 0;  // borrows that waited in the queue
    // How long each ended wait lasted (granted, timed out, or the client
    // gone), by kWaitBucketSeconds.
    metrics::HistogramCounts wait_seconds;
    uint64_t preemptions = 0;  // holders preempted (schedule, rebind, drain grace, reload)
    uint64_t drains = 0;       // holders a rebind began to drain
    // on_rebind = "migrate": holders moved to another GPU, and holders left
    // draining (no free slice elsewhere, or the move failed).
    uint64_t rebind_migrations = 0;
    uint64_t rebind_migration_fallbacks = 0;
  };
  static constexpr double kWaitBucketSeconds[] = {0.1, 0.5, 1,   5,    10,   30,
                                                  60,  300, 900, 1800, 3600, 14400};
  // Every pool configured now, and any counted before a reload removed it.
  std::map<std::string, PoolCounters> Counters() const;

  // Ends every wait (with Disconnected) and the timer thread.
  void Stop();

 private:
  PoolService(std::unique_ptr<pool::PoolState> state, Options options);
  // Borrow's grant or wait, under the lock (Borrow tells the changed hook).
  Status PlaceOrWait(const pool::BorrowRequest& request, const std::function<bool()>& gone,
                     const std::function<void(int position)>& on_position, pool::Lease* lease);
  void TimerLoop();
  // Under the lock: remembers ended waits for their borrowers.
  void RecordLocked(const pool::PoolChanges& changes);
  // Without the lock: logs, preempts, wakes waiters and the timer.
  void Publish(const pool::PoolChanges& changes);
  static std::string Summarize(const pool::PoolChanges& changes);

  const Options options_;
  mutable std::mutex mutex_;
  std::condition_variable changed_cv_;  // any change a waiting borrower may care about
  std::condition_variable timer_cv_;    // the timer must recompute its deadline
  std::unique_ptr<pool::PoolState> state_ ABSL_GUARDED_BY(mutex_);
  std::map<uint64_t, Status> ended_waits_ ABSL_GUARDED_BY(mutex_);
  // Taken after mutex_ where both are held.
  mutable std::mutex counters_mutex_;
  std::map<std::string, PoolCounters> counters_ ABSL_GUARDED_BY(counters_mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread timer_;
};

}  // namespace ferry::server
