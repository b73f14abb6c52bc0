// Sizes and durations as people write them.
#include "common/units.h"

#include <gtest/gtest.h>

namespace ferry {
namespace {

using std::chrono::milliseconds;

TEST(ByteSizeTest, ParsesBinaryUnits) {
  uint64_t bytes = 0;
  ASSERT_TRUE(ParseByteSize("8GiB", &bytes));
  EXPECT_EQ(bytes, 8ull << 30);
  ASSERT_TRUE(ParseByteSize("512MiB", &bytes));
  EXPECT_EQ(bytes, 512ull << 20);
  ASSERT_TRUE(ParseByteSize("1G", &bytes));
  EXPECT_EQ(bytes, 1ull << 30);
  ASSERT_TRUE(ParseByteSize("4096", &bytes));
  EXPECT_EQ(bytes, 4096u);
  ASSERT_TRUE(ParseByteSize("2TiB", &bytes));
  EXPECT_EQ(bytes, 2ull << 40);
  for (const char* bad :
       {"", "GiB", "8 GiB", "8gib", "-1", "1.5GiB", "8GB", "99999999999999999999", "16777216TiB"}) {
    EXPECT_FALSE(ParseByteSize(bad, &bytes)) << bad;
  }
}

TEST(ByteSizeTest, FormatsBackExactly) {
  for (uint64_t v : {0ull, 1ull, 1536ull, 1ull << 20, 3ull << 30, 5ull << 40, (1ull << 30) + 1}) {
    uint64_t back = 0;
    ASSERT_TRUE(ParseByteSize(FormatByteSize(v), &back)) << FormatByteSize(v);
    EXPECT_EQ(back, v);
  }
  EXPECT_EQ(FormatByteSize(8ull << 30), "8GiB");
  EXPECT_EQ(FormatByteSize(1536), "1536B");
}

TEST(DurationTest, ParsesTheIssueForms) {
  milliseconds d{};
  ASSERT_TRUE(ParseDuration("30s", &d));
  EXPECT_EQ(d, milliseconds(30000));
  ASSERT_TRUE(ParseDuration("5m", &d));
  EXPECT_EQ(d, milliseconds(300000));
  ASSERT_TRUE(ParseDuration("1h", &d));
  EXPECT_EQ(d, milliseconds(3600000));
  ASSERT_TRUE(ParseDuration("1h30m", &d));
  EXPECT_EQ(d, milliseconds(5400000));
  ASSERT_TRUE(ParseDuration("250ms", &d));
  EXPECT_EQ(d, milliseconds(250));
  ASSERT_TRUE(ParseDuration("1m5s", &d));
  EXPECT_EQ(d, milliseconds(65000));
  ASSERT_TRUE(ParseDuration("2d", &d));
  EXPECT_EQ(d, milliseconds(172800000));
  ASSERT_TRUE(ParseDuration("0", &d));
  EXPECT_EQ(d, milliseconds(0));
  for (const char* bad : {"", "5", "-5m", "1.5h", "5 m", "5min", "30s1m", "1m1m", "h", "10x",
                          "99999999999999999999d"}) {
    EXPECT_FALSE(ParseDuration(bad, &d)) << bad;
  }
}

TEST(DurationTest, FormatsBackExactly) {
  EXPECT_EQ(FormatDuration(milliseconds(5400000)), "1h30m");
  EXPECT_EQ(FormatDuration(milliseconds(0)), "0s");
  EXPECT_EQ(FormatDuration(milliseconds(900000)), "15m");
  EXPECT_EQ(FormatDuration(milliseconds(1250)), "1s250ms");
  for (int64_t ms : {1ll, 999ll, 61000ll, 86400000ll + 1}) {
    milliseconds back{};
    ASSERT_TRUE(ParseDuration(FormatDuration(milliseconds(ms)), &back));
    EXPECT_EQ(back.count(), ms);
  }
}

TEST(UnitsTest, UnixMillisPrintAsUtc) {
  EXPECT_EQ(FormatUnixMillisUtc(0), "-");
  EXPECT_EQ(FormatUnixMillisUtc(1773144000999), "2026-03-10 12:00:00 UTC");
}

}  // namespace
}  // namespace ferry
