// ferry-bench: how close ferry comes to the machine's own limits,
// measured in one run against one ferryd that it starts (host backend,
// loopback). Run by scripts/bench.sh; never by the tests.
//
//   ferry-bench [--reps N] [--quick] [--json PATH] [--transports tcp[,auto][,unix][,rdma]]
//               [--only rtt,launch,copy,peer,module] [--copy-sizes 64MiB,256MiB]
//               [--ferryd PATH] [--ferryd-arg ARG]... [--libcuda PATH] [--host-kernels PATH]
//               [--fatbin PATH]
//   ferry-bench --busy-poll 0,20,50,100 [--reps N] [--quick] [--json PATH]
//               [--transports tcp[,auto][,unix]] [--ferryd-arg ARG]...
//   ferry-bench --client ADDRESS [--libcuda PATH] [--fatbin PATH] [--only ...]
//               [--copy-sizes ...] [--quick] [--server-pid PID]
//
// The parent measures the baselines in-process (raw TCP loopback RTT and
// bandwidth with ferry's socket options, memcpy), starts ferryd, and for each
// repetition and transport runs itself as a child (`--client ADDRESS`) that
// loads the driver library (ferry's libcuda.so.1 by default) and takes the
// driver figures; each child is a fresh process with a fresh session. Every
// figure is the median over the repetitions, shown with its spread.
//
// Transports: `tcp` is ferryd's loopback TCP address with FERRY_TRANSPORT=tcp
// (TCP throughout); `auto` the same address with FERRY_TRANSPORT=auto, which
// the handshake moves to shared memory (a client on ferryd's host); `unix`
// ferryd's unix socket (shared memory from the start); `rdma` rdma://, TCP's
// address moved to RDMA.
//
// `--busy-poll LIST` measures busy polling (common/busy_poll.h) instead: for
// each window (microseconds) a ferryd started with `--busy-poll WINDOW` and
// clients with FERRY_BUSY_POLL=WINDOW, the sync call RTT and the CPU time
// each call costs the client and the server (ferryd runs the sessions in its
// own process here, so that its CPU time is theirs), so that a window's
// latency is shown beside what it burns.
//
// `--client ADDRESS` alone takes one set of driver figures against a server
// that is already running and prints them as "name value" lines: the GPU
// check (scripts/gpu-check.sh) uses it against `ferryd --backend cuda`, and
// with `--libcuda` naming the system's driver (ADDRESS is then unused) for the
// native figures on the same GPU.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/busy_poll.h"
#include "common/transport.h"
#include "common/units.h"
#include "driver_figures.h"
#include "raw_baseline.h"

namespace ferry::bench {
namespace {

constexpr const char* kUsage =
    "usage: ferry-bench [--reps N] [--quick] [--json PATH]\n"
    "                   [--transports tcp[,auto][,unix][,rdma]]\n"
    "                   [--listen-host HOST]\n"
    "                   [--only rtt,launch,copy,peer,module] [--copy-sizes 64MiB,256MiB]\n"
    "                   [--ferryd PATH] [--ferryd-arg ARG]... [--libcuda PATH]\n"
    "                   [--host-kernels PATH] [--fatbin PATH]\n"
    "       ferry-bench --busy-poll 0,20,50,100 [--reps N] [--quick] [--json PATH]\n"
    "                   [--transports tcp[,auto][,unix]] [--ferryd-arg ARG]...\n"
    "       ferry-bench --client ADDRESS [--libcuda PATH] [--fatbin PATH] [--only ...]\n"
    "                   [--copy-sizes ...] [--quick] [--server-pid PID]\n";

struct Options {
  int reps = 3;
  bool quick = false;
  std::string json;
  std::vector<std::string> transports{"tcp"};
  // Where ferryd listens: RDMA needs an address its device carries (the rxe
  // VM's 10.0.0.1); off loopback, ferryd runs with --no-tls --no-auth.
  std::string listen_host = "127.0.0.1";
  std::string ferryd = FERRY_BENCH_FERRYD;
  std::vector<std::string> ferryd_args;  // more flags for ferryd (--sessions-in-process)
  std::string libcuda = FERRY_BENCH_LIBCUDA;
  std::string host_kernels = FERRY_BENCH_HOST_KERNELS;
  std::string fatbin = FERRY_BENCH_FATBIN;
  // Child mode: take the driver figures against this server.
  std::string client_server;
  uint32_t image_seed = 1;
  std::string only;        // comma-separated figure groups; empty: all
  std::string copy_sizes;  // comma-separated sizes ("64MiB,256MiB"); empty: the default range
  // Busy-poll windows to compare (microseconds, as ferryd --busy-poll takes
  // them); empty: the usual figures.
  std::vector<std::string> busy_poll;
  int server_pid = 0;  // child mode: ferryd's pid, for its CPU time
};

std::vector<std::string> Split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, separator);) {
    if (!part.empty()) parts.push_back(part);
  }
  return parts;
}

