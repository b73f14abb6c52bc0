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
#include <mutex>
#include <span>
#include <string>
#include <utility>

#include "common/transport.h"

namespace ferry::server {

class CountingTransport final : public Transport {
 public:
  explicit CountingTransport(std::unique_ptr<Transport> inner)
      : inner_(std::move(inner)), peer_name_(inner_->PeerName()) {}

  // Lets `upgrade` replace the transport counted (a session moving to RDMA
  // or shared memory before it serves, common/rdma/rdma_connector.h,
  // common/shm_rendezvous.h); only while no reader or
  // writer is active. Shutdown waits for it (the upgrade is bounded by its
  // deadline). Disconnected, without calling it, after a Shutdown.
  template <typename Upgrade>
  Status ReplaceInner(Upgrade upgrade) {
    std::lock_guard<std::mutex> lock(replace_mutex_);
    if (shut_down_) return Status::Disconnected("the connection was shut down");
    Status status = upgrade(&inner_);
    if (inner_ == nullptr) shut_down_ = true;
    return status;
  }

  // Bytes read from / written to the peer so far (successful calls only).
  uint64_t bytes_read() const { return bytes_read_.load(std::memory_order_relaxed); }
  uint64_t bytes_written() const { return bytes_written_.load(std::memory_order_relaxed); }

  Status Write(std::span<const ConstBuffer> buffers) override {
    if (inner_ == nullptr) return Status::Disconnected("the connection was shut down");
    Status status = inner_->Write(buffers);
    if (status.ok()) {
      uint64_t bytes = 0;
      for (const ConstBuffer& buffer : buffers) bytes += buffer.size;
      bytes_written_.fetch_add(bytes, std::memory_order_relaxed);
    }
    return status;
  }
  Status ReadExact(void* data, size_t size) override {
    if (inner_ == nullptr) return Status::Disconnected("the connection was shut down");
    Status status = inner_->ReadExact(data, size);
    if (status.ok()) bytes_read_.fetch_add(size, std::memory_order_relaxed);
    return status;
  }
  void Shutdown() override {
    std::lock_guard<std::mutex> lock(replace_mutex_);
    shut_down_ = true;
    if (inner_ != nullptr) inner_->Shutdown();
  }
  // Kept from the first transport: the peer is the same after an upgrade.
  const std::string& PeerName() const override { return peer_name_; }
  std::string Description() const override {
    std::lock_guard<std::mutex> lock(replace_mutex_);
    return inner_ != nullptr ? inner_->Description() : "closed";
  }
  void RegisterHostMemory(const void* address, size_t size) override {
    inner_->RegisterHostMemory(address, size);
  }
  void UnregisterHostMemory(const void* address) override {
    inner_->UnregisterHostMemory(address);
  }
  bool LocalSocketAddress(sockaddr_storage* out) const override {
    return inner_->LocalSocketAddress(out);
  }
  bool OverTcp() const override {
    std::lock_guard<std::mutex> lock(replace_mutex_);
    return inner_ != nullptr && inner_->OverTcp();
  }
  bool PeerGoneOrTalking() override { return inner_ == nullptr || inner_->PeerGoneOrTalking(); }
  bool PeerClosed() override { return inner_ == nullptr || inner_->PeerClosed(); }
  void SetReadDeadline(std::chrono::steady_clock::time_point deadline) override {
    inner_->SetReadDeadline(deadline);
  }

 private:
  std::unique_ptr<Transport> inner_;
  const std::string peer_name_;
  mutable std::mutex replace_mutex_;  // inner_'s replacement against Shutdown and Description
  bool shut_down_ = false;            // under replace_mutex_
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<uint64_t> bytes_written_{0};
};

}  // namespace ferry::server
