#include "ops_support.h"

#include "test/support/wait.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <sstream>

namespace ferry::test {

std::string RunResult::Describe() const {
  return status.ToString() + "\n--- stdout\n" + Tail(out, 6000) + "\n--- stderr\n" +
         Tail(err, 6000);
}

RunResult RunToEnd(const std::vector<std::string>& argv,
                   const std::map<std::string, std::string>& env, const std::string& output_prefix,
                   std::chrono::milliseconds timeout) {
  RunResult result;
  std::string error;
  std::optional<ChildProcess> child = ChildProcess::Start(argv, env, output_prefix, &error);
  if (!child.has_value()) {
    result.err = "cannot start " + argv[0] + ": " + error;
    return result;
  }
  result.pid = child->pid();
  result.status = child->Wait(timeout);
  result.out = child->Stdout();
  result.err = child->Stderr();
  return result;
}

NotifySocket::NotifySocket(std::string address) : address_(std::move(address)) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (address_.empty() || address_.size() >= sizeof(addr.sun_path)) return;
  std::memcpy(addr.sun_path, address_.data(), address_.size());
  const bool abstract = address_[0] == '@';
  if (abstract) addr.sun_path[0] = '\0';
  const socklen_t length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) +
                                                  address_.size() + (abstract ? 0 : 1));
  fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd_ >= 0 && bind(fd_, reinterpret_cast<const sockaddr*>(&addr), length) != 0) {
    close(fd_);
    fd_ = -1;
  }
}

NotifySocket::~NotifySocket() {
  if (fd_ >= 0) close(fd_);
  if (!address_.empty() && address_[0] == '/') unlink(address_.c_str());
}

std::optional<std::string> NotifySocket::Receive(std::chrono::milliseconds timeout) {
  pollfd p{fd_, POLLIN, 0};
  if (fd_ < 0 || poll(&p, 1, static_cast<int>(timeout.count())) != 1) return std::nullopt;
  char buffer[4096];
  const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
  if (n < 0) return std::nullopt;
  return std::string(buffer, static_cast<size_t>(n));
}

std::optional<std::string> NotifyValue(const std::string& message, const std::string& key) {
  std::istringstream lines(message);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(key + "=", 0) == 0) return line.substr(key.size() + 1);
  }
  return std::nullopt;
}

std::optional<std::vector<e2e::JsonValue>> ParseJsonLines(const std::string& text,
                                                          std::string* error) {
  std::vector<e2e::JsonValue> out;
  std::istringstream lines(text);
  int number = 0;
  for (std::string line; std::getline(lines, line);) {
    ++number;
    std::string why;
    std::optional<e2e::JsonValue> value = e2e::ParseJson(line, &why);
    if (!value.has_value() || !value->is_object()) {
      *error = "line " + std::to_string(number) + " is not a JSON object (" + why + "): " + line;
      return std::nullopt;
    }
    out.push_back(std::move(*value));
  }
  return out;
}

std::optional<std::vector<e2e::JsonValue>> WaitForEvent(const ChildProcess& ferryd,
                                                        const std::string& event,
                                                        std::chrono::milliseconds timeout,
                                                        std::string* error) {
  std::optional<std::vector<e2e::JsonValue>> lines;
  const bool found = WaitFor(
      [&] {
        std::string text = ferryd.Stderr();
        text.resize(text.rfind('\n') + 1);  // whole lines only: one may be on its way
        lines = ParseJsonLines(text, error);
        return lines.has_value() && FindEvent(*lines, event) != nullptr;
      },
      timeout, std::chrono::milliseconds(10));
  if (!found) {
    if (lines.has_value()) *error = "no " + event + " line in time:\n" + ferryd.Stderr();
    return std::nullopt;
  }
  return lines;
}

const e2e::JsonValue* FindEvent(const std::vector<e2e::JsonValue>& lines,
                                const std::string& event) {
  for (const e2e::JsonValue& line : lines) {
    const e2e::JsonValue* value = line.Find("event");
    if (value != nullptr && value->is_string() && value->string == event) return &line;
  }
  return nullptr;
}

}  // namespace ferry::test
