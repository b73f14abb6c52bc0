// Fuzz target "shm_ring": ferryd's side of a shared-memory connection
// (common/shm_transport.cc) against a hostile client that writes whatever it
// likes into the region: ring bytes, its published head (to_server) and
// tail (to_client), and the header fields it can reach. The input is a
// sequence of operations, each a byte then its arguments; between them
// ferryd reads and writes frames' worth of bytes.
//
// The harness keeps a model of ferryd's private positions and checks the
// transport against it after every operation:
//  * a read when the client's head claims more than a ring's bytes, or a
//    write when its tail does, fails as Malformed and moves nothing;
//  * otherwise a read returns exactly the ring bytes at ferryd's position
//    (wrapping at the ring's end) and publishes the new tail; a write puts
//    its bytes at ferryd's position and publishes the new head;
//  * a read that would wait for bytes the client never sends returns
//    Disconnected once the client says it closed (the harness says so just
//    for that read, so nothing blocks), having consumed what was there.
// Nothing may crash, touch memory outside the region or trip ASan/UBSan.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "common/shm_transport.h"
#include "test/fuzz/fuzz_input.h"
#include "test/fuzz/shm_ring_ops.h"

namespace ferry::fuzz {
namespace {

using namespace shm_ring;

void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "fuzz_shm_ring: broken invariant: %s\n", what);
    std::abort();
  }
}

class Harness {
 public:
  bool Start() {
    if (!MakeShmTransportPair(&server_, &client_, kRing).ok()) return false;
    header_ = static_cast<ShmTransport*>(server_.get())->TEST_header();
    to_server_ = reinterpret_cast<uint8_t*>(header_) + shm_layout::kHeaderBytes;
    to_client_ = to_server_ + kRing;
    return true;
  }

  void Run(FuzzInput& in) {
    while (!in.empty()) {
      switch (static_cast<Op>(in.Byte() % kOpCount)) {
        case kClientWrites: {
          // A length, then a pattern of 1 to 16 bytes repeated over it, so
          // that short inputs still wrap the ring.
          const uint64_t n = in.Below(3 * kRing / 2);
          auto pattern = in.Bytes(in.Byte() % 16 + 1);
          for (uint64_t i = 0; i < n; ++i) {
            to_server_[client_cursor_++ & (kRing - 1)] =
                pattern.empty() ? 0 : pattern[i % pattern.size()];
          }
          break;
        }
        case kClientPublishes:
          header_->to_server.head.store(in.Bool() ? client_cursor_ : in.Integral<uint64_t>());
          break;
        case kClientSetsTail:
          header_->to_client.tail.store(in.Bool() ? out_head_ - in.Below(2 * kRing)
                                                  : in.Integral<uint64_t>());
          break;
        case kClientScribbles:
          Scribble(in);
          break;
        case kServerReads:
          ServerReads(in.Below(2 * kRing) + 1);
          break;
        case kServerWrites:
          ServerWrites(in);
          break;
        case kOpCount:
          break;
      }
    }
  }

 private:
  void Scribble(FuzzInput& in) {
    const uint32_t value = in.Integral<uint32_t>();
    switch (in.Below(7)) {
      case 0:
        header_->magic = value;
        break;
      case 1:
        header_->version = value;
        break;
      case 2:
        header_->ring_bytes = in.Integral<uint64_t>();
        break;
      case 3:
        header_->to_server.reader_sleeping.store(value);
        break;
      case 4:
        header_->to_client.writer_sleeping.store(value);
        break;
      case 5:
        header_->to_server.data_event.store(value);
        break;
      case 6:
        header_->to_client.space_event.store(value);
        break;
    }
  }

  void ServerReads(uint64_t n) {
    const uint64_t head = header_->to_server.head.load();
    const uint64_t available = head - in_tail_;
    std::vector<uint8_t> expected;
    for (uint64_t i = 0; i < std::min(n, available) && available <= kRing; ++i) {
      expected.push_back(to_server_[(in_tail_ + i) & (kRing - 1)]);
    }
    std::vector<uint8_t> got(n);
    const bool would_wait = available <= kRing && available < n;
    if (would_wait) header_->client_closed.store(1);
    const Status status = server_->ReadExact(got.data(), n);
    header_->client_closed.store(0);
    if (available > kRing) {
      Require(status.code() == StatusCode::kMalformed, "an impossible head was not refused");
      return;
    }
    if (would_wait) {
      Require(status.code() == StatusCode::kDisconnected, "a read past the bytes did not end");
    } else {
      Require(status.ok(), "a read of published bytes failed");
    }
    const uint64_t consumed = std::min(n, available);
    Require(consumed == 0 || std::memcmp(got.data(), expected.data(), consumed) == 0,
            "a read returned other bytes than the ring's");
    in_tail_ += consumed;
    Require(header_->to_server.tail.load() == in_tail_ || consumed == 0,
            "the published tail is not ferryd's position");
  }

  void ServerWrites(FuzzInput& in) {
    const uint64_t tail = header_->to_client.tail.load();
    const uint64_t used = out_head_ - tail;
    const size_t pieces = in.Below(3) + 1;
    std::vector<std::vector<uint8_t>> data(pieces);
    std::vector<ConstBuffer> buffers;
    uint64_t total = 0;
    // Never more than the space the client left: ferryd would wait for it.
    const uint64_t space = used <= kRing ? kRing - used : 2 * kRing;
    for (auto& piece : data) {
      piece.resize(std::min<uint64_t>(in.Below(kRing + 1), space - total));
      for (size_t i = 0; i < piece.size(); ++i)
        piece[i] = static_cast<uint8_t>(out_head_ + total + i);
      total += piece.size();
      buffers.push_back({piece.data(), piece.size()});
    }
    const Status status = server_->Write(buffers);
    if (used > kRing) {
      Require(total == 0 || status.code() == StatusCode::kMalformed,
              "an impossible tail was not refused");
      return;
    }
    Require(status.ok(), "a write into free space failed");
    for (uint64_t i = 0; i < total; ++i) {
      Require(to_client_[(out_head_ + i) & (kRing - 1)] == static_cast<uint8_t>(out_head_ + i),
              "a write put its bytes elsewhere");
    }
    out_head_ += total;
    Require(total == 0 || header_->to_client.head.load() == out_head_,
            "the published head is not ferryd's position");
  }

  std::unique_ptr<Transport> server_, client_;
  shm_layout::Header* header_ = nullptr;
  uint8_t* to_server_ = nullptr;
  uint8_t* to_client_ = nullptr;
  uint64_t client_cursor_ = 0;  // where the client writes next
  uint64_t in_tail_ = 0;        // model of ferryd's read position
  uint64_t out_head_ = 0;       // model of ferryd's write position
};

}  // namespace
}  // namespace ferry::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ferry::fuzz::FuzzInput in(data, size);
  ferry::fuzz::Harness harness;
  if (!harness.Start()) return 0;  // no memfd here: nothing to test
  harness.Run(in);
  return 0;
}
