// The byte language of the "session" fuzz target: how a fuzz input becomes
// the frames a client sends to a Session (DecodeFrame), and the inverse for
// seeds (Encoder: a Call built with the ordinary API becomes the bytes that
// decode back to it).
//
// The language follows the schema, so every call of wire::Call — present
// and future — is reachable with no code per call:
//   frame   := byte%8 ==0: gateOpen(u64) | ==1: raw(kind u16, bulk u16, n byte, n bytes)
//            | else: callBatch(count byte%4+1, call...)
//   call    := member u16 (index among Call's union members), struct fields,
//              wantsReply bool, bulk (byte%3: 0 none | 1 u16 length | 2 the
//              call's last 64-bit value if <= 4 MiB), then the bulk bytes
//   struct  := each non-union field in schema order, then a union member
//              (byte index) and its value
//   u64     := byte&7: 2 a value seen in a reply (an address; byte: how far
//              back) plus u16 | 3, 4 a 64-bit value an earlier call used (a
//              handle the client chose; byte: how far back) | 5 u16 | 6 eight
//              raw bytes | else a small constant (handles, sizes)
//   other   := raw little-endian bytes; text/data a length byte then bytes;
//              a list a count byte (%5) then elements
// Seq numbers are the harness's (1, 2, ...). Header only.
//
// Thread-safety: a decoder and an encoder each belong to one thread.
#pragma once

#include <capnp/dynamic.h>
#include <capnp/message.h>
#include <capnp/schema.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "schema/ferry.capnp.h"
#include "test/fuzz/fuzz_input.h"

namespace ferry::fuzz {

inline constexpr uint64_t kSmallValues[] = {0,   1,   2,   3,   4,    8,     16,      64,   100,
                                            101, 102, 256, 512, 4096, 65536, 1 << 20, ~0ull};
inline constexpr int kMaxDepth = 6;
inline constexpr unsigned kMaxListLength = 4;
inline constexpr uint64_t kMaxDerivedBulk = 4 << 20;

// For seeds: a u64 field set to SeenValue(k, offset) encodes as "the k-th
// most recent address seen in a reply, plus offset".
inline constexpr uint64_t kSeenMarker = 0xF0F0ull << 48;
inline constexpr uint64_t SeenValue(uint8_t back, uint16_t offset) {
  return kSeenMarker | (uint64_t{back} << 16) | offset;
}

inline capnp::StructSchema CallSchema() { return capnp::Schema::from<wire::Call>(); }

// Decodes calls into builders.
class CallDecoder {
 public:
  // `seen`: addresses from replies, oldest first; `used`: the 64-bit values
  // of earlier calls (handles the client chose), kept up to date here.
  CallDecoder(FuzzInput& in, const std::vector<uint64_t>& seen, std::vector<uint64_t>& used)
      : in_(in), seen_(seen), used_(used) {}

  // Fills `call` (all but seq); sets `*bulk` to the call's bulk bytes.
  void Call(wire::Call::Builder call, std::vector<uint8_t>* bulk) {
    capnp::DynamicStruct::Builder dynamic = call;
    const auto members = CallSchema().getUnionFields();
    Field(dynamic, members[in_.Below(members.size())], 0);
    call.setWantsReply(in_.Bool());
    uint64_t bytes = 0;
    switch (in_.Byte() % 3) {
      case 1:
        bytes = in_.Integral<uint16_t>();
        break;
      case 2:
        bytes = last_u64_ <= kMaxDerivedBulk ? last_u64_ : 0;
        break;
      default:
        break;
    }
    auto taken = in_.Bytes(bytes);
    bulk->assign(taken.begin(), taken.end());
    bulk->resize(bytes);  // zeros where the input ended
    call.setBulkBytes(bytes);
  }

  uint64_t U64() {
    uint64_t v = 0;
    switch (in_.Byte() & 7) {
      case 2: {
        const uint8_t back = in_.Byte();
        const uint16_t offset = in_.Integral<uint16_t>();
        v = seen_.empty() ? offset : seen_[seen_.size() - 1 - back % seen_.size()] + offset;
        break;
      }
      case 3:
      case 4: {
        const uint8_t back = in_.Byte();
        v = used_.empty() ? back : used_[used_.size() - 1 - back % used_.size()];
        break;
      }
      case 5:
        v = in_.Integral<uint16_t>();
        break;
      case 6:
        v = in_.Integral<uint64_t>();
        break;
      default:
        v = kSmallValues[in_.Below(std::size(kSmallValues))];
        break;
    }
    last_u64_ = v;
    if (used_.size() == kUsedLimit) used_.erase(used_.begin());
    used_.push_back(v);
    return v;
  }

 private:
  void Struct(capnp::DynamicStruct::Builder s, int depth) {
    if (depth > kMaxDepth) return;
    const auto schema = s.getSchema();
    for (auto field : schema.getNonUnionFields()) Field(s, field, depth);
    const auto members = schema.getUnionFields();
    if (members.size() > 0) Field(s, members[in_.Byte() % members.size()], depth);
  }

