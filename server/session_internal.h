// Small helpers shared by the Session's source files (session*.cc) only.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

namespace ferry::server::session_internal {

// `v` as 0x-prefixed hex, for addresses in messages.
// steady_clock now, in nanoseconds since its epoch: what the session keeps
// in atomics (the last call's time) to tell how long it has been idle.
inline int64_t SteadyNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline std::string Hex(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// A shared_ptr that keeps `owner` alive while pointing at `data`.
template <typename T, typename U>
std::shared_ptr<T> Alias(const std::shared_ptr<U>& owner, T* data) {
  return std::shared_ptr<T>(owner, data);
}

}  // namespace ferry::server::session_internal
