#include "server/backend/host/texture_sampler.h"

#include <cuda.h>

#include <cmath>
#include <cstring>
#include <string>

namespace ferry::backend::host_internal {
namespace {

Status NotOnHost(const std::string& what) {
  return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED,
                      "the host backend samples textures point-wise from plain arrays and "
                      "memory; " +
                          what + " is not supported");
}

// The index a point sample at `coord` reads along an axis of `extent`
// texels, or -1 when the border mode puts it outside.
int64_t AxisIndex(float coord, uint64_t extent, int mode, bool normalized) {
  const double n = static_cast<double>(extent);
  double t = normalized ? static_cast<double>(coord) * n : static_cast<double>(coord);
  if (std::isnan(t)) t = 0;
  if (normalized && mode == CU_TR_ADDRESS_MODE_WRAP) {
    const double u = static_cast<double>(coord) - std::floor(static_cast<double>(coord));
    t = u * n;
  } else if (normalized && mode == CU_TR_ADDRESS_MODE_MIRROR) {
    const double period = std::floor(static_cast<double>(coord));
    double u = static_cast<double>(coord) - period;
    if (static_cast<int64_t>(period) % 2 != 0) u = 1.0 - u;
    t = u * n;
  }
  const double index = std::floor(t);
  if (mode == CU_TR_ADDRESS_MODE_BORDER && (index < 0 || index >= n)) return -1;
  if (index < 0) return 0;
  if (index >= n) return static_cast<int64_t>(extent - 1);
  return static_cast<int64_t>(index);
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
  if (texture.filter_mode != CU_TR_FILTER_MODE_POINT) return NotOnHost("linear filtering");
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
  if (i < 0 || j < 0 || k < 0) return nullptr;
  return layout.base + static_cast<uint64_t>(k) * layout.slice_pitch +
         static_cast<uint64_t>(j) * layout.row_pitch +
         static_cast<uint64_t>(i) * layout.element_bytes;
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
