// ferry's NVML stand-in (libnvidia-ml.so.1): the NVML entry points it
// implements, answered for the devices the program borrowed through ferry.
//
// How it reaches ferryd: through the session of ferry's stand-in driver in
// the same process (common/nvml_bridge.h). PyTorch, CuPy and nvidia-ml-py
// inside a CUDA program load libnvidia-ml.so.1 next to libcuda.so.1; sharing
// the driver's session means NVML sees exactly the program's devices (its
// slices, their quota and its own use) and never borrows a second slice. A
// process without that session (ferry's libcuda.so.1 not loaded, or cuInit
// not called or failed) gets NVML_ERROR_DRIVER_NOT_LOADED from nvmlInit with
// one log line saying why: NVML never connects or borrows on its own, so a
// monitoring-only tool cannot take a GPU from a borrower by looking (it uses
// `ferryctl status` instead; client/nvml/README.md).
//
// What is answered locally (from the handshake, never changes): the device
// count, handles by index, UUID and PCI bus id, name, UUID, PCI info,
// compute capability, the CUDA driver version, the fabric (none). What asks the server (one
// round trip, the wire call deviceTelemetry): memory (the slice's quota as
// total and the session's use), utilization, temperature, power and the
// running processes (this process, with the session's use). Every other
// NVML function is a generated stub returning NVML_ERROR_NOT_SUPPORTED
// (unsupported_functions.txt).
//
// Thread-safety: every entry point is thread-safe. nvmlInit/nvmlShutdown
// count references as NVML does; the device records are made once, at the
// first successful nvmlInit, and never change or go away, so a handle stays a
// valid pointer (calls with it after the last nvmlShutdown answer
// NVML_ERROR_UNINITIALIZED).
#define NVML_NO_UNVERSIONED_FUNC_DEFS  // define nvmlInit and nvmlInit_v2 alike
#include <cuda.h>
#include <dlfcn.h>
#include <nvml.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>

#include "client/nvml/unsupported.h"
#include "common/log.h"
#include "common/nvml_bridge.h"

#ifndef FERRY_VERSION
#define FERRY_VERSION "unknown"
#endif

