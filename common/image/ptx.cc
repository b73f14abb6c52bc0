// PTX signature and variable parsing (see ptx.h).
//
// Thread-safety: pure functions; each call lexes with its own state.
#include "common/image/ptx.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/image/bytes.h"

namespace ferry::image::internal {
namespace {

// Guards against corrupted text asking for absurd layouts.
constexpr uint64_t kMaxParamBytes = uint64_t{1} << 20;
constexpr uint64_t kMaxAlignment = uint64_t{1} << 16;
constexpr uint64_t kMaxVariableBytes = uint64_t{1} << 40;
// Initial bytes are materialised only up to this size; a larger variable is
// reported with its size and no initial bytes (zeros), like `.nv.global`.
constexpr uint64_t kMaxInitialBytes = uint64_t{1} << 28;
// A parameter declaration is a handful of tokens; more means garbage.
constexpr size_t kMaxParamTokens = 64;

bool IsIdentStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '$' || c == '%';
}
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsIdentChar(char c) { return IsIdentStart(c) || IsDigit(c); }
// The letter after `0` in 0x (hex), 0b (binary), 0f / 0d (float bits).
bool IsRadixLetter(char c) {
  return c == 'x' || c == 'X' || c == 'b' || c == 'B' || c == 'f' || c == 'F' || c == 'd' ||
         c == 'D';
}
bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool IsIdentifier(std::string_view t) {
  return !t.empty() && IsIdentStart(t[0]) && std::all_of(t.begin(), t.end(), IsIdentChar);
}

// Splits PTX into tokens on demand: directives (`.u64`), identifiers,
// numbers (`42`, `0f3F800000`, `1.5e-3`), strings, and single punctuation
// characters. Comments vanish. Returns "" at the end of the text.
class Lexer {
 public:
  explicit Lexer(std::string_view text) : text_(text) {}

  std::string_view Next() {
    if (peeked_) {
      peeked_ = false;
      return peek_;
    }
    return Scan();
  }
  std::string_view Peek() {
    if (!peeked_) {
      peek_ = Scan();
      peeked_ = true;
    }
    return peek_;
  }

 private:
  std::string_view Scan() {
    SkipSpaceAndComments();
    if (pos_ >= text_.size()) return {};
    const size_t start = pos_;
    const char c = text_[pos_++];
    if (c == '"') {
      while (pos_ < text_.size() && text_[pos_] != '"') {
        pos_ += text_[pos_] == '\\' ? 2 : 1;
      }
      pos_ = std::min(pos_ + 1, text_.size());
    } else if (c == '.' || IsIdentStart(c)) {
      while (pos_ < text_.size() && IsIdentChar(text_[pos_])) ++pos_;
    } else if (IsDigit(c)) {
      ScanNumberTail(start);
    }
    return text_.substr(start, pos_ - start);
  }

  void ScanNumberTail(size_t start) {
    // Hex-style literals (0x.., 0f.., 0d.., 0b..) contain 'e' as a digit; only
    // a decimal number can have a signed exponent.
    const bool decimal =
        !(text_[start] == '0' && pos_ < text_.size() && IsRadixLetter(text_[pos_]));
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      const char prev = text_[pos_ - 1];
      if (IsIdentChar(c) || c == '.') {
        ++pos_;
      } else if (decimal && (c == '+' || c == '-') && (prev == 'e' || prev == 'E')) {
        ++pos_;
      } else {
        break;
      }
    }
  }

  void SkipSpaceAndComments() {
    while (pos_ < text_.size()) {
      if (IsSpace(text_[pos_])) {
        ++pos_;
      } else if (text_.substr(pos_, 2) == "//") {
        const size_t eol = text_.find('\n', pos_);
        pos_ = eol == std::string_view::npos ? text_.size() : eol + 1;
      } else if (text_.substr(pos_, 2) == "/*") {
        const size_t end = text_.find("*/", pos_ + 2);
        pos_ = end == std::string_view::npos ? text_.size() : end + 2;
      } else {
        return;
      }
    }
  }

