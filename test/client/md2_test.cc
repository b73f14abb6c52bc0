// MD2 against RFC 1319's test suite (appendix A.5) and HMAC-MD2 against
// RFC 2104's definition.
#include "client/md2.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <set>
#include <string>
#include <vector>

namespace ferry::client {
namespace {

std::span<const uint8_t> Bytes(const std::string& text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

std::string Hex(const Md2Digest& digest) {
  std::string hex;
  char byte[3];
  for (uint8_t b : digest) {
    std::snprintf(byte, sizeof(byte), "%02x", b);
    hex += byte;
  }
  return hex;
}

TEST(Md2Test, Rfc1319TestSuite) {
  const std::pair<std::string, std::string> kSuite[] = {
      {"", "8350e5a3e24c153df2275c9f80692773"},
      {"a", "32ec01ec4a6dac72c0ab96fb34c0b5d1"},
      {"abc", "da853b0d3f88d99b30283a69e6ded6bb"},
      {"message digest", "ab4f496bfb2a530b219ff33031fe06b0"},
      {"abcdefghijklmnopqrstuvwxyz", "4e8ddff3650292ab5a4108c3aa47940b"},
      {"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
       "da33def2a42df13975352846c30338cd"},
      {"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
       "d5976f79d83d3a0dc9806c3c66f3efd8"},
  };
  for (const auto& [message, digest] : kSuite) {
    EXPECT_EQ(Hex(ComputeMd2(Bytes(message))), digest) << "MD2(\"" << message << "\")";
  }
}

TEST(Md2Test, IncrementalUpdatesMatchOneShot) {
  const std::string message(100, 'x');
  const Md2Digest whole = ComputeMd2(Bytes(message));
  for (size_t split : {0, 1, 15, 16, 17, 32, 99, 100}) {
    Md2 md2;
    md2.Update(Bytes(message.substr(0, split)));
    md2.Update(Bytes(message.substr(split)));
    EXPECT_EQ(md2.Finish(), whole) << "split at " << split;
  }
  Md2 reused;
  reused.Update(Bytes("abc"));
  reused.Finish();
  reused.Reset();
  EXPECT_EQ(Hex(reused.Finish()), "8350e5a3e24c153df2275c9f80692773");
}

// RFC 2104: H(K ^ opad, H(K ^ ipad, text)), K zero-padded to the block size
// (16 bytes for MD2), or hashed first when longer.
Md2Digest ReferenceHmac(std::vector<uint8_t> key, const std::string& text) {
  if (key.size() > 16) {
    const Md2Digest hashed = ComputeMd2(key);
    key.assign(hashed.begin(), hashed.end());
  }
  key.resize(16, 0);
  std::vector<uint8_t> inner;
  for (uint8_t k : key) inner.push_back(k ^ 0x36);
  inner.insert(inner.end(), text.begin(), text.end());
  const Md2Digest inner_digest = ComputeMd2(inner);
  std::vector<uint8_t> outer;
  for (uint8_t k : key) outer.push_back(k ^ 0x5c);
  outer.insert(outer.end(), inner_digest.begin(), inner_digest.end());
  return ComputeMd2(outer);
}

TEST(HmacMd2Test, FollowsRfc2104) {
  const std::vector<std::vector<uint8_t>> keys = {
      {},
      {0x0b, 0x0b, 0x0b},
      std::vector<uint8_t>(16, 0xaa),  // exactly one block, as the runtime's key
      std::vector<uint8_t>(80, 0xaa),  // longer than a block: hashed first
  };
  for (const auto& key : keys) {
    for (const std::string& text : std::vector<std::string>{
             "", "Hi There", "what do ya want for nothing?", std::string(200, 'z')}) {
      EXPECT_EQ(HmacMd2(key, Bytes(text)), ReferenceHmac(key, text))
          << "key of " << key.size() << " bytes, text of " << text.size();
    }
  }
  // Keyed: a different key gives a different tag.
  EXPECT_NE(HmacMd2(keys[1], Bytes("m")), HmacMd2(keys[2], Bytes("m")));
  EXPECT_NE(HmacMd2(keys[2], Bytes("m")), ComputeMd2(Bytes("m")));
}

}  // namespace
}  // namespace ferry::client
