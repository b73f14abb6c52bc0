#include "server/session_shares.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "common/units.h"

namespace ferry::server {

SessionGrant WholeDevices(const backend::GpuBackend& backend) {
  SessionGrant grant;
  for (size_t i = 0; i < backend.Devices().size(); ++i) {
    SessionDevice device;
    device.backend_device = static_cast<int>(i);
    device.gpu = static_cast<int>(i);
    grant.devices.push_back(device);
  }
  return grant;
}

void ChooseComputeMechanism(backend::GpuBackend& backend, SessionDevice* device,
                            ComputeSharing sharing) {
  device->sm_partition_sms = 0;
  device->mps_thread_percentage = 0;
  if (device->compute_share >= 1.0) return;
  if (sharing == ComputeSharing::kMps) {
    device->mps_thread_percentage =
        std::clamp(static_cast<int>(std::lround(device->compute_share * 100)), 1, 100);
    return;
  }
  if (device->slices_per_gpu < 2 || device->slice < 0 || device->slice >= device->slices_per_gpu) {
    return;
  }
  // An SM group is 1/slices_per_gpu of the GPU; a share that is not exactly
  // that (none today: the pool gives every slice 1/slices_per_gpu) is
  // throttled instead.
  const double group_share = 1.0 / device->slices_per_gpu;
  if (std::abs(device->compute_share - group_share) > 1e-9) return;
  int sm_count = 0;
  if (backend.SmPartitionSize(device->backend_device, device->slices_per_gpu, &sm_count).ok() &&
      sm_count > 0) {
    device->sm_partition_sms = sm_count;
  }
}

SessionGrant WithComputeMechanisms(backend::GpuBackend& backend, SessionGrant grant,
                                   ComputeSharing sharing) {
  if (grant.mechanisms_chosen) return grant;
  for (SessionDevice& device : grant.devices) ChooseComputeMechanism(backend, &device, sharing);
  grant.mechanisms_chosen = true;
  return grant;
}

std::vector<std::string> MpsEnvironment(const SessionGrant& grant) {
  int percentage = 0;
  std::string limits;
  for (const SessionDevice& device : grant.devices) {
    if (device.mps_thread_percentage == 0) continue;
    // One percentage per process: the smallest share asked for (a pool
    // gives all of a session's slices the same one).
    percentage = percentage == 0 ? device.mps_thread_percentage
                                 : std::min(percentage, device.mps_thread_percentage);
    if (device.memory_quota > 0) {
      const uint64_t mib = (device.memory_quota + (1 << 20) - 1) >> 20;
      limits += (limits.empty() ? "" : ",") + std::to_string(device.backend_device) + "=" +
                std::to_string(mib) + "M";
    }
  }
  if (percentage == 0) return {};
  std::vector<std::string> environment{"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=" +
                                       std::to_string(percentage)};
  if (!limits.empty()) environment.push_back("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=" + limits);
  return environment;
}

std::string ComputeMechanism(const SessionDevice& device) {
  if (device.compute_share >= 1.0) return "whole-gpu";
  if (device.sm_partition_sms > 0) {
    return "sm-partition (" + std::to_string(device.sm_partition_sms) + " SMs)";
  }
  if (device.mps_thread_percentage > 0) {
    return "mps (" + std::to_string(device.mps_thread_percentage) + "% of SMs)";
  }
  return "launch-throttle";
}

SessionShares::SessionShares(const SessionGrant& grant)
    : grant_(grant), device_bytes_(new std::atomic<uint64_t>[grant.devices.size()]) {
  for (size_t i = 0; i < grant_.devices.size(); ++i) {
    device_bytes_[i].store(0);
    const SessionDevice& device = grant_.devices[i];
    // An SM partition (or MPS) enforces the share by itself: throttling on top would
    // only take away what the partition gives.
    const bool throttled = device.compute_share < 1.0 && device.sm_partition_sms == 0 &&
                           device.mps_thread_percentage == 0;
    throttles_.push_back(throttled ? std::make_unique<DeviceThrottle>(device.compute_share)
                                   : nullptr);
  }
}

Status SessionShares::CheckQuota(int device, uint64_t bytes) const {
  const SessionDevice& d = grant_.devices[device];
  if (d.memory_quota == 0) return Status::Ok();
  const uint64_t used = device_bytes_[device].load();
  if (used <= d.memory_quota && bytes <= d.memory_quota - used) return Status::Ok();
  return Status::OutOfMemory(
      "cannot allocate " + std::to_string(bytes) + " bytes on device " + std::to_string(device) +
      ": it is slice " + std::to_string(d.slice + 1) + "/" + std::to_string(d.slices_per_gpu) +
      " of GPU " + std::to_string(d.gpu) + " (pool " + grant_.pool + ") with a quota of " +
      FormatByteSize(d.memory_quota) + ", " + std::to_string(used) + " bytes in use");
}

void SessionShares::Charge(int device, uint64_t bytes) {
  device_bytes_[device].fetch_add(bytes);
  const uint64_t now = bytes_allocated_.fetch_add(bytes) + bytes;
  allocation_count_.fetch_add(1);
  // Raise the peak to `now` unless a concurrent Charge raised it further.
  uint64_t peak = peak_bytes_allocated_.load();
  while (now > peak && !peak_bytes_allocated_.compare_exchange_weak(peak, now)) {
  }
}

void SessionShares::Uncharge(int device, uint64_t bytes) {
  device_bytes_[device].fetch_sub(bytes);
  bytes_allocated_.fetch_sub(bytes);
  allocation_count_.fetch_sub(1);
}

void SessionShares::ApplyQuota(int device, uint64_t* free_bytes, uint64_t* total) const {
  const uint64_t quota = grant_.devices[device].memory_quota;
  if (quota == 0) return;
  const uint64_t used = device_bytes_[device].load();
  *total = quota;
  *free_bytes = std::min(*free_bytes, used < quota ? quota - used : 0);
}

void SessionShares::ThrottleBeforeLaunch(int device) {
  DeviceThrottle& t = *throttles_[device];
  // Only this session waits (its calls keep their order); Interrupt cuts the
  // wait short.
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [&] { return interrupted_ || t.in_flight == 0; });
  if (interrupted_) return;
  const absl::Duration delay = t.throttle.DelayBeforeLaunch(absl::Now());
  if (delay <= absl::ZeroDuration()) return;
  cv_.wait_for(lock, absl::ToChronoNanoseconds(delay), [this] { return interrupted_; });
}

backend::Completion SessionShares::LaunchQueued(int device) {
  DeviceThrottle* t = throttles_[device].get();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++t->in_flight;
  }
  const absl::Time queued = absl::Now();
  // The device had nothing else of this session in flight, so the time from
  // queueing to the stream going idle is this kernel's busy time.
  return [this, t, queued](Status) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const absl::Time done = absl::Now();
      if (done > queued) t->throttle.ChargeBusy(done - queued, done);
      --t->in_flight;
    }
    cv_.notify_all();
  };
}

void SessionShares::Interrupt() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    interrupted_ = true;
  }
  cv_.notify_all();
}

}  // namespace ferry::server
