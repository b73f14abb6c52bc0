#include "test/support/raw_client.h"

#include <cstring>

namespace ferry::test {

std::vector<uint8_t> FrameHeader(wire::FrameKind kind, uint32_t message_bytes,
                                 uint64_t bulk_bytes) {
  std::vector<uint8_t> header(kFrameHeaderBytes, 0);
  const uint32_t magic = wire::FRAME_MAGIC;
  const uint16_t kind_value = static_cast<uint16_t>(kind);
  std::memcpy(header.data(), &magic, 4);
  std::memcpy(header.data() + 4, &kind_value, 2);
  std::memcpy(header.data() + 8, &message_bytes, 4);
  std::memcpy(header.data() + 16, &bulk_bytes, 8);
  return header;
}

std::vector<uint8_t> HelloFrame(uint32_t version, int role) {
  capnp::MallocMessageBuilder message;
  auto hello = message.initRoot<wire::Hello>();
  hello.setProtocolVersion(version);
  hello.setRole(static_cast<wire::Hello::Role>(role));
  const kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  const auto body = words.asBytes();
  std::vector<uint8_t> frame =
      FrameHeader(wire::FrameKind::HELLO, static_cast<uint32_t>(body.size()));
  // Appended with resize + memcpy: GCC 12 warns (-Warray-bounds, wrongly)
  // about vector::insert here.
  frame.resize(kFrameHeaderBytes + body.size());
  std::memcpy(frame.data() + kFrameHeaderBytes, body.begin(), body.size());
  return frame;
}

Status WriteBytes(Transport& transport, const std::vector<uint8_t>& bytes) {
  const ConstBuffer buffer{bytes.data(), bytes.size()};
  return transport.Write(std::span<const ConstBuffer>(&buffer, 1));
}

void BuildMemsetD8(wire::Call::Builder call, uint64_t ctx, uint64_t stream, uint64_t dst,
                   uint8_t value, uint64_t bytes) {
  auto a = OnStream(call.initMemset(), stream, ctx);
  a.setDst(dst);
  a.setValue(value);
  a.setElementBytes(1);
  a.setWidth(bytes);
  a.setHeight(1);
}

void BuildMemcpyHtoD(wire::Call::Builder call, uint64_t ctx, uint64_t stream, uint64_t dst,
                     uint64_t bytes) {
  auto a = OnStream(call.initMemcpyHtoD(), stream, ctx);
  a.setDst(dst);
  a.setBytes(bytes);
}

void BuildMemcpyDtoH(wire::Call::Builder call, uint64_t ctx, uint64_t stream, uint64_t src,
                     uint64_t bytes) {
  auto a = OnStream(call.initMemcpyDtoH(), stream, ctx);
  a.setSrc(src);
  a.setBytes(bytes);
}

}  // namespace ferry::test
