// Session: parking its device memory (memory overcommit; server/README.md,
// "Parking"). Park runs on whichever thread asks (the memory-pressure
// handler of another session); the unpark runs on the executor before a
// batch. Both hold exec_mutex_, so no call of the session runs meanwhile.
#include <chrono>
#include <mutex>
#include <string>

#include "common/log.h"
#include "server/session.h"
#include "server/session_internal.h"

namespace ferry::server {

namespace {

using session_internal::SteadyNowNs;

std::string Mib(uint64_t bytes) {
  return std::to_string((bytes + (1 << 19)) >> 20) + " MiB";
}

}  // namespace

bool Session::AllStreamsIdle() {
  bool idle = true;
  contexts_.ForEach([&](uint64_t, ContextEntry& entry) {
    if (!idle) return;
    Status status;
    if (backend_.ContextIdleNow(*entry.context, &status)) return;
    // A backend that cannot tell at once: ask, and take only a prompt answer
    // (an idle session's contexts answer at once; one still working is not
    // idle).
    struct Answer {
      std::mutex mu;
      std::condition_variable cv;
      bool done = false;
    };
    auto answer = std::make_shared<Answer>();
    backend_.WhenContextIdle(*entry.context, [answer](Status) {
      std::lock_guard<std::mutex> lock(answer->mu);
      answer->done = true;
      answer->cv.notify_all();
    });
    std::unique_lock<std::mutex> lock(answer->mu);
    idle = answer->cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return answer->done; });
  });
  return idle;
}

Status Session::Park(absl::Duration min_idle, const std::string& reason, int count_device,
                     uint64_t* parked_bytes) {
  return ParkIdle(min_idle, reason, /*release=*/false, count_device, parked_bytes);
}

Status Session::ReleaseIdle(absl::Duration min_idle, uint64_t* parked_bytes) {
  *parked_bytes = 0;
  if (!slice_lease_.give_back || !slice_lease_.borrow_again) {
    return Status::Unimplemented("session " + std::to_string(id_) +
                                      " has no pool to give its slices back to");
  }
  return ParkIdle(min_idle, "idle release", /*release=*/true, -1, parked_bytes);
}

