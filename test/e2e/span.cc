// e2e program: one program on devices of two servers (FERRY_GPUS=2 through
// a cluster pool whose servers have one GPU each, so the borrow is split).
// Checks that the two devices are there and are not peers of each other;
// runs add_int on a device of each server; copies between them every way a
// program can — cuMemcpyPeer, cuMemcpyPeerAsync on a stream, cuMemcpy and
// cuMemcpyDtoD with unified addressing — with the values checked after each;
// and that an event recorded on device 0's stream and waited for on device
// 1's stream holds device 1's stream until the event's work is done (device
// 0's stream is held by a host function until this program lets it go, so
// the order is decided by ferry, not by timing). Exits 0 when every check
// passes; prints OK lines as it goes.
#include <cuda.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "driver_check.h"
#include "kernel_names.h"

namespace e2e = ::ferry::e2e;
using ::ferry::e2e::Ok;

namespace {

constexpr int kCount = 1 << 18;  // ints per buffer (1 MiB)
constexpr size_t kBytes = sizeof(int) * kCount;

void AddInt(CUfunction add_int, CUdeviceptr data, int delta, CUstream stream) {
  int n = kCount;
  void* params[] = {&data, &delta, &n};
  E2E_CHECK_CU(
      cuLaunchKernel(add_int, (kCount + 255) / 256, 1, 1, 256, 1, 1, 0, stream, params, nullptr));
}

// Reads `data` (in the current context) and checks every int is `base[i] + delta`.
void ExpectInts(CUdeviceptr data, const std::vector<int>& base, int delta, const char* what) {
  std::vector<int> back(kCount, 0);
  E2E_CHECK_CU(cuMemcpyDtoH(back.data(), data, kBytes));
  for (int i = 0; i < kCount; ++i) {
    E2E_CHECK(back[i] == base[i] + delta, "%s: element %d is %d, not %d", what, i, back[i],
              base[i] + delta);
  }
}

// Host functions of the event checks (user data: the flag they use). A
// hold keeps its stream until the program sets its flag (bounded: it gives
// up after a minute and the check then fails); a mark sets its flag; a note
// copies one flag into an int (-1: not run yet).
struct Note {
  const std::atomic<bool>* from;
  std::atomic<int>* to;
};

void CUDA_CB Hold(void* flag) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::minutes(1);
  while (!static_cast<std::atomic<bool>*>(flag)->load() &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}
void CUDA_CB Mark(void* flag) { static_cast<std::atomic<bool>*>(flag)->store(true); }
void CUDA_CB Copy(void* note) {
  auto* n = static_cast<Note*>(note);
  n->to->store(n->from->load() ? 1 : 0);
}

}  // namespace