// "64MiB", "4KiB", "4096": bytes (common/units.h); 0 when the text is no size.
uint64_t ParseCopySize(const std::string& text) {
  uint64_t bytes = 0;
  return ferry::ParseByteSize(text, &bytes) ? bytes : 0;
}

bool ParseArgs(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (arg == "--quick") {
      o->quick = true;
    } else if (arg == "--reps" && (v = value())) {
      o->reps = std::max(1, std::atoi(v));
    } else if (arg == "--json" && (v = value())) {
      o->json = v;
    } else if (arg == "--transports" && (v = value())) {
      o->transports = Split(v, ',');
    } else if (arg == "--listen-host" && (v = value())) {
      o->listen_host = v;
    } else if (arg == "--only" && (v = value())) {
      o->only = v;
    } else if (arg == "--ferryd" && (v = value())) {
      o->ferryd = v;
    } else if (arg == "--ferryd-arg" && (v = value())) {
      o->ferryd_args.push_back(v);
    } else if (arg == "--libcuda" && (v = value())) {
      o->libcuda = v;
    } else if (arg == "--host-kernels" && (v = value())) {
      o->host_kernels = v;
    } else if (arg == "--fatbin" && (v = value())) {
      o->fatbin = v;
    } else if (arg == "--copy-sizes" && (v = value())) {
      o->copy_sizes = v;
      for (const std::string& size : Split(v, ',')) {
        if (ParseCopySize(size) == 0) return false;
      }
    } else if (arg == "--client" && (v = value())) {
      o->client_server = v;
    } else if (arg == "--busy-poll" && (v = value())) {
      o->busy_poll = Split(v, ',');
      if (o->busy_poll.empty()) return false;
      for (const std::string& window : o->busy_poll) {
        std::chrono::microseconds us;
        if (!ferry::ParseBusyPollWindow(window, &us).ok()) return false;
      }
    } else if (arg == "--server-pid" && (v = value())) {
      o->server_pid = std::atoi(v);
    } else if (arg == "--image-seed" && (v = value())) {
      o->image_seed = static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
    } else {
      return false;
    }
  }
  for (const std::string& t : o->transports) {
    if (t != "tcp" && t != "auto" && t != "unix" && t != "rdma") return false;
  }
  return true;
}

std::vector<uint64_t> CopySizes(const Options& o) {
  const bool quick = o.quick;
  std::vector<uint64_t> sizes;
  if (!o.copy_sizes.empty()) {
    for (const std::string& size : Split(o.copy_sizes, ',')) sizes.push_back(ParseCopySize(size));
    return sizes;
  }
  for (uint64_t s = 4 << 10; s <= (256ull << 20); s *= quick ? 16 : 4) sizes.push_back(s);
  if (sizes.back() != (256ull << 20)) sizes.push_back(256ull << 20);
  return sizes;
}

