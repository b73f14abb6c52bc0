#include "server/backend/host/texture_sampler.h"

#include <cuda.h>

#include <cmath>
#include <cstring>
#include <string>

namespace ferry::backend::host_internal {
namespace {

Status NotOnHost(const std::string& what) {
  return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED,
                      "the host backend samples textures from plain arrays and memory; " + what +
                          " is not supported");
}

// Texel `index` along an axis of `extent` texels under address mode
// `mode`, or -1 for the border. Wrap and mirror need normalized
// coordinates; without them they clamp, as CUDA's do.
int64_t ResolveIndex(int64_t index, uint64_t extent, int mode, bool normalized) {
  const auto n = static_cast<int64_t>(extent);
  if (normalized && mode == CU_TR_ADDRESS_MODE_WRAP) return ((index % n) + n) % n;
  if (normalized && mode == CU_TR_ADDRESS_MODE_MIRROR) {
    const int64_t m = ((index % (2 * n)) + 2 * n) % (2 * n);
    return m < n ? m : 2 * n - 1 - m;
  }
  if (mode == CU_TR_ADDRESS_MODE_BORDER) return index < 0 || index >= n ? -1 : index;
  return index < 0 ? 0 : (index >= n ? n - 1 : index);
}

// `coord` in texels (scaled when normalized), kept where an int64 holds
// its floor.
double Texels(float coord, uint64_t extent, bool normalized) {
  double t = normalized ? static_cast<double>(coord) * static_cast<double>(extent) : coord;
  if (std::isnan(t)) return 0;
  constexpr double kLimit = 4.0e18;
  return t < -kLimit ? -kLimit : (t > kLimit ? kLimit : t);
}

// The texel a point sample at `coord` reads along an axis, or -1.
int64_t AxisIndex(float coord, uint64_t extent, int mode, bool normalized) {
  return ResolveIndex(static_cast<int64_t>(std::floor(Texels(coord, extent, normalized))), extent,
                      mode, normalized);
}

const uint8_t* ElementAt(const TexelLayout& layout, int64_t i, int64_t j, int64_t k) {
  if (i < 0 || j < 0 || k < 0) return nullptr;
  return layout.base + static_cast<uint64_t>(k) * layout.slice_pitch +
         static_cast<uint64_t>(j) * layout.row_pitch +
         static_cast<uint64_t>(i) * layout.element_bytes;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  float value;
  if (exponent == 0) {
    value = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    value = mantissa == 0 ? INFINITY : NAN;
  } else {
    value = std::ldexp(static_cast<float>(mantissa | 0x400), static_cast<int>(exponent) - 25);
  }
  return sign ? -value : value;
}

}  // namespace

Status CheckSampledTexture(const TextureResource& resource, const ArrayDescriptor* array,
                           const TextureDescription& texture, const TextureView* view) {
  if (texture.filter_mode != CU_TR_FILTER_MODE_POINT &&
      texture.filter_mode != CU_TR_FILTER_MODE_LINEAR) {
    return Status::InvalidArgument("unknown filter mode " + std::to_string(texture.filter_mode));
  }
  if (texture.filter_mode == CU_TR_FILTER_MODE_LINEAR) {
    // Linear filtering returns floats: integers read as integers cannot be
    // filtered (CUDA refuses them too).
    const int format = array != nullptr ? array->format : resource.format;
    const bool integer_read = format == CU_AD_FORMAT_UNSIGNED_INT32 ||
                              format == CU_AD_FORMAT_SIGNED_INT32 ||
                              ((texture.flags & CU_TRSF_READ_AS_INTEGER) != 0 &&
                               format != CU_AD_FORMAT_FLOAT && format != CU_AD_FORMAT_HALF);
    if (integer_read) return Status::InvalidArgument("linear filtering of an integer read");
  }
  if (resource.kind == TextureResource::Kind::kMipmappedArray) {
    return NotOnHost("a mipmapped array resource");
  }
  if (array != nullptr && (array->flags & CUDA_ARRAY3D_CUBEMAP) != 0) {
    return NotOnHost("a cubemap resource");
  }
  if (view != nullptr) return NotOnHost("a resource view");
  if ((texture.flags & CU_TRSF_SRGB) != 0) return NotOnHost("sRGB conversion");
  for (int mode : texture.address_mode) {
    if (mode < CU_TR_ADDRESS_MODE_WRAP || mode > CU_TR_ADDRESS_MODE_BORDER) {
      return Status::InvalidArgument("unknown address mode " + std::to_string(mode));
    }
  }
  return Status::Ok();
}

const uint8_t* FetchElement(const TexelLayout& layout, const TextureDescription& texture, float x,
                            float y, float z) {
  const bool normalized = (texture.flags & CU_TRSF_NORMALIZED_COORDINATES) != 0;
  const int64_t i = AxisIndex(x, layout.width, texture.address_mode[0], normalized);
  int64_t j = 0, k = 0;
  if (layout.dimensions >= 2) j = AxisIndex(y, layout.height, texture.address_mode[1], normalized);
  if (layout.layered) {
    // A layer index: clamped, never normalized.
    k = AxisIndex(z, layout.depth, CU_TR_ADDRESS_MODE_CLAMP, false);
  } else if (layout.dimensions == 3) {
    k = AxisIndex(z, layout.depth, texture.address_mode[2], normalized);
  }
  return ElementAt(layout, i, j, k);
}

