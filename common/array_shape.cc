#include "common/array_shape.h"

#include <cuda.h>

#include <algorithm>
#include <string>

namespace ferry {

unsigned ArrayFormatBytes(int format) {
  switch (format) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8:
      return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF:
      return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32:
    case CU_AD_FORMAT_SIGNED_INT32:
    case CU_AD_FORMAT_FLOAT:
      return 4;
    default:
      return 0;
  }
}

namespace {

bool Mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

unsigned MaxLevels(const ArrayShape& shape) {
  uint64_t largest = std::max(shape.width, shape.height);
  if ((shape.flags & CUDA_ARRAY3D_LAYERED) == 0) largest = std::max(largest, shape.depth);
  unsigned levels = 1;
  while (largest > 1) {
    largest >>= 1;
    ++levels;
  }
  return levels;
}

}  // namespace

ArrayShape ArrayLevelShape(const ArrayShape& shape, unsigned level) {
  auto halve = [level](uint64_t extent) -> uint64_t {
    if (extent == 0) return 0;
    return level >= 64 ? 1 : std::max<uint64_t>(1, extent >> level);
  };
  ArrayShape out = shape;
  out.width = halve(shape.width);
  out.height = halve(shape.height);
  if ((shape.flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP)) == 0) {
    out.depth = halve(shape.depth);
  }
  return out;
}

Status CheckArrayShape(const ArrayShape& shape, unsigned levels, unsigned* element_bytes,
                       uint64_t* bytes) {
  const unsigned format_bytes = ArrayFormatBytes(shape.format);
  if (format_bytes == 0) {
    return Status::InvalidArgument("array format " + std::to_string(shape.format) +
                                   " is not one ferry lays out");
  }
  if (shape.channels != 1 && shape.channels != 2 && shape.channels != 4) {
    return Status::InvalidArgument("an array element has 1, 2 or 4 channels, not " +
                                   std::to_string(shape.channels));
  }
  if (shape.width == 0) return Status::InvalidArgument("an array's width must not be 0");
  const bool layered = (shape.flags & CUDA_ARRAY3D_LAYERED) != 0;
  const bool cubemap = (shape.flags & CUDA_ARRAY3D_CUBEMAP) != 0;
  if (shape.depth != 0 && shape.height == 0 && !layered) {
    return Status::InvalidArgument("a 3D array needs a height");
  }
  if (layered && shape.depth == 0) {
    return Status::InvalidArgument("a layered array needs at least one layer (depth)");
  }
  if (cubemap) {
    if (shape.width != shape.height || shape.depth == 0 || shape.depth % 6 != 0 ||
        (!layered && shape.depth != 6)) {
      return Status::InvalidArgument(
          "a cubemap array is square with 6 faces (6 x layers when layered)");
    }
  }
  if (levels > MaxLevels(shape)) {
    return Status::InvalidArgument(std::to_string(levels) +
                                   " mipmap levels are more than the extents allow");
  }
  uint64_t total = 0;
  for (unsigned level = 0; level < std::max(levels, 1u); ++level) {
    const ArrayShape l = ArrayLevelShape(shape, level);
    uint64_t size;
    if (!Mul(format_bytes * shape.channels, l.width, &size) || !Mul(size, ArrayRows(l), &size) ||
        !Mul(size, ArraySlices(l), &size) || __builtin_add_overflow(total, size, &total)) {
      return Status::InvalidArgument("array extents overflow");
    }
  }
  *element_bytes = format_bytes * shape.channels;
  *bytes = total;
  return Status::Ok();
}

Status CheckArrayExtent(const ArrayShape& shape, unsigned element_bytes, uint64_t x, uint64_t y,
                        uint64_t z, uint64_t width_bytes, uint64_t height, uint64_t depth,
                        const char* what) {
  uint64_t row_bytes;
  if (!Mul(shape.width, element_bytes, &row_bytes)) row_bytes = UINT64_MAX;
  auto fits = [](uint64_t offset, uint64_t extent, uint64_t limit) {
    return offset <= limit && extent <= limit - offset;
  };
  if (!fits(x, width_bytes, row_bytes) || !fits(y, height, ArrayRows(shape)) ||
      !fits(z, depth, ArraySlices(shape))) {
    return Status::InvalidArgument(
        std::string(what) + ": the copy (" + std::to_string(width_bytes) + " bytes x " +
        std::to_string(height) + " x " + std::to_string(depth) + " at " + std::to_string(x) + ", " +
        std::to_string(y) + ", " + std::to_string(z) + ") exceeds the array (" +
        std::to_string(row_bytes) + " bytes x " + std::to_string(ArrayRows(shape)) + " x " +
        std::to_string(ArraySlices(shape)) + ")");
  }
  if (x % element_bytes != 0 || width_bytes % element_bytes != 0) {
    return Status::InvalidArgument(std::string(what) + ": an array copy moves whole elements of " +
                                   std::to_string(element_bytes) + " bytes");
  }
  return Status::Ok();
}

}  // namespace ferry
