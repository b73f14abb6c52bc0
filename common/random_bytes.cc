#include "common/random_bytes.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

namespace ferry {

Status RandomBytes(void* data, size_t size) {
  auto* out = static_cast<uint8_t*>(data);
  while (size > 0) {
    // Large requests may come back short (signals): take what came.
    const ssize_t got = ::getrandom(out, size, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return Status::Internal(std::string("getrandom failed: ") + std::strerror(errno));
    }
    out += got;
    size -= static_cast<size_t>(got);
  }
  return Status::Ok();
}

Status RandomHex(size_t bytes, std::string* out) {
  std::string random(bytes, '\0');
  FERRY_RETURN_IF_ERROR(RandomBytes(random.data(), random.size()));
  static constexpr char kDigits[] = "0123456789abcdef";
  out->clear();
  out->reserve(2 * bytes);
  for (unsigned char b : random) {
    out->push_back(kDigits[b >> 4]);
    out->push_back(kDigits[b & 15]);
  }
  return Status::Ok();
}

}  // namespace ferry
