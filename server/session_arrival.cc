// Session: arriving from another server (migration, issue 16;
// server/README.md "Migration"; schema MigrationOffer). Arrive runs on Run's
// thread before the handshake is answered, with exec_mutex_ held: the
// offer's calls go through Dispatch like the client's own, so every id,
// handle and range is checked and charged as it would be.
#include <cuda.h>

#include <cstring>
#include <future>
#include <string>

#include <capnp/serialize.h>

#include "common/log.h"
#include "schema/call_table.h"
#include "server/session.h"
#include "server/session_internal.h"

namespace ferry::server {

using session_internal::Hex;

Status Session::Arrive() {
  SessionArrival& arrival = *arrival_;
  arriving_ = true;
  struct Done {
    bool& flag;
    ~Done() { flag = false; }
  } done{arriving_};
  try {
    capnp::FlatArrayMessageReader reader(arrival.offer, PeerReaderOptions());
    auto offer = reader.getRoot<wire::MigrationOffer>();
    auto calls = offer.getCalls();
    auto globals_at = offer.getGlobalsAt();
    uint64_t offset = 0;
    unsigned global = 0;
    // A global the client never asked for may be anywhere here: the copy
    // that follows its moduleGetGlobal goes to where it is (0: none).
    uint64_t relocated_global = 0;
    for (unsigned i = 0; i < calls.size(); ++i) {
      wire::Call::Reader call = calls[i];
      const auto which = call.which();
      const std::string what = "call " + std::to_string(i + 1) + " of " +
                               std::to_string(calls.size()) + " that make the session again (" +
                               (static_cast<size_t>(which) < wire::kCallMembers
                                    ? wire::kCallDescriptions[static_cast<size_t>(which)].name
                                    : "unknown") +
                               ")";
      const uint64_t bytes = call.getBulkBytes();
      if (bytes > arrival.bulk.size - offset) {
        return Status::Malformed(what + " carries more bytes than the offer has");
      }
      CallContext cx;
      cx.seq = call.getSeq();
      cx.bulk_in = backend::HostBytes{arrival.bulk.owner, arrival.bulk.data + offset, bytes};
      if (which == wire::Call::MODULE_LOAD || which == wire::Call::LIBRARY_LOAD) {
        // An image the cache may keep: its own bytes, not a view that would
        // keep the whole offer (the session's memory) alive with it.
        auto image = std::shared_ptr<uint8_t[]>(new uint8_t[bytes]);
        std::memcpy(image.get(), cx.bulk_in.data, bytes);
        cx.bulk_in = backend::HostBytes{image, image.get(), bytes};
      }
      // The addresses held for it are its own once its objects are made
      // (their threads and stacks came first) and its memory is placed.
      if (which == wire::Call::MEM_ALLOC_AT) arrival.address_hold.reset();
      offset += bytes;
      if (which == wire::Call::MEMCPY_HTO_D && relocated_global != 0) {
        capnp::MallocMessageBuilder moved;
        auto copy = moved.initRoot<wire::Call>();
        copy.setSeq(call.getSeq());
        copy.setBulkBytes(bytes);
        auto args = copy.initMemcpyHtoD();
        args.setCtx(call.getMemcpyHtoD().getCtx());
        args.setStream(0);
        args.setDst(relocated_global);
        args.setBytes(call.getMemcpyHtoD().getBytes());
        relocated_global = 0;
        FERRY_RETURN_IF_ERROR(Dispatch(copy.asReader(), cx).WithContext(what));
        continue;
      }
      relocated_global = 0;
      FERRY_RETURN_IF_ERROR(Dispatch(call, cx).WithContext(what));
      if (cx.deferred) return Status::Malformed(what + " waits for the GPU; none may");
      if (which == wire::Call::MODULE_GET_GLOBAL) {
        if (global >= globals_at.size()) {
          return Status::Malformed(what + ": the offer says not where the global was");
        }
        const uint64_t was = globals_at[global++];
        const uint64_t is = cx.reply.asReader().getModuleGetGlobal().getDptr();
        if (was == 0) {
          relocated_global = is;  // the client never saw its address
          if (auto made = ranges_.FindBase(is); made.value != nullptr) {
            made.value->known_to_client = false;
          }
          continue;
        }
        // The client holds the global's address from the other server.
        if (is != was) {
          return Status::Cuda(CUDA_ERROR_ALREADY_MAPPED,
                              "module global " + std::string(call.getModuleGetGlobal().getName()) +
                                  " is at " + Hex(is) + " here, not at " + Hex(was) +
                                  " where the program knows it");
        }
      }
    }
    if (offset != arrival.bulk.size) {
      return Status::Malformed("the offer carries bytes no call takes");
    }
    // The copies are queued on the contexts' legacy streams: done before
    // the client's first call, which may run on any stream.
    Status copied;
    contexts_.ForEach([&](uint64_t, ContextEntry& c) {
      if (!copied.ok()) return;
      std::promise<Status> idle;
      backend_.WhenStreamIdle(backend_.LegacyStream(*c.context),
                              [&idle](Status s) { idle.set_value(std::move(s)); });
      copied = idle.get_future().get();
    });
    FERRY_RETURN_IF_ERROR(copied.WithContext("copying the session's memory in"));
    latched_error_ = StatusFromWire(offer.getLatched());
    latched_seq_ = offer.getLatchedSeq();
    FERRY_LOG(kInfo) << "session " << id_ << " (" << program_ << "@" << host_
                     << ") arrived from " << offer.getSource().cStr() << " (its session "
                     << offer.getSessionId() << "): " << calls.size() << " objects and copies, "
                     << (arrival.bulk.size >> 20) << " MiB";
  } catch (const kj::Exception& e) {
    return Status::Malformed(std::string("bad migration offer: ") + e.getDescription().cStr());
  }
  return Status::Ok();
}

Status Session::MemAllocAt(wire::MemAllocAt::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  if (!arriving_) {
    return Status::InvalidArgument(
        "memAllocAt places the memory of a session that arrives from another server; a client "
        "may not send it");
  }
  uint64_t dptr = 0;
  FERRY_RETURN_IF_ERROR(AllocateInContext(
      args.getCtx(), *c, args.getBytes(), "memAllocAt",
      [&](uint64_t* out) {
        *out = args.getDptr();
        return backend_.MemAllocAt(*c->context, args.getDptr(), args.getBytes());
      },
      &dptr));
  cx.reply.initMemAlloc().setDptr(dptr);
  return Status::Ok();
}

}  // namespace ferry::server
