#include "server/pool/pool_state.h"

#include <algorithm>
#include <chrono>
#include <set>

#include "common/units.h"

namespace ferry::pool {
namespace {

std::string FormatInstant(absl::Time t) {
  if (t == absl::InfiniteFuture()) return "never";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", t, absl::UTCTimeZone());
}

std::string FormatGrace(absl::Duration d) { return FormatDuration(absl::ToChronoMilliseconds(d)); }

}  // namespace

PoolState::PoolState(Config config, std::vector<PoolGpu> gpus) : config_(std::move(config)) {
  std::sort(gpus.begin(), gpus.end(),
            [](const PoolGpu& a, const PoolGpu& b) { return a.index < b.index; });
  for (const PoolGpu& spec : gpus) {
    Gpu gpu;
    gpu.spec = spec;
    gpus_.push_back(std::move(gpu));
  }
}

Status PoolState::CheckScheduleGpus(const Config& config, const std::vector<PoolGpu>& gpus) {
  if (!config.pooling()) return Status::InvalidArgument("the config defines no pool");
  if (gpus.empty()) return Status::InvalidArgument("the pool has no GPU");
  std::set<int> seen;
  for (const PoolGpu& gpu : gpus) {
    if (!seen.insert(gpu.index).second) {
      return Status::InvalidArgument("GPU " + std::to_string(gpu.index) + " is listed twice");
    }
  }
  for (const ScheduleConfig& schedule : config.schedules) {
    if (!schedule.gpu_names.empty() || !schedule.server_labels.empty()) {
      return Status::InvalidArgument(
          (config.path.empty() ? std::string("<config>") : config.path) + ":" +
          std::to_string(schedule.line) +
          ": schedule: selects GPUs by server (SERVER:INDEX or labels); only a ferryd in a "
          "cluster (--etcd, --name) applies such a schedule");
    }
    for (int g : schedule.gpus) {
      if (seen.count(g) == 0) {
        return Status::InvalidArgument(
            (config.path.empty() ? std::string("<config>") : config.path) + ":" +
            std::to_string(schedule.line) + ": schedule.gpus: GPU " + std::to_string(g) +
            " is not served by this ferryd (" +
            Plural(static_cast<int>(gpus.size()), "GPU", "GPUs") + ")");
      }
    }
  }
  return Status::Ok();
}

Status PoolState::Create(const Config& config, std::vector<PoolGpu> gpus, absl::Time now,
                         std::unique_ptr<PoolState>* out) {
  FERRY_RETURN_IF_ERROR(CheckScheduleGpus(config, gpus));
  std::unique_ptr<PoolState> state(new PoolState(config, std::move(gpus)));
  PoolChanges ignored;  // nobody holds anything yet
  state->ApplyBindings(now, "the schedule", &ignored);
  *out = std::move(state);
  return Status::Ok();
}

// --- bindings -------------------------------------------------------------------

PoolState::Gpu* PoolState::FindGpu(int index) {
  for (Gpu& gpu : gpus_) {
    if (gpu.spec.index == index) return &gpu;
  }
  return nullptr;
}

const PoolState::Gpu* PoolState::FindGpu(int index) const {
  return const_cast<PoolState*>(this)->FindGpu(index);
}

PoolState::Binding PoolState::Scheduled(const Gpu& gpu, absl::Time t) const {
  for (size_t i = 0; i < config_.schedules.size(); ++i) {
    const ScheduleConfig& s = config_.schedules[i];
    if (std::find(s.gpus.begin(), s.gpus.end(), gpu.spec.index) == s.gpus.end()) continue;
    if (s.window.Contains(t)) {
      return Binding{s.pool, BindingSource::kSchedule, static_cast<int>(i), s.on_rebind, s.grace};
    }
  }
  return Binding{config_.server.default_pool, BindingSource::kDefault, -1, config_.server.on_rebind,
                 config_.server.grace};
}

PoolState::Binding PoolState::Desired(const Gpu& gpu, absl::Time t) const {
  if (gpu.source == BindingSource::kManual && t < gpu.manual_until) {
    Binding binding = Scheduled(gpu, t);
    binding.pool = gpu.manual_pool;
    binding.source = BindingSource::kManual;
    binding.schedule = -1;
    return binding;
  }
  return Scheduled(gpu, t);
}

std::pair<absl::Time, std::string> PoolState::NextScheduledChange(const Gpu& gpu,
                                                                  absl::Time t) const {
  const std::string current = Scheduled(gpu, t).pool;
  absl::Time at = t;
  // Each step moves to the next boundary of some window of this GPU; a
  // boundary where the pool stays the same (a window ends into the default
  // pool of the same name) is stepped over. Two weeks of boundaries bound it.
  for (int step = 0; step < 64; ++step) {
    absl::Time next = absl::InfiniteFuture();
    for (const ScheduleConfig& s : config_.schedules) {
      if (std::find(s.gpus.begin(), s.gpus.end(), gpu.spec.index) == s.gpus.end()) continue;
      next = std::min(next, s.window.NextBoundary(at));
    }
    if (next == absl::InfiniteFuture()) break;
    const std::string pool = Scheduled(gpu, next).pool;
    if (pool != current) return {next, pool};
    at = next;
  }
  return {absl::InfiniteFuture(), ""};
}

std::string PoolState::DescribeBinding(const Binding& binding) const {
  switch (binding.source) {
    case BindingSource::kSchedule:
      return "window " + config_.schedules[binding.schedule].window.ToString();
    case BindingSource::kManual:
      return "manual rebind";
    case BindingSource::kDefault:
      break;
  }
  return "default_pool";
}

void PoolState::ApplyBindings(absl::Time now, const std::string& by, PoolChanges* changes) {
  for (Gpu& gpu : gpus_) {
    if (gpu.source == BindingSource::kManual && now >= gpu.manual_until) {
      changes->log.push_back("GPU " + std::to_string(gpu.spec.index) +
                             ": the manual rebind to pool " + gpu.manual_pool +
                             " ends; the schedule applies again");
      gpu.source = BindingSource::kDefault;
      gpu.manual_pool.clear();
      gpu.manual_until = absl::InfiniteFuture();
    }
    const Binding binding = Desired(gpu, now);
    if (binding.pool != gpu.pool) {
      MoveGpu(gpu, binding.pool, binding.policy, binding.grace, now, by, DescribeBinding(binding),
              changes);
    }
    if (gpu.source != BindingSource::kManual) {
      gpu.source = binding.source;
      gpu.schedule = binding.schedule;
    }
  }
}

void PoolState::MoveGpu(Gpu& gpu, const std::string& pool, RebindPolicy policy,
                        absl::Duration grace, absl::Time now, const std::string& by,
                        const std::string& detail, PoolChanges* changes) {
  const std::string from = gpu.pool;
  gpu.pool = pool;
  if (from.empty()) return;  // the first binding, at creation
  // "GPU 0 was rebound from pool dev to pool train (window 20:00:00-08:00:00
  // Asia/Shanghai) at 2026-03-10 12:00:00 UTC"
  const std::string what = "GPU " + std::to_string(gpu.spec.index) + " was rebound from pool " +
                           from + " to pool " + pool + " (" + detail + ") at " + FormatInstant(now);
  int affected = 0;
  std::vector<uint64_t> to_preempt;
  // on_rebind = "migrate": holders to move, and whether each was draining
  // already (then it is not counted as a new drain when it cannot move).
  std::vector<std::pair<uint64_t, bool>> to_move;
  for (Holding& holding : gpu.holdings) {
    const Lease& lease = leases_.at(holding.session);
    if (lease.pool == pool) {
      holding.deadline = absl::InfiniteFuture();  // back home: no longer draining
      holding.drain_reason.clear();
      continue;
    }
    if (lease.preempting) continue;
    ++affected;
    if (policy == RebindPolicy::kPreempt) {
      to_preempt.push_back(holding.session);
      continue;
    }
    // Drain; a holder that moves leaves its drained slice behind, and one
    // that cannot stays draining.
    const bool was_draining = holding.deadline != absl::InfiniteFuture();
    if (now + grace < holding.deadline) {
      if (!was_draining && policy != RebindPolicy::kMigrate) {
        changes->drained.push_back(holding.session);
      }
      holding.deadline = now + grace;
      holding.drain_reason = "preempted by " + by + ": " + what + "; the drain grace of " +
                             FormatGrace(grace) + " ran out";
    }
    if (policy == RebindPolicy::kMigrate) to_move.emplace_back(holding.session, was_draining);
  }
  // Each holder to move takes a free slice of its pool on another GPU, the
  // lowest index first (as borrows fill GPUs), reserved at once so that the
  // next holder or a borrow does not find it free.
  int moving = 0;
  std::vector<std::string> stays;  // log lines, after the rebind's own
  for (const auto& [session, was_draining] : to_move) {
    Lease& lease = leases_.at(session);
    auto slice = std::find_if(lease.slices.begin(), lease.slices.end(),
                              [&](const SliceGrant& s) { return s.gpu == gpu.spec.index; });
    std::string why;
    const int n =
        config_.pools.count(lease.pool) != 0 ? config_.pools.at(lease.pool).slices_per_gpu : 0;
    Gpu* target = nullptr;
    int number = -1;
    if (moves_.contains(session) || slice == lease.slices.end()) {
      why = "it is moving already";  // (ferryctl migrate)
    } else if (n == 0 || slice->slices_per_gpu != n) {
      why = "its pool " + lease.pool + " splits GPUs another way now";
    } else {
      for (Gpu& candidate : gpus_) {
        // Not a GPU that this very moment rebinds too (the same boundary,
        // later in ApplyBindings' loop).
        if (&candidate == &gpu || Desired(candidate, now).pool != candidate.pool) continue;
        number = MoveTarget(lease, candidate, n, slice->slice, nullptr);
        if (number >= 0) {
          target = &candidate;
          break;
        }
      }
      if (target == nullptr) why = "no free slice of pool " + lease.pool + " on another GPU";
    }
    if (target == nullptr) {
      if (!was_draining) changes->drained.push_back(session);
      changes->not_migrated.push_back(session);
      stays.push_back("session " + std::to_string(session) + " stays on GPU " +
                      std::to_string(gpu.spec.index) + " and drains (on_rebind = migrate: " + why +
                      ")");
      continue;
    }
    Migration migration;
    migration.session = session;
    migration.device = static_cast<size_t>(slice - lease.slices.begin());
    migration.from = *slice;
    migration.to = BeginMove(lease, migration.device, *target, number, /*rebind=*/true);
    migration.rebind = "by " + by + ": " + what;
    changes->migrations.push_back(std::move(migration));
    ++moving;
  }
  // Released sessions of this GPU come back to it: those of another pool
  // now go as its holders would (they have no slice to finish with, so a
  // drain only gives them the grace to come back... to a GPU that serves
  // another pool: they are preempted when it ends).
  std::vector<uint64_t> released_to_preempt;
  for (auto& [session, released] : released_) {
    const bool here = std::any_of(released.lease.slices.begin(), released.lease.slices.end(),
                                  [&](const SliceGrant& s) { return s.gpu == gpu.spec.index; });
    if (!here) continue;
    if (released.lease.pool == pool) {
      // Back home — no longer to be preempted once every GPU it comes back
      // to serves its pool again.
      const Lease& lease = released.lease;  // (a structured binding cannot be captured in C++20)
      const bool all_home =
          std::all_of(lease.slices.begin(), lease.slices.end(), [&](const SliceGrant& s) {
            const Gpu* g = FindGpu(s.gpu);
            return g != nullptr && g->pool == lease.pool;
          });
      if (all_home) {
        released.deadline = absl::InfiniteFuture();
        released.drain_reason.clear();
      }
      continue;
    }
    ++affected;
    if (policy == RebindPolicy::kPreempt) {
      released_to_preempt.push_back(session);
    } else if (now + grace < released.deadline) {
      released.deadline = now + grace;
      released.drain_reason = "preempted by " + by + ": " + what + "; the drain grace of " +
                              FormatGrace(grace) + " ran out while its slices were released";
    }
  }
  std::string line = "by " + by + ": " + what;
  if (affected > 0) {
    if (policy == RebindPolicy::kPreempt) {
      line += "; preempting " + Plural(affected, "holder", "holders");
    } else {
      if (moving > 0) {
        line += "; moving " + Plural(moving, "holder", "holders") + " to other GPUs";
      }
      if (affected > moving) {
        line += (moving > 0 ? ", draining " : "; draining ") +
                Plural(affected - moving, "holder", "holders") + " (grace " + FormatGrace(grace) +
                ")";
      }
    }
  }
  changes->log.push_back(line);
  changes->log.insert(changes->log.end(), stays.begin(), stays.end());
  for (uint64_t session : to_preempt) {
    Preempt(session, "preempted by " + by + ": " + what + " (on_rebind = preempt)", changes);
  }
  for (uint64_t session : released_to_preempt) {
    PreemptReleased(session, "preempted by " + by + ": " + what + " (on_rebind = preempt)",
                    changes);
  }
}

void PoolState::Preempt(uint64_t session, const std::string& reason, PoolChanges* changes) {
  auto it = leases_.find(session);
  if (it == leases_.end() || it->second.preempting) return;
  it->second.preempting = true;
  it->second.preempt_reason = reason;
  changes->preempted.push_back(Preemption{session, reason, ""});
}

// --- time -------------------------------------------------------------------------

PoolChanges PoolState::Advance(absl::Time now) {
  PoolChanges changes;
  ApplyBindings(now, "the schedule", &changes);
  ExpireGraces(now, &changes);
  ExpireWaits(now, &changes);
  ServeQueue(now, &changes);
  return changes;
}

void PoolState::ExpireGraces(absl::Time now, PoolChanges* changes) {
  for (Gpu& gpu : gpus_) {
    for (const Holding& holding : gpu.holdings) {
      // A move's source slice: the session is leaving it (CancelMove looks
      // again if it stays).
      if (holding.leaving) continue;
      if (holding.deadline <= now) Preempt(holding.session, holding.drain_reason, changes);
    }
  }
  std::vector<std::pair<uint64_t, std::string>> expired;
  for (const auto& [session, released] : released_) {
    if (released.deadline <= now) expired.emplace_back(session, released.drain_reason);
  }
  for (const auto& [session, reason] : expired) PreemptReleased(session, reason, changes);
}

void PoolState::ExpireWaits(absl::Time now, PoolChanges* changes) {
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (it->deadline <= now) {
      const std::string waited = FormatGrace(it->deadline - it->since);
      const std::string why =
          it->request.pinned.empty()
              ? "pool " + it->request.pool + " is full: no slice became free within " + waited
              : DescribePinnedFull(it->request) + " (waited " + waited + ")";
      changes->ended_waits.emplace_back(it->request.session,
                                        Status::Overloaded(why + " (FERRY_WAIT)"));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
}

absl::Time PoolState::NextEventTime(absl::Time now) const {
  absl::Time next = absl::InfiniteFuture();
  for (const ScheduleConfig& s : config_.schedules)
    next = std::min(next, s.window.NextBoundary(now));
  for (const Gpu& gpu : gpus_) {
    if (gpu.source == BindingSource::kManual) next = std::min(next, gpu.manual_until);
    for (const Holding& holding : gpu.holdings) {
      if (!holding.leaving && !leases_.at(holding.session).preempting) {
        next = std::min(next, holding.deadline);
      }
    }
  }
  for (const Waiter& waiter : queue_) next = std::min(next, waiter.deadline);
  for (const auto& [session, released] : released_) next = std::min(next, released.deadline);
  return next;
}

// --- borrowing ----------------------------------------------------------------------

uint64_t PoolState::UsedUnits(const Gpu& gpu) const {
  uint64_t used = 0;
  for (const Holding& holding : gpu.holdings) {
    used += kCapacityUnits / static_cast<uint64_t>(holding.slices_per_gpu);
  }
  return used;
}

int PoolState::FreeSlices(const Gpu& gpu, int slices_per_gpu) const {
  const uint64_t used = UsedUnits(gpu);
  if (used >= kCapacityUnits) return 0;
  return static_cast<int>((kCapacityUnits - used) / (kCapacityUnits / slices_per_gpu));
}

const PoolState::Blocked::InPool* PoolState::Blocked::Of(const std::string& pool) const {
  auto found = pools.find(pool);
  return found == pools.end() ? nullptr : &found->second;
}

bool PoolState::HeldUp(const BorrowRequest& request, const Blocked& blocked) const {
  const Blocked::InPool* in_pool = blocked.Of(request.pool);
  if (in_pool == nullptr) return false;
  if (in_pool->whole) return true;
  // Another released session waiting for the same slice (it had it before
  // this one took it) goes first.
  for (const PinnedSlice& pinned : request.pinned) {
    auto on_gpu = in_pool->gpus.find(pinned.gpu);
    if (on_gpu != in_pool->gpus.end() && on_gpu->second.slices.contains(pinned.slice)) return true;
  }
  return false;
}

void PoolState::HoldUp(const BorrowRequest& request, Blocked* blocked) const {
  Blocked::InPool& in_pool = blocked->pools[request.pool];
  if (request.pinned.empty()) {
    in_pool.whole = true;
    return;
  }
  const int n = config_.pools.at(request.pool).slices_per_gpu;
  for (const PinnedSlice& pinned : request.pinned) {
    const Gpu* gpu = FindGpu(pinned.gpu);
    // A slice that cannot come back now (its GPU serves another pool or
    // layout) holds nobody up.
    if (gpu == nullptr || gpu->pool != request.pool || pinned.slices_per_gpu != n) continue;
    Blocked::OnGpu& on_gpu = in_pool.gpus[pinned.gpu];
    // A slice two waiters want is held back once.
    if (!on_gpu.slices.insert(pinned.slice).second) continue;
    const bool taken = std::any_of(gpu->holdings.begin(), gpu->holdings.end(), [&](const Holding& h) {
      return h.slices_per_gpu == n && h.slice == pinned.slice;
    });
    if (!taken) ++on_gpu.capacity;
  }
}

bool PoolState::TryPlace(const BorrowRequest& request, absl::Time now,
                         const Blocked::InPool* blocked) {
  const int n = config_.pools.at(request.pool).slices_per_gpu;
  const auto slice_taken = [n](const Gpu& gpu, int slice) {
    return std::any_of(gpu.holdings.begin(), gpu.holdings.end(), [&](const Holding& h) {
      return h.slices_per_gpu == n && h.slice == slice;
    });
  };
  const auto held_back = [blocked](int gpu) -> const Blocked::OnGpu* {
    if (blocked == nullptr) return nullptr;
    auto found = blocked->gpus.find(gpu);
    return found == blocked->gpus.end() ? nullptr : &found->second;
  };
  // Slices that fit on `gpu` for this request, beyond what earlier waiters
  // hold back.
  const auto room = [&](const Gpu& gpu) {
    const Blocked::OnGpu* back = held_back(gpu.spec.index);
    return FreeSlices(gpu, n) - (back != nullptr ? back->capacity : 0);
  };
  // The chosen GPUs and the slice number on each.
  std::vector<std::pair<Gpu*, int>> chosen;
  if (!request.pinned.empty()) {
    for (const PinnedSlice& pinned : request.pinned) {
      Gpu* gpu = FindGpu(pinned.gpu);
      if (gpu == nullptr || gpu->pool != request.pool || pinned.slices_per_gpu != n ||
          room(*gpu) <= 0 || slice_taken(*gpu, pinned.slice)) {
        return false;
      }
      chosen.emplace_back(gpu, pinned.slice);
    }
  } else {
    // Slice numbers released sessions come back to: taken last.
    std::map<int, std::set<int>> released_slices;  // by GPU
    for (const auto& [session, released] : released_) {
      for (const SliceGrant& slice : released.lease.slices) {
        if (slice.slices_per_gpu == n) released_slices[slice.gpu].insert(slice.slice);
      }
    }
    for (Gpu& gpu : gpus_) {
      if (static_cast<int>(chosen.size()) == request.gpus) break;
      if (gpu.pool != request.pool || gpu.drained || room(gpu) <= 0) continue;
      const Blocked::OnGpu* back = held_back(gpu.spec.index);
      const auto usable = [&](int slice) {
        return !slice_taken(gpu, slice) && (back == nullptr || !back->slices.contains(slice));
      };
      const std::set<int>& owned = released_slices[gpu.spec.index];
      int slice = -1;
      for (int s = 0; s < n && slice < 0; ++s) {
        if (usable(s) && !owned.contains(s)) slice = s;
      }
      for (int s = 0; s < n && slice < 0; ++s) {
        if (usable(s)) slice = s;
      }
      if (slice < 0) continue;  // every free number is held back
      chosen.emplace_back(&gpu, slice);
    }
    if (static_cast<int>(chosen.size()) < request.gpus) return false;
  }
  Lease lease;
  lease.session = request.session;
  lease.pool = request.pool;
  lease.since = now;
  lease.host = request.host;
  lease.pid = request.pid;
  lease.program = request.program;
  for (auto [gpu, slice] : chosen) {
    gpu->holdings.push_back(Holding{request.session, slice, n, absl::InfiniteFuture(), ""});
    const double overcommit = config_.pools.at(request.pool).memory_overcommit;
    const uint64_t quota =
        static_cast<uint64_t>(static_cast<double>(gpu->spec.memory) * overcommit / n);
    lease.slices.push_back(SliceGrant{gpu->spec.index, slice, n, quota, 1.0 / n});
  }
  leases_[request.session] = std::move(lease);
  released_.erase(request.session);  // back
  return true;
}

std::string PoolState::DescribePinnedFull(const BorrowRequest& request) const {
  const int n = config_.pools.at(request.pool).slices_per_gpu;
  for (const PinnedSlice& pinned : request.pinned) {
    const std::string where =
        "slice " + std::to_string(pinned.slice) + " of GPU " + std::to_string(pinned.gpu);
    const Gpu* gpu = FindGpu(pinned.gpu);
    if (gpu == nullptr) return "GPU " + std::to_string(pinned.gpu) + " is not in the pool";
    if (gpu->pool != request.pool) {
      return where + ": the GPU serves pool " + gpu->pool + " now, not " + request.pool;
    }
    if (pinned.slices_per_gpu != n) {
      return where + ": pool " + request.pool + " has " + Plural(n, "slice", "slices") +
             " per GPU now, not " + std::to_string(pinned.slices_per_gpu);
    }
    const bool taken = std::any_of(gpu->holdings.begin(), gpu->holdings.end(), [&](const Holding& h) {
      return h.slices_per_gpu == n && h.slice == pinned.slice;
    });
    if (taken || FreeSlices(*gpu, n) == 0) return where + " is held by another session";
  }
  return "pool " + request.pool + " has borrowers waiting ahead for the same slices";
}

std::string PoolState::DescribeFull(const std::string& pool) const {
  const int n = config_.pools.at(pool).slices_per_gpu;
  int gpus = 0, drained = 0, held = 0;
  for (const Gpu& gpu : gpus_) {
    if (gpu.pool != pool) continue;
    ++gpus;
    drained += gpu.drained ? 1 : 0;
    held += static_cast<int>(gpu.holdings.size());
  }
  if (gpus == 0) return "pool " + pool + " serves no GPU at the moment";
  return "pool " + pool + " is full: " + Plural(gpus, "GPU", "GPUs") + " with " +
         Plural(n, "slice", "slices") + " each, " + std::to_string(held) + " held" +
         (drained > 0 ? ", " + std::to_string(drained) + " drained" : "");
}

BorrowResult PoolState::Borrow(const BorrowRequest& original, absl::Time now) {
  BorrowResult result;
  BorrowRequest request = original;
  if (request.pool.empty()) request.pool = config_.server.default_pool;
  if (config_.pools.count(request.pool) == 0) {
    std::string names;
    for (const auto& [name, p] : config_.pools) names += (names.empty() ? "" : ", ") + name;
    result.error =
        Status::InvalidArgument("no pool '" + request.pool + "' (FERRY_POOL); pools: " + names);
    return result;
  }
  if (request.gpus < 1 || request.gpus > static_cast<int>(gpus_.size())) {
    result.error = Status::InvalidArgument("FERRY_GPUS=" + std::to_string(request.gpus) +
                                           ": this server has " +
                                           Plural(static_cast<int>(gpus_.size()), "GPU", "GPUs"));
    return result;
  }
  if (leases_.count(request.session) != 0 || QueuePosition(request.session) != 0) {
    result.error =
        Status::InvalidArgument("session " + std::to_string(request.session) + " already borrows");
    return result;
  }
  if (!request.pinned.empty() && static_cast<int>(request.pinned.size()) != request.gpus) {
    result.error = Status::InvalidArgument("a pinned borrow names one slice per device");
    return result;
  }
  // First come, first served: nobody overtakes a waiter of the same pool
  // (a pinned waiter holds up only its GPUs).
  int ahead = 0;
  Blocked blocked;
  for (const Waiter& w : queue_) {
    if (w.request.pool != request.pool) continue;
    ++ahead;
    HoldUp(w.request, &blocked);
  }
  if (!HeldUp(request, blocked) && TryPlace(request, now, blocked.Of(request.pool))) {
    result.outcome = BorrowOutcome::kGranted;
    return result;
  }
  if (request.wait <= absl::ZeroDuration()) {
    std::string why = !request.pinned.empty() ? DescribePinnedFull(request)
                      : ahead > 0
                          ? "pool " + request.pool +
                                " is full: " + Plural(ahead, "borrower waits", "borrowers wait") +
                                " ahead of you"
                          : DescribeFull(request.pool);
    result.error = Status::Overloaded(why + " (set FERRY_WAIT, e.g. FERRY_WAIT=5m, to queue)");
    return result;
  }
  queue_.push_back(Waiter{request, now, now + request.wait});
  result.outcome = BorrowOutcome::kQueued;
  result.queue_position = ahead + 1;
  return result;
}

void PoolState::ServeQueue(absl::Time now, PoolChanges* changes) {
  Blocked blocked;  // by waiters that cannot be served
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (!HeldUp(it->request, blocked) &&
        TryPlace(it->request, now, blocked.Of(it->request.pool))) {
      changes->granted.push_back(it->request.session);
      it = queue_.erase(it);
    } else {
      HoldUp(it->request, &blocked);
      ++it;
    }
  }
}

PoolChanges PoolState::Return(uint64_t session, absl::Time now) {
  PoolChanges changes;
  released_.erase(session);  // a released session that ended
  moves_.erase(session);
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->request.session == session) {
      queue_.erase(it);
      ServeQueue(now, &changes);  // those behind it may fit now
      return changes;
    }
  }
  if (leases_.erase(session) == 0) return changes;
  for (Gpu& gpu : gpus_) {
    std::erase_if(gpu.holdings, [session](const Holding& h) { return h.session == session; });
  }
  ServeQueue(now, &changes);
  return changes;
}

