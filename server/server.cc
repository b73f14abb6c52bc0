#include "server/server.h"

#include <absl/cleanup/cleanup.h>
#include <absl/time/clock.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <utility>

#include "common/frame.h"
#include "common/log.h"
#include "common/random_bytes.h"
#include "common/shm_transport.h"
#include "common/units.h"
#include "server/session_log.h"

namespace ferry::server {
namespace {

int64_t UnixMs(absl::Time t) {
  if (t == absl::InfiniteFuture() || t == absl::InfinitePast()) return 0;
  return absl::ToUnixMillis(t);
}

const char* SourceName(pool::BindingSource source) {
  switch (source) {
    case pool::BindingSource::kSchedule:
      return "schedule";
    case pool::BindingSource::kManual:
      return "manual";
    case pool::BindingSource::kDefault:
      break;
  }
  return "default";
}

// Settings a reload cannot change: the listeners, the backend and its GPUs
// exist from the start. "" when none changed, else the first key that did.
std::string RestartOnlyChange(const pool::Config& before, const pool::Config& after) {
  if (before.server.listen != after.server.listen) return "server.listen";
  if (before.server.backend != after.server.backend) return "server.backend";
  if (before.server.cuda_driver != after.server.cuda_driver) return "server.cuda_driver";
  if (before.server.host_kernels != after.server.host_kernels) return "server.host_kernels";
  if (before.server.handshake_timeout != after.server.handshake_timeout) {
    return "server.handshake_timeout";
  }
  if (before.server.max_connections != after.server.max_connections) {
    return "server.max_connections";
  }
  if (before.server.max_sessions != after.server.max_sessions) return "server.max_sessions";
  if (before.server.session_buffer != after.server.session_buffer) return "server.session_buffer";
  if (before.server.compute_sharing != after.server.compute_sharing) {
    return "server.compute_sharing";
  }
  if (before.server.metrics_listen != after.server.metrics_listen) return "server.metrics_listen";
  if (before.server.metrics_sessions != after.server.metrics_sessions) {
    return "server.metrics_sessions";
  }
  if (before.gpus.size() != after.gpus.size()) return "gpu";
  for (size_t i = 0; i < before.gpus.size(); ++i) {
    if (before.gpus[i].index != after.gpus[i].index ||
        before.gpus[i].memory != after.gpus[i].memory) {
      return "gpu[" + std::to_string(i) + "]";
    }
  }
  if (before.pooling() != after.pooling()) return "pool (turning pools on or off)";
  if (!(before.cluster == after.cluster)) return "cluster";
  // The token file's contents reload; where it is, TLS and the unix
  // sockets' access are set up at start.
  if (!(before.auth == after.auth)) return "auth";
  return "";
}

void ApplyLogLevel(const pool::Config& config) {
  if (!config.server.log_level.has_value()) return;
  const std::string& v = *config.server.log_level;
  SetMinLogLevel(v == "debug"     ? LogLevel::kDebug
                 : v == "warning" ? LogLevel::kWarning
                 : v == "error"   ? LogLevel::kError
                                  : LogLevel::kInfo);
}

}  // namespace

Server::Server(backend::GpuBackend& backend, uint64_t module_cache_bytes) : backend_(backend) {
  if (module_cache_bytes > 0) module_cache_ = std::make_unique<ModuleCache>(module_cache_bytes);
  for (size_t i = 0; i < backend.Devices().size(); ++i) {
    gpus_.push_back(
        ServedGpu{static_cast<int>(i), static_cast<int>(i), backend.Devices()[i].total_memory});
  }
}

void Server::ServeGpus(std::vector<ServedGpu> gpus) { gpus_ = std::move(gpus); }

void Server::SetClusterPools(std::optional<pool::Config> pools) {
  std::lock_guard<std::mutex> lock(mutex_);
  cluster_pools_ = std::move(pools);
}

pool::Config Server::EffectivePoolConfig(const pool::Config& local) const {
  if (cluster_ == nullptr) return local;
  std::optional<pool::Config> cluster_pools;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    cluster_pools = cluster_pools_;
  }
  const pool::Config merged =
      cluster_pools.has_value() ? pool::WithClusterPools(local, *cluster_pools) : local;
  std::vector<int> indices;
  for (const ServedGpu& gpu : gpus_) indices.push_back(gpu.index);
  return pool::LocalizeSchedules(merged, cluster_->options().name, cluster_->options().labels,
                                 indices);
}

void Server::FollowClusterPools(int64_t revision) {
  if (cluster_ == nullptr) return;
  cluster_->FollowPoolConfig(revision, [this](const std::optional<std::string>& text,
                                              int64_t version) { ApplyClusterPools(text, version); });
}

void Server::ApplyClusterPools(const std::optional<std::string>& text, int64_t revision) {
  std::lock_guard<std::mutex> reload_lock(reload_mutex_);
  const std::string where = "the cluster's pool config (etcd revision " + std::to_string(revision) + ")";
  std::optional<pool::Config> pools;
  if (text.has_value()) {
    pool::Config parsed;
    Status status = pool::ParseClusterConfig(*text, "cluster-pool-config", &parsed);
    if (!status.ok()) {
      FERRY_LOG(kError) << where << " does not parse; the pools stay as they were: "
                        << status.message();
      return;
    }
    pools = std::move(parsed);
  }
  std::optional<pool::Config> before;
  pool::Config local;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    before = cluster_pools_;
    cluster_pools_ = pools;
    local = local_config_;
  }
  const pool::Config effective = EffectivePoolConfig(local);
  std::string summary;
  Status status = pool_ != nullptr ? pool_->Reload(effective, &summary)
                                   : Status::InvalidArgument("this ferryd has no pool");
  if (!status.ok()) {
    std::lock_guard<std::mutex> lock(mutex_);
    cluster_pools_ = std::move(before);
    FERRY_LOG(kError) << where << " cannot apply here; the pools stay as they were: "
                      << status.message();
    return;
  }
  FERRY_LOG(kInfo) << "applied " << where
                   << (pools.has_value() ? "" : ": deleted, so this server's own --config pools")
                   << (summary.empty() ? "" : ": " + summary);
}

Status Server::EnablePool(const pool::Config& given, pool::Clock& clock,
                          pool::FakeClock* test_clock) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    local_config_ = given;
  }
  const pool::Config config = EffectivePoolConfig(given);
  if (!config.pooling()) {
    return Status::InvalidArgument(
        "no pools: define [pool.NAME] in --config" +
        std::string(cluster_ != nullptr ? ", or store the cluster's with `ferryctl apply`" : ""));
  }
  std::vector<pool::PoolGpu> gpus;
  for (const ServedGpu& gpu : gpus_) gpus.push_back(pool::PoolGpu{gpu.index, gpu.memory});
  PoolService::Options options;
  options.clock = &clock;
  options.test_clock = test_clock;
  options.preempt = [this](const pool::Preemption& p) { PreemptSession(p); };
  options.migrate = [this](const pool::Migration& m) { MigrateForRebind(m); };
  if (cluster_ != nullptr) {
    cluster::ClusterMember* member = cluster_.get();
    options.release = [member](uint64_t session) { member->Release(session); };
    options.changed = [member] { member->GpuStatesChanged(); };
  }
  return PoolService::Create(config, std::move(gpus), std::move(options), &pool_);
}

Status Server::JoinCluster(cluster::ServerRecord self) {
  if (cluster_ == nullptr || pool_ == nullptr) {
    return Status::InvalidArgument("a cluster needs SetCluster and EnablePool first");
  }
  return cluster_->Join(std::move(self), [this] { return ClusterGpuStates(); });
}

std::vector<cluster::GpuState> Server::ClusterGpuStates() const {
  absl::Time now;
  const pool::PoolSnapshot snapshot = pool_->Snapshot(&now);
  std::vector<cluster::GpuState> states;
  for (const pool::GpuSnapshot& gpu : snapshot.gpus) {
    cluster::GpuState state;
    state.index = gpu.index;
    state.pool = gpu.pool;
    state.slices_per_gpu = gpu.slices_per_gpu;
    state.free_slices = gpu.free_slices;
    state.drained = gpu.drained;
    state.binding = gpu.window.empty() ? SourceName(gpu.source)
                                       : std::string(SourceName(gpu.source)) + " " + gpu.window;
    if (gpu.next_change != absl::InfiniteFuture()) {
      state.next_change_unix_ms = absl::ToUnixMillis(gpu.next_change);
      state.next_pool = gpu.next_pool;
    }
    states.push_back(std::move(state));
  }
  return states;
}

Status Server::ClaimInCluster(const pool::Lease& lease, const std::string& ticket,
                              cluster::ClusterMember::TicketUse use) {
  std::vector<cluster::ClaimRecord> claims;
  for (const pool::SliceGrant& slice : lease.slices) {
    cluster::ClaimRecord claim;
    claim.gpu = slice.gpu;
    claim.slices_per_gpu = slice.slices_per_gpu;
    claim.slice = slice.slice;
    claim.pool = lease.pool;
    claim.host = lease.host;
    claim.pid = lease.pid;
    claim.program = lease.program;
    claim.since_unix_ms = absl::ToUnixMillis(absl::Now());
    claims.push_back(std::move(claim));
  }
  return cluster_->Claim(lease.session, std::move(claims), ticket, use);
}

std::string Server::ClusterRoomFor(const pool::BorrowRequest& request) {
  cluster::ClusterSnapshot snapshot;
  Status status = cluster_->Read(&snapshot, /*with_claims=*/false);
  if (!status.ok()) {
    FERRY_LOG(kWarning) << "cluster: cannot look for room elsewhere: " << status.message();
    return "";
  }
  std::string advertise;
  const std::string server = cluster_->FindRoom(snapshot, request.pool, request.gpus, &advertise);
  if (server.empty()) return "";
  FERRY_LOG(kInfo) << "client pid " << request.pid << " on " << request.host
                   << ": no room here in pool " << request.pool << "; sent to server " << server
                   << " at " << advertise;
  return advertise;
}

