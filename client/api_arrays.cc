// Entry points: CUDA arrays, mipmapped arrays, and texture and surface
// objects (CUDA arrays, textures and surfaces). Copies to and from arrays
// are in api_memory.cc, with the other 2D and 3D copies.
//
// Arrays are created in the current context and wait for the server's
// answer (so an array past the quota fails here with OUT_OF_MEMORY);
// descriptors are answered from the client's records (ArrayRegistry).
// Texture and surface objects wait for the value the server hands out,
// which is what kernels receive; their descriptors are answered locally.
//
// Thread-safety: as every entry point, safe from any thread.
#include <cuda.h>

#include <cstring>

#include "client/entry_point.h"
#include "common/array_shape.h"

using ferry::ArrayShape;
using ferry::client::ArrayRecord;
using ferry::client::TextureRecord;

namespace {

// Creates an array (levels 0) or a mipmapped array of `shape` in the current
// context; *out is its id.
Status CreateArray(const ArrayShape& shape, unsigned levels, uint64_t* out) {
  Runtime& rt = Runtime::Get();
  ArrayRecord record;
  FERRY_RETURN_IF_ERROR(rt.CurrentContext(&record.ctx));
  uint64_t bytes = 0;
  FERRY_RETURN_IF_ERROR(ferry::CheckArrayShape(shape, levels, &record.element_bytes, &bytes));
  record.shape = shape;
  record.levels = levels;
  const uint64_t id = rt.arrays().NewId(levels > 0);
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(record.ctx).Call([&](wire::Call::Builder call) {
    auto args = call.initArrayCreate();
    args.setCtx(record.ctx);
    args.setArray(id);
    args.setWidth(shape.width);
    args.setHeight(shape.height);
    args.setDepth(shape.depth);
    args.setFormat(static_cast<uint32_t>(shape.format));
    args.setNumChannels(shape.channels);
    args.setFlags(shape.flags);
    args.setLevels(levels);
  }));
  rt.arrays().Add(id, record);
  *out = id;
  return Status::Ok();
}

Status DestroyArray(uint64_t id, bool mipmapped) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  ferry::client::Connection& server = rt.ObjectConnection(id);
  FERRY_RETURN_IF_ERROR(rt.arrays().Remove(id, mipmapped));
  return server.Post([&](wire::Call::Builder call) { call.initArrayDestroy().setArray(id); });
}

ArrayShape ShapeOf(const CUDA_ARRAY3D_DESCRIPTOR& d) {
  ArrayShape shape;
  shape.width = d.Width;
  shape.height = d.Height;
  shape.depth = d.Depth;
  shape.format = d.Format;
  shape.channels = d.NumChannels;
  shape.flags = d.Flags;
  return shape;
}

Status FindArray(CUarray array, ArrayRecord* out) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  FERRY_RETURN_IF_ERROR(rt.arrays().Find(Runtime::HandleId(array), out));
  if (out->levels > 0) return Status::InvalidHandle("a mipmapped array is not a CUarray");
  return Status::Ok();
}

