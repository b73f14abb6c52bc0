#include "driver_figures.h"

#include <cuda.h>
#include <dlfcn.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace ferry::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// CPU time (user and system, every thread) of process `pid` so far, in
// nanoseconds; 0 when it cannot be read.
uint64_t ProcessCpuNs(pid_t pid) {
  clockid_t clock;
  timespec t{};
  if (clock_getcpuclockid(pid, &clock) != 0 || clock_gettime(clock, &t) != 0) return 0;
  return static_cast<uint64_t>(t.tv_sec) * 1000000000ull + static_cast<uint64_t>(t.tv_nsec);
}

// The driver entry points the bench calls, resolved from the loaded library.
// cuda.h maps several names to their _v2 symbols; those are looked up by the
// real symbol name.
struct Driver {
  decltype(&cuInit) Init;
  decltype(&cuDeviceGet) DeviceGet;
  decltype(&cuCtxCreate_v4) CtxCreate;
  decltype(&cuCtxDestroy_v2) CtxDestroy;
  decltype(&cuCtxSynchronize) CtxSynchronize;
  decltype(&cuMemAlloc_v2) MemAlloc;
  decltype(&cuMemFree_v2) MemFree;
  decltype(&cuMemAllocHost_v2) MemAllocHost;
  decltype(&cuMemFreeHost) MemFreeHost;
  decltype(&cuMemcpyHtoD_v2) MemcpyHtoD;
  decltype(&cuMemcpyDtoH_v2) MemcpyDtoH;
  decltype(&cuModuleLoadData) ModuleLoadData;
  decltype(&cuModuleUnload) ModuleUnload;
  decltype(&cuModuleGetFunction) ModuleGetFunction;
  decltype(&cuLaunchKernel) LaunchKernel;
  decltype(&cuStreamCreate) StreamCreate;
  decltype(&cuStreamDestroy_v2) StreamDestroy;
  decltype(&cuStreamSynchronize) StreamSynchronize;
  decltype(&cuGetErrorName) GetErrorName;
  decltype(&cuDeviceGetCount) DeviceGetCount;
  decltype(&cuMemcpyPeer) MemcpyPeer;
  decltype(&cuCtxSetCurrent) CtxSetCurrent;
};

template <typename Fn>
bool Resolve(void* library, const char* name, Fn* out) {
  *out = reinterpret_cast<Fn>(dlsym(library, name));
  return *out != nullptr;
}

Status LoadDriver(const std::string& path, Driver* d) {
  void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    const char* why = dlerror();
    return Status::NotFound("cannot load " + path + ": " + (why ? why : "?"));
  }
  bool ok = Resolve(library, "cuInit", &d->Init) &&
            Resolve(library, "cuDeviceGet", &d->DeviceGet) &&
            Resolve(library, "cuCtxCreate_v4", &d->CtxCreate) &&
            Resolve(library, "cuCtxDestroy_v2", &d->CtxDestroy) &&
            Resolve(library, "cuCtxSynchronize", &d->CtxSynchronize) &&
            Resolve(library, "cuMemAlloc_v2", &d->MemAlloc) &&
            Resolve(library, "cuMemFree_v2", &d->MemFree) &&
            Resolve(library, "cuMemAllocHost_v2", &d->MemAllocHost) &&
            Resolve(library, "cuMemFreeHost", &d->MemFreeHost) &&
            Resolve(library, "cuMemcpyHtoD_v2", &d->MemcpyHtoD) &&
            Resolve(library, "cuMemcpyDtoH_v2", &d->MemcpyDtoH) &&
            Resolve(library, "cuModuleLoadData", &d->ModuleLoadData) &&
            Resolve(library, "cuModuleUnload", &d->ModuleUnload) &&
            Resolve(library, "cuModuleGetFunction", &d->ModuleGetFunction) &&
            Resolve(library, "cuLaunchKernel", &d->LaunchKernel) &&
            Resolve(library, "cuStreamCreate", &d->StreamCreate) &&
            Resolve(library, "cuStreamDestroy_v2", &d->StreamDestroy) &&
            Resolve(library, "cuStreamSynchronize", &d->StreamSynchronize) &&
            Resolve(library, "cuGetErrorName", &d->GetErrorName) &&
            Resolve(library, "cuDeviceGetCount", &d->DeviceGetCount) &&
            Resolve(library, "cuMemcpyPeer", &d->MemcpyPeer) &&
            Resolve(library, "cuCtxSetCurrent", &d->CtxSetCurrent);
  if (!ok) return Status::NotFound(path + " lacks a driver entry point the bench needs");
  return Status::Ok();
}

