#include "client/graph_registry.h"

#include <cuda.h>

#include <iterator>
#include <string>

namespace ferry::client {

Status GraphRegistry::BeginCapture(uint64_t stream, CaptureState* state) {
  std::lock_guard<std::mutex> lock(mu_);
  if (captures_.count(stream) != 0) {
    return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is capturing already");
  }
  state->id = next_capture_id_.fetch_add(1);
  state->graph = ids_->New(HandleKind::kGraph);
  captures_.emplace(stream, *state);
  captures_active_.fetch_add(1, std::memory_order_release);
  return Status::Ok();
}

Status GraphRegistry::EndCapture(uint64_t stream, CaptureState* state) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = captures_.find(stream);
  if (it == captures_.end()) {
    return Status::Cuda(CUDA_ERROR_ILLEGAL_STATE, "the stream is not capturing");
  }
  *state = it->second;
  captures_.erase(it);
  captures_active_.fetch_sub(1, std::memory_order_release);
  return Status::Ok();
}

bool GraphRegistry::FindCapture(uint64_t stream, CaptureState* state) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = captures_.find(stream);
  if (it == captures_.end()) return false;
  *state = it->second;
  return true;
}

bool GraphRegistry::BlockingCaptureIn(uint64_t ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [stream, capture] : captures_) {
    if (capture.ctx == ctx && capture.blocking) return true;
  }
  return false;
}

uint64_t GraphRegistry::NewGraph() {
  const uint64_t id = ids_->New(HandleKind::kGraph);
  AddGraph(id);
  return id;
}

void GraphRegistry::AddGraph(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  graphs_[id] = true;
}

Status GraphRegistry::RemoveGraph(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (graphs_.erase(id) == 0) return Status::InvalidHandle("no graph " + std::to_string(id));
  for (auto it = nodes_.begin(); it != nodes_.end();) {
    it = it->second == id ? nodes_.erase(it) : std::next(it);
  }
  return Status::Ok();
}

uint64_t GraphRegistry::NewNode(uint64_t graph) {
  const uint64_t id = ids_->New(HandleKind::kGraphNode);
  std::lock_guard<std::mutex> lock(mu_);
  nodes_[id] = graph;
  return id;
}

bool GraphRegistry::IsNodeOf(uint64_t node, uint64_t graph) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nodes_.find(node);
  return it != nodes_.end() && it->second == graph;
}

bool GraphRegistry::HasGraph(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  return graphs_.count(id) != 0;
}

uint64_t GraphRegistry::NewExec() {
  const uint64_t id = ids_->New(HandleKind::kGraphExec);
  std::lock_guard<std::mutex> lock(mu_);
  execs_[id] = true;
  return id;
}

Status GraphRegistry::RemoveExec(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (execs_.erase(id) == 0) {
    return Status::InvalidHandle("no executable graph " + std::to_string(id));
  }
  return Status::Ok();
}

bool GraphRegistry::HasExec(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  return execs_.count(id) != 0;
}

void GraphRegistry::ForgetContext(uint64_t ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = captures_.begin(); it != captures_.end();) {
    if (it->second.ctx == ctx) {
      it = captures_.erase(it);
      captures_active_.fetch_sub(1, std::memory_order_release);
    } else {
      ++it;
    }
  }
}

}  // namespace ferry::client
