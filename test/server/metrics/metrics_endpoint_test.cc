// MetricsEndpoint (server/metrics/metrics_endpoint.h) over loopback: the
// document to GET and HEAD, a 4xx for each kind of bad request without
// harm to the next one, bearer tokens, the connection cap, the request
// deadline, and Stop with connections open. Every wait is bounded; none
// decides by how long something took.
#include "server/metrics/metrics_endpoint.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <string>

#include "common/transport.h"
#include "server/metrics/prometheus_text.h"
#include "test/support/http_client.h"
#include "test/support/prometheus_text_parser.h"
#include "test/support/wait.h"

namespace ferry::metrics {
namespace {

using namespace std::chrono_literals;
using test::HttpExchange;
using test::HttpGetRequest;
using test::HttpResponse;

constexpr auto kTimeout = 10s;

std::string Document() {
  PrometheusText out;
  out.Family("ferry_test_up", MetricType::kGauge, "Whether the test endpoint serves.");
  out.Count({{"server", "test"}}, 1);
  return out.text();
}

class MetricsEndpointTest : public ::testing::Test {
 protected:
  void Start(MetricsEndpoint::Options options) {
    options.address = "127.0.0.1:0";
    if (!options.render) options.render = [] { return Document(); };
    const Status started = MetricsEndpoint::Start(std::move(options), &endpoint_);
    ASSERT_TRUE(started.ok()) << started.ToString();
  }

  // The answer to `request`; a failed exchange fails the test.
  HttpResponse Exchange(const std::string& request) {
    std::string error;
    std::optional<HttpResponse> response =
        HttpExchange(endpoint_->bound_address(), request, kTimeout, &error);
    EXPECT_TRUE(response.has_value()) << error;
    return response.value_or(HttpResponse{});
  }

