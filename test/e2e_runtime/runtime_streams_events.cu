// A CUDA runtime program that uses streams, events and page-locked memory:
//   - stream A copies page-locked input to the device (cudaMemcpyAsync) and
//     scales it in many rounds; stream B waits for A's event
//     (cudaStreamWaitEvent), adds to A's output, copies the sum back into
//     page-locked memory, and queues a host function (cudaLaunchHostFunc)
//     that checks the bytes arrived and a stream callback
//     (cudaStreamAddCallback) that must run after it;
//   - events time stream A's rounds (cudaEventElapsedTime), and an event
//     created with cudaEventDisableTiming is refused for timing;
//   - a host function holds stream C until the program releases it, so
//     cudaStreamQuery and cudaEventQuery must answer cudaErrorNotReady (which
//     is no error: cudaGetLastError stays clean) and cudaSuccess once the
//     work completed; the results are then polled for with cudaEventQuery,
//     as programs that overlap host work do, and many polls in a row must
//     each find the copied bytes there once the copy reports ready;
//   - the default stream (per thread with --default-stream per-thread), used
//     from two host threads at once, with copies and a host function each.
// Prints what it checked and "all checks passed", or the first failure.
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "runtime_check.h"
#include "runtime_hold.h"
#include "runtime_kernels.cuh"

namespace {

using Clock = std::chrono::steady_clock;
// Every wait below is bounded, so a broken stream fails the program instead
// of hanging it.
constexpr auto kWaitLimit = kRtHoldLimit;

// What the host function and the stream callback on stream B saw. They run
// on the driver's callback thread, so fields are atomics.
struct StreamBCallbacks {
  const float* pinned = nullptr;  // the page-locked copy they check
  const float* expected = nullptr;
  int n = 0;
  cudaStream_t stream = nullptr;
  std::atomic<int> order{0};          // incremented by each, in order
  std::atomic<int> host_func_at{-1};  // value of `order` when it ran
  std::atomic<int> callback_at{-1};
  std::atomic<bool> bytes_arrived{false};
  std::atomic<bool> callback_stream_ok{false};
  std::atomic<int> callback_status{-1};
};

// cudaLaunchHostFunc body: runs after the copy before it, so the bytes must
// be in page-locked memory already. No CUDA calls here (CUDA forbids them).
void CheckBytesArrived(void* user_data) {
  auto* state = static_cast<StreamBCallbacks*>(user_data);
  bool all = true;
  for (int i = 0; i < state->n; ++i) all = all && state->pinned[i] == state->expected[i];
  state->bytes_arrived.store(all);
  state->host_func_at.store(state->order.fetch_add(1));
}

// cudaStreamAddCallback body.
void StreamCallback(cudaStream_t stream, cudaError_t status, void* user_data) {
  auto* state = static_cast<StreamBCallbacks*>(user_data);
  state->callback_status.store(static_cast<int>(status));
  state->callback_stream_ok.store(stream == state->stream);
  state->callback_at.store(state->order.fetch_add(1));
}

void SetFlag(void* user_data) { static_cast<std::atomic<bool>*>(user_data)->store(true); }

int Blocks(int n) { return (n + 255) / 256; }

// Streams A and B, the cross-stream wait, async copies both ways through
// page-locked memory, host function and callback order, event timing.
void StreamsAndEvents() {
  const int n = 1 << 20;
  const int rounds = 12;
  const size_t bytes = n * sizeof(float);
  float* in = nullptr;
  float* out = nullptr;
  RT_CHECK(cudaMallocHost(&in, bytes));
  RT_CHECK(cudaHostAlloc(&out, bytes, cudaHostAllocPortable));
  unsigned flags = 0;
  RT_CHECK(cudaHostGetFlags(&flags, out));
  RT_EXPECT((flags & cudaHostAllocPortable) != 0);
  std::vector<float> expected(n), ones(n, 1.0f);
  for (int i = 0; i < n; ++i) {
    in[i] = static_cast<float>(i % 1000);
    expected[i] = std::ldexp(in[i], rounds) + 1.0f;  // exact in float
  }

  float *x = nullptr, *y = nullptr, *z = nullptr;
  RT_CHECK(cudaMalloc(&x, bytes));
  RT_CHECK(cudaMalloc(&y, bytes));
  RT_CHECK(cudaMalloc(&z, bytes));
  RT_CHECK(cudaMemcpy(y, ones.data(), bytes, cudaMemcpyHostToDevice));
  RT_CHECK(cudaDeviceSynchronize());

  cudaStream_t a = nullptr, b = nullptr;
  RT_CHECK(cudaStreamCreate(&a));
  RT_CHECK(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking));
  unsigned stream_flags = 0;
  RT_CHECK(cudaStreamGetFlags(b, &stream_flags));
  RT_EXPECT(stream_flags == cudaStreamNonBlocking);
  cudaEvent_t start = nullptr, stop = nullptr, produced = nullptr;
  RT_CHECK(cudaEventCreate(&start));
  RT_CHECK(cudaEventCreate(&stop));
  RT_CHECK(cudaEventCreateWithFlags(&produced, cudaEventDisableTiming));