std::vector<cluster::BorrowPart> Server::ClusterSplitFor(const pool::BorrowRequest& request) {
  cluster::ClusterSnapshot snapshot;
  Status status = cluster_->Read(&snapshot, /*with_claims=*/false);
  if (!status.ok()) {
    FERRY_LOG(kWarning) << "cluster: cannot look for a split of the borrow: " << status.message();
    return {};
  }
  // This server's part counts what its pool has free now, not what it last
  // published (the borrow that just failed here may have changed it).
  const std::string& self = cluster_->options().name;
  std::erase_if(snapshot.gpus, [&](const cluster::GpuState& gpu) { return gpu.server == self; });
  for (cluster::GpuState& gpu : ClusterGpuStates()) {
    gpu.server = self;
    snapshot.gpus.push_back(std::move(gpu));
  }
  std::vector<cluster::BorrowPart> parts =
      cluster::SplitBorrow(snapshot, request.pool, request.gpus);
  if (parts.size() < 2) return {};  // one server with room is a redirect's business
  std::string across;
  for (const cluster::BorrowPart& part : parts) {
    across += (across.empty() ? "" : ", ") + part.server + " at " + part.advertise + " (" +
              std::to_string(part.gpus) + ")";
  }
  FERRY_LOG(kInfo) << "client pid " << request.pid << " on " << request.host
                   << ": no one server has room for " << request.gpus << " devices in pool "
                   << request.pool << "; split across " << across;
  return parts;
}

void Server::SetConfigFile(const std::string& path, const pool::Config& loaded) {
  std::lock_guard<std::mutex> lock(mutex_);
  config_path_ = path;
  loaded_config_ = loaded;
}

Status Server::SetTls(const std::string& cert_file, const std::string& key_file) {
  return TlsContext::ForServer(cert_file, key_file, &tls_);
}

Status LookUpGroup(const std::string& group, uint32_t* gid) {
  if (!group.empty() && std::all_of(group.begin(), group.end(),
                                    [](unsigned char c) { return std::isdigit(c) != 0; })) {
    // All digits, so strtoull parses it whole; what is left to check is the
    // range: a gid is 32 bits and (gid_t)-1 means "no group" to chown.
    errno = 0;
    const unsigned long long value = std::strtoull(group.c_str(), nullptr, 10);
    if (errno == ERANGE || value >= std::numeric_limits<uint32_t>::max()) {
      return Status::InvalidArgument("group id " + group +
                                     " is out of range (--unix-group: 0 to 4294967294)");
    }
    *gid = static_cast<uint32_t>(value);
    return Status::Ok();
  }
  std::vector<char> buffer(16384);
  struct group entry {};
  struct group* found = nullptr;
  if (::getgrnam_r(group.c_str(), &entry, buffer.data(), buffer.size(), &found) != 0 ||
      found == nullptr) {
    return Status::NotFound("no group '" + group + "' (--unix-group)");
  }
  *gid = found->gr_gid;
  return Status::Ok();
}

Status Server::SetTokenFile(const std::string& path) {
  auto tokens = std::make_shared<auth::TokenSet>();
  FERRY_RETURN_IF_ERROR(auth::TokenSet::Load(path, tokens.get()));
  std::lock_guard<std::mutex> lock(mutex_);
  token_file_ = path;
  tokens_ = std::move(tokens);
  return Status::Ok();
}

Status Server::Reload(std::string* summary) {
  std::lock_guard<std::mutex> one_at_a_time(reload_mutex_);
  std::string path;
  pool::Config before;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    path = config_path_;
    before = loaded_config_;
  }
  if (path.empty() && token_file_.empty()) {
    return Status::InvalidArgument(
        "ferryd runs without --config and --token-file: there is no file to reload");
  }
  // Tokens first: a token file that does not load rejects the whole reload.
  std::shared_ptr<auth::TokenSet> tokens;
  if (!token_file_.empty()) {
    tokens = std::make_shared<auth::TokenSet>();
    if (Status loaded = auth::TokenSet::Load(token_file_, tokens.get()); !loaded.ok()) {
      return Status::InvalidArgument("reload rejected, the old config and tokens stay: " +
                                     loaded.message());
    }
  }
  if (path.empty()) {
    std::lock_guard<std::mutex> lock(mutex_);
    tokens_ = std::move(tokens);
    FERRY_LOG(kInfo) << "reloaded " << token_file_ << ": " << tokens_->size() << " token(s)";
    *summary = "reloaded " + token_file_ + ": " + std::to_string(tokens_->size()) + " token(s)\n";
    return Status::Ok();
  }
  pool::Config after;
  Status status = pool::LoadConfigFile(path, &after);
  if (status.ok()) {
    const std::string changed = RestartOnlyChange(before, after);
    if (!changed.empty()) {
      status = Status::InvalidArgument(path + ": " + changed +
                                       " changed; that needs a restart of ferryd");
    }
  }
  std::string pool_summary;
  if (status.ok() && pool_ != nullptr) status = pool_->Reload(EffectivePoolConfig(after), &pool_summary);
  if (!status.ok()) {
    return Status::InvalidArgument("reload rejected, the old config stays: " + status.message());
  }
  ApplyLogLevel(after);
  std::string token_summary;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    loaded_config_ = after;
    local_config_ = after;
    if (tokens != nullptr) {
      tokens_ = std::move(tokens);
      token_summary = token_file_ + ": " + std::to_string(tokens_->size()) + " token(s)";
    }
  }
  FERRY_LOG(kInfo) << "reloaded " << path << (token_summary.empty() ? "" : " and ")
                   << token_summary;
  WarnIfIdleReleaseCannotApply();
  *summary = "reloaded " + path + "\n" +
             (token_summary.empty() ? "" : "reloaded " + token_summary + "\n") + pool_summary;
  return Status::Ok();
}

ModuleCacheStats Server::module_cache_stats() const {
  return module_cache_ != nullptr ? module_cache_->stats() : ModuleCacheStats{};
}

Server::~Server() { Stop(); }

Status Server::Listen(const std::string& listen_address) {
  // rdma://HOST:PORT: a TCP listener whose clients move to RDMA in the
  // handshake (Session::AcceptRdma); it needs RDMA served.
  std::string address = listen_address;
  if (address.starts_with(kRdmaScheme)) {
    if (!rdma_.enabled) {
      return Status::InvalidArgument("cannot listen on " + listen_address + ": " +
                                     (rdma_.unavailable.empty() ? "RDMA is not served"
                                                                : rdma_.unavailable));
    }
    address = address.substr(kRdmaScheme.size());
  }
  if (address.rfind("unix:", 0) == 0) {
    const std::string path = address.substr(5);
    if (path.empty()) return Status::InvalidArgument("bad listen address '" + address + "'");
    // A socket file left by an earlier ferryd would make bind fail.
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
    asio::error_code ec;
    auto acceptor = std::make_unique<asio::local::stream_protocol::acceptor>(io_);
    asio::local::stream_protocol::endpoint endpoint(path);
    acceptor->open(endpoint.protocol(), ec);
    if (!ec) acceptor->bind(endpoint, ec);
    if (ec) return Status::InvalidArgument("cannot listen on " + address + ": " + ec.message());
    // Owner and group only, whatever the umask: set before listen(), so no
    // peer can connect while the mode is still the umask's.
    if (unix_access_.group.has_value() &&
        ::chown(path.c_str(), static_cast<uid_t>(-1), *unix_access_.group) != 0) {
      return Status::InvalidArgument("cannot give " + path + " to group " +
                                     std::to_string(*unix_access_.group) + ": " +
                                     std::strerror(errno));
    }
    if (::chmod(path.c_str(), 0660) != 0) {
      return Status::InvalidArgument("cannot chmod 0660 " + path + ": " + std::strerror(errno));
    }
    acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return Status::InvalidArgument("cannot listen on " + address + ": " + ec.message());
    bound_.push_back(address);
    unix_paths_.push_back(path);
    unix_acceptors_.push_back(std::move(acceptor));
    return Status::Ok();
  }
  std::string host;
  uint16_t port = 0;
  FERRY_RETURN_IF_ERROR(ParseHostPort(address, &host, &port));
  asio::error_code ec;
  auto ip = asio::ip::make_address(host, ec);
  if (ec) {
    asio::ip::tcp::resolver resolver(io_);
    auto results = resolver.resolve(host, std::to_string(port), ec);
    if (ec || results.empty()) {
      return Status::InvalidArgument("cannot resolve listen address " + address + ": " +
                                     ec.message());
    }
    ip = results.begin()->endpoint().address();
  }
  auto acceptor = std::make_unique<asio::ip::tcp::acceptor>(io_);
  asio::ip::tcp::endpoint endpoint(ip, port);
  acceptor->open(endpoint.protocol(), ec);
  if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor->bind(endpoint, ec);
  if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Status::InvalidArgument("cannot listen on " + address + ": " + ec.message());
  auto local = acceptor->local_endpoint();
  std::string bound = local.address().is_v6() ? "[" + local.address().to_string() + "]"
                                              : local.address().to_string();
  bound += ":" + std::to_string(local.port());
  bound_.push_back(bound);
  acceptors_.push_back(std::move(acceptor));
  return Status::Ok();
}

std::vector<std::string> Server::BoundAddresses() const { return bound_; }

void Server::Start() {
  for (auto& acceptor : acceptors_) StartAccept(*acceptor);
  for (auto& acceptor : unix_acceptors_) StartAcceptUnix(*acceptor);
  io_thread_ = std::thread([this] { io_.run(); });
  if (pool_ != nullptr && cluster_ == nullptr) {
    idle_release_thread_ = std::thread([this] { ReleaseIdleSessionsLoop(); });
  }
  WarnIfIdleReleaseCannotApply();
  RefillSpareWorker();
}

void Server::StartAccept(asio::ip::tcp::acceptor& acceptor) {
  acceptor.async_accept(
      [this, &acceptor](const asio::error_code& ec, asio::ip::tcp::socket socket) {
        if (ec) {
          if (ec != asio::error::operation_aborted) {
            FERRY_LOG(kWarning) << "accept failed: " << ec.message();
            StartAccept(acceptor);
          }
          return;
        }
        asio::error_code ignored;
        auto remote = socket.remote_endpoint(ignored);
        std::string peer = remote.address().to_string() + ":" + std::to_string(remote.port());
        int fd = socket.release(ignored);
        if (fd < 0) {
          StartAccept(acceptor);
          return;
        }
        TuneTcpSocket(fd);
        if (tls_ == nullptr) {
          ServeOnNewThread(
              [fd, peer](std::unique_ptr<Transport>* out, Status*) {
                *out = std::make_unique<SocketTransport>(fd, peer);
                return Status::Ok();
              },
              peer);
        } else {
          // The TLS handshake runs on the connection's own thread, within the
          // handshake deadline.
          ServeOnNewThread(
              [this, fd, peer](std::unique_ptr<Transport>* out, Status* refusal) {
                bool plain_peer = false;
                FERRY_RETURN_IF_ERROR(AcceptTls(
                    fd, peer, *tls_, std::chrono::steady_clock::now() + limits_.handshake_timeout,
                    out, &plain_peer));
                if (plain_peer) {
                  FERRY_LOG(kWarning) << "connection from " << peer
                                      << " refused: a plain (non-TLS) client on a TLS listener";
                  *refusal = Status::PermissionDenied(
                      "this ferryd speaks TLS only: set FERRY_TLS_CA (ferryctl: --tls-ca) to the "
                      "CA file that signed its certificate");
                }
                return Status::Ok();
              },
              peer);
        }
        StartAccept(acceptor);
      });
}

