// Histograms with fixed buckets, as Prometheus exposes them: observations
// counted per bucket (upper bounds, inclusive, ascending) plus their sum.
//
// HistogramCounts is a plain value (a snapshot, or a sum of snapshots taken
// with the same bounds); AtomicHistogram is what code that observes keeps.
//
// Thread-safety: HistogramCounts is a plain value. AtomicHistogram's Observe
// and Snapshot are safe from any thread (a snapshot taken during an
// observation may see its count without its sum, never a bucket half-counted).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace ferry::metrics {

// counts[i]: observations in bucket i, not cumulative: at most bounds[i] and
// above bounds[i-1]; counts[bounds.size()]: above the last bound (the +Inf
// bucket's own share). Empty counts mean no observation yet.
struct HistogramCounts {
  std::vector<uint64_t> counts;
  double sum = 0;

  uint64_t total() const {
    uint64_t n = 0;
    for (uint64_t c : counts) n += c;
    return n;
  }
  // Adds `other` (taken with the same bounds) bucket by bucket.
  void Add(const HistogramCounts& other) {
    if (counts.size() < other.counts.size()) counts.resize(other.counts.size(), 0);
    for (size_t i = 0; i < other.counts.size(); ++i) counts[i] += other.counts[i];
    sum += other.sum;
  }
};

class AtomicHistogram {
 public:
  // `bounds` (ascending) must outlive the histogram: a constant array.
  explicit AtomicHistogram(std::span<const double> bounds)
      : bounds_(bounds), counts_(new std::atomic<uint64_t>[bounds.size() + 1]) {
    for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
  }
  AtomicHistogram(const AtomicHistogram&) = delete;
  AtomicHistogram& operator=(const AtomicHistogram&) = delete;

  void Observe(double value) {
    const size_t bucket = static_cast<size_t>(
        std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
    counts_[bucket].fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(value, std::memory_order_relaxed);
  }

  HistogramCounts Snapshot() const {
    HistogramCounts out;
    out.counts.resize(bounds_.size() + 1);
    for (size_t i = 0; i <= bounds_.size(); ++i) {
      out.counts[i] = counts_[i].load(std::memory_order_relaxed);
    }
    out.sum = sum_.load(std::memory_order_relaxed);
    return out;
  }

  std::span<const double> bounds() const { return bounds_; }

 private:
  const std::span<const double> bounds_;
  const std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<double> sum_{0};
};

}  // namespace ferry::metrics
