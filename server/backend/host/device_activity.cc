#include "server/backend/host/device_activity.h"

#include <algorithm>

namespace ferry::backend::host_internal {

void DeviceActivity::Begin(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (running_++ > 0) return;
  // Resume the last span when it ended only just before.
  if (!spans_.empty() && now - spans_.back().end < kMergeGap) {
    running_since_ = spans_.back().begin;
    spans_.pop_back();
  } else {
    running_since_ = now;
  }
}

void DeviceActivity::End(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (running_ == 0 || --running_ > 0) return;
  spans_.push_back({running_since_, std::max(now, running_since_)});
  Prune(now);
}

void DeviceActivity::Prune(Clock::time_point now) {
  while (!spans_.empty() && spans_.front().end < now - kWindow) spans_.pop_front();
}

int DeviceActivity::PercentBusy(Clock::time_point now) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Clock::time_point start = now - kWindow;
  Clock::duration busy{0};
  auto add = [&](Clock::time_point begin, Clock::time_point end) {
    begin = std::max(begin, start);
    end = std::min(end, now);
    if (end > begin) busy += end - begin;
  };
  for (const Span& span : spans_) add(span.begin, span.end);
  if (running_ > 0) add(running_since_, now);
  const double percent = 100.0 * std::chrono::duration<double>(busy).count() /
                         std::chrono::duration<double>(kWindow).count();
  return std::clamp(static_cast<int>(percent + 0.5), 0, 100);
}

}  // namespace ferry::backend::host_internal
