#include "client/runtime.h"

#include <capnp/serialize.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>

#include "client/cuda_result.h"
#include "client/unsupported.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/units.h"

namespace ferry::client {

Status ParamInfo(const KernelInfo& kernel, size_t index, size_t* offset, size_t* size) {
  if (index >= kernel.params.size()) return Status::InvalidArgument("parameter index out of range");
  if (offset != nullptr) *offset = kernel.params[index].offset;
  if (size != nullptr) *size = kernel.params[index].size;
  return Status::Ok();
}
namespace {

constexpr const char* kDefaultServer = "127.0.0.1:7070";
constexpr int kDefaultConnectTimeoutMs = 3000;

// The calling thread's context stack; the back is the current context.
thread_local std::vector<uint64_t> tls_context_stack;
// The calling thread's per-thread default stream, per context.
thread_local std::unordered_map<uint64_t, uint64_t> tls_per_thread_streams;

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

Status Runtime::Init(unsigned flags) {
  if (flags != 0) return Status::InvalidArgument("cuInit flags must be 0");
  std::call_once(init_once_, [this] {
    SetLogProgram(std::string(program_invocation_short_name) + " (ferry)");
    // FERRY_LOG_LEVEL=debug|info|warning|error (default info); anything
    // else is reported once and ignored.
    if (const char* level = std::getenv("FERRY_LOG_LEVEL"); level != nullptr && *level != '\0') {
      const std::string v = level;
      if (v == "debug")
        SetMinLogLevel(LogLevel::kDebug);
      else if (v == "info")
        SetMinLogLevel(LogLevel::kInfo);
      else if (v == "warning")
        SetMinLogLevel(LogLevel::kWarning);
      else if (v == "error")
        SetMinLogLevel(LogLevel::kError);
      else
        FERRY_LOG(kWarning) << "FERRY_LOG_LEVEL=" << v
                            << " is not debug, info, warning or error; ignored";
    }
    init_status_ = Connect();
    if (!init_status_.ok()) {
      FERRY_LOG(kError) << init_status_.message();
    }
    initialized_.store(true, std::memory_order_release);
  });
  return init_status_;
}

Status Runtime::Connect() {
  const char* env = std::getenv("FERRY_SERVER");
  const std::string server = env != nullptr && *env != '\0' ? env : kDefaultServer;
  int timeout_ms = kDefaultConnectTimeoutMs;
  if (const char* t = std::getenv("FERRY_CONNECT_TIMEOUT_MS"); t != nullptr && std::atoi(t) > 0) {
    timeout_ms = std::atoi(t);
  }
  Connection::Borrow borrow;
  FERRY_RETURN_IF_ERROR(BorrowFromEnvironment(&borrow));
  std::unique_ptr<Transport> transport;
  Status status = ConnectTransport(server, std::chrono::milliseconds(timeout_ms), &transport);
  if (!status.ok()) {
    return Status::Disconnected("cannot reach ferryd at " + server +
                                " (FERRY_SERVER): " + status.message());
  }
  std::unique_ptr<capnp::MessageReader> hello;
  kj::Array<capnp::word> hello_words;
  status =
      Connection::Open(std::move(transport), server, borrow, &connection_, &hello, &hello_words);
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
    devices_.push_back(std::move(info));
  }
  FERRY_LOG(kDebug) << "session " << reply.getSessionId() << " with ferryd at " << server << " ("
                    << reply.getBackend().cStr() << " backend, " << devices_.size()
                    << " device(s))";
  return Status::Ok();
}

Status Runtime::Ready() {
  if (!initialized_.load(std::memory_order_acquire)) {
    return Status::Cuda(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
  }
  if (!init_status_.ok()) return init_status_;
  return connection_->health();
}

Status Runtime::CheckDevice(int device) const {
  if (device < 0 || device >= static_cast<int>(devices_.size())) {
    return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "no device " + std::to_string(device));
  }
  return Status::Ok();
}

uint64_t Runtime::NewId(HandleKind kind) {
  return (static_cast<uint64_t>(kind) << 48) | next_serial_.fetch_add(1);
}

// --- contexts -------------------------------------------------------------------

uint64_t Runtime::CurrentContextId() {
  return tls_context_stack.empty() ? 0 : tls_context_stack.back();
}

Status Runtime::CurrentContext(uint64_t* ctx) {
  FERRY_RETURN_IF_ERROR(Ready());
  const uint64_t current = CurrentContextId();
  if (current == 0) return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "no current context");
  FERRY_RETURN_IF_ERROR(EnsureLive(current));
  *ctx = current;
  return Status::Ok();
}

