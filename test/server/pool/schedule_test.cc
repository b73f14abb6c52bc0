// Daily windows: midnight wrap, DST gaps and overlaps, boundaries.
#include "server/pool/schedule.h"

#include <gtest/gtest.h>

namespace ferry::pool {
namespace {

absl::TimeZone Zone(const std::string& name) {
  absl::TimeZone zone;
  Status status = LoadIanaTimeZone(name, &zone);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return zone;
}

absl::Time At(const absl::TimeZone& zone, int y, int mo, int d, int h, int mi, int s = 0) {
  return absl::FromCivil(absl::CivilSecond(y, mo, d, h, mi, s), zone);
}

DailyWindow Window(TimeOfDay from, TimeOfDay to, const std::string& zone) {
  return DailyWindow(from, to, Zone(zone), zone);
}

TEST(TimeOfDayTest, ParsesHoursMinutesAndSeconds) {
  TimeOfDay t;
  ASSERT_TRUE(ParseTimeOfDay("08:30", &t).ok());
  EXPECT_EQ(t, (TimeOfDay{8, 30, 0}));
  ASSERT_TRUE(ParseTimeOfDay("23:59:59", &t).ok());
  EXPECT_EQ(t, (TimeOfDay{23, 59, 59}));
  EXPECT_EQ(t.ToString(), "23:59:59");
  for (const char* bad : {"24:00", "8:00", "08:60", "08:00:60", "08-00", "", "08:00:0", "ab:cd"}) {
    EXPECT_FALSE(ParseTimeOfDay(bad, &t).ok()) << bad;
  }
}

TEST(TimeZoneTest, UnknownZoneIsAnErrorNotUtc) {
  absl::TimeZone zone;
  Status status = LoadIanaTimeZone("Mars/Olympus_Mons", &zone);
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find("Mars/Olympus_Mons"), std::string::npos);
  EXPECT_NE(status.message().find("tzdata"), std::string::npos);
  EXPECT_TRUE(LoadIanaTimeZone("Asia/Shanghai", &zone).ok());
}

TEST(DailyWindowTest, DayWindowWithinOneDay) {
  const DailyWindow day = Window({8, 0, 0}, {20, 0, 0}, "Asia/Shanghai");
  const absl::TimeZone sh = Zone("Asia/Shanghai");
  EXPECT_FALSE(day.Contains(At(sh, 2026, 3, 10, 7, 59, 59)));
  EXPECT_TRUE(day.Contains(At(sh, 2026, 3, 10, 8, 0, 0)));  // from is inside
  EXPECT_TRUE(day.Contains(At(sh, 2026, 3, 10, 19, 59, 59)));
  EXPECT_FALSE(day.Contains(At(sh, 2026, 3, 10, 20, 0, 0)));  // to is outside
  EXPECT_EQ(day.NextBoundary(At(sh, 2026, 3, 10, 12, 0)), At(sh, 2026, 3, 10, 20, 0));
  EXPECT_EQ(day.NextBoundary(At(sh, 2026, 3, 10, 20, 0)), At(sh, 2026, 3, 11, 8, 0));
  EXPECT_EQ(day.ToString(), "08:00:00-20:00:00 Asia/Shanghai");
}

TEST(DailyWindowTest, NightWindowWrapsMidnight) {
  const DailyWindow night = Window({20, 0, 0}, {8, 0, 0}, "Asia/Shanghai");
  const absl::TimeZone sh = Zone("Asia/Shanghai");
  EXPECT_FALSE(night.Contains(At(sh, 2026, 3, 10, 19, 59, 59)));
  EXPECT_TRUE(night.Contains(At(sh, 2026, 3, 10, 20, 0, 0)));
  EXPECT_TRUE(night.Contains(At(sh, 2026, 3, 10, 23, 59, 59)));
  EXPECT_TRUE(night.Contains(At(sh, 2026, 3, 11, 0, 0, 0)));  // past midnight
  EXPECT_TRUE(night.Contains(At(sh, 2026, 3, 11, 7, 59, 59)));
  EXPECT_FALSE(night.Contains(At(sh, 2026, 3, 11, 8, 0, 0)));
  // From inside the night, the next boundary is the morning after midnight.
  EXPECT_EQ(night.NextBoundary(At(sh, 2026, 3, 10, 23, 0)), At(sh, 2026, 3, 11, 8, 0));
  EXPECT_EQ(night.NextBoundary(At(sh, 2026, 3, 11, 1, 0)), At(sh, 2026, 3, 11, 8, 0));
  EXPECT_EQ(night.NextBoundary(At(sh, 2026, 3, 11, 8, 0)), At(sh, 2026, 3, 11, 20, 0));
  // Shanghai is UTC+8: 20:00 there is 12:00 UTC.
  EXPECT_EQ(At(sh, 2026, 3, 10, 20, 0),
            absl::FromCivil(absl::CivilSecond(2026, 3, 10, 12, 0, 0), absl::UTCTimeZone()));
}

TEST(DailyWindowTest, EqualEndsCoverTheWholeDay) {
  const DailyWindow all = Window({6, 0, 0}, {6, 0, 0}, "UTC");
  EXPECT_TRUE(all.AllDay());
  EXPECT_TRUE(all.Contains(At(absl::UTCTimeZone(), 2026, 1, 1, 5, 59, 59)));
  EXPECT_TRUE(all.Contains(At(absl::UTCTimeZone(), 2026, 1, 1, 6, 0, 0)));
  EXPECT_EQ(all.NextBoundary(At(absl::UTCTimeZone(), 2026, 1, 1, 0, 0)), absl::InfiniteFuture());
}

// New York springs forward on 2026-03-08: 02:00 EST becomes 03:00 EDT.
TEST(DailyWindowTest, NightAcrossSpringForwardIsAnHourShorter) {
  const absl::TimeZone ny = Zone("America/New_York");
  const DailyWindow night = Window({20, 0, 0}, {8, 0, 0}, "America/New_York");
  const absl::Time start = At(ny, 2026, 3, 7, 20, 0);
  EXPECT_TRUE(night.Contains(start));
  const absl::Time end = night.NextBoundary(start);
  EXPECT_EQ(end, At(ny, 2026, 3, 8, 8, 0));
  EXPECT_EQ(end - start, absl::Hours(11));
  // An ordinary night is twelve hours.
  EXPECT_EQ(night.NextBoundary(At(ny, 2026, 3, 9, 20, 0)) - At(ny, 2026, 3, 9, 20, 0),
            absl::Hours(12));
}

TEST(DailyWindowTest, NightAcrossFallBackIsAnHourLonger) {
  // New York falls back on 2026-11-01: 02:00 EDT becomes 01:00 EST.
  const absl::TimeZone ny = Zone("America/New_York");
  const DailyWindow night = Window({20, 0, 0}, {8, 0, 0}, "America/New_York");
  const absl::Time start = At(ny, 2026, 10, 31, 20, 0);
  EXPECT_EQ(night.NextBoundary(start) - start, absl::Hours(13));
}

TEST(DailyWindowTest, BoundaryInTheSpringGapHappensAtTheJump) {
  // 02:30 does not exist on 2026-03-08 in New York; a window starting then
  // starts when the clocks jump (07:00 UTC = 03:00 EDT).
  const absl::TimeZone ny = Zone("America/New_York");
  const DailyWindow w = Window({2, 30, 0}, {4, 0, 0}, "America/New_York");
  const absl::Time jump =
      absl::FromCivil(absl::CivilSecond(2026, 3, 8, 7, 0, 0), absl::UTCTimeZone());
  EXPECT_EQ(w.NextBoundary(At(ny, 2026, 3, 8, 1, 0)), jump);
  EXPECT_FALSE(w.Contains(jump - absl::Seconds(1)));
  EXPECT_TRUE(w.Contains(jump));
  // It ends at 04:00 EDT, one hour after the jump.
  EXPECT_EQ(w.NextBoundary(jump), jump + absl::Hours(1));
}

TEST(DailyWindowTest, BoundaryInTheFallOverlapHappensAtTheFirstOccurrence) {
  // 01:30 happens twice on 2026-11-01 in New York (EDT, then EST); a window
  // ending at 01:30 ends at the first, 05:30 UTC.
  const absl::TimeZone ny = Zone("America/New_York");
  const DailyWindow w = Window({0, 0, 0}, {1, 30, 0}, "America/New_York");
  const absl::Time first =
      absl::FromCivil(absl::CivilSecond(2026, 11, 1, 5, 30, 0), absl::UTCTimeZone());
  EXPECT_EQ(w.NextBoundary(At(ny, 2026, 11, 1, 0, 10)), first);
  EXPECT_TRUE(w.Contains(first - absl::Seconds(1)));
  EXPECT_FALSE(w.Contains(first));
  EXPECT_FALSE(w.Contains(first + absl::Hours(1)));  // 01:30 EST, the second time
}

TEST(DailyWindowTest, ContainsAgreesWithBoundariesOverAYearOfMinutes) {
  // Walk boundary to boundary through 2026 in London (two DST changes) and
  // check that Contains flips exactly at each boundary and nowhere between.
  const DailyWindow w = Window({22, 30, 0}, {6, 15, 0}, "Europe/London");
  absl::Time t = absl::FromCivil(absl::CivilSecond(2026, 1, 1, 0, 0, 0), absl::UTCTimeZone());
  const absl::Time end = t + absl::Hours(24 * 366);
  bool inside = w.Contains(t);
  int boundaries = 0;
  while (t < end) {
    const absl::Time next = w.NextBoundary(t);
    ASSERT_GT(next, t);
    ASSERT_EQ(w.Contains(next - absl::Seconds(1)), inside) << absl::FormatTime(next);
    ASSERT_NE(w.Contains(next), inside) << absl::FormatTime(next);
    inside = !inside;
    t = next;
    ++boundaries;
  }
  EXPECT_GE(boundaries, 2 * 365);
}

}  // namespace
}  // namespace ferry::pool
