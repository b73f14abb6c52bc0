// Session handlers for CUDA arrays, textures and surfaces: arrays and
// mipmapped arrays (charged to the context device's quota while they live),
// and texture and surface objects over arrays or the session's own device
// memory. Copies to and from arrays are memcpy2D calls (session_memory.cc),
// which find their arrays through FindCopyArray.

#include "server/session.h"

#include <cuda.h>

#include <string>

#include "common/array_shape.h"
#include "server/session_internal.h"

namespace ferry::server {

using session_internal::Hex;

Status Session::ArrayCreate(wire::ArrayCreate::Reader args) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  FERRY_RETURN_IF_ERROR(arrays_.CheckNewId(args.getArray()));
  ArrayEntry entry;
  entry.ctx = args.getCtx();
  entry.device = c->device;
  entry.descriptor.width = args.getWidth();
  entry.descriptor.height = args.getHeight();
  entry.descriptor.depth = args.getDepth();
  entry.descriptor.format = static_cast<int>(args.getFormat());
  entry.descriptor.channels = args.getNumChannels();
  entry.descriptor.flags = args.getFlags();
  entry.levels = args.getLevels();
  FERRY_RETURN_IF_ERROR(
      CheckArrayShape(entry.descriptor, entry.levels, &entry.element_bytes, &entry.charged));
  FERRY_RETURN_IF_ERROR(CheckQuotaAfterReleases(c->device, entry.charged));
  FERRY_RETURN_IF_ERROR(WithRoom(c->device, entry.charged, [&] {
    return entry.levels > 0 ? backend_.CreateMipmappedArray(*c->context, entry.descriptor,
                                                            entry.levels, &entry.mipmapped)
                            : backend_.CreateArray(*c->context, entry.descriptor, &entry.array);
  }));
  shares_.Charge(c->device, entry.charged);
  return arrays_.Insert(args.getArray(), std::move(entry));
}

Status Session::ArrayDestroy(wire::ArrayRef::Reader args) {
  ArrayEntry* entry = nullptr;
  FERRY_RETURN_IF_ERROR(arrays_.Find(args.getArray(), &entry));
  if (entry->level != nullptr) {
    return Status::InvalidHandle("array " + Hex(args.getArray()) +
                                 " is a level of a mipmapped array, destroyed with it");
  }
  const uint64_t id = args.getArray();
  const int device = entry->device;
  const uint64_t charged = entry->charged;
  // Its levels first: they are owned by it.
  arrays_.EraseIf([id](uint64_t, const ArrayEntry& e) { return e.parent == id; });
  FERRY_RETURN_IF_ERROR(arrays_.Erase(id));
  UnchargeWhenReleased(device, charged);
  return Status::Ok();
}

Status Session::MipmappedArrayGetLevel(wire::MipmappedArrayGetLevel::Reader args) {
  ArrayEntry* parent = nullptr;
  FERRY_RETURN_IF_ERROR(arrays_.Find(args.getMipmappedArray(), &parent));
  if (parent->mipmapped == nullptr) {
    return Status::InvalidHandle("array " + Hex(args.getMipmappedArray()) +
                                 " is not a mipmapped array");
  }
  if (args.getLevel() >= parent->levels) {
    return Status::InvalidArgument("level " + std::to_string(args.getLevel()) +
                                   " of a mipmapped array of " + std::to_string(parent->levels));
  }
  FERRY_RETURN_IF_ERROR(arrays_.CheckNewId(args.getArray()));
  ArrayEntry level;
  FERRY_RETURN_IF_ERROR(
      backend_.MipmappedArrayLevel(*parent->mipmapped, args.getLevel(), &level.level));
  level.parent = args.getMipmappedArray();
  level.ctx = parent->ctx;
  level.device = parent->device;
  level.descriptor = ArrayLevelShape(parent->descriptor, args.getLevel());
  level.element_bytes = parent->element_bytes;
  return arrays_.Insert(args.getArray(), std::move(level));
}