Status Runtime::CheckContext(uint64_t ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  if (contexts_.count(ctx) == 0) {
    return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "not a context of this process");
  }
  return Status::Ok();
}

Status Runtime::EnsureLive(uint64_t ctx) {
  // Serialises creation so two threads never create the same primary context.
  static std::mutex create_mu;
  std::lock_guard<std::mutex> create_lock(create_mu);
  int device;
  unsigned flags;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = contexts_.find(ctx);
    if (it == contexts_.end()) {
      return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "not a context of this process");
    }
    if (it->second.live) return Status::Ok();
    device = it->second.device;
    flags = it->second.flags;
  }
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(connection_->Call([&](wire::Call::Builder call) {
    auto args = call.initCtxCreate();
    args.setCtx(ctx);
    args.setDevice(device);
    args.setFlags(flags);
  }));
  {
    std::lock_guard<std::mutex> lock(mu_);
    contexts_[ctx].live = true;
  }
  LoadLibrariesEagerly(ctx);
  return Status::Ok();
}

void Runtime::SetCurrent(uint64_t ctx) {
  if (tls_context_stack.empty()) {
    if (ctx != 0) tls_context_stack.push_back(ctx);
  } else if (ctx == 0) {
    tls_context_stack.pop_back();
  } else {
    tls_context_stack.back() = ctx;
  }
}

void Runtime::PushCurrent(uint64_t ctx) { tls_context_stack.push_back(ctx); }

uint64_t Runtime::PopCurrent() {
  if (tls_context_stack.empty()) return 0;
  uint64_t ctx = tls_context_stack.back();
  tls_context_stack.pop_back();
  return ctx;
}

uint64_t Runtime::PrimaryContextId(int device) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = primary_ids_.find(device);
  if (it != primary_ids_.end()) return it->second;
  const uint64_t id = NewId(HandleKind::kContext);
  primary_ids_[device] = id;
  ContextState state;
  state.device = device;
  state.primary = true;
  state.flags = primary_flags_[device];
  contexts_[id] = state;
  return id;
}

Status Runtime::RetainPrimary(int device, uint64_t* ctx) {
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(CheckDevice(device));
  const uint64_t id = PrimaryContextId(device);
  FERRY_RETURN_IF_ERROR(EnsureLive(id));
  std::lock_guard<std::mutex> lock(mu_);
  ++primary_refcounts_[device];
  *ctx = id;
  return Status::Ok();
}

Status Runtime::ReleasePrimary(int device) {
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(CheckDevice(device));
  {
    std::lock_guard<std::mutex> lock(mu_);
    int& count = primary_refcounts_[device];
    if (count <= 0) {
      return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "the primary context is not retained");
    }
    if (--count > 0) return Status::Ok();
  }
  return ResetPrimary(device).WithContext("releasing the primary context of device " +
                                          std::to_string(device));
}

Status Runtime::ResetPrimary(int device) {
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(CheckDevice(device));
  const uint64_t id = PrimaryContextId(device);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!contexts_[id].live) return Status::Ok();
  }
  // Before the context goes: the runtime's destructors free what it holds
  // in it, through the driver (so not under mu_).
  RunContextLocalStorageDestructors(id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!contexts_[id].live) return Status::Ok();  // reset meanwhile by another thread
    contexts_[id].live = false;
    ForgetContextResources(id);
  }
  tls_per_thread_streams.erase(id);
  return connection_->Post([&](wire::Call::Builder call) { call.initCtxDestroy().setCtx(id); });
}

