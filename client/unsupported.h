// For generated entry points that ferry does not forward. Deliberately free of
// cuda.h: the generated stubs declare the driver's names without parameters.
#pragma once

namespace ferry::client {

// Logs `name` once (naming it as unsupported, with `reason` from
// unsupported_functions.txt when it is listed there, else nullptr) and
// returns CUDA_ERROR_NOT_SUPPORTED as an int.
int UnsupportedCall(const char* name, const char* reason);

}  // namespace ferry::client