  std::string_view text_;
  size_t pos_ = 0;
  std::string_view peek_;
  bool peeked_ = false;
};

// How an initialiser literal of a type becomes bytes.
enum class ValueKind {
  kInteger,  // .b/.u/.s: integer literals (float bit patterns accepted too)
  kFloat,    // .f32/.f64: decimal or 0f/0d bit patterns
  kBits,     // .f16/.bf16 and packed pairs: bit patterns only
  kHandle,   // .texref and friends: opaque 64-bit handles
};

struct TypeInfo {
  std::string_view name;
  uint32_t size;
  ValueKind kind;
};

constexpr TypeInfo kTypes[] = {
    {".b8", 1, ValueKind::kInteger},     {".u8", 1, ValueKind::kInteger},
    {".s8", 1, ValueKind::kInteger},     {".pred", 1, ValueKind::kInteger},
    {".b16", 2, ValueKind::kInteger},    {".u16", 2, ValueKind::kInteger},
    {".s16", 2, ValueKind::kInteger},    {".f16", 2, ValueKind::kBits},
    {".bf16", 2, ValueKind::kBits},      {".b32", 4, ValueKind::kInteger},
    {".u32", 4, ValueKind::kInteger},    {".s32", 4, ValueKind::kInteger},
    {".f32", 4, ValueKind::kFloat},      {".f16x2", 4, ValueKind::kBits},
    {".bf16x2", 4, ValueKind::kBits},    {".b64", 8, ValueKind::kInteger},
    {".u64", 8, ValueKind::kInteger},    {".s64", 8, ValueKind::kInteger},
    {".f64", 8, ValueKind::kFloat},      {".b128", 16, ValueKind::kBits},
    {".texref", 8, ValueKind::kHandle},  {".samplerref", 8, ValueKind::kHandle},
    {".surfref", 8, ValueKind::kHandle},
};

const TypeInfo* FindType(std::string_view token) {
  for (const TypeInfo& type : kTypes) {
    if (type.name == token) return &type;
  }
  return nullptr;
}

std::optional<uint32_t> VectorWidth(std::string_view token) {
  if (token == ".v2") return 2;
  if (token == ".v4") return 4;
  if (token == ".v8") return 8;
  return std::nullopt;
}

std::optional<uint64_t> ParseUnsigned(std::string_view t) {
  if (!t.empty() && (t.back() == 'U' || t.back() == 'u')) t.remove_suffix(1);
  int base = 10;
  if (t.size() > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X')) {
    base = 16;
    t.remove_prefix(2);
  } else if (t.size() > 2 && t[0] == '0' && (t[1] == 'b' || t[1] == 'B')) {
    base = 2;
    t.remove_prefix(2);
  } else if (t.size() > 1 && t[0] == '0') {
    base = 8;
    t.remove_prefix(1);
  }
  uint64_t value = 0;
  const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), value, base);
  if (ec != std::errc() || end != t.data() + t.size() || t.empty()) {
    return std::nullopt;
  }
  return value;
}

// `0fXXXXXXXX` / `0dXXXXXXXXXXXXXXXX`: PTX's exact float bit patterns.
std::optional<uint64_t> ParseFloatBits(std::string_view t, size_t digits) {
  if (t.size() != 2 + digits) return std::nullopt;
  uint64_t bits = 0;
  const auto [end, ec] = std::from_chars(t.data() + 2, t.data() + t.size(), bits, 16);
  if (ec != std::errc() || end != t.data() + t.size()) return std::nullopt;
  return bits;
}

