// The driver's side of the NVML bridge: ferry's NVML stand-in in this process
// asks through it for the devices of the program's session and their
// telemetry, so NVML shares the program's slice instead of borrowing one
// (common/nvml_bridge.h has the contract). Nothing here starts a session:
// before cuInit the bridge answers CUDA_ERROR_NOT_INITIALIZED.
//
// Thread-safety: every function may run on any thread (Runtime's are).
#include "client/nvml_bridge.h"

#include <cuda.h>

#include <algorithm>
#include <cstring>

#include "client/cuda_result.h"
#include "client/runtime.h"
#include "common/nvml_bridge.h"

namespace ferry::client {
namespace {

int SessionDevices(int* count) {
  return Api([&]() -> Status {
    if (count == nullptr) return Status::InvalidArgument("count is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    *count = static_cast<int>(Runtime::Get().devices().size());
    return Status::Ok();
  });
}

int Device(int ordinal, FerryNvmlDevice* out) {
  return Api([&]() -> Status {
    if (out == nullptr) return Status::InvalidArgument("out is NULL");
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    FERRY_RETURN_IF_ERROR(rt.CheckDevice(ordinal));
    const DeviceInfo& d = rt.devices()[ordinal];
    *out = FerryNvmlDevice{};
    const size_t name_bytes = std::min(d.name.size(), sizeof(out->name) - 1);
    std::memcpy(out->name, d.name.data(), name_bytes);
    std::memcpy(out->uuid, d.uuid.data(), sizeof(out->uuid));
    out->pci_domain = d.pci_domain;
    out->pci_bus = d.pci_bus;
    out->pci_device = d.pci_device;
    out->compute_capability_major = d.Attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
    out->compute_capability_minor = d.Attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
    out->total_memory = d.total_memory;
    return Status::Ok();
  });
}

int DriverVersion(int* version) { return cuDriverGetVersion(version); }

int Telemetry(int ordinal, FerryNvmlTelemetry* out) {
  return Api([&]() -> Status {
    if (out == nullptr) return Status::InvalidArgument("out is NULL");
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    FERRY_RETURN_IF_ERROR(rt.CheckDevice(ordinal));
    return rt.DeviceConnection(ordinal).Call(
        [&](wire::Call::Builder call) {
          call.initDeviceTelemetry().setDevice(rt.ServerOrdinal(ordinal));
        },
        {}, {},
        [&](wire::Reply::Reader reply) {
          if (!reply.isDeviceTelemetry()) return Status::Internal("deviceTelemetry reply missing");
          auto t = reply.getDeviceTelemetry();
          out->memory_total = t.getMemoryTotal();
          out->memory_used = t.getMemoryUsed();
          out->gpu_utilization = t.getGpuUtilization();
          out->memory_utilization = t.getMemoryUtilization();
          out->temperature_c = t.getTemperatureC();
          out->power_milliwatts = t.getPowerMilliwatts();
          return Status::Ok();
        });
  });
}

constexpr FerryNvmlBridge kBridge = {
    sizeof(FerryNvmlBridge), SessionDevices, Device, DriverVersion, Telemetry,
};

}  // namespace

const void* NvmlBridgeTable() { return &kBridge; }

}  // namespace ferry::client
