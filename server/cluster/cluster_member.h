// ClusterMember: one ferryd's part in a cluster pool kept in etcd (the key
// layout is in cluster_records.h).
//
// Membership: Join registers the server record and its GPUs' states under a
// lease of Options::ttl that a keeper thread renews every ttl/3. A ferryd
// that dies stops renewing: its keys vanish within the TTL. While etcd
// cannot be reached the keeper tries again every Options::retry; a lease
// that expired meanwhile is replaced and everything written again, so
// ferryd recovers by itself. Another live ferryd registered under the same
// name keeps this one out (logged) until its lease is gone.
//
// Claims: every borrow granted here is claimed in etcd before its session
// starts — one transaction that creates each slice's claim key only if it
// does not exist, all bound to a lease of the session's own — so no two
// servers ever hand out the same slice, and a session whose server dies
// loses its claims with the lease. Release (the session ended) revokes the
// lease. Session leases are renewed by the keeper too; one that expired
// while etcd was away is claimed again when it is back.
//
// Thread-safety: every method is safe from any thread. The GPU-state source
// given to Join runs on the keeper thread (and once in Join, on its caller's).
#pragma once

#include <absl/base/thread_annotations.h>
#include <absl/time/time.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "server/cluster/cluster_placement.h"
#include "server/cluster/cluster_records.h"
#include "server/etcd/etcd_client.h"

namespace ferry::cluster {

class ClusterMember {
 public:
  struct Options {
    std::string name;       // CheckServerName
    std::string advertise;  // HOST:PORT for clients sent here by other servers
    std::map<std::string, std::string> labels;
    std::string prefix = "/ferry/";  // ends with '/'
    absl::Duration ttl = absl::Seconds(10);
    absl::Duration retry = absl::Seconds(1);
  };

  // `store` is owned. Checks the options (InvalidArgument naming what is wrong).
  static Status Create(std::unique_ptr<etcd::EtcdClient> store, Options options,
                       std::unique_ptr<ClusterMember>* out);
  ~ClusterMember();  // Leave()s
  ClusterMember(const ClusterMember&) = delete;
  ClusterMember& operator=(const ClusterMember&) = delete;

  // Starts membership with `self` (name and advertise are the options') and
  // `gpu_states`, which reports this server's GPUs as the pool binds them
  // now. Returns the first registration's outcome, for the log: when it
  // fails the keeper goes on trying.
  Status Join(ServerRecord self, std::function<std::vector<GpuState>()> gpu_states);
  // The pool changed: the keeper publishes gpu_states() again, promptly.
  void GpuStatesChanged();

  // What a claim does with the queue ticket it presents.
  enum class TicketUse {
    kSpend,  // the borrow is whole: the entry is deleted and its lease revoked
    // One part of a borrow split across servers, more parts follow: the
    // entry and its lease stay, no longer renewed here (as HandOffTicket),
    // for the next part's server to adopt.
    kLeaveForNextPart,
  };
  // Claims `claims` (server = this one) for `session` (see above); with a
  // queue `ticket`, only while that entry exists, spending it in the same
  // transaction (or leaving it, `use`). Disconnected when etcd cannot be
  // reached (at once while the keeper knows it is away) or this server is
  // not registered; Overloaded when a slice is claimed already or the
  // ticket is gone.
  Status Claim(uint64_t session, std::vector<ClaimRecord> claims, const std::string& ticket = "",
               TicketUse use = TicketUse::kSpend);
  // The session ended: its claims go — revoked before this returns when
  // etcd answers (within the store's request timeout), else when their
  // lease expires. A session without claims is ignored.
  void Release(uint64_t session);

  // The cluster as etcd holds it now (without the claims: servers and GPU
  // states only, as placement needs).
  Status Read(ClusterSnapshot* out, bool with_claims = true);

  // The cluster's FIFO borrow queue for `pool`, oldest first (P queue/POOL/).
  // A borrow whose pool has waiters may take a slice only when it holds the
  // oldest entry's ticket: nobody overtakes an earlier waiter, whichever
  // server each came through.
  Status ReadQueue(const std::string& pool, std::vector<QueueEntry>* oldest_first);
  // Queues `session`'s borrow: a new entry under a lease renewed here;
  // `*ticket` is its key.
  Status Enqueue(uint64_t session, WaiterRecord waiter, std::string* ticket);
  // A client sent here with its `ticket` (of `pool`'s queue): its entry is
  // renewed here from now on. NotFound when it is gone, InvalidArgument when
  // it is not such a ticket.
  Status AdoptTicket(uint64_t session, const std::string& pool, const std::string& ticket);
  // The client is sent on with its ticket: no longer renewed here (the next
  // server adopts it, or it expires within the TTL).
  void HandOffTicket(uint64_t session);
  // The wait ended here (deadline, client gone): the entry goes now.
  void Dequeue(uint64_t session);

