// TlsTransport (common/tls_transport.h) over real loopback sockets: bulk both
// ways at once (one reader and one writer per side, sharing the SSL object),
// Shutdown and the read deadline, a plain peer told apart, and a server
// that the client's CA did not sign refused, and the certificate's IP or DNS
// name checked. Certificates are made here with
// OpenSSL's API: a self-signed P-256 certificate per name.
#include "common/tls_transport.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "common/busy_poll.h"
#include "common/frame.h"
#include "test/support/ferryd.h"

namespace ferry {
namespace {

using namespace std::chrono_literals;

// Writes DIR/NAME.pem and DIR/NAME.key: a self-signed certificate (its own
// CA) whose subject alternative names are `names` (OpenSSL's form).
void MakeSelfSigned(const std::string& dir, const std::string& name,
                    const std::string& names = "IP:127.0.0.1") {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  ASSERT_NE(key, nullptr);
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
  X509_set_pubkey(cert, key);
  X509_NAME* subject = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(name.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert, subject);
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, cert, cert, nullptr, nullptr, 0);
  X509_EXTENSION* san =
      X509V3_EXT_conf_nid(nullptr, &context, NID_subject_alt_name, names.c_str());
  ASSERT_NE(san, nullptr);
  X509_add_ext(cert, san, -1);
  X509_EXTENSION_free(san);
  ASSERT_GT(X509_sign(cert, key, EVP_sha256()), 0);
  FILE* out = std::fopen((dir + "/" + name + ".pem").c_str(), "w");
  PEM_write_X509(out, cert);
  std::fclose(out);
  out = std::fopen((dir + "/" + name + ".key").c_str(), "w");
  PEM_write_PrivateKey(out, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(out);
  X509_free(cert);
  EVP_PKEY_free(key);
}

class TlsTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::MakeTempDir("ferry-tls-");
    ASSERT_FALSE(dir_.empty());
    ASSERT_NO_FATAL_FAILURE(MakeSelfSigned(dir_, "server"));
    ASSERT_NO_FATAL_FAILURE(MakeSelfSigned(dir_, "stranger"));
    ASSERT_TRUE(TlsContext::ForServer(dir_ + "/server.pem", dir_ + "/server.key", &server_).ok());
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    ASSERT_EQ(::listen(listener_, 4), 0);
    socklen_t length = sizeof(address);
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length);
    address_ = "127.0.0.1:" + std::to_string(ntohs(address.sin_port));
  }
  void TearDown() override {
    ::close(listener_);
    std::filesystem::remove_all(dir_);
  }

  // Accepts one connection as ferryd does (on another thread).
  std::future<Status> Accept(std::unique_ptr<Transport>* out, bool* plain_peer) {
    return std::async(std::launch::async, [this, out, plain_peer] {
      const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return Status::Internal("accept failed");
      return AcceptTls(fd, "test peer", *server_, std::chrono::steady_clock::now() + 10s, out,
                       plain_peer);
    });
  }

  std::optional<TlsClientConfig> Trusting(const std::string& name) {
    return TlsClientConfig{dir_ + "/" + name + ".pem", "127.0.0.1"};
  }

  std::string dir_;
  std::shared_ptr<TlsContext> server_;
  int listener_ = -1;
  std::string address_;
};

TEST_F(TlsTransportTest, CarriesBulkBothWaysAtOnce) {
  std::unique_ptr<Transport> server, client;
  bool plain = true;
  std::future<Status> accepted = Accept(&server, &plain);
  ASSERT_TRUE(ConnectTransportWithTls(address_, 5s, Trusting("server"), &client).ok());
  ASSERT_TRUE(accepted.get().ok());
  ASSERT_FALSE(plain);

  // Each side writes 24 MiB (in pieces of several sizes, small ones gathered)
  // while its other thread reads what the peer writes.
  constexpr size_t kBytes = 24 << 20;
  auto pattern = [](size_t i, uint8_t seed) { return static_cast<uint8_t>(i * 131 + seed); };
  auto writer = [&](Transport& t, uint8_t seed) {
    std::vector<uint8_t> data(kBytes);
    for (size_t i = 0; i < kBytes; ++i) data[i] = pattern(i, seed);
    Status status;
    for (size_t at = 0, piece = 7; at < kBytes && status.ok(); piece = piece * 3 % 1000003 + 5) {
      const size_t n = std::min(piece, kBytes - at);
      const ConstBuffer buffers[2] = {{data.data() + at, n / 2},
                                      {data.data() + at + n / 2, n - n / 2}};
      status = t.Write(buffers);
      at += n;
    }
    return status;
  };
  auto reader = [&](Transport& t, uint8_t seed) {
    std::vector<uint8_t> data(kBytes);
    Status status = t.ReadExact(data.data(), data.size());
    for (size_t i = 0; i < kBytes && status.ok(); ++i) {
      if (data[i] != pattern(i, seed)) status = Status::Internal("byte " + std::to_string(i));
    }
    return status;
  };
  auto client_writes = std::async(std::launch::async, writer, std::ref(*client), 1);
  auto server_writes = std::async(std::launch::async, writer, std::ref(*server), 2);
  auto server_reads = std::async(std::launch::async, reader, std::ref(*server), 1);
  Status client_read = reader(*client, 2);
  EXPECT_TRUE(client_read.ok()) << client_read.ToString();
  EXPECT_TRUE(client_writes.get().ok());
  EXPECT_TRUE(server_writes.get().ok());
  const Status server_read = server_reads.get();
  EXPECT_TRUE(server_read.ok()) << server_read.ToString();
}

