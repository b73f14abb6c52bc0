// For generated entry points that ferry does not forward. Deliberately free of
// cuda.h: the generated stubs declare the driver's names without parameters.
#pragma once

namespace ferry::client {

// Logs `name` once (naming it as unsupported) and returns
// CUDA_ERROR_NOT_SUPPORTED as an int.
int UnsupportedCall(const char* name);

}  // namespace ferry::client
