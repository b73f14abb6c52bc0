// What the operator tests (ops_test.cc, packaging_test.cc) share: running a
// program to its end, a stand-in for systemd's notify socket, and reading
// ferryd's JSON log lines.
//
// Thread-safety: one object or call belongs to one test thread.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mini_json.h"
#include "test/support/child_process.h"

namespace ferry::test {

struct RunResult {
  ExitStatus status;
  std::string out, err;
  pid_t pid = -1;
  std::string Describe() const;  // status and both outputs, for failure messages
};

// Runs `argv` (argv[0] an absolute path) with the harness's environment plus
// `env`, its output under `output_prefix`, for at most `timeout`.
RunResult RunToEnd(const std::vector<std::string>& argv,
                   const std::map<std::string, std::string>& env, const std::string& output_prefix,
                   std::chrono::milliseconds timeout = std::chrono::seconds(60));

// A datagram socket the test owns, as systemd's NOTIFY_SOCKET: bound at a
// path, or in the abstract namespace for "@name".
class NotifySocket {
 public:
  explicit NotifySocket(std::string address);
  ~NotifySocket();
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  bool ok() const { return fd_ >= 0; }
  const std::string& address() const { return address_; }
  // The next datagram, or nullopt if none arrives within `timeout`.
  std::optional<std::string> Receive(std::chrono::milliseconds timeout);

 private:
  std::string address_;
  int fd_ = -1;
};

// The value of `KEY=value` among the lines of a notify message, or nullopt.
std::optional<std::string> NotifyValue(const std::string& message, const std::string& key);

// Each line of `text`, parsed as one JSON object; a line that is not one is
// reported in `*error` (and stops the parse: nullopt).
std::optional<std::vector<e2e::JsonValue>> ParseJsonLines(const std::string& text,
                                                          std::string* error);

// Waits up to `timeout` until `ferryd`'s stderr (JSON lines) holds a whole
// line with "event" `event`; returns every whole line then (nullopt on
// timeout or a line that does not parse, with why in `*error`).
std::optional<std::vector<e2e::JsonValue>> WaitForEvent(const ChildProcess& ferryd,
                                                        const std::string& event,
                                                        std::chrono::milliseconds timeout,
                                                        std::string* error);

// The first object among `lines` whose "event" member is `event`.
const e2e::JsonValue* FindEvent(const std::vector<e2e::JsonValue>& lines, const std::string& event);

}  // namespace ferry::test
