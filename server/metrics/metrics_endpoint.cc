#include "server/metrics/metrics_endpoint.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>
#include <vector>

#include "common/log.h"
#include "common/transport.h"
#include "server/metrics/prometheus_text.h"

namespace ferry::metrics {
namespace {

// After the answer, how long (and how much) the peer's remaining bytes are
// read before the socket closes: closing with unread bytes would reset the
// connection, and the peer might lose the answer it has not read yet.
constexpr auto kLingerTime = std::chrono::milliseconds(500);
constexpr size_t kLingerBytes = 64 << 10;

std::string SocketAddressText(const sockaddr_storage& address) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (address.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(address);
    ::inet_ntop(AF_INET6, &in6.sin6_addr, host, sizeof(host));
    port = ntohs(in6.sin6_port);
    return "[" + std::string(host) + "]:" + std::to_string(port);
  }
  const auto& in4 = reinterpret_cast<const sockaddr_in&>(address);
  ::inet_ntop(AF_INET, &in4.sin_addr, host, sizeof(host));
  port = ntohs(in4.sin_port);
  return std::string(host) + ":" + std::to_string(port);
}

bool IsTokenChar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != '\0';
}

bool IsToken(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), IsTokenChar);
}

bool EqualsIgnoringCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view TrimSpace(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

const char* ReasonPhrase(int code) {
  switch (code) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 413:
      return "Content Too Large";
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Error";
  }
}

// A whole answer: status line, headers, and `body` unless `head_only`.
std::string HttpAnswer(int code, std::string_view content_type, std::string_view body,
                       std::string_view extra_headers = "", bool head_only = false) {
  std::string out = "HTTP/1.1 " + std::to_string(code) + " " + ReasonPhrase(code) + "\r\n";
  out += "Content-Type: ";
  out += content_type;
  out += "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  out += "Cache-Control: no-store\r\nConnection: close\r\n";
  out += extra_headers;
  out += "\r\n";
  if (!head_only) out += body;
  return out;
}

std::string ErrorAnswer(int code, const std::string& why, std::string_view extra_headers = "") {
  return HttpAnswer(code, "text/plain; charset=utf-8", why + "\n", extra_headers);
}

}  // namespace

Status MetricsEndpoint::Start(Options options, std::unique_ptr<MetricsEndpoint>* out) {
  std::string host;
  uint16_t port = 0;
  FERRY_RETURN_IF_ERROR(ParseHostPort(options.address, &host, &port));
  if (!options.render) return Status::InvalidArgument("a metrics endpoint needs a renderer");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* results = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &results);
  if (rc != 0) {
    return Status::InvalidArgument("cannot listen on " + options.address + ": " +
                                   ::gai_strerror(rc));
  }
  int fd = -1;
  std::string why = "no address";
  for (addrinfo* ai = results; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      why = std::strerror(errno);
      continue;
    }
    const int on = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 64) != 0) {
      why = std::strerror(errno);
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(results);
  if (fd < 0) return Status::InvalidArgument("cannot listen on " + options.address + ": " + why);
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
  const int stop_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd < 0) {
    ::close(fd);
    return Status::Internal(std::string("eventfd failed: ") + std::strerror(errno));
  }
  std::unique_ptr<MetricsEndpoint> endpoint(
      new MetricsEndpoint(std::move(options), fd, stop_fd, SocketAddressText(bound)));
  endpoint->accept_thread_ = std::thread([e = endpoint.get()] { e->AcceptLoop(); });
  *out = std::move(endpoint);
  return Status::Ok();
}

MetricsEndpoint::MetricsEndpoint(Options options, int listen_fd, int stop_fd, std::string bound)
    : options_(std::move(options)),
      listen_fd_(listen_fd),
      stop_fd_(stop_fd),
      bound_(std::move(bound)) {}

MetricsEndpoint::~MetricsEndpoint() {
  Stop();
  ::close(listen_fd_);
  ::close(stop_fd_);
}

void MetricsEndpoint::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    for (auto& [id, connection] : connections_) ::shutdown(connection.watch_fd, SHUT_RDWR);
  }
  const uint64_t one = 1;
  (void)!::write(stop_fd_, &one, sizeof(one));
  if (accept_thread_.joinable()) accept_thread_.join();
  std::unique_lock<std::mutex> lock(mutex_);
  finished_.wait(lock, [this] { return connections_.empty(); });
}

int MetricsEndpoint::ShutDownOverdueLocked() {
  const auto now = std::chrono::steady_clock::now();
  const auto never = std::chrono::steady_clock::time_point::max();
  auto next = never;
  for (auto& [id, connection] : connections_) {
    if (connection.deadline == never) continue;
    if (connection.deadline <= now) {
      // Reads and writes fail from now on; the connection's thread ends.
      ::shutdown(connection.watch_fd, SHUT_RDWR);
      connection.deadline = never;
    } else {
      next = std::min(next, connection.deadline);
    }
  }
  if (next == never) return -1;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(next - now).count();
  return static_cast<int>(std::clamp<int64_t>(ms, 1, 60 * 1000));
}

