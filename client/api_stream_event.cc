// Entry points: streams, events and host callbacks.
// Creating and destroying is fire-and-forget (ids chosen here); queries and
// synchronisation wait for the server, and synchronisation also waits until
// every asynchronous device-to-host copy issued before it has landed. Host
// callbacks are fire-and-forget too; they run later on the client.
#include <cuda.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "client/across_servers.h"
#include "client/entry_point.h"
#include "client/host_callback_thread.h"
#include "common/log.h"

namespace {

Status CreateStream(CUstream* out, unsigned flags, int priority) {
  Runtime& rt = Runtime::Get();
  if (out == nullptr) return Status::InvalidArgument("phStream is NULL");
  if ((flags & ~static_cast<unsigned>(CU_STREAM_NON_BLOCKING)) != 0) {
    return Status::InvalidArgument("unknown stream flags");
  }
  uint64_t ctx = 0;
  FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
  // Priorities outside [greatest, least] are clamped, as CUDA does.
  priority = std::min(0, std::max(-5, priority));
  uint64_t id = 0;
  FERRY_RETURN_IF_ERROR(rt.streams().AddStream(ctx, flags, priority, &id));
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(ctx).Post([&](wire::Call::Builder call) {
    auto args = call.initStreamCreate();
    args.setCtx(ctx);
    args.setStream(id);
    args.setFlags(flags);
    args.setPriority(priority);
  }));
  *out = Runtime::ToHandle<CUstream>(id);
  return Status::Ok();
}

// cuStreamSynchronize (`query` false) and cuStreamQuery (`query` true): one
// call that waits for the server. A stream whose work is done is reported
// ready only once the bytes of its asynchronous copies into page-locked memory
// arrived, so a program that polls and then reads them finds them there.
Status SynchronizeOrQueryStream(CUstream stream, bool per_thread, bool query) {
  Runtime& rt = Runtime::Get();
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  if (!query) return rt.SynchronizeStream(target);
  uint64_t seq = 0;
  FERRY_RETURN_IF_ERROR(
      rt.ConnectionOf(target.ctx)
          .Call([&](wire::Call::Builder call) { SetStreamTarget(call.initStreamQuery(), target); },
                {}, {}, nullptr, &seq));
  return rt.AfterQuery(ferry::client::StreamKey{target.ctx, target.stream}, seq);
}

// cuStreamWaitEvent with the event on another server's device (a program
// whose devices span servers), made of two host gates that ferry opens
// itself (Connection::PostOpenableGate):
//  - a *probe* on the event's server, on the stream of the event's latest
//    record, posted now: reached once that record is (and what that stream
//    took on since: a stricter order, which cannot wait for anything issued
//    later); it is opened as soon as it is reached;
//  - a *hold* on `target`'s stream, opened once both it and the probe were
//    reached.
// So the wait is for the record made before the call (a later record or
// destroying the event changes nothing), neither the caller nor any client
// thread waits, and nothing waits on either server's executor: reaching and
// opening gates bypass it, so two servers whose executors are each blocked
// (say, by launch throttling behind their own hold) still let each other's
// streams go. An event never recorded is complete, as in CUDA; a capturing
// stream cannot wait across servers (the graph would live on one server). If
// the probe ends otherwise (refused, never sent, its server lost or its
// session revoked), the hold opens anyway with a log line; a lost server
// fails the program's next call. OpenLater's thread outlives every Runtime:
// only the process's global one (never destroyed) makes these waits.
// Runs a gate's `open` on a thread of ferry's own: the handlers that decide
// to open run on a connection's reader thread, which must not write (a
// write can wait for the server, which may wait for this reader).
void OpenLater(std::function<void()> open) {
  static auto* opener = new ferry::client::HostCallbackThread;  // never destroyed
  if (!opener->Post(std::move(open)).ok()) {
    FERRY_LOG(kError) << "cannot start the thread that lets streams go after waits between "
                         "servers; a stream stays held";
  }
}

