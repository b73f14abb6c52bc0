// ferry-handshake-bench: what TLS and tokens add to starting a connection.
//
//   ferry-handshake-bench [--reps N]
//
// Runs an in-process ferryd (host backend) listening on loopback three ways —
// plain TCP, TLS (a P-256 certificate from a CA made for the run with the
// openssl command), TLS with a token file — and times N connections each:
// TCP connect, the TLS handshake where there is one, Hello (ferryctl's role,
// with a token where asked) and HelloReply. Prints the median and the 90th
// percentile per way, and the difference TLS makes; then the bulk bandwidth
// of a bare transport (one way, 1 MiB writes) plain and inside TLS, the
// ceiling TLS sets for copies. A timing, never a test.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/frame.h"
#include "common/tls_transport.h"
#include "server/auth/tokens.h"
#include "server/backend/host/host_backend.h"
#include "server/server.h"

namespace ferry {
namespace {

bool Run(const std::string& command) { return std::system(command.c_str()) == 0; }

// A CA and a server certificate for 127.0.0.1 in `dir`.
bool MakeCertificates(const std::string& dir) {
  const std::string q = " 2>/dev/null >/dev/null";
  return Run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " + dir +
             "/ca.key -out " + dir + "/ca.pem -days 1 -subj /CN=bench-ca" + q) &&
         Run("printf 'subjectAltName=IP:127.0.0.1\\n' > " + dir + "/san.cnf") &&
         Run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " + dir +
             "/server.key -out " + dir + "/server.csr -subj /CN=localhost" + q) &&
         Run("openssl x509 -req -in " + dir + "/server.csr -CA " + dir + "/ca.pem -CAkey " + dir +
             "/ca.key -CAcreateserial -out " + dir + "/server.pem -days 1 -extfile " + dir +
             "/san.cnf" + q);
}

// One connection's start: connect (+ TLS), Hello, HelloReply; microseconds.
double OneHandshake(const std::string& address, const std::optional<TlsClientConfig>& tls,
                    const std::string& token) {
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<Transport> transport;
  Status status = ConnectTransportWithTls(address, std::chrono::seconds(5), tls, &transport);
  if (status.ok()) {
    capnp::MallocMessageBuilder message;
    auto hello = message.initRoot<wire::Hello>();
    hello.setProtocolVersion(wire::PROTOCOL_VERSION);
    hello.setRole(wire::Hello::Role::CONTROL);
    hello.setToken(token);
    status = WriteFrame(*transport, wire::FrameKind::HELLO, message);
  }
  Frame frame;
  if (status.ok()) status = ReadFrame(*transport, &frame);
  if (status.ok()) {
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    status = StatusFromWire(reader.getRoot<wire::HelloReply>().getStatus());
  }
  const auto end = std::chrono::steady_clock::now();
  if (!status.ok()) {
    std::fprintf(stderr, "handshake failed: %s\n", status.ToString().c_str());
    std::exit(1);
  }
  return std::chrono::duration<double, std::micro>(end - start).count();
}

struct Figures {
  double median_us, p90_us;
};

Figures Measure(backend::GpuBackend& backend, int reps, const std::string& dir, bool tls,
                const std::string& token_file, const std::string& token) {
  server::Server server(backend, 0);
  if (tls) {
    Status status = server.SetTls(dir + "/server.pem", dir + "/server.key");
    if (!status.ok()) {
      std::fprintf(stderr, "%s\n", status.ToString().c_str());
      std::exit(1);
    }
  }
  if (!token_file.empty() && !server.SetTokenFile(token_file).ok()) std::exit(1);
  if (!server.Listen("127.0.0.1:0").ok()) std::exit(1);
  server.Start();
  const std::string address = server.BoundAddresses().front();
  std::optional<TlsClientConfig> client_tls;
  if (tls) client_tls = TlsClientConfig{dir + "/ca.pem", "127.0.0.1"};
  for (int i = 0; i < 10; ++i) OneHandshake(address, client_tls, token);  // warm up
  std::vector<double> us;
  for (int i = 0; i < reps; ++i) us.push_back(OneHandshake(address, client_tls, token));
  server.Stop();
  std::sort(us.begin(), us.end());
  return Figures{us[us.size() / 2], us[us.size() * 9 / 10]};
}

