#include "test/support/wait.h"

#include <thread>

namespace ferry::test {

bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout,
             std::chrono::milliseconds poll) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return done();
    // A poll interval, not a synchronization: the condition decides.
    std::this_thread::sleep_for(poll);
  }
  return true;
}

}  // namespace ferry::test