Status WaitForEventOfAnotherServer(const StreamTarget& target,
                                   const ferry::client::EventState& event) {
  Runtime& rt = Runtime::Get();
  if (event.recorded_seq == 0) return Status::Ok();
  if (ferry::client::CaptureState capture;
      target.stream != 0 && rt.graphs().FindCapture(target.stream, &capture)) {
    return Status::Cuda(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                        "a capturing stream cannot wait for an event of another server");
  }
  const StreamTarget recorded{event.recorded_on.ctx, event.recorded_on.stream};
  if (recorded.stream != 0 && !rt.streams().HasStream(recorded.stream)) {
    // The stream of its record is gone: nothing to probe behind. The caller
    // waits for all of the record's context's work instead (rare; this one
    // case blocks, and is never looser).
    return rt.SynchronizeContext(recorded.ctx);
  }
  // Both gates' handlers meet here, on the two connections' reader threads.
  struct Meeting {
    std::mutex mu;
    bool probed = false;
    bool held = false;
    std::function<void()> open_hold;
  };
  auto meeting = std::make_shared<Meeting>();
  // Opens the hold once both were reached (or the probe ended otherwise).
  auto maybe_open = [](Meeting& m, std::unique_lock<std::mutex>&) {
    if (!m.probed || !m.held || !m.open_hold) return;
    OpenLater(std::move(m.open_hold));
    m.open_hold = nullptr;
  };
  // The probe first: if it cannot be sent, no hold is left behind.
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(event.ctx).PostOpenableGate(
      [&](wire::Call::Builder call) { SetStreamTarget(call.initHostGate(), recorded); },
      [meeting, maybe_open](Status status, std::function<void()> open) {
        if (open) OpenLater(std::move(open));  // the probe only marks the spot
        if (!status.ok()) {
          FERRY_LOG(kWarning) << "waiting for an event of another server: " << status.message()
                              << "; the waiting stream goes on";
        }
        std::unique_lock<std::mutex> lock(meeting->mu);
        meeting->probed = true;
        maybe_open(*meeting, lock);
      }));
  return rt.ConnectionOf(target.ctx)
      .PostOpenableGate(
          [&](wire::Call::Builder call) { SetStreamTarget(call.initHostGate(), target); },
          [meeting, maybe_open](Status status, std::function<void()> open) {
            if (!status.ok()) {
              FERRY_LOG(kWarning) << "a stream's wait for another server's event: "
                                  << status.message();
              return;  // no stream held
            }
            std::unique_lock<std::mutex> lock(meeting->mu);
            meeting->held = true;
            meeting->open_hold = std::move(open);
            maybe_open(*meeting, lock);
          });
}

Status StreamWaitEvent(CUstream stream, CUevent event, unsigned flags, bool per_thread) {
  Runtime& rt = Runtime::Get();
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  ferry::client::EventState state;
  FERRY_RETURN_IF_ERROR(rt.streams().FindEvent(Runtime::HandleId(event), &state));
  if (flags != CU_EVENT_WAIT_DEFAULT) return Status::InvalidArgument("unknown wait flags");
  if (!rt.SameSession(target.ctx, state.ctx)) return WaitForEventOfAnotherServer(target, state);
  uint64_t seq = 0;
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(target.ctx)
                            .Post(
                                [&](wire::Call::Builder call) {
                                  auto args = call.initStreamWaitEvent();
                                  SetStreamTarget(args, target);
                                  args.setEvent(Runtime::HandleId(event));
                                },
                                {}, &seq));
  // stream capture: waiting on an event recorded in a capture joins it.
  if (rt.graphs().AnyCapture()) {
    ferry::client::StreamState stream_state;
    const bool blocking = target.stream != 0 &&
                          rt.streams().FindStream(target.stream, &stream_state).ok() &&
                          (stream_state.flags & CU_STREAM_NON_BLOCKING) == 0;
    rt.graphs().NoteStreamWait(target.stream, target.ctx, blocking, Runtime::HandleId(event));
  }
  // The stream now depends on the copies the event's record depends on: a
  // query that finds it done waits for their bytes too.
  rt.ConnectionOf(target.ctx)
      .AddCopyDependencies(ferry::client::StreamKey{target.ctx, target.stream}, seq, state.copies);
  return Status::Ok();
}

Status RecordEvent(CUevent event, CUstream stream, unsigned flags, bool per_thread) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  ferry::client::EventState state;
  FERRY_RETURN_IF_ERROR(rt.streams().FindEvent(Runtime::HandleId(event), &state));
  if (flags != CU_EVENT_RECORD_DEFAULT) {
    return Status::Unimplemented(
        "cuEventRecordWithFlags: external events are not supported by ferry");
  }
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  if (!rt.SameSession(target.ctx, state.ctx)) {
    return Status::InvalidHandle(
        "cuEventRecord: the event and the stream are on devices of different servers");
  }
  uint64_t seq = 0;
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(target.ctx)
                            .Post(
                                [&](wire::Call::Builder call) {
                                  auto args = call.initEventRecord();
                                  SetStreamTarget(args, target);
                                  args.setEvent(Runtime::HandleId(event));
                                },
                                {}, &seq));
  rt.graphs().NoteEventRecord(Runtime::HandleId(event), target.stream);
  const ferry::client::StreamKey key{target.ctx, target.stream};
  rt.streams().NoteEventRecord(Runtime::HandleId(event), key, seq,
                               rt.ConnectionOf(target.ctx).CopiesBefore(key, seq));
  return Status::Ok();
}

