#include "client/stream_registry.h"

namespace ferry::client {

Status StreamRegistry::AddStream(uint64_t ctx, unsigned flags, int priority, uint64_t* id) {
  *id = ids_->New(HandleKind::kStream);
  std::lock_guard<std::mutex> lock(mu_);
  streams_[*id] = StreamState{ctx, flags, priority};
  return Status::Ok();
}

Status StreamRegistry::RemoveStream(uint64_t id, StreamState* removed) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = streams_.find(id);
  if (it == streams_.end()) return Status::InvalidHandle("not a stream of this process");
  if (removed != nullptr) *removed = it->second;
  streams_.erase(it);
  return Status::Ok();
}

Status StreamRegistry::FindStream(uint64_t id, StreamState* out) {
  std::lock_guard<std::mutex> lock(mu_);
  return CopyEntry(streams_, id, out, "not a stream of this process");
}

bool StreamRegistry::HasStream(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  return streams_.count(id) != 0;
}

Status StreamRegistry::AddEvent(uint64_t ctx, unsigned flags, uint64_t* id) {
  *id = ids_->New(HandleKind::kEvent);
  std::lock_guard<std::mutex> lock(mu_);
  EventState state;
  state.ctx = ctx;
  state.flags = flags;
  events_[*id] = state;
  return Status::Ok();
}

Status StreamRegistry::RemoveEvent(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (events_.erase(id) == 0) return Status::InvalidHandle("not an event of this process");
  return Status::Ok();
}

Status StreamRegistry::FindEvent(uint64_t id, EventState* out) {
  std::lock_guard<std::mutex> lock(mu_);
  return CopyEntry(events_, id, out, "not an event of this process");
}

void StreamRegistry::NoteEventRecord(uint64_t id, StreamKey stream, uint64_t seq,
                                     std::vector<uint64_t> copies) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = events_.find(id);
  // Records from several threads: the later call (by seq) is the latest.
  if (it != events_.end() && seq > it->second.recorded_seq) {
    it->second.recorded_on = stream;
    it->second.recorded_seq = seq;
    it->second.copies = std::move(copies);
  }
}

void StreamRegistry::ForgetContext(uint64_t ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  std::erase_if(streams_, [ctx](const auto& e) { return e.second.ctx == ctx; });
  std::erase_if(events_, [ctx](const auto& e) { return e.second.ctx == ctx; });
}

}  // namespace ferry::client