TEST_F(TlsTransportTest, TheReadDeadlineAndShutdownEndWaits) {
  std::unique_ptr<Transport> server, client;
  bool plain = true;
  std::future<Status> accepted = Accept(&server, &plain);
  ASSERT_TRUE(ConnectTransportWithTls(address_, 5s, Trusting("server"), &client).ok());
  ASSERT_TRUE(accepted.get().ok());
  uint8_t byte = 0;
  server->SetReadDeadline(std::chrono::steady_clock::now() + 50ms);
  Status status = server->ReadExact(&byte, 1);
  EXPECT_EQ(status.code(), StatusCode::kDisconnected);
  EXPECT_NE(status.message().find("deadline"), std::string::npos) << status.message();
  server->SetReadDeadline(kNoDeadline);
  auto blocked = std::async(std::launch::async, [&] { return server->ReadExact(&byte, 1); });
  server->Shutdown();
  EXPECT_EQ(blocked.get().code(), StatusCode::kDisconnected);
  // The peer sees the connection end too; writing on fails with a status,
  // never SIGPIPE (which would end this test program).
  status = client->ReadExact(&byte, 1);
  EXPECT_EQ(status.code(), StatusCode::kDisconnected) << status.ToString();
  server.reset();  // closes the socket: now the peer's writes get EPIPE
  const std::vector<uint8_t> chunk(1 << 20, 0x5a);
  const ConstBuffer buffer{chunk.data(), chunk.size()};
  Status written;
  for (int i = 0; i < 64 && written.ok(); ++i) {
    written = client->Write(std::span<const ConstBuffer>(&buffer, 1));
  }
  EXPECT_EQ(written.code(), StatusCode::kDisconnected);
  EXPECT_NE(written.message().find("TLS write"), std::string::npos) << written.message();
}

