// MD2 (RFC 1319) and HMAC (RFC 2104) over it.
//
// MD2 is long obsolete as a hash; ferry needs it for one reason: the CUDA
// runtime checks its driver with an HMAC-MD2 challenge (the integrity-check
// export table, see export_tables.cc), and a wrong answer makes every runtime
// call fail. Nothing in ferry relies on MD2 for security.
//
// Thread-safety: Md2 is a value type, one object per thread; the free
// functions are thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace ferry::client {

using Md2Digest = std::array<uint8_t, 16>;

class Md2 {
 public:
  static constexpr size_t kBlockSize = 16;

  Md2();
  void Update(std::span<const uint8_t> data);
  // Pads, appends the checksum and returns the digest. The object is spent
  // afterwards (Reset to reuse it).
  Md2Digest Finish();
  void Reset();

 private:
  // Mixes one 16-byte block into the state (RFC 1319 step 4).
  void Compress(const uint8_t* block);
  // Folds one block into the running checksum (step 2).
  void UpdateChecksum(const uint8_t* block);

  std::array<uint8_t, 48> state_;
  std::array<uint8_t, 16> checksum_;
  std::array<uint8_t, kBlockSize> buffer_;
  size_t buffered_ = 0;
};

Md2Digest ComputeMd2(std::span<const uint8_t> data);

// HMAC-MD2: MD2((K ^ opad) || MD2((K ^ ipad) || message)), with K the key
// padded to MD2's 16-byte block (or hashed first when longer).
Md2Digest HmacMd2(std::span<const uint8_t> key, std::span<const uint8_t> message);

}  // namespace ferry::client
