// What every entry-point file (client/api_*.cc) needs, under the short names
// they all use. The entry points are global extern "C" functions, so the
// names are brought in at global scope: include this from api_*.cc only.
#pragma once

#include <array>
#include <cstdint>

#include "client/cuda_result.h"
#include "client/runtime.h"

using ferry::Status;
using ferry::client::Api;
using ferry::client::Runtime;
using ferry::client::SetStreamTarget;
using ferry::client::StreamTarget;
namespace wire = ferry::wire;

// A cu*Destroy's (or cuModuleUnload's) work: after rt.Ready(), `forget(rt,
// id)` drops the handle's id from the runtime's registry (its error, such as
// INVALID_HANDLE, is the call's), then `fill(call, id)` builds the server's
// call, which is posted to the object's server (found before forgetting).
template <typename Handle, typename Forget, typename Fill>
Status DestroyHandle(Handle handle, Forget forget, Fill fill) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  const uint64_t id = Runtime::HandleId(handle);
  ferry::client::Connection& server = rt.ObjectConnection(id);
  FERRY_RETURN_IF_ERROR(forget(rt, id));
  return server.Post([&](wire::Call::Builder call) { fill(call, id); });
}

// Sets a kernel's launch shape on `args`, any wire builder with a launch's
// grid, block and sharedBytes fields (a launch, a kernel node, an occupancy
// question).
template <typename Builder>
void SetLaunchShape(Builder args, const std::array<unsigned, 3>& grid,
                    const std::array<unsigned, 3>& block, unsigned shared_bytes) {
  args.setGridX(grid[0]);
  args.setGridY(grid[1]);
  args.setGridZ(grid[2]);
  args.setBlockX(block[0]);
  args.setBlockY(block[1]);
  args.setBlockZ(block[2]);
  args.setSharedBytes(shared_bytes);
}

// The same from the driver's description of a launch (a CUlaunchConfig or a
// CUDA_KERNEL_NODE_PARAMS: gridDim*, blockDim*, sharedMemBytes).
template <typename Builder, typename Params>
void SetLaunchShape(Builder args, const Params& p) {
  SetLaunchShape(args, {p.gridDimX, p.gridDimY, p.gridDimZ},
                 {p.blockDimX, p.blockDimY, p.blockDimZ}, p.sharedMemBytes);
}

// stream capture (client/api_graph.cc): OK unless the calling thread's
// capture interaction mode (cuThreadExchangeStreamCaptureMode) forbids a
// potentially unsafe call such as allocating, freeing or synchronizing while
// a stream captures. Then the captures that forbid it are invalidated and
// the call, named by `what`, fails with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED.
Status ForbidUnsafeCallDuringCapture(const char* what);

// graph node kinds (client/api_graph_nodes.cc): executable graph `exec` was
// instantiated from `graph`, in context `ctx`: the memory of graph's
// allocation nodes becomes the process's device allocations (copyable;
// cuMemFree leaves them to the server) until ForgetGraphMemory(exec), as
// `exec` is destroyed.
void NoteGraphMemory(uint64_t graph, uint64_t exec, uint64_t ctx);
void ForgetGraphMemory(uint64_t exec);
// NOT_SUPPORTED, naming `what`, when `graph` has memory allocation or free
// nodes (cuda.h: such a graph cannot be cloned, nor its nodes or edges
// removed; the server refuses them too, but these calls do not wait).
ferry::Status CheckGraphWithoutMemoryNodes(uint64_t graph, const char* what);

// graph host nodes (client/api_graph_host.cc): cuLaunchHostFunc on `target`.
// When the stream captures, `fn` becomes a host node of the capture
// (*captured true); otherwise nothing is sent and the caller queues a host
// gate as usual.
Status CaptureHostFunc(const StreamTarget& target, CUhostFn fn, void* user_data, bool* captured);
// cuLaunchHostFunc's function (a stream callback or a graph host node) as
// the connection runs it: as CUDA documents, not called once the work before
// it failed (nor when the connection is lost). An error ferry latched from an
// earlier call does not stop it: CUDA would have returned that error from
// the call itself, and the context would still work.
ferry::client::Connection::HostFunction LaunchedHostFunction(CUhostFn fn, void* user_data);
