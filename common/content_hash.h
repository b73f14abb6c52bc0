// ContentHash: the SHA-256 of some bytes, naming a module image by its
// content (schema/README.md: module images are content-addressed).
// SHA-256 because the name crosses sessions: two different images must never
// share one, even when a client chooses its bytes to make them collide.
//
// Thread-safety: pure functions.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

namespace ferry {

inline constexpr size_t kContentHashBytes = 32;
using ContentHash = std::array<uint8_t, kContentHashBytes>;

ContentHash HashContent(std::span<const uint8_t> bytes);

// "3fa2…" (64 hex digits), for logs.
std::string ContentHashHex(const ContentHash& hash);

}  // namespace ferry
