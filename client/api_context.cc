// Entry points: primary contexts and cuCtx*.
// The current-context stack lives on the client (per thread, as in CUDA);
// only creation, destruction, synchronisation, limits and the persisting-L2
// reset reach the server.
#include <cuda.h>

#include "client/entry_point.h"

namespace {

uint64_t Id(CUcontext ctx) { return Runtime::HandleId(ctx); }

// `ctx` or, when NULL, the current context.
Status ContextOrCurrent(CUcontext ctx, uint64_t* id) {
  Runtime& rt = Runtime::Get();
  if (ctx == nullptr) return rt.CurrentContext(id);
  FERRY_RETURN_IF_ERROR(rt.Ready());
  FERRY_RETURN_IF_ERROR(rt.contexts().Check(Id(ctx)));
  FERRY_RETURN_IF_ERROR(rt.EnsureLive(Id(ctx)));
  *id = Id(ctx);
  return Status::Ok();
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext* pctx, CUdevice dev) {
  return Api([&]() -> Status {
    if (pctx == nullptr) return Status::InvalidArgument("pctx is NULL");
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().RetainPrimary(dev, &id));
    *pctx = Runtime::ToHandle<CUcontext>(id);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  return Api([&] { return Runtime::Get().ReleasePrimary(dev); });
}
CUresult CUDAAPI cuDevicePrimaryCtxRelease(CUdevice dev) {
  return cuDevicePrimaryCtxRelease_v2(dev);
}

CUresult CUDAAPI cuDevicePrimaryCtxReset_v2(CUdevice dev) {
  return Api([&] { return Runtime::Get().ResetPrimary(dev); });
}
CUresult CUDAAPI cuDevicePrimaryCtxReset(CUdevice dev) { return cuDevicePrimaryCtxReset_v2(dev); }

CUresult CUDAAPI cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags) {
  return Api([&] { return Runtime::Get().SetPrimaryFlags(dev, flags); });
}
CUresult CUDAAPI cuDevicePrimaryCtxSetFlags(CUdevice dev, unsigned int flags) {
  return cuDevicePrimaryCtxSetFlags_v2(dev, flags);
}

CUresult CUDAAPI cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int* flags, int* active) {
  return Api([&]() -> Status {
    if (flags == nullptr || active == nullptr) return Status::InvalidArgument("NULL output");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    FERRY_RETURN_IF_ERROR(Runtime::Get().CheckDevice(dev));
    Runtime::Get().PrimaryState(dev, flags, active);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuCtxCreate_v2(CUcontext* pctx, unsigned int flags, CUdevice dev) {
  return Api([&]() -> Status {
    if (pctx == nullptr) return Status::InvalidArgument("pctx is NULL");
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().CreateContext(dev, flags, &id));
    *pctx = Runtime::ToHandle<CUcontext>(id);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuCtxCreate_v3(CUcontext* pctx, CUexecAffinityParam* paramsArray, int numParams,
                                unsigned int flags, CUdevice dev) {
  if (numParams > 0 || paramsArray != nullptr)
    return ferry::client::Unsupported("cuCtxCreate_v3 (execution affinity)");
  return cuCtxCreate_v2(pctx, flags, dev);
}

CUresult CUDAAPI cuCtxCreate_v4(CUcontext* pctx, CUctxCreateParams* params, unsigned int flags,
                                CUdevice dev) {
  if (params != nullptr &&
      (params->execAffinityParams != nullptr || params->cigParams != nullptr)) {
    return ferry::client::Unsupported("cuCtxCreate_v4 (execution affinity or CIG parameters)");
  }
  return cuCtxCreate_v2(pctx, flags, dev);
}

CUresult CUDAAPI cuCtxDestroy_v2(CUcontext ctx) {
  return Api([&]() -> Status {
    if (ctx == nullptr) return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "ctx is NULL");
    return Runtime::Get().DestroyContext(Id(ctx));
  });
}

CUresult CUDAAPI cuCtxPushCurrent_v2(CUcontext ctx) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    if (ctx == nullptr) return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "ctx is NULL");
    FERRY_RETURN_IF_ERROR(rt.contexts().Check(Id(ctx)));
    rt.PushCurrent(Id(ctx));
    return Status::Ok();
  });
}

CUresult CUDAAPI cuCtxPopCurrent_v2(CUcontext* pctx) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    if (rt.CurrentContextId() == 0)
      return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "no current context");
    const uint64_t popped = rt.PopCurrent();
    if (pctx != nullptr) *pctx = Runtime::ToHandle<CUcontext>(popped);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuCtxSetCurrent(CUcontext ctx) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    if (ctx != nullptr) FERRY_RETURN_IF_ERROR(rt.contexts().Check(Id(ctx)));
    rt.SetCurrent(Id(ctx));
    return Status::Ok();
  });
}