void Server::StartAcceptUnix(asio::local::stream_protocol::acceptor& acceptor) {
  acceptor.async_accept(
      [this, &acceptor](const asio::error_code& ec, asio::local::stream_protocol::socket socket) {
        if (ec) {
          if (ec != asio::error::operation_aborted) {
            FERRY_LOG(kWarning) << "accept failed: " << ec.message();
            StartAcceptUnix(acceptor);
          }
          return;
        }
        asio::error_code ignored;
        std::string peer = "unix:" + acceptor.local_endpoint(ignored).path();
        const int fd = socket.release(ignored);
        ucred credentials{};
        socklen_t length = sizeof(credentials);
        std::string refused;  // why the peer is refused; "" when it is not
        if (fd >= 0 && ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0) {
          peer += " pid " + std::to_string(credentials.pid);
          refused = UnixPeerRefusal(credentials.uid, credentials.gid);
        } else if (!unix_access_.allow_uids.empty() || !unix_access_.allow_gids.empty()) {
          refused = "its credentials cannot be read";
        }
        if (fd >= 0) {
          // The shared region is set up on the connection's own thread, never
          // on the accepting one. A refused peer still gets it (its pages are
          // untouched, so they cost nothing), so that it can read why.
          ServeOnNewThread(
              [fd, peer, refused](std::unique_ptr<Transport>* out, Status* refusal) {
                if (!refused.empty()) {
                  FERRY_LOG(kWarning) << "connection from " << peer << " refused: " << refused;
                  *refusal =
                      Status::PermissionDenied("ferryd refuses this unix-socket peer: " + refused);
                }
                return ShmTransport::Accept(fd, peer, ShmTransport::kDefaultRingBytes, out);
              },
              peer);
        }
        StartAcceptUnix(acceptor);
      });
}

std::string Server::UnixPeerRefusal(uint32_t uid, uint32_t gid) const {
  const UnixAccess& access = unix_access_;
  if (access.allow_uids.empty() && access.allow_gids.empty()) return "";
  if (std::find(access.allow_uids.begin(), access.allow_uids.end(), uid) !=
          access.allow_uids.end() ||
      std::find(access.allow_gids.begin(), access.allow_gids.end(), gid) !=
          access.allow_gids.end()) {
    return "";
  }
  return "uid " + std::to_string(uid) + " gid " + std::to_string(gid) +
         " is not allowed (--unix-allow-uid, --unix-allow-gid)";
}

void Server::ServeOnNewThread(MakeTransport make_transport, std::string peer) {
  uint64_t id = 0;
  bool over_cap = false;
  bool flooded = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // Past the cap a connection still gets a thread, to read its Hello and
    // answer it with the refusal; past twice the cap (refusals in flight
    // pile up too) it is closed unanswered.
    over_cap = open_connections_ >= limits_.max_connections;
    flooded = open_connections_ >= 2 * std::max(limits_.max_connections, 1);
    if (!stopping_ && !flooded) {
      ++live_connections_;
      ++open_connections_;
      id = next_id_++;
    }
  }
  if (id == 0) {  // stopping or flooded: take the socket only to close it
    if (flooded) {
      FERRY_LOG(kWarning) << "connection from " << peer
                          << " closed unanswered: " << limits_.max_connections
                          << " connections (--max-connections) and as many refusals are open";
    }
    std::unique_ptr<Transport> unused;
    Status ignored;
    (void)make_transport(&unused, &ignored);
    return;
  }
  std::thread([this, id, over_cap, make_transport = std::move(make_transport),
               peer = std::move(peer)] {
    std::unique_ptr<Transport> transport;
    Status refusal;
    Status status = make_transport(&transport, &refusal);
    if (!status.ok()) {
      FERRY_LOG(kWarning) << "connection from " << peer << " failed: " << status.ToString();
      ConnectionFinished(id);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      connections_[id] = transport.get();
      if (stopping_) transport->Shutdown();
    }
    ServeConnection(id, std::move(transport), over_cap, refusal);
  }).detach();
}

void Server::ConnectionFinished(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  connections_.erase(id);
  --live_connections_;
  --open_connections_;
  connections_cv_.notify_all();
}

void Server::Refuse(Transport& transport, const Status& refusal) {
  capnp::MallocMessageBuilder message;
  StatusToWire(refusal, message.initRoot<wire::HelloReply>().initStatus());
  (void)WriteFrame(transport, wire::FrameKind::HELLO_REPLY, message);
}

void Server::ServeConnection(uint64_t id, std::unique_ptr<Transport> transport, bool over_cap,
                             const Status& refusal) {
  // The Hello must come whole, small and soon: a peer nobody knows yet
  // holds a thread and a socket, never memory it merely announces.
  Frame frame;
  const auto deadline = std::chrono::steady_clock::now() + limits_.handshake_timeout;
  transport->SetReadDeadline(deadline);
  Status status = ReadFrame(*transport, &frame, kHandshakeFrameLimits);
  transport->SetReadDeadline(kNoDeadline);
  if (status.ok() && frame.kind != wire::FrameKind::HELLO) {
    status = Status::Malformed("expected a Hello frame first");
  }
  if (!status.ok()) {
    if (status.code() == StatusCode::kDisconnected &&
        std::chrono::steady_clock::now() >= deadline) {
      FERRY_LOG(kWarning) << "connection from " << transport->PeerName()
                          << " closed: no complete Hello within "
                          << limits_.handshake_timeout.count() << " ms (--handshake-timeout)";
    } else {
      FERRY_LOG(kWarning) << "connection from " << transport->PeerName()
                          << " dropped before its handshake: " << status.ToString();
    }
    ConnectionFinished(id);
    return;
  }
  try {
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    auto hello = reader.getRoot<wire::Hello>();
    if (hello.getProtocolVersion() != wire::PROTOCOL_VERSION) {
      capnp::MallocMessageBuilder message;
      auto reply = message.initRoot<wire::HelloReply>();
      StatusToWire(
          Status::Unimplemented("protocol version " + std::to_string(hello.getProtocolVersion()) +
                                " is not supported; this ferryd speaks " +
                                std::to_string(wire::PROTOCOL_VERSION)),
          reply.initStatus());
      (void)WriteFrame(*transport, wire::FrameKind::HELLO_REPLY, message);
      ConnectionFinished(id);
      return;
    }
    std::optional<auth::Token> token;
    if (!refusal.ok()) {
      Refuse(*transport, refusal);
      ConnectionFinished(id);
      return;
    }
    if (Status authenticated = Authenticate(*transport, hello, &token); !authenticated.ok()) {
      Refuse(*transport, authenticated);
      ConnectionFinished(id);
      return;
    }
    // ferryctl's control connections pass the cap (not the flood limit of
    // twice the cap, checked earlier): an operator must be able to look at
    // and preempt sessions while idle connections fill the cap.
    if (over_cap && hello.getRole() != wire::Hello::Role::CONTROL) {
      FERRY_LOG(kWarning) << "connection from " << transport->PeerName() << " pid "
                          << hello.getPid() << " refused: " << limits_.max_connections
                          << " connections are open (--max-connections)";
      Refuse(*transport,
             Status::Overloaded("ferryd serves at most " + std::to_string(limits_.max_connections) +
                                " connections at once (--max-connections); try again later"));
      ConnectionFinished(id);
      return;
    }
    if (hello.getRole() == wire::Hello::Role::CONTROL) {
      ServeControl(*transport, token);
      ConnectionFinished(id);
      return;
    }
    if (hello.getRole() == wire::Hello::Role::MIGRATION) {
      ServeMigration(*transport, token);
      ConnectionFinished(id);
      return;
    }
    bool sessions_full = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      sessions_full = client_sessions_ >= limits_.max_sessions;
      if (!sessions_full) ++client_sessions_;
    }
    if (sessions_full) {
      FERRY_LOG(kWarning) << "client " << transport->PeerName() << " pid " << hello.getPid()
                          << " refused: " << limits_.max_sessions
                          << " sessions are open (--max-sessions)";
      Refuse(*transport,
             Status::Overloaded("ferryd serves at most " + std::to_string(limits_.max_sessions) +
                                " sessions at once (--max-sessions); try again later"));
      ConnectionFinished(id);
      return;
    }
    absl::Cleanup session_slot = [this] {
      std::lock_guard<std::mutex> lock(mutex_);
      --client_sessions_;
    };
    if (hello.getResumeTicket().size() > 0) {
      // A client following its session here from another ferryd.
      auto ticket = hello.getResumeTicket();
      std::shared_ptr<PendingArrival> arrival =
          TakeArrival(std::string(reinterpret_cast<const char*>(ticket.begin()), ticket.size()));
      if (arrival == nullptr) {
        FERRY_LOG(kWarning) << "client " << transport->PeerName() << " pid " << hello.getPid()
                            << " refused: its resume ticket names no session waiting here";
        Refuse(*transport, Status::NotFound("no session waits here for this ticket (used already, "
                                            "or not taken within " +
                                            std::to_string(kArrivalWait.count()) + " s)"));
        ConnectionFinished(id);
        return;
      }
      {
        // The connection goes by the session's id from here on (Stop finds
        // it there until the session has it).
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = connections_.find(id);
        if (it != connections_.end()) {
          connections_[arrival->session] = it->second;
          connections_.erase(it);
        }
      }
      // However ServeClient ends (a refusal, an exception), the transport is
      // gone after it: so is its entry.
      absl::Cleanup forget = [this, session = arrival->session] {
        std::lock_guard<std::mutex> lock(mutex_);
        connections_.erase(session);
      };
      ServeClient(arrival->session, std::move(transport), hello, frame.words.asPtr(), token,
                  arrival);
      ConnectionFinished(id);
      return;
    }
    ServeClient(id, std::move(transport), hello, frame.words.asPtr(), token);
  } catch (const kj::Exception& e) {
    FERRY_LOG(kWarning) << "bad handshake from a client: " << e.getDescription().cStr();
  } catch (const std::exception& e) {
    // Nothing a client sends may end ferryd: this connection ends instead.
    FERRY_LOG(kError) << "a client's connection ended on an error: " << e.what();
  }
  ConnectionFinished(id);
}

