// Entry points: peers (cuDeviceCanAccessPeer, cuDeviceGetP2PAttribute,
// cuCtxEnablePeerAccess/cuCtxDisablePeerAccess, cuMemcpyPeer(Async)).
//
// Whether one device can access another, and its P2P attributes, never
// change, so each is asked of the server once per pair. Peer access is state per context pair, kept
// here as well as on the server, so that the errors the driver gives at once (already enabled, not
// enabled, unsupported, same device) are given at once here too, and the calls themselves do not
// wait (README.md invariant 3). cuMemcpyPeer is queued on the current context's legacy stream
// (ordered on the server with the legacy streams of both contexts as well); cuMemcpyPeerAsync on
// the stream given.
//
// Thread-safety: every entry point may be called from any thread.
#include <cuda.h>

#include <string>

#include "client/across_servers.h"
#include "client/entry_point.h"

namespace {

// Whether `device` can access `peer`'s memory: the server's answer, kept.
Status CanAccessPeer(Runtime& rt, int device, int peer, int* can_access) {
  FERRY_RETURN_IF_ERROR(rt.Ready());
  FERRY_RETURN_IF_ERROR(rt.CheckDevice(device));
  FERRY_RETURN_IF_ERROR(rt.CheckDevice(peer));
  if (device == peer) {
    *can_access = 0;
    return Status::Ok();
  }
  if (rt.PartOfDevice(device) != rt.PartOfDevice(peer)) {
    // Devices of different servers: no kernel reaches the other's memory
    // (copies between them pass through this host).
    *can_access = 0;
    return Status::Ok();
  }
  constexpr int kWhat = ferry::client::ContextRegistry::kCanAccessPeer;
  if (rt.contexts().PeerFact(device, peer, kWhat, can_access)) return Status::Ok();
  int value = 0;
  FERRY_RETURN_IF_ERROR(rt.DeviceConnection(device).Call(
      [&](wire::Call::Builder call) {
        auto args = call.initDeviceCanAccessPeer();
        args.setDevice(rt.ServerOrdinal(device));
        args.setPeer(rt.ServerOrdinal(peer));
      },
      {}, {},
      [&](wire::Reply::Reader reply) {
        value = static_cast<int>(reply.getValue());
        return Status::Ok();
      }));
  rt.contexts().NotePeerFact(device, peer, kWhat, value);
  *can_access = value;
  return Status::Ok();
}

// A context handle the program passed: recorded, and created on the server.
Status PeerContext(Runtime& rt, CUcontext handle, uint64_t* ctx) {
  *ctx = Runtime::HandleId(handle);
  if (*ctx == 0) return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "the context is NULL");
  FERRY_RETURN_IF_ERROR(rt.contexts().Check(*ctx));
  return rt.EnsureLive(*ctx);
}

// `enable`: cuCtxEnablePeerAccess, else cuCtxDisablePeerAccess.
Status SetPeerAccess(CUcontext peer_handle, unsigned flags, bool enable) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  uint64_t ctx = 0, peer = 0;
  FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
  FERRY_RETURN_IF_ERROR(PeerContext(rt, peer_handle, &peer));
  if (enable) {
    if (flags != 0) return Status::InvalidArgument("cuCtxEnablePeerAccess: flags must be 0");
    int device = 0, peer_device = 0;
    FERRY_RETURN_IF_ERROR(rt.contexts().Device(ctx, &device));
    FERRY_RETURN_IF_ERROR(rt.contexts().Device(peer, &peer_device));
    int can_access = 0;
    FERRY_RETURN_IF_ERROR(CanAccessPeer(rt, device, peer_device, &can_access));
    if (can_access == 0) {
      return Status::Cuda(CUDA_ERROR_PEER_ACCESS_UNSUPPORTED,
                          "device " + std::to_string(device) + " cannot access device " +
                              std::to_string(peer_device) + "'s memory");
    }
    FERRY_RETURN_IF_ERROR(rt.contexts().EnablePeer(ctx, peer));
  } else {
    FERRY_RETURN_IF_ERROR(rt.contexts().DisablePeer(ctx, peer));
  }
  return rt.ConnectionOf(ctx).Post([&](wire::Call::Builder call) {
    auto args = enable ? call.initCtxEnablePeerAccess() : call.initCtxDisablePeerAccess();
    args.setCtx(ctx);
    args.setPeer(peer);
    args.setFlags(flags);
  });
}

