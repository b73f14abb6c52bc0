// Server: moving sessions between servers (issue 16; server/README.md
// "Migration"; schema MigrationOffer). The source's side is
// MigrateToServer (ferryctl's control connection); the target's is
// ServeMigration (the source's connection) and TakeArrival (the client's,
// coming back with its ticket).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include <capnp/serialize.h>

#include "common/frame.h"
#include "common/log.h"
#include "common/random_bytes.h"
#include "server/server.h"

namespace ferry::server {

namespace {

// How long the source may take to send its offer once connected (its bytes
// included: a session's device memory).
constexpr std::chrono::minutes kOfferWait{5};

}  // namespace

Status Server::MigrateToServer(uint64_t id, const std::string& address, int gpu,
                               const std::string& token, std::string* summary) {
  std::shared_ptr<ServedSession> session;
  FERRY_RETURN_IF_ERROR(FindSession(id, &session));
  SessionDeparture to;
  to.address = address;
  to.gpu = gpu;
  to.token = token;
  const auto started = std::chrono::steady_clock::now();
  Status departed = session->Depart(to, summary);
  if (!departed.ok()) return departed;
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  char took[32];
  std::snprintf(took, sizeof(took), "%.1f", ms);
  // The summary ends ")\n": the whole move's time goes inside.
  if (summary->size() >= 2) summary->resize(summary->size() - 2);
  *summary += std::string("; the client was there ") + took + " ms after the request)\n";
  FERRY_LOG(kInfo) << "ferryctl migrate: " << summary->substr(0, summary->size() - 1);
  return Status::Ok();
}

void Server::ServeMigration(Transport& transport, const std::optional<auth::Token>& token) {
  const std::string peer = transport.PeerName();
  auto refuse = [&](const Status& why) {
    FERRY_LOG(kWarning) << "ferryd " << peer << " cannot hand a session over: " << why.message();
    Refuse(transport, why);
  };
  if (token.has_value() && !token->admin) {
    return refuse(Status::PermissionDenied(token->Describe() +
                                           " is not an admin token: it may not hand sessions over"));
  }
  if (cluster_ != nullptr) {
    return refuse(Status::Unimplemented(
        "this ferryd is a member of a cluster pool; moves between servers are not built there"));
  }
  {
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<wire::HelloReply>();
    StatusToWire(Status::Ok(), reply.initStatus());
    reply.setBackend(std::string(backend_.Name()));
    if (!WriteFrame(transport, wire::FrameKind::HELLO_REPLY, message).ok()) return;
  }
  auto arrival = std::make_shared<PendingArrival>();
  auto answer = [&](const Status& status, const std::string& ticket) {
    capnp::MallocMessageBuilder message;
    auto a = message.initRoot<wire::MigrationAnswer>();
    StatusToWire(status, a.initStatus());
    a.setSessionId(arrival->session);
    a.setTicket(capnp::Data::Reader(reinterpret_cast<const uint8_t*>(ticket.data()),
                                    ticket.size()));
    return WriteFrame(transport, wire::FrameKind::MIGRATION_ANSWER, message);
  };
  // What went wrong after the borrow gives the slice back (and forgets a
  // preemption that came for it meanwhile: no session will take it).
  auto give_back = [&] {
    if (arrival->session == 0) return;
    if (pool_ != nullptr) pool_->Return(arrival->session);
    std::lock_guard<std::mutex> lock(mutex_);
    early_preemptions_.erase(arrival->session);
  };
  // The offer first, small; its bytes only once it is accepted (a refusal
  // costs no transfer).
  Frame frame;
  transport.SetReadDeadline(std::chrono::steady_clock::now() + kOfferWait);
  Status read = ReadFrame(transport, &frame, FrameLimits{kMaxMessageBytes, 0, "for an offer"});
  if (read.ok() && frame.kind != wire::FrameKind::MIGRATION_OFFER) {
    read = Status::Malformed("expected a migration offer");
  }
  if (!read.ok()) {
    FERRY_LOG(kWarning) << "ferryd " << peer << " handed no session over: " << read.message();
    (void)answer(read, "");
    return;
  }
  arrival->offer_bytes = frame.words.size() * sizeof(capnp::word);
  uint64_t bulk_bytes = 0;
  Status accepted;
  try {
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    auto offer = reader.getRoot<wire::MigrationOffer>();
    arrival->source = "session " + std::to_string(offer.getSessionId()) + " of " +
                      offer.getSource().cStr() + " (" + peer + ")";
    arrival->token_name = offer.getTokenName().cStr();
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    accepted = CheckOfferCalls(offer, &ranges, &bulk_bytes);
    if (accepted.ok()) accepted = AcceptArrival(offer, transport, arrival);
    // A session served in this process: its addresses are held before the
    // buffer its bytes come in is mapped (which would otherwise land where
    // the session's memory must go); one this process cannot have is refused
    // (after the pool's reasons, which say more to an operator).
    if (accepted.ok() && worker_command_.empty()) {
      accepted = backend_.HoldAddresses(ranges, &arrival->address_hold)
                     .WithContext("this ferryd cannot have the session's addresses");
    }
  } catch (const kj::Exception& e) {
    accepted = Status::Malformed(std::string("bad migration offer: ") + e.getDescription().cStr());
  }
  if (!accepted.ok()) {
    FERRY_LOG(kWarning) << arrival->source << " not taken: " << accepted.message();
    give_back();
    (void)answer(accepted, "");
    return;
  }
  if (!answer(Status::Ok(), "").ok()) {
    give_back();
    return;
  }
  // The bytes go straight into a sealed memfd (a worker maps it; one copy
  // of the session's memory on the way).
  wire::FrameKind kind = wire::FrameKind::INVALID;
  kj::Array<capnp::word> words;
  uint64_t announced = 0;
  read = ReadFrameHead(transport, &kind, &words, &announced);
  if (read.ok() && (kind != wire::FrameKind::MIGRATION_BYTES || announced != bulk_bytes)) {
    read = Status::Malformed("expected the offer's " + std::to_string(bulk_bytes) + " bytes");
  }
  if (read.ok()) {
    read = SealedImage::Fill(arrival->offer_bytes + bulk_bytes,
                             [&](uint8_t* data) {
                               std::memcpy(data, frame.words.begin(), arrival->offer_bytes);
                               return transport.ReadExact(data + arrival->offer_bytes, bulk_bytes);
                             },
                             &arrival->offer);
  }
  transport.SetReadDeadline(kNoDeadline);
  std::string ticket;
  if (read.ok()) read = RandomHex(32, &ticket);
  if (!read.ok()) {
    FERRY_LOG(kWarning) << arrival->source << " not taken: its bytes: " << read.message();
    give_back();
    (void)answer(read, "");
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    arrivals_[ticket] = arrival;
  }
  if (!answer(Status::Ok(), ticket).ok()) {
    // The source will not send its client: nobody comes for it.
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (arrivals_.erase(ticket) == 0) return;  // taken already: the session owns the slice
      arrival->taken = true;
    }
    give_back();
    return;
  }
  FERRY_LOG(kInfo) << "handed over: " << arrival->source << ", as session " << arrival->session
                   << " (" << (bulk_bytes >> 20) << " MiB); waiting for its client";
  // Kept until its client comes, ferryd stops, or the wait is over.
  std::unique_lock<std::mutex> lock(mutex_);
  connections_cv_.wait_for(lock, kArrivalWait, [&] { return arrival->taken || stopping_; });
  if (arrival->taken) return;
  arrivals_.erase(ticket);
  arrival->taken = true;
  lock.unlock();
  FERRY_LOG(kWarning) << "session " << arrival->session << " (" << arrival->source
                      << ") was not taken by its client within " << kArrivalWait.count()
                      << " s; its slice goes back";
  give_back();
}

