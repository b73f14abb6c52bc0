// e2e_runtime_runner: runs one CUDA program through ferry against a ferryd of
// its own, for one ctest (see CMakeLists.txt).
//
//   e2e_runtime_runner --ferryd PATH --host-kernels LIB --library-path DIRS
//       --work-dir DIR [--exit-code N] [--expect TEXT]... [--expect-log TEXT]...
//       [--forbid-log TEXT]... [--env NAME=VALUE]... [--chain-driver LIB]
//       -- PROGRAM [ARGS...]
//
// It starts `ferryd --backend host --host-kernels LIB` on 127.0.0.1:0 (the
// port comes back through a ready file), runs PROGRAM with
// LD_LIBRARY_PATH=DIRS (ferry's libcuda.so.1 first, then the toolkit's
// libraries for -cudart shared programs) and FERRY_SERVER pointing at it, and
// passes when the program exits N (default 0) within 60 s, its stdout holds
// every --expect text in the given order, each --expect-log text occurs in
// the program's stderr or ferryd's log and no --forbid-log text occurs in
// either, ferryd is still running, and ferryd
// exits 0 within 10 s of SIGTERM. Everything is bounded in time; the children
// die with the runner. On failure it prints what the program and ferryd said
// and keeps DIR; on success it removes DIR. Exit status: 0 pass, 1 fail,
// 2 usage.
//
// With --chain-driver LIB (ferry's libcuda.so.1) the program's ferryd is a
// chain: a ferryd with `--backend cuda --cuda-driver LIB
// --allow-ferry-cuda-driver` whose FERRY_SERVER is the host-backend ferryd
// above (its files in DIR/upstream). Both are checked as above, and
// "ferryd's log" is both logs.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "test/support/child_process.h"
#include "test/support/ferryd.h"

namespace {

using namespace std::chrono_literals;
using ferry::test::ChildProcess;
using ferry::test::ExitStatus;

constexpr auto kReadyTimeout = 10s;
constexpr auto kProgramTimeout = 60s;
constexpr auto kStopTimeout = 10s;

struct Options {
  std::string ferryd, host_kernels, library_path, work_dir, chain_driver;
  int exit_code = 0;
  std::vector<std::string> expect, expect_log, forbid_log;
  std::vector<std::string> ferryd_args;  // appended to the program's ferryd's command line
  std::map<std::string, std::string> env;
  std::vector<std::string> program;  // argv
};

bool ParseOptions(int argc, char** argv, Options* out) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") {
      for (++i; i < argc; ++i) out->program.push_back(argv[i]);
      break;
    }
    if (i + 1 >= argc) return false;
    const std::string value = argv[++i];
    if (arg == "--ferryd") {
      out->ferryd = value;
    } else if (arg == "--host-kernels") {
      out->host_kernels = value;
    } else if (arg == "--library-path") {
      out->library_path = value;
    } else if (arg == "--chain-driver") {
      out->chain_driver = value;
    } else if (arg == "--work-dir") {
      out->work_dir = value;
    } else if (arg == "--exit-code") {
      out->exit_code = std::atoi(value.c_str());
    } else if (arg == "--expect") {
      out->expect.push_back(value);
    } else if (arg == "--expect-log") {
      out->expect_log.push_back(value);
    } else if (arg == "--forbid-log") {
      out->forbid_log.push_back(value);
    } else if (arg == "--ferryd-arg") {
      out->ferryd_args.push_back(value);
    } else if (arg == "--env") {
      const size_t eq = value.find('=');
      if (eq == std::string::npos || eq == 0) return false;
      out->env[value.substr(0, eq)] = value.substr(eq + 1);
    } else {
      return false;
    }
  }
  return !out->ferryd.empty() && !out->host_kernels.empty() && !out->work_dir.empty() &&
         !out->program.empty();
}

