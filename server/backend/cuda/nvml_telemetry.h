// NvmlTelemetry — what NVIDIA's NVML says of a GPU now (utilization,
// temperature, power), for the NVML stand-in's questions to a session
// (GpuBackend::ReadDeviceTelemetry). Private to server/backend/cuda.
//
// NVML is loaded like the driver, at run time with dlopen, on first use, from
// the directory the driver was loaded from: NVIDIA installs
// libnvidia-ml.so.1 beside libcuda.so.1, so the NVML found there is the
// driver's own. (In the chained tests, whose driver is ferry's stand-in
// libcuda.so.1, that is ferry's NVML stand-in beside it, which answers from
// the next ferryd.) Without it every figure is -1 (the client then answers
// NVML_ERROR_NOT_SUPPORTED), and ferryd says why once.
//
// Thread-safety: Read may run on any thread; NVML is thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "absl/base/thread_annotations.h"
#include "common/status.h"
#include "server/backend/api/gpu_backend.h"

namespace ferry::backend::cuda_internal {

class NvmlTelemetry {
 public:
  // `driver_path`: the file the CUDA driver was loaded from.
  explicit NvmlTelemetry(std::string driver_path);
  NvmlTelemetry(const NvmlTelemetry&) = delete;
  NvmlTelemetry& operator=(const NvmlTelemetry&) = delete;

  // The figures of the GPU whose UUID is `uuid` (as cuDeviceGetUuid gives
  // it); each one NVML cannot give is -1. Always OK: a missing figure is not
  // an error of the call.
  Status Read(const std::array<uint8_t, 16>& uuid, DeviceTelemetry* out);

 private:
  struct Api;
  // Loads NVML once; false (and the reason logged once) when it cannot.
  bool Load() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string library_path_;
  std::mutex mu_;
  bool tried_ ABSL_GUARDED_BY(mu_) = false;
  const Api* api_ ABSL_GUARDED_BY(mu_) = nullptr;  // never freed: NVML is never unloaded
  // UUID -> nvmlDevice_t (an opaque pointer of NVML's).
  std::map<std::array<uint8_t, 16>, void*> handles_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::backend::cuda_internal