Status Server::CheckOfferCalls(wire::MigrationOffer::Reader offer,
                               std::vector<std::pair<uint64_t, uint64_t>>* ranges,
                               uint64_t* bulk_bytes) {
  // Only what Session::DescribeForMove makes: objects, placed memory and the
  // copies into it on a legacy stream. Nothing that runs work.
  uint64_t placed = 0;
  for (auto call : offer.getCalls()) {
    switch (call.which()) {
      case wire::Call::CTX_CREATE:
      case wire::Call::STREAM_CREATE:
      case wire::Call::EVENT_CREATE:
      case wire::Call::EVENT_RECORD:
      case wire::Call::LIBRARY_LOAD:
      case wire::Call::LIBRARY_LOAD_MODULE:
      case wire::Call::MODULE_LOAD:
      case wire::Call::MODULE_GET_FUNCTION:
      case wire::Call::FUNC_SET_ATTRIBUTE:
      case wire::Call::FUNC_SET_CACHE_CONFIG:
      case wire::Call::MODULE_GET_GLOBAL:
        break;
      case wire::Call::MEMCPY_HTO_D:
        if (call.getMemcpyHtoD().getStream() != 0) {
          return Status::Malformed("an offer's copy goes on a legacy stream");
        }
        break;
      case wire::Call::MEM_ALLOC_AT: {
        if (!backend_.CanPlaceMemory()) {
          return Status::Unimplemented("the " + std::string(backend_.Name()) +
                                       " backend cannot place memory at given addresses yet");
        }
        const uint64_t bytes = call.getMemAllocAt().getBytes();
        if (bytes > offer.getMemory() - std::min(placed, offer.getMemory())) {
          return Status::Malformed("the offer places more memory than the session's device has");
        }
        placed += bytes;
        ranges->emplace_back(call.getMemAllocAt().getDptr(), bytes);
        break;
      }
      default:
        return Status::Malformed("an offer may not carry call kind " +
                                 std::to_string(static_cast<int>(call.which())));
    }
    if (call.getBulkBytes() > kMaxBulkBytes - std::min(*bulk_bytes, kMaxBulkBytes)) {
      return Status::Malformed("the offer carries more than " + std::to_string(kMaxBulkBytes >> 30) +
                               " GiB");
    }
    *bulk_bytes += call.getBulkBytes();
  }
  return Status::Ok();
}

