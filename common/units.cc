#include "common/units.h"

#include <ctime>
#include <limits>

namespace ferry {
namespace {

// Reads the decimal digits at the front of `text` into `value`; false when
// there are none or they overflow.
bool TakeInteger(std::string_view* text, uint64_t* value) {
  size_t i = 0;
  uint64_t v = 0;
  while (i < text->size() && (*text)[i] >= '0' && (*text)[i] <= '9') {
    const uint64_t digit = static_cast<uint64_t>((*text)[i] - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - digit) / 10) return false;
    v = v * 10 + digit;
    ++i;
  }
  if (i == 0) return false;
  *value = v;
  text->remove_prefix(i);
  return true;
}

}  // namespace

bool ParseByteSize(std::string_view text, uint64_t* bytes) {
  uint64_t value = 0;
  if (!TakeInteger(&text, &value)) return false;
  uint64_t scale = 1;
  if (text.empty() || text == "B") {
    scale = 1;
  } else if (text == "K" || text == "KiB") {
    scale = uint64_t{1} << 10;
  } else if (text == "M" || text == "MiB") {
    scale = uint64_t{1} << 20;
  } else if (text == "G" || text == "GiB") {
    scale = uint64_t{1} << 30;
  } else if (text == "T" || text == "TiB") {
    scale = uint64_t{1} << 40;
  } else {
    return false;
  }
  if (value > std::numeric_limits<uint64_t>::max() / scale) return false;
  *bytes = value * scale;
  return true;
}

bool ParseDuration(std::string_view text, std::chrono::milliseconds* out) {
  if (text == "0") {
    *out = std::chrono::milliseconds(0);
    return true;
  }
  if (text.empty()) return false;
  struct Unit {
    std::string_view name;
    uint64_t ms;
  };
  // Largest first; "ms" before "m" so that the longer name wins.
  constexpr Unit kUnits[] = {{"d", 86400000}, {"h", 3600000}, {"ms", 1}, {"m", 60000}, {"s", 1000}};
  constexpr int kOrder[] = {0, 1, 3, 4, 2};  // d h m s ms: required order
  int last_rank = -1;
  uint64_t total = 0;
  constexpr uint64_t kMax = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  while (!text.empty()) {
    uint64_t value = 0;
    if (!TakeInteger(&text, &value)) return false;
    int unit = -1;
    for (int u = 0; u < 5; ++u) {
      if (text.substr(0, kUnits[u].name.size()) == kUnits[u].name) {
        unit = u;
        break;
      }
    }
    if (unit < 0) return false;
    text.remove_prefix(kUnits[unit].name.size());
    int rank = 0;
    while (kOrder[rank] != unit) ++rank;
    if (rank <= last_rank) return false;
    last_rank = rank;
    if (value > kMax / kUnits[unit].ms) return false;
    const uint64_t term = value * kUnits[unit].ms;
    if (total > kMax - term) return false;
    total += term;
  }
  *out = std::chrono::milliseconds(static_cast<int64_t>(total));
  return true;
}

std::string FormatByteSize(uint64_t bytes) {
  constexpr const char* kNames[] = {"TiB", "GiB", "MiB", "KiB"};
  constexpr int kShifts[] = {40, 30, 20, 10};
  if (bytes != 0) {
    for (int i = 0; i < 4; ++i) {
      const uint64_t unit = uint64_t{1} << kShifts[i];
      if (bytes % unit == 0) return std::to_string(bytes / unit) + kNames[i];
    }
  }
  return std::to_string(bytes) + "B";
}

std::string Plural(int64_t count, std::string_view one, std::string_view many) {
  return std::to_string(count) + " " + std::string(count == 1 ? one : many);
}

std::string FormatDuration(std::chrono::milliseconds duration) {
  int64_t ms = duration.count();
  if (ms == 0) return "0s";
  std::string out;
  if (ms < 0) {
    out = "-";
    ms = -ms;
  }
  constexpr struct {
    const char* name;
    int64_t ms;
  } kUnits[] = {{"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1}};
  for (const auto& unit : kUnits) {
    if (ms >= unit.ms) {
      out += std::to_string(ms / unit.ms) + unit.name;
      ms %= unit.ms;
    }
  }
  return out;
}

std::string FormatUnixMillisUtc(int64_t unix_ms) {
  if (unix_ms == 0) return "-";
  const time_t seconds = static_cast<time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char text[40];
  std::strftime(text, sizeof(text), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return text;
}

}  // namespace ferry
