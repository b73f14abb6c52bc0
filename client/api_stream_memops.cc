// Entry points: stream memory operations (cuStreamWaitValue32/64,
// cuStreamWriteValue32/64, cuStreamBatchMemOp), every generation and _ptsz
// variant (their ABI is the same). Each is one posted call (README.md
// invariant 3) that the server runs in stream order; addresses are checked
// here against the program's allocations and again on the server (invariant
// 6).
#include <cuda.h>

#include <vector>

#include "client/entry_point.h"

namespace {

struct MemOp {
  int operation = 0;
  uint64_t address = 0;
  uint64_t value = 0;
  unsigned flags = 0;
};

Status Post(CUstream stream, const std::vector<MemOp>& ops, unsigned flags, bool per_thread) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  if (ops.empty() || ops.size() > 256) {
    return Status::InvalidArgument("a batch of stream memory operations holds 1 to 256 of them");
  }
  for (const MemOp& op : ops) {
    const uint64_t width = op.operation == CU_STREAM_MEM_OP_WAIT_VALUE_32 ||
                                   op.operation == CU_STREAM_MEM_OP_WRITE_VALUE_32
                               ? 4
                           : op.operation == CU_STREAM_MEM_OP_WAIT_VALUE_64 ||
                                   op.operation == CU_STREAM_MEM_OP_WRITE_VALUE_64
                               ? 8
                               : 0;
    if (width > 0) FERRY_RETURN_IF_ERROR(rt.allocations().CheckDevice(op.address, width, "addr"));
  }
  return rt.ConnectionOf(target.ctx).Post([&](wire::Call::Builder call) {
    auto args = call.initStreamMemOps();
    SetStreamTarget(args, target);
    args.setFlags(flags);
    auto list = args.initOps(static_cast<unsigned>(ops.size()));
    for (size_t i = 0; i < ops.size(); ++i) {
      auto out = list[static_cast<unsigned>(i)];
      out.setOperation(ops[i].operation);
      out.setAddress(ops[i].address);
      out.setValue(ops[i].value);
      out.setFlags(ops[i].flags);
    }
  });
}

Status One(CUstream stream, int operation, CUdeviceptr addr, uint64_t value, unsigned flags,
           bool per_thread) {
  return Post(stream, {MemOp{operation, addr, value, flags}}, 0, per_thread);
}

Status Batch(CUstream stream, unsigned count, const CUstreamBatchMemOpParams* params,
             unsigned flags, bool per_thread) {
  if (count > 0 && params == nullptr) return Status::InvalidArgument("paramArray is NULL");
  std::vector<MemOp> ops;
  ops.reserve(count);
  for (unsigned i = 0; i < count; ++i) {
    const CUstreamBatchMemOpParams& p = params[i];
    MemOp op;
    op.operation = p.operation;
    switch (p.operation) {
      case CU_STREAM_MEM_OP_WAIT_VALUE_32:
      case CU_STREAM_MEM_OP_WAIT_VALUE_64:
        op.address = p.waitValue.address;
        op.value =
            p.operation == CU_STREAM_MEM_OP_WAIT_VALUE_32 ? p.waitValue.value : p.waitValue.value64;
        op.flags = p.waitValue.flags;
        break;
      case CU_STREAM_MEM_OP_WRITE_VALUE_32:
      case CU_STREAM_MEM_OP_WRITE_VALUE_64:
        op.address = p.writeValue.address;
        op.value = p.operation == CU_STREAM_MEM_OP_WRITE_VALUE_32 ? p.writeValue.value
                                                                  : p.writeValue.value64;
        op.flags = p.writeValue.flags;
        break;
      case CU_STREAM_MEM_OP_FLUSH_REMOTE_WRITES:
        op.flags = p.flushRemoteWrites.flags;
        break;
      case CU_STREAM_MEM_OP_BARRIER:
        op.flags = p.memoryBarrier.flags;
        break;
      default:
        return Status::InvalidArgument("unknown stream memory operation " +
                                       std::to_string(p.operation));
    }
    ops.push_back(op);
  }
  return Post(stream, ops, flags, per_thread);
}

}  // namespace

// Each name at every generation and with _ptsz (per-thread default stream).
#define FERRY_MEMOP_ENTRY(name, operation, type, per_thread)                                 \
  CUresult CUDAAPI name(CUstream stream, CUdeviceptr addr, type value, unsigned int flags) { \
    return Api([&] { return One(stream, operation, addr, value, flags, per_thread); });      \
  }
#define FERRY_MEMOP_ENTRIES(base, operation, type)      \
  FERRY_MEMOP_ENTRY(base, operation, type, false)       \
  FERRY_MEMOP_ENTRY(base##_ptsz, operation, type, true) \
  FERRY_MEMOP_ENTRY(base##_v2, operation, type, false)  \
  FERRY_MEMOP_ENTRY(base##_v2_ptsz, operation, type, true)

extern "C" {

FERRY_MEMOP_ENTRIES(cuStreamWaitValue32, CU_STREAM_MEM_OP_WAIT_VALUE_32, cuuint32_t)
FERRY_MEMOP_ENTRIES(cuStreamWaitValue64, CU_STREAM_MEM_OP_WAIT_VALUE_64, cuuint64_t)
FERRY_MEMOP_ENTRIES(cuStreamWriteValue32, CU_STREAM_MEM_OP_WRITE_VALUE_32, cuuint32_t)
FERRY_MEMOP_ENTRIES(cuStreamWriteValue64, CU_STREAM_MEM_OP_WRITE_VALUE_64, cuuint64_t)

CUresult CUDAAPI cuStreamBatchMemOp(CUstream stream, unsigned int count,
                                    CUstreamBatchMemOpParams* paramArray, unsigned int flags) {
  return Api([&] { return Batch(stream, count, paramArray, flags, false); });
}
CUresult CUDAAPI cuStreamBatchMemOp_ptsz(CUstream stream, unsigned int count,
                                         CUstreamBatchMemOpParams* paramArray, unsigned int flags) {
  return Api([&] { return Batch(stream, count, paramArray, flags, true); });
}
CUresult CUDAAPI cuStreamBatchMemOp_v2(CUstream stream, unsigned int count,
                                       CUstreamBatchMemOpParams* paramArray, unsigned int flags) {
  return Api([&] { return Batch(stream, count, paramArray, flags, false); });
}
CUresult CUDAAPI cuStreamBatchMemOp_v2_ptsz(CUstream stream, unsigned int count,
                                            CUstreamBatchMemOpParams* paramArray,
                                            unsigned int flags) {
  return Api([&] { return Batch(stream, count, paramArray, flags, true); });
}

}  // extern "C"
