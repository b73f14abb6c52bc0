// Sizes and durations as people write them in config files, flags and
// environment variables: "8GiB", "512MiB", "30s", "5m", "1h30m".
//
// Both parsers are strict: a value they do not fully understand is an error
// (never a silent zero), and overflow is an error.
//
// Thread-safety: pure functions.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace ferry {

// "8GiB", "512MiB", "64KiB", "1T", "4096", "4096B" -> bytes. Units are binary
// (K/KiB = 1024, M/MiB, G/GiB, T/TiB); a bare number is bytes. No sign, no
// fraction, no spaces. Returns false on anything else or on overflow.
bool ParseByteSize(std::string_view text, uint64_t* bytes);

// "30s", "5m", "1h", "1h30m", "250ms", "2d", "0" -> a duration. One or more
// <integer><unit> terms, units ms, s, m, h, d, each at most once and from the
// largest to the smallest; "0" alone means zero. Returns false on anything
// else (negative, fractions, unknown units) or on overflow.
bool ParseDuration(std::string_view text, std::chrono::milliseconds* out);

// 8589934592 -> "8GiB", 1536 -> "1536B", 3221225472 -> "3GiB": the largest
// binary unit that divides `bytes` exactly (so the text parses back to the
// same value).
std::string FormatByteSize(uint64_t bytes);

// (3, "slice", "slices") -> "3 slices", (1, ...) -> "1 slice": counts in messages.
std::string Plural(int64_t count, std::string_view one, std::string_view many);

// 5400000 ms -> "1h30m", 0 -> "0s", 250 -> "250ms" (parses back exactly).
std::string FormatDuration(std::chrono::milliseconds duration);

// Milliseconds since the Unix epoch as "2026-03-10 12:00:00 UTC"; "-" for 0
// (meaning none, where ferry's records use 0 so).
std::string FormatUnixMillisUtc(int64_t unix_ms);

}  // namespace ferry
