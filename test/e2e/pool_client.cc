// e2e program pool_client: a borrower for the pool tests. What it
// borrows comes from FERRY_POOL, FERRY_GPUS and FERRY_WAIT.
//
//   pool_client hold RELEASE_FILE [BYTES]
//     cuInit (a refusal prints "CUINIT <error name> (<code>)" and exits 3),
//     prints "BORROWED devices=N total=BYTES", allocates BYTES (default
//     1 MiB) on device 0,
//     prints "READY", then calls cuMemGetInfo every 20 ms until RELEASE_FILE
//     exists (exit 0) or a call fails: "CALL FAILED <error name> (<code>)",
//     exit 4. Gives up after about 60 s (exit 5), so nothing is left behind.
//
//   pool_client quota QUOTA_BYTES [IMAGE_DIR]
//     On one slice with a quota of QUOTA_BYTES: cuDeviceTotalMem and
//     cuMemGetInfo report the slice; cuMemAlloc and cuMemAllocPitch fail
//     with CUDA_ERROR_OUT_OF_MEMORY past the quota and succeed up to it; a
//     kernel runs (through the launch throttle). Prints "all checks passed".
//
//   pool_client turns BYTES TURN_PREFIX ROUNDS [async | kernel IMAGE_DIR]
//     Memory overcommit: takes turns with another borrower on one device.
//     Turn r (1..ROUNDS) starts when the file TURN_PREFIXr exists. Turn 1
//     allocates BYTES and fills them with a linked ring: node i (every
//     kNodeBytes) holds the device address of node i+1 and a value. Every
//     later turn follows the ring from its first node through the stored
//     addresses (each read a copy from the address the previous node
//     stored), checks every value, then adds 1 to each and writes them back.
//     Prints "TURN r OK" after each. Between turns it makes no call, so its
//     memory may be parked. After the last turn it waits for
//     TURN_PREFIX(ROUNDS+1), frees, prints "all checks passed". With
//     "async" it allocates with cuMemAllocAsync (the device's memory pool)
//     instead of cuMemAlloc. With "kernel", a kernel (e2e_ring_step, from
//     IMAGE_DIR's fatbin) follows the ring on the device and adds the 1; the
//     host then follows and checks it. Migration moves it mid-run.
#include <cuda.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "driver_check.h"

namespace e2e = ::ferry::e2e;

