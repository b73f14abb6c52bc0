#include "common/log.h"

#include <sys/time.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <utility>

namespace ferry {
namespace {

std::mutex& ProgramMutex() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::string& ProgramName() {
  static auto* name = new std::string(program_invocation_short_name);
  return *name;
}
std::atomic<int> g_min_level{static_cast<int>(LogLevel::kInfo)};

char LevelLetter(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return 'D';
    case LogLevel::kInfo:
      return 'I';
    case LogLevel::kWarning:
      return 'W';
    case LogLevel::kError:
      return 'E';
  }
  return '?';
}

}  // namespace

bool ParseLogLevel(std::string_view text, LogLevel* level) {
  static constexpr std::pair<std::string_view, LogLevel> kNames[] = {
      {"debug", LogLevel::kDebug},
      {"info", LogLevel::kInfo},
      {"warning", LogLevel::kWarning},
      {"error", LogLevel::kError}};
  for (const auto& [name, value] : kNames) {
    if (text == name) {
      *level = value;
      return true;
    }
  }
  return false;
}

void SetLogProgram(std::string_view name) {
  std::lock_guard<std::mutex> lock(ProgramMutex());
  ProgramName() = std::string(name);
}

void SetMinLogLevel(LogLevel level) { g_min_level.store(static_cast<int>(level)); }
LogLevel MinLogLevel() {
  return static_cast<LogLevel>(g_min_level.load(std::memory_order_relaxed));
}

void WriteLogLine(LogLevel level, std::string_view message) {
  timeval tv;
  gettimeofday(&tv, nullptr);
  tm utc;
  gmtime_r(&tv.tv_sec, &utc);
  char stamp[64];
  strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &utc);
  std::string program;
  {
    std::lock_guard<std::mutex> lock(ProgramMutex());
    program = ProgramName();
  }
  char prefix[160];
  snprintf(prefix, sizeof(prefix), "%s.%06ldZ %s[%d] %c ", stamp, static_cast<long>(tv.tv_usec),
           program.c_str(), static_cast<int>(getpid()), LevelLetter(level));
  std::string line(prefix);
  line.append(message);
  if (line.empty() || line.back() != '\n') line.push_back('\n');
  // One write per line keeps lines from different threads whole.
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

}  // namespace ferry
