// e2e program 5, contexts: the primary context and created contexts, the
// per-thread context stack, limits, and several threads sharing a context.
// Checks cuDevicePrimaryCtxGetState (inactive at start, active while
// retained, inactive after the last release), SetFlags (the scheduling flag
// reads back), Retain (same handle twice) / Release / Reset, and that an
// extra release fails; cuCtxCreate / Destroy / PushCurrent / PopCurrent /
// SetCurrent / GetCurrent / GetDevice / GetApiVersion / GetFlags /
// Synchronize with the stack order CUDA defines; cuCtxSetLimit/GetLimit
// (stack size, printf FIFO); cuCtxResetPersistingL2Cache; a fresh thread has
// no current context (cuMemAlloc and cuCtxResetPersistingL2Cache fail with
// CUDA_ERROR_INVALID_CONTEXT); and 4 threads sharing
// one created context, each doing 20 rounds of alloc / copy / memset /
// verify / free. Exits 0 when every check passes.
#include <cuda.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "driver_check.h"

namespace {

namespace e2e = ::ferry::e2e;
using ::ferry::e2e::Ok;

CUcontext Current() {
  CUcontext context = nullptr;
  E2E_CHECK_CU(cuCtxGetCurrent(&context));
  return context;
}

// Allocates, copies a pattern in and out, frees; the context must work.
void CheckContextWorks(const char* what) {
  const size_t n = 100000;
  std::vector<uint8_t> pattern = e2e::Pattern(n, 11);
  std::vector<uint8_t> back(n, 0);
  CUdeviceptr d = 0;
  E2E_CHECK_CU(cuMemAlloc(&d, n));
  E2E_CHECK_CU(cuMemcpyHtoD(d, pattern.data(), n));
  E2E_CHECK_CU(cuMemcpyDtoH(back.data(), d, n));
  E2E_CHECK_CU(cuMemFree(d));
  E2E_CHECK_CU(cuCtxSynchronize());
  E2E_CHECK_BYTES(back.data(), pattern.data(), n, what);
}

void PrimaryState(CUdevice device, unsigned* flags, int* active) {
  E2E_CHECK_CU(cuDevicePrimaryCtxGetState(device, flags, active));
}

void CheckPrimaryContext(CUdevice device) {
  unsigned flags = 0;
  int active = -1;
  PrimaryState(device, &flags, &active);
  E2E_CHECK(active == 0, "primary context active (%d) before any retain", active);
  Ok("primary context inactive at start (flags 0x%x)", flags);

  E2E_CHECK_CU(cuDevicePrimaryCtxSetFlags(device, CU_CTX_SCHED_BLOCKING_SYNC));
  PrimaryState(device, &flags, &active);
  E2E_CHECK((flags & CU_CTX_SCHED_MASK) == CU_CTX_SCHED_BLOCKING_SYNC && active == 0,
            "after SetFlags(BLOCKING_SYNC): flags 0x%x, active %d", flags, active);
  Ok("cuDevicePrimaryCtxSetFlags(CU_CTX_SCHED_BLOCKING_SYNC) reads back");

  CUcontext first = nullptr, second = nullptr;
  E2E_CHECK_CU(cuDevicePrimaryCtxRetain(&first, device));
  E2E_CHECK_CU(cuDevicePrimaryCtxRetain(&second, device));
  E2E_CHECK(first != nullptr && first == second, "two retains gave different handles");
  PrimaryState(device, &flags, &active);
  E2E_CHECK(active == 1, "primary context not active while retained");
  Ok("cuDevicePrimaryCtxRetain twice: same handle, active");

  E2E_CHECK_CU(cuCtxSetCurrent(first));
  E2E_CHECK(Current() == first, "cuCtxGetCurrent is not the primary context");
  unsigned context_flags = 0;
  E2E_CHECK_CU(cuCtxGetFlags(&context_flags));
  E2E_CHECK((context_flags & CU_CTX_SCHED_MASK) == CU_CTX_SCHED_BLOCKING_SYNC,
            "primary context flags 0x%x", context_flags);
  Ok("cuCtxGetFlags on the primary context: 0x%x", context_flags);
  CheckContextWorks("copies in the primary context");
  E2E_CHECK_CU(cuCtxSetCurrent(nullptr));

  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(device));
  PrimaryState(device, &flags, &active);
  E2E_CHECK(active == 1, "primary context inactive with one retain left");
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(device));
  PrimaryState(device, &flags, &active);
  E2E_CHECK(active == 0, "primary context active after the last release");
  Ok("cuDevicePrimaryCtxRelease twice: inactive again");
  E2E_EXPECT_CU(CUDA_ERROR_INVALID_CONTEXT, cuDevicePrimaryCtxRelease(device));

  // Reset destroys the context's resources but keeps the retain.
  CUcontext retained = nullptr;
  E2E_CHECK_CU(cuDevicePrimaryCtxRetain(&retained, device));
  E2E_CHECK_CU(cuCtxSetCurrent(retained));
  CUdeviceptr lost = 0;
  E2E_CHECK_CU(cuMemAlloc(&lost, 1 << 20));
  E2E_CHECK_CU(cuCtxSetCurrent(nullptr));
  E2E_CHECK_CU(cuDevicePrimaryCtxReset(device));
  Ok("cuDevicePrimaryCtxReset");
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(device));
  E2E_CHECK_CU(cuDevicePrimaryCtxRetain(&retained, device));
  E2E_CHECK_CU(cuCtxSetCurrent(retained));
  CheckContextWorks("copies in the primary context after a reset");
  E2E_CHECK_CU(cuCtxSetCurrent(nullptr));
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(device));
}

