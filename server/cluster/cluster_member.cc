#include "server/cluster/cluster_member.h"

#include <absl/time/clock.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include "common/log.h"

namespace ferry::cluster {

ClusterMember::ClusterMember(std::unique_ptr<etcd::EtcdClient> store, Options options)
    : store_(std::move(store)), options_(std::move(options)) {}

Status ClusterMember::Create(std::unique_ptr<etcd::EtcdClient> store, Options options,
                             std::unique_ptr<ClusterMember>* out) {
  if (store == nullptr) return Status::InvalidArgument("a cluster member needs a store");
  FERRY_RETURN_IF_ERROR(CheckServerName(options.name));
  if (options.advertise.empty()) {
    return Status::InvalidArgument(
        "--advertise HOST:PORT is required in a cluster: where clients that other servers send "
        "here connect");
  }
  std::string prefix;
  FERRY_RETURN_IF_ERROR(NormalizePrefix(options.prefix, &prefix));
  options.prefix = prefix;
  if (options.ttl < absl::Seconds(2)) {
    return Status::InvalidArgument("the cluster lease TTL must be at least 2s");
  }
  out->reset(new ClusterMember(std::move(store), std::move(options)));
  return Status::Ok();
}

ClusterMember::~ClusterMember() { Leave(); }

Status ClusterMember::Join(ServerRecord self, std::function<std::vector<GpuState>()> gpu_states) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (joined_ || stopping_) return Status::InvalidArgument("already joined, or left");
    self.name = options_.name;
    self.advertise = options_.advertise;
    self_ = std::move(self);
    gpu_states_ = std::move(gpu_states);
    joined_ = true;
  }
  Status first = Register();
  NoteStoreStatus(first);
  std::lock_guard<std::mutex> lock(mutex_);
  last_renewal_ = absl::Now();
  keeper_ = std::thread([this] { KeeperLoop(); });
  return first;
}

void ClusterMember::GpuStatesChanged() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    states_dirty_ = true;
  }
  wake_.notify_all();
}

bool ClusterMember::registered() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return server_lease_ != 0;
}

void ClusterMember::NoteStoreStatus(const Status& status) {
  std::lock_guard<std::mutex> lock(mutex_);
  const std::string problem = status.ok() ? "" : status.message();
  if (problem == store_problem_) return;
  if (problem.empty()) {
    FERRY_LOG(kInfo) << "cluster: server " << options_.name << " is registered in etcd at "
                     << store_->Describe() << " (prefix " << options_.prefix << ")";
  } else {
    FERRY_LOG(kWarning) << "cluster: " << problem
                        << "; running sessions go on, new borrows fail until this is mended";
  }
  store_problem_ = problem;
}

Status ClusterMember::Register() {
  ServerRecord self;
  std::function<std::vector<GpuState>()> gpu_states;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    self = self_;
    gpu_states = gpu_states_;
    states_dirty_ = false;  // what is read below goes in with the registration
  }
  int64_t lease = 0;
  Status status = store_->GrantLease(options_.ttl, &lease);
  if (!status.ok()) return Status::Overloaded("cannot register in the cluster: " + status.message());
  const std::string key = ServerKey(options_.prefix, options_.name);
  std::vector<etcd::TxnOp> puts{etcd::TxnOp::Put(key, ToJson(self), lease)};
  for (GpuState& state : gpu_states()) {
    state.server = options_.name;
    puts.push_back(etcd::TxnOp::Put(GpuStateKey(options_.prefix, options_.name, state.index),
                                    ToJson(state), lease));
  }
  etcd::TxnResult result;
  status = store_->Txn({etcd::Compare::Absent(key)}, puts, {etcd::TxnOp::Range(key, false)},
                       &result);
  if (status.ok() && !result.succeeded) {
    std::string holder = "another ferryd";
    ServerRecord other;
    if (!result.ranges.empty() && !result.ranges[0].empty() &&
        FromJson(result.ranges[0][0].value, &other).ok()) {
      holder = "ferryd pid " + std::to_string(other.pid) + " at " + other.advertise;
    }
    status = Status::Overloaded("the cluster already has a server named " + options_.name + " (" +
                                holder +
                                "); this one joins once that one's lease is gone (at most " +
                                absl::FormatDuration(options_.ttl) + " after it stopped)");
  }
  if (!status.ok()) {
    (void)store_->RevokeLease(lease);
    std::lock_guard<std::mutex> lock(mutex_);
    states_dirty_ = true;
    return status.code() == StatusCode::kOverloaded
               ? status
               : Status::Overloaded("cannot register in the cluster: " + status.message());
  }
  std::lock_guard<std::mutex> lock(mutex_);
  server_lease_ = lease;
  return Status::Ok();
}