Status Runtime::SetPrimaryFlags(int device, unsigned flags) {
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(CheckDevice(device));
  const uint64_t id = PrimaryContextId(device);
  std::lock_guard<std::mutex> lock(mu_);
  primary_flags_[device] = flags;
  contexts_[id].flags = flags;
  return Status::Ok();
}

void Runtime::PrimaryState(int device, unsigned* flags, int* active) {
  const uint64_t id = PrimaryContextId(device);
  std::lock_guard<std::mutex> lock(mu_);
  *flags = primary_flags_[device];
  *active = contexts_[id].live && primary_refcounts_[device] > 0 ? 1 : 0;
}

Status Runtime::CreateContext(int device, unsigned flags, uint64_t* ctx) {
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(CheckDevice(device));
  const uint64_t id = NewId(HandleKind::kContext);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ContextState state;
    state.device = device;
    state.flags = flags;
    contexts_[id] = state;
  }
  Status status = EnsureLive(id);
  if (!status.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    contexts_.erase(id);
    return status;
  }
  PushCurrent(id);
  *ctx = id;
  return Status::Ok();
}

Status Runtime::DestroyContext(uint64_t ctx) {
  FERRY_RETURN_IF_ERROR(Ready());
  // Checked before the destructors run, so a refused call changes nothing.
  auto check = [this, ctx]() -> Status {
    auto it = contexts_.find(ctx);
    if (it == contexts_.end()) {
      return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "not a context of this process");
    }
    if (it->second.primary) {
      return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT,
                          "cuCtxDestroy of a primary context (use cuDevicePrimaryCtxRelease)");
    }
    return Status::Ok();
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    FERRY_RETURN_IF_ERROR(check());
  }
  // Before the context goes, and not under mu_: the runtime's destructors
  // free what it holds in it through the driver.
  RunContextLocalStorageDestructors(ctx);
  bool live;
  {
    std::lock_guard<std::mutex> lock(mu_);
    FERRY_RETURN_IF_ERROR(check());  // destroyed meanwhile by another thread
    auto it = contexts_.find(ctx);
    live = it->second.live;
    ForgetContextResources(ctx);
    contexts_.erase(it);
  }
  tls_per_thread_streams.erase(ctx);
  // The calling thread stops using it; other threads find it gone.
  std::erase(tls_context_stack, ctx);
  if (!live) return Status::Ok();
  return connection_->Post([&](wire::Call::Builder call) { call.initCtxDestroy().setCtx(ctx); });
}

Status Runtime::ContextDevice(uint64_t ctx, int* device) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = contexts_.find(ctx);
  if (it == contexts_.end())
    return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "not a context of this process");
  *device = it->second.device;
  return Status::Ok();
}

Status Runtime::ContextFlags(uint64_t ctx, unsigned* flags) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = contexts_.find(ctx);
  if (it == contexts_.end())
    return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "not a context of this process");
  *flags = it->second.flags;
  return Status::Ok();
}

