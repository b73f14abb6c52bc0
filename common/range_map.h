// ferry::RangeMap — non-overlapping address ranges [base, base + size), each
// with a value, answering "which range holds this address" and "does one range
// hold all of [address, address + bytes)". The client keeps its device and
// page-locked host allocations in one; the server keeps each session's device
// ranges (allocations and module globals) in one and checks every range a call
// names against it (README.md invariant 6: sessions cannot reach each other).
//
// Ranges are keyed by base address; Insert refuses a range that overlaps one
// already held. Zero-sized ranges are never stored.
//
// Thread-safety: none; the owner locks (see each owner's mutex).
#pragma once

#include <cstdint>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <utility>

#include "common/status.h"

namespace ferry {

// Formats the "what range [0x..., +N) is not inside ..." error both sides use.
Status RangeOutside(const char* what, uint64_t address, uint64_t bytes, const char* where);

// The span of a 2D region (pitch * (height - 1) + width_bytes), or an error if
// the pitch is shorter than a row or the span overflows. A region with no bytes
// has span 0.
Status Span2D(uint64_t pitch, uint64_t width_bytes, uint64_t height, const char* what,
              uint64_t* span);

template <typename Value>
class RangeMap {
 public:
  struct Found {
    uint64_t base = 0;
    uint64_t size = 0;
    Value* value = nullptr;
  };

  // Adds [base, base + size) with `value`. False (nothing added) when size is
  // 0, the range wraps, or it overlaps a range already held.
  bool Insert(uint64_t base, uint64_t size, Value value) {
    if (size == 0 || base > std::numeric_limits<uint64_t>::max() - size) return false;
    auto next = ranges_.lower_bound(base);
    if (next != ranges_.end() && next->first < base + size) return false;
    if (next != ranges_.begin()) {
      auto previous = std::prev(next);
      if (base - previous->first < previous->second.size) return false;
    }
    ranges_.emplace_hint(next, base, Entry{size, std::move(value)});
    return true;
  }

  // The range that holds `address`, if any (value is null when none).
  Found Find(uint64_t address) {
    auto it = ranges_.upper_bound(address);
    if (it == ranges_.begin()) return {};
    --it;
    if (address - it->first >= it->second.size) return {};
    return Found{it->first, it->second.size, &it->second.value};
  }

  // The range that starts exactly at `base`, if any.
  Found FindBase(uint64_t base) {
    auto it = ranges_.find(base);
    if (it == ranges_.end()) return {};
    return Found{it->first, it->second.size, &it->second.value};
  }

  // True when one range holds all of [address, address + bytes); true for
  // bytes == 0.
  bool Contains(uint64_t address, uint64_t bytes) {
    if (bytes == 0) return true;
    Found found = Find(address);
    return found.value != nullptr && bytes <= found.size - (address - found.base);
  }

  // OK when Contains(address, bytes); otherwise an InvalidArgument naming
  // `what` and `where` ("an allocation of this session").
  Status Check(uint64_t address, uint64_t bytes, const char* what, const char* where) {
    if (Contains(address, bytes)) return Status::Ok();
    return RangeOutside(what, address, bytes, where);
  }

  // The same for a 2D region of `height` rows of `width_bytes`, `pitch` apart.
  Status Check2D(uint64_t address, uint64_t pitch, uint64_t width_bytes, uint64_t height,
                 const char* what, const char* where) {
    uint64_t span = 0;
    if (Status s = Span2D(pitch, width_bytes, height, what, &span); !s.ok()) return s;
    return Check(address, span, what, where);
  }

  // Like Contains, but [address, address + bytes) may also run across ranges
  // that follow each other without a gap where joins(left, right) says the two
  // form one span (virtual memory: mappings placed side by side in a reserved
  // range are one stretch of device addresses, as on a GPU).
  template <typename Joins>
  bool ContainsJoined(uint64_t address, uint64_t bytes, Joins joins) {
    if (bytes == 0) return true;
    if (address > std::numeric_limits<uint64_t>::max() - bytes) return false;
    auto it = ranges_.upper_bound(address);
    if (it == ranges_.begin()) return false;
    --it;
    if (address - it->first >= it->second.size) return false;
    const uint64_t end = address + bytes;
    while (true) {
      const uint64_t range_end = it->first + it->second.size;
      if (end <= range_end) return true;
      auto next = std::next(it);
      if (next == ranges_.end() || next->first != range_end ||
          !joins(it->second.value, next->second.value)) {
        return false;
      }
      it = next;
    }
  }

  // CheckJoined is to ContainsJoined what Check is to Contains; Check2DJoined
  // likewise for a 2D region.
  template <typename Joins>
  Status CheckJoined(uint64_t address, uint64_t bytes, const char* what, const char* where,
                     Joins joins) {
    if (ContainsJoined(address, bytes, joins)) return Status::Ok();
    return RangeOutside(what, address, bytes, where);
  }
  template <typename Joins>
  Status Check2DJoined(uint64_t address, uint64_t pitch, uint64_t width_bytes, uint64_t height,
                       const char* what, const char* where, Joins joins) {
    uint64_t span = 0;
    if (Status s = Span2D(pitch, width_bytes, height, what, &span); !s.ok()) return s;
    return CheckJoined(address, span, what, where, joins);
  }

  // Removes the range starting at `base`; false when there is none.
  bool Erase(uint64_t base) { return ranges_.erase(base) != 0; }

  // Removes every range whose value satisfies `predicate(const Value&)`.
  template <typename Predicate>
  void EraseIf(Predicate predicate) {
    std::erase_if(ranges_, [&](const auto& entry) { return predicate(entry.second.value); });
  }

  // Calls visit(base, size, Value&) for each range in address order.
  template <typename Visit>
  void ForEach(Visit visit) {
    for (auto& [base, entry] : ranges_) visit(base, entry.size, entry.value);
  }

  size_t size() const { return ranges_.size(); }
  bool empty() const { return ranges_.empty(); }
  void clear() { ranges_.clear(); }

 private:
  struct Entry {
    uint64_t size = 0;
    Value value;
  };
  std::map<uint64_t, Entry> ranges_;  // by base address
};

}  // namespace ferry
