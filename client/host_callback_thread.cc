#include "client/host_callback_thread.h"

#include <exception>
#include <system_error>
#include <utility>

#include "common/log.h"

namespace ferry::client {
namespace {

constinit thread_local bool tls_on_host_callback_thread = false;

}  // namespace

HostCallbackThread::~HostCallbackThread() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Status HostCallbackThread::Post(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!thread_.joinable()) {
      try {
        thread_ = std::thread([this] { Run(); });
      } catch (const std::system_error& e) {
        return Status::Internal(std::string("cannot start the host-callback thread: ") + e.what());
      }
    }
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
  return Status::Ok();
}

bool HostCallbackThread::OnThisThread() { return tls_on_host_callback_thread; }

void HostCallbackThread::Run() {
  tls_on_host_callback_thread = true;
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    // A program's callback is C, but may be C++ that throws; nothing may
    // unwind out of this thread.
    try {
      job();
    } catch (const std::exception& e) {
      FERRY_LOG(kError) << "a host callback threw: " << e.what();
    } catch (...) {
      FERRY_LOG(kError) << "a host callback threw";
    }
  }
}

}  // namespace ferry::client
