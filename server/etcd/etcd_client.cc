// EtcdClient over etcd's JSON gateway with cpp-httplib: see etcd_client.h.
//
// Requests. Each endpoint keeps a few idle keep-alive connections
// (httplib::Client objects; one serves one request at a time). A request
// starts at the endpoint that answered last and moves on when an endpoint
// cannot be reached. Whether it may move on after it was sent depends on the
// request: reads (range, lease keep-alive, revoke) are repeated elsewhere; a
// write whose answer was lost is not, since it may have taken effect, and
// fails with Disconnected saying so.
//
// Watches. A watch is one streamed POST /v3/watch on a thread of its own;
// the answer's JSON objects are cut out of the byte stream
// (JsonObjectStream) and turned into callbacks. The destructor interrupts
// the blocked read with httplib's Client::stop() (a shutdown() of the
// socket) and joins.
#include "server/etcd/etcd_client.h"

#include <absl/base/thread_annotations.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_join.h>
#include <absl/time/clock.h>
#include <httplib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>

#include <nlohmann/json.hpp>

#include "server/etcd/gateway_messages.h"
#include "server/etcd/json_object_stream.h"

namespace ferry::etcd {
namespace {

// Idle connections kept per endpoint; more concurrent requests open more
// and close the surplus when done.
constexpr size_t kIdleConnectionsPerEndpoint = 4;
// With several endpoints each gets a share of request_timeout to connect
// (so a dead first endpoint leaves time for the next), but never less than
// this.
constexpr absl::Duration kMinConnectTimeout = absl::Milliseconds(100);
// An answer longer than this is refused (etcd's answers to ferry's requests
// are small; this bounds what a broken peer makes us buffer).
constexpr size_t kMaxAnswerBytes = size_t{64} << 20;
// A watch stream may be idle for as long as nothing changes; this read
// timeout only ends streams that have been silent for a day. A peer that
// vanished without closing is found sooner by TCP keep-alive probes.
constexpr std::chrono::hours kWatchIdleLimit{24};
constexpr int kKeepAliveIdleSeconds = 10;
constexpr int kKeepAliveIntervalSeconds = 5;
constexpr int kKeepAliveProbes = 3;
// How often the Watch destructor repeats Client::stop(): a stop that comes
// before the stream's socket exists has nothing to shut down.
constexpr std::chrono::milliseconds kStopRetryInterval{10};

struct Endpoint {
  std::string url;  // "http://host:port"
  std::string host;
  int port = 0;
};

Status ParseEndpointUrl(const std::string& url, Endpoint* out) {
  constexpr std::string_view kScheme = "http://";
  const auto bad = [&url](std::string_view why) {
    return Status::InvalidArgument("etcd endpoint \"" + url + "\": " + std::string(why));
  };
  if (url.rfind("https://", 0) == 0) {
    return bad("https is not supported (TLS to etcd is not supported yet)");
  }
  if (url.rfind(kScheme, 0) != 0) return bad("not of the form http://host:port");
  std::string_view rest = std::string_view(url).substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  std::string_view host;
  std::string_view port;
  if (!rest.empty() && rest.front() == '[') {  // [IPv6]:port
    const size_t close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      return bad("not of the form http://[address]:port");
    }
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    const size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) return bad("no port (http://host:port)");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  int number = 0;
  if (host.empty() || host.find_first_of("/?#@ ") != std::string_view::npos) {
    return bad("a bad host");
  }
  if (!absl::SimpleAtoi(std::string(port), &number) || number < 1 || number > 65535) {
    return bad("a bad port");
  }
  out->url = url;
  out->host = std::string(host);
  out->port = number;
  return Status::Ok();
}

std::string DescribeHttpError(httplib::Error error) {
  switch (error) {
    case httplib::Error::Success:
      return "no error";
    case httplib::Error::Connection:
      return "cannot connect";
    case httplib::Error::ConnectionTimeout:
      return "connecting timed out";
    case httplib::Error::BindIPAddress:
      return "cannot bind a local address";
    case httplib::Error::Read:
      return "the answer could not be read (closed or timed out)";
    case httplib::Error::Write:
      return "the request could not be written";
    case httplib::Error::Canceled:
      return "canceled";
    default:
      return "HTTP error " + httplib::to_string(error);
  }
}

// Errors after which the request certainly never reached etcd.
bool NeverSent(httplib::Error error) {
  return error == httplib::Error::Connection || error == httplib::Error::ConnectionTimeout ||
         error == httplib::Error::BindIPAddress;
}

void SetTimeout(absl::Duration timeout, void (httplib::Client::*setter)(time_t, time_t),
                httplib::Client* client) {
  const int64_t micros = std::max<int64_t>(absl::ToInt64Microseconds(timeout), 1000);
  (client->*setter)(static_cast<time_t>(micros / 1000000), static_cast<time_t>(micros % 1000000));
}

void EnableTcpKeepAlive(int socket) {
  const int on = 1;
  setsockopt(socket, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
  setsockopt(socket, IPPROTO_TCP, TCP_KEEPIDLE, &kKeepAliveIdleSeconds,
             sizeof(kKeepAliveIdleSeconds));
  setsockopt(socket, IPPROTO_TCP, TCP_KEEPINTVL, &kKeepAliveIntervalSeconds,
             sizeof(kKeepAliveIntervalSeconds));
  setsockopt(socket, IPPROTO_TCP, TCP_KEEPCNT, &kKeepAliveProbes, sizeof(kKeepAliveProbes));
}

httplib::Request JsonPost(const std::string& path, const std::string& body) {
  httplib::Request request;
  request.method = "POST";
  request.path = path;
  request.body = body;
  request.set_header("Content-Type", "application/json");
  return request;
}

// One endpoint's idle connections. Thread-safe.
class ConnectionPool {
 public:
  explicit ConnectionPool(Endpoint endpoint) : endpoint_(std::move(endpoint)) {}

  const Endpoint& endpoint() const { return endpoint_; }

  std::unique_ptr<httplib::Client> Take() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!idle_.empty()) {
        std::unique_ptr<httplib::Client> client = std::move(idle_.back());
        idle_.pop_back();
        return client;
      }
    }
    auto client = std::make_unique<httplib::Client>(endpoint_.host, endpoint_.port);
    client->set_keep_alive(true);
    // httplib writes a POST's head and body separately; with Nagle on, the
    // body waits for the ACK of the head, which the server delays: 40 ms per
    // request (bench/results/cluster-2026-12-07.md: a cluster session start went from 135 ms
    // to 6-8 ms).
    client->set_tcp_nodelay(true);
    return client;
  }

  // Keeps a connection whose last request completed (so its stream is at a
  // message boundary).
  void Give(std::unique_ptr<httplib::Client> client) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (idle_.size() < kIdleConnectionsPerEndpoint) idle_.push_back(std::move(client));
  }

 private:
  const Endpoint endpoint_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<httplib::Client>> idle_ ABSL_GUARDED_BY(mutex_);
};