void CheckCreatedContexts(CUdevice device) {
  CUcontext first = nullptr, second = nullptr, popped = nullptr;
  E2E_CHECK_CU(cuCtxCreate(&first, nullptr, 0, device));
  E2E_CHECK(Current() == first, "cuCtxCreate did not make its context current");
  CUdevice context_device = -1;
  E2E_CHECK_CU(cuCtxGetDevice(&context_device));
  E2E_CHECK(context_device == device, "cuCtxGetDevice = %d, expected %d", context_device, device);
  unsigned version = 0;
  E2E_CHECK_CU(cuCtxGetApiVersion(first, &version));
  E2E_CHECK(version >= 3020, "cuCtxGetApiVersion = %u", version);
  Ok("cuCtxCreate: current, device %d, API version %u", context_device, version);

  E2E_CHECK_CU(cuCtxCreate(&second, nullptr, CU_CTX_SCHED_SPIN, device));
  E2E_CHECK(second != first && Current() == second,
            "second cuCtxCreate is not a new current context");
  unsigned flags = 0;
  E2E_CHECK_CU(cuCtxGetFlags(&flags));
  E2E_CHECK((flags & CU_CTX_SCHED_MASK) == CU_CTX_SCHED_SPIN,
            "flags 0x%x for a context created with CU_CTX_SCHED_SPIN", flags);
  Ok("cuCtxGetFlags: CU_CTX_SCHED_SPIN");

  // Stack: [first, second] -> pop -> [first] -> push second -> [first,
  // second] -> set first -> [first, first] -> pop -> [first].
  E2E_CHECK_CU(cuCtxPopCurrent(&popped));
  E2E_CHECK(popped == second && Current() == first,
            "pop did not return the second context and uncover the first");
  E2E_CHECK_CU(cuCtxPushCurrent(second));
  E2E_CHECK(Current() == second, "push did not make the context current");
  E2E_CHECK_CU(cuCtxSetCurrent(first));
  E2E_CHECK(Current() == first, "set did not replace the top of the stack");
  E2E_CHECK_CU(cuCtxPopCurrent(&popped));
  E2E_CHECK(popped == first && Current() == first, "pop after set: popped %p, current %p",
            static_cast<void*>(popped), static_cast<void*>(Current()));
  Ok("cuCtxPushCurrent / PopCurrent / SetCurrent keep the stack order");

  CheckContextWorks("copies in a created context");
  E2E_CHECK_CU(cuCtxSynchronize());

  size_t value = 0;
  E2E_CHECK_CU(cuCtxSetLimit(CU_LIMIT_STACK_SIZE, 4096));
  E2E_CHECK_CU(cuCtxGetLimit(&value, CU_LIMIT_STACK_SIZE));
  E2E_CHECK(value >= 4096, "stack size limit %zu after setting 4096", value);
  Ok("CU_LIMIT_STACK_SIZE = %zu", value);
  E2E_CHECK_CU(cuCtxSetLimit(CU_LIMIT_PRINTF_FIFO_SIZE, 2 << 20));
  E2E_CHECK_CU(cuCtxGetLimit(&value, CU_LIMIT_PRINTF_FIFO_SIZE));
  E2E_CHECK(value >= (2 << 20), "printf FIFO %zu after setting 2 MiB", value);
  Ok("CU_LIMIT_PRINTF_FIFO_SIZE = %zu", value);

  // Fire and forget: any error would surface at the synchronize.
  E2E_CHECK_CU(cuCtxResetPersistingL2Cache());
  E2E_CHECK_CU(cuCtxSynchronize());
  Ok("cuCtxResetPersistingL2Cache");

  E2E_CHECK_CU(cuCtxDestroy(second));  // not on this thread's stack
  E2E_CHECK(Current() == first, "destroying another context changed current");
  E2E_CHECK_CU(cuCtxDestroy(first));  // current: destroying pops it
  E2E_CHECK(Current() == nullptr, "destroyed context still current");
  Ok("cuCtxDestroy of another context and of the current one");
}

