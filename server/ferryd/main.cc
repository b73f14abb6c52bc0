// ferryd: the GPU server. Holds the GPUs (or the host stand-in), accepts
// client sessions over TCP and executes their driver calls on a backend.
//
//   ferryd [--config FILE] --listen HOST:PORT [--listen ...] --backend cuda|host|auto
//          [--cuda-driver PATH] [--host-kernels LIB.so ...]
//          [--host-devices N] [--host-memory SIZE] [--module-cache SIZE]
//          [--ready-file PATH]
//          [--log-level debug|info|warning|error]
//
// --config reads a TOML file (server/pool/config.h): the same settings as the flags
// (flags win), the GPUs to serve, and the pools and schedule that slice them.
// Without pools every client gets every served device, whole.
//
// SIGTERM and SIGINT stop it cleanly: listeners close, every session ends and
// frees its resources, and ferryd exits 0. SIGHUP re-reads the config file
// (as `ferryctl reload` does); a bad file is rejected and the old config stays.
//
// --test-fake-clock TIME (tests only) runs the pool on a clock that stands at
// TIME (RFC 3339, e.g. 2026-03-10T19:59:00+08:00) and moves only when
// `ferryctl test-advance-clock` says so.
#include <pthread.h>
#include <signal.h>

#include <absl/time/time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/log.h"
#include "common/units.h"
#include "server/backend/cuda/cuda_backend.h"
#include "server/backend/host/host_backend.h"
#include "server/pool/clock.h"
#include "server/pool/config.h"
#include "server/server.h"

namespace ferry {
namespace {

constexpr const char* kUsage =
    "usage: ferryd [--config FILE] --listen HOST:PORT [--listen HOST:PORT ...]\n"
    "              --backend cuda|host|auto [--cuda-driver PATH] [--host-kernels LIB.so ...]\n"
    "              [--host-devices N] [--host-memory SIZE (e.g. 8GiB)] [--ready-file PATH]\n"
    "              [--module-cache SIZE (default 1GiB, 0: off)]\n"
    "              [--log-level debug|info|warning|error]\n"
    "  --listen ADDRESS  HOST:PORT (TCP) or unix:PATH (clients on this host, shared memory)\n"
    "  --config FILE  TOML: [server] (as the flags; flags win), [[gpu]], [pool.NAME],\n"
    "                 [[schedule]]; SIGHUP or `ferryctl reload` re-reads it\n"
    "  --test-fake-clock TIME  tests only: the pool's clock stands at TIME (RFC 3339)\n"
    "                 and moves only by `ferryctl test-advance-clock`\n";

// What the command line says; unset means "from the config, else default".
struct Flags {
  std::string config_path;
  std::vector<std::string> listen;
  std::optional<std::string> backend;
  std::optional<std::string> cuda_driver;
  std::vector<std::string> host_kernels;
  std::optional<int> host_devices;
  std::optional<uint64_t> host_memory;
  std::optional<std::string> log_level;
  uint64_t module_cache = server::Server::kDefaultModuleCacheBytes;
  std::string ready_file;
  std::optional<absl::Time> test_fake_clock;
};

bool SetLogLevel(const std::string& v) {
  if (v == "debug")
    SetMinLogLevel(LogLevel::kDebug);
  else if (v == "info")
    SetMinLogLevel(LogLevel::kInfo);
  else if (v == "warning")
    SetMinLogLevel(LogLevel::kWarning);
  else if (v == "error")
    SetMinLogLevel(LogLevel::kError);
  else
    return false;
  return true;
}

bool ParseArgs(int argc, char** argv, Flags* flags, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) {
        *error = arg + " needs a value";
        return false;
      }
      *out = argv[++i];
      return true;
    };
    std::string v;
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (arg == "--config") {
      if (!value(&flags->config_path)) return false;
    } else if (arg == "--listen") {
      if (!value(&v)) return false;
      flags->listen.push_back(v);
    } else if (arg == "--backend") {
      if (!value(&v)) return false;
      if (v != "cuda" && v != "host" && v != "auto") {
        *error = "--backend must be cuda, host or auto, not '" + v + "'";
        return false;
      }
      flags->backend = v;
    } else if (arg == "--cuda-driver") {
      if (!value(&v)) return false;
      flags->cuda_driver = v;
    } else if (arg == "--host-kernels") {
      if (!value(&v)) return false;
      flags->host_kernels.push_back(v);
    } else if (arg == "--host-devices") {
      if (!value(&v)) return false;
      const int n = std::atoi(v.c_str());
      if (n < 1 || n > 64) {
        *error = "--host-devices must be between 1 and 64";
        return false;
      }
      flags->host_devices = n;
    } else if (arg == "--host-memory") {
      if (!value(&v)) return false;
      uint64_t bytes = 0;
      if (!ParseByteSize(v, &bytes) || bytes == 0) {
        *error = "--host-memory: bad size '" + v + "' (e.g. 8GiB, 512MiB)";
        return false;
      }
      flags->host_memory = bytes;
    } else if (arg == "--module-cache") {
      if (!value(&v)) return false;
      if (!ParseByteSize(v, &flags->module_cache)) {
        *error = "--module-cache: bad size '" + v + "' (e.g. 1GiB, 0 to turn it off)";
        return false;
      }
    } else if (arg == "--ready-file") {
      if (!value(&flags->ready_file)) return false;
    } else if (arg == "--log-level") {
      if (!value(&v)) return false;
      if (v != "debug" && v != "info" && v != "warning" && v != "error") {
        *error = "--log-level must be debug, info, warning or error";
        return false;
      }
      flags->log_level = v;
    } else if (arg == "--test-fake-clock") {
      if (!value(&v)) return false;
      absl::Time t;
      std::string why;
      if (!absl::ParseTime(absl::RFC3339_full, v, &t, &why)) {
        *error = "--test-fake-clock: '" + v + "' is not an RFC 3339 time (" + why + ")";
        return false;
      }
      flags->test_fake_clock = t;
    } else {
      *error = "unknown argument '" + arg + "'";
      return false;
    }
  }
  return true;
}