void Runtime::ForgetContextResources(uint64_t ctx) {
  // Libraries and kernels outlive contexts; only their share in `ctx` goes.
  for (auto& [id, library] : libraries_) library.modules.erase(ctx);
  for (auto& [id, kernel] : kernels_) kernel.functions.erase(ctx);
  std::erase_if(streams_, [ctx](const auto& e) { return e.second.ctx == ctx; });
  std::erase_if(events_, [ctx](const auto& e) { return e.second.ctx == ctx; });
  std::erase_if(functions_, [ctx](const auto& e) { return e.second->ctx == ctx; });
  std::erase_if(modules_, [ctx](const auto& e) { return e.second.ctx == ctx; });
  std::erase_if(device_allocations_, [ctx](const auto& e) { return e.second.ctx == ctx; });
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
    auto it = tls_per_thread_streams.find(target->ctx);
    if (it != tls_per_thread_streams.end()) {
      std::lock_guard<std::mutex> lock(mu_);
      if (streams_.count(it->second) != 0) {
        target->stream = it->second;
        return Status::Ok();
      }
    }
    uint64_t created = 0;
    FERRY_RETURN_IF_ERROR(AddStream(target->ctx, CU_STREAM_DEFAULT, 0, &created));
    FERRY_RETURN_IF_ERROR(connection_->Post([&](wire::Call::Builder call) {
      auto args = call.initStreamCreate();
      args.setCtx(target->ctx);
      args.setStream(created);
      args.setFlags(CU_STREAM_DEFAULT);
    }));
    tls_per_thread_streams[target->ctx] = created;
    target->stream = created;
    return Status::Ok();
  }
  FERRY_RETURN_IF_ERROR(Ready());
  std::lock_guard<std::mutex> lock(mu_);
  auto it = streams_.find(id);
  if (it == streams_.end()) return Status::InvalidHandle("not a stream of this process");
  target->ctx = it->second.ctx;
  target->stream = id;
  return Status::Ok();
}

Status Runtime::AddStream(uint64_t ctx, unsigned flags, int priority, uint64_t* id) {
  *id = NewId(HandleKind::kStream);
  std::lock_guard<std::mutex> lock(mu_);
  streams_[*id] = StreamState{ctx, flags, priority};
  return Status::Ok();
}

Status Runtime::RemoveStream(uint64_t id, StreamState* removed) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = streams_.find(id);
  if (it == streams_.end()) return Status::InvalidHandle("not a stream of this process");
  if (removed != nullptr) *removed = it->second;
  streams_.erase(it);
  return Status::Ok();
}

Status Runtime::FindStream(uint64_t id, StreamState* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = streams_.find(id);
  if (it == streams_.end()) return Status::InvalidHandle("not a stream of this process");
  *out = it->second;
  return Status::Ok();
}

Status Runtime::AddEvent(uint64_t ctx, unsigned flags, uint64_t* id) {
  *id = NewId(HandleKind::kEvent);
  std::lock_guard<std::mutex> lock(mu_);
  EventState state;
  state.ctx = ctx;
  state.flags = flags;
  events_[*id] = state;
  return Status::Ok();
}

Status Runtime::RemoveEvent(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (events_.erase(id) == 0) return Status::InvalidHandle("not an event of this process");
  return Status::Ok();
}

Status Runtime::FindEvent(uint64_t id, EventState* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = events_.find(id);
  if (it == events_.end()) return Status::InvalidHandle("not an event of this process");
  *out = it->second;
  return Status::Ok();
}

void Runtime::NoteEventRecord(uint64_t id, StreamKey stream, uint64_t seq) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = events_.find(id);
  // Records from several threads: the later call (by seq) is the latest.
  if (it != events_.end() && seq > it->second.recorded_seq) {
    it->second.recorded_on = stream;
    it->second.recorded_seq = seq;
  }
}

// --- modules and functions ------------------------------------------------------------

void Runtime::AddModule(uint64_t id, ModuleState module) {
  std::lock_guard<std::mutex> lock(mu_);
  modules_[id] = std::move(module);
}

Status Runtime::RemoveModule(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = modules_.find(id);
  if (it == modules_.end()) return Status::InvalidHandle("not a module of this process");
  if (it->second.library != 0) {
    return Status::InvalidHandle("the module belongs to a library; cuLibraryUnload unloads it");
  }
  modules_.erase(it);
  std::erase_if(functions_, [id](const auto& e) { return e.second->module == id; });
  return Status::Ok();
}

Status Runtime::FindModule(uint64_t id, ModuleState* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = modules_.find(id);
  if (it == modules_.end()) return Status::InvalidHandle("not a module of this process");
  *out = it->second;
  return Status::Ok();
}

