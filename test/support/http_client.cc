#include "test/support/http_client.h"

#include <algorithm>
#include <cctype>
#include <memory>

#include "common/transport.h"

namespace ferry::test {

std::string HttpGetRequest(std::string_view path, std::string_view extra_headers) {
  std::string request = "GET ";
  request += path;
  request += " HTTP/1.1\r\nHost: ferryd\r\nUser-Agent: ferry-test\r\n";
  request += extra_headers;
  request += "\r\n";
  return request;
}

std::optional<HttpResponse> HttpExchange(const std::string& address, std::string_view request,
                                         std::chrono::milliseconds timeout, std::string* error,
                                         const std::optional<TlsClientConfig>& tls) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_ptr<Transport> transport;
  Status status = ConnectTransportWithTls(address, timeout, tls, &transport);
  if (!status.ok()) {
    *error = "cannot connect to " + address + ": " + status.ToString();
    return std::nullopt;
  }
  const ConstBuffer buffer{request.data(), request.size()};
  // A server that answers before reading everything may close early: what
  // it answered is still read below.
  (void)transport->Write(std::span<const ConstBuffer>(&buffer, 1));
  transport->SetReadDeadline(deadline);
  std::string raw;
  char c = 0;
  while (raw.size() < (64u << 20) && transport->ReadExact(&c, 1).ok()) raw.push_back(c);
  const size_t head_end = raw.find("\r\n\r\n");
  if (!raw.starts_with("HTTP/1.1 ") || raw.size() < 12 || head_end == std::string::npos) {
    *error = "no whole HTTP answer from " + address + " (" + std::to_string(raw.size()) +
             " bytes: " + raw.substr(0, 200) + ")";
    return std::nullopt;
  }
  HttpResponse response;
  response.status = std::atoi(raw.substr(9, 3).c_str());
  size_t at = raw.find("\r\n") + 2;
  while (at < head_end) {
    const size_t end = raw.find("\r\n", at);
    const std::string line = raw.substr(at, end - at);
    const size_t colon = line.find(':');
    if (colon != std::string::npos) {
      std::string name = line.substr(0, colon);
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
      const size_t value = line.find_first_not_of(' ', colon + 1);
      response.headers[name] = value == std::string::npos ? "" : line.substr(value);
    }
    at = end + 2;
  }
  response.body = raw.substr(head_end + 4);
  auto length = response.headers.find("content-length");
  // A HEAD answer names the length of a body it does not carry.
  if (length != response.headers.end() && !request.starts_with("HEAD ") &&
      std::to_string(response.body.size()) != length->second) {
    *error = "the body has " + std::to_string(response.body.size()) +
             " bytes, Content-Length says " + length->second;
    return std::nullopt;
  }
  return response;
}

}  // namespace ferry::test
