// Private helpers of ferry_image: bounds-checked little-endian reads from
// untrusted image bytes, and the Status every malformed image yields.
//
// Every parser in this folder reads through ByteReader (or through the Load*
// functions on ranges it has already checked), so a length or offset taken
// from the image can never move a read outside the caller's span.
//
// Thread-safety: stateless functions and a read-only view; safe from any
// thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "common/status.h"

namespace ferry::image::internal {

// Largest image (or decompressed entry) ferry accepts. Real fatbins reach a
// few GiB at most; the cap turns a corrupted size field into an error instead
// of a huge allocation or a walk through unrelated memory.
inline constexpr uint64_t kMaxImageBytes = uint64_t{1} << 34;

// The one error for "these bytes are not a (well-formed) module image": the
// driver answers CUDA_ERROR_INVALID_IMAGE for the same inputs.
Status InvalidImage(std::string message);

inline uint16_t LoadLe16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t LoadLe32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
inline uint64_t LoadLe64(const uint8_t* p) {
  return uint64_t{LoadLe32(p)} | (uint64_t{LoadLe32(p + 4)} << 32);
}

// Little-endian stores, the counterparts of the loads above.
inline void StoreLe16(uint8_t* p, uint16_t v) {
  for (int i = 0; i < 2; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline void StoreLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline void StoreLe64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// True when [offset, offset + length) lies within `size` bytes. Written so
// that no addition can wrap around.
inline bool InBounds(uint64_t size, uint64_t offset, uint64_t length) {
  return offset <= size && length <= size - offset;
}

// Sum and product that report overflow instead of wrapping.
inline bool CheckedAdd(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}
inline bool CheckedMul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

// A read-only window on untrusted bytes. Each accessor returns false, and
// leaves its output untouched, when the requested range leaves the window.
class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> bytes) : bytes_(bytes) {}

  size_t size() const { return bytes_.size(); }
  const uint8_t* data() const { return bytes_.data(); }
  bool Has(uint64_t offset, uint64_t length) const {
    return InBounds(bytes_.size(), offset, length);
  }

  bool U8(uint64_t offset, uint8_t* out) const {
    if (!Has(offset, 1)) return false;
    *out = bytes_[offset];
    return true;
  }
  bool U16(uint64_t offset, uint16_t* out) const {
    if (!Has(offset, 2)) return false;
    *out = LoadLe16(bytes_.data() + offset);
    return true;
  }
  bool U32(uint64_t offset, uint32_t* out) const {
    if (!Has(offset, 4)) return false;
    *out = LoadLe32(bytes_.data() + offset);
    return true;
  }
  bool U64(uint64_t offset, uint64_t* out) const {
    if (!Has(offset, 8)) return false;
    *out = LoadLe64(bytes_.data() + offset);
    return true;
  }

  // The bytes [offset, offset + length).
  bool Slice(uint64_t offset, uint64_t length, std::span<const uint8_t>* out) const {
    if (!Has(offset, length)) return false;
    *out = bytes_.subspan(offset, length);
    return true;
  }

  // The NUL-terminated string starting at `offset` (NUL excluded); false
  // when the window ends before a NUL.
  bool CString(uint64_t offset, std::string_view* out) const;

 private:
  std::span<const uint8_t> bytes_;
};

}  // namespace ferry::image::internal
