#include "common/random_bytes.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <vector>

namespace ferry {
namespace {

// Every byte is written (a short read from the kernel is continued), and two
// draws differ.
TEST(RandomBytesTest, FillsEveryByteAndDiffersEachTime) {
  std::vector<uint8_t> a(1 << 20, 0), b(1 << 20, 0);
  ASSERT_TRUE(RandomBytes(a.data(), a.size()).ok());
  ASSERT_TRUE(RandomBytes(b.data(), b.size()).ok());
  EXPECT_NE(a, b);
  // A MiB of zeros left anywhere would be a 1 in 2^(8*4096) accident.
  size_t zero_run = 0, longest = 0;
  for (uint8_t byte : a) {
    zero_run = byte == 0 ? zero_run + 1 : 0;
    longest = std::max(longest, zero_run);
  }
  EXPECT_LT(longest, 16u);
  EXPECT_TRUE(RandomBytes(nullptr, 0).ok());
}

}  // namespace
}  // namespace ferry