Status PoolState::ReleaseSlices(uint64_t session, absl::Time now, PoolChanges* changes) {
  auto it = leases_.find(session);
  if (it == leases_.end()) {
    return Status::NotFound("session " + std::to_string(session) + " holds no slice");
  }
  if (it->second.preempting) {
    return Status::Overloaded("session " + std::to_string(session) + " is being preempted");
  }
  for (const Gpu& gpu : gpus_) {
    for (const Holding& holding : gpu.holdings) {
      if (holding.session == session && holding.deadline != absl::InfiniteFuture()) {
        return Status::Overloaded("session " + std::to_string(session) +
                                  " is draining: its slice does not come back");
      }
    }
  }
  Released released;
  released.lease = std::move(it->second);
  released.since = now;
  leases_.erase(it);
  for (Gpu& gpu : gpus_) {
    std::erase_if(gpu.holdings, [session](const Holding& h) { return h.session == session; });
  }
  released_[session] = std::move(released);
  ServeQueue(now, changes);
  return Status::Ok();
}

Status PoolState::MoveSlice(uint64_t session, int from, int to, int prefer, absl::Time now,
                            PoolChanges* changes, SliceGrant* moved) {
  (void)now;
  auto it = leases_.find(session);
  if (it == leases_.end()) {
    return Status::NotFound("session " + std::to_string(session) + " holds no slice" +
                            (released_.contains(session)
                                 ? " (it gave its slices back while idle)"
                                 : ""));
  }
  Lease& lease = it->second;
  if (lease.preempting) {
    return Status::Overloaded("session " + std::to_string(session) + " is being preempted");
  }
  if (moves_.contains(session)) {
    return Status::Overloaded("session " + std::to_string(session) + " is moving already");
  }
  auto slice = std::find_if(lease.slices.begin(), lease.slices.end(),
                            [from](const SliceGrant& s) { return s.gpu == from; });
  if (slice == lease.slices.end()) {
    return Status::NotFound("session " + std::to_string(session) + " holds no slice of GPU " +
                            std::to_string(from));
  }
  if (std::any_of(lease.slices.begin(), lease.slices.end(),
                  [to](const SliceGrant& s) { return s.gpu == to; })) {
    return Status::InvalidArgument("session " + std::to_string(session) +
                                   " holds a slice of GPU " + std::to_string(to) + " already");
  }
  Gpu* source = FindGpu(from);
  Gpu* target = FindGpu(to);
  if (target == nullptr) return Status::NotFound("no GPU " + std::to_string(to) + " in the pool");
  const int n = config_.pools.at(lease.pool).slices_per_gpu;
  if (target->pool == lease.pool && slice->slices_per_gpu != n) {
    return Status::Overloaded("pool " + lease.pool + " has " + Plural(n, "slice", "slices") +
                              " per GPU now, not the " + std::to_string(slice->slices_per_gpu) +
                              " of the session's slice");
  }
  for (const Holding& holding : source->holdings) {
    if (holding.session == session && holding.deadline != absl::InfiniteFuture()) {
      return Status::Overloaded("session " + std::to_string(session) + " is draining");
    }
  }
  std::string why;
  const int number = MoveTarget(lease, *target, n, prefer, &why);
  if (number < 0) return Status::Overloaded(why);
  *moved = BeginMove(lease, static_cast<size_t>(slice - lease.slices.begin()), *target, number,
                     /*rebind=*/false);
  (void)changes;
  return Status::Ok();
}

