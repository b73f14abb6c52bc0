// The .deb packages as cpack builds them from this build (build_debs.sh, the
// ctest fixture "ferry_debs", unpacks them with dpkg -x into a scratch root):
// every file where README.md says, the stub off the default linker path,
// dependencies on the Debian packages of the libraries we link, a unit that
// systemd accepts, and the installed ferry-run running a program through the
// installed stub against the installed ferryd.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "ops_support.h"
#include "test/support/ferryd.h"

namespace ferry::test {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// What build_debs.sh left: the packages and the root they were unpacked into.
const std::string kPackages = FERRY_TEST_PACKAGE_DIR;
const std::string kRoot = kPackages + "/root";

std::string Deb(const std::string& name) {
  for (const auto& entry : fs::directory_iterator(kPackages)) {
    const std::string file = entry.path().filename().string();
    if (file.rfind(name + "_", 0) == 0 && entry.path().extension() == ".deb") {
      return entry.path().string();
    }
  }
  return "";
}

// `dpkg-deb ARGS...`'s stdout; a failure fails the test.
std::string DpkgDeb(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/usr/bin/dpkg-deb"};
  argv.insert(argv.end(), args.begin(), args.end());
  const std::string dir = MakeTempDir("dpkg_deb");
  RunResult run = RunToEnd(argv, {}, dir + "/dpkg-deb");
  EXPECT_TRUE(run.status.success()) << run.Describe();
  return run.out;
}

// The paths a package holds ("./usr/bin/ferryd" -> "/usr/bin/ferryd").
std::set<std::string> Contents(const std::string& deb) {
  std::set<std::string> paths;
  const std::string listing = DpkgDeb({"-c", deb});
  std::istringstream rows(listing);
  for (std::string row; std::getline(rows, row);) {
    const size_t dot = row.find(" ./");
    if (dot == std::string::npos) continue;
    std::string path = row.substr(dot + 2);
    path = path.substr(0, path.find(" -> "));
    if (path.size() > 1 && path.back() == '/') path.pop_back();
    paths.insert(path);
  }
  return paths;
}

class PackagingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = Deb("ferry-server");
    client_ = Deb("ferry-client");
    ASSERT_FALSE(server_.empty()) << "no ferry-server .deb in " << kPackages
                                  << " (the ferry_debs fixture, build_debs.sh, makes it)";
    ASSERT_FALSE(client_.empty()) << "no ferry-client .deb in " << kPackages;
  }
  std::string server_, client_;
};

TEST_F(PackagingTest, EachPackageHoldsItsFilesWhereTheReadmeSays) {
  const std::set<std::string> server = Contents(server_);
  const std::set<std::string> client = Contents(client_);
  for (const char* path : {"/usr/bin/ferryd", "/usr/lib/systemd/system/ferryd.service",
                           "/usr/lib/sysusers.d/ferry.conf", "/etc/ferry/ferryd.toml",
                           "/usr/include/ferry/ferry_host_kernel.h"}) {
    EXPECT_EQ(server.count(path), 1u) << path << " is not in ferry-server";
    EXPECT_TRUE(fs::exists(kRoot + path)) << path << " was not unpacked";
  }
  for (const char* path : {"/usr/bin/ferryctl", "/usr/bin/ferry-run", "/usr/lib/ferry/libcuda.so.1",
                           "/usr/lib/ferry/libnvidia-ml.so.1", "/etc/ferry/client.toml"}) {
    EXPECT_EQ(client.count(path), 1u) << path << " is not in ferry-client";
    EXPECT_TRUE(fs::exists(kRoot + path)) << path << " was not unpacked";
  }
  // The config files are dpkg conffiles: an operator's edits survive upgrades.
  const std::string dir = MakeTempDir("control");
  DpkgDeb({"-e", server_, dir + "/server"});
  DpkgDeb({"-e", client_, dir + "/client"});
  EXPECT_EQ(ReadWholeFile(dir + "/server/conffiles"), "/etc/ferry/ferryd.toml\n");
  EXPECT_EQ(ReadWholeFile(dir + "/client/conffiles"), "/etc/ferry/client.toml\n");
  EXPECT_TRUE(fs::exists(dir + "/server/postinst"));
  // The sample config turns authentication and TLS on, as the README's example.
  const std::string config = ReadWholeFile(kRoot + "/etc/ferry/ferryd.toml");
  EXPECT_NE(config.find("\ntoken_file = \"/var/lib/ferry/tokens.toml\""), std::string::npos);
  EXPECT_NE(config.find("\ntls_cert = \"/etc/ferry/"), std::string::npos);
}

