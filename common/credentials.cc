#include "common/credentials.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "common/transport.h"

namespace ferry {
namespace {

std::string Trimmed(std::string text) {
  const char* kSpace = " \t\r\n";
  const size_t begin = text.find_first_not_of(kSpace);
  if (begin == std::string::npos) return "";
  return text.substr(begin, text.find_last_not_of(kSpace) - begin + 1);
}

}  // namespace

Status TokenFromEnvironment(std::string* token) {
  token->clear();
  if (const char* text = std::getenv("FERRY_TOKEN"); text != nullptr && *text != '\0') {
    *token = Trimmed(text);
    return Status::Ok();
  }
  const char* path = std::getenv("FERRY_TOKEN_FILE");
  if (path == nullptr || *path == '\0') return Status::Ok();
  std::ifstream in(path);
  if (!in) {
    return Status::InvalidArgument("FERRY_TOKEN_FILE " + std::string(path) +
                                   " cannot be read: " + std::strerror(errno));
  }
  std::string line;
  std::getline(in, line);
  *token = Trimmed(line);
  return Status::Ok();
}

bool PlainTokenAllowedByEnvironment() {
  const char* allow = std::getenv("FERRY_ALLOW_PLAIN_TOKEN");
  return allow != nullptr && std::string_view(allow) == "1";
}

Status CheckTokenIsProtected(std::string_view address, std::string_view token, bool tls,
                             bool allow_plain, std::string_view opt_in) {
  if (token.empty() || tls || allow_plain || address.substr(0, 5) == "unix:" ||
      IsLoopbackAddress(address)) {
    return Status::Ok();
  }
  return Status::PermissionDenied(
      "refusing to send the token in cleartext to " + std::string(address) +
      " (plain TCP to an address that is not loopback): " + std::string(opt_in));
}

}  // namespace ferry
