// GraphRegistry: the client's stream captures, graphs and executable graphs.
// Captures begin through the client, so it knows whether any is active in
// the process: while none is, capture queries are answered here, without a
// round trip.
//
// Thread-safety: all methods are thread-safe; mu_ guards the tables and is
// never held while calling out. AnyCapture is one atomic load.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "client/handles.h"
#include "common/status.h"

namespace ferry::client {

struct CaptureState {
  uint64_t ctx = 0;
  uint64_t id = 0;        // unique in the process, as cuStreamGetCaptureInfo reports it
  uint64_t graph = 0;     // the graph the capture builds
  int mode = 0;           // CUstreamCaptureMode
  bool blocking = false;  // the stream synchronizes with the legacy stream
};

class GraphRegistry {
 public:
  // `ids` hands out graph ids; it must outlive the registry.
  explicit GraphRegistry(HandleIds* ids) : ids_(ids) {}

  // True while some stream of this client captures.
  bool AnyCapture() const { return captures_active_.load(std::memory_order_acquire) > 0; }
  // Starts a capture of `stream` (not the legacy stream): CUDA_ERROR_ILLEGAL_STATE
  // when it captures already. Fills in state->id and state->graph.
  Status BeginCapture(uint64_t stream, CaptureState* state);
  // Ends the capture of `stream`; CUDA_ERROR_ILLEGAL_STATE when there is none.
  Status EndCapture(uint64_t stream, CaptureState* state);
  bool FindCapture(uint64_t stream, CaptureState* state);
  // Whether a blocking stream of `ctx` captures (the legacy stream then may
  // not be used: CUDA_ERROR_STREAM_CAPTURE_IMPLICIT).
  bool BlockingCaptureIn(uint64_t ctx);

  uint64_t NewGraph();  // a graph id, recorded
  void AddGraph(uint64_t id);
  // INVALID_HANDLE for an unknown id.
  Status RemoveGraph(uint64_t id);
  bool HasGraph(uint64_t id);
  uint64_t NewExec();
  Status RemoveExec(uint64_t id);
  bool HasExec(uint64_t id);
  // A node id of `graph` (explicitly added nodes).
  uint64_t NewNode(uint64_t graph);
  // Whether `node` is a node of `graph`.
  bool IsNodeOf(uint64_t node, uint64_t graph);
  // Forgets the captures of `ctx` (its streams are gone).
  void ForgetContext(uint64_t ctx);

 private:
  HandleIds* const ids_;
  std::atomic<int> captures_active_{0};
  inline static std::atomic<uint64_t> next_capture_id_{1};
  std::mutex mu_;
  std::unordered_map<uint64_t, CaptureState> captures_ ABSL_GUARDED_BY(mu_);  // by stream
  std::unordered_map<uint64_t, bool> graphs_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, bool> execs_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, uint64_t> nodes_ ABSL_GUARDED_BY(mu_);  // node -> graph
};

}  // namespace ferry::client