// The bit pattern of one initialiser element (`tokens` is `[-] literal`) as
// a value of `type`; nullopt for anything that is not a literal (addresses
// such as `generic(x)` are filled in by the loader, not known here).
std::optional<uint64_t> ElementBits(const std::vector<std::string_view>& tokens,
                                    const TypeInfo& type) {
  bool negative = false;
  size_t i = 0;
  if (tokens.size() == 2 && (tokens[0] == "-" || tokens[0] == "+")) {
    negative = tokens[0] == "-";
    i = 1;
  }
  if (tokens.size() != i + 1 || type.size > 8) return std::nullopt;
  const std::string_view t = tokens[i];
  const bool is_f32_bits = t.size() > 1 && t[0] == '0' && (t[1] == 'f' || t[1] == 'F');
  const bool is_f64_bits = t.size() > 1 && t[0] == '0' && (t[1] == 'd' || t[1] == 'D');
  double real = 0;
  bool have_real = false;
  if (is_f32_bits || is_f64_bits) {
    const auto bits = ParseFloatBits(t, is_f32_bits ? 8 : 16);
    if (!bits) return std::nullopt;
    if (type.kind != ValueKind::kFloat || (is_f32_bits ? 4u : 8u) == type.size) {
      return negative ? std::nullopt : bits;
    }
    real = is_f32_bits ? std::bit_cast<float>(static_cast<uint32_t>(*bits))
                       : std::bit_cast<double>(*bits);
    have_real = true;
  }
  switch (type.kind) {
    case ValueKind::kFloat: {
      if (!have_real) {
        const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), real);
        if (ec != std::errc() || end != t.data() + t.size()) {
          return std::nullopt;
        }
      }
      if (negative) real = -real;
      if (type.size == 4) {
        return std::bit_cast<uint32_t>(static_cast<float>(real));
      }
      return std::bit_cast<uint64_t>(real);
    }
    case ValueKind::kInteger:
    case ValueKind::kBits: {
      const auto value = ParseUnsigned(t);
      if (!value) return std::nullopt;
      return negative ? uint64_t{0} - *value : *value;
    }
    case ValueKind::kHandle:
      return std::nullopt;
  }
  return std::nullopt;
}

// A module-scope variable declaration being read.
struct Declarator {
  std::string_view name;
  std::vector<std::optional<uint64_t>> dims;  // nullopt: `[]`
  std::vector<std::string_view> init;         // tokens after `=`, if any
  bool has_init = false;
};

class PtxParser {
 public:
  explicit PtxParser(std::string_view text) : lex_(text) {}

  Status Parse(ImageLayout* out) {
    // Module scope: braces open bodies (and `.section` blocks), parentheses
    // open `.func` parameter lists, whose `.global` (a pointer's state
    // space) is not a declaration.
    int depth = 0;
    int parens = 0;
    bool is_extern = false;
    for (std::string_view tok = lex_.Next(); !tok.empty(); tok = lex_.Next()) {
      if (tok == "{") {
        ++depth;
        is_extern = false;
      } else if (tok == "}") {
        depth = std::max(depth - 1, 0);
      } else if (depth > 0) {
        continue;
      } else if (tok == "(") {
        ++parens;
      } else if (tok == ")") {
        parens = std::max(parens - 1, 0);
      } else if (tok == ";") {
        is_extern = false;
      } else if (parens > 0) {
        continue;
      } else if (tok == ".extern") {
        is_extern = true;
      } else if (tok == ".entry") {
        FERRY_RETURN_IF_ERROR(ParseEntry());
      } else if (tok == ".global" || tok == ".const") {
        FERRY_RETURN_IF_ERROR(ParseVariables(/*record=*/!is_extern));
        is_extern = false;
      }
    }
    *out = std::move(layout_);
    return Status::Ok();
  }

 private:
  static Status Malformed(std::string what) { return InvalidImage("PTX: " + std::move(what)); }