  StreamBCallbacks seen;
  seen.pinned = out;
  seen.expected = expected.data();
  seen.n = n;
  seen.stream = b;

  // Stream A: the input goes up and is scaled `rounds` times; many rounds,
  // so stream B would see a partly scaled input if it did not wait.
  RT_CHECK(cudaMemcpyAsync(x, in, bytes, cudaMemcpyHostToDevice, a));
  RT_CHECK(cudaEventRecord(start, a));
  for (int r = 0; r < rounds; ++r) rt_scale<float><<<Blocks(n), 256, 0, a>>>(x, 2.0f, n);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaEventRecord(stop, a));
  RT_CHECK(cudaEventRecord(produced, a));
  // Stream B consumes stream A's output.
  RT_CHECK(cudaStreamWaitEvent(b, produced, 0));
  rt_vector_add<<<Blocks(n), 256, 0, b>>>(x, y, z, n);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaMemcpyAsync(out, z, bytes, cudaMemcpyDeviceToHost, b));
  RT_CHECK(cudaLaunchHostFunc(b, CheckBytesArrived, &seen));
  RT_CHECK(cudaStreamAddCallback(b, StreamCallback, &seen, 0));
  RT_CHECK(cudaStreamSynchronize(b));

  // Both ran by the time the synchronize returned, in stream order.
  RT_EXPECT(seen.host_func_at.load() == 0);
  RT_EXPECT(seen.callback_at.load() == 1);
  RT_EXPECT(seen.bytes_arrived.load());
  RT_EXPECT(seen.callback_status.load() == static_cast<int>(cudaSuccess));
  RT_EXPECT(seen.callback_stream_ok.load());
  for (int i = 0; i < n; ++i) RT_EXPECT(out[i] == expected[i]);
  std::printf("stream B waited for stream A's event; async copies through pinned memory: ok\n");
  std::printf("host function saw the copied bytes, then the stream callback ran: ok\n");

  // Stream A is done too: B waited for the last event A recorded.
  RT_CHECK(cudaEventQuery(produced));
  RT_CHECK(cudaEventQuery(stop));
  RT_CHECK(cudaStreamQuery(a));
  float ms = -1.0f;
  RT_CHECK(cudaEventElapsedTime(&ms, start, stop));
  RT_EXPECT(std::isfinite(ms) && ms >= 0.0f);
  float backwards = 1.0f;
  RT_CHECK(cudaEventElapsedTime(&backwards, stop, start));
  RT_EXPECT(backwards == -ms);
  std::printf("cudaEventElapsedTime over %d rounds: ok\n", rounds);
  // Timing an event created with cudaEventDisableTiming is an error, and
  // not a sticky one.
  float ignored = 0;
  RT_EXPECT(cudaEventElapsedTime(&ignored, start, produced) == cudaErrorInvalidResourceHandle);
  RT_EXPECT(cudaGetLastError() == cudaErrorInvalidResourceHandle);
  RT_EXPECT(cudaGetLastError() == cudaSuccess);
  std::printf("timing an event made with cudaEventDisableTiming is refused: ok\n");

  RT_CHECK(cudaEventDestroy(start));
  RT_CHECK(cudaEventDestroy(stop));
  RT_CHECK(cudaEventDestroy(produced));
  RT_CHECK(cudaStreamDestroy(a));
  RT_CHECK(cudaStreamDestroy(b));
  RT_CHECK(cudaFree(x));
  RT_CHECK(cudaFree(y));
  RT_CHECK(cudaFree(z));
  RT_CHECK(cudaFreeHost(in));
  RT_CHECK(cudaFreeHost(out));
}

