// ferryd: the GPU server. Holds the GPUs (or the host stand-in), accepts
// client sessions over TCP and executes their driver calls on a backend.
//
//   ferryd --listen HOST:PORT [--listen ...] --backend cuda|host|auto
//          [--cuda-driver PATH] [--host-kernels LIB.so ...]
//          [--host-devices N] [--host-memory SIZE] [--module-cache SIZE]
//          [--ready-file PATH]
//          [--log-level debug|info|warning|error]
//
// SIGTERM and SIGINT stop it cleanly: listeners close, every session ends and
// frees its resources, and ferryd exits 0.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/host/host_backend.h"
#include "common/log.h"
#include "server/server.h"

namespace ferry {
namespace {

constexpr const char* kUsage =
    "usage: ferryd --listen HOST:PORT [--listen HOST:PORT ...] --backend cuda|host|auto\n"
    "              [--cuda-driver PATH] [--host-kernels LIB.so ...] [--host-devices N]\n"
    "              [--host-memory SIZE (e.g. 8GiB)] [--module-cache SIZE (default 1GiB, 0: off)]\n"
    "              [--ready-file PATH]\n"
    "              [--log-level debug|info|warning|error]\n";

struct Options {
  std::vector<std::string> listen;
  std::string backend = "auto";
  std::string cuda_driver;
  std::vector<std::string> host_kernels;
  int host_devices = 1;
  uint64_t host_memory = 8ull << 30;
  uint64_t module_cache = server::Server::kDefaultModuleCacheBytes;
  std::string ready_file;
};

// "8GiB", "512MiB", "1G", "1048576" -> bytes.
bool ParseSize(const std::string& text, uint64_t* out) {
  char* end = nullptr;
  errno = 0;
  unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str()) return false;
  std::string unit(end);
  uint64_t scale = 1;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "KiB" || unit == "K") scale = 1ull << 10;
  else if (unit == "MiB" || unit == "M") scale = 1ull << 20;
  else if (unit == "GiB" || unit == "G") scale = 1ull << 30;
  else if (unit == "TiB" || unit == "T") scale = 1ull << 40;
  else return false;
  *out = value * scale;
  return value == 0 || *out / scale == value;
}

bool ParseArgs(int argc, char** argv, Options* options, std::string* error) {
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
    } else if (arg == "--listen") {
      if (!value(&v)) return false;
      options->listen.push_back(v);
    } else if (arg == "--backend") {
      if (!value(&options->backend)) return false;
      if (options->backend != "cuda" && options->backend != "host" && options->backend != "auto") {
        *error = "--backend must be cuda, host or auto, not '" + options->backend + "'";
        return false;
      }
    } else if (arg == "--cuda-driver") {
      if (!value(&options->cuda_driver)) return false;
    } else if (arg == "--host-kernels") {
      if (!value(&v)) return false;
      options->host_kernels.push_back(v);
    } else if (arg == "--host-devices") {
      if (!value(&v)) return false;
      options->host_devices = std::atoi(v.c_str());
      if (options->host_devices < 1 || options->host_devices > 64) {
        *error = "--host-devices must be between 1 and 64";
        return false;
      }
    } else if (arg == "--host-memory") {
      if (!value(&v)) return false;
      if (!ParseSize(v, &options->host_memory) || options->host_memory == 0) {
        *error = "--host-memory: bad size '" + v + "' (e.g. 8GiB, 512MiB)";
        return false;
      }
    } else if (arg == "--module-cache") {
      if (!value(&v)) return false;
      if (!ParseSize(v, &options->module_cache)) {
        *error = "--module-cache: bad size '" + v + "' (e.g. 1GiB, 0 to turn it off)";
        return false;
      }
    } else if (arg == "--ready-file") {
      if (!value(&options->ready_file)) return false;
    } else if (arg == "--log-level") {
      if (!value(&v)) return false;
      if (v == "debug") SetMinLogLevel(LogLevel::kDebug);
      else if (v == "info") SetMinLogLevel(LogLevel::kInfo);
      else if (v == "warning") SetMinLogLevel(LogLevel::kWarning);
      else if (v == "error") SetMinLogLevel(LogLevel::kError);
      else {
        *error = "--log-level must be debug, info, warning or error";
        return false;
      }
    } else {
      *error = "unknown argument '" + arg + "'";
      return false;
    }
  }
  if (options->listen.empty()) {
    *error = "at least one --listen HOST:PORT is required";
    return false;
  }
  return true;
}

Status MakeBackend(const Options& options, std::unique_ptr<backend::GpuBackend>* out) {
  if (options.backend == "cuda" || options.backend == "auto") {
    backend::CudaBackendOptions cuda;
    cuda.driver_path = options.cuda_driver;
    Status status = backend::CreateCudaBackend(cuda, out);
    if (status.ok() || options.backend == "cuda") return status;
    FERRY_LOG(kInfo) << "no usable NVIDIA driver (" << status.message()
                     << "); using the host backend";
  }
  backend::HostBackendOptions host;
  host.kernel_libraries = options.host_kernels;
  host.device_count = options.host_devices;
  host.device_memory = options.host_memory;
  return backend::CreateHostBackend(host, out);
}

int Main(int argc, char** argv) {
  SetLogProgram("ferryd");
  Options options;
  std::string error;
  if (!ParseArgs(argc, argv, &options, &error)) {
    std::fprintf(stderr, "ferryd: %s\n%s", error.c_str(), kUsage);
    return 2;
  }

  // Block the stop signals in every thread; the main thread waits for them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<backend::GpuBackend> backend;
  Status status = MakeBackend(options, &backend);
  if (!status.ok()) {
    FERRY_LOG(kError) << "cannot start the " << options.backend << " backend: " << status.message();
    return 1;
  }
  FERRY_LOG(kInfo) << "backend " << backend->Name() << ": " << backend->Devices().size()
                   << " device(s), driver version " << backend->DriverVersion();
  for (size_t i = 0; i < backend->Devices().size(); ++i) {
    const auto& d = backend->Devices()[i];
    FERRY_LOG(kInfo) << "  device " << i << ": " << d.name << ", "
                     << (d.total_memory >> 20) << " MiB";
  }

  server::Server server(*backend, options.module_cache);
  for (const std::string& address : options.listen) {
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
  if (!options.ready_file.empty()) {
    // Written whole, then renamed, so a watcher never reads half a line.
    const std::string temp = options.ready_file + ".tmp";
    {
      std::ofstream out(temp);
      out << server.BoundAddresses().front() << "\n";
    }
    if (std::rename(temp.c_str(), options.ready_file.c_str()) != 0) {
      FERRY_LOG(kError) << "cannot write --ready-file " << options.ready_file;
      return 1;
    }
  }

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  FERRY_LOG(kInfo) << "received " << strsignal(signal_number) << "; stopping";
  server.Stop();
  backend.reset();
  FERRY_LOG(kInfo) << "stopped";
  return 0;
}

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::Main(argc, argv); }