// cuTexObjectCreate (`texture` non-null) and cuSurfObjectCreate.
Status CreateTextureObject(uint64_t* out, const CUDA_RESOURCE_DESC* resource,
                           const CUDA_TEXTURE_DESC* texture, const CUDA_RESOURCE_VIEW_DESC* view,
                           bool surface) {
  Runtime& rt = Runtime::Get();
  if (out == nullptr || resource == nullptr || (!surface && texture == nullptr)) {
    return Status::InvalidArgument("NULL argument");
  }
  TextureRecord record;
  FERRY_RETURN_IF_ERROR(rt.CurrentContext(&record.ctx));
  if (resource->flags != 0) return Status::InvalidArgument("CUDA_RESOURCE_DESC.flags must be 0");
  uint64_t array = 0;
  ArrayRecord array_record;
  switch (resource->resType) {
    case CU_RESOURCE_TYPE_ARRAY:
      array = Runtime::HandleId(resource->res.array.hArray);
      break;
    case CU_RESOURCE_TYPE_MIPMAPPED_ARRAY:
      array = Runtime::HandleId(resource->res.mipmap.hMipmappedArray);
      break;
    case CU_RESOURCE_TYPE_LINEAR:
      FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice(
          resource->res.linear.devPtr, resource->res.linear.sizeInBytes, "resource"));
      break;
    case CU_RESOURCE_TYPE_PITCH2D:
      FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice2D(
          resource->res.pitch2D.devPtr, resource->res.pitch2D.pitchInBytes,
          resource->res.pitch2D.width * ferry::ArrayFormatBytes(resource->res.pitch2D.format) *
              resource->res.pitch2D.numChannels,
          resource->res.pitch2D.height, "resource"));
      break;
    default:
      return Status::InvalidArgument("unknown resource type");
  }
  if (array != 0) {
    FERRY_RETURN_IF_ERROR(rt.arrays().Find(array, &array_record));
    if ((resource->resType == CU_RESOURCE_TYPE_MIPMAPPED_ARRAY) != (array_record.levels > 0)) {
      return Status::InvalidHandle("the resource's array is of the other kind");
    }
  }
  record.surface = surface;
  record.resource = *resource;
  if (texture != nullptr) record.texture = *texture;
  record.has_view = view != nullptr;
  if (view != nullptr) record.view = *view;
  uint64_t value = 0;
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(record.ctx)
                            .Call(
                                [&](wire::Call::Builder call) {
                                  auto args = call.initTexObjectCreate();
                                  args.setCtx(record.ctx);
                                  args.setSurface(surface);
                                  args.setResourceType(static_cast<uint32_t>(resource->resType));
                                  args.setArray(array);
                                  if (resource->resType == CU_RESOURCE_TYPE_LINEAR) {
                                    const auto& l = resource->res.linear;
                                    args.setDevPtr(l.devPtr);
                                    args.setFormat(static_cast<uint32_t>(l.format));
                                    args.setNumChannels(l.numChannels);
                                    args.setSizeBytes(l.sizeInBytes);
                                  } else if (resource->resType == CU_RESOURCE_TYPE_PITCH2D) {
                                    const auto& p = resource->res.pitch2D;
                                    args.setDevPtr(p.devPtr);
                                    args.setFormat(static_cast<uint32_t>(p.format));
                                    args.setNumChannels(p.numChannels);
                                    args.setWidth(p.width);
                                    args.setHeight(p.height);
                                    args.setPitchBytes(p.pitchInBytes);
                                  }
                                  if (texture != nullptr) {
                                    auto modes = args.initAddressMode(3);
                                    for (unsigned i = 0; i < 3; ++i)
                                      modes.set(i, texture->addressMode[i]);
                                    args.setFilterMode(texture->filterMode);
                                    args.setFlags(texture->flags);
                                    args.setMaxAnisotropy(texture->maxAnisotropy);
                                    args.setMipmapFilterMode(texture->mipmapFilterMode);
                                    args.setMipmapLevelBias(texture->mipmapLevelBias);
                                    args.setMinMipmapLevelClamp(texture->minMipmapLevelClamp);
                                    args.setMaxMipmapLevelClamp(texture->maxMipmapLevelClamp);
                                    auto border = args.initBorderColor(4);
                                    for (unsigned i = 0; i < 4; ++i)
                                      border.set(i, texture->borderColor[i]);
                                  }
                                  if (view != nullptr) {
                                    args.setHasView(true);
                                    args.setViewFormat(static_cast<uint32_t>(view->format));
                                    args.setViewWidth(view->width);
                                    args.setViewHeight(view->height);
                                    args.setViewDepth(view->depth);
                                    args.setViewFirstLevel(view->firstMipmapLevel);
                                    args.setViewLastLevel(view->lastMipmapLevel);
                                    args.setViewFirstLayer(view->firstLayer);
                                    args.setViewLastLayer(view->lastLayer);
                                  }
                                },
                                {}, {},
                                [&](wire::Reply::Reader reply) {
                                  value = static_cast<uint64_t>(reply.getValue());
                                  return Status::Ok();
                                }));
  rt.arrays().AddTexture(value, record);
  *out = value;
  return Status::Ok();
}

