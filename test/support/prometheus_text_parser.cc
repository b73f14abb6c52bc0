#include "test/support/prometheus_text_parser.h"

#include <cmath>
#include <cstdlib>
#include <set>
#include <utility>

namespace ferry::test {
namespace {

bool IsNameChar(char c, bool first, bool colon) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
  if (colon && c == ':') return true;
  return !first && c >= '0' && c <= '9';
}

// The longest name at the start of `text` (metric names allow ':').
size_t NameLength(std::string_view text, bool colon) {
  size_t n = 0;
  while (n < text.size() && IsNameChar(text[n], n == 0, colon)) ++n;
  return n;
}

bool IsMetricName(std::string_view name) {
  return !name.empty() && NameLength(name, /*colon=*/true) == name.size();
}

bool ValidUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
    const unsigned char lead = byte(i);
    size_t length = 0;
    unsigned char low = 0x80, high = 0xBF;
    if (lead < 0x80) {
      length = 1;
    } else if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3;
      if (lead == 0xE0) low = 0xA0;
      if (lead == 0xED) high = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4;
      if (lead == 0xF0) low = 0x90;
      if (lead == 0xF4) high = 0x8F;
    } else {
      return false;
    }
    if (i + length > text.size()) return false;
    if (length > 1 && (byte(i + 1) < low || byte(i + 1) > high)) return false;
    for (size_t k = 2; k < length; ++k) {
      if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return false;
    }
    i += length;
  }
  return true;
}

// A sample value: +Inf, -Inf, NaN or a decimal float.
bool ParseValue(std::string_view text, double* out) {
  if (text == "+Inf") {
    *out = INFINITY;
    return true;
  }
  if (text == "-Inf") {
    *out = -INFINITY;
    return true;
  }
  if (text == "NaN") {
    *out = NAN;
    return true;
  }
  if (text.empty() || text.find_first_not_of("0123456789.eE+-") != std::string_view::npos) {
    return false;
  }
  const std::string copy(text);
  char* end = nullptr;
  *out = std::strtod(copy.c_str(), &end);
  return end == copy.c_str() + copy.size();
}

// Unescapes `text` with the escapes allowed (`quote`: \" too); false on any
// other backslash sequence.
bool Unescape(std::string_view text, bool quote, std::string* out) {
  out->clear();
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\') {
      out->push_back(text[i]);
      continue;
    }
    if (++i == text.size()) return false;
    if (text[i] == '\\') {
      out->push_back('\\');
    } else if (text[i] == 'n') {
      out->push_back('\n');
    } else if (text[i] == '"' && quote) {
      out->push_back('"');
    } else {
      return false;
    }
  }
  return true;
}

std::string SeriesKey(const std::string& name, const std::map<std::string, std::string>& labels) {
  std::string key = name + "{";
  for (const auto& [label, value] : labels) key += label + "=" + value + "\x1f";
  return key + "}";
}

// Checks one histogram family's series; "" or what is wrong.
std::string CheckHistogram(const PromFamily& family) {
  struct Series {
    std::vector<std::pair<double, double>> buckets;  // le, count, in text order
    std::optional<double> sum, count;
  };
  std::map<std::string, Series> series;
  for (const PromSample& sample : family.samples) {
    std::map<std::string, std::string> labels = sample.labels;
    const std::string suffix = sample.name.substr(family.name.size());
    if (suffix == "_bucket") {
      auto le = labels.find("le");
      if (le == labels.end()) return family.name + "_bucket without le";
      double bound = 0;
      if (!ParseValue(le->second, &bound) || std::isnan(bound)) {
        return family.name + "_bucket: le=\"" + le->second + "\" is not a number";
      }
      labels.erase(le);
      series[SeriesKey("", labels)].buckets.emplace_back(bound, sample.value);
    } else {
      if (labels.count("le") != 0) return family.name + suffix + " has an le label";
      (suffix == "_sum" ? series[SeriesKey("", labels)].sum : series[SeriesKey("", labels)].count) =
          sample.value;
    }
  }
  for (const auto& [key, s] : series) {
    const std::string where = family.name + key;
    if (!s.sum.has_value() || !s.count.has_value()) return where + ": no _sum or no _count";
    if (s.buckets.empty() || s.buckets.back().first != INFINITY) {
      return where + ": the last bucket is not le=\"+Inf\"";
    }
    for (size_t i = 1; i < s.buckets.size(); ++i) {
      if (!(s.buckets[i].first > s.buckets[i - 1].first)) return where + ": le not ascending";
      if (s.buckets[i].second < s.buckets[i - 1].second) return where + ": counts not cumulative";
    }
    if (s.buckets.back().second != *s.count) return where + ": +Inf bucket differs from _count";
    if (*s.count < 0 || std::isnan(*s.count)) return where + ": a bad _count";
  }
  return "";
}

}  // namespace

