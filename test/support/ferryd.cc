#include "test/support/ferryd.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <cstdlib>

#include "test/support/wait.h"

namespace ferry::test {

std::optional<ChildProcess> StartFerryd(const std::string& ferryd,
                                        const std::vector<std::string>& args,
                                        const std::string& dir, std::chrono::milliseconds timeout,
                                        std::string* address, std::string* error,
                                        const std::map<std::string, std::string>& env) {
  const std::string ready_file = dir + "/ready";
  std::vector<std::string> argv = {ferryd};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--ready-file");
  argv.push_back(ready_file);
  std::optional<ChildProcess> process = ChildProcess::Start(argv, env, dir + "/ferryd", error);
  if (!process.has_value()) {
    *error = "cannot start ferryd: " + *error;
    return std::nullopt;
  }
  // ferryd writes the file whole, ending in a newline, once it listens.
  std::string ready;
  bool exited = false;
  const bool is_ready = WaitFor(
      [&] {
        ready = ReadWholeFile(ready_file);
        if (!ready.empty() && ready.back() == '\n') return true;
        exited = process->Poll();
        return exited;
      },
      timeout, std::chrono::milliseconds(10));
  if (!is_ready || exited) {
    *error = std::string(exited ? "ferryd exited before it was ready"
                                : "ferryd wrote no ready file in time") +
             "\n" + process->Describe();
    process->Kill(SIGKILL);
    return std::nullopt;
  }
  *address = ready.substr(0, ready.find_first_of("\r\n"));
  return process;
}

std::map<std::string, std::string> ClientEnv(const std::string& client_library_path,
                                             const std::string& server_address,
                                             const std::map<std::string, std::string>& extra) {
  std::string library_path = client_library_path;
  if (const char* old = std::getenv("LD_LIBRARY_PATH"); old != nullptr && *old != '\0') {
    library_path += std::string(":") + old;
  }
  std::map<std::string, std::string> env = {{"LD_LIBRARY_PATH", library_path},
                                            {"FERRY_SERVER", server_address}};
  for (const auto& [key, value] : extra) env[key] = value;
  return env;
}

std::string StopFerryd(const std::string& name, std::optional<ChildProcess>& ferryd,
                       std::chrono::milliseconds timeout) {
  if (!ferryd.has_value()) return "";
  if (ferryd->Poll()) return name + " died earlier\n" + ferryd->Describe() + "\n";
  ferryd->Kill(SIGTERM);
  if (ferryd->Wait(timeout).success()) return "";
  return name + " did not exit 0 within " + std::to_string(timeout.count()) + " ms of SIGTERM\n" +
         ferryd->Describe() + "\n";
}

std::vector<int> SessionWorkerPids(int ferryd) {
  std::vector<int> pids;
  std::error_code ignored;
  const std::string tasks = "/proc/" + std::to_string(ferryd) + "/task";
  for (const auto& task : std::filesystem::directory_iterator(tasks, ignored)) {
    std::ifstream children(task.path() / "children");
    for (int pid = 0; children >> pid;) {
      // Workers that serve a session name themselves "ferryd-s<ID>"; the
      // spare waiting for the next one is "ferryd-idle".
      std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
      std::string name;
      if (std::getline(comm, name) && name.rfind("ferryd-s", 0) == 0) pids.push_back(pid);
    }
  }
  return pids;
}

std::string MakeTempDir(const std::string& prefix) {
  std::string pattern = ::testing::TempDir() + prefix + "XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) return "";
  return pattern;
}

}  // namespace ferry::test
