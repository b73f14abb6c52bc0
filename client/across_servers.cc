#include "client/across_servers.h"

#include <algorithm>
#include <memory>

#include "client/allocation_registry.h"

namespace ferry::client {

uint64_t OwnerContext(uint64_t p, uint64_t fallback) {
  Runtime& rt = Runtime::Get();
  if (rt.part_count() <= 1) return fallback;  // one session: nothing to find
  DeviceAllocation allocation;
  if (rt.allocations().FindDevice(p, nullptr, &allocation) && allocation.ctx != 0) {
    return allocation.ctx;
  }
  return fallback;
}

Status StreamThere(const StreamTarget& target, uint64_t ctx, StreamTarget* there) {
  if (target.stream == 0) {
    *there = StreamTarget{ctx, 0};
    return Status::Ok();
  }
  return Runtime::Get().TransferStream(ctx, there);
}

Status CopyBetweenServers(uint64_t dst_ctx, uint64_t dst, uint64_t src_ctx, uint64_t src,
                          size_t bytes, const StreamTarget& target) {
  Runtime& rt = Runtime::Get();
  constexpr size_t kPiece = size_t{8} << 20;
  StreamTarget from, to;
  FERRY_RETURN_IF_ERROR(StreamThere(target, src_ctx, &from));
  FERRY_RETURN_IF_ERROR(StreamThere(target, dst_ctx, &to));
  FERRY_RETURN_IF_ERROR(rt.SynchronizeStream(target));
  // Not zero-filled: every byte is written by the copy before it is read.
  std::unique_ptr<char[]> staging_memory(new char[std::min(bytes, kPiece)]);
  char* staging = staging_memory.get();
  for (size_t done = 0; done < bytes;) {
    const size_t piece = std::min(kPiece, bytes - done);
    FERRY_RETURN_IF_ERROR(rt.ConnectionOf(src_ctx).Call(
        [&](wire::Call::Builder call) {
          auto args = call.initMemcpyDtoH();
          SetStreamTarget(args, from);
          args.setSrc(src + done);
          args.setBytes(piece);
        },
        {}, InBytes{staging, piece}));
    FERRY_RETURN_IF_ERROR(rt.ConnectionOf(dst_ctx).Post(
        [&](wire::Call::Builder call) {
          auto args = call.initMemcpyHtoD();
          SetStreamTarget(args, to);
          args.setDst(dst + done);
          args.setBytes(piece);
        },
        OutBytes{staging, piece}));
    done += piece;
  }
  // Done when this returns, as the callers promise.
  return rt.SynchronizeStream(to);
}

}  // namespace ferry::client
