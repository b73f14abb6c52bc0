// Session handlers for contexts, and freeing a context's (or the whole
// session's) resources.

#include "server/session.h"

#include <cuda.h>

#include <vector>

#include "common/log.h"
#include "server/session_internal.h"

namespace ferry::server {

using session_internal::Hex;

Status Session::CtxCreate(wire::CtxCreate::Reader args) {
  return CreateOnDevice(
      contexts_, args.getCtx(), args.getDevice(), [&](int backend_device, ContextEntry* entry) {
        const SessionDevice& where = grant_.devices[entry->device];
        FERRY_RETURN_IF_ERROR(
            where.sm_partition_sms > 0
                ? backend_.CreatePartitionedContext(backend_device, args.getFlags(),
                                                    where.slices_per_gpu, where.slice,
                                                    &entry->context)
                : backend_.CreateContext(backend_device, args.getFlags(), &entry->context));
        backend_.JoinTenant(*entry->context, *tenant_);
        entry->flags = args.getFlags();
        return Status::Ok();
      });
}

void Session::DestroyContextResources(uint64_t ctx) {
  // Events and streams first (destroying a stream waits for its work), then
  // modules and memory, so nothing in flight touches freed memory.
  DestroyContextGraphs(ctx);  // stream capture and graphs, before their streams and memory
  auto in_ctx = [ctx](uint64_t, const auto& entry) { return entry.ctx == ctx; };
  events_.EraseIf(in_ctx);
  streams_.EraseIf(in_ctx);
  DestroyContextArrays(ctx);  // CUDA arrays, textures and surfaces, after the streams
  ContextEntry* context = nullptr;
  const bool context_found = contexts_.Find(ctx, &context).ok();
  ranges_.ForEach([&](uint64_t base, uint64_t size, RangeEntry& range) {
    if (range.ctx != ctx || range.module != 0 || range.graph) return;
    if (context_found) {
      Status status = backend_.MemFree(*context->context, base);
      if (!status.ok()) {
        FERRY_LOG(kWarning) << "session " << id_ << ": freeing " << Hex(base)
                            << " failed: " << status.ToString();
      }
    }
    UnchargeWhenReleased(range.device, size);
  });
  ranges_.EraseIf([ctx](const RangeEntry& range) { return range.ctx == ctx; });
  functions_.EraseIf(in_ctx);
  modules_.EraseIf(in_ctx);
  links_.EraseIf(in_ctx);
  std::erase_if(peer_access_, [ctx](const auto& p) { return p.first == ctx || p.second == ctx; });
}

Status Session::CtxDestroy(wire::CtxRef::Reader args) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  DestroyContextResources(args.getCtx());
  return contexts_.Erase(args.getCtx());
}

void Session::FreeEverything() {
  // stream capture and graphs of no context (empty created graphs) first.
  graph_execs_.ForEach([this](uint64_t, GraphExecEntry& exec) { ForgetGraphExecMemory(exec); });
  graph_execs_.Clear();
  graph_nodes_.Clear();
  graphs_.Clear();
  std::vector<uint64_t> ids;
  contexts_.ForEach([&](uint64_t id, ContextEntry&) { ids.push_back(id); });
  for (uint64_t id : ids) {
    DestroyContextResources(id);
    (void)contexts_.Erase(id);
  }
  // Pools after the allocations (freed with their contexts above).
  mem_pools_.Clear();
  // virtual memory management: no work is left that could touch it.
  FreeVirtualMemory();
  // Anything left belongs to no context (cannot happen by construction).
  textures_.Clear();
  arrays_.Clear();
  events_.Clear();
  streams_.Clear();
  functions_.Clear();
  modules_.Clear();
  links_.Clear();
  ranges_.clear();
  // Libraries last: their modules went with the contexts.
  libraries_.Clear();
  // The quota (and the slices, once Run returns) only after the memory.
  WaitForReleases();
}

Status Session::CtxSynchronize(wire::CtxRef::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  FERRY_RETURN_IF_ERROR(CaptureGuardContext(args.getCtx()));
  Status idle_status;
  if (backend_.ContextIdleNow(*c->context, &idle_status)) return idle_status;
  backend_.WhenContextIdle(*c->context, DeferReply(cx));
  return Status::Ok();
}

Status Session::CtxGetLimit(wire::CtxLimit::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  uint64_t value = 0;
  FERRY_RETURN_IF_ERROR(backend_.GetLimit(*c->context, static_cast<int>(args.getLimit()), &value));
  cx.reply.setValue(static_cast<int64_t>(value));
  return Status::Ok();
}

Status Session::CtxSetLimit(wire::CtxLimit::Reader args) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  return backend_.SetLimit(*c->context, static_cast<int>(args.getLimit()), args.getValue());
}

Status Session::CtxResetPersistingL2Cache(wire::CtxRef::Reader args) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  return backend_.ResetPersistingL2Cache(*c->context);
}

}  // namespace ferry::server
