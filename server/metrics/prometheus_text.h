// PrometheusText: writes metrics in Prometheus's text exposition format
// (version 0.0.4, the format a scrape of `/metrics` expects).
//
// The rules it keeps, so that every line it writes parses:
//  * each family starts with one `# HELP name text` and one `# TYPE name
//    type` line, and its samples follow together, before the next family;
//  * metric names match [a-zA-Z_:][a-zA-Z0-9_:]*, label names
//    [a-zA-Z_][a-zA-Z0-9_]* and do not start with "__"; a name that does not
//    is refused (the sample or family is left out and error() says why);
//  * label values escape backslash, double quote and line feed (\\, \", \n);
//    HELP text escapes backslash and line feed; bytes that are not UTF-8 (a
//    client's program name may hold any) become U+FFFD;
//  * values are integers as written, or the shortest decimal that reads back
//    as the same double, or +Inf, -Inf, NaN;
//  * a histogram is its cumulative `_bucket{...,le="B"}` lines, ascending,
//    ending with le="+Inf" (equal to `_count`), then `_sum` and `_count`;
//    `le` is not a label of its own there.
//
// Thread-safety: none; one writer per exposition.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "server/metrics/histogram.h"

namespace ferry::metrics {

enum class MetricType { kCounter, kGauge, kHistogram };

// A sample's labels, written in this order.
using Labels = std::vector<std::pair<std::string, std::string>>;

// The Content-Type of what PrometheusText writes.
inline constexpr char kTextContentType[] = "text/plain; version=0.0.4; charset=utf-8";

class PrometheusText {
 public:
  // Starts family `name`: its HELP and TYPE lines. A name used before is
  // refused (its samples are left out until the next Family).
  void Family(std::string_view name, MetricType type, std::string_view help);
  // A sample of the current family (a counter or a gauge).
  void Value(const Labels& labels, double value);
  void Count(const Labels& labels, uint64_t value);
  // A sample of the current family, a histogram, with bucket upper bounds
  // `bounds` (ascending; counts.counts as HistogramCounts says, empty for
  // none yet).
  void Histogram(const Labels& labels, std::span<const double> bounds,
                 const HistogramCounts& counts);

  // Everything written so far.
  const std::string& text() const { return text_; }
  // The first thing refused ("" when nothing was): for tests and a log line.
  const std::string& error() const { return error_; }

  static bool IsMetricName(std::string_view name);
  static bool IsLabelName(std::string_view name);
  // `value` as a label value between double quotes (escaped, UTF-8).
  static std::string EscapeLabelValue(std::string_view value);
  // `text` as HELP text (escaped, UTF-8).
  static std::string EscapeHelp(std::string_view text);
  // `value` as a sample value.
  static std::string FormatValue(double value);

 private:
  // Whether a sample may be written now (a family is open and of `type`,
  // the labels are valid); records the error otherwise.
  bool SampleAllowed(const Labels& labels, bool histogram);
  void Line(std::string_view suffix, const Labels& labels, const std::string* le,
            const std::string& value);
  void Refuse(std::string why);

  std::string text_;
  std::string error_;
  std::string family_;  // "" when none is open (or it was refused)
  MetricType type_ = MetricType::kGauge;
  std::vector<std::string> families_;  // written so far
};

}  // namespace ferry::metrics