  // After `.entry`: the name and the parameter list, up to its `)`.
  Status ParseEntry() {
    const std::string_view name = lex_.Next();
    if (!IsIdentifier(name)) return Malformed(".entry without a name");
    KernelLayout kernel;
    kernel.name = std::string(name);
    if (lex_.Peek() == "(") {
      lex_.Next();
      uint64_t cursor = 0;
      std::vector<std::string_view> param;
      for (;;) {
        const std::string_view tok = lex_.Next();
        if (tok.empty()) return Malformed("unterminated parameter list");
        if (tok != "," && tok != ")") {
          if (param.size() == kMaxParamTokens) {
            return Malformed("parameter declaration too long");
          }
          param.push_back(tok);
          continue;
        }
        if (!param.empty()) {
          ParamLayout layout;
          Status status = LayOutParam(param, &cursor, &layout);
          if (!status.ok()) return status.WithContext(kernel.name);
          kernel.params.push_back(layout);
          param.clear();
        } else if (tok == "," || !kernel.params.empty()) {
          return Malformed("empty parameter in " + kernel.name);
        }
        if (tok == ")") break;
      }
    }
    if (kernel_names_.insert(kernel.name).second) {
      layout_.kernels.push_back(std::move(kernel));
    }
    return Status::Ok();
  }

  // One `.param [.align N] .type [.ptr .space .align M] name[dims]`; places it
  // at the next multiple of its alignment after `*cursor`.
  static Status LayOutParam(const std::vector<std::string_view>& tokens, uint64_t* cursor,
                            ParamLayout* out) {
    if (tokens[0] != ".param") return Malformed("parameter without .param");
    uint64_t align = 0;
    uint64_t vector = 1;
    uint64_t count = 1;
    const TypeInfo* type = nullptr;
    bool pointer_attributes = false;  // `.align` now describes the pointee
    bool named = false;
    for (size_t i = 1; i < tokens.size(); ++i) {
      const std::string_view t = tokens[i];
      if (t == ".align") {
        if (i + 1 >= tokens.size()) return Malformed(".align without value");
        const auto value = ParseUnsigned(tokens[++i]);
        if (!value) return Malformed("bad .align value");
        if (type == nullptr && !pointer_attributes) align = *value;
      } else if (t == ".ptr") {
        pointer_attributes = true;
      } else if (const auto width = VectorWidth(t)) {
        vector = *width;
      } else if (const TypeInfo* found = FindType(t)) {
        type = found;
      } else if (t[0] == '.') {
        // State spaces of `.ptr` and other attributes: no bearing on layout.
      } else if (t == "[") {
        if (i + 2 >= tokens.size() || tokens[i + 2] != "]") {
          return Malformed("bad parameter array bound");
        }
        const auto bound = ParseUnsigned(tokens[i + 1]);
        if (!bound || !CheckedMul(count, *bound, &count)) {
          return Malformed("bad parameter array bound");
        }
        i += 2;
      } else if (IsIdentifier(t) && !named) {
        named = true;
      } else {
        return Malformed("unexpected '" + std::string(t) + "' in parameter");
      }
    }
    if (type == nullptr) return Malformed("parameter without a type");
    const uint64_t element = type->size * vector;
    uint64_t size = 0;
    if (!CheckedMul(element, count, &size) || size > kMaxParamBytes) {
      return Malformed("parameter too large");
    }
    if (align == 0) align = element;
    if (!std::has_single_bit(align) || align > kMaxAlignment) {
      return Malformed("bad parameter alignment");
    }
    const uint64_t offset = (*cursor + align - 1) & ~(align - 1);
    if (offset + size > kMaxParamBytes) {
      return Malformed("parameters too large");
    }
    *cursor = offset + size;
    *out =
        ParamLayout{.offset = static_cast<uint32_t>(offset), .size = static_cast<uint32_t>(size)};
    return Status::Ok();
  }

