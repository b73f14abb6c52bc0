// EtcdServer: see etcd_server.h.
#include "test/support/etcd_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "test/support/net.h"
#include "test/support/wait.h"

namespace ferry::test {
namespace {

constexpr std::chrono::seconds kServeTimeout{15};  // from exec to serving
constexpr std::chrono::seconds kStopTimeout{5};    // SIGTERM to exit
constexpr int kPortAttempts = 3;                   // a free port may be taken before etcd binds it

// etcd from PATH, else the Debian package's path; "" when there is none.
std::string FindEtcd() {
  std::vector<std::string> candidates;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream dirs(path);
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
      if (!dir.empty()) candidates.push_back(dir + "/etcd");
    }
  }
  candidates.push_back("/usr/bin/etcd");
  for (const std::string& candidate : candidates) {
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// Sends `request` (a whole HTTP/1.0 request) to 127.0.0.1:`port` and
// returns everything read until the server closes; "" on failure. Each step
// is bounded by a socket timeout.
std::string HttpExchange(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  timeval timeout{};
  timeout.tv_usec = 500 * 1000;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  std::string answer;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size())) {
    char buffer[4096];
    ssize_t got = 0;
    while ((got = recv(fd, buffer, sizeof(buffer), 0)) > 0) answer.append(buffer, got);
  }
  close(fd);
  return answer;
}

// Whether etcd says it is healthy (it has a leader and answers a read).
bool Healthy(int port) {
  return HttpExchange(port, "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
             .find("\"health\":\"true\"") != std::string::npos;
}

std::string MakeDirectory() {
  std::string pattern = ::testing::TempDir() + "ferry-etcd-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) return "";
  return pattern;
}

}  // namespace

std::unique_ptr<EtcdServer> EtcdServer::Start(std::string* error) {
  const std::string binary = FindEtcd();
  if (binary.empty()) {
    *error =
        "etcd is not installed (no `etcd` on PATH nor /usr/bin/etcd): install the etcd-server "
        "package (scripts/install-deps.sh)";
    return nullptr;
  }
  const std::string directory = MakeDirectory();
  if (directory.empty()) {
    *error = "cannot make a temporary directory for etcd under " + ::testing::TempDir();
    return nullptr;
  }
  std::unique_ptr<EtcdServer> server(new EtcdServer(binary, directory));
  for (int attempt = 1; attempt <= kPortAttempts; ++attempt) {
    server->client_port_ = ClosedLoopbackPort();
    server->peer_port_ = ClosedLoopbackPort();
    if (server->peer_port_ == server->client_port_) server->peer_port_ = ClosedLoopbackPort();
    if (server->client_port_ < 0 || server->peer_port_ < 0 ||
        server->peer_port_ == server->client_port_) {
      *error = "no free loopback port for etcd";
      return nullptr;
    }
    // A failed first start may have left a half-made member behind.
    std::filesystem::remove_all(directory + "/data");
    if (server->Launch(error)) return server;
  }
  return nullptr;
}

EtcdServer::~EtcdServer() {
  process_.reset();  // SIGKILL and reap if still running
  std::error_code ignored;
  std::filesystem::remove_all(directory_, ignored);
}

std::string EtcdServer::endpoint() const {
  return "http://127.0.0.1:" + std::to_string(client_port_);
}

bool EtcdServer::running() const { return process_.has_value() && process_->running(); }

bool EtcdServer::Launch(std::string* error) {
  const std::string client_url = endpoint();
  const std::string peer_url = "http://127.0.0.1:" + std::to_string(peer_port_);
  // One member: a short election timeout makes it leader at once, and lets
  // etcd grant leases as short as 1 s (its floor is 1.5 election timeouts).
  const std::vector<std::string> argv = {
      binary_,
      "--name=ferry-test",
      "--data-dir=" + directory_ + "/data",
      "--listen-client-urls=" + client_url,
      "--advertise-client-urls=" + client_url,
      "--listen-peer-urls=" + peer_url,
      "--initial-advertise-peer-urls=" + peer_url,
      "--initial-cluster=ferry-test=" + peer_url,
      "--heartbeat-interval=10",
      "--election-timeout=100",
      "--logger=zap",
      "--log-level=warn",
  };
  std::string start_error;
  ++launches_;
  process_ = ChildProcess::Start(argv, {}, directory_ + "/etcd-" + std::to_string(launches_),
                                 &start_error);
  if (!process_.has_value()) {
    *error = "cannot start " + binary_ + ": " + start_error;
    return false;
  }
  const int port = client_port_;
  ChildProcess& process = *process_;
  const bool serving = WaitFor([&] { return process.Poll() || Healthy(port); }, kServeTimeout,
                               std::chrono::milliseconds(10)) &&
                       process.running();
  if (serving) return true;
  if (process.running()) process.Wait(std::chrono::milliseconds(0));  // SIGKILL, reap
  *error = "etcd did not serve on " + client_url + " within " +
           std::to_string(kServeTimeout.count()) + " s:\n" + process.Describe();
  return false;
}

void EtcdServer::Stop() {
  if (!running()) return;
  process_->Kill(SIGTERM);
  process_->Wait(kStopTimeout);  // SIGKILL after the timeout
}

void EtcdServer::Kill() {
  if (!running()) return;
  process_->Kill(SIGKILL);
  process_->Wait(kStopTimeout);
}

bool EtcdServer::Restart(std::string* error) {
  Stop();
  return Launch(error);
}

bool EtcdServer::Compact(int64_t revision, std::string* error) {
  const std::string body = "{\"revision\":\"" + std::to_string(revision) + "\",\"physical\":true}";
  const std::string answer =
      HttpExchange(client_port_,
                   "POST /v3/kv/compaction HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: "
                   "application/json\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\n\r\n" + body);
  if (answer.rfind("HTTP/1.0 200", 0) == 0 || answer.rfind("HTTP/1.1 200", 0) == 0) return true;
  *error = "etcd compaction to revision " + std::to_string(revision) + " failed: " + answer;
  return false;
}

std::string EtcdServer::Describe() const {
  return process_.has_value() ? process_->Describe() : std::string("etcd was never started");
}

}  // namespace ferry::test
