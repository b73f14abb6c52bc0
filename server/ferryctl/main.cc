// ferryctl: the operator's tool.
//
//   ferryctl status [-o table|json]        sessions, GPUs, pools, slices, queue
//   ferryctl reload                        re-read ferryd's config file
//   ferryctl rebind GPU POOL [--preempt | --drain | --migrate] [--grace DURATION]
//   ferryctl migrate SESSION --to GPU      move a session to another GPU of its server
//   ferryctl drain GPU                     no new borrows on GPU
//   ferryctl undrain GPU                   take borrows again
//   ferryctl token create --token-file PATH --pools A,B [--admin] [--name N]
//                                          a new token: its secret on stdout (once),
//                                          its salted hash appended to PATH (ferryd's)
//   ferryctl token list --token-file PATH  id, name, admin, pools of each token
//   ferryctl token revoke ID --token-file PATH   drops the token (then reload ferryd)
//   every command: [--server HOST:PORT] (before or after the command), --help,
//                  [--token SECRET] [--tls-ca PEM] [--tls-server-name NAME]
//                  [--allow-plain-token]
//   ferryctl --version
//
// The server address defaults to FERRY_SERVER, the address clients use; the
// token to FERRY_TOKEN or FERRY_TOKEN_FILE, TLS to FERRY_TLS_CA and
// FERRY_TLS_SERVER_NAME, as for clients. A ferryd with a token file answers
// `status` to any of its tokens and the other commands to admin tokens only.
// `ferryctl test-advance-clock DURATION` moves the fake clock of a ferryd
// started with --test-fake-clock; it exists for tests only.
// Exit status: 0 on success, 1 when the server cannot be reached or refuses,
// 2 on bad usage.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/credentials.h"
#include "common/frame.h"
#include "common/json.h"
#include "common/log.h"
#include "common/tls_transport.h"
#include "common/transport.h"
#include "common/units.h"
#include "server/auth/tokens.h"
#include "cluster_commands.h"

namespace ferry {
namespace {

// Builds one JSON object: Add("key", raw JSON value).
class JsonObject {
 public:
  JsonObject& Add(std::string_view key, const std::string& raw) {
    out_ += (out_.empty() ? "{" : ",") + JsonString(key) + ":" + raw;
    return *this;
  }
  JsonObject& Str(std::string_view key, std::string_view value) {
    return Add(key, JsonString(value));
  }
  JsonObject& Num(std::string_view key, long long value) { return Add(key, std::to_string(value)); }
  JsonObject& Real(std::string_view key, double value) {
    char buf[32];
    snprintf(buf, sizeof(buf), "%.6g", value);
    return Add(key, buf);
  }
  JsonObject& Bool(std::string_view key, bool value) { return Add(key, value ? "true" : "false"); }
  std::string Done() const { return out_.empty() ? "{}" : out_ + "}"; }

 private:
  std::string out_;
};

std::string JsonArray(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? "," : "") + items[i];
  return out + "]";
}

std::string HumanBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char buf[32];
  snprintf(buf, sizeof(buf), unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
  return buf;
}

// How ferryctl reaches and convinces ferryd (flags over the environment).
struct Access {
  std::string token;
  std::optional<TlsClientConfig> tls;
};
Status Connect(const std::string& server, const Access& access,
               std::unique_ptr<Transport>* transport) {
  FERRY_RETURN_IF_ERROR(
      ConnectTransportWithTls(server, std::chrono::seconds(5), access.tls, transport));
  capnp::MallocMessageBuilder message;
  auto hello = message.initRoot<wire::Hello>();
  hello.setProtocolVersion(wire::PROTOCOL_VERSION);
  hello.setRole(wire::Hello::Role::CONTROL);
  hello.setPid(static_cast<uint32_t>(getpid()));
  hello.setProgram("ferryctl");
  hello.setToken(access.token);
  FERRY_RETURN_IF_ERROR(WriteFrame(**transport, wire::FrameKind::HELLO, message));
  Frame frame;
  FERRY_RETURN_IF_ERROR(ReadFrame(**transport, &frame));
  if (frame.kind != wire::FrameKind::HELLO_REPLY) return Status::Malformed("unexpected reply");
  capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
  return StatusFromWire(reader.getRoot<wire::HelloReply>().getStatus());
}

// Sends one request built by `fill`, then hands the reply to `use`.
int Request(const std::string& server, const Access& access,
            const std::function<void(wire::ControlRequest::Builder)>& fill,
            const std::function<int(wire::ControlReply::Reader)>& use) {
  std::unique_ptr<Transport> transport;
  Status status = Connect(server, access, &transport);
  if (!status.ok()) {
    std::fprintf(stderr, "ferryctl: %s\n", status.message().c_str());
    return 1;
  }
  capnp::MallocMessageBuilder message;
  fill(message.initRoot<wire::ControlRequest>());
  Frame frame;
  status = WriteFrame(*transport, wire::FrameKind::CONTROL_REQUEST, message);
  if (status.ok()) status = ReadFrame(*transport, &frame);
  if (status.ok() && frame.kind != wire::FrameKind::CONTROL_REPLY) {
    status = Status::Malformed("unexpected frame from the server");
  }
  if (!status.ok()) {
    std::fprintf(stderr, "ferryctl: %s: %s\n", server.c_str(), status.message().c_str());
    return 1;
  }
  try {
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    auto reply = reader.getRoot<wire::ControlReply>();
    status = StatusFromWire(reply.getStatus());
    if (!status.ok()) {
      std::fprintf(stderr, "ferryctl: %s: %s\n", server.c_str(), status.message().c_str());
      return 1;
    }
    return use(reply);
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "ferryctl: bad reply from %s: %s\n", server.c_str(),
                 e.getDescription().cStr());
    return 1;
  }
}

