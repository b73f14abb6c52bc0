// e2e program 4, streams_events: ordering between streams, events and the
// default streams. Checks stream creation (default and non-blocking flags,
// with priorities from cuCtxGetStreamPriorityRange, clamping of an
// out-of-range priority), cuStreamGetFlags / GetPriority / GetCtx / Query /
// Synchronize / Destroy; events (default, blocking-sync, disable-timing),
// cuEventRecord / RecordWithFlags / Query (also on a never-recorded event) /
// Synchronize / ElapsedTime (>= 0) / Destroy; cuStreamWaitEvent from a
// producer kernel on stream A to a consumer kernel on stream B, several
// rounds, with the data checked; the legacy default stream (0) waiting for a
// blocking stream; and the per-thread default stream (CU_STREAM_PER_THREAD)
// from two threads at once. Usage: streams_events [IMAGE_DIR]. Exits 0 when
// every check passes.
#include <cuda.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "driver_check.h"

namespace {

namespace e2e = ::ferry::e2e;
using ::ferry::e2e::Ok;

// On a real GPU the producer spins this long first, so a consumer that ran
// without waiting would read stale data.
constexpr int kProducerSpin = 1 << 18;
constexpr int kN = 4096;

struct Kernels {
  CUfunction produce = nullptr;
  CUfunction consume = nullptr;
};

void LaunchProduce(const Kernels& kernels, CUdeviceptr out, int mul, int add, CUstream stream) {
  int n = kN, spin = kProducerSpin;
  void* params[] = {&out, &n, &mul, &add, &spin};
  E2E_CHECK_CU(
      cuLaunchKernel(kernels.produce, kN / 256, 1, 1, 256, 1, 1, 0, stream, params, nullptr));
}

void LaunchConsume(const Kernels& kernels, CUdeviceptr in, CUdeviceptr out, CUstream stream) {
  int n = kN;
  void* params[] = {&in, &out, &n};
  E2E_CHECK_CU(
      cuLaunchKernel(kernels.consume, kN / 256, 1, 1, 256, 1, 1, 0, stream, params, nullptr));
}

// Fails unless result[i] == (i * mul + add) * 2 + 1 for every i.
void CheckConsumed(const int* result, int mul, int add, const char* what) {
  for (int i = 0; i < kN; ++i) {
    const int expected = (i * mul + add) * 2 + 1;
    E2E_CHECK(result[i] == expected, "%s: element %d = %d, expected %d", what, i, result[i],
              expected);
  }
  Ok("%s: %d elements", what, kN);
}

// Device input and output buffers plus a pinned host buffer for the result.
struct Buffers {
  Buffers() {
    E2E_CHECK_CU(cuMemAlloc(&in, kN * sizeof(int)));
    E2E_CHECK_CU(cuMemAlloc(&out, kN * sizeof(int)));
    E2E_CHECK_CU(cuMemAllocHost(reinterpret_cast<void**>(&host), kN * sizeof(int)));
  }
  ~Buffers() {
    E2E_CHECK_CU(cuMemFree(in));
    E2E_CHECK_CU(cuMemFree(out));
    E2E_CHECK_CU(cuMemFreeHost(host));
  }
  // Zeroes both device buffers and the host buffer, and waits for it.
  void Reset() {
    E2E_CHECK_CU(cuMemsetD32(in, 0, kN));
    E2E_CHECK_CU(cuMemsetD32(out, 0, kN));
    E2E_CHECK_CU(cuCtxSynchronize());
    for (int i = 0; i < kN; ++i) host[i] = 0;
  }
  CUdeviceptr in = 0, out = 0;
  int* host = nullptr;
};

// Where a produce/consume round runs: produce, then consume, then the copy of
// the result to the host buffer, each on its stream; then `sync` is
// synchronized.
struct RoundStreams {
  CUstream produce, consume, copy, sync;
};

// Produces in[i] = i * mul + add, consumes it into out, copies out to the
// host buffer and synchronizes, on the streams `on` names; then checks the
// host buffer (`what` names the round in messages).
void RunRound(const Kernels& kernels, Buffers& buffers, int mul, int add, RoundStreams on,
              const char* what) {
  LaunchProduce(kernels, buffers.in, mul, add, on.produce);
  LaunchConsume(kernels, buffers.in, buffers.out, on.consume);
  E2E_CHECK_CU(cuMemcpyDtoHAsync(buffers.host, buffers.out, kN * sizeof(int), on.copy));
  E2E_CHECK_CU(cuStreamSynchronize(on.sync));
  CheckConsumed(buffers.host, mul, add, what);
}

void CheckStreams(const Kernels& kernels, CUcontext context) {
  int least = 0, greatest = 0;
  E2E_CHECK_CU(cuCtxGetStreamPriorityRange(&least, &greatest));
  E2E_CHECK(greatest <= least, "priority range least %d, greatest %d", least, greatest);
  Ok("cuCtxGetStreamPriorityRange: least %d, greatest %d", least, greatest);

  CUstream blocking = nullptr, non_blocking = nullptr, high = nullptr, low = nullptr,
           clamped = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&blocking, CU_STREAM_DEFAULT));
  E2E_CHECK_CU(cuStreamCreate(&non_blocking, CU_STREAM_NON_BLOCKING));
  E2E_CHECK_CU(cuStreamCreateWithPriority(&high, CU_STREAM_NON_BLOCKING, greatest));
  E2E_CHECK_CU(cuStreamCreateWithPriority(&low, CU_STREAM_DEFAULT, least));
  E2E_CHECK_CU(cuStreamCreateWithPriority(&clamped, CU_STREAM_DEFAULT, greatest - 10));
  E2E_CHECK(blocking != non_blocking && high != low, "two streams share a handle");

  unsigned int flags = 99;
  E2E_CHECK_CU(cuStreamGetFlags(blocking, &flags));
  E2E_CHECK(flags == CU_STREAM_DEFAULT, "blocking stream flags %u", flags);
  E2E_CHECK_CU(cuStreamGetFlags(non_blocking, &flags));
  E2E_CHECK(flags == CU_STREAM_NON_BLOCKING, "non-blocking flags %u", flags);
  E2E_CHECK_CU(cuStreamGetFlags(high, &flags));
  E2E_CHECK(flags == CU_STREAM_NON_BLOCKING, "high-priority flags %u", flags);
  Ok("cuStreamGetFlags");

  int priority = 99;
  E2E_CHECK_CU(cuStreamGetPriority(high, &priority));
  E2E_CHECK(priority == greatest, "high priority %d, expected %d", priority, greatest);
  E2E_CHECK_CU(cuStreamGetPriority(low, &priority));
  E2E_CHECK(priority == least, "low priority %d, expected %d", priority, least);
  E2E_CHECK_CU(cuStreamGetPriority(clamped, &priority));
  E2E_CHECK(priority == greatest, "priority %d clamped to %d, expected %d", greatest - 10, priority,
            greatest);
  Ok("cuStreamGetPriority (greatest, least, clamped)");

  CUcontext stream_context = nullptr;
  E2E_CHECK_CU(cuStreamGetCtx(non_blocking, &stream_context));
  E2E_CHECK(stream_context == context, "cuStreamGetCtx gave another context");
  Ok("cuStreamGetCtx");

  for (CUstream stream : {blocking, non_blocking, high, low, clamped}) {
    E2E_CHECK_CU(cuStreamQuery(stream));
  }
  Ok("cuStreamQuery on idle streams -> CUDA_SUCCESS");

  // Work on each stream, then synchronize, query and check.
  Buffers buffers;
  int round = 0;
  for (CUstream stream : {blocking, non_blocking, high, low}) {
    buffers.Reset();
    RunRound(kernels, buffers, 3, round, {stream, stream, stream, stream},
             "produce + consume on one stream");
    E2E_CHECK_CU(cuStreamQuery(stream));
    ++round;
  }

  for (CUstream stream : {blocking, non_blocking, high, low, clamped}) {
    E2E_CHECK_CU(cuStreamDestroy(stream));
  }
  Ok("cuStreamDestroy");
}

