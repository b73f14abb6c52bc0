// Entry points: user objects (cuUserObjectCreate, Retain, Release;
// cuGraphRetainUserObject, cuGraphReleaseUserObject). A user object lives in
// the client (client/user_objects.h): its destructor runs here, on a thread
// of its own, when the last reference goes, including the references an
// executable graph holds until it is destroyed and its launches have
// finished (ReleaseBehindLaunches). No call reaches the server.
#include <cuda.h>

#include <memory>

#include "client/entry_point.h"

using ferry::client::UserObjects;

namespace {

// `refs`, once the work queued so far on each of `streams` has finished: a
// host function behind it on each stream; the last of them to run releases
// them. A stream that takes no host function (destroyed since; its work is
// then done) counts as finished.
struct PendingRelease {
  UserObjects::Refs refs;
  std::atomic<size_t> waiting{0};
};

void FinishOne(void* data) {
  auto* pending = static_cast<PendingRelease*>(data);
  if (pending->waiting.fetch_sub(1) != 1) return;
  Runtime::Get().user_objects().ReleaseRefs(pending->refs);
  delete pending;
}

}  // namespace

void ferry::client::ReleaseBehindLaunches(UserObjects::Refs refs,
                                          const UserObjects::LaunchStreams& streams) {
  if (refs.empty()) return;
  auto* pending = new PendingRelease{std::move(refs), {}};
  pending->waiting = streams.size() + 1;  // +1: this function's own, dropped last
  for (const auto& [stream, per_thread] : streams) {
    const CUresult posted = per_thread ? cuLaunchHostFunc_ptsz(stream, FinishOne, pending)
                                       : cuLaunchHostFunc(stream, FinishOne, pending);
    if (posted != CUDA_SUCCESS) FinishOne(pending);
  }
  FinishOne(pending);
}

extern "C" {

CUresult CUDAAPI cuUserObjectCreate(CUuserObject* object_out, void* ptr, CUhostFn destroy,
                                    unsigned int initialRefcount, unsigned int flags) {
  return Api([&]() -> Status {
    if (object_out == nullptr) return Status::InvalidArgument("object_out is NULL");
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(
        Runtime::Get().user_objects().Create(ptr, destroy, initialRefcount, flags, &id));
    *object_out = Runtime::ToHandle<CUuserObject>(id);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuUserObjectRetain(CUuserObject object, unsigned int count) {
  return Api(
      [&] { return Runtime::Get().user_objects().Retain(Runtime::HandleId(object), count); });
}

CUresult CUDAAPI cuUserObjectRelease(CUuserObject object, unsigned int count) {
  return Api(
      [&] { return Runtime::Get().user_objects().Release(Runtime::HandleId(object), count); });
}

CUresult CUDAAPI cuGraphRetainUserObject(CUgraph graph, CUuserObject object, unsigned int count,
                                         unsigned int flags) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    const uint64_t graph_id = Runtime::HandleId(graph);
    if (!rt.graphs().HasGraph(graph_id)) return Status::InvalidHandle("not a graph of this client");
    if ((flags & ~static_cast<unsigned>(CU_GRAPH_USER_OBJECT_MOVE)) != 0) {
      return Status::InvalidArgument("unknown cuGraphRetainUserObject flags");
    }
    return rt.user_objects().GraphRetain(graph_id, Runtime::HandleId(object), count,
                                         (flags & CU_GRAPH_USER_OBJECT_MOVE) != 0);
  });
}

CUresult CUDAAPI cuGraphReleaseUserObject(CUgraph graph, CUuserObject object, unsigned int count) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    const uint64_t graph_id = Runtime::HandleId(graph);
    if (!rt.graphs().HasGraph(graph_id)) return Status::InvalidHandle("not a graph of this client");
    return rt.user_objects().GraphRelease(graph_id, Runtime::HandleId(object), count);
  });
}

}  // extern "C"
