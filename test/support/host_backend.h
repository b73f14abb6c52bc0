// A HostBackend for tests that only need a CPU stand-in GPU of a given size.
//
// Header only: ferry_test_support does not link the host backend, so the test
// that includes this links ferry_host_backend (directly or through
// ferry_server).
//
// Thread-safety: a free function; the backend it makes follows the
// GpuBackend contract.
#pragma once

#include <cstdint>
#include <memory>

#include "common/status.h"
#include "server/backend/host/host_backend.h"

namespace ferry::test {

// Creates into `out` a HostBackend with `device_count` devices of
// `device_memory` bytes each and no kernel libraries; fails as
// backend::CreateHostBackend does.
inline Status CreateTestHostBackend(uint64_t device_memory,
                                    std::unique_ptr<backend::GpuBackend>* out,
                                    int device_count = 1) {
  backend::HostBackendOptions options;
  options.device_count = device_count;
  options.device_memory = device_memory;
  return backend::CreateHostBackend(options, out);
}

}  // namespace ferry::test
