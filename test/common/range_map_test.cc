// Tests for RangeMap (common/range_map.h): lookups at the edges of ranges,
// overlap refusal, 2D spans and the error text both sides report.
#include "common/range_map.h"

#include <cstdint>
#include <limits>

#include <gtest/gtest.h>

namespace ferry {
namespace {

TEST(RangeMapTest, FindsTheRangeHoldingAnAddress) {
  RangeMap<int> ranges;
  ASSERT_TRUE(ranges.Insert(0x1000, 0x100, 1));
  ASSERT_TRUE(ranges.Insert(0x2000, 0x10, 2));
  EXPECT_EQ(ranges.Find(0xfff).value, nullptr);
  ASSERT_NE(ranges.Find(0x1000).value, nullptr);
  EXPECT_EQ(*ranges.Find(0x10ff).value, 1);
  EXPECT_EQ(ranges.Find(0x10ff).base, 0x1000u);
  EXPECT_EQ(ranges.Find(0x1100).value, nullptr);
  EXPECT_EQ(*ranges.Find(0x200f).value, 2);
  EXPECT_EQ(ranges.Find(0x2010).value, nullptr);
  EXPECT_EQ(ranges.FindBase(0x1001).value, nullptr);
  EXPECT_EQ(*ranges.FindBase(0x2000).value, 2);
}

TEST(RangeMapTest, RefusesOverlapsEmptyAndWrappingRanges) {
  RangeMap<int> ranges;
  ASSERT_TRUE(ranges.Insert(0x1000, 0x100, 1));
  EXPECT_FALSE(ranges.Insert(0x10ff, 1, 2));     // inside
  EXPECT_FALSE(ranges.Insert(0xf00, 0x101, 2));  // runs into it
  EXPECT_FALSE(ranges.Insert(0x1000, 0x10, 2));  // same base
  EXPECT_FALSE(ranges.Insert(0x3000, 0, 2));
  EXPECT_FALSE(ranges.Insert(std::numeric_limits<uint64_t>::max() - 1, 4, 2));
  EXPECT_TRUE(ranges.Insert(0xf00, 0x100, 3));   // ends where the first starts
  EXPECT_TRUE(ranges.Insert(0x1100, 0x100, 4));  // starts where the first ends
  EXPECT_EQ(ranges.size(), 3u);
}

TEST(RangeMapTest, ContainsNeedsOneRangeToHoldTheWholeSpan) {
  RangeMap<int> ranges;
  ASSERT_TRUE(ranges.Insert(0x1000, 0x100, 1));
  ASSERT_TRUE(ranges.Insert(0x1100, 0x100, 2));
  EXPECT_TRUE(ranges.Contains(0x1000, 0x100));
  EXPECT_TRUE(ranges.Contains(0x10f0, 0x10));
  EXPECT_FALSE(ranges.Contains(0x10f0, 0x11));  // spans two adjacent ranges
  EXPECT_FALSE(ranges.Contains(0x10f0, std::numeric_limits<uint64_t>::max()));
  EXPECT_TRUE(ranges.Contains(0x5000, 0));  // nothing touched
  EXPECT_TRUE(ranges.Check(0x1000, 4, "source", "an allocation").ok());
  Status outside = ranges.Check(0x5000, 4, "source", "an allocation of this session");
  EXPECT_EQ(outside.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(outside.message(),
            "source range [0x5000, +4) is not inside an allocation of this session");
}

TEST(RangeMapTest, ContainsJoinedRunsAcrossAdjacentRangesThatJoin) {
  // Values: positive = a mapping (joins its positive neighbours), else not.
  RangeMap<int> ranges;
  ASSERT_TRUE(ranges.Insert(0x1000, 0x100, 1));
  ASSERT_TRUE(ranges.Insert(0x1100, 0x100, 2));
  ASSERT_TRUE(ranges.Insert(0x1200, 0x100, -3));  // adjacent, does not join
  ASSERT_TRUE(ranges.Insert(0x1400, 0x100, 4));   // a gap before it
  auto joins = [](int left, int right) { return left > 0 && right > 0; };
  EXPECT_TRUE(ranges.ContainsJoined(0x10f0, 0x20, joins));
  EXPECT_TRUE(ranges.ContainsJoined(0x1000, 0x200, joins));
  EXPECT_FALSE(ranges.ContainsJoined(0x1000, 0x201, joins));  // into the one that does not join
  EXPECT_FALSE(ranges.ContainsJoined(0x13f0, 0x20, joins));   // starts in the gap
  EXPECT_FALSE(ranges.ContainsJoined(0x12f0, 0x200, joins));  // across the gap
  EXPECT_FALSE(ranges.ContainsJoined(0xf00, 0x200, joins));   // starts before any range
  EXPECT_FALSE(ranges.ContainsJoined(0x1000, std::numeric_limits<uint64_t>::max(), joins));
  EXPECT_TRUE(ranges.ContainsJoined(0x9000, 0, joins));
  EXPECT_TRUE(ranges.Check2DJoined(0x1000, 0x100, 0x80, 2, "copy", "here", joins).ok());
  EXPECT_FALSE(ranges.CheckJoined(0x1000, 0x201, "copy", "here", joins).ok());
}

TEST(RangeMapTest, Checks2DRegionsByTheirSpan) {
  RangeMap<int> ranges;
  ASSERT_TRUE(ranges.Insert(0x1000, 1000, 1));
  // 10 rows of 64 bytes, 100 apart: span 964.
  EXPECT_TRUE(ranges.Check2D(0x1000, 100, 64, 10, "dst", "here").ok());
  EXPECT_FALSE(ranges.Check2D(0x1000 + 40, 100, 64, 10, "dst", "here").ok());
  EXPECT_FALSE(ranges.Check2D(0x1000, 32, 64, 2, "dst", "here").ok());  // pitch < width
  EXPECT_FALSE(
      ranges.Check2D(0x1000, std::numeric_limits<uint64_t>::max() / 2, 64, 4, "dst", "here").ok());
  EXPECT_TRUE(ranges.Check2D(0x9000, 100, 0, 10, "dst", "here").ok());  // no bytes
}

TEST(RangeMapTest, EraseAndEraseIfRemoveOnlyWhatTheyName) {
  RangeMap<int> ranges;
  ASSERT_TRUE(ranges.Insert(0x1000, 0x10, 1));
  ASSERT_TRUE(ranges.Insert(0x2000, 0x10, 2));
  ASSERT_TRUE(ranges.Insert(0x3000, 0x10, 1));
  EXPECT_FALSE(ranges.Erase(0x1001));
  ranges.EraseIf([](const int& v) { return v == 1; });
  EXPECT_EQ(ranges.size(), 1u);
  EXPECT_TRUE(ranges.Erase(0x2000));
  EXPECT_TRUE(ranges.empty());
}

}  // namespace
}  // namespace ferry