  std::unique_ptr<MetricsEndpoint> endpoint_;
};

TEST_F(MetricsEndpointTest, ServesTheDocumentToGetAndHead) {
  Start({});
  EXPECT_EQ(endpoint_->bound_address().rfind("127.0.0.1:", 0), 0u) << endpoint_->bound_address();
  EXPECT_NE(endpoint_->bound_address(), "127.0.0.1:0");
  HttpResponse get = Exchange(HttpGetRequest("/metrics"));
  EXPECT_EQ(get.status, 200);
  EXPECT_EQ(get.headers["content-type"], kTextContentType);
  EXPECT_EQ(get.headers["connection"], "close");
  EXPECT_EQ(get.body, Document());
  test::PromExposition parsed;
  EXPECT_EQ(test::ParsePrometheusText(get.body, &parsed), "");
  // A query string is ignored; HTTP/1.0 needs no Host.
  EXPECT_EQ(Exchange(HttpGetRequest("/metrics?name[]=x")).status, 200);
  EXPECT_EQ(Exchange("GET /metrics HTTP/1.0\r\n\r\n").status, 200);
  // Bare line feeds are taken too.
  EXPECT_EQ(Exchange("GET /metrics HTTP/1.1\nHost: x\n\n").status, 200);
  HttpResponse head = Exchange("HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.body, "");
  EXPECT_EQ(head.headers["content-length"], std::to_string(Document().size()));
}

TEST_F(MetricsEndpointTest, BadRequestsGetA4xxAndTheNextRequestIsServed) {
  Start({});
  const std::vector<std::pair<std::string, int>> cases = {
      {"GARBAGE\r\n\r\n", 400},
      {"GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"GET metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"GET /metrics HTTP/1.1\r\n\r\n", 400},  // HTTP/1.1 without Host
      {"GET /metrics HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400},
      {"GET /metrics HTTP/1.1\r\nHost: x\r\n folded: line\r\n\r\n", 400},
      {"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: x1\r\n\r\n", 400},
      {"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", 505},
      {"GET /metrics SPDY/3\r\nHost: x\r\n\r\n", 400},
      {"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405},
      {"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 413},
      {"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 413},
      {"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", 404},
      {"GET /metrics/ HTTP/1.1\r\nHost: x\r\n\r\n", 404},
      // A head past 8 KiB, with no end in sight.
      {"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: " + std::string(9000, 'a') + "\r\n\r\n",
       431},
  };
  for (const auto& [request, status] : cases) {
    HttpResponse response = Exchange(request);
    EXPECT_EQ(response.status, status) << request.substr(0, 80);
    EXPECT_FALSE(response.body.empty()) << "a 4xx says why";
  }
  EXPECT_EQ(Exchange("PUT /metrics HTTP/1.1\r\nHost: x\r\n\r\n").headers["allow"], "GET, HEAD");
  EXPECT_EQ(Exchange(HttpGetRequest("/metrics")).status, 200);
}

TEST_F(MetricsEndpointTest, TokensAreCheckedWhenAuthorizeIsSet) {
  MetricsEndpoint::Options options;
  std::atomic<int> asked{0};
  options.authorize = [&](std::string_view token) {
    ++asked;
    return token == "ferry_secret";
  };
  Start(std::move(options));
  HttpResponse none = Exchange(HttpGetRequest("/metrics"));
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(none.headers["www-authenticate"], "Bearer realm=\"ferryd\"");
  EXPECT_EQ(none.body.find("ferry_test_up"), std::string::npos);
  EXPECT_EQ(Exchange(HttpGetRequest("/metrics", "Authorization: Bearer wrong\r\n")).status, 401);
  EXPECT_EQ(Exchange(HttpGetRequest("/metrics", "Authorization: Basic ZmVycnk=\r\n")).status, 401);
  EXPECT_EQ(Exchange(HttpGetRequest("/metrics",
                                    "Authorization: Bearer ferry_secret\r\n"
                                    "Authorization: Bearer ferry_secret\r\n"))
                .status,
            400);
  // Nothing past the token check without a token: not even whether a path exists.
  EXPECT_EQ(Exchange(HttpGetRequest("/other")).status, 401);
  HttpResponse good =
      Exchange(HttpGetRequest("/metrics", "authorization:   bearer ferry_secret  \r\n"));
  EXPECT_EQ(good.status, 200);
  EXPECT_EQ(good.body, Document());
  EXPECT_GE(asked.load(), 5);
}

TEST_F(MetricsEndpointTest, ConnectionsPastTheCapGet503) {
  // The one allowed connection is held inside render until released.
  std::mutex mu;
  std::condition_variable cv;
  bool rendering = false, release = false;
  MetricsEndpoint::Options options;
  options.max_connections = 1;
  options.render = [&] {
    std::unique_lock<std::mutex> lock(mu);
    rendering = true;
    cv.notify_all();
    cv.wait_for(lock, kTimeout, [&] { return release; });
    return Document();
  };
  Start(std::move(options));
  std::future<HttpResponse> first =
      std::async(std::launch::async, [&] { return Exchange(HttpGetRequest("/metrics")); });
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, kTimeout, [&] { return rendering; }));
  }
  HttpResponse refused = Exchange(HttpGetRequest("/metrics"));
  EXPECT_EQ(refused.status, 503);
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  ASSERT_EQ(first.wait_for(kTimeout), std::future_status::ready);
  EXPECT_EQ(first.get().status, 200);
}

TEST_F(MetricsEndpointTest, ASilentPeerIsClosedAtTheRequestDeadline) {
  MetricsEndpoint::Options options;
  options.max_connections = 1;
  options.request_timeout = 200ms;
  Start(std::move(options));
  std::unique_ptr<Transport> silent;
  ASSERT_TRUE(ConnectTcp(endpoint_->bound_address(), kTimeout, &silent).ok());
  // The silent peer holds the only connection until its deadline: then the
  // endpoint closes it (the peer reads the end) and serves others again.
  silent->SetReadDeadline(std::chrono::steady_clock::now() + kTimeout);
  char byte = 0;
  const Status read = silent->ReadExact(&byte, 1);
  EXPECT_EQ(read.code(), StatusCode::kDisconnected) << read.ToString();
  std::string error;
  EXPECT_TRUE(test::WaitFor(
      [&] {
        std::optional<HttpResponse> response =
            HttpExchange(endpoint_->bound_address(), HttpGetRequest("/metrics"), kTimeout, &error);
        return response.has_value() && response->status == 200;
      },
      kTimeout, 20ms))
      << error;
}

TEST_F(MetricsEndpointTest, StopEndsOpenConnections) {
  MetricsEndpoint::Options options;
  options.request_timeout = 60s;  // longer than the test's own limit
  Start(std::move(options));
  std::unique_ptr<Transport> silent;
  ASSERT_TRUE(ConnectTcp(endpoint_->bound_address(), kTimeout, &silent).ok());
  // Half a request: the endpoint's thread waits for the rest.
  const std::string half = "GET /metrics HTTP/1.1\r\n";
  const ConstBuffer buffer{half.data(), half.size()};
  ASSERT_TRUE(silent->Write(std::span<const ConstBuffer>(&buffer, 1)).ok());
  endpoint_->Stop();  // returns only once every connection's thread has ended
  silent->SetReadDeadline(std::chrono::steady_clock::now() + kTimeout);
  char byte = 0;
  EXPECT_EQ(silent->ReadExact(&byte, 1).code(), StatusCode::kDisconnected);
  endpoint_->Stop();  // idempotent
}

TEST_F(MetricsEndpointTest, AnAddressItCannotListenOnIsNamed) {
  MetricsEndpoint::Options options;
  options.render = [] { return Document(); };
  options.address = "no-such-host.invalid:0";
  std::unique_ptr<MetricsEndpoint> endpoint;
  const Status status = MetricsEndpoint::Start(options, &endpoint);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("no-such-host.invalid:0"), std::string::npos)
      << status.ToString();
  options.address = "127.0.0.1";  // no port
  EXPECT_FALSE(MetricsEndpoint::Start(options, &endpoint).ok());
}

}  // namespace
}  // namespace ferry::metrics