int main(int argc, char** argv) {
  E2E_CHECK_CU(cuInit(0));
  int count = 0;
  E2E_CHECK_CU(cuDeviceGetCount(&count));
  E2E_CHECK(count == 2, "needs the two devices of a split borrow, has %d", count);
  CUdevice d0 = 0, d1 = 0;
  E2E_CHECK_CU(cuDeviceGet(&d0, 0));
  E2E_CHECK_CU(cuDeviceGet(&d1, 1));
  int can = -1;
  E2E_CHECK_CU(cuDeviceCanAccessPeer(&can, d0, d1));
  E2E_CHECK(can == 0, "devices of two servers reported as peers (%d)", can);
  Ok("two devices, not peers of each other");

  CUcontext c0 = nullptr, c1 = nullptr;
  E2E_CHECK_CU(cuDevicePrimaryCtxRetain(&c0, d0));
  E2E_CHECK_CU(cuDevicePrimaryCtxRetain(&c1, d1));
  E2E_CHECK_CU(cuCtxSetCurrent(c0));
  E2E_EXPECT_CU(CUDA_ERROR_PEER_ACCESS_UNSUPPORTED, cuCtxEnablePeerAccess(c1, 0));

  // A kernel on each device.
  std::vector<int> base(kCount);
  for (int i = 0; i < kCount; ++i) base[i] = i * 3 - 7;
  CUdeviceptr a0 = 0, b0 = 0, a1 = 0;
  E2E_CHECK_CU(cuCtxSetCurrent(c0));
  CUfunction add0 = e2e::GetFunction(e2e::LoadFatbin(argc, argv), e2e::kAddInt);
  E2E_CHECK_CU(cuMemAlloc(&a0, kBytes));
  E2E_CHECK_CU(cuMemAlloc(&b0, kBytes));
  E2E_CHECK_CU(cuMemcpyHtoD(a0, base.data(), kBytes));
  AddInt(add0, a0, 1, nullptr);
  E2E_CHECK_CU(cuCtxSetCurrent(c1));
  CUfunction add1 = e2e::GetFunction(e2e::LoadFatbin(argc, argv), e2e::kAddInt);
  E2E_CHECK_CU(cuMemAlloc(&a1, kBytes));
  E2E_CHECK_CU(cuMemcpyHtoD(a1, base.data(), kBytes));
  AddInt(add1, a1, 2, nullptr);
  ExpectInts(a1, base, 2, "device 1 after its kernel");
  E2E_CHECK_CU(cuCtxSetCurrent(c0));
  ExpectInts(a0, base, 1, "device 0 after its kernel");
  Ok("a kernel on a device of each server");

  // cuMemcpyPeer: device 0 -> device 1, read in device 1's context.
  E2E_CHECK_CU(cuMemcpyPeer(a1, c1, a0, c0, kBytes));
  E2E_CHECK_CU(cuCtxSetCurrent(c1));
  ExpectInts(a1, base, 1, "device 1 after cuMemcpyPeer");
  Ok("cuMemcpyPeer between servers");

  // Larger than one piece of the client's staging (8 MiB), with a tail that
  // is not a whole piece: every byte arrives, in place.
  {
    constexpr size_t kLarge = (12u << 20) + 4096 + 3;
    const std::vector<uint8_t> pattern = e2e::Pattern(kLarge, 11);
    CUdeviceptr large0 = 0, large1 = 0;
    E2E_CHECK_CU(cuCtxSetCurrent(c0));
    E2E_CHECK_CU(cuMemAlloc(&large0, kLarge));
    E2E_CHECK_CU(cuMemcpyHtoD(large0, pattern.data(), kLarge));
    E2E_CHECK_CU(cuCtxSetCurrent(c1));
    E2E_CHECK_CU(cuMemAlloc(&large1, kLarge));
    E2E_CHECK_CU(cuMemcpyPeer(large1, c1, large0, c0, kLarge));
    std::vector<uint8_t> back(kLarge, 0);
    E2E_CHECK_CU(cuMemcpyDtoH(back.data(), large1, kLarge));
    E2E_CHECK_BYTES(back.data(), pattern.data(), kLarge, "12 MiB copied between servers");
    E2E_CHECK_CU(cuMemFree(large1));
    E2E_CHECK_CU(cuCtxSetCurrent(c0));
    E2E_CHECK_CU(cuMemFree(large0));
    E2E_CHECK_CU(cuCtxSetCurrent(c1));  // as before this check
  }
  Ok("a copy of several pieces between servers");

  // cuMemcpyPeerAsync on a stream of device 1, after a kernel queued there:
  // the copy must see the kernel's result.
  CUstream s1 = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
  AddInt(add1, a1, 10, s1);
  E2E_CHECK_CU(cuMemcpyPeerAsync(b0, c0, a1, c1, kBytes, s1));
  E2E_CHECK_CU(cuStreamSynchronize(s1));
  E2E_CHECK_CU(cuCtxSetCurrent(c0));
  ExpectInts(b0, base, 11, "device 0 after cuMemcpyPeerAsync behind a kernel");
  Ok("cuMemcpyPeerAsync between servers, in stream order");

  // Unified addressing: cuMemcpy and cuMemcpyDtoD find each side's server.
  E2E_CHECK_CU(cuMemcpy(a0, b0, kBytes));  // both on device 0
  E2E_CHECK_CU(cuCtxSetCurrent(c1));
  AddInt(add1, a1, 100, nullptr);          // a1 = base + 111
  E2E_CHECK_CU(cuCtxSetCurrent(c0));       // current: device 0
  E2E_CHECK_CU(cuMemcpy(b0, a1, kBytes));  // device 1 -> device 0
  ExpectInts(b0, base, 111, "device 0 after cuMemcpy from device 1");
  E2E_CHECK_CU(cuMemcpyDtoD(a1, a0, kBytes));  // device 0 -> device 1
  E2E_CHECK_CU(cuCtxSetCurrent(c1));
  ExpectInts(a1, base, 11, "device 1 after cuMemcpyDtoD from device 0");
  // Host to device and back with the other server's context current.
  E2E_CHECK_CU(cuMemcpyHtoD(a0, base.data(), kBytes));  // a0 lives on device 0
  E2E_CHECK_CU(cuCtxSetCurrent(c0));
  ExpectInts(a0, base, 0, "device 0 written while device 1's context was current");
  Ok("cuMemcpy / cuMemcpyDtoD / cuMemcpyHtoD with unified addressing across servers");

  // An event of device 0 waited for on device 1's stream, while device 0's
  // stream is held: device 1's stream cannot pass the wait until it is let
  // go, and then sees device 0's work done.
  CUstream s0 = nullptr;
  CUevent e0 = nullptr;
  E2E_CHECK_CU(cuStreamCreate(&s0, CU_STREAM_NON_BLOCKING));
  E2E_CHECK_CU(cuEventCreate(&e0, CU_EVENT_DISABLE_TIMING));
  std::atomic<bool> let_go{false}, device0_done{false};
  std::atomic<int> seen{-1};
  Note note{&device0_done, &seen};
  E2E_CHECK_CU(cuLaunchHostFunc(s0, Hold, &let_go));
  AddInt(add0, a0, 5, s0);
  E2E_CHECK_CU(cuLaunchHostFunc(s0, Mark, &device0_done));
  E2E_CHECK_CU(cuEventRecord(e0, s0));
  E2E_CHECK_CU(cuCtxSetCurrent(c1));
  E2E_CHECK_CU(cuStreamWaitEvent(s1, e0, 0));
  E2E_CHECK_CU(cuLaunchHostFunc(s1, Copy, &note));
  E2E_EXPECT_CU(CUDA_ERROR_NOT_READY, cuStreamQuery(s1));
  E2E_CHECK(seen.load() == -1, "device 1's stream ran past the wait");
  let_go.store(true);
  E2E_CHECK_CU(cuStreamSynchronize(s1));
  E2E_CHECK(seen.load() == 1, "device 1's stream went on before device 0's event (saw %d)",
            seen.load());
  E2E_CHECK_CU(cuCtxSetCurrent(c0));
  ExpectInts(a0, base, 5, "device 0 after the held kernel");
  // Recording device 0's event on device 1's stream is refused.
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_HANDLE, cuEventRecord(e0, s1));
  Ok("an event of one server waited for on a stream of another");

  // The wait is for the record made before it: destroying the event at once
  // (legal in CUDA) changes nothing.
  CUevent gone = nullptr;
  std::atomic<bool> let_go_again{false}, done_again{false};
  std::atomic<int> seen_again{-1};
  Note note_again{&done_again, &seen_again};
  E2E_CHECK_CU(cuEventCreate(&gone, CU_EVENT_DISABLE_TIMING));
  E2E_CHECK_CU(cuLaunchHostFunc(s0, Hold, &let_go_again));
  E2E_CHECK_CU(cuLaunchHostFunc(s0, Mark, &done_again));
  E2E_CHECK_CU(cuEventRecord(gone, s0));
  E2E_CHECK_CU(cuStreamWaitEvent(s1, gone, 0));
  E2E_CHECK_CU(cuEventDestroy(gone));
  E2E_CHECK_CU(cuLaunchHostFunc(s1, Copy, &note_again));
  E2E_EXPECT_CU(CUDA_ERROR_NOT_READY, cuStreamQuery(s1));
  let_go_again.store(true);
  E2E_CHECK_CU(cuStreamSynchronize(s1));
  E2E_CHECK(seen_again.load() == 1, "the wait was lost with its destroyed event (saw %d)",
            seen_again.load());
  Ok("a wait outlives the event it waits for");

  // Ping-pong: each stream waits for the other's event, and the first event
  // is recorded again behind the second wait. Each wait is for the record
  // before it, so both streams finish (waiting for the latest record would
  // close a cycle).
  CUevent f1 = nullptr;
  E2E_CHECK_CU(cuCtxSetCurrent(c1));
  E2E_CHECK_CU(cuEventCreate(&f1, CU_EVENT_DISABLE_TIMING));
  for (int round = 0; round < 5; ++round) {
    E2E_CHECK_CU(cuEventRecord(e0, s0));
    E2E_CHECK_CU(cuStreamWaitEvent(s1, e0, 0));
    AddInt(add1, a1, 1, s1);
    E2E_CHECK_CU(cuEventRecord(f1, s1));
    E2E_CHECK_CU(cuStreamWaitEvent(s0, f1, 0));
    AddInt(add0, a0, 1, s0);
  }
  E2E_CHECK_CU(cuEventRecord(e0, s0));
  E2E_CHECK_CU(cuStreamSynchronize(s0));
  E2E_CHECK_CU(cuStreamSynchronize(s1));
  E2E_CHECK_CU(cuEventDestroy(f1));
  ExpectInts(a1, base, 11 + 5, "device 1 after the ping-pong");
  E2E_CHECK_CU(cuCtxSetCurrent(c0));
  ExpectInts(a0, base, 5 + 5, "device 0 after the ping-pong");
  Ok("waits back and forth between two servers' streams finish");

  E2E_CHECK_CU(cuEventDestroy(e0));
  E2E_CHECK_CU(cuStreamDestroy(s0));
  E2E_CHECK_CU(cuStreamDestroy(s1));
  E2E_CHECK_CU(cuMemFree(a0));
  E2E_CHECK_CU(cuMemFree(b0));
  E2E_CHECK_CU(cuMemFree(a1));
  E2E_CHECK_CU(cuCtxSynchronize());
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(d0));
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(d1));
  return 0;
}
