// ChildProcess: fork + exec with output files and a parent-death signal;
// see child_process.h.
#include "test/support/child_process.h"
#include "test/support/wait.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

extern char** environ;

namespace ferry::test {

std::string ExitStatus::ToString() const {
  std::ostringstream out;
  if (timed_out) out << "timed out, ";
  if (exited) {
    out << "exited " << code;
  } else {
    out << "killed by signal " << signal << " (" << strsignal(signal) << ")";
  }
  return out.str();
}

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string Tail(const std::string& text, size_t bytes) {
  if (text.size() <= bytes) return text;
  return "[...]" + text.substr(text.size() - bytes);
}

std::optional<ChildProcess> ChildProcess::Start(const std::vector<std::string>& argv,
                                                const std::map<std::string, std::string>& env,
                                                const std::string& output_prefix,
                                                std::string* error) {
  // Everything the child needs is built before fork: after fork it makes
  // only async-signal-safe calls.
  std::vector<std::string> env_entries;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string text(*entry);
    const std::string key = text.substr(0, text.find('='));
    if (env.count(key) == 0) env_entries.push_back(text);
  }
  for (const auto& [key, value] : env) env_entries.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (std::string& entry : env_entries) envp.push_back(entry.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> argvp;
  for (std::string& arg : args) argvp.push_back(arg.data());
  argvp.push_back(nullptr);
  const std::string out_path = output_prefix + ".out";
  const std::string err_path = output_prefix + ".err";

  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    *error = std::string("fork: ") + std::strerror(errno);
    return std::nullopt;
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the harness is already gone
    const int in = open("/dev/null", O_RDONLY);
    const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0 || err < 0) _exit(127);
    dup2(in, STDIN_FILENO);
    dup2(out, STDOUT_FILENO);
    dup2(err, STDERR_FILENO);
    execve(argvp[0], argvp.data(), envp.data());
    static const char kExecFailed[] = "exec failed\n";
    (void)!write(STDERR_FILENO, kExecFailed, sizeof(kExecFailed) - 1);
    _exit(127);
  }
  const std::string& path = argv[0];
  return ChildProcess(pid, path.substr(path.rfind('/') + 1), output_prefix);
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(other.pid_),
      name_(std::move(other.name_)),
      prefix_(std::move(other.prefix_)),
      status_(std::move(other.status_)) {
  other.pid_ = -1;
}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    KillAndReap();
    pid_ = other.pid_;
    name_ = std::move(other.name_);
    prefix_ = std::move(other.prefix_);
    status_ = std::move(other.status_);
    other.pid_ = -1;
  }
  return *this;
}

ChildProcess::~ChildProcess() { KillAndReap(); }

void ChildProcess::KillAndReap() {
  if (pid_ > 0 && running()) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
}

bool ChildProcess::Poll() {
  if (!running()) return true;
  int status = 0;
  const pid_t reaped = waitpid(pid_, &status, WNOHANG);
  if (reaped != pid_) return false;
  ExitStatus exit_status;
  if (WIFEXITED(status)) {
    exit_status.exited = true;
    exit_status.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    exit_status.signal = WTERMSIG(status);
  }
  status_ = exit_status;
  return true;
}

ExitStatus ChildProcess::Wait(std::chrono::milliseconds timeout) {
  if (!WaitFor([this] { return Poll(); }, timeout, std::chrono::milliseconds(5))) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    ExitStatus killed;
    killed.timed_out = true;
    killed.signal = SIGKILL;
    status_ = killed;
  }
  return *status_;
}

void ChildProcess::Kill(int signal) {
  if (pid_ > 0 && running()) ::kill(pid_, signal);
}

std::string ChildProcess::Stdout() const { return ReadWholeFile(prefix_ + ".out"); }

std::string ChildProcess::Stderr() const { return ReadWholeFile(prefix_ + ".err"); }

std::string ChildProcess::Describe(size_t tail_bytes) const {
  std::ostringstream out;
  out << name_ << " (pid " << pid_ << ") "
      << (status_ ? status_->ToString() : std::string("still running")) << "\n--- " << name_
      << " stdout ---\n"
      << Tail(Stdout(), tail_bytes) << "\n--- " << name_ << " stderr ---\n"
      << Tail(Stderr(), tail_bytes) << "\n--- end of " << name_ << " ---";
  return out.str();
}

bool WaitForOutput(ChildProcess& program, const std::string& text,
                   std::chrono::milliseconds timeout, std::chrono::milliseconds poll) {
  bool ended = false;
  const bool printed = WaitFor(
      [&] {
        if (program.Stdout().find(text) != std::string::npos) return true;
        ended = program.Poll() && program.Stdout().find(text) == std::string::npos;
        return ended;
      },
      timeout, poll);
  if (printed && !ended) return true;
  ADD_FAILURE() << program.name() << (ended ? " ended before printing \"" : " did not print \"")
                << text << "\"\n"
                << program.Describe();
  return false;
}

}  // namespace ferry::test
