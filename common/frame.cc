#include "common/frame.h"

#include <capnp/schema.h>
#include <kj/exception.h>

#include <cstring>
#include <string>
#include <vector>

namespace ferry {
namespace {

void PutU16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
void PutU32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
void PutU64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint16_t GetU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
uint32_t GetU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t GetU64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

static_assert(std::endian::native == std::endian::little, "ferry's wire format is little-endian");

}  // namespace

capnp::ReaderOptions PeerReaderOptions() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = kMaxMessageBytes / sizeof(capnp::word) * 2;
  options.nestingLimit = 16;
  return options;
}

Status ReadFrameHead(Transport& transport, wire::FrameKind* kind, kj::Array<capnp::word>* words,
                     uint64_t* bulk_bytes, const FrameLimits& limits) {
  uint8_t header[kFrameHeaderBytes];
  FERRY_RETURN_IF_ERROR(transport.ReadExact(header, sizeof(header)));
  const uint32_t magic = GetU32(header);
  const uint16_t raw_kind = GetU16(header + 4);
  const uint32_t message_bytes = GetU32(header + 8);
  const uint64_t bulk = GetU64(header + 16);
  if (magic != wire::FRAME_MAGIC) {
    return Status::Malformed("bad frame magic from " + transport.PeerName());
  }
  // Every enumerant of FrameKind except `invalid` (0) is a kind; the bound
  // comes from the schema, so a new kind needs no change here.
  static const uint16_t kKindCount =
      static_cast<uint16_t>(capnp::Schema::from<wire::FrameKind>().getEnumerants().size());
  if (raw_kind == 0 || raw_kind >= kKindCount) {
    return Status::Malformed("unknown frame kind " + std::to_string(raw_kind) + " from " +
                             transport.PeerName());
  }
  const std::string where =
      limits.context != nullptr ? std::string(" ") + limits.context : std::string();
  if (message_bytes == 0 || message_bytes > limits.max_message_bytes || message_bytes % 8 != 0) {
    return Status::Malformed("bad message size " + std::to_string(message_bytes) + " (at most " +
                             std::to_string(limits.max_message_bytes) + ")" + where + " from " +
                             transport.PeerName());
  }
  if (bulk > limits.max_bulk_bytes) {
    return Status::Malformed("a frame announced a bulk payload of " + std::to_string(bulk) +
                             " bytes; at most " + std::to_string(limits.max_bulk_bytes) +
                             " are accepted" + where + ", from " + transport.PeerName());
  }
  *kind = static_cast<wire::FrameKind>(raw_kind);
  *words = kj::heapArray<capnp::word>(message_bytes / sizeof(capnp::word));
  FERRY_RETURN_IF_ERROR(transport.ReadExact(words->begin(), message_bytes));
  *bulk_bytes = bulk;
  return Status::Ok();
}

Status ReadFrame(Transport& transport, Frame* frame, const FrameLimits& limits) {
  uint64_t bulk_bytes = 0;
  FERRY_RETURN_IF_ERROR(ReadFrameHead(transport, &frame->kind, &frame->words, &bulk_bytes, limits));
  return ReadFrameBulk(transport, bulk_bytes, frame);
}

Status ReadFrameBulk(Transport& transport, uint64_t bulk_bytes, Frame* frame) {
  frame->bulk.size = bulk_bytes;
  frame->bulk.data.reset();
  if (bulk_bytes > 0) {
    // Uninitialised on purpose: pages are committed only as bytes arrive.
    frame->bulk.data = std::shared_ptr<uint8_t[]>(new (std::nothrow) uint8_t[bulk_bytes]);
    if (!frame->bulk.data) {
      return Status::OutOfMemory("cannot buffer a bulk payload of " + std::to_string(bulk_bytes) +
                                 " bytes");
    }
    FERRY_RETURN_IF_ERROR(transport.ReadExact(frame->bulk.data.get(), bulk_bytes));
  }
  return Status::Ok();
}

Status WriteFrame(Transport& transport, wire::FrameKind kind, capnp::MessageBuilder& message,
                  std::span<const ConstBuffer> bulk) {
  auto segments = message.getSegmentsForOutput();
  // Stream framing: u32 (segment count - 1), u32 size of each segment in
  // words, padded to a whole word; then the segments.
  const size_t table_words = (segments.size() + 2) / 2;
  std::vector<uint32_t> table(table_words * 2, 0);
  table[0] = static_cast<uint32_t>(segments.size() - 1);
  size_t message_bytes = table_words * 8;
  for (size_t i = 0; i < segments.size(); ++i) {
    table[i + 1] = static_cast<uint32_t>(segments[i].size());
    message_bytes += segments[i].size() * sizeof(capnp::word);
  }
  uint64_t bulk_bytes = 0;
  for (const ConstBuffer& b : bulk) bulk_bytes += b.size;
  if (message_bytes > kMaxMessageBytes || bulk_bytes > kMaxBulkBytes) {
    return Status::InvalidArgument("frame too large: " + std::to_string(message_bytes) +
                                   " message bytes, " + std::to_string(bulk_bytes) + " bulk bytes");
  }

  uint8_t header[kFrameHeaderBytes] = {};
  PutU32(header, wire::FRAME_MAGIC);
  PutU16(header + 4, static_cast<uint16_t>(kind));
  PutU16(header + 6, 0);
  PutU32(header + 8, static_cast<uint32_t>(message_bytes));
  PutU32(header + 12, 0);
  PutU64(header + 16, bulk_bytes);

  constexpr size_t kInline = 16;
  ConstBuffer inline_buffers[kInline];
  std::vector<ConstBuffer> heap_buffers;
  const size_t count = 2 + segments.size() + bulk.size();
  ConstBuffer* buffers = inline_buffers;
  if (count > kInline) {
    heap_buffers.resize(count);
    buffers = heap_buffers.data();
  }
  size_t n = 0;
  buffers[n++] = {header, sizeof(header)};
  buffers[n++] = {table.data(), table.size() * sizeof(uint32_t)};
  for (auto segment : segments) {
    buffers[n++] = {segment.begin(), segment.size() * sizeof(capnp::word)};
  }
  for (const ConstBuffer& b : bulk) buffers[n++] = b;
  return transport.Write(std::span<const ConstBuffer>(buffers, n));
}

void StatusToWire(const Status& status, wire::Status::Builder out) {
  out.setCode(static_cast<uint8_t>(status.code()));
  out.setCudaResult(status.cuda_result());
  if (!status.ok()) out.setMessage(status.message());
}

Status StatusFromWire(wire::Status::Reader in) {
  return Status::FromWire(in.getCode(), in.getCudaResult(), std::string(in.getMessage().cStr()));
}

}  // namespace ferry
