// Daily windows: "from 20:00:00 to 08:00:00 in Asia/Shanghai", the unit of a
// pool schedule.
//
// A window is the half-open interval [from, to) of local wall-clock time,
// every day, in one IANA time zone. When `to` is earlier than `from` the
// window wraps midnight (it ends on the next local day). When they are equal
// the window covers the whole day and never changes.
//
// Daylight-saving time: a boundary is a local time of day, so its instant
// moves with the zone's offset. A boundary that falls into a skipped local
// time (the spring-forward gap) happens at the transition instant, when the
// clocks jump over it; one that falls into a repeated local time (the
// fall-back overlap) happens at its first occurrence. So a night window is an
// hour shorter on the spring-forward night and an hour longer on the
// fall-back night, as its owners would expect, and no instant is ever both in
// and out of a window.
//
// Thread-safety: immutable after construction; any thread.
#pragma once

#include <absl/time/civil_time.h>
#include <absl/time/time.h>

#include <string>

#include "common/status.h"

namespace ferry::pool {

struct TimeOfDay {
  int hour = 0;    // 0..23
  int minute = 0;  // 0..59
  int second = 0;  // 0..59

  int SecondsOfDay() const { return hour * 3600 + minute * 60 + second; }
  bool operator==(const TimeOfDay&) const = default;
  std::string ToString() const;  // "08:00:00"
};

// "08:00", "08:00:00" -> TimeOfDay; InvalidArgument naming the text
// otherwise.
Status ParseTimeOfDay(std::string_view text, TimeOfDay* out);

// Loads an IANA zone ("Asia/Shanghai", "UTC"). NotFound when the name is
// unknown or the system has no zone data (Debian: package tzdata).
Status LoadIanaTimeZone(const std::string& name, absl::TimeZone* out);

class DailyWindow {
 public:
  DailyWindow(TimeOfDay from, TimeOfDay to, absl::TimeZone zone, std::string zone_name);

  bool AllDay() const { return from_ == to_; }
  bool Contains(absl::Time t) const;
  // The first instant after `t` at which Contains changes its answer;
  // absl::InfiniteFuture() for an all-day window.
  absl::Time NextBoundary(absl::Time t) const;

  const TimeOfDay& from() const { return from_; }
  const TimeOfDay& to() const { return to_; }
  const std::string& zone_name() const { return zone_name_; }
  // "20:00:00-08:00:00 Asia/Shanghai"
  std::string ToString() const;

 private:
  // The instant a window that starts on local day `day` starts, and ends.
  absl::Time StartOn(absl::CivilDay day) const;
  absl::Time EndOfWindowStartingOn(absl::CivilDay day) const;
  absl::Time Resolve(absl::CivilDay day, const TimeOfDay& time) const;

  TimeOfDay from_;
  TimeOfDay to_;
  absl::TimeZone zone_;
  std::string zone_name_;
};

}  // namespace ferry::pool
