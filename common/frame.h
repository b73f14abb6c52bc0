// Frames: the unit on the wire (see the prose in schema/ferry.capnp).
//
//   [24-byte header][Cap'n Proto message, stream framing][bulk bytes]
//
// ReadFrame enforces the size limits below and never trusts a length beyond
// them; a frame that breaks them is Malformed and the caller closes the
// connection. Thread-safety: as Transport (one reader, one writer at a time).
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>

#include <cstdint>
#include <memory>
#include <span>

#include "common/status.h"
#include "common/transport.h"
#include "schema/ferry.capnp.h"

namespace ferry {

inline constexpr size_t kFrameHeaderBytes = 24;
inline constexpr uint32_t kMaxMessageBytes = 64u << 20;
inline constexpr uint64_t kMaxBulkBytes = 16ull << 30;

// What a reader accepts in one frame; anything larger is Malformed before a
// byte of it is allocated.
struct FrameLimits {
  uint32_t max_message_bytes = kMaxMessageBytes;
  uint64_t max_bulk_bytes = kMaxBulkBytes;
  // Names the limits in the refusal ("before the handshake").
  const char* context = nullptr;
};
// Frames before the handshake completes (the Hello, a control request): a
// small message and no bulk at all, so that a peer nobody knows yet cannot
// make ferryd buffer what it merely announces.
inline constexpr FrameLimits kHandshakeFrameLimits{64u << 10, 0, "before the handshake"};
// ferryctl's requests on a control connection: small, no bulk.
inline constexpr FrameLimits kControlFrameLimits{1u << 20, 0, "on a control connection"};

// Bytes received as a frame's bulk payload. Shared so that work queued on a
// stream can keep its slice alive after the frame is gone.
struct BulkBuffer {
  std::shared_ptr<uint8_t[]> data;
  uint64_t size = 0;
};

struct Frame {
  wire::FrameKind kind = wire::FrameKind::INVALID;
  kj::Array<capnp::word> words;  // the message, stream framing included
  BulkBuffer bulk;
};

Status ReadFrame(Transport& transport, Frame* frame, const FrameLimits& limits = {});

// The first part of ReadFrame: the header and the message, validated, without
// the bulk payload — for a reader that places the bulk bytes itself (straight
// into their final buffer). `*bulk_bytes` of payload follow on the transport.
Status ReadFrameHead(Transport& transport, wire::FrameKind* kind, kj::Array<capnp::word>* words,
                     uint64_t* bulk_bytes, const FrameLimits& limits = {});

// The second part of ReadFrame: reads the `bulk_bytes` of payload that follow
// a head into `frame->bulk` (frame->kind and frame->words are the caller's).
Status ReadFrameBulk(Transport& transport, uint64_t bulk_bytes, Frame* frame);

// Sends `message` and the bulk buffers as one frame (one gathered write).
Status WriteFrame(Transport& transport, wire::FrameKind kind, capnp::MessageBuilder& message,
                  std::span<const ConstBuffer> bulk = {});

// Reader options for messages from a peer: bounded traversal and nesting.
capnp::ReaderOptions PeerReaderOptions();

// Status <-> wire::Status.
void StatusToWire(const Status& status, wire::Status::Builder out);
Status StatusFromWire(wire::Status::Reader in);

}  // namespace ferry
