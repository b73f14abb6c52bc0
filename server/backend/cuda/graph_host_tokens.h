// GraphHostTokens — graph host nodes on the driver. A host node in a driver
// graph calls RunGraphHostNode with a token as its user data (the driver
// keeps only a function and a pointer, which must stay meaningful however
// long a launch waits). The token names a slot here: the session's host
// function (GraphNodeSpec::host_function) and the calls (GraphHostCall) that
// launches queued for the nodes of that token, oldest first; the node takes
// the oldest, reports it reached and waits at its gate.
//
// A token names one host function as it was given (a node added, set or
// captured); a graph's clones and executable graphs share its tokens.
// Launches of one executable graph run in order, so its nodes take their
// launches' calls in order. Two executable graphs that share a token and run
// at once may take each other's calls: the same function then runs as often,
// each run while one node waits; only which launch's gate the client is told
// about differs.
//
// Thread-safety: all members are thread-safe; RunGraphHostNode runs on the
// driver's callback thread and makes no driver calls.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/status.h"
#include "server/backend/api/gpu_backend.h"

namespace ferry::backend::cuda_internal {

class GraphHostTokens;

// A holder's share of a token: the token's slot goes once no holder is left
// and no call waits in it.
class GraphHostToken {
 public:
  GraphHostToken(GraphHostTokens& tokens, uint64_t value) : tokens_(tokens), value_(value) {}
  ~GraphHostToken();
  GraphHostToken(const GraphHostToken&) = delete;
  GraphHostToken& operator=(const GraphHostToken&) = delete;
  uint64_t value() const { return value_; }
  // The user data a driver host node of this token carries.
  void* user_data() const { return reinterpret_cast<void*>(static_cast<uintptr_t>(value_)); }

 private:
  GraphHostTokens& tokens_;
  const uint64_t value_;
};

class GraphHostTokens {
 public:
  // The process's table (RunGraphHostNode has only the user data to go by).
  static GraphHostTokens& Get();

  // A new token for `host_function`.
  std::shared_ptr<const GraphHostToken> New(uint64_t host_function);
  // A launch's id, for Queue and Finish.
  uint64_t NewLaunch();
  // `call` waits in `token`'s slot for a node of launch `launch`.
  void Queue(const GraphHostToken& token, uint64_t launch, GraphHostCall call);
  // Launch `launch` (of `tokens`) is over: its calls still waiting are taken
  // out; with `report` their `reached` runs with `status` and held false
  // (their nodes never ran), without it they are dropped (the launch was
  // refused, nothing was queued).
  void Finish(uint64_t launch, std::span<const uint64_t> tokens, const Status& status, bool report);

  // The host function of every driver host node ferry makes.
  static void CUDA_CB RunGraphHostNode(void* user_data);

 private:
  friend class GraphHostToken;
  GraphHostTokens() = default;
  void Release(uint64_t token);

  struct Slot {
    uint64_t host_function = 0;
    std::deque<std::pair<uint64_t, GraphHostCall>> calls;  // (launch, call), oldest first
    bool released = false;                                 // no holder is left
  };
  std::mutex mu_;
  uint64_t next_token_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_launch_ ABSL_GUARDED_BY(mu_) = 1;
  std::unordered_map<uint64_t, Slot> slots_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::backend::cuda_internal