void CheckEvents(const Kernels& kernels) {
  CUstream stream = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  CUevent start = nullptr, end = nullptr, untimed = nullptr, unused = nullptr;
  E2E_CHECK_CU(cuEventCreate(&start, CU_EVENT_DEFAULT));
  E2E_CHECK_CU(cuEventCreate(&end, CU_EVENT_BLOCKING_SYNC));
  E2E_CHECK_CU(cuEventCreate(&untimed, CU_EVENT_DISABLE_TIMING));
  E2E_CHECK_CU(cuEventCreate(&unused, CU_EVENT_DEFAULT));
  E2E_EXPECT_CU(CUDA_SUCCESS, cuEventQuery(unused));  // never recorded

  Buffers buffers;
  buffers.Reset();
  E2E_CHECK_CU(cuEventRecord(start, stream));
  LaunchProduce(kernels, buffers.in, 5, 1, stream);
  LaunchConsume(kernels, buffers.in, buffers.out, stream);
  E2E_CHECK_CU(cuEventRecordWithFlags(end, stream, CU_EVENT_RECORD_DEFAULT));
  E2E_CHECK_CU(cuEventRecord(untimed, stream));
  E2E_CHECK_CU(cuEventSynchronize(end));
  E2E_EXPECT_CU(CUDA_SUCCESS, cuEventQuery(end));
  E2E_EXPECT_CU(CUDA_SUCCESS, cuEventQuery(start));
  E2E_CHECK_CU(cuEventSynchronize(untimed));
  E2E_EXPECT_CU(CUDA_SUCCESS, cuEventQuery(untimed));
  float milliseconds = -1;
  E2E_CHECK_CU(cuEventElapsedTime(&milliseconds, start, end));
  E2E_CHECK(milliseconds >= 0, "elapsed time %f ms", milliseconds);
  Ok("cuEventElapsedTime(start, end) = %.3f ms", milliseconds);
  E2E_CHECK_CU(cuMemcpyDtoH(buffers.host, buffers.out, kN * sizeof(int)));
  CheckConsumed(buffers.host, 5, 1, "work between two events");

  for (CUevent event : {start, end, untimed, unused}) {
    E2E_CHECK_CU(cuEventDestroy(event));
  }
  E2E_CHECK_CU(cuStreamDestroy(stream));
  Ok("cuEventDestroy");
}