  // The cluster's pool config (`ferryctl apply`): its text (nullopt when
  // none is stored) and the revision it was stored at.
  Status ReadPoolConfig(std::optional<std::string>* text, int64_t* revision);
  // Calls `on_change` with every later version of the pool config (nullopt:
  // it was deleted), starting after `revision`: from a watch, and — after
  // etcd was away — from a fresh read once it is back, so no change is
  // missed. Runs on the watch's or the keeper's thread, one call at a time.
  void FollowPoolConfig(int64_t revision,
                        std::function<void(const std::optional<std::string>& text,
                                           int64_t revision)> on_change);
  // Another server of `snapshot` whose published GPUs of `pool` have a free
  // slice on at least `gpus` of them (RoomInPool), the one with the most
  // free slices first; "" when none. Its advertised address goes in
  // `*advertise`. When none has room for all, SplitBorrow
  // (cluster_placement.h) says how several servers, this one included, can
  // share the borrow.
  std::string FindRoom(const ClusterSnapshot& snapshot, const std::string& pool, int gpus,
                       std::string* advertise) const;

  // Stops the keeper and revokes the server's and every session's lease
  // (their keys vanish now). Idempotent.
  void Leave();

  bool registered() const;
  const Options& options() const { return options_; }
  etcd::EtcdClient& store() { return *store_; }

 private:
  struct SessionClaims {
    int64_t lease = 0;
    std::vector<ClaimRecord> claims;
  };
  struct Waiting {
    std::string ticket;
    int64_t lease = 0;
  };

  ClusterMember(std::unique_ptr<etcd::EtcdClient> store, Options options);
  void KeeperLoop();
  // One round of the keeper: registration or renewal, session leases,
  // GPU states, revocations. Runs without mutex_.
  void Tick();
  Status Register();
  Status PublishGpuStates(int64_t lease);
  // Creates the claim keys under `lease` while `ticket` (when given)
  // exists, deleting it with kSpend; Overloaded naming a slice that is
  // taken or saying the ticket is gone.
  Status PutClaims(int64_t lease, const std::vector<ClaimRecord>& claims, const std::string& ticket,
                   TicketUse use = TicketUse::kSpend);
  // OK while registered and etcd answers; else Disconnected saying why.
  Status StoreProblem() const;
  // Logs `status` as the store's state when it changes (not on every retry).
  void NoteStoreStatus(const Status& status);
  // Keeper: (re)starts the pool config's watch when it is wanted and not
  // running, first delivering a version it may have missed.
  void KeepFollowingPoolConfig();
  // Delivers a version of the pool config newer than the last delivered.
  void DeliverPoolConfig(const std::optional<std::string>& text, int64_t revision);

  const std::unique_ptr<etcd::EtcdClient> store_;
  const Options options_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  ServerRecord self_ ABSL_GUARDED_BY(mutex_);
  std::function<std::vector<GpuState>()> gpu_states_ ABSL_GUARDED_BY(mutex_);
  int64_t server_lease_ ABSL_GUARDED_BY(mutex_) = 0;  // 0: not registered
  bool states_dirty_ ABSL_GUARDED_BY(mutex_) = true;
  std::map<uint64_t, SessionClaims> sessions_ ABSL_GUARDED_BY(mutex_);
  std::map<uint64_t, Waiting> waiters_ ABSL_GUARDED_BY(mutex_);  // queue entries renewed here
  absl::Time last_renewal_ ABSL_GUARDED_BY(mutex_);
  // Held by Release and by the keeper while it claims a session's slices
  // again, so an ending session is never claimed anew. Taken before mutex_.
  std::mutex session_io_mutex_;
  std::string store_problem_ ABSL_GUARDED_BY(mutex_);    // "" while etcd answers
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  bool joined_ ABSL_GUARDED_BY(mutex_) = false;
  // The pool config's followers: the callback, the last revision delivered,
  // and its watch (replaced by the keeper when it ended).
  std::mutex config_mutex_;  // one delivery at a time; taken before mutex_
  std::function<void(const std::optional<std::string>&, int64_t)> on_config_;
  int64_t config_revision_ ABSL_GUARDED_BY(config_mutex_) = 0;
  std::unique_ptr<etcd::Watch> config_watch_;  // keeper thread (and Leave, after it)
  std::atomic<bool> config_watch_ended_{false};
  std::atomic<bool> following_config_{false};
  // The watch ended or following began: the keeper looks at once (cleared
  // by each round, so a watch that cannot restart never makes it spin).
  bool config_attention_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread keeper_;
};

}  // namespace ferry::cluster
