#include "common/credentials.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>

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

}  // namespace ferry
