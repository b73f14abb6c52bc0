// Logging: one timestamped line per message on stderr.
//
//   FERRY_LOG(kInfo) << "listening on " << address;
//   2026-11-23T09:30:01.123456Z ferryd[4242] I listening on 127.0.0.1:7070
//
// The program name defaults to the executable's basename; SetLogProgram
// overrides it. FERRY_LOG_ONCE logs a site's first message only.
// Thread-safety: a line is written with one write(2), so lines from several
// threads never interleave.
#pragma once

#include <atomic>
#include <sstream>
#include <string>
#include <string_view>

namespace ferry {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

void SetLogProgram(std::string_view name);
void SetMinLogLevel(LogLevel level);
// Parses "debug", "info", "warning" or "error"; false (nothing written) for
// anything else.
bool ParseLogLevel(std::string_view text, LogLevel* level);
LogLevel MinLogLevel();
void WriteLogLine(LogLevel level, std::string_view message);

class LogMessage {
 public:
  explicit LogMessage(LogLevel level) : level_(level) {}
  ~LogMessage() { WriteLogLine(level_, stream_.str()); }
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace ferry

#define FERRY_LOG(level)                                   \
  if (::ferry::LogLevel::level < ::ferry::MinLogLevel()) { \
  } else                                                   \
    ::ferry::LogMessage(::ferry::LogLevel::level).stream()

#define FERRY_LOG_ONCE(level)                                         \
  if (static std::atomic<bool> ferry_logged_once_{false};             \
      ferry_logged_once_.exchange(true, std::memory_order_relaxed)) { \
  } else                                                              \
    FERRY_LOG(level)
