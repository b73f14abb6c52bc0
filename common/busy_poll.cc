#include "common/busy_poll.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace ferry {
namespace {

// The window in microseconds; -1 until set or first read (then the default).
std::atomic<int64_t> window_us{-1};

}  // namespace

int UsableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return 1;
}

std::chrono::microseconds DefaultBusyPollWindowFor(int cpus) {
  return cpus >= kBusyPollMinCpus ? kDefaultBusyPollWindow : std::chrono::microseconds(0);
}

std::chrono::microseconds DefaultBusyPollWindow() {
  return DefaultBusyPollWindowFor(UsableCpus());
}

std::chrono::microseconds BusyPollWindow() {
  int64_t us = window_us.load(std::memory_order_relaxed);
  if (us < 0) {
    // First use without a setting: settle the default once (a racing
    // SetBusyPollWindow wins).
    int64_t unset = -1;
    const int64_t fallback = DefaultBusyPollWindow().count();
    us = window_us.compare_exchange_strong(unset, fallback, std::memory_order_relaxed) ? fallback
                                                                                       : unset;
  }
  return std::chrono::microseconds(us);
}

void SetBusyPollWindow(std::chrono::microseconds window) {
  window_us.store(std::clamp<int64_t>(window.count(), 0, kMaxBusyPollWindow.count()),
                  std::memory_order_relaxed);
}

Status ParseBusyPollWindow(std::string_view text, std::chrono::microseconds* out) {
  std::string_view digits = text;
  if (digits.size() > 2 && digits.substr(digits.size() - 2) == "us") {
    digits.remove_suffix(2);
  }
  int64_t value = 0;
  bool ok = !digits.empty() && digits.size() <= 7;
  for (char c : digits) {
    if (c < '0' || c > '9') {
      ok = false;
      break;
    }
    value = value * 10 + (c - '0');
  }
  if (!ok || value > kMaxBusyPollWindow.count()) {
    return Status::InvalidArgument("'" + std::string(text) +
                                   "' is not a busy-poll window: a whole number of microseconds "
                                   "from 0 (off) to " +
                                   std::to_string(kMaxBusyPollWindow.count()) + " (e.g. 50)");
  }
  *out = std::chrono::microseconds(value);
  return Status::Ok();
}

void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

bool SpinUntil(std::chrono::nanoseconds budget, absl::FunctionRef<bool()> ready,
               std::chrono::steady_clock::time_point limit) {
  if (budget.count() <= 0) return false;
  const auto start = std::chrono::steady_clock::now();
  const auto end = budget < limit - start ? start + budget : limit;
  if (end <= start) return false;
  for (;;) {
    if (ready()) return true;
    CpuRelax();
    if (std::chrono::steady_clock::now() >= end) return false;
  }
}

bool BusyPoller::Spin(absl::FunctionRef<bool()> ready,
                      std::chrono::steady_clock::time_point limit) {
  const std::chrono::nanoseconds window = BusyPollWindow();
  if (window.count() <= 0) return false;
  if (limit != std::chrono::steady_clock::time_point::max() &&
      std::chrono::steady_clock::now() >= limit) {
    return false;  // nothing to spin for: the caller's deadline has passed
  }
  ++spins_;
  std::chrono::nanoseconds budget = window;
  if (halvings_ > 0 && ++waits_ % kProbeEvery != 0) budget = window / (1 << halvings_);
  last_budget_ = budget;
  if (SpinUntil(budget, ready, limit)) {
    halvings_ = 0;
    waits_ = 0;
    ++caught_;
    return true;
  }
  if (halvings_ < kMaxHalvings) ++halvings_;
  return false;
}

}  // namespace ferry