// Host callbacks: a gate on the server holds the stream while `fn` runs on
// the client's host-callback thread (see Connection::PostHostGate). The call
// itself returns at once.
Status AddHostGate(const StreamTarget& target, ferry::client::Connection::HostFunction fn) {
  return Runtime::Get()
      .ConnectionOf(target.ctx)
      .PostHostGate(
          [&](wire::Call::Builder call) {
            auto args = call.initHostGate();
            SetStreamTarget(args, target);
          },
          std::move(fn));
}

// On a capturing stream the function becomes a host node of the capture
// (CaptureHostFunc).
Status LaunchHostFunc(CUstream stream, CUhostFn fn, void* user_data, bool per_thread) {
  if (fn == nullptr) return Status::InvalidArgument("cuLaunchHostFunc: fn is NULL");
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(Runtime::Get().ResolveStream(stream, per_thread, &target));
  bool captured = false;
  FERRY_RETURN_IF_ERROR(CaptureHostFunc(target, fn, user_data, &captured));
  if (captured) return Status::Ok();
  return AddHostGate(target, LaunchedHostFunction(fn, user_data));
}

// The callback always runs, with the stream's status: CUDA_SUCCESS, the
// stream's failure, or the asynchronous error latched so far.
Status StreamAddCallback(CUstream stream, CUstreamCallback callback, void* user_data,
                         unsigned flags, bool per_thread) {
  if (callback == nullptr) return Status::InvalidArgument("cuStreamAddCallback: callback is NULL");
  if (flags != 0) return Status::InvalidArgument("cuStreamAddCallback: flags must be 0");
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(Runtime::Get().ResolveStream(stream, per_thread, &target));
  return AddHostGate(target, [stream, callback, user_data](const Status& status, bool) {
    callback(stream, ferry::client::ToCuResult(status), user_data);
  });
}

Status StreamOf(CUstream stream, ferry::client::StreamState* state) {
  FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
  const uint64_t id = Runtime::HandleId(stream);
  if (id == 0 || stream == CU_STREAM_LEGACY || stream == CU_STREAM_PER_THREAD) {
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().CurrentContext(&ctx));
    *state = ferry::client::StreamState{ctx, 0, 0};
    return Status::Ok();
  }
  return Runtime::Get().streams().FindStream(id, state);
}

// The cuStreamGet* entry points that read the stream's state: fails when
// `out` (named `name` in the message) is NULL, else `*out = get(state)`.
template <typename T, typename Get>
CUresult GetStreamProperty(CUstream stream, T* out, const char* name, Get get) {
  return Api([&]() -> Status {
    if (out == nullptr) return Status::InvalidArgument(std::string(name) + " is NULL");
    ferry::client::StreamState state;
    FERRY_RETURN_IF_ERROR(StreamOf(stream, &state));
    *out = get(state);
    return Status::Ok();
  });
}

// cuEventSynchronize (`query` false) and cuEventQuery (`query` true): one
// call that waits for the server. Reached, a queried event is ready once the
// copies its record depends on have landed (those queued before it on its
// stream and, through event waits, on others; as for cuStreamQuery); a record
// another thread issued after the query is not what the server answered
// about.
Status SynchronizeOrQueryEvent(CUevent event, bool query) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  const uint64_t id = Runtime::HandleId(event);
  ferry::client::EventState state;
  FERRY_RETURN_IF_ERROR(rt.streams().FindEvent(id, &state));
  uint64_t seq = 0;
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(state.ctx).Call(
      [&](wire::Call::Builder call) {
        wire::EventRef::Builder args = query ? call.initEventQuery() : call.initEventSynchronize();
        args.setEvent(id);
      },
      {}, {}, nullptr, &seq));
  if (!query) return rt.AfterSynchronize(state.ctx, seq);
  FERRY_RETURN_IF_ERROR(rt.streams().FindEvent(id, &state));
  if (state.recorded_seq == 0 || state.recorded_seq > seq) return Status::Ok();
  return rt.ConnectionOf(state.ctx).WaitForCopies(state.copies);
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuStreamCreate(CUstream* phStream, unsigned int Flags) {
  return Api([&] { return CreateStream(phStream, Flags, 0); });
}