Status Session::ParkIdle(absl::Duration min_idle, const std::string& reason, bool release,
                         int count_device, uint64_t* parked_bytes) {
  *parked_bytes = 0;
  if (!backend_.CanParkMemory()) {
    return Status::Unimplemented(std::string(backend_.Name()) + " backend cannot park memory");
  }
  std::unique_lock<std::timed_mutex> exec(exec_mutex_, std::defer_lock);
  if (!exec.try_lock_for(kParkLockWait)) {
    return Status::Overloaded("session " + std::to_string(id_) + " is executing calls");
  }
  if (!handshake_answered_ || !revoked_.ok()) {
    return Status::Overloaded("session " + std::to_string(id_) + " is not serving");
  }
  if (slices_released_.load() || (parked_.load() && !release)) return Status::Ok();
  {
    // exec_mutex_ alone keeps every call out until Park returns (a batch
    // about to run waits for it, then brings the memory back); calls already
    // read and waiting mean the session is not idle, though.
    std::lock_guard<std::mutex> lock(serve_mutex_);
    if (serving_ended_ || !inbox_.empty()) {
      return Status::Overloaded("session " + std::to_string(id_) + " has calls waiting");
    }
  }
  {
    // A completion may still be writing a reply from device memory (its
    // client may have the reply already): give it a moment.
    std::unique_lock<std::mutex> lock(pending_mutex_);
    if (!pending_cv_.wait_for(lock, kParkLockWait, [this] { return pending_completions_ == 0; })) {
      return Status::Overloaded("session " + std::to_string(id_) + " has replies being written");
    }
  }
  const int64_t last = last_call_ns_.load();
  const absl::Duration idle =
      last == 0 ? absl::InfiniteDuration() : absl::Nanoseconds(SteadyNowNs() - last);
  if (idle < min_idle) {
    return Status::Overloaded("session " + std::to_string(id_) + " made a call " +
                                      absl::FormatDuration(absl::Trunc(idle, absl::Milliseconds(1))) +
                                      " ago");
  }
  if (!AllStreamsIdle()) {
    return Status::Overloaded("session " + std::to_string(id_) +
                                      " has work running on its streams");
  }
  const int64_t started = SteadyNowNs();
  backend::ParkedMemory moved;
  if (!parked_.load()) FERRY_RETURN_IF_ERROR(backend_.ParkTenantMemory(*tenant_, &moved));
  const int64_t took = SteadyNowNs() - started;
  backend::ParkedMemory parked;
  backend_.TenantMemory(*tenant_, &parked, nullptr);
  if (parked.Total() > 0 && moved.Total() > 0) {
    parked_bytes_.store(parked.Total());
    parked_.store(true);
    parks_.fetch_add(1);
    bytes_parked_total_.fetch_add(moved.Total());
    park_ns_.fetch_add(took);
    *parked_bytes = count_device < 0 ? moved.Total()
                    : static_cast<size_t>(count_device) < moved.bytes.size()
                        ? moved.bytes[count_device]
                        : 0;
    FERRY_LOG(kInfo) << "session " << id_ << " (" << program_ << "@" << host_ << "): parked "
                     << Mib(moved.Total()) << " of device memory in host memory in "
                     << absl::FormatDuration(absl::Trunc(absl::Nanoseconds(took),
                                                         absl::Microseconds(100)))
                     << " (idle " << absl::FormatDuration(absl::Trunc(idle, absl::Seconds(1)))
                     << "; " << reason << ")";
  }
  if (!release) return Status::Ok();
  // What the session is charged for beyond what is parked stays on the
  // device (pool allocations, arrays, graph memory, virtual memory): another
  // borrower of the slice would find the device short of it.
  uint64_t charged = 0;
  for (size_t d = 0; d < grant_.devices.size(); ++d) {
    charged += shares_.device_bytes(static_cast<int>(d));
  }
  if (charged > parked.Total()) {
    return Status::Overloaded("session " + std::to_string(id_) + " keeps " +
                              Mib(charged - parked.Total()) +
                              " of device memory that cannot be parked (pool allocations, arrays, "
                              "graph or virtual memory): its slices stay its own");
  }
  // Still under exec_mutex_: the next batch finds the slices gone and
  // borrows them again before anything else.
  FERRY_RETURN_IF_ERROR(slice_lease_.give_back());
  slices_released_.store(true);
  releases_.fetch_add(1);
  FERRY_LOG(kInfo) << "session " << id_ << " (" << program_ << "@" << host_
                   << "): idle for "
                   << absl::FormatDuration(absl::Trunc(idle, absl::Seconds(1)))
                   << ", its slice(s) of pool " << grant_.pool
                   << " went back to the pool (" << Mib(parked.Total())
                   << " parked); its next call borrows them again";
  return Status::Ok();
}

Status Session::BorrowSlicesAgain() {
  const int64_t started = SteadyNowNs();
  // Nobody reads the connection while this executor waits (a session
  // without a helper thread): a client that died is seen by its closed
  // connection, so its wait ends and its place in the queue goes.
  const auto gone = [this] {
    {
      std::lock_guard<std::mutex> lock(serve_mutex_);
      if (serving_ended_) return true;
    }
    return preempt_requested_.load() || transport_->PeerClosed();
  };
  Status status;
  {
    ClientWaits waits(*this);  // in the pool's queue, perhaps for long
    status = slice_lease_.borrow_again(gone);
  }
  const absl::Duration waited = absl::Nanoseconds(SteadyNowNs() - started);
  if (!status.ok()) {
    FERRY_LOG(kWarning) << "session " << id_ << " (" << program_ << "@" << host_
                        << "): cannot borrow its slice(s) of pool " << grant_.pool
                        << " again: " << status.message();
    return Status::Overloaded("this session's slice(s) of pool " + grant_.pool +
                              " went back to the pool while it was idle and cannot be borrowed "
                              "again now: " +
                              status.message());
  }
  slices_released_.store(false);
  reborrows_.fetch_add(1);
  FERRY_LOG(kInfo) << "session " << id_ << " (" << program_ << "@" << host_
                   << "): borrowed its slice(s) of pool " << grant_.pool << " again; its call waited "
                   << absl::FormatDuration(absl::Trunc(waited, absl::Milliseconds(1)));
  return Status::Ok();
}

