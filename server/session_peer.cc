// Session handlers for peers: whether one of the session's devices can reach
// another's memory, peer access between contexts (state kept per context
// pair, so "already enabled" and "not enabled" are answered alike on every
// backend), and copies between the memories of two contexts' devices. Every
// device index, context and device range is the session's own (README.md
// invariant 6).

#include <cuda.h>

#include <string>
#include <vector>

#include "server/session.h"
#include "server/session_internal.h"

namespace ferry::server {

using session_internal::Hex;

Status Session::BackendDevice(int device, int* backend_device) {
  if (device < 0 || device >= static_cast<int>(grant_.devices.size())) {
    return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "no device " + std::to_string(device));
  }
  *backend_device = grant_.devices[device].backend_device;
  return Status::Ok();
}

Status Session::CheckRangeOnDevice(uint64_t address, uint64_t bytes, int device, const char* what) {
  FERRY_RETURN_IF_ERROR(CheckRange(address, bytes, what));
  if (bytes == 0) return Status::Ok();
  auto found = ranges_.Find(address);
  int holder = found.value->device;
  if (found.value->module != 0) {  // a module global: its context's device
    ContextEntry* c = nullptr;
    FERRY_RETURN_IF_ERROR(contexts_.Find(found.value->ctx, &c));
    holder = c->device;
  }
  if (holder != device) {
    return Status::InvalidArgument(std::string(what) + " " + Hex(address) +
                                   " is memory of device " + std::to_string(holder) +
                                   ", not of its context's device " + std::to_string(device));
  }
  return Status::Ok();
}

Status Session::DeviceCanAccessPeer(wire::DevicePeer::Reader args, CallContext& cx) {
  int device = 0, peer = 0;
  FERRY_RETURN_IF_ERROR(BackendDevice(args.getDevice(), &device));
  FERRY_RETURN_IF_ERROR(BackendDevice(args.getPeer(), &peer));
  int can_access = 0;
  if (args.getDevice() != args.getPeer() && device != peer) {
    FERRY_RETURN_IF_ERROR(backend_.CanAccessPeer(device, peer, &can_access));
  }
  cx.reply.setValue(can_access);
  return Status::Ok();
}

Status Session::DeviceGetP2PAttribute(wire::DevicePeer::Reader args, CallContext& cx) {
  int src = 0, dst = 0;
  FERRY_RETURN_IF_ERROR(BackendDevice(args.getDevice(), &src));
  FERRY_RETURN_IF_ERROR(BackendDevice(args.getPeer(), &dst));
  if (args.getDevice() == args.getPeer() || src == dst) {
    return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "a P2P attribute needs two different devices");
  }
  int value = 0;
  FERRY_RETURN_IF_ERROR(backend_.GetP2PAttribute(args.getAttribute(), src, dst, &value));
  cx.reply.setValue(value);
  return Status::Ok();
}

Status Session::CtxEnablePeerAccess(wire::CtxPeer::Reader args) {
  ContextEntry* c = nullptr;
  ContextEntry* p = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getPeer(), &p));
  if (args.getFlags() != 0) {
    return Status::InvalidArgument("cuCtxEnablePeerAccess: flags must be 0");
  }
  int device = 0, peer = 0;
  FERRY_RETURN_IF_ERROR(BackendDevice(c->device, &device));
  FERRY_RETURN_IF_ERROR(BackendDevice(p->device, &peer));
  int can_access = 0;
  if (c->device != p->device && device != peer) {
    FERRY_RETURN_IF_ERROR(backend_.CanAccessPeer(device, peer, &can_access));
  }
  if (can_access == 0) {
    return Status::Cuda(CUDA_ERROR_PEER_ACCESS_UNSUPPORTED,
                        "device " + std::to_string(c->device) + " cannot access device " +
                            std::to_string(p->device) + "'s memory");
  }
  const std::pair<uint64_t, uint64_t> pair{args.getCtx(), args.getPeer()};
  if (peer_access_.count(pair) != 0) {
    return Status::Cuda(CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED, "peer access is already enabled");
  }
  FERRY_RETURN_IF_ERROR(backend_.EnablePeerAccess(*c->context, *p->context));
  peer_access_.insert(pair);
  return Status::Ok();
}

Status Session::CtxDisablePeerAccess(wire::CtxPeer::Reader args) {
  ContextEntry* c = nullptr;
  ContextEntry* p = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getPeer(), &p));
  const std::pair<uint64_t, uint64_t> pair{args.getCtx(), args.getPeer()};
  if (peer_access_.count(pair) == 0) {
    return Status::Cuda(CUDA_ERROR_PEER_ACCESS_NOT_ENABLED, "peer access is not enabled");
  }
  FERRY_RETURN_IF_ERROR(backend_.DisablePeerAccess(*c->context, *p->context));
  peer_access_.erase(pair);
  return Status::Ok();
}

Status Session::MemcpyPeer(wire::MemcpyPeer::Reader args) {
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  ContextEntry* current = nullptr;
  ContextEntry* dst_ctx = nullptr;
  ContextEntry* src_ctx = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &current));
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getDstCtx(), &dst_ctx));
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getSrcCtx(), &src_ctx));
  const uint64_t bytes = args.getBytes();
  FERRY_RETURN_IF_ERROR(CheckRangeOnDevice(args.getSrc(), bytes, src_ctx->device, "source"));
  FERRY_RETURN_IF_ERROR(CheckRangeOnDevice(args.getDst(), bytes, dst_ctx->device, "destination"));
  if (bytes == 0) return Status::Ok();
  if (!args.getSynchronous()) {
    return backend_.CopyPeer(*stream, args.getDst(), *dst_ctx->context, args.getSrc(),
                             *src_ctx->context, bytes);
  }
  // cuMemcpyPeer: after the work queued so far on the legacy streams of both
  // contexts, and before what they get later. Each ordering is an event,
  // made in the context of the stream it is recorded on and dropped at once
  // (the wait holds what it needs).
  std::vector<std::pair<ContextEntry*, backend::Stream*>> others;
  for (ContextEntry* c : {dst_ctx, src_ctx}) {
    backend::Stream* legacy = &backend_.LegacyStream(*c->context);
    if (legacy == stream) continue;
    if (!others.empty() && others.front().second == legacy) continue;
    others.emplace_back(c, legacy);
  }
  auto order = [&](backend::Context& ctx, backend::Stream& first, backend::Stream& then) -> Status {
    std::unique_ptr<backend::Event> event;
    FERRY_RETURN_IF_ERROR(backend_.CreateEvent(ctx, CU_EVENT_DISABLE_TIMING, &event));
    FERRY_RETURN_IF_ERROR(backend_.RecordEvent(*event, first));
    return backend_.StreamWaitEvent(then, *event);
  };
  for (auto& [c, legacy] : others) FERRY_RETURN_IF_ERROR(order(*c->context, *legacy, *stream));
  FERRY_RETURN_IF_ERROR(backend_.CopyPeer(*stream, args.getDst(), *dst_ctx->context, args.getSrc(),
                                          *src_ctx->context, bytes));
  for (auto& [c, legacy] : others) {
    FERRY_RETURN_IF_ERROR(order(*current->context, *stream, *legacy));
  }
  return Status::Ok();
}

}  // namespace ferry::server