namespace ferry::nvml {
namespace {

// One device of the session; nvmlDevice_t points at one of these.
struct DeviceRecord {
  unsigned index = 0;
  FerryNvmlDevice info{};
};

struct State {
  std::mutex mu;                            // nvmlInit / nvmlShutdown
  std::atomic<int> init_count{0};           // NVML's reference count
  const FerryNvmlBridge* bridge = nullptr;  // set once, with the records
  std::deque<DeviceRecord> devices;         // filled once, then read-only
};

State& GetState() {
  static State* state = new State;  // never destroyed: handles outlive atexit
  return *state;
}

nvmlReturn_t FromCuda(int result) {
  switch (result) {
    case CUDA_SUCCESS:
      return NVML_SUCCESS;
    case CUDA_ERROR_NOT_SUPPORTED:
      return NVML_ERROR_NOT_SUPPORTED;
    case CUDA_ERROR_INVALID_DEVICE:
    case CUDA_ERROR_INVALID_VALUE:
      return NVML_ERROR_INVALID_ARGUMENT;
    case CUDA_ERROR_NOT_PERMITTED:
      return NVML_ERROR_NO_PERMISSION;
    case CUDA_ERROR_DEVICE_UNAVAILABLE:
      return NVML_ERROR_GPU_IS_LOST;  // the server went away or took the devices back
    case CUDA_ERROR_NOT_INITIALIZED:
      return NVML_ERROR_UNINITIALIZED;
    default:
      return NVML_ERROR_UNKNOWN;
  }
}

// The bridge of ferry's driver loaded in this process, or null with *why.
// dlopen with RTLD_NOLOAD finds the library only if the program loaded it:
// NVML never loads a driver (that would start nothing, but cost a search).
const FerryNvmlBridge* FindBridge(std::string* why) {
  void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (driver == nullptr) {
    *why = "libcuda.so.1 is not loaded in this process";
    return nullptr;
  }
  using GetExportTable = int (*)(const void**, const void*);
  auto get = reinterpret_cast<GetExportTable>(dlsym(driver, "cuGetExportTable"));
  const void* table = nullptr;
  const int result = get != nullptr ? get(&table, kFerryNvmlBridgeId) : -1;
  dlclose(driver);  // the program's own reference keeps it loaded
  if (result != CUDA_SUCCESS || table == nullptr) {
    *why = "the libcuda.so.1 of this process is not ferry's";
    return nullptr;
  }
  const auto* bridge = static_cast<const FerryNvmlBridge*>(table);
  if (bridge->size < sizeof(FerryNvmlBridge)) {
    *why = "ferry's libcuda.so.1 in this process is older than this NVML stand-in";
    return nullptr;
  }
  return bridge;
}

nvmlReturn_t Init() {
  State& state = GetState();
  std::lock_guard<std::mutex> lock(state.mu);
  if (state.init_count.load() > 0) {
    state.init_count.fetch_add(1);
    return NVML_SUCCESS;
  }
  if (state.bridge == nullptr) {
    std::string why;
    const FerryNvmlBridge* bridge = FindBridge(&why);
    int count = 0;
    int result = CUDA_ERROR_NOT_INITIALIZED;
    if (bridge != nullptr) {
      result = bridge->session_devices(&count);
      if (result == CUDA_ERROR_NOT_INITIALIZED) {
        why = "the program has not called cuInit (NVML shares its ferry session)";
      } else if (result != CUDA_SUCCESS) {
        why = "the program's ferry session failed (CUresult " + std::to_string(result) + ")";
      }
    }
    if (bridge == nullptr || result != CUDA_SUCCESS) {
      FERRY_LOG(kWarning) << "nvmlInit: ferry's NVML answers for the ferry session of this "
                             "process and has none: "
                          << why << "; it returns NVML_ERROR_DRIVER_NOT_LOADED";
      return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    for (int i = 0; i < count; ++i) {
      DeviceRecord record;
      record.index = static_cast<unsigned>(i);
      const int described = bridge->device(i, &record.info);
      if (described != CUDA_SUCCESS) {
        state.devices.clear();
        return FromCuda(described);
      }
      state.devices.push_back(record);
    }
    state.bridge = bridge;
  }
  state.init_count.fetch_add(1);
  return NVML_SUCCESS;
}

// The record a handle names, or null (NVML_ERROR_INVALID_ARGUMENT).
const DeviceRecord* FindDevice(nvmlDevice_t device) {
  for (const DeviceRecord& record : GetState().devices) {
    if (reinterpret_cast<nvmlDevice_t>(const_cast<DeviceRecord*>(&record)) == device) {
      return &record;
    }
  }
  return nullptr;
}

nvmlDevice_t HandleOf(const DeviceRecord& record) {
  return reinterpret_cast<nvmlDevice_t>(const_cast<DeviceRecord*>(&record));
}

bool Initialized() { return GetState().init_count.load() > 0; }

// Runs `body` on the record `device` names, after the checks every device
// query makes.
template <typename Body>
nvmlReturn_t OnDevice(nvmlDevice_t device, Body&& body) {
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  const DeviceRecord* record = FindDevice(device);
  if (record == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  return body(*record);
}

// The server's figures for `record` now (one round trip).
nvmlReturn_t ReadTelemetry(const DeviceRecord& record, FerryNvmlTelemetry* out) {
  *out = FerryNvmlTelemetry{};
  return FromCuda(GetState().bridge->telemetry(static_cast<int>(record.index), out));
}

// Copies `text` with its NUL into `out` of `length` bytes.
nvmlReturn_t CopyText(const std::string& text, char* out, unsigned length) {
  if (out == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (text.size() + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  std::memcpy(out, text.c_str(), text.size() + 1);
  return NVML_SUCCESS;
}

// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as NVML and nvidia-smi write it.
std::string UuidText(const unsigned char (&uuid)[16]) {
  std::string text = "GPU-";
  char hex[3];
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) text += '-';
    std::snprintf(hex, sizeof(hex), "%02x", uuid[i]);
    text += hex;
  }
  return text;
}

bool SameTextIgnoringCase(const char* a, const std::string& b) {
  size_t i = 0;
  for (; a[i] != '\0' && i < b.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return a[i] == '\0' && i == b.size();
}

// "domain:bus:device.function" (hex; the domain may be left out).
bool ParsePciBusId(const char* text, unsigned* domain, unsigned* bus, unsigned* device) {
  unsigned function = 0;
  char tail = 0;
  if (std::sscanf(text, "%x:%x:%x.%x%c", domain, bus, device, &function, &tail) == 4) return true;
  *domain = 0;
  return std::sscanf(text, "%x:%x.%x%c", bus, device, &function, &tail) == 3;
}

// Processes on the device: this one (its session holds the device) with the
// session's use. `Info` is nvmlProcessInfo_v1_t or nvmlProcessInfo_v2_t.
template <typename Info>
nvmlReturn_t RunningProcesses(nvmlDevice_t device, unsigned* count, Info* infos) {
  return OnDevice(device, [&](const DeviceRecord& record) {
    if (count == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
    FerryNvmlTelemetry telemetry;
    if (nvmlReturn_t r = ReadTelemetry(record, &telemetry); r != NVML_SUCCESS) return r;
    if (*count < 1) {
      *count = 1;
      return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (infos == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
    infos[0] = Info{};
    infos[0].pid = static_cast<unsigned>(getpid());
    infos[0].usedGpuMemory = telemetry.memory_used;
    if constexpr (requires { infos[0].gpuInstanceId; }) {
      infos[0].gpuInstanceId = 0xFFFFFFFFu;  // no MIG
      infos[0].computeInstanceId = 0xFFFFFFFFu;
    }
    *count = 1;
    return NVML_SUCCESS;
  });
}

// No graphics work runs through ferry.
nvmlReturn_t NoProcesses(nvmlDevice_t device, unsigned* count) {
  return OnDevice(device, [&](const DeviceRecord&) {
    if (count == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
    *count = 0;
    return NVML_SUCCESS;
  });
}

}  // namespace

int UnsupportedCall(const char* name, const char* reason) {
  static auto* mu = new std::mutex;
  static auto* logged = new std::deque<std::string>;
  std::lock_guard<std::mutex> lock(*mu);
  for (const std::string& seen : *logged) {
    if (seen == name) return NVML_ERROR_NOT_SUPPORTED;
  }
  logged->emplace_back(name);
  FERRY_LOG(kWarning) << name << " is not supported by ferry's NVML"
                      << (reason != nullptr ? std::string(" (") + reason + ")" : std::string())
                      << "; it returns NVML_ERROR_NOT_SUPPORTED";
  return NVML_ERROR_NOT_SUPPORTED;
}

}  // namespace ferry::nvml

using namespace ferry::nvml;  // NOLINT: the entry points below are NVML's C names

extern "C" {

// --- initialization ------------------------------------------------------------

nvmlReturn_t nvmlInit_v2() { return Init(); }
nvmlReturn_t nvmlInit() { return Init(); }
// Flags (no GPUs needed, no attach) change nothing: the stand-in attaches to
// nothing, and a session always has its devices.
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { return Init(); }

nvmlReturn_t nvmlShutdown() {
  State& state = GetState();
  std::lock_guard<std::mutex> lock(state.mu);
  if (state.init_count.load() == 0) return NVML_ERROR_UNINITIALIZED;
  state.init_count.fetch_sub(1);
  return NVML_SUCCESS;
}

const char* nvmlErrorString(nvmlReturn_t result) {
  switch (result) {
    case NVML_SUCCESS:
      return "Success";
    case NVML_ERROR_UNINITIALIZED:
      return "NVML was not initialized (nvmlInit)";
    case NVML_ERROR_INVALID_ARGUMENT:
      return "Invalid argument";
    case NVML_ERROR_NOT_SUPPORTED:
      return "Not supported";
    case NVML_ERROR_NO_PERMISSION:
      return "No permission";
    case NVML_ERROR_NOT_FOUND:
      return "Not found";
    case NVML_ERROR_INSUFFICIENT_SIZE:
      return "Insufficient size";
    case NVML_ERROR_DRIVER_NOT_LOADED:
      return "No ferry session in this process";
    case NVML_ERROR_GPU_IS_LOST:
      return "The GPU is lost (the ferry server is gone or took it back)";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH:
      return "Structure version mismatch";
    case NVML_ERROR_UNKNOWN:
      return "Unknown error";
    default:
      return "Unknown error code";
  }
}

// --- system --------------------------------------------------------------------

// No NVIDIA display driver runs here; the version is ferry's.
nvmlReturn_t nvmlSystemGetDriverVersion(char* version, unsigned int length) {
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  return CopyText(std::string("ferry-") + FERRY_VERSION, version, length);
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char* version, unsigned int length) {
  return CopyText(std::string(NVML_API_VERSION_STR ".ferry-") + FERRY_VERSION, version, length);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int* cuda_driver_version) {
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  if (cuda_driver_version == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  return FromCuda(GetState().bridge->driver_version(cuda_driver_version));
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int* cuda_driver_version) {
  return nvmlSystemGetCudaDriverVersion_v2(cuda_driver_version);
}

// --- devices: identity (from the handshake) -----------------------------------------

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int* count) {
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  if (count == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *count = static_cast<unsigned>(GetState().devices.size());
  return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCount(unsigned int* count) { return nvmlDeviceGetCount_v2(count); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t* device) {
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  const std::deque<DeviceRecord>& devices = GetState().devices;
  if (device == nullptr || index >= devices.size()) return NVML_ERROR_INVALID_ARGUMENT;
  *device = HandleOf(devices[index]);
  return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t* device) {
  return nvmlDeviceGetHandleByIndex_v2(index, device);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char* uuid, nvmlDevice_t* device) {
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  if (uuid == nullptr || device == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  for (const DeviceRecord& record : GetState().devices) {
    if (SameTextIgnoringCase(uuid, UuidText(record.info.uuid))) {
      *device = HandleOf(record);
      return NVML_SUCCESS;
    }
  }
  return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char* pci_bus_id, nvmlDevice_t* device) {
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  unsigned domain = 0, bus = 0, dev = 0;
  if (pci_bus_id == nullptr || device == nullptr ||
      !ParsePciBusId(pci_bus_id, &domain, &bus, &dev)) {
    return NVML_ERROR_INVALID_ARGUMENT;
  }
  for (const DeviceRecord& record : GetState().devices) {
    if (static_cast<unsigned>(record.info.pci_domain) == domain &&
        static_cast<unsigned>(record.info.pci_bus) == bus &&
        static_cast<unsigned>(record.info.pci_device) == dev) {
      *device = HandleOf(record);
      return NVML_SUCCESS;
    }
  }
  return NVML_ERROR_NOT_FOUND;
}
nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char* pci_bus_id, nvmlDevice_t* device) {
  return nvmlDeviceGetHandleByPciBusId_v2(pci_bus_id, device);
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int* index) {
  return OnDevice(device, [&](const DeviceRecord& record) {
    if (index == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
    *index = record.index;
    return NVML_SUCCESS;
  });
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char* name, unsigned int length) {
  return OnDevice(
      device, [&](const DeviceRecord& record) { return CopyText(record.info.name, name, length); });
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char* uuid, unsigned int length) {
  return OnDevice(device, [&](const DeviceRecord& record) {
    return CopyText(UuidText(record.info.uuid), uuid, length);
  });
}

// The PCI ids the server's driver reports for the GPU (on the GPU host).
// The PCI device and subsystem ids are not known: 0.
nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t* pci) {
  return OnDevice(device, [&](const DeviceRecord& record) {
    if (pci == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
    *pci = nvmlPciInfo_t{};
    pci->domain = static_cast<unsigned>(record.info.pci_domain);
    pci->bus = static_cast<unsigned>(record.info.pci_bus);
    pci->device = static_cast<unsigned>(record.info.pci_device);
    std::snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT,
                  pci->domain & 0xFFFFu, pci->bus, pci->device);
    std::snprintf(pci->busId, sizeof(pci->busId), NVML_DEVICE_PCI_BUS_ID_FMT, pci->domain, pci->bus,
                  pci->device);
    return NVML_SUCCESS;
  });
}

// No fabric (NVLink/NVSwitch) reaches a borrowed device: the probe state is
// "not supported", as NVML reports for a GPU outside any fabric. PyTorch asks
// this before it uses expandable segments.
nvmlReturn_t nvmlDeviceGetGpuFabricInfoV(nvmlDevice_t device, nvmlGpuFabricInfoV_t* info) {
  return OnDevice(device, [&](const DeviceRecord&) {
    if (info == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
    const unsigned version = info->version;
    size_t bytes = 0;
    if (version == nvmlGpuFabricInfo_v3) {
      bytes = sizeof(nvmlGpuFabricInfo_v3_t);
    } else if (version == nvmlGpuFabricInfo_v2) {
      bytes = sizeof(nvmlGpuFabricInfo_v2_t);
    } else {
      return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    }
    std::memset(static_cast<void*>(info), 0, bytes);
    info->version = version;
    info->status = NVML_SUCCESS;
    info->state = NVML_GPU_FABRIC_STATE_NOT_SUPPORTED;
    return NVML_SUCCESS;
  });
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int* major, int* minor) {
  return OnDevice(device, [&](const DeviceRecord& record) {
    if (major == nullptr || minor == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
    *major = record.info.compute_capability_major;
    *minor = record.info.compute_capability_minor;
    return NVML_SUCCESS;
  });
}

// --- devices: figures (from the server) ----------------------------------------------

// The slice's quota as the total and the session's allocations as used.
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t* memory) {
  return OnDevice(device, [&](const DeviceRecord& record) {
    if (memory == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
    FerryNvmlTelemetry t;
    if (nvmlReturn_t r = ReadTelemetry(record, &t); r != NVML_SUCCESS) return r;
    memory->total = t.memory_total;
    memory->used = t.memory_used;
    memory->free = t.memory_total > t.memory_used ? t.memory_total - t.memory_used : 0;
    return NVML_SUCCESS;
  });
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t* memory) {
  return OnDevice(device, [&](const DeviceRecord& record) {
    if (memory == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    FerryNvmlTelemetry t;
    if (nvmlReturn_t r = ReadTelemetry(record, &t); r != NVML_SUCCESS) return r;
    memory->total = t.memory_total;
    memory->reserved = 0;
    memory->used = t.memory_used;
    memory->free = t.memory_total > t.memory_used ? t.memory_total - t.memory_used : 0;
    return NVML_SUCCESS;
  });
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t* utilization) {
  return OnDevice(device, [&](const DeviceRecord& record) {
    if (utilization == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
    FerryNvmlTelemetry t;
    if (nvmlReturn_t r = ReadTelemetry(record, &t); r != NVML_SUCCESS) return r;
    if (t.gpu_utilization < 0 || t.memory_utilization < 0) return NVML_ERROR_NOT_SUPPORTED;
    utilization->gpu = static_cast<unsigned>(t.gpu_utilization);
    utilization->memory = static_cast<unsigned>(t.memory_utilization);
    return NVML_SUCCESS;
  });
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensor,
                                      unsigned int* temperature) {
  return OnDevice(device, [&](const DeviceRecord& record) {
    if (temperature == nullptr || sensor != NVML_TEMPERATURE_GPU) {
      return NVML_ERROR_INVALID_ARGUMENT;
    }
    FerryNvmlTelemetry t;
    if (nvmlReturn_t r = ReadTelemetry(record, &t); r != NVML_SUCCESS) return r;
    if (t.temperature_c < 0) return NVML_ERROR_NOT_SUPPORTED;
    *temperature = static_cast<unsigned>(t.temperature_c);
    return NVML_SUCCESS;
  });
}

nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t device, nvmlTemperature_t* temperature) {
  if (temperature == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (temperature->version != nvmlTemperature_v1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
  unsigned value = 0;
  nvmlReturn_t result = nvmlDeviceGetTemperature(device, temperature->sensorType, &value);
  if (result == NVML_SUCCESS) temperature->temperature = static_cast<int>(value);
  return result;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int* power) {
  return OnDevice(device, [&](const DeviceRecord& record) {
    if (power == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
    FerryNvmlTelemetry t;
    if (nvmlReturn_t r = ReadTelemetry(record, &t); r != NVML_SUCCESS) return r;
    if (t.power_milliwatts < 0) return NVML_ERROR_NOT_SUPPORTED;
    *power = static_cast<unsigned>(t.power_milliwatts);
    return NVML_SUCCESS;
  });
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int* count,
                                                     nvmlProcessInfo_t* infos) {
  return RunningProcesses(device, count, infos);
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int* count,
                                                     nvmlProcessInfo_v2_t* infos) {
  return RunningProcesses(device, count, infos);
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device, unsigned int* count,
                                                  nvmlProcessInfo_v1_t* infos) {
  return RunningProcesses(device, count, infos);
}

nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int* count,
                                                      nvmlProcessInfo_t*) {
  return NoProcesses(device, count);
}
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t device, unsigned int* count,
                                                      nvmlProcessInfo_v2_t*) {
  return NoProcesses(device, count);
}
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t device, unsigned int* count,
                                                   nvmlProcessInfo_v1_t*) {
  return NoProcesses(device, count);
}

}  // extern "C"