Status DestroyTextureObject(uint64_t value, bool surface) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  ferry::client::TextureRecord record;
  FERRY_RETURN_IF_ERROR(rt.arrays().FindTexture(value, surface, &record));
  FERRY_RETURN_IF_ERROR(rt.arrays().RemoveTexture(value, surface));
  return rt.ConnectionOf(record.ctx).Post([&](wire::Call::Builder call) {
    auto args = call.initTexObjectDestroy();
    args.setObject(value);
    args.setSurface(surface);
  });
}

// The record of texture or surface object `value`, after the NULL check of
// the output `out`.
Status FindTextureObject(const void* out, uint64_t value, bool surface, TextureRecord* record) {
  if (out == nullptr) return Status::InvalidArgument("NULL output");
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  return rt.arrays().FindTexture(value, surface, record);
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuArrayCreate_v2(CUarray* pHandle, const CUDA_ARRAY_DESCRIPTOR* d) {
  return Api([&]() -> Status {
    if (pHandle == nullptr || d == nullptr) return Status::InvalidArgument("NULL argument");
    CUDA_ARRAY3D_DESCRIPTOR d3;
    std::memset(&d3, 0, sizeof(d3));
    d3.Width = d->Width;
    d3.Height = d->Height;
    d3.Format = d->Format;
    d3.NumChannels = d->NumChannels;
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(CreateArray(ShapeOf(d3), 0, &id));
    *pHandle = reinterpret_cast<CUarray>(id);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuArray3DCreate_v2(CUarray* pHandle, const CUDA_ARRAY3D_DESCRIPTOR* d) {
  return Api([&]() -> Status {
    if (pHandle == nullptr || d == nullptr) return Status::InvalidArgument("NULL argument");
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(CreateArray(ShapeOf(*d), 0, &id));
    *pHandle = reinterpret_cast<CUarray>(id);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuArrayDestroy(CUarray hArray) {
  return Api([&] { return DestroyArray(Runtime::HandleId(hArray), false); });
}

CUresult CUDAAPI cuArrayGetDescriptor_v2(CUDA_ARRAY_DESCRIPTOR* out, CUarray hArray) {
  return Api([&]() -> Status {
    if (out == nullptr) return Status::InvalidArgument("NULL output");
    ArrayRecord record;
    FERRY_RETURN_IF_ERROR(FindArray(hArray, &record));
    if (record.shape.depth != 0) {
      return Status::InvalidArgument("a 3D or layered array: use cuArray3DGetDescriptor");
    }
    out->Width = record.shape.width;
    out->Height = record.shape.height;
    out->Format = static_cast<CUarray_format>(record.shape.format);
    out->NumChannels = record.shape.channels;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuArray3DGetDescriptor_v2(CUDA_ARRAY3D_DESCRIPTOR* out, CUarray hArray) {
  return Api([&]() -> Status {
    if (out == nullptr) return Status::InvalidArgument("NULL output");
    ArrayRecord record;
    FERRY_RETURN_IF_ERROR(FindArray(hArray, &record));
    out->Width = record.shape.width;
    out->Height = record.shape.height;
    out->Depth = record.shape.depth;
    out->Format = static_cast<CUarray_format>(record.shape.format);
    out->NumChannels = record.shape.channels;
    out->Flags = record.shape.flags;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMipmappedArrayCreate(CUmipmappedArray* pHandle, const CUDA_ARRAY3D_DESCRIPTOR* d,
                                        unsigned int levels) {
  return Api([&]() -> Status {
    if (pHandle == nullptr || d == nullptr) return Status::InvalidArgument("NULL argument");
    if (levels == 0) return Status::InvalidArgument("a mipmapped array has at least one level");
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(CreateArray(ShapeOf(*d), levels, &id));
    *pHandle = reinterpret_cast<CUmipmappedArray>(id);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuMipmappedArrayDestroy(CUmipmappedArray hMipmappedArray) {
  return Api([&] { return DestroyArray(Runtime::HandleId(hMipmappedArray), true); });
}

CUresult CUDAAPI cuMipmappedArrayGetLevel(CUarray* pLevelArray, CUmipmappedArray hMipmappedArray,
                                          unsigned int level) {
  return Api([&]() -> Status {
    if (pLevelArray == nullptr) return Status::InvalidArgument("NULL output");
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t mipmapped = Runtime::HandleId(hMipmappedArray);
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(rt.arrays().Level(
        mipmapped, level,
        [&](uint64_t level_id, const ArrayRecord& record) {
          return rt.ConnectionOf(record.ctx).Post([&](wire::Call::Builder call) {
            auto args = call.initMipmappedArrayGetLevel();
            args.setMipmappedArray(mipmapped);
            args.setLevel(level);
            args.setArray(level_id);
          });
        },
        &id));
    *pLevelArray = reinterpret_cast<CUarray>(id);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuTexObjectCreate(CUtexObject* pTexObject, const CUDA_RESOURCE_DESC* pResDesc,
                                   const CUDA_TEXTURE_DESC* pTexDesc,
                                   const CUDA_RESOURCE_VIEW_DESC* pResViewDesc) {
  return Api([&]() -> Status {
    uint64_t value = 0;
    FERRY_RETURN_IF_ERROR(CreateTextureObject(pTexObject != nullptr ? &value : nullptr, pResDesc,
                                              pTexDesc, pResViewDesc, false));
    *pTexObject = value;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuTexObjectDestroy(CUtexObject texObject) {
  return Api([&] { return DestroyTextureObject(texObject, false); });
}

CUresult CUDAAPI cuTexObjectGetResourceDesc(CUDA_RESOURCE_DESC* out, CUtexObject texObject) {
  return Api([&]() -> Status {
    TextureRecord record;
    FERRY_RETURN_IF_ERROR(FindTextureObject(out, texObject, false, &record));
    *out = record.resource;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuTexObjectGetTextureDesc(CUDA_TEXTURE_DESC* out, CUtexObject texObject) {
  return Api([&]() -> Status {
    TextureRecord record;
    FERRY_RETURN_IF_ERROR(FindTextureObject(out, texObject, false, &record));
    *out = record.texture;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuTexObjectGetResourceViewDesc(CUDA_RESOURCE_VIEW_DESC* out,
                                                CUtexObject texObject) {
  return Api([&]() -> Status {
    TextureRecord record;
    FERRY_RETURN_IF_ERROR(FindTextureObject(out, texObject, false, &record));
    if (!record.has_view) return Status::InvalidArgument("the texture object has no view");
    *out = record.view;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuSurfObjectCreate(CUsurfObject* pSurfObject, const CUDA_RESOURCE_DESC* pResDesc) {
  return Api([&]() -> Status {
    if (pResDesc != nullptr && pResDesc->resType != CU_RESOURCE_TYPE_ARRAY) {
      return Status::InvalidArgument("a surface object takes an array resource");
    }
    uint64_t value = 0;
    FERRY_RETURN_IF_ERROR(CreateTextureObject(pSurfObject != nullptr ? &value : nullptr, pResDesc,
                                              nullptr, nullptr, true));
    *pSurfObject = value;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuSurfObjectDestroy(CUsurfObject surfObject) {
  return Api([&] { return DestroyTextureObject(surfObject, true); });
}

CUresult CUDAAPI cuSurfObjectGetResourceDesc(CUDA_RESOURCE_DESC* out, CUsurfObject surfObject) {
  return Api([&]() -> Status {
    TextureRecord record;
    FERRY_RETURN_IF_ERROR(FindTextureObject(out, surfObject, true, &record));
    *out = record.resource;
    return Status::Ok();
  });
}

}  // extern "C"