int PoolState::MoveTarget(const Lease& lease, const Gpu& target, int n, int prefer,
                          std::string* why) const {
  const std::string where = "GPU " + std::to_string(target.spec.index);
  const auto refuse = [why](std::string text) {
    if (why != nullptr) *why = std::move(text);
    return -1;
  };
  if (target.pool != lease.pool) {
    return refuse(where + " serves pool " + target.pool + ", not " + lease.pool);
  }
  if (target.drained) return refuse(where + " is drained");
  if (std::any_of(lease.slices.begin(), lease.slices.end(),
                  [&](const SliceGrant& s) { return s.gpu == target.spec.index; })) {
    return refuse("session " + std::to_string(lease.session) + " holds a slice of " + where +
                  " already");
  }
  const std::string full = where + " has no free slice of pool " + lease.pool;
  if (FreeSlices(target, n) == 0) return refuse(full);
  const auto taken = [&](int s) {
    return std::any_of(target.holdings.begin(), target.holdings.end(),
                       [&](const Holding& h) { return h.slices_per_gpu == n && h.slice == s; });
  };
  std::set<int> comes_back;  // released sessions' slice numbers there
  for (const auto& [other, released] : released_) {
    for (const SliceGrant& s : released.lease.slices) {
      if (s.gpu == target.spec.index && s.slices_per_gpu == n) comes_back.insert(s.slice);
    }
  }
  const auto free_for_us = [&](int s) { return !taken(s) && !comes_back.contains(s); };
  int number = prefer >= 0 && prefer < n && free_for_us(prefer) ? prefer : -1;
  for (int s = 0; s < n && number < 0; ++s) {
    if (free_for_us(s)) number = s;
  }
  for (int s = 0; s < n && number < 0; ++s) {
    if (!taken(s)) number = s;
  }
  return number < 0 ? refuse(full) : number;
}

