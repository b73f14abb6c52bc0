// Entry points: initialisation, versions, devices, error names.
// Device queries are answered from what the server sent at the handshake
// (values that cannot change are fetched once per session).
#include <cuda.h>

#include <cstdio>
#include <cstring>

#include "client/entry_point.h"

namespace {

struct ErrorEntry {
  int code;
  const char* name;
  const char* description;
};
constexpr ErrorEntry kErrors[] = {
#include "cuda_error_table.inc"
};

const ErrorEntry* FindError(CUresult code) {
  for (const ErrorEntry& e : kErrors) {
    if (e.code == static_cast<int>(code)) return &e;
  }
  return nullptr;
}

Status DeviceInfoFor(CUdevice dev, const ferry::client::DeviceInfo** out) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  FERRY_RETURN_IF_ERROR(rt.CheckDevice(dev));
  *out = &rt.devices()[dev];
  return Status::Ok();
}

}  // namespace

extern "C" {

// ferry's marker: lets a CUDA backend refuse to load ferry's own library as
// "the real driver". Returns the string "ferry".
CUresult CUDAAPI cuFerryClientIdentity(const char** identity) {
  if (identity != nullptr) *identity = "ferry";
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuInit(unsigned int flags) {
  return Api([&] { return Runtime::Get().Init(flags); });
}

CUresult CUDAAPI cuDriverGetVersion(int* version) {
  if (version == nullptr) return CUDA_ERROR_INVALID_VALUE;
  // The API level this library implements (cuda.h it was built with); the
  // integrity answer to the runtime is computed from this same value.
  *version = CUDA_VERSION;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetCount(int* count) {
  return Api([&]() -> Status {
    if (count == nullptr) return Status::InvalidArgument("count is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    *count = static_cast<int>(Runtime::Get().devices().size());
    return Status::Ok();
  });
}

CUresult CUDAAPI cuDeviceGet(CUdevice* device, int ordinal) {
  return Api([&]() -> Status {
    if (device == nullptr) return Status::InvalidArgument("device is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    FERRY_RETURN_IF_ERROR(Runtime::Get().CheckDevice(ordinal));
    *device = ordinal;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuDeviceGetName(char* name, int len, CUdevice dev) {
  return Api([&]() -> Status {
    if (name == nullptr || len <= 0) return Status::InvalidArgument("bad name buffer");
    const ferry::client::DeviceInfo* info;
    FERRY_RETURN_IF_ERROR(DeviceInfoFor(dev, &info));
    std::snprintf(name, static_cast<size_t>(len), "%s", info->name.c_str());
    return Status::Ok();
  });
}

CUresult CUDAAPI cuDeviceGetUuid(CUuuid* uuid, CUdevice dev) {
  return Api([&]() -> Status {
    if (uuid == nullptr) return Status::InvalidArgument("uuid is NULL");
    const ferry::client::DeviceInfo* info;
    FERRY_RETURN_IF_ERROR(DeviceInfoFor(dev, &info));
    std::memcpy(uuid->bytes, info->uuid.data(), sizeof(uuid->bytes));
    return Status::Ok();
  });
}

CUresult CUDAAPI cuDeviceGetUuid_v2(CUuuid* uuid, CUdevice dev) {
  return cuDeviceGetUuid(uuid, dev);
}

CUresult CUDAAPI cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
  return Api([&]() -> Status {
    if (bytes == nullptr) return Status::InvalidArgument("bytes is NULL");
    const ferry::client::DeviceInfo* info;
    FERRY_RETURN_IF_ERROR(DeviceInfoFor(dev, &info));
    *bytes = info->total_memory;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuDeviceTotalMem(unsigned int* bytes, CUdevice dev) {
  size_t total = 0;
  CUresult r = cuDeviceTotalMem_v2(&total, dev);
  if (r == CUDA_SUCCESS) *bytes = total > 0xffffffffu ? 0xffffffffu : static_cast<unsigned>(total);
  return r;
}

CUresult CUDAAPI cuDeviceGetAttribute(int* value, CUdevice_attribute attribute, CUdevice dev) {
  return Api([&]() -> Status {
    if (value == nullptr) return Status::InvalidArgument("value is NULL");
    const ferry::client::DeviceInfo* info;
    FERRY_RETURN_IF_ERROR(DeviceInfoFor(dev, &info));
    if (attribute < 0 || attribute >= CU_DEVICE_ATTRIBUTE_MAX) {
      return Status::InvalidArgument("unknown device attribute " + std::to_string(attribute));
    }
    *value = info->Attribute(attribute);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuDeviceComputeCapability(int* major, int* minor, CUdevice dev) {
  return Api([&]() -> Status {
    if (major == nullptr || minor == nullptr) return Status::InvalidArgument("NULL output");
    const ferry::client::DeviceInfo* info;
    FERRY_RETURN_IF_ERROR(DeviceInfoFor(dev, &info));
    *major = info->Attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
    *minor = info->Attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuDeviceGetProperties(CUdevprop* prop, CUdevice dev) {
  return Api([&]() -> Status {
    if (prop == nullptr) return Status::InvalidArgument("prop is NULL");
    const ferry::client::DeviceInfo* info;
    FERRY_RETURN_IF_ERROR(DeviceInfoFor(dev, &info));
    prop->maxThreadsPerBlock = info->Attribute(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK);
    prop->maxThreadsDim[0] = info->Attribute(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X);
    prop->maxThreadsDim[1] = info->Attribute(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y);
    prop->maxThreadsDim[2] = info->Attribute(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z);
    prop->maxGridSize[0] = info->Attribute(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X);
    prop->maxGridSize[1] = info->Attribute(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y);
    prop->maxGridSize[2] = info->Attribute(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z);
    prop->sharedMemPerBlock = info->Attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK);
    prop->totalConstantMemory = info->Attribute(CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY);
    prop->SIMDWidth = info->Attribute(CU_DEVICE_ATTRIBUTE_WARP_SIZE);
    prop->memPitch = info->Attribute(CU_DEVICE_ATTRIBUTE_MAX_PITCH);
    prop->regsPerBlock = info->Attribute(CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK);
    prop->clockRate = info->Attribute(CU_DEVICE_ATTRIBUTE_CLOCK_RATE);
    prop->textureAlign = info->Attribute(CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuDeviceGetPCIBusId(char* pciBusId, int len, CUdevice dev) {
  return Api([&]() -> Status {
    if (pciBusId == nullptr || len <= 0) return Status::InvalidArgument("bad buffer");
    const ferry::client::DeviceInfo* info;
    FERRY_RETURN_IF_ERROR(DeviceInfoFor(dev, &info));
    std::snprintf(pciBusId, static_cast<size_t>(len), "%08X:%02X:%02X.0", info->pci_domain,
                  info->pci_bus, info->pci_device);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuDeviceGetByPCIBusId(CUdevice* dev, const char* pciBusId) {
  return Api([&]() -> Status {
    if (dev == nullptr || pciBusId == nullptr) return Status::InvalidArgument("NULL argument");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    unsigned domain = 0, bus = 0, device = 0, function = 0;
    if (std::sscanf(pciBusId, "%x:%x:%x.%x", &domain, &bus, &device, &function) < 3) {
      domain = 0;
      if (std::sscanf(pciBusId, "%x:%x.%x", &bus, &device, &function) < 2) {
        return Status::InvalidArgument("bad PCI bus id '" + std::string(pciBusId) + "'");
      }
    }
    const auto& devices = Runtime::Get().devices();
    for (size_t i = 0; i < devices.size(); ++i) {
      if (devices[i].pci_domain == static_cast<int>(domain) &&
          devices[i].pci_bus == static_cast<int>(bus) &&
          devices[i].pci_device == static_cast<int>(device)) {
        *dev = static_cast<CUdevice>(i);
        return Status::Ok();
      }
    }
    return Status::Cuda(CUDA_ERROR_INVALID_DEVICE,
                        "no device at PCI bus id " + std::string(pciBusId));
  });
}

CUresult CUDAAPI cuGetErrorName(CUresult error, const char** str) {
  if (str == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const ErrorEntry* e = FindError(error);
  if (e == nullptr) {
    *str = nullptr;
    return CUDA_ERROR_INVALID_VALUE;
  }
  *str = e->name;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetErrorString(CUresult error, const char** str) {
  if (str == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const ErrorEntry* e = FindError(error);
  if (e == nullptr) {
    *str = nullptr;
    return CUDA_ERROR_INVALID_VALUE;
  }
  *str = e->description;
  return CUDA_SUCCESS;
}

}  // extern "C"