// Wraps a driver call: a failure becomes a Status naming the call.
class Checker {
 public:
  explicit Checker(const Driver& d) : d_(d) {}
  Status operator()(CUresult result, const char* what) const {
    if (result == CUDA_SUCCESS) return Status::Ok();
    const char* name = "?";
    d_.GetErrorName(result, &name);
    return Status::Cuda(result, std::string(what) + " failed: " + name);
  }

 private:
  const Driver& d_;
};

// The bench's fatbin with a filler entry appended, `filler_bytes` of random
// bytes seeded by `seed`. The filler's entry kind (0x4000) is none that a
// loader reads (PTX is 1, ELF 2), so the image loads like the small one and
// costs what a large image costs to move and cache.
std::vector<uint8_t> MakeLargeImage(const std::vector<uint8_t>& fatbin, uint64_t filler_bytes,
                                    uint32_t seed) {
  constexpr uint64_t kEntryHeader = 64;
  uint16_t header_size;
  uint64_t payload;
  std::memcpy(&header_size, fatbin.data() + 6, 2);
  std::memcpy(&payload, fatbin.data() + 8, 8);
  std::vector<uint8_t> image(fatbin.begin(), fatbin.begin() + header_size + payload);
  const uint64_t new_payload = payload + kEntryHeader + filler_bytes;
  std::memcpy(image.data() + 8, &new_payload, 8);
  uint8_t entry[kEntryHeader] = {};
  const uint16_t kind = 0x4000;
  const uint32_t entry_header = kEntryHeader;
  std::memcpy(entry, &kind, 2);
  std::memcpy(entry + 4, &entry_header, 4);
  std::memcpy(entry + 8, &filler_bytes, 8);
  image.insert(image.end(), entry, entry + kEntryHeader);
  const size_t at = image.size();
  image.resize(at + filler_bytes);
  std::mt19937_64 rng(seed);
  for (uint64_t i = 0; i + 8 <= filler_bytes; i += 8) {
    const uint64_t v = rng();
    std::memcpy(image.data() + at + i, &v, 8);
  }
  return image;
}

}  // namespace

std::string SizeName(uint64_t bytes) {
  if (bytes >= (1ull << 20) && bytes % (1ull << 20) == 0)
    return std::to_string(bytes >> 20) + "MiB";
  if (bytes >= (1ull << 10) && bytes % (1ull << 10) == 0)
    return std::to_string(bytes >> 10) + "KiB";
  return std::to_string(bytes) + "B";
}

std::string CopyFigureName(const char* direction, const char* memory, uint64_t bytes) {
  return std::string(direction) + "_" + memory + "_" + SizeName(bytes) + "_gbs";
}

std::string PeerFigureName(uint64_t bytes) { return "peer_" + SizeName(bytes) + "_gbs"; }