void CheckThreadsShareContext(CUdevice device) {
  CUcontext shared = nullptr, popped = nullptr;
  E2E_CHECK_CU(cuCtxCreate(&shared, nullptr, 0, device));
  E2E_CHECK_CU(cuCtxPopCurrent(&popped));

  // A thread starts with no current context.
  std::thread([] {
    E2E_CHECK(Current() == nullptr, "a new thread has a current context");
    CUdeviceptr d = 0;
    E2E_EXPECT_CU(CUDA_ERROR_INVALID_CONTEXT, cuMemAlloc(&d, 1024));
    E2E_EXPECT_CU(CUDA_ERROR_INVALID_CONTEXT, cuCtxResetPersistingL2Cache());
  }).join();

  constexpr int kThreads = 4, kRounds = 20;
  auto worker = [shared](int id) {
    E2E_CHECK_CU(cuCtxSetCurrent(shared));
    E2E_CHECK(Current() == shared, "thread %d: wrong current context", id);
    for (int round = 0; round < kRounds; ++round) {
      const size_t n = 65536 + 4096 * id + 8 * round;
      std::vector<uint8_t> pattern = e2e::Pattern(n, 100 * id + round);
      std::vector<uint8_t> back(n, 0);
      CUdeviceptr a = 0, b = 0;
      E2E_CHECK_CU(cuMemAlloc(&a, n));
      E2E_CHECK_CU(cuMemAlloc(&b, n));
      E2E_CHECK_CU(cuMemcpyHtoD(a, pattern.data(), n));
      E2E_CHECK_CU(cuMemcpyDtoD(b, a, n));
      E2E_CHECK_CU(cuMemcpyDtoH(back.data(), b, n));
      E2E_CHECK(back == pattern, "thread %d round %d: copy mismatch", id, round);
      const uint32_t word = 0x01010101u * static_cast<uint32_t>(id + 1);
      E2E_CHECK_CU(cuMemsetD32(a, word, n / 4));
      std::vector<uint32_t> words(n / 4, 0);
      E2E_CHECK_CU(cuMemcpyDtoH(words.data(), a, n / 4 * 4));
      for (size_t i = 0; i < words.size(); ++i) {
        E2E_CHECK(words[i] == word, "thread %d round %d: word %zu = 0x%x", id, round, i, words[i]);
      }
      E2E_CHECK_CU(cuMemFree(a));
      E2E_CHECK_CU(cuMemFree(b));
    }
    E2E_CHECK_CU(cuCtxSynchronize());
    Ok("thread %d: %d rounds of alloc / copy / memset / verify / free", id, kRounds);
  };
  std::vector<std::thread> threads;
  for (int id = 0; id < kThreads; ++id) threads.emplace_back(worker, id);
  for (std::thread& thread : threads) thread.join();
  E2E_CHECK_CU(cuCtxDestroy(shared));
}

}  // namespace

int main() {
  E2E_CHECK_CU(cuInit(0));
  CUdevice device = -1;
  E2E_CHECK_CU(cuDeviceGet(&device, 0));
  CheckPrimaryContext(device);
  CheckCreatedContexts(device);
  CheckThreadsShareContext(device);
  std::printf("contexts: all checks passed\n");
  return 0;
}