const PromFamily* PromExposition::Family(std::string_view name) const {
  for (const PromFamily& family : families) {
    if (family.name == name) return &family;
  }
  return nullptr;
}

std::vector<const PromSample*> PromExposition::Find(
    std::string_view name, const std::map<std::string, std::string>& match) const {
  std::vector<const PromSample*> found;
  for (const PromFamily& family : families) {
    for (const PromSample& sample : family.samples) {
      if (sample.name != name) continue;
      bool all = true;
      for (const auto& [label, value] : match) {
        auto it = sample.labels.find(label);
        all = all && it != sample.labels.end() && it->second == value;
      }
      if (all) found.push_back(&sample);
    }
  }
  return found;
}

std::optional<double> PromExposition::Value(std::string_view name,
                                            const std::map<std::string, std::string>& match) const {
  const std::vector<const PromSample*> found = Find(name, match);
  if (found.size() != 1) return std::nullopt;
  return found[0]->value;
}

std::string ParsePrometheusText(std::string_view text, PromExposition* out) {
  out->families.clear();
  if (text.empty()) return "line 1: an empty exposition";
  if (text.back() != '\n') return "the last line does not end with a line feed";
  std::set<std::string> finished;  // families whose lines are over
  std::set<std::string> series;
  PromFamily* family = nullptr;
  bool has_help = false, has_type = false;
  int number = 0;
  const auto close_family = [&]() -> std::string {
    if (family == nullptr) return "";
    if (!has_help || !has_type) return family->name + " lacks its HELP or TYPE line";
    if (family->type == "histogram") return CheckHistogram(*family);
    return "";
  };
  while (!text.empty()) {
    ++number;
    const size_t end = text.find('\n');
    const std::string_view line = text.substr(0, end);
    text.remove_prefix(end + 1);
    const std::string at = "line " + std::to_string(number) + ": ";
    if (line.empty()) return at + "a blank line";
    if (line.find('\r') != std::string_view::npos) return at + "a carriage return";
    if (!ValidUtf8(line)) return at + "not UTF-8";
    if (line.front() == '#') {
      const bool help = line.starts_with("# HELP ");
      const bool type = line.starts_with("# TYPE ");
      if (!help && !type) return at + "a comment that is neither HELP nor TYPE";
      std::string_view rest = line.substr(7);
      const size_t name_end = rest.find(' ');
      if (name_end == std::string_view::npos) return at + "HELP or TYPE without its text";
      const std::string name(rest.substr(0, name_end));
      const std::string_view argument = rest.substr(name_end + 1);
      if (!IsMetricName(name)) return at + "'" + name + "' is not a metric name";
      if (family == nullptr || family->name != name) {
        if (std::string why = close_family(); !why.empty()) return at + why;
        if (finished.count(name) != 0) return at + name + "'s lines are not together";
        if (family != nullptr) finished.insert(family->name);
        out->families.push_back(PromFamily{name, "", "", {}});
        family = &out->families.back();
        has_help = has_type = false;
      }
      if (!family->samples.empty()) return at + "HELP or TYPE after " + name + "'s samples";
      if (help) {
        if (has_help) return at + "a second HELP for " + name;
        if (!Unescape(argument, /*quote=*/false, &family->help)) return at + "a bad escape in HELP";
        has_help = true;
      } else {
        if (has_type) return at + "a second TYPE for " + name;
        if (argument != "counter" && argument != "gauge" && argument != "histogram" &&
            argument != "summary" && argument != "untyped") {
          return at + "'" + std::string(argument) + "' is not a metric type";
        }
        family->type = argument;
        has_type = true;
      }
      continue;
    }
    // A sample: name[{labels}] value [timestamp]
    PromSample sample;
    const size_t name_length = NameLength(line, /*colon=*/true);
    if (name_length == 0) return at + "not a sample";
    sample.name = line.substr(0, name_length);
    std::string_view rest = line.substr(name_length);
    if (!rest.empty() && rest.front() == '{') {
      rest.remove_prefix(1);
      for (;;) {
        if (!rest.empty() && rest.front() == '}') {
          rest.remove_prefix(1);
          break;
        }
        const size_t label_length = NameLength(rest, /*colon=*/false);
        if (label_length == 0) return at + "a bad label name";
        const std::string label(rest.substr(0, label_length));
        if (label.starts_with("__")) return at + "label " + label + " is reserved";
        rest.remove_prefix(label_length);
        if (!rest.starts_with("=\"")) return at + "label " + label + " lacks =\"";
        rest.remove_prefix(2);
        size_t close = 0;
        while (close < rest.size() && rest[close] != '"') close += rest[close] == '\\' ? 2 : 1;
        if (close >= rest.size()) return at + "label " + label + "'s value is not closed";
        std::string value;
        if (!Unescape(rest.substr(0, close), /*quote=*/true, &value)) {
          return at + "a bad escape in label " + label;
        }
        if (!sample.labels.emplace(label, std::move(value)).second) {
          return at + "label " + label + " twice";
        }
        rest.remove_prefix(close + 1);
        if (!rest.empty() && rest.front() == ',') {
          rest.remove_prefix(1);
        } else if (rest.empty() || rest.front() != '}') {
          return at + "labels not separated by commas";
        }
      }
    }
    if (!rest.starts_with(" ")) return at + "no space before the value";
    rest.remove_prefix(1);
    const size_t value_end = rest.find(' ');
    if (!ParseValue(rest.substr(0, value_end), &sample.value)) {
      return at + "'" + std::string(rest.substr(0, value_end)) + "' is not a value";
    }
    if (value_end != std::string_view::npos) {
      const std::string_view timestamp = rest.substr(value_end + 1);
      const size_t digits = timestamp.starts_with("-") ? 1 : 0;
      if (timestamp.size() <= digits ||
          timestamp.find_first_not_of("0123456789", digits) != std::string_view::npos) {
        return at + "'" + std::string(timestamp) + "' is not a timestamp";
      }
    }
    if (family == nullptr) return at + "a sample before any HELP and TYPE";
    bool belongs = sample.name == family->name;
    if (family->type == "histogram") {
      belongs = sample.name == family->name + "_bucket" || sample.name == family->name + "_sum" ||
                sample.name == family->name + "_count";
    } else if (family->type == "summary") {
      belongs =
          belongs || sample.name == family->name + "_sum" || sample.name == family->name + "_count";
    }
    if (!belongs) return at + sample.name + " outside its family (" + family->name + ")";
    if (family->type == "counter" && !(sample.value >= 0)) {
      return at + "counter " + sample.name + " is negative or NaN";
    }
    if (!series.insert(SeriesKey(sample.name, sample.labels)).second) {
      return at + "series " + sample.name + " twice";
    }
    family->samples.push_back(std::move(sample));
  }
  if (std::string why = close_family(); !why.empty()) return "at the end: " + why;
  return "";
}

}  // namespace ferry::test
