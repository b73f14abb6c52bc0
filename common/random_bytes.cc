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

}  // namespace ferry
