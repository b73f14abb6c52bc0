#include "common/log.h"

#include <sys/time.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <utility>

#include "common/json.h"

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
std::atomic<int> g_format{static_cast<int>(LogFormat::kText)};

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

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "unknown";
}

// Whether a text line must quote `value` to keep its fields apart.
bool NeedsQuotes(std::string_view value) {
  if (value.empty()) return true;
  for (char c : value) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) {
      return true;
    }
  }
  return false;
}

}  // namespace

LogField::LogField(std::string_view key, std::string_view value)
    : key_(key), json_(JsonString(value)), text_(NeedsQuotes(value) ? json_ : std::string(value)) {}

LogField::LogField(std::string_view key, bool value)
    : key_(key), json_(value ? "true" : "false"), text_(json_) {}

LogField::LogField(std::string_view key, double value) : key_(key) {
  // JSON has no NaN or infinity; such a value is written as null.
  if (std::isfinite(value)) {
    char buf[32];
    snprintf(buf, sizeof(buf), "%.6g", value);
    json_ = buf;
  } else {
    json_ = "null";
  }
  text_ = json_;
}

bool ParseLogFormat(std::string_view text, LogFormat* format) {
  if (text == "text") {
    *format = LogFormat::kText;
  } else if (text == "json") {
    *format = LogFormat::kJson;
  } else {
    return false;
  }
  return true;
}

void SetLogFormat(LogFormat format) { g_format.store(static_cast<int>(format)); }

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

void WriteLogLine(LogLevel level, std::string_view message, std::span<const LogField> fields) {
  timeval tv;
  gettimeofday(&tv, nullptr);
  tm utc;
  gmtime_r(&tv.tv_sec, &utc);
  char stamp[64];
  strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &utc);
  char time[80];
  snprintf(time, sizeof(time), "%s.%06ldZ", stamp, static_cast<long>(tv.tv_usec));
  std::string program;
  {
    std::lock_guard<std::mutex> lock(ProgramMutex());
    program = ProgramName();
  }
  const int pid = static_cast<int>(getpid());
  std::string line;
  if (static_cast<LogFormat>(g_format.load(std::memory_order_relaxed)) == LogFormat::kJson) {
    // A message's trailing newline is the line's end in text; not content.
    if (!message.empty() && message.back() == '\n') message.remove_suffix(1);
    line = "{\"time\":\"" + std::string(time) + "\",\"level\":\"" + LevelName(level) +
           "\",\"program\":" + JsonString(program) + ",\"pid\":" + std::to_string(pid) +
           ",\"msg\":" + JsonString(message);
    for (const LogField& field : fields) line += "," + JsonString(field.key()) + ":" + field.json();
    line += "}\n";
  } else {
    char prefix[160];
    snprintf(prefix, sizeof(prefix), "%s %s[%d] %c ", time, program.c_str(), pid,
             LevelLetter(level));
    line = prefix;
    line.append(message);
    if (!line.empty() && line.back() == '\n') line.pop_back();
    for (const LogField& field : fields) line += " " + field.key() + "=" + field.text();
    line.push_back('\n');
  }
  // One write per line keeps lines from different threads whole.
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

}  // namespace ferry