Status Runtime::AddFunction(uint64_t module, const std::string& name, uint64_t* id, bool* created) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = modules_.find(module);
  if (it == modules_.end()) return Status::InvalidHandle("not a module of this process");
  auto kernel = it->second.kernels->find(name);
  if (kernel == it->second.kernels->end()) {
    return Status::NotFound("the module has no kernel named " + name);
  }
  // One id per (module, name): asking twice gives the same CUfunction.
  for (const auto& [fid, f] : functions_) {
    if (f->module == module && f->name == name) {
      *id = fid;
      *created = false;
      return Status::Ok();
    }
  }
  *created = true;
  *id = NewId(HandleKind::kFunction);
  functions_[*id] = std::make_shared<const FunctionState>(
      FunctionState{module, it->second.ctx, name, kernel->second});
  return Status::Ok();
}

Status Runtime::ModuleFunction(uint64_t module, const std::string& name, uint64_t* id) {
  std::lock_guard<std::mutex> registration(registration_mu_);
  return ModuleFunctionLocked(module, name, id);
}

Status Runtime::ModuleFunctionLocked(uint64_t module, const std::string& name, uint64_t* id) {
  bool created = false;
  FERRY_RETURN_IF_ERROR(AddFunction(module, name, id, &created));
  if (!created) return Status::Ok();
  Status posted = connection_->Post([&](wire::Call::Builder call) {
    auto args = call.initModuleGetFunction();
    args.setModule(module);
    args.setFunction(*id);
    args.setName(name);
  });
  if (!posted.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    functions_.erase(*id);
  }
  return posted;
}

Status Runtime::FindFunction(uint64_t id, FunctionState* out) {
  std::shared_ptr<const FunctionState> function;
  FERRY_RETURN_IF_ERROR(FindFunction(id, &function));
  *out = *function;
  return Status::Ok();
}

Status Runtime::FindFunction(uint64_t id, std::shared_ptr<const FunctionState>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = functions_.find(id);
  if (it == functions_.end()) return Status::InvalidHandle("not a function of this process");
  *out = it->second;
  return Status::Ok();
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
  return FindFunction(handle, out);
}

Status Runtime::ModuleGlobal(uint64_t module, const char* name, uint64_t* dptr, uint64_t* bytes) {
  if (name == nullptr) return Status::InvalidArgument("name is NULL");
  ModuleState state;
  FERRY_RETURN_IF_ERROR(FindModule(module, &state));
  uint64_t address = 0, size = 0;
  FERRY_RETURN_IF_ERROR(connection_->Call(
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
  if (size > 0 && !FindDeviceAllocation(address, nullptr, nullptr)) {
    AddDeviceAllocation(address, size, state.ctx, /*global=*/true);
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

Status Runtime::AddLibrary(uint64_t id, LibraryState library) {
  std::vector<uint64_t> live;
  {
    std::lock_guard<std::mutex> lock(mu_);
    libraries_[id] = std::move(library);
    for (const auto& [ctx, state] : contexts_) {
      if (state.live) live.push_back(ctx);
    }
  }
  if (!EagerLoading()) return Status::Ok();
  for (uint64_t ctx : live) {
    uint64_t module = 0;
    FERRY_RETURN_IF_ERROR(LibraryModule(id, ctx, &module));
  }
  return Status::Ok();
}

void Runtime::LoadLibrariesEagerly(uint64_t ctx) {
  if (!EagerLoading()) return;
  std::vector<uint64_t> ids;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, library] : libraries_) ids.push_back(id);
  }
  for (uint64_t id : ids) {
    uint64_t module = 0;
    // A failure latches on the server and surfaces at the next call that
    // waits, as the driver's eager loading reports it at context creation.
    (void)LibraryModule(id, ctx, &module);
  }
}

Status Runtime::UnloadLibrary(uint64_t id) {
  std::lock_guard<std::mutex> create(registration_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = libraries_.find(id);
    if (it == libraries_.end()) return Status::InvalidHandle("not a library of this process");
    for (const auto& [ctx, module] : it->second.modules) {
      modules_.erase(module);
      std::erase_if(functions_, [module](const auto& e) { return e.second->module == module; });
    }
    std::erase_if(kernels_, [id](const auto& e) { return e.second.library == id; });
    libraries_.erase(it);
  }
  return connection_->Post(
      [&](wire::Call::Builder call) { call.initLibraryUnload().setLibrary(id); });
}

Status Runtime::FindLibrary(uint64_t id, LibraryState* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = libraries_.find(id);
  if (it == libraries_.end()) return Status::InvalidHandle("not a library of this process");
  *out = it->second;
  return Status::Ok();
}

Status Runtime::LibraryKernel(uint64_t library, const std::string& name, uint64_t* kernel) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = libraries_.find(library);
  if (it == libraries_.end()) return Status::InvalidHandle("not a library of this process");
  LibraryState& state = it->second;
  auto info = state.kernels->find(name);
  if (info == state.kernels->end()) {
    return Status::NotFound("the library has no kernel named " + name);
  }
  auto [id, created] = state.kernel_ids.emplace(name, 0);
  if (created) {
    id->second = NewId(HandleKind::kKernel);
    KernelState k;
    k.library = library;
    k.name = name;
    k.info = info->second;
    kernels_[id->second] = std::move(k);
  }
  *kernel = id->second;
  return Status::Ok();
}

