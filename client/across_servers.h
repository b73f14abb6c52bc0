// Copies for a program whose devices span servers (Runtime, "the sessions
// behind the devices"): memory lives on one server, so a copy asked on a
// stream of another server's device runs where the memory is, ordered by the
// client — after the stream's earlier work, and finished before the call
// returns (async or not: what the program queues on the stream later may
// depend on it). There it runs on the memory's context's legacy stream when
// the copy was synchronous (ordered after that context's work, as CUDA
// orders cuMemcpyPeer with both contexts), else on a transfer stream of
// ferry's own (StreamThere). Copies between two servers' devices pass through
// this host, in bounded pieces; ferryds never talk to each other. With one
// session (every other program) each of these is the plain path, at no extra
// cost.
//
// Thread-safety: as the entry points that call them (any thread).
#pragma once

#include <cstddef>
#include <cstdint>

#include "client/runtime.h"
#include "common/status.h"

namespace ferry::client {

// The context that owns device address `p`; `fallback` for memory the
// registry does not tie to a context (virtual-memory mappings) and whenever
// the program has one session.
uint64_t OwnerContext(uint64_t p, uint64_t fallback);

// Device to device between two servers' devices (contexts `dst_ctx`,
// `src_ctx`), asked on `target`: through this host, 8 MiB at a time, after
// `target`'s earlier work; done when it returns.
Status CopyBetweenServers(uint64_t dst_ctx, uint64_t dst, uint64_t src_ctx, uint64_t src,
                          size_t bytes, const StreamTarget& target);

// Where a copy asked on `target` runs in context `ctx` of another server: a
// synchronous copy (the legacy stream) on `ctx`'s legacy stream, ordered
// after that context's work as CUDA orders cuMemcpyPeer with both contexts;
// one asked on a stream of the program on `ctx`'s transfer stream
// (Runtime::TransferStream), which waits for nothing of the program's there.
Status StreamThere(const StreamTarget& target, uint64_t ctx, StreamTarget* there);

// Runs `run(stream)` for a copy asked on `target` that touches memory of
// context `owner`: on `target` itself when one session serves both, else on
// StreamThere(owner), ordered as above.
template <typename Run>
Status OnOwnersServer(const StreamTarget& target, uint64_t owner, Run run) {
  Runtime& rt = Runtime::Get();
  if (rt.SameSession(target.ctx, owner)) return run(target);
  StreamTarget there;
  FERRY_RETURN_IF_ERROR(StreamThere(target, owner, &there));
  FERRY_RETURN_IF_ERROR(rt.SynchronizeStream(target));
  FERRY_RETURN_IF_ERROR(run(there));
  return rt.SynchronizeStream(there);
}

}  // namespace ferry::client