CUresult CUDAAPI cuStreamCreateWithPriority(CUstream* phStream, unsigned int flags, int priority) {
  return Api([&] { return CreateStream(phStream, flags, priority); });
}

CUresult CUDAAPI cuStreamDestroy_v2(CUstream hStream) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t id = Runtime::HandleId(hStream);
    ferry::client::StreamState removed;
    FERRY_RETURN_IF_ERROR(rt.streams().RemoveStream(id, &removed));
    rt.graphs().ForgetStream(id);  // a capture it began ends with it
    return rt.ConnectionOf(removed.ctx).Post([&](wire::Call::Builder call) {
      auto args = call.initStreamDestroy();
      args.setCtx(removed.ctx);
      args.setStream(id);
    });
  });
}

CUresult CUDAAPI cuStreamSynchronize(CUstream hStream) {
  return Api([&] { return SynchronizeOrQueryStream(hStream, false, false); });
}
CUresult CUDAAPI cuStreamSynchronize_ptsz(CUstream hStream) {
  return Api([&] { return SynchronizeOrQueryStream(hStream, true, false); });
}

CUresult CUDAAPI cuStreamQuery(CUstream hStream) {
  return Api([&] { return SynchronizeOrQueryStream(hStream, false, true); });
}
CUresult CUDAAPI cuStreamQuery_ptsz(CUstream hStream) {
  return Api([&] { return SynchronizeOrQueryStream(hStream, true, true); });
}

CUresult CUDAAPI cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags) {
  return Api([&] { return StreamWaitEvent(hStream, hEvent, Flags, false); });
}
CUresult CUDAAPI cuStreamWaitEvent_ptsz(CUstream hStream, CUevent hEvent, unsigned int Flags) {
  return Api([&] { return StreamWaitEvent(hStream, hEvent, Flags, true); });
}

CUresult CUDAAPI cuLaunchHostFunc(CUstream hStream, CUhostFn fn, void* userData) {
  return Api([&] { return LaunchHostFunc(hStream, fn, userData, false); });
}
CUresult CUDAAPI cuLaunchHostFunc_ptsz(CUstream hStream, CUhostFn fn, void* userData) {
  return Api([&] { return LaunchHostFunc(hStream, fn, userData, true); });
}

CUresult CUDAAPI cuStreamAddCallback(CUstream hStream, CUstreamCallback callback, void* userData,
                                     unsigned int flags) {
  return Api([&] { return StreamAddCallback(hStream, callback, userData, flags, false); });
}
CUresult CUDAAPI cuStreamAddCallback_ptsz(CUstream hStream, CUstreamCallback callback,
                                          void* userData, unsigned int flags) {
  return Api([&] { return StreamAddCallback(hStream, callback, userData, flags, true); });
}

CUresult CUDAAPI cuStreamGetPriority(CUstream hStream, int* priority) {
  return GetStreamProperty(hStream, priority, "priority",
                           [](const ferry::client::StreamState& state) { return state.priority; });
}
CUresult CUDAAPI cuStreamGetPriority_ptsz(CUstream hStream, int* priority) {
  return cuStreamGetPriority(hStream, priority);
}

CUresult CUDAAPI cuStreamGetFlags(CUstream hStream, unsigned int* flags) {
  return GetStreamProperty(hStream, flags, "flags",
                           [](const ferry::client::StreamState& state) { return state.flags; });
}
CUresult CUDAAPI cuStreamGetFlags_ptsz(CUstream hStream, unsigned int* flags) {
  return cuStreamGetFlags(hStream, flags);
}

CUresult CUDAAPI cuStreamGetCtx(CUstream hStream, CUcontext* pctx) {
  return GetStreamProperty(hStream, pctx, "pctx", [](const ferry::client::StreamState& state) {
    return Runtime::ToHandle<CUcontext>(state.ctx);
  });
}
CUresult CUDAAPI cuStreamGetCtx_ptsz(CUstream hStream, CUcontext* pctx) {
  return cuStreamGetCtx(hStream, pctx);
}

CUresult CUDAAPI cuStreamGetId(CUstream hStream, unsigned long long* streamId) {
  return GetStreamProperty(hStream, streamId, "streamId",
                           [hStream](const ferry::client::StreamState&) {
                             return Runtime::HandleId(hStream) & 0xffffffffffffull;
                           });
}
CUresult CUDAAPI cuStreamGetId_ptsz(CUstream hStream, unsigned long long* streamId) {
  return cuStreamGetId(hStream, streamId);
}