Status ClusterMember::PublishGpuStates(int64_t lease) {
  std::function<std::vector<GpuState>()> gpu_states;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    gpu_states = gpu_states_;
    states_dirty_ = false;
  }
  std::vector<etcd::TxnOp> puts;
  for (GpuState& state : gpu_states()) {
    state.server = options_.name;
    puts.push_back(etcd::TxnOp::Put(GpuStateKey(options_.prefix, options_.name, state.index),
                                    ToJson(state), lease));
  }
  etcd::TxnResult result;
  Status status = store_->Txn({}, puts, {}, &result);
  if (!status.ok()) {
    std::lock_guard<std::mutex> lock(mutex_);
    states_dirty_ = true;
  }
  return status;
}

Status ClusterMember::PutClaims(int64_t lease, const std::vector<ClaimRecord>& claims,
                                const std::string& ticket, TicketUse use) {
  std::vector<etcd::Compare> compares;
  std::vector<etcd::TxnOp> puts, ranges;
  for (const ClaimRecord& claim : claims) {
    const std::string key =
        ClaimKey(options_.prefix, claim.server, claim.gpu, claim.slices_per_gpu, claim.slice);
    compares.push_back(etcd::Compare::Absent(key));
    puts.push_back(etcd::TxnOp::Put(key, ToJson(claim), lease));
    ranges.push_back(etcd::TxnOp::Range(key, false));
  }
  if (!ticket.empty()) {
    // The borrow's place in the queue is spent by the same transaction —
    // or, for a part of a split borrow, only required to be there still.
    compares.push_back(etcd::Compare{etcd::Compare::Target::kVersion,
                                     etcd::Compare::Op::kGreater, ticket, 0, {}});
    if (use == TicketUse::kSpend) puts.push_back(etcd::TxnOp::Delete(ticket));
    ranges.push_back(etcd::TxnOp::Range(ticket, false));
  }
  etcd::TxnResult result;
  Status status = store_->Txn(compares, puts, ranges, &result);
  if (!status.ok()) {
    NoteStoreStatus(status);
    return Status::Disconnected("cannot claim slices in the cluster: " + status.message());
  }
  if (result.succeeded) return Status::Ok();
  if (!ticket.empty() && result.ranges.size() == claims.size() + 1 &&
      result.ranges.back().empty()) {
    return Status::Overloaded(
        "this borrow's place in the cluster's queue expired before it got here; try again");
  }
  for (size_t i = 0; i < result.ranges.size() && i < claims.size(); ++i) {
    if (result.ranges[i].empty()) continue;
    ClaimRecord holder;
    std::string who = "another session";
    if (FromJson(result.ranges[i][0].value, &holder).ok()) {
      who = "session " + std::to_string(holder.session) + " (" + holder.program + " pid " +
            std::to_string(holder.pid) + " on " + holder.host + ")";
    }
    const ClaimRecord& claim = claims[i];
    return Status::Overloaded("slice " + std::to_string(claim.slice + 1) + "/" +
                              std::to_string(claim.slices_per_gpu) + " of GPU " + claim.server +
                              ":" + std::to_string(claim.gpu) +
                              " is claimed in the cluster already, by " + who);
  }
  return Status::Overloaded("a slice is claimed in the cluster already");
}

Status ClusterMember::StoreProblem() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (server_lease_ != 0 && store_problem_.empty()) return Status::Ok();
  return Status::Disconnected(
      "ferryd is not registered in the cluster" +
      (store_problem_.empty() ? std::string(" yet") : " (" + store_problem_ + ")") +
      "; new borrows fail until it is");
}

