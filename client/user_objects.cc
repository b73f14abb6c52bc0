#include "client/user_objects.h"

#include <climits>
#include <vector>

namespace ferry::client {

namespace {

Status CheckCount(unsigned count) {
  if (count == 0 || count > INT_MAX) {
    return Status::InvalidArgument("a user object reference count must be in [1, INT_MAX]");
  }
  return Status::Ok();
}

}  // namespace

Status UserObjects::Create(void* ptr, CUhostFn destroy, unsigned references, unsigned flags,
                           uint64_t* id) {
  if (destroy == nullptr) return Status::InvalidArgument("destroy is NULL");
  FERRY_RETURN_IF_ERROR(CheckCount(references));
  if (flags != CU_USER_OBJECT_NO_DESTRUCTOR_SYNC) {
    return Status::InvalidArgument("flags must be CU_USER_OBJECT_NO_DESTRUCTOR_SYNC");
  }
  *id = ids_->New(HandleKind::kUserObject);
  std::lock_guard<std::mutex> lock(mu_);
  objects_[*id] = Object{ptr, destroy, references};
  return Status::Ok();
}

Status UserObjects::Retain(uint64_t object, unsigned count) {
  FERRY_RETURN_IF_ERROR(CheckCount(count));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = objects_.find(object);
  if (it == objects_.end()) return Status::InvalidArgument("not a user object of this client");
  it->second.references += count;
  return Status::Ok();
}

Status UserObjects::Release(uint64_t object, unsigned count) {
  FERRY_RETURN_IF_ERROR(CheckCount(count));
  std::vector<Object> dead;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = objects_.find(object);
    if (it == objects_.end()) return Status::InvalidArgument("not a user object of this client");
    if (it->second.references < count) {
      return Status::InvalidArgument("more references released than the object has");
    }
    ReleaseLocked({{object, count}}, &dead);
  }
  Destroy(std::move(dead));
  return Status::Ok();
}

Status UserObjects::GraphRetain(uint64_t graph, uint64_t object, unsigned count, bool move) {
  FERRY_RETURN_IF_ERROR(CheckCount(count));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = objects_.find(object);
  if (it == objects_.end()) return Status::InvalidArgument("not a user object of this client");
  if (move && it->second.references < count) {
    return Status::InvalidArgument("more references moved than the object has");
  }
  if (!move) it->second.references += count;
  graphs_[graph].own[object] += count;
  return Status::Ok();
}

Status UserObjects::GraphRelease(uint64_t graph, uint64_t object, unsigned count) {
  FERRY_RETURN_IF_ERROR(CheckCount(count));
  std::vector<Object> dead;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto g = graphs_.find(graph);
    if (g == graphs_.end() || g->second.own[object] < count) {
      return Status::InvalidArgument("the graph holds fewer references to the object");
    }
    if ((g->second.own[object] -= count) == 0) g->second.own.erase(object);
    ReleaseLocked({{object, count}}, &dead);
  }
  Destroy(std::move(dead));
  return Status::Ok();
}

UserObjects::Refs UserObjects::AllOfLocked(uint64_t graph) {
  Refs all;
  auto g = graphs_.find(graph);
  if (g == graphs_.end()) return all;
  all = g->second.own;
  for (const auto& [node, refs] : g->second.children) {
    for (const auto& [object, count] : refs) all[object] += count;
  }
  return all;
}

void UserObjects::RetainLocked(const Refs& refs) {
  // An object the program over-released is gone already (undefined in CUDA):
  // a graph's reference to it is dropped rather than ending the program.
  for (const auto& [object, count] : refs) {
    auto it = objects_.find(object);
    if (it != objects_.end()) it->second.references += count;
  }
}

void UserObjects::ReleaseLocked(const Refs& refs, std::vector<Object>* dead) {
  for (const auto& [object, count] : refs) {
    auto it = objects_.find(object);
    if (it == objects_.end()) continue;
    it->second.references -= std::min(count, it->second.references);
    if (it->second.references == 0) {
      dead->push_back(it->second);
      objects_.erase(it);
    }
  }
}

void UserObjects::Destroy(std::vector<Object> dead) {
  for (const Object& object : dead) {
    (void)destructors_.Post([object] { object.destroy(object.ptr); });
  }
}

void UserObjects::ReleaseRefs(const Refs& refs) {
  std::vector<Object> dead;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ReleaseLocked(refs, &dead);
  }
  Destroy(std::move(dead));
}

void UserObjects::GraphDestroyed(uint64_t graph) {
  std::vector<Object> dead;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (graphs_.count(graph) == 0) return;
    ReleaseLocked(AllOfLocked(graph), &dead);
    graphs_.erase(graph);
  }
  Destroy(std::move(dead));
}

void UserObjects::GraphCloned(uint64_t original, uint64_t clone) {
  std::lock_guard<std::mutex> lock(mu_);
  auto g = graphs_.find(original);
  if (g == graphs_.end()) return;
  GraphRefs copy = g->second;
  RetainLocked(AllOfLocked(original));
  graphs_[clone] = std::move(copy);
}

void UserObjects::ChildAdded(uint64_t graph, uint64_t node, uint64_t child) {
  std::lock_guard<std::mutex> lock(mu_);
  Refs refs = AllOfLocked(child);
  if (refs.empty()) return;
  RetainLocked(refs);
  graphs_[graph].children[node] = std::move(refs);
}

void UserObjects::NodeDestroyed(uint64_t graph, uint64_t node) {
  std::vector<Object> dead;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto g = graphs_.find(graph);
    if (g == graphs_.end()) return;
    auto n = g->second.children.find(node);
    if (n == g->second.children.end()) return;
    ReleaseLocked(n->second, &dead);
    g->second.children.erase(n);
  }
  Destroy(std::move(dead));
}

void UserObjects::Instantiated(uint64_t graph, uint64_t exec) {
  std::lock_guard<std::mutex> lock(mu_);
  Refs refs = AllOfLocked(graph);
  if (refs.empty()) return;
  RetainLocked(refs);
  execs_[exec].refs = std::move(refs);
}

void UserObjects::ExecUpdated(uint64_t exec, uint64_t graph, Refs* old, LaunchStreams* streams) {
  std::lock_guard<std::mutex> lock(mu_);
  old->clear();
  streams->clear();
  Refs refs = AllOfLocked(graph);
  RetainLocked(refs);
  auto e = execs_.find(exec);
  if (e != execs_.end()) {
    *old = std::move(e->second.refs);
    *streams = e->second.streams;
  }
  if (refs.empty()) {
    if (e != execs_.end()) execs_.erase(e);
    return;
  }
  execs_[exec].refs = std::move(refs);
}

void UserObjects::ExecLaunched(uint64_t exec, CUstream stream, bool per_thread) {
  std::lock_guard<std::mutex> lock(mu_);
  auto e = execs_.find(exec);
  if (e != execs_.end()) e->second.streams.emplace(stream, per_thread);
}

void UserObjects::ExecDestroyed(uint64_t exec, Refs* refs, LaunchStreams* streams) {
  std::lock_guard<std::mutex> lock(mu_);
  refs->clear();
  streams->clear();
  auto e = execs_.find(exec);
  if (e == execs_.end()) return;
  *refs = std::move(e->second.refs);
  *streams = std::move(e->second.streams);
  execs_.erase(e);
}

}  // namespace ferry::client
