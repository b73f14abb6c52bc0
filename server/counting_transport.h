// CountingTransport: a Transport that counts the bytes it carries each way,
// so a session can report its traffic (its end log line, status) whatever
// transport it runs on (TCP, TLS, shared memory).
//
// Thread-safety: as Transport (one reader and one writer at once); the
// counters may be read from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include "common/transport.h"

namespace ferry::server {

class CountingTransport final : public Transport {
 public:
  explicit CountingTransport(std::unique_ptr<Transport> inner) : inner_(std::move(inner)) {}

  // The transport counted, for a session that replaces it before serving
  // starts (an RDMA upgrade, common/rdma/rdma_connector.h). Only while no
  // reader or writer is active.
  std::unique_ptr<Transport>& inner() { return inner_; }

  // Bytes read from / written to the peer so far (successful calls only).
  uint64_t bytes_read() const { return bytes_read_.load(std::memory_order_relaxed); }
  uint64_t bytes_written() const { return bytes_written_.load(std::memory_order_relaxed); }

  Status Write(std::span<const ConstBuffer> buffers) override {
    Status status = inner_->Write(buffers);
    if (status.ok()) {
      uint64_t bytes = 0;
      for (const ConstBuffer& buffer : buffers) bytes += buffer.size;
      bytes_written_.fetch_add(bytes, std::memory_order_relaxed);
    }
    return status;
  }
  Status ReadExact(void* data, size_t size) override {
    Status status = inner_->ReadExact(data, size);
    if (status.ok()) bytes_read_.fetch_add(size, std::memory_order_relaxed);
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
  bool PeerGoneOrTalking() override { return inner_->PeerGoneOrTalking(); }
  void SetReadDeadline(std::chrono::steady_clock::time_point deadline) override {
    inner_->SetReadDeadline(deadline);
  }

 private:
  std::unique_ptr<Transport> inner_;
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<uint64_t> bytes_written_{0};
};

}  // namespace ferry::server