// Prints what a reload, rebind or drain did.
int PrintMessage(wire::ControlReply::Reader reply) {
  std::fputs(reply.getMessage().cStr(), stdout);
  return 0;
}

std::string PoolJson(wire::PoolStatus::Reader pool) {
  JsonObject out;
  out.Bool("enabled", pool.getEnabled());
  if (!pool.getEnabled()) return out.Done();
  out.Str("config_file", pool.getConfigFile().cStr())
      .Num("now_unix_ms", pool.getNowUnixMs())
      .Bool("test_clock", pool.getTestClock());
  std::vector<std::string> gpus;
  for (auto g : pool.getGpus()) {
    std::vector<std::string> holders;
    for (auto h : g.getHolders()) {
      holders.push_back(JsonObject()
                            .Num("session", static_cast<long long>(h.getSessionId()))
                            .Str("pool", h.getPool().cStr())
                            .Num("slice", h.getSlice())
                            .Num("slices_per_gpu", h.getSlicesPerGpu())
                            .Num("memory_quota", static_cast<long long>(h.getMemoryQuota()))
                            .Num("memory_used", static_cast<long long>(h.getMemoryUsed()))
                            .Real("compute_share", h.getComputeShare())
                            .Str("mechanism", h.getMechanism().cStr())
                            .Str("host", h.getHost().cStr())
                            .Num("pid", h.getPid())
                            .Str("program", h.getProgram().cStr())
                            .Num("since_unix_ms", h.getSinceUnixMs())
                            .Num("drain_deadline_unix_ms", h.getDrainDeadlineUnixMs())
                            .Bool("preempting", h.getPreempting())
                            .Done());
    }
    std::vector<std::string> released;
    for (auto r : g.getReleased()) {
      released.push_back(JsonObject()
                             .Num("session", static_cast<long long>(r.getSessionId()))
                             .Str("pool", r.getPool().cStr())
                             .Num("slice", r.getSlice())
                             .Num("slices_per_gpu", r.getSlicesPerGpu())
                             .Num("memory_quota", static_cast<long long>(r.getMemoryQuota()))
                             .Str("host", r.getHost().cStr())
                             .Num("pid", r.getPid())
                             .Str("program", r.getProgram().cStr())
                             .Num("since_unix_ms", r.getSinceUnixMs())
                             .Num("preempt_at_unix_ms", r.getDrainDeadlineUnixMs())
                             .Done());
    }
    gpus.push_back(JsonObject()
                       .Num("index", g.getIndex())
                       .Str("pool", g.getPool().cStr())
                       .Str("source", g.getSource().cStr())
                       .Str("window", g.getWindow().cStr())
                       .Bool("drained", g.getDrained())
                       .Num("memory", static_cast<long long>(g.getMemory()))
                       .Num("slices_per_gpu", g.getSlicesPerGpu())
                       .Num("free_slices", g.getFreeSlices())
                       .Num("next_change_unix_ms", g.getNextChangeUnixMs())
                       .Str("next_pool", g.getNextPool().cStr())
                       .Add("holders", JsonArray(holders))
                       .Add("released", JsonArray(released))
                       .Done());
  }
  out.Add("gpus", JsonArray(gpus));
  std::vector<std::string> queue;
  for (auto w : pool.getQueue()) {
    queue.push_back(JsonObject()
                        .Num("position", w.getPosition())
                        .Num("session", static_cast<long long>(w.getSessionId()))
                        .Str("pool", w.getPool().cStr())
                        .Num("gpus", w.getGpus())
                        .Str("host", w.getHost().cStr())
                        .Num("pid", w.getPid())
                        .Str("program", w.getProgram().cStr())
                        .Num("since_unix_ms", w.getSinceUnixMs())
                        .Num("deadline_unix_ms", w.getDeadlineUnixMs())
                        .Done());
  }
  out.Add("queue", JsonArray(queue));
  out.Add("next_change", JsonObject()
                             .Num("unix_ms", pool.getNextChangeUnixMs())
                             .Num("gpu", pool.getNextChangeGpu())
                             .Str("pool", pool.getNextChangePool().cStr())
                             .Done());
  return out.Done();
}

