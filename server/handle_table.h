// HandleTable<Entry>: one kind of a session's handles (contexts, streams,
// events, modules, libraries, functions), keyed by the uint64 id the client
// chose for it (README.md invariant 6: a session validates every handle against
// its own tables). Id 0 is never a handle: the client uses it for "none"
// (the legacy stream, no library).
//
// Every lookup failure names the kind and the id ("no stream 7 in this
// session"), so the error a client sees says which argument was wrong.
//
// Thread-safety: everything but size() belongs to the owner's thread (for a
// Session, the executor role). size() may be read from any thread, so status
// reports need no lock on the table. Entry pointers stay valid until that
// entry is erased (node-based storage).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>

#include "common/status.h"

namespace ferry::server {

template <typename Entry>
class HandleTable {
 public:
  // How a missing handle is reported; InvalidHandle unless the kind has a
  // CUresult of its own (a context: CUDA_ERROR_INVALID_CONTEXT).
  using NotFoundFn = Status (*)(std::string message);

  // `kind` names the handle in errors ("stream"); it must outlive the table
  // (a string literal).
  explicit HandleTable(const char* kind, NotFoundFn not_found = &Status::InvalidHandle)
      : kind_(kind), not_found_(not_found) {}
  HandleTable(const HandleTable&) = delete;
  HandleTable& operator=(const HandleTable&) = delete;

  // OK when `id` may name a new entry: not 0 and not in use. A handler checks
  // this before it creates the backend object, so a bad id costs nothing.
  // Refused ids are a bad argument (CUDA_ERROR_INVALID_VALUE), as the driver
  // reports a bad output pointer.
  Status CheckNewId(uint64_t id) const {
    if (id != 0 && entries_.count(id) == 0) return Status::Ok();
    return Status::InvalidArgument(std::string(kind_) + " id " + std::to_string(id) +
                                   " is 0 or already in use");
  }

  // Adds `entry` under `id`; refuses (adding nothing) what CheckNewId refuses.
  Status Insert(uint64_t id, Entry entry) {
    if (Status status = CheckNewId(id); !status.ok()) return status;
    entries_.emplace(id, std::move(entry));
    count_.store(entries_.size(), std::memory_order_relaxed);
    return Status::Ok();
  }

  // The entry named `id`, or the kind's not-found error ("no <kind> <id> in
  // this session"); *out is untouched on error.
  Status Find(uint64_t id, Entry** out) {
    auto it = entries_.find(id);
    if (it == entries_.end()) return NotFound(id);
    *out = &it->second;
    return Status::Ok();
  }

  bool Contains(uint64_t id) const { return entries_.count(id) != 0; }

  // Removes `id`; the not-found error when there is none.
  Status Erase(uint64_t id) {
    if (entries_.erase(id) == 0) return NotFound(id);
    count_.store(entries_.size(), std::memory_order_relaxed);
    return Status::Ok();
  }

  // Removes every entry for which predicate(id, const Entry&) is true;
  // returns how many.
  template <typename Predicate>
  size_t EraseIf(Predicate predicate) {
    size_t erased = 0;
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (predicate(it->first, std::as_const(it->second))) {
        it = entries_.erase(it);
        ++erased;
      } else {
        ++it;
      }
    }
    count_.store(entries_.size(), std::memory_order_relaxed);
    return erased;
  }

  // Calls visit(id, Entry&) for every entry, in no particular order. `visit`
  // must not insert or erase.
  template <typename Visit>
  void ForEach(Visit visit) {
    for (auto& [id, entry] : entries_) visit(id, entry);
  }

  void Clear() {
    entries_.clear();
    count_.store(0, std::memory_order_relaxed);
  }

  // Any thread: the number of entries as of the owner's last change.
  size_t size() const { return count_.load(std::memory_order_relaxed); }

  // The error for a missing `id` of this kind.
  Status NotFound(uint64_t id) const {
    return not_found_("no " + std::string(kind_) + " " + std::to_string(id) + " in this session");
  }

 private:
  const char* const kind_;
  const NotFoundFn not_found_;
  std::unordered_map<uint64_t, Entry> entries_;
  std::atomic<size_t> count_{0};
};

}  // namespace ferry::server
