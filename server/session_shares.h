// What a session may use (its grant: whole devices or pool slices) and the
// enforcement of a slice's shares (README.md invariant 7): the memory quota and
// the compute share.
//
// A slice's compute share is enforced with an SM partition where the backend
// offers one (ChooseComputeMechanism), else by throttling the session's
// launches on that device (SessionShares).
//
// Thread-safety: the grant types are plain values. SessionShares: CheckQuota,
// Charge, Uncharge and ThrottleBeforeLaunch belong to the session's executor
// role; the byte counters, Interrupt and the completion LaunchQueued returns
// are safe from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <absl/base/thread_annotations.h>
#include <absl/time/clock.h>
#include <absl/time/time.h>

#include "common/status.h"
#include "server/backend/api/gpu_backend.h"
#include "server/pool/launch_throttle.h"

namespace ferry::server {

// One device as a session sees it: a whole backend device, or a slice of one
// borrowed from a pool.
struct SessionDevice {
  int backend_device = 0;
  uint64_t memory_quota = 0;   // bytes the session may allocate here; 0 = no quota
  double compute_share = 1.0;  // < 1: a share of the GPU's compute (see below)
  // Where the slice lives, for the handshake and status.
  int gpu = 0;
  int slice = 0;
  int slices_per_gpu = 1;
  // How the compute share is enforced, set by ChooseComputeMechanism: > 0:
  // an SM partition — the session's contexts on this device are partitioned
  // contexts (CUDA green contexts) on SM group `slice` of `slices_per_gpu`,
  // which has this many SMs, and launches are not throttled. 0 with a share
  // < 1: launch throttling.
  int sm_partition_sms = 0;
  // > 0: the share is enforced by NVIDIA's MPS (ComputeSharing::kMps): the
  // session's worker process runs as an MPS client with this
  // CUDA_MPS_ACTIVE_THREAD_PERCENTAGE and its memory quota as
  // CUDA_MPS_PINNED_DEVICE_MEM_LIMIT (MpsEnvironment); not throttled.
  int mps_thread_percentage = 0;
};

// How ferryd shares a GPU's compute between sessions (ferryd
// --compute-sharing, [server] compute_sharing).
enum class ComputeSharing {
  // SM partitions (green contexts, in each session's process) where the
  // backend offers them, else launch throttling.
  kAuto,
  // The GPU host runs NVIDIA's MPS control daemon: sessions' worker
  // processes are MPS clients whose active-thread percentage is their share.
  kMps,
};

// What a session may use: its devices in client ordinal order.
struct SessionGrant {
  bool pooled = false;  // the devices come from a pool (the handshake says so)
  // Set by WithComputeMechanisms: each device's mechanism is chosen (a
  // session in a worker process gets its grant so, from ferryd's main
  // process, which alone knows the server's ComputeSharing).
  bool mechanisms_chosen = false;
  std::string pool;
  std::vector<SessionDevice> devices;
  // Its pool overcommits memory: once the session has made no call for this
  // long, ferryd may park its device memory when a device runs short
  // (Session::Park). nullopt: never parked.
  std::optional<absl::Duration> park_after;
  // Idle release (Session::ReleaseIdle): its slices may go back to the pool
  // while it is idle and be borrowed again on its next call.
  bool releasable = false;
};

// Every device of `backend`, whole, in order: the grant without pools.
SessionGrant WholeDevices(const backend::GpuBackend& backend);

// Picks how `device`'s compute share is enforced (README.md invariant 7): an SM
// partition where the backend can split the device into `slices_per_gpu`
// disjoint SM groups and the share is one such group (the CUDA backend with
// green contexts), else launch throttling. Sets device->sm_partition_sms.
// The backend's answer for a device and slice count never changes, so the
// session and ferryctl status always agree.
// With `sharing` kMps a share below 1 goes to MPS instead
// (device->mps_thread_percentage).
void ChooseComputeMechanism(backend::GpuBackend& backend, SessionDevice* device,
                            ComputeSharing sharing = ComputeSharing::kAuto);

// `grant` with each device's compute mechanism chosen (as it is when they
// already are).
SessionGrant WithComputeMechanisms(backend::GpuBackend& backend, SessionGrant grant,
                                   ComputeSharing sharing = ComputeSharing::kAuto);

// The environment that makes a session's worker process the MPS client its
// grant asks for: CUDA_MPS_ACTIVE_THREAD_PERCENTAGE and
// CUDA_MPS_PINNED_DEVICE_MEM_LIMIT ("0=4096M,1=4096M", backend device
// ordinals, quotas rounded up to MiB); empty when no device uses MPS.
std::vector<std::string> MpsEnvironment(const SessionGrant& grant);

// How `device`'s share is enforced, as the handshake and ferryctl show it:
// "whole-gpu" (share 1), "sm-partition (N SMs)", "mps (N% of SMs)", or
// "launch-throttle".
std::string ComputeMechanism(const SessionDevice& device);

// The quota and throttle state of one session's devices, by session device
// index (the client's ordinal). Device indices come from the session's own
// tables (a context's device), never straight from the client.
//
// Every allocation path checks CheckQuota before it allocates (and again with
// the size it got, when the backend may round up) and Charges what it keeps;
// every free Uncharges. Today's paths are cuMemAlloc and cuMemAllocPitch; a
// new one (stream-ordered or pool allocations, cuMemCreate) must do the same.
// Module globals are not charged.
class SessionShares {
 public:
  // `grant` (its compute mechanisms chosen) must outlive this object.
  explicit SessionShares(const SessionGrant& grant);
  SessionShares(const SessionShares&) = delete;
  SessionShares& operator=(const SessionShares&) = delete;