// Runs the whole check; returns an empty string on success, else what failed.
// `ferryd` is the one the program talks to; `upstream` the host-backend one
// it forwards to when chained.
std::string Run(const Options& options, std::optional<ChildProcess>& ferryd,
                std::optional<ChildProcess>& upstream, std::optional<ChildProcess>& program) {
  std::string error;
  std::string address;
  const std::vector<std::string> host = {"--listen", "127.0.0.1:0",    "--backend",
                                         "host",     "--host-kernels", options.host_kernels};
  if (options.chain_driver.empty()) {
    std::vector<std::string> args = host;
    args.insert(args.end(), options.ferryd_args.begin(), options.ferryd_args.end());
    ferryd = ferry::test::StartFerryd(options.ferryd, args, options.work_dir, kReadyTimeout,
                                      &address, &error);
  } else {
    const std::string upstream_dir = options.work_dir + "/upstream";
    std::error_code ignored;
    std::filesystem::create_directories(upstream_dir, ignored);
    std::string upstream_address;
    upstream = ferry::test::StartFerryd(options.ferryd, host, upstream_dir, kReadyTimeout,
                                        &upstream_address, &error);
    if (!upstream.has_value()) return "upstream: " + error;
    std::vector<std::string> args = {"--listen",
                                     "127.0.0.1:0",
                                     "--backend",
                                     "cuda",
                                     "--cuda-driver",
                                     options.chain_driver,
                                     "--allow-ferry-cuda-driver"};
    args.insert(args.end(), options.ferryd_args.begin(), options.ferryd_args.end());
    ferryd = ferry::test::StartFerryd(options.ferryd, args, options.work_dir, kReadyTimeout,
                                      &address, &error, {{"FERRY_SERVER", upstream_address}});
  }
  if (!ferryd.has_value()) return error;

  std::map<std::string, std::string> env = options.env;
  std::string library_path = options.library_path;
  if (const char* old = std::getenv("LD_LIBRARY_PATH"); old != nullptr && *old != '\0') {
    library_path += std::string(":") + old;
  }
  env["LD_LIBRARY_PATH"] = library_path;
  env["FERRY_SERVER"] = address;
  if (!options.chain_driver.empty()) env["FERRY_E2E_BACKEND"] = "chain";
#ifdef FERRY_RUNTIME_PRELOAD
  env["LD_PRELOAD"] = FERRY_RUNTIME_PRELOAD;
  env["ASAN_OPTIONS"] = "detect_leaks=0";
#endif
  program = ChildProcess::Start(options.program, env, options.work_dir + "/program", &error);
  if (!program.has_value()) return "cannot start " + options.program[0] + ": " + error;
  const ExitStatus status = program->Wait(kProgramTimeout);
  std::string failures;
  if (!status.exited || status.code != options.exit_code) {
    failures += "the program " + status.ToString() + ", expected exit " +
                std::to_string(options.exit_code) + "\n";
  }
  const std::string out = program->Stdout();
  size_t from = 0;
  for (const std::string& text : options.expect) {
    const size_t at = out.find(text, from);
    if (at == std::string::npos) {
      failures += "stdout lacks \"" + text + "\"" +
                  (out.find(text) != std::string::npos ? " after the earlier expected lines" : "") +
                  "\n";
      continue;
    }
    from = at + text.size();
  }
  std::string logs = program->Stderr() + ferryd->Stderr();
  if (upstream.has_value()) logs += upstream->Stderr();
  for (const std::string& text : options.expect_log) {
    if (logs.find(text) == std::string::npos) failures += "no log line holds \"" + text + "\"\n";
  }
  for (const std::string& text : options.forbid_log) {
    if (logs.find(text) != std::string::npos) failures += "a log line holds \"" + text + "\"\n";
  }
  // The chained ferryd first: it is its upstream's client.
  failures += ferry::test::StopFerryd("ferryd", ferryd, kStopTimeout);
  failures += ferry::test::StopFerryd("upstream ferryd", upstream, kStopTimeout);
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (!ParseOptions(argc, argv, &options)) {
    std::fprintf(stderr,
                 "usage: %s --ferryd PATH --host-kernels LIB --library-path DIRS --work-dir DIR "
                 "[--exit-code N] [--expect TEXT]... [--expect-log TEXT]... [--forbid-log TEXT]... "
                 "[--env NAME=VALUE]... [--chain-driver LIB] "
                 "-- PROGRAM [ARGS...]\n",
                 argv[0]);
    return 2;
  }
  if (options.expect.empty()) options.expect.push_back("all checks passed");
  std::error_code ignored;
  std::filesystem::remove_all(options.work_dir, ignored);
  std::filesystem::create_directories(options.work_dir, ignored);

  std::optional<ChildProcess> ferryd, upstream, program;
  const std::string failures = Run(options, ferryd, upstream, program);
  if (failures.empty()) {
    std::printf("PASS %s\n", options.program[0].c_str());
    ferryd.reset();
    upstream.reset();
    program.reset();
    std::filesystem::remove_all(options.work_dir, ignored);
    return 0;
  }
  std::cout << "FAIL " << options.program[0] << ":\n" << failures << "\n";
  if (program.has_value()) std::cout << program->Describe() << "\n";
  if (ferryd.has_value()) {
    std::cout << "ferryd log:\n" << ferry::test::Tail(ferryd->Stderr(), 12000) << "\n";
  }
  if (upstream.has_value()) {
    std::cout << "upstream ferryd log:\n" << ferry::test::Tail(upstream->Stderr(), 12000) << "\n";
  }
  std::cout << "files kept in " << options.work_dir << "\n";
  return 1;
}
