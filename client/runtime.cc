#include "client/runtime.h"

#include <capnp/serialize.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>

#include "client/cuda_result.h"
#include "client/image_upload.h"
#include "client/unsupported.h"
#include "common/busy_poll.h"
#include "common/credentials.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/tls_transport.h"
#include "common/units.h"

namespace ferry::client {

namespace {

constexpr const char* kDefaultServer = "127.0.0.1:7070";
constexpr int kDefaultConnectTimeoutMs = 3000;
// How often one borrow may be sent on (ferryd sends a client on at most
// twice); a part of a split borrow starts at the maximum.
constexpr uint32_t kMaxRedirects = 4;

// Serials of Runtime instances, never reused (Runtime::ThisThread).
std::atomic<uint64_t> next_instance{1};

// FERRY_POOL, FERRY_GPUS and FERRY_WAIT: what to borrow from a server with
// pools. A value that does not parse fails cuInit with a message naming it.
Status BorrowFromEnvironment(Connection::Borrow* borrow) {
  if (const char* pool = std::getenv("FERRY_POOL"); pool != nullptr) borrow->pool = pool;
  if (const char* gpus = std::getenv("FERRY_GPUS"); gpus != nullptr && *gpus != '\0') {
    char* end = nullptr;
    const long n = std::strtol(gpus, &end, 10);
    if (*end != '\0' || n < 1 || n > 1024) {
      return Status::InvalidArgument("FERRY_GPUS='" + std::string(gpus) +
                                     "' is not a number of devices (1 or more)");
    }
    borrow->gpus = static_cast<uint32_t>(n);
  }
  if (const char* wait = std::getenv("FERRY_WAIT"); wait != nullptr && *wait != '\0') {
    std::chrono::milliseconds ms{};
    if (!ParseDuration(wait, &ms)) {
      return Status::InvalidArgument("FERRY_WAIT='" + std::string(wait) +
                                     "' is not a duration (e.g. 30s, 5m, 1h)");
    }
    borrow->wait_ms = static_cast<uint64_t>(ms.count());
  }
  return Status::Ok();
}

// FERRY_CALL_TIMEOUT: seconds ("600") or a duration ("10m", "2s",
// "500ms"); "0" turns the call deadline off. Unset: the default.
Status CallTimeoutFromEnvironment(std::chrono::milliseconds* timeout) {
  const char* text = std::getenv("FERRY_CALL_TIMEOUT");
  if (text == nullptr || *text == '\0') return Status::Ok();
  char* end = nullptr;
  const long long seconds = std::strtoll(text, &end, 10);
  if (*end == '\0' && seconds >= 0 && seconds <= 366ll * 24 * 3600) {
    *timeout = std::chrono::seconds(seconds);
    return Status::Ok();
  }
  if (!ParseDuration(text, timeout)) {
    return Status::InvalidArgument("FERRY_CALL_TIMEOUT='" + std::string(text) +
                                   "' is not a number of seconds or a duration (e.g. 600, 10m)");
  }
  return Status::Ok();
}

// FERRY_BUSY_POLL: how long a thread waiting for the server spins before it
// sleeps, in microseconds (common/busy_poll.h); unset: the default for the
// CPUs this process may use. A value that does not parse fails cuInit.
Status BusyPollFromEnvironment() {
  const char* text = std::getenv("FERRY_BUSY_POLL");
  if (text == nullptr || *text == '\0') return Status::Ok();
  std::chrono::microseconds window{};
  Status status = ParseBusyPollWindow(text, &window);
  if (!status.ok()) return Status::InvalidArgument("FERRY_BUSY_POLL: " + status.message());
  SetBusyPollWindow(window);
  return Status::Ok();
}

// FERRY_TRANSPORT=auto|tcp|rdma|shm (default auto), FERRY_RDMA_DEVICE=NAME,
// FERRY_RDMA_GID_INDEX=N: what carries the stream over TCP connections
// (ConnectionOptions::Carrier).
Status CarrierFromEnvironment(ConnectionOptions* options) {
  if (const char* text = std::getenv("FERRY_TRANSPORT"); text != nullptr && *text != '\0') {
    const std::string carrier = text;
    if (carrier == "auto") {
      options->carrier = ConnectionOptions::Carrier::kAuto;
    } else if (carrier == "tcp") {
      options->carrier = ConnectionOptions::Carrier::kTcp;
    } else if (carrier == "rdma") {
      options->carrier = ConnectionOptions::Carrier::kRdma;
    } else if (carrier == "shm") {
      options->carrier = ConnectionOptions::Carrier::kShm;
    } else {
      return Status::InvalidArgument("FERRY_TRANSPORT='" + carrier +
                                     "' is not auto, tcp, rdma or shm");
    }
  }
  if (const char* device = std::getenv("FERRY_RDMA_DEVICE"); device != nullptr) {
    options->rdma_device.device = device;
  }
  if (const char* text = std::getenv("FERRY_RDMA_GID_INDEX"); text != nullptr && *text != '\0') {
    char* end = nullptr;
    const long index = std::strtol(text, &end, 10);
    if (*end != '\0' || index < 0 || index > 255) {
      return Status::InvalidArgument("FERRY_RDMA_GID_INDEX='" + std::string(text) +
                                     "' is not a GID index (0-255)");
    }
    options->rdma_device.gid_index = static_cast<int>(index);
  }
  return Status::Ok();
}

}  // namespace

CUresult Unsupported(const char* name, const char* reason) {
  static auto* mu = new std::mutex;
  static auto* logged = new std::set<std::string>;
  std::lock_guard<std::mutex> lock(*mu);
  if (logged->insert(name).second) {
    if (reason != nullptr) {
      FERRY_LOG(kWarning) << name << " is not supported by ferry (" << reason
                          << "); it returns CUDA_ERROR_NOT_SUPPORTED";
    } else {
      FERRY_LOG(kWarning) << name
                          << " is not supported by ferry; it returns CUDA_ERROR_NOT_SUPPORTED";
    }
  }
  return CUDA_ERROR_NOT_SUPPORTED;
}

Runtime& Runtime::Get() {
  static Runtime* runtime = new Runtime;  // never destroyed, on purpose
  return *runtime;
}

Runtime::Runtime() : instance_(next_instance.fetch_add(1)) {}

Runtime::Runtime(std::unique_ptr<Connection> connection, std::vector<DeviceInfo> devices,
                 uint64_t session_id)
    : init_status_(Status::Ok()), initialized_(true), instance_(next_instance.fetch_add(1)) {
  SessionPart part;
  part.connection = std::move(connection);
  part.session_id = session_id;
  AddPart(std::move(part), std::move(devices));
}

Runtime::~Runtime() {
  // First: the connections' threads stop before the tables they might reach.
  for (SessionPart& part : parts_) part.connection.reset();
}

void Runtime::AddPart(SessionPart part, std::vector<DeviceInfo> devices) {
  part.first_device = static_cast<int>(devices_.size());
  part.device_count = static_cast<int>(devices.size());
  for (DeviceInfo& device : devices) devices_.push_back(std::move(device));
  parts_.push_back(std::move(part));
}

size_t Runtime::PartOfDevice(int device) const {
  for (size_t i = parts_.size(); i-- > 1;) {
    if (device >= parts_[i].first_device) return i;
  }
  return 0;
}

int Runtime::ServerOrdinal(int device) const {
  return parts_.empty() ? device : device - parts_[PartOfDevice(device)].first_device;
}

Connection& Runtime::ConnectionOf(uint64_t ctx) {
  if (parts_.size() == 1) return *parts_.front().connection;
  int device = 0;
  if (!contexts_.Device(ctx, &device).ok()) device = 0;
  return DeviceConnection(device);
}

Connection& Runtime::FunctionConnection(uint64_t function) {
  if (parts_.size() == 1) return *parts_.front().connection;
  std::shared_ptr<const FunctionState> state;
  return ConnectionOf(modules_.FindFunction(function, &state).ok() ? state->ctx : 0);
}

Connection& Runtime::ObjectConnection(uint64_t id) {
  if (parts_.size() == 1) return *parts_.front().connection;
  if (IsKind(id, HandleKind::kContext)) return ConnectionOf(id);
  if (IsKind(id, HandleKind::kFunction)) return FunctionConnection(id);
  uint64_t ctx = 0;
  if (StreamState stream;
      IsKind(id, HandleKind::kStream) && streams_.FindStream(id, &stream).ok()) {
    ctx = stream.ctx;
  } else if (EventState event;
             IsKind(id, HandleKind::kEvent) && streams_.FindEvent(id, &event).ok()) {
    ctx = event.ctx;
  } else if (ModuleState module;
             IsKind(id, HandleKind::kModule) && modules_.FindModule(id, &module).ok()) {
    ctx = module.ctx;
  } else if (ArrayRecord array;
             (IsKind(id, HandleKind::kArray) || IsKind(id, HandleKind::kMipmappedArray)) &&
             arrays_.Find(id, &array).ok()) {
    ctx = array.ctx;
  } else if (int device = 0;
             IsKind(id, HandleKind::kMemPool) && mem_pools_.Device(id, &device).ok()) {
    return DeviceConnection(device);
  } else {
    ctx = CurrentContextId();
  }
  return ConnectionOf(ctx);
}

Status Runtime::TransferStream(uint64_t ctx, StreamTarget* out) {
  std::lock_guard<std::mutex> lock(transfer_mu_);
  // Checked under the lock: a context is marked not live (or removed) before
  // ForgetContextResources drops its stream here, so none is left behind.
  if (!contexts_.IsLive(ctx)) {
    return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "not a live context of this process");
  }
  auto [it, added] = transfer_streams_.try_emplace(ctx, 0);
  if (added) {
    const uint64_t id = NewId(HandleKind::kStream);
    Status created = ConnectionOf(ctx).Post([&](wire::Call::Builder call) {
      auto args = call.initStreamCreate();
      args.setCtx(ctx);
      args.setStream(id);
      args.setFlags(CU_STREAM_NON_BLOCKING);
    });
    if (!created.ok()) {
      transfer_streams_.erase(it);
      return created;
    }
    it->second = id;
  }
  *out = StreamTarget{ctx, it->second};
  return Status::Ok();
}