  // After `.global` / `.const`: `[.align N] [.vN] .type name[dims] [= init]
  // {, name ...} ;`. Records each variable unless `record` is false (an
  // `.extern` declaration, whose storage lives in another module).
  Status ParseVariables(bool record) {
    std::string_view tok = lex_.Next();
    if (tok == "[") {  // old `.const[bank]` syntax
      while (!tok.empty() && tok != "]") tok = lex_.Next();
      tok = lex_.Next();
    }
    uint64_t vector = 1;
    const TypeInfo* type = nullptr;
    for (;;) {
      if (tok.empty()) return Malformed("unterminated declaration");
      if (tok == ".align") {
        lex_.Next();
      } else if (tok == ".attribute") {
        FERRY_RETURN_IF_ERROR(SkipParenthesised());
      } else if (const auto width = VectorWidth(tok)) {
        vector = *width;
      } else if (const TypeInfo* found = FindType(tok)) {
        type = found;
        break;
      } else if (tok == ";") {
        return Status::Ok();  // nothing declared
      } else if (tok[0] != '.') {
        return Malformed("declaration without a type");
      }
      tok = lex_.Next();
    }
    // Texture and surface references are not memory the program can copy.
    if (type->kind == ValueKind::kHandle) record = false;

    for (;;) {
      Declarator d;
      FERRY_RETURN_IF_ERROR(ParseDeclarator(&d));
      if (record) FERRY_RETURN_IF_ERROR(Record(d, *type, vector));
      tok = lex_.Next();
      if (tok == ";") return Status::Ok();
      if (tok != ",") return Malformed("unterminated declaration");
    }
  }

  Status SkipParenthesised() {
    if (lex_.Next() != "(") return Malformed(".attribute without '('");
    for (int depth = 1; depth > 0;) {
      const std::string_view tok = lex_.Next();
      if (tok.empty()) return Malformed("unterminated .attribute");
      if (tok == "(") ++depth;
      if (tok == ")") --depth;
    }
    return Status::Ok();
  }

  // `name[dims] [= init]`, stopping before the `,` or `;` that follows.
  Status ParseDeclarator(Declarator* d) {
    d->name = lex_.Next();
    if (!IsIdentifier(d->name)) return Malformed("bad variable name");
    while (lex_.Peek() == "[") {
      lex_.Next();
      std::string_view tok = lex_.Next();
      if (tok == "]") {
        d->dims.push_back(std::nullopt);
        continue;
      }
      const auto bound = ParseUnsigned(tok);
      if (!bound || lex_.Next() != "]") return Malformed("bad array bound");
      d->dims.push_back(*bound);
    }
    if (lex_.Peek() != "=") return Status::Ok();
    lex_.Next();
    d->has_init = true;
    int nesting = 0;  // braces and parentheses inside the initialiser
    for (;;) {
      const std::string_view tok = lex_.Peek();
      if (tok.empty()) return Malformed("unterminated initialiser");
      if (nesting == 0 && (tok == "," || tok == ";")) return Status::Ok();
      if (tok == "{" || tok == "(") ++nesting;
      if ((tok == "}" || tok == ")") && --nesting < 0) {
        return Malformed("unbalanced initialiser");
      }
      d->init.push_back(lex_.Next());
    }
  }

  Status Record(const Declarator& d, const TypeInfo& type, uint64_t vector) {
    // Flatten the initialiser: nested braces only group elements.
    std::vector<std::vector<std::string_view>> elements;
    if (d.has_init) {
      elements.emplace_back();
      for (std::string_view tok : d.init) {
        if (tok == "{" || tok == "}") continue;
        if (tok == ",") {
          elements.emplace_back();
        } else {
          elements.back().push_back(tok);
        }
      }
      // `{1, 2, }` and `{}` leave an empty last element.
      if (elements.back().empty()) elements.pop_back();
    }

    uint64_t known = 1;  // product of the sized bounds
    bool unsized = false;
    for (const auto& dim : d.dims) {
      if (!dim) {
        unsized = true;
      } else if (!CheckedMul(known, *dim, &known)) {
        return Malformed("variable too large");
      }
    }
    uint64_t units = known;  // scalars of `type` across all vector lanes
    if (!CheckedMul(units, vector, &units)) {
      return Malformed("variable too large");
    }
    if (unsized) {
      // `x[] = {...}`: the initialiser decides the outer bound.
      if (units == 0) return Status::Ok();
      const uint64_t outer = (elements.size() + units - 1) / units;
      if (!CheckedMul(units, outer, &units)) {
        return Malformed("variable too large");
      }
    }
    uint64_t size = 0;
    if (!CheckedMul(units, type.size, &size) || size > kMaxVariableBytes) {
      return Malformed("variable too large");
    }
    if (!global_names_.insert(std::string(d.name)).second) return Status::Ok();

    GlobalLayout global;
    global.name = std::string(d.name);
    global.size = size;
    if (!elements.empty() && elements.size() <= units && size <= kMaxInitialBytes) {
      global.initial.assign(size, 0);
      for (size_t i = 0; i < elements.size(); ++i) {
        const auto bits = ElementBits(elements[i], type);
        if (!bits) {  // not all literals: leave the bytes to the loader
          global.initial.clear();
          break;
        }
        for (uint32_t b = 0; b < type.size; ++b) {
          global.initial[i * type.size + b] = static_cast<uint8_t>(*bits >> (8 * b));
        }
      }
    }
    layout_.globals.push_back(std::move(global));
    return Status::Ok();
  }