// With a long busy-poll window (common/busy_poll.h) the reader spins on the
// socket before it sleeps: bytes still arrive whole, and the deadline and
// Shutdown still end its wait.
TEST_F(TlsTransportTest, BusyPollingReadsSeeBytesDeadlinesAndShutdown) {
  struct WindowScope {
    std::chrono::microseconds previous = BusyPollWindow();
    ~WindowScope() { SetBusyPollWindow(previous); }
  } scope;
  SetBusyPollWindow(std::chrono::microseconds(1000));
  std::unique_ptr<Transport> server, client;
  bool plain = true;
  std::future<Status> accepted = Accept(&server, &plain);
  ASSERT_TRUE(ConnectTransportWithTls(address_, 5s, Trusting("server"), &client).ok());
  ASSERT_TRUE(accepted.get().ok());
  for (int round = 0; round < 50; ++round) {
    const std::string call = "call " + std::to_string(round);
    auto answer = std::async(std::launch::async, [&] {
      std::string got(call.size(), '\0');
      Status status = server->ReadExact(got.data(), got.size());
      if (!status.ok()) return status;
      const ConstBuffer reply{got.data(), got.size()};
      return server->Write(std::span<const ConstBuffer>(&reply, 1));
    });
    const ConstBuffer buffer{call.data(), call.size()};
    ASSERT_TRUE(client->Write(std::span<const ConstBuffer>(&buffer, 1)).ok());
    std::string echoed(call.size(), '\0');
    ASSERT_TRUE(client->ReadExact(echoed.data(), echoed.size()).ok());
    EXPECT_EQ(echoed, call);
    ASSERT_TRUE(answer.get().ok());
  }
  uint8_t byte = 0;
  server->SetReadDeadline(std::chrono::steady_clock::now() + 30ms);
  Status status = server->ReadExact(&byte, 1);
  EXPECT_EQ(status.code(), StatusCode::kDisconnected);
  EXPECT_NE(status.message().find("deadline"), std::string::npos) << status.message();
  server->SetReadDeadline(kNoDeadline);
  auto blocked = std::async(std::launch::async, [&] { return server->ReadExact(&byte, 1); });
  server->Shutdown();
  ASSERT_EQ(blocked.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(blocked.get().code(), StatusCode::kDisconnected);
}

TEST_F(TlsTransportTest, APlainFerryPeerIsToldApart) {
  std::unique_ptr<Transport> server, client;
  bool plain = false;
  std::future<Status> accepted = Accept(&server, &plain);
  ASSERT_TRUE(ConnectTcp(address_, 5s, &client).ok());
  capnp::MallocMessageBuilder message;
  message.initRoot<wire::Hello>().setProtocolVersion(wire::PROTOCOL_VERSION);
  ASSERT_TRUE(WriteFrame(*client, wire::FrameKind::HELLO, message).ok());
  ASSERT_TRUE(accepted.get().ok());
  EXPECT_TRUE(plain);
  Frame frame;  // the plain transport reads the Hello as it came
  ASSERT_TRUE(ReadFrame(*server, &frame).ok());
  EXPECT_EQ(frame.kind, wire::FrameKind::HELLO);
}

TEST_F(TlsTransportTest, AServerTheCaDidNotSignIsRefused) {
  std::unique_ptr<Transport> server, client;
  bool plain = false;
  std::future<Status> accepted = Accept(&server, &plain);
  Status status = ConnectTransportWithTls(address_, 5s, Trusting("stranger"), &client);
  EXPECT_EQ(status.code(), StatusCode::kPermissionDenied) << status.ToString();
  EXPECT_NE(status.message().find("does not verify"), std::string::npos) << status.message();
  EXPECT_FALSE(accepted.get().ok());  // the server's handshake fails too, and says so
  // A name the certificate does not carry is refused the same way.
  accepted = Accept(&server, &plain);
  status = ConnectTransportWithTls(address_, 5s,
                                   TlsClientConfig{dir_ + "/server.pem", "gpu.example"}, &client);
  EXPECT_EQ(status.code(), StatusCode::kPermissionDenied) << status.ToString();
  EXPECT_FALSE(accepted.get().ok());
}

TEST_F(TlsTransportTest, TheCertificateMustCarryTheDnsNameAsked) {
  ASSERT_NO_FATAL_FAILURE(
      MakeSelfSigned(dir_, "named", "DNS:gpu.example.org,DNS:gpu*.example.net"));
  ASSERT_TRUE(TlsContext::ForServer(dir_ + "/named.pem", dir_ + "/named.key", &server_).ok());
  // Connects trusting the certificate, asking for `name`.
  auto connect = [&](const std::string& name) {
    std::unique_ptr<Transport> server, client;
    bool plain = false;
    std::future<Status> accepted = Accept(&server, &plain);
    Status status =
        ConnectTransportWithTls(address_, 5s, TlsClientConfig{dir_ + "/named.pem", name}, &client);
    const Status server_side = accepted.get();
    EXPECT_EQ(server_side.ok(), status.ok()) << server_side.ToString();
    return status;
  };
  Status status = connect("gpu.example.org");
  EXPECT_TRUE(status.ok()) << status.ToString();
  for (const std::string wrong : {"other.example.org", "example.org", "127.0.0.1",
                                  // a partial wildcard matches nothing
                                  "gpu1.example.net"}) {
    status = connect(wrong);
    EXPECT_EQ(status.code(), StatusCode::kPermissionDenied) << wrong << ": " << status.ToString();
    EXPECT_NE(status.message().find("does not verify"), std::string::npos) << status.message();
  }
  // No name at all would check none: refused before connecting (nothing
  // is accepted).
  std::unique_ptr<Transport> client;
  status = ConnectTransportWithTls(address_, 5s, TlsClientConfig{dir_ + "/named.pem", ""}, &client);
  EXPECT_EQ(status.code(), StatusCode::kPermissionDenied) << status.ToString();
  EXPECT_NE(status.message().find("no name to check"), std::string::npos) << status.message();
}

}  // namespace
}  // namespace ferry
