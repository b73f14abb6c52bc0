/* e2e program nvml_query (C, against NVIDIA's nvml.h): what a monitoring
 * library in a CUDA program reads through ferry's NVML stand-in
 * (libnvidia-ml.so.1 beside ferry's libcuda.so.1).
 *
 * Checks: nvmlInit before cuInit fails with NVML_ERROR_DRIVER_NOT_LOADED (NVML
 * shares the program's session and borrows nothing itself); after cuInit the
 * device count, name, UUID, PCI bus id and compute capability agree with the
 * driver's answers, and the device is found again by index, UUID and PCI bus
 * id; no fabric is reported; memory (both versions) shows the slice (total = cuDeviceTotalMem) and
 * this session's use, which grows by an allocation and shrinks by its free;
 * the running compute processes are this process with that use; utilization
 * is answered (within 0..100), temperature and power are answered or
 * NVML_ERROR_NOT_SUPPORTED (as the program is told to expect:
 * FERRY_E2E_NVML_SENSORS=absent); bad arguments, a short buffer, a function
 * the stand-in lacks and calls after nvmlShutdown get NVML's errors. Prints
 * "all checks passed" and exits 0 when every check passes. */
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include <cuda.h>
#include <nvml.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* nvmlDeviceGetTemperature is deprecated in nvml.h 13 and still what tools call. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

static void Fail(const char* what, int line) {
  printf("FAIL line %d: %s\n", line, what);
  fflush(stdout);
  exit(1);
}