  void Field(capnp::DynamicStruct::Builder s, capnp::StructSchema::Field field, int depth) {
    if (field.getProto().isGroup()) {
      Struct(s.init(field).as<capnp::DynamicStruct>(), depth + 1);
      return;
    }
    const capnp::Type type = field.getType();
    switch (type.which()) {
      case capnp::schema::Type::VOID:
        s.set(field, capnp::VOID);
        break;
      case capnp::schema::Type::STRUCT:
        Struct(s.init(field).as<capnp::DynamicStruct>(), depth + 1);
        break;
      case capnp::schema::Type::LIST: {
        const unsigned n = in_.Byte() % (kMaxListLength + 1);
        auto list = s.init(field, n).as<capnp::DynamicList>();
        const capnp::Type element = type.asList().getElementType();
        for (unsigned i = 0; i < n; ++i) {
          if (element.isStruct()) {
            Struct(list[i].as<capnp::DynamicStruct>(), depth + 1);
          } else if (element.isText() || element.isData() || element.isList() ||
                     element.isAnyPointer() || element.isInterface()) {
            // Lists of pointers: left empty.
          } else {
            list.set(i, Scalar(element));
          }
        }
        break;
      }
      case capnp::schema::Type::TEXT: {
        auto taken = in_.Bytes(in_.Byte() % 64);
        const std::string text(taken.begin(), taken.end());
        s.set(field, capnp::Text::Reader(text.c_str(), text.size()));
        break;
      }
      case capnp::schema::Type::DATA: {
        auto taken = in_.Bytes(in_.Byte());
        s.set(field, capnp::Data::Reader(taken.data(), taken.size()));
        break;
      }
      case capnp::schema::Type::ANY_POINTER:
      case capnp::schema::Type::INTERFACE:
        break;
      default:
        s.set(field, Scalar(type));
        break;
    }
  }

  capnp::DynamicValue::Reader Scalar(const capnp::Type& type) {
    switch (type.which()) {
      case capnp::schema::Type::BOOL:
        return in_.Bool();
      case capnp::schema::Type::INT8:
        return in_.Integral<int8_t>();
      case capnp::schema::Type::INT16:
        return in_.Integral<int16_t>();
      case capnp::schema::Type::INT32:
        return in_.Integral<int32_t>();
      case capnp::schema::Type::INT64:
        return static_cast<int64_t>(U64());
      case capnp::schema::Type::UINT8:
        return in_.Integral<uint8_t>();
      case capnp::schema::Type::UINT16:
        return in_.Integral<uint16_t>();
      case capnp::schema::Type::UINT32:
        return in_.Integral<uint32_t>();
      case capnp::schema::Type::UINT64:
        return U64();
      case capnp::schema::Type::FLOAT32: {
        const uint32_t bits = in_.Integral<uint32_t>();
        float f;
        std::memcpy(&f, &bits, sizeof(f));
        return f;
      }
      case capnp::schema::Type::FLOAT64: {
        const uint64_t bits = in_.Integral<uint64_t>();
        double d;
        std::memcpy(&d, &bits, sizeof(d));
        return d;
      }
      case capnp::schema::Type::ENUM:
        return capnp::DynamicEnum(type.asEnum(), in_.Integral<uint16_t>());
      default:
        return capnp::VOID;
    }
  }

  FuzzInput& in_;
  static constexpr size_t kUsedLimit = 64;
  const std::vector<uint64_t>& seen_;
  std::vector<uint64_t>& used_;
  uint64_t last_u64_ = 0;
};

// The inverse, for seeds: appends to `out` the bytes that CallDecoder turns
// into `call` (lists longer than kMaxListLength and pointer lists are not
// expressible; seeds do not use them).
class Encoder {
 public:
  std::vector<uint8_t> bytes;

  void Byte(uint8_t b) { bytes.push_back(b); }
  template <typename T>
  void Raw(T v) {
    for (size_t i = 0; i < sizeof(T); ++i) Byte(static_cast<uint8_t>(uint64_t(v) >> (8 * i)));
  }
  // What FuzzInput::Below(bound) reads back as `value`.
  void Below(uint64_t value, uint64_t bound) {
    std::vector<uint8_t> digits;
    for (uint64_t span = bound - 1; span != 0; span >>= 8) {
      digits.push_back(static_cast<uint8_t>(value));
      value >>= 8;
    }
    bytes.insert(bytes.end(), digits.rbegin(), digits.rend());
  }
  void U64(uint64_t v) {
    if ((v >> 48) == (kSeenMarker >> 48)) {
      Byte(2);
      Byte(static_cast<uint8_t>(v >> 16));
      Raw<uint16_t>(static_cast<uint16_t>(v));
    } else {
      Byte(6);
      Raw<uint64_t>(v);
    }
  }

  // A callBatch frame of `calls`, each with its bulk bytes.
  void Batch(const std::vector<std::pair<wire::Call::Reader, std::vector<uint8_t>>>& calls) {
    Byte(2);
    Byte(static_cast<uint8_t>(calls.size() - 1));
    for (const auto& [call, bulk] : calls) Call(call, bulk);
  }
  void GateOpen(uint64_t seq) {
    Byte(0);
    U64(seq);
  }

