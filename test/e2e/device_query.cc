// e2e program 1, device_query: what a program learns about the GPU before it
// uses it. Checks cuInit, the driver version, device count and handles, name,
// UUID, PCI bus id (and that it agrees with the PCI attributes and maps back
// to the device), total memory, a set of attributes with sane ranges, the
// errors for an invalid ordinal and an invalid attribute, and
// cuGetErrorName / cuGetErrorString. Exits 0 when every check passes.
#include <cuda.h>

#include <cstdio>
#include <cstring>

#include "driver_check.h"

namespace {

using ::ferry::e2e::Ok;

// Attributes every CUDA device reports, with the range a sane value lies in.
struct AttributeRange {
  CUdevice_attribute attribute;
  const char* name;
  int min;
  int max;
};

constexpr AttributeRange kAttributes[] = {
    {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "compute capability major", 3, 20},
    {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "compute capability minor", 0, 9},
    {CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "multiprocessor count", 1, 100000},
    {CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, "max threads per block", 32, 4096},
    {CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, "max block dim x", 32, 4096},
    {CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, "max grid dim x", 65535, 0x7fffffff},
    {CU_DEVICE_ATTRIBUTE_WARP_SIZE, "warp size", 32, 32},
    {CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, "max shared memory per block", 16 * 1024,
     64 * 1024 * 1024},
    {CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, "unified addressing", 1, 1},
    {CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, "PCI domain id", 0, 0xffff},
    {CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, "PCI bus id", 0, 0xff},
    {CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, "PCI device id", 0, 0x1f},
};

int Attribute(CUdevice_attribute attribute, CUdevice device) {
  int value = 0;
  E2E_CHECK_CU(cuDeviceGetAttribute(&value, attribute, device));
  return value;
}

void CheckDevice(int ordinal) {
  CUdevice device = -1;
  E2E_CHECK_CU(cuDeviceGet(&device, ordinal));
  Ok("cuDeviceGet(%d) = %d", ordinal, device);

  char name[256];
  std::memset(name, 0x7f, sizeof(name));
  E2E_CHECK_CU(cuDeviceGetName(name, sizeof(name), device));
  E2E_CHECK(std::memchr(name, '\0', sizeof(name)) != nullptr,
            "name is not NUL-terminated within %zu bytes", sizeof(name));
  E2E_CHECK(name[0] != '\0', "empty device name");
  Ok("device %d name \"%s\"", ordinal, name);

  CUuuid uuid;
  std::memset(&uuid, 0, sizeof(uuid));
  E2E_CHECK_CU(cuDeviceGetUuid(&uuid, device));
  bool all_zero = true;
  char uuid_text[2 * sizeof(uuid.bytes) + 1];
  for (size_t i = 0; i < sizeof(uuid.bytes); ++i) {
    all_zero = all_zero && uuid.bytes[i] == 0;
    std::snprintf(uuid_text + 2 * i, 3, "%02x", static_cast<unsigned char>(uuid.bytes[i]));
  }
  E2E_CHECK(!all_zero, "UUID is all zeros");
  Ok("device %d UUID %s", ordinal, uuid_text);

  char bus_id[64];
  E2E_CHECK_CU(cuDeviceGetPCIBusId(bus_id, sizeof(bus_id), device));
  unsigned domain = 0, bus = 0, slot = 0, function = 0;
  E2E_CHECK(std::sscanf(bus_id, "%x:%x:%x.%x", &domain, &bus, &slot, &function) == 4,
            "PCI bus id \"%s\" is not DOMAIN:BUS:DEVICE.FUNCTION", bus_id);
  E2E_CHECK(domain == static_cast<unsigned>(Attribute(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, device)) &&
                bus == static_cast<unsigned>(Attribute(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, device)) &&
                slot == static_cast<unsigned>(Attribute(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, device)),
            "PCI bus id \"%s\" disagrees with the PCI attributes", bus_id);
  CUdevice by_bus_id = -1;
  E2E_CHECK_CU(cuDeviceGetByPCIBusId(&by_bus_id, bus_id));
  E2E_CHECK(by_bus_id == device, "cuDeviceGetByPCIBusId(\"%s\") = %d, not %d", bus_id, by_bus_id,
            device);
  Ok("device %d PCI bus id %s (matches attributes, maps back)", ordinal, bus_id);

  size_t total = 0;
  E2E_CHECK_CU(cuDeviceTotalMem(&total, device));
  E2E_CHECK(total >= (size_t{64} << 20), "total memory %zu < 64 MiB", total);
  Ok("device %d total memory %zu bytes", ordinal, total);

  for (const AttributeRange& range : kAttributes) {
    int value = Attribute(range.attribute, device);
    E2E_CHECK(value >= range.min && value <= range.max, "%s = %d, outside [%d, %d]", range.name,
              value, range.min, range.max);
    Ok("device %d %s = %d", ordinal, range.name, value);
  }
  int value = 0;
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_VALUE,
                cuDeviceGetAttribute(&value, CU_DEVICE_ATTRIBUTE_MAX, device));
}

void CheckErrorStrings() {
  const char* text = nullptr;
  E2E_CHECK_CU(cuGetErrorName(CUDA_ERROR_INVALID_DEVICE, &text));
  E2E_CHECK(text != nullptr && std::strcmp(text, "CUDA_ERROR_INVALID_DEVICE") == 0,
            "cuGetErrorName(CUDA_ERROR_INVALID_DEVICE) = \"%s\"", text ? text : "(null)");
  Ok("cuGetErrorName(101) = \"%s\"", text);
  text = nullptr;
  E2E_CHECK_CU(cuGetErrorString(CUDA_ERROR_OUT_OF_MEMORY, &text));
  E2E_CHECK(text != nullptr && text[0] != '\0', "empty cuGetErrorString(CUDA_ERROR_OUT_OF_MEMORY)");
  Ok("cuGetErrorString(2) = \"%s\"", text);
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_VALUE, cuGetErrorName(static_cast<CUresult>(9999), &text));
}

}  // namespace

int main() {
  E2E_CHECK_CU(cuInit(0));
  Ok("cuInit(0)");

  int version = 0;
  E2E_CHECK_CU(cuDriverGetVersion(&version));
  E2E_CHECK(version >= 13000, "driver version %d < 13000", version);
  Ok("cuDriverGetVersion = %d", version);

  int count = 0;
  E2E_CHECK_CU(cuDeviceGetCount(&count));
  E2E_CHECK(count >= 1 && count <= 64, "device count %d", count);
  Ok("cuDeviceGetCount = %d", count);

  for (int ordinal = 0; ordinal < count && ordinal < 8; ++ordinal) {
    CheckDevice(ordinal);
  }

  CUdevice device = -1;
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_DEVICE, cuDeviceGet(&device, count));
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_DEVICE, cuDeviceGet(&device, -1));
  char name[64];
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_DEVICE, cuDeviceGetName(name, sizeof(name), count));
  int value = 0;
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_DEVICE,
                cuDeviceGetAttribute(&value, CU_DEVICE_ATTRIBUTE_WARP_SIZE, count));
  size_t total = 0;
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_DEVICE, cuDeviceTotalMem(&total, count));

  CheckErrorStrings();
  std::printf("device_query: all checks passed\n");
  return 0;
}