// cuMemcpyPeer (`async` false: `stream` is ignored, the current context's
// legacy stream is used) and cuMemcpyPeerAsync.
Status CopyPeer(CUdeviceptr dst, CUcontext dst_handle, CUdeviceptr src, CUcontext src_handle,
                size_t bytes, CUstream stream, bool per_thread, bool async) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(async ? stream : nullptr, per_thread, &target));
  uint64_t dst_ctx = 0, src_ctx = 0;
  FERRY_RETURN_IF_ERROR(PeerContext(rt, dst_handle, &dst_ctx));
  FERRY_RETURN_IF_ERROR(PeerContext(rt, src_handle, &src_ctx));
  if (bytes == 0) return Status::Ok();
  FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice(src, bytes, "source"));
  FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice(dst, bytes, "destination"));
  if (!rt.SameSession(dst_ctx, src_ctx)) {
    return ferry::client::CopyBetweenServers(dst_ctx, dst, src_ctx, src, bytes, target);
  }
  return ferry::client::OnOwnersServer(target, dst_ctx, [&](const StreamTarget& on) {
    return rt.ConnectionOf(on.ctx).Post([&](wire::Call::Builder call) {
      auto args = call.initMemcpyPeer();
      SetStreamTarget(args, on);
      args.setDst(dst);
      args.setDstCtx(dst_ctx);
      args.setSrc(src);
      args.setSrcCtx(src_ctx);
      args.setBytes(bytes);
      args.setSynchronous(!async);
    });
  });
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuDeviceCanAccessPeer(int* canAccessPeer, CUdevice dev, CUdevice peerDev) {
  return Api([&]() -> Status {
    if (canAccessPeer == nullptr) return Status::InvalidArgument("canAccessPeer is NULL");
    return CanAccessPeer(Runtime::Get(), dev, peerDev, canAccessPeer);
  });
}

CUresult CUDAAPI cuDeviceGetP2PAttribute(int* value, CUdevice_P2PAttribute attrib,
                                         CUdevice srcDevice, CUdevice dstDevice) {
  return Api([&]() -> Status {
    if (value == nullptr) return Status::InvalidArgument("value is NULL");
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    FERRY_RETURN_IF_ERROR(rt.CheckDevice(srcDevice));
    FERRY_RETURN_IF_ERROR(rt.CheckDevice(dstDevice));
    if (srcDevice == dstDevice) {
      return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "a P2P attribute needs two devices");
    }
    // A fact of the device pair: asked of the server once.
    const int what = static_cast<int>(attrib);
    if (rt.PartOfDevice(srcDevice) != rt.PartOfDevice(dstDevice)) {
      *value = 0;  // devices of different servers: no peer access, no atomics
      return Status::Ok();
    }
    if (rt.contexts().PeerFact(srcDevice, dstDevice, what, value)) return Status::Ok();
    FERRY_RETURN_IF_ERROR(rt.DeviceConnection(srcDevice).Call(
        [&](wire::Call::Builder call) {
          auto args = call.initDeviceGetP2PAttribute();
          args.setDevice(rt.ServerOrdinal(srcDevice));
          args.setPeer(rt.ServerOrdinal(dstDevice));
          args.setAttribute(what);
        },
        {}, {},
        [&](wire::Reply::Reader reply) {
          *value = static_cast<int>(reply.getValue());
          return Status::Ok();
        }));
    rt.contexts().NotePeerFact(srcDevice, dstDevice, what, *value);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuCtxEnablePeerAccess(CUcontext peerContext, unsigned int Flags) {
  return Api([&] { return SetPeerAccess(peerContext, Flags, true); });
}

CUresult CUDAAPI cuCtxDisablePeerAccess(CUcontext peerContext) {
  return Api([&] { return SetPeerAccess(peerContext, 0, false); });
}

CUresult CUDAAPI cuMemcpyPeer(CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr srcDevice,
                              CUcontext srcContext, size_t ByteCount) {
  return Api([&] {
    return CopyPeer(dstDevice, dstContext, srcDevice, srcContext, ByteCount, nullptr, false, false);
  });
}
CUresult CUDAAPI cuMemcpyPeer_ptds(CUdeviceptr dstDevice, CUcontext dstContext,
                                   CUdeviceptr srcDevice, CUcontext srcContext, size_t ByteCount) {
  return Api([&] {
    return CopyPeer(dstDevice, dstContext, srcDevice, srcContext, ByteCount, nullptr, true, false);
  });
}

CUresult CUDAAPI cuMemcpyPeerAsync(CUdeviceptr dstDevice, CUcontext dstContext,
                                   CUdeviceptr srcDevice, CUcontext srcContext, size_t ByteCount,
                                   CUstream hStream) {
  return Api([&] {
    return CopyPeer(dstDevice, dstContext, srcDevice, srcContext, ByteCount, hStream, false, true);
  });
}
CUresult CUDAAPI cuMemcpyPeerAsync_ptsz(CUdeviceptr dstDevice, CUcontext dstContext,
                                        CUdeviceptr srcDevice, CUcontext srcContext,
                                        size_t ByteCount, CUstream hStream) {
  return Api([&] {
    return CopyPeer(dstDevice, dstContext, srcDevice, srcContext, ByteCount, hStream, true, true);
  });
}

}  // extern "C"