bool Runtime::SameSession(uint64_t a, uint64_t b) {
  if (parts_.size() <= 1) return true;
  int device_a = 0, device_b = 0;
  if (!contexts_.Device(a, &device_a).ok() || !contexts_.Device(b, &device_b).ok()) return true;
  return PartOfDevice(device_a) == PartOfDevice(device_b);
}

Status Runtime::Connect(std::unique_ptr<Transport> transport, const std::string& server_name,
                        const Connection::Borrow& borrow, std::unique_ptr<Runtime>* out,
                        ConnectionOptions options) {
  std::unique_ptr<Connection> connection;
  std::vector<DeviceInfo> devices;
  uint64_t session_id = 0;
  FERRY_RETURN_IF_ERROR(OpenSession(std::move(transport), server_name, borrow, options, &connection,
                                    &devices, &session_id));
  *out = std::make_unique<Runtime>(std::move(connection), std::move(devices), session_id);
  return Status::Ok();
}

Status Runtime::ConnectParts(std::vector<std::unique_ptr<Transport>> transports,
                             const std::vector<std::string>& servers,
                             const Connection::Borrow& borrow, std::unique_ptr<Runtime>* out) {
  if (transports.empty() || transports.size() != servers.size()) {
    return Status::InvalidArgument("one server name per transport, at least one");
  }
  std::unique_ptr<Runtime> runtime(new Runtime);
  for (size_t i = 0; i < transports.size(); ++i) {
    SessionPart part;
    std::vector<DeviceInfo> devices;
    part.server = servers[i];
    FERRY_RETURN_IF_ERROR(OpenSession(std::move(transports[i]), servers[i], borrow, {},
                                      &part.connection, &devices, &part.session_id));
    runtime->AddPart(std::move(part), std::move(devices));
  }
  runtime->init_status_ = Status::Ok();
  runtime->initialized_.store(true, std::memory_order_release);
  *out = std::move(runtime);
  return Status::Ok();
}