// Stream C held by a host function: queries answer not-ready until it is
// released, then success; the result is polled for with cudaEventQuery.
void QueriesOnAHeldStream() {
  const int n = 4096;
  const size_t bytes = n * sizeof(float);
  float* pinned = nullptr;
  RT_CHECK(cudaHostAlloc(&pinned, bytes, cudaHostAllocDefault));
  for (int i = 0; i < n; ++i) pinned[i] = static_cast<float>(i);
  float* data = nullptr;
  RT_CHECK(cudaMalloc(&data, bytes));
  cudaStream_t c = nullptr;
  int least = 0, greatest = 0;
  RT_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  RT_CHECK(cudaStreamCreateWithPriority(&c, cudaStreamNonBlocking, greatest));
  int priority = 1;
  RT_CHECK(cudaStreamGetPriority(c, &priority));
  RT_EXPECT(priority == greatest);
  cudaEvent_t done = nullptr;
  RT_CHECK(cudaEventCreateWithFlags(&done, cudaEventBlockingSync));

  RtHold hold;
  RT_CHECK(cudaMemcpyAsync(data, pinned, bytes, cudaMemcpyHostToDevice, c));
  RT_CHECK(cudaLaunchHostFunc(c, RtHoldStream, &hold));
  rt_scale<float><<<Blocks(n), 256, 0, c>>>(data, -3.0f, n);
  RT_CHECK(cudaGetLastError());
  RT_CHECK(cudaMemcpyAsync(pinned, data, bytes, cudaMemcpyDeviceToHost, c));
  RT_CHECK(cudaEventRecord(done, c));

  RT_EXPECT(cudaStreamQuery(c) == cudaErrorNotReady);
  RT_EXPECT(cudaEventQuery(done) == cudaErrorNotReady);
  // Not ready is a state, not an error.
  RT_EXPECT(cudaGetLastError() == cudaSuccess);
  RT_EXPECT(cudaPeekAtLastError() == cudaSuccess);
  std::printf("cudaStreamQuery and cudaEventQuery behind a held stream: not ready: ok\n");

  hold.released.store(true);
  const auto deadline = Clock::now() + kWaitLimit;
  cudaError_t state = cudaErrorNotReady;
  while ((state = cudaEventQuery(done)) == cudaErrorNotReady && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  RT_CHECK(state);
  RT_EXPECT(hold.entered.load() && !hold.gave_up.load());
  // The event completed, so the copy before it landed.
  for (int i = 0; i < n; ++i) RT_EXPECT(pinned[i] == -3.0f * static_cast<float>(i));
  RT_CHECK(cudaStreamQuery(c));
  RT_CHECK(cudaEventSynchronize(done));
  std::printf("polled with cudaEventQuery until the copy landed, then both ready: ok\n");

  RT_CHECK(cudaEventDestroy(done));
  RT_CHECK(cudaStreamDestroy(c));
  RT_CHECK(cudaFree(data));
  RT_CHECK(cudaFreeHost(pinned));
}

// The overlap pattern: queue a copy into page-locked memory, poll with
// cudaEventQuery or cudaStreamQuery until ready, then read the bytes, many
// times over. Ready must mean the bytes are there, every time.
void PollForCopies() {
  const int n = 1 << 14;
  const size_t bytes = n * sizeof(unsigned);
  const int rounds = 400;
  unsigned* pinned = nullptr;
  unsigned char* data = nullptr;
  RT_CHECK(cudaMallocHost(&pinned, bytes));
  RT_CHECK(cudaMalloc(&data, bytes));
  cudaStream_t stream = nullptr;
  RT_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t copied = nullptr;
  RT_CHECK(cudaEventCreateWithFlags(&copied, cudaEventDisableTiming));
  int stale = 0;
  for (int round = 0; round < rounds; ++round) {
    const unsigned char value = static_cast<unsigned char>(1 + round % 250);
    std::memset(pinned, 0, bytes);
    RT_CHECK(cudaMemsetAsync(data, value, bytes, stream));
    RT_CHECK(cudaMemcpyAsync(pinned, data, bytes, cudaMemcpyDeviceToHost, stream));
    RT_CHECK(cudaEventRecord(copied, stream));
    const bool by_event = round % 2 == 0;
    const auto deadline = Clock::now() + kWaitLimit;
    cudaError_t state = cudaErrorNotReady;
    while ((state = by_event ? cudaEventQuery(copied) : cudaStreamQuery(stream)) ==
               cudaErrorNotReady &&
           Clock::now() < deadline) {
    }
    RT_CHECK(state);
    const unsigned expected = value * 0x01010101u;
    if (pinned[0] != expected || pinned[n - 1] != expected) ++stale;
  }
  if (stale != 0)
    std::printf("%d of %d polls reported ready before the bytes arrived\n", stale, rounds);
  RT_EXPECT(stale == 0);
  RT_CHECK(cudaEventDestroy(copied));
  RT_CHECK(cudaStreamDestroy(stream));
  RT_CHECK(cudaFree(data));
  RT_CHECK(cudaFreeHost(pinned));
  std::printf("%d polls with cudaEventQuery / cudaStreamQuery: the bytes had arrived: ok\n",
              rounds);
}

// One host thread's round trip on the default stream (stream 0: the legacy
// stream, or the thread's own with --default-stream per-thread) and on
// cudaStreamPerThread: returns whether everything arrived.
bool DefaultStreamRoundTrip(float factor) {
  const int n = 10000;
  const size_t bytes = n * sizeof(float);
  float* pinned = nullptr;
  float* data = nullptr;
  if (cudaMallocHost(&pinned, bytes) != cudaSuccess) return false;
  if (cudaMalloc(&data, bytes) != cudaSuccess) return false;
  for (int i = 0; i < n; ++i) pinned[i] = static_cast<float>(i);
  std::atomic<bool> ran_on_default{false}, ran_per_thread{false};
  bool ok = cudaMemcpyAsync(data, pinned, bytes, cudaMemcpyHostToDevice, 0) == cudaSuccess;
  rt_scale<float><<<Blocks(n), 256>>>(data, factor, n);
  ok = ok && cudaGetLastError() == cudaSuccess;
  ok = ok && cudaMemcpyAsync(pinned, data, bytes, cudaMemcpyDeviceToHost, 0) == cudaSuccess;
  ok = ok && cudaLaunchHostFunc(0, SetFlag, &ran_on_default) == cudaSuccess;
  ok = ok && cudaStreamSynchronize(0) == cudaSuccess;
  ok = ok && ran_on_default.load();
  for (int i = 0; ok && i < n; ++i) ok = pinned[i] == factor * static_cast<float>(i);
  rt_scale<float><<<Blocks(n), 256, 0, cudaStreamPerThread>>>(data, 2.0f, n);
  ok = ok && cudaMemcpyAsync(pinned, data, bytes, cudaMemcpyDeviceToHost, cudaStreamPerThread) ==
                 cudaSuccess;
  ok = ok && cudaLaunchHostFunc(cudaStreamPerThread, SetFlag, &ran_per_thread) == cudaSuccess;
  ok = ok && cudaStreamSynchronize(cudaStreamPerThread) == cudaSuccess;
  ok = ok && ran_per_thread.load();
  for (int i = 0; ok && i < n; ++i) ok = pinned[i] == 2.0f * factor * static_cast<float>(i);
  ok = cudaFree(data) == cudaSuccess && ok;
  ok = cudaFreeHost(pinned) == cudaSuccess && ok;
  return ok;
}

void DefaultStreamsFromTwoThreads() {
  bool worker_ok = false;
  std::thread worker([&] { worker_ok = DefaultStreamRoundTrip(5.0f); });
  const bool main_ok = DefaultStreamRoundTrip(-7.0f);
  worker.join();
  RT_EXPECT(main_ok);
  RT_EXPECT(worker_ok);
  std::printf("default stream and cudaStreamPerThread from two threads, with host functions: ok\n");
}

}  // namespace

int main() {
  RT_CHECK(cudaSetDevice(0));
  StreamsAndEvents();
  QueriesOnAHeldStream();
  PollForCopies();
  DefaultStreamsFromTwoThreads();
  RT_CHECK(cudaDeviceSynchronize());
  std::printf("all checks passed\n");
  return 0;
}
