// Fuzz target "frame": bytes from a peer, read the way ferryd reads them —
// the 24-byte frame header (common/frame.cc), the Cap'n Proto message under
// PeerReaderOptions, and the bulk payload: a Hello first (Server::
// ServeConnection), then callBatch and gateOpen frames split into their Call
// messages as Session::ExecuteBatch splits them (each call's bulkBytes
// claimed from the frame's payload).
//
// Checks: nothing crashes or trips ASan/UBSan, every malformed message is a
// kj::Exception the reader catches (the server's own handling), and a frame
// that ReadFrame accepts honours its own header (message size a multiple of
// 8 within kMaxMessageBytes, bulk as claimed).
//
// One shortcut: a bulk payload longer than what is left of the input is not
// allocated; the real transport would end the same way (Disconnected) after
// ReadFrameBulk reserved the claimed size (up to kMaxBulkBytes, 16 GiB).
#include <capnp/any.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "common/frame.h"
#include "schema/ferry.capnp.h"
#include "test/fuzz/memory_transport.h"

namespace ferry::fuzz {
namespace {

void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "fuzz_frame: broken invariant: %s\n", what);
    std::abort();
  }
}

// Reads every pointer of the message under the peer limits (a full
// traversal, as any handler that reads all fields would).
void Traverse(capnp::MessageReader& reader) {
  (void)reader.getRoot<capnp::AnyPointer>().targetSize();
}

void ReadHello(kj::ArrayPtr<const capnp::word> words) {
  capnp::FlatArrayMessageReader reader(words, PeerReaderOptions());
  auto hello = reader.getRoot<wire::Hello>();
  (void)hello.getProtocolVersion();
  (void)hello.getRole();
  (void)hello.getPid();
  (void)hello.getHost().size();
  (void)hello.getProgram().size();
  (void)hello.getPool().size();
  (void)hello.getGpus();
  (void)hello.getWaitMs();
  Traverse(reader);
}

// As Session::ExecuteBatch: the calls back to back, each claiming its bulk
// bytes from the frame's payload.
void ReadCallBatch(kj::ArrayPtr<const capnp::word> words, uint64_t bulk_bytes) {
  uint64_t claimed = 0;
  for (kj::ArrayPtr<const capnp::word> rest = words; rest.size() > 0;) {
    capnp::FlatArrayMessageReader reader(rest, PeerReaderOptions());
    auto call = reader.getRoot<wire::Call>();
    (void)call.getSeq();
    (void)call.getWantsReply();
    (void)call.which();
    const uint64_t claim = call.getBulkBytes();
    if (claim > bulk_bytes - claimed) return;  // Malformed for the server
    claimed += claim;
    Traverse(reader);
    Require(reader.getEnd() > rest.begin() && reader.getEnd() <= rest.end(),
            "a message ends outside its frame");
    rest = kj::arrayPtr(reader.getEnd(), rest.end());
  }
}

void ReadGateOpen(kj::ArrayPtr<const capnp::word> words) {
  capnp::FlatArrayMessageReader reader(words, PeerReaderOptions());
  (void)reader.getRoot<wire::GateOpen>().getGate();
  Traverse(reader);
}

}  // namespace
}  // namespace ferry::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ferry;
  fuzz::MemoryTransport transport(std::span<const uint8_t>(data, size));
  bool first = true;
  for (;;) {
    wire::FrameKind kind = wire::FrameKind::INVALID;
    kj::Array<capnp::word> words;
    uint64_t bulk_bytes = 0;
    if (!ReadFrameHead(transport, &kind, &words, &bulk_bytes).ok()) break;
    fuzz::Require(words.size() > 0 && words.size() * sizeof(capnp::word) <= kMaxMessageBytes,
                  "ReadFrameHead accepted a message size outside its limits");
    fuzz::Require(bulk_bytes <= kMaxBulkBytes, "ReadFrameHead accepted an oversized bulk");
    if (bulk_bytes > transport.remaining()) break;  // see the file comment
    Frame frame;
    frame.kind = kind;
    frame.words = std::move(words);
    if (!ReadFrameBulk(transport, bulk_bytes, &frame).ok()) break;
    fuzz::Require(frame.bulk.size == bulk_bytes && (bulk_bytes == 0 || frame.bulk.data),
                  "ReadFrameBulk returned another size than the header's");
    try {
      if (first) {
        if (kind != wire::FrameKind::HELLO) break;  // the server drops the connection
        fuzz::ReadHello(frame.words);
      } else if (kind == wire::FrameKind::CALL_BATCH) {
        fuzz::ReadCallBatch(frame.words, frame.bulk.size);
      } else if (kind == wire::FrameKind::GATE_OPEN) {
        fuzz::ReadGateOpen(frame.words);
      } else {
        break;  // the session closes on any other kind
      }
    } catch (const kj::Exception&) {
      break;  // Malformed: the server closes the connection
    }
    first = false;
  }
  return 0;
}