void MetricsEndpoint::AcceptLoop() {
  for (;;) {
    int timeout_ms = -1;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;
      timeout_ms = ShutDownOverdueLocked();
    }
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (::poll(fds, 2, timeout_ms) < 0 && errno != EINTR) {
      FERRY_LOG(kError) << "metrics listener " << bound_
                        << ": poll failed: " << std::strerror(errno);
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    sockaddr_storage peer{};
    socklen_t length = sizeof(peer);
    const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer), &length, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) {
        continue;
      }
      // Out of descriptors, most likely: the listener stays readable, so
      // wait a moment (or for Stop) rather than spin on it.
      FERRY_LOG(kWarning) << "metrics listener " << bound_
                          << ": accept failed: " << std::strerror(errno);
      pollfd stop{stop_fd_, POLLIN, 0};
      ::poll(&stop, 1, 100);
      continue;
    }
    Admit(fd, SocketAddressText(peer));
  }
}

void MetricsEndpoint::Admit(int fd, std::string peer) {
  uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
      // Accepted as Stop began: the endpoint is going away, so the peer is
      // disconnected unanswered, as an open connection is (not told it is
      // one too many).
      ::close(fd);
      return;
    }
    if (connections_.size() < static_cast<size_t>(options_.max_connections)) {
      const int watch_fd = ::dup(fd);
      if (watch_fd >= 0) {
        id = next_id_++;
        connections_[id] =
            Connection{std::chrono::steady_clock::now() + options_.connection_timeout, watch_fd};
      }
    }
  }
  if (id == 0) {
    // Answered here without reading: the answer fits the socket's buffer,
    // and a peer that does not read it loses nothing it could use.
    FERRY_LOG(kDebug) << "metrics request from " << peer << " refused: " << options_.max_connections
                      << " connections are open";
    const std::string answer =
        ErrorAnswer(503, "ferryd serves at most " + std::to_string(options_.max_connections) +
                             " metrics connections at once; try again later");
    (void)!::send(fd, answer.data(), answer.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    ::close(fd);
    return;
  }
  try {
    std::thread([this, id, fd, peer = std::move(peer)] { Serve(id, fd, peer); }).detach();
  } catch (const std::system_error& e) {
    FERRY_LOG(kWarning) << "metrics request refused: no thread for it: " << e.what();
    ::close(fd);
    std::lock_guard<std::mutex> lock(mutex_);
    ::close(connections_[id].watch_fd);
    connections_.erase(id);
    finished_.notify_all();
  }
}

void MetricsEndpoint::Serve(uint64_t id, int fd, const std::string& peer) {
  const auto request_deadline = std::chrono::steady_clock::now() + options_.request_timeout;
  std::unique_ptr<Transport> transport;
  Status status;
  if (options_.tls != nullptr) {
    bool plain_peer = false;
    status = AcceptTls(fd, peer, *options_.tls, request_deadline, &transport, &plain_peer);
    if (status.ok() && plain_peer) status = Status::Malformed("a ferry client, not HTTP");
  } else {
    transport = std::make_unique<SocketTransport>(fd, peer);
  }
  if (status.ok()) {
    // The request head, whole, by the deadline; one byte at a time (the
    // transports read ahead in blocks), so nothing past it is taken.
    transport->SetReadDeadline(request_deadline);
    std::string head;
    bool complete = false;
    while (status.ok() && head.size() < options_.max_request_bytes) {
      char c = 0;
      status = transport->ReadExact(&c, 1);
      if (!status.ok()) break;
      head.push_back(c);
      if (c == '\n' && (head.ends_with("\n\n") || head.ends_with("\n\r\n"))) {
        complete = true;
        break;
      }
    }
    if (status.ok()) {
      std::string answer;
      if (complete) {
        answer = Answer(head, peer);
      } else {
        FERRY_LOG(kDebug) << "metrics request from " << peer << " refused: its head passed "
                          << options_.max_request_bytes << " bytes";
        answer = ErrorAnswer(431, "the request head is larger than " +
                                      std::to_string(options_.max_request_bytes) + " bytes");
      }
      const ConstBuffer buffer{answer.data(), answer.size()};
      status = transport->Write(std::span<const ConstBuffer>(&buffer, 1));
    } else {
      FERRY_LOG(kDebug) << "metrics connection from " << peer
                        << " closed unanswered: " << status.message();
    }
    if (status.ok()) {
      // A lingering close: the peer learns that the answer is whole, and
      // what it still sends is read (bounded) rather than met with a reset.
      int watch_fd = -1;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        watch_fd = connections_[id].watch_fd;
      }
      ::shutdown(watch_fd, SHUT_WR);
      transport->SetReadDeadline(std::min(request_deadline + options_.connection_timeout,
                                          std::chrono::steady_clock::now() + kLingerTime));
      char c = 0;
      for (size_t n = 0; n < kLingerBytes && transport->ReadExact(&c, 1).ok(); ++n) {
      }
    }
  }
  transport.reset();  // closes the connection's own descriptor
  std::lock_guard<std::mutex> lock(mutex_);
  ::close(connections_[id].watch_fd);
  connections_.erase(id);
  finished_.notify_all();
}