void PrintPoolTable(wire::PoolStatus::Reader pool) {
  if (!pool.getEnabled()) {
    std::printf("\nno pools: every session gets every device, whole\n");
    return;
  }
  std::printf("\npools (config %s), now %s%s\n", pool.getConfigFile().cStr(),
              FormatUnixMillisUtc(pool.getNowUnixMs()).c_str(),
              pool.getTestClock() ? " (TEST fake clock)" : "");
  std::printf("%-4s %-10s %-9s %-34s %6s %5s %10s  %s\n", "GPU", "POOL", "SOURCE", "WINDOW",
              "SLICES", "FREE", "MEMORY", "NEXT CHANGE");
  for (auto g : pool.getGpus()) {
    std::string next = "-";
    if (g.getNextChangeUnixMs() != 0) {
      next = FormatUnixMillisUtc(g.getNextChangeUnixMs()) + " -> " + g.getNextPool().cStr();
    }
    std::string window = g.getWindow().size() > 0 ? g.getWindow().cStr() : "-";
    std::printf("%-4u %-10s %-9s %-34s %6u %5u %10s  %s%s\n", g.getIndex(), g.getPool().cStr(),
                g.getSource().cStr(), window.c_str(), g.getSlicesPerGpu(), g.getFreeSlices(),
                HumanBytes(g.getMemory()).c_str(), next.c_str(),
                g.getDrained() ? "  [DRAINED]" : "");
    for (auto h : g.getHolders()) {
      const std::string slice =
          std::to_string(h.getSlice() + 1) + "/" + std::to_string(h.getSlicesPerGpu());
      const std::string who = std::string(h.getProgram().cStr()) + "@" + h.getHost().cStr();
      const std::string memory =
          HumanBytes(h.getMemoryUsed()) + " / " + HumanBytes(h.getMemoryQuota());
      std::string state = "holding";
      if (h.getPreempting()) {
        state = "preempting";
      } else if (h.getDrainDeadlineUnixMs() != 0) {
        state = "draining until " + FormatUnixMillisUtc(h.getDrainDeadlineUnixMs());
      }
      std::printf(
          "     slice %-5s session %-5llu %-8s %-24s pid %-7u since %s  %s  share %.3g by %s  %s\n",
          slice.c_str(), static_cast<unsigned long long>(h.getSessionId()), h.getPool().cStr(),
          who.c_str(), h.getPid(), FormatUnixMillisUtc(h.getSinceUnixMs()).c_str(), memory.c_str(),
          h.getComputeShare(), h.getMechanism().cStr(), state.c_str());
    }
    for (auto r : g.getReleased()) {
      // Idle release: not holding; its slice is others' until it comes back.
      const std::string slice =
          std::to_string(r.getSlice() + 1) + "/" + std::to_string(r.getSlicesPerGpu());
      const std::string who = std::string(r.getProgram().cStr()) + "@" + r.getHost().cStr();
      std::string state = "released (idle), comes back on its next call";
      if (r.getDrainDeadlineUnixMs() != 0) {
        state += "; preempted at " + FormatUnixMillisUtc(r.getDrainDeadlineUnixMs());
      }
      std::printf("     slice %-5s session %-5llu %-8s %-24s pid %-7u since %s  %s\n",
                  slice.c_str(), static_cast<unsigned long long>(r.getSessionId()),
                  r.getPool().cStr(), who.c_str(), r.getPid(),
                  FormatUnixMillisUtc(r.getSinceUnixMs()).c_str(), state.c_str());
    }
  }
  auto queue = pool.getQueue();
  std::printf("queue: %u waiting\n", queue.size());
  for (auto w : queue) {
    const std::string who = std::string(w.getProgram().cStr()) + "@" + w.getHost().cStr();
    std::printf("  #%-3u pool %-10s %u GPU(s)  session %-5llu %-24s pid %-7u since %s  until %s\n",
                w.getPosition(), w.getPool().cStr(), w.getGpus(),
                static_cast<unsigned long long>(w.getSessionId()), who.c_str(), w.getPid(),
                FormatUnixMillisUtc(w.getSinceUnixMs()).c_str(), FormatUnixMillisUtc(w.getDeadlineUnixMs()).c_str());
  }
  if (pool.getNextChangeUnixMs() != 0) {
    std::printf("next scheduled change: %s, GPU %d -> pool %s\n",
                FormatUnixMillisUtc(pool.getNextChangeUnixMs()).c_str(), pool.getNextChangeGpu(),
                pool.getNextChangePool().cStr());
  } else {
    std::printf("next scheduled change: none\n");
  }
}

