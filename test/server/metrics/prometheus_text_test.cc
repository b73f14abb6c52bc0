// PrometheusText (server/metrics/prometheus_text.h): escaping, values,
// histograms and refused names, each checked line by line and through the
// strict parser of test/support; and that parser's own refusals, so that a
// scrape it accepts is one Prometheus accepts.
#include "server/metrics/prometheus_text.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "server/metrics/histogram.h"
#include "test/support/prometheus_text_parser.h"

namespace ferry::metrics {
namespace {

using test::ParsePrometheusText;
using test::PromExposition;

PromExposition Parse(const std::string& text) {
  PromExposition exposition;
  const std::string error = ParsePrometheusText(text, &exposition);
  EXPECT_EQ(error, "") << text;
  return exposition;
}

TEST(PrometheusTextTest, FamiliesHaveHelpAndTypeThenTheirSamples) {
  PrometheusText out;
  out.Family("ferry_calls_total", MetricType::kCounter, "Calls executed.");
  out.Count({{"server", "a"}}, 12);
  out.Count({{"server", "b"}}, 0);
  out.Family("ferry_up", MetricType::kGauge, "Up.");
  out.Value({}, 1);
  EXPECT_EQ(out.error(), "");
  EXPECT_EQ(out.text(),
            "# HELP ferry_calls_total Calls executed.\n"
            "# TYPE ferry_calls_total counter\n"
            "ferry_calls_total{server=\"a\"} 12\n"
            "ferry_calls_total{server=\"b\"} 0\n"
            "# HELP ferry_up Up.\n"
            "# TYPE ferry_up gauge\n"
            "ferry_up 1\n");
  const PromExposition parsed = Parse(out.text());
  ASSERT_EQ(parsed.families.size(), 2u);
  EXPECT_EQ(parsed.families[0].type, "counter");
  EXPECT_EQ(parsed.Value("ferry_calls_total", {{"server", "b"}}), 0.0);
  EXPECT_EQ(parsed.Value("ferry_up"), 1.0);
}

TEST(PrometheusTextTest, LabelValuesAndHelpAreEscaped) {
  PrometheusText out;
  out.Family("ferry_x", MetricType::kGauge, "back\\slash and\nnew line, \"quotes\" kept");
  const std::string nasty = "a\\b\"c\nd}e,f=g";
  out.Count({{"program", nasty}}, 1);
  EXPECT_EQ(out.error(), "");
  EXPECT_NE(out.text().find("# HELP ferry_x back\\\\slash and\\nnew line, \"quotes\" kept\n"),
            std::string::npos)
      << out.text();
  EXPECT_NE(out.text().find("ferry_x{program=\"a\\\\b\\\"c\\nd}e,f=g\"} 1\n"), std::string::npos)
      << out.text();
  const PromExposition parsed = Parse(out.text());
  ASSERT_EQ(parsed.families.size(), 1u);
  EXPECT_EQ(parsed.families[0].help, "back\\slash and\nnew line, \"quotes\" kept");
  ASSERT_EQ(parsed.families[0].samples.size(), 1u);
  EXPECT_EQ(parsed.families[0].samples[0].labels.at("program"), nasty);
}

TEST(PrometheusTextTest, BytesThatAreNotUtf8BecomeReplacementCharacters) {
  // Valid multi-byte text stays; a stray continuation byte, an overlong
  // encoding, a surrogate and a truncated sequence do not.
  EXPECT_EQ(PrometheusText::EscapeLabelValue("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"),
            "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
  EXPECT_EQ(PrometheusText::EscapeLabelValue("a\x80z"), "a\xEF\xBF\xBDz");
  EXPECT_EQ(PrometheusText::EscapeLabelValue("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(PrometheusText::EscapeLabelValue("\xED\xA0\x80"),
            "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(PrometheusText::EscapeLabelValue("x\xE2\x82"), "x\xEF\xBF\xBD\xEF\xBF\xBD");
  PrometheusText out;
  out.Family("ferry_x", MetricType::kGauge, "h");
  out.Count({{"program", std::string("bad\xFF\xFE", 5)}}, 1);
  Parse(out.text());  // the parser checks UTF-8
}

TEST(PrometheusTextTest, ValuesReadBackExactly) {
  EXPECT_EQ(PrometheusText::FormatValue(0), "0");
  EXPECT_EQ(PrometheusText::FormatValue(1), "1");
  EXPECT_EQ(PrometheusText::FormatValue(0.25), "0.25");
  EXPECT_EQ(PrometheusText::FormatValue(-2.5), "-2.5");
  EXPECT_EQ(PrometheusText::FormatValue(1e21), "1e+21");
  EXPECT_EQ(PrometheusText::FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(PrometheusText::FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(PrometheusText::FormatValue(std::nan("")), "NaN");
  PrometheusText out;
  out.Family("ferry_x", MetricType::kGauge, "h");
  out.Value({{"k", "third"}}, 1.0 / 3);
  out.Value({{"k", "start"}}, 1767225600.123);
  out.Count({{"k", "big"}}, 18446744073709551615ull);  // written exactly
  EXPECT_NE(out.text().find("ferry_x{k=\"big\"} 18446744073709551615\n"), std::string::npos);
  const PromExposition parsed = Parse(out.text());
  EXPECT_EQ(parsed.Value("ferry_x", {{"k", "third"}}), 1.0 / 3);
  EXPECT_EQ(parsed.Value("ferry_x", {{"k", "start"}}), 1767225600.123);
}

TEST(PrometheusTextTest, HistogramsAreCumulativeWithInfSumAndCount) {
  static constexpr double kBounds[] = {0.001, 0.01, 0.1};
  AtomicHistogram histogram(kBounds);
  for (double v : {0.0005, 0.001, 0.002, 0.05, 0.05, 7.0}) histogram.Observe(v);
  const HistogramCounts counts = histogram.Snapshot();
  EXPECT_EQ(counts.counts, (std::vector<uint64_t>{2, 1, 2, 1}));  // 0.001 is in le="0.001"
  EXPECT_EQ(counts.total(), 6u);
  PrometheusText out;
  out.Family("ferry_call_seconds", MetricType::kHistogram, "Call durations.");
  out.Histogram({{"server", "a"}}, kBounds, counts);
  out.Histogram({{"server", "idle"}}, kBounds, HistogramCounts{});  // nothing observed yet
  EXPECT_EQ(out.error(), "");
  EXPECT_NE(out.text().find("ferry_call_seconds_bucket{server=\"a\",le=\"0.001\"} 2\n"
                            "ferry_call_seconds_bucket{server=\"a\",le=\"0.01\"} 3\n"
                            "ferry_call_seconds_bucket{server=\"a\",le=\"0.1\"} 5\n"
                            "ferry_call_seconds_bucket{server=\"a\",le=\"+Inf\"} 6\n"
                            "ferry_call_seconds_sum{server=\"a\"} "),
            std::string::npos)
      << out.text();
  EXPECT_NE(out.text().find("\nferry_call_seconds_count{server=\"a\"} 6\n"), std::string::npos);
  const PromExposition parsed = Parse(out.text());
  EXPECT_NEAR(*parsed.Value("ferry_call_seconds_sum", {{"server", "a"}}), 7.1035, 1e-9);
  EXPECT_EQ(parsed.Value("ferry_call_seconds_count", {{"server", "idle"}}), 0.0);
  EXPECT_EQ(parsed.Value("ferry_call_seconds_bucket", {{"server", "idle"}, {"le", "+Inf"}}), 0.0);

  HistogramCounts sum = counts;
  sum.Add(counts);
  EXPECT_EQ(sum.total(), 12u);
  EXPECT_DOUBLE_EQ(sum.sum, 2 * counts.sum);
}

TEST(PrometheusTextTest, MisuseIsRefusedAndLeftOut) {
  PrometheusText out;
  out.Count({}, 1);  // no family yet
  EXPECT_NE(out.error().find("without a family"), std::string::npos) << out.error();

  PrometheusText names;
  names.Family("9starts_with_a_digit", MetricType::kGauge, "h");
  names.Count({}, 1);
  EXPECT_NE(names.error().find("not a metric name"), std::string::npos);
  names.Family("ferry_ok", MetricType::kGauge, "h");
  names.Count({{"__reserved", "x"}}, 1);
  names.Count({{"bad-name", "x"}}, 1);
  names.Count({{"a", "1"}, {"a", "2"}}, 1);
  names.Family("ferry_ok", MetricType::kGauge, "again");
  names.Count({}, 2);
  static constexpr double kBounds[] = {1, 2};
  names.Family("ferry_hist", MetricType::kHistogram, "h");
  names.Histogram({{"le", "1"}}, kBounds, HistogramCounts{});
  names.Value({}, 1);  // a plain sample in a histogram family
  static constexpr double kUnsorted[] = {2, 1};
  names.Histogram({}, kUnsorted, HistogramCounts{});
  // Whatever was refused, what was written still parses, and holds none of it.
  const PromExposition parsed = Parse(names.text());
  EXPECT_EQ(parsed.families.size(), 2u);
  EXPECT_TRUE(parsed.Family("ferry_ok")->samples.empty());
  EXPECT_TRUE(parsed.Family("ferry_hist")->samples.empty());
}

TEST(PrometheusTextParserTest, RefusesWhatPrometheusWouldNot) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "empty"},
      {"# HELP a h\n# TYPE a gauge\na 1", "line feed"},
      {"# HELP a h\n# TYPE a gauge\n\na 1\n", "blank"},
      {"# just a comment\n", "neither HELP nor TYPE"},
      {"a 1\n", "before any HELP"},
      {"# HELP a h\n# TYPE a gauge\na one\n", "not a value"},
      {"# HELP a h\n# TYPE a gauge\na{b=\"c\" 1\n", "commas"},
      {"# HELP a h\n# TYPE a gauge\na{b=\"c\\t\"} 1\n", "bad escape"},
      {"# HELP a h\n# TYPE a gauge\na{b=\"1\",b=\"2\"} 1\n", "twice"},
      {"# HELP a h\n# TYPE a gauge\na 1\na 2\n", "series a twice"},
      {"# HELP a h\n# TYPE a gauge\nb 1\n", "outside its family"},
      {"# HELP a h\n# TYPE a counter\na -1\n", "negative"},
      {"# HELP a h\n# TYPE a bogus\n", "not a metric type"},
      {"# HELP a h\n# TYPE a gauge\na 1\n# HELP a again\n", "after a's samples"},
      {"# HELP a h\n# TYPE a gauge\n# HELP b h\n# TYPE b gauge\n# HELP a h\n", "not together"},
      {"# TYPE a gauge\na 1\n", "lacks its HELP"},
      {"# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "+Inf"},
      {"# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
       "h_sum 1\nh_count 1\n",
       "cumulative"},
      {"# HELP h h\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
       "differs from _count"},
      {"# HELP h h\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", "_sum"},
      {"# HELP a h\n# TYPE a gauge\na{p=\"\xFF\"} 1\n", "UTF-8"},
  };
  for (const auto& [text, expected] : cases) {
    PromExposition parsed;
    const std::string error = ParsePrometheusText(text, &parsed);
    EXPECT_NE(error.find(expected), std::string::npos)
        << "text:\n"
        << text << "\nerror: " << error << "\nexpected: " << expected;
  }
}

}  // namespace
}  // namespace ferry::metrics
