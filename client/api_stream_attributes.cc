// Entry points: stream attributes (cuStreamSetAttribute, cuStreamGetAttribute,
// cuStreamCopyAttributes): the access policy window and the synchronization
// policy; and context-wide events (cuCtxRecordEvent, cuCtxWaitEvent). The server keeps them (so a
// get is a round trip, and a copy between streams needs none) and hands them to its driver; setting
// one returns only a status, so it is posted (README.md invariant 3).
#include <cuda.h>

#include "client/entry_point.h"

namespace {

Status CheckAttribute(CUstreamAttrID attr) {
  if (attr == CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW ||
      attr == CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY) {
    return Status::Ok();
  }
  return Status::Unimplemented("stream attribute " + std::to_string(attr) +
                               " is not supported by ferry (only the access policy window and "
                               "the synchronization policy are)");
}

// What cuStreamGetAttribute and cuStreamSetAttribute check first, in order:
// the runtime is ready, `value` is not NULL, `attr` is supported, and
// `stream` resolves (to *target).
Status ResolveAttributeCall(CUstream stream, CUstreamAttrID attr, const CUstreamAttrValue* value,
                            bool per_thread, StreamTarget* target) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  if (value == nullptr) return Status::InvalidArgument("value is NULL");
  FERRY_RETURN_IF_ERROR(CheckAttribute(attr));
  return rt.ResolveStream(stream, per_thread, target);
}

Status SetAttribute(CUstream stream, CUstreamAttrID attr, const CUstreamAttrValue* value,
                    bool per_thread) {
  Runtime& rt = Runtime::Get();
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(ResolveAttributeCall(stream, attr, value, per_thread, &target));
  const CUaccessPolicyWindow& window = value->accessPolicyWindow;
  const uint64_t base = reinterpret_cast<uint64_t>(window.base_ptr);
  if (attr == CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW && window.num_bytes > 0) {
    FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice(base, window.num_bytes, "window"));
  }
  return rt.ConnectionOf(target.ctx).Post([&](wire::Call::Builder call) {
    auto args = call.initStreamSetAttribute();
    SetStreamTarget(args, target);
    args.setAttribute(attr);
    if (attr == CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW) {
      args.setWindowBase(base);
      args.setWindowBytes(window.num_bytes);
      args.setHitRatio(window.hitRatio);
      args.setHitProp(window.hitProp);
      args.setMissProp(window.missProp);
    } else {
      args.setValue(value->syncPolicy);
    }
  });
}

Status GetAttribute(CUstream stream, CUstreamAttrID attr, CUstreamAttrValue* value,
                    bool per_thread) {
  Runtime& rt = Runtime::Get();
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(ResolveAttributeCall(stream, attr, value, per_thread, &target));
  return rt.ConnectionOf(target.ctx)
      .Call(
          [&](wire::Call::Builder call) {
            auto args = call.initStreamGetAttribute();
            SetStreamTarget(args, target);
            args.setAttribute(attr);
          },
          {}, {},
          [&](wire::Reply::Reader reply) {
            if (!reply.isStreamAttribute()) return Status::Internal("no stream attribute in reply");
            auto got = reply.getStreamAttribute();
            if (attr == CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW) {
              CUaccessPolicyWindow& window = value->accessPolicyWindow;
              window.base_ptr = reinterpret_cast<void*>(got.getWindowBase());
              window.num_bytes = got.getWindowBytes();
              window.hitRatio = got.getHitRatio();
              window.hitProp = static_cast<CUaccessProperty>(got.getHitProp());
              window.missProp = static_cast<CUaccessProperty>(got.getMissProp());
            } else {
              value->syncPolicy = static_cast<CUsynchronizationPolicy>(got.getValue());
            }
            return Status::Ok();
          });
}

Status CopyAttributes(CUstream dst, CUstream src, bool per_thread) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  StreamTarget to, from;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(dst, per_thread, &to));
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(src, per_thread, &from));
  if (!rt.SameSession(to.ctx, from.ctx)) {
    return Status::InvalidHandle("the streams are on devices of different servers");
  }
  return rt.ConnectionOf(to.ctx).Post([&](wire::Call::Builder call) {
    auto args = call.initStreamCopyAttributes();
    args.setDstCtx(to.ctx);
    args.setDst(to.stream);
    args.setSrcCtx(from.ctx);
    args.setSrc(from.stream);
  });
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuStreamSetAttribute(CUstream hStream, CUstreamAttrID attr,
                                      const CUstreamAttrValue* value) {
  return Api([&] { return SetAttribute(hStream, attr, value, false); });
}
CUresult CUDAAPI cuStreamSetAttribute_ptsz(CUstream hStream, CUstreamAttrID attr,
                                           const CUstreamAttrValue* value) {
  return Api([&] { return SetAttribute(hStream, attr, value, true); });
}
CUresult CUDAAPI cuStreamGetAttribute(CUstream hStream, CUstreamAttrID attr,
                                      CUstreamAttrValue* value) {
  return Api([&] { return GetAttribute(hStream, attr, value, false); });
}
CUresult CUDAAPI cuStreamGetAttribute_ptsz(CUstream hStream, CUstreamAttrID attr,
                                           CUstreamAttrValue* value) {
  return Api([&] { return GetAttribute(hStream, attr, value, true); });
}
CUresult CUDAAPI cuStreamCopyAttributes(CUstream dst, CUstream src) {
  return Api([&] { return CopyAttributes(dst, src, false); });
}
CUresult CUDAAPI cuStreamCopyAttributes_ptsz(CUstream dst, CUstream src) {
  return Api([&] { return CopyAttributes(dst, src, true); });
}

}  // extern "C"

// --- context-wide events ----------------------------------------------------------
// cuCtxRecordEvent / cuCtxWaitEvent: posted (README.md invariant 3); the event
// must belong to the context (INVALID_HANDLE otherwise, as the driver says).

namespace {

Status ContextEvent(CUcontext hCtx, CUevent hEvent, bool record) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  uint64_t ctx = Runtime::HandleId(hCtx);
  if (ctx == 0) {
    FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
  } else {
    FERRY_RETURN_IF_ERROR(rt.contexts().Check(ctx));
    FERRY_RETURN_IF_ERROR(rt.EnsureLive(ctx));
  }
  const uint64_t event = Runtime::HandleId(hEvent);
  ferry::client::EventState state;
  FERRY_RETURN_IF_ERROR(rt.streams().FindEvent(event, &state));
  if (state.ctx != ctx) return Status::InvalidHandle("the event belongs to another context");
  uint64_t seq = 0;
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(ctx).Post(
      [&](wire::Call::Builder call) {
        auto args = record ? call.initCtxRecordEvent() : call.initCtxWaitEvent();
        args.setCtx(ctx);
        args.setEvent(event);
      },
      {}, &seq));
  // A query that finds the record done waits for the asynchronous copies
  // queued before it on the context's legacy stream (those on its other
  // streams land by the next synchronizing call).
  if (record) rt.streams().NoteEventRecord(event, ferry::client::StreamKey{ctx, 0}, seq);
  return Status::Ok();
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuCtxRecordEvent(CUcontext hCtx, CUevent hEvent) {
  return Api([&] { return ContextEvent(hCtx, hEvent, true); });
}
CUresult CUDAAPI cuCtxWaitEvent(CUcontext hCtx, CUevent hEvent) {
  return Api([&] { return ContextEvent(hCtx, hEvent, false); });
}

}  // extern "C"
