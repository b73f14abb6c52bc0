// ObservedTransport: wraps a Transport and counts what passes through it, so
// a test can wait for "the peer has read this far and is reading again"
// instead of sleeping and hoping it has.
//
// Thread-safety: as the wrapped Transport (one reader, one writer); the
// counters may be read from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "common/transport.h"

namespace ferry::test {

class ObservedTransport final : public Transport {
 public:
  explicit ObservedTransport(std::unique_ptr<Transport> inner) : inner_(std::move(inner)) {}

  Status Write(std::span<const ConstBuffer> buffers) override {
    writes_.fetch_add(1);
    Status status = inner_->Write(buffers);
    if (status.ok()) {
      uint64_t bytes = 0;
      for (const ConstBuffer& buffer : buffers) bytes += buffer.size;
      bytes_written_.fetch_add(bytes);
    }
    return status;
  }
  Status ReadExact(void* data, size_t size) override {
    reading_.store(true);
    Status status = inner_->ReadExact(data, size);
    reading_.store(false);
    if (status.ok()) bytes_read_.fetch_add(size);
    return status;
  }
  void Shutdown() override { inner_->Shutdown(); }
  const std::string& PeerName() const override { return inner_->PeerName(); }
  std::string Description() const override { return inner_->Description(); }
  void RegisterHostMemory(const void* address, size_t size) override {
    inner_->RegisterHostMemory(address, size);
  }
  void UnregisterHostMemory(const void* address) override {
    inner_->UnregisterHostMemory(address);
  }
  bool LocalSocketAddress(sockaddr_storage* out) const override {
    return inner_->LocalSocketAddress(out);
  }
  bool PeerGoneOrTalking() override { return inner_->PeerGoneOrTalking(); }
  bool PeerClosed() override { return inner_->PeerClosed(); }

  // Bytes that completed ReadExact calls returned.
  uint64_t bytes_read() const { return bytes_read_.load(); }
  // True while a ReadExact call is in progress (blocked or about to return).
  bool reading() const { return reading_.load(); }
  // Write calls made (one per frame for ferry's writers).
  int writes() const { return writes_.load(); }
  // Bytes that completed Write calls took.
  uint64_t bytes_written() const { return bytes_written_.load(); }

 private:
  std::unique_ptr<Transport> inner_;
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<bool> reading_{false};
  std::atomic<int> writes_{0};
  std::atomic<uint64_t> bytes_written_{0};
};

}  // namespace ferry::test