int PrintStatus(const std::string& server, const std::string& format,
                wire::ControlReply::Reader reply) {
  auto sessions = reply.getSessions();
  if (format == "json") {
    std::vector<std::string> list;
    for (auto s : sessions) {
      list.push_back(JsonObject()
                         .Num("id", static_cast<long long>(s.getId()))
                         .Str("client", s.getClient().cStr())
                         .Num("pid", s.getPid())
                         .Str("host", s.getHost().cStr())
                         .Str("program", s.getProgram().cStr())
                         .Num("bytes_allocated", static_cast<long long>(s.getBytesAllocated()))
                         .Num("allocations", static_cast<long long>(s.getAllocations()))
                         .Num("contexts", s.getContexts())
                         .Num("streams", s.getStreams())
                         .Num("events", s.getEvents())
                         .Num("modules", s.getModules())
                         .Num("since_unix_ms", s.getSinceUnixMs())
                         .Str("transport", s.getTransport().cStr())
                         .Num("parked_bytes", static_cast<long long>(s.getParkedBytes()))
                         .Num("resident_bytes",
                              static_cast<long long>(s.getBytesAllocated() -
                                                     std::min(s.getParkedBytes(),
                                                              s.getBytesAllocated())))
                         .Num("parks", static_cast<long long>(s.getParks()))
                         .Num("unparks", static_cast<long long>(s.getUnparks()))
                         .Num("idle_ms", static_cast<long long>(s.getIdleMs()))
                         .Bool("slices_released", s.getSlicesReleased())
                         .Done());
    }
    JsonObject top;
    top.Str("server", server)
        .Str("backend", reply.getBackend().cStr())
        .Add("sessions", JsonArray(list))
        .Add("pool", PoolJson(reply.getPool()));
    const auto pool = reply.getPool();
    if (pool.getClusterName().size() > 0) {
      // The rest of the cluster, from the etcd this ferryd uses.
      std::string view, error;
      JsonObject cluster;
      cluster.Str("name", pool.getClusterName().cStr())
          .Str("etcd", pool.getClusterEtcd().cStr())
          .Str("prefix", pool.getClusterPrefix().cStr())
          .Bool("registered", pool.getClusterRegistered());
      if (ferryctl::ClusterJson(pool.getClusterEtcd().cStr(), pool.getClusterPrefix().cStr(),
                                &view, &error)) {
        cluster.Add("view", view);
      } else {
        cluster.Str("view_error", error);
      }
      top.Add("cluster", cluster.Done());
    }
    std::string out = top.Done();
    std::printf("%s\n", out.c_str());
    return 0;
  }
  std::printf("server %s (%s backend): %u session(s)\n", server.c_str(), reply.getBackend().cStr(),
              sessions.size());
  if (sessions.size() > 0) {
    std::printf("%-6s %-22s %-8s %-24s %12s %18s %6s %4s %7s %6s %7s  %s\n", "ID", "CLIENT",
                "PID", "PROGRAM@HOST", "ALLOCATED", "PARKED", "ALLOCS", "CTX", "STREAMS", "EVENTS",
                "MODULES", "TRANSPORT");
  }
  for (auto s : sessions) {
    std::string who = std::string(s.getProgram().cStr()) + "@" + s.getHost().cStr();
    // PARKED: "-" while all of it is resident (nothing parked now); a
    // session whose slices went back to the pool (idle release) says so:
    // it holds no slice until its next call.
    std::string parked = s.getParkedBytes() > 0 ? HumanBytes(s.getParkedBytes()) : "-";
    if (s.getSlicesReleased()) parked += ", released";
    std::printf("%-6llu %-22s %-8u %-24s %12s %18s %6llu %4u %7u %6u %7u  %s\n",
                static_cast<unsigned long long>(s.getId()), s.getClient().cStr(), s.getPid(),
                who.c_str(), HumanBytes(s.getBytesAllocated()).c_str(), parked.c_str(),
                static_cast<unsigned long long>(s.getAllocations()), s.getContexts(),
                s.getStreams(), s.getEvents(), s.getModules(), s.getTransport().cStr());
  }
  PrintPoolTable(reply.getPool());
  const auto pool = reply.getPool();
  if (pool.getClusterName().size() > 0) {
    std::printf("\nthis server is %s of the cluster in etcd %s (prefix %s)%s\n",
                pool.getClusterName().cStr(), pool.getClusterEtcd().cStr(),
                pool.getClusterPrefix().cStr(),
                pool.getClusterRegistered() ? "" : ", NOT registered now (see its log)");
    std::fflush(stdout);
    (void)ferryctl::PrintClusterStatus(pool.getClusterEtcd().cStr(),
                                       pool.getClusterPrefix().cStr(), "table");
  }
  return 0;
}

bool ParseGpu(const std::string& text, uint32_t* gpu) {
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < 0 || value > 1023) return false;
  *gpu = static_cast<uint32_t>(value);
  return true;
}

