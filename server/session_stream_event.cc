// Session handlers for streams, events and host callbacks (host gates).

#include <cuda.h>

#include "server/session.h"

#include <memory>
#include <mutex>

namespace ferry::server {

Status Session::FindStream(uint64_t ctx, uint64_t stream, backend::Stream** out) {
  backend::StreamAttributes* attributes = nullptr;
  return FindStream(ctx, stream, out, &attributes);
}

Status Session::FindStream(uint64_t ctx, uint64_t stream, backend::Stream** out,
                           backend::StreamAttributes** attributes) {
  // The context must exist whichever stream is named, and a created stream
  // must be one of its streams (the client names a stream's own context).
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(ctx, &c));
  if (stream == 0) {
    *out = &backend_.LegacyStream(*c->context);
    *attributes = &c->legacy_stream_attributes;
    return Status::Ok();
  }
  StreamEntry* entry = nullptr;
  FERRY_RETURN_IF_ERROR(streams_.Find(stream, &entry));
  if (entry->ctx != ctx) {
    return Status::InvalidHandle("stream " + std::to_string(stream) +
                                 " is not a stream of context " + std::to_string(ctx));
  }
  *out = entry->stream.get();
  *attributes = &entry->attributes;
  return Status::Ok();
}

// --- streams and events ---------------------------------------------------------

Status Session::StreamCreate(wire::StreamCreate::Reader args) {
  return CreateInContext(streams_, args.getCtx(), args.getStream(),
                         [&](backend::Context& context, StreamEntry* entry) {
                           entry->flags = args.getFlags();
                           entry->priority = args.getPriority();
                           return backend_.CreateStream(context, args.getFlags(),
                                                        args.getPriority(), &entry->stream);
                         });
}

Status Session::StreamDestroy(wire::StreamRef::Reader args) {
  if (args.getStream() != 0) {
    backend::Stream* stream = nullptr;
    FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  }
  // stream capture: a capture still open ends with its origin stream, making
  // nothing; a stream that joined one leaves it, invalidating it (its forked
  // work can no longer be joined back).
  StreamEntry* entry = nullptr;
  if (CaptureEntry* capture = CaptureOfStream(args.getStream(), &entry); capture != nullptr) {
    if (capture->origin == args.getStream()) {
      std::unique_ptr<backend::Graph> discarded;
      (void)EndCaptureOf(entry->capture, &discarded);
    } else {
      capture->invalidated = true;
      capture->streams.erase(args.getStream());
    }
  }
  return streams_.Erase(args.getStream());  // stream 0 (the legacy stream): no such stream
}

Status Session::StreamSynchronize(wire::StreamRef::Reader args, CallContext& cx) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  FERRY_RETURN_IF_ERROR(CaptureGuard(args.getStream(), CaptureUse::kSynchronizes));
  Status idle_status;
  if (backend_.StreamIdleNow(*stream, &idle_status)) return idle_status;
  backend_.WhenStreamIdle(*stream, DeferReply(cx));
  return Status::Ok();
}

Status Session::StreamQuery(wire::StreamRef::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  FERRY_RETURN_IF_ERROR(CaptureGuard(args.getStream(), CaptureUse::kSynchronizes));
  return backend_.QueryStream(*stream);
}

Status Session::StreamWaitEvent(wire::StreamWaitEvent::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  EventEntry* e = nullptr;
  FERRY_RETURN_IF_ERROR(events_.Find(args.getEvent(), &e));
  // Under capture the wait forks or joins (no node of its own); the backend
  // does the same (the driver's rules: the stream joins the event's capture).
  FERRY_RETURN_IF_ERROR(CaptureStreamWaitEvent(args.getCtx(), args.getStream(), *e));
  return backend_.StreamWaitEvent(*stream, *e->event);
}

Status Session::EventCreate(wire::EventCreate::Reader args) {
  return CreateInContext(events_, args.getCtx(), args.getEvent(),
                         [&](backend::Context& context, EventEntry* entry) {
                           entry->flags = args.getFlags();
                           return backend_.CreateEvent(context, args.getFlags(), &entry->event);
                         });
}

