#include "server/backend/cuda/nvml_telemetry.h"

#include <dlfcn.h>
#include <nvml.h>

#include <cstdio>
#include <string>
#include <utility>

#include "common/log.h"

namespace ferry::backend::cuda_internal {

// The NVML entry points used, typed by nvml.h's declarations.
struct NvmlTelemetry::Api {
  decltype(&::nvmlInit_v2) init = nullptr;
  decltype(&::nvmlDeviceGetHandleByUUID) handle_by_uuid = nullptr;
  decltype(&::nvmlDeviceGetUtilizationRates) utilization = nullptr;
  decltype(&::nvmlDeviceGetTemperature) temperature = nullptr;
  decltype(&::nvmlDeviceGetPowerUsage) power = nullptr;
};

namespace {

std::string Directory(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", NVML's form.
std::string UuidText(const std::array<uint8_t, 16>& uuid) {
  std::string text = "GPU-";
  char hex[3];
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) text += '-';
    std::snprintf(hex, sizeof(hex), "%02x", uuid[i]);
    text += hex;
  }
  return text;
}

}  // namespace

NvmlTelemetry::NvmlTelemetry(std::string driver_path)
    : library_path_(Directory(driver_path) + "/libnvidia-ml.so.1") {}

bool NvmlTelemetry::Load() {
  if (tried_) return api_ != nullptr;
  tried_ = true;
  void* handle = dlopen(library_path_.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* error = dlerror();
    FERRY_LOG(kInfo) << "no NVML beside the CUDA driver (" << (error != nullptr ? error : "")
                     << "): GPU utilization, temperature and power are not reported";
    return false;
  }
  auto* api = new Api;
  api->init = reinterpret_cast<decltype(api->init)>(dlsym(handle, "nvmlInit_v2"));
  api->handle_by_uuid =
      reinterpret_cast<decltype(api->handle_by_uuid)>(dlsym(handle, "nvmlDeviceGetHandleByUUID"));
  api->utilization =
      reinterpret_cast<decltype(api->utilization)>(dlsym(handle, "nvmlDeviceGetUtilizationRates"));
  api->temperature =
      reinterpret_cast<decltype(api->temperature)>(dlsym(handle, "nvmlDeviceGetTemperature"));
  api->power = reinterpret_cast<decltype(api->power)>(dlsym(handle, "nvmlDeviceGetPowerUsage"));
  nvmlReturn_t init = NVML_ERROR_FUNCTION_NOT_FOUND;
  if (api->init != nullptr && api->handle_by_uuid != nullptr) init = api->init();
  if (init != NVML_SUCCESS) {
    FERRY_LOG(kWarning) << library_path_ << ": nvmlInit failed (" << static_cast<int>(init)
                        << "): GPU utilization, temperature and power are not reported";
    delete api;
    dlclose(handle);
    return false;
  }
  api_ = api;
  return true;
}

Status NvmlTelemetry::Read(const std::array<uint8_t, 16>& uuid, DeviceTelemetry* out) {
  *out = DeviceTelemetry{};
  const Api* api = nullptr;
  nvmlDevice_t device = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!Load()) return Status::Ok();
    api = api_;
    auto found = handles_.find(uuid);
    if (found == handles_.end()) {
      nvmlDevice_t handle = nullptr;
      if (api->handle_by_uuid(UuidText(uuid).c_str(), &handle) != NVML_SUCCESS) {
        FERRY_LOG_ONCE(kWarning) << "NVML does not know the GPU " << UuidText(uuid)
                                 << ": its utilization, temperature and power are not reported";
        return Status::Ok();
      }
      found = handles_.emplace(uuid, handle).first;
    }
    device = static_cast<nvmlDevice_t>(found->second);
  }
  nvmlUtilization_t utilization{};
  if (api->utilization != nullptr && api->utilization(device, &utilization) == NVML_SUCCESS) {
    out->gpu_utilization = static_cast<int>(utilization.gpu);
    out->memory_utilization = static_cast<int>(utilization.memory);
  }
  unsigned value = 0;
  if (api->temperature != nullptr &&
      api->temperature(device, NVML_TEMPERATURE_GPU, &value) == NVML_SUCCESS) {
    out->temperature_c = static_cast<int>(value);
  }
  if (api->power != nullptr && api->power(device, &value) == NVML_SUCCESS) {
    out->power_milliwatts = static_cast<int>(value);
  }
  return Status::Ok();
}

}  // namespace ferry::backend::cuda_internal