SliceGrant PoolState::BeginMove(Lease& lease, size_t index, Gpu& target, int number, bool rebind) {
  SliceGrant& slice = lease.slices[index];
  if (Gpu* source = FindGpu(slice.gpu)) {
    for (Holding& holding : source->holdings) {
      if (holding.session == lease.session) holding.leaving = true;  // held until FinishMove
    }
  }
  const int n = slice.slices_per_gpu;
  target.holdings.push_back(Holding{lease.session, number, n, absl::InfiniteFuture(), "", false});
  moves_[lease.session] = Move{index, slice, rebind};
  slice.gpu = target.spec.index;
  slice.slice = number;
  slice.memory_quota = static_cast<uint64_t>(static_cast<double>(target.spec.memory) *
                                             config_.pools.at(lease.pool).memory_overcommit / n);
  return slice;
}

void PoolState::FinishMove(uint64_t session, absl::Time now, PoolChanges* changes) {
  auto move = moves_.find(session);
  if (move == moves_.end()) return;
  const Move done = move->second;
  moves_.erase(move);
  if (Gpu* source = FindGpu(done.from.gpu)) {
    std::erase_if(source->holdings,
                  [session](const Holding& h) { return h.session == session && h.leaving; });
  }
  auto lease = leases_.find(session);
  if (lease != leases_.end() && done.index < lease->second.slices.size()) {
    const SliceGrant& to = lease->second.slices[done.index];
    changes->log.push_back("session " + std::to_string(session) + " moved from GPU " +
                           std::to_string(done.from.gpu) + " to GPU " + std::to_string(to.gpu) +
                           " (slice " + std::to_string(to.slice + 1) + "/" +
                           std::to_string(to.slices_per_gpu) + " of pool " + lease->second.pool +
                           (done.rebind ? "; on_rebind = migrate)" : ")"));
    if (done.rebind) changes->migrated.push_back(session);
  }
  ServeQueue(now, changes);  // the slice it left
}

