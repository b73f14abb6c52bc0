// Out-of-line parts of the byte helpers (see bytes.h).
//
// Thread-safety: stateless; safe from any thread.
#include "common/image/bytes.h"

#include <cuda.h>

#include <cstring>
#include <utility>

namespace ferry::image::internal {

Status InvalidImage(std::string message) {
  return Status::Cuda(CUDA_ERROR_INVALID_IMAGE, std::move(message));
}

bool ByteReader::CString(uint64_t offset, std::string_view* out) const {
  if (offset >= bytes_.size()) return false;
  const auto* start = reinterpret_cast<const char*>(bytes_.data() + offset);
  const size_t limit = bytes_.size() - offset;
  const void* nul = std::memchr(start, '\0', limit);
  if (nul == nullptr) return false;
  *out = std::string_view(start, static_cast<const char*>(nul) - start);
  return true;
}

}  // namespace ferry::image::internal