Status Session::FindCopyArray(uint64_t id, uint64_t x, uint64_t y, uint64_t z, uint64_t width_bytes,
                              uint64_t height, uint64_t depth, const char* what,
                              backend::Array** out) {
  ArrayEntry* entry = nullptr;
  FERRY_RETURN_IF_ERROR(arrays_.Find(id, &entry));
  if (entry->copyable() == nullptr) {
    return Status::InvalidHandle(std::string(what) +
                                 ": a mipmapped array is copied level by level");
  }
  FERRY_RETURN_IF_ERROR(CheckArrayExtent(entry->descriptor, entry->element_bytes, x, y, z,
                                         width_bytes, height, depth, what));
  *out = entry->copyable();
  return Status::Ok();
}

Status Session::TexObjectCreate(wire::TexObjectCreate::Reader args, CallContext& cx) {
  // Every handle and address named is checked first, used or not.
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  ArrayEntry* array = nullptr;
  if (args.getArray() != 0) {
    FERRY_RETURN_IF_ERROR(arrays_.Find(args.getArray(), &array));
    if (array->ctx != args.getCtx()) {
      return Status::InvalidHandle("array " + Hex(args.getArray()) + " belongs to another context");
    }
  }
  if (args.getDevPtr() != 0) FERRY_RETURN_IF_ERROR(CheckRange(args.getDevPtr(), 1, "resource"));
  backend::TextureResource resource;
  resource.format = static_cast<int>(args.getFormat());
  resource.channels = args.getNumChannels();
  resource.dev_ptr = args.getDevPtr();
  resource.size_bytes = args.getSizeBytes();
  resource.width = args.getWidth();
  resource.height = args.getHeight();
  resource.pitch_bytes = args.getPitchBytes();
  switch (args.getResourceType()) {
    case CU_RESOURCE_TYPE_ARRAY:
    case CU_RESOURCE_TYPE_MIPMAPPED_ARRAY: {
      const bool mipmapped = args.getResourceType() == CU_RESOURCE_TYPE_MIPMAPPED_ARRAY;
      if (array == nullptr ||
          (mipmapped ? array->mipmapped == nullptr : array->copyable() == nullptr)) {
        return Status::InvalidHandle(mipmapped ? "the resource is not a mipmapped array"
                                               : "the resource is not an array");
      }
      resource.kind = mipmapped ? backend::TextureResource::Kind::kMipmappedArray
                                : backend::TextureResource::Kind::kArray;
      resource.array = array->copyable();
      resource.mipmapped = array->mipmapped.get();
      break;
    }
    case CU_RESOURCE_TYPE_LINEAR:
    case CU_RESOURCE_TYPE_PITCH2D: {
      const bool linear = args.getResourceType() == CU_RESOURCE_TYPE_LINEAR;
      const unsigned element = ArrayFormatBytes(resource.format) * resource.channels;
      if (element == 0 ||
          (resource.channels != 1 && resource.channels != 2 && resource.channels != 4)) {
        return Status::InvalidArgument("the resource's format or channel count is not valid");
      }
      if (linear) {
        if (resource.size_bytes == 0) return Status::InvalidArgument("an empty linear resource");
        FERRY_RETURN_IF_ERROR(CheckRange(resource.dev_ptr, resource.size_bytes, "resource"));
        resource.kind = backend::TextureResource::Kind::kLinear;
      } else {
        uint64_t row_bytes;
        if (resource.width == 0 || resource.height == 0 ||
            __builtin_mul_overflow(resource.width, element, &row_bytes) ||
            resource.pitch_bytes < row_bytes) {
          return Status::InvalidArgument("a pitch2D resource needs extents and a pitch that fit");
        }
        FERRY_RETURN_IF_ERROR(CheckRange2D(resource.dev_ptr, resource.pitch_bytes, row_bytes,
                                           resource.height, "resource"));
        resource.kind = backend::TextureResource::Kind::kPitch2D;
      }
      break;
    }
    default:
      return Status::InvalidArgument("unknown resource type " +
                                     std::to_string(args.getResourceType()));
  }
  TextureEntry entry;
  entry.ctx = args.getCtx();
  entry.surface = args.getSurface();
  if (args.getSurface()) {
    if (resource.kind != backend::TextureResource::Kind::kArray) {
      return Status::InvalidArgument("a surface object takes an array resource");
    }
    FERRY_RETURN_IF_ERROR(backend_.CreateSurfaceObject(*c->context, resource, &entry.object));
  } else {
    backend::TextureDescription texture;
    for (unsigned i = 0; i < 3 && i < args.getAddressMode().size(); ++i) {
      texture.address_mode[i] = static_cast<int>(args.getAddressMode()[i]);
    }
    texture.filter_mode = static_cast<int>(args.getFilterMode());
    texture.flags = args.getFlags();
    texture.max_anisotropy = args.getMaxAnisotropy();
    texture.mipmap_filter_mode = static_cast<int>(args.getMipmapFilterMode());
    texture.mipmap_level_bias = args.getMipmapLevelBias();
    texture.min_mipmap_level_clamp = args.getMinMipmapLevelClamp();
    texture.max_mipmap_level_clamp = args.getMaxMipmapLevelClamp();
    for (unsigned i = 0; i < 4 && i < args.getBorderColor().size(); ++i) {
      texture.border_color[i] = args.getBorderColor()[i];
    }
    backend::TextureView view;
    if (args.getHasView()) {
      view.format = static_cast<int>(args.getViewFormat());
      view.width = args.getViewWidth();
      view.height = args.getViewHeight();
      view.depth = args.getViewDepth();
      view.first_level = args.getViewFirstLevel();
      view.last_level = args.getViewLastLevel();
      view.first_layer = args.getViewFirstLayer();
      view.last_layer = args.getViewLastLayer();
    }
    FERRY_RETURN_IF_ERROR(backend_.CreateTextureObject(
        *c->context, resource, texture, args.getHasView() ? &view : nullptr, &entry.object));
  }
  const uint64_t value = entry.object->value();
  if (textures_.Contains(value)) {
    return Status::Internal("the backend handed out object " + Hex(value) + " twice");
  }
  FERRY_RETURN_IF_ERROR(textures_.Insert(value, std::move(entry)));
  cx.reply.setValue(static_cast<int64_t>(value));
  return Status::Ok();
}

