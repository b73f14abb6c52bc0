// The one place where a ferry Status becomes the CUresult a program sees
// (README.md invariant 8), and the guard that keeps C++ exceptions from crossing
// the extern "C" boundary.
#pragma once

#include <cuda.h>

#include "common/status.h"

namespace ferry::client {

inline CUresult ToCuResult(const Status& status) {
  if (status.ok()) return CUDA_SUCCESS;
  // A lost or unreachable server is reported as an unavailable device, never
  // as a fault of the program's own GPU work.
  if (status.code() == StatusCode::kDisconnected) return CUDA_ERROR_DEVICE_UNAVAILABLE;
  return static_cast<CUresult>(status.cuda_result());
}

// Runs an entry point's body; any exception becomes CUDA_ERROR_UNKNOWN.
template <typename Body>
CUresult Api(Body&& body) noexcept {
  try {
    return ToCuResult(body());
  } catch (...) {
    return CUDA_ERROR_UNKNOWN;
  }
}

// Logs `name` once (with `reason`, if given) and returns
// CUDA_ERROR_NOT_SUPPORTED (README.md invariant 1).
CUresult Unsupported(const char* name, const char* reason = nullptr);

}  // namespace ferry::client