// How one POST to one endpoint went.
enum class Delivery {
  kAnswered,  // `answer` holds etcd's whole answer
  kNotSent,   // etcd never got the request (no connection)
  kLost,      // sent, but no whole answer came back
};

struct Answer {
  int http_status = -1;
  std::string body;
};

Delivery PostOnce(ConnectionPool* pool, const std::string& path, const std::string& body,
                  absl::Duration connect_timeout, absl::Duration io_timeout, Answer* answer,
                  std::string* failure) {
  std::unique_ptr<httplib::Client> client = pool->Take();
  SetTimeout(connect_timeout, &httplib::Client::set_connection_timeout, client.get());
  SetTimeout(io_timeout, &httplib::Client::set_read_timeout, client.get());
  SetTimeout(io_timeout, &httplib::Client::set_write_timeout, client.get());
  httplib::Request request = JsonPost(path, body);
  bool too_long = false;
  // The body is collected here rather than by httplib so that it survives
  // the trailer problem below.
  request.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    if (answer->body.size() + size > kMaxAnswerBytes) {
      too_long = true;
      return false;
    }
    answer->body.append(data, size);
    return true;
  };
  httplib::Response response;
  httplib::Error error = httplib::Error::Success;
  const bool done = client->send(request, response, error);
  answer->http_status = response.status;
  if (done) {
    pool->Give(std::move(client));
    return Delivery::kAnswered;
  }
  if (too_long) {
    *failure = "an answer longer than " + std::to_string(kMaxAnswerBytes) + " bytes";
    return Delivery::kLost;
  }
  // etcd 3.4's gateway ends its error answers with a chunked-encoding
  // trailer ("Trailer: Grpc-Trailer-Content-Type"), which httplib 0.11
  // cannot read: it reports Error::Read after the whole body has arrived.
  // Such a body is a complete JSON object (a cut one would not parse).
  if (error == httplib::Error::Read && response.status > 0 && response.has_header("Trailer") &&
      nlohmann::json::accept(answer->body)) {
    return Delivery::kAnswered;
  }
  *failure = DescribeHttpError(error);
  return NeverSent(error) ? Delivery::kNotSent : Delivery::kLost;
}

