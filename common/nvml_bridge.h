// The NVML bridge: how ferry's NVML stand-in (client/nvml, libnvidia-ml.so.1)
// reaches ferryd through the session of ferry's stand-in driver
// (libcuda.so.1) in the same process, so that NVML never borrows a second
// slice for a program that has one already.
//
// The driver serves the bridge as one of its private export tables:
// cuGetExportTable(&table, &kFerryNvmlBridgeId) gives a FerryNvmlBridge.
// NVIDIA's driver does not know the id and refuses it, so asking is also how
// the stand-in tells ferry's driver from another. The layout only grows: a
// new member goes at the end, and `size` says which members a driver has.
//
// Contract: every function is thread-safe, never throws and returns a
// CUresult (0 = CUDA_SUCCESS). Device ordinals are the session's (what
// cuDeviceGet takes). Nothing here connects or borrows: before the program's
// cuInit succeeded, session_devices answers CUDA_ERROR_NOT_INITIALIZED.
//
// Deliberately free of cuda.h and nvml.h: both sides include it.
#pragma once

#include <stddef.h>
#include <stdint.h>

// The export-table id, 16 bytes: "ferry/nvml/v1" padded with zeros.
inline constexpr unsigned char kFerryNvmlBridgeId[16] = {'f', 'e', 'r', 'r', 'y', '/', 'n', 'v',
                                                         'm', 'l', '/', 'v', '1', 0,   0,   0};

// One device of the session as the handshake described it (never changes).
struct FerryNvmlDevice {
  char name[256];  // NUL-terminated
  unsigned char uuid[16];
  int pci_domain, pci_bus, pci_device;
  int compute_capability_major, compute_capability_minor;
  uint64_t total_memory;  // the slice's memory (the whole device without pools)
};

// What the server reports of one device now (wire DeviceTelemetry): memory is
// the session's (its quota and its use); utilization, temperature and power
// are the whole GPU's. -1: the server cannot read that figure.
struct FerryNvmlTelemetry {
  uint64_t memory_total, memory_used;
  int gpu_utilization, memory_utilization;  // percent
  int temperature_c;
  int power_milliwatts;
};

struct FerryNvmlBridge {
  size_t size;  // sizeof(FerryNvmlBridge) as the driver was built
  // *count = the session's devices; CUDA_ERROR_NOT_INITIALIZED before cuInit,
  // the session's failure once it broke.
  int (*session_devices)(int* count);
  int (*device)(int ordinal, FerryNvmlDevice* out);
  int (*driver_version)(int* version);  // as cuDriverGetVersion
  // One round trip (the wire call deviceTelemetry).
  int (*telemetry)(int ordinal, FerryNvmlTelemetry* out);
};
