// Waiting for a condition in a test, with a deadline, instead of sleeping for
// a guessed time and hoping the condition holds by then.
//
// Thread-safety: free functions; `done` runs on the calling thread only.
#pragma once

#include <chrono>
#include <functional>

namespace ferry::test {

// Calls `done` until it returns true or `timeout` has passed, re-checking
// every `poll`; returns whether `done` held. `done` is called at least once
// and once more after the deadline, so a condition that becomes true just
// as time runs out is still seen.
bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout,
             std::chrono::milliseconds poll = std::chrono::milliseconds(1));

}  // namespace ferry::test