DriverBenchOptions DriverOptions(const Options& o) {
  DriverBenchOptions d;
  d.libcuda = o.libcuda;
  d.kernels_fatbin = o.fatbin;
  d.copy_sizes = CopySizes(o);
  d.image_seed = o.image_seed;
  d.server_pid = o.server_pid;
  for (const std::string& group : Split(o.only, ',')) d.only.insert(group);
  if (o.quick) {
    d.rtt_iterations = 5000;
    d.launches = 100000;
    d.copy_budget_bytes = 64ull << 20;
    d.large_image_bytes = 16ull << 20;
  }
  return d;
}

// FERRY_TRANSPORT for a child measuring `transport` (see the top).
const char* CarrierSetting(const std::string& transport) {
  return transport == "tcp" ? "tcp" : "auto";
}

// Child mode: prints "name value" lines.
int RunClient(const Options& o) {
  setenv("FERRY_SERVER", o.client_server.c_str(), 1);
  std::map<std::string, double> figures;
  Status status = MeasureDriverFigures(DriverOptions(o), &figures);
  if (!status.ok()) {
    std::fprintf(stderr, "ferry-bench client: %s\n", status.ToString().c_str());
    return 1;
  }
  for (const auto& [name, value] : figures) std::printf("%s %.6g\n", name.c_str(), value);
  return 0;
}