Status ClusterMember::Claim(uint64_t session, std::vector<ClaimRecord> claims,
                            const std::string& ticket, TicketUse use) {
  // While etcd is away every claim would wait out the request timeout:
  // fail at once instead (the keeper notices when it is back).
  FERRY_RETURN_IF_ERROR(StoreProblem());
  for (ClaimRecord& claim : claims) {
    claim.server = options_.name;
    claim.session = session;
  }
  int64_t lease = 0;
  Status status = store_->GrantLease(options_.ttl, &lease);
  if (!status.ok()) {
    NoteStoreStatus(status);
    return Status::Disconnected("cannot claim slices in the cluster: " + status.message());
  }
  status = PutClaims(lease, claims, ticket, use);
  if (!status.ok()) {
    (void)store_->RevokeLease(lease);
    return status;
  }
  int64_t spent_waiter_lease = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!stopping_) {
      sessions_[session] = SessionClaims{lease, std::move(claims)};
      lease = 0;
    }
    if (auto it = waiters_.find(session); it != waiters_.end()) {
      // Left for the next part: not renewed here any more, not revoked
      // (the next part's server adopts it, or it expires within the TTL).
      if (use == TicketUse::kSpend) spent_waiter_lease = it->second.lease;
      waiters_.erase(it);
    }
  }
  if (spent_waiter_lease != 0) (void)store_->RevokeLease(spent_waiter_lease);
  if (lease != 0) {
    // Leave ran meanwhile: nobody would renew or revoke it.
    (void)store_->RevokeLease(lease);
    return Status::Disconnected("ferryd is leaving the cluster");
  }
  return Status::Ok();
}

void ClusterMember::Release(uint64_t session) {
  // Not while the keeper claims this session's slices again (Tick).
  std::lock_guard<std::mutex> io_lock(session_io_mutex_);
  int64_t lease = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = sessions_.find(session);
    if (it == sessions_.end()) return;
    lease = it->second.lease;
    sessions_.erase(it);
  }
  Status status = store_->RevokeLease(lease);
  if (!status.ok()) {
    // Nobody renews it any more: its claims go when it expires.
    FERRY_LOG(kWarning) << "cluster: session " << session << "'s claims stay until their lease ("
                        << absl::FormatDuration(options_.ttl) << ") expires: " << status.message();
  }
}

Status ClusterMember::Read(ClusterSnapshot* out, bool with_claims) {
  return ReadCluster(*store_, options_.prefix, out, with_claims);
}

Status ClusterMember::ReadQueue(const std::string& pool, std::vector<QueueEntry>* oldest_first) {
  std::vector<etcd::KeyValue> kvs;
  FERRY_RETURN_IF_ERROR(store_->GetPrefix(QueuePrefix(options_.prefix, pool), &kvs));
  std::vector<QueueEntry> entries;
  for (const etcd::KeyValue& kv : kvs) {
    QueueEntry entry;
    if (!QueueEntryFrom(kv, &entry).ok()) {
      FERRY_LOG(kWarning) << "cluster: skipping queue entry " << kv.key << ": not a waiter";
      continue;
    }
    entries.push_back(std::move(entry));
  }
  SortOldestFirst(&entries);
  *oldest_first = std::move(entries);
  return Status::Ok();
}

Status ClusterMember::Enqueue(uint64_t session, WaiterRecord waiter, std::string* ticket) {
  FERRY_RETURN_IF_ERROR(StoreProblem());
  waiter.server = options_.name;
  waiter.session = session;
  // Unguessable: the ticket is what lets a client take this place, here or
  // on the server it is sent to.
  std::random_device random;
  char nonce[17];
  std::snprintf(nonce, sizeof nonce, "%08x%08x", random(), random());
  const std::string key = QueuePrefix(options_.prefix, waiter.pool) + options_.name + "-" +
                          std::to_string(session) + "-" + nonce;
  int64_t lease = 0;
  Status status = store_->GrantLease(options_.ttl, &lease);
  etcd::TxnResult result;
  if (status.ok()) {
    status = store_->Txn({etcd::Compare::Absent(key)},
                         {etcd::TxnOp::Put(key, ToJson(waiter), lease)}, {}, &result);
  }
  if (status.ok() && !result.succeeded) status = Status::Internal("queue entry " + key + " exists");
  if (!status.ok()) {
    if (lease != 0) (void)store_->RevokeLease(lease);
    NoteStoreStatus(status);
    return Status::Disconnected("cannot queue in the cluster: " + status.message());
  }
  std::lock_guard<std::mutex> lock(mutex_);
  waiters_[session] = Waiting{key, lease};
  *ticket = key;
  return Status::Ok();
}

