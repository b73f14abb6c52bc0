#include "common/busy_poll.h"

#include <sched.h>
#include <sys/resource.h>

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

std::chrono::microseconds DefaultBusyPollWindow() { return DefaultBusyPollWindowFor(UsableCpus()); }

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

namespace {

// SpinUntil, also saying when it stopped.
bool Spin(std::chrono::nanoseconds budget, absl::FunctionRef<bool()> ready,
          std::chrono::steady_clock::time_point limit, std::chrono::steady_clock::time_point start,
          std::chrono::steady_clock::time_point* stopped) {
  *stopped = start;
  if (budget.count() <= 0) return false;
  const auto end = budget < limit - start ? start + budget : limit;
  if (end <= start) return false;
  for (;;) {
    if (ready()) {
      *stopped = std::chrono::steady_clock::now();
      return true;
    }
    CpuRelax();
    *stopped = std::chrono::steady_clock::now();
    if (*stopped >= end) return false;
  }
}

}  // namespace

bool SpinUntil(std::chrono::nanoseconds budget, absl::FunctionRef<bool()> ready,
               std::chrono::steady_clock::time_point limit) {
  if (budget.count() <= 0) return false;
  std::chrono::steady_clock::time_point stopped;
  return Spin(budget, ready, limit, std::chrono::steady_clock::now(), &stopped);
}

uint64_t BusyPoller::ThreadPreemptions() {
  rusage usage{};
  if (::getrusage(RUSAGE_THREAD, &usage) != 0) return 0;
  return static_cast<uint64_t>(usage.ru_nivcsw);
}

bool BusyPoller::Preempted() {
  const uint64_t now = preemptions_();
  const bool preempted = looked_ && now != seen_preemptions_;
  looked_ = true;
  seen_preemptions_ = now;
  return preempted;
}

bool BusyPoller::Spin(absl::FunctionRef<bool()> ready,
                      std::chrono::steady_clock::time_point limit) {
  const std::chrono::nanoseconds window = BusyPollWindow();
  if (window.count() <= 0) return false;
  const auto start = std::chrono::steady_clock::now();
  if (start >= limit) return false;  // nothing to spin for: the caller's deadline has passed
  std::chrono::nanoseconds budget = window;
  if (busy_cpus_) {
    if (++waits_ % kBusyProbeEvery != 0) return false;  // paused
    budget = window / (1 << kMaxHalvings);  // a probe: the bottom budget is enough to look
  } else if (halvings_ > 0 && ++waits_ % kProbeEvery != 0) {
    budget = window / (1 << halvings_);
  }
  ++spins_;
  last_budget_ = budget;
  std::chrono::steady_clock::time_point stopped;
  const bool caught = ferry::Spin(budget, ready, limit, start, &stopped);
  if (caught) ++caught_;
  // Preempted while it spun (or since it last looked): other work wants this
  // CPU. A short catch skips the look (a system call) and leaves it to the
  // next longer spin; a probe always looks.
  if (busy_cpus_ || !caught || stopped - start >= kPreemptionCheckAfter) {
    if (Preempted()) {
      busy_cpus_ = true;
      halvings_ = kMaxHalvings;  // spinning resumes at the bottom
      waits_ = 0;
      return caught;
    }
    busy_cpus_ = false;
  }
  if (caught) {
    halvings_ = 0;
    waits_ = 0;
    return true;
  }
  if (halvings_ < kMaxHalvings) ++halvings_;
  return false;
}

}  // namespace ferry