Status Server::Authenticate(const Transport& transport, wire::Hello::Reader hello,
                            std::optional<auth::Token>* token) {
  std::shared_ptr<const auth::TokenSet> tokens;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    tokens = tokens_;
  }
  if (tokens == nullptr) return Status::Ok();  // no token file: no authentication
  const bool control = hello.getRole() == wire::Hello::Role::CONTROL;
  const std::string who = std::string(control ? "ferryctl" : "client") + " " +
                          transport.PeerName() + " pid " + std::to_string(hello.getPid());
  const std::string presented = hello.getToken().cStr();
  const std::string how = control ? "--token or FERRY_TOKEN" : "FERRY_TOKEN or FERRY_TOKEN_FILE";
  if (presented.empty()) {
    FERRY_LOG(kWarning) << who << " refused: no token (ferryd runs with --token-file)";
    return Status::PermissionDenied("ferryd requires a token: set " + how);
  }
  const auth::Token* found = tokens->Find(presented);
  if (found == nullptr) {
    FERRY_LOG(kWarning) << who << " refused: its token is not in " << token_file_;
    return Status::PermissionDenied("ferryd does not know this token (" + how +
                                    "): wrong, revoked or not yet reloaded");
  }
  FERRY_LOG(kDebug) << who << " authenticated with " << found->Describe();
  *token = *found;
  return Status::Ok();
}

void Server::ServeClient(uint64_t id, std::unique_ptr<Transport> transport,
                         wire::Hello::Reader hello, std::span<const capnp::word> hello_words,
                         const std::optional<auth::Token>& token,
                         std::shared_ptr<PendingArrival> arrival) {
  SessionGrant grant;
  if (arrival != nullptr) {
    grant = arrival->grant;
    // Only the token's holder that had it at the source, and only where
    // that token may borrow.
    Status allowed;
    if (token.has_value() && token->name != arrival->token_name) {
      allowed = Status::PermissionDenied(token->Describe() + " is not the token the session was "
                                         "handed over for");
    } else if (token.has_value() && grant.pooled && !token->MayBorrowFrom(grant.pool)) {
      allowed = Status::PermissionDenied(token->Describe() + " may not use pool " + grant.pool +
                                         ", which its session came to");
    }
    if (!allowed.ok()) {
      FERRY_LOG(kWarning) << "client " << transport->PeerName() << " pid " << hello.getPid()
                          << " refused " << arrival->source << ": " << allowed.message();
      Refuse(*transport, allowed);
      if (pool_ != nullptr) pool_->Return(id);
      return;
    }
  } else if (pool_ == nullptr) {
    for (const ServedGpu& gpu : gpus_) {
      SessionDevice device;
      device.backend_device = gpu.backend_device;
      device.gpu = gpu.index;
      grant.devices.push_back(device);
    }
  } else {
    ClusterRedirect redirect;
    Status borrowed = BorrowFor(id, *transport, hello, token, &grant, &redirect);
    if (borrowed.ok() && redirect.sent_on()) {
      capnp::MallocMessageBuilder message;
      auto reply = message.initRoot<wire::HelloReply>();
      StatusToWire(Status::Ok(), reply.initStatus());
      reply.setRedirect(redirect.address);
      reply.setPool(redirect.pool);
      reply.setQueueTicket(redirect.ticket);
      if (!redirect.parts.empty()) {
        auto parts = reply.initParts(static_cast<unsigned>(redirect.parts.size()));
        for (size_t i = 0; i < redirect.parts.size(); ++i) {
          parts[i].setAddress(redirect.parts[i].advertise);
          parts[i].setGpus(static_cast<uint32_t>(redirect.parts[i].gpus));
        }
      }
      (void)WriteFrame(*transport, wire::FrameKind::HELLO_REPLY, message);
      return;
    }
    if (!borrowed.ok()) {
      FERRY_LOG(kInfo) << "client " << transport->PeerName() << " pid " << hello.getPid()
                       << " gets no device: " << borrowed.message();
      if (borrowed.code() != StatusCode::kDisconnected || !transport->PeerGoneOrTalking()) {
        Refuse(*transport, borrowed);
      }
      // A preemption that came for a grant given back on the way.
      std::lock_guard<std::mutex> lock(mutex_);
      early_preemptions_.erase(id);
      return;
    }
  }
  if (!worker_command_.empty() && transport->CanHandOver()) {
    ServeClientInWorker(id, std::move(transport), hello, hello_words, std::move(grant), token,
                        arrival);
    return;
  }
  auto session = std::make_shared<Session>(id, std::move(transport), backend_, hello,
                                           std::move(grant), module_cache_.get());
  if (arrival != nullptr) {
    const SealedImage& sealed = *arrival->offer;
    SessionArrival from;
    from.offer = kj::heapArray<capnp::word>(arrival->offer_bytes / sizeof(capnp::word));
    std::memcpy(from.offer.begin(), sealed.data(), arrival->offer_bytes);
    from.bulk = backend::HostBytes{arrival->offer, sealed.data() + arrival->offer_bytes,
                                   sealed.size() - arrival->offer_bytes};
    from.address_hold = std::move(arrival->address_hold);
    session->SetArrival(std::move(from));
    arrival->offer.reset();  // the session's copy goes once it has arrived
  }
  session->SetBufferLimit(limits_.session_buffer_bytes);
  session->SetRdma(rdma_);
  session->SetMemoryPressure(MemoryPressureHook());
  if (session->grant().releasable) session->SetSliceLease(SliceLeaseFor(id, hello, session->grant()));
  if (token.has_value()) session->SetToken(token->name, token->id);
  std::string early_preemption;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    sessions_[id] = session;
    // Stop reaches the connection through the session from now on: the
    // transport registered at accept may be replaced (a move to shared
    // memory or RDMA destroys it) once Run starts.
    connections_.erase(id);
    if (stopping_) session->Stop();
    early_preemption = TakeEarlyPreemption(id);
  }
  // Preempted before it started: Run answers the handshake with the reason.
  if (!early_preemption.empty()) session->Preempt(early_preemption);
  session->Run();
  const SessionInfo final_figures = session->Info();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    sessions_.erase(id);
    ended_sessions_.Add(final_figures);
    connections_.erase(id);  // the transport dies with the session
  }
  // Run freed everything the session had: its slices can go to others.
  if (pool_ != nullptr) pool_->Return(id);
  {
    // A preemption that raced with the end has nobody to wait for it.
    std::lock_guard<std::mutex> lock(mutex_);
    early_preemptions_.erase(id);
  }
  LogSessionEnded(session->Info(), session->grant());
  session.reset();
}

Status Server::TakeWorker(const std::vector<std::string>& environment,
                          std::shared_ptr<SessionWorker>* out) {
  std::shared_ptr<SessionWorker> spare;
  if (environment.empty()) {
    std::lock_guard<std::mutex> lock(mutex_);
    spare = std::move(spare_worker_);
  }
  RefillSpareWorker();
  // A spare that died while it waited (it is reaped as it goes) is no use.
  if (spare != nullptr && !spare->Exited()) {
    *out = std::move(spare);
    return Status::Ok();
  }
  return SessionWorker::Spawn(worker_command_, environment, out, &worker_books_);
}

void Server::RefillSpareWorker() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (worker_command_.empty() || stopping_ || spare_worker_ != nullptr || spare_spawning_) {
      return;
    }
    spare_spawning_ = true;
    ++live_connections_;  // Stop waits for this thread too
  }
  std::thread([this] {
    std::shared_ptr<SessionWorker> worker;
    Status status = SessionWorker::Spawn(worker_command_, {}, &worker, &worker_books_);
    if (!status.ok()) {
      FERRY_LOG(kWarning) << "no spare session worker: " << status.message();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    if (status.ok() && !stopping_) spare_worker_ = std::move(worker);
    lock.unlock();
    worker.reset();  // not wanted (ferryd stops): ended and reaped before Stop returns
    lock.lock();
    spare_spawning_ = false;
    --live_connections_;
    connections_cv_.notify_all();
  }).detach();
}

std::string Server::TakeEarlyPreemption(uint64_t id) {
  auto it = early_preemptions_.find(id);
  if (it == early_preemptions_.end()) return "";
  std::string reason = std::move(it->second);
  early_preemptions_.erase(it);
  return reason;
}