// MiB/s of `mib` MiB sent one way over loopback, plain or inside TLS.
double Bandwidth(bool tls, const std::string& dir, int mib) {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    std::exit(1);
  }
  const std::string where = "127.0.0.1:" + std::to_string(ntohs(address.sin_port));
  std::shared_ptr<TlsContext> server_tls;
  if (tls && !TlsContext::ForServer(dir + "/server.pem", dir + "/server.key", &server_tls).ok()) {
    std::exit(1);
  }
  auto received = std::async(std::launch::async, [&] {
    const int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    TuneTcpSocket(fd);
    std::unique_ptr<Transport> server;
    bool plain_peer = false;
    if (tls) {
      if (!AcceptTls(fd, "bench", *server_tls,
                     std::chrono::steady_clock::now() + std::chrono::seconds(10), &server,
                     &plain_peer)
               .ok())
        std::exit(1);
    } else {
      server = std::make_unique<SocketTransport>(fd, "bench");
    }
    std::vector<char> buffer(1 << 20);
    for (int i = 0; i < mib; ++i) {
      if (!server->ReadExact(buffer.data(), buffer.size()).ok()) std::exit(1);
    }
  });
  std::optional<TlsClientConfig> client_tls;
  if (tls) client_tls = TlsClientConfig{dir + "/ca.pem", "127.0.0.1"};
  std::unique_ptr<Transport> client;
  if (!ConnectTransportWithTls(where, std::chrono::seconds(5), client_tls, &client).ok()) {
    std::exit(1);
  }
  const std::vector<char> chunk(1 << 20, 'x');
  const ConstBuffer buffer{chunk.data(), chunk.size()};
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < mib; ++i) {
    if (!client->Write(std::span<const ConstBuffer>(&buffer, 1)).ok()) std::exit(1);
  }
  received.get();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ::close(listener);
  return mib / seconds;
}

int Main(int argc, char** argv) {
  int reps = 300;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--reps") reps = std::max(10, std::atoi(argv[i + 1]));
  }
  char dir_template[] = "/tmp/ferry-handshake-bench-XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) return 1;
  const std::string dir = dir_template;
  if (!MakeCertificates(dir)) {
    std::fprintf(stderr, "cannot make certificates with the openssl command\n");
    return 1;
  }
  auth::NewToken token;
  if (!auth::CreateToken("bench", {"*"}, true, &token).ok() ||
      !auth::AppendTokenEntry(dir + "/tokens.toml", token.entry).ok()) {
    return 1;
  }
  std::unique_ptr<backend::GpuBackend> backend;
  if (!backend::CreateHostBackend(backend::HostBackendOptions{}, &backend).ok()) return 1;
  const Figures plain = Measure(*backend, reps, dir, false, "", "");
  const Figures tls = Measure(*backend, reps, dir, true, "", "");
  const Figures tls_token = Measure(*backend, reps, dir, true, dir + "/tokens.toml", token.secret);
  std::printf("connection start (connect + Hello + HelloReply), loopback, %d reps\n", reps);
  std::printf("%-22s %10s %10s\n", "", "median us", "p90 us");
  std::printf("%-22s %10.0f %10.0f\n", "plain TCP", plain.median_us, plain.p90_us);
  std::printf("%-22s %10.0f %10.0f\n", "TLS", tls.median_us, tls.p90_us);
  std::printf("%-22s %10.0f %10.0f\n", "TLS + token", tls_token.median_us, tls_token.p90_us);
  std::printf("TLS adds %.0f us (median) per connection start\n", tls.median_us - plain.median_us);
  constexpr int kMiB = 1024;
  const double plain_bandwidth = Bandwidth(false, dir, kMiB);
  const double tls_bandwidth = Bandwidth(true, dir, kMiB);
  std::printf(
      "bulk one way over a bare transport, %d MiB in 1 MiB writes: plain %.0f MiB/s, "
      "TLS %.0f MiB/s\n",
      kMiB, plain_bandwidth, tls_bandwidth);
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::Main(argc, argv); }
