// For the generated NVML entry points the stand-in does not implement.
// Deliberately free of nvml.h: the generated definitions declare NVML's names
// without parameters.
#pragma once

namespace ferry::nvml {

// Logs `name` once (as not supported, with `reason` from
// client/nvml/unsupported_functions.txt, or nullptr) and returns
// NVML_ERROR_NOT_SUPPORTED as an int.
int UnsupportedCall(const char* name, const char* reason);

}  // namespace ferry::nvml
