#include "client/context_registry.h"

#include <cuda.h>

namespace ferry::client {
namespace {

Status NotAContext() {
  return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "not a context of this process");
}

}  // namespace

uint64_t ContextRegistry::Add(int device, unsigned flags) {
  const uint64_t id = ids_->New(HandleKind::kContext);
  std::lock_guard<std::mutex> lock(mu_);
  ContextState state;
  state.device = device;
  state.flags = flags;
  contexts_[id] = state;
  return id;
}

Status ContextRegistry::Check(uint64_t ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  return contexts_.count(ctx) != 0 ? Status::Ok() : NotAContext();
}

Status ContextRegistry::Find(uint64_t ctx, ContextState* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = contexts_.find(ctx);
  if (it == contexts_.end()) return NotAContext();
  *out = it->second;
  return Status::Ok();
}

Status ContextRegistry::Device(uint64_t ctx, int* device) {
  ContextState state;
  FERRY_RETURN_IF_ERROR(Find(ctx, &state));
  *device = state.device;
  return Status::Ok();
}

Status ContextRegistry::Flags(uint64_t ctx, unsigned* flags) {
  ContextState state;
  FERRY_RETURN_IF_ERROR(Find(ctx, &state));
  *flags = state.flags;
  return Status::Ok();
}

bool ContextRegistry::IsLive(uint64_t ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = contexts_.find(ctx);
  return it != contexts_.end() && it->second.live;
}

bool ContextRegistry::MarkLive(uint64_t ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = contexts_.find(ctx);
  if (it == contexts_.end()) return false;
  it->second.live = true;
  return true;
}

bool ContextRegistry::MarkNotLive(uint64_t ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = contexts_.find(ctx);
  if (it == contexts_.end() || !it->second.live) return false;
  it->second.live = false;
  ForgetPeersLocked(ctx);
  return true;
}

std::vector<uint64_t> ContextRegistry::LiveContexts() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint64_t> live;
  for (const auto& [ctx, state] : contexts_) {
    if (state.live) live.push_back(ctx);
  }
  return live;
}

Status ContextRegistry::CheckDestroyable(uint64_t ctx) {
  ContextState state;
  FERRY_RETURN_IF_ERROR(Find(ctx, &state));
  if (state.primary) {
    return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT,
                        "cuCtxDestroy of a primary context (use cuDevicePrimaryCtxRelease)");
  }
  return Status::Ok();
}

Status ContextRegistry::Remove(uint64_t ctx, bool* was_live) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = contexts_.find(ctx);
  if (it == contexts_.end()) return NotAContext();
  if (it->second.primary) {
    return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT,
                        "cuCtxDestroy of a primary context (use cuDevicePrimaryCtxRelease)");
  }
  *was_live = it->second.live;
  contexts_.erase(it);
  ForgetPeersLocked(ctx);
  return Status::Ok();
}

void ContextRegistry::Erase(uint64_t ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  contexts_.erase(ctx);
  ForgetPeersLocked(ctx);
}

bool ContextRegistry::PeerFact(int device, int peer, int what, int* value) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peer_facts_.find({device, peer, what});
  if (it == peer_facts_.end()) return false;
  *value = it->second;
  return true;
}

void ContextRegistry::NotePeerFact(int device, int peer, int what, int value) {
  std::lock_guard<std::mutex> lock(mu_);
  peer_facts_[{device, peer, what}] = value;
}

Status ContextRegistry::EnablePeer(uint64_t ctx, uint64_t peer) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!peer_access_.insert({ctx, peer}).second) {
    return Status::Cuda(CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED, "peer access is already enabled");
  }
  return Status::Ok();
}

Status ContextRegistry::DisablePeer(uint64_t ctx, uint64_t peer) {
  std::lock_guard<std::mutex> lock(mu_);
  if (peer_access_.erase({ctx, peer}) == 0) {
    return Status::Cuda(CUDA_ERROR_PEER_ACCESS_NOT_ENABLED, "peer access is not enabled");
  }
  return Status::Ok();
}

void ContextRegistry::ForgetPeersLocked(uint64_t ctx) {
  std::erase_if(peer_access_, [ctx](const auto& p) { return p.first == ctx || p.second == ctx; });
}

uint64_t ContextRegistry::PrimaryIdLocked(int device) {
  auto it = primary_ids_.find(device);
  if (it != primary_ids_.end()) return it->second;
  const uint64_t id = ids_->New(HandleKind::kContext);
  primary_ids_[device] = id;
  ContextState state;
  state.device = device;
  state.primary = true;
  state.flags = primary_flags_[device];
  contexts_[id] = state;
  return id;
}

uint64_t ContextRegistry::PrimaryId(int device) {
  std::lock_guard<std::mutex> lock(mu_);
  return PrimaryIdLocked(device);
}

void ContextRegistry::RetainPrimary(int device) {
  std::lock_guard<std::mutex> lock(mu_);
  ++primary_refcounts_[device];
}

Status ContextRegistry::ReleasePrimary(int device, bool* last) {
  std::lock_guard<std::mutex> lock(mu_);
  int& count = primary_refcounts_[device];
  if (count <= 0) {
    return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "the primary context is not retained");
  }
  *last = --count == 0;
  return Status::Ok();
}

void ContextRegistry::SetPrimaryFlags(int device, unsigned flags) {
  std::lock_guard<std::mutex> lock(mu_);
  primary_flags_[device] = flags;
  contexts_[PrimaryIdLocked(device)].flags = flags;
}

void ContextRegistry::PrimaryState(int device, unsigned* flags, int* active) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t id = PrimaryIdLocked(device);
  *flags = primary_flags_[device];
  *active = contexts_[id].live && primary_refcounts_[device] > 0 ? 1 : 0;
}

}  // namespace ferry::client