// The settings in force: flags over the config file over defaults.
struct Settings {
  std::vector<std::string> listen;
  std::string backend = "auto";
  std::string cuda_driver;
  std::vector<std::string> host_kernels;
  std::string ready_file;
};

Status Merge(const Flags& flags, const pool::Config& config, Settings* settings) {
  settings->listen = !flags.listen.empty()
                         ? flags.listen
                         : config.server.listen.value_or(std::vector<std::string>{});
  if (settings->listen.empty()) {
    return Status::InvalidArgument(
        "at least one --listen HOST:PORT (or [server] listen) is required");
  }
  settings->backend = flags.backend.value_or(config.server.backend.value_or("auto"));
  settings->cuda_driver = flags.cuda_driver.value_or(config.server.cuda_driver.value_or(""));
  settings->host_kernels = !flags.host_kernels.empty()
                               ? flags.host_kernels
                               : config.server.host_kernels.value_or(std::vector<std::string>{});
  settings->ready_file = flags.ready_file;
  const std::optional<std::string> level =
      flags.log_level ? flags.log_level : config.server.log_level;
  if (level.has_value()) SetLogLevel(*level);
  return Status::Ok();
}

// [[gpu]] tables, sorted by index.
std::vector<pool::GpuConfig> SortedGpus(const pool::Config& config) {
  std::vector<pool::GpuConfig> gpus = config.gpus;
  std::sort(gpus.begin(), gpus.end(),
            [](const pool::GpuConfig& a, const pool::GpuConfig& b) { return a.index < b.index; });
  return gpus;
}

Status MakeBackend(const Flags& flags, const Settings& settings, const pool::Config& config,
                   std::unique_ptr<backend::GpuBackend>* out) {
  if (settings.backend == "cuda" || settings.backend == "auto") {
    backend::CudaBackendOptions cuda;
    cuda.driver_path = settings.cuda_driver;
    Status status = backend::CreateCudaBackend(cuda, out);
    if (status.ok() || settings.backend == "cuda") return status;
    FERRY_LOG(kInfo) << "no usable NVIDIA driver (" << status.message()
                     << "); using the host backend";
  }
  backend::HostBackendOptions host;
  host.kernel_libraries = settings.host_kernels;
  if (flags.host_devices.has_value() || flags.host_memory.has_value() || config.gpus.empty()) {
    // The flags (or their defaults) describe identical devices.
    host.device_count =
        flags.host_devices.value_or(config.gpus.empty() ? 1 : static_cast<int>(config.gpus.size()));
    host.device_memory = flags.host_memory.value_or(8ull << 30);
  } else {
    // One emulated device per [[gpu]], in index order.
    for (const pool::GpuConfig& gpu : SortedGpus(config)) {
      host.device_memories.push_back(gpu.memory.value_or(8ull << 30));
    }
  }
  return backend::CreateHostBackend(host, out);
}

// Which GPUs ferryd serves: every backend device, or the [[gpu]] list.
Status ServedGpus(const pool::Config& config, const backend::GpuBackend& backend,
                  std::vector<server::ServedGpu>* out) {
  const auto& devices = backend.Devices();
  if (config.gpus.empty()) {
    for (size_t i = 0; i < devices.size(); ++i) {
      out->push_back(
          server::ServedGpu{static_cast<int>(i), static_cast<int>(i), devices[i].total_memory});
    }
    return Status::Ok();
  }
  const bool host = backend.Name() == "host";
  const std::vector<pool::GpuConfig> gpus = SortedGpus(config);
  for (size_t i = 0; i < gpus.size(); ++i) {
    const pool::GpuConfig& gpu = gpus[i];
    const std::string where =
        config.path + ":" + std::to_string(gpu.line) + ": gpu index " + std::to_string(gpu.index);
    // The host backend emulates one device per [[gpu]]; the CUDA backend
    // serves the real GPU with that index.
    const int device = host ? static_cast<int>(i) : gpu.index;
    if (device >= static_cast<int>(devices.size())) {
      return Status::InvalidArgument(where + ": the " + std::string(backend.Name()) +
                                     " backend has " + std::to_string(devices.size()) +
                                     " device(s)");
    }
    if (!host && gpu.memory.has_value()) {
      return Status::InvalidArgument(where +
                                     ": memory is for the host backend; the cuda backend "
                                     "serves each GPU's real memory");
    }
    out->push_back(server::ServedGpu{gpu.index, device, devices[device].total_memory});
  }
  return Status::Ok();
}

