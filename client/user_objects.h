// UserObjects: the program's CUDA user objects (cuUserObjectCreate and the
// rest) and the references graphs and executable graphs hold on them. A user
// object lives in the client only (it is a pointer and a destructor of the
// program's): nothing about it travels to the server. Its destructor runs
// once the last reference is released, on a thread of its own (as the
// driver runs it on an internal one, so a destructor never runs inside the
// call that released it). References: the program's own (create, retain,
// release), a graph's (cuGraphRetainUserObject; a child-graph node holds its
// child's, a clone its original's), an executable graph's (its graph's when
// instantiated or last updated). An executable graph's references outlive
// it until its launches have finished: the caller (client/api_graph.cc)
// releases them behind its last launch on each stream it was launched on.
//
// Thread-safety: all methods are thread-safe; mu_ guards the tables and is
// never held while a destructor runs.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "client/handles.h"
#include "client/host_callback_thread.h"
#include "common/status.h"

namespace ferry::client {

class UserObjects {
 public:
  using Refs = std::map<uint64_t, uint64_t>;  // object -> references
  // The streams an executable graph was launched on (handle, per-thread).
  using LaunchStreams = std::set<std::pair<CUstream, bool>>;

  // `ids` hands out object ids; it must outlive this.
  explicit UserObjects(HandleIds* ids) : ids_(ids) {}

  // cuUserObjectCreate: INVALID_VALUE for a NULL destructor, no references
  // or flags other than CU_USER_OBJECT_NO_DESTRUCTOR_SYNC.
  Status Create(void* ptr, CUhostFn destroy, unsigned references, unsigned flags, uint64_t* id);
  // cuUserObjectRetain / Release (the program's references): INVALID_VALUE
  // for a count of 0 or over INT_MAX or an unknown object.
  Status Retain(uint64_t object, unsigned count);
  Status Release(uint64_t object, unsigned count);

  // cuGraphRetainUserObject (`move`: CU_GRAPH_USER_OBJECT_MOVE, the
  // program's references become the graph's) and cuGraphReleaseUserObject
  // (INVALID_VALUE when the graph holds fewer references).
  Status GraphRetain(uint64_t graph, uint64_t object, unsigned count, bool move);
  Status GraphRelease(uint64_t graph, uint64_t object, unsigned count);
  // The graph is gone: its references (its own and its child nodes') go.
  void GraphDestroyed(uint64_t graph);
  // `clone` holds what `original` holds.
  void GraphCloned(uint64_t original, uint64_t clone);
  // Child-graph node `node` of `graph` holds what `child` holds; destroying
  // the node releases that.
  void ChildAdded(uint64_t graph, uint64_t node, uint64_t child);
  void NodeDestroyed(uint64_t graph, uint64_t node);

  // `exec` holds what `graph` holds now (instantiated, or updated: *old gets
  // the references it held before, to release after its launches).
  void Instantiated(uint64_t graph, uint64_t exec);
  void ExecUpdated(uint64_t exec, uint64_t graph, Refs* old, LaunchStreams* streams);
  // Remembers the stream of a launch of `exec` (only while it holds references).
  void ExecLaunched(uint64_t exec, CUstream stream, bool per_thread);
  // `exec` is destroyed: *refs gets its references and *streams the streams
  // its launches went to, behind which the caller releases them.
  void ExecDestroyed(uint64_t exec, Refs* refs, LaunchStreams* streams);
  // Releases `refs`; destructors of objects left without references run on
  // the destructor thread.
  void ReleaseRefs(const Refs& refs);

 private:
  struct Object {
    void* ptr = nullptr;
    CUhostFn destroy = nullptr;
    uint64_t references = 0;
  };
  struct GraphRefs {
    Refs own;
    std::map<uint64_t, Refs> children;  // by child-graph node
  };
  struct ExecRefs {
    Refs refs;
    LaunchStreams streams;
  };
  // All of a graph's references (own and its child nodes').
  Refs AllOfLocked(uint64_t graph) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds `refs`' references to their objects.
  void RetainLocked(const Refs& refs) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes `refs`' references; objects left without any leave the table and
  // are appended to *dead.
  void ReleaseLocked(const Refs& refs, std::vector<Object>* dead)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs the destructors of `dead` on the destructor thread.
  void Destroy(std::vector<Object> dead);

  HandleIds* const ids_;
  std::mutex mu_;
  std::unordered_map<uint64_t, Object> objects_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, GraphRefs> graphs_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, ExecRefs> execs_ ABSL_GUARDED_BY(mu_);
  HostCallbackThread destructors_;
};

// Releases `refs` once the work queued so far on each of `streams` has
// finished (client/api_user_objects.cc): behind a host function on each.
void ReleaseBehindLaunches(UserObjects::Refs refs, const UserObjects::LaunchStreams& streams);

}  // namespace ferry::client