void Server::ServeClientInWorker(uint64_t id, std::unique_ptr<Transport> transport,
                                 wire::Hello::Reader hello,
                                 std::span<const capnp::word> hello_words, SessionGrant grant,
                                 const std::optional<auth::Token>& token,
                                 const std::shared_ptr<PendingArrival>& arrival) {
  const std::string who = "session " + std::to_string(id) + " (" + transport->PeerName() +
                          ", pid " + std::to_string(hello.getPid()) + ", " +
                          hello.getProgram().cStr() + "@" + hello.getHost().cStr() + ")";
  // Chosen here, where --compute-sharing is known; MPS's settings are the
  // worker's environment, so they go with the spawn.
  grant = WithComputeMechanisms(backend_, std::move(grant), sharing_);
  const std::vector<std::string> environment = MpsEnvironment(grant);
  std::shared_ptr<SessionWorker> worker;
  Status status = TakeWorker(environment, &worker);
  // A session from another server: its offer and bytes, sealed, go beside.
  std::shared_ptr<const SealedImage> arrival_bytes;
  uint64_t arrival_offer_bytes = 0;
  if (arrival != nullptr) {
    arrival_bytes = arrival->offer;
    arrival_offer_bytes = arrival->offer_bytes;
  }
  SessionInfo basics;
  basics.id = id;
  basics.client = transport->PeerName();
  basics.pid = hello.getPid();
  basics.host = hello.getHost().cStr();
  basics.program = hello.getProgram().cStr();
  basics.since_unix_ms = absl::ToUnixMillis(absl::Now());
  basics.device_bytes.assign(grant.devices.size(), 0);
  if (token.has_value()) {
    basics.token_name = token->name;
    basics.token_id = token->id;
  }
  // TLS: the client will run a new TLS session with the worker and prove
  // itself with this secret (server/session_worker.h).
  std::vector<uint8_t> tls_secret;
  if (status.ok() && transport->Encrypted()) {
    tls_secret.resize(32);
    if (Status random = RandomBytes(tls_secret.data(), tls_secret.size()); !random.ok()) {
      status = Status::Internal(random.message() + ": no hand-over secret");
    } else {
      capnp::MallocMessageBuilder message;
      auto reply = message.initRoot<wire::HelloReply>();
      StatusToWire(Status::Ok(), reply.initStatus());
      reply.setHandoverSecret(capnp::Data::Reader(tls_secret.data(), tls_secret.size()));
      status = WriteFrame(*transport, wire::FrameKind::HELLO_REPLY, message);
    }
  }
  std::string early_preemption;
  TransportHandover handover;
  if (status.ok()) {
    // From here on Stop must not touch the transport: its descriptors move
    // to the worker (and their numbers may be reused here).
    std::lock_guard<std::mutex> lock(mutex_);
    connections_.erase(id);
    early_preemption = TakeEarlyPreemption(id);
  }
  bool released = false;
  if (status.ok()) {
    status = transport->Release(&handover);
    released = status.ok();
  }
  if (status.ok()) {
    status = worker->Start(id, handover, hello_words, grant, limits_.session_buffer_bytes,
                           early_preemption, basics, rdma_, tls_secret, arrival_bytes,
                           arrival_offer_bytes);
    if (!status.ok()) {
      // The worker died before it took the client (a spare that died
      // waiting): one more, new.
      FERRY_LOG(kWarning) << who << ": its worker did not take it (" << status.message()
                          << "); starting another";
      status = SessionWorker::Spawn(worker_command_, environment, &worker, &worker_books_);
      if (status.ok()) {
        status = worker->Start(id, handover, hello_words, grant, limits_.session_buffer_bytes,
                               early_preemption, basics, rdma_, tls_secret, arrival_bytes,
                               arrival_offer_bytes);
      }
    }
  }
  if (!status.ok()) {
    FERRY_LOG(kError) << who << " could not start: " << status.message();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      connections_.erase(id);
    }
    // Tell the client why, on the connection as it stands (a TLS one whose
    // session ended for the hand-over cannot be told: it closes).
    if (released) {
      std::unique_ptr<Transport> back;
      const bool adopted = !handover.fds.empty() &&
                           handover.kind != TransportHandover::Kind::kTlsRestart &&
                           AdoptTransport(std::move(handover), &back).ok();
      transport = adopted ? std::move(back) : nullptr;
    }
    if (transport != nullptr) {
      Refuse(*transport,
             Status::Internal("ferryd could not start this session: " + status.message()));
    }
    if (pool_ != nullptr) pool_->Return(id);
    // After the return: a preemption until then may have stored one.
    std::lock_guard<std::mutex> lock(mutex_);
    early_preemptions_.erase(id);
    return;
  }
  transport.reset();  // released: its descriptors are the worker's
  if (arrival != nullptr) arrival->offer.reset();  // the worker has its own mapping
  FERRY_LOG(kDebug) << who << " runs in worker process " << worker->pid();
  std::string late_preemption;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    sessions_[id] = worker;
    if (stopping_) worker->Stop();
    late_preemption = TakeEarlyPreemption(id);
  }
  // A preemption between the hand-over and the line above found no session.
  if (!late_preemption.empty()) {
    pool::Preemption preemption;
    preemption.session = id;
    preemption.reason = late_preemption;
    PreemptSession(preemption);
  }
  worker->SetMemoryPressure(MemoryPressureHook());
  if (grant.releasable) worker->SetSliceLease(SliceLeaseFor(id, hello, grant));
  const std::string ended = worker->Supervise(module_cache_.get());
  if (!ended.empty()) {
    FERRY_LOG(kWarning) << who << " ended: its worker process " << worker->pid() << " " << ended
                        << "; everything it held is gone with it";
  }
  bool stopping = false;
  const SessionInfo final_figures = worker->Info();  // the link is closed: what it last said
  {
    std::lock_guard<std::mutex> lock(mutex_);
    sessions_.erase(id);
    ended_sessions_.Add(final_figures);
    stopping = stopping_;
  }
  // The worker has exited: its memory is free, so its slices can go.
  if (pool_ != nullptr) pool_->Return(id);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    early_preemptions_.erase(id);
  }
  LogWorkerSessionEnded(*worker, ended, stopping);
}

namespace {

// How long the client lets a borrow wait in the queue (FERRY_WAIT). A wait
// longer than a year is a year (and never overflows absl::Time).
absl::Duration WaitOf(wire::Hello::Reader hello) {
  constexpr uint64_t kMaxWaitMs = 366ull * 24 * 3600 * 1000;
  return absl::Milliseconds(static_cast<int64_t>(std::min(hello.getWaitMs(), kMaxWaitMs)));
}

}  // namespace

Status Server::BorrowFor(uint64_t id, Transport& transport, wire::Hello::Reader hello,
                         const std::optional<auth::Token>& token, SessionGrant* grant,
                         ClusterRedirect* redirect) {
  pool::BorrowRequest request;
  request.session = id;
  request.pool = hello.getPool().cStr();
  request.gpus = static_cast<int>(std::clamp<uint32_t>(hello.getGpus(), 1, 1024));
  request.wait = WaitOf(hello);
  request.host = hello.getHost().cStr();
  request.pid = hello.getPid();
  request.program = hello.getProgram().cStr();
  const std::string wanted = request.pool.empty() ? "the default pool" : "pool " + request.pool;
  if (token.has_value()) {
    // Checked before the borrow: a token that may not have the pool takes
    // no place in its queue.
    const std::string pool = request.pool.empty() ? pool_->default_pool() : request.pool;
    if (!token->MayBorrowFrom(pool)) {
      std::string pools;
      for (const std::string& p : token->pools) pools += (pools.empty() ? "" : ", ") + p;
      return Status::PermissionDenied(token->Describe() + " may not borrow from pool " + pool +
                                      " (its pools: " + pools + ")");
    }
  }
  pool::Lease lease;
  const auto gone = [&transport] { return transport.PeerGoneOrTalking(); };
  const auto report_position = [&](int position) {
    FERRY_LOG(kInfo) << "client " << transport.PeerName() << " pid " << request.pid
                     << " waits for " << wanted << ": position " << position << " in the queue"
                     << (cluster_ != nullptr ? " of the cluster" : "");
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<wire::HelloReply>();
    StatusToWire(Status::Ok(), reply.initStatus());
    reply.setQueuePosition(static_cast<uint32_t>(position));
    reply.setPool(request.pool);
    (void)WriteFrame(transport, wire::FrameKind::HELLO_REPLY, message);
  };
  if (cluster_ != nullptr) {
    return ClusterBorrow(request, hello, gone, report_position, grant, redirect, transport);
  }
  FERRY_RETURN_IF_ERROR(pool_->Borrow(request, gone, report_position, &lease));
  GrantFromLease(lease, transport, request, grant);
  return Status::Ok();
}

