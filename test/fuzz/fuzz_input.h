// FuzzInput: typed values read from a fuzz input, front to back, for targets
// that decode their input into a sequence of operations. Past the end every
// read yields zeros and empty spans, so a decoder never fails and a short
// input is a short sequence. Header only: built by both the libFuzzer
// targets (clang) and their corpus drivers (any compiler).
//
// Thread-safety: one FuzzInput belongs to one thread.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>

namespace ferry::fuzz {

class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool empty() const { return at_ >= size_; }
  size_t remaining() const { return size_ - at_; }

  uint8_t Byte() { return empty() ? 0 : data_[at_++]; }
  bool Bool() { return (Byte() & 1) != 0; }

  // sizeof(T) bytes, little-endian; missing bytes are zero.
  template <typename T>
  T Integral() {
    static_assert(std::is_integral_v<T>);
    std::make_unsigned_t<T> v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      v |= static_cast<std::make_unsigned_t<T>>(static_cast<std::make_unsigned_t<T>>(Byte())
                                                << (8 * i));
    }
    return static_cast<T>(v);
  }

  // A value in [0, bound), bound > 0, from as few bytes as the bound needs.
  uint64_t Below(uint64_t bound) {
    uint64_t v = 0;
    for (uint64_t span = bound - 1; span != 0; span >>= 8) v = (v << 8) | Byte();
    return v % bound;
  }

  // Up to `n` bytes (fewer at the end), viewed in place.
  std::span<const uint8_t> Bytes(size_t n) {
    n = std::min(n, remaining());
    std::span<const uint8_t> out(data_ + at_, n);
    at_ += n;
    return out;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t at_ = 0;
};

}  // namespace ferry::fuzz
