// Handle ids: the value of every CUcontext, CUstream, CUevent, CUmodule,
// CUfunction, CUlibrary, CUkernel, CUmemoryPool or CUlinkState the client
// hands out is (kind << 48 | serial), a non-canonical address the client
// chooses (README.md invariant 2), and the same id names the object on the
// wire.
//
// Thread-safety: HandleIds is thread-safe (one atomic counter per process).
#pragma once

#include <atomic>
#include <cstdint>

#include "common/status.h"

namespace ferry::client {

enum class HandleKind : uint64_t {
  kContext = 0xC7,
  kStream = 0x57,
  kEvent = 0xE7,
  kModule = 0x3D,
  kFunction = 0xF7,
  kLibrary = 0x1B,
  kKernel = 0x4E,
  kMemPool = 0x9E,  // CUmemoryPool
  // stream capture and graphs
  kGraph = 0x6A,
  kGraphExec = 0x6E,
  kGraphNode = 0x6D,
  // virtual memory management
  kPhysicalMemory = 0x9A,  // CUmemGenericAllocationHandle
  // CUDA arrays, textures and surfaces
  kArray = 0xA7,           // CUarray
  kMipmappedArray = 0xA9,  // CUmipmappedArray
  // JIT linking: a CUlinkState
  kLink = 0x11,
  // user objects: a CUuserObject
  kUserObject = 0x0B,
};

inline bool IsHandleKind(uint64_t id, HandleKind kind) {
  return (id >> 48) == static_cast<uint64_t>(kind);
}

// Hands out ids: serials are unique across kinds and across every HandleIds
// of the process, and never reused, so an id of a destroyed object never
// names a later one and two Runtime instances in one process (a test's)
// never hand out the same id.
class HandleIds {
 public:
  uint64_t New(HandleKind kind) {
    return (static_cast<uint64_t>(kind) << 48) | next_serial_.fetch_add(1);
  }

 private:
  inline static std::atomic<uint64_t> next_serial_{1};
};

// A registry's lookup: copies `table`'s entry for `id` to `*out`, or is
// INVALID_HANDLE with `missing` where there is none. The caller holds the
// table's lock.
template <typename Table, typename Value>
Status CopyEntry(const Table& table, uint64_t id, Value* out, const char* missing) {
  auto it = table.find(id);
  if (it == table.end()) return Status::InvalidHandle(missing);
  *out = it->second;
  return Status::Ok();
}

}  // namespace ferry::client
