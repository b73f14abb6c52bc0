#include "server/pool/schedule.h"

#include <cstdio>

namespace ferry::pool {

std::string TimeOfDay::ToString() const {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%02d:%02d:%02d", hour, minute, second);
  return buf;
}

Status ParseTimeOfDay(std::string_view text, TimeOfDay* out) {
  auto bad = [&] {
    return Status::InvalidArgument("'" + std::string(text) +
                                   "' is not a time of day (HH:MM or HH:MM:SS, 00:00 to 23:59:59)");
  };
  auto two_digits = [&](size_t at, int* value) {
    if (at + 2 > text.size() || text[at] < '0' || text[at] > '9' || text[at + 1] < '0' ||
        text[at + 1] > '9') {
      return false;
    }
    *value = (text[at] - '0') * 10 + (text[at + 1] - '0');
    return true;
  };
  TimeOfDay t;
  if (text.size() != 5 && text.size() != 8) return bad();
  if (!two_digits(0, &t.hour) || text[2] != ':' || !two_digits(3, &t.minute)) return bad();
  if (text.size() == 8 && (text[5] != ':' || !two_digits(6, &t.second))) return bad();
  if (t.hour > 23 || t.minute > 59 || t.second > 59) return bad();
  *out = t;
  return Status::Ok();
}

Status LoadIanaTimeZone(const std::string& name, absl::TimeZone* out) {
  // absl falls back to UTC for a name it cannot load; that must not pass
  // for a zone that merely looks like UTC.
  if (name.empty() || !absl::LoadTimeZone(name, out)) {
    return Status::NotFound("unknown time zone '" + name +
                            "' (an IANA name such as \"Asia/Shanghai\"; the system's zone data "
                            "comes from the tzdata package)");
  }
  return Status::Ok();
}

DailyWindow::DailyWindow(TimeOfDay from, TimeOfDay to, absl::TimeZone zone, std::string zone_name)
    : from_(from), to_(to), zone_(zone), zone_name_(std::move(zone_name)) {}

absl::Time DailyWindow::Resolve(absl::CivilDay day, const TimeOfDay& time) const {
  const absl::CivilSecond local(day.year(), day.month(), day.day(), time.hour, time.minute,
                                time.second);
  const absl::TimeZone::TimeInfo info = zone_.At(local);
  switch (info.kind) {
    case absl::TimeZone::TimeInfo::SKIPPED:
      return info.trans;  // the clocks jump over it: the boundary is the jump
    case absl::TimeZone::TimeInfo::REPEATED:
    case absl::TimeZone::TimeInfo::UNIQUE:
      return info.pre;  // the first (or only) occurrence
  }
  return info.pre;
}

absl::Time DailyWindow::StartOn(absl::CivilDay day) const { return Resolve(day, from_); }

absl::Time DailyWindow::EndOfWindowStartingOn(absl::CivilDay day) const {
  const bool wraps = to_.SecondsOfDay() <= from_.SecondsOfDay();
  return Resolve(wraps ? day + 1 : day, to_);
}

bool DailyWindow::Contains(absl::Time t) const {
  if (AllDay()) return true;
  const absl::CivilDay today = absl::ToCivilDay(t, zone_);
  // A window that contains t started today or yesterday (local days); the
  // day before that is checked too, as a guard against a zone whose offset
  // changes by a day (it has happened: Samoa, 2011).
  for (absl::CivilDay day = today - 2; day <= today; ++day) {
    if (StartOn(day) <= t && t < EndOfWindowStartingOn(day)) return true;
  }
  return false;
}

absl::Time DailyWindow::NextBoundary(absl::Time t) const {
  if (AllDay()) return absl::InfiniteFuture();
  const absl::CivilDay today = absl::ToCivilDay(t, zone_);
  absl::Time best = absl::InfiniteFuture();
  for (absl::CivilDay day = today - 2; day <= today + 2; ++day) {
    const absl::Time start = StartOn(day);
    const absl::Time end = EndOfWindowStartingOn(day);
    if (start >= end) continue;  // empty on this day (both ends in one DST gap)
    if (start > t && start < best) best = start;
    if (end > t && end < best) best = end;
  }
  return best;
}

std::string DailyWindow::ToString() const {
  return from_.ToString() + "-" + to_.ToString() + " " + zone_name_;
}

}  // namespace ferry::pool
