// ferryctl: the operator's tool.
//
//   ferryctl status [--server HOST:PORT] [-o table|json]
//
// The server address defaults to FERRY_SERVER, the address clients use.
// Exit status: 0 on success, 1 when the server cannot be reached or refuses,
// 2 on bad usage.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include "common/frame.h"
#include "common/log.h"
#include "common/transport.h"

namespace ferry {
namespace {

constexpr const char* kUsage = "usage: ferryctl status [--server HOST:PORT] [-o table|json]\n";

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
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

Status Connect(const std::string& server, std::unique_ptr<Transport>* transport) {
  FERRY_RETURN_IF_ERROR(ConnectTransport(server, std::chrono::seconds(5), transport));
  capnp::MallocMessageBuilder message;
  auto hello = message.initRoot<wire::Hello>();
  hello.setProtocolVersion(wire::PROTOCOL_VERSION);
  hello.setRole(wire::Hello::Role::CONTROL);
  hello.setPid(static_cast<uint32_t>(getpid()));
  hello.setProgram("ferryctl");
  FERRY_RETURN_IF_ERROR(WriteFrame(**transport, wire::FrameKind::HELLO, message));
  Frame frame;
  FERRY_RETURN_IF_ERROR(ReadFrame(**transport, &frame));
  if (frame.kind != wire::FrameKind::HELLO_REPLY) return Status::Malformed("unexpected reply");
  capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
  return StatusFromWire(reader.getRoot<wire::HelloReply>().getStatus());
}

int Status_(const std::string& server, const std::string& format) {
  std::unique_ptr<Transport> transport;
  Status status = Connect(server, &transport);
  if (!status.ok()) {
    std::fprintf(stderr, "ferryctl: %s\n", status.message().c_str());
    return 1;
  }
  capnp::MallocMessageBuilder message;
  message.initRoot<wire::ControlRequest>().setStatus();
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
    auto sessions = reply.getSessions();
    if (format == "json") {
      std::string out = "{\"server\":" + JsonString(server) +
                        ",\"backend\":" + JsonString(reply.getBackend().cStr()) + ",\"sessions\":[";
      bool first = true;
      for (auto s : sessions) {
        if (!first) out += ",";
        first = false;
        out += "{\"id\":" + std::to_string(s.getId()) + ",\"client\":" + JsonString(s.getClient().cStr()) +
               ",\"pid\":" + std::to_string(s.getPid()) + ",\"host\":" + JsonString(s.getHost().cStr()) +
               ",\"program\":" + JsonString(s.getProgram().cStr()) +
               ",\"bytes_allocated\":" + std::to_string(s.getBytesAllocated()) +
               ",\"allocations\":" + std::to_string(s.getAllocations()) +
               ",\"contexts\":" + std::to_string(s.getContexts()) +
               ",\"streams\":" + std::to_string(s.getStreams()) +
               ",\"events\":" + std::to_string(s.getEvents()) +
               ",\"modules\":" + std::to_string(s.getModules()) +
               ",\"since_unix_ms\":" + std::to_string(s.getSinceUnixMs()) + "}";
      }
      out += "]}\n";
      std::fputs(out.c_str(), stdout);
    } else {
      std::printf("server %s (%s backend): %u session(s)\n", server.c_str(), reply.getBackend().cStr(),
                  sessions.size());
      if (sessions.size() > 0) {
        std::printf("%-6s %-22s %-8s %-24s %12s %6s %4s %7s %6s %7s\n", "ID", "CLIENT", "PID",
                    "PROGRAM@HOST", "ALLOCATED", "ALLOCS", "CTX", "STREAMS", "EVENTS", "MODULES");
      }
      for (auto s : sessions) {
        std::string who = std::string(s.getProgram().cStr()) + "@" + s.getHost().cStr();
        std::printf("%-6llu %-22s %-8u %-24s %12s %6llu %4u %7u %6u %7u\n",
                    static_cast<unsigned long long>(s.getId()), s.getClient().cStr(), s.getPid(),
                    who.c_str(), HumanBytes(s.getBytesAllocated()).c_str(),
                    static_cast<unsigned long long>(s.getAllocations()), s.getContexts(),
                    s.getStreams(), s.getEvents(), s.getModules());
      }
    }
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "ferryctl: bad reply from %s: %s\n", server.c_str(),
                 e.getDescription().cStr());
    return 1;
  }
  return 0;
}

int Main(int argc, char** argv) {
  SetLogProgram("ferryctl");
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  std::string command = argv[1];
  if (command == "--help" || command == "-h" || command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const char* env = std::getenv("FERRY_SERVER");
  std::string server = env != nullptr ? env : "";
  std::string format = "table";
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if ((arg == "--server" || arg == "-s") && i + 1 < argc) {
      server = argv[++i];
    } else if ((arg == "-o" || arg == "--output") && i + 1 < argc) {
      format = argv[++i];
      if (format != "table" && format != "json") {
        std::fprintf(stderr, "ferryctl: -o must be table or json\n");
        return 2;
      }
    } else {
      std::fprintf(stderr, "ferryctl: unknown argument '%s'\n%s", arg.c_str(), kUsage);
      return 2;
    }
  }
  if (server.empty()) {
    std::fprintf(stderr, "ferryctl: no server: pass --server HOST:PORT or set FERRY_SERVER\n");
    return 2;
  }
  if (command == "status") return Status_(server, format);
  std::fprintf(stderr, "ferryctl: unknown command '%s'\n%s", command.c_str(), kUsage);
  return 2;
}

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::Main(argc, argv); }
