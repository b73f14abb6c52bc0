// The driver's side of the NVML bridge (common/nvml_bridge.h): the table
// cuGetExportTable hands ferry's NVML stand-in, answered from the process's
// global Runtime.
#pragma once

namespace ferry::client {

// The FerryNvmlBridge table (static, immutable; any thread).
const void* NvmlBridgeTable();

}  // namespace ferry::client