CUresult CUDAAPI cuStreamGetDevice(CUstream hStream, CUdevice* device) {
  return Api([&]() -> Status {
    if (device == nullptr) return Status::InvalidArgument("device is NULL");
    ferry::client::StreamState state;
    FERRY_RETURN_IF_ERROR(StreamOf(hStream, &state));
    int d = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().contexts().Device(state.ctx, &d));
    *device = d;
    return Status::Ok();
  });
}
CUresult CUDAAPI cuStreamGetDevice_ptsz(CUstream hStream, CUdevice* device) {
  return cuStreamGetDevice(hStream, device);
}

CUresult CUDAAPI cuEventCreate(CUevent* phEvent, unsigned int Flags) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    if (phEvent == nullptr) return Status::InvalidArgument("phEvent is NULL");
    constexpr unsigned kKnown =
        CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;
    if ((Flags & ~kKnown) != 0) return Status::InvalidArgument("unknown event flags");
    if (Flags & CU_EVENT_INTERPROCESS) {
      return Status::Unimplemented("interprocess events are not supported by ferry");
    }
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(rt.streams().AddEvent(ctx, Flags, &id));
    FERRY_RETURN_IF_ERROR(rt.ConnectionOf(ctx).Post([&](wire::Call::Builder call) {
      auto args = call.initEventCreate();
      args.setCtx(ctx);
      args.setEvent(id);
      args.setFlags(Flags);
    }));
    *phEvent = Runtime::ToHandle<CUevent>(id);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuEventRecord(CUevent hEvent, CUstream hStream) {
  return Api([&] { return RecordEvent(hEvent, hStream, CU_EVENT_RECORD_DEFAULT, false); });
}
CUresult CUDAAPI cuEventRecord_ptsz(CUevent hEvent, CUstream hStream) {
  return Api([&] { return RecordEvent(hEvent, hStream, CU_EVENT_RECORD_DEFAULT, true); });
}
CUresult CUDAAPI cuEventRecordWithFlags(CUevent hEvent, CUstream hStream, unsigned int flags) {
  return Api([&] { return RecordEvent(hEvent, hStream, flags, false); });
}
CUresult CUDAAPI cuEventRecordWithFlags_ptsz(CUevent hEvent, CUstream hStream, unsigned int flags) {
  return Api([&] { return RecordEvent(hEvent, hStream, flags, true); });
}

CUresult CUDAAPI cuEventQuery(CUevent hEvent) {
  return Api([&] { return SynchronizeOrQueryEvent(hEvent, true); });
}

CUresult CUDAAPI cuEventSynchronize(CUevent hEvent) {
  return Api([&] { return SynchronizeOrQueryEvent(hEvent, false); });
}

CUresult CUDAAPI cuEventElapsedTime_v2(float* pMilliseconds, CUevent hStart, CUevent hEnd) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    if (pMilliseconds == nullptr) return Status::InvalidArgument("pMilliseconds is NULL");
    FERRY_RETURN_IF_ERROR(rt.Ready());
    ferry::client::EventState start, end;
    FERRY_RETURN_IF_ERROR(rt.streams().FindEvent(Runtime::HandleId(hStart), &start));
    FERRY_RETURN_IF_ERROR(rt.streams().FindEvent(Runtime::HandleId(hEnd), &end));
    if (!rt.SameSession(start.ctx, end.ctx)) {
      return Status::InvalidHandle(
          "cuEventElapsedTime: the events are on devices of different servers (no common clock)");
    }
    return rt.ConnectionOf(start.ctx).Call(
        [&](wire::Call::Builder call) {
          auto args = call.initEventElapsedTime();
          args.setStart(Runtime::HandleId(hStart));
          args.setEnd(Runtime::HandleId(hEnd));
        },
        {}, {},
        [&](wire::Reply::Reader reply) {
          *pMilliseconds = reply.getElapsedMs();
          return Status::Ok();
        });
  });
}

CUresult CUDAAPI cuEventElapsedTime(float* pMilliseconds, CUevent hStart, CUevent hEnd) {
  return cuEventElapsedTime_v2(pMilliseconds, hStart, hEnd);
}

CUresult CUDAAPI cuEventDestroy_v2(CUevent hEvent) {
  return Api([&] {
    return DestroyHandle(
        hEvent,
        [](Runtime& rt, uint64_t id) {
          rt.graphs().ForgetEvent(id);
          return rt.streams().RemoveEvent(id);
        },
        [](wire::Call::Builder call, uint64_t id) { call.initEventDestroy().setEvent(id); });
  });
}

}  // extern "C"