Status Runtime::FindKernel(uint64_t id, KernelState* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = kernels_.find(id);
  if (it == kernels_.end()) return Status::InvalidHandle("not a kernel of this process");
  *out = it->second;
  return Status::Ok();
}

Status Runtime::LibraryModule(uint64_t library, uint64_t ctx, uint64_t* module) {
  std::lock_guard<std::mutex> create(registration_mu_);
  return LibraryModuleLocked(library, ctx, module);
}

Status Runtime::LibraryModuleLocked(uint64_t library, uint64_t ctx, uint64_t* module) {
  ModuleState state;
  uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = libraries_.find(library);
    if (it == libraries_.end()) return Status::InvalidHandle("not a library of this process");
    if (auto m = it->second.modules.find(ctx); m != it->second.modules.end()) {
      *module = m->second;
      return Status::Ok();
    }
    auto c = contexts_.find(ctx);
    if (c == contexts_.end() || !c->second.live) {
      return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "not a live context of this process");
    }
    id = NewId(HandleKind::kModule);
    state.ctx = ctx;
    state.kernels = it->second.kernels;
    state.globals = it->second.globals;
    state.library = library;
  }
  FERRY_RETURN_IF_ERROR(connection_->Post([&](wire::Call::Builder call) {
    auto args = call.initLibraryLoadModule();
    args.setLibrary(library);
    args.setCtx(ctx);
    args.setModule(id);
  }));
  // registration_mu_ keeps the library loaded; mu_ was let go only for the post,
  // and the context may have been destroyed meanwhile (with the module).
  std::lock_guard<std::mutex> lock(mu_);
  if (auto c = contexts_.find(ctx); c == contexts_.end() || !c->second.live) {
    return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "the context was destroyed");
  }
  libraries_[library].modules[ctx] = id;
  modules_[id] = std::move(state);
  *module = id;
  return Status::Ok();
}

Status Runtime::KernelFunction(uint64_t kernel, uint64_t ctx, uint64_t* function) {
  std::lock_guard<std::mutex> create(registration_mu_);
  return KernelFunctionLocked(kernel, ctx, function);
}