void PoolState::CancelMove(uint64_t session, absl::Time now, PoolChanges* changes) {
  auto move = moves_.find(session);
  if (move == moves_.end()) return;
  const Move undo = move->second;
  moves_.erase(move);
  auto lease = leases_.find(session);
  if (lease == leases_.end() || undo.index >= lease->second.slices.size()) return;
  SliceGrant& slice = lease->second.slices[undo.index];
  if (Gpu* target = FindGpu(slice.gpu)) {
    std::erase_if(target->holdings, [&](const Holding& h) {
      return h.session == session && !h.leaving && h.slice == slice.slice;
    });
  }
  if (Gpu* source = FindGpu(undo.from.gpu)) {
    for (Holding& holding : source->holdings) {
      if (holding.session == session) holding.leaving = false;
    }
  }
  slice = undo.from;
  if (undo.rebind) {
    // It stays where a rebind took its pool away: draining, as on_rebind =
    // "drain" would have it, unless the GPU serves its pool again.
    const Holding* holding = nullptr;
    if (const Gpu* source = FindGpu(undo.from.gpu)) {
      for (const Holding& h : source->holdings) {
        if (h.session == session) holding = &h;
      }
    }
    if (holding != nullptr && holding->deadline != absl::InfiniteFuture()) {
      changes->drained.push_back(session);
      changes->not_migrated.push_back(session);
      changes->log.push_back("session " + std::to_string(session) + " stays on GPU " +
                             std::to_string(undo.from.gpu) + " and drains until " +
                             FormatInstant(holding->deadline) +
                             " (on_rebind = migrate: it could not move)");
    }
  }
  ExpireGraces(now, changes);  // a grace that ran out while it was moving
  ServeQueue(now, changes);    // the target slice it did not take
}