Runtime::ThreadState& Runtime::ThisThread() {
  // One lookup per call: the last instance used on this thread is kept at
  // hand (a process has one, unless it is a test). Map nodes do not move.
  struct States {
    uint64_t last_instance = 0;
    ThreadState* last = nullptr;
    std::unordered_map<uint64_t, ThreadState> by_instance;
  };
  thread_local States states;
  if (states.last_instance != instance_) {
    states.last = &states.by_instance[instance_];
    states.last_instance = instance_;
  }
  return *states.last;
}

void Runtime::RunContextLocalStorageDestructors(uint64_t ctx) {
  context_local_storage_.RunDestructors(ctx);
}

Status Runtime::Init(unsigned flags) {
  if (flags != 0) return Status::InvalidArgument("cuInit flags must be 0");
  std::call_once(init_once_, [this] {
    if (!parts_.empty()) return;  // built on an open session
    SetLogProgram(std::string(program_invocation_short_name) + " (ferry)");
    // FERRY_LOG_LEVEL=debug|info|warning|error (default info); anything
    // else is reported once and ignored.
    if (const char* level = std::getenv("FERRY_LOG_LEVEL"); level != nullptr && *level != '\0') {
      LogLevel parsed = LogLevel::kInfo;
      if (ParseLogLevel(level, &parsed)) {
        SetMinLogLevel(parsed);
      } else {
        FERRY_LOG(kWarning) << "FERRY_LOG_LEVEL=" << level
                            << " is not debug, info, warning or error; ignored";
      }
    }
    init_status_ = ConnectFromEnvironment();
    if (!init_status_.ok()) {
      FERRY_LOG(kError) << init_status_.message();
    }
    initialized_.store(true, std::memory_order_release);
  });
  return init_status_;
}

Status Runtime::ConnectFromEnvironment() {
  const char* env = std::getenv("FERRY_SERVER");
  const std::string server_list = env != nullptr && *env != '\0' ? env : kDefaultServer;
  int timeout_ms = kDefaultConnectTimeoutMs;
  if (const char* t = std::getenv("FERRY_CONNECT_TIMEOUT_MS"); t != nullptr && std::atoi(t) > 0) {
    timeout_ms = std::atoi(t);
  }
  Connection::Borrow borrow;
  FERRY_RETURN_IF_ERROR(BorrowFromEnvironment(&borrow));
  FERRY_RETURN_IF_ERROR(TokenFromEnvironment(&borrow.token));
  ConnectionOptions options;
  FERRY_RETURN_IF_ERROR(CallTimeoutFromEnvironment(&options.call_timeout));
  FERRY_RETURN_IF_ERROR(CarrierFromEnvironment(&options));
  FERRY_RETURN_IF_ERROR(BusyPollFromEnvironment());
  std::vector<std::string> servers;
  for (size_t start = 0; start <= server_list.size();) {
    size_t end = server_list.find(',', start);
    if (end == std::string::npos) end = server_list.size();
    std::string part = server_list.substr(start, end - start);
    part.erase(0, part.find_first_not_of(" \t"));
    part.erase(part.find_last_not_of(" \t") + 1);
    if (!part.empty()) servers.push_back(std::move(part));
    start = end + 1;
  }
  if (servers.empty()) return Status::InvalidArgument("FERRY_SERVER names no server");
  // Servers that cannot be reached are passed over, in order; a server that
  // answers — with devices, a refusal, or where to go instead — decides. A
  // server it is sent to that cannot be reached sends it back to the one
  // that sent it, saying it may not be sent on again (it waits or is
  // refused there).
  std::string unreachable;
  for (const std::string& first : servers) {
    std::string server = first;
    std::string sender;  // the server that sent us to `server`
    Connection::Borrow attempt = borrow;
    for (;;) {
      SessionPart part;
      std::vector<DeviceInfo> devices;
      Connection::Redirect redirect;
      Status status = OpenSessionAt(server, attempt, options, timeout_ms, &part, &devices,
                                    attempt.redirects < kMaxRedirects ? &redirect : nullptr);
      if (!status.ok() && status.code() != StatusCode::kDisconnected) return status;
      if (!status.ok() && !sender.empty()) {
        FERRY_LOG(kWarning) << "cannot reach ferryd at " << server << ", where " << sender
                            << " sent this program (" << status.message() << "); back to "
                            << sender;
        server = sender;
        sender.clear();
        attempt.redirects = kMaxRedirects;
        continue;
      }
      if (!status.ok()) {
        unreachable += (unreachable.empty() ? "" : "; ") + server + ": " + status.message();
        break;  // the next server of the list
      }
      if (!redirect.parts.empty()) {
        std::string split;
        uint64_t total = 0;
        for (const Connection::BorrowPart& p : redirect.parts) {
          split += (split.empty() ? "" : ", ") + p.address + " (" + std::to_string(p.gpus) + ")";
          total += p.gpus;
        }
        if (total != attempt.gpus) {
          return Status::Malformed("ferryd at " + server + " splits a borrow of " +
                                   std::to_string(attempt.gpus) + " devices into parts of " +
                                   std::to_string(total) + ": " + split);
        }
        FERRY_LOG(kInfo) << "ferryd at " << server << ": no one server has room for "
                         << attempt.gpus << " devices; the borrow spans " << split;
        return OpenParts(redirect.parts, attempt,
                         redirect.pool.empty() ? attempt.pool : redirect.pool,
                         redirect.queue_ticket, options, timeout_ms);
      }
      if (redirect.address.empty()) {
        part.server = server;
        AddPart(std::move(part), std::move(devices));
        return Status::Ok();
      }
      FERRY_LOG(kInfo) << "ferryd at " << server << " has no room and sends this program to "
                       << redirect.address << " (a server of the same cluster pool)";
      sender = server;
      server = redirect.address;
      ++attempt.redirects;
      if (!redirect.pool.empty()) attempt.pool = redirect.pool;
      attempt.queue_ticket = redirect.queue_ticket;
    }
  }
  return Status::Disconnected("cannot reach ferryd (FERRY_SERVER=" + server_list +
                              "): " + unreachable);
}

