// The physical limits ferry-bench compares against, measured in-process on
// this machine in the same run: raw TCP loopback with the socket options
// ferry uses (common/transport.h TuneTcpSocket), and plain memcpy.
//
// Thread-safety: each function starts and joins its own threads.
#pragma once

#include <cstdint>

#include "common/status.h"

namespace ferry::bench {

// Median round-trip time of `iterations` 64-byte ping-pongs between two
// threads over a loopback TCP connection, in microseconds.
Status RawTcpRoundTrip(int iterations, double* median_us);

// One-way bandwidth of a single loopback TCP stream moving `total_bytes` in
// writes of `chunk_bytes` into a reused receive buffer, in GB/s (1e9 B/s).
Status RawTcpBandwidth(uint64_t total_bytes, uint64_t chunk_bytes, double* gb_per_s);

// memcpy between two warm buffers of `buffer_bytes`, `total_bytes` in all,
// in GB/s.
double MemcpyBandwidth(uint64_t buffer_bytes, uint64_t total_bytes);

}  // namespace ferry::bench
