// CUDA arrays, textures and surfaces: what an array's descriptor means, in
// one place for the client (which answers cuArrayGetDescriptor and checks
// copies before it sends them) and the session (which checks them again and
// charges the array's bytes to the quota). No I/O, no state; thread-safe.
#pragma once

#include <cstdint>

#include "common/status.h"

namespace ferry {

// CUDA_ARRAY3D_DESCRIPTOR: extents in elements (height 0: a 1D array; depth
// 0: a 2D one; CUDA_ARRAY3D_LAYERED: depth layers; CUDA_ARRAY3D_CUBEMAP: 6
// faces, or 6 x layers), `format` a CUarray_format, `channels` 1, 2 or 4,
// `flags` CUDA_ARRAY3D_*.
struct ArrayShape {
  uint64_t width = 0, height = 0, depth = 0;
  int format = 0;
  unsigned channels = 1;
  unsigned flags = 0;
};

// Bytes of one channel of `format`; 0 for a format ferry does not lay out
// (the planar video formats and the block-compressed ones).
unsigned ArrayFormatBytes(int format);

// Checks what every backend requires of `shape` (a known format, 1, 2 or 4
// channels, extents that fit together, cubemaps square with 6 faces per
// layer) and of `levels` (0: not mipmapped; else at most one level per
// halving of the largest extent). On success *element_bytes is one
// element's size and *bytes the memory all levels take. Bad input:
// CUDA_ERROR_INVALID_VALUE.
Status CheckArrayShape(const ArrayShape& shape, unsigned levels, unsigned* element_bytes,
                       uint64_t* bytes);

// The extents of mipmap level `level` of `shape` (layers are not halved).
ArrayShape ArrayLevelShape(const ArrayShape& shape, unsigned level);

// Rows and slices (layers, faces) of an array: height and depth, with 0
// counting as 1.
inline uint64_t ArrayRows(const ArrayShape& shape) { return shape.height == 0 ? 1 : shape.height; }
inline uint64_t ArraySlices(const ArrayShape& shape) { return shape.depth == 0 ? 1 : shape.depth; }

// OK when a copy of `depth` slices of `height` rows of `width_bytes` starting
// at byte `x` of row `y` of slice `z` lies inside an array of `shape` whose
// elements are `element_bytes` long; else CUDA_ERROR_INVALID_VALUE naming
// `what`.
Status CheckArrayExtent(const ArrayShape& shape, unsigned element_bytes, uint64_t x, uint64_t y,
                        uint64_t z, uint64_t width_bytes, uint64_t height, uint64_t depth,
                        const char* what);

}  // namespace ferry