Status ClusterMember::AdoptTicket(uint64_t session, const std::string& pool,
                                  const std::string& ticket) {
  const std::string queue = QueuePrefix(options_.prefix, pool);
  if (ticket.size() <= queue.size() || ticket.rfind(queue, 0) != 0 ||
      ticket.find('/', queue.size()) != std::string::npos) {
    return Status::InvalidArgument("not a ticket of pool " + pool + "'s queue");
  }
  std::optional<etcd::KeyValue> kv;
  Status status = store_->Get(ticket, &kv);
  if (!status.ok()) return Status::Disconnected("cannot read the queue: " + status.message());
  if (!kv.has_value() || kv->lease == 0) {
    return Status::NotFound("the borrow's place in the cluster's queue is gone");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  waiters_[session] = Waiting{ticket, kv->lease};
  return Status::Ok();
}

void ClusterMember::HandOffTicket(uint64_t session) {
  std::lock_guard<std::mutex> lock(mutex_);
  waiters_.erase(session);  // not renewed here: the next server adopts it, or it expires
}

void ClusterMember::Dequeue(uint64_t session) {
  int64_t lease = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = waiters_.find(session);
    if (it == waiters_.end()) return;
    lease = it->second.lease;
    waiters_.erase(it);
  }
  // Its only key is the queue entry (the lease may be another server's,
  // adopted: then it is that entry's alone too).
  if (!store_->RevokeLease(lease).ok()) {
    FERRY_LOG(kWarning) << "cluster: session " << session
                        << "'s queue entry stays until its lease expires";
  }
}

Status ClusterMember::ReadPoolConfig(std::optional<std::string>* text, int64_t* revision) {
  std::optional<etcd::KeyValue> kv;
  int64_t read_at = 0;
  FERRY_RETURN_IF_ERROR(store_->Get(PoolConfigKey(options_.prefix), &kv, &read_at));
  *text = kv.has_value() ? std::optional<std::string>(kv->value) : std::nullopt;
  // The revision of the version read; for "none", the store's revision
  // then, so a config stored later is newer.
  *revision = kv.has_value() ? kv->mod_revision : read_at;
  return Status::Ok();
}

void ClusterMember::FollowPoolConfig(
    int64_t revision,
    std::function<void(const std::optional<std::string>&, int64_t)> on_change) {
  {
    std::lock_guard<std::mutex> lock(config_mutex_);
    config_revision_ = revision;
    on_config_ = std::move(on_change);
  }
  config_watch_ended_ = true;  // the keeper starts the watch
  following_config_ = true;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    config_attention_ = true;
  }
  wake_.notify_all();
}

void ClusterMember::DeliverPoolConfig(const std::optional<std::string>& text, int64_t revision) {
  std::lock_guard<std::mutex> lock(config_mutex_);
  if (revision <= config_revision_) return;
  config_revision_ = revision;
  on_config_(text, revision);
}

void ClusterMember::KeepFollowingPoolConfig() {
  if (!following_config_ || !config_watch_ended_) return;
  config_watch_.reset();  // ended: its thread is done with callbacks
  // What changed while nobody watched (etcd away, a compacted history).
  std::optional<std::string> text;
  int64_t revision = 0;
  if (!ReadPoolConfig(&text, &revision).ok()) return;  // the next round tries again
  DeliverPoolConfig(text, revision);
  config_watch_ended_ = false;
  const std::string key = PoolConfigKey(options_.prefix);
  config_watch_ = store_->WatchPrefix(
      key, revision + 1,
      [this, key](const std::vector<etcd::WatchEvent>& events) {
        for (const etcd::WatchEvent& event : events) {
          if (event.kv.key != key) continue;  // a longer key with the same start
          if (event.type == etcd::WatchEvent::Type::kDelete) {
            DeliverPoolConfig(std::nullopt, event.kv.mod_revision);
          } else {
            DeliverPoolConfig(event.kv.value, event.kv.mod_revision);
          }
        }
      },
      [this](const Status& why) {
        FERRY_LOG(kInfo) << "cluster: the pool config's watch ended (" << why.message()
                         << "); following it again once etcd answers";
        config_watch_ended_ = true;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          config_attention_ = true;
        }
        wake_.notify_all();
      });
}

std::string ClusterMember::FindRoom(const ClusterSnapshot& snapshot, const std::string& pool,
                                    int gpus, std::string* advertise) const {
  const std::vector<ServerRoom> rooms = RoomInPool(snapshot, pool);
  const ServerRoom* best = nullptr;
  for (const ServerRoom& room : rooms) {
    if (room.server == options_.name || room.fitting < gpus) continue;
    if (best == nullptr || room.free_slices > best->free_slices) best = &room;
  }
  if (best == nullptr) return "";
  *advertise = best->advertise;
  return best->server;
}

