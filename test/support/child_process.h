// ChildProcess: a program a test starts (ferryd, a test program,
// ferryctl), with its stdout and stderr in files, a bounded wait, and a kill
// that never leaves it behind: the child gets SIGKILL when the harness dies
// (PR_SET_PDEATHSIG) or when the object is destroyed while it still runs.
//
// Thread-safety: one object belongs to one thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ferry::test {

struct ExitStatus {
  bool timed_out = false;  // killed by Wait after its timeout
  bool exited = false;     // normal exit; `code` holds the status
  int code = -1;
  int signal = 0;  // the signal that ended it, when not `exited`

  bool success() const { return exited && code == 0; }
  std::string ToString() const;
};

class ChildProcess {
 public:
  // Starts `argv[0]` (an absolute path) with `argv`, the harness's own
  // environment with `env` overriding (set) its entries, stdin from
  // /dev/null, and stdout / stderr written to `output_prefix` + ".out" /
  // ".err". Returns nullopt, with the reason in `error`, if it cannot start.
  static std::optional<ChildProcess> Start(const std::vector<std::string>& argv,
                                           const std::map<std::string, std::string>& env,
                                           const std::string& output_prefix, std::string* error);

  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;  // kills ours
  ChildProcess(const ChildProcess&) = delete;
  ~ChildProcess();  // SIGKILLs and reaps a child that still runs

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }

  // True until the child has been reaped (by Wait or Poll).
  bool running() const { return !status_.has_value(); }

  // Reaps the child if it has ended; returns whether it has.
  bool Poll();

  // Waits up to `timeout` for the child to end; on timeout sends SIGKILL,
  // reaps it and reports timed_out.
  ExitStatus Wait(std::chrono::milliseconds timeout);

  // Sends `signal` if the child has not been reaped yet.
  void Kill(int signal);

  std::string Stdout() const;
  std::string Stderr() const;

  // "name exited 0" + the tails of stdout and stderr, for failure messages.
  std::string Describe(size_t tail_bytes = 6000) const;

 private:
  ChildProcess(pid_t pid, std::string name, std::string output_prefix)
      : pid_(pid), name_(std::move(name)), prefix_(std::move(output_prefix)) {}

  void KillAndReap();  // SIGKILL and reap if still running

  pid_t pid_ = -1;
  std::string name_;
  std::string prefix_;
  std::optional<ExitStatus> status_;
};

// The whole file, or "" when it cannot be read.
std::string ReadWholeFile(const std::string& path);

// The last `bytes` of `text`, marked when cut.
std::string Tail(const std::string& text, size_t bytes);

// Waits until `program` printed `text` on its stdout, polling every `poll`
// for at most `timeout`; false, with a test failure naming the program and
// showing what it printed, when it ended without printing it or took too
// long.
bool WaitForOutput(ChildProcess& program, const std::string& text,
                   std::chrono::milliseconds timeout,
                   std::chrono::milliseconds poll = std::chrono::milliseconds(30));

}  // namespace ferry::test