Status Session::EventRecord(wire::EventRecord::Reader args) {
  EventEntry* e = nullptr;
  FERRY_RETURN_IF_ERROR(events_.Find(args.getEvent(), &e));
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  // Under capture a record makes no node: it marks where a fork or join
  // attaches (NoteCaptureEventRecord).
  if (CaptureEntry* capture = CaptureOfStream(args.getStream()); capture && capture->invalidated) {
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                        "the stream's capture was invalidated by an earlier call");
  }
  FERRY_RETURN_IF_ERROR(backend_.RecordEvent(*e->event, *stream));
  NoteCaptureEventRecord(args.getStream(), *e);
  return Status::Ok();
}

Status Session::EventQuery(wire::EventRef::Reader args) {
  EventEntry* e = nullptr;
  FERRY_RETURN_IF_ERROR(events_.Find(args.getEvent(), &e));
  return backend_.QueryEvent(*e->event);
}

Status Session::EventSynchronize(wire::EventRef::Reader args, CallContext& cx) {
  EventEntry* e = nullptr;
  FERRY_RETURN_IF_ERROR(events_.Find(args.getEvent(), &e));
  backend_.WhenEventComplete(*e->event, DeferReply(cx));
  return Status::Ok();
}

Status Session::EventElapsedTime(wire::EventElapsedTime::Reader args, CallContext& cx) {
  EventEntry* start = nullptr;
  EventEntry* end = nullptr;
  FERRY_RETURN_IF_ERROR(events_.Find(args.getStart(), &start));
  FERRY_RETURN_IF_ERROR(events_.Find(args.getEnd(), &end));
  float ms = 0;
  FERRY_RETURN_IF_ERROR(backend_.EventElapsedTime(*start->event, *end->event, &ms));
  cx.reply.setElapsedMs(ms);
  return Status::Ok();
}

Status Session::EventDestroy(wire::EventRef::Reader args) { return events_.Erase(args.getEvent()); }

// --- host callbacks ------------------------------------------------------------

// The gate is registered before the backend can reach it, so the client's
// gateOpen (sent only after gateReached) always finds it. Its gateReached
// reports, for cuStreamAddCallback, the stream's own failure if any, else the
// error latched in the session so far (left latched: the next call that
// waits reports it as well).
Status Session::HostGate(wire::StreamRef::Reader args, CallContext& cx) {
  if (cx.wants_reply) {
    return Status::InvalidArgument(
        "a hostGate call must not want a reply: its answer is sent "
        "when the stream reaches it");
  }
  const uint64_t seq = cx.seq;
  backend::Stream* stream = nullptr;
  Status status = FindStream(args.getCtx(), args.getStream(), &stream);
  if (status.ok()) status = CaptureGuard(args.getStream(), CaptureUse::kHostMemory);
  if (status.ok()) status = StartHelper();
  if (!status.ok()) {
    SendGateReached(seq, status, /*held=*/false, /*stream_failed=*/false);
    return status;
  }
  auto gate = std::make_shared<backend::HostGate>();
  status = RegisterGate({seq, 0}, gate);
  if (!status.ok()) {
    SendGateReached(seq, status, /*held=*/false, /*stream_failed=*/false);
    return status;
  }
  CompletionStarted();
  const Status latched = latched_error_;
  status = backend_.EnqueueHostGate(*stream, gate, [this, seq, latched](Status stream_status) {
    const bool failed = !stream_status.ok();
    SendGateReached(seq, failed ? stream_status : latched, /*held=*/true, failed);
    CompletionDone();
  });
  if (!status.ok()) {
    UnregisterGate({seq, 0});
    gate->Open();
    CompletionDone();
    SendGateReached(seq, status, /*held=*/false, /*stream_failed=*/false);
  }
  return status;
}

}  // namespace ferry::server