  // OK when `bytes` more fit in the quota of session device `device`;
  // OutOfMemory naming the slice otherwise.
  Status CheckQuota(int device, uint64_t bytes) const;
  void Charge(int device, uint64_t bytes);
  void Uncharge(int device, uint64_t bytes);
  // What cuMemGetInfo reports for `device`, given what the backend reported
  // for the whole device: a slice's size, and what is left of it (never more
  // than the device itself has free).
  void ApplyQuota(int device, uint64_t* free_bytes, uint64_t* total) const;

  // Counters for status; any thread.
  uint64_t bytes_allocated() const { return bytes_allocated_.load(); }
  uint64_t allocations() const { return allocation_count_.load(); }
  // The most bytes_allocated() has been.
  uint64_t peak_bytes_allocated() const { return peak_bytes_allocated_.load(); }
  uint64_t device_bytes(int device) const { return device_bytes_[device].load(); }

  // Whether launches on `device` are throttled (a share < 1 without an SM
  // partition). Throws std::out_of_range for a device the grant lacks.
  bool Throttled(int device) const { return throttles_.at(device) != nullptr; }
  // For a throttled device: waits until the device's previous kernel of this
  // session is done and as long as its compute share asks, before a launch.
  // Returns at once after Interrupt.
  void ThrottleBeforeLaunch(int device);
  // For a throttled device: a launch was just queued. The returned completion
  // must run once when the launch's stream goes idle (from any thread); it
  // charges the kernel's busy time to the device's throttle. This object must
  // outlive that call.
  backend::Completion LaunchQueued(int device);
  // Cuts every present and future throttle wait short (Stop, Preempt). Any
  // thread; idempotent.
  void Interrupt();

 private:
  // The compute-share throttle of one throttled device. One kernel of the
  // device is in flight at a time, so the busy time it measures is the
  // kernel's, and the wait before the next one holds the session to its
  // share.
  // Its members are guarded by SessionShares::mutex_ (an annotation cannot
  // name the enclosing object's mutex).
  struct DeviceThrottle {
    pool::LaunchThrottle throttle;
    int in_flight = 0;
    explicit DeviceThrottle(double share) : throttle(share, absl::Milliseconds(5), absl::Now()) {}
  };

  const SessionGrant& grant_;
  std::unique_ptr<std::atomic<uint64_t>[]> device_bytes_;  // per session device
  std::atomic<uint64_t> bytes_allocated_{0};
  std::atomic<uint64_t> allocation_count_{0};
  std::atomic<uint64_t> peak_bytes_allocated_{0};
  // Per device; null = not throttled. The vector is fixed at construction;
  // the objects' state is guarded by mutex_.
  std::vector<std::unique_ptr<DeviceThrottle>> throttles_;

  // Throttle state and waits; Interrupt cuts the waits short.
  std::mutex mutex_;
  std::condition_variable cv_;
  bool interrupted_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace ferry::server