std::vector<PinnedSlice> PoolState::ReleasedSlices(uint64_t session) const {
  std::vector<PinnedSlice> pinned;
  auto released = released_.find(session);
  if (released == released_.end()) return pinned;
  for (const SliceGrant& s : released->second.lease.slices) {
    pinned.push_back(PinnedSlice{s.gpu, s.slice, s.slices_per_gpu});
  }
  return pinned;
}

void PoolState::PreemptReleased(uint64_t session, const std::string& reason,
                                PoolChanges* changes) {
  auto released = released_.find(session);
  if (released == released_.end()) return;
  const std::string pool = released->second.lease.pool;
  released_.erase(released);
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->request.session == session) {
      changes->ended_waits.emplace_back(session, Status::Overloaded(reason));
      queue_.erase(it);
      break;
    }
  }
  changes->preempted.push_back(Preemption{session, reason, pool});
}

// --- operator actions ------------------------------------------------------------------

Status PoolState::Rebind(int index, const std::string& pool, RebindPolicy policy,
                         absl::Duration grace, absl::Time now, PoolChanges* changes) {
  Gpu* gpu = FindGpu(index);
  if (gpu == nullptr) return Status::NotFound("no GPU " + std::to_string(index) + " in the pool");
  if (config_.pools.count(pool) == 0) return Status::NotFound("no pool '" + pool + "'");
  if (grace < absl::ZeroDuration()) return Status::InvalidArgument("negative grace");
  const Binding scheduled = Scheduled(*gpu, now);
  if (pool == scheduled.pool) {
    gpu->source = scheduled.source;
    gpu->schedule = scheduled.schedule;
    gpu->manual_pool.clear();
    gpu->manual_until = absl::InfiniteFuture();
  } else {
    gpu->source = BindingSource::kManual;
    gpu->schedule = -1;
    gpu->manual_pool = pool;
    gpu->manual_until = NextScheduledChange(*gpu, now).first;
  }
  if (gpu->pool != pool) {
    MoveGpu(*gpu, pool, policy, grace, now, "ferryctl rebind", "manual rebind", changes);
  }
  ExpireGraces(now, changes);  // a zero grace ends at once
  ServeQueue(now, changes);
  return Status::Ok();
}

