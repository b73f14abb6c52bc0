// MD2 per RFC 1319 and HMAC per RFC 2104. See md2.h for why ferry has it.
#include "client/md2.h"

#include <algorithm>
#include <vector>

namespace ferry::client {
namespace {

// RFC 1319, section 3.2 / appendix A.3: a permutation of 0..255 built from
// the digits of pi, MD2's only constant.
constexpr uint8_t kPiSubstitution[256] = {
    41,  46,  67,  201, 162, 216, 124, 1,   61,  54,  84,  161, 236, 240, 6,   19,  98,  167, 5,
    243, 192, 199, 115, 140, 152, 147, 43,  217, 188, 76,  130, 202, 30,  155, 87,  60,  253, 212,
    224, 22,  103, 66,  111, 24,  138, 23,  229, 18,  190, 78,  196, 214, 218, 158, 222, 73,  160,
    251, 245, 142, 187, 47,  238, 122, 169, 104, 121, 145, 21,  178, 7,   63,  148, 194, 16,  137,
    11,  34,  95,  33,  128, 127, 93,  154, 90,  144, 50,  39,  53,  62,  204, 231, 191, 247, 151,
    3,   255, 25,  48,  179, 72,  165, 181, 209, 215, 94,  146, 42,  172, 86,  170, 198, 79,  184,
    56,  210, 150, 164, 125, 182, 118, 252, 107, 226, 156, 116, 4,   241, 69,  157, 112, 89,  100,
    113, 135, 32,  134, 91,  207, 101, 230, 45,  168, 2,   27,  96,  37,  173, 174, 176, 185, 246,
    28,  70,  97,  105, 52,  64,  126, 15,  85,  71,  163, 35,  221, 81,  175, 58,  195, 92,  249,
    206, 186, 197, 234, 38,  44,  83,  13,  110, 133, 40,  132, 9,   211, 223, 205, 244, 65,  129,
    77,  82,  106, 220, 55,  200, 108, 193, 171, 250, 36,  225, 123, 8,   12,  189, 177, 74,  120,
    136, 149, 139, 227, 99,  232, 109, 233, 203, 213, 254, 59,  0,   29,  57,  242, 239, 183, 14,
    102, 88,  208, 228, 166, 119, 114, 248, 235, 117, 75,  10,  49,  68,  80,  180, 143, 237, 31,
    26,  219, 153, 141, 51,  159, 17,  131, 20,
};

}  // namespace

Md2::Md2() { Reset(); }

void Md2::Reset() {
  state_.fill(0);
  checksum_.fill(0);
  buffer_.fill(0);
  buffered_ = 0;
}

void Md2::UpdateChecksum(const uint8_t* block) {
  // RFC 1319's prose says "set C[j] to S[c xor L]"; its reference code (and
  // the published test vectors) xor into C[j], as the 1992 erratum notes.
  uint8_t last = checksum_[15];
  for (size_t j = 0; j < kBlockSize; ++j) {
    checksum_[j] ^= kPiSubstitution[block[j] ^ last];
    last = checksum_[j];
  }
}

void Md2::Compress(const uint8_t* block) {
  for (size_t j = 0; j < kBlockSize; ++j) {
    state_[16 + j] = block[j];
    state_[32 + j] = static_cast<uint8_t>(state_[16 + j] ^ state_[j]);
  }
  uint8_t t = 0;
  for (int round = 0; round < 18; ++round) {
    for (uint8_t& x : state_) {
      x ^= kPiSubstitution[t];
      t = x;
    }
    t = static_cast<uint8_t>(t + round);
  }
}

void Md2::Update(std::span<const uint8_t> data) {
  while (!data.empty()) {
    const size_t take = std::min(kBlockSize - buffered_, data.size());
    std::copy_n(data.begin(), take, buffer_.begin() + buffered_);
    buffered_ += take;
    data = data.subspan(take);
    if (buffered_ == kBlockSize) {
      UpdateChecksum(buffer_.data());
      Compress(buffer_.data());
      buffered_ = 0;
    }
  }
}

Md2Digest Md2::Finish() {
  // Step 1: pad with i bytes of value i, 1 <= i <= 16 (a full block when the
  // message already ends on a block boundary).
  const uint8_t pad = static_cast<uint8_t>(kBlockSize - buffered_);
  std::fill(buffer_.begin() + buffered_, buffer_.end(), pad);
  UpdateChecksum(buffer_.data());
  Compress(buffer_.data());
  // Step 2: the checksum is the last block; it is not folded into itself.
  const std::array<uint8_t, 16> checksum = checksum_;
  Compress(checksum.data());
  Md2Digest digest;
  std::copy_n(state_.begin(), digest.size(), digest.begin());
  return digest;
}

Md2Digest ComputeMd2(std::span<const uint8_t> data) {
  Md2 md2;
  md2.Update(data);
  return md2.Finish();
}

Md2Digest HmacMd2(std::span<const uint8_t> key, std::span<const uint8_t> message) {
  std::array<uint8_t, Md2::kBlockSize> block_key{};
  if (key.size() > block_key.size()) {
    const Md2Digest hashed = ComputeMd2(key);
    std::copy(hashed.begin(), hashed.end(), block_key.begin());
  } else {
    std::copy(key.begin(), key.end(), block_key.begin());
  }
  std::array<uint8_t, Md2::kBlockSize> pad;
  for (size_t i = 0; i < pad.size(); ++i) pad[i] = block_key[i] ^ 0x36;
  Md2 inner;
  inner.Update(pad);
  inner.Update(message);
  const Md2Digest inner_digest = inner.Finish();
  for (size_t i = 0; i < pad.size(); ++i) pad[i] = block_key[i] ^ 0x5c;
  Md2 outer;
  outer.Update(pad);
  outer.Update(inner_digest);
  return outer.Finish();
}

}  // namespace ferry::client
