// A small recursive-descent JSON reader; see mini_json.h.
#include "mini_json.h"

#include <cctype>
#include <cstdlib>
#include <string>

namespace ferry::e2e {

const JsonValue* JsonValue::Find(std::string_view key) const {
  for (const auto& [name, value] : members) {
    if (name == key) return &value;
  }
  return nullptr;
}

namespace {

constexpr int kMaxDepth = 64;

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  std::optional<JsonValue> ParseDocument(std::string* error) {
    JsonValue value;
    bool ok = ParseValue(value, 0);
    if (ok) {
      SkipWhitespace();
      if (pos_ != text_.size()) ok = Fail("trailing characters");
    }
    if (!ok) {
      if (error != nullptr) {
        *error = error_ + " at offset " + std::to_string(pos_);
      }
      return std::nullopt;
    }
    return value;
  }

 private:
  bool Fail(const char* why) {
    if (error_.empty()) error_ = why;
    return false;
  }

  void SkipWhitespace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool Consume(char c) {
    SkipWhitespace();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  bool ConsumeWord(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  bool ParseValue(JsonValue& value, int depth) {
    if (depth > kMaxDepth) return Fail("nesting too deep");
    SkipWhitespace();
    if (pos_ >= text_.size()) return Fail("unexpected end");
    const char c = text_[pos_];
    if (c == '{') return ParseObject(value, depth);
    if (c == '[') return ParseArray(value, depth);
    if (c == '"') {
      value.type = JsonValue::Type::kString;
      return ParseString(value.string);
    }
    if (ConsumeWord("true")) {
      value.type = JsonValue::Type::kBool;
      value.boolean = true;
      return true;
    }
    if (ConsumeWord("false")) {
      value.type = JsonValue::Type::kBool;
      return true;
    }
    if (ConsumeWord("null")) {
      value.type = JsonValue::Type::kNull;
      return true;
    }
    return ParseNumber(value);
  }

  bool ParseObject(JsonValue& value, int depth) {
    value.type = JsonValue::Type::kObject;
    ++pos_;  // '{'
    if (Consume('}')) return true;
    do {
      SkipWhitespace();
      std::string key;
      if (pos_ >= text_.size() || text_[pos_] != '"') {
        return Fail("expected a member name");
      }
      if (!ParseString(key)) return false;
      if (!Consume(':')) return Fail("expected ':'");
      JsonValue member;
      if (!ParseValue(member, depth + 1)) return false;
      value.members.emplace_back(std::move(key), std::move(member));
    } while (Consume(','));
    return Consume('}') || Fail("expected ',' or '}'");
  }

  bool ParseArray(JsonValue& value, int depth) {
    value.type = JsonValue::Type::kArray;
    ++pos_;  // '['
    if (Consume(']')) return true;
    do {
      JsonValue element;
      if (!ParseValue(element, depth + 1)) return false;
      value.array.push_back(std::move(element));
    } while (Consume(','));
    return Consume(']') || Fail("expected ',' or ']'");
  }

  static void AppendUtf8(unsigned code, std::string& out) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  bool ParseString(std::string& out) {
    ++pos_;  // '"'
    while (pos_ < text_.size()) {
      const char c = text_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) {
        return Fail("control character in string");
      }
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) break;
      const char escape = text_[pos_++];
      switch (escape) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          if (pos_ + 4 > text_.size()) return Fail("short \\u escape");
          const std::string hex(text_.substr(pos_, 4));
          char* end = nullptr;
          const unsigned long code = std::strtoul(hex.c_str(), &end, 16);
          if (end != hex.c_str() + 4) return Fail("bad \\u escape");
          pos_ += 4;
          AppendUtf8(static_cast<unsigned>(code), out);  // surrogates as-is
          break;
        }
        default:
          return Fail("bad escape");
      }
    }
    return Fail("unterminated string");
  }

  bool ParseNumber(JsonValue& value) {
    const size_t start = pos_;
    if (pos_ < text_.size() && text_[pos_] == '-') ++pos_;
    while (pos_ < text_.size() &&
           (std::isdigit(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '.' ||
            text_[pos_] == 'e' || text_[pos_] == 'E' || text_[pos_] == '+' || text_[pos_] == '-')) {
      ++pos_;
    }
    if (pos_ == start) return Fail("unexpected character");
    const std::string digits(text_.substr(start, pos_ - start));
    char* end = nullptr;
    value.number = std::strtod(digits.c_str(), &end);
    if (end != digits.c_str() + digits.size()) {
      pos_ = start;
      return Fail("bad number");
    }
    value.type = JsonValue::Type::kNumber;
    return true;
  }

  std::string_view text_;
  size_t pos_ = 0;
  std::string error_;
};

}  // namespace

std::optional<JsonValue> ParseJson(std::string_view text, std::string* error) {
  return Parser(text).ParseDocument(error);
}

double NumberMember(const JsonValue* object, std::string_view key) {
  const JsonValue* value = object != nullptr ? object->Find(key) : nullptr;
  return value != nullptr && value->is_number() ? value->number : -1;
}

std::string StringMember(const JsonValue* object, std::string_view key) {
  const JsonValue* value = object != nullptr ? object->Find(key) : nullptr;
  return value != nullptr && value->is_string() ? value->string : "";
}

std::vector<JsonValue> ArrayMember(const JsonValue* object, std::string_view key) {
  const JsonValue* value = object != nullptr ? object->Find(key) : nullptr;
  return value != nullptr && value->is_array() ? value->array : std::vector<JsonValue>{};
}

}  // namespace ferry::e2e