Status PoolState::SetDrained(int index, bool drained, absl::Time now, PoolChanges* changes) {
  Gpu* gpu = FindGpu(index);
  if (gpu == nullptr) return Status::NotFound("no GPU " + std::to_string(index) + " in the pool");
  if (gpu->drained != drained) {
    gpu->drained = drained;
    changes->log.push_back(
        "GPU " + std::to_string(index) +
        (drained ? " drained: it takes no new borrows" : " undrained: it takes borrows again"));
  }
  ServeQueue(now, changes);
  return Status::Ok();
}

Status PoolState::Reconfigure(const Config& config, absl::Time now, PoolChanges* changes) {
  std::vector<PoolGpu> specs;
  for (const Gpu& gpu : gpus_) specs.push_back(gpu.spec);
  FERRY_RETURN_IF_ERROR(CheckScheduleGpus(config, specs));
  config_ = config;
  for (Gpu& gpu : gpus_) {
    if (gpu.source == BindingSource::kManual && config_.pools.count(gpu.manual_pool) == 0) {
      changes->log.push_back("GPU " + std::to_string(gpu.spec.index) +
                             ": the manual rebind to pool " + gpu.manual_pool +
                             " ends: the pool is gone");
      gpu.source = BindingSource::kDefault;
      gpu.manual_pool.clear();
      gpu.manual_until = absl::InfiniteFuture();
    }
    if (gpu.source == BindingSource::kSchedule) gpu.source = BindingSource::kDefault;
  }
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (config_.pools.count(it->request.pool) == 0 && released_.count(it->request.session) == 0) {
      changes->ended_waits.emplace_back(
          it->request.session,
          Status::InvalidArgument("pool " + it->request.pool + " was removed by a config reload"));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  // Released sessions whose slices cannot come back: their pool is gone, or
  // it splits GPUs another way now.
  std::vector<std::pair<uint64_t, std::string>> orphaned;
  for (const auto& [session, released] : released_) {
    const std::string& name = released.lease.pool;
    auto found = config_.pools.find(name);
    if (found == config_.pools.end()) {
      orphaned.emplace_back(session, "its pool " + name + " was removed");
      continue;
    }
    const int n = found->second.slices_per_gpu;
    for (const SliceGrant& slice : released.lease.slices) {
      if (slice.slices_per_gpu != n) {
        orphaned.emplace_back(session, "pool " + name + " has " + Plural(n, "slice", "slices") +
                                           " per GPU now, not the " +
                                           std::to_string(slice.slices_per_gpu) +
                                           " its slices were");
        break;
      }
    }
  }
  for (const auto& [session, why] : orphaned) {
    PreemptReleased(session, "preempted by a config reload while its slices were released: " + why,
                    changes);
  }
  ApplyBindings(now, "a config reload", changes);
  ExpireGraces(now, changes);
  ExpireWaits(now, changes);
  ServeQueue(now, changes);
  return Status::Ok();
}

// --- queries -------------------------------------------------------------------------------

const Lease* PoolState::FindLease(uint64_t session) const {
  auto it = leases_.find(session);
  return it == leases_.end() ? nullptr : &it->second;
}

int PoolState::QueuePosition(uint64_t session) const {
  for (size_t i = 0; i < queue_.size(); ++i) {
    if (queue_[i].request.session != session) continue;
    int position = 1;
    for (size_t j = 0; j < i; ++j) position += queue_[j].request.pool == queue_[i].request.pool;
    return position;
  }
  return 0;
}

PoolSnapshot PoolState::Snapshot(absl::Time now) const {
  PoolSnapshot snapshot;
  for (const Gpu& gpu : gpus_) {
    GpuSnapshot g;
    g.index = gpu.spec.index;
    g.memory = gpu.spec.memory;
    g.pool = gpu.pool;
    g.source = gpu.source;
    if (gpu.source == BindingSource::kSchedule && gpu.schedule >= 0) {
      g.window = config_.schedules[gpu.schedule].window.ToString();
    } else if (gpu.source == BindingSource::kManual) {
      g.window = "manual until " + FormatInstant(gpu.manual_until);
    }
    g.manual_until = gpu.manual_until;
    g.drained = gpu.drained;
    auto pool = config_.pools.find(gpu.pool);
    g.slices_per_gpu = pool != config_.pools.end() ? pool->second.slices_per_gpu : 1;
    g.free_slices = FreeSlices(gpu, g.slices_per_gpu);
    for (const Holding& holding : gpu.holdings) {
      const Lease& lease = leases_.at(holding.session);
      HoldingSnapshot h;
      h.session = lease.session;
      h.pool = lease.pool;
      for (const SliceGrant& s : lease.slices) {
        if (s.gpu == gpu.spec.index) h.slice = s;
      }
      h.since = lease.since;
      h.host = lease.host;
      h.pid = lease.pid;
      h.program = lease.program;
      h.deadline = holding.deadline;
      h.preempting = lease.preempting;
      g.holdings.push_back(std::move(h));
    }
    for (const auto& [session, released] : released_) {
      for (const SliceGrant& s : released.lease.slices) {
        if (s.gpu != gpu.spec.index) continue;
        HoldingSnapshot h;
        h.session = session;
        h.pool = released.lease.pool;
        h.slice = s;
        h.since = released.since;
        h.host = released.lease.host;
        h.pid = released.lease.pid;
        h.program = released.lease.program;
        h.deadline = released.deadline;
        g.released.push_back(std::move(h));
      }
    }
    std::tie(g.next_change, g.next_pool) = NextScheduledChange(gpu, now);
    if (gpu.source == BindingSource::kManual && gpu.manual_until < g.next_change) {
      g.next_change = gpu.manual_until;
      g.next_pool = Scheduled(gpu, gpu.manual_until).pool;
    }
    if (g.next_change < snapshot.next_change) {
      snapshot.next_change = g.next_change;
      snapshot.next_change_gpu = g.index;
      snapshot.next_change_pool = g.next_pool;
    }
    snapshot.gpus.push_back(std::move(g));
  }
  for (const Waiter& waiter : queue_) {
    WaiterSnapshot w;
    w.session = waiter.request.session;
    w.pool = waiter.request.pool;
    w.gpus = waiter.request.gpus;
    w.position = QueuePosition(waiter.request.session);
    w.since = waiter.since;
    w.deadline = waiter.deadline;
    w.host = waiter.request.host;
    w.pid = waiter.request.pid;
    w.program = waiter.request.program;
    snapshot.queue.push_back(std::move(w));
  }
  return snapshot;
}

}  // namespace ferry::pool
