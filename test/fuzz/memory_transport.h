// MemoryTransport: a Transport whose peer is a byte string — reads are served
// from it and fail with Disconnected past its end, as when a real peer closes
// the connection; writes are discarded. For fuzz targets that feed a reader
// (the frame decoder) a whole input at once. Header only.
//
// Thread-safety: as Transport (one reader, one writer).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "common/transport.h"

namespace ferry::fuzz {

class MemoryTransport final : public Transport {
 public:
  explicit MemoryTransport(std::span<const uint8_t> bytes) : bytes_(bytes) {}

  Status Write(std::span<const ConstBuffer>) override {
    if (shut_down_) return Status::Disconnected("memory transport shut down");
    return Status::Ok();
  }
  Status ReadExact(void* data, size_t size) override {
    if (shut_down_) return Status::Disconnected("memory transport shut down");
    if (size > remaining()) {
      at_ = bytes_.size();
      return Status::Disconnected("the fuzz input ended");
    }
    if (size > 0) std::memcpy(data, bytes_.data() + at_, size);
    at_ += size;
    return Status::Ok();
  }
  void Shutdown() override { shut_down_ = true; }
  const std::string& PeerName() const override { return name_; }

  // Bytes not read yet.
  size_t remaining() const { return bytes_.size() - at_; }

 private:
  std::span<const uint8_t> bytes_;
  size_t at_ = 0;
  std::atomic<bool> shut_down_{false};
  const std::string name_ = "fuzz-input";
};

}  // namespace ferry::fuzz
