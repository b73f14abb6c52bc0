// ArrayRegistry: the program's CUDA arrays, mipmapped arrays and texture and
// surface objects (CUDA arrays, textures and surfaces), so descriptors are
// answered and copies checked locally.
//
// A CUarray or CUmipmappedArray is a handle id (handles.h) the client
// chooses, also the object's name on the wire; a mipmapped array's level
// gets an id of its own the first time it is asked for, and the same id
// after. A CUtexObject or CUsurfObject is the value the server handed out
// (the backend's own, which kernels receive), recorded here with the
// descriptors it was made from.
//
// Thread-safety: every method is thread-safe.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <map>
#include <mutex>

#include <absl/base/thread_annotations.h>
#include <absl/functional/function_ref.h>

#include "client/handles.h"
#include "common/array_shape.h"
#include "common/status.h"

namespace ferry::client {

struct ArrayRecord {
  uint64_t ctx = 0;
  ArrayShape shape;  // a level's own extents
  unsigned element_bytes = 0;
  unsigned levels = 0;  // nonzero: a mipmapped array
  uint64_t parent = 0;  // nonzero: a level of that mipmapped array
};

struct TextureRecord {
  bool surface = false;
  uint64_t ctx = 0;
  CUDA_RESOURCE_DESC resource{};
  CUDA_TEXTURE_DESC texture{};
  bool has_view = false;
  CUDA_RESOURCE_VIEW_DESC view{};
};

class ArrayRegistry {
 public:
  explicit ArrayRegistry(HandleIds* ids) : ids_(ids) {}

  uint64_t NewId(bool mipmapped) {
    return ids_->New(mipmapped ? HandleKind::kMipmappedArray : HandleKind::kArray);
  }
  void Add(uint64_t id, const ArrayRecord& record) {
    std::lock_guard<std::mutex> lock(mu_);
    arrays_[id] = record;
  }
  // `id`'s record; INVALID_HANDLE if the program has no such array.
  Status Find(uint64_t id, ArrayRecord* out) const {
    std::lock_guard<std::mutex> lock(mu_);
    return CopyEntry(arrays_, id, out, "not a CUDA array of this program");
  }
  // cuArrayDestroy / cuMipmappedArrayDestroy: forgets `id` (and a mipmapped
  // array's levels). A level is refused: it goes with its mipmapped array.
  Status Remove(uint64_t id, bool mipmapped) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = arrays_.find(id);
    if (it == arrays_.end() || (it->second.levels > 0) != mipmapped || it->second.parent != 0) {
      return Status::InvalidHandle(mipmapped ? "not a mipmapped array of this program"
                                             : "not a CUDA array this program may destroy");
    }
    arrays_.erase(it);
    std::erase_if(arrays_, [id](const auto& entry) { return entry.second.parent == id; });
    std::erase_if(levels_, [id](const auto& entry) { return entry.first.first == id; });
    return Status::Ok();
  }
  // The id of level `level` of mipmapped array `id`; the first time,
  // `announce(level_id, record)` tells the server (under the lock) and the
  // level is recorded only if it succeeds.
  Status Level(uint64_t id, unsigned level,
               absl::FunctionRef<Status(uint64_t, const ArrayRecord&)> announce, uint64_t* out) {
    std::lock_guard<std::mutex> lock(mu_);
    auto parent = arrays_.find(id);
    if (parent == arrays_.end() || parent->second.levels == 0) {
      return Status::InvalidHandle("not a mipmapped array of this program");
    }
    if (level >= parent->second.levels) {
      return Status::InvalidArgument("level " + std::to_string(level) +
                                     " of a mipmapped array of " +
                                     std::to_string(parent->second.levels));
    }
    auto known = levels_.find({id, level});
    if (known != levels_.end()) {
      *out = known->second;
      return Status::Ok();
    }
    ArrayRecord record = parent->second;
    record.shape = ArrayLevelShape(parent->second.shape, level);
    record.levels = 0;
    record.parent = id;
    const uint64_t level_id = ids_->New(HandleKind::kArray);
    FERRY_RETURN_IF_ERROR(announce(level_id, record));
    arrays_[level_id] = record;
    levels_[{id, level}] = level_id;
    *out = level_id;
    return Status::Ok();
  }

  void AddTexture(uint64_t value, const TextureRecord& record) {
    std::lock_guard<std::mutex> lock(mu_);
    textures_[value] = record;
  }
  Status FindTexture(uint64_t value, bool surface, TextureRecord* out) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = textures_.find(value);
    if (it == textures_.end() || it->second.surface != surface) {
      return Status::InvalidHandle(surface ? "not a surface object of this program"
                                           : "not a texture object of this program");
    }
    *out = it->second;
    return Status::Ok();
  }
  Status RemoveTexture(uint64_t value, bool surface) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = textures_.find(value);
    if (it == textures_.end() || it->second.surface != surface) {
      return Status::InvalidHandle(surface ? "not a surface object of this program"
                                           : "not a texture object of this program");
    }
    textures_.erase(it);
    return Status::Ok();
  }

 private:
  HandleIds* const ids_;
  mutable std::mutex mu_;
  std::map<uint64_t, ArrayRecord> arrays_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<uint64_t, unsigned>, uint64_t> levels_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, TextureRecord> textures_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::client
