// The figures ferry-bench takes through a driver library (ferry's
// libcuda.so.1, or a real driver for comparison), in the process that runs
// them: sync call RTT, pipelined launch rate, copy bandwidths, module load
// times. The library is loaded with dlopen, so the same code measures either.
//
// Thread-safety: MeasureDriverFigures runs on one thread and owns the CUDA
// context it creates.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"

namespace ferry::bench {

struct DriverBenchOptions {
  std::string libcuda;         // path of the library to dlopen
  std::string kernels_fatbin;  // holds extern "C" ferry_bench_empty
  int rtt_iterations = 20000;
  int launches = 100000;
  std::vector<uint64_t> copy_sizes;           // bytes
  uint64_t copy_budget_bytes = 256ull << 20;  // bytes moved per copy figure
  uint64_t large_image_bytes = 64ull << 20;
  uint32_t image_seed = 1;  // makes the large image unique to this run
  // The groups to measure ("rtt", "launch", "copy", "peer", "module"); empty:
  // all ("peer" only where the session has two devices).
  std::set<std::string> only;
  // The pid of the process that serves the session (ferryd with
  // --sessions-in-process), when known: the rtt group then also reports the
  // CPU time it spent per call.
  int server_pid = 0;
};

// Figures by name (see ferry_bench.cc for the names and units). Fails with
// the driver's error and the call that returned it. The rtt group gives
// sync_rtt_us (median), sync_rtt_mean_us, and the CPU time per call of this
// process (rtt_client_cpu_us) and, with server_pid, of the server
// (rtt_server_cpu_us): what busy polling costs.
Status MeasureDriverFigures(const DriverBenchOptions& options, std::map<std::string, double>* out);

// The figure name for a copy of `bytes` in `direction` ("h2d", "d2h") from
// `memory` ("pageable", "pinned").
std::string CopyFigureName(const char* direction, const char* memory, uint64_t bytes);

// The figure name for cuMemcpyPeer of `bytes` from device 0 to device 1.
std::string PeerFigureName(uint64_t bytes);

// "4KiB", "256MiB".
std::string SizeName(uint64_t bytes);

}  // namespace ferry::bench
