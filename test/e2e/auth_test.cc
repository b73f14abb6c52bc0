// Access to ferryd: tokens (who may borrow, from which pools, who may run
// admin commands), TLS on TCP, and the unix socket's mode and peer checks.
// Each test starts its own ferryd (host backend, the e2e host kernels) and
// runs real client processes (pool_client, launch) and ferryctl against it.
// Every refusal is followed by a client that is allowed, which must work: a
// refused peer never costs the others their ferryd. Certificates come from a
// test CA made here with the openssl command.
//
// Paths come from CMake as compile definitions (see CMakeLists.txt).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <capnp/serialize.h>

#include "common/frame.h"
#include "common/tls_transport.h"
#include "common/transport.h"
#include "test/support/child_process.h"
#include "test/support/ferryd.h"
#include "test/support/http_client.h"
#include "test/support/pool_config.h"
#include "test/support/prometheus_text_parser.h"
#include "test/support/raw_client.h"
#include "test/support/wait.h"

namespace ferry::e2e {
namespace {

using namespace std::chrono_literals;
using test::ChildProcess;
using test::ExitStatus;
using test::Tail;

constexpr auto kReadyTimeout = 10s;
constexpr auto kStopTimeout = 10s;
constexpr auto kProgramTimeout = 60s;
constexpr auto kPollInterval = 20ms;

// Two pools on one 64 MiB GPU; GPU 0 belongs to "dev" (no schedule).
std::string TwoPoolConfig() {
  return std::string("[server]\nbackend = \"host\"\nhost_kernels = [\"") + FERRY_E2E_HOST_KERNELS +
         "\"]\ndefault_pool = \"dev\"\n[[gpu]]\nindex = 0\nmemory = \"64MiB\"\n"
         "[pool.dev]\nslices_per_gpu = 4\n[pool.train]\nslices_per_gpu = 1\n";
}

class AccessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::MakeTempDir("ferry-auth-");
    ASSERT_FALSE(dir_.empty());
    token_file_ = dir_ + "/tokens.toml";
  }