Status MeasureDriverFigures(const DriverBenchOptions& options, std::map<std::string, double>* out) {
  Driver d{};
  FERRY_RETURN_IF_ERROR(LoadDriver(options.libcuda, &d));
  Checker check(d);
  // Session start: through ferry, cuInit connects, borrows and (with session
  // workers) waits for the session's worker process; the first context is
  // its first call.
  const auto init_start = Clock::now();
  FERRY_RETURN_IF_ERROR(check(d.Init(0), "cuInit"));
  CUdevice device;
  FERRY_RETURN_IF_ERROR(check(d.DeviceGet(&device, 0), "cuDeviceGet"));
  CUcontext ctx;
  FERRY_RETURN_IF_ERROR(check(d.CtxCreate(&ctx, nullptr, 0, device), "cuCtxCreate"));
  (*out)["session_start_ms"] = Seconds(init_start) * 1e3;

  const uint64_t max_copy =
      options.copy_sizes.empty()
          ? 4096
          : *std::max_element(options.copy_sizes.begin(), options.copy_sizes.end());
  CUdeviceptr device_buffer;
  FERRY_RETURN_IF_ERROR(check(d.MemAlloc(&device_buffer, max_copy), "cuMemAlloc"));

  auto wanted = [&options](const char* group) {
    return options.only.empty() || options.only.count(group) != 0;
  };

  // --- sync call RTT: a 4-byte device-to-host copy --------------------------
  if (wanted("rtt")) {
    uint32_t word = 0;
    for (int i = 0; i < 200; ++i) {
      FERRY_RETURN_IF_ERROR(check(d.MemcpyDtoH(&word, device_buffer, 4), "cuMemcpyDtoH"));
    }
    std::vector<double> samples;
    samples.reserve(options.rtt_iterations);
    // What the calls cost in CPU time, on both sides (busy polling spends
    // it): this process, and the server's.
    const uint64_t client_cpu = ProcessCpuNs(getpid());
    const uint64_t server_cpu = options.server_pid > 0 ? ProcessCpuNs(options.server_pid) : 0;
    const auto loop_start = Clock::now();
    for (int i = 0; i < options.rtt_iterations; ++i) {
      const auto start = Clock::now();
      const CUresult r = d.MemcpyDtoH(&word, device_buffer, 4);
      samples.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
      FERRY_RETURN_IF_ERROR(check(r, "cuMemcpyDtoH"));
    }
    const double calls = options.rtt_iterations;
    (*out)["sync_rtt_mean_us"] = Seconds(loop_start) * 1e6 / calls;
    (*out)["rtt_client_cpu_us"] = (ProcessCpuNs(getpid()) - client_cpu) / 1e3 / calls;
    if (options.server_pid > 0) {
      (*out)["rtt_server_cpu_us"] = (ProcessCpuNs(options.server_pid) - server_cpu) / 1e3 / calls;
    }
    std::nth_element(samples.begin(), samples.begin() + samples.size() / 2, samples.end());
    (*out)["sync_rtt_us"] = samples[samples.size() / 2];
  }

  // --- pipelined launch rate -------------------------------------------------
  std::ifstream in(options.kernels_fatbin, std::ios::binary);
  std::vector<uint8_t> fatbin((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
  if (fatbin.size() < 16) return Status::NotFound("cannot read " + options.kernels_fatbin);
  if (wanted("launch")) {
    CUmodule module;
    FERRY_RETURN_IF_ERROR(check(d.ModuleLoadData(&module, fatbin.data()), "cuModuleLoadData"));
    CUfunction empty;
    FERRY_RETURN_IF_ERROR(
        check(d.ModuleGetFunction(&empty, module, "ferry_bench_empty"), "cuModuleGetFunction"));
    CUstream stream;
    FERRY_RETURN_IF_ERROR(check(d.StreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate"));
    auto launch_many = [&](int count) -> Status {
      for (int i = 0; i < count; ++i) {
        FERRY_RETURN_IF_ERROR(
            check(d.LaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, stream, nullptr, nullptr),
                  "cuLaunchKernel"));
      }
      return check(d.StreamSynchronize(stream), "cuStreamSynchronize");
    };
    FERRY_RETURN_IF_ERROR(launch_many(std::min(options.launches, 2000)));
    const auto start = Clock::now();
    FERRY_RETURN_IF_ERROR(launch_many(options.launches));
    (*out)["launch_rate_kps"] = options.launches / Seconds(start) / 1e3;
    FERRY_RETURN_IF_ERROR(check(d.StreamDestroy(stream), "cuStreamDestroy"));
    FERRY_RETURN_IF_ERROR(check(d.ModuleUnload(module), "cuModuleUnload"));
  }

  // --- copy bandwidth ----------------------------------------------------------
  if (wanted("copy")) {
    std::unique_ptr<uint8_t[]> pageable(new uint8_t[max_copy]);
    std::memset(pageable.get(), 5, max_copy);
    void* pinned_raw = nullptr;
    FERRY_RETURN_IF_ERROR(check(d.MemAllocHost(&pinned_raw, max_copy), "cuMemAllocHost"));
    auto* pinned = static_cast<uint8_t*>(pinned_raw);
    std::memset(pinned, 6, max_copy);
    for (uint64_t size : options.copy_sizes) {
      const uint64_t rounds = std::clamp<uint64_t>(options.copy_budget_bytes / size, 3, 20000);
      for (const char* memory : {"pageable", "pinned"}) {
        uint8_t* host = std::strcmp(memory, "pinned") == 0 ? pinned : pageable.get();
        // Host to device: asynchronous in ferry once the bytes are taken, so
        // the figure ends with a synchronize.
        FERRY_RETURN_IF_ERROR(check(d.MemcpyHtoD(device_buffer, host, size), "cuMemcpyHtoD"));
        FERRY_RETURN_IF_ERROR(check(d.CtxSynchronize(), "cuCtxSynchronize"));
        auto start = Clock::now();
        for (uint64_t i = 0; i < rounds; ++i) {
          FERRY_RETURN_IF_ERROR(check(d.MemcpyHtoD(device_buffer, host, size), "cuMemcpyHtoD"));
        }
        FERRY_RETURN_IF_ERROR(check(d.CtxSynchronize(), "cuCtxSynchronize"));
        (*out)[CopyFigureName("h2d", memory, size)] = rounds * size / Seconds(start) / 1e9;

        FERRY_RETURN_IF_ERROR(check(d.MemcpyDtoH(host, device_buffer, size), "cuMemcpyDtoH"));
        start = Clock::now();
        for (uint64_t i = 0; i < rounds; ++i) {
          FERRY_RETURN_IF_ERROR(check(d.MemcpyDtoH(host, device_buffer, size), "cuMemcpyDtoH"));
        }
        (*out)[CopyFigureName("d2h", memory, size)] = rounds * size / Seconds(start) / 1e9;
      }
    }
    FERRY_RETURN_IF_ERROR(check(d.MemFreeHost(pinned), "cuMemFreeHost"));
  }

  // --- peer copies: device 0 to device 1 (two GPUs of one server, or of two
  // servers when a cluster split the borrow); only with two devices ---------
  int device_count = 0;
  FERRY_RETURN_IF_ERROR(check(d.DeviceGetCount(&device_count), "cuDeviceGetCount"));
  if (wanted("peer") && device_count >= 2) {
    CUdevice second;
    FERRY_RETURN_IF_ERROR(check(d.DeviceGet(&second, 1), "cuDeviceGet"));
    CUcontext second_ctx;
    FERRY_RETURN_IF_ERROR(check(d.CtxCreate(&second_ctx, nullptr, 0, second), "cuCtxCreate"));
    CUdeviceptr second_buffer;
    FERRY_RETURN_IF_ERROR(check(d.MemAlloc(&second_buffer, max_copy), "cuMemAlloc"));
    FERRY_RETURN_IF_ERROR(check(d.CtxSetCurrent(ctx), "cuCtxSetCurrent"));
    for (uint64_t size : options.copy_sizes) {
      const uint64_t rounds = std::clamp<uint64_t>(options.copy_budget_bytes / size, 3, 20000);
      FERRY_RETURN_IF_ERROR(
          check(d.MemcpyPeer(second_buffer, second_ctx, device_buffer, ctx, size), "cuMemcpyPeer"));
      FERRY_RETURN_IF_ERROR(check(d.CtxSynchronize(), "cuCtxSynchronize"));
      const auto start = Clock::now();
      for (uint64_t i = 0; i < rounds; ++i) {
        FERRY_RETURN_IF_ERROR(check(
            d.MemcpyPeer(second_buffer, second_ctx, device_buffer, ctx, size), "cuMemcpyPeer"));
      }
      FERRY_RETURN_IF_ERROR(check(d.CtxSynchronize(), "cuCtxSynchronize"));
      (*out)[PeerFigureName(size)] = rounds * size / Seconds(start) / 1e9;
    }
    FERRY_RETURN_IF_ERROR(check(d.CtxDestroy(second_ctx), "cuCtxDestroy"));
    FERRY_RETURN_IF_ERROR(check(d.CtxSetCurrent(ctx), "cuCtxSetCurrent"));
  }

  // --- module load: a large image, first time and again ------------------------
  if (options.large_image_bytes > 0 && wanted("module")) {
    const std::vector<uint8_t> image =
        MakeLargeImage(fatbin, options.large_image_bytes, options.image_seed);
    (*out)["module_image_mib"] = image.size() / double(1 << 20);
    for (const char* figure : {"module_load_first_ms", "module_load_again_ms"}) {
      CUmodule module;
      const auto start = Clock::now();
      FERRY_RETURN_IF_ERROR(check(d.ModuleLoadData(&module, image.data()), "cuModuleLoadData"));
      (*out)[figure] = Seconds(start) * 1e3;
      FERRY_RETURN_IF_ERROR(check(d.ModuleUnload(module), "cuModuleUnload"));
    }
  }

  FERRY_RETURN_IF_ERROR(check(d.MemFree(device_buffer), "cuMemFree"));
  return check(d.CtxDestroy(ctx), "cuCtxDestroy");
}

}  // namespace ferry::bench
