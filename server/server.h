// Server: ferryd's listeners and its table of live sessions.
//
// Each accepted connection gets a thread that reads the Hello frame and then
// either runs a client Session (role client) or answers ferryctl's requests
// (role control). Stop closes the listeners, ends every session (each frees
// its resources) and joins all threads.
//
// Without a pool every session gets every served device, whole. With one
// (EnablePool), a client's handshake borrows slices first — waiting in the
// queue if it asked to — and gives them back when its session ends; a
// preempted session loses its devices at once (Session::Preempt).
//
// With a token file (SetTokenFile) every Hello must carry one of its tokens:
// a peer without one gets a single refusal (permissionDenied) and nothing
// else; a client borrows only from its token's pools, and ferryctl's
// mutating requests need an admin token.
//
// With session workers (UseSessionWorkers; ferryd's default) each client
// session runs in a process of its own (server/session_worker.h): this
// process keeps the listeners, handshakes, tokens, the pool and ferryctl,
// and hands each borrowed client to its worker.
//
// Thread-safety: every public method is safe from any thread.
#pragma once

#include <absl/base/thread_annotations.h>
#include <asio.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/status.h"
#include "common/tls_transport.h"
#include "server/auth/tokens.h"
#include "server/backend/api/gpu_backend.h"
#include "server/cluster/cluster_member.h"
#include "server/pool/clock.h"
#include "server/pool/config.h"
#include "server/pool_service.h"
#include "server/server_metrics.h"
#include "server/session.h"
#include "server/session_worker.h"

namespace ferry::server {

// A GPU ferryd serves: its index (the [[gpu]] index, as operators and
// ferryctl name it), the backend device behind it, and its memory.
struct ServedGpu {
  int index = 0;
  int backend_device = 0;
  uint64_t memory = 0;
};

// What ferryd lets peers hold (ferryd flags and [server] in the config).
struct ServerLimits {
  // A connection that has not sent its whole Hello by then is closed.
  std::chrono::milliseconds handshake_timeout{5000};
  // Connections at once (handshakes, sessions and ferryctl's); the next one
  // is refused with a HelloReply that says so.
  int max_connections = 512;
  // Client sessions at once; the next client is refused the same way.
  int max_sessions = 256;
  // Per session: bytes of call frames read but not yet executed
  // (Session::SetBufferLimit).
  uint64_t session_buffer_bytes = Session::kDefaultBufferLimit;
};

// Who may connect to ferryd's unix: sockets.
struct UnixAccess {
  std::optional<uint32_t> group;     // the sockets' group (mode 0660); unset: ferryd's
  std::vector<uint32_t> allow_uids;  // with either list non-empty, a peer whose uid is
  std::vector<uint32_t> allow_gids;  // in neither (SO_PEERCRED) is refused
};

// A group name or number as a gid; NotFound naming it otherwise.
Status LookUpGroup(const std::string& group, uint32_t* gid);

class Server {
 public:
  // `backend` must outlive the server. Sessions share a module image cache of
  // `module_cache_bytes` (0: none).
  explicit Server(backend::GpuBackend& backend,
                  uint64_t module_cache_bytes = kDefaultModuleCacheBytes);
  static constexpr uint64_t kDefaultModuleCacheBytes = 1ull << 30;
  ~Server();  // Stop()s

