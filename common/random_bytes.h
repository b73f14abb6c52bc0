// Unpredictable bytes from the kernel (getrandom(2)), for secrets and
// nonces: the shared-memory rendezvous's name and nonce, the TLS hand-over
// secret. Blocks only before the kernel's pool is initialised (early boot).
//
// Thread-safety: any thread.
#pragma once

#include <cstddef>

#include "common/status.h"

namespace ferry {

// Fills `size` bytes at `data`; Internal if the kernel refuses.
Status RandomBytes(void* data, size_t size);

}  // namespace ferry