void CheckWaitEvent(const Kernels& kernels) {
  CUstream producer = nullptr, consumer = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&producer, CU_STREAM_NON_BLOCKING));
  E2E_CHECK_CU(cuStreamCreate(&consumer, CU_STREAM_NON_BLOCKING));
  CUevent produced = nullptr;
  E2E_CHECK_CU(cuEventCreate(&produced, CU_EVENT_DISABLE_TIMING));
  Buffers buffers;
  for (int round = 0; round < 4; ++round) {
    buffers.Reset();
    const int mul = round + 2, add = 7 * round + 1;
    LaunchProduce(kernels, buffers.in, mul, add, producer);
    E2E_CHECK_CU(cuEventRecord(produced, producer));
    E2E_CHECK_CU(cuStreamWaitEvent(consumer, produced, 0));
    LaunchConsume(kernels, buffers.in, buffers.out, consumer);
    E2E_CHECK_CU(cuMemcpyDtoHAsync(buffers.host, buffers.out, kN * sizeof(int), consumer));
    E2E_CHECK_CU(cuStreamSynchronize(consumer));
    CheckConsumed(buffers.host, mul, add, "consumer on stream B after cuStreamWaitEvent on A");
  }
  E2E_CHECK_CU(cuStreamSynchronize(producer));
  E2E_CHECK_CU(cuEventDestroy(produced));
  E2E_CHECK_CU(cuStreamDestroy(producer));
  E2E_CHECK_CU(cuStreamDestroy(consumer));
}

void CheckLegacyDefaultStream(const Kernels& kernels) {
  CUstream blocking = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&blocking, CU_STREAM_DEFAULT));
  Buffers buffers;
  buffers.Reset();
  // The legacy default stream waits for work on blocking streams.
  RunRound(kernels, buffers, 4, 3, {blocking, nullptr, CU_STREAM_LEGACY, nullptr},
           "blocking stream, then legacy default stream (0)");

  buffers.Reset();
  RunRound(kernels, buffers, 6, 0, {nullptr, CU_STREAM_LEGACY, nullptr, CU_STREAM_LEGACY},
           "stream 0 and CU_STREAM_LEGACY");
  E2E_CHECK_CU(cuStreamDestroy(blocking));
}

void CheckPerThreadDefaultStream(const Kernels& kernels, CUcontext context) {
  auto worker = [&kernels, context](int id) {
    E2E_CHECK_CU(cuCtxSetCurrent(context));
    Buffers buffers;
    for (int round = 0; round < 3; ++round) {
      const int mul = 10 + id, add = round;
      RunRound(
          kernels, buffers, mul, add,
          {CU_STREAM_PER_THREAD, CU_STREAM_PER_THREAD, CU_STREAM_PER_THREAD, CU_STREAM_PER_THREAD},
          "CU_STREAM_PER_THREAD on a worker thread");
    }
  };
  std::thread first(worker, 0);
  std::thread second(worker, 1);
  first.join();
  second.join();
  E2E_CHECK_CU(cuStreamQuery(CU_STREAM_PER_THREAD));
  Ok("cuStreamQuery(CU_STREAM_PER_THREAD) on the main thread");
}

}  // namespace

int main(int argc, char** argv) {
  e2e::PrimaryContext primary = e2e::SetUpPrimaryContext();
  CUmodule module = e2e::LoadFatbin(argc, argv);
  const Kernels kernels{e2e::GetFunction(module, e2e::kProduce),
                        e2e::GetFunction(module, e2e::kConsume)};

  CheckStreams(kernels, primary.context);
  CheckEvents(kernels);
  CheckWaitEvent(kernels);
  CheckLegacyDefaultStream(kernels);
  CheckPerThreadDefaultStream(kernels, primary.context);

  E2E_CHECK_CU(cuModuleUnload(module));
  E2E_CHECK_CU(cuCtxSynchronize());
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(primary.device));
  std::printf("streams_events: all checks passed\n");
  return 0;
}