  void TearDown() override {
    for (auto& program : programs_) {
      if (program.running()) program.Kill(SIGKILL);
    }
    const std::string failed = test::StopFerryd("ferryd", ferryd_, kStopTimeout);
    EXPECT_TRUE(failed.empty()) << failed;
    if (HasFailure()) {
      if (ferryd_.has_value()) std::cerr << "ferryd log:\n" << Tail(ferryd_->Stderr(), 12000);
      for (auto& program : programs_) std::cerr << program.Describe(3000) << "\n";
      std::cerr << "test files kept in " << dir_ << "\n";
    } else {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

  // Starts ferryd with `args` (plus the backend unless a config is given).
  void Start(std::vector<std::string> args) {
    bool has_config = false;
    for (const std::string& a : args) has_config |= a == "--config";
    if (!has_config) {
      args.insert(args.end(), {"--backend", "host", "--host-kernels", FERRY_E2E_HOST_KERNELS});
    }
    std::filesystem::remove(dir_ + "/ready");  // a ferryd started earlier wrote one
    std::string error;
    ferryd_ = test::StartFerryd(FERRY_E2E_FERRYD, args, dir_, kReadyTimeout, &address_, &error);
    ASSERT_TRUE(ferryd_.has_value()) << error;
  }

  // Starts ferryd on the two-pool config with the token file.
  void StartWithTokens() {
    ASSERT_TRUE(test::WriteTextFile(dir_ + "/ferryd.toml", TwoPoolConfig()));
    ASSERT_NO_FATAL_FAILURE(Start({"--config", dir_ + "/ferryd.toml", "--listen", "127.0.0.1:0",
                                   "--token-file", token_file_}));
  }

  // `ferryctl token create`; the secret it printed.
  std::string CreateToken(const std::string& pools, bool admin, const std::string& name) {
    std::vector<std::string> args = {"token",   "create", "--token-file", token_file_,
                                     "--pools", pools,    "--name",       name};
    if (admin) args.push_back("--admin");
    std::string out, err;
    const int code = Ferryctl(args, {}, &out, &err);
    EXPECT_EQ(code, 0) << err;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
  }

  // Runs ferryctl with `args` (and --server) in `env`; its exit code.
  int Ferryctl(std::vector<std::string> args, const std::map<std::string, std::string>& env,
               std::string* out, std::string* err = nullptr, const std::string& server = "") {
    args.insert(args.begin(), FERRY_E2E_FERRYCTL);
    if (args[1] != "token") {
      args.push_back("--server");
      args.push_back(server.empty() ? address_ : server);
    }
    std::string error;
    std::optional<ChildProcess> ctl =
        ChildProcess::Start(args, env, dir_ + "/ferryctl" + std::to_string(++runs_), &error);
    if (!ctl.has_value()) {
      ADD_FAILURE() << error;
      return -1;
    }
    const ExitStatus status = ctl->Wait(kProgramTimeout);
    *out = ctl->Stdout();
    if (err != nullptr) *err = ctl->Stderr();
    return status.exited ? status.code : -1;
  }

  // Starts `pool_client hold` (through ferry's libcuda) against `server`.
  ChildProcess* StartHolder(const std::map<std::string, std::string>& env,
                            const std::string& server = "") {
    const std::string name = "holder" + std::to_string(++runs_);
    std::string error;
    std::optional<ChildProcess> child = ChildProcess::Start(
        {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_pool_client", "hold", dir_ + "/release"},
        test::ClientEnv(FERRY_E2E_CLIENT_LIB_DIR, server.empty() ? address_ : server, env),
        dir_ + "/" + name, &error);
    if (!child.has_value()) {
      ADD_FAILURE() << error;
      return nullptr;
    }
    programs_.push_back(std::move(*child));
    return &programs_.back();
  }

  // Waits until `program` printed `text` (true) or ended without it.
  bool WaitForOutput(ChildProcess& program, const std::string& text) {
    const bool printed = test::WaitFor(
        [&] { return program.Stdout().find(text) != std::string::npos || program.Poll(); },
        kProgramTimeout, kPollInterval);
    return printed && program.Stdout().find(text) != std::string::npos;
  }

  // A holder in `env` that must be refused at cuInit with
  // CUDA_ERROR_NOT_PERMITTED; its stderr (the one log line naming why).
  std::string ExpectRefused(const std::map<std::string, std::string>& env,
                            const std::string& server = "") {
    ChildProcess* holder = StartHolder(env, server);
    if (holder == nullptr) return "";
    const ExitStatus status = holder->Wait(kProgramTimeout);
    EXPECT_TRUE(status.exited && status.code == 3) << holder->Describe();
    EXPECT_NE(holder->Stdout().find("CUINIT CUDA_ERROR_NOT_PERMITTED (800)"), std::string::npos)
        << holder->Describe();
    return holder->Stderr();
  }

  // A holder in `env` that must get its device; released at the end.
  void ExpectServed(const std::map<std::string, std::string>& env, const std::string& server = "") {
    ChildProcess* holder = StartHolder(env, server);
    ASSERT_NE(holder, nullptr);
    ASSERT_TRUE(WaitForOutput(*holder, "READY\n")) << holder->Describe();
    std::ofstream(dir_ + "/release") << "go\n";
    const ExitStatus status = holder->Wait(kProgramTimeout);
    EXPECT_TRUE(status.success()) << holder->Describe();
    std::filesystem::remove(dir_ + "/release");
  }

  std::string dir_;
  std::string token_file_;
  std::string address_;
  std::optional<ChildProcess> ferryd_;
  std::vector<ChildProcess> programs_;
  int runs_ = 0;
};

// --- tokens -----------------------------------------------------------------

TEST_F(AccessTest, MissingOrWrongTokensGetOneRefusalAndOthersAreServed) {
  const std::string token = CreateToken("*", false, "alice");
  ASSERT_EQ(token.rfind("ferry_", 0), 0u) << token;
  // The file holds the salted hash, never the secret, and only its owner reads it.
  std::ifstream in(token_file_);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(file.find(token.substr(6 + 17)), std::string::npos) << file;
  struct stat st {};
  ASSERT_EQ(::stat(token_file_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_NO_FATAL_FAILURE(StartWithTokens());

  const std::string missing = ExpectRefused({});
  EXPECT_NE(missing.find("requires a token: set FERRY_TOKEN"), std::string::npos) << missing;
  std::string wrong = token;
  wrong.back() = wrong.back() == '0' ? '1' : '0';
  const std::string refused = ExpectRefused({{"FERRY_TOKEN", wrong}});
  EXPECT_NE(refused.find("does not know this token"), std::string::npos) << refused;
  ExpectRefused({{"FERRY_TOKEN", "not-a-token"}});
  EXPECT_NE(ferryd_->Stderr().find("refused: no token"), std::string::npos);
  EXPECT_NE(ferryd_->Stderr().find("refused: its token is not in"), std::string::npos);
  // Nothing of the refused peers reached the pool: no holder, no waiter.
  std::string out;
  ASSERT_EQ(Ferryctl({"status", "-o", "json"}, {{"FERRY_TOKEN", token}}, &out), 0) << out;
  EXPECT_NE(out.find("\"holders\":[]"), std::string::npos) << out;
  EXPECT_NE(out.find("\"queue\":[]"), std::string::npos) << out;

  // The right token, from the environment or from a file, is served.
  ASSERT_NO_FATAL_FAILURE(ExpectServed({{"FERRY_TOKEN", token}}));
  ASSERT_TRUE(test::WriteTextFile(dir_ + "/my-token", token + "\n"));
  ASSERT_NO_FATAL_FAILURE(ExpectServed({{"FERRY_TOKEN_FILE", dir_ + "/my-token"}}));
}

// ferry's NVML answers through the program's own session, which its token
// authenticated: with a token file, a program reads its device through NVML,
// and NVML opened no session of its own.
TEST_F(AccessTest, NvmlUsesTheProgramsAuthenticatedSession) {
  const std::string token = CreateToken("*", false, "nvml");
  ASSERT_NO_FATAL_FAILURE(StartWithTokens());
  std::string error;
  std::optional<ChildProcess> program = ChildProcess::Start(
      {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_nvml_query"},
      test::ClientEnv(FERRY_E2E_CLIENT_LIB_DIR, address_,
                      {{"FERRY_TOKEN", token}, {"FERRY_E2E_NVML_SENSORS", "absent"}}),
      dir_ + "/nvml", &error);
  ASSERT_TRUE(program.has_value()) << error;
  const ExitStatus status = program->Wait(kProgramTimeout);
  EXPECT_TRUE(status.success() && program->Stdout().find("all checks passed") != std::string::npos)
      << program->Describe();
  // The next client's session is the second ferryd made: NVML made none.
  ChildProcess* holder = StartHolder({{"FERRY_TOKEN", token}});
  ASSERT_NE(holder, nullptr);
  ASSERT_TRUE(WaitForOutput(*holder, "READY\n")) << holder->Describe();
  std::string out;
  ASSERT_EQ(Ferryctl({"status", "-o", "json"}, {{"FERRY_TOKEN", token}}, &out), 0) << out;
  EXPECT_NE(out.find("\"id\":2,"), std::string::npos) << out;
  std::ofstream(dir_ + "/release") << "go\n";
  EXPECT_TRUE(holder->Wait(kProgramTimeout).success()) << holder->Describe();
}

TEST_F(AccessTest, ATokenBorrowsOnlyFromItsPools) {
  const std::string train_only = CreateToken("train", false, "trainer");
  const std::string dev = CreateToken("dev,train", false, "developer");
  ASSERT_NO_FATAL_FAILURE(StartWithTokens());
  // The default pool is dev: a train-only token may not borrow it.
  const std::string log = ExpectRefused({{"FERRY_TOKEN", train_only}});
  EXPECT_NE(log.find("may not borrow from pool dev (its pools: train)"), std::string::npos) << log;
  ExpectRefused({{"FERRY_TOKEN", train_only}, {"FERRY_POOL", "dev"}});
  ASSERT_NO_FATAL_FAILURE(ExpectServed({{"FERRY_TOKEN", dev}, {"FERRY_POOL", "dev"}}));
}

TEST_F(AccessTest, OnlyAdminTokensRunMutatingFerryctlCommands) {
  const std::string user = CreateToken("*", false, "user");
  const std::string admin = CreateToken("*", true, "ops");
  ASSERT_NO_FATAL_FAILURE(StartWithTokens());
  ChildProcess* holder = StartHolder({{"FERRY_TOKEN", user}});
  ASSERT_NE(holder, nullptr);
  ASSERT_TRUE(WaitForOutput(*holder, "READY\n")) << holder->Describe();

  std::string out, err;
  EXPECT_EQ(Ferryctl({"status"}, {}, &out, &err), 1);
  EXPECT_NE(err.find("requires a token"), std::string::npos) << err;
  EXPECT_EQ(Ferryctl({"status"}, {{"FERRY_TOKEN", user}}, &out, &err), 0) << err;
  for (const std::vector<std::string>& command :
       {std::vector<std::string>{"rebind", "0", "train", "--preempt"},
        std::vector<std::string>{"drain", "0"}, std::vector<std::string>{"reload"}}) {
    EXPECT_EQ(Ferryctl(command, {{"FERRY_TOKEN", user}}, &out, &err), 1) << command[0];
    EXPECT_NE(err.find("is not an admin token"), std::string::npos) << err;
  }
  // The holder was not preempted: its calls still work.
  EXPECT_TRUE(holder->running()) << holder->Describe();
  EXPECT_EQ(holder->Stdout().find("CALL FAILED"), std::string::npos) << holder->Describe();
  // An admin token drains and undrains (the flag form works as the variable).
  EXPECT_EQ(Ferryctl({"drain", "0", "--token", admin}, {}, &out, &err), 0) << err;
  EXPECT_EQ(Ferryctl({"undrain", "0"}, {{"FERRY_TOKEN", admin}}, &out, &err), 0) << err;
  std::ofstream(dir_ + "/release") << "go\n";
  EXPECT_TRUE(holder->Wait(kProgramTimeout).success()) << holder->Describe();
}

TEST_F(AccessTest, ATokenCreatedWhileFerrydRunsWorksAfterReload) {
  const std::string first = CreateToken("*", true, "first");
  ASSERT_NO_FATAL_FAILURE(StartWithTokens());
  const std::string later = CreateToken("*", false, "later");
  ExpectRefused({{"FERRY_TOKEN", later}});
  ASSERT_EQ(::kill(ferryd_->pid(), SIGHUP), 0);
  ASSERT_TRUE(
      test::WaitFor([&] { return ferryd_->Stderr().find("2 token(s)") != std::string::npos; },
                    kProgramTimeout, kPollInterval))
      << ferryd_->Stderr();
  ASSERT_NO_FATAL_FAILURE(ExpectServed({{"FERRY_TOKEN", later}}));
  // Revoked: listed no more, and refused once ferryd reloads.
  std::string out, err;
  ASSERT_EQ(Ferryctl({"token", "list", "--token-file", token_file_}, {}, &out, &err), 0) << err;
  EXPECT_NE(out.find("later"), std::string::npos) << out;
  const std::string later_id = later.substr(6, 16);
  ASSERT_EQ(Ferryctl({"token", "revoke", later_id, "--token-file", token_file_}, {}, &out, &err), 0)
      << err;
  ASSERT_EQ(Ferryctl({"token", "list", "--token-file", token_file_}, {}, &out, &err), 0) << err;
  EXPECT_EQ(out.find(later_id), std::string::npos) << out;
  EXPECT_NE(out.find("first"), std::string::npos) << out;
  ASSERT_EQ(Ferryctl({"reload"}, {{"FERRY_TOKEN", first}}, &out, &err), 0) << err;
  ExpectRefused({{"FERRY_TOKEN", later}});
  // A broken token file is refused by reload; the tokens loaded before stay.
  std::ofstream(token_file_, std::ios::app) << "[[token]]\nid = \"broken\"\n";
  EXPECT_EQ(Ferryctl({"reload"}, {{"FERRY_TOKEN", first}}, &out, &err), 1);
  EXPECT_NE(err.find("the old config and tokens stay"), std::string::npos) << err;
  ASSERT_NO_FATAL_FAILURE(ExpectServed({{"FERRY_TOKEN", first}}));
}

// An IPv4 address of this host that is not loopback (an interface that is
// up), or "" when it has none.
TEST_F(AccessTest, ATokenIsNeverSentInCleartextToAnotherHostUnlessAllowed) {
  const std::string token = CreateToken("*", true, "alice");
  // 192.0.2.1 (TEST-NET-1): the refusal comes before any connect, so it
  // names the cause whether or not anything answers there.
  const std::string remote = "192.0.2.1:7070";
  const std::string refused =
      ExpectRefused({{"FERRY_TOKEN", token}, {"FERRY_CONNECT_TIMEOUT_MS", "60000"}}, remote);
  EXPECT_NE(refused.find("refusing to send the token in cleartext to " + remote), std::string::npos)
      << refused;
  EXPECT_NE(refused.find("FERRY_ALLOW_PLAIN_TOKEN=1"), std::string::npos) << refused;
  std::string out, err;
  EXPECT_EQ(Ferryctl({"status"}, {{"FERRY_TOKEN", token}}, &out, &err, remote), 1);
  EXPECT_NE(err.find("refusing to send the token in cleartext to " + remote), std::string::npos)
      << err;
  EXPECT_NE(err.find("--allow-plain-token"), std::string::npos) << err;

  // With the opt-in the token may go: the stub gets past the check and fails
  // only to connect (nothing answers at TEST-NET-1). No ferryd listens off
  // loopback here: tests keep to loopback.
  ChildProcess* opted_in = StartHolder({{"FERRY_TOKEN", token},
                                        {"FERRY_ALLOW_PLAIN_TOKEN", "1"},
                                        {"FERRY_CONNECT_TIMEOUT_MS", "300"}},
                                       remote);
  ASSERT_NE(opted_in, nullptr);
  const ExitStatus status = opted_in->Wait(kProgramTimeout);
  EXPECT_TRUE(status.exited && status.code == 3) << opted_in->Describe();
  EXPECT_EQ(opted_in->Stderr().find("refusing to send the token"), std::string::npos)
      << opted_in->Describe();
  EXPECT_EQ(opted_in->Stdout().find("CUDA_ERROR_NOT_PERMITTED"), std::string::npos)
      << opted_in->Describe();
}

// --- TLS ----------------------------------------------------------------------

// Runs the openssl command; false (with a failure) if it fails.
bool OpenSsl(const std::string& dir, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {FERRY_E2E_OPENSSL};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string error;
  std::optional<ChildProcess> child = ChildProcess::Start(argv, {}, dir + "/openssl", &error);
  if (!child.has_value()) {
    ADD_FAILURE() << error;
    return false;
  }
  const ExitStatus status = child->Wait(kProgramTimeout);
  if (!status.success()) ADD_FAILURE() << child->Describe();
  return status.success();
}

// A CA (`name`.pem/.key) and, when `server` is set, a server certificate it
// signs for 127.0.0.1 and localhost (server.pem/.key).
bool MakeCa(const std::string& dir, const std::string& name, bool server) {
  const std::string ca = dir + "/" + name;
  if (!OpenSsl(dir, {"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-nodes", "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "2", "-subj",
                     "/CN=ferry test " + name})) {
    return false;
  }
  if (!server) return true;
  std::ofstream(dir + "/san.cnf") << "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
  return OpenSsl(dir, {"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                       "-keyout", dir + "/server.key", "-out", dir + "/server.csr", "-subj",
                       "/CN=localhost"}) &&
         OpenSsl(dir, {"x509", "-req", "-in", dir + "/server.csr", "-CA", ca + ".pem", "-CAkey",
                       ca + ".key", "-CAcreateserial", "-out", dir + "/server.pem", "-days", "2",
                       "-extfile", dir + "/san.cnf"});
}

class TlsTest : public AccessTest {
 protected:
  void StartTls(std::vector<std::string> extra = {}) {
    ASSERT_TRUE(MakeCa(dir_, "ca", true));
    ASSERT_TRUE(MakeCa(dir_, "other-ca", false));
    std::vector<std::string> args = {"--listen",           "127.0.0.1:0", "--tls-cert",
                                     dir_ + "/server.pem", "--tls-key",   dir_ + "/server.key"};
    args.insert(args.end(), extra.begin(), extra.end());
    ASSERT_NO_FATAL_FAILURE(Start(args));
  }
};

// FERRY_TRANSPORT=tcp: the calls and copies travel inside TLS (a client on
// ferryd's host would otherwise move to shared memory, below).
TEST_F(TlsTest, AProgramRunsItsCopiesAndLaunchesOverTls) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  std::string error;
  std::optional<ChildProcess> launch = ChildProcess::Start(
      {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_launch", FERRY_E2E_IMAGE_DIR},
      test::ClientEnv(FERRY_E2E_CLIENT_LIB_DIR, address_,
                      {{"FERRY_TLS_CA", dir_ + "/ca.pem"}, {"FERRY_TRANSPORT", "tcp"}}),
      dir_ + "/launch", &error);
  ASSERT_TRUE(launch.has_value()) << error;
  const ExitStatus status = launch->Wait(kProgramTimeout);
  EXPECT_TRUE(status.success()) << launch->Describe();
  EXPECT_NE(launch->Stdout().find("launch: all checks passed"), std::string::npos);
  EXPECT_NE(ferryd_->Stderr().find("transport=tls client_pid=" + std::to_string(launch->pid())),
            std::string::npos)
      << ferryd_->Stderr();
  // The session ran in a worker process (its log lines say ferryd-session-N):
  // the TLS connection was handed over (server/session_worker.h).
  EXPECT_NE(ferryd_->Stderr().find("ferryd-session-"), std::string::npos) << ferryd_->Stderr();
  // By name too: the certificate carries localhost.
  const std::string by_name = "localhost:" + address_.substr(address_.rfind(':') + 1);
  ASSERT_NO_FATAL_FAILURE(ExpectServed({{"FERRY_TLS_CA", dir_ + "/ca.pem"}}, by_name));
}

// A TLS client on ferryd's host moves to shared memory like a plain one: the
// invitation (socket name and nonce) comes inside TLS from the ferryd whose
// certificate the client checked, after the hand-over to the session's
// worker, and the shared region never leaves the host.
TEST_F(TlsTest, AProgramOverTlsOnFerrydsHostMovesToSharedMemory) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  std::string error;
  std::optional<ChildProcess> launch = ChildProcess::Start(
      {std::string(FERRY_E2E_PROGRAM_DIR) + "/e2e_launch", FERRY_E2E_IMAGE_DIR},
      test::ClientEnv(FERRY_E2E_CLIENT_LIB_DIR, address_, {{"FERRY_TLS_CA", dir_ + "/ca.pem"}}),
      dir_ + "/launch", &error);
  ASSERT_TRUE(launch.has_value()) << error;
  const ExitStatus status = launch->Wait(kProgramTimeout);
  EXPECT_TRUE(status.success()) << launch->Describe();
  EXPECT_NE(launch->Stdout().find("launch: all checks passed"), std::string::npos);
  EXPECT_NE(launch->Stderr().find("over shm, ring 8 MiB (moved from TLS: same host)"),
            std::string::npos)
      << launch->Describe();
  EXPECT_NE(ferryd_->Stderr().find("transport=\"shm, ring 8 MiB\" client_pid=" +
                                   std::to_string(launch->pid())),
            std::string::npos)
      << ferryd_->Stderr();
}

// A TLS session is handed to its worker through a new TLS session on the same
// socket, which the worker accepts only with the secret ferryd gave the
// client inside the first one. A peer whose second Hello lacks it gets the
// connection closed; ferryd goes on and the borrowed devices come back.
TEST_F(TlsTest, AHandOverWithoutTheSecretIsRefused) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  TlsClientConfig tls;
  tls.ca_file = dir_ + "/ca.pem";
  tls.server_name = "127.0.0.1";
  std::unique_ptr<Transport> transport;
  ASSERT_TRUE(ConnectTransportWithTls(address_, std::chrono::seconds(5), tls, &transport).ok());
  ASSERT_TRUE(test::WriteBytes(*transport, test::HelloFrame(wire::PROTOCOL_VERSION, 0)).ok());
  Frame frame;
  ASSERT_TRUE(ReadFrame(*transport, &frame).ok());
  ASSERT_EQ(frame.kind, wire::FrameKind::HELLO_REPLY);
  {
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    ASSERT_EQ(reader.getRoot<wire::HelloReply>().getHandoverSecret().size(), 32u);
  }
  ASSERT_TRUE(
      transport->FollowHandover(std::chrono::steady_clock::now() + std::chrono::seconds(10)).ok());
  // The Hello again, without the secret.
  ASSERT_TRUE(test::WriteBytes(*transport, test::HelloFrame(wire::PROTOCOL_VERSION, 0)).ok());
  transport->SetReadDeadline(std::chrono::steady_clock::now() + kProgramTimeout);
  Frame none;
  EXPECT_EQ(ReadFrame(*transport, &none).code(), StatusCode::kDisconnected);
  EXPECT_TRUE(test::WaitFor(
      [&] { return ferryd_->Stderr().find("lacks the hand-over secret") != std::string::npos; },
      kProgramTimeout, std::chrono::milliseconds(50)))
      << ferryd_->Stderr();
  ASSERT_NO_FATAL_FAILURE(ExpectServed({{"FERRY_TLS_CA", dir_ + "/ca.pem"}}));
}

TEST_F(TlsTest, UntrustedServersAndPlainClientsAreRefusedAndOthersServed) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  const std::string wrong_ca = ExpectRefused({{"FERRY_TLS_CA", dir_ + "/other-ca.pem"}});
  EXPECT_NE(wrong_ca.find("certificate does not verify"), std::string::npos) << wrong_ca;
  const std::string wrong_name = ExpectRefused(
      {{"FERRY_TLS_CA", dir_ + "/ca.pem"}, {"FERRY_TLS_SERVER_NAME", "gpu.example.org"}});
  EXPECT_NE(wrong_name.find("certificate does not verify"), std::string::npos) << wrong_name;
  const std::string plain = ExpectRefused({});
  EXPECT_NE(plain.find("speaks TLS only: set FERRY_TLS_CA"), std::string::npos) << plain;
  EXPECT_NE(ferryd_->Stderr().find("a plain (non-TLS) client on a TLS listener"),
            std::string::npos);
  ASSERT_NO_FATAL_FAILURE(ExpectServed({{"FERRY_TLS_CA", dir_ + "/ca.pem"}}));
}

TEST_F(TlsTest, FerryctlSpeaksTlsWithTokens) {
  const std::string admin = CreateToken("*", true, "ops");
  ASSERT_NO_FATAL_FAILURE(StartTls({"--token-file", token_file_}));
  std::string out, err;
  EXPECT_EQ(
      Ferryctl({"status", "--tls-ca", dir_ + "/ca.pem"}, {{"FERRY_TOKEN", admin}}, &out, &err), 0)
      << err;
  EXPECT_EQ(Ferryctl({"status"}, {{"FERRY_TOKEN", admin}}, &out, &err), 1);
  EXPECT_NE(err.find("speaks TLS only"), std::string::npos) << err;
  EXPECT_EQ(Ferryctl({"status", "--tls-ca", dir_ + "/other-ca.pem"}, {{"FERRY_TOKEN", admin}}, &out,
                     &err),
            1);
  EXPECT_NE(err.find("certificate does not verify"), std::string::npos) << err;
  // TLS and a token together carry a client.
  ASSERT_NO_FATAL_FAILURE(
      ExpectServed({{"FERRY_TLS_CA", dir_ + "/ca.pem"}, {"FERRY_TOKEN", admin}}));
  ExpectRefused({{"FERRY_TLS_CA", dir_ + "/ca.pem"}});
}

// /metrics (--metrics-listen) is served like the other listeners: over TLS
// with ferryd's certificate, and to requests with a token of the file.
TEST_F(TlsTest, MetricsAreServedOverTlsToTokenHolders) {
  const std::string token = CreateToken("dev", false, "scraper");
  ASSERT_NO_FATAL_FAILURE(
      StartTls({"--token-file", token_file_, "--metrics-listen", "127.0.0.1:0"}));
  std::ifstream ready(dir_ + "/ready");
  std::string first, second;
  ASSERT_TRUE(std::getline(ready, first) && std::getline(ready, second));
  ASSERT_EQ(second.rfind("metrics ", 0), 0u) << second;
  const std::string metrics = second.substr(8);
  EXPECT_NE(ferryd_->Stderr().find("metrics at https://" + metrics + "/metrics, tokens required"),
            std::string::npos)
      << ferryd_->Stderr();
  TlsClientConfig tls;
  tls.ca_file = dir_ + "/ca.pem";
  tls.server_name = "127.0.0.1";
  std::string error;
  std::optional<test::HttpResponse> scrape = test::HttpExchange(
      metrics, test::HttpGetRequest("/metrics", "Authorization: Bearer " + token + "\r\n"),
      kProgramTimeout, &error, tls);
  ASSERT_TRUE(scrape.has_value()) << error;
  EXPECT_EQ(scrape->status, 200);
  test::PromExposition parsed;
  EXPECT_EQ(test::ParsePrometheusText(scrape->body, &parsed), "") << scrape->body;
  EXPECT_EQ(parsed.Value("ferry_sessions"), 0.0);
  // Without the token: 401, inside TLS.
  std::optional<test::HttpResponse> refused =
      test::HttpExchange(metrics, test::HttpGetRequest("/metrics"), kProgramTimeout, &error, tls);
  ASSERT_TRUE(refused.has_value()) << error;
  EXPECT_EQ(refused->status, 401);
  // Plain HTTP gets no answer (the TLS handshake fails), nor does a client
  // that does not trust the certificate.
  EXPECT_FALSE(
      test::HttpExchange(metrics, test::HttpGetRequest("/metrics"), kProgramTimeout, &error)
          .has_value());
  TlsClientConfig other = tls;
  other.ca_file = dir_ + "/other-ca.pem";
  EXPECT_FALSE(
      test::HttpExchange(metrics, test::HttpGetRequest("/metrics"), kProgramTimeout, &error, other)
          .has_value());
  EXPECT_NE(error.find("certificate does not verify"), std::string::npos) << error;
  // ferryd and its clients are none the worse.
  ASSERT_NO_FATAL_FAILURE(
      ExpectServed({{"FERRY_TLS_CA", dir_ + "/ca.pem"}, {"FERRY_TOKEN", token}}));
}

// --- the unix socket ---------------------------------------------------------

TEST_F(AccessTest, TheUnixSocketIsOwnerAndGroupOnlyWithTheChosenGroup) {
  const std::string socket = dir_ + "/ferryd.sock";
  const gid_t group = ::getgid();
  ::umask(0);  // the mode must not depend on the umask
  ASSERT_NO_FATAL_FAILURE(
      Start({"--listen", "unix:" + socket, "--unix-group", std::to_string(group)}));
  struct stat st {};
  ASSERT_EQ(::stat(socket.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  EXPECT_EQ(st.st_gid, group);
  ASSERT_NO_FATAL_FAILURE(ExpectServed({}, "unix:" + socket));
}

TEST_F(AccessTest, UnixPeersOutsideTheAllowedIdsAreRefused) {
  const std::string socket = dir_ + "/ferryd.sock";
  const std::string other_uid = std::to_string(::getuid() + 4242);
  const std::string other_gid = std::to_string(::getgid() + 4242);
  // TCP first: the ready file (address_) names the first listener.
  ASSERT_NO_FATAL_FAILURE(Start({"--listen", "127.0.0.1:0", "--listen", "unix:" + socket,
                                 "--unix-allow-uid", other_uid, "--unix-allow-gid", other_gid}));
  const std::string refused = ExpectRefused({}, "unix:" + socket);
  EXPECT_NE(refused.find("uid " + std::to_string(::getuid()) + " gid"), std::string::npos)
      << refused;
  // TCP peers are not unix peers: still served.
  ASSERT_NO_FATAL_FAILURE(ExpectServed({}));
  test::StopFerryd("ferryd", ferryd_, kStopTimeout);
  ASSERT_NO_FATAL_FAILURE(Start({"--listen", "unix:" + socket, "--unix-allow-uid", other_uid,
                                 "--unix-allow-uid", std::to_string(::getuid())}));
  ASSERT_NO_FATAL_FAILURE(ExpectServed({}, "unix:" + socket));
}

}  // namespace
}  // namespace ferry::e2e
