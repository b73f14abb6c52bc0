// Session handlers for monitoring (the NVML stand-in, client/nvml): what
// nvmlDeviceGetMemoryInfo, GetUtilizationRates, GetTemperature and
// GetPowerUsage report for one of the session's devices.
//
// Memory is the session's own view, as cuMemGetInfo's: the slice's quota as
// the total (the whole device without pools) and the bytes the session has
// charged there. Utilization, temperature and power are the whole GPU's
// (a slice shares them with the GPU's other holders), read by the backend.
// The device index is the session's (README.md invariant 6).

#include <string>

#include "server/session.h"

namespace ferry::server {

Status Session::DeviceTelemetry(wire::DeviceQuery::Reader args, CallContext& cx) {
  int backend_device = 0;
  FERRY_RETURN_IF_ERROR(BackendDevice(args.getDevice(), &backend_device));
  const SessionDevice& device = grant_.devices[args.getDevice()];
  backend::DeviceTelemetry figures;
  FERRY_RETURN_IF_ERROR(backend_.ReadDeviceTelemetry(backend_device, &figures));
  const uint64_t total = device.memory_quota != 0 ? device.memory_quota
                                                  : backend_.Devices()[backend_device].total_memory;
  auto reply = cx.reply.initDeviceTelemetry();
  reply.setMemoryTotal(total);
  reply.setMemoryUsed(shares_.device_bytes(args.getDevice()));
  reply.setGpuUtilization(figures.gpu_utilization);
  reply.setMemoryUtilization(figures.memory_utilization);
  reply.setTemperatureC(figures.temperature_c);
  reply.setPowerMilliwatts(figures.power_milliwatts);
  return Status::Ok();
}

}  // namespace ferry::server