// Whether a request may go to another endpoint after it was sent without a
// whole answer: reads may; writes may have taken effect.
enum class Repeatable { kYes, kNo };

class GatewayWatch final : public Watch {
 public:
  GatewayWatch(std::vector<Endpoint> endpoints, absl::Duration connect_timeout, std::string body,
               std::function<void(const std::vector<WatchEvent>&)> on_events,
               std::function<void(const Status&)> on_end)
      : endpoints_(std::move(endpoints)),
        connect_timeout_(connect_timeout),
        body_(std::move(body)),
        on_events_(std::move(on_events)),
        on_end_(std::move(on_end)) {
    thread_ = std::thread([this] { Run(); });
  }

  ~GatewayWatch() override {
    stopping_.store(true);
    {
      std::unique_lock<std::mutex> lock(mutex_);
      // The stream's thread may be about to open its socket; stop again
      // until it has finished. Client::stop() shuts the socket down, which
      // wakes the thread's blocked read at once.
      while (!finished_) {
        if (client_ != nullptr) client_->stop();
        changed_.wait_for(lock, kStopRetryInterval);
      }
    }
    thread_.join();
  }

  // Waits until the watch exists on etcd's side, has ended, or `timeout`.
  void WaitUntilCreated(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait_for(lock, absl::ToChronoMicroseconds(timeout),
                      [this] { return created_ || finished_; });
  }

 private:
  // What one attempt at one endpoint came to.
  struct Attempt {
    bool created = false;
    std::optional<Status> end;  // the watch is over, with this reason
    std::string failure;        // else: why this endpoint did not serve it
  };

  void Run() {
    std::string last_failure;
    std::optional<Status> end;
    for (const Endpoint& endpoint : endpoints_) {
      if (stopping_.load()) break;
      Attempt attempt = Stream(endpoint);
      if (stopping_.load()) break;
      if (attempt.end.has_value()) {
        end = std::move(attempt.end);
        break;
      }
      last_failure = endpoint.url + ": " + attempt.failure;
    }
    if (!end.has_value() && !stopping_.load()) {
      std::vector<std::string> urls;
      for (const Endpoint& endpoint : endpoints_) urls.push_back(endpoint.url);
      end = Status::Disconnected("etcd at " + absl::StrJoin(urls, ",") +
                                 " does not serve the watch; last error: " + last_failure);
    }
    if (end.has_value() && !stopping_.load()) on_end_(*end);
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
    changed_.notify_all();
  }