// CLI11 validators: an empty string accepts the value, anything else is the
// reason it is refused.
// A GPU index, or SERVER:INDEX in a cluster (resolved through --etcd).
const CLI::Validator kGpuIndex(
    [](const std::string& text) {
      uint32_t gpu = 0;
      const size_t colon = text.rfind(':');
      const std::string index = colon == std::string::npos ? text : text.substr(colon + 1);
      return ParseGpu(index, &gpu) && colon != 0
                 ? std::string()
                 : "'" + text + "' is not a GPU index (0-1023) or SERVER:INDEX";
    },
    "GPU");
const CLI::Validator kDuration(
    [](const std::string& text) {
      std::chrono::milliseconds ms{};
      return ParseDuration(text, &ms) ? std::string()
                                      : "bad duration '" + text + "' (e.g. 10m, 1h30m, 90s)";
    },
    "DURATION");

int64_t DurationMs(const std::string& text) {
  std::chrono::milliseconds ms{};
  ParseDuration(text, &ms);  // validated by kDuration
  return ms.count();
}

// What a parse error says, in one line that names the offending command or
// argument (CLI11's own wording does not say "unknown command").
std::string ParseErrorMessage(const CLI::App& app, const CLI::ParseError& error) {
  const std::vector<CLI::App*> chosen = app.get_subcommands();
  const bool extras = dynamic_cast<const CLI::ExtrasError*>(&error) != nullptr;
  // Without a command CLI11 reports "a subcommand is required" even when an
  // unknown word stands where the command belongs; name that word instead.
  if (extras || chosen.empty()) {
    for (const std::string& arg : app.remaining()) {
      if (!arg.empty() && arg[0] == '-') return "unknown flag '" + arg + "'";
      return (chosen.empty() ? "unknown command '" : "unexpected argument '") + arg + "'";
    }
  }
  if (chosen.empty() && dynamic_cast<const CLI::RequiredError*>(&error) != nullptr) {
    return "no command given";
  }
  if (extras) {
    for (const std::string& arg : chosen.front()->remaining()) {
      const bool flag = !arg.empty() && arg[0] == '-';
      return std::string(flag ? "unknown flag '" : "unexpected argument '") + arg + "' for '" +
             chosen.front()->get_name() + "'";
    }
  }
  return error.what();
}

// Every command takes --server (and how to reach it), before or after the
// command's name.
struct AccessFlags {
  std::string token, tls_ca, tls_server_name;
  bool allow_plain_token = false;
};
void AddServerOption(CLI::App* app, std::string* server, AccessFlags* flags) {
  app->add_option("-s,--server", *server,
                  "ferryd's address, HOST:PORT or unix:PATH (default: $FERRY_SERVER)");
  app->add_option("--token", flags->token,
                  "the token ferryd asks for (default: $FERRY_TOKEN or the file\n"
                  "$FERRY_TOKEN_FILE; prefer those: a flag shows in ps)");
  app->add_option("--tls-ca", flags->tls_ca,
                  "TLS: the CA file that signed ferryd's certificate (default: $FERRY_TLS_CA)")
      ->type_name("PEM");
  app->add_option("--tls-server-name", flags->tls_server_name,
                  "TLS: the name ferryd's certificate must carry (default: the server's host)");
  app->add_flag("--allow-plain-token", flags->allow_plain_token,
                "send the token over plain TCP to a host that is not this one (default:\n"
                "refused unless $FERRY_ALLOW_PLAIN_TOKEN=1; prefer --tls-ca)");
}

// ferryctl token list: the entries of a token file, one line each.
int ListTokens(const std::string& token_file) {
  auth::TokenSet set;
  if (Status status = auth::TokenSet::Load(token_file, &set); !status.ok()) {
    std::fprintf(stderr, "ferryctl: %s\n", status.message().c_str());
    return 1;
  }
  std::printf("%-16s  %-20s %-5s  %s\n", "ID", "NAME", "ADMIN", "POOLS");
  for (const auth::Token& token : set.tokens()) {
    std::string pools;
    for (const std::string& pool : token.pools) pools += (pools.empty() ? "" : ",") + pool;
    std::printf("%-16s  %-20s %-5s  %s\n", token.id.c_str(),
                token.name.empty() ? "-" : token.name.c_str(), token.admin ? "yes" : "no",
                pools.c_str());
  }
  return 0;
}