  // Before Start. Without a pool: sessions see these GPUs, whole, in this
  // order (default: every backend device).
  void ServeGpus(std::vector<ServedGpu> gpus);
  // Before Start (default: ServerLimits{}).
  void SetLimits(const ServerLimits& limits) { limits_ = limits; }
  // Before Start: whether sessions take their clients' RDMA offers
  // (Session::SetRdma; default: they refuse them).
  void SetRdma(RdmaServing rdma) { rdma_ = std::move(rdma); }
  // Before Start. Clients borrow slices of the served GPUs as `config` says
  // (`config.pooling()` must hold). `clock` (and `test_clock`, the same
  // object when ferryd runs --test-fake-clock) must outlive the server.
  Status EnablePool(const pool::Config& config, pool::Clock& clock,
                    pool::FakeClock* test_clock = nullptr);
  // Before EnablePool: this ferryd is a member of a cluster pool
  // (server/cluster/). Every borrow is claimed in etcd before its session
  // starts (ClusterBorrow) and released when it ends (the pool's release
  // hook), the GPUs' bindings are published, and
  // a client this server has no room for is sent to a server that has.
  void SetCluster(std::unique_ptr<cluster::ClusterMember> member) { cluster_ = std::move(member); }
  // In a cluster, before EnablePool: the cluster's pool config as read at
  // start (`ferryctl apply`; nullopt when none is stored: the --config
  // file's pools apply). Its pools, schedules and defaults replace the
  // file's; schedules apply to this server's GPUs as they name them.
  void SetClusterPools(std::optional<pool::Config> pools);
  // After JoinCluster: every later version of the cluster's pool config
  // (from `revision` on) is applied as a reload applies a file; one that
  // this server cannot take is logged and the pools stay as they were.
  void FollowClusterPools(int64_t revision);
  // After EnablePool (with SetCluster): registers `self` in the cluster and
  // keeps it registered; returns the first attempt's outcome (for the log —
  // the member keeps trying when it fails).
  Status JoinCluster(cluster::ServerRecord self);
  // Before Start. The config file Reload re-reads; `loaded` is what it held
  // at start (settings that need a restart are compared against it).
  void SetConfigFile(const std::string& path, const pool::Config& loaded);
  // Before Start: every peer must present a token of the file at `path`
  // (server/auth/tokens.h); Reload re-reads it. Fails when it does not load.
  Status SetTokenFile(const std::string& path);
  // Before Start: every TCP listener speaks TLS with this certificate chain
  // and key (PEM files). Fails when they do not load or do not match.
  Status SetTls(const std::string& cert_file, const std::string& key_file);
  // Before Start: every client session runs in a worker process started as
  // `command` (argv; SessionWorker::Spawn appends the link). Without it
  // (tests), sessions run in this process.
  // `books`: device memory books every worker shares with this process (the
  // host backend's shared ledger); empty: none.
  void UseSessionWorkers(std::vector<std::string> command, WorkerBooks books = {}) {
    worker_command_ = std::move(command);
    worker_books_ = std::move(books);
  }
  // Before Start: how sessions share a GPU's compute (kMps needs session
  // workers: MPS settings are a process's environment).
  void SetComputeSharing(ComputeSharing sharing) { sharing_ = sharing; }
  // Before Listen: who may use the unix: sockets, and their group.
  void SetUnixAccess(const UnixAccess& access) { unix_access_ = access; }
  // SIGHUP and ferryctl reload: re-reads the token file and the config file. A file that does
  // not parse, or that changes what needs a restart, is rejected and the old
  // config stays (the caller logs why); `summary` says what happened.
  Status Reload(std::string* summary);

  // Binds and listens on "host:port" (TCP; port 0 picks one) or
  // "unix:/path" (clients on this host, over shared memory; a stale socket
  // file at the path is replaced). Call before Start.
  Status Listen(const std::string& address);
  // The bound "host:port" of each listener, in Listen order.
  std::vector<std::string> BoundAddresses() const;

  // Starts accepting connections on a background thread.
  void Start();
  void Stop();

  std::vector<SessionInfo> Sessions() const;
  ModuleCacheStats module_cache_stats() const;

  // /metrics (server_metrics.cc). After SetTokenFile, SetTls, SetCluster
  // and EnablePool (scrapes may come at once), before Start or after it, and
  // not after Stop: serves the figures of MetricsText over HTTP at `options.listen`,
  // with TLS when SetTls was called, and only to requests with a token of
  // the token file (any token; reloads count) when SetTokenFile was.
  Status ServeMetrics(const MetricsOptions& options);
  // The metrics listener's bound "host:port" ("" without ServeMetrics).
  std::string MetricsAddress() const;
  // Every series, now, in Prometheus's text format.
  std::string MetricsText() const;