std::string MetricsEndpoint::Answer(std::string_view head, const std::string& peer) {
  std::vector<std::string_view> lines;
  while (!head.empty()) {
    const size_t end = head.find('\n');
    std::string_view line = head.substr(0, end);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    head.remove_prefix(end == std::string_view::npos ? head.size() : end + 1);
  }
  // The request line: METHOD SP TARGET SP VERSION.
  const std::string_view request_line = lines.empty() ? std::string_view() : lines[0];
  const size_t first_space = request_line.find(' ');
  const size_t second_space = first_space == std::string_view::npos
                                  ? std::string_view::npos
                                  : request_line.find(' ', first_space + 1);
  if (second_space == std::string_view::npos ||
      request_line.find(' ', second_space + 1) != std::string_view::npos) {
    return ErrorAnswer(400, "not an HTTP request line");
  }
  const std::string_view method = request_line.substr(0, first_space);
  const std::string_view target =
      request_line.substr(first_space + 1, second_space - first_space - 1);
  const std::string_view version = request_line.substr(second_space + 1);
  if (!IsToken(method) || target.empty() || target.front() != '/') {
    return ErrorAnswer(400, "not an HTTP request line");
  }
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    const bool http = version.size() == 8 && version.starts_with("HTTP/") &&
                      std::isdigit(static_cast<unsigned char>(version[5])) && version[6] == '.' &&
                      std::isdigit(static_cast<unsigned char>(version[7]));
    return http ? ErrorAnswer(505, "this endpoint speaks HTTP/1.1")
                : ErrorAnswer(400, "not an HTTP request line");
  }
  bool has_host = false;
  bool has_authorization = false;
  std::string_view authorization;
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::string_view line = lines[i];
    if (line.empty()) break;  // the end of the head
    if (line.front() == ' ' || line.front() == '\t') {
      return ErrorAnswer(400, "folded header lines are not allowed");
    }
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || !IsToken(line.substr(0, colon))) {
      return ErrorAnswer(400, "a header line is not NAME: VALUE");
    }
    const std::string_view name = line.substr(0, colon);
    const std::string_view value = TrimSpace(line.substr(colon + 1));
    if (EqualsIgnoringCase(name, "host")) {
      has_host = true;
    } else if (EqualsIgnoringCase(name, "authorization")) {
      if (has_authorization) return ErrorAnswer(400, "Authorization given twice");
      has_authorization = true;
      authorization = value;
    } else if (EqualsIgnoringCase(name, "transfer-encoding")) {
      return ErrorAnswer(413, "a metrics request has no body");
    } else if (EqualsIgnoringCase(name, "content-length")) {
      if (value.empty() ||
          !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return ErrorAnswer(400, "Content-Length is not a number");
      }
      if (value.find_first_not_of('0') != std::string_view::npos) {
        return ErrorAnswer(413, "a metrics request has no body");
      }
    }
  }
  if (version == "HTTP/1.1" && !has_host) return ErrorAnswer(400, "HTTP/1.1 needs a Host header");
  if (options_.authorize) {
    std::string_view token;
    const size_t space = authorization.find(' ');
    if (space != std::string_view::npos &&
        EqualsIgnoringCase(authorization.substr(0, space), "bearer")) {
      token = TrimSpace(authorization.substr(space + 1));
    }
    if (!options_.authorize(token)) {
      FERRY_LOG(kWarning) << "metrics request from " << peer << " refused: "
                          << (token.empty() ? "no bearer token" : "its token is not known");
      return ErrorAnswer(401,
                         token.empty() ? "ferryd requires a token: Authorization: Bearer TOKEN"
                                       : "ferryd does not know this token",
                         "WWW-Authenticate: Bearer realm=\"ferryd\"\r\n");
    }
  }
  if (method != "GET" && method != "HEAD") {
    return ErrorAnswer(405, "only GET and HEAD", "Allow: GET, HEAD\r\n");
  }
  const std::string_view path = target.substr(0, target.find('?'));
  if (path != "/metrics") return ErrorAnswer(404, "the metrics are at /metrics");
  return HttpAnswer(200, kTextContentType, options_.render(), "", method == "HEAD");
}

}  // namespace ferry::metrics