void ClusterMember::Leave() {
  std::vector<int64_t> leases;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (keeper_.joinable()) keeper_.join();
  config_watch_.reset();  // joins its thread: no delivery after Leave
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [session, held] : sessions_) leases.push_back(held.lease);
    sessions_.clear();
    for (const auto& [session, waiting] : waiters_) leases.push_back(waiting.lease);
    waiters_.clear();
    if (server_lease_ != 0) leases.push_back(server_lease_);
    server_lease_ = 0;
  }
  for (int64_t lease : leases) (void)store_->RevokeLease(lease);
}

void ClusterMember::KeeperLoop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    lock.unlock();
    Tick();
    lock.lock();
    const absl::Duration period = store_problem_.empty() ? options_.ttl / 3 : options_.retry;
    // Woken early only for work that can be done now: with etcd away a
    // change of the pool waits for the next round (no spinning).
    wake_.wait_for(lock, absl::ToChronoNanoseconds(period),
                   [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
                     return stopping_ || config_attention_ ||
                            (states_dirty_ && server_lease_ != 0 && store_problem_.empty());
                   });
  }
}

void ClusterMember::Tick() {
  int64_t server_lease = 0;
  bool dirty = false;
  bool renew = false;
  std::map<uint64_t, SessionClaims> sessions;
  std::map<uint64_t, Waiting> waiters;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    config_attention_ = false;  // this round looks at the pool config's watch
    server_lease = server_lease_;
    dirty = states_dirty_;
    // Leases are renewed every third of their TTL, however often the keeper
    // wakes to publish (each renewal is a request per lease).
    const absl::Time now = absl::Now();
    renew = server_lease == 0 || !store_problem_.empty() || now - last_renewal_ >= options_.ttl / 3;
    if (renew) {
      last_renewal_ = now;
      sessions = sessions_;
      waiters = waiters_;
    }
  }

  Status status = Status::Ok();
  if (server_lease == 0) {
    status = Register();
  } else if (!renew) {
    if (dirty) status = PublishGpuStates(server_lease);
  } else {
    status = store_->KeepAliveOnce(server_lease);
    if (status.code() == StatusCode::kNotFound) {
      // Expired while etcd was away: everything of ours is gone; again.
      FERRY_LOG(kWarning) << "cluster: the server's lease expired; registering again";
      {
        std::lock_guard<std::mutex> lock(mutex_);
        server_lease_ = 0;
      }
      status = Register();
    } else if (status.ok() && dirty) {
      status = PublishGpuStates(server_lease);
    }
  }
  NoteStoreStatus(status);
  if (!status.ok()) return;
  KeepFollowingPoolConfig();

  for (const auto& [session, waiting] : waiters) {
    if (store_->KeepAliveOnce(waiting.lease).code() != StatusCode::kNotFound) continue;
    // Its place expired (etcd was away): the wait notices and queues again.
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = waiters_.find(session);
    if (it != waiters_.end() && it->second.lease == waiting.lease) waiters_.erase(it);
  }
  for (auto& [session, held] : sessions) {
    Status renewed = store_->KeepAliveOnce(held.lease);
    if (renewed.code() != StatusCode::kNotFound) continue;
    // The claims expired while etcd was away; the session still runs here,
    // so they are claimed again — unless it ends meanwhile (Release waits).
    std::lock_guard<std::mutex> io_lock(session_io_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = sessions_.find(session);
      if (it == sessions_.end() || it->second.lease != held.lease) continue;
    }
    int64_t lease = 0;
    Status again = store_->GrantLease(options_.ttl, &lease);
    if (again.ok()) again = PutClaims(lease, held.claims, "");
    if (!again.ok()) {
      if (lease != 0) (void)store_->RevokeLease(lease);
      FERRY_LOG(kWarning) << "cluster: session " << session
                          << " lost its claims and cannot claim them again: " << again.message();
      continue;
    }
    // Still there: Release waits for session_io_mutex_, Leave for this thread.
    std::lock_guard<std::mutex> lock(mutex_);
    sessions_[session].lease = lease;
  }
}

}  // namespace ferry::cluster
