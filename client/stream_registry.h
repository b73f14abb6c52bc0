// StreamRegistry: the client's table of streams and events, each owned by a
// context and forgotten with it.
//
// Thread-safety: all methods are thread-safe; mu_ guards the tables and is
// never held while calling out.
#pragma once

#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "client/connection.h"  // StreamKey
#include "client/handles.h"
#include "common/status.h"

namespace ferry::client {

struct StreamState {
  uint64_t ctx = 0;
  unsigned flags = 0;
  int priority = 0;
};
struct EventState {
  uint64_t ctx = 0;
  unsigned flags = 0;
  // Its latest cuEventRecord: the stream and the record call's seq (0: never
  // recorded).
  StreamKey recorded_on;
  uint64_t recorded_seq = 0;
  // The asynchronous copies that record depends on, still in flight when it
  // was issued (Connection::CopiesBefore).
  std::vector<uint64_t> copies;
};

class StreamRegistry {
 public:
  // `ids` hands out stream and event ids; it must outlive the registry.
  explicit StreamRegistry(HandleIds* ids) : ids_(ids) {}

  Status AddStream(uint64_t ctx, unsigned flags, int priority, uint64_t* id);
  // INVALID_HANDLE for an unknown id; `removed` may be null.
  Status RemoveStream(uint64_t id, StreamState* removed);
  Status FindStream(uint64_t id, StreamState* out);
  bool HasStream(uint64_t id);

  Status AddEvent(uint64_t ctx, unsigned flags, uint64_t* id);
  Status RemoveEvent(uint64_t id);
  Status FindEvent(uint64_t id, EventState* out);
  // Notes that the record call `seq` on `stream` is event `id`'s latest
  // (unless a later one, by seq, was noted already), depending on `copies`.
  void NoteEventRecord(uint64_t id, StreamKey stream, uint64_t seq,
                       std::vector<uint64_t> copies = {});

  // Forgets the streams and events of `ctx`.
  void ForgetContext(uint64_t ctx);

 private:
  HandleIds* const ids_;
  std::mutex mu_;
  std::unordered_map<uint64_t, StreamState> streams_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, EventState> events_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::client