  Lexer lex_;
  ImageLayout layout_;
  std::unordered_set<std::string> kernel_names_;
  std::unordered_set<std::string> global_names_;
};

}  // namespace

bool IsPtxTextByte(uint8_t c) { return c >= 0x20 || IsSpace(static_cast<char>(c)); }

bool LooksLikePtx(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return IsPtxTextByte(c); }) &&
         (text.find(".version") != std::string_view::npos ||
          text.find(".target") != std::string_view::npos);
}

Status ParsePtx(std::string_view text, ImageLayout* out) { return PtxParser(text).Parse(out); }

void ScanPtxLinkSymbols(std::string_view text, LinkSymbols* out) {
  Lexer lex(text);
  enum class Linkage { kNone, kVisible, kWeak, kExtern };
  Linkage linkage = Linkage::kNone;
  int depth = 0;   // braces: bodies and initialisers
  int parens = 0;  // parameter lists
  // The name after `.func`/`.entry` (past a return-parameter list and
  // attributes) or after `.global`/`.const` (past alignment and type).
  auto name_after = [&lex](bool skip_lists) {
    for (std::string_view tok = lex.Next(); !tok.empty(); tok = lex.Next()) {
      if (skip_lists && tok == "(") {
        for (int open = 1; open > 0;) {
          const std::string_view t = lex.Next();
          if (t.empty()) return std::string_view();
          open += t == "(" ? 1 : t == ")" ? -1 : 0;
        }
      } else if (tok == ";" || tok == "{") {
        return std::string_view();
      } else if (tok[0] != '.' && IsIdentifier(tok)) {
        return tok;
      }
    }
    return std::string_view();
  };
  auto record = [&](std::string_view name) {
    if (name.empty()) return;
    switch (linkage) {
      case Linkage::kVisible:
        out->defined.emplace_back(name);
        break;
      case Linkage::kWeak:
        out->weak.emplace_back(name);
        break;
      case Linkage::kExtern:
        out->referenced.emplace_back(name);
        break;
      case Linkage::kNone:  // local to this module
        break;
    }
    linkage = Linkage::kNone;
  };
  for (std::string_view tok = lex.Next(); !tok.empty(); tok = lex.Next()) {
    if (tok == "{") {
      ++depth;
    } else if (tok == "}") {
      depth = std::max(depth - 1, 0);
    } else if (depth > 0) {
      continue;
    } else if (tok == "(") {
      ++parens;
    } else if (tok == ")") {
      parens = std::max(parens - 1, 0);
    } else if (parens > 0) {
      continue;
    } else if (tok == ";") {
      linkage = Linkage::kNone;
    } else if (tok == ".visible") {
      linkage = Linkage::kVisible;
    } else if (tok == ".weak" || tok == ".common") {
      linkage = Linkage::kWeak;
    } else if (tok == ".extern") {
      linkage = Linkage::kExtern;
    } else if (tok == ".func" || tok == ".entry") {
      record(name_after(/*skip_lists=*/true));
    } else if (tok == ".global" || tok == ".const") {
      // `.extern .shared` (dynamic shared memory) is no reference to resolve.
      record(name_after(/*skip_lists=*/false));
    }
  }
}

}  // namespace ferry::image::internal