int Main(int argc, char** argv) {
  SetLogProgram("ferryd");
  Flags flags;
  std::string error;
  if (!ParseArgs(argc, argv, &flags, &error)) {
    std::fprintf(stderr, "ferryd: %s\n%s", error.c_str(), kUsage);
    return 2;
  }
  pool::Config config;
  if (!flags.config_path.empty()) {
    Status status = pool::LoadConfigFile(flags.config_path, &config);
    if (!status.ok()) {
      std::fprintf(stderr, "ferryd: %s\n", status.message().c_str());
      return 2;
    }
  }
  Settings settings;
  if (Status status = Merge(flags, config, &settings); !status.ok()) {
    std::fprintf(stderr, "ferryd: %s\n%s", status.message().c_str(), kUsage);
    return 2;
  }

  // Block the stop and reload signals in every thread; the main thread
  // waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<backend::GpuBackend> backend;
  Status status = MakeBackend(flags, settings, config, &backend);
  if (!status.ok()) {
    FERRY_LOG(kError) << "cannot start the " << settings.backend
                      << " backend: " << status.message();
    return 1;
  }
  FERRY_LOG(kInfo) << "backend " << backend->Name() << ": " << backend->Devices().size()
                   << " device(s), driver version " << backend->DriverVersion();
  std::vector<server::ServedGpu> gpus;
  status = ServedGpus(config, *backend, &gpus);
  if (!status.ok()) {
    FERRY_LOG(kError) << status.message();
    return 1;
  }
  for (const server::ServedGpu& gpu : gpus) {
    FERRY_LOG(kInfo) << "  GPU " << gpu.index << ": " << backend->Devices()[gpu.backend_device].name
                     << ", " << FormatByteSize(gpu.memory);
  }

  pool::SystemClock system_clock;
  std::unique_ptr<pool::FakeClock> fake_clock;
  pool::Clock* clock = &system_clock;
  if (flags.test_fake_clock.has_value()) {
    fake_clock = std::make_unique<pool::FakeClock>(*flags.test_fake_clock);
    clock = fake_clock.get();
    FERRY_LOG(kWarning) << "TEST ONLY: the pool runs on a fake clock standing at "
                        << absl::FormatTime(absl::RFC3339_full, *flags.test_fake_clock,
                                            absl::UTCTimeZone());
  }

  server::Server server(*backend, flags.module_cache);
  server.ServeGpus(gpus);
  if (config.pooling()) {
    status = server.EnablePool(config, *clock, fake_clock.get());
    if (!status.ok()) {
      FERRY_LOG(kError) << "cannot set up the pool: " << status.message();
      return 1;
    }
    for (const auto& [name, pool] : config.pools) {
      FERRY_LOG(kInfo) << "pool " << name << ": " << pool.slices_per_gpu << " slice(s) per GPU";
    }
  }
  if (!flags.config_path.empty()) server.SetConfigFile(flags.config_path, config);
  for (const std::string& address : settings.listen) {
    status = server.Listen(address);
    if (!status.ok()) {
      FERRY_LOG(kError) << status.message();
      return 1;
    }
  }
  server.Start();
  for (const std::string& bound : server.BoundAddresses()) {
    FERRY_LOG(kInfo) << "listening on " << bound;
  }
  if (!settings.ready_file.empty()) {
    // Written whole, then renamed, so a watcher never reads half a line.
    const std::string temp = settings.ready_file + ".tmp";
    {
      std::ofstream out(temp);
      out << server.BoundAddresses().front() << "\n";
    }
    if (std::rename(temp.c_str(), settings.ready_file.c_str()) != 0) {
      FERRY_LOG(kError) << "cannot write --ready-file " << settings.ready_file;
      return 1;
    }
  }

  for (;;) {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    if (signal_number == SIGHUP) {
      std::string summary;
      Status reloaded = server.Reload(&summary);
      if (!reloaded.ok()) {
        FERRY_LOG(kWarning) << "SIGHUP: " << reloaded.message();
      }
      continue;
    }
    FERRY_LOG(kInfo) << "received " << strsignal(signal_number) << "; stopping";
    break;
  }
  server.Stop();
  backend.reset();
  FERRY_LOG(kInfo) << "stopped";
  return 0;
}

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::Main(argc, argv); }
