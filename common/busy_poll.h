// Busy polling: how long a thread that waits for its peer's next message
// spins before it goes to sleep.
//
// A sleeping thread's wake-up is what a round trip costs most on an idle
// machine (tens of microseconds on a VM whose idle vCPU is halted, a few on
// bare metal), and each synchronous call pays it twice: ferryd's session
// thread waiting for the call, the client's caller waiting for the reply. A
// thread that spins a little longer than the peer takes to answer pays
// neither. Every transport waits through this file (TCP, TLS and shared
// memory spin on their descriptor or ring, RDMA on its completion queue), so
// one setting governs them all:
//
//   * the window (BusyPollWindow): the longest one wait spins, process-wide;
//     ferryd's --busy-poll, the client's FERRY_BUSY_POLL. 0 turns spinning
//     off everywhere: no thread ever spins, every wait sleeps at once.
//   * its default (DefaultBusyPollWindow): kDefaultBusyPollWindow where this
//     process may run on at least kBusyPollMinCpus CPUs, else 0 — with one
//     CPU the spinner only keeps the peer it waits for off the CPU.
//   * SpinUntil: spin on a predicate for a given time (the building block).
//   * BusyPoller: one waiting thread's adaptive use of the window (below);
//     what the transports call before they sleep:
//
//       BusyPoller poller_;  // the reader's, a member beside its other state
//       ...
//       if (!poller_.Spin([&] { return TryReceive(); }, read_deadline_)) {
//         Block();  // poll(2), a futex, a completion channel
//       }
//
// Thread-safety: the window's getter and setter are safe from any thread
// (a relaxed atomic: a change applies to waits that start after it).
// SpinUntil is a pure function of its arguments. A BusyPoller belongs to one
// thread at a time (a transport's reader, or its writer).
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "common/status.h"

namespace ferry {

// The default window where CPUs allow it (bench/results/busy-poll-2026-12-07.md):
// longer than a halted vCPU's wake-up (25-30 us measured on a 2-CPU VM), so
// that a peer that slept still answers inside the window.
inline constexpr std::chrono::microseconds kDefaultBusyPollWindow{50};
// Fewer CPUs than this (sched_getaffinity): the default window is 0.
inline constexpr int kBusyPollMinCpus = 2;
// The largest window ParseBusyPollWindow accepts.
inline constexpr std::chrono::microseconds kMaxBusyPollWindow{1000};

// The window in force: the last SetBusyPollWindow, else the default (computed
// on first use).
std::chrono::microseconds BusyPollWindow();
// Sets the window for every wait that starts from now on, in every
// transport of this process. Values outside [0, kMaxBusyPollWindow] are
// clamped into it.
void SetBusyPollWindow(std::chrono::microseconds window);
// kDefaultBusyPollWindow when this process may run on at least
// kBusyPollMinCpus CPUs, else 0.
std::chrono::microseconds DefaultBusyPollWindow();
// The default rule itself, for a given number of usable CPUs.
std::chrono::microseconds DefaultBusyPollWindowFor(int cpus);
// The CPUs this process may run on (sched_getaffinity: a container or
// taskset may allow fewer than the machine has).
int UsableCpus();

// Parses a window as flags and environment variables write it: a whole
// number of microseconds, optionally followed by "us" ("0", "50", "100us"),
// from 0 to kMaxBusyPollWindow. Anything else is InvalidArgument saying what
// is accepted (the caller names the flag or variable); `*out` is untouched
// then.
Status ParseBusyPollWindow(std::string_view text, std::chrono::microseconds* out);

// One CPU "pause" (x86 PAUSE, ARM YIELD): a spinning thread yields the core's
// resources to its hyperthread sibling and saves power.
void CpuRelax();

// Calls `ready` until it returns true (then true) or `budget` has passed
// since the call began, or `limit` is reached (then false), with a CpuRelax
// between two calls. `ready` may have side effects (a non-blocking receive):
// it is never called again after returning true. A budget of zero or less,
// or a limit already passed, returns false without calling `ready`.
bool SpinUntil(
    std::chrono::nanoseconds budget, absl::FunctionRef<bool()> ready,
    std::chrono::steady_clock::time_point limit = std::chrono::steady_clock::time_point::max());

// One waiting thread's busy polling (a transport keeps one for its reader
// and one for its writer). Spin() is called once per wait, before the thread
// sleeps; it spins as long as spinning has recently paid:
//
//   * window 0 (BusyPollWindow() at the call): returns false at once, calls
//     nothing, counts nothing.
//   * otherwise it spins for the window while its spins catch what they wait
//     for. Each wait that the spin did not catch (the caller goes on to
//     sleep) halves the next spin, down to an eighth of the window; each wait
//     it caught restores the whole window. While below the whole window,
//     every kProbeEvery-th wait spins the whole window again (a probe), so a
//     pair of peers that both backed off — each sleeping, each making the
//     other wait a wake-up longer — finds its way back to spinning.
//   * busy CPUs: when the thread was preempted (an involuntary context
//     switch, looked at after each spin that missed or took at least
//     kPreemptionCheckAfter), other work wants its CPU, and every microsecond
//     spun is taken from the peer or from that work: it stops spinning, but
//     for a probe (an eighth of the window) every kBusyProbeEvery-th wait; a
//     probe that runs unpreempted ends the pause, and spinning resumes at an
//     eighth of the window.
//
// So a run of long waits (an idle client; a long synchronize) costs about an
// eighth of the window per wait, short waits cost no wake-up at all, and on
// CPUs that other work keeps busy it costs next to nothing.
class BusyPoller {
 public:
  static constexpr int kMaxHalvings = 3;
  static constexpr uint32_t kProbeEvery = 8;
  static constexpr uint32_t kBusyProbeEvery = 32;
  static constexpr std::chrono::microseconds kPreemptionCheckAfter{10};

  // How many times the calling thread has been preempted so far (the
  // default: getrusage(RUSAGE_THREAD) ru_nivcsw); tests pass their own.
  using PreemptionCounter = uint64_t (*)();
  static uint64_t ThreadPreemptions();

  explicit BusyPoller(PreemptionCounter preemptions = &ThreadPreemptions)
      : preemptions_(preemptions) {}

  // Spins until `ready()` (true) or this wait's budget passes (false: the
  // caller sleeps now), never past `limit` (a read deadline). `ready` as in
  // SpinUntil.
  bool Spin(absl::FunctionRef<bool()> ready, std::chrono::steady_clock::time_point limit =
                                                 std::chrono::steady_clock::time_point::max());

  // Waits that spun (all of them with a window > 0), and those whose spin
  // caught what it waited for; for tests and measurements.
  uint64_t spins() const { return spins_; }
  uint64_t caught() const { return caught_; }
  // How many times the next spin's budget is halved (0 = the whole window).
  int halvings() const { return halvings_; }
  // Whether it has stopped spinning because the CPUs are busy.
  bool paused_for_busy_cpus() const { return busy_cpus_; }
  // The budget of the last wait that spun.
  std::chrono::nanoseconds last_budget() const { return last_budget_; }

 private:
  // Whether the thread was preempted since the last look.
  bool Preempted();

  PreemptionCounter preemptions_;
  uint64_t seen_preemptions_ = 0;
  bool looked_ = false;
  bool busy_cpus_ = false;
  std::chrono::nanoseconds last_budget_{0};
  int halvings_ = 0;
  uint32_t waits_ = 0;
  uint64_t spins_ = 0;
  uint64_t caught_ = 0;
};

}  // namespace ferry