#define CHECK(cond)                     \
  do {                                  \
    if (!(cond)) Fail(#cond, __LINE__); \
  } while (0)
#define CHECK_CU(call) CHECK((call) == CUDA_SUCCESS)
#define CHECK_NVML(call) CHECK((call) == NVML_SUCCESS)

static const unsigned long long kAllocBytes = 8ull << 20; /* fits a 16 MiB slice */

static unsigned long long MemoryUsed(nvmlDevice_t device) {
  nvmlMemory_t memory;
  CHECK_NVML(nvmlDeviceGetMemoryInfo(device, &memory));
  CHECK(memory.used + memory.free == memory.total);
  return memory.used;
}

int main(void) {
  /* No session yet: NVML has nothing to answer from. */
  CHECK(nvmlInit_v2() == NVML_ERROR_DRIVER_NOT_LOADED);
  CHECK(nvmlDeviceGetCount_v2(&(unsigned){0}) == NVML_ERROR_UNINITIALIZED);
  printf("ok nvmlInit before cuInit: %s\n", nvmlErrorString(NVML_ERROR_DRIVER_NOT_LOADED));

  CHECK_CU(cuInit(0));
  CHECK_NVML(nvmlInit_v2());
  CHECK_NVML(nvmlInitWithFlags(0)); /* counted: two shutdowns below */

  int cuda_count = 0;
  unsigned count = 0;
  CHECK_CU(cuDeviceGetCount(&cuda_count));
  CHECK_NVML(nvmlDeviceGetCount_v2(&count));
  CHECK(count == (unsigned)cuda_count && count > 0);

  int driver = 0, nvml_driver = 0;
  CHECK_CU(cuDriverGetVersion(&driver));
  CHECK_NVML(nvmlSystemGetCudaDriverVersion_v2(&nvml_driver));
  CHECK(nvml_driver == driver);
  char text[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE];
  CHECK_NVML(nvmlSystemGetDriverVersion(text, sizeof(text)));
  CHECK(strncmp(text, "ferry-", 6) == 0);
  printf("ok %u device(s), CUDA driver %d, driver \"%s\"\n", count, nvml_driver, text);

  CUdevice cu_device;
  CHECK_CU(cuDeviceGet(&cu_device, 0));
  nvmlDevice_t device = NULL, again = NULL;
  CHECK_NVML(nvmlDeviceGetHandleByIndex_v2(0, &device));
  unsigned index = 99;
  CHECK_NVML(nvmlDeviceGetIndex(device, &index));
  CHECK(index == 0);

  char cu_name[256], name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
  CHECK_CU(cuDeviceGetName(cu_name, sizeof(cu_name), cu_device));
  CHECK_NVML(nvmlDeviceGetName(device, name, sizeof(name)));
  CHECK(strcmp(name, cu_name) == 0);
  CHECK(nvmlDeviceGetName(device, name, 2) == NVML_ERROR_INSUFFICIENT_SIZE);

  /* UUID: "GPU-" and the driver's 16 bytes as 8-4-4-4-12 hex digits. */
  CUuuid cu_uuid;
  CHECK_CU(cuDeviceGetUuid_v2(&cu_uuid, cu_device));
  char expected_uuid[64], uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
  int at = sprintf(expected_uuid, "GPU-");
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) expected_uuid[at++] = '-';
    at += sprintf(expected_uuid + at, "%02x", (unsigned char)cu_uuid.bytes[i]);
  }
  CHECK_NVML(nvmlDeviceGetUUID(device, uuid, sizeof(uuid)));
  CHECK(strcmp(uuid, expected_uuid) == 0);
  CHECK_NVML(nvmlDeviceGetHandleByUUID(uuid, &again));
  CHECK(again == device);
  CHECK(nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000", &again) ==
        NVML_ERROR_NOT_FOUND);

  char cu_bus_id[32];
  CHECK_CU(cuDeviceGetPCIBusId(cu_bus_id, sizeof(cu_bus_id), cu_device));
  nvmlPciInfo_t pci;
  CHECK_NVML(nvmlDeviceGetPciInfo_v3(device, &pci));
  CHECK(pci.bus == (unsigned)strtoul(strchr(cu_bus_id, ':') + 1, NULL, 16));
  CHECK_NVML(nvmlDeviceGetHandleByPciBusId_v2(cu_bus_id, &again));
  CHECK(again == device);
  CHECK_NVML(nvmlDeviceGetHandleByPciBusId_v2(pci.busId, &again));
  CHECK(again == device);
  printf("ok device 0 \"%s\" %s at %s\n", name, uuid, pci.busId);

  int major = 0, minor = 0, cu_major = 0, cu_minor = 0;
  CHECK_NVML(nvmlDeviceGetCudaComputeCapability(device, &major, &minor));
  CHECK_CU(
      cuDeviceGetAttribute(&cu_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, cu_device));
  CHECK_CU(
      cuDeviceGetAttribute(&cu_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, cu_device));
  CHECK(major == cu_major && minor == cu_minor);

  nvmlGpuFabricInfoV_t fabric;
  memset(&fabric, 0xff, sizeof(fabric));
  fabric.version = nvmlGpuFabricInfo_v3;
  CHECK_NVML(nvmlDeviceGetGpuFabricInfoV(device, &fabric));
  CHECK(fabric.state == NVML_GPU_FABRIC_STATE_NOT_SUPPORTED && fabric.cliqueId == 0);

  /* Memory: the slice and this session's use. */
  size_t cu_total = 0;
  CHECK_CU(cuDeviceTotalMem_v2(&cu_total, cu_device));
  CUcontext context;
  CHECK_CU(cuDevicePrimaryCtxRetain(&context, cu_device));
  CHECK_CU(cuCtxSetCurrent(context));
  nvmlMemory_t memory;
  CHECK_NVML(nvmlDeviceGetMemoryInfo(device, &memory));
  CHECK(memory.total == cu_total);
  const unsigned long long before = memory.used;
  CUdeviceptr block = 0;
  CHECK_CU(cuMemAlloc_v2(&block, kAllocBytes));
  const unsigned long long holding = MemoryUsed(device);
  CHECK(holding == before + kAllocBytes);
  nvmlMemory_v2_t memory_v2;
  memset(&memory_v2, 0, sizeof(memory_v2));
  CHECK(nvmlDeviceGetMemoryInfo_v2(device, &memory_v2) == NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
  memory_v2.version = nvmlMemory_v2;
  CHECK_NVML(nvmlDeviceGetMemoryInfo_v2(device, &memory_v2));
  CHECK(memory_v2.total == cu_total && memory_v2.used == holding);
  printf("ok memory: total %llu (cuDeviceTotalMem), used %llu -> %llu with %llu allocated\n",
         memory.total, before, holding, kAllocBytes);

  unsigned processes = 0;
  CHECK(nvmlDeviceGetComputeRunningProcesses_v3(device, &processes, NULL) ==
        NVML_ERROR_INSUFFICIENT_SIZE);
  CHECK(processes == 1);
  nvmlProcessInfo_t info[4];
  processes = 4;
  CHECK_NVML(nvmlDeviceGetComputeRunningProcesses_v3(device, &processes, info));
  CHECK(processes == 1 && info[0].pid == (unsigned)getpid() && info[0].usedGpuMemory == holding);
  processes = 4;
  CHECK_NVML(nvmlDeviceGetGraphicsRunningProcesses_v3(device, &processes, info));
  CHECK(processes == 0);

  CHECK_CU(cuMemFree_v2(block));
  CHECK_CU(cuCtxSynchronize());
  /* The free's quota comes back once the release happened. */
  unsigned long long after = holding;
  for (int i = 0; i < 200 && after != before; ++i) {
    after = MemoryUsed(device);
    if (after != before) usleep(10000);
  }
  CHECK(after == before);
  printf("ok memory after cuMemFree: used %llu\n", after);

  nvmlUtilization_t utilization;
  CHECK_NVML(nvmlDeviceGetUtilizationRates(device, &utilization));
  CHECK(utilization.gpu <= 100 && utilization.memory <= 100);
  printf("ok utilization gpu %u%% memory %u%%\n", utilization.gpu, utilization.memory);

  unsigned temperature = 0, power = 0;
  const nvmlReturn_t temperature_result =
      nvmlDeviceGetTemperature(device, NVML_TEMPERATURE_GPU, &temperature);
  const nvmlReturn_t power_result = nvmlDeviceGetPowerUsage(device, &power);
  const char* sensors = getenv("FERRY_E2E_NVML_SENSORS");
  if (sensors != NULL && strcmp(sensors, "absent") == 0) {
    CHECK(temperature_result == NVML_ERROR_NOT_SUPPORTED);
    CHECK(power_result == NVML_ERROR_NOT_SUPPORTED);
  } else {
    CHECK(temperature_result == NVML_SUCCESS || temperature_result == NVML_ERROR_NOT_SUPPORTED);
    CHECK(power_result == NVML_SUCCESS || power_result == NVML_ERROR_NOT_SUPPORTED);
  }
  printf("ok temperature: %s, power: %s\n", nvmlErrorString(temperature_result),
         nvmlErrorString(power_result));

  /* Errors. */
  CHECK(nvmlDeviceGetHandleByIndex_v2(count, &again) == NVML_ERROR_INVALID_ARGUMENT);
  CHECK(nvmlDeviceGetName((nvmlDevice_t)&count, name, sizeof(name)) == NVML_ERROR_INVALID_ARGUMENT);
  unsigned fan = 0;
  CHECK(nvmlDeviceGetFanSpeed(device, &fan) == NVML_ERROR_NOT_SUPPORTED);
  CHECK_NVML(nvmlShutdown());
  CHECK_NVML(nvmlDeviceGetCount_v2(&count)); /* one reference left */
  CHECK_NVML(nvmlShutdown());
  CHECK(nvmlDeviceGetCount_v2(&count) == NVML_ERROR_UNINITIALIZED);
  CHECK(nvmlShutdown() == NVML_ERROR_UNINITIALIZED);

  CHECK_CU(cuDevicePrimaryCtxRelease_v2(cu_device));
  printf("all checks passed\n");
  return 0;
}
