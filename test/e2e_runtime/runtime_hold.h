// A host function that holds its stream until the program releases it, for
// the runtime programs in this folder: it makes "not finished yet" a state the
// program controls, so checks that work is waited for (or still pending) do
// not depend on how fast the work runs.
//
//   RtHold hold;
//   cudaLaunchHostFunc(stream, RtHoldStream, &hold);  // work after it waits
//   ...
//   hold.released.store(true);
//
// The function gives up after kRtHoldLimit (recording that it did), so a
// program whose release never comes fails instead of hanging. It makes no
// CUDA calls (CUDA forbids them in host functions).
#pragma once

#include <atomic>
#include <chrono>
#include <thread>

constexpr auto kRtHoldLimit = std::chrono::seconds(20);

struct RtHold {
  std::atomic<bool> released{false};
  std::atomic<bool> entered{false};
  std::atomic<bool> gave_up{false};
};

inline void RtHoldStream(void* user_data) {
  auto* hold = static_cast<RtHold*>(user_data);
  hold->entered.store(true);
  const auto deadline = std::chrono::steady_clock::now() + kRtHoldLimit;
  while (!hold->released.load()) {
    if (std::chrono::steady_clock::now() >= deadline) {
      hold->gave_up.store(true);
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// Releases `hold` from another thread after `delay`, so a call that must
// wait for the held work can be made meanwhile; join the thread afterwards.
// The delay is not synchronization: whether or not the caller is already
// waiting when the hold opens, what it checks afterwards must hold; the delay
// only makes the waiting path the one usually taken.
inline std::thread RtReleaseLater(RtHold& hold, std::chrono::milliseconds delay) {
  return std::thread([&hold, delay] {
    std::this_thread::sleep_for(delay);
    hold.released.store(true);
  });
}