// ferryctl token create: runs here, on the file ferryd reads; needs no ferryd.
int CreateToken(const std::string& token_file, const std::string& pools_text,
                const std::string& name, bool admin) {
  std::vector<std::string> pools;
  for (size_t begin = 0; begin <= pools_text.size();) {
    const size_t comma = std::min(pools_text.find(',', begin), pools_text.size());
    pools.push_back(pools_text.substr(begin, comma - begin));
    begin = comma + 1;
  }
  auth::NewToken token;
  Status status = auth::CreateToken(name, pools, admin, &token);
  if (!status.ok()) {
    std::fprintf(stderr, "ferryctl: %s\n", status.message().c_str());
    return 2;
  }
  // The entry must load back: a file ferryd cannot read helps nobody.
  auth::TokenSet check;
  status = auth::TokenSet::Parse(auth::FormatTokenEntry(token.entry), token_file, &check);
  if (status.ok()) status = auth::AppendTokenEntry(token_file, token.entry);
  if (!status.ok()) {
    std::fprintf(stderr, "ferryctl: %s\n", status.message().c_str());
    return 1;
  }
  std::printf("%s\n", token.secret.c_str());
  std::fprintf(stderr,
               "ferryctl: %s%s added to %s; the secret above is shown only now. ferryd reads it "
               "at SIGHUP or `ferryctl reload`.\n",
               token.entry.Describe().c_str(), admin ? " (admin)" : "", token_file.c_str());
  return 0;
}

