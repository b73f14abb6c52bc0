// Logging: one timestamped line per message on stderr.
//
//   FERRY_LOG(kInfo) << "listening on " << address;
//   2026-11-23T09:30:01.123456Z ferryd[4242] I listening on 127.0.0.1:7070
//
// or, after SetLogFormat(LogFormat::kJson) (ferryd --log-format json), one
// JSON object per line, every line:
//   {"time":"2026-11-23T09:30:01.123456Z","level":"info","program":"ferryd",
//    "pid":4242,"msg":"listening on 127.0.0.1:7070"}
// A line may carry named values besides its message (WriteLogLine's
// `fields`): text lines append them as key=value, JSON lines as members, so
// a log reader need not parse the message.
//
// The program name defaults to the executable's basename; SetLogProgram
// overrides it. FERRY_LOG_ONCE logs a site's first message only.
// Thread-safety: a line is written with one write(2), so lines from several
// threads never interleave.
#pragma once

#include <atomic>
#include <concepts>
#include <span>
#include <sstream>
#include <string>
#include <string_view>

namespace ferry {

enum class LogLevel { kDebug, kInfo, kWarning, kError };
enum class LogFormat { kText, kJson };

void SetLogProgram(std::string_view name);
void SetMinLogLevel(LogLevel level);
// Parses "debug", "info", "warning" or "error"; false (nothing written) for
// anything else.
bool ParseLogLevel(std::string_view text, LogLevel* level);
LogLevel MinLogLevel();
// Text (the default) or JSON lines, for every line written after the call.
void SetLogFormat(LogFormat format);
// Parses "text" or "json"; false (nothing written) for anything else.
bool ParseLogFormat(std::string_view text, LogFormat* format);

// A named value of a log line. Keys are plain identifiers (snake_case), never
// those every JSON line has (time, level, program, pid, msg); a
// text line shows a string value quoted (JSON escapes) when it is empty or
// holds spaces, quotes, '=' or control characters, so a line splits back
// into its fields unambiguously.
class LogField {
 public:
  LogField(std::string_view key, std::string_view value);
  LogField(std::string_view key, const char* value) : LogField(key, std::string_view(value)) {}
  LogField(std::string_view key, const std::string& value)
      : LogField(key, std::string_view(value)) {}
  LogField(std::string_view key, bool value);
  LogField(std::string_view key, double value);
  template <std::integral T>
  LogField(std::string_view key, T value) : key_(key), json_(std::to_string(value)), text_(json_) {}

  const std::string& key() const { return key_; }
  const std::string& json() const { return json_; }  // the value as JSON
  const std::string& text() const { return text_; }  // the value on a text line

 private:
  std::string key_;
  std::string json_;
  std::string text_;
};

// Writes one line (any thread) in the format in force; `fields` follow the
// message.
void WriteLogLine(LogLevel level, std::string_view message, std::span<const LogField> fields = {});

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