Status Runtime::OpenSessionAt(const std::string& server, const Connection::Borrow& borrow,
                              ConnectionOptions options, int timeout_ms, SessionPart* part,
                              std::vector<DeviceInfo>* devices, Connection::Redirect* redirect) {
  const std::optional<TlsClientConfig> tls = TlsClientConfigFromEnvironment(server);
  FERRY_RETURN_IF_ERROR(CheckTokenIsProtected(
      server, borrow.token, tls.has_value(), PlainTokenAllowedByEnvironment(),
      "set FERRY_TLS_CA to use TLS, or FERRY_ALLOW_PLAIN_TOKEN=1 on a network you trust"));
  std::unique_ptr<Transport> transport;
  FERRY_RETURN_IF_ERROR(
      ConnectTransportWithTls(server, std::chrono::milliseconds(timeout_ms), tls, &transport));
  if (server.starts_with(kRdmaScheme)) options.carrier = ConnectionOptions::Carrier::kRdma;
  // ferryd may move the session to another server: reached as this one is.
  options.connect_to = [timeout_ms, token = borrow.token](const std::string& address,
                                                          std::unique_ptr<Transport>* out) {
    const std::optional<TlsClientConfig> tls = TlsClientConfigFromEnvironment(address);
    FERRY_RETURN_IF_ERROR(CheckTokenIsProtected(
        address, token, tls.has_value(), PlainTokenAllowedByEnvironment(),
        "set FERRY_TLS_CA to use TLS, or FERRY_ALLOW_PLAIN_TOKEN=1 on a network you trust"));
    return ConnectTransportWithTls(address, std::chrono::milliseconds(timeout_ms), tls, out);
  };
  part->server = server;
  return OpenSession(std::move(transport), server, borrow, options, &part->connection, devices,
                     &part->session_id, redirect);
}

Status Runtime::OpenParts(const std::vector<Connection::BorrowPart>& parts,
                          Connection::Borrow borrow, const std::string& pool,
                          const std::string& ticket, ConnectionOptions options, int timeout_ms) {
  borrow.pool = pool;
  borrow.queue_ticket = ticket;
  borrow.redirects = kMaxRedirects;  // a part is not sent on again
  for (size_t i = 0; i < parts.size(); ++i) {
    borrow.gpus = parts[i].gpus;
    borrow.ticket_stays = i + 1 < parts.size();
    SessionPart part;
    std::vector<DeviceInfo> devices;
    Status status = OpenSessionAt(parts[i].address, borrow, options, timeout_ms, &part, &devices,
                                  /*redirect=*/nullptr);
    if (status.ok() && devices.size() != parts[i].gpus) {
      status = Status::Malformed("ferryd at " + parts[i].address + " gave " +
                                 std::to_string(devices.size()) + " device(s) for a part of " +
                                 std::to_string(parts[i].gpus));
    }
    if (!status.ok()) {
      // The sessions opened so far end here: their slices go back at once.
      for (SessionPart& opened : parts_) opened.connection.reset();
      parts_.clear();
      devices_.clear();
      return status.WithContext(
          "borrowing part " + std::to_string(i + 1) + " of " + std::to_string(parts.size()) + " (" +
          std::to_string(parts[i].gpus) + " device(s) at " + parts[i].address + ")");
    }
    AddPart(std::move(part), std::move(devices));
  }
  std::string summary;
  for (const SessionPart& part : parts_) {
    summary += (summary.empty() ? "" : ", ") + std::string("devices ") +
               std::to_string(part.first_device) + "-" +
               std::to_string(part.first_device + part.device_count - 1) + " at " + part.server;
  }
  FERRY_LOG(kInfo) << "this program's devices span " << parts_.size() << " servers: " << summary
                   << "; copies between them pass through this host";
  return Status::Ok();
}

Status Runtime::OpenSession(std::unique_ptr<Transport> transport, const std::string& server,
                            const Connection::Borrow& borrow, ConnectionOptions options,
                            std::unique_ptr<Connection>* connection,
                            std::vector<DeviceInfo>* devices, uint64_t* session_id,
                            Connection::Redirect* redirect) {
  std::unique_ptr<capnp::MessageReader> hello;
  kj::Array<capnp::word> hello_words;
  Status status = Connection::Open(std::move(transport), server, borrow, connection, &hello,
                                   &hello_words, options, redirect);
  if (status.ok() && redirect != nullptr &&
      (!redirect->address.empty() || !redirect->parts.empty())) {
    return status;  // sent on: no session here
  }
  if (!status.ok()) {
    if (status.code() != StatusCode::kDisconnected && status.code() != StatusCode::kMalformed) {
      return status;  // the server answered: a full pool, an unknown pool
    }
    return Status::Disconnected("cannot start a session with ferryd at " + server + ": " +
                                status.message());
  }
  auto reply = hello->getRoot<wire::HelloReply>();
  for (auto d : reply.getDevices()) {
    DeviceInfo info;
    info.name = d.getName().cStr();
    auto uuid = d.getUuid();
    for (size_t i = 0; i < info.uuid.size() && i < uuid.size(); ++i) info.uuid[i] = uuid[i];
    info.total_memory = d.getTotalMemory();
    info.pci_domain = d.getPciDomain();
    info.pci_bus = d.getPciBus();
    info.pci_device = d.getPciDevice();
    for (int32_t a : d.getAttributes()) info.attributes.push_back(a);
    devices->push_back(std::move(info));
  }
  *session_id = reply.getSessionId();
  FERRY_LOG(kDebug) << "session " << reply.getSessionId() << " with ferryd at " << server << " ("
                    << reply.getBackend().cStr() << " backend, " << devices->size()
                    << " device(s), busy-poll " << BusyPollWindow().count() << " us)";
  return Status::Ok();
}