TEST_F(PackagingTest, DependenciesNameTheDebianPackagesOfTheLibrariesWeLink) {
  const std::string server = DpkgDeb({"-f", server_, "Depends"});
  const std::string client = DpkgDeb({"-f", client_, "Depends"});
  EXPECT_NE(server.find("ferry-client (= " FERRY_TEST_VERSION ")"), std::string::npos) << server;
  for (const char* package : {"libcapnp-", "libabsl", "libssl3", "libzstd1", "liblz4-1",
                              "libtomlplusplus3", "libstdc++6", "libc6"}) {
    EXPECT_NE(server.find(package), std::string::npos) << package << " in " << server;
  }
  // ferryctl (capnp, TLS) and ferry-run (TOML); the stub links them statically.
  for (const char* package : {"libcapnp-", "libssl3", "libtomlplusplus3", "libc6"}) {
    EXPECT_NE(client.find(package), std::string::npos) << package << " in " << client;
  }
}

TEST_F(PackagingTest, TheStandInsAreNotOnTheDefaultLinkerPath) {
  // The directories the dynamic linker searches without LD_LIBRARY_PATH or
  // an ld.so.conf entry (glibc's trusted directories, multiarch included).
  const std::set<std::string> default_dirs = {"/lib",
                                              "/usr/lib",
                                              "/lib64",
                                              "/usr/lib64",
                                              "/lib/x86_64-linux-gnu",
                                              "/usr/lib/x86_64-linux-gnu",
                                              "/lib/aarch64-linux-gnu",
                                              "/usr/lib/aarch64-linux-gnu",
                                              "/usr/local/lib"};
  int stubs = 0;
  for (const auto& entry : fs::recursive_directory_iterator(kRoot)) {
    const std::string name = entry.path().filename().string();
    const std::string path = entry.path().string().substr(kRoot.size());
    if (name.rfind("libcuda.so", 0) == 0 || name.rfind("libnvidia-ml.so", 0) == 0) {
      ++stubs;
      EXPECT_EQ(entry.path().parent_path().string().substr(kRoot.size()), "/usr/lib/ferry");
      EXPECT_EQ(default_dirs.count(entry.path().parent_path().string().substr(kRoot.size())), 0u)
          << path;
    }
    EXPECT_NE(path.rfind("/etc/ld.so.conf", 0), 0u) << path << " would put ferry on the path";
  }
  EXPECT_GE(stubs, 3);  // libcuda.so.1 (and its libcuda.so link), libnvidia-ml.so.1
}

TEST_F(PackagingTest, SystemdAcceptsTheUnit) {
  const std::string analyze = "/usr/bin/systemd-analyze";
  if (!fs::exists(analyze)) {
    const char* ci = std::getenv("CI");
    ASSERT_FALSE(ci != nullptr && std::string(ci) == "true")
        << "systemd-analyze is required on CI (Debian package systemd; scripts/install-deps.sh)";
    GTEST_SKIP() << "systemd-analyze is absent (Debian package systemd): the unit is not verified";
  }
  const std::string unit = ReadWholeFile(kRoot + "/usr/lib/systemd/system/ferryd.service");
  for (const char* line :
       {"\nType=notify\n", "\nExecStart=/usr/bin/ferryd --config /etc/ferry/ferryd.toml ",
        "\nExecReload=/bin/kill -HUP $MAINPID\n", "\nUser=ferry\n", "\nNoNewPrivileges=yes\n",
        "\nDeviceAllow=char-nvidia* rw\n"}) {
    EXPECT_NE(unit.find(line), std::string::npos) << line;
  }
  // Hiding /dev would hide the GPUs.
  EXPECT_EQ(unit.find("\nPrivateDevices=yes"), std::string::npos);
  // verify checks that ExecStart's program exists: this copy names the
  // unpacked ferryd; nothing else changes. Any complaint fails (verify
  // exits 0 after warnings such as an unknown key).
  const std::string dir = MakeTempDir("unit");
  std::string copy = unit;
  const std::string from = "ExecStart=/usr/bin/ferryd";
  copy.replace(copy.find(from), from.size(), "ExecStart=" + kRoot + "/usr/bin/ferryd");
  std::ofstream(dir + "/ferryd.service") << copy;
  RunResult run = RunToEnd({analyze, "verify", dir + "/ferryd.service"}, {}, dir + "/verify");
  EXPECT_TRUE(run.status.success()) << run.Describe();
  EXPECT_EQ(run.out + run.err, "") << run.Describe();
}

