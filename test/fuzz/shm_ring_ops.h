// The operations of the "shm_ring" fuzz target's input (fuzz_shm_ring.cc),
// shared with the seed writer (make_seeds.cc). Each is a byte (modulo
// kOpCount) followed by its arguments, read with FuzzInput:
//   kClientWrites     Below(3 * kRing / 2) length, byte%16+1 pattern bytes
//   kClientPublishes  Bool: the client's cursor, else u64 any head
//   kClientSetsTail   Bool: ferryd's head minus Below(2 * kRing), else u64
//   kClientScribbles  u32 value, Below(7) field (u64 for ring_bytes)
//   kServerReads      Below(2 * kRing) + 1 bytes
//   kServerWrites     Below(3) + 1 buffers, each Below(kRing + 1) bytes
#pragma once

#include <cstdint>

#include "common/shm_transport.h"

namespace ferry::fuzz::shm_ring {

inline constexpr uint64_t kRing = shm_layout::kMinRingBytes;  // small: wraps come often

enum Op : uint8_t {
  kClientWrites,     // client: bytes into its ring at its own cursor
  kClientPublishes,  // client: to_server.head = its cursor, or any value
  kClientSetsTail,   // client: to_client.tail near ferryd's head, or any value
  kClientScribbles,  // client: a header field ferryd must not trust
  kServerReads,      // ferryd: ReadExact
  kServerWrites,     // ferryd: Write, in up to three buffers
  kOpCount
};

}  // namespace ferry::fuzz::shm_ring
