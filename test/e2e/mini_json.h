// A small JSON reader for the e2e harness: enough to read `ferryctl status
// -o json` (objects, arrays, strings, numbers, true/false/null). Not for
// untrusted input at scale: recursion is bounded (depth 64), but the whole
// document is held in memory.
//
// Thread-safety: a value type; ParseJson keeps no state.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry::e2e {

struct JsonValue {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  Type type = Type::kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<JsonValue> array;
  std::vector<std::pair<std::string, JsonValue>> members;  // object, in order

  bool is_object() const { return type == Type::kObject; }
  bool is_array() const { return type == Type::kArray; }
  bool is_number() const { return type == Type::kNumber; }
  bool is_string() const { return type == Type::kString; }

  // The member named `key` of an object, or nullptr.
  const JsonValue* Find(std::string_view key) const;
};

// Parses one JSON document (surrounding whitespace allowed). On failure
// returns nullopt and, when `error` is not null, says where and why.
std::optional<JsonValue> ParseJson(std::string_view text, std::string* error = nullptr);

// Members of an object (null: none) read with a default for what is missing
// or of another type: a number (-1), a string (""), an array (empty).
double NumberMember(const JsonValue* object, std::string_view key);
std::string StringMember(const JsonValue* object, std::string_view key);
std::vector<JsonValue> ArrayMember(const JsonValue* object, std::string_view key);

}  // namespace ferry::e2e