 private:
  void StartAccept(asio::ip::tcp::acceptor& acceptor);
  void StartAcceptUnix(asio::local::stream_protocol::acceptor& acceptor);
  // Registers a new connection and serves it on a thread of its own;
  // `make_transport` runs on that thread.
  // `make_transport` may set its Status argument: the peer is refused with it
  // once its Hello has come (a plain client on a TLS listener).
  using MakeTransport = std::function<Status(std::unique_ptr<Transport>*, Status* refusal)>;
  void ServeOnNewThread(MakeTransport make_transport, std::string peer);
  void ServeConnection(uint64_t id, std::unique_ptr<Transport> transport, bool over_cap,
                       const Status& refusal);
  // Whether a unix: peer with these credentials may connect; "" if so,
  // else why not (for the log).
  std::string UnixPeerRefusal(uint32_t uid, uint32_t gid) const;
  // Answers a handshake with `refusal` (a HelloReply), for a peer that is
  // refused before it gets a session.
  static void Refuse(Transport& transport, const Status& refusal);
  // Borrows the client's devices and runs its session until it ends (the
  // caller's thread); frees it and returns its slices.
  // `hello_words` is the Hello frame's message, for a worker.
  // A session waiting for its client after another ferryd handed it over
  // (ServeMigration): its id here (the pool lease's), its grant, and the
  // offer it is made from.
  struct PendingArrival {
    uint64_t session = 0;
    SessionGrant grant;
    // The MigrationOffer's words (its first `offer_bytes`), then its bulk,
    // as read from the other ferryd: sealed, so a worker maps the same bytes.
    std::shared_ptr<const SealedImage> offer;
    uint64_t offer_bytes = 0;
    // In process: its device addresses, kept free until it arrives
    // (GpuBackend::HoldAddresses).
    std::shared_ptr<void> address_hold;
    std::string source;  // the source ferryd's session, for logs
    // The token its client authenticated with there: only that token's
    // holder may take it here (when this ferryd has a token file).
    std::string token_name;
    bool taken = false;  // its client came (TakeArrival); under mutex_
  };
  // With `arrival`, the client resumes that session (Hello.resumeTicket):
  // no borrow, the arrival's id and grant, and the session made from its
  // offer (Session::SetArrival).
  void ServeClient(uint64_t id, std::unique_ptr<Transport> transport, wire::Hello::Reader hello,
                   std::span<const capnp::word> hello_words,
                   const std::optional<auth::Token>& token,
                   std::shared_ptr<PendingArrival> arrival = nullptr);
  // ServeClient's end for a client whose session runs in a worker process:
  // hands the client to a worker (the spare, else a new one; a second new
  // one if that fails) and supervises it until it exits, then returns the
  // slices. When no worker takes it, the client is refused with the reason
  // (a TLS client whose session already ended for the hand-over sees its
  // connection close) and its slices are returned.
  void ServeClientInWorker(uint64_t id, std::unique_ptr<Transport> transport,
                           wire::Hello::Reader hello, std::span<const capnp::word> hello_words,
                           SessionGrant grant, const std::optional<auth::Token>& token,
                           const std::shared_ptr<PendingArrival>& arrival);
  // Migration between servers (server_migration.cc; server/README.md
  // "Migration"). ferryctl migrate SESSION --to SERVER:GPU: session `id`
  // moves to GPU `gpu` of the ferryd at `address` (ServedSession::Depart),
  // which requires `token`.
  Status MigrateToServer(uint64_t id, const std::string& address, int gpu,
                         const std::string& token, std::string* summary);
  // A session another ferryd hands over (Hello.role migration; an admin
  // token where ferryd has a token file): checks the offer, borrows a slice
  // for it, answers a ticket, and keeps the arrival until its client comes
  // with the ticket (TakeArrival) or kArrivalWait passes (then the slice
  // goes back). On the connection's thread.
  void ServeMigration(Transport& transport, const std::optional<auth::Token>& token);
  // ServeMigration's look at the offer's calls: only the kinds
  // Session::DescribeForMove makes, placing no more than the session's
  // device memory; the ranges placed and the bytes the calls carry.
  Status CheckOfferCalls(wire::MigrationOffer::Reader offer,
                         std::vector<std::pair<uint64_t, uint64_t>>* ranges,
                         uint64_t* bulk_bytes);
  // ServeMigration's checks and borrow: fills `arrival`'s id and grant; on
  // an error after the borrow the caller returns the slice (arrival's id).
  Status AcceptArrival(wire::MigrationOffer::Reader offer, const Transport& transport,
                       const std::shared_ptr<PendingArrival>& arrival);
  static constexpr std::chrono::seconds kArrivalWait{60};
  // The arrival `ticket` names, taken (once); null when none waits.
  std::shared_ptr<PendingArrival> TakeArrival(const std::string& ticket);
  // Whether sessions can move between this ferryd's GPUs at all
  // (Unimplemented saying why not: a cluster's pool, a backend that cannot).
  Status CanMoveBetweenGpus() const;
  // Live session `id` (NotFound naming it), for asking it outside the lock.
  Status FindSession(uint64_t id, std::shared_ptr<ServedSession>* out) const;
  // The sessions now, for asking each outside the lock.
  std::vector<std::shared_ptr<ServedSession>> LiveSessions() const;
  // Session::MemoryPressure for every session: parks the memory of idle
  // sessions on backend device `backend_device` whose pool overcommits
  // memory (idle at least its park_after; never `requester`), the longest
  // idle first, until `bytes` are parked or none is left. Returns the bytes
  // parked. Any thread; asks each session outside the lock.
  uint64_t RelieveMemoryPressure(int backend_device, uint64_t bytes, uint64_t requester);
  // RelieveMemoryPressure as every session's hook (in process or a worker's).
  Session::MemoryPressure MemoryPressureHook();
  // Idle release (server/README.md "Idle release"). The session's
  // SliceLease: its slices go back to the pool, and come again through a
  // borrow pinned to the same slices that waits in the pool's queue for as
  // long as the client's FERRY_WAIT (`hello`'s waitMs).
  Session::SliceLease SliceLeaseFor(uint64_t id, wire::Hello::Reader hello,
                                    const SessionGrant& grant);
  // Every idle_release of the pool's config: releases each session of such a
  // pool that has been idle that long (ServedSession::ReleaseIdle). On
  // idle_release_thread_, until Stop.
  void ReleaseIdleSessionsLoop();
  void ReleaseIdleSessions();
  // Logs why idle_release does nothing here, if the config sets it (at
  // Start and after each reload).
  void WarnIfIdleReleaseCannotApply() const;
  // A worker for a session with `environment`: the spare when it fits (no
  // environment of its own) and lives, else a new one; a spare is then made
  // again in the background.
  Status TakeWorker(const std::vector<std::string>& environment,
                    std::shared_ptr<SessionWorker>* out);
  // Spawns the next spare worker on a thread of its own, unless one exists,
  // is on its way, or the server stops.
  void RefillSpareWorker();
  // The preemption that came for session `id` before it was in sessions_
  // (removed; "" if none).
  std::string TakeEarlyPreemption(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Checks the Hello's token against the token file. Without one (no
  // authentication) accepts every peer and leaves `token` empty.
  Status Authenticate(const Transport& transport, wire::Hello::Reader hello,
                      std::optional<auth::Token>* token);
  // `token`: the peer's (empty without authentication).
  void ServeControl(Transport& transport, const std::optional<auth::Token>& token);
  Status HandleControl(wire::ControlRequest::Reader request, wire::ControlReply::Builder reply,
                       const std::optional<auth::Token>& token);
  void FillPoolStatus(wire::PoolStatus::Builder out);
  void ConnectionFinished(uint64_t id);
  // Borrows for the client whose handshake is `hello`; sends interim
  // HelloReplys while it waits. Fills `grant` when it gets devices.
  // Where a cluster's borrow is sent instead (HelloReply.redirect).
  // Or split across several servers (HelloReply.parts).
  struct ClusterRedirect {
    std::string address;  // "" = not sent on
    // Not empty (address then is ""): the client borrows these parts, in
    // this order, each from its server.
    std::vector<cluster::BorrowPart> parts;
    std::string pool;
    std::string ticket;  // its place in the cluster's queue, if it has one (always with parts)
    bool sent_on() const { return !address.empty() || !parts.empty(); }
  };
  // In a cluster, a borrow this server has no room for may be sent to
  // another server instead, or split (OK, grant empty, `redirect->sent_on()`).
  Status BorrowFor(uint64_t id, Transport& transport, wire::Hello::Reader hello,
                   const std::optional<auth::Token>& token, SessionGrant* grant,
                   ClusterRedirect* redirect);
  // BorrowFor in a cluster. One FIFO queue per pool across the cluster (in
  // etcd): a borrow takes a slice only when no one waits ahead of it there;
  // the oldest waiter takes one here, or is sent with its ticket to a server
  // with room; others wait (polling the queue) or are refused.
  Status ClusterBorrow(pool::BorrowRequest request, wire::Hello::Reader hello,
                       const std::function<bool()>& gone,
                       const std::function<void(int)>& report_position, SessionGrant* grant,
                       ClusterRedirect* redirect, Transport& transport);
  // The session's devices for a granted lease.
  void GrantFromLease(const pool::Lease& lease, const Transport& transport,
                      const pool::BorrowRequest& request, SessionGrant* grant) const;
  // In a cluster: claims `lease`'s slices in etcd for its session, spending
  // the queue `ticket` when there is one, or leaving it for the next part
  // of a split borrow (ClusterMember::Claim).
  Status ClaimInCluster(
      const pool::Lease& lease, const std::string& ticket,
      cluster::ClusterMember::TicketUse use = cluster::ClusterMember::TicketUse::kSpend);
  // In a cluster: where a borrow of `request` (its pool resolved) that found no room here
  // should go ("" when no other server has room, or etcd cannot say).
  std::string ClusterRoomFor(const pool::BorrowRequest& request);
  // In a cluster, when no one server has room for `request`: how servers of
  // the pool, this one included, can share it (more than one part), this
  // server's GPUs as its pool has them now; empty when the cluster has not
  // enough, or etcd cannot say.
  std::vector<cluster::BorrowPart> ClusterSplitFor(const pool::BorrowRequest& request);
  // The GPUs' bindings as the cluster sees them (ClusterMember's source).
  std::vector<cluster::GpuState> ClusterGpuStates() const;
  // The pool config in force for `local` (this server's file): in a
  // cluster, with the cluster's pools and its schedules made this server's.
  pool::Config EffectivePoolConfig(const pool::Config& local) const;
  // A new version of the cluster's pool config (nullopt: deleted).
  void ApplyClusterPools(const std::optional<std::string>& text, int64_t revision);
  // The pool's preempt hook.
  void PreemptSession(const pool::Preemption& preemption);
  // ferryctl migrate: session `id`'s device `device` (-1: its only one)
  // moves to served GPU `gpu` — its pool slice first (PoolService::
  // MoveSlice), then the session (ServedSession::MoveDevice); a session that
  // cannot move keeps its slice where it was.
  Status Migrate(uint64_t id, int gpu, int device, std::string* summary);
  // Moves `session` (`id`)'s device `device` to `slice`, which the pool has
  // reserved for it (MoveSlice, or a migrate rebind), then FinishMove; on
  // failure CancelMove, and the error says why. `*pause`: how long its calls
  // paused ("1.2 ms").
  Status MoveToReservedSlice(uint64_t id, ServedSession& session, int device,
                             const pool::SliceGrant& slice, std::string* pause);
  // The pool's migrate hook (on_rebind = "migrate"): moves the session on a
  // thread of its own (counted in live_connections_), or cancels the move
  // at once (in a cluster, a backend that cannot move tenants, a session not
  // started yet), and logs how it went; a holder that does not move drains.
  void MigrateForRebind(const pool::Migration& migration);
  // The backend device behind served GPU `gpu_index` (0 if none serves it).
  int BackendDeviceOf(int gpu_index) const;
  // Whether a metrics request with bearer `token` may read (server_metrics.cc).
  bool AcceptsMetricsToken(std::string_view token) const;

  backend::GpuBackend& backend_;
  std::unique_ptr<ModuleCache> module_cache_;  // null: no cache
  asio::io_context io_;
  std::vector<std::unique_ptr<asio::ip::tcp::acceptor>> acceptors_;
  std::vector<std::unique_ptr<asio::local::stream_protocol::acceptor>> unix_acceptors_;
  std::vector<std::string> unix_paths_;  // removed at Stop
  std::vector<std::string> bound_;
  std::thread io_thread_;
  std::thread idle_release_thread_;  // with a pool outside a cluster; joined by Stop
  std::condition_variable idle_release_cv_;  // Stop wakes it (with mutex_)

  mutable std::mutex mutex_;
  std::condition_variable connections_cv_;
  std::vector<ServedGpu> gpus_;        // fixed after Start
  ServerLimits limits_;                // fixed after Start
  RdmaServing rdma_;                   // fixed after Start
  std::unique_ptr<PoolService> pool_;  // null without pools; set before Start
  // Null outside a cluster; set before Start. Declared after pool_ so it
  // goes first: its keeper calls ClusterGpuStates.
  std::unique_ptr<cluster::ClusterMember> cluster_;
  std::string config_path_ ABSL_GUARDED_BY(mutex_);
  pool::Config loaded_config_ ABSL_GUARDED_BY(mutex_);
  // The config EnablePool got, as the last reload left it (this server's own).
  pool::Config local_config_ ABSL_GUARDED_BY(mutex_);
  // In a cluster: its pool config, when one is stored.
  std::optional<pool::Config> cluster_pools_ ABSL_GUARDED_BY(mutex_);
  std::mutex reload_mutex_;                  // one reload at a time
  std::string token_file_;                   // "" = no authentication; fixed after Start
  std::shared_ptr<TlsContext> tls_;          // null: plain TCP; fixed after Start
  UnixAccess unix_access_;                   // fixed after Listen
  std::vector<std::string> worker_command_;  // empty: sessions in this process; fixed after Start
  WorkerBooks worker_books_;                 // fixed after Start
  ComputeSharing sharing_ = ComputeSharing::kAuto;  // fixed after Start
  // A worker that has opened its backend and waits for a session.
  std::shared_ptr<SessionWorker> spare_worker_ ABSL_GUARDED_BY(mutex_);
  bool spare_spawning_ ABSL_GUARDED_BY(mutex_) = false;
  // Replaced whole by Reload; a handshake keeps the set it looked at.
  std::shared_ptr<const auth::TokenSet> tokens_ ABSL_GUARDED_BY(mutex_);

  // Shared with preemption workers, which may outlive the connection thread's
  // use of a session.
  std::map<uint64_t, std::shared_ptr<ServedSession>> sessions_ ABSL_GUARDED_BY(mutex_);
  // Preemptions that arrived between a grant and the session's start.
  std::map<uint64_t, std::string> early_preemptions_ ABSL_GUARDED_BY(mutex_);
  // Sessions handed over by other ferryds, waiting for their clients, by
  // ticket (ServeMigration).
  std::map<std::string, std::shared_ptr<PendingArrival>> arrivals_ ABSL_GUARDED_BY(mutex_);
  // Every live connection's transport until it has a session (whose
  // transport may be replaced; Stop reaches it through sessions_), so Stop
  // can end them all, handshakes in progress included. Owned by the
  // connection threads.
  std::map<uint64_t, Transport*> connections_ ABSL_GUARDED_BY(mutex_);
  int live_connections_ ABSL_GUARDED_BY(mutex_) = 0;  // preemption workers too
  // Accepted connections whose thread has not finished (live_connections_
  // less the preemption workers): what max_connections bounds.
  int open_connections_ ABSL_GUARDED_BY(mutex_) = 0;
  int client_sessions_ ABSL_GUARDED_BY(mutex_) = 0;  // past the max_sessions check
  uint64_t next_id_ ABSL_GUARDED_BY(mutex_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  // /metrics: the counters of sessions that ended (a session leaves
  // sessions_ and adds its final figures here under one lock), and the
  // listener (set by ServeMetrics, stopped first by Stop).
  SessionTotals ended_sessions_ ABSL_GUARDED_BY(mutex_);
  MetricsState metrics_;
};

}  // namespace ferry::server