Status Runtime::Ready() {
  if (!initialized_.load(std::memory_order_acquire)) {
    return Status::Cuda(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
  }
  if (!init_status_.ok()) return init_status_;
  // One lost server fails every call, as a lost single server does: the
  // program cannot go on with a device gone.
  for (SessionPart& part : parts_) FERRY_RETURN_IF_ERROR(part.connection->health());
  return Status::Ok();
}

Status Runtime::CheckDevice(int device) const {
  if (device < 0 || device >= static_cast<int>(devices_.size())) {
    return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "no device " + std::to_string(device));
  }
  return Status::Ok();
}

// --- contexts -------------------------------------------------------------------

uint64_t Runtime::CurrentContextId() {
  const std::vector<uint64_t>& stack = ThisThread().context_stack;
  return stack.empty() ? 0 : stack.back();
}

Status Runtime::CurrentContext(uint64_t* ctx) {
  FERRY_RETURN_IF_ERROR(Ready());
  const uint64_t current = CurrentContextId();
  if (current == 0) return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "no current context");
  FERRY_RETURN_IF_ERROR(EnsureLive(current));
  *ctx = current;
  return Status::Ok();
}

Status Runtime::EnsureLive(uint64_t ctx) {
  std::lock_guard<std::mutex> create_lock(create_mu_);
  ContextState state;
  FERRY_RETURN_IF_ERROR(contexts_.Find(ctx, &state));
  if (state.live) return Status::Ok();
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(DeviceConnection(state.device).Call([&](wire::Call::Builder call) {
    auto args = call.initCtxCreate();
    args.setCtx(ctx);
    args.setDevice(ServerOrdinal(state.device));
    args.setFlags(state.flags);
  }));
  // A context is destroyed by this process's own calls only, and cuCtxDestroy
  // of a context being created is a program's race; either way the server
  // hears of it after this creation.
  contexts_.MarkLive(ctx);
  LoadLibrariesEagerly(ctx);
  return Status::Ok();
}

void Runtime::SetCurrent(uint64_t ctx) {
  std::vector<uint64_t>& stack = ThisThread().context_stack;
  if (stack.empty()) {
    if (ctx != 0) stack.push_back(ctx);
  } else if (ctx == 0) {
    stack.pop_back();
  } else {
    stack.back() = ctx;
  }
}

void Runtime::PushCurrent(uint64_t ctx) { ThisThread().context_stack.push_back(ctx); }

uint64_t Runtime::PopCurrent() {
  std::vector<uint64_t>& stack = ThisThread().context_stack;
  if (stack.empty()) return 0;
  uint64_t ctx = stack.back();
  stack.pop_back();
  return ctx;
}

Status Runtime::RetainPrimary(int device, uint64_t* ctx) {
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(CheckDevice(device));
  const uint64_t id = contexts_.PrimaryId(device);
  FERRY_RETURN_IF_ERROR(EnsureLive(id));
  contexts_.RetainPrimary(device);
  *ctx = id;
  return Status::Ok();
}

Status Runtime::ReleasePrimary(int device) {
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(CheckDevice(device));
  bool last = false;
  FERRY_RETURN_IF_ERROR(contexts_.ReleasePrimary(device, &last));
  if (!last) return Status::Ok();
  return ResetPrimary(device).WithContext("releasing the primary context of device " +
                                          std::to_string(device));
}

Status Runtime::ResetPrimary(int device) {
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(CheckDevice(device));
  const uint64_t id = contexts_.PrimaryId(device);
  if (!contexts_.IsLive(id)) return Status::Ok();
  // Before the context goes: the runtime's destructors free what it holds
  // in it, through the driver (so under no registry's lock).
  RunContextLocalStorageDestructors(id);
  if (!contexts_.MarkNotLive(id)) return Status::Ok();  // reset meanwhile by another thread
  ForgetContextResources(id);
  ThisThread().per_thread_streams.erase(id);
  return DeviceConnection(device).Post(
      [&](wire::Call::Builder call) { call.initCtxDestroy().setCtx(id); });
}

Status Runtime::SetPrimaryFlags(int device, unsigned flags) {
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(CheckDevice(device));
  contexts_.SetPrimaryFlags(device, flags);
  return Status::Ok();
}

void Runtime::PrimaryState(int device, unsigned* flags, int* active) {
  contexts_.PrimaryState(device, flags, active);
}

Status Runtime::CreateContext(int device, unsigned flags, uint64_t* ctx) {
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(CheckDevice(device));
  const uint64_t id = contexts_.Add(device, flags);
  Status status = EnsureLive(id);
  if (!status.ok()) {
    contexts_.Erase(id);
    return status;
  }
  PushCurrent(id);
  *ctx = id;
  return Status::Ok();
}

Status Runtime::DestroyContext(uint64_t ctx) {
  FERRY_RETURN_IF_ERROR(Ready());
  // Checked before the destructors run, so a refused call changes nothing.
  FERRY_RETURN_IF_ERROR(contexts_.CheckDestroyable(ctx));
  int device = 0;
  FERRY_RETURN_IF_ERROR(contexts_.Device(ctx, &device));
  // Before the context goes, and under no registry's lock: the runtime's
  // destructors free what it holds in it through the driver.
  RunContextLocalStorageDestructors(ctx);
  bool live = false;
  FERRY_RETURN_IF_ERROR(contexts_.Remove(ctx, &live));  // destroyed meanwhile by another thread
  ForgetContextResources(ctx);
  ThreadState& thread = ThisThread();
  thread.per_thread_streams.erase(ctx);
  // The calling thread stops using it; other threads find it gone.
  std::erase(thread.context_stack, ctx);
  if (!live) return Status::Ok();
  return DeviceConnection(device).Post(
      [&](wire::Call::Builder call) { call.initCtxDestroy().setCtx(ctx); });
}

