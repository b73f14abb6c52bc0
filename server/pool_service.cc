#include "server/pool_service.h"

#include <absl/cleanup/cleanup.h>

#include <algorithm>
#include <chrono>

#include "common/log.h"
#include "common/units.h"

namespace ferry::server {
namespace {

// How often a queued borrower checks that its client is still there. Only
// how soon a vanished waiter leaves the queue depends on it.
constexpr auto kWaiterPollInterval = std::chrono::milliseconds(100);
// The timer never sleeps longer than this, so a clock that jumps (suspend,
// NTP) is noticed.
constexpr absl::Duration kMaxTimerSleep = absl::Seconds(30);

}  // namespace

PoolService::PoolService(std::unique_ptr<pool::PoolState> state, Options options)
    : options_(std::move(options)), state_(std::move(state)) {}

Status PoolService::Create(const pool::Config& config, std::vector<pool::PoolGpu> gpus,
                           Options options, std::unique_ptr<PoolService>* out) {
  if (options.clock == nullptr) return Status::InvalidArgument("PoolService needs a clock");
  std::unique_ptr<pool::PoolState> state;
  FERRY_RETURN_IF_ERROR(
      pool::PoolState::Create(config, std::move(gpus), options.clock->Now(), &state));
  std::unique_ptr<PoolService> service(new PoolService(std::move(state), std::move(options)));
  service->timer_ = std::thread([s = service.get()] { s->TimerLoop(); });
  *out = std::move(service);
  return Status::Ok();
}

PoolService::~PoolService() { Stop(); }

void PoolService::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_cv_.notify_all();
  timer_cv_.notify_all();
  if (timer_.joinable()) timer_.join();
}

void PoolService::RecordLocked(const pool::PoolChanges& changes) {
  for (const auto& [session, status] : changes.ended_waits) ended_waits_[session] = status;
  if (changes.preempted.empty() && changes.drained.empty() && changes.migrated.empty() &&
      changes.not_migrated.empty()) {
    return;
  }
  std::lock_guard<std::mutex> lock(counters_mutex_);
  // Counted under the pool the holder borrowed from (its lease stays until
  // the session is returned).
  for (const pool::Preemption& preemption : changes.preempted) {
    if (!preemption.pool.empty()) {
      ++counters_[preemption.pool].preemptions;  // a released session
    } else if (const pool::Lease* lease = state_->FindLease(preemption.session)) {
      ++counters_[lease->pool].preemptions;
    }
  }
  for (uint64_t session : changes.drained) {
    if (const pool::Lease* lease = state_->FindLease(session)) ++counters_[lease->pool].drains;
  }
  for (uint64_t session : changes.migrated) {
    if (const pool::Lease* lease = state_->FindLease(session)) {
      ++counters_[lease->pool].rebind_migrations;
    }
  }
  for (uint64_t session : changes.not_migrated) {
    if (const pool::Lease* lease = state_->FindLease(session)) {
      ++counters_[lease->pool].rebind_migration_fallbacks;
    }
  }
}

std::map<std::string, PoolService::PoolCounters> PoolService::Counters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::lock_guard<std::mutex> counters_lock(counters_mutex_);
  std::map<std::string, PoolCounters> out = counters_;
  for (const auto& [name, pool] : state_->config().pools) out[name];
  for (auto& [name, counters] : out) {
    counters.wait_seconds.counts.resize(std::size(kWaitBucketSeconds) + 1, 0);
  }
  return out;
}

void PoolService::Publish(const pool::PoolChanges& changes) {
  for (const std::string& line : changes.log) FERRY_LOG(kInfo) << "pool: " << line;
  for (const auto& [session, status] : changes.ended_waits) {
    FERRY_LOG(kInfo) << "pool: session " << session << " stops waiting: " << status.message();
  }
  for (const pool::Preemption& preemption : changes.preempted) {
    FERRY_LOG(kWarning) << "pool: session " << preemption.session << " " << preemption.reason;
    if (options_.preempt) options_.preempt(preemption);
  }
  for (const pool::Migration& migration : changes.migrations) {
    FERRY_LOG(kInfo) << "pool: session " << migration.session << " moves from GPU "
                     << migration.from.gpu << " to GPU " << migration.to.gpu << " (slice "
                     << migration.to.slice + 1 << "/" << migration.to.slices_per_gpu
                     << ", on_rebind = migrate)";
    if (options_.migrate) {
      options_.migrate(migration);
    } else {
      CancelMove(migration.session);
    }
  }
  changed_cv_.notify_all();
  timer_cv_.notify_all();
  // Unconditional: a return or a new config changes what the cluster sees
  // (free slices, the next change) without PoolChanges saying so.
  if (options_.changed) options_.changed();
}

