#include "common/content_hash.h"

#include <openssl/evp.h>

#include <cstdlib>

namespace ferry {

ContentHash HashContent(std::span<const uint8_t> bytes) {
  ContentHash hash{};
  unsigned int length = 0;
  // EVP_Digest fails only when OpenSSL itself is broken (no SHA-256 or no
  // memory); a hash that silently stayed zero would name every image alike.
  if (EVP_Digest(bytes.data(), bytes.size(), hash.data(), &length, EVP_sha256(), nullptr) != 1 ||
      length != hash.size()) {
    std::abort();
  }
  return hash;
}

std::string ContentHashHex(const ContentHash& hash) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text;
  text.reserve(2 * hash.size());
  for (uint8_t b : hash) {
    text.push_back(kDigits[b >> 4]);
    text.push_back(kDigits[b & 15]);
  }
  return text;
}

}  // namespace ferry
