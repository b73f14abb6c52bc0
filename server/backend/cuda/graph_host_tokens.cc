#include "server/backend/cuda/graph_host_tokens.h"

#include <algorithm>

namespace ferry::backend::cuda_internal {

GraphHostToken::~GraphHostToken() { tokens_.Release(value_); }

GraphHostTokens& GraphHostTokens::Get() {
  // Never destroyed: a driver thread may run a host node during exit.
  static auto* tokens = new GraphHostTokens();
  return *tokens;
}

std::shared_ptr<const GraphHostToken> GraphHostTokens::New(uint64_t host_function) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t value = next_token_++;
  slots_[value].host_function = host_function;
  return std::make_shared<const GraphHostToken>(*this, value);
}

uint64_t GraphHostTokens::NewLaunch() {
  std::lock_guard<std::mutex> lock(mu_);
  return next_launch_++;
}

void GraphHostTokens::Queue(const GraphHostToken& token, uint64_t launch, GraphHostCall call) {
  std::lock_guard<std::mutex> lock(mu_);
  slots_[token.value()].calls.emplace_back(launch, std::move(call));
}

void GraphHostTokens::Finish(uint64_t launch, std::span<const uint64_t> tokens,
                             const Status& status, bool report) {
  std::vector<std::pair<uint64_t, GraphHostCall>> left;  // (host function, call)
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t token : tokens) {
      auto slot = slots_.find(token);
      if (slot == slots_.end()) continue;
      auto& calls = slot->second.calls;
      for (auto it = calls.begin(); it != calls.end();) {
        if (it->first != launch) {
          ++it;
          continue;
        }
        left.emplace_back(slot->second.host_function, std::move(it->second));
        it = calls.erase(it);
      }
      if (slot->second.released && calls.empty()) slots_.erase(slot);
    }
  }
  if (!report) return;
  for (auto& [host_function, call] : left) call.reached(host_function, status, /*held=*/false);
}

void GraphHostTokens::Release(uint64_t token) {
  std::lock_guard<std::mutex> lock(mu_);
  auto slot = slots_.find(token);
  if (slot == slots_.end()) return;
  slot->second.released = true;
  if (slot->second.calls.empty()) slots_.erase(slot);
}

void CUDA_CB GraphHostTokens::RunGraphHostNode(void* user_data) {
  GraphHostTokens& tokens = Get();
  const auto token = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(user_data));
  uint64_t host_function = 0;
  GraphHostCall call;
  {
    std::lock_guard<std::mutex> lock(tokens.mu_);
    auto slot = tokens.slots_.find(token);
    // No call: its launch was finished already (it cannot be one of ours).
    if (slot == tokens.slots_.end() || slot->second.calls.empty()) return;
    host_function = slot->second.host_function;
    call = std::move(slot->second.calls.front().second);
    slot->second.calls.pop_front();
    if (slot->second.released && slot->second.calls.empty()) tokens.slots_.erase(slot);
  }
  call.reached(host_function, Status::Ok(), /*held=*/true);
  call.gate->WaitOpen();
}

}  // namespace ferry::backend::cuda_internal