  Attempt Stream(const Endpoint& endpoint) {
    Attempt attempt;
    httplib::Client client(endpoint.host, endpoint.port);
    client.set_tcp_nodelay(true);  // as for requests (ConnectionPool::Take)
    SetTimeout(connect_timeout_, &httplib::Client::set_connection_timeout, &client);
    SetTimeout(connect_timeout_, &httplib::Client::set_write_timeout, &client);
    client.set_read_timeout(kWatchIdleLimit);
    client.set_socket_options(EnableTcpKeepAlive);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      client_ = &client;
    }
    httplib::Request request = JsonPost("/v3/watch", body_);
    int http_status = -1;
    std::string error_body;  // the answer of a status other than 200
    JsonObjectStream stream;
    request.response_handler = [&](const httplib::Response& response) {
      http_status = response.status;
      return true;
    };
    request.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
      if (stopping_.load()) return false;
      if (http_status != 200) {
        if (error_body.size() + size > kMaxAnswerBytes) return false;
        error_body.append(data, size);
        return true;
      }
      std::vector<std::string> objects;
      Status fed = stream.Feed(std::string_view(data, size), &objects);
      if (!fed.ok()) {
        attempt.end = fed.WithContext("watch stream from " + endpoint.url);
        return false;
      }
      for (const std::string& object : objects) {
        if (!Deliver(object, &attempt)) return false;
      }
      return true;
    };
    httplib::Response response;
    httplib::Error error = httplib::Error::Success;
    client.send(request, response, error);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      client_ = nullptr;
    }
    if (attempt.end.has_value()) return attempt;
    if (http_status > 0 && http_status != 200) {
      int grpc_code = -1;
      Status status = gateway::ParseError(http_status, error_body, &grpc_code);
      if (grpc_code != gateway::kGrpcUnavailable) {
        attempt.end = status.WithContext("watch at " + endpoint.url);
        return attempt;
      }
      attempt.failure = status.message();
      return attempt;
    }
    const std::string why =
        error == httplib::Error::Success ? "the stream ended" : DescribeHttpError(error);
    if (attempt.created) {
      attempt.end =
          Status::Disconnected("the watch stream from " + endpoint.url + " broke: " + why);
    } else {
      attempt.failure = why;  // never served: the next endpoint may
    }
    return attempt;
  }

  // Handles one object of the stream; false ends the stream.
  bool Deliver(const std::string& object, Attempt* attempt) {
    gateway::WatchMessage message;
    Status parsed = gateway::ParseWatchMessage(object, &message);
    if (!parsed.ok()) {
      attempt->end = parsed.WithContext("watch");
      return false;
    }
    if (message.created && !attempt->created) {
      attempt->created = true;
      std::lock_guard<std::mutex> lock(mutex_);
      created_ = true;
      changed_.notify_all();
    }
    if (!message.events.empty() && !stopping_.load()) on_events_(message.events);
    if (message.compact_revision > 0) {
      attempt->end = Status::NotFound("watch: etcd has compacted its history up to revision " +
                                      std::to_string(message.compact_revision) +
                                      ", past the revision asked for");
      return false;
    }
    if (message.canceled) {
      attempt->end = Status::Internal(
          "watch: etcd canceled it" +
          (message.cancel_reason.empty() ? std::string() : ": " + message.cancel_reason));
      return false;
    }
    return true;
  }

  const std::vector<Endpoint> endpoints_;  // in the order to try
  const absl::Duration connect_timeout_;
  const std::string body_;
  const std::function<void(const std::vector<WatchEvent>&)> on_events_;
  const std::function<void(const Status&)> on_end_;
  std::atomic<bool> stopping_{false};

  std::mutex mutex_;
  std::condition_variable changed_;                            // created_ or finished_ became true
  httplib::Client* client_ ABSL_GUARDED_BY(mutex_) = nullptr;  // the stream's, while it runs
  bool created_ ABSL_GUARDED_BY(mutex_) = false;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;  // Run is at its end: no callback follows

  std::thread thread_;  // last: starts once everything above exists
};

class GatewayClient final : public EtcdClient {
 public:
  GatewayClient(std::vector<Endpoint> endpoints, absl::Duration request_timeout)
      : request_timeout_(request_timeout) {
    for (Endpoint& endpoint : endpoints) {
      urls_.push_back(endpoint.url);
      pools_.push_back(std::make_unique<ConnectionPool>(std::move(endpoint)));
    }
  }

  Status Get(const std::string& key, std::optional<KeyValue>* out, int64_t* revision) override {
    std::string answer;
    FERRY_RETURN_IF_ERROR(Call("/v3/kv/range", gateway::RangeBody(gateway::SingleKey(key)),
                               Repeatable::kYes, &answer));
    std::vector<KeyValue> kvs;
    FERRY_RETURN_IF_ERROR(gateway::ParseRange(answer, &kvs, revision));
    if (kvs.size() > 1) return Status::Malformed("etcd answered a one-key range with several keys");
    *out = kvs.empty() ? std::nullopt : std::optional<KeyValue>(std::move(kvs.front()));
    return Status::Ok();
  }

  Status GetPrefix(const std::string& prefix, std::vector<KeyValue>* out,
                   int64_t* revision) override {
    std::string answer;
    FERRY_RETURN_IF_ERROR(Call("/v3/kv/range", gateway::RangeBody(gateway::PrefixRange(prefix)),
                               Repeatable::kYes, &answer));
    return gateway::ParseRange(answer, out, revision);
  }

