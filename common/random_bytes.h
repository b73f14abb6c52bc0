// Unpredictable bytes from the kernel (getrandom(2)), for secrets and
// nonces: the shared-memory rendezvous's name and nonce, the TLS hand-over
// secret. Blocks only before the kernel's pool is initialised (early boot).
//
// Thread-safety: any thread.
#pragma once

#include <cstddef>
#include <string>

#include "common/status.h"

namespace ferry {

// Fills `size` bytes at `data`; Internal if the kernel refuses.
Status RandomBytes(void* data, size_t size);

// `bytes` random bytes as 2 * `bytes` lowercase hex digits (names and
// tickets that travel as text); Internal if the kernel refuses.
Status RandomHex(size_t bytes, std::string* out);

}  // namespace ferry