 private:
  // Where `field` is in `members` (the decoder picks members by position).
  static unsigned PositionIn(capnp::StructSchema::FieldSubset members,
                             capnp::StructSchema::Field field) {
    for (unsigned i = 0; i < members.size(); ++i) {
      if (members[i] == field) return i;
    }
    KJ_FAIL_ASSERT("not a member of the union");
  }

  void Call(wire::Call::Reader call, const std::vector<uint8_t>& bulk) {
    capnp::DynamicStruct::Reader dynamic = call;
    const auto members = CallSchema().getUnionFields();
    const auto which = KJ_ASSERT_NONNULL(dynamic.which());
    Below(PositionIn(members, which), members.size());
    Field(dynamic, which, 0);
    Byte(call.getWantsReply() ? 1 : 0);
    Byte(1);
    Raw<uint16_t>(static_cast<uint16_t>(bulk.size()));
    bytes.insert(bytes.end(), bulk.begin(), bulk.end());
  }

  void Struct(capnp::DynamicStruct::Reader s, int depth) {
    if (depth > kMaxDepth) return;
    const auto schema = s.getSchema();
    for (auto field : schema.getNonUnionFields()) Field(s, field, depth);
    if (schema.getUnionFields().size() > 0) {
      const auto which = KJ_ASSERT_NONNULL(s.which());
      Byte(static_cast<uint8_t>(PositionIn(schema.getUnionFields(), which)));
      Field(s, which, depth);
    }
  }

  void Field(capnp::DynamicStruct::Reader s, capnp::StructSchema::Field field, int depth) {
    if (field.getProto().isGroup()) {
      Struct(s.get(field).as<capnp::DynamicStruct>(), depth + 1);
      return;
    }
    const capnp::Type type = field.getType();
    const auto value = s.get(field);
    switch (type.which()) {
      case capnp::schema::Type::VOID:
        break;
      case capnp::schema::Type::STRUCT:
        Struct(value.as<capnp::DynamicStruct>(), depth + 1);
        break;
      case capnp::schema::Type::LIST: {
        auto list = value.as<capnp::DynamicList>();
        Byte(static_cast<uint8_t>(list.size()));
        const capnp::Type element = type.asList().getElementType();
        for (auto item : list) {
          if (element.isStruct()) {
            Struct(item.as<capnp::DynamicStruct>(), depth + 1);
          } else if (!(element.isText() || element.isData() || element.isList() ||
                       element.isAnyPointer() || element.isInterface())) {
            Scalar(element, item);
          }
        }
        break;
      }
      case capnp::schema::Type::TEXT: {
        auto text = value.as<capnp::Text>();
        Byte(static_cast<uint8_t>(text.size()));
        bytes.insert(bytes.end(), text.begin(), text.end());
        break;
      }
      case capnp::schema::Type::DATA: {
        auto data = value.as<capnp::Data>();
        Byte(static_cast<uint8_t>(data.size()));
        bytes.insert(bytes.end(), data.begin(), data.end());
        break;
      }
      case capnp::schema::Type::ANY_POINTER:
      case capnp::schema::Type::INTERFACE:
        break;
      default:
        Scalar(type, value);
        break;
    }
  }

  void Scalar(const capnp::Type& type, capnp::DynamicValue::Reader value) {
    switch (type.which()) {
      case capnp::schema::Type::BOOL:
        Byte(value.as<bool>() ? 1 : 0);
        break;
      case capnp::schema::Type::INT8:
        Raw(value.as<int8_t>());
        break;
      case capnp::schema::Type::INT16:
        Raw(value.as<int16_t>());
        break;
      case capnp::schema::Type::INT32:
        Raw(value.as<int32_t>());
        break;
      case capnp::schema::Type::INT64:
        U64(static_cast<uint64_t>(value.as<int64_t>()));
        break;
      case capnp::schema::Type::UINT8:
        Raw(value.as<uint8_t>());
        break;
      case capnp::schema::Type::UINT16:
        Raw(value.as<uint16_t>());
        break;
      case capnp::schema::Type::UINT32:
        Raw(value.as<uint32_t>());
        break;
      case capnp::schema::Type::UINT64:
        U64(value.as<uint64_t>());
        break;
      case capnp::schema::Type::FLOAT32: {
        const float f = value.as<float>();
        uint32_t bits;
        std::memcpy(&bits, &f, sizeof(bits));
        Raw(bits);
        break;
      }
      case capnp::schema::Type::FLOAT64: {
        const double d = value.as<double>();
        uint64_t bits;
        std::memcpy(&bits, &d, sizeof(bits));
        Raw(bits);
        break;
      }
      case capnp::schema::Type::ENUM:
        Raw(value.as<capnp::DynamicEnum>().getRaw());
        break;
      default:
        break;
    }
  }
};

}  // namespace ferry::fuzz