  Status Put(const std::string& key, const std::string& value, int64_t lease) override {
    std::string answer;
    FERRY_RETURN_IF_ERROR(
        Call("/v3/kv/put", gateway::PutBody(key, value, lease), Repeatable::kNo, &answer));
    int64_t revision = 0;
    return gateway::ParsePut(answer, &revision);
  }

  Status Delete(const std::string& key, int64_t* deleted) override {
    return DeleteRange(gateway::SingleKey(key), deleted);
  }

  Status DeletePrefix(const std::string& prefix, int64_t* deleted) override {
    return DeleteRange(gateway::PrefixRange(prefix), deleted);
  }

  Status Txn(const std::vector<Compare>& compares, const std::vector<TxnOp>& success,
             const std::vector<TxnOp>& failure, TxnResult* result) override {
    std::string answer;
    FERRY_RETURN_IF_ERROR(
        Call("/v3/kv/txn", gateway::TxnBody(compares, success, failure), Repeatable::kNo, &answer));
    return gateway::ParseTxn(answer, success, failure, result);
  }

  Status GrantLease(absl::Duration ttl, int64_t* id) override {
    if (ttl < absl::Seconds(1)) {
      return Status::InvalidArgument("an etcd lease needs a TTL of at least 1 s, not " +
                                     absl::FormatDuration(ttl));
    }
    const int64_t seconds = absl::ToInt64Seconds(absl::Ceil(ttl, absl::Seconds(1)));
    std::string answer;
    FERRY_RETURN_IF_ERROR(
        Call("/v3/lease/grant", gateway::LeaseGrantBody(seconds), Repeatable::kNo, &answer));
    int64_t granted_ttl = 0;
    return gateway::ParseLeaseGrant(answer, id, &granted_ttl);
  }

  Status KeepAliveOnce(int64_t id, absl::Duration* ttl_left) override {
    std::string answer;
    FERRY_RETURN_IF_ERROR(
        Call("/v3/lease/keepalive", gateway::LeaseIdBody(id), Repeatable::kYes, &answer));
    int64_t ttl = 0;
    FERRY_RETURN_IF_ERROR(gateway::ParseKeepAlive(answer, &ttl));
    // etcd 3.4 answers a lease that is gone with a TTL of 0 (left out).
    if (ttl <= 0) {
      return Status::NotFound("etcd lease " + std::to_string(id) + " has expired or was revoked");
    }
    if (ttl_left != nullptr) *ttl_left = absl::Seconds(ttl);
    return Status::Ok();
  }

  Status RevokeLease(int64_t id) override {
    std::string answer;
    Status status = Call("/v3/lease/revoke", gateway::LeaseIdBody(id), Repeatable::kYes, &answer);
    if (status.code() == StatusCode::kNotFound) return Status::Ok();  // already gone
    return status;
  }

  std::unique_ptr<Watch> WatchPrefix(const std::string& prefix, int64_t start_revision,
                                     std::function<void(const std::vector<WatchEvent>&)> on_events,
                                     std::function<void(const Status&)> on_end) override {
    std::vector<Endpoint> order;
    const size_t first = current_.load();
    for (size_t i = 0; i < pools_.size(); ++i) {
      order.push_back(pools_[(first + i) % pools_.size()]->endpoint());
    }
    auto watch = std::make_unique<GatewayWatch>(
        std::move(order), ConnectTimeout(request_timeout_),
        gateway::WatchCreateBody(gateway::PrefixRange(prefix), start_revision),
        std::move(on_events), std::move(on_end));
    watch->WaitUntilCreated(request_timeout_);
    return watch;
  }

  std::string Describe() const override { return absl::StrJoin(urls_, ","); }

 private:
  absl::Duration ConnectTimeout(absl::Duration remaining) const {
    const absl::Duration share = request_timeout_ / static_cast<int64_t>(pools_.size());
    return std::min(remaining, std::max(share, kMinConnectTimeout));
  }

  Status DeleteRange(const gateway::KeyRange& range, int64_t* deleted) {
    std::string answer;
    FERRY_RETURN_IF_ERROR(
        Call("/v3/kv/deleterange", gateway::DeleteRangeBody(range), Repeatable::kNo, &answer));
    int64_t count = 0;
    FERRY_RETURN_IF_ERROR(gateway::ParseDeleteRange(answer, &count));
    if (deleted != nullptr) *deleted = count;
    return Status::Ok();
  }