Status Runtime::KernelFunctionLocked(uint64_t kernel, uint64_t ctx, uint64_t* function) {
  uint64_t library = 0;
  std::string name;
  std::map<int, int> attributes;
  std::optional<int> cache_config;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = kernels_.find(kernel);
    if (it == kernels_.end()) return Status::InvalidHandle("not a kernel of this process");
    if (auto f = it->second.functions.find(ctx); f != it->second.functions.end()) {
      *function = f->second;
      return Status::Ok();
    }
    auto c = contexts_.find(ctx);
    if (c == contexts_.end()) {
      return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "not a context of this process");
    }
    library = it->second.library;
    name = it->second.name;
    const int device = c->second.device;
    if (auto a = it->second.attributes.find(device); a != it->second.attributes.end()) {
      attributes = a->second;
    }
    if (auto cc = it->second.cache_configs.find(device); cc != it->second.cache_configs.end()) {
      cache_config = cc->second;
    }
  }
  uint64_t module = 0;
  FERRY_RETURN_IF_ERROR(LibraryModuleLocked(library, ctx, &module));
  uint64_t id = 0;
  FERRY_RETURN_IF_ERROR(ModuleFunctionLocked(module, name, &id));
  for (const auto& [attribute, value] : attributes) {
    FERRY_RETURN_IF_ERROR(connection_->Post([&](wire::Call::Builder call) {
      auto args = call.initFuncSetAttribute();
      args.setFunction(id);
      args.setAttribute(attribute);
      args.setValue(value);
    }));
  }
  if (cache_config.has_value()) {
    FERRY_RETURN_IF_ERROR(connection_->Post([&](wire::Call::Builder call) {
      auto args = call.initFuncSetCacheConfig();
      args.setFunction(id);
      args.setConfig(*cache_config);
    }));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (functions_.count(id) == 0) {
    return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "the context was destroyed");
  }
  kernels_[kernel].functions[ctx] = id;
  *function = id;
  return Status::Ok();
}

Status Runtime::ContextForDevice(int device, uint64_t* ctx) {
  FERRY_RETURN_IF_ERROR(Ready());
  FERRY_RETURN_IF_ERROR(CheckDevice(device));
  const uint64_t current = CurrentContextId();
  int current_device = -1;
  if (current != 0 && ContextDevice(current, &current_device).ok() && current_device == device) {
    FERRY_RETURN_IF_ERROR(EnsureLive(current));
    *ctx = current;
    return Status::Ok();
  }
  // The primary context is live on the server from here on; it is neither
  // retained nor made current, so the program observes nothing of it.
  const uint64_t primary = PrimaryContextId(device);
  FERRY_RETURN_IF_ERROR(EnsureLive(primary));
  *ctx = primary;
  return Status::Ok();
}

