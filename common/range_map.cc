#include "common/range_map.h"

#include <cinttypes>
#include <cstdio>

namespace ferry {

Status RangeOutside(const char* what, uint64_t address, uint64_t bytes, const char* where) {
  char text[200];
  snprintf(text, sizeof(text), "%s range [0x%" PRIx64 ", +%" PRIu64 ") is not inside %s", what,
           address, bytes, where);
  return Status::InvalidArgument(text);
}

Status Span2D(uint64_t pitch, uint64_t width_bytes, uint64_t height, const char* what,
              uint64_t* span) {
  *span = 0;
  if (width_bytes == 0 || height == 0) return Status::Ok();
  if (height > 1 && pitch < width_bytes) {
    return Status::InvalidArgument(std::string(what) + " pitch " + std::to_string(pitch) +
                                   " is smaller than the row width " + std::to_string(width_bytes));
  }
  const uint64_t rows = height - 1;
  if (rows != 0 && pitch > (std::numeric_limits<uint64_t>::max() - width_bytes) / rows) {
    return Status::InvalidArgument(std::string(what) + " 2D extent overflows");
  }
  *span = pitch * rows + width_bytes;
  return Status::Ok();
}

}  // namespace ferry