std::string PoolService::Summarize(const pool::PoolChanges& changes) {
  std::string out;
  for (const std::string& line : changes.log) out += line + "\n";
  if (!changes.preempted.empty()) {
    out += "preempted " + std::to_string(changes.preempted.size()) + " session(s)\n";
  }
  if (!changes.migrations.empty()) {
    out += "moving " + std::to_string(changes.migrations.size()) +
           " session(s) to other GPUs (on_rebind = migrate)\n";
  }
  if (!changes.granted.empty()) {
    out += "granted " + std::to_string(changes.granted.size()) + " waiting borrow(s)\n";
  }
  return out;
}

void PoolService::TimerLoop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    const absl::Time now = options_.clock->Now();
    pool::PoolChanges changes = state_->Advance(now);
    RecordLocked(changes);
    if (!changes.empty()) {
      lock.unlock();
      Publish(changes);
      lock.lock();
      continue;
    }
    const absl::Time next = state_->NextEventTime(now);
    absl::Duration sleep = next == absl::InfiniteFuture() ? kMaxTimerSleep : next - now;
    sleep = std::clamp(sleep, absl::Milliseconds(1), kMaxTimerSleep);
    // On a test clock the wait is in real time while the deadline is in
    // fake time; AdvanceTestClock applies what falls due itself, so the timer
    // only ever wakes early there, never late.
    timer_cv_.wait_for(lock, absl::ToChronoNanoseconds(sleep));
  }
}

Status PoolService::Borrow(const pool::BorrowRequest& request, const std::function<bool()>& gone,
                           const std::function<void(int)>& on_position, pool::Lease* lease) {
  FERRY_RETURN_IF_ERROR(PlaceOrWait(request, gone, on_position, lease));
  if (options_.changed) options_.changed();  // a grant changes no PoolChanges
  return Status::Ok();
}

Status PoolService::PlaceOrWait(const pool::BorrowRequest& request,
                                const std::function<bool()>& gone,
                                const std::function<void(int)>& on_position, pool::Lease* lease) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (stopping_) return Status::Disconnected("ferryd is stopping");
  pool::BorrowResult result = state_->Borrow(request, options_.clock->Now());
  if (result.outcome == pool::BorrowOutcome::kRefused) return result.error;
  // A wait is counted when it begins and timed (in real time, whatever the
  // pool's clock) when it ends, however it ends.
  const std::string pool_name =
      request.pool.empty() ? state_->config().server.default_pool : request.pool;
  const auto wait_began = std::chrono::steady_clock::now();
  absl::Cleanup count_wait = [&] {
    if (result.outcome != pool::BorrowOutcome::kQueued) return;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_began).count();
    std::lock_guard<std::mutex> counters_lock(counters_mutex_);
    PoolCounters& counters = counters_[pool_name];
    auto& counts = counters.wait_seconds.counts;
    counts.resize(std::size(kWaitBucketSeconds) + 1, 0);
    ++counts[std::lower_bound(std::begin(kWaitBucketSeconds), std::end(kWaitBucketSeconds),
                              seconds) -
             std::begin(kWaitBucketSeconds)];
    counters.wait_seconds.sum += seconds;
  };
  if (result.outcome == pool::BorrowOutcome::kQueued) {
    {
      std::lock_guard<std::mutex> counters_lock(counters_mutex_);
      ++counters_[pool_name].waits;
    }
    lock.unlock();
    timer_cv_.notify_all();  // a new deadline
    lock.lock();
  }
  int reported = 0;
  for (;;) {
    if (const pool::Lease* granted = state_->FindLease(request.session)) {
      *lease = *granted;
      return Status::Ok();
    }
    if (auto it = ended_waits_.find(request.session); it != ended_waits_.end()) {
      Status status = it->second;
      ended_waits_.erase(it);
      return status;
    }
    const int position = state_->QueuePosition(request.session);
    if (stopping_ || position == 0) {
      pool::PoolChanges changes = state_->Return(request.session, options_.clock->Now());
      lock.unlock();
      Publish(changes);
      return stopping_ ? Status::Disconnected("ferryd is stopping")
                       : Status::Internal("the borrow left the queue without an answer");
    }
    if (position != reported) {
      reported = position;
      lock.unlock();
      on_position(position);
      lock.lock();
      continue;
    }
    changed_cv_.wait_for(lock, kWaiterPollInterval);
    lock.unlock();
    const bool client_gone = gone();
    lock.lock();
    if (client_gone && state_->FindLease(request.session) == nullptr) {
      pool::PoolChanges changes = state_->Return(request.session, options_.clock->Now());
      ended_waits_.erase(request.session);
      lock.unlock();
      Publish(changes);
      return Status::Disconnected("the client went away while it waited");
    }
  }
}

void PoolService::Return(uint64_t session) {
  // The claims go first: once the slices are free here, a new borrow may
  // claim the same ones.
  if (options_.release) options_.release(session);
  pool::PoolChanges changes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    changes = state_->Return(session, options_.clock->Now());
    RecordLocked(changes);
  }
  Publish(changes);
}