  // POSTs `body` to `path`, trying the endpoints from the one that answered
  // last, all within request_timeout; `*answer` is the body of a 200 answer.
  Status Call(const std::string& path, const std::string& body, Repeatable repeatable,
              std::string* answer) {
    const absl::Time deadline = absl::Now() + request_timeout_;
    const size_t first = current_.load();
    std::string last_failure = "request_timeout spent";
    for (size_t i = 0; i < pools_.size(); ++i) {
      const size_t index = (first + i) % pools_.size();
      ConnectionPool* pool = pools_[index].get();
      const absl::Duration remaining = deadline - absl::Now();
      if (remaining <= absl::ZeroDuration()) break;
      Answer reply;
      std::string failure;
      const Delivery delivery =
          PostOnce(pool, path, body, ConnectTimeout(remaining), remaining, &reply, &failure);
      if (delivery == Delivery::kAnswered) {
        if (reply.http_status == 200) {
          current_.store(index);
          *answer = std::move(reply.body);
          return Status::Ok();
        }
        int grpc_code = -1;
        Status error = gateway::ParseError(reply.http_status, reply.body, &grpc_code);
        if (grpc_code != gateway::kGrpcUnavailable) {
          current_.store(index);
          return error.WithContext("etcd " + path);
        }
        // This member cannot serve now (no leader, ...); another may.
        failure = error.message();
        if (repeatable == Repeatable::kNo) return Uncertain(pool->endpoint(), path, failure);
      } else if (delivery == Delivery::kLost && repeatable == Repeatable::kNo) {
        return Uncertain(pool->endpoint(), path, failure);
      }
      last_failure = pool->endpoint().url + ": " + failure;
    }
    return Status::Disconnected("etcd at " + Describe() + " does not answer " + path +
                                "; last error: " + last_failure);
  }

  static Status Uncertain(const Endpoint& endpoint, const std::string& path,
                          const std::string& failure) {
    return Status::Disconnected("etcd at " + endpoint.url + ": " + path + " sent, then " + failure +
                                "; it may or may not have taken effect");
  }

  const absl::Duration request_timeout_;
  std::vector<std::string> urls_;
  std::vector<std::unique_ptr<ConnectionPool>> pools_;  // one per endpoint, in order
  std::atomic<size_t> current_{0};                      // the endpoint that answered last
};

}  // namespace

Status EtcdClient::Create(Options options, std::unique_ptr<EtcdClient>* out) {
  if (options.endpoints.empty()) return Status::InvalidArgument("no etcd endpoint given");
  if (options.request_timeout <= absl::ZeroDuration()) {
    return Status::InvalidArgument("etcd request_timeout must be positive, not " +
                                   absl::FormatDuration(options.request_timeout));
  }
  std::vector<Endpoint> endpoints;
  for (const std::string& url : options.endpoints) {
    Endpoint endpoint;
    FERRY_RETURN_IF_ERROR(ParseEndpointUrl(url, &endpoint));
    endpoints.push_back(std::move(endpoint));
  }
  *out = std::make_unique<GatewayClient>(std::move(endpoints), options.request_timeout);
  return Status::Ok();
}

Status EtcdClient::ParseEndpoints(const std::string& list, std::vector<std::string>* endpoints) {
  std::vector<std::string> parsed;
  std::string_view rest = list;
  while (true) {
    const size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (item.empty()) {
      return Status::InvalidArgument(
          "etcd endpoints \"" + list + "\": " +
          (list.find_first_not_of(" \t,") == std::string::npos ? "no endpoint" : "an empty entry"));
    }
    std::string url(item);
    if (url.find("://") == std::string::npos) url = "http://" + url;
    Endpoint endpoint;
    FERRY_RETURN_IF_ERROR(ParseEndpointUrl(url, &endpoint));
    parsed.push_back(std::move(url));
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  *endpoints = std::move(parsed);
  return Status::Ok();
}

std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    const auto last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();  // 0xff cannot be incremented: carry into the byte before
  }
  return std::string(1, '\0');  // every key (etcd's "\0" range end)
}

}  // namespace ferry::etcd
