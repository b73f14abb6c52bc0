// The host implementation of test/support/tiny_library.h's kernel `k`, for
// session tests that record or run it on the host backend. It does nothing:
// the tests that use it look at what the session lets through, not at `k`.
#include "server/backend/host/ferry_host_kernel.h"

extern "C" __attribute__((visibility("default"))) void ferry_host_k(const ferry_launch*, void**) {}