Status Server::ClusterBorrow(pool::BorrowRequest request, wire::Hello::Reader hello,
                             const std::function<bool()>& gone,
                             const std::function<void(int)>& report_position, SessionGrant* grant,
                             ClusterRedirect* redirect, Transport& transport) {
  // How often a waiting borrow looks at the cluster's queue and free slices.
  // Only how soon a freed slice elsewhere reaches the oldest waiter depends
  // on it.
  constexpr auto kQueuePoll = std::chrono::milliseconds(200);
  // A client is sent on at most this often for one borrow, so it never circles.
  constexpr uint32_t kMaxRedirects = 2;
  // An unknown pool has an empty queue: the first Borrow below refuses it,
  // naming the pools there are.
  if (request.pool.empty()) request.pool = pool_->default_pool();
  const bool may_redirect = hello.getFollowsRedirects() && hello.getRedirects() < kMaxRedirects;
  // One part of a borrow split across servers, more parts to come: the
  // claim leaves the ticket for the next part's server.
  const auto ticket_use = hello.getTicketStays()
                              ? cluster::ClusterMember::TicketUse::kLeaveForNextPart
                              : cluster::ClusterMember::TicketUse::kSpend;
  // A borrow of more devices than this server has GPUs never fits here, but
  // may fit on a bigger server or across several: for a client that can be
  // sent on, it is "no room here", not a refusal (the pool's).
  const bool more_than_here =
      may_redirect && request.gpus > static_cast<int>(gpus_.size()) && pool_->HasPool(request.pool);
  const absl::Time deadline = absl::Now() + request.wait;
  std::string ticket = hello.getQueueTicket().cStr();
  if (!ticket.empty() && !cluster_->AdoptTicket(request.session, request.pool, ticket).ok()) {
    FERRY_LOG(kInfo) << "client pid " << request.pid << ": its place in the cluster's queue is "
                     << "gone; it queues again";
    ticket.clear();
  }
  // Whatever ends the wait below without a grant gives its place up.
  absl::Cleanup leave_queue = [&] {
    if (!ticket.empty()) cluster_->Dequeue(request.session);
  };
  // Takes a place at the end of the cluster's queue (`ticket`).
  const auto enqueue = [&] {
    cluster::WaiterRecord waiter;
    waiter.pool = request.pool;
    waiter.gpus = request.gpus;
    waiter.host = request.host;
    waiter.pid = request.pid;
    waiter.program = request.program;
    waiter.since_unix_ms = absl::ToUnixMillis(absl::Now());
    waiter.deadline_unix_ms = absl::ToUnixMillis(deadline);
    return cluster_->Enqueue(request.session, waiter, &ticket);
  };
  int reported = 0;
  for (;;) {
    std::vector<cluster::QueueEntry> queue;
    if (Status read = cluster_->ReadQueue(request.pool, &queue); !read.ok()) {
      return Status::Disconnected("cannot read the cluster's queue of pool " + request.pool +
                                  ": " + read.message() + "; new borrows fail until it answers");
    }
    auto mine = std::find_if(queue.begin(), queue.end(),
                             [&](const cluster::QueueEntry& e) { return e.ticket == ticket; });
    if (!ticket.empty() && mine == queue.end()) {
      FERRY_LOG(kInfo) << "client pid " << request.pid << " lost its place in the cluster's "
                       << "queue (it expired while etcd was away); it queues again";
      cluster_->Dequeue(request.session);
      ticket.clear();
    }
    const bool my_turn = ticket.empty() ? queue.empty() : mine == queue.begin();
    Status here = Status::Overloaded(
        std::to_string(queue.size()) + " borrower(s) wait ahead in the cluster's queue of pool " +
        request.pool);
    if (my_turn) {
      pool::BorrowRequest at_once = request;
      at_once.wait = absl::ZeroDuration();
      pool::Lease lease;
      if (more_than_here) {
        here = Status::Overloaded("this server has " + std::to_string(gpus_.size()) +
                                  " GPU(s), fewer than the " + std::to_string(request.gpus) +
                                  " devices wanted");
      } else {
        here = pool_->Borrow(at_once, gone, [](int) {}, &lease);
      }
      if (here.ok()) {
        // The fence: the slices are claimed in etcd (spending the ticket)
        // before the session starts, or given back here.
        here = ClaimInCluster(lease, ticket, ticket_use);
        if (!here.ok()) pool_->Return(request.session);
      }
      if (here.ok()) {
        if (!ticket.empty() && ticket_use != cluster::ClusterMember::TicketUse::kSpend) {
          FERRY_LOG(kInfo) << "client pid " << request.pid << " borrowed a part of a borrow "
                           << "split across servers; its place in the cluster's queue stays "
                           << "for the next part";
        }
        ticket.clear();  // spent by the claim, or left for the next part's server
        GrantFromLease(lease, transport, request, grant);
        return Status::Ok();
      }
      if (here.code() != StatusCode::kOverloaded) return here;
      std::string advertise;
      if (may_redirect || request.wait <= absl::ZeroDuration()) {
        advertise = ClusterRoomFor(request);
      }
      if (!advertise.empty() && !may_redirect && request.wait <= absl::ZeroDuration()) {
        // A client that cannot follow (an older ferry), or sent on enough.
        return Status::Overloaded(here.message() + "; the server at " + advertise +
                                  " has room (FERRY_SERVER=" + advertise + ")");
      }
      if (!advertise.empty() && may_redirect) {
        redirect->address = advertise;
        redirect->pool = request.pool;
        if (!ticket.empty()) cluster_->HandOffTicket(request.session);
        redirect->ticket = ticket;
        ticket.clear();  // travels with the client
        return Status::Ok();
      }
      if (advertise.empty() && may_redirect && hello.getFollowsParts() && request.gpus > 1) {
        std::vector<cluster::BorrowPart> parts = ClusterSplitFor(request);
        if (!parts.empty()) {
          // The parts are borrowed one after another: the ticket keeps the
          // borrow's place at the head of the queue until the last is
          // claimed, so nobody takes the room meanwhile (even without
          // FERRY_WAIT). Unused, it expires with its lease.
          if (ticket.empty()) {
            FERRY_RETURN_IF_ERROR(enqueue());
          }
          redirect->parts = std::move(parts);
          redirect->pool = request.pool;
          cluster_->HandOffTicket(request.session);
          redirect->ticket = ticket;
          ticket.clear();  // travels with the client
          return Status::Ok();
        }
      }
    }
    if (request.wait <= absl::ZeroDuration()) {
      // The pool's own refusal says how to queue; so does this one.
      return my_turn ? here
                     : Status::Overloaded(here.message() +
                                          " (set FERRY_WAIT, e.g. FERRY_WAIT=5m, to queue)");
    }
    if (ticket.empty()) {
      FERRY_RETURN_IF_ERROR(enqueue());
      continue;  // its position
    }
    const int position = static_cast<int>(mine - queue.begin()) + 1;
    if (position != reported) {
      reported = position;
      report_position(position);
    }
    if (absl::Now() >= deadline) {
      return Status::Overloaded("waited " + absl::FormatDuration(request.wait) +
                                " in the cluster's queue of pool " + request.pool +
                                " without a slice (position " + std::to_string(position) + ")");
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      connections_cv_.wait_for(lock, kQueuePoll, [this] { return stopping_; });
      if (stopping_) return Status::Disconnected("ferryd is stopping");
    }
    if (gone()) return Status::Disconnected("the client went away while it waited");
  }
}

void Server::GrantFromLease(const pool::Lease& lease, const Transport& transport,
                              const pool::BorrowRequest& request, SessionGrant* grant) const {
  grant->pooled = true;
  grant->pool = lease.pool;
  if (pool_ != nullptr) grant->park_after = pool_->ParkAfter(lease.pool);
  // Idle release needs parking, and a pool of this server alone: in a
  // cluster the slices are claimed in etcd, which a borrow again would have
  // to claim anew (not built).
  grant->releasable = pool_ != nullptr && cluster_ == nullptr && backend_.CanParkMemory();
  for (const pool::SliceGrant& slice : lease.slices) {
    SessionDevice device;
    device.backend_device = BackendDeviceOf(slice.gpu);
    device.memory_quota = slice.memory_quota;
    device.compute_share = slice.compute_share;
    device.gpu = slice.gpu;
    device.slice = slice.slice;
    device.slices_per_gpu = slice.slices_per_gpu;
    grant->devices.push_back(device);
  }
  FERRY_LOG(kInfo) << "client " << transport.PeerName() << " pid " << request.pid << " borrowed "
                   << lease.slices.size() << " slice(s) of pool " << lease.pool;
}

int Server::BackendDeviceOf(int gpu_index) const {
  // gpus_ is fixed after Start: no lock needed.
  auto gpu = std::find_if(gpus_.begin(), gpus_.end(),
                          [&](const ServedGpu& g) { return g.index == gpu_index; });
  return gpu != gpus_.end() ? gpu->backend_device : 0;
}

void Server::PreemptSession(const pool::Preemption& preemption) {
  std::shared_ptr<ServedSession> session;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return;  // Stop ends every session anyway
    auto it = sessions_.find(preemption.session);
    if (it == sessions_.end()) {
      // Granted, but its session has not started: it starts preempted.
      early_preemptions_[preemption.session] = preemption.reason;
      return;
    }
    session = it->second;
    ++live_connections_;  // Stop waits for this worker too
  }
  // Freeing may wait for the session's queued GPU work: not on the caller's
  // thread (the pool's timer, a control connection).
  std::thread([this, session, preemption] {
    // The quota goes back only once the memory is free: when Preempt closes
    // the session instead, its connection thread returns it after Run.
    if (session->Preempt(preemption.reason)) pool_->Return(preemption.session);
    std::lock_guard<std::mutex> lock(mutex_);
    --live_connections_;
    connections_cv_.notify_all();
  }).detach();
}

Status Server::CanMoveBetweenGpus() const {
  if (cluster_ != nullptr) {
    return Status::Unimplemented("migration is not built for a cluster's pool yet");
  }
  if (!backend_.CanMoveTenants()) {
    return Status::Unimplemented(std::string("the ") + std::string(backend_.Name()) +
                                 " backend cannot move a session to another GPU yet");
  }
  return Status::Ok();
}

Status Server::Migrate(uint64_t id, int gpu, int device, std::string* summary) {
  if (pool_ == nullptr) {
    return Status::Unimplemented(
        "ferryd runs without pools: every session has every GPU already, nothing to move to");
  }
  FERRY_RETURN_IF_ERROR(CanMoveBetweenGpus());
  std::shared_ptr<ServedSession> session;
  FERRY_RETURN_IF_ERROR(FindSession(id, &session));
  const SessionGrant grant = session->grant();
  if (device < 0) {
    if (grant.devices.size() != 1) {
      return Status::InvalidArgument("session " + std::to_string(id) + " has " +
                                     std::to_string(grant.devices.size()) +
                                     " devices: say which (--device)");
    }
    device = 0;
  }
  if (static_cast<size_t>(device) >= grant.devices.size()) {
    return Status::InvalidArgument("session " + std::to_string(id) + " has no device " +
                                   std::to_string(device));
  }
  auto served = std::find_if(gpus_.begin(), gpus_.end(),
                             [gpu](const ServedGpu& g) { return g.index == gpu; });
  if (served == gpus_.end()) {
    return Status::NotFound("this ferryd serves no GPU " + std::to_string(gpu));
  }
  const SessionDevice from = grant.devices[device];
  // The target slice is the session's from here on, and its old one stays
  // held until its memory has left it (FinishMove), or the move is undone.
  pool::SliceGrant slice;
  FERRY_RETURN_IF_ERROR(pool_->MoveSlice(id, from.gpu, gpu, from.slice, &slice));
  std::string pause;
  FERRY_RETURN_IF_ERROR(MoveToReservedSlice(id, *session, device, slice, &pause));
  *summary = "session " + std::to_string(id) + " moved from GPU " + std::to_string(from.gpu) +
             " to GPU " + std::to_string(gpu) + " (its calls paused " + pause + ")\n";
  FERRY_LOG(kInfo) << "ferryctl migrate: " << summary->substr(0, summary->size() - 1);
  return Status::Ok();
}

Status Server::MoveToReservedSlice(uint64_t id, ServedSession& session, int device,
                                   const pool::SliceGrant& slice, std::string* pause) {
  const SessionDevice from = session.grant().devices[device];
  SessionDevice to = from;
  to.backend_device = BackendDeviceOf(slice.gpu);
  to.gpu = slice.gpu;
  to.slice = slice.slice;
  to.slices_per_gpu = slice.slices_per_gpu;
  to.memory_quota = slice.memory_quota;
  to.compute_share = slice.compute_share;
  to.sm_partition_sms = 0;
  to.mps_thread_percentage = 0;
  ChooseComputeMechanism(backend_, &to, sharing_);
  const auto started = std::chrono::steady_clock::now();
  Status moved = session.MoveDevice(device, to);
  if (!moved.ok()) {
    pool_->CancelMove(id);
    return moved.WithContext("session " + std::to_string(id) + " stays on GPU " +
                             std::to_string(from.gpu));
  }
  pool_->FinishMove(id);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f ms", ms);
  *pause = text;
  return Status::Ok();
}