void Runtime::ForgetContextResources(uint64_t ctx) {
  {
    std::lock_guard<std::mutex> lock(transfer_mu_);
    transfer_streams_.erase(ctx);  // the server's goes with the context
  }
  streams_.ForgetContext(ctx);
  modules_.ForgetContext(ctx);
  allocations_.ForgetContext(ctx);
  graphs_.ForgetContext(ctx);
}

// --- streams and events -------------------------------------------------------------

Status Runtime::ResolveStream(CUstream stream, bool per_thread_default, StreamTarget* target) {
  const uint64_t id = HandleId(stream);
  const bool legacy = id == HandleId(CU_STREAM_LEGACY) || (id == 0 && !per_thread_default);
  const bool per_thread = id == HandleId(CU_STREAM_PER_THREAD) || (id == 0 && per_thread_default);
  if (legacy || per_thread) {
    FERRY_RETURN_IF_ERROR(CurrentContext(&target->ctx));
    target->stream = 0;
    if (legacy) return Status::Ok();
    // The per-thread default stream: a blocking stream of this thread's own,
    // created on first use.
    std::unordered_map<uint64_t, uint64_t>& per_thread_streams = ThisThread().per_thread_streams;
    auto it = per_thread_streams.find(target->ctx);
    if (it != per_thread_streams.end() && streams_.HasStream(it->second)) {
      target->stream = it->second;
      return Status::Ok();
    }
    uint64_t created = 0;
    FERRY_RETURN_IF_ERROR(streams_.AddStream(target->ctx, CU_STREAM_DEFAULT, 0, &created));
    FERRY_RETURN_IF_ERROR(ConnectionOf(target->ctx).Post([&](wire::Call::Builder call) {
      auto args = call.initStreamCreate();
      args.setCtx(target->ctx);
      args.setStream(created);
      args.setFlags(CU_STREAM_DEFAULT);
    }));
    per_thread_streams[target->ctx] = created;
    target->stream = created;
    return Status::Ok();
  }
  FERRY_RETURN_IF_ERROR(Ready());
  StreamState state;
  FERRY_RETURN_IF_ERROR(streams_.FindStream(id, &state));
  target->ctx = state.ctx;
  target->stream = id;
  return Status::Ok();
}

// --- modules and functions ------------------------------------------------------------

Status Runtime::ModuleFunction(uint64_t module, const std::string& name, uint64_t* id) {
  std::lock_guard<std::mutex> registration(registration_mu_);
  return ModuleFunctionLocked(module, name, id);
}

Status Runtime::ModuleFunctionLocked(uint64_t module, const std::string& name, uint64_t* id) {
  uint64_t ctx = 0;  // the module's context says which server makes the function
  if (parts_.size() > 1) {
    ModuleState state;
    FERRY_RETURN_IF_ERROR(modules_.FindModule(module, &state));
    ctx = state.ctx;
  }
  bool created = false;
  FERRY_RETURN_IF_ERROR(modules_.AddFunction(module, name, id, &created));
  if (!created) return Status::Ok();
  Status posted = ConnectionOf(ctx).Post([&](wire::Call::Builder call) {
    auto args = call.initModuleGetFunction();
    args.setModule(module);
    args.setFunction(*id);
    args.setName(name);
  });
  if (!posted.ok()) modules_.EraseFunction(*id);
  return posted;
}

Status Runtime::ResolveFunction(uint64_t handle, uint64_t ctx, uint64_t* id, FunctionState* out) {
  std::shared_ptr<const FunctionState> function;
  FERRY_RETURN_IF_ERROR(ResolveFunction(handle, ctx, id, &function));
  *out = *function;
  return Status::Ok();
}

Status Runtime::ResolveFunction(uint64_t handle, uint64_t ctx, uint64_t* id,
                                std::shared_ptr<const FunctionState>* out) {
  FERRY_RETURN_IF_ERROR(Ready());
  if (handle == 0) return Status::InvalidHandle("function is NULL");
  if (IsKind(handle, HandleKind::kKernel)) {
    if (ctx == 0) FERRY_RETURN_IF_ERROR(CurrentContext(&ctx));
    FERRY_RETURN_IF_ERROR(KernelFunction(handle, ctx, &handle));
  }
  *id = handle;
  return modules_.FindFunction(handle, out);
}

Status Runtime::AllocDevice(uint64_t ctx, uint64_t bytes, uint64_t* dptr) {
  // An allocation that clashes with another server's memory (RecordAllocation)
  // is kept while the server is asked again, so it hands out another range,
  // and given back after.
  constexpr int kAttempts = 4;
  std::vector<uint64_t> clashing;
  Status status;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    uint64_t got = 0;
    status = ConnectionOf(ctx).Call(
        [&](wire::Call::Builder call) {
          auto args = call.initMemAlloc();
          args.setCtx(ctx);
          args.setBytes(bytes);
        },
        {}, {},
        [&](wire::Reply::Reader reply) {
          got = reply.getMemAlloc().getDptr();
          return Status::Ok();
        });
    if (!status.ok()) break;
    status = RecordAllocation(ctx, got, bytes);
    if (status.ok()) {
      *dptr = got;
      break;
    }
    clashing.push_back(got);
  }
  for (uint64_t given_back : clashing) {
    (void)ConnectionOf(ctx).Post(
        [&](wire::Call::Builder call) { call.initMemFree().setDptr(given_back); });
  }
  return status;
}

Status Runtime::RecordAllocation(uint64_t ctx, uint64_t dptr, uint64_t bytes, bool global) {
  if (parts_.size() <= 1) {
    allocations_.AddDevice(dptr, bytes, ctx, global);
    return Status::Ok();
  }
  if (allocations_.AddDeviceUnlessOverlapping(
          dptr, bytes, ctx, [&](uint64_t other) { return !SameSession(other, ctx); }, global)) {
    return Status::Ok();
  }
  return Status::Cuda(CUDA_ERROR_OUT_OF_MEMORY,
                      "device addresses from the server of this context overlap memory of "
                      "another server's device (a program whose devices span servers has one "
                      "address space)");
}

