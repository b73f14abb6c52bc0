// A strict parser of Prometheus's text exposition format (0.0.4), for tests
// that scrape ferryd's /metrics: every line must be a `# HELP`, a `# TYPE`
// or a sample, and the whole must keep the format's rules — HELP and TYPE
// once each and before the family's samples, a family's lines together,
// valid names, label values with only the escapes \\ \" \n and valid UTF-8,
// numeric values (or +Inf, -Inf, NaN), no series twice, counters not
// negative, and each histogram's buckets ascending, cumulative, ending with
// le="+Inf" equal to its _count, with its _sum. Stricter than Prometheus
// where ferry's writer never needs the latitude: no blank lines, no other
// comments, one space between a sample's parts.
//
// Thread-safety: plain functions and values.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::test {

struct PromSample {
  std::string name;  // with its suffix (_bucket, _sum, _count) for a histogram
  std::map<std::string, std::string> labels;  // unescaped
  double value = 0;
};

struct PromFamily {
  std::string name;
  std::string type;  // counter, gauge, histogram, summary, untyped
  std::string help;  // unescaped
  std::vector<PromSample> samples;
};

struct PromExposition {
  std::vector<PromFamily> families;  // in the text's order

  const PromFamily* Family(std::string_view name) const;
  // The samples named `name` whose labels include every label of `match`.
  std::vector<const PromSample*> Find(std::string_view name,
                                      const std::map<std::string, std::string>& match = {}) const;
  // The value of the one such sample; nullopt when there is none or more.
  std::optional<double> Value(std::string_view name,
                              const std::map<std::string, std::string>& match = {}) const;
};

// Parses `text`; "" when every line parsed and the rules hold, else
// "line N: what is wrong" (the first problem).
std::string ParsePrometheusText(std::string_view text, PromExposition* out);

}  // namespace ferry::test