void Server::MigrateForRebind(const pool::Migration& migration) {
  const std::string what =
      "on_rebind = migrate " + migration.rebind + ": session " + std::to_string(migration.session);
  // Why it cannot move at all; else the session, counted in live_connections_.
  std::string refusal;
  std::shared_ptr<ServedSession> session;
  const Status can_move = CanMoveBetweenGpus();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = sessions_.find(migration.session);
    if (stopping_) {
      refusal = "ferryd is stopping";
    } else if (!can_move.ok()) {
      refusal = can_move.message();
    } else if (it == sessions_.end()) {
      refusal = "its session has not started yet";
    } else {
      session = it->second;
      ++live_connections_;  // Stop waits for this mover too
    }
  }
  if (session == nullptr) {
    FERRY_LOG(kWarning) << what << " stays on GPU " << migration.from.gpu << ": " << refusal;
    pool_->CancelMove(migration.session);
    return;
  }
  // A move waits for the session's batch in execution and its streams: not
  // on the caller's thread (the pool's timer, a control connection).
  std::thread([this, session, migration, what] {
    const SessionGrant grant = session->grant();
    int device = -1;
    for (size_t i = 0; i < grant.devices.size(); ++i) {
      if (grant.devices[i].gpu == migration.from.gpu &&
          grant.devices[i].slice == migration.from.slice) {
        device = static_cast<int>(i);
      }
    }
    std::string pause;
    const Status moved =
        device < 0
            ? Status::NotFound("it has no device on GPU " + std::to_string(migration.from.gpu))
            : MoveToReservedSlice(migration.session, *session, device, migration.to, &pause);
    if (device < 0) pool_->CancelMove(migration.session);
    if (moved.ok()) {
      FERRY_LOG(kInfo) << what << " moved from GPU " << migration.from.gpu << " to GPU "
                       << migration.to.gpu << " (slice " << migration.to.slice + 1 << "/"
                       << migration.to.slices_per_gpu << "; its calls paused " << pause << ")";
    } else {
      FERRY_LOG(kWarning) << what << " could not move to GPU " << migration.to.gpu
                          << ", so it drains: " << moved.message();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    --live_connections_;
    connections_cv_.notify_all();
  }).detach();
}

void Server::FillPoolStatus(wire::PoolStatus::Builder out) {
  if (pool_ == nullptr) {
    out.setEnabled(false);
    return;
  }
  absl::Time now;
  const pool::PoolSnapshot snapshot = pool_->Snapshot(&now);
  // Memory in use per (session, GPU), from the sessions themselves.
  std::map<std::pair<uint64_t, int>, uint64_t> used;
  for (const auto& session : LiveSessions()) {  // asked outside the lock (Sessions)
    const SessionInfo info = session->Info();
    const SessionGrant& grant = session->grant();
    for (size_t i = 0; i < grant.devices.size() && i < info.device_bytes.size(); ++i) {
      used[{info.id, grant.devices[i].gpu}] += info.device_bytes[i];
    }
  }
  out.setEnabled(true);
  if (cluster_ != nullptr) {
    out.setClusterName(cluster_->options().name);
    out.setClusterEtcd(cluster_->store().Describe());
    out.setClusterPrefix(cluster_->options().prefix);
    out.setClusterRegistered(cluster_->registered());
  }
  out.setConfigFile(pool_->config_path());
  out.setNowUnixMs(UnixMs(now));
  out.setTestClock(pool_->uses_test_clock());
  auto gpus = out.initGpus(static_cast<unsigned>(snapshot.gpus.size()));
  for (size_t i = 0; i < snapshot.gpus.size(); ++i) {
    const pool::GpuSnapshot& g = snapshot.gpus[i];
    auto o = gpus[static_cast<unsigned>(i)];
    o.setIndex(static_cast<uint32_t>(g.index));
    o.setPool(g.pool);
    o.setSource(SourceName(g.source));
    o.setWindow(g.window);
    o.setDrained(g.drained);
    o.setMemory(g.memory);
    o.setSlicesPerGpu(static_cast<uint32_t>(g.slices_per_gpu));
    o.setFreeSlices(static_cast<uint32_t>(g.free_slices));
    o.setNextChangeUnixMs(UnixMs(g.next_change));
    o.setNextPool(g.next_pool);
    auto holders = o.initHolders(static_cast<unsigned>(g.holdings.size()));
    for (size_t h = 0; h < g.holdings.size(); ++h) {
      const pool::HoldingSnapshot& in = g.holdings[h];
      auto ho = holders[static_cast<unsigned>(h)];
      ho.setSessionId(in.session);
      ho.setPool(in.pool);
      ho.setSlice(static_cast<uint32_t>(in.slice.slice));
      ho.setSlicesPerGpu(static_cast<uint32_t>(in.slice.slices_per_gpu));
      ho.setMemoryQuota(in.slice.memory_quota);
      auto u = used.find({in.session, g.index});
      ho.setMemoryUsed(u != used.end() ? u->second : 0);
      ho.setComputeShare(in.slice.compute_share);
      // The same choice the holder's session made (the backend's answer
      // for a device and slice count never changes).
      SessionDevice device;
      device.backend_device = BackendDeviceOf(g.index);
      device.compute_share = in.slice.compute_share;
      device.slice = in.slice.slice;
      device.slices_per_gpu = in.slice.slices_per_gpu;
      ChooseComputeMechanism(backend_, &device, sharing_);
      ho.setMechanism(ComputeMechanism(device));
      ho.setHost(in.host);
      ho.setPid(in.pid);
      ho.setProgram(in.program);
      ho.setSinceUnixMs(UnixMs(in.since));
      ho.setDrainDeadlineUnixMs(UnixMs(in.deadline));
      ho.setPreempting(in.preempting);
    }
    auto released = o.initReleased(static_cast<unsigned>(g.released.size()));
    for (size_t r = 0; r < g.released.size(); ++r) {
      const pool::HoldingSnapshot& in = g.released[r];
      auto ro = released[static_cast<unsigned>(r)];
      ro.setSessionId(in.session);
      ro.setPool(in.pool);
      ro.setSlice(static_cast<uint32_t>(in.slice.slice));
      ro.setSlicesPerGpu(static_cast<uint32_t>(in.slice.slices_per_gpu));
      ro.setMemoryQuota(in.slice.memory_quota);
      ro.setHost(in.host);
      ro.setPid(in.pid);
      ro.setProgram(in.program);
      ro.setSinceUnixMs(UnixMs(in.since));
      ro.setDrainDeadlineUnixMs(UnixMs(in.deadline));
    }
  }
  auto queue = out.initQueue(static_cast<unsigned>(snapshot.queue.size()));
  for (size_t i = 0; i < snapshot.queue.size(); ++i) {
    const pool::WaiterSnapshot& w = snapshot.queue[i];
    auto o = queue[static_cast<unsigned>(i)];
    o.setPosition(static_cast<uint32_t>(w.position));
    o.setSessionId(w.session);
    o.setPool(w.pool);
    o.setGpus(static_cast<uint32_t>(w.gpus));
    o.setHost(w.host);
    o.setPid(w.pid);
    o.setProgram(w.program);
    o.setSinceUnixMs(UnixMs(w.since));
    o.setDeadlineUnixMs(UnixMs(w.deadline));
  }
  out.setNextChangeUnixMs(UnixMs(snapshot.next_change));
  out.setNextChangeGpu(snapshot.next_change_gpu);
  out.setNextChangePool(snapshot.next_change_pool);
}

Status Server::HandleControl(wire::ControlRequest::Reader request,
                             wire::ControlReply::Builder reply,
                             const std::optional<auth::Token>& token) {
  using R = wire::ControlRequest;
  std::string summary;
  // Everything but status changes what ferryd does: admin tokens only.
  if (token.has_value() && !token->admin && request.which() != R::STATUS) {
    FERRY_LOG(kWarning) << "ferryctl with " << token->Describe()
                        << " refused a mutating request: not an admin token";
    return Status::PermissionDenied(token->Describe() +
                                    " is not an admin token: only status is allowed");
  }
  switch (request.which()) {
    case R::STATUS: {
      auto sessions = Sessions();
      auto list = reply.initSessions(static_cast<unsigned>(sessions.size()));
      for (size_t i = 0; i < sessions.size(); ++i) {
        const SessionInfo& s = sessions[i];
        auto out = list[static_cast<unsigned>(i)];
        out.setId(s.id);
        out.setClient(s.client);
        out.setPid(s.pid);
        out.setHost(s.host);
        out.setProgram(s.program);
        out.setBytesAllocated(s.bytes_allocated);
        out.setAllocations(s.allocations);
        out.setContexts(s.contexts);
        out.setStreams(s.streams);
        out.setEvents(s.events);
        out.setModules(s.modules);
        out.setSinceUnixMs(s.since_unix_ms);
        out.setTransport(s.transport);
        out.setParkedBytes(s.parked_bytes);
        out.setParks(s.parks);
        out.setUnparks(s.unparks);
        out.setIdleMs(s.idle_ms);
        out.setSlicesReleased(s.slices_released);
      }
      FillPoolStatus(reply.initPool());
      return Status::Ok();
    }
    case R::RELOAD:
      if (Status status = Reload(&summary); !status.ok()) {
        FERRY_LOG(kWarning) << "ferryctl reload: " << status.message();
        return status;
      }
      break;
    case R::REBIND: {
      if (pool_ == nullptr) return Status::InvalidArgument("ferryd runs without pools");
      auto args = request.getRebind();
      std::optional<pool::RebindPolicy> policy;
      const std::string name = args.getPolicy().cStr();
      if (name == "drain") {
        policy = pool::RebindPolicy::kDrain;
      } else if (name == "preempt") {
        policy = pool::RebindPolicy::kPreempt;
      } else if (name == "migrate") {
        policy = pool::RebindPolicy::kMigrate;
      } else if (!name.empty()) {
        return Status::InvalidArgument("rebind policy '" + name +
                                       "' is not drain, preempt or migrate");
      }
      std::optional<absl::Duration> grace;
      if (args.getGraceMs() >= 0) grace = absl::Milliseconds(args.getGraceMs());
      FERRY_RETURN_IF_ERROR(
          pool_->Rebind(static_cast<int>(std::min<uint32_t>(args.getGpu(), 1 << 20)),
                        args.getPool().cStr(), policy, grace, &summary));
      break;
    }
    case R::DRAIN: {
      if (pool_ == nullptr) return Status::InvalidArgument("ferryd runs without pools");
      auto args = request.getDrain();
      FERRY_RETURN_IF_ERROR(
          pool_->SetDrained(static_cast<int>(std::min<uint32_t>(args.getGpu(), 1 << 20)),
                            args.getDrained(), &summary));
      break;
    }
    case R::MIGRATE: {
      auto args = request.getMigrate();
      if (args.getServer().size() > 0) {
        FERRY_RETURN_IF_ERROR(MigrateToServer(
            args.getSession(), args.getServer().cStr(),
            static_cast<int>(std::min<uint32_t>(args.getGpu(), 1 << 20)), args.getToken().cStr(),
            &summary));
        break;
      }
      FERRY_RETURN_IF_ERROR(Migrate(args.getSession(),
                                    static_cast<int>(std::min<uint32_t>(args.getGpu(), 1 << 20)),
                                    args.getDevice(), &summary));
      break;
    }
    case R::TEST_ADVANCE_CLOCK: {
      if (pool_ == nullptr) return Status::InvalidArgument("ferryd runs without pools");
      FERRY_RETURN_IF_ERROR(
          pool_->AdvanceTestClock(absl::Milliseconds(request.getTestAdvanceClock()), &summary));
      break;
    }
    default:
      return Status::Unimplemented("unknown control request");
  }
  reply.setMessage(summary);
  return Status::Ok();
}