Status Runtime::ModuleGlobal(uint64_t module, const char* name, uint64_t* dptr, uint64_t* bytes) {
  if (name == nullptr) return Status::InvalidArgument("name is NULL");
  ModuleState state;
  FERRY_RETURN_IF_ERROR(modules_.FindModule(module, &state));
  uint64_t address = 0, size = 0;
  FERRY_RETURN_IF_ERROR(ConnectionOf(state.ctx).Call(
      [&](wire::Call::Builder call) {
        auto args = call.initModuleGetGlobal();
        args.setModule(module);
        args.setName(name);
      },
      {}, {},
      [&](wire::Reply::Reader reply) {
        address = reply.getModuleGetGlobal().getDptr();
        size = reply.getModuleGetGlobal().getBytes();
        return Status::Ok();
      }));
  if (size > 0 && !allocations_.FindDevice(address, nullptr, nullptr)) {
    FERRY_RETURN_IF_ERROR(RecordAllocation(state.ctx, address, size, /*global=*/true));
  }
  *dptr = address;
  *bytes = size;
  return Status::Ok();
}

// --- libraries and kernels ---------------------------------------------------------

namespace {

// CUDA_MODULE_LOADING=EAGER, as cuModuleGetLoadingMode reports it.
bool EagerLoading() {
  const char* setting = std::getenv("CUDA_MODULE_LOADING");
  return setting != nullptr && std::strcmp(setting, "EAGER") == 0;
}

}  // namespace

Status Runtime::LoadLibrary(std::span<const uint8_t> image, uint64_t* id) {
  FERRY_RETURN_IF_ERROR(Ready());
  const uint64_t library = NewId(HandleKind::kLibrary);
  ImageDescription description;
  // A library belongs to no context: every server of the program's devices
  // loads it (the image travels once to each, by its hash).
  for (SessionPart& part : parts_) {
    description = {};
    FERRY_RETURN_IF_ERROR(LoadImage(
        *part.connection, image,
        [&](wire::Call::Builder call) {
          auto args = call.initLibraryLoad();
          args.setLibrary(library);
          return args;
        },
        &description));
  }
  LibraryState state;
  state.kernel_names = std::move(description.kernel_names);
  state.kernels = std::move(description.kernels);
  state.globals = std::move(description.globals);
  FERRY_RETURN_IF_ERROR(AddLibrary(library, std::move(state)));
  *id = library;
  return Status::Ok();
}

Status Runtime::AddLibrary(uint64_t id, LibraryState library) {
  modules_.AddLibrary(id, std::move(library));
  if (!EagerLoading()) return Status::Ok();
  for (uint64_t ctx : contexts_.LiveContexts()) {
    uint64_t module = 0;
    FERRY_RETURN_IF_ERROR(LibraryModule(id, ctx, &module));
  }
  return Status::Ok();
}

void Runtime::LoadLibrariesEagerly(uint64_t ctx) {
  if (!EagerLoading()) return;
  for (uint64_t id : modules_.LibraryIds()) {
    uint64_t module = 0;
    // A failure latches on the server and surfaces at the next call that
    // waits, as the driver's eager loading reports it at context creation.
    (void)LibraryModule(id, ctx, &module);
  }
}

Status Runtime::UnloadLibrary(uint64_t id) {
  std::lock_guard<std::mutex> registration(registration_mu_);
  FERRY_RETURN_IF_ERROR(modules_.RemoveLibrary(id));
  for (SessionPart& part : parts_) {
    FERRY_RETURN_IF_ERROR(part.connection->Post(
        [&](wire::Call::Builder call) { call.initLibraryUnload().setLibrary(id); }));
  }
  return Status::Ok();
}

Status Runtime::LibraryModule(uint64_t library, uint64_t ctx, uint64_t* module) {
  std::lock_guard<std::mutex> registration(registration_mu_);
  return LibraryModuleLocked(library, ctx, module);
}

Status Runtime::LibraryModuleLocked(uint64_t library, uint64_t ctx, uint64_t* module) {
  ModuleState state;
  FERRY_RETURN_IF_ERROR(modules_.LibraryModuleIn(library, ctx, module, &state));
  if (*module != 0) return Status::Ok();
  if (!contexts_.IsLive(ctx)) {
    return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "not a live context of this process");
  }
  const uint64_t id = NewId(HandleKind::kModule);
  FERRY_RETURN_IF_ERROR(ConnectionOf(ctx).Post([&](wire::Call::Builder call) {
    auto args = call.initLibraryLoadModule();
    args.setLibrary(library);
    args.setCtx(ctx);
    args.setModule(id);
  }));
  // registration_mu_ keeps the library loaded, but the context may have been
  // destroyed since the check (with its modules): recorded only if it is
  // still live, checked under the module registry's lock.
  FERRY_RETURN_IF_ERROR(modules_.AddLibraryModule(library, id, std::move(state),
                                                  [&] { return contexts_.IsLive(ctx); }));
  *module = id;
  return Status::Ok();
}

Status Runtime::KernelFunction(uint64_t kernel, uint64_t ctx, uint64_t* function) {
  std::lock_guard<std::mutex> registration(registration_mu_);
  return KernelFunctionLocked(kernel, ctx, function);
}