Status Runtime::SetKernelAttribute(uint64_t kernel, int device, int attribute, int value) {
  uint64_t reference = 0;
  FERRY_RETURN_IF_ERROR(ContextForDevice(device, &reference));
  std::lock_guard<std::mutex> create(registration_mu_);
  uint64_t function = 0;
  FERRY_RETURN_IF_ERROR(KernelFunctionLocked(kernel, reference, &function));
  FERRY_RETURN_IF_ERROR(connection_->Call([&](wire::Call::Builder call) {
    auto args = call.initFuncSetAttribute();
    args.setFunction(function);
    args.setAttribute(attribute);
    args.setValue(value);
  }));
  std::vector<uint64_t> others;
  {
    std::lock_guard<std::mutex> lock(mu_);
    KernelState& k = kernels_[kernel];
    k.attributes[device][attribute] = value;
    for (const auto& [ctx, f] : k.functions) {
      auto c = contexts_.find(ctx);
      if (f != function && c != contexts_.end() && c->second.device == device) others.push_back(f);
    }
  }
  for (uint64_t f : others) {
    FERRY_RETURN_IF_ERROR(connection_->Post([&](wire::Call::Builder call) {
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
  std::lock_guard<std::mutex> create(registration_mu_);
  uint64_t function = 0;
  FERRY_RETURN_IF_ERROR(KernelFunctionLocked(kernel, reference, &function));
  std::vector<uint64_t> targets;
  {
    std::lock_guard<std::mutex> lock(mu_);
    KernelState& k = kernels_[kernel];
    k.cache_configs[device] = config;
    for (const auto& [ctx, f] : k.functions) {
      auto c = contexts_.find(ctx);
      if (c != contexts_.end() && c->second.device == device) targets.push_back(f);
    }
  }
  for (uint64_t f : targets) {
    FERRY_RETURN_IF_ERROR(connection_->Post([&](wire::Call::Builder call) {
      auto args = call.initFuncSetCacheConfig();
      args.setFunction(f);
      args.setConfig(config);
    }));
  }
  return Status::Ok();
}

// --- memory -------------------------------------------------------------------------

void Runtime::AddDeviceAllocation(uint64_t dptr, uint64_t size, uint64_t ctx, bool global) {
  std::lock_guard<std::mutex> lock(mu_);
  device_allocations_[dptr] = DeviceAllocation{size, ctx, global};
}

Status Runtime::RemoveDeviceAllocation(uint64_t dptr) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = device_allocations_.find(dptr);
  if (it == device_allocations_.end() || it->second.global) {
    return Status::InvalidArgument("not the start of a device allocation of this process");
  }
  device_allocations_.erase(it);
  return Status::Ok();
}

Status Runtime::CheckDeviceRange(uint64_t address, uint64_t bytes, const char* what) {
  if (bytes == 0) return Status::Ok();
  uint64_t base = 0;
  DeviceAllocation allocation;
  if (FindDeviceAllocation(address, &base, &allocation) &&
      bytes <= allocation.size - (address - base)) {
    return Status::Ok();
  }
  char text[160];
  snprintf(text, sizeof(text), "%s range [0x%llx, +%llu) is not inside a device allocation", what,
           static_cast<unsigned long long>(address), static_cast<unsigned long long>(bytes));
  return Status::InvalidArgument(text);
}

bool Runtime::FindDeviceAllocation(uint64_t address, uint64_t* base, DeviceAllocation* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = device_allocations_.upper_bound(address);
  if (it == device_allocations_.begin()) return false;
  --it;
  if (address - it->first >= it->second.size) return false;
  if (base != nullptr) *base = it->first;
  if (out != nullptr) *out = it->second;
  return true;
}

void Runtime::AddHostAllocation(const void* ptr, HostAllocation allocation) {
  std::lock_guard<std::mutex> lock(mu_);
  host_allocations_[reinterpret_cast<uintptr_t>(ptr)] = allocation;
}

Status Runtime::RemoveHostAllocation(const void* ptr, bool registered, HostAllocation* removed) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = host_allocations_.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == host_allocations_.end() || it->second.registered != registered) {
    return registered ? Status::Cuda(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED,
                                     "host memory is not registered")
                      : Status::InvalidArgument("not page-locked memory allocated by the driver");
  }
  if (removed != nullptr) *removed = it->second;
  host_allocations_.erase(it);
  return Status::Ok();
}

bool Runtime::FindHostAllocation(const void* address, const void** base, HostAllocation* out) {
  std::lock_guard<std::mutex> lock(mu_);
  const uintptr_t a = reinterpret_cast<uintptr_t>(address);
  auto it = host_allocations_.upper_bound(a);
  if (it == host_allocations_.begin()) return false;
  --it;
  if (a - it->first >= it->second.size) return false;
  if (base != nullptr) *base = reinterpret_cast<const void*>(it->first);
  if (out != nullptr) *out = it->second;
  return true;
}

Status Runtime::AfterSynchronize(uint64_t seq) { return connection_->WaitForEarlierCopies(seq); }

Status Runtime::AfterQuery(StreamKey stream, uint64_t seq) {
  return connection_->WaitForEarlierCopiesOn(stream, seq);
}

}  // namespace ferry::client

namespace ferry::client {

int UnsupportedCall(const char* name, const char* reason) {
  return static_cast<int>(Unsupported(name, reason));
}

}  // namespace ferry::client