void Server::ServeControl(Transport& transport, const std::optional<auth::Token>& token) {
  {
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<wire::HelloReply>();
    StatusToWire(Status::Ok(), reply.initStatus());
    reply.setDriverVersion(backend_.DriverVersion());
    reply.setBackend(std::string(backend_.Name()));
    if (!WriteFrame(transport, wire::FrameKind::HELLO_REPLY, message).ok()) return;
  }
  for (;;) {
    Frame frame;
    // ferryctl's requests are small and carry no bulk.
    if (!ReadFrame(transport, &frame, kControlFrameLimits).ok()) return;
    if (frame.kind != wire::FrameKind::CONTROL_REQUEST) return;
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<wire::ControlReply>();
    reply.setBackend(std::string(backend_.Name()));
    try {
      capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
      Status status = HandleControl(reader.getRoot<wire::ControlRequest>(), reply, token);
      StatusToWire(status, reply.initStatus());
    } catch (const kj::Exception& e) {
      return;
    }
    if (!WriteFrame(transport, wire::FrameKind::CONTROL_REPLY, message).ok()) return;
  }
}

Status Server::FindSession(uint64_t id, std::shared_ptr<ServedSession>* out) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return Status::NotFound("no session " + std::to_string(id));
  *out = it->second;
  return Status::Ok();
}

std::vector<std::shared_ptr<ServedSession>> Server::LiveSessions() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::shared_ptr<ServedSession>> live;
  for (const auto& [id, session] : sessions_) live.push_back(session);
  return live;
}

Session::MemoryPressure Server::MemoryPressureHook() {
  return [this](int device, uint64_t bytes, uint64_t requester) {
    return RelieveMemoryPressure(device, bytes, requester);
  };
}

uint64_t Server::RelieveMemoryPressure(int backend_device, uint64_t bytes, uint64_t requester) {
  // Candidates: sessions on that device whose pool lets their memory be
  // parked, idle long enough, not parked yet; the longest idle first.
  struct Candidate {
    std::shared_ptr<ServedSession> session;
    SessionInfo info;
    absl::Duration park_after;
  };
  std::vector<Candidate> candidates;
  for (const auto& session : LiveSessions()) {
    const SessionGrant& grant = session->grant();
    if (!grant.park_after.has_value()) continue;
    const bool on_device =
        std::any_of(grant.devices.begin(), grant.devices.end(),
                    [&](const SessionDevice& d) { return d.backend_device == backend_device; });
    if (!on_device) continue;
    SessionInfo info = session->Info();
    if (info.id == requester || info.parked || !info.started || info.bytes_allocated == 0 ||
        absl::Milliseconds(info.idle_ms) < *grant.park_after) {
      continue;
    }
    candidates.push_back({session, std::move(info), *grant.park_after});
  }
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    return a.info.idle_ms > b.info.idle_ms;
  });
  const std::string reason = "device " + std::to_string(backend_device) + " is short of " +
                             std::to_string(bytes) + " bytes for session " +
                             std::to_string(requester);
  uint64_t parked = 0;
  for (const Candidate& candidate : candidates) {
    if (parked >= bytes) break;
    uint64_t moved = 0;
    // Only what leaves this device makes room on it.
    Status status = candidate.session->Park(candidate.park_after, reason, backend_device, &moved);
    if (!status.ok()) {
      FERRY_LOG(kDebug) << "session " << candidate.info.id << " not parked: " << status.message();
      continue;
    }
    parked += moved;
  }
  if (parked == 0) {
    FERRY_LOG(kDebug) << reason << ", and no idle session's memory could be parked ("
                     << candidates.size() << " idle candidate(s))";
  }
  return parked;
}

Session::SliceLease Server::SliceLeaseFor(uint64_t id, wire::Hello::Reader hello,
                                          const SessionGrant& grant) {
  pool::BorrowRequest request;
  request.session = id;
  request.pool = grant.pool;
  request.gpus = static_cast<int>(grant.devices.size());
  request.wait = WaitOf(hello);
  request.host = hello.getHost().cStr();
  request.pid = hello.getPid();
  request.program = hello.getProgram().cStr();
  // request.pinned is filled at each borrow again: the same slices, where
  // the session's contexts and address ranges are (and an SM partition,
  // where one enforces the share, is the slice's).
  Session::SliceLease lease;
  lease.give_back = [this, id] { return pool_->ReleaseSlices(id); };
  lease.borrow_again = [this, request](const std::function<bool()>& gone) {
    // The slices the pool took back (a migration may have moved them since
    // the session started).
    pool::BorrowRequest again = request;
    again.pinned = pool_->ReleasedSlices(request.session);
    if (again.pinned.empty()) {
      return Status::Overloaded("the pool no longer keeps this session's slices");
    }
    const std::string who = "session " + std::to_string(request.session) + " (pid " +
                            std::to_string(request.pid) + ", " + request.program + "@" +
                            request.host + ")";
    const auto report_position = [&](int position) {
      FERRY_LOG(kInfo) << who << " waits to borrow its slice(s) of pool " << request.pool
                       << " again: position " << position << " in the queue";
    };
    pool::Lease granted;
    return pool_->Borrow(again, gone, report_position, &granted);
  };
  return lease;
}

void Server::WarnIfIdleReleaseCannotApply() const {
  if (pool_ == nullptr || !pool_->ShortestIdleRelease().has_value()) return;
  if (cluster_ != nullptr) {
    FERRY_LOG(kWarning) << "idle_release is not applied in a cluster yet: idle sessions keep "
                        << "their slices";
  } else if (!backend_.CanParkMemory()) {
    FERRY_LOG(kWarning) << "the pool config sets idle_release, but the " << backend_.Name()
                        << " backend cannot park memory: idle sessions keep their slices";
  }
}

void Server::ReleaseIdleSessionsLoop() {
  // How often sessions are looked at: a quarter of the shortest
  // idle_release (a session goes at most that much late), within bounds.
  constexpr absl::Duration kFastest = absl::Milliseconds(50);
  constexpr absl::Duration kSlowest = absl::Seconds(5);
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    lock.unlock();
    const std::optional<absl::Duration> shortest = pool_->ShortestIdleRelease();
    if (shortest.has_value()) ReleaseIdleSessions();
    const absl::Duration period =
        shortest.has_value() ? std::clamp(*shortest / 4, kFastest, kSlowest) : kSlowest;
    lock.lock();
    idle_release_cv_.wait_for(lock, absl::ToChronoMilliseconds(period),
                              [this] { return stopping_; });
  }
}

void Server::ReleaseIdleSessions() {
  for (const auto& session : LiveSessions()) {
    const SessionGrant& grant = session->grant();
    if (!grant.releasable) continue;
    // Read at each look: a reload applies to sessions already holding.
    const std::optional<absl::Duration> after = pool_->IdleRelease(grant.pool);
    if (!after.has_value()) continue;
    const SessionInfo info = session->Info();
    // idle_ms is 0 before the first call and during a batch.
    if (info.slices_released || !info.started || !info.end_reason.empty() || info.idle_ms == 0 ||
        absl::Milliseconds(info.idle_ms) < *after) {
      continue;
    }
    uint64_t parked = 0;
    const Status status = session->ReleaseIdle(*after, &parked);
    if (!status.ok()) {
      // Busy after all (a call came meanwhile): the next look tries again.
      FERRY_LOG(kDebug) << "session " << info.id << " not released: " << status.message();
    }
  }
}

std::vector<SessionInfo> Server::Sessions() const {
  // Asked outside the lock: a worker takes up to SessionWorker::kInfoTimeout
  // to answer, and handshakes must not wait for it.
  std::vector<SessionInfo> out;
  for (const auto& session : LiveSessions()) out.push_back(session->Info());
  return out;
}

void Server::Stop() {
  // No scrape runs while the rest stops (one may be asking the sessions).
  if (metrics_.endpoint != nullptr) metrics_.endpoint->Stop();
  // Waiting borrowers give up first; their connection threads then finish.
  if (pool_ != nullptr) pool_->Stop();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ && !io_thread_.joinable()) return;
    stopping_ = true;
    for (auto& [id, transport] : connections_) transport->Shutdown();
    // Sessions in worker processes: their connections are theirs.
    for (auto& [id, session] : sessions_) session->Stop();
  }
  idle_release_cv_.notify_all();
  connections_cv_.notify_all();  // arrivals waiting for their clients (ServeMigration)
  if (idle_release_thread_.joinable()) idle_release_thread_.join();
  asio::post(io_, [this] {
    for (auto& acceptor : acceptors_) {
      asio::error_code ignored;
      acceptor->close(ignored);
    }
    for (auto& acceptor : unix_acceptors_) {
      asio::error_code ignored;
      acceptor->close(ignored);
    }
  });
  if (io_thread_.joinable()) io_thread_.join();
  std::unique_lock<std::mutex> lock(mutex_);
  connections_cv_.wait(lock, [this] { return live_connections_ == 0; });
  // The spare had no session: closing its link ends it, and its destructor
  // reaps it.
  std::shared_ptr<SessionWorker> spare = std::move(spare_worker_);
  lock.unlock();
  if (spare != nullptr) spare->Stop();
  spare.reset();
  lock.lock();
  for (const std::string& path : unix_paths_) ::unlink(path.c_str());
  unix_paths_.clear();
  lock.unlock();
  // Every session has ended: the server leaves the cluster at once rather
  // than when its lease runs out.
  if (cluster_ != nullptr) cluster_->Leave();
}

}  // namespace ferry::server