void SampleLinear(const TexelLayout& layout, const TextureDescription& texture, float x, float y,
                  float z, float out[4]) {
  const bool normalized = (texture.flags & CU_TRSF_NORMALIZED_COORDINATES) != 0;
  // Per filtered axis: the two texels around the sample point (texel
  // centres sit at i + 0.5) and the weight of the second.
  const float coords[3] = {x, y, z};
  const uint64_t extents[3] = {layout.width, layout.height, layout.depth};
  const int axes = layout.dimensions;
  int64_t index[3][2] = {{0, 0}, {0, 0}, {0, 0}};
  double weight[3] = {0, 0, 0};
  for (int a = 0; a < axes; ++a) {
    const double t = Texels(coords[a], extents[a], normalized) - 0.5;
    const double first = std::floor(t);
    weight[a] = t - first;
    for (int e = 0; e < 2; ++e) {
      index[a][e] = ResolveIndex(static_cast<int64_t>(first) + e, extents[a],
                                 texture.address_mode[a], normalized);
    }
  }
  if (layout.layered) {
    const int64_t layer = AxisIndex(z, layout.depth, CU_TR_ADDRESS_MODE_CLAMP, false);
    index[2][0] = index[2][1] = layer;
  }
  double sum[4] = {0, 0, 0, 0};
  for (int corner = 0; corner < (1 << axes); ++corner) {
    double w = 1;
    int64_t at[3] = {0, 0, index[2][0]};
    for (int a = 0; a < axes; ++a) {
      const int e = (corner >> a) & 1;
      w *= e ? weight[a] : 1 - weight[a];
      at[a] = index[a][e];
    }
    if (w == 0) continue;
    float texel[4];
    ElementToFloats(layout, texture, ElementAt(layout, at[0], at[1], at[2]), texel);
    for (int c = 0; c < 4; ++c) sum[c] += w * texel[c];
  }
  for (int c = 0; c < 4; ++c) out[c] = static_cast<float>(sum[c]);
}

void ElementToFloats(const TexelLayout& layout, const TextureDescription& texture,
                     const uint8_t* element, float out[4]) {
  if (element == nullptr) {
    for (int c = 0; c < 4; ++c) out[c] = texture.border_color[c];
    return;
  }
  const bool as_integer = (texture.flags & CU_TRSF_READ_AS_INTEGER) != 0;
  const unsigned size = layout.element_bytes / layout.channels;
  bool normalized = !as_integer;
  for (unsigned c = 0; c < 4; ++c) {
    if (c >= layout.channels) {
      out[c] = 0;
      continue;
    }
    const uint8_t* p = element + c * size;
    switch (layout.format) {
      case CU_AD_FORMAT_UNSIGNED_INT8:
        out[c] = as_integer ? p[0] : p[0] / 255.0f;
        break;
      case CU_AD_FORMAT_SIGNED_INT8: {
        const int8_t v = static_cast<int8_t>(p[0]);
        out[c] = as_integer ? v : std::fmax(v / 127.0f, -1.0f);
        break;
      }
      case CU_AD_FORMAT_UNSIGNED_INT16: {
        uint16_t v;
        std::memcpy(&v, p, 2);
        out[c] = as_integer ? v : v / 65535.0f;
        break;
      }
      case CU_AD_FORMAT_SIGNED_INT16: {
        int16_t v;
        std::memcpy(&v, p, 2);
        out[c] = as_integer ? v : std::fmax(v / 32767.0f, -1.0f);
        break;
      }
      case CU_AD_FORMAT_UNSIGNED_INT32: {
        uint32_t v;
        std::memcpy(&v, p, 4);
        out[c] = static_cast<float>(v);
        normalized = false;
        break;
      }
      case CU_AD_FORMAT_SIGNED_INT32: {
        int32_t v;
        std::memcpy(&v, p, 4);
        out[c] = static_cast<float>(v);
        normalized = false;
        break;
      }
      case CU_AD_FORMAT_HALF: {
        uint16_t v;
        std::memcpy(&v, p, 2);
        out[c] = HalfToFloat(v);
        normalized = false;
        break;
      }
      default: {  // CU_AD_FORMAT_FLOAT
        std::memcpy(&out[c], p, 4);
        normalized = false;
        break;
      }
    }
  }
  // A normalized read of a format without alpha reads alpha 1.
  if (normalized && layout.channels < 4) out[3] = 1.0f;
}

uint8_t* SurfaceBytes(const TexelLayout& layout, int64_t x_bytes, int64_t y, int64_t z,
                      unsigned bytes) {
  const uint64_t row_bytes = layout.width * layout.element_bytes;
  if (x_bytes < 0 || y < 0 || z < 0 || bytes == 0 || static_cast<uint64_t>(x_bytes) > row_bytes ||
      bytes > row_bytes - static_cast<uint64_t>(x_bytes) ||
      static_cast<uint64_t>(y) >= layout.height || static_cast<uint64_t>(z) >= layout.depth) {
    return nullptr;
  }
  return layout.base + static_cast<uint64_t>(z) * layout.slice_pitch +
         static_cast<uint64_t>(y) * layout.row_pitch + static_cast<uint64_t>(x_bytes);
}

}  // namespace ferry::backend::host_internal
