#include "server/metrics/prometheus_text.h"

#include <algorithm>
#include <charconv>
#include <cmath>

namespace ferry::metrics {
namespace {

const char* TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kHistogram:
      return "histogram";
    case MetricType::kGauge:
      break;
  }
  return "gauge";
}

// The length of the well-formed UTF-8 sequence at the start of `in` (1 to 4),
// or 0 when it is not one (a stray continuation byte, a truncated or
// overlong sequence, a surrogate, a code point past U+10FFFF).
size_t Utf8SequenceLength(std::string_view in) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(in[i]); };
  const unsigned char lead = byte(0);
  if (lead < 0x80) return 1;
  size_t length = 0;
  unsigned char low = 0x80, high = 0xBF;  // the second byte's range
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;   // overlong
    if (lead == 0xED) high = 0x9F;  // surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;   // overlong
    if (lead == 0xF4) high = 0x8F;  // past U+10FFFF
  } else {
    return 0;
  }
  if (in.size() < length || byte(1) < low || byte(1) > high) return 0;
  for (size_t i = 2; i < length; ++i) {
    if (byte(i) < 0x80 || byte(i) > 0xBF) return 0;
  }
  return length;
}

// Appends `in` as valid UTF-8 (U+FFFD for each byte that is not), with
// backslash and line feed escaped, and the double quote too when `quote`.
void AppendEscaped(std::string_view in, bool quote, std::string* out) {
  while (!in.empty()) {
    const size_t length = Utf8SequenceLength(in);
    if (length == 0) {
      out->append("\xEF\xBF\xBD");
      in.remove_prefix(1);
      continue;
    }
    if (length == 1) {
      const char c = in[0];
      if (c == '\\') {
        out->append("\\\\");
      } else if (c == '\n') {
        out->append("\\n");
      } else if (c == '"' && quote) {
        out->append("\\\"");
      } else {
        out->push_back(c);
      }
    } else {
      out->append(in.substr(0, length));
    }
    in.remove_prefix(length);
  }
}

bool IsNameChar(char c, bool first, bool colon) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
  if (colon && c == ':') return true;
  return !first && c >= '0' && c <= '9';
}

}  // namespace

bool PrometheusText::IsMetricName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i], i == 0, /*colon=*/true)) return false;
  }
  return true;
}

bool PrometheusText::IsLabelName(std::string_view name) {
  if (name.empty() || name.substr(0, 2) == "__") return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i], i == 0, /*colon=*/false)) return false;
  }
  return true;
}

std::string PrometheusText::EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  AppendEscaped(value, /*quote=*/true, &out);
  return out;
}

std::string PrometheusText::EscapeHelp(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  AppendEscaped(text, /*quote=*/false, &out);
  return out;
}

std::string PrometheusText::FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[64];
  // The shortest text that reads back as the same double ("0.25", "1e+21").
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  if (ec != std::errc()) return "NaN";  // cannot happen with 64 bytes
  return std::string(buffer, end);
}

void PrometheusText::Refuse(std::string why) {
  if (error_.empty()) error_ = std::move(why);
}

void PrometheusText::Family(std::string_view name, MetricType type, std::string_view help) {
  family_.clear();
  if (!IsMetricName(name)) {
    Refuse("'" + std::string(name) + "' is not a metric name");
    return;
  }
  if (std::find(families_.begin(), families_.end(), name) != families_.end()) {
    Refuse("family " + std::string(name) + " written twice");
    return;
  }
  families_.emplace_back(name);
  family_ = name;
  type_ = type;
  text_ += "# HELP ";
  text_ += name;
  text_ += ' ';
  text_ += EscapeHelp(help);
  text_ += "\n# TYPE ";
  text_ += name;
  text_ += ' ';
  text_ += TypeName(type);
  text_ += '\n';
}

bool PrometheusText::SampleAllowed(const Labels& labels, bool histogram) {
  if (family_.empty()) {
    Refuse("a sample without a family (or of a refused one)");
    return false;
  }
  if (histogram != (type_ == MetricType::kHistogram)) {
    Refuse("family " + family_ + (histogram ? " is not a histogram" : " is a histogram"));
    return false;
  }
  for (size_t i = 0; i < labels.size(); ++i) {
    const std::string& name = labels[i].first;
    if (!IsLabelName(name) || (histogram && name == "le")) {
      Refuse("'" + name + "' is not a label name of family " + family_);
      return false;
    }
    for (size_t j = 0; j < i; ++j) {
      if (labels[j].first == name) {
        Refuse("label " + name + " twice in a sample of " + family_);
        return false;
      }
    }
  }
  return true;
}

void PrometheusText::Line(std::string_view suffix, const Labels& labels, const std::string* le,
                          const std::string& value) {
  text_ += family_;
  text_ += suffix;
  if (!labels.empty() || le != nullptr) {
    text_ += '{';
    bool first = true;
    for (const auto& [name, label_value] : labels) {
      if (!first) text_ += ',';
      first = false;
      text_ += name;
      text_ += "=\"";
      AppendEscaped(label_value, /*quote=*/true, &text_);
      text_ += '"';
    }
    if (le != nullptr) {
      if (!first) text_ += ',';
      text_ += "le=\"";
      text_ += *le;
      text_ += '"';
    }
    text_ += '}';
  }
  text_ += ' ';
  text_ += value;
  text_ += '\n';
}

void PrometheusText::Value(const Labels& labels, double value) {
  if (!SampleAllowed(labels, /*histogram=*/false)) return;
  Line("", labels, nullptr, FormatValue(value));
}

void PrometheusText::Count(const Labels& labels, uint64_t value) {
  if (!SampleAllowed(labels, /*histogram=*/false)) return;
  Line("", labels, nullptr, std::to_string(value));
}

void PrometheusText::Histogram(const Labels& labels, std::span<const double> bounds,
                               const HistogramCounts& counts) {
  if (!SampleAllowed(labels, /*histogram=*/true)) return;
  if (!std::is_sorted(bounds.begin(), bounds.end()) ||
      std::adjacent_find(bounds.begin(), bounds.end()) != bounds.end() ||
      std::any_of(bounds.begin(), bounds.end(), [](double b) { return !std::isfinite(b); })) {
    Refuse("histogram " + family_ + ": bounds are not finite and strictly ascending");
    return;
  }
  if (!counts.counts.empty() && counts.counts.size() != bounds.size() + 1) {
    Refuse("histogram " + family_ + ": counts do not match its bounds");
    return;
  }
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!counts.counts.empty()) cumulative += counts.counts[i];
    const std::string le = FormatValue(bounds[i]);
    Line("_bucket", labels, &le, std::to_string(cumulative));
  }
  if (!counts.counts.empty()) cumulative += counts.counts[bounds.size()];
  const std::string infinity = "+Inf";
  Line("_bucket", labels, &infinity, std::to_string(cumulative));
  Line("_sum", labels, nullptr, FormatValue(counts.sum));
  Line("_count", labels, nullptr, std::to_string(cumulative));
}

}  // namespace ferry::metrics