int Main(int argc, char** argv) {
  SetLogProgram("ferryctl");
  const char* env = std::getenv("FERRY_SERVER");
  std::string server = env != nullptr ? env : "";
  std::string format = "table";
  std::string gpu_text;
  std::string pool;
  bool preempt = false;
  bool drain = false;
  bool migrate_holders = false;
  std::string grace;
  std::string duration;
  AccessFlags access_flags;
  std::string token_file, token_pools, token_name;
  bool token_admin = false;

  CLI::App app("ferryctl: the operator's tool for a ferryd", "ferryctl");
  app.set_version_flag("--version", std::string("ferryctl ") + FERRY_VERSION,
                       "Print the version and exit");
  app.require_subcommand(1);
  app.footer(
      "Exit status: 0 on success, 1 when the server cannot be reached or refuses, 2 on bad "
      "usage.");
  AddServerOption(&app, &server, &access_flags);

  CLI::App* status = app.add_subcommand("status", "Sessions, GPUs, pools, slices and the queue");
  AddServerOption(status, &server, &access_flags);
  status->add_option("-o,--output", format, "Output format (default: table)")
      ->check(CLI::IsMember({"table", "json"}));
  std::string etcd_endpoints, cluster_prefix = "/ferry/";
  const auto add_etcd_options = [&](CLI::App* command, const std::string& what) {
    command->add_option("--etcd", etcd_endpoints, what)->type_name("URLS");
    command->add_option("--cluster-prefix", cluster_prefix, "the cluster's keys in etcd")
        ->type_name("PREFIX");
  };
  add_etcd_options(status,
                   "read the cluster pool straight from etcd (comma-separated URLs) instead of\n"
                   "asking a ferryd: servers, GPUs with their pools, holders");

  CLI::App* apply = app.add_subcommand(
      "apply", "Check FILE as a cluster's pool config and store it in etcd (every ferryd of\n"
               "the cluster applies it)");
  std::string apply_file;
  apply->add_option("-f,--file", apply_file, "the pool config (TOML: [server] default_pool,\n"
                                             "on_rebind, grace; [pool.NAME]; [[schedule]] naming\n"
                                             "GPUs SERVER:INDEX, SERVER:* or by labels)")
      ->required()
      ->type_name("FILE");
  add_etcd_options(apply, "the cluster's etcd (comma-separated URLs)");
  apply->get_option("--etcd")->required();

  CLI::App* reload = app.add_subcommand("reload", "Re-read ferryd's config file");
  AddServerOption(reload, &server, &access_flags);

  CLI::App* rebind = app.add_subcommand("rebind", "Give GPU to POOL now");
  AddServerOption(rebind, &server, &access_flags);
  rebind->add_option("GPU", gpu_text, "GPU index, or SERVER:INDEX with --etcd")
      ->required()
      ->check(kGpuIndex);
  add_etcd_options(rebind, "find the ferryd that owns a SERVER:INDEX GPU in this etcd");
  rebind->add_option("POOL", pool, "The pool that gets the GPU")->required();
  CLI::Option* preempt_flag =
      rebind->add_flag("--preempt", preempt, "Preempt the GPU's holders at once");
  CLI::Option* drain_flag =
      rebind->add_flag("--drain", drain, "Let the holders finish (up to --grace)");
  CLI::Option* migrate_flag = rebind->add_flag(
      "--migrate", migrate_holders,
      "Move the holders to free slices of their pool on other GPUs of the server;\n"
      "those that cannot move drain (up to --grace)");
  preempt_flag->excludes(drain_flag);
  migrate_flag->excludes(preempt_flag)->excludes(drain_flag);
  rebind->add_option("--grace", grace, "How long draining holders may keep the GPU (e.g. 10m)")
      ->check(kDuration);

  CLI::App* migrate = app.add_subcommand(
      "migrate", "Move a running session to another GPU of its server, or to a GPU of another\n"
                 "ferryd (same ids and addresses; its calls pause meanwhile)");
  AddServerOption(migrate, &server, &access_flags);
  uint64_t migrate_session = 0;
  int migrate_device = -1;
  migrate->add_option("SESSION", migrate_session, "the session's id (ferryctl status)")
      ->required();
  std::string migrate_to;
  migrate->add_option("--to", migrate_to,
                      "GPU (an index of the same ferryd) or SERVER:GPU (another ferryd,\n"
                      "HOST:PORT or unix:PATH, which takes the same token as this one)")
      ->required()
      ->check([](const std::string& text) {
        const size_t colon = text.rfind(':');
        const std::string gpu = colon == std::string::npos ? text : text.substr(colon + 1);
        char* end = nullptr;
        const long index = std::strtol(gpu.c_str(), &end, 10);
        if (gpu.empty() || *end != '\0' || index < 0 || index > 1023) {
          return std::string("--to wants GPU or SERVER:GPU, with GPU a number from 0 to 1023");
        }
        if (colon == 0) return std::string("--to: SERVER is empty");
        return std::string();
      });
  migrate->add_option("--device", migrate_device,
                      "which of its devices (0-based; needed when it has several)");

  CLI::App* drain_cmd = app.add_subcommand("drain", "No new borrows on GPU");
  AddServerOption(drain_cmd, &server, &access_flags);
  drain_cmd->add_option("GPU", gpu_text, "GPU index, or SERVER:INDEX with --etcd")
      ->required()
      ->check(kGpuIndex);
  add_etcd_options(drain_cmd, "find the ferryd that owns a SERVER:INDEX GPU in this etcd");

  CLI::App* undrain = app.add_subcommand("undrain", "Take borrows on GPU again");
  AddServerOption(undrain, &server, &access_flags);
  undrain->add_option("GPU", gpu_text, "GPU index, or SERVER:INDEX with --etcd")
      ->required()
      ->check(kGpuIndex);
  add_etcd_options(undrain, "find the ferryd that owns a SERVER:INDEX GPU in this etcd");

  // Tests only (hidden): moves the fake clock of a ferryd started with
  // --test-fake-clock; ferryd refuses it otherwise.
  CLI::App* advance = app.add_subcommand("test-advance-clock", "Tests only")->group("");
  AddServerOption(advance, &server, &access_flags);
  advance->add_option("DURATION", duration, "How far to move the clock")
      ->required()
      ->check(kDuration);

  CLI::App* token = app.add_subcommand("token", "Access tokens (ferryd --token-file)");
  token->require_subcommand(1);
  CLI::App* token_create =
      token->add_subcommand("create", "Make a token: print its secret once, store its hash");
  token_create
      ->add_option("--token-file", token_file,
                   "the token file ferryd reads (created 0600 if absent; the entry is appended)")
      ->required()
      ->type_name("PATH");
  token_create
      ->add_option("--pools", token_pools, "pools it may borrow from, comma-separated ('*': any)")
      ->required()
      ->type_name("A,B");
  token_create->add_flag("--admin", token_admin, "may also run reload, rebind, drain and undrain");
  token_create->add_option("--name", token_name, "a name for ferryd's logs")->type_name("NAME");

  CLI::App* token_list = token->add_subcommand("list", "The tokens of a token file (no secrets)");
  token_list->add_option("--token-file", token_file, "the token file ferryd reads")
      ->required()
      ->type_name("PATH");
  std::string token_id;
  CLI::App* token_revoke =
      token->add_subcommand("revoke", "Drop a token from the file (ferryd forgets it at reload)");
  token_revoke->add_option("ID", token_id, "the token's id (ferryctl token list)")->required();
  token_revoke->add_option("--token-file", token_file, "the token file ferryd reads")
      ->required()
      ->type_name("PATH");

  // `ferryctl help` is `ferryctl --help`.
  CLI::App* help = app.add_subcommand("help", "Print this help")->group("");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    if (error.get_exit_code() == 0) return app.exit(error);  // --help, --version
    std::fprintf(stderr, "ferryctl: %s\nRun 'ferryctl --help' for usage.\n",
                 ParseErrorMessage(app, error).c_str());
    return 2;
  }
  if (help->parsed()) {
    std::fputs(app.get_formatter()->make_help(&app, "ferryctl", CLI::AppFormatMode::Normal).c_str(),
               stdout);
    return 0;
  }
  if (token_create->parsed()) return CreateToken(token_file, token_pools, token_name, token_admin);
  if (token_list->parsed()) return ListTokens(token_file);
  if (token_revoke->parsed()) {
    if (Status status = auth::RemoveTokenEntry(token_file, token_id); !status.ok()) {
      std::fprintf(stderr, "ferryctl: %s\n", status.message().c_str());
      return 1;
    }
    std::fprintf(stderr,
                 "ferryctl: token %s removed from %s; ferryd forgets it at SIGHUP or `ferryctl "
                 "reload`.\n",
                 token_id.c_str(), token_file.c_str());
    return 0;
  }
  if (status->parsed() && !etcd_endpoints.empty()) {
    return ferryctl::PrintClusterStatus(etcd_endpoints, cluster_prefix, format);
  }
  if (apply->parsed()) return ferryctl::ApplyClusterConfig(etcd_endpoints, cluster_prefix, apply_file);
  if (gpu_text.find(':') != std::string::npos) {
    // SERVER:INDEX: the request goes to the ferryd that owns the GPU.
    if (etcd_endpoints.empty()) {
      std::fprintf(stderr, "ferryctl: GPU %s names a server of a cluster: pass --etcd URLS\n",
                   gpu_text.c_str());
      return 2;
    }
    uint32_t index = 0;
    if (const int failed = ferryctl::ResolveClusterGpu(etcd_endpoints, cluster_prefix, gpu_text,
                                                       &server, &index);
        failed != 0) {
      return failed;
    }
    gpu_text = std::to_string(index);
  }
  if (server.empty()) {
    std::fprintf(stderr, "ferryctl: no server: pass --server HOST:PORT or set FERRY_SERVER\n");
    return 2;
  }
  Access access;
  access.token = access_flags.token;
  if (access.token.empty()) {
    if (Status status = TokenFromEnvironment(&access.token); !status.ok()) {
      std::fprintf(stderr, "ferryctl: %s\n", status.message().c_str());
      return 2;
    }
  }
  access.tls = TlsClientConfigFromEnvironment(server);
  if (!access_flags.tls_ca.empty() && server.rfind("unix:", 0) != 0) {
    if (!access.tls.has_value()) access.tls = TlsClientConfig{};
    access.tls->ca_file = access_flags.tls_ca;
    std::string host;
    uint16_t port = 0;
    if (access.tls->server_name.empty() && ParseHostPort(server, &host, &port).ok()) {
      access.tls->server_name = host;
    }
  }
  if (access.tls.has_value() && !access_flags.tls_server_name.empty()) {
    access.tls->server_name = access_flags.tls_server_name;
  }
  if (Status status = CheckTokenIsProtected(
          server, access.token, access.tls.has_value(),
          access_flags.allow_plain_token || PlainTokenAllowedByEnvironment(),
          "pass --tls-ca (TLS), or --allow-plain-token on a network you trust");
      !status.ok()) {
    std::fprintf(stderr, "ferryctl: %s\n", status.message().c_str());
    return 1;
  }

  if (status->parsed()) {
    return Request(
        server, access, [](wire::ControlRequest::Builder r) { r.setStatus(); },
        [&](wire::ControlReply::Reader reply) { return PrintStatus(server, format, reply); });
  }
  if (reload->parsed()) {
    return Request(
        server, access, [](wire::ControlRequest::Builder r) { r.setReload(); }, PrintMessage);
  }
  uint32_t gpu = 0;
  ParseGpu(gpu_text, &gpu);  // validated by kGpuIndex where a command takes a GPU
  if (rebind->parsed()) {
    const std::string policy = preempt           ? "preempt"
                               : drain           ? "drain"
                               : migrate_holders ? "migrate"
                                                 : "";
    const int64_t grace_ms = grace.empty() ? -1 : DurationMs(grace);
    return Request(
        server, access,
        [&](wire::ControlRequest::Builder r) {
          auto args = r.initRebind();
          args.setGpu(gpu);
          args.setPool(pool);
          args.setPolicy(policy);
          args.setGraceMs(grace_ms);
        },
        PrintMessage);
  }
  if (migrate->parsed()) {
    return Request(
        server, access,
        [&](wire::ControlRequest::Builder r) {
          auto args = r.initMigrate();
          args.setSession(migrate_session);
          const size_t colon = migrate_to.rfind(':');
          if (colon != std::string::npos) {
            args.setServer(migrate_to.substr(0, colon));
            args.setToken(access.token);  // the other ferryd takes the same one
          }
          args.setGpu(static_cast<uint32_t>(
              std::strtol(migrate_to.c_str() + (colon == std::string::npos ? 0 : colon + 1),
                          nullptr, 10)));
          args.setDevice(migrate_device);
        },
        PrintMessage);
  }
  if (drain_cmd->parsed() || undrain->parsed()) {
    const bool drained = drain_cmd->parsed();
    return Request(
        server, access,
        [&](wire::ControlRequest::Builder r) {
          auto args = r.initDrain();
          args.setGpu(gpu);
          args.setDrained(drained);
        },
        PrintMessage);
  }
  // test-advance-clock: require_subcommand(1) leaves no other choice.
  const int64_t ms = DurationMs(duration);
  return Request(
      server, access, [&](wire::ControlRequest::Builder r) { r.setTestAdvanceClock(ms); },
      PrintMessage);
}

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::Main(argc, argv); }
