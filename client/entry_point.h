// What every entry-point file (client/api_*.cc) needs, under the short names
// they all use. The entry points are global extern "C" functions, so the
// names are brought in at global scope: include this from api_*.cc only.
#pragma once

#include "client/cuda_result.h"
#include "client/runtime.h"

using ferry::Status;
using ferry::client::Api;
using ferry::client::Runtime;
using ferry::client::StreamTarget;
namespace wire = ferry::wire;

// A cu*Destroy's (or cuModuleUnload's) work: after rt.Ready(), `forget(rt,
// id)` drops the handle's id from the runtime's registry (its error, such as
// INVALID_HANDLE, is the call's), then `fill(call, id)` builds the server's
// call, which is posted.
template <typename Handle, typename Forget, typename Fill>
Status DestroyHandle(Handle handle, Forget forget, Fill fill) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  const uint64_t id = Runtime::HandleId(handle);
  FERRY_RETURN_IF_ERROR(forget(rt, id));
  return rt.connection().Post([&](wire::Call::Builder call) { fill(call, id); });
}
