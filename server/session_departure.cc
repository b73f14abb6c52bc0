// Session: moving to another server (migration, issue 16; server/README.md
// "Migration"; schema MigrationOffer). Depart runs on whichever thread asks
// (ferryd's control connection, or a worker's link reader); MoveMarker and
// MoveRefused run on the executor, as calls of the client.
#include <unistd.h>

#include <chrono>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "common/credentials.h"
#include "common/log.h"
#include "common/units.h"
#include "server/session.h"
#include "server/session_internal.h"

namespace ferry::server {

using session_internal::Hex;
using session_internal::SteadyNowNs;

namespace {

// How long the target may take to answer the Hello, and then the offer once
// its bytes are sent (it borrows a slice and checks the offer; the bytes
// themselves are bounded by the transport's writes, not by this).
constexpr std::chrono::seconds kTargetAnswerWait{30};

}  // namespace

Status Session::Depart(const SessionDeparture& to, std::string* summary) {
  const std::string who = "session " + std::to_string(id_);
  if (!follows_moves_) {
    return Status::Unimplemented(who + "'s client cannot follow a move to another server (its "
                                       "libcuda.so.1 is older than ferryd's)");
  }
  if (const size_t devices = grant().devices.size(); devices != 1) {
    return Status::Unimplemented(who + " has " + std::to_string(devices) +
                                 " devices; moves to another server are built for one");
  }
  if (!started_.load()) return Status::Overloaded(who + " has not started yet");
  {
    std::lock_guard<std::mutex> lock(serve_mutex_);
    if (serving_ended_) return Status::Disconnected(who + " ended");
    if (departure_state_ != DepartureState::kNone) {
      return Status::Overloaded(who + " is moving already");
    }
    departure_state_ = DepartureState::kNoticed;
    departure_ = to;
    departure_outcome_.reset();
    departure_summary_.clear();
  }
  {
    // The notice (seq 0): the client stops and answers with moveMarker.
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<wire::Reply>();
    reply.setSeq(0);
    StatusToWire(Status::Ok(), reply.initStatus());
    reply.setMoveNotice();
    SendReplyMessage(message, {});
  }
  std::unique_lock<std::mutex> lock(serve_mutex_);
  bool decided = false;
  for (;;) {
    decided = serve_cv_.wait_until(lock, std::chrono::steady_clock::now() + kDepartureWait,
                                   [this] { return departure_outcome_.has_value() || serving_ended_; });
    // An offer on its way (a large session, a slow link) decides by its
    // end, which the target's read deadline bounds.
    if (decided || departure_state_ != DepartureState::kOffering) break;
  }
  if (departure_outcome_.has_value()) {
    Status outcome = *departure_outcome_;
    departure_outcome_.reset();
    departure_state_ = DepartureState::kNone;
    return outcome;
  }
  if (decided && departure_state_ == DepartureState::kHandedOver) {
    // The client closed its connection here once the target took it.
    *summary = departure_summary_;
    return Status::Ok();
  }
  if (decided) {
    departure_state_ = DepartureState::kNone;
    return Status::Disconnected(who + " ended before it could move");
  }
  const DepartureState state = departure_state_;
  // A marker or refusal that comes later finds no move and is answered so
  // (or only logged); a later move may be asked.
  departure_state_ = DepartureState::kNone;
  if (state == DepartureState::kNoticed) {
    return Status::Overloaded(who + "'s client did not answer the move within " +
                              std::to_string(kDepartureWait.count()) + " s; it stays");
  }
  return Status::Overloaded(who + " was sent to " + to.address + " but its client has neither " +
                            "arrived there nor refused within " +
                            std::to_string(kDepartureWait.count()) + " s");
}

Status Session::MoveMarker(wire::MoveMarker::Reader, CallContext& cx) {
  SessionDeparture to;
  {
    std::lock_guard<std::mutex> lock(serve_mutex_);
    if (departure_state_ != DepartureState::kNoticed) {
      return Status::InvalidArgument("no move to another server is pending");
    }
    departure_state_ = DepartureState::kOffering;
    to = departure_;
  }
  const int64_t started = SteadyNowNs();
  std::string ticket;
  uint64_t target_session = 0;
  Status status = revoked_;
  if (status.ok()) status = ImmovableObjects("another server");
  if (status.ok()) status = QuiesceForMove();
  if (status.ok()) status = OfferTo(to, &ticket, &target_session);
  if (!status.ok()) {
    status = status.WithContext("session " + std::to_string(id_) + " stays here");
    FERRY_LOG(kWarning) << "session " << id_ << " (" << program_ << "@" << host_
                        << "): not moved to " << to.address << ": " << status.message();
    std::lock_guard<std::mutex> lock(serve_mutex_);
    departure_outcome_ = status;
    departure_state_ = DepartureState::kNone;
    serve_cv_.notify_all();
    return status;
  }
  auto moved = cx.reply.initMoved();
  moved.setAddress(to.address);
  moved.setTicket(capnp::Data::Reader(reinterpret_cast<const uint8_t*>(ticket.data()),
                                      ticket.size()));
  const uint64_t bytes = shares_.device_bytes(0);
  const double ms = static_cast<double>(SteadyNowNs() - started) / 1e6;
  char handed[32];
  std::snprintf(handed, sizeof(handed), "%.1f", ms);
  FERRY_LOG(kInfo) << "session " << id_ << " (" << program_ << "@" << host_ << "): handed to "
                   << to.address << " GPU " << to.gpu << " as its session " << target_session
                   << " (" << (bytes >> 20) << " MiB of device memory, " << handed
                   << " ms); its client moves there";
  std::lock_guard<std::mutex> lock(serve_mutex_);
  departure_state_ = DepartureState::kHandedOver;
  departure_summary_ = "session " + std::to_string(id_) + " moved to " + to.address + " GPU " +
                       std::to_string(to.gpu) + " (session " + std::to_string(target_session) +
                       " there; " + std::to_string(bytes >> 20) +
                       " MiB of device memory handed over in " + handed + " ms)\n";
  serve_cv_.notify_all();
  return Status::Ok();
}

Status Session::MoveRefused(wire::MoveRefused::Reader args) {
  std::lock_guard<std::mutex> lock(serve_mutex_);
  const std::string reason = args.getReason().cStr();
  if (departure_state_ != DepartureState::kHandedOver) {
    // Depart gave up waiting already: nothing to tell, and nothing the
    // program should see as an error.
    FERRY_LOG(kInfo) << "session " << id_ << ": its client could not take it elsewhere ("
                     << reason << "), after the move was given up";
    return Status::Ok();
  }
  FERRY_LOG(kWarning) << "session " << id_ << " (" << program_ << "@" << host_
                      << "): its client could not take it to " << departure_.address << ": "
                      << reason << "; it stays here";
  departure_outcome_ = Status::Overloaded("session " + std::to_string(id_) + " stays here: " +
                                          departure_.address + " refused it: " + reason);
  departure_state_ = DepartureState::kNone;
  serve_cv_.notify_all();
  return Status::Ok();
}

Status Session::OfferTo(const SessionDeparture& to, std::string* ticket,
                        uint64_t* target_session) {
  const std::string target = "ferryd at " + to.address;
  // An admin token goes over plain TCP to loopback or a unix socket only.
  FERRY_RETURN_IF_ERROR(CheckTokenIsProtected(to.address, to.token, /*tls=*/false,
                                              PlainTokenAllowedByEnvironment(),
                                              "set FERRY_ALLOW_PLAIN_TOKEN=1 for ferryd"));
  capnp::MallocMessageBuilder message;
  auto offer = message.initRoot<wire::MigrationOffer>();
  std::vector<ConstBuffer> bulk;
  std::vector<std::shared_ptr<const void>> keep;
  FERRY_RETURN_IF_ERROR(DescribeForMove(offer, &bulk, &keep));
  const SessionGrant granted = grant();
  const SessionDevice& device = granted.devices[0];
  offer.setSessionId(id_);
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  offer.setSource(std::string("ferryd pid ") + std::to_string(getpid()) + " on " + host);
  offer.setGpu(to.gpu);
  offer.setPool(granted.pool);
  offer.setMemory(device.memory_quota != 0
                      ? device.memory_quota
                      : backend_.Devices()[device.backend_device].total_memory);
  offer.setDeviceName(backend_.Devices()[device.backend_device].name);
  offer.setPid(pid_);
  offer.setHost(host_);
  offer.setProgram(program_);
  offer.setTokenName(token_name_);
  StatusToWire(latched_error_, offer.initLatched());
  offer.setLatchedSeq(latched_seq_);

  std::unique_ptr<Transport> transport;
  FERRY_RETURN_IF_ERROR(
      ConnectTransport(to.address, std::chrono::duration_cast<std::chrono::milliseconds>(
                                       kTargetAnswerWait),
                       &transport)
          .WithContext("cannot reach " + target));
  {
    capnp::MallocMessageBuilder hello_message;
    auto hello = hello_message.initRoot<wire::Hello>();
    hello.setProtocolVersion(wire::PROTOCOL_VERSION);
    hello.setRole(wire::Hello::Role::MIGRATION);
    hello.setPid(static_cast<uint32_t>(getpid()));
    hello.setHost(host_);
    hello.setProgram(program_);
    hello.setToken(to.token);
    FERRY_RETURN_IF_ERROR(WriteFrame(*transport, wire::FrameKind::HELLO, hello_message));
  }
  auto read_answer = [&](wire::FrameKind kind, Frame* frame) {
    transport->SetReadDeadline(std::chrono::steady_clock::now() + kTargetAnswerWait);
    FERRY_RETURN_IF_ERROR(ReadFrame(*transport, frame).WithContext(target + " did not answer"));
    if (frame->kind != kind) {
      return Status::Malformed(target + " answered with frame kind " +
                               std::to_string(static_cast<int>(frame->kind)));
    }
    return Status::Ok();
  };
  Frame frame;
  FERRY_RETURN_IF_ERROR(read_answer(wire::FrameKind::HELLO_REPLY, &frame));
  try {
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    FERRY_RETURN_IF_ERROR(StatusFromWire(reader.getRoot<wire::HelloReply>().getStatus())
                              .WithContext(target + " refused the connection"));
  } catch (const kj::Exception& e) {
    return Status::Malformed(target + " answered a bad HelloReply");
  }
  // The MigrationAnswer in `frame`: its status, and the ticket when asked.
  auto read_verdict = [&](std::string* ticket_out) {
    FERRY_RETURN_IF_ERROR(read_answer(wire::FrameKind::MIGRATION_ANSWER, &frame));
    try {
      capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
      auto answer = reader.getRoot<wire::MigrationAnswer>();
      FERRY_RETURN_IF_ERROR(
          StatusFromWire(answer.getStatus()).WithContext(target + " refused the session"));
      *target_session = answer.getSessionId();
      if (ticket_out == nullptr) return Status::Ok();
      auto bytes = answer.getTicket();
      if (bytes.size() == 0) return Status::Malformed(target + " answered no ticket");
      ticket_out->assign(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
    } catch (const kj::Exception& e) {
      return Status::Malformed(target + " answered a bad MigrationAnswer");
    }
    return Status::Ok();
  };
  // The offer, then (accepted) its bytes.
  FERRY_RETURN_IF_ERROR(WriteFrame(*transport, wire::FrameKind::MIGRATION_OFFER, message)
                            .WithContext("sending the session to " + target));
  FERRY_RETURN_IF_ERROR(read_verdict(nullptr));
  uint64_t total = 0;
  for (const ConstBuffer& b : bulk) total += b.size;
  capnp::MallocMessageBuilder bytes_message(8);
  bytes_message.initRoot<wire::MigrationBytes>().setBytes(total);
  FERRY_RETURN_IF_ERROR(
      WriteFrame(*transport, wire::FrameKind::MIGRATION_BYTES, bytes_message, bulk)
          .WithContext("sending the session's bytes to " + target));
  return read_verdict(ticket);
}

Status Session::DescribeForMove(wire::MigrationOffer::Builder offer,
                                std::vector<ConstBuffer>* bulk,
                                std::vector<std::shared_ptr<const void>>* keep) {
  // The calls, each with the bytes it carries; filled into the offer at the
  // end (a capnp list is sized once).
  struct PlannedCall {
    std::function<void(wire::Call::Builder)> fill;
    ConstBuffer bytes{nullptr, 0};
  };
  std::vector<PlannedCall> calls;
  std::vector<uint64_t> globals_at;
  Status status;
  contexts_.ForEach([&](uint64_t id, ContextEntry& c) {
    calls.push_back({[id, device = c.device, flags = c.flags](wire::Call::Builder call) {
      auto args = call.initCtxCreate();
      args.setCtx(id);
      args.setDevice(device);
      args.setFlags(flags);
    }});
  });
  streams_.ForEach([&](uint64_t id, StreamEntry& s) {
    calls.push_back({[id, s_ctx = s.ctx, flags = s.flags, priority = s.priority](
                         wire::Call::Builder call) {
      auto args = call.initStreamCreate();
      args.setCtx(s_ctx);
      args.setStream(id);
      args.setFlags(flags);
      args.setPriority(priority);
    }});
  });
  events_.ForEach([&](uint64_t id, EventEntry& e) {
    calls.push_back({[id, e_ctx = e.ctx, flags = e.flags](wire::Call::Builder call) {
      auto args = call.initEventCreate();
      args.setCtx(e_ctx);
      args.setEvent(id);
      args.setFlags(flags);
    }});
    // Recorded and complete (the streams are idle): recorded again on its
    // context's legacy stream, so it is complete there too.
    if (e.recorded_outside) {
      calls.push_back({[id, e_ctx = e.ctx](wire::Call::Builder call) {
        auto args = call.initEventRecord();
        args.setCtx(e_ctx);
        args.setStream(0);
        args.setEvent(id);
      }});
    }
  });
  // An image's bytes: the cache's (named) or the copy the entry kept.
  auto image_bytes = [&](const LoadedImage& image, ConstBuffer* out) {
    backend::HostBytes bytes = image.unnamed;
    if (image.named && (module_cache_ == nullptr ||
                        !module_cache_->Find(image.hash, image.size, &bytes))) {
      return Status::NotFound("a module image it loaded is no longer in ferryd's image cache");
    }
    keep->push_back(bytes.owner);
    *out = ConstBuffer{bytes.data, bytes.size};
    return Status::Ok();
  };
  auto set_hash = [](const LoadedImage& image, auto args) {
    if (!image.named) return;
    args.setImageHash(capnp::Data::Reader(image.hash.data(), image.hash.size()));
    args.setImageBytes(image.size);
  };
  libraries_.ForEach([&](uint64_t id, LibraryEntry& l) {
    PlannedCall planned;
    if (Status s = image_bytes(l.image, &planned.bytes); !s.ok()) {
      status = s;
      return;
    }
    planned.fill = [id, image = l.image, set_hash](wire::Call::Builder call) {
      auto args = call.initLibraryLoad();
      args.setLibrary(id);
      set_hash(image, args);
    };
    calls.push_back(std::move(planned));
  });
  FERRY_RETURN_IF_ERROR(status);
  modules_.ForEach([&](uint64_t id, ModuleEntry& m) {
    if (m.library != 0) {
      calls.push_back({[id, m_ctx = m.ctx, library = m.library](wire::Call::Builder call) {
        auto args = call.initLibraryLoadModule();
        args.setLibrary(library);
        args.setCtx(m_ctx);
        args.setModule(id);
      }});
      return;
    }
    PlannedCall planned;
    if (Status s = image_bytes(m.image, &planned.bytes); !s.ok()) {
      status = s;
      return;
    }
    planned.fill = [id, m_ctx = m.ctx, image = m.image, set_hash](wire::Call::Builder call) {
      auto args = call.initModuleLoad();
      args.setCtx(m_ctx);
      args.setModule(id);
      set_hash(image, args);
    };
    calls.push_back(std::move(planned));
  });
  FERRY_RETURN_IF_ERROR(status);
  functions_.ForEach([&](uint64_t id, FunctionEntry& f) {
    calls.push_back({[id, module = f.module, name = f.name](wire::Call::Builder call) {
      auto args = call.initModuleGetFunction();
      args.setModule(module);
      args.setFunction(id);
      args.setName(name);
    }});
    for (const auto& set : f.attributes) {
      calls.push_back({[id, set](wire::Call::Builder call) {
        auto args = call.initFuncSetAttribute();
        args.setFunction(id);
        args.setAttribute(set.first);
        args.setValue(set.second);
      }});
    }
    if (f.cache_config.has_value()) {
      calls.push_back({[id, config = *f.cache_config](wire::Call::Builder call) {
        auto args = call.initFuncSetCacheConfig();
        args.setFunction(id);
        args.setConfig(config);
      }});
    }
  });
  // Device memory: allocations made at their addresses, module globals
  // found, then their bytes copied in. The streams are idle and the
  // executor is here, so nothing changes the bytes while they are sent.
  const bool direct = backend_.DeviceMemoryIsHostMemory();
  // The copy of [base, base + size) of context `ctx` into place.
  auto copy_in = [&](uint64_t ctx, uint64_t base, uint64_t size) {
    PlannedCall copy;
    copy.fill = [ctx, base, size](wire::Call::Builder call) {
      auto args = call.initMemcpyHtoD();
      args.setCtx(ctx);
      args.setStream(0);
      args.setDst(base);
      args.setBytes(size);
    };
    if (direct) {
      copy.bytes = ConstBuffer{reinterpret_cast<const void*>(base), size};
      calls.push_back(std::move(copy));
      return Status::Ok();
    }
    ContextEntry* c = nullptr;
    FERRY_RETURN_IF_ERROR(contexts_.Find(ctx, &c));
    auto bytes = std::shared_ptr<uint8_t[]>(new (std::nothrow) uint8_t[size]);
    if (bytes == nullptr) {
      return Status::OutOfMemory("no host memory to send " + std::to_string(size) + " bytes");
    }
    backend::Stream& legacy = backend_.LegacyStream(*c->context);
    FERRY_RETURN_IF_ERROR(backend_.CopyDeviceToHost(
        legacy, backend::MutableHostBytes{bytes, bytes.get(), size}, base));
    std::promise<Status> done;
    backend_.WhenStreamIdle(legacy, [&done](Status s) { done.set_value(std::move(s)); });
    FERRY_RETURN_IF_ERROR(done.get_future().get());
    keep->push_back(bytes);
    copy.bytes = ConstBuffer{bytes.get(), size};
    calls.push_back(std::move(copy));
    return Status::Ok();
  };
  ranges_.ForEach([&](uint64_t base, uint64_t size, RangeEntry& range) {
    if (!status.ok() || range.module != 0 || range.mapped || range.graph) return;
    calls.push_back({[r_ctx = range.ctx, base, size](wire::Call::Builder call) {
      auto args = call.initMemAllocAt();
      args.setCtx(r_ctx);
      args.setDptr(base);
      args.setBytes(size);
    }});
    status = copy_in(range.ctx, base, size);
  });
  FERRY_RETURN_IF_ERROR(status);
  // Every global of every module: a kernel may have changed any. Those the
  // client asked for must be where it knows them (globalsAt); the others may
  // land anywhere (0), their bytes copied to wherever they are.
  modules_.ForEach([&](uint64_t id, ModuleEntry& m) {
    for (const backend::GlobalDescription& g : m.description->globals) {
      if (!status.ok()) return;
      uint64_t dptr = 0, bytes = 0;
      status = backend_.GetGlobal(*m.module, g.name, &dptr, &bytes);
      if (!status.ok() || bytes == 0) continue;
      const auto fetched = ranges_.FindBase(dptr);
      const bool known = fetched.value != nullptr && fetched.value->module == id &&
                         fetched.value->known_to_client;
      calls.push_back({[id, name = g.name](wire::Call::Builder call) {
        auto args = call.initModuleGetGlobal();
        args.setModule(id);
        args.setName(name);
      }});
      globals_at.push_back(known ? dptr : 0);
      status = copy_in(m.ctx, dptr, bytes);
    }
  });
  FERRY_RETURN_IF_ERROR(status);
  auto list = offer.initCalls(static_cast<unsigned>(calls.size()));
  for (size_t i = 0; i < calls.size(); ++i) {
    auto call = list[static_cast<unsigned>(i)];
    call.setSeq(i + 1);
    calls[i].fill(call);
    call.setBulkBytes(calls[i].bytes.size);
    if (calls[i].bytes.size > 0) bulk->push_back(calls[i].bytes);
  }
  auto at = offer.initGlobalsAt(static_cast<unsigned>(globals_at.size()));
  for (size_t i = 0; i < globals_at.size(); ++i) at.set(static_cast<unsigned>(i), globals_at[i]);
  return Status::Ok();
}

}  // namespace ferry::server