Status PoolService::ReleaseSlices(uint64_t session) {
  pool::PoolChanges changes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    FERRY_RETURN_IF_ERROR(state_->ReleaseSlices(session, options_.clock->Now(), &changes));
    RecordLocked(changes);
  }
  Publish(changes);
  return Status::Ok();
}

Status PoolService::MoveSlice(uint64_t session, int from, int to, int prefer,
                              pool::SliceGrant* moved) {
  pool::PoolChanges changes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    FERRY_RETURN_IF_ERROR(
        state_->MoveSlice(session, from, to, prefer, options_.clock->Now(), &changes, moved));
    RecordLocked(changes);
  }
  Publish(changes);
  return Status::Ok();
}

void PoolService::FinishMove(uint64_t session) {
  pool::PoolChanges changes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    state_->FinishMove(session, options_.clock->Now(), &changes);
    RecordLocked(changes);
  }
  Publish(changes);
}

void PoolService::CancelMove(uint64_t session) {
  pool::PoolChanges changes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    state_->CancelMove(session, options_.clock->Now(), &changes);
    RecordLocked(changes);
  }
  Publish(changes);
}

std::vector<pool::PinnedSlice> PoolService::ReleasedSlices(uint64_t session) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_->ReleasedSlices(session);
}

Status PoolService::Reload(const pool::Config& config, std::string* summary) {
  pool::PoolChanges changes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    FERRY_RETURN_IF_ERROR(state_->Reconfigure(config, options_.clock->Now(), &changes));
    RecordLocked(changes);
  }
  Publish(changes);
  *summary = Summarize(changes);
  return Status::Ok();
}

Status PoolService::Rebind(int gpu, const std::string& pool_name,
                           std::optional<pool::RebindPolicy> policy,
                           std::optional<absl::Duration> grace, std::string* summary) {
  pool::PoolChanges changes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const pool::ServerConfig& server = state_->config().server;
    FERRY_RETURN_IF_ERROR(state_->Rebind(gpu, pool_name, policy.value_or(server.on_rebind),
                                         grace.value_or(server.grace), options_.clock->Now(),
                                         &changes));
    RecordLocked(changes);
  }
  Publish(changes);
  *summary = Summarize(changes);
  if (summary->empty())
    *summary = "GPU " + std::to_string(gpu) + " already serves pool " + pool_name + "\n";
  return Status::Ok();
}

Status PoolService::SetDrained(int gpu, bool drained, std::string* summary) {
  pool::PoolChanges changes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    FERRY_RETURN_IF_ERROR(state_->SetDrained(gpu, drained, options_.clock->Now(), &changes));
    RecordLocked(changes);
  }
  Publish(changes);
  *summary = Summarize(changes);
  if (summary->empty()) {
    *summary =
        "GPU " + std::to_string(gpu) + (drained ? " was already drained\n" : " was not drained\n");
  }
  return Status::Ok();
}

Status PoolService::AdvanceTestClock(absl::Duration by, std::string* summary) {
  if (options_.test_clock == nullptr) {
    return Status::PermissionDenied(
        "the clock can only be moved when ferryd runs with --test-fake-clock (tests only)");
  }
  if (by < absl::ZeroDuration())
    return Status::InvalidArgument("the test clock only moves forward");
  pool::PoolChanges changes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    options_.test_clock->Advance(by);
    changes = state_->Advance(options_.clock->Now());
    RecordLocked(changes);
  }
  Publish(changes);
  *summary = "test clock now " +
             absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", options_.clock->Now(), absl::UTCTimeZone()) +
             "\n" + Summarize(changes);
  return Status::Ok();
}

pool::PoolSnapshot PoolService::Snapshot(absl::Time* now) const {
  std::lock_guard<std::mutex> lock(mutex_);
  *now = options_.clock->Now();
  return state_->Snapshot(*now);
}

std::string PoolService::default_pool() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_->config().server.default_pool;
}

bool PoolService::HasPool(const std::string& pool) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_->config().pools.count(pool) != 0;
}

std::optional<absl::Duration> PoolService::ParkAfter(const std::string& pool) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = state_->config().pools.find(pool);
  if (found == state_->config().pools.end() || found->second.memory_overcommit <= 1.0) {
    return std::nullopt;
  }
  return found->second.park_after;
}

std::optional<absl::Duration> PoolService::IdleRelease(const std::string& pool) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = state_->config().pools.find(pool);
  if (found == state_->config().pools.end()) return std::nullopt;
  return found->second.idle_release;
}

std::optional<absl::Duration> PoolService::ShortestIdleRelease() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::optional<absl::Duration> shortest;
  for (const auto& [name, pool] : state_->config().pools) {
    if (pool.idle_release.has_value() && (!shortest || *pool.idle_release < *shortest)) {
      shortest = pool.idle_release;
    }
  }
  return shortest;
}

std::string PoolService::config_path() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_->config().path;
}

}  // namespace ferry::server