Status Session::TexObjectDestroy(wire::TexObjectRef::Reader args) {
  TextureEntry* entry = nullptr;
  FERRY_RETURN_IF_ERROR(textures_.Find(args.getObject(), &entry));
  if (entry->surface != args.getSurface()) {
    return Status::InvalidHandle(Hex(args.getObject()) + " is not a " +
                                 (args.getSurface() ? "surface" : "texture") + " object");
  }
  return textures_.Erase(args.getObject());
}

void Session::DestroyContextArrays(uint64_t ctx) {
  auto in_ctx = [ctx](uint64_t, const auto& entry) { return entry.ctx == ctx; };
  textures_.EraseIf(in_ctx);
  // Levels before the mipmapped arrays that own them.
  arrays_.EraseIf([ctx](uint64_t, const ArrayEntry& e) { return e.ctx == ctx && e.level; });
  // The quota comes back after the memory: erasing the entries starts the
  // releases, which UnchargeWhenReleased then waits for.
  std::vector<std::pair<int, uint64_t>> charges;
  arrays_.ForEach([&](uint64_t, ArrayEntry& e) {
    if (e.ctx == ctx) charges.emplace_back(e.device, e.charged);
  });
  arrays_.EraseIf(in_ctx);
  for (const auto& [device, bytes] : charges) UnchargeWhenReleased(device, bytes);
}

}  // namespace ferry::server