Status Runtime::KernelFunctionLocked(uint64_t kernel, uint64_t ctx, uint64_t* function) {
  KernelState state;
  FERRY_RETURN_IF_ERROR(modules_.KernelFunctionIn(kernel, ctx, function, &state));
  if (*function != 0) return Status::Ok();
  int device = 0;
  FERRY_RETURN_IF_ERROR(contexts_.Device(ctx, &device));
  std::map<int, int> attributes;
  std::optional<int> cache_config;
  if (auto a = state.attributes.find(device); a != state.attributes.end()) attributes = a->second;
  if (auto c = state.cache_configs.find(device); c != state.cache_configs.end()) {
    cache_config = c->second;
  }
  uint64_t module = 0;
  FERRY_RETURN_IF_ERROR(LibraryModuleLocked(state.library, ctx, &module));
  uint64_t id = 0;
  FERRY_RETURN_IF_ERROR(ModuleFunctionLocked(module, state.name, &id));
  for (const auto& [attribute, value] : attributes) {
    FERRY_RETURN_IF_ERROR(ConnectionOf(ctx).Post([&](wire::Call::Builder call) {
      auto args = call.initFuncSetAttribute();
      args.setFunction(id);
      args.setAttribute(attribute);
      args.setValue(value);
    }));
  }
  if (cache_config.has_value()) {
    FERRY_RETURN_IF_ERROR(ConnectionOf(ctx).Post([&](wire::Call::Builder call) {
      auto args = call.initFuncSetCacheConfig();
      args.setFunction(id);
      args.setConfig(*cache_config);
    }));
  }
  FERRY_RETURN_IF_ERROR(modules_.SetKernelFunction(kernel, ctx, id));
  *function = id;
  return Status::Ok();
}

Status Runtime::ContextForDevice(int device, uint64_t* ctx) {
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(CheckDevice(device));
  const uint64_t current = CurrentContextId();
  int current_device = -1;
  if (current != 0 && contexts_.Device(current, &current_device).ok() && current_device == device) {
    FERRY_RETURN_IF_ERROR(EnsureLive(current));
    *ctx = current;
    return Status::Ok();
  }
  // The primary context is live on the server from here on; it is neither
  // retained nor made current, so the program observes nothing of it.
  const uint64_t primary = contexts_.PrimaryId(device);
  FERRY_RETURN_IF_ERROR(EnsureLive(primary));
  *ctx = primary;
  return Status::Ok();
}

std::vector<uint64_t> Runtime::FunctionsOnDevice(
    const std::vector<std::pair<uint64_t, uint64_t>>& functions, int device, uint64_t skip) {
  std::vector<uint64_t> on_device;
  for (const auto& [ctx, function] : functions) {
    int ctx_device = -1;
    if (function != skip && contexts_.Device(ctx, &ctx_device).ok() && ctx_device == device) {
      on_device.push_back(function);
    }
  }
  return on_device;
}

Status Runtime::SetKernelAttribute(uint64_t kernel, int device, int attribute, int value) {
  uint64_t reference = 0;
  FERRY_RETURN_IF_ERROR(ContextForDevice(device, &reference));
  std::lock_guard<std::mutex> registration(registration_mu_);
  uint64_t function = 0;
  FERRY_RETURN_IF_ERROR(KernelFunctionLocked(kernel, reference, &function));
  FERRY_RETURN_IF_ERROR(ConnectionOf(reference).Call([&](wire::Call::Builder call) {
    auto args = call.initFuncSetAttribute();
    args.setFunction(function);
    args.setAttribute(attribute);
    args.setValue(value);
  }));
  std::vector<std::pair<uint64_t, uint64_t>> functions;
  FERRY_RETURN_IF_ERROR(modules_.SetKernelAttribute(kernel, device, attribute, value, &functions));
  for (uint64_t f : FunctionsOnDevice(functions, device, /*skip=*/function)) {
    FERRY_RETURN_IF_ERROR(ConnectionOf(reference).Post([&](wire::Call::Builder call) {
      auto args = call.initFuncSetAttribute();
      args.setFunction(f);
      args.setAttribute(attribute);
      args.setValue(value);
    }));
  }
  return Status::Ok();
}

Status Runtime::SetKernelCacheConfig(uint64_t kernel, int device, int config) {
  if (config < CU_FUNC_CACHE_PREFER_NONE || config > CU_FUNC_CACHE_PREFER_EQUAL) {
    return Status::InvalidArgument("bad cache config");
  }
  uint64_t reference = 0;
  FERRY_RETURN_IF_ERROR(ContextForDevice(device, &reference));
  std::lock_guard<std::mutex> registration(registration_mu_);
  uint64_t function = 0;
  FERRY_RETURN_IF_ERROR(KernelFunctionLocked(kernel, reference, &function));
  std::vector<std::pair<uint64_t, uint64_t>> functions;
  FERRY_RETURN_IF_ERROR(modules_.SetKernelCacheConfig(kernel, device, config, &functions));
  for (uint64_t f : FunctionsOnDevice(functions, device, /*skip=*/0)) {
    FERRY_RETURN_IF_ERROR(ConnectionOf(reference).Post([&](wire::Call::Builder call) {
      auto args = call.initFuncSetCacheConfig();
      args.setFunction(f);
      args.setConfig(config);
    }));
  }
  return Status::Ok();
}

// --- memory -------------------------------------------------------------------------

Status Runtime::AfterSynchronize(uint64_t ctx, uint64_t seq) {
  return ConnectionOf(ctx).WaitForEarlierCopies(seq);
}

Status Runtime::SynchronizeStream(const StreamTarget& target) {
  uint64_t seq = 0;
  FERRY_RETURN_IF_ERROR(ConnectionOf(target.ctx)
                            .Call(
                                [&](wire::Call::Builder call) {
                                  SetStreamTarget(call.initStreamSynchronize(), target);
                                },
                                {}, {}, nullptr, &seq));
  return AfterSynchronize(target.ctx, seq);
}

Status Runtime::SynchronizeContext(uint64_t ctx) {
  uint64_t seq = 0;
  FERRY_RETURN_IF_ERROR(ConnectionOf(ctx).Call(
      [&](wire::Call::Builder call) { call.initCtxSynchronize().setCtx(ctx); }, {}, {}, nullptr,
      &seq));
  return AfterSynchronize(ctx, seq);
}

Status Runtime::AfterQuery(StreamKey stream, uint64_t seq) {
  return ConnectionOf(stream.ctx).WaitForEarlierCopiesOn(stream, seq);
}

}  // namespace ferry::client

namespace ferry::client {

int UnsupportedCall(const char* name, const char* reason) {
  return static_cast<int>(Unsupported(name, reason));
}

}  // namespace ferry::client