TEST_F(PackagingTest, TheInstalledFerryRunRunsAProgramThroughTheInstalledStub) {
  const std::string dir = MakeTempDir("installed");
  std::string address, error;
  std::optional<ChildProcess> ferryd = StartFerryd(kRoot + "/usr/bin/ferryd",
                                                   {"--listen", "127.0.0.1:0", "--backend", "host",
                                                    "--host-kernels", FERRY_TEST_VECTOR_ADD_HOST},
                                                   dir, 30s, &address, &error);
  ASSERT_TRUE(ferryd.has_value()) << error;
  const std::string home = dir + "/home";
  fs::create_directories(home + "/.config/ferry");
  std::ofstream(home + "/.config/ferry/client.toml") << "server = \"" << address << "\"\n";
  const std::map<std::string, std::string> env = {
      {"HOME", home}, {"XDG_CONFIG_HOME", ""}, {"LD_LIBRARY_PATH", ""}};
  const std::string ferry_run = kRoot + "/usr/bin/ferry-run";
  RunResult printed = RunToEnd({ferry_run, "--print-env"}, env, dir + "/print-env");
  ASSERT_TRUE(printed.status.success()) << printed.Describe();
  EXPECT_NE(printed.out.find("export LD_LIBRARY_PATH='" + kRoot + "/usr/lib/ferry'\n"),
            std::string::npos)
      << printed.out;
  RunResult run =
      RunToEnd({ferry_run, FERRY_TEST_VECTOR_ADD, FERRY_TEST_VECTOR_ADD_FATBIN}, env, dir + "/run");
  EXPECT_TRUE(run.status.success()) << run.Describe();
  EXPECT_NE(run.out.find("PASS"), std::string::npos) << run.out;
  EXPECT_EQ(StopFerryd("ferryd", ferryd, 30s), "");
}

// Without packages: `cmake --install --prefix P` keeps everything under P,
// the unit and ferry-run name P's paths, and a config edited since the last
// install is kept.
TEST(InstallTest, AnotherPrefixHoldsEverythingAndAnEditedConfigIsKept) {
  const std::string dir = MakeTempDir("install");
  const std::string prefix = dir + "/p";
  const std::vector<std::string> install = {FERRY_TEST_CMAKE, "--install", FERRY_TEST_BUILD_DIR,
                                            "--prefix", prefix};
  RunResult run = RunToEnd(install, {}, dir + "/install1", 300s);
  ASSERT_TRUE(run.status.success()) << run.Describe();
  for (const char* path :
       {"/bin/ferryd", "/bin/ferryctl", "/bin/ferry-run", "/lib/ferry/libcuda.so.1",
        "/lib/ferry/libnvidia-ml.so.1", "/etc/ferry/ferryd.toml", "/etc/ferry/client.toml",
        "/lib/sysusers.d/ferry.conf", "/include/ferry/ferry_host_kernel.h"}) {
    EXPECT_TRUE(fs::exists(prefix + path)) << path;
  }
  const std::string unit = ReadWholeFile(prefix + "/lib/systemd/system/ferryd.service");
  EXPECT_NE(unit.find("\nExecStart=" + prefix + "/bin/ferryd --config " + prefix +
                      "/etc/ferry/ferryd.toml "),
            std::string::npos)
      << unit;

  // ferry-run's system config is P/etc/ferry/client.toml for this prefix.
  std::ofstream(prefix + "/etc/ferry/client.toml") << "server = \"from-prefix:7070\"\n";
  run = RunToEnd({prefix + "/bin/ferry-run", "--print-env"},
                 {{"HOME", dir + "/empty-home"}, {"XDG_CONFIG_HOME", ""}, {"LD_LIBRARY_PATH", ""}},
                 dir + "/print-env");
  ASSERT_TRUE(run.status.success()) << run.Describe();
  EXPECT_NE(run.out.find("export LD_LIBRARY_PATH='" + prefix + "/lib/ferry'\n"), std::string::npos)
      << run.out;
  EXPECT_NE(run.out.find("export FERRY_SERVER='from-prefix:7070'\n"), std::string::npos) << run.out;

  std::ofstream(prefix + "/etc/ferry/ferryd.toml") << "# edited\n";
  run = RunToEnd(install, {}, dir + "/install2", 300s);
  ASSERT_TRUE(run.status.success()) << run.Describe();
  EXPECT_EQ(ReadWholeFile(prefix + "/etc/ferry/ferryd.toml"), "# edited\n");
  fs::remove_all(dir);  // the binaries are large
}

}  // namespace
}  // namespace ferry::test