Status Server::AcceptArrival(wire::MigrationOffer::Reader offer, const Transport& transport,
                             const std::shared_ptr<PendingArrival>& arrival) {
  const int gpu = offer.getGpu();
  auto served = std::find_if(gpus_.begin(), gpus_.end(),
                             [gpu](const ServedGpu& g) { return g.index == gpu; });
  if (served == gpus_.end()) return Status::NotFound("this ferryd serves no GPU " + std::to_string(gpu));
  const backend::DeviceDescription& device = backend_.Devices()[served->backend_device];
  if (device.name != offer.getDeviceName().cStr()) {
    return Status::Unimplemented("GPU " + std::to_string(gpu) + " is a " + device.name +
                                 "; the session ran on a " + offer.getDeviceName().cStr() +
                                 " (device code moves between GPUs of one model only)");
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    arrival->session = next_id_++;
  }
  SessionGrant& grant = arrival->grant;
  if (pool_ == nullptr) {
    SessionDevice whole;
    whole.backend_device = served->backend_device;
    whole.gpu = served->index;
    grant.devices.push_back(whole);
  } else {
    // A free slice of the GPU, of the pool it is bound to now (which must
    // be the session's, when it came from a pool).
    absl::Time now;
    const pool::PoolSnapshot snapshot = pool_->Snapshot(&now);
    auto on = std::find_if(snapshot.gpus.begin(), snapshot.gpus.end(),
                           [gpu](const pool::GpuSnapshot& g) { return g.index == gpu; });
    if (on == snapshot.gpus.end()) {
      return Status::NotFound("GPU " + std::to_string(gpu) + " is in no pool here");
    }
    const std::string pool = offer.getPool().cStr();
    if (!pool.empty() && on->pool != pool) {
      return Status::Overloaded("GPU " + std::to_string(gpu) + " is bound to pool " + on->pool +
                                " now, not to the session's pool " + pool);
    }
    pool::BorrowRequest request;
    request.session = arrival->session;
    request.pool = on->pool;
    request.pid = offer.getPid();
    request.host = offer.getHost().cStr();
    request.program = offer.getProgram().cStr();
    pool::Lease lease;
    Status borrowed = Status::Overloaded("GPU " + std::to_string(gpu) + " has no free slice of pool " +
                                         on->pool);
    for (int slice = 0; slice < on->slices_per_gpu && !borrowed.ok(); ++slice) {
      request.pinned = {pool::PinnedSlice{gpu, slice, on->slices_per_gpu}};
      if (pool_->Borrow(request, [] { return false; }, [](int) {}, &lease).ok()) {
        borrowed = Status::Ok();
      }
    }
    FERRY_RETURN_IF_ERROR(borrowed);
    GrantFromLease(lease, transport, request, &grant);
  }
  // The client was told how much memory its device has: it must stay so.
  const SessionDevice& here = grant.devices[0];
  const uint64_t memory = here.memory_quota != 0 ? here.memory_quota : device.total_memory;
  if (memory != offer.getMemory()) {  // the caller gives the slice back
    return Status::Unimplemented("the session's device has " + std::to_string(offer.getMemory() >> 20) +
                                 " MiB; GPU " + std::to_string(gpu) + " gives " +
                                 std::to_string(memory >> 20) +
                                 " MiB here (moves between devices of different memory are not "
                                 "built)");
  }
  return Status::Ok();
}

std::shared_ptr<Server::PendingArrival> Server::TakeArrival(const std::string& ticket) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = arrivals_.find(ticket);
  if (it == arrivals_.end()) return nullptr;
  std::shared_ptr<PendingArrival> arrival = std::move(it->second);
  arrivals_.erase(it);
  arrival->taken = true;
  connections_cv_.notify_all();
  return arrival;
}

}  // namespace ferry::server
