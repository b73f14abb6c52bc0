// Private to the host backend: reading texture objects and reading and
// writing surface objects for host kernels (the services of
// ferry_host_kernel.h), over memory laid out as the host backend lays out
// arrays (rows of width x element bytes, slices of rows, no padding) or as
// a linear or pitch2D resource describes it.
//
// Thread-safety: pure functions over the caller's memory; concurrent reads
// are fine, concurrent writes to one texel race as they would on a GPU.
#pragma once

#include <cstdint>

#include "server/backend/api/gpu_backend.h"

namespace ferry::backend::host_internal {

// Where a texture's or surface's texels are.
struct TexelLayout {
  uint8_t* base = nullptr;
  uint64_t width = 1, height = 1, depth = 1;  // in elements; at least 1 each
  uint64_t row_pitch = 0, slice_pitch = 0;    // bytes
  int format = 0;                             // CUarray_format
  unsigned channels = 1;
  unsigned element_bytes = 0;
  bool layered = false;  // depth counts layers (fetches index them, never normalized)
  int dimensions = 1;    // 1, 2 or 3 (layers not counted)
};

// What the host backend refuses in a texture it cannot sample: mipmapped
// and cubemap resources, views, sRGB, and linear filtering of integers read
// as integers; OK otherwise.
Status CheckSampledTexture(const TextureResource& resource, const ArrayDescriptor* array,
                           const TextureDescription& texture, const TextureView* view);

// The element a point-sampled fetch at (x, y, z) reads, or null when the
// address mode is border and the coordinate lies outside.
const uint8_t* FetchElement(const TexelLayout& layout, const TextureDescription& texture, float x,
                            float y, float z);

// A linearly filtered sample (CU_TR_FILTER_MODE_LINEAR) at (x, y, z): the
// 2, 4 or 8 texels around it (texel centres at i + 0.5) weighted by the
// distance, each texel resolved by the address modes (the border's color
// where the border mode puts it outside); layers are never filtered. The
// weights are exact, where a GPU's texture unit uses 9-bit fixed point, so
// results may differ from a GPU's in the last bits.
void SampleLinear(const TexelLayout& layout, const TextureDescription& texture, float x, float y,
                  float z, float out[4]);

// The element's channels as tex_fetch reports them (ferry_host_kernel.h).
// `element` null: the border color.
void ElementToFloats(const TexelLayout& layout, const TextureDescription& texture,
                     const uint8_t* element, float out[4]);

// The `bytes` bytes at (x_bytes, y, z) of a surface, or null when any of
// them lies outside.
uint8_t* SurfaceBytes(const TexelLayout& layout, int64_t x_bytes, int64_t y, int64_t z,
                      unsigned bytes);

}  // namespace ferry::backend::host_internal
