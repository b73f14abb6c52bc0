// A minimal HTTP/1.1 client for tests of ferryd's /metrics: sends the bytes
// it is given (well-formed requests, or deliberately broken ones) and reads
// the answer until the server closes the connection.
//
// Thread-safety: plain functions.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "common/tls_transport.h"

namespace ferry::test {

struct HttpResponse {
  int status = 0;                              // 200, 401, ...
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;
};

// "GET PATH HTTP/1.1" with Host and `extra_headers` (each "Name: value\r\n").
std::string HttpGetRequest(std::string_view path, std::string_view extra_headers = "");

// Connects to `address` (over TLS when `tls` is set), sends `request` and
// reads until the server closes the connection, all within `timeout`.
// nullopt with `*error` when it cannot connect, or no whole answer (status
// line, headers, and a body as long as Content-Length says) came.
std::optional<HttpResponse> HttpExchange(const std::string& address, std::string_view request,
                                         std::chrono::milliseconds timeout, std::string* error,
                                         const std::optional<TlsClientConfig>& tls = std::nullopt);

}  // namespace ferry::test