Status Session::UnparkForBatch() {
  // A preempted session's calls fail anyway: it borrows nothing again.
  if (!revoked_.ok()) return Status::Ok();
  if (slices_released_.load()) FERRY_RETURN_IF_ERROR(BorrowSlicesAgain());
  if (!parked_.load()) return Status::Ok();
  const int64_t started = SteadyNowNs();
  backend::ParkedMemory moved;
  const auto unpark = [&] { return backend_.UnparkTenantMemory(*tenant_, &moved); };
  Status status = unpark();
  if (status.code() == StatusCode::kOutOfMemory) {
    // The device is full: ask for room as large as what is parked there.
    backend::ParkedMemory parked;
    backend_.TenantMemory(*tenant_, &parked, nullptr);
    std::vector<std::pair<int, uint64_t>> needs;
    for (size_t d = 0; d < parked.bytes.size(); ++d) {
      if (parked.bytes[d] > 0) needs.emplace_back(static_cast<int>(d), parked.bytes[d]);
    }
    status = RetryWithRoom(needs, std::move(status), unpark);
  }
  const int64_t took = SteadyNowNs() - started;
  unpark_ns_.fetch_add(took);
  if (!status.ok()) {
    FERRY_LOG(kWarning) << "session " << id_ << " (" << program_ << "@" << host_
                        << "): its parked memory cannot come back yet: " << status.message();
    return Status::OutOfMemory(
        "the session's device memory is parked and the device has no room for it now: " +
        status.message());
  }
  parked_.store(false);
  parked_bytes_.store(0);
  unparks_.fetch_add(1);
  bytes_unparked_total_.fetch_add(moved.Total());
  FERRY_LOG(kInfo) << "session " << id_ << " (" << program_ << "@" << host_ << "): brought back "
                   << Mib(moved.Total()) << " of parked memory; its call waited "
                   << absl::FormatDuration(absl::Trunc(absl::Nanoseconds(took),
                                                       absl::Microseconds(100)));
  return Status::Ok();
}

Status Session::WaitForRoom(const std::vector<std::pair<int, uint64_t>>& needs, Status refused,
                            const std::function<Status()>& allocate) {
  // Only a session of a pool that overcommits memory makes others park; and
  // more than the device holds can never fit, so nobody is parked for it.
  if (!relieve_ || !grant_.park_after.has_value()) return refused;
  std::vector<std::pair<int, uint64_t>> backend_needs;
  for (const auto& [device, bytes] : needs) {
    if (device < 0 || static_cast<size_t>(device) >= grant_.devices.size()) return refused;
    const int backend_device = grant_.devices[device].backend_device;
    if (bytes > backend_.Devices()[backend_device].total_memory) return refused;
    backend_needs.emplace_back(backend_device, bytes);
  }
  return RetryWithRoom(backend_needs, std::move(refused), allocate);
}

Status Session::RetryWithRoom(const std::vector<std::pair<int, uint64_t>>& needs, Status status,
                              const std::function<Status()>& attempt) {
  const auto deadline = std::chrono::steady_clock::now() + unpark_wait_;
  const auto stopping = [this] { return serving_ended_ || preempt_requested_.load(); };
  ClientWaits waits(*this);
  for (int round = 0; status.code() == StatusCode::kOutOfMemory; ++round) {
    {
      std::lock_guard<std::mutex> lock(serve_mutex_);
      if (stopping()) break;
    }
    uint64_t freed = 0;
    if (relieve_) {
      for (const auto& [device, bytes] : needs) freed += relieve_(device, bytes, id_);
    }
    if (freed == 0) {
      // Nobody could be parked now (every other session works): memory
      // comes back as they free, end or go idle; look again shortly.
      if (std::chrono::steady_clock::now() >= deadline) break;
      std::unique_lock<std::mutex> lock(serve_mutex_);
      serve_cv_.wait_for(lock, std::chrono::milliseconds(std::min(200, 10 << std::min(round, 4))),
                         stopping);
      if (stopping()) break;
    }
    status = attempt();
    // Bounded whatever the others free: their room may be taken again
    // before this side's next try.
    if (std::chrono::steady_clock::now() >= deadline) break;
  }
  return status;
}

}  // namespace ferry::server