// Runs `argv` with stdout captured; returns its exit status (-1: not run).
int RunCaptured(const std::vector<std::string>& argv, std::string* output) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(pipe_fds[1], 1);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(pipe_fds[1]);
  char buffer[4096];
  for (ssize_t n; (n = read(pipe_fds[0], buffer, sizeof(buffer))) > 0;) output->append(buffer, n);
  close(pipe_fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// ferryd, started for the run and stopped with SIGTERM at its end.
class Ferryd {
 public:
  ~Ferryd() { Stop(); }

  Status Start(const Options& o, const std::string& dir) {
    const std::string ready = dir + "/ready";
    unix_path_ = dir + "/ferryd.sock";
    std::vector<std::string> argv = {o.ferryd,       "--listen",     o.listen_host + ":0",
                                     "--backend",    "host",         "--host-kernels",
                                     o.host_kernels, "--ready-file", ready,
                                     "--log-level",  "warning"};
    if (!IsLoopbackAddress(o.listen_host + ":0")) {
      argv.insert(argv.end(), {"--no-tls", "--no-auth"});
    }
    argv.insert(argv.end(), o.ferryd_args.begin(), o.ferryd_args.end());
    for (const std::string& t : o.transports) {
      if (t == "unix") {
        argv.push_back("--listen");
        argv.push_back("unix:" + unix_path_);
      }
    }
    const std::string log = dir + "/ferryd.log";
    pid_ = fork();
    if (pid_ < 0) return Status::Internal("fork failed");
    if (pid_ == 0) {
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    for (int i = 0; i < 1000; ++i) {
      std::ifstream in(ready);
      std::string line;
      if (std::getline(in, line) && !line.empty()) {
        tcp_address_ = line;
        return Status::Ok();
      }
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return Status::Internal("ferryd exited at start; see " + log);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return Status::Internal("ferryd wrote no ready file in 10 s; see " + log);
  }

  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int status;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  pid_t pid() const { return pid_; }

  std::string Address(const std::string& transport) const {
    if (transport == "unix") return "unix:" + unix_path_;
    // TCP for the handshake, then the stream on RDMA (or the client fails,
    // saying why).
    if (transport == "rdma") return std::string(kRdmaScheme) + tcp_address_;
    return tcp_address_;
  }

 private:
  pid_t pid_ = -1;
  std::string tcp_address_;
  std::string unix_path_;
};

struct Spread {
  double median = 0, min = 0, max = 0;
  int count = 0;
};

Spread Summarise(std::vector<double> values) {
  Spread s;
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  s.count = static_cast<int>(values.size());
  s.min = values.front();
  s.max = values.back();
  const size_t n = values.size();
  s.median = n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
  return s;
}

std::string Format(const Spread& s) {
  char buffer[96];
  if (s.count <= 1) {
    std::snprintf(buffer, sizeof(buffer), "%.3g", s.median);
  } else {
    std::snprintf(buffer, sizeof(buffer), "%.3g [%.3g-%.3g]", s.median, s.min, s.max);
  }
  return buffer;
}

std::string Now() {
  char buffer[64];
  const std::time_t t = std::time(nullptr);
  std::strftime(buffer, sizeof(buffer), "%Y-%m-%d %H:%M:%S", std::localtime(&t));
  return buffer;
}

// One row of the table: a figure through one transport and what it is
// compared with.
struct Row {
  std::string label;      // what was measured, with its unit
  std::string transport;  // tcp / unix
  std::string figure;     // key in the child figures
  std::string baseline;   // key in the baselines, or "" for an absolute target
  bool lower_is_better = false;
  double target = 0;  // ratio (or absolute value when baseline is "") to reach; 0: none
};

int RunParent(const Options& o) {
  std::string dir_template =
      std::filesystem::temp_directory_path().string() + "/ferry-bench-XXXXXX";
  if (mkdtemp(dir_template.data()) == nullptr) {
    std::fprintf(stderr, "ferry-bench: mkdtemp failed\n");
    return 1;
  }
  const std::string dir = dir_template;

  Ferryd ferryd;
  Status status = ferryd.Start(o, dir);
  if (!status.ok()) {
    std::fprintf(stderr, "ferry-bench: %s\n", status.ToString().c_str());
    return 1;
  }
  char self[4096];
  const ssize_t self_length = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (self_length <= 0) return 1;
  self[self_length] = '\0';

  // figures[transport][name] = values over the reps; baselines likewise.
  // Each rep measures its baselines right before its driver figures, so that
  // both see the same load on a shared machine, and ratios are taken per rep.
  std::map<std::string, std::map<std::string, std::vector<double>>> figures;
  std::map<std::string, std::vector<double>> baselines;
  const uint64_t stream_bytes = o.quick ? (256ull << 20) : (1ull << 30);
  for (int rep = 0; rep < o.reps; ++rep) {
    double rtt = 0, bw = 0;
    status = RawTcpRoundTrip(o.quick ? 5000 : 20000, &rtt);
    if (status.ok()) status = RawTcpBandwidth(stream_bytes, 4 << 20, &bw);
    if (!status.ok()) {
      std::fprintf(stderr, "ferry-bench: baseline failed: %s\n", status.ToString().c_str());
      return 1;
    }
    baselines["tcp_rtt_us"].push_back(rtt);
    baselines["tcp_bw_gbs"].push_back(bw);
    baselines["memcpy_bw_gbs"].push_back(MemcpyBandwidth(64 << 20, stream_bytes));
    for (size_t t = 0; t < o.transports.size(); ++t) {
      const std::string& transport = o.transports[t];
      // A seed per rep and transport: each child's first load is a miss.
      std::vector<std::string> argv = {self,
                                       "--client",
                                       ferryd.Address(transport),
                                       "--image-seed",
                                       std::to_string(1000 * rep + 17 + t),
                                       "--libcuda",
                                       o.libcuda};
      if (o.quick) argv.push_back("--quick");
      if (!o.only.empty()) {
        argv.push_back("--only");
        argv.push_back(o.only);
      }
      if (!o.copy_sizes.empty()) {
        argv.push_back("--copy-sizes");
        argv.push_back(o.copy_sizes);
      }
      argv.push_back("--fatbin");
      argv.push_back(o.fatbin);
      std::string output;
      setenv("FERRY_TRANSPORT", CarrierSetting(transport), 1);
      const int code = RunCaptured(argv, &output);
      if (code != 0) {
        std::fprintf(stderr, "ferry-bench: the %s client failed (exit %d)\n", transport.c_str(),
                     code);
        return 1;
      }
      std::istringstream in(output);
      std::string name;
      double value;
      while (in >> name >> value) figures[transport][name].push_back(value);
      std::fprintf(stderr, "ferry-bench: rep %d/%d over %s done\n", rep + 1, o.reps,
                   transport.c_str());
    }
  }
  ferryd.Stop();

  // --- the table ----------------------------------------------------------------
  std::vector<Row> rows;
  for (const std::string& t : o.transports) {
    const bool shm = t == "unix" || t == "auto";
    rows.push_back({"session start, cuInit to a context (ms)", t, "session_start_ms", "", true, 0});
    rows.push_back({"sync RTT, 4 B cuMemcpyDtoH (us)", t, "sync_rtt_us", shm ? "" : "tcp_rtt_us",
                    true, shm ? 5.0 : 1.3});
    rows.push_back({"pipelined launches (k/s)", t, "launch_rate_kps", "", false, 150});
    const char* bw_base = shm ? "memcpy_bw_gbs" : "tcp_bw_gbs";
    const double bw_target = shm ? 0.5 : 0.8;
    for (uint64_t size : CopySizes(o)) {
      for (const char* direction : {"h2d", "d2h"}) {
        for (const char* memory : {"pageable", "pinned"}) {
          rows.push_back({std::string(direction) + " " + memory + " " + SizeName(size) + " (GB/s)",
                          t, CopyFigureName(direction, memory, size), bw_base, false,
                          size == (256ull << 20) ? bw_target : 0});
        }
      }
    }
    for (uint64_t size : CopySizes(o)) {
      rows.push_back({"peer 0->1 " + SizeName(size) + " (GB/s)", t, PeerFigureName(size), bw_base,
                      false, 0});
    }
    rows.push_back({"module load, first (ms)", t, "module_load_first_ms", "", true, 0});
    rows.push_back({"module load, again (ms)", t, "module_load_again_ms", "", true, 0});
  }

  std::printf("ferry-bench  %s  host backend, loopback, %u CPUs, %d rep(s)%s\n", Now().c_str(),
              std::thread::hardware_concurrency(), o.reps, o.quick ? ", quick" : "");
  std::printf(
      "values: median [min-max] over the reps; ratio: median of the per-rep ratios to\n"
      "the baseline measured in the same rep\n\n");
  std::printf("baselines (in-process):\n");
  std::printf("  raw TCP RTT, 64 B (us)         %s\n",
              Format(Summarise(baselines["tcp_rtt_us"])).c_str());
  std::printf("  raw TCP bandwidth (GB/s)       %s\n",
              Format(Summarise(baselines["tcp_bw_gbs"])).c_str());
  std::printf("  memcpy bandwidth (GB/s)        %s\n",
              Format(Summarise(baselines["memcpy_bw_gbs"])).c_str());
  if (figures.begin() != figures.end()) {
    for (const auto& [t, f] : figures) {
      auto it = f.find("module_image_mib");
      if (it != f.end()) {
        std::printf("  module image for the load figures: %.1f MiB\n",
                    Summarise(it->second).median);
        break;
      }
    }
  }
  std::printf("\n%-38s %-5s %-26s %-9s %s\n", "figure", "via", "value", "ratio", "target");
  // (rows for figures that were not measured, --only, are left out)
  for (const Row& row : rows) {
    if (figures[row.transport].count(row.figure) == 0) continue;
    const std::vector<double>& values = figures[row.transport][row.figure];
    const Spread value = Summarise(values);
    std::string ratio = "-";
    std::string target = "-";
    char buffer[64];
    double median_ratio = 0;
    if (!row.baseline.empty()) {
      // The median of the per-rep ratios (each against its own rep's baseline).
      std::vector<double> ratios;
      const std::vector<double>& base = baselines[row.baseline];
      for (size_t i = 0; i < values.size() && i < base.size(); ++i) {
        if (base[i] > 0) ratios.push_back(values[i] / base[i]);
      }
      const Spread r = Summarise(ratios);
      median_ratio = r.median;
      if (r.count > 0) {
        std::snprintf(buffer, sizeof(buffer), "%.2fx", r.median);
        ratio = buffer;
      }
      if (row.target > 0) {
        std::snprintf(buffer, sizeof(buffer), "%s %.2gx %s",
                      row.lower_is_better ? "<=" : ">=", row.target,
                      row.baseline.substr(0, row.baseline.find('_')).c_str());
        target = buffer;
      }
    } else if (row.target > 0) {
      std::snprintf(buffer, sizeof(buffer), "%s %g", row.lower_is_better ? "<=" : ">=", row.target);
      target = buffer;
    }
    if (row.target > 0 && value.count > 0) {
      const double measured = row.baseline.empty() ? value.median : median_ratio;
      const bool met = row.lower_is_better ? measured <= row.target : measured >= row.target;
      target += met ? "  met" : "  MISSED";
    }
    std::printf("%-38s %-5s %-26s %-9s %s\n", row.label.c_str(), row.transport.c_str(),
                Format(value).c_str(), ratio.c_str(), target.c_str());
  }

  if (!o.json.empty()) {
    std::ofstream out(o.json);
    auto write_spreads = [&out](const std::map<std::string, std::vector<double>>& values) {
      bool first = true;
      for (const auto& [name, v] : values) {
        const Spread s = Summarise(v);
        out << (first ? "" : ",\n") << "    \"" << name << "\": {\"median\": " << s.median
            << ", \"min\": " << s.min << ", \"max\": " << s.max << ", \"reps\": " << s.count << "}";
        first = false;
      }
    };
    out << "{\n  \"date\": \"" << Now()
        << "\",\n  \"backend\": \"host\",\n  \"cpus\": " << std::thread::hardware_concurrency()
        << ",\n  \"quick\": " << (o.quick ? "true" : "false") << ",\n  \"baselines\": {\n";
    write_spreads(baselines);
    out << "\n  }";
    for (const auto& [transport, values] : figures) {
      out << ",\n  \"" << transport << "\": {\n";
      write_spreads(values);
      out << "\n  }";
    }
    out << "\n}\n";
    if (!out) {
      std::fprintf(stderr, "ferry-bench: cannot write %s\n", o.json.c_str());
      return 1;
    }
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return 0;
}

// --busy-poll: per window, a ferryd and clients set to it; the sync RTT and
// what each call costs in CPU time on both sides.
int RunBusyPollSweep(const Options& o) {
  char self[4096];
  const ssize_t self_length = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (self_length <= 0) return 1;
  self[self_length] = '\0';
  // figures[window][transport][name] = values over the reps.
  std::map<std::string, std::map<std::string, std::map<std::string, std::vector<double>>>> figures;
  for (const std::string& window : o.busy_poll) {
    std::string dir = std::filesystem::temp_directory_path().string() + "/ferry-bench-XXXXXX";
    if (mkdtemp(dir.data()) == nullptr) {
      std::fprintf(stderr, "ferry-bench: mkdtemp failed\n");
      return 1;
    }
    // Sessions in ferryd's own process: its CPU time is then the session's
    // (a worker process's could not be told apart from the next session's
    // worker, which ferryd starts ahead). The data path is the same.
    Options server_options = o;
    server_options.ferryd_args.push_back("--sessions-in-process");
    server_options.ferryd_args.push_back("--busy-poll");
    server_options.ferryd_args.push_back(window);
    Ferryd ferryd;
    Status status = ferryd.Start(server_options, dir);
    if (!status.ok()) {
      std::fprintf(stderr, "ferry-bench: %s\n", status.ToString().c_str());
      return 1;
    }
    setenv("FERRY_BUSY_POLL", window.c_str(), 1);  // the clients' side
    for (int rep = 0; rep < o.reps; ++rep) {
      for (const std::string& transport : o.transports) {
        std::vector<std::string> argv = {
            self,  "--client",     ferryd.Address(transport),    "--libcuda", o.libcuda, "--only",
            "rtt", "--server-pid", std::to_string(ferryd.pid()), "--fatbin",  o.fatbin};
        if (o.quick) argv.push_back("--quick");
        std::string output;
        setenv("FERRY_TRANSPORT", CarrierSetting(transport), 1);
        const int code = RunCaptured(argv, &output);
        if (code != 0) {
          std::fprintf(stderr, "ferry-bench: the %s client (busy-poll %s) failed (exit %d)\n",
                       transport.c_str(), window.c_str(), code);
          return 1;
        }
        std::istringstream in(output);
        std::string name;
        double value;
        while (in >> name >> value) figures[window][transport][name].push_back(value);
        std::fprintf(stderr, "ferry-bench: busy-poll %s, rep %d/%d over %s done\n", window.c_str(),
                     rep + 1, o.reps, transport.c_str());
      }
    }
    unsetenv("FERRY_BUSY_POLL");
    ferryd.Stop();
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }

  std::printf("ferry-bench  %s  host backend, loopback, %u CPUs, %d rep(s)%s, busy-poll sweep\n",
              Now().c_str(), std::thread::hardware_concurrency(), o.reps, o.quick ? ", quick" : "");
  std::printf(
      "sync call RTT (4 B cuMemcpyDtoH) with ferryd --busy-poll W and FERRY_BUSY_POLL=W; CPU:\n"
      "user+system time per call of the client process and of ferryd (sessions in its own\n"
      "process); cores: that time over the loop's wall time. Values: median [min-max] over\n"
      "the reps.\n\n");
  std::printf("%-7s %-5s %-22s %-22s %-20s %-20s %-7s %s\n", "window", "via", "RTT median (us)",
              "RTT mean (us)", "client CPU/call (us)", "server CPU/call (us)", "client",
              "server cores");
  auto median = [](const std::vector<double>& v) { return Summarise(v).median; };
  for (const std::string& window : o.busy_poll) {
    for (const std::string& transport : o.transports) {
      auto& f = figures[window][transport];
      const double mean = median(f["sync_rtt_mean_us"]);
      const double client_cores = mean > 0 ? median(f["rtt_client_cpu_us"]) / mean : 0;
      const double server_cores = mean > 0 ? median(f["rtt_server_cpu_us"]) / mean : 0;
      std::printf("%-7s %-5s %-22s %-22s %-20s %-20s %-7.2f %.2f\n", (window + " us").c_str(),
                  transport.c_str(), Format(Summarise(f["sync_rtt_us"])).c_str(),
                  Format(Summarise(f["sync_rtt_mean_us"])).c_str(),
                  Format(Summarise(f["rtt_client_cpu_us"])).c_str(),
                  Format(Summarise(f["rtt_server_cpu_us"])).c_str(), client_cores, server_cores);
    }
  }

  if (!o.json.empty()) {
    std::ofstream out(o.json);
    out << "{\n  \"date\": \"" << Now()
        << "\",\n  \"backend\": \"host\",\n  \"cpus\": " << std::thread::hardware_concurrency()
        << ",\n  \"busy_poll\": {";
    bool first_window = true;
    for (const auto& [window, by_transport] : figures) {
      out << (first_window ? "\n" : ",\n") << "    \"" << window << "\": {";
      first_window = false;
      bool first_transport = true;
      for (const auto& [transport, values] : by_transport) {
        out << (first_transport ? "\n" : ",\n") << "      \"" << transport << "\": {";
        first_transport = false;
        bool first = true;
        for (const auto& [name, v] : values) {
          const Spread spread = Summarise(v);
          out << (first ? "\n" : ",\n") << "        \"" << name
              << "\": {\"median\": " << spread.median << ", \"min\": " << spread.min
              << ", \"max\": " << spread.max << ", \"reps\": " << spread.count << "}";
          first = false;
        }
        out << "\n      }";
      }
      out << "\n    }";
    }
    out << "\n  }\n}\n";
    if (!out) {
      std::fprintf(stderr, "ferry-bench: cannot write %s\n", o.json.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace ferry::bench

int main(int argc, char** argv) {
  ferry::bench::Options options;
  if (!ferry::bench::ParseArgs(argc, argv, &options)) {
    std::fputs(ferry::bench::kUsage, stderr);
    return 2;
  }
  if (!options.client_server.empty()) return ferry::bench::RunClient(options);
  if (!options.busy_poll.empty()) return ferry::bench::RunBusyPollSweep(options);
  return ferry::bench::RunParent(options);
}