namespace {

int Hold(const std::string& release_file, uint64_t bytes) {
  const CUresult init = cuInit(0);
  if (init != CUDA_SUCCESS) {
    std::printf("CUINIT %s (%d)\n", e2e::ErrorName(init), init);
    return 3;
  }
  int count = 0;
  E2E_CHECK_CU(cuDeviceGetCount(&count));
  CUdevice device = 0;
  E2E_CHECK_CU(cuDeviceGet(&device, 0));
  size_t total = 0;
  E2E_CHECK_CU(cuDeviceTotalMem(&total, device));
  std::printf("BORROWED devices=%d total=%zu\n", count, total);
  CUcontext context = nullptr;
  E2E_CHECK_CU(cuDevicePrimaryCtxRetain(&context, device));
  E2E_CHECK_CU(cuCtxSetCurrent(context));
  CUdeviceptr buffer = 0;
  E2E_CHECK_CU(cuMemAlloc(&buffer, bytes));
  std::printf("READY\n");
  std::fflush(stdout);
  for (int round = 0; round < 3000; ++round) {
    if (access(release_file.c_str(), F_OK) == 0) {
      E2E_CHECK_CU(cuMemFree(buffer));
      std::printf("RELEASED\n");
      return 0;
    }
    size_t free_bytes = 0, total_bytes = 0;
    const CUresult r = cuMemGetInfo(&free_bytes, &total_bytes);
    if (r != CUDA_SUCCESS) {
      std::printf("CALL FAILED %s (%d)\n", e2e::ErrorName(r), r);
      std::fflush(stdout);
      return 4;
    }
    // Pacing a bounded poll: the state polled is the server's notice.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::printf("pool_client: never released; giving up\n");
  return 5;
}

int Quota(uint64_t quota, const std::string& image_dir) {
  e2e::PrimaryContext primary = e2e::SetUpPrimaryContext();
  size_t total = 0;
  E2E_CHECK_CU(cuDeviceTotalMem(&total, primary.device));
  E2E_CHECK(total == quota, "cuDeviceTotalMem says %zu, the slice is %llu", total,
            static_cast<unsigned long long>(quota));
  e2e::Ok("cuDeviceTotalMem is the slice: %zu", total);
  size_t free_bytes = 0;
  E2E_CHECK_CU(cuMemGetInfo(&free_bytes, &total));
  E2E_CHECK(total == quota && free_bytes == quota, "cuMemGetInfo: free %zu total %zu", free_bytes,
            total);
  e2e::Ok("cuMemGetInfo: free %zu of %zu", free_bytes, total);

  CUdeviceptr half = 0;
  E2E_CHECK_CU(cuMemAlloc(&half, quota / 2));
  CUdeviceptr over = 0;
  E2E_EXPECT_CU(CUDA_ERROR_OUT_OF_MEMORY, cuMemAlloc(&over, quota / 2 + 1));
  // A pitched allocation whose rows pad past what is left.
  size_t pitch = 0;
  E2E_EXPECT_CU(CUDA_ERROR_OUT_OF_MEMORY, cuMemAllocPitch(&over, &pitch, quota / 2, 2, 4));
  CUdeviceptr rest = 0;
  E2E_CHECK_CU(cuMemAlloc(&rest, quota / 2));
  E2E_CHECK_CU(cuMemGetInfo(&free_bytes, &total));
  E2E_CHECK(free_bytes == 0 && total == quota, "full slice: free %zu total %zu", free_bytes, total);
  e2e::Ok("the slice is full: free %zu", free_bytes);
  E2E_EXPECT_CU(CUDA_ERROR_OUT_OF_MEMORY, cuMemAlloc(&over, 256));
  E2E_CHECK_CU(cuMemFree(rest));
  CUdeviceptr pitched = 0;
  E2E_CHECK_CU(cuMemAllocPitch(&pitched, &pitch, 4096, 16, 4));
  e2e::Ok("cuMemAllocPitch within the quota: pitch %zu", pitch);

  // A kernel still runs on the slice (its launches go through the throttle).
  CUmodule module = nullptr;
  E2E_CHECK_CU(cuModuleLoad(&module, (image_dir + "/" + e2e::kFatbinFile).c_str()));
  CUfunction increment = e2e::GetFunction(module, e2e::kIncrement);
  constexpr int kCount = 1024;
  E2E_CHECK_CU(cuMemsetD32(half, 7, kCount));
  int n = kCount;
  void* params[] = {&half, &n};
  for (int i = 0; i < 8; ++i) {
    E2E_CHECK_CU(
        cuLaunchKernel(increment, kCount / 256, 1, 1, 256, 1, 1, 0, nullptr, params, nullptr));
  }
  std::vector<unsigned> host(kCount);
  E2E_CHECK_CU(cuMemcpyDtoH(host.data(), half, kCount * sizeof(unsigned)));
  for (int i = 0; i < kCount; ++i) {
    E2E_CHECK(host[i] == 15, "element %d is %u after 8 increments of 7", i, host[i]);
  }
  e2e::Ok("8 launches on the slice incremented every element");
  E2E_CHECK_CU(cuModuleUnload(module));
  E2E_CHECK_CU(cuMemFree(pitched));
  E2E_CHECK_CU(cuMemFree(half));
  E2E_CHECK_CU(cuDevicePrimaryCtxRelease(primary.device));
  std::printf("all checks passed\n");
  return 0;
}

}  // namespace

// Waits (bounded: about 60 s) until `path` exists.
bool WaitForFile(const std::string& path) {
  for (int round = 0; round < 3000; ++round) {
    if (access(path.c_str(), F_OK) == 0) return true;
    // Pacing a bounded poll of a file the test writes.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

struct RingNode {
  uint64_t next;   // device address of the next node
  uint64_t value;  // turn-dependent
};
constexpr size_t kNodeBytes = 64 << 10;

// `image_dir` not empty: each turn after the first, a kernel follows the
// ring on the device (e2e_ring_step) and the host then checks it.
int Turns(uint64_t bytes, const std::string& turn_prefix, int rounds, bool async,
          const std::string& image_dir = "") {
  e2e::PrimaryContext primary = e2e::SetUpPrimaryContext();
  CUmodule module = nullptr;
  CUfunction ring_step = nullptr;
  if (!image_dir.empty()) {
    E2E_CHECK_CU(cuModuleLoad(&module, (image_dir + "/" + e2e::kFatbinFile).c_str()));
    ring_step = e2e::GetFunction(module, e2e::kRingStep);
  }
  const size_t nodes = bytes / kNodeBytes;
  E2E_CHECK(nodes >= 2, "%llu bytes hold fewer than 2 nodes", static_cast<unsigned long long>(bytes));
  CUdeviceptr base = 0;
  for (int turn = 1; turn <= rounds; ++turn) {
    E2E_CHECK(WaitForFile(turn_prefix + std::to_string(turn)), "turn %d never came", turn);
    if (turn == 1) {
      if (async) {
        E2E_CHECK_CU(cuMemAllocAsync(&base, bytes, nullptr));
        E2E_CHECK_CU(cuStreamSynchronize(nullptr));
      } else {
        E2E_CHECK_CU(cuMemAlloc(&base, bytes));
      }
      for (size_t i = 0; i < nodes; ++i) {
        const RingNode node{base + ((i + 1) % nodes) * kNodeBytes, 1000 * i};
        E2E_CHECK_CU(cuMemcpyHtoD(base + i * kNodeBytes, &node, sizeof(node)));
      }
    } else {
      if (ring_step != nullptr) {
        unsigned long long head = base;
        int count = static_cast<int>(nodes);
        void* params[] = {&head, &count};
        E2E_CHECK_CU(cuLaunchKernel(ring_step, 1, 1, 1, 1, 1, 1, 0, nullptr, params, nullptr));
      }
      // Follow the ring through the addresses stored in device memory (after
      // the kernel's step: each value one higher already).
      CUdeviceptr at = base;
      for (size_t i = 0; i < nodes; ++i) {
        RingNode node{};
        E2E_CHECK_CU(cuMemcpyDtoH(&node, at, sizeof(node)));
        const uint64_t expected =
            1000 * i + static_cast<uint64_t>(turn - 2) + (ring_step != nullptr ? 1 : 0);
        E2E_CHECK(node.value == expected, "turn %d: node %zu holds %llu, not %llu", turn, i,
                  static_cast<unsigned long long>(node.value),
                  static_cast<unsigned long long>(expected));
        E2E_CHECK(node.next == base + ((i + 1) % nodes) * kNodeBytes,
                  "turn %d: node %zu points at 0x%llx", turn, i,
                  static_cast<unsigned long long>(node.next));
        if (ring_step == nullptr) {
          node.value += 1;
          E2E_CHECK_CU(cuMemcpyHtoD(at, &node, sizeof(node)));
        }
        at = node.next;
      }
      E2E_CHECK(at == base, "turn %d: the ring does not close", turn);
    }
    std::printf("TURN %d OK\n", turn);
    std::fflush(stdout);
  }
  E2E_CHECK(WaitForFile(turn_prefix + std::to_string(rounds + 1)), "never told to end");
  if (async) {
    E2E_CHECK_CU(cuMemFreeAsync(base, nullptr));
    E2E_CHECK_CU(cuStreamSynchronize(nullptr));
  } else {
    E2E_CHECK_CU(cuMemFree(base));
  }
  if (module != nullptr) E2E_CHECK_CU(cuModuleUnload(module));
  e2e::Ok("%d turns over a ring of %zu nodes (%s%s)", rounds, nodes,
          async ? "cuMemAllocAsync" : "cuMemAlloc", module != nullptr ? ", a kernel steps it" : "");
  std::printf("all checks passed\n");
  return 0;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "hold" && (argc == 3 || argc == 4)) {
    return Hold(argv[2], argc == 4 ? std::strtoull(argv[3], nullptr, 10) : 1 << 20);
  }
  if (mode == "quota" && argc >= 3) {
    char* argv_rest[] = {argv[0], argc > 3 ? argv[3] : nullptr};
    return Quota(std::strtoull(argv[2], nullptr, 10), e2e::ImageDir(argc > 3 ? 2 : 1, argv_rest));
  }
  if (mode == "turns" && (argc == 5 || (argc == 6 && std::string(argv[5]) == "async"))) {
    return Turns(std::strtoull(argv[2], nullptr, 10), argv[3], std::atoi(argv[4]), argc == 6);
  }
  if (mode == "turns" && argc == 7 && std::string(argv[5]) == "kernel") {
    return Turns(std::strtoull(argv[2], nullptr, 10), argv[3], std::atoi(argv[4]), false, argv[6]);
  }
  std::fprintf(stderr,
               "usage: pool_client hold RELEASE_FILE [BYTES] | quota QUOTA_BYTES [IMAGE_DIR] | turns BYTES "
               "TURN_PREFIX ROUNDS [async | kernel IMAGE_DIR]\n");
  return 2;
}