CUresult CUDAAPI cuCtxGetCurrent(CUcontext* pctx) {
  return Api([&]() -> Status {
    if (pctx == nullptr) return Status::InvalidArgument("pctx is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    *pctx = Runtime::ToHandle<CUcontext>(Runtime::Get().CurrentContextId());
    return Status::Ok();
  });
}

CUresult CUDAAPI cuCtxGetDevice(CUdevice* device) {
  return Api([&]() -> Status {
    if (device == nullptr) return Status::InvalidArgument("device is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    const uint64_t ctx = Runtime::Get().CurrentContextId();
    if (ctx == 0) return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "no current context");
    int d = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().contexts().Device(ctx, &d));
    *device = d;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuCtxGetDevice_v2(CUdevice* device, CUcontext ctx) {
  return Api([&]() -> Status {
    if (device == nullptr) return Status::InvalidArgument("device is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    const uint64_t id = ctx != nullptr ? Id(ctx) : Runtime::Get().CurrentContextId();
    if (id == 0) return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "no current context");
    int d = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().contexts().Device(id, &d));
    *device = d;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuCtxSynchronize(void) {
  return Api([&]() -> Status {
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().CurrentContext(&ctx));
    return Runtime::Get().SynchronizeContext(ctx);
  });
}

CUresult CUDAAPI cuCtxSynchronize_v2(CUcontext ctx) {
  return Api([&]() -> Status {
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(ContextOrCurrent(ctx, &id));
    return Runtime::Get().SynchronizeContext(id);
  });
}

CUresult CUDAAPI cuCtxSetLimit(CUlimit limit, size_t value) {
  return Api([&]() -> Status {
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().CurrentContext(&ctx));
    return Runtime::Get().ConnectionOf(ctx).Call([&](ferry::wire::Call::Builder call) {
      auto args = call.initCtxSetLimit();
      args.setCtx(ctx);
      args.setLimit(static_cast<uint32_t>(limit));
      args.setValue(value);
    });
  });
}

// Fire and forget, as CUDA queues the reset behind the context's work; an
// error is reported by the next call that waits.
CUresult CUDAAPI cuCtxResetPersistingL2Cache() {
  return Api([&]() -> Status {
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().CurrentContext(&ctx));
    return Runtime::Get().ConnectionOf(ctx).Post(
        [&](ferry::wire::Call::Builder call) { call.initCtxResetPersistingL2Cache().setCtx(ctx); });
  });
}

CUresult CUDAAPI cuCtxGetLimit(size_t* pvalue, CUlimit limit) {
  return Api([&]() -> Status {
    if (pvalue == nullptr) return Status::InvalidArgument("pvalue is NULL");
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().CurrentContext(&ctx));
    return Runtime::Get().ConnectionOf(ctx).Call(
        [&](ferry::wire::Call::Builder call) {
          auto args = call.initCtxGetLimit();
          args.setCtx(ctx);
          args.setLimit(static_cast<uint32_t>(limit));
        },
        {}, {},
        [&](ferry::wire::Reply::Reader reply) {
          *pvalue = static_cast<size_t>(reply.getValue());
          return Status::Ok();
        });
  });
}

CUresult CUDAAPI cuCtxGetFlags(unsigned int* flags) {
  return Api([&]() -> Status {
    if (flags == nullptr) return Status::InvalidArgument("flags is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    const uint64_t ctx = Runtime::Get().CurrentContextId();
    if (ctx == 0) return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "no current context");
    return Runtime::Get().contexts().Flags(ctx, flags);
  });
}

CUresult CUDAAPI cuCtxGetApiVersion(CUcontext ctx, unsigned int* version) {
  return Api([&]() -> Status {
    if (version == nullptr) return Status::InvalidArgument("version is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    const uint64_t id = ctx != nullptr ? Id(ctx) : Runtime::Get().CurrentContextId();
    if (id == 0) return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "no current context");
    FERRY_RETURN_IF_ERROR(Runtime::Get().contexts().Check(id));
    *version = 3020;  // the context API generation of every context since CUDA 3.2
    return Status::Ok();
  });
}

CUresult CUDAAPI cuCtxGetId(CUcontext ctx, unsigned long long* ctxId) {
  return Api([&]() -> Status {
    if (ctxId == nullptr) return Status::InvalidArgument("ctxId is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    const uint64_t id = ctx != nullptr ? Id(ctx) : Runtime::Get().CurrentContextId();
    if (id == 0) return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "no current context");
    FERRY_RETURN_IF_ERROR(Runtime::Get().contexts().Check(id));
    *ctxId = id & 0xffffffffffffull;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuCtxGetStreamPriorityRange(int* leastPriority, int* greatestPriority) {
  return Api([&]() -> Status {
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().CurrentContext(&ctx));
    // The range CUDA reports on current GPUs; priorities are passed through.
    if (leastPriority != nullptr) *leastPriority = 0;
    if (greatestPriority != nullptr) *greatestPriority = -5;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuCtxGetCacheConfig(CUfunc_cache* config) {
  return Api([&]() -> Status {
    if (config == nullptr) return Status::InvalidArgument("config is NULL");
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().CurrentContext(&ctx));
    *config = CU_FUNC_CACHE_PREFER_NONE;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuCtxSetCacheConfig(CUfunc_cache config) {
  return Api([&]() -> Status {
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(Runtime::Get().CurrentContext(&ctx));
    // A preference only: the driver may ignore it, and so does ferry.
    if (config < CU_FUNC_CACHE_PREFER_NONE || config > CU_FUNC_CACHE_PREFER_EQUAL) {
      return Status::InvalidArgument("bad cache config");
    }
    return Status::Ok();
  });
}

}  // extern "C"
